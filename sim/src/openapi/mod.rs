//! The OpenAPI documents of the served resources — `/openapi/v2` (Swagger 2.0) and
//! `/openapi/v3` (one OpenAPI 3.0 document per group-version), v2 also as protobuf
//! ([`protobuf`]) — and the schema look-ups the
//! API machinery needs (list types for managedFields and strategic merge).
//!
//! Built from the very schemas the sim validates with (`schema.rs`): KubeVirt and CDI kinds
//! from the `definitions` of reference/{kubevirt,cdi}-openapi.json (renamed
//! `io.kubevirt.<name>` / `io.kubevirt.cdi.<name>` so the two never collide), CSI snapshot
//! kinds from the CRDs' `openAPIV3Schema` (named like kube-apiserver names CRD schemas,
//! `io.k8s.storage.snapshot.v1.VolumeSnapshot`, with `metadata` pointing at the standard
//! ObjectMeta), core kinds from k8s-openapi's schemas of the types they are validated with
//! ([`core`]), and kinds without a schema as objects that keep unknown fields.
//!
//! Invariants: every served (resource, version) has exactly one definition carrying
//! `x-kubernetes-group-version-kind`, which kubectl uses to find it (explain, field
//! validation support); every `$ref` in a document resolves inside that document; a v3
//! document's `?hash=` changes whenever its bytes do. This module builds on `schema.rs`, which
//! knows nothing of it; [`OpenApi::shared`] keeps the built documents per set of schemas.

pub(crate) mod core;
mod paths;
mod protobuf;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha512};

use crate::resources::{Registry, ResId, ResourceDef, SchemaSource};
use crate::schema::Schemas;

/// One served OpenAPI v3 group-version document.
#[derive(Debug)]
pub struct GroupVersionDoc {
    /// Uppercase hex SHA-512 of `body` (the `?hash=` of its URL, and its ETag).
    pub hash: String,
    pub body: Vec<u8>,
}

/// How the elements of a list are identified (`x-kubernetes-list-type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListType {
    /// Replaced as a whole.
    Atomic,
    /// Scalars, each its own element.
    Set,
    /// Objects identified by the values of these keys.
    Map(Vec<String>),
}

