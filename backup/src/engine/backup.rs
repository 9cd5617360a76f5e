//! One VM's backup, step by step (see the module docs of [`crate::engine`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use virtguard_api::labels;
use virtguard_api::status::{BackupResult, BackupStatusRecord, Consistency, FreezeFailure};
use virtguard_api::{VirtualMachine, VirtualMachineInstance, VolumeSnapshot};

use super::config::{volumes_of, BackupConfig, PvcVolume};
use super::EngineError;
use crate::cluster::{self, export, freeze::FrozenGuest, groupsnapshot, snapshot, ClusterError};
use crate::repo::throttle::ThrottledSource;
use crate::repo::{self, BackupOptions, BackupSession, HttpSource, Repository};

/// Manifest label, present when one VolumeGroupSnapshot cut all the VM's volumes at one
/// instant: the VolumeGroupSnapshotClass it used. Absent for per-PVC VolumeSnapshots (and in
/// backups made before group snapshots existed).
pub const GROUP_SNAPSHOT_CLASS_LABEL: &str = "group-snapshot-class";

/// Manifest label, present when per-PVC VolumeSnapshots were taken: the VolumeSnapshotClasses
/// they used, sorted, comma-separated. Restore warns when one does not exist in the target
/// cluster (snapshots of the restored VM would fail there).
pub const SNAPSHOT_CLASSES_LABEL: &str = "snapshot-classes";

/// How a VM's PVCs are snapshotted, decided before any freeze.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotPlan {
    /// One VolumeSnapshot per PVC with these VolumeSnapshotClasses (in PVC order; empty on the
    /// changed-block-tracking path, which takes no snapshots).
    PerVolume(Vec<String>),
    /// One VolumeGroupSnapshot over every PVC with this VolumeGroupSnapshotClass: all PVCs are
    /// on one CSI driver that has a group class, and there are at least two (a group of one
    /// adds nothing over a VolumeSnapshot).
    Group { class: String },
}

/// Backup runs in flight in this process, `(namespace, backup id)`, so a signal handler can
/// delete their objects ([`cleanup_in_flight`]).
static IN_FLIGHT: std::sync::Mutex<std::collections::BTreeSet<(String, String)>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

fn in_flight(namespace: &str, backup_id: &str, running: bool) {
    if let Ok(mut s) = IN_FLIGHT.lock() {
        let key = (namespace.to_string(), backup_id.to_string());
        if running {
            s.insert(key);
        } else {
            s.remove(&key);
        }
    }
}

/// Deletes the objects of every backup run still in flight in this process (for SIGTERM/SIGINT).
pub async fn cleanup_in_flight(client: &Client) -> usize {
    let runs: Vec<(String, String)> = IN_FLIGHT
        .lock()
        .map(|s| s.iter().cloned().collect())
        .unwrap_or_default();
    let mut deleted = 0;
    for (ns, id) in runs {
        match cluster::cleanup::cleanup(client, Some(&ns), Some(&id)).await {
            Ok(r) => {
                deleted += r.deleted.len();
                in_flight(&ns, &id, false);
            }
            Err(e) => tracing::error!(error = %e, backup_id = %id,
                "cleanup on shutdown failed; run `virtguard cleanup --backup-id {id}`"),
        }
    }
    deleted
}

/// What a successful VM backup did.
#[derive(Debug, Clone)]
pub struct VmBackupReport {
    /// `namespace/name`.
    pub vm: String,
    /// The committed backup id.
    pub backup_id: String,
    /// How consistent the images are.
    pub consistency: Consistency,
    /// Freeze → thaw window (zero when not frozen).
    pub freeze: Duration,
    /// Whole run.
    pub duration: Duration,
    /// Volumes backed up: (volume name, PVC, bytes).
    pub volumes: Vec<(String, String, u64)>,
    /// Volumes noted but not backed up (containerDisk, cloudInit, ...): (name, kind).
    pub skipped: Vec<(String, String)>,
    /// Bytes read / new / stored over all volumes.
    pub bytes_read: u64,
    /// Raw bytes new to the repository.
    pub bytes_new: u64,
    /// Bytes uploaded.
    pub bytes_stored: u64,
}

