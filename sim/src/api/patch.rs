//! PATCH: JSON patch (RFC 6902, `test` included), JSON merge patch (RFC 7386), strategic
//! merge patch on core kinds, and server-side apply (see [`super::apply`]).
//!
//! Strategic merge follows the list semantics of the kind's OpenAPI schema
//! (`x-kubernetes-patch-strategy` / `-merge-key`): lists with a merge key merge element by
//! element, lists of scalars with the merge strategy are unions, others are replaced; the
//! directives kubectl sends are honoured (`$patch: replace|delete|merge`, `$retainKeys`,
//! `$setElementOrder/<list>`, `$deleteFromPrimitiveList/<list>`).
//!
//! Invariants: a patch of a missing object is 404 (apply creates it instead); strategic merge
//! on a custom resource is 415, like the real server; the patched object goes through the
//! same tail as an update (`write::commit`), and a `resourceVersion` in the patch is a
//! precondition.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::write::{self, Track};
use super::{Target, WriteOpts, Written};
use crate::status::ApiError;
use crate::store::meta_str;
use crate::Inner;

/// A parsed patch document.
enum Doc {
    Json(json_patch::Patch),
    Merge(Value),
    Strategic(Value),
}

impl Doc {
    fn parse(ctype: &str, body: &[u8], crd: bool) -> Result<Doc, ApiError> {
        match ctype {
            "application/json-patch+json" => serde_json::from_slice(body)
                .map(Doc::Json)
                .map_err(|e| ApiError::bad_request(format!("decoding JSON patch: {e}"))),
            "application/merge-patch+json" => serde_json::from_slice(body)
                .map(Doc::Merge)
                .map_err(|e| ApiError::bad_request(format!("decoding merge patch: {e}"))),
            "application/strategic-merge-patch+json" if crd => Err(ApiError::unsupported_media(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            )),
            "application/strategic-merge-patch+json" => serde_json::from_slice(body)
                .map(Doc::Strategic)
                .map_err(|e| ApiError::bad_request(format!("decoding strategic merge patch: {e}"))),
            other => Err(ApiError::unsupported_media(format!(
                "the body of the request was in an unknown format ({other}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json"
            ))),
        }
    }

    /// `old` with the patch applied.
    fn apply(&self, s: &Strategic, old: &Value) -> Result<Value, ApiError> {
        let mut doc = old.clone();
        match self {
            // kube-apiserver answers a failed operation (a `test` included) with this generic
            // 422 and no detail.
            Doc::Json(p) => json_patch::patch(&mut doc, p).map_err(|_| {
                let mut e = ApiError::new(
                    422,
                    "Invalid",
                    "the server rejected our request due to an error in our request",
                );
                e.details = Some(serde_json::json!({}));
                e
            })?,
            Doc::Merge(p) => json_patch::merge(&mut doc, p),
            Doc::Strategic(p) => s.merge(&mut Vec::new(), &mut doc, p)?,
        }
        Ok(doc)
    }
}

