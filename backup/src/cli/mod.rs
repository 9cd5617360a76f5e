//! The `virtguard` command line. [`Cli`] is the clap definition (a subcommand enum that later
//! issues extend with cluster-facing commands); [`Config`] is what the flags resolve to; [`run`]
//! executes a command. `main.rs` only parses, builds the config and calls [`run`].
//!
//! Repository location: `--repo` or `VIRTGUARD_REPO`: a local directory path or
//! `s3://bucket/prefix`. Default: the embedded local repository in
//! `$XDG_DATA_HOME/virtguard/repository` (`~/.local/share/virtguard/repository`).
//! Encryption key: `--key-file PATH` or the env var `VIRTGUARD_KEY` (never a flag value, so it
//! does not show up in process listings or `--help`).

mod cluster_cmds;
mod commands;
mod copy_cmd;
mod drill_cmd;
mod files_cmds;
mod key_cmd;
mod maintain_cmd;
mod mount_cmd;
mod prune_cmd;
mod restore_cmds;
mod restore_status;
mod util;

pub use cluster_cmds::{BackupArgs, CleanupArgs};
pub use restore_cmds::{DownloadArgs, RestoreArgs, RestoreVolumeArgs};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::error::{Error, Result};
use crate::repo::s3::{S3Options, S3Store};
use crate::repo::store::{LimitStore, LocalStore, RetryStore, Store};
use crate::repo::throttle::{RateLimiter, ThrottleStore};
use crate::repo::Error as RepoError;

/// Resolves on SIGTERM (Kubernetes stopping a Job's pod) or SIGINT (Ctrl-C), for the commands
/// that clean up after themselves when stopped (`backup`, `restore`).
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        // Without signal handlers there is nothing to wait for.
        _ => std::future::pending().await,
    }
}

/// virtguard: backup and restore of KubeVirt VMs into a deduplicating, verifiable repository.
#[derive(Debug, Parser)]
#[command(name = "virtguard", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags shared by every command.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Repository: a local directory or s3://bucket/prefix [default: $XDG_DATA_HOME/virtguard/repository]
    #[arg(long, env = "VIRTGUARD_REPO", global = true)]
    pub repo: Option<String>,
    /// File holding the repository key (passphrase); alternatively set VIRTGUARD_KEY
    #[arg(long, env = "VIRTGUARD_KEY_FILE", global = true)]
    pub key_file: Option<PathBuf>,
    /// S3 endpoint URL (e.g. http://127.0.0.1:9000 for MinIO, Ceph RGW, s3s)
    #[arg(long, env = "VIRTGUARD_S3_ENDPOINT", global = true)]
    pub s3_endpoint: Option<String>,
    /// S3 region [default: from the AWS config chain, else us-east-1]
    #[arg(long, env = "VIRTGUARD_S3_REGION", global = true)]
    pub s3_region: Option<String>,
    /// Use path-style S3 URLs (needed by most non-AWS servers)
    #[arg(long, env = "VIRTGUARD_S3_PATH_STYLE", global = true)]
    pub s3_path_style: bool,
    /// Sign chunk upload bodies (SigV4 payload hash) instead of UNSIGNED-PAYLOAD; for servers
    /// that refuse unsigned uploads (costs a SHA-256 pass over every byte on both sides)
    #[arg(long, env = "VIRTGUARD_S3_SIGN_PAYLOAD", global = true)]
    pub s3_sign_payload: bool,
    /// Store operations in flight
    #[arg(
        long,
        env = "VIRTGUARD_STORE_CONCURRENCY",
        default_value_t = 32,
        global = true
    )]
    pub store_concurrency: usize,
    /// Chunks in flight per volume (backup, restore, verify) [default: backup and verify 4 per
    /// CPU, 8..32; restore 8 per CPU, 16..32]
    #[arg(long, env = "VIRTGUARD_CONCURRENCY", global = true)]
    pub concurrency: Option<usize>,
    /// Attempts per store operation on temporary errors (5xx, throttling, resets)
    #[arg(long, env = "VIRTGUARD_RETRIES", default_value_t = 8, global = true)]
    pub retries: u32,
    /// First retry backoff (doubles per attempt, full jitter, capped at 20s)
    #[arg(
        long,
        env = "VIRTGUARD_RETRY_BASE",
        default_value = "200ms",
        global = true
    )]
    pub retry_base: humantime::Duration,
    /// Upload at most this many bytes per second to the repository, all transfers of this
    /// process together (e.g. 50MiB); forwarded to dispatched backup Jobs (each its own limit)
    #[arg(long, env = "VIRTGUARD_LIMIT_UPLOAD", value_parser = parse_rate, global = true)]
    pub limit_upload: Option<u64>,
    /// Download at most this many bytes per second from the repository (restore, verify, files)
    #[arg(long, env = "VIRTGUARD_LIMIT_DOWNLOAD", value_parser = parse_rate, global = true)]
    pub limit_download: Option<u64>,
    /// Read source disks (exports, files, block devices) at most this fast, bytes per second
    #[arg(long, env = "VIRTGUARD_LIMIT_READ", value_parser = parse_rate, global = true)]
    pub limit_read: Option<u64>,
    /// A lock not refreshed for this long is stale
    #[arg(
        long,
        env = "VIRTGUARD_LOCK_STALE_AFTER",
        default_value = "10m",
        global = true
    )]
    pub lock_stale_after: humantime::Duration,
    /// No progress bars
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Log filter (tracing EnvFilter syntax), logs go to stderr
    #[arg(long, env = "VIRTGUARD_LOG", default_value = "warn", global = true)]
    pub log: String,
}

