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
    let scope = write::scope(inner, t);
    let set = scope.field_set(&applied);
    let Some(live) = inner.store.get(t.res, &ns, &name) else {
        if t.sub.is_some() {
            return Err(ApiError::not_found(def.group, def.plural, &name));
        }
        applied["metadata"]["name"] = json!(name);
        return write::create_tracked(
            inner,
            t,
            applied,
            opts,
            Track::Apply {
                set: &set,
                base: Vec::new(),
            },
        );
    };
    let mut entries = managed::entries(&live);
    let conflicts: Vec<(String, Vec<String>)> = entries
        .iter()
        .filter(|e| e.manager != opts.manager)
        .filter_map(|e| {
            let fields: Vec<String> = e
                .set
                .intersection(&set)
                .filter(|p| !is_element(p) && managed::differs(Some(&live), &applied, p))
                .map(|p| display(p))
                .collect();
            let who = format!("\"{}\" using {}", e.manager, e.api_version);
            (!fields.is_empty()).then_some((who, fields))
        })
        .collect();
    if !conflicts.is_empty() && !opts.force {
        return Err(conflict_error(&def, &name, &conflicts));
    }
    // Forced: the other managers lose the fields this apply takes.
    for e in entries.iter_mut().filter(|e| e.manager != opts.manager) {
        e.set.retain(|p| {
            !(set.contains(p) && !is_element(p) && managed::differs(Some(&live), &applied, p))
        });
    }
    let previous: FieldSet = entries
        .iter()
        .find(|e| {
            e.manager == opts.manager
                && e.operation == "Apply"
                && e.sub.as_deref() == t.sub.as_deref()
        })
        .map(|e| e.set.clone())
        .unwrap_or_default();
    let mut merged = live.clone();
    merge(&scope, &mut Vec::new(), &mut merged, &applied);
    // Fields this manager stopped applying go, unless someone else owns them too. Deeper
    // paths first, so an element's fields go before the element.
    let others: FieldSet = entries
        .iter()
        .filter(|e| {
            !(e.manager == opts.manager
                && e.operation == "Apply"
                && e.sub.as_deref() == t.sub.as_deref())
        })
        .flat_map(|e| e.set.iter().cloned())
        .collect();
    let dropped: Vec<&managed::FieldPath> = previous.difference(&set).collect();
    for p in dropped.into_iter().rev() {
        if !others.contains(p) {
            managed::remove_at(&mut merged, p);
        }
    }
    write::commit(
        inner,
        t,
        &live,
        merged,
        precondition.as_deref(),
        opts,
        Track::Apply {
            set: &set,
            base: entries,
        },
    )
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
