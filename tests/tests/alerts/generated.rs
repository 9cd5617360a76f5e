//! `deploy/prometheusrule.yaml` is what `gen-prometheusrule` renders now, and the generator
//! rewrites the runbook base.

use std::process::Command;

use serde_yaml::Value;
use virtguard_e2e::workspace_root;

use crate::rules::{alerts, rule_files, yaml};

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