/// Backs up VM `namespace/name` into `repo`.
pub async fn backup_vm(
    client: &Client,
    repo: Arc<Repository>,
    namespace: &str,
    name: &str,
    cfg: &BackupConfig,
) -> Result<VmBackupReport, EngineError> {
    let started = Instant::now();
    let attempt_ts = chrono::Utc::now().timestamp();
    let vm_id = format!("{namespace}/{name}");
    let result = run(client, repo, namespace, name, cfg, started).await;
    // Status record: after every attempt, success or not.
    let previous = read_status(client, namespace, name).await;
    let record = match &result {
        Ok(r) => BackupStatusRecord {
            last_attempt_timestamp: attempt_ts,
            last_success_timestamp: Some(chrono::Utc::now().timestamp()),
            result: BackupResult::Succeeded,
            reason: None,
            consistency: Some(r.consistency),
            backup_id: Some(r.backup_id.clone()),
            duration_seconds: r.duration.as_secs_f64(),
            freeze_seconds: r.freeze.as_secs_f64(),
            bytes_read: r.bytes_read,
            bytes_new: r.bytes_new,
            bytes_stored: r.bytes_stored,
        },
        Err(e) => BackupStatusRecord {
            last_attempt_timestamp: attempt_ts,
            last_success_timestamp: previous.as_ref().and_then(|p| p.last_success_timestamp),
            result: BackupResult::Failed,
            reason: Some(e.reason().to_string()),
            consistency: previous.as_ref().and_then(|p| p.consistency),
            backup_id: previous.as_ref().and_then(|p| p.backup_id.clone()),
            duration_seconds: started.elapsed().as_secs_f64(),
            freeze_seconds: 0.0,
            bytes_read: 0,
            bytes_new: 0,
            bytes_stored: 0,
        },
    };
    if let Err(e) = write_status(client, namespace, name, &record).await {
        tracing::warn!(vm = %vm_id, error = %e, "could not write the backup status ConfigMap");
    }
    result
}

