//! NTFS through the `ntfs` crate (read-only): directories through their `$I30` indexes, file
//! contents from the unnamed `$DATA` stream (resident, non-resident and sparse runs).
//!
//! NTFS has no Unix owners or modes: entries report uid/gid 0 and mode 0755 (directories) or
//! 0644 (files), as `ntfs-3g` shows a volume without a user mapping. The NTFS metadata files
//! (`$MFT`, `$Bitmap`, … — MFT records 0–15) are hidden, as `ntfsls` and `ntfs-3g` hide them;
//! DOS 8.3 short names are not listed (the long name is). Names are matched case-insensitively
//! (through the volume's `$UpCase` table), as Windows does. Nothing in NTFS is checksummed, so
//! only the chunks below it are verified.

use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::NtfsFileNamespace;
use ntfs::{Ntfs, NtfsFile, NtfsReadSeek};

use super::{base_name, error_chain, join, Entry, EntryKind, FilesError, Filesystem, Result};
use super::{Slice, Time};

/// MFT records below this are NTFS's own metadata files.
const FIRST_USER_RECORD: u64 = 16;

/// Seconds between 1601-01-01 (NTFS time zero) and 1970-01-01.
const NT_TO_UNIX_SECS: i64 = 11_644_473_600;

/// An NTFS volume.
pub struct NtfsFs {
    ntfs: Ntfs,
    fs: Slice,
    volume: String,
}

impl std::fmt::Debug for NtfsFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NtfsFs")
            .field("volume", &self.volume)
            .finish_non_exhaustive()
    }
}

fn nt_time(t: ntfs::NtfsTime) -> Time {
    let ticks = t.nt_timestamp();
    Time {
        secs: (ticks / 10_000_000) as i64 - NT_TO_UNIX_SECS,
        nanos: ((ticks % 10_000_000) * 100) as u32,
    }
}

impl NtfsFs {
    /// Reads the boot sector and the `$UpCase` table of the volume in `slice`.
    pub fn open(slice: Slice, volume: &str) -> Result<NtfsFs> {
        let mut fs = slice;
        let err = |e: ntfs::NtfsError| FilesError::Read {
            volume: volume.to_string(),
            path: "<boot sector>".into(),
            message: error_chain(&e),
        };
        // The boot sector is read here and handed over in memory: `Ntfs::new` parses it with
        // binrw, and the `ntfs` crate panics (`unreachable!`) on an I/O error inside a binrw
        // read — a volume shorter than a sector, or a corrupt chunk, must be an error instead
        // (found by the disk_image fuzz target).
        let mut boot = vec![0u8; 512];
        fs.read_exact_at(0, &mut boot)
            .map_err(|e| FilesError::Read {
                volume: volume.to_string(),
                path: "<boot sector>".into(),
                message: error_chain(&e),
            })?;
        let mut ntfs = Ntfs::new(&mut std::io::Cursor::new(boot)).map_err(err)?;
        ntfs.read_upcase_table(&mut fs).map_err(err)?;
        Ok(NtfsFs {
            ntfs,
            fs,
            volume: volume.to_string(),
        })
    }
}

fn read_err(volume: &str, path: &str, e: ntfs::NtfsError) -> FilesError {
    FilesError::Read {
        volume: volume.to_string(),
        path: path.to_string(),
        message: error_chain(&e),
    }
}

/// The file at `path` (absolute, normalised).
fn resolve<'n>(ntfs: &'n Ntfs, fs: &mut Slice, volume: &str, path: &str) -> Result<NtfsFile<'n>> {
    let mut cur = ntfs
        .root_directory(fs)
        .map_err(|e| read_err(volume, path, e))?;
    let mut walked = String::new();
    for name in path.split('/').filter(|c| !c.is_empty()) {
        walked.push('/');
        walked.push_str(name);
        if !cur.is_directory() {
            return Err(FilesError::NotADirectory {
                volume: volume.to_string(),
                path: walked,
            });
        }
        let index = cur
            .directory_index(fs)
            .map_err(|e| read_err(volume, &walked, e))?;
        let mut finder = index.finder();
        let entry = NtfsFileNameIndex::find(&mut finder, ntfs, fs, name)
            .ok_or_else(|| FilesError::NotFound {
                volume: volume.to_string(),
                path: walked.clone(),
            })?
            .map_err(|e| read_err(volume, &walked, e))?;
        if entry.file_reference().file_record_number() < FIRST_USER_RECORD {
            return Err(FilesError::NotFound {
                volume: volume.to_string(),
                path: walked,
            });
        }
        cur = entry
            .to_file(ntfs, fs)
            .map_err(|e| read_err(volume, &walked, e))?;
    }
    Ok(cur)
}

