//! Incremental backups through KubeVirt's changed block tracking (CBT): `backup.kubevirt.io/
//! v1alpha1` VirtualMachineBackup in **pull** mode.
//!
//! Used instead of snapshots + export when the VM's `status.changedBlockTracking.state` is
//! `Enabled` and its VMI is Running (KubeVirt backs up running VMs only); otherwise the
//! snapshot path of [`super::backup`] runs.
//!
//! Per run:
//! 1. a VirtualMachineBackupTracker `virtguard-<vm>` (persistent, one per VM, labelled
//!    `app.kubernetes.io/managed-by=virtguard` but *not* with a backup id, so `virtguard cleanup`
//!    leaves it: it is the base of the next incremental backup) — created when missing;
//! 2. the parent backup in the repository recorded the checkpoint it was read from in its
//!    manifest label [`CHECKPOINT_LABEL`]. Only when that equals the tracker's
//!    `status.latestCheckpoint.name` is the backup incremental; otherwise (no parent, parent from
//!    the snapshot path, a run that failed after KubeVirt moved the tracker, someone else using
//!    the tracker) `spec.forceFullBackup: true` makes KubeVirt take a full one. This is what
//!    makes "unchanged since the base checkpoint" mean "equal to the parent's chunks";
//! 3. a token Secret and the VirtualMachineBackup (both labelled `virtguard.io/backup-id`),
//!    `skipQuiesce` unless the guest is application-consistent-capable (Running + agent): the
//!    freeze and thaw are KubeVirt's own around its checkpoint, virtguard never freezes on this
//!    path;
//! 4. wait for condition `Ready=True` (fail on `Failed=True` with its message), then per volume:
//!    `Incremental` → GET the `mapEndpoint` (JSON extents `[{start, length, zero}]`, see
//!    virtguard-sim's `cbt` module), and [`BackupSession::write_volume_changed`] reads only the
//!    chunks the extents touch from the `dataEndpoint` (Range requests, token header, the
//!    backup's `endpointCert`) and reuses the parent's chunk ids for the rest; `Full` → the whole
//!    `dataEndpoint` image through [`BackupSession::write_volume`] (zero and dedup checks as
//!    usual);
//! 5. the manifest gets [`CHECKPOINT_LABEL`] (the new checkpoint) and [`TYPE_LABEL`]; the
//!    VirtualMachineBackup is deleted on every path (which ends KubeVirt's pull session), the
//!    Secret by the run's cleanup.
//!
//! The freeze window reported is an upper bound: from creating the VirtualMachineBackup to
//! seeing it Ready. When a quiesce was asked for and the VMI's
//! `status.changedBlockTracking.backupStatus` does not report `quiesceStatus: Succeeded` for
//! this backup, KubeVirt has read the volumes without quiescing: the backup goes on
//! crash-consistent with [`FreezeFailure::QuiesceFailed`], as a failed freeze does on the
//! snapshot path, and a freeze window of zero. An image is never recorded as
//! application-consistent when it is not.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use kube::{Api, Client};
use serde::Deserialize;
use virtguard_api::labels;
use virtguard_api::status::{Consistency, FreezeFailure};
use virtguard_api::{
    TypedLocalObjectReference, VirtualMachine, VirtualMachineBackup, VirtualMachineBackupSpec,
    VirtualMachineBackupStatus, VirtualMachineInstance,
};

use super::config::{BackupConfig, PvcVolume};
use super::EngineError;
use crate::cluster::{self, export, ClusterError};
use crate::repo::throttle::ThrottledSource;
use crate::repo::{self, BackupSession, HttpSource};

/// Manifest label: the CBT checkpoint the backup was read at.
pub const CHECKPOINT_LABEL: &str = "cbt-checkpoint";
/// Manifest label: `Full` or `Incremental`.
pub const TYPE_LABEL: &str = "cbt-type";

/// One extent of a pull-mode map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Extent {
    /// Byte offset.
    pub start: u64,
    /// Byte length.
    pub length: u64,
    /// The extent reads as zeros.
    #[serde(default)]
    pub zero: bool,
}

