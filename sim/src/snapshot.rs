//! Storage: PVC provisioning and the CSI snapshotter.
//!
//! PVCs: a PVC whose StorageClass exists (or with a default StorageClass) is bound at once
//! (no `WaitForFirstConsumer`, no scheduler): a PV `pvc-<pvc uid>` with `spec.csi.driver` from
//! the class and a sparse file `volumes/<pv>.img` of the requested size. A PVC with
//! `dataSource` VolumeSnapshot waits until that snapshot is `readyToUse`, then starts as a
//! copy of the snapshot's image; `dataSource` PersistentVolumeClaim clones the source file.
//! Deleting a PVC deletes its PV and file (reclaim policy Delete).
//!
//! VolumeSnapshots (dynamic, `source.persistentVolumeClaimName`):
//! 1. bound at once to a VolumeSnapshotContent `snapcontent-<vs uid>` (class = the named one, or
//!    the default class of the PV's CSI driver; none → `status.error`), finalizer
//!    `snapshot.storage.kubernetes.io/volumesnapshot-bound-protection` added;
//! 2. after `snapshotCreationMs`: the PVC file is copied to `snapshots/<content>.img` and only
//!    then `status.creationTime` is published, so anything written to the PVC after a client
//!    sees `creationTime` is not in the snapshot;
//! 3. after a further `snapshotReadyMs`: `readyToUse: true` and `restoreSize`.
//!
//! Deleting a VolumeSnapshot (deletionPolicy Delete) deletes its content and image, then
//! removes the finalizer.
//!
//! Members of a VolumeGroupSnapshot (see [`crate::groupsnapshot`]) are created already bound and
//! cut by the group snapshotter, which also makes them ready; this controller only deletes them,
//! and not while they still carry the group's in-group finalizer ([`IN_GROUP_FINALIZER`]).
//!
//! Invariant: this module imports nothing of the group snapshotter. The group builds on it
//! ([`copy_pvc_image`], [`content_path`], [`VS_FINALIZER`]); what this controller must know of
//! groups (membership, the in-group finalizer) is defined here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::{json, Value};

use crate::store::{has_finalizer, meta_str, now_rfc3339};
use crate::{Error, Inner};

pub(crate) const VS_FINALIZER: &str =
    "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection";
/// Finalizer on a member VolumeSnapshot while its group exists: the group snapshotter
/// ([`crate::groupsnapshot`]) sets and removes it; this controller does not delete a member that
/// still carries it.
pub const IN_GROUP_FINALIZER: &str =
    "snapshot.storage.kubernetes.io/volumesnapshot-in-group-protection";

/// Per-object timers of the storage controllers.
#[derive(Default)]
pub(crate) struct StorageTimers {
    vs_seen: HashMap<String, Instant>,
    vs_created: HashMap<String, Instant>,
}

fn uid(o: &Value) -> String {
    meta_str(o, "uid").unwrap_or_default().to_string()
}

pub(crate) fn volume_path(inner: &Inner, pv: &str) -> PathBuf {
    inner.state_dir.join("volumes").join(format!("{pv}.img"))
}

pub(crate) fn content_path(inner: &Inner, content: &str) -> PathBuf {
    inner
        .state_dir
        .join("snapshots")
        .join(format!("{content}.img"))
}

/// True for a VolumeSnapshot that belongs to a VolumeGroupSnapshot.
pub(crate) fn is_member(vs: &Value) -> bool {
    vs.pointer("/status/volumeGroupSnapshotName").is_some()
        || vs
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .is_some_and(|refs| {
                refs.iter()
                    .any(|r| r.get("kind").and_then(Value::as_str) == Some("VolumeGroupSnapshot"))
            })
}

/// Backing file of a bound PVC.
pub(crate) fn pvc_file(inner: &Inner, ns: &str, name: &str) -> Result<PathBuf, Error> {
    let obj = format!("PersistentVolumeClaim {ns}/{name}");
    let pvc = inner
        .store
        .get(inner.rid("", "persistentvolumeclaims"), ns, name)
        .ok_or_else(|| Error::NotReady {
            object: obj.clone(),
            why: "no such PVC".into(),
        })?;
    match pvc.pointer("/spec/volumeName").and_then(Value::as_str) {
        Some(pv) if pvc.pointer("/status/phase").and_then(Value::as_str) == Some("Bound") => {
            Ok(volume_path(inner, pv))
        }
        _ => Err(Error::NotReady {
            object: obj,
            why: "PVC is not bound yet".into(),
        }),
    }
}

