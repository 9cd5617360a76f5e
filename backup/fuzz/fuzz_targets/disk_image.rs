//! Any bytes as a disk image given to the file-level restore entry points: the partition table
//! reader (GPT, MBR with logical partitions, none), the filesystem probe, and ext4 / NTFS
//! (open, walk the tree, read every file). An error or a result, never a panic; the walk and
//! the reads are capped so that a huge claimed size cannot make one input run for ever (the
//! fuzzer's own RSS limit catches unbounded memory).
#![no_main]
use libfuzzer_sys::fuzz_target;
use virtguard::files::{ops, open_filesystem, parts, FilesError, Slice};

/// Entries visited and bytes read per filesystem.
const MAX_ENTRIES: usize = 256;
const MAX_BYTES: u64 = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let disk = Slice::from_bytes(data.to_vec());
    let Ok(table) = parts::read_table(&disk, "fuzz") else {
        return;
    };
    for p in &table.partitions {
        if !p.fs.readable() {
            continue;
        }
        let Ok(mut fs) = open_filesystem(disk.sub(p.start, p.size), p.fs, "fuzz") else {
            continue;
        };
        let mut files = Vec::new();
        let _ = ops::walk(fs.as_mut(), "/", &mut |e| {
            if files.len() >= MAX_ENTRIES {
                return Err(FilesError::Invalid("enough".into()));
            }
            files.push(e.clone());
            Ok(())
        });
        let mut budget = MAX_BYTES;
        for e in files.iter().filter(|e| e.kind == virtguard::files::EntryKind::File) {
            let _ = fs.read_file(&e.path, &mut |_, bytes| {
                budget = budget.saturating_sub(bytes.len() as u64);
                if budget == 0 {
                    return Err(FilesError::Invalid("enough".into()));
                }
                Ok(())
            });
            let _ = fs.stat(&e.path);
        }
    }
});
