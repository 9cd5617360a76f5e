//! Validation of written objects against the reference schemas, the way the real API server
//! treats custom resources with structural schemas.
//!
//! Sources (see `resources.rs` for which resource uses which): KubeVirt and CDI objects use
//! the Swagger 2.0 `definitions` of reference/{kubevirt,cdi}-openapi.json (with
//! `$ref`); the CSI snapshot CRDs use the `openAPIV3Schema` of the served version in
//! reference/snapshot-crds/*.yaml. The files are embedded at build time
//! (`include_str!`), or read from a directory given at start (`--reference-dir`).
//!
//! Rules, as for CRDs: a value of the wrong type → 422 Invalid (`FieldValueTypeInvalid`, with
//! the field path); a missing required field → 422 (`FieldValueRequired`) unless the schema
//! has a `default`, which is filled in; a value outside an `enum` → 422
//! (`FieldValueNotSupported`); `null` for a non-nullable field is dropped; unknown fields are
//! pruned, or with `fieldValidation=Strict` rejected with 400 BadRequest
//! `strict decoding error: unknown field "..."` (what the real server answers).
//! `x-kubernetes-preserve-unknown-fields` and `x-kubernetes-int-or-string` are honoured;
//! Quantity and IntOrString accept strings and numbers. CEL rules (`x-kubernetes-validations`)
//! and formats other than int-or-string are not checked.
//!
//! Core kinds (PVC, PV, Secret, ConfigMap, Pod, Job, ...) are checked by deserializing into
//! the k8s-openapi type (wrong types, missing required fields → 422); unknown fields are
//! found by comparing with the re-serialized object and pruned or rejected likewise.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};

use crate::resources::{CoreKind, ResId, SchemaSource};
use crate::status::{ApiError, Cause};
use crate::{Error, Inner};

const KUBEVIRT: &str = include_str!("../../reference/kubevirt-openapi.json");
const CDI: &str = include_str!("../../reference/cdi-openapi.json");
const CRDS: &[(&str, &str)] = &[
    ("snapshot.storage.k8s.io_volumesnapshots.yaml", include_str!("../../reference/snapshot-crds/snapshot.storage.k8s.io_volumesnapshots.yaml")),
    ("snapshot.storage.k8s.io_volumesnapshotcontents.yaml", include_str!("../../reference/snapshot-crds/snapshot.storage.k8s.io_volumesnapshotcontents.yaml")),
    ("snapshot.storage.k8s.io_volumesnapshotclasses.yaml", include_str!("../../reference/snapshot-crds/snapshot.storage.k8s.io_volumesnapshotclasses.yaml")),
    ("groupsnapshot.storage.k8s.io_volumegroupsnapshots.yaml", include_str!("../../reference/snapshot-crds/groupsnapshot.storage.k8s.io_volumegroupsnapshots.yaml")),
    ("groupsnapshot.storage.k8s.io_volumegroupsnapshotcontents.yaml", include_str!("../../reference/snapshot-crds/groupsnapshot.storage.k8s.io_volumegroupsnapshotcontents.yaml")),
    ("groupsnapshot.storage.k8s.io_volumegroupsnapshotclasses.yaml", include_str!("../../reference/snapshot-crds/groupsnapshot.storage.k8s.io_volumegroupsnapshotclasses.yaml")),
];

/// Parsed reference schemas.
#[derive(Debug)]
pub struct Schemas {
    kubevirt: Value,
    cdi: Value,
    crds: HashMap<String, Value>,
}

static EMBEDDED: OnceLock<Arc<Schemas>> = OnceLock::new();

fn parse(
    kubevirt: &str,
    cdi: &str,
    crds: Vec<(String, String)>,
    dir: &Path,
) -> Result<Schemas, Error> {
    let bad = |m: String| Error::Reference {
        dir: dir.to_path_buf(),
        message: m,
    };
    let kubevirt: Value =
        serde_json::from_str(kubevirt).map_err(|e| bad(format!("kubevirt-openapi.json: {e}")))?;
    let cdi: Value =
        serde_json::from_str(cdi).map_err(|e| bad(format!("cdi-openapi.json: {e}")))?;
    let mut map = HashMap::new();
    for (name, text) in crds {
        let v: Value = serde_yaml::from_str(&text).map_err(|e| bad(format!("{name}: {e}")))?;
        map.insert(name, v);
    }
    Ok(Schemas {
        kubevirt: kubevirt["definitions"].clone(),
        cdi: cdi["definitions"].clone(),
        crds: map,
    })
}

