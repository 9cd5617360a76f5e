//! `virtguard restore`, `virtguard download` and the internal `virtguard restore-volume` (run
//! by restore Jobs). The cluster work is in [`crate::engine::restore`]; this module resolves
//! flags, prints the plan / warnings / summary, and handles Ctrl-C and SIGTERM: the objects the
//! run created are deleted (unless `--keep-partial`) before the process exits. Every restore
//! that started leaves its outcome for the exporter ([`super::restore_status`]).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::restore_status;
use super::util::{human, open_repo, resolve_backup};
use super::{shutdown_signal, Config};
use crate::engine::restore::{self, Method, Mode, RestoreError, RestoreRequest};
use crate::error::{Error, Result};
use crate::repo::locks::LockKind;
use crate::repo::restore::{restore_to_file, RestoreOptions};
use crate::repo::Error as RepoError;
use crate::repo::{BackupRef, Repository};

/// Data path of `restore`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// DataVolume with an upload source, image streamed as zstd to CDI's upload proxy
    CdiUpload,
    /// A Job running `virtguard restore-volume` that writes the PVC directly
    Job,
}

/// Output format of `download`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Backup: an id, namespace/vm/id, or namespace/vm@latest
    pub backup: String,
    /// Namespace to restore into [default: the backup's]
    #[arg(long)]
    pub target_namespace: Option<String>,
    /// Name of the restored VM [default: the backup's]
    #[arg(long)]
    pub name: Option<String>,
    /// Map a storage class of the backup to another one: OLD=NEW (repeatable)
    #[arg(long = "storage-class-map", value_name = "OLD=NEW", value_parser = parse_mapping)]
    pub storage_class_map: Vec<(String, String)>,
    /// Restore a copy: new MACs, new firmware UUID, no fixed-IP annotations, renamed disks
    /// (the default)
    #[arg(long, conflicts_with = "in_place")]
    pub as_copy: bool,
    /// Replace the existing VM's disks and spec, keeping its MACs, UUID and fixed IPs (the VM
    /// must be stopped; see --force)
    #[arg(long)]
    pub in_place: bool,
    /// With --in-place: stop the VM if it runs
    #[arg(long, requires = "in_place")]
    pub force: bool,
    /// Start the VM after the restore (runStrategy Always; default: Halted)
    #[arg(long)]
    pub start: bool,
    /// Print every object the restore would create or change, as YAML, and create nothing
    #[arg(long)]
    pub dry_run: bool,
    /// With --start: wait until the VM runs
    #[arg(long)]
    pub wait: bool,
    /// Limit of each wait (disk ready, upload done, Job, VM stop/start)
    #[arg(long, default_value = "30m")]
    pub timeout: humantime::Duration,
    /// Data path
    #[arg(long, value_enum, default_value_t = MethodArg::CdiUpload)]
    pub method: MethodArg,
    /// Keep the objects already created when the restore fails or is interrupted
    #[arg(long)]
    pub keep_partial: bool,
    /// Image of the restore Jobs (--method job)
    #[arg(long, default_value = concat!("ghcr.io/virtguard/virtguard:", env!("CARGO_PKG_VERSION")))]
    pub job_image: String,
    /// CDI upload proxy URL [default: cdiconfigs/config status.uploadProxyURL]
    #[arg(long)]
    pub upload_proxy_url: Option<String>,
    /// PEM file of the CA that signed the upload proxy's certificate (besides the kubeconfig's CA)
    #[arg(long)]
    pub upload_proxy_ca: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// Backup: an id, namespace/vm/id, or namespace/vm@latest
    pub backup: String,
    /// Volume name
    pub volume: String,
    /// Output file
    #[arg(short, long)]
    pub output: PathBuf,
    /// Image format (qcow2 is converted by `qemu-img` from a temporary sparse raw file)
    #[arg(long, value_enum, default_value_t = ImageFormat::Raw)]
    pub format: ImageFormat,
    /// Overwrite an existing file
    #[arg(long)]
    pub force: bool,
}

/// Internal: what a restore Job runs. Repository settings come from the environment.
#[derive(Debug, Args)]
pub struct RestoreVolumeArgs {
    /// namespace/vm/id
    #[arg(long)]
    pub backup: String,
    #[arg(long)]
    pub volume: String,
    /// Block device of the target PVC
    #[arg(long, conflicts_with = "file", required_unless_present = "file")]
    pub device: Option<PathBuf>,
    /// Image file on the target PVC's filesystem
    #[arg(long)]
    pub file: Option<PathBuf>,
}