pub(crate) fn patch(
    inner: &Arc<Inner>,
    t: &Target,
    ctype: &str,
    body: &[u8],
    opts: &WriteOpts,
) -> Result<Written, ApiError> {
    let def = inner.reg.def(t.res).clone();
    let (name, ns) = t.name_ns();
    if matches!(
        ctype,
        "application/apply-patch+yaml" | "application/apply-patch+cbor"
    ) {
        return super::apply::apply(inner, t, body, opts);
    }
    let doc = Doc::parse(ctype, body, def.crd)?;
    let strategic = Strategic {
        api: inner.openapi(),
        res: t.res,
        version: &t.version,
    };
    let mut attempt = 0;
    loop {
        let old = inner
            .store
            .get(t.res, &ns, &name)
            .ok_or_else(|| ApiError::not_found(def.group, def.plural, &name))?;
        let patched = doc.apply(&strategic, &old)?;
        // Only a resourceVersion the patch itself sets is a precondition; otherwise the patch
        // is applied to the latest object, again if another write came in between.
        let old_rv = meta_str(&old, "resourceVersion").map(str::to_string);
        let new_rv = meta_str(&patched, "resourceVersion").map(str::to_string);
        let precondition = new_rv.clone().filter(|rv| Some(rv) != old_rv.as_ref());
        let expected = precondition.clone().or(old_rv);
        match write::commit(
            inner,
            t,
            &old,
            patched,
            expected.as_deref(),
            opts,
            Track::Update,
        ) {
            Err(e) if e.code == 409 && precondition.is_none() && attempt < super::RETRIES => {
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// Strategic merge of one kind.
struct Strategic<'a> {
    api: Arc<crate::openapi::OpenApi>,
    res: crate::resources::ResId,
    version: &'a str,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg)
}

impl Strategic<'_> {
    /// Merge `patch` into the map `doc` (names: the field-name path of `doc`).
    fn merge<'p>(
        &self,
        names: &mut Vec<&'p str>,
        doc: &mut Value,
        patch: &'p Value,
    ) -> Result<(), ApiError> {
        let Some(p) = patch.as_object() else {
            *doc = patch.clone();
            return Ok(());
        };
        match p.get("$patch").and_then(Value::as_str) {
            Some("replace") => {
                *doc = Value::Object(strip(p));
                return Ok(());
            }
            Some("delete") => {
                *doc = Value::Object(Map::new());
                return Ok(());
            }
            Some("merge") | None => {}
            Some(other) => return Err(bad(format!("unknown patch type: {other}"))),
        }
        if !doc.is_object() {
            *doc = Value::Object(Map::new());
        }
        for (k, pv) in p {
            if k.starts_with('$') {
                continue;
            }
            let Some(d) = doc.as_object_mut() else { break };
            if pv.is_null() {
                d.remove(k);
                continue;
            }
            names.push(k);
            match (d.get_mut(k), pv) {
                (Some(dv), Value::Array(items)) if dv.is_array() => {
                    self.merge_list(names, dv, items)?;
                }
                (Some(dv), Value::Object(_)) if dv.is_object() => self.merge(names, dv, pv)?,
                (_, Value::Object(po)) => {
                    let mut fresh = Value::Object(Map::new());
                    self.merge(names, &mut fresh, pv)?;
                    if po.get("$patch").and_then(Value::as_str) != Some("delete") {
                        d.insert(k.clone(), fresh);
                    } else {
                        d.remove(k);
                    }
                }
                (_, Value::Array(items)) => {
                    let mut fresh = Value::Array(Vec::new());
                    self.merge_list(names, &mut fresh, items)?;
                    d.insert(k.clone(), fresh);
                }
                (_, v) => {
                    d.insert(k.clone(), v.clone());
                }
            }
            names.pop();
        }
        // Directives that refer to sibling lists and keys.
        for (k, pv) in p {
            if let Some(list) = k.strip_prefix("$deleteFromPrimitiveList/") {
                let gone = pv.as_array().cloned().unwrap_or_default();
                if let Some(a) = doc.get_mut(list).and_then(Value::as_array_mut) {
                    a.retain(|v| !gone.contains(v));
                }
            } else if let Some(list) = k.strip_prefix("$setElementOrder/") {
                names.push(list);
                let key = self.api.patch_merge_key(self.res, self.version, names);
                names.pop();
                let order = pv.as_array().cloned().unwrap_or_default();
                if let Some(a) = doc.get_mut(list).and_then(Value::as_array_mut) {
                    reorder(a, &order, key.as_deref());
                }
            } else if k == "$retainKeys" {
                let keep: Vec<&str> = pv
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if let Some(d) = doc.as_object_mut() {
                    d.retain(|k, _| keep.contains(&k.as_str()));
                }
            }
        }
        Ok(())
    }

    fn merge_list<'p>(
        &self,
        names: &mut Vec<&'p str>,
        doc: &mut Value,
        items: &'p [Value],
    ) -> Result<(), ApiError> {
        let key = self.api.patch_merge_key(self.res, self.version, names);
        let replace = items
            .iter()
            .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"));
        let Some(list) = doc.as_array_mut() else {
            return Ok(());
        };
        match key {
            _ if replace => {
                *list = items
                    .iter()
                    .filter(|i| i.get("$patch").is_none())
                    .map(clean)
                    .collect();
            }
            None => *list = items.iter().map(clean).collect(),
            Some(k) if k.is_empty() => {
                for i in items {
                    if !list.contains(i) {
                        list.push(i.clone());
                    }
                }
            }
            Some(k) => {
                for i in items {
                    let id = i.get(&k).ok_or_else(|| {
                        bad(format!("map: {i} does not contain declared merge key: {k}"))
                    })?;
                    let pos = list.iter().position(|x| x.get(&k) == Some(id));
                    if i.get("$patch").and_then(Value::as_str) == Some("delete") {
                        if let Some(p) = pos {
                            list.remove(p);
                        }
                        continue;
                    }
                    match pos {
                        Some(p) => self.merge(names, &mut list[p], i)?,
                        None => {
                            let mut fresh = Value::Object(Map::new());
                            self.merge(names, &mut fresh, i)?;
                            list.push(fresh);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A patch map without its directives.
fn strip(p: &Map<String, Value>) -> Map<String, Value> {
    p.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), clean(v)))
        .collect()
}

/// A value without directives anywhere inside.
fn clean(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip(m)),
        Value::Array(a) => Value::Array(a.iter().map(clean).collect()),
        other => other.clone(),
    }
}

/// Order `list` as `order` says (by merge key, or by value for scalars); elements it does
/// not name keep their relative order after those it does.
fn reorder(list: &mut [Value], order: &[Value], key: Option<&str>) {
    let id = |v: &Value| -> Value {
        match key {
            Some(k) if !k.is_empty() => v.get(k).cloned().unwrap_or(Value::Null),
            _ => v.clone(),
        }
    };
    let rank = |v: &Value| {
        let i = id(v);
        order.iter().position(|o| id(o) == i).unwrap_or(order.len())
    };
    list.sort_by_key(|v| rank(v));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;
    use crate::openapi::OpenApi;
    use crate::resources::Registry;
    use crate::schema::Schemas;

    fn smp(doc: Value, patch: Value) -> Value {
        let reg = Registry::default();
        let s = Strategic {
            api: OpenApi::shared(&Schemas::load(None).unwrap(), &reg),
            res: reg.by_plural("", "pods").unwrap(),
            version: "v1",
        };
        let mut doc = doc;
        s.merge(&mut Vec::new(), &mut doc, &patch).unwrap();
        doc
    }

    #[test]
    fn strategic_merge_merges_lists_by_key_and_honours_directives() {
        let doc = json!({
            "metadata": {"finalizers": ["a"], "labels": {"x": "1", "y": "2"}},
            "spec": {
                "containers": [{"name": "c1", "image": "i1"}, {"name": "c2", "image": "i2"}],
                "tolerations": [{"key": "k1"}],
            },
        });
        // What kubectl apply sends after changing c2's image and dropping c1.
        let patch = json!({
            "metadata": {"finalizers": ["b"], "labels": {"y": null}},
            "spec": {
                "$setElementOrder/containers": [{"name": "c2"}, {"name": "c3"}],
                "containers": [
                    {"name": "c2", "image": "i2b"},
                    {"name": "c3", "image": "i3"},
                    {"name": "c1", "$patch": "delete"},
                ],
                "tolerations": [{"key": "k2"}],
            },
        });
        let out = smp(doc, patch);
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "c2", "image": "i2b"}, {"name": "c3", "image": "i3"}])
        );
        assert_eq!(
            out["spec"]["tolerations"],
            json!([{"key": "k2"}]),
            "atomic: replaced"
        );
        assert_eq!(
            out["metadata"]["finalizers"],
            json!(["a", "b"]),
            "set: merged"
        );
        assert_eq!(out["metadata"]["labels"], json!({"x": "1"}));
        assert!(out["spec"].get("$setElementOrder/containers").is_none());
        let out = smp(
            json!({"metadata": {"finalizers": ["a", "b"]}}),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        let out = smp(
            json!({"spec": {"containers": [{"name": "c1", "image": "i1"}]}}),
            json!({"spec": {"containers": [{"$patch": "replace"}, {"name": "c9", "image": "i9"}]}}),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "c9", "image": "i9"}])
        );
    }
}
