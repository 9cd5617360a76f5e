//! Benchmark of cluster mode (not a test; prints figures).
//!
//! `cargo run --release -p virtguard-exporter --example cluster_bench`
//!
//! 1. Renders a cluster-mode scrape from synthetic reflector contents: 1,000 VMIMs (all phases),
//!    1,000 VMIs, 1,000 VirtualMachineSnapshots, 500 restored PVCs and 100 status ConfigMaps
//!    of 10 VMs each. Prints time per scrape and bytes.
//! 2. Against the simulated cluster with 1,000 VMIMs: the collector's scrape (reading the
//!    reflector stores) vs one LIST of the VMIMs through the API — what a list-per-scrape design
//!    would pay for that kind alone on every scrape.
#![allow(clippy::unwrap_used)] // benchmark harness

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use virtguard_api::kubevirt::{
    VirtualMachineInstance, VirtualMachineInstanceMigration, VirtualMachineSnapshot,
};
use virtguard_exporter::allowlist::VmiLabelAllowlist;
use virtguard_exporter::cluster::{render_state, ClusterCollector, ClusterConfig, ClusterState};
use virtguard_exporter::render::Exposition;

const PHASES: [&str; 8] = [
    "Pending",
    "Scheduling",
    "Scheduled",
    "PreparingTarget",
    "TargetReady",
    "Running",
    "Succeeded",
    "Failed",
];

fn synthetic() -> ClusterState {
    let vmims = (0..1000)
        .map(|i| {
            Arc::new(
                serde_json::from_value::<VirtualMachineInstanceMigration>(json!({
                    "metadata": {"namespace": format!("ns{}", i % 20), "name": format!("mig-{i}"), "uid": format!("u{i}")},
                    "spec": {"vmiName": format!("vm-{i}")},
                    "status": {"phase": PHASES[i % PHASES.len()], "migrationState": {
                        "startTimestamp": "2026-11-22T04:00:00Z", "endTimestamp": "2026-11-22T04:01:00Z"}},
                }))
                .unwrap(),
            )
        })
        .collect();
    let vmis = (0..1000)
        .map(|i| {
            Arc::new(
                serde_json::from_value::<VirtualMachineInstance>(json!({
                    "metadata": {"namespace": format!("ns{}", i % 20), "name": format!("vm-{i}"), "labels": {"team": "t"}},
                    "status": {"phase": "Running", "nodeName": format!("node-{}", i % 50),
                        "conditions": [{"type": "AgentConnected", "status": "True"}]},
                }))
                .unwrap(),
            )
        })
        .collect();
    let snapshots = (0..1000)
        .map(|i| {
            Arc::new(
                serde_json::from_value::<VirtualMachineSnapshot>(json!({
                    "metadata": {"namespace": format!("ns{}", i % 20), "name": format!("snap-{i}")},
                    "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": format!("vm-{i}")}},
                    "status": {"phase": "Succeeded", "creationTime": "2026-11-22T04:00:00Z"},
                }))
                .unwrap(),
            )
        })
        .collect();
    let pvcs = (0..500)
        .map(|i| {
            Arc::new(
                serde_json::from_value::<PersistentVolumeClaim>(json!({
                    "metadata": {"namespace": format!("ns{}", i % 20), "name": format!("restore-{i}"),
                        "labels": {"restore.kubevirt.io/source-vm-name": format!("vm-{}", i / 2)}},
                    "spec": {"resources": {"requests": {"storage": "10Gi"}}},
                }))
                .unwrap(),
            )
        })
        .collect();
    let rec = r#"{"lastAttemptTimestamp":1795316400,"lastSuccessTimestamp":1795316441,"result":"Succeeded","consistency":"application-consistent","durationSeconds":41.5,"freezeSeconds":0.8,"bytesRead":10737418240,"bytesNew":52428800,"bytesStored":20971520}"#;
    let status = (0..100)
        .map(|i| {
            Arc::new(ConfigMap {
                metadata: kube::api::ObjectMeta {
                    namespace: Some(format!("ns{i}")),
                    name: Some("virtguard-status".into()),
                    ..Default::default()
                },
                data: Some(
                    (0..10)
                        .map(|v| (format!("vm-{v}"), rec.to_string()))
                        .collect(),
                ),
                ..Default::default()
            })
        })
        .collect();
    ClusterState {
        vmims,
        vmis,
        snapshots,
        pvcs,
        status,
    }
}

fn per_round(rounds: u32, mut f: impl FnMut()) -> Duration {
    let t = Instant::now();
    for _ in 0..rounds {
        f();
    }
    t.elapsed() / rounds
}

#[tokio::main]
async fn main() {
    // 1. Rendering from synthetic stores.
    let state = synthetic();
    let allow = VmiLabelAllowlist::parse(&["team".to_string()]).unwrap();
    let mut bytes = 0;
    let t = per_round(50, || {
        let mut out = Exposition::with_capacity(1 << 20);
        render_state(&mut out, &state, &allow);
        bytes = out.as_str().len();
    });
    println!(
        "render: 1000 VMIMs + 1000 VMIs + 1000 snapshots + 500 restored PVCs + 1000 backup records: {t:?} per scrape, {bytes} bytes"
    );

    // 2. Live, against the simulated cluster.
    let scenario = virtguard_sim::Scenario::from_yaml(
        "namespaces: [prod]\nvms:\n  - {namespace: prod, name: db}\n",
        "bench",
    )
    .unwrap();
    let sim = virtguard_sim::Sim::start(virtguard_sim::SimConfig {
        scenario,
        ..Default::default()
    })
    .await
    .unwrap();
    let client = sim.client().await.unwrap();
    let api = Api::<VirtualMachineInstanceMigration>::namespaced(client.clone(), "prod");
    let t = Instant::now();
    for i in 0..1000 {
        let m: VirtualMachineInstanceMigration = serde_json::from_value(json!({
            "metadata": {"name": format!("mig-{i}"), "namespace": "prod"},
            "spec": {"vmiName": "db"},
        }))
        .unwrap();
        api.create(&PostParams::default(), &m).await.unwrap();
    }
    println!("sim: created 1000 VMIMs in {:?}", t.elapsed());
    let c = ClusterCollector::start(client.clone(), ClusterConfig::default());
    while !c.ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the sim's controller walk the migrations to Succeeded.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = c.render();
    let t_scrape = per_round(50, || {
        std::hint::black_box(c.render());
    });
    let t = Instant::now();
    for _ in 0..10 {
        std::hint::black_box(api.list(&ListParams::default()).await.unwrap());
    }
    let t_list = t.elapsed() / 10;
    println!(
        "live: scrape from reflector stores {t_scrape:?} ({} bytes, {} succeeded series) vs one LIST of 1000 VMIMs {t_list:?} (ratio {:.3})",
        text.len(),
        text.matches("\nkubevirt_vmi_migration_succeeded{").count(),
        t_scrape.as_secs_f64() / t_list.as_secs_f64()
    );
}
