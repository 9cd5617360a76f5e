//! The quickstart's whole system, started on one machine: a real tiny Linux guest under
//! QEMU/TCG managed by a private libvirt daemon (when the machine can run one), the simulated
//! cluster in which that guest is the VMI of VM `demo/guest` (its freeze and thaw go through
//! libvirt to the real QEMU guest agent; its disk file *is* the VM's PVC), two simulated VMs, and
//! the exporter twice (node mode on the libvirt daemon, cluster mode on the sim).
//!
//! [`Demo::start`] brings it all up; [`Demo::virtguard`] runs the real `virtguard` binary against
//! it; dropping the [`Demo`] stops everything it started (guest, daemon, network namespace,
//! exporters, sim). The `virtguard-quickstart` binary and the end-to-end test
//! `tests/tests/quickstart.rs` drive the same flow.
//!
//! Without root, libvirtd, QEMU or the guest build tools, [`Demo::start`] runs the same flow on
//! simulated VMs only ([`Demo::guest`] is `None`): `demo/guest`'s disk is then an ext4 image
//! made with `mke2fs -d` holding the same files.
//!
//! Layout of the guest's disk (ext4, mounted at `/mnt` in the guest): `/hello.txt` written
//! before boot; files the flow writes through the guest agent appear next to it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use virtguard_sim::{FaultRule, Scenario, Sim, SimConfig};

use crate::peers::{free_port, wait_for_port, workspace_root};

/// Namespace the quickstart's restore drills restore into.
pub const DRILL_SANDBOX: &str = "virtguard-drills";

/// Errors of the demo: what failed, with the command's output.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A step failed.
    #[error("{step}: {message}")]
    Step { step: String, message: String },
}

fn err(step: impl Into<String>, message: impl std::fmt::Display) -> DemoError {
    DemoError::Step {
        step: step.into(),
        message: message.to_string(),
    }
}

