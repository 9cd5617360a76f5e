//! The deploy bundle (`deploy/`, one kustomization) rendered and validated without a cluster:
//!
//! - rendering follows what `kubectl apply -k deploy/` does with the features the bundle uses:
//!   `resources` (files and directories with their own kustomization), `namespace` (set on
//!   namespaced objects and on ServiceAccount subjects of bindings), the builtin
//!   `NamespaceTransformer` with `unsetOnly: true` (the same, only where no namespace is set: the
//!   drill sandbox's objects keep theirs) and `images` (name → newName:newTag);
//! - every core object is decoded into its k8s-openapi type (required fields present, types right)
//!   and encoded back: a field that does not survive the round trip is not a field of that type;
//! - every RBAC rule names an API group/resource that exists: the Kubernetes ones from
//!   k8s-openapi's types, the KubeVirt/CDI/CSI-snapshot ones from the paths of the reference
//!   OpenAPI documents and CRDs in reference/ (subresources included);
//! - cross references resolve: service accounts, role refs, Secrets used by pods, Service
//!   selectors matching a workload's pod labels, the ServiceMonitor's port;
//! - the prometheus-operator kinds (ServiceMonitor, PrometheusRule: not in the references) are
//!   held to the fields prometheus-operator documents for what the bundle uses.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use k8s_openapi::api::{apps, batch, coordination, core, networking, rbac, storage};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use virtguard_e2e::workspace_root;

/// Renders the kustomization in `dir`.
fn render(dir: &Path) -> Vec<Value> {
    let k: Value = serde_yaml::from_str(
        &std::fs::read_to_string(dir.join("kustomization.yaml"))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display())),
    )
    .unwrap();
    let mut out = Vec::new();
    for r in k["resources"].as_array().expect("resources") {
        let p = dir.join(r.as_str().unwrap());
        if p.is_dir() {
            out.extend(render(&p));
        } else {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                if !v.is_null() {
                    out.push(v);
                }
            }
        }
    }
    let images: BTreeMap<String, String> = k["images"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_string(),
                format!(
                    "{}:{}",
                    i["newName"].as_str().unwrap(),
                    i["newTag"].as_str().unwrap()
                ),
            )
        })
        .collect();
    let (ns, unset_only) = namespace_of(&k);
    for o in &mut out {
        if let Some(ns) = ns.as_deref() {
            let set = |v: &mut Value| {
                if !unset_only || v.get("namespace").is_none_or(Value::is_null) {
                    v["namespace"] = ns.into();
                }
            };
            if !CLUSTER_SCOPED.contains(&o["kind"].as_str().unwrap_or("")) {
                set(&mut o["metadata"]);
            }
            let subjects = o.get_mut("subjects").and_then(Value::as_array_mut);
            for s in subjects.into_iter().flatten() {
                if s["kind"] == "ServiceAccount" {
                    set(s);
                }
            }
        }
        for c in containers_mut(o) {
            if let Some(new) = c["image"].as_str().and_then(|i| images.get(i)) {
                c["image"] = new.clone().into();
            }
        }
    }
    out
}

use serde::Deserialize as _;

