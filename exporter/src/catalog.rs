//! The metric catalogue: every series the exporter can emit, with its type, help text, label
//! names and the mode that produces it.
//!
//! This table is the contract between the exporter, the alert rules in `alerts/` and the
//! dashboards users already have (ARCHITECTURE.md §2). Rules of the table:
//!
//! * Metrics that KubeVirt documents keep KubeVirt's exact names and types, even where they do not
//!   follow the Prometheus naming conventions (e.g. `kubevirt_vmi_memory_swap_in_traffic_bytes` is
//!   a gauge although it counts bytes). Everything this project adds is named `virtguard_*`.
//! * Every counter ends in `_total`; no gauge does.
//! * Labels are fixed, bounded identifiers (namespace, VM name, node, device alias, a small enum).
//!   Free text, IP addresses and error strings never become labels. Per-VM label sets may be
//!   extended at run time only by allow-listed VMI labels (`--vmi-label-allowlist`), which are
//!   rendered as `label_<sanitised key>` after the labels listed here.
//! * The order of `labels` is the order in which the renderer writes them.
//!
//! The renderer (`crate::render`) looks metrics up here by name, so a metric that is not in the
//! catalogue cannot be emitted, and tests check that the README table is generated from it.

/// Prometheus metric type, as written on the `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricType {
    /// Monotonic counter; the name ends in `_total`.
    Counter,
    /// Gauge: a value that can go up and down (or a KubeVirt-documented gauge).
    Gauge,
}

impl MetricType {
    /// The keyword used on a `# TYPE` line.
    pub const fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
        }
    }
}

/// Which exporter mode produces a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Node mode (DaemonSet): libvirt domain stats of the VMs on this node.
    Node,
    /// Cluster mode (Deployment): Kubernetes objects read through reflectors.
    Cluster,
    /// Both modes: the exporter's own health and build information.
    Exporter,
}

impl Source {
    /// Short lower-case name used in generated documentation.
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Node => "node",
            Source::Cluster => "cluster",
            Source::Exporter => "exporter",
        }
    }
}

/// One metric family of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDef {
    /// Full metric name, as exposed.
    pub name: &'static str,
    /// Counter or gauge.
    pub kind: MetricType,
    /// One-line help text (`# HELP`); no newlines or backslashes.
    pub help: &'static str,
    /// Label names, in rendering order.
    pub labels: &'static [&'static str],
    /// Mode that produces the metric.
    pub source: Source,
}

const VMI: &[&str] = &["namespace", "name", "node"];
const VMI_NET: &[&str] = &["namespace", "name", "node", "interface"];
const VMI_BLK: &[&str] = &["namespace", "name", "node", "drive"];
const VMI_VCPU: &[&str] = &["namespace", "name", "node", "id"];
const VMI_VCPU_STATE: &[&str] = &["namespace", "name", "node", "id", "state"];
const VMI_FS: &[&str] = &[
    "namespace",
    "name",
    "node",
    "disk_name",
    "mount_point",
    "file_system_type",
];
const VMIM: &[&str] = &["vmi", "vmim", "namespace"];
const RESTORED: &[&str] = &["vm_name", "vm_namespace"];
const BACKUP: &[&str] = &["namespace", "name"];
const REPO: &[&str] = &["repository"];
const RESTORE: &[&str] = &["namespace", "name", "method"];

macro_rules! m {
    ($name:literal, $kind:ident, $labels:expr, $source:ident, $help:literal) => {
        MetricDef {
            name: $name,
            kind: MetricType::$kind,
            help: $help,
            labels: $labels,
            source: Source::$source,
        }
    };
}

