//! The simulated cluster driven by a stock kubectl (the PyPI wheel of upstream kubectl, see
//! `common`): what a user types against `quickstart.sh --keep-running` must work as on a
//! real cluster — client-side validation through the OpenAPI documents, explain, apply
//! (client- and server-side, with conflicts), replace, patch, finalizers, watch, raw
//! subresources, `auth can-i`, server dry runs and unknown fields.
#![allow(clippy::unwrap_used)] // test code

mod common;

use std::time::Duration;

use serde_json::{json, Value};
use virtguard_sim::{Sim, SimConfig};

async fn sim() -> Sim {
    Sim::start(SimConfig::default()).await.expect("sim starts")
}

/// A minimal valid KubeVirt VM (stopped, so no controller acts on it).
fn vm(name: &str, labels: Value, extra_spec: Value) -> String {
    let mut v = json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "runStrategy": "Halted",
            "template": {"spec": {
                "domain": {"devices": {}, "resources": {"requests": {"memory": "64Mi"}}},
            }},
        },
    });
    if let (Some(s), Some(e)) = (v["spec"].as_object_mut(), extra_spec.as_object()) {
        s.extend(e.clone());
    }
    serde_json::to_string_pretty(&v).unwrap()
}

fn cm(name: &str, labels: Value) -> String {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
    .to_string()
}

#[tokio::test]
async fn get_and_list_with_label_selectors() {
    let sim = sim().await;
    let k = require_kubectl!(sim.kubeconfig_path());
    for (n, l) in [
        ("a", json!({"app": "db", "tier": "x"})),
        ("b", json!({"app": "web", "tier": "y"})),
        ("c", json!({"app": "db", "tier": "z"})),
    ] {
        k.with_manifest("create", &[], &cm(n, l)).await.ok();
    }
    let names = |r: common::Run| {
        let mut v: Vec<String> = r.stdout.lines().map(str::to_string).collect();
        v.sort();
        v
    };
    let r = k
        .run(&["get", "configmaps", "-l", "app=db", "-o", "name"])
        .await;
    assert_eq!(names(r.ok()), ["configmap/a", "configmap/c"]);
    let r = k
        .run(&["get", "cm", "-l", "app=db,tier notin (z)", "-o", "name"])
        .await;
    assert_eq!(names(r.ok()), ["configmap/a"]);
    // The default table output (no -o) works too and lists the object.
    let r = k.run(&["get", "cm", "b"]).await.ok();
    assert!(r.stdout.contains('b') && r.stdout.contains("NAME"), "{r:?}");
    // `get all` lists the kinds in the `all` category, VMs included.
    k.with_manifest("create", &[], &vm("in-all", json!({}), json!({})))
        .await
        .ok();
    let r = k.run(&["get", "all", "-o", "name"]).await.ok();
    assert!(
        r.stdout.contains("virtualmachine.kubevirt.io/in-all"),
        "{r:?}"
    );
    let r = k.run(&["get", "cm", "nope"]).await.failed();
    let not_found = "Error from server (NotFound): configmaps \"nope\" not found";
    assert!(r.stderr.contains(not_found), "{r:?}");
}

#[tokio::test]
async fn apply_creates_then_reapplies_a_change() {
    let sim = sim().await;
    let k = require_kubectl!(sim.kubeconfig_path());
    let first = vm("vm1", json!({"app": "a"}), json!({}));
    let r = k.with_manifest("apply", &[], &first).await.ok();
    assert!(
        r.stdout.contains("virtualmachine.kubevirt.io/vm1 created"),
        "{r:?}"
    );
    let r = k.with_manifest("apply", &[], &first).await.ok();
    assert!(r.stdout.contains("vm1 unchanged"), "{r:?}");
    let changed = vm("vm1", json!({"app": "b"}), json!({"runStrategy": "Manual"}));
    let r = k.with_manifest("apply", &[], &changed).await.ok();
    assert!(r.stdout.contains("vm1 configured"), "{r:?}");
    let got = k.get_json(&["vm", "vm1"]).await;
    assert_eq!(got["metadata"]["labels"], json!({"app": "b"}));
    assert_eq!(got["spec"]["runStrategy"], "Manual");
    let last = &got["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"];
    assert!(last.is_string(), "{got}");
    // The same for a core kind (kubectl sends a strategic merge patch there).
    k.with_manifest("apply", &[], &cm("c1", json!({"x": "1"})))
        .await
        .ok();
    let r = k
        .with_manifest("apply", &[], &cm("c1", json!({"x": "2"})))
        .await;
    assert!(r.ok().stdout.contains("configmap/c1 configured"));
    let got = k.get_json(&["cm", "c1"]).await;
    assert_eq!(got["metadata"]["labels"], json!({"x": "2"}));
}

