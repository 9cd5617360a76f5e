//! Byte formats of the repository: constants, chunk ids, the blob/envelope header, the
//! fixed-size index, the manifest and backup ids. See the [`crate`] page for the layout.
//!
//! Every parser here takes bytes read back from storage and must never panic on any input; it
//! returns [`Error::Corrupt`] naming the object instead (property-tested below).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Repository format version written to config.json. Never reuse a value.
pub const REPO_FORMAT_VERSION: u32 = 1;
/// Magic of a chunk blob. Must never change.
pub const CHUNK_MAGIC: [u8; 4] = *b"VGCB";
/// Magic of a sealed (encrypted) non-chunk object. Must never change.
pub const OBJECT_MAGIC: [u8; 4] = *b"VGOB";
/// Magic of an index object. Must never change.
pub const INDEX_MAGIC: [u8; 4] = *b"VGIX";
/// Version of the blob header and the index layout. Never reuse a value.
pub const BLOB_VERSION: u16 = 1;
/// Size of the blob header in bytes.
pub const BLOB_HEADER_LEN: usize = 16;
/// Size of the fixed index header in bytes.
pub const INDEX_HEADER_LEN: usize = 32;
/// Blob flag: payload is a zstd frame.
pub const FLAG_ZSTD: u16 = 1;
/// Blob flag: payload is encrypted (nonce ‖ ciphertext ‖ tag).
pub const FLAG_ENCRYPTED: u16 = 2;
/// Default chunk size: 4 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 4 * 1024 * 1024;
/// Smallest and largest chunk sizes accepted (both powers of two).
pub const MIN_CHUNK_SIZE: u32 = 64 * 1024;
/// See [`MIN_CHUNK_SIZE`].
pub const MAX_CHUNK_SIZE: u32 = 64 * 1024 * 1024;

/// Header layout of a blob; its size is fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobHeader {
    pub magic: [u8; 4],
    pub flags: u16,
    pub raw_len: u64,
}

const _: () = assert!(BLOB_HEADER_LEN == 4 + 2 + 2 + 8);
const _: () = assert!(INDEX_HEADER_LEN == 4 + 2 + 2 + 4 + 4 + 8 + 8);

impl BlobHeader {
    /// Encodes the header, little-endian.
    pub fn encode(&self) -> [u8; BLOB_HEADER_LEN] {
        let mut out = [0u8; BLOB_HEADER_LEN];
        out[0..4].copy_from_slice(&self.magic);
        out[4..6].copy_from_slice(&BLOB_VERSION.to_le_bytes());
        out[6..8].copy_from_slice(&self.flags.to_le_bytes());
        out[8..16].copy_from_slice(&self.raw_len.to_le_bytes());
        out
    }

    /// Decodes and checks a header at the start of `data` (the object named `key`).
    pub fn decode(key: &str, data: &[u8], expect_magic: [u8; 4]) -> Result<Self> {
        let head = data.get(..BLOB_HEADER_LEN).ok_or_else(|| {
            Error::corrupt(
                key,
                format!("{} bytes, shorter than a blob header", data.len()),
            )
        })?;
        let magic = [head[0], head[1], head[2], head[3]];
        if magic != expect_magic {
            return Err(Error::corrupt(
                key,
                "bad magic (not a virtguard blob of this kind)",
            ));
        }
        let version = u16::from_le_bytes([head[4], head[5]]);
        if version != BLOB_VERSION {
            return Err(Error::corrupt(
                key,
                format!("unsupported blob version {version}"),
            ));
        }
        let flags = u16::from_le_bytes([head[6], head[7]]);
        if flags & !(FLAG_ZSTD | FLAG_ENCRYPTED) != 0 {
            return Err(Error::corrupt(
                key,
                format!("unknown blob flags {flags:#x}"),
            ));
        }
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&head[8..16]);
        Ok(BlobHeader {
            magic,
            flags,
            raw_len: u64::from_le_bytes(raw),
        })
    }
}

/// A 32-byte content address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The marker used in indexes for an all-zero chunk.
    pub const ZERO_MARKER: ChunkId = ChunkId([0u8; 32]);

    /// Whether this entry marks an all-zero chunk.
    pub fn is_zero_marker(&self) -> bool {
        self.0 == [0u8; 32]
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Object key of the chunk blob: `chunks/<2 hex>/<64 hex>`.
    pub fn key(&self) -> String {
        let h = self.to_hex();
        format!("chunks/{}/{}", &h[..2], h)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<ChunkId> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(ChunkId(out))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Whether every byte is zero (OR-folds 64-byte blocks, which the compiler vectorises).
pub fn is_all_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(64);
    blocks
        .by_ref()
        .all(|b| b.iter().fold(0u8, |a, x| a | x) == 0)
        && blocks.remainder().iter().all(|b| *b == 0)
}

/// The fixed-size chunk index of one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    pub chunk_size: u32,
    pub size: u64,
    /// One id per chunk in offset order; [`ChunkId::ZERO_MARKER`] for zero chunks.
    pub chunks: Vec<ChunkId>,
}