async fn run(
    client: &Client,
    repo: Arc<Repository>,
    namespace: &str,
    name: &str,
    cfg: &BackupConfig,
    started: Instant,
) -> Result<VmBackupReport, EngineError> {
    let vm_id = format!("{namespace}/{name}");
    let cl = |step: &'static str| {
        let vm = vm_id.clone();
        move |source: ClusterError| EngineError::Cluster { vm, step, source }
    };

    // 1. Resolve.
    let Resolved {
        vm,
        pvcs,
        skipped,
        vmi,
    } = resolve(client, namespace, name).await?;
    let running = vmi.as_ref().is_some_and(VirtualMachineInstance::is_running);
    let paused = vmi.as_ref().is_some_and(VirtualMachineInstance::paused);
    let agent = vmi.as_ref().is_some_and(|v| v.agent_connected());

    // 2. Snapshot classes, before any freeze (the CBT path takes no snapshots: none needed).
    let use_cbt = super::cbt::applies(&vm, vmi.as_ref());
    let plan = if use_cbt {
        SnapshotPlan::PerVolume(Vec::new())
    } else {
        snapshot_plan(client, namespace, &pvcs, cfg)
            .await
            .map_err(|(step, e)| cl(step)(e))?
    };

    // What the run aims for; a freeze that fails turns it into FreezeFailed (the session
    // records the final value, see `stream`).
    let consistency = match (running, paused, agent) {
        (false, _, _) => Consistency::Offline,
        (true, true, _) => Consistency::Paused,
        (true, false, true) => Consistency::ApplicationConsistent,
        (true, false, false) => Consistency::CrashConsistent,
    };
    let opts = BackupOptions {
        concurrency: cfg.concurrency,
        consistency,
        ..Default::default()
    };
    let repo_err = |step: &'static str| {
        let vm = vm_id.clone();
        move |source: crate::repo::Error| EngineError::Repo { vm, step, source }
    };
    let mut session = BackupSession::start(repo.clone(), namespace, name, opts)
        .await
        .map_err(repo_err("opening the backup"))?;
    let backup_id = session.backup().id.to_string();
    match &plan {
        SnapshotPlan::Group { class } => session.set_label(GROUP_SNAPSHOT_CLASS_LABEL, class),
        SnapshotPlan::PerVolume(classes) if !classes.is_empty() => {
            let mut used = classes.clone();
            used.sort();
            used.dedup();
            session.set_label(SNAPSHOT_CLASSES_LABEL, &used.join(","));
        }
        SnapshotPlan::PerVolume(_) => {}
    }
    // What the guest has mounted, so a restore drill can check the copy mounts it again.
    if running && agent && !paused {
        match cluster::guest::filesystems(client, namespace, name).await {
            Ok(fs) => {
                let mounts = cluster::guest::mount_points(&fs);
                if !mounts.is_empty() {
                    session.set_label(cluster::guest::GUEST_MOUNTS_LABEL, &mounts.join(","));
                }
            }
            Err(e) => {
                tracing::info!(vm = %vm_id, error = %e, "the guest's filesystems are not recorded")
            }
        }
    }
    let run_labels = cluster::run_labels(&backup_id);
    let lease =
        match cluster::lease::VmLease::acquire(client, namespace, name, &backup_id, &run_labels)
            .await
        {
            Ok(l) => l,
            Err(e) => {
                session.abort().await;
                return Err(cl("taking the VM's backup lease")(e));
            }
        };
    in_flight(namespace, &backup_id, true);

    // >>> changed block tracking (engine/cbt.rs): a running VM with CBT Enabled is read through
    // a pull-mode VirtualMachineBackup (changed extents only) instead of snapshots + export.
    let outcome = if use_cbt {
        super::cbt::stream(
            client,
            &mut session,
            namespace,
            name,
            &pvcs,
            consistency,
            &run_labels,
            cfg,
            &backup_id,
        )
        .await
    } else {
        stream(
            client,
            &mut session,
            namespace,
            name,
            &pvcs,
            &plan,
            consistency,
            &run_labels,
            cfg,
            &backup_id,
        )
        .await
    };
    // <<< changed block tracking
    lease.release().await;
    // Cleanup on every path; a cleanup failure does not hide the run's own error.
    match cluster::cleanup::cleanup(client, Some(namespace), Some(&backup_id)).await {
        Ok(r) => {
            in_flight(namespace, &backup_id, false);
            tracing::debug!(vm = %vm_id, deleted = r.deleted.len(), "cleaned up")
        }
        Err(e) => tracing::warn!(vm = %vm_id, error = %e,
            "cleanup failed; run `virtguard cleanup --backup-id {backup_id}`"),
    }
    let (freeze, stats) = match outcome {
        Ok(v) => v,
        Err(e) => {
            session.abort().await;
            return Err(e);
        }
    };
    let consistency = session.consistency();

    // Save the VM object (everything, including fields we do not model).
    let files = vm_objects(client, namespace, &vm, &pvcs).await;
    session
        .write_resources(files)
        .await
        .map_err(repo_err("saving the VM's objects"))?;
    session
        .commit()
        .await
        .map_err(repo_err("committing the manifest"))?;

    Ok(VmBackupReport {
        vm: vm_id,
        backup_id,
        consistency,
        freeze,
        duration: started.elapsed(),
        volumes: pvcs
            .iter()
            .zip(&stats)
            .map(|(p, s)| (p.volume.clone(), p.pvc.clone(), s.size))
            .collect(),
        skipped,
        bytes_read: stats.iter().map(|s| s.bytes_read).sum(),
        bytes_new: stats.iter().map(|s| s.bytes_new).sum(),
        bytes_stored: stats.iter().map(|s| s.bytes_stored).sum(),
    })
}

