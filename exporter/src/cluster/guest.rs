//! Guest state per VMI: `virtguard_vmi_guest_agent_connected` (condition `AgentConnected` is
//! True) and `virtguard_vmi_filesystem_frozen` (`status.fsFreezeStatus` is `frozen`).
//!
//! Written for every VMI in phase Running (the only phase in which a guest agent can answer;
//! a paused VMI stays Running in KubeVirt), labelled `namespace`, `name` and `node`
//! (`status.nodeName`), plus the allow-listed VMI labels.

use std::sync::Arc;

use virtguard_api::kubevirt::VirtualMachineInstance;

use crate::allowlist::VmiLabelAllowlist;
use crate::render::{Exposition, Num};

/// Renders the guest families.
pub fn render(
    out: &mut Exposition,
    vmis: &[Arc<VirtualMachineInstance>],
    allow: &VmiLabelAllowlist,
) {
    let mut rows: Vec<_> = vmis
        .iter()
        .filter(|v| v.is_running())
        .map(|v| {
            let st = v.status.as_ref();
            let labels = [
                v.metadata.namespace.as_deref().unwrap_or(""),
                v.metadata.name.as_deref().unwrap_or(""),
                st.and_then(|s| s.node_name.as_deref()).unwrap_or(""),
            ];
            let frozen = st.and_then(|s| s.fs_freeze_status.as_deref()) == Some("frozen");
            let extra = allow.extra(v.metadata.labels.as_ref());
            (labels, v.agent_connected(), frozen, extra)
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let mut f = out.family("virtguard_vmi_guest_agent_connected");
    for (labels, agent, _, extra) in &rows {
        f.sample(labels, extra, Num::Int(u64::from(*agent)));
    }
    let mut f = out.family("virtguard_vmi_filesystem_frozen");
    for (labels, _, frozen, extra) in &rows {
        f.sample(labels, extra, Num::Int(u64::from(*frozen)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmi(name: &str, status: serde_json::Value) -> Arc<VirtualMachineInstance> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "prod", "name": name, "labels": {"team": "blue", "secret": "s"}},
                "status": status,
            }))
            .unwrap(),
        )
    }

    #[test]
    fn agent_and_freeze_state_of_running_vmis() {
        let vmis = vec![
            vmi(
                "db",
                serde_json::json!({"phase": "Running", "nodeName": "n1", "fsFreezeStatus": "frozen",
                "conditions": [{"type": "AgentConnected", "status": "True"}]}),
            ),
            vmi(
                "web",
                serde_json::json!({"phase": "Running", "nodeName": "n2",
                "conditions": [{"type": "AgentConnected", "status": "False"}]}),
            ),
            vmi("new", serde_json::json!({"phase": "Scheduling"})),
        ];
        let allow = VmiLabelAllowlist::parse(&["team".to_string()]).unwrap();
        let mut out = Exposition::default();
        render(&mut out, &vmis, &allow);
        let text = out.into_string();
        for line in [
            "virtguard_vmi_guest_agent_connected{namespace=\"prod\",name=\"db\",node=\"n1\",label_team=\"blue\"} 1\n",
            "virtguard_vmi_guest_agent_connected{namespace=\"prod\",name=\"web\",node=\"n2\",label_team=\"blue\"} 0\n",
            "virtguard_vmi_filesystem_frozen{namespace=\"prod\",name=\"db\",node=\"n1\",label_team=\"blue\"} 1\n",
            "virtguard_vmi_filesystem_frozen{namespace=\"prod\",name=\"web\",node=\"n2\",label_team=\"blue\"} 0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("new") && !text.contains("secret"), "{text}");
    }
}
