//! Partition tables of a disk image (GPT through the `gpt` crate, MBR with logical partitions
//! through `mbrman`, or none: a filesystem on the whole disk) and the choice of the partition a
//! `VOLUME[:N]` argument names.
//!
//! Invariants: a table is read only within the disk (the parsers see a [`Slice`] that ends
//! where the volume ends); a GPT header whose entry array would be larger than
//! [`MAX_GPT_ENTRY_BYTES`] is refused before the parser allocates it; partitions are clipped
//! to the disk, so a reader of a partition never reads past the volume.

use serde::Serialize;

use super::probe::{probe, FsKind};
use super::{FilesError, Result, Slice};

/// Largest GPT partition entry array accepted (the standard one is 128 × 128 bytes).
pub const MAX_GPT_ENTRY_BYTES: u64 = 1 << 20;

/// Which kind of table the disk has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    Gpt,
    Mbr,
    /// No partition table: the whole disk is one filesystem (partition number 0).
    None,
}

/// One partition (or the whole disk when there is no table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// 1-based number as Linux names it (`sda2` → 2); MBR logical partitions start at 5;
    /// 0 for the whole disk.
    pub number: u32,
    /// Byte offset in the disk.
    pub start: u64,
    /// Bytes.
    pub size: u64,
    /// The table's type: a GPT type name (or GUID), or the MBR type byte and its name.
    #[serde(rename = "type")]
    pub type_name: String,
    /// GPT partition name (empty for MBR).
    pub name: String,
    /// What it holds, by magic numbers.
    pub fs: FsKind,
}

/// A disk's partition table.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    pub kind: TableKind,
    pub disk_size: u64,
    pub partitions: Vec<Partition>,
}

/// Well-known GPT partition type GUIDs.
const GPT_TYPES: &[(&str, &str)] = &[
    ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", "Linux filesystem"),
    (
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
        "Linux root (x86-64)",
    ),
    ("933AC7E1-2EB4-4F13-B844-0E14E2AEF915", "Linux home"),
    ("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "Linux swap"),
    ("E6D6D379-F507-44C2-A23C-238F2A3DF928", "Linux LVM"),
    ("CA7D7CCB-63ED-4C53-861C-1742536059CC", "Linux LUKS"),
    ("A19D880F-05FC-4D3B-A006-743F0F84911E", "Linux RAID"),
    (
        "BC13C2FF-59E6-4262-A352-B275FD6F7172",
        "Linux extended boot",
    ),
    ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "EFI System"),
    ("21686148-6449-6E6F-744E-656564454649", "BIOS boot"),
    (
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
        "Microsoft basic data",
    ),
    ("E3C9E316-0B5C-4DB8-817D-F92DF00215AE", "Microsoft reserved"),
    ("DE94BBA4-06D1-4D40-A16A-BFD50179D6AC", "Windows recovery"),
];

/// Name of an MBR partition type byte.
fn mbr_type_name(sys: u8) -> String {
    let name = match sys {
        0x01 | 0x04 | 0x06 | 0x0e => "FAT12/16",
        0x05 | 0x0f | 0x85 => "Extended",
        0x07 => "NTFS/exFAT",
        0x0b | 0x0c => "FAT32",
        0x27 => "Windows recovery",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x8e => "Linux LVM",
        0xee => "GPT protective",
        0xef => "EFI System",
        0xfd => "Linux RAID",
        _ => "unknown",
    };
    format!("0x{sys:02x} {name}")
}

fn is_extended(sys: u8) -> bool {
    matches!(sys, 0x05 | 0x0f | 0x85)
}

fn table_err(volume: &str, message: impl std::fmt::Display) -> FilesError {
    FilesError::PartitionTable {
        volume: volume.to_string(),
        message: message.to_string(),
    }
}

fn io_err(volume: &str, e: std::io::Error) -> FilesError {
    FilesError::Read {
        volume: volume.to_string(),
        path: "<partition table>".into(),
        message: super::error_chain(&e),
    }
}