/// The VM, its PVC-backed volumes (and the others, skipped) and its VMI if it has one.
struct Resolved {
    vm: VirtualMachine,
    pvcs: Vec<PvcVolume>,
    skipped: Vec<(String, String)>,
    vmi: Option<VirtualMachineInstance>,
}

/// Reads the VM and its VMI; a VM without PVC or DataVolume disks is refused, naming its volumes.
async fn resolve(client: &Client, namespace: &str, name: &str) -> Result<Resolved, EngineError> {
    let vm_id = format!("{namespace}/{name}");
    let cl = |step: &'static str| {
        let vm = vm_id.clone();
        move |source: ClusterError| EngineError::Cluster { vm, step, source }
    };
    let vm = Api::<VirtualMachine>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(ClusterError::api("reading", "VirtualMachine", &vm_id))
        .map_err(cl("resolving the VM"))?
        .ok_or_else(|| EngineError::Vm {
            vm: vm_id.clone(),
            message: "not found: check the name with `kubectl get vm -n NAMESPACE`".into(),
        })?;
    let (pvcs, skipped) = volumes_of(&vm);
    if pvcs.is_empty() {
        return Err(EngineError::Vm {
            vm: vm_id.clone(),
            message: format!(
                "has no PVC or DataVolume disks to back up (volumes: {})",
                skipped
                    .iter()
                    .map(|(n, k)| format!("{n} ({k})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    let vmi = Api::<VirtualMachineInstance>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(ClusterError::api(
            "reading",
            "VirtualMachineInstance",
            &vm_id,
        ))
        .map_err(cl("resolving the VMI"))?;
    Ok(Resolved {
        vm,
        pvcs,
        skipped,
        vmi,
    })
}

/// One VolumeGroupSnapshot when every PVC is on one CSI driver that has a group class, else a
/// VolumeSnapshotClass per PVC (`--snapshot-class` first, then the driver's default). A
/// failure comes with the step it failed at.
async fn snapshot_plan(
    client: &Client,
    namespace: &str,
    pvcs: &[PvcVolume],
    cfg: &BackupConfig,
) -> Result<SnapshotPlan, (&'static str, ClusterError)> {
    let at = |step: &'static str| move |e: ClusterError| (step, e);
    let mut drivers = Vec::new();
    for p in pvcs {
        drivers.push(
            snapshot::csi_driver_of_pvc(client, namespace, &p.pvc)
                .await
                .map_err(at("finding the CSI driver"))?,
        );
    }
    let group_class = match drivers.as_slice() {
        [first, rest @ ..] if !rest.is_empty() && rest.iter().all(|d| d == first) => {
            groupsnapshot::group_class_for(client, first)
                .await
                .map_err(at("choosing a VolumeGroupSnapshotClass"))?
        }
        _ => None,
    };
    if let Some(class) = group_class {
        return Ok(SnapshotPlan::Group { class });
    }
    let mut classes = Vec::new();
    for (p, driver) in pvcs.iter().zip(&drivers) {
        let pvc_id = format!("{namespace}/{}", p.pvc);
        classes.push(
            snapshot::snapshot_class_for(client, driver, &pvc_id, &cfg.snapshot_classes)
                .await
                .map_err(at("choosing a VolumeSnapshotClass"))?,
        );
    }
    Ok(SnapshotPlan::PerVolume(classes))
}

/// The VM object and its PVCs as they are now (every field, also those we do not model), as
/// the files of the backup's resources archive.
async fn vm_objects(
    client: &Client,
    namespace: &str,
    vm: &VirtualMachine,
    pvcs: &[PvcVolume],
) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![(
        "virtualmachine.json".to_string(),
        serde_json::to_vec_pretty(vm).unwrap_or_default(),
    )];
    for p in pvcs {
        if let Ok(Some(mut pvc)) =
            Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace)
                .get_opt(&p.pvc)
                .await
        {
            // Cleanup removed it already; a restore must never recreate it in any case.
            if let Some(l) = pvc.metadata.labels.as_mut() {
                l.remove(labels::GROUP_SNAPSHOT);
            }
            files.push((
                format!("pvc-{}.json", p.pvc),
                serde_json::to_vec_pretty(&pvc).unwrap_or_default(),
            ));
        }
    }
    files
}

/// Freeze → snapshots (or one group snapshot) → thaw → ready → exports → stream. Returns the
/// freeze window and the per-volume stats. The caller cleans up.
#[allow(clippy::too_many_arguments)]
async fn stream(
    client: &Client,
    session: &mut BackupSession,
    namespace: &str,
    name: &str,
    pvcs: &[PvcVolume],
    plan: &SnapshotPlan,
    consistency: Consistency,
    labels: &BTreeMap<String, String>,
    cfg: &BackupConfig,
    backup_id: &str,
) -> Result<(Duration, Vec<repo::VolumeStats>), EngineError> {
    let run = Run {
        client,
        namespace,
        name,
        vm_id: format!("{namespace}/{name}"),
        labels,
        cfg,
        backup_id,
    };
    let (freeze, snap_names, ready) = cut(&run, session, pvcs, plan, consistency).await?;
    let token = export::new_token();
    let secret = cluster::object_name(backup_id, "token");
    export::create_token_secret(client, namespace, &secret, &token, labels)
        .await
        .map_err(run.cl("creating the export token"))?;
    let mut stats = Vec::new();
    for ((p, snap), snap_obj) in pvcs.iter().zip(&snap_names).zip(&ready) {
        stats.push(stream_volume(&run, session, p, snap, snap_obj, &secret, &token).await?);
    }
    Ok((freeze, stats))
}

/// What every step of one VM's snapshot-and-export run needs.
struct Run<'a> {
    client: &'a Client,
    namespace: &'a str,
    name: &'a str,
    vm_id: String,
    labels: &'a BTreeMap<String, String>,
    cfg: &'a BackupConfig,
    backup_id: &'a str,
}

