//! Restore of a VM from a backup into the cluster (ARCHITECTURE.md §6).
//!
//! A restore is planned first, as pure data, and then executed:
//!
//! 1. [`load_objects`] reads the backup's `resources.tar.zst` (checked against the digest in the
//!    manifest): `virtualmachine.json` and `pvc-<claim>.json` per backed-up claim.
//! 2. [`plan`] builds every object the restore will create, as JSON: the VM without `status`,
//!    `uid`, `resourceVersion`, `managedFields`, `creationTimestamp`, `generation`, finalizers
//!    and owner references (the owners' uids belong to the old object; fields we do not model
//!    are kept untouched), one disk per backed-up volume, and the network identity policy:
//!    * **as a copy** (default): interface `macAddress`es are removed (KubeMacPool or KubeVirt
//!      assigns new ones), `firmware.uuid` is replaced by a fresh random UUID, fixed-IP
//!      annotations ([`FIXED_IP_ANNOTATION_PREFIXES`], e.g. Spiderpool's `ipam.spidernet.io/*`)
//!      are dropped from the VM and its template, and claims / DataVolume templates are renamed
//!      consistently when the VM gets a new name (`<old-vm>-root` → `<new-vm>-root`, any other
//!      claim `c` → `<new-vm>-c`);
//!    * **in place**: names, MACs, firmware UUID and annotations are kept.
//!
//!    `runStrategy` is `Halted` unless `--start` (then `Always`); `spec.running` is removed.
//! 3. [`check_target`] refuses what would overwrite something (an existing VM unless in place,
//!    or a PVC or DataVolume of a name the restore creates), a missing target namespace, and
//!    collects warnings: a Multus network (`spec.template.spec.networks[].multus.networkName`)
//!    without its NetworkAttachmentDefinition in the target namespace, a storage class, or a
//!    VolumeSnapshotClass / VolumeGroupSnapshotClass the backup used (manifest labels
//!    `snapshot-classes`, `group-snapshot-class`), that does not exist.
//! 4. [`execute`] creates the disks, fills them, and creates (or, in place, replaces) the VM
//!    **last**, so a failed restore never leaves a half-restored VM that could start. Two data
//!    paths:
//!    * `cdi-upload`: a DataVolume with an `upload` source sized at least as large as the
//!      original, an UploadTokenRequest, and one `POST /v1beta1/upload` to CDI's upload proxy
//!      whose body is the image as a sequence of zstd frames (one per chunk; CDI detects zstd by
//!      its magic bytes; an all-zero 4 MiB chunk costs a few hundred bytes on the wire). A
//!      chunk stored compressed is sent as its stored zstd frame (decrypted and decoded once,
//!      to check it against its id), so only chunks stored raw are compressed again. Every
//!      chunk is verified against its id as it is fetched, and the whole-image digest recorded
//!      at backup time is recomputed on the way: a mismatch aborts the body, so CDI never marks
//!      the upload complete. 5xx answers are retried with backoff; every retry uses a fresh
//!      token (a 401 means the token expired, and a proxy that answers before reading the body
//!      may look like a reset connection).
//!    * `job`: a PVC and a Job running `virtguard restore-volume`, which writes the volume
//!      directly and sparsely from the repository into the PVC (Block mode: `volumeDevices`
//!      at [`JOB_DEVICE_PATH`]; Filesystem mode: `disk.img` under [`JOB_MOUNT_PATH`]). The
//!      repository location and credentials reach the Job through a temporary Secret
//!      (`secretKeyRef` env), never through its command line.
//!
//!    Everything the run creates is recorded in a [`Created`] list; on any failure (and on
//!    Ctrl-C / SIGTERM, see the CLI) it is deleted again unless `--keep-partial`.
//!
//!    **In place never makes things worse**: the disks are restored into *new* claims (the old
//!    name with the restore's suffix, `db-root` → `db-root-r3f9a`, see [`staged_claim_name`];
//!    the suffix of an earlier in-place restore is replaced, not stacked), the VM's spec is
//!    replaced to use them, and only then are the old claims deleted. Until that switch the VM's
//!    old disks are untouched, so a failed or interrupted in-place restore leaves the VM
//!    stopped with the disks it had; after the switch nothing is rolled back. The price is
//!    room for a second copy of the disks during the restore.
//!
//! Objects this module creates carry the label [`RESTORE_ID`] (never `virtguard.io/backup-id`,
//! so `virtguard cleanup` can never select a restored disk).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt};
use indicatif::ProgressBar;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::{Api, Client};
use serde_json::{json, Value};

use crate::cluster::ClusterError;
use crate::repo::format::{chunk_len, Index, Manifest};
use crate::repo::{BackupRef, Repository};

/// Label on every object a restore creates: the restore run's id.
pub const RESTORE_ID: &str = "virtguard.io/restore-id";
/// Annotation on restored objects: the backup they came from (`ns/vm/id`).
pub const RESTORED_FROM: &str = "virtguard.io/restored-from";
/// Where a restore Job sees a Block-mode target PVC.
pub const JOB_DEVICE_PATH: &str = "/dev/virtguard-target";
/// Where a restore Job mounts a Filesystem-mode target PVC (the image is `disk.img` in it).
pub const JOB_MOUNT_PATH: &str = "/virtguard-target";
/// Annotation prefixes (and exact keys) that pin an IP address; dropped when restoring a copy.
pub const FIXED_IP_ANNOTATION_PREFIXES: &[&str] = &[
    "ipam.spidernet.io/",
    "cni.projectcalico.org/ipAddrs",
    "cni.projectcalico.org/ipAddrsNoIpam",
    "ovn.kubernetes.io/ip_address",
    "ovn.kubernetes.io/mac_address",
    "k8s.v1.cni.cncf.io/static-ip",
];
/// zstd level of the upload stream: fast, the network is rarely slower than level 1.
const UPLOAD_ZSTD_LEVEL: i32 = 1;
/// Attempts of one volume's upload (5xx and 401 are retried).
const UPLOAD_ATTEMPTS: u32 = 5;

/// Errors of a restore. Each names the object and what to do next.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The target name is taken.
    #[error("{kind} {object} already exists: pass --in-place to replace the VM's disks and spec (the VM must be stopped), or --name NEW (and/or --target-namespace) to restore a copy beside it")]
    Exists { kind: &'static str, object: String },
    /// The target namespace does not exist.
    #[error("target namespace `{0}` does not exist: create it (kubectl create namespace {0}) or pass another --target-namespace")]
    NoNamespace(String),
    /// In place on a running VM without --force.
    #[error("VM {ns}/{name} is running: stop it first (virtctl stop {name} -n {ns}), or pass --force to let virtguard stop it")]
    Running { ns: String, name: String },
    /// The backup has no VM object (e.g. made with `backup-file` without resources).
    #[error("backup {backup} holds no VirtualMachine object (virtualmachine.json): restore its disks with `virtguard download` or `virtguard restore-file` instead")]
    NoVmObject { backup: String },
    /// The saved objects or the flags do not allow a restore.
    #[error("{0}")]
    Invalid(String),
    /// A data upload failed.
    #[error("uploading volume `{volume}` into PVC {pvc} failed: {message}")]
    Upload {
        volume: String,
        pvc: String,
        message: String,
    },
    /// A restore Job failed.
    #[error("restore Job {ns}/{job} for volume `{volume}` failed: {message}; see `kubectl logs -n {ns} job/{job}`")]
    Job {
        ns: String,
        job: String,
        volume: String,
        message: String,
    },
    /// A wait ran out of time.
    #[error("timed out after {waited:?} waiting for {what}; raise --timeout if the cluster is just slow")]
    Timeout { what: String, waited: Duration },
    /// A cluster call failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Stopped by a signal; what the run had created was deleted unless --keep-partial.
    #[error("interrupted by {signal}: {what}")]
    Interrupted { signal: &'static str, what: String },
    /// The repository failed (corrupt chunk, wrong key, ...).
    #[error("reading the backup: {0}")]
    Repo(Box<crate::Error>),
}

impl RestoreError {
    /// A refusal caused by how the command was asked (name clash, missing namespace, running VM
    /// without --force, contradictory options): exit status 2, like other usage errors.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            RestoreError::Exists { .. }
                | RestoreError::NoNamespace(_)
                | RestoreError::Running { .. }
                | RestoreError::Invalid(_)
        )
    }
}

impl From<crate::Error> for RestoreError {
    fn from(e: crate::Error) -> Self {
        RestoreError::Repo(Box::new(e))
    }
}

type Result<T, E = RestoreError> = std::result::Result<T, E>;

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
    pub vm: Value,
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

/// Reads `virtualmachine.json` and the `pvc-*.json` files of a backup.
pub async fn load_objects(repo: &Repository, m: &Manifest) -> Result<BackupObjects> {
    let backup = format!("{}/{}/{}", m.namespace, m.vm, m.id);
    let Some(entry) = &m.resources else {
        return Err(RestoreError::NoVmObject { backup });
    };
    let key = format!("{}resources.tar.zst", m.prefix());
    let (raw, digest) = repo.get_object(&key).await?;
    if digest != entry.object_digest {
        return Err(crate::Error::corrupt(
            key,
            "resources do not match the digest in the manifest",
        )
        .into());
    }
    let files = crate::repo::backup::parse_resources(&key, &raw)?;
    let mut vm = None;
    let mut pvcs = BTreeMap::new();
    for (name, data) in files {
        let parse = |d: &[u8]| {
            serde_json::from_slice::<Value>(d).map_err(|e| {
                crate::Error::corrupt(format!("{key}:{name}"), format!("not JSON: {e}"))
            })
        };
        if name == "virtualmachine.json" {
            vm = Some(parse(&data)?);
        } else if let Some(claim) = name
            .strip_prefix("pvc-")
            .and_then(|n| n.strip_suffix(".json"))
        {
            pvcs.insert(claim.to_string(), parse(&data)?);
        }
    }
    let vm = vm.ok_or(RestoreError::NoVmObject { backup })?;
    Ok(BackupObjects { vm, pvcs })
}