/// Output format of listing commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a repository (encrypted when a key is given via --key-file or VIRTGUARD_KEY)
    Init(InitArgs),
    /// Back up a local image file or block device as one volume of a VM backup
    BackupFile(BackupFileArgs),
    /// Restore one volume of a backup to a local file or block device
    RestoreFile(RestoreFileArgs),
    /// List committed backups
    List(ListArgs),
    /// Show one backup's manifest
    Show(ShowArgs),
    /// Check backups: structure, and with --read-data every chunk's content
    Verify(VerifyArgs),
    /// Delete backups by --keep-* rules or each VM's policy (chunks are freed by gc)
    Prune(PruneArgs),
    /// Delete chunks no backup references, older than the grace period
    Gc(GcArgs),
    /// Unattended upkeep: prune by policy, gc, verify a rotating share of the chunks
    Maintain(MaintainArgs),
    /// Remove stale (or all) repository locks
    Unlock(UnlockArgs),
    /// Back up KubeVirt VMs: freeze, CSI snapshot, thaw, export, stream into the repository
    Backup(BackupArgs),
    /// Delete objects left behind by killed backup runs (only objects virtguard created)
    Cleanup(CleanupArgs),
    /// Restore a VM from a backup into the cluster (as a copy, or in place)
    Restore(RestoreArgs),
    /// Restore drills: restore each VM's latest backup as a copy into a sandbox namespace, boot
    /// it, check its guest through the agent, delete it, record the result
    Drill(drill_cmd::DrillArgs),
    /// Write one disk of a backup to a local raw or qcow2 file
    Download(DownloadArgs),
    /// Files out of a backup's disk images without restoring them: parts, ls, get, find, diff
    Files(files_cmds::FilesArgs),
    /// Mount backups read-only (FUSE) as <ns>/<vm>/<backup-id>/<volume>.img, read lazily
    Mount(mount_cmd::MountArgs),
    /// Copy backups into a second repository (offsite), transferring only missing chunks
    Copy(copy_cmd::CopyArgs),
    /// Manage the repository's keys: several passphrases/key files open the same repository
    Key(key_cmd::KeyArgs),
    /// Internal: write one volume into a PVC (what restore Jobs run)
    #[command(hide = true)]
    RestoreVolume(RestoreVolumeArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Chunk size (power of two, 64KiB..64MiB), e.g. 4MiB
    #[arg(long, default_value = "4MiB", value_parser = parse_size)]
    pub chunk_size: u64,
    /// zstd compression level (1..19)
    #[arg(long, default_value_t = crate::repo::config::DEFAULT_COMPRESSION_LEVEL)]
    pub compression_level: i32,
    /// Argon2id memory cost in KiB for deriving the key-wrapping key
    #[arg(long, default_value_t = 65536)]
    pub kdf_memory_kib: u32,
    /// Argon2id iterations
    #[arg(long, default_value_t = 3)]
    pub kdf_iterations: u32,
    /// Make this repository a copy target of the repository SRC (dir or s3://…, same
    /// --s3-endpoint): its chunk size and, when both are encrypted, its chunk-id key, so that
    /// `virtguard copy` keeps chunk ids and transfers only the chunks this one lacks. SRC's key:
    /// --from-key-file or VIRTGUARD_FROM_KEY
    #[arg(long, value_name = "SRC")]
    pub copy_chunker_params_from: Option<String>,
    /// S3 Object Lock: write every object retained for this many days (or a duration with a
    /// unit: 12h, 90s) — prune and gc cannot delete it before. The bucket must have Object Lock
    /// and versioning enabled (checked)
    #[arg(long, value_name = "DAYS", value_parser = crate::repo::objectlock::parse_period)]
    pub object_lock: Option<u64>,
    /// Retention mode with --object-lock: compliance (nobody can shorten or delete) or
    /// governance (users with s3:BypassGovernanceRetention can)
    #[arg(long, default_value = "compliance", requires = "object_lock")]
    pub object_lock_mode: String,
    /// File holding the key of the --copy-chunker-params-from repository
    #[arg(
        long,
        env = "VIRTGUARD_FROM_KEY_FILE",
        requires = "copy_chunker_params_from"
    )]
    pub from_key_file: Option<PathBuf>,
    /// Cipher of an encrypted repository: aes256gcm (needs virtguard with config format 2) or
    /// chacha20poly1305 (readable by every version) [default: aes256gcm when the CPU has AES and
    /// carry-less multiply instructions, chacha20poly1305 otherwise]
    #[arg(long, value_parser = ["aes256gcm", "chacha20poly1305"])]
    pub cipher: Option<String>,
}

