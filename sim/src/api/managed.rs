//! `metadata.managedFields`: field sets in the `FieldsV1` format, and who owns what after a
//! write — the bookkeeping kube-apiserver's field manager does.
//!
//! A field set holds paths to the leaves of an object (scalars, atomic lists, empty maps),
//! plus one path per element of an associative list (`k:{"name":"c"}`) or set (`v:"x"`), so
//! that removing an element is an ownership change too. Whether a list is atomic, a set or a
//! map comes from the OpenAPI schema of the kind (`crate::openapi`).
//!
//! Invariants: an entry is identified by (manager, operation, subresource) and is dropped
//! when its set becomes empty; an `Update` (create, replace, patch) takes the fields it
//! changed away from every other entry and never conflicts; main-resource entries never
//! hold `status`, status-subresource entries hold only `status`; `apiVersion`, `kind`
//! and server-owned metadata (name, uid, resourceVersion, ...) are never tracked.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::openapi::{ListType, OpenApi};
use crate::resources::ResId;
use crate::store::now_rfc3339;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Pe {
    /// A struct or map field: `f:name`.
    Field(String),
    /// An element of an associative list by its key fields (JSON object): `k:{...}`.
    Key(String),
    /// An element of a set by its value (JSON): `v:...`.
    Value(String),
    /// A list element by position: `i:N` (only read from clients' managedFields).
    Index(usize),
}

pub(crate) type FieldPath = Vec<Pe>;
pub(crate) type FieldSet = BTreeSet<FieldPath>;

/// What the field sets of one object are computed against.
pub(crate) struct Scope<'a> {
    pub api: Arc<OpenApi>,
    pub res: ResId,
    pub version: &'a str,
    /// `v1`, `kubevirt.io/v1`: the version the client wrote in.
    pub api_version: String,
    /// `Some("status")` for the status subresource.
    pub sub: Option<&'a str>,
}

/// Metadata fields a manager can own (the rest is the server's).
const TRACKED_META: &[&str] = &["labels", "annotations", "finalizers", "ownerReferences"];

impl Scope<'_> {
    /// The field set of `obj` (what a manager writing `obj` as a whole would own).
    pub(crate) fn field_set(&self, obj: &Value) -> FieldSet {
        let mut out = FieldSet::new();
        let Some(m) = obj.as_object() else { return out };
        for (k, v) in m {
            let take = match k.as_str() {
                "apiVersion" | "kind" => false,
                "status" => self.sub == Some("status"),
                "metadata" => self.sub.is_none(),
                _ => self.sub.is_none(),
            };
            if !take {
                continue;
            }
            if k == "metadata" {
                for (mk, mv) in v.as_object().into_iter().flatten() {
                    if TRACKED_META.contains(&mk.as_str()) {
                        let path = vec![Pe::Field(k.clone()), Pe::Field(mk.clone())];
                        self.walk(mv, &path, &["metadata", mk], &mut out);
                    }
                }
                continue;
            }
            self.walk(v, &[Pe::Field(k.clone())], &[k], &mut out);
        }
        out
    }

    fn walk(&self, v: &Value, path: &[Pe], names: &[&str], out: &mut FieldSet) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, c) in m {
                    let mut p = path.to_vec();
                    p.push(Pe::Field(k.clone()));
                    let mut n = names.to_vec();
                    n.push(k);
                    self.walk(c, &p, &n, out);
                }
            }
            Value::Array(items) => match self.list_type(names) {
                ListType::Set if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
                    for i in items {
                        let mut p = path.to_vec();
                        p.push(Pe::Value(i.to_string()));
                        out.insert(p);
                    }
                }
                ListType::Map(keys) if items.iter().all(|i| key_of(i, &keys).is_some()) => {
                    for i in items {
                        let mut p = path.to_vec();
                        p.push(Pe::Key(key_of(i, &keys).unwrap_or_default()));
                        out.insert(p.clone());
                        self.walk(i, &p, names, out);
                    }
                }
                _ => {
                    out.insert(path.to_vec());
                }
            },
            _ => {
                out.insert(path.to_vec());
            }
        }
    }

    /// The list type at a field-name path.
    pub(crate) fn list_type(&self, names: &[&str]) -> ListType {
        self.api.list_type(self.res, self.version, names)
    }
}

