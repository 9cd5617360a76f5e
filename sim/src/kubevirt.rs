//! KubeVirt: VM → VMI lifecycle, the freeze/unfreeze subresources, and VMIM phase timelines.
//!
//! - A VM whose `spec.runStrategy` is `Always`/`RerunOnFailure`/`Once` (or `spec.running:
//!   true`) gets a VMI of the same name (owner reference to the VM, spec from the template);
//!   `Halted` (or `running: false`) deletes it. `Manual` keeps whatever is there. The VMI goes
//!   `Pending` → `Running` after `vmiStartMs` (no scheduler, no virt-launcher: node is
//!   `sim-node-1`). Subresources `start`/`stop`/`restart` on VMs change the run strategy like
//!   virt-api does.
//! - Guest agent: connected (condition `AgentConnected=True`) unless the VMI (or its VM
//!   template) carries the annotation `virtguard.io/sim-guest-agent: "false"`. With the
//!   annotation `virtguard.io/sim-guest-agent-socket: <path>` freeze/thaw are also sent to a
//!   real QEMU guest agent on that unix socket (`guest-sync`, then `guest-fsfreeze-freeze`/
//!   `guest-fsfreeze-thaw`).
//! - A Running VMI reports `status.interfaces` (name, mac: the spec's `macAddress` or a stable
//!   generated one, infoSource) like virt-handler does.
//! - `PUT .../virtualmachineinstances/{name}/freeze` with `{"unfreezeTimeout": "<duration>"}`:
//!   404 if no VMI; 409 Conflict when the VMI is not Running; 400 when the body is unreadable,
//!   lacks `unfreezeTimeout`, or it is negative; 500 when the guest agent is not connected;
//!   otherwise 200, `status.fsFreezeStatus: frozen`, and a safety thaw after the timeout
//!   (0 = none). Freezing again is accepted and restarts the timer. `unfreeze` is idempotent.
//!   Every call is recorded ([`FreezeRecord`]) with its UTC time.
//! - `PUT .../virtualmachineinstances/{name}/pause` / `unpause` (body `PauseOptions`, may be
//!   empty) like virt-api: 404 if no VMI; pause 409 `VM is not running` unless Running, 409 `VMI
//!   is already paused`; unpause 409 `VMI is not running` / `VMI is not paused`; otherwise 200
//!   and the VMI condition `Paused=True` (reason `PausedByUser`) is added or removed. The phase
//!   stays `Running`, the VM's `printableStatus` becomes `Paused`; a restarted VMI is not paused.
//!   Pausing does not touch the guest agent or the freeze subresources.
//! - VMIM: phases Pending → Scheduling → Scheduled → PreparingTarget → TargetReady → Running →
//!   Succeeded, one step per `migrationStepMs`, or the scripted timeline in the annotation
//!   `virtguard.io/sim-timeline: "Pending:0,Scheduling:100,...,Failed:900"` (ms since creation).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::http::{full, read_body, Body};
use crate::launcher::LaunchPhase;
use crate::status::ApiError;
use crate::store::{meta_str, name_ns, now_rfc3339};
use crate::Inner;

pub use crate::guest_agent::{AGENT_ANNOTATION, AGENT_LIBVIRT_ANNOTATION, AGENT_SOCKET_ANNOTATION};
pub const TIMELINE_ANNOTATION: &str = "virtguard.io/sim-timeline";
pub const NODE: &str = "sim-node-1";
/// The label virt-controller keeps equal to a scheduled VMI's `status.nodeName`.
pub const NODE_NAME_LABEL: &str = "kubevirt.io/nodeName";
/// The well-known node label a `nodeSelector` pins a VM with.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// What a freeze-log entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FreezeAction {
    Freeze,
    Unfreeze,
    /// The unfreezeTimeout expired and the guest was thawed by the safety net.
    SafetyThaw,
}

/// One freeze/unfreeze call (or safety thaw).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FreezeRecord {
    /// `namespace/name` of the VMI.
    pub vmi: String,
    pub action: FreezeAction,
    /// When the request arrived, before the guest agent was asked.
    pub received: DateTime<Utc>,
    /// When it was answered (for a successful freeze: the guest is frozen from here on; for a
    /// thaw: it was frozen at least until `received`).
    pub at: DateTime<Utc>,
    /// HTTP status answered (200 on success).
    pub status: u16,
    pub unfreeze_timeout_ms: Option<u64>,
    pub message: String,
}

