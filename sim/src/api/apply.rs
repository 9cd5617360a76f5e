//! Server-side apply (`PATCH` with `application/apply-patch+yaml`): the applied configuration
//! is merged into the live object field by field, with ownership per field manager.
//!
//! Rules (those of kube-apiserver's structured merge, for the cases kubectl exercises):
//! - the manager's `Apply` entry becomes exactly the fields of the applied configuration;
//! - a field the manager applied before and no longer applies is removed, unless another
//!   manager owns it too;
//! - applying a value different from the live one to a field another manager owns is a
//!   conflict: 409 `Conflict` whose `details.causes` name each field and its manager
//!   (`FieldManagerConflict`), unless `force=true`, which takes the fields over;
//! - applying the same value as another owner shares the field (no conflict);
//! - lists merge by their schema's list type (atomic: replaced; set: union; map: by key);
//! - a missing object is created (201).
//!
//! Invariant: a rejected apply changes nothing; an apply that changes no field and no
//! ownership writes nothing (no new resourceVersion).

use std::sync::Arc;

use serde_json::{json, Value};

use super::managed::{self, display, is_element, FieldSet, Scope};
use super::write::{self, Track};
use super::{Target, WriteOpts, Written};
use crate::openapi::ListType;
use crate::status::{ApiError, Cause};
use crate::store::meta_str;
use crate::Inner;

/// Metadata a client may not apply (the server owns it).
const SERVER_META: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

