//! Node mode against a real libvirt daemon managing a real QEMU (TCG) guest.
//!
//! One test boots the tiny guest once (scripts/guest/) and runs every assertion on it, in order:
//! 1. first scrape: KubeVirt identity (`default`/`testvm`), aliases `default` / `rootdisk`,
//!    balloon in bytes;
//! 2. ping from the host side of the tap (in a private netns) → interface counters rise;
//!    `dd` in the guest through the agent's guest-exec → write bytes and IOPS rise; a busy loop
//!    in the guest → the vCPU's time rises much faster than while idle;
//! 3. the real binary is scraped by a real Prometheus and the documented `topk` queries return
//!    the guest; the live exposition passes `promtool check metrics`;
//! 4. a real live migration to a second daemon (bandwidth-limited): progress metrics appear and
//!    move on the source, then vanish when the migration completes, and the VM is reported by
//!    the target daemon;
//! 5. faults: a daemon frozen with SIGSTOP (accepts, never answers), a socket that accepts and
//!    never answers, a domain destroyed between the stats call and the follow-up calls, a daemon
//!    killed mid-scrape — each gives `scrape_success 0` for its VM only, within the timeout;
//!    then the killed daemon is restarted on the same socket and the collector reconnects.
//!
//! Needs root, libvirtd, virsh, qemu-system-x86_64, ip, unshare, mkfs.ext4, apt-get (the guest is
//! built from Debian packages into $VIRTGUARD_GUEST_CACHE or ~/.cache/virtguard, once),
//! prometheus and promtool. Missing pieces fail the test unless VIRTGUARD_ALLOW_SKIP=1.
//!
//! The steps share one booted guest (booting it costs most of the test's time), so they stay one
//! test function, in order; the machinery it runs on — a private libvirtd, the network
//! namespace, guest-exec, HTTP scrapes, a simulated cluster naming the guest's hidden NIC — is
//! in `harness`.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod harness;

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::HashMap;
use virtguard_e2e::peers::{free_port, promtool_check_metrics, Prometheus, PrometheusConfig};
use virtguard_exporter::node::guest_nics::WantedNic;
use virtguard_exporter::node::stats::Identity;
use virtguard_exporter::node::NodeScrape;

use harness::{
    collector, disk, guest_exec, http_get, http_try, net, ping, requirements, scripts, sh,
    sim_with_sriov_vmi, vm, wait_for, Daemon, NetnsGuard, Proc,
};

const NS: &str = "default";
const VM: &str = "testvm";
/// MAC of the guest's second NIC, which libvirt does not know (an SR-IOV VF stand-in).
const HIDDEN_NIC_MAC: &str = "02:5a:00:00:00:07";

