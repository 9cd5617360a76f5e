//! Snapshot and restore series.
//!
//! * `kubevirt_vmsnapshot_succeeded_timestamp_seconds{name, snapshot_name, namespace}`: one per
//!   VirtualMachineSnapshot in phase `Succeeded` with a `status.creationTime` (the point in time
//!   the snapshot captured); `name` is the source VM (`spec.source.name`).
//! * `kubevirt_vmsnapshot_disks_restored_from_source{vm_name, vm_namespace}` and `_bytes`: the
//!   PVCs KubeVirt's restore controller creates carry the labels
//!   `restore.kubevirt.io/source-vm-name` and `restore.kubevirt.io/source-vm-namespace`; the
//!   series count them per source VM and sum their requested storage
//!   (`spec.resources.requests.storage`). A PVC without the namespace label counts for its own
//!   namespace; a size that is not a valid quantity counts the disk but adds no bytes.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use virtguard_api::kubevirt::VirtualMachineSnapshot;
use virtguard_api::labels::{RESTORE_SOURCE_VM_NAME, RESTORE_SOURCE_VM_NAMESPACE};

use super::unix_seconds;
use crate::render::{Exposition, Num};

/// Renders the VirtualMachineSnapshot family.
pub fn render_snapshots(out: &mut Exposition, snapshots: &[Arc<VirtualMachineSnapshot>]) {
    let mut rows: Vec<([&str; 3], f64)> = snapshots
        .iter()
        .filter_map(|s| {
            let st = s.status.as_ref()?;
            if st.phase.as_deref() != Some("Succeeded") {
                return None;
            }
            let t = unix_seconds(st.creation_time.as_deref()?)?;
            let vm = s.spec.as_ref()?.source.as_ref()?.name.as_deref()?;
            Some((
                [
                    vm,
                    s.metadata.name.as_deref().unwrap_or(""),
                    s.metadata.namespace.as_deref().unwrap_or(""),
                ],
                t,
            ))
        })
        .collect();
    rows.sort_by(|a, b| (a.0[2], a.0[1]).cmp(&(b.0[2], b.0[1])));
    let mut f = out.family("kubevirt_vmsnapshot_succeeded_timestamp_seconds");
    for (labels, t) in &rows {
        f.sample(labels, &[], Num::Float(*t));
    }
}

/// Renders the restored-disk families from the PVCs carrying KubeVirt's restore labels (PVCs
/// without `restore.kubevirt.io/source-vm-name` are ignored).
pub fn render_restored(out: &mut Exposition, pvcs: &[Arc<PersistentVolumeClaim>]) {
    // (vm_name, vm_namespace) -> (disks, bytes)
    let mut per_vm: BTreeMap<(&str, &str), (u64, u64)> = BTreeMap::new();
    for pvc in pvcs {
        let Some(labels) = pvc.metadata.labels.as_ref() else {
            continue;
        };
        let Some(vm) = labels.get(RESTORE_SOURCE_VM_NAME) else {
            continue;
        };
        let ns = labels
            .get(RESTORE_SOURCE_VM_NAMESPACE)
            .or(pvc.metadata.namespace.as_ref())
            .map(String::as_str)
            .unwrap_or("");
        let bytes = pvc
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .and_then(|q| virtguard_api::quantity::bytes(&q.0))
            .unwrap_or(0);
        let e = per_vm.entry((vm.as_str(), ns)).or_default();
        e.0 += 1;
        e.1 = e.1.saturating_add(bytes);
    }
    let mut f = out.family("kubevirt_vmsnapshot_disks_restored_from_source");
    for ((vm, ns), (disks, _)) in &per_vm {
        f.sample(&[vm, ns], &[], Num::Int(*disks));
    }
    let mut f = out.family("kubevirt_vmsnapshot_disks_restored_from_source_bytes");
    for ((vm, ns), (_, bytes)) in &per_vm {
        f.sample(&[vm, ns], &[], Num::Int(*bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pvc(
        ns: &str,
        name: &str,
        labels: &[(&str, &str)],
        size: &str,
    ) -> Arc<PersistentVolumeClaim> {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": ns, "name": name, "labels": labels},
                "spec": {"resources": {"requests": {"storage": size}}},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn restored_disks_are_grouped_by_source_vm() {
        let src = RESTORE_SOURCE_VM_NAME;
        let srcns = RESTORE_SOURCE_VM_NAMESPACE;
        let pvcs = vec![
            pvc(
                "default",
                "r1",
                &[(src, "simple-vm"), (srcns, "default")],
                "1Gi",
            ),
            pvc("default", "r2", &[(src, "simple-vm")], "512Mi"),
            pvc(
                "other",
                "r3",
                &[(src, "simple-vm"), (srcns, "default")],
                "bogus",
            ),
            pvc("other", "r4", &[(src, "simple-vm")], "1Mi"),
            pvc("default", "plain", &[("app", "x")], "1Gi"),
        ];
        let mut out = Exposition::default();
        render_restored(&mut out, &pvcs);
        let text = out.into_string();
        for line in [
            "kubevirt_vmsnapshot_disks_restored_from_source{vm_name=\"simple-vm\",vm_namespace=\"default\"} 3\n",
            "kubevirt_vmsnapshot_disks_restored_from_source_bytes{vm_name=\"simple-vm\",vm_namespace=\"default\"} 1610612736\n",
            "kubevirt_vmsnapshot_disks_restored_from_source{vm_name=\"simple-vm\",vm_namespace=\"other\"} 1\n",
            "kubevirt_vmsnapshot_disks_restored_from_source_bytes{vm_name=\"simple-vm\",vm_namespace=\"other\"} 1048576\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert_eq!(
            text.matches("\nkubevirt_vmsnapshot_disks_restored_from_source{")
                .count(),
            2
        );
    }

    #[test]
    fn only_succeeded_snapshots_with_a_creation_time() {
        let snap = |name: &str, status: serde_json::Value| -> Arc<VirtualMachineSnapshot> {
            Arc::new(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"namespace": "prod", "name": name},
                    "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "db"}},
                    "status": status,
                }))
                .unwrap(),
            )
        };
        let snaps = vec![
            snap(
                "ok",
                serde_json::json!({"phase": "Succeeded", "creationTime": "2026-11-22T04:00:00Z", "readyToUse": true}),
            ),
            snap(
                "busy",
                serde_json::json!({"phase": "InProgress", "creationTime": "2026-11-22T04:00:00Z"}),
            ),
            snap("odd", serde_json::json!({"phase": "Succeeded"})),
        ];
        let mut out = Exposition::default();
        render_snapshots(&mut out, &snaps);
        let text = out.into_string();
        assert!(text.ends_with(
            "\nkubevirt_vmsnapshot_succeeded_timestamp_seconds{name=\"db\",snapshot_name=\"ok\",namespace=\"prod\"} 1795320000\n"
        ), "{text}");
        assert_eq!(
            text.matches("\nkubevirt_vmsnapshot_succeeded_timestamp_seconds{")
                .count(),
            1
        );
    }
}
