//! From libvirt's flat stats parameters to one typed [`VmStats`] per domain.
//!
//! libvirt's `virConnectGetAllDomainStats` returns, per domain, a flat list of typed parameters
//! named like `net.<i>.rx.bytes`, `block.<i>.rd.times`, `balloon.swap_in`, `state.state`. This
//! module reads them in one pass, applies the unit rules and the identity rules of ARCHITECTURE.md §2:
//!
//! * Units: `block.*.times`, `cpu.*` and `vcpu.*` times are nanoseconds → seconds (CPU in
//!   [`super::cpu`]); `balloon.*` sizes are KiB → bytes; job `downtime` is milliseconds → seconds; the job's dirty rate is pages/s × page size → bytes/s.
//! * A value that is absent, negative or libvirt's "unsupported" marker 2^64-1 produces no sample
//!   (`None`), never a wrong one.
//! * Identity: KubeVirt names domains `<namespace>_<name>` (namespaces cannot contain `_`, so the
//!   first `_` splits). Any other name is reported with an empty namespace.
//! * Device labels: the KubeVirt alias `ua-<name>` from the domain XML gives `<name>`; otherwise
//!   the libvirt device name (tap name, target dev); an interface without any name gets
//!   `net<i>`. Devices that end up with the same label are reported once (the first wins), so
//!   nameless or oddly named devices can never produce duplicate series.
//!
//! [`parse_virsh_domstats`] reads `virsh domstats --raw` text into the same parameter lists, so
//! recorded fixtures and benchmarks run through exactly the code a live scrape uses.

use std::collections::{HashMap, HashSet};

use super::ffi::{Params, Value};

/// Unit conversion applied to a raw libvirt value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// No conversion (counts, bytes).
    One,
    /// KiB → bytes.
    KiB,
    /// Nanoseconds → seconds.
    Nanos,
    /// Milliseconds → seconds.
    Millis,
}

impl Unit {
    /// Whether the converted value is an integer (rendered without a fraction).
    pub fn is_integer(self) -> bool {
        matches!(self, Unit::One | Unit::KiB)
    }

    /// Converts a raw value; integer units saturate rather than wrap.
    pub fn integer(self, raw: u64) -> u64 {
        match self {
            Unit::KiB => raw.saturating_mul(1024),
            _ => raw,
        }
    }

    /// Converts a raw value to a float in the target unit.
    pub fn float(self, raw: u64) -> f64 {
        match self {
            Unit::One => raw as f64,
            Unit::KiB => raw as f64 * 1024.0,
            Unit::Nanos => raw as f64 / 1e9,
            Unit::Millis => raw as f64 / 1e3,
        }
    }
}

/// Interface counters: (libvirt key after `net.<i>.`, metric).
pub const NET_FIELDS: [(&str, &str); 8] = [
    ("rx.bytes", "kubevirt_vmi_network_receive_bytes_total"),
    ("tx.bytes", "kubevirt_vmi_network_transmit_bytes_total"),
    ("rx.pkts", "kubevirt_vmi_network_receive_packets_total"),
    ("tx.pkts", "kubevirt_vmi_network_transmit_packets_total"),
    ("rx.errs", "kubevirt_vmi_network_receive_errors_total"),
    ("tx.errs", "kubevirt_vmi_network_transmit_errors_total"),
    (
        "rx.drop",
        "kubevirt_vmi_network_receive_packets_dropped_total",
    ),
    (
        "tx.drop",
        "kubevirt_vmi_network_transmit_packets_dropped_total",
    ),
];

