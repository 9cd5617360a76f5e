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
        k.run_stdin(&["create", "-f", "-"], &cm(n, l)).await.ok();
    }
    let names = |r: common::Run| {
        let mut v: Vec<String> = r.stdout.lines().map(str::to_string).collect();
        v.sort();
        v
    };
    let r = k
        .run(&["get", "configmaps", "-l", "app=db", "-o", "name"])
        .await
        .ok();
    assert_eq!(names(r), ["configmap/a", "configmap/c"]);
    let r = k
        .run(&["get", "cm", "-l", "app=db,tier notin (z)", "-o", "name"])
        .await
        .ok();
    assert_eq!(names(r), ["configmap/a"]);
    // The default table output (no -o) works too and lists the object.
    let r = k.run(&["get", "cm", "b"]).await.ok();
    assert!(r.stdout.contains('b') && r.stdout.contains("NAME"), "{r:?}");
    // `get all` lists the kinds in the `all` category, VMs included.
    k.run_stdin(&["create", "-f", "-"], &vm("in-all", json!({}), json!({})))
        .await
        .ok();
    let r = k.run(&["get", "all", "-o", "name"]).await.ok();
    assert!(
        r.stdout.contains("virtualmachine.kubevirt.io/in-all"),
        "{r:?}"
    );
    let r = k.run(&["get", "cm", "nope"]).await.failed();
    assert!(
        r.stderr
            .contains("Error from server (NotFound): configmaps \"nope\" not found"),
        "{r:?}"
    );
}

