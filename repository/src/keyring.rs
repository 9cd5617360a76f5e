//! `virtguard key list|add|remove|passwd` on an open repository: the administration of the
//! wrapped copies of the master key that [`crate::keys`] reads (see its invariant: at least one
//! copy always; config.json's copy replaced only by promoting another in one atomic put).

use serde::Serialize;

use crate::config::{KeyMeta, CONFIG_KEY};
use crate::crypto::EncryptionConfig;
use crate::error::{Error, Result};
use crate::keys::{config_meta, key_object_key, key_objects, KeyObject};
use crate::repository::{cpu, Repository};

/// One wrapped key as `virtguard key list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyEntry {
    #[serde(flatten)]
    pub meta: KeyMeta,
    /// The object holding it: `config.json` or `keys/<id>.json`.
    pub object: String,
    /// Whether it is the key that opened this repository handle.
    pub current: bool,
}

fn encryption(repo: &Repository) -> Result<&EncryptionConfig> {
    repo.config().encryption.as_ref().ok_or_else(|| {
        Error::Invalid(format!(
            "the repository at {} is not encrypted: it has no keys to manage",
            repo.location()
        ))
    })
}

/// Every wrapped key of the repository: config.json's first, then `keys/` by id.
pub async fn list_keys(repo: &Repository) -> Result<Vec<KeyEntry>> {
    encryption(repo)?;
    let current = repo.key_id();
    let first = config_meta(repo.config());
    let mut out = vec![KeyEntry {
        current: current == Some(first.id.as_str()),
        meta: first,
        object: CONFIG_KEY.into(),
    }];
    for k in key_objects(repo.store().as_ref()).await? {
        out.push(KeyEntry {
            current: current == Some(k.meta.id.as_str()),
            object: key_object_key(&k.meta.id),
            meta: k.meta,
        });
    }
    Ok(out)
}

/// Adds a wrapped copy of the master key unlocked by `new_key` (Argon2id with the parameters
/// of the key in config.json); `host` overrides this machine's name.
pub async fn add_key(repo: &Repository, new_key: &[u8], host: Option<&str>) -> Result<KeyMeta> {
    let enc = encryption(repo)?;
    let mut meta = KeyMeta::new();
    if let Some(h) = host {
        meta.host = h.to_string();
    }
    let (crypto, new_key) = (repo.crypto().clone(), new_key.to_vec());
    let (mem, iters) = (enc.kdf.memory_kib, enc.kdf.iterations);
    let encryption = cpu(move || crypto.wrap(&new_key, mem, iters)).await?;
    let obj = KeyObject {
        meta: meta.clone(),
        encryption,
    };
    let data = serde_json::to_vec_pretty(&obj)
        .map_err(|e| Error::Codec(format!("encoding the key object: {e}")))?;
    let key = key_object_key(&meta.id);
    if repo.store().exists(&key).await? {
        return Err(Error::Internal(format!(
            "key id {} already exists; retry",
            meta.id
        )));
    }
    repo.store().put(&key, data.into()).await?;
    Ok(meta)
}