/// Reads the partition table of `disk` and probes every partition. `volume` names the disk in
/// errors.
pub fn read_table(disk: &Slice, volume: &str) -> Result<Table> {
    let mut head = vec![0u8; 1024];
    disk.read_padded(0, &mut head)
        .map_err(|e| io_err(volume, e))?;
    let mut partitions = Vec::new();
    let kind = if &head[512..520] == b"EFI PART" {
        read_gpt(disk, volume, &head[512..1024], &mut partitions)?;
        TableKind::Gpt
    } else if head[510] == 0x55 && head[511] == 0xAA && mbr_has_partitions(&head) {
        read_mbr(disk, volume, &mut partitions)?;
        TableKind::Mbr
    } else {
        TableKind::None
    };
    if kind == TableKind::None {
        partitions.push(Partition {
            number: 0,
            start: 0,
            size: disk.len(),
            type_name: "whole disk".into(),
            name: String::new(),
            fs: FsKind::Unknown,
        });
    }
    for p in &mut partitions {
        if p.fs == FsKind::Unknown {
            p.fs = probe(&disk.sub(p.start, p.size)).map_err(|e| io_err(volume, e))?;
        }
    }
    Ok(Table {
        kind,
        disk_size: disk.len(),
        partitions,
    })
}

/// An MBR whose boot sector is really a filesystem's (NTFS, FAT) has the 0x55AA signature too;
/// a partition table has at least one used entry whose start and size lie within reason.
fn mbr_has_partitions(head: &[u8]) -> bool {
    if &head[3..11] == b"NTFS    " || &head[54..59] == b"FAT12" || &head[54..59] == b"FAT16" {
        return false;
    }
    if &head[82..87] == b"FAT32" {
        return false;
    }
    (0..4).any(|i| {
        let e = &head[446 + i * 16..446 + (i + 1) * 16];
        let boot = e[0];
        let sys = e[4];
        let sectors = u32::from_le_bytes([e[12], e[13], e[14], e[15]]);
        sys != 0 && sectors != 0 && (boot == 0 || boot == 0x80)
    })
}

fn read_gpt(disk: &Slice, volume: &str, header: &[u8], out: &mut Vec<Partition>) -> Result<()> {
    // Header fields (UEFI 2.x §5.3.2): entry count at 80, entry size at 84.
    let count = u64::from(u32::from_le_bytes([
        header[80], header[81], header[82], header[83],
    ]));
    let size = u64::from(u32::from_le_bytes([
        header[84], header[85], header[86], header[87],
    ]));
    if count * size > MAX_GPT_ENTRY_BYTES || size < 128 {
        return Err(table_err(
            volume,
            format!("GPT header claims {count} entries of {size} bytes: not a valid table"),
        ));
    }
    let disk_gpt = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .open_from_device(disk.clone())
        .map_err(|e| table_err(volume, format!("GPT: {e}")))?;
    for (n, p) in disk_gpt.partitions() {
        if p.first_lba == 0 && p.last_lba == 0 {
            continue;
        }
        let guid = p.part_type_guid.guid.to_string().to_uppercase();
        let type_name = GPT_TYPES
            .iter()
            .find(|(g, _)| *g == guid)
            .map(|(_, name)| (*name).to_string())
            .unwrap_or(guid);
        let (start, size) = clip(
            disk,
            p.first_lba,
            p.last_lba.saturating_sub(p.first_lba) + 1,
        );
        out.push(Partition {
            number: *n,
            start,
            size,
            type_name,
            name: p.name.clone(),
            fs: FsKind::Unknown,
        });
    }
    Ok(())
}

/// Byte range of `sectors` 512-byte sectors from `lba`, clipped to the disk.
fn clip(disk: &Slice, lba: u64, sectors: u64) -> (u64, u64) {
    let start = lba.saturating_mul(512).min(disk.len());
    let size = sectors.saturating_mul(512).min(disk.len() - start);
    (start, size)
}

/// Most logical partitions followed in an extended partition's EBR chain.
pub const MAX_LOGICAL: u32 = 128;

/// Walks the EBR chain of an extended partition before `mbrman` does, refusing what it would
/// mishandle: sector numbers whose sum overflows 32 bits, a chain that does not move forward,
/// or one longer than [`MAX_LOGICAL`].
fn check_ebr_chain(disk: &Slice, head: &[u8]) -> std::result::Result<(), String> {
    let le32 = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    for i in 0..4 {
        let e = 446 + i * 16;
        if !is_extended(head[e + 4]) {
            continue;
        }
        let ext_start = le32(head, e + 8);
        let mut rel = 0u32;
        for _ in 0..MAX_LOGICAL {
            let abs = ext_start
                .checked_add(rel)
                .ok_or("EBR sector number overflows")?;
            let mut ebr = vec![0u8; 512];
            disk.read_padded(u64::from(abs) * 512, &mut ebr)
                .map_err(|e| e.to_string())?;
            if ebr[510] != 0x55 || ebr[511] != 0xAA {
                return Ok(());
            }
            le32(&ebr, 446 + 8)
                .checked_add(abs)
                .ok_or("logical partition start overflows")?;
            let next = le32(&ebr, 462 + 8);
            if next == 0 {
                return Ok(());
            }
            if next <= rel {
                return Err("the EBR chain goes backwards".into());
            }
            rel = next;
        }
        return Err(format!("more than {MAX_LOGICAL} logical partitions"));
    }
    Ok(())
}