#[derive(Debug, Args)]
pub struct BackupFileArgs {
    /// Image file or block device to back up
    pub path: PathBuf,
    /// VM the backup belongs to, as namespace/name [default: local/<file name>]
    #[arg(long)]
    pub vm: Option<String>,
    /// Volume name inside the backup
    #[arg(long, default_value = "disk0")]
    pub volume: String,
    /// Parent backup id for deduplication [default: the VM's newest backup]
    #[arg(long, conflicts_with = "no_parent")]
    pub parent: Option<String>,
    /// Do not use a parent (chunks already stored are still skipped)
    #[arg(long)]
    pub no_parent: bool,
    /// Kubernetes object files (YAML/JSON) to store in resources.tar.zst
    #[arg(long = "resource")]
    pub resources: Vec<PathBuf>,
    /// Output format of the summary
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct RestoreFileArgs {
    /// Backup id (or namespace/vm/id)
    pub backup: String,
    /// Volume name
    pub volume: String,
    /// Target file (created; sparse) or block device
    pub path: PathBuf,
    /// Overwrite an existing regular file
    #[arg(long)]
    pub force: bool,
    /// Also re-read the whole target after writing and check its image digest (every chunk
    /// is verified against its id before it is written either way)
    #[arg(long)]
    pub verify_target: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this namespace
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Only this VM (name, or namespace/name)
    #[arg(long)]
    pub vm: Option<String>,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Backup id (or namespace/vm/id)
    pub backup: String,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Download and hash every referenced chunk
    #[arg(long)]
    pub read_data: bool,
    /// Only these backups (ids or namespace/vm/id) [default: all]
    pub backups: Vec<String>,
}

/// The `--keep-*` rules (all zero: none given).
#[derive(Debug, Args)]
pub struct KeepArgs {
    /// Keep the N newest backups of each VM
    #[arg(long, default_value_t = 0)]
    pub keep_last: usize,
    /// Keep the newest backup of each of the N most recent hours (UTC) that have one
    #[arg(long, default_value_t = 0)]
    pub keep_hourly: usize,
    /// Keep the newest backup of each of the N most recent days (UTC) that have one
    #[arg(long, default_value_t = 0)]
    pub keep_daily: usize,
    /// Keep the newest backup of each of the N most recent ISO weeks that have one
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: usize,
    /// Keep the newest backup of each of the N most recent months (UTC) that have one
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: usize,
}

/// `virtguard maintain`: the unattended upkeep of the repository.
#[derive(Debug, Args)]
#[command(
    after_help = "Steps: prune (each VM's policy with --policy, or the --keep-* rules; skipped \
when neither is given) -> gc (unreferenced chunks older than --grace) -> verify: the structure of \
every backup, and the content of a rotating share of the chunks (--verify-share 1/7 run daily reads \
every chunk once a week), at most --verify-budget stored bytes per run. The rotation and the chunks \
found corrupt are remembered in the repository (maintenance/state.json); the next backup that reads \
a corrupt chunk's data stores it again, and the next maintain forgets it once it reads healthy. \
Exit 1 when corruption is known."
)]
pub struct MaintainArgs {
    /// Prune with each VM's own policy (see `virtguard prune --help`)
    #[arg(long)]
    pub policy: bool,
    #[command(flatten)]
    pub keep: KeepArgs,
    /// gc keeps unreferenced objects younger than this
    #[arg(long, default_value = "24h")]
    pub grace: humantime::Duration,
    /// How long gc's delete phase waits for running backups to finish
    #[arg(long, default_value = "30m")]
    pub lock_wait: humantime::Duration,
    /// Record the outcome in ConfigMap virtguard-maintenance-status of this namespace (key: the
    /// repository id), which the cluster exporter turns into virtguard_repository_* series;
    /// needs the cluster (KUBECONFIG or the pod's service account)
    #[arg(long, env = "VIRTGUARD_STATUS_NAMESPACE")]
    pub status_namespace: Option<String>,
    /// Share of the chunks whose content is read this run: PART/OF
    #[arg(long, default_value = "1/7")]
    pub verify_share: String,
    /// Read at most this many stored bytes of chunk data (e.g. 10GiB); the next run resumes
    #[arg(long, value_parser = parse_size)]
    pub verify_budget: Option<u64>,
    /// Output format of the summary
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// `virtguard prune`: which backups to remove.
#[derive(Debug, Args)]
#[command(
    after_help = "Policies are written like the virtguard.io/retention annotation: \
`last=3,daily=7,weekly=4,monthly=6` (rules last, hourly, daily, weekly, monthly). Each VM also \
keeps its newest application-consistent (or offline) backup when the rules would keep only \
crash-consistent ones within their window. --dry-run prints every backup with the rules that keep it."
)]
pub struct PruneArgs {
    /// Apply each VM's own policy: the virtguard.io/retention annotation on the VM, else on its
    /// namespace, else the --keep-* flags, else last=3,daily=7,weekly=4,monthly=6. Reads the
    /// cluster (KUBECONFIG or the pod's service account). A VM whose annotation does not parse
    /// keeps every backup (warning + InvalidRetentionPolicy Event)
    #[arg(long)]
    pub policy: bool,
    #[command(flatten)]
    pub keep: KeepArgs,
    /// Only this namespace
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Only this VM (name, or namespace/name)
    #[arg(long)]
    pub vm: Option<String>,
    /// Show what would be removed, and why each kept backup is kept
    #[arg(long)]
    pub dry_run: bool,
    /// Output format
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Keep unreferenced objects younger than this
    #[arg(long, default_value = "24h")]
    pub grace: humantime::Duration,
    /// Show what would be removed
    #[arg(long)]
    pub dry_run: bool,
    /// How long the delete phase waits for running backups (their locks) before giving up;
    /// gc reads the repository beside them and needs the exclusive lock only to delete
    #[arg(long, default_value = "0s")]
    pub lock_wait: humantime::Duration,
}