/// A random RFC 4122 version 4 UUID.
fn new_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Parses a Kubernetes quantity in bytes (`6Mi`, `10Gi`, `1G`, `1048576`); None if unusual.
pub fn parse_quantity(q: &str) -> Option<u64> {
    let q = q.trim();
    let units: [(&str, u64); 10] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
    ];
    for (suf, mult) in units {
        if let Some(n) = q.strip_suffix(suf) {
            return n.parse::<u64>().ok()?.checked_mul(mult);
        }
    }
    q.parse::<u64>().ok()
}

fn is_fixed_ip_annotation(key: &str) -> bool {
    FIXED_IP_ANNOTATION_PREFIXES.iter().any(|p| {
        if p.ends_with('/') {
            key.starts_with(p)
        } else {
            key == *p
        }
    })
}

fn drop_fixed_ip_annotations(meta: Option<&mut Value>) {
    if let Some(Value::Object(a)) = meta.and_then(|m| m.get_mut("annotations")) {
        a.retain(|k, _| !is_fixed_ip_annotation(k));
    }
}

/// Removes what belongs to the old object's life, keeps everything else.
fn clean_metadata(meta: &mut Value, ns: &str, name: &str) {
    if let Value::Object(m) = meta {
        for k in [
            "uid",
            "resourceVersion",
            "managedFields",
            "creationTimestamp",
            "generation",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "finalizers",
            "ownerReferences",
            "generateName",
        ] {
            m.remove(k);
        }
        m.insert("name".into(), json!(name));
        m.insert("namespace".into(), json!(ns));
    }
}

/// The claim name a copy gets.
fn copy_claim_name(old_claim: &str, old_vm: &str, new_vm: &str) -> String {
    if old_vm == new_vm {
        return old_claim.to_string();
    }
    match old_claim.strip_prefix(old_vm) {
        Some(rest) if rest.is_empty() || rest.starts_with('-') => format!("{new_vm}{rest}"),
        _ => format!("{new_vm}-{old_claim}"),
    }
}

/// The claim name an in-place restore writes into: the old name with the restore's suffix
/// `-r<4 hex>` (a suffix of an earlier in-place restore is replaced, not stacked). The old claim
/// stays untouched until the VM has been switched to the new one, so a failed restore never
/// costs the VM its disks.
fn staged_claim_name(old_claim: &str, restore_id: &str) -> String {
    let tag: String = restore_id
        .rsplit('-')
        .next()
        .unwrap_or(restore_id)
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase();
    let tag = &tag[tag.len().saturating_sub(4)..];
    let mut base = old_claim;
    if let Some((b, t)) = old_claim.rsplit_once("-r") {
        if t.len() == 4 && t.bytes().all(|c| c.is_ascii_hexdigit()) && !b.is_empty() {
            base = b;
        }
    }
    // CDI names pods after the DataVolume (`cdi-upload-<name>`): stay within a DNS label.
    let max = 63 - "cdi-upload-".len() - 2 - tag.len();
    let cut = base.char_indices().nth(max).map_or(base.len(), |(i, _)| i);
    let base = base[..cut].trim_end_matches(['-', '.']);
    format!("{base}-r{tag}")
}

/// Builds the plan (pure: no cluster access).
pub fn plan(
    m: &Manifest,
    objs: &BackupObjects,
    req: &RestoreRequest,
    restore_id: &str,
) -> Result<Plan> {
    let namespace = req
        .target_namespace
        .clone()
        .unwrap_or_else(|| m.namespace.clone());
    let name = req.name.clone().unwrap_or_else(|| m.vm.clone());
    crate::repo::format::check_name("namespace", &namespace)?;
    crate::repo::format::check_name("VM name", &name)?;
    let source = BackupRef {
        namespace: m.namespace.clone(),
        vm: m.vm.clone(),
        id: m.id.clone(),
    };
    let mut vm = objs.vm.clone();
    if !vm.is_object() {
        return Err(RestoreError::Invalid(format!(
            "backup {source}: virtualmachine.json is not an object"
        )));
    }
    if let Value::Object(o) = &mut vm {
        o.remove("status");
    }
    let old_vm = m.vm.clone();
    clean_metadata(&mut vm["metadata"], &namespace, &name);
    vm["metadata"]["annotations"][RESTORED_FROM] = json!(source.to_string());
    vm["metadata"]["labels"][RESTORE_ID] = json!(restore_id);

    // The claims behind the backed-up volumes.
    let tvols = vm
        .pointer("/spec/template/spec/volumes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut volumes = Vec::new();
    for ve in &m.volumes {
        let v = tvols
            .iter()
            .find(|v| v.get("name").and_then(Value::as_str) == Some(ve.name.as_str()))
            .ok_or_else(|| {
                RestoreError::Invalid(format!(
                    "backup {source}: volume `{}` is not in the saved VM's spec.template.spec.volumes",
                    ve.name
                ))
            })?;
        let old_claim = v
            .pointer("/persistentVolumeClaim/claimName")
            .or_else(|| v.pointer("/dataVolume/name"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                RestoreError::Invalid(format!(
                    "backup {source}: volume `{}` is neither a PVC nor a DataVolume in the saved VM",
                    ve.name
                ))
            })?
            .to_string();
        let claim = match req.mode {
            Mode::Copy => copy_claim_name(&old_claim, &old_vm, &name),
            Mode::InPlace => staged_claim_name(&old_claim, restore_id),
        };
        crate::repo::format::check_name("claim name", &claim)?;
        let pvc = objs.pvcs.get(&old_claim);
        let spec = pvc.and_then(|p| p.get("spec"));
        let orig_request = spec
            .and_then(|s| s.pointer("/resources/requests/storage"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let request = match &orig_request {
            Some(q) if parse_quantity(q).is_some_and(|b| b >= ve.size) => q.clone(),
            _ => ve.size.to_string(),
        };
        let storage_class = spec
            .and_then(|s| s.get("storageClassName"))
            .and_then(Value::as_str)
            .map(|sc| {
                req.storage_class_map
                    .get(sc)
                    .cloned()
                    .unwrap_or_else(|| sc.to_string())
            });
        let volume_mode = spec
            .and_then(|s| s.get("volumeMode"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let access_modes = spec
            .and_then(|s| s.get("accessModes"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_else(|| vec!["ReadWriteOnce".to_string()]);
        volumes.push(VolumePlan {
            volume: ve.name.clone(),
            old_claim,
            claim,
            size: ve.size,
            request,
            storage_class,
            volume_mode,
            access_modes,
        });
    }

    // Volumes and DataVolume templates point at the new claims.
    let renames: BTreeMap<String, String> = volumes
        .iter()
        .map(|v| (v.old_claim.clone(), v.claim.clone()))
        .collect();
    if let Some(Value::Array(vs)) = vm.pointer_mut("/spec/template/spec/volumes") {
        for v in vs.iter_mut() {
            for ptr in ["/persistentVolumeClaim/claimName", "/dataVolume/name"] {
                if let Some(slot) = v.pointer_mut(ptr) {
                    if let Some(new) = slot.as_str().and_then(|s| renames.get(s)) {
                        *slot = json!(new);
                    }
                }
            }
            // With the job method the disk is a plain PVC, not a DataVolume.
            if req.method == Method::Job {
                if let Some(dv) = v.get("dataVolume").cloned() {
                    if let Value::Object(o) = v {
                        o.remove("dataVolume");
                        let mut pvc =
                            json!({"claimName": dv.get("name").cloned().unwrap_or(Value::Null)});
                        if let Some(h) = dv.get("hotpluggable") {
                            pvc["hotpluggable"] = h.clone();
                        }
                        o.insert("persistentVolumeClaim".into(), pvc);
                    }
                }
            }
        }
    }
    if let Some(Value::Array(templates)) = vm.pointer_mut("/spec/dataVolumeTemplates") {
        let restored: Vec<&VolumePlan> = volumes.iter().collect();
        templates.retain_mut(|t| {
            let tname = t
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            match restored.iter().find(|v| v.old_claim == tname) {
                // Job method: the PVC is ours, KubeVirt must not create a DataVolume for it.
                Some(_) if req.method == Method::Job => false,
                Some(v) => {
                    // The DataVolume exists before the VM; the template matches it exactly.
                    t["metadata"] = json!({"name": v.claim});
                    t["spec"] = datavolume_spec(v);
                    true
                }
                None => true,
            }
        });
    }

    // runStrategy.
    if let Some(Value::Object(spec)) = vm.get_mut("spec") {
        spec.remove("running");
        spec.insert(
            "runStrategy".into(),
            json!(if req.start { "Always" } else { "Halted" }),
        );
    }

    // Network identity.
    if req.mode == Mode::Copy {
        if let Some(Value::Array(ifaces)) =
            vm.pointer_mut("/spec/template/spec/domain/devices/interfaces")
        {
            for i in ifaces.iter_mut() {
                if let Value::Object(o) = i {
                    o.remove("macAddress");
                }
            }
        }
        if let Some(uuid) = vm.pointer_mut("/spec/template/spec/domain/firmware/uuid") {
            *uuid = json!(new_uuid());
        }
        drop_fixed_ip_annotations(vm.get_mut("metadata"));
        drop_fixed_ip_annotations(vm.pointer_mut("/spec/template/metadata"));
        if let Some(d) = vm.pointer_mut("/spec/template/metadata/labels/kubevirt.io~1domain") {
            if d.as_str() == Some(old_vm.as_str()) {
                *d = json!(name);
            }
        }
    }

    let networks = vm
        .pointer("/spec/template/spec/networks")
        .and_then(Value::as_array)
        .map(|ns| {
            ns.iter()
                .filter_map(|n| n.pointer("/multus/networkName").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mut storage_classes: Vec<String> = volumes
        .iter()
        .filter_map(|v| v.storage_class.clone())
        .collect();
    storage_classes.sort();
    storage_classes.dedup();
    let snapshot_classes = m
        .labels
        .get(super::backup::SNAPSHOT_CLASSES_LABEL)
        .map(|l| {
            l.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let group_snapshot_class = m
        .labels
        .get(super::backup::GROUP_SNAPSHOT_CLASS_LABEL)
        .filter(|c| !c.is_empty())
        .cloned();
    Ok(Plan {
        source,
        namespace,
        name,
        mode: req.mode,
        method: req.method,
        restore_id: restore_id.to_string(),
        vm,
        volumes,
        storage_classes,
        networks,
        snapshot_classes,
        group_snapshot_class,
    })
}

fn storage_spec(v: &VolumePlan) -> Value {
    let mut s = json!({
        "accessModes": v.access_modes,
        "resources": {"requests": {"storage": v.request}},
    });
    if let Some(sc) = &v.storage_class {
        s["storageClassName"] = json!(sc);
    }
    if let Some(m) = &v.volume_mode {
        s["volumeMode"] = json!(m);
    }
    s
}

fn datavolume_spec(v: &VolumePlan) -> Value {
    json!({"source": {"upload": {}}, "storage": storage_spec(v)})
}

fn restore_meta(plan: &Plan, name: &str) -> Value {
    json!({
        "name": name,
        "namespace": plan.namespace,
        "labels": {RESTORE_ID: plan.restore_id},
        "annotations": {RESTORED_FROM: plan.source.to_string()},
    })
}

/// The DataVolume of a volume (cdi-upload).
pub fn datavolume_object(plan: &Plan, v: &VolumePlan) -> Value {
    json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": restore_meta(plan, &v.claim),
        "spec": datavolume_spec(v),
    })
}

/// The PVC of a volume (job method).
pub fn pvc_object(plan: &Plan, v: &VolumePlan) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": restore_meta(plan, &v.claim),
        "spec": storage_spec(v),
    })
}

fn job_name(plan: &Plan, v: &VolumePlan) -> String {
    crate::cluster::object_name(&plan.restore_id, &format!("restore-{}", v.volume))
}

fn secret_name(plan: &Plan) -> String {
    crate::cluster::object_name(&plan.restore_id, "restore-repo")
}

/// The restore Job of a volume (job method). Repository settings come from the Secret.
pub fn job_object(plan: &Plan, v: &VolumePlan, image: &str, env_keys: &[String]) -> Value {
    let block = v.volume_mode.as_deref() == Some("Block");
    let target = if block {
        vec!["--device".to_string(), JOB_DEVICE_PATH.to_string()]
    } else {
        vec!["--file".to_string(), format!("{JOB_MOUNT_PATH}/disk.img")]
    };
    let mut args = vec![
        "restore-volume".to_string(),
        "--backup".to_string(),
        plan.source.to_string(),
        "--volume".to_string(),
        v.volume.clone(),
    ];
    args.extend(target);
    let secret = secret_name(plan);
    let env: Vec<Value> = env_keys
        .iter()
        .map(|k| json!({"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": k, "optional": true}}}))
        .collect();
    let mut container = json!({
        "name": "restore",
        "image": image,
        "command": ["virtguard"],
        "args": args,
        "env": env,
    });
    if block {
        container["volumeDevices"] = json!([{"name": "target", "devicePath": JOB_DEVICE_PATH}]);
    } else {
        container["volumeMounts"] = json!([{"name": "target", "mountPath": JOB_MOUNT_PATH}]);
    }
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": restore_meta(plan, &job_name(plan, v)),
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {RESTORE_ID: plan.restore_id}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [container],
                    "volumes": [{"name": "target", "persistentVolumeClaim": {"claimName": v.claim}}],
                }
            }
        }
    })
}