/// Image behind a VolumeSnapshot (once `creationTime` is set).
pub(crate) fn snapshot_file(inner: &Inner, ns: &str, name: &str) -> Result<PathBuf, Error> {
    let obj = format!("VolumeSnapshot {ns}/{name}");
    let vs = inner
        .store
        .get(
            inner.rid("snapshot.storage.k8s.io", "volumesnapshots"),
            ns,
            name,
        )
        .ok_or_else(|| Error::NotReady {
            object: obj.clone(),
            why: "no such VolumeSnapshot".into(),
        })?;
    match (
        vs.pointer("/status/boundVolumeSnapshotContentName")
            .and_then(Value::as_str),
        vs.pointer("/status/creationTime"),
    ) {
        (Some(c), Some(_)) => Ok(content_path(inner, c)),
        _ => Err(Error::NotReady {
            object: obj,
            why: "snapshot has no creationTime yet".into(),
        }),
    }
}

fn requested_bytes(pvc: &Value) -> u64 {
    pvc.pointer("/spec/resources/requests/storage")
        .and_then(|v| match v {
            Value::String(s) => crate::util::parse_quantity(s),
            Value::Number(n) => n.as_u64(),
            _ => None,
        })
        .unwrap_or(1 << 30)
}

fn storage_class(inner: &Inner, name: Option<&str>) -> Option<Value> {
    let res = inner.rid("storage.k8s.io", "storageclasses");
    match name {
        Some(n) if !n.is_empty() => inner.store.get(res, "", n),
        _ => inner.store.list(res, None).0.into_iter().find(|sc| {
            sc.pointer("/metadata/annotations/storageclass.kubernetes.io~1is-default-class")
                .and_then(Value::as_str)
                == Some("true")
        }),
    }
}

/// Bind pending PVCs (see module docs). Returns after one pass.
pub(crate) fn reconcile_pvcs(inner: &Inner) {
    let pvc_res = inner.rid("", "persistentvolumeclaims");
    let pv_res = inner.rid("", "persistentvolumes");
    let (pvcs, _) = inner.store.list(pvc_res, None);
    for pvc in pvcs {
        if pvc.pointer("/status/phase").and_then(Value::as_str) == Some("Bound")
            || pvc.pointer("/metadata/deletionTimestamp").is_some()
        {
            continue;
        }
        let (name, ns) = crate::store::name_ns(&pvc);
        if let Err(e) = provision(inner, &pvc) {
            tracing::debug!("PVC {ns}/{name} stays pending: {e}");
            let _ = inner.store.mutate(pvc_res, &ns, &name, |o| {
                if o.pointer("/status/phase").is_none() {
                    o["status"] = json!({"phase": "Pending"});
                }
            });
        }
    }
    // PVs whose claim is gone are deleted with their file (reclaim policy Delete).
    let (pvs, _) = inner.store.list(pv_res, None);
    for pv in pvs {
        let Some(claim) = pv.pointer("/spec/claimRef") else {
            continue;
        };
        let cns = claim.get("namespace").and_then(Value::as_str).unwrap_or("");
        let cname = claim.get("name").and_then(Value::as_str).unwrap_or("");
        let cuid = claim.get("uid").and_then(Value::as_str).unwrap_or("");
        let alive = inner
            .store
            .get(pvc_res, cns, cname)
            .is_some_and(|p| meta_str(&p, "uid") == Some(cuid));
        if !alive {
            let pvname = meta_str(&pv, "name").unwrap_or_default().to_string();
            let _ = inner.store.delete(pv_res, "", &pvname, None, None, false);
            let _ = std::fs::remove_file(volume_path(inner, &pvname));
        }
    }
}

