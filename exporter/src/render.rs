//! Prometheus text exposition (format 0.0.4), written directly into one buffer per scrape.
//!
//! Invariants:
//! * Only metrics of [`crate::catalog::CATALOG`] can be written; the `# HELP`/`# TYPE` header
//!   comes from the catalogue and is written once, just before the family's first sample, so
//!   families without samples are left out entirely.
//! * Each family is written in one contiguous block (callers iterate metric-major), as the
//!   format requires.
//! * Label values are escaped (`\\`, `\"`, `\n`); values are integers where the source is an
//!   integer (exact counters), else Rust's shortest round-trip float formatting.
//!
//! [`render_node`] lays out a node-mode scrape from [`VmStats`] records; nothing here keeps
//! state between scrapes, so a VM that disappeared has no series in the next scrape.

use std::fmt::Write as _;

use crate::catalog::{self, MetricDef};
use crate::node::cpu;
use crate::node::stats::{Unit, VmStats, BLOCK_FIELDS, JOB_FIELDS, MEM_FIELDS, NET_FIELDS};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A sample value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    /// Exact integer.
    Int(u64),
    /// Float.
    Float(f64),
}

impl Num {
    /// Converts a raw libvirt value with its unit.
    pub fn from_raw(raw: u64, unit: Unit) -> Num {
        if unit.is_integer() {
            Num::Int(unit.integer(raw))
        } else {
            Num::Float(unit.float(raw))
        }
    }
}

/// Exposition buffer.
#[derive(Debug, Default)]
pub struct Exposition {
    buf: String,
}

impl Exposition {
    /// An empty exposition with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Exposition {
        Exposition {
            buf: String::with_capacity(capacity),
        }
    }

    /// Starts a family. Panics if `name` is not in the catalogue: that is a programming error
    /// caught by the tests, never a property of input data.
    pub fn family(&mut self, name: &str) -> Family<'_> {
        let def = catalog::get(name)
            .unwrap_or_else(|| panic!("metric {name} is not in the catalogue (catalog.rs)"));
        Family {
            buf: &mut self.buf,
            def,
            started: false,
        }
    }

    /// The text written so far.
    pub fn as_str(&self) -> &str {
        &self.buf
    }

    /// Takes the text.
    pub fn into_string(self) -> String {
        self.buf
    }
}

/// Writer of one metric family; see [`Exposition::family`].
pub struct Family<'a> {
    buf: &'a mut String,
    def: &'static MetricDef,
    started: bool,
}

impl Family<'_> {
    /// Writes one sample. `labels` are the values of the catalogue's labels, in order; `extra`
    /// are additional (already validated) label names and values appended after them.
    pub fn sample(&mut self, labels: &[&str], extra: &[(String, String)], value: Num) {
        debug_assert_eq!(labels.len(), self.def.labels.len(), "{}", self.def.name);
        if !self.started {
            self.started = true;
            // Writing to a String cannot fail.
            let _ = writeln!(self.buf, "# HELP {} {}", self.def.name, self.def.help);
            let _ = writeln!(
                self.buf,
                "# TYPE {} {}",
                self.def.name,
                self.def.kind.as_str()
            );
        }
        self.buf.push_str(self.def.name);
        let names = self.def.labels.iter().copied();
        let mut first = true;
        let pairs = names
            .zip(labels.iter().copied())
            .chain(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        for (k, v) in pairs {
            self.buf.push(if first { '{' } else { ',' });
            first = false;
            self.buf.push_str(k);
            self.buf.push_str("=\"");
            escape_into(self.buf, v);
            self.buf.push('"');
        }
        if !first {
            self.buf.push('}');
        }
        self.buf.push(' ');
        let _ = match value {
            Num::Int(v) => write!(self.buf, "{v}"),
            Num::Float(v) if v.is_nan() => write!(self.buf, "NaN"),
            Num::Float(v) if v.is_infinite() => {
                write!(self.buf, "{}", if v > 0.0 { "+Inf" } else { "-Inf" })
            }
            Num::Float(v) => write!(self.buf, "{v}"),
        };
        self.buf.push('\n');
    }
}

