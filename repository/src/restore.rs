//! The reader: restores a volume of a committed backup to a file, a block device or any async
//! writer. Chunks are fetched in parallel and each is verified against its id before a single
//! byte of it is written. Zero chunks become holes in a fresh regular file (it is sized with
//! `set_len`, which leaves holes), and are written as zeros on block devices (whose old
//! contents must be overwritten).
//!
//! Whole-image check: the image digest is a function of the chunk ids in index order (see
//! [`crate`]), and every chunk written was verified to hash to its id, so the digest of
//! what was written is recomputed from the index and compared with the manifest without reading
//! the target again. [`RestoreOptions::check_digest`] additionally re-reads the target after
//! the final fsync and hashes it (catches a target that does not return what was written, at
//! the cost of reading the whole image once more).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::stream::{self, StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::backup::image_digest;
use crate::error::{Error, Result};
use crate::format::{chunk_len, is_all_zero, ChunkId, Index, Manifest};
use crate::repository::{cpu, Repository};

/// Options of a restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Chunk fetches in flight.
    pub concurrency: usize,
    /// Also re-read the whole target after writing and check its image digest (the digest of
    /// the verified chunks is always checked; this guards against a target that does not read
    /// back what was written, at the cost of a second pass over the image).
    pub check_digest: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            concurrency: default_restore_concurrency(),
            check_digest: false,
        }
    }
}

