//! Simulated controllers, through the real `kube` client and real HTTPS clients: validation,
//! KubeVirt freeze/unfreeze, the CSI snapshotter (point in time), VolumeGroupSnapshots (one
//! instant over several PVCs, errors, deletion), VirtualMachineExport,
//! CDI upload, Jobs as processes, VMIM timelines, and every injectable fault.
#![allow(clippy::unwrap_used)] // test helpers

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use base64::Engine;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use virtguard_sim::{FaultRule, FreezeAction, Scenario, Sim, SimConfig, Timings};

const SCENARIO: &str = r#"
namespaces: [prod]
vms:
  - {namespace: prod, name: db, disks: [{name: root, size: 4Mi, content: {random: 7}, used: 3Mi}]}
  - {namespace: prod, name: noagent, guestAgent: false, disks: [{name: root, size: 1Mi}]}
  - {namespace: prod, name: off, running: false, disks: [{name: root, size: 2Mi, content: {pattern: "virtguard"}}]}
"#;

async fn start(extra: &str, timings: Option<Timings>) -> (Sim, Client) {
    let scenario = Scenario::from_yaml(&format!("{SCENARIO}{extra}"), "test").unwrap();
    let sim = Sim::start(SimConfig {
        scenario,
        timings,
        ..Default::default()
    })
    .await
    .unwrap();
    let client = sim.client().await.unwrap();
    (sim, client)
}