/// Removes the wrapped key `id`. Refused when it is the only one, and when it is the key that
/// opened `repo` unless `force` (the user would have to use another key from then on).
pub async fn remove_key(repo: &Repository, id: &str, force: bool) -> Result<()> {
    let all = list_keys(repo).await?;
    let Some(entry) = all.iter().find(|k| k.meta.id == id) else {
        return Err(Error::Invalid(format!(
            "no key `{id}` in the repository at {} (it has: {}); see `virtguard key list`",
            repo.location(),
            all.iter()
                .map(|k| k.meta.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    if all.len() == 1 {
        return Err(Error::Invalid(format!(
            "key `{id}` is the repository's only key: removing it would make every backup \
             unreadable; add another key first (`virtguard key add`)"
        )));
    }
    if entry.current && !force {
        return Err(Error::Invalid(format!(
            "key `{id}` is the key you opened the repository with; pass --force to remove it \
             anyway (from then on only the other keys open the repository)"
        )));
    }
    let store = repo.store();
    if entry.object != CONFIG_KEY {
        return store.delete(&entry.object).await;
    }
    // The key in config.json: promote the first key object into config.json, then delete it.
    let objects = key_objects(store.as_ref()).await?;
    let Some(next) = objects.into_iter().next() else {
        return Err(Error::Internal("no key object to promote".into()));
    };
    let mut config = repo.config().clone();
    config.encryption = Some(next.encryption);
    config.key = Some(next.meta.clone());
    store.put(CONFIG_KEY, config.encode().into()).await?;
    store.delete(&key_object_key(&next.meta.id)).await
}

/// Replaces the key that opened `repo` by `new_key`: adds the new one, then removes the old
/// one (so a failure in between leaves both). Returns the new key.
pub async fn change_key(repo: &Repository, new_key: &[u8], host: Option<&str>) -> Result<KeyMeta> {
    let Some(old) = repo.key_id().map(str::to_string) else {
        encryption(repo)?;
        return Err(Error::Internal("no current key".into()));
    };
    let meta = add_key(repo, new_key, host).await?;
    // `repo` still holds the config it was opened with, which is what remove_key rewrites.
    remove_key(repo, &old, true).await?;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KEYS_PREFIX;
    use crate::repository::InitOptions;
    use crate::store::{LocalStore, Store};
    use std::sync::Arc;

    fn opts(key: &[u8]) -> InitOptions {
        InitOptions {
            key: Some(key.to_vec()),
            kdf_memory_kib: 256,
            kdf_iterations: 1,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn add_remove_passwd_and_the_last_key() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path()));
        let repo = Repository::init(store.clone(), opts(b"one")).await.unwrap();
        let first = repo.key_id().unwrap().to_string();
        let ids = |v: Vec<KeyEntry>| v.into_iter().map(|k| k.meta.id).collect::<Vec<_>>();
        assert_eq!(ids(list_keys(&repo).await.unwrap()), vec![first.clone()]);
        assert!(
            remove_key(&repo, &first, true).await.is_err(),
            "the last key"
        );

        let two = add_key(&repo, b"two", Some("h2")).await.unwrap();
        let r2 = Repository::open(store.clone(), Some(b"two")).await.unwrap();
        assert_eq!(r2.key_id(), Some(two.id.as_str()));
        let listed = list_keys(&r2).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed[1].current && !listed[0].current);
        assert_eq!(listed[1].meta.host, "h2");

        // Removing the current key needs force; removing config.json's key promotes `two`.
        assert!(remove_key(&repo, &first, false).await.is_err());
        remove_key(&repo, &first, true).await.unwrap();
        assert!(matches!(
            Repository::open(store.clone(), Some(b"one")).await,
            Err(Error::WrongKey { .. })
        ));
        let r2 = Repository::open(store.clone(), Some(b"two")).await.unwrap();
        let listed = list_keys(&r2).await.unwrap();
        assert_eq!(ids(listed.clone()), vec![two.id.clone()]);
        assert_eq!(listed[0].object, CONFIG_KEY);
        assert!(store.list(KEYS_PREFIX).await.unwrap().is_empty());

        let three = change_key(&r2, b"three", None).await.unwrap();
        assert!(Repository::open(store.clone(), Some(b"two")).await.is_err());
        let r3 = Repository::open(store.clone(), Some(b"three"))
            .await
            .unwrap();
        assert_eq!(r3.key_id(), Some(three.id.as_str()));
        assert_eq!(r3.crypto().chunk_id(b"x"), repo.crypto().chunk_id(b"x"));
    }

    #[tokio::test]
    async fn plain_repository_has_no_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path()));
        let repo = Repository::init(store, InitOptions::default())
            .await
            .unwrap();
        assert!(list_keys(&repo).await.is_err());
        assert!(add_key(&repo, b"k", None).await.is_err());
    }
}
