//! Writing a volume from a list of changed extents (changed block tracking): chunks that no
//! extent touches are taken from the parent backup's index of the same volume **without being
//! read**; the others are read and handled exactly like [`BackupSession::write_volume`] does
//! (zero check, hash, dedup against the parent and the store, upload).
//!
//! Invariant the caller guarantees: the parent backup's image of this volume is the image at
//! the base of the extents (e.g. the parent recorded the CBT checkpoint the map is relative
//! to). When the parent has no usable index of the volume (missing, other chunk size or other
//! volume size), every chunk is read: slower, never wrong.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};

use super::{image_digest, BackupSession, Outcome, VolumeStats};
use crate::error::{Error, Result};
use crate::format::{
    check_name, chunk_count, chunk_len, is_all_zero, ChunkId, Index, Manifest, VolumeEntry,
    CHUNK_MAGIC,
};
use crate::repository::cpu;
use crate::source::VolumeSource;

/// How a chunk of a [`BackupSession::write_volume_changed`] was obtained.
enum Got {
    /// Read and processed.
    Read(Outcome),
    /// Taken from the parent's index without reading.
    Reused,
}

impl BackupSession {
    /// The parent manifest (used for dedup and chunk reuse), if any.
    pub fn parent_manifest(&self) -> Option<&Manifest> {
        self.parent.as_ref()
    }

    /// Records `key = value` in the manifest's labels (e.g. the CBT checkpoint of this backup).
    pub fn set_label(&mut self, key: &str, value: &str) {
        self.opts.labels.insert(key.to_string(), value.to_string());
    }

    /// Writes volume `name` reading only the chunks that overlap `changed` (byte ranges
    /// `(start, length)` relative to the parent backup's image of the same volume); every other
    /// chunk reuses the parent's chunk id. `bytes_read` counts only what was read.
    pub async fn write_volume_changed(
        &mut self,
        name: &str,
        source: Arc<dyn VolumeSource>,
        changed: &[(u64, u64)],
    ) -> Result<VolumeStats> {
        check_name("volume", name)?;
        if self.volumes.iter().any(|v| v.name == name) {
            return Err(Error::Invalid(format!("volume `{name}` written twice")));
        }
        let repo = self.repo.clone();
        let cs = repo.config().chunk_size;
        let size = source.size();
        let n = chunk_count(size, cs);
        let parent_index = match &self.parent {
            Some(m) if m.volumes.iter().any(|v| v.name == name) => {
                match repo.load_index(m, name).await {
                    Ok(idx) if idx.chunk_size == cs && idx.size == size => Some(idx),
                    Ok(_) => {
                        tracing::warn!(
                            volume = name,
                            "parent index has another size or chunk size; reading every chunk"
                        );
                        None
                    }
                    Err(e) => {
                        tracing::warn!(volume = name, error = %e, "parent index unusable; reading every chunk");
                        None
                    }
                }
            }
            _ => None,
        };
        let mut dirty = vec![parent_index.is_none(); n as usize];
        for &(start, len) in changed {
            if len == 0 || start >= size {
                continue;
            }
            let first = start / u64::from(cs);
            let last = (start + len - 1).min(size - 1) / u64::from(cs);
            for i in first..=last {
                dirty[i as usize] = true;
            }
        }
        let known = self.known.clone();
        let suspect = self.suspect.clone();
        let parent_ids: Arc<Vec<ChunkId>> =
            Arc::new(parent_index.map(|i| i.chunks).unwrap_or_default());
        let dirty = Arc::new(dirty);

        let results: Vec<(u64, ChunkId, Got, usize)> = stream::iter(0..n)
            .map(|i| {
                let repo = repo.clone();
                let source = source.clone();
                let known = known.clone();
                let suspect = suspect.clone();
                let parent_ids = parent_ids.clone();
                let dirty = dirty.clone();
                async move {
                    let len = chunk_len(size, cs, i);
                    if !dirty[i as usize] {
                        let id = parent_ids[i as usize];
                        return Ok::<_, Error>((i, id, Got::Reused, len));
                    }
                    let data = source.read_at(i * u64::from(cs), len).await?;
                    let crypto = repo.crypto().clone();
                    let (data, id) = cpu(move || {
                        if is_all_zero(&data) {
                            Ok((data, None))
                        } else {
                            let id = crypto.chunk_id(&data);
                            Ok((data, Some(id)))
                        }
                    })
                    .await?;
                    let outcome = match id {
                        None => Outcome::Zero,
                        Some(id) => {
                            let is_known = known.lock().map(|k| k.contains(&id)).unwrap_or(false);
                            let present =
                                !suspect.contains(&id) && repo.store().exists(&id.key()).await?;
                            if is_known || present {
                                Outcome::Known
                            } else {
                                let crypto = repo.crypto().clone();
                                let key = id.key();
                                let blob =
                                    cpu(move || crypto.encode_blob(CHUNK_MAGIC, &key, &data, true))
                                        .await?;
                                let stored = blob.len() as u64;
                                repo.store().put(&id.key(), Bytes::from(blob)).await?;
                                Outcome::Uploaded { stored }
                            }
                        }
                    };
                    if let (Some(id), Ok(mut k)) = (id, known.lock()) {
                        k.insert(id);
                    }
                    Ok((
                        i,
                        id.unwrap_or(ChunkId::ZERO_MARKER),
                        Got::Read(outcome),
                        len,
                    ))
                }
            })
            .buffer_unordered(self.opts.concurrency.max(1))
            .try_collect()
            .await?;

        let mut chunks = vec![ChunkId::ZERO_MARKER; n as usize];
        let mut entry = VolumeEntry {
            name: name.to_string(),
            size,
            chunk_size: cs,
            chunks: n,
            zero_chunks: 0,
            new_chunks: 0,
            bytes_read: 0,
            bytes_new: 0,
            bytes_stored: 0,
            index_digest: String::new(),
            image_digest: String::new(),
        };
        for (i, id, got, len) in results {
            chunks[i as usize] = id;
            match got {
                Got::Reused if id.is_zero_marker() => entry.zero_chunks += 1,
                Got::Reused => {}
                Got::Read(Outcome::Zero) => entry.zero_chunks += 1,
                Got::Read(Outcome::Known) => entry.bytes_read += len as u64,
                Got::Read(Outcome::Uploaded { stored }) => {
                    entry.bytes_read += len as u64;
                    entry.new_chunks += 1;
                    entry.bytes_new += len as u64;
                    entry.bytes_stored += stored;
                }
            }
        }
        let index = Index {
            chunk_size: cs,
            size,
            chunks,
        };
        entry.image_digest = image_digest(&repo, &index);
        entry.index_digest = repo
            .put_object(&self.target.index_key(name), index.encode())
            .await?;
        self.volumes.push(entry.clone());
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::InitOptions;
    use crate::{BackupOptions, FileSource, LocalStore, Repository, RestoreOptions};

    const CS: usize = 64 * 1024;

    fn image(n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n * CS];
        for (i, c) in v.chunks_mut(CS).enumerate() {
            if i != 3 {
                // chunk 3 stays zero
                c.iter_mut()
                    .enumerate()
                    .for_each(|(j, b)| *b = (i * 31 + j % 251) as u8);
            }
        }
        v
    }

