//! CDI: DataVolumes, UploadTokenRequest and the upload proxy.
//!
//! - A DataVolume gets a PVC of the same name (owned by it) from `spec.storage` or `spec.pvc`.
//!   Sources: `upload` → phase `UploadReady` once the PVC is bound, `Succeeded` after a
//!   complete upload; `blank` → `Succeeded` when bound; `snapshot` / `pvc` → the PVC's
//!   `dataSource` is set (so it starts as a copy) and `Succeeded` when bound. Other sources
//!   (http, registry, s3, ...) are not simulated: phase `Failed` with a message saying so.
//! - `POST /apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{ns}/uploadtokenrequests` with
//!   `spec.pvcName` answers the object with `status.token` (not stored, like CDI's API).
//! - The upload proxy is on the API server's port (same CA as the kubeconfig):
//!   `POST /v1beta1/upload` and `/v1beta1/upload-async` with `Authorization: Bearer <token>`;
//!   the body may be raw, gzip or zstd (detected by magic bytes, as CDI does); it is written
//!   sparsely into the PVC's file, which keeps the PVC size (400 when the image is larger).
//!   503 while the DataVolume is not `UploadReady`. Fault `upload-fail` answers its `status`;
//!   with 401 the token used is also invalidated (like an expired token). `cdiconfigs/config` carries
//!   `status.uploadProxyURL`.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde_json::{json, Value};

use crate::http::{text_response, Body};
use crate::status::ApiError;
use crate::store::{meta_str, name_ns, now_rfc3339};
use crate::Inner;

/// Upload tokens and finished uploads (by the PVC's uid: a DataVolume recreated under the
/// same name is a new, empty volume, as in CDI).
#[derive(Debug, Default)]
pub struct CdiState {
    tokens: Mutex<HashMap<String, (String, String)>>,
    done: Mutex<HashSet<String>>,
}

/// Answer an UploadTokenRequest.
pub(crate) fn token_request(inner: &Arc<Inner>, mut obj: Value) -> Result<Value, ApiError> {
    let (_, ns) = name_ns(&obj);
    let pvc = obj
        .pointer("/spec/pvcName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "UploadTokenRequest",
                "upload.cdi.kubevirt.io",
                meta_str(&obj, "name").unwrap_or(""),
                vec![crate::status::Cause {
                    reason: "FieldValueRequired".into(),
                    message: "Required value".into(),
                    field: "spec.pvcName".into(),
                }],
            )
        })?
        .to_string();
    let token = crate::util::random_token();
    inner
        .cdi
        .tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(token.clone(), (ns, pvc));
    obj["status"] = json!({"token": token});
    obj["metadata"]["creationTimestamp"] = json!(now_rfc3339());
    Ok(obj)
}