fn escape_into(buf: &mut String, v: &str) {
    if !v.contains(['\\', '"', '\n']) {
        buf.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => buf.push_str("\\\\"),
            '"' => buf.push_str("\\\""),
            '\n' => buf.push_str("\\n"),
            c => buf.push(c),
        }
    }
}

/// Summary of the connections of one node-mode scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionCounts {
    /// Connections that answered.
    pub up: usize,
    /// Connections that failed, timed out or were still busy.
    pub down: usize,
}

/// Renders the per-VM families of a node-mode scrape. `vms` should be sorted by identity for a
/// stable output (the collector does so).
pub fn render_node(out: &mut Exposition, node: &str, vms: &[VmStats], conns: ConnectionCounts) {
    render_node_labelled(out, node, vms, &[], conns);
}

/// [`render_node`] with extra (allow-listed VMI) labels per VM: `extra[i]` is appended to every
/// series of `vms[i]`; a shorter (e.g. empty) `extra` adds nothing to the VMs past its end.
pub fn render_node_labelled(
    out: &mut Exposition,
    node: &str,
    vms: &[VmStats],
    extra: &[Vec<(String, String)>],
    conns: ConnectionCounts,
) {
    let no_extra: &[(String, String)] = &[];
    let ex = |i: usize| extra.get(i).map(Vec::as_slice).unwrap_or(no_extra);
    let ok = || vms.iter().enumerate().filter(|(_, v)| v.success);
    // Guest-agent NICs carry `source="guest-agent"` after the VM's extra labels.
    let agent_extra: Vec<Vec<(String, String)>> = vms
        .iter()
        .enumerate()
        .map(|(i, vm)| {
            if vm.guest_agent_interfaces.is_empty() {
                return Vec::new();
            }
            let mut e = ex(i).to_vec();
            let (k, v) = crate::node::guest_nics::SOURCE_LABEL;
            e.push((k.to_string(), v.to_string()));
            e
        })
        .collect();
    for (pos, (_, metric)) in NET_FIELDS.iter().enumerate() {
        let mut f = out.family(metric);
        for (i, vm) in ok() {
            let id = &vm.identity;
            for d in &vm.interfaces {
                if let Some(v) = d.values[pos] {
                    f.sample(
                        &[&id.namespace, &id.name, node, &d.label],
                        ex(i),
                        Num::Int(v),
                    );
                }
            }
            for d in &vm.guest_agent_interfaces {
                if let Some(v) = d.values[pos] {
                    f.sample(
                        &[&id.namespace, &id.name, node, &d.label],
                        &agent_extra[i],
                        Num::Int(v),
                    );
                }
            }
        }
    }
    for (pos, (_, metric, unit)) in BLOCK_FIELDS.iter().enumerate() {
        let mut f = out.family(metric);
        for (i, vm) in ok() {
            let id = &vm.identity;
            for d in &vm.drives {
                if let Some(v) = d.values[pos] {
                    let labels = [id.namespace.as_str(), &id.name, node, &d.label];
                    f.sample(&labels, ex(i), Num::from_raw(v, *unit));
                }
            }
        }
    }
    for (pos, (_, metric, unit)) in MEM_FIELDS.iter().enumerate() {
        let mut f = out.family(metric);
        for (i, vm) in ok() {
            if let Some(v) = vm.memory[pos] {
                let id = &vm.identity;
                f.sample(
                    &[&id.namespace, &id.name, node],
                    ex(i),
                    Num::from_raw(v, *unit),
                );
            }
        }
    }
    render_cpu(out, node, vms, &ex);
    for (metric, get) in [
        (
            "kubevirt_vmi_filesystem_capacity_bytes",
            (|f| Some(f.capacity)) as fn(&crate::node::guest_fs::Filesystem) -> Option<u64>,
        ),
        ("kubevirt_vmi_filesystem_used_bytes", |f| f.used),
    ] {
        let mut f = out.family(metric);
        for (i, vm) in ok() {
            let id = &vm.identity;
            for fs in &vm.filesystems {
                if let Some(v) = get(fs) {
                    let labels = [
                        id.namespace.as_str(),
                        &id.name,
                        node,
                        &fs.disk_name,
                        &fs.mount_point,
                        &fs.fs_type,
                    ];
                    f.sample(&labels, ex(i), Num::Int(v));
                }
            }
        }
    }
    for (pos, (metric, unit)) in JOB_FIELDS.iter().enumerate() {
        let mut f = out.family(metric);
        for (i, vm) in ok() {
            if let Some(v) = vm.migration.as_ref().and_then(|m| m[pos]) {
                let id = &vm.identity;
                f.sample(
                    &[&id.namespace, &id.name, node],
                    ex(i),
                    Num::from_raw(v, *unit),
                );
            }
        }
    }
    let mut f = out.family("virtguard_vmi_scrape_success");
    for (i, vm) in vms.iter().enumerate() {
        let id = &vm.identity;
        f.sample(
            &[&id.namespace, &id.name, node],
            ex(i),
            Num::Int(u64::from(vm.success)),
        );
    }
    let mut f = out.family("virtguard_vmi_scrape_duration_seconds");
    for (i, vm) in vms.iter().enumerate() {
        let id = &vm.identity;
        f.sample(
            &[&id.namespace, &id.name, node],
            ex(i),
            Num::Float(vm.duration_seconds),
        );
    }
    let mut f = out.family("virtguard_exporter_libvirt_connections");
    f.sample(&[node, "up"], no_extra, Num::Int(conns.up as u64));
    f.sample(&[node, "down"], no_extra, Num::Int(conns.down as u64));
}

