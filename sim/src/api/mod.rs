//! The Kubernetes REST API: authentication, routing, and the options every verb shares.
//!
//! Paths follow the real server: `/api/v1/[namespaces/{ns}/]{plural}[/{name}[/status]]` and
//! `/apis/{group}/{version}/...`. Every request except the CDI upload proxy must carry
//! `Authorization: Bearer <token>` (401 otherwise). The verbs live in their own modules:
//! [`discovery`] (`/api`, `/apis`, `/version`), [`openapi`] (`/openapi/v2`, `/openapi/v3`),
//! [`read`] (get, list), [`watch`], [`write`] (create, update, and the tail every write
//! shares), [`patch`] (JSON, merge, strategic), [`apply`] (server-side apply), [`managed`]
//! (`managedFields`), [`delete`], [`authz`] (access reviews); [`proto`] reads the protobuf
//! bodies kubectl's typed clients send.
//!
//! Invariants: a write is validated (`schema.rs`) before it reaches the store and never
//! reaches it with `dryRun=All`; every error is a `Status` object with the real reason and
//! code (checked against a real kube-apiserver by `tests/tests/kubectl_parity.rs`); unknown
//! fields follow `fieldValidation` (`Ignore` prunes, `Warn` — the server's default — prunes
//! and answers `Warning: 299` headers, `Strict` refuses with 400); a PATCH or apply without a
//! precondition of its own is re-applied to the latest object when another write came in
//! between (up to [`RETRIES`] times), as the real server's GuaranteedUpdate does.

pub(crate) mod apply;
pub(crate) mod authz;
pub(crate) mod delete;
pub(crate) mod discovery;
pub(crate) mod managed;
pub(crate) mod openapi;
pub(crate) mod patch;
pub(crate) mod proto;
pub(crate) mod read;
pub(crate) mod watch;
pub(crate) mod write;

use std::collections::HashMap;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde_json::{json, Value};

use crate::http::{error_response, json_response, query, read_body, Body};
use crate::resources::{ResId, ResourceDef};
use crate::status::ApiError;
use crate::Inner;

/// How many times a write without a client precondition is re-done when the object changed
/// underneath it (the real server's GuaranteedUpdate loop); patch and apply share it.
pub(crate) const RETRIES: usize = 8;

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

impl Target {
    /// The object's name and namespace ("" where the path has none).
    pub(crate) fn name_ns(&self) -> (String, String) {
        (
            self.name.clone().unwrap_or_default(),
            self.ns.clone().unwrap_or_default(),
        )
    }
}

/// What to do with fields the schema does not know (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    /// Prune silently.
    Ignore,
    /// Prune and answer a `Warning` header per field (the server's default).
    Warn,
    /// Refuse the request with 400 BadRequest.
    Strict,
}

/// The query options every write shares.
#[derive(Debug, Clone)]
pub(crate) struct WriteOpts {
    /// `dryRun=All`: validate and answer, store nothing.
    pub dry_run: bool,
    pub validation: FieldValidation,
    /// `fieldManager`, or the first word of the User-Agent like the real server.
    pub manager: String,
    /// `fieldManager` was given (server-side apply requires it).
    pub manager_given: bool,
    /// `force=true` (server-side apply takes over conflicting fields).
    pub force: bool,
    /// `propagationPolicy` of a DELETE given in the query (the body's wins).
    pub propagation: Option<String>,
}

impl WriteOpts {
    /// Parse from the query string and the User-Agent; invalid values are 400 like the real
    /// server.
    pub(crate) fn parse(q: &HashMap<String, String>, user_agent: &str) -> Result<Self, ApiError> {
        let dry_run = match q.get("dryRun").map(String::as_str) {
            None | Some("") => false,
            Some("All") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "Invalid dry run value: {other:?}: supported values: \"All\""
                )))
            }
        };
        let validation = match q.get("fieldValidation").map(String::as_str) {
            None | Some("") | Some("Warn") => FieldValidation::Warn,
            Some("Ignore") => FieldValidation::Ignore,
            Some("Strict") => FieldValidation::Strict,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "Invalid value: {other:?}: fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\""
                )))
            }
        };
        let manager = match q.get("fieldManager").filter(|m| !m.is_empty()) {
            Some(m) if m.len() > 128 => {
                return Err(ApiError::bad_request(
                    "fieldManager: Too long: may not be more than 128 bytes",
                ))
            }
            Some(m) => m.clone(),
            None => user_agent
                .split('/')
                .next()
                .unwrap_or("")
                .chars()
                .take(128)
                .collect(),
        };
        let force = q.get("force").is_some_and(|v| v == "true");
        Ok(WriteOpts {
            dry_run,
            validation,
            manager_given: q.get("fieldManager").is_some_and(|m| !m.is_empty()),
            manager,
            force,
            propagation: q.get("propagationPolicy").cloned(),
        })
    }
}

