//! What the `files` commands do on a [`Filesystem`]: list (optionally recursive), find with
//! filters, copy files and trees out (sparse, optionally keeping mode, times and owner), and
//! diff two filesystems.
//!
//! Invariants: walks are iterative with a depth bound ([`MAX_DEPTH`]), so a damaged
//! filesystem with a directory cycle cannot recurse without end; a file that cannot be read
//! (e.g. it touches a corrupt chunk) fails alone — its partial output is removed, the copy goes
//! on with the other files and reports every failure at the end.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use serde::Serialize;

use super::{Entry, EntryKind, FilesError, Filesystem, Result, Time};

/// Deepest directory nesting walked (Linux paths are at most 4096 bytes, so at most 2048
/// levels).
pub const MAX_DEPTH: usize = 2048;

/// The entries of `path` (a directory's children, or the object itself), or with `recursive`
/// every object below it, parents before children.
pub fn list(fs: &mut dyn Filesystem, path: &str, recursive: bool) -> Result<Vec<Entry>> {
    let top = fs.stat(path)?;
    if top.kind != EntryKind::Dir {
        return Ok(vec![top]);
    }
    if !recursive {
        return fs.read_dir(path);
    }
    let mut out = Vec::new();
    walk(fs, path, &mut |e| {
        out.push(e.clone());
        Ok(())
    })?;
    Ok(out)
}

/// Visits every object below the directory `root` (not `root` itself), depth first, each
/// directory's entries sorted by name.
pub fn walk(
    fs: &mut dyn Filesystem,
    root: &str,
    visit: &mut dyn FnMut(&Entry) -> Result<()>,
) -> Result<()> {
    // A stack of directory listings still being visited.
    let mut stack: Vec<std::vec::IntoIter<Entry>> = vec![fs.read_dir(root)?.into_iter()];
    while let Some(top) = stack.last_mut() {
        let Some(e) = top.next() else {
            stack.pop();
            continue;
        };
        visit(&e)?;
        if e.kind == EntryKind::Dir {
            if stack.len() >= MAX_DEPTH {
                return Err(FilesError::Invalid(format!(
                    "`{}`: directories nested deeper than {MAX_DEPTH} levels (a damaged filesystem?)",
                    e.path
                )));
            }
            stack.push(fs.read_dir(&e.path)?.into_iter());
        }
    }
    Ok(())
}

/// A `--size` filter: `+N` larger than N bytes, `-N` smaller, `N` exactly N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeFilter {
    Larger(u64),
    Smaller(u64),
    Exactly(u64),
}

impl SizeFilter {
    /// Parses `+10M`, `-4k`, `512` (suffixes k, M, G, T: powers of 1024; `c` or none: bytes).
    pub fn parse(s: &str) -> Result<SizeFilter> {
        let bad = || {
            FilesError::Invalid(format!(
                "--size `{s}`: expected [+|-]N[k|M|G|T] (e.g. +10M: larger than 10 MiB)"
            ))
        };
        let (ctor, rest): (fn(u64) -> SizeFilter, &str) = match s.as_bytes().first() {
            Some(b'+') => (SizeFilter::Larger, &s[1..]),
            Some(b'-') => (SizeFilter::Smaller, &s[1..]),
            _ => (SizeFilter::Exactly, s),
        };
        let (num, mult) = match rest.chars().last() {
            Some('k' | 'K') => (&rest[..rest.len() - 1], 1u64 << 10),
            Some('M') => (&rest[..rest.len() - 1], 1 << 20),
            Some('G') => (&rest[..rest.len() - 1], 1 << 30),
            Some('T') => (&rest[..rest.len() - 1], 1 << 40),
            Some('c') => (&rest[..rest.len() - 1], 1),
            _ => (rest, 1),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        Ok(ctor(n.checked_mul(mult).ok_or_else(bad)?))
    }

    fn matches(self, size: u64) -> bool {
        match self {
            SizeFilter::Larger(n) => size > n,
            SizeFilter::Smaller(n) => size < n,
            SizeFilter::Exactly(n) => size == n,
        }
    }
}

/// Parses a `--newer` time: RFC 3339, `YYYY-MM-DD`, `YYYY-MM-DD HH:MM[:SS]` (UTC), or a
/// duration meaning that long before `now` (`2h`, `3days`).
pub fn parse_time(s: &str, now: chrono::DateTime<chrono::Utc>) -> Result<Time> {
    use chrono::{NaiveDate, NaiveDateTime};
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .ok()
        .or_else(|| {
            ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
                .map(|t| t.and_utc())
        })
        .or_else(|| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc())
        })
        .or_else(|| {
            let d = humantime::parse_duration(s).ok()?;
            let d = chrono::Duration::from_std(d).ok()?;
            now.checked_sub_signed(d)
        })
        .ok_or_else(|| {
            FilesError::Invalid(format!(
                "--newer `{s}`: expected a time (2026-12-01, \"2026-12-01 10:00\", RFC 3339) or an age (2h, 3days)"
            ))
        })?;
    Ok(Time {
        secs: t.timestamp(),
        nanos: t.timestamp_subsec_nanos(),
    })
}