/// Runs a command to completion; its trimmed stdout, or an error with its stderr.
pub fn sh(step: &str, cmd: &mut Command) -> Result<String, DemoError> {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| err(step, format!("cannot run {cmd:?}: {e}")))?;
    if !o.status.success() {
        return Err(err(
            step,
            format!(
                "{cmd:?} exited with {}: {}{}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim(),
                String::from_utf8_lossy(&o.stdout).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Where the repository lives.
#[derive(Debug, Clone)]
pub enum RepoTarget {
    /// No `--repo`: the embedded default, `$XDG_DATA_HOME/virtguard/repository`, with
    /// `XDG_DATA_HOME` set to this directory.
    EmbeddedDefault { xdg_data_home: PathBuf },
    /// A local directory.
    Local(PathBuf),
    /// `s3://bucket/prefix` on an S3 endpoint; `env` carries the credentials.
    S3 {
        url: String,
        endpoint: String,
        env: Vec<(String, String)>,
    },
}

/// How to start the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Working directory (sim state, libvirt run dir, disks, repository by default).
    pub work: PathBuf,
    /// Use a real guest when the machine can run one (`false`: simulated VMs only).
    pub real_guest: bool,
    /// Where the guest build is cached (default ~/.cache/virtguard).
    pub guest_cache: Option<PathBuf>,
    /// The binaries (`virtguard`, `virtguard-exporter`).
    pub virtguard: PathBuf,
    pub exporter: PathBuf,
    /// Repository.
    pub repo: RepoTarget,
    /// Progress lines on stderr.
    pub verbose: bool,
}

/// The real guest's handles.
#[derive(Debug, Clone)]
pub struct Guest {
    /// libvirt URI of the private daemon.
    pub uri: String,
    /// Domain name (`demo_guest`, KubeVirt's `<namespace>_<name>`).
    pub domain: String,
    /// Network namespace of the daemon and the guest's tap.
    pub netns: String,
    /// Host side of the tap / guest address.
    pub tap: String,
    pub guest_ip: String,
    /// Static busybox for host-side ping.
    pub busybox: PathBuf,
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Libvirt {
    run: PathBuf,
    netns: String,
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        let _ = Command::new(scripts().join("stop-libvirtd.sh"))
            .arg(&self.run)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .stderr(Stdio::null())
            .status();
    }
}

/// The running demo. Dropping it stops everything.
pub struct Demo {
    /// The simulated cluster (in this process).
    pub sim: Sim,
    /// The real guest, when one runs.
    pub guest: Option<Guest>,
    /// Node-mode exporter port (real guest only) and cluster-mode exporter port.
    pub node_metrics_port: Option<u16>,
    pub cluster_metrics_port: u16,
    /// Content of `/hello.txt` on the guest's disk.
    pub hello: String,
    /// Size of the guest's disk.
    pub disk_size: u64,
    opts: DemoOptions,
    // Dropped in declaration order: exporters first, then libvirt (kills the guest).
    _exporters: Vec<Proc>,
    _libvirt: Option<Libvirt>,
}

fn scripts() -> PathBuf {
    workspace_root().join("scripts/guest")
}

fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why this machine cannot run the real guest (empty: it can).
pub fn real_guest_missing() -> Vec<String> {
    let mut missing = Vec::new();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        missing.push("root (QEMU under a private libvirtd, network namespaces)".to_string());
    }
    for b in [
        "libvirtd",
        "virsh",
        "qemu-system-x86_64",
        "ip",
        "unshare",
        "mkfs.ext4",
        "debugfs",
        "apt-get",
    ] {
        if !have(b) {
            missing.push(b.to_string());
        }
    }
    missing
}

fn wait_until(
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut() -> bool,
) -> Result<(), DemoError> {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() > deadline {
            return Err(err(what, format!("not done after {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Reads a file out of an ext4 image (no mount needed).
pub fn ext4_cat(image: &Path, path: &str) -> Result<String, DemoError> {
    sh(
        &format!("reading {path} from {}", image.display()),
        Command::new("debugfs")
            .args(["-R", &format!("cat {path}")])
            .arg(image),
    )
}

impl Demo {
    /// Starts everything (see the module docs).
    pub async fn start(opts: DemoOptions) -> Result<Demo, DemoError> {
        std::fs::create_dir_all(&opts.work).map_err(|e| err("creating the work dir", e))?;
        let say = |m: &str| {
            if opts.verbose {
                eprintln!("==> {m}");
            }
        };
        let missing = real_guest_missing();
        let real = opts.real_guest && missing.is_empty();
        if opts.real_guest && !real {
            eprintln!(
                "note: no real guest on this machine (missing: {}); running the flow on simulated VMs only",
                missing.join(", ")
            );
        }
        let hello = format!("hello from virtguard, written {}", now_utc());
        let disk = opts.work.join("guest-disk.img");
        let mut libvirt = None;
        let mut guest = None;
        let mut guest_dir = None;
        if real {
            let cache = opts.guest_cache.clone().unwrap_or_else(|| {
                PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                    .join(".cache/virtguard")
            });
            say("building the tiny guest (cached after the first run)");
            sh(
                "building the guest",
                Command::new(scripts().join("build-guest.sh")).arg(&cache),
            )?;
            let gdir = cache.join("guest");
            std::fs::copy(gdir.join("data.img"), &disk)
                .map_err(|e| err("copying the guest disk", e))?;
            let netns = format!("vgq{}", std::process::id());
            say("starting a private libvirt daemon");
            let run = opts.work.join("libvirt");
            let lv = Libvirt {
                run: run.clone(),
                netns: netns.clone(),
            };
            let uri = sh(
                "starting libvirtd",
                Command::new(scripts().join("start-libvirtd.sh"))
                    .arg(&run)
                    .arg(&netns),
            )?;
            libvirt = Some(lv);
            guest = Some(Guest {
                uri,
                domain: "demo_guest".into(),
                tap: format!("{netns}t"),
                netns,
                guest_ip: "10.78.0.2".into(),
                busybox: gdir.join("busybox"),
            });
            guest_dir = Some(gdir);
        } else {
            let files = opts.work.join("guest-files");
            std::fs::create_dir_all(&files).map_err(|e| err("creating the guest files", e))?;
            std::fs::write(files.join("hello.txt"), "").map_err(|e| err("writing hello.txt", e))?;
            let _ = std::fs::remove_file(&disk);
            sh(
                "making the guest disk",
                Command::new("mke2fs")
                    .args(["-q", "-t", "ext4", "-F", "-d"])
                    .arg(&files)
                    .arg(&disk)
                    .arg("64M"),
            )?;
        }
        // /hello.txt, written before boot (debugfs: no mount, no root needed).
        let hello_file = opts.work.join("hello.txt");
        std::fs::write(&hello_file, format!("{hello}\n"))
            .map_err(|e| err("writing hello.txt", e))?;
        let _ = Command::new("debugfs")
            .args(["-w", "-R", "rm /hello.txt"])
            .arg(&disk)
            .output();
        sh(
            "putting /hello.txt on the guest disk",
            Command::new("debugfs")
                .args([
                    "-w",
                    "-R",
                    &format!("write {} /hello.txt", hello_file.display()),
                ])
                .arg(&disk),
        )?;
        let disk_size = std::fs::metadata(&disk)
            .map_err(|e| err("guest disk", e))?
            .len();

        say("starting the simulated cluster");
        // The restore-drill sandbox; with a real guest, its VMIs boot as real QEMU domains from
        // their PVCs (the sim's launcher), on the same daemon and guest kernel.
        let mut yaml = format!("namespaces: [demo, apps, {DRILL_SANDBOX}]\n");
        if let (Some(g), Some(gdir)) = (&guest, &guest_dir) {
            let _ = writeln!(
                yaml,
                "launcher: {{libvirtUri: {:?}, kernel: {:?}, initrd: {:?}, namespaces: [{DRILL_SANDBOX}]}}",
                g.uri,
                gdir.join("vmlinuz").display().to_string(),
                gdir.join("initramfs.gz").display().to_string()
            );
        }
        yaml.push_str("vms:\n");
        let _ = writeln!(
            yaml,
            "  - namespace: demo\n    name: guest\n    labels: {{app: demo}}\n    disks:\n      - {{name: root, size: {}, content: {{file: {:?}}}}}",
            disk_size,
            disk.display().to_string()
        );
        if let Some(g) = &guest {
            let _ = writeln!(
                yaml,
                "    guestAgentLibvirt: {{uri: {:?}, domain: {}}}",
                g.uri, g.domain
            );
        }
        yaml.push_str(
            "  - namespace: apps
    name: web
    disks:
      - {name: root, size: 48Mi, content: {random: 7}, used: 16Mi}
      - {name: data, size: 32Mi, content: {pattern: \"order,42,shipped\\n\"}, used: 8Mi}
  - namespace: apps
    name: legacy
    guestAgent: false
    disks:
      - {name: root, size: 24Mi, content: {random: 8}, used: 8Mi}
",
        );
        let scenario =
            Scenario::from_yaml(&yaml, "quickstart").map_err(|e| err("the demo scenario", e))?;
        let sim = Sim::start(SimConfig {
            scenario,
            state_dir: Some(opts.work.join("sim")),
            kubeconfig_out: Some(opts.work.join("kubeconfig")),
            virtguard_bin: Some(opts.virtguard.clone()),
            ..Default::default()
        })
        .await
        .map_err(|e| err("starting the simulated cluster", e))?;

        if let (Some(g), Some(gdir)) = (&guest, &guest_dir) {
            // The guest runs on the PVC's own file: what it writes is what the cluster snapshots.
            let pvc = wait_pvc(&sim, "demo", "guest-root").await?;
            say("booting the real guest (QEMU/TCG, ~20-40 s)");
            let xml = sh(
                "domain XML",
                Command::new(scripts().join("domain-xml.sh")).args([
                    g.domain.as_str(),
                    &gdir.display().to_string(),
                    &pvc.display().to_string(),
                    &g.tap,
                    &format!("{}/24", g.guest_ip),
                ]),
            )?;
            let xml_path = opts.work.join("domain.xml");
            std::fs::write(&xml_path, xml).map_err(|e| err("writing domain.xml", e))?;
            sh(
                "creating the domain",
                Command::new("virsh")
                    .args(["-c", &g.uri, "create"])
                    .arg(&xml_path),
            )?;
            let console = pvc
                .parent()
                .unwrap_or(Path::new("/"))
                .join(format!("{}.console.log", g.domain));
            tokio::task::block_in_place(|| {
                wait_until("the guest to boot", Duration::from_secs(180), || {
                    std::fs::read_to_string(&console)
                        .is_ok_and(|s| s.contains("VIRTGUARD-GUEST-READY"))
                })
            })?;
            for args in [
                vec!["addr", "add", "10.78.0.1/24", "dev", g.tap.as_str()],
                vec!["link", "set", g.tap.as_str(), "up"],
            ] {
                sh(
                    "configuring the tap",
                    Command::new("ip")
                        .args(["netns", "exec", &g.netns, "ip"])
                        .args(&args),
                )?;
            }
        }

        say("starting the exporters");
        let mut exporters = Vec::new();
        let mut node_metrics_port = None;
        if let Some(g) = &guest {
            let port = free_port();
            let child = Command::new(&opts.exporter)
                .args([
                    "--mode",
                    "node",
                    "--node-name",
                    "demo-node",
                    "--libvirt-socket-glob",
                    "",
                ])
                .args([
                    "--libvirt-uri",
                    &g.uri,
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                ])
                .stdout(Stdio::null())
                .stderr(log_file(&opts.work, "exporter-node.log")?)
                .spawn()
                .map_err(|e| err("starting the node exporter", e))?;
            exporters.push(Proc(child));
            node_metrics_port = Some(port);
        }
        let cluster_metrics_port = free_port();
        let child = Command::new(&opts.exporter)
            .args([
                "--mode",
                "cluster",
                "--listen",
                &format!("127.0.0.1:{cluster_metrics_port}"),
            ])
            .env("KUBECONFIG", sim.kubeconfig_path())
            .stdout(Stdio::null())
            .stderr(log_file(&opts.work, "exporter-cluster.log")?)
            .spawn()
            .map_err(|e| err("starting the cluster exporter", e))?;
        exporters.push(Proc(child));
        for p in node_metrics_port.iter().chain([&cluster_metrics_port]) {
            if !wait_for_port(*p, Duration::from_secs(20)) {
                return Err(err(
                    "starting the exporters",
                    format!(
                        "nothing listens on 127.0.0.1:{p}; see {}",
                        opts.work.display()
                    ),
                ));
            }
        }
        Ok(Demo {
            sim,
            guest,
            node_metrics_port,
            cluster_metrics_port,
            hello,
            disk_size,
            opts,
            _exporters: exporters,
            _libvirt: libvirt,
        })
    }

    /// The real `virtguard` binary with this demo's kubeconfig and repository.
    pub fn virtguard(&self, args: &[&str]) -> Output {
        let mut c = Command::new(&self.opts.virtguard);
        match &self.opts.repo {
            RepoTarget::EmbeddedDefault { xdg_data_home } => {
                c.env("XDG_DATA_HOME", xdg_data_home);
            }
            RepoTarget::Local(dir) => {
                c.arg("--repo").arg(dir);
            }
            RepoTarget::S3 { url, endpoint, env } => {
                c.args(["--repo", url, "--s3-endpoint", endpoint, "--s3-path-style"]);
                c.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            }
        }
        c.args(args)
            .env("KUBECONFIG", self.sim.kubeconfig_path())
            .env_remove("VIRTGUARD_KEY")
            .stdin(Stdio::null());
        tokio::task::block_in_place(|| c.output()).unwrap_or_else(|e| Output {
            status: std::os::unix::process::ExitStatusExt::from_raw(127 << 8),
            stdout: Vec::new(),
            stderr: format!("cannot run {}: {e}", self.opts.virtguard.display()).into_bytes(),
        })
    }

    /// Runs a busybox command in the real guest through the guest agent; its exit code.
    pub fn guest_exec(&self, args: &[&str]) -> Result<i64, DemoError> {
        let g = self
            .guest
            .as_ref()
            .ok_or_else(|| err("guest-exec", "no real guest"))?;
        let cmd = serde_json::json!({"execute": "guest-exec",
            "arguments": {"path": "/bin/busybox", "arg": args}});
        let out = sh(
            "guest-exec",
            Command::new("virsh").args([
                "-c",
                &g.uri,
                "qemu-agent-command",
                &g.domain,
                &cmd.to_string(),
            ]),
        )?;
        let pid = serde_json::from_str::<serde_json::Value>(&out)
            .ok()
            .and_then(|v| v["return"]["pid"].as_i64())
            .ok_or_else(|| err("guest-exec", format!("unexpected reply {out}")))?;
        let status = serde_json::json!({"execute": "guest-exec-status", "arguments": {"pid": pid}});
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = sh(
                "guest-exec-status",
                Command::new("virsh").args([
                    "-c",
                    &g.uri,
                    "qemu-agent-command",
                    &g.domain,
                    &status.to_string(),
                ]),
            )?;
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            if v["return"]["exited"] == true {
                return Ok(v["return"]["exitcode"].as_i64().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                return Err(err(
                    "guest-exec",
                    format!("{args:?} did not finish within 60 s"),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Pings the guest from the host side of its tap (`count` packets).
    pub fn ping_guest(&self, count: u32) -> Result<(), DemoError> {
        let g = self
            .guest
            .as_ref()
            .ok_or_else(|| err("ping", "no real guest"))?;
        sh(
            "pinging the guest",
            Command::new("ip")
                .args(["netns", "exec", &g.netns])
                .arg(&g.busybox)
                .args([
                    "ping",
                    "-c",
                    &count.to_string(),
                    "-i",
                    "0.1",
                    "-W",
                    "2",
                    &g.guest_ip,
                ]),
        )
        .map(|_| ())
    }

    /// Makes every later snapshot of `ns/pvc` fail (to show a failed backup and its alert).
    pub fn break_snapshots_of(&self, ns: &str, pvc: &str) {
        self.sim.inject(FaultRule {
            op: "snapshot-error".into(),
            target: Some(format!("{ns}/{pvc}")),
            message: Some("injected by the demo: storage backend offline".into()),
            ..Default::default()
        });
    }

    /// The backing file of PVC `ns/name` in the simulated cluster.
    pub async fn pvc_file(&self, ns: &str, name: &str) -> Result<PathBuf, DemoError> {
        wait_pvc(&self.sim, ns, name).await
    }

    /// The working directory.
    pub fn work(&self) -> &Path {
        &self.opts.work
    }
}

async fn wait_pvc(sim: &Sim, ns: &str, name: &str) -> Result<PathBuf, DemoError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match sim.pvc_path(ns, name) {
            Ok(p) => return Ok(p),
            Err(e) if Instant::now() > deadline => return Err(err(format!("PVC {ns}/{name}"), e)),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn log_file(work: &Path, name: &str) -> Result<std::fs::File, DemoError> {
    std::fs::File::create(work.join(name)).map_err(|e| err(format!("creating {name}"), e))
}

fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("unix {secs}")
}

/// Fetches `http://127.0.0.1:{port}/metrics`.
pub fn scrape(port: u16) -> Result<String, DemoError> {
    ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .map_err(|e| err(format!("scraping 127.0.0.1:{port}"), e))?
        .body_mut()
        .read_to_string()
        .map_err(|e| err(format!("scraping 127.0.0.1:{port}"), e))
}

/// The value of the first sample of `metric` whose labels contain every `needle`.
pub fn sample(exposition: &str, metric: &str, needles: &[&str]) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