/// A successful write: the object and the warnings to send with it.
#[derive(Debug)]
pub(crate) struct Written {
    pub code: u16,
    pub obj: Value,
    pub warnings: Vec<String>,
    /// `obj` is a list already in the client's version (deletecollection).
    pub list: bool,
}

impl Written {
    pub(crate) fn new(code: u16, obj: Value, warnings: Vec<String>) -> Self {
        Written {
            code,
            obj,
            warnings,
            list: false,
        }
    }
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
    if let Some(audit) = &inner.audit {
        audit.record(&crate::audit::AuditRecord::from_request(
            req.method().as_str(),
            &path,
            req.uri().query().unwrap_or(""),
            &user_agent(&req),
        ));
    }
    match route(inner, req, &path).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

pub(crate) fn not_found_path() -> ApiError {
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
    match segs.as_slice() {
        ["openapi", ..] => return openapi::serve(&inner, &req, &segs[1..]),
        ["apis", "subresources.kubevirt.io", ..] => {
            return crate::kubevirt::subresource(inner, req, &segs).await
        }
        ["sim", ..] => return crate::debug_endpoint(&inner, &segs[1..]),
        _ => {}
    }
    if let Some(r) = discovery::serve(&inner, &segs)? {
        return Ok(r);
    }
    let t = target(&inner, &segs)?;
    let def = inner.reg.def(t.res).clone();
    let q = query(&req);
    let method = req.method().clone();
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
        "get" => read::get(&inner, &t, &def),
        "list" => read::list(&inner, &t, &def, &q),
        "watch" => watch::watch(inner.clone(), &t, &def, &q),
        _ => {
            let opts = WriteOpts::parse(&q, &user_agent(&req))?;
            let ctype = content_type(&req);
            let body = read_body(req, MAX_BODY).await?;
            let w = match verb {
                "create" => write::create(&inner, &t, parse_body(&body, &ctype)?, &opts)?,
                "update" => write::update(&inner, &t, parse_body(&body, &ctype)?, &opts)?,
                "patch" => patch::patch(&inner, &t, &ctype, &body, &opts)?,
                "delete" => delete::delete(&inner, &t, &body, &opts)?,
                _ => delete::delete_collection(&inner, &t, &body, &q, &opts)?,
            };
            let obj = if w.list {
                w.obj
            } else {
                out(&def, &t.version, w.obj)
            };
            Ok(with_warnings(json_response(w.code, &obj), &w.warnings))
        }
    }
}

/// Resolve a resource path (`/api/v1/...`, `/apis/g/v/...`, with `/watch/`) to its target.
fn target(inner: &Inner, segs: &[&str]) -> Result<Target, ApiError> {
    let (group, version, rest) = match segs {
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
    let def = inner.reg.def(res);
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
    Ok(Target {
        res,
        version: version.to_string(),
        ns,
        name: name.map(|s| s.to_string()),
        sub: sub.map(|s| s.to_string()),
        watch_path,
    })
}

fn user_agent(req: &Request<Incoming>) -> String {
    req.headers()
        .get(hyper::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
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

/// Decode a create/replace body: JSON, YAML, and protobuf only for the access reviews
/// kubectl's typed clients send ([`proto`]); anything else is 415.
fn parse_body(body: &[u8], ctype: &str) -> Result<Value, ApiError> {
    if ctype == "application/vnd.kubernetes.protobuf" {
        return proto::decode(body);
    }
    if !matches!(
        ctype,
        "" | "application/json" | "application/yaml" | "application/*" | "*/*"
    ) {
        return Err(ApiError::unsupported_media(format!(
            "the body of the request was in an unknown format ({ctype}) - accepted media types include: application/json, application/yaml"
        )));
    }
    if ctype.contains("yaml") {
        serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("decoding YAML body: {e}")))
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })
    }
}

/// Add one `Warning: 299 - "text"` header per warning (RFC 7234, what kube-apiserver sends).
fn with_warnings(mut r: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        let text = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("299 - \"{text}\"")) {
            r.headers_mut().append(hyper::header::WARNING, v);
        }
    }
    r
}

/// The object as returned to a client that asked for `version`.
pub(crate) fn out(def: &ResourceDef, version: &str, mut obj: Value) -> Value {
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(def.api_version(version)));
        m.insert("kind".into(), json!(def.kind));
    }
    obj
}
