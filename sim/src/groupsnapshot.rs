//! The CSI group snapshotter: VolumeGroupSnapshots (groupsnapshot.storage.k8s.io/v1beta2, the
//! storage version of the reference CRDs) over PVCs selected by label, as external-snapshotter's
//! snapshot-controller and csi-snapshotter sidecar handle a dynamic group together.
//!
//! A VolumeGroupSnapshot with `spec.source.selector` (pre-provisioned groups, with
//! `volumeGroupSnapshotContentName`, are not simulated and stay untouched):
//! 1. **bind** — the selector is matched against the PVCs of the group's namespace, once (like
//!    the real controller, the volume list is fixed when the content is created). No PVC
//!    matched, PVCs of different CSI drivers, or no class (the named
//!    `spec.volumeGroupSnapshotClassName`, else the one VolumeGroupSnapshotClass of the PVs'
//!    driver annotated `groupsnapshot.storage.kubernetes.io/is-default-class: "true"`; several
//!    defaults are an error too) → `status.error` with a message, and nothing else happens.
//!    A PVC not yet bound → wait. Otherwise: a cluster-scoped VolumeGroupSnapshotContent
//!    `groupsnapcontent-<group uid>` (`spec.source.volumeHandles` = the PVs' CSI volume handles,
//!    driver, deletionPolicy and class), the group's finalizer [`VGS_FINALIZER`],
//!    `spec.volumeGroupSnapshotClassName` filled in when it was defaulted,
//!    `status.boundVolumeGroupSnapshotContentName`, `readyToUse: false`;
//! 2. **cut**, after `snapshotCreationMs`: every member PVC's file is copied first (the same
//!    copy as a single VolumeSnapshot's, [`crate::snapshot::copy_pvc_image`]), and only then is
//!    anything published: per PVC a VolumeSnapshotContent `snapcontent-<sha256(group uid +
//!    volume handle)>` (bound, `status.snapshotHandle`, `volumeGroupSnapshotHandle`,
//!    `creationTime` in Unix ns) and a member VolumeSnapshot `snapshot-<same hash>` in the
//!    group's namespace (ownerReference to the group, finalizers
//!    [`crate::snapshot::VS_FINALIZER`] + [`crate::snapshot::IN_GROUP_FINALIZER`],
//!    `spec.source.persistentVolumeClaimName` = its PVC — what the v1beta2 controller sets for
//!    dynamic groups — `status.boundVolumeSnapshotContentName`, `creationTime`,
//!    `volumeGroupSnapshotName`); then the content's `status` (`volumeGroupSnapshotHandle`,
//!    `creationTime`, `volumeSnapshotInfoList[]` with volumeHandle / snapshotHandle /
//!    creationTime / readyToUse) and last the group's `status.creationTime`. All members carry
//!    one instant: nothing written to any PVC after a client sees the group's (or a member's)
//!    `creationTime` is in any member image. (The copies run one after another within one
//!    controller pass; a real array cuts them atomically.)
//! 3. **ready**, a further `snapshotReadyMs` later: `readyToUse: true` and `restoreSize` on the
//!    members and their contents, in the info list, on the group content, then on the group.
//!
//! A member is a normal VolumeSnapshot to everyone else: a PVC with `dataSource` VolumeSnapshot
//! restores from it exactly as from a single snapshot. The single-snapshot controller leaves
//! members alone except for deleting them, and holds a member that still carries
//! [`crate::snapshot::IN_GROUP_FINALIZER`] (users cannot delete one snapshot out of a group).
//!
//! Deleting the group: the members lose [`crate::snapshot::IN_GROUP_FINALIZER`] and are deleted
//! (their contents
//! and images follow their deletionPolicy, which is the group content's), the group content is
//! deleted unless its deletionPolicy is `Retain`, and once no member is left [`VGS_FINALIZER`]
//! is removed. Members or contents orphaned by a group removed without the finalizer (or
//! deleted while it was being cut) are swept the same way.
//!
//! Faults (target = the group's name or one of its PVCs): `group-snapshot-error` (`status.error`
//! with `message`, on the group and its content), `group-snapshot-no-creation-time` (never cut),
//! `group-snapshot-never-ready` (cut, never `readyToUse`); REST call faults such as
//! `create volumegroupsnapshots` work as for every resource.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::snapshot::{content_path, IN_GROUP_FINALIZER, VS_FINALIZER};
use crate::store::{
    add_finalizer, has_finalizer, meta_str, name_ns, now_rfc3339, remove_finalizer,
};
use crate::Inner;