/// The namespace a kustomization sets, and whether only where none is set: its `namespace:`
/// (sets all), or an inline builtin `NamespaceTransformer` among its `transformers`.
fn namespace_of(k: &Value) -> (Option<String>, bool) {
    if let Some(ns) = k["namespace"].as_str() {
        return (Some(ns.to_string()), false);
    }
    let transformers: Vec<Value> = k["transformers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| serde_yaml::from_str(t.as_str().expect("inline transformer")).unwrap())
        .collect();
    match transformers.as_slice() {
        [] => (None, false),
        [t] if t["apiVersion"] == "builtin" && t["kind"] == "NamespaceTransformer" => {
            let ns = t["metadata"]["namespace"].as_str().expect("its namespace");
            (Some(ns.to_string()), t["unsetOnly"] == true)
        }
        other => panic!("transformers {other:?} are not modelled by this renderer"),
    }
}

/// The namespace `virtguard drill` restores its copies into (deploy/drill).
const DRILL_SANDBOX: &str = "virtguard-drills";

const CLUSTER_SCOPED: &[&str] = &["Namespace", "ClusterRole", "ClusterRoleBinding"];

fn pod_spec(o: &Value) -> Option<&Value> {
    match o["kind"].as_str()? {
        "CronJob" => o.pointer("/spec/jobTemplate/spec/template/spec"),
        "Deployment" | "DaemonSet" | "Job" => o.pointer("/spec/template/spec"),
        _ => None,
    }
}

fn containers_mut(o: &mut Value) -> Vec<&mut Value> {
    let ptr = match o["kind"].as_str() {
        Some("CronJob") => "/spec/jobTemplate/spec/template/spec/containers",
        Some("Deployment" | "DaemonSet" | "Job") => "/spec/template/spec/containers",
        _ => return Vec::new(),
    };
    o.pointer_mut(ptr)
        .and_then(Value::as_array_mut)
        .map(|a| a.iter_mut().collect())
        .unwrap_or_default()
}

/// Paths of `v` (objects' keys, array items as `[]`) that are missing from `back`.
fn lost_fields(v: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (v, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, av) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(bv) => lost_fields(av, bv, &p, out),
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, av) in a.iter().enumerate() {
                match b.get(i) {
                    Some(bv) => lost_fields(av, bv, &format!("{path}[{i}]"), out),
                    None => out.push(format!("{path}[{i}]")),
                }
            }
        }
        _ => {}
    }
}

/// Decodes `o` as `K` and checks nothing is lost on the way back.
fn check_typed<K: DeserializeOwned + Serialize>(o: &Value) -> Result<(), String> {
    let k: K = serde_json::from_value(o.clone()).map_err(|e| format!("does not decode: {e}"))?;
    let back = serde_json::to_value(&k).unwrap();
    let mut lost = Vec::new();
    lost_fields(o, &back, "", &mut lost);
    if !lost.is_empty() {
        return Err(format!("fields that are not part of the type: {lost:?}"));
    }
    // k8s-openapi fills a missing required field with its default and always writes it back
    // (optional ones are skipped when absent): what appears only on the way back was required.
    let mut missing = Vec::new();
    lost_fields(&back, o, "", &mut missing);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("required fields missing: {missing:?}"))
    }
}

fn check_core(o: &Value) -> Result<(), String> {
    match (
        o["apiVersion"].as_str().unwrap_or(""),
        o["kind"].as_str().unwrap_or(""),
    ) {
        ("v1", "Namespace") => check_typed::<core::v1::Namespace>(o),
        ("v1", "ServiceAccount") => check_typed::<core::v1::ServiceAccount>(o),
        ("v1", "Service") => check_typed::<core::v1::Service>(o),
        ("v1", "Secret") => check_typed::<core::v1::Secret>(o),
        ("v1", "ConfigMap") => check_typed::<core::v1::ConfigMap>(o),
        ("apps/v1", "DaemonSet") => check_typed::<apps::v1::DaemonSet>(o),
        ("apps/v1", "Deployment") => check_typed::<apps::v1::Deployment>(o),
        ("batch/v1", "CronJob") => check_typed::<batch::v1::CronJob>(o),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => check_typed::<rbac::v1::ClusterRole>(o),
        ("rbac.authorization.k8s.io/v1", "Role") => check_typed::<rbac::v1::Role>(o),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            check_typed::<rbac::v1::ClusterRoleBinding>(o)
        }
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => check_typed::<rbac::v1::RoleBinding>(o),
        ("monitoring.coreos.com/v1", "ServiceMonitor") => check_service_monitor(o),
        ("monitoring.coreos.com/v1", "PrometheusRule") => check_prometheus_rule(o),
        (v, k) => Err(format!("no schema known for {v} {k}")),
    }
}

fn only_keys(v: &Value, allowed: &[&str], path: &str) -> Result<(), String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{path} is not an object"))?;
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(format!(
                "{path}.{k} is not a field prometheus-operator knows here"
            ));
        }
    }
    Ok(())
}

fn check_meta(o: &Value) -> Result<(), String> {
    let m: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta =
        serde_json::from_value(o["metadata"].clone()).map_err(|e| format!("metadata: {e}"))?;
    m.name.ok_or("metadata.name is required")?;
    only_keys(o, &["apiVersion", "kind", "metadata", "spec"], "")
}