/// The Secret with the repository settings for restore Jobs (values are never printed).
pub fn secret_object(plan: &Plan, env: &[(String, String)], redact: bool) -> Value {
    let data: serde_json::Map<String, Value> = env
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                json!(if redact { "<redacted>" } else { v.as_str() }),
            )
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": restore_meta(plan, &secret_name(plan)),
        "type": "Opaque",
        "stringData": data,
    })
}

/// Every object the restore would create or change, in order (for `--dry-run`).
pub fn objects_to_create(plan: &Plan, req: &RestoreRequest) -> Vec<Value> {
    let mut out = Vec::new();
    match plan.method {
        Method::CdiUpload => {
            for v in &plan.volumes {
                out.push(datavolume_object(plan, v));
                out.push(json!({
                    "apiVersion": "upload.cdi.kubevirt.io/v1beta1",
                    "kind": "UploadTokenRequest",
                    "metadata": {"name": v.claim, "namespace": plan.namespace},
                    "spec": {"pvcName": v.claim},
                }));
            }
        }
        Method::Job => {
            let keys: Vec<String> = req.job_env.iter().map(|(k, _)| k.clone()).collect();
            out.push(secret_object(plan, &req.job_env, true));
            for v in &plan.volumes {
                out.push(pvc_object(plan, v));
                out.push(job_object(plan, v, &req.job_image, &keys));
            }
        }
    }
    out.push(plan.vm.clone());
    out
}

// ---------------------------------------------------------------------------------------------
// Cluster side.

fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn vm_ar() -> ApiResource {
    ar("kubevirt.io", "v1", "VirtualMachine", "virtualmachines")
}
fn vmi_ar() -> ApiResource {
    ar(
        "kubevirt.io",
        "v1",
        "VirtualMachineInstance",
        "virtualmachineinstances",
    )
}
fn dv_ar() -> ApiResource {
    ar("cdi.kubevirt.io", "v1beta1", "DataVolume", "datavolumes")
}
fn pvc_ar() -> ApiResource {
    ar("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims")
}

/// What `kind` (for messages) and which API an object lives in.
fn api_of(client: &Client, ns: &str, kind: &str) -> Option<(Api<DynamicObject>, &'static str)> {
    let (r, k) = match kind {
        "VirtualMachine" => (vm_ar(), "VirtualMachine"),
        "DataVolume" => (dv_ar(), "DataVolume"),
        "PersistentVolumeClaim" => (pvc_ar(), "PersistentVolumeClaim"),
        "Job" => (ar("batch", "v1", "Job", "jobs"), "Job"),
        "Secret" => (ar("", "v1", "Secret", "secrets"), "Secret"),
        _ => return None,
    };
    Some((Api::namespaced_with(client.clone(), ns, &r), k))
}

async fn get_opt(
    client: &Client,
    ns: &str,
    r: &ApiResource,
    kind: &'static str,
    name: &str,
) -> Result<Option<Value>> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, r);
    let o = api.get_opt(name).await.map_err(ClusterError::api(
        "reading",
        kind,
        format!("{ns}/{name}"),
    ))?;
    Ok(o.and_then(|o| serde_json::to_value(o).ok()))
}

/// Objects created by a restore run (deleted again on failure / interruption).
#[derive(Debug, Default, Clone)]
pub struct Created(Arc<Mutex<CreatedInner>>);

#[derive(Debug, Default)]
struct CreatedInner {
    items: Vec<(String, String, String)>,
    /// Set once the VM uses what was created: nothing may be rolled back any more.
    committed: bool,
}

impl Created {
    fn push(&self, kind: &str, ns: &str, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .items
            .push((kind.to_string(), ns.to_string(), name.to_string()));
    }

    /// The VM now uses the created disks: forget them, so neither a later failure nor an
    /// interruption deletes a disk the VM needs.
    fn commit(&self) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.items.clear();
        g.committed = true;
    }

    /// Whether the VM was already switched to the restored disks.
    pub fn committed(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).committed
    }

    /// The recorded objects as `Kind ns/name`.
    pub fn list(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .items
            .iter()
            .map(|(k, ns, n)| format!("{k} {ns}/{n}"))
            .collect()
    }

    /// Deletes every recorded object, newest first. Returns what was deleted; failures are
    /// reported as warnings (the objects carry the restore-id label for manual cleanup).
    pub async fn rollback(&self, client: &Client) -> Vec<String> {
        let items: Vec<_> = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .items
            .drain(..)
            .rev()
            .collect();
        let mut deleted = Vec::new();
        let dp = DeleteParams::background();
        for (kind, ns, name) in items {
            if let Some((api, k)) = api_of(client, &ns, &kind) {
                match api.delete(&name, &dp).await {
                    Ok(_) => deleted.push(format!("{k} {ns}/{name}")),
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => {
                        tracing::warn!(object = %format!("{k} {ns}/{name}"), error = %e, "could not delete")
                    }
                }
            }
        }
        deleted
    }
}

