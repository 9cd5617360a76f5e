//! How consistent a backup's disk images are: the one definition used by the repository
//! manifest, the backup status record, `virtguard list`/`show`/`restore`, the backup summary and
//! the exporter.
//!
//! A backup is one of four kinds ([`ConsistencyKind`]):
//!
//! | kind | when | what a restore boots from |
//! |---|---|---|
//! | `application-consistent` | Running, guest agent connected, filesystems frozen while the snapshots were cut | clean filesystems, flushed application data |
//! | `crash-consistent` | Running, not frozen (no agent, or the freeze failed) | like after a power cut: journals replay |
//! | `paused` | the VM was paused: no I/O in flight, but nothing flushed either | like a power cut at the moment of the pause |
//! | `offline` | the VM was stopped: its disks were not in use | exactly what the guest left at shutdown |
//!
//! When a freeze was attempted (Running with an agent) and did not happen, the backup is
//! crash-consistent and says why: a [`FreezeFailure`], a small fixed set (it becomes a metric
//! label, so never free text).
//!
//! Invariants: a [`FreezeFailure`] exists only on a crash-consistent backup ([`Consistency`] cannot
//! express anything else), and a value has exactly one wire form, the kind as a kebab-case
//! string under the key `consistency` and the reason, when there is one, under a sibling key
//! (`freeze_failure` in the manifest, [`snake_case_fields`]; `freezeFailure` in the status
//! record, [`camel_case_optional_fields`]). The strings are stored in repositories and ConfigMaps:
//! never change what one means; new kinds or reasons may only be added.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The four kinds of consistency (the `consistency` string of every wire form).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConsistencyKind {
    /// The guest agent froze the filesystems while the snapshots were cut.
    ApplicationConsistent,
    /// Running and not frozen: like pulling the power plug.
    CrashConsistent,
    /// The VM was paused: no I/O in flight, but no filesystem flush either.
    Paused,
    /// The VM was stopped: disks not in use.
    Offline,
}

impl ConsistencyKind {
    /// Every kind, in the order of the table above.
    pub const ALL: [ConsistencyKind; 4] = [
        ConsistencyKind::ApplicationConsistent,
        ConsistencyKind::CrashConsistent,
        ConsistencyKind::Paused,
        ConsistencyKind::Offline,
    ];

    /// The wire string (`application-consistent`, `crash-consistent`, `paused`, `offline`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ConsistencyKind::ApplicationConsistent => "application-consistent",
            ConsistencyKind::CrashConsistent => "crash-consistent",
            ConsistencyKind::Paused => "paused",
            ConsistencyKind::Offline => "offline",
        }
    }

    /// The kind whose wire string is `s`, if any.
    pub fn parse(s: &str) -> Option<ConsistencyKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for ConsistencyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a freeze that was attempted did not happen (the backup went on crash-consistent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FreezeFailure {
    /// KubeVirt answered the freeze with an error that is neither of the others.
    Refused,
    /// The freeze did not answer in time (our deadline, a gateway timeout, or KubeVirt's own).
    TimedOut,
    /// The VMI reported its guest agent connected when the run looked, but the agent did not
    /// answer the freeze (disconnected since, or not responding).
    AgentDisconnected,
    /// Changed block tracking: KubeVirt's VirtualMachineBackup could not quiesce the guest.
    QuiesceFailed,
}

impl FreezeFailure {
    /// Every reason.
    pub const ALL: [FreezeFailure; 4] = [
        FreezeFailure::Refused,
        FreezeFailure::TimedOut,
        FreezeFailure::AgentDisconnected,
        FreezeFailure::QuiesceFailed,
    ];

    /// The wire string (`refused`, `timed-out`, `agent-disconnected`, `quiesce-failed`).
    pub const fn as_str(self) -> &'static str {
        match self {
            FreezeFailure::Refused => "refused",
            FreezeFailure::TimedOut => "timed-out",
            FreezeFailure::AgentDisconnected => "agent-disconnected",
            FreezeFailure::QuiesceFailed => "quiesce-failed",
        }
    }

    /// A short phrase for people (tables, logs); `crash-consistent (<phrase>)` fits in 37
    /// columns.
    pub const fn describe(self) -> &'static str {
        match self {
            FreezeFailure::Refused => "freeze refused",
            FreezeFailure::TimedOut => "freeze timed out",
            FreezeFailure::AgentDisconnected => "agent disconnected",
            FreezeFailure::QuiesceFailed => "quiesce failed",
        }
    }
}

