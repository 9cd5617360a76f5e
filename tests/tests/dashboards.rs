//! The Grafana dashboards of `deploy/dashboards/` (issue 16).
//!
//! * They are what `deploy/dashboards/generate.py` writes now.
//! * Grafana's schema essentials: a unique `uid`, a `schemaVersion`, a `datasource` variable of
//!   type `datasource` (prometheus), no hard-coded datasource uid anywhere (every `datasource`
//!   object says `${datasource}`), unique panel ids, a complete `gridPos` inside the 24 columns,
//!   a title and at least one query per panel.
//! * Every metric a query names (real PromQL parser, after replacing Grafana's variables) is in
//!   the exporter's catalogue.
//! * Every query is evaluated by a real Prometheus (`/api/v1/query`; a query that does not parse
//!   is a 400 and fails) scraping an exposition rendered here by the exporter's own code: the
//!   recorded real-guest stats (node mode) and cluster state with backup, restore, drill,
//!   maintenance records and VMIs. A query whose metrics are all in that exposition must return
//!   data.

#![allow(clippy::unwrap_used)] // test code

#[allow(dead_code)]
#[path = "alerts/promql.rs"]
mod promql;
#[allow(dead_code)]
#[path = "alerts/rules.rs"]
mod rules;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use virtguard_e2e::peers::{Prometheus, PrometheusConfig};
use virtguard_e2e::{require_binary, require_peer, workspace_root};
use virtguard_exporter::cluster::{render_state, ClusterState};
use virtguard_exporter::node::stats::{self, DeviceLabels};
use virtguard_exporter::render::{self, ConnectionCounts, Exposition};

fn dir() -> PathBuf {
    virtguard_e2e::dashboards::dir()
}

/// (file name, dashboard JSON) of every dashboard.
fn dashboards() -> Vec<(String, Value)> {
    let out = virtguard_e2e::dashboards::load();
    assert!(out.len() >= 4, "the four dashboards: {out:?}");
    out
}

fn panels(d: &Value) -> Vec<&Value> {
    virtguard_e2e::dashboards::panels(d)
}

fn queries(d: &Value) -> Vec<(String, String)> {
    virtguard_e2e::dashboards::queries(d, "default", "testvm")
}

#[test]
fn dashboards_are_what_the_generator_writes() {
    let _ = require_peer!(require_binary("python3"));
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("python3")
        .arg(dir().join("generate.py"))
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for (name, _) in dashboards() {
        let want = std::fs::read_to_string(tmp.path().join(&name)).unwrap();
        let got = std::fs::read_to_string(dir().join(&name)).unwrap();
        assert!(
            got == want,
            "deploy/dashboards/{name} is stale: run python3 deploy/dashboards/generate.py"
        );
    }
}

#[test]
fn dashboards_have_grafanas_schema_essentials() {
    let mut uids = BTreeSet::new();
    for (name, d) in dashboards() {
        let uid = d["uid"].as_str().unwrap_or("");
        assert!(!uid.is_empty() && uid.len() <= 40, "{name}: uid {uid:?}");
        assert!(uids.insert(uid.to_string()), "{name}: uid {uid} twice");
        assert!(d["schemaVersion"].as_u64().unwrap_or(0) >= 36, "{name}");
        assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "{name}");
        let vars = d["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
            "{name}: no prometheus datasource variable"
        );
        // No hard-coded datasource anywhere: every datasource object names the variable.
        fn walk(v: &Value, name: &str) {
            match v {
                Value::Object(m) => {
                    if let Some(ds) = m.get("datasource") {
                        if ds.is_object() {
                            assert_eq!(ds["uid"], "${datasource}", "{name}: {ds}");
                        } else {
                            // `datasource: "prometheus"` strings only as the variable's query.
                            assert!(ds.is_null(), "{name}: datasource {ds}");
                        }
                    }
                    m.values().for_each(|x| walk(x, name));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, name)),
                _ => {}
            }
        }
        walk(&d["panels"], &name);
        for v in vars.iter().filter(|v| v["type"] != "datasource") {
            walk(v, &name);
        }
        let mut ids = BTreeSet::new();
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap_or("");
            assert!(!title.is_empty(), "{name}: a panel without title: {p}");
            let id = p["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}: {title}: no id"));
            assert!(ids.insert(id), "{name}: panel id {id} twice");
            let g = &p["gridPos"];
            for k in ["h", "w", "x", "y"] {
                assert!(g[k].is_u64(), "{name}: {title}: gridPos.{k}");
            }
            assert!(
                g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
                "{name}: {title}: wider than the grid"
            );
            if p["type"] != "row" {
                assert!(
                    p["targets"].as_array().is_some_and(|t| !t.is_empty()),
                    "{name}: {title}: no query"
                );
            }
        }
    }
}

#[test]
fn every_metric_of_every_query_is_in_the_catalogue() {
    let known = promql::known_metrics();
    for (name, d) in dashboards() {
        for (title, q) in queries(&d) {
            let used = promql::metric_names(&q)
                .unwrap_or_else(|e| panic!("{name}: {title}: `{q}` does not parse: {e}"));
            assert!(!used.is_empty(), "{name}: {title}: `{q}` names no metric");
            for m in used {
                assert!(
                    known.contains(&m),
                    "{name}: {title}: {m} is not in the exporter's catalogue"
                );
            }
        }
    }
}