fn read_mbr(disk: &Slice, volume: &str, out: &mut Vec<Partition>) -> Result<()> {
    let mut head = vec![0u8; 512];
    disk.read_padded(0, &mut head)
        .map_err(|e| io_err(volume, e))?;
    check_ebr_chain(disk, &head).map_err(|m| table_err(volume, format!("MBR: {m}")))?;
    let mut r = disk.clone();
    let mbr = mbrman::MBR::read_from(&mut r, 512).map_err(|e| table_err(volume, e))?;
    // Primary entries are numbered 1..=4, logical partitions from 5 on.
    for (i, e) in mbr.iter() {
        if !e.is_used() {
            continue;
        }
        let (start, size) = clip(disk, u64::from(e.starting_lba), u64::from(e.sectors));
        out.push(Partition {
            number: i as u32,
            start,
            size,
            type_name: mbr_type_name(e.sys),
            name: String::new(),
            fs: if is_extended(e.sys) {
                FsKind::Extended
            } else {
                FsKind::Unknown
            },
        });
    }
    Ok(())
}

/// Which partition a `VOLUME[:N]` argument asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartSel {
    /// The only or the largest Linux filesystem (else the largest readable one).
    Auto,
    Number(u32),
}

/// Splits `disk0:2` / `disk0:p2` into the volume name and the selector.
pub fn parse_volume_arg(arg: &str) -> Result<(String, PartSel)> {
    match arg.rsplit_once(':') {
        None => Ok((arg.to_string(), PartSel::Auto)),
        Some((vol, n)) => {
            let digits = n.strip_prefix('p').unwrap_or(n);
            let num = digits.parse::<u32>().map_err(|_| {
                FilesError::Invalid(format!(
                    "`{arg}`: expected VOLUME, VOLUME:N or VOLUME:pN (N a partition number)"
                ))
            })?;
            Ok((vol.to_string(), PartSel::Number(num)))
        }
    }
}

/// Picks the partition `sel` names; the error says why nothing fits (an unsupported
/// filesystem is named with the fallback).
pub fn select<'t>(table: &'t Table, sel: PartSel, volume: &str) -> Result<&'t Partition> {
    match sel {
        PartSel::Number(n) => {
            let p = table
                .partitions
                .iter()
                .find(|p| p.number == n)
                .ok_or_else(|| FilesError::NoPartition {
                    volume: volume.to_string(),
                    number: n,
                    available: available(table),
                })?;
            if !p.fs.readable() {
                return Err(FilesError::Unsupported {
                    volume: format!("{volume}:{n}"),
                    what: describe(p),
                });
            }
            Ok(p)
        }
        PartSel::Auto => {
            let largest = |linux: bool| {
                table
                    .partitions
                    .iter()
                    .filter(|p| p.fs.readable() && (!linux || p.fs.is_linux()))
                    .max_by_key(|p| p.size)
            };
            if let Some(p) = largest(true).or_else(|| largest(false)) {
                return Ok(p);
            }
            let unsupported: Vec<&Partition> = table
                .partitions
                .iter()
                .filter(|p| !matches!(p.fs, FsKind::Unknown | FsKind::Extended | FsKind::Swap))
                .collect();
            match unsupported.as_slice() {
                [p] => Err(FilesError::Unsupported {
                    volume: volume.to_string(),
                    what: describe(p),
                }),
                _ => Err(FilesError::NoFilesystem {
                    volume: volume.to_string(),
                    found: available(table),
                }),
            }
        }
    }
}

fn describe(p: &Partition) -> String {
    if p.number == 0 {
        format!("the disk holds {}", p.fs.name())
    } else {
        format!("partition {} holds {}", p.number, p.fs.name())
    }
}

