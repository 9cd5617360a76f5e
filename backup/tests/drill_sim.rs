//! `virtguard drill` against the simulated cluster (simulated VMIs; the real QEMU guest is
//! drilled in tests/tests/drill.rs): the copy is restored into the sandbox, isolated before it
//! starts, checked through the guest-agent subresources, deleted; every failure is recorded with
//! its reason and leaves nothing behind, also on SIGTERM and after a SIGKILL.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::text;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::ListParams;
use kube::Api;
use serde_json::Value;
use virtguard_api::{DataVolume, VirtualMachine};
use virtguard_sim::{Scenario, Sim, SimConfig};

const SCENARIO: &str = r#"
namespaces: [prod, drills]
nads:
  - {namespace: prod, name: br-data}
vms:
  - namespace: prod
    name: db
    networks: [br-data]
    disks:
      - {name: root, size: 3Mi, content: {random: 7}, used: 1Mi}
      - {name: data, size: 2Mi, content: {pattern: "data"}}
  - namespace: prod
    name: noagent
    guestAgent: false
    disks:
      - {name: root, size: 2Mi, content: {random: 8}, used: 1Mi}
  - namespace: prod
    name: never-backed-up
    disks:
      - {name: root, size: 1Mi}
"#;

async fn sim(audit: Option<PathBuf>) -> Sim {
    virtguard::cluster::install_crypto_provider();
    let sim = Sim::start(SimConfig {
        scenario: Scenario::from_yaml(SCENARIO, "test").unwrap(),
        virtguard_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_virtguard"))),
        audit_log: audit,
        ..Default::default()
    })
    .await
    .unwrap();
    let client = sim.client().await.unwrap();
    common::cluster::wait_running(&client, "prod", "db").await;
    common::cluster::wait_running(&client, "prod", "noagent").await;
    sim
}

fn command(sim: &Sim, repo: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_virtguard"));
    c.args(["--repo", repo.to_str().unwrap()])
        .args(args)
        .env("KUBECONFIG", sim.kubeconfig_path())
        .env_remove("VIRTGUARD_KEY")
        .stdin(Stdio::null());
    c
}

fn virtguard(sim: &Sim, repo: &Path, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| command(sim, repo, args).output().unwrap())
}

/// A local repository with a backup of `vms`.
fn backed_up(sim: &Sim, vms: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let o = virtguard(sim, &repo, &["init", "--chunk-size", "1MiB"]);
    assert!(o.status.success(), "{}", text(&o));
    for vm in vms {
        let o = virtguard(sim, &repo, &["backup", "--vm", vm]);
        assert!(o.status.success(), "{}", text(&o));
    }
    (dir, repo)
}

/// Everything a drill could have left in the sandbox.
async fn sandbox_objects(sim: &Sim) -> Vec<String> {
    let client = sim.client().await.unwrap();
    let mut out = Vec::new();
    let lp = ListParams::default();
    for v in Api::<VirtualMachine>::namespaced(client.clone(), "drills")
        .list(&lp)
        .await
        .unwrap()
    {
        out.push(format!("VirtualMachine {}", v.metadata.name.unwrap()));
    }
    for v in Api::<DataVolume>::namespaced(client.clone(), "drills")
        .list(&lp)
        .await
        .unwrap()
    {
        out.push(format!("DataVolume {}", v.metadata.name.unwrap()));
    }
    for v in Api::<PersistentVolumeClaim>::namespaced(client.clone(), "drills")
        .list(&lp)
        .await
        .unwrap()
    {
        // A PVC being deleted by the garbage collector of its DataVolume is on its way out.
        if v.metadata.deletion_timestamp.is_none() {
            out.push(format!(
                "PersistentVolumeClaim {}",
                v.metadata.name.unwrap()
            ));
        }
    }
    for v in Api::<NetworkPolicy>::namespaced(client.clone(), "drills")
        .list(&lp)
        .await
        .unwrap()
    {
        out.push(format!("NetworkPolicy {}", v.metadata.name.unwrap()));
    }
    out
}