/// Number of chunks of a volume of `size` bytes.
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size))
}

/// Length of chunk `i` (the last one may be shorter).
pub fn chunk_len(size: u64, chunk_size: u32, i: u64) -> usize {
    let start = i * u64::from(chunk_size);
    // Invariant: callers pass i < chunk_count, so start < size and the result ≤ chunk_size.
    (size.saturating_sub(start)).min(u64::from(chunk_size)) as usize
}

impl Index {
    /// Serialises the index (header, ids, trailing BLAKE3).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(INDEX_HEADER_LEN + 32 * self.chunks.len() + 32);
        out.extend_from_slice(&INDEX_MAGIC);
        out.extend_from_slice(&BLOB_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(&c.0);
        }
        let digest = blake3::hash(&out);
        out.extend_from_slice(digest.as_bytes());
        out
    }

    /// Parses an index read from the object `key`, checking every field.
    pub fn decode(key: &str, data: &[u8]) -> Result<Index> {
        if data.len() < INDEX_HEADER_LEN + 32 {
            return Err(Error::corrupt(
                key,
                format!("index truncated ({} bytes)", data.len()),
            ));
        }
        let (body, trailer) = data.split_at(data.len() - 32);
        if blake3::hash(body).as_bytes() != trailer {
            return Err(Error::corrupt(
                key,
                "index checksum mismatch (truncated or modified)",
            ));
        }
        if body[0..4] != INDEX_MAGIC {
            return Err(Error::corrupt(key, "bad index magic"));
        }
        let u16_at = |o: usize| u16::from_le_bytes([body[o], body[o + 1]]);
        let u32_at =
            |o: usize| u32::from_le_bytes([body[o], body[o + 1], body[o + 2], body[o + 3]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let version = u16_at(4);
        if version != BLOB_VERSION {
            return Err(Error::corrupt(
                key,
                format!("unsupported index version {version}"),
            ));
        }
        let chunk_size = u32_at(8);
        if !valid_chunk_size(chunk_size) {
            return Err(Error::corrupt(
                key,
                format!("invalid chunk size {chunk_size}"),
            ));
        }
        let size = u64_at(16);
        let count = u64_at(24);
        if count != chunk_count(size, chunk_size) {
            return Err(Error::corrupt(
                key,
                format!("chunk count {count} does not match size {size} / chunk size {chunk_size}"),
            ));
        }
        let ids = &body[INDEX_HEADER_LEN..];
        if ids.len() as u64 != count.saturating_mul(32) {
            return Err(Error::corrupt(
                key,
                "index length does not match its chunk count",
            ));
        }
        let chunks = ids
            .chunks_exact(32)
            .map(|c| {
                let mut id = [0u8; 32];
                id.copy_from_slice(c);
                ChunkId(id)
            })
            .collect();
        Ok(Index {
            chunk_size,
            size,
            chunks,
        })
    }
}

/// Whether `cs` is an accepted chunk size (power of two within bounds).
pub fn valid_chunk_size(cs: u32) -> bool {
    cs.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs)
}

/// A time-sortable backup id: `YYYYMMDDTHHMMSSZ-xxxx`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupId(String);

impl BackupId {
    /// A new id for the current time.
    pub fn new_now() -> BackupId {
        Self::at(Utc::now(), rand::random::<u16>())
    }

    /// The id for a time and a random suffix.
    pub fn at(t: DateTime<Utc>, suffix: u16) -> BackupId {
        BackupId(format!("{}-{:04x}", t.format("%Y%m%dT%H%M%SZ"), suffix))
    }

