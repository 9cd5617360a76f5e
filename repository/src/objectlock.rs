//! S3 Object Lock: the retention policy a repository records at `init --object-lock`, and what
//! the stores do with it.
//!
//! Invariant: with a policy, every object the repository writes (chunks, indexes, resources,
//! manifests, key objects, config.json) is written with that retention mode and a
//! retain-until date of *now + period*, except the short-lived bookkeeping objects under
//! `locks/` and `maintenance/` ([`exempt`]), which must stay deletable and rewritable. Deleting
//! an object whose current version is retained fails with [`Error::Retained`] (checked before
//! the request; the server's refusal maps to the same error), so `prune` and `gc` can skip it
//! and say when it frees. Deleting an unretained object removes every version of it (a plain
//! DELETE in a versioned bucket would only add a delete marker and free nothing).
//!
//! A chunk a new backup finds present (HEAD) gets its retention extended to now + period when
//! less than 3/4 of the period is left (one PutObjectRetention per chunk per quarter period at
//! most). Chunks a backup knows from its parent's index are covered by [`seal_manifest`] when
//! the manifest is written: every chunk a manifest references stays retained at least half a
//! period beyond the manifest's write.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The Object Lock retention mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// Nobody, not even the root account, can delete or shorten before the date.
    Compliance,
    /// Users with `s3:BypassGovernanceRetention` can.
    Governance,
}

impl LockMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            LockMode::Compliance => "COMPLIANCE",
            LockMode::Governance => "GOVERNANCE",
        }
    }

    /// Parses `compliance` / `governance` (any case).
    pub fn parse(s: &str) -> Result<LockMode> {
        match s.to_ascii_lowercase().as_str() {
            "compliance" => Ok(LockMode::Compliance),
            "governance" => Ok(LockMode::Governance),
            _ => Err(Error::Invalid(format!(
                "object lock mode `{s}`: expected compliance or governance"
            ))),
        }
    }
}

/// `object_lock` in config.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectLockPolicy {
    pub mode: LockMode,
    /// Retention of each written object, in seconds (`--object-lock DAYS` × 86400).
    pub period_seconds: u64,
}

impl ObjectLockPolicy {
    /// The retention of an object written now.
    pub fn retention_from(&self, now: DateTime<Utc>) -> Retention {
        Retention {
            mode: self.mode,
            until: now + chrono::Duration::seconds(self.period_seconds.min(i64::MAX as u64) as i64),
        }
    }

    /// A present chunk whose retention ends sooner than this from now is extended to a full
    /// period (3/4 of the period): at most one extension per chunk per quarter period.
    pub fn extend_below(&self) -> chrono::Duration {
        chrono::Duration::seconds((self.period_seconds / 4 * 3).min(i64::MAX as u64) as i64)
    }

    /// What every chunk of a newly written manifest keeps at least: half the period.
    pub fn chunk_lead(&self) -> chrono::Duration {
        chrono::Duration::seconds((self.period_seconds / 2).min(i64::MAX as u64) as i64)
    }

    /// Human form: `compliance, 30 days`.
    pub fn describe(&self) -> String {
        let mode = match self.mode {
            LockMode::Compliance => "compliance",
            LockMode::Governance => "governance",
        };
        if self.period_seconds % 86_400 == 0 {
            format!("{mode}, {} days", self.period_seconds / 86_400)
        } else {
            format!("{mode}, {} s", self.period_seconds)
        }
    }
}

/// The retention of one object version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Retention {
    pub mode: LockMode,
    pub until: DateTime<Utc>,
}

impl Retention {
    /// Whether it still protects the object at `now`.
    pub fn active(&self, now: DateTime<Utc>) -> bool {
        self.until > now
    }
}

/// Keys written without retention: lock objects and the maintenance state, rewritten and
/// deleted as a matter of course.
pub fn exempt(key: &str) -> bool {
    key.starts_with("locks/") || key.starts_with("maintenance/")
}

/// Parses `--object-lock`: whole days (`30`), or a duration with a unit (`12h`, `90s`; for tests
/// and short trials).
pub fn parse_period(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let secs = if let Ok(days) = s.parse::<u64>() {
        days.checked_mul(86_400)
    } else {
        let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a number of days (e.g. 30) or a duration (12h)"))?;
        let mult = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(format!("`{s}`: unit must be s, m, h or d (or plain days)")),
        };
        n.checked_mul(mult)
    };
    match secs {
        Some(0) => Err("an object lock of 0 protects nothing; leave --object-lock out".into()),
        Some(n) => Ok(n),
        None => Err(format!("`{s}` is too long")),
    }
}

/// Manifest label: every chunk the backup references is retained at least until this date
/// (RFC 3339), as far as [`seal_manifest`] made sure.
pub const CHUNKS_RETAINED_LABEL: &str = "virtguard.io/chunks-retained-until";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_modes_and_exemptions() {
        assert_eq!(parse_period("30"), Ok(30 * 86_400));
        assert_eq!(parse_period("12h"), Ok(12 * 3600));
        assert_eq!(parse_period("5s"), Ok(5));
        assert!(parse_period("0").is_err());
        assert!(parse_period("3w").is_err());
        assert_eq!(LockMode::parse("GOVERNANCE").unwrap(), LockMode::Governance);
        assert!(LockMode::parse("legal").is_err());
        assert!(exempt("locks/x.json") && exempt("maintenance/state.json"));
        assert!(!exempt("chunks/00/aa") && !exempt("config.json"));
        let p = ObjectLockPolicy {
            mode: LockMode::Compliance,
            period_seconds: 2 * 86_400,
        };
        assert_eq!(p.describe(), "compliance, 2 days");
        let now = Utc::now();
        let r = p.retention_from(now);
        assert!(r.active(now) && !r.active(now + chrono::Duration::days(3)));
    }
}
