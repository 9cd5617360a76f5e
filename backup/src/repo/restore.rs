//! The reader: restores a volume of a committed backup to a file, a block device or any async
//! writer. Chunks are fetched in parallel and each is verified against its id before a single
//! byte of it is written. Zero chunks become holes in a fresh regular file (it is sized with
//! `set_len`, which leaves holes), and are written as zeros on block devices (whose old
//! contents must be overwritten). At the end the image digest recorded in the manifest is
//! recomputed from the written target (re-read) and compared.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::stream::{self, StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::backup::image_digest;
use super::format::{chunk_len, is_all_zero, ChunkId, Index, Manifest};
use super::repository::{cpu, Repository};
use crate::error::{Error, Result};

/// Options of a restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Chunk fetches in flight.
    pub concurrency: usize,
    /// Re-read the target at the end and check the image digest.
    pub check_digest: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            concurrency: super::backup::default_concurrency(),
            check_digest: true,
        }
    }
}

/// Statistics of a restore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreStats {
    pub size: u64,
    pub chunks: u64,
    pub zero_chunks: u64,
    pub bytes_fetched: u64,
}

/// Restores `volume` of the backup `m` to `target` (a new or existing regular file, or a block
/// device at least as large as the volume). A regular file that this call created is removed
/// again if the restore fails, so a failed restore never leaves a plausible-looking image.
pub async fn restore_to_file(
    repo: &Arc<Repository>,
    m: &Manifest,
    volume: &str,
    target: &Path,
    opts: &RestoreOptions,
    progress: Option<ProgressBar>,
) -> Result<RestoreStats> {
    let index = repo.load_index(m, volume).await?;
    let existed = target.exists();
    let res = restore_inner(repo, m, volume, &index, target, opts, progress).await;
    if res.is_err() && !existed {
        let _ = std::fs::remove_file(target);
    }
    res
}

