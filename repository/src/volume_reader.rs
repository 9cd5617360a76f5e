//! Random access into one volume of a committed backup, without restoring it.
//!
//! [`VolumeReader`] maps a byte range of the volume onto the fixed-size chunk index (chunk
//! `i` covers `[i × chunk_size, (i + 1) × chunk_size)`) and fetches only the chunks a read
//! touches, each through [`Repository::get_chunk`] — so every byte handed out was verified
//! against its chunk id and decrypted by the one chunk decoder of the repository. All-zero
//! chunks are not stored and cost nothing: they read as zeros without a store request.
//!
//! Invariants:
//! * The index is the one the manifest commits to: its object digest is checked by
//!   [`Repository::load_index`], and [`VolumeReader::open`] also recomputes the image digest
//!   from the index and compares it with the manifest's.
//! * At most `cache_chunks + readahead` decoded chunks are held (a small LRU); a chunk being
//!   fetched is shared by every reader waiting for it, so it is fetched once.
//! * A read that touches a corrupt or missing chunk fails with the repository's error naming
//!   that chunk's key; other ranges of the volume stay readable (failed fetches are not
//!   cached, so a retry fetches again).
//! * Sequential reads (a read starting where the previous one ended) trigger read-ahead of
//!   the next non-zero chunks in the background: one chunk once a whole chunk has been read in
//!   order, growing with the run up to `readahead` chunks.
//!
//! [`BlockingVolumeReader`] is the synchronous face (`Read + Seek` and positional reads) for
//! parsers that are not async (partition tables, filesystems, FUSE): it blocks the calling
//! thread on the async reader, so it must be used from a blocking thread
//! (`tokio::task::spawn_blocking`, or a thread of its own), never from an async task.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::backup::image_digest;
use crate::error::{Error, Result};
use crate::format::{chunk_len, Index, Manifest};
use crate::repository::Repository;

/// Cache and read-ahead sizes.
#[derive(Debug, Clone, Copy)]
pub struct VolumeReaderOptions {
    /// Decoded chunks kept for reuse (besides those read ahead).
    pub cache_chunks: usize,
    /// Chunks fetched ahead of a sequential reader.
    pub readahead: usize,
}

impl Default for VolumeReaderOptions {
    /// 8 + 4 chunks: 48 MiB at the default 4 MiB chunk size.
    fn default() -> Self {
        VolumeReaderOptions {
            cache_chunks: 8,
            readahead: 4,
        }
    }
}

/// What a reader fetched so far (for summaries and benchmarks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Chunks fetched from the store (each verified and decoded once).
    pub chunks_fetched: u64,
    /// Decoded bytes of those chunks.
    pub bytes_fetched: u64,
    /// Reads of a chunk served from the cache (including chunks read ahead).
    pub cache_hits: u64,
    /// Reads of all-zero chunks (answered without the store).
    pub zero_reads: u64,
}

#[derive(Default)]
struct Counters {
    chunks_fetched: AtomicU64,
    bytes_fetched: AtomicU64,
    cache_hits: AtomicU64,
    zero_reads: AtomicU64,
}

type Slot = Arc<OnceCell<Arc<Vec<u8>>>>;

/// The bounded chunk cache: slots by chunk number, evicted least recently used first.
struct Cache {
    slots: HashMap<u64, (Slot, u64)>,
    tick: u64,
    capacity: usize,
    /// End offset of the last read, to detect sequential access.
    last_end: u64,
    /// Start offset of the current run of sequential reads.
    run_start: u64,
}

impl Cache {
    /// The slot of chunk `i` (created empty if absent) and whether it already held data.
    fn slot(&mut self, i: u64) -> (Slot, bool) {
        self.tick += 1;
        let tick = self.tick;
        if let Some((slot, used)) = self.slots.get_mut(&i) {
            *used = tick;
            return (slot.clone(), slot.initialized());
        }
        if self.slots.len() >= self.capacity {
            if let Some(oldest) = self
                .slots
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
            {
                self.slots.remove(&oldest);
            }
        }
        let slot: Slot = Arc::new(OnceCell::new());
        self.slots.insert(i, (slot.clone(), tick));
        (slot, false)
    }
}

