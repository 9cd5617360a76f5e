//! Rendering: the operations of every served path, and the two document formats.
//!
//! Invariants: each operation carries `x-kubernetes-action` and
//! `x-kubernetes-group-version-kind` (kubectl finds a resource's kind through them, and
//! decides whether the server validates fields by the PATCH operation's `fieldValidation`
//! parameter); the parameters listed are exactly the ones the router honours.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::{core, gvk, OpenApi};
use crate::resources::{Registry, ResourceDef};

/// A request body of an operation.
enum Payload {
    /// The kind itself (create, replace).
    Object,
    /// A patch document.
    Patch,
    /// DeleteOptions.
    Delete,
}

/// One operation before it is rendered in either format.
struct Op {
    method: &'static str,
    action: &'static str,
    id: String,
    description: String,
    query: Query,
    payload: Option<Payload>,
    /// Definition answered with 200.
    response: String,
}

/// (name, type, description) of query parameters.
type Query = &'static [(&'static str, &'static str, &'static str)];

const READ_ONE: &[(&str, &str, &str)] = &[(
    "pretty",
    "string",
    "If 'true', then the output is pretty printed.",
)];
const LIST: &[(&str, &str, &str)] = &[
    ("allowWatchBookmarks", "boolean", "allowWatchBookmarks requests watch events with type \"BOOKMARK\"."),
    ("continue", "string", "The continue option should be set when retrieving more results from the server."),
    ("fieldSelector", "string", "A selector to restrict the list of returned objects by their fields."),
    ("labelSelector", "string", "A selector to restrict the list of returned objects by their labels."),
    ("limit", "integer", "limit is a maximum number of responses to return for a list call."),
    ("resourceVersion", "string", "resourceVersion sets a constraint on what resource versions a request may be served from."),
    ("sendInitialEvents", "boolean", "`sendInitialEvents=true` may be set together with `watch=true`."),
    ("timeoutSeconds", "integer", "Timeout for the list/watch call."),
    ("watch", "boolean", "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications."),
];
const WRITE: &[(&str, &str, &str)] = &[
    ("dryRun", "string", "When present, indicates that modifications should not be persisted. Valid value: All."),
    ("fieldManager", "string", "fieldManager is a name associated with the actor or entity that is making these changes."),
    ("fieldValidation", "string", "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values: Ignore, Warn (default), Strict."),
];
const PATCH: &[(&str, &str, &str)] = &[
    ("dryRun", "string", "When present, indicates that modifications should not be persisted. Valid value: All."),
    ("fieldManager", "string", "fieldManager is a name associated with the actor or entity that is making these changes. Required for apply requests."),
    ("fieldValidation", "string", "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values: Ignore, Warn (default), Strict."),
    ("force", "boolean", "Force is going to \"force\" Apply requests: the request re-acquires conflicting fields owned by other people."),
];
const DELETE: &[(&str, &str, &str)] = &[
    (
        "dryRun",
        "string",
        "When present, indicates that modifications should not be persisted. Valid value: All.",
    ),
    (
        "propagationPolicy",
        "string",
        "Whether and how garbage collection will be performed: Orphan, Background or Foreground.",
    ),
];

