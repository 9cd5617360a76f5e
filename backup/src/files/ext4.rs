//! ext2/3/4 through the `ext4-view` crate (read-only; extents, htree directories, 64-bit,
//! metadata_csum, journal replay in memory). The crate checks metadata checksums itself when
//! the filesystem has them; file contents have none in ext4.
//!
//! Invariant: the filesystem is read only through its [`Slice`], so it can never read past
//! its partition; the crate's `Rc` state keeps an [`Ext4Fs`] on the thread that opened it.

use ext4_view::{Ext4, Ext4Error, Ext4Read, FileType, Metadata};

use super::{base_name, error_chain, join, Entry, EntryKind, FilesError, Filesystem, Result};
use super::{Slice, Time};

impl Ext4Read for Slice {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.read_exact_at(start_byte, dst).map_err(Box::new)?;
        Ok(())
    }
}

/// An ext2/3/4 filesystem.
pub struct Ext4Fs {
    fs: Ext4,
    volume: String,
}

impl std::fmt::Debug for Ext4Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ext4Fs")
            .field("volume", &self.volume)
            .finish_non_exhaustive()
    }
}

impl Ext4Fs {
    /// Loads the superblock, group descriptors and journal of the filesystem in `slice`.
    /// `volume` names it in errors.
    pub fn open(slice: Slice, volume: &str) -> Result<Ext4Fs> {
        let fs = Ext4::load(Box::new(slice)).map_err(|e| FilesError::Read {
            volume: volume.to_string(),
            path: "<superblock>".into(),
            message: error_chain(&e),
        })?;
        Ok(Ext4Fs {
            fs,
            volume: volume.to_string(),
        })
    }

    fn err(&self, path: &str, e: Ext4Error) -> FilesError {
        match e {
            Ext4Error::NotFound => FilesError::NotFound {
                volume: self.volume.clone(),
                path: path.to_string(),
            },
            Ext4Error::NotADirectory => FilesError::NotADirectory {
                volume: self.volume.clone(),
                path: path.to_string(),
            },
            e => FilesError::Read {
                volume: self.volume.clone(),
                path: path.to_string(),
                message: error_chain(&e),
            },
        }
    }

    fn entry(&self, path: &str, md: &Metadata) -> Result<Entry> {
        let kind = kind_of(md.file_type());
        let target = if kind == EntryKind::Symlink {
            let t = self.fs.read_link(path).map_err(|e| self.err(path, e))?;
            Some(t.display().to_string())
        } else {
            None
        };
        let mtime = md.modified();
        Ok(Entry {
            path: path.to_string(),
            name: base_name(path).to_string(),
            kind,
            size: md.len(),
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            mtime: Time {
                secs: mtime.seconds(),
                nanos: mtime.nanoseconds(),
            },
            target,
        })
    }
}

fn kind_of(t: FileType) -> EntryKind {
    match t {
        FileType::Directory => EntryKind::Dir,
        FileType::Symlink => EntryKind::Symlink,
        FileType::CharacterDevice => EntryKind::CharDevice,
        FileType::BlockDevice => EntryKind::BlockDevice,
        FileType::Fifo => EntryKind::Fifo,
        FileType::Socket => EntryKind::Socket,
        _ => EntryKind::File,
    }
}

impl Filesystem for Ext4Fs {
    fn kind(&self) -> &'static str {
        "ext4"
    }

    fn stat(&mut self, path: &str) -> Result<Entry> {
        let md = self
            .fs
            .symlink_metadata(path)
            .map_err(|e| self.err(path, e))?;
        self.entry(path, &md)
    }

    fn read_dir(&mut self, path: &str) -> Result<Vec<Entry>> {
        let it = self.fs.read_dir(path).map_err(|e| self.err(path, e))?;
        let mut out = Vec::new();
        for de in it {
            let de = de.map_err(|e| self.err(path, e))?;
            let name = de.file_name();
            let name = name.as_str().map(str::to_string).unwrap_or_else(|_| {
                // Not UTF-8: shown lossily (such a name cannot be fetched by name).
                name.display().to_string()
            });
            if name == "." || name == ".." {
                continue;
            }
            let child = join(path, &name);
            let md = de.metadata().map_err(|e| self.err(&child, e))?;
            out.push(self.entry(&child, &md)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn read_file(
        &mut self,
        path: &str,
        out: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut f = self.fs.open(path).map_err(|e| self.err(path, e))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        loop {
            // `read_bytes` returns at most one block; gather a bigger piece first.
            let mut filled = 0;
            while filled < buf.len() {
                let n = f
                    .read_bytes(&mut buf[filled..])
                    .map_err(|e| self.err(path, e))?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                return Ok(());
            }
            out(offset, &buf[..filled])?;
            offset += filled as u64;
        }
    }
}
