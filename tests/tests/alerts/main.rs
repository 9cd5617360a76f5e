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
//!
//! Modules: `rules` loads the rule files, their promtool tests and the runbooks; `promql` finds
//! the metric names an expression uses and the queries and headings of a runbook; the tests are
//! in `promtool`, `consistency`, `generated` and `prometheus` (the end-to-end ones). One test
//! binary: the modules share the loaders.

mod consistency;
mod generated;
mod prometheus;
mod promql;
mod promtool;
mod rules;