/// Block counters: (libvirt key after `block.<i>.`, metric, unit).
pub const BLOCK_FIELDS: [(&str, &str, Unit); 8] = [
    (
        "rd.bytes",
        "kubevirt_vmi_storage_read_traffic_bytes_total",
        Unit::One,
    ),
    (
        "wr.bytes",
        "kubevirt_vmi_storage_write_traffic_bytes_total",
        Unit::One,
    ),
    ("rd.reqs", "kubevirt_vmi_storage_iops_read_total", Unit::One),
    (
        "wr.reqs",
        "kubevirt_vmi_storage_iops_write_total",
        Unit::One,
    ),
    (
        "rd.times",
        "kubevirt_vmi_storage_read_times_seconds_total",
        Unit::Nanos,
    ),
    (
        "wr.times",
        "kubevirt_vmi_storage_write_times_seconds_total",
        Unit::Nanos,
    ),
    (
        "fl.reqs",
        "kubevirt_vmi_storage_flush_requests_total",
        Unit::One,
    ),
    (
        "fl.times",
        "kubevirt_vmi_storage_flush_times_seconds_total",
        Unit::Nanos,
    ),
];

/// Balloon values: (libvirt key after `balloon.`, metric, unit).
pub const MEM_FIELDS: [(&str, &str, Unit); 9] = [
    (
        "swap_in",
        "kubevirt_vmi_memory_swap_in_traffic_bytes",
        Unit::KiB,
    ),
    (
        "swap_out",
        "kubevirt_vmi_memory_swap_out_traffic_bytes",
        Unit::KiB,
    ),
    (
        "available",
        "kubevirt_vmi_memory_available_bytes",
        Unit::KiB,
    ),
    ("usable", "kubevirt_vmi_memory_usable_bytes", Unit::KiB),
    ("unused", "kubevirt_vmi_memory_unused_bytes", Unit::KiB),
    ("rss", "kubevirt_vmi_memory_resident_bytes", Unit::KiB),
    (
        "current",
        "kubevirt_vmi_memory_actual_balloon_bytes",
        Unit::KiB,
    ),
    (
        "major_fault",
        "kubevirt_vmi_memory_pgmajfault_total",
        Unit::One,
    ),
    (
        "minor_fault",
        "kubevirt_vmi_memory_pgminfault_total",
        Unit::One,
    ),
];

/// Migration job values: (metric, unit). Filled by [`parse_job`] in this order.
pub const JOB_FIELDS: [(&str, Unit); 7] = [
    ("kubevirt_vmi_migration_data_processed_bytes", Unit::One),
    ("kubevirt_vmi_migration_data_remaining_bytes", Unit::One),
    (
        "kubevirt_vmi_migration_memory_transfer_rate_bytes",
        Unit::One,
    ),
    ("kubevirt_vmi_migration_dirty_memory_rate_bytes", Unit::One),
    ("kubevirt_vmi_migration_data_bytes_total", Unit::One),
    ("virtguard_vmi_migration_iteration", Unit::One),
    ("virtguard_vmi_migration_downtime_seconds", Unit::Millis),
];

/// A VM's identity, from its libvirt domain name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// Kubernetes namespace (empty for domains not named by KubeVirt).
    pub namespace: String,
    /// VMI name.
    pub name: String,
}

impl Identity {
    /// Splits KubeVirt's `<namespace>_<name>` domain name.
    pub fn from_domain_name(domain: &str) -> Identity {
        match domain.split_once('_') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Identity {
                namespace: ns.to_string(),
                name: name.to_string(),
            },
            _ => Identity {
                namespace: String::new(),
                name: domain.to_string(),
            },
        }
    }
}

/// Counters of one device (interface or drive); `None` = no sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Device<const N: usize> {
    /// The `interface` or `drive` label.
    pub label: String,
    /// Raw values in the order of [`NET_FIELDS`] / [`BLOCK_FIELDS`].
    pub values: [Option<u64>; N],
}

/// Everything one scrape learned about one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct VmStats {
    /// Namespace and name.
    pub identity: Identity,
    /// False when this VM's stats could not be collected in this scrape (then only the
    /// scrape-success and duration series are rendered).
    pub success: bool,
    /// Seconds spent on this VM's connection in this scrape.
    pub duration_seconds: f64,
    /// Interfaces, unique labels.
    pub interfaces: Vec<Device<8>>,
    /// NICs libvirt cannot see (SR-IOV), counted by the guest agent (`--guest-agent-nics`, see
    /// [`super::guest_nics`]); labels unique and distinct from `interfaces`.
    pub guest_agent_interfaces: Vec<Device<8>>,
    /// Drives, unique labels.
    pub drives: Vec<Device<8>>,
    /// Balloon values in the order of [`MEM_FIELDS`].
    pub memory: [Option<u64>; 9],
    /// Migration progress in the order of [`JOB_FIELDS`], when a migration job is running.
    pub migration: Option<[Option<u64>; 7]>,
    /// CPU time (`cpu.*`, `vcpu.<n>.*`), see [`super::cpu`].
    pub cpu: super::cpu::CpuStats,
    /// Guest filesystems from the guest agent (`--guest-agent-filesystems`, see
    /// [`super::guest_fs`]); empty otherwise.
    pub filesystems: Vec<super::guest_fs::Filesystem>,
}

