//! promtool: the rule files pass `promtool check rules`, their unit tests pass `promtool test
//! rules`, and every alert has a case where it fires and one where it stays silent.

use std::collections::BTreeSet;
use std::process::Command;

use virtguard_e2e::{require_binary, require_peer, workspace_root};

use crate::rules::{alerts, rule_files, test_files, yaml};

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
