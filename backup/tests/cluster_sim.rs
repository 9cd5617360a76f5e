//! The cluster layer (freeze, snapshots, exports, cleanup) against the simulated cluster,
//! through a real `kube::Client` over HTTPS.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::{ListParams, PostParams};
use kube::Api;
use sha2::{Digest, Sha256};
use virtguard::cluster::{self, export, freeze::FrozenGuest, snapshot};
use virtguard_api::VolumeSnapshot;
use virtguard_sim::{FreezeAction, Scenario, Sim, SimConfig};

const SCENARIO: &str = r#"
namespaces: [prod]
storageClasses:
  - name: ceph-rbd
    driver: rbd.csi.ceph.com
    default: true
    snapshotClass: ceph-rbd-snap
  - name: local-path
    driver: rancher.io/local-path
vms:
  - namespace: prod
    name: db
    disks:
      - name: root
        size: 8Mi
        content: {random: 7}
  - namespace: prod
    name: legacy
    disks:
      - name: root
        size: 4Mi
        storageClass: local-path
        content: zeros
"#;

async fn start() -> Sim {
    cluster::install_crypto_provider();
    let scenario = Scenario::from_yaml(SCENARIO, "test").unwrap();
    Sim::start(SimConfig {
        scenario,
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn freeze_snapshot_thaw_before_ready_then_export_serves_the_snapshot() {
    let sim = start().await;
    let client = sim.client().await.unwrap();
    common::cluster::wait_running(&client, "prod", "db").await;
    let id = "20261122T010000Z-abcd";
    let labels = cluster::run_labels(id);

    let driver = snapshot::csi_driver_of_pvc(&client, "prod", "db-root")
        .await
        .unwrap();
    assert_eq!(driver, "rbd.csi.ceph.com");
    let class = snapshot::snapshot_class_for(&client, &driver, "prod/db-root", &[])
        .await
        .unwrap();
    assert_eq!(class, "ceph-rbd-snap");

    let guest = FrozenGuest::freeze(&client, "prod", "db", Duration::from_secs(300))
        .await
        .unwrap();
    let snap_name = cluster::object_name(id, "db-root");
    snapshot::create_snapshot(&client, "prod", &snap_name, "db-root", &class, &labels)
        .await
        .unwrap();
    let created = snapshot::wait_for(
        &client,
        "prod",
        std::slice::from_ref(&snap_name),
        snapshot::Until::Created,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_ne!(
        created[0].status.as_ref().unwrap().ready_to_use,
        Some(true),
        "with the sim's default delays the snapshot is cut well before it is ready"
    );
    let window = guest.thaw().await.unwrap();
    assert!(window < Duration::from_secs(5), "{window:?}");

    // Writes after creationTime must not reach the snapshot.
    let pvc_file = sim.pvc_path("prod", "db-root").unwrap();
    let before = std::fs::read(&pvc_file).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&pvc_file)
            .unwrap();
        f.write_all_at(&[0xAB; 4096], 0).unwrap();
    }

    let ready = snapshot::wait_for(
        &client,
        "prod",
        std::slice::from_ref(&snap_name),
        snapshot::Until::Ready,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let size = ready[0]
        .status
        .as_ref()
        .unwrap()
        .restore_size
        .clone()
        .unwrap();

    // The sim's freeze log: freeze, then thaw, and the thaw came before readyToUse.
    let log = sim.freeze_log();
    let ours: Vec<_> = log.iter().filter(|r| r.vmi == "prod/db").collect();
    assert_eq!(ours.len(), 2, "{log:?}");
    assert_eq!(ours[0].action, FreezeAction::Freeze);
    assert_eq!(ours[0].unfreeze_timeout_ms, Some(300_000));
    assert_eq!(ours[1].action, FreezeAction::Unfreeze);

    // Temporary PVC + token + export.
    let src = Api::<PersistentVolumeClaim>::namespaced(client.clone(), "prod")
        .get("db-root")
        .await
        .unwrap();
    let tmp = cluster::object_name(id, "db-root-tmp");
    export::pvc_from_snapshot(
        &client,
        "prod",
        &tmp,
        &snap_name,
        &size,
        src.spec.as_ref().unwrap(),
        &labels,
    )
    .await
    .unwrap();
    let token = export::new_token();
    let secret = cluster::object_name(id, "token");
    export::create_token_secret(&client, "prod", &secret, &token, &labels)
        .await
        .unwrap();
    let exp = cluster::object_name(id, "export");
    export::create_export(
        &client,
        "prod",
        &exp,
        &tmp,
        &secret,
        Duration::from_secs(3600),
        &labels,
    )
    .await
    .unwrap();
    let links = export::wait_ready(&client, "prod", &exp, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(links.volumes.len(), 1);

    // Read the whole image through the export (Range requests, token, CA) and compare.
    let src = virtguard::repo::HttpSource::open(
        &links.volumes[0].raw_url,
        vec![(export::TOKEN_HEADER.to_string(), token.clone())],
        Some(links.ca_pem.as_bytes()),
        None,
    )
    .await
    .unwrap();
    use virtguard::repo::VolumeSource;
    assert_eq!(src.size(), before.len() as u64);
    let mut got = Vec::new();
    let step = 1 << 20;
    let mut off = 0u64;
    while off < src.size() {
        let len = step.min((src.size() - off) as usize);
        got.extend_from_slice(&src.read_at(off, len).await.unwrap());
        off += len as u64;
    }
    assert_eq!(
        hex::encode(Sha256::digest(&got)),
        hex::encode(Sha256::digest(&before)),
        "the export must serve the snapshot's bytes, not the PVC's later writes"
    );

    // A wrong token is refused.
    let bad = virtguard::repo::HttpSource::open(
        &links.volumes[0].raw_url,
        vec![(export::TOKEN_HEADER.to_string(), "wrong".into())],
        Some(links.ca_pem.as_bytes()),
        None,
    )
    .await;
    assert!(bad.is_err(), "a wrong export token must be refused");

    // Cleanup removes exactly what the run created, and nothing it did not.
    let mut foreign = PersistentVolumeClaim::default();
    foreign.metadata.name = Some("user-pvc".into());
    foreign.metadata.labels = Some(BTreeMap::from([(
        virtguard_api::labels::BACKUP_ID.to_string(),
        id.to_string(),
    )]));
    foreign.spec = src_spec_like();
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), "prod")
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    let report = cluster::cleanup::cleanup(&client, Some("prod"), Some(id))
        .await
        .unwrap();
    assert_eq!(report.deleted.len(), 4, "{report:?}");
    let left = |sel: String| {
        let client = client.clone();
        async move {
            let snaps = Api::<VolumeSnapshot>::namespaced(client.clone(), "prod")
                .list(&ListParams::default().labels(&sel))
                .await
                .unwrap();
            let secrets = Api::<Secret>::namespaced(client.clone(), "prod")
                .list(&ListParams::default().labels(&sel))
                .await
                .unwrap();
            snaps.items.len() + secrets.items.len()
        }
    };
    assert_eq!(left(cluster::cleanup::selector(Some(id))).await, 0);
    // The user's PVC (backup-id label but not managed by virtguard) is untouched.
    assert!(
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), "prod")
            .get_opt("user-pvc")
            .await
            .unwrap()
            .is_some()
    );
}

