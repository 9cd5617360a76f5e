//! The project's top-level end-to-end test: the quickstart's flow with real peers everywhere
//! they can run — a real TCG guest under a private libvirtd with the real QEMU guest agent, a
//! real s3s-fs as the repository, a real Prometheus scraping both exporters with the alert rules
//! loaded — and the simulated cluster in between.
//!
//! Asserted: the guest's files survive backup → restore (a file written without sync reaches the
//! backup only because the freeze flushes it); the restored PVC equals the backed-up image byte
//! for byte; the guest was frozen during the snapshot (a writer in the guest stalls for the
//! freeze window); the real guest's counters and the backup metrics reach Prometheus; an alert
//! fires when a backup is made to fail, and the guest is thawed after that failure.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

#[allow(dead_code)]
#[path = "alerts/promql.rs"]
mod promql;
#[allow(dead_code)]
#[path = "alerts/rules.rs"]
mod rules;

use sha2::{Digest, Sha256};
use virtguard_e2e::demo::{
    ext4_cat, real_guest_missing, Demo, DemoOptions, RepoTarget, DRILL_SANDBOX,
};
use virtguard_e2e::{
    require_peer, workspace_bin, workspace_root, PeerError, Prometheus, PrometheusConfig, S3Server,
};

fn text(o: &std::process::Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn sha(p: &std::path::Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quickstart_flow_on_a_real_guest_with_s3_and_prometheus() {
    let missing = real_guest_missing();
    require_peer!(if missing.is_empty() {
        Ok(())
    } else {
        Err(PeerError::Missing {
            name: missing.join(", "),
            install: "run as root after scripts/install-deps.sh (libvirt, QEMU, e2fsprogs)",
        })
    });
    let s3 = require_peer!(S3Server::start());
    let virtguard = workspace_bin("virtguard").unwrap();
    let exporter = workspace_bin("virtguard-exporter").unwrap();
    let work = tempfile::Builder::new()
        .prefix("vg-e2e-")
        .tempdir()
        .unwrap();
    let demo = Demo::start(DemoOptions {
        work: work.path().to_path_buf(),
        real_guest: true,
        guest_cache: None,
        virtguard,
        exporter,
        repo: RepoTarget::S3 {
            url: format!("s3://{}/e2e", s3.bucket),
            endpoint: s3.endpoint.clone(),
            env: s3.env(),
        },
        verbose: true,
    })
    .await
    .unwrap();
    assert!(demo.guest.is_some());
    let rules = vec![workspace_root().join("alerts/virtguard.rules.yaml")];
    let prom = require_peer!(Prometheus::start(&PrometheusConfig {
        targets: vec![
            format!("127.0.0.1:{}", demo.node_metrics_port.unwrap()),
            format!("127.0.0.1:{}", demo.cluster_metrics_port),
        ],
        rule_files: rules,
        ..Default::default()
    }));

    // Traffic, a file written without sync, and a writer that ticks every 100 ms.
    demo.ping_guest(20).unwrap();
    let code = demo
        .guest_exec(&["sh", "-c", "echo 'unsynced but frozen' > /mnt/unsynced.txt"])
        .unwrap();
    assert_eq!(code, 0);
    let code = demo
        .guest_exec(&[
            "sh",
            "-c",
            "(while true; do cut -d' ' -f1 /proc/uptime >> /mnt/ticks; usleep 100000; done) >/dev/null 2>&1 &",
        ])
        .unwrap();
    assert_eq!(code, 0);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let o = demo.virtguard(&["init"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = demo.virtguard(&["backup", "--all-namespaces"]);
    assert!(o.status.success(), "{}", text(&o));
    let freeze: Vec<_> = demo
        .sim
        .freeze_log()
        .into_iter()
        .filter(|r| r.vmi == "demo/guest" && r.status == 200)
        .collect();
    assert_eq!(
        freeze.len(),
        2,
        "one freeze and one thaw through the real agent: {freeze:?}"
    );
    let status: serde_json::Value = serde_json::from_str(
        demo.sim
            .object("", "configmaps", "demo", "virtguard-status")
            .unwrap()["data"]["guest"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(status["consistency"], "application-consistent", "{status}");
    let freeze_s = status["freezeSeconds"].as_f64().unwrap();
    assert!(freeze_s > 0.0, "{status}");

    // The writer stalled while the filesystem was frozen.
    tokio::time::sleep(Duration::from_secs(1)).await;
    demo.guest_exec(&["sync"]).unwrap();
    let live = demo.pvc_file("demo", "guest-root").await.unwrap();
    let ticks: Vec<f64> = ext4_cat(&live, "/ticks")
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let max_gap = ticks.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    // The guest was frozen at least from the freeze's answer to the thaw's arrival at the
    // sim (virtguard's freezeSeconds also counts both agent round trips, which a loaded TCG
    // guest stretches, so it cannot bound the guest's stall from below). The writer reads the
    // uptime, appends it (blocking while frozen), sleeps 0.1 s: at most one read falls inside
    // the frozen window, so some gap is at least the window less one loop's own overhead
    // (its unblocked period, the median gap, less the 0.1 s sleep).
    assert_eq!(freeze[0].action, virtguard_sim::FreezeAction::Freeze);
    assert_eq!(freeze[1].action, virtguard_sim::FreezeAction::Unfreeze);
    let frozen = (freeze[1].received - freeze[0].at).num_milliseconds() as f64 / 1000.0;
    assert!(frozen > 0.0, "{frozen}: {freeze:?}");
    let mut gaps: Vec<f64> = ticks.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_by(f64::total_cmp);
    let overhead = gaps.get(gaps.len() / 2).map_or(0.0, |m| (m - 0.1).max(0.0));
    let need = (frozen - overhead - 0.05).min(1.0);
    assert!(
        ticks.len() > 10 && max_gap >= need,
        "the writer never paused for the {frozen:.2} s the guest was frozen (freezeSeconds {freeze_s:.2}; max gap {max_gap:.2} s, needed {need:.2}, over {} ticks)",
        ticks.len()
    );

    // Restore as a copy: the files are there, the disk equals the backup byte for byte.
    let o = demo.virtguard(&[
        "restore",
        "demo/guest@latest",
        "--name",
        "guest-copy",
        "--wait",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let restored = demo.pvc_file("demo", "guest-copy-root").await.unwrap();
    assert_eq!(ext4_cat(&restored, "/hello.txt").unwrap(), demo.hello);
    assert_eq!(
        ext4_cat(&restored, "/unsynced.txt").unwrap(),
        "unsynced but frozen"
    );
    let id = status["backupId"].as_str().unwrap();
    let image = work.path().join("downloaded.img");
    let o = demo.virtguard(&["download", id, "root", "-o", image.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let restored_len = std::fs::metadata(&restored).unwrap().len();
    let image_len = std::fs::metadata(&image).unwrap().len();
    assert!(restored_len >= image_len);
    let restored_bytes = std::fs::read(&restored).unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&restored_bytes[..image_len as usize])),
        sha(&image),
        "the restored PVC differs from the backup"
    );

    // Prometheus sees the real guest and the backups.
    prom.wait_for_result(
        r#"kubevirt_vmi_network_receive_packets_total{namespace="demo",name="guest"} > 0"#,
        Duration::from_secs(30),
    )
    .unwrap();
    prom.wait_for_result(
        r#"virtguard_backup_last_status{namespace="demo",name="guest"} == 1"#,
        Duration::from_secs(30),
    )
    .unwrap();

    // Restore drill: the copy boots as a real QEMU domain from its restored PVC, its agent
    // reports the filesystem the backup had mounted, and everything is deleted again.
    let drill = |demo: &Demo| {
        let o = demo.virtguard(&[
            "drill",
            "--vm",
            "demo/guest",
            "--sandbox",
            DRILL_SANDBOX,
            "-o",
            "json",
        ]);
        let reports: serde_json::Value =
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
        (o, reports[0].clone())
    };
    let (o, d) = drill(&demo);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(d["succeeded"], true, "{d}");
    let mounts = |d: &serde_json::Value, key: &str| -> Vec<String> {
        d[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m.as_str().map(str::to_string))
            .collect()
    };
    assert!(
        mounts(&d, "expectedMounts").contains(&"/mnt".to_string()),
        "{d}"
    );
    assert!(
        mounts(&d, "foundMounts").contains(&"/mnt".to_string()),
        "{d}"
    );
    assert!(
        d["timeToReadySeconds"].as_f64().unwrap() > 1.0,
        "a real boot: {d}"
    );
    let g = demo.guest.as_ref().unwrap();
    let domains = std::process::Command::new("virsh")
        .args(["-c", &g.uri, "list", "--all", "--name"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&domains.stdout).contains("drill-demo-guest"),
        "the drill's domain must be destroyed: {}",
        String::from_utf8_lossy(&domains.stdout)
    );
    prom.wait_for_result(
        r#"virtguard_restore_test_last_status{namespace="demo",name="guest"} == 1"#,
        Duration::from_secs(30),
    )
    .unwrap();

    // A valid backup of a broken disk: the ext4 superblock zeroed under the running guest. The
    // freeze is refused (ext4's own freeze would write the superblock back from memory), so the
    // backup is crash-consistent and still records what the guest has mounted. The copy boots,
    // cannot mount its disk, and the drill fails saying which filesystem is missing.
    demo.sim.inject(virtguard_sim::FaultRule {
        op: "freeze".into(),
        target: Some("demo/guest".into()),
        status: Some(500),
        message: Some("test: freeze refused".into()),
        ..Default::default()
    });
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&live).unwrap();
        f.seek(SeekFrom::Start(1024)).unwrap();
        f.write_all(&[0u8; 1024]).unwrap();
        f.sync_all().unwrap();
    }
    let o = demo.virtguard(&["backup", "--vm", "demo/guest"]);
    assert!(o.status.success(), "{}", text(&o));
    demo.sim.clear_faults();
    let (o, d) = drill(&demo);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(d["reason"], "filesystem-missing", "{d}");
    assert!(
        d["message"].as_str().unwrap().contains("missing: /mnt"),
        "{d}"
    );
    let alert = prom
        .wait_for_alert(
            "VirtguardRestoreTestFailed",
            "firing",
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(alert["labels"]["name"], "guest", "{alert}");

    // A failing backup: thawed, reported, alerted.
    demo.break_snapshots_of("demo", "guest-root");
    let o = demo.virtguard(&["backup", "--vm", "demo/guest"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let last = demo
        .sim
        .freeze_log()
        .into_iter()
        .rfind(|r| r.vmi == "demo/guest" && r.status == 200)
        .unwrap();
    assert_eq!(last.action, virtguard_sim::FreezeAction::Unfreeze);
    let alert = prom
        .wait_for_alert("VirtguardBackupFailed", "firing", Duration::from_secs(60))
        .unwrap();
    assert_eq!(alert["labels"]["name"], "guest", "{alert}");

    // The dashboards on this live data (real guest, cluster exporter, backups, restore, drills):
    // every query parses and runs; each one over series this run produced returns data for
    // demo/guest.
    let present = |m: &str| {
        prom.query(&format!("count({{__name__=\"{m}\"}})"))
            .is_ok_and(|r| r.as_array().is_some_and(|a| !a.is_empty()))
    };
    let mut evaluated = 0;
    let mut expected = 0;
    let mut missing = Vec::new();
    for (file, d) in virtguard_e2e::dashboards::load() {
        for (title, q) in virtguard_e2e::dashboards::queries(&d, "demo", "guest") {
            let r = prom
                .query(&q)
                .unwrap_or_else(|e| panic!("{file}: {title}: Prometheus refused `{q}`: {e}"));
            evaluated += 1;
            let metrics = promql::metric_names(&q).unwrap();
            if metrics.iter().all(|m| present(m)) {
                expected += 1;
                if r.as_array().is_none_or(Vec::is_empty) {
                    missing.push(format!("{file}: {title}: {q}"));
                }
            }
        }
    }
    eprintln!(
        "dashboards: {evaluated} queries evaluated on live data, {expected} with data expected"
    );
    assert!(
        missing.is_empty(),
        "dashboard queries without data although their series exist: {missing:#?}"
    );
    assert!(expected * 2 >= evaluated, "{expected} of {evaluated}");
}