impl Schemas {
    /// Load from `dir`, or use the embedded copy.
    pub fn load(dir: Option<&Path>) -> Result<Arc<Schemas>, Error> {
        match dir {
            None => {
                if let Some(s) = EMBEDDED.get() {
                    return Ok(s.clone());
                }
                let s = Arc::new(parse(
                    KUBEVIRT,
                    CDI,
                    CRDS.iter()
                        .map(|(n, t)| (n.to_string(), t.to_string()))
                        .collect(),
                    Path::new("<embedded>"),
                )?);
                Ok(EMBEDDED.get_or_init(|| s).clone())
            }
            Some(d) => {
                let read = |p: &Path| {
                    std::fs::read_to_string(p).map_err(|source| Error::Io {
                        what: "reading reference schema",
                        path: p.to_path_buf(),
                        source,
                    })
                };
                let kv = read(&d.join("kubevirt-openapi.json"))?;
                let cdi = read(&d.join("cdi-openapi.json"))?;
                let mut crds = Vec::new();
                for (n, _) in CRDS {
                    crds.push((n.to_string(), read(&d.join("snapshot-crds").join(n))?));
                }
                Ok(Arc::new(parse(&kv, &cdi, crds, d)?))
            }
        }
    }

    /// The `definitions` of kubevirt-openapi.json.
    pub(crate) fn kubevirt_defs(&self) -> &Value {
        &self.kubevirt
    }

    /// The `definitions` of cdi-openapi.json.
    pub(crate) fn cdi_defs(&self) -> &Value {
        &self.cdi
    }

    /// The `openAPIV3Schema` of `version` in a snapshot CRD file.
    pub(crate) fn crd_schema(&self, file: &str, version: &str) -> Option<&Value> {
        self.crds
            .get(file)?
            .pointer("/spec/versions")?
            .as_array()?
            .iter()
            .find(|v| v["name"] == version)?
            .pointer("/schema/openAPIV3Schema")
    }
}

struct Walk<'a> {
    defs: Option<&'a Value>,
    causes: Vec<Cause>,
    unknown: Vec<String>,
    strict: bool,
    /// A partial object (a server-side apply configuration): required fields may be absent.
    partial: bool,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

impl<'a> Walk<'a> {
    /// Resolve `$ref`s; returns the schema and whether it is a string-or-number type.
    fn resolve(&self, mut s: &'a Value) -> (&'a Value, bool) {
        let mut loose = false;
        for _ in 0..32 {
            match s.get("$ref").and_then(Value::as_str) {
                Some(r) => {
                    let name = r.trim_start_matches("#/definitions/");
                    if name.ends_with("resource.Quantity") || name.ends_with("intstr.IntOrString") {
                        loose = true;
                    }
                    match self.defs.and_then(|d| d.get(name)) {
                        Some(t) => s = t,
                        None => return (&Value::Null, loose),
                    }
                }
                None => break,
            }
        }
        (s, loose)
    }

    fn wrong_type(&mut self, path: &str, v: &Value, want: &str) {
        let got = type_name(v);
        self.causes.push(Cause {
            reason: "FieldValueTypeInvalid".into(),
            message: format!(
                "Invalid value: \"{got}\": {path} in body must be of type {want}: \"{got}\""
            ),
            field: path.to_string(),
        });
    }

