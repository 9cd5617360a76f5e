//! One consistency model end to end: for each kind of VM the real `virtguard` binary backs it
//! up from the simulated cluster, and the same value — kind, and the reason when a freeze
//! failed — comes back from every place that reports it: the backup summary, `list` and `show`
//! (table and JSON, i.e. the manifest), the `virtguard-status` ConfigMap the exporter reads, and
//! `restore --dry-run`.
//!
//! | VM | expected |
//! |---|---|
//! | running, guest agent | application-consistent |
//! | running, no agent | crash-consistent |
//! | paused (`pause` subresource) | paused |
//! | stopped | offline |
//! | running, agent, freeze refused (fault) | crash-consistent, `refused` |
//! | running, agent gone when freezing (fault with KubeVirt's error) | crash-consistent, `agent-disconnected` |

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};

use common::cluster::{start_sim, virtguard};
use common::text;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use serde_json::Value;
use virtguard_api::labels;
use virtguard_api::status::{BackupStatusRecord, Consistency, FreezeFailure};
use virtguard_sim::{FaultRule, FreezeAction, Sim};

const SCENARIO: &str = r#"
namespaces: [prod]
vms:
  - {namespace: prod, name: agent, disks: [{name: root, size: 2Mi, content: {random: 1}}]}
  - {namespace: prod, name: noagent, guestAgent: false, disks: [{name: root, size: 2Mi, content: {random: 2}}]}
  - {namespace: prod, name: paused, disks: [{name: root, size: 2Mi, content: {random: 3}}]}
  - {namespace: prod, name: stopped, running: false, disks: [{name: root, size: 2Mi, content: {random: 4}}]}
"#;

/// How KubeVirt words a freeze of a VMI whose agent went away (virt-handler passing on
/// libvirt's VIR_ERR_AGENT_UNRESPONSIVE).
const AGENT_GONE: &str = "Internal error occurred: server error. command Freeze failed: \"LibvirtError(Code=86, Domain=10, Message='Guest agent is not responding: QEMU guest agent is not connected')\"";

struct Cluster {
    sim: Sim,
    client: kube::Client,
    _dir: tempfile::TempDir,
    repo: PathBuf,
}

/// The sim with `vm` running (or stopped, for `stopped`) and a fresh local repository.
async fn cluster(vm: &str) -> Cluster {
    let running = if vm == "stopped" {
        Vec::new()
    } else {
        vec![format!("prod/{vm}")]
    };
    let running: Vec<&str> = running.iter().map(String::as_str).collect();
    let (sim, client) = start_sim(SCENARIO, &running).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let o = virtguard(&sim, &repo, &["init"]);
    assert!(o.status.success(), "{}", text(&o));
    Cluster {
        sim,
        client,
        _dir: dir,
        repo,
    }
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The first line of `out` that contains `needle`.
fn line_with<'a>(out: &'a str, needle: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in\n{out}"))
}

/// Runs `args` and parses stdout as JSON.
fn json(sim: &Sim, repo: &Path, args: &[&str]) -> Value {
    let o = virtguard(sim, repo, args);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
}