fn dyn_api(
    client: &Client,
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    ns: &str,
) -> Api<DynamicObject> {
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn obj(v: Value) -> DynamicObject {
    serde_json::from_value(v).unwrap()
}

/// Poll `f` until it returns Some, or panic after `secs`.
async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn field(api: &Api<DynamicObject>, name: &str, ptr: &str) -> Option<Value> {
    let o = api.get(name).await.ok()?;
    serde_json::to_value(&o)
        .ok()?
        .pointer(ptr)
        .cloned()
        .filter(|v| !v.is_null())
}

/// PUT to a KubeVirt subresource; Ok(()) on 2xx, Err(status code) otherwise.
async fn subresource(
    client: &Client,
    ns: &str,
    vmi: &str,
    action: &str,
    body: &str,
) -> Result<(), u16> {
    let req = hyper::Request::put(format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{vmi}/{action}"
    ))
    .header("Content-Type", "application/json")
    .body(body.as_bytes().to_vec())
    .unwrap();
    match client.request_text(req).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err(s.code),
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[tokio::test]
async fn validation_like_structural_crds() {
    let (_sim, client) = start("", None).await;
    let vms = dyn_api(
        &client,
        "kubevirt.io",
        "v1",
        "VirtualMachine",
        "virtualmachines",
        "prod",
    );
    let bad = vms
        .create(&PostParams::default(), &obj(json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "bad"}, "spec": {"runStrategy": 5, "template": {"spec": {"domain": {"devices": {}}}}}})))
        .await
        .unwrap_err();
    let kube::Error::Api(s) = bad else { panic!() };
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    let causes = s.details.unwrap().causes;
    assert!(
        causes
            .iter()
            .any(|c| c.field == "spec.runStrategy" && c.reason == "FieldValueTypeInvalid"),
        "{causes:?}"
    );

    let missing = vms
        .create(&PostParams::default(), &obj(json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "nospec"}})))
        .await
        .unwrap_err();
    let kube::Error::Api(s) = missing else {
        panic!()
    };
    assert_eq!(s.code, 422);
    assert!(s
        .details
        .unwrap()
        .causes
        .iter()
        .any(|c| c.field == "spec" && c.reason == "FieldValueRequired"));

    // Unknown fields are pruned...
    let made = vms
        .create(&PostParams::default(), &obj(json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "extra"},
            "spec": {"bogus": 1, "runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {}}}}}})))
        .await
        .unwrap();
    assert!(made.data["spec"].get("bogus").is_none());
    assert_eq!(made.data["spec"]["runStrategy"], "Halted");
    // ...or rejected when the client asks for strict validation.
    let strict = vms
        .patch(
            "extra",
            &PatchParams::apply("t").validation_strict(),
            &Patch::Apply(
                json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "extra"}, "spec": {"bogus": 2}}),
            ),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(s) = strict else {
        panic!()
    };
    assert_eq!(s.code, 400);
    assert!(
        s.message.contains("unknown field \"spec.bogus\""),
        "{}",
        s.message
    );

    // CSI CRD schema: VolumeSnapshot needs spec.source.
    let vs = dyn_api(
        &client,
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshot",
        "volumesnapshots",
        "prod",
    );
    let e = vs
        .create(&PostParams::default(), &obj(json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot", "metadata": {"name": "x"}, "spec": {}})))
        .await
        .unwrap_err();
    let kube::Error::Api(s) = e else { panic!() };
    assert_eq!(s.code, 422);
    assert!(s
        .details
        .unwrap()
        .causes
        .iter()
        .any(|c| c.field == "spec.source"));

    // Core kinds through k8s-openapi types.
    let cms = dyn_api(&client, "", "v1", "ConfigMap", "configmaps", "prod");
    let e = cms
        .create(&PostParams::default(), &obj(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": 1}})))
        .await
        .unwrap_err();
    let kube::Error::Api(s) = e else { panic!() };
    assert_eq!(s.code, 422);
}

#[tokio::test]
async fn freeze_unfreeze_semantics_and_safety_thaw() {
    let (sim, client) = start(
        "faults: [{op: freeze, target: prod/db, call: 4, status: 500, message: injected}]\n",
        None,
    )
    .await;
    let vmis = dyn_api(
        &client,
        "kubevirt.io",
        "v1",
        "VirtualMachineInstance",
        "virtualmachineinstances",
        "prod",
    );
    for vm in ["db", "noagent"] {
        wait_for(5, "VMI running", || async {
            (field(&vmis, vm, "/status/phase").await? == "Running").then_some(())
        })
        .await;
    }
    let cond = field(&vmis, "db", "/status/conditions").await.unwrap();
    assert!(cond
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "AgentConnected" && c["status"] == "True"));

    assert_eq!(
        subresource(
            &client,
            "prod",
            "db",
            "freeze",
            r#"{"unfreezeTimeout":"5m"}"#
        )
        .await,
        Ok(())
    );
    assert_eq!(
        field(&vmis, "db", "/status/fsFreezeStatus").await,
        Some(json!("frozen"))
    );
    // Idempotent.
    assert_eq!(
        subresource(
            &client,
            "prod",
            "db",
            "freeze",
            r#"{"unfreezeTimeout":"5m"}"#
        )
        .await,
        Ok(())
    );
    assert_eq!(
        subresource(&client, "prod", "db", "unfreeze", "").await,
        Ok(())
    );
    assert_eq!(field(&vmis, "db", "/status/fsFreezeStatus").await, None);
    assert_eq!(
        subresource(&client, "prod", "db", "unfreeze", "").await,
        Ok(())
    );
    // The 3rd freeze call works, the 4th fails by injection.
    assert_eq!(
        subresource(
            &client,
            "prod",
            "db",
            "freeze",
            r#"{"unfreezeTimeout":"5m"}"#
        )
        .await,
        Ok(())
    );
    assert_eq!(
        subresource(
            &client,
            "prod",
            "db",
            "freeze",
            r#"{"unfreezeTimeout":"5m"}"#
        )
        .await,
        Err(500)
    );
    assert_eq!(
        subresource(&client, "prod", "db", "unfreeze", "").await,
        Ok(())
    );

    // Bad requests.
    assert_eq!(
        subresource(&client, "prod", "db", "freeze", "").await,
        Err(400)
    );
    assert_eq!(
        subresource(&client, "prod", "db", "freeze", "{}").await,
        Err(400)
    );
    assert_eq!(
        subresource(
            &client,
            "prod",
            "db",
            "freeze",
            r#"{"unfreezeTimeout":"-1s"}"#
        )
        .await,
        Err(400)
    );
    assert_eq!(
        subresource(&client, "prod", "db", "freeze", "not json").await,
        Err(400)
    );
    // No agent → error; no VMI → 404.
    assert_eq!(
        subresource(
            &client,
            "prod",
            "noagent",
            "freeze",
            r#"{"unfreezeTimeout":"5m"}"#
        )
        .await,
        Err(500)
    );
    assert_eq!(
        subresource(
            &client,
            "prod",
            "off",
            "freeze",
            r#"{"unfreezeTimeout":"5m"}"#
        )
        .await,
        Err(404)
    );

    // Safety thaw after unfreezeTimeout.
    let t0 = chrono::Utc::now();
    assert_eq!(
        subresource(
            &client,
            "prod",
            "db",
            "freeze",
            r#"{"unfreezeTimeout":"300ms"}"#
        )
        .await,
        Ok(())
    );
    wait_for(5, "safety thaw", || async {
        sim.freeze_log()
            .iter()
            .any(|r| r.action == FreezeAction::SafetyThaw)
            .then_some(())
    })
    .await;
    let log = sim.freeze_log();
    let thaw = log
        .iter()
        .find(|r| r.action == FreezeAction::SafetyThaw)
        .unwrap();
    assert_eq!(thaw.vmi, "prod/db");
    assert!(
        thaw.at - t0 >= chrono::Duration::milliseconds(280),
        "thawed too early"
    );
    assert_eq!(field(&vmis, "db", "/status/fsFreezeStatus").await, None);
    // The log has every call with its answer.
    assert!(log
        .iter()
        .any(|r| r.action == FreezeAction::Freeze && r.status == 500 && r.vmi == "prod/noagent"));
    assert!(log.iter().any(|r| r.action == FreezeAction::Freeze
        && r.status == 200
        && r.unfreeze_timeout_ms == Some(300_000)));
}

#[tokio::test]
async fn freeze_conflicts_when_vmi_not_running() {
    let timings = Timings {
        vmi_start_ms: 60_000,
        ..Default::default()
    };
    let (_sim, client) = start("", Some(timings)).await;
    let vmis = dyn_api(
        &client,
        "kubevirt.io",
        "v1",
        "VirtualMachineInstance",
        "virtualmachineinstances",
        "prod",
    );
    wait_for(5, "VMI pending", || async {
        (field(&vmis, "db", "/status/phase").await? == "Pending").then_some(())
    })
    .await;
    assert_eq!(
        subresource(
            &client,
            "prod",
            "db",
            "freeze",
            r#"{"unfreezeTimeout":"5m"}"#
        )
        .await,
        Err(409)
    );
}

#[tokio::test]
async fn vm_run_strategy_and_start_stop() {
    let (_sim, client) = start("", None).await;
    let vms = dyn_api(
        &client,
        "kubevirt.io",
        "v1",
        "VirtualMachine",
        "virtualmachines",
        "prod",
    );
    let vmis = dyn_api(
        &client,
        "kubevirt.io",
        "v1",
        "VirtualMachineInstance",
        "virtualmachineinstances",
        "prod",
    );
    wait_for(5, "db Running", || async {
        (field(&vms, "db", "/status/printableStatus").await? == "Running").then_some(())
    })
    .await;
    assert_eq!(
        field(&vms, "off", "/status/printableStatus").await,
        Some(json!("Stopped"))
    );
    assert!(vmis.get("off").await.is_err());
    let req = hyper::Request::put(
        "/apis/subresources.kubevirt.io/v1/namespaces/prod/virtualmachines/off/start",
    )
    .body(Vec::new())
    .unwrap();
    client.request_text(req).await.unwrap();
    wait_for(5, "off Running", || async {
        (field(&vmis, "off", "/status/phase").await? == "Running").then_some(())
    })
    .await;
    let owner = field(&vmis, "off", "/metadata/ownerReferences/0/kind").await;
    assert_eq!(owner, Some(json!("VirtualMachine")));
    vms.patch(
        "off",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"runStrategy": "Halted"}})),
    )
    .await
    .unwrap();
    wait_for(5, "off stopped", || async {
        vmis.get("off").await.is_err().then_some(())
    })
    .await;
}

