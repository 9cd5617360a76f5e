//! The machinery of the real-guest test: a private libvirtd (scripts/guest/), the network
//! namespace and child processes cleaned up on drop, guest-exec through the guest agent, pings
//! from the host side of the tap, collectors and scrape accessors, plain HTTP GETs, and a
//! simulated cluster in which the guest's VMI names its hidden NIC.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use virtguard_e2e::peers::require_binary;
use virtguard_exporter::node::stats::VmStats;
use virtguard_exporter::node::{NodeCollector, NodeConfig, NodeScrape};

use crate::{HIDDEN_NIC_MAC, NS, VM};

pub fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/guest")
}

pub fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A private libvirtd (scripts/guest/start-libvirtd.sh), stopped on drop.
pub struct Daemon {
    run: PathBuf,
    pub uri: String,
}

impl Daemon {
    pub fn start(run: &Path, netns: &str) -> Daemon {
        let uri = sh(Command::new(scripts().join("start-libvirtd.sh"))
            .arg(run)
            .arg(netns));
        Daemon {
            run: run.to_path_buf(),
            uri,
        }
    }

    pub fn pid(&self) -> i32 {
        std::fs::read_to_string(self.run.join("libvirtd.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    pub fn virsh(&self, args: &[&str]) -> String {
        sh(Command::new("virsh").arg("-c").arg(&self.uri).args(args))
    }

    /// libvirt's first CPU_TOTAL stats call on a fresh daemon takes ~4 s here (once per daemon,
    /// then ~30 ms), longer than the collectors' deadlines: make it before the first scrape so
    /// the steps test the exporter, not libvirt's one-off warm-up. (A real exporter reports that
    /// first scrape of a new VM's daemon as `scrape_success 0` and the next one normally.)
    pub fn warm_up_cpu_stats(&self, domain: &str) {
        self.virsh(&["domstats", "--cpu-total", domain]);
    }

    pub fn signal(&self, sig: &str) {
        sh(Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string()));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The pid file is gone when the daemon already exited; never panic in drop.
        if let Some(pid) = std::fs::read_to_string(self.run.join("libvirtd.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(pid.to_string())
                .status();
        }
        let _ = Command::new(scripts().join("stop-libvirtd.sh"))
            .arg(&self.run)
            .status();
    }
}

pub struct NetnsGuard(pub String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// Child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn requirements() -> bool {
    let uid = sh(Command::new("id").arg("-u"));
    let mut missing: Vec<String> = Vec::new();
    if uid != "0" {
        missing.push("root (libvirtd with QEMU as root, network namespaces)".into());
    }
    for b in [
        "libvirtd",
        "virsh",
        "qemu-system-x86_64",
        "ip",
        "unshare",
        "mkfs.ext4",
        "apt-get",
        "prometheus",
        "promtool",
    ] {
        if let Err(e) = require_binary(b) {
            missing.push(e.to_string());
        }
    }
    if missing.is_empty() {
        return true;
    }
    if std::env::var("VIRTGUARD_ALLOW_SKIP").is_ok_and(|v| v == "1") {
        eprintln!("SKIP real_guest: missing {}", missing.join("; "));
        return false;
    }
    panic!(
        "real-guest test needs: {} (or set VIRTGUARD_ALLOW_SKIP=1)",
        missing.join("; ")
    );
}

pub fn collector(
    uris: Vec<String>,
    timeout: Duration,
    hook: Option<virtguard_exporter::node::Hook>,
) -> NodeCollector {
    NodeCollector::new(NodeConfig {
        node_name: "node-a".into(),
        socket_globs: vec![],
        uris,
        timeout,
        hook,
        ..NodeConfig::default()
    })
    .unwrap()
}

pub fn vm<'a>(s: &'a NodeScrape, name: &str) -> &'a VmStats {
    s.vms
        .iter()
        .find(|v| v.identity.name == name)
        .unwrap_or_else(|| panic!("VM {name} not in scrape: {s:?}"))
}

/// (rx bytes, tx bytes, rx packets) of interface `default`.
pub fn net(v: &VmStats) -> (u64, u64, u64) {
    let d = v.interfaces.iter().find(|d| d.label == "default").unwrap();
    (
        d.values[0].unwrap(),
        d.values[1].unwrap(),
        d.values[2].unwrap(),
    )
}

/// (write bytes, write requests) of drive `rootdisk`.
pub fn disk(v: &VmStats) -> (u64, u64) {
    let d = v.drives.iter().find(|d| d.label == "rootdisk").unwrap();
    (d.values[1].unwrap(), d.values[3].unwrap())
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

pub fn guest_exec(d: &Daemon, domain: &str, args: &[&str]) {
    let cmd = serde_json::json!({"execute": "guest-exec",
        "arguments": {"path": "/bin/busybox", "arg": args}});
    let out = d.virsh(&["qemu-agent-command", domain, &cmd.to_string()]);
    let pid = serde_json::from_str::<serde_json::Value>(&out).unwrap()["return"]["pid"]
        .as_i64()
        .unwrap();
    let status = serde_json::json!({"execute": "guest-exec-status", "arguments": {"pid": pid}});
    wait_for("guest-exec to finish", Duration::from_secs(30), || {
        let out = d.virsh(&["qemu-agent-command", domain, &status.to_string()]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["return"]["exited"] == true
    });
}

pub fn ping(netns: &str, busybox: &Path, count: u32) {
    sh(Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(busybox)
        .args([
            "ping",
            "-c",
            &count.to_string(),
            "-i",
            "0.1",
            "-W",
            "2",
            "10.77.0.2",
        ]));
}

/// GET without assertions: None when the exporter is not up yet or answers non-200.
pub fn http_try(port: u16, path: &str) -> Option<String> {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// A simulated cluster in which VM default/testvm runs with an SR-IOV interface `fast` whose MAC
/// is the hidden NIC's (virt-handler reports it in `status.interfaces`).
pub async fn sim_with_sriov_vmi() -> virtguard_sim::Sim {
    use kube::api::{Patch, PatchParams};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let scenario = virtguard_sim::Scenario::from_yaml(
        &format!(
            "vms:\n  - {{namespace: {NS}, name: {VM}, running: false, disks: [{{name: root, size: 1Mi}}]}}\n"
        ),
        "real-guest",
    )
    .unwrap();
    let sim = virtguard_sim::Sim::start(virtguard_sim::SimConfig {
        scenario,
        ..Default::default()
    })
    .await
    .unwrap();
    let client = sim.client().await.unwrap();
    let vms: kube::Api<virtguard_api::kubevirt::VirtualMachine> =
        kube::Api::namespaced(client.clone(), NS);
    let patch = serde_json::json!({"spec": {
        "runStrategy": "Always",
        "running": null,
        "template": {"spec": {
            "domain": {"devices": {"interfaces": [
                {"name": "default", "masquerade": {}},
                {"name": "fast", "sriov": {}, "macAddress": HIDDEN_NIC_MAC},
            ]}},
            "networks": [
                {"name": "default", "pod": {}},
                {"name": "fast", "multus": {"networkName": "sriov-net"}},
            ],
        }},
    }});
    vms.patch(VM, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let vmis: kube::Api<virtguard_api::kubevirt::VirtualMachineInstance> =
        kube::Api::namespaced(client, NS);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = vmis.get_opt(VM).await.unwrap() {
            if !virtguard_exporter::node::guest_nics::wanted_from_vmi(&v).is_empty() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the VMI never reported `fast`");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sim
}

pub fn http_get(port: u16, path: &str) -> String {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // hyper answers with Content-Length here (full body), so the body is the exposition.
    body.to_string()
}