/// The key of an associative list element: a JSON object of its key fields, in key order.
pub(crate) fn key_of(item: &Value, keys: &[String]) -> Option<String> {
    if keys.is_empty() {
        return None;
    }
    let mut m = Map::new();
    for k in keys {
        // A missing optional key (e.g. `protocol`) defaults on the real server; here it is
        // simply left out of the key.
        if let Some(v) = item.get(k) {
            m.insert(k.clone(), v.clone());
        }
    }
    if m.is_empty() {
        return None;
    }
    Some(Value::Object(m).to_string())
}

/// The value at `path` in `obj`, if present.
pub(crate) fn value_at<'a>(obj: &'a Value, path: &[Pe]) -> Option<&'a Value> {
    let mut cur = obj;
    for pe in path {
        cur = match pe {
            Pe::Field(k) => cur.get(k)?,
            Pe::Index(i) => cur.get(*i)?,
            Pe::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).ok()?;
                cur.as_array()?
                    .iter()
                    .find(|i| key.iter().all(|(kk, kv)| i.get(kk) == Some(kv)))?
            }
            Pe::Value(v) => {
                let want: Value = serde_json::from_str(v).ok()?;
                cur.as_array()?.iter().find(|i| **i == want)?
            }
        };
    }
    Some(cur)
}

/// Remove the value at `path` (a field, or a list element); absent paths are ignored.
pub(crate) fn remove_at(obj: &mut Value, path: &[Pe]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for pe in parent {
        let next = match pe {
            Pe::Field(k) => cur.get_mut(k),
            Pe::Index(i) => cur.get_mut(*i),
            Pe::Key(_) | Pe::Value(_) => {
                let Some(idx) = position(cur, pe) else { return };
                cur.get_mut(idx)
            }
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        Pe::Field(k) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(k);
            }
        }
        pe => {
            let idx = match pe {
                Pe::Index(i) => Some(*i),
                _ => position(cur, pe),
            };
            if let (Some(i), Some(a)) = (idx, cur.as_array_mut()) {
                if i < a.len() {
                    a.remove(i);
                }
            }
        }
    }
}

fn position(list: &Value, pe: &Pe) -> Option<usize> {
    let a = list.as_array()?;
    match pe {
        Pe::Key(k) => {
            let key: Map<String, Value> = serde_json::from_str(k).ok()?;
            a.iter()
                .position(|i| key.iter().all(|(kk, kv)| i.get(kk) == Some(kv)))
        }
        Pe::Value(v) => {
            let want: Value = serde_json::from_str(v).ok()?;
            a.iter().position(|i| *i == want)
        }
        Pe::Index(i) => Some(*i),
        Pe::Field(_) => None,
    }
}

/// A path naming a list element (whose own value is its fields, tracked separately).
pub(crate) fn is_element(p: &[Pe]) -> bool {
    matches!(p.last(), Some(Pe::Key(_) | Pe::Value(_) | Pe::Index(_)))
}

/// The value at `p` differs between `old` (absent: None) and `new`.
pub(crate) fn differs(old: Option<&Value>, new: &Value, p: &[Pe]) -> bool {
    old.and_then(|o| value_at(o, p)) != value_at(new, p)
}

/// `.spec.containers[name="c"].image`: a path as the real server names it in conflicts.
pub(crate) fn display(path: &[Pe]) -> String {
    let mut s = String::new();
    for pe in path {
        match pe {
            Pe::Field(k) => {
                s.push('.');
                s.push_str(k);
            }
            Pe::Index(i) => s.push_str(&format!("[{i}]")),
            Pe::Value(v) => s.push_str(&format!("[={v}]")),
            Pe::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = key.iter().map(|(kk, kv)| format!("{kk}={kv}")).collect();
                s.push_str(&format!("[{}]", parts.join(",")));
            }
        }
    }
    s
}

#[derive(Default)]
struct Node {
    member: bool,
    children: BTreeMap<String, Node>,
}

