//! Create and replace (POST, PUT), and the tail every write shares: status/main scoping,
//! validation, `managedFields`, dry run, and the store.
//!
//! Invariants: `status` is dropped on create and kept from the stored object on main
//! resource writes (the status subresource changes only `status`); an object is validated in
//! the version the client used and stored in the preferred one; `dryRun=All` answers the
//! object as it would be stored and stores nothing; a PUT without `resourceVersion` is
//! refused for custom resources (422), like the real server.

use std::sync::Arc;

use serde_json::{json, Value};

use super::managed::{self, Entry, FieldSet, Scope};
use super::{not_found_path, FieldValidation, Target, WriteOpts, Written};
use crate::resources::ResourceDef;
use crate::status::{ApiError, Cause};
use crate::store::{meta_str, now_rfc3339};
use crate::Inner;

/// How a write records field ownership.
pub(crate) enum Track<'a> {
    /// An `Update` operation: the manager owns what it changed.
    Update,
    /// Server-side apply: the manager's `Apply` entry becomes exactly `set`, on top of the
    /// `base` entries (the live ones, less what a forced apply took over).
    Apply { set: &'a FieldSet, base: Vec<Entry> },
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
    obj: Value,
    opts: &WriteOpts,
) -> Result<Written, ApiError> {
    create_tracked(inner, t, obj, opts, Track::Update)
}

pub(crate) fn create_tracked(
    inner: &Arc<Inner>,
    t: &Target,
    mut obj: Value,
    opts: &WriteOpts,
    track: Track,
) -> Result<Written, ApiError> {
    let def = inner.reg.def(t.res).clone();
    check_kind(&def, &obj)?;
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    if matches!(
        def.plural,
        "selfsubjectaccessreviews" | "selfsubjectrulesreviews"
    ) {
        // Virtual and nameless: answered from the spec, never stored.
        let warnings = validate(inner, t, &mut obj, opts)?;
        return Ok(Written::new(201, super::authz::review(obj), warnings));
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
    let base = managed::base_entries(&obj, None);
    let warnings = validate(inner, t, &mut obj, opts)?;
    obj["apiVersion"] = json!(def.api_version(def.version()));
    obj["kind"] = json!(def.kind);
    crate::controllers::on_create(inner, t.res, &mut obj)?;
    if def.plural == "uploadtokenrequests" {
        // Virtual resource: answered, never stored (like CDI's aggregated API).
        return crate::cdi::token_request(inner, obj).map(|o| Written::new(201, o, warnings));
    }
    let scope = scope(inner, t);
    match track {
        Track::Update => managed::record_update(&scope, &opts.manager, base, None, &mut obj),
        Track::Apply { set, .. } => {
            let set = set
                .iter()
                .filter(|p| managed::value_at(&obj, p).is_some())
                .cloned()
                .collect();
            managed::set_entries(&mut obj, &[apply_entry(&scope, &opts.manager, set)]);
        }
    }
    if opts.dry_run {
        return Ok(Written::new(201, obj, warnings));
    }
    inner
        .store
        .create(t.res, obj)
        .map(|o| Written::new(201, o, warnings))
}

/// The field-set scope of a request.
pub(crate) fn scope<'a>(inner: &Inner, t: &'a Target) -> Scope<'a> {
    let def = inner.reg.def(t.res);
    Scope {
        api: inner.openapi(),
        res: t.res,
        version: &t.version,
        api_version: def.api_version(&t.version),
        sub: t.sub.as_deref(),
    }
}

/// The `Apply` entry of `manager`, now.
pub(crate) fn apply_entry(scope: &Scope, manager: &str, set: FieldSet) -> Entry {
    Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version: scope.api_version.clone(),
        time: now_rfc3339(),
        sub: scope.sub.map(str::to_string),
        set,
    }
}

/// Validate in the client's version; unknown fields become warnings under `Warn`.
fn validate(
    inner: &Arc<Inner>,
    t: &Target,
    obj: &mut Value,
    opts: &WriteOpts,
) -> Result<Vec<String>, ApiError> {
    let unknown = crate::schema::validate(
        inner,
        t.res,
        &t.version,
        obj,
        opts.validation == FieldValidation::Strict,
    )?;
    Ok(match opts.validation {
        FieldValidation::Warn => unknown
            .iter()
            .map(|u| format!("unknown field \"{u}\""))
            .collect(),
        _ => Vec::new(),
    })
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

pub(crate) fn update(
    inner: &Arc<Inner>,
    t: &Target,
    mut obj: Value,
    opts: &WriteOpts,
) -> Result<Written, ApiError> {
    let def = inner.reg.def(t.res).clone();
    check_kind(&def, &obj)?;
    let (name, ns) = t.name_ns();
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
    commit(inner, t, &old, obj, rv.as_deref(), opts, Track::Update)
}

/// The tail of every write to an existing object (PUT, PATCH, apply): scope the change to
/// the main resource or `/status`, validate, record field ownership, store unless dry run.
pub(crate) fn commit(
    inner: &Arc<Inner>,
    t: &Target,
    old: &Value,
    new: Value,
    expected_rv: Option<&str>,
    opts: &WriteOpts,
    track: Track,
) -> Result<Written, ApiError> {
    let def = inner.reg.def(t.res).clone();
    let base = match &track {
        Track::Update => managed::base_entries(&new, Some(old)),
        Track::Apply { base, .. } => Some(base.clone()),
    };
    let mut obj = merge_scope(&def, t.sub.as_deref(), old, new);
    obj["metadata"]["name"] = json!(t.name.clone().unwrap_or_default());
    if def.namespaced {
        obj["metadata"]["namespace"] = json!(t.ns.clone().unwrap_or_default());
    }
    let warnings = validate(inner, t, &mut obj, opts)?;
    // Validation normalizes the whole object; what this write may not change (status on
    // the main resource, the rest on /status) stays exactly as stored.
    let mut obj = merge_scope(&def, t.sub.as_deref(), old, obj);
    obj["apiVersion"] = json!(def.api_version(def.version()));
    obj["kind"] = json!(def.kind);
    let scope = scope(inner, t);
    match track {
        Track::Update => managed::record_update(&scope, &opts.manager, base, Some(old), &mut obj),
        Track::Apply { set, .. } => {
            let mut list = base.unwrap_or_default();
            let set: FieldSet = set
                .iter()
                .filter(|p| managed::value_at(&obj, p).is_some())
                .cloned()
                .collect();
            let mine = |e: &Entry| {
                e.manager == opts.manager
                    && e.operation == "Apply"
                    && e.sub.as_deref() == t.sub.as_deref()
            };
            match list.iter_mut().find(|e| mine(e)) {
                // Unchanged ownership keeps its time, so a no-op apply changes nothing.
                Some(e) if e.set == set => {}
                Some(e) => *e = apply_entry(&scope, &opts.manager, set),
                None => list.push(apply_entry(&scope, &opts.manager, set)),
            }
            managed::set_entries(&mut obj, &list);
        }
    }
    if opts.dry_run {
        return Ok(Written::new(200, obj, warnings));
    }
    inner
        .store
        .update(t.res, obj, expected_rv)
        .map(|o| Written::new(200, o, warnings))
}