#[tokio::test]
async fn server_side_apply_tracks_managers_and_reports_conflicts() {
    let sim = sim().await;
    let k = require_kubectl!(sim.kubeconfig_path());
    let ssa = ["--server-side"];
    let manifest = vm("ssa", json!({"app": "a"}), json!({}));
    let r = k.with_manifest("apply", &ssa, &manifest).await.ok();
    let applied = "virtualmachine.kubevirt.io/ssa serverside-applied";
    assert!(r.stdout.contains(applied), "{r:?}");
    let with_managers = ["vm", "ssa", "--show-managed-fields"];
    let got = k.get_json(&with_managers).await;
    let managers = got["metadata"]["managedFields"].as_array().unwrap();
    assert_eq!(managers.len(), 1, "{managers:?}");
    assert_eq!(managers[0]["manager"], "kubectl");
    assert_eq!(managers[0]["operation"], "Apply");
    let owned = &managers[0]["fieldsV1"]["f:spec"]["f:runStrategy"];
    assert_eq!(owned, &json!({}), "{managers:?}");
    // Re-applying the same manifest changes nothing (a ConfigMap: no controller writes it).
    let c = cm("ssa-cm", json!({"x": "1"}));
    k.with_manifest("apply", &ssa, &c).await.ok();
    let before = k.get_json(&["cm", "ssa-cm"]).await;
    k.with_manifest("apply", &ssa, &c).await.ok();
    let after = k.get_json(&["cm", "ssa-cm"]).await;
    let rv = |v: &Value| v["metadata"]["resourceVersion"].clone();
    assert_eq!(rv(&after), rv(&before));
    // Another manager takes runStrategy with a patch.
    let manual = r#"{"spec":{"runStrategy":"Manual"}}"#;
    k.run(&["patch", "vm", "ssa", "--type", "merge", "-p", manual])
        .await
        .ok();
    // Applying a different value now conflicts, naming the field and its manager.
    let changed = vm("ssa", json!({"app": "a"}), json!({"runStrategy": "Always"}));
    let r = k.with_manifest("apply", &ssa, &changed).await.failed();
    let conflict = "Apply failed with 1 conflict: conflict with \"kubectl-patch\"";
    assert!(r.stderr.contains(conflict), "{r:?}");
    assert!(r.stderr.contains(".spec.runStrategy"), "{r:?}");
    let got = k.get_json(&["vm", "ssa"]).await;
    let strategy = &got["spec"]["runStrategy"];
    assert_eq!(strategy, "Manual", "a rejected apply changed the object");
    // --force-conflicts takes the field over.
    let force = ["--server-side", "--force-conflicts"];
    k.with_manifest("apply", &force, &changed).await.ok();
    let got = k.get_json(&with_managers).await;
    assert_eq!(got["spec"]["runStrategy"], "Always");
    let owners: Vec<&str> = got["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["fieldsV1"]["f:spec"].get("f:runStrategy").is_some())
        .filter_map(|e| e["manager"].as_str())
        .collect();
    assert_eq!(owners, ["kubectl"]);
    // A label dropped from the manifest is removed (this manager alone owned it).
    let fewer = vm("ssa", json!({}), json!({"runStrategy": "Always"}));
    k.with_manifest("apply", &ssa, &fewer).await.ok();
    let got = k.get_json(&["vm", "ssa"]).await;
    let labels = got["metadata"].get("labels");
    assert!(labels.is_none_or(|l| l.get("app").is_none()), "{got}");
    // Moving from client-side to server-side apply takes over what the client-side apply set
    // without a conflict, and keeps the last-applied annotation in step (as kube-apiserver).
    k.with_manifest("apply", &[], &cm("csa", json!({"a": "1"})))
        .await
        .ok();
    let r = k
        .with_manifest("apply", &ssa, &cm("csa", json!({"a": "2"})))
        .await;
    assert!(r.ok().stdout.contains("configmap/csa serverside-applied"));
    let got = k.get_json(&["cm", "csa", "--show-managed-fields"]).await;
    let last = &got["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"];
    let want = "{\"apiVersion\":\"v1\",\"data\":{\"k\":\"v\"},\"kind\":\"ConfigMap\",\"metadata\":{\"labels\":{\"a\":\"2\"},\"name\":\"csa\",\"namespace\":\"default\"}}\n";
    assert_eq!(last, want);
    let mut managers: Vec<String> = got["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["manager"].as_str().unwrap(),
                e["operation"].as_str().unwrap()
            )
        })
        .collect();
    managers.sort();
    assert_eq!(managers, ["kubectl Apply", "kubectl-last-applied Apply"]);
}

