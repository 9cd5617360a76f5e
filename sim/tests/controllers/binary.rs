//! The `virtguard-sim` binary (honest `--help`, serving a scenario until stopped), the
//! quickstart scenario, and the state directory that resumes objects and disks.

use std::time::Duration;

use kube::api::PostParams;
use kube::Client;
use serde_json::json;
use virtguard_sim::{Scenario, SimConfig};

use crate::common::{obj, prod, sha, start_with, wait_phase, CONFIG_MAP, NAD, SCENARIO, VM, VMI};

#[test]
fn binary_help_is_honest() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_virtguard-sim"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for s in [
        "Not simulated",
        "no scheduler",
        "--scenario",
        "--state-dir",
        "--port",
        "--kubeconfig-out",
    ] {
        assert!(text.contains(s), "--help lacks {s:?}");
    }
}

#[tokio::test]
async fn binary_serves_a_scenario_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let scen = dir.path().join("s.yaml");
    std::fs::write(&scen, SCENARIO).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_virtguard-sim"))
        .args([
            "--scenario",
            scen.to_str().unwrap(),
            "--state-dir",
            dir.path().join("state").to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let path = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = Client::try_from(cfg).unwrap();
    let vms = prod(&client, VM);
    assert!(vms.get("db").await.is_ok());
    assert!(dir.path().join("state/volumes").read_dir().unwrap().count() >= 3);
    child.kill().await.unwrap();
}

#[tokio::test]
async fn quickstart_example_scenario_starts() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart.yaml");
    let scenario = Scenario::from_file(&path).unwrap();
    let (sim, client) = start_with(SimConfig {
        scenario,
        ..Default::default()
    })
    .await;
    let vmis = prod(&client, VMI);
    wait_phase(&vmis, "db", "Running", "db running").await;
    let len = std::fs::metadata(sim.pvc_path("prod", "db-data").unwrap())
        .unwrap()
        .len();
    assert_eq!(len, 1 << 30);
    let nads = prod(&client, NAD);
    assert!(nads.get("br-data").await.is_ok());
}

#[tokio::test]
async fn state_directory_resumes_objects_and_disks() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let scenario = Scenario::from_yaml(SCENARIO, "t").unwrap();
    let want = {
        let (sim, client) = start_with(SimConfig {
            scenario: scenario.clone(),
            state_dir: Some(state.clone()),
            ..Default::default()
        })
        .await;
        let cms = prod(&client, CONFIG_MAP);
        cms.create(&PostParams::default(), &obj(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keep"}, "data": {"a": "b"}})))
            .await
            .unwrap();
        sim.save_state().unwrap();
        sha(&std::fs::read(sim.pvc_path("prod", "db-root").unwrap()).unwrap())
    };
    // An empty scenario this time: everything comes from the state directory.
    let (sim, client) = start_with(SimConfig {
        state_dir: Some(state.clone()),
        ..Default::default()
    })
    .await;
    let cms = prod(&client, CONFIG_MAP);
    assert_eq!(cms.get("keep").await.unwrap().data["data"]["a"], "b");
    assert_eq!(
        sha(&std::fs::read(sim.pvc_path("prod", "db-root").unwrap()).unwrap()),
        want
    );
    let made = cms
        .create(
            &PostParams::default(),
            &obj(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "after"}})),
        )
        .await
        .unwrap();
    let rv: u64 = made.metadata.resource_version.unwrap().parse().unwrap();
    let old: u64 = cms
        .get("keep")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv > old, "resourceVersion continues after a restart");
}