impl VmStats {
    /// A VM whose stats could not be collected.
    pub fn failed(identity: Identity, duration_seconds: f64) -> VmStats {
        VmStats {
            identity,
            success: false,
            duration_seconds,
            interfaces: Vec::new(),
            guest_agent_interfaces: Vec::new(),
            drives: Vec::new(),
            memory: [None; 9],
            migration: None,
            cpu: super::cpu::CpuStats::default(),
            filesystems: Vec::new(),
        }
    }
}

/// Maps libvirt device names (tap / target dev) to the label to report, from the domain XML.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceLabels {
    /// Interface target dev → label.
    pub net: HashMap<String, String>,
    /// Disk target dev → label.
    pub block: HashMap<String, String>,
}

impl DeviceLabels {
    /// Reads `<interface>` and `<disk>` target/alias pairs from a live domain XML.
    pub fn from_domain_xml(xml: &str) -> Result<DeviceLabels, roxmltree::Error> {
        let doc = roxmltree::Document::parse(xml)?;
        let mut out = DeviceLabels::default();
        let Some(devices) = doc
            .root_element()
            .children()
            .find(|n| n.has_tag_name("devices"))
        else {
            return Ok(out);
        };
        for dev in devices.children().filter(|n| n.is_element()) {
            let map = match dev.tag_name().name() {
                "interface" => &mut out.net,
                "disk" => &mut out.block,
                _ => continue,
            };
            let child_attr = |tag: &str, attr: &str| {
                dev.children()
                    .find(|c| c.has_tag_name(tag))
                    .and_then(|c| c.attribute(attr))
                    .map(str::to_string)
            };
            let Some(target) = child_attr("target", "dev") else {
                continue;
            };
            let label = match child_attr("alias", "name") {
                Some(alias) => match alias.strip_prefix("ua-") {
                    Some(user) if !user.is_empty() => user.to_string(),
                    _ => target.clone(),
                },
                None => target.clone(),
            };
            map.insert(target, label);
        }
        Ok(out)
    }

    /// True when every named device of `params` has a known label (the cached XML is current).
    pub fn covers(&self, params: &Params) -> bool {
        params.iter().all(|(k, v)| {
            let Some(name) = v.as_str() else { return true };
            if let Some(rest) = k.strip_prefix("net.") {
                !rest.ends_with(".name") || self.net.contains_key(name)
            } else if let Some(rest) = k.strip_prefix("block.") {
                !rest.ends_with(".name") || self.block.contains_key(name)
            } else {
                true
            }
        })
    }
}

fn present(v: &Value) -> Option<u64> {
    v.as_u64().filter(|&x| x != u64::MAX)
}

/// Splits `net.3.rx.bytes` into (3, "rx.bytes").
fn indexed(rest: &str) -> Option<(usize, &str)> {
    let (idx, key) = rest.split_once('.')?;
    Some((idx.parse().ok()?, key))
}

#[derive(Default)]
struct RawDev {
    name: Option<String>,
    values: [Option<u64>; 8],
}

fn dev_slot(devs: &mut Vec<RawDev>, i: usize) -> Option<&mut RawDev> {
    // libvirt's indexes are dense and small; refuse absurd ones instead of allocating.
    if i > 4096 {
        return None;
    }
    if devs.len() <= i {
        devs.resize_with(i + 1, RawDev::default);
    }
    devs.get_mut(i)
}

