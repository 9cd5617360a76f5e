//! `virtguard backup --dispatch jobs` against the simulated cluster, whose Job runner runs the
//! real `virtguard` binary for each per-VM Job: one Job per VM, bounded parallelism, the
//! repository key reaching the children only through the Secret, the owner Job's pod template
//! copied and owning the children, failures summarised, and SIGTERM stopping the children
//! cleanly (thawed, nothing left behind).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::text;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, PostParams};
use kube::Api;
use virtguard::engine::dispatch::{job_outcome, DISPATCH_RUN, VM_ANNOTATION};
use virtguard_sim::{FaultRule, Scenario, Sim, SimConfig};

const SCENARIO: &str = r#"
namespaces: [prod, dev, virtguard]
vms:
  - namespace: prod
    name: web
    disks:
      - {name: root, size: 6Mi, content: {random: 21}}
  - namespace: dev
    name: scratch
    guestAgent: false
    disks:
      - {name: root, size: 3Mi, content: {pattern: "xyz"}}
  - namespace: dev
    name: ignored
    labels: {virtguard.io/backup: "false"}
    disks:
      - {name: root, size: 2Mi, content: zeros}
"#;

/// The repository passphrase: the dispatcher has it in its environment, the children only get
/// it through the Secret (an encrypted repository cannot be opened without it).
const KEY: &str = "dispatch-test-passphrase";

async fn sim() -> Sim {
    virtguard::cluster::install_crypto_provider();
    let sim = Sim::start(SimConfig {
        scenario: Scenario::from_yaml(SCENARIO, "test").unwrap(),
        virtguard_bin: Some(env!("CARGO_BIN_EXE_virtguard").into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = sim.client().await.unwrap();
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "virtguard-repo", "namespace": "virtguard"},
        "stringData": {"VIRTGUARD_KEY": KEY}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), "virtguard")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    common::cluster::wait_running(&client, "prod", "web").await;
    common::cluster::wait_running(&client, "dev", "scratch").await;
    sim
}

fn command(sim: &Sim, repo: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_virtguard"));
    c.args(["--repo", repo.to_str().unwrap(), "--quiet"])
        .args(args)
        .env("KUBECONFIG", sim.kubeconfig_path())
        .env("VIRTGUARD_KEY", KEY)
        .env_remove("VIRTGUARD_OWNER_JOB")
        .env_remove("POD_NAMESPACE")
        .stdin(Stdio::null());
    c
}

fn run(sim: &Sim, repo: &std::path::Path, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| command(sim, repo, args).output().unwrap())
}

/// An initialised, encrypted local repository.
fn init_repo(sim: &Sim) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let o = run(sim, &repo, &["init"]);
    assert!(o.status.success(), "{}", text(&o));
    (dir, repo)
}

async fn children(client: &kube::Client) -> Vec<Job> {
    let mut jobs = Api::<Job>::namespaced(client.clone(), "virtguard")
        .list(&ListParams::default().labels(DISPATCH_RUN))
        .await
        .unwrap()
        .items;
    jobs.sort_by_key(|j| j.metadata.creation_timestamp.clone().map(|t| t.0));
    jobs
}

