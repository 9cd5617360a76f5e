//! Alert rules and runbooks (issue 9, ARCHITECTURE.md §3).
//!
//! * `promtool check rules` and `promtool test rules` over `alerts/` (real promtool; a missing
//!   binary fails the test unless `VIRTGUARD_ALLOW_SKIP=1`).
//! * Offline consistency: every alert has `runbooks/<AlertName>.md` and every runbook an alert;
//!   `runbook_url` ends in the alert's own file; runbooks have the four sections in order; every
//!   metric an expression (or a runbook's PromQL) uses exists in the exporter's catalogue
//!   (`virtguard_exporter::catalog::CATALOG`, parsed with a real PromQL parser); every alert has a
//!   promtool case where it fires and one where it stays silent.
//! * `deploy/prometheusrule.yaml` is what `gen-prometheusrule` renders now (regenerate with
//!   `cargo run -p virtguard-e2e --bin gen-prometheusrule`).
//! * End to end: a real Prometheus loads the rules, scrapes a fixture `/metrics` endpoint served
//!   here, and alerts reach `firing` in `/api/v1/alerts`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr};
use promql_parser::util::{walk_expr, ExprVisitor};
use serde_yaml::Value;
use virtguard_e2e::{
    free_port, require_binary, require_peer, wait_for_port, workspace_bin, workspace_root,
    Prometheus, PrometheusConfig,
};
use virtguard_exporter::catalog::{self, CATALOG};

/// Series that Prometheus itself creates for every target or rule; not the exporter's.
const PROMETHEUS_SERIES: &[&str] = &["up", "scrape_duration_seconds", "ALERTS"];

const SECTIONS: [&str; 4] = ["Meaning", "Impact", "Diagnosis", "Mitigation"];

// ---------------------------------------------------------------------------------------------
// Loading the rules, their tests and the runbooks.

