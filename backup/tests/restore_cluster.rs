//! `virtguard restore`: the real binary against the simulated cluster (CDI upload proxy, Jobs run
//! as local processes) and real repositories (s3s-fs and local). `virtguard download`, which
//! needs no cluster, is tested in cli.rs.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::text;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use virtguard_api::{DataVolume, VirtualMachine};
use virtguard_sim::{FaultRule, Scenario, Sim, SimConfig};

const SCENARIO: &str = r#"
namespaces: [prod, dr]
storageClasses:
  - {name: fast, driver: sim.csi.virtguard.io, default: true, snapshotClass: fast-snap}
  - {name: ssd, driver: sim.csi.virtguard.io}
nads:
  - {namespace: prod, name: br-data}
vms:
  - namespace: prod
    name: db
    running: false
    networks: [br-data]
    disks:
      - {name: root, size: 6Mi, content: {random: 7}, used: 2Mi}
      - {name: data, size: 3Mi, content: {pattern: "data"}}
"#;

const MAC0: &str = "02:aa:bb:cc:dd:01";
const MAC1: &str = "02:aa:bb:cc:dd:02";
const UUID: &str = "5d307ca9-b3ef-428c-8861-06e72d69f223";

async fn sim() -> Sim {
    virtguard::cluster::install_crypto_provider();
    let sim = Sim::start(SimConfig {
        scenario: Scenario::from_yaml(SCENARIO, "test").unwrap(),
        virtguard_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_virtguard"))),
        ..Default::default()
    })
    .await
    .unwrap();
    // Give the VM a fixed identity: MACs, firmware UUID, Spiderpool fixed-IP annotations.
    let vms: Api<VirtualMachine> = Api::namespaced(sim.client().await.unwrap(), "prod");
    let patch = json!({
        "metadata": {"annotations": {"ipam.spidernet.io/ippool": "{\"ipv4\":[\"pool-a\"]}", "team": "dba"}},
        "spec": {"template": {
            "metadata": {"annotations": {"ipam.spidernet.io/ippools": "[{\"interface\":\"net1\",\"ipv4\":[\"pool-a\"]}]"}},
            "spec": {"domain": {
                "firmware": {"uuid": UUID},
                "devices": {"interfaces": [
                    {"name": "default", "masquerade": {}, "macAddress": MAC0},
                    {"name": "br-data", "bridge": {}, "macAddress": MAC1}
                ]}
            }}
        }}
    });
    vms.patch("db", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    sim
}

fn virtguard(sim: &Sim, repo: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_virtguard"))
            .args(["--repo", repo, "--quiet"])
            .args(args)
            .env("KUBECONFIG", sim.kubeconfig_path())
            .env_remove("VIRTGUARD_KEY")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
}

fn sha(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// A local repository with a backup of prod/db (1 MiB chunks, so the zero tail is 4 chunks).
fn local_backup(sim: &Sim) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo").display().to_string();
    let o = virtguard(sim, &repo, &["init", "--chunk-size", "1MiB"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let o = virtguard(sim, &repo, &["backup", "--vm", "prod/db"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    (dir, repo)
}

async fn vm(sim: &Sim, ns: &str, name: &str) -> Option<Value> {
    let api: Api<VirtualMachine> = Api::namespaced(sim.client().await.unwrap(), ns);
    api.get_opt(name)
        .await
        .unwrap()
        .map(|v| serde_json::to_value(v).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_into_another_namespace_with_new_name_and_storage_class_map() {
    let Some(s3) = common::S3Server::start() else {
        return;
    };
    let sim = sim().await;
    let repo = format!("s3://{}/vg", common::BUCKET);
    let s3env = [
        ("VIRTGUARD_S3_ENDPOINT", s3.endpoint()),
        ("VIRTGUARD_S3_PATH_STYLE", "true".to_string()),
        ("AWS_ACCESS_KEY_ID", common::ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", common::SECRET_KEY.to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ];
    let env: Vec<(&str, &str)> = s3env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = virtguard(&sim, &repo, &["init", "--chunk-size", "1MiB"], &env);
    assert!(o.status.success(), "{}", text(&o));
    let o = virtguard(&sim, &repo, &["backup", "--vm", "prod/db"], &env);
    assert!(o.status.success(), "{}", text(&o));
    let root_sha = sha(&sim.pvc_path("prod", "db-root").unwrap());
    let data_sha = sha(&sim.pvc_path("prod", "db-data").unwrap());

    // Dry run: prints the objects, creates nothing.
    let args = [
        "restore",
        "prod/db@latest",
        "--target-namespace",
        "dr",
        "--name",
        "db-copy",
        "--storage-class-map",
        "fast=ssd",
    ];
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let o = virtguard(&sim, &repo, &dry, &env);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("kind: DataVolume")
            && out.contains("kind: VirtualMachine")
            && out.contains("name: db-copy-root"),
        "{}",
        text(&o)
    );
    assert!(vm(&sim, "dr", "db-copy").await.is_none());
    // A storage class that does not exist is warned about.
    let o = virtguard(
        &sim,
        &repo,
        &[
            "restore",
            "prod/db@latest",
            "--target-namespace",
            "dr",
            "--storage-class-map",
            "fast=gone",
            "--dry-run",
        ],
        &env,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("storage class `gone` does not exist"),
        "{}",
        text(&o)
    );
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("VolumeSnapshotClass"),
        "the snapshot class exists: no warning\n{}",
        text(&o)
    );

    let o = virtguard(&sim, &repo, &args, &env);
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning:")
            && err.contains("NetworkAttachmentDefinition dr/br-data does not exist"),
        "{}",
        text(&o)
    );

    // Bytes equal the backup.
    assert_eq!(sha(&sim.pvc_path("dr", "db-copy-root").unwrap()), root_sha);
    assert_eq!(sha(&sim.pvc_path("dr", "db-copy-data").unwrap()), data_sha);

    let v = vm(&sim, "dr", "db-copy")
        .await
        .expect("VM dr/db-copy created");
    let spec = &v["spec"]["template"]["spec"];
    let claims: Vec<&str> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| {
            v.pointer("/persistentVolumeClaim/claimName")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(claims, vec!["db-copy-root", "db-copy-data"], "{v}");
    for i in spec["domain"]["devices"]["interfaces"].as_array().unwrap() {
        assert!(i.get("macAddress").is_none(), "MAC kept: {i}");
    }
    let uuid = spec["domain"]["firmware"]["uuid"].as_str().unwrap();
    assert_ne!(uuid, UUID);
    let anns = format!(
        "{}{}",
        v["metadata"]["annotations"], v["spec"]["template"]["metadata"]["annotations"]
    );
    assert!(!anns.contains("ipam.spidernet.io"), "{anns}");
    assert!(
        anns.contains("\"team\":\"dba\""),
        "other annotations are kept: {anns}"
    );
    assert_eq!(v["spec"]["runStrategy"], "Halted");
    assert!(v["metadata"]["uid"] != json!(null));

    // Storage class mapped.
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(sim.client().await.unwrap(), "dr");
    let pvc = pvcs.get("db-copy-root").await.unwrap();
    assert_eq!(pvc.spec.unwrap().storage_class_name.as_deref(), Some("ssd"));

    // The original is untouched, and a second identical restore is refused.
    let orig = vm(&sim, "prod", "db").await.unwrap();
    assert_eq!(
        orig["spec"]["template"]["spec"]["domain"]["firmware"]["uuid"],
        UUID
    );
    let o = virtguard(&sim, &repo, &args, &env);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("VirtualMachine dr/db-copy already exists")
            && err.contains("--in-place")
            && err.contains("--name"),
        "{}",
        text(&o)
    );

    // The VolumeSnapshotClass the backup used (recorded in its manifest) is checked in the
    // target: present, no word about it; gone, a warning naming it.
    let classes: Api<virtguard_api::VolumeSnapshotClass> = Api::all(sim.client().await.unwrap());
    classes
        .delete("fast-snap", &Default::default())
        .await
        .unwrap();
    dry[5] = "db-copy2";
    let o = virtguard(&sim, &repo, &dry, &env);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(
            "warning: the backup's disks were snapshotted with VolumeSnapshotClass `fast-snap`"
        ),
        "{}",
        text(&o)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn in_place_restore_brings_back_overwritten_disk_and_keeps_identity() {
    let sim = sim().await;
    let (_dir, repo) = local_backup(&sim);
    let root = sim.pvc_path("prod", "db-root").unwrap();
    let before = sha(&root);
    std::fs::write(&root, vec![0xEEu8; 6 << 20]).unwrap();
    assert_ne!(sha(&root), before);

    // Without --in-place: the name clash is refused and nothing changes.
    let o = virtguard(&sim, &repo, &["restore", "prod/db@latest"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("VirtualMachine prod/db already exists"),
        "{}",
        text(&o)
    );

    // A running VM is not touched without --force.
    let vms: Api<VirtualMachine> = Api::namespaced(sim.client().await.unwrap(), "prod");
    vms.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"runStrategy": "Always"}})),
    )
    .await
    .unwrap();
    common::cluster::wait_running(&sim.client().await.unwrap(), "prod", "db").await;
    let o = virtguard(
        &sim,
        &repo,
        &["restore", "prod/db@latest", "--in-place"],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is running"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read(&root).unwrap()[0],
        0xEE,
        "nothing was written"
    );

    let o = virtguard(
        &sim,
        &repo,
        &["restore", "prod/db@latest", "--in-place", "--force"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v = vm(&sim, "prod", "db").await.unwrap();
    // The disk was restored into a new claim, the VM switched to it, the old claim deleted.
    let claim = claim_of(&v, "root");
    assert!(
        claim.starts_with("db-root-r") && claim.len() == "db-root-r".len() + 4,
        "{claim}"
    );
    let root = sim.pvc_path("prod", &claim).unwrap();
    assert_eq!(sha(&root), before, "content is the backup's again");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("deleted the replaced disk prod/db-root"),
        "{}",
        text(&o)
    );
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(sim.client().await.unwrap(), "prod");
    assert!(pvcs.get_opt("db-root").await.unwrap().is_none());
    let spec = &v["spec"]["template"]["spec"];
    assert_eq!(
        spec["domain"]["devices"]["interfaces"][0]["macAddress"],
        MAC0
    );
    assert_eq!(
        spec["domain"]["devices"]["interfaces"][1]["macAddress"],
        MAC1
    );
    assert_eq!(spec["domain"]["firmware"]["uuid"], UUID);
    assert!(
        v["metadata"]["annotations"]["ipam.spidernet.io/ippool"].is_string(),
        "{v}"
    );
    assert_eq!(v["spec"]["runStrategy"], "Halted");

    // A second in-place restore replaces the suffix instead of stacking another one.
    let o = virtguard(
        &sim,
        &repo,
        &["restore", "prod/db@latest", "--in-place"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let again = claim_of(&vm(&sim, "prod", "db").await.unwrap(), "root");
    assert!(
        again.starts_with("db-root-r") && again.len() == claim.len() && again != claim,
        "{claim} -> {again}"
    );
    assert_eq!(sha(&sim.pvc_path("prod", &again).unwrap()), before);
    assert!(pvcs.get_opt(&claim).await.unwrap().is_none());
}

/// Flips a byte in every chunk of a local repository (at least one must exist).
fn corrupt_every_chunk(repo: &str) {
    let mut n = 0;
    for d in std::fs::read_dir(Path::new(repo).join("chunks")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let mut b = std::fs::read(&p).unwrap();
            let last = b.len() - 1;
            b[last] ^= 0x55;
            std::fs::write(&p, b).unwrap();
            n += 1;
        }
    }
    assert!(n > 0, "no chunks in {repo}");
}

/// The claim behind volume `volume` of a VM object.
fn claim_of(vm: &Value, volume: &str) -> String {
    let vols = vm["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let v = vols.iter().find(|v| v["name"] == volume).unwrap();
    v.pointer("/persistentVolumeClaim/claimName")
        .or_else(|| v.pointer("/dataVolume/name"))
        .and_then(Value::as_str)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_in_place_restore_keeps_the_vm_and_its_old_disks() {
    let sim = sim().await;
    let (_dir, repo) = local_backup(&sim);
    let root = sim.pvc_path("prod", "db-root").unwrap();
    std::fs::write(&root, vec![0xEEu8; 6 << 20]).unwrap();
    let vm_before = vm(&sim, "prod", "db").await.unwrap();
    // Corrupt every stored chunk: the restore must fail part-way through the data.
    corrupt_every_chunk(&repo);
    let o = virtguard(
        &sim,
        &repo,
        &["restore", "prod/db@latest", "--in-place"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("corrupt"),
        "{}",
        text(&o)
    );
    // The VM still uses its old disks, whose data is untouched.
    let v = vm(&sim, "prod", "db").await.unwrap();
    assert_eq!(claim_of(&v, "root"), "db-root");
    assert_eq!(claim_of(&v, "data"), "db-data");
    assert_eq!(v["spec"]["template"], vm_before["spec"]["template"]);
    let root = sim.pvc_path("prod", "db-root").unwrap();
    assert!(std::fs::read(&root).unwrap().iter().all(|b| *b == 0xEE));
    assert!(sim.pvc_path("prod", "db-data").is_ok());
    // The staged disks were deleted again.
    let dvs: Api<DataVolume> = Api::namespaced(sim.client().await.unwrap(), "prod");
    let mut left = Vec::new();
    for _ in 0..50 {
        left = dvs
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|d| d.metadata.name)
            .filter(|n| n.starts_with("db-root-r") || n.starts_with("db-data-r"))
            .collect();
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(left.is_empty(), "staged DataVolumes left: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn job_method_writes_the_pvc_from_the_repository() {
    let sim = sim().await;
    // Scenario PVCs are Block; one becomes Filesystem, so both Job layouts are exercised.
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(sim.client().await.unwrap(), "prod");
    pvcs.patch(
        "db-data",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"volumeMode": "Filesystem"}})),
    )
    .await
    .unwrap();
    let (_dir, repo) = local_backup(&sim);
    let o = virtguard(
        &sim,
        &repo,
        &[
            "restore",
            "prod/db@latest",
            "--target-namespace",
            "dr",
            "--method",
            "job",
            "--timeout",
            "50s",
            "--start",
            "--wait",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        sha(&sim.pvc_path("dr", "db-root").unwrap()),
        sha(&sim.pvc_path("prod", "db-root").unwrap())
    );
    assert_eq!(
        sha(&sim.pvc_path("dr", "db-data").unwrap()),
        sha(&sim.pvc_path("prod", "db-data").unwrap())
    );
    let runs = sim.job_runs();
    assert_eq!(runs.len(), 2, "{runs:?}");
    let modes: Vec<bool> = runs
        .iter()
        .map(|r| r.args.iter().any(|a| a == "--device"))
        .collect();
    assert!(modes.contains(&true) && modes.contains(&false), "{runs:?}");
    for r in &runs {
        assert_eq!(
            r.exit_code,
            Some(0),
            "{r:?}: {}",
            std::fs::read_to_string(&r.log).unwrap_or_default()
        );
        assert_eq!(r.args[0], "restore-volume");
        let log = std::fs::read_to_string(&r.log).unwrap_or_default();
        assert!(log.contains("digest verified"), "{log}");
        assert!(
            !r.args.iter().any(|a| a.contains(&repo)),
            "repository not on the command line: {:?}",
            r.args
        );
    }
    let v = vm(&sim, "dr", "db").await.unwrap();
    assert_eq!(
        v["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "db-root"
    );
    assert_eq!(v["spec"]["runStrategy"], "Always");
    // --wait returned only once the VMI ran.
    let vmis: Api<virtguard_api::VirtualMachineInstance> =
        Api::namespaced(sim.client().await.unwrap(), "dr");
    assert_eq!(vmis.get("db").await.unwrap().phase(), "Running");
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_500_then_401_is_retried_with_a_new_token() {
    // The sim invalidates a token it answered 401 for: the third attempt only succeeds with a
    // new token.
    let sim = sim().await;
    let (_dir, repo) = local_backup(&sim);
    for (call, status) in [(1, 500), (2, 401)] {
        sim.inject(FaultRule {
            op: "upload-fail".into(),
            target: Some("dr/db-root".into()),
            call: Some(call),
            status: Some(status),
            message: Some(format!("injected {status}")),
            ..Default::default()
        });
    }
    let o = virtguard(
        &sim,
        &repo,
        &["restore", "prod/db@latest", "--target-namespace", "dr"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    // The proxy may answer before reading the body: the client then sees the status or a reset.
    assert!(err.contains("upload attempt 1 failed"), "{}", text(&o));
    assert!(err.contains("upload attempt 2 failed"), "{}", text(&o));
    assert!(err.contains("retrying with a new token"), "{}", text(&o));
    let root_line = String::from_utf8_lossy(&o.stdout)
        .lines()
        .find(|l| l.starts_with("root "))
        .unwrap()
        .to_string();
    assert!(
        root_line.split_whitespace().any(|w| w == "3"),
        "3 attempts: {root_line}"
    );
    assert_eq!(
        sha(&sim.pvc_path("dr", "db-root").unwrap()),
        sha(&sim.pvc_path("prod", "db-root").unwrap())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_and_corruption_leaves_no_vm() {
    let sim = sim().await;
    let (dir, repo) = local_backup(&sim);

    let o = virtguard(&sim, &repo, &["restore", "20250101T000000Z-abcd"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not found"),
        "{}",
        text(&o)
    );

    let o = virtguard(
        &sim,
        &repo,
        &["restore", "prod/db@latest", "--target-namespace", "nowhere"],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("target namespace `nowhere` does not exist"),
        "{}",
        text(&o)
    );

    corrupt_every_chunk(&repo);
    let o = virtguard(
        &sim,
        &repo,
        &[
            "restore",
            "prod/db@latest",
            "--target-namespace",
            "dr",
            "--start",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("chunks/") && err.contains("corrupt"),
        "{}",
        text(&o)
    );
    assert!(vm(&sim, "dr", "db").await.is_none(), "no half-restored VM");
    let dvs: Api<DataVolume> = Api::namespaced(sim.client().await.unwrap(), "dr");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        dvs.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "the DataVolumes were deleted"
    );
    drop(dir);

    // Wrong key on an encrypted repository.
    let kdir = tempfile::tempdir().unwrap();
    let key = kdir.path().join("key");
    let bad = kdir.path().join("bad");
    std::fs::write(&key, "right horse battery").unwrap();
    std::fs::write(&bad, "wrong").unwrap();
    let erepo = kdir.path().join("repo").display().to_string();
    let kf = key.display().to_string();
    let o = virtguard(
        &sim,
        &erepo,
        &[
            "--key-file",
            &kf,
            "init",
            "--kdf-memory-kib",
            "1024",
            "--kdf-iterations",
            "1",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = virtguard(
        &sim,
        &erepo,
        &["--key-file", &kf, "backup", "--vm", "prod/db"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = virtguard(
        &sim,
        &erepo,
        &[
            "--key-file",
            &bad.display().to_string(),
            "restore",
            "prod/db@latest",
            "--target-namespace",
            "dr",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not unlock"),
        "{}",
        text(&o)
    );
    assert!(vm(&sim, "dr", "db").await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_deletes_what_the_restore_created() {
    let sim = sim().await;
    let (_dir, repo) = local_backup(&sim);
    // The upload proxy keeps failing: the restore is busy retrying when the signal comes.
    sim.inject(FaultRule {
        op: "upload-fail".into(),
        target: Some("dr/db-root".into()),
        status: Some(503),
        ..Default::default()
    });
    let child = Command::new(env!("CARGO_BIN_EXE_virtguard"))
        .args([
            "--repo",
            &repo,
            "--quiet",
            "restore",
            "prod/db@latest",
            "--target-namespace",
            "dr",
        ])
        .env("KUBECONFIG", sim.kubeconfig_path())
        .env_remove("VIRTGUARD_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let dvs: Api<DataVolume> = Api::namespaced(sim.client().await.unwrap(), "dr");
    let mut seen = false;
    for _ in 0..100 {
        if dvs.get_opt("db-root").await.unwrap().is_some() {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "the restore never created its DataVolume");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let o = common::sigterm_and_wait(child);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("interrupted by SIGTERM") && err.contains("deleted DataVolume dr/db-root"),
        "{}",
        text(&o)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(dvs.get_opt("db-root").await.unwrap().is_none());
    assert!(vm(&sim, "dr", "db").await.is_none());
}
