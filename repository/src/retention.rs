//! Retention policies: which of one VM's backups `prune` keeps, and why.
//!
//! A policy is a set of `keep` rules written `last=3,daily=7,weekly=4,monthly=6` (the form of the
//! `virtguard.io/retention` annotation and of `--policy`; `hourly` too). Evaluation is per VM,
//! newest first: `last=N` keeps the N newest; each period rule keeps the newest backup of each of
//! the N most recent periods (hour, day, ISO week, month; UTC) that have a backup.
//!
//! Invariants:
//! - A backup is removed only when no rule keeps it, and every kept backup carries the reasons
//!   that kept it (what `prune --dry-run` prints, like `restic forget --dry-run`).
//! - A backup whose id has no readable time is kept.
//! - The newest application-consistent backup inside the window the rules keep (from the oldest
//!   kept backup to the newest) is kept when none of the kept ones is application-consistent, with
//!   its own reason: crash-consistent copies alone never silently replace the last consistent
//!   restore point.
//! - Parsing refuses anything but known rules with positive counts, naming the column.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Utc};
use serde::Serialize;

use crate::format::BackupId;

/// How many backups to keep per VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: usize,
    pub hourly: usize,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
}

/// The periods of the period rules, in the order they are evaluated and printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Hourly,
    Daily,
    Weekly,
    Monthly,
}

impl Period {
    const ALL: [Period; 4] = [
        Period::Hourly,
        Period::Daily,
        Period::Weekly,
        Period::Monthly,
    ];

    fn name(self) -> &'static str {
        match self {
            Period::Hourly => "hourly",
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
        }
    }

    /// The period a time falls in, as it is printed (`2026-12-07T05h`, `2026-12-07`,
    /// `2026-W49`, `2026-12`).
    fn bucket(self, t: DateTime<Utc>) -> String {
        match self {
            Period::Hourly => t.format("%Y-%m-%dT%Hh").to_string(),
            Period::Daily => t.format("%Y-%m-%d").to_string(),
            Period::Weekly => {
                let w = t.iso_week();
                format!("{}-W{:02}", w.year(), w.week())
            }
            Period::Monthly => format!("{}-{:02}", t.year(), t.month()),
        }
    }
}

impl KeepPolicy {
    /// Whether no rule is set (prune refuses to delete everything by accident).
    pub fn is_empty(&self) -> bool {
        *self == KeepPolicy::default()
    }

    fn count(&self, p: Period) -> usize {
        match p {
            Period::Hourly => self.hourly,
            Period::Daily => self.daily,
            Period::Weekly => self.weekly,
            Period::Monthly => self.monthly,
        }
    }

    fn count_mut(&mut self, rule: &str) -> Option<&mut usize> {
        Some(match rule {
            "last" => &mut self.last,
            "hourly" => &mut self.hourly,
            "daily" => &mut self.daily,
            "weekly" => &mut self.weekly,
            "monthly" => &mut self.monthly,
            _ => return None,
        })
    }
}

impl fmt::Display for KeepPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.last > 0 {
            parts.push(format!("last={}", self.last));
        }
        for p in Period::ALL {
            if self.count(p) > 0 {
                parts.push(format!("{}={}", p.name(), self.count(p)));
            }
        }
        f.write_str(&parts.join(","))
    }
}

/// A policy string that is not one: where (1-based column) and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("retention policy `{input}`: column {column}: {problem} (expected e.g. `last=3,daily=7,weekly=4,monthly=6`; rules: last, hourly, daily, weekly, monthly)")]
pub struct PolicyError {
    pub input: String,
    pub column: usize,
    pub problem: String,
}

impl FromStr for KeepPolicy {
    type Err = PolicyError;

    fn from_str(input: &str) -> Result<Self, PolicyError> {
        let err = |at: usize, problem: String| PolicyError {
            input: input.to_string(),
            column: input[..at].chars().count() + 1,
            problem,
        };
        let mut policy = KeepPolicy::default();
        let mut seen = HashSet::new();
        let mut start = 0;
        for part in input.split(',') {
            let lead = part.len() - part.trim_start().len();
            let at = start + lead;
            let item = part.trim();
            start += part.len() + 1;
            if item.is_empty() {
                return Err(err(at, "empty rule".into()));
            }
            let Some((rule, count)) = item.split_once('=') else {
                return Err(err(at, format!("`{item}` has no `=COUNT`")));
            };
            let rule = rule.trim_end();
            let count_at = at + item.find('=').unwrap_or(0) + 1;
            let Some(slot) = policy.count_mut(rule) else {
                return Err(err(at, format!("unknown rule `{rule}`")));
            };
            if !seen.insert(rule.to_string()) {
                return Err(err(at, format!("rule `{rule}` given twice")));
            }
            let count_text = count.trim();
            let count_at = count_at + (count.len() - count.trim_start().len());
            match count_text.parse::<usize>() {
                Ok(0) => {
                    return Err(err(
                        count_at,
                        format!("`{rule}=0` keeps nothing; leave the rule out"),
                    ))
                }
                Ok(n) => *slot = n,
                Err(_) => {
                    return Err(err(
                        count_at,
                        format!("`{count_text}` is not a positive whole number"),
                    ))
                }
            }
        }
        Ok(policy)
    }
}

