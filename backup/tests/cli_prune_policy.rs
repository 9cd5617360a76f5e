//! `virtguard prune --policy` against the simulated cluster: each VM's `virtguard.io/retention`
//! annotation, its namespace's, the `--keep-*` flags and the default, in that order; a broken
//! annotation keeps every backup of its VM (warning, `InvalidRetentionPolicy` Event); the dry run
//! says what each rule keeps; a cluster that cannot be read deletes nothing.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::cluster::virtguard;
use common::text;

use std::path::Path;

use k8s_openapi::api::core::v1::{Event, Namespace};
use kube::api::{ListParams, Patch, PatchParams};
use kube::Api;
use serde_json::{json, Value};

const SCENARIO: &str = r#"
namespaces: [pol, other]
vms:
  - namespace: pol
    name: annotated
    disks: [{name: root, size: 1Mi, content: zeros}]
  - namespace: pol
    name: inherits
    disks: [{name: root, size: 1Mi, content: zeros}]
  - namespace: pol
    name: broken
    disks: [{name: root, size: 1Mi, content: zeros}]
  - namespace: other
    name: plain
    disks: [{name: root, size: 1Mi, content: zeros}]
"#;

const VMS: [&str; 4] = ["pol/annotated", "pol/inherits", "pol/broken", "other/plain"];

fn ok(o: std::process::Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Backups per VM in the repository.
fn counts(sim: &virtguard_sim::Sim, repo: &Path) -> Vec<usize> {
    let list: Value =
        serde_json::from_str(&ok(virtguard(sim, repo, &["list", "-o", "json"]))).unwrap();
    let list = list.as_array().unwrap();
    VMS.iter()
        .map(|vm| {
            let (ns, name) = vm.split_once('/').unwrap();
            list.iter()
                .filter(|b| b["namespace"] == ns && b["vm"] == name)
                .count()
        })
        .collect()
}

fn plan<'a>(report: &'a Value, vm: &str) -> &'a Value {
    let (ns, name) = vm.split_once('/').unwrap();
    report["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["namespace"] == ns && p["vm"] == name)
        .unwrap_or_else(|| panic!("{vm} missing from {report:#}"))
}

