//! Jobs whose image is virtguard's run as local processes (Secret env included); others are
//! marked as not simulated.

use kube::api::PostParams;
use serde_json::json;
use virtguard_sim::{Scenario, SimConfig};

use crate::common::{field, obj, prod, start_with, wait_for, JOB, SCENARIO, SECRET};

#[tokio::test]
async fn jobs_run_as_local_processes() {
    let scenario = Scenario::from_yaml(SCENARIO, "t").unwrap();
    let (sim, client) = start_with(SimConfig {
        scenario,
        virtguard_bin: Some("/bin/sh".into()),
        ..Default::default()
    })
    .await;
    let secrets = prod(&client, SECRET);
    secrets
        .create(&PostParams::default(), &obj(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "YmFy"}})))
        .await
        .unwrap();
    let jobs = prod(&client, JOB);
    let job = |name: &str, script: &str, image: &str| {
        obj(
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": image,
                "command": ["virtguard"], "args": ["-c", script],
                "env": [{"name": "FOO", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}}}}),
        )
    };
    jobs.create(
        &PostParams::default(),
        &job(
            "ok",
            "test \"$FOO\" = bar && test -n \"$KUBECONFIG\"",
            "ghcr.io/virtguard/virtguard:dev",
        ),
    )
    .await
    .unwrap();
    jobs.create(
        &PostParams::default(),
        &job("bad", "exit 3", "ghcr.io/virtguard/virtguard:dev"),
    )
    .await
    .unwrap();
    jobs.create(&PostParams::default(), &job("other", "exit 0", "busybox"))
        .await
        .unwrap();
    wait_for(10, "ok succeeded", || async {
        (field(&jobs, "ok", "/status/succeeded").await? == json!(1)).then_some(())
    })
    .await;
    wait_for(10, "bad failed", || async {
        (field(&jobs, "bad", "/status/failed").await? == json!(1)).then_some(())
    })
    .await;
    assert_eq!(
        field(&jobs, "other", "/status/conditions/0/reason").await,
        Some(json!("ImageNotSimulated"))
    );
    let msg = field(&jobs, "bad", "/status/conditions/0/message")
        .await
        .unwrap();
    assert!(msg.as_str().unwrap().contains("code 3"));
    let runs = sim.job_runs();
    assert!(runs
        .iter()
        .any(|r| r.job == "prod/bad" && r.exit_code == Some(3)));
    assert!(runs
        .iter()
        .any(|r| r.job == "prod/ok" && r.exit_code == Some(0)));
}
