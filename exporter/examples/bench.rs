//! Benchmark of node-mode rendering and collection (not a test; prints figures).
//!
//! `cargo run --release -p virtguard-exporter --example bench [-- URI]`
//!
//! 1. Renders a scrape of 1,000 VMs × 4 NICs × 4 disks × 2 vCPUs from synthetic libvirt stats records
//!    (parsing + rendering, exactly the live path after the libvirt call) and compares it with a
//!    bare `write!` loop that formats the same series in the same run. Prints time per scrape,
//!    bytes, the ratio, and the process's peak RSS.
//! 2. With a libvirt URI: the exporter's whole collection + rendering against the real daemon
//!    vs the bare `virConnectGetAllDomainStats` call, averaged over 50 rounds each.
#![allow(clippy::unwrap_used)] // benchmark harness

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use virtguard_exporter::node::cpu;
use virtguard_exporter::node::ffi::{Params, Value};
use virtguard_exporter::node::stats::{self, DeviceLabels};
use virtguard_exporter::node::{NodeCollector, NodeConfig};
use virtguard_exporter::render::{self, ConnectionCounts, Exposition};

const VMS: usize = 1000;
const NICS: usize = 4;
const DISKS: usize = 4;
const VCPUS: usize = 2;

fn synthetic() -> Vec<(String, Params)> {
    (0..VMS)
        .map(|i| {
            let mut p: Params = vec![("state.state".into(), Value::Int(1))];
            for (j, k) in [
                "swap_in",
                "swap_out",
                "available",
                "usable",
                "unused",
                "rss",
                "current",
                "major_fault",
                "minor_fault",
            ]
            .iter()
            .enumerate()
            {
                p.push((format!("balloon.{k}"), Value::UInt((i * 1000 + j) as u64)));
            }
            for n in 0..NICS {
                p.push((format!("net.{n}.name"), Value::Str(format!("tap{i}n{n}"))));
                for k in [
                    "rx.bytes", "rx.pkts", "rx.errs", "rx.drop", "tx.bytes", "tx.pkts", "tx.errs",
                    "tx.drop",
                ] {
                    p.push((
                        format!("net.{n}.{k}"),
                        Value::UInt((i * 7919 + n * 31) as u64),
                    ));
                }
            }
            for d in 0..DISKS {
                p.push((
                    format!("block.{d}.name"),
                    Value::Str(format!("vd{}", (b'a' + d as u8) as char)),
                ));
                for k in [
                    "rd.reqs", "rd.bytes", "rd.times", "wr.reqs", "wr.bytes", "wr.times",
                    "fl.reqs", "fl.times",
                ] {
                    p.push((
                        format!("block.{d}.{k}"),
                        Value::UInt((i * 104729 + d * 17) as u64),
                    ));
                }
            }
            for (j, k) in ["time", "user", "system"].iter().enumerate() {
                p.push((format!("cpu.{k}"), Value::UInt((i * 1_000_003 + j) as u64)));
            }
            for c in 0..VCPUS {
                p.push((format!("vcpu.{c}.state"), Value::Int(1)));
                for k in ["time", "wait", "delay"] {
                    p.push((
                        format!("vcpu.{c}.{k}"),
                        Value::UInt((i * 999_983 + c * 13) as u64),
                    ));
                }
            }
            (format!("ns{}_vm{i}", i % 20), p)
        })
        .collect()
}

fn exporter_render(records: &[(String, Params)], labels: &DeviceLabels) -> String {
    let mut vms: Vec<_> = records
        .iter()
        .map(|(n, p)| stats::parse_domain(n, p, labels))
        .collect();
    vms.sort_by(|a, b| a.identity.cmp(&b.identity));
    let mut out = Exposition::with_capacity(4096 + vms.len() * 2048);
    render::render_node(
        &mut out,
        "node-a",
        &vms,
        ConnectionCounts { up: VMS, down: 0 },
    );
    out.into_string()
}

