//! The real control plane (issue 20): etcd, kube-apiserver and kube-controller-manager built
//! from source by `scripts/control-plane/build.sh` start, report the pinned version, serve the
//! KubeVirt/CDI/CSI CRDs with structural schemas, run their controllers and enforce RBAC.
//! Each test starts its own control plane (`virtguard_e2e::ControlPlane`).

use std::collections::BTreeSet;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;
use virtguard_e2e::control_plane::support::{create, eventually};
use virtguard_e2e::control_plane::{client_from, crds, kubernetes_version};
use virtguard_e2e::{require_peer, workspace_root, ControlPlane};

/// A started control plane, its admin client and a fresh namespace `ns`.
async fn with_namespace(
    ns: &str,
) -> Result<(ControlPlane, kube::Client), virtguard_e2e::PeerError> {
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    let api: Api<Namespace> = Api::all(client.clone());
    create(&api, json!({"metadata": {"name": ns}})).await;
    Ok((cp, client))
}

/// Starts, answers as the pinned release, serves every CRD; and a panic while it runs still
/// stops its three processes and removes its directory (`Drop` runs while unwinding).
#[tokio::test]
async fn starts_at_the_pinned_version_with_every_crd_established_and_stops_on_panic() {
    let cp = require_peer!(ControlPlane::start().await);
    eprintln!(
        "control plane {} started in {:.2?}: {:.2?}",
        kubernetes_version(),
        cp.started_in(),
        cp.milestones()
    );
    let client = cp.client().await.expect("admin client");

    let version = client.apiserver_version().await.expect("GET /version");
    assert_eq!(version.git_version, kubernetes_version(), "{version:?}");
    assert_eq!(version.git_tree_state, "archive", "{version:?}");
    assert_ne!(version.build_date, "1970-01-01T00:00:00Z", "{version:?}");

    let expected: BTreeSet<String> = crds::generate(&workspace_root().join("reference"))
        .expect("CRDs")
        .crds
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str().map(String::from))
        .collect();
    let listed = Api::<CustomResourceDefinition>::all(client)
        .list(&ListParams::default())
        .await
        .expect("list CRDs");
    let established: BTreeSet<String> = listed
        .items
        .iter()
        .filter(|crd| {
            crd.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                })
        })
        .filter_map(|crd| crd.metadata.name.clone())
        .collect();
    assert_eq!(established, expected);

    let pids = cp.pids();
    let dir = cp.dir().to_path_buf();
    assert_eq!(pids.len(), 3, "{pids:?}");
    for (name, pid) in &pids {
        assert!(alive(*pid), "{name} ({pid}) runs");
    }
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _running = cp;
        panic!("a test fails while the control plane runs");
    }));
    assert!(unwound.is_err());
    for (name, pid) in &pids {
        assert!(!alive(*pid), "{name} ({pid}) still runs after the panic");
    }
    assert!(!dir.exists(), "{} is left behind", dir.display());
}

/// True while a process exists and is not a zombie (the handle reaps what it stops).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.rsplit(") ").next().unwrap_or("").starts_with('Z'))
}

/// A VirtualMachine as a user writes one: it goes through the generated structural schema
/// without losing a field (no pruning of what KubeVirt defines, quantities as strings or
/// numbers), and a value of the wrong type is refused by the real API server.
#[tokio::test]
async fn the_generated_kubevirt_schema_keeps_a_real_vm_and_refuses_a_wrong_type() {
    let (_cp, client) = require_peer!(with_namespace("vms").await);
    let gvk = GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachine");
    let vms: Api<DynamicObject> = Api::namespaced_with(client, "vms", &ApiResource::from_gvk(&gvk));
    let spec = json!({
        "runStrategy": "Always",
        "dataVolumeTemplates": [{
            "metadata": {"name": "db-root"},
            "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "1Gi"}}}},
        }],
        "template": {
            "metadata": {"labels": {"app": "db"}},
            "spec": {
                "domain": {
                    "cpu": {"cores": 2},
                    "memory": {"guest": "1Gi"},
                    "resources": {"requests": {"memory": 1_073_741_824_u64}},
                    "devices": {
                        "disks": [{"name": "root", "disk": {"bus": "virtio"}}],
                        "interfaces": [{"name": "default", "masquerade": {}}],
                    },
                },
                "networks": [{"name": "default", "pod": {}}],
                "volumes": [{"name": "root", "dataVolume": {"name": "db-root"}}],
            },
        },
    });
    let vm: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "db"}, "spec": spec,
    }))
    .expect("VM");
    let stored = vms
        .create(&PostParams::default(), &vm)
        .await
        .expect("the real API server accepts a valid VM");
    assert_eq!(
        stored.data["spec"], spec,
        "the schema pruned or changed fields"
    );

    let mut bad = vm.clone();
    bad.metadata.name = Some("bad".into());
    bad.data["spec"]["template"]["spec"]["domain"]["cpu"]["cores"] = json!("two");
    let err = vms
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("cores must be an integer");
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err}");
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status
            .message
            .contains("spec.template.spec.domain.cpu.cores"),
        "{status:?}"
    );
}

