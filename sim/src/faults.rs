//! Fault injection: rules that make a chosen call or object misbehave.
//!
//! A rule names an operation (`op`), optionally a target `namespace/name` (with `*` globs),
//! and for call faults which matching call fails (`call: 2` = only the 2nd; `times: N` = the
//! first N; neither = every call). Operations:
//!
//! | op | effect |
//! |---|---|
//! | `<verb> <plural>` e.g. `create volumesnapshots`, `get virtualmachines` | the REST call returns `status` (default 500) with `message` |
//! | `freeze`, `unfreeze`, `pause`, `unpause`, `start`, `stop`, `guestosinfo`, `filesystemlist` | the KubeVirt subresource call returns `status` |
//! | `snapshot-never-ready` | the VolumeSnapshot (target = its name or its source PVC) gets `creationTime` but never `readyToUse` |
//! | `snapshot-no-creation-time` | the VolumeSnapshot never even gets `creationTime` |
//! | `snapshot-error` | the VolumeSnapshot gets `status.error` with `message` |
//! | `group-snapshot-error` | the VolumeGroupSnapshot (target = its name or one of its PVCs) and its content get `status.error` with `message` |
//! | `group-snapshot-no-creation-time` | the VolumeGroupSnapshot is bound but never cut (no `creationTime`, no members) |
//! | `group-snapshot-never-ready` | the VolumeGroupSnapshot and its members get `creationTime` but never `readyToUse` |
//! | `export-never-ready` | the VirtualMachineExport (target = its name) stays `Pending` |
//! | `export-drop-after` | downloads from that export stop after `bytes` bytes (connection dropped); `call`/`times` count downloads |
//! | `upload-fail` | the CDI upload proxy answers `status` for that PVC |

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::status::ApiError;

/// One fault rule (also the scenario file's `faults:` entries).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultRule {
    pub op: String,
    /// `namespace/name`, `*` matches any run of characters. None = any object.
    #[serde(default)]
    pub target: Option<String>,
    /// Only this matching call fails (1-based).
    #[serde(default)]
    pub call: Option<u32>,
    /// The first `times` matching calls fail.
    #[serde(default)]
    pub times: Option<u32>,
    /// HTTP status for call faults (default 500).
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub message: Option<String>,
    /// For `export-drop-after`.
    #[serde(default)]
    pub bytes: Option<u64>,
}

/// Glob match with `*` only.
pub fn glob(pat: &str, s: &str) -> bool {
    match pat.split_once('*') {
        None => pat == s,
        Some((pre, rest)) => {
            if !s.starts_with(pre) {
                return false;
            }
            let s = &s[pre.len()..];
            (0..=s.len()).any(|i| s.is_char_boundary(i) && glob(rest, &s[i..]))
        }
    }
}

impl FaultRule {
    fn targets(&self, ns: &str, names: &[&str]) -> bool {
        match &self.target {
            None => true,
            Some(t) => names.iter().any(|n| glob(t, &format!("{ns}/{n}"))),
        }
    }

    fn error(&self) -> ApiError {
        let code = self.status.unwrap_or(500);
        let reason = match code {
            400 => "BadRequest",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            410 => "Gone",
            422 => "Invalid",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        ApiError::new(
            code,
            reason,
            self.message
                .clone()
                .unwrap_or_else(|| format!("injected fault ({})", self.op)),
        )
    }
}

/// The active rules with their per-rule call counters.
#[derive(Debug, Default)]
pub struct Faults {
    rules: Mutex<Vec<(FaultRule, u32)>>,
}

impl Faults {
    pub fn new(rules: Vec<FaultRule>) -> Self {
        Faults {
            rules: Mutex::new(rules.into_iter().map(|r| (r, 0)).collect()),
        }
    }

    pub fn add(&self, rule: FaultRule) {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((rule, 0));
    }

    pub fn clear(&self) {
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// A call fault: counts the call against every matching rule; returns the error to answer
    /// with if one fires.
    pub fn call(&self, op: &str, ns: &str, name: &str) -> Option<ApiError> {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let mut fired = None;
        for (rule, count) in rules.iter_mut() {
            if rule.op != op || !rule.targets(ns, &[name]) {
                continue;
            }
            *count += 1;
            let fires = match (rule.call, rule.times) {
                (Some(n), _) => *count == n,
                (None, Some(t)) => *count <= t,
                (None, None) => true,
            };
            if fires && fired.is_none() {
                fired = Some(rule.error());
            }
        }
        fired
    }

    /// REST calls: op is `<verb> <plural>`.
    pub fn api_call(&self, verb: &str, plural: &str, ns: &str, name: &str) -> Option<ApiError> {
        self.call(&format!("{verb} {plural}"), ns, name)
    }

    /// A counted object fault (e.g. one download of an export): like [`Faults::object`], but the
    /// event counts against the rule, which then honours `call` / `times` like a call fault.
    pub fn object_event(&self, op: &str, ns: &str, names: &[&str]) -> Option<FaultRule> {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let mut fired = None;
        for (rule, count) in rules.iter_mut() {
            if rule.op != op || !rule.targets(ns, names) {
                continue;
            }
            *count += 1;
            let fires = match (rule.call, rule.times) {
                (Some(n), _) => *count == n,
                (None, Some(t)) => *count <= t,
                (None, None) => true,
            };
            if fires && fired.is_none() {
                fired = Some(rule.clone());
            }
        }
        fired
    }

    /// An object fault: the first rule with `op` targeting any of `names` in `ns`.
    pub fn object(&self, op: &str, ns: &str, names: &[&str]) -> Option<FaultRule> {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(r, _)| r.op == op && r.targets(ns, names))
            .map(|(r, _)| r.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("ns/*", "ns/a"));
        assert!(glob("*/vm-*-disk", "x/vm-1-disk"));
        assert!(!glob("ns/a", "ns/ab"));
    }

    #[test]
    fn nth_call_fires_once() {
        let f = Faults::new(vec![FaultRule {
            op: "freeze".into(),
            call: Some(2),
            ..Default::default()
        }]);
        assert!(f.call("freeze", "ns", "vm").is_none());
        assert_eq!(f.call("freeze", "ns", "vm").map(|e| e.code), Some(500));
        assert!(f.call("freeze", "ns", "vm").is_none());
    }
}
