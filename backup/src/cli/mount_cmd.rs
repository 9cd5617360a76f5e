//! `virtguard mount BACKUP_SPEC DIR`: resolves which backups to show, builds the
//! [`BackupFs`] tree, mounts it read-only with FUSE under a shared repository lock and waits
//! for Ctrl-C / SIGTERM (or an external `fusermount3 -u`), then unmounts cleanly.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::util::{open_repo, resolve_backup};
use super::Config;
use crate::error::{Error, Result};
use crate::files::fuse::BackupFs;
use crate::repo::format::BackupId;
use crate::repo::locks::LockKind;
use crate::repo::Error as RepoError;
use crate::repo::{BackupRef, Repository};

#[derive(Debug, Args)]
#[command(after_help = "\
Mount backups read-only with FUSE as a tree <ns>/<vm>/<backup-id>/<volume>.img. The image files \
are read lazily from the repository (local or S3): a read fetches only the chunks it touches, \
each verified against its id, with a bounded cache, so any tool works on a backup without a \
full restore: `mount -o loop,ro` (as root), `qemu-img info`, `guestfish --ro -a`, `ntfs-3g`. \
Needs /dev/fuse and fusermount3 (Debian fuse3). Runs in the foreground; Ctrl-C or SIGTERM \
unmounts.")]
pub struct MountArgs {
    /// What to show: a backup (id, namespace/vm/id, namespace/vm@latest), every backup of a VM
    /// (namespace/vm), of a namespace (namespace), or `all`
    pub backup: String,
    /// Mount point: an existing empty directory
    pub dir: PathBuf,
}

/// The backups a mount spec selects.
async fn select(repo: &Repository, spec: &str) -> Result<Vec<BackupRef>> {
    let parts: Vec<&str> = spec.split('/').collect();
    let found = if spec == "all" {
        repo.list_backups(None, None).await?
    } else if spec.contains('@') || spec.parse::<BackupId>().is_ok() || parts.len() == 3 {
        vec![resolve_backup(repo, spec).await?]
    } else if let [ns, vm] = parts[..] {
        repo.list_backups(Some(ns), Some(vm)).await?
    } else {
        repo.list_backups(Some(spec), None).await?
    };
    if found.is_empty() {
        return Err(RepoError::BackupNotFound {
            id: spec.to_string(),
            hint: Some("no backup matches; run `virtguard list`".into()),
        }
        .into());
    }
    Ok(found)
}

/// Runs `virtguard mount`.
pub async fn mount(config: &Config, a: MountArgs) -> Result<()> {
    let repo = open_repo(config).await?;
    let lock = repo.lock(LockKind::Shared, "mount").await?;
    let res = mount_locked(&repo, &a).await;
    lock.release().await;
    res
}

async fn mount_locked(repo: &Arc<Repository>, a: &MountArgs) -> Result<()> {
    let refs = select(repo, &a.backup).await?;
    let mut backups = Vec::new();
    for r in refs {
        let m = repo.load_manifest(&r).await?;
        backups.push((r, m));
    }
    let n_backups = backups.len();
    let fs = BackupFs::new(repo.clone(), backups);
    let images = fs.image_count();
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName("virtguard".into()),
        fuser::MountOption::Subtype("virtguard".into()),
    ];
    cfg.n_threads = Some(2);
    let dir = a.dir.clone();
    let session = fuser::spawn_mount(fs, &dir, &cfg).map_err(|e| {
        Error::Invalid(format!(
            "mounting on `{}`: {e}: needs /dev/fuse, fusermount3 (Debian fuse3) and an existing empty directory",
            dir.display()
        ))
    })?;
    eprintln!(
        "mounted {images} image(s) of {n_backups} backup(s) read-only at {}; Ctrl-C or SIGTERM unmounts",
        dir.display()
    );
    use tokio::signal::unix::{signal, SignalKind};
    let sig =
        |k| signal(k).map_err(|e| Error::Invalid(format!("installing a signal handler: {e}")));
    let (mut int, mut term) = (sig(SignalKind::interrupt())?, sig(SignalKind::terminate())?);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let external = loop {
        tokio::select! {
            _ = int.recv() => break false,
            _ = term.recv() => break false,
            _ = tick.tick() => if session.guard.is_finished() { break true },
        }
    };
    let res = tokio::task::spawn_blocking(move || {
        if external {
            session.join()
        } else {
            session.umount_and_join()
        }
    })
    .await
    .map_err(|e| Error::Invalid(format!("internal worker failed: {e}")))?;
    match res {
        Ok(()) => {
            eprintln!("unmounted {}", a.dir.display());
            Ok(())
        }
        Err(e) => Err(Error::Invalid(format!(
            "unmounting `{}`: {e} (run `fusermount3 -u {}`)",
            a.dir.display(),
            a.dir.display()
        ))),
    }
}