fn check_service_monitor(o: &Value) -> Result<(), String> {
    check_meta(o)?;
    let spec = &o["spec"];
    only_keys(
        spec,
        &["selector", "endpoints", "namespaceSelector", "jobLabel"],
        ".spec",
    )?;
    let _: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
        serde_json::from_value(spec["selector"].clone())
            .map_err(|e| format!(".spec.selector: {e}"))?;
    let eps = spec["endpoints"]
        .as_array()
        .ok_or(".spec.endpoints is required")?;
    for (i, e) in eps.iter().enumerate() {
        only_keys(
            e,
            &[
                "port",
                "path",
                "scheme",
                "interval",
                "scrapeTimeout",
                "honorLabels",
                "tlsConfig",
                "relabelings",
                "metricRelabelings",
                "bearerTokenSecret",
                "authorization",
            ],
            &format!(".spec.endpoints[{i}]"),
        )?;
    }
    Ok(())
}

fn check_prometheus_rule(o: &Value) -> Result<(), String> {
    check_meta(o)?;
    only_keys(&o["spec"], &["groups"], ".spec")?;
    for (i, g) in o["spec"]["groups"]
        .as_array()
        .ok_or(".spec.groups is required")?
        .iter()
        .enumerate()
    {
        only_keys(
            g,
            &[
                "name",
                "interval",
                "rules",
                "limit",
                "partial_response_strategy",
            ],
            &format!(".spec.groups[{i}]"),
        )?;
        g["name"]
            .as_str()
            .ok_or(format!(".spec.groups[{i}].name is required"))?;
        for (j, r) in g["rules"]
            .as_array()
            .ok_or("rules is required")?
            .iter()
            .enumerate()
        {
            let p = format!(".spec.groups[{i}].rules[{j}]");
            only_keys(
                r,
                &[
                    "alert",
                    "record",
                    "expr",
                    "for",
                    "keep_firing_for",
                    "labels",
                    "annotations",
                ],
                &p,
            )?;
            if r["expr"].as_str().is_none() || (r["alert"].is_null() == r["record"].is_null()) {
                return Err(format!("{p}: needs expr and exactly one of alert/record"));
            }
        }
    }
    Ok(())
}

/// `(group, resource)` pairs that exist: Kubernetes kinds from k8s-openapi, the rest from the
/// reference OpenAPI paths and CRDs.
fn known_resources() -> BTreeSet<(String, String)> {
    use k8s_openapi::Resource;
    fn add<K: Resource>(s: &mut BTreeSet<(String, String)>) {
        s.insert((K::GROUP.to_string(), K::URL_PATH_SEGMENT.to_string()));
    }
    let mut s = BTreeSet::new();
    add::<core::v1::PersistentVolumeClaim>(&mut s);
    add::<core::v1::PersistentVolume>(&mut s);
    add::<core::v1::Secret>(&mut s);
    add::<core::v1::ConfigMap>(&mut s);
    add::<core::v1::Namespace>(&mut s);
    add::<core::v1::Pod>(&mut s);
    add::<core::v1::Service>(&mut s);
    add::<core::v1::Event>(&mut s);
    add::<core::v1::Node>(&mut s);
    add::<networking::v1::NetworkPolicy>(&mut s);
    add::<batch::v1::Job>(&mut s);
    add::<batch::v1::CronJob>(&mut s);
    add::<coordination::v1::Lease>(&mut s);
    add::<storage::v1::StorageClass>(&mut s);
    s.insert(("".into(), "pods/log".into()));
    // Named by the reference itself (VirtualMachineBackupSpec.source: "either a VirtualMachine or
    // a VirtualMachineBackupTracker") though its schema is not included there.
    s.insert((
        "backup.kubevirt.io".into(),
        "virtualmachinebackuptrackers".into(),
    ));
    let reference = workspace_root().join("reference");
    for f in ["kubevirt-openapi.json", "cdi-openapi.json"] {
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(reference.join(f)).unwrap()).unwrap();
        for path in doc["paths"].as_object().unwrap().keys() {
            // /apis/{group}/{version}/[namespaces/{namespace}/]{resource}[/{name}[/{sub}]]
            let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            if parts.first() != Some(&"apis") || parts.len() < 4 {
                continue;
            }
            let group = parts[1];
            let mut rest = &parts[3..];
            if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
                rest = &rest[2..];
            }
            match rest {
                [res] => {
                    s.insert((group.into(), res.to_string()));
                }
                [res, _, sub] => {
                    s.insert((group.into(), format!("{res}/{sub}")));
                }
                _ => {}
            }
        }
    }
    for e in std::fs::read_dir(reference.join("snapshot-crds")).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let crd = Value::deserialize(doc).unwrap();
            if let (Some(g), Some(p)) = (
                crd.pointer("/spec/group"),
                crd.pointer("/spec/names/plural"),
            ) {
                s.insert((g.as_str().unwrap().into(), p.as_str().unwrap().into()));
                s.insert((
                    g.as_str().unwrap().into(),
                    format!("{}/status", p.as_str().unwrap()),
                ));
            }
        }
    }
    s
}