#[tokio::test]
async fn create_then_replace_with_a_stale_resource_version_conflicts() {
    let sim = sim().await;
    let k = require_kubectl!(sim.kubeconfig_path());
    let manifest = vm("rep", json!({"v": "1"}), json!({}));
    let r = k.with_manifest("create", &[], &manifest).await.ok();
    assert!(
        r.stdout.contains("virtualmachine.kubevirt.io/rep created"),
        "{r:?}"
    );
    let r = k.with_manifest("create", &[], &manifest).await.failed();
    assert!(r.stderr.contains("(AlreadyExists)"), "{r:?}");
    let stale = k.get_json(&["vm", "rep"]).await;
    k.run(&["label", "vm", "rep", "v=2", "--overwrite"])
        .await
        .ok();
    let mut replace = stale.clone();
    replace["metadata"]["labels"]["v"] = json!("3");
    let r = k.with_manifest("replace", &[], &replace.to_string()).await;
    let r = r.failed();
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("Error from server (Conflict)"), "{r:?}");
    let modified = "the object has been modified; please apply your changes to the latest version and try again";
    assert!(r.stderr.contains(modified), "{r:?}");
    // With the current resourceVersion the replace goes through.
    let current = k.get_json(&["vm", "rep"]).await;
    replace["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
    let r = k.with_manifest("replace", &[], &replace.to_string()).await;
    assert!(r
        .ok()
        .stdout
        .contains("virtualmachine.kubevirt.io/rep replaced"));
    assert_eq!(
        k.get_json(&["vm", "rep"]).await["metadata"]["labels"]["v"],
        "3"
    );
}

