//! virtguard-exporter: a Prometheus exporter for KubeVirt VMs.
//!
//! * [`catalog`] — every metric the exporter emits (names, types, labels): the contract the
//!   alert rules and dashboards depend on.
//!
//! Node mode (DaemonSet) reads libvirt domain stats of the VMs on its node; cluster mode
//! (Deployment) reads Kubernetes objects through reflectors. See DESIGN §2.

pub mod catalog;
