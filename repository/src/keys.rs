//! Several wrapped copies of an encrypted repository's master key (`virtguard key …`).
//!
//! Invariant: every copy wraps the same 64-byte master secret, so any of them opens every object;
//! there is always at least one. The first copy lives in config.json (`encryption` +
//! `key`), every further one in its own object `keys/<id>.json` (plain JSON: the [`KeyMeta`]
//! beside the [`EncryptionConfig`] — nothing usable without the user's key). Adding a key writes
//! only a new object; removing one deletes its object, and removing the one in config.json first
//! promotes another key into config.json (one atomic put) and only then deletes that key's
//! object, so a crash in between leaves a duplicate, never no key. Changing keys never
//! re-encrypts data: it changes who can unwrap the master secret, not the secret itself.
//!
//! This module reads keys and unlocks a repository being opened (no [`crate::Repository`]
//! needed); adding, removing and listing keys of an open repository is [`crate::keyring`].

use serde::{Deserialize, Serialize};

use crate::config::RepoConfig;
pub use crate::config::{KeyMeta, LEGACY_KEY_ID};
use crate::crypto::{Crypto, EncryptionConfig};
use crate::error::{Error, Result};
use crate::store::Store;

/// Prefix of the key objects.
pub const KEYS_PREFIX: &str = "keys/";
/// One `keys/<id>.json` object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KeyObject {
    #[serde(flatten)]
    pub(crate) meta: KeyMeta,
    #[serde(flatten)]
    pub(crate) encryption: EncryptionConfig,
}

pub(crate) fn key_object_key(id: &str) -> String {
    format!("{KEYS_PREFIX}{id}.json")
}

/// [`KeyMeta`] of the key in config.json.
pub(crate) fn config_meta(config: &RepoConfig) -> KeyMeta {
    config.key.clone().unwrap_or_else(|| KeyMeta {
        id: LEGACY_KEY_ID.into(),
        host: "-".into(),
        created: config.created,
    })
}

/// The key objects under `keys/`, sorted by id. A malformed one is reported, not skipped: it
/// would otherwise be invisible to `key list` and `key remove`.
pub(crate) async fn key_objects(store: &dyn Store) -> Result<Vec<KeyObject>> {
    let mut out = Vec::new();
    for o in store.list(KEYS_PREFIX).await? {
        let data = store.get(&o.key).await?;
        let k: KeyObject = serde_json::from_slice(&data)
            .map_err(|e| Error::corrupt(&o.key, format!("malformed key object: {e}")))?;
        if o.key != key_object_key(&k.meta.id) {
            return Err(Error::corrupt(&o.key, "key object names another id"));
        }
        out.push(k);
    }
    out.sort_by(|a, b| a.meta.id.cmp(&b.meta.id));
    Ok(out)
}

async fn try_open(enc: &EncryptionConfig, user_key: &[u8], config: &RepoConfig) -> Result<Crypto> {
    let (enc, user_key, level) = (enc.clone(), user_key.to_vec(), config.compression_level);
    // Argon2id: off the async runtime's threads.
    tokio::task::spawn_blocking(move || Crypto::open(&enc, &user_key, "", level))
        .await
        .map_err(|e| Error::Internal(format!("internal worker failed: {e}")))?
}

/// Unwraps the master secret of an encrypted repository with `user_key`: the key in
/// config.json first, then each `keys/` object. Returns the crypto and the id of the key that
/// fit; [`Error::WrongKey`] when none does.
pub(crate) async fn unlock(
    store: &dyn Store,
    config: &RepoConfig,
    user_key: &[u8],
) -> Result<(Crypto, Option<String>)> {
    let location = store.location();
    let Some(enc) = &config.encryption else {
        return Ok((Crypto::plain(config.compression_level), None));
    };
    match try_open(enc, user_key, config).await {
        Ok(c) => return Ok((c, Some(config_meta(config).id))),
        Err(Error::WrongKey { .. }) => {}
        Err(e) => return Err(e),
    }
    for k in store.list(KEYS_PREFIX).await? {
        let Ok(data) = store.get(&k.key).await else {
            continue;
        };
        let Ok(obj) = serde_json::from_slice::<KeyObject>(&data) else {
            tracing::warn!(key = %k.key, "skipping a malformed key object");
            continue;
        };
        match try_open(&obj.encryption, user_key, config).await {
            Ok(c) => return Ok((c, Some(obj.meta.id))),
            Err(Error::WrongKey { .. }) => {}
            Err(e) => tracing::warn!(key = %k.key, error = %e, "skipping an unusable key object"),
        }
    }
    Err(Error::WrongKey { location })
}