/// True when the VM has changed block tracking `Enabled` and its VMI is Running.
pub fn applies(vm: &VirtualMachine, vmi: Option<&VirtualMachineInstance>) -> bool {
    let enabled = vm
        .status
        .as_ref()
        .and_then(|s| s.extra.get("changedBlockTracking"))
        .and_then(|c| c.get("state"))
        .and_then(|s| s.as_str())
        == Some("Enabled");
    enabled && vmi.is_some_and(VirtualMachineInstance::is_running)
}

/// The tracker of `vm` (one per VM, kept between runs).
pub fn tracker_name(vm: &str) -> String {
    let name = format!("virtguard-{vm}");
    if name.len() <= 253 {
        name
    } else {
        let hash = blake3::hash(vm.as_bytes()).to_hex();
        format!("{}-{}", &name[..243], &hash[..8])
    }
}

fn tracker_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            "backup.kubevirt.io",
            "v1alpha1",
            "VirtualMachineBackupTracker",
        ),
        "virtualmachinebackuptrackers",
    )
}

/// Reads (or creates) the VM's tracker; returns its latest checkpoint name.
async fn ensure_tracker(
    client: &Client,
    namespace: &str,
    vm: &str,
) -> Result<Option<String>, ClusterError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &tracker_resource());
    let name = tracker_name(vm);
    let object = format!("{namespace}/{name}");
    let latest = |o: &DynamicObject| {
        o.data
            .pointer("/status/latestCheckpoint/name")
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    if let Some(t) = api.get_opt(&name).await.map_err(ClusterError::api(
        "reading",
        "VirtualMachineBackupTracker",
        &object,
    ))? {
        return Ok(latest(&t));
    }
    let mut t = DynamicObject::new(&name, &tracker_resource()).within(namespace);
    t.metadata.labels = Some(BTreeMap::from([(
        labels::MANAGED_BY.to_string(),
        labels::MANAGED_BY_VALUE.to_string(),
    )]));
    t.data = serde_json::json!({"spec": {"source": {
        "apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": vm}}});
    match api.create(&PostParams::default(), &t).await {
        Ok(t) => Ok(latest(&t)),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(ClusterError::api(
            "creating",
            "VirtualMachineBackupTracker",
            &object,
        )(e)),
    }
}

