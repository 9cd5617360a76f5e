//! CPU time of a domain, from the `cpu.*` (CPU_TOTAL) and `vcpu.<n>.*` (VCPU) groups of the
//! same `virConnectGetAllDomainStats` call as the other node-mode stats.
//!
//! Invariants:
//! * Every value is libvirt's nanoseconds, converted to seconds at render time ([`seconds`]);
//!   a field libvirt did not report (or reported as negative / 2^64-1) gives no sample.
//! * `kubevirt_vmi_vcpu_seconds_total` needs both the vCPU's `time` and its `state`: the state is
//!   a label (KubeVirt's exposition: `running`, `blocked`, `offline`, else `unknown`), and a
//!   sample without it would be a guess.
//! * vCPU ids are libvirt's indexes; absurd indexes (> 4096) are ignored rather than allocated,
//!   and a vCPU without any value is not reported.

use super::ffi::Value;

/// Domain-wide CPU time: (libvirt key after `cpu.`, metric).
pub const CPU_FIELDS: [(&str, &str); 3] = [
    ("time", "kubevirt_vmi_cpu_usage_seconds_total"),
    ("user", "kubevirt_vmi_cpu_user_usage_seconds_total"),
    ("system", "kubevirt_vmi_cpu_system_usage_seconds_total"),
];

/// Per-vCPU time: (libvirt key after `vcpu.<n>.`, metric). The first carries the `state` label.
pub const VCPU_FIELDS: [(&str, &str); 3] = [
    ("time", "kubevirt_vmi_vcpu_seconds_total"),
    ("wait", "kubevirt_vmi_vcpu_wait_seconds_total"),
    ("delay", "kubevirt_vmi_vcpu_delay_seconds_total"),
];

/// A raw CPU value (nanoseconds) in seconds.
pub fn seconds(raw_ns: u64) -> f64 {
    raw_ns as f64 / 1e9
}

/// One vCPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vcpu {
    /// The `id` label: libvirt's vCPU index.
    pub id: String,
    /// `vcpu.<n>.state` (libvirt `virVcpuState`: 0 offline, 1 running, 2 blocked).
    pub state: Option<u64>,
    /// Raw nanoseconds in the order of [`VCPU_FIELDS`].
    pub values: [Option<u64>; 3],
}

/// CPU time of one domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuStats {
    /// Raw nanoseconds in the order of [`CPU_FIELDS`].
    pub total: [Option<u64>; 3],
    /// vCPUs that reported something, by index.
    pub vcpus: Vec<Vcpu>,
}

/// The `state` label of a libvirt vCPU state.
pub fn state_label(state: u64) -> &'static str {
    match state {
        0 => "offline",
        1 => "running",
        2 => "blocked",
        _ => "unknown",
    }
}

fn present(v: &Value) -> Option<u64> {
    v.as_u64().filter(|&x| x != u64::MAX)
}

/// Accumulates `cpu.*` / `vcpu.*` parameters; [`CpuParser::finish`] gives the result.
#[derive(Debug, Default)]
pub struct CpuParser {
    total: [Option<u64>; 3],
    vcpus: Vec<(Option<u64>, [Option<u64>; 3])>,
}

impl CpuParser {
    /// Takes one parameter; returns false when it is not a CPU parameter (the caller goes on).
    pub fn take(&mut self, key: &str, value: &Value) -> bool {
        if let Some(k) = key.strip_prefix("cpu.") {
            if let Some(pos) = CPU_FIELDS.iter().position(|(f, _)| *f == k) {
                self.total[pos] = present(value);
            }
            return true;
        }
        let Some(rest) = key.strip_prefix("vcpu.") else {
            return false;
        };
        // `vcpu.current` / `vcpu.maximum` (and anything unindexed) carry no time.
        let Some((idx, k)) = rest.split_once('.') else {
            return true;
        };
        let Ok(i) = idx.parse::<usize>() else {
            return true;
        };
        if i > 4096 {
            return true;
        }
        if self.vcpus.len() <= i {
            self.vcpus.resize(i + 1, (None, [None; 3]));
        }
        let Some(slot) = self.vcpus.get_mut(i) else {
            return true;
        };
        if k == "state" {
            slot.0 = present(value);
        } else if let Some(pos) = VCPU_FIELDS.iter().position(|(f, _)| *f == k) {
            slot.1[pos] = present(value);
        }
        true
    }

    /// The collected CPU stats.
    pub fn finish(self) -> CpuStats {
        let vcpus = self
            .vcpus
            .into_iter()
            .enumerate()
            .filter(|(_, (_, v))| v.iter().any(Option::is_some))
            .map(|(i, (state, values))| Vcpu {
                id: i.to_string(),
                state,
                values,
            })
            .collect();
        CpuStats {
            total: self.total,
            vcpus,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, Value)]) -> CpuStats {
        let mut p = CpuParser::default();
        for (k, v) in pairs {
            assert!(p.take(k, v), "{k} is a CPU key");
        }
        assert!(!p.take("balloon.rss", &Value::UInt(1)));
        p.finish()
    }

    #[test]
    fn totals_and_vcpus() {
        let s = parse(&[
            ("cpu.time", Value::UInt(2_500_000_000)),
            ("cpu.user", Value::UInt(1_000_000_000)),
            ("cpu.system", Value::UInt(u64::MAX)),
            ("vcpu.current", Value::UInt(2)),
            ("vcpu.maximum", Value::UInt(4)),
            ("vcpu.0.state", Value::Int(1)),
            ("vcpu.0.time", Value::UInt(2_000_000_000)),
            ("vcpu.0.wait", Value::UInt(0)),
            ("vcpu.0.delay", Value::UInt(30_000_000)),
            ("vcpu.1.state", Value::Int(2)),
            ("vcpu.1.time", Value::UInt(5)),
            // an absurd index is ignored, not allocated
            ("vcpu.99999.time", Value::UInt(1)),
            ("vcpu.x.time", Value::UInt(1)),
        ]);
        assert_eq!(
            s.total,
            [Some(2_500_000_000), Some(1_000_000_000), None],
            "2^64-1 is no value"
        );
        assert_eq!(seconds(s.total[0].unwrap()), 2.5);
        assert_eq!(s.vcpus.len(), 2);
        assert_eq!(s.vcpus[0].id, "0");
        assert_eq!(s.vcpus[0].state.map(state_label), Some("running"));
        assert_eq!(
            s.vcpus[0].values,
            [Some(2_000_000_000), Some(0), Some(30_000_000)]
        );
        assert_eq!(s.vcpus[1].state.map(state_label), Some("blocked"));
        assert_eq!(s.vcpus[1].values, [Some(5), None, None]);
    }

    #[test]
    fn a_state_without_times_is_no_vcpu() {
        let s = parse(&[
            ("vcpu.0.state", Value::UInt(0)),
            ("vcpu.2.delay", Value::UInt(7)),
        ]);
        assert_eq!(s.vcpus.len(), 1);
        assert_eq!(s.vcpus[0].id, "2");
        assert_eq!(s.vcpus[0].state, None);
        assert_eq!(state_label(0), "offline");
        assert_eq!(state_label(9), "unknown");
    }
}