#[tokio::test]
async fn patch_merge_and_json() {
    let sim = sim().await;
    let k = require_kubectl!(sim.kubeconfig_path());
    k.with_manifest("create", &[], &vm("p", json!({"a": "1"}), json!({})))
        .await
        .ok();
    let merge = r#"{"metadata":{"labels":{"b":"2"}}}"#;
    let r = k
        .run(&["patch", "vm", "p", "--type", "merge", "-p", merge])
        .await;
    assert!(r
        .ok()
        .stdout
        .contains("virtualmachine.kubevirt.io/p patched"));
    let json_patch = r#"[{"op":"test","path":"/metadata/labels/a","value":"1"},{"op":"replace","path":"/spec/runStrategy","value":"Manual"}]"#;
    let r = k
        .run(&["patch", "vm", "p", "--type", "json", "-p", json_patch])
        .await;
    assert!(r.ok().stdout.contains("patched"));
    let got = k.get_json(&["vm", "p"]).await;
    assert_eq!(got["metadata"]["labels"], json!({"a": "1", "b": "2"}));
    assert_eq!(got["spec"]["runStrategy"], "Manual");
    // A failing `test` changes nothing and says why.
    let failing = r#"[{"op":"test","path":"/metadata/labels/a","value":"9"},{"op":"remove","path":"/metadata/labels/b"}]"#;
    let r = k
        .run(&["patch", "vm", "p", "--type", "json", "-p", failing])
        .await;
    let r = r.failed();
    // kube-apiserver's words for any failed JSON patch operation.
    let invalid =
        "The request is invalid: the server rejected our request due to an error in our request";
    assert!(r.stderr.contains(invalid), "{r:?}");
    assert_eq!(
        k.get_json(&["vm", "p"]).await["metadata"]["labels"]["b"],
        "2"
    );
    // A strategic merge on a custom resource is refused as on a real server.
    let r = k.run(&["patch", "vm", "p", "-p", merge]).await.failed();
    let refused = "application/strategic-merge-patch+json is not supported by kubevirt.io/v1, Kind=VirtualMachine";
    assert!(r.stderr.contains(refused), "{r:?}");
}

#[tokio::test]
async fn delete_of_an_object_with_finalizers_waits_for_them() {
    let sim = sim().await;
    let k = require_kubectl!(sim.kubeconfig_path());
    let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "fin", "finalizers": ["example.com/hold"]}});
    k.with_manifest("create", &[], &obj.to_string()).await.ok();
    let r = k.run(&["delete", "cm", "fin", "--wait=false"]).await.ok();
    assert!(r.stdout.contains("configmap \"fin\" deleted"), "{r:?}");
    let got = k.get_json(&["cm", "fin"]).await;
    assert!(got["metadata"]["deletionTimestamp"].is_string(), "{got}");
    let unblock = r#"[{"op":"remove","path":"/metadata/finalizers"}]"#;
    k.run(&["patch", "cm", "fin", "--type", "json", "-p", unblock])
        .await
        .ok();
    let r = k.run(&["get", "cm", "fin"]).await.failed();
    assert!(r.stderr.contains("NotFound"), "{r:?}");
}

#[tokio::test]
async fn watch_sees_a_change_made_after_the_list() {
    let sim = sim().await;
    let k = require_kubectl!(sim.kubeconfig_path());
    k.with_manifest("create", &[], &cm("w-first", json!({})))
        .await
        .ok();
    let mut watch = k.spawn_lines(&["get", "cm", "-w", "--request-timeout=60s", "-o", "name"]);
    let wait = Duration::from_secs(60);
    // The list is printed first; the watch continues from its resourceVersion, so anything
    // written after this line is seen.
    let first = tokio::time::timeout(wait, watch.until(|l| l.contains("w-first")))
        .await
        .expect("the list within the timeout");
    assert!(first.is_some(), "the initial list was not printed");
    k.with_manifest("create", &[], &cm("w-second", json!({})))
        .await
        .ok();
    let seen = tokio::time::timeout(wait, watch.until(|l| l.contains("w-second")))
        .await
        .expect("the event within the timeout");
    assert_eq!(seen.as_deref(), Some("configmap/w-second"));
    watch.stop().await;
    // --watch-only with a short request timeout ends by itself.
    let r = k
        .run(&[
            "get",
            "cm",
            "--watch-only",
            "--request-timeout=1s",
            "-o",
            "name",
        ])
        .await;
    assert!(!r.stdout.contains("w-first"), "{r:?}");
}