/// Chunk fetches in flight by default. A restore waits on the store more than on the CPU
/// (fetch, then decrypt/decompress/hash, then write), so it runs more chunks at once than a
/// backup: 8 per CPU, 16..32 (≤ 2 × 32 × 4 MiB in memory at the default chunk size).
pub fn default_restore_concurrency() -> usize {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    (cpus * 8).clamp(16, 32)
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
    let direct = open_direct(&path).map(Arc::new);
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
            let direct = direct.clone();
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
                let direct = direct.clone();
                tokio::task::spawn_blocking(move || {
                    write_chunk(&file, direct.as_deref(), &data, offset)
                })
                .await
                .map_err(|e| Error::Internal(format!("writer task failed: {e}")))?
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
        .map_err(|e| Error::Internal(format!("sync task failed: {e}")))?
        .map_err(|e| Error::io("syncing restore target", &p2, e))?;

    let expected = &m
        .volumes
        .iter()
        .find(|v| v.name == volume)
        .ok_or_else(|| Error::corrupt(m.prefix(), "volume vanished from manifest"))?
        .image_digest;
    // Every chunk written was verified against its id, so this is the digest of the written
    // image (see the module docs).
    let written = image_digest(repo, index);
    if &written != expected {
        return Err(Error::DigestMismatch {
            id: m.id.to_string(),
            volume: volume.to_string(),
            target: path,
            expected: expected.clone(),
            actual: written,
        });
    }
    if opts.check_digest {
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

/// Alignment of buffers, offsets and lengths of `O_DIRECT` writes (covers 512-byte and 4 KiB
/// logical blocks).
const DIRECT_ALIGN: usize = 4096;

/// A second, `O_DIRECT` handle on the target for the chunk writes, or `None` where the file
/// system refuses it (tmpfs, some FUSE/network file systems). Writing restored chunks around
/// the page cache cost a third of a restore's CPU time (the kernel copying every byte into
/// fresh cache pages, then writing them back) on the benchmark machine; direct writes go to
/// the device from an aligned buffer. The final `fsync` still makes the image durable.
fn open_direct(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

/// Writes one chunk at `offset`: through `direct` when the length and offset are block
/// aligned (the data is copied into an aligned buffer first), otherwise — a short last chunk,
/// or a device that rejects the direct write with `EINVAL` — through the buffered `file`.
fn write_chunk(
    file: &std::fs::File,
    direct: Option<&std::fs::File>,
    data: &[u8],
    offset: u64,
) -> std::io::Result<()> {
    if let Some(d) = direct {
        if data.len() % DIRECT_ALIGN == 0 && offset % DIRECT_ALIGN as u64 == 0 {
            // Only the bytes before the aligned start are zeroed, not the whole buffer.
            let mut buf: Vec<u8> = Vec::with_capacity(data.len() + DIRECT_ALIGN);
            let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
            buf.resize(start.min(DIRECT_ALIGN), 0);
            buf.extend_from_slice(data);
            if let Some(aligned) = buf.get(start..start + data.len()) {
                match d.write_all_at(aligned, offset) {
                    Ok(()) => return Ok(()),
                    // Alignment rules stricter than ours: write this chunk buffered instead.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    file.write_all_at(data, offset)
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
    let n = crate::format::chunk_count(size, cs);
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::backup::{BackupOptions, BackupSession};
    use crate::repository::InitOptions;
    use crate::source::FileSource;
    use crate::store::{LocalStore, Store};

    #[test]
    fn chunk_writes_direct_aligned_and_buffered_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.img");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let direct = open_direct(&path);
        let a: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let tail: Vec<u8> = (0..1000).map(|i| (i % 7) as u8).collect();
        write_chunk(&file, direct.as_ref(), &a, 64 * 1024).unwrap();
        write_chunk(&file, direct.as_ref(), &tail, 128 * 1024).unwrap();
        // Unaligned offset: must go through the buffered handle.
        write_chunk(&file, direct.as_ref(), &tail, 10).unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), 128 * 1024 + 1000);
        assert_eq!(&back[10..1010], &tail[..]);
        assert!(back[1010..64 * 1024].iter().all(|b| *b == 0));
        assert_eq!(&back[64 * 1024..128 * 1024], &a[..]);
        assert_eq!(&back[128 * 1024..], &tail[..]);
    }

    async fn repo_with_backup(dir: &Path, data: &[u8]) -> (Arc<Repository>, Manifest) {
        repo_with_keyed_backup(dir, data, None).await
    }

    /// A repository in `dir/repo` (64 KiB chunks; encrypted with `key`, cheap KDF) holding one
    /// backup ns/vm of `data` as volume `disk0`.
    pub(crate) async fn repo_with_keyed_backup(
        dir: &Path,
        data: &[u8],
        key: Option<&[u8]>,
    ) -> (Arc<Repository>, Manifest) {
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.join("repo")));
        let opts = InitOptions {
            chunk_size: 64 * 1024,
            key: key.map(|k| k.to_vec()),
            kdf_memory_kib: 256,
            kdf_iterations: 1,
            ..Default::default()
        };
        let repo = Arc::new(Repository::init(store, opts).await.unwrap());
        let img = dir.join("src.img");
        std::fs::write(&img, data).unwrap();
        let mut s = BackupSession::start(repo.clone(), "ns", "vm", BackupOptions::default())
            .await
            .unwrap();
        s.write_volume("disk0", Arc::new(FileSource::open(&img).unwrap()), None)
            .await
            .unwrap();
        let m = s.commit().await.unwrap();
        (repo, m)
    }

    #[tokio::test]
    async fn restore_checks_image_digest_without_and_with_reread() {
        let dir = tempfile::tempdir().unwrap();
        let mut data: Vec<u8> = (0..5 * 64 * 1024 + 777)
            .map(|i| (i * 31 % 253) as u8)
            .collect();
        data[64 * 1024..2 * 64 * 1024].fill(0);
        let (repo, m) = repo_with_backup(dir.path(), &data).await;
        for check_digest in [false, true] {
            let out = dir.path().join(format!("out-{check_digest}.img"));
            let opts = RestoreOptions {
                concurrency: 3,
                check_digest,
            };
            let stats = restore_to_file(&repo, &m, "disk0", &out, &opts, None)
                .await
                .unwrap();
            assert_eq!(stats.zero_chunks, 1);
            assert_eq!(std::fs::read(&out).unwrap(), data);
        }
        // A manifest whose image digest disagrees with the index is refused even without the
        // re-read, and the target it created is removed.
        let mut bad = m.clone();
        bad.volumes[0].image_digest = "00".repeat(32);
        let out = dir.path().join("bad.img");
        let err = restore_to_file(&repo, &bad, "disk0", &out, &RestoreOptions::default(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        assert!(!out.exists());
    }
}