/// Turns one domain's stats parameters into [`VmStats`] (success = true; migration = none).
pub fn parse_domain(domain_name: &str, params: &Params, labels: &DeviceLabels) -> VmStats {
    let mut net: Vec<RawDev> = Vec::new();
    let mut blk: Vec<RawDev> = Vec::new();
    let mut memory = [None; 9];
    let mut cpu = super::cpu::CpuParser::default();
    for (key, value) in params {
        if cpu.take(key, value) {
            continue;
        }
        if let Some(rest) = key.strip_prefix("net.") {
            let Some((i, k)) = indexed(rest) else {
                continue;
            };
            let Some(d) = dev_slot(&mut net, i) else {
                continue;
            };
            if k == "name" {
                d.name = value.as_str().map(str::to_string);
            } else if let Some(pos) = NET_FIELDS.iter().position(|(f, _)| *f == k) {
                d.values[pos] = present(value);
            }
        } else if let Some(rest) = key.strip_prefix("block.") {
            let Some((i, k)) = indexed(rest) else {
                continue;
            };
            let Some(d) = dev_slot(&mut blk, i) else {
                continue;
            };
            if k == "name" {
                d.name = value.as_str().map(str::to_string);
            } else if let Some(pos) = BLOCK_FIELDS.iter().position(|(f, _, _)| *f == k) {
                d.values[pos] = present(value);
            }
        } else if let Some(k) = key.strip_prefix("balloon.") {
            if let Some(pos) = MEM_FIELDS.iter().position(|(f, _, _)| *f == k) {
                memory[pos] = present(value);
            }
        }
    }
    VmStats {
        identity: Identity::from_domain_name(domain_name),
        success: true,
        duration_seconds: 0.0,
        interfaces: finish(net, &labels.net, Some("net")),
        guest_agent_interfaces: Vec::new(),
        drives: finish(blk, &labels.block, None),
        memory,
        migration: None,
        cpu: cpu.finish(),
        filesystems: Vec::new(),
    }
}

fn finish(
    raw: Vec<RawDev>,
    labels: &HashMap<String, String>,
    nameless_prefix: Option<&str>,
) -> Vec<Device<8>> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, d) in raw.into_iter().enumerate() {
        if d.values.iter().all(Option::is_none) {
            continue;
        }
        let label = match (&d.name, nameless_prefix) {
            (Some(n), _) if !n.is_empty() => labels.get(n).cloned().unwrap_or_else(|| n.clone()),
            (_, Some(prefix)) => format!("{prefix}{i}"),
            (_, None) => continue,
        };
        if seen.insert(label.clone()) {
            out.push(Device {
                label,
                values: d.values,
            });
        }
    }
    out
}

/// Reads migration progress from `virDomainGetJobStats` parameters; `None` when the job is not
/// one of `operations` (libvirt `virDomainJobOperation` values) or no job runs (`job_type` 0).
pub fn parse_job(job_type: i32, params: &Params, operations: &[i32]) -> Option<[Option<u64>; 7]> {
    if job_type == 0 {
        return None;
    }
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| present(v))
    };
    let op = params
        .iter()
        .find(|(k, _)| k == "operation")
        .and_then(|(_, v)| match v {
            Value::Int(i) => i32::try_from(*i).ok(),
            Value::UInt(u) => i32::try_from(*u).ok(),
            _ => None,
        })?;
    if !operations.contains(&op) {
        return None;
    }
    let dirty = match (get("memory_dirty_rate"), get("memory_page_size")) {
        (Some(rate), Some(page)) => rate.checked_mul(page),
        _ => None,
    };
    Some([
        get("data_processed"),
        get("data_remaining"),
        get("memory_bps"),
        dirty,
        get("data_total"),
        get("memory_iteration"),
        get("downtime"),
    ])
}

