//! PVC contents: sparse local files.
//!
//! Layout under the state directory:
//! - `volumes/<pv-name>.img`: the backing file of a bound PVC (PV name `pvc-<pvc uid>`),
//!   sized to the PVC's requested storage, sparse (holes read as zeros);
//! - `snapshots/<content-name>.img`: the point-in-time copy behind a VolumeSnapshotContent,
//!   taken when the snapshot's `creationTime` is set.
//!
//! Copies skip the source's holes (`SEEK_DATA`/`SEEK_HOLE`) and all-zero blocks (read and
//! compare), so sparse images stay sparse; no reflinks needed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use rand::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;

/// Block size used by sparse copies.
pub const BLOCK: usize = 64 * 1024;

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// How a scenario disk is filled. YAML: `zeros`, `{pattern: "text"}`, `{random: 42}`,
/// `{file: /path/to/raw.img}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ContentRepr", into = "ContentRepr")]
pub enum Content {
    /// All zeros (a hole).
    #[default]
    Zeros,
    /// The given text repeated.
    Pattern(String),
    /// Pseudo-random bytes from this seed (reproducible).
    Random(u64),
    /// The bytes of a local file (raw image), copied sparsely.
    File(std::path::PathBuf),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
enum ContentRepr {
    Name(String),
    Pattern { pattern: String },
    Random { random: u64 },
    File { file: std::path::PathBuf },
}

impl TryFrom<ContentRepr> for Content {
    type Error = String;
    fn try_from(r: ContentRepr) -> Result<Self, String> {
        Ok(match r {
            ContentRepr::Name(n) if n == "zeros" => Content::Zeros,
            ContentRepr::Name(n) => {
                return Err(format!("unknown content {n:?}: use zeros, {{pattern: text}}, {{random: seed}} or {{file: path}}"))
            }
            ContentRepr::Pattern { pattern } => Content::Pattern(pattern),
            ContentRepr::Random { random } => Content::Random(random),
            ContentRepr::File { file } => Content::File(file),
        })
    }
}

impl From<Content> for ContentRepr {
    fn from(c: Content) -> Self {
        match c {
            Content::Zeros => ContentRepr::Name("zeros".into()),
            Content::Pattern(pattern) => ContentRepr::Pattern { pattern },
            Content::Random(random) => ContentRepr::Random { random },
            Content::File(file) => ContentRepr::File { file },
        }
    }
}

/// Create (or truncate to) a sparse file of `size` bytes.
pub fn create_sparse(path: &Path, size: u64) -> Result<(), Error> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io("creating directory", d))?;
    }
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .map_err(io("creating disk file", path))?;
    f.set_len(size).map_err(io("sizing disk file", path))?;
    Ok(())
}

/// Fill the first `used` bytes (capped at the file size) with `content`.
pub fn fill(path: &Path, content: &Content, used: Option<u64>) -> Result<(), Error> {
    let size = std::fs::metadata(path)
        .map_err(io("reading disk size", path))?
        .len();
    let used = used.unwrap_or(size).min(size);
    match content {
        Content::Zeros => Ok(()),
        Content::File(src) => {
            copy_sparse(src, path, false)?;
            Ok(())
        }
        Content::Pattern(p) => {
            let mut f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io("opening disk", path))?;
            let unit = if p.is_empty() {
                b"virtguard".to_vec()
            } else {
                p.as_bytes().to_vec()
            };
            let mut buf = Vec::with_capacity(BLOCK + unit.len());
            while buf.len() < BLOCK {
                buf.extend_from_slice(&unit);
            }
            let mut off = 0u64;
            while off < used {
                // Keep the pattern continuous across blocks.
                let phase = (off % unit.len() as u64) as usize;
                let n = ((used - off) as usize).min(BLOCK);
                let mut chunk = Vec::with_capacity(n);
                let mut i = phase;
                while chunk.len() < n {
                    chunk.push(unit[i % unit.len()]);
                    i += 1;
                }
                f.write_all(&chunk).map_err(io("writing disk", path))?;
                off += n as u64;
            }
            Ok(())
        }
        Content::Random(seed) => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(*seed);
            let mut f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io("opening disk", path))?;
            let mut buf = vec![0u8; BLOCK];
            let mut off = 0u64;
            while off < used {
                let n = ((used - off) as usize).min(BLOCK);
                rng.fill_bytes(&mut buf[..n]);
                f.write_all(&buf[..n]).map_err(io("writing disk", path))?;
                off += n as u64;
            }
            Ok(())
        }
    }
}