impl fmt::Display for FreezeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How consistent a backup's disk images are: the kind, and for a crash-consistent backup
/// whose freeze failed, why.
///
/// `CrashConsistent` and `FreezeFailed(_)` are both of kind crash-consistent: compare kinds with
/// [`Consistency::kind`], not with `== Consistency::CrashConsistent`. No serde implementation of
/// its own (a single string would lose the reason): a struct field uses
/// [`snake_case_fields`] or [`camel_case_optional_fields`] with `#[serde(flatten, with = ...)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Consistency {
    /// The guest agent froze the filesystems while the snapshots were cut.
    ApplicationConsistent,
    /// Running without a connected guest agent: no freeze was attempted.
    CrashConsistent,
    /// Running with an agent, but the freeze failed: crash-consistent, for this reason.
    FreezeFailed(FreezeFailure),
    /// The VM was paused: no I/O in flight, but no filesystem flush either.
    Paused,
    /// The VM was stopped: disks not in use.
    Offline,
}

impl Consistency {
    /// The value of a kind and an optional reason as read from a wire form. A reason is kept
    /// only on a crash-consistent kind (nothing else can have one).
    pub fn from_parts(kind: ConsistencyKind, freeze_failure: Option<FreezeFailure>) -> Consistency {
        match (kind, freeze_failure) {
            (ConsistencyKind::ApplicationConsistent, _) => Consistency::ApplicationConsistent,
            (ConsistencyKind::CrashConsistent, None) => Consistency::CrashConsistent,
            (ConsistencyKind::CrashConsistent, Some(f)) => Consistency::FreezeFailed(f),
            (ConsistencyKind::Paused, _) => Consistency::Paused,
            (ConsistencyKind::Offline, _) => Consistency::Offline,
        }
    }

    /// The kind.
    pub const fn kind(self) -> ConsistencyKind {
        match self {
            Consistency::ApplicationConsistent => ConsistencyKind::ApplicationConsistent,
            Consistency::CrashConsistent | Consistency::FreezeFailed(_) => {
                ConsistencyKind::CrashConsistent
            }
            Consistency::Paused => ConsistencyKind::Paused,
            Consistency::Offline => ConsistencyKind::Offline,
        }
    }

    /// Why the attempted freeze failed, for a crash-consistent backup that tried one.
    pub const fn freeze_failure(self) -> Option<FreezeFailure> {
        match self {
            Consistency::FreezeFailed(f) => Some(f),
            _ => None,
        }
    }

    /// True only for [`Consistency::ApplicationConsistent`].
    pub fn is_application_consistent(self) -> bool {
        self == Consistency::ApplicationConsistent
    }
}

/// `crash-consistent (freeze timed out)`, `offline`, ...: the kind, and the reason in words.
impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind().as_str())?;
        match self.freeze_failure() {
            Some(r) => write!(f, " ({})", r.describe()),
            None => Ok(()),
        }
    }
}

/// Wire form with snake_case keys (`consistency`, `freeze_failure`), for a [`Consistency`]
/// field marked `#[serde(flatten, with = "virtguard_model::consistency::snake_case_fields")]`
/// (the repository manifest). `freeze_failure` is left out when there is none.
pub mod snake_case_fields {
    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Fields {
        consistency: ConsistencyKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        freeze_failure: Option<FreezeFailure>,
    }

    /// Writes the two keys.
    pub fn serialize<S: Serializer>(c: &Consistency, s: S) -> Result<S::Ok, S::Error> {
        Fields {
            consistency: c.kind(),
            freeze_failure: c.freeze_failure(),
        }
        .serialize(s)
    }

    /// Reads the two keys (`consistency` is required).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Consistency, D::Error> {
        let f = Fields::deserialize(d)?;
        Ok(Consistency::from_parts(f.consistency, f.freeze_failure))
    }
}

/// Wire form with camelCase keys (`consistency`, `freezeFailure`), both optional, for an
/// `Option<Consistency>` field marked
/// `#[serde(flatten, with = "virtguard_model::consistency::camel_case_optional_fields")]` (the
/// backup status record, which has no consistency before the first success).
pub mod camel_case_optional_fields {
    use super::*;

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Fields {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        consistency: Option<ConsistencyKind>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        freeze_failure: Option<FreezeFailure>,
    }

    /// Writes the keys that have a value.
    pub fn serialize<S: Serializer>(c: &Option<Consistency>, s: S) -> Result<S::Ok, S::Error> {
        Fields {
            consistency: c.map(Consistency::kind),
            freeze_failure: c.and_then(Consistency::freeze_failure),
        }
        .serialize(s)
    }

