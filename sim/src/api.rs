//! The Kubernetes REST API: routing, discovery, and the verbs on stored objects.
//!
//! Paths follow the real server: `/api/v1/[namespaces/{ns}/]{plural}[/{name}[/status]]` and
//! `/apis/{group}/{version}/...`. Every request except the CDI upload proxy must carry
//! `Authorization: Bearer <token>` (401 otherwise). Writes are validated (see `schema.rs`)
//! before they reach the store; errors are `Status` objects.
//!
//! Simplifications (documented in the README): server-side apply is a merge patch without
//! field ownership tracking (but it creates missing objects); strategic merge patch on core
//! kinds is a JSON merge patch (lists are replaced, not merged by key); strategic merge on
//! custom resources is refused with 415, like the real server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response};
use serde_json::{json, Value};

use crate::http::{error_response, json_response, query, read_body, Body};
use crate::resources::{ResId, ResourceDef};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{ApiError, Cause};
use crate::store::{meta_str, EventType};
use crate::Inner;

/// Largest request body accepted by the API (not the upload proxy).
const MAX_BODY: usize = 16 << 20;

/// Where a request is aimed.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub res: ResId,
    pub version: String,
    pub ns: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
    pub watch_path: bool,
}

pub(crate) async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path.starts_with("/v1beta1/upload") {
        return crate::cdi::upload(inner, req).await;
    }
    let authorized = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| crate::util::ct_eq(t.trim(), &inner.token));
    if !authorized {
        return error_response(&ApiError::unauthorized());
    }
    match route(inner, req, &path).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

fn not_found_path() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

