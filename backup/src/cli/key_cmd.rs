//! `virtguard key list|add|remove|passwd`: the wrapped copies of the repository's master key
//! ([`crate::repo::keys`]).
//!
//! Invariant: a new key is never taken from a flag value (it would show in process listings):
//! it comes from `--new-key-file`, the env var `VIRTGUARD_NEW_KEY`, or a prompt on the terminal
//! (asked twice, not echoed); no key material is ever printed.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::util::open_repo;
use super::{Config, KeyMaterial, Output};
use crate::error::{Error, Result};
use crate::repo::keyring as keys;

/// `virtguard key`.
#[derive(Debug, Args)]
#[command(
    after_help = "Every key unlocks the same master key, so adding or removing one \
never re-encrypts data. The current key (the one given with --key-file / VIRTGUARD_KEY) opens \
the repository for the command. Rotation: `key add` a new key, switch every user (CronJobs, \
Secrets) to it, then `key remove` the old one. See backup/README.md, \"Keys\"."
)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

/// Where a new key comes from.
#[derive(Debug, Args)]
pub struct NewKeyArgs {
    /// File holding the new key (passphrase); alternatively set VIRTGUARD_NEW_KEY, else it is
    /// asked for on the terminal
    #[arg(long, env = "VIRTGUARD_NEW_KEY_FILE")]
    pub new_key_file: Option<PathBuf>,
    /// Host name recorded with the new key [default: this machine's]
    #[arg(long)]
    pub host: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// List the keys: id, host, creation time, and which one is current
    List {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Add a key that opens the repository
    Add(NewKeyArgs),
    /// Remove a key (never the last one; the current one only with --force)
    Remove {
        /// Id of the key (see `virtguard key list`)
        id: String,
        /// Also remove the key you opened the repository with
        #[arg(long)]
        force: bool,
    },
    /// Replace the current key by a new one (adds the new key, then removes the current one)
    Passwd(NewKeyArgs),
}

/// The new key: file, environment, or a terminal prompt (twice).
fn new_key(a: &NewKeyArgs) -> Result<KeyMaterial> {
    if let Some(p) = &a.new_key_file {
        return KeyMaterial::from_file(p);
    }
    if let Some(v) = std::env::var_os("VIRTGUARD_NEW_KEY").filter(|v| !v.is_empty()) {
        use std::os::unix::ffi::OsStrExt;
        return KeyMaterial::new(v.as_bytes().to_vec());
    }
    let term = console::Term::stderr();
    if !term.is_term() {
        return Err(Error::Invalid(
            "no new key given: pass --new-key-file PATH or set VIRTGUARD_NEW_KEY (no terminal \
             to ask on)"
                .into(),
        ));
    }
    let ask = |prompt: &str| -> Result<String> {
        term.write_str(prompt)
            .and_then(|_| term.read_secure_line())
            .map_err(|e| Error::Invalid(format!("reading the new key from the terminal: {e}")))
    };
    let first = ask("new key: ")?;
    if ask("repeat the new key: ")? != first {
        return Err(Error::Invalid(
            "the two entries differ; nothing was changed".into(),
        ));
    }
    KeyMaterial::new(first.into_bytes())
}

/// Runs `virtguard key …`.
pub async fn key(config: &Config, a: KeyArgs) -> Result<()> {
    let repo = open_repo(config).await?;
    match a.command {
        KeyCommand::List { output } => {
            let list = keys::list_keys(&repo).await?;
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                ),
                Output::Table => {
                    println!("  {:<10} {:<24} {:<20}  OBJECT", "ID", "HOST", "CREATED");
                    for k in list {
                        println!(
                            "{} {:<10} {:<24} {:<20}  {}",
                            if k.current { "*" } else { " " },
                            k.meta.id,
                            k.meta.host,
                            k.meta.created.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                            k.object
                        );
                    }
                }
            }
        }
        KeyCommand::Add(n) => {
            let k = new_key(&n)?;
            let meta = keys::add_key(&repo, k.bytes(), n.host.as_deref()).await?;
            println!("added key {} (host {})", meta.id, meta.host);
        }
        KeyCommand::Remove { id, force } => {
            keys::remove_key(&repo, &id, force).await?;
            println!("removed key {id}");
        }
        KeyCommand::Passwd(n) => {
            let k = new_key(&n)?;
            let old = repo.key_id().unwrap_or("-").to_string();
            let meta = keys::change_key(&repo, k.bytes(), n.host.as_deref()).await?;
            println!(
                "replaced key {old} by key {}: use the new key from now on",
                meta.id
            );
        }
    }
    Ok(())
}
