//! Migration series from VirtualMachineInstanceMigration (VMIM) objects and VMI status.
//!
//! * `kubevirt_vmi_migrations_in_{pending,scheduling,running}_phase`: cluster-wide counts of the
//!   VMIMs by phase, always written (0 included: alerts compare them). KubeVirt's phases map as
//!   Pending (and a VMIM whose controller has not set a phase yet) → pending; Scheduling,
//!   Scheduled, PreparingTarget, TargetReady → scheduling; Running → running; Succeeded and Failed
//!   are counted by the per-VMIM gauges instead.
//! * `kubevirt_vmi_migration_succeeded` / `_failed`: 1 per VMIM in that final phase, labelled
//!   `vmi`, `vmim`, `namespace`; the series vanishes with the VMIM object.
//! * `kubevirt_vmi_migration_{start,end}_time_seconds`: from the VMIM's own
//!   `status.migrationState` when the controller mirrors it there, else from the VMI's
//!   `status.migrationState` — but only when its `migrationUid` is this VMIM's uid, so an older or
//!   newer migration of the same VMI never lends its times to this one.

use std::collections::HashMap;
use std::sync::Arc;

use virtguard_api::kubevirt::{
    VirtualMachineInstance, VirtualMachineInstanceMigration, VirtualMachineInstanceMigrationState,
};

use super::unix_seconds;
use crate::render::{Exposition, Num};

/// Which phase gauge a VMIM phase counts towards.
fn phase_slot(phase: &str) -> Option<usize> {
    match phase {
        "" | "Pending" => Some(0),
        "Scheduling" | "Scheduled" | "PreparingTarget" | "TargetReady" => Some(1),
        "Running" => Some(2),
        _ => None,
    }
}

fn state_for<'a>(
    m: &'a VirtualMachineInstanceMigration,
    vmis: &HashMap<(&str, &str), &'a VirtualMachineInstance>,
) -> Option<&'a VirtualMachineInstanceMigrationState> {
    let own = m.status.as_ref().and_then(|s| s.migration_state.as_ref());
    if own.is_some_and(|s| s.start_timestamp.is_some()) {
        return own;
    }
    let ns = m.metadata.namespace.as_deref().unwrap_or("");
    let vmi = m.spec.as_ref().and_then(|s| s.vmi_name.as_deref())?;
    let uid = m.metadata.uid.as_deref()?;
    let st = vmis
        .get(&(ns, vmi))?
        .status
        .as_ref()?
        .migration_state
        .as_ref()?;
    (st.migration_uid.as_deref() == Some(uid)).then_some(st)
}