async fn route(
    inner: Arc<Inner>,
    req: Request<Incoming>,
    path: &str,
) -> Result<Response<Body>, ApiError> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let method = req.method().clone();
    match segs.as_slice() {
        [] => {
            return Ok(json_response(
                200,
                &json!({"paths": ["/api", "/api/v1", "/apis", "/version"]}),
            ))
        }
        ["version"] => return Ok(json_response(200, &version())),
        ["healthz"] | ["readyz"] | ["livez"] => {
            return Ok(crate::http::text_response(200, "text/plain", "ok"))
        }
        ["api"] => {
            return Ok(json_response(
                200,
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
            ))
        }
        ["api", "v1"] => return Ok(json_response(200, &resource_list(&inner, "", "v1"))),
        ["apis"] => return Ok(json_response(200, &group_list(&inner))),
        ["apis", g] => {
            return group_list(&inner)["groups"]
                .as_array()
                .and_then(|gs| gs.iter().find(|x| x["name"] == *g).cloned())
                .map(|mut x| {
                    x["kind"] = json!("APIGroup");
                    x["apiVersion"] = json!("v1");
                    json_response(200, &x)
                })
                .ok_or_else(not_found_path)
        }
        ["apis", g, v] if *g != "subresources.kubevirt.io" => {
            let l = resource_list(&inner, g, v);
            if l["resources"].as_array().is_none_or(|a| a.is_empty()) {
                return Err(not_found_path());
            }
            return Ok(json_response(200, &l));
        }
        ["apis", "subresources.kubevirt.io", ..] => {
            return crate::kubevirt::subresource(inner, req, &segs).await
        }
        ["sim", ..] => return crate::debug_endpoint(&inner, &segs[1..]),
        _ => {}
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found_path()),
    };
    let (watch_path, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        r => (false, r),
    };
    let (ns, plural, name, sub) = match rest {
        ["namespaces", ns, plural, tail @ ..] if *plural != "status" && *plural != "finalize" => {
            (Some(ns.to_string()), *plural, tail.first(), tail.get(1))
        }
        [plural, tail @ ..] => (None, *plural, tail.first(), tail.get(1)),
        [] => return Err(not_found_path()),
    };
    let res = inner
        .reg
        .find(group, version, plural)
        .ok_or_else(not_found_path)?;
    let def = inner.reg.def(res).clone();
    if !def.namespaced && ns.is_some() {
        return Err(not_found_path());
    }
    if def.namespaced && ns.is_none() && name.is_some() {
        return Err(not_found_path());
    }
    if let Some(s) = sub {
        if *s != "status" || !def.status {
            return Err(not_found_path());
        }
    }
    let t = Target {
        res,
        version: version.to_string(),
        ns,
        name: name.map(|s| s.to_string()),
        sub: sub.map(|s| s.to_string()),
        watch_path,
    };
    let q = query(&req);
    let verb = match (&method, t.name.is_some()) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) => {
            if t.watch_path || matches!(q.get("watch").map(String::as_str), Some("true" | "1")) {
                "watch"
            } else {
                "list"
            }
        }
        (&Method::POST, false) => "create",
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({method} {path})"
            )))
        }
    };
    if let Some(e) = inner.faults.api_call(
        verb,
        def.plural,
        t.ns.as_deref().unwrap_or(""),
        t.name.as_deref().unwrap_or(""),
    ) {
        return Err(e);
    }
    match verb {
        "get" => {
            let obj = inner
                .store
                .get(
                    res,
                    t.ns.as_deref().unwrap_or(""),
                    t.name.as_deref().unwrap_or(""),
                )
                .ok_or_else(|| {
                    ApiError::not_found(def.group, def.plural, t.name.as_deref().unwrap_or(""))
                })?;
            Ok(json_response(200, &out(&def, &t.version, obj)))
        }
        "list" => list(&inner, &t, &def, &q),
        "watch" => watch(inner.clone(), &t, &def, &q),
        "create" => {
            let ctype = content_type(&req);
            let body = read_body(req, MAX_BODY).await?;
            let obj = parse_body(&body, &ctype)?;
            let created = create(&inner, &t, obj, &q)?;
            Ok(json_response(201, &out(&def, &t.version, created)))
        }
        "update" => {
            let ctype = content_type(&req);
            let body = read_body(req, MAX_BODY).await?;
            let obj = parse_body(&body, &ctype)?;
            let updated = update(&inner, &t, obj, &q)?;
            Ok(json_response(200, &out(&def, &t.version, updated)))
        }
        "patch" => {
            let ctype = content_type(&req);
            let body = read_body(req, MAX_BODY).await?;
            let (code, obj) = patch(&inner, &t, &ctype, &body, &q)?;
            Ok(json_response(code, &out(&def, &t.version, obj)))
        }
        "delete" => {
            let body = read_body(req, MAX_BODY).await?;
            let obj = delete(&inner, &t, &body, &q)?;
            Ok(json_response(200, &out(&def, &t.version, obj)))
        }
        _ => {
            let body = read_body(req, MAX_BODY).await?;
            let (items, _) = inner.store.list(res, t.ns.as_deref());
            let ls =
                LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?;
            let fs =
                FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))?;
            let mut deleted = Vec::new();
            for it in items.iter().filter(|o| ls.matches(o) && fs.matches(o)) {
                let mut t2 = t.clone();
                t2.name = meta_str(it, "name").map(str::to_string);
                t2.ns = meta_str(it, "namespace")
                    .map(str::to_string)
                    .or(t.ns.clone());
                if let Ok(o) = delete(&inner, &t2, &body, &q) {
                    deleted.push(out(&def, &t.version, o));
                }
            }
            Ok(json_response(
                200,
                &json!({"kind": format!("{}List", def.kind), "apiVersion": def.api_version(&t.version),
                        "metadata": {"resourceVersion": inner.store.current_rv().to_string()}, "items": deleted}),
            ))
        }
    }
}

fn content_type(req: &Request<Incoming>) -> String {
    req.headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

fn parse_body(body: &[u8], ctype: &str) -> Result<Value, ApiError> {
    if ctype.contains("yaml") {
        serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("decoding YAML body: {e}")))
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })
    }
}