/// Every metric the exporter emits, grouped by family (ARCHITECTURE.md §2).
pub const CATALOG: &[MetricDef] = &[
    // --- network (node): libvirt net.N.{rx,tx}.{bytes,pkts,errs,drop}, guest's point of view.
    m!("kubevirt_vmi_network_receive_bytes_total", Counter, VMI_NET, Node,
        "Bytes received by the VMI on this interface."),
    m!("kubevirt_vmi_network_transmit_bytes_total", Counter, VMI_NET, Node,
        "Bytes transmitted by the VMI on this interface."),
    m!("kubevirt_vmi_network_receive_packets_total", Counter, VMI_NET, Node,
        "Packets received by the VMI on this interface."),
    m!("kubevirt_vmi_network_transmit_packets_total", Counter, VMI_NET, Node,
        "Packets transmitted by the VMI on this interface."),
    m!("kubevirt_vmi_network_receive_errors_total", Counter, VMI_NET, Node,
        "Receive errors on this interface of the VMI."),
    m!("kubevirt_vmi_network_transmit_errors_total", Counter, VMI_NET, Node,
        "Transmit errors on this interface of the VMI."),
    m!("kubevirt_vmi_network_receive_packets_dropped_total", Counter, VMI_NET, Node,
        "Received packets dropped on this interface of the VMI."),
    m!("kubevirt_vmi_network_transmit_packets_dropped_total", Counter, VMI_NET, Node,
        "Transmitted packets dropped on this interface of the VMI."),
    // --- storage (node): libvirt block.N.{rd,wr,fl}.{bytes,reqs,times}; times converted ns -> s.
    m!("kubevirt_vmi_storage_read_traffic_bytes_total", Counter, VMI_BLK, Node,
        "Bytes read from this drive of the VMI."),
    m!("kubevirt_vmi_storage_write_traffic_bytes_total", Counter, VMI_BLK, Node,
        "Bytes written to this drive of the VMI."),
    m!("kubevirt_vmi_storage_iops_read_total", Counter, VMI_BLK, Node,
        "Read requests completed on this drive of the VMI."),
    m!("kubevirt_vmi_storage_iops_write_total", Counter, VMI_BLK, Node,
        "Write requests completed on this drive of the VMI."),
    m!("kubevirt_vmi_storage_read_times_seconds_total", Counter, VMI_BLK, Node,
        "Total time spent on read requests to this drive of the VMI, in seconds."),
    m!("kubevirt_vmi_storage_write_times_seconds_total", Counter, VMI_BLK, Node,
        "Total time spent on write requests to this drive of the VMI, in seconds."),
    m!("kubevirt_vmi_storage_flush_requests_total", Counter, VMI_BLK, Node,
        "Flush requests completed on this drive of the VMI."),
    m!("kubevirt_vmi_storage_flush_times_seconds_total", Counter, VMI_BLK, Node,
        "Total time spent on flush requests to this drive of the VMI, in seconds."),
    // --- memory (node): libvirt balloon.*; KiB converted to bytes.
    m!("kubevirt_vmi_memory_swap_in_traffic_bytes", Gauge, VMI, Node,
        "Memory the guest swapped in since it booted, in bytes (KubeVirt's documented gauge)."),
    m!("kubevirt_vmi_memory_swap_out_traffic_bytes", Gauge, VMI, Node,
        "Memory the guest swapped out since it booted, in bytes (KubeVirt's documented gauge)."),
    m!("kubevirt_vmi_memory_available_bytes", Gauge, VMI, Node,
        "Memory available to the guest as seen by the balloon driver, in bytes."),
    m!("kubevirt_vmi_memory_usable_bytes", Gauge, VMI, Node,
        "Memory the guest can use without swapping (reclaimable included), in bytes."),
    m!("kubevirt_vmi_memory_unused_bytes", Gauge, VMI, Node,
        "Memory the guest leaves entirely unused, in bytes."),
    m!("kubevirt_vmi_memory_resident_bytes", Gauge, VMI, Node,
        "Resident set size of the VMI's QEMU process, in bytes."),
    m!("kubevirt_vmi_memory_actual_balloon_bytes", Gauge, VMI, Node,
        "Current balloon size (memory given to the guest), in bytes."),
    m!("kubevirt_vmi_memory_pgmajfault_total", Counter, VMI, Node,
        "Major page faults in the guest."),
    m!("kubevirt_vmi_memory_pgminfault_total", Counter, VMI, Node,
        "Minor page faults in the guest."),
    // --- CPU (node): libvirt cpu.{time,user,system} and vcpu.N.{state,time,wait,delay}; ns -> s.
    m!("kubevirt_vmi_cpu_usage_seconds_total", Counter, VMI, Node,
        "Total CPU time of the VMI in all modes (vCPUs and hypervisor threads), in seconds."),
    m!("kubevirt_vmi_cpu_user_usage_seconds_total", Counter, VMI, Node,
        "Total CPU time of the VMI spent in user mode, in seconds."),
    m!("kubevirt_vmi_cpu_system_usage_seconds_total", Counter, VMI, Node,
        "Total CPU time of the VMI spent in system mode, in seconds."),
    m!("kubevirt_vmi_vcpu_seconds_total", Counter, VMI_VCPU_STATE, Node,
        "Time this vCPU spent running (excluding hypervisor time), in seconds; state is the vCPU's current state (running, blocked, offline)."),
    m!("kubevirt_vmi_vcpu_wait_seconds_total", Counter, VMI_VCPU, Node,
        "Time this vCPU wanted to run while the host ran something else (libvirt vcpu.N.wait), in seconds."),
    m!("kubevirt_vmi_vcpu_delay_seconds_total", Counter, VMI_VCPU, Node,
        "Time this vCPU spent waiting in the host run queue instead of running, seen by the guest as steal time, in seconds."),
    // --- guest filesystems (node, --guest-agent-filesystems): guest agent guest-get-fsinfo.
    m!("kubevirt_vmi_filesystem_capacity_bytes", Gauge, VMI_FS, Node,
        "Total size of the guest filesystem, as its guest agent reports it, in bytes."),
    m!("kubevirt_vmi_filesystem_used_bytes", Gauge, VMI_FS, Node,
        "Used bytes of the guest filesystem, as its guest agent reports them."),
    // --- migration (node): job stats of the migrating source domain.
    m!("kubevirt_vmi_migration_data_processed_bytes", Gauge, VMI, Node,
        "Guest data already transferred by the running migration, in bytes."),
    m!("kubevirt_vmi_migration_data_remaining_bytes", Gauge, VMI, Node,
        "Guest data still to transfer in the running migration, in bytes."),
    m!("kubevirt_vmi_migration_memory_transfer_rate_bytes", Gauge, VMI, Node,
        "Rate at which memory is being transferred by the running migration, in bytes per second."),
    m!("kubevirt_vmi_migration_dirty_memory_rate_bytes", Gauge, VMI, Node,
        "Rate at which the guest dirties memory during the running migration, in bytes per second."),
    m!("kubevirt_vmi_migration_data_bytes_total", Counter, VMI, Node,
        "Total guest data the running migration has to transfer, in bytes."),
    m!("virtguard_vmi_migration_iteration", Gauge, VMI, Node,
        "Memory iteration (dirty-page sync round) the running migration is in."),
    m!("virtguard_vmi_migration_downtime_seconds", Gauge, VMI, Node,
        "Expected (while running) or actual downtime of the migration, in seconds."),
    // --- migration (cluster): VirtualMachineInstanceMigration objects and VMI status.
    m!("kubevirt_vmi_migrations_in_pending_phase", Gauge, &[], Cluster,
        "Number of migrations in the Pending phase."),
    m!("kubevirt_vmi_migrations_in_scheduling_phase", Gauge, &[], Cluster,
        "Number of migrations in the Scheduling phase (PreparingTarget, TargetReady, Scheduling, Scheduled)."),
    m!("kubevirt_vmi_migrations_in_running_phase", Gauge, &[], Cluster,
        "Number of migrations in the Running phase."),
    m!("kubevirt_vmi_migration_succeeded", Gauge, VMIM, Cluster,
        "1 for each migration that succeeded."),
    m!("kubevirt_vmi_migration_failed", Gauge, VMIM, Cluster,
        "1 for each migration that failed."),
    m!("kubevirt_vmi_migration_start_time_seconds", Gauge, VMIM, Cluster,
        "Unix time at which the migration started."),
    m!("kubevirt_vmi_migration_end_time_seconds", Gauge, VMIM, Cluster,
        "Unix time at which the migration ended."),
    // --- snapshot / restore (cluster).
    m!("kubevirt_vmsnapshot_disks_restored_from_source", Gauge, RESTORED, Cluster,
        "Number of disks restored from the source VM (PVCs labelled restore.kubevirt.io/source-vm-name)."),
    m!("kubevirt_vmsnapshot_disks_restored_from_source_bytes", Gauge, RESTORED, Cluster,
        "Requested size of the disks restored from the source VM, in bytes."),
    m!("kubevirt_vmsnapshot_succeeded_timestamp_seconds", Gauge, &["name", "snapshot_name", "namespace"], Cluster,
        "Unix time at which the VirtualMachineSnapshot of VM `name` succeeded."),
    // --- guest state (cluster): VMI conditions and status.fsFreezeStatus.
    m!("virtguard_vmi_guest_agent_connected", Gauge, VMI, Cluster,
        "1 when the VMI's AgentConnected condition is True, else 0."),
    m!("virtguard_vmi_filesystem_frozen", Gauge, VMI, Cluster,
        "1 when the VMI reports its guest filesystems frozen, else 0."),
    // --- VMI state (cluster): phases, eviction, MAC collisions.
    m!("virtguard_vmis_in_phase", Gauge, &["node", "phase"], Cluster,
        "Number of VMIs per node and lower-cased phase (pending, scheduling, scheduled, running, succeeded, failed, unknown)."),
    m!("kubevirt_vmi_non_evictable", Gauge, VMI, Cluster,
        "1 when the running VMI's eviction strategy is LiveMigrate but it is not live-migratable (a node drain would block on it), else 0."),
    m!("virtguard_vmi_duplicate_mac", Gauge, &["namespace", "name", "interface"], Cluster,
        "Number of other VMIs with an interface using this interface's MAC address (0 normally)."),
    // --- backup status (cluster): `virtguard-status` ConfigMaps written by the backup engine.
    m!("virtguard_backup_last_success_timestamp_seconds", Gauge, BACKUP, Cluster,
        "Unix time at which the last successful backup of the VM finished."),
    m!("virtguard_backup_last_attempt_timestamp_seconds", Gauge, BACKUP, Cluster,
        "Unix time at which the last backup attempt of the VM started."),
    m!("virtguard_backup_last_status", Gauge, BACKUP, Cluster,
        "Result of the last backup attempt of the VM: 1 ok, 0 failed."),
    m!("virtguard_backup_duration_seconds", Gauge, BACKUP, Cluster,
        "Duration of the last backup attempt of the VM, in seconds."),
    m!("virtguard_backup_freeze_seconds", Gauge, BACKUP, Cluster,
        "How long the guest filesystems stayed frozen in the last backup, in seconds."),
    m!("virtguard_backup_consistency", Gauge, BACKUP, Cluster,
        "Consistency of the last backup: 1 application-consistent, 0 otherwise (crash-consistent, paused or offline; the kind is in virtguard_backup_consistency_info)."),
    m!("virtguard_backup_consistency_info", Gauge, &["namespace", "name", "kind", "freeze_failure"], Cluster,
        "Always 1; labels carry the last backup's consistency kind (application-consistent, crash-consistent, paused, offline) and why its freeze failed (refused, timed-out, agent-disconnected, quiesce-failed; none when it did not)."),
    m!("virtguard_backup_bytes", Gauge, &["namespace", "name", "kind"], Cluster,
        "Bytes of the last backup by kind: read from the disks, new to the repository, stored after compression."),
    // --- restores (cluster): `virtguard-restore-status` written by `virtguard restore`, key = restored VM.
    m!("virtguard_restore_last_attempt_timestamp_seconds", Gauge, RESTORE, Cluster,
        "Unix time at which the last restore into the VM started (method: copy or in-place)."),
    m!("virtguard_restore_last_success_timestamp_seconds", Gauge, RESTORE, Cluster,
        "Unix time at which the last successful restore into the VM finished."),
    m!("virtguard_restore_last_status", Gauge, RESTORE, Cluster,
        "Result of the last restore into the VM: 1 ok, 0 failed."),
    m!("virtguard_restore_duration_seconds", Gauge, RESTORE, Cluster,
        "Duration of the last restore into the VM, in seconds."),
    m!("virtguard_restore_bytes", Gauge, RESTORE, Cluster,
        "Bytes the last restore wrote to the VM's volumes."),
    // --- restore drills (cluster): `virtguard-drill-status`, key = source VM.
    m!("virtguard_restore_test_last_attempt_timestamp_seconds", Gauge, BACKUP, Cluster,
        "Unix time at which the last restore drill of the VM started."),
    m!("virtguard_restore_test_last_success_timestamp_seconds", Gauge, BACKUP, Cluster,
        "Unix time at which the last successful restore drill of the VM finished (its backup restored, booted and answered)."),
    m!("virtguard_restore_test_last_status", Gauge, BACKUP, Cluster,
        "Result of the last restore drill of the VM: 1 ok, 0 failed."),
    m!("virtguard_restore_test_duration_seconds", Gauge, BACKUP, Cluster,
        "Duration of the last restore drill of the VM (restore, boot, checks, cleanup), in seconds."),
    m!("virtguard_restore_test_time_to_ready_seconds", Gauge, BACKUP, Cluster,
        "Time from starting the drill's restored copy to its guest agent answering, in seconds."),
    // --- repository maintenance (cluster): `virtguard-maintenance-status` written by `virtguard maintain`.
    m!("virtguard_repository_maintenance_last_attempt_timestamp_seconds", Gauge, REPO, Cluster,
        "Unix time at which the last maintain of the repository started."),
    m!("virtguard_repository_maintenance_last_status", Gauge, REPO, Cluster,
        "Result of the last maintain of the repository: 1 every step ran, 0 a step failed."),
    m!("virtguard_repository_maintenance_duration_seconds", Gauge, REPO, Cluster,
        "Duration of the last maintain of the repository, in seconds."),
    m!("virtguard_repository_last_prune_success_timestamp_seconds", Gauge, REPO, Cluster,
        "Unix time at which the repository's last prune by policy completed (from its maintenance state)."),
    m!("virtguard_repository_last_gc_success_timestamp_seconds", Gauge, REPO, Cluster,
        "Unix time at which the repository's last gc completed (from its maintenance state)."),
    m!("virtguard_repository_last_verify_success_timestamp_seconds", Gauge, REPO, Cluster,
        "Unix time at which the repository's last verify completed, the last step of a complete maintain (from its maintenance state)."),
    m!("virtguard_repository_corrupt_chunks", Gauge, REPO, Cluster,
        "Chunks known to be corrupt, until a backup of the same data stores them again (from the repository's maintenance state)."),
    m!("virtguard_repository_backups", Gauge, REPO, Cluster,
        "Committed backups in the repository (last complete maintain)."),
    m!("virtguard_repository_chunks", Gauge, REPO, Cluster,
        "Chunk objects in the repository after gc (last complete maintain)."),
    m!("virtguard_repository_stored_bytes", Gauge, REPO, Cluster,
        "Stored bytes of the repository's chunks after gc (last complete maintain)."),
    m!("virtguard_repository_gc_deleted_bytes", Gauge, REPO, Cluster,
        "Stored bytes of unreferenced chunks the last complete maintain's gc deleted."),
    m!("virtguard_repository_verify_read_bytes", Gauge, REPO, Cluster,
        "Stored bytes of chunk data the last complete maintain read and checked."),
    // --- the exporter itself.
    m!("virtguard_vmi_scrape_success", Gauge, VMI, Node,
        "1 when the VMI's libvirt stats were collected in this scrape, 0 when its daemon failed or timed out."),
    m!("virtguard_vmi_scrape_duration_seconds", Gauge, VMI, Node,
        "Time spent collecting the libvirt stats of the VMI's connection in this scrape, in seconds."),
    m!("virtguard_exporter_libvirt_connections", Gauge, &["node", "state"], Node,
        "Libvirt connections discovered in this scrape, by state (up, down)."),
    m!("virtguard_exporter_reflector_synced", Gauge, &["kind"], Exporter,
        "1 once the reflector of this Kubernetes kind has completed its initial list, else 0 (cluster mode; node mode with --vmi-label-allowlist)."),
    m!("virtguard_exporter_reflector_objects", Gauge, &["kind"], Exporter,
        "Objects of this Kubernetes kind currently held by its reflector."),
    m!("virtguard_exporter_watch_errors_total", Counter, &["kind", "reason"], Exporter,
        "Failed list/watch calls of this kind's reflector by reason (not_found: CRD not installed, forbidden: RBAC, expired, other); each is retried with backoff."),
    m!("virtguard_exporter_scrape_duration_seconds", Gauge, &["mode"], Exporter,
        "Time spent producing this scrape, in seconds."),
    m!("virtguard_exporter_build_info", Gauge, &["version", "mode"], Exporter,
        "Always 1; labels carry the exporter version and mode (node, cluster)."),
];

