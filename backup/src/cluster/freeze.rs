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
//!
//! A freeze that fails is a [`ClusterError::Freeze`] carrying a bounded [`FreezeFailure`]
//! ([`classify`]): the caller backs up crash-consistent and records why. The freeze call has
//! its own deadline ([`FREEZE_CALL_TIMEOUT`]); a guest whose freeze failed may still end up
//! frozen (the call timed out on our side only), so the caller thaws it anyway at the thaw point
//! ([`unfreeze`]; KubeVirt's unfreezeTimeout remains the safety net).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::{Api, Client};
use virtguard_api::{FreezeUnfreezeTimeout, VirtualMachineInstance};
use virtguard_model::FreezeFailure;

use super::{go_duration, ClusterError, Result};

/// Longest wait for KubeVirt to answer a freeze. KubeVirt bounds the guest agent call itself
/// and answers with an error when it expires; this only ends a call that hangs beyond that.
pub const FREEZE_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a freeze call failed, from its HTTP status and message (virt-api passes on
/// virt-handler's and libvirt's errors) and whether the VMI, read again after the failure, still
/// reports its agent connected (`None`: the VMI could not be read). Only ever one of the fixed
/// [`FreezeFailure`] values: it becomes a metric label.
pub fn classify(code: Option<u16>, message: &str, agent_connected: Option<bool>) -> FreezeFailure {
    let m = message.to_ascii_lowercase();
    let timed_out = matches!(code, Some(408 | 504))
        || ["timed out", "deadline exceeded", "deadline has elapsed"]
            .iter()
            .any(|t| m.contains(t));
    if timed_out {
        FreezeFailure::TimedOut
    } else if agent_connected == Some(false)
        // libvirt's VIR_ERR_AGENT_UNRESPONSIVE, as KubeVirt reports it.
        || m.contains("guest agent is not responding")
        || m.contains("guest agent is not connected")
    {
        FreezeFailure::AgentDisconnected
    } else {
        FreezeFailure::Refused
    }
}

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

/// A failed subresource call: the HTTP status when the server answered, and what it said.
struct CallError {
    code: Option<u16>,
    message: String,
}

async fn put(client: &Client, url: String, body: Vec<u8>) -> std::result::Result<(), CallError> {
    let req = http::Request::put(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(|e| CallError {
            code: None,
            message: e.to_string(),
        })?;
    client
        .request_text(req)
        .await
        .map(|_| ())
        .map_err(|e| match e {
            kube::Error::Api(s) => CallError {
                code: Some(s.code),
                message: format!("HTTP {} {}: {}", s.code, s.reason, s.message),
            },
            other => CallError {
                code: None,
                message: other.to_string(),
            },
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
    /// Freezes VMI `namespace/name` with KubeVirt's `unfreezeTimeout` safety net. A failure is
    /// [`ClusterError::Freeze`] with its [`FreezeFailure`].
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
        let call = put(client, subresource_url(namespace, name, "freeze"), body);
        let failed = match tokio::time::timeout(FREEZE_CALL_TIMEOUT, call).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(CallError {
                code: None,
                message: format!("no answer within {FREEZE_CALL_TIMEOUT:?}: timed out"),
            }),
        };
        if let Some(e) = failed {
            // Re-read: an agent that went away since the run looked explains a failure that
            // KubeVirt words in any other way.
            let agent_connected =
                Api::<VirtualMachineInstance>::namespaced(client.clone(), namespace)
                    .get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .map(|v| v.agent_connected());
            return Err(ClusterError::Freeze {
                object: format!("{namespace}/{name}"),
                failure: classify(e.code, &e.message, agent_connected),
                message: e.message,
            });
        }
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
                Err(e) => last = e.message,
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
                        tracing::error!(error = %e.message, "background thaw failed; KubeVirt's unfreezeTimeout will thaw the guest");
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
    .map_err(|e| ClusterError::Thaw {
        object: format!("{namespace}/{name}"),
        namespace: namespace.to_string(),
        name: name.to_string(),
        message: e.message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freeze_failures_are_classified_into_the_fixed_reasons() {
        let agent_gone = "HTTP 500 Internal Server Error: Internal error occurred: server error. command Freeze failed: \"LibvirtError(Code=86, Domain=10, Message='Guest agent is not responding: QEMU guest agent is not connected')\"";
        let injected = "HTTP 500: injected fault (freeze)";
        for (code, message, agent, want) in [
            (
                Some(500),
                agent_gone,
                Some(true),
                FreezeFailure::AgentDisconnected,
            ),
            // Any wording, once the VMI no longer reports its agent.
            (
                Some(500),
                injected,
                Some(false),
                FreezeFailure::AgentDisconnected,
            ),
            (Some(500), injected, Some(true), FreezeFailure::Refused),
            // The VMI could not be read again (or is gone): nothing known about the agent.
            (Some(500), injected, None, FreezeFailure::Refused),
            (
                Some(409),
                "HTTP 409 Conflict: VMI is not running",
                None,
                FreezeFailure::Refused,
            ),
            // 400 about the unfreezeTimeout field is not a timeout.
            (
                Some(400),
                "HTTP 400: UnfreezeTimeout has to be set",
                Some(true),
                FreezeFailure::Refused,
            ),
            (
                Some(504),
                "HTTP 504 Gateway Timeout",
                Some(true),
                FreezeFailure::TimedOut,
            ),
            (
                Some(500),
                "command Freeze failed: context deadline exceeded",
                Some(true),
                FreezeFailure::TimedOut,
            ),
            (
                None,
                "no answer within 60s: timed out",
                Some(true),
                FreezeFailure::TimedOut,
            ),
            // A timeout wins over a vanished agent: it says more about what happened.
            (
                None,
                "deadline has elapsed",
                Some(false),
                FreezeFailure::TimedOut,
            ),
        ] {
            assert_eq!(classify(code, message, agent), want, "{code:?} {message}");
        }
    }
}
