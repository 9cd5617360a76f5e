//! Test support for virtguard's end-to-end tests: real peers on 127.0.0.1.
//!
//! The project's rule is *real over mocks*: where a real component can run on the machine, tests
//! use it. This crate starts those components as child processes, each on a free loopback port
//! with its own temporary directory, and stops them when the handle is dropped (also when the
//! test panics, since `Drop` runs while unwinding).
//!
//! | peer | binary | handle |
//! |---|---|---|
//! | S3 server | `s3s-fs` (`cargo install s3s-fs@0.14.1 --features binary --locked`) | [`S3Server`] |
//! | Prometheus | `prometheus` (Debian package `prometheus`) | [`Prometheus`] |
//! | promtool | `promtool` (same package) | [`require_binary`] |
//! | Kubernetes control plane | etcd, kube-apiserver, kube-controller-manager built from source by `scripts/control-plane/build.sh` | [`ControlPlane`] |
//!
//! A missing binary is reported by [`PeerError::Missing`], whose message says how to install it.
//! Tests turn that into a failure with [`require_peer!`]; only when `VIRTGUARD_ALLOW_SKIP=1` is set
//! (for local runs on a machine without the peer) do they print a loud `SKIP` line and return.
//! CI never sets it, so in CI a missing peer fails the test.
//!
//! The workspace's own binaries (`virtguard`, `virtguard-sim`, `virtguard-exporter`) are found by
//! [`workspace_bin`] in the workspace target directory. The README's test command builds them
//! (`cargo build --workspace --bins`) before `cargo test`; building from inside a test would
//! deadlock on cargo's build-directory lock.

pub mod checkout;
pub mod control_plane;
pub mod dashboards;
pub mod demo;
pub mod peers;

pub use control_plane::ControlPlane;
pub use peers::{
    free_port, require_binary, require_kubectl, skip_allowed, wait_for_port, workspace_bin,
    workspace_root, PeerError, Prometheus, PrometheusConfig, S3Server,
};

/// Unwraps a peer result; on [`PeerError`] fails the test with its message, or — only when
/// `VIRTGUARD_ALLOW_SKIP=1` — prints a loud SKIP line and returns from the calling test.
#[macro_export]
macro_rules! require_peer {
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(err) => {
                if $crate::skip_allowed() {
                    eprintln!("\n*** SKIP (VIRTGUARD_ALLOW_SKIP=1): {err} ***\n");
                    return;
                }
                panic!("{err}");
            }
        }
    };
}
