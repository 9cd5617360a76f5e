//! `virtguard prune`: retention with one policy for every VM (`--keep-*`) or each VM's own
//! (`--policy`: the `virtguard.io/retention` annotation on the VM, else on its namespace, else the
//! flags, else the default), and a dry run that says what each rule keeps and why.
//!
//! Invariant: with `--policy`, the policy of every VM in the repository is resolved from the
//! cluster before anything is deleted; a cluster that cannot be read stops the prune before any
//! deletion, and a VM whose policy is broken (or that only appears after resolution) keeps every
//! backup.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::json;

use super::util::client;
use super::{KeepArgs, Output, PruneArgs};
use crate::cluster::retention::{PolicyResolver, PolicySource, ResolvedPolicy};
use crate::error::{Error, Result};
use crate::repo::prune::{self, KeepPolicy, PruneReport};
use crate::repo::Repository;

impl KeepArgs {
    /// The `--keep-*` flags as a policy (empty when none is given).
    pub(super) fn policy(&self) -> KeepPolicy {
        KeepPolicy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
        }
    }
}

impl PruneArgs {
    fn flags(&self) -> KeepPolicy {
        self.keep.policy()
    }
}

/// Runs `prune` over `namespace`/`vm` (either may be unset: all).
pub async fn prune(
    repo: Arc<Repository>,
    a: PruneArgs,
    namespace: Option<String>,
    vm: Option<String>,
) -> Result<()> {
    let (report, resolved) = run(
        &repo,
        a.policy,
        a.flags(),
        namespace.as_deref(),
        vm.as_deref(),
        a.dry_run,
    )
    .await?;
    match a.output {
        Output::Json => print_json(&report, &resolved, a.dry_run),
        Output::Table => print_table(&report, &resolved, a.dry_run),
    }
    Ok(())
}

/// Each VM's resolved policy (empty when one policy applies to all).
pub(super) type Resolved = BTreeMap<(String, String), ResolvedPolicy>;

/// Prunes with each VM's policy (`per_vm`) or `flags` for all; `flags` must not be empty then.
pub(super) async fn run(
    repo: &Arc<Repository>,
    per_vm: bool,
    flags: KeepPolicy,
    ns: Option<&str>,
    vm: Option<&str>,
    dry_run: bool,
) -> Result<(PruneReport, Resolved)> {
    if per_vm {
        let resolved = resolve(repo, flags, ns, vm).await?;
        let policies: HashMap<(String, String), Option<KeepPolicy>> = resolved
            .iter()
            .map(|(k, r)| (k.clone(), r.policy.clone()))
            .collect();
        let policy_of =
            |ns: &str, vm: &str| policies.get(&(ns.into(), vm.into())).cloned().flatten();
        let report = prune::prune_by(repo, &policy_of, ns, vm, dry_run).await?;
        Ok((report, resolved))
    } else {
        let report = prune::prune(repo, &flags, ns, vm, dry_run).await?;
        Ok((report, BTreeMap::new()))
    }
}

/// Each VM's policy, read from the cluster; warnings (broken annotations) go to stderr.
async fn resolve(
    repo: &Repository,
    flags: KeepPolicy,
    namespace: Option<&str>,
    vm: Option<&str>,
) -> Result<Resolved> {
    let client = client().await?;
    let mut resolver = PolicyResolver::new(client, (!flags.is_empty()).then_some(flags));
    let mut out = BTreeMap::new();
    for b in repo.list_backups(namespace, vm).await? {
        let key = (b.namespace, b.vm);
        if out.contains_key(&key) {
            continue;
        }
        let r = resolver
            .resolve(&key.0, &key.1)
            .await
            .map_err(Error::Cluster)?;
        if let Some(w) = &r.warning {
            eprintln!("warning: VM {}/{}: {w}", key.0, key.1);
        }
        out.insert(key, r);
    }
    Ok(out)
}

fn source_of(resolved: &Resolved, ns: &str, vm: &str) -> String {
    match resolved.get(&(ns.to_string(), vm.to_string())) {
        Some(r) => r.source.to_string(),
        None if resolved.is_empty() => PolicySource::Flags.to_string(),
        None => "none (no backups when policies were read)".to_string(),
    }
}

pub(super) fn print_table(report: &PruneReport, resolved: &Resolved, dry_run: bool) {
    let verb = if dry_run { "would remove" } else { "removed" };
    for plan in &report.plans {
        let policy = plan
            .policy
            .as_ref()
            .map_or_else(|| "none".to_string(), |p| p.to_string());
        println!(
            "{}/{}: policy {policy} ({})",
            plan.namespace,
            plan.vm,
            source_of(resolved, &plan.namespace, &plan.vm)
        );
        for d in &plan.decisions {
            let locked = report
                .locked
                .iter()
                .find(|(b, _)| b.id == d.id && b.namespace == plan.namespace && b.vm == plan.vm);
            if d.keep() {
                let why: Vec<String> = d.reasons.iter().map(|r| r.to_string()).collect();
                println!("  keep    {}  {}", d.id.as_str(), why.join(", "));
            } else if let Some((_, until)) = locked {
                println!(
                    "  locked  {}  under S3 Object Lock until {until}: not removed; a prune after that date removes it",
                    d.id.as_str()
                );
            } else {
                println!("  {verb:<7} {}", d.id.as_str());
            }
        }
    }
    if !report.locked.is_empty() {
        println!(
            "{} backup(s) the rules remove are under S3 Object Lock and were kept",
            report.locked.len()
        );
    }
    println!(
        "{verb} {} backups, kept {}{}",
        report.removed.len(),
        report.kept.len(),
        if dry_run {
            ""
        } else {
            "; run `virtguard gc` to free their chunks"
        }
    );
}

pub(super) fn print_json(report: &PruneReport, resolved: &Resolved, dry_run: bool) {
    let vms: Vec<_> = report
        .plans
        .iter()
        .map(|plan| {
            let r = resolved.get(&(plan.namespace.clone(), plan.vm.clone()));
            json!({
                "namespace": plan.namespace,
                "vm": plan.vm,
                "policy": plan.policy.as_ref().map(|p| p.to_string()),
                "source": r.map_or(PolicySource::Flags, |r| r.source.clone()),
                "warning": r.and_then(|r| r.warning.clone()),
                "backups": plan.decisions.iter().map(|d| json!({
                    "id": d.id.as_str(),
                    "keep": d.keep(),
                    "reasons": d.reasons,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let out = json!({
        "dryRun": dry_run,
        "removed": report.removed.len(),
        "kept": report.kept.len(),
        "locked": report.locked.iter().map(|(b, until)| json!({
            "backup": b.to_string(),
            "retainUntil": until,
        })).collect::<Vec<_>>(),
        "vms": vms,
    });
    println!("{out:#}");
}
