//! `virtguard mount`: a read-only FUSE tree `<ns>/<vm>/<backup-id>/<volume>.img` whose image
//! files read lazily from the repository through [`VolumeReader`]s, so any tool (loop mount,
//! `qemu-img`, `guestfish`, `ntfs-3g`) works on a backup without restoring it.
//!
//! Invariants: the tree is fixed when the mount starts (the manifests are read then; backups
//! committed later do not appear); a volume's index is loaded on its first read, and at most
//! [`MAX_OPEN_VOLUMES`] readers (each with its own bounded chunk cache) are kept, least
//! recently used dropped first, so memory stays bounded however many images are read. A read
//! that touches a corrupt chunk fails with EIO and the chunk is named in the log; nothing is
//! ever written.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, Request,
};

use crate::repo::{BackupRef, Manifest, Repository, VolumeReader, VolumeReaderOptions};

/// Volume readers kept open at once.
pub const MAX_OPEN_VOLUMES: usize = 4;

/// Attributes never change while mounted.
const TTL: Duration = Duration::from_secs(3600);

enum NodeKind {
    Dir(BTreeMap<String, u64>),
    Image {
        manifest: Arc<Manifest>,
        volume: String,
    },
}

struct Node {
    parent: u64,
    size: u64,
    mtime: SystemTime,
    kind: NodeKind,
}

/// A use counter, and the open readers by inode with the count of their last use (for LRU
/// eviction).
type OpenReaders = (u64, HashMap<u64, (Arc<VolumeReader>, u64)>);

/// The mounted tree.
pub struct BackupFs {
    repo: Arc<Repository>,
    handle: tokio::runtime::Handle,
    nodes: Vec<Node>,
    uid: u32,
    gid: u32,
    readers: Mutex<OpenReaders>,
}

