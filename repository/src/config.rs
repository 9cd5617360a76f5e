//! `config.json`: the repository's fixed parameters. Plain JSON even in an encrypted repository
//! (it holds only the wrapped key, never a usable one). Written once by `init`; rewritten whole
//! (one atomic put) only when `virtguard key remove`/`passwd` replaces the key it holds.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::{DataCipher, EncryptionConfig};
use crate::error::{Error, Result};
use crate::format::{valid_chunk_size, DEFAULT_CHUNK_SIZE, REPO_FORMAT_VERSION};

/// Object key of the config.
pub const CONFIG_KEY: &str = "config.json";

/// Newest config.json format this binary reads. 1: the original format (ChaCha20-Poly1305 when
/// encrypted); 2: an encrypted repository whose `encryption.aead` may be `aes256gcm` (chunk
/// blobs, indexes and manifests are unchanged: their own format version stays 1). Only AES
/// repositories are written as 2, so binaries that know format 1 only refuse exactly those,
/// with [`Error::UnsupportedVersion`] ("upgrade virtguard"), instead of failing on every blob.
pub const CONFIG_FORMAT_VERSION_MAX: u32 = 2;

/// zstd level of new repositories. Level 2 (double-fast, smaller tables) compresses the
/// text-like part of the benchmark image 1.6× faster than level 3 for 1.4% more output
/// (4 MiB blocks: 2.71 vs 2.74 ratio); compression is most of a full backup's CPU time.
/// Readers never need the level; `init --compression-level` overrides it.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 2;

/// The repository config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoConfig {
    pub format_version: u32,
    /// Random id of this repository (hex).
    pub id: String,
    pub chunk_size: u32,
    /// Always `blake3` in format 1 (keyed when encrypted).
    pub hash: String,
    /// Always `zstd` in format 1.
    pub compression: String,
    pub compression_level: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionConfig>,
    /// Id, host and time of the wrapped key in `encryption` (absent in repositories created
    /// before `virtguard key`: that key is listed as [`LEGACY_KEY_ID`]). Further
    /// keys are objects under `keys/` ([`crate::keys`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyMeta>,
    /// S3 Object Lock retention of every written object (`init --object-lock`), see
    /// [`crate::objectlock`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<crate::objectlock::ObjectLockPolicy>,
    pub created: chrono::DateTime<chrono::Utc>,
}

impl RepoConfig {
    /// A new config (unencrypted; `init` adds encryption).
    pub fn new(chunk_size: u32, compression_level: i32) -> Result<RepoConfig> {
        if !valid_chunk_size(chunk_size) {
            return Err(Error::Invalid(format!(
                "chunk size {chunk_size} is not a power of two between 64 KiB and 64 MiB"
            )));
        }
        if !(1..=19).contains(&compression_level) {
            return Err(Error::Invalid(format!(
                "compression level {compression_level} is outside 1..=19"
            )));
        }
        Ok(RepoConfig {
            format_version: REPO_FORMAT_VERSION,
            id: hex::encode(rand::random::<[u8; 16]>()),
            chunk_size,
            hash: "blake3".into(),
            compression: "zstd".into(),
            compression_level,
            encryption: None,
            key: None,
            object_lock: None,
            created: chrono::Utc::now(),
        })
    }

    /// Defaults: 4 MiB chunks, zstd level [`DEFAULT_COMPRESSION_LEVEL`].
    pub fn default_new() -> RepoConfig {
        RepoConfig {
            format_version: REPO_FORMAT_VERSION,
            id: hex::encode(rand::random::<[u8; 16]>()),
            chunk_size: DEFAULT_CHUNK_SIZE,
            hash: "blake3".into(),
            compression: "zstd".into(),
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            encryption: None,
            key: None,
            object_lock: None,
            created: chrono::Utc::now(),
        }
    }

    /// JSON bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Parses and checks a config read from `location`.
    pub fn decode(location: &str, data: &[u8]) -> Result<RepoConfig> {
        let c: RepoConfig = serde_json::from_slice(data)
            .map_err(|e| Error::corrupt(CONFIG_KEY, format!("malformed config: {e}")))?;
        if !(REPO_FORMAT_VERSION..=CONFIG_FORMAT_VERSION_MAX).contains(&c.format_version) {
            return Err(Error::UnsupportedVersion {
                location: location.to_string(),
                found: c.format_version,
                supported: CONFIG_FORMAT_VERSION_MAX,
            });
        }
        // Format 1 knows only ChaCha20-Poly1305: a format-1 config naming another cipher was
        // not written by virtguard (an older binary would misread its blobs).
        if let Some(enc) = &c.encryption {
            let cipher = DataCipher::parse(&enc.aead)?;
            if cipher.config_format_version() > c.format_version {
                return Err(Error::corrupt(
                    CONFIG_KEY,
                    format!(
                        "cipher `{}` needs config format {}, the config says {}",
                        enc.aead,
                        cipher.config_format_version(),
                        c.format_version
                    ),
                ));
            }
        }
        if c.hash != "blake3" || c.compression != "zstd" || !valid_chunk_size(c.chunk_size) {
            return Err(Error::corrupt(
                CONFIG_KEY,
                "unsupported hash, compression or chunk size",
            ));
        }
        Ok(c)
    }
}

/// Id shown for the key in config.json of repositories created before `virtguard key`.
pub const LEGACY_KEY_ID: &str = "initial";

/// Who added a key, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMeta {
    /// 8 random hex digits.
    pub id: String,
    /// Host name of the machine that added it.
    pub host: String,
    pub created: DateTime<Utc>,
}

impl KeyMeta {
    /// A fresh id, this host, now.
    pub fn new() -> KeyMeta {
        KeyMeta {
            id: hex::encode(rand::random::<[u8; 4]>()),
            host: crate::locks::hostname(),
            created: Utc::now(),
        }
    }
}

impl Default for KeyMeta {
    fn default() -> Self {
        KeyMeta::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_version_check() {
        let c = RepoConfig::new(1 << 20, 3).unwrap();
        assert_eq!(RepoConfig::decode("l", &c.encode()).unwrap(), c);
        let mut newer = c.clone();
        newer.format_version = 99;
        assert!(matches!(
            RepoConfig::decode("l", &newer.encode()),
            Err(Error::UnsupportedVersion { found: 99, .. })
        ));
        assert!(RepoConfig::new(1000, 3).is_err());
        // Format 2 (AES-256-GCM repositories) is read; a format-1 config naming AES is not.
        let (_, mut enc) = crate::crypto::Crypto::create(b"k", 256, 1, 3).unwrap();
        enc.aead = "aes256gcm".into();
        let mut aes = c.clone();
        aes.encryption = Some(enc);
        aes.format_version = 2;
        assert_eq!(RepoConfig::decode("l", &aes.encode()).unwrap(), aes);
        aes.format_version = 1;
        let err = RepoConfig::decode("l", &aes.encode()).unwrap_err();
        assert!(err.to_string().contains("needs config format 2"), "{err}");
        assert!(RepoConfig::decode("l", b"{").is_err());
    }
}