/// Finalizer on a VolumeGroupSnapshot bound to its content.
pub const VGS_FINALIZER: &str =
    "groupsnapshot.storage.kubernetes.io/volumegroupsnapshot-bound-protection";
/// Annotation that marks the default VolumeGroupSnapshotClass of a driver.
pub const DEFAULT_GROUP_CLASS_ANNOTATION: &str =
    "groupsnapshot.storage.kubernetes.io/is-default-class";

const GROUP: &str = "groupsnapshot.storage.k8s.io";
const SNAP: &str = "snapshot.storage.k8s.io";

/// Per-group timers (keyed by the group's uid).
#[derive(Default)]
pub(crate) struct GroupTimers {
    seen: HashMap<String, Instant>,
    created: HashMap<String, Instant>,
}

fn uid(o: &Value) -> String {
    meta_str(o, "uid").unwrap_or_default().to_string()
}

/// `snapshot-<hash>` / `snapcontent-<hash>` of one member, like the real controller names them.
fn member_names(group_uid: &str, volume_handle: &str) -> (String, String) {
    let h = hex::encode(Sha256::digest(format!("{group_uid}{volume_handle}")));
    (format!("snapshot-{h}"), format!("snapcontent-{h}"))
}

/// The group's label selector (`matchLabels` + `matchExpressions`) as a parsed selector.
fn selector_of(vgs: &Value) -> Result<crate::selector::LabelSelector, String> {
    let sel = vgs
        .pointer("/spec/source/selector")
        .cloned()
        .unwrap_or(json!({}));
    let mut reqs: Vec<String> = Vec::new();
    if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in m {
            reqs.push(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        match e
            .get("operator")
            .and_then(Value::as_str)
            .unwrap_or_default()
        {
            "In" => reqs.push(format!("{key} in ({})", values.join(","))),
            "NotIn" => reqs.push(format!("{key} notin ({})", values.join(","))),
            "Exists" => reqs.push(key.to_string()),
            "DoesNotExist" => reqs.push(format!("!{key}")),
            other => return Err(format!("selector operator {other:?} is not valid")),
        }
    }
    crate::selector::LabelSelector::parse(&reqs.join(",")).map_err(|e| e.message.clone())
}

/// A member PVC resolved for the cut: (PVC name, PV volume handle, volume mode).
struct Member {
    pvc: String,
    handle: String,
    mode: Value,
}

/// Why binding did not happen: a permanent error to publish, or "not yet".
enum BindError {
    Publish(String),
    Wait,
}

/// One pass of the group snapshotter (see module docs).
pub(crate) fn reconcile(inner: &Inner, timers: &mut GroupTimers) {
    let vgs_res = inner.rid(GROUP, "volumegroupsnapshots");
    let (groups, _) = inner.store.list(vgs_res, None);
    let now = Instant::now();
    let mut live = BTreeSet::new();
    for vgs in groups {
        let (name, ns) = name_ns(&vgs);
        let id = uid(&vgs);
        live.insert(id.clone());
        if vgs.pointer("/metadata/deletionTimestamp").is_some() {
            delete_group(inner, &vgs);
            timers.seen.remove(&id);
            timers.created.remove(&id);
            continue;
        }
        if vgs.pointer("/status/error").is_some() || vgs.pointer("/spec/source/selector").is_none()
        {
            // Failed (the simulated controller does not retry), or pre-provisioned.
            continue;
        }
        let seen = *timers.seen.entry(id.clone()).or_insert(now);
        let mut names = vec![name.clone()];
        names.extend(selected_pvcs(inner, &vgs).unwrap_or_default());
        let names_ref: Vec<&str> = names.iter().map(String::as_str).collect();
        if let Some(rule) = inner.faults.object("group-snapshot-error", &ns, &names_ref) {
            let msg = rule
                .message
                .unwrap_or_else(|| "injected group snapshot error".into());
            publish_error(inner, &vgs, &msg);
            continue;
        }
        let Some(content) = vgs
            .pointer("/status/boundVolumeGroupSnapshotContentName")
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            match bind(inner, &vgs) {
                Ok(()) | Err(BindError::Wait) => {}
                Err(BindError::Publish(msg)) => publish_error(inner, &vgs, &msg),
            }
            continue;
        };
        if vgs.pointer("/status/creationTime").is_none() {
            if now.duration_since(seen) < crate::ms(inner.timings.snapshot_creation_ms)
                || inner
                    .faults
                    .object("group-snapshot-no-creation-time", &ns, &names_ref)
                    .is_some()
            {
                continue;
            }
            match cut(inner, &vgs, &content) {
                Ok(()) => {
                    timers.created.insert(id.clone(), Instant::now());
                }
                Err(e) => tracing::warn!("VolumeGroupSnapshot {ns}/{name}: {e}"),
            }
            continue;
        }
        if vgs.pointer("/status/readyToUse").and_then(Value::as_bool) == Some(true)
            || inner
                .faults
                .object("group-snapshot-never-ready", &ns, &names_ref)
                .is_some()
        {
            continue;
        }
        let created = *timers.created.entry(id.clone()).or_insert(now);
        if now.duration_since(created) < crate::ms(inner.timings.snapshot_ready_ms) {
            continue;
        }
        make_ready(inner, &vgs, &content);
    }
    timers.seen.retain(|k, _| live.contains(k));
    timers.created.retain(|k, _| live.contains(k));
    sweep_orphans(inner, &live);
}