/// Why a backup is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "rule", rename_all = "kebab-case")]
pub enum KeepReason {
    /// The `rank`-th newest (1-based) of the `last=` rule.
    Last { rank: usize },
    /// The newest backup of `bucket`, the `rank`-th period of the rule.
    Period {
        period: Period,
        bucket: String,
        rank: usize,
    },
    /// The id has no readable time: never removed by rules that cannot place it.
    UnknownTime,
    /// The newest application-consistent backup in the kept window, kept because no backup the
    /// rules keep is application-consistent.
    LastApplicationConsistent,
    /// The VM has no usable policy (its own is broken): nothing of it is removed.
    NoUsablePolicy,
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::Last { rank } => write!(f, "last #{rank}"),
            KeepReason::Period {
                period,
                bucket,
                rank,
            } => write!(f, "{} #{rank} ({bucket})", period.name()),
            KeepReason::UnknownTime => f.write_str("id has no time"),
            KeepReason::LastApplicationConsistent => f.write_str(
                "newest application-consistent backup in the window (the rules keep none)",
            ),
            KeepReason::NoUsablePolicy => f.write_str("no usable policy: everything is kept"),
        }
    }
}

/// One backup as retention sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: BackupId,
    /// Whether its filesystems were clean: the guest's were frozen (`application-consistent`),
    /// or the VM was stopped (`offline`).
    pub application_consistent: bool,
}

/// The verdict on one backup: kept (with every reason) or removed (no reason).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: BackupId,
    pub reasons: Vec<KeepReason>,
}