/// `find` criteria; all given ones must match.
#[derive(Debug, Clone, Default)]
pub struct FindFilter {
    /// Glob on the file name (`*.conf`).
    pub name: Option<glob::Pattern>,
    /// Modified strictly after.
    pub newer: Option<Time>,
    pub size: Option<SizeFilter>,
    pub kind: Option<EntryKind>,
}

impl FindFilter {
    pub fn matches(&self, e: &Entry) -> bool {
        self.name.as_ref().is_none_or(|p| p.matches(&e.name))
            && self.newer.is_none_or(|t| e.mtime > t)
            && self.size.is_none_or(|s| s.matches(e.size))
            && self.kind.is_none_or(|k| e.kind == k)
    }
}

/// Every object below `root` (and `root` itself) that matches.
pub fn find(fs: &mut dyn Filesystem, root: &str, filter: &FindFilter) -> Result<Vec<Entry>> {
    let top = fs.stat(root)?;
    let mut out = Vec::new();
    if filter.matches(&top) {
        out.push(top.clone());
    }
    if top.kind == EntryKind::Dir {
        walk(fs, root, &mut |e| {
            if filter.matches(e) {
                out.push(e.clone());
            }
            Ok(())
        })?;
    }
    Ok(out)
}

/// Options of [`get`].
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    /// Keep permission bits and modification times (and owners when running as root).
    pub preserve: bool,
    /// Replace existing output files.
    pub force: bool,
    /// Advanced by the bytes of every file copied.
    pub progress: Option<ProgressBar>,
}

/// What [`get`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GetStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Bytes of file content (holes included).
    pub bytes: u64,
    /// Bytes actually written (holes and zero blocks left out).
    pub bytes_written: u64,
    /// Devices, FIFOs and sockets, which are not created.
    pub skipped: Vec<String>,
    /// Objects that could not be copied, with the reason.
    pub failed: Vec<(String, String)>,
}

/// Block size of the zero detection that leaves holes in the output.
const HOLE_BLOCK: usize = 4096;

/// Total bytes of the regular files `paths` name (directories walked), for a progress bar.
pub fn total_size(fs: &mut dyn Filesystem, paths: &[String]) -> Result<u64> {
    let mut total = 0;
    for p in paths {
        let e = fs.stat(p)?;
        match e.kind {
            EntryKind::File => total += e.size,
            EntryKind::Dir => walk(fs, p, &mut |e| {
                if e.kind == EntryKind::File {
                    total += e.size;
                }
                Ok(())
            })?,
            _ => {}
        }
    }
    Ok(total)
}

/// Copies `paths` out of `fs`. One regular file and an `out` that is not a directory (nor ends
/// in `/`): the file is written to `out`. Otherwise `out` is a directory (created if needed) that receives each
/// path under its own name (`/` copies the root's contents). Hard links become separate
/// files.
pub fn get(
    fs: &mut dyn Filesystem,
    paths: &[String],
    out: &Path,
    opts: &GetOptions,
) -> Result<GetStats> {
    let mut stats = GetStats::default();
    let mut tops = Vec::new();
    for p in paths {
        tops.push(fs.stat(p)?);
    }
    let names_dir = out.is_dir() || out.as_os_str().as_encoded_bytes().ends_with(b"/");
    let to_file = matches!(tops.as_slice(), [e] if e.kind == EntryKind::File) && !names_dir;
    if to_file {
        copy_entry(fs, &tops[0], out, opts, &mut stats)?;
        return Ok(stats);
    }
    std::fs::create_dir_all(out).map_err(|source| FilesError::Output {
        path: out.to_path_buf(),
        source,
    })?;
    for top in &tops {
        let dest = if top.path == "/" {
            out.to_path_buf()
        } else {
            out.join(&top.name)
        };
        copy_entry(fs, top, &dest, opts, &mut stats)?;
    }
    Ok(stats)
}

fn out_err(path: &Path) -> impl FnOnce(std::io::Error) -> FilesError + '_ {
    move |source| FilesError::Output {
        path: path.to_path_buf(),
        source,
    }
}

