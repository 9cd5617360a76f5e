//! Cluster-wide VMI state: phase counts, the non-evictable indicator and duplicate MACs.
//!
//! * `virtguard_vmis_in_phase{node,phase}`: VMIs per node (`status.nodeName`, empty before
//!   scheduling) and lower-cased phase — KubeVirt's `kubevirt_vmi_phase_count`, renamed because
//!   a gauge ending in `_count` fails `promtool check metrics` (`pending`, `scheduling`, `scheduled`, `running`,
//!   `succeeded`, `failed`, `unknown`; a VMI without a phase counts as `unknown`).
//! * `kubevirt_vmi_non_evictable{namespace,name,node}`: for every Running VMI, 1 when its
//!   eviction strategy (`spec.evictionStrategy`) is `LiveMigrate` but its `LiveMigratable`
//!   condition is not True — a node drain would be blocked by it. Like KubeVirt, a missing
//!   condition counts as not migratable. The cluster-wide default strategy (KubeVirt CR) is not
//!   visible here: VMIs that only inherit it are reported 0.
//! * `virtguard_vmi_duplicate_mac{namespace,name,interface}`: for every interface of a VMI that
//!   is not finished (phase neither Succeeded nor Failed), the number of *other* such VMIs that
//!   have an interface with the same MAC (case-insensitive; `status.interfaces[].mac`, else
//!   `spec.domain.devices.interfaces[].macAddress`). Normally 0. The MAC itself never becomes a
//!   label; the colliding VMs are the series with a value above 0.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use virtguard_api::kubevirt::VirtualMachineInstance;

use crate::render::{Exposition, Num};

/// The phases KubeVirt defines, lower-cased as rendered.
pub const PHASES: &[&str] = &[
    "pending",
    "scheduling",
    "scheduled",
    "running",
    "succeeded",
    "failed",
    "unknown",
];

fn ns_name(v: &VirtualMachineInstance) -> (&str, &str) {
    (
        v.metadata.namespace.as_deref().unwrap_or(""),
        v.metadata.name.as_deref().unwrap_or(""),
    )
}

fn node(v: &VirtualMachineInstance) -> &str {
    v.status
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

fn phase_label(v: &VirtualMachineInstance) -> &'static str {
    let p = v.phase().to_ascii_lowercase();
    PHASES
        .iter()
        .find(|x| **x == p)
        .copied()
        .unwrap_or("unknown")
}

/// True when a drain cannot evict the VMI by live migration: Running, strategy LiveMigrate,
/// `LiveMigratable` not True.
pub fn non_evictable(v: &VirtualMachineInstance) -> bool {
    let strategy = v.spec.as_ref().and_then(|s| s.eviction_strategy.as_deref());
    v.is_running()
        && strategy == Some("LiveMigrate")
        && v.condition("LiveMigratable") != Some("True")
}

/// (interface name, lower-cased MAC) of a VMI: status first, then spec for interfaces the
/// status does not list.
fn macs(v: &VirtualMachineInstance) -> Vec<(String, String)> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let status = v.status.as_ref().and_then(|s| s.interfaces.as_ref());
    for i in status.into_iter().flatten() {
        if let (Some(n), Some(m)) = (i.name.as_deref(), i.mac.as_deref()) {
            if !n.is_empty() && !m.is_empty() {
                out.insert(n.to_string(), m.to_ascii_lowercase());
            }
        }
    }
    let spec = v
        .spec
        .as_ref()
        .and_then(|s| s.domain.as_ref())
        .and_then(|d| d.devices.as_ref())
        .and_then(|d| d.interfaces.as_ref());
    for i in spec.into_iter().flatten() {
        if let (Some(n), Some(m)) = (i.name.as_deref(), i.mac_address.as_deref()) {
            if !n.is_empty() && !m.is_empty() {
                out.entry(n.to_string())
                    .or_insert_with(|| m.to_ascii_lowercase());
            }
        }
    }
    out.into_iter().collect()
}