async fn create_snapshot(client: &Client, name: &str, pvc: &str) -> Api<DynamicObject> {
    let vs = dyn_api(
        client,
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshot",
        "volumesnapshots",
        "prod",
    );
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

fn export_http(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
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
    let pvcs = dyn_api(
        &client,
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        "prod",
    );
    pvcs.create(&PostParams::default(), &obj(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "restored"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "4Mi"}},
                 "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap1"}}})))
        .await
        .unwrap();
    wait_for(5, "restored bound", || async {
        (field(&pvcs, "restored", "/status/phase").await? == "Bound").then_some(())
    })
    .await;
    assert_eq!(
        sha(&std::fs::read(sim.pvc_path("prod", "restored").unwrap()).unwrap()),
        want
    );

    // Export the restored PVC.
    let exports = dyn_api(
        &client,
        "export.kubevirt.io",
        "v1",
        "VirtualMachineExport",
        "virtualmachineexports",
        "prod",
    );
    exports
        .create(&PostParams::default(), &obj(json!({"apiVersion": "export.kubevirt.io/v1", "kind": "VirtualMachineExport",
            "metadata": {"name": "ex1"}, "spec": {"source": {"apiGroup": "", "kind": "PersistentVolumeClaim", "name": "restored"}}})))
        .await
        .unwrap();
    wait_for(5, "export Ready", || async {
        (field(&exports, "ex1", "/status/phase").await? == "Ready").then_some(())
    })
    .await;
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
    let secrets = dyn_api(&client, "", "v1", "Secret", "secrets", "prod");
    let secret = secrets.get("export-token-ex1").await.unwrap();
    let token = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(secret.data["data"]["token"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let http = export_http(&cert);

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
    let text = http
        .get(all_url)
        .header("x-kubevirt-export-token", &token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
    let text = http
        .get(secret_url)
        .header("x-kubevirt-export-token", &token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
async fn export_waits_for_pvc_in_use_and_honours_ttl() {
    let (_sim, client) = start("", None).await;
    let exports = dyn_api(
        &client,
        "export.kubevirt.io",
        "v1",
        "VirtualMachineExport",
        "virtualmachineexports",
        "prod",
    );
    exports
        .create(&PostParams::default(), &obj(json!({"apiVersion": "export.kubevirt.io/v1", "kind": "VirtualMachineExport",
            "metadata": {"name": "busy"}, "spec": {"source": {"apiGroup": "", "kind": "PersistentVolumeClaim", "name": "db-root"}}})))
        .await
        .unwrap();
    let vmis = dyn_api(
        &client,
        "kubevirt.io",
        "v1",
        "VirtualMachineInstance",
        "virtualmachineinstances",
        "prod",
    );
    wait_for(5, "db running", || async {
        (field(&vmis, "db", "/status/phase").await? == "Running").then_some(())
    })
    .await;
    wait_for(5, "InUse", || async {
        (field(&exports, "busy", "/status/conditions/0/reason").await? == "InUse").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        field(&exports, "busy", "/status/phase").await,
        Some(json!("Pending"))
    );

    // A VM export of a stopped VM is Ready and names the VM; a short TTL deletes it.
    exports
        .create(
            &PostParams::default(),
            &obj(
                json!({"apiVersion": "export.kubevirt.io/v1", "kind": "VirtualMachineExport",
            "metadata": {"name": "vmex"}, "spec": {"ttlDuration": "2s", "tokenSecretRef": "mytoken",
            "source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "off"}}}),
            ),
        )
        .await
        .unwrap();
    let secrets = dyn_api(&client, "", "v1", "Secret", "secrets", "prod");
    secrets
        .create(&PostParams::default(), &obj(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mytoken"}, "stringData": {}, "data": {"token": "c2VjcmV0"}})))
        .await
        .unwrap();
    wait_for(5, "vm export ready", || async {
        (field(&exports, "vmex", "/status/phase").await? == "Ready").then_some(())
    })
    .await;
    assert_eq!(
        field(&exports, "vmex", "/status/virtualMachineName").await,
        Some(json!("off"))
    );
    assert_eq!(
        field(&exports, "vmex", "/status/tokenSecretRef").await,
        Some(json!("mytoken"))
    );
    assert!(field(&exports, "vmex", "/status/ttlExpirationTime")
        .await
        .is_some());
    wait_for(6, "TTL expiry", || async {
        exports.get("vmex").await.is_err().then_some(())
    })
    .await;
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
    let scs = dyn_api(
        &client,
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshot",
        "volumesnapshots",
        "prod",
    );
    scs.create(&PostParams::default(), &obj(json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": "snap-noclass"}, "spec": {"volumeSnapshotClassName": "missing", "source": {"persistentVolumeClaimName": "off-root"}}})))
        .await
        .unwrap();
    let msg = wait_for(5, "class error", || async {
        field(&scs, "snap-noclass", "/status/error/message").await
    })
    .await;
    assert!(msg.as_str().unwrap().contains("missing"));

    let exports = dyn_api(
        &client,
        "export.kubevirt.io",
        "v1",
        "VirtualMachineExport",
        "virtualmachineexports",
        "prod",
    );
    for name in ["ex-never", "ex-drop"] {
        exports
            .create(&PostParams::default(), &obj(json!({"apiVersion": "export.kubevirt.io/v1", "kind": "VirtualMachineExport",
                "metadata": {"name": name}, "spec": {"source": {"apiGroup": "", "kind": "PersistentVolumeClaim", "name": "off-root"}}})))
            .await
            .unwrap();
    }
    wait_for(5, "ex-drop ready", || async {
        (field(&exports, "ex-drop", "/status/phase").await? == "Ready").then_some(())
    })
    .await;
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
    let secret = dyn_api(&client, "", "v1", "Secret", "secrets", "prod")
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

const GROUP_CLASSES: &str = r#"
storageClasses:
  - {name: sim-csi, driver: sim.csi.virtguard.io, default: true, snapshotClass: sim-csi-snap, groupSnapshotClass: sim-csi-group}
  - {name: slow, driver: slow.csi.example}
"#;

fn vgs_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    dyn_api(
        client,
        "groupsnapshot.storage.k8s.io",
        "v1beta2",
        "VolumeGroupSnapshot",
        "volumegroupsnapshots",
        ns,
    )
}

fn cluster_api(
    client: &Client,
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural),
    )
}

/// Creates PVC `prod/<name>` labelled `labels`, waits until it is bound, fills it with `seed`.
async fn group_pvc(sim: &Sim, client: &Client, name: &str, class: &str, labels: Value, seed: u8) {
    let pvcs = dyn_api(
        client,
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        "prod",
    );
    pvcs.create(
        &PostParams::default(),
        &obj(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "labels": labels},
        "spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Block", "storageClassName": class,
                 "resources": {"requests": {"storage": "2Mi"}}}})),
    )
    .await
    .unwrap();
    wait_for(5, "PVC bound", || async {
        (field(&pvcs, name, "/status/phase").await? == "Bound").then_some(())
    })
    .await;
    let data: Vec<u8> = (0..2u32 << 20)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    std::fs::write(sim.pvc_path("prod", name).unwrap(), data).unwrap();
}

async fn create_group(client: &Client, name: &str, spec: Value) {
    vgs_api(client, "prod")
        .create(
            &PostParams::default(),
            &obj(json!({"apiVersion": "groupsnapshot.storage.k8s.io/v1beta2",
            "kind": "VolumeGroupSnapshot", "metadata": {"name": name}, "spec": spec})),
        )
        .await
        .unwrap();
}

/// The VolumeSnapshots in prod that name `group` in `status.volumeGroupSnapshotName`, by PVC.
async fn group_members(client: &Client, group: &str) -> std::collections::BTreeMap<String, Value> {
    let vs = dyn_api(
        client,
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshot",
        "volumesnapshots",
        "prod",
    );
    vs.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .filter(|o| {
            o.pointer("/status/volumeGroupSnapshotName")
                .and_then(Value::as_str)
                == Some(group)
        })
        .map(|o| {
            (
                o["spec"]["source"]["persistentVolumeClaimName"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                o,
            )
        })
        .collect()
}

/// Writes the object's own status back with strict field validation: the server accepts only
/// what the reference schema allows, so this proves the controller wrote a valid object.
async fn assert_schema_valid(api: &Api<DynamicObject>, name: &str) {
    let o = serde_json::to_value(api.get(name).await.unwrap()).unwrap();
    api.patch_status(
        name,
        &PatchParams::default().validation_strict(),
        &Patch::Merge(json!({"status": o["status"]})),
    )
    .await
    .unwrap_or_else(|e| panic!("{name} does not pass its schema: {e}"));
}

#[tokio::test]
async fn group_snapshot_is_one_point_in_time_over_its_pvcs() {
    let (sim, client) = start(GROUP_CLASSES, None).await;
    for (name, seed) in [("pair-a", 1), ("pair-b", 2)] {
        group_pvc(
            &sim,
            &client,
            name,
            "sim-csi",
            json!({"group": "pair"}),
            seed,
        )
        .await;
    }
    // Same driver, not selected.
    group_pvc(
        &sim,
        &client,
        "loner",
        "sim-csi",
        json!({"group": "other"}),
        3,
    )
    .await;
    let want: Vec<String> = ["pair-a", "pair-b"]
        .iter()
        .map(|p| sha(&std::fs::read(sim.pvc_path("prod", p).unwrap()).unwrap()))
        .collect();

    create_group(
        &client,
        "g1",
        json!({"source": {"selector": {"matchLabels": {"group": "pair"}}}}),
    )
    .await;
    let groups = vgs_api(&client, "prod");
    let created = wait_for(5, "group creationTime", || async {
        field(&groups, "g1", "/status/creationTime").await
    })
    .await;
    // Written after the client saw creationTime: in neither member.
    for p in ["pair-a", "pair-b"] {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(sim.pvc_path("prod", p).unwrap())
            .unwrap();
        f.write_all(&[0xAB; 8192]).unwrap();
    }
    let g = serde_json::to_value(groups.get("g1").await.unwrap()).unwrap();
    assert_eq!(
        g["spec"]["volumeGroupSnapshotClassName"], "sim-csi-group",
        "the default class of the driver"
    );
    assert_eq!(
        g["status"]["readyToUse"], false,
        "ready only after snapshotReadyMs"
    );
    assert!(g["metadata"]["finalizers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "groupsnapshot.storage.kubernetes.io/volumegroupsnapshot-bound-protection"));
    let content_name = g["status"]["boundVolumeGroupSnapshotContentName"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        content_name,
        format!(
            "groupsnapcontent-{}",
            g["metadata"]["uid"].as_str().unwrap()
        )
    );

    let members = group_members(&client, "g1").await;
    assert_eq!(
        members.keys().collect::<Vec<_>>(),
        ["pair-a", "pair-b"],
        "one member per selected PVC"
    );
    for m in members.values() {
        assert_eq!(
            m["status"]["creationTime"], created,
            "one instant for every member"
        );
        let owner = &m["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["uid"].as_str()),
            (Some("VolumeGroupSnapshot"), g["metadata"]["uid"].as_str())
        );
        assert!(m["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("snapshot-"));
    }

    wait_for(5, "group readyToUse", || async {
        (field(&groups, "g1", "/status/readyToUse").await? == json!(true)).then_some(())
    })
    .await;
    let members = group_members(&client, "g1").await;
    let contents = cluster_api(
        &client,
        "groupsnapshot.storage.k8s.io",
        "v1beta2",
        "VolumeGroupSnapshotContent",
        "volumegroupsnapshotcontents",
    );
    let c = serde_json::to_value(contents.get(&content_name).await.unwrap()).unwrap();
    assert_eq!(c["spec"]["driver"], "sim.csi.virtguard.io");
    assert_eq!(c["spec"]["volumeGroupSnapshotRef"]["name"], "g1");
    assert_eq!(
        c["spec"]["source"]["volumeHandles"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(c["status"]["readyToUse"], true);
    assert!(c["status"]["volumeGroupSnapshotHandle"].as_str().is_some());
    let infos = c["status"]["volumeSnapshotInfoList"].as_array().unwrap();
    assert_eq!(infos.len(), 2);
    let vscs = cluster_api(
        &client,
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshotContent",
        "volumesnapshotcontents",
    );
    let mut images = Vec::new();
    for (pvc, want) in ["pair-a", "pair-b"].iter().zip(&want) {
        let m = &members[*pvc];
        let name = m["metadata"]["name"].as_str().unwrap();
        assert_eq!(m["status"]["readyToUse"], true);
        assert_eq!(m["status"]["restoreSize"], json!((2u64 << 20).to_string()));
        let vsc = serde_json::to_value(
            vscs.get(
                m["status"]["boundVolumeSnapshotContentName"]
                    .as_str()
                    .unwrap(),
            )
            .await
            .unwrap(),
        )
        .unwrap();
        assert_eq!(vsc["status"]["readyToUse"], true);
        assert_eq!(
            vsc["status"]["volumeGroupSnapshotHandle"],
            c["status"]["volumeGroupSnapshotHandle"]
        );
        assert_eq!(vsc["spec"]["volumeSnapshotRef"]["name"], name);
        assert!(infos
            .iter()
            .any(|i| i["snapshotHandle"] == vsc["status"]["snapshotHandle"]
                && i["volumeHandle"] == vsc["spec"]["source"]["volumeHandle"]
                && i["creationTime"] == vsc["status"]["creationTime"]
                && i["readyToUse"] == true
                && i["restoreSize"] == json!(2u64 << 20)));
        let image = sim.snapshot_path("prod", name).unwrap();
        assert_eq!(
            &sha(&std::fs::read(&image).unwrap()),
            want,
            "member of {pvc} is the disk at creationTime"
        );
        assert_ne!(
            &sha(&std::fs::read(sim.pvc_path("prod", pvc).unwrap()).unwrap()),
            want
        );
        images.push(image);
    }

    // Everything the controller wrote passes the reference schemas.
    assert_schema_valid(&groups, "g1").await;
    assert_schema_valid(&contents, &content_name).await;
    let vs_api = dyn_api(
        &client,
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshot",
        "volumesnapshots",
        "prod",
    );
    for m in members.values() {
        assert_schema_valid(&vs_api, m["metadata"]["name"].as_str().unwrap()).await;
        assert_schema_valid(
            &vscs,
            m["status"]["boundVolumeSnapshotContentName"]
                .as_str()
                .unwrap(),
        )
        .await;
    }

    // A member restores like any VolumeSnapshot.
    let member_a = members["pair-a"]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let pvcs = dyn_api(
        &client,
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        "prod",
    );
    pvcs.create(&PostParams::default(), &obj(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "from-member"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Mi"}},
                 "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": member_a}}})))
        .await
        .unwrap();
    wait_for(5, "restored PVC bound", || async {
        (field(&pvcs, "from-member", "/status/phase").await? == "Bound").then_some(())
    })
    .await;
    assert_eq!(
        sha(&std::fs::read(sim.pvc_path("prod", "from-member").unwrap()).unwrap()),
        want[0]
    );

    // One member cannot be deleted out of its group...
    vs_api.delete(&member_a, &Default::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(field(&vs_api, &member_a, "/metadata/deletionTimestamp")
        .await
        .is_some());
    assert!(images[0].exists(), "the group still holds its member");
    // ...deleting the group deletes the members, their contents and images, and its content.
    groups.delete("g1", &Default::default()).await.unwrap();
    wait_for(5, "group gone", || async {
        groups.get("g1").await.is_err().then_some(())
    })
    .await;
    assert!(group_members(&client, "g1").await.is_empty());
    for m in members.values() {
        assert!(vs_api
            .get(m["metadata"]["name"].as_str().unwrap())
            .await
            .is_err());
        assert!(vscs
            .get(
                m["status"]["boundVolumeSnapshotContentName"]
                    .as_str()
                    .unwrap()
            )
            .await
            .is_err());
    }
    assert!(contents.get(&content_name).await.is_err());
    assert!(
        images.iter().all(|i| !i.exists()),
        "member images are deleted"
    );
    // The restored PVC is a copy: it outlives the group.
    assert_eq!(
        sha(&std::fs::read(sim.pvc_path("prod", "from-member").unwrap()).unwrap()),
        want[0]
    );
}

#[tokio::test]
async fn group_snapshot_errors_name_the_cause() {
    let (sim, client) = start(GROUP_CLASSES, None).await;
    group_pvc(
        &sim,
        &client,
        "fast-1",
        "sim-csi",
        json!({"set": "mixed", "only": "fast"}),
        1,
    )
    .await;
    group_pvc(
        &sim,
        &client,
        "slow-1",
        "slow",
        json!({"set": "mixed", "only": "slow"}),
        2,
    )
    .await;
    let groups = vgs_api(&client, "prod");
    let error_of = |name: &'static str| {
        let groups = groups.clone();
        async move {
            let v = wait_for(5, name, || async {
                field(&groups, name, "/status/error/message").await
            })
            .await;
            assert_eq!(
                field(&groups, name, "/status/readyToUse").await,
                Some(json!(false))
            );
            v.as_str().unwrap().to_string()
        }
    };
    create_group(
        &client,
        "nothing",
        json!({"source": {"selector": {"matchLabels": {"set": "none"}}}}),
    )
    .await;
    let msg = error_of("nothing").await;
    assert!(
        msg.contains("not applied to any PVC") && msg.contains("none"),
        "{msg}"
    );

    create_group(
        &client,
        "noclass",
        json!({"source": {"selector": {"matchLabels": {"only": "slow"}}}}),
    )
    .await;
    let msg = error_of("noclass").await;
    assert!(
        msg.contains("cannot find default group snapshot class for driver slow.csi.example"),
        "{msg}"
    );

    create_group(
        &client,
        "named",
        json!({"volumeGroupSnapshotClassName": "gone",
        "source": {"selector": {"matchLabels": {"only": "fast"}}}}),
    )
    .await;
    let msg = error_of("named").await;
    assert!(msg.contains("\"gone\" not found"), "{msg}");

    create_group(&client, "mixed", json!({"source": {"selector": {"matchExpressions": [{"key": "set", "operator": "In", "values": ["mixed"]}]}}})).await;
    let msg = error_of("mixed").await;
    assert!(
        msg.contains("different CSI drivers") && msg.contains("slow-1: slow.csi.example"),
        "{msg}"
    );

    // Injected faults, targeted by a member PVC.
    sim.inject(FaultRule {
        op: "group-snapshot-error".into(),
        target: Some("prod/fast-1".into()),
        message: Some("array offline".into()),
        ..Default::default()
    });
    create_group(
        &client,
        "faulty",
        json!({"source": {"selector": {"matchLabels": {"only": "fast"}}}}),
    )
    .await;
    assert_eq!(error_of("faulty").await, "array offline");
    sim.clear_faults();
    sim.inject(FaultRule {
        op: "group-snapshot-never-ready".into(),
        target: Some("prod/slowpoke".into()),
        ..Default::default()
    });
    create_group(
        &client,
        "slowpoke",
        json!({"source": {"selector": {"matchLabels": {"only": "fast"}}}}),
    )
    .await;
    wait_for(5, "slowpoke creationTime", || async {
        field(&groups, "slowpoke", "/status/creationTime").await
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        field(&groups, "slowpoke", "/status/readyToUse").await,
        Some(json!(false))
    );
    assert_eq!(group_members(&client, "slowpoke").await.len(), 1);
    // None of the failed groups made members, a content or a finalizer.
    for g in ["nothing", "noclass", "named", "mixed", "faulty"] {
        assert!(group_members(&client, g).await.is_empty(), "{g}");
        assert!(
            field(&groups, g, "/status/boundVolumeGroupSnapshotContentName")
                .await
                .is_none(),
            "{g}"
        );
        groups.delete(g, &Default::default()).await.unwrap();
        assert!(
            groups.get(g).await.is_err(),
            "{g} has no finalizer to wait for"
        );
    }

    // A REST call fault on the group resource, like on any other.
    sim.inject(FaultRule {
        op: "create volumegroupsnapshots".into(),
        target: Some("prod/*".into()),
        times: Some(1),
        status: Some(500),
        ..Default::default()
    });
    let e = groups
        .create(&PostParams::default(), &obj(json!({"apiVersion": "groupsnapshot.storage.k8s.io/v1beta2", "kind": "VolumeGroupSnapshot",
            "metadata": {"name": "refused"}, "spec": {"source": {"selector": {"matchLabels": {"only": "fast"}}}}})))
        .await
        .unwrap_err();
    assert!(matches!(e, kube::Error::Api(s) if s.code == 500));
}

#[tokio::test]
async fn cdi_upload_raw_gzip_zstd() {
    let (sim, client) = start("", None).await;
    let dvs = dyn_api(
        &client,
        "cdi.kubevirt.io",
        "v1beta1",
        "DataVolume",
        "datavolumes",
        "prod",
    );
    let mut data = vec![0u8; 1 << 20];
    for (i, b) in data.iter_mut().enumerate().take(300_000) {
        *b = (i % 251) as u8;
    }
    let want = sha(&data);
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("raw", data.clone()),
        ("gzip", {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        }),
        ("zstd", zstd::encode_all(&data[..], 3).unwrap()),
    ];
    let kc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(sim.kubeconfig_path()).unwrap()).unwrap();
    let ca = base64::engine::general_purpose::STANDARD
        .decode(
            kc["clusters"][0]["cluster"]["certificate-authority-data"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    let http = export_http(std::str::from_utf8(&ca).unwrap());
    let cfg: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("cdi.kubevirt.io", "v1beta1", "CDIConfig"),
            "cdiconfigs",
        ),
    );
    let proxy = wait_for(5, "uploadProxyURL", || async {
        field(&cfg, "config", "/status/uploadProxyURL").await
    })
    .await;
    let proxy = proxy.as_str().unwrap().to_string();
    for (kind, body) in bodies {
        let name = format!("up-{kind}");
        dvs.create(&PostParams::default(), &obj(json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": name},
            "spec": {"source": {"upload": {}}, "storage": {"resources": {"requests": {"storage": "1Mi"}}}}})))
            .await
            .unwrap();
        wait_for(5, "UploadReady", || async {
            (field(&dvs, &name, "/status/phase").await? == "UploadReady").then_some(())
        })
        .await;
        let utr = dyn_api(
            &client,
            "upload.cdi.kubevirt.io",
            "v1beta1",
            "UploadTokenRequest",
            "uploadtokenrequests",
            "prod",
        );
        let t = utr
            .create(&PostParams::default(), &obj(json!({"apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
                "metadata": {"name": name}, "spec": {"pvcName": name}})))
            .await
            .unwrap();
        let token = t.data["status"]["token"].as_str().unwrap().to_string();
        let r = http
            .post(format!("{proxy}/v1beta1/upload"))
            .bearer_auth("wrong")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = http
            .post(format!("{proxy}/v1beta1/upload"))
            .bearer_auth(&token)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{kind}: {}", r.text().await.unwrap());
        wait_for(5, "Succeeded", || async {
            (field(&dvs, &name, "/status/phase").await? == "Succeeded").then_some(())
        })
        .await;
        let got = std::fs::read(sim.pvc_path("prod", &name).unwrap()).unwrap();
        assert_eq!(sha(&got), want, "{kind}");
    }
    // Too large for the PVC → 400.
    dvs.create(&PostParams::default(), &obj(json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": "small"},
        "spec": {"source": {"upload": {}}, "storage": {"resources": {"requests": {"storage": "64Ki"}}}}})))
        .await
        .unwrap();
    wait_for(5, "UploadReady", || async {
        (field(&dvs, "small", "/status/phase").await? == "UploadReady").then_some(())
    })
    .await;
    let utr = dyn_api(
        &client,
        "upload.cdi.kubevirt.io",
        "v1beta1",
        "UploadTokenRequest",
        "uploadtokenrequests",
        "prod",
    );
    let t = utr
        .create(&PostParams::default(), &obj(json!({"apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest", "metadata": {"name": "small"}, "spec": {"pvcName": "small"}})))
        .await
        .unwrap();
    let r = http
        .post(format!("{proxy}/v1beta1/upload"))
        .bearer_auth(t.data["status"]["token"].as_str().unwrap())
        .body(vec![1u8; 1 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn jobs_run_as_local_processes() {
    let scenario = Scenario::from_yaml(SCENARIO, "t").unwrap();
    let sim = Sim::start(SimConfig {
        scenario,
        virtguard_bin: Some("/bin/sh".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = sim.client().await.unwrap();
    let secrets = dyn_api(&client, "", "v1", "Secret", "secrets", "prod");
    secrets
        .create(&PostParams::default(), &obj(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "YmFy"}})))
        .await
        .unwrap();
    let jobs = dyn_api(&client, "batch", "v1", "Job", "jobs", "prod");
    let job = |name: &str, script: &str, image: &str| {
        obj(
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": image,
                "command": ["virtguard"], "args": ["-c", script],
                "env": [{"name": "FOO", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}}}}),
        )
    };
    jobs.create(
        &PostParams::default(),
        &job(
            "ok",
            "test \"$FOO\" = bar && test -n \"$KUBECONFIG\"",
            "ghcr.io/virtguard/virtguard:dev",
        ),
    )
    .await
    .unwrap();
    jobs.create(
        &PostParams::default(),
        &job("bad", "exit 3", "ghcr.io/virtguard/virtguard:dev"),
    )
    .await
    .unwrap();
    jobs.create(&PostParams::default(), &job("other", "exit 0", "busybox"))
        .await
        .unwrap();
    wait_for(10, "ok succeeded", || async {
        (field(&jobs, "ok", "/status/succeeded").await? == json!(1)).then_some(())
    })
    .await;
    wait_for(10, "bad failed", || async {
        (field(&jobs, "bad", "/status/failed").await? == json!(1)).then_some(())
    })
    .await;
    assert_eq!(
        field(&jobs, "other", "/status/conditions/0/reason").await,
        Some(json!("ImageNotSimulated"))
    );
    let msg = field(&jobs, "bad", "/status/conditions/0/message")
        .await
        .unwrap();
    assert!(msg.as_str().unwrap().contains("code 3"));
    let runs = sim.job_runs();
    assert!(runs
        .iter()
        .any(|r| r.job == "prod/bad" && r.exit_code == Some(3)));
    assert!(runs
        .iter()
        .any(|r| r.job == "prod/ok" && r.exit_code == Some(0)));
}

#[tokio::test]
async fn migration_timelines() {
    let (_sim, client) = start(
        "migrations:\n  - {namespace: prod, name: m-fail, vmi: db, timeline: \"Pending:0,Scheduling:50,Running:100,Failed:200\"}\n",
        Some(Timings { migration_step_ms: 30, ..Default::default() }),
    )
    .await;
    let m = dyn_api(
        &client,
        "kubevirt.io",
        "v1",
        "VirtualMachineInstanceMigration",
        "virtualmachineinstancemigrations",
        "prod",
    );
    m.create(
        &PostParams::default(),
        &obj(
            json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": "m-ok"}, "spec": {"vmiName": "db"}}),
        ),
    )
    .await
    .unwrap();
    wait_for(5, "m-fail Failed", || async {
        (field(&m, "m-fail", "/status/phase").await? == "Failed").then_some(())
    })
    .await;
    wait_for(5, "m-ok Succeeded", || async {
        (field(&m, "m-ok", "/status/phase").await? == "Succeeded").then_some(())
    })
    .await;
    let ts = field(&m, "m-ok", "/status/phaseTransitionTimestamps")
        .await
        .unwrap();
    let phases: Vec<&str> = ts
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases.first(), Some(&"Pending"));
    assert_eq!(phases.last(), Some(&"Succeeded"));
    let vmis = dyn_api(
        &client,
        "kubevirt.io",
        "v1",
        "VirtualMachineInstance",
        "virtualmachineinstances",
        "prod",
    );
    assert!(field(&vmis, "db", "/status/migrationState/endTimestamp")
        .await
        .is_some());
}

#[test]
fn binary_help_is_honest() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_virtguard-sim"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for s in [
        "Not simulated",
        "no scheduler",
        "--scenario",
        "--state-dir",
        "--port",
        "--kubeconfig-out",
    ] {
        assert!(text.contains(s), "--help lacks {s:?}");
    }
}

#[tokio::test]
async fn binary_serves_a_scenario_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let scen = dir.path().join("s.yaml");
    std::fs::write(&scen, SCENARIO).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_virtguard-sim"))
        .args([
            "--scenario",
            scen.to_str().unwrap(),
            "--state-dir",
            dir.path().join("state").to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let path = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = Client::try_from(cfg).unwrap();
    let vms = dyn_api(
        &client,
        "kubevirt.io",
        "v1",
        "VirtualMachine",
        "virtualmachines",
        "prod",
    );
    assert!(vms.get("db").await.is_ok());
    assert!(dir.path().join("state/volumes").read_dir().unwrap().count() >= 3);
    child.kill().await.unwrap();
}

#[tokio::test]
async fn quickstart_example_scenario_starts() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart.yaml");
    let scenario = Scenario::from_file(&path).unwrap();
    let sim = Sim::start(SimConfig {
        scenario,
        ..Default::default()
    })
    .await
    .unwrap();
    let client = sim.client().await.unwrap();
    let vmis = dyn_api(
        &client,
        "kubevirt.io",
        "v1",
        "VirtualMachineInstance",
        "virtualmachineinstances",
        "prod",
    );
    wait_for(5, "db running", || async {
        (field(&vmis, "db", "/status/phase").await? == "Running").then_some(())
    })
    .await;
    let len = std::fs::metadata(sim.pvc_path("prod", "db-data").unwrap())
        .unwrap()
        .len();
    assert_eq!(len, 1 << 30);
    let nads = dyn_api(
        &client,
        "k8s.cni.cncf.io",
        "v1",
        "NetworkAttachmentDefinition",
        "network-attachment-definitions",
        "prod",
    );
    assert!(nads.get("br-data").await.is_ok());
}

/// A fake QEMU guest agent on a unix socket: answers guest-sync and records fsfreeze commands.
async fn fake_agent(path: std::path::PathBuf) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let seen = s2.clone();
            tokio::spawn(async move {
                let (r, mut w) = conn.into_split();
                let mut lines = tokio::io::BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let v: Value = serde_json::from_str(&line).unwrap();
                    let cmd = v["execute"].as_str().unwrap().to_string();
                    let reply = if cmd == "guest-sync" {
                        json!({"return": v["arguments"]["id"]})
                    } else {
                        json!({"return": 1})
                    };
                    seen.lock().unwrap().push(cmd);
                    w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
                }
            });
        }
    });
    seen
}