    fn walk(&mut self, schema: &'a Value, v: &mut Value, path: &str) {
        let (s, loose) = self.resolve(schema);
        if s.is_null() {
            return;
        }
        if loose
            || s.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true)
            || s.get("format").and_then(Value::as_str) == Some("int-or-string")
        {
            if !(v.is_string() || v.is_number()) {
                self.wrong_type(path, v, "string or number");
            }
            return;
        }
        let preserve = s
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            == Some(true);
        let ty = s.get("type").and_then(Value::as_str);
        if let Some(allowed) = s.get("enum").and_then(Value::as_array) {
            if !v.is_null() && !allowed.contains(v) {
                let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
                self.causes.push(Cause {
                    reason: "FieldValueNotSupported".into(),
                    message: format!(
                        "Unsupported value: {v}: supported values: {}",
                        list.join(", ")
                    ),
                    field: path.to_string(),
                });
                return;
            }
        }
        match ty {
            Some("object") | None
                if s.get("properties").is_some()
                    || s.get("additionalProperties").is_some()
                    || ty.is_some() =>
            {
                let Some(obj) = v.as_object_mut() else {
                    self.wrong_type(path, v, "object");
                    return;
                };
                let props = s.get("properties").and_then(Value::as_object);
                let addl = s.get("additionalProperties");
                let keys: Vec<String> = obj.keys().cloned().collect();
                for k in keys {
                    let child_path = join(path, &k);
                    let child_schema = props.and_then(|p| p.get(&k)).or(match addl {
                        Some(a) if a.is_object() => Some(a),
                        _ => None,
                    });
                    match child_schema {
                        Some(cs) => {
                            let (rcs, _) = self.resolve(cs);
                            let nullable =
                                rcs.get("nullable").and_then(Value::as_bool) == Some(true);
                            if obj.get(&k).is_some_and(Value::is_null) {
                                if !nullable {
                                    obj.remove(&k);
                                }
                                continue;
                            }
                            if let Some(child) = obj.get_mut(&k) {
                                self.walk(cs, child, &child_path);
                            }
                        }
                        None => {
                            let open = preserve
                                || addl.is_some_and(|a| a.as_bool() == Some(true))
                                || (props.is_none() && addl.is_none());
                            if !open {
                                self.unknown.push(child_path);
                                if !self.strict {
                                    obj.remove(&k);
                                }
                            }
                        }
                    }
                }
                if let Some(req) = s
                    .get("required")
                    .and_then(Value::as_array)
                    .filter(|_| !self.partial)
                {
                    for r in req.iter().filter_map(Value::as_str) {
                        if obj.contains_key(r) {
                            continue;
                        }
                        // Only scalar defaults: openapi-gen writes `default: {}` for every
                        // non-pointer struct, which the real CRDs do not default.
                        let default = props
                            .and_then(|p| p.get(r))
                            .and_then(|p| p.get("default"))
                            .filter(|d| !d.is_object() && !d.is_array());
                        match default {
                            Some(d) => {
                                obj.insert(r.to_string(), d.clone());
                            }
                            None => self.causes.push(Cause {
                                reason: "FieldValueRequired".into(),
                                message: "Required value".into(),
                                field: join(path, r),
                            }),
                        }
                    }
                }
            }
            Some("array") => {
                let Some(items) = v.as_array_mut() else {
                    self.wrong_type(path, v, "array");
                    return;
                };
                if let Some(is) = s.get("items") {
                    for (i, it) in items.iter_mut().enumerate() {
                        self.walk(is, it, &format!("{path}[{i}]"));
                    }
                }
            }
            Some("string") if !v.is_string() => self.wrong_type(path, v, "string"),
            Some("integer") => {
                let ok = match v {
                    Value::Number(n) => {
                        n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
                    }
                    _ => false,
                };
                if !ok {
                    self.wrong_type(path, v, "integer");
                }
            }
            Some("number") if !v.is_number() => self.wrong_type(path, v, "number"),
            Some("boolean") if !v.is_boolean() => self.wrong_type(path, v, "boolean"),
            _ => {}
        }
    }
}