fn parse_mapping(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
        _ => Err(format!("`{s}`: expected OLD=NEW")),
    }
}

/// Bars per volume on a terminal; otherwise (unless --quiet) a plain line per volume every
/// 10 seconds.
struct CliProgress {
    multi: Option<MultiProgress>,
    plain: bool,
}

impl CliProgress {
    fn new(config: &Config) -> Self {
        let tty = std::io::stderr().is_terminal();
        let multi = (config.progress && tty).then(MultiProgress::new);
        CliProgress {
            multi,
            plain: config.progress && !tty,
        }
    }
}

impl restore::Progress for CliProgress {
    fn volume(&self, volume: &str, size: u64) -> Option<ProgressBar> {
        let Some(m) = self.multi.as_ref() else {
            if !self.plain {
                return None;
            }
            let pb = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::hidden());
            let watch = pb.clone();
            let name = volume.to_string();
            tokio::spawn(async move {
                let t0 = std::time::Instant::now();
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if watch.is_finished() {
                        break;
                    }
                    let done = watch.position();
                    let secs = t0.elapsed().as_secs_f64().max(1e-3);
                    eprintln!(
                        "volume {name}: {} of {} ({:.0}%), {}/s",
                        human(done),
                        human(size),
                        done as f64 * 100.0 / size.max(1) as f64,
                        human((done as f64 / secs) as u64)
                    );
                }
            });
            return Some(pb);
        };
        let pb = m.add(ProgressBar::new(size));
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix:>12} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        ) {
            pb.set_style(style);
        }
        pb.set_prefix(volume.to_string());
        Some(pb)
    }

    fn line(&self, msg: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(msg);
            }
            None => eprintln!("{msg}"),
        }
    }
}

pub(super) async fn kube(ca: &mut Vec<Vec<u8>>) -> Result<kube::Client> {
    crate::cluster::install_crypto_provider();
    let cfg = kube::Config::infer()
        .await
        .map_err(|e| Error::KubeConfig(e.to_string()))?;
    if let Some(c) = &cfg.root_cert {
        ca.extend(c.iter().cloned());
    }
    kube::Client::try_from(cfg).map_err(|e| Error::KubeConfig(e.to_string()))
}

/// Repository settings handed to restore Jobs through their Secret.
pub(super) fn job_env(config: &Config) -> Result<Vec<(String, String)>> {
    let mut env = vec![("VIRTGUARD_REPO".to_string(), config.repo.clone())];
    if let Some(k) = &config.key {
        let k = String::from_utf8(k.bytes().to_vec()).map_err(|_| {
            Error::Invalid(
                "--method job needs a UTF-8 repository key (it travels in a Secret's stringData)"
                    .into(),
            )
        })?;
        env.push(("VIRTGUARD_KEY".into(), k));
    }
    if let Some(e) = &config.s3_endpoint {
        env.push(("VIRTGUARD_S3_ENDPOINT".into(), e.clone()));
    }
    if let Some(r) = &config.s3_region {
        env.push(("VIRTGUARD_S3_REGION".into(), r.clone()));
    }
    if config.s3_path_style {
        env.push(("VIRTGUARD_S3_PATH_STYLE".into(), "true".into()));
    }
    if config.s3_sign_payload {
        env.push(("VIRTGUARD_S3_SIGN_PAYLOAD".into(), "true".into()));
    }
    for k in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
    ] {
        if let Ok(v) = std::env::var(k) {
            if !v.is_empty() {
                env.push((k.to_string(), v));
            }
        }
    }
    Ok(env)
}