/// The CPU families of [`render_node_labelled`] (see [`crate::node::cpu`]).
fn render_cpu<'a>(
    out: &mut Exposition,
    node: &str,
    vms: &[VmStats],
    ex: &dyn Fn(usize) -> &'a [(String, String)],
) {
    let ok = || vms.iter().enumerate().filter(|(_, v)| v.success);
    for (pos, (_, metric)) in cpu::CPU_FIELDS.iter().enumerate() {
        let mut f = out.family(metric);
        for (i, vm) in ok() {
            if let Some(v) = vm.cpu.total[pos] {
                let id = &vm.identity;
                let labels = [id.namespace.as_str(), &id.name, node];
                f.sample(&labels, ex(i), Num::Float(cpu::seconds(v)));
            }
        }
    }
    for (pos, (_, metric)) in cpu::VCPU_FIELDS.iter().enumerate() {
        let mut f = out.family(metric);
        for (i, vm) in ok() {
            let id = &vm.identity;
            for c in &vm.cpu.vcpus {
                let Some(v) = c.values[pos] else { continue };
                let value = Num::Float(cpu::seconds(v));
                if pos == 0 {
                    // The state label is required: no state, no sample.
                    let Some(state) = c.state else { continue };
                    let state = cpu::state_label(state);
                    let labels = [id.namespace.as_str(), &id.name, node, &c.id, state];
                    f.sample(&labels, ex(i), value);
                } else {
                    f.sample(&[&id.namespace, &id.name, node, &c.id], ex(i), value);
                }
            }
        }
    }
}

