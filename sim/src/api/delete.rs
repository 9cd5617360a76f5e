//! DELETE of one object and `deletecollection`, with DeleteOptions (body or query):
//! preconditions, `propagationPolicy`, `dryRun`.
//!
//! Invariants: an object with finalizers is only marked (`deletionTimestamp`) and goes when
//! its last finalizer is removed (see `store.rs`); deleting a namespace deletes everything in
//! it first; a dry run changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::{out, Target, WriteOpts, Written};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::meta_str;
use crate::Inner;

pub(crate) fn delete(
    inner: &Arc<Inner>,
    t: &Target,
    body: &[u8],
    w: &WriteOpts,
) -> Result<Written, ApiError> {
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
        .or_else(|| w.propagation.clone())
        .unwrap_or_else(|| "Background".into());
    let rv = opts
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str);
    let uid = opts.pointer("/preconditions/uid").and_then(Value::as_str);
    let (name, ns) = t.name_ns();
    let dry = w.dry_run
        || opts
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "All"));
    if dry {
        return inner
            .store
            .get(t.res, &ns, &name)
            .map(|o| Written::new(200, o, Vec::new()))
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
    Ok(Written::new(200, obj, Vec::new()))
}

/// `deletecollection`: every selected object, each as [`delete`] would (failures skipped).
pub(crate) fn delete_collection(
    inner: &Arc<Inner>,
    t: &Target,
    body: &[u8],
    q: &HashMap<String, String>,
    w: &WriteOpts,
) -> Result<Written, ApiError> {
    let def = inner.reg.def(t.res).clone();
    let (items, _) = inner.store.list(t.res, t.ns.as_deref());
    let ls = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?;
    let fs = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))?;
    let mut deleted = Vec::new();
    for it in items.iter().filter(|o| ls.matches(o) && fs.matches(o)) {
        let mut t2 = t.clone();
        t2.name = meta_str(it, "name").map(str::to_string);
        t2.ns = meta_str(it, "namespace")
            .map(str::to_string)
            .or(t.ns.clone());
        if let Ok(o) = delete(inner, &t2, body, w) {
            deleted.push(out(&def, &t.version, o.obj));
        }
    }
    let list = json!({
        "kind": format!("{}List", def.kind), "apiVersion": def.api_version(&t.version),
        "metadata": {"resourceVersion": inner.store.current_rv().to_string()}, "items": deleted,
    });
    Ok(Written {
        list: true,
        ..Written::new(200, list, Vec::new())
    })
}