/// Block size of image copies: large enough that syscalls cost nothing next to the data.
pub const COPY_BLOCK: usize = 1 << 20;

/// Copy `src` into `dst` writing only non-zero blocks. With `exact_size`, `dst` gets the size
/// of `src` (and starts out as one hole); otherwise `dst` keeps its size (and must be at least
/// as large as the data), and a zero block of `src` is written only where `dst` has data.
/// Returns the size of `src`.
///
/// Holes of `src` are skipped without reading them (`SEEK_DATA`/`SEEK_HOLE`, where the file
/// system reports them), so sparse images stay sparse; into a fresh destination the data is
/// copied by the kernel, otherwise block by block, writing no all-zero blocks. No
/// fsync: the copy is visible to every reader at once, which is all a point-in-time snapshot
/// needs (the sim does not simulate power loss); syncing gigabytes cost seconds inside the
/// freeze window.
pub fn copy_sparse(src: &Path, dst: &Path, exact_size: bool) -> Result<u64, Error> {
    use std::os::unix::fs::FileExt;
    let s = File::open(src).map_err(io("opening source image", src))?;
    let len = s.metadata().map_err(io("reading source size", src))?.len();
    if let Some(d) = dst.parent() {
        std::fs::create_dir_all(d).map_err(io("creating directory", d))?;
    }
    let d = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(exact_size)
        .open(dst)
        .map_err(io("opening destination image", dst))?;
    let dlen = d
        .metadata()
        .map_err(io("reading destination size", dst))?
        .len();
    if exact_size || dlen < len {
        d.set_len(len)
            .map_err(io("sizing destination image", dst))?;
    }
    let mut buf = vec![0u8; COPY_BLOCK];
    let mut cur = vec![0u8; COPY_BLOCK];
    let mut off = 0u64;
    while off < len {
        // Skip a hole of the source; in the destination it must read as zeros too.
        let data = next_data(&s, off).unwrap_or(len).min(len);
        if data > off && !exact_size {
            zero_range(&d, dst, off, data, &mut cur)?;
        }
        off = data;
        let end = next_hole(&s, off).unwrap_or(len).clamp(off, len);
        // Into a fresh destination, a data extent is copied by the kernel (copy_file_range:
        // no trip through user space); zero blocks inside it are then copied too, only holes
        // stay holes. Falls back to read/write where the kernel cannot (other file systems).
        if exact_size {
            off = kernel_copy(&s, &d, off, end);
        }
        while off < end {
            let n = ((end - off) as usize).min(COPY_BLOCK);
            let block = &mut buf[..n];
            s.read_exact_at(block, off)
                .map_err(io("reading source image", src))?;
            if !is_zero(block) {
                d.write_all_at(block, off)
                    .map_err(io("writing destination", dst))?;
            } else if !exact_size {
                zero_range(&d, dst, off, off + n as u64, &mut cur)?;
            }
            off += n as u64;
        }
    }
    Ok(len)
}