    async fn backup(
        repo: &Arc<Repository>,
        file: &std::path::Path,
        changed: Option<&[(u64, u64)]>,
    ) -> (VolumeStats, Manifest) {
        let mut s = BackupSession::start(repo.clone(), "ns", "vm", BackupOptions::default())
            .await
            .unwrap();
        let src = Arc::new(FileSource::open(file).unwrap());
        let st = match changed {
            Some(c) => s.write_volume_changed("v", src, c).await.unwrap(),
            None => s.write_volume("v", src, None).await.unwrap(),
        };
        s.set_label("k", "x");
        (st, s.commit().await.unwrap())
    }

    async fn restored(repo: &Arc<Repository>, m: &Manifest, dir: &std::path::Path) -> Vec<u8> {
        let out = dir.join(format!("out-{}", m.id));
        crate::restore::restore_to_file(repo, m, "v", &out, &RestoreOptions::default(), None)
            .await
            .unwrap();
        std::fs::read(out).unwrap()
    }

    #[tokio::test]
    async fn unchanged_chunks_are_reused_without_reading() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::new(dir.path().join("repo")));
        let repo = Arc::new(
            Repository::init(
                store,
                InitOptions {
                    chunk_size: CS as u32,
                    ..Default::default()
                },
            )
            .await
            .unwrap(),
        );
        let file = dir.path().join("disk");
        let mut img = image(8);
        std::fs::write(&file, &img).unwrap();
        let (_, m1) = backup(&repo, &file, None).await;

        // Chunks 2 and 5 change; the extent list names both.
        img[2 * CS + 10] ^= 0xff;
        img[5 * CS] ^= 0xff;
        std::fs::write(&file, &img).unwrap();
        let (st, m2) = backup(
            &repo,
            &file,
            Some(&[(2 * CS as u64 + 10, 1), (5 * CS as u64, 1)]),
        )
        .await;
        assert_eq!(st.bytes_read, 2 * CS as u64);
        assert_eq!(st.zero_chunks, 1);
        assert_eq!(m2.labels["k"], "x");
        assert_eq!(m2.parent.as_ref(), Some(&m1.id));
        assert_eq!(restored(&repo, &m2, dir.path()).await, img);

        // Proof that unlisted chunks are not read: a change the list omits is not seen.
        let before = img.clone();
        img[7 * CS + 1] ^= 0xff;
        std::fs::write(&file, &img).unwrap();
        let (st, m3) = backup(&repo, &file, Some(&[])).await;
        assert_eq!(st.bytes_read, 0);
        assert_eq!(restored(&repo, &m3, dir.path()).await, before);
    }

    #[tokio::test]
    async fn without_a_usable_parent_index_every_chunk_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::new(dir.path().join("repo")));
        let repo = Arc::new(
            Repository::init(
                store,
                InitOptions {
                    chunk_size: CS as u32,
                    ..Default::default()
                },
            )
            .await
            .unwrap(),
        );
        let file = dir.path().join("disk");
        let img = image(4);
        std::fs::write(&file, &img).unwrap();
        // No parent at all.
        let (st, m1) = backup(&repo, &file, Some(&[])).await;
        assert_eq!(st.bytes_read, 3 * CS as u64, "3 non-zero chunks read");
        assert_eq!(restored(&repo, &m1, dir.path()).await, img);
        // Parent with another volume size.
        let img = image(5);
        std::fs::write(&file, &img).unwrap();
        let (st, m2) = backup(&repo, &file, Some(&[])).await;
        assert_eq!(st.bytes_read, 4 * CS as u64);
        assert_eq!(restored(&repo, &m2, dir.path()).await, img);
    }
}