fn dv_phase(inner: &Inner, ns: &str, name: &str) -> Option<String> {
    inner
        .store
        .get(inner.rid("cdi.kubevirt.io", "datavolumes"), ns, name)
        .and_then(|d| {
            d.pointer("/status/phase")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
}

/// The upload proxy.
pub(crate) async fn upload(inner: Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let plain = |code: u16, msg: String| text_response(code, "text/plain", msg);
    if req.method() != Method::POST && req.method() != Method::PUT {
        return plain(405, "use POST".into());
    }
    let token = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|s| s.trim().to_string());
    let target = token.as_ref().and_then(|t| {
        inner
            .cdi
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(t)
            .cloned()
    });
    let Some((ns, pvc)) = target else {
        return plain(401, "Unauthorized: invalid or missing upload token".into());
    };
    if let Some(e) = inner.faults.call("upload-fail", &ns, &pvc) {
        if e.code == 401 {
            // Like an expired token: it stays invalid, the client needs a new one.
            if let Some(t) = &token {
                inner
                    .cdi
                    .tokens
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(t);
            }
        }
        return plain(e.code, e.message.clone());
    }
    if dv_phase(&inner, &ns, &pvc).as_deref() != Some("UploadReady") {
        return plain(
            503,
            format!("upload server for {ns}/{pvc} is not ready (DataVolume not UploadReady)"),
        );
    }
    let path = match crate::snapshot::pvc_file(&inner, &ns, &pvc) {
        Ok(p) => p,
        Err(e) => return plain(503, e.to_string()),
    };
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(16);
    let writer = tokio::task::spawn_blocking(move || write_image(rx, &path, size));
    let mut body = req.into_body();
    let mut ok = true;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    let tx = tx.clone();
                    // The writer may have stopped (error): then stop reading.
                    if tokio::task::spawn_blocking(move || tx.send(data))
                        .await
                        .map_or(true, |r| r.is_err())
                    {
                        break;
                    }
                }
            }
            Err(_) => {
                ok = false;
                break;
            }
        }
    }
    drop(tx);
    let result = writer.await;
    if !ok {
        return plain(400, "upload body was cut off".into());
    }
    match result {
        Ok(Ok(n)) => {
            let pvc_res = inner.rid("", "persistentvolumeclaims");
            let uid = inner
                .store
                .get(pvc_res, &ns, &pvc)
                .and_then(|p| meta_str(&p, "uid").map(str::to_string))
                .unwrap_or_default();
            inner
                .cdi
                .done
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(uid);
            tracing::info!("upload to {ns}/{pvc}: {n} bytes");
            inner.store.poke();
            plain(200, String::new())
        }
        Ok(Err(msg)) => plain(400, msg),
        Err(e) => plain(500, format!("upload writer failed: {e}")),
    }
}

struct ChanReader {
    rx: std::sync::mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl Read for ChanReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.recv() {
                Ok(b) => self.cur = b,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// Decompress (by magic) and write sparsely. Returns the image size.
fn write_image(
    rx: std::sync::mpsc::Receiver<Bytes>,
    path: &std::path::Path,
    size: u64,
) -> Result<u64, String> {
    let mut r = ChanReader {
        rx,
        cur: Bytes::new(),
    };
    let mut head = [0u8; 4];
    let n = crate::disk::read_full(&mut r, &mut head).map_err(|e| e.to_string())?;
    let head = head[..n].to_vec();
    let chained = std::io::Cursor::new(head.clone()).chain(r);
    let mut src: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(chained))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::new(chained).map_err(|e| format!("zstd: {e}"))?)
    } else {
        Box::new(chained)
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    f.set_len(0).map_err(|e| e.to_string())?;
    f.set_len(size).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; crate::disk::COPY_BLOCK];
    let mut off = 0u64;
    loop {
        let n = crate::disk::read_full(&mut src, &mut buf)
            .map_err(|e| format!("decoding upload: {e}"))?;
        if n == 0 {
            break;
        }
        if off + n as u64 > size {
            return Err(format!(
                "virtual image size is larger than the available size {size} of the PVC"
            ));
        }
        if !crate::disk::is_zero(&buf[..n]) {
            f.seek(SeekFrom::Start(off)).map_err(|e| e.to_string())?;
            f.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        }
        off += n as u64;
    }
    f.sync_all().map_err(|e| e.to_string())?;
    Ok(off)
}

