//! VirtualMachineExport (export.kubevirt.io/v1) controller and the export server.
//!
//! Controller, per export:
//! - token: the Secret named by `spec.tokenSecretRef` (key `token`), or a generated Secret
//!   `export-token-<name>` owned by the export; published as `status.tokenSecretRef`;
//! - volumes: source `PersistentVolumeClaim` → that PVC; source `VirtualMachine` → the VM's
//!   PVC / DataVolume volumes (the VM must be stopped). A PVC used by a running VMI keeps the
//!   export `Pending` (reason `InUse`), as KubeVirt does. `VirtualMachineSnapshot` sources are
//!   not simulated (Pending, reason `NotSimulated`);
//! - after `exportReadyMs`: phase `Ready`, `status.links.internal` with `cert` (PEM of the
//!   export server's CA) and URLs on the sim's export server;
//! - TTL: `status.ttlExpirationTime` = creation + `spec.ttlDuration` (default 2 h); the export is
//!   deleted when it passes.
//!
//! Server (HTTPS, its own CA), one per simulator, paths prefixed by `/<ns>/<export>`:
//! `volumes/<vol>/disk.img` (raw, `Range: bytes=a-b|a-|-n`, 206 + `Content-Range`, correct
//! `Content-Length`, HEAD), `volumes/<vol>/disk.img.gz` (gzip stream), `internal/manifests/all`
//! (YAML of the VM and its PVCs) and `internal/manifests/secret` (a Secret with the token
//! header). Every request needs `x-kubevirt-export-token` (header or query parameter): 401
//! otherwise. The image bytes are served by [`crate::image_http`]; paths under
//! `/_backup/` belong to the changed-block backup endpoint ([`crate::cbt`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde_json::{json, Value};

use crate::http::{text_response, Body};
use crate::store::{meta_str, name_ns, now_rfc3339};
use crate::{image_http, Inner};

/// Export server identity.
#[derive(Debug)]
pub struct ExportState {
    /// PEM of the export server's CA (`status.links.internal.cert`).
    pub ca_pem: String,
    pub port: u16,
}

impl ExportState {
    pub fn new(ca_pem: String, port: u16) -> Self {
        ExportState { ca_pem, port }
    }
}

