//! The CustomResourceDefinitions a real API server needs to serve what virtguard talks to.
//!
//! Which kinds: every custom resource the simulated cluster serves (`virtguard_sim::resources`,
//! the one list of them), so both API servers know the same kinds at the same versions.
//! - CSI snapshot kinds: the upstream CRD files in `reference/snapshot-crds/`, as they are.
//! - KubeVirt and CDI kinds: generated here from the Swagger 2.0 definitions in
//!   `reference/{kubevirt,cdi}-openapi.json`, as **structural** schemas (every `$ref` inlined,
//!   every node typed), the form the API server requires for pruning, defaulting and CEL.
//! - Kinds the reference has no definition for (KubeVirt's `VirtualMachineBackupTracker`,
//!   Multus' `NetworkAttachmentDefinition`): a schema that keeps every field.
//! - Apart from those, [`prometheus_operator`] gives the prometheus-operator CRDs `deploy/`
//!   needs (upstream files in `reference/prometheus-operator-crds/`, as they are); only the tests
//!   of `deploy/` install them.
//!
//! Translation rules (Swagger 2.0 → apiextensions.k8s.io/v1), each where the two differ:
//! - `type: [T, "null"]` → `type: T, nullable: true`.
//! - `IntOrString` (`format: int-or-string`), `Quantity` (`type: [string, integer, number]`)
//!   and ports typed `[string, number]` → `x-kubernetes-int-or-string: true` with
//!   `anyOf: [integer, string]`, as controller-gen writes them.
//! - `default` values are dropped: openapi-gen writes the Go zero value (`""`, `0`, `{}`) on
//!   every non-pointer field, which would make the API server fill in every absent field (and
//!   `""` is not a valid default of an enum field); KubeVirt's own CRDs carry none either.
//! - `x-kubernetes-patch-*` and `x-kubernetes-unions` have no place in a CRD schema: dropped.
//!   A `x-kubernetes-list-type: map` whose keys are not all required (the API server refuses
//!   it) and a `set` of non-scalar items are dropped too.
//! - **`x-kubernetes-preserve-unknown-fields: true` only where the reference forces it**: a
//!   definition that is an untyped object (`RawExtension`, `FieldsV1`: arbitrary JSON by
//!   design), a node with no type, and a `$ref` cycle (none in the current reference). Every
//!   such place is listed in [`Generated::preserved`], pinned by a unit test.
//!
//! Invariant: the output is a pure function of `reference/` and the sim's resource list.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use virtguard_sim::resources::{self, ResourceDef, SchemaSource};

/// A reference document could not be read or does not hold what a resource names.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message} (refresh reference/ with scripts/refresh-reference.sh)")]
pub struct CrdError {
    pub file: PathBuf,
    pub message: String,
}

/// The CRDs to install, and what the translation had to give up.
#[derive(Debug, Default)]
pub struct Generated {
    /// `apiextensions.k8s.io/v1` CustomResourceDefinition objects.
    pub crds: Vec<Value>,
    /// `<crd name>:<schema path>` of every node that keeps unknown fields, and why.
    pub preserved: Vec<String>,
    /// `<crd name>:<schema path>` of every list-type annotation dropped, and why.
    pub dropped: Vec<String>,
}

/// Formats the API server knows; any other would only be ignored with a warning.
const FORMATS: &[&str] = &[
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "date",
    "date-time",
    "duration",
    "uuid",
];

