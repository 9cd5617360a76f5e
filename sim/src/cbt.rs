//! KubeVirt changed block tracking: `backup.kubevirt.io/v1alpha1` VirtualMachineBackup in
//! **pull** mode, with a minimal VirtualMachineBackupTracker.
//!
//! # Enabling CBT
//!
//! Real KubeVirt enables CBT for the VMs matched by `changedBlockTrackingLabelSelectors` in its
//! CR (after a restart). The sim enables it for every VM annotated
//! `virtguard.io/sim-changed-block-tracking: "true"` (on the VM or its template; the scenario's
//! VM flag `changedBlockTracking: true` sets it on the template): the VM
//! and its VMI get `status.changedBlockTracking.state: Enabled` (`v1.ChangedBlockTrackingStatus`).
//!
//! # VirtualMachineBackup (pull mode)
//!
//! On create (`spec.mode` `Pull`, any case; `Push` is refused with condition `Failed`):
//! 1. source: `spec.source.kind` `VirtualMachine` (a full backup, no checkpoint history) or
//!    `VirtualMachineBackupTracker` (see below). The VM must have CBT `Enabled` and a Running VMI
//!    (online backups only, like KubeVirt's first phase).
//! 2. quiesce through the same code path as the `freeze` subresource (so the freeze log records
//!    it; unfreezeTimeout 1m) unless `spec.skipQuiesce`; a failed freeze (no guest agent) does
//!    not fail the backup, it is reported as `quiesceStatus: Failed`;
//! 3. checkpoint: a point-in-time copy of each PVC/DataVolume volume of the VMI into
//!    `<state-dir>/checkpoints/<ns>/<checkpoint>/<volume>.img` (the sim's stand-in for QEMU's
//!    dirty bitmap + fleecing image), then thaw;
//! 4. status: `checkpointName` (`<tracker or backup name>-<unix ms>`), `type` `Full` |
//!    `Incremental`, `includedVolumes[{volumeName, mapEndpoint, dataEndpoint}]`, `endpointCert`
//!    (PEM of the export server CA), conditions `Ready=True` (endpoints serve) or `Failed=True`
//!    with the reason; the VMI's `status.changedBlockTracking.backupStatus` records the run.
//!
//! Endpoints are served by the export server (same port and CA as VirtualMachineExport) under
//! `/_backup/<ns>/<backup>/volumes/<volume>/{map,data}` and need the token of the Secret named
//! by `spec.tokenSecretRef` (key `token`; one `backup-token-<name>` owned by the backup is
//! generated when unset) in the `x-kubevirt-export-token` header or query parameter (401
//! otherwise) — the export server's check.
//! - `data`: the checkpoint's raw image; `HEAD` gives the size, `Range: bytes=a-b` → 206.
//! - `map`: `application/json`, a JSON array of extents in offset order,
//!   `[{"start": 0, "length": 65536, "zero": false}, ...]`, aligned to 64 KiB (QEMU's default
//!   dirty-bitmap granularity; the last one may end at the image size). For an `Incremental`
//!   backup it lists the extents that changed since the base checkpoint — everything not
//!   listed reads exactly as it did at the base; for a `Full` backup it lists the extents that
//!   hold data — everything not listed reads as zeros. `zero: true` marks a listed extent that
//!   now reads as zeros. KubeVirt's documentation does not fix a map format; this follows
//!   `qemu-img map --output=json` (start/length/zero). Unlike a real dirty bitmap, the sim
//!   finds changes by comparing the images, so a block rewritten with identical bytes is not
//!   reported (a subset of what QEMU would report; consumers must not rely on either).
//!
//! Faults: `backup-failed` (target = the backup) fails it after the quiesce, before the
//! checkpoint (the guest is thawed; condition `Failed` with the rule's `message`);
//! `export-drop-after` (target = the backup) drops `data` downloads after `bytes` bytes.
//!
//! Deleting the backup ends it (endpoints answer 404). TTL `spec.ttlDuration` (default 2 h)
//! deletes it. Checkpoint copies are removed as soon as no live backup serves them and no
//! tracker names them as its latest checkpoint.
//!
//! # VirtualMachineBackupTracker (not in the reference schema; modelled minimally)
//!
//! `spec.source` = `{apiGroup: kubevirt.io, kind: VirtualMachine, name}`;
//! `status.latestCheckpoint` = `{name, creationTime, volumes[{volumeName}]}` (the schema's
//! `v1alpha1.BackupCheckpoint`), set when a backup through the tracker takes its checkpoint.
//! A backup through a tracker with a latest checkpoint (whose copy still exists) is
//! `Incremental` against it, unless `spec.forceFullBackup`; the tracker then moves to the new
//! checkpoint and the old copy goes. Deleting the tracker drops its checkpoint copy.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::http::{text_response, Body};
use crate::store::{meta_str, name_ns, now_rfc3339};
use crate::Inner;

