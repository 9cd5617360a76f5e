//! Which filesystem (or container) a byte range holds, by the magic numbers at the offsets
//! each format defines. Probing reads at most three small ranges (the first 4 KiB, the ext
//! superblock and the btrfs superblock); it never trusts a size field, so it cannot be made to
//! read much or allocate.

use serde::Serialize;

use super::Slice;

/// What a partition (or a disk without a table) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsKind {
    Ext2,
    Ext3,
    Ext4,
    Ntfs,
    Xfs,
    Btrfs,
    LvmPv,
    Luks,
    Swap,
    Vfat,
    Iso9660,
    /// An MBR extended partition (a container of logical partitions).
    Extended,
    Unknown,
}

impl FsKind {
    /// Readable by `virtguard files`.
    pub fn readable(self) -> bool {
        matches!(
            self,
            FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 | FsKind::Ntfs
        )
    }

    /// A Linux filesystem `VOLUME` alone prefers.
    pub fn is_linux(self) -> bool {
        matches!(self, FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4)
    }

    /// A name for tables and messages.
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Ext2 => "ext2",
            FsKind::Ext3 => "ext3",
            FsKind::Ext4 => "ext4",
            FsKind::Ntfs => "ntfs",
            FsKind::Xfs => "xfs",
            FsKind::Btrfs => "btrfs",
            FsKind::LvmPv => "LVM PV",
            FsKind::Luks => "LUKS",
            FsKind::Swap => "swap",
            FsKind::Vfat => "vfat",
            FsKind::Iso9660 => "iso9660",
            FsKind::Extended => "extended",
            FsKind::Unknown => "unknown",
        }
    }
}

/// ext superblock: magic at 1024 + 56; compat features at +92, incompat at +96, ro_compat
/// at +100.
const EXT_SB: u64 = 1024;
const EXT_MAGIC: u16 = 0xEF53;
const EXT_COMPAT_HAS_JOURNAL: u32 = 0x4;
/// Incompatible features only ext4 sets: extents, 64bit, flex_bg, inline_data, …
const EXT4_INCOMPAT: u32 = 0x40 | 0x80 | 0x200 | 0x400 | 0x1000 | 0x8000;
/// ro_compat features only ext4 sets: huge_file, gdt_csum, dir_nlink, extra_isize,
/// metadata_csum.
const EXT4_RO_COMPAT: u32 = 0x8 | 0x10 | 0x20 | 0x40 | 0x400;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Identifies what `s` holds. I/O errors (e.g. a corrupt chunk) are returned.
pub fn probe(s: &Slice) -> std::io::Result<FsKind> {
    let mut head = vec![0u8; 4096];
    s.read_padded(0, &mut head)?;
    if head.starts_with(b"LUKS\xba\xbe") || head.starts_with(b"SKUL\xba\xbe") {
        return Ok(FsKind::Luks);
    }
    if head.starts_with(b"XFSB") {
        return Ok(FsKind::Xfs);
    }
    // LVM2 label: "LABELONE" in one of the first four sectors, "LVM2 001" at +24.
    for sector in 0..4 {
        let at = sector * 512;
        if &head[at..at + 8] == b"LABELONE" && &head[at + 24..at + 32] == b"LVM2 001" {
            return Ok(FsKind::LvmPv);
        }
    }
    if &head[3..11] == b"NTFS    " {
        return Ok(FsKind::Ntfs);
    }
    if &head[4086..4096] == b"SWAPSPACE2" || &head[4086..4096] == b"SWAP-SPACE" {
        return Ok(FsKind::Swap);
    }
    let mut sb = vec![0u8; 1024];
    s.read_padded(EXT_SB, &mut sb)?;
    if le16(&sb, 56) == EXT_MAGIC {
        let compat = le32(&sb, 92);
        let incompat = le32(&sb, 96);
        let ro_compat = le32(&sb, 100);
        return Ok(
            if incompat & EXT4_INCOMPAT != 0 || ro_compat & EXT4_RO_COMPAT != 0 {
                FsKind::Ext4
            } else if compat & EXT_COMPAT_HAS_JOURNAL != 0 {
                FsKind::Ext3
            } else {
                FsKind::Ext2
            },
        );
    }
    let mut btrfs = [0u8; 8];
    s.read_padded(0x10040, &mut btrfs)?;
    if &btrfs == b"_BHRfS_M" {
        return Ok(FsKind::Btrfs);
    }
    let mut iso = [0u8; 5];
    s.read_padded(0x8001, &mut iso)?;
    if &iso == b"CD001" {
        return Ok(FsKind::Iso9660);
    }
    if head[510] == 0x55
        && head[511] == 0xAA
        && (&head[54..59] == b"FAT12" || &head[54..59] == b"FAT16" || &head[82..87] == b"FAT32")
    {
        return Ok(FsKind::Vfat);
    }
    Ok(FsKind::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(patches: &[(usize, &[u8])]) -> Slice {
        let mut b = vec![0u8; 128 * 1024];
        for (at, bytes) in patches {
            b[*at..*at + bytes.len()].copy_from_slice(bytes);
        }
        Slice::from_bytes(b)
    }

    #[test]
    fn magics() {
        let ext = |compat: u32, incompat: u32, ro: u32| {
            probe(&image(&[
                (1024 + 56, &EXT_MAGIC.to_le_bytes()),
                (1024 + 92, &compat.to_le_bytes()),
                (1024 + 96, &incompat.to_le_bytes()),
                (1024 + 100, &ro.to_le_bytes()),
            ]))
            .unwrap()
        };
        assert_eq!(ext(0, 0x2, 0x3), FsKind::Ext2);
        assert_eq!(ext(0x4, 0x2, 0x3), FsKind::Ext3);
        assert_eq!(ext(0x4, 0x2 | 0x40, 0x3), FsKind::Ext4);
        assert_eq!(ext(0x4, 0x2, 0x400), FsKind::Ext4);
        // LVM2 label in the second sector.
        let lvm = image(&[(512, b"LABELONE"), (512 + 24, b"LVM2 001")]);
        assert_eq!(probe(&lvm).unwrap(), FsKind::LvmPv);
        assert_eq!(probe(&image(&[(0, b"XFSB")])).unwrap(), FsKind::Xfs);
        assert_eq!(probe(&image(&[(3, b"NTFS    ")])).unwrap(), FsKind::Ntfs);
        assert_eq!(
            probe(&image(&[(0x10040, b"_BHRfS_M")])).unwrap(),
            FsKind::Btrfs
        );
        assert_eq!(
            probe(&image(&[(4086, b"SWAPSPACE2")])).unwrap(),
            FsKind::Swap
        );
        assert_eq!(probe(&image(&[])).unwrap(), FsKind::Unknown);
        // Shorter than the offsets probed: no error, nothing found.
        assert_eq!(
            probe(&Slice::from_bytes(vec![0; 100])).unwrap(),
            FsKind::Unknown
        );
    }
}
