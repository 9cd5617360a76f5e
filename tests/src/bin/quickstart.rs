//! `virtguard-quickstart`: the whole system on this machine in about a minute (after the build).
//! A real tiny guest under QEMU/libvirt (or simulated VMs only, when the machine cannot run one)
//! is a VM of the simulated cluster; the exporters serve its metrics; `virtguard backup
//! --all-namespaces` backs every VM up into the embedded default repository; `virtguard files get`
//! fetches single files out of that backup without a restore; `virtguard restore` brings the real
//! VM back as a copy, and the restored disk's files are checked. See
//! `virtguard_e2e::demo`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use virtguard_api::status::BackupStatusRecord;
use virtguard_e2e::demo::{ext4_cat, sample, scrape, Demo, DemoOptions, RepoTarget, DRILL_SANDBOX};

/// Runs virtguard's whole main job on this machine: a real guest (QEMU/TCG under a private
/// libvirtd) in a simulated KubeVirt cluster, the exporters, a backup of every VM into a local
/// repository and a restore of the real VM as a copy, verified file by file. Everything started
/// is stopped on exit.
#[derive(Debug, Parser)]
#[command(name = "virtguard-quickstart", version)]
struct Args {
    /// Working directory (repository, cluster state, guest disk, logs) [default: a new
    /// directory under /tmp, kept after the run]
    #[arg(long)]
    work: Option<PathBuf>,
    /// Simulated VMs only, even when this machine could run the real guest
    #[arg(long)]
    no_guest: bool,
    /// Leave everything running until Ctrl-C (to browse the metrics, run virtguard by hand)
    #[arg(long)]
    keep_running: bool,
    /// Directory of the virtguard binaries [default: next to this one]
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

fn out(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let t0 = Instant::now();
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("locating the binaries")?
            .to_path_buf(),
    };
    for b in ["virtguard", "virtguard-exporter"] {
        if !bin_dir.join(b).exists() {
            bail!("{} not found: build the workspace first (cargo build --release --workspace --bins) or pass --bin-dir", bin_dir.join(b).display());
        }
    }
    let work = match args.work {
        Some(w) => w,
        None => tempfile::Builder::new()
            .prefix("virtguard-quickstart-")
            .tempdir()?
            .keep(),
    };
    let data_home = work.join("data");
    let demo = Demo::start(DemoOptions {
        work: work.clone(),
        real_guest: !args.no_guest,
        guest_cache: None,
        virtguard: bin_dir.join("virtguard"),
        exporter: bin_dir.join("virtguard-exporter"),
        repo: RepoTarget::EmbeddedDefault {
            xdg_data_home: data_home.clone(),
        },
        verbose: true,
    })
    .await?;
    let real = demo.guest.is_some();

    if real {
        eprintln!("==> traffic and writes in the real guest");
        demo.ping_guest(20)?;
        // Written without sync: only the freeze (guest-fsfreeze flushes) puts it on the disk
        // before the snapshot.
        let code = demo.guest_exec(&[
            "sh",
            "-c",
            "echo 'written inside the running guest' > /mnt/written-by-guest.txt",
        ])?;
        if code != 0 {
            bail!("writing in the guest failed with exit code {code}");
        }
        demo.guest_exec(&["dd", "if=/dev/urandom", "of=/mnt/blob", "bs=1M", "count=4"])?;
        let node = scrape(demo.node_metrics_port.context("node exporter")?)?;
        println!(
            "\nLive metrics of the real guest (node exporter, http://127.0.0.1:{}/metrics):",
            demo.node_metrics_port.unwrap_or(0)
        );
        for (m, label) in [
            (
                "kubevirt_vmi_network_receive_packets_total",
                "name=\"guest\"",
            ),
            (
                "kubevirt_vmi_network_transmit_bytes_total",
                "name=\"guest\"",
            ),
            (
                "kubevirt_vmi_storage_write_traffic_bytes_total",
                "name=\"guest\"",
            ),
            ("kubevirt_vmi_memory_available_bytes", "name=\"guest\""),
        ] {
            let v = sample(&node, m, &[label]).map_or("(none yet)".to_string(), |v| v.to_string());
            println!("  {m}{{{label}}} {v}");
        }
    }