fn available(table: &Table) -> String {
    if table.partitions.is_empty() {
        return "the partition table is empty".into();
    }
    table
        .partitions
        .iter()
        .map(|p| {
            if p.number == 0 {
                format!("whole disk: {}", p.fs.name())
            } else {
                format!("{}: {}", p.number, p.fs.name())
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_args() {
        assert_eq!(
            parse_volume_arg("root").unwrap(),
            ("root".into(), PartSel::Auto)
        );
        assert_eq!(
            parse_volume_arg("root:2").unwrap(),
            ("root".into(), PartSel::Number(2))
        );
        assert_eq!(
            parse_volume_arg("root:p3").unwrap(),
            ("root".into(), PartSel::Number(3))
        );
        assert!(parse_volume_arg("root:x").is_err());
    }

    /// An MBR whose only entry is an extended partition at sector 2048, with EBRs written by
    /// `ebr(sector, logical_start, next)`.
    fn extended_disk(ebrs: &[(u32, u32, u32)]) -> Slice {
        let mut d = vec![0u8; 4 << 20];
        let e = 446;
        d[e + 4] = 0x05;
        d[e + 8..e + 12].copy_from_slice(&2048u32.to_le_bytes());
        d[e + 12..e + 16].copy_from_slice(&4096u32.to_le_bytes());
        d[510] = 0x55;
        d[511] = 0xAA;
        for (sector, start, next) in ebrs {
            let at = *sector as usize * 512;
            d[at + 446 + 4] = 0x83;
            d[at + 446 + 8..at + 446 + 12].copy_from_slice(&start.to_le_bytes());
            d[at + 446 + 12..at + 446 + 16].copy_from_slice(&16u32.to_le_bytes());
            if *next != 0 {
                d[at + 462 + 4] = 0x05;
                d[at + 462 + 8..at + 462 + 12].copy_from_slice(&next.to_le_bytes());
                d[at + 462 + 12..at + 462 + 16].copy_from_slice(&32u32.to_le_bytes());
            }
            d[at + 510] = 0x55;
            d[at + 511] = 0xAA;
        }
        Slice::from_bytes(d)
    }

    #[test]
    fn ebr_chains_that_loop_or_overflow_are_refused() {
        // Two logical partitions: a good chain.
        let good = extended_disk(&[(2048, 63, 100), (2148, 63, 0)]);
        let t = read_table(&good, "v").unwrap();
        let numbers: Vec<u32> = t.partitions.iter().map(|p| p.number).collect();
        assert_eq!(numbers, vec![1, 5, 6]);
        // The second EBR points back at the first.
        let back = extended_disk(&[(2048, 63, 100), (2148, 63, 50)]);
        let err = read_table(&back, "v").unwrap_err().to_string();
        assert!(err.contains("backwards"), "{err}");
        // A logical partition start that overflows 32 bits.
        let over = extended_disk(&[(2048, u32::MAX - 10, 0)]);
        let err = read_table(&over, "v").unwrap_err().to_string();
        assert!(err.contains("overflows"), "{err}");
    }

    fn part(number: u32, size: u64, fs: FsKind) -> Partition {
        Partition {
            number,
            start: 0,
            size,
            type_name: String::new(),
            name: String::new(),
            fs,
        }
    }

    #[test]
    fn auto_prefers_the_largest_linux_filesystem_and_names_unsupported_ones() {
        let t = Table {
            kind: TableKind::Gpt,
            disk_size: 0,
            partitions: vec![
                part(1, 100, FsKind::Vfat),
                part(2, 10, FsKind::Ext4),
                part(3, 50, FsKind::Ext2),
                part(4, 500, FsKind::Ntfs),
            ],
        };
        assert_eq!(select(&t, PartSel::Auto, "v").unwrap().number, 3);
        assert_eq!(select(&t, PartSel::Number(4), "v").unwrap().number, 4);
        let err = select(&t, PartSel::Number(1), "v").unwrap_err().to_string();
        assert!(
            err.contains("vfat") && err.contains("virtguard download"),
            "{err}"
        );
        let err = select(&t, PartSel::Number(9), "v").unwrap_err().to_string();
        assert!(err.contains("no partition 9"), "{err}");
        let xfs = Table {
            kind: TableKind::None,
            disk_size: 0,
            partitions: vec![part(0, 1, FsKind::Xfs)],
        };
        let err = select(&xfs, PartSel::Auto, "v").unwrap_err().to_string();
        assert!(
            err.contains("xfs") && err.contains("virtguard mount"),
            "{err}"
        );
    }
}