/// Checks the target; returns warnings. Refuses clashes unless in place.
pub async fn check_target(client: &Client, plan: &Plan) -> Result<Vec<String>> {
    let ns = &plan.namespace;
    let nsapi: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    if nsapi
        .get_opt(ns)
        .await
        .map_err(ClusterError::api("reading", "Namespace", ns.clone()))?
        .is_none()
    {
        return Err(RestoreError::NoNamespace(ns.clone()));
    }
    if plan.mode == Mode::Copy
        && get_opt(client, ns, &vm_ar(), "VirtualMachine", &plan.name)
            .await?
            .is_some()
    {
        return Err(RestoreError::Exists {
            kind: "VirtualMachine",
            object: format!("{ns}/{}", plan.name),
        });
    }
    // Copy or in place, the restore only writes claims of new names (in place: staged names).
    for v in &plan.volumes {
        for (kind, r) in [("PersistentVolumeClaim", pvc_ar()), ("DataVolume", dv_ar())] {
            if get_opt(client, ns, &r, kind, &v.claim).await?.is_none() {
                continue;
            }
            return Err(match plan.mode {
                Mode::Copy => RestoreError::Exists {
                    kind,
                    object: format!("{ns}/{}", v.claim),
                },
                Mode::InPlace => RestoreError::Invalid(format!(
                    "{kind} {ns}/{} exists already (left by an earlier in-place restore run with --keep-partial?): run the restore again (each run picks a new claim suffix), or delete it if the VM does not use it",
                    v.claim
                )),
            });
        }
    }
    let mut warnings = Vec::new();
    let nad = ar(
        "k8s.cni.cncf.io",
        "v1",
        "NetworkAttachmentDefinition",
        "network-attachment-definitions",
    );
    for n in &plan.networks {
        let (nns, nname) = n.split_once('/').unwrap_or((ns.as_str(), n.as_str()));
        let found = get_opt(client, nns, &nad, "NetworkAttachmentDefinition", nname).await;
        match found {
            Ok(Some(_)) => {}
            Ok(None) => warnings.push(format!(
                "the VM uses Multus network `{n}` but NetworkAttachmentDefinition {nns}/{nname} does not exist: create it before starting the VM"
            )),
            Err(e) => warnings.push(format!("could not check NetworkAttachmentDefinition {nns}/{nname}: {e}")),
        }
    }
    let scapi: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(client.clone());
    for sc in &plan.storage_classes {
        match scapi.get_opt(sc).await {
            Ok(Some(_)) => {}
            Ok(None) => warnings.push(format!(
                "storage class `{sc}` does not exist in the target cluster: the disks will stay Pending; map it with --storage-class-map {sc}=OTHER"
            )),
            Err(e) => warnings.push(format!("could not check storage class `{sc}`: {e}")),
        }
    }
    // The snapshot classes the backup used: without them, the next backup of the restored VM
    // cannot snapshot its disks in this cluster.
    let vsc = ar(
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshotClass",
        "volumesnapshotclasses",
    );
    let vgsc = ar(
        "groupsnapshot.storage.k8s.io",
        "v1beta2",
        "VolumeGroupSnapshotClass",
        "volumegroupsnapshotclasses",
    );
    let wanted = plan
        .snapshot_classes
        .iter()
        .map(|c| (c, &vsc, "VolumeSnapshotClass"))
        .chain(
            plan.group_snapshot_class
                .iter()
                .map(|c| (c, &vgsc, "VolumeGroupSnapshotClass")),
        );
    for (class, r, kind) in wanted {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), r);
        match api.get_opt(class).await {
            Ok(Some(_)) => {}
            // get_opt also answers None when the kind is not served at all (no CRD).
            Ok(None) if kind == "VolumeGroupSnapshotClass" => warnings.push(format!(
                "the backup cut the disks with {kind} `{class}`, which the target cluster does not have (or it does not serve group snapshots): backups of the restored VM will take one VolumeSnapshot per disk, not one group"
            )),
            Ok(None) => warnings.push(format!(
                "the backup's disks were snapshotted with {kind} `{class}`, which does not exist in the target cluster: backups of the restored VM fail until a {kind} exists for its storage's CSI driver"
            )),
            Err(e) => warnings.push(format!("could not check {kind} `{class}`: {e}")),
        }
    }
    Ok(warnings)
}

/// Per-volume outcome.
#[derive(Debug, Clone, Default)]
pub struct VolumeReport {
    pub volume: String,
    pub claim: String,
    pub size: u64,
    /// Bytes sent to the upload proxy (compressed), 0 for the job method.
    pub wire_bytes: u64,
    pub zero_chunks: u64,
    pub chunks: u64,
    pub attempts: u32,
    pub seconds: f64,
}

/// Outcome of a restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreReport {
    pub vm: String,
    pub volumes: Vec<VolumeReport>,
    /// In place: the old disks (`ns/claim`) that were deleted after the VM was switched over.
    pub replaced: Vec<String>,
    pub seconds: f64,
}

/// Progress reporting of a run (bars on a terminal, plain lines otherwise, or nothing).
pub trait Progress: Send + Sync {
    /// A bar for a volume of `size` bytes, or None.
    fn volume(&self, volume: &str, size: u64) -> Option<ProgressBar>;
    /// A plain status line.
    fn line(&self, msg: &str);
}

/// No progress output.
#[derive(Debug)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn volume(&self, _: &str, _: u64) -> Option<ProgressBar> {
        None
    }
    fn line(&self, _: &str) {}
}

/// Inputs of [`execute`] besides the plan.
pub struct Context<'a> {
    pub client: &'a Client,
    pub repo: Arc<Repository>,
    pub manifest: &'a Manifest,
    /// CA certificates (DER) of the kubeconfig, trusted for the upload proxy.
    pub kube_ca: Vec<Vec<u8>>,
    pub created: Created,
    pub progress: &'a dyn Progress,
}