/// Names of the PVCs the group selects: the bound content's list once there is one, the
/// selector's current matches before.
fn selected_pvcs(inner: &Inner, vgs: &Value) -> Option<Vec<String>> {
    let (_, ns) = name_ns(vgs);
    if let Some(c) = vgs
        .pointer("/status/boundVolumeGroupSnapshotContentName")
        .and_then(Value::as_str)
    {
        let content = inner
            .store
            .get(inner.rid(GROUP, "volumegroupsnapshotcontents"), "", c)?;
        return Some(
            members_of_content(inner, &ns, &content)
                .into_iter()
                .map(|m| m.pvc)
                .collect(),
        );
    }
    let sel = selector_of(vgs).ok()?;
    let (pvcs, _) = inner
        .store
        .list(inner.rid("", "persistentvolumeclaims"), Some(&ns));
    Some(
        pvcs.iter()
            .filter(|p| sel.matches(p) && p.pointer("/metadata/deletionTimestamp").is_none())
            .map(|p| meta_str(p, "name").unwrap_or_default().to_string())
            .collect(),
    )
}

/// Status error on the group (and its content, when bound), `readyToUse: false`.
fn publish_error(inner: &Inner, vgs: &Value, msg: &str) {
    let (name, ns) = name_ns(vgs);
    let err = json!({"message": msg, "time": now_rfc3339()});
    if let Some(c) = vgs
        .pointer("/status/boundVolumeGroupSnapshotContentName")
        .and_then(Value::as_str)
    {
        let _ = inner.store.mutate(
            inner.rid(GROUP, "volumegroupsnapshotcontents"),
            "",
            c,
            |o| {
                o["status"]["error"] = err.clone();
                o["status"]["readyToUse"] = json!(false);
            },
        );
    }
    let _ = inner
        .store
        .mutate(inner.rid(GROUP, "volumegroupsnapshots"), &ns, &name, |o| {
            o["status"]["error"] = err.clone();
            o["status"]["readyToUse"] = json!(false);
        });
}

fn group_class(inner: &Inner, name: Option<&str>, driver: &str) -> Result<Value, String> {
    let res = inner.rid(GROUP, "volumegroupsnapshotclasses");
    if let Some(n) = name {
        let class = inner.store.get(res, "", n).ok_or_else(|| {
            format!("failed to get group snapshot class with error volumegroupsnapshotclass.groupsnapshot.storage.k8s.io \"{n}\" not found")
        })?;
        let class_driver = class.get("driver").and_then(Value::as_str).unwrap_or("");
        if class_driver != driver {
            return Err(format!(
                "group snapshot class {n} is for driver {class_driver:?}, but the selected PVCs' CSI driver is {driver:?}"
            ));
        }
        return Ok(class);
    }
    let defaults: Vec<Value> = inner
        .store
        .list(res, None)
        .0
        .into_iter()
        .filter(|c| {
            c.get("driver").and_then(Value::as_str) == Some(driver)
                && c.pointer("/metadata/annotations")
                    .and_then(|a| a.get(DEFAULT_GROUP_CLASS_ANNOTATION))
                    .and_then(Value::as_str)
                    == Some("true")
        })
        .collect();
    match defaults.len() {
        1 => Ok(defaults.into_iter().next().unwrap_or_default()),
        0 => Err(format!(
            "cannot find default group snapshot class for driver {driver}"
        )),
        n => Err(format!(
            "{n} default group snapshot classes were found for driver {driver}"
        )),
    }
}

