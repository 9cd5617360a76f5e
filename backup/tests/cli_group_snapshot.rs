//! VolumeGroupSnapshots through the real `virtguard` binary against the simulated cluster: a
//! two-disk VM whose CSI driver has a VolumeGroupSnapshotClass is cut by one group snapshot (no
//! VolumeSnapshot of its own), at one instant for both disks, thawed between the group's
//! `creationTime` and `readyToUse`; VMs it does not apply to keep per-PVC snapshots; a failed
//! group, SIGTERM and a killed run followed by `virtguard cleanup` leave nothing behind — and
//! the VM's PVCs keep existing, without the selection label.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::text;

use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::ListParams;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use sha2::{Digest, Sha256};
use virtguard_api::{labels, VolumeGroupSnapshot, VolumeSnapshot};
use virtguard_sim::{FaultRule, FreezeAction, Sim};

const SCENARIO: &str = r#"
namespaces: [prod]
storageClasses:
  - {name: fast, driver: fast.csi.example, default: true, snapshotClass: fast-snap, groupSnapshotClass: fast-group}
  - {name: other, driver: other.csi.example, snapshotClass: other-snap}
vms:
  - namespace: prod
    name: db
    disks:
      - {name: root, size: 6Mi, content: {random: 41}}
      - {name: data, size: 4Mi, content: {random: 42}, used: 3Mi}
  - namespace: prod
    name: solo
    disks:
      - {name: root, size: 2Mi, content: {random: 43}}
  - namespace: prod
    name: mixed
    disks:
      - {name: root, size: 2Mi, content: {random: 44}}
      - {name: data, size: 2Mi, storageClass: other, content: {random: 45}}
"#;

/// `snapshotReadyMs` of the sim's default timings: readyToUse comes this long after the cut.
const READY_MS: i64 = 800;

async fn sim() -> Sim {
    common::cluster::start_sim(SCENARIO, &["prod/db", "prod/solo", "prod/mixed"])
        .await
        .0
}

fn command(sim: &Sim, repo: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_virtguard"));
    c.args(["--repo", repo.to_str().unwrap(), "--quiet"])
        .args(args)
        .env("KUBECONFIG", sim.kubeconfig_path())
        .env_remove("VIRTGUARD_KEY")
        .stdin(Stdio::null());
    c
}

/// Runs the binary; blocks this worker only (the sim keeps serving on the others).
fn virtguard(sim: &Sim, repo: &std::path::Path, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| command(sim, repo, args).output().unwrap())
}

fn init_repo(sim: &Sim) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let o = virtguard(sim, &repo, &["init", "--chunk-size", "1MiB"]);
    assert!(o.status.success(), "{}", text(&o));
    (dir, repo)
}