#[derive(Debug)]
struct Frozen {
    deadline: Option<Instant>,
}

/// Freeze state shared by the subresource handler and the safety-thaw loop.
#[derive(Debug, Default)]
pub struct KubeVirtState {
    log: Mutex<Vec<FreezeRecord>>,
    frozen: Mutex<HashMap<String, Frozen>>,
}

impl KubeVirtState {
    pub fn log(&self) -> Vec<FreezeRecord> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(
        &self,
        vmi: &str,
        action: FreezeAction,
        received: DateTime<Utc>,
        status: u16,
        timeout: Option<Duration>,
        message: &str,
    ) {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(FreezeRecord {
                vmi: vmi.to_string(),
                action,
                received,
                at: Utc::now(),
                status,
                unfreeze_timeout_ms: timeout.map(|d| d.as_millis() as u64),
                message: message.to_string(),
            });
    }

    fn frozen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Frozen>> {
        self.frozen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn not_found() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

/// `/apis/subresources.kubevirt.io/...`.
pub(crate) async fn subresource(
    inner: Arc<Inner>,
    req: Request<Incoming>,
    segs: &[&str],
) -> Result<Response<Body>, ApiError> {
    match segs {
        ["apis", "subresources.kubevirt.io"] => Ok(crate::http::json_response(
            200,
            &json!({"kind": "APIGroup", "apiVersion": "v1", "name": "subresources.kubevirt.io",
                    "versions": [{"groupVersion": "subresources.kubevirt.io/v1", "version": "v1"}],
                    "preferredVersion": {"groupVersion": "subresources.kubevirt.io/v1", "version": "v1"}}),
        )),
        ["apis", "subresources.kubevirt.io", "v1" | "v1alpha3"] => Ok(crate::http::json_response(
            200,
            &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "subresources.kubevirt.io/v1", "resources": [
                {"name": "virtualmachineinstances/freeze", "namespaced": true, "kind": "", "verbs": ["update"]},
                {"name": "virtualmachineinstances/unfreeze", "namespaced": true, "kind": "", "verbs": ["update"]},
                {"name": "virtualmachineinstances/pause", "namespaced": true, "kind": "", "verbs": ["update"]},
                {"name": "virtualmachineinstances/unpause", "namespaced": true, "kind": "", "verbs": ["update"]},
                {"name": "virtualmachineinstances/guestosinfo", "namespaced": true, "kind": "", "verbs": ["get"]},
                {"name": "virtualmachineinstances/filesystemlist", "namespaced": true, "kind": "", "verbs": ["get"]},
                {"name": "virtualmachines/start", "namespaced": true, "kind": "", "verbs": ["update"]},
                {"name": "virtualmachines/stop", "namespaced": true, "kind": "", "verbs": ["update"]},
                {"name": "virtualmachines/restart", "namespaced": true, "kind": "", "verbs": ["update"]},
            ]}),
        )),
        ["apis", "subresources.kubevirt.io", "v1" | "v1alpha3", "namespaces", ns, "virtualmachineinstances", name, action @ ("freeze" | "unfreeze")] =>
        {
            if req.method() != Method::PUT {
                return Err(ApiError::method_not_allowed(format!(
                    "{} is not supported on {action}",
                    req.method()
                )));
            }
            let (ns, name, action) = (ns.to_string(), name.to_string(), action.to_string());
            let body = read_body(req, 1 << 16).await?;
            freeze_call(&inner, &ns, &name, &action, &body).await?;
            Ok(Response::new(full(Vec::new())))
        }
        ["apis", "subresources.kubevirt.io", "v1" | "v1alpha3", "namespaces", ns, "virtualmachineinstances", name, action @ ("pause" | "unpause")] =>
        {
            if req.method() != Method::PUT {
                return Err(ApiError::method_not_allowed(format!(
                    "{} is not supported on {action}",
                    req.method()
                )));
            }
            let (ns, name, pause) = (ns.to_string(), name.to_string(), *action == "pause");
            read_body(req, 1 << 16).await?;
            pause_call(&inner, &ns, &name, pause)?;
            Ok(Response::new(full(Vec::new())))
        }
        ["apis", "subresources.kubevirt.io", "v1" | "v1alpha3", "namespaces", ns, "virtualmachineinstances", name, what @ ("guestosinfo" | "filesystemlist")] =>
        {
            if req.method() != Method::GET {
                return Err(ApiError::method_not_allowed(format!(
                    "{} is not supported on {what}",
                    req.method()
                )));
            }
            let v = crate::guest_agent::serve(&inner, ns, name, what).await?;
            Ok(crate::http::json_response(200, &v))
        }
        ["apis", "subresources.kubevirt.io", "v1" | "v1alpha3", "namespaces", ns, "virtualmachines", name, action @ ("start" | "stop" | "restart")] =>
        {
            if req.method() != Method::PUT {
                return Err(ApiError::method_not_allowed(format!(
                    "{} is not supported on {action}",
                    req.method()
                )));
            }
            if let Some(e) = inner.faults.call(action, ns, name) {
                return Err(e);
            }
            vm_action(&inner, ns, name, action)?;
            Ok(Response::new(full(Vec::new())))
        }
        _ => Err(not_found()),
    }
}

