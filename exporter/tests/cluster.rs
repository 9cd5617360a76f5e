//! Cluster mode end to end: the real `virtguard-exporter` binary in `--mode cluster` against the
//! simulated cluster (virtguard-sim), scraped over HTTP.
//!
//! * `follows_the_cluster_through_watches`: VMIM timelines drive the phase gauges
//!   (Pending → Scheduling → Running → Succeeded) and a Failed migration; guest agent and freeze
//!   state per VMI (with an allow-listed VMI label); a VirtualMachineSnapshot whose status is set
//!   through `/status`; restored PVCs with KubeVirt's restore labels; a `virtguard-status`
//!   ConfigMap with a `BackupStatusRecord`. The exposition passes `promtool check metrics`. Then
//!   every LIST call of the five kinds is made to fail and objects are changed and deleted: the
//!   series follow without a restart and not one watch error is counted — a scrape, or a watch
//!   that had to relist, would have hit the injected fault.
//! * `readiness_waits_for_every_reflector_and_an_absent_crd_breaks_nothing`: `/readyz` is 503
//!   while a kind cannot be listed, 200 once it recovers through the watcher's backoff; a kind
//!   answering 404 (CRD not installed) holds up neither readiness nor the other kinds, and is
//!   picked up without a restart once it is served. `--namespace` keeps other namespaces out.
//! * `vmi_phases_eviction_and_duplicate_macs`: phase counts, the non-evictable indicator and MAC
//!   collisions follow VMI changes.
//! * `restore_and_drill_records_become_series`: the restore and drill status ConfigMaps give the
//!   `virtguard_restore_*` / `virtguard_restore_test_*` series and no backup series.
#![allow(clippy::unwrap_used)] // test code

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use virtguard_api::kubevirt::{
    VirtualMachineInstance, VirtualMachineInstanceMigration, VirtualMachineSnapshot,
};
use virtguard_api::labels;
use virtguard_api::status::{
    BackupResult, BackupStatusRecord, Consistency, DrillStatusRecord, FreezeFailure,
    RestoreStatusRecord,
};
use virtguard_e2e::{free_port, require_binary, require_peer};
use virtguard_sim::{FaultRule, Scenario, Sim, SimConfig};

const SCENARIO: &str = r#"
namespaces: [prod]
vms:
  - {namespace: prod, name: db, labels: {team: blue, secret: s3cr3t}}
  - {namespace: prod, name: web, guestAgent: false}
  - {namespace: default, name: other}
"#;

/// The exporter process; killed on drop (also when the test panics).
struct Exporter {
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.log.path()).unwrap_or_default();
            eprintln!("--- exporter log ---\n{log}");
        }
    }
}

/// Starts the exporter binary with `args` (besides `--listen`) and `KUBECONFIG`.
fn start_exporter(kubeconfig: &Path, args: &[&str]) -> Exporter {
    let port = free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_virtguard-exporter"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    Exporter { child, port, log }
}

/// GET over plain HTTP/1.1: (status code, body). Connection refused → status 0.
async fn get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, String::new());
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

async fn metrics(e: &Exporter) -> String {
    let (code, body) = get(e.port, "/metrics").await;
    assert_eq!(code, 200, "/metrics: {body}");
    body
}