/// One pass over DataVolumes (and the CDIConfig).
pub(crate) fn reconcile(inner: &Inner) {
    let cfg_res = inner.rid("cdi.kubevirt.io", "cdiconfigs");
    if inner.store.get(cfg_res, "", "config").is_none() {
        let _ = inner.store.create(cfg_res, json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "CDIConfig", "metadata": {"name": "config"}, "spec": {}}));
    }
    let url = inner.api_url().to_string();
    let _ = inner.store.mutate(cfg_res, "", "config", |o| {
        o["status"]["uploadProxyURL"] = json!(url);
    });
    let dv_res = inner.rid("cdi.kubevirt.io", "datavolumes");
    let pvc_res = inner.rid("", "persistentvolumeclaims");
    let (dvs, _) = inner.store.list(dv_res, None);
    for dv in dvs {
        if dv.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let (name, ns) = name_ns(&dv);
        let phase = dv
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if phase == "Succeeded" || phase == "Failed" {
            continue;
        }
        let source = dv.pointer("/spec/source").cloned().unwrap_or(json!({}));
        let kind = [
            "upload", "blank", "snapshot", "pvc", "http", "registry", "s3", "gcs", "imageio",
            "vddk",
        ]
        .into_iter()
        .find(|k| source.get(*k).is_some())
        .unwrap_or("blank");
        if !matches!(kind, "upload" | "blank" | "snapshot" | "pvc") {
            let _ = inner.store.mutate(dv_res, &ns, &name, |o| {
                o["status"] = json!({"phase": "Failed", "progress": "N/A", "conditions": [
                    {"type": "Ready", "status": "False", "reason": "NotSimulated", "message": format!("DataVolume source {kind:?} is not simulated by virtguard-sim")}]});
            });
            continue;
        }
        let pvc = inner.store.get(pvc_res, &ns, &name);
        if pvc.is_none() {
            let spec = dv
                .pointer("/spec/storage")
                .or_else(|| dv.pointer("/spec/pvc"))
                .cloned()
                .unwrap_or(json!({}));
            let mut pspec = json!({
                "accessModes": spec.get("accessModes").cloned().unwrap_or(json!(["ReadWriteOnce"])),
                "resources": spec.get("resources").cloned().unwrap_or(json!({"requests": {"storage": "1Gi"}})),
            });
            for f in ["storageClassName", "volumeMode"] {
                if let Some(v) = spec.get(f) {
                    pspec[f] = v.clone();
                }
            }
            match kind {
                "snapshot" => {
                    pspec["dataSource"] = json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": source.pointer("/snapshot/name")})
                }
                "pvc" => {
                    pspec["dataSource"] = json!({"kind": "PersistentVolumeClaim", "name": source.pointer("/pvc/name")})
                }
                _ => {}
            }
            let obj = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "namespace": ns, "labels": {"app": "containerized-data-importer"},
                    "annotations": {"cdi.kubevirt.io/storage.contentType": "kubevirt"},
                    "ownerReferences": [{"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "name": name, "uid": meta_str(&dv, "uid"), "controller": true, "blockOwnerDeletion": true}]},
                "spec": pspec});
            if let Err(e) = inner.store.create(pvc_res, obj) {
                tracing::warn!("DataVolume {ns}/{name}: creating PVC: {e}");
            }
            let _ = inner.store.mutate(dv_res, &ns, &name, |o| {
                o["status"] = json!({"phase": "Pending", "progress": "N/A", "claimName": name});
            });
            continue;
        }
        let bound = pvc
            .as_ref()
            .and_then(|p| p.pointer("/status/phase").and_then(Value::as_str))
            == Some("Bound");
        let pvc_uid = pvc
            .as_ref()
            .and_then(|p| meta_str(p, "uid"))
            .unwrap_or_default()
            .to_string();
        let uploaded = inner
            .cdi
            .done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&pvc_uid);
        let (new_phase, progress) = match (kind, bound) {
            (_, false) => ("Pending", "N/A"),
            ("upload", true) if uploaded => ("Succeeded", "100.0%"),
            ("upload", true) => ("UploadReady", "N/A"),
            (_, true) => ("Succeeded", "100.0%"),
        };
        if new_phase == phase {
            continue;
        }
        let ready = if new_phase == "Succeeded" {
            "True"
        } else {
            "False"
        };
        let _ = inner.store.mutate(dv_res, &ns, &name, |o| {
            o["status"] = json!({"phase": new_phase, "progress": progress, "claimName": name, "conditions": [
                {"type": "Bound", "status": if bound { "True" } else { "False" }, "reason": if bound { "Bound" } else { "Pending" }, "lastTransitionTime": now_rfc3339(), "lastHeartbeatTime": now_rfc3339()},
                {"type": "Ready", "status": ready, "reason": new_phase, "lastTransitionTime": now_rfc3339(), "lastHeartbeatTime": now_rfc3339()},
                {"type": "Running", "status": if new_phase == "UploadReady" { "True" } else { "False" }, "reason": if new_phase == "UploadReady" { "Pod is running" } else { "Completed" }, "lastTransitionTime": now_rfc3339(), "lastHeartbeatTime": now_rfc3339()},
            ]});
        });
    }
}
