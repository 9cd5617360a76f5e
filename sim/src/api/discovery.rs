//! Discovery: `/`, `/version`, `/api`, `/api/v1`, `/apis`, `/apis/{group}[/{version}]`, and
//! the health endpoints, all generated from the resource registry.
//!
//! Invariant: every resource the router serves is listed exactly once, with the verbs it
//! answers (create-only for the virtual review/token resources) and its `/status`
//! subresource when it has one; nothing is listed that the router would 404.

use serde_json::{json, Value};

use super::not_found_path;
use crate::http::{json_response, Body};
use crate::status::ApiError;
use crate::Inner;

/// The Kubernetes version the sim claims (its discovery and OpenAPI documents say the same).
pub(crate) const KUBE_MINOR: &str = "33";

/// Answer a discovery path, or `None` when `segs` is not one.
pub(crate) fn serve(
    inner: &Inner,
    segs: &[&str],
) -> Result<Option<hyper::Response<Body>>, ApiError> {
    let v = match segs {
        [] => json!({"paths": root_paths(inner)}),
        ["version"] => version(),
        ["healthz"] | ["readyz"] | ["livez"] => {
            return Ok(Some(crate::http::text_response(200, "text/plain", "ok")))
        }
        ["api"] => json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
        }),
        ["api", "v1"] => resource_list(inner, "", "v1"),
        ["apis"] => group_list(inner),
        ["apis", g] => {
            let mut x = group_list(inner)["groups"]
                .as_array()
                .and_then(|gs| gs.iter().find(|x| x["name"] == *g).cloned())
                .ok_or_else(not_found_path)?;
            x["kind"] = json!("APIGroup");
            x["apiVersion"] = json!("v1");
            x
        }
        ["apis", g, v] => {
            let l = resource_list(inner, g, v);
            if l["resources"].as_array().is_none_or(|a| a.is_empty()) {
                return Err(not_found_path());
            }
            l
        }
        _ => return Ok(None),
    };
    Ok(Some(json_response(200, &v)))
}

/// Every group-version path (`/api/v1`, `/apis/g/v`), core first.
pub(crate) fn group_versions(inner: &Inner) -> Vec<(&'static str, &'static str)> {
    let mut out = vec![("", "v1")];
    for (g, vs) in inner.reg.groups() {
        out.extend(vs.into_iter().map(|v| (g, v)));
    }
    out
}

fn root_paths(inner: &Inner) -> Vec<String> {
    let mut paths = vec![
        "/api".to_string(),
        "/api/v1".into(),
        "/apis".into(),
        "/healthz".into(),
        "/livez".into(),
        "/openapi/v2".into(),
        "/openapi/v3".into(),
        "/readyz".into(),
        "/version".into(),
    ];
    for (g, v) in group_versions(inner)
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
    {
        paths.push(format!("/apis/{g}"));
        paths.push(format!("/apis/{g}/{v}"));
    }
    paths.sort();
    paths.dedup();
    paths
}

fn version() -> Value {
    json!({
        "major": "1", "minor": KUBE_MINOR, "gitVersion": format!("v1.{KUBE_MINOR}.0-virtguard-sim"),
        "gitCommit": "virtguard-sim", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "n/a", "compiler": "virtguard-sim", "platform": "linux/amd64"
    })
}

pub(crate) fn resource_list(inner: &Inner, group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for d in inner
        .reg
        .defs
        .iter()
        .filter(|d| d.group == group && d.versions.contains(&version))
    {
        let verbs = if d.create_only() {
            json!(["create"])
        } else {
            json!([
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch"
            ])
        };
        let mut r = json!({
            "name": d.plural, "singularName": d.singular, "namespaced": d.namespaced, "kind": d.kind,
            "verbs": verbs, "shortNames": d.short_names,
        });
        if !d.categories().is_empty() {
            r["categories"] = json!(d.categories());
        }
        resources.push(r);
        if d.status {
            resources.push(json!({
                "name": format!("{}/status", d.plural), "singularName": "", "namespaced": d.namespaced,
                "kind": d.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn group_list(inner: &Inner) -> Value {
    let mut groups: Vec<Value> = inner
        .reg
        .groups()
        .into_iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0].clone()})
        })
        .collect();
    groups.push(json!({"name": "subresources.kubevirt.io",
        "versions": [{"groupVersion": "subresources.kubevirt.io/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": "subresources.kubevirt.io/v1", "version": "v1"}}));
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}