/// The value of the series `series` (metric name with its exact label set as rendered).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// Scrapes until `f` holds for the exposition (or fails after `secs`, showing the last one).
async fn wait_metrics(e: &Exporter, what: &str, secs: u64, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        // Connection refused (0) while the exporter starts: retry.
        let (code, text) = get(e.port, "/metrics").await;
        assert!(code == 200 || code == 0, "/metrics answered {code}: {text}");
        if code == 200 && f(&text) {
            return text;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}; last scrape:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is(text: &str, series: &str, v: f64) -> bool {
    value(text, series) == Some(v)
}

async fn wait_ready(e: &Exporter, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while get(e.port, "/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "/readyz never became 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_sim() -> Sim {
    Sim::start(SimConfig {
        scenario: Scenario::from_yaml(SCENARIO, "test").unwrap(),
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn create_vmim(client: &Client, name: &str, vmi: &str, timeline: &str) {
    let m: VirtualMachineInstanceMigration = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "prod",
                     "annotations": {"virtguard.io/sim-timeline": timeline}},
        "spec": {"vmiName": vmi},
    }))
    .unwrap();
    Api::<VirtualMachineInstanceMigration>::namespaced(client.clone(), "prod")
        .create(&PostParams::default(), &m)
        .await
        .unwrap();
}

async fn create_restored_pvc(client: &Client, name: &str, size: &str) {
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "prod", "labels": {
            labels::RESTORE_SOURCE_VM_NAME: "simple-vm",
            labels::RESTORE_SOURCE_VM_NAMESPACE: "default"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    }))
    .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), "prod")
        .create(&PostParams::default(), &pvc)
        .await
        .unwrap();
}

async fn freeze(client: &Client, vmi: &str, verb: &str) {
    let req = http::Request::put(format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/prod/virtualmachineinstances/{vmi}/{verb}"
    ))
    .header("content-type", "application/json")
    .body(br#"{"unfreezeTimeout":"5m"}"#.to_vec())
    .unwrap();
    client.request_text(req).await.unwrap();
}

fn status_configmap(records: &[(&str, &BackupStatusRecord)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": labels::STATUS_CONFIGMAP, "namespace": "prod",
                     "labels": {labels::STATUS: "true"}},
        "data": records.iter().map(|(vm, r)| (vm.to_string(), serde_json::to_string(r).unwrap()))
            .collect::<std::collections::BTreeMap<_, _>>(),
    }))
    .unwrap()
}

fn promtool_check(text: &str) -> Result<(), String> {
    virtguard_e2e::peers::promtool_check_metrics(text)
        .map_err(|e| format!("on the cluster-mode exposition: {e}\n{text}"))
}

const PLURALS: [&str; 5] = [
    "virtualmachineinstancemigrations",
    "virtualmachineinstances",
    "virtualmachinesnapshots",
    "persistentvolumeclaims",
    "configmaps",
];

