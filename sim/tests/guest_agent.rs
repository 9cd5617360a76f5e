//! The guest-agent subresources `guestosinfo` and `filesystemlist` of a VMI, through the real
//! `kube` client: virt-api's shapes and refusals (404 no VMI, 409 not running, 500 no agent).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use kube::Client;
use serde_json::Value;
use virtguard_sim::{Scenario, Sim, SimConfig};

const SCENARIO: &str = r#"
namespaces: [prod]
vms:
  - {namespace: prod, name: db, disks: [{name: root, size: 1Mi}, {name: data, size: 1Mi}]}
  - {namespace: prod, name: noagent, guestAgent: false, disks: [{name: root, size: 1Mi}]}
  - {namespace: prod, name: off, running: false, disks: [{name: root, size: 1Mi}]}
"#;

async fn get(client: &Client, vmi: &str, what: &str) -> Result<Value, (u16, String)> {
    let req = hyper::Request::get(format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/prod/virtualmachineinstances/{vmi}/{what}"
    ))
    .body(Vec::new())
    .unwrap();
    match client.request::<Value>(req).await {
        Ok(v) => Ok(v),
        Err(kube::Error::Api(s)) => Err((s.code, s.message)),
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

#[tokio::test]
async fn guest_agent_subresources_answer_like_virt_api() {
    let sim = Sim::start(SimConfig {
        scenario: Scenario::from_yaml(SCENARIO, "test").unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = sim.client().await.unwrap();
    // Until the VMI runs: 409 (or 404 before it exists).
    let deadline = Instant::now() + Duration::from_secs(10);
    let fs = loop {
        match get(&client, "db", "filesystemlist").await {
            Ok(v) => break v,
            Err((404 | 409, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("filesystemlist: {e:?}"),
        }
    };
    let items = fs["items"].as_array().unwrap();
    let mounts: Vec<&str> = items
        .iter()
        .map(|f| f["mountPoint"].as_str().unwrap())
        .collect();
    assert_eq!(mounts, ["/", "/mnt/data"], "{fs}");
    assert_eq!(items[0]["diskName"], "vda");
    assert_eq!(items[1]["fileSystemType"], "ext4");

    let info = get(&client, "db", "guestosinfo").await.unwrap();
    assert_eq!(info["hostname"], "db");
    assert_eq!(info["os"]["id"], "sim");
    assert_eq!(info["fsInfo"]["disks"].as_array().unwrap().len(), 2);

    // No agent: virt-api's 500 and message.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (code, msg) = loop {
        match get(&client, "noagent", "guestosinfo").await {
            Err((409 | 404, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => break e,
            Ok(v) => panic!("answered without an agent: {v}"),
        }
    };
    assert_eq!(code, 500);
    assert!(
        msg.contains("VMI does not have guest agent connected"),
        "{msg}"
    );
    // A stopped VM has no VMI: 404.
    let (code, _) = get(&client, "off", "filesystemlist").await.unwrap_err();
    assert_eq!(code, 404);
}