/// Builds every CRD from the reference documents under `reference`.
pub fn generate(reference: &Path) -> Result<Generated, CrdError> {
    let read = |name: &str| -> Result<String, CrdError> {
        let file = reference.join(name);
        std::fs::read_to_string(&file).map_err(|e| CrdError {
            file,
            message: e.to_string(),
        })
    };
    let definitions = |name: &str| -> Result<Map<String, Value>, CrdError> {
        let doc: Value = serde_json::from_str(&read(name)?).map_err(|e| CrdError {
            file: reference.join(name),
            message: e.to_string(),
        })?;
        match doc.get("definitions") {
            Some(Value::Object(defs)) => Ok(defs.clone()),
            _ => Err(CrdError {
                file: reference.join(name),
                message: "no `definitions` object".into(),
            }),
        }
    };
    let kubevirt = definitions("kubevirt-openapi.json")?;
    let cdi = definitions("cdi-openapi.json")?;
    let mut out = Generated::default();
    let mut snapshot_files = BTreeSet::new();
    for def in resources::all().into_iter().filter(|d| d.crd) {
        let (file, defs, name) = match def.schema {
            SchemaSource::SnapshotCrd(file) => {
                snapshot_files.insert(file);
                continue;
            }
            SchemaSource::KubeVirt(name) => ("kubevirt-openapi.json", &kubevirt, name),
            SchemaSource::Cdi(name) => ("cdi-openapi.json", &cdi, name),
            SchemaSource::None => {
                let crd = crd_of(&def, open_schema());
                out.preserved.push(format!(
                    "{}:(whole object): the reference has no definition of {}",
                    crd_name(&def),
                    def.kind
                ));
                out.crds.push(crd);
                continue;
            }
            SchemaSource::Core(_) => continue,
        };
        let root = defs.get(name).ok_or_else(|| CrdError {
            file: reference.join(file),
            message: format!("no definition `{name}` (named for {})", def.kind),
        })?;
        let mut conv = Converter {
            defs,
            stack: vec![name.to_string()],
            crd: crd_name(&def),
            out: &mut out,
        };
        let schema = conv.node(root, "");
        out.crds.push(crd_of(&def, schema));
    }
    for file in snapshot_files {
        out.crds
            .push(crd_file(&reference.join("snapshot-crds").join(file))?);
    }
    Ok(out)
}

/// Where [`prometheus_operator`] reads its CRDs, under `reference/`.
pub const PROMETHEUS_OPERATOR_CRDS: &str = "prometheus-operator-crds";

/// The prometheus-operator CRDs of the kinds `deploy/` uses (ServiceMonitor, PrometheusRule):
/// the upstream files in `reference/prometheus-operator-crds/`, as they are (generated by
/// prometheus-operator from its API types: its documented schema). Not part of [`generate`]:
/// the sim does not serve these kinds, and only the tests of `deploy/` install them.
pub fn prometheus_operator(reference: &Path) -> Result<Vec<Value>, CrdError> {
    let dir = reference.join(PROMETHEUS_OPERATOR_CRDS);
    let entries = std::fs::read_dir(&dir).map_err(|e| CrdError {
        file: dir.clone(),
        message: e.to_string(),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files.iter().map(|f| crd_file(f)).collect()
}

/// One CRD from an upstream YAML file, as it is.
fn crd_file(file: &Path) -> Result<Value, CrdError> {
    let fail = |message: String| CrdError {
        file: file.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(file).map_err(|e| fail(e.to_string()))?;
    let crd: Value = serde_yaml::from_str(&text).map_err(|e| fail(e.to_string()))?;
    if crd["kind"] != "CustomResourceDefinition" {
        return Err(fail("not a CustomResourceDefinition".into()));
    }
    Ok(crd)
}

fn crd_name(def: &ResourceDef) -> String {
    format!("{}.{}", def.plural, def.group)
}

fn open_schema() -> Value {
    json!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
        },
    })
}

fn crd_of(def: &ResourceDef, schema: Value) -> Value {
    let mut version = json!({
        "name": def.version(),
        "served": true,
        "storage": true,
        "schema": {"openAPIV3Schema": schema},
    });
    if def.status {
        version["subresources"] = json!({"status": {}});
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": crd_name(def),
            "labels": {"app.kubernetes.io/managed-by": "virtguard-e2e"},
        },
        "spec": {
            "group": def.group,
            "scope": if def.namespaced { "Namespaced" } else { "Cluster" },
            "names": {
                "kind": def.kind,
                "listKind": format!("{}List", def.kind),
                "plural": def.plural,
                "singular": def.singular,
                "shortNames": def.short_names,
            },
            "versions": [version],
        },
    })
}