/// Renders the migration families. `vmims` and `vmis` are the reflector contents, in any order.
pub fn render(
    out: &mut Exposition,
    vmims: &[Arc<VirtualMachineInstanceMigration>],
    vmis: &[Arc<VirtualMachineInstance>],
) {
    let mut counts = [0u64; 3];
    for m in vmims {
        let phase = m
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("");
        if let Some(slot) = phase_slot(phase) {
            counts[slot] += 1;
        }
    }
    for (name, count) in [
        "kubevirt_vmi_migrations_in_pending_phase",
        "kubevirt_vmi_migrations_in_scheduling_phase",
        "kubevirt_vmi_migrations_in_running_phase",
    ]
    .into_iter()
    .zip(counts)
    {
        out.family(name).sample(&[], &[], Num::Int(count));
    }

    // (vmi, vmim, namespace), phase, state — sorted for a stable exposition.
    let by_name: HashMap<(&str, &str), &VirtualMachineInstance> = vmis
        .iter()
        .map(|v| {
            (
                (
                    v.metadata.namespace.as_deref().unwrap_or(""),
                    v.metadata.name.as_deref().unwrap_or(""),
                ),
                v.as_ref(),
            )
        })
        .collect();
    let mut rows: Vec<_> = vmims
        .iter()
        .map(|m| {
            let labels = [
                m.spec
                    .as_ref()
                    .and_then(|s| s.vmi_name.as_deref())
                    .unwrap_or(""),
                m.metadata.name.as_deref().unwrap_or(""),
                m.metadata.namespace.as_deref().unwrap_or(""),
            ];
            let phase = m
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .unwrap_or("");
            (labels, phase, state_for(m, &by_name))
        })
        .collect();
    rows.sort_by(|a, b| (a.0[2], a.0[1]).cmp(&(b.0[2], b.0[1])));

    for (metric, want) in [
        ("kubevirt_vmi_migration_succeeded", "Succeeded"),
        ("kubevirt_vmi_migration_failed", "Failed"),
    ] {
        let mut f = out.family(metric);
        for (labels, phase, _) in &rows {
            if *phase == want {
                f.sample(labels, &[], Num::Int(1));
            }
        }
    }
    type Get = fn(&VirtualMachineInstanceMigrationState) -> Option<&String>;
    let times: [(&str, Get); 2] = [
        ("kubevirt_vmi_migration_start_time_seconds", |s| {
            s.start_timestamp.as_ref()
        }),
        ("kubevirt_vmi_migration_end_time_seconds", |s| {
            s.end_timestamp.as_ref()
        }),
    ];
    for (metric, get) in times {
        let mut f = out.family(metric);
        for (labels, _, state) in &rows {
            if let Some(t) = state.and_then(get).and_then(|t| unix_seconds(t)) {
                f.sample(labels, &[], Num::Float(t));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmim(
        ns: &str,
        name: &str,
        uid: &str,
        vmi: &str,
        phase: Option<&str>,
    ) -> Arc<VirtualMachineInstanceMigration> {
        let mut o: VirtualMachineInstanceMigration = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name, "uid": uid},
            "spec": {"vmiName": vmi},
        }))
        .unwrap();
        if let Some(p) = phase {
            o.status = Some(serde_json::from_value(serde_json::json!({"phase": p})).unwrap());
        }
        Arc::new(o)
    }

    fn vmi(ns: &str, name: &str, state: serde_json::Value) -> Arc<VirtualMachineInstance> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": ns, "name": name},
                "status": {"phase": "Running", "migrationState": state},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn phases_final_states_and_times() {
        let vmims = vec![
            vmim("prod", "m-new", "u0", "db", None),
            vmim("prod", "m-pend", "u1", "db", Some("Pending")),
            vmim("prod", "m-sched", "u2", "db", Some("TargetReady")),
            vmim("prod", "m-run", "u3", "web", Some("Running")),
            vmim("prod", "m-ok", "u4", "app", Some("Succeeded")),
            vmim("dev", "m-bad", "u5", "db", Some("Failed")),
        ];
        let vmis = vec![
            vmi(
                "prod",
                "web",
                serde_json::json!({"migrationUid": "u3", "startTimestamp": "2026-11-22T04:00:00Z"}),
            ),
            vmi(
                "prod",
                "app",
                serde_json::json!({"migrationUid": "u4", "startTimestamp": "2026-11-22T04:00:00Z", "endTimestamp": "2026-11-22T04:00:30.5Z", "completed": true}),
            ),
            // An older migration of dev/db: its times are not m-bad's.
            vmi(
                "dev",
                "db",
                serde_json::json!({"migrationUid": "old", "startTimestamp": "2026-11-22T01:00:00Z"}),
            ),
        ];
        let mut out = Exposition::default();
        render(&mut out, &vmims, &vmis);
        let text = out.into_string();
        for line in [
            "kubevirt_vmi_migrations_in_pending_phase 2\n",
            "kubevirt_vmi_migrations_in_scheduling_phase 1\n",
            "kubevirt_vmi_migrations_in_running_phase 1\n",
            "kubevirt_vmi_migration_succeeded{vmi=\"app\",vmim=\"m-ok\",namespace=\"prod\"} 1\n",
            "kubevirt_vmi_migration_failed{vmi=\"db\",vmim=\"m-bad\",namespace=\"dev\"} 1\n",
            "kubevirt_vmi_migration_start_time_seconds{vmi=\"web\",vmim=\"m-run\",namespace=\"prod\"} 1795320000\n",
            "kubevirt_vmi_migration_end_time_seconds{vmi=\"app\",vmim=\"m-ok\",namespace=\"prod\"} 1795320030.5\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert_eq!(text.matches("kubevirt_vmi_migration_succeeded{").count(), 1);
        assert_eq!(text.matches("kubevirt_vmi_migration_failed{").count(), 1);
        assert!(
            !text.contains("vmim=\"m-bad\",namespace=\"dev\"} 17953"),
            "foreign uid: {text}"
        );
        assert_eq!(
            text.matches("kubevirt_vmi_migration_end_time_seconds{")
                .count(),
            1
        );
    }

    #[test]
    fn zero_counts_are_written() {
        let mut out = Exposition::default();
        render(&mut out, &[], &[]);
        let text = out.into_string();
        assert!(text.contains("kubevirt_vmi_migrations_in_running_phase 0\n"));
        assert!(!text.contains("kubevirt_vmi_migration_succeeded"));
    }
}