/// Copies one object (a directory with everything below it).
fn copy_entry(
    fs: &mut dyn Filesystem,
    e: &Entry,
    dest: &Path,
    opts: &GetOptions,
    stats: &mut GetStats,
) -> Result<()> {
    match e.kind {
        EntryKind::Dir => {
            match std::fs::create_dir(dest) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && dest.is_dir() => {}
                Err(err) => return Err(out_err(dest)(err)),
            }
            stats.dirs += 1;
            // Children first, then the directory's own times (writing into it changes them).
            let children = fs.read_dir(&e.path)?;
            let mut stack: Vec<(PathBuf, std::vec::IntoIter<Entry>, Entry)> =
                vec![(dest.to_path_buf(), children.into_iter(), e.clone())];
            while let Some((dir, it, _)) = stack.last_mut() {
                let dir = dir.clone();
                let Some(child) = it.next() else {
                    if let Some((d, _, entry)) = stack.pop() {
                        finish(&entry, &d, opts)?;
                    }
                    continue;
                };
                let target = dir.join(&child.name);
                if child.kind == EntryKind::Dir {
                    if stack.len() >= super::ops::MAX_DEPTH {
                        return Err(FilesError::Invalid(format!(
                            "`{}`: directories nested deeper than {MAX_DEPTH} levels",
                            child.path
                        )));
                    }
                    match std::fs::create_dir(&target) {
                        Ok(()) => {}
                        Err(err)
                            if err.kind() == std::io::ErrorKind::AlreadyExists
                                && target.is_dir() => {}
                        Err(err) => return Err(out_err(&target)(err)),
                    }
                    stats.dirs += 1;
                    match fs.read_dir(&child.path) {
                        Ok(grand) => stack.push((target, grand.into_iter(), child)),
                        Err(err) => stats.failed.push((child.path.clone(), err.to_string())),
                    }
                } else {
                    copy_leaf(fs, &child, &target, opts, stats)?;
                }
            }
            Ok(())
        }
        _ => copy_leaf(fs, e, dest, opts, stats),
    }
}

/// Copies a non-directory. A read failure is recorded in `stats.failed` (the partial output is
/// removed); only output errors stop the copy.
fn copy_leaf(
    fs: &mut dyn Filesystem,
    e: &Entry,
    dest: &Path,
    opts: &GetOptions,
    stats: &mut GetStats,
) -> Result<()> {
    if dest.symlink_metadata().is_ok() {
        if !opts.force {
            return Err(FilesError::Invalid(format!(
                "`{}` exists; pass --force to replace it",
                dest.display()
            )));
        }
        std::fs::remove_file(dest).map_err(out_err(dest))?;
    }
    match e.kind {
        EntryKind::File => match copy_file(fs, e, dest, opts) {
            Ok(written) => {
                stats.files += 1;
                stats.bytes += e.size;
                stats.bytes_written += written;
                finish(e, dest, opts)?;
            }
            Err(err @ FilesError::Output { .. }) => return Err(err),
            Err(err) => {
                let _ = std::fs::remove_file(dest);
                stats.failed.push((e.path.clone(), err.to_string()));
            }
        },
        EntryKind::Symlink => {
            let target = e.target.clone().unwrap_or_default();
            std::os::unix::fs::symlink(&target, dest).map_err(out_err(dest))?;
            stats.symlinks += 1;
            finish(e, dest, opts)?;
        }
        _ => stats.skipped.push(e.path.clone()),
    }
    Ok(())
}

/// Writes a regular file sparsely: blocks of zeros are not written, the size is set at the
/// end. Returns the bytes written.
fn copy_file(fs: &mut dyn Filesystem, e: &Entry, dest: &Path, opts: &GetOptions) -> Result<u64> {
    let f = File::options()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(out_err(dest))?;
    let mut written = 0u64;
    fs.read_file(&e.path, &mut |offset, data| {
        for (k, block) in data.chunks(HOLE_BLOCK).enumerate() {
            if block.iter().any(|b| *b != 0) {
                f.write_all_at(block, offset + (k * HOLE_BLOCK) as u64)
                    .map_err(out_err(dest))?;
                written += block.len() as u64;
            }
        }
        if let Some(p) = &opts.progress {
            p.inc(data.len() as u64);
        }
        Ok(())
    })?;
    f.set_len(e.size).map_err(out_err(dest))?;
    Ok(written)
}

