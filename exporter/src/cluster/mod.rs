//! Cluster mode (Deployment): state read from the Kubernetes API through reflectors.
//!
//! One reflector per kind ([`watch`]), started once, each a LIST followed by a WATCH:
//!
//! | kind | selection | families |
//! |---|---|---|
//! | VirtualMachineInstanceMigration | all | [`migrations`] |
//! | VirtualMachineInstance | all | [`migrations`] (times), [`guest`], [`vmi_state`] |
//! | VirtualMachineSnapshot | all | [`snapshots`] |
//! | PersistentVolumeClaim | label `restore.kubevirt.io/source-vm-name` | [`snapshots`] (restored disks) |
//! | ConfigMap | label `virtguard.io/status=true` | [`backup_status`], [`maintenance_status`], [`restore_status`] |
//!
//! All of them are restricted to one namespace with `--namespace`. A scrape reads the stores
//! and renders through the same [`Exposition`] as node mode; it makes no API call, so its cost
//! does not depend on the API server and a scrape never sees a half-applied list (the store of a
//! relisting kind is swapped atomically). `/readyz` is 200 once every kind is synced or known to
//! be absent (its CRD is not installed — see [`watch`]); the per-kind state is exported as
//! `virtguard_exporter_reflector_synced`, `_reflector_objects` and `_watch_errors_total`.

pub mod backup_status;
pub mod guest;
pub mod maintenance_status;
pub mod migrations;
pub mod restore_status;
pub mod snapshots;
pub mod vmi_state;
pub mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use kube::Client;
use virtguard_api::kubevirt::{
    VirtualMachineInstance, VirtualMachineInstanceMigration, VirtualMachineSnapshot,
};
use virtguard_api::labels::{
    DRILL_STATUS_CONFIGMAP, MAINTENANCE_STATUS_CONFIGMAP, RESTORE_SOURCE_VM_NAME,
    RESTORE_STATUS_CONFIGMAP, STATUS, STATUS_CONFIGMAP,
};

use crate::allowlist::VmiLabelAllowlist;
use crate::render::{Exposition, Num};
use backup_status::BackupStatus;
use watch::{ErrorReason, KindHealth, Reflected};

/// Parses an RFC 3339 timestamp into Unix seconds (fractional seconds kept).
pub fn unix_seconds(t: &str) -> Option<f64> {
    let t = chrono::DateTime::parse_from_rfc3339(t).ok()?;
    Some(t.timestamp() as f64 + f64::from(t.timestamp_subsec_nanos()) / 1e9)
}

/// Cluster-mode settings.
#[derive(Debug, Clone, Default)]
pub struct ClusterConfig {
    /// Watch only this namespace (None: all namespaces).
    pub namespace: Option<String>,
    /// VMI labels copied onto per-VMI series.
    pub vmi_labels: VmiLabelAllowlist,
}

