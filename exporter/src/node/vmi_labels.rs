//! Node mode's optional view of its node's VMIs: labels for `--vmi-label-allowlist`, SR-IOV
//! NICs for `--guest-agent-nics` ([`super::guest_nics`]).
//!
//! libvirt knows a VM only by its domain name (`<namespace>_<name>`); its Kubernetes labels and
//! interfaces live in the API. So only with one of those flags does node mode open a Kubernetes client and
//! follow the VMIs **of its own node** with one reflector (label selector
//! `kubevirt.io/nodeName=<node>`, the label KubeVirt puts on every scheduled VMI and the same
//! selection virt-handler uses) — never a LIST per scrape, never the whole cluster's VMIs. Without
//! the flag node mode makes no API call at all and needs no token.
//!
//! A VM whose VMI is not (yet) in the store is rendered without extra labels; `/readyz` waits for
//! the first sync so a fresh pod does not start with unlabelled series.

use std::collections::HashMap;
use std::sync::Arc;

use kube::Client;
use virtguard_api::kubevirt::VirtualMachineInstance;

use super::stats::VmStats;
use crate::allowlist::VmiLabelAllowlist;
use crate::cluster::watch::{self, KindHealth, Reflected};

/// The VMI reflector and the allow-list.
pub struct VmiLabelSource {
    allow: VmiLabelAllowlist,
    vmis: Reflected<VirtualMachineInstance>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for VmiLabelSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl VmiLabelSource {
    /// Starts following the VMIs of `node` (all VMIs when `node` is empty) on the current tokio
    /// runtime.
    pub fn start(client: Client, allow: VmiLabelAllowlist, node: &str) -> VmiLabelSource {
        let selector = if node.is_empty() {
            tracing::warn!("no --node-name: following every VMI of the cluster for their labels");
            String::new()
        } else {
            format!("{}={node}", virtguard_api::labels::VMI_NODE_NAME)
        };
        let (vmis, task) = watch::spawn(client, "VirtualMachineInstance", None, &selector);
        VmiLabelSource { allow, vmis, task }
    }

    /// The extra labels of each VM, aligned with `vms`.
    pub fn extras(&self, vms: &[VmStats]) -> Vec<Vec<(String, String)>> {
        let state = self.vmis.store.state();
        let by_name: HashMap<(&str, &str), &Arc<VirtualMachineInstance>> = state
            .iter()
            .map(|v| {
                (
                    (
                        v.metadata.namespace.as_deref().unwrap_or(""),
                        v.metadata.name.as_deref().unwrap_or(""),
                    ),
                    v,
                )
            })
            .collect();
        vms.iter()
            .map(|vm| {
                let key = (vm.identity.namespace.as_str(), vm.identity.name.as_str());
                by_name
                    .get(&key)
                    .map(|v| self.allow.extra(v.metadata.labels.as_ref()))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Per-scrape lookup of the VMIs' SR-IOV NICs for `--guest-agent-nics` (reads the same
    /// reflector store; no API call).
    pub fn nic_source(&self) -> super::guest_nics::NicSource {
        let store = self.vmis.store.clone();
        Arc::new(move || {
            store
                .state()
                .iter()
                .filter_map(|v| {
                    let wanted = super::guest_nics::wanted_from_vmi(v);
                    (!wanted.is_empty()).then(|| {
                        (
                            super::stats::Identity {
                                namespace: v.metadata.namespace.clone().unwrap_or_default(),
                                name: v.metadata.name.clone().unwrap_or_default(),
                            },
                            wanted,
                        )
                    })
                })
                .collect()
        })
    }

    /// VMIs in the store.
    pub fn len(&self) -> usize {
        self.vmis.store.len()
    }

    /// True when no VMI is known.
    pub fn is_empty(&self) -> bool {
        self.vmis.store.is_empty()
    }

    /// The reflector's health.
    pub fn health(&self) -> &KindHealth {
        &self.vmis.health
    }

    /// Synced (or the VMI kind is not served at all).
    pub fn ready(&self) -> bool {
        self.vmis.health.settled()
    }
}