/// Random access to one volume of one backup (see the module docs).
pub struct VolumeReader {
    repo: Arc<Repository>,
    index: Index,
    /// `ns/vm/id volume`, for error messages.
    label: String,
    opts: VolumeReaderOptions,
    cache: Mutex<Cache>,
    counters: Counters,
}

impl std::fmt::Debug for VolumeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeReader")
            .field("volume", &self.label)
            .field("size", &self.index.size)
            .finish_non_exhaustive()
    }
}

impl VolumeReader {
    /// Loads and checks the index of `volume` of the backup `m`.
    pub async fn open(
        repo: Arc<Repository>,
        m: &Manifest,
        volume: &str,
        opts: VolumeReaderOptions,
    ) -> Result<Arc<VolumeReader>> {
        let index = repo.load_index(m, volume).await?;
        let entry = m.volumes.iter().find(|v| v.name == volume);
        if let Some(e) = entry {
            let actual = image_digest(&repo, &index);
            if actual != e.image_digest {
                return Err(Error::corrupt(
                    format!("{}{volume}.idx", m.prefix()),
                    "the index's image digest differs from the manifest's",
                ));
            }
        }
        let cache = Cache {
            slots: HashMap::new(),
            tick: 0,
            capacity: opts.cache_chunks.max(1) + opts.readahead,
            last_end: u64::MAX,
            run_start: 0,
        };
        Ok(Arc::new(VolumeReader {
            repo,
            index,
            label: format!("{}/{}/{} volume {volume}", m.namespace, m.vm, m.id),
            opts,
            cache: Mutex::new(cache),
            counters: Counters::default(),
        }))
    }

    /// Size of the volume in bytes.
    pub fn size(&self) -> u64 {
        self.index.size
    }