    /// The time part.
    pub fn time(&self) -> Option<DateTime<Utc>> {
        let ts = self.0.get(..16)?;
        chrono::NaiveDateTime::parse_from_str(ts, "%Y%m%dT%H%M%SZ")
            .ok()
            .map(|n| n.and_utc())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for BackupId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let ok = s.len() == 21
            && s.as_bytes()[16] == b'-'
            && s[17..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            && BackupId(s.to_string()).time().is_some();
        if ok {
            Ok(BackupId(s.to_string()))
        } else {
            Err(Error::Invalid(format!(
                "`{s}` is not a backup id (expected e.g. 20261121T233302Z-3f9a)"
            )))
        }
    }
}

impl TryFrom<String> for BackupId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<BackupId> for String {
    fn from(b: BackupId) -> String {
        b.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a namespace, VM or volume name before it becomes part of an object key
/// (Kubernetes DNS-1123 subdomain characters; no `/`, no `..`).
pub fn check_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'_'
        })
        && !name.starts_with('.')
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{kind} name `{name}` is not valid: use lowercase letters, digits, '-', '.', '_' (Kubernetes names)"
        )))
    }
}

/// How consistent a backup is: one definition for the whole workspace, in `virtguard-model`
/// (the repository layer never depends on a Kubernetes crate, so not on `virtguard-api`).
pub use virtguard_model::{Consistency, ConsistencyKind, FreezeFailure};

/// Manifest label under which virtguard before `freeze_failure` existed wrote the full
/// consistency kind (`paused`, `offline`, ...) while the `consistency` field could only say
/// `crash-consistent`. Read (and dropped) by [`Manifest::decode`]; never written any more.
pub const LEGACY_CONSISTENCY_LABEL: &str = "consistency";

/// One volume in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeEntry {
    pub name: String,
    pub size: u64,
    pub chunk_size: u32,
    pub chunks: u64,
    pub zero_chunks: u64,
    /// Chunks that this backup uploaded (not found in the parent or the repository).
    pub new_chunks: u64,
    /// Bytes read from the source (non-zero chunks).
    pub bytes_read: u64,
    /// Raw bytes of the chunks uploaded.
    pub bytes_new: u64,
    /// Stored (compressed/encrypted) bytes of the chunks uploaded.
    pub bytes_stored: u64,
    /// BLAKE3 (hex) of the stored index object.
    pub index_digest: String,
    /// BLAKE3 (hex) over the concatenated chunk ids (see module docs).
    pub image_digest: String,
}

/// The VM's Kubernetes objects saved with a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourcesEntry {
    pub object_digest: String,
    pub files: Vec<String>,
}

/// `manifest.json`: the commit point of a backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub id: BackupId,
    pub namespace: String,
    pub vm: String,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    /// Keys `consistency` (the kind) and `freeze_failure` (only when a freeze failed). Manifests
    /// written before paused/offline were kept say `crash-consistent` for those, with the kind
    /// in [`LEGACY_CONSISTENCY_LABEL`]; [`Manifest::decode`] restores it.
    #[serde(flatten, with = "virtguard_model::consistency::snake_case_fields")]
    pub consistency: Consistency,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<BackupId>,
    pub volumes: Vec<VolumeEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesEntry>,
    pub tool_version: String,
    /// Free-form labels (e.g. the engine's freeze duration), never secrets.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Manifest {
    /// JSON bytes.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising a plain struct with string keys cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Parses and checks a manifest read from `key`.
    pub fn decode(key: &str, data: &[u8]) -> Result<Manifest> {
        let mut m: Manifest = serde_json::from_slice(data)
            .map_err(|e| Error::corrupt(key, format!("malformed manifest: {e}")))?;
        if m.format_version > REPO_FORMAT_VERSION {
            return Err(Error::corrupt(
                key,
                format!(
                    "manifest format {} is newer than this virtguard",
                    m.format_version
                ),
            ));
        }
        check_name("namespace", &m.namespace).map_err(|e| Error::corrupt(key, e.to_string()))?;
        check_name("vm", &m.vm).map_err(|e| Error::corrupt(key, e.to_string()))?;
        for v in &m.volumes {
            check_name("volume", &v.name).map_err(|e| Error::corrupt(key, e.to_string()))?;
            if !valid_chunk_size(v.chunk_size) || v.chunks != chunk_count(v.size, v.chunk_size) {
                return Err(Error::corrupt(
                    key,
                    format!("volume `{}` has inconsistent sizes", v.name),
                ));
            }
        }
        if let Some(legacy) = m.labels.remove(LEGACY_CONSISTENCY_LABEL) {
            // Only ever refines the lossy `crash-consistent` of an old manifest.
            if m.consistency == Consistency::CrashConsistent {
                if let Some(kind) = ConsistencyKind::parse(&legacy) {
                    m.consistency = Consistency::from_parts(kind, None);
                }
            }
        }
        Ok(m)
    }

    /// Key prefix of this backup: `backups/<ns>/<vm>/<id>/`.
    pub fn prefix(&self) -> String {
        backup_prefix(&self.namespace, &self.vm, &self.id)
    }
}

