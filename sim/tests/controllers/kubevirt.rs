//! The KubeVirt controller: VM run strategy and start/stop, VMI phases, the freeze/unfreeze
//! subresources (safety thaw, conflicts, a real guest-agent socket), and migration timelines.

use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use virtguard_sim::{FreezeAction, Scenario, Sim, SimConfig, Timings};

use crate::common::{
    field, freeze, obj, prod, start, start_with, subresource, wait_for, wait_phase, SCENARIO, VM,
    VMI, VMIM,
};

#[tokio::test]
async fn freeze_unfreeze_semantics_and_safety_thaw() {
    let (sim, client) = start(
        "faults: [{op: freeze, target: prod/db, call: 4, status: 500, message: injected}]\n",
        None,
    )
    .await;
    let vmis = prod(&client, VMI);
    for vm in ["db", "noagent"] {
        wait_phase(&vmis, vm, "Running", "VMI running").await;
    }
    let cond = field(&vmis, "db", "/status/conditions").await.unwrap();
    assert!(cond
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "AgentConnected" && c["status"] == "True"));

    assert_eq!(freeze(&client, "db", "5m").await, Ok(()));
    assert_eq!(
        field(&vmis, "db", "/status/fsFreezeStatus").await,
        Some(json!("frozen"))
    );
    // Idempotent.
    assert_eq!(freeze(&client, "db", "5m").await, Ok(()));
    assert_eq!(
        subresource(&client, "prod", "db", "unfreeze", "").await,
        Ok(())
    );
    assert_eq!(field(&vmis, "db", "/status/fsFreezeStatus").await, None);
    assert_eq!(
        subresource(&client, "prod", "db", "unfreeze", "").await,
        Ok(())
    );
    // The 3rd freeze call works, the 4th fails by injection.
    assert_eq!(freeze(&client, "db", "5m").await, Ok(()));
    assert_eq!(freeze(&client, "db", "5m").await, Err(500));
    assert_eq!(
        subresource(&client, "prod", "db", "unfreeze", "").await,
        Ok(())
    );

    // Bad requests.
    assert_eq!(
        subresource(&client, "prod", "db", "freeze", "").await,
        Err(400)
    );
    assert_eq!(
        subresource(&client, "prod", "db", "freeze", "{}").await,
        Err(400)
    );
    assert_eq!(freeze(&client, "db", "-1s").await, Err(400));
    assert_eq!(
        subresource(&client, "prod", "db", "freeze", "not json").await,
        Err(400)
    );
    // No agent → error; no VMI → 404.
    assert_eq!(freeze(&client, "noagent", "5m").await, Err(500));
    assert_eq!(freeze(&client, "off", "5m").await, Err(404));

    // Safety thaw after unfreezeTimeout.
    let t0 = chrono::Utc::now();
    assert_eq!(freeze(&client, "db", "300ms").await, Ok(()));
    safety_thaw(&sim).await;
    let log = sim.freeze_log();
    let thaw = log
        .iter()
        .find(|r| r.action == FreezeAction::SafetyThaw)
        .unwrap();
    assert_eq!(thaw.vmi, "prod/db");
    assert!(
        thaw.at - t0 >= chrono::Duration::milliseconds(280),
        "thawed too early"
    );
    assert_eq!(field(&vmis, "db", "/status/fsFreezeStatus").await, None);
    // The log has every call with its answer.
    assert!(log
        .iter()
        .any(|r| r.action == FreezeAction::Freeze && r.status == 500 && r.vmi == "prod/noagent"));
    assert!(log.iter().any(|r| r.action == FreezeAction::Freeze
        && r.status == 200
        && r.unfreeze_timeout_ms == Some(300_000)));
}

#[tokio::test]
async fn freeze_conflicts_when_vmi_not_running() {
    let timings = Timings {
        vmi_start_ms: 60_000,
        ..Default::default()
    };
    let (_sim, client) = start("", Some(timings)).await;
    let vmis = prod(&client, VMI);
    wait_phase(&vmis, "db", "Pending", "VMI pending").await;
    assert_eq!(freeze(&client, "db", "5m").await, Err(409));
}