    /// The chunk index (chunk size, ids in offset order).
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// `ns/vm/id volume NAME`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// What was fetched so far.
    pub fn stats(&self) -> ReadStats {
        let c = &self.counters;
        ReadStats {
            chunks_fetched: c.chunks_fetched.load(Ordering::Relaxed),
            bytes_fetched: c.bytes_fetched.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            zero_reads: c.zero_reads.load(Ordering::Relaxed),
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while the lock is held leaves only a consistent map behind.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Chunk `i`'s bytes, from the cache or fetched (and verified) once.
    async fn chunk(self: &Arc<Self>, i: u64) -> Result<Arc<Vec<u8>>> {
        let (slot, cached) = self.lock_cache().slot(i);
        if cached {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
        }
        let data = slot
            .get_or_try_init(|| async {
                let id = self.index.chunks[i as usize];
                let len = chunk_len(self.index.size, self.index.chunk_size, i);
                let data = self.repo.get_chunk(&id).await?;
                if data.len() != len {
                    return Err(Error::corrupt(
                        id.key(),
                        format!(
                            "chunk has {} bytes, position {i} of {} needs {len}",
                            data.len(),
                            self.label
                        ),
                    ));
                }
                self.counters.chunks_fetched.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .bytes_fetched
                    .fetch_add(len as u64, Ordering::Relaxed);
                Ok(Arc::new(data))
            })
            .await?;
        Ok(data.clone())
    }

    /// Starts background fetches of the `window` chunks after `last` (read-ahead); zero chunks
    /// and chunks already cached or in flight are skipped.
    fn read_ahead(self: &Arc<Self>, last: u64, window: u64) {
        let n = self.index.chunks.len() as u64;
        for j in (last + 1)..(last + 1 + window).min(n) {
            if self.index.chunks[j as usize].is_zero_marker() {
                continue;
            }
            let present = self.lock_cache().slots.contains_key(&j);
            if present {
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move {
                // An error here is reported by the read that needs the chunk.
                let _ = me.chunk(j).await;
            });
        }
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns the count (0 at or past the end).
    pub async fn read_at(self: &Arc<Self>, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let size = self.index.size;
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(size - offset) as usize;
        let cs = u64::from(self.index.chunk_size);
        let first = offset / cs;
        let last = (offset + want as u64 - 1) / cs;
        // The read-ahead window grows with the sequential run: one chunk ahead once a whole
        // chunk has been read in order, never more chunks ahead than the run is long, at most
        // `readahead`; so a short sequential read (a small file) wastes few fetches.
        let window = {
            let mut c = self.lock_cache();
            if c.last_end != offset {
                c.run_start = offset;
            }
            c.last_end = offset + want as u64;
            ((c.last_end - c.run_start) / cs).min(self.opts.readahead as u64)
        };
        if window > 0 {
            self.read_ahead(last, window);
        }
        let mut done = 0usize;
        for i in first..=last {
            let chunk_start = i * cs;
            let from = (offset + done as u64 - chunk_start) as usize;
            let len = chunk_len(size, self.index.chunk_size, i);
            let n = (len - from).min(want - done);
            let dst = &mut buf[done..done + n];
            if self.index.chunks[i as usize].is_zero_marker() {
                self.counters.zero_reads.fetch_add(1, Ordering::Relaxed);
                dst.fill(0);
            } else {
                let data = self.chunk(i).await?;
                dst.copy_from_slice(&data[from..from + n]);
            }
            done += n;
        }
        Ok(done)
    }

    /// A synchronous reader positioned at 0 (see [`BlockingVolumeReader`]). Must be called
    /// inside a tokio runtime.
    pub fn blocking(self: &Arc<Self>) -> BlockingVolumeReader {
        BlockingVolumeReader {
            reader: self.clone(),
            handle: tokio::runtime::Handle::current(),
            pos: 0,
        }
    }
}

/// `Read + Seek` and positional reads over a [`VolumeReader`], blocking the calling thread
/// (use it from a blocking thread only). Clones share the reader and its cache and have their
/// own position.
#[derive(Debug, Clone)]
pub struct BlockingVolumeReader {
    reader: Arc<VolumeReader>,
    handle: tokio::runtime::Handle,
    pos: u64,
}

impl BlockingVolumeReader {
    /// The async reader behind this one.
    pub fn reader(&self) -> &Arc<VolumeReader> {
        &self.reader
    }

    /// Size of the volume.
    pub fn size(&self) -> u64 {
        self.reader.size()
    }

    /// Reads up to `buf.len()` bytes at `offset` (0 at the end).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.handle.block_on(self.reader.read_at(offset, buf))
    }

    /// Fills `buf` from `offset`, or fails (also when the volume ends first).
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = self.read_at(offset + done as u64, &mut buf[done..])?;
            if n == 0 {
                return Err(Error::Invalid(format!(
                    "read of {} bytes at offset {offset} goes past the end of {} ({} bytes)",
                    buf.len(),
                    self.reader.label,
                    self.reader.size()
                )));
            }
            done += n;
        }
        Ok(())
    }
}

