//! `virtguard files parts|ls|get|find|diff`: single files out of a backup's disk image,
//! without restoring the disk. This module resolves the backup and volume, opens a
//! [`VolumeReader`] under a shared repository lock, and runs the work of [`crate::files`] on a
//! blocking thread (the filesystem parsers are synchronous); it only formats what comes back.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use super::util::{human, open_repo, resolve_backup};
use super::{Config, Output};
use crate::error::{Error, Result};
use crate::files::ops::{self, Change, FindFilter, GetOptions, SizeFilter};
use crate::files::parts::{self, PartSel, Table, TableKind};
use crate::files::{open_filesystem, EntryKind, FilesError, Filesystem, Slice};
use crate::repo::locks::LockKind;
use crate::repo::{BackupRef, BlockingVolumeReader, Repository, VolumeReader, VolumeReaderOptions};

const FILES_ABOUT: &str = "\
Read single files out of a backup's disk images, without restoring the disk: no root, no \
mount, no cluster. Works on local and S3 repositories.

VOLUME is a volume name of the backup (`virtguard show BACKUP`); alone it picks the only or \
the largest Linux filesystem of its partition table (else the largest NTFS one), \
VOLUME:N or VOLUME:pN picks partition N (`files parts` lists them; 0 is a disk without a \
table). Readable: ext2/3/4 (extents, htree directories, 64-bit, metadata_csum) and NTFS. \
XFS, btrfs, LVM physical volumes and LUKS are detected and named: use `virtguard download` \
(the whole disk) or `virtguard mount` (the image as a file, for the system's tools) for them.

What is verified: every chunk of the image that a command reads is checked against its id \
(BLAKE3, keyed in encrypted repositories) before use, and the volume's index against the \
backup's manifest — so every byte read is exactly the byte backed up. ext4 metadata \
(superblock, group descriptors, inodes, extent trees, directory blocks) is also checked \
against its own checksums when the filesystem has metadata_csum. Not verified: file \
contents against the filesystem (neither ext4 nor NTFS checksums file data), NTFS metadata \
(it has no checksums), and ext2/3 metadata (no checksums).";

/// The verification note every `files` subcommand's help ends with.
const VERIFIED_NOTE: &str = "\
Verified: every chunk read (against its id) and the volume's index (against the manifest); ext4 \
metadata against its checksums when the filesystem has metadata_csum. Not verified: file \
contents against the filesystem (ext4 and NTFS have no data checksums), NTFS and ext2/3 \
metadata. See `virtguard files --help`.";

/// `virtguard files …`.
#[derive(Debug, Args)]
#[command(after_help = FILES_ABOUT)]
pub struct FilesArgs {
    #[command(subcommand)]
    pub command: FilesCommand,
}

/// The `files` subcommands.
#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// List a volume's partition table (GPT or MBR): numbers, offsets, sizes, types,
    /// filesystems
    Parts(PartsArgs),
    /// List a directory (or show one file) inside a volume
    Ls(LsArgs),
    /// Copy files or directory trees out of a volume (sparse; --preserve keeps mode and times)
    Get(GetArgs),
    /// Find files by name, modification time and size
    Find(FindArgs),
    /// Which files were added, removed or modified between two backups
    Diff(DiffArgs),
}

/// The backup and volume every `files` command starts from.
#[derive(Debug, Args)]
pub struct Target {
    /// Backup: an id, namespace/vm/id, or namespace/vm@latest
    pub backup: String,
    /// Volume name, VOLUME:N or VOLUME:pN for partition N
    pub volume: String,
}