fn kept(plan: &Value) -> usize {
    plan["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["keep"] == true)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_vm_gets_its_own_policy_and_a_broken_one_keeps_everything() {
    let (sim, client) = common::cluster::start_sim(SCENARIO, &[]).await;
    Api::<Namespace>::all(client.clone())
        .patch(
            "pol",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"virtguard.io/retention": "last=2"}}}),
            ),
        )
        .await
        .unwrap();
    let vms = Api::<virtguard_api::VirtualMachine>::namespaced(client.clone(), "pol");
    for (vm, policy) in [("annotated", "last=1"), ("broken", "last=2,dayly=3")] {
        let patch = json!({"metadata": {"annotations": {"virtguard.io/retention": policy}}});
        vms.patch(vm, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![7u8; 256 * 1024]).unwrap();
    ok(virtguard(&sim, &repo, &["init", "--chunk-size", "64KiB"]));
    for vm in VMS {
        for _ in 0..4 {
            ok(virtguard(
                &sim,
                &repo,
                &["backup-file", image.to_str().unwrap(), "--vm", vm],
            ));
        }
    }
    assert_eq!(counts(&sim, &repo), [4, 4, 4, 4]);

    // The dry run: every VM's policy and where it came from, every kept backup with its reasons.
    let out = virtguard(
        &sim,
        &repo,
        &["prune", "--policy", "--dry-run", "-o", "json"],
    );
    let report: Value = serde_json::from_str(&ok(out.clone())).unwrap();
    let annotated = plan(&report, "pol/annotated");
    assert_eq!(annotated["policy"], "last=1");
    assert_eq!(annotated["source"], "vm-annotation");
    assert_eq!(kept(annotated), 1);
    assert_eq!(annotated["backups"][0]["reasons"][0]["rule"], "last");
    let inherits = plan(&report, "pol/inherits");
    assert_eq!(
        (
            inherits["policy"].as_str(),
            inherits["source"].as_str(),
            kept(inherits)
        ),
        (Some("last=2"), Some("namespace-annotation"), 2)
    );
    let plain = plan(&report, "other/plain");
    assert_eq!(plain["source"], "default");
    assert_eq!(plain["policy"], "last=3,daily=7,weekly=4,monthly=6");
    // last=3 keeps the three newest; daily/weekly/monthly keep one more only when the backups
    // straddle a day boundary (UTC midnight during the test), so only the `last` ranks are fixed.
    for (rank, b) in plain["backups"]
        .as_array()
        .unwrap()
        .iter()
        .take(3)
        .enumerate()
    {
        let reasons = b["reasons"].as_array().unwrap();
        assert!(
            reasons
                .iter()
                .any(|r| r["rule"] == "last" && r["rank"] == rank + 1),
            "{b}"
        );
    }
    let plain_removed = 4 - kept(plain);
    assert!(plain_removed <= 1, "{plain:#}");
    let broken = plan(&report, "pol/broken");
    assert_eq!(broken["policy"], Value::Null);
    assert_eq!(kept(broken), 4);
    let warning = broken["warning"].as_str().unwrap();
    assert!(
        warning.contains("column 8") && warning.contains("dayly"),
        "{warning}"
    );
    assert_eq!(
        broken["backups"][0]["reasons"][0]["rule"],
        "no-usable-policy"
    );
    assert!(
        text(&out).contains("warning: VM pol/broken:"),
        "{}",
        text(&out)
    );
    assert_eq!(report["removed"], 3 + 2 + plain_removed);
    assert_eq!(
        counts(&sim, &repo),
        [4, 4, 4, 4],
        "a dry run deletes nothing"
    );

    // The broken annotation is where `kubectl describe vm` shows it.
    let events = Api::<Event>::namespaced(client.clone(), "pol")
        .list(&ListParams::default())
        .await
        .unwrap();
    let e = events
        .items
        .iter()
        .find(|e| e.reason.as_deref() == Some("InvalidRetentionPolicy"))
        .expect("an InvalidRetentionPolicy Event");
    assert_eq!(e.involved_object.name.as_deref(), Some("broken"));
    assert_eq!(e.involved_object.kind.as_deref(), Some("VirtualMachine"));
    assert_eq!(e.type_.as_deref(), Some("Warning"));

    // The table says the same in words.
    let table = ok(virtguard(&sim, &repo, &["prune", "--policy", "--dry-run"]));
    assert!(
        table.contains("pol/annotated: policy last=1 (annotation on the VM)"),
        "{table}"
    );
    assert!(
        table.contains("  keep    ") && table.contains("last #1"),
        "{table}"
    );
    assert!(
        table.contains("no usable policy: everything is kept"),
        "{table}"
    );
    let summary = format!(
        "would remove {} backups, kept {}",
        5 + plain_removed,
        11 - plain_removed
    );
    assert!(table.contains(&summary), "{table}");

    // A cluster that cannot be read stops the prune before anything is deleted.
    let o = tokio::task::block_in_place(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_virtguard"))
            .args([
                "--repo",
                repo.to_str().unwrap(),
                "--quiet",
                "prune",
                "--policy",
            ])
            .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .unwrap()
    });
    assert!(!o.status.success(), "{}", text(&o));
    assert_eq!(counts(&sim, &repo), [4, 4, 4, 4]);

    // The real run; the flags now are the fallback of the VM without any annotation.
    let done = ok(virtguard(
        &sim,
        &repo,
        &["prune", "--policy", "--keep-last", "2"],
    ));
    assert!(done.contains("removed 7 backups, kept 9"), "{done}");
    assert_eq!(counts(&sim, &repo), [1, 2, 4, 2]);
}
