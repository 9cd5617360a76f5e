//! CDI: DataVolumes with an upload source and the upload proxy (raw, gzip and zstd bodies,
//! token checks, size limit).

use std::io::Write;

use base64::Engine;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;

use crate::common::{
    export_http, field, obj, prod, sha, start, wait_for, wait_phase, DATA_VOLUME,
    UPLOAD_TOKEN_REQUEST,
};

#[tokio::test]
async fn cdi_upload_raw_gzip_zstd() {
    let (sim, client) = start("", None).await;
    let dvs = prod(&client, DATA_VOLUME);
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
        wait_phase(&dvs, &name, "UploadReady", "UploadReady").await;
        let utr = prod(&client, UPLOAD_TOKEN_REQUEST);
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
        wait_phase(&dvs, &name, "Succeeded", "Succeeded").await;
        let got = std::fs::read(sim.pvc_path("prod", &name).unwrap()).unwrap();
        assert_eq!(sha(&got), want, "{kind}");
    }
    // Too large for the PVC → 400.
    dvs.create(&PostParams::default(), &obj(json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": "small"},
        "spec": {"source": {"upload": {}}, "storage": {"resources": {"requests": {"storage": "64Ki"}}}}})))
        .await
        .unwrap();
    wait_phase(&dvs, "small", "UploadReady", "UploadReady").await;
    let utr = prod(&client, UPLOAD_TOKEN_REQUEST);
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