const VERBS: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

#[test]
fn the_bundle_renders_and_every_object_is_valid() {
    let objects = render(&workspace_root().join("deploy"));
    let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    for want in [
        "DaemonSet",
        "Deployment",
        "ServiceMonitor",
        "PrometheusRule",
        "CronJob",
        "ClusterRole",
        "ClusterRoleBinding",
        "ServiceAccount",
        "Secret",
        "Service",
        "Namespace",
        "Role",
        "RoleBinding",
    ] {
        assert!(kinds.contains(want), "the bundle has no {want}: {kinds:?}");
    }
    let mut errors = Vec::new();
    for o in &objects {
        let id = format!(
            "{} {}",
            o["kind"].as_str().unwrap_or("?"),
            o["metadata"]["name"].as_str().unwrap_or("?")
        );
        if let Err(e) = check_core(o) {
            errors.push(format!("{id}: {e}"));
        }
        // Everything in namespace virtguard, except the drill's rights in its sandbox.
        let want = match (o["kind"].as_str(), o["metadata"]["name"].as_str()) {
            (Some("Role" | "RoleBinding"), Some("virtguard-drill")) => DRILL_SANDBOX,
            _ => "virtguard",
        };
        if !CLUSTER_SCOPED.contains(&o["kind"].as_str().unwrap_or(""))
            && o["metadata"]["namespace"] != want
        {
            errors.push(format!(
                "{id}: in namespace {} (expected {want})",
                o["metadata"]["namespace"]
            ));
        }
    }
    // The sandbox is installed under its own name (a plain `namespace:` renames it).
    let namespaces: BTreeSet<&str> = objects
        .iter()
        .filter(|o| o["kind"] == "Namespace")
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    assert_eq!(
        namespaces,
        BTreeSet::from(["virtguard", DRILL_SANDBOX]),
        "the bundle's Namespaces"
    );
    assert!(
        errors.is_empty(),
        "invalid objects:\n  {}",
        errors.join("\n  ")
    );
}