#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Remove locks not refreshed for --lock-stale-after
    #[arg(long, conflicts_with = "all")]
    pub stale: bool,
    /// Remove every lock (only when no virtguard process uses the repository)
    #[arg(long)]
    pub all: bool,
}

/// Parses a bandwidth limit in bytes per second, like a size (`50MiB`, `1048576`); zero is refused.
pub fn parse_rate(s: &str) -> std::result::Result<u64, String> {
    match parse_size(s.trim_end_matches("/s"))? {
        0 => Err(
            "a limit of 0 bytes per second would never finish; leave the flag out for no limit"
                .into(),
        ),
        n => Ok(n),
    }
}

/// Parses sizes like `4MiB`, `512KiB`, `1048576`.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let (num, mult) = [
        ("GiB", 1u64 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
    ]
    .iter()
    .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n, *m)))
    .unwrap_or((s, 1));
    num.trim()
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("`{s}` is not a size (e.g. 4MiB)"))
}

/// The user's key, never printed.
#[derive(Clone)]
pub struct KeyMaterial(Vec<u8>);

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyMaterial(<redacted>)")
    }
}

impl KeyMaterial {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key of another repository: `file`, else the env var `env` (unset or empty: none).
    pub fn from_file_or_env(
        file: Option<&std::path::Path>,
        env: &str,
    ) -> Result<Option<KeyMaterial>> {
        if let Some(p) = file {
            return Ok(Some(KeyMaterial::from_file(p)?));
        }
        match std::env::var_os(env).filter(|v| !v.is_empty()) {
            Some(v) => {
                use std::os::unix::ffi::OsStrExt;
                Ok(Some(KeyMaterial(v.as_bytes().to_vec())))
            }
            None => Ok(None),
        }
    }