/// `backups/<ns>/<vm>/<id>/`.
pub fn backup_prefix(ns: &str, vm: &str, id: &BackupId) -> String {
    format!("backups/{ns}/{vm}/{id}/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_roundtrip_and_checks() {
        let h = BlobHeader {
            magic: CHUNK_MAGIC,
            flags: FLAG_ZSTD,
            raw_len: 12345,
        };
        let b = h.encode();
        assert_eq!(BlobHeader::decode("k", &b, CHUNK_MAGIC).unwrap(), h);
        assert!(BlobHeader::decode("k", &b, OBJECT_MAGIC).is_err());
        assert!(BlobHeader::decode("k", &b[..10], CHUNK_MAGIC).is_err());
        let mut bad = b;
        bad[6] = 0x80;
        assert!(BlobHeader::decode("k", &bad, CHUNK_MAGIC).is_err());
    }

    #[test]
    fn backup_ids_sort_by_time() {
        let a = BackupId::at("2026-11-21T23:33:02Z".parse().unwrap(), 0xffff);
        let b = BackupId::at("2026-11-21T23:33:03Z".parse().unwrap(), 0x0000);
        assert_eq!(a.as_str(), "20261121T233302Z-ffff");
        assert!(a < b);
        assert_eq!(
            "20261121T233302Z-3f9a"
                .parse::<BackupId>()
                .unwrap()
                .as_str(),
            "20261121T233302Z-3f9a"
        );
        for bad in [
            "",
            "20261121T233302Z",
            "20261121T233302Z-3F9A",
            "2026112XT233302Z-3f9a",
            "../../etc/passwd12345",
        ] {
            assert!(bad.parse::<BackupId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_checked() {
        check_name("vm", "my-vm.1").unwrap();
        for bad in ["", "A", "a/b", "..", "a..b", ".hidden", "a b"] {
            assert!(check_name("vm", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn index_detects_truncation_and_flips() {
        let idx = Index {
            chunk_size: MIN_CHUNK_SIZE,
            size: u64::from(MIN_CHUNK_SIZE) * 2 + 1,
            chunks: vec![ChunkId([1; 32]), ChunkId::ZERO_MARKER, ChunkId([3; 32])],
        };
        let enc = idx.encode();
        assert_eq!(Index::decode("i", &enc).unwrap(), idx);
        let err = Index::decode("backups/a/b/c/d.idx", &enc[..enc.len() - 1]).unwrap_err();
        assert!(err.to_string().contains("backups/a/b/c/d.idx"), "{err}");
        let mut flipped = enc.clone();
        flipped[40] ^= 1;
        assert!(Index::decode("i", &flipped).is_err());
    }

    #[test]
    fn zero_detection() {
        assert!(is_all_zero(&[]));
        assert!(is_all_zero(&[0; 17]));
        let mut v = vec![0u8; 17];
        v[16] = 1;
        assert!(!is_all_zero(&v));
        v[16] = 0;
        v[3] = 1;
        assert!(!is_all_zero(&v));
    }

    /// `manifest.json` as virtguard wrote it before consistency had four kinds: a stopped VM is
    /// `crash-consistent` in the field, `offline` only in the engine's label.
    const OLD_OFFLINE_MANIFEST: &str = r#"{
  "format_version": 1,
  "id": "20261121T233302Z-3f9a",
  "namespace": "prod",
  "vm": "db",
  "started": "2026-11-21T23:33:02Z",
  "finished": "2026-11-21T23:33:09Z",
  "consistency": "crash-consistent",
  "volumes": [
    {
      "name": "root",
      "size": 6291456,
      "chunk_size": 4194304,
      "chunks": 2,
      "zero_chunks": 0,
      "new_chunks": 2,
      "bytes_read": 6291456,
      "bytes_new": 6291456,
      "bytes_stored": 1234,
      "index_digest": "00",
      "image_digest": "11"
    }
  ],
  "tool_version": "0.1.0",
  "labels": {
    "consistency": "offline",
    "snapshot-classes": "sim-snapclass"
  }
}"#;

    #[test]
    fn old_two_valued_manifests_still_read_with_their_full_consistency() {
        let m = Manifest::decode("m", OLD_OFFLINE_MANIFEST.as_bytes()).unwrap();
        assert_eq!(m.consistency, Consistency::Offline);
        assert!(!m.labels.contains_key(LEGACY_CONSISTENCY_LABEL), "{m:?}");
        assert_eq!(m.labels["snapshot-classes"], "sim-snapclass");
        // Re-encoded, it is a new-format manifest: the full value in the field.
        let json: serde_json::Value = serde_json::from_slice(&m.encode()).unwrap();
        assert_eq!(json["consistency"], "offline");
        assert!(json.get("freeze_failure").is_none());
        // Application-consistent and unlabelled crash-consistent (backup-file) ones read as such.
        for (field, label, want) in [
            (
                "application-consistent",
                None,
                Consistency::ApplicationConsistent,
            ),
            ("crash-consistent", None, Consistency::CrashConsistent),
            ("crash-consistent", Some("paused"), Consistency::Paused),
            (
                "crash-consistent",
                Some("crash-consistent"),
                Consistency::CrashConsistent,
            ),
            // The label only ever refines a crash-consistent field.
            (
                "application-consistent",
                Some("offline"),
                Consistency::ApplicationConsistent,
            ),
        ] {
            let mut v: serde_json::Value = serde_json::from_str(OLD_OFFLINE_MANIFEST).unwrap();
            v["consistency"] = field.into();
            match label {
                Some(l) => v["labels"]["consistency"] = l.into(),
                None => {
                    v["labels"].as_object_mut().unwrap().remove("consistency");
                }
            }
            let m = Manifest::decode("m", v.to_string().as_bytes()).unwrap();
            assert_eq!(m.consistency, want, "{field} / {label:?}");
        }
    }

    #[test]
    fn a_failed_freeze_is_stored_with_its_reason() {
        let mut m = Manifest::decode("m", OLD_OFFLINE_MANIFEST.as_bytes()).unwrap();
        m.consistency = Consistency::FreezeFailed(FreezeFailure::AgentDisconnected);
        let enc = m.encode();
        let json: serde_json::Value = serde_json::from_slice(&enc).unwrap();
        assert_eq!(json["consistency"], "crash-consistent");
        assert_eq!(json["freeze_failure"], "agent-disconnected");
        assert_eq!(Manifest::decode("m", &enc).unwrap(), m);
    }

    fn arb_index() -> impl Strategy<Value = Index> {
        (16u32..=20, 0u64..(1 << 24)).prop_flat_map(|(shift, size)| {
            let cs = 1u32 << shift;
            let n = chunk_count(size, cs) as usize;
            proptest::collection::vec(any::<[u8; 32]>(), n).prop_map(move |ids| Index {
                chunk_size: cs,
                size,
                chunks: ids.into_iter().map(ChunkId).collect(),
            })
        })
    }

    proptest! {
        #[test]
        fn index_roundtrip(idx in arb_index()) {
            prop_assert_eq!(Index::decode("i", &idx.encode()).unwrap(), idx);
        }

        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Index::decode("i", &data);
            let _ = Manifest::decode("m", &data);
            let _ = BlobHeader::decode("b", &data, CHUNK_MAGIC);
        }

        #[test]
        fn chunk_boundaries_cover_the_volume(size in 0u64..(1 << 40), shift in 16u32..=26) {
            let cs = 1u32 << shift;
            let n = chunk_count(size, cs);
            if n > 0 {
                let last = chunk_len(size, cs, n - 1) as u64;
                prop_assert!(last > 0 && last <= u64::from(cs));
                prop_assert_eq!((n - 1) * u64::from(cs) + last, size);
            }
        }

        #[test]
        fn manifest_roundtrip(ns in "[a-z][a-z0-9-]{0,20}", vm in "[a-z][a-z0-9-]{0,20}",
                              size in 0u64..(1 << 40), secs in 0i64..4_000_000_000, suffix: u16,
                              kind in 0usize..4, failure in proptest::option::of(0usize..4)) {
            let t = DateTime::from_timestamp(secs, 0).unwrap();
            let cs = DEFAULT_CHUNK_SIZE;
            let m = Manifest {
                format_version: REPO_FORMAT_VERSION,
                id: BackupId::at(t, suffix),
                namespace: ns,
                vm,
                started: t,
                finished: t,
                consistency: Consistency::from_parts(
                    ConsistencyKind::ALL[kind],
                    failure.map(|f| FreezeFailure::ALL[f]),
                ),
                parent: None,
                volumes: vec![VolumeEntry {
                    name: "disk0".into(), size, chunk_size: cs, chunks: chunk_count(size, cs),
                    zero_chunks: 0, new_chunks: 0, bytes_read: 0, bytes_new: 0, bytes_stored: 0,
                    index_digest: "00".into(), image_digest: "11".into(),
                }],
                resources: None,
                tool_version: "x".into(),
                labels: Default::default(),
            };
            prop_assert_eq!(Manifest::decode("m", &m.encode()).unwrap(), m);
        }
    }
}
