//! File-level access to the disk images of a backup: partition tables, and the files of the
//! filesystems in them, read in-process from the repository without restoring the disk, with
//! no root, no mount and no kernel module.
//!
//! * [`parts`] — the partition table (GPT, MBR or none) and what each partition holds;
//!   choosing the partition a `VOLUME[:N]` argument names.
//! * [`probe`] — telling filesystems apart by their magic numbers (also the unsupported ones,
//!   so they can be named in errors).
//! * [`ext4`] and [`ntfs`] — the two readable filesystems, behind [`Filesystem`].
//! * [`fuse`] — the read-only FUSE tree of `virtguard mount` (image files, not filesystems).
//! * [`ops`] — what the `files` commands do on a [`Filesystem`]: list, walk, find, copy out,
//!   diff.
//!
//! Everything here is synchronous and reads through a [`Slice`] of a
//! [`BlockingVolumeReader`]: it runs on a blocking thread, and every byte it sees was verified
//! against its chunk id by the repository layer. The filesystem crates keep their state in
//! `Rc`s, so a [`Filesystem`] stays on the thread that opened it.
//!
//! What is verified: every chunk (BLAKE3 against its id, so the image bytes are exactly the
//! ones backed up, and the index against the manifest); ext4 metadata checksums where the
//! filesystem has `metadata_csum` (superblock, group descriptors, inodes, extent blocks,
//! directory blocks — checked by `ext4-view`). File contents carry no checksum in ext4 or NTFS,
//! so they are as backed up (chunk ids) but not checked against the filesystem itself.

pub mod ext4;
pub mod fuse;
pub mod ntfs;
pub mod ops;
pub mod parts;
pub mod probe;

use std::io::{Read, Seek, SeekFrom};

use serde::Serialize;

use crate::repo::BlockingVolumeReader;

/// Errors of file-level access. Each names the volume (`ns/vm/id volume NAME[:partition]`)
/// and the path it failed on.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// No such file or directory in the filesystem.
    #[error("{volume}: `{path}` does not exist (list the parent with `virtguard files ls`)")]
    NotFound { volume: String, path: String },

    /// A path that must be a directory is not one.
    #[error("{volume}: `{path}` is not a directory")]
    NotADirectory { volume: String, path: String },

    /// Reading the filesystem failed: a chunk of the image could not be fetched or is
    /// corrupt (the message names it), or the filesystem's own structures are damaged.
    #[error("{volume}: reading `{path}`: {message}")]
    Read {
        volume: String,
        path: String,
        message: String,
    },

    /// The filesystem is one this command cannot read.
    #[error("{volume}: {what} is not readable by `virtguard files` (readable: ext2/3/4, NTFS); fetch the whole disk with `virtguard download`, or `virtguard mount` the backup and use the system's tools on the image")]
    Unsupported { volume: String, what: String },

    /// No readable filesystem was found.
    #[error("{volume}: no ext2/3/4 or NTFS filesystem found ({found}); fetch the whole disk with `virtguard download`, or `virtguard mount` the backup and inspect the image")]
    NoFilesystem { volume: String, found: String },

    /// `VOLUME:N` names a partition that does not exist.
    #[error(
        "{volume}: no partition {number} (partitions: {available}); see `virtguard files parts`"
    )]
    NoPartition {
        volume: String,
        number: u32,
        available: String,
    },

    /// The partition table could not be read.
    #[error("{volume}: partition table: {message}")]
    PartitionTable { volume: String, message: String },

    /// Writing a fetched file failed.
    #[error("writing `{}`: {source}", path.display())]
    Output {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Some objects of a copy could not be read (the others were copied).
    #[error("{} object(s) could not be fetched (the others were):\n  {}", .failed.len(), .failed.iter().map(|(p, e)| format!("{p}: {e}")).collect::<Vec<_>>().join("\n  "))]
    Incomplete { failed: Vec<(String, String)> },

    /// Invalid arguments (paths, patterns, sizes, times).
    #[error("{0}")]
    Invalid(String),
}

/// Result with [`FilesError`].
pub type Result<T, E = FilesError> = std::result::Result<T, E>;

/// Renders an error and its sources on one line (the reader's chunk error travels as the
/// source of the filesystem crates' I/O errors).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let t = src.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = src.source();
    }
    s
}

/// Where a [`Slice`]'s bytes come from.
#[derive(Debug, Clone)]
enum Source {
    Volume(BlockingVolumeReader),
    Bytes(std::sync::Arc<Vec<u8>>),
}

/// A byte range of a volume (a partition, or the whole disk) as a synchronous reader. Clones
/// share the volume reader and have their own position.
#[derive(Debug, Clone)]
pub struct Slice {
    inner: Source,
    start: u64,
    len: u64,
    pos: u64,
}

impl Slice {
    /// The whole volume.
    pub fn whole(inner: BlockingVolumeReader) -> Slice {
        let len = inner.size();
        Slice {
            inner: Source::Volume(inner),
            start: 0,
            len,
            pos: 0,
        }
    }