pub(crate) fn apply(
    inner: &Arc<Inner>,
    t: &Target,
    body: &[u8],
    opts: &WriteOpts,
) -> Result<Written, ApiError> {
    let def = inner.reg.def(t.res).clone();
    let (name, ns) = t.name_ns();
    if !opts.manager_given {
        return Err(ApiError::bad_request(
            "PATCH requests must have a field manager: set the fieldManager query parameter",
        ));
    }
    let mut applied: Value = serde_yaml::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if !applied.is_object() {
        return Err(ApiError::bad_request(
            "the applied configuration must be an object",
        ));
    }
    for (field, what) in [("apiVersion", "apiVersion"), ("kind", "kind")] {
        if applied
            .get(field)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(ApiError::bad_request(format!(
                "invalid object type: {what} must be set in the applied configuration"
            )));
        }
    }
    if applied["kind"] != json!(def.kind) {
        return Err(ApiError::bad_request(format!(
            "the kind {} in the applied configuration does not match the resource {:?} (kind {:?})",
            applied["kind"], def.plural, def.kind
        )));
    }
    if meta_str(&applied, "name").is_some_and(|n| !n.is_empty() && n != name) {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    if applied.pointer("/metadata/managedFields").is_some() {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    // A resourceVersion in the configuration is a precondition, like on an update.
    let precondition = meta_str(&applied, "resourceVersion").map(str::to_string);
    if let Some(m) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in SERVER_META {
            m.remove(*f);
        }
    }
    // Undeclared fields fail the apply whatever fieldValidation says: the configuration
    // cannot be typed (kube-apiserver's own 500, without a reason).
    let unknown = crate::schema::unknown_fields(inner, t.res, &t.version, &applied);
    if !unknown.is_empty() {
        let fields: Vec<String> = unknown
            .iter()
            .map(|u| format!(".{u}: field not declared in schema"))
            .collect();
        return Err(ApiError::new(
            500,
            "",
            format!(
                "failed to create typed patch object ({}/{name}; {}/{}, Kind={}): {}",
                meta_str(&applied, "namespace").unwrap_or(""),
                def.group,
                t.version,
                def.kind,
                fields.join(", ")
            ),
        ));
    }
    let scope = write::scope(inner, t);
    let set = scope.field_set(&applied);
    let mut attempt = 0;
    loop {
        let result = match inner.store.get(t.res, &ns, &name) {
            None if t.sub.is_some() => {
                return Err(ApiError::not_found(def.group, def.plural, &name))
            }
            None => {
                let mut obj = applied.clone();
                obj["metadata"]["name"] = json!(name);
                let track = Track::Apply {
                    set: &set,
                    base: Vec::new(),
                };
                write::create_tracked(inner, t, obj, opts, track)
            }
            Some(live) => apply_to(
                inner,
                t,
                opts,
                &scope,
                &live,
                &applied,
                &set,
                precondition.as_deref(),
            ),
        };
        // Another write came in between (or a create raced this one): apply again to the
        // latest object, unless the configuration named the version it applies to.
        match result {
            Err(e)
                if matches!(e.reason.as_str(), "Conflict" | "AlreadyExists")
                    && e.causes.is_empty()
                    && precondition.is_none()
                    && attempt < super::RETRIES =>
            {
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// Apply to an existing object: conflicts, merge, removal of fields no longer applied.
#[allow(clippy::too_many_arguments)]
fn apply_to(
    inner: &Arc<Inner>,
    t: &Target,
    opts: &WriteOpts,
    scope: &Scope,
    live: &Value,
    applied: &Value,
    set: &FieldSet,
    precondition: Option<&str>,
) -> Result<Written, ApiError> {
    let def = inner.reg.def(t.res);
    let mut entries = managed::entries(live);
    let conflicts: Vec<(String, Vec<String>)> = entries
        .iter()
        .filter(|e| e.manager != opts.manager)
        .filter_map(|e| {
            let fields: Vec<String> = e
                .set
                .intersection(set)
                .filter(|p| !is_element(p) && managed::differs(Some(live), applied, p))
                .map(|p| display(p))
                .collect();
            let who = format!("\"{}\" using {}", e.manager, e.api_version);
            (!fields.is_empty()).then_some((who, fields))
        })
        .collect();
    let name = t.name.as_deref().unwrap_or_default();
    // kubectl's own server-side apply may take over what its client-side apply set: fields
    // whose live value is still the last-applied one do not conflict (kube-apiserver's
    // last-applied manager, for manager "kubectl" only).
    let upgrading = opts.manager == KUBECTL && last_applied(live).is_some();
    let allowed: FieldSet = match last_applied(live).filter(|_| upgrading) {
        Some(la) => scope
            .field_set(&la)
            .into_iter()
            .filter(|p| !managed::differs(Some(live), &la, p))
            .collect(),
        None => FieldSet::new(),
    };
    let conflicts: Vec<(String, Vec<String>)> = conflicts
        .into_iter()
        .map(|(who, fields)| {
            let left = fields
                .into_iter()
                .filter(|f| !allowed.iter().any(|p| display(p) == *f))
                .collect::<Vec<_>>();
            (who, left)
        })
        .filter(|(_, fields)| !fields.is_empty())
        .collect();
    if !conflicts.is_empty() && !opts.force {
        return Err(conflict_error(def, name, &conflicts));
    }
    // Forced (or taken over from client-side apply): the other managers lose the fields this
    // apply changes.
    for e in entries.iter_mut().filter(|e| e.manager != opts.manager) {
        e.set.retain(|p| {
            !(set.contains(p) && !is_element(p) && managed::differs(Some(live), applied, p))
        });
    }
    let mine = |e: &managed::Entry| {
        e.manager == opts.manager && e.operation == "Apply" && e.sub.as_deref() == t.sub.as_deref()
    };
    let previous: FieldSet = entries
        .iter()
        .find(|e| mine(e))
        .map(|e| e.set.clone())
        .unwrap_or_default();
    let mut merged = live.clone();
    merge(scope, &mut Vec::new(), &mut merged, applied);
    // Fields this manager stopped applying go, unless someone else owns them too. Deeper
    // paths first, so an element's fields go before the element.
    let others: FieldSet = entries
        .iter()
        .filter(|e| !mine(e))
        .flat_map(|e| e.set.iter().cloned())
        .collect();
    let dropped: Vec<&managed::FieldPath> = previous.difference(set).collect();
    for p in dropped.into_iter().rev() {
        if !others.contains(p) {
            managed::remove_at(&mut merged, p);
        }
    }
    if upgrading {
        // Keep the client-side apply annotation in step with what was applied, so a later
        // client-side apply diffs against it (kube-apiserver's last-applied updater).
        merged["metadata"]["annotations"][LAST_APPLIED] = json!(last_applied_of(applied));
    }
    let expected = precondition.or(meta_str(live, "resourceVersion"));
    let track = Track::Apply { set, base: entries };
    write::commit(inner, t, live, merged, expected, opts, track)
}

/// The field manager kubectl's server-side apply uses.
const KUBECTL: &str = "kubectl";
/// kubectl's client-side apply annotation.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The configuration recorded in an object's last-applied annotation.
fn last_applied(obj: &Value) -> Option<Value> {
    let text = obj
        .pointer("/metadata/annotations")?
        .get(LAST_APPLIED)?
        .as_str()?;
    serde_json::from_str(text).ok()
}

/// The annotation's value for an applied configuration: the configuration without the
/// annotation itself, as JSON with sorted keys and a final newline (what Go's encoder writes).
fn last_applied_of(applied: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&m[k])))
                        .collect(),
                )
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    let mut v = applied.clone();
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove(LAST_APPLIED);
            if a.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    format!("{}\n", sorted(&v))
}