async fn poll<T, F, Fut>(what: String, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(RestoreError::Timeout {
                what,
                waited: start.elapsed(),
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

async fn create(ctx: &Context<'_>, ns: &str, kind: &str, obj: &Value) -> Result<()> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let (api, k) = api_of(ctx.client, ns, kind)
        .ok_or_else(|| RestoreError::Invalid(format!("unknown kind {kind}")))?;
    let d: DynamicObject = serde_json::from_value(obj.clone())
        .map_err(|e| RestoreError::Invalid(format!("building {k} {ns}/{name}: {e}")))?;
    api.create(&PostParams::default(), &d)
        .await
        .map_err(ClusterError::api("creating", k, format!("{ns}/{name}")))?;
    ctx.created.push(kind, ns, &name);
    Ok(())
}

async fn delete_and_wait(
    ctx: &Context<'_>,
    ns: &str,
    kind: &str,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    let (api, k) = api_of(ctx.client, ns, kind)
        .ok_or_else(|| RestoreError::Invalid(format!("unknown kind {kind}")))?;
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(ClusterError::api("deleting", k, format!("{ns}/{name}"))(e).into()),
    }
    poll(format!("{k} {ns}/{name} to be deleted"), timeout, || {
        let api = api.clone();
        async move {
            match api.get_opt(name).await {
                Ok(None) => Ok(Some(())),
                Ok(Some(_)) => Ok(None),
                Err(e) => Err(ClusterError::api("reading", k, format!("{ns}/{name}"))(e).into()),
            }
        }
    })
    .await
}

/// Runs the plan. On error, everything recorded in `ctx.created` is deleted unless
/// `req.keep_partial` (the caller handles interruption).
pub async fn execute(
    ctx: &Context<'_>,
    plan: &Plan,
    req: &RestoreRequest,
) -> Result<RestoreReport> {
    let res = execute_inner(ctx, plan, req).await;
    if res.is_err() && !req.keep_partial {
        for d in ctx.created.rollback(ctx.client).await {
            ctx.progress.line(&format!("deleted {d}"));
        }
    }
    res
}

async fn execute_inner(
    ctx: &Context<'_>,
    plan: &Plan,
    req: &RestoreRequest,
) -> Result<RestoreReport> {
    let t0 = Instant::now();
    let ns = plan.namespace.as_str();
    let mut live_vm = None;
    let mut replaced = Vec::new();
    if plan.mode == Mode::InPlace {
        live_vm = get_opt(ctx.client, ns, &vm_ar(), "VirtualMachine", &plan.name).await?;
        stop_for_in_place(ctx, plan, req, live_vm.is_some()).await?;
        // The old disks stay as they are until the VM has been switched to the new ones.
        replaced = replaced_claims(ctx, plan, live_vm.as_ref()).await?;
    }
    let mut volumes = Vec::new();
    match plan.method {
        Method::CdiUpload => {
            for v in &plan.volumes {
                volumes.push(upload_volume(ctx, plan, v, req).await?);
            }
        }
        Method::Job => {
            let keys: Vec<String> = req.job_env.iter().map(|(k, _)| k.clone()).collect();
            create(ctx, ns, "Secret", &secret_object(plan, &req.job_env, false)).await?;
            for v in &plan.volumes {
                create(ctx, ns, "PersistentVolumeClaim", &pvc_object(plan, v)).await?;
            }
            // All Jobs run at once; then wait for each.
            for v in &plan.volumes {
                create(ctx, ns, "Job", &job_object(plan, v, &req.job_image, &keys)).await?;
                ctx.progress.line(&format!(
                    "volume {}: restore Job {ns}/{} started",
                    v.volume,
                    job_name(plan, v)
                ));
            }
            for v in &plan.volumes {
                let t = Instant::now();
                wait_job(ctx, plan, v, req.timeout).await?;
                ctx.progress.line(&format!(
                    "volume {}: written by Job {ns}/{}",
                    v.volume,
                    job_name(plan, v)
                ));
                volumes.push(VolumeReport {
                    volume: v.volume.clone(),
                    claim: v.claim.clone(),
                    size: v.size,
                    attempts: 1,
                    seconds: t.elapsed().as_secs_f64(),
                    ..Default::default()
                });
            }
            // The Jobs and the Secret are done; the PVCs stay.
            let job_api = api_of(ctx.client, ns, "Job").map(|(a, _)| a);
            if let Some(api) = job_api {
                for v in &plan.volumes {
                    let _ = api
                        .delete(&job_name(plan, v), &DeleteParams::background())
                        .await;
                }
            }
            if let Some((api, _)) = api_of(ctx.client, ns, "Secret") {
                let _ = api
                    .delete(&secret_name(plan), &DeleteParams::background())
                    .await;
            }
        }
    }
    // The VM last.
    let vmapi: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &vm_ar());
    if live_vm.is_some() {
        // Re-read: stopping it changed its resourceVersion.
        live_vm = get_opt(ctx.client, ns, &vm_ar(), "VirtualMachine", &plan.name).await?;
    }
    match (plan.mode, live_vm) {
        (Mode::InPlace, Some(live)) => {
            let mut obj = plan.vm.clone();
            // Keep the live object's identity and owners.
            for k in [
                "uid",
                "resourceVersion",
                "ownerReferences",
                "finalizers",
                "creationTimestamp",
            ] {
                if let Some(v) = live.pointer(&format!("/metadata/{k}")) {
                    obj["metadata"][k] = v.clone();
                }
            }
            let d: DynamicObject = serde_json::from_value(obj).map_err(|e| {
                RestoreError::Invalid(format!("building VirtualMachine {ns}/{}: {e}", plan.name))
            })?;
            vmapi
                .replace(&plan.name, &PostParams::default(), &d)
                .await
                .map_err(ClusterError::api(
                    "replacing",
                    "VirtualMachine",
                    format!("{ns}/{}", plan.name),
                ))?;
        }
        _ => create(ctx, ns, "VirtualMachine", &plan.vm).await?,
    }
    let mut replaced_deleted = Vec::new();
    if plan.mode == Mode::InPlace {
        // The VM now refers to the restored disks: they must survive whatever happens next.
        ctx.created.commit();
        for claim in &replaced {
            ctx.progress.line(&format!(
                "in place: deleting the replaced disk {ns}/{claim} (the VM now uses the restored one)"
            ));
            let deleted = async {
                delete_and_wait(ctx, ns, "DataVolume", claim, req.timeout).await?;
                delete_and_wait(ctx, ns, "PersistentVolumeClaim", claim, req.timeout).await
            }
            .await;
            match deleted {
                Ok(()) => replaced_deleted.push(format!("{ns}/{claim}")),
                Err(e) => ctx.progress.line(&format!(
                    "warning: the restore is complete, but the replaced disk {ns}/{claim} could not be deleted ({e}): delete it with `kubectl delete pvc -n {ns} {claim}` once you no longer need it"
                )),
            }
        }
    }
    ctx.progress.line(&format!(
        "VirtualMachine {ns}/{} {} (runStrategy {})",
        plan.name,
        if plan.mode == Mode::InPlace {
            "replaced"
        } else {
            "created"
        },
        if req.start { "Always" } else { "Halted" }
    ));
    if req.start && req.wait {
        let vmi: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &vmi_ar());
        let name = plan.name.clone();
        poll(
            format!("VMI {ns}/{name} to be Running"),
            req.timeout,
            || {
                let vmi = vmi.clone();
                let name = name.clone();
                async move {
                    let o = vmi.get_opt(&name).await.map_err(ClusterError::api(
                        "reading",
                        "VirtualMachineInstance",
                        name.clone(),
                    ))?;
                    let running = o
                        .and_then(|o| serde_json::to_value(o).ok())
                        .and_then(|v| {
                            v.pointer("/status/phase")
                                .and_then(Value::as_str)
                                .map(|p| p == "Running")
                        })
                        .unwrap_or(false);
                    Ok(running.then_some(()))
                }
            },
        )
        .await?;
    }
    Ok(RestoreReport {
        vm: format!("{ns}/{}", plan.name),
        volumes,
        replaced: replaced_deleted,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// In place: the claims the restored volumes replace — what the live VM uses for each volume,
/// or (no live VM) the backed-up claim name — when such a PVC or DataVolume exists and is not
/// the new claim itself. They are deleted only after the VM uses the restored disks.
async fn replaced_claims(
    ctx: &Context<'_>,
    plan: &Plan,
    live_vm: Option<&Value>,
) -> Result<Vec<String>> {
    let ns = plan.namespace.as_str();
    let live_vols = live_vm
        .and_then(|vm| vm.pointer("/spec/template/spec/volumes"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    for v in &plan.volumes {
        let live = live_vols
            .iter()
            .find(|lv| lv.get("name").and_then(Value::as_str) == Some(v.volume.as_str()))
            .and_then(|lv| {
                lv.pointer("/persistentVolumeClaim/claimName")
                    .or_else(|| lv.pointer("/dataVolume/name"))
                    .and_then(Value::as_str)
            });
        let old = match (live_vm, live) {
            (Some(_), Some(c)) => c.to_string(),
            // The live VM no longer has this volume: nothing of it to replace.
            (Some(_), None) => continue,
            (None, _) => v.old_claim.clone(),
        };
        if old == v.claim || out.contains(&old) {
            continue;
        }
        let exists = get_opt(ctx.client, ns, &pvc_ar(), "PersistentVolumeClaim", &old)
            .await?
            .is_some()
            || get_opt(ctx.client, ns, &dv_ar(), "DataVolume", &old)
                .await?
                .is_some();
        if exists {
            out.push(old);
        }
    }
    Ok(out)
}

async fn stop_for_in_place(
    ctx: &Context<'_>,
    plan: &Plan,
    req: &RestoreRequest,
    vm_exists: bool,
) -> Result<()> {
    let ns = plan.namespace.as_str();
    let vmi = get_opt(
        ctx.client,
        ns,
        &vmi_ar(),
        "VirtualMachineInstance",
        &plan.name,
    )
    .await?;
    if vmi.is_none() {
        return Ok(());
    }
    if !req.force || !vm_exists {
        return Err(RestoreError::Running {
            ns: ns.to_string(),
            name: plan.name.clone(),
        });
    }
    ctx.progress
        .line(&format!("--force: stopping VM {ns}/{}", plan.name));
    let vmapi: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &vm_ar());
    vmapi
        .patch(
            &plan.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"runStrategy": "Halted", "running": null}})),
        )
        .await
        .map_err(ClusterError::api(
            "stopping",
            "VirtualMachine",
            format!("{ns}/{}", plan.name),
        ))?;
    let name = plan.name.clone();
    poll(format!("VMI {ns}/{name} to stop"), req.timeout, || {
        let name = name.clone();
        async move {
            Ok(
                get_opt(ctx.client, ns, &vmi_ar(), "VirtualMachineInstance", &name)
                    .await?
                    .is_none()
                    .then_some(()),
            )
        }
    })
    .await
}

async fn wait_job(ctx: &Context<'_>, plan: &Plan, v: &VolumePlan, timeout: Duration) -> Result<()> {
    let ns = plan.namespace.as_str();
    let job = job_name(plan, v);
    let r = ar("batch", "v1", "Job", "jobs");
    let status = poll(format!("restore Job {ns}/{job}"), timeout, || {
        let r = r.clone();
        let job = job.clone();
        async move {
            let o = get_opt(ctx.client, ns, &r, "Job", &job).await?;
            let Some(o) = o else {
                return Ok(Some(Err("the Job disappeared".to_string())));
            };
            if o.pointer("/status/succeeded")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                > 0
            {
                return Ok(Some(Ok(())));
            }
            if o.pointer("/status/failed")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                > 0
            {
                let msg = o
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|c| {
                        c.iter()
                            .find(|c| c.get("type").and_then(Value::as_str) == Some("Failed"))
                    })
                    .and_then(|c| c.get("message").and_then(Value::as_str))
                    .unwrap_or("failed")
                    .to_string();
                return Ok(Some(Err(msg)));
            }
            Ok(None)
        }
    })
    .await?;
    status.map_err(|message| RestoreError::Job {
        ns: ns.to_string(),
        job,
        volume: v.volume.clone(),
        message,
    })
}

fn dv_phase(o: &Value) -> &str {
    o.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("")
}

async fn wait_dv(
    ctx: &Context<'_>,
    ns: &str,
    name: &str,
    want: &str,
    timeout: Duration,
) -> Result<()> {
    let r = dv_ar();
    let res = poll(
        format!("DataVolume {ns}/{name} to be {want}"),
        timeout,
        || {
            let r = r.clone();
            async move {
                let o = get_opt(ctx.client, ns, &r, "DataVolume", name).await?;
                Ok(match o {
                    None => Some(Err("the DataVolume disappeared".to_string())),
                    Some(o) if dv_phase(&o) == want => Some(Ok(())),
                    Some(o) if dv_phase(&o) == "Failed" => Some(Err(format!(
                        "the DataVolume failed: {}",
                        o.pointer("/status/conditions")
                            .map(|c| c.to_string())
                            .unwrap_or_default()
                    ))),
                    Some(_) => None,
                })
            }
        },
    )
    .await?;
    res.map_err(|m| RestoreError::Upload {
        volume: name.to_string(),
        pvc: format!("{ns}/{name}"),
        message: m,
    })
}

