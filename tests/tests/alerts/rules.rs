//! Loading the alert rules (`alerts/*.rules.yaml`), their promtool tests
//! (`alerts/tests/*.test.yaml`) and the runbooks (`runbooks/*.md`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_yaml::Value;
use virtguard_e2e::workspace_root;

#[derive(Debug)]
pub struct Rule {
    pub alert: String,
    pub expr: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

pub fn files_in(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("reading a directory entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

pub fn rule_files() -> Vec<PathBuf> {
    let v = files_in(&workspace_root().join("alerts"), ".rules.yaml");
    assert!(!v.is_empty(), "no alerts/*.rules.yaml");
    v
}

pub fn test_files() -> Vec<PathBuf> {
    let v = files_in(&workspace_root().join("alerts/tests"), ".test.yaml");
    assert!(!v.is_empty(), "no alerts/tests/*.test.yaml");
    v
}

pub fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn groups(path: &Path) -> Vec<Value> {
    yaml(path)["groups"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{}: no groups list", path.display()))
        .clone()
}

pub fn string_map(v: &Value) -> BTreeMap<String, String> {
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
pub fn alerts() -> Vec<Rule> {
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

pub fn recording_rule_names() -> BTreeSet<String> {
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

pub fn runbooks() -> BTreeMap<String, String> {
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