async fn restore_inner(
    repo: &Arc<Repository>,
    m: &Manifest,
    volume: &str,
    index: &Index,
    target: &Path,
    opts: &RestoreOptions,
    progress: Option<ProgressBar>,
) -> Result<RestoreStats> {
    use std::os::unix::fs::FileTypeExt;
    let path = target.to_path_buf();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io("opening restore target", &path, e))?;
    let md = file
        .metadata()
        .map_err(|e| Error::io("reading metadata of restore target", &path, e))?;
    let is_block = md.file_type().is_block_device();
    if is_block {
        use std::io::{Seek, SeekFrom};
        let mut f = &file;
        let dev_size = f
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::io("finding the size of", &path, e))?;
        if dev_size < index.size {
            return Err(Error::Invalid(format!(
                "block device `{}` has {dev_size} bytes, the volume needs {}",
                path.display(),
                index.size
            )));
        }
    } else {
        // Truncate to zero first so every zero chunk becomes a hole.
        file.set_len(0)
            .and_then(|_| file.set_len(index.size))
            .map_err(|e| Error::io("sizing restore target", &path, e))?;
    }
    let file = Arc::new(file);
    let cs = index.chunk_size;
    let mut stats = RestoreStats {
        size: index.size,
        chunks: index.chunks.len() as u64,
        ..Default::default()
    };
    let fetched: Vec<u64> = stream::iter(index.chunks.iter().copied().enumerate())
        .map(|(i, id)| {
            let repo = repo.clone();
            let file = file.clone();
            let path = path.clone();
            let progress = progress.clone();
            async move {
                let offset = i as u64 * u64::from(cs);
                let len = chunk_len(index.size, cs, i as u64);
                let data = if id.is_zero_marker() {
                    if !is_block {
                        if let Some(p) = &progress {
                            p.inc(len as u64);
                        }
                        return Ok(0);
                    }
                    vec![0u8; len]
                } else {
                    let d = repo.get_chunk(&id).await?;
                    if d.len() != len {
                        return Err(Error::corrupt(
                            id.key(),
                            format!(
                                "chunk has {} bytes, index position {i} needs {len}",
                                d.len()
                            ),
                        ));
                    }
                    d
                };
                let n = if id.is_zero_marker() { 0 } else { len as u64 };
                tokio::task::spawn_blocking(move || file.write_all_at(&data, offset))
                    .await
                    .map_err(|e| Error::Invalid(format!("writer task failed: {e}")))?
                    .map_err(|e| Error::io("writing restore target", &path, e))?;
                if let Some(p) = &progress {
                    p.inc(len as u64);
                }
                Ok::<u64, Error>(n)
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect()
        .await?;
    stats.bytes_fetched = fetched.iter().sum();
    stats.zero_chunks = index.chunks.iter().filter(|c| c.is_zero_marker()).count() as u64;
    let f = file.clone();
    let p2 = path.clone();
    tokio::task::spawn_blocking(move || f.sync_all())
        .await
        .map_err(|e| Error::Invalid(format!("sync task failed: {e}")))?
        .map_err(|e| Error::io("syncing restore target", &p2, e))?;

    if opts.check_digest {
        let expected = &m
            .volumes
            .iter()
            .find(|v| v.name == volume)
            .ok_or_else(|| Error::corrupt(m.prefix(), "volume vanished from manifest"))?
            .image_digest;
        let actual = digest_of_file(repo, file, index.size, cs, opts.concurrency, &path).await?;
        if &actual != expected {
            return Err(Error::DigestMismatch {
                id: m.id.to_string(),
                volume: volume.to_string(),
                target: path,
                expected: expected.clone(),
                actual,
            });
        }
    }
    Ok(stats)
}

/// Recomputes the image digest of the first `size` bytes of `file`.
async fn digest_of_file(
    repo: &Arc<Repository>,
    file: Arc<std::fs::File>,
    size: u64,
    cs: u32,
    concurrency: usize,
    path: &Path,
) -> Result<String> {
    let n = super::format::chunk_count(size, cs);
    let mut ids: Vec<(u64, ChunkId)> = stream::iter(0..n)
        .map(|i| {
            let file = file.clone();
            let crypto = repo.crypto().clone();
            let path: PathBuf = path.to_path_buf();
            async move {
                cpu(move || {
                    let len = chunk_len(size, cs, i);
                    let mut buf = vec![0u8; len];
                    file.read_exact_at(&mut buf, i * u64::from(cs))
                        .map_err(|e| Error::io("re-reading restore target", &path, e))?;
                    let id = if is_all_zero(&buf) {
                        ChunkId::ZERO_MARKER
                    } else {
                        crypto.chunk_id(&buf)
                    };
                    Ok((i, id))
                })
                .await
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    ids.sort_by_key(|(i, _)| *i);
    let index = Index {
        chunk_size: cs,
        size,
        chunks: ids.into_iter().map(|(_, id)| id).collect(),
    };
    Ok(image_digest(repo, &index))
}

/// Streams `volume` in order to `out` (e.g. an upload body); zero chunks are written as zeros.
/// Fetches run ahead in parallel, bounded by `concurrency`. Checks the image digest at the end
/// (the consumer must discard the output when this returns an error).
pub async fn restore_to_writer<W: AsyncWrite + Unpin>(
    repo: &Arc<Repository>,
    m: &Manifest,
    volume: &str,
    out: &mut W,
    opts: &RestoreOptions,
) -> Result<RestoreStats> {
    let index = repo.load_index(m, volume).await?;
    let cs = index.chunk_size;
    let mut stats = RestoreStats {
        size: index.size,
        chunks: index.chunks.len() as u64,
        ..Default::default()
    };
    let mut chunks = stream::iter(index.chunks.iter().copied().enumerate())
        .map(|(i, id)| {
            let repo = repo.clone();
            let len = chunk_len(index.size, cs, i as u64);
            async move {
                if id.is_zero_marker() {
                    Ok::<_, Error>((id, vec![0u8; len]))
                } else {
                    Ok((id, repo.get_chunk(&id).await?))
                }
            }
        })
        .buffered(opts.concurrency.max(1));
    while let Some(res) = chunks.next().await {
        let (id, data) = res?;
        if id.is_zero_marker() {
            stats.zero_chunks += 1;
        } else {
            stats.bytes_fetched += data.len() as u64;
        }
        out.write_all(&data)
            .await
            .map_err(|e| Error::io("writing restore output", PathBuf::from("<stream>"), e))?;
    }
    out.flush()
        .await
        .map_err(|e| Error::io("flushing restore output", PathBuf::from("<stream>"), e))?;
    // Every chunk was verified against its id and written in index order, so the image digest
    // of what was written equals the digest of the index.
    let expected = m
        .volumes
        .iter()
        .find(|v| v.name == volume)
        .map(|v| v.image_digest.clone())
        .unwrap_or_default();
    let actual = image_digest(repo, &index);
    if actual != expected {
        return Err(Error::DigestMismatch {
            id: m.id.to_string(),
            volume: volume.to_string(),
            target: PathBuf::from("<stream>"),
            expected,
            actual,
        });
    }
    Ok(stats)
}
