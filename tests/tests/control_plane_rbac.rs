//! deploy/'s RBAC proved with the real authorizer (issue 20).
//!
//! 1. The real binaries run against the sim with its audit trail on (`virtguard_sim::audit`):
//!    the CronJob's `virtguard backup` (a VM with two disks on a driver with a group snapshot
//!    class and a guest agent, a changed-block-tracking VM, a VM without agent on a plain CSI
//!    driver), `virtguard cleanup`, the same backup with `--dispatch jobs` (the dispatcher owned
//!    by a Job made from the CronJob's template, its per-VM Jobs run by the sim), the drill
//!    CronJob's `virtguard drill` into the sandbox namespace (two VMs drilled, one without guest
//!    agent failing), and the exporter's cluster mode until `/readyz`. That records every
//!    request each made.
//! 2. On a real kube-apiserver with `kubectl apply -k deploy/`, every recorded request is
//!    replayed as a SubjectAccessReview for the ServiceAccount deploy/ runs it as: each must be
//!    allowed, by a rule of deploy/ (not only by a default role).
//! 3. Each rule of deploy/'s roles is removed in turn: exactly the requests no other rule covers
//!    become denied. Rules (and verbs/resources of a rule) no request used are printed.
//! 4. The binaries on the real server as the ServiceAccounts: the exporter becomes ready, and
//!    without its VirtualMachineSnapshot rule counts the 403 (`reason="forbidden"`) and is not
//!    ready; with the VirtualMachine rule removed, `virtguard backup` fails with the 403 naming
//!    the verb and the resource.
//!
//! Needs `cargo build -p virtguard -p virtguard-exporter --bins` first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use kube::api::{Api, PostParams};
use serde_json::{json, Value};
use virtguard_e2e::control_plane::crds;
use virtguard_e2e::control_plane::support::eventually;
use virtguard_e2e::{
    free_port, require_kubectl, require_peer, workspace_bin, workspace_root, ControlPlane,
};
use virtguard_sim::audit::{self, AuditRecord};
use virtguard_sim::{Scenario, Sim, SimConfig};

const NS: &str = "virtguard";
const BACKUP_SA: &str = "virtguard-backup";
const EXPORTER_SA: &str = "virtguard-exporter-cluster";
const DRILL_SA: &str = "virtguard-drill";
/// The drill CronJob's sandbox namespace (deploy/drill), where its Role is.
const SANDBOX: &str = "virtguard-drills";

const SCENARIO: &str = r#"
namespaces: [prod, dev, virtguard, virtguard-drills]
storageClasses:
  - {name: ceph-rbd, driver: rbd.csi.ceph.com, default: true, snapshotClass: ceph-rbd-snap, groupSnapshotClass: ceph-rbd-group}
  - {name: local, driver: local.csi.example.com, snapshotClass: local-snap}
vms:
  - namespace: prod
    name: db
    disks:
      - {name: root, size: 4Mi, content: {random: 1}}
      - {name: data, size: 4Mi, content: {random: 2}}
  - namespace: prod
    name: tracked
    changedBlockTracking: true
    disks:
      - {name: root, size: 4Mi, content: {random: 3}}
  - namespace: dev
    name: web
    guestAgent: false
    disks:
      - {name: root, size: 4Mi, storageClass: local, content: {random: 4}}
"#;

/// What each client did against the sim, by the ServiceAccount deploy/ runs it as.
struct Recorded {
    by_account: BTreeMap<&'static str, BTreeSet<AuditRecord>>,
}