async fn upload_token(ctx: &Context<'_>, ns: &str, pvc: &str) -> Result<String> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        ns,
        &ar(
            "upload.cdi.kubevirt.io",
            "v1beta1",
            "UploadTokenRequest",
            "uploadtokenrequests",
        ),
    );
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "upload.cdi.kubevirt.io/v1beta1",
        "kind": "UploadTokenRequest",
        "metadata": {"name": pvc, "namespace": ns},
        "spec": {"pvcName": pvc},
    }))
    .map_err(|e| RestoreError::Invalid(format!("building UploadTokenRequest: {e}")))?;
    let out = api
        .create(&PostParams::default(), &obj)
        .await
        .map_err(ClusterError::api(
            "requesting an upload token for",
            "PVC",
            format!("{ns}/{pvc}"),
        ))?;
    serde_json::to_value(out)
        .ok()
        .and_then(|v| {
            v.pointer("/status/token")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .ok_or_else(|| RestoreError::Upload {
            volume: pvc.to_string(),
            pvc: format!("{ns}/{pvc}"),
            message: "the UploadTokenRequest was answered without status.token (is CDI installed?)"
                .into(),
        })
}

async fn upload_proxy_url(ctx: &Context<'_>, req: &RestoreRequest) -> Result<String> {
    if let Some(u) = &req.upload_proxy_url {
        return Ok(u.trim_end_matches('/').to_string());
    }
    let r = ar("cdi.kubevirt.io", "v1beta1", "CDIConfig", "cdiconfigs");
    let api: Api<DynamicObject> = Api::all_with(ctx.client.clone(), &r);
    let cfg = api
        .get_opt("config")
        .await
        .map_err(ClusterError::api("reading", "CDIConfig", "config"))?
        .and_then(|o| serde_json::to_value(o).ok());
    let url = cfg
        .as_ref()
        .and_then(|c| c.pointer("/status/uploadProxyURL"))
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            RestoreError::Invalid(
                "CDI's upload proxy URL is unknown (cdiconfigs/config has no status.uploadProxyURL): pass --upload-proxy-url, or use --method job".into(),
            )
        })?;
    let url = if url.starts_with("http://") || url.starts_with("https://") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    Ok(url.trim_end_matches('/').to_string())
}

fn http_client(ctx: &Context<'_>, req: &RestoreRequest) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().connect_timeout(Duration::from_secs(30));
    for der in &ctx.kube_ca {
        if let Ok(c) = reqwest::Certificate::from_der(der) {
            b = b.add_root_certificate(c);
        }
    }
    if let Some(pem) = &req.upload_proxy_ca {
        let c = reqwest::Certificate::from_pem(pem).map_err(|e| {
            RestoreError::Invalid(format!("--upload-proxy-ca is not a PEM certificate: {e}"))
        })?;
        b = b.add_root_certificate(c);
    }
    b.build()
        .map_err(|e| RestoreError::Invalid(format!("building the HTTP client: {e}")))
}

/// One chunk on its way: (was zero, id unless a full zero chunk, zstd frame, raw length).
type Frame = (bool, Option<crate::repo::ChunkId>, Bytes, usize);

/// What the upload body stream reports back.
#[derive(Debug, Default)]
struct BodyState {
    wire: AtomicU64,
    zero_chunks: AtomicU64,
    failure: Mutex<Option<crate::Error>>,
}

/// The upload body: the volume's chunks in order, each as one zstd frame, fetched ahead in
/// parallel and verified; the image digest is recomputed from the chunk ids as they go by and
/// checked after the last one. Any error ends the stream with an I/O error (aborting the
/// request) and is kept in `state.failure`.
fn upload_body(
    repo: Arc<Repository>,
    index: Arc<Index>,
    expected: String,
    concurrency: usize,
    progress: Option<ProgressBar>,
    state: Arc<BodyState>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let cs = index.chunk_size;
    let size = index.size;
    let n = index.chunks.len();
    let full_zero_id = repo.zero_chunk_id(cs as usize);
    let zero_frame: Arc<Mutex<Option<Bytes>>> = Arc::default();
    let chunks = {
        let repo = repo.clone();
        let index = index.clone();
        stream::iter(0..n)
            .map(move |i| {
                let repo = repo.clone();
                let index = index.clone();
                let zero_frame = zero_frame.clone();
                async move {
                    let id = index.chunks[i];
                    let len = chunk_len(size, cs, i as u64);
                    let compress = move |data: Vec<u8>| {
                        zstd::bulk::compress(&data, UPLOAD_ZSTD_LEVEL)
                            .map(Bytes::from)
                            .map_err(|e| crate::Error::Invalid(format!("zstd: {e}")))
                    };
                    if id.is_zero_marker() {
                        let full = len == cs as usize;
                        let cached = if full {
                            zero_frame.lock().unwrap_or_else(|p| p.into_inner()).clone()
                        } else {
                            None
                        };
                        let frame = match cached {
                            Some(f) => f,
                            None => {
                                let f =
                                    tokio::task::spawn_blocking(move || compress(vec![0u8; len]))
                                        .await
                                        .map_err(|e| {
                                            crate::Error::Invalid(format!("compressor failed: {e}"))
                                        })??;
                                if full {
                                    *zero_frame.lock().unwrap_or_else(|p| p.into_inner()) =
                                        Some(f.clone());
                                }
                                f
                            }
                        };
                        let zid = if full {
                            None
                        } else {
                            Some(repo.zero_chunk_id(len))
                        };
                        Ok::<_, crate::Error>((true, zid, frame, len))
                    } else {
                        // Verified against its id; a chunk stored as zstd is sent as its
                        // stored frame (no second compression), one stored raw is compressed.
                        let (data, stored) = repo.get_chunk_with_frame(&id).await?;
                        if data.len() != len {
                            return Err(crate::Error::corrupt(
                                id.key(),
                                format!(
                                    "chunk has {} bytes, index position {i} needs {len}",
                                    data.len()
                                ),
                            ));
                        }
                        let frame = match stored {
                            Some(f) => f,
                            None => tokio::task::spawn_blocking(move || compress(data))
                                .await
                                .map_err(|e| {
                                    crate::Error::Invalid(format!("compressor failed: {e}"))
                                })??,
                        };
                        Ok((false, Some(id), frame, len))
                    }
                }
            })
            .buffered(concurrency.max(1))
            .boxed()
    };
    struct S {
        chunks: futures::stream::BoxStream<'static, crate::Result<Frame>>,
        hasher: blake3::Hasher,
        done: bool,
    }
    let init = S {
        chunks,
        hasher: blake3::Hasher::new(),
        done: false,
    };
    stream::unfold(init, move |mut s| {
        let state = state.clone();
        let progress = progress.clone();
        let expected = expected.clone();
        async move {
            if s.done {
                return None;
            }
            let fail = |s: &mut S, e: crate::Error| {
                let msg = e.to_string();
                *state.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                s.done = true;
                std::io::Error::other(msg)
            };
            match s.chunks.next().await {
                Some(Ok((zero, id, frame, len))) => {
                    let id = id.unwrap_or(full_zero_id);
                    s.hasher.update(&id.0);
                    if zero {
                        state.zero_chunks.fetch_add(1, Ordering::Relaxed);
                    }
                    state.wire.fetch_add(frame.len() as u64, Ordering::Relaxed);
                    if let Some(p) = &progress {
                        p.inc(len as u64);
                    }
                    Some((Ok(frame), s))
                }
                Some(Err(e)) => {
                    let err = fail(&mut s, e);
                    Some((Err(err), s))
                }
                None => {
                    s.hasher.update(&(n as u64).to_le_bytes());
                    let actual = s.hasher.finalize().to_hex().to_string();
                    if actual != expected {
                        let err = fail(
                            &mut s,
                            crate::Error::corrupt(
                                "<image>",
                                format!("the image digest of the streamed volume is {actual}, the manifest records {expected}"),
                            ),
                        );
                        return Some((Err(err), s));
                    }
                    None
                }
            }
        }
    })
}