#[tokio::test]
async fn explain_uses_the_served_schemas() {
    let sim = sim().await;
    let k = require_kubectl!(sim.kubeconfig_path());
    let r = k.run(&["explain", "vm.spec.template"]).await.ok();
    for want in [
        "GROUP:      kubevirt.io",
        "KIND:       VirtualMachine",
        "FIELD: template <",
        // The description comes from the KubeVirt reference schema.
        "Template is the direct specification of VirtualMachineInstance",
        "spec\t<",
    ] {
        assert!(r.stdout.contains(want), "{want}: {r:?}");
    }
    // --recursive walks every nested schema (KubeVirt's type lists are served structurally).
    let r = k.run(&["explain", "vm.spec", "--recursive"]).await.ok();
    assert!(r.stdout.contains("runStrategy\t<string>"), "{r:?}");
    let r = k.run(&["explain", "pvc.spec.accessModes"]).await.ok();
    assert!(
        r.stdout.contains("KIND:       PersistentVolumeClaim"),
        "{r:?}"
    );
    assert!(r.stdout.contains("FIELD: accessModes <[]string>"), "{r:?}");
    let r = k.run(&["explain", "volumesnapshot.spec.source"]).await.ok();
    assert!(
        r.stdout.contains("GROUP:      snapshot.storage.k8s.io"),
        "{r:?}"
    );
    let r = k.run(&["explain", "vm.spec.nonsense"]).await.failed();
    assert!(
        r.stderr.contains("field \"nonsense\" does not exist"),
        "{r:?}"
    );
}

#[tokio::test]
async fn get_raw_of_a_subresource() {
    let sim = sim().await;
    let k = require_kubectl!(sim.kubeconfig_path());
    k.with_manifest("create", &[], &vm("raw", json!({}), json!({})))
        .await
        .ok();
    let status = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/raw/status";
    let v = k.run(&["get", "--raw", status]).await.ok().json();
    assert_eq!(v["kind"], "VirtualMachine");
    assert_eq!(v["metadata"]["name"], "raw");
    let index = k.run(&["get", "--raw", "/openapi/v3"]).await.ok().json();
    let url = index["paths"]["apis/kubevirt.io/v1"]["serverRelativeURL"].as_str();
    assert!(url.is_some_and(|u| u.starts_with("/openapi/v3/apis/kubevirt.io/v1?hash=")));
}

#[tokio::test]
async fn auth_can_i_answers_yes_for_the_sim_token() {
    let sim = sim().await;
    let k = require_kubectl!(sim.kubeconfig_path());
    let r = k.run(&["auth", "can-i", "create", "virtualmachines"]).await;
    assert_eq!(r.ok().stdout.trim(), "yes");
    let r = k
        .run(&["auth", "can-i", "delete", "pvc", "-n", "default"])
        .await;
    assert_eq!(r.ok().stdout.trim(), "yes");
    let r = k.run(&["auth", "can-i", "--list"]).await.ok();
    assert!(r.stdout.contains("*.*"), "{r:?}");
}