/// The entry of an opened file found at `path`.
fn entry_of(file: &NtfsFile<'_>, fs: &mut Slice, volume: &str, path: &str) -> Result<Entry> {
    let info = file.info().map_err(|e| read_err(volume, path, e))?;
    let dir = file.is_directory();
    let size = if dir {
        0
    } else {
        match file.data(fs, "") {
            None => 0,
            Some(item) => {
                let item = item.map_err(|e| read_err(volume, path, e))?;
                let attr = item.to_attribute().map_err(|e| read_err(volume, path, e))?;
                attr.value_length()
            }
        }
    };
    Ok(Entry {
        path: path.to_string(),
        name: base_name(path).to_string(),
        kind: if dir { EntryKind::Dir } else { EntryKind::File },
        size,
        mode: if dir { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
        mtime: nt_time(info.modification_time()),
        target: None,
    })
}

impl Filesystem for NtfsFs {
    fn kind(&self) -> &'static str {
        "ntfs"
    }

    fn stat(&mut self, path: &str) -> Result<Entry> {
        let file = resolve(&self.ntfs, &mut self.fs, &self.volume, path)?;
        entry_of(&file, &mut self.fs, &self.volume, path)
    }

    fn read_dir(&mut self, path: &str) -> Result<Vec<Entry>> {
        let (ntfs, fs, volume) = (&self.ntfs, &mut self.fs, self.volume.as_str());
        let dir = resolve(ntfs, fs, volume, path)?;
        if !dir.is_directory() {
            return Err(FilesError::NotADirectory {
                volume: volume.to_string(),
                path: path.to_string(),
            });
        }
        let index = dir
            .directory_index(fs)
            .map_err(|e| read_err(volume, path, e))?;
        let mut entries = index.entries();
        let mut out = Vec::new();
        while let Some(e) = entries.next(fs) {
            let e = e.map_err(|e| read_err(volume, path, e))?;
            let Some(key) = e.key() else { continue };
            let key = key.map_err(|e| read_err(volume, path, e))?;
            if key.namespace() == NtfsFileNamespace::Dos {
                continue;
            }
            if e.file_reference().file_record_number() < FIRST_USER_RECORD {
                continue;
            }
            let name = key.name().to_string_lossy();
            let child = join(path, &name);
            let file = e
                .to_file(ntfs, fs)
                .map_err(|err| read_err(volume, &child, err))?;
            out.push(entry_of(&file, fs, volume, &child)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn read_file(
        &mut self,
        path: &str,
        out: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let (ntfs, fs, volume) = (&self.ntfs, &mut self.fs, self.volume.as_str());
        let file = resolve(ntfs, fs, volume, path)?;
        if file.is_directory() {
            return Err(FilesError::Invalid(format!(
                "{volume}: `{path}` is a directory"
            )));
        }
        let Some(item) = file.data(fs, "") else {
            return Ok(());
        };
        let item = item.map_err(|e| read_err(volume, path, e))?;
        let attr = item.to_attribute().map_err(|e| read_err(volume, path, e))?;
        let mut value = attr.value(fs).map_err(|e| read_err(volume, path, e))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        loop {
            let n = value
                .read(fs, &mut buf)
                .map_err(|e| read_err(volume, path, e))?;
            if n == 0 {
                return Ok(());
            }
            out(offset, &buf[..n])?;
            offset += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_shorter_than_its_boot_sector_is_an_error_not_a_panic() {
        let mut b = vec![0u8; 300];
        b[3..11].copy_from_slice(b"NTFS    ");
        let err = NtfsFs::open(Slice::from_bytes(b), "v")
            .unwrap_err()
            .to_string();
        assert!(err.contains("<boot sector>"), "{err}");
    }
}