#[tokio::test]
async fn vm_run_strategy_and_start_stop() {
    let (_sim, client) = start("", None).await;
    let vms = prod(&client, VM);
    let vmis = prod(&client, VMI);
    wait_for(5, "db Running", || async {
        (field(&vms, "db", "/status/printableStatus").await? == "Running").then_some(())
    })
    .await;
    assert_eq!(
        field(&vms, "off", "/status/printableStatus").await,
        Some(json!("Stopped"))
    );
    assert!(vmis.get("off").await.is_err());
    let req = hyper::Request::put(
        "/apis/subresources.kubevirt.io/v1/namespaces/prod/virtualmachines/off/start",
    )
    .body(Vec::new())
    .unwrap();
    client.request_text(req).await.unwrap();
    wait_phase(&vmis, "off", "Running", "off Running").await;
    let owner = field(&vmis, "off", "/metadata/ownerReferences/0/kind").await;
    assert_eq!(owner, Some(json!("VirtualMachine")));
    vms.patch(
        "off",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"runStrategy": "Halted"}})),
    )
    .await
    .unwrap();
    wait_for(5, "off stopped", || async {
        vmis.get("off").await.is_err().then_some(())
    })
    .await;
}

#[tokio::test]
async fn migration_timelines() {
    let (_sim, client) = start(
        "migrations:\n  - {namespace: prod, name: m-fail, vmi: db, timeline: \"Pending:0,Scheduling:50,Running:100,Failed:200\"}\n",
        Some(Timings { migration_step_ms: 30, ..Default::default() }),
    )
    .await;
    let m = prod(&client, VMIM);
    m.create(
        &PostParams::default(),
        &obj(
            json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": "m-ok"}, "spec": {"vmiName": "db"}}),
        ),
    )
    .await
    .unwrap();
    wait_phase(&m, "m-fail", "Failed", "m-fail Failed").await;
    wait_phase(&m, "m-ok", "Succeeded", "m-ok Succeeded").await;
    let ts = field(&m, "m-ok", "/status/phaseTransitionTimestamps")
        .await
        .unwrap();
    let phases: Vec<&str> = ts
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases.first(), Some(&"Pending"));
    assert_eq!(phases.last(), Some(&"Succeeded"));
    let vmis = prod(&client, VMI);
    assert!(field(&vmis, "db", "/status/migrationState/endTimestamp")
        .await
        .is_some());
}

/// A fake QEMU guest agent on a unix socket: answers guest-sync and records fsfreeze commands.
async fn fake_agent(path: std::path::PathBuf) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let seen = s2.clone();
            tokio::spawn(async move {
                let (r, mut w) = conn.into_split();
                let mut lines = tokio::io::BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let v: Value = serde_json::from_str(&line).unwrap();
                    let cmd = v["execute"].as_str().unwrap().to_string();
                    let reply = if cmd == "guest-sync" {
                        json!({"return": v["arguments"]["id"]})
                    } else {
                        json!({"return": 1})
                    };
                    seen.lock().unwrap().push(cmd);
                    w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
                }
            });
        }
    });
    seen
}

#[tokio::test]
async fn freeze_reaches_a_guest_agent_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qga.sock");
    let seen = fake_agent(sock.clone()).await;
    let extra = format!(
        "  - {{namespace: prod, name: real, guestAgentSocket: {}, disks: [{{name: root, size: 1Mi}}]}}\n",
        sock.display()
    );
    let scenario = Scenario::from_yaml(&format!("{SCENARIO}{extra}"), "t").unwrap();
    let (sim, client) = start_with(SimConfig {
        scenario,
        ..Default::default()
    })
    .await;
    let vmis = prod(&client, VMI);
    wait_phase(&vmis, "real", "Running", "real running").await;
    assert_eq!(freeze(&client, "real", "200ms").await, Ok(()));
    safety_thaw(&sim).await;
    let cmds = seen.lock().unwrap().clone();
    assert_eq!(
        cmds,
        [
            "guest-sync",
            "guest-fsfreeze-freeze",
            "guest-sync",
            "guest-fsfreeze-thaw"
        ]
    );
    // A dead agent socket makes freeze fail with 500.
    drop(dir);
    assert_eq!(freeze(&client, "real", "5m").await, Err(500));
}

/// Waits until the sim's freeze log has a safety thaw (`unfreezeTimeout` expired).
async fn safety_thaw(sim: &Sim) {
    wait_for(5, "safety thaw", || async {
        sim.freeze_log()
            .iter()
            .any(|r| r.action == FreezeAction::SafetyThaw)
            .then_some(())
    })
    .await;
}