#[derive(Debug)]
struct Rule {
    alert: String,
    expr: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn files_in(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("reading a directory entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

fn rule_files() -> Vec<PathBuf> {
    let v = files_in(&workspace_root().join("alerts"), ".rules.yaml");
    assert!(!v.is_empty(), "no alerts/*.rules.yaml");
    v
}

fn test_files() -> Vec<PathBuf> {
    let v = files_in(&workspace_root().join("alerts/tests"), ".test.yaml");
    assert!(!v.is_empty(), "no alerts/tests/*.test.yaml");
    v
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn groups(path: &Path) -> Vec<Value> {
    yaml(path)["groups"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{}: no groups list", path.display()))
        .clone()
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.as_str()
                            .expect("label and annotation names are strings")
                            .to_string(),
                        v.as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// All alerting rules, in file order; recording rules are skipped.
fn alerts() -> Vec<Rule> {
    let mut out = Vec::new();
    for f in rule_files() {
        for g in groups(&f) {
            for r in g["rules"].as_sequence().expect("a group has a rules list") {
                let Some(alert) = r["alert"].as_str() else {
                    continue;
                };
                out.push(Rule {
                    alert: alert.to_string(),
                    expr: r["expr"]
                        .as_str()
                        .expect("an alert has an expr")
                        .to_string(),
                    labels: string_map(&r["labels"]),
                    annotations: string_map(&r["annotations"]),
                });
            }
        }
    }
    assert!(!out.is_empty(), "no alerting rules found");
    out
}

fn recording_rule_names() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for f in rule_files() {
        for g in groups(&f) {
            for r in g["rules"].as_sequence().expect("a group has a rules list") {
                if let Some(n) = r["record"].as_str() {
                    out.insert(n.to_string());
                }
            }
        }
    }
    out
}

fn runbooks() -> BTreeMap<String, String> {
    files_in(&workspace_root().join("runbooks"), ".md")
        .into_iter()
        .map(|p| {
            (
                p.file_stem()
                    .expect("a file name")
                    .to_string_lossy()
                    .into_owned(),
                std::fs::read_to_string(&p).expect("a readable runbook"),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// PromQL: metric names used by an expression.

struct MetricNames(BTreeSet<String>);

impl ExprVisitor for MetricNames {
    type Error = std::convert::Infallible;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Self::Error> {
        let vs = match expr {
            Expr::VectorSelector(vs) => Some(vs),
            Expr::MatrixSelector(ms) => Some(&ms.vs),
            _ => None,
        };
        if let Some(vs) = vs {
            match &vs.name {
                Some(n) => {
                    self.0.insert(n.clone());
                }
                None => {
                    // `{__name__="x"}`: the name is a matcher. A regex on the name
                    // (`{__name__=~"virtguard_.*"}`) names no single metric and is not checked.
                    for m in &vs.matchers.matchers {
                        if m.name == "__name__" && matches!(m.op, MatchOp::Equal) {
                            self.0.insert(m.value.clone());
                        }
                    }
                }
            }
        }
        Ok(true)
    }
}

fn metric_names(promql: &str) -> Result<BTreeSet<String>, String> {
    let expr = parser::parse(promql)?;
    let mut v = MetricNames(BTreeSet::new());
    let Ok(_) = walk_expr(&mut v, &expr);
    Ok(v.0)
}

/// Every name a rule or runbook may use: the exporter's catalogue, our recording rules, and
/// the series Prometheus makes itself.
fn known_metrics() -> BTreeSet<String> {
    let mut known: BTreeSet<String> = CATALOG.iter().map(|m| m.name.to_string()).collect();
    known.extend(recording_rule_names());
    known.extend(PROMETHEUS_SERIES.iter().map(|s| s.to_string()));
    known
}

/// Splits a ```promql block into queries: consecutive lines form one query when together they
/// parse (longest match first); `#` comment lines and blank lines separate queries.
fn promql_queries(block: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chunk: Vec<&str> = Vec::new();
    let flush = |chunk: &mut Vec<&str>, out: &mut Vec<String>| -> Result<(), String> {
        let mut i = 0;
        while i < chunk.len() {
            let mut found = None;
            for j in (i..chunk.len()).rev() {
                let q = chunk[i..=j].join("\n");
                if parser::parse(&q).is_ok() {
                    found = Some((j, q));
                    break;
                }
            }
            let (j, q) = found.ok_or_else(|| {
                let e = parser::parse(chunk[i]).err().unwrap_or_default();
                format!("does not parse as PromQL: `{}` ({e})", chunk[i])
            })?;
            out.push(q);
            i = j + 1;
        }
        chunk.clear();
        Ok(())
    };
    for line in block.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            flush(&mut chunk, &mut out)?;
        } else {
            chunk.push(line);
        }
    }
    flush(&mut chunk, &mut out)?;
    Ok(out)
}

/// Fenced code blocks of a Markdown text: (info string, body).
fn code_blocks(md: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur: Option<(String, String)> = None;
    for line in md.lines() {
        let t = line.trim_start();
        if let Some(info) = t.strip_prefix("```") {
            match cur.take() {
                None => cur = Some((info.trim().to_string(), String::new())),
                Some(block) => out.push(block),
            }
        } else if let Some((_, body)) = cur.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    assert!(cur.is_none(), "unclosed code fence");
    out
}

/// `#`/`##` headings outside code fences.
fn headings(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in md.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            out.push(line.to_string());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// promtool

#[test]
fn promtool_check_rules_accepts_the_rule_files() {
    let promtool = require_peer!(require_binary("promtool"));
    let out = Command::new(promtool)
        .current_dir(workspace_root())
        .args(["check", "rules"])
        .args(rule_files())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_unit_tests_pass() {
    let promtool = require_peer!(require_binary("promtool"));
    let out = Command::new(promtool)
        .current_dir(workspace_root())
        .args(["test", "rules"])
        .args(test_files())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool test rules failed:\n{text}");
    assert_eq!(
        text.matches("SUCCESS").count(),
        test_files().len(),
        "every test file must report SUCCESS:\n{text}"
    );
}

/// promtool passes a test of a misspelt alert name with `exp_alerts: []`, so we check here that
/// the tests name real alerts, and that each alert is tested both ways.
#[test]
fn every_alert_has_a_firing_and_a_silent_promtool_case() {
    let names: BTreeSet<String> = alerts().into_iter().map(|r| r.alert).collect();
    let mut fires = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for f in test_files() {
        let doc = yaml(&f);
        assert!(
            doc["rule_files"]
                .as_sequence()
                .is_some_and(|s| !s.is_empty()),
            "{}: no rule_files",
            f.display()
        );
        for t in doc["tests"].as_sequence().unwrap() {
            for c in t["alert_rule_test"].as_sequence().into_iter().flatten() {
                let name = c["alertname"].as_str().unwrap().to_string();
                assert!(
                    names.contains(&name),
                    "{}: tests unknown alert {name}",
                    f.display()
                );
                let expected = c["exp_alerts"].as_sequence().map_or(0, Vec::len);
                if expected > 0 {
                    fires.insert(name);
                } else {
                    silent.insert(name);
                }
            }
        }
    }
    for n in &names {
        assert!(fires.contains(n), "{n}: no promtool case where it fires");
        assert!(
            silent.contains(n),
            "{n}: no promtool case where it stays silent"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Offline consistency

#[test]
fn every_alert_has_a_runbook_and_every_runbook_an_alert() {
    let names: BTreeSet<String> = alerts().into_iter().map(|r| r.alert).collect();
    let books: BTreeSet<String> = runbooks().into_keys().collect();
    let missing: Vec<_> = names.difference(&books).collect();
    let orphans: Vec<_> = books.difference(&names).collect();
    assert!(
        missing.is_empty(),
        "alerts without runbooks/<AlertName>.md: {missing:?}"
    );
    assert!(orphans.is_empty(), "runbooks without an alert: {orphans:?}");
}

#[test]
fn alert_names_are_unique() {
    let mut seen = BTreeSet::new();
    for r in alerts() {
        assert!(
            seen.insert(r.alert.clone()),
            "alert {} defined twice",
            r.alert
        );
    }
}

#[test]
fn runbook_urls_end_in_the_alerts_own_runbook() {
    for r in alerts() {
        let url = r
            .annotations
            .get("runbook_url")
            .unwrap_or_else(|| panic!("{}: no runbook_url", r.alert));
        assert!(
            url.starts_with("https://") && url.ends_with(&format!("/{}.md", r.alert)),
            "{}: runbook_url {url} must be <base>/{}.md",
            r.alert,
            r.alert
        );
    }
}

#[test]
fn runbooks_have_title_and_the_four_sections_in_order() {
    for (name, md) in runbooks() {
        let h = headings(&md);
        let want: Vec<String> = std::iter::once(format!("# {name}"))
            .chain(SECTIONS.iter().map(|s| format!("## {s}")))
            .collect();
        let got: Vec<&String> = h
            .iter()
            .filter(|l| l.starts_with("# ") || l.starts_with("## "))
            .collect();
        assert_eq!(got, want.iter().collect::<Vec<_>>(), "runbooks/{name}.md");
        assert!(
            md.starts_with(&format!("# {name}\n")),
            "runbooks/{name}.md must start with its title"
        );
        // No empty section.
        for pair in SECTIONS.windows(2) {
            let a = md.find(&format!("\n## {}\n", pair[0])).unwrap();
            let b = md.find(&format!("\n## {}\n", pair[1])).unwrap();
            assert!(
                md[a..b].lines().filter(|l| !l.trim().is_empty()).count() > 2,
                "runbooks/{name}.md: section {} is empty",
                pair[0]
            );
        }
    }
}

#[test]
fn runbooks_carry_shell_commands_and_promql() {
    for (name, md) in runbooks() {
        let blocks = code_blocks(&md);
        assert!(
            blocks.iter().any(|(info, body)| info == "bash"
                && (body.contains("kubectl") || body.contains("virtctl"))),
            "runbooks/{name}.md: no ```bash block with kubectl/virtctl commands"
        );
        assert!(
            blocks.iter().any(|(info, _)| info == "promql"),
            "runbooks/{name}.md: no ```promql block"
        );
    }
}

#[test]
fn every_metric_in_the_rules_is_in_the_exporter_catalogue() {
    let known = known_metrics();
    for r in alerts() {
        let names = metric_names(&r.expr)
            .unwrap_or_else(|e| panic!("{}: expr does not parse: {e}\n{}", r.alert, r.expr));
        assert!(!names.is_empty(), "{}: expr selects no metric", r.alert);
        for n in names {
            assert!(
                known.contains(&n),
                "{}: metric {n} is not in the exporter's catalogue (exporter/src/catalog.rs)",
                r.alert
            );
        }
    }
}

#[test]
fn runbook_promql_parses_and_uses_catalogued_metrics() {
    let known = known_metrics();
    let mut queries = 0;
    for (name, md) in runbooks() {
        for (info, body) in code_blocks(&md) {
            if info != "promql" {
                continue;
            }
            let qs = promql_queries(&body).unwrap_or_else(|e| panic!("runbooks/{name}.md: {e}"));
            for q in qs {
                queries += 1;
                for n in metric_names(&q).unwrap() {
                    assert!(
                        known.contains(&n),
                        "runbooks/{name}.md: metric {n} is not in the exporter's catalogue:\n{q}"
                    );
                }
            }
        }
    }
    assert!(queries > 0);
}

/// The parser-based check must be able to fail: a misspelt metric is reported.
#[test]
fn metric_check_catches_unknown_names() {
    let known = known_metrics();
    let names = metric_names(
        "rate(kubevirt_vmi_storage_read_times_seconds_totl[5m]) / on(name) {__name__=\"kubevirt_vmi_storage_iops_read_total\"} or {__name__=~\"virtguard_.*\"}",
    )
    .unwrap();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "kubevirt_vmi_storage_iops_read_total",
            "kubevirt_vmi_storage_read_times_seconds_totl"
        ]
    );
    assert!(!known.contains("kubevirt_vmi_storage_read_times_seconds_totl"));
    assert!(metric_names("rate(x[5m]").is_err());
    let qs = promql_queries("sum(a)\n  + sum(b)\n# c\nup\nrate(d[5m])\n").unwrap();
    assert_eq!(qs, ["sum(a)\n  + sum(b)", "up", "rate(d[5m])"]);
    assert!(promql_queries("sum(a\n").is_err());
}

/// Alerts whose promtool cases expect alerts labelled with a VM's `namespace` and `name`.
fn alerts_firing_per_vm() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for f in test_files() {
        for t in yaml(&f)["tests"].as_sequence().into_iter().flatten() {
            for c in t["alert_rule_test"].as_sequence().into_iter().flatten() {
                for a in c["exp_alerts"].as_sequence().into_iter().flatten() {
                    let l = &a["exp_labels"];
                    if l.get("namespace").is_some() && l.get("name").is_some() {
                        if let Some(n) = c["alertname"].as_str() {
                            out.insert(n.to_string());
                        }
                    }
                }
            }
        }
    }
    out
}

#[test]
fn every_alert_has_severity_component_and_annotations() {
    let per_vm = alerts_firing_per_vm();
    for r in alerts() {
        let sev = r.labels.get("severity").map(String::as_str);
        assert!(
            matches!(sev, Some("critical" | "warning" | "info")),
            "{}: severity must be critical|warning|info, is {sev:?}",
            r.alert
        );
        let comp = r.labels.get("component").map(String::as_str).unwrap_or("");
        assert!(
            !comp.is_empty() && comp.chars().all(|c| c.is_ascii_lowercase() || c == '-'),
            "{}: component label must be a lower-case word, is {comp:?}",
            r.alert
        );
        for a in ["summary", "description"] {
            assert!(
                r.annotations.get(a).is_some_and(|s| !s.trim().is_empty()),
                "{}: no {a}",
                r.alert
            );
        }
        let desc = &r.annotations["description"];
        assert!(
            desc.contains("{{ $value"),
            "{}: description must show the value",
            r.alert
        );
        // An alert about one VM (its promtool cases fire with namespace and name labels) must
        // name it.
        if per_vm.contains(&r.alert) {
            assert!(
                desc.contains("{{ $labels.namespace }}/{{ $labels.name }}"),
                "{}: description must name the VM as {{{{ $labels.namespace }}}}/{{{{ $labels.name }}}}",
                r.alert
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generated PrometheusRule

#[test]
fn generated_prometheusrule_is_up_to_date() {
    let out = Command::new(env!("CARGO_BIN_EXE_gen-prometheusrule"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\nregenerate with: cargo run -p virtguard-e2e --bin gen-prometheusrule",
        String::from_utf8_lossy(&out.stderr)
    );
    // And the textual rendering means the same as the rule files.
    let manifest = yaml(&workspace_root().join("deploy/prometheusrule.yaml"));
    assert_eq!(manifest["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(manifest["kind"], "PrometheusRule");
    let mut groups = Vec::new();
    for f in rule_files() {
        groups.extend(yaml(&f)["groups"].as_sequence().unwrap().iter().cloned());
    }
    assert_eq!(
        manifest["spec"]["groups"],
        Value::Sequence(groups),
        "deploy/prometheusrule.yaml's groups differ from alerts/*.rules.yaml"
    );
}

#[test]
fn generator_rewrites_the_runbook_base() {
    let out = Command::new(env!("CARGO_BIN_EXE_gen-prometheusrule"))
        .args([
            "--stdout",
            "--runbook-base",
            "https://runbooks.example/virtguard/",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let doc: Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let mut n = 0;
    for g in doc["spec"]["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            let alert = r["alert"].as_str().unwrap();
            assert_eq!(
                r["annotations"]["runbook_url"],
                format!("https://runbooks.example/virtguard/{alert}.md")
            );
            n += 1;
        }
    }
    assert_eq!(n, alerts().len());
}

// ---------------------------------------------------------------------------------------------
// End to end: a real Prometheus, the real rules, a fixture exporter.

/// A `/metrics` endpoint on 127.0.0.1 serving [`fixture_metrics`] for the n-th scrape.
struct FixtureExporter {
    port: u16,
    scrapes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FixtureExporter {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fixture exporter");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("bound address").port();
        let scrapes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (scrapes.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let n = s.fetch_add(1, Ordering::Relaxed);
                        let _ = serve(conn, n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("fixture exporter: accept failed: {e}"),
                }
            }
        });
        Self {
            port,
            scrapes,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FixtureExporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: TcpStream, n: u64) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let k = conn.read(&mut buf)?;
        if k == 0 {
            break;
        }
        req.extend_from_slice(&buf[..k]);
    }
    let body = fixture_metrics(n);
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

/// Exposition text for the n-th scrape, with HELP/TYPE taken from the catalogue (so the fixture
/// can only expose catalogued metrics). Per scrape, prod/db-1's rootdisk completes 10 reads
/// taking 5 s in total (500 ms each: above the 100 ms threshold) and its filesystems are frozen;
/// prod/web-1 reads at 1 ms and is not frozen.
fn fixture_metrics(n: u64) -> String {
    let series: &[(&str, &str, f64)] = &[
        (
            "virtguard_vmi_filesystem_frozen",
            r#"namespace="prod",name="db-1",node="worker-1""#,
            1.0,
        ),
        (
            "virtguard_vmi_filesystem_frozen",
            r#"namespace="prod",name="web-1",node="worker-1""#,
            0.0,
        ),
        (
            "kubevirt_vmi_storage_iops_read_total",
            r#"namespace="prod",name="db-1",node="worker-1",drive="rootdisk""#,
            10.0 * n as f64,
        ),
        (
            "kubevirt_vmi_storage_iops_read_total",
            r#"namespace="prod",name="web-1",node="worker-1",drive="rootdisk""#,
            10.0 * n as f64,
        ),
        (
            "kubevirt_vmi_storage_read_times_seconds_total",
            r#"namespace="prod",name="db-1",node="worker-1",drive="rootdisk""#,
            5.0 * n as f64,
        ),
        (
            "kubevirt_vmi_storage_read_times_seconds_total",
            r#"namespace="prod",name="web-1",node="worker-1",drive="rootdisk""#,
            0.01 * n as f64,
        ),
    ];
    let mut out = String::new();
    let mut last = "";
    for (name, labels, value) in series {
        if *name != last {
            let def = catalog::get(name).unwrap_or_else(|| panic!("{name} is not catalogued"));
            out.push_str(&format!(
                "# HELP {name} {}\n# TYPE {name} {}\n",
                def.help,
                def.kind.as_str()
            ));
            last = name;
        }
        out.push_str(&format!("{name}{{{labels}}} {value}\n"));
    }
    out
}

/// The real rules with every `for:` shortened to 1s, so that alerts whose expression holds fire
/// within seconds. Expressions, labels and annotations are unchanged.
fn rules_with_short_for(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for f in rule_files() {
        let mut doc = yaml(&f);
        let groups = doc["groups"].as_sequence_mut().expect("a groups list");
        for g in groups {
            for r in g["rules"].as_sequence_mut().expect("a rules list") {
                if let Some(m) = r.as_mapping_mut() {
                    if m.contains_key("for") {
                        m.insert("for".into(), "1s".into());
                    }
                }
            }
        }
        let p = dir.join(f.file_name().expect("a file name"));
        let text = serde_yaml::to_string(&doc).expect("rendering YAML");
        std::fs::write(&p, text).expect("writing the test rule file");
        out.push(p);
    }
    out
}

fn alert_for<'a>(
    alerts: &'a serde_json::Value,
    name: &str,
    vm: &str,
) -> Vec<&'a serde_json::Value> {
    alerts
        .as_array()
        .expect("/api/v1/alerts returns a list")
        .iter()
        .filter(|a| a["labels"]["alertname"] == name && a["labels"]["name"] == vm)
        .collect()
}

#[test]
fn alerts_fire_in_a_real_prometheus_scraping_a_fixture_exporter() {
    require_peer!(require_binary("prometheus"));
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_with_short_for(dir.path());
    let fixture = FixtureExporter::start();
    let prom = require_peer!(Prometheus::start(&PrometheusConfig {
        targets: vec![format!("127.0.0.1:{}", fixture.port)],
        interval: Duration::from_secs(1),
        rule_files: rules,
        ..Default::default()
    }));

    let timeout = Duration::from_secs(45);
    let frozen = prom
        .wait_for_alert("VirtguardVMIFilesystemFrozen", "firing", timeout)
        .unwrap();
    assert_eq!(frozen["labels"]["namespace"], "prod");
    assert_eq!(frozen["labels"]["name"], "db-1");
    assert_eq!(frozen["labels"]["severity"], "critical");
    assert_eq!(frozen["labels"]["component"], "guest");
    let desc = frozen["annotations"]["description"].as_str().unwrap();
    assert!(desc.contains("VM prod/db-1 "), "{desc}");
    assert!(desc.contains("(frozen = 1)"), "{desc}");
    assert!(frozen["annotations"]["runbook_url"]
        .as_str()
        .unwrap()
        .ends_with("/runbooks/VirtguardVMIFilesystemFrozen.md"));

    // A rate()-based rule needs two scrapes of the counters first.
    let slow = prom
        .wait_for_alert("VirtguardVMIStorageReadLatencyHigh", "firing", timeout)
        .unwrap();
    assert_eq!(slow["labels"]["name"], "db-1");
    assert_eq!(slow["labels"]["drive"], "rootdisk");
    let value: f64 = slow["value"].as_str().unwrap().parse().unwrap();
    assert!(
        (value - 0.5).abs() < 0.01,
        "read latency {value}, want 0.5s"
    );
    let desc = slow["annotations"]["description"].as_str().unwrap();
    assert!(
        desc.contains("VM prod/db-1 (node worker-1) have taken 500ms"),
        "{desc}"
    );

    // The healthy VM stays silent, and so does the exporter-health rule (the target is up).
    let all = prom.alerts().unwrap();
    assert!(
        alert_for(&all, "VirtguardVMIFilesystemFrozen", "web-1").is_empty(),
        "{all}"
    );
    assert!(
        alert_for(&all, "VirtguardVMIStorageReadLatencyHigh", "web-1").is_empty(),
        "{all}"
    );
    assert!(
        !all.as_array()
            .unwrap()
            .iter()
            .any(|a| a["labels"]["alertname"] == "VirtguardExporterDown"),
        "{all}"
    );
    assert!(fixture.scrapes.load(Ordering::Relaxed) >= 2);
}

/// The real `virtguard-exporter` binary (node mode, libvirt's built-in `test:///default` driver
/// with its one domain `test`), killed on drop.
struct RealExporter {
    child: Child,
    port: u16,
}

impl RealExporter {
    fn start(bin: &Path) -> Self {
        let port = free_port();
        let child = Command::new(bin)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--node-name", "worker-1"])
            .args(["--libvirt-socket-glob", ""])
            .args(["--libvirt-uri", "test:///default"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting virtguard-exporter");
        let mut me = Self { child, port };
        if !wait_for_port(port, Duration::from_secs(20)) {
            me.stop();
            panic!("virtguard-exporter did not listen on 127.0.0.1:{port} within 20s");
        }
        me
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RealExporter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// With the real exporter: Prometheus scrapes its series, no VM alert fires for a healthy
/// domain, and when the exporter dies `VirtguardExporterDown` fires for its target.
#[test]
fn exporter_down_fires_when_the_real_exporter_stops() {
    require_peer!(require_binary("prometheus"));
    let bin = require_peer!(workspace_bin("virtguard-exporter"));
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_with_short_for(dir.path());
    let mut exporter = RealExporter::start(&bin);
    let target = format!("127.0.0.1:{}", exporter.port);
    let prom = require_peer!(Prometheus::start(&PrometheusConfig {
        targets: vec![target.clone()],
        interval: Duration::from_secs(1),
        rule_files: rules,
        ..Default::default()
    }));
    let timeout = Duration::from_secs(45);
    prom.wait_for_result(
        r#"virtguard_vmi_scrape_success{name="test", node="worker-1"} == 1"#,
        timeout,
    )
    .unwrap();
    // Let every rule evaluate over real data a few times: nothing may fire yet.
    prom.wait_for_result("count_over_time(up[1m]) >= 4", timeout)
        .unwrap();
    let all = prom.alerts().unwrap();
    assert!(
        !all.as_array()
            .unwrap()
            .iter()
            .any(|a| a["state"] == "firing"),
        "alerts firing against a healthy exporter: {all}"
    );

    exporter.stop();
    let down = prom
        .wait_for_alert("VirtguardExporterDown", "firing", timeout)
        .unwrap();
    assert_eq!(down["labels"]["instance"], target.as_str());
    assert_eq!(down["labels"]["severity"], "warning");
    let desc = down["annotations"]["description"].as_str().unwrap();
    assert!(desc.contains(&format!("target {target}")), "{desc}");
}
