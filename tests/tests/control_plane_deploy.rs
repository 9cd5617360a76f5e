//! `deploy/` on a real kube-apiserver (issue 20), with a stock kubectl: `kubectl apply -k
//! deploy/` succeeds once the prometheus-operator CRDs are installed (the upstream files in
//! `reference/prometheus-operator-crds/`), and applying it again — client-side, then
//! server-side (which takes the fields over from the client-side manager), then server-side
//! once more — succeeds and changes no object. A run started from the CronJob gets its Pod from
//! the real Job controller, as the backup ServiceAccount and with the Job's name in the label
//! its `VIRTGUARD_OWNER_JOB` reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::Value;
use virtguard_e2e::control_plane::crds;
use virtguard_e2e::control_plane::support::eventually;
use virtguard_e2e::{require_kubectl, require_peer, workspace_root, ControlPlane};

/// A stock kubectl on one cluster, with a HOME of its own (its discovery cache).
struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    home: tempfile::TempDir,
}

impl Kubectl {
    fn new(bin: PathBuf, kubeconfig: &Path) -> Kubectl {
        Kubectl {
            bin,
            kubeconfig: kubeconfig.to_path_buf(),
            home: tempfile::tempdir().expect("a temporary HOME"),
        }
    }

    async fn run(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(&self.bin)
            .args(args)
            .current_dir(workspace_root())
            .env_clear()
            .env("HOME", self.home.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .kill_on_drop(true)
            .output()
            .await
            .expect("kubectl runs")
    }

    /// Runs kubectl and returns its stdout, or panics with everything it said.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success(),
            "kubectl {} failed ({}):\n{stderr}\n{stdout}",
            args.join(" "),
            out.status
        );
        stdout.into_owned()
    }

    /// `kind namespace/name` → resourceVersion of every object of the bundle.
    async fn versions(&self) -> BTreeMap<String, String> {
        let text = self.ok(&["get", "-k", "deploy/", "-o", "json"]).await;
        let list: Value = serde_json::from_str(&text).expect("a JSON list");
        let items = list["items"].as_array().cloned().unwrap_or_default();
        items
            .iter()
            .map(|o| {
                let m = &o["metadata"];
                (
                    format!(
                        "{} {}/{}",
                        o["kind"].as_str().unwrap_or("?"),
                        m["namespace"].as_str().unwrap_or(""),
                        m["name"].as_str().unwrap_or("?")
                    ),
                    m["resourceVersion"].as_str().unwrap_or("?").to_string(),
                )
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_k_deploy_succeeds_and_is_idempotent_client_and_server_side() {
    let kubectl = require_peer!(require_kubectl());
    let cp = require_peer!(ControlPlane::start().await);
    let reference = workspace_root().join("reference");
    let monitoring = crds::prometheus_operator(&reference).expect("prometheus-operator CRDs");
    let served: Vec<String> = monitoring
        .iter()
        .filter_map(|c| c["spec"]["names"]["kind"].as_str().map(String::from))
        .collect();
    cp.install_crds(monitoring)
        .await
        .expect("the prometheus-operator CRDs install");
    let k = Kubectl::new(kubectl, cp.kubeconfig());

    // Every prometheus-operator kind the bundle uses has its CRD installed.
    let rendered = k.ok(&["kustomize", "deploy/"]).await;
    let mut objects = 0;
    for doc in serde_yaml::Deserializer::from_str(&rendered) {
        let o: Value = serde::Deserialize::deserialize(doc).expect("a YAML document");
        objects += 1;
        if o["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("monitoring.coreos.com/"))
        {
            let kind = o["kind"].as_str().unwrap_or("?");
            assert!(
                served.iter().any(|s| s == kind),
                "deploy/ uses {kind}: add its CRD to reference/{}",
                crds::PROMETHEUS_OPERATOR_CRDS
            );
        }
    }

    let applied = k.ok(&["apply", "-k", "deploy/"]).await;
    let first = k.versions().await;
    assert_eq!(first.len(), objects, "{applied}\n{first:?}");

    k.ok(&["apply", "-k", "deploy/"]).await;
    assert_eq!(
        k.versions().await,
        first,
        "a second client-side apply changed objects"
    );

    // Server-side apply takes the fields over from kubectl's client-side manager. A field of an
    // atomic struct the server defaults (an env `fieldRef` without `apiVersion`) conflicts here.
    k.ok(&["apply", "--server-side", "-k", "deploy/"]).await;
    let server_side = k.versions().await;
    k.ok(&["apply", "--server-side", "-k", "deploy/"]).await;
    assert_eq!(
        k.versions().await,
        server_side,
        "a second server-side apply changed objects"
    );

    // A run of the CronJob (as `kubectl create job --from` starts one): the real Job controller
    // makes its Pod, which runs as the backup ServiceAccount with its token mounted, and carries
    // the label the downward API hands to the binary as VIRTGUARD_OWNER_JOB.
    k.ok(&[
        "create",
        "job",
        "--from=cronjob/virtguard-backup",
        "nightly-manual",
        "-n",
        "virtguard",
    ])
    .await;
    let pods: Api<Pod> = Api::namespaced(cp.client().await.expect("client"), "virtguard");
    let by_job = ListParams::default().labels("batch.kubernetes.io/job-name=nightly-manual");
    let pod = eventually("the Job controller to create the run's Pod", || async {
        let list = pods.list(&by_job).await.map_err(|e| e.to_string())?;
        Ok(list.items.into_iter().next())
    })
    .await;
    let spec = pod.spec.clone().unwrap_or_default();
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some("virtguard-backup")
    );
    let mounts = spec.containers[0].volume_mounts.clone().unwrap_or_default();
    assert!(
        mounts
            .iter()
            .any(|m| m.mount_path == "/var/run/secrets/kubernetes.io/serviceaccount"),
        "no service-account token mounted: {mounts:?}"
    );
    let env = spec.containers[0].env.clone().unwrap_or_default();
    let owner = env
        .iter()
        .find(|e| e.name == "VIRTGUARD_OWNER_JOB")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.clone())
        .expect("VIRTGUARD_OWNER_JOB from the downward API");
    let label = owner
        .strip_prefix("metadata.labels['")
        .and_then(|l| l.strip_suffix("']"))
        .expect("a label path");
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(label).map(String::as_str),
        Some("nightly-manual"),
        "{labels:?}"
    );
}