    /// Reads the keys; no `consistency` gives `None` (a reason alone is ignored).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Consistency>, D::Error> {
        let f = Fields::deserialize(d)?;
        Ok(f.consistency
            .map(|k| Consistency::from_parts(k, f.freeze_failure)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Consistency; 8] = [
        Consistency::ApplicationConsistent,
        Consistency::CrashConsistent,
        Consistency::FreezeFailed(FreezeFailure::Refused),
        Consistency::FreezeFailed(FreezeFailure::TimedOut),
        Consistency::FreezeFailed(FreezeFailure::AgentDisconnected),
        Consistency::FreezeFailed(FreezeFailure::QuiesceFailed),
        Consistency::Paused,
        Consistency::Offline,
    ];

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Snake {
        format_version: u32,
        #[serde(flatten, with = "snake_case_fields")]
        consistency: Consistency,
        tool_version: String,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Camel {
        last_attempt_timestamp: i64,
        #[serde(flatten, with = "camel_case_optional_fields")]
        consistency: Option<Consistency>,
        bytes_read: u64,
    }

    #[test]
    fn wire_strings_are_the_documented_ones() {
        let kinds: Vec<_> = ConsistencyKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "application-consistent",
                "crash-consistent",
                "paused",
                "offline"
            ]
        );
        for k in ConsistencyKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
            assert_eq!(ConsistencyKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(ConsistencyKind::parse("consistent"), None);
        for f in FreezeFailure::ALL {
            assert_eq!(serde_json::to_value(f).unwrap(), f.as_str());
        }
    }

    #[test]
    fn kind_and_reason_round_trip_through_parts() {
        for c in ALL {
            assert_eq!(Consistency::from_parts(c.kind(), c.freeze_failure()), c);
        }
        // A reason never sticks to anything but crash-consistent.
        assert_eq!(
            Consistency::from_parts(ConsistencyKind::Offline, Some(FreezeFailure::Refused)),
            Consistency::Offline
        );
        assert!(Consistency::ApplicationConsistent.is_application_consistent());
        assert!(ALL[1..].iter().all(|c| !c.is_application_consistent()));
    }

    #[test]
    fn display_names_kind_and_reason() {
        assert_eq!(Consistency::Offline.to_string(), "offline");
        assert_eq!(
            Consistency::FreezeFailed(FreezeFailure::TimedOut).to_string(),
            "crash-consistent (freeze timed out)"
        );
    }

    #[test]
    fn snake_case_fields_flatten_into_the_manifest_shape() {
        for c in ALL {
            let v = Snake {
                format_version: 1,
                consistency: c,
                tool_version: "x".into(),
            };
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(serde_json::from_str::<Snake>(&json).unwrap(), v, "{json}");
        }
        let v = Snake {
            format_version: 1,
            consistency: Consistency::FreezeFailed(FreezeFailure::AgentDisconnected),
            tool_version: "x".into(),
        };
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"format_version":1,"consistency":"crash-consistent","freeze_failure":"agent-disconnected","tool_version":"x"}"#
        );
        // Written before there were reasons (and before paused/offline were kept): still reads.
        let old: Snake = serde_json::from_str(
            r#"{"format_version":1,"consistency":"crash-consistent","tool_version":"0.1.0"}"#,
        )
        .unwrap();
        assert_eq!(old.consistency, Consistency::CrashConsistent);
        let missing =
            serde_json::from_str::<Snake>(r#"{"format_version":1,"tool_version":"0.1.0"}"#);
        assert!(
            missing.unwrap_err().to_string().contains("consistency"),
            "the error names the missing key"
        );
    }

    #[test]
    fn camel_case_fields_are_optional_and_flatten_into_the_status_shape() {
        for c in ALL.map(Some).into_iter().chain([None]) {
            let v = Camel {
                last_attempt_timestamp: 7,
                consistency: c,
                bytes_read: 9,
            };
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(serde_json::from_str::<Camel>(&json).unwrap(), v, "{json}");
        }
        let v = Camel {
            last_attempt_timestamp: 7,
            consistency: Some(Consistency::FreezeFailed(FreezeFailure::Refused)),
            bytes_read: 9,
        };
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"lastAttemptTimestamp":7,"consistency":"crash-consistent","freezeFailure":"refused","bytesRead":9}"#
        );
        let none = Camel {
            consistency: None,
            ..v
        };
        assert_eq!(
            serde_json::to_string(&none).unwrap(),
            r#"{"lastAttemptTimestamp":7,"bytesRead":9}"#
        );
        // A record written by an older virtguard (four kinds, no reason key) still parses.
        let old: Camel = serde_json::from_str(
            r#"{"lastAttemptTimestamp":1,"consistency":"offline","bytesRead":2}"#,
        )
        .unwrap();
        assert_eq!(old.consistency, Some(Consistency::Offline));
    }
}