#[derive(Debug, Args)]
#[command(after_help = VERIFIED_NOTE)]
pub struct PartsArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
#[command(after_help = VERIFIED_NOTE)]
pub struct LsArgs {
    #[command(flatten)]
    pub target: Target,
    /// Directory or file inside the filesystem
    #[arg(default_value = "/")]
    pub path: String,
    /// Long listing: type and mode, owner, size, modification time (UTC), symlink targets
    #[arg(short = 'l')]
    pub long: bool,
    /// Everything below PATH, as full paths
    #[arg(short = 'R', long)]
    pub recursive: bool,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
#[command(after_help = VERIFIED_NOTE)]
pub struct GetArgs {
    #[command(flatten)]
    pub target: Target,
    /// Files or directories inside the filesystem
    #[arg(required = true)]
    pub paths: Vec<String>,
    /// Output file (one regular file) or directory (created if needed)
    #[arg(short, long = "output")]
    pub out: PathBuf,
    /// Keep permission bits and modification times (and owners when run as root)
    #[arg(long)]
    pub preserve: bool,
    /// Replace existing output files
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
#[command(after_help = VERIFIED_NOTE)]
pub struct FindArgs {
    #[command(flatten)]
    pub target: Target,
    /// Directory to search
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Glob on the file name (e.g. '*.log')
    #[arg(long)]
    pub name: Option<String>,
    /// Modified after TIME: 2026-12-01, "2026-12-01 10:00" (UTC), RFC 3339, or an age (2h,
    /// 3days)
    #[arg(long)]
    pub newer: Option<String>,
    /// Size in bytes: +N larger, -N smaller, N exactly (suffixes k, M, G, T)
    #[arg(long, allow_hyphen_values = true)]
    pub size: Option<String>,
    /// Only this type: f (file), d (directory), l (symlink)
    #[arg(long = "type")]
    pub kind: Option<String>,
    /// Long listing
    #[arg(short = 'l')]
    pub long: bool,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
#[command(after_help = VERIFIED_NOTE)]
pub struct DiffArgs {
    /// Older backup: an id, namespace/vm/id, or namespace/vm@latest
    pub backup_a: String,
    /// Newer backup
    pub backup_b: String,
    /// Volume name, VOLUME:N or VOLUME:pN (the same in both backups)
    pub volume: String,
    /// Only below this directory
    #[arg(default_value = "/")]
    pub path: String,
    /// Also compare the bytes of regular files of equal size (reads both)
    #[arg(long)]
    pub content: bool,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// An opened volume: the reader, the partition selector and a label for messages.
struct Opened {
    backup: BackupRef,
    reader: Arc<VolumeReader>,
    sel: PartSel,
    volume: String,
}

async fn open_volume(repo: &Arc<Repository>, spec: &str, volume_arg: &str) -> Result<Opened> {
    let (volume, sel) = parts::parse_volume_arg(volume_arg)?;
    let backup = resolve_backup(repo, spec).await?;
    let m = repo.load_manifest(&backup).await?;
    let reader =
        VolumeReader::open(repo.clone(), &m, &volume, VolumeReaderOptions::default()).await?;
    Ok(Opened {
        backup,
        reader,
        sel,
        volume,
    })
}

/// The table and the chosen filesystem of a volume (on a blocking thread).
fn mount_fs(
    r: BlockingVolumeReader,
    label: &str,
    sel: PartSel,
) -> Result<(Table, Box<dyn Filesystem>)> {
    let disk = Slice::whole(r);
    let table = parts::read_table(&disk, label)?;
    let p = parts::select(&table, sel, label)?;
    let name = if table.kind == TableKind::None {
        label.to_string()
    } else {
        format!("{label}:{}", p.number)
    };
    let fs = open_filesystem(disk.sub(p.start, p.size), p.fs, &name)?;
    Ok((table, fs))
}

/// Runs `work` on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Invalid(format!("internal worker failed: {e}")))?
}

/// Runs a `files` command.
pub async fn files(config: &Config, args: FilesArgs) -> Result<()> {
    let repo = open_repo(config).await?;
    let lock = repo.lock(LockKind::Shared, "files").await?;
    let res = run(config, &repo, args.command).await;
    lock.release().await;
    res
}

fn label(o: &Opened) -> String {
    format!("{} volume {}", o.backup, o.volume)
}

async fn run(config: &Config, repo: &Arc<Repository>, cmd: FilesCommand) -> Result<()> {
    match cmd {
        FilesCommand::Parts(a) => {
            let (volume, _) = parts::parse_volume_arg(&a.target.volume)?;
            let o = open_volume(repo, &a.target.backup, &volume).await?;
            let r = o.reader.blocking();
            let l = label(&o);
            let table = blocking(move || Ok(parts::read_table(&Slice::whole(r), &l)?)).await?;
            print_table(&label(&o), &table, a.output);
            Ok(())
        }
        FilesCommand::Ls(a) => {
            let o = open_volume(repo, &a.target.backup, &a.target.volume).await?;
            let (r, l, sel) = (o.reader.blocking(), label(&o), o.sel);
            let path = crate::files::normalize(&a.path)?;
            let recursive = a.recursive;
            let entries = blocking(move || {
                let (_, mut fs) = mount_fs(r, &l, sel)?;
                Ok(ops::list(fs.as_mut(), &path, recursive)?)
            })
            .await?;
            print_entries(&entries, a.long, a.recursive, a.output);
            Ok(())
        }
        FilesCommand::Find(a) => {
            let o = open_volume(repo, &a.target.backup, &a.target.volume).await?;
            let filter = FindFilter {
                name: a
                    .name
                    .as_deref()
                    .map(glob::Pattern::new)
                    .transpose()
                    .map_err(|e| Error::Invalid(format!("--name: {e}")))?,
                newer: a
                    .newer
                    .as_deref()
                    .map(|t| ops::parse_time(t, chrono::Utc::now()))
                    .transpose()?,
                size: a.size.as_deref().map(SizeFilter::parse).transpose()?,
                kind: a.kind.as_deref().map(parse_kind).transpose()?,
            };
            let (r, l, sel) = (o.reader.blocking(), label(&o), o.sel);
            let path = crate::files::normalize(&a.path)?;
            let found = blocking(move || {
                let (_, mut fs) = mount_fs(r, &l, sel)?;
                Ok(ops::find(fs.as_mut(), &path, &filter)?)
            })
            .await?;
            print_entries(&found, a.long, true, a.output);
            Ok(())
        }
        FilesCommand::Get(a) => get(config, repo, a).await,
        FilesCommand::Diff(a) => {
            let oa = open_volume(repo, &a.backup_a, &a.volume).await?;
            let ob = open_volume(repo, &a.backup_b, &a.volume).await?;
            let (ra, la, sa) = (oa.reader.blocking(), label(&oa), oa.sel);
            let (rb, lb, sb) = (ob.reader.blocking(), label(&ob), ob.sel);
            let path = crate::files::normalize(&a.path)?;
            let content = a.content;
            let changes = blocking(move || {
                let (_, mut fa) = mount_fs(ra, &la, sa)?;
                let (_, mut fb) = mount_fs(rb, &lb, sb)?;
                Ok(ops::diff(fa.as_mut(), fb.as_mut(), &path, content)?)
            })
            .await?;
            print_changes(&changes, a.output);
            Ok(())
        }
    }
}

fn parse_kind(s: &str) -> Result<EntryKind> {
    match s {
        "f" => Ok(EntryKind::File),
        "d" => Ok(EntryKind::Dir),
        "l" => Ok(EntryKind::Symlink),
        _ => Err(Error::Invalid(format!(
            "--type `{s}`: expected f (file), d (directory) or l (symlink)"
        ))),
    }
}

async fn get(config: &Config, repo: &Arc<Repository>, a: GetArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let o = open_volume(repo, &a.target.backup, &a.target.volume).await?;
    let (r, l, sel) = (o.reader.blocking(), label(&o), o.sel);
    let paths = a
        .paths
        .iter()
        .map(|p| crate::files::normalize(p))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let show_bar = config.progress && std::io::stderr().is_terminal();
    let (out, preserve, force) = (a.out.clone(), a.preserve, a.force);
    let stats = blocking(move || {
        let (_, mut fs) = mount_fs(r, &l, sel)?;
        let progress = if show_bar {
            let total = ops::total_size(fs.as_mut(), &paths)?;
            let pb = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            ) {
                pb.set_style(style);
            }
            Some(pb)
        } else {
            None
        };
        let opts = GetOptions {
            preserve,
            force,
            progress: progress.clone(),
        };
        let res = ops::get(fs.as_mut(), &paths, &out, &opts);
        if let Some(p) = progress {
            p.finish_and_clear();
        }
        Ok(res?)
    })
    .await?;
    let rs = o.reader.stats();
    eprintln!(
        "fetched {} file(s), {} dir(s), {} symlink(s), {} ({} written, holes left out) from {} in {:.1}s; read {} of {} chunk(s) ({}) from the repository",
        stats.files,
        stats.dirs,
        stats.symlinks,
        human(stats.bytes),
        human(stats.bytes_written),
        label(&o),
        t0.elapsed().as_secs_f64(),
        rs.chunks_fetched,
        o.reader.index().chunks.len(),
        human(rs.bytes_fetched),
    );
    for s in &stats.skipped {
        eprintln!("skipped {s}: devices, FIFOs and sockets are not created");
    }
    if stats.failed.is_empty() {
        return Ok(());
    }
    Err(FilesError::Incomplete {
        failed: stats.failed,
    }
    .into())
}

fn print_table(label: &str, t: &Table, output: Output) {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(t).unwrap_or_default());
        return;
    }
    let kind = match t.kind {
        TableKind::Gpt => "GPT",
        TableKind::Mbr => "MBR",
        TableKind::None => "no partition table",
    };
    println!(
        "{label}: {kind}, {} ({} bytes)",
        human(t.disk_size),
        t.disk_size
    );
    println!(
        "{:>3}  {:>14}  {:>10}  {:<22}  {:<10}  name",
        "#", "start", "size", "type", "filesystem"
    );
    for p in &t.partitions {
        println!(
            "{:>3}  {:>14}  {:>10}  {:<22}  {:<10}  {}",
            p.number,
            p.start,
            human(p.size),
            p.type_name,
            p.fs.name(),
            p.name
        );
    }
}

