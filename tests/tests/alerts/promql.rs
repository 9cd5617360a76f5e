//! PromQL and Markdown: the metric names an expression uses (with a real PromQL parser), every
//! name a rule or runbook may use, the queries of a ```promql block, and a runbook's code blocks
//! and headings.

use std::collections::BTreeSet;

use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr};
use promql_parser::util::{walk_expr, ExprVisitor};
use virtguard_exporter::catalog::CATALOG;

use crate::rules::recording_rule_names;

/// Series that Prometheus itself creates for every target or rule; not the exporter's.
const PROMETHEUS_SERIES: &[&str] = &["up", "scrape_duration_seconds", "ALERTS"];

pub struct MetricNames(BTreeSet<String>);

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

pub fn metric_names(promql: &str) -> Result<BTreeSet<String>, String> {
    let expr = parser::parse(promql)?;
    let mut v = MetricNames(BTreeSet::new());
    let Ok(_) = walk_expr(&mut v, &expr);
    Ok(v.0)
}

/// Every name a rule or runbook may use: the exporter's catalogue, our recording rules, and
/// the series Prometheus makes itself.
pub fn known_metrics() -> BTreeSet<String> {
    let mut known: BTreeSet<String> = CATALOG.iter().map(|m| m.name.to_string()).collect();
    known.extend(recording_rule_names());
    known.extend(PROMETHEUS_SERIES.iter().map(|s| s.to_string()));
    known
}

/// Splits a ```promql block into queries: consecutive lines form one query when together they
/// parse (longest match first); `#` comment lines and blank lines separate queries.
pub fn promql_queries(block: &str) -> Result<Vec<String>, String> {
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
pub fn code_blocks(md: &str) -> Vec<(String, String)> {
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
pub fn headings(md: &str) -> Vec<String> {
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