async fn upload_volume(
    ctx: &Context<'_>,
    plan: &Plan,
    v: &VolumePlan,
    req: &RestoreRequest,
) -> Result<VolumeReport> {
    let ns = plan.namespace.as_str();
    let t = Instant::now();
    let pvc_id = format!("{ns}/{}", v.claim);
    let up_err = |message: String| RestoreError::Upload {
        volume: v.volume.clone(),
        pvc: pvc_id.clone(),
        message,
    };
    let index = Arc::new(ctx.repo.load_index(ctx.manifest, &v.volume).await?);
    let expected = ctx
        .manifest
        .volumes
        .iter()
        .find(|e| e.name == v.volume)
        .map(|e| e.image_digest.clone())
        .unwrap_or_default();
    create(ctx, ns, "DataVolume", &datavolume_object(plan, v)).await?;
    wait_dv(ctx, ns, &v.claim, "UploadReady", req.timeout).await?;
    let base = upload_proxy_url(ctx, req).await?;
    let url = format!("{base}/v1beta1/upload");
    let http = http_client(ctx, req)?;
    let mut token = upload_token(ctx, ns, &v.claim).await?;
    let mut attempts = 0;
    let (wire, zero_chunks) = loop {
        attempts += 1;
        let state = Arc::new(BodyState::default());
        let pb = ctx.progress.volume(&v.volume, v.size);
        let body = upload_body(
            ctx.repo.clone(),
            index.clone(),
            expected.clone(),
            req.concurrency,
            pb.clone(),
            state.clone(),
        );
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| up_err("the upload token is not a valid header value".into()))?;
        auth.set_sensitive(true);
        let res = http
            .post(&url)
            .header(reqwest::header::AUTHORIZATION, auth)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await;
        if let Some(p) = &pb {
            p.finish_and_clear();
        }
        if let Some(e) = state
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            // A repository problem (corrupt chunk, digest): retrying cannot help.
            return Err(e.into());
        }
        let (retry, msg) = match res {
            Ok(r) if r.status().is_success() => {
                break (
                    state.wire.load(Ordering::Relaxed),
                    state.zero_chunks.load(Ordering::Relaxed),
                );
            }
            Ok(r) => {
                let code = r.status().as_u16();
                let text: String = r
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect();
                (code >= 500 || code == 401, format!("HTTP {code}: {text}"))
            }
            Err(e) => (true, format!("{e}")),
        };
        if !retry || attempts >= UPLOAD_ATTEMPTS {
            return Err(up_err(format!("{msg} (after {attempts} attempt(s))")));
        }
        ctx.progress.line(&format!(
            "volume {}: upload attempt {attempts} failed ({msg}); retrying with a new token",
            v.volume
        ));
        tokio::time::sleep(Duration::from_millis(250 * (1 << attempts.min(5)))).await;
        // CDI needs the upload server again.
        wait_dv(ctx, ns, &v.claim, "UploadReady", req.timeout).await?;
        // A fresh token every time: a 401 means the token expired, and when the proxy answers
        // before reading the body the client may only see a reset connection, not the 401.
        token = upload_token(ctx, ns, &v.claim).await?;
    };
    wait_dv(ctx, ns, &v.claim, "Succeeded", req.timeout).await?;
    ctx.progress.line(&format!(
        "volume {}: {} bytes uploaded into DataVolume {pvc_id} as {} bytes of zstd ({} zero chunks)",
        v.volume, v.size, wire, zero_chunks
    ));
    Ok(VolumeReport {
        volume: v.volume.clone(),
        claim: v.claim.clone(),
        size: v.size,
        wire_bytes: wire,
        zero_chunks,
        chunks: index.chunks.len() as u64,
        attempts,
        seconds: t.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::format::{BackupId, Consistency, VolumeEntry};

    fn manifest() -> Manifest {
        let vol = |name: &str, size: u64| VolumeEntry {
            name: name.into(),
            size,
            chunk_size: 1 << 20,
            chunks: 1,
            zero_chunks: 0,
            new_chunks: 0,
            bytes_read: 0,
            bytes_new: 0,
            bytes_stored: 0,
            index_digest: String::new(),
            image_digest: String::new(),
        };
        Manifest {
            format_version: 1,
            id: "20261121T233302Z-3f9a".parse::<BackupId>().unwrap(),
            namespace: "prod".into(),
            vm: "db".into(),
            started: chrono::Utc::now(),
            finished: chrono::Utc::now(),
            consistency: Consistency::CrashConsistent,
            parent: None,
            volumes: vec![vol("root", 6 << 20), vol("data", 3 << 20)],
            resources: None,
            tool_version: "0".into(),
            labels: Default::default(),
        }
    }

    fn objects() -> BackupObjects {
        let vm = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "db", "namespace": "prod", "uid": "u1", "resourceVersion": "9",
                "generation": 3, "creationTimestamp": "2026-01-01T00:00:00Z", "managedFields": [{}],
                "finalizers": ["kubevirt.io/virtualMachineControllerFinalize"],
                "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "gone", "uid": "u0"}],
                "annotations": {"ipam.spidernet.io/ippool": "{\"ipv4\":[\"p\"]}", "keep.me/x": "1"},
                "labels": {"app": "db"}},
            "spec": {
                "running": true,
                "dataVolumeTemplates": [{"metadata": {"name": "db-data"}, "spec": {"source": {"http": {"url": "http://x"}}, "storage": {}}},
                                        {"metadata": {"name": "other"}, "spec": {}}],
                "template": {
                    "metadata": {"labels": {"kubevirt.io/domain": "db"},
                                 "annotations": {"ipam.spidernet.io/ippools": "x", "cni.projectcalico.org/ipAddrs": "[\"10.0.0.5\"]", "other": "y"}},
                    "spec": {
                        "domain": {"firmware": {"uuid": "11111111-2222-3333-4444-555555555555"},
                                   "devices": {"interfaces": [{"name": "default", "masquerade": {}, "macAddress": "02:00:00:00:00:01"}]},
                                   "unknownField": {"kept": true}},
                        "networks": [{"name": "default", "pod": {}}, {"name": "br", "multus": {"networkName": "br-data"}}],
                        "volumes": [
                            {"name": "root", "persistentVolumeClaim": {"claimName": "db-root"}},
                            {"name": "data", "dataVolume": {"name": "db-data"}},
                            {"name": "ci", "cloudInitNoCloud": {"userData": "x"}}
                        ]
                    }
                }
            },
            "status": {"printableStatus": "Running"}
        });
        let pvc = |size: &str, sc: &str| json!({"spec": {"resources": {"requests": {"storage": size}}, "storageClassName": sc, "accessModes": ["ReadWriteMany"], "volumeMode": "Block"}});
        BackupObjects {
            vm,
            pvcs: BTreeMap::from([
                ("db-root".to_string(), pvc("6Mi", "fast")),
                ("db-data".to_string(), pvc("1Mi", "slow")),
            ]),
        }
    }

    fn request(mode: Mode) -> RestoreRequest {
        RestoreRequest {
            target_namespace: Some("dr".into()),
            name: Some("db2".into()),
            storage_class_map: BTreeMap::from([("fast".to_string(), "ssd".to_string())]),
            mode,
            method: Method::CdiUpload,
            start: false,
            force: false,
            keep_partial: false,
            timeout: Duration::from_secs(1),
            wait: false,
            concurrency: 4,
            job_image: "virtguard".into(),
            job_env: vec![],
            upload_proxy_url: None,
            upload_proxy_ca: None,
        }
    }

    #[test]
    fn copy_gets_a_new_identity_and_renamed_disks() {
        let p = plan(&manifest(), &objects(), &request(Mode::Copy), "r1").unwrap();
        let vm = &p.vm;
        assert_eq!(vm["metadata"]["name"], "db2");
        assert_eq!(vm["metadata"]["namespace"], "dr");
        for k in [
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
            "finalizers",
            "ownerReferences",
        ] {
            assert!(vm["metadata"].get(k).is_none(), "{k} kept");
        }
        assert!(vm.get("status").is_none());
        assert_eq!(vm["spec"]["runStrategy"], "Halted");
        assert!(vm["spec"].get("running").is_none());
        let ifc = &vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0];
        assert!(ifc.get("macAddress").is_none());
        assert_eq!(ifc["masquerade"], json!({}));
        let uuid = vm["spec"]["template"]["spec"]["domain"]["firmware"]["uuid"]
            .as_str()
            .unwrap();
        assert_ne!(uuid, "11111111-2222-3333-4444-555555555555");
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "4");
        assert_eq!(
            vm["metadata"]["annotations"],
            json!({"keep.me/x": "1", RESTORED_FROM: "prod/db/20261121T233302Z-3f9a"})
        );
        assert_eq!(
            vm["spec"]["template"]["metadata"]["annotations"],
            json!({"other": "y"})
        );
        assert_eq!(
            vm["spec"]["template"]["metadata"]["labels"]["kubevirt.io/domain"],
            "db2"
        );
        assert_eq!(
            vm["spec"]["template"]["spec"]["domain"]["unknownField"],
            json!({"kept": true})
        );
        let vols = &vm["spec"]["template"]["spec"]["volumes"];
        assert_eq!(vols[0]["persistentVolumeClaim"]["claimName"], "db2-root");
        assert_eq!(vols[1]["dataVolume"]["name"], "db2-data");
        assert_eq!(vols[2]["cloudInitNoCloud"]["userData"], "x");
        let t = &vm["spec"]["dataVolumeTemplates"];
        assert_eq!(t[0]["metadata"]["name"], "db2-data");
        assert_eq!(t[0]["spec"]["source"], json!({"upload": {}}));
        assert_eq!(t[1]["metadata"]["name"], "other");
        assert_eq!(p.volumes[0].claim, "db2-root");
        assert_eq!(p.volumes[0].storage_class.as_deref(), Some("ssd"));
        assert_eq!(p.volumes[0].request, "6Mi");
        // The original request was smaller than the image: sized to the image.
        assert_eq!(p.volumes[1].request, (3u64 << 20).to_string());
        assert_eq!(p.volumes[1].storage_class.as_deref(), Some("slow"));
        assert_eq!(p.volumes[1].volume_mode.as_deref(), Some("Block"));
        assert_eq!(p.networks, vec!["br-data".to_string()]);
        assert_eq!(
            p.storage_classes,
            vec!["slow".to_string(), "ssd".to_string()]
        );
    }

    #[test]
    fn in_place_keeps_identity() {
        let mut req = request(Mode::InPlace);
        req.target_namespace = None;
        req.name = None;
        req.start = true;
        let p = plan(&manifest(), &objects(), &req, "20261201t071500z-3f9a").unwrap();
        let vm = &p.vm;
        assert_eq!(vm["metadata"]["name"], "db");
        assert_eq!(vm["spec"]["runStrategy"], "Always");
        let spec = &vm["spec"]["template"]["spec"];
        assert_eq!(
            spec["domain"]["devices"]["interfaces"][0]["macAddress"],
            "02:00:00:00:00:01"
        );
        assert_eq!(
            spec["domain"]["firmware"]["uuid"],
            "11111111-2222-3333-4444-555555555555"
        );
        assert_eq!(
            vm["metadata"]["annotations"]["ipam.spidernet.io/ippool"],
            "{\"ipv4\":[\"p\"]}"
        );
        assert_eq!(
            vm["spec"]["template"]["metadata"]["annotations"]["cni.projectcalico.org/ipAddrs"],
            "[\"10.0.0.5\"]"
        );
        // The disks go into staged claims; the VM spec points at them.
        assert_eq!(
            spec["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "db-root-r3f9a"
        );
        assert_eq!(p.volumes[0].old_claim, "db-root");
        assert_eq!(p.volumes[1].claim, "db-data-r3f9a");
    }

    #[test]
    fn staged_claim_names() {
        let id = "20261201t071500z-3f9a";
        assert_eq!(staged_claim_name("db-root", id), "db-root-r3f9a");
        // An earlier restore's suffix is replaced, not stacked.
        assert_eq!(staged_claim_name("db-root-r1b2c", id), "db-root-r3f9a");
        // A name that merely ends in `-r` plus something else keeps it.
        assert_eq!(staged_claim_name("disk-rootfs", id), "disk-rootfs-r3f9a");
        assert_eq!(staged_claim_name("-r1b2c", id), "-r1b2c-r3f9a");
        // Long names are cut so that `cdi-upload-<name>` stays a DNS label.
        let long = "a".repeat(80);
        let n = staged_claim_name(&long, id);
        assert!(
            n.ends_with("-r3f9a") && "cdi-upload-".len() + n.len() <= 63,
            "{n}"
        );
    }

    #[test]
    fn job_method_uses_plain_pvcs() {
        let mut req = request(Mode::Copy);
        req.method = Method::Job;
        req.job_env = vec![
            ("VIRTGUARD_REPO".into(), "s3://b/p".into()),
            ("VIRTGUARD_KEY".into(), "secret!".into()),
        ];
        let p = plan(&manifest(), &objects(), &req, "r1").unwrap();
        let vols = &p.vm["spec"]["template"]["spec"]["volumes"];
        assert_eq!(vols[1]["persistentVolumeClaim"]["claimName"], "db2-data");
        assert!(vols[1].get("dataVolume").is_none());
        assert_eq!(
            p.vm["spec"]["dataVolumeTemplates"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        let objs = objects_to_create(&p, &req);
        let text = serde_json::to_string(&objs).unwrap();
        assert!(
            !text.contains("secret!"),
            "dry-run output must not show secret values"
        );
        let job = objs.iter().find(|o| o["kind"] == "Job").unwrap();
        let args = job["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        assert!(
            !args.contains("s3://"),
            "repository settings come from the Secret: {args}"
        );
        assert!(args.contains(JOB_DEVICE_PATH));
    }

    #[test]
    fn claim_names_and_quantities() {
        assert_eq!(copy_claim_name("db-root", "db", "x"), "x-root");
        assert_eq!(copy_claim_name("dbroot", "db", "x"), "x-dbroot");
        assert_eq!(copy_claim_name("disk", "db", "db"), "disk");
        assert_eq!(parse_quantity("6Mi"), Some(6 << 20));
        assert_eq!(parse_quantity("1G"), Some(1_000_000_000));
        assert_eq!(parse_quantity("123"), Some(123));
        assert_eq!(parse_quantity("1.5Gi"), None);
        assert!(is_fixed_ip_annotation("ipam.spidernet.io/ippools"));
        assert!(!is_fixed_ip_annotation("ipam.spidernet.io"));
    }

    /// A repository with one committed backup of `data` as volume `root` (64 KiB chunks).
    async fn repo_with(data: &[u8]) -> (tempfile::TempDir, Arc<Repository>, Manifest) {
        repo_with_key(data, None).await
    }

    async fn repo_with_key(
        data: &[u8],
        key: Option<&[u8]>,
    ) -> (tempfile::TempDir, Arc<Repository>, Manifest) {
        use crate::repo::repository::InitOptions;
        use crate::repo::{BackupOptions, BackupSession, FileSource, LocalStore, Store};
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::write(&img, data).unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path().join("repo")));
        let opts = InitOptions {
            chunk_size: 64 << 10,
            key: key.map(<[u8]>::to_vec),
            kdf_memory_kib: 1024,
            kdf_iterations: 1,
            ..Default::default()
        };
        let repo = Arc::new(Repository::init(store, opts).await.unwrap());
        let mut s = BackupSession::start(repo.clone(), "ns", "vm", BackupOptions::default())
            .await
            .unwrap();
        let src: Arc<dyn crate::repo::VolumeSource> = Arc::new(FileSource::open(&img).unwrap());
        s.write_volume("root", src, None).await.unwrap();
        let m = s.commit().await.unwrap();
        (dir, repo, m)
    }

    async fn collect(
        repo: &Arc<Repository>,
        m: &Manifest,
        expected: &str,
    ) -> (Vec<std::io::Result<Bytes>>, Arc<BodyState>) {
        let index = Arc::new(repo.load_index(m, "root").await.unwrap());
        let state = Arc::new(BodyState::default());
        let body = upload_body(
            repo.clone(),
            index,
            expected.to_string(),
            4,
            None,
            state.clone(),
        );
        (body.collect().await, state)
    }

    /// Compressible chunks go out as their stored frames, incompressible ones (stored raw)
    /// are compressed for the wire; encrypted or not, the body decodes to the image.
    #[tokio::test]
    async fn upload_body_forwards_stored_frames_and_compresses_raw_chunks() {
        use rand::{RngCore, SeedableRng};
        let mut data = vec![0u8; 512 << 10];
        rand::rngs::StdRng::seed_from_u64(5).fill_bytes(&mut data[..128 << 10]);
        for (i, b) in data[128 << 10..256 << 10].iter_mut().enumerate() {
            *b = b"the quick brown fox "[i % 20];
        }
        for key in [None, Some(&b"secret"[..])] {
            let (_d, repo, m) = repo_with_key(&data, key).await;
            let (frames, state) = collect(&repo, &m, &m.volumes[0].image_digest).await;
            let frames: Vec<Bytes> = frames.into_iter().map(Result::unwrap).collect();
            let wire: Vec<u8> = frames.concat();
            assert_eq!(zstd::stream::decode_all(&wire[..]).unwrap(), data);
            assert!(state.failure.lock().unwrap().is_none());
            // Chunks 2 and 3 (text): the stored frame, byte for byte.
            let index = repo.load_index(&m, "root").await.unwrap();
            let (_, stored) = repo.get_chunk_with_frame(&index.chunks[2]).await.unwrap();
            assert_eq!(stored.as_deref(), Some(&frames[2][..]), "key {key:?}");
            // Chunk 0 (random): stored raw, still a valid frame on the wire.
            let (raw, stored) = repo.get_chunk_with_frame(&index.chunks[0]).await.unwrap();
            assert!(stored.is_none());
            assert_eq!(zstd::stream::decode_all(&frames[0][..]).unwrap(), raw);
        }
    }

    #[tokio::test]
    async fn upload_body_is_zstd_of_the_image_with_cheap_zero_chunks() {
        let mut data = vec![0u8; 1 << 20];
        for (i, b) in data.iter_mut().enumerate().take(200_000) {
            *b = (i % 251) as u8;
        }
        let (_d, repo, m) = repo_with(&data).await;
        let (frames, state) = collect(&repo, &m, &m.volumes[0].image_digest).await;
        let mut wire = Vec::new();
        for f in frames {
            wire.extend_from_slice(&f.unwrap());
        }
        assert_eq!(zstd::stream::decode_all(&wire[..]).unwrap(), data);
        assert_eq!(state.wire.load(Ordering::Relaxed), wire.len() as u64);
        // 12 of 16 chunks are zero; each costs a few bytes.
        assert_eq!(state.zero_chunks.load(Ordering::Relaxed), 12);
        assert!(wire.len() < 20_000, "{} bytes on the wire", wire.len());
        assert!(state.failure.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn upload_body_fails_on_a_digest_mismatch() {
        let (_d, repo, m) = repo_with(&[7u8; 100_000]).await;
        let (frames, state) = collect(&repo, &m, "0000").await;
        assert!(
            frames.last().unwrap().is_err(),
            "the body must end with an error"
        );
        let err = state.failure.lock().unwrap().take().unwrap().to_string();
        assert!(
            err.contains("image digest") && err.contains("0000"),
            "{err}"
        );
    }

    #[test]
    fn unknown_volume_is_refused() {
        let mut o = objects();
        o.vm["spec"]["template"]["spec"]["volumes"] = json!([]);
        let e = plan(&manifest(), &o, &request(Mode::Copy), "r").unwrap_err();
        assert!(e.to_string().contains("volume `root`"), "{e}");
    }
}
