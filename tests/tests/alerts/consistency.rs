//! Offline consistency of rules, runbooks and the exporter's catalogue: every alert has its
//! runbook and every runbook an alert, names are unique, `runbook_url`s point at the alert's own
//! runbook, runbooks have the four sections, every metric used exists, and labels and
//! annotations are complete.

use std::collections::BTreeSet;

use crate::promql::{code_blocks, headings, known_metrics, metric_names, promql_queries};
use crate::rules::{alerts, runbooks, test_files, yaml};

const SECTIONS: [&str; 4] = ["Meaning", "Impact", "Diagnosis", "Mitigation"];

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
