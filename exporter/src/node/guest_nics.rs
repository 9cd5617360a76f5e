//! Network counters of NICs libvirt cannot see, taken from the guest agent (`--guest-agent-nics`).
//!
//! libvirt's interface stats (`net.N.*`) cover the NICs it backs with a tap or macvtap device. An
//! SR-IOV virtual function (KubeVirt's `sriov` interface binding) is passed through to the guest
//! as a PCI host device, so libvirt has no counters for it and the VM's traffic on it would be
//! invisible. With `--guest-agent-nics`, node mode follows the VMIs of its node (the same single
//! reflector as `--vmi-label-allowlist`, label `kubevirt.io/nodeName=<node>`) and, per scrape:
//!
//! 1. [`wanted_from_vmi`]: for every VMI interface with the `sriov` binding whose name libvirt did
//!    not report, the interface's MAC address — `status.interfaces[].mac` of the entry of that
//!    name (KubeVirt fills it in), else `spec.domain.devices.interfaces[].macAddress`; an
//!    interface with neither cannot be matched and is skipped;
//! 2. one `guest-network-get-interfaces` call through the guest agent
//!    (`virDomainQemuAgentCommand`, timeout [`AGENT_TIMEOUT_SECS`]) per VM that has such NICs and
//!    whose VMI reports `AgentConnected`;
//! 3. [`parse_agent_interfaces`]: the guest interface whose `hardware-address` equals that MAC
//!    (case-insensitive) gives the eight `kubevirt_vmi_network_*` counters from its `statistics`
//!    (the guest kernel's `/proc/net/dev`), rendered with `interface=<VMI interface name>` and
//!    the extra label `source="guest-agent"`, so users can tell these series (counted by the
//!    guest, reset when it reboots, only as trustworthy as the guest) from libvirt's.
//!
//! A failing or absent agent costs only these series (logged at debug level), never the VM's
//! `virtguard_vmi_scrape_success`. A guest NIC whose MAC no VMI interface claims is not exported
//! (the VMI names the label; a guest-chosen name would be free text).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use virtguard_api::kubevirt::VirtualMachineInstance;

use super::stats::{Device, Identity};

/// Timeout of one guest agent call, in seconds (libvirt's unit); well inside the default 3 s
/// per-connection deadline.
pub const AGENT_TIMEOUT_SECS: i32 = 1;

/// The agent command node mode sends.
pub const AGENT_COMMAND: &str = r#"{"execute":"guest-network-get-interfaces"}"#;

/// The value of the `source` label on guest-agent series.
pub const SOURCE_LABEL: (&str, &str) = ("source", "guest-agent");

/// A VMI interface whose counters must come from the guest agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedNic {
    /// The VMI interface name (the `interface` label).
    pub interface: String,
    /// Its MAC address, lower case.
    pub mac: String,
}

/// Called once per scrape: the NICs of each VM (by identity) that need guest agent counters.
/// VMs without such NICs, or whose agent is not connected, are absent.
pub type NicSource = Arc<dyn Fn() -> HashMap<Identity, Vec<WantedNic>> + Send + Sync>;

/// The SR-IOV interfaces of a VMI with a known MAC, when its guest agent is connected.
pub fn wanted_from_vmi(vmi: &VirtualMachineInstance) -> Vec<WantedNic> {
    if !vmi.agent_connected() {
        return Vec::new();
    }
    let status_ifaces = vmi
        .status
        .as_ref()
        .and_then(|s| s.interfaces.as_deref())
        .unwrap_or_default();
    let spec_ifaces = vmi
        .spec
        .as_ref()
        .and_then(|s| s.domain.as_ref())
        .and_then(|d| d.devices.as_ref())
        .and_then(|d| d.interfaces.as_deref())
        .unwrap_or_default();
    let mut out: Vec<WantedNic> = Vec::new();
    for i in spec_ifaces.iter().filter(|i| i.sriov.is_some()) {
        let Some(name) = i.name.as_deref().filter(|n| !n.is_empty()) else {
            continue;
        };
        let from_status = status_ifaces
            .iter()
            .find(|s| s.name.as_deref() == Some(name))
            .and_then(|s| s.mac.as_deref());
        let Some(mac) = from_status
            .or(i.mac_address.as_deref())
            .map(str::trim)
            .filter(|m| !m.is_empty())
        else {
            continue;
        };
        if out.iter().any(|w| w.interface == name) {
            continue;
        }
        out.push(WantedNic {
            interface: name.to_string(),
            mac: mac.to_ascii_lowercase(),
        });
    }
    out
}

/// Guest agent statistic keys in the order of [`super::stats::NET_FIELDS`].
const AGENT_STATS: [&str; 8] = [
    "rx-bytes",
    "tx-bytes",
    "rx-packets",
    "tx-packets",
    "rx-errs",
    "tx-errs",
    "rx-dropped",
    "tx-dropped",
];

