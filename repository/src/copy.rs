//! `copy`: committed backups of one repository into another (another bucket, region or disk).
//!
//! Invariants:
//! * **Verified on the way.** Every chunk is read from the source and decoded (decryption is
//!   authenticated) and its id recomputed before anything is written; indexes and resources are
//!   checked against the digests in the source manifest; nothing unchecked reaches the target.
//! * **Manifest last.** Per backup: chunks, then indexes and resources, then the manifest, so a
//!   killed copy leaves no half-copied backup visible; its chunks are found present by the next
//!   run (resumable) and its other leftovers are collected by the target's gc after the grace
//!   period, like those of a killed backup.
//! * **Idempotent.** A backup whose manifest exists in the target is skipped; a chunk the target
//!   has is not transferred.
//! * **Never deletes** anything in either repository.
//!
//! Chunk ids: when both repositories derive ids alike (both unencrypted, or encrypted with the
//! same chunk-id key: a target created with `init --copy-chunker-params-from`), ids, indexes and
//! image digests are kept, and only chunks the target lacks are read from the source. Otherwise
//! every chunk of every copied backup is read, decoded and hashed again with the target's id key
//! ("re-id"): the transfer from the source is not deduplicated (the target still stores each
//! distinct chunk once). When such a target also has another chunk size, every volume is read
//! and cut again at the target's chunk size ("re-chunk", same read cost), so the copies
//! deduplicate against backups written directly into the target. (Same ids with another chunk
//! size — two unencrypted repositories — keep the source's chunks: each index carries its own
//! chunk size.)

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::backup::image_digest;
use crate::error::{Error, Result};
use crate::format::{chunk_count, chunk_len, ChunkId, Index, Manifest, CHUNK_MAGIC};
use crate::locks::LockKind;
use crate::repository::{cpu, BackupRef, Repository};
use crate::volume_reader::{VolumeReader, VolumeReaderOptions};

/// How chunk ids carry over from the source to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdMode {
    /// Both repositories compute the same id for the same bytes: ids are kept.
    Same,
    /// Every chunk is hashed again with the target's id key (same chunk size).
    Reid,
    /// The target names chunks differently *and* uses another chunk size: every volume is
    /// read from the source and cut again at the target's chunk size.
    Rechunk,
}

/// Whether `dst` names chunks like `src` (same id derivation; the chunk size does not matter).
pub fn id_mode(src: &Repository, dst: &Repository) -> IdMode {
    const PROBE: &[u8] = b"virtguard copy: chunk id probe";
    if src.crypto().chunk_id(PROBE) == dst.crypto().chunk_id(PROBE) {
        IdMode::Same
    } else if src.config().chunk_size == dst.config().chunk_size {
        IdMode::Reid
    } else {
        IdMode::Rechunk
    }
}

/// Options of [`copy_backups`].
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Chunks in flight.
    pub concurrency: usize,
}

/// What a copy did.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CopyReport {
    /// `same` or `reid` (see the module docs).
    pub id_mode: Option<IdMode>,
    /// Backups copied by this run.
    pub copied: Vec<String>,
    /// Backups the target already had.
    pub present: Vec<String>,
    /// Chunks written to the target.
    pub chunks_copied: u64,
    /// Distinct chunks of the copied backups the target already had.
    pub chunks_present: u64,
    /// Chunks read (and verified) from the source.
    pub chunks_read: u64,
    /// Stored bytes written to the target (chunks).
    pub bytes_written: u64,
}

/// Copies `refs` (committed backups of `src`) into `dst`, holding a shared lock on both.
/// `on_backup` is called before each backup is copied.
pub async fn copy_backups(
    src: &Arc<Repository>,
    dst: &Arc<Repository>,
    refs: &[BackupRef],
    opts: &CopyOptions,
    on_backup: &(dyn Fn(&BackupRef) + Sync),
) -> Result<CopyReport> {
    if src.config().id == dst.config().id {
        return Err(Error::Invalid(format!(
            "{} and {} are the same repository (id {}); copy needs another one as --to",
            src.location(),
            dst.location(),
            src.config().id
        )));
    }
    let src_lock = src.lock(LockKind::Shared, "copy (source)").await?;
    let dst_lock = match dst.lock(LockKind::Shared, "copy (target)").await {
        Ok(l) => l,
        Err(e) => {
            src_lock.release().await;
            return Err(e);
        }
    };
    let res = copy_locked(src, dst, refs, opts, on_backup).await;
    dst_lock.release().await;
    src_lock.release().await;
    res
}

