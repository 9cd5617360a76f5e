//! virtguard-exporter: a Prometheus exporter for KubeVirt VMs.
//!
//! * [`catalog`] — every metric the exporter emits (names, types, labels): the contract the
//!   alert rules and dashboards depend on.
//! * [`node`] — node mode (DaemonSet): libvirt discovery, stats collection, identity mapping;
//!   the only `unsafe` code of the project is in [`node::ffi`].
//! * [`cluster`] — cluster mode (Deployment): reflectors over VMIMs, VMIs, VM snapshots,
//!   restored PVCs and the backup status ConfigMaps, rendered at scrape time.
//! * [`allowlist`] — `--vmi-label-allowlist`: VMI labels copied onto per-VM series.
//! * [`http`] — `/metrics`, `/healthz`, `/readyz`, optional TLS, graceful shutdown.
//! * [`render`] — Prometheus text exposition, rendered fresh on every scrape.
//! * [`error`] — the crate's error type.
//!
//! Node mode reads libvirt domain stats of the VMs on its node; cluster mode (Deployment) reads
//! Kubernetes objects through reflectors. See ARCHITECTURE.md §2.

pub mod allowlist;
pub mod catalog;
pub mod cluster;
pub mod error;
pub mod http;
pub mod node;
pub mod render;

pub use error::{Error, Result};