/// Walks one definition, inlining `$ref`s.
struct Converter<'a> {
    defs: &'a Map<String, Value>,
    /// Definitions being inlined, outermost first (cycle detection).
    stack: Vec<String>,
    crd: String,
    out: &'a mut Generated,
}

impl Converter<'_> {
    fn preserve(&mut self, path: &str, why: &str) -> Value {
        self.out
            .preserved
            .push(format!("{}:{}: {why}", self.crd, display(path)));
        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
    }

    fn node(&mut self, src: &Value, path: &str) -> Value {
        let Some(src) = src.as_object() else {
            return self.preserve(path, "not a schema object");
        };
        if let Some(target) = src.get("$ref").and_then(Value::as_str) {
            let name = target.trim_start_matches("#/definitions/").to_string();
            let mut out = self.reference(&name, path);
            if let (Some(d), Some(o)) = (src.get("description"), out.as_object_mut()) {
                o.insert("description".into(), d.clone());
            }
            return out;
        }
        let (ty, nullable) = match src.get("type") {
            Some(Value::String(t)) => (Some(t.as_str()), false),
            Some(Value::Array(ts)) => {
                let named: Vec<&str> = ts.iter().filter_map(Value::as_str).collect();
                let rest: Vec<&str> = named.iter().copied().filter(|t| *t != "null").collect();
                match rest.as_slice() {
                    [one] => (Some(*one), rest.len() < named.len()),
                    _ if rest.contains(&"string") && rest.iter().any(|t| is_number(t)) => {
                        return int_or_string(src);
                    }
                    _ => return self.preserve(path, "a type union the CRD schema cannot express"),
                }
            }
            _ => (None, false),
        };
        if src.get("format").and_then(Value::as_str) == Some("int-or-string") {
            return int_or_string(src);
        }
        let Some(ty) = ty else {
            return self.preserve(path, "no type in the reference");
        };
        let mut out = Map::new();
        out.insert("type".into(), json!(ty));
        if nullable {
            out.insert("nullable".into(), json!(true));
        }
        for key in ["description", "enum", "x-kubernetes-map-type"] {
            if let Some(v) = src.get(key) {
                out.insert(key.into(), v.clone());
            }
        }
        if let Some(f) = src.get("format").and_then(Value::as_str) {
            if FORMATS.contains(&f) {
                out.insert("format".into(), json!(f));
            }
        }
        match ty {
            "object" => self.object(src, path, &mut out),
            "array" => self.array(src, path, &mut out),
            _ => {}
        }
        Value::Object(out)
    }

    fn reference(&mut self, name: &str, path: &str) -> Value {
        match name {
            "k8s.io.apimachinery.pkg.api.resource.Quantity"
            | "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => {
                return int_or_string(&Map::new());
            }
            _ => {}
        }
        if self.stack.iter().any(|s| s == name) {
            return self.preserve(path, &format!("`{name}` refers to itself"));
        }
        let Some(def) = self.defs.get(name) else {
            return self.preserve(path, &format!("`{name}` is not defined in the reference"));
        };
        self.stack.push(name.to_string());
        let out = self.node(def, path);
        self.stack.pop();
        out
    }

    fn object(&mut self, src: &Map<String, Value>, path: &str, out: &mut Map<String, Value>) {
        let props = src.get("properties").and_then(Value::as_object);
        match (props, src.get("additionalProperties")) {
            (Some(props), _) => {
                let mut converted = Map::new();
                for (name, p) in props {
                    let schema = if path.is_empty() && name == "metadata" {
                        // The API server owns the root `metadata`: a CRD may only say it is an
                        // object.
                        json!({"type": "object"})
                    } else {
                        self.node(p, &format!("{path}.{name}"))
                    };
                    converted.insert(name.clone(), schema);
                }
                if let Some(required) = src.get("required").and_then(Value::as_array) {
                    let known: Vec<Value> = required
                        .iter()
                        .filter(|r| r.as_str().is_some_and(|r| converted.contains_key(r)))
                        .cloned()
                        .collect();
                    if !known.is_empty() {
                        out.insert("required".into(), Value::Array(known));
                    }
                }
                out.insert("properties".into(), Value::Object(converted));
            }
            (None, Some(Value::Object(values))) => {
                let values = self.node(&Value::Object(values.clone()), &format!("{path}.*"));
                out.insert("additionalProperties".into(), values);
            }
            (None, Some(Value::Bool(true))) => {
                *out = self
                    .preserve(path, "a map of arbitrary values")
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
            }
            // An object with no fields: a marker struct (`masquerade: {}`) unless the reference
            // means arbitrary JSON by it (RawExtension, FieldsV1), which must keep its content.
            _ => {
                let name = self.stack.last().map(String::as_str).unwrap_or_default();
                if name.ends_with(".RawExtension") || name.ends_with(".FieldsV1") {
                    let why = format!("`{name}` is arbitrary JSON (an untyped object)");
                    out.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
                    self.out
                        .preserved
                        .push(format!("{}:{}: {why}", self.crd, display(path)));
                }
            }
        }
    }

    fn array(&mut self, src: &Map<String, Value>, path: &str, out: &mut Map<String, Value>) {
        let items = match src.get("items") {
            Some(items) => self.node(items, &format!("{path}[]")),
            None => self.preserve(&format!("{path}[]"), "an array without `items`"),
        };
        let list_type = src.get("x-kubernetes-list-type").and_then(Value::as_str);
        let keys: Vec<&str> = src
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
            .map(|ks| ks.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let scalar_items = !matches!(items["type"].as_str(), Some("object" | "array"));
        let required: Vec<&str> = items["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match list_type {
            Some("atomic") => {
                out.insert("x-kubernetes-list-type".into(), json!("atomic"));
            }
            Some("set") if scalar_items => {
                out.insert("x-kubernetes-list-type".into(), json!("set"));
            }
            Some("map") if !keys.is_empty() && keys.iter().all(|k| required.contains(k)) => {
                out.insert("x-kubernetes-list-type".into(), json!("map"));
                out.insert("x-kubernetes-list-map-keys".into(), json!(keys));
            }
            Some(other) => self.out.dropped.push(format!(
                "{}:{}: x-kubernetes-list-type={other} (keys {keys:?}): {}",
                self.crd,
                display(path),
                if other == "set" {
                    "a set needs scalar items"
                } else {
                    "a map list needs every key required"
                }
            )),
            None => {}
        }
        out.insert("items".into(), items);
    }
}

