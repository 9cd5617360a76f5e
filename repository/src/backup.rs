//! The backup writer: a [`BackupSession`] holds a shared lock, writes one or more volumes
//! (chunks, then the index), optionally the resources archive, and commits with the manifest.
//!
//! Per volume, chunk-aligned ranges are read from the [`VolumeSource`] with `concurrency` reads
//! in flight. Each chunk is checked for zeros and hashed on the blocking pool; zero chunks are
//! only marked; chunks known from the parent backup's indexes or already present in the store
//! are skipped; the rest are compressed/encrypted on the blocking pool and uploaded. At most
//! `concurrency` chunks (each raw + encoded, ≤ 2 × chunk size) are in memory at once, so peak
//! memory is about `2 × concurrency × chunk size` whatever the volume size (128 MiB at the
//! defaults). If the process dies, no manifest is written; uploaded chunks are found by the
//! existence check of the next backup and reused.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::Utc;
use futures::stream::{self, StreamExt, TryStreamExt};
use indicatif::ProgressBar;

use crate::error::{Error, Result};
use crate::format::{
    check_name, chunk_count, chunk_len, is_all_zero, BackupId, ChunkId, Consistency, Index,
    Manifest, ResourcesEntry, VolumeEntry, CHUNK_MAGIC, REPO_FORMAT_VERSION,
};
use crate::locks::{LockGuard, LockKind};
use crate::repository::{cpu, BackupRef, Repository};
use crate::source::VolumeSource;

/// Chunk reuse from a changed-extent list (changed block tracking), see its module docs.
mod reuse;

/// How to choose the parent backup used for deduplication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ParentPolicy {
    /// The newest committed backup of the same VM.
    #[default]
    Latest,
    /// No parent (still skips chunks already in the store).
    None,
    /// A given backup of the same VM.
    Id(BackupId),
}

/// Options of a backup.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Chunks in flight per volume.
    pub concurrency: usize,
    pub parent: ParentPolicy,
    pub consistency: Consistency,
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            concurrency: default_concurrency(),
            parent: ParentPolicy::Latest,
            consistency: Consistency::CrashConsistent,
            labels: Default::default(),
        }
    }
}

/// Chunks in flight by default: enough to keep the CPUs and the store busy.
pub fn default_concurrency() -> usize {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    (cpus * 4).clamp(8, 32)
}

/// Statistics of one written volume.
pub type VolumeStats = VolumeEntry;

/// An open backup of one VM.
#[derive(Debug)]
pub struct BackupSession {
    repo: Arc<Repository>,
    lock: Option<LockGuard>,
    target: BackupRef,
    started: chrono::DateTime<Utc>,
    parent: Option<Manifest>,
    known: Arc<Mutex<HashSet<ChunkId>>>,
    /// Chunks recorded corrupt by `maintain`: stored again when read, whatever the store holds.
    suspect: Arc<HashSet<ChunkId>>,
    volumes: Vec<VolumeEntry>,
    resources: Option<ResourcesEntry>,
    opts: BackupOptions,
}

enum Outcome {
    Zero,
    Known,
    Uploaded { stored: u64 },
}