fn text(o: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The real `virtguard` with this repository and kubeconfig; nothing else from the
/// environment that could change what it does.
fn virtguard(repo: &Path, kubeconfig: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let bin = workspace_bin("virtguard").unwrap_or_else(|e| panic!("{e}"));
    let mut c = Command::new(bin);
    c.args(["--repo", &repo.display().to_string()])
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("VIRTGUARD_OWNER_JOB")
        .env_remove("POD_NAMESPACE")
        .env_remove("VIRTGUARD_KEY")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    tokio::task::block_in_place(|| c.output()).expect("virtguard runs")
}

/// The backup CronJob (deploy/backup/cronjob.yaml).
fn cronjob() -> Value {
    cronjob_of("backup")
}

/// The CronJob of deploy/`dir`/cronjob.yaml.
fn cronjob_of(dir: &str) -> Value {
    let path = workspace_root().join(format!("deploy/{dir}/cronjob.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    serde_yaml::from_str(&text).expect("cronjob.yaml")
}

fn cronjob_args(cj: &Value) -> Vec<String> {
    cj.pointer("/spec/jobTemplate/spec/template/spec/containers/0/args")
        .and_then(Value::as_array)
        .expect("the CronJob's args")
        .iter()
        .filter_map(|a| a.as_str().map(String::from))
        .collect()
}

/// Audit records written since `from` (a line count), without the User-Agent.
fn since(log: &Path, from: usize) -> (BTreeSet<AuditRecord>, usize) {
    let all = audit::read(log).expect("the audit log");
    let n = all.len();
    let set = all
        .into_iter()
        .skip(from)
        .map(|mut r| {
            r.user_agent.clear();
            r
        })
        .collect();
    (set, n)
}

/// Polls `ok` until it holds, or panics after `REACT` naming `what`.
async fn until<F, Fut>(what: &str, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually(what, || {
        let check = ok();
        async move { Ok(check.await.then_some(())) }
    })
    .await
}

/// An HTTP GET on 127.0.0.1:`port`: status and body, or 0 when nothing answers.
fn http_get(port: u16, path: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    match agent.get(&format!("http://127.0.0.1:{port}{path}")).call() {
        Ok(mut r) => (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(_) => (0, String::new()),
    }
}

fn http_status(port: u16, path: &str) -> u16 {
    http_get(port, path).0
}

/// The cluster-mode exporter on `kubeconfig`, stopped on drop.
struct Exporter {
    child: std::process::Child,
    port: u16,
}

impl Exporter {
    fn start(kubeconfig: &Path) -> Exporter {
        let port = free_port();
        let bin = workspace_bin("virtguard-exporter").unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(bin)
            .args([
                "--mode",
                "cluster",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the exporter starts");
        Exporter { child, port }
    }

    async fn wait_ready(&self) {
        let port = self.port;
        until(
            "the cluster exporter's /readyz to answer 200",
            || async move { tokio::task::block_in_place(|| http_status(port, "/readyz")) == 200 },
        )
        .await;
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Step 1: the binaries against the sim, with its audit trail.
async fn record() -> Recorded {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("audit.jsonl");
    let repo = dir.path().join("repo");
    let sim = Sim::start(SimConfig {
        scenario: Scenario::from_yaml(SCENARIO, "rbac").expect("scenario"),
        virtguard_bin: Some(workspace_bin("virtguard").unwrap_or_else(|e| panic!("{e}"))),
        audit_log: Some(log.clone()),
        ..Default::default()
    })
    .await
    .expect("the sim starts");
    let kubeconfig = sim.kubeconfig_path().to_path_buf();
    let client = sim.client().await.expect("sim client");
    let o = virtguard(&repo, &kubeconfig, &[], &["init"]);
    assert!(o.status.success(), "{}", text(&o));
    // The repository Secret the CronJob's pods (and the per-VM Jobs) read.
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "virtguard-repo", "namespace": NS},
        "stringData": {"VIRTGUARD_REPO": repo.display().to_string()},
    }))
    .expect("Secret");
    Api::<Secret>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the Secret");
    let vmis = [("prod", "db"), ("prod", "tracked"), ("dev", "web")];
    for (ns, name) in vmis {
        let sim = &sim;
        until(&format!("VMI {ns}/{name} to run"), || async move {
            sim.object("kubevirt.io", "virtualmachineinstances", ns, name)
                .is_some_and(|v| v["status"]["phase"] == "Running")
        })
        .await;
    }
    // --dispatch jobs runs as the CronJob's Job: one made from the CronJob's template (whose
    // pod template the per-VM Jobs copy). The sim runs it too, so it only prints a version.
    let cj = cronjob();
    let mut job = cj["spec"]["jobTemplate"].clone();
    job["metadata"] = json!({"name": "nightly", "namespace": NS});
    job["spec"]["template"]["spec"]["containers"][0]["args"] = json!(["--version"]);
    let job: Job = serde_json::from_value(job).expect("the CronJob's Job");
    Api::<Job>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &job)
        .await
        .expect("create the CronJob's Job");
    // Everything before this line is the test's own setup.
    let (_, mark) = since(&log, 0);

    let args = cronjob_args(&cj);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pod_env = [("POD_NAMESPACE", NS), ("VIRTGUARD_OWNER_JOB", "nightly")];
    let o = virtguard(&repo, &kubeconfig, &pod_env, &args);
    assert!(o.status.success(), "the CronJob's backup: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for vm in ["prod/db", "prod/tracked", "dev/web"] {
        assert!(out.contains(vm), "{vm} not backed up: {}", text(&o));
    }
    let o = virtguard(&repo, &kubeconfig, &pod_env, &["cleanup"]);
    assert!(o.status.success(), "cleanup: {}", text(&o));
    args.push("--dispatch=jobs");
    let o = virtguard(&repo, &kubeconfig, &pod_env, &args);
    assert!(o.status.success(), "--dispatch jobs: {}", text(&o));
    let children: Vec<_> = sim
        .job_runs()
        .into_iter()
        .filter(|r| r.args.iter().any(|a| a == "--vm"))
        .collect();
    assert_eq!(children.len(), 3, "one Job per VM: {children:?}");
    assert!(
        children.iter().all(|r| r.exit_code == Some(0)),
        "{children:?}"
    );
    let (backup, mark) = since(&log, mark);

    // The drill CronJob's command, with a short boot timeout: dev/web has no guest agent, so its
    // drill fails after it (a failure path, recorded like a success).
    let args = cronjob_args(&cronjob_of("drill"));
    assert!(args.iter().any(|a| a == SANDBOX), "{args:?}");
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--boot-timeout=20s", "-o", "json"]);
    let o = virtguard(&repo, &kubeconfig, &[], &args);
    let reports: Vec<Value> = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("the drill's JSON ({e}): {}", text(&o)));
    let outcome: BTreeMap<&str, (bool, &str)> = reports
        .iter()
        .map(|r| {
            (
                r["source"].as_str().unwrap_or(""),
                (r["succeeded"] == true, r["reason"].as_str().unwrap_or("")),
            )
        })
        .collect();
    assert_eq!(
        outcome,
        BTreeMap::from([
            ("prod/db", (true, "")),
            ("prod/tracked", (true, "")),
            ("dev/web", (false, "agent-not-connected")),
        ]),
        "{}",
        text(&o)
    );
    assert!(!o.status.success(), "a drill failed: {}", text(&o));
    let (drill, mark) = since(&log, mark);
    // It wrote in the sandbox only, apart from its status ConfigMaps.
    let outside: Vec<&AuditRecord> = drill
        .iter()
        .filter(|r| !matches!(r.verb.as_str(), "get" | "list" | "watch"))
        .filter(|r| r.namespace.as_deref() != Some(SANDBOX))
        .filter(|r| {
            r.resource.as_deref() != Some("configmaps")
                || (r.verb != "create" && r.name.as_deref() != Some("virtguard-drill-status"))
        })
        .collect();
    assert!(
        outside.is_empty(),
        "the drill wrote outside {SANDBOX}: {outside:?}"
    );
    assert!(
        drill
            .iter()
            .any(|r| r.resource.as_deref() == Some("configmaps")
                && r.verb == "create"
                && r.namespace.as_deref() == Some("dev")),
        "the drill did not record dev/web's failure in its namespace"
    );

    let exporter = Exporter::start(&kubeconfig);
    exporter.wait_ready().await;
    let port = exporter.port;
    let metrics = tokio::task::block_in_place(|| http_status(port, "/metrics"));
    assert_eq!(metrics, 200);
    drop(exporter);
    let (exporter, _) = since(&log, mark);
    Recorded {
        by_account: BTreeMap::from([
            (BACKUP_SA, backup),
            (EXPORTER_SA, exporter),
            (DRILL_SA, drill),
        ]),
    }
}

/// A role of deploy/ that is bound to one of its ServiceAccounts.
#[derive(Debug, Clone, Copy)]
struct RoleOf {
    account: &'static str,
    /// `None`: a ClusterRole (bound cluster-wide); `Some(ns)`: a Role of that namespace.
    namespace: Option<&'static str>,
    name: &'static str,
}

/// deploy/'s roles and who they are bound to (checked against the applied bindings).
const ROLES: &[RoleOf] = &[
    RoleOf {
        account: BACKUP_SA,
        namespace: None,
        name: "virtguard-backup",
    },
    RoleOf {
        account: BACKUP_SA,
        namespace: Some(NS),
        name: "virtguard-backup-dispatch",
    },
    RoleOf {
        account: EXPORTER_SA,
        namespace: None,
        name: "virtguard-exporter-cluster",
    },
    RoleOf {
        account: DRILL_SA,
        namespace: None,
        name: "virtguard-drill",
    },
    RoleOf {
        account: DRILL_SA,
        namespace: Some(SANDBOX),
        name: "virtguard-drill",
    },
];

fn user(account: &str) -> String {
    format!("system:serviceaccount:{NS}:{account}")
}

/// Whether `rule` (of a role bound in `namespace`, None = cluster-wide) grants `r`.
fn grants(rule: &PolicyRule, namespace: Option<&str>, r: &AuditRecord) -> bool {
    let Some(resource) = &r.resource else {
        return false;
    };
    if namespace.is_some() && r.namespace.as_deref() != namespace {
        return false;
    }
    let full = match &r.subresource {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.clone(),
    };
    let any = |list: &Option<Vec<String>>, want: &str| {
        list.iter().flatten().any(|x| x == "*" || x == want)
    };
    any(&rule.api_groups, r.group.as_deref().unwrap_or(""))
        && any(&rule.resources, &full)
        && rule.verbs.iter().any(|v| v == "*" || *v == r.verb)
        && rule.resource_names.as_ref().is_none_or(|names| {
            names.is_empty() || r.name.as_ref().is_some_and(|n| names.contains(n))
        })
}

/// The real authorizer's answer for `account` doing `r`.
async fn allowed(admin: &kube::Client, account: &str, r: &AuditRecord) -> bool {
    let (resource_attributes, non_resource_attributes) = match &r.path {
        Some(path) => (
            None,
            Some(NonResourceAttributes {
                path: Some(path.clone()),
                verb: Some(r.verb.clone()),
            }),
        ),
        None => (
            Some(ResourceAttributes {
                verb: Some(r.verb.clone()),
                group: r.group.clone(),
                resource: r.resource.clone(),
                subresource: r.subresource.clone(),
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                ..Default::default()
            }),
            None,
        ),
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user(account)),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{NS}"),
                "system:authenticated".into(),
            ]),
            resource_attributes,
            non_resource_attributes,
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap_or_else(|e| panic!("SubjectAccessReview for {r:?}: {e}"));
    answer.status.is_some_and(|s| s.allowed)
}