/// VM annotation that turns changed block tracking on in the sim.
pub const CBT_ANNOTATION: &str = "virtguard.io/sim-changed-block-tracking";
/// Map granularity (QEMU's default dirty-bitmap granularity).
pub const GRANULARITY: u64 = 64 * 1024;
/// URL prefix of the backup endpoints on the export server (`_` keeps it apart from namespaces).
pub const URL_PREFIX: &str = "_backup";

const GROUP: &str = "backup.kubevirt.io";

/// One extent of a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub start: u64,
    pub length: u64,
    pub zero: bool,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Directory holding the copies of checkpoint `name` in `ns`.
pub fn checkpoint_dir(state_dir: &Path, ns: &str, name: &str) -> PathBuf {
    state_dir.join("checkpoints").join(ns).join(name)
}

/// The annotation on the VM or on its template (where the scenario's `annotations:` go).
fn cbt_wanted(vm: &Value) -> bool {
    [
        "/metadata/annotations",
        "/spec/template/metadata/annotations",
    ]
    .iter()
    .any(|p| {
        vm.pointer(p)
            .and_then(|a| a.get(CBT_ANNOTATION))
            .and_then(Value::as_str)
            == Some("true")
    })
}

fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": now_rfc3339()})
}

/// PVC-backed volumes of a VMI: `(volume name, claim name)`.
fn pvc_volumes(vmi: &Value) -> Vec<(String, String)> {
    vmi.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter_map(|v| {
                    let claim = v
                        .pointer("/persistentVolumeClaim/claimName")
                        .or_else(|| v.pointer("/dataVolume/name"))
                        .and_then(Value::as_str)?;
                    Some((v["name"].as_str()?.to_string(), claim.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Extents of `img` that differ from `base` (`None`: extents holding data).
pub fn compute_map(img: &Path, base: Option<&Path>) -> std::io::Result<Vec<Extent>> {
    let mut a = std::fs::File::open(img)?;
    let len = a.metadata()?.len();
    let mut b = match base {
        Some(p) => Some(std::fs::File::open(p)?),
        None => None,
    };
    let blen = match &b {
        Some(f) => f.metadata()?.len(),
        None => 0,
    };
    let g = GRANULARITY as usize;
    let (mut ba, mut bb) = (vec![0u8; g], vec![0u8; g]);
    let mut out: Vec<Extent> = Vec::new();
    let mut off = 0u64;
    while off < len {
        let n = ((len - off) as usize).min(g);
        crate::disk::read_full(&mut a, &mut ba[..n])?;
        let zero = ba[..n].iter().all(|x| *x == 0);
        let changed = match &mut b {
            None => !zero,
            Some(f) if off + n as u64 <= blen => {
                f.seek(SeekFrom::Start(off))?;
                f.read_exact(&mut bb[..n])?;
                ba[..n] != bb[..n]
            }
            // The image grew: the new part counts as changed.
            Some(_) => true,
        };
        if changed {
            match out.last_mut() {
                Some(l) if l.start + l.length == off && l.zero == zero => l.length += n as u64,
                _ => out.push(Extent {
                    start: off,
                    length: n as u64,
                    zero,
                }),
            }
        }
        off += n as u64;
    }
    Ok(out)
}

fn set_cbt_state(inner: &Inner, group: &str, plural: &str, ns: &str, name: &str) {
    let res = inner.rid(group, plural);
    let _ = inner.store.mutate(res, ns, name, |o| {
        if !o["status"].is_object() {
            o["status"] = json!({});
        }
        if !o["status"]["changedBlockTracking"].is_object() {
            o["status"]["changedBlockTracking"] = json!({});
        }
        o["status"]["changedBlockTracking"]["state"] = json!("Enabled");
    });
}

/// One pass of the CBT controller.
pub(crate) async fn reconcile(inner: &Arc<Inner>) {
    let vm_res = inner.rid("kubevirt.io", "virtualmachines");
    let vmi_res = inner.rid("kubevirt.io", "virtualmachineinstances");
    let (vms, _) = inner.store.list(vm_res, None);
    for vm in vms.iter().filter(|v| cbt_wanted(v)) {
        let (name, ns) = name_ns(vm);
        set_cbt_state(inner, "kubevirt.io", "virtualmachines", &ns, &name);
        if inner.store.get(vmi_res, &ns, &name).is_some() {
            set_cbt_state(inner, "kubevirt.io", "virtualmachineinstances", &ns, &name);
        }
    }

    let res = inner.rid(GROUP, "virtualmachinebackups");
    let (backups, _) = inner.store.list(res, None);
    let now = chrono::Utc::now();
    for b in &backups {
        if b.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let (name, ns) = name_ns(b);
        let ttl = b
            .pointer("/spec/ttlDuration")
            .and_then(Value::as_str)
            .and_then(crate::util::parse_go_duration)
            .unwrap_or(std::time::Duration::from_secs(2 * 3600));
        let created = meta_str(b, "creationTimestamp")
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or(now);
        if now >= created + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(2)) {
            let _ = inner.store.delete(res, &ns, &name, None, None, false);
            continue;
        }
        if b.pointer("/status/conditions").is_some() {
            continue; // already processed (Ready or Failed)
        }
        let status = match run_backup(inner, b).await {
            Ok(st) => st,
            Err((reason, message)) => {
                tracing::info!("VirtualMachineBackup {ns}/{name} failed: {message}");
                json!({"conditions": [cond("Ready", "False", reason, &message),
                                      cond("Failed", "True", reason, &message)]})
            }
        };
        let _ = inner
            .store
            .mutate(res, &ns, &name, |o| o["status"] = status);
    }
    gc_checkpoints(inner);
}

type Failure = (&'static str, String);

async fn run_backup(inner: &Arc<Inner>, b: &Value) -> Result<Value, Failure> {
    let (name, ns) = name_ns(b);
    let uid = meta_str(b, "uid").unwrap_or_default().to_string();
    let spec = &b["spec"];
    let mode = spec["mode"].as_str().unwrap_or("Push");
    if !mode.eq_ignore_ascii_case("pull") {
        return Err((
            "NotSimulated",
            format!("mode {mode:?} is not simulated by virtguard-sim: use Pull"),
        ));
    }
    let tracker_res = inner.rid(GROUP, "virtualmachinebackuptrackers");
    let src_kind = spec
        .pointer("/source/kind")
        .and_then(Value::as_str)
        .unwrap_or("");
    let src_name = spec
        .pointer("/source/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let (vm_name, tracker) = match src_kind {
        "VirtualMachine" => (src_name.to_string(), None),
        "VirtualMachineBackupTracker" => {
            let t = inner.store.get(tracker_res, &ns, src_name).ok_or((
                "TrackerNotFound",
                format!("VirtualMachineBackupTracker {ns}/{src_name} not found"),
            ))?;
            let vm = t
                .pointer("/spec/source/name")
                .and_then(Value::as_str)
                .ok_or((
                    "InvalidTracker",
                    format!("VirtualMachineBackupTracker {ns}/{src_name} has no spec.source.name"),
                ))?
                .to_string();
            (vm, Some(t))
        }
        other => {
            return Err((
                "InvalidSource",
                format!("source kind {other:?}: use VirtualMachine or VirtualMachineBackupTracker"),
            ))
        }
    };
    let vm = inner
        .store
        .get(inner.rid("kubevirt.io", "virtualmachines"), &ns, &vm_name)
        .ok_or((
            "VMNotFound",
            format!("VirtualMachine {ns}/{vm_name} not found"),
        ))?;
    if vm
        .pointer("/status/changedBlockTracking/state")
        .and_then(Value::as_str)
        != Some("Enabled")
    {
        return Err((
            "ChangedBlockTrackingNotEnabled",
            format!("VirtualMachine {ns}/{vm_name} does not have changed block tracking enabled"),
        ));
    }
    let vmi_res = inner.rid("kubevirt.io", "virtualmachineinstances");
    let vmi = inner
        .store
        .get(vmi_res, &ns, &vm_name)
        .filter(|v| v.pointer("/status/phase").and_then(Value::as_str) == Some("Running"))
        .ok_or((
            "VMNotRunning",
            format!(
                "VirtualMachine {ns}/{vm_name} is not running (only online backups are supported)"
            ),
        ))?;
    let volumes = pvc_volumes(&vmi);
    let mut files = Vec::new();
    for (vol, claim) in &volumes {
        let f = crate::snapshot::pvc_file(inner, &ns, claim)
            .map_err(|e| ("VolumeNotReady", e.to_string()))?;
        files.push((vol.clone(), f));
    }

    // Base checkpoint (incremental) from the tracker.
    let base = tracker
        .as_ref()
        .filter(|_| spec["forceFullBackup"].as_bool() != Some(true))
        .and_then(|t| t.pointer("/status/latestCheckpoint/name"))
        .and_then(Value::as_str)
        .map(|n| checkpoint_dir(&inner.state_dir, &ns, n))
        .filter(|d| d.is_dir());
    let prefix = tracker
        .as_ref()
        .map(|_| src_name.to_string())
        .unwrap_or_else(|| name.clone());
    let checkpoint = format!("{prefix}-{}", chrono::Utc::now().timestamp_millis());
    let dir = checkpoint_dir(&inner.state_dir, &ns, &checkpoint);
    let started = now_rfc3339();

    // Token secret.
    let secret_res = inner.rid("", "secrets");
    if spec["tokenSecretRef"].as_str().is_none() {
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": format!("backup-token-{name}"), "namespace": ns,
                "ownerReferences": [{"apiVersion": "backup.kubevirt.io/v1alpha1", "kind": "VirtualMachineBackup", "name": name, "uid": uid, "controller": true}]},
            "data": {"token": b64().encode(crate::util::random_token())},
        });
        let _ = inner.store.create(secret_res, secret);
    }

    // Quiesce → point-in-time copies → thaw.
    let quiesce = if spec["skipQuiesce"].as_bool() == Some(true) {
        "Skipped"
    } else {
        match crate::kubevirt::freeze_call(
            inner,
            &ns,
            &vm_name,
            "freeze",
            br#"{"unfreezeTimeout":"1m"}"#,
        )
        .await
        {
            Ok(()) => "Succeeded",
            Err(_) => "Failed",
        }
    };
    let fault = inner
        .faults
        .object_event("backup-failed", &ns, &[&name])
        .map(|r| {
            r.message
                .unwrap_or_else(|| "injected fault: checkpoint failed".into())
        });
    let copies = files.clone();
    let cdir = dir.clone();
    let copied = tokio::task::spawn_blocking(move || -> Result<(), String> {
        if let Some(m) = fault {
            return Err(m);
        }
        for (vol, f) in &copies {
            crate::disk::copy_sparse(f, &cdir.join(format!("{vol}.img")), true)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    if quiesce == "Succeeded" {
        let _ = crate::kubevirt::freeze_call(inner, &ns, &vm_name, "unfreeze", b"").await;
    }
    if let Err(e) = copied {
        let _ = std::fs::remove_dir_all(&dir);
        return Err((
            "CheckpointFailed",
            format!("taking checkpoint {checkpoint}: {e}"),
        ));
    }
    let created = now_rfc3339();

    // Maps, computed once.
    let (mdir, bdir) = (dir.clone(), base.clone());
    let vols: Vec<String> = volumes.iter().map(|(v, _)| v.clone()).collect();
    let maps = tokio::task::spawn_blocking(move || -> Result<(), String> {
        for v in &vols {
            let img = mdir.join(format!("{v}.img"));
            let base_img = bdir.as_ref().map(|d| d.join(format!("{v}.img")));
            // A volume new since the base checkpoint: everything with data changed.
            let base_img = base_img.filter(|p| p.is_file());
            let m = compute_map(&img, base_img.as_deref()).map_err(|e| e.to_string())?;
            let body = serde_json::to_vec(&m).map_err(|e| e.to_string())?;
            std::fs::write(mdir.join(format!("{v}.map.json")), body).map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    if let Err(e) = maps {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(("CheckpointFailed", format!("computing the maps: {e}")));
    }

    let typ = if base.is_some() {
        "Incremental"
    } else {
        "Full"
    };
    let url = format!(
        "https://127.0.0.1:{}/{URL_PREFIX}/{ns}/{name}/volumes",
        inner.export.port
    );
    let included: Vec<Value> = volumes
        .iter()
        .map(|(v, _)| {
            json!({"volumeName": v, "mapEndpoint": format!("{url}/{v}/map"),
                   "dataEndpoint": format!("{url}/{v}/data")})
        })
        .collect();
    if let Some(t) = &tracker {
        let (tname, _) = name_ns(t);
        let vols: Vec<Value> = volumes
            .iter()
            .map(|(v, _)| json!({"volumeName": v}))
            .collect();
        let _ = inner.store.mutate(tracker_res, &ns, &tname, |o| {
            o["status"] = json!({"latestCheckpoint": {"name": checkpoint, "creationTime": created, "volumes": vols}});
        });
    }
    let vols: Vec<Value> = volumes
        .iter()
        .map(|(v, _)| json!({"volumeName": v}))
        .collect();
    let _ = inner.store.mutate(vmi_res, &ns, &vm_name, |o| {
        o["status"]["changedBlockTracking"]["backupStatus"] = json!({
            "backupName": name, "checkpointName": checkpoint, "completed": true, "failed": false,
            "quiesceStatus": quiesce, "startTimestamp": started, "endTimestamp": created,
            "volumes": vols,
        });
    });
    Ok(json!({
        "type": typ,
        "checkpointName": checkpoint,
        "endpointCert": inner.export.ca_pem,
        "includedVolumes": included,
        "conditions": [cond("Ready", "True", "EndpointsReady",
            &format!("{typ} backup: pull endpoints are ready (quiesce {quiesce})"))],
    }))
}

/// Removes checkpoint copies that no live backup serves and no tracker names.
fn gc_checkpoints(inner: &Inner) {
    let mut keep: BTreeSet<(String, String)> = BTreeSet::new();
    let (backups, _) = inner
        .store
        .list(inner.rid(GROUP, "virtualmachinebackups"), None);
    for b in &backups {
        if b.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        if let Some(c) = b.pointer("/status/checkpointName").and_then(Value::as_str) {
            keep.insert((name_ns(b).1, c.to_string()));
        }
    }
    let (trackers, _) = inner
        .store
        .list(inner.rid(GROUP, "virtualmachinebackuptrackers"), None);
    for t in &trackers {
        if let Some(c) = t
            .pointer("/status/latestCheckpoint/name")
            .and_then(Value::as_str)
        {
            keep.insert((name_ns(t).1, c.to_string()));
        }
    }
    let root = inner.state_dir.join("checkpoints");
    let Ok(nss) = std::fs::read_dir(&root) else {
        return;
    };
    for ns in nss.flatten() {
        let nsn = ns.file_name().to_string_lossy().to_string();
        for c in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            let cn = c.file_name().to_string_lossy().to_string();
            if !keep.contains(&(nsn.clone(), cn)) {
                let _ = std::fs::remove_dir_all(c.path());
            }
        }
    }
}

fn error(code: u16, msg: &str) -> Response<Body> {
    text_response(code, "text/plain", msg.to_string())
}

/// Serves `/_backup/<ns>/<backup>/volumes/<volume>/{map,data}` on the export server.
pub(crate) async fn serve(
    inner: Arc<Inner>,
    req: Request<Incoming>,
    segs: &[&str],
) -> Response<Body> {
    let [ns, name, "volumes", vol, what @ ("map" | "data")] = segs else {
        return error(404, "not found");
    };
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return error(405, "method not allowed");
    }
    let res = inner.rid(GROUP, "virtualmachinebackups");
    let Some(b) = inner
        .store
        .get(res, ns, name)
        .filter(|b| b.pointer("/metadata/deletionTimestamp").is_none())
    else {
        return error(404, "no such VirtualMachineBackup");
    };
    let Some(checkpoint) = b.pointer("/status/checkpointName").and_then(Value::as_str) else {
        return error(503, "backup is not ready");
    };
    let q = crate::http::query(&req);
    let given = req
        .headers()
        .get("x-kubevirt-export-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| q.get("x-kubevirt-export-token").cloned());
    let secret = b["spec"]["tokenSecretRef"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("backup-token-{name}"));
    let want = inner
        .store
        .get(inner.rid("", "secrets"), ns, &secret)
        .and_then(|s| {
            s.pointer("/data/token")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .and_then(|t| b64().decode(t).ok())
        .map(|t| String::from_utf8_lossy(&t).trim().to_string());
    match (given, &want) {
        (Some(g), Some(w)) if crate::util::ct_eq(g.trim(), w) => {}
        _ => {
            return error(
                401,
                "Unauthorized: missing or wrong x-kubevirt-export-token",
            )
        }
    }
    let dir = checkpoint_dir(&inner.state_dir, ns, checkpoint);
    if *what == "map" {
        return match std::fs::read(dir.join(format!("{vol}.map.json"))) {
            Ok(body) => text_response(200, "application/json", body),
            Err(_) => error(404, "no such volume in this backup"),
        };
    }
    let img = dir.join(format!("{vol}.img"));
    if !img.is_file() {
        return error(404, "no such volume in this backup");
    }
    let range = req
        .headers()
        .get(hyper::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let drop_after = inner
        .faults
        .object_event("export-drop-after", ns, &[name])
        .and_then(|r| r.bytes);
    crate::image_http::serve_raw(img, range.as_deref(), head, drop_after).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_full_and_incremental() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        let g = GRANULARITY as usize;
        let mut base = vec![0u8; 8 * g + 100];
        base[g..2 * g].fill(1);
        base[5 * g + 3] = 7;
        std::fs::write(&a, &base).unwrap();
        // Full: extents with data.
        assert_eq!(
            compute_map(&a, None).unwrap(),
            vec![
                Extent {
                    start: g as u64,
                    length: g as u64,
                    zero: false
                },
                Extent {
                    start: 5 * g as u64,
                    length: g as u64,
                    zero: false
                },
            ]
        );
        // Incremental: block 1 zeroed, blocks 3-4 written, tail changed.
        let mut new = base.clone();
        new[g..2 * g].fill(0);
        new[3 * g + 10] = 1;
        new[4 * g] = 1;
        new[8 * g + 50] = 9;
        std::fs::write(&b, &new).unwrap();
        assert_eq!(
            compute_map(&b, Some(&a)).unwrap(),
            vec![
                Extent {
                    start: g as u64,
                    length: g as u64,
                    zero: true
                },
                Extent {
                    start: 3 * g as u64,
                    length: 2 * g as u64,
                    zero: false
                },
                Extent {
                    start: 8 * g as u64,
                    length: 100,
                    zero: false
                },
            ]
        );
        assert!(compute_map(&a, Some(&a)).unwrap().is_empty());
    }
}