/// True when the VMI carries the condition `type_` with status `True`.
fn condition_true(vmi: &Value, type_: &str) -> bool {
    vmi.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == type_ && c["status"] == "True")
        })
}

/// True when the VMI is paused (condition `Paused=True`).
fn paused(vmi: &Value) -> bool {
    condition_true(vmi, "Paused")
}

/// The `pause` / `unpause` subresources of a VMI (virt-api's checks, then virt-handler's
/// condition).
fn pause_call(inner: &Inner, ns: &str, name: &str, pause: bool) -> Result<(), ApiError> {
    let vmi_res = inner.rid("kubevirt.io", "virtualmachineinstances");
    let vmi = inner
        .store
        .get(vmi_res, ns, name)
        .ok_or_else(|| ApiError::not_found("kubevirt.io", "virtualmachineinstances", name))?;
    if let Some(e) = inner
        .faults
        .call(if pause { "pause" } else { "unpause" }, ns, name)
    {
        return Err(e);
    }
    let conflict =
        |msg: &str| ApiError::conflict("kubevirt.io", "virtualmachineinstance", name, msg);
    let running = vmi.pointer("/status/phase").and_then(Value::as_str) == Some("Running");
    match (pause, running, paused(&vmi)) {
        (true, false, _) => return Err(conflict("VM is not running")),
        (false, false, _) => return Err(conflict("VMI is not running")),
        (true, true, true) => return Err(conflict("VMI is already paused")),
        (false, true, false) => return Err(conflict("VMI is not paused")),
        _ => {}
    }
    inner.store.mutate(vmi_res, ns, name, |o| {
        let mut conds: Vec<Value> = o["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        conds.retain(|c| c["type"] != "Paused");
        if pause {
            conds.push(paused_condition());
        }
        o["status"]["conditions"] = json!(conds);
    })?;
    Ok(())
}

fn paused_condition() -> Value {
    json!({"type": "Paused", "status": "True", "reason": "PausedByUser",
           "message": "VMI was paused by user", "lastProbeTime": null,
           "lastTransitionTime": now_rfc3339()})
}

fn vm_action(inner: &Inner, ns: &str, name: &str, action: &str) -> Result<(), ApiError> {
    let vm_res = inner.rid("kubevirt.io", "virtualmachines");
    let vmi_res = inner.rid("kubevirt.io", "virtualmachineinstances");
    inner
        .store
        .get(vm_res, ns, name)
        .ok_or_else(|| ApiError::not_found("kubevirt.io", "virtualmachines", name))?;
    match action {
        "start" => {
            inner.store.mutate(vm_res, ns, name, |o| {
                if let Some(s) = o["spec"].as_object_mut() {
                    s.remove("running");
                }
                o["spec"]["runStrategy"] = json!("Always");
            })?;
        }
        "stop" => {
            inner.store.mutate(vm_res, ns, name, |o| {
                if let Some(s) = o["spec"].as_object_mut() {
                    s.remove("running");
                }
                o["spec"]["runStrategy"] = json!("Halted");
            })?;
        }
        _ => {
            if inner.store.get(vmi_res, ns, name).is_none() {
                return Err(ApiError::conflict(
                    "kubevirt.io",
                    "virtualmachines",
                    name,
                    "VM is not running",
                ));
            }
            inner.store.delete(vmi_res, ns, name, None, None, false)?;
        }
    }
    Ok(())
}

pub(crate) async fn freeze_call(
    inner: &Arc<Inner>,
    ns: &str,
    name: &str,
    action: &str,
    body: &[u8],
) -> Result<(), ApiError> {
    let received = Utc::now();
    let key = format!("{ns}/{name}");
    let freeze = action == "freeze";
    let act = if freeze {
        FreezeAction::Freeze
    } else {
        FreezeAction::Unfreeze
    };
    let fail = |e: ApiError| {
        inner
            .kubevirt
            .record(&key, act, received, e.code, None, &e.message);
        e
    };
    let vmi_res = inner.rid("kubevirt.io", "virtualmachineinstances");
    let vmi = inner.store.get(vmi_res, ns, name).ok_or_else(|| {
        fail(ApiError::not_found(
            "kubevirt.io",
            "virtualmachineinstances",
            name,
        ))
    })?;
    if let Some(e) = inner.faults.call(action, ns, name) {
        return Err(fail(e));
    }
    if vmi.pointer("/status/phase").and_then(Value::as_str) != Some("Running") {
        return Err(fail(ApiError::conflict(
            "kubevirt.io",
            "virtualmachineinstance",
            name,
            "VMI is not running",
        )));
    }
    let mut timeout = None;
    if freeze {
        let parsed: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            serde_json::from_slice(body).map_err(|e| {
                fail(ApiError::bad_request(format!(
                    "Can not unmarshal Request body to struct, error: {e}"
                )))
            })?
        };
        let t = match parsed.get("unfreezeTimeout") {
            None | Some(Value::Null) => {
                return Err(fail(ApiError::bad_request("UnfreezeTimeout has to be set")))
            }
            Some(Value::String(s)) if s.trim_start().starts_with('-') => {
                return Err(fail(ApiError::bad_request(
                    "UnfreezeTimeout must be positive",
                )))
            }
            Some(Value::String(s)) => crate::util::parse_go_duration(s).ok_or_else(|| {
                fail(ApiError::bad_request(format!(
                    "Can not unmarshal Request body to struct, error: time: invalid duration {s:?}"
                )))
            })?,
            Some(other) => {
                return Err(fail(ApiError::bad_request(format!(
                "Can not unmarshal Request body to struct, error: invalid unfreezeTimeout {other}"
            ))))
            }
        };
        timeout = Some(t);
    }
    if !agent_connected(&vmi) {
        return Err(fail(ApiError::internal(format!(
            "Internal error occurred: server error. command {} failed: \"LibvirtError(Code=86, Domain=10, Message='Guest agent is not responding: QEMU guest agent is not connected')\"",
            if freeze { "Freeze" } else { "Unfreeze" }
        ))));
    }
    if let Some(Err(e)) = real_agent(&vmi, freeze).await {
        return Err(fail(ApiError::internal(format!(
            "Internal error occurred: server error. {e}"
        ))));
    }
    if freeze {
        inner.kubevirt.frozen().insert(
            key.clone(),
            Frozen {
                deadline: timeout.filter(|t| !t.is_zero()).map(|t| Instant::now() + t),
            },
        );
    } else {
        inner.kubevirt.frozen().remove(&key);
    }
    let _ = inner.store.mutate(vmi_res, ns, name, |o| {
        if freeze {
            o["status"]["fsFreezeStatus"] = json!("frozen");
        } else if let Some(s) = o["status"].as_object_mut() {
            s.remove("fsFreezeStatus");
        }
    });
    inner.kubevirt.record(&key, act, received, 200, timeout, "");
    Ok(())
}