/// `virtguard restore`.
pub async fn restore(config: &Config, a: RestoreArgs) -> Result<()> {
    let repo = open_repo(config).await?;
    let r = resolve_backup(&repo, &a.backup).await?;
    let m = repo.load_manifest(&r).await?;
    let objs = restore::load_objects(&repo, &m).await?;
    let req = RestoreRequest {
        target_namespace: a.target_namespace.clone(),
        name: a.name.clone(),
        storage_class_map: a
            .storage_class_map
            .iter()
            .cloned()
            .collect::<BTreeMap<_, _>>(),
        mode: if a.in_place {
            Mode::InPlace
        } else {
            Mode::Copy
        },
        method: match a.method {
            MethodArg::CdiUpload => Method::CdiUpload,
            MethodArg::Job => Method::Job,
        },
        start: a.start,
        force: a.force,
        keep_partial: a.keep_partial,
        timeout: a.timeout.into(),
        wait: a.wait,
        concurrency: config.restore_concurrency,
        job_image: a.job_image.clone(),
        job_env: if a.method == MethodArg::Job {
            job_env(config)?
        } else {
            Vec::new()
        },
        upload_proxy_url: a.upload_proxy_url.clone(),
        upload_proxy_ca: match &a.upload_proxy_ca {
            Some(p) => Some(
                std::fs::read(p).map_err(|e| RepoError::io("reading --upload-proxy-ca", p, e))?,
            ),
            None => None,
        },
    };
    let restore_id = crate::repo::format::BackupId::new_now()
        .as_str()
        .to_ascii_lowercase();
    let plan = restore::plan(&m, &objs, &req, &restore_id)?;
    let mut ca = Vec::new();
    let client = kube(&mut ca).await?;
    let warnings = restore::check_target(&client, &plan).await?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let what = format!(
        "{} backup {r} ({}, {}) as VM {}/{}{}: {} volume(s) via {}",
        if plan.mode == Mode::InPlace {
            "restore in place"
        } else {
            "restore a copy of"
        },
        m.finished.to_rfc3339(),
        m.consistency,
        plan.namespace,
        plan.name,
        if a.start { ", started" } else { ", stopped" },
        plan.volumes.len(),
        match plan.method {
            Method::CdiUpload => "CDI upload",
            Method::Job => "restore Jobs",
        }
    );
    if a.dry_run {
        eprintln!("dry run: would {what}; nothing is created");
        if plan.mode == Mode::InPlace {
            for v in &plan.volumes {
                println!(
                    "# volume {}: would restore into the new claim {}/{}, switch the VM to it, and only then delete the claim the VM uses for it now",
                    v.volume, plan.namespace, v.claim
                );
            }
        }
        for o in restore::objects_to_create(&plan, &req) {
            println!("---");
            print!("{}", serde_yaml::to_string(&o).unwrap_or_default());
        }
        return Ok(());
    }
    eprintln!("about to {what}");
    let lock = repo.lock(LockKind::Shared, "restore").await?;
    let started = restore_status::now();
    let t0 = Instant::now();
    let progress = CliProgress::new(config);
    let created = restore::Created::default();
    let ctx = restore::Context {
        client: &client,
        repo: repo.clone(),
        manifest: &m,
        kube_ca: ca,
        created: created.clone(),
        progress: &progress,
    };
    let result = tokio::select! {
        r = restore::execute(&ctx, &plan, &req) => r.map_err(Error::from),
        signal = shutdown_signal() => {
            let what = if created.committed() {
                "the VM already used the restored disks; nothing was rolled back".to_string()
            } else if a.keep_partial {
                format!("kept (--keep-partial): {}", created.list().join(", "))
            } else {
                let deleted = created.rollback(&client).await;
                for d in &deleted {
                    eprintln!("deleted {d}");
                }
                format!("deleted the {} object(s) this restore had created; no VM was created", deleted.len())
            };
            Err(RestoreError::Interrupted { signal, what }.into())
        }
    };
    lock.release().await;
    let attempt = restore_status::Attempt {
        namespace: &plan.namespace,
        name: &plan.name,
        backup_id: r.to_string(),
        source: format!("{}/{}", r.namespace, r.vm),
        mode: plan.mode,
        method: plan.method,
        started,
        seconds: t0.elapsed().as_secs_f64(),
    };
    restore_status::write(&client, &attempt, result.as_ref()).await;
    let report = result?;
    println!(
        "{:<16} {:<32} {:>10} {:>12} {:>8} {:>8} {:>9}",
        "VOLUME", "PVC", "SIZE", "SENT", "ZERO", "TRIES", "SECONDS"
    );
    for v in &report.volumes {
        println!(
            "{:<16} {:<32} {:>10} {:>12} {:>8} {:>8} {:>9.1}",
            v.volume,
            v.claim,
            human(v.size),
            if plan.method == Method::Job {
                "-".to_string()
            } else {
                human(v.wire_bytes)
            },
            v.zero_chunks,
            v.attempts,
            v.seconds
        );
    }
    for d in &report.replaced {
        println!("deleted the replaced disk {d}");
    }
    println!(
        "restored backup {r} as VM {} in {:.1}s{}",
        report.vm,
        report.seconds,
        if a.start {
            ""
        } else {
            " (stopped; start it with `virtctl start`)"
        }
    );
    Ok(())
}