#[test]
fn real_guest_end_to_end() {
    if !requirements() {
        return;
    }
    let t0 = Instant::now();
    let cache = std::env::var("VIRTGUARD_GUEST_CACHE").unwrap_or_else(|_| {
        format!(
            "{}/.cache/virtguard",
            std::env::var("HOME").unwrap_or("/root".into())
        )
    });
    sh(Command::new(scripts().join("build-guest.sh")).arg(&cache));
    let guest = PathBuf::from(&cache).join("guest");
    let busybox = guest.join("busybox");

    let tmp = tempfile::Builder::new()
        .prefix("vg-guest-")
        .tempdir()
        .unwrap();
    let netns = format!("vgx{}", std::process::id());
    let _netns_guard = NetnsGuard(netns.clone());
    let a = Daemon::start(&tmp.path().join("a"), &netns);
    let disk_img = tmp.path().join("disk.img");
    std::fs::copy(guest.join("data.img"), &disk_img).unwrap();
    let tap_a = format!("{netns}a");
    let xml = sh(Command::new(scripts().join("domain-xml.sh")).args([
        format!("{NS}_{VM}").as_str(),
        guest.to_str().unwrap(),
        disk_img.to_str().unwrap(),
        &tap_a,
        "10.77.0.2/24",
        "256",
        HIDDEN_NIC_MAC,
    ]));
    let xml_path = tmp.path().join("domain.xml");
    std::fs::write(&xml_path, &xml).unwrap();
    a.virsh(&["create", xml_path.to_str().unwrap()]);
    let console = tmp.path().join(format!("{NS}_{VM}.console.log"));
    wait_for("the guest to boot", Duration::from_secs(120), || {
        std::fs::read_to_string(&console).is_ok_and(|s| s.contains("VIRTGUARD-GUEST-READY"))
    });
    eprintln!("guest booted after {:?}", t0.elapsed());

    a.warm_up_cpu_stats(&format!("{NS}_{VM}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = collector(vec![a.uri.clone()], Duration::from_secs(3), None);

    // 1. Identity, aliases, units.
    let s1 = rt.block_on(c.scrape());
    let v1 = vm(&s1, VM);
    assert!(v1.success);
    assert_eq!(v1.identity.namespace, NS);
    assert_eq!(s1.connections.up, 1);
    assert_eq!(
        v1.memory[6],
        Some(256 * 1024),
        "balloon.current in KiB (rendered x1024)"
    );

    // 2. Network traffic from the host side of the tap, disk I/O inside the guest.
    sh(Command::new("ip").args([
        "netns",
        "exec",
        &netns,
        "ip",
        "addr",
        "add",
        "10.77.0.1/24",
        "dev",
        &tap_a,
    ]));
    sh(Command::new("ip").args(["netns", "exec", &netns, "ip", "link", "set", &tap_a, "up"]));
    ping(&netns, &busybox, 10);
    guest_exec(
        &a,
        &format!("{NS}_{VM}"),
        &[
            "dd",
            "if=/dev/urandom",
            "of=/mnt/f",
            "bs=1M",
            "count=4",
            "conv=fsync",
        ],
    );
    let s2 = rt.block_on(c.scrape());
    let v2 = vm(&s2, VM);
    let (rx1, tx1, rxp1) = net(v1);
    let (rx2, tx2, rxp2) = net(v2);
    assert!(
        rxp2 >= rxp1 + 10,
        "guest received the 10 echo requests: {rxp1} -> {rxp2}"
    );
    assert!(
        rx2 > rx1 + 10 * 84 && tx2 > tx1 + 10 * 84,
        "bytes rose: rx {rx1}->{rx2} tx {tx1}->{tx2}"
    );
    let (wb1, wr1) = disk(v1);
    let (wb2, wr2) = disk(v2);
    assert!(
        wb2 >= wb1 + 4 * 1024 * 1024,
        "4 MiB written: {wb1} -> {wb2}"
    );
    assert!(wr2 > wr1, "write requests rose: {wr1} -> {wr2}");

    // 2a. CPU: the vCPU's time rises much faster while the guest burns CPU than while it idles
    // (rates against the same wall clock, compared with each other, never to fixed durations).
    cpu_rises_while_busy(&rt, &c, &a);
    filesystem_fills(&rt, &a);

    // 2b. SR-IOV stand-in: the guest's eth1 is a NIC libvirt does not know (added through
    // <qemu:commandline>), so its traffic is in no libvirt stats; with the VMI naming it
    // (interface `fast`, its MAC) the collector takes its counters from the guest agent.
    let agent_c = collector(vec![a.uri.clone()], Duration::from_secs(3), None).with_guest_nics(
        Arc::new(|| {
            HashMap::from([(
                Identity {
                    namespace: NS.into(),
                    name: VM.into(),
                },
                vec![
                    WantedNic {
                        interface: "fast".into(),
                        mac: HIDDEN_NIC_MAC.into(),
                    },
                    // Not in the guest: no series, no failure.
                    WantedNic {
                        interface: "absent".into(),
                        mac: "02:5a:00:00:00:99".into(),
                    },
                ],
            )])
        }),
    );
    let hidden = |s: &NodeScrape| {
        let v = vm(s, VM);
        assert!(v.success);
        assert!(
            v.interfaces.iter().all(|d| d.label != "fast"),
            "libvirt does not see the hidden NIC: {:?}",
            v.interfaces
        );
        assert_eq!(
            v.guest_agent_interfaces.len(),
            1,
            "{:?}",
            v.guest_agent_interfaces
        );
        let d = &v.guest_agent_interfaces[0];
        assert_eq!(d.label, "fast");
        (d.values[1].unwrap(), d.values[3].unwrap()) // tx bytes, tx packets
    };
    // While eth1 is down the agent reports it without statistics: no series is invented.
    let s_down = rt.block_on(agent_c.scrape());
    assert!(vm(&s_down, VM).success);
    assert!(
        vm(&s_down, VM).guest_agent_interfaces.is_empty(),
        "{:?}",
        vm(&s_down, VM).guest_agent_interfaces
    );
    guest_exec(
        &a,
        &format!("{NS}_{VM}"),
        &[
            "sh",
            "-c",
            "ip link set eth1 up && ip addr add 10.0.2.15/24 dev eth1",
        ],
    );
    let (txb1, txp1) = hidden(&rt.block_on(agent_c.scrape()));
    guest_exec(
        &a,
        &format!("{NS}_{VM}"),
        &["sh", "-c", "ping -c 5 -i 0.2 -W 1 10.0.2.2; true"],
    );
    let s_agent = rt.block_on(agent_c.scrape());
    let (txb2, txp2) = hidden(&s_agent);
    assert!(
        txp2 >= txp1 + 3 && txb2 > txb1 + 3 * 42,
        "the guest's traffic on the hidden NIC counts: tx packets {txp1} -> {txp2}, bytes {txb1} -> {txb2}"
    );
    // libvirt's own NIC is still reported from libvirt, unchanged in kind.
    assert!(vm(&s_agent, VM)
        .interfaces
        .iter()
        .any(|d| d.label == "default"));

    // 2c. The same through the real binary with --guest-agent-nics: the VMI (in the simulated
    // cluster, on node sim-node-1) declares `fast` as an SR-IOV interface with the hidden NIC's
    // MAC; the exporter watches its node's VMIs and renders the agent's counters with
    // source="guest-agent", and the mixed label sets pass promtool.
    let sim = rt.block_on(sim_with_sriov_vmi());
    let port_agent = free_port();
    let agent_exporter = Proc(
        Command::new(env!("CARGO_BIN_EXE_virtguard-exporter"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port_agent}"),
                "--node-name",
                "sim-node-1",
                "--libvirt-socket-glob",
                "",
                "--libvirt-uri",
                &a.uri,
                "--guest-agent-nics",
            ])
            .env("KUBECONFIG", sim.kubeconfig_path())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let series = format!(
        "kubevirt_vmi_network_transmit_packets_total{{namespace=\"{NS}\",name=\"{VM}\",node=\"sim-node-1\",interface=\"fast\",source=\"guest-agent\"}} "
    );
    let mut text = String::new();
    wait_for(
        "the guest-agent NIC series",
        Duration::from_secs(30),
        || {
            text = http_try(port_agent, "/metrics").unwrap_or_default();
            text.contains(&series)
        },
    );
    assert!(
        text.contains(&format!(
            "kubevirt_vmi_network_transmit_packets_total{{namespace=\"{NS}\",name=\"{VM}\",node=\"sim-node-1\",interface=\"default\"}} "
        )),
        "libvirt's NIC keeps its plain series\n{text}"
    );
    promtool_check_metrics(&text).unwrap();
    drop(agent_exporter);
    drop(sim);

    // 3. The real binary, scraped by a real Prometheus; the documented queries find the guest.
    let port = free_port();
    let bin = env!("CARGO_BIN_EXE_virtguard-exporter");
    let _exporter = Proc(
        Command::new(bin)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--node-name",
                "node-a",
            ])
            .args(["--libvirt-socket-glob", "", "--libvirt-uri", &a.uri])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prom = Prometheus::start(&PrometheusConfig {
        targets: vec![format!("127.0.0.1:{port}")],
        ..PrometheusConfig::default()
    })
    .unwrap();
    let exposition = http_get(port, "/metrics");
    promtool_check_metrics(&exposition).unwrap();
    for series in [
        "kubevirt_vmi_vcpu_seconds_total{namespace=\"default\",name=\"testvm\",node=\"node-a\",id=\"0\",state=\"",
        "kubevirt_vmi_cpu_usage_seconds_total{namespace=\"default\",name=\"testvm\",node=\"node-a\"} ",
        "kubevirt_vmi_vcpu_delay_seconds_total{namespace=\"default\",name=\"testvm\",node=\"node-a\",id=\"0\"} ",
    ] {
        assert!(exposition.contains(series), "{series} missing\n{exposition}");
    }
    let queries = [
        "topk(3, sum by (name, namespace) (rate(kubevirt_vmi_network_receive_bytes_total[6m])) + sum by (name, namespace) (rate(kubevirt_vmi_network_transmit_bytes_total[6m]))) > 0",
        "topk(3, sum by (name, namespace) (rate(kubevirt_vmi_storage_read_traffic_bytes_total[6m])) + sum by (name, namespace) (rate(kubevirt_vmi_storage_write_traffic_bytes_total[6m]))) > 0",
        "topk(3, sum by (name, namespace) (rate(kubevirt_vmi_storage_iops_read_total[6m])) + sum by (name, namespace) (rate(kubevirt_vmi_storage_iops_write_total[6m]))) > 0",
    ];
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut pending: Vec<&str> = queries.to_vec();
    while !pending.is_empty() && Instant::now() < deadline {
        ping(&netns, &busybox, 3);
        guest_exec(
            &a,
            &format!("{NS}_{VM}"),
            &[
                "dd",
                "if=/dev/urandom",
                "of=/mnt/g",
                "bs=64k",
                "count=4",
                "conv=fsync",
            ],
        );
        pending.retain(|q| {
            let r = prom.query(q).unwrap();
            let hit = r.as_array().is_some_and(|a| {
                a.iter()
                    .any(|x| x["metric"]["name"] == VM && x["metric"]["namespace"] == NS)
            });
            !hit
        });
    }
    assert!(
        pending.is_empty(),
        "documented queries without the guest: {pending:?}"
    );
    let swap = prom
        .query("sum by (name, namespace) (rate(kubevirt_vmi_memory_swap_in_traffic_bytes[6m]))")
        .unwrap();
    assert_eq!(
        swap[0]["metric"]["name"], VM,
        "swap query selects the guest: {swap}"
    );
    drop(prom);
    eprintln!("prometheus phase done after {:?}", t0.elapsed());

    // 4. A real live migration to a second daemon, bandwidth-limited so it can be observed.
    let b = Daemon::start(&tmp.path().join("b"), &netns);
    let dom = format!("{NS}_{VM}");
    let mig_xml = a
        .virsh(&["dumpxml", "--migratable", &dom])
        .replace(&tap_a, &format!("{netns}b"));
    let mig_path = tmp.path().join("mig.xml");
    std::fs::write(&mig_path, mig_xml).unwrap();
    a.virsh(&["migrate-setspeed", &dom, "2"]);
    let mut migrate = Proc(
        Command::new("virsh")
            .args(["-c", &a.uri, "migrate", "--live", "--unsafe", "--xml"])
            .arg(&mig_path)
            .args([
                &dom,
                &b.uri,
                "--migrateuri",
                &format!("tcp://127.0.0.1:{}", free_port()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut processed = Vec::new();
    wait_for(
        "migration progress to move",
        Duration::from_secs(20),
        || {
            let s = rt.block_on(c.scrape());
            if let Some(m) = vm(&s, VM).migration {
                let p = m[0].unwrap_or(0);
                assert!(
                    m[1].is_some() && m[4].is_some(),
                    "remaining and total present: {m:?}"
                );
                if processed.last() != Some(&p) {
                    processed.push(p);
                }
            }
            processed.len() >= 3
        },
    );
    assert!(
        processed.windows(2).all(|w| w[1] > w[0]),
        "processed bytes grow: {processed:?}"
    );
    a.virsh(&["migrate-setspeed", &dom, "8796093022207"]);
    let status = migrate.0.wait().unwrap();
    assert!(status.success(), "virsh migrate failed");
    b.warm_up_cpu_stats(&dom);
    let both = collector(
        vec![a.uri.clone(), b.uri.clone()],
        Duration::from_secs(3),
        None,
    );
    let s = rt.block_on(both.scrape());
    let v = vm(&s, VM);
    assert!(
        v.success && v.migration.is_none(),
        "after the migration no progress series: {v:?}"
    );
    assert_eq!(s.connections.up, 2);
    assert_eq!(s.vms.len(), 1, "the source no longer reports the VM");
    assert!(a.virsh(&["list", "--name"]).is_empty());
    eprintln!("migration phase done after {:?}", t0.elapsed());

    // 5a. A frozen daemon (SIGSTOP: the kernel accepts, nobody answers) and a socket that
    // accepts and never answers, next to a healthy connection.
    let hung_sock = tmp.path().join("hung.sock");
    let listener = UnixListener::bind(&hung_sock).unwrap();
    let _acceptor = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let hung_uri = format!("qemu+unix:///system?socket={}", hung_sock.display());
    let timeout = Duration::from_secs(1);
    let f = collector(vec![b.uri.clone(), hung_uri], timeout, None);
    let s = rt.block_on(f.scrape());
    assert!(
        vm(&s, VM).success,
        "the hung socket does not cost the healthy VM"
    );
    assert_eq!((s.connections.up, s.connections.down), (1, 1));
    b.signal("STOP");
    let t = Instant::now();
    let s = rt.block_on(f.scrape());
    assert!(
        t.elapsed() < timeout + Duration::from_millis(700),
        "scrape bounded: {:?}",
        t.elapsed()
    );
    assert!(
        !vm(&s, VM).success,
        "frozen daemon → scrape_success 0 for its VM"
    );
    assert_eq!(s.connections.down, 2);
    let t = Instant::now();
    let s = rt.block_on(f.scrape());
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "still-blocked connections fail at once: {:?}",
        t.elapsed()
    );
    assert!(!vm(&s, VM).success);
    b.signal("CONT");
    wait_for(
        "the thawed daemon to answer again",
        Duration::from_secs(10),
        || {
            rt.block_on(f.scrape())
                .vms
                .iter()
                .any(|v| v.identity.name == VM && v.success)
        },
    );

    // 5b. A domain destroyed between the stats call and the follow-up calls.
    let doomed_img = tmp.path().join("doomed.img");
    std::fs::copy(guest.join("data.img"), &doomed_img).unwrap();
    let doomed_xml = sh(Command::new(scripts().join("domain-xml.sh")).args([
        "default_doomed",
        guest.to_str().unwrap(),
        doomed_img.to_str().unwrap(),
        &format!("{netns}c"),
        "10.77.0.3/24",
    ]));
    let doomed_path = tmp.path().join("doomed.xml");
    std::fs::write(&doomed_path, doomed_xml).unwrap();
    b.virsh(&["create", doomed_path.to_str().unwrap()]);
    let b_uri = b.uri.clone();
    let hook: virtguard_exporter::node::Hook = Arc::new(move |_uri: &str| {
        let _ = Command::new("virsh")
            .args(["-c", &b_uri, "destroy", "default_doomed"])
            .output();
    });
    let d = collector(vec![b.uri.clone()], Duration::from_secs(5), Some(hook));
    let s = rt.block_on(d.scrape());
    let doomed = vm(&s, "doomed");
    assert!(
        !doomed.success,
        "destroyed mid-scrape → scrape_success 0: {doomed:?}"
    );
    assert!(doomed.interfaces.is_empty() && doomed.drives.is_empty());
    assert!(
        vm(&s, VM).success,
        "the other domain of the same daemon is unaffected"
    );

    // 5c. The daemon killed in the middle of a scrape, then gone.
    let pid = b.pid();
    let hook: virtguard_exporter::node::Hook = Arc::new(move |_uri: &str| {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        std::thread::sleep(Duration::from_millis(200));
    });
    let k = collector(vec![b.uri.clone()], Duration::from_secs(2), Some(hook));
    let s = rt.block_on(k.scrape());
    assert!(!vm(&s, VM).success, "killed mid-scrape → scrape_success 0");
    let t = Instant::now();
    let s = rt.block_on(k.scrape());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "dead daemon fails fast: {:?}",
        t.elapsed()
    );
    assert!(
        !vm(&s, VM).success,
        "known VM of a dead daemon is still reported as failed"
    );
    assert_eq!(s.connections.down, 1);

    // 5d. The daemon comes back on the same socket: the same collector reconnects, and since
    // the QEMU process survived, the VM is reported again.
    let b2 = Daemon::start(&tmp.path().join("b"), &netns);
    wait_for(
        "the collector to reconnect to the restarted daemon",
        Duration::from_secs(20),
        || {
            rt.block_on(k.scrape())
                .vms
                .iter()
                .any(|v| v.identity.name == VM && v.success)
        },
    );
    drop(b2);
    eprintln!("real-guest test done after {:?}", t0.elapsed());
    // The call stuck on the never-answering socket keeps its blocking thread; a plain runtime
    // drop would wait for it forever.
    rt.shutdown_timeout(Duration::from_millis(100));
}

/// Step 2a: CPU series. Measures the vCPU's time rate over an idle window and over a window in
/// which the guest runs a shell busy loop (through the agent), both against the same clock, and
/// requires the busy rate to be well above the idle one; the domain totals rise too.
fn cpu_rises_while_busy(
    rt: &tokio::runtime::Runtime,
    c: &virtguard_exporter::node::NodeCollector,
    d: &Daemon,
) {
    let dom = format!("{NS}_{VM}");
    eprintln!(
        "CPU stats of the guest (for fixtures/domstats.txt):\n{}",
        d.virsh(&["domstats", "--raw", "--cpu-total", "--vcpu", &dom])
    );
    let sample = || {
        let s = rt.block_on(c.scrape());
        let v = vm(&s, VM);
        assert!(v.success);
        let vcpu = v.cpu.vcpus.first().expect("vCPU 0 reported");
        assert_eq!(vcpu.id, "0");
        assert!(vcpu.state.is_some(), "vcpu.0.state reported: {vcpu:?}");
        let total = v.cpu.total;
        assert!(
            total.iter().all(Option::is_some),
            "cpu.time/user/system reported: {total:?}"
        );
        (Instant::now(), vcpu.values[0].unwrap(), total[0].unwrap())
    };
    let (t0, v0, c0) = sample();
    std::thread::sleep(Duration::from_secs(3));
    let (t1, v1, c1) = sample();
    guest_exec(
        d,
        &dom,
        &[
            "sh",
            "-c",
            "end=$(($(date +%s)+4)); while [ $(date +%s) -lt $end ]; do i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done; done",
        ],
    );
    let (t2, v2, c2) = sample();
    let rate = |a: u64, b: u64, ta: Instant, tb: Instant| {
        (b.saturating_sub(a)) as f64 / 1e9 / (tb - ta).as_secs_f64()
    };
    let idle = rate(v0, v1, t0, t1);
    let busy = rate(v1, v2, t1, t2);
    eprintln!("vCPU 0 busy fraction: idle {idle:.3}, busy loop {busy:.3}");
    assert!(
        busy > 3.0 * idle && busy > 0.05,
        "vCPU time rises while the guest burns CPU: idle {idle:.3} s/s, busy {busy:.3} s/s"
    );
    assert!(c2 > c1 && c1 >= c0, "cpu.time rises: {c0} {c1} {c2}");
    assert!(c2 >= v2, "the domain total includes the vCPU's time");
}

/// Step 2a': guest filesystems through the agent (`--guest-agent-filesystems`): the data disk
/// mounted at /mnt is reported with its size; writing 8 MiB into it raises its used bytes; the
/// rendered series pass promtool; filling it fires VirtguardGuestFilesystemOutOfSpace in a real
/// Prometheus. A collector without the flag reports no filesystem.
fn filesystem_fills(rt: &tokio::runtime::Runtime, d: &Daemon) {
    use virtguard_exporter::node::{NodeCollector, NodeConfig};
    let fs_c = NodeCollector::new(NodeConfig {
        node_name: "node-a".into(),
        socket_globs: vec![],
        uris: vec![d.uri.clone()],
        timeout: Duration::from_secs(3),
        guest_filesystems: true,
        ..NodeConfig::default()
    })
    .unwrap();
    let mnt = |s: &NodeScrape| {
        let v = vm(s, VM);
        assert!(v.success);
        v.filesystems
            .iter()
            .find(|f| f.mount_point == "/mnt")
            .unwrap_or_else(|| panic!("/mnt not reported: {:?}", v.filesystems))
            .clone()
    };
    let before = mnt(&rt.block_on(fs_c.scrape()));
    assert!(before.capacity > 0, "{before:?}");
    guest_exec(
        d,
        &format!("{NS}_{VM}"),
        &[
            "dd",
            "if=/dev/zero",
            "of=/mnt/fill",
            "bs=1M",
            "count=8",
            "conv=fsync",
        ],
    );
    let s = rt.block_on(fs_c.scrape());
    let after = mnt(&s);
    let (u0, u1) = (before.used.unwrap(), after.used.unwrap());
    assert!(
        u1 >= u0 + 8 * 1024 * 1024,
        "used bytes rose by 8 MiB: {u0} -> {u1}"
    );
    assert_eq!(after.capacity, before.capacity);
    let mut out = virtguard_exporter::render::Exposition::default();
    virtguard_exporter::render::render_node(
        &mut out,
        "node-a",
        &s.vms,
        virtguard_exporter::render::ConnectionCounts::default(),
    );
    let text = out.into_string();
    assert!(
        text.contains(&format!(
            "kubevirt_vmi_filesystem_used_bytes{{namespace=\"{NS}\",name=\"{VM}\",node=\"node-a\",disk_name=\"{}\",mount_point=\"/mnt\",file_system_type=\"{}\"}} {u1}\n",
            after.disk_name, after.fs_type
        )),
        "{text}"
    );
    promtool_check_metrics(&text).unwrap();

    // Fill /mnt completely: the real exporter binary (with the flag), scraped by a real
    // Prometheus that loads the real rules (`for:` shortened to 1s), fires
    // VirtguardGuestFilesystemOutOfSpace for it.
    guest_exec(
        d,
        &format!("{NS}_{VM}"),
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/mnt/fill bs=1M 2>/dev/null; sync; true",
        ],
    );
    let rules_dir = tempfile::tempdir().unwrap();
    let rules = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../alerts/virtguard.rules.yaml"),
    )
    .unwrap()
    .lines()
    .map(|l| match l.trim_start().strip_prefix("for: ") {
        Some(_) => format!("{}for: 1s", &l[..l.len() - l.trim_start().len()]),
        None => l.to_string(),
    })
    .collect::<Vec<_>>()
    .join("\n");
    let rules_path = rules_dir.path().join("virtguard.rules.yaml");
    std::fs::write(&rules_path, rules).unwrap();
    let port = free_port();
    let _exporter = Proc(
        Command::new(env!("CARGO_BIN_EXE_virtguard-exporter"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--node-name",
                "node-a",
            ])
            .args(["--libvirt-socket-glob", "", "--libvirt-uri", &d.uri])
            .arg("--guest-agent-filesystems")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prom = Prometheus::start(&PrometheusConfig {
        targets: vec![format!("127.0.0.1:{port}")],
        rule_files: vec![rules_path],
        ..PrometheusConfig::default()
    })
    .unwrap();
    let alert = prom
        .wait_for_alert(
            "VirtguardGuestFilesystemOutOfSpace",
            "firing",
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(alert["labels"]["mount_point"], "/mnt", "{alert}");
    assert_eq!(alert["labels"]["name"], VM, "{alert}");
    drop(prom);
    guest_exec(d, &format!("{NS}_{VM}"), &["rm", "-f", "/mnt/fill"]);
    let plain = collector(vec![d.uri.clone()], Duration::from_secs(3), None);
    assert!(vm(&rt.block_on(plain.scrape()), VM).filesystems.is_empty());
}