    /// Key bytes as given (a passphrase typed or from the environment); empty is refused.
    pub fn new(bytes: Vec<u8>) -> Result<KeyMaterial> {
        if bytes.is_empty() {
            return Err(Error::Invalid("the key is empty".into()));
        }
        Ok(KeyMaterial(bytes))
    }

    /// The content of a key file, without trailing line breaks; an empty file is refused.
    pub fn from_file(p: &std::path::Path) -> Result<KeyMaterial> {
        let mut k = std::fs::read(p).map_err(|e| RepoError::io("reading key file", p, e))?;
        while k.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            k.pop();
        }
        if k.is_empty() {
            return Err(Error::Invalid(format!(
                "key file `{}` is empty",
                p.display()
            )));
        }
        Ok(KeyMaterial(k))
    }
}

/// Everything the flags resolve to.
#[derive(Debug)]
pub struct Config {
    pub repo: String,
    pub key: Option<KeyMaterial>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_path_style: bool,
    pub s3_sign_payload: bool,
    pub store_concurrency: usize,
    /// Chunks in flight per volume for backups, verify and gc.
    pub concurrency: usize,
    /// Chunks in flight per volume for restores (they wait on the store more than on the CPU).
    pub restore_concurrency: usize,
    pub retries: u32,
    pub retry_base: Duration,
    pub lock_stale_after: Duration,
    pub progress: bool,
    /// Bandwidth limits shared by every transfer of this process (`--limit-*`).
    pub limits: Limits,
}

/// The `--limit-*` flags as shared limiters.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub upload: Option<Arc<RateLimiter>>,
    pub download: Option<Arc<RateLimiter>>,
    pub read: Option<Arc<RateLimiter>>,
}

impl Limits {
    /// The flags that give a child process the same limits.
    pub fn args(&self) -> Vec<String> {
        [
            ("--limit-upload", &self.upload),
            ("--limit-download", &self.download),
            ("--limit-read", &self.read),
        ]
        .into_iter()
        .filter_map(|(flag, l)| l.as_ref().map(|l| format!("{flag}={}", l.rate())))
        .collect()
    }
}

/// The embedded default repository directory.
pub fn default_repo_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("virtguard/repository");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    home.join(".local/share/virtguard/repository")
}