fn total_watch_errors(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("virtguard_exporter_watch_errors_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_cluster_through_watches() {
    // Fail early (before any work) when promtool is missing.
    let _ = require_peer!(require_binary("promtool"));
    let sim = start_sim().await;
    let client = sim.client().await.unwrap();
    let e = start_exporter(
        sim.kubeconfig_path(),
        &["--mode", "cluster", "--vmi-label-allowlist", "team"],
    );
    wait_ready(&e, 20).await;

    // Guest state of the running VMIs; the allow-listed label only.
    let agent_db = "virtguard_vmi_guest_agent_connected{namespace=\"prod\",name=\"db\",node=\"sim-node-1\",label_team=\"blue\"}";
    let agent_web =
        "virtguard_vmi_guest_agent_connected{namespace=\"prod\",name=\"web\",node=\"sim-node-1\"}";
    let frozen_db = "virtguard_vmi_filesystem_frozen{namespace=\"prod\",name=\"db\",node=\"sim-node-1\",label_team=\"blue\"}";
    let text = wait_metrics(&e, "both VMIs running", 15, |t| {
        is(t, agent_db, 1.0) && is(t, agent_web, 0.0)
    })
    .await;
    assert!(is(&text, frozen_db, 0.0), "{text}");
    assert!(
        text.contains("virtguard_vmi_guest_agent_connected{namespace=\"default\",name=\"other\""),
        "all namespaces by default\n{text}"
    );
    assert!(
        !text.contains("s3cr3t"),
        "a label that is not allow-listed leaked"
    );

    // A failed migration of web.
    create_vmim(
        &client,
        "mig-bad",
        "web",
        "Pending:0,Running:300,Failed:700",
    )
    .await;
    let failed = "kubevirt_vmi_migration_failed{vmi=\"web\",vmim=\"mig-bad\",namespace=\"prod\"}";
    let end_bad =
        "kubevirt_vmi_migration_end_time_seconds{vmi=\"web\",vmim=\"mig-bad\",namespace=\"prod\"}";
    let start_bad = "kubevirt_vmi_migration_start_time_seconds{vmi=\"web\",vmim=\"mig-bad\",namespace=\"prod\"}";
    // The outcome comes from the VMIM, the times from the VMI's migrationState: two objects,
    // written one after the other (as virt-controller and virt-handler do) and followed by two
    // watches, so a scrape may see the one before the other. Wait for all three.
    let text = wait_metrics(&e, "the failed migration", 15, |t| {
        is(t, failed, 1.0) && value(t, start_bad).is_some() && value(t, end_bad).is_some()
    })
    .await;
    let (s, end) = (
        value(&text, start_bad).unwrap(),
        value(&text, end_bad).unwrap(),
    );
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(
        s <= end && end <= now + 1.0 && now - s < 60.0,
        "{s} {end} {now}"
    );

    // A successful migration of db, phase by phase.
    create_vmim(
        &client,
        "mig-ok",
        "db",
        "Pending:0,Scheduling:2000,Running:4000,Succeeded:6000",
    )
    .await;
    let pending = "kubevirt_vmi_migrations_in_pending_phase";
    let scheduling = "kubevirt_vmi_migrations_in_scheduling_phase";
    let running = "kubevirt_vmi_migrations_in_running_phase";
    let phases = |t: &str| [pending, scheduling, running].map(|m| value(t, m).unwrap_or(-1.0));
    for (what, want) in [
        ("Pending", [1.0, 0.0, 0.0]),
        ("Scheduling", [0.0, 1.0, 0.0]),
        ("Running", [0.0, 0.0, 1.0]),
    ] {
        wait_metrics(&e, what, 10, |t| phases(t) == want).await;
    }
    let ok = "kubevirt_vmi_migration_succeeded{vmi=\"db\",vmim=\"mig-ok\",namespace=\"prod\"}";
    let start_ok =
        "kubevirt_vmi_migration_start_time_seconds{vmi=\"db\",vmim=\"mig-ok\",namespace=\"prod\"}";
    let end_ok =
        "kubevirt_vmi_migration_end_time_seconds{vmi=\"db\",vmim=\"mig-ok\",namespace=\"prod\"}";
    let text = wait_metrics(&e, "Succeeded", 10, |t| is(t, ok, 1.0)).await;
    assert_eq!(phases(&text), [0.0, 0.0, 0.0], "{text}");
    assert!(value(&text, start_ok).unwrap() <= value(&text, end_ok).unwrap());
    assert!(
        !text.contains("kubevirt_vmi_migration_failed{vmi=\"db\""),
        "{text}"
    );

    // Freeze db through KubeVirt's subresource.
    freeze(&client, "db", "freeze").await;
    wait_metrics(&e, "db frozen", 10, |t| is(t, frozen_db, 1.0)).await;

    // A VirtualMachineSnapshot, Succeeded through the /status subresource.
    let snaps = Api::<VirtualMachineSnapshot>::namespaced(client.clone(), "prod");
    let snap: VirtualMachineSnapshot = serde_json::from_value(json!({
        "metadata": {"name": "db-snap-1", "namespace": "prod"},
        "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "db"}},
    }))
    .unwrap();
    snaps.create(&PostParams::default(), &snap).await.unwrap();
    snaps
        .patch_status(
            "db-snap-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Succeeded", "readyToUse": true,
                "creationTime": "2026-11-22T04:00:00Z"}})),
        )
        .await
        .unwrap();
    let snap_series = "kubevirt_vmsnapshot_succeeded_timestamp_seconds{name=\"db\",snapshot_name=\"db-snap-1\",namespace=\"prod\"}";
    wait_metrics(&e, "the snapshot", 10, |t| {
        is(t, snap_series, 1_795_320_000.0)
    })
    .await;

    // Restored PVCs (the documented queries' labels: vm_name, vm_namespace).
    create_restored_pvc(&client, "restore-1-root", "1Gi").await;
    create_restored_pvc(&client, "restore-1-data", "512Mi").await;
    let disks = "kubevirt_vmsnapshot_disks_restored_from_source{vm_name=\"simple-vm\",vm_namespace=\"default\"}";
    let bytes = "kubevirt_vmsnapshot_disks_restored_from_source_bytes{vm_name=\"simple-vm\",vm_namespace=\"default\"}";
    wait_metrics(&e, "restored disks", 10, |t| {
        is(t, disks, 2.0) && is(t, bytes, 1_610_612_736.0)
    })
    .await;

    // The backup status ConfigMap, written with the api crate's record type.
    let db_rec = BackupStatusRecord {
        last_attempt_timestamp: 1_795_316_400,
        last_success_timestamp: Some(1_795_316_441),
        result: BackupResult::Succeeded,
        reason: None,
        consistency: Some(Consistency::ApplicationConsistent),
        backup_id: Some("20261122T030000Z-3f9a".into()),
        duration_seconds: 41.5,
        freeze_seconds: 0.75,
        bytes_read: 10_737_418_240,
        bytes_new: 52_428_800,
        bytes_stored: 20_971_520,
    };
    // A VM whose freeze failed: crash-consistent, and why (the record's `freezeFailure`).
    let web_rec = BackupStatusRecord {
        consistency: Some(Consistency::FreezeFailed(FreezeFailure::AgentDisconnected)),
        ..db_rec.clone()
    };
    let cms = Api::<ConfigMap>::namespaced(client.clone(), "prod");
    cms.create(
        &PostParams::default(),
        &status_configmap(&[("db", &db_rec), ("web", &web_rec)]),
    )
    .await
    .unwrap();
    let b = |m: &str| format!("virtguard_backup_{m}{{namespace=\"prod\",name=\"db\"}}");
    let text = wait_metrics(&e, "backup status", 10, |t| is(t, &b("last_status"), 1.0)).await;
    for (m, v) in [
        ("last_success_timestamp_seconds", 1_795_316_441.0),
        ("last_attempt_timestamp_seconds", 1_795_316_400.0),
        ("duration_seconds", 41.5),
        ("freeze_seconds", 0.75),
        ("consistency", 1.0),
    ] {
        assert_eq!(value(&text, &b(m)), Some(v), "{m}\n{text}");
    }
    for (series, v) in [
        ("virtguard_backup_consistency{namespace=\"prod\",name=\"web\"}", 0.0),
        ("virtguard_backup_consistency_info{namespace=\"prod\",name=\"db\",kind=\"application-consistent\",freeze_failure=\"none\"}", 1.0),
        ("virtguard_backup_consistency_info{namespace=\"prod\",name=\"web\",kind=\"crash-consistent\",freeze_failure=\"agent-disconnected\"}", 1.0),
    ] {
        assert!(is(&text, series, v), "{series}\n{text}");
    }
    assert!(is(
        &text,
        "virtguard_backup_bytes{namespace=\"prod\",name=\"db\",kind=\"new\"}",
        52_428_800.0
    ));
    for kind in [
        "VirtualMachineInstanceMigration",
        "VirtualMachineInstance",
        "VirtualMachineSnapshot",
        "PersistentVolumeClaim",
        "ConfigMap",
    ] {
        let s = format!("virtguard_exporter_reflector_synced{{kind=\"{kind}\"}}");
        assert!(is(&text, &s, 1.0), "{s}\n{text}");
    }
    assert!(
        is(
            &text,
            "virtguard_exporter_reflector_objects{kind=\"PersistentVolumeClaim\"}",
            2.0
        ),
        "only labelled PVCs are watched\n{text}"
    );
    promtool_check(&text).unwrap();
    assert_eq!(total_watch_errors(&text), 0.0, "{text}");

    // From now on every LIST of these kinds fails. Scrapes must not care (they make no API
    // call) and changes must still arrive (the watches are open).
    for p in PLURALS {
        sim.inject(FaultRule {
            op: format!("list {p}"),
            status: Some(500),
            ..Default::default()
        });
    }
    for _ in 0..5 {
        let t = metrics(&e).await;
        assert!(is(&t, ok, 1.0) && is(&t, disks, 2.0), "{t}");
    }
    Api::<VirtualMachineInstanceMigration>::namespaced(client.clone(), "prod")
        .delete("mig-bad", &DeleteParams::default())
        .await
        .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), "prod")
        .delete("restore-1-data", &DeleteParams::default())
        .await
        .unwrap();
    freeze(&client, "db", "unfreeze").await;
    snaps
        .delete("db-snap-1", &DeleteParams::default())
        .await
        .unwrap();
    let failed_rec = BackupStatusRecord {
        last_attempt_timestamp: 1_795_320_000,
        result: BackupResult::Failed,
        reason: Some("snapshot-timeout".into()),
        ..db_rec.clone()
    };
    cms.replace(labels::STATUS_CONFIGMAP, &PostParams::default(), &{
        let mut cm = status_configmap(&[("db", &failed_rec)]);
        cm.metadata.resource_version = cms
            .get(labels::STATUS_CONFIGMAP)
            .await
            .unwrap()
            .metadata
            .resource_version;
        cm
    })
    .await
    .unwrap();
    let text = wait_metrics(&e, "the changes, through the watches", 10, |t| {
        !t.contains(failed)
            && is(t, disks, 1.0)
            && is(t, bytes, 1_073_741_824.0)
            && is(t, frozen_db, 0.0)
            && !t.contains(snap_series)
            && is(t, &b("last_status"), 0.0)
    })
    .await;
    assert!(is(
        &text,
        &b("last_success_timestamp_seconds"),
        1_795_316_441.0
    ));
    assert!(is(
        &text,
        &b("last_attempt_timestamp_seconds"),
        1_795_320_000.0
    ));
    assert!(
        !text.contains("snapshot-timeout"),
        "failure reasons never become labels"
    );
    assert_eq!(
        total_watch_errors(&text),
        0.0,
        "no LIST was made after the initial sync\n{text}"
    );
    // The ConfigMap leaves the selection: its series go.
    cms.patch(
        labels::STATUS_CONFIGMAP,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {labels::STATUS: "false"}}})),
    )
    .await
    .unwrap();
    wait_metrics(&e, "backup series gone", 10, |t| {
        !t.contains("virtguard_backup_")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_every_reflector_and_an_absent_crd_breaks_nothing() {
    let sim = start_sim().await;
    let absent = FaultRule {
        op: "list virtualmachinesnapshots".into(),
        status: Some(404),
        message: Some("the server could not find the requested resource".into()),
        ..Default::default()
    };
    sim.inject(absent.clone());
    sim.inject(FaultRule {
        op: "list configmaps".into(),
        status: Some(500),
        ..Default::default()
    });
    let e = start_exporter(
        sim.kubeconfig_path(),
        &["--mode", "cluster", "--namespace", "prod"],
    );
    let synced = |k: &str| format!("virtguard_exporter_reflector_synced{{kind=\"{k}\"}}");
    let errors = |k: &str, r: &str| {
        format!("virtguard_exporter_watch_errors_total{{kind=\"{k}\",reason=\"{r}\"}}")
    };
    let text = wait_metrics(&e, "the healthy kinds to sync", 20, |t| {
        is(t, &synced("VirtualMachineInstance"), 1.0)
            && value(t, &errors("ConfigMap", "other")).unwrap_or(0.0) >= 1.0
            && value(t, &errors("VirtualMachineSnapshot", "not_found")).unwrap_or(0.0) >= 1.0
    })
    .await;
    assert!(is(&text, &synced("ConfigMap"), 0.0), "{text}");
    assert!(is(&text, &synced("VirtualMachineSnapshot"), 0.0), "{text}");
    let (code, _) = get(e.port, "/readyz").await;
    assert_eq!(code, 503, "ConfigMaps are not listed yet: not ready");
    assert_eq!(get(e.port, "/healthz").await.0, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get(e.port, "/readyz").await.0, 503);

    // The API recovers, except that VirtualMachineSnapshots are still not served.
    sim.clear_faults();
    sim.inject(absent);
    wait_ready(&e, 30).await;
    let text = wait_metrics(&e, "ConfigMaps synced", 5, |t| {
        is(t, &synced("ConfigMap"), 1.0)
    })
    .await;
    assert!(is(&text, &synced("VirtualMachineSnapshot"), 0.0), "{text}");
    assert!(
        text.contains("virtguard_vmi_guest_agent_connected{namespace=\"prod\",name=\"db\""),
        "the other kinds render: {text}"
    );
    assert!(!text.contains("name=\"other\""), "--namespace prod: {text}");
    assert!(
        !text.contains("kubevirt_vmsnapshot_succeeded_timestamp_seconds"),
        "{text}"
    );

    // The CRD "gets installed": the kind is picked up without a restart.
    sim.clear_faults();
    let snaps = Api::<VirtualMachineSnapshot>::namespaced(sim.client().await.unwrap(), "prod");
    let snap: VirtualMachineSnapshot = serde_json::from_value(json!({
        "metadata": {"name": "s1", "namespace": "prod"},
        "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "db"}},
    }))
    .unwrap();
    snaps.create(&PostParams::default(), &snap).await.unwrap();
    snaps
        .patch_status(
            "s1",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Succeeded", "creationTime": "2026-11-22T04:00:00Z"}}),
            ),
        )
        .await
        .unwrap();
    wait_metrics(&e, "the snapshot kind to be picked up", 45, |t| {
        is(t, &synced("VirtualMachineSnapshot"), 1.0)
            && t.contains(
                "kubevirt_vmsnapshot_succeeded_timestamp_seconds{name=\"db\",snapshot_name=\"s1\"",
            )
    })
    .await;
    assert_eq!(get(e.port, "/readyz").await.0, 200);
}

/// Node mode with `--vmi-label-allowlist`: the VMIs of its own node (KubeVirt's
/// `kubevirt.io/nodeName` label) are followed through one watch and their allow-listed labels
/// appear on the libvirt series (libvirt's test driver serves domains named `<ns>_<name>`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_mode_copies_allow_listed_labels_of_its_own_vmis() {
    // db is pinned to node-a (this exporter's node); web to node-b, with a label that must not
    // show. The sim schedules each VMI onto its nodeSelector's node and labels it
    // kubevirt.io/nodeName, as virt-controller does: the test no longer writes that label itself
    // (the sim's controller re-asserted its own node over the test's patch, so the outcome
    // depended on which write came last).
    let sim = Sim::start(SimConfig {
        scenario: Scenario::from_yaml(
            r#"
namespaces: [prod]
vms:
  - {namespace: prod, name: db, node: node-a, labels: {team: blue}}
  - {namespace: prod, name: web, node: node-b, labels: {team: red}}
"#,
            "test",
        )
        .unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = sim.client().await.unwrap();
    let vmis =
        Api::<virtguard_api::kubevirt::VirtualMachineInstance>::namespaced(client.clone(), "prod");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scheduled: Vec<(String, String)> = vmis
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter_map(|v| {
                let node = v.metadata.labels.as_ref()?.get(labels::VMI_NODE_NAME)?;
                Some((v.metadata.name.clone()?, node.clone()))
            })
            .collect();
        if scheduled.len() == 2 {
            assert!(
                scheduled.contains(&("db".into(), "node-a".into()))
                    && scheduled.contains(&("web".into(), "node-b".into())),
                "VMIs scheduled onto their nodeSelector's node: {scheduled:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "VMIs never scheduled: {scheduled:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let xml = dir.path().join("node.xml");
    std::fs::write(
        &xml,
        "<node>\n\
         <domain type='test'><name>prod_db</name><memory>524288</memory><os><type>hvm</type></os></domain>\n\
         <domain type='test'><name>prod_web</name><memory>524288</memory><os><type>hvm</type></os></domain>\n\
         </node>\n",
    )
    .unwrap();
    let uri = format!("test://{}", xml.display());
    let e = start_exporter(
        sim.kubeconfig_path(),
        &[
            "--mode",
            "node",
            "--node-name",
            "node-a",
            "--libvirt-socket-glob",
            "",
            "--libvirt-uri",
            &uri,
            "--vmi-label-allowlist",
            "team",
        ],
    );
    wait_ready(&e, 20).await;
    let db = |team: &str| {
        format!("virtguard_vmi_scrape_success{{namespace=\"prod\",name=\"db\",node=\"node-a\",label_team=\"{team}\"}}")
    };
    let web = "virtguard_vmi_scrape_success{namespace=\"prod\",name=\"web\",node=\"node-a\"}";
    let text = wait_metrics(&e, "db labelled", 10, |t| is(t, &db("blue"), 1.0)).await;
    assert!(
        is(&text, web, 1.0),
        "another node's VMI lends no labels\n{text}"
    );
    assert!(!text.contains("label_team=\"red\""), "{text}");
    assert!(is(
        &text,
        "virtguard_exporter_reflector_objects{kind=\"VirtualMachineInstance\"}",
        1.0
    ));
    promtool_check(&text).unwrap();
    vmis.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "green"}}})),
    )
    .await
    .unwrap();
    wait_metrics(&e, "the new label", 10, |t| {
        is(t, &db("green"), 1.0) && !t.contains("label_team=\"blue\"")
    })
    .await;
}

