//! What one VM backup is given: its knobs ([`BackupConfig`]) and the volumes it covers
//! ([`PvcVolume`], read from the VM by [`volumes_of`]).
//!
//! Invariant: a leaf of the engine. It imports no other engine module, so the backup run
//! ([`super::backup`]) and the changed-block path ([`super::cbt`]) both build on it without
//! importing each other's types.

use std::sync::Arc;
use std::time::Duration;

use virtguard_api::VirtualMachine;

use crate::repo;
use crate::repo::throttle::RateLimiter;

/// Timeouts and knobs of a VM backup.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// KubeVirt thaws by itself after this (safety net if we die while the guest is frozen).
    pub unfreeze_timeout: Duration,
    /// Snapshot `creationTime` wait (the guest is frozen meanwhile: keep it short).
    pub snapshot_created_timeout: Duration,
    /// Snapshot `readyToUse` wait.
    pub snapshot_ready_timeout: Duration,
    /// Export `Ready` wait.
    pub export_timeout: Duration,
    /// Export TTL (KubeVirt deletes it after this even if we cannot).
    pub export_ttl: Duration,
    /// Chunks in flight per volume.
    pub concurrency: usize,
    /// `--snapshot-class`: VolumeSnapshotClasses to use for the PVCs of their CSI driver
    /// instead of the driver's default class.
    pub snapshot_classes: Vec<String>,
    /// `--limit-read`: the exports are read at most this fast (all volumes together).
    pub read_limit: Option<Arc<RateLimiter>>,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            unfreeze_timeout: Duration::from_secs(300),
            snapshot_created_timeout: Duration::from_secs(60),
            snapshot_ready_timeout: Duration::from_secs(1800),
            export_timeout: Duration::from_secs(600),
            export_ttl: Duration::from_secs(4 * 3600),
            concurrency: repo::backup::default_concurrency(),
            snapshot_classes: Vec::new(),
            read_limit: None,
        }
    }
}

/// A VM volume to back up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvcVolume {
    /// Volume name in the VM spec (the name in the repository).
    pub volume: String,
    /// Claim name.
    pub pvc: String,
    /// Hotplugged volume.
    pub hotplug: bool,
}

/// Splits a VM's volumes into PVC-backed ones (backed up) and the rest (noted, not backed up).
pub fn volumes_of(vm: &VirtualMachine) -> (Vec<PvcVolume>, Vec<(String, String)>) {
    let mut pvcs = Vec::new();
    let mut skipped = Vec::new();
    let vols = vm
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.spec.as_ref())
        .and_then(|s| s.volumes.as_ref());
    for v in vols.into_iter().flatten() {
        let name = v.name.clone().unwrap_or_default();
        if let Some(p) = &v.persistent_volume_claim {
            pvcs.push(PvcVolume {
                volume: name,
                pvc: p.claim_name.clone().unwrap_or_default(),
                hotplug: p.hotpluggable == Some(true),
            });
        } else if let Some(d) = &v.data_volume {
            pvcs.push(PvcVolume {
                volume: name,
                pvc: d.name.clone().unwrap_or_default(),
                hotplug: d.hotpluggable == Some(true),
            });
        } else {
            let kind = if v.container_disk.is_some() {
                "containerDisk"
            } else if v.cloud_init_no_cloud.is_some() || v.cloud_init_config_drive.is_some() {
                "cloudInit"
            } else if v.ephemeral.is_some() || v.empty_disk.is_some() {
                "ephemeral"
            } else {
                "other"
            };
            skipped.push((name, kind.to_string()));
        }
    }
    (pvcs, skipped)
}