async fn rules_of(admin: &kube::Client, role: RoleOf) -> Vec<PolicyRule> {
    match role.namespace {
        None => Api::<ClusterRole>::all(admin.clone())
            .get(role.name)
            .await
            .unwrap_or_else(|e| panic!("ClusterRole {}: {e}", role.name))
            .rules
            .unwrap_or_default(),
        Some(ns) => Api::<Role>::namespaced(admin.clone(), ns)
            .get(role.name)
            .await
            .unwrap_or_else(|e| panic!("Role {ns}/{}: {e}", role.name))
            .rules
            .unwrap_or_default(),
    }
}

async fn set_rules(admin: &kube::Client, role: RoleOf, rules: Vec<PolicyRule>) {
    let patch = kube::api::Patch::Merge(json!({ "rules": rules }));
    let params = kube::api::PatchParams::default();
    match role.namespace {
        None => Api::<ClusterRole>::all(admin.clone())
            .patch(role.name, &params, &patch)
            .await
            .map(drop),
        Some(ns) => Api::<Role>::namespaced(admin.clone(), ns)
            .patch(role.name, &params, &patch)
            .await
            .map(drop),
    }
    .unwrap_or_else(|e| panic!("updating the rules of {role:?}: {e}"));
}

/// A kubeconfig authenticating as `account` (a token from the TokenRequest API).
async fn kubeconfig_of(cp: &ControlPlane, admin: &kube::Client, account: &str) -> PathBuf {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["https://kubernetes.default.svc.cluster.local".into()],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let issued = Api::<ServiceAccount>::namespaced(admin.clone(), NS)
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {account}: {e}"));
    let token = issued.status.expect("token status").token;
    cp.write_kubeconfig(&user(account), &token)
        .expect("kubeconfig")
}

