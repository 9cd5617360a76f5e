//! Implementations of the repository-only commands.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::util::{human, open_repo, resolve_backup};
use super::{BackupFileArgs, Command, Config, Output};
use crate::error::{Error, Result};
use crate::repo::backup::ParentPolicy;
use crate::repo::format::{check_name, BackupId, Manifest};
use crate::repo::locks::{self, LockKind};
use crate::repo::prune;
use crate::repo::repository::InitOptions;
use crate::repo::restore::{restore_to_file, RestoreOptions};
use crate::repo::throttle::ThrottledSource;
use crate::repo::verify::verify;
use crate::repo::Error as RepoError;
use crate::repo::{BackupOptions, BackupRef, BackupSession, FileSource, Repository, VolumeSource};

fn bar(config: &Config, len: u64, bytes: bool) -> Option<ProgressBar> {
    if !config.progress {
        return None;
    }
    // indicatif draws nothing when stderr is not a terminal.
    let pb = ProgressBar::new(len);
    let tmpl = if bytes {
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}"
    } else {
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} eta {eta}"
    };
    if let Ok(style) = ProgressStyle::with_template(tmpl) {
        pb.set_style(style);
    }
    Some(pb)
}

fn split_vm(spec: &str) -> Result<(String, String)> {
    let (ns, vm) = spec
        .split_once('/')
        .ok_or_else(|| Error::Invalid(format!("--vm `{spec}`: expected namespace/name")))?;
    check_name("namespace", ns)?;
    check_name("vm", vm)?;
    Ok((ns.to_string(), vm.to_string()))
}

/// `--vm` filter: `ns/name` or `name` (with an optional --namespace).
fn vm_filter(
    namespace: Option<String>,
    vm: Option<String>,
) -> Result<(Option<String>, Option<String>)> {
    match vm {
        Some(v) if v.contains('/') => {
            let (ns, name) = split_vm(&v)?;
            Ok((Some(ns), Some(name)))
        }
        other => Ok((namespace, other)),
    }
}

fn default_vm_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let cleaned: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches('-').to_string();
    if cleaned.is_empty() {
        "image".into()
    } else {
        cleaned
    }
}

/// `verify`'s line on Object Lock: the policy, and how many manifests are retained until when.
async fn object_lock_state(
    repo: &Repository,
    p: crate::repo::objectlock::ObjectLockPolicy,
) -> Result<String> {
    let now = chrono::Utc::now();
    let (mut locked, mut unlocked) = (0usize, Vec::new());
    let mut earliest: Option<chrono::DateTime<chrono::Utc>> = None;
    for b in repo.list_backups(None, None).await? {
        match repo.store().retention(&b.manifest_key()).await? {
            Some(r) if r.active(now) => {
                locked += 1;
                if earliest.is_none_or(|e| r.until < e) {
                    earliest = Some(r.until);
                }
            }
            _ => unlocked.push(b.to_string()),
        }
    }
    Ok(format!(
        "object lock: {}; {locked} backup manifest(s) locked{}, {} not locked{}",
        p.describe(),
        earliest
            .map(|e| format!(" (earliest release {})", e.to_rfc3339()))
            .unwrap_or_default(),
        unlocked.len(),
        if unlocked.is_empty() {
            String::new()
        } else {
            format!(" (retention passed: {})", unlocked.join(", "))
        }
    ))
}