/// Step 1 of the module docs.
fn bind(inner: &Inner, vgs: &Value) -> Result<(), BindError> {
    let (name, ns) = name_ns(vgs);
    let vgs_res = inner.rid(GROUP, "volumegroupsnapshots");
    let content_res = inner.rid(GROUP, "volumegroupsnapshotcontents");
    let pv_res = inner.rid("", "persistentvolumes");
    let sel = selector_of(vgs).map_err(BindError::Publish)?;
    let (pvcs, _) = inner
        .store
        .list(inner.rid("", "persistentvolumeclaims"), Some(&ns));
    let pvcs: Vec<Value> = pvcs
        .into_iter()
        .filter(|p| sel.matches(p) && p.pointer("/metadata/deletionTimestamp").is_none())
        .collect();
    if pvcs.is_empty() {
        let shown =
            serde_json::to_string(vgs.pointer("/spec/source/selector").unwrap_or(&Value::Null))
                .unwrap_or_default();
        return Err(BindError::Publish(format!(
            "label selector {shown} for group snapshot not applied to any PVC in namespace {ns}"
        )));
    }
    let mut handles = Vec::new();
    let mut drivers: Vec<(String, String)> = Vec::new();
    for pvc in &pvcs {
        let pvc_name = meta_str(pvc, "name").unwrap_or_default();
        if pvc.pointer("/status/phase").and_then(Value::as_str) != Some("Bound") {
            return Err(BindError::Wait);
        }
        let pv = pvc
            .pointer("/spec/volumeName")
            .and_then(Value::as_str)
            .and_then(|pv| inner.store.get(pv_res, "", pv))
            .ok_or(BindError::Wait)?;
        let (Some(driver), Some(handle)) = (
            pv.pointer("/spec/csi/driver").and_then(Value::as_str),
            pv.pointer("/spec/csi/volumeHandle").and_then(Value::as_str),
        ) else {
            return Err(BindError::Publish(format!(
                "snapshotting non-CSI volumes is not supported (PVC {pvc_name})"
            )));
        };
        drivers.push((pvc_name.to_string(), driver.to_string()));
        handles.push(handle.to_string());
    }
    let driver = drivers[0].1.clone();
    if drivers.iter().any(|(_, d)| *d != driver) {
        let list: Vec<String> = drivers.iter().map(|(p, d)| format!("{p}: {d}")).collect();
        return Err(BindError::Publish(format!(
            "the PVCs selected for the group snapshot use different CSI drivers ({}); a group snapshot is taken by one driver",
            list.join(", ")
        )));
    }
    let class_name = vgs
        .pointer("/spec/volumeGroupSnapshotClassName")
        .and_then(Value::as_str);
    let class = group_class(inner, class_name, &driver).map_err(BindError::Publish)?;
    let class_name = meta_str(&class, "name").unwrap_or_default().to_string();
    let content = format!("groupsnapcontent-{}", uid(vgs));
    if inner.store.get(content_res, "", &content).is_none() {
        inner
            .store
            .create(
                content_res,
                json!({
                    "apiVersion": format!("{GROUP}/v1beta2"), "kind": "VolumeGroupSnapshotContent",
                    "metadata": {"name": content},
                    "spec": {
                        "volumeGroupSnapshotRef": {"apiVersion": format!("{GROUP}/v1beta2"), "kind": "VolumeGroupSnapshot",
                                                   "name": name, "namespace": ns, "uid": uid(vgs)},
                        "source": {"volumeHandles": handles},
                        "driver": driver,
                        "deletionPolicy": class.get("deletionPolicy").cloned().unwrap_or(json!("Delete")),
                        "volumeGroupSnapshotClassName": class_name,
                    },
                }),
            )
            .map_err(|e| BindError::Publish(e.to_string()))?;
    }
    inner
        .store
        .mutate(vgs_res, &ns, &name, |o| {
            add_finalizer(o, VGS_FINALIZER);
            o["spec"]["volumeGroupSnapshotClassName"] = json!(class_name);
            o["status"]["boundVolumeGroupSnapshotContentName"] = json!(content);
            o["status"]["readyToUse"] = json!(false);
        })
        .map_err(|e| BindError::Publish(e.to_string()))?;
    Ok(())
}

