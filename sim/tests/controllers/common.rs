//! Helpers shared by the controller tests: a sim started from [`SCENARIO`] (plus extra scenario
//! text), dynamic APIs, polling with a deadline, and HTTPS clients trusting the sim's CA.

use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde_json::Value;
use sha2::{Digest, Sha256};
use virtguard_sim::{Scenario, Sim, SimConfig, Timings};

pub const SCENARIO: &str = r#"
namespaces: [prod]
vms:
  - {namespace: prod, name: db, disks: [{name: root, size: 4Mi, content: {random: 7}, used: 3Mi}]}
  - {namespace: prod, name: noagent, guestAgent: false, disks: [{name: root, size: 1Mi}]}
  - {namespace: prod, name: off, running: false, disks: [{name: root, size: 2Mi, content: {pattern: "virtguard"}}]}
"#;

/// A sim of [`SCENARIO`] plus `extra` scenario text.
pub async fn start(extra: &str, timings: Option<Timings>) -> (Sim, Client) {
    let scenario = Scenario::from_yaml(&format!("{SCENARIO}{extra}"), "test").unwrap();
    start_with(SimConfig {
        scenario,
        timings,
        ..Default::default()
    })
    .await
}

/// A sim of `config`, and a client of it.
pub async fn start_with(config: SimConfig) -> (Sim, Client) {
    let sim = Sim::start(config).await.unwrap();
    let client = sim.client().await.unwrap();
    (sim, client)
}

pub fn dyn_api(
    client: &Client,
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    ns: &str,
) -> Api<DynamicObject> {
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    Api::namespaced_with(client.clone(), ns, &ar)
}

pub fn obj(v: Value) -> DynamicObject {
    serde_json::from_value(v).unwrap()
}

/// A kind the tests use: (group, version, kind, plural).
pub type Gvk = (&'static str, &'static str, &'static str, &'static str);

pub const VM: Gvk = ("kubevirt.io", "v1", "VirtualMachine", "virtualmachines");
pub const VMI: Gvk = (
    "kubevirt.io",
    "v1",
    "VirtualMachineInstance",
    "virtualmachineinstances",
);
pub const VMIM: Gvk = (
    "kubevirt.io",
    "v1",
    "VirtualMachineInstanceMigration",
    "virtualmachineinstancemigrations",
);
pub const VOLUME_SNAPSHOT: Gvk = (
    "snapshot.storage.k8s.io",
    "v1",
    "VolumeSnapshot",
    "volumesnapshots",
);
pub const PVC: Gvk = ("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims");
pub const EXPORT: Gvk = (
    "export.kubevirt.io",
    "v1",
    "VirtualMachineExport",
    "virtualmachineexports",
);
pub const DATA_VOLUME: Gvk = ("cdi.kubevirt.io", "v1beta1", "DataVolume", "datavolumes");
pub const UPLOAD_TOKEN_REQUEST: Gvk = (
    "upload.cdi.kubevirt.io",
    "v1beta1",
    "UploadTokenRequest",
    "uploadtokenrequests",
);
pub const NAD: Gvk = (
    "k8s.cni.cncf.io",
    "v1",
    "NetworkAttachmentDefinition",
    "network-attachment-definitions",
);
pub const SECRET: Gvk = ("", "v1", "Secret", "secrets");
pub const JOB: Gvk = ("batch", "v1", "Job", "jobs");
pub const CONFIG_MAP: Gvk = ("", "v1", "ConfigMap", "configmaps");

/// The API of a kind in namespace `prod`, where the scenario's objects live.
pub fn prod(client: &Client, (group, version, kind, plural): Gvk) -> Api<DynamicObject> {
    dyn_api(client, group, version, kind, plural, "prod")
}

/// Poll `f` until it returns Some, or panic after `secs`.
pub async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits up to 5 s until `/status/phase` of `name` is `phase`; `what` names the wait in the
/// timeout message.
pub async fn wait_phase(api: &Api<DynamicObject>, name: &str, phase: &str, what: &str) {
    wait_for(5, what, || async {
        (field(api, name, "/status/phase").await? == phase).then_some(())
    })
    .await;
}

pub async fn field(api: &Api<DynamicObject>, name: &str, ptr: &str) -> Option<Value> {
    let o = api.get(name).await.ok()?;
    serde_json::to_value(&o)
        .ok()?
        .pointer(ptr)
        .cloned()
        .filter(|v| !v.is_null())
}

/// PUT to a KubeVirt subresource; Ok(()) on 2xx, Err(status code) otherwise.
pub async fn subresource(
    client: &Client,
    ns: &str,
    vmi: &str,
    action: &str,
    body: &str,
) -> Result<(), u16> {
    let req = hyper::Request::put(format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{vmi}/{action}"
    ))
    .header("Content-Type", "application/json")
    .body(body.as_bytes().to_vec())
    .unwrap();
    match client.request_text(req).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err(s.code),
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

/// Freezes VMI `prod/<vmi>` with the given `unfreezeTimeout` (a Go duration).
pub async fn freeze(client: &Client, vmi: &str, unfreeze_timeout: &str) -> Result<(), u16> {
    let body = format!(r#"{{"unfreezeTimeout":"{unfreeze_timeout}"}}"#);
    subresource(client, "prod", vmi, "freeze", &body).await
}

pub fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn export_http(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}