fn src_spec_like() -> Option<k8s_openapi::api::core::v1::PersistentVolumeClaimSpec> {
    Some(k8s_openapi::api::core::v1::PersistentVolumeClaimSpec {
        access_modes: Some(vec!["ReadWriteOnce".into()]),
        resources: Some(k8s_openapi::api::core::v1::VolumeResourceRequirements {
            requests: Some(BTreeMap::from([(
                "storage".to_string(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("1Mi".into()),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[tokio::test]
async fn missing_snapshot_class_names_driver_and_pvc() {
    let sim = start().await;
    let client = sim.client().await.unwrap();
    let driver = snapshot::csi_driver_of_pvc(&client, "prod", "legacy-root")
        .await
        .unwrap();
    assert_eq!(driver, "rancher.io/local-path");
    let err = snapshot::snapshot_class_for(&client, &driver, "prod/legacy-root", &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("rancher.io/local-path") && err.contains("prod/legacy-root"),
        "{err}"
    );
}

#[tokio::test]
async fn freeze_of_a_stopped_vm_is_refused_and_thaw_is_idempotent() {
    let sim = start().await;
    let client = sim.client().await.unwrap();
    let err = FrozenGuest::freeze(&client, "prod", "nope", Duration::from_secs(60))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("prod/nope"), "{err}");
    // Unfreeze of a running, unfrozen VM succeeds (KubeVirt's unfreeze is idempotent).
    common::cluster::wait_running(&client, "prod", "db").await;
    cluster::freeze::unfreeze(&client, "prod", "db")
        .await
        .unwrap();
}

#[tokio::test]
async fn dropped_frozen_guest_is_thawed_in_the_background() {
    let sim = start().await;
    let client = sim.client().await.unwrap();
    common::cluster::wait_running(&client, "prod", "db").await;
    {
        let _guest = FrozenGuest::freeze(&client, "prod", "db", Duration::from_secs(300))
            .await
            .unwrap();
        // Dropped here, as on an error path that forgot to thaw.
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = sim.freeze_log();
        if log
            .iter()
            .any(|r| r.action == FreezeAction::Unfreeze && r.status == 200)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no thaw after drop: {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