/// The members of a group content: its volume handles mapped back to PVCs of `ns` (through the
/// PVs with that CSI driver and handle).
fn members_of_content(inner: &Inner, ns: &str, content: &Value) -> Vec<Member> {
    let driver = content
        .pointer("/spec/driver")
        .and_then(Value::as_str)
        .unwrap_or("");
    let (pvs, _) = inner.store.list(inner.rid("", "persistentvolumes"), None);
    content
        .pointer("/spec/source/volumeHandles")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|handle| {
            let pv = pvs.iter().find(|pv| {
                pv.pointer("/spec/csi/driver").and_then(Value::as_str) == Some(driver)
                    && pv.pointer("/spec/csi/volumeHandle").and_then(Value::as_str) == Some(handle)
            })?;
            let claim_ns = pv
                .pointer("/spec/claimRef/namespace")
                .and_then(Value::as_str);
            let claim = pv.pointer("/spec/claimRef/name").and_then(Value::as_str)?;
            (claim_ns == Some(ns)).then(|| Member {
                pvc: claim.to_string(),
                handle: handle.to_string(),
                mode: pv
                    .pointer("/spec/volumeMode")
                    .cloned()
                    .unwrap_or(json!("Filesystem")),
            })
        })
        .collect()
}

/// Step 2 of the module docs: copy every member, then publish one creationTime everywhere.
fn cut(inner: &Inner, vgs: &Value, content_name: &str) -> Result<(), String> {
    let (name, ns) = name_ns(vgs);
    let group_uid = uid(vgs);
    let vgs_res = inner.rid(GROUP, "volumegroupsnapshots");
    let content_res = inner.rid(GROUP, "volumegroupsnapshotcontents");
    let vs_res = inner.rid(SNAP, "volumesnapshots");
    let vsc_res = inner.rid(SNAP, "volumesnapshotcontents");
    let content = inner
        .store
        .get(content_res, "", content_name)
        .ok_or_else(|| format!("VolumeGroupSnapshotContent {content_name} is gone"))?;
    let members = members_of_content(inner, &ns, &content);
    let want = content
        .pointer("/spec/source/volumeHandles")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if members.len() != want {
        return Err(format!(
            "only {} of the {want} volumes of {content_name} still have a PVC in {ns}",
            members.len()
        ));
    }
    // The point in time: all copies first, nothing published before the last one is done.
    for m in &members {
        let (_, vsc) = member_names(&group_uid, &m.handle);
        crate::snapshot::copy_pvc_image(inner, &ns, &m.pvc, &vsc).map_err(|e| e.to_string())?;
    }
    let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    let ts = now_rfc3339();
    let group_handle = format!("sim-group-{content_name}");
    let driver = content
        .pointer("/spec/driver")
        .cloned()
        .unwrap_or(json!(""));
    let policy = content
        .pointer("/spec/deletionPolicy")
        .cloned()
        .unwrap_or(json!("Delete"));
    let owner = json!({"apiVersion": format!("{GROUP}/v1beta2"), "kind": "VolumeGroupSnapshot",
        "name": name, "uid": group_uid, "controller": true, "blockOwnerDeletion": true});
    let mut infos = Vec::new();
    for m in &members {
        let (vs, vsc) = member_names(&group_uid, &m.handle);
        let snapshot_handle = format!("sim-{vsc}");
        let created = inner.store.create(
            vs_res,
            json!({
                "apiVersion": format!("{SNAP}/v1"), "kind": "VolumeSnapshot",
                "metadata": {"name": vs, "namespace": ns, "ownerReferences": [owner.clone()],
                             "finalizers": [VS_FINALIZER, IN_GROUP_FINALIZER]},
                "spec": {"source": {"persistentVolumeClaimName": m.pvc}},
                "status": {"boundVolumeSnapshotContentName": vsc, "creationTime": ts,
                           "readyToUse": false, "volumeGroupSnapshotName": name},
            }),
        );
        let vs_uid = match created {
            Ok(o) => uid(&o),
            // A retried cut: the member exists from the previous attempt.
            Err(e) if e.code == 409 => inner
                .store
                .get(vs_res, &ns, &vs)
                .map(|o| uid(&o))
                .unwrap_or_default(),
            Err(e) => {
                return Err(format!(
                    "creating member VolumeSnapshot {ns}/{vs}: {}",
                    e.message
                ))
            }
        };
        let vsc_obj = json!({
            "apiVersion": format!("{SNAP}/v1"), "kind": "VolumeSnapshotContent",
            "metadata": {"name": vsc},
            "spec": {
                "volumeSnapshotRef": {"apiVersion": format!("{SNAP}/v1"), "kind": "VolumeSnapshot",
                                      "name": vs, "namespace": ns, "uid": vs_uid},
                "source": {"volumeHandle": m.handle},
                "driver": driver,
                "deletionPolicy": policy,
                "sourceVolumeMode": m.mode,
            },
            "status": {"creationTime": nanos, "snapshotHandle": snapshot_handle,
                       "volumeGroupSnapshotHandle": group_handle, "readyToUse": false},
        });
        match inner.store.create(vsc_res, vsc_obj) {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => {
                return Err(format!(
                    "creating member VolumeSnapshotContent {vsc}: {}",
                    e.message
                ))
            }
        }
        infos.push(
            json!({"volumeHandle": m.handle, "snapshotHandle": snapshot_handle,
                          "creationTime": nanos, "readyToUse": false}),
        );
    }
    inner
        .store
        .mutate(content_res, "", content_name, |o| {
            o["status"] = json!({"volumeGroupSnapshotHandle": group_handle, "creationTime": ts,
                                 "readyToUse": false, "volumeSnapshotInfoList": infos});
        })
        .map_err(|e| format!("updating {content_name}: {}", e.message))?;
    inner
        .store
        .mutate(vgs_res, &ns, &name, |o| {
            o["status"]["creationTime"] = json!(ts);
        })
        .map_err(|e| format!("publishing creationTime: {}", e.message))?;
    Ok(())
}