fn sha(path: &std::path::Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// Freeze log of VMI `prod/<vm>` (successful calls only).
fn freezes(sim: &Sim, vm: &str) -> Vec<virtguard_sim::FreezeRecord> {
    let id = format!("prod/{vm}");
    sim.freeze_log()
        .into_iter()
        .filter(|r| r.vmi == id && r.status == 200)
        .collect()
}

/// What the API watches saw during a run.
#[derive(Default)]
struct Seen {
    groups: Vec<VolumeGroupSnapshot>,
    snapshots: Vec<VolumeSnapshot>,
    /// The precise cut instant: the Unix-ns `creationTime` in the group content's
    /// `volumeSnapshotInfoList` (the group's own `creationTime` has one-second resolution).
    cut: Option<DateTime<Utc>>,
    /// When the watch first showed the group `readyToUse` (at or after the real moment).
    ready_seen: Option<DateTime<Utc>>,
}

/// Watches VolumeGroupSnapshots and VolumeSnapshots in prod. As soon as a group has
/// `creationTime`, `on_cut` runs once (the test's "guest" writes to its disks there).
fn watch(
    client: &kube::Client,
    on_cut: impl Fn() + Send + 'static,
) -> (Arc<Mutex<Seen>>, Vec<tokio::task::JoinHandle<()>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let groups = Api::<VolumeGroupSnapshot>::namespaced(client.clone(), "prod");
    let contents: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(
                "groupsnapshot.storage.k8s.io",
                "v1beta2",
                "VolumeGroupSnapshotContent",
            ),
            "volumegroupsnapshotcontents",
        ),
    );
    let s = seen.clone();
    let g = tokio::spawn(async move {
        let mut stream = watcher(groups, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(Ok(group)) = stream.next().await {
            let now = Utc::now();
            let status = group.status.clone().unwrap_or_default();
            let first_cut = status.creation_time.is_some() && s.lock().unwrap().cut.is_none();
            if first_cut {
                on_cut();
                let name = status
                    .bound_volume_group_snapshot_content_name
                    .clone()
                    .unwrap();
                let content = serde_json::to_value(contents.get(&name).await.unwrap()).unwrap();
                let nanos = content["status"]["volumeSnapshotInfoList"][0]["creationTime"]
                    .as_i64()
                    .unwrap();
                s.lock().unwrap().cut = Some(DateTime::from_timestamp_nanos(nanos));
            }
            let mut seen = s.lock().unwrap();
            if status.ready_to_use == Some(true) && seen.ready_seen.is_none() {
                seen.ready_seen = Some(now);
            }
            seen.groups.push(group);
        }
    });
    let snapshots = Api::<VolumeSnapshot>::namespaced(client.clone(), "prod");
    let s = seen.clone();
    let v = tokio::spawn(async move {
        let mut stream = watcher(snapshots, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(Ok(snap)) = stream.next().await {
            s.lock().unwrap().snapshots.push(snap);
        }
    });
    (seen, vec![g, v])
}

fn has_label(m: &ObjectMeta, key: &str) -> bool {
    m.labels.as_ref().is_some_and(|l| l.contains_key(key))
}

fn owned_by_group(m: &ObjectMeta) -> bool {
    m.owner_references
        .as_ref()
        .is_some_and(|o| o.iter().any(|r| r.kind == "VolumeGroupSnapshot"))
}

/// The cluster is as before the run: no group, no snapshot, no content, nothing labelled by a
/// run, and the VM's PVCs exist without the selection label.
async fn assert_nothing_left(sim: &Sim, vm_pvcs: &[&str]) {
    let client = sim.client().await.unwrap();
    assert_eq!(common::cluster::leftovers(&client).await, 0);
    let groups = Api::<VolumeGroupSnapshot>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(groups.items.is_empty(), "{:?}", groups.items);
    let snaps = Api::<VolumeSnapshot>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        snaps.items.is_empty(),
        "member snapshots left: {:?}",
        snaps.items
    );
    for (group, version, kind, plural) in [
        (
            "groupsnapshot.storage.k8s.io",
            "v1beta2",
            "VolumeGroupSnapshotContent",
            "volumegroupsnapshotcontents",
        ),
        (
            "snapshot.storage.k8s.io",
            "v1",
            "VolumeSnapshotContent",
            "volumesnapshotcontents",
        ),
    ] {
        let api: Api<DynamicObject> = Api::all_with(
            client.clone(),
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(group, version, kind),
                plural,
            ),
        );
        let left = api.list(&ListParams::default()).await.unwrap();
        assert!(left.items.is_empty(), "{kind} left: {:?}", left.items);
    }
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), "prod");
    for name in vm_pvcs {
        let pvc = pvcs.get_opt(name).await.unwrap();
        let pvc = pvc.unwrap_or_else(|| panic!("the VM's PVC {name} must never be deleted"));
        assert!(
            !has_label(&pvc.metadata, labels::GROUP_SNAPSHOT),
            "{name} keeps {}: {:?}",
            labels::GROUP_SNAPSHOT,
            pvc.metadata.labels
        );
    }
}

