//! The Grafana dashboards of `deploy/dashboards/` as the tests read them: every dashboard, every
//! panel (rows' nested panels included), and every PromQL query with Grafana's variables
//! replaced, so the dashboard test (`tests/tests/dashboards.rs`) and the end-to-end test
//! (`tests/tests/quickstart.rs`, against live data) evaluate exactly the same queries.

use std::path::PathBuf;

use serde_json::Value;

use crate::peers::workspace_root;

/// The directory of the dashboard JSON files.
pub fn dir() -> PathBuf {
    workspace_root().join("deploy/dashboards")
}

/// (file name, dashboard JSON) of every dashboard, sorted by file name. Panics on a file that
/// is not JSON (a test failure naming the file).
pub fn load() -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = std::fs::read_dir(dir())
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir().display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let v = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()));
            (
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                v,
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every panel, rows' nested panels included.
pub fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// (panel title, PromQL) of every query of `d`, with `$namespace` / `$name` set to the given VM
/// and `$__rate_interval` to 1m; template variable queries (`label_values(SELECTOR, label)`)
/// give their SELECTOR. Panics on a variable query of another shape.
pub fn queries(d: &Value, namespace: &str, name: &str) -> Vec<(String, String)> {
    let fill = |q: &str| {
        q.replace("$__rate_interval", "1m")
            .replace("$namespace", namespace)
            .replace("$name", name)
    };
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((p["title"].as_str().unwrap_or("").to_string(), fill(e)));
            }
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().unwrap_or("");
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.rsplit_once(','))
                .map(|(sel, _)| sel.to_string())
                .unwrap_or_else(|| panic!("variable query {q}"));
            out.push((format!("variable {}", v["name"]), fill(&inner)));
        }
    }
    out
}
