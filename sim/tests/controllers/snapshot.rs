//! The CSI snapshotter: a VolumeSnapshot is the disk at `creationTime` (a write after it is not
//! in the snapshot), a PVC restored from it has its bytes, and its content and image go with
//! it; snapshot and export faults.

use std::io::{Read, Write};

use base64::Engine;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde_json::json;
use virtguard_sim::FaultRule;

use crate::common::{
    export_http, field, obj, prod, sha, start, wait_for, wait_phase, EXPORT, PVC, SECRET,
    VOLUME_SNAPSHOT,
};

async fn create_snapshot(client: &Client, name: &str, pvc: &str) -> Api<DynamicObject> {
    let vs = prod(client, VOLUME_SNAPSHOT);
    vs.create(
        &PostParams::default(),
        &obj(
            json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": name}, "spec": {"source": {"persistentVolumeClaimName": pvc}}}),
        ),
    )
    .await
    .unwrap();
    vs
}

#[tokio::test]
async fn snapshot_is_point_in_time_and_export_serves_exactly_it() {
    let (sim, client) = start("", None).await;
    let pvc_path = sim.pvc_path("prod", "db-root").unwrap();
    let before = std::fs::read(&pvc_path).unwrap();
    assert_eq!(before.len(), 4 << 20);
    let want = sha(&before);

    let vs = create_snapshot(&client, "snap1", "db-root").await;
    // As soon as creationTime is visible, write into the disk: it must not reach the snapshot.
    wait_for(5, "creationTime", || async {
        field(&vs, "snap1", "/status/creationTime").await
    })
    .await;
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&pvc_path)
            .unwrap();
        f.write_all(&[0xAB; 8192]).unwrap();
    }
    assert_eq!(
        field(&vs, "snap1", "/status/readyToUse").await,
        Some(json!(false))
    );
    wait_for(5, "readyToUse", || async {
        (field(&vs, "snap1", "/status/readyToUse").await? == json!(true)).then_some(())
    })
    .await;
    assert_eq!(
        field(&vs, "snap1", "/status/restoreSize").await,
        Some(json!((4u64 << 20).to_string()))
    );
    let content = field(&vs, "snap1", "/status/boundVolumeSnapshotContentName")
        .await
        .unwrap();
    let vscs: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshotContent"),
            "volumesnapshotcontents",
        ),
    );
    let c = vscs.get(content.as_str().unwrap()).await.unwrap();
    assert_eq!(c.data["spec"]["driver"], "sim.csi.virtguard.io");
    assert_eq!(c.data["status"]["readyToUse"], true);
    assert_eq!(
        sha(&std::fs::read(sim.snapshot_path("prod", "snap1").unwrap()).unwrap()),
        want
    );
    assert_ne!(
        sha(&std::fs::read(&pvc_path).unwrap()),
        want,
        "the write after creationTime must be in the live disk"
    );

    // A PVC restored from the snapshot has the snapshot's bytes.
    let pvcs = prod(&client, PVC);
    pvcs.create(&PostParams::default(), &obj(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "restored"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "4Mi"}},
                 "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap1"}}})))
        .await
        .unwrap();
    wait_phase(&pvcs, "restored", "Bound", "restored bound").await;
    assert_eq!(
        sha(&std::fs::read(sim.pvc_path("prod", "restored").unwrap()).unwrap()),
        want
    );

    // Export the restored PVC.
    let exports = prod(&client, EXPORT);
    exports
        .create(&PostParams::default(), &obj(json!({"apiVersion": "export.kubevirt.io/v1", "kind": "VirtualMachineExport",
            "metadata": {"name": "ex1"}, "spec": {"source": {"apiGroup": "", "kind": "PersistentVolumeClaim", "name": "restored"}}})))
        .await
        .unwrap();
    wait_phase(&exports, "ex1", "Ready", "export Ready").await;
    let st = field(&exports, "ex1", "/status").await.unwrap();
    assert_eq!(st["tokenSecretRef"], "export-token-ex1");
    let cert = st["links"]["internal"]["cert"]
        .as_str()
        .unwrap()
        .to_string();
    let vol = &st["links"]["internal"]["volumes"][0];
    assert_eq!(vol["name"], "restored");
    let raw_url = vol["formats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["format"] == "raw")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let gz_url = vol["formats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["format"] == "gzip")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let secrets = prod(&client, SECRET);
    let secret = secrets.get("export-token-ex1").await.unwrap();
    let token = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(secret.data["data"]["token"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let http = export_http(&cert);
    let get_text = |url: &str| {
        let req = http.get(url).header("x-kubevirt-export-token", &token);
        async move { req.send().await.unwrap().text().await.unwrap() }
    };

    assert_eq!(http.get(&raw_url).send().await.unwrap().status(), 401);
    assert_eq!(
        http.get(&raw_url)
            .header("x-kubevirt-export-token", "nope")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = http
        .get(&raw_url)
        .header("x-kubevirt-export-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(4 << 20));
    assert_eq!(sha(&r.bytes().await.unwrap()), want);

    // Range requests, 1 MiB + odd tail, concatenated.
    let mut all = Vec::new();
    let len = 4u64 << 20;
    let mut off = 0u64;
    while off < len {
        let end = (off + 999_999).min(len - 1);
        let r = http
            .get(&raw_url)
            .header("x-kubevirt-export-token", &token)
            .header("Range", format!("bytes={off}-{end}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(
            r.headers()["content-range"].to_str().unwrap(),
            format!("bytes {off}-{end}/{len}")
        );
        assert_eq!(r.content_length(), Some(end - off + 1));
        all.extend_from_slice(&r.bytes().await.unwrap());
        off = end + 1;
    }
    assert_eq!(sha(&all), want);
    let r = http
        .get(&raw_url)
        .header("x-kubevirt-export-token", &token)
        .header("Range", format!("bytes={len}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);

    let gz = http
        .get(&gz_url)
        .header("x-kubevirt-export-token", &token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut unz = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut unz)
        .unwrap();
    assert_eq!(sha(&unz), want);

    let manifests = st["links"]["internal"]["manifests"].as_array().unwrap();
    let all_url = manifests.iter().find(|m| m["type"] == "all").unwrap()["url"]
        .as_str()
        .unwrap();
    let text = get_text(all_url).await;
    assert!(
        text.contains("kind: PersistentVolumeClaim") && text.contains("name: restored"),
        "{text}"
    );
    let secret_url = manifests
        .iter()
        .find(|m| m["type"] == "auth-header-secret")
        .unwrap()["url"]
        .as_str()
        .unwrap();
    let text = get_text(secret_url).await;
    assert!(text.contains(&token));

    // Deleting the snapshot removes its content and image (finalizer handled by the controller).
    let snap_file = sim.snapshot_path("prod", "snap1").unwrap();
    vs.delete("snap1", &Default::default()).await.unwrap();
    wait_for(5, "snapshot gone", || async {
        vs.get("snap1").await.is_err().then_some(())
    })
    .await;
    assert!(vscs.get(content.as_str().unwrap()).await.is_err());
    assert!(!snap_file.exists());
}

#[tokio::test]
async fn snapshot_and_export_faults() {
    let (sim, client) = start(
        "faults:\n  - {op: snapshot-error, target: prod/snap-err, message: disk on fire}\n  - {op: snapshot-never-ready, target: prod/snap-never}\n  - {op: export-never-ready, target: prod/ex-never}\n",
        None,
    )
    .await;
    let vs = create_snapshot(&client, "snap-err", "off-root").await;
    create_snapshot(&client, "snap-never", "off-root").await;
    create_snapshot(&client, "snap-ok", "off-root").await;
    wait_for(5, "error", || async {
        field(&vs, "snap-err", "/status/error/message").await
    })
    .await;
    assert_eq!(
        field(&vs, "snap-err", "/status/error/message").await,
        Some(json!("disk on fire"))
    );
    wait_for(5, "snap-ok ready", || async {
        (field(&vs, "snap-ok", "/status/readyToUse").await? == json!(true)).then_some(())
    })
    .await;
    assert!(field(&vs, "snap-never", "/status/creationTime")
        .await
        .is_some());
    assert_eq!(
        field(&vs, "snap-never", "/status/readyToUse").await,
        Some(json!(false))
    );

    // No snapshot class for the driver → status.error.
    let scs = prod(&client, VOLUME_SNAPSHOT);
    scs.create(&PostParams::default(), &obj(json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": "snap-noclass"}, "spec": {"volumeSnapshotClassName": "missing", "source": {"persistentVolumeClaimName": "off-root"}}})))
        .await
        .unwrap();
    let msg = wait_for(5, "class error", || async {
        field(&scs, "snap-noclass", "/status/error/message").await
    })
    .await;
    assert!(msg.as_str().unwrap().contains("missing"));

    let exports = prod(&client, EXPORT);
    for name in ["ex-never", "ex-drop"] {
        exports
            .create(&PostParams::default(), &obj(json!({"apiVersion": "export.kubevirt.io/v1", "kind": "VirtualMachineExport",
                "metadata": {"name": name}, "spec": {"source": {"apiGroup": "", "kind": "PersistentVolumeClaim", "name": "off-root"}}})))
            .await
            .unwrap();
    }
    wait_phase(&exports, "ex-drop", "Ready", "ex-drop ready").await;
    assert_eq!(
        field(&exports, "ex-never", "/status/phase").await,
        Some(json!("Pending"))
    );

    sim.inject(FaultRule {
        op: "export-drop-after".into(),
        target: Some("prod/ex-drop".into()),
        bytes: Some(100_000),
        ..Default::default()
    });
    let st = field(&exports, "ex-drop", "/status").await.unwrap();
    let cert = st["links"]["internal"]["cert"].as_str().unwrap();
    let url = st["links"]["internal"]["volumes"][0]["formats"][0]["url"]
        .as_str()
        .unwrap();
    let secret = prod(&client, SECRET)
        .get("export-token-ex-drop")
        .await
        .unwrap();
    let token = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(secret.data["data"]["token"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let r = export_http(cert)
        .get(url)
        .header("x-kubevirt-export-token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.content_length(), Some(2 << 20));
    let body = r.bytes().await;
    assert!(body.is_err(), "the body must be cut off");

    // A REST call fault: the 1st create of a VolumeSnapshot in prod fails with 500 (kube
    // retries 503, 429 and 504 by itself, so those would not be seen here).
    sim.inject(FaultRule {
        op: "create volumesnapshots".into(),
        target: Some("prod/*".into()),
        times: Some(1),
        status: Some(500),
        ..Default::default()
    });
    let post = |n: &str| {
        obj(
            json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot", "metadata": {"name": n}, "spec": {"source": {"persistentVolumeClaimName": "off-root"}}}),
        )
    };
    let e = scs
        .create(&PostParams::default(), &post("f1"))
        .await
        .unwrap_err();
    assert!(matches!(e, kube::Error::Api(s) if s.code == 500));
    scs.create(&PostParams::default(), &post("f1"))
        .await
        .unwrap();
}