    eprintln!("==> virtguard init && virtguard backup --all-namespaces");
    let o = demo.virtguard(&["init"]);
    if !o.status.success() {
        bail!("virtguard init failed:\n{}", out(&o));
    }
    let o = demo.virtguard(&["backup", "--all-namespaces"]);
    println!("\n{}", String::from_utf8_lossy(&o.stdout));
    if !o.status.success() {
        bail!("virtguard backup failed:\n{}", out(&o));
    }

    // Single files straight out of the backup, without restoring the disk (`virtguard files`).
    let listed = demo.virtguard(&["list", "--vm", "demo/guest", "-o", "json"]);
    let volume = serde_json::from_slice::<serde_json::Value>(&listed.stdout)
        .ok()
        .and_then(|v| {
            v.as_array()?.last()?["volumes"][0]["name"]
                .as_str()
                .map(str::to_string)
        })
        .context("virtguard list shows no volume of demo/guest")?;
    // The files checked, in the backup and on the restored disk: one written before boot, and,
    // with the real guest, one it wrote without sync (there only because the freeze flushed it).
    let mut checks = vec![("/hello.txt", demo.hello.clone())];
    if real {
        checks.push((
            "/written-by-guest.txt",
            "written inside the running guest".into(),
        ));
    }
    println!("Files fetched from the backup without a restore (virtguard files get):");
    for (path, want) in &checks {
        eprintln!("==> virtguard files get demo/guest@latest {volume} {path}");
        let dest = work.join(format!("fetched-{}", path.trim_start_matches('/')));
        let o = demo.virtguard(&[
            "files",
            "get",
            "demo/guest@latest",
            &volume,
            path,
            "-o",
            dest.to_str().context("work dir is not UTF-8")?,
            "--force",
        ]);
        if !o.status.success() {
            bail!("virtguard files get {path} failed:\n{}", out(&o));
        }
        let got = std::fs::read_to_string(&dest)?;
        if got.trim() != want.trim() {
            bail!("{path} fetched from the backup is {got:?}, expected {want:?}");
        }
        println!("  {path}: {:?} ({})", got.trim(), dest.display());
    }

    eprintln!("==> virtguard restore demo/guest@latest --name guest-copy (as a copy)");
    let o = demo.virtguard(&[
        "restore",
        "demo/guest@latest",
        "--name",
        "guest-copy",
        "--wait",
    ]);
    println!("{}", String::from_utf8_lossy(&o.stdout));
    if !o.status.success() {
        bail!("virtguard restore failed:\n{}", out(&o));
    }
    let vm = demo
        .sim
        .object("kubevirt.io", "virtualmachines", "demo", "guest-copy")
        .context("the restored VM demo/guest-copy does not exist")?;
    let claim = restored_claim(&vm).context("the restored VM has no disk")?;
    let restored = demo.pvc_file("demo", &claim).await?;
    println!("Restored disk (PVC demo/{claim}) checked file by file:");
    for (path, want) in &checks {
        let got = ext4_cat(&restored, path)?;
        if got.trim() != want.trim() {
            bail!("{path} on the restored disk is {got:?}, expected {want:?}");
        }
        println!("  {path}: identical ({want:?})");
    }