/// The reflectors of cluster mode; renders a scrape from their stores. Dropping it stops them.
pub struct ClusterCollector {
    cfg: ClusterConfig,
    vmims: Reflected<VirtualMachineInstanceMigration>,
    vmis: Reflected<VirtualMachineInstance>,
    snapshots: Reflected<VirtualMachineSnapshot>,
    pvcs: Reflected<PersistentVolumeClaim>,
    status: Reflected<ConfigMap>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ClusterCollector {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Everything one scrape renders, as plain slices (also what tests and the benchmark feed).
#[derive(Default)]
pub struct ClusterState {
    /// VirtualMachineInstanceMigrations.
    pub vmims: Vec<Arc<VirtualMachineInstanceMigration>>,
    /// VirtualMachineInstances.
    pub vmis: Vec<Arc<VirtualMachineInstance>>,
    /// VirtualMachineSnapshots.
    pub snapshots: Vec<Arc<VirtualMachineSnapshot>>,
    /// PVCs labelled as restored from a VM.
    pub pvcs: Vec<Arc<PersistentVolumeClaim>>,
    /// The backup status ConfigMaps.
    pub status: Vec<Arc<ConfigMap>>,
}

/// Collects the backup records of the status ConfigMaps as sorted (namespace, vm, record). When
/// two labelled ConfigMaps of one namespace name the same VM, the one called `virtguard-status`
/// wins, else the newer attempt — so a series is never written twice.
pub fn backup_entries(cms: &[Arc<ConfigMap>]) -> Vec<(String, String, BackupStatus)> {
    let mut best: BTreeMap<(String, String), (bool, BackupStatus)> = BTreeMap::new();
    for cm in cms {
        let ns = cm.metadata.namespace.clone().unwrap_or_default();
        let name = cm.metadata.name.as_deref();
        if name == Some(MAINTENANCE_STATUS_CONFIGMAP) {
            continue; // keyed by repository, not VM: maintenance_status reads it
        }
        if name == Some(RESTORE_STATUS_CONFIGMAP) || name == Some(DRILL_STATUS_CONFIGMAP) {
            continue; // other records: restore_status reads them
        }
        let canonical = cm.metadata.name.as_deref() == Some(STATUS_CONFIGMAP);
        let Some(data) = cm.data.as_ref() else {
            continue;
        };
        for (vm, rec) in backup_status::parse_configmap(&ns, data) {
            let key = (ns.clone(), vm);
            let better = match best.get(&key) {
                None => true,
                Some((c, old)) => {
                    (canonical, rec.last_attempt_timestamp) > (*c, old.last_attempt_timestamp)
                }
            };
            if better {
                best.insert(key, (canonical, rec));
            }
        }
    }
    best.into_iter()
        .map(|((ns, vm), (_, rec))| (ns, vm, rec))
        .collect()
}

/// Renders the cluster families of `state` (not the exporter's own series).
pub fn render_state(out: &mut Exposition, state: &ClusterState, allow: &VmiLabelAllowlist) {
    migrations::render(out, &state.vmims, &state.vmis);
    snapshots::render_snapshots(out, &state.snapshots);
    snapshots::render_restored(out, &state.pvcs);
    guest::render(out, &state.vmis, allow);
    vmi_state::render(out, &state.vmis);
    backup_status::render(out, &backup_entries(&state.status));
    maintenance_status::render(out, &maintenance_status::entries(&state.status));
    restore_status::render_restores(out, &restore_status::restore_entries(&state.status));
    restore_status::render_drills(out, &restore_status::drill_entries(&state.status));
}

/// Renders the per-kind reflector health (`kinds` = (health, objects in store)).
pub fn render_health(out: &mut Exposition, kinds: &[(&KindHealth, usize)]) {
    let mut f = out.family("virtguard_exporter_reflector_synced");
    for (h, _) in kinds {
        f.sample(&[h.kind], &[], Num::Int(u64::from(h.synced())));
    }
    let mut f = out.family("virtguard_exporter_reflector_objects");
    for (h, n) in kinds {
        f.sample(&[h.kind], &[], Num::Int(*n as u64));
    }
    let mut f = out.family("virtguard_exporter_watch_errors_total");
    for (h, _) in kinds {
        for r in ErrorReason::ALL {
            f.sample(&[h.kind, r.as_str()], &[], Num::Int(h.errors(r)));
        }
    }
}

impl ClusterCollector {
    /// Starts the reflectors on the current tokio runtime.
    pub fn start(client: Client, cfg: ClusterConfig) -> ClusterCollector {
        let ns = cfg.namespace.as_deref();
        let status_selector = format!("{STATUS}=true");
        let (vmims, t1) = watch::spawn(client.clone(), "VirtualMachineInstanceMigration", ns, "");
        let (vmis, t2) = watch::spawn(client.clone(), "VirtualMachineInstance", ns, "");
        let (snapshots, t3) = watch::spawn(client.clone(), "VirtualMachineSnapshot", ns, "");
        let (pvcs, t4) = watch::spawn(
            client.clone(),
            "PersistentVolumeClaim",
            ns,
            RESTORE_SOURCE_VM_NAME,
        );
        let (status, t5) = watch::spawn(client, "ConfigMap", ns, &status_selector);
        ClusterCollector {
            cfg,
            vmims,
            vmis,
            snapshots,
            pvcs,
            status,
            tasks: vec![t1, t2, t3, t4, t5],
        }
    }

    fn health(&self) -> [(&KindHealth, usize); 5] {
        [
            (&*self.vmims.health, self.vmims.store.len()),
            (&*self.vmis.health, self.vmis.store.len()),
            (&*self.snapshots.health, self.snapshots.store.len()),
            (&*self.pvcs.health, self.pvcs.store.len()),
            (&*self.status.health, self.status.store.len()),
        ]
    }

    /// A consistent-enough copy of the stores (each store is read atomically; kinds are read one
    /// after the other).
    pub fn state(&self) -> ClusterState {
        ClusterState {
            vmims: self.vmims.store.state(),
            vmis: self.vmis.store.state(),
            snapshots: self.snapshots.store.state(),
            pvcs: self.pvcs.store.state(),
            status: self.status.store.state(),
        }
    }

    /// Renders the whole cluster-mode exposition.
    pub fn render(&self) -> String {
        let start = Instant::now();
        let state = self.state();
        let mut out = Exposition::with_capacity(
            8192 + 256 * (state.vmims.len() + 2 * state.vmis.len() + state.snapshots.len())
                + 1024 * state.status.len(),
        );
        render_state(&mut out, &state, &self.cfg.vmi_labels);
        render_health(&mut out, &self.health());
        crate::render::render_self(&mut out, "cluster", start.elapsed().as_secs_f64());
        out.into_string()
    }

    /// Every kind is synced or known to be absent.
    pub fn ready(&self) -> bool {
        self.health().iter().all(|(h, _)| h.settled())
    }
}

impl crate::http::MetricsSource for ClusterCollector {
    fn render(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send + '_>> {
        let text = ClusterCollector::render(self);
        Box::pin(std::future::ready(text))
    }

    fn ready(&self) -> bool {
        ClusterCollector::ready(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_to_unix_seconds() {
        assert_eq!(unix_seconds("2026-11-22T04:00:00Z"), Some(1_795_320_000.0));
        assert_eq!(
            unix_seconds("2026-11-22T05:00:00.25+01:00"),
            Some(1_795_320_000.25)
        );
        assert_eq!(unix_seconds("yesterday"), None);
    }

    fn cm(ns: &str, name: &str, vm: &str, attempt: i64) -> Arc<ConfigMap> {
        let rec = format!(
            r#"{{"lastAttemptTimestamp":{attempt},"result":"Succeeded","durationSeconds":1.0,"freezeSeconds":0.0,"bytesRead":0,"bytesNew":0,"bytesStored":0}}"#
        );
        Arc::new(ConfigMap {
            metadata: kube::api::ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some([(vm.to_string(), rec)].into_iter().collect()),
            ..Default::default()
        })
    }

    #[test]
    fn duplicate_backup_records_never_make_duplicate_series() {
        let cms = vec![
            cm("prod", "stray", "db", 300),
            cm("prod", STATUS_CONFIGMAP, "db", 100),
            cm("prod", "stray", "web", 50),
            cm("prod", "stray2", "web", 60),
            cm("dev", STATUS_CONFIGMAP, "db", 7),
        ];
        let e = backup_entries(&cms);
        let got: Vec<_> = e
            .iter()
            .map(|(ns, vm, r)| (ns.as_str(), vm.as_str(), r.last_attempt_timestamp))
            .collect();
        assert_eq!(
            got,
            vec![("dev", "db", 7), ("prod", "db", 100), ("prod", "web", 60)]
        );
    }
}