async fn copy_locked(
    src: &Arc<Repository>,
    dst: &Arc<Repository>,
    refs: &[BackupRef],
    opts: &CopyOptions,
    on_backup: &(dyn Fn(&BackupRef) + Sync),
) -> Result<CopyReport> {
    let mode = id_mode(src, dst);
    let mut report = CopyReport {
        id_mode: Some(mode),
        ..Default::default()
    };
    let mut todo = Vec::new();
    for r in refs {
        if dst.store().exists(&r.manifest_key()).await? {
            report.present.push(r.to_string());
        } else {
            todo.push(r);
        }
    }
    if todo.is_empty() {
        return Ok(report);
    }
    // The target's chunks, listed once; chunks written by this run are added.
    let mut present: HashSet<String> = dst
        .store()
        .list("chunks/")
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect();
    // Source id → target id of the chunks this run has read (re-id only).
    let mut mapped: HashMap<ChunkId, ChunkId> = HashMap::new();
    for r in todo {
        on_backup(r);
        copy_one(
            src,
            dst,
            r,
            mode,
            opts,
            &mut present,
            &mut mapped,
            &mut report,
        )
        .await?;
        report.copied.push(r.to_string());
    }
    Ok(report)
}

/// The outcome of one chunk.
struct Moved {
    src: ChunkId,
    dst: ChunkId,
    written: Option<u64>,
}

