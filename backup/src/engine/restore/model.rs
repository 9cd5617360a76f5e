//! What a restore is asked to do ([`RestoreRequest`]) and the plan it makes of it ([`Plan`],
//! one [`VolumePlan`] per disk): plain data, built by [`plan()`](super::plan()) without cluster access and
//! then only read.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use virtguard_api::VirtualMachine;

use crate::repo::BackupRef;

/// Label on every object a restore creates: the restore run's id.
pub const RESTORE_ID: &str = "virtguard.io/restore-id";
/// Annotation on restored objects: the backup they came from (`ns/vm/id`).
pub const RESTORED_FROM: &str = "virtguard.io/restored-from";

/// How the restored VM relates to the original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A new VM: new identity (MACs, UUID, fixed IPs), disks renamed with a new VM name.
    Copy,
    /// Replace the VM's disks and spec, keeping its identity.
    InPlace,
}

/// How disk data gets into the new PVCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// DataVolume with an upload source + CDI upload proxy.
    CdiUpload,
    /// A Job running `virtguard restore-volume` that writes the PVC.
    Job,
}

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub target_namespace: Option<String>,
    pub name: Option<String>,
    pub storage_class_map: BTreeMap<String, String>,
    pub mode: Mode,
    pub method: Method,
    pub start: bool,
    /// In place: stop a running VM.
    pub force: bool,
    /// Keep what was created when the restore fails or is interrupted.
    pub keep_partial: bool,
    /// Limit for each wait (DataVolume ready/succeeded, Job, VM stop).
    pub timeout: Duration,
    /// After creating the VM with --start, wait for its VMI to run.
    pub wait: bool,
    /// Chunk fetches in flight.
    pub concurrency: usize,
    /// `--method job`: image of the restore Job.
    pub job_image: String,
    /// `--method job`: env values for the Job's Secret (repository location and credentials).
    pub job_env: Vec<(String, String)>,
    /// Upload proxy URL override (default: `cdiconfigs/config` `status.uploadProxyURL`).
    pub upload_proxy_url: Option<String>,
    /// Extra CA (PEM) trusted for the upload proxy, besides the kubeconfig's CA.
    pub upload_proxy_ca: Option<Vec<u8>>,
}

/// The objects saved with a backup.
#[derive(Debug, Clone)]
pub struct BackupObjects {
    pub vm: Value,
    /// Saved PVC objects by claim name.
    pub pvcs: BTreeMap<String, Value>,
}

/// One disk of the restore.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumePlan {
    /// Volume name in the VM spec and in the repository.
    pub volume: String,
    /// Claim / DataVolume name in the backed-up VM.
    pub old_claim: String,
    /// Claim / DataVolume name the restore creates.
    pub claim: String,
    /// Image size in bytes.
    pub size: u64,
    /// Storage request (the original's when it is at least `size`).
    pub request: String,
    pub storage_class: Option<String>,
    pub volume_mode: Option<String>,
    pub access_modes: Vec<String>,
}

/// Everything a restore will do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub source: BackupRef,
    pub namespace: String,
    pub name: String,
    pub mode: Mode,
    pub method: Method,
    pub restore_id: String,
    /// The VM object to create (or, in place, to replace the spec with).
    pub vm: VirtualMachine,
    pub volumes: Vec<VolumePlan>,
    /// Storage classes the backup's PVCs used (after mapping), for the existence check.
    pub storage_classes: Vec<String>,
    /// Multus network names the VM uses (`ns/name` or `name`).
    pub networks: Vec<String>,
    /// VolumeSnapshotClasses the backup's snapshots used (from the manifest), for the check
    /// that later backups of the restored VM can snapshot it in the target cluster.
    pub snapshot_classes: Vec<String>,
    /// The VolumeGroupSnapshotClass the backup used, if any.
    pub group_snapshot_class: Option<String>,
}