    eprintln!(
        "==> virtguard drill --vm demo/guest --sandbox {DRILL_SANDBOX} (restore test: restore a copy, boot it, check it, delete it)"
    );
    let o = demo.virtguard(&[
        "drill",
        "--vm",
        "demo/guest",
        "--sandbox",
        DRILL_SANDBOX,
        "-o",
        "json",
    ]);
    if !o.status.success() {
        bail!("virtguard drill failed:\n{}", out(&o));
    }
    let drill: serde_json::Value = serde_json::from_slice(&o.stdout)
        .with_context(|| format!("virtguard drill -o json printed no JSON:\n{}", out(&o)))?;
    let drill = &drill[0];
    let booted = drill["timeToReadySeconds"].as_f64().unwrap_or_default();
    println!(
        "Restore test: backup {} restored as {}, booted {} in {booted:.1} s, mounts {} (as at backup time), then deleted",
        drill["backup"].as_str().unwrap_or(""),
        drill["copy"].as_str().unwrap_or(""),
        drill["guestOs"].as_str().unwrap_or("the guest"),
        drill["foundMounts"]
            .as_array()
            .map(|m| m.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    );

    let status = demo
        .sim
        .object("", "configmaps", "demo", "virtguard-status")
        .and_then(|c| c["data"]["guest"].as_str().map(str::to_string))
        .and_then(|s| serde_json::from_str::<BackupStatusRecord>(&s).ok());
    let cluster = scrape(demo.cluster_metrics_port)?;
    let backups_ok = cluster
        .lines()
        .filter(|l| l.starts_with("virtguard_backup_last_status{") && l.ends_with(" 1"))
        .count();
    println!("\nSummary");
    println!(
        "  guest:           {}",
        if real {
            "real QEMU/TCG guest under a private libvirtd (freeze/thaw through its guest agent)"
        } else {
            "simulated (--no-guest, or no root/QEMU/libvirt here)"
        }
    );
    println!(
        "  repository:      {} (the embedded default with XDG_DATA_HOME={})",
        data_home.join("virtguard/repository").display(),
        data_home.display()
    );
    println!(
        "  consistency:     {}",
        status
            .as_ref()
            .and_then(|s| s.consistency)
            .map_or("?".to_string(), |c| c.to_string())
    );
    println!(
        "  freeze window:   {:.3} s",
        status.as_ref().map_or(0.0, |s| s.freeze_seconds)
    );
    println!(
        "  disk / stored:   {} / {} bytes (zero blocks are not stored; zstd)",
        demo.disk_size,
        status.as_ref().map_or(0, |s| s.bytes_stored)
    );
    println!(
        "  restore test:    booted in {booted:.1} s ({})",
        if real {
            "a real QEMU domain from the restored PVC, checked through its guest agent"
        } else {
            "simulated VMI"
        }
    );
    println!("  metrics:         {}cluster http://127.0.0.1:{}/metrics ({backups_ok} VMs with a good last backup)",
        demo.node_metrics_port.map(|p| format!("node http://127.0.0.1:{p}/metrics, ")).unwrap_or_default(), demo.cluster_metrics_port);
    println!(
        "  work dir:        {} (logs, cluster state, kubeconfig)",
        work.display()
    );
    println!("  took:            {:.0} s", t0.elapsed().as_secs_f64());
    println!("\nOn a real cluster: install deploy/ (kubectl apply -k deploy), point VIRTGUARD_REPO at s3://bucket/prefix");
    println!("with VIRTGUARD_S3_ENDPOINT and AWS credentials in the virtguard-repo Secret; see README.md.");

    if args.keep_running {
        println!(
            "\nEverything stays up; KUBECONFIG={} . Ctrl-C stops it.",
            demo.sim.kubeconfig_path().display()
        );
        tokio::signal::ctrl_c().await?;
    }
    drop(demo);
    Ok(())
}

/// The claim name of the restored VM's first disk.
fn restored_claim(vm: &serde_json::Value) -> Option<String> {
    let vols = vm.pointer("/spec/template/spec/volumes")?.as_array()?;
    vols.iter().find_map(|v| {
        v.pointer("/persistentVolumeClaim/claimName")
            .or_else(|| v.pointer("/dataVolume/name"))
            .and_then(|n| n.as_str())
            .map(str::to_string)
    })
}