/// Fields in `orig` that did not survive a typed round trip (unknown to the type).
fn dropped_fields(orig: &Value, round: &Value, path: &str, out: &mut Vec<String>) {
    match (orig, round) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                match b.get(k) {
                    Some(w) => dropped_fields(v, w, &join(path, k), out),
                    None => out.push(join(path, k)),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                dropped_fields(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn remove_path(v: &mut Value, path: &str) {
    // Paths are dotted with [i] indexes; keys with dots (annotations) never reach here because
    // maps are open in every core type.
    let mut cur = v;
    let parts: Vec<&str> = path.split('.').collect();
    for (n, part) in parts.iter().enumerate() {
        let (key, idx) = match part.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (*part, None),
        };
        let last = n + 1 == parts.len();
        if last && idx.is_none() {
            if let Some(m) = cur.as_object_mut() {
                m.remove(key);
            }
            return;
        }
        let Some(next) = cur.get_mut(key) else { return };
        cur = match idx {
            Some(i) => match next.get_mut(i) {
                Some(x) => x,
                None => return,
            },
            None => next,
        };
    }
}

fn core_check<T: serde::de::DeserializeOwned + serde::Serialize>(
    obj: &Value,
) -> Result<Value, String> {
    let typed: T = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

fn core_roundtrip(kind: CoreKind, obj: &Value) -> Result<Value, String> {
    use k8s_openapi::api::{
        authorization::v1 as authz, batch::v1 as batch, coordination::v1 as coord,
        core::v1 as core, networking::v1 as net, storage::v1 as storage,
    };
    match kind {
        CoreKind::Namespace => core_check::<core::Namespace>(obj),
        CoreKind::PersistentVolumeClaim => core_check::<core::PersistentVolumeClaim>(obj),
        CoreKind::PersistentVolume => core_check::<core::PersistentVolume>(obj),
        CoreKind::Secret => core_check::<core::Secret>(obj),
        CoreKind::ConfigMap => core_check::<core::ConfigMap>(obj),
        CoreKind::Pod => core_check::<core::Pod>(obj),
        CoreKind::Service => core_check::<core::Service>(obj),
        CoreKind::Event => core_check::<core::Event>(obj),
        CoreKind::Job => core_check::<batch::Job>(obj),
        CoreKind::CronJob => core_check::<batch::CronJob>(obj),
        CoreKind::StorageClass => core_check::<storage::StorageClass>(obj),
        CoreKind::Lease => core_check::<coord::Lease>(obj),
        CoreKind::NetworkPolicy => core_check::<net::NetworkPolicy>(obj),
        CoreKind::SelfSubjectAccessReview => core_check::<authz::SelfSubjectAccessReview>(obj),
        CoreKind::SelfSubjectRulesReview => core_check::<authz::SelfSubjectRulesReview>(obj),
    }
}

/// Validate (and default) an object about to be written. Unknown fields are refused when
/// `strict`, otherwise pruned and returned (dotted paths) for the caller to warn about.
pub(crate) fn validate(
    inner: &Arc<Inner>,
    res: ResId,
    version: &str,
    obj: &mut Value,
    strict: bool,
) -> Result<Vec<String>, ApiError> {
    let def = inner.reg.def(res).clone();
    let name = crate::store::meta_str(obj, "name")
        .unwrap_or("")
        .to_string();
    let mut unknown = Vec::new();
    match def.schema {
        SchemaSource::None => return Ok(Vec::new()),
        SchemaSource::Core(kind) => {
            let round = core_roundtrip(kind, obj).map_err(|e| {
                ApiError::invalid(
                    def.kind,
                    def.group,
                    &name,
                    vec![Cause {
                        reason: "FieldValueInvalid".into(),
                        message: e,
                        field: String::new(),
                    }],
                )
            })?;
            dropped_fields(obj, &round, "", &mut unknown);
            if !strict {
                for p in &unknown {
                    remove_path(obj, p);
                }
            }
        }
        SchemaSource::KubeVirt(d) | SchemaSource::Cdi(d) => {
            let defs = match def.schema {
                SchemaSource::KubeVirt(_) => &inner.schemas.kubevirt,
                _ => &inner.schemas.cdi,
            };
            let Some(root) = defs.get(d) else {
                return Ok(Vec::new());
            };
            let mut w = Walk {
                defs: Some(defs),
                causes: Vec::new(),
                unknown: Vec::new(),
                strict,
                partial: false,
            };
            walk_root(&mut w, root, obj);
            if !w.causes.is_empty() {
                return Err(ApiError::invalid(def.kind, def.group, &name, w.causes));
            }
            unknown = w.unknown;
        }
        SchemaSource::SnapshotCrd(file) => {
            let Some(root) = inner
                .schemas
                .crd_schema(file, version)
                .or_else(|| inner.schemas.crd_schema(file, def.version()))
            else {
                return Ok(Vec::new());
            };
            let mut w = Walk {
                defs: None,
                causes: Vec::new(),
                unknown: Vec::new(),
                strict,
                partial: false,
            };
            walk_root(&mut w, root, obj);
            if !w.causes.is_empty() {
                return Err(ApiError::invalid(def.kind, def.group, &name, w.causes));
            }
            unknown = w.unknown;
        }
    }
    if strict && !unknown.is_empty() {
        let list: Vec<String> = unknown
            .iter()
            .map(|u| format!("unknown field \"{u}\""))
            .collect();
        return Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
            def.kind,
            version,
            def.kind,
            list.join(", ")
        )));
    }
    Ok(unknown)
}