/// Step 3 of the module docs.
fn make_ready(inner: &Inner, vgs: &Value, content_name: &str) {
    let (name, ns) = name_ns(vgs);
    let group_uid = uid(vgs);
    let content_res = inner.rid(GROUP, "volumegroupsnapshotcontents");
    let vs_res = inner.rid(SNAP, "volumesnapshots");
    let vsc_res = inner.rid(SNAP, "volumesnapshotcontents");
    let Some(content) = inner.store.get(content_res, "", content_name) else {
        return;
    };
    let mut sizes = HashMap::new();
    for m in members_of_content(inner, &ns, &content) {
        let (vs, vsc) = member_names(&group_uid, &m.handle);
        let size = std::fs::metadata(content_path(inner, &vsc))
            .map(|md| md.len())
            .unwrap_or(0);
        let _ = inner.store.mutate(vsc_res, "", &vsc, |o| {
            o["status"]["readyToUse"] = json!(true);
            o["status"]["restoreSize"] = json!(size);
        });
        let _ = inner.store.mutate(vs_res, &ns, &vs, |o| {
            o["status"]["readyToUse"] = json!(true);
            o["status"]["restoreSize"] = json!(size.to_string());
        });
        sizes.insert(m.handle, size);
    }
    let _ = inner.store.mutate(content_res, "", content_name, |o| {
        if let Some(list) = o
            .pointer_mut("/status/volumeSnapshotInfoList")
            .and_then(Value::as_array_mut)
        {
            for info in list {
                let size = info
                    .get("volumeHandle")
                    .and_then(Value::as_str)
                    .and_then(|h| sizes.get(h).copied());
                info["readyToUse"] = json!(true);
                if let Some(s) = size {
                    info["restoreSize"] = json!(s);
                }
            }
        }
        o["status"]["readyToUse"] = json!(true);
    });
    let _ = inner
        .store
        .mutate(inner.rid(GROUP, "volumegroupsnapshots"), &ns, &name, |o| {
            o["status"]["readyToUse"] = json!(true);
        });
}

/// Member VolumeSnapshots of the group with uid `group_uid` in `ns`.
fn members(inner: &Inner, ns: &str, group_uid: &str) -> Vec<Value> {
    inner
        .store
        .list(inner.rid(SNAP, "volumesnapshots"), Some(ns))
        .0
        .into_iter()
        .filter(|vs| owned_by(vs, group_uid))
        .collect()
}