/// The restore and drill records (`virtguard-restore-status`, `virtguard-drill-status`, written
/// with the api crate's record types) become the `virtguard_restore_*` and
/// `virtguard_restore_test_*` series, and are not mistaken for backup records although the same
/// label selects them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_and_drill_records_become_series() {
    let _ = require_peer!(require_binary("promtool"));
    let sim = start_sim().await;
    let client = sim.client().await.unwrap();
    let e = start_exporter(sim.kubeconfig_path(), &["--mode", "cluster"]);
    wait_ready(&e, 20).await;
    let restore = RestoreStatusRecord {
        last_attempt_timestamp: 1_795_316_400,
        last_success_timestamp: Some(1_795_316_460),
        result: BackupResult::Succeeded,
        reason: None,
        backup_id: Some("prod/db/20261122T030000Z-3f9a".into()),
        source: "prod/db".into(),
        method: "copy".into(),
        duration_seconds: 60.25,
        bytes_written: 9_437_184,
    };
    let drill = DrillStatusRecord {
        last_attempt_timestamp: 1_795_320_000,
        last_success_timestamp: Some(1_795_000_000),
        result: BackupResult::Failed,
        reason: Some("agent-not-connected".into()),
        backup_id: Some("prod/db/20261122T030000Z-3f9a".into()),
        sandbox_namespace: "virtguard-drills".into(),
        duration_seconds: 300.5,
        time_to_ready_seconds: None,
    };
    let cm = |name: &str, key: &str, json: String| -> ConfigMap {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "prod", "labels": {labels::STATUS: "true"}},
            "data": {key: json},
        }))
        .unwrap()
    };
    let cms = Api::<ConfigMap>::namespaced(client.clone(), "prod");
    for c in [
        cm(
            labels::RESTORE_STATUS_CONFIGMAP,
            "db-copy",
            serde_json::to_string(&restore).unwrap(),
        ),
        cm(
            labels::DRILL_STATUS_CONFIGMAP,
            "db",
            serde_json::to_string(&drill).unwrap(),
        ),
    ] {
        cms.create(&PostParams::default(), &c).await.unwrap();
    }
    let r = |m: &str| {
        format!("virtguard_restore_{m}{{namespace=\"prod\",name=\"db-copy\",method=\"copy\"}}")
    };
    let d = |m: &str| format!("virtguard_restore_test_{m}{{namespace=\"prod\",name=\"db\"}}");
    let text = wait_metrics(&e, "restore and drill records", 10, |t| {
        is(t, &r("last_status"), 1.0) && is(t, &d("last_status"), 0.0)
    })
    .await;
    for (series, v) in [
        (r("last_attempt_timestamp_seconds"), 1_795_316_400.0),
        (r("last_success_timestamp_seconds"), 1_795_316_460.0),
        (r("duration_seconds"), 60.25),
        (r("bytes"), 9_437_184.0),
        (d("last_attempt_timestamp_seconds"), 1_795_320_000.0),
        (d("last_success_timestamp_seconds"), 1_795_000_000.0),
        (d("duration_seconds"), 300.5),
    ] {
        assert_eq!(value(&text, &series), Some(v), "{series}\n{text}");
    }
    assert!(
        !text.contains("virtguard_restore_test_time_to_ready_seconds{"),
        "never ready: no sample\n{text}"
    );
    assert!(
        !text.contains("virtguard_backup_"),
        "restore and drill records are not backup records\n{text}"
    );
    promtool_check(&text).unwrap();
}