/// The fields of a partial object (a server-side apply configuration) that its kind's schema
/// does not declare, as dotted paths; nothing is pruned or defaulted. A core kind whose
/// configuration does not deserialize on its own (a required field left out) reports none.
pub(crate) fn unknown_fields(inner: &Inner, res: ResId, version: &str, obj: &Value) -> Vec<String> {
    let def = inner.reg.def(res);
    let mut obj = obj.clone();
    let (defs, root) = match def.schema {
        SchemaSource::None => return Vec::new(),
        SchemaSource::Core(kind) => {
            let mut unknown = Vec::new();
            if let Ok(round) = core_roundtrip(kind, &obj) {
                dropped_fields(&obj, &round, "", &mut unknown);
            }
            return unknown;
        }
        SchemaSource::KubeVirt(d) => (Some(&inner.schemas.kubevirt), inner.schemas.kubevirt.get(d)),
        SchemaSource::Cdi(d) => (Some(&inner.schemas.cdi), inner.schemas.cdi.get(d)),
        SchemaSource::SnapshotCrd(file) => (
            None,
            inner
                .schemas
                .crd_schema(file, version)
                .or_else(|| inner.schemas.crd_schema(file, def.version())),
        ),
    };
    let Some(root) = root else {
        return Vec::new();
    };
    let mut w = Walk {
        defs,
        causes: Vec::new(),
        unknown: Vec::new(),
        strict: true,
        partial: true,
    };
    walk_root(&mut w, root, &mut obj);
    w.unknown
}

/// Walk everything but `metadata`, `apiVersion` and `kind` (checked by the server itself).
fn walk_root<'a>(w: &mut Walk<'a>, root: &'a Value, obj: &mut Value) {
    let (root, _) = w.resolve(root);
    let Some(map) = obj.as_object_mut() else {
        w.wrong_type("", &Value::Null, "object");
        return;
    };
    let meta = map.remove("metadata");
    let api = map.remove("apiVersion");
    let kind = map.remove("kind");
    let mut rest = Value::Object(std::mem::take(map));
    let mut schema = root.clone();
    if let Some(p) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        p.remove("metadata");
        p.remove("apiVersion");
        p.remove("kind");
    }
    if let Some(req) = schema.get_mut("required").and_then(Value::as_array_mut) {
        // status is written by controllers, never required from clients.
        req.retain(|r| r != "metadata" && r != "apiVersion" && r != "kind" && r != "status");
    }
    // `schema` is local; walk it through a leaked-free reborrow.
    let schema: &Value = &schema;
    let mut sub = Walk {
        defs: w.defs,
        causes: Vec::new(),
        unknown: Vec::new(),
        strict: w.strict,
        partial: w.partial,
    };
    sub.walk(schema, &mut rest, "");
    w.causes.append(&mut sub.causes);
    w.unknown.append(&mut sub.unknown);
    let mut out: Map<String, Value> = Map::new();
    if let Some(a) = api {
        out.insert("apiVersion".into(), a);
    }
    if let Some(k) = kind {
        out.insert("kind".into(), k);
    }
    if let Some(m) = meta {
        out.insert("metadata".into(), m);
    }
    if let Value::Object(r) = rest {
        out.extend(r);
    }
    *map = out;
}