/// Looks a metric up by its exact name.
pub fn get(name: &str) -> Option<&'static MetricDef> {
    CATALOG.iter().find(|m| m.name == name)
}

/// Renders the catalogue as a Markdown table (README's metric table is generated from this).
pub fn markdown_table() -> String {
    let mut out =
        String::from("| metric | type | labels | source | help |\n|---|---|---|---|---|\n");
    for m in CATALOG {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            m.name,
            m.kind.as_str(),
            m.labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", "),
            m.source.as_str(),
            m.help.replace('|', "\\|")
        ));
    }
    out
}

/// True if `s` is a valid Prometheus metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn is_valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// True if `s` is a valid, non-reserved Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`, no `__`
/// prefix).
pub fn is_valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    !s.starts_with("__") && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique() {
        let mut seen = HashSet::new();
        for m in CATALOG {
            assert!(seen.insert(m.name), "duplicate metric {}", m.name);
        }
    }

    #[test]
    fn names_and_labels_are_valid_prometheus_identifiers() {
        for m in CATALOG {
            assert!(is_valid_metric_name(m.name), "bad metric name {}", m.name);
            assert!(
                m.name.starts_with("kubevirt_") || m.name.starts_with("virtguard_"),
                "{} must be a KubeVirt name or virtguard_*",
                m.name
            );
            let mut seen = HashSet::new();
            for l in m.labels {
                assert!(is_valid_label_name(l), "bad label {l} on {}", m.name);
                assert!(seen.insert(*l), "label {l} twice on {}", m.name);
            }
            assert!(!m.help.is_empty(), "{} has no help", m.name);
            assert!(
                !m.help.contains('\n') && !m.help.contains('\\'),
                "help of {} must be one plain line",
                m.name
            );
        }
    }

    #[test]
    fn counters_end_in_total_and_gauges_do_not() {
        for m in CATALOG {
            match m.kind {
                MetricType::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                MetricType::Gauge => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
        }
    }

    #[test]
    fn validators_reject_bad_identifiers() {
        assert!(!is_valid_metric_name(""));
        assert!(!is_valid_metric_name("1abc"));
        assert!(!is_valid_metric_name("a-b"));
        assert!(is_valid_metric_name("a:b_c1"));
        assert!(!is_valid_label_name("__name__"));
        assert!(!is_valid_label_name("a:b"));
        assert!(is_valid_label_name("drive"));
    }

    /// The KubeVirt-documented names and types of ARCHITECTURE.md §2, pinned: renaming or retyping one
    /// breaks users' dashboards and the documented queries.
    #[test]
    fn kubevirt_documented_names_keep_their_types() {
        use MetricType::{Counter as C, Gauge as G};
        let pinned: &[(&str, MetricType)] = &[
            ("kubevirt_vmi_network_receive_bytes_total", C),
            ("kubevirt_vmi_network_transmit_bytes_total", C),
            ("kubevirt_vmi_network_receive_packets_total", C),
            ("kubevirt_vmi_network_transmit_packets_total", C),
            ("kubevirt_vmi_network_receive_errors_total", C),
            ("kubevirt_vmi_network_transmit_errors_total", C),
            ("kubevirt_vmi_network_receive_packets_dropped_total", C),
            ("kubevirt_vmi_network_transmit_packets_dropped_total", C),
            ("kubevirt_vmi_storage_read_traffic_bytes_total", C),
            ("kubevirt_vmi_storage_write_traffic_bytes_total", C),
            ("kubevirt_vmi_storage_iops_read_total", C),
            ("kubevirt_vmi_storage_iops_write_total", C),
            ("kubevirt_vmi_storage_read_times_seconds_total", C),
            ("kubevirt_vmi_storage_write_times_seconds_total", C),
            ("kubevirt_vmi_storage_flush_requests_total", C),
            ("kubevirt_vmi_storage_flush_times_seconds_total", C),
            ("kubevirt_vmi_memory_swap_in_traffic_bytes", G),
            ("kubevirt_vmi_memory_swap_out_traffic_bytes", G),
            ("kubevirt_vmi_memory_available_bytes", G),
            ("kubevirt_vmi_memory_usable_bytes", G),
            ("kubevirt_vmi_memory_unused_bytes", G),
            ("kubevirt_vmi_memory_resident_bytes", G),
            ("kubevirt_vmi_memory_actual_balloon_bytes", G),
            ("kubevirt_vmi_memory_pgmajfault_total", C),
            ("kubevirt_vmi_memory_pgminfault_total", C),
            ("kubevirt_vmi_cpu_usage_seconds_total", C),
            ("kubevirt_vmi_cpu_user_usage_seconds_total", C),
            ("kubevirt_vmi_cpu_system_usage_seconds_total", C),
            ("kubevirt_vmi_vcpu_seconds_total", C),
            ("kubevirt_vmi_vcpu_wait_seconds_total", C),
            ("kubevirt_vmi_vcpu_delay_seconds_total", C),
            ("kubevirt_vmi_filesystem_capacity_bytes", G),
            ("kubevirt_vmi_filesystem_used_bytes", G),
            ("kubevirt_vmi_migration_data_processed_bytes", G),
            ("kubevirt_vmi_migration_data_remaining_bytes", G),
            ("kubevirt_vmi_migration_memory_transfer_rate_bytes", G),
            ("kubevirt_vmi_migration_dirty_memory_rate_bytes", G),
            ("kubevirt_vmi_migration_data_bytes_total", C),
            ("kubevirt_vmi_migrations_in_pending_phase", G),
            ("kubevirt_vmi_migrations_in_scheduling_phase", G),
            ("kubevirt_vmi_migrations_in_running_phase", G),
            ("kubevirt_vmi_migration_succeeded", G),
            ("kubevirt_vmi_migration_failed", G),
            ("kubevirt_vmi_migration_start_time_seconds", G),
            ("kubevirt_vmi_migration_end_time_seconds", G),
            ("kubevirt_vmi_non_evictable", G),
            ("kubevirt_vmsnapshot_disks_restored_from_source", G),
            ("kubevirt_vmsnapshot_disks_restored_from_source_bytes", G),
            ("kubevirt_vmsnapshot_succeeded_timestamp_seconds", G),
        ];
        for (name, kind) in pinned {
            let m = get(name).unwrap_or_else(|| panic!("{name} missing from the catalogue"));
            assert_eq!(m.kind, *kind, "{name}");
        }
        let kubevirt_count = CATALOG
            .iter()
            .filter(|m| m.name.starts_with("kubevirt_"))
            .count();
        assert_eq!(
            kubevirt_count,
            pinned.len(),
            "a kubevirt_* metric is not pinned here"
        );
    }

    #[test]
    fn documented_query_labels_exist() {
        // The OpenShift guide's queries aggregate `by (name, namespace)` and select
        // vm_name / vm_namespace on the restore metrics.
        for n in [
            "kubevirt_vmi_network_receive_bytes_total",
            "kubevirt_vmi_storage_read_traffic_bytes_total",
            "kubevirt_vmi_storage_iops_read_total",
            "kubevirt_vmi_memory_swap_in_traffic_bytes",
        ] {
            let m = get(n).unwrap();
            assert!(
                m.labels.contains(&"name") && m.labels.contains(&"namespace"),
                "{n}"
            );
        }
        let r = get("kubevirt_vmsnapshot_disks_restored_from_source").unwrap();
        assert_eq!(r.labels, &["vm_name", "vm_namespace"]);
    }

    #[test]
    fn markdown_table_lists_every_metric() {
        let t = markdown_table();
        for m in CATALOG {
            assert!(t.contains(&format!("`{}`", m.name)), "{}", m.name);
        }
        assert_eq!(t.lines().count(), CATALOG.len() + 2);
    }
}