/// (namespace, name, NICs, disks, memory, CPU totals, vCPUs (id, state, times)) with plain
/// numbers: the baseline's input.
type TypedVm = (
    String,
    String,
    Vec<(String, [u64; 8])>,
    Vec<(String, [u64; 8])>,
    [u64; 9],
    [u64; 3],
    Vec<(String, &'static str, [u64; 3])>,
);

/// The baseline: the same series, formatted by hand straight from already-typed numbers.
fn bare_loop(vms: &[TypedVm]) -> String {
    let mut s = String::with_capacity(4096 + vms.len() * 2048);
    let net = stats::NET_FIELDS;
    for (k, (_, metric)) in net.iter().enumerate() {
        let _ = writeln!(s, "# HELP {metric} h\n# TYPE {metric} counter");
        for (ns, name, nics, ..) in vms {
            for (l, v) in nics {
                let _ = writeln!(s, "{metric}{{namespace=\"{ns}\",name=\"{name}\",node=\"node-a\",interface=\"{l}\"}} {}", v[k]);
            }
        }
    }
    for (k, (_, metric, unit)) in stats::BLOCK_FIELDS.iter().enumerate() {
        let _ = writeln!(s, "# HELP {metric} h\n# TYPE {metric} counter");
        for (ns, name, _, disks, ..) in vms {
            for (l, v) in disks {
                if unit.is_integer() {
                    let _ = writeln!(s, "{metric}{{namespace=\"{ns}\",name=\"{name}\",node=\"node-a\",drive=\"{l}\"}} {}", v[k]);
                } else {
                    let _ = writeln!(s, "{metric}{{namespace=\"{ns}\",name=\"{name}\",node=\"node-a\",drive=\"{l}\"}} {}", unit.float(v[k]));
                }
            }
        }
    }
    for (k, (_, metric, unit)) in stats::MEM_FIELDS.iter().enumerate() {
        let _ = writeln!(s, "# HELP {metric} h\n# TYPE {metric} gauge");
        for (ns, name, _, _, m, ..) in vms {
            let _ = writeln!(
                s,
                "{metric}{{namespace=\"{ns}\",name=\"{name}\",node=\"node-a\"}} {}",
                unit.integer(m[k])
            );
        }
    }
    for (k, (_, metric)) in cpu::CPU_FIELDS.iter().enumerate() {
        let _ = writeln!(s, "# HELP {metric} h\n# TYPE {metric} counter");
        for (ns, name, _, _, _, t, _) in vms {
            let _ = writeln!(
                s,
                "{metric}{{namespace=\"{ns}\",name=\"{name}\",node=\"node-a\"}} {}",
                cpu::seconds(t[k])
            );
        }
    }
    for (k, (_, metric)) in cpu::VCPU_FIELDS.iter().enumerate() {
        let _ = writeln!(s, "# HELP {metric} h\n# TYPE {metric} counter");
        for (ns, name, _, _, _, _, vcpus) in vms {
            for (id, state, v) in vcpus {
                let value = cpu::seconds(v[k]);
                if k == 0 {
                    let _ = writeln!(s, "{metric}{{namespace=\"{ns}\",name=\"{name}\",node=\"node-a\",id=\"{id}\",state=\"{state}\"}} {value}");
                } else {
                    let _ = writeln!(s, "{metric}{{namespace=\"{ns}\",name=\"{name}\",node=\"node-a\",id=\"{id}\"}} {value}");
                }
            }
        }
    }
    for metric in [
        "virtguard_vmi_scrape_success",
        "virtguard_vmi_scrape_duration_seconds",
    ] {
        let _ = writeln!(s, "# HELP {metric} h\n# TYPE {metric} gauge");
        for (ns, name, ..) in vms {
            let _ = writeln!(
                s,
                "{metric}{{namespace=\"{ns}\",name=\"{name}\",node=\"node-a\"}} 1"
            );
        }
    }
    s
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn time<T>(rounds: u32, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut last = f();
    let start = Instant::now();
    for _ in 0..rounds {
        last = f();
    }
    (start.elapsed() / rounds, last)
}

fn main() {
    let records = synthetic();
    let mut labels = DeviceLabels::default();
    for (_, p) in &records {
        for (k, v) in p {
            if let (true, Some(n)) = (k.ends_with(".name"), v.as_str()) {
                let map = if k.starts_with("net.") {
                    &mut labels.net
                } else {
                    &mut labels.block
                };
                map.insert(n.to_string(), format!("ua{n}"));
            }
        }
    }
    // Baseline input: already-typed values (the bare loop does no parsing at all).
    let typed: Vec<_> = records
        .iter()
        .map(|(n, p)| {
            let vm = stats::parse_domain(n, p, &labels);
            let nics = vm
                .interfaces
                .iter()
                .map(|d| (d.label.clone(), d.values.map(|v| v.unwrap_or(0))))
                .collect();
            let disks = vm
                .drives
                .iter()
                .map(|d| (d.label.clone(), d.values.map(|v| v.unwrap_or(0))))
                .collect();
            (
                vm.identity.namespace,
                vm.identity.name,
                nics,
                disks,
                vm.memory.map(|v| v.unwrap_or(0)),
                vm.cpu.total.map(|v| v.unwrap_or(0)),
                vm.cpu
                    .vcpus
                    .iter()
                    .map(|c| {
                        (
                            c.id.clone(),
                            cpu::state_label(c.state.unwrap_or(9)),
                            c.values.map(|v| v.unwrap_or(0)),
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    let rounds = 20;
    let (t_exp, out_exp) = time(rounds, || exporter_render(&records, &labels));
    let (t_bare, out_bare) = time(rounds, || bare_loop(&typed));
    let mut parsed: Vec<_> = records
        .iter()
        .map(|(n, p)| stats::parse_domain(n, p, &labels))
        .collect();
    parsed.sort_by(|a, b| a.identity.cmp(&b.identity));
    let (t_render, _) = time(rounds, || {
        let mut out = Exposition::with_capacity(4096 + parsed.len() * 2048);
        render::render_node(
            &mut out,
            "node-a",
            &parsed,
            ConnectionCounts { up: VMS, down: 0 },
        );
        out.into_string().len()
    });
    println!(
        "render {VMS} VMs x {NICS} NICs x {DISKS} disks x {VCPUS} vCPUs ({} samples):",
        out_exp.lines().filter(|l| !l.starts_with('#')).count()
    );
    println!(
        "  exporter (parse + render): {:>8.2} ms/scrape, {} bytes",
        t_exp.as_secs_f64() * 1e3,
        out_exp.len()
    );
    println!(
        "  bare write! loop:          {:>8.2} ms/scrape, {} bytes",
        t_bare.as_secs_f64() * 1e3,
        out_bare.len()
    );
    println!(
        "  exporter render only:      {:>8.2} ms/scrape (records already parsed)",
        t_render.as_secs_f64() * 1e3
    );
    println!(
        "  ratio exporter/bare:       {:>8.2}x parse+render, {:.2}x render only (target <= 2x)",
        t_exp.as_secs_f64() / t_bare.as_secs_f64(),
        t_render.as_secs_f64() / t_bare.as_secs_f64()
    );
    println!(
        "  peak RSS:                  {:>8.1} MiB (target <= 64 MiB)",
        peak_rss_kib() as f64 / 1024.0
    );

    if let Some(uri) = std::env::args().nth(1) {
        let conn = virt::connect::Connect::open(Some(&uri)).unwrap();
        let flags = virt_sys::VIR_DOMAIN_STATS_STATE
            | virt_sys::VIR_DOMAIN_STATS_BALLOON
            | virt_sys::VIR_DOMAIN_STATS_INTERFACE
            | virt_sys::VIR_DOMAIN_STATS_BLOCK
            | virt_sys::VIR_DOMAIN_STATS_CPU_TOTAL
            | virt_sys::VIR_DOMAIN_STATS_VCPU;
        let rounds = 50;
        let (t_bare, n) = time(rounds, || {
            virtguard_exporter::node::ffi::all_domain_stats(
                &conn,
                flags,
                virt_sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE,
            )
            .unwrap()
            .len()
        });
        let rt = tokio::runtime::Runtime::new().unwrap();
        let c = NodeCollector::new(NodeConfig {
            uris: vec![uri.clone()],
            socket_globs: vec![],
            node_name: "n".into(),
            ..NodeConfig::default()
        })
        .unwrap();
        let (t_full, body) = time(rounds, || rt.block_on(c.render()));
        let c2 = NodeCollector::new(NodeConfig {
            uris: vec![uri],
            socket_globs: vec![],
            node_name: "n".into(),
            job_operations: vec![],
            ..NodeConfig::default()
        })
        .unwrap();
        let (t_nojob, _) = time(rounds, || rt.block_on(c2.render()));
        println!("real libvirt ({n} domains), mean of {rounds}:");
        println!(
            "  bare GetAllDomainStats:              {:>8.3} ms",
            t_bare.as_secs_f64() * 1e3
        );
        println!(
            "  exporter scrape (with job stats):    {:>8.3} ms ({} bytes), ratio {:.2}x",
            t_full.as_secs_f64() * 1e3,
            body.len(),
            t_full.as_secs_f64() / t_bare.as_secs_f64()
        );
        println!(
            "  exporter scrape (--job-operations none): {:>4.3} ms, ratio {:.2}x (target <= 1.25x)",
            t_nojob.as_secs_f64() * 1e3,
            t_nojob.as_secs_f64() / t_bare.as_secs_f64()
        );
    }
}