#[derive(Default)]
pub(crate) struct ExportTimers {
    seen: HashMap<String, Instant>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// PVC names exported by an export (None = not exportable yet, with the reason).
fn export_volumes(inner: &Inner, ex: &Value) -> Result<Vec<String>, (&'static str, String)> {
    let (_, ns) = name_ns(ex);
    let kind = ex
        .pointer("/spec/source/kind")
        .and_then(Value::as_str)
        .unwrap_or("");
    let src = ex
        .pointer("/spec/source/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let vmi_res = inner.rid("kubevirt.io", "virtualmachineinstances");
    let pvcs = match kind {
        "PersistentVolumeClaim" => vec![src.to_string()],
        "VirtualMachine" => {
            let vm = inner
                .store
                .get(inner.rid("kubevirt.io", "virtualmachines"), &ns, src)
                .ok_or(("VMNotFound", format!("VirtualMachine {ns}/{src} not found")))?;
            if inner.store.get(vmi_res, &ns, src).is_some() {
                return Err((
                    "VMNotStopped",
                    format!("VirtualMachine {ns}/{src} is running; stop it to export it"),
                ));
            }
            vm.pointer("/spec/template/spec/volumes")
                .and_then(Value::as_array)
                .map(|vs| {
                    vs.iter()
                        .filter_map(|v| {
                            v.pointer("/persistentVolumeClaim/claimName")
                                .or_else(|| v.pointer("/dataVolume/name"))
                                .and_then(Value::as_str)
                                .map(str::to_string)
                        })
                        .collect()
                })
                .unwrap_or_default()
        }
        other => {
            return Err((
                "NotSimulated",
                format!("export source kind {other:?} is not simulated by virtguard-sim"),
            ))
        }
    };
    let (vmis, _) = inner.store.list(vmi_res, Some(&ns));
    for p in &pvcs {
        crate::snapshot::pvc_file(inner, &ns, p).map_err(|e| ("PVCPending", e.to_string()))?;
        let in_use = vmis.iter().any(|vmi| {
            vmi.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
                && vmi
                    .pointer("/spec/volumes")
                    .and_then(Value::as_array)
                    .is_some_and(|vs| {
                        vs.iter().any(|v| {
                            v.pointer("/persistentVolumeClaim/claimName")
                                .or_else(|| v.pointer("/dataVolume/name"))
                                .and_then(Value::as_str)
                                == Some(p)
                        })
                    })
        });
        if in_use {
            return Err(("InUse", format!("pvc {ns}/{p} is in use by a running VMI")));
        }
    }
    Ok(pvcs)
}

fn base_url(inner: &Inner, ns: &str, name: &str) -> String {
    format!("https://127.0.0.1:{}/{ns}/{name}", inner.export.port)
}

/// One pass of the export controller.
pub(crate) fn reconcile(inner: &Inner, timers: &mut ExportTimers) {
    let res = inner.rid("export.kubevirt.io", "virtualmachineexports");
    let secret_res = inner.rid("", "secrets");
    let (all, _) = inner.store.list(res, None);
    let now = Instant::now();
    for ex in all {
        if ex.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let (name, ns) = name_ns(&ex);
        let uid = meta_str(&ex, "uid").unwrap_or_default().to_string();
        let seen = *timers.seen.entry(uid.clone()).or_insert(now);
        // TTL.
        let ttl = ex
            .pointer("/spec/ttlDuration")
            .and_then(Value::as_str)
            .and_then(crate::util::parse_go_duration)
            .unwrap_or(std::time::Duration::from_secs(
                inner.timings.export_ttl_secs,
            ));
        let created = meta_str(&ex, "creationTimestamp")
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_else(chrono::Utc::now);
        let expires =
            created + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(2));
        if chrono::Utc::now() >= expires {
            let _ = inner.store.delete(res, &ns, &name, None, None, false);
            timers.seen.remove(&uid);
            continue;
        }
        // Token secret.
        let secret_name = ex
            .pointer("/spec/tokenSecretRef")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("export-token-{name}"));
        if ex.pointer("/spec/tokenSecretRef").is_none()
            && inner.store.get(secret_res, &ns, &secret_name).is_none()
        {
            let secret = json!({
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": secret_name, "namespace": ns,
                    "ownerReferences": [{"apiVersion": "export.kubevirt.io/v1", "kind": "VirtualMachineExport", "name": name, "uid": uid, "controller": true}]},
                "data": {"token": b64().encode(crate::util::random_token())},
            });
            if let Err(e) = inner.store.create(secret_res, secret) {
                tracing::warn!("creating export token secret {ns}/{secret_name}: {e}");
            }
        }
        let vols = export_volumes(inner, &ex);
        let ready_time = now.duration_since(seen) >= crate::ms(inner.timings.export_ready_ms);
        let never = inner
            .faults
            .object("export-never-ready", &ns, &[&name])
            .is_some();
        let source_kind = ex
            .pointer("/spec/source/kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let source_name = ex
            .pointer("/spec/source/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let base = base_url(inner, &ns, &name);
        let ca = inner.export.ca_pem.clone();
        let _ = inner.store.mutate(res, &ns, &name, |o| {
            let mut st = json!({
                "tokenSecretRef": secret_name,
                "serviceName": format!("virt-export-{name}"),
                "ttlExpirationTime": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            });
            if source_kind == "VirtualMachine" {
                st["virtualMachineName"] = json!(source_name);
            }
            let old_cond = o.pointer("/status/conditions/0").cloned();
            let cond = |status: &str, reason: &str, message: &str| {
                let ts = match &old_cond {
                    Some(c) if c["status"] == status && c["reason"] == reason => c["lastTransitionTime"].clone(),
                    _ => json!(now_rfc3339()),
                };
                json!([{"type": "Ready", "status": status, "reason": reason, "message": message, "lastProbeTime": null, "lastTransitionTime": ts}])
            };
            match &vols {
                Ok(v) if ready_time && !never => {
                    st["phase"] = json!("Ready");
                    let volumes: Vec<Value> = v
                        .iter()
                        .map(|p| json!({"name": p, "formats": [
                            {"format": "raw", "url": format!("{base}/volumes/{p}/disk.img")},
                            {"format": "gzip", "url": format!("{base}/volumes/{p}/disk.img.gz")},
                        ]}))
                        .collect();
                    st["links"] = json!({"internal": {"cert": ca, "volumes": volumes, "manifests": [
                        {"type": "all", "url": format!("{base}/internal/manifests/all")},
                        {"type": "auth-header-secret", "url": format!("{base}/internal/manifests/secret")},
                    ]}});
                    st["conditions"] = cond("True", "PodReady", "");
                }
                Ok(_) => {
                    st["phase"] = json!("Pending");
                    st["conditions"] = cond("False", "PodPending", "export server is starting");
                }
                Err((reason, msg)) => {
                    st["phase"] = json!("Pending");
                    st["conditions"] = cond("False", reason, msg);
                }
            }
            o["status"] = st;
        });
    }
}

fn export_error(code: u16, msg: &str) -> Response<Body> {
    text_response(code, "text/plain", msg.to_string())
}

/// The export server.
pub(crate) async fn serve(inner: Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segs.first() == Some(&crate::cbt::URL_PREFIX) {
        return crate::cbt::serve(inner, req, &segs[1..]).await;
    }
    let (ns, name, rest) = match segs.as_slice() {
        [ns, name, rest @ ..] if !rest.is_empty() => {
            (ns.to_string(), name.to_string(), rest.to_vec())
        }
        _ => return export_error(404, "not found"),
    };
    let res = inner.rid("export.kubevirt.io", "virtualmachineexports");
    let Some(ex) = inner.store.get(res, &ns, &name) else {
        return export_error(404, "no such export");
    };
    if ex.pointer("/status/phase").and_then(Value::as_str) != Some("Ready") {
        return export_error(503, "export is not ready");
    }
    // Token.
    let q = crate::http::query(&req);
    let given = req
        .headers()
        .get("x-kubevirt-export-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| q.get("x-kubevirt-export-token").cloned());
    let secret_name = ex
        .pointer("/status/tokenSecretRef")
        .and_then(Value::as_str)
        .unwrap_or("");
    let want = inner
        .store
        .get(inner.rid("", "secrets"), &ns, secret_name)
        .and_then(|s| {
            s.pointer("/data/token")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .and_then(|t| b64().decode(t).ok())
        .map(|t| String::from_utf8_lossy(&t).trim().to_string());
    match (given, &want) {
        (Some(g), Some(w)) if crate::util::ct_eq(g.trim(), w) => {}
        _ => {
            return export_error(
                401,
                "Unauthorized: missing or wrong x-kubevirt-export-token",
            )
        }
    }
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return export_error(405, "method not allowed");
    }
    match rest.as_slice() {
        ["volumes", vol, file @ ("disk.img" | "disk.img.gz")] => {
            let vols = ex
                .pointer("/status/links/internal/volumes")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if !vols.iter().any(|v| v["name"] == *vol) {
                return export_error(404, "no such volume in this export");
            }
            let path = match crate::snapshot::pvc_file(&inner, &ns, vol) {
                Ok(p) => p,
                Err(e) => return export_error(500, &e.to_string()),
            };
            let drop_after = inner
                .faults
                .object_event("export-drop-after", &ns, &[&name])
                .and_then(|r| r.bytes);
            let range = req
                .headers()
                .get(hyper::header::RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if *file == "disk.img" {
                image_http::serve_raw(path, range.as_deref(), head, drop_after).await
            } else {
                image_http::serve_gzip(path, head, drop_after)
            }
        }
        ["internal", "manifests", "all"] => {
            let mut docs = Vec::new();
            let kind = ex
                .pointer("/spec/source/kind")
                .and_then(Value::as_str)
                .unwrap_or("");
            let src = ex
                .pointer("/spec/source/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            if kind == "VirtualMachine" {
                if let Some(vm) =
                    inner
                        .store
                        .get(inner.rid("kubevirt.io", "virtualmachines"), &ns, src)
                {
                    docs.push(clean(vm));
                }
            }
            for v in ex
                .pointer("/status/links/internal/volumes")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
            {
                let pvc_name = v["name"].as_str().unwrap_or("");
                if let Some(p) =
                    inner
                        .store
                        .get(inner.rid("", "persistentvolumeclaims"), &ns, pvc_name)
                {
                    docs.push(clean(p));
                }
            }
            let json_wanted = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("json"));
            if json_wanted {
                let body =
                    serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "List", "items": docs}))
                        .unwrap_or_default();
                return text_response(200, "application/json", body);
            }
            let mut text = String::new();
            for d in docs {
                text.push_str("---\n");
                text.push_str(&serde_yaml::to_string(&d).unwrap_or_default());
            }
            text_response(200, "application/yaml", text)
        }
        ["internal", "manifests", "secret"] => {
            let token = want.unwrap_or_default();
            let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("header-secret-{name}")},
                "stringData": {"token": format!("x-kubevirt-export-token:{token}")}});
            text_response(
                200,
                "application/yaml",
                serde_yaml::to_string(&s).unwrap_or_default(),
            )
        }
        _ => export_error(404, "not found"),
    }
}

/// An object as a manifest: no status, no server-owned metadata.
fn clean(mut o: Value) -> Value {
    if let Some(m) = o.as_object_mut() {
        m.remove("status");
    }
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "generation",
            "managedFields",
            "ownerReferences",
            "finalizers",
        ] {
            m.remove(f);
        }
    }
    o
}
