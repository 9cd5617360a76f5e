//! Golden exposition for a recorded stats fixture, checked by a real parser.
//!
//! `fixtures/domstats.txt` is `virsh domstats --raw --state --balloon --interface --block` of the
//! tiny guest under a real libvirtd (scripts/guest/), its `cpu.*` and `vcpu.*` lines from
//! `--cpu-total --vcpu` of the same guest (recorded later, inserted where libvirt puts them);
//! `fixtures/domain.xml` is its live XML. The recording goes through the same parsing and rendering as a live scrape; the output must equal
//! `fixtures/golden.prom` byte for byte (regenerate deliberately with
//! `VIRTGUARD_UPDATE_GOLDEN=1 cargo test -p virtguard-exporter --test golden`) and must pass
//! `promtool check metrics`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::PathBuf;

use virtguard_exporter::node::stats::{self, DeviceLabels, VmStats};
use virtguard_exporter::render::{self, ConnectionCounts, Exposition};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn render_fixture() -> String {
    let text = std::fs::read_to_string(fixture("domstats.txt")).unwrap();
    let xml = std::fs::read_to_string(fixture("domain.xml")).unwrap();
    let labels = DeviceLabels::from_domain_xml(&xml).unwrap();
    let mut vms: Vec<VmStats> = stats::parse_virsh_domstats(&text)
        .iter()
        .map(|(name, params)| {
            let mut vm = stats::parse_domain(name, params, &labels);
            vm.duration_seconds = 0.0125;
            vm
        })
        .collect();
    // A VM on a connection that failed: only its scrape-success series.
    vms.push(VmStats::failed(
        stats::Identity::from_domain_name("other-ns_hung-vm"),
        3.0,
    ));
    vms.sort_by(|a, b| a.identity.cmp(&b.identity));
    let mut out = Exposition::default();
    render::render_node(
        &mut out,
        "node-a",
        &vms,
        ConnectionCounts { up: 1, down: 1 },
    );
    out.into_string()
}

#[test]
fn golden_exposition_of_recorded_stats() {
    let got = render_fixture();
    let path = fixture("golden.prom");
    if std::env::var("VIRTGUARD_UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap();
    assert_eq!(got, want, "exposition drifted from {}", path.display());
    // Spot checks that make the golden file's meaning explicit.
    assert!(got.contains(
        "kubevirt_vmi_storage_read_traffic_bytes_total{namespace=\"default\",name=\"testvm\",node=\"node-a\",drive=\"rootdisk\"} 22016\n"
    ));
    assert!(got.contains(
        "kubevirt_vmi_network_receive_bytes_total{namespace=\"default\",name=\"testvm\",node=\"node-a\",interface=\"default\"} 1104\n"
    ));
    // balloon.current=262144 KiB
    assert!(got.contains("kubevirt_vmi_memory_actual_balloon_bytes{namespace=\"default\",name=\"testvm\",node=\"node-a\"} 268435456\n"));
    // cpu.time=6770000000 ns, vcpu.0.state=1 (running), vcpu.0.delay=4636974175 ns
    assert!(got.contains(
        "kubevirt_vmi_cpu_usage_seconds_total{namespace=\"default\",name=\"testvm\",node=\"node-a\"} 6.77\n"
    ));
    assert!(got.contains(
        "kubevirt_vmi_vcpu_seconds_total{namespace=\"default\",name=\"testvm\",node=\"node-a\",id=\"0\",state=\"running\"} 6.38\n"
    ));
    assert!(got.contains(
        "kubevirt_vmi_vcpu_delay_seconds_total{namespace=\"default\",name=\"testvm\",node=\"node-a\",id=\"0\"} 4.636974175\n"
    ));
    // block.0.rd.times=9389516 ns
    assert!(got.contains("drive=\"rootdisk\"} 0.009389516\n"));
    assert!(got.contains(
        "virtguard_vmi_scrape_success{namespace=\"other-ns\",name=\"hung-vm\",node=\"node-a\"} 0\n"
    ));
    assert!(!got.contains("name=\"hung-vm\",node=\"node-a\",drive"));
}

#[test]
fn promtool_accepts_the_exposition() {
    if let Err(e) = virtguard_e2e::peers::require_binary("promtool") {
        if std::env::var("VIRTGUARD_ALLOW_SKIP").is_ok_and(|v| v == "1") {
            eprintln!("SKIP: {e}");
            return;
        }
        panic!("{e} (or set VIRTGUARD_ALLOW_SKIP=1)");
    }
    if let Err(e) = virtguard_e2e::peers::promtool_check_metrics(&render_fixture()) {
        panic!("{e}");
    }
}
