//! The KubeVirt `pause` / `unpause` subresources of a VMI, through the real `kube` client: the
//! `Paused` condition (what backup tools read), the VM's printableStatus, and virt-api's
//! conflicts.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::wait::await_condition;
use kube::Client;
use serde_json::Value;
use virtguard_sim::{FaultRule, Scenario, Sim, SimConfig};

const SCENARIO: &str = r#"
namespaces: [prod]
vms:
  - {namespace: prod, name: db, disks: [{name: root, size: 1Mi}]}
  - {namespace: prod, name: off, running: false, disks: [{name: root, size: 1Mi}]}
"#;

async fn start() -> (Sim, Client) {
    let sim = Sim::start(SimConfig {
        scenario: Scenario::from_yaml(SCENARIO, "test").unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = sim.client().await.unwrap();
    (sim, client)
}

fn kubevirt(client: &Client, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("kubevirt.io", "v1", kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
    Api::namespaced_with(client.clone(), "prod", &ar)
}

/// Waits (10 s at most) until `name` satisfies `cond` (a watch, no polling).
async fn wait(api: &Api<DynamicObject>, name: &str, what: &str, cond: fn(&Value) -> bool) {
    let check = move |o: Option<&DynamicObject>| {
        o.and_then(|o| serde_json::to_value(o).ok())
            .is_some_and(|v| cond(&v))
    };
    tokio::time::timeout(
        Duration::from_secs(10),
        await_condition(api.clone(), name, check),
    )
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    .unwrap();
}

/// PUT a VMI subresource; the HTTP status and message of a refusal.
async fn put(client: &Client, vmi: &str, action: &str) -> Result<(), (u16, String)> {
    let req = hyper::Request::put(format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/prod/virtualmachineinstances/{vmi}/{action}"
    ))
    .header("Content-Type", "application/json")
    .body(b"{}".to_vec())
    .unwrap();
    match client.request_text(req).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err((s.code, s.message)),
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

fn paused(v: &Value) -> Option<&Value> {
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Paused")
}

fn printable(v: &Value) -> &str {
    v.pointer("/status/printableStatus")
        .and_then(Value::as_str)
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_sets_the_paused_condition_and_unpause_clears_it() {
    let (_sim, client) = start().await;
    let vmis = kubevirt(&client, "VirtualMachineInstance", "virtualmachineinstances");
    let vms = kubevirt(&client, "VirtualMachine", "virtualmachines");
    wait(&vmis, "db", "the VMI to run", |v| {
        v.pointer("/status/phase") == Some(&"Running".into())
    })
    .await;

    put(&client, "db", "pause").await.unwrap();
    let v = serde_json::to_value(vmis.get("db").await.unwrap()).unwrap();
    let cond = paused(&v).unwrap_or_else(|| panic!("no Paused condition: {v}"));
    assert_eq!(cond["status"], "True");
    assert_eq!(cond["reason"], "PausedByUser");
    assert_eq!(
        v["status"]["phase"], "Running",
        "a paused VMI keeps its phase"
    );
    // The VM controller derives it from the VMI's condition.
    wait(&vms, "db", "printableStatus Paused", |v| {
        printable(v) == "Paused"
    })
    .await;

    let (code, msg) = put(&client, "db", "pause").await.unwrap_err();
    assert_eq!(code, 409);
    assert!(msg.contains("VMI is already paused"), "{msg}");

    put(&client, "db", "unpause").await.unwrap();
    let v = serde_json::to_value(vmis.get("db").await.unwrap()).unwrap();
    assert!(paused(&v).is_none(), "{v}");
    wait(&vms, "db", "printableStatus Running", |v| {
        printable(v) == "Running"
    })
    .await;
    let (code, msg) = put(&client, "db", "unpause").await.unwrap_err();
    assert_eq!(code, 409);
    assert!(msg.contains("VMI is not paused"), "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_is_refused_without_a_running_vmi_and_honours_faults() {
    let (sim, client) = start().await;
    let (code, _) = put(&client, "off", "pause").await.unwrap_err();
    assert_eq!(code, 404, "a stopped VM has no VMI");

    let vmis = kubevirt(&client, "VirtualMachineInstance", "virtualmachineinstances");
    wait(&vmis, "db", "the VMI to run", |v| {
        v.pointer("/status/phase") == Some(&"Running".into())
    })
    .await;
    sim.inject(FaultRule {
        op: "pause".into(),
        target: Some("prod/db".into()),
        status: Some(500),
        call: Some(1),
        ..Default::default()
    });
    let (code, _) = put(&client, "db", "pause").await.unwrap_err();
    assert_eq!(code, 500);
    let v = serde_json::to_value(vmis.get("db").await.unwrap()).unwrap();
    assert!(paused(&v).is_none(), "a failed pause changes nothing: {v}");
    put(&client, "db", "pause").await.unwrap();
}