/// The exposition Prometheus scrapes: the recorded real-guest stats as node mode renders them,
/// plus cluster mode's rendering of VMIs and status records.
fn exposition() -> String {
    let fx = workspace_root().join("exporter/tests/fixtures");
    let text = std::fs::read_to_string(fx.join("domstats.txt")).unwrap();
    let xml = std::fs::read_to_string(fx.join("domain.xml")).unwrap();
    let labels = DeviceLabels::from_domain_xml(&xml).unwrap();
    let vms: Vec<_> = stats::parse_virsh_domstats(&text)
        .iter()
        .map(|(n, p)| stats::parse_domain(n, p, &labels))
        .collect();
    let mut out = Exposition::default();
    render::render_node(
        &mut out,
        "node-a",
        &vms,
        ConnectionCounts { up: 1, down: 0 },
    );
    let cm = |ns: &str, name: &str, data: Value| {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": ns, "name": name, "labels": {"virtguard.io/status": "true"}},
                "data": data,
            }))
            .unwrap(),
        )
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let backup = json!({"lastAttemptTimestamp": now - 100, "lastSuccessTimestamp": now - 60,
        "result": "Succeeded", "consistency": "application-consistent", "durationSeconds": 40.0,
        "freezeSeconds": 0.5, "bytesRead": 1000, "bytesNew": 100, "bytesStored": 50});
    let restore = json!({"lastAttemptTimestamp": now - 50, "lastSuccessTimestamp": now - 20,
        "result": "Succeeded", "source": "default/testvm", "method": "copy",
        "durationSeconds": 30.0, "bytesWritten": 4096});
    let drill = json!({"lastAttemptTimestamp": now - 500, "lastSuccessTimestamp": now - 300,
        "result": "Succeeded", "sandboxNamespace": "drills", "durationSeconds": 200.0,
        "timeToReadySeconds": 12.0});
    let maintain = json!({"repository": "s3://vg/prod", "lastAttemptTimestamp": now - 900,
        "result": "Succeeded", "durationSeconds": 60.0, "lastPruneSuccessTimestamp": now - 880,
        "lastGcSuccessTimestamp": now - 870, "lastVerifySuccessTimestamp": now - 860,
        "corruptChunks": 0, "counts": {"backups": 3, "chunks": 30, "storedBytes": 65536,
        "gcDeletedBytes": 0, "verifyReadBytes": 65536}});
    let vmi = serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": "testvm"},
        "spec": {"evictionStrategy": "LiveMigrate"},
        "status": {"phase": "Running", "nodeName": "node-a",
            "conditions": [{"type": "LiveMigratable", "status": "True"},
                           {"type": "AgentConnected", "status": "True"}],
            "interfaces": [{"name": "default", "mac": "02:5a:00:00:00:01"}]},
    }))
    .unwrap();
    let state = ClusterState {
        vmis: vec![Arc::new(vmi)],
        status: vec![
            cm(
                "default",
                "virtguard-status",
                json!({"testvm": backup.to_string()}),
            ),
            cm(
                "default",
                "virtguard-restore-status",
                json!({"testvm": restore.to_string()}),
            ),
            cm(
                "default",
                "virtguard-drill-status",
                json!({"testvm": drill.to_string()}),
            ),
            cm(
                "virtguard",
                "virtguard-maintenance-status",
                json!({"prod": maintain.to_string()}),
            ),
        ],
        ..ClusterState::default()
    };
    render_state(&mut out, &state, &Default::default());
    render::render_self(&mut out, "cluster", 0.01);
    out.into_string()
}

/// Serves `body` as `/metrics` on 127.0.0.1 until the process ends.
fn serve(body: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                render::CONTENT_TYPE,
                body.len()
            );
        }
    });
    port
}

#[test]
fn every_query_runs_in_a_real_prometheus_and_returns_data_where_there_is_data() {
    let _ = require_peer!(require_binary("prometheus"));
    let body = exposition();
    let port = serve(body.clone());
    let prom = Prometheus::start(&PrometheusConfig {
        targets: vec![format!("127.0.0.1:{port}")],
        ..PrometheusConfig::default()
    })
    .unwrap();
    let present = |m: &str| {
        m == "up" || body.contains(&format!("\n{m}{{")) || body.contains(&format!("\n{m} "))
    };
    let all: Vec<(String, String, String)> = dashboards()
        .into_iter()
        .flat_map(|(name, d)| {
            queries(&d)
                .into_iter()
                .map(move |(t, q)| (name.clone(), t, q))
        })
        .collect();
    // Counters need two samples in the rate window: wait until the scrapes have accumulated.
    let mut missing: BTreeMap<String, String> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        missing.clear();
        for (name, title, q) in &all {
            let r = prom
                .query(q)
                .unwrap_or_else(|e| panic!("{name}: {title}: Prometheus refused `{q}`: {e}"));
            let metrics = promql::metric_names(q).unwrap();
            let expect_data = metrics.iter().all(|m| present(m));
            if expect_data && r.as_array().is_none_or(Vec::is_empty) {
                missing.insert(format!("{name}: {title}"), q.clone());
            }
        }
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        missing.is_empty(),
        "queries without data although the exposition has their metrics: {missing:#?}"
    );
    // Honest coverage: most queries had data to return.
    let with_data = all
        .iter()
        .filter(|(_, _, q)| promql::metric_names(q).unwrap().iter().all(|m| present(m)))
        .count();
    eprintln!(
        "{} queries evaluated, {with_data} with data expected",
        all.len()
    );
    assert!(
        with_data * 4 >= all.len() * 3,
        "{with_data} of {}",
        all.len()
    );
}