#[tokio::test]
async fn unknown_fields_get_kubectls_error_or_warning() {
    let sim = sim().await;
    let k = require_kubectl!(sim.kubeconfig_path());
    let bad = vm("unk", json!({}), json!({"bogus": 1}));
    let unknown = "unknown field \"spec.bogus\"";
    // kubectl's default (--validate=strict): the server refuses the unknown field.
    let r = k.with_manifest("apply", &[], &bad).await.failed();
    assert!(
        r.stderr
            .contains(&format!("strict decoding error: {unknown}")),
        "{r:?}"
    );
    let vm_of = |name| sim.object("kubevirt.io", "virtualmachines", "default", name);
    assert!(vm_of("unk").is_none());
    let r = k.with_manifest("create", &[], &bad).await.failed();
    assert!(r.stderr.contains(unknown), "{r:?}");
    // --validate=warn: created without the field, with the server's warning.
    let r = k.with_manifest("create", &["--validate=warn"], &bad).await;
    let r = r.ok();
    assert!(r.stderr.contains(&format!("Warning: {unknown}")), "{r:?}");
    assert!(vm_of("unk").unwrap()["spec"].get("bogus").is_none());
    // A `kind: List` is validated by kubectl itself against the protobuf v2 models.
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "l1"}, "bogus": 1},
        serde_json::from_str::<Value>(&vm("l2", json!({}), json!({"nope": 1}))).unwrap(),
    ]});
    let r = k
        .with_manifest("apply", &[], &list.to_string())
        .await
        .failed();
    for want in [
        "ValidationError(ConfigMap): unknown field \"bogus\" in io.k8s.api.core.v1.ConfigMap",
        "ValidationError(VirtualMachine.spec): unknown field \"nope\" in io.kubevirt.v1.VirtualMachineSpec",
    ] {
        assert!(r.stderr.contains(want), "{want}: {r:?}");
    }
    let good = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "l1"}},
    ]});
    let r = k.with_manifest("apply", &[], &good.to_string()).await.ok();
    assert!(r.stdout.contains("configmap/l1 created"), "{r:?}");
    // Server-side apply cannot type the configuration (kube-apiserver's 500, no reason).
    let bad2 = vm("unk2", json!({}), json!({"bogus": 1}));
    let r = k.with_manifest("apply", &["--server-side"], &bad2).await;
    let said = "Error from server: failed to create typed patch object (default/unk2; kubevirt.io/v1, Kind=VirtualMachine): .spec.bogus: field not declared in schema";
    let r = r.failed();
    assert!(r.stderr.contains(said), "{r:?}");
    assert!(vm_of("unk2").is_none());
}

#[tokio::test]
async fn server_dry_run_creates_nothing() {
    let sim = sim().await;
    let k = require_kubectl!(sim.kubeconfig_path());
    let dry = ["--dry-run=server"];
    let manifest = vm("dry", json!({}), json!({}));
    let r = k.with_manifest("apply", &dry, &manifest).await.ok();
    let said = "virtualmachine.kubevirt.io/dry created (server dry run)";
    assert!(r.stdout.contains(said), "{r:?}");
    let ssa_dry = ["--server-side", "--dry-run=server"];
    let r = k.with_manifest("apply", &ssa_dry, &manifest).await.ok();
    assert!(r.stdout.contains("(server dry run)"), "{r:?}");
    let as_json = ["--dry-run=server", "-o", "json"];
    let drycm = cm("drycm", json!({}));
    let r = k.with_manifest("create", &as_json, &drycm).await.ok();
    assert_eq!(r.json()["metadata"]["name"], "drycm");
    assert!(sim
        .object("kubevirt.io", "virtualmachines", "default", "dry")
        .is_none());
    assert!(sim.object("", "configmaps", "default", "drycm").is_none());
    k.run(&["get", "vm", "dry"]).await.failed();
}

#[tokio::test]
async fn imperative_creates_send_protobuf_and_work() {
    let sim = sim().await;
    let k = require_kubectl!(sim.kubeconfig_path());
    let r = k.run(&["create", "namespace", "imp"]).await.ok();
    assert!(r.stdout.contains("namespace/imp created"), "{r:?}");
    let literals = ["--from-literal=a=b", "--from-literal=x=y"];
    let mut args = vec!["create", "configmap", "c", "-n", "imp"];
    args.extend(literals);
    assert!(k
        .run(&args)
        .await
        .ok()
        .stdout
        .contains("configmap/c created"));
    let secret = [
        "create",
        "secret",
        "generic",
        "s",
        "-n",
        "imp",
        "--from-literal=pw=secret",
        "--type=example.com/t",
    ];
    assert!(k
        .run(&secret)
        .await
        .ok()
        .stdout
        .contains("secret/s created"));
    assert!(sim.object("", "namespaces", "", "imp").is_some());
    let c = sim.object("", "configmaps", "imp", "c").unwrap();
    assert_eq!(c["data"], json!({"a": "b", "x": "y"}));
    let s = sim.object("", "secrets", "imp", "s").unwrap();
    assert_eq!(s["data"], json!({"pw": "c2VjcmV0"}));
    assert_eq!(s["type"], "example.com/t");
}
