//! The scenario file: what the simulated cluster contains at start.
//!
//! ```yaml
//! namespaces: [prod]                 # `default` always exists
//! storageClasses:                    # none given: `sim-csi` (driver sim.csi.virtguard.io,
//!   - name: ceph-rbd                 #   default) with snapshot class `sim-csi-snap`
//!     driver: rbd.csi.ceph.com
//!     default: true
//!     snapshotClass: ceph-rbd-snap   # a VolumeSnapshotClass for the same driver (default for it)
//!     groupSnapshotClass: ceph-rbd-group  # optional: a VolumeGroupSnapshotClass (default for it)
//!     deletionPolicy: Delete         # of both classes
//! nads:
//!   - {namespace: prod, name: br-data}
//! vms:
//!   - namespace: prod
//!     name: db
//!     running: true                  # default true
//!     guestAgent: true               # default true
//!     guestAgentSocket: /run/qga.sock  # optional: freeze/thaw reach this real agent
//!     guestAgentLibvirt: {uri: "qemu+unix:///system?socket=/x", domain: prod_db}  # or via libvirt
//!     changedBlockTracking: true     # default false: CBT Enabled (see the `cbt` module)
//!     labels: {app: db}
//!     node: node-a                   # optional: nodeSelector kubernetes.io/hostname; the VMI is
//!                                    #   scheduled there (default: sim-node-1)
//!     networks: [br-data]            # Multus networks (bridge interfaces)
//!     disks:
//!       - name: root                 # PVC `<vm>-<disk>`
//!         size: 64Mi
//!         storageClass: ceph-rbd     # optional: default class
//!         content: {random: 42}      # zeros | {pattern: "text"} | {random: seed} | {file: path}
//!         used: 8Mi                  # only the first 8 MiB are written (rest is a hole)
//! migrations:
//!   - {namespace: prod, name: mig-1, vmi: db, timeline: "Pending:0,Scheduling:100,Running:300,Failed:600"}
//! objects: []                        # any other objects, created as given
//! faults:                            # see faults.rs
//!   - {op: freeze, target: prod/db, call: 2, status: 500}
//! timings: {snapshotCreationMs: 200, snapshotReadyMs: 800}
//! launcher: {libvirtUri: "qemu+unix:///system?socket=/x", kernel: /k, initrd: /i,
//!            namespaces: [virtguard-drills]}   # real QEMU domains (see launcher.rs)
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::disk::Content;
use crate::{Error, FaultRule, Inner, Timings};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Scenario {
    pub namespaces: Vec<String>,
    pub storage_classes: Vec<StorageClassSpec>,
    pub nads: Vec<NadSpec>,
    pub vms: Vec<VmSpec>,
    pub migrations: Vec<MigrationSpec>,
    pub objects: Vec<Value>,
    pub faults: Vec<FaultRule>,
    pub timings: Timings,
    /// Boot the VMIs of some namespaces as real QEMU domains (see [`crate::launcher`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launcher: Option<crate::launcher::LauncherConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageClassSpec {
    pub name: String,
    pub driver: String,
    pub default: bool,
    pub snapshot_class: Option<String>,
    /// A VolumeGroupSnapshotClass (v1beta2) for the driver, annotated default for it.
    pub group_snapshot_class: Option<String>,
    pub deletion_policy: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct NadSpec {
    pub namespace: String,
    pub name: String,
    pub config: Option<String>,
}

fn yes() -> bool {
    true
}

/// A real guest agent reached through libvirt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibvirtAgent {
    /// libvirt connection URI.
    pub uri: String,
    /// Domain name.
    pub domain: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmSpec {
    #[serde(default = "default_ns")]
    pub namespace: String,
    pub name: String,
    #[serde(default = "yes")]
    pub running: bool,
    #[serde(default = "yes")]
    pub guest_agent: bool,
    #[serde(default)]
    pub guest_agent_socket: Option<String>,
    /// `{uri, domain}`: freeze/thaw go through libvirt to that domain's real guest agent.
    #[serde(default)]
    pub guest_agent_libvirt: Option<LibvirtAgent>,
    /// KubeVirt changed block tracking (annotation [`crate::cbt::CBT_ANNOTATION`]).
    #[serde(default)]
    pub changed_block_tracking: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Node the VM is pinned to (template `nodeSelector` `kubernetes.io/hostname`).
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub networks: Vec<String>,
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
}

fn default_ns() -> String {
    "default".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskSpec {
    pub name: String,
    pub size: String,
    #[serde(default)]
    pub storage_class: Option<String>,
    #[serde(default)]
    pub content: Content,
    #[serde(default)]
    pub used: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MigrationSpec {
    #[serde(default = "default_ns")]
    pub namespace: String,
    pub name: String,
    pub vmi: String,
    #[serde(default)]
    pub timeline: Option<String>,
}

impl Scenario {
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, Error> {
        serde_yaml::from_str(text).map_err(|e| Error::Scenario {
            path: origin.to_string(),
            message: e.to_string(),
        })
    }

    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: "reading scenario",
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text, &path.display().to_string())
    }
}

fn err(what: String) -> impl FnOnce(crate::ApiError) -> Error {
    move |e| Error::Scenario {
        path: "scenario".into(),
        message: format!("{what}: {e}"),
    }
}

/// Create the scenario's objects and disks.
pub(crate) fn apply(inner: &Inner, s: &Scenario) -> Result<(), Error> {
    let ns_res = inner.rid("", "namespaces");
    let mut namespaces = vec!["default".to_string(), "kube-system".to_string()];
    namespaces.extend(s.namespaces.iter().cloned());
    namespaces.extend(s.vms.iter().map(|v| v.namespace.clone()));
    namespaces.extend(s.nads.iter().map(|v| v.namespace.clone()));
    for ns in namespaces {
        if inner.store.get(ns_res, "", &ns).is_none() {
            let mut o = inner
                .store
                .create(ns_res, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}}))
                .map_err(err(format!("namespace {ns}")))?;
            o["status"] = json!({"phase": "Active"});
            inner
                .store
                .update(ns_res, o, None)
                .map_err(err(format!("namespace {ns}")))?;
        }
    }
    let sc_res = inner.rid("storage.k8s.io", "storageclasses");
    let vsc_res = inner.rid("snapshot.storage.k8s.io", "volumesnapshotclasses");
    let vgsc_res = inner.rid("groupsnapshot.storage.k8s.io", "volumegroupsnapshotclasses");
    let classes = if s.storage_classes.is_empty() {
        vec![StorageClassSpec {
            name: "sim-csi".into(),
            driver: "sim.csi.virtguard.io".into(),
            default: true,
            snapshot_class: Some("sim-csi-snap".into()),
            group_snapshot_class: None,
            deletion_policy: None,
        }]
    } else {
        s.storage_classes.clone()
    };
    for c in &classes {
        let mut sc = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": c.name}, "provisioner": c.driver, "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate", "allowVolumeExpansion": true});
        if c.default {
            sc["metadata"]["annotations"] =
                json!({"storageclass.kubernetes.io/is-default-class": "true"});
        }
        inner
            .store
            .create(sc_res, sc)
            .map_err(err(format!("StorageClass {}", c.name)))?;
        if let Some(vc) = &c.snapshot_class {
            inner
                .store
                .create(vsc_res, json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
                    "metadata": {"name": vc, "annotations": {"snapshot.storage.kubernetes.io/is-default-class": "true"}},
                    "driver": c.driver, "deletionPolicy": c.deletion_policy.clone().unwrap_or_else(|| "Delete".into())}))
                .map_err(err(format!("VolumeSnapshotClass {vc}")))?;
        }
        if let Some(gc) = &c.group_snapshot_class {
            inner
                .store
                .create(vgsc_res, json!({"apiVersion": "groupsnapshot.storage.k8s.io/v1beta2", "kind": "VolumeGroupSnapshotClass",
                    "metadata": {"name": gc, "annotations": {crate::groupsnapshot::DEFAULT_GROUP_CLASS_ANNOTATION: "true"}},
                    "driver": c.driver, "deletionPolicy": c.deletion_policy.clone().unwrap_or_else(|| "Delete".into())}))
                .map_err(err(format!("VolumeGroupSnapshotClass {gc}")))?;
        }
    }
    let nad_res = inner.rid("k8s.cni.cncf.io", "network-attachment-definitions");
    for n in &s.nads {
        let config = n.config.clone().unwrap_or_else(|| {
            json!({"cniVersion": "0.3.1", "name": n.name, "type": "bridge", "bridge": n.name})
                .to_string()
        });
        inner
            .store
            .create(nad_res, json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                "metadata": {"name": n.name, "namespace": n.namespace}, "spec": {"config": config}}))
            .map_err(err(format!("NAD {}/{}", n.namespace, n.name)))?;
    }
    let pvc_res = inner.rid("", "persistentvolumeclaims");
    for vm in &s.vms {
        for d in &vm.disks {
            let pvc_name = format!("{}-{}", vm.name, d.name);
            let mut spec = json!({"accessModes": ["ReadWriteOnce"], "volumeMode": "Block",
                "resources": {"requests": {"storage": d.size}}});
            if let Some(sc) = &d.storage_class {
                spec["storageClassName"] = json!(sc);
            }
            inner
                .store
                .create(pvc_res, json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": pvc_name, "namespace": vm.namespace, "labels": {"kubevirt.io/vm": vm.name}}, "spec": spec}))
                .map_err(err(format!("PVC {}/{pvc_name}", vm.namespace)))?;
        }
    }
    crate::snapshot::reconcile_pvcs(inner);
    for vm in &s.vms {
        for d in &vm.disks {
            let pvc_name = format!("{}-{}", vm.name, d.name);
            let path = crate::snapshot::pvc_file(inner, &vm.namespace, &pvc_name).map_err(|e| {
                Error::Scenario {
                    path: "scenario".into(),
                    message: format!(
                        "disk {} of VM {}/{}: {e} (does the storage class exist?)",
                        d.name, vm.namespace, vm.name
                    ),
                }
            })?;
            let used = d.used.as_deref().and_then(crate::util::parse_quantity);
            crate::disk::fill(&path, &d.content, used)?;
        }
        let mut annotations: BTreeMap<String, String> = vm.annotations.clone();
        if !vm.guest_agent {
            annotations.insert(crate::kubevirt::AGENT_ANNOTATION.into(), "false".into());
        }
        if vm.changed_block_tracking {
            annotations.insert(crate::cbt::CBT_ANNOTATION.into(), "true".into());
        }
        if let Some(l) = &vm.guest_agent_libvirt {
            annotations.insert(
                crate::kubevirt::AGENT_LIBVIRT_ANNOTATION.into(),
                format!("{} {}", l.uri, l.domain),
            );
        }
        if let Some(sock) = &vm.guest_agent_socket {
            annotations.insert(
                crate::kubevirt::AGENT_SOCKET_ANNOTATION.into(),
                sock.clone(),
            );
        }
        let disks: Vec<Value> = vm
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let mut disk = json!({"name": d.name, "disk": {"bus": "virtio"}});
                if i == 0 {
                    disk["bootOrder"] = json!(1);
                }
                disk
            })
            .collect();
        let volumes: Vec<Value> = vm
            .disks
            .iter()
            .map(|d| json!({"name": d.name, "persistentVolumeClaim": {"claimName": format!("{}-{}", vm.name, d.name)}}))
            .collect();
        let mut interfaces = vec![json!({"name": "default", "masquerade": {}})];
        let mut networks = vec![json!({"name": "default", "pod": {}})];
        for n in &vm.networks {
            interfaces.push(json!({"name": n, "bridge": {}}));
            networks.push(json!({"name": n, "multus": {"networkName": n}}));
        }
        let mut tmpl_labels = vm.labels.clone();
        tmpl_labels.insert("kubevirt.io/domain".into(), vm.name.clone());
        let mut tmpl_spec = json!({
            "domain": {"devices": {"disks": disks, "interfaces": interfaces}, "resources": {"requests": {"memory": "128Mi"}}},
            "networks": networks,
            "volumes": volumes,
        });
        if let Some(node) = &vm.node {
            tmpl_spec["nodeSelector"] = json!({crate::kubevirt::HOSTNAME_LABEL: node});
        }
        let obj = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": vm.name, "namespace": vm.namespace, "labels": vm.labels},
            "spec": {
                "runStrategy": if vm.running { "Always" } else { "Halted" },
                "template": {
                    "metadata": {"labels": tmpl_labels, "annotations": annotations},
                    "spec": tmpl_spec,
                }
            }
        });
        inner
            .store
            .create(inner.rid("kubevirt.io", "virtualmachines"), obj)
            .map_err(err(format!("VM {}/{}", vm.namespace, vm.name)))?;
    }
    for m in &s.migrations {
        let mut meta = json!({"name": m.name, "namespace": m.namespace});
        if let Some(t) = &m.timeline {
            meta["annotations"] = json!({crate::kubevirt::TIMELINE_ANNOTATION: t});
        }
        inner
            .store
            .create(inner.rid("kubevirt.io", "virtualmachineinstancemigrations"),
                json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration", "metadata": meta, "spec": {"vmiName": m.vmi}}))
            .map_err(err(format!("VMIM {}/{}", m.namespace, m.name)))?;
    }
    for o in &s.objects {
        let api_version = o.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = o.get("kind").and_then(Value::as_str).unwrap_or("");
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        let res = inner
            .reg
            .by_kind(group, kind)
            .ok_or_else(|| Error::Scenario {
                path: "scenario".into(),
                message: format!(
                    "objects: kind {kind:?} of {api_version:?} is not served by virtguard-sim"
                ),
            })?;
        let mut o = o.clone();
        if inner.reg.def(res).namespaced && o.pointer("/metadata/namespace").is_none() {
            o["metadata"]["namespace"] = json!("default");
        }
        inner
            .store
            .create(res, o)
            .map_err(err(format!("object {kind}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let doc = include_str!("scenario.rs");
        let yaml: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```yaml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.strip_prefix("//! ").unwrap_or("").to_string() + "\n")
            .collect();
        let s = Scenario::from_yaml(&yaml, "doc").unwrap();
        assert_eq!(s.vms[0].disks[0].content, Content::Random(42));
        assert_eq!(s.faults[0].call, Some(2));
        assert_eq!(s.timings.snapshot_ready_ms, 800);
        assert_eq!(
            s.storage_classes[0].group_snapshot_class.as_deref(),
            Some("ceph-rbd-group")
        );
        assert!(Scenario::from_yaml("vms: [{name: a, bogus: 1}]", "t").is_err());
    }
}
