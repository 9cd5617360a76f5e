#!/usr/bin/env python3
"""Generates the Grafana dashboards in this directory (one JSON file each).

Run `python3 deploy/dashboards/generate.py [OUT_DIR]` after editing (default: this directory); `cargo test -p virtguard-e2e --test
dashboards` checks the files are current, checks Grafana's schema essentials, that every metric
is in the exporter's catalogue, and evaluates every query in a real Prometheus.

Conventions: every dashboard has a `datasource` variable (type prometheus) and every panel and
target refers to it as `${datasource}`, never to a fixed datasource uid; per-VM dashboards have
`namespace` and `name` variables fed from `virtguard_vmi_scrape_success` or the backup series.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DS = {"type": "prometheus", "uid": "${datasource}"}


def datasource_var():
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
    }


def query_var(name, label, metric, depends=""):
    q = f"label_values({metric}{depends}, {name})"
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": q, "refId": f"{name}-var"},
        "definition": q,
        "refresh": 2,
        "includeAll": False,
        "multi": False,
        "current": {},
        "hide": 0,
        "sort": 1,
    }


class Board:
    def __init__(self, uid, title, description, variables, tags):
        self.uid = uid
        self.title = title
        self.description = description
        self.variables = variables
        self.tags = tags
        self.panels = []
        self.y = 0
        self.x = 0
        self.row_h = 0

    def row(self, title):
        self.newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "id": len(self.panels) + 1,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
            }
        )
        self.y += 1

    def newline(self):
        if self.x:
            self.y += self.row_h
            self.x = 0
            self.row_h = 0

    def panel(self, kind, title, targets, unit="short", w=12, h=8, description="", extra=None):
        if self.x + w > 24:
            self.newline()
        p = {
            "type": kind,
            "title": title,
            "description": description,
            "id": len(self.panels) + 1,
            "datasource": DS,
            "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {},
            "targets": [
                {
                    "datasource": DS,
                    "refId": chr(ord("A") + i),
                    "expr": expr,
                    "legendFormat": legend,
                    **({"format": "table", "instant": True} if kind == "table" else {}),
                }
                for i, (expr, legend) in enumerate(targets)
            ],
        }
        if extra:
            p.update(extra)
        self.panels.append(p)
        self.x += w
        self.row_h = max(self.row_h, h)

    def ts(self, title, targets, unit="short", **kw):
        self.panel("timeseries", title, targets, unit, **kw)

    def stat(self, title, targets, unit="short", w=6, h=4, **kw):
        self.panel("stat", title, targets, unit, w=w, h=h, **kw)

    def table(self, title, targets, unit="short", w=24, h=8, **kw):
        self.panel("table", title, targets, unit, w=w, h=h, **kw)

    def json(self):
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["virtguard", "kubevirt"] + self.tags,
            "schemaVersion": 39,
            "version": 1,
            "editable": True,
            "graphTooltip": 1,
            "time": {"from": "now-6h", "to": "now"},
            "refresh": "1m",
            "timezone": "",
            "templating": {"list": [datasource_var()] + self.variables},
            "annotations": {"list": []},
            "links": [
                {"title": "virtguard", "type": "dashboards", "tags": ["virtguard"], "asDropdown": True}
            ],
            "panels": self.panels,
        }


VM = '{namespace="$namespace", name="$name"}'


def overview():
    b = Board(
        "virtguard-vm-overview",
        "virtguard / VM overview",
        "Top consumers across all VMs and the exporter's scrape health.",
        [],
        ["overview"],
    )
    b.row("Top consumers")
    top = lambda e: f"topk(10, {e})"
    b.ts("CPU (cores)", [(top("sum by (namespace, name) (rate(kubevirt_vmi_cpu_usage_seconds_total[$__rate_interval]))"), "{{namespace}}/{{name}}")], "short")
    b.ts("Memory resident", [(top("sum by (namespace, name) (kubevirt_vmi_memory_resident_bytes)"), "{{namespace}}/{{name}}")], "bytes")
    b.ts(
        "Network traffic (rx + tx)",
        [(top("sum by (namespace, name) (rate(kubevirt_vmi_network_receive_bytes_total[$__rate_interval])) + sum by (namespace, name) (rate(kubevirt_vmi_network_transmit_bytes_total[$__rate_interval]))"), "{{namespace}}/{{name}}")],
        "Bps",
    )
    b.ts(
        "Storage traffic (read + write)",
        [(top("sum by (namespace, name) (rate(kubevirt_vmi_storage_read_traffic_bytes_total[$__rate_interval])) + sum by (namespace, name) (rate(kubevirt_vmi_storage_write_traffic_bytes_total[$__rate_interval]))"), "{{namespace}}/{{name}}")],
        "Bps",
    )
    b.ts(
        "Storage IOPS (read + write)",
        [(top("sum by (namespace, name) (rate(kubevirt_vmi_storage_iops_read_total[$__rate_interval])) + sum by (namespace, name) (rate(kubevirt_vmi_storage_iops_write_total[$__rate_interval]))"), "{{namespace}}/{{name}}")],
        "iops",
    )
    b.ts("Guest swap-in", [(top("sum by (namespace, name) (rate(kubevirt_vmi_memory_swap_in_traffic_bytes[$__rate_interval]))"), "{{namespace}}/{{name}}")], "Bps")
    b.row("Scrape health")
    b.stat("VMs scraped", [("count(virtguard_vmi_scrape_success == 1)", "")])
    b.stat("VMs failing", [("count(virtguard_vmi_scrape_success == 0) or vector(0)", "")])
    b.stat("libvirt connections down", [('sum(virtguard_exporter_libvirt_connections{state="down"})', "")])
    b.stat("Exporter targets up", [('sum(up{job=~".*virtguard.*"})', "")])
    b.ts("Scrape duration per node", [('max by (node) (virtguard_vmi_scrape_duration_seconds)', "{{node}}")], "s")
    b.ts("Exporter scrape duration", [("virtguard_exporter_scrape_duration_seconds", "{{mode}} {{instance}}")], "s")
    b.table(
        "VMs (drill down in 'VM detail')",
        [("max by (namespace, name, node) (virtguard_vmi_scrape_success)", "")],
        extra={"links": [{"title": "VM detail", "url": "/d/virtguard-vm-detail?var-namespace=${__data.fields.namespace}&var-name=${__data.fields.name}"}]},
    )
    return b


def detail():
    b = Board(
        "virtguard-vm-detail",
        "virtguard / VM detail",
        "One VM: CPU, memory, every NIC and every drive.",
        [
            query_var("namespace", "Namespace", "virtguard_vmi_scrape_success"),
            query_var("name", "VM", "virtguard_vmi_scrape_success", '{namespace="$namespace"}'),
        ],
        ["detail"],
    )
    b.row("CPU")
    b.ts("vCPU time by vCPU and state", [(f"sum by (id, state) (rate(kubevirt_vmi_vcpu_seconds_total{VM}[$__rate_interval]))", "vCPU {{id}} {{state}}")], "percentunit")
    b.ts(
        "vCPU wait and steal (delay)",
        [
            (f"sum by (id) (rate(kubevirt_vmi_vcpu_wait_seconds_total{VM}[$__rate_interval]))", "wait vCPU {{id}}"),
            (f"sum by (id) (rate(kubevirt_vmi_vcpu_delay_seconds_total{VM}[$__rate_interval]))", "delay vCPU {{id}}"),
        ],
        "percentunit",
    )
    b.ts(
        "Domain CPU (user / system / total)",
        [
            (f"rate(kubevirt_vmi_cpu_user_usage_seconds_total{VM}[$__rate_interval])", "user"),
            (f"rate(kubevirt_vmi_cpu_system_usage_seconds_total{VM}[$__rate_interval])", "system"),
            (f"rate(kubevirt_vmi_cpu_usage_seconds_total{VM}[$__rate_interval])", "total"),
        ],
        "short",
        w=24,
    )
    b.row("Memory")
    b.ts(
        "Memory",
        [
            (f"kubevirt_vmi_memory_actual_balloon_bytes{VM}", "balloon (guest memory)"),
            (f"kubevirt_vmi_memory_available_bytes{VM}", "available"),
            (f"kubevirt_vmi_memory_usable_bytes{VM}", "usable"),
            (f"kubevirt_vmi_memory_unused_bytes{VM}", "unused"),
            (f"kubevirt_vmi_memory_resident_bytes{VM}", "QEMU resident"),
        ],
        "bytes",
    )
    b.ts(
        "Swap and page faults",
        [
            (f"rate(kubevirt_vmi_memory_swap_in_traffic_bytes{VM}[$__rate_interval])", "swap in"),
            (f"rate(kubevirt_vmi_memory_swap_out_traffic_bytes{VM}[$__rate_interval])", "swap out"),
            (f"rate(kubevirt_vmi_memory_pgmajfault_total{VM}[$__rate_interval])", "major faults/s"),
        ],
        "short",
    )
    b.ts(
        "Guest filesystems used (needs --guest-agent-filesystems)",
        [(f"100 * kubevirt_vmi_filesystem_used_bytes{VM} / kubevirt_vmi_filesystem_capacity_bytes{VM}", "{{mount_point}} ({{disk_name}})")],
        "percent",
        w=24,
    )
    b.row("Network (per interface)")
    for title, rx, tx, unit in [
        ("Bytes", "receive_bytes_total", "transmit_bytes_total", "Bps"),
        ("Packets", "receive_packets_total", "transmit_packets_total", "pps"),
        ("Errors", "receive_errors_total", "transmit_errors_total", "pps"),
        ("Drops", "receive_packets_dropped_total", "transmit_packets_dropped_total", "pps"),
    ]:
        b.ts(
            title,
            [
                (f"rate(kubevirt_vmi_network_{rx}{VM}[$__rate_interval])", "{{interface}} rx"),
                (f"rate(kubevirt_vmi_network_{tx}{VM}[$__rate_interval])", "{{interface}} tx"),
            ],
            unit,
        )
    b.row("Storage (per drive)")
    b.ts(
        "Traffic",
        [
            (f"rate(kubevirt_vmi_storage_read_traffic_bytes_total{VM}[$__rate_interval])", "{{drive}} read"),
            (f"rate(kubevirt_vmi_storage_write_traffic_bytes_total{VM}[$__rate_interval])", "{{drive}} write"),
        ],
        "Bps",
    )
    b.ts(
        "IOPS",
        [
            (f"rate(kubevirt_vmi_storage_iops_read_total{VM}[$__rate_interval])", "{{drive}} read"),
            (f"rate(kubevirt_vmi_storage_iops_write_total{VM}[$__rate_interval])", "{{drive}} write"),
            (f"rate(kubevirt_vmi_storage_flush_requests_total{VM}[$__rate_interval])", "{{drive}} flush"),
        ],
        "iops",
    )
    lat = lambda t, r: f"rate(kubevirt_vmi_storage_{t}_times_seconds_total{VM}[$__rate_interval]) / rate(kubevirt_vmi_storage_{r}{VM}[$__rate_interval])"
    b.ts(
        "Latency per request",
        [
            (lat("read", "iops_read_total"), "{{drive}} read"),
            (lat("write", "iops_write_total"), "{{drive}} write"),
            (lat("flush", "flush_requests_total"), "{{drive}} flush"),
        ],
        "s",
        w=24,
    )
    return b


def migrations():
    b = Board(
        "virtguard-migrations",
        "virtguard / Migrations",
        "Live migrations: queue, progress of running ones, outcomes.",
        [],
        ["migrations"],
    )
    b.row("Phases")
    b.stat("Pending", [("sum(kubevirt_vmi_migrations_in_pending_phase)", "")])
    b.stat("Scheduling", [("sum(kubevirt_vmi_migrations_in_scheduling_phase)", "")])
    b.stat("Running", [("sum(kubevirt_vmi_migrations_in_running_phase)", "")])
    b.stat("Non-evictable VMs", [("sum(kubevirt_vmi_non_evictable)", "")])
    b.row("Progress of running migrations (source node)")
    b.ts(
        "Data processed / remaining",
        [
            ("kubevirt_vmi_migration_data_processed_bytes", "{{namespace}}/{{name}} processed"),
            ("kubevirt_vmi_migration_data_remaining_bytes", "{{namespace}}/{{name}} remaining"),
        ],
        "bytes",
    )
    b.ts(
        "Transfer rate vs dirty rate",
        [
            ("kubevirt_vmi_migration_memory_transfer_rate_bytes", "{{namespace}}/{{name}} transfer"),
            ("kubevirt_vmi_migration_dirty_memory_rate_bytes", "{{namespace}}/{{name}} dirty"),
        ],
        "Bps",
    )
    b.ts("Iteration", [("virtguard_vmi_migration_iteration", "{{namespace}}/{{name}}")], "short")
    b.ts("Expected downtime", [("virtguard_vmi_migration_downtime_seconds", "{{namespace}}/{{name}}")], "s")
    b.row("Outcomes")
    b.table(
        "Recent migrations",
        [
            ("max by (namespace, vmi, vmim) (kubevirt_vmi_migration_succeeded)", ""),
            ("max by (namespace, vmi, vmim) (kubevirt_vmi_migration_failed)", ""),
            ("max by (namespace, vmi, vmim) (kubevirt_vmi_migration_end_time_seconds - kubevirt_vmi_migration_start_time_seconds)", ""),
        ],
        w=12,
    )
    b.ts(
        "Succeeded / failed",
        [
            ("sum(kubevirt_vmi_migration_succeeded)", "succeeded"),
            ("sum(kubevirt_vmi_migration_failed)", "failed"),
        ],
        "short",
    )
    return b


def backups():
    b = Board(
        "virtguard-backups",
        "virtguard / Backups",
        "Backups per VM, restores, restore drills and repository health.",
        [],
        ["backups"],
    )
    b.row("Backups")
    b.stat("VMs backed up", [("count(virtguard_backup_last_success_timestamp_seconds)", "")])
    b.stat("Last backup failed", [("count(virtguard_backup_last_status == 0) or vector(0)", "")])
    b.stat("Crash-consistent only", [("count(virtguard_backup_consistency == 0) or vector(0)", "")])
    b.stat("Oldest last success", [("max(time() - virtguard_backup_last_success_timestamp_seconds)", "")], "s")
    b.table(
        "Per VM: age of last success, status, consistency, freeze, duration",
        [
            ("time() - max by (namespace, name) (virtguard_backup_last_success_timestamp_seconds)", ""),
            ("max by (namespace, name) (virtguard_backup_last_status)", ""),
            ("max by (namespace, name, kind, freeze_failure) (virtguard_backup_consistency_info)", ""),
            ("max by (namespace, name) (virtguard_backup_freeze_seconds)", ""),
            ("max by (namespace, name) (virtguard_backup_duration_seconds)", ""),
        ],
    )
    b.ts("Backup duration", [("virtguard_backup_duration_seconds", "{{namespace}}/{{name}}")], "s")
    b.ts("Freeze window", [("virtguard_backup_freeze_seconds", "{{namespace}}/{{name}}")], "s")
    b.ts("Bytes of the last backup (read / new / stored)", [("sum by (kind) (virtguard_backup_bytes)", "{{kind}}")], "bytes", w=24)
    b.row("Restores and drills")
    b.table(
        "Restores: status, age, duration, bytes",
        [
            ("max by (namespace, name, method) (virtguard_restore_last_status)", ""),
            ("time() - max by (namespace, name, method) (virtguard_restore_last_attempt_timestamp_seconds)", ""),
            ("max by (namespace, name, method) (virtguard_restore_duration_seconds)", ""),
            ("max by (namespace, name, method) (virtguard_restore_bytes)", ""),
        ],
        w=12,
    )
    b.table(
        "Restore drills: status, age of last success, time to ready",
        [
            ("max by (namespace, name) (virtguard_restore_test_last_status)", ""),
            ("time() - max by (namespace, name) (virtguard_restore_test_last_success_timestamp_seconds)", ""),
            ("max by (namespace, name) (virtguard_restore_test_time_to_ready_seconds)", ""),
            ("max by (namespace, name) (virtguard_restore_test_duration_seconds)", ""),
        ],
        w=12,
    )
    b.row("Repository")
    b.stat("Corrupt chunks", [("sum(virtguard_repository_corrupt_chunks)", "")])
    b.stat("Last maintain ok", [("min(virtguard_repository_maintenance_last_status)", "")])
    b.stat("Since last verify", [("max(time() - virtguard_repository_last_verify_success_timestamp_seconds)", "")], "s")
    b.stat("Backups in repository", [("sum(virtguard_repository_backups)", "")])
    b.ts(
        "Stored bytes and chunks",
        [
            ("virtguard_repository_stored_bytes", "{{repository}} stored"),
            ("virtguard_repository_gc_deleted_bytes", "{{repository}} gc deleted"),
        ],
        "bytes",
    )
    b.ts("Maintain duration", [("virtguard_repository_maintenance_duration_seconds", "{{repository}}")], "s")
    return b


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else HERE
    for name, board in [
        ("vm-overview", overview()),
        ("vm-detail", detail()),
        ("migrations", migrations()),
        ("backups", backups()),
    ]:
        path = os.path.join(out, f"{name}.json")
        with open(path, "w") as f:
            json.dump(board.json(), f, indent=2, sort_keys=True)
            f.write("\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