/// The documents, built once per set of reference schemas.
#[derive(Debug)]
pub struct OpenApi {
    /// Every definition, Swagger 2.0 style (`$ref: #/definitions/<name>`).
    defs: Map<String, Value>,
    /// Definition name per served (resource, version).
    kinds: BTreeMap<(ResId, &'static str), String>,
    v2: Vec<u8>,
    /// The same as gnostic protobuf.
    v2_protobuf: Vec<u8>,
    /// Uppercase hex SHA-512 of `v2` and of `v2_protobuf` (their ETags).
    v2_hashes: (String, String),
    /// By path: `api/v1`, `apis/<group>/<version>`.
    v3: BTreeMap<String, GroupVersionDoc>,
}

/// `snapshot.storage.k8s.io` → `io.k8s.storage.snapshot` (kube-apiserver's CRD schema names).
fn reversed_group(group: &str) -> String {
    group.split('.').rev().collect::<Vec<_>>().join(".")
}

/// Prefix every definition of a reference document and the `$ref`s that point at them.
fn import(defs: &Value, prefix: &str, into: &mut Map<String, Value>) {
    let Some(m) = defs.as_object() else { return };
    for (name, schema) in m {
        let mut s = schema.clone();
        rewrite_refs(&mut s, &|r| {
            r.strip_prefix("#/definitions/")
                .map(|n| format!("#/definitions/{prefix}{n}"))
        });
        structural_types(&mut s);
        into.insert(format!("{prefix}{name}"), s);
    }
}

/// KubeVirt's document has JSON-Schema type lists (`["string", "null"]`,
/// `["string", "number"]`), which OpenAPI 2/3 and kubectl do not accept; a real cluster
/// serves the structural equivalents of its CRDs: `nullable: true`, and
/// `x-kubernetes-int-or-string: true` without a type.
fn structural_types(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let is_schema_type = m.get("type").is_some_and(Value::is_array);
            if is_schema_type {
                let types = strings(m.get("type"));
                m.remove("type");
                if types.iter().any(|t| t == "null") {
                    m.insert("nullable".into(), json!(true));
                }
                let rest: Vec<&String> = types.iter().filter(|t| *t != "null").collect();
                match rest.as_slice() {
                    [one] => {
                        m.insert("type".into(), json!(one));
                    }
                    [a, b]
                        if [a.as_str(), b.as_str()].contains(&"string")
                            && [a.as_str(), b.as_str()]
                                .iter()
                                .any(|t| *t == "number" || *t == "integer") =>
                    {
                        m.insert("x-kubernetes-int-or-string".into(), json!(true));
                    }
                    _ => {}
                }
            }
            for (k, c) in m.iter_mut() {
                // `properties` maps field names to schemas: a field may be called "type".
                if k == "properties" {
                    if let Some(props) = c.as_object_mut() {
                        props.values_mut().for_each(structural_types);
                    }
                } else {
                    structural_types(c);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(structural_types),
        _ => {}
    }
}

/// Replace every `$ref` string for which `f` answers.
fn rewrite_refs(v: &mut Value, f: &dyn Fn(&str) -> Option<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref") {
                if let Some(n) = f(r) {
                    *r = n;
                }
            }
            for (k, c) in m.iter_mut() {
                if k != "$ref" {
                    rewrite_refs(c, f);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| rewrite_refs(c, f)),
        _ => {}
    }
}

fn gvk(def: &ResourceDef, version: &str) -> Value {
    json!({"group": def.group, "version": version, "kind": def.kind})
}

impl OpenApi {
    /// The documents built from `schemas`, once per set of schemas and shared by every sim that
    /// uses it (the embedded schemas are one process-wide set).
    pub(crate) fn shared(schemas: &Arc<Schemas>, reg: &Registry) -> Arc<OpenApi> {
        type Built = Vec<(Weak<Schemas>, Arc<OpenApi>)>;
        static BUILT: Mutex<Built> = Mutex::new(Vec::new());
        let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
        built.retain(|(s, _)| s.strong_count() > 0);
        if let Some((_, api)) = built
            .iter()
            .find(|(s, _)| std::ptr::eq(s.as_ptr(), Arc::as_ptr(schemas)))
        {
            return api.clone();
        }
        let api = Arc::new(OpenApi::build(schemas, reg));
        built.push((Arc::downgrade(schemas), api.clone()));
        api
    }

