//! `gen-prometheusrule`: renders the alert rules in `alerts/*.rules.yaml` into the Kubernetes
//! manifest `deploy/prometheusrule.yaml` (a Prometheus Operator `PrometheusRule`) and the alert
//! table in `alerts/README.md` (and in the top-level `README.md`, when it has the table markers).
//!
//! ```text
//! cargo run -p virtguard-e2e --bin gen-prometheusrule                 # rewrite the generated files
//! cargo run -p virtguard-e2e --bin gen-prometheusrule -- --check      # exit 1 if one is stale
//! cargo run -p virtguard-e2e --bin gen-prometheusrule -- --stdout --runbook-base https://wiki.example/runbooks
//! ```
//!
//! The PrometheusRule is rendered textually: the rule files' `groups:` lists are re-indented under
//! `spec:`, so comments and layout of the source survive and the manifest reads like the rules.
//! Each rule file is also parsed as YAML first, so a file that is not a plain `groups:` document
//! is refused rather than half-copied. `--runbook-base` replaces the default runbook base URL
//! ([`DEFAULT_RUNBOOK_BASE`]) in every `runbook_url`; the committed manifest uses the default.
//! The integration test `tests/tests/alerts/` (module `generated`) runs this binary with `--check`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The runbook base URL written in `alerts/*.rules.yaml`.
const DEFAULT_RUNBOOK_BASE: &str = "https://github.com/virtguard/virtguard/blob/main/runbooks";

/// Markers around the generated alert table in Markdown files.
const TABLE_BEGIN: &str =
    "<!-- BEGIN GENERATED ALERT TABLE (cargo run -p virtguard-e2e --bin gen-prometheusrule) -->";
const TABLE_END: &str = "<!-- END GENERATED ALERT TABLE -->";

const USAGE: &str = "\
Usage: gen-prometheusrule [--check | --stdout] [--runbook-base URL] [--root DIR]