/// Waits until the backup is Ready (endpoints served) or Failed.
async fn wait_ready(
    api: &Api<VirtualMachineBackup>,
    object: &str,
    name: &str,
    timeout: Duration,
) -> Result<VirtualMachineBackupStatus, EngineError> {
    let vm = object.to_string();
    let deadline = Instant::now() + timeout;
    loop {
        let b = api
            .get(name)
            .await
            .map_err(ClusterError::api("reading", "VirtualMachineBackup", object))
            .map_err(|source| EngineError::Cluster {
                vm: vm.clone(),
                step: "waiting for the VirtualMachineBackup",
                source,
            })?;
        if let Some(st) = b.status {
            let conds = st.conditions.clone().unwrap_or_default();
            let is = |t: &str| {
                conds
                    .iter()
                    .find(|c| c.type_.as_deref() == Some(t) && c.status.as_deref() == Some("True"))
            };
            if let Some(f) = is("Failed") {
                return Err(EngineError::Vm {
                    vm,
                    message: format!(
                        "VirtualMachineBackup {object} failed: {} ({})",
                        f.message.clone().unwrap_or_default(),
                        f.reason.clone().unwrap_or_default()
                    ),
                });
            }
            if is("Ready").is_some() {
                return Ok(st);
            }
        }
        if Instant::now() >= deadline {
            return Err(EngineError::Cluster {
                vm,
                step: "waiting for the VirtualMachineBackup",
                source: ClusterError::Timeout {
                    what: format!("VirtualMachineBackup {object} to become Ready"),
                    waited: timeout,
                },
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads a pull-mode map.
async fn read_map(url: &str, token: &str, ca_pem: &str) -> Result<Vec<Extent>, String> {
    let cert = reqwest::Certificate::from_pem(ca_pem.as_bytes())
        .map_err(|e| format!("invalid endpointCert: {e}"))?;
    let client = reqwest::Client::builder()
        .add_root_certificate(cert)
        .connect_timeout(Duration::from_secs(30))
        .timeout(Duration::from_secs(300))
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))?;
    let mut value = reqwest::header::HeaderValue::from_str(token)
        .map_err(|_| "the token is not a valid header value".to_string())?;
    value.set_sensitive(true);
    let resp = client
        .get(url)
        .header(export::TOKEN_HEADER, value)
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if !resp.status().is_success() {
        return Err(format!("map endpoint answered {}", resp.status()));
    }
    resp.json::<Vec<Extent>>().await.map_err(|e| {
        format!(
            "map endpoint sent an invalid extent list: {}",
            e.without_url()
        )
    })
}

/// The CBT counterpart of the snapshot path's `stream`: returns the freeze window (upper
/// bound) and per-volume stats. The caller cleans up the run's labelled objects.
#[allow(clippy::too_many_arguments)]
pub async fn stream(
    client: &Client,
    session: &mut BackupSession,
    namespace: &str,
    name: &str,
    pvcs: &[PvcVolume],
    consistency: Consistency,
    labels: &BTreeMap<String, String>,
    cfg: &BackupConfig,
    backup_id: &str,
) -> Result<(Duration, Vec<repo::VolumeStats>), EngineError> {
    let vm_id = format!("{namespace}/{name}");
    let cl = |step: &'static str| {
        let vm = vm_id.clone();
        move |source: ClusterError| EngineError::Cluster { vm, step, source }
    };
    let latest = ensure_tracker(client, namespace, name)
        .await
        .map_err(cl("reading the VirtualMachineBackupTracker"))?;
    let parent_checkpoint = session
        .parent_manifest()
        .and_then(|m| m.labels.get(CHECKPOINT_LABEL).cloned());
    let incremental = parent_checkpoint.is_some() && parent_checkpoint == latest;

    let token = export::new_token();
    let secret = cluster::object_name(backup_id, "token");
    export::create_token_secret(client, namespace, &secret, &token, labels)
        .await
        .map_err(cl("creating the backup token"))?;

    let vmb_name = cluster::object_name(backup_id, "cbt");
    let object = format!("{namespace}/{vmb_name}");
    let api = Api::<VirtualMachineBackup>::namespaced(client.clone(), namespace);
    let mut vmb = VirtualMachineBackup::new(
        &vmb_name,
        Some(namespace),
        VirtualMachineBackupSpec {
            source: Some(TypedLocalObjectReference {
                api_group: Some("backup.kubevirt.io".into()),
                kind: Some("VirtualMachineBackupTracker".into()),
                name: Some(tracker_name(name)),
                ..Default::default()
            }),
            mode: Some("Pull".into()),
            skip_quiesce: Some(consistency != Consistency::ApplicationConsistent),
            force_full_backup: Some(!incremental),
            token_secret_ref: Some(secret.clone()),
            ttl_duration: Some(cluster::go_duration(cfg.export_ttl)),
            ..Default::default()
        },
    );
    vmb.metadata.labels = Some(labels.clone());
    let created = Instant::now();
    api.create(&PostParams::default(), &vmb)
        .await
        .map_err(ClusterError::api(
            "creating",
            "VirtualMachineBackup",
            &object,
        ))
        .map_err(cl("creating the VirtualMachineBackup"))?;

    let result = async {
        let st = wait_ready(&api, &object, &vmb_name, cfg.export_timeout).await?;
        let window = created.elapsed();
        // Like a failed freeze on the snapshot path: no application-consistent claim for an
        // image KubeVirt could not quiesce.
        let quiesce = read_quiesce(client, namespace, name, &vmb_name).await;
        if consistency == Consistency::ApplicationConsistent
            && quiesce.as_deref() != Some("Succeeded")
        {
            tracing::warn!(vm = %vm_id, quiesce_status = quiesce.as_deref().unwrap_or("(none)"),
                "KubeVirt could not quiesce the guest for VirtualMachineBackup {object}: backing up crash-consistent");
            session.set_consistency(Consistency::FreezeFailed(FreezeFailure::QuiesceFailed));
        }
        let stats = pull(session, namespace, name, pvcs, &st, &token, &object, cfg).await?;
        Ok::<_, EngineError>((window, st, stats))
    }
    .await;
    // End KubeVirt's pull session on every path.
    match api.delete(&vmb_name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => tracing::warn!(vm = %vm_id, error = %e,
            "deleting VirtualMachineBackup {object} failed; delete it by hand"),
    }
    let (window, st, stats) = result?;
    let checkpoint = st.checkpoint_name.clone().unwrap_or_default();
    let typ = st.type_.clone().unwrap_or_default();
    session.set_label(CHECKPOINT_LABEL, &checkpoint);
    session.set_label(TYPE_LABEL, &typ);
    let quiesced = session.consistency() == Consistency::ApplicationConsistent;
    tracing::info!(vm = %vm_id, checkpoint = %checkpoint, kind = %typ, "changed block tracking backup read");
    Ok((if quiesced { window } else { Duration::ZERO }, stats))
}

/// `quiesceStatus` of backup `backup` from the VMI's `status.changedBlockTracking.backupStatus`.
async fn read_quiesce(
    client: &Client,
    namespace: &str,
    name: &str,
    backup: &str,
) -> Option<String> {
    let vmi = Api::<VirtualMachineInstance>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .ok()??;
    let st = vmi
        .status?
        .extra
        .get("changedBlockTracking")?
        .get("backupStatus")?
        .clone();
    if st.get("backupName")?.as_str()? != backup {
        return None;
    }
    st.get("quiesceStatus")?.as_str().map(str::to_string)
}

#[allow(clippy::too_many_arguments)]
async fn pull(
    session: &mut BackupSession,
    namespace: &str,
    name: &str,
    pvcs: &[PvcVolume],
    st: &VirtualMachineBackupStatus,
    token: &str,
    object: &str,
    cfg: &BackupConfig,
) -> Result<Vec<repo::VolumeStats>, EngineError> {
    let vm_id = format!("{namespace}/{name}");
    let bad = |message: String| EngineError::Vm {
        vm: vm_id.clone(),
        message,
    };
    let incremental = st.type_.as_deref() == Some("Incremental");
    let ca = st.endpoint_cert.clone().ok_or_else(|| {
        bad(format!(
            "VirtualMachineBackup {object} is Ready but has no endpointCert"
        ))
    })?;
    let included = st.included_volumes.clone().unwrap_or_default();
    let mut stats = Vec::new();
    for p in pvcs {
        let info = included
            .iter()
            .find(|v| v.volume_name.as_deref() == Some(p.volume.as_str()))
            .ok_or_else(|| {
                bad(format!(
                    "volume {} is not in the includedVolumes of VirtualMachineBackup {object}",
                    p.volume
                ))
            })?;
        let data = info.data_endpoint.clone().ok_or_else(|| {
            bad(format!(
                "VirtualMachineBackup {object}: volume {} has no dataEndpoint",
                p.volume
            ))
        })?;
        let repo_err = |step: &'static str| {
            let vm = vm_id.clone();
            move |source: crate::repo::Error| EngineError::Repo { vm, step, source }
        };
        let source = HttpSource::open(
            &data,
            vec![(export::TOKEN_HEADER.to_string(), token.to_string())],
            Some(ca.as_bytes()),
            None,
        )
        .await
        .map_err(repo_err("opening the backup's data endpoint"))?;
        let source = ThrottledSource::wrap(Arc::new(source), cfg.read_limit.clone());
        let st = if incremental {
            let map_url = info.map_endpoint.clone().ok_or_else(|| {
                bad(format!(
                    "VirtualMachineBackup {object}: volume {} has no mapEndpoint",
                    p.volume
                ))
            })?;
            let extents = read_map(&map_url, token, &ca).await.map_err(|m| {
                bad(format!(
                    "reading the map of volume {} of VirtualMachineBackup {object}: {m}",
                    p.volume
                ))
            })?;
            let changed: Vec<(u64, u64)> = extents.iter().map(|e| (e.start, e.length)).collect();
            session
                .write_volume_changed(&p.volume, source, &changed)
                .await
                .map_err(repo_err("streaming the changed extents"))?
        } else {
            session
                .write_volume(&p.volume, source, None)
                .await
                .map_err(repo_err("streaming the disk image"))?
        };
        stats.push(st);
    }
    Ok(stats)
}