fn manifest_labels(sim: &Sim, repo: &std::path::Path, vm: &str) -> serde_json::Value {
    let o = virtguard(sim, repo, &["list", "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["vm"] == vm)
        .unwrap_or_else(|| panic!("no backup of {vm}: {list}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let o = virtguard(
        sim,
        repo,
        &["show", &format!("prod/{vm}/{id}"), "-o", "json"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    m["labels"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_disk_vm_is_cut_by_one_volume_group_snapshot() {
    let sim = sim().await;
    let client = sim.client().await.unwrap();
    let (dir, repo) = init_repo(&sim);
    let disks = [
        ("root", sim.pvc_path("prod", "db-root").unwrap()),
        ("data", sim.pvc_path("prod", "db-data").unwrap()),
    ];
    let want: Vec<String> = disks.iter().map(|(_, p)| sha(p)).collect();
    let paths: Vec<_> = disks.iter().map(|(_, p)| p.clone()).collect();
    // The "guest" writes to both disks right after the cut: in neither backup image.
    let (seen, tasks) = watch(&client, move || {
        use std::io::{Seek, SeekFrom, Write};
        for p in &paths {
            let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            f.seek(SeekFrom::Start(8192)).unwrap();
            f.write_all(&[0xEE; 64 * 1024]).unwrap();
        }
    });

    let o = virtguard(&sim, &repo, &["backup", "--vm", "prod/db"]);
    assert!(o.status.success(), "{}", text(&o));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for t in tasks {
        t.abort();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());

    // One group, labelled like every object of the run, selecting the PVCs by the run's label.
    let names: std::collections::BTreeSet<_> = seen
        .groups
        .iter()
        .filter_map(|g| g.metadata.name.clone())
        .collect();
    assert_eq!(names.len(), 1, "exactly one VolumeGroupSnapshot: {names:?}");
    let group = seen.groups.last().unwrap();
    let run_labels = group.metadata.labels.clone().unwrap();
    let backup_id = run_labels[labels::BACKUP_ID].clone();
    assert_eq!(run_labels[labels::MANAGED_BY], labels::MANAGED_BY_VALUE);
    let spec = group.spec.clone().unwrap();
    assert_eq!(
        spec.volume_group_snapshot_class_name.as_deref(),
        Some("fast-group")
    );
    assert_eq!(
        spec.source.unwrap().selector.unwrap().match_labels.unwrap(),
        std::collections::BTreeMap::from([(labels::GROUP_SNAPSHOT.to_string(), backup_id.clone())])
    );
    // Every VolumeSnapshot of the run is a member of that group: virtguard made none itself.
    let snap_names: std::collections::BTreeSet<_> = seen
        .snapshots
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    assert_eq!(snap_names.len(), 2, "one member per disk: {snap_names:?}");
    for s in &seen.snapshots {
        assert!(
            owned_by_group(&s.metadata),
            "a VolumeSnapshot not from the group: {s:?}"
        );
        assert!(!has_label(&s.metadata, labels::BACKUP_ID), "{s:?}");
    }

    // Thawed after the cut and before readyToUse.
    let log = freezes(&sim, "db");
    assert_eq!(
        log.iter().map(|r| r.action).collect::<Vec<_>>(),
        [FreezeAction::Freeze, FreezeAction::Unfreeze],
        "{log:?}"
    );
    let (frozen, thawed) = (log[0].at, log[1].at);
    let cut = seen.cut.expect("the group was cut");
    let ready = seen.ready_seen.expect("the group became ready");
    assert!(frozen < cut, "frozen {frozen} before the cut {cut}");
    assert!(thawed >= cut, "thawed {thawed} before the cut {cut}");
    assert!(
        thawed < cut + chrono::Duration::milliseconds(READY_MS) && thawed < ready,
        "thawed {thawed}: must be before readyToUse ({READY_MS} ms after the cut {cut}, seen {ready})"
    );

    // The manifest records the group snapshot; each volume is its disk at the cut.
    let m = manifest_labels(&sim, &repo, "db");
    assert_eq!(m["group-snapshot-class"], "fast-group", "{m}");
    for ((vol, path), want) in disks.iter().zip(&want) {
        let out = dir.path().join(format!("{vol}.img"));
        let o = virtguard(
            &sim,
            &repo,
            &[
                "restore-file",
                &format!("prod/db/{backup_id}"),
                vol,
                out.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(
            &sha(&out),
            want,
            "volume {vol} is the disk at the group's instant"
        );
        assert_ne!(
            &sha(path),
            want,
            "the write after the cut is on the live disk {vol}"
        );
    }
    assert_nothing_left(&sim, &["db-root", "db-data"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn vms_a_group_does_not_fit_keep_one_volume_snapshot_per_pvc() {
    let sim = sim().await;
    let client = sim.client().await.unwrap();
    let (_dir, repo) = init_repo(&sim);
    let (seen, tasks) = watch(&client, || {});
    // One disk (a group adds nothing) and two drivers (no group can span them).
    for vm in ["prod/solo", "prod/mixed"] {
        let o = virtguard(&sim, &repo, &["backup", "--vm", vm]);
        assert!(o.status.success(), "{}", text(&o));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for t in tasks {
        t.abort();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(seen.groups.is_empty(), "{:?}", seen.groups);
    let names: std::collections::BTreeSet<_> = seen
        .snapshots
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    for s in &seen.snapshots {
        assert!(has_label(&s.metadata, labels::BACKUP_ID) && !owned_by_group(&s.metadata));
    }
    for vm in ["solo", "mixed"] {
        let m = manifest_labels(&sim, &repo, vm);
        assert!(m.get("group-snapshot-class").is_none(), "{vm}: {m}");
    }
    assert_nothing_left(&sim, &["solo-root", "mixed-root", "mixed-data"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_group_snapshot_thaws_names_the_group_and_leaves_nothing() {
    let sim = sim().await;
    sim.inject(FaultRule {
        op: "group-snapshot-error".into(),
        target: Some("prod/db-data".into()),
        message: Some("consistency group quota exceeded".into()),
        ..Default::default()
    });
    let (_dir, repo) = init_repo(&sim);
    let o = virtguard(&sim, &repo, &["backup", "--vm", "prod/db"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("prod/db")
            && err.contains("VolumeGroupSnapshot prod/vg-")
            && err.contains("consistency group quota exceeded"),
        "{}",
        text(&o)
    );
    let log = freezes(&sim, "db");
    assert_eq!(
        log.iter().map(|r| r.action).collect::<Vec<_>>(),
        [FreezeAction::Freeze, FreezeAction::Unfreeze],
        "the guest is thawed: {log:?}"
    );
    assert_nothing_left(&sim, &["db-root", "db-data"]).await;
    let o = virtguard(&sim, &repo, &["list", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 0, "no manifest: {list}");
}

/// Starts `backup --vm prod/db` with the group never cut: the run will sit in the freeze window.
fn spawn_stuck_in_the_cut(sim: &Sim, repo: &std::path::Path) -> std::process::Child {
    sim.inject(FaultRule {
        op: "group-snapshot-no-creation-time".into(),
        target: Some("prod/*".into()),
        ..Default::default()
    });
    command(
        sim,
        repo,
        &[
            "backup",
            "--vm",
            "prod/db",
            "--snapshot-created-timeout",
            "120s",
            "--unfreeze-timeout",
            "30s",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

/// True once the guest is frozen and the run's group is bound (false after 20 s).
async fn reached_the_cut(sim: &Sim) -> bool {
    let client = sim.client().await.unwrap();
    let groups = Api::<VolumeGroupSnapshot>::namespaced(client, "prod");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let frozen = freezes(sim, "db").last().map(|r| r.action) == Some(FreezeAction::Freeze);
        let bound = groups.list(&ListParams::default()).await.is_ok_and(|l| {
            l.items.iter().any(|g| {
                g.status
                    .as_ref()
                    .and_then(|s| s.bound_volume_group_snapshot_content_name.as_ref())
                    .is_some()
            })
        });
        if frozen && bound {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_the_group_cut_thaws_and_cleans_up() {
    let sim = sim().await;
    let (_dir, repo) = init_repo(&sim);
    let mut child = spawn_stuck_in_the_cut(&sim, &repo);
    if !reached_the_cut(&sim).await {
        let _ = child.kill();
        let o = child.wait_with_output().unwrap();
        panic!("the run never reached the cut: {}", text(&o));
    }
    let o = common::sigterm_and_wait(child);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("SIGTERM"),
        "{}",
        text(&o)
    );
    assert_eq!(
        freezes(&sim, "db").last().map(|r| r.action),
        Some(FreezeAction::Unfreeze),
        "{}",
        text(&o)
    );
    assert_nothing_left(&sim, &["db-root", "db-data"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_after_a_killed_run_deletes_the_group_and_only_unlabels_the_pvcs() {
    let sim = sim().await;
    let (_dir, repo) = init_repo(&sim);
    let mut child = spawn_stuck_in_the_cut(&sim, &repo);
    let reached = reached_the_cut(&sim).await;
    child.kill().unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(reached, "the run never reached the cut: {}", text(&o));
    let client = sim.client().await.unwrap();
    assert!(
        common::cluster::leftovers(&client).await > 0,
        "a killed run leaves its group and its labels"
    );
    let o = virtguard(&sim, &repo, &["cleanup"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("deleted VolumeGroupSnapshot prod/vg-"),
        "{}",
        text(&o)
    );
    for pvc in ["db-root", "db-data"] {
        assert!(
            out.contains(&format!(
                "deleted label {} of PersistentVolumeClaim prod/{pvc}",
                labels::GROUP_SNAPSHOT
            )),
            "{}",
            text(&o)
        );
    }
    assert_nothing_left(&sim, &["db-root", "db-data"]).await;
}
