//! The same stock kubectl commands against the sim and against a real kube-apiserver (v1.37,
//! `ControlPlane`, with the KubeVirt CRDs generated from `reference/`): every answer a user sees
//! — output, error text, exit code, `managedFields`, the last-applied annotation — must be the
//! same. This is what keeps the sim honest where kubectl looks: server-side apply (conflicts,
//! the client-side to server-side upgrade), field validation (Strict, Warn, a `kind: List`
//! checked against the protobuf OpenAPI v2), JSON patch failures, stale replaces, finalizers,
//! dry runs and access reviews.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use virtguard_e2e::{require_kubectl, require_peer, ControlPlane};
use virtguard_sim::{Sim, SimConfig};

/// One cluster as kubectl sees it.
struct Target {
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    home: tempfile::TempDir,
}

/// What kubectl printed and how it ended.
#[derive(Debug, PartialEq)]
struct Answer {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Target {
    fn new(kubectl: &Path, kubeconfig: &Path) -> Target {
        Target {
            kubectl: kubectl.to_path_buf(),
            kubeconfig: kubeconfig.to_path_buf(),
            home: tempfile::tempdir().expect("a temporary HOME"),
        }
    }

    async fn run(&self, args: &[&str], stdin: &str) -> Answer {
        let mut child = tokio::process::Command::new(&self.kubectl)
            .args(args)
            .args(["--namespace", "default"])
            .env_clear()
            .env("HOME", self.home.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("kubectl starts");
        let mut input = child.stdin.take().expect("stdin");
        input
            .write_all(stdin.as_bytes())
            .await
            .expect("stdin written");
        drop(input);
        let out = child.wait_with_output().await.expect("kubectl ends");
        Answer {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `get <what> -o json --show-managed-fields`, reduced to what the comparison needs:
    /// managers with their operations and field sets (in a stable order), and annotations.
    async fn ownership(&self, what: &[&str]) -> Value {
        let mut args = vec!["get"];
        args.extend_from_slice(what);
        args.extend(["-o", "json", "--show-managed-fields"]);
        let a = self.run(&args, "").await;
        let obj: Value = serde_json::from_str(&a.stdout).unwrap_or_else(|e| panic!("{e}: {a:?}"));
        let mut managers: Vec<Value> = obj["metadata"]["managedFields"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|e| json!([e["manager"], e["operation"], e["fieldsV1"]]))
            .collect();
        managers.sort_by_key(|m| m.to_string());
        json!({"managers": managers, "annotations": obj["metadata"]["annotations"]})
    }
}

fn cm(name: &str, label: &str, value: &str) -> String {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "labels": {"a": label}}, "data": {"k": value}})
    .to_string()
}

fn vm(name: &str, spec_extra: Value) -> String {
    let mut v = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {}}}}}});
    if let (Some(s), Some(e)) = (v["spec"].as_object_mut(), spec_extra.as_object()) {
        s.extend(e.clone());
    }
    v.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_gets_the_same_answers_from_the_sim_and_kube_apiserver() {
    let kubectl = require_peer!(require_kubectl());
    let real = require_peer!(ControlPlane::start().await);
    let sim = Sim::start(SimConfig::default())
        .await
        .expect("the sim starts");
    let real = Target::new(&kubectl, real.kubeconfig());
    let simt = Target::new(&kubectl, sim.kubeconfig_path());

    let ssa = ["apply", "--server-side", "-f", "-"];
    let cases: Vec<(&str, Vec<&str>, String)> = vec![
        ("server-side apply creates", ssa.to_vec(), cm("c1", "x", "v1")),
        ("another manager patches", vec!["patch", "cm", "c1", "--type", "merge", "-p", r#"{"data":{"k":"v2"}}"#], String::new()),
        ("a conflicting apply", ssa.to_vec(), cm("c1", "x", "v3")),
        ("a forced apply", vec!["apply", "--server-side", "--force-conflicts", "-f", "-"], cm("c1", "x", "v3")),
        ("an unknown field, Strict", vec!["create", "-f", "-"], json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "u1"}, "bogus": 1}).to_string()),
        ("an unknown field, Warn", vec!["create", "--validate=warn", "-f", "-"], json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "u2"}, "bogus": 1}).to_string()),
        ("an unknown field, applied", ssa.to_vec(), json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "u3"}, "bogus": 1}).to_string()),
        ("a List checked by kubectl", vec!["apply", "-f", "-"], json!({"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "l1"}, "bogus": 1}]}).to_string()),
        ("a failed JSON patch test", vec!["patch", "cm", "c1", "--type", "json", "-p", r#"[{"op":"test","path":"/data/k","value":"nope"}]"#], String::new()),
        ("a strategic merge on a core kind", vec!["patch", "cm", "c1", "-p", r#"{"data":{"n":"1"}}"#], String::new()),
        ("client-side apply", vec!["apply", "-f", "-"], cm("c5", "x", "v1")),
        ("then server-side apply takes over", ssa.to_vec(), cm("c5", "x", "v2")),
        ("a server dry run", vec!["apply", "--dry-run=server", "-f", "-"], cm("d1", "x", "v")),
        ("the dry run stored nothing", vec!["get", "cm", "d1"], String::new()),
        ("a finalizer holds a delete", vec!["create", "-f", "-"], json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "f1", "finalizers": ["example.com/hold"]}}).to_string()),
        ("delete without waiting", vec!["delete", "cm", "f1", "--wait=false"], String::new()),
        ("the finalizer goes", vec!["patch", "cm", "f1", "--type", "json", "-p", r#"[{"op":"remove","path":"/metadata/finalizers"}]"#], String::new()),
        ("and so does the object", vec!["get", "cm", "f1"], String::new()),
        ("auth can-i", vec!["auth", "can-i", "create", "virtualmachines.kubevirt.io"], String::new()),
        ("a VM applied", ssa.to_vec(), vm("vm1", json!({}))),
        ("its runStrategy patched", vec!["patch", "virtualmachines.kubevirt.io", "vm1", "--type", "merge", "-p", r#"{"spec":{"runStrategy":"Manual"}}"#], String::new()),
        ("a VM conflict", ssa.to_vec(), vm("vm1", json!({"runStrategy": "Always"}))),
        ("a VM with an unknown field", vec!["create", "-f", "-"], vm("vm2", json!({"bogus": 1}))),
        ("a VM applied with an unknown field", ssa.to_vec(), vm("vm3", json!({"bogus": 1}))),
        ("a strategic merge on a custom resource", vec!["patch", "virtualmachines.kubevirt.io", "vm1", "-p", r#"{"metadata":{"labels":{"x":"y"}}}"#], String::new()),
    ];
    let mut differences = Vec::new();
    for (what, args, stdin) in &cases {
        let want = real.run(args, stdin).await;
        let got = simt.run(args, stdin).await;
        if want != got {
            differences.push(format!(
                "{what} (kubectl {}):\n  kube-apiserver: {want:?}\n  sim:            {got:?}",
                args.join(" ")
            ));
        }
    }
    // A replace with a stale resourceVersion.
    let mut stale = Vec::new();
    for t in [&real, &simt] {
        let a = t.run(&["get", "cm", "c1", "-o", "json"], "").await;
        t.run(&["label", "cm", "c1", "z=1"], "").await;
        stale.push(t.run(&["replace", "-f", "-"], &a.stdout).await);
    }
    if stale[0] != stale[1] {
        differences.push(format!(
            "a stale replace:\n  kube-apiserver: {:?}\n  sim:            {:?}",
            stale[0], stale[1]
        ));
    }
    // Who owns what after all that.
    for what in [
        ["cm", "c1"],
        ["cm", "c5"],
        ["virtualmachines.kubevirt.io", "vm1"],
    ] {
        let (want, got) = (real.ownership(&what).await, simt.ownership(&what).await);
        if want != got {
            differences.push(format!(
                "ownership of {what:?}:\n  kube-apiserver: {want}\n  sim:            {got}"
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} difference(s):\n{}",
        differences.len(),
        differences.join("\n")
    );
}