fn owned_by(o: &Value, owner_uid: &str) -> bool {
    o.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r.get("uid").and_then(Value::as_str) == Some(owner_uid))
        })
}

/// Let a member go: drop the in-group finalizer and delete it (the single-snapshot controller
/// then deletes its content and image per deletionPolicy and drops its own finalizer).
fn release_member(inner: &Inner, vs: &Value) {
    let vs_res = inner.rid(SNAP, "volumesnapshots");
    let (name, ns) = name_ns(vs);
    if has_finalizer(vs, IN_GROUP_FINALIZER) {
        let _ = inner.store.mutate(vs_res, &ns, &name, |o| {
            remove_finalizer(o, IN_GROUP_FINALIZER)
        });
    }
    if vs.pointer("/metadata/deletionTimestamp").is_none() {
        let _ = inner.store.delete(vs_res, &ns, &name, None, None, false);
    }
}

fn delete_content_unless_retained(inner: &Inner, content: &str) {
    let res = inner.rid(GROUP, "volumegroupsnapshotcontents");
    let Some(c) = inner.store.get(res, "", content) else {
        return;
    };
    if c.pointer("/spec/deletionPolicy").and_then(Value::as_str) != Some("Retain") {
        let _ = inner.store.delete(res, "", content, None, None, false);
    }
}

/// A group being deleted (see module docs).
fn delete_group(inner: &Inner, vgs: &Value) {
    let (name, ns) = name_ns(vgs);
    let left = members(inner, &ns, &uid(vgs));
    for m in &left {
        release_member(inner, m);
    }
    if let Some(c) = vgs
        .pointer("/status/boundVolumeGroupSnapshotContentName")
        .and_then(Value::as_str)
    {
        delete_content_unless_retained(inner, c);
    }
    if left.is_empty() && has_finalizer(vgs, VGS_FINALIZER) {
        let _ = inner
            .store
            .mutate(inner.rid(GROUP, "volumegroupsnapshots"), &ns, &name, |o| {
                remove_finalizer(o, VGS_FINALIZER)
            });
    }
}

/// Members and group contents whose group (by uid) no longer exists.
fn sweep_orphans(inner: &Inner, live: &BTreeSet<String>) {
    let (all, _) = inner.store.list(inner.rid(SNAP, "volumesnapshots"), None);
    for vs in all
        .iter()
        .filter(|vs| has_finalizer(vs, IN_GROUP_FINALIZER))
    {
        let owners: Vec<&str> = vs
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|r| r.get("kind").and_then(Value::as_str) == Some("VolumeGroupSnapshot"))
            .filter_map(|r| r.get("uid").and_then(Value::as_str))
            .collect();
        if !owners.iter().any(|u| live.contains(*u)) {
            release_member(inner, vs);
        }
    }
    let content_res = inner.rid(GROUP, "volumegroupsnapshotcontents");
    for c in inner.store.list(content_res, None).0 {
        let group_uid = c
            .pointer("/spec/volumeGroupSnapshotRef/uid")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !live.contains(group_uid) {
            delete_content_unless_retained(inner, meta_str(&c, "name").unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_from_label_selector_objects() {
        let vgs = json!({"spec": {"source": {"selector": {
        "matchLabels": {"app": "db"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["gold", "silver"]},
            {"key": "scratch", "operator": "DoesNotExist"},
        ]}}}});
        let sel = selector_of(&vgs).unwrap();
        let pvc = |labels: Value| json!({"metadata": {"labels": labels}});
        assert!(sel.matches(&pvc(json!({"app": "db", "tier": "gold"}))));
        assert!(!sel.matches(&pvc(json!({"app": "db", "tier": "bronze"}))));
        assert!(!sel.matches(&pvc(json!({"app": "db", "tier": "gold", "scratch": "1"}))));
        let bad = json!({"spec": {"source": {"selector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}}});
        assert!(selector_of(&bad).is_err());
    }

    #[test]
    fn member_names_are_stable_dns_names() {
        let (vs, vsc) = member_names("uid-1", "pvc-abc");
        assert_eq!(vs, member_names("uid-1", "pvc-abc").0);
        assert_ne!(vs, member_names("uid-2", "pvc-abc").0);
        assert!(vs.starts_with("snapshot-") && vsc.starts_with("snapcontent-"));
        assert_eq!(vs.len(), "snapshot-".len() + 64);
    }
}