#[tokio::test]
async fn freeze_reaches_a_guest_agent_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qga.sock");
    let seen = fake_agent(sock.clone()).await;
    let extra = format!(
        "  - {{namespace: prod, name: real, guestAgentSocket: {}, disks: [{{name: root, size: 1Mi}}]}}\n",
        sock.display()
    );
    let scenario = Scenario::from_yaml(&format!("{SCENARIO}{extra}"), "t").unwrap();
    let sim = Sim::start(SimConfig {
        scenario,
        ..Default::default()
    })
    .await
    .unwrap();
    let client = sim.client().await.unwrap();
    let vmis = dyn_api(
        &client,
        "kubevirt.io",
        "v1",
        "VirtualMachineInstance",
        "virtualmachineinstances",
        "prod",
    );
    wait_for(5, "real running", || async {
        (field(&vmis, "real", "/status/phase").await? == "Running").then_some(())
    })
    .await;
    assert_eq!(
        subresource(
            &client,
            "prod",
            "real",
            "freeze",
            r#"{"unfreezeTimeout":"200ms"}"#
        )
        .await,
        Ok(())
    );
    wait_for(5, "safety thaw", || async {
        sim.freeze_log()
            .iter()
            .any(|r| r.action == FreezeAction::SafetyThaw)
            .then_some(())
    })
    .await;
    let cmds = seen.lock().unwrap().clone();
    assert_eq!(
        cmds,
        [
            "guest-sync",
            "guest-fsfreeze-freeze",
            "guest-sync",
            "guest-fsfreeze-thaw"
        ]
    );
    // A dead agent socket makes freeze fail with 500.
    drop(dir);
    assert_eq!(
        subresource(
            &client,
            "prod",
            "real",
            "freeze",
            r#"{"unfreezeTimeout":"5m"}"#
        )
        .await,
        Err(500)
    );
}