/// VMI state from the simulated cluster: phase counts of the scenario's running VMIs; a
/// LiveMigrate VMI that is live-migratable is not non-evictable; a VMI given another VMI's MAC
/// makes both collide (the MAC never becomes a label).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmi_phases_eviction_and_duplicate_macs() {
    let _ = require_peer!(require_binary("promtool"));
    let sim = start_sim().await;
    let client = sim.client().await.unwrap();
    let e = start_exporter(sim.kubeconfig_path(), &["--mode", "cluster"]);
    wait_ready(&e, 20).await;
    let running = "virtguard_vmis_in_phase{node=\"sim-node-1\",phase=\"running\"}";
    let evict = |n: &str| {
        format!("kubevirt_vmi_non_evictable{{namespace=\"prod\",name=\"{n}\",node=\"sim-node-1\"}}")
    };
    let dup = |ns: &str, n: &str| {
        format!(
            "virtguard_vmi_duplicate_mac{{namespace=\"{ns}\",name=\"{n}\",interface=\"default\"}}"
        )
    };
    let text = wait_metrics(&e, "three running VMIs", 15, |t| {
        is(t, running, 3.0) && is(t, &evict("web"), 0.0)
    })
    .await;
    assert!(is(&text, &evict("db"), 0.0), "{text}");
    for (ns, n) in [("prod", "db"), ("prod", "web"), ("default", "other")] {
        assert!(
            is(&text, &dup(ns, n), 0.0),
            "{ns}/{n}: distinct MACs\n{text}"
        );
    }

    let vmis = |ns: &str| Api::<VirtualMachineInstance>::namespaced(client.clone(), ns);
    vmis("prod")
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"evictionStrategy": "LiveMigrate"}})),
        )
        .await
        .unwrap();
    // `other` is given db's MAC in its spec (the simulated virt-handler reports it in status).
    let db = vmis("prod").get("db").await.unwrap();
    let db_mac = db.status.unwrap().interfaces.unwrap()[0]
        .mac
        .clone()
        .unwrap();
    vmis("default")
        .patch(
            "other",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"domain": {"devices": {"interfaces": [
                {"name": "default", "masquerade": {}, "macAddress": db_mac.to_uppercase()}
            ]}}}})),
        )
        .await
        .unwrap();
    let text = wait_metrics(&e, "db and other colliding", 15, |t| {
        is(t, &dup("prod", "db"), 1.0) && is(t, &dup("default", "other"), 1.0)
    })
    .await;
    // The simulated virt-handler always reports LiveMigratable=True: the LiveMigrate strategy
    // alone does not make web non-evictable (the positive case is a unit test of vmi_state).
    assert!(is(&text, &evict("web"), 0.0), "{text}");
    assert!(is(&text, &dup("prod", "web"), 0.0), "{text}");
    assert!(
        !text.to_lowercase().contains(&db_mac.to_lowercase()),
        "MACs never become labels\n{text}"
    );
    promtool_check(&text).unwrap();
}