fn camel(s: &str) -> String {
    s.split(['.', '-'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

/// The verbs an operation can be.
#[derive(Clone, Copy)]
enum Verb {
    List,
    Create,
    DeleteCollection,
    Read,
    Replace,
    Patch,
    Delete,
}

impl Verb {
    /// (HTTP method, x-kubernetes-action, operationId verb, query, payload, answers Status).
    fn parts(
        self,
    ) -> (
        &'static str,
        &'static str,
        &'static str,
        Query,
        Option<Payload>,
        bool,
    ) {
        match self {
            Verb::List => ("get", "list", "list", LIST, None, false),
            Verb::Create => (
                "post",
                "post",
                "create",
                WRITE,
                Some(Payload::Object),
                false,
            ),
            Verb::DeleteCollection => (
                "delete",
                "deletecollection",
                "deletecollection",
                DELETE,
                Some(Payload::Delete),
                true,
            ),
            Verb::Read => ("get", "get", "read", READ_ONE, None, false),
            Verb::Replace => ("put", "put", "replace", WRITE, Some(Payload::Object), false),
            Verb::Patch => (
                "patch",
                "patch",
                "patch",
                PATCH,
                Some(Payload::Patch),
                false,
            ),
            Verb::Delete => (
                "delete",
                "delete",
                "delete",
                DELETE,
                Some(Payload::Delete),
                true,
            ),
        }
    }
}

/// Paths and their operations of one resource at one version.
fn resource_paths(d: &ResourceDef, version: &str, def: &str) -> Vec<(String, Vec<Op>)> {
    let prefix = if d.group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{}/{version}", d.group)
    };
    let gv = if d.group.is_empty() {
        format!("Core{}", camel(version))
    } else {
        format!("{}{}", camel(d.group), camel(version))
    };
    let scope = if d.namespaced { "Namespaced" } else { "" };
    let coll = if d.namespaced {
        format!("{prefix}/namespaces/{{namespace}}/{}", d.plural)
    } else {
        format!("{prefix}/{}", d.plural)
    };
    let item = format!("{coll}/{{name}}");
    let list = format!("{def}List");
    // `what`: "" for the object, "Status" for its status subresource.
    let ops = |verbs: &[Verb], what: &str| -> Vec<Op> {
        verbs
            .iter()
            .map(|v| {
                let (method, action, verb, query, payload, status) = v.parts();
                let response = match v {
                    _ if status => core::STATUS.to_string(),
                    Verb::List => list.clone(),
                    _ => def.to_string(),
                };
                Op {
                    method,
                    action,
                    id: format!("{verb}{gv}{scope}{}{what}", d.kind),
                    description: format!("{verb} {} {}", what.to_lowercase(), d.kind)
                        .replace("  ", " "),
                    query,
                    payload,
                    response,
                }
            })
            .collect()
    };
    if d.create_only() {
        return vec![(coll, ops(&[Verb::Create], ""))];
    }
    let mut out = vec![
        (
            coll.clone(),
            ops(&[Verb::List, Verb::Create, Verb::DeleteCollection], ""),
        ),
        (
            item.clone(),
            ops(&[Verb::Read, Verb::Replace, Verb::Patch, Verb::Delete], ""),
        ),
    ];
    if d.namespaced {
        let mut all = ops(&[Verb::List], "");
        for o in &mut all {
            o.id = format!("list{gv}{}ForAllNamespaces", d.kind);
        }
        out.push((format!("{prefix}/{}", d.plural), all));
    }
    if d.status {
        out.push((
            format!("{item}/status"),
            ops(&[Verb::Read, Verb::Replace, Verb::Patch], "Status"),
        ));
    }
    out
}

fn path_params(path: &str, v3: bool) -> Vec<Value> {
    ["name", "namespace"]
        .iter()
        .filter(|p| path.contains(&format!("{{{p}}}")))
        .map(|p| {
            let desc = format!("{p} of the object");
            if v3 {
                json!({"name": p, "in": "path", "required": true, "description": desc, "schema": {"type": "string", "uniqueItems": true}})
            } else {
                json!({"name": p, "in": "path", "required": true, "description": desc, "type": "string", "uniqueItems": true})
            }
        })
        .collect()
}

fn patch_types(d: &ResourceDef) -> Vec<&'static str> {
    let mut t = vec![
        "application/apply-patch+yaml",
        "application/json-patch+json",
        "application/merge-patch+json",
    ];
    if !d.crd {
        t.push("application/strategic-merge-patch+json");
    }
    t
}

fn render_op(o: &Op, d: &ResourceDef, version: &str, v3: bool) -> Value {
    let r = |n: &str| {
        if v3 {
            format!("#/components/schemas/{n}")
        } else {
            format!("#/definitions/{n}")
        }
    };
    let mut params: Vec<Value> = o
        .query
        .iter()
        .map(|(n, t, desc)| {
            if v3 {
                json!({"name": n, "in": "query", "description": desc, "schema": {"type": t, "uniqueItems": true}})
            } else {
                json!({"name": n, "in": "query", "description": desc, "type": t, "uniqueItems": true})
            }
        })
        .collect();
    let body_def = match o.payload {
        Some(Payload::Object) => Some(r(&o.response)),
        Some(Payload::Patch) => Some(r(core::PATCH)),
        Some(Payload::Delete) => Some(r(core::DELETE_OPTIONS)),
        None => None,
    };
    let mut op = json!({
        "operationId": o.id,
        "description": o.description,
        "tags": [camel(if d.group.is_empty() { "core" } else { d.group }) + &camel(version)],
        "x-kubernetes-action": o.action,
        "x-kubernetes-group-version-kind": gvk(d, version),
    });
    let ok = if v3 {
        json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": r(&o.response)}}, "application/yaml": {"schema": {"$ref": r(&o.response)}}}})
    } else {
        json!({"description": "OK", "schema": {"$ref": r(&o.response)}})
    };
    op["responses"] = json!({"200": ok, "401": {"description": "Unauthorized"}});
    if o.method == "post" {
        op["responses"]["201"] = op["responses"]["200"].clone();
    }
    if let Some(b) = body_def {
        if v3 {
            let types = match o.payload {
                Some(Payload::Patch) => patch_types(d),
                _ => vec!["*/*"],
            };
            let content: Map<String, Value> = types
                .into_iter()
                .map(|t| (t.to_string(), json!({"schema": {"$ref": b}})))
                .collect();
            op["requestBody"] = json!({"content": content, "required": !matches!(o.payload, Some(Payload::Delete))});
        } else {
            params.push(json!({"name": "body", "in": "body", "required": !matches!(o.payload, Some(Payload::Delete)), "schema": {"$ref": b}}));
            if matches!(o.payload, Some(Payload::Patch)) {
                op["consumes"] = json!(patch_types(d));
            }
        }
    }
    op["parameters"] = Value::Array(params);
    op
}

/// Convert a Swagger 2.0 schema to OpenAPI 3.0: `$ref`s into `#/components/schemas/`, and a
/// `$ref` with siblings wrapped in `allOf` (what kube-apiserver serves).
fn to_v3(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out: Map<String, Value> = m
                .iter()
                .filter(|(k, _)| *k != "$ref")
                .map(|(k, c)| (k.clone(), to_v3(c)))
                .collect();
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                let r = r.replace("#/definitions/", "#/components/schemas/");
                if out.is_empty() {
                    out.insert("$ref".into(), json!(r));
                } else {
                    out.insert("allOf".into(), json!([{"$ref": r}]));
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(to_v3).collect()),
        other => other.clone(),
    }
}