fn vm_of(j: &Job) -> String {
    j.metadata.annotations.as_ref().unwrap()[VM_ANNOTATION].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_job_per_vm_one_at_a_time_with_the_key_only_from_the_secret() {
    let sim = sim().await;
    let client = sim.client().await.unwrap();
    let (_dir, repo) = init_repo(&sim);

    let o = run(
        &sim,
        &repo,
        &[
            "backup",
            "--all-namespaces",
            "--dispatch=jobs",
            "--parallel=1",
            "--job-namespace=virtguard",
            "--job-image=registry.example/virtguard:test",
            "--job-env-secret=virtguard-repo",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("prod/web") && out.contains("application-consistent"),
        "{}",
        text(&o)
    );
    assert!(
        out.contains("dev/scratch") && out.contains("crash-consistent"),
        "{}",
        text(&o)
    );
    assert!(!out.contains("dev/ignored"), "{}", text(&o));

    // The children were the real binary, one per selected VM, given the VM and no secret.
    let runs = sim.job_runs();
    assert_eq!(runs.len(), 2, "{runs:?}");
    for r in &runs {
        assert_eq!(
            r.exit_code,
            Some(0),
            "{r:?}: {}",
            std::fs::read_to_string(&r.log).unwrap_or_default()
        );
        assert!(r.args.windows(2).any(|w| w[0] == "--vm"), "{r:?}");
        assert!(
            !r.args.iter().any(|a| a.contains(KEY)),
            "the key leaked into args: {r:?}"
        );
    }
    let jobs = children(&client).await;
    let mut vms: Vec<String> = jobs.iter().map(vm_of).collect();
    vms.sort();
    assert_eq!(vms, ["dev/scratch", "prod/web"]);
    for j in &jobs {
        assert_eq!(job_outcome(j), Some(Ok(())), "{j:?}");
    }
    // --parallel=1: the second Job was created only after the first one finished.
    let first_done = jobs[0]
        .status
        .as_ref()
        .unwrap()
        .completion_time
        .clone()
        .unwrap()
        .0;
    let second_created = jobs[1].metadata.creation_timestamp.clone().unwrap().0;
    assert!(
        second_created >= first_done,
        "{second_created} < {first_done}"
    );

    // Both backups are in the (encrypted) repository.
    let o = run(&sim, &repo, &["list", "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
}

#[tokio::test(flavor = "multi_thread")]
async fn children_copy_and_belong_to_the_owner_job_and_failures_are_summarised() {
    let sim = sim().await;
    let client = sim.client().await.unwrap();
    let (_dir, repo) = init_repo(&sim);
    // The CronJob's Job: its template carries the key through a secretKeyRef.
    let parent: Job = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "nightly", "namespace": "virtguard"},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"labels": {"app.kubernetes.io/name": "virtguard-backup"}},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "backup", "image": "registry.example/virtguard:1",
                "args": ["--version"],
                "env": [{"name": "VIRTGUARD_KEY", "valueFrom": {"secretKeyRef": {"name": "virtguard-repo", "key": "VIRTGUARD_KEY"}}}]
            }]}
        }}
    }))
    .unwrap();
    let parent = Api::<Job>::namespaced(client.clone(), "virtguard")
        .create(&PostParams::default(), &parent)
        .await
        .unwrap();
    sim.inject(FaultRule {
        op: "snapshot-error".into(),
        target: Some("prod/web-root".into()),
        message: Some("injected: pool full".into()),
        ..Default::default()
    });

    let o = run(
        &sim,
        &repo,
        &[
            "backup",
            "--all-namespaces",
            "--dispatch=jobs",
            "--parallel=2",
            "--job-namespace=virtguard",
            "--owner-job=nightly",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("1 of 2") && err.contains("prod/web"),
        "{}",
        text(&o)
    );
    assert!(
        err.contains("kubectl logs -n virtguard job/"),
        "{}",
        text(&o)
    );
    // The reason code comes from the status record the child wrote.
    let web = out.lines().find(|l| l.starts_with("prod/web")).unwrap();
    assert!(web.contains("FAILED") && web.contains("snapshot"), "{web}");
    let scratch = out.lines().find(|l| l.starts_with("dev/scratch")).unwrap();
    assert!(scratch.contains("ok"), "{scratch}");

    let jobs = children(&client).await;
    assert_eq!(jobs.len(), 2);
    let parent_uid = parent.metadata.uid.unwrap();
    for j in &jobs {
        let owners = j.metadata.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].uid, parent_uid);
        assert_eq!(owners[0].name, "nightly");
        let t = &j.spec.as_ref().unwrap().template;
        let c = &t.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("registry.example/virtguard:1"));
        assert_eq!(c.args.as_ref().unwrap()[..2], ["backup", "--vm"]);
        let l = t.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert_eq!(l["app.kubernetes.io/name"], "virtguard-backup");
    }
    // The succeeded child opened the encrypted repository with the key from the parent's env.
    let o = run(&sim, &repo, &["list", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_deletes_the_children_which_thaw_and_clean_up() {
    let sim = sim().await;
    let client = sim.client().await.unwrap();
    let (_dir, repo) = init_repo(&sim);
    // prod/web's snapshot is never cut: its child stays frozen, waiting for creationTime.
    sim.inject(FaultRule {
        op: "snapshot-no-creation-time".into(),
        target: Some("prod/web-root".into()),
        ..Default::default()
    });
    let child = command(
        &sim,
        &repo,
        &[
            "backup",
            "--vm=prod/web",
            "--dispatch=jobs",
            "--job-namespace=virtguard",
            "--job-image=virtguard",
            "--job-env-secret=virtguard-repo",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Wait until the per-VM Job's process has frozen the guest.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let frozen = sim.freeze_log().iter().any(|r| {
            r.vmi == "prod/web"
                && r.status == 200
                && r.action == virtguard_sim::FreezeAction::Freeze
        });
        if frozen {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the child never froze the guest"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(common::cluster::leftovers(&client).await > 0);
    let o = common::sigterm_and_wait(child);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("deleted Job virtguard/"),
        "{}",
        text(&o)
    );

    // The Job is gone; its process got SIGTERM, thawed the guest and deleted its objects.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let thawed = sim
            .freeze_log()
            .iter()
            .rev()
            .find(|r| r.vmi == "prod/web" && r.status == 200)
            .is_some_and(|r| r.action == virtguard_sim::FreezeAction::Unfreeze);
        let left = common::cluster::leftovers(&client).await;
        if thawed && left == 0 && children(&client).await.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not cleaned up: thawed {thawed}, leftovers {left}, runs {:?}",
            sim.job_runs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