/// `virtguard restore-volume` (inside a restore Job).
pub async fn restore_volume(config: &Config, a: RestoreVolumeArgs) -> Result<()> {
    let target = a
        .device
        .clone()
        .or(a.file.clone())
        .ok_or_else(|| Error::Invalid("pass --device or --file".into()))?;
    let repo = open_repo(config).await?;
    let lock = repo.lock(LockKind::Shared, "restore").await?;
    let res = async {
        let r = resolve_backup(&repo, &a.backup).await?;
        let m = repo.load_manifest(&r).await?;
        let opts = RestoreOptions {
            concurrency: config.restore_concurrency,
            check_digest: true,
        };
        restore_to_file(&repo, &m, &a.volume, &target, &opts, None)
            .await
            .map(|s| (r, s))
    }
    .await;
    lock.release().await;
    let (r, s) = res?;
    println!(
        "restored {r} volume {} to {}: {} ({} chunks, {} zero); digest verified",
        a.volume,
        target.display(),
        human(s.size),
        s.chunks,
        s.zero_chunks
    );
    Ok(())
}

/// `virtguard download`.
pub async fn download(config: &Config, a: DownloadArgs) -> Result<()> {
    let t0 = Instant::now();
    if a.output.exists() && !a.force {
        return Err(Error::Invalid(format!(
            "`{}` exists; pass --force to overwrite it",
            a.output.display()
        )));
    }
    let repo = open_repo(config).await?;
    let lock = repo.lock(LockKind::Shared, "download").await?;
    let res = download_inner(config, &repo, &a).await;
    lock.release().await;
    let (r, size) = res?;
    println!(
        "downloaded {r} volume {} to {} ({}, {}) in {:.1}s; digest verified",
        a.volume,
        a.output.display(),
        match a.format {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        },
        human(size),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn download_inner(
    config: &Config,
    repo: &Arc<Repository>,
    a: &DownloadArgs,
) -> Result<(BackupRef, u64)> {
    let r = resolve_backup(repo, &a.backup).await?;
    let m = repo.load_manifest(&r).await?;
    let size = m
        .volumes
        .iter()
        .find(|v| v.name == a.volume)
        .map(|v| v.size)
        .unwrap_or(0);
    let opts = RestoreOptions {
        concurrency: config.restore_concurrency,
        check_digest: true,
    };
    let pb = (config.progress && std::io::stderr().is_terminal()).then(|| {
        let pb = ProgressBar::new(size);
        if let Ok(s) = ProgressStyle::with_template(
            "[{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        ) {
            pb.set_style(s);
        }
        pb
    });
    match a.format {
        ImageFormat::Raw => {
            if a.force && a.output.is_file() {
                std::fs::remove_file(&a.output)
                    .map_err(|e| RepoError::io("removing old output", &a.output, e))?;
            }
            restore_to_file(repo, &m, &a.volume, &a.output, &opts, pb.clone()).await?;
        }
        ImageFormat::Qcow2 => {
            let dir = a
                .output
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            let tmp = tempfile::Builder::new()
                .prefix(".virtguard-download-")
                .suffix(".raw")
                .tempfile_in(&dir)
                .map_err(|e| RepoError::io("creating a temporary file in", &dir, e))?;
            let raw = tmp.path().to_path_buf();
            restore_to_file(repo, &m, &a.volume, &raw, &opts, pb.clone()).await?;
            let out = tokio::process::Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .arg(&raw)
                .arg(&a.output)
                .output()
                .await
                .map_err(|e| {
                    RepoError::io("running qemu-img (install qemu-utils)", "qemu-img", e)
                })?;
            if !out.status.success() {
                let _ = std::fs::remove_file(&a.output);
                return Err(Error::Invalid(format!(
                    "qemu-img convert to `{}` failed: {}",
                    a.output.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
    }
    if let Some(p) = pb {
        p.finish_and_clear();
    }
    Ok((r, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings() {
        assert_eq!(parse_mapping("a=b").unwrap(), ("a".into(), "b".into()));
        assert!(parse_mapping("a").is_err());
        assert!(parse_mapping("=b").is_err());
    }
}
