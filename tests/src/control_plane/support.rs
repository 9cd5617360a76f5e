//! What the control-plane tests share: creating an object from JSON and waiting, with one
//! deadline, for a controller (or the authorizer) to get somewhere. Both panic with what they
//! were doing, as a failed test should.

use std::future::Future;
use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use serde_json::Value;

/// How long a controller, the RBAC authorizer's cache or a started process may take to react.
pub const REACT: Duration = Duration::from_secs(60);

/// Polls `f` until it returns `Ok(Some(_))`, or panics after [`REACT`] naming `what` and the
/// last error `f` returned.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, String>>,
{
    let deadline = Instant::now() + REACT;
    let mut last = String::from("(nothing yet)");
    while Instant::now() < deadline {
        match f().await {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {REACT:?} waiting for {what}; last error: {last}");
}

/// Creates `obj` (JSON of a `K`) through `api`, or panics with the object and the error.
pub async fn create<K>(api: &Api<K>, obj: Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let typed: K = serde_json::from_value(obj.clone())
        .unwrap_or_else(|e| panic!("not a valid object ({e}): {obj}"));
    api.create(&PostParams::default(), &typed)
        .await
        .unwrap_or_else(|e| panic!("creating {typed:?}: {e}"))
}