impl Decision {
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// Every backup kept with [`KeepReason::NoUsablePolicy`], newest first.
pub fn keep_all(ids: impl IntoIterator<Item = BackupId>) -> Vec<Decision> {
    let mut ids: Vec<BackupId> = ids.into_iter().collect();
    ids.sort_by(|a, b| b.cmp(a));
    ids.into_iter()
        .map(|id| Decision {
            id,
            reasons: vec![KeepReason::NoUsablePolicy],
        })
        .collect()
}

/// Applies `policy` to one VM's backups; the result is newest first.
pub fn decide(candidates: &[Candidate], policy: &KeepPolicy) -> Vec<Decision> {
    let mut sorted: Vec<&Candidate> = candidates.iter().collect();
    sorted.sort_by(|a, b| b.id.cmp(&a.id));
    let mut out: Vec<Decision> = sorted
        .iter()
        .map(|c| Decision {
            id: c.id.clone(),
            reasons: Vec::new(),
        })
        .collect();
    for (i, d) in out.iter_mut().enumerate() {
        if i < policy.last {
            d.reasons.push(KeepReason::Last { rank: i + 1 });
        }
        if d.id.time().is_none() {
            d.reasons.push(KeepReason::UnknownTime);
        }
    }
    for period in Period::ALL {
        let n = policy.count(period);
        let mut seen: Vec<String> = Vec::new();
        for d in out.iter_mut() {
            if seen.len() >= n {
                break;
            }
            if let Some(t) = d.id.time() {
                let bucket = period.bucket(t);
                if !seen.contains(&bucket) {
                    seen.push(bucket.clone());
                    d.reasons.push(KeepReason::Period {
                        period,
                        bucket,
                        rank: seen.len(),
                    });
                }
            }
        }
    }
    protect_last_consistent(&sorted, &mut out);
    out
}

/// The application-consistent guard of the module page.
fn protect_last_consistent(sorted: &[&Candidate], out: &mut [Decision]) {
    let kept_consistent = sorted
        .iter()
        .zip(out.iter())
        .any(|(c, d)| d.keep() && c.application_consistent);
    if kept_consistent {
        return;
    }
    let Some(window_start) = out
        .iter()
        .filter(|d| d.keep())
        .filter_map(|d| d.id.time())
        .min()
    else {
        return;
    };
    let newest_consistent = sorted
        .iter()
        .zip(out.iter_mut())
        .find(|(c, d)| c.application_consistent && d.id.time().is_some_and(|t| t >= window_start));
    if let Some((_, d)) = newest_consistent {
        d.reasons.push(KeepReason::LastApplicationConsistent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(t: &str, consistent: bool) -> Candidate {
        Candidate {
            id: BackupId::at(t.parse().unwrap(), 0),
            application_consistent: consistent,
        }
    }

    #[test]
    fn parses_every_rule_and_prints_it_back() {
        let p: KeepPolicy = "last=3, daily=7,weekly=4 ,monthly=6,hourly=24"
            .parse()
            .unwrap();
        assert_eq!(
            p,
            KeepPolicy {
                last: 3,
                hourly: 24,
                daily: 7,
                weekly: 4,
                monthly: 6
            }
        );
        assert_eq!(p.to_string(), "last=3,hourly=24,daily=7,weekly=4,monthly=6");
        assert_eq!(p.to_string().parse::<KeepPolicy>().unwrap(), p);
    }

    #[test]
    fn refuses_bad_policies_naming_the_column() {
        let cases = [
            ("last=3,dayly=7", 8, "unknown rule `dayly`"),
            ("last=3,,daily=1", 8, "empty rule"),
            ("last=x", 6, "`x` is not a positive whole number"),
            ("last=-1", 6, "`-1` is not a positive whole number"),
            ("daily=0", 7, "`daily=0` keeps nothing"),
            ("last", 1, "`last` has no `=COUNT`"),
            ("last=1,last=2", 8, "rule `last` given twice"),
            ("", 1, "empty rule"),
            (
                "daily= 7,weekly=é",
                17,
                "`é` is not a positive whole number",
            ),
        ];
        for (input, column, problem) in cases {
            let e = input.parse::<KeepPolicy>().unwrap_err();
            assert_eq!(e.column, column, "{input}: {e}");
            assert!(e.problem.starts_with(problem), "{input}: {e}");
            let msg = e.to_string();
            assert!(msg.contains(&format!("column {column}")), "{msg}");
            assert!(msg.contains("expected e.g."), "{msg}");
        }
    }

    #[test]
    fn every_kept_backup_says_which_rules_keep_it() {
        let c = [
            cand("2026-12-07T05:00:00Z", true),
            cand("2026-12-07T01:00:00Z", true),
            cand("2026-12-06T23:00:00Z", true),
            cand("2026-11-30T12:00:00Z", true),
        ];
        let policy: KeepPolicy = "last=1,daily=2,monthly=2".parse().unwrap();
        let d = decide(&c, &policy);
        assert_eq!(d[0].id, c[0].id, "newest first");
        assert_eq!(
            d[0].reasons,
            vec![
                KeepReason::Last { rank: 1 },
                KeepReason::Period {
                    period: Period::Daily,
                    bucket: "2026-12-07".into(),
                    rank: 1
                },
                KeepReason::Period {
                    period: Period::Monthly,
                    bucket: "2026-12".into(),
                    rank: 1
                },
            ]
        );
        assert!(!d[1].keep(), "same day and month as a newer one");
        assert_eq!(
            d[2].reasons,
            vec![KeepReason::Period {
                period: Period::Daily,
                bucket: "2026-12-06".into(),
                rank: 2
            }]
        );
        assert_eq!(
            d[3].reasons,
            vec![KeepReason::Period {
                period: Period::Monthly,
                bucket: "2026-11".into(),
                rank: 2
            }]
        );
        assert_eq!(d[3].reasons[0].to_string(), "monthly #2 (2026-11)");
    }

    #[test]
    fn the_last_application_consistent_backup_in_the_window_is_kept_and_said() {
        // Three crash-consistent backups (agent gone) after a consistent one: last=3 alone would
        // keep only crash-consistent copies.
        let c = [
            cand("2026-12-07T03:00:00Z", false),
            cand("2026-12-07T02:00:00Z", false),
            cand("2026-12-07T01:00:00Z", false),
            cand("2026-12-07T00:30:00Z", true),
            cand("2026-12-06T00:30:00Z", false),
        ];
        let d = decide(&c, &"last=3".parse().unwrap());
        let kept: Vec<_> = d
            .iter()
            .filter(|d| d.keep())
            .map(|d| d.id.clone())
            .collect();
        assert_eq!(
            kept,
            vec![c[0].id.clone(), c[1].id.clone(), c[2].id.clone()]
        );
        // Outside the window (older than everything kept): not kept. With daily=2 the window
        // reaches back to 2026-12-06: the newest consistent one inside it is kept, with its reason.
        let d = decide(&c, &"last=3,daily=2".parse().unwrap());
        assert_eq!(d[3].reasons, vec![KeepReason::LastApplicationConsistent]);
        assert!(d[4].keep(), "daily #2");
        assert!(!d[4]
            .reasons
            .contains(&KeepReason::LastApplicationConsistent));
    }

    #[test]
    fn a_consistent_backup_already_kept_needs_no_guard() {
        let c = [
            cand("2026-12-07T03:00:00Z", false),
            cand("2026-12-07T02:00:00Z", true),
            cand("2026-12-07T01:00:00Z", true),
        ];
        let d = decide(&c, &"last=2".parse().unwrap());
        assert!(d[1].keep() && !d[2].keep());
        assert!(d
            .iter()
            .all(|d| !d.reasons.contains(&KeepReason::LastApplicationConsistent)));
    }
}