impl Config {
    /// Resolves flags and the environment (`VIRTGUARD_KEY`) into a config.
    pub fn from_args(g: &GlobalArgs) -> Result<Config> {
        let key = match (&g.key_file, std::env::var_os("VIRTGUARD_KEY")) {
            (Some(p), _) => Some(KeyMaterial::from_file(p)?),
            (None, Some(v)) if !v.is_empty() => {
                use std::os::unix::ffi::OsStrExt;
                Some(KeyMaterial(v.as_bytes().to_vec()))
            }
            _ => None,
        };
        Ok(Config {
            repo: g
                .repo
                .clone()
                .unwrap_or_else(|| default_repo_dir().display().to_string()),
            key,
            s3_endpoint: g.s3_endpoint.clone(),
            s3_region: g.s3_region.clone(),
            s3_path_style: g.s3_path_style,
            s3_sign_payload: g.s3_sign_payload,
            store_concurrency: g.store_concurrency.max(1),
            concurrency: g
                .concurrency
                .unwrap_or_else(crate::repo::backup::default_concurrency)
                .max(1),
            restore_concurrency: g
                .concurrency
                .unwrap_or_else(crate::repo::restore::default_restore_concurrency)
                .max(1),
            retries: g.retries.max(1),
            retry_base: g.retry_base.into(),
            lock_stale_after: g.lock_stale_after.into(),
            progress: !g.quiet,
            limits: Limits {
                upload: g.limit_upload.map(|r| Arc::new(RateLimiter::new(r))),
                download: g.limit_download.map(|r| Arc::new(RateLimiter::new(r))),
                read: g.limit_read.map(|r| Arc::new(RateLimiter::new(r))),
            },
        })
    }

    /// `store` under the bandwidth limits (inside the retries: a retried upload is sent again).
    fn throttled<S: Store>(&self, store: S) -> ThrottleStore<S> {
        ThrottleStore::new(
            store,
            self.limits.upload.clone(),
            self.limits.download.clone(),
        )
    }

    /// Builds the layered store for the repository location.
    pub async fn store(&self) -> Result<Arc<dyn Store>> {
        self.store_at(&self.repo, self.s3_endpoint.as_deref()).await
    }

    /// [`Self::store`] for another repository `repo` (S3 at `s3_endpoint`), with the same
    /// tuning, retries and bandwidth limits (`copy`, `init --copy-chunker-params-from`).
    pub async fn store_at(&self, repo: &str, s3_endpoint: Option<&str>) -> Result<Arc<dyn Store>> {
        let max = Duration::from_secs(20);
        if repo.starts_with("s3://") {
            let mut o = S3Options::from_url(repo)?;
            o.endpoint = s3_endpoint.map(str::to_string);
            o.region = self.s3_region.clone();
            o.path_style = self.s3_path_style;
            o.sign_payload = self.s3_sign_payload;
            let s3 = S3Store::connect(o).await?;
            Ok(Arc::new(LimitStore::new(
                RetryStore::new(self.throttled(s3), self.retries, self.retry_base, max),
                self.store_concurrency,
            )))
        } else {
            let local = LocalStore::new(repo);
            Ok(Arc::new(LimitStore::new(
                RetryStore::new(self.throttled(local), self.retries, self.retry_base, max),
                self.store_concurrency,
            )))
        }
    }
}

/// Runs a parsed command.
pub async fn run(cli: Cli) -> Result<()> {
    let config = Config::from_args(&cli.global)?;
    commands::run(&config, cli.command).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn limits_are_parsed_shared_and_forwarded_to_children() {
        let cli = Cli::try_parse_from([
            "virtguard",
            "--limit-upload",
            "50MiB",
            "--limit-read=1048576/s",
            "list",
        ])
        .unwrap();
        let config = Config::from_args(&cli.global).unwrap();
        assert_eq!(
            config.limits.args(),
            ["--limit-upload=52428800", "--limit-read=1048576"]
        );
        assert!(config.limits.download.is_none());
        // The forwarded flags parse back to the same limits.
        let child = Cli::try_parse_from(
            ["virtguard".to_string()]
                .into_iter()
                .chain(config.limits.args())
                .chain(["list".to_string()]),
        )
        .unwrap();
        assert_eq!(child.global.limit_upload, Some(52_428_800));
        assert_eq!(child.global.limit_read, Some(1_048_576));
        assert!(Cli::try_parse_from(["virtguard", "--limit-download", "0", "list"]).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4MiB").unwrap(), 4 << 20);
        assert_eq!(parse_size("65536").unwrap(), 65536);
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn help_mentions_no_secret_values() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("VIRTGUARD_KEY"));
        assert!(!help.contains("--key "), "the key itself is never a flag");
    }
}
