//! Reads: GET of one object and LIST with label/field selectors and `limit`/`continue`.
//!
//! Invariant: a list is one consistent snapshot of the store (its `resourceVersion` is the
//! store's at that instant); `continue` tokens are the hex of the last `namespace\0name`
//! returned, so pages never repeat or skip an object that stayed.

use std::collections::HashMap;

use hyper::Response;
use serde_json::{json, Value};

use super::{out, Target};
use crate::http::{json_response, Body};
use crate::resources::ResourceDef;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::meta_str;
use crate::Inner;

pub(crate) fn get(
    inner: &Inner,
    t: &Target,
    def: &ResourceDef,
) -> Result<Response<Body>, ApiError> {
    let name = t.name.as_deref().unwrap_or("");
    let obj = inner
        .store
        .get(t.res, t.ns.as_deref().unwrap_or(""), name)
        .ok_or_else(|| ApiError::not_found(def.group, def.plural, name))?;
    Ok(json_response(200, &out(def, &t.version, obj)))
}

pub(crate) fn list(
    inner: &Inner,
    t: &Target,
    def: &ResourceDef,
    q: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let ls = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?;
    let fs = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))?;
    let (items, rv) = inner.store.list(t.res, t.ns.as_deref());
    let mut items: Vec<Value> = items
        .into_iter()
        .filter(|o| ls.matches(o) && fs.matches(o))
        .collect();
    if let Some(tok) = q.get("continue").filter(|s| !s.is_empty()) {
        let raw = hex::decode(tok).map_err(|_| ApiError::bad_request("invalid continue token"))?;
        let after = String::from_utf8_lossy(&raw).to_string();
        items.retain(|o| key_of(o) > after);
    }
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if items.len() > limit {
        let rest = items.len() - limit;
        items.truncate(limit);
        if let Some(last) = items.last() {
            meta["continue"] = json!(hex::encode(key_of(last)));
            meta["remainingItemCount"] = json!(rest);
        }
    }
    let items: Vec<Value> = items.into_iter().map(|o| out(def, &t.version, o)).collect();
    Ok(json_response(
        200,
        &json!({"kind": format!("{}List", def.kind), "apiVersion": def.api_version(&t.version), "metadata": meta, "items": items}),
    ))
}

fn key_of(o: &Value) -> String {
    format!(
        "{}\u{0}{}",
        meta_str(o, "namespace").unwrap_or(""),
        meta_str(o, "name").unwrap_or("")
    )
}