impl std::fmt::Debug for BackupFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupFs")
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl BackupFs {
    /// Builds the tree of `backups` (their manifests). Must be called inside a tokio runtime;
    /// the file system's callbacks then block on it from FUSE's own threads.
    pub fn new(repo: Arc<Repository>, backups: Vec<(BackupRef, Manifest)>) -> BackupFs {
        let mut fs = BackupFs {
            repo,
            handle: tokio::runtime::Handle::current(),
            nodes: Vec::new(),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            readers: Mutex::new((0, HashMap::new())),
        };
        // Inode 0 is unused; 1 is the root.
        for _ in 0..2 {
            fs.nodes.push(Node {
                parent: 1,
                size: 0,
                mtime: UNIX_EPOCH,
                kind: NodeKind::Dir(BTreeMap::new()),
            });
        }
        for (r, m) in backups {
            let mtime = UNIX_EPOCH
                + Duration::from_secs(u64::try_from(m.finished.timestamp()).unwrap_or(0));
            let ns = fs.dir(1, &r.namespace, mtime);
            let vm = fs.dir(ns, &r.vm, mtime);
            let id = fs.dir(vm, &r.id.to_string(), mtime);
            let m = Arc::new(m);
            for v in &m.volumes {
                let ino = fs.nodes.len() as u64;
                fs.nodes.push(Node {
                    parent: id,
                    size: v.size,
                    mtime,
                    kind: NodeKind::Image {
                        manifest: m.clone(),
                        volume: v.name.clone(),
                    },
                });
                if let NodeKind::Dir(children) = &mut fs.nodes[id as usize].kind {
                    children.insert(format!("{}.img", v.name), ino);
                }
            }
        }
        fs
    }

    /// The child directory `name` of `parent`, created if absent.
    fn dir(&mut self, parent: u64, name: &str, mtime: SystemTime) -> u64 {
        if let NodeKind::Dir(children) = &self.nodes[parent as usize].kind {
            if let Some(ino) = children.get(name) {
                return *ino;
            }
        }
        let ino = self.nodes.len() as u64;
        self.nodes.push(Node {
            parent,
            size: 0,
            mtime,
            kind: NodeKind::Dir(BTreeMap::new()),
        });
        if let NodeKind::Dir(children) = &mut self.nodes[parent as usize].kind {
            children.insert(name.to_string(), ino);
        }
        ino
    }

    /// Image files in the tree.
    pub fn image_count(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n.kind, NodeKind::Image { .. }))
            .count()
    }

    fn node(&self, ino: INodeNo) -> Option<&Node> {
        let i = u64::from(ino);
        if i == 0 {
            return None;
        }
        self.nodes.get(i as usize)
    }

    fn attr(&self, ino: u64, n: &Node) -> FileAttr {
        let (kind, perm, nlink) = match n.kind {
            NodeKind::Dir(_) => (FileType::Directory, 0o555, 2),
            NodeKind::Image { .. } => (FileType::RegularFile, 0o444, 1),
        };
        FileAttr {
            ino: INodeNo(ino),
            size: n.size,
            blocks: n.size.div_ceil(512),
            atime: n.mtime,
            mtime: n.mtime,
            ctime: n.mtime,
            crtime: n.mtime,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 1 << 16,
            flags: 0,
        }
    }

    /// The reader of image inode `ino`, opened (index loaded and checked) on first use.
    fn reader(&self, ino: u64) -> crate::repo::Result<Arc<VolumeReader>> {
        {
            let mut g = self.readers.lock().unwrap_or_else(|p| p.into_inner());
            g.0 += 1;
            let tick = g.0;
            if let Some((r, used)) = g.1.get_mut(&ino) {
                *used = tick;
                return Ok(r.clone());
            }
        }
        let Some(Node {
            kind: NodeKind::Image { manifest, volume },
            ..
        }) = self.nodes.get(ino as usize)
        else {
            return Err(crate::repo::Error::Invalid(format!(
                "inode {ino} is not an image"
            )));
        };
        let r = self.handle.block_on(VolumeReader::open(
            self.repo.clone(),
            manifest,
            volume,
            VolumeReaderOptions::default(),
        ))?;
        let mut g = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        let tick = g.0;
        if g.1.len() >= MAX_OPEN_VOLUMES {
            if let Some(oldest) = g.1.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k) {
                g.1.remove(&oldest);
            }
        }
        g.1.insert(ino, (r.clone(), tick));
        Ok(r)
    }
}

impl Filesystem for BackupFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let child = match self.node(parent).map(|n| &n.kind) {
            Some(NodeKind::Dir(children)) => name.to_str().and_then(|s| children.get(s)),
            _ => None,
        };
        match child.and_then(|c| self.nodes.get(*c as usize).map(|n| (*c, n))) {
            Some((ino, n)) => reply.entry(&TTL, &self.attr(ino, n), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Some(n) => reply.attr(&TTL, &self.attr(u64::from(ino), n)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let ino = u64::from(ino);
        let res = self.reader(ino).and_then(|r| {
            let mut buf = vec![0u8; size as usize];
            let n = self.handle.block_on(r.read_at(offset, &mut buf))?;
            buf.truncate(n);
            Ok(buf)
        });
        match res {
            Ok(buf) => reply.data(&buf),
            Err(e) => {
                tracing::error!(inode = ino, offset, error = %e, "read failed");
                eprintln!("virtguard mount: read at offset {offset} failed: {e}");
                reply.error(Errno::EIO);
            }
        }
    }

    /// Nothing is ever written: closing and syncing an image succeed at once.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(n) = self.node(ino) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let NodeKind::Dir(children) = &n.kind else {
            reply.error(Errno::ENOTDIR);
            return;
        };
        let mut entries = vec![
            (u64::from(ino), FileType::Directory, ".".to_string()),
            (n.parent, FileType::Directory, "..".to_string()),
        ];
        for (name, c) in children {
            let kind = match self.nodes.get(*c as usize).map(|n| &n.kind) {
                Some(NodeKind::Dir(_)) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            entries.push((*c, kind, name.clone()));
        }
        for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}