/// The object as returned to a client that asked for `version`.
pub(crate) fn out(def: &ResourceDef, version: &str, mut obj: Value) -> Value {
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(def.api_version(version)));
        m.insert("kind".into(), json!(def.kind));
    }
    obj
}

fn version() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-virtguard-sim",
        "gitCommit": "virtguard-sim", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "n/a", "compiler": "virtguard-sim", "platform": "linux/amd64"
    })
}

fn resource_list(inner: &Inner, group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for d in inner
        .reg
        .defs
        .iter()
        .filter(|d| d.group == group && d.versions.contains(&version))
    {
        let verbs = if d.plural == "uploadtokenrequests" {
            json!(["create"])
        } else {
            json!([
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch"
            ])
        };
        resources.push(json!({
            "name": d.plural, "singularName": d.singular, "namespaced": d.namespaced, "kind": d.kind,
            "verbs": verbs, "shortNames": d.short_names,
        }));
        if d.status {
            resources.push(json!({
                "name": format!("{}/status", d.plural), "singularName": "", "namespaced": d.namespaced,
                "kind": d.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn group_list(inner: &Inner) -> Value {
    let mut groups: Vec<Value> = inner
        .reg
        .groups()
        .into_iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0].clone()})
        })
        .collect();
    groups.push(json!({"name": "subresources.kubevirt.io",
        "versions": [{"groupVersion": "subresources.kubevirt.io/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": "subresources.kubevirt.io/v1", "version": "v1"}}));
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn list(
    inner: &Inner,
    t: &Target,
    def: &ResourceDef,
    q: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let ls = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?;
    let fs = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))?;
    let (items, rv) = inner.store.list(t.res, t.ns.as_deref());
    let mut items: Vec<Value> = items
        .into_iter()
        .filter(|o| ls.matches(o) && fs.matches(o))
        .collect();
    if let Some(tok) = q.get("continue").filter(|s| !s.is_empty()) {
        let raw = hex::decode(tok).map_err(|_| ApiError::bad_request("invalid continue token"))?;
        let after = String::from_utf8_lossy(&raw).to_string();
        items.retain(|o| key_of(o) > after);
    }
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if items.len() > limit {
        let rest = items.len() - limit;
        items.truncate(limit);
        if let Some(last) = items.last() {
            meta["continue"] = json!(hex::encode(key_of(last)));
            meta["remainingItemCount"] = json!(rest);
        }
    }
    let items: Vec<Value> = items.into_iter().map(|o| out(def, &t.version, o)).collect();
    Ok(json_response(
        200,
        &json!({"kind": format!("{}List", def.kind), "apiVersion": def.api_version(&t.version), "metadata": meta, "items": items}),
    ))
}

fn key_of(o: &Value) -> String {
    format!(
        "{}\u{0}{}",
        meta_str(o, "namespace").unwrap_or(""),
        meta_str(o, "name").unwrap_or("")
    )
}

fn watch(
    inner: Arc<Inner>,
    t: &Target,
    def: &ResourceDef,
    q: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let mut fsel = q.get("fieldSelector").cloned().unwrap_or_default();
    if let Some(n) = &t.name {
        // Legacy /watch/.../{name} form.
        if !fsel.is_empty() {
            fsel.push(',');
        }
        fsel.push_str(&format!("metadata.name={n}"));
    }
    let ls = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?;
    let fs = FieldSelector::parse(&fsel)?;
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let initial_events = q.get("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1800)
        .min(3600);
    let rv_param = q.get("resourceVersion").cloned().unwrap_or_default();
    let def = def.clone();
    let version = t.version.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let res = t.res;
    let ns = t.ns.clone();
    let ev_line = move |typ: &str, obj: Value| -> Bytes {
        let mut b = serde_json::to_vec(&json!({"type": typ, "object": obj})).unwrap_or_default();
        b.push(b'\n');
        Bytes::from(b)
    };
    let bookmark = {
        let def = def.clone();
        let version = version.clone();
        move |rv: u64, initial_end: bool| -> Value {
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if initial_end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            json!({"kind": def.kind, "apiVersion": def.api_version(&version), "metadata": meta})
        }
    };
    let matches = {
        let ls = ls.clone();
        let fs = fs.clone();
        move |o: &Value| ls.matches(o) && fs.matches(o)
    };
    // Establish the starting point synchronously so the response reflects the request time.
    let mut initial: Vec<Bytes> = Vec::new();
    let mut pos: u64;
    let mut gone: Option<ApiError> = None;
    if rv_param.is_empty() || rv_param == "0" || initial_events {
        let (items, rv) = inner.store.list(res, ns.as_deref());
        for o in items.into_iter().filter(|o| matches(o)) {
            initial.push(ev_line("ADDED", out(&def, &version, o)));
        }
        pos = rv;
        if initial_events && bookmarks {
            initial.push(ev_line("BOOKMARK", bookmark(rv, true)));
        }
    } else {
        pos = rv_param
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv_param:?}")))?;
        if let Err(e) = inner.store.events_after(pos) {
            gone = Some(e);
        }
    }
    let mut notify = inner.store.subscribe();
    let stop = inner.stop.clone();
    tokio::spawn(async move {
        for b in initial {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        if let Some(e) = gone {
            let _ = tx.send(ev_line("ERROR", e.to_status())).await;
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut last_bookmark = tokio::time::Instant::now();
        loop {
            let events = match inner.store.events_after(pos) {
                Ok(e) => e,
                Err(e) => {
                    let _ = tx.send(ev_line("ERROR", e.to_status())).await;
                    return;
                }
            };
            for e in events {
                pos = e.rv;
                if e.res != res || ns.as_deref().is_some_and(|n| n != e.ns) {
                    continue;
                }
                let now_m = matches(&e.obj);
                let was_m = e.old.as_ref().is_some_and(&matches);
                let typ = match e.kind {
                    EventType::Added if now_m => "ADDED",
                    EventType::Deleted if now_m || was_m => "DELETED",
                    EventType::Modified if now_m && was_m => "MODIFIED",
                    EventType::Modified if now_m => "ADDED",
                    EventType::Modified if was_m => "DELETED",
                    _ => continue,
                };
                if tx
                    .send(ev_line(typ, out(&def, &version, e.obj.clone())))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if bookmarks && last_bookmark.elapsed() >= Duration::from_secs(1) {
                last_bookmark = tokio::time::Instant::now();
                if tx
                    .send(ev_line("BOOKMARK", bookmark(pos, false)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            tokio::select! {
                _ = notify.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(1000)) => {}
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                _ = stop.cancelled() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
    });
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream.boxed())));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

fn is_dry_run(q: &HashMap<String, String>) -> bool {
    q.get("dryRun").is_some_and(|v| v == "All")
}

fn strict(q: &HashMap<String, String>) -> bool {
    q.get("fieldValidation").is_some_and(|v| v == "Strict")
}

const GEN_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

/// Create: name/generateName, namespace from the path, status reset, validation, hooks.
pub(crate) fn create(
    inner: &Arc<Inner>,
    t: &Target,
    mut obj: Value,
    q: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let def = inner.reg.def(t.res).clone();
    check_kind(&def, &obj)?;
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    if let Some(ns) = &t.ns {
        match meta_str(&obj, "namespace") {
            Some(n) if !n.is_empty() && n != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            _ => obj["metadata"]["namespace"] = json!(ns),
        }
    } else if def.namespaced {
        return Err(not_found_path());
    }
    let name = meta_str(&obj, "name").unwrap_or("").to_string();
    if name.is_empty() {
        match meta_str(&obj, "generateName") {
            Some(prefix) if !prefix.is_empty() => {
                let suffix: String = (0..5)
                    .map(|_| GEN_CHARS[rand::random::<usize>() % GEN_CHARS.len()] as char)
                    .collect();
                obj["metadata"]["name"] = json!(format!("{prefix}{suffix}"));
            }
            _ => {
                return Err(ApiError::invalid(
                    def.kind,
                    def.group,
                    "",
                    vec![Cause {
                        reason: "FieldValueRequired".into(),
                        message: "Required value: name or generateName is required".into(),
                        field: "metadata.name".into(),
                    }],
                ))
            }
        }
    }
    let name = meta_str(&obj, "name").unwrap_or("").to_string();
    if !valid_name(&name) {
        return Err(ApiError::invalid(def.kind, def.group, &name, vec![Cause {
            reason: "FieldValueInvalid".into(),
            message: format!("Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
            field: "metadata.name".into(),
        }]));
    }
    if def.status {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
    obj["apiVersion"] = json!(def.api_version(def.version()));
    obj["kind"] = json!(def.kind);
    crate::schema::validate(inner, t.res, &t.version, &mut obj, strict(q))?;
    crate::controllers::on_create(inner, t.res, &mut obj)?;
    if def.plural == "uploadtokenrequests" {
        // Virtual resource: answered, never stored (like CDI's aggregated API).
        return crate::cdi::token_request(inner, obj);
    }
    if is_dry_run(q) {
        return Ok(obj);
    }
    inner.store.create(t.res, obj)
}

fn check_kind(def: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
    if let Some(k) = obj.get("kind").and_then(Value::as_str) {
        if !k.is_empty() && k != def.kind {
            return Err(ApiError::bad_request(format!(
                "the kind {k:?} in the body does not match the resource {:?} (kind {:?})",
                def.plural, def.kind
            )));
        }
    }
    Ok(())
}

/// Merge main-resource vs status-subresource writes the way the real server does.
fn merge_scope(def: &ResourceDef, sub: Option<&str>, old: &Value, mut new: Value) -> Value {
    if !def.status {
        return new;
    }
    if sub == Some("status") {
        let mut merged = old.clone();
        match new.get_mut("status").map(Value::take) {
            Some(s) => merged["status"] = s,
            None => {
                if let Some(m) = merged.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        if let Some(rv) = new.pointer("/metadata/resourceVersion").cloned() {
            merged["metadata"]["resourceVersion"] = rv;
        }
        merged
    } else {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        new
    }
}

fn update(
    inner: &Arc<Inner>,
    t: &Target,
    mut obj: Value,
    q: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let def = inner.reg.def(t.res).clone();
    check_kind(&def, &obj)?;
    let name = t.name.clone().unwrap_or_default();
    let ns = t.ns.clone().unwrap_or_default();
    if meta_str(&obj, "name").is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["name"] = json!(name);
    if def.namespaced {
        obj["metadata"]["namespace"] = json!(ns);
    }
    let old = inner
        .store
        .get(t.res, &ns, &name)
        .ok_or_else(|| ApiError::not_found(def.group, def.plural, &name))?;
    let rv = meta_str(&obj, "resourceVersion")
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    if rv.is_none() && def.crd {
        return Err(ApiError::invalid(
            def.kind,
            def.group,
            &name,
            vec![Cause {
                reason: "FieldValueInvalid".into(),
                message: "Invalid value: 0x0: must be specified for an update".into(),
                field: "metadata.resourceVersion".into(),
            }],
        ));
    }
    let mut obj = merge_scope(&def, t.sub.as_deref(), &old, obj);
    obj["apiVersion"] = json!(def.api_version(def.version()));
    obj["kind"] = json!(def.kind);
    crate::schema::validate(inner, t.res, &t.version, &mut obj, strict(q))?;
    if is_dry_run(q) {
        return Ok(obj);
    }
    inner.store.update(t.res, obj, rv.as_deref())
}

fn patch(
    inner: &Arc<Inner>,
    t: &Target,
    ctype: &str,
    body: &[u8],
    q: &HashMap<String, String>,
) -> Result<(u16, Value), ApiError> {
    let def = inner.reg.def(t.res).clone();
    let name = t.name.clone().unwrap_or_default();
    let ns = t.ns.clone().unwrap_or_default();
    let old = inner.store.get(t.res, &ns, &name);
    let merge = |doc: &mut Value, p: &Value| json_patch::merge(doc, p);
    let patched = match ctype {
        "application/json-patch+json" => {
            let old = old.clone().ok_or_else(|| ApiError::not_found(def.group, def.plural, &name))?;
            let p: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("decoding JSON patch: {e}")))?;
            let mut doc = old;
            json_patch::patch(&mut doc, &p).map_err(|e| {
                ApiError::new(422, "Invalid", format!("the JSON patch could not be applied: {e}"))
            })?;
            doc
        }
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            if ctype.starts_with("application/strategic") && def.crd {
                return Err(ApiError::unsupported_media(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                ));
            }
            let old = old.clone().ok_or_else(|| ApiError::not_found(def.group, def.plural, &name))?;
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("decoding merge patch: {e}")))?;
            let mut doc = old;
            merge(&mut doc, &p);
            doc
        }
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
            if q.get("fieldManager").is_none_or(|f| f.is_empty()) {
                return Err(ApiError::bad_request(
                    "PATCH requests must have a field manager: set the fieldManager query parameter",
                ));
            }
            let p: Value = serde_yaml::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("decoding apply patch: {e}")))?;
            match old.clone() {
                None => {
                    if t.sub.is_some() {
                        return Err(ApiError::not_found(def.group, def.plural, &name));
                    }
                    let created = create(inner, t, p, q)?;
                    return Ok((201, created));
                }
                Some(mut doc) => {
                    merge(&mut doc, &p);
                    doc
                }
            }
        }
        other => {
            return Err(ApiError::unsupported_media(format!(
                "the body of the request was in an unknown format ({other}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json"
            )))
        }
    };
    let old = old.ok_or_else(|| ApiError::not_found(def.group, def.plural, &name))?;
    let expected = meta_str(&patched, "resourceVersion").map(str::to_string);
    let mut obj = merge_scope(&def, t.sub.as_deref(), &old, patched);
    obj["metadata"]["name"] = json!(name);
    if def.namespaced {
        obj["metadata"]["namespace"] = json!(ns);
    }
    obj["apiVersion"] = json!(def.api_version(def.version()));
    obj["kind"] = json!(def.kind);
    crate::schema::validate(inner, t.res, &t.version, &mut obj, strict(q))?;
    if is_dry_run(q) {
        return Ok((200, obj));
    }
    inner
        .store
        .update(t.res, obj, expected.as_deref())
        .map(|o| (200, o))
}

fn delete(
    inner: &Arc<Inner>,
    t: &Target,
    body: &[u8],
    q: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let def = inner.reg.def(t.res).clone();
    let opts: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("decoding DeleteOptions: {e}")))?
    };
    let policy = opts
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| q.get("propagationPolicy").cloned())
        .unwrap_or_else(|| "Background".into());
    let rv = opts
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str);
    let uid = opts.pointer("/preconditions/uid").and_then(Value::as_str);
    let name = t.name.clone().unwrap_or_default();
    let ns = t.ns.clone().unwrap_or_default();
    let dry = is_dry_run(q)
        || opts
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "All"));
    if dry {
        return inner
            .store
            .get(t.res, &ns, &name)
            .ok_or_else(|| ApiError::not_found(def.group, def.plural, &name));
    }
    if def.plural == "namespaces" {
        // The namespace controller, collapsed: delete everything in it, then the namespace.
        for (i, d) in inner.reg.defs.iter().enumerate() {
            if !d.namespaced {
                continue;
            }
            let (items, _) = inner.store.list(i, Some(&name));
            for it in items {
                let n = meta_str(&it, "name").unwrap_or_default().to_string();
                let _ = inner.store.delete(i, &name, &n, None, None, false);
            }
        }
    }
    let (obj, _removed) = inner
        .store
        .delete(t.res, &ns, &name, rv, uid, policy == "Orphan")?;
    Ok(obj)
}