impl Run<'_> {
    /// Wraps a cluster error of `step` with the VM's name.
    fn cl(&self, step: &'static str) -> impl FnOnce(ClusterError) -> EngineError {
        let vm = self.vm_id.clone();
        move |source| EngineError::Cluster { vm, step, source }
    }
}

/// Freeze (when application-consistent), cut the snapshots or the group, thaw at once, wait
/// until they are ready. Returns the freeze window, the snapshot names (the group's members for
/// a group) and the ready snapshots.
async fn cut(
    run: &Run<'_>,
    session: &mut BackupSession,
    pvcs: &[PvcVolume],
    plan: &SnapshotPlan,
    consistency: Consistency,
) -> Result<(Duration, Vec<String>, Vec<VolumeSnapshot>), EngineError> {
    let Run {
        client,
        namespace,
        name,
        labels,
        cfg,
        backup_id,
        ..
    } = *run;
    let vm_id = &run.vm_id;
    let cl = |step: &'static str| run.cl(step);
    let pvc_names: Vec<String> = pvcs.iter().map(|p| p.pvc.clone()).collect();
    let group = cluster::object_name(backup_id, "group");
    if let SnapshotPlan::Group { class } = plan {
        // The group selects the PVCs by this label; set before the freeze, removed by cleanup.
        groupsnapshot::label_pvcs(client, namespace, &pvc_names, backup_id)
            .await
            .map_err(cl("labelling the PVCs for the VolumeGroupSnapshot"))?;
        tracing::info!(vm = %vm_id, group = %group, class = %class, pvcs = pvc_names.len(),
            "one VolumeGroupSnapshot for all PVCs");
    }
    let mut failed_freeze = None;
    let guest = if consistency == Consistency::ApplicationConsistent {
        match FrozenGuest::freeze(client, namespace, name, cfg.unfreeze_timeout).await {
            Ok(g) => Some(g),
            Err(e) => {
                let failure = match &e {
                    ClusterError::Freeze { failure, .. } => *failure,
                    _ => FreezeFailure::Refused,
                };
                tracing::warn!(vm = %vm_id, error = %e,
                    "freeze failed: backing up crash-consistent ({failure})");
                session.set_consistency(Consistency::FreezeFailed(failure));
                failed_freeze = Some(failure);
                None
            }
        }
    } else {
        None
    };
    let mut snap_names: Vec<String> = pvcs
        .iter()
        .map(|p| cluster::object_name(backup_id, &p.volume))
        .collect();
    let cut = async {
        match plan {
            SnapshotPlan::PerVolume(classes) => {
                for ((p, class), snap) in pvcs.iter().zip(classes).zip(&snap_names) {
                    snapshot::create_snapshot(client, namespace, snap, &p.pvc, class, labels)
                        .await?;
                }
                snapshot::wait_for(
                    client,
                    namespace,
                    &snap_names,
                    snapshot::Until::Created,
                    cfg.snapshot_created_timeout,
                )
                .await
                .map(drop)
            }
            SnapshotPlan::Group { class } => {
                groupsnapshot::create_group(client, namespace, &group, class, backup_id, labels)
                    .await?;
                groupsnapshot::wait_for(
                    client,
                    namespace,
                    &group,
                    snapshot::Until::Created,
                    cfg.snapshot_created_timeout,
                )
                .await
                .map(drop)
            }
        }
    }
    .await;
    // Thaw now: every snapshot (or the group) is cut, or the cut failed. Never later than this.
    let freeze = match guest {
        Some(g) => g.thaw().await.map_err(cl("thawing the guest"))?,
        None => Duration::ZERO,
    };
    if let Some(failure) = failed_freeze {
        // A freeze that failed on our side may still have frozen the guest: thaw to be sure.
        if let Err(e) = cluster::freeze::unfreeze(client, namespace, name).await {
            tracing::debug!(vm = %vm_id, error = %e, "thaw after a failed freeze ({failure})");
        }
    }
    let ready = match plan {
        SnapshotPlan::PerVolume(_) => {
            cut.map_err(cl("cutting the snapshots"))?;
            snapshot::wait_for(
                client,
                namespace,
                &snap_names,
                snapshot::Until::Ready,
                cfg.snapshot_ready_timeout,
            )
            .await
            .map_err(cl("waiting for the snapshots"))?
        }
        SnapshotPlan::Group { .. } => {
            cut.map_err(cl("cutting the VolumeGroupSnapshot"))?;
            groupsnapshot::wait_for(
                client,
                namespace,
                &group,
                snapshot::Until::Ready,
                cfg.snapshot_ready_timeout,
            )
            .await
            .map_err(cl("waiting for the VolumeGroupSnapshot"))?;
            // From here on the members are read like the run's own snapshots.
            snap_names = groupsnapshot::members(
                client,
                namespace,
                &group,
                &pvc_names,
                cfg.snapshot_created_timeout,
            )
            .await
            .map_err(cl("finding the VolumeGroupSnapshot's member snapshots"))?;
            snapshot::wait_for(
                client,
                namespace,
                &snap_names,
                snapshot::Until::Ready,
                cfg.snapshot_ready_timeout,
            )
            .await
            .map_err(cl("waiting for the VolumeGroupSnapshot's member snapshots"))?
        }
    };

    Ok((freeze, snap_names, ready))
}