/// Backs up `prod/<vm>` with the real binary and checks that every report says `want`.
async fn backup_and_check(c: &Cluster, vm: &str, want: Consistency) {
    let vm_id = format!("prod/{vm}");
    let kind = want.kind().as_str();
    let failure = want.freeze_failure().map(|f| f.as_str());
    let shown = want.to_string();

    // The backup's own summary table.
    let o = virtguard(&c.sim, &c.repo, &["backup", "--vm", &vm_id]);
    assert!(o.status.success(), "{}", text(&o));
    let row = line_with(&stdout(&o), &vm_id).to_string();
    assert!(row.contains(" ok ") && row.contains(&shown), "{row}");

    // `list -o json`: the kind, and the reason only when there is one.
    let list = json(&c.sim, &c.repo, &["list", "-o", "json"]);
    let entries = list.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{list}");
    let entry = &entries[0];
    assert_eq!(entry["consistency"], kind, "{entry}");
    assert_eq!(entry.get("freeze_failure").and_then(Value::as_str), failure);
    let id = entry["id"].as_str().unwrap().to_string();

    // `show -o json` is the manifest: the full value, and no legacy label beside it.
    let m = json(&c.sim, &c.repo, &["show", &id, "-o", "json"]);
    assert_eq!(m["consistency"], kind, "{m}");
    assert_eq!(m.get("freeze_failure").and_then(Value::as_str), failure);
    assert!(m["labels"].get("consistency").is_none(), "{m}");

    // The tables.
    let o = virtguard(&c.sim, &c.repo, &["list"]);
    assert!(o.status.success(), "{}", text(&o));
    let row = line_with(&stdout(&o), &id).to_string();
    assert!(row.trim_end().ends_with(&shown), "{row}");
    let o = virtguard(&c.sim, &c.repo, &["show", &id]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        line_with(&stdout(&o), "consistency"),
        format!("consistency {shown}")
    );

    // The status ConfigMap (the exporter's source): raw keys, and the shared record type.
    let cm = Api::<ConfigMap>::namespaced(c.client.clone(), "prod")
        .get(labels::STATUS_CONFIGMAP)
        .await
        .unwrap();
    let raw = cm.data.unwrap()[vm].clone();
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["consistency"], kind, "{raw}");
    assert_eq!(v.get("freezeFailure").and_then(Value::as_str), failure);
    let rec: BackupStatusRecord = serde_json::from_str(&raw).unwrap();
    assert_eq!(rec.consistency, Some(want));
    assert_eq!(rec.backup_id.as_deref(), Some(id.as_str()));

    // What a restore says it is about to restore.
    let o = virtguard(
        &c.sim,
        &c.repo,
        &[
            "restore",
            &format!("{vm_id}@latest"),
            "--name",
            "copy",
            "--dry-run",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        line_with(&err, "dry run: would restore").contains(&format!(", {shown}) as VM prod/copy")),
        "{}",
        text(&o)
    );
}

/// Freeze-log entries of VMI `prod/<vm>`: (action, HTTP status).
fn freezes(sim: &Sim, vm: &str) -> Vec<(FreezeAction, u16)> {
    let id = format!("prod/{vm}");
    sim.freeze_log()
        .into_iter()
        .filter(|r| r.vmi == id)
        .map(|r| (r.action, r.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn running_with_agent_is_application_consistent() {
    let c = cluster("agent").await;
    backup_and_check(&c, "agent", Consistency::ApplicationConsistent).await;
    assert_eq!(
        freezes(&c.sim, "agent"),
        [(FreezeAction::Freeze, 200), (FreezeAction::Unfreeze, 200)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn running_without_agent_is_crash_consistent() {
    let c = cluster("noagent").await;
    backup_and_check(&c, "noagent", Consistency::CrashConsistent).await;
    assert!(freezes(&c.sim, "noagent").is_empty(), "no freeze attempted");
}

#[tokio::test(flavor = "multi_thread")]
async fn paused_is_paused() {
    let c = cluster("paused").await;
    let req = http::Request::put(
        "/apis/subresources.kubevirt.io/v1/namespaces/prod/virtualmachineinstances/paused/pause",
    )
    .header("Content-Type", "application/json")
    .body(b"{}".to_vec())
    .unwrap();
    c.client.request_text(req).await.unwrap();
    backup_and_check(&c, "paused", Consistency::Paused).await;
    assert!(
        freezes(&c.sim, "paused").is_empty(),
        "a paused guest is not frozen"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_is_offline() {
    let c = cluster("stopped").await;
    backup_and_check(&c, "stopped", Consistency::Offline).await;
    assert!(freezes(&c.sim, "stopped").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_freeze_is_crash_consistent_with_the_reason() {
    let c = cluster("agent").await;
    c.sim.inject(FaultRule {
        op: "freeze".into(),
        target: Some("prod/agent".into()),
        status: Some(500),
        ..Default::default()
    });
    backup_and_check(
        &c,
        "agent",
        Consistency::FreezeFailed(FreezeFailure::Refused),
    )
    .await;
    // The failed freeze, then a thaw to be sure (a freeze that fails may still land).
    assert_eq!(
        freezes(&c.sim, "agent"),
        [(FreezeAction::Freeze, 500), (FreezeAction::Unfreeze, 200)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_freeze_without_an_agent_is_crash_consistent_agent_disconnected() {
    let c = cluster("agent").await;
    c.sim.inject(FaultRule {
        op: "freeze".into(),
        target: Some("prod/agent".into()),
        status: Some(500),
        message: Some(AGENT_GONE.into()),
        ..Default::default()
    });
    backup_and_check(
        &c,
        "agent",
        Consistency::FreezeFailed(FreezeFailure::AgentDisconnected),
    )
    .await;
}