fn describe(r: &AuditRecord) -> String {
    match &r.path {
        Some(p) => format!("{} {p}", r.verb),
        None => format!(
            "{} {}{}.{} {}/{}",
            r.verb,
            r.resource.as_deref().unwrap_or(""),
            r.subresource
                .as_deref()
                .map(|s| format!("/{s}"))
                .unwrap_or_default(),
            r.group.as_deref().unwrap_or(""),
            r.namespace.as_deref().unwrap_or("*"),
            r.name.as_deref().unwrap_or("*"),
        ),
    }
}

/// Self reviews and discovery every authenticated user may make (default roles).
fn by_default_roles(r: &AuditRecord) -> bool {
    r.path.is_some()
        || (r.group.as_deref() == Some("authorization.k8s.io")
            && matches!(
                r.resource.as_deref(),
                Some("selfsubjectaccessreviews" | "selfsubjectrulesreviews")
            ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_rbac_allows_every_request_the_binaries_make_and_each_rule_is_needed() {
    let kubectl = require_peer!(require_kubectl());
    for bin in ["virtguard", "virtguard-exporter"] {
        require_peer!(workspace_bin(bin));
    }
    let recorded = record().await;
    let cp = require_peer!(ControlPlane::start().await);
    let admin = cp.client().await.expect("admin client");
    let monitoring = crds::prometheus_operator(&workspace_root().join("reference")).expect("CRDs");
    cp.install_crds(monitoring).await.expect("install CRDs");
    let home = tempfile::tempdir().expect("HOME");
    let applied = Command::new(&kubectl)
        .args(["apply", "-k", "deploy/"])
        .current_dir(workspace_root())
        .env_clear()
        .env("HOME", home.path())
        .env("KUBECONFIG", cp.kubeconfig())
        .output()
        .expect("kubectl runs");
    assert!(applied.status.success(), "{}", text(&applied));

    // 2. Everything recorded is allowed, and by deploy/'s rules.
    let mut rules: Vec<(RoleOf, Vec<PolicyRule>)> = Vec::new();
    for role in ROLES {
        rules.push((*role, rules_of(&admin, *role).await));
    }
    let covered_by = |account: &str, r: &AuditRecord, skip: Option<(usize, usize)>| {
        rules.iter().enumerate().any(|(ri, (role, rs))| {
            role.account == account
                && rs
                    .iter()
                    .enumerate()
                    .any(|(i, rule)| skip != Some((ri, i)) && grants(rule, role.namespace, r))
        })
    };
    let mut problems = Vec::new();
    for (account, requests) in &recorded.by_account {
        eprintln!("{account}: {} distinct requests", requests.len());
        for r in requests {
            if !allowed(&admin, account, r).await {
                problems.push(format!("{account} is DENIED {}", describe(r)));
            } else if !by_default_roles(r) && !covered_by(account, r, None) {
                problems.push(format!(
                    "{account} may {} only through a role outside deploy/",
                    describe(r)
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // 3. Each rule removed in turn: what only it covered is denied, the rest stays allowed.
    let (mut unused, mut redundant, mut removed) = (Vec::new(), Vec::new(), 0);
    for (ri, (role, rs)) in rules.iter().enumerate() {
        let requests = &recorded.by_account[role.account];
        for (i, rule) in rs.iter().enumerate() {
            let label = format!(
                "{}/{} rule {i} ({:?} {:?} {:?})",
                role.namespace.unwrap_or("cluster"),
                role.name,
                rule.api_groups.clone().unwrap_or_default(),
                rule.resources.clone().unwrap_or_default(),
                rule.verbs
            );
            let used: Vec<&AuditRecord> = requests
                .iter()
                .filter(|r| grants(rule, role.namespace, r))
                .collect();
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    for verb in &rule.verbs {
                        let (res, sub) = match resource.split_once('/') {
                            Some((r, s)) => (r.to_string(), Some(s.to_string())),
                            None => (resource.clone(), None),
                        };
                        if !used.iter().any(|r| {
                            r.group.as_deref() == Some(group.as_str())
                                && r.resource.as_deref() == Some(res.as_str())
                                && r.subresource == sub
                                && &r.verb == verb
                        }) {
                            unused.push(format!("{label}: {verb} {resource}.{group}"));
                        }
                    }
                }
            }
            let sole: Vec<&AuditRecord> = used
                .iter()
                .copied()
                .filter(|r| !covered_by(role.account, r, Some((ri, i))))
                .collect();
            let Some(canary) = sole.first().copied() else {
                // Unused rules are in `unused` (code paths this run does not take); a used
                // rule that grants nothing the others do not is more than deploy/ needs.
                if !used.is_empty() {
                    redundant.push(label);
                }
                continue;
            };
            removed += 1;
            let mut without = rs.clone();
            without.remove(i);
            set_rules(&admin, *role, without).await;
            let (a, adm) = (role.account, &admin);
            until(
                &format!("{label} removed to deny {}", describe(canary)),
                || async move { !allowed(adm, a, canary).await },
            )
            .await;
            for r in &used {
                let want = !sole.contains(r);
                if allowed(&admin, role.account, r).await != want {
                    problems.push(format!(
                        "without {label}, {} is {} (expected {})",
                        describe(r),
                        if want { "denied" } else { "allowed" },
                        if want { "allowed" } else { "denied" },
                    ));
                }
            }
            set_rules(&admin, *role, rs.clone()).await;
            until(&format!("{label} restored"), || async move {
                allowed(adm, a, canary).await
            })
            .await;
        }
    }
    eprintln!(
        "{removed} rules removed in turn; granted by deploy/ but used by no request ({}):\n{}",
        unused.len(),
        unused.join("\n")
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        redundant.is_empty(),
        "rules whose every request another rule also grants:\n{}",
        redundant.join("\n")
    );

    // 4. The binaries as the ServiceAccounts on the real server.
    let exporter_kc = kubeconfig_of(&cp, &admin, EXPORTER_SA).await;
    let exporter = Exporter::start(&exporter_kc);
    exporter.wait_ready().await;
    drop(exporter);
    // Without its VirtualMachineSnapshot rule it counts the 403 and is not ready.
    let exporter_role = ROLES[2];
    let full = rules_of(&admin, exporter_role).await;
    let without: Vec<PolicyRule> = full
        .iter()
        .filter(|r| {
            !r.resources
                .iter()
                .flatten()
                .any(|x| x == "virtualmachinesnapshots")
        })
        .cloned()
        .collect();
    assert_eq!(
        without.len() + 1,
        full.len(),
        "one rule grants VM snapshots"
    );
    set_rules(&admin, exporter_role, without).await;
    let list_snapshots = AuditRecord {
        verb: "list".into(),
        group: Some("snapshot.kubevirt.io".into()),
        resource: Some("virtualmachinesnapshots".into()),
        ..Default::default()
    };
    let (adm, ls) = (&admin, &list_snapshots);
    until(
        "the VirtualMachineSnapshot rule to be gone",
        || async move { !allowed(adm, EXPORTER_SA, ls).await },
    )
    .await;
    let exporter = Exporter::start(&exporter_kc);
    let port = exporter.port;
    let forbidden = r#"virtguard_exporter_watch_errors_total{kind="VirtualMachineSnapshot",reason="forbidden"} "#;
    until(
        "the exporter to count the forbidden VirtualMachineSnapshot watch",
        || async move {
            let (_, text) = tokio::task::block_in_place(|| http_get(port, "/metrics"));
            text.lines()
                .filter_map(|l| l.strip_prefix(forbidden))
                .any(|n| n.trim() != "0")
        },
    )
    .await;
    assert_ne!(
        tokio::task::block_in_place(|| http_status(port, "/readyz")),
        200,
        "ready although it may not list VirtualMachineSnapshots"
    );
    drop(exporter);
    set_rules(&admin, exporter_role, full).await;

    let backup_kc = kubeconfig_of(&cp, &admin, BACKUP_SA).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = dir.path().join("repo");
    let o = virtguard(&repo, &backup_kc, &[], &["init"]);
    assert!(o.status.success(), "{}", text(&o));
    // With deploy/'s rules it gets past every call (nothing to back up: no VM exists here).
    let o = virtguard(&repo, &backup_kc, &[], &["backup", "--all-namespaces"]);
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("forbidden"),
        "{}",
        text(&o)
    );
    eprintln!("virtguard backup with deploy/'s rules: {}", text(&o));
    let vm_rule = ROLES[0];
    let full = rules_of(&admin, vm_rule).await;
    let without: Vec<PolicyRule> = full
        .iter()
        .filter(|r| !r.resources.iter().flatten().any(|x| x == "virtualmachines"))
        .cloned()
        .collect();
    assert_eq!(
        without.len() + 1,
        full.len(),
        "one rule grants virtualmachines"
    );
    set_rules(&admin, vm_rule, without).await;
    let list_vms = AuditRecord {
        verb: "list".into(),
        group: Some("kubevirt.io".into()),
        resource: Some("virtualmachines".into()),
        ..Default::default()
    };
    let adm = &admin;
    let lv = &list_vms;
    until("the VirtualMachine rule to be gone", || async move {
        !allowed(adm, BACKUP_SA, lv).await
    })
    .await;
    let o = virtguard(&repo, &backup_kc, &[], &["backup", "--all-namespaces"]);
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("virtguard backup without the VirtualMachine rule: {err}");
    assert!(!o.status.success(), "{}", text(&o));
    for part in ["list", "virtualmachines", "kubevirt.io", "forbidden"] {
        assert!(
            err.contains(part),
            "the error does not name {part:?}: {}",
            text(&o)
        );
    }
}