/// Polls until the sandbox is empty (deletions propagate through the garbage collector).
async fn assert_sandbox_empty(sim: &Sim) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = sandbox_objects(sim).await;
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left in the sandbox: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The drill status record of `prod/<vm>`.
async fn record(sim: &Sim, vm: &str) -> Value {
    let cms: Api<ConfigMap> = Api::namespaced(sim.client().await.unwrap(), "prod");
    let cm = cms.get("virtguard-drill-status").await.unwrap();
    assert_eq!(
        cm.metadata
            .labels
            .unwrap()
            .get("virtguard.io/status")
            .map(String::as_str),
        Some("true")
    );
    serde_json::from_str(cm.data.unwrap().get(vm).unwrap()).unwrap()
}

fn reports(o: &Output) -> Vec<Value> {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drill_restores_an_isolated_copy_checks_the_guest_and_deletes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let sim = sim(Some(audit.clone())).await;
    let (_r, repo) = backed_up(&sim, &["prod/db"]);
    // The backup recorded what the guest had mounted.
    let o = virtguard(&sim, &repo, &["show", "prod/db@latest", "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let shown: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        shown.pointer("/labels/guest-mounts"),
        Some(&Value::from("/,/mnt/data")),
        "{shown}"
    );

    let o = virtguard(
        &sim,
        &repo,
        &[
            "drill",
            "--vm",
            "prod/db",
            "--sandbox",
            "drills",
            "-o",
            "json",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let r = &reports(&o)[0];
    assert_eq!(r["succeeded"], true, "{r}");
    assert_eq!(r["copy"], "drills/drill-prod-db");
    assert_eq!(r["expectedMounts"], serde_json::json!(["/", "/mnt/data"]));
    assert_eq!(r["foundMounts"], serde_json::json!(["/", "/mnt/data"]));
    assert!(r["timeToReadySeconds"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["guestOs"], "virtguard-sim guest");
    let deleted: Vec<&str> = r["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(
        deleted.contains(&"VirtualMachine drills/drill-prod-db")
            && deleted.contains(&"NetworkPolicy drills/drill-prod-db-isolation"),
        "{deleted:?}"
    );
    assert_sandbox_empty(&sim).await;

    // The isolation policy existed before the copy was created, and the copy was started.
    let log = std::fs::read_to_string(&audit).unwrap();
    let pos = |resource: &str| {
        log.lines()
            .position(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                v["verb"] == "create" && v["namespace"] == "drills" && v["resource"] == resource
            })
            .unwrap_or_else(|| panic!("no create of {resource} in the audit log"))
    };
    assert!(
        pos("networkpolicies") < pos("virtualmachines"),
        "the NetworkPolicy must exist before the copy starts"
    );

    // Isolated, the copy lost its Multus network (so the restore did not even look for the
    // NetworkAttachmentDefinition in the sandbox); without isolation it keeps it, and no
    // NetworkPolicy is made.
    let nad_warning = "NetworkAttachmentDefinition drills/br-data does not exist";
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains(nad_warning),
        "{}",
        text(&o)
    );
    let o = virtguard(
        &sim,
        &repo,
        &[
            "drill",
            "--vm",
            "prod/db",
            "--sandbox",
            "drills",
            "--no-isolation",
            "-o",
            "json",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(nad_warning),
        "{}",
        text(&o)
    );
    let r = &reports(&o)[0];
    assert!(
        !r["deleted"].to_string().contains("NetworkPolicy"),
        "no policy without isolation: {r}"
    );
    assert_sandbox_empty(&sim).await;

    // The result is recorded for the exporter.
    let rec = record(&sim, "db").await;
    assert_eq!(rec["result"], "Succeeded", "{rec}");
    assert_eq!(rec["sandboxNamespace"], "drills");
    assert!(
        rec["lastSuccessTimestamp"].as_i64().unwrap()
            >= rec["lastAttemptTimestamp"].as_i64().unwrap()
    );
    assert!(rec["timeToReadySeconds"].as_f64().is_some());
    assert!(rec["backupId"].as_str().is_some_and(|s| !s.is_empty()));
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_drills_say_why_are_recorded_and_leave_nothing_behind() {
    let sim = sim(None).await;
    let (_r, repo) = backed_up(&sim, &["prod/db", "prod/noagent"]);

    // No sandbox namespace.
    let o = virtguard(
        &sim,
        &repo,
        &[
            "drill",
            "--vm",
            "prod/db",
            "--sandbox",
            "absent",
            "-o",
            "json",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r = &reports(&o)[0];
    assert_eq!(r["reason"], "sandbox-missing", "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("kubectl create namespace absent"),
        "{r}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 of 1 restore drill(s) failed"));
    let rec = record(&sim, "db").await;
    assert_eq!(rec["result"], "Failed");
    assert_eq!(rec["reason"], "sandbox-missing");
    assert!(rec.get("lastSuccessTimestamp").is_none(), "{rec}");

    // A VM without backups.
    let o = virtguard(
        &sim,
        &repo,
        &[
            "drill",
            "--vm",
            "prod/never-backed-up",
            "--sandbox",
            "drills",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("FAILED (no-backup)"),
        "{}",
        text(&o)
    );
    assert_eq!(record(&sim, "never-backed-up").await["reason"], "no-backup");

    // A guest whose agent never connects (none installed): the copy boots, the drill waits
    // --boot-timeout, then deletes it.
    let o = virtguard(
        &sim,
        &repo,
        &[
            "drill",
            "--vm",
            "prod/noagent",
            "--sandbox",
            "drills",
            "--boot-timeout",
            "2s",
            "-o",
            "json",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r = &reports(&o)[0];
    assert_eq!(r["reason"], "agent-not-connected", "{r}");
    assert_sandbox_empty(&sim).await;

    // The guest agent fails to answer filesystemlist.
    sim.inject(virtguard_sim::FaultRule {
        op: "filesystemlist".into(),
        target: Some("drills/drill-prod-db".into()),
        status: Some(500),
        message: Some("guest agent timed out".into()),
        ..Default::default()
    });
    let o = virtguard(
        &sim,
        &repo,
        &[
            "drill",
            "--vm",
            "prod/db",
            "--sandbox",
            "drills",
            "-o",
            "json",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r = &reports(&o)[0];
    assert_eq!(r["reason"], "guest-info-failed", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("filesystemlist"),
        "{r}"
    );
    assert_sandbox_empty(&sim).await;
    sim.clear_faults();

    // A corrupt chunk: the restore step fails, saying so.
    for victim in walk(&repo.join("chunks")) {
        let mut bytes = std::fs::read(&victim).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&victim, bytes).unwrap();
    }
    let o = virtguard(
        &sim,
        &repo,
        &[
            "drill",
            "--vm",
            "prod/db",
            "--sandbox",
            "drills",
            "-o",
            "json",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r = &reports(&o)[0];
    assert_eq!(r["reason"], "restore-failed", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("corrupt"),
        "the message names the corruption: {r}"
    );
    assert_sandbox_empty(&sim).await;
    assert_eq!(record(&sim, "db").await["reason"], "restore-failed");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Waits until the drill's copy exists in the sandbox.
async fn wait_for_copy(sim: &Sim, name: &str) {
    let vms: Api<VirtualMachine> = Api::namespaced(sim.client().await.unwrap(), "drills");
    let deadline = Instant::now() + Duration::from_secs(60);
    while vms.get_opt(name).await.unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the drill never created its copy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_drill_cleans_up_and_a_killed_one_is_cleaned_up_by_the_next() {
    let sim = sim(None).await;
    let (_r, repo) = backed_up(&sim, &["prod/noagent"]);
    let args = [
        "drill",
        "--vm",
        "prod/noagent",
        "--sandbox",
        "drills",
        "--boot-timeout",
        "10m",
    ];

    // SIGTERM while the copy waits for its agent.
    let child = command(&sim, &repo, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_copy(&sim, "drill-prod-noagent").await;
    let o = common::sigterm_and_wait(child);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("interrupted by SIGTERM") && err.contains("deleted the"),
        "{}",
        text(&o)
    );
    assert_sandbox_empty(&sim).await;
    assert_eq!(record(&sim, "noagent").await["reason"], "interrupted");

    // SIGKILL: nothing can clean up, so the next drill of the VM does.
    let mut child = command(&sim, &repo, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_copy(&sim, "drill-prod-noagent").await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !sandbox_objects(&sim).await.is_empty(),
        "the killed drill left its copy"
    );
    let o = virtguard(
        &sim,
        &repo,
        &[
            "drill",
            "--vm",
            "prod/noagent",
            "--sandbox",
            "drills",
            "--boot-timeout",
            "1s",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("VirtualMachine drills/drill-prod-noagent (left by an earlier drill)"),
        "{}",
        text(&o)
    );
    assert_sandbox_empty(&sim).await;
}