    /// An image in memory (tests, fuzzing).
    pub fn from_bytes(bytes: Vec<u8>) -> Slice {
        let len = bytes.len() as u64;
        Slice {
            inner: Source::Bytes(std::sync::Arc::new(bytes)),
            start: 0,
            len,
            pos: 0,
        }
    }

    /// `len` bytes from `start` of this slice (cut at its end).
    pub fn sub(&self, start: u64, len: u64) -> Slice {
        let start = start.min(self.len);
        Slice {
            inner: self.inner.clone(),
            start: self.start + start,
            len: len.min(self.len - start),
            pos: 0,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fills `buf` from `offset` of the slice, or fails (also past its end).
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at {offset} past the end of a {}-byte partition",
                    buf.len(),
                    self.len
                ),
            ));
        }
        let at = self.start + offset;
        match &self.inner {
            Source::Volume(v) => v.read_exact_at(at, buf).map_err(std::io::Error::other),
            Source::Bytes(b) => {
                // In range: `at + buf.len() <= start + len <= b.len()`.
                buf.copy_from_slice(&b[at as usize..at as usize + buf.len()]);
                Ok(())
            }
        }
    }

    /// Reads what is there of `buf.len()` bytes at `offset` (zero-filled past the end).
    pub fn read_padded(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(0);
        if offset >= self.len {
            return Ok(());
        }
        let n = (buf.len() as u64).min(self.len - offset) as usize;
        self.read_exact_at(offset, &mut buf[..n])
    }
}

impl Read for Slice {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.len {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.len - self.pos) as usize;
        self.read_exact_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Slice {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let p = target.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        self.pos = p;
        Ok(p)
    }
}

/// The partition table parsers want a writable device type; nothing is ever written.
impl std::io::Write for Slice {
    fn write(&mut self, _buf: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "backup images are read-only",
        ))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl EntryKind {
    /// The `ls -l` type letter.
    pub fn letter(self) -> char {
        match self {
            EntryKind::File => '-',
            EntryKind::Dir => 'd',
            EntryKind::Symlink => 'l',
            EntryKind::CharDevice => 'c',
            EntryKind::BlockDevice => 'b',
            EntryKind::Fifo => 'p',
            EntryKind::Socket => 's',
        }
    }
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

impl Time {
    /// RFC 3339 in UTC, whole seconds.
    pub fn rfc3339(self) -> String {
        chrono::DateTime::from_timestamp(self.secs, self.nanos)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| format!("@{}", self.secs))
    }
}

/// One file, directory or other object of a filesystem (what `ls -l` shows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Absolute path inside the filesystem (`/` separated).
    pub path: String,
    /// Last path component (`/` for the root).
    pub name: String,
    #[serde(rename = "type")]
    pub kind: EntryKind,
    pub size: u64,
    /// Permission bits with set-id and sticky bits (`0o7777`).
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Time,
    /// Symlink target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// A filesystem readable file by file.
pub trait Filesystem {
    /// `ext4`, `ntfs`, … (for messages).
    fn kind(&self) -> &'static str;
    /// The object at `path`, not following a final symlink.
    fn stat(&mut self, path: &str) -> Result<Entry>;
    /// The entries of a directory, without `.` and `..`, sorted by name.
    fn read_dir(&mut self, path: &str) -> Result<Vec<Entry>>;
    /// Streams a regular file's content in order: `out(offset, bytes)`; holes may be passed as
    /// zeros or skipped (the sizes of what was passed plus what was skipped add up to the
    /// file's size).
    fn read_file(
        &mut self,
        path: &str,
        out: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()>;
}

/// Opens the filesystem of kind `fs` in `slice`; `volume` names it in errors.
pub fn open_filesystem(
    slice: Slice,
    fs: probe::FsKind,
    volume: &str,
) -> Result<Box<dyn Filesystem>> {
    match fs {
        probe::FsKind::Ext2 | probe::FsKind::Ext3 | probe::FsKind::Ext4 => {
            Ok(Box::new(ext4::Ext4Fs::open(slice, volume)?))
        }
        probe::FsKind::Ntfs => Ok(Box::new(ntfs::NtfsFs::open(slice, volume)?)),
        other => Err(FilesError::Unsupported {
            volume: volume.to_string(),
            what: other.name().to_string(),
        }),
    }
}

/// Joins a directory path and a name.
pub fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Normalises a user path: absolute, no empty or `.` components, no trailing `/`.
pub fn normalize(path: &str) -> Result<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// The last component of a normalised path (`/` for the root).
pub fn base_name(path: &str) -> &str {
    match path.rsplit_once('/') {
        Some((_, "")) | None => "/",
        Some((_, n)) => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(normalize("a//b/./c/").unwrap(), "/a/b/c");
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("/a/../b").unwrap(), "/b");
        assert_eq!(join("/", "x"), "/x");
        assert_eq!(join("/a", "x"), "/a/x");
        assert_eq!(base_name("/a/b"), "b");
        assert_eq!(base_name("/"), "/");
    }
}