Renders alerts/*.rules.yaml into deploy/prometheusrule.yaml and the alert table of
alerts/README.md (and README.md when it contains the table markers).

  --check              compare instead of writing; exit 1 and name the stale files
  --stdout             print the PrometheusRule to stdout instead of writing files
  --runbook-base URL   base of runbook_url (env VIRTGUARD_RUNBOOK_BASE)
                       [default: https://github.com/virtguard/virtguard/blob/main/runbooks]
  --root DIR           workspace root [default: this checkout]
  -h, --help           this text
";

#[derive(Debug)]
struct Args {
    check: bool,
    stdout: bool,
    runbook_base: String,
    root: PathBuf,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        check: false,
        stdout: false,
        runbook_base: std::env::var("VIRTGUARD_RUNBOOK_BASE")
            .unwrap_or_else(|_| DEFAULT_RUNBOOK_BASE.to_string()),
        // The crate lives in <root>/tests.
        root: Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--check" => args.check = true,
            "--stdout" => args.stdout = true,
            "--runbook-base" => {
                args.runbook_base = it.next().ok_or("--runbook-base needs a URL")?;
            }
            "--root" => args.root = PathBuf::from(it.next().ok_or("--root needs a directory")?),
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if args.check && args.stdout {
        return Err("--check and --stdout exclude each other".into());
    }
    let base = args.runbook_base.trim_end_matches('/').to_string();
    if base.is_empty() || base.contains(char::is_whitespace) {
        return Err(format!(
            "--runbook-base `{}` is not a usable URL",
            args.runbook_base
        ));
    }
    args.runbook_base = base;
    Ok(Some(args))
}

/// The rule files, sorted by name so the output is stable.
fn rule_files(root: &Path) -> Result<Vec<PathBuf>, String> {
    let dir = root.join("alerts");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".rules.yaml"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("no *.rules.yaml file in {}", dir.display()));
    }
    Ok(files)
}

/// One alert's row of the table.
struct AlertRow {
    name: String,
    severity: String,
    component: String,
    for_: String,
    summary: String,
}

fn str_at<'a>(v: &'a serde_yaml::Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for k in path {
        cur = cur.get(*k)?;
    }
    cur.as_str()
}

/// Parses one rule file, checks its shape, and returns its alerts in file order.
fn parse_rules(path: &Path, text: &str) -> Result<Vec<AlertRow>, String> {
    let doc: serde_yaml::Value = serde_yaml::from_str(text)
        .map_err(|e| format!("{}: not valid YAML: {e}", path.display()))?;
    let map = doc
        .as_mapping()
        .ok_or_else(|| format!("{}: top level must be a mapping", path.display()))?;
    if map.len() != 1 || doc.get("groups").is_none() {
        return Err(format!(
            "{}: a rule file must contain exactly one top-level key, `groups`",
            path.display()
        ));
    }
    let groups = doc["groups"]
        .as_sequence()
        .ok_or_else(|| format!("{}: `groups` must be a list", path.display()))?;
    let mut rows = Vec::new();
    for g in groups {
        let rules = g
            .get("rules")
            .and_then(|r| r.as_sequence())
            .ok_or_else(|| format!("{}: a group without a `rules` list", path.display()))?;
        for r in rules {
            let Some(name) = str_at(r, &["alert"]) else {
                continue; // a recording rule
            };
            let field = |p: &[&str]| str_at(r, p).unwrap_or("").trim().to_string();
            rows.push(AlertRow {
                name: name.to_string(),
                severity: field(&["labels", "severity"]),
                component: field(&["labels", "component"]),
                for_: str_at(r, &["for"]).unwrap_or("0s").to_string(),
                summary: field(&["annotations", "summary"]),
            });
        }
    }
    Ok(rows)
}

/// The `groups:` list of a rule file as text (the lines after `groups:`), re-indented by two.
fn groups_block(path: &Path, text: &str) -> Result<String, String> {
    let mut lines = text.lines();
    for line in lines.by_ref() {
        if line.trim_end() == "groups:" {
            break;
        }
    }
    let mut out = String::new();
    for line in lines {
        if line.trim().is_empty() {
            out.push('\n');
        } else if line.starts_with(' ') || line.starts_with('#') {
            let _ = writeln!(out, "  {line}");
        } else {
            return Err(format!(
                "{}: unexpected top-level line after `groups:`: {line}",
                path.display()
            ));
        }
    }
    if out.trim().is_empty() {
        return Err(format!("{}: no `groups:` list", path.display()));
    }
    Ok(out)
}

fn render_prometheusrule(
    files: &[(PathBuf, String)],
    runbook_base: &str,
) -> Result<String, String> {
    let mut out = String::from(
        "# GENERATED from alerts/*.rules.yaml by `cargo run -p virtguard-e2e --bin gen-prometheusrule`.\n\
         # Do not edit: change the rules and re-run it (a test fails while this file is stale).\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n  \
           name: virtguard\n  \
           labels:\n    \
             app.kubernetes.io/name: virtguard\n    \
             app.kubernetes.io/component: alerts\n    \
             app.kubernetes.io/part-of: virtguard\n\
         spec:\n  \
           groups:\n",
    );
    for (i, (path, text)) in files.iter().enumerate() {
        let block = groups_block(path, text)?;
        if i > 0 {
            out.push('\n');
        }
        out.push_str(block.trim_end_matches('\n'));
        out.push('\n');
    }
    let from = format!("{DEFAULT_RUNBOOK_BASE}/");
    let to = format!("{runbook_base}/");
    Ok(out.replace(&from, &to))
}

fn render_table(rows: &[AlertRow], runbook_dir: &str) -> String {
    let mut t =
        String::from("| alert | severity | component | for | summary |\n|---|---|---|---|---|\n");
    for r in rows {
        let _ = writeln!(
            t,
            "| [`{n}`]({runbook_dir}/{n}.md) | {} | {} | {} | {} |",
            r.severity,
            r.component,
            r.for_,
            r.summary.replace('|', "\\|"),
            n = r.name,
        );
    }
    t
}

/// Replaces the text between the table markers; `None` when the markers are absent.
fn splice_table(doc: &str, table: &str) -> Option<String> {
    let b = doc.find(TABLE_BEGIN)?;
    let e = doc[b..].find(TABLE_END)? + b;
    Some(format!("{}{TABLE_BEGIN}\n{table}{}", &doc[..b], &doc[e..]))
}

const ALERTS_README_HEAD: &str = "\
# Alerts

Prometheus alert rules for virtguard: `virtguard.rules.yaml` (one file, grouped by component),
their promtool unit tests in `tests/` (for every alert a case where it fires and one where it
stays silent), and one runbook per alert in `../runbooks/<AlertName>.md`.

- Check and test: `promtool check rules alerts/*.rules.yaml` and
  `promtool test rules alerts/tests/*.test.yaml`; `cargo test -p virtguard-e2e --test alerts`
  runs both, the offline consistency checks (runbooks, metric names against the exporter's
  catalogue) and an end-to-end test against a real Prometheus.
- Kubernetes: `deploy/prometheusrule.yaml` is generated from the rules; after changing them run
  `cargo run -p virtguard-e2e --bin gen-prometheusrule` (add `-- --runbook-base URL` to point
  `runbook_url` at your own copy of the runbooks).

";

fn run(args: &Args) -> Result<bool, String> {
    let mut files = Vec::new();
    let mut rows = Vec::new();
    for path in rule_files(&args.root)? {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        rows.extend(parse_rules(&path, &text)?);
        files.push((path, text));
    }
    let manifest = render_prometheusrule(&files, &args.runbook_base)?;
    if args.stdout {
        print!("{manifest}");
        return Ok(true);
    }

    // (path, wanted content)
    let mut outputs: Vec<(PathBuf, String)> =
        vec![(args.root.join("deploy/prometheusrule.yaml"), manifest)];
    let alerts_readme = args.root.join("alerts/README.md");
    let current = std::fs::read_to_string(&alerts_readme).unwrap_or_default();
    let table = render_table(&rows, "../runbooks");
    let wanted = splice_table(&current, &table)
        .unwrap_or_else(|| format!("{ALERTS_README_HEAD}{TABLE_BEGIN}\n{table}{TABLE_END}\n"));
    outputs.push((alerts_readme, wanted));
    let readme = args.root.join("README.md");
    if let Ok(current) = std::fs::read_to_string(&readme) {
        if let Some(wanted) = splice_table(&current, &render_table(&rows, "runbooks")) {
            outputs.push((readme, wanted));
        }
    }

    let mut fresh = true;
    for (path, wanted) in outputs {
        let current = std::fs::read_to_string(&path).ok();
        if current.as_deref() == Some(wanted.as_str()) {
            continue;
        }
        if args.check {
            eprintln!(
                "{} is stale: regenerate it with `cargo run -p virtguard-e2e --bin gen-prometheusrule`",
                path.display()
            );
            fresh = false;
        } else {
            std::fs::write(&path, wanted)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(fresh)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("gen-prometheusrule: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("gen-prometheusrule: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = "# comment\ngroups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n        for: 5m\n        labels:\n          severity: warning\n          component: exporter\n        annotations:\n          summary: S | T\n          runbook_url: https://github.com/virtguard/virtguard/blob/main/runbooks/A.md\n";

    #[test]
    fn renders_groups_under_spec_and_rewrites_runbook_base() {
        let files = vec![(PathBuf::from("a.rules.yaml"), RULES.to_string())];
        let out = render_prometheusrule(&files, "https://wiki.example/rb").unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
        assert_eq!(v["kind"], "PrometheusRule");
        let rule = &v["spec"]["groups"][0]["rules"][0];
        assert_eq!(rule["alert"], "A");
        assert_eq!(
            rule["annotations"]["runbook_url"],
            "https://wiki.example/rb/A.md"
        );
        assert!(!out.contains("github.com"));
    }

    #[test]
    fn refuses_other_top_level_keys() {
        let bad = format!("{RULES}extra: 1\n");
        assert!(parse_rules(Path::new("x"), &bad).is_err());
        assert!(groups_block(Path::new("x"), &bad).is_err());
        assert!(parse_rules(Path::new("x"), "groups: 3\n").is_err());
    }

    #[test]
    fn table_escapes_pipes_and_links_runbooks() {
        let rows = parse_rules(Path::new("x"), RULES).unwrap();
        let t = render_table(&rows, "runbooks");
        assert!(t.contains("| [`A`](runbooks/A.md) | warning | exporter | 5m | S \\| T |"));
    }

    #[test]
    fn splice_replaces_only_between_markers() {
        let doc = format!("head\n{TABLE_BEGIN}\nold\n{TABLE_END}\ntail\n");
        let out = splice_table(&doc, "new\n").unwrap();
        assert_eq!(
            out,
            format!("head\n{TABLE_BEGIN}\nnew\n{TABLE_END}\ntail\n")
        );
        assert!(splice_table("no markers", "x").is_none());
    }
}