/// The Job controller creates the Job's Pod (no kubelet: it stays Pending), the garbage
/// collector deletes it with its Job, and the namespace controller empties and removes a
/// deleted namespace.
#[tokio::test]
async fn the_controllers_run_jobs_collect_garbage_and_delete_namespaces() {
    let (_cp, client) = require_peer!(with_namespace("batch").await);
    let jobs: Api<Job> = Api::namespaced(client.clone(), "batch");
    let job = create(
        &jobs,
        json!({
            "metadata": {"name": "hello"},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "hello", "image": "virtguard:test", "command": ["true"]}],
            }}},
        }),
    )
    .await;
    let uid = job.metadata.uid.clone().expect("uid");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "batch");
    let by_job = ListParams::default().labels("batch.kubernetes.io/job-name=hello");
    let pod = eventually("the Job controller to create the Job's Pod", || async {
        let list = pods.list(&by_job).await.map_err(|e| e.to_string())?;
        Ok(list.items.into_iter().next())
    })
    .await;
    let owner = &pod.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!((owner.kind.as_str(), &owner.uid), ("Job", &uid));
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
    assert_eq!(phase.as_deref(), Some("Pending"), "no kubelet runs it");

    jobs.delete("hello", &DeleteParams::background())
        .await
        .expect("delete Job");
    eventually("the garbage collector to delete the Job's Pod", || async {
        let list = pods.list(&by_job).await.map_err(|e| e.to_string())?;
        Ok(list.items.is_empty().then_some(()))
    })
    .await;

    let namespaces: Api<Namespace> = Api::all(client);
    namespaces
        .delete("batch", &DeleteParams::default())
        .await
        .expect("delete namespace");
    eventually(
        "the namespace controller to remove namespace batch",
        || async {
            let ns = namespaces
                .get_opt("batch")
                .await
                .map_err(|e| e.to_string())?;
            Ok(ns.is_none().then_some(()))
        },
    )
    .await;
}

/// A ServiceAccount's own token authenticates (TokenRequest API) and RBAC refuses it with 403
/// until a Role grants the verb; then the same token is allowed.
#[tokio::test]
async fn rbac_refuses_an_unprivileged_service_account_until_a_role_allows_it() {
    let (cp, admin) = require_peer!(with_namespace("apps").await);
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), "apps");
    create(&accounts, json!({"metadata": {"name": "nobody"}})).await;
    let request: TokenRequest = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["https://kubernetes.default.svc.cluster.local".into()],
            expiration_seconds: Some(600),
            ..Default::default()
        },
        ..Default::default()
    };
    let issued = accounts
        .create_token_request("nobody", &PostParams::default(), &request)
        .await
        .expect("TokenRequest");
    let token = issued.status.expect("token status").token;
    let kubeconfig = cp
        .write_kubeconfig("system:serviceaccount:apps:nobody", &token)
        .expect("kubeconfig");
    let nobody = client_from(&kubeconfig)
        .await
        .expect("service account client");
    let secrets: Api<Secret> = Api::namespaced(nobody, "apps");

    let err = secrets
        .list(&ListParams::default())
        .await
        .expect_err("RBAC must refuse");
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err}");
    };
    assert_eq!(status.code, 403, "{status:?}");
    for part in [
        "system:serviceaccount:apps:nobody",
        "cannot list resource \"secrets\"",
        "in the namespace \"apps\"",
    ] {
        assert!(status.message.contains(part), "{part}: {status:?}");
    }

    let roles: Api<Role> = Api::namespaced(admin.clone(), "apps");
    create(
        &roles,
        json!({"metadata": {"name": "read-secrets"},
               "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}]}),
    )
    .await;
    let bindings: Api<RoleBinding> = Api::namespaced(admin, "apps");
    create(
        &bindings,
        json!({"metadata": {"name": "nobody-reads-secrets"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-secrets"},
               "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": "apps"}]}),
    )
    .await;
    eventually("the RoleBinding to allow listing secrets", || async {
        Ok(secrets.list(&ListParams::default()).await.ok().map(|_| ()))
    })
    .await;
}