    /// Build every document from the reference schemas and the registry.
    pub fn build(schemas: &Schemas, reg: &Registry) -> OpenApi {
        let mut defs = core::definitions();
        import(schemas.kubevirt_defs(), "io.kubevirt.", &mut defs);
        import(schemas.cdi_defs(), "io.kubevirt.cdi.", &mut defs);
        let mut kinds = BTreeMap::new();
        for (id, d) in reg.defs.iter().enumerate() {
            for v in d.versions {
                let name = match d.schema {
                    SchemaSource::Core(k) => core::def_name(k),
                    SchemaSource::KubeVirt(n) => format!("io.kubevirt.{n}"),
                    SchemaSource::Cdi(n) => format!("io.kubevirt.cdi.{n}"),
                    SchemaSource::SnapshotCrd(file) => {
                        let name = format!("{}.{v}.{}", reversed_group(d.group), d.kind);
                        let mut s = schemas
                            .crd_schema(file, v)
                            .cloned()
                            .unwrap_or_else(|| json!({"type": "object"}));
                        s["properties"]["metadata"] = json!({
                            "$ref": format!("#/definitions/{}", core::OBJECT_META),
                            "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
                        });
                        defs.insert(name.clone(), s);
                        name
                    }
                    SchemaSource::None => {
                        let name = format!("{}.{v}.{}", reversed_group(d.group), d.kind);
                        defs.insert(name.clone(), json!({
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": true,
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"$ref": format!("#/definitions/{}", core::OBJECT_META)},
                            },
                        }));
                        name
                    }
                };
                if let Some(o) = defs.get_mut(&name).and_then(Value::as_object_mut) {
                    let list = o
                        .entry("x-kubernetes-group-version-kind")
                        .or_insert_with(|| json!([]));
                    if let Some(a) = list.as_array_mut() {
                        a.push(gvk(d, v));
                    }
                }
                if !d.create_only() {
                    defs.insert(format!("{name}List"), list_def(d, v, &name));
                }
                kinds.insert((id, *v), name);
            }
        }
        let mut api = OpenApi {
            defs,
            kinds,
            v2: Vec::new(),
            v2_protobuf: Vec::new(),
            v2_hashes: (String::new(), String::new()),
            v3: BTreeMap::new(),
        };
        let v2 = api.render_v2(reg);
        api.v2 = serde_json::to_vec(&v2).unwrap_or_default();
        api.v2_protobuf = protobuf::document(&v2);
        api.v2_hashes = (hash(&api.v2), hash(&api.v2_protobuf));
        let mut gvs: BTreeSet<(&str, &str)> = BTreeSet::new();
        for d in &reg.defs {
            gvs.extend(d.versions.iter().map(|v| (d.group, *v)));
        }
        for (g, v) in gvs {
            let body = serde_json::to_vec(&api.render_v3(reg, g, v)).unwrap_or_default();
            let hash = hex::encode_upper(Sha512::digest(&body));
            api.v3.insert(gv_path(g, v), GroupVersionDoc { hash, body });
        }
        api
    }

    /// The Swagger 2.0 document (JSON).
    pub fn v2(&self) -> &[u8] {
        &self.v2
    }

    /// The ETag of the JSON (`false`) or protobuf (`true`) v2 document.
    pub fn v2_hash(&self, protobuf: bool) -> &str {
        if protobuf {
            &self.v2_hashes.1
        } else {
            &self.v2_hashes.0
        }
    }

    /// The Swagger 2.0 document as gnostic protobuf.
    pub fn v2_protobuf(&self) -> &[u8] {
        &self.v2_protobuf
    }

    /// The v3 discovery document: `{"paths": {"apis/g/v": {"serverRelativeURL": ...}}}`.
    pub fn v3_index(&self) -> Value {
        let paths: Map<String, Value> = self
            .v3
            .iter()
            .map(|(p, d)| {
                (
                    p.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", d.hash)}),
                )
            })
            .collect();
        json!({ "paths": paths })
    }

    /// The v3 document of `api/v1` or `apis/<group>/<version>`.
    pub fn v3(&self, path: &str) -> Option<&GroupVersionDoc> {
        self.v3.get(path)
    }

    /// The definition of a served kind.
    pub fn kind_def(&self, res: ResId, version: &str) -> Option<&Value> {
        self.kinds
            .iter()
            .find(|((r, v), _)| *r == res && *v == version)
            .and_then(|(_, n)| self.defs.get(n))
    }

    fn deref<'a>(&'a self, mut s: &'a Value) -> &'a Value {
        for _ in 0..32 {
            let next = match s.get("$ref").and_then(Value::as_str) {
                Some(r) => r
                    .strip_prefix("#/definitions/")
                    .and_then(|n| self.defs.get(n)),
                None => match s.get("allOf").and_then(Value::as_array) {
                    Some(a) if a.len() == 1 && s.get("properties").is_none() => a.first(),
                    _ => None,
                },
            };
            match next {
                Some(n) => s = n,
                None => break,
            }
        }
        s
    }

    /// The schema of the field at `path` (field names; list elements are stepped into) of
    /// an object of `res` at `version`. `metadata` is always the standard ObjectMeta.
    pub fn field_schema(&self, res: ResId, version: &str, path: &[&str]) -> Option<&Value> {
        let (mut s, rest) = match path.split_first() {
            Some((&"metadata", rest)) => (self.defs.get(core::OBJECT_META)?, rest),
            _ => (self.kind_def(res, version)?, path),
        };
        for name in rest {
            s = self.deref(s);
            while s.get("type").and_then(Value::as_str) == Some("array") {
                s = self.deref(s.get("items")?);
            }
            s = match s.get("properties").and_then(|p| p.get(*name)) {
                Some(p) => p,
                None => s.get("additionalProperties").filter(|a| a.is_object())?,
            };
        }
        Some(self.deref(s))
    }

    /// How the list at `path` is identified. Unknown and unannotated lists are atomic, as
    /// for a CRD; `patchStrategy: merge` with a merge key makes a map like the Go types do.
    pub fn list_type(&self, res: ResId, version: &str, path: &[&str]) -> ListType {
        let Some(s) = self.field_schema(res, version, path) else {
            return ListType::Atomic;
        };
        let keys = |k: &str| strings(s.get(k));
        match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => ListType::Set,
            Some("map") => ListType::Map(keys("x-kubernetes-list-map-keys")),
            Some(_) => ListType::Atomic,
            None => match s
                .get("x-kubernetes-patch-merge-key")
                .and_then(Value::as_str)
            {
                Some(k) if patch_merges(s) => ListType::Map(vec![k.to_string()]),
                _ if patch_merges(s) => ListType::Set,
                _ => ListType::Atomic,
            },
        }
    }

    /// The strategic-merge key of the list at `path`: `Some(key)` merges objects by it,
    /// `Some("")` merges scalars as a set, `None` replaces the list.
    pub fn patch_merge_key(&self, res: ResId, version: &str, path: &[&str]) -> Option<String> {
        let s = self.field_schema(res, version, path)?;
        if !patch_merges(s) {
            return None;
        }
        Some(
            s.get("x-kubernetes-patch-merge-key")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        )
    }
}

