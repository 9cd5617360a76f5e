//! Freezing and thawing a guest through KubeVirt's subresource API.
//!
//! `PUT /apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}/freeze`
//! with body `{"unfreezeTimeout": "<go duration>"}` asks virt-handler to run the guest agent's
//! fsfreeze; KubeVirt thaws by itself when the timeout expires (our safety net if this process
//! dies). `PUT .../unfreeze` thaws. Both are idempotent in KubeVirt.
//!
//! [`FrozenGuest`] is the only way to obtain a frozen guest here: it remembers that a thaw is
//! owed. Call [`FrozenGuest::thaw`] as soon as the snapshots are cut; if it is dropped without
//! that (a `?` on an error path, a panic, a cancelled future), `Drop` spawns the thaw on the
//! runtime as a last resort and logs loudly.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::Client;
use virtguard_api::FreezeUnfreezeTimeout;

use super::{go_duration, ClusterError, Result};

/// Guests this process has frozen and not yet thawed, so a signal handler can thaw them all
/// ([`thaw_all`]) before the process exits.
static FROZEN: Mutex<BTreeMap<(String, String), Client>> = Mutex::new(BTreeMap::new());

fn track(namespace: &str, name: &str, client: Option<&Client>) {
    if let Ok(mut m) = FROZEN.lock() {
        let key = (namespace.to_string(), name.to_string());
        match client {
            Some(c) => {
                m.insert(key, c.clone());
            }
            None => {
                m.remove(&key);
            }
        }
    }
}

/// Thaws every guest this process froze and has not thawed yet (for SIGTERM/SIGINT handlers).
/// Returns the VMIs it thawed; failures are logged (KubeVirt's unfreezeTimeout still applies).
pub async fn thaw_all() -> Vec<String> {
    let owed: Vec<((String, String), Client)> = FROZEN
        .lock()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let mut thawed = Vec::new();
    for ((ns, name), client) in owed {
        match unfreeze(&client, &ns, &name).await {
            Ok(()) => {
                track(&ns, &name, None);
                thawed.push(format!("{ns}/{name}"));
            }
            Err(e) => tracing::error!(error = %e, "thaw on shutdown failed"),
        }
    }
    thawed
}

fn subresource_url(namespace: &str, name: &str, verb: &str) -> String {
    format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{namespace}/virtualmachineinstances/{name}/{verb}"
    )
}

async fn put(client: &Client, url: String, body: Vec<u8>) -> std::result::Result<(), String> {
    let req = http::Request::put(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(|e| e.to_string())?;
    client
        .request_text(req)
        .await
        .map(|_| ())
        .map_err(|e| match e {
            kube::Error::Api(s) => format!("HTTP {} {}: {}", s.code, s.reason, s.message),
            other => other.to_string(),
        })
}

/// A guest whose filesystems we froze; owes a thaw.
pub struct FrozenGuest {
    client: Client,
    namespace: String,
    name: String,
    frozen_at: Instant,
    thawed: bool,
}

impl std::fmt::Debug for FrozenGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrozenGuest")
            .field("vmi", &format!("{}/{}", self.namespace, self.name))
            .field("thawed", &self.thawed)
            .finish()
    }
}

impl FrozenGuest {
    /// Freezes VMI `namespace/name` with KubeVirt's `unfreezeTimeout` safety net.
    pub async fn freeze(
        client: &Client,
        namespace: &str,
        name: &str,
        unfreeze_timeout: Duration,
    ) -> Result<FrozenGuest> {
        let body = serde_json::to_vec(&FreezeUnfreezeTimeout {
            unfreeze_timeout: Some(go_duration(unfreeze_timeout)),
            ..Default::default()
        })
        .unwrap_or_default();
        let start = Instant::now();
        put(client, subresource_url(namespace, name, "freeze"), body)
            .await
            .map_err(|message| ClusterError::Freeze {
                object: format!("{namespace}/{name}"),
                message,
            })?;
        track(namespace, name, Some(client));
        tracing::info!(vmi = %format!("{namespace}/{name}"), "guest frozen");
        Ok(FrozenGuest {
            client: client.clone(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            frozen_at: start,
            thawed: false,
        })
    }

    /// How long the guest has been frozen so far.
    pub fn elapsed(&self) -> Duration {
        self.frozen_at.elapsed()
    }

    /// Thaws the guest; returns the freeze window. Retries a few times on failure.
    pub async fn thaw(mut self) -> Result<Duration> {
        let mut last = String::new();
        for attempt in 0..4u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            match put(
                &self.client,
                subresource_url(&self.namespace, &self.name, "unfreeze"),
                Vec::new(),
            )
            .await
            {
                Ok(()) => {
                    self.thawed = true;
                    track(&self.namespace, &self.name, None);
                    let window = self.frozen_at.elapsed();
                    tracing::info!(vmi = %format!("{}/{}", self.namespace, self.name),
                        freeze_seconds = window.as_secs_f64(), "guest thawed");
                    return Ok(window);
                }
                Err(e) => last = e,
            }
        }
        // Leave `thawed` false: Drop tries once more in the background.
        Err(ClusterError::Thaw {
            object: format!("{}/{}", self.namespace, self.name),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            message: last,
        })
    }
}

impl Drop for FrozenGuest {
    fn drop(&mut self) {
        if self.thawed {
            return;
        }
        tracing::warn!(vmi = %format!("{}/{}", self.namespace, self.name),
            "frozen guest dropped without a thaw: thawing in the background");
        let client = self.client.clone();
        let url = subresource_url(&self.namespace, &self.name, "unfreeze");
        let (ns, name) = (self.namespace.clone(), self.name.clone());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                match put(&client, url, Vec::new()).await {
                    Ok(()) => track(&ns, &name, None),
                    Err(e) => {
                        tracing::error!(error = %e, "background thaw failed; KubeVirt's unfreezeTimeout will thaw the guest");
                    }
                }
            });
        }
    }
}

/// Thaws VMI `namespace/name` unconditionally (for `virtguard cleanup` and signal handlers).
pub async fn unfreeze(client: &Client, namespace: &str, name: &str) -> Result<()> {
    put(
        client,
        subresource_url(namespace, name, "unfreeze"),
        Vec::new(),
    )
    .await
    .map_err(|message| ClusterError::Thaw {
        object: format!("{namespace}/{name}"),
        namespace: namespace.to_string(),
        name: name.to_string(),
        message,
    })
}