/// Copies `[from, to)` of `s` to the same offsets of `d` with `copy_file_range`; returns how
/// far it got (`from` when the kernel cannot copy between these files at all).
fn kernel_copy(s: &File, d: &File, from: u64, to: u64) -> u64 {
    let (mut src_off, mut dst_off) = (from, from);
    while src_off < to {
        let n = ((to - src_off) as usize).min(1 << 30);
        match rustix::fs::copy_file_range(s, Some(&mut src_off), d, Some(&mut dst_off), n) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    src_off
}

/// The next offset at or after `off` holding data (`SEEK_DATA`): `None` when only a hole
/// follows; `Some(off)` when the file system cannot tell (then everything is read).
fn next_data(f: &File, off: u64) -> Option<u64> {
    match rustix::fs::seek(f, rustix::fs::SeekFrom::Data(off)) {
        Ok(p) => Some(p),
        Err(rustix::io::Errno::NXIO) => None,
        Err(_) => Some(off),
    }
}

/// The next hole at or after `off` (`SEEK_HOLE`; the end of the file counts as one); `None`
/// when the file system cannot tell.
fn next_hole(f: &File, off: u64) -> Option<u64> {
    rustix::fs::seek(f, rustix::fs::SeekFrom::Hole(off)).ok()
}

/// True when every byte is zero (compares 8 bytes at a time).
pub fn is_zero(b: &[u8]) -> bool {
    let mut words = b.chunks_exact(8);
    words.all(|w| w == [0u8; 8]) && words.remainder().iter().all(|x| *x == 0)
}

/// Makes `[from, to)` of `d` read as zeros, writing only where it holds data.
fn zero_range(d: &File, path: &Path, from: u64, to: u64, cur: &mut [u8]) -> Result<(), Error> {
    use std::os::unix::fs::FileExt;
    let mut off = from;
    while off < to {
        let data = next_data(d, off).unwrap_or(to).min(to);
        off = data;
        if off >= to {
            break;
        }
        let n = ((to - off) as usize).min(cur.len());
        let got = d
            .read_at(&mut cur[..n], off)
            .map_err(io("reading destination", path))?;
        if got == 0 {
            break;
        }
        if !is_zero(&cur[..got]) {
            cur[..got].fill(0);
            d.write_all_at(&cur[..got], off)
                .map_err(io("writing destination", path))?;
        }
        off += got as u64;
    }
    Ok(())
}

/// Read until `buf` is full or EOF.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// sha256 of a whole file, hex.
pub fn sha256_file(path: &Path) -> Result<String, Error> {
    let mut f = File::open(path).map_err(io("opening", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = read_full(&mut f, &mut buf).map_err(io("reading", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_copy_keeps_holes_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.img");
        let b = dir.path().join("b.img");
        create_sparse(&a, 8 << 20).unwrap();
        fill(&a, &Content::Random(7), Some(1 << 20)).unwrap();
        copy_sparse(&a, &b, true).unwrap();
        assert_eq!(sha256_file(&a).unwrap(), sha256_file(&b).unwrap());
        let blocks = std::fs::metadata(&b).unwrap().blocks() * 512;
        assert!(
            blocks < 3 << 20,
            "copy is not sparse: {blocks} bytes allocated"
        );
    }

    #[test]
    fn copy_over_old_data_zeroes_holes_and_zero_blocks() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.img");
        let b = dir.path().join("b.img");
        // Source: data, then a hole, then explicitly written zeros, then data (odd tail).
        create_sparse(&a, (5 << 20) + 123).unwrap();
        let f = OpenOptions::new().write(true).open(&a).unwrap();
        f.write_all_at(&[7u8; 1 << 20], 0).unwrap();
        f.write_all_at(&vec![0u8; 2 << 20], 2 << 20).unwrap();
        f.write_all_at(&[9u8; 123], 5 << 20).unwrap();
        // Destination: larger, full of old data everywhere.
        std::fs::write(&b, vec![0xEEu8; 6 << 20]).unwrap();
        copy_sparse(&a, &b, false).unwrap();
        let got = std::fs::read(&b).unwrap();
        assert_eq!(got.len(), 6 << 20, "the destination keeps its size");
        assert_eq!(
            &got[..a.metadata().unwrap().len() as usize],
            &std::fs::read(&a).unwrap()[..]
        );
        assert!(
            got[(5 << 20) + 123..].iter().all(|x| *x == 0xEE),
            "past the source: untouched"
        );
        // exact_size: the copy is the source, and the source's hole stays a hole.
        copy_sparse(&a, &b, true).unwrap();
        assert_eq!(sha256_file(&a).unwrap(), sha256_file(&b).unwrap());
        let blocks = std::fs::metadata(&b).unwrap().blocks() * 512;
        assert!(blocks < (4 << 20), "{blocks} bytes allocated");
    }

    #[test]
    fn pattern_is_continuous() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.img");
        create_sparse(&a, 200_000).unwrap();
        fill(&a, &Content::Pattern("abc".into()), None).unwrap();
        let data = std::fs::read(&a).unwrap();
        assert!(data.chunks(3).all(|c| c == &b"abc"[..c.len()]));
    }
}