#[tokio::test]
async fn state_directory_resumes_objects_and_disks() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let scenario = Scenario::from_yaml(SCENARIO, "t").unwrap();
    let want = {
        let sim = Sim::start(SimConfig {
            scenario: scenario.clone(),
            state_dir: Some(state.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
        let client = sim.client().await.unwrap();
        let cms = dyn_api(&client, "", "v1", "ConfigMap", "configmaps", "prod");
        cms.create(&PostParams::default(), &obj(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keep"}, "data": {"a": "b"}})))
            .await
            .unwrap();
        sim.save_state().unwrap();
        sha(&std::fs::read(sim.pvc_path("prod", "db-root").unwrap()).unwrap())
    };
    // An empty scenario this time: everything comes from the state directory.
    let sim = Sim::start(SimConfig {
        state_dir: Some(state.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = sim.client().await.unwrap();
    let cms = dyn_api(&client, "", "v1", "ConfigMap", "configmaps", "prod");
    assert_eq!(cms.get("keep").await.unwrap().data["data"]["a"], "b");
    assert_eq!(
        sha(&std::fs::read(sim.pvc_path("prod", "db-root").unwrap()).unwrap()),
        want
    );
    let made = cms
        .create(
            &PostParams::default(),
            &obj(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "after"}})),
        )
        .await
        .unwrap();
    let rv: u64 = made.metadata.resource_version.unwrap().parse().unwrap();
    let old: u64 = cms
        .get("keep")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv > old, "resourceVersion continues after a restart");
}