/// Renders the three families.
pub fn render(out: &mut Exposition, vmis: &[Arc<VirtualMachineInstance>]) {
    let mut counts: BTreeMap<(&str, &'static str), u64> = BTreeMap::new();
    for v in vmis {
        *counts.entry((node(v), phase_label(v))).or_default() += 1;
    }
    let mut f = out.family("virtguard_vmis_in_phase");
    for ((node, phase), n) in &counts {
        f.sample(&[node, phase], &[], Num::Int(*n));
    }

    let mut rows: Vec<_> = vmis
        .iter()
        .filter(|v| v.is_running())
        .map(|v| {
            let (ns, name) = ns_name(v);
            ([ns, name, node(v)], non_evictable(v))
        })
        .collect();
    rows.sort();
    let mut f = out.family("kubevirt_vmi_non_evictable");
    for (labels, bad) in &rows {
        f.sample(labels, &[], Num::Int(u64::from(*bad)));
    }

    // MAC → the VMIs (namespace, name) that use it.
    let live: Vec<_> = vmis
        .iter()
        .filter(|v| !matches!(v.phase(), "Succeeded" | "Failed"))
        .map(|v| (ns_name(v), macs(v)))
        .collect();
    let mut users: BTreeMap<&str, BTreeSet<(&str, &str)>> = BTreeMap::new();
    for (id, ifaces) in &live {
        for (_, mac) in ifaces {
            users.entry(mac.as_str()).or_default().insert(*id);
        }
    }
    let mut rows: Vec<_> = live
        .iter()
        .flat_map(|((ns, name), ifaces)| {
            let users = &users;
            ifaces.iter().map(move |(iface, mac)| {
                let others = users
                    .get(mac.as_str())
                    .map_or(0, |u| u.len().saturating_sub(1));
                ([*ns, *name, iface.as_str()], others as u64)
            })
        })
        .collect();
    rows.sort();
    let mut f = out.family("virtguard_vmi_duplicate_mac");
    for (labels, n) in &rows {
        f.sample(labels, &[], Num::Int(*n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vmi(
        name: &str,
        spec: serde_json::Value,
        status: serde_json::Value,
    ) -> Arc<VirtualMachineInstance> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": "prod", "name": name},
                "spec": spec,
                "status": status,
            }))
            .unwrap(),
        )
    }

    #[test]
    fn phases_eviction_and_duplicate_macs() {
        let migratable = json!([{"type": "LiveMigratable", "status": "True"}]);
        let not_migratable = json!([{"type": "LiveMigratable", "status": "False"}]);
        let vmis = vec![
            // LiveMigrate but not migratable: blocks a drain.
            vmi(
                "db",
                json!({"evictionStrategy": "LiveMigrate"}),
                json!({"phase": "Running", "nodeName": "n1", "conditions": not_migratable,
                       "interfaces": [{"name": "default", "mac": "02:aa:00:00:00:01"}]}),
            ),
            // LiveMigrate and migratable; same MAC as db (upper case in its spec only).
            vmi(
                "web",
                json!({"evictionStrategy": "LiveMigrate",
                       "domain": {"devices": {"interfaces": [{"name": "br", "macAddress": "02:AA:00:00:00:01"}]}}}),
                json!({"phase": "Running", "nodeName": "n1", "conditions": migratable}),
            ),
            // No condition at all: counted as not migratable, like KubeVirt.
            vmi(
                "new",
                json!({"evictionStrategy": "LiveMigrate"}),
                json!({"phase": "Running", "nodeName": "n2"}),
            ),
            // Not LiveMigrate: never non-evictable.
            vmi(
                "batch",
                json!({"evictionStrategy": "None"}),
                json!({"phase": "Running", "nodeName": "n2", "conditions": not_migratable,
                       "interfaces": [{"name": "default", "mac": "02:00:00:00:00:09"}]}),
            ),
            // Finished: counted in phases, its MAC no longer collides.
            vmi(
                "old",
                json!({}),
                json!({"phase": "Succeeded", "nodeName": "n2",
                       "interfaces": [{"name": "default", "mac": "02:00:00:00:00:09"}]}),
            ),
            vmi("queued", json!({}), json!({"phase": "Pending"})),
            vmi("odd", json!({}), json!({"phase": "Weird"})),
        ];
        let mut out = Exposition::default();
        render(&mut out, &vmis);
        let text = out.into_string();
        for line in [
            "virtguard_vmis_in_phase{node=\"n1\",phase=\"running\"} 2\n",
            "virtguard_vmis_in_phase{node=\"n2\",phase=\"running\"} 2\n",
            "virtguard_vmis_in_phase{node=\"n2\",phase=\"succeeded\"} 1\n",
            "virtguard_vmis_in_phase{node=\"\",phase=\"pending\"} 1\n",
            "virtguard_vmis_in_phase{node=\"\",phase=\"unknown\"} 1\n",
            "kubevirt_vmi_non_evictable{namespace=\"prod\",name=\"db\",node=\"n1\"} 1\n",
            "kubevirt_vmi_non_evictable{namespace=\"prod\",name=\"web\",node=\"n1\"} 0\n",
            "kubevirt_vmi_non_evictable{namespace=\"prod\",name=\"new\",node=\"n2\"} 1\n",
            "kubevirt_vmi_non_evictable{namespace=\"prod\",name=\"batch\",node=\"n2\"} 0\n",
            "virtguard_vmi_duplicate_mac{namespace=\"prod\",name=\"db\",interface=\"default\"} 1\n",
            "virtguard_vmi_duplicate_mac{namespace=\"prod\",name=\"web\",interface=\"br\"} 1\n",
            "virtguard_vmi_duplicate_mac{namespace=\"prod\",name=\"batch\",interface=\"default\"} 0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("name=\"old\""), "{text}");
        assert!(
            !text.to_ascii_lowercase().contains("02:aa"),
            "MACs never become labels"
        );
    }
}