impl BackupSession {
    /// Takes a shared lock, picks the parent and its known chunks.
    pub async fn start(
        repo: Arc<Repository>,
        namespace: &str,
        vm: &str,
        opts: BackupOptions,
    ) -> Result<BackupSession> {
        check_name("namespace", namespace)?;
        check_name("vm", vm)?;
        let lock = repo
            .lock(LockKind::Shared, &format!("backup {namespace}/{vm}"))
            .await?;
        let (parent, mut known) = match Self::load_parent(&repo, namespace, vm, &opts.parent).await
        {
            Ok(p) => p,
            Err(e) => {
                lock.release().await;
                return Err(e);
            }
        };
        // Chunks `maintain` found corrupt are uploaded again when this backup reads their data
        // (self-healing); a state that cannot be read only costs the healing.
        let suspect = match crate::maintain::MaintenanceState::load(&repo).await {
            Ok(state) => state.corrupt_ids().into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "maintenance state unreadable: corrupt chunks will not be re-uploaded by this backup");
                HashSet::new()
            }
        };
        known.retain(|c| !suspect.contains(c));
        let target = BackupRef {
            namespace: namespace.to_string(),
            vm: vm.to_string(),
            id: BackupId::new_now(),
        };
        Ok(BackupSession {
            repo,
            lock: Some(lock),
            target,
            started: Utc::now(),
            parent,
            known: Arc::new(Mutex::new(known)),
            suspect: Arc::new(suspect),
            volumes: Vec::new(),
            resources: None,
            opts,
        })
    }

    async fn load_parent(
        repo: &Repository,
        namespace: &str,
        vm: &str,
        policy: &ParentPolicy,
    ) -> Result<(Option<Manifest>, HashSet<ChunkId>)> {
        let parent_ref = match policy {
            ParentPolicy::None => None,
            ParentPolicy::Latest => repo.latest(namespace, vm).await?,
            ParentPolicy::Id(id) => {
                Some(repo.find_backup(&format!("{namespace}/{vm}/{id}")).await?)
            }
        };
        let mut known = HashSet::new();
        let Some(r) = parent_ref else {
            return Ok((None, known));
        };
        let m = repo.load_manifest(&r).await?;
        for v in &m.volumes {
            // A broken parent index only costs dedup, never correctness.
            match repo.load_index(&m, &v.name).await {
                Ok(idx) => known.extend(idx.chunks.into_iter().filter(|c| !c.is_zero_marker())),
                Err(e) => {
                    tracing::warn!(error = %e, "parent index unusable; not deduplicating against it")
                }
            }
        }
        Ok((Some(m), known))
    }

    /// The backup being written.
    pub fn backup(&self) -> &BackupRef {
        &self.target
    }

    /// The parent used for dedup, if any.
    pub fn parent(&self) -> Option<&BackupId> {
        self.parent.as_ref().map(|m| &m.id)
    }

    /// Writes one volume: chunks, then its index. `progress` advances by bytes processed.
    pub async fn write_volume(
        &mut self,
        name: &str,
        source: Arc<dyn VolumeSource>,
        progress: Option<ProgressBar>,
    ) -> Result<VolumeStats> {
        check_name("volume", name)?;
        if self.volumes.iter().any(|v| v.name == name) {
            return Err(Error::Invalid(format!("volume `{name}` written twice")));
        }
        let repo = self.repo.clone();
        let cs = repo.config().chunk_size;
        let size = source.size();
        let n = chunk_count(size, cs);
        let known = self.known.clone();
        let suspect = self.suspect.clone();

        let results: Vec<(u64, ChunkId, Outcome, usize)> = stream::iter(0..n)
            .map(|i| {
                let repo = repo.clone();
                let source = source.clone();
                let known = known.clone();
                let suspect = suspect.clone();
                let progress = progress.clone();
                async move {
                    let len = chunk_len(size, cs, i);
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
                    if let Some(p) = &progress {
                        p.inc(len as u64);
                    }
                    Ok::<_, Error>((i, id.unwrap_or(ChunkId::ZERO_MARKER), outcome, len))
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
        for (i, id, outcome, len) in results {
            chunks[i as usize] = id;
            match outcome {
                Outcome::Zero => entry.zero_chunks += 1,
                Outcome::Known => entry.bytes_read += len as u64,
                Outcome::Uploaded { stored } => {
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

    /// Records how consistent the images turned out (e.g. a freeze that failed after the session
    /// was opened); the manifest gets it at [`BackupSession::commit`].
    pub fn set_consistency(&mut self, consistency: Consistency) {
        self.opts.consistency = consistency;
    }

    /// The consistency the manifest will record.
    pub fn consistency(&self) -> Consistency {
        self.opts.consistency
    }

    /// Stores the VM's Kubernetes objects as `resources.tar.zst` (`(file name, content)` pairs).
    pub async fn write_resources(&mut self, files: Vec<(String, Vec<u8>)>) -> Result<()> {
        let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
        let archive = cpu(move || build_resources(&files)).await?;
        let digest = self
            .repo
            .put_object(&self.target.resources_key(), archive)
            .await?;
        self.resources = Some(ResourcesEntry {
            object_digest: digest,
            files: names,
        });
        Ok(())
    }

    /// Writes the manifest (the commit point) and releases the lock.
    pub async fn commit(mut self) -> Result<Manifest> {
        let m = Manifest {
            format_version: REPO_FORMAT_VERSION,
            id: self.target.id.clone(),
            namespace: self.target.namespace.clone(),
            vm: self.target.vm.clone(),
            started: self.started,
            finished: Utc::now(),
            consistency: self.opts.consistency,
            parent: self.parent.as_ref().map(|p| p.id.clone()),
            volumes: std::mem::take(&mut self.volumes),
            resources: self.resources.take(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            labels: self.opts.labels.clone(),
        };
        let res = self
            .repo
            .put_object(&self.target.manifest_key(), m.encode())
            .await;
        if let Some(lock) = self.lock.take() {
            lock.release().await;
        }
        res.map(|_| m)
    }

    /// Gives up without a manifest (objects written so far are reused or collected by gc).
    pub async fn abort(mut self) {
        if let Some(lock) = self.lock.take() {
            lock.release().await;
        }
    }
}

/// BLAKE3 over the chunk ids in order, zero chunks as the id of a zero chunk of their length.
pub fn image_digest(repo: &Repository, index: &Index) -> String {
    let full_zero = repo.zero_chunk_id(index.chunk_size as usize);
    let mut h = blake3::Hasher::new();
    let n = index.chunks.len() as u64;
    for (i, id) in index.chunks.iter().enumerate() {
        if id.is_zero_marker() {
            let len = chunk_len(index.size, index.chunk_size, i as u64);
            if len == index.chunk_size as usize {
                h.update(&full_zero.0);
            } else {
                h.update(&repo.zero_chunk_id(len).0);
            }
        } else {
            h.update(&id.0);
        }
    }
    h.update(&n.to_le_bytes());
    h.finalize().to_hex().to_string()
}

/// A tar of the files, zstd-compressed.
fn build_resources(files: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    let err = |e: std::io::Error| Error::Codec(format!("building resources.tar.zst: {e}"));
    let enc = zstd::Encoder::new(Vec::new(), 3).map_err(err)?;
    let mut tar = tar::Builder::new(enc);
    for (name, data) in files {
        if name.is_empty() || name.contains("..") || name.starts_with('/') {
            return Err(Error::Invalid(format!(
                "invalid resource file name `{name}`"
            )));
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        tar.append_data(&mut header, name, &data[..]).map_err(err)?;
    }
    let enc = tar.into_inner().map_err(err)?;
    enc.finish().map_err(err)
}

/// Reads `resources.tar.zst` back into `(file name, content)` pairs.
pub fn parse_resources(key: &str, archive: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    use std::io::Read;
    let dec = zstd::Decoder::new(archive).map_err(|e| Error::corrupt(key, e.to_string()))?;
    let mut tar = tar::Archive::new(dec);
    let mut out = Vec::new();
    let entries = tar
        .entries()
        .map_err(|e| Error::corrupt(key, e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::corrupt(key, e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| Error::corrupt(key, e.to_string()))?
            .to_string_lossy()
            .to_string();
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| Error::corrupt(key, e.to_string()))?;
        out.push((name, data));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_roundtrip() {
        let files = vec![
            ("vm.yaml".to_string(), b"kind: VirtualMachine\n".to_vec()),
            (
                "pvc/disk0.yaml".to_string(),
                b"kind: PersistentVolumeClaim\n".to_vec(),
            ),
        ];
        let a = build_resources(&files).unwrap();
        assert_eq!(parse_resources("r", &a).unwrap(), files);
        assert!(build_resources(&[("../x".into(), vec![])]).is_err());
        assert!(parse_resources("r", b"garbage").is_err());
    }
}