#[tokio::test]
async fn apply_creates_then_reapplies_a_change() {
    let sim = sim().await;
    let k = require_kubectl!(sim.kubeconfig_path());
    let r = k
        .run_stdin(
            &["apply", "-f", "-"],
            &vm("vm1", json!({"app": "a"}), json!({})),
        )
        .await
        .ok();
    assert!(
        r.stdout.contains("virtualmachine.kubevirt.io/vm1 created"),
        "{r:?}"
    );
    let r = k
        .run_stdin(
            &["apply", "-f", "-"],
            &vm("vm1", json!({"app": "a"}), json!({})),
        )
        .await
        .ok();
    assert!(r.stdout.contains("vm1 unchanged"), "{r:?}");
    let r = k
        .run_stdin(
            &["apply", "-f", "-"],
            &vm("vm1", json!({"app": "b"}), json!({"runStrategy": "Manual"})),
        )
        .await
        .ok();
    assert!(r.stdout.contains("vm1 configured"), "{r:?}");
    let got = k.run(&["get", "vm", "vm1", "-o", "json"]).await.ok().json();
    assert_eq!(got["metadata"]["labels"], json!({"app": "b"}));
    assert_eq!(got["spec"]["runStrategy"], "Manual");
    assert!(
        got["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );
    // The same for a core kind (kubectl sends a strategic merge patch there).
    k.run_stdin(&["apply", "-f", "-"], &cm("c1", json!({"x": "1"})))
        .await
        .ok();
    let r = k
        .run_stdin(&["apply", "-f", "-"], &cm("c1", json!({"x": "2"})))
        .await
        .ok();
    assert!(r.stdout.contains("configmap/c1 configured"), "{r:?}");
    let got = k.run(&["get", "cm", "c1", "-o", "json"]).await.ok().json();
    assert_eq!(got["metadata"]["labels"], json!({"x": "2"}));
}

#[tokio::test]
async fn server_side_apply_tracks_managers_and_reports_conflicts() {
    let sim = sim().await;
    let k = require_kubectl!(sim.kubeconfig_path());
    let manifest = vm("ssa", json!({"app": "a"}), json!({}));
    let r = k
        .run_stdin(&["apply", "--server-side", "-f", "-"], &manifest)
        .await
        .ok();
    assert!(
        r.stdout
            .contains("virtualmachine.kubevirt.io/ssa serverside-applied"),
        "{r:?}"
    );
    let ssa_json = ["get", "vm", "ssa", "-o", "json", "--show-managed-fields"];
    let got = k.run(&ssa_json).await.ok().json();
    let managers: Vec<&Value> = got["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(managers.len(), 1, "{managers:?}");
    assert_eq!(managers[0]["manager"], "kubectl");
    assert_eq!(managers[0]["operation"], "Apply");
    assert_eq!(
        managers[0]["fieldsV1"]["f:spec"]["f:runStrategy"],
        json!({}),
        "{managers:?}"
    );
    // Re-applying the same manifest changes nothing (a ConfigMap: no controller writes it).
    let c = cm("ssa-cm", json!({"x": "1"}));
    k.run_stdin(&["apply", "--server-side", "-f", "-"], &c)
        .await
        .ok();
    let before = k
        .run(&["get", "cm", "ssa-cm", "-o", "json"])
        .await
        .ok()
        .json();
    k.run_stdin(&["apply", "--server-side", "-f", "-"], &c)
        .await
        .ok();
    let after = k
        .run(&["get", "cm", "ssa-cm", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
    // Another manager takes runStrategy with a patch.
    k.run(&[
        "patch",
        "vm",
        "ssa",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"runStrategy":"Manual"}}"#,
    ])
    .await
    .ok();
    // Applying a different value now conflicts, naming the field and its manager.
    let changed = vm("ssa", json!({"app": "a"}), json!({"runStrategy": "Always"}));
    let r = k
        .run_stdin(&["apply", "--server-side", "-f", "-"], &changed)
        .await
        .failed();
    assert!(
        r.stderr
            .contains("Apply failed with 1 conflict: conflict with \"kubectl-patch\"")
            && r.stderr.contains(".spec.runStrategy"),
        "{r:?}"
    );
    let got = k.run(&["get", "vm", "ssa", "-o", "json"]).await.ok().json();
    assert_eq!(
        got["spec"]["runStrategy"], "Manual",
        "a rejected apply changed the object"
    );
    // --force-conflicts takes the field over.
    k.run_stdin(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        &changed,
    )
    .await
    .ok();
    let got = k.run(&ssa_json).await.ok().json();
    assert_eq!(got["spec"]["runStrategy"], "Always");
    let owners: Vec<String> = got["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["fieldsV1"]["f:spec"].get("f:runStrategy").is_some())
        .map(|e| e["manager"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(owners, ["kubectl"]);
    // A label dropped from the manifest is removed (this manager alone owned it).
    let fewer = vm("ssa", json!({}), json!({"runStrategy": "Always"}));
    k.run_stdin(&["apply", "--server-side", "-f", "-"], &fewer)
        .await
        .ok();
    let got = k.run(&["get", "vm", "ssa", "-o", "json"]).await.ok().json();
    assert!(
        got["metadata"]
            .get("labels")
            .is_none_or(|l| l.get("app").is_none()),
        "{got}"
    );
}

#[tokio::test]
async fn create_then_replace_with_a_stale_resource_version_conflicts() {
    let sim = sim().await;
    let k = require_kubectl!(sim.kubeconfig_path());
    let r = k
        .run_stdin(
            &["create", "-f", "-"],
            &vm("rep", json!({"v": "1"}), json!({})),
        )
        .await
        .ok();
    assert!(
        r.stdout.contains("virtualmachine.kubevirt.io/rep created"),
        "{r:?}"
    );
    let r = k
        .run_stdin(
            &["create", "-f", "-"],
            &vm("rep", json!({"v": "1"}), json!({})),
        )
        .await
        .failed();
    assert!(r.stderr.contains("(AlreadyExists)"), "{r:?}");
    let stale = k.run(&["get", "vm", "rep", "-o", "json"]).await.ok().json();
    k.run(&["label", "vm", "rep", "v=2", "--overwrite"])
        .await
        .ok();
    let mut replace = stale.clone();
    replace["metadata"]["labels"]["v"] = json!("3");
    let r = k
        .run_stdin(&["replace", "-f", "-"], &replace.to_string())
        .await
        .failed();
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("Error from server (Conflict)")
            && r.stderr.contains(
                "the object has been modified; please apply your changes to the latest version and try again"
            ),
        "{r:?}"
    );
    // Without a resourceVersion the replace goes through.
    replace["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    let current = k.run(&["get", "vm", "rep", "-o", "json"]).await.ok().json();
    replace["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
    let r = k
        .run_stdin(&["replace", "-f", "-"], &replace.to_string())
        .await
        .ok();
    assert!(
        r.stdout.contains("virtualmachine.kubevirt.io/rep replaced"),
        "{r:?}"
    );
}

#[tokio::test]
async fn patch_merge_and_json() {
    let sim = sim().await;
    let k = require_kubectl!(sim.kubeconfig_path());
    k.run_stdin(
        &["create", "-f", "-"],
        &vm("p", json!({"a": "1"}), json!({})),
    )
    .await
    .ok();
    let r = k
        .run(&[
            "patch",
            "vm",
            "p",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"labels":{"b":"2"}}}"#,
        ])
        .await
        .ok();
    assert!(
        r.stdout.contains("virtualmachine.kubevirt.io/p patched"),
        "{r:?}"
    );
    let r = k
        .run(&[
            "patch",
            "vm",
            "p",
            "--type",
            "json",
            "-p",
            r#"[{"op":"test","path":"/metadata/labels/a","value":"1"},{"op":"replace","path":"/spec/runStrategy","value":"Manual"}]"#,
        ])
        .await
        .ok();
    assert!(r.stdout.contains("patched"), "{r:?}");
    let got = k.run(&["get", "vm", "p", "-o", "json"]).await.ok().json();
    assert_eq!(got["metadata"]["labels"], json!({"a": "1", "b": "2"}));
    assert_eq!(got["spec"]["runStrategy"], "Manual");
    // A failing `test` changes nothing and says why.
    let r = k
        .run(&[
            "patch",
            "vm",
            "p",
            "--type",
            "json",
            "-p",
            r#"[{"op":"test","path":"/metadata/labels/a","value":"9"},{"op":"remove","path":"/metadata/labels/b"}]"#,
        ])
        .await
        .failed();
    assert!(
        r.stderr.contains("The request is invalid") && r.stderr.contains("/metadata/labels/a"),
        "{r:?}"
    );
    let got = k.run(&["get", "vm", "p", "-o", "json"]).await.ok().json();
    assert_eq!(got["metadata"]["labels"]["b"], "2");
    // A strategic merge on a custom resource is refused as on a real server.
    let r = k
        .run(&[
            "patch",
            "vm",
            "p",
            "-p",
            r#"{"metadata":{"labels":{"c":"3"}}}"#,
        ])
        .await
        .failed();
    assert!(
        r.stderr.contains(
            "application/strategic-merge-patch+json is not supported by kubevirt.io/v1, Kind=VirtualMachine"
        ),
        "{r:?}"
    );
}

#[tokio::test]
async fn delete_of_an_object_with_finalizers_waits_for_them() {
    let sim = sim().await;
    let k = require_kubectl!(sim.kubeconfig_path());
    let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "fin", "finalizers": ["example.com/hold"]}});
    k.run_stdin(&["create", "-f", "-"], &obj.to_string())
        .await
        .ok();
    let r = k.run(&["delete", "cm", "fin", "--wait=false"]).await.ok();
    assert!(r.stdout.contains("configmap \"fin\" deleted"), "{r:?}");
    let got = k.run(&["get", "cm", "fin", "-o", "json"]).await.ok().json();
    assert!(got["metadata"]["deletionTimestamp"].is_string(), "{got}");
    k.run(&[
        "patch",
        "cm",
        "fin",
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ])
    .await
    .ok();
    let r = k.run(&["get", "cm", "fin"]).await.failed();
    assert!(r.stderr.contains("NotFound"), "{r:?}");
}

#[tokio::test]
async fn watch_sees_a_change_made_after_the_list() {
    let sim = sim().await;
    let k = require_kubectl!(sim.kubeconfig_path());
    k.run_stdin(&["create", "-f", "-"], &cm("w-first", json!({})))
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
    k.run_stdin(&["create", "-f", "-"], &cm("w-second", json!({})))
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
    assert!(r.stdout.contains("GROUP:      kubevirt.io"), "{r:?}");
    assert!(r.stdout.contains("KIND:       VirtualMachine"), "{r:?}");
    assert!(r.stdout.contains("FIELD: template <"), "{r:?}");
    // The description comes from the KubeVirt reference schema.
    assert!(
        r.stdout
            .contains("Template is the direct specification of VirtualMachineInstance"),
        "{r:?}"
    );
    assert!(r.stdout.contains("spec\t<"), "{r:?}");
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
    // --recursive walks every nested schema (KubeVirt's type lists are served structurally).
    let r = k.run(&["explain", "vm.spec", "--recursive"]).await.ok();
    assert!(
        r.stdout.contains("port\t<IntOrString>") || r.stdout.contains("port\t<"),
        "{r:?}"
    );
    assert!(r.stdout.contains("runStrategy\t<string>"), "{r:?}");
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
    k.run_stdin(&["create", "-f", "-"], &vm("raw", json!({}), json!({})))
        .await
        .ok();
    let r = k
        .run(&[
            "get",
            "--raw",
            "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/raw/status",
        ])
        .await
        .ok();
    let v = r.json();
    assert_eq!(v["kind"], "VirtualMachine");
    assert_eq!(v["metadata"]["name"], "raw");
    let r = k.run(&["get", "--raw", "/openapi/v3"]).await.ok();
    assert!(
        r.json()["paths"]["apis/kubevirt.io/v1"]["serverRelativeURL"]
            .as_str()
            .is_some_and(|u| u.starts_with("/openapi/v3/apis/kubevirt.io/v1?hash="))
    );
}

#[tokio::test]
async fn auth_can_i_answers_yes_for_the_sim_token() {
    let sim = sim().await;
    let k = require_kubectl!(sim.kubeconfig_path());
    let r = k
        .run(&["auth", "can-i", "create", "virtualmachines"])
        .await
        .ok();
    assert_eq!(r.stdout.trim(), "yes");
    let r = k
        .run(&[
            "auth",
            "can-i",
            "delete",
            "persistentvolumeclaims",
            "-n",
            "default",
        ])
        .await
        .ok();
    assert_eq!(r.stdout.trim(), "yes");
    let r = k.run(&["auth", "can-i", "--list"]).await.ok();
    assert!(r.stdout.contains("*.*"), "{r:?}");
}

#[tokio::test]
async fn unknown_fields_get_kubectls_error_or_warning() {
    let sim = sim().await;
    let k = require_kubectl!(sim.kubeconfig_path());
    let bad = vm("unk", json!({}), json!({"bogus": 1}));
    // kubectl's default (--validate=strict): the server refuses the unknown field.
    let r = k.run_stdin(&["apply", "-f", "-"], &bad).await.failed();
    assert!(
        r.stderr
            .contains("strict decoding error: unknown field \"spec.bogus\""),
        "{r:?}"
    );
    assert!(sim
        .object("kubevirt.io", "virtualmachines", "default", "unk")
        .is_none());
    let r = k.run_stdin(&["create", "-f", "-"], &bad).await.failed();
    assert!(r.stderr.contains("unknown field \"spec.bogus\""), "{r:?}");
    // --validate=warn: created without the field, with the server's warning.
    let r = k
        .run_stdin(&["create", "--validate=warn", "-f", "-"], &bad)
        .await
        .ok();
    assert!(
        r.stderr.contains("Warning: unknown field \"spec.bogus\""),
        "{r:?}"
    );
    let got = sim
        .object("kubevirt.io", "virtualmachines", "default", "unk")
        .unwrap();
    assert!(got["spec"].get("bogus").is_none());
    // Server-side apply refuses it too.
    let bad2 = vm("unk2", json!({}), json!({"bogus": 1}));
    let r = k
        .run_stdin(&["apply", "--server-side", "-f", "-"], &bad2)
        .await
        .failed();
    assert!(r.stderr.contains("unknown field \"spec.bogus\""), "{r:?}");
}

#[tokio::test]
async fn server_dry_run_creates_nothing() {
    let sim = sim().await;
    let k = require_kubectl!(sim.kubeconfig_path());
    let r = k
        .run_stdin(
            &["apply", "--dry-run=server", "-f", "-"],
            &vm("dry", json!({}), json!({})),
        )
        .await
        .ok();
    assert!(
        r.stdout
            .contains("virtualmachine.kubevirt.io/dry created (server dry run)"),
        "{r:?}"
    );
    let r = k
        .run_stdin(
            &["apply", "--server-side", "--dry-run=server", "-f", "-"],
            &vm("dry", json!({}), json!({})),
        )
        .await
        .ok();
    assert!(r.stdout.contains("(server dry run)"), "{r:?}");
    let r = k
        .run_stdin(
            &["create", "--dry-run=server", "-o", "json", "-f", "-"],
            &cm("drycm", json!({})),
        )
        .await
        .ok();
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
    let r = k
        .run(&[
            "create",
            "configmap",
            "c",
            "-n",
            "imp",
            "--from-literal=a=b",
            "--from-literal=x=y",
        ])
        .await
        .ok();
    assert!(r.stdout.contains("configmap/c created"), "{r:?}");
    let r = k
        .run(&[
            "create",
            "secret",
            "generic",
            "s",
            "-n",
            "imp",
            "--from-literal=pw=secret",
            "--type=example.com/t",
        ])
        .await
        .ok();
    assert!(r.stdout.contains("secret/s created"), "{r:?}");
    assert!(sim.object("", "namespaces", "", "imp").is_some());
    let c = sim.object("", "configmaps", "imp", "c").unwrap();
    assert_eq!(c["data"], json!({"a": "b", "x": "y"}));
    let s = sim.object("", "secrets", "imp", "s").unwrap();
    assert_eq!(s["data"], json!({"pw": "c2VjcmV0"}));
    assert_eq!(s["type"], "example.com/t");
}