fn provision(inner: &Inner, pvc: &Value) -> Result<(), String> {
    let pvc_res = inner.rid("", "persistentvolumeclaims");
    let pv_res = inner.rid("", "persistentvolumes");
    let (name, ns) = crate::store::name_ns(pvc);
    let sc_name = pvc
        .pointer("/spec/storageClassName")
        .and_then(Value::as_str);
    let sc = storage_class(inner, sc_name).ok_or("no such StorageClass (and no default class)")?;
    let sc_name = meta_str(&sc, "name").unwrap_or_default().to_string();
    let driver = sc
        .get("provisioner")
        .and_then(Value::as_str)
        .unwrap_or("sim.csi.virtguard.io")
        .to_string();
    let mut size = requested_bytes(pvc);
    // Where the initial content comes from.
    let ds = pvc
        .pointer("/spec/dataSourceRef")
        .or_else(|| pvc.pointer("/spec/dataSource"));
    let mut source: Option<PathBuf> = None;
    if let Some(ds) = ds {
        let kind = ds.get("kind").and_then(Value::as_str).unwrap_or("");
        let src = ds.get("name").and_then(Value::as_str).unwrap_or("");
        match kind {
            "VolumeSnapshot" => {
                let vs = inner
                    .store
                    .get(
                        inner.rid("snapshot.storage.k8s.io", "volumesnapshots"),
                        &ns,
                        src,
                    )
                    .ok_or("source VolumeSnapshot not found")?;
                if vs.pointer("/status/readyToUse").and_then(Value::as_bool) != Some(true) {
                    return Err("source VolumeSnapshot is not ready".into());
                }
                let path = snapshot_file(inner, &ns, src).map_err(|e| e.to_string())?;
                let len = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
                size = size.max(len);
                source = Some(path);
            }
            "PersistentVolumeClaim" => {
                let path = pvc_file(inner, &ns, src).map_err(|e| e.to_string())?;
                let len = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
                size = size.max(len);
                source = Some(path);
            }
            _ => {}
        }
    }
    let pv_name = format!("pvc-{}", uid(pvc));
    let path = volume_path(inner, &pv_name);
    crate::disk::create_sparse(&path, size).map_err(|e| e.to_string())?;
    if let Some(src) = source {
        crate::disk::copy_sparse(&src, &path, false).map_err(|e| e.to_string())?;
    }
    let access = pvc
        .pointer("/spec/accessModes")
        .cloned()
        .unwrap_or(json!(["ReadWriteOnce"]));
    let mode = pvc
        .pointer("/spec/volumeMode")
        .cloned()
        .unwrap_or(json!("Filesystem"));
    let pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv_name, "annotations": {"pv.kubernetes.io/provisioned-by": driver}},
        "spec": {
            "capacity": {"storage": size.to_string()},
            "accessModes": access,
            "persistentVolumeReclaimPolicy": sc.get("reclaimPolicy").cloned().unwrap_or(json!("Delete")),
            "storageClassName": sc_name,
            "volumeMode": mode,
            "csi": {"driver": driver, "volumeHandle": pv_name,
                    "volumeAttributes": {"virtguard.io/sim-path": path.display().to_string()}},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": name, "uid": uid(pvc)},
        },
    });
    if inner.store.get(pv_res, "", &pv_name).is_none() {
        let pv = inner.store.create(pv_res, pv).map_err(|e| e.to_string())?;
        let _ = inner.store.mutate(pv_res, "", &pv_name, |o| {
            o["status"] = json!({"phase": "Bound"})
        });
        drop(pv);
    }
    inner
        .store
        .mutate(pvc_res, &ns, &name, |o| {
            o["spec"]["volumeName"] = json!(pv_name);
            o["spec"]["storageClassName"] = json!(sc_name);
            if o.pointer("/spec/volumeMode").is_none() {
                o["spec"]["volumeMode"] = mode.clone();
            }
            let ann = &mut o["metadata"]["annotations"];
            if !ann.is_object() {
                *ann = json!({});
            }
            ann["pv.kubernetes.io/bind-completed"] = json!("yes");
            ann["pv.kubernetes.io/bound-by-controller"] = json!("yes");
            ann["volume.kubernetes.io/storage-provisioner"] = json!(driver);
            o["status"] = json!({"phase": "Bound", "accessModes": access, "capacity": {"storage": size.to_string()}});
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn snapshot_class(inner: &Inner, name: Option<&str>, driver: &str) -> Option<Value> {
    let res = inner.rid("snapshot.storage.k8s.io", "volumesnapshotclasses");
    match name {
        Some(n) if !n.is_empty() => inner.store.get(res, "", n),
        _ => inner.store.list(res, None).0.into_iter().find(|c| {
            c.get("driver").and_then(Value::as_str) == Some(driver)
                && c.pointer(
                    "/metadata/annotations/snapshot.storage.kubernetes.io~1is-default-class",
                )
                .and_then(Value::as_str)
                    == Some("true")
        }),
    }
}

/// One pass of the CSI snapshotter.
pub(crate) fn reconcile_snapshots(inner: &Inner, timers: &mut StorageTimers) {
    let vs_res = inner.rid("snapshot.storage.k8s.io", "volumesnapshots");
    let vsc_res = inner.rid("snapshot.storage.k8s.io", "volumesnapshotcontents");
    let (all, _) = inner.store.list(vs_res, None);
    let now = Instant::now();
    for vs in all {
        let (name, ns) = crate::store::name_ns(&vs);
        let id = uid(&vs);
        let content_name = vs
            .pointer("/status/boundVolumeSnapshotContentName")
            .and_then(Value::as_str)
            .map(str::to_string);
        let member = is_member(&vs);
        if vs.pointer("/metadata/deletionTimestamp").is_some() {
            if has_finalizer(&vs, IN_GROUP_FINALIZER) {
                // Held by its VolumeGroupSnapshot until the group itself is deleted.
                continue;
            }
            if let Some(c) = &content_name {
                let policy = inner.store.get(vsc_res, "", c).and_then(|x| {
                    x.pointer("/spec/deletionPolicy")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                });
                if policy.as_deref() != Some("Retain") {
                    let _ = inner.store.delete(vsc_res, "", c, None, None, false);
                    let _ = std::fs::remove_file(content_path(inner, c));
                }
            }
            let _ = inner.store.mutate(vs_res, &ns, &name, |o| {
                if let Some(f) = o
                    .pointer_mut("/metadata/finalizers")
                    .and_then(Value::as_array_mut)
                {
                    f.retain(|x| x != VS_FINALIZER);
                }
            });
            timers.vs_seen.remove(&id);
            timers.vs_created.remove(&id);
            continue;
        }
        if vs.pointer("/status/error").is_some() || member {
            // Failed, or cut and made ready by the group snapshotter (groupsnapshot.rs).
            continue;
        }
        let seen = *timers.vs_seen.entry(id.clone()).or_insert(now);
        let pvc_name = vs
            .pointer("/spec/source/persistentVolumeClaimName")
            .and_then(Value::as_str);
        let names: Vec<&str> = [Some(name.as_str()), pvc_name]
            .into_iter()
            .flatten()
            .collect();
        if let Some(rule) = inner.faults.object("snapshot-error", &ns, &names) {
            let msg = rule
                .message
                .unwrap_or_else(|| "injected snapshot error".into());
            let _ = inner.store.mutate(vs_res, &ns, &name, |o| {
                o["status"]["readyToUse"] = json!(false);
                o["status"]["error"] = json!({"message": msg, "time": now_rfc3339()});
            });
            continue;
        }
        let Some(pvc_name) = pvc_name else {
            // Pre-provisioned snapshots are not simulated.
            continue;
        };
        match &content_name {
            None => {
                if let Err(Some(msg)) = bind_content(inner, &vs, &ns, &name, pvc_name) {
                    {
                        let _ = inner.store.mutate(vs_res, &ns, &name, |o| {
                            o["status"]["readyToUse"] = json!(false);
                            o["status"]["error"] = json!({"message": msg, "time": now_rfc3339()});
                        });
                    }
                }
            }
            Some(c) => {
                let has_ct = vs.pointer("/status/creationTime").is_some();
                if !has_ct {
                    if now.duration_since(seen) < crate::ms(inner.timings.snapshot_creation_ms)
                        || inner
                            .faults
                            .object("snapshot-no-creation-time", &ns, &names)
                            .is_some()
                    {
                        continue;
                    }
                    if let Err(e) = cut(inner, &ns, &name, pvc_name, c) {
                        tracing::warn!("VolumeSnapshot {ns}/{name}: {e}");
                        continue;
                    }
                    timers.vs_created.insert(id.clone(), Instant::now());
                    continue;
                }
                let ready = vs.pointer("/status/readyToUse").and_then(Value::as_bool) == Some(true);
                if ready
                    || inner
                        .faults
                        .object("snapshot-never-ready", &ns, &names)
                        .is_some()
                {
                    continue;
                }
                let created = *timers.vs_created.entry(id.clone()).or_insert(now);
                if now.duration_since(created) < crate::ms(inner.timings.snapshot_ready_ms) {
                    continue;
                }
                let size = std::fs::metadata(content_path(inner, c))
                    .map(|m| m.len())
                    .unwrap_or(0);
                let _ = inner.store.mutate(vsc_res, "", c, |o| {
                    o["status"]["readyToUse"] = json!(true);
                    o["status"]["restoreSize"] = json!(size);
                });
                let _ = inner.store.mutate(vs_res, &ns, &name, |o| {
                    o["status"]["readyToUse"] = json!(true);
                    o["status"]["restoreSize"] = json!(size.to_string());
                });
            }
        }
    }
}

/// Create and bind the content. Err(Some(msg)) = permanent error to publish; Err(None) = wait.
fn bind_content(
    inner: &Inner,
    vs: &Value,
    ns: &str,
    name: &str,
    pvc_name: &str,
) -> Result<(), Option<String>> {
    let vs_res = inner.rid("snapshot.storage.k8s.io", "volumesnapshots");
    let vsc_res = inner.rid("snapshot.storage.k8s.io", "volumesnapshotcontents");
    let pvc = inner
        .store
        .get(inner.rid("", "persistentvolumeclaims"), ns, pvc_name)
        .ok_or(None)?;
    let Some(pv_name) = pvc.pointer("/spec/volumeName").and_then(Value::as_str) else {
        return Err(None);
    };
    let pv = inner
        .store
        .get(inner.rid("", "persistentvolumes"), "", pv_name)
        .ok_or(None)?;
    let driver = pv
        .pointer("/spec/csi/driver")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let class_name = vs
        .pointer("/spec/volumeSnapshotClassName")
        .and_then(Value::as_str);
    let class = snapshot_class(inner, class_name, &driver).ok_or_else(|| {
        Some(match class_name {
            Some(c) => format!("failed to get snapshot class with error volumesnapshotclass.snapshot.storage.k8s.io \"{c}\" not found"),
            None => format!("cannot find default snapshot class for driver {driver}"),
        })
    })?;
    if class.get("driver").and_then(Value::as_str) != Some(driver.as_str()) {
        return Err(Some(format!(
            "snapshot class driver {:?} does not match the PV's CSI driver {driver:?}",
            class.get("driver").and_then(Value::as_str).unwrap_or("")
        )));
    }
    let class_name = meta_str(&class, "name").unwrap_or_default().to_string();
    let content = format!("snapcontent-{}", uid(vs));
    if inner.store.get(vsc_res, "", &content).is_none() {
        inner
            .store
            .create(
                vsc_res,
                json!({
                    "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
                    "metadata": {"name": content},
                    "spec": {
                        "volumeSnapshotRef": {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot", "name": name, "namespace": ns, "uid": uid(vs)},
                        "source": {"volumeHandle": pv.pointer("/spec/csi/volumeHandle").cloned().unwrap_or(json!(pv_name))},
                        "driver": driver,
                        "deletionPolicy": class.get("deletionPolicy").cloned().unwrap_or(json!("Delete")),
                        "volumeSnapshotClassName": class_name,
                        "sourceVolumeMode": pvc.pointer("/spec/volumeMode").cloned().unwrap_or(json!("Filesystem")),
                    },
                }),
            )
            .map_err(|e| Some(e.to_string()))?;
    }
    inner
        .store
        .mutate(vs_res, ns, name, |o| {
            let f = &mut o["metadata"]["finalizers"];
            if !f.is_array() {
                *f = json!([]);
            }
            if let Some(a) = f.as_array_mut() {
                if !a.iter().any(|x| x == VS_FINALIZER) {
                    a.push(json!(VS_FINALIZER));
                }
            }
            o["spec"]["volumeSnapshotClassName"] = json!(class_name);
            o["status"]["boundVolumeSnapshotContentName"] = json!(content);
            o["status"]["readyToUse"] = json!(false);
        })
        .map_err(|e| Some(e.to_string()))?;
    Ok(())
}

/// The point-in-time copy of PVC `ns/pvc_name` into the image of VolumeSnapshotContent
/// `content` (also used for the members of a VolumeGroupSnapshot).
pub(crate) fn copy_pvc_image(
    inner: &Inner,
    ns: &str,
    pvc_name: &str,
    content: &str,
) -> Result<(), Error> {
    let src = pvc_file(inner, ns, pvc_name)?;
    crate::disk::copy_sparse(&src, &content_path(inner, content), true)?;
    Ok(())
}

/// Take the point-in-time copy, then publish creationTime.
fn cut(inner: &Inner, ns: &str, name: &str, pvc_name: &str, content: &str) -> Result<(), Error> {
    copy_pvc_image(inner, ns, pvc_name, content)?;
    let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    let ts = now_rfc3339();
    let vs_res = inner.rid("snapshot.storage.k8s.io", "volumesnapshots");
    let vsc_res = inner.rid("snapshot.storage.k8s.io", "volumesnapshotcontents");
    let _ = inner.store.mutate(vsc_res, "", content, |o| {
        o["status"] = json!({"creationTime": nanos, "snapshotHandle": format!("sim-{content}"), "readyToUse": false});
    });
    inner
        .store
        .mutate(vs_res, ns, name, |o| {
            o["status"]["creationTime"] = json!(ts)
        })
        .map_err(|e| Error::Api {
            object: format!("VolumeSnapshot {ns}/{name}"),
            error: e,
        })?;
    Ok(())
}