fn is_number(t: &str) -> bool {
    t == "integer" || t == "number"
}

/// `x-kubernetes-int-or-string`, with the node's description kept.
fn int_or_string(src: &Map<String, Value>) -> Value {
    let mut out = json!({
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-int-or-string": true,
    });
    if let Some(d) = src.get("description") {
        out["description"] = d.clone();
    }
    out
}

fn display(path: &str) -> &str {
    if path.is_empty() {
        "(root)"
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generated() -> Generated {
        generate(&crate::workspace_root().join("reference")).expect("reference/ converts")
    }

    /// Where the reference forces `x-kubernetes-preserve-unknown-fields`: pinned, so a refresh
    /// of reference/ that adds one is seen in review.
    #[test]
    fn unknown_fields_are_kept_only_where_the_reference_forces_it() {
        let g = generated();
        let mut places: Vec<&str> = g
            .preserved
            .iter()
            .map(|p| p.split(": ").next().unwrap_or(p))
            .collect();
        places.sort_unstable();
        places.dedup();
        assert_eq!(
            places,
            [
                // no definition in the reference at all
                "network-attachment-definitions.k8s.cni.cncf.io:(whole object)",
                "virtualmachinebackuptrackers.backup.kubevirt.io:(whole object)",
                // FieldsV1 (server-side apply's field sets) of embedded ObjectMetas
                "virtualmachines.kubevirt.io:.spec.dataVolumeTemplates[].metadata.managedFields[].fieldsV1",
                "virtualmachines.kubevirt.io:.spec.template.metadata.managedFields[].fieldsV1",
                "virtualmachinesnapshotcontents.snapshot.kubevirt.io:.spec.source.virtualMachine.metadata.managedFields[].fieldsV1",
                "virtualmachinesnapshotcontents.snapshot.kubevirt.io:.spec.source.virtualMachine.spec.dataVolumeTemplates[].metadata.managedFields[].fieldsV1",
                "virtualmachinesnapshotcontents.snapshot.kubevirt.io:.spec.source.virtualMachine.spec.template.metadata.managedFields[].fieldsV1",
                "virtualmachinesnapshotcontents.snapshot.kubevirt.io:.spec.volumeBackups[].persistentVolumeClaim.metadata.managedFields[].fieldsV1",
            ],
            "all: {:#?}",
            g.preserved
        );
    }

    #[test]
    fn every_node_of_a_generated_schema_is_structural() {
        fn check(crd: &str, path: &str, node: &Value, bad: &mut Vec<String>) {
            let typed = node.get("type").is_some()
                || node.get("x-kubernetes-int-or-string") == Some(&json!(true))
                || node.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
            if !typed || node.get("$ref").is_some() || node.get("default").is_some() {
                bad.push(format!("{crd}:{path}"));
            }
            if let Some(props) = node.get("properties").and_then(Value::as_object) {
                for (k, v) in props {
                    check(crd, &format!("{path}.{k}"), v, bad);
                }
            }
            for key in ["items", "additionalProperties"] {
                if let Some(v) = node.get(key).filter(|v| v.is_object()) {
                    check(crd, &format!("{path}[{key}]"), v, bad);
                }
            }
        }
        let g = generated();
        let mut bad = Vec::new();
        for crd in &g.crds {
            let name = crd["metadata"]["name"].as_str().unwrap_or("?");
            for v in crd["spec"]["versions"].as_array().into_iter().flatten() {
                check(name, "", &v["schema"]["openAPIV3Schema"], &mut bad);
            }
        }
        assert!(bad.is_empty(), "not structural: {bad:#?}");
    }

    #[test]
    fn one_crd_per_custom_resource_of_the_sim() {
        let g = generated();
        let names: BTreeSet<&str> = g
            .crds
            .iter()
            .filter_map(|c| c["metadata"]["name"].as_str())
            .collect();
        let expected: BTreeSet<String> = resources::all()
            .iter()
            .filter(|d| d.crd)
            .map(crd_name)
            .collect();
        let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn quantities_and_nullable_times_translate_as_on_a_real_cluster() {
        let g = generated();
        let vm = g
            .crds
            .iter()
            .find(|c| c["metadata"]["name"] == "virtualmachines.kubevirt.io")
            .expect("VirtualMachine CRD");
        let spec = &vm["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let memory = &spec["properties"]["template"]["properties"]["spec"]["properties"]["domain"]
            ["properties"]["memory"]["properties"]["guest"];
        assert_eq!(
            memory["x-kubernetes-int-or-string"],
            json!(true),
            "{memory}"
        );
        let cond = &vm["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
            ["properties"]["conditions"]["items"]["properties"]["lastProbeTime"];
        assert_eq!(cond["nullable"], json!(true), "{cond}");
        assert_eq!(cond["type"], json!("string"), "{cond}");
    }
}