#[test]
fn rbac_names_only_real_resources_and_verbs() {
    let known = known_resources();
    let mut errors = Vec::new();
    for o in render(&workspace_root().join("deploy")) {
        if !matches!(o["kind"].as_str(), Some("ClusterRole" | "Role")) {
            continue;
        }
        let name = o["metadata"]["name"].as_str().unwrap().to_string();
        for r in o["rules"].as_array().unwrap() {
            for g in r["apiGroups"].as_array().unwrap() {
                for res in r["resources"].as_array().unwrap() {
                    let key = (
                        g.as_str().unwrap().to_string(),
                        res.as_str().unwrap().to_string(),
                    );
                    if !known.contains(&key) {
                        errors.push(format!(
                            "{name}: no resource {:?} in API group {:?}",
                            key.1, key.0
                        ));
                    }
                }
            }
            for v in r["verbs"].as_array().unwrap() {
                if !VERBS.contains(&v.as_str().unwrap()) {
                    errors.push(format!(
                        "{name}: verb {v} (use specific verbs, no wildcards)"
                    ));
                }
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    // The check itself catches a wrong name.
    assert!(!known.contains(&("kubevirt.io".into(), "virtualmachineinstance".into())));
    assert!(known.contains(&(
        "subresources.kubevirt.io".into(),
        "virtualmachineinstances/freeze".into()
    )));
}

#[test]
fn cross_references_resolve() {
    let objects = render(&workspace_root().join("deploy"));
    let names = |kind: &str| -> BTreeSet<String> {
        objects
            .iter()
            .filter(|o| o["kind"] == kind)
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (sas, secrets, croles) = (
        names("ServiceAccount"),
        names("Secret"),
        names("ClusterRole"),
    );
    // A RoleBinding's Role is the one of its own namespace.
    let roles: BTreeSet<(String, String)> = objects
        .iter()
        .filter(|o| o["kind"] == "Role")
        .map(|o| {
            (
                o["metadata"]["namespace"].as_str().unwrap().to_string(),
                o["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut errors = Vec::new();
    for o in &objects {
        let id = format!(
            "{} {}",
            o["kind"].as_str().unwrap(),
            o["metadata"]["name"].as_str().unwrap()
        );
        if let Some(spec) = pod_spec(o) {
            if let Some(sa) = spec["serviceAccountName"].as_str() {
                if !sas.contains(sa) {
                    errors.push(format!("{id}: service account {sa} is not in the bundle"));
                }
            }
            for c in spec["containers"].as_array().unwrap() {
                let img = c["image"].as_str().unwrap_or("");
                if !img.contains('/') || !img.contains(':') {
                    errors.push(format!(
                        "{id}: image {img:?} is not a full reference (images: transformer)"
                    ));
                }
                for e in c["envFrom"].as_array().into_iter().flatten() {
                    if let Some(s) = e.pointer("/secretRef/name").and_then(Value::as_str) {
                        if !secrets.contains(s) {
                            errors.push(format!("{id}: envFrom Secret {s} is not in the bundle"));
                        }
                    }
                }
            }
        }
        if let Some(rr) = o.get("roleRef") {
            let n = rr["name"].as_str().unwrap();
            let ok = match rr["kind"].as_str() {
                Some("Role") => roles.contains(&(
                    o["metadata"]["namespace"].as_str().unwrap().to_string(),
                    n.to_string(),
                )),
                Some("ClusterRole") => croles.contains(n),
                _ => false,
            };
            if !ok {
                errors.push(format!("{id}: roleRef {rr} is not in the bundle"));
            }
            for s in o["subjects"].as_array().unwrap() {
                // By namespace too: a binding in the sandbox names the account in virtguard.
                let account = (s["namespace"].as_str(), s["name"].as_str());
                let exists = objects.iter().any(|sa| {
                    sa["kind"] == "ServiceAccount"
                        && (
                            sa["metadata"]["namespace"].as_str(),
                            sa["metadata"]["name"].as_str(),
                        ) == account
                });
                if s["kind"] == "ServiceAccount" && !exists {
                    errors.push(format!("{id}: subject {s} is not in the bundle"));
                }
            }
        }
        if o["kind"] == "Service" {
            let sel = o
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .unwrap();
            let matched = objects.iter().any(|w| {
                pod_spec(w).is_some()
                    && w.pointer("/spec/template/metadata/labels")
                        .and_then(Value::as_object)
                        .is_some_and(|l| sel.iter().all(|(k, v)| l.get(k) == Some(v)))
            });
            if !matched {
                errors.push(format!("{id}: selector {sel:?} matches no workload"));
            }
        }
    }
    for sm in objects.iter().filter(|o| o["kind"] == "ServiceMonitor") {
        for ep in sm["spec"]["endpoints"].as_array().unwrap() {
            let port = ep["port"].as_str().unwrap();
            let has = objects.iter().any(|s| {
                s["kind"] == "Service"
                    && s["spec"]["ports"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["name"] == port)
            });
            if !has {
                errors.push(format!("ServiceMonitor: no Service port named {port}"));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn the_checks_catch_invented_and_missing_fields() {
    let bad: Value = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}},
                 "template": {"spec": {"containers": [{"name": "c", "image": "i", "cpuLimit": 2}]}}}
    });
    let e = check_core(&bad).unwrap_err();
    assert!(e.contains("cpuLimit"), "{e}");
    let missing: Value = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}
    });
    let e = check_core(&missing).unwrap_err();
    assert!(e.contains(".spec.selector") && !e.contains("image"), "{e}");
    let sm: Value = serde_json::json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": {"name": "x"}, "spec": {"selector": {}, "endpoints": [{"port": "m", "intervall": "1s"}]}});
    assert!(check_core(&sm).unwrap_err().contains("intervall"));
}