/// Parses the agent's answer to [`AGENT_COMMAND`] and returns one device per wanted NIC found
/// in the guest (label = the VMI interface name). Missing statistics give no samples; an answer
/// that is not the expected JSON gives no devices.
pub fn parse_agent_interfaces(answer: &str, wanted: &[WantedNic]) -> Vec<Device<8>> {
    let Ok(v) = serde_json::from_str::<Value>(answer) else {
        return Vec::new();
    };
    let Some(guest) = v.get("return").and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for w in wanted {
        let found = guest.iter().find(|g| {
            g.get("hardware-address")
                .and_then(Value::as_str)
                .is_some_and(|m| m.eq_ignore_ascii_case(&w.mac))
        });
        let Some(stats) = found.and_then(|g| g.get("statistics")) else {
            continue;
        };
        let mut values = [None; 8];
        for (slot, key) in values.iter_mut().zip(AGENT_STATS) {
            *slot = stats.get(key).and_then(Value::as_u64);
        }
        if values.iter().any(Option::is_some) {
            out.push(Device {
                label: w.interface.clone(),
                values,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vmi(v: Value) -> VirtualMachineInstance {
        serde_json::from_value(v).unwrap()
    }

    fn connected(extra_status: Value) -> Value {
        let mut status = json!({
            "phase": "Running",
            "conditions": [{"type": "AgentConnected", "status": "True"}],
        });
        if let (Some(s), Value::Object(e)) = (status.as_object_mut(), extra_status) {
            s.extend(e);
        }
        status
    }

    #[test]
    fn sriov_interfaces_with_a_mac_are_wanted() {
        let v = vmi(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "vm", "namespace": "ns"},
            "spec": {"domain": {"devices": {"interfaces": [
                {"name": "default", "masquerade": {}},
                {"name": "fast", "sriov": {}},
                {"name": "fast2", "sriov": {}, "macAddress": "02:AA:00:00:00:02"},
                {"name": "nomac", "sriov": {}},
            ]}}},
            "status": connected(json!({"interfaces": [
                {"name": "default", "mac": "02:00:00:00:00:01"},
                {"name": "fast", "mac": "02:AA:00:00:00:01", "infoSource": "guest-agent"},
            ]})),
        }));
        assert_eq!(
            wanted_from_vmi(&v),
            vec![
                WantedNic {
                    interface: "fast".into(),
                    mac: "02:aa:00:00:00:01".into()
                },
                WantedNic {
                    interface: "fast2".into(),
                    mac: "02:aa:00:00:00:02".into()
                },
            ]
        );
    }

    #[test]
    fn no_agent_no_calls() {
        let v = vmi(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "vm", "namespace": "ns"},
            "spec": {"domain": {"devices": {"interfaces": [
                {"name": "fast", "sriov": {}, "macAddress": "02:aa:00:00:00:01"},
            ]}}},
            "status": {"phase": "Running", "conditions": [{"type": "AgentConnected", "status": "False"}]},
        }));
        assert!(wanted_from_vmi(&v).is_empty());
    }

    /// The shape qemu-ga answers with (recorded from the tiny guest, addresses shortened).
    const ANSWER: &str = r#"{"return":[
      {"name":"lo","hardware-address":"00:00:00:00:00:00","statistics":{"rx-bytes":10,"tx-bytes":10,"rx-packets":1,"tx-packets":1,"rx-errs":0,"tx-errs":0,"rx-dropped":0,"tx-dropped":0}},
      {"name":"eth1","hardware-address":"02:aa:00:00:00:01","ip-addresses":[{"ip-address":"10.0.2.15","ip-address-type":"ipv4","prefix":24}],
       "statistics":{"rx-bytes":1200,"tx-bytes":3400,"rx-packets":12,"tx-packets":34,"rx-errs":1,"tx-errs":2,"rx-dropped":3,"tx-dropped":4}},
      {"name":"eth2","hardware-address":"02:aa:00:00:00:03"}
    ]}"#;

    #[test]
    fn agent_answer_matched_by_mac() {
        let wanted = [
            WantedNic {
                interface: "fast".into(),
                mac: "02:AA:00:00:00:01".to_ascii_lowercase(),
            },
            // In the guest, but without statistics (old agent): no samples.
            WantedNic {
                interface: "nostats".into(),
                mac: "02:aa:00:00:00:03".into(),
            },
            // Not in the guest (driver not loaded): nothing.
            WantedNic {
                interface: "gone".into(),
                mac: "02:aa:00:00:00:09".into(),
            },
        ];
        let devs = parse_agent_interfaces(ANSWER, &wanted);
        assert_eq!(devs.len(), 1);
        assert_eq!(devs[0].label, "fast");
        assert_eq!(
            devs[0].values,
            [
                Some(1200),
                Some(3400),
                Some(12),
                Some(34),
                Some(1),
                Some(2),
                Some(3),
                Some(4)
            ]
        );
    }

    #[test]
    fn garbage_answers_give_nothing() {
        let w = [WantedNic {
            interface: "fast".into(),
            mac: "02:aa:00:00:00:01".into(),
        }];
        assert!(parse_agent_interfaces("not json", &w).is_empty());
        assert!(parse_agent_interfaces(r#"{"error":{"class":"GenericError"}}"#, &w).is_empty());
        assert!(parse_agent_interfaces(r#"{"return":{}}"#, &w).is_empty());
    }
}