fn encode_pe(pe: &Pe) -> String {
    match pe {
        Pe::Field(k) => format!("f:{k}"),
        Pe::Key(k) => format!("k:{k}"),
        Pe::Value(v) => format!("v:{v}"),
        Pe::Index(i) => format!("i:{i}"),
    }
}

fn decode_pe(s: &str) -> Option<Pe> {
    let (tag, rest) = s.split_at_checked(2)?;
    match tag {
        "f:" => Some(Pe::Field(rest.to_string())),
        // Keys are re-serialized so they compare equal to the ones computed here.
        "k:" => serde_json::from_str::<Value>(rest)
            .ok()
            .map(|v| Pe::Key(v.to_string())),
        "v:" => serde_json::from_str::<Value>(rest)
            .ok()
            .map(|v| Pe::Value(v.to_string())),
        "i:" => rest.parse().ok().map(Pe::Index),
        _ => None,
    }
}

/// A field set as `fieldsV1` JSON.
pub(crate) fn encode(set: &FieldSet) -> Value {
    let mut root = Node::default();
    for path in set {
        let mut n = &mut root;
        for pe in path {
            n = n.children.entry(encode_pe(pe)).or_default();
        }
        n.member = true;
    }
    fn render(n: &Node) -> Value {
        let mut m = Map::new();
        if n.member && !n.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (k, c) in &n.children {
            m.insert(k.clone(), render(c));
        }
        Value::Object(m)
    }
    render(&root)
}

/// `fieldsV1` JSON as a field set (unknown entries are skipped).
pub(crate) fn decode(v: &Value) -> FieldSet {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        if m.is_empty() && !path.is_empty() {
            out.insert(path.clone());
            return;
        }
        for (k, c) in m {
            if k == "." {
                out.insert(path.clone());
                continue;
            }
            if let Some(pe) = decode_pe(k) {
                path.push(pe);
                walk(c, path, out);
                path.pop();
            }
        }
    }
    let mut out = FieldSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// One `managedFields` entry.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub sub: Option<String>,
    pub set: FieldSet,
}

impl Entry {
    fn same_owner(&self, manager: &str, operation: &str, sub: Option<&str>) -> bool {
        self.manager == manager && self.operation == operation && self.sub.as_deref() == sub
    }
}

/// The entries of an object's `metadata.managedFields`.
pub(crate) fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some(Entry {
                manager: e.get("manager")?.as_str()?.to_string(),
                operation: e.get("operation")?.as_str()?.to_string(),
                api_version: e
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                time: e
                    .get("time")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                sub: e
                    .get("subresource")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                set: e.get("fieldsV1").map(decode).unwrap_or_default(),
            })
        })
        .collect()
}