impl Read for BlockingVolumeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.read_at(self.pos, buf).map_err(std::io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for BlockingVolumeReader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.reader.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the volume",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::tests::repo_with_keyed_backup as backup;

    const CS: usize = 64 * 1024;

    fn image() -> Vec<u8> {
        // 6 chunks + a short tail; chunk 2 is all zeros.
        let mut data: Vec<u8> = (0..6 * CS + 1234)
            .map(|i| ((i * 7 + i / 977) % 251) as u8)
            .collect();
        data[2 * CS..3 * CS].fill(0);
        data
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_any_range_and_fetches_only_touched_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let data = image();
        let (repo, m) = backup(dir.path(), &data, Some(b"k")).await;
        let opts = VolumeReaderOptions {
            cache_chunks: 2,
            readahead: 0,
        };
        let r = VolumeReader::open(repo, &m, "disk0", opts).await.unwrap();
        assert_eq!(r.size(), data.len() as u64);
        // Inside the zero chunk: no fetch at all.
        let mut buf = vec![1u8; 1000];
        assert_eq!(r.read_at(2 * CS as u64 + 5, &mut buf).await.unwrap(), 1000);
        assert!(buf.iter().all(|b| *b == 0));
        assert_eq!(r.stats().chunks_fetched, 0);
        // Spanning chunks 1..=3: fetches 1 and 3, not 2.
        let mut buf = vec![0u8; 2 * CS];
        let off = CS as u64 + CS as u64 / 2;
        assert_eq!(r.read_at(off, &mut buf).await.unwrap(), buf.len());
        assert_eq!(&buf[..], &data[off as usize..off as usize + buf.len()]);
        assert_eq!(r.stats().chunks_fetched, 2);
        // Again: served from the cache.
        r.read_at(off, &mut buf).await.unwrap();
        assert_eq!(r.stats().chunks_fetched, 2);
        // The short tail, and a read past the end is cut.
        let mut buf = vec![0u8; 5000];
        let off = data.len() as u64 - 1000;
        assert_eq!(r.read_at(off, &mut buf).await.unwrap(), 1000);
        assert_eq!(&buf[..1000], &data[off as usize..]);
        assert_eq!(r.read_at(data.len() as u64, &mut buf).await.unwrap(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_read_seek_matches_the_image_and_cache_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let data = image();
        let (repo, m) = backup(dir.path(), &data, None).await;
        let opts = VolumeReaderOptions {
            cache_chunks: 2,
            readahead: 2,
        };
        let r = VolumeReader::open(repo, &m, "disk0", opts).await.unwrap();
        let br = r.blocking();
        let r2 = r.clone();
        let back = tokio::task::spawn_blocking(move || {
            let mut br = br;
            let mut out = Vec::new();
            // Odd-sized sequential reads (read-ahead kicks in).
            let mut buf = vec![0u8; 3000];
            loop {
                let n = br.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            assert!(r2.lock_cache().slots.len() <= 4);
            br.seek(SeekFrom::End(-10)).unwrap();
            let mut tail = [0u8; 10];
            br.read_exact(&mut tail).unwrap();
            (out, tail)
        })
        .await
        .unwrap();
        assert_eq!(back.0, data);
        assert_eq!(&back.1[..], &data[data.len() - 10..]);
        // Every non-zero chunk was fetched; read-ahead tasks that run after their chunk was read
        // and evicted may fetch it once more (a known waste under load, not yet prevented), so
        // the bound is one extra fetch per read-ahead slot and chunk.
        let fetched = r.stats().chunks_fetched;
        assert!((6..=6 + 2 * 6).contains(&fetched), "{fetched} fetches");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_ahead_grows_with_the_sequential_run() {
        let dir = tempfile::tempdir().unwrap();
        let data = image();
        let (repo, m) = backup(dir.path(), &data, None).await;
        let opts = VolumeReaderOptions {
            cache_chunks: 8,
            readahead: 4,
        };
        let r = VolumeReader::open(repo, &m, "disk0", opts).await.unwrap();
        // Small reads in order through chunk 0 and into chunk 1: the run is shorter than two
        // chunks, so at most one chunk ahead (chunk 2, all zeros: nothing to fetch).
        let mut buf = vec![0u8; 3000];
        let mut off = 0u64;
        while off < (CS + 3000) as u64 {
            r.read_at(off, &mut buf).await.unwrap();
            off += buf.len() as u64;
        }
        assert_eq!(r.stats().chunks_fetched, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupt_chunk_fails_only_reads_that_touch_it_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = image();
        let (repo, m) = backup(dir.path(), &data, None).await;
        let r = VolumeReader::open(repo.clone(), &m, "disk0", VolumeReaderOptions::default())
            .await
            .unwrap();
        let id = r.index().chunks[4];
        let path = dir.path().join("repo").join(id.key());
        let mut blob = std::fs::read(&path).unwrap();
        let last = blob.len() - 1;
        blob[last] ^= 0x55;
        std::fs::write(&path, blob).unwrap();
        let mut buf = vec![0u8; 100];
        let err = r.read_at(4 * CS as u64 + 10, &mut buf).await.unwrap_err();
        assert!(err.to_string().contains(&id.key()), "{err}");
        // Neighbours still read.
        r.read_at(3 * CS as u64 + 10, &mut buf).await.unwrap();
        assert_eq!(&buf[..], &data[3 * CS + 10..3 * CS + 110]);
        r.read_at(5 * CS as u64, &mut buf).await.unwrap();
        assert_eq!(&buf[..], &data[5 * CS..5 * CS + 100]);
        // A manifest whose image digest does not match the index is refused.
        let mut bad = m.clone();
        bad.volumes[0].image_digest = "00".repeat(32);
        let err = VolumeReader::open(repo, &bad, "disk0", VolumeReaderOptions::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("image digest"), "{err}");
    }
}
