//! The CSI snapshot controller split from the sim (`control_plane::snapshotter`) on a real
//! kube-apiserver with the upstream snapshot CRDs: a VolumeSnapshot of a bound PVC is bound to
//! its VolumeSnapshotContent (by uid), becomes `readyToUse` with the volume's size, holds the
//! volume as it was at the cut, and takes its content and copy with it when deleted. A snapshot
//! of a driver without a class reports that in `status.error`.

use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams};
use kube::ResourceExt;
use serde_json::json;
use virtguard_api::{VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent};
use virtguard_e2e::control_plane::snapshotter;
use virtguard_e2e::control_plane::support::{create, eventually};
use virtguard_e2e::{require_peer, ControlPlane};

const NS: &str = "apps";
const DRIVER: &str = "sim.csi.virtguard.io";

/// A PersistentVolume of `driver` whose volume handle is `image`, and PVC `name` bound to it.
async fn volume(client: &kube::Client, name: &str, driver: &str, image: &std::path::Path) {
    create(
        &Api::<PersistentVolume>::all(client.clone()),
        json!({"metadata": {"name": format!("pv-{name}")}, "spec": {
            "capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "csi": {"driver": driver, "volumeHandle": image.display().to_string()},
        }}),
    )
    .await;
    create(
        &Api::<PersistentVolumeClaim>::namespaced(client.clone(), NS),
        json!({"metadata": {"name": name}, "spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": "",
            "volumeName": format!("pv-{name}"),
            "resources": {"requests": {"storage": "1Mi"}},
        }}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_snapshot_is_bound_cut_ready_and_deleted_with_its_content() {
    let cp = require_peer!(ControlPlane::start().await);
    let client = cp.client().await.expect("admin client");
    create(
        &Api::<Namespace>::all(client.clone()),
        json!({"metadata": {"name": NS}}),
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (images, disk) = (dir.path().join("images"), dir.path().join("data.img"));
    std::fs::create_dir(&images).expect("images dir");
    let before = vec![7u8; 1 << 20];
    std::fs::write(&disk, &before).expect("the volume");
    volume(&client, "data", DRIVER, &disk).await;
    volume(&client, "other", "other.csi.example.com", &disk).await;
    create(
        &Api::<VolumeSnapshotClass>::all(client.clone()),
        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
               "metadata": {"name": "sim-snap", "annotations": {"snapshot.storage.kubernetes.io/is-default-class": "true"}},
               "driver": DRIVER, "deletionPolicy": "Delete"}),
    )
    .await;
    let controller = snapshotter::spawn(client.clone(), &images);

    let snapshots = Api::<VolumeSnapshot>::namespaced(client.clone(), NS);
    let snap = |name: &str, pvc: &str| {
        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
               "metadata": {"name": name}, "spec": {"source": {"persistentVolumeClaimName": pvc}}})
    };
    let created = create(&snapshots, snap("snap-1", "data")).await;
    let ready = eventually("snap-1 to be readyToUse", || async {
        let vs = snapshots.get("snap-1").await.map_err(|e| e.to_string())?;
        let ready = vs.status.as_ref().and_then(|s| s.ready_to_use) == Some(true);
        Ok(ready.then_some(vs))
    })
    .await;
    // The volume changes after the cut: the snapshot keeps what it held.
    std::fs::write(&disk, vec![9u8; 1 << 20]).expect("write after the cut");

    let status = ready.status.clone().unwrap_or_default();
    let content_name = format!("snapcontent-{}", created.uid().unwrap_or_default());
    assert_eq!(
        status.bound_volume_snapshot_content_name.as_deref(),
        Some(content_name.as_str())
    );
    assert!(status.creation_time.is_some(), "{status:?}");
    assert_eq!(status.restore_size.map(|q| q.0), Some("1048576".into()));
    assert!(ready
        .finalizers()
        .iter()
        .any(|f| f == snapshotter::FINALIZER));
    let contents = Api::<VolumeSnapshotContent>::all(client.clone());
    let content = contents.get(&content_name).await.expect("the content");
    let spec = content.spec.clone().unwrap_or_default();
    let vs_ref = spec.volume_snapshot_ref.clone().unwrap_or_default();
    assert_eq!(
        (vs_ref.uid.as_deref(), vs_ref.name.as_deref()),
        (created.uid().as_deref(), Some("snap-1"))
    );
    assert_eq!(spec.driver.as_deref(), Some(DRIVER));
    let cstatus = content.status.clone().unwrap_or_default();
    assert_eq!(cstatus.ready_to_use, Some(true));
    assert_eq!(cstatus.restore_size, Some(1 << 20));
    let handle = cstatus.snapshot_handle.clone().expect("a snapshot handle");
    assert!(
        std::fs::read(&handle).expect("the snapshot image") == before,
        "the snapshot does not hold the volume as it was at the cut"
    );

    // No class for the other driver: an error naming it, never ready.
    create(&snapshots, snap("snap-2", "other")).await;
    let error = eventually("snap-2 to report its error", || async {
        let vs = snapshots.get("snap-2").await.map_err(|e| e.to_string())?;
        Ok(vs.status.and_then(|s| s.error).and_then(|e| e.message))
    })
    .await;
    assert!(error.contains("other.csi.example.com"), "{error}");

    snapshots
        .delete("snap-1", &DeleteParams::default())
        .await
        .expect("delete snap-1");
    eventually("snap-1 and its content to be gone", || async {
        let vs = snapshots
            .get_opt("snap-1")
            .await
            .map_err(|e| e.to_string())?;
        let content = contents
            .get_opt(&content_name)
            .await
            .map_err(|e| e.to_string())?;
        Ok((vs.is_none() && content.is_none()).then_some(()))
    })
    .await;
    assert!(
        !std::path::Path::new(&handle).exists(),
        "the copy outlived its content"
    );
    controller.abort();
}
