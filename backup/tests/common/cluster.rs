//! Cluster helpers shared by the backup tests that run against the simulated cluster.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::ListParams;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use virtguard_api::{
    VirtualMachineExport, VirtualMachineInstance, VolumeGroupSnapshot, VolumeSnapshot,
};
use virtguard_sim::{Scenario, Sim, SimConfig};

/// Starts the simulated cluster on `scenario` (YAML) with default timings, and waits until the
/// VMIs `running` (`namespace/name`) are Running, so a backup sees the state the test means.
pub async fn start_sim(scenario: &str, running: &[&str]) -> (Sim, kube::Client) {
    virtguard::cluster::install_crypto_provider();
    let sim = Sim::start(SimConfig {
        scenario: Scenario::from_yaml(scenario, "test").unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = sim.client().await.unwrap();
    for vmi in running {
        let (ns, name) = vmi.split_once('/').unwrap();
        wait_running(&client, ns, name).await;
    }
    (sim, client)
}

/// Runs the real `virtguard` binary on repository `repo` with the sim's kubeconfig (no key,
/// `--quiet`); blocks this worker only, so an in-process sim keeps serving on the others.
pub fn virtguard(sim: &Sim, repo: &Path, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_virtguard"))
            .args(["--repo", repo.to_str().unwrap(), "--quiet"])
            .args(args)
            .env("KUBECONFIG", sim.kubeconfig_path())
            .env_remove("VIRTGUARD_KEY")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
}

async fn count<K>(client: &kube::Client, lp: &ListParams) -> usize
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    Api::<K>::all(client.clone())
        .list(lp)
        .await
        .unwrap()
        .items
        .len()
}

/// Objects of any backup run still in the cluster (snapshots, group snapshots, PVCs, exports,
/// CBT backups, Secrets, Leases), plus PVCs still carrying a run's group-snapshot label.
pub async fn leftovers(client: &kube::Client) -> usize {
    let lp = ListParams::default().labels(&virtguard::cluster::cleanup::selector(None));
    let labelled = ListParams::default().labels(virtguard_api::labels::GROUP_SNAPSHOT);
    count::<VolumeSnapshot>(client, &lp).await
        + count::<VolumeGroupSnapshot>(client, &lp).await
        + count::<PersistentVolumeClaim>(client, &labelled).await
        + count::<PersistentVolumeClaim>(client, &lp).await
        + count::<VirtualMachineExport>(client, &lp).await
        + count::<virtguard_api::VirtualMachineBackup>(client, &lp).await
        + count::<Secret>(client, &lp).await
        + count::<Lease>(client, &lp).await
}

/// Waits (10 s at most) until VMI `ns/name` is Running.
pub async fn wait_running(client: &kube::Client, ns: &str, name: &str) {
    let api = Api::<VirtualMachineInstance>::namespaced(client.clone(), ns);
    tokio::time::timeout(
        Duration::from_secs(10),
        kube::runtime::wait::await_condition(api, name, |v: Option<&VirtualMachineInstance>| {
            v.is_some_and(|v| v.phase() == "Running")
        }),
    )
    .await
    .unwrap()
    .unwrap();
}