/// Exports one ready snapshot (a PVC from it, a VirtualMachineExport) and streams the image
/// into the session.
async fn stream_volume(
    run: &Run<'_>,
    session: &mut BackupSession,
    p: &PvcVolume,
    snap: &str,
    snap_obj: &VolumeSnapshot,
    secret: &str,
    token: &str,
) -> Result<repo::VolumeStats, EngineError> {
    let Run {
        client,
        namespace,
        labels,
        cfg,
        backup_id,
        ..
    } = *run;
    let vm_id = &run.vm_id;
    let cl = |step: &'static str| run.cl(step);
    let src = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace)
        .get(&p.pvc)
        .await
        .map_err(ClusterError::api(
            "reading",
            "PersistentVolumeClaim",
            format!("{namespace}/{}", p.pvc),
        ))
        .map_err(cl("reading the PVC"))?;
    let size = snap_obj
        .status
        .as_ref()
        .and_then(|s| s.restore_size.clone())
        .or_else(|| {
            src.status
                .as_ref()
                .and_then(|s| s.capacity.as_ref())
                .and_then(|c| c.get("storage").cloned())
        })
        .ok_or_else(|| EngineError::Vm {
            vm: vm_id.clone(),
            message: format!(
                "snapshot {snap} has no restoreSize and PVC {} no capacity",
                p.pvc
            ),
        })?;
    let tmp = cluster::object_name(backup_id, &format!("{}-tmp", p.volume));
    export::pvc_from_snapshot(
        client,
        namespace,
        &tmp,
        snap,
        &size,
        &src.spec.clone().unwrap_or_default(),
        labels,
    )
    .await
    .map_err(cl("creating a PVC from the snapshot"))?;
    let exp = cluster::object_name(backup_id, &format!("{}-x", p.volume));
    export::create_export(
        client,
        namespace,
        &exp,
        &tmp,
        secret,
        cfg.export_ttl,
        labels,
    )
    .await
    .map_err(cl("creating the VirtualMachineExport"))?;
    let links = export::wait_ready(client, namespace, &exp, cfg.export_timeout)
        .await
        .map_err(cl("waiting for the export"))?;
    let url = links.volumes[0].raw_url.clone();
    let source = HttpSource::open(
        &url,
        vec![(export::TOKEN_HEADER.to_string(), token.to_string())],
        Some(links.ca_pem.as_bytes()),
        None,
    )
    .await
    .map_err(|source| EngineError::Repo {
        vm: vm_id.clone(),
        step: "opening the exported disk image",
        source,
    })?;
    let source = ThrottledSource::wrap(Arc::new(source), cfg.read_limit.clone());
    let st = session
        .write_volume(&p.volume, source, None)
        .await
        .map_err(|source| EngineError::Repo {
            vm: vm_id.clone(),
            step: "streaming the disk image",
            source,
        })?;
    Ok(st)
}