/// Renders the families both modes emit about the exporter itself.
pub fn render_self(out: &mut Exposition, mode: &str, scrape_seconds: f64) {
    out.family("virtguard_exporter_scrape_duration_seconds")
        .sample(&[mode], &[], Num::Float(scrape_seconds));
    out.family("virtguard_exporter_build_info").sample(
        &[env!("CARGO_PKG_VERSION"), mode],
        &[],
        Num::Int(1),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values_and_writes_header_once() {
        let mut e = Exposition::default();
        let mut f = e.family("virtguard_backup_last_status");
        f.sample(&["ns", "a\"b\\c\nd"], &[], Num::Int(1));
        f.sample(
            &["ns", "x"],
            &[("label_team".into(), "blue".into())],
            Num::Float(0.5),
        );
        assert_eq!(
            e.as_str(),
            "# HELP virtguard_backup_last_status Result of the last backup attempt of the VM: 1 ok, 0 failed.\n\
             # TYPE virtguard_backup_last_status gauge\n\
             virtguard_backup_last_status{namespace=\"ns\",name=\"a\\\"b\\\\c\\nd\"} 1\n\
             virtguard_backup_last_status{namespace=\"ns\",name=\"x\",label_team=\"blue\"} 0.5\n"
        );
    }

    #[test]
    fn empty_family_writes_nothing_and_unlabelled_sample_has_no_braces() {
        let mut e = Exposition::default();
        let _ = e.family("kubevirt_vmi_migrations_in_pending_phase");
        assert_eq!(e.as_str(), "");
        e.family("kubevirt_vmi_migrations_in_pending_phase")
            .sample(&[], &[], Num::Int(2));
        assert!(e
            .as_str()
            .ends_with("\nkubevirt_vmi_migrations_in_pending_phase 2\n"));
    }

    #[test]
    fn special_floats() {
        let mut e = Exposition::default();
        let mut f = e.family("virtguard_exporter_scrape_duration_seconds");
        f.sample(&["a"], &[], Num::Float(f64::INFINITY));
        f.sample(&["b"], &[], Num::Float(f64::NAN));
        f.sample(&["c"], &[], Num::Float(1e-7));
        let s = e.into_string();
        assert!(s.contains("{mode=\"a\"} +Inf\n"));
        assert!(s.contains("{mode=\"b\"} NaN\n"));
        assert!(s.contains("{mode=\"c\"} 0.0000001\n"));
    }

    #[test]
    fn extra_vmi_labels_go_on_every_series_of_their_vm_only() {
        use crate::node::stats::Identity;
        let vm = |name: &str| VmStats {
            success: true,
            ..VmStats::failed(
                Identity {
                    namespace: "prod".into(),
                    name: name.into(),
                },
                0.5,
            )
        };
        let mut vms = [vm("a"), vm("b")];
        vms[1]
            .guest_agent_interfaces
            .push(crate::node::stats::Device {
                label: "fast".into(),
                values: [Some(7), None, None, None, None, None, None, None],
            });
        let extra = vec![vec![("label_team".to_string(), "blue".to_string())]];
        let mut e = Exposition::default();
        render_node_labelled(&mut e, "n", &vms, &extra, ConnectionCounts::default());
        let s = e.into_string();
        assert!(s.contains(
            "virtguard_vmi_scrape_success{namespace=\"prod\",name=\"a\",node=\"n\",label_team=\"blue\"} 1\n"
        ));
        assert!(s.contains(
            "virtguard_vmi_scrape_success{namespace=\"prod\",name=\"b\",node=\"n\"} 1\n"
        ));
        assert!(s.contains("virtguard_exporter_libvirt_connections{node=\"n\",state=\"up\"} 0\n"));
        // A guest-agent NIC: its own series, marked with source="guest-agent"; nothing for the
        // counters the agent did not give.
        assert!(s.contains(
            "kubevirt_vmi_network_receive_bytes_total{namespace=\"prod\",name=\"b\",node=\"n\",interface=\"fast\",source=\"guest-agent\"} 7\n"
        ), "{s}");
        assert!(
            !s.contains("kubevirt_vmi_network_transmit_bytes_total{"),
            "{s}"
        );
    }

    #[test]
    #[should_panic(expected = "not in the catalogue")]
    fn unknown_metric_is_refused() {
        let mut e = Exposition::default();
        let _ = e.family("made_up_metric");
    }
}