#[allow(clippy::too_many_arguments)]
async fn copy_one(
    src: &Arc<Repository>,
    dst: &Arc<Repository>,
    r: &BackupRef,
    mode: IdMode,
    opts: &CopyOptions,
    present: &mut HashSet<String>,
    mapped: &mut HashMap<ChunkId, ChunkId>,
    report: &mut CopyReport,
) -> Result<()> {
    let m = src.load_manifest(r).await?;
    if mode == IdMode::Rechunk {
        return rechunk_one(src, dst, r, m, opts, present, report).await;
    }
    let mut indexes = Vec::new();
    let mut wanted: HashSet<ChunkId> = HashSet::new();
    for v in &m.volumes {
        let idx = src.load_index(&m, &v.name).await?;
        if image_digest(src, &idx) != v.image_digest {
            return Err(Error::corrupt(
                r.index_key(&v.name),
                "the index's image digest differs from the manifest's",
            ));
        }
        wanted.extend(idx.chunks.iter().filter(|c| !c.is_zero_marker()));
        indexes.push(idx);
    }
    // Chunks to read from the source: all the target lacks (same ids), or all not yet mapped.
    let mut to_read = Vec::new();
    for id in wanted {
        match mode {
            IdMode::Same if present.contains(&id.key()) => report.chunks_present += 1,
            IdMode::Reid | IdMode::Rechunk if mapped.contains_key(&id) => {
                report.chunks_present += 1
            }
            _ => to_read.push(id),
        }
    }
    let present_now = Arc::new(std::mem::take(present));
    let moved: Vec<Moved> = futures::stream::iter(to_read)
        .map(|id| {
            let (src, dst, present) = (src.clone(), dst.clone(), present_now.clone());
            async move { move_chunk(&src, &dst, id, mode, &present).await }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect()
        .await?;
    *present = Arc::try_unwrap(present_now).unwrap_or_else(|a| (*a).clone());
    for mv in moved {
        report.chunks_read += 1;
        match mv.written {
            Some(n) => {
                report.chunks_copied += 1;
                report.bytes_written += n;
            }
            None => report.chunks_present += 1,
        }
        present.insert(mv.dst.key());
        mapped.insert(mv.src, mv.dst);
    }

    // Indexes (ids mapped when re-id), resources, manifest last.
    let mut mapped_indexes = Vec::new();
    for idx in indexes {
        let idx = match mode {
            IdMode::Same => idx,
            IdMode::Reid | IdMode::Rechunk => Index {
                chunks: idx
                    .chunks
                    .iter()
                    .map(|c| match c.is_zero_marker() {
                        true => Ok(*c),
                        false => mapped.get(c).copied().ok_or_else(|| {
                            Error::Internal(format!("chunk {} of {r} was not copied", c.key()))
                        }),
                    })
                    .collect::<Result<_>>()?,
                ..idx
            },
        };
        mapped_indexes.push(idx);
    }
    finish(src, dst, r, m, mapped_indexes).await
}

/// Writes the indexes (in the manifest's volume order), the resources and the manifest (last)
/// of one copied backup.
async fn finish(
    src: &Repository,
    dst: &Repository,
    r: &BackupRef,
    m: Manifest,
    indexes: Vec<Index>,
) -> Result<()> {
    let mut out = m;
    for (v, idx) in out.volumes.iter_mut().zip(indexes) {
        v.chunk_size = idx.chunk_size;
        v.chunks = idx.chunks.len() as u64;
        v.zero_chunks = idx.chunks.iter().filter(|c| c.is_zero_marker()).count() as u64;
        v.image_digest = image_digest(dst, &idx);
        v.index_digest = dst.put_object(&r.index_key(&v.name), idx.encode()).await?;
    }
    if let Some(res) = &mut out.resources {
        let key = r.resources_key();
        let (raw, digest) = src.get_object(&key).await?;
        if digest != res.object_digest {
            return Err(Error::corrupt(
                key,
                "resources do not match the digest in the manifest",
            ));
        }
        res.object_digest = dst.put_object(&key, raw).await?;
    }
    dst.put_object(&r.manifest_key(), out.encode()).await?;
    Ok(())
}

/// Re-chunk: reads each volume of `m` through a [`VolumeReader`] (every chunk verified), cuts it
/// at the target's chunk size, and stores the pieces the target lacks.
async fn rechunk_one(
    src: &Arc<Repository>,
    dst: &Arc<Repository>,
    r: &BackupRef,
    m: Manifest,
    opts: &CopyOptions,
    present: &mut HashSet<String>,
    report: &mut CopyReport,
) -> Result<()> {
    let cs = dst.config().chunk_size;
    let mut indexes = Vec::new();
    for v in &m.volumes {
        let reader = VolumeReader::open(
            src.clone(),
            &m,
            &v.name,
            VolumeReaderOptions {
                cache_chunks: opts.concurrency.max(4),
                readahead: 4,
            },
        )
        .await?;
        let size = reader.size();
        let known = Arc::new(present.clone());
        let pieces: Vec<(ChunkId, Option<u64>)> = stream::iter(0..chunk_count(size, cs))
            .map(|i| {
                let (reader, dst, known) = (reader.clone(), dst.clone(), known.clone());
                async move {
                    let mut buf = vec![0u8; chunk_len(size, cs, i)];
                    let mut done = 0;
                    while done < buf.len() {
                        let n = reader
                            .read_at(i * u64::from(cs) + done as u64, &mut buf[done..])
                            .await?;
                        if n == 0 {
                            return Err(Error::corrupt(
                                r.index_key(&v.name),
                                "volume ended before its size",
                            ));
                        }
                        done += n;
                    }
                    if buf.iter().all(|b| *b == 0) {
                        return Ok((ChunkId::ZERO_MARKER, None));
                    }
                    let dc = dst.crypto().clone();
                    let (id, key, blob) = cpu(move || {
                        let id = dc.chunk_id(&buf);
                        let key = id.key();
                        let blob = match known.contains(&key) {
                            true => None,
                            false => Some(dc.encode_blob(CHUNK_MAGIC, &key, &buf, true)?),
                        };
                        Ok((id, key, blob))
                    })
                    .await?;
                    let Some(blob) = blob else {
                        return Ok((id, None));
                    };
                    let n = blob.len() as u64;
                    dst.store().put(&key, Bytes::from(blob)).await?;
                    Ok((id, Some(n)))
                }
            })
            .buffered(opts.concurrency.max(1))
            .try_collect()
            .await?;
        report.chunks_read += reader.stats().chunks_fetched;
        let mut chunks = Vec::with_capacity(pieces.len());
        for (id, written) in pieces {
            if !id.is_zero_marker() {
                match written {
                    Some(n) if present.insert(id.key()) => {
                        report.chunks_copied += 1;
                        report.bytes_written += n;
                    }
                    Some(_) => {}
                    None => report.chunks_present += 1,
                }
            }
            chunks.push(id);
        }
        indexes.push(Index {
            chunk_size: cs,
            size,
            chunks,
        });
    }
    finish(src, dst, r, m, indexes).await
}

/// Reads one chunk from the source, checks it, and writes it to the target unless present.
async fn move_chunk(
    src: &Repository,
    dst: &Repository,
    id: ChunkId,
    mode: IdMode,
    present: &HashSet<String>,
) -> Result<Moved> {
    let key = id.key();
    let stored = src.store().get(&key).await?;
    let (sc, dc) = (src.crypto().clone(), dst.crypto().clone());
    let verbatim = mode == IdMode::Same && !sc.is_encrypted() && !dc.is_encrypted();
    let (dst_id, raw) = cpu(move || {
        let raw = sc.decode_blob(CHUNK_MAGIC, &key, &stored)?;
        if sc.chunk_id(&raw) != id {
            return Err(Error::corrupt(key, "content does not match the chunk id"));
        }
        let dst_id = match mode {
            IdMode::Same => id,
            IdMode::Reid | IdMode::Rechunk => dc.chunk_id(&raw),
        };
        Ok((dst_id, (raw, stored)))
    })
    .await?;
    let dst_key = dst_id.key();
    if present.contains(&dst_key) {
        return Ok(Moved {
            src: id,
            dst: dst_id,
            written: None,
        });
    }
    let (raw, stored) = raw;
    let blob = if verbatim {
        stored
    } else {
        let (dc, k) = (dst.crypto().clone(), dst_key.clone());
        Bytes::from(cpu(move || dc.encode_blob(CHUNK_MAGIC, &k, &raw, true)).await?)
    };
    let n = blob.len() as u64;
    dst.store().put(&dst_key, blob).await?;
    Ok(Moved {
        src: id,
        dst: dst_id,
        written: Some(n),
    })
}