fn mode_string(kind: EntryKind, mode: u16) -> String {
    let mut s = String::with_capacity(10);
    s.push(kind.letter());
    let bits = [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ];
    for (k, (bit, c)) in bits.iter().enumerate() {
        let set = mode & bit != 0;
        let special = match k {
            2 => mode & 0o4000 != 0,
            5 => mode & 0o2000 != 0,
            8 => mode & 0o1000 != 0,
            _ => false,
        };
        s.push(match (set, special, k) {
            (true, true, 8) => 't',
            (false, true, 8) => 'T',
            (true, true, _) => 's',
            (false, true, _) => 'S',
            (true, false, _) => *c,
            (false, false, _) => '-',
        });
    }
    s
}

fn print_entries(entries: &[crate::files::Entry], long: bool, full_paths: bool, output: Output) {
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(entries).unwrap_or_default()
        );
        return;
    }
    for e in entries {
        let name = if full_paths { &e.path } else { &e.name };
        if long {
            let target = e
                .target
                .as_ref()
                .map(|t| format!(" -> {t}"))
                .unwrap_or_default();
            println!(
                "{} {:>6} {:>6} {:>12} {} {name}{target}",
                mode_string(e.kind, e.mode),
                e.uid,
                e.gid,
                e.size,
                e.mtime.rfc3339(),
            );
        } else {
            println!("{name}");
        }
    }
}

fn print_changes(changes: &[Change], output: Output) {
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(changes).unwrap_or_default()
        );
        return;
    }
    for c in changes {
        match c {
            Change::Added { entry } => println!("A {}", entry.path),
            Change::Removed { entry } => println!("D {}", entry.path),
            Change::Modified { new, reasons, .. } => {
                println!("M {} ({})", new.path, reasons.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_says_what_is_and_is_not_verified() {
        use clap::CommandFactory;
        let mut cli = crate::cli::Cli::command();
        let files = cli.find_subcommand_mut("files").expect("files command");
        let help = files.render_long_help().to_string();
        assert!(
            help.contains("What is verified") && help.contains("Not verified"),
            "{help}"
        );
        let get = files.find_subcommand_mut("get").expect("files get");
        let help = get.render_long_help().to_string();
        assert!(
            help.contains("Verified: every chunk") && help.contains("Not verified"),
            "{help}"
        );
    }

    #[test]
    fn modes_render_like_ls() {
        assert_eq!(mode_string(EntryKind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(EntryKind::File, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(EntryKind::Dir, 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(EntryKind::File, 0o2644), "-rw-r-Sr--");
        assert_eq!(mode_string(EntryKind::Symlink, 0o777), "lrwxrwxrwx");
    }
}