/// Merge `applied` into `live` (names: the field-name path, for list types).
fn merge<'a>(scope: &Scope, names: &mut Vec<&'a str>, live: &mut Value, applied: &'a Value) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, av) in a {
                if names.is_empty() && k == "metadata" {
                    // Only the metadata a manager can own merges; the rest is the server's.
                    let lm = l.entry("metadata").or_insert_with(|| json!({}));
                    for (mk, mv) in av.as_object().into_iter().flatten() {
                        if matches!(
                            mk.as_str(),
                            "labels" | "annotations" | "finalizers" | "ownerReferences"
                        ) {
                            names.extend(["metadata", mk.as_str()]);
                            match lm.get_mut(mk) {
                                Some(lv) => merge(scope, names, lv, mv),
                                None => {
                                    lm[mk] = mv.clone();
                                }
                            }
                            names.truncate(names.len() - 2);
                        }
                    }
                    continue;
                }
                names.push(k);
                match l.get_mut(k) {
                    Some(lv) => merge(scope, names, lv, av),
                    None => {
                        l.insert(k.clone(), av.clone());
                    }
                }
                names.pop();
            }
        }
        (Value::Array(l), Value::Array(a)) => match scope.list_type(names) {
            ListType::Set => {
                for i in a {
                    if !l.contains(i) {
                        l.push(i.clone());
                    }
                }
            }
            ListType::Map(keys) if a.iter().all(|i| managed::key_of(i, &keys).is_some()) => {
                for i in a {
                    let k = managed::key_of(i, &keys);
                    match l.iter_mut().find(|x| managed::key_of(x, &keys) == k) {
                        Some(x) => merge(scope, names, x, i),
                        None => l.push(i.clone()),
                    }
                }
            }
            _ => *l = a.clone(),
        },
        (l, a) => *l = a.clone(),
    }
}

/// 409 as kube-apiserver words it: `Apply failed with N conflict(s): conflict with "m" ...`.
fn conflict_error(
    def: &crate::resources::ResourceDef,
    name: &str,
    conflicts: &[(String, Vec<String>)],
) -> ApiError {
    let total: usize = conflicts.iter().map(|(_, f)| f.len()).sum();
    let mut causes = Vec::new();
    let mut parts = Vec::new();
    for (manager, fields) in conflicts {
        let who = format!("conflict with {manager}");
        if fields.len() == 1 {
            parts.push(format!("{who}: {}", fields[0]));
        } else {
            let list: Vec<String> = fields.iter().map(|f| format!("- {f}")).collect();
            parts.push(format!("conflicts with {manager}:\n{}", list.join("\n")));
        }
        for f in fields {
            causes.push(Cause {
                reason: "FieldManagerConflict".into(),
                message: who.clone(),
                field: f.clone(),
            });
        }
    }
    let plural = if total == 1 { "" } else { "s" };
    let mut e = ApiError::new(
        409,
        "Conflict",
        format!(
            "Apply failed with {total} conflict{plural}: {}",
            parts.join("\n")
        ),
    );
    e.details = Some(json!({"name": name, "group": def.group, "kind": def.plural}));
    e.causes = causes;
    e
}