/// Write `entries` into `obj.metadata.managedFields` (removed when there are none).
pub(crate) fn set_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.set.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": encode(&e.set),
            });
            if let Some(s) = &e.sub {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if list.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

/// The entries a write starts from: the request's own `managedFields` when it sets them
/// (an empty list, or one empty entry, clears them all), the stored object's otherwise.
pub(crate) fn base_entries(request: &Value, stored: Option<&Value>) -> Option<Vec<Entry>> {
    match request.pointer("/metadata/managedFields") {
        Some(Value::Array(a)) if a.is_empty() || (a.len() == 1 && a[0] == json!({})) => None,
        Some(Value::Array(_)) => Some(entries(request)),
        _ => Some(stored.map(entries).unwrap_or_default()),
    }
}

/// Record an `Update` by `manager` that turned `old` (None: a create) into `new`, on top of
/// `base` entries; the result is written into `new`. `base` None clears managedFields.
pub(crate) fn record_update(
    scope: &Scope,
    manager: &str,
    base: Option<Vec<Entry>>,
    old: Option<&Value>,
    new: &mut Value,
) {
    let Some(mut list) = base else {
        set_entries(new, &[]);
        return;
    };
    let new_set = scope.field_set(new);
    let old_set = old.map(|o| scope.field_set(o)).unwrap_or_default();
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| !old_set.contains(*p) || (!is_element(p) && differs(old, new, p)))
        .cloned()
        .collect();
    let removed: FieldSet = old_set.difference(&new_set).cloned().collect();
    if changed.is_empty() && removed.is_empty() && old.is_some() {
        set_entries(new, &list);
        return;
    }
    for e in list.iter_mut() {
        e.set
            .retain(|p| !changed.contains(p) && !removed.contains(p));
    }
    if !changed.is_empty() && !manager.is_empty() {
        let now = now_rfc3339();
        let api_version = scope.api_version.clone();
        match list
            .iter_mut()
            .find(|e| e.same_owner(manager, "Update", scope.sub))
        {
            Some(e) => {
                e.set.extend(changed);
                e.time = now;
                e.api_version = api_version;
            }
            None => list.push(Entry {
                manager: manager.to_string(),
                operation: "Update".into(),
                api_version,
                time: now,
                sub: scope.sub.map(str::to_string),
                set: changed,
            }),
        }
    }
    set_entries(new, &list);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::resources::Registry;
    use crate::schema::Schemas;

    fn pod_scope(reg: &Registry) -> Scope<'static> {
        Scope {
            api: OpenApi::shared(&Schemas::load(None).unwrap(), reg),
            res: reg.by_plural("", "pods").unwrap(),
            version: "v1",
            api_version: "v1".into(),
            sub: None,
        }
    }

    fn pod(image: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "uid": "u", "labels": {"app": "a"}, "finalizers": ["x/y"]},
            "spec": {"containers": [{"name": "c", "image": image}], "nodeSelector": {}},
            "status": {"phase": "Running"},
        })
    }

    #[test]
    fn field_sets_follow_list_types_and_round_trip_through_fields_v1() {
        let reg = Registry::default();
        let scope = pod_scope(&reg);
        let set = scope.field_set(&pod("i1"));
        let f = |s: &str| Pe::Field(s.into());
        let key = Pe::Key(r#"{"name":"c"}"#.into());
        let want: FieldSet = [
            vec![f("metadata"), f("labels"), f("app")],
            vec![f("metadata"), f("finalizers"), Pe::Value("\"x/y\"".into())],
            vec![f("spec"), f("containers"), key.clone()],
            vec![f("spec"), f("containers"), key.clone(), f("image")],
            vec![f("spec"), f("containers"), key, f("name")],
            vec![f("spec"), f("nodeSelector")],
        ]
        .into_iter()
        .collect();
        assert_eq!(set, want, "status, uid and name are not tracked");
        let encoded = encode(&set);
        assert_eq!(
            encoded["f:spec"]["f:containers"][r#"k:{"name":"c"}"#],
            json!({".": {}, "f:image": {}, "f:name": {}})
        );
        assert_eq!(decode(&encoded), set);
        assert_eq!(
            display(&[
                f("spec"),
                f("containers"),
                Pe::Key(r#"{"name":"c"}"#.into()),
                f("image")
            ]),
            r#".spec.containers[name="c"].image"#
        );
    }

    #[test]
    fn an_update_takes_the_fields_it_changes_from_other_managers() {
        let reg = Registry::default();
        let scope = pod_scope(&reg);
        let mut created = pod("i1");
        record_update(&scope, "creator", Some(Vec::new()), None, &mut created);
        let mut changed = created.clone();
        changed["spec"]["containers"][0]["image"] = json!("i2");
        let base = base_entries(&changed, Some(&created));
        record_update(&scope, "editor", base, Some(&created), &mut changed);
        let list = entries(&changed);
        let owner_of_image: Vec<&str> = list
            .iter()
            .filter(|e| {
                e.set
                    .iter()
                    .any(|p| p.last() == Some(&Pe::Field("image".into())))
            })
            .map(|e| e.manager.as_str())
            .collect();
        assert_eq!(owner_of_image, ["editor"]);
        assert!(
            list.iter().any(|e| e.manager == "creator"),
            "the creator keeps the rest"
        );
        // An empty managedFields in a request clears them.
        let mut cleared = changed.clone();
        cleared["metadata"]["managedFields"] = json!([]);
        let base = base_entries(&cleared, Some(&changed));
        record_update(&scope, "editor", base, Some(&changed), &mut cleared);
        assert!(cleared["metadata"].get("managedFields").is_none());
    }
}