/// Names of the definitions `v` refers to, directly.
pub(super) fn refs_of(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                match (k.as_str(), c) {
                    ("$ref", Value::String(r)) => {
                        if let Some(n) = r
                            .strip_prefix("#/definitions/")
                            .or_else(|| r.strip_prefix("#/components/schemas/"))
                        {
                            out.push(n.to_string());
                        }
                    }
                    _ => refs_of(c, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|c| refs_of(c, out)),
        _ => {}
    }
}

impl OpenApi {
    fn paths(&self, reg: &Registry, only: Option<(&str, &str)>, v3: bool) -> Map<String, Value> {
        let mut paths = Map::new();
        for ((id, version), def) in &self.kinds {
            let d = reg.def(*id);
            if only.is_some_and(|(g, v)| g != d.group || v != *version) {
                continue;
            }
            for (path, ops) in resource_paths(d, version, def) {
                let mut item = json!({"parameters": path_params(&path, v3)});
                for o in &ops {
                    item[o.method] = render_op(o, d, version, v3);
                }
                paths.insert(path, item);
            }
        }
        paths
    }

    pub(super) fn render_v2(&self, reg: &Registry) -> Value {
        json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": format!("v1.{}.0", crate::api::discovery::KUBE_MINOR)},
            "paths": self.paths(reg, None, false),
            "definitions": self.defs,
            "securityDefinitions": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header", "description": "Bearer Token authentication"}},
            "security": [{"BearerToken": []}],
        })
    }

    pub(super) fn render_v3(&self, reg: &Registry, group: &str, version: &str) -> Value {
        let paths = self.paths(reg, Some((group, version)), true);
        // Every definition reachable from the paths.
        let mut todo = Vec::new();
        refs_of(&Value::Object(paths.clone()), &mut todo);
        let mut seen = BTreeSet::new();
        while let Some(n) = todo.pop() {
            if !seen.insert(n.clone()) {
                continue;
            }
            if let Some(d) = self.defs.get(&n) {
                refs_of(d, &mut todo);
            }
        }
        let schemas: Map<String, Value> = seen
            .into_iter()
            .filter_map(|n| self.defs.get(&n).map(|d| (n, to_v3(d))))
            .collect();
        json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": format!("v1.{}.0", crate::api::discovery::KUBE_MINOR)},
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header", "description": "Bearer Token authentication"}},
            },
            "security": [{"BearerToken": []}],
        })
    }
}