/// Freezes or thaws the VMI's real guest, when it has one: through a QEMU guest agent socket
/// (annotation [`AGENT_SOCKET_ANNOTATION`]) or through libvirt (annotation
/// [`AGENT_LIBVIRT_ANNOTATION`] = `URI DOMAIN`: `virsh domfsfreeze` / `domfsthaw`, the same
/// libvirt call KubeVirt's virt-launcher makes). `None` when the VMI is purely simulated.
pub async fn real_agent(vmi: &Value, freeze: bool) -> Option<Result<(), String>> {
    let annotations = vmi.pointer("/metadata/annotations")?;
    if let Some(sock) = annotations
        .get(AGENT_SOCKET_ANNOTATION)
        .and_then(Value::as_str)
    {
        let cmd = if freeze {
            "guest-fsfreeze-freeze"
        } else {
            "guest-fsfreeze-thaw"
        };
        return Some(
            guest_agent_command(sock, cmd)
                .await
                .map(|_| ())
                .map_err(|e| format!("command {cmd} on the guest agent at {sock} failed: {e}")),
        );
    }
    let target = annotations
        .get(AGENT_LIBVIRT_ANNOTATION)
        .and_then(Value::as_str)?;
    let Some((uri, domain)) = target.split_once(' ') else {
        return Some(Err(format!(
            "annotation {AGENT_LIBVIRT_ANNOTATION} must be `URI DOMAIN`, not {target:?}"
        )));
    };
    let verb = if freeze { "domfsfreeze" } else { "domfsthaw" };
    let run = tokio::process::Command::new("virsh")
        .args(["-c", uri, verb, domain])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    Some(
        match tokio::time::timeout(Duration::from_secs(30), run).await {
            Err(_) => Err(format!("virsh {verb} {domain} timed out after 30 s")),
            Ok(Err(e)) => Err(format!("running virsh {verb}: {e}")),
            Ok(Ok(o)) if o.status.success() => Ok(()),
            Ok(Ok(o)) => Err(format!(
                "virsh {verb} {domain} failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
        },
    )
}

/// Send `guest-sync` then `cmd` to a QEMU guest agent socket; returns the command's reply.
pub async fn guest_agent_command(socket: &str, cmd: &str) -> Result<Value, String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let fut = async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        let id: u32 = rand::random::<u32>() & 0x7fff_ffff;
        let sync = json!({"execute": "guest-sync", "arguments": {"id": id}});
        w.write_all(format!("{sync}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        // Skip stale replies until our sync id comes back.
        loop {
            let line = lines
                .next_line()
                .await
                .map_err(|e| e.to_string())?
                .ok_or("agent closed the socket")?;
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v.get("return").and_then(Value::as_u64) == Some(id as u64) {
                    break;
                }
            }
        }
        w.write_all(format!("{}\n", json!({"execute": cmd})).as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let line = lines
            .next_line()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("agent closed the socket")?;
        let v: Value =
            serde_json::from_str(&line).map_err(|e| format!("bad reply {line:?}: {e}"))?;
        if let Some(err) = v.get("error") {
            return Err(format!("agent error: {err}"));
        }
        Ok(v)
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "timed out after 10 s".to_string())?
}

fn agent_connected(vmi: &Value) -> bool {
    condition_true(vmi, "AgentConnected")
}

fn agent_wanted(vmi: &Value) -> bool {
    vmi.pointer("/metadata/annotations")
        .and_then(|a| a.get(AGENT_ANNOTATION))
        .and_then(Value::as_str)
        != Some("false")
}

/// Safety thaws whose timeout expired.
pub(crate) async fn safety_thaws(inner: &Arc<Inner>) {
    let now = Instant::now();
    let due: Vec<String> = {
        let mut f = inner.kubevirt.frozen();
        let due: Vec<String> = f
            .iter()
            .filter(|(_, s)| s.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &due {
            f.remove(k);
        }
        due
    };
    let vmi_res = inner.rid("kubevirt.io", "virtualmachineinstances");
    for key in due {
        let Some((ns, name)) = key.split_once('/') else {
            continue;
        };
        let mut msg = String::from("unfreezeTimeout expired");
        if let Some(vmi) = inner.store.get(vmi_res, ns, name) {
            if let Some(Err(e)) = real_agent(&vmi, false).await {
                msg = format!("unfreezeTimeout expired; thaw on the guest agent failed: {e}");
            }
        }
        let _ = inner.store.mutate(vmi_res, ns, name, |o| {
            if let Some(s) = o["status"].as_object_mut() {
                s.remove("fsFreezeStatus");
            }
        });
        inner
            .kubevirt
            .record(&key, FreezeAction::SafetyThaw, Utc::now(), 200, None, &msg);
    }
}

fn wants_running(vm: &Value, has_vmi: bool) -> bool {
    match vm.pointer("/spec/runStrategy").and_then(Value::as_str) {
        Some("Always" | "RerunOnFailure" | "Once") => true,
        Some("Halted") => false,
        Some("Manual") => has_vmi,
        _ => vm
            .pointer("/spec/running")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }
}

/// Per-object timers of the KubeVirt controllers.
#[derive(Default)]
pub(crate) struct KubeVirtTimers {
    vmi_seen: HashMap<String, Instant>,
    vmim_seen: HashMap<String, Instant>,
}

/// One pass over VMs, VMIs and VMIMs.
pub(crate) fn reconcile(inner: &Inner, timers: &mut KubeVirtTimers) {
    let vm_res = inner.rid("kubevirt.io", "virtualmachines");
    let vmi_res = inner.rid("kubevirt.io", "virtualmachineinstances");
    let (vms, _) = inner.store.list(vm_res, None);
    for vm in vms {
        let (name, ns) = name_ns(&vm);
        let vmi = inner.store.get(vmi_res, &ns, &name);
        let deleting = vm.pointer("/metadata/deletionTimestamp").is_some();
        let want = !deleting && wants_running(&vm, vmi.is_some());
        match (&vmi, want) {
            (None, true) => {
                let tmpl = vm.pointer("/spec/template").cloned().unwrap_or(json!({}));
                let mut labels = tmpl
                    .pointer("/metadata/labels")
                    .cloned()
                    .unwrap_or(json!({}));
                labels["kubevirt.io/vm"] = json!(name);
                let annotations = tmpl
                    .pointer("/metadata/annotations")
                    .cloned()
                    .unwrap_or(json!({}));
                let mut obj = json!({
                    "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                    "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations,
                        "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "name": name,
                            "uid": meta_str(&vm, "uid"), "controller": true, "blockOwnerDeletion": true}]},
                    "spec": tmpl.get("spec").cloned().unwrap_or(json!({})),
                });
                if inner.launcher.handles(&ns) {
                    obj["metadata"]["finalizers"] = json!([crate::launcher::VMI_FINALIZER]);
                }
                if let Err(e) = inner.store.create(vmi_res, obj) {
                    tracing::warn!("creating VMI {ns}/{name}: {e}");
                }
            }
            (Some(_), false) if !deleting => {
                let _ = inner.store.delete(vmi_res, &ns, &name, None, None, false);
                inner.kubevirt.frozen().remove(&format!("{ns}/{name}"));
            }
            _ => {}
        }
        let vmi = inner.store.get(vmi_res, &ns, &name);
        let phase = vmi.as_ref().and_then(|v| {
            v.pointer("/status/phase")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        let printable = match (&vmi, phase.as_deref(), want) {
            (None, _, false) => "Stopped",
            (None, _, true) => "Starting",
            (Some(v), Some("Running"), true) if paused(v) => "Paused",
            (Some(_), Some("Running"), true) => "Running",
            (Some(_), _, false) => "Stopping",
            (Some(_), _, true) => "Starting",
        };
        let ready = matches!(printable, "Running" | "Paused");
        let generation = vm
            .pointer("/metadata/generation")
            .cloned()
            .unwrap_or(json!(1));
        let volumes = vm
            .pointer("/spec/template/spec/volumes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let snap: Vec<Value> = volumes
            .iter()
            .map(|v| {
                let ok = v.get("persistentVolumeClaim").is_some() || v.get("dataVolume").is_some();
                let mut s = json!({"name": v["name"], "enabled": ok});
                if !ok {
                    s["reason"] = json!("Snapshot is not supported for this volumeSource type");
                }
                s
            })
            .collect();
        let _ = inner.store.mutate(vm_res, &ns, &name, |o| {
            let st = &mut o["status"];
            if !st.is_object() {
                *st = json!({});
            }
            st["printableStatus"] = json!(printable);
            st["ready"] = json!(ready);
            st["created"] = json!(vmi.is_some());
            st["observedGeneration"] = generation.clone();
            st["desiredGeneration"] = generation.clone();
            st["volumeSnapshotStatuses"] = json!(snap);
            let cond_ready = if ready { "True" } else { "False" };
            let keep: Vec<Value> = st["conditions"].as_array().cloned().unwrap_or_default();
            let prev = keep.iter().find(|c| c["type"] == "Ready").cloned();
            let ts = match &prev {
                Some(p) if p["status"] == cond_ready => p["lastTransitionTime"].clone(),
                _ => json!(now_rfc3339()),
            };
            st["conditions"] = json!([{"type": "Ready", "status": cond_ready, "lastProbeTime": null, "lastTransitionTime": ts}]);
        });
    }

    let (vmis, _) = inner.store.list(vmi_res, None);
    let now = Instant::now();
    for vmi in vmis {
        let (name, ns) = name_ns(&vmi);
        let uid = meta_str(&vmi, "uid").unwrap_or_default().to_string();
        let seen = *timers.vmi_seen.entry(uid.clone()).or_insert(now);
        let phase = vmi
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("");
        // A VMI of a namespace handed to the real launcher follows its domain.
        let launched = inner.launcher.handles(&ns);
        let launch = if launched {
            inner.launcher.phase(&ns, &name, &uid)
        } else {
            None
        };
        let agent = if launched {
            matches!(launch, Some(LaunchPhase::Running { agent: true }))
        } else {
            agent_wanted(&vmi)
        };
        let agent_target = if launched {
            inner.launcher.agent_target(&ns, &name)
        } else {
            None
        };
        let target_phase = match &launch {
            _ if !launched => {
                if now.duration_since(seen) >= crate::ms(inner.timings.vmi_start_ms) {
                    "Running"
                } else {
                    "Pending"
                }
            }
            Some(LaunchPhase::Running { .. }) => "Running",
            Some(LaunchPhase::Failed(_)) => "Failed",
            _ => "Scheduled",
        };
        let failure = match &launch {
            Some(LaunchPhase::Failed(m)) => Some(m.clone()),
            _ => None,
        };
        if phase == "Succeeded" || phase == "Failed" {
            continue;
        }
        let frozen = inner
            .kubevirt
            .frozen()
            .contains_key(&format!("{ns}/{name}"));
        let _ = inner.store.mutate(vmi_res, &ns, &name, |o| {
            if let Some(t) = &agent_target {
                if !o["metadata"]["annotations"].is_object() {
                    o["metadata"]["annotations"] = json!({});
                }
                o["metadata"]["annotations"][AGENT_LIBVIRT_ANNOTATION] = json!(t);
            }
            let st = &mut o["status"];
            if !st.is_object() {
                *st = json!({});
            }
            let old_phase = st["phase"].as_str().unwrap_or("").to_string();
            if old_phase != target_phase && old_phase != "Running" {
                st["phase"] = json!(target_phase);
                let mut ts = st["phaseTransitionTimestamps"].as_array().cloned().unwrap_or_default();
                ts.push(json!({"phase": target_phase, "phaseTransitionTimestamp": now_rfc3339()}));
                st["phaseTransitionTimestamps"] = json!(ts);
            }
            if let Some(msg) = &failure {
                st["conditions"] = json!([{"type": "Synchronized", "status": "False", "reason": "SyncFailed",
                    "message": msg, "lastProbeTime": null, "lastTransitionTime": now_rfc3339()}]);
                return;
            }
            let running = st["phase"] == "Running";
            if running {
                // Scheduled once: the node stays until a migration moves the VMI.
                if st["nodeName"].as_str().is_none_or(str::is_empty) {
                    let node = o
                        .pointer("/spec/nodeSelector")
                        .and_then(|s| s.get(HOSTNAME_LABEL))
                        .and_then(Value::as_str)
                        .unwrap_or(NODE)
                        .to_string();
                    o["status"]["nodeName"] = json!(node);
                }
                // virt-controller keeps a scheduled VMI labelled with its node (what node agents
                // such as virt-handler select on).
                let node = o["status"]["nodeName"].clone();
                if !o["metadata"]["labels"].is_object() {
                    o["metadata"]["labels"] = json!({});
                }
                o["metadata"]["labels"][NODE_NAME_LABEL] = node;
                let st = &mut o["status"];
                st["qosClass"] = json!("Burstable");
                st["guestOSInfo"] = if agent { json!({"id": "sim", "name": "virtguard-sim guest"}) } else { json!({}) };
                let vols: Vec<Value> = o["spec"]["volumes"].as_array().cloned().unwrap_or_default().iter().enumerate().map(|(i, v)| {
                    let mut s = json!({"name": v["name"], "target": format!("vd{}", (b'a' + (i as u8 % 26)) as char)});
                    if let Some(c) = v.pointer("/persistentVolumeClaim/claimName").or_else(|| v.pointer("/dataVolume/name")) {
                        s["persistentVolumeClaimInfo"] = json!({"claimName": c});
                    }
                    s
                }).collect();
                o["status"]["volumeStatus"] = json!(vols);
                // virt-handler reports every interface with its MAC (from the domain, and from
                // the guest agent when it runs); without a macAddress in the spec, libvirt's.
                let ifaces: Vec<Value> = o["spec"]["domain"]["devices"]["interfaces"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|i| {
                        let iname = i["name"].as_str().unwrap_or("");
                        let mac = i["macAddress"].as_str().map(str::to_string).unwrap_or_else(|| {
                            use sha2::Digest as _;
                            let b = sha2::Sha256::digest(format!("{ns}/{name}/{iname}").as_bytes());
                            format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
                        });
                        json!({
                            "name": iname,
                            "mac": mac,
                            "infoSource": if agent { "domain, guest-agent" } else { "domain" },
                        })
                    })
                    .collect();
                if !ifaces.is_empty() {
                    o["status"]["interfaces"] = json!(ifaces);
                }
                let st = &mut o["status"];
                let mut conds = vec![
                    json!({"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": null}),
                    json!({"type": "LiveMigratable", "status": "True", "lastProbeTime": null, "lastTransitionTime": null}),
                ];
                if agent {
                    conds.push(json!({"type": "AgentConnected", "status": "True", "lastProbeTime": null, "lastTransitionTime": null}));
                }
                // Set and cleared only by the pause / unpause subresources.
                if let Some(p) = st["conditions"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["type"] == "Paused"))
                {
                    conds.push(p.clone());
                }
                st["conditions"] = json!(conds);
                if frozen {
                    st["fsFreezeStatus"] = json!("frozen");
                } else if let Some(m) = st.as_object_mut() {
                    m.remove("fsFreezeStatus");
                }
            } else {
                st["conditions"] = json!([{"type": "Ready", "status": "False", "lastProbeTime": null, "lastTransitionTime": null}]);
            }
        });
    }

    reconcile_migrations(inner, timers);
}

const MIGRATION_PHASES: &[&str] = &[
    "Pending",
    "Scheduling",
    "Scheduled",
    "PreparingTarget",
    "TargetReady",
    "Running",
    "Succeeded",
];

fn reconcile_migrations(inner: &Inner, timers: &mut KubeVirtTimers) {
    let res = inner.rid("kubevirt.io", "virtualmachineinstancemigrations");
    let vmi_res = inner.rid("kubevirt.io", "virtualmachineinstances");
    let (all, _) = inner.store.list(res, None);
    let now = Instant::now();
    for m in all {
        let (name, ns) = name_ns(&m);
        let uid = meta_str(&m, "uid").unwrap_or_default().to_string();
        let seen = *timers.vmim_seen.entry(uid.clone()).or_insert(now);
        let elapsed = now.duration_since(seen).as_millis() as u64;
        let timeline: Vec<(String, u64)> = match m
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(TIMELINE_ANNOTATION))
            .and_then(Value::as_str)
        {
            Some(t) => t
                .split(',')
                .filter_map(|p| {
                    let (ph, ms) = p.trim().split_once(':')?;
                    Some((ph.trim().to_string(), ms.trim().parse().ok()?))
                })
                .collect(),
            None => MIGRATION_PHASES
                .iter()
                .enumerate()
                .map(|(i, p)| (p.to_string(), i as u64 * inner.timings.migration_step_ms))
                .collect(),
        };
        let Some((phase, _)) = timeline.iter().rev().find(|(_, at)| *at <= elapsed) else {
            continue;
        };
        let cur = m
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("");
        if cur == phase {
            continue;
        }
        if cur == "Succeeded" || cur == "Failed" {
            continue;
        }
        let vmi_name = m
            .pointer("/spec/vmiName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let phase = phase.clone();
        let _ = inner.store.mutate(res, &ns, &name, |o| {
            let st = &mut o["status"];
            if !st.is_object() {
                *st = json!({});
            }
            st["phase"] = json!(phase);
            let mut ts = st["phaseTransitionTimestamps"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            ts.push(json!({"phase": phase, "phaseTransitionTimestamp": now_rfc3339()}));
            st["phaseTransitionTimestamps"] = json!(ts);
        });
        if matches!(phase.as_str(), "Running" | "Succeeded" | "Failed") {
            let done = phase != "Running";
            let _ = inner.store.mutate(vmi_res, &ns, &vmi_name, |o| {
                let ms = &mut o["status"]["migrationState"];
                if !ms.is_object() {
                    *ms = json!({"startTimestamp": now_rfc3339(), "sourceNode": NODE, "targetNode": "sim-node-2", "migrationUid": uid});
                }
                if done {
                    ms["endTimestamp"] = json!(now_rfc3339());
                    ms["completed"] = json!(phase == "Succeeded");
                    ms["failed"] = json!(phase == "Failed");
                }
            });
        }
    }
}