/// The status record of `vm` in the namespace's status ConfigMap, if any.
pub async fn read_status(client: &Client, namespace: &str, vm: &str) -> Option<BackupStatusRecord> {
    let value = read_status_entry(client, namespace, labels::STATUS_CONFIGMAP, vm).await?;
    serde_json::from_str(&value).ok()
}

/// Writes `record` under key `vm` of the namespace's status ConfigMap (created when missing).
pub async fn write_status(
    client: &Client,
    namespace: &str,
    vm: &str,
    record: &BackupStatusRecord,
) -> Result<(), ClusterError> {
    let value = serde_json::to_string(record).unwrap_or_default();
    write_status_entry(client, namespace, labels::STATUS_CONFIGMAP, vm, value).await
}

/// The value under `key` of the status ConfigMap `name` in `namespace`, if any.
pub async fn read_status_entry(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Option<String> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .ok()??;
    cm.data?.remove(key)
}

/// Writes `value` under `key` of the status ConfigMap `name` (labelled
/// [`labels::STATUS`]`=true` so the exporter reads it), created when missing.
pub async fn write_status_entry(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
    value: String,
) -> Result<(), ClusterError> {
    let api = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    let object = format!("{namespace}/{name}");
    if api
        .get_opt(name)
        .await
        .map_err(ClusterError::api("reading", "ConfigMap", &object))?
        .is_none()
    {
        let cm = ConfigMap {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some(BTreeMap::from([
                    (labels::STATUS.to_string(), "true".to_string()),
                    (
                        labels::MANAGED_BY.to_string(),
                        labels::MANAGED_BY_VALUE.to_string(),
                    ),
                ])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(key.to_string(), value.clone())])),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &cm).await {
            Ok(_) => return Ok(()),
            // Someone created it meanwhile: fall through to the patch.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(ClusterError::api("creating", "ConfigMap", &object)(e)),
        }
    }
    let patch = serde_json::json!({ "data": { key: value } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
        .map_err(ClusterError::api("updating", "ConfigMap", &object))
}