/// Parses `virsh domstats --raw` output: `Domain: 'name'` lines followed by indented
/// `key=value` lines. Integers become [`Value::UInt`] (or [`Value::Int`] when negative), numbers
/// with a fraction [`Value::Double`], anything else [`Value::Str`].
pub fn parse_virsh_domstats(text: &str) -> Vec<(String, Params)> {
    let mut out: Vec<(String, Params)> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("Domain:") {
            let name = rest.trim().trim_matches(|c| c == '\'' || c == '"');
            out.push((name.to_string(), Vec::new()));
        } else if let Some((k, v)) = t.split_once('=') {
            let Some((_, params)) = out.last_mut() else {
                continue;
            };
            let value = if let Ok(u) = v.parse::<u64>() {
                Value::UInt(u)
            } else if let Ok(i) = v.parse::<i64>() {
                Value::Int(i)
            } else if let Ok(d) = v.parse::<f64>() {
                Value::Double(d)
            } else {
                Value::Str(v.to_string())
            };
            params.push((k.to_string(), value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, Value)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn identity_splits_at_first_underscore() {
        let i = Identity::from_domain_name("default_vm_with_underscores");
        assert_eq!(
            (i.namespace.as_str(), i.name.as_str()),
            ("default", "vm_with_underscores")
        );
        let i = Identity::from_domain_name("plain");
        assert_eq!((i.namespace.as_str(), i.name.as_str()), ("", "plain"));
        let i = Identity::from_domain_name("_x");
        assert_eq!((i.namespace.as_str(), i.name.as_str()), ("", "_x"));
    }

    #[test]
    fn aliases_from_xml() {
        let xml = r#"<domain type='qemu'><name>ns_vm</name><devices>
            <disk type='file' device='disk'><target dev='vda' bus='virtio'/><alias name='ua-rootdisk'/></disk>
            <disk type='file' device='disk'><target dev='vdb' bus='virtio'/><alias name='virtio-disk1'/></disk>
            <disk type='file' device='cdrom'><target dev='sda'/></disk>
            <interface type='ethernet'><target dev='tap0'/><alias name='ua-default'/></interface>
            <interface type='ethernet'><target dev='tap1'/><alias name='ua-'/></interface>
            <interface type='hostdev'><alias name='ua-sriov'/></interface>
        </devices></domain>"#;
        let l = DeviceLabels::from_domain_xml(xml).unwrap();
        assert_eq!(l.block["vda"], "rootdisk");
        assert_eq!(l.block["vdb"], "vdb");
        assert_eq!(l.block["sda"], "sda");
        assert_eq!(l.net["tap0"], "default");
        assert_eq!(l.net["tap1"], "tap1");
        assert_eq!(l.net.len(), 2, "hostdev has no target dev");
        assert!(DeviceLabels::from_domain_xml("<domain").is_err());
    }

    #[test]
    fn units_and_unsupported_values() {
        let params = p(&[
            ("balloon.current", Value::UInt(262144)),
            ("balloon.swap_in", Value::UInt(u64::MAX)),
            ("balloon.rss", Value::UInt(1)),
            ("balloon.major_fault", Value::UInt(12)),
            ("balloon.unused", Value::Int(-1)),
            ("block.0.name", Value::Str("vda".into())),
            ("block.0.rd.times", Value::UInt(1_500_000_000)),
            ("block.0.rd.bytes", Value::UInt(4096)),
            ("block.0.wr.bytes", Value::UInt(u64::MAX)),
        ]);
        let vm = parse_domain("ns_vm", &params, &DeviceLabels::default());
        assert_eq!(vm.memory[6], Some(262144));
        assert_eq!(MEM_FIELDS[6].2.integer(262144), 268_435_456);
        assert_eq!(vm.memory[0], None, "2^64-1 is unsupported");
        assert_eq!(vm.memory[4], None, "negative is no value");
        assert_eq!(vm.memory[7], Some(12));
        assert_eq!(MEM_FIELDS[7].2.integer(12), 12);
        let d = &vm.drives[0];
        assert_eq!(d.label, "vda");
        assert_eq!(d.values[0], Some(4096));
        assert_eq!(d.values[1], None);
        assert_eq!(BLOCK_FIELDS[4].2.float(d.values[4].unwrap()), 1.5);
    }

    #[test]
    fn nameless_and_duplicate_interfaces_do_not_duplicate() {
        let params = p(&[
            ("net.count", Value::UInt(4)),
            ("net.0.name", Value::Str("tap0".into())),
            ("net.0.rx.bytes", Value::UInt(10)),
            // index 1: no name at all (e.g. a passthrough NIC libvirt cannot name)
            ("net.1.rx.bytes", Value::UInt(20)),
            // index 2: empty name
            ("net.2.name", Value::Str(String::new())),
            ("net.2.rx.bytes", Value::UInt(30)),
            // index 3: maps to the same label as index 0
            ("net.3.name", Value::Str("tap3".into())),
            ("net.3.rx.bytes", Value::UInt(40)),
        ]);
        let mut labels = DeviceLabels::default();
        labels.net.insert("tap0".into(), "default".into());
        labels.net.insert("tap3".into(), "default".into());
        let vm = parse_domain("ns_vm", &params, &labels);
        let got: Vec<(&str, Option<u64>)> = vm
            .interfaces
            .iter()
            .map(|d| (d.label.as_str(), d.values[0]))
            .collect();
        assert_eq!(
            got,
            vec![
                ("default", Some(10)),
                ("net1", Some(20)),
                ("net2", Some(30))
            ]
        );
    }

    /// libvirt 9 reports `backingIndex` on the top image too (seen on the real guest); without
    /// the BACKING flag every entry is a top-level disk and must be kept. A repeated name is
    /// reported once.
    #[test]
    fn backing_index_does_not_hide_disks_and_repeats_are_dropped() {
        let params = p(&[
            ("block.0.name", Value::Str("vda".into())),
            ("block.0.backingIndex", Value::UInt(1)),
            ("block.0.rd.reqs", Value::UInt(1)),
            ("block.1.name", Value::Str("vda".into())),
            ("block.1.rd.reqs", Value::UInt(2)),
        ]);
        let vm = parse_domain("a_b", &params, &DeviceLabels::default());
        assert_eq!(vm.drives.len(), 1);
        assert_eq!(vm.drives[0].values[2], Some(1));
    }

    #[test]
    fn covers_detects_new_devices() {
        let mut labels = DeviceLabels::default();
        labels.block.insert("vda".into(), "rootdisk".into());
        let params = p(&[("block.0.name", Value::Str("vda".into()))]);
        assert!(labels.covers(&params));
        let params = p(&[("block.1.name", Value::Str("vdb".into()))]);
        assert!(!labels.covers(&params));
    }

    #[test]
    fn job_stats_only_for_selected_operations() {
        let params = p(&[
            ("operation", Value::Int(5)),
            ("data_processed", Value::UInt(100)),
            ("data_remaining", Value::UInt(50)),
            ("data_total", Value::UInt(150)),
            ("memory_bps", Value::UInt(1000)),
            ("memory_dirty_rate", Value::UInt(10)),
            ("memory_page_size", Value::UInt(4096)),
            ("memory_iteration", Value::UInt(3)),
            ("downtime", Value::UInt(250)),
        ]);
        let m = parse_job(2, &params, &[5]).unwrap();
        assert_eq!(
            m,
            [
                Some(100),
                Some(50),
                Some(1000),
                Some(40960),
                Some(150),
                Some(3),
                Some(250)
            ]
        );
        assert_eq!(JOB_FIELDS[6].1.float(250), 0.25);
        assert!(parse_job(0, &params, &[5]).is_none(), "no job");
        assert!(
            parse_job(2, &params, &[2]).is_none(),
            "not a selected operation"
        );
    }

    #[test]
    fn virsh_domstats_text() {
        let text = "Domain: 'ns_vm'\n  state.state=1\n  net.0.name=tap0\n  block.0.rd.times=-3\n  x=1.5\n\nDomain: 'other'\n  state.state=5\n";
        let d = parse_virsh_domstats(text);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].0, "ns_vm");
        assert_eq!(d[0].1[0], ("state.state".to_string(), Value::UInt(1)));
        assert_eq!(d[0].1[1].1, Value::Str("tap0".into()));
        assert_eq!(d[0].1[2].1, Value::Int(-3));
        assert_eq!(d[0].1[3].1, Value::Double(1.5));
        assert_eq!(d[1].0, "other");
    }
}