/// Applies mode, owner and times after the content is in place (`--preserve`).
fn finish(e: &Entry, dest: &Path, opts: &GetOptions) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !opts.preserve {
        return Ok(());
    }
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::lchown(dest, Some(e.uid), Some(e.gid)).map_err(out_err(dest))?;
    }
    if e.kind != EntryKind::Symlink {
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(u32::from(e.mode)))
            .map_err(out_err(dest))?;
    }
    let ts = rustix::fs::Timespec {
        tv_sec: e.mtime.secs,
        tv_nsec: i64::from(e.mtime.nanos),
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        dest,
        &rustix::fs::Timestamps {
            last_access: ts,
            last_modification: ts,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|err| out_err(dest)(err.into()))?;
    Ok(())
}

/// How an object differs between two filesystems.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum Change {
    Added {
        entry: Entry,
    },
    Removed {
        entry: Entry,
    },
    Modified {
        old: Entry,
        new: Entry,
        /// `type`, `size`, `mtime`, `mode`, `owner`, `target`, `content`.
        reasons: Vec<&'static str>,
    },
}

impl Change {
    pub fn path(&self) -> &str {
        match self {
            Change::Added { entry } | Change::Removed { entry } => &entry.path,
            Change::Modified { new, .. } => &new.path,
        }
    }
}

fn snapshot(
    fs: &mut dyn Filesystem,
    root: &str,
) -> Result<std::collections::BTreeMap<String, Entry>> {
    let mut map = std::collections::BTreeMap::new();
    let top = fs.stat(root)?;
    if top.kind == EntryKind::Dir {
        walk(fs, root, &mut |e| {
            map.insert(e.path.clone(), e.clone());
            Ok(())
        })?;
    } else {
        map.insert(top.path.clone(), top);
    }
    Ok(map)
}

/// BLAKE3 of a regular file's content.
fn content_hash(fs: &mut dyn Filesystem, path: &str) -> Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    fs.read_file(path, &mut |_, data| {
        h.update(data);
        Ok(())
    })?;
    Ok(h.finalize())
}

/// Objects added, removed and modified from `a` to `b` below `root`, in path order. Modified
/// means type, size, mtime, mode, owner or symlink target differ; with `content`, regular
/// files of equal size are also compared byte for byte (by hash).
pub fn diff(
    a: &mut dyn Filesystem,
    b: &mut dyn Filesystem,
    root: &str,
    content: bool,
) -> Result<Vec<Change>> {
    let old = snapshot(a, root)?;
    let new = snapshot(b, root)?;
    let mut out = Vec::new();
    for (path, o) in &old {
        let Some(n) = new.get(path) else {
            out.push(Change::Removed { entry: o.clone() });
            continue;
        };
        let mut reasons = Vec::new();
        if o.kind != n.kind {
            reasons.push("type");
        }
        if o.size != n.size {
            reasons.push("size");
        }
        if o.mtime != n.mtime {
            reasons.push("mtime");
        }
        if o.mode != n.mode {
            reasons.push("mode");
        }
        if (o.uid, o.gid) != (n.uid, n.gid) {
            reasons.push("owner");
        }
        if o.target != n.target {
            reasons.push("target");
        }
        if content
            && o.kind == EntryKind::File
            && n.kind == EntryKind::File
            && o.size == n.size
            && content_hash(a, path)? != content_hash(b, path)?
        {
            reasons.push("content");
        }
        if !reasons.is_empty() {
            out.push(Change::Modified {
                old: o.clone(),
                new: n.clone(),
                reasons,
            });
        }
    }
    for (path, n) in &new {
        if !old.contains_key(path) {
            out.push(Change::Added { entry: n.clone() });
        }
    }
    out.sort_by(|x, y| x.path().cmp(y.path()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_filters() {
        assert_eq!(
            SizeFilter::parse("+10M").unwrap(),
            SizeFilter::Larger(10 << 20)
        );
        assert_eq!(SizeFilter::parse("-4k").unwrap(), SizeFilter::Smaller(4096));
        assert_eq!(SizeFilter::parse("512").unwrap(), SizeFilter::Exactly(512));
        assert!(SizeFilter::parse("+x").is_err());
        assert!(SizeFilter::Larger(5).matches(6) && !SizeFilter::Larger(5).matches(5));
    }

    #[test]
    fn times() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let day = parse_time("2026-12-01", now).unwrap();
        assert_eq!(day.rfc3339(), "2026-12-01T00:00:00Z");
        assert_eq!(
            parse_time("2h", now).unwrap().rfc3339(),
            "2026-12-07T08:00:00Z"
        );
        assert_eq!(
            parse_time("2026-12-01 10:30", now).unwrap().rfc3339(),
            "2026-12-01T10:30:00Z"
        );
        assert!(parse_time("yesterday-ish", now).is_err());
    }
}
