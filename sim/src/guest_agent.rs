//! The guest-agent subresources of a VMI, as virt-api serves them:
//! `GET /apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}/guestosinfo`
//! (`VirtualMachineInstanceGuestAgentInfo`) and `.../filesystemlist`
//! (`VirtualMachineInstanceFileSystemList`), shapes from the vendored KubeVirt schema.
//!
//! - 404 when there is no such VMI; 409 `VMI is not running` unless it is Running; 500 with
//!   virt-api's message `VMI does not have guest agent connected` without the `AgentConnected`
//!   condition.
//! - A VMI with a real guest agent (the libvirt annotation, set by the sim's [`crate::launcher`]
//!   or the scenario's `guestAgentLibvirt`) is asked through libvirt (`guest-get-osinfo`,
//!   `guest-get-host-name`, `guest-info`, `guest-get-fsinfo`), like virt-handler asks it; an
//!   agent that fails to answer gives 500 with the agent's error.
//! - A simulated VMI answers from its spec: each PVC/DataVolume disk `vdX` is an ext4 filesystem,
//!   the first mounted at `/`, the others at `/mnt/<volume>`.
//!
//! Invariant: answers are derived from the agent or the VMI's own spec, never invented per call,
//! so two calls give the same list.

use serde_json::{json, Value};

use crate::status::ApiError;
use crate::Inner;

/// VMI annotation `"false"`: the VMI has no guest agent.
pub const AGENT_ANNOTATION: &str = "virtguard.io/sim-guest-agent";
/// VMI annotation: freeze/thaw also go to a real QEMU guest agent on this unix socket.
pub const AGENT_SOCKET_ANNOTATION: &str = "virtguard.io/sim-guest-agent-socket";
/// VMI annotation `URI DOMAIN`: freeze/thaw and these subresources go to that libvirt domain's
/// real guest agent.
pub const AGENT_LIBVIRT_ANNOTATION: &str = "virtguard.io/sim-guest-agent-libvirt";

/// Serves `guestosinfo` or `filesystemlist` of VMI `ns/name`.
pub(crate) async fn serve(
    inner: &Inner,
    ns: &str,
    name: &str,
    what: &str,
) -> Result<Value, ApiError> {
    let vmi_res = inner.rid("kubevirt.io", "virtualmachineinstances");
    let vmi = inner
        .store
        .get(vmi_res, ns, name)
        .ok_or_else(|| ApiError::not_found("kubevirt.io", "virtualmachineinstances", name))?;
    if let Some(e) = inner.faults.call(what, ns, name) {
        return Err(e);
    }
    if vmi.pointer("/status/phase").and_then(Value::as_str) != Some("Running") {
        return Err(ApiError::conflict(
            "kubevirt.io",
            "virtualmachineinstance",
            name,
            "VMI is not running",
        ));
    }
    let connected = vmi
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "AgentConnected" && c["status"] == "True")
        });
    if !connected {
        // virt-api answers 500 with a conflict-style message here.
        return Err(ApiError::new(
            500,
            "InternalError",
            format!("Operation cannot be fulfilled on virtualmachineinstance.kubevirt.io \"{name}\": VMI does not have guest agent connected"),
        ));
    }
    let real = vmi
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(AGENT_LIBVIRT_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(|t| t.split_once(' '))
        .map(|(u, d)| (u.to_string(), d.to_string()));
    let filesystems = match &real {
        Some((uri, domain)) => agent(uri, domain, "guest-get-fsinfo")
            .await?
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(filesystem_from_agent)
            .collect(),
        None => simulated_filesystems(&vmi),
    };
    match what {
        "filesystemlist" => Ok(json!({"metadata": {}, "items": filesystems})),
        _ => {
            let (os, host, version) = match &real {
                Some((uri, domain)) => {
                    let os = agent(uri, domain, "guest-get-osinfo").await?;
                    let host = agent(uri, domain, "guest-get-host-name").await?;
                    let info = agent(uri, domain, "guest-info").await?;
                    (
                        json!({
                            "name": os["name"], "id": os["id"], "prettyName": os["pretty-name"],
                            "version": os["version"], "versionId": os["version-id"],
                            "kernelRelease": os["kernel-release"], "kernelVersion": os["kernel-version"],
                            "machine": os["machine"],
                        }),
                        host["host-name"].clone(),
                        info["version"].clone(),
                    )
                }
                None => (
                    json!({"id": "sim", "name": "virtguard-sim guest", "prettyName": "virtguard-sim guest"}),
                    json!(name),
                    json!("sim"),
                ),
            };
            Ok(json!({
                "guestAgentVersion": version,
                "hostname": host,
                "os": strip_nulls(os),
                "fsInfo": {"disks": filesystems},
            }))
        }
    }
}

fn strip_nulls(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.retain(|_, x| !x.is_null());
    }
    v
}

/// One `guest-get-fsinfo` entry as a `VirtualMachineInstanceFileSystem`.
fn filesystem_from_agent(f: &Value) -> Value {
    let disks: Vec<Value> = f["disk"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            strip_nulls(
                json!({"busType": d["bus-type"].as_str().unwrap_or(""), "serial": d["serial"]}),
            )
        })
        .collect();
    json!({
        "diskName": f["name"].as_str().unwrap_or(""),
        "mountPoint": f["mountpoint"].as_str().unwrap_or(""),
        "fileSystemType": f["type"].as_str().unwrap_or(""),
        "usedBytes": f["used-bytes"].as_u64().unwrap_or(0),
        "totalBytes": f["total-bytes"].as_u64().unwrap_or(0),
        "disk": disks,
    })
}

fn simulated_filesystems(vmi: &Value) -> Vec<Value> {
    vmi.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("persistentVolumeClaim").is_some() || v.get("dataVolume").is_some())
        .enumerate()
        .map(|(i, v)| {
            let vol = v["name"].as_str().unwrap_or("");
            json!({
                "diskName": format!("vd{}", (b'a' + (i as u8 % 26)) as char),
                "mountPoint": if i == 0 { "/".to_string() } else { format!("/mnt/{vol}") },
                "fileSystemType": "ext4",
                "usedBytes": 0,
                "totalBytes": 0,
                "disk": [{"busType": "virtio"}],
            })
        })
        .collect()
}

/// Runs one guest-agent command through libvirt; its `return` value.
async fn agent(uri: &str, domain: &str, cmd: &str) -> Result<Value, ApiError> {
    let out = crate::launcher::virsh(
        uri,
        &[
            "qemu-agent-command",
            domain,
            &json!({"execute": cmd}).to_string(),
            "--timeout",
            "10",
        ],
    )
    .await
    .map_err(|e| ApiError::internal(format!("Internal error occurred: {cmd}: {e}")))?;
    let v: Value = serde_json::from_str(out.trim()).map_err(|e| {
        ApiError::internal(format!("Internal error occurred: {cmd}: bad reply: {e}"))
    })?;
    Ok(v.get("return").cloned().unwrap_or(Value::Null))
}