/// Runs one command.
pub async fn run(config: &Config, command: Command) -> Result<()> {
    match command {
        Command::Backup(a) => {
            super::cluster_cmds::backup(config, open_repo(config).await?, a).await
        }
        Command::Cleanup(a) => super::cluster_cmds::cleanup(a).await,
        Command::Restore(a) => super::restore_cmds::restore(config, a).await,
        Command::Drill(a) => super::drill_cmd::drill(config, a).await,
        Command::Download(a) => super::restore_cmds::download(config, a).await,
        Command::RestoreVolume(a) => super::restore_cmds::restore_volume(config, a).await,
        Command::Files(a) => super::files_cmds::files(config, a).await,
        Command::Mount(a) => super::mount_cmd::mount(config, a).await,
        Command::Key(a) => super::key_cmd::key(config, a).await,
        Command::Copy(a) => super::copy_cmd::copy(config, a).await,
        Command::Init(a) => {
            let store = config.store().await?;
            let encrypted = config.key.is_some();
            let opts = InitOptions {
                chunk_size: u32::try_from(a.chunk_size)
                    .map_err(|_| Error::Invalid("chunk size too large".into()))?,
                compression_level: a.compression_level,
                key: config.key.as_ref().map(|k| k.bytes().to_vec()),
                kdf_memory_kib: a.kdf_memory_kib,
                kdf_iterations: a.kdf_iterations,
                cipher: a
                    .cipher
                    .as_deref()
                    .map(crate::repo::crypto::DataCipher::parse)
                    .transpose()?,
            };
            let object_lock = match a.object_lock {
                Some(period_seconds) => Some(crate::repo::objectlock::ObjectLockPolicy {
                    mode: crate::repo::objectlock::LockMode::parse(&a.object_lock_mode)?,
                    period_seconds,
                }),
                None => None,
            };
            let repo = match &a.copy_chunker_params_from {
                Some(src) => {
                    let src = super::copy_cmd::open_other(
                        config,
                        src,
                        config.s3_endpoint.as_deref(),
                        a.from_key_file.as_deref(),
                        "VIRTGUARD_FROM_KEY",
                    )
                    .await?;
                    let repo = Repository::init_ext(store, opts, Some(&src), object_lock).await?;
                    println!(
                        "chunk size and chunk ids shared with {}: `virtguard copy` from it \
                         transfers only the chunks this repository lacks",
                        src.location()
                    );
                    repo
                }
                None => Repository::init_ext(store, opts, None, object_lock).await?,
            };
            if let Some(p) = object_lock {
                println!(
                    "S3 Object Lock: every object is written retained ({}) beyond its write",
                    p.describe()
                );
            }
            println!(
                "created {} repository at {} (chunk size {}, zstd level {})",
                match repo.crypto().data_cipher() {
                    Some(c) => format!("an encrypted ({})", c.name()),
                    None => "an unencrypted".to_string(),
                },
                repo.location(),
                human(u64::from(repo.config().chunk_size)),
                repo.config().compression_level
            );
            if encrypted {
                println!("keep the key safe: without it the backups cannot be read");
            }
            Ok(())
        }
        Command::BackupFile(a) => backup_file(config, a).await,
        Command::RestoreFile(a) => {
            let t0 = Instant::now();
            let repo = open_repo(config).await?;
            let lock = repo.lock(LockKind::Shared, "restore").await?;
            let res = async {
                let r = repo.find_backup(&a.backup).await?;
                let m = repo.load_manifest(&r).await?;
                if let Ok(md) = std::fs::metadata(&a.path) {
                    if md.is_file() && md.len() > 0 && !a.force {
                        return Err(Error::Invalid(format!(
                            "`{}` exists; pass --force to overwrite it",
                            a.path.display()
                        )));
                    }
                }
                let size = m
                    .volumes
                    .iter()
                    .find(|v| v.name == a.volume)
                    .map(|v| v.size)
                    .unwrap_or(0);
                let pb = bar(config, size, true);
                let opts = RestoreOptions {
                    concurrency: config.restore_concurrency,
                    check_digest: a.verify_target,
                };
                let res = restore_to_file(&repo, &m, &a.volume, &a.path, &opts, pb.clone()).await;
                if let Some(p) = pb {
                    p.finish_and_clear();
                }
                Ok((r, res?))
            }
            .await;
            lock.release().await;
            let (r, stats) = res?;
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "restored {r} volume {} to {}: {} ({} chunks, {} zero), {:.1}s, {}/s; digest verified",
                a.volume,
                a.path.display(),
                human(stats.size),
                stats.chunks,
                stats.zero_chunks,
                secs,
                human((stats.size as f64 / secs.max(1e-6)) as u64)
            );
            Ok(())
        }
        Command::List(a) => {
            let repo = open_repo(config).await?;
            let (ns, vm) = vm_filter(a.namespace, a.vm)?;
            let refs = repo.list_backups(ns.as_deref(), vm.as_deref()).await?;
            let mut manifests = Vec::new();
            for r in &refs {
                manifests.push(repo.load_manifest(r).await?);
            }
            // Backups using a chunk the last verify found corrupt are marked (until healed).
            let affected = match crate::repo::maintain::MaintenanceState::load(&repo).await {
                Ok(s) => s.affected_backups(),
                Err(e) => {
                    eprintln!("warning: the maintenance state is unreadable ({e}); corrupt backups are not marked");
                    Default::default()
                }
            };
            let corrupt = |m: &Manifest| {
                affected
                    .get(&format!("{}/{}/{}", m.namespace, m.vm, m.id.as_str()))
                    .copied()
                    .unwrap_or(0)
            };
            match a.output {
                Output::Json => {
                    let v: Vec<_> = manifests
                        .iter()
                        .map(|m| {
                            let mut v = summary_json(m);
                            v["corrupt_chunks"] = json!(corrupt(m));
                            v
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                }
                Output::Table => {
                    println!(
                        "{:<22} {:<16} {:<20} {:<20} {:>9} {:>7} {:>10} {:>10}  CONSISTENCY",
                        "ID", "NAMESPACE", "VM", "FINISHED", "DURATION", "VOLUMES", "SIZE", "NEW"
                    );
                    for m in &manifests {
                        println!(
                            "{:<22} {:<16} {:<20} {:<20} {:>8.1}s {:>7} {:>10} {:>10}  {}",
                            m.id.as_str(),
                            m.namespace,
                            m.vm,
                            m.finished.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                            duration_secs(m),
                            m.volumes.len(),
                            human(m.volumes.iter().map(|v| v.size).sum()),
                            human(m.volumes.iter().map(|v| v.bytes_stored).sum()),
                            match corrupt(m) {
                                0 => m.consistency.to_string(),
                                n => format!(
                                    "{}  CORRUPT ({n} chunk(s); see `virtguard maintain`)",
                                    m.consistency
                                ),
                            }
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Show(a) => {
            let repo = open_repo(config).await?;
            let r = resolve_backup(&repo, &a.backup).await?;
            let m = repo.load_manifest(&r).await?;
            match a.output {
                Output::Json => println!("{}", String::from_utf8_lossy(&m.encode())),
                Output::Table => {
                    println!("backup      {r}");
                    println!("vm          {}/{}", m.namespace, m.vm);
                    println!("started     {}", m.started.to_rfc3339());
                    println!("finished    {}", m.finished.to_rfc3339());
                    println!("duration    {:.1}s", duration_secs(&m));
                    println!("consistency {}", m.consistency);
                    if let Some(p) = &m.parent {
                        println!("parent      {p}");
                    }
                    println!("tool        virtguard {}", m.tool_version);
                    for v in &m.volumes {
                        println!(
                            "volume {:<12} size {} chunks {} (zero {}, new {}), new data {} stored as {}, digest {}",
                            v.name,
                            human(v.size),
                            v.chunks,
                            v.zero_chunks,
                            v.new_chunks,
                            human(v.bytes_new),
                            human(v.bytes_stored),
                            &v.image_digest[..v.image_digest.len().min(16)]
                        );
                    }
                    if let Some(res) = &m.resources {
                        println!("resources   {}", res.files.join(", "));
                    }
                }
            }
            Ok(())
        }
        Command::Verify(a) => {
            let repo = open_repo(config).await?;
            let lock = repo.lock(LockKind::Shared, "verify").await?;
            let res = async {
                let only = if a.backups.is_empty() {
                    None
                } else {
                    let mut v = Vec::new();
                    for b in &a.backups {
                        v.push(repo.find_backup(b).await?);
                    }
                    Some(v)
                };
                let pb = if a.read_data {
                    bar(config, 0, false)
                } else {
                    None
                };
                let res = verify(&repo, only, a.read_data, config.concurrency, pb.clone()).await;
                if let Some(p) = pb {
                    p.finish_and_clear();
                }
                res
            }
            .await;
            lock.release().await;
            let report = res?;
            if let Some(p) = repo.config().object_lock {
                println!("{}", object_lock_state(&repo, p).await?);
            }
            println!(
                "checked {} backups, {} volumes, {} referenced chunks{}",
                report.backups,
                report.volumes,
                report.chunks_referenced,
                if a.read_data {
                    format!(", {} chunks read and hashed", report.chunks_read)
                } else {
                    " (structure only; --read-data also checks content)".into()
                }
            );
            if report.problems.is_empty() {
                println!("no problems found");
                Ok(())
            } else {
                Err(RepoError::VerifyFailed {
                    problems: report.problems,
                }
                .into())
            }
        }
        Command::Maintain(a) => {
            super::maintain_cmd::maintain(config, open_repo(config).await?, a).await
        }
        Command::Prune(a) => {
            let repo = open_repo(config).await?;
            let (ns, vm) = vm_filter(a.namespace.clone(), a.vm.clone())?;
            super::prune_cmd::prune(repo, a, ns, vm).await
        }
        Command::Gc(a) => {
            let repo = open_repo(config).await?;
            let opts = prune::GcOptions {
                grace: a.grace.into(),
                dry_run: a.dry_run,
                concurrency: config.concurrency,
                lock_wait: a.lock_wait.into(),
            };
            let r = prune::gc(&repo, &opts).await?;
            println!(
                "{} {} of {} chunks ({}), {} referenced, {} unreferenced within the grace period, {} reused by backups committed while gc ran; {} leftover objects of unfinished backups, {} incomplete writes",
                if a.dry_run { "would delete" } else { "deleted" },
                r.chunks_deleted,
                r.chunks_total,
                human(r.bytes_deleted),
                r.chunks_referenced,
                r.chunks_in_grace,
                r.chunks_reused_meanwhile,
                r.leftovers_deleted,
                r.incomplete_removed
            );
            if r.objects_locked > 0 {
                println!(
                    "kept {} unreferenced objects under S3 Object Lock: a gc after {} frees them",
                    r.objects_locked,
                    r.locked_until.as_deref().unwrap_or("their retention date")
                );
            }
            Ok(())
        }
        Command::Unlock(a) => {
            let store = config.store().await?;
            if a.all {
                let all = locks::list_locks(store.as_ref()).await?;
                for (k, info) in &all {
                    store.delete(k).await?;
                    println!(
                        "removed lock {} ({} pid {} on {})",
                        info.id, info.operation, info.pid, info.host
                    );
                }
                println!("removed {} locks", all.len());
            } else if a.stale {
                let removed = locks::remove_stale(store.as_ref(), config.lock_stale_after).await?;
                for info in &removed {
                    println!(
                        "removed stale lock {} ({} pid {} on {})",
                        info.id, info.operation, info.pid, info.host
                    );
                }
                println!("removed {} stale locks", removed.len());
            } else {
                let all = locks::list_locks(store.as_ref()).await?;
                for (_, info) in &all {
                    println!(
                        "{} {:?} {} pid {} on {}, refreshed {}{}",
                        info.id,
                        info.kind,
                        info.operation,
                        info.pid,
                        info.host,
                        info.refreshed.to_rfc3339(),
                        if info.is_stale(config.lock_stale_after) {
                            " (stale)"
                        } else {
                            ""
                        }
                    );
                }
                println!(
                    "{} locks; pass --stale to remove stale ones or --all to remove all",
                    all.len()
                );
            }
            Ok(())
        }
    }
}

/// Seconds from the backup's start to its commit.
fn duration_secs(m: &Manifest) -> f64 {
    (m.finished - m.started).num_milliseconds().max(0) as f64 / 1000.0
}

/// One backup of `list -o json`: the manifest's own keys (`consistency`, and `freeze_failure`
/// only when a freeze failed, as in `show -o json`) without the per-chunk details.
fn summary_json(m: &Manifest) -> serde_json::Value {
    let mut v = json!({
        "duration_seconds": duration_secs(m),
        "tool_version": m.tool_version,
        "id": m.id,
        "namespace": m.namespace,
        "vm": m.vm,
        "started": m.started,
        "finished": m.finished,
        "consistency": m.consistency.kind(),
        "parent": m.parent,
        "volumes": m.volumes.iter().map(|v| json!({
            "name": v.name, "size": v.size, "chunks": v.chunks, "zero_chunks": v.zero_chunks,
            "new_chunks": v.new_chunks, "bytes_new": v.bytes_new, "bytes_stored": v.bytes_stored,
        })).collect::<Vec<_>>(),
    });
    if let Some(f) = m.consistency.freeze_failure() {
        v["freeze_failure"] = json!(f);
    }
    v
}

async fn backup_file(config: &Config, a: BackupFileArgs) -> Result<()> {
    let (ns, vm) = match &a.vm {
        Some(spec) => split_vm(spec)?,
        None => ("local".to_string(), default_vm_name(&a.path)),
    };
    check_name("volume", &a.volume)?;
    let mut resources = Vec::new();
    for p in &a.resources {
        let data = std::fs::read(p).map_err(|e| RepoError::io("reading resource file", p, e))?;
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "resource".into());
        resources.push((name, data));
    }
    let source: Arc<dyn VolumeSource> = ThrottledSource::wrap(
        Arc::new(FileSource::open(&a.path)?),
        config.limits.read.clone(),
    );
    let repo = open_repo(config).await?;
    let parent = if a.no_parent {
        ParentPolicy::None
    } else if let Some(p) = &a.parent {
        ParentPolicy::Id(p.parse::<BackupId>()?)
    } else {
        ParentPolicy::Latest
    };
    let opts = BackupOptions {
        concurrency: config.concurrency,
        parent,
        ..Default::default()
    };
    let t = Instant::now();
    let mut session = BackupSession::start(repo.clone(), &ns, &vm, opts).await?;
    let pb = bar(config, source.size(), true);
    let res = session
        .write_volume(&a.volume, source.clone(), pb.clone())
        .await;
    if let Some(p) = &pb {
        p.finish_and_clear();
    }
    let stats = match res {
        Ok(s) => s,
        Err(e) => {
            session.abort().await;
            return Err(e.into());
        }
    };
    if !resources.is_empty() {
        if let Err(e) = session.write_resources(resources).await {
            session.abort().await;
            return Err(e.into());
        }
    }
    let parent = session.parent().cloned();
    let m = session.commit().await?;
    let secs = t.elapsed().as_secs_f64();
    let r = BackupRef {
        namespace: m.namespace.clone(),
        vm: m.vm.clone(),
        id: m.id.clone(),
    };
    match a.output {
        Output::Json => {
            let mut v = summary_json(&m);
            v["seconds"] = json!(secs);
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Output::Table => println!(
            "backup {r} committed: {} in {:.1}s ({}/s); {} chunks: {} zero, {} new ({} stored as {}){}",
            human(stats.size),
            secs,
            human((stats.size as f64 / secs.max(1e-6)) as u64),
            stats.chunks,
            stats.zero_chunks,
            stats.new_chunks,
            human(stats.bytes_new),
            human(stats.bytes_stored),
            parent.map(|p| format!("; parent {p}")).unwrap_or_default()
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_names_from_files() {
        assert_eq!(default_vm_name(Path::new("/x/My_Disk.img")), "my-disk");
        assert_eq!(default_vm_name(Path::new("/x/___.raw")), "image");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(12), "12 B");
    }
}