/// The strings of a JSON array (none for anything else).
fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn patch_merges(s: &Value) -> bool {
    s.get("x-kubernetes-patch-strategy")
        .and_then(Value::as_str)
        .is_some_and(|st| st.split(',').any(|p| p == "merge"))
}

/// Uppercase hex SHA-512, kube-openapi's ETag.
fn hash(b: &[u8]) -> String {
    hex::encode_upper(Sha512::digest(b))
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `<Kind>List`: what a LIST answers.
fn list_def(d: &ResourceDef, version: &str, item: &str) -> Value {
    json!({
        "description": format!("{}List is a list of {}.", d.kind, d.kind),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."},
            "kind": {"type": "string", "description": "Kind is a string value representing the REST resource this object represents."},
            "metadata": {"$ref": format!("#/definitions/{}", core::LIST_META), "description": "Standard list metadata."},
            "items": {"type": "array", "description": format!("List of {}.", d.plural), "items": {"$ref": format!("#/definitions/{item}")}},
        },
        "x-kubernetes-group-version-kind": [{"group": d.group, "version": version, "kind": format!("{}List", d.kind)}],
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;

    fn api() -> (Arc<OpenApi>, Registry) {
        let reg = Registry::default();
        let schemas = Schemas::load(None).unwrap();
        (OpenApi::shared(&schemas, &reg), reg)
    }

    fn unresolved(doc: &Value, defs: &Value) -> Vec<String> {
        let mut refs = Vec::new();
        paths::refs_of(doc, &mut refs);
        refs.retain(|r| defs.get(r).is_none());
        refs.sort();
        refs.dedup();
        refs
    }

    #[test]
    fn every_served_kind_has_one_definition_with_its_gvk() {
        let (api, reg) = api();
        for (id, d) in reg.defs.iter().enumerate() {
            for v in d.versions {
                let def = api
                    .kind_def(id, v)
                    .unwrap_or_else(|| panic!("{} {v}", d.kind));
                let gvks = def["x-kubernetes-group-version-kind"].as_array().unwrap();
                assert!(
                    gvks.contains(&json!({"group": d.group, "version": v, "kind": d.kind})),
                    "{} {v}: {gvks:?}",
                    d.kind
                );
            }
        }
    }

    #[test]
    fn every_ref_resolves_inside_its_document() {
        let (api, _) = api();
        let v2: Value = serde_json::from_slice(api.v2()).unwrap();
        assert_eq!(unresolved(&v2, &v2["definitions"]), Vec::<String>::new());
        assert!(!api.v3.is_empty());
        for (path, doc) in &api.v3 {
            let v3: Value = serde_json::from_slice(&doc.body).unwrap();
            let schemas = &v3["components"]["schemas"];
            assert_eq!(unresolved(&v3, schemas), Vec::<String>::new(), "{path}");
            // kubectl decides that the server validates fields from the PATCH operation.
            let patch_ops: Vec<&Value> = v3["paths"]
                .as_object()
                .unwrap()
                .values()
                .filter_map(|p| p.get("patch"))
                .collect();
            assert!(
                !patch_ops.is_empty()
                    || path == "apis/upload.cdi.kubevirt.io/v1beta1"
                    || path == "apis/authorization.k8s.io/v1",
                "{path}"
            );
            for op in patch_ops {
                assert!(op["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == "fieldValidation"));
                assert!(op["x-kubernetes-group-version-kind"]["kind"].is_string());
            }
        }
        let index = api.v3_index();
        assert!(index["paths"]["api/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .starts_with("/openapi/v3/api/v1?hash="));
    }

    #[test]
    fn served_schemas_are_structural() {
        let (api, _) = api();
        fn walk(v: &Value, path: &str) {
            match v {
                Value::Object(m) => {
                    if let Some(t) = m.get("type") {
                        assert!(
                            t.is_string() || m.contains_key("properties") && t.is_object(),
                            "{path}: {t}"
                        );
                    }
                    for (k, c) in m {
                        if k == "properties" {
                            for (p, s) in c.as_object().into_iter().flatten() {
                                walk(s, &format!("{path}.{p}"));
                            }
                        } else {
                            walk(c, &format!("{path}/{k}"));
                        }
                    }
                }
                Value::Array(a) => a.iter().for_each(|c| walk(c, path)),
                _ => {}
            }
        }
        let v2: Value = serde_json::from_slice(api.v2()).unwrap();
        walk(&v2["definitions"], "");
        let port = &v2["definitions"]["io.kubevirt.k8s.io.api.core.v1.TCPSocketAction"]
            ["properties"]["port"];
        assert_eq!(port["x-kubernetes-int-or-string"], true, "{port}");
    }

    #[test]
    fn list_types_come_from_the_schemas() {
        let (api, reg) = api();
        let pod = reg.by_plural("", "pods").unwrap();
        assert_eq!(
            api.list_type(pod, "v1", &["spec", "containers"]),
            ListType::Map(vec!["name".into()])
        );
        assert_eq!(
            api.list_type(pod, "v1", &["spec", "containers", "env"]),
            ListType::Map(vec!["name".into()])
        );
        assert_eq!(
            api.list_type(pod, "v1", &["metadata", "finalizers"]),
            ListType::Set
        );
        assert_eq!(
            api.patch_merge_key(pod, "v1", &["spec", "containers"])
                .as_deref(),
            Some("name")
        );
        let pvc = reg.by_plural("", "persistentvolumeclaims").unwrap();
        assert_eq!(
            api.list_type(pvc, "v1", &["spec", "accessModes"]),
            ListType::Atomic
        );
        assert_eq!(
            api.patch_merge_key(pvc, "v1", &["spec", "accessModes"]),
            None
        );
        // KubeVirt's own annotations: VM volumes are a map keyed by name? Whatever the
        // reference says is what is used; an unannotated list is atomic.
        let vm = reg.by_plural("kubevirt.io", "virtualmachines").unwrap();
        let vols = api
            .field_schema(vm, "v1", &["spec", "template", "spec", "volumes"])
            .unwrap();
        let expected = match vols.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("map") => ListType::Map(
                vols["x-kubernetes-list-map-keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_str().unwrap().to_string())
                    .collect(),
            ),
            Some("set") => ListType::Set,
            _ => ListType::Atomic,
        };
        assert_eq!(
            api.list_type(vm, "v1", &["spec", "template", "spec", "volumes"]),
            expected
        );
    }
}
