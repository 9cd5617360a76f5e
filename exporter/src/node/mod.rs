//! Node mode: libvirt domain stats of the VMs on this node.
//!
//! Per scrape ([`NodeCollector::scrape`]):
//! 1. **Discovery**: the socket globs are evaluated again (KubeVirt starts one libvirt daemon per
//!    VM, in its virt-launcher pod, so sockets come and go with VMs); each socket becomes a URI
//!    through the URI template; explicit `--libvirt-uri`s are added. Connections whose socket
//!    vanished are dropped.
//! 2. **Collection**: every connection is queried concurrently, at most `max_concurrent` at a
//!    time, each in a blocking thread (libvirt calls block). One deadline (`timeout`) bounds the
//!    wait for a slot plus the call, so the scrape never takes much longer than `timeout`.
//!    Connections are kept open between scrapes and reopened after an error.
//! 3. **Per-VM outcome**: a VM whose connection failed, timed out or is still blocked from an
//!    earlier scrape is reported with `virtguard_vmi_scrape_success 0` under the identity seen in
//!    the last successful scrape of that connection (a connection never seen working has no VM
//!    to name; it only counts in `virtguard_exporter_libvirt_connections{state="down"}`). A
//!    domain that vanishes between the stats call and the follow-up calls (XML, job stats) gets
//!    `scrape_success 0` and no other series.
//!
//! A call that never returns (a daemon that accepts but never answers) keeps its thread and the
//! connection's lock; later scrapes see the connection busy and fail it at once, so at most one
//! thread per connection is ever stuck.
//!
//! Device labels need the domain XML (aliases are not in the stats); it is cached per domain and
//! fetched again only when the domain restarted (new id) or a device appeared (hotplug).
//!
//! With `--guest-agent-nics`, VMs with SR-IOV NICs get one more call per scrape, to their guest
//! agent, for the counters libvirt does not have ([`guest_nics`]); with
//! `--guest-agent-filesystems`, every VM gets one for its filesystems ([`guest_fs`]).

pub mod cpu;
pub mod ffi;
pub mod guest_fs;
pub mod guest_nics;
pub mod stats;
pub mod vmi_labels;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use virt::connect::Connect;
use virt_sys as sys;

use crate::error::{Error, Result};
use stats::{DeviceLabels, Identity, VmStats};

/// Default socket glob: KubeVirt virt-launcher libvirt sockets as seen from the host.
pub const DEFAULT_SOCKET_GLOB: &str =
    "/var/lib/kubelet/pods/*/volumes/kubernetes.io~empty-dir/libvirt-runtime/virtqemud-sock";
/// Default template turning a socket path into a URI (`{socket}` is replaced).
pub const DEFAULT_URI_TEMPLATE: &str = "qemu+unix:///session?socket={socket}";

/// Stats groups requested from libvirt.
const STATS: u32 = sys::VIR_DOMAIN_STATS_STATE
    | sys::VIR_DOMAIN_STATS_BALLOON
    | sys::VIR_DOMAIN_STATS_INTERFACE
    | sys::VIR_DOMAIN_STATS_BLOCK
    | sys::VIR_DOMAIN_STATS_CPU_TOTAL
    | sys::VIR_DOMAIN_STATS_VCPU;

/// libvirt job operations (`virDomainJobOperation`) by the names the CLI accepts.
pub const JOB_OPERATIONS: &[(&str, i32)] = &[
    (
        "migration-out",
        sys::VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT as i32,
    ),
    ("save", sys::VIR_DOMAIN_JOB_OPERATION_SAVE as i32),
    ("dump", sys::VIR_DOMAIN_JOB_OPERATION_DUMP as i32),
    ("backup", sys::VIR_DOMAIN_JOB_OPERATION_BACKUP as i32),
    ("snapshot", sys::VIR_DOMAIN_JOB_OPERATION_SNAPSHOT as i32),
];

/// Test-only fault injection: called in the collector thread after the stats call and before
/// the per-domain follow-up calls, with the URI.
pub type Hook = Arc<dyn Fn(&str) + Send + Sync>;

/// Node-mode settings.
#[derive(Clone)]
pub struct NodeConfig {
    /// Value of the `node` label.
    pub node_name: String,
    /// Socket globs, evaluated on every scrape.
    pub socket_globs: Vec<String>,
    /// Template turning a socket path into a URI; `{socket}` is replaced by the path.
    pub uri_template: String,
    /// Explicit URIs, always queried.
    pub uris: Vec<String>,
    /// Connections queried at the same time.
    pub max_concurrent: usize,
    /// Deadline per connection (slot wait plus call).
    pub timeout: Duration,
    /// Job operations whose progress is exported as migration metrics (values of
    /// [`JOB_OPERATIONS`]); empty disables job stats calls.
    pub job_operations: Vec<i32>,
    /// Ask each running VM's guest agent for its filesystems (`--guest-agent-filesystems`).
    pub guest_filesystems: bool,
    /// Fault injection for tests; `None` in production.
    pub hook: Option<Hook>,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("node_name", &self.node_name)
            .field("socket_globs", &self.socket_globs)
            .field("uri_template", &self.uri_template)
            .field("uris", &self.uris)
            .field("max_concurrent", &self.max_concurrent)
            .field("timeout", &self.timeout)
            .field("job_operations", &self.job_operations)
            .field("guest_filesystems", &self.guest_filesystems)
            .finish_non_exhaustive()
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_name: String::new(),
            socket_globs: vec![DEFAULT_SOCKET_GLOB.to_string()],
            uri_template: DEFAULT_URI_TEMPLATE.to_string(),
            uris: Vec::new(),
            max_concurrent: 8,
            timeout: Duration::from_secs(3),
            job_operations: vec![sys::VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT as i32],
            guest_filesystems: false,
            hook: None,
        }
    }
}

/// Per-connection state kept between scrapes.
struct Slot {
    uri: String,
    /// Set while a blocking call runs on this connection.
    busy: AtomicBool,
    /// Identities seen in the last successful collection, to name VMs when it fails.
    known: Mutex<Vec<Identity>>,
    /// Owned by the blocking thread during a call.
    inner: Mutex<SlotInner>,
}

#[derive(Default)]
struct SlotInner {
    conn: Option<Connect>,
    /// Domain name → (domain id, labels).
    labels: HashMap<String, (u32, DeviceLabels)>,
}

/// Clears `busy` when the blocking call ends, even by panic.
struct BusyGuard(Arc<Slot>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::SeqCst);
    }
}

/// Result of one node-mode scrape.
#[derive(Debug, Clone, Default)]
pub struct NodeScrape {
    /// One entry per VM, sorted by identity.
    pub vms: Vec<VmStats>,
    /// Connections that answered / failed.
    pub connections: crate::render::ConnectionCounts,
}

/// Collects libvirt stats of all VMs on the node; cheap to share (`Arc`).
pub struct NodeCollector {
    cfg: NodeConfig,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    sem: Arc<Semaphore>,
    vmi_labels: Option<vmi_labels::VmiLabelSource>,
    guest_nics: Option<guest_nics::NicSource>,
}

/// The NICs of each VM that need guest agent counters, for one scrape.
type WantedNics = Arc<HashMap<Identity, Vec<guest_nics::WantedNic>>>;

impl NodeCollector {
    /// Validates the configuration and creates the collector (no connection is opened yet).
    pub fn new(cfg: NodeConfig) -> Result<NodeCollector> {
        for g in &cfg.socket_globs {
            glob::Pattern::new(g).map_err(|source| Error::Glob {
                pattern: g.clone(),
                source,
            })?;
        }
        // libvirt prints every error to stderr by default; we report them ourselves.
        virt::error::clear_error_callback();
        let sem = Arc::new(Semaphore::new(cfg.max_concurrent.max(1)));
        Ok(NodeCollector {
            cfg,
            slots: Mutex::new(HashMap::new()),
            sem,
            vmi_labels: None,
            guest_nics: None,
        })
    }

    /// Adds allow-listed VMI labels from the API to every per-VM series (`--vmi-label-allowlist`).
    pub fn with_vmi_labels(mut self, source: vmi_labels::VmiLabelSource) -> NodeCollector {
        self.vmi_labels = Some(source);
        self
    }

    /// Takes the counters of NICs libvirt cannot see (SR-IOV) from the guest agent
    /// (`--guest-agent-nics`); `source` names them once per scrape.
    pub fn with_guest_nics(mut self, source: guest_nics::NicSource) -> NodeCollector {
        self.guest_nics = Some(source);
        self
    }

    /// The URIs to query now: explicit ones, then one per socket matching a glob (sorted).
    pub fn discover(&self) -> Vec<String> {
        let mut uris: Vec<String> = self.cfg.uris.clone();
        let mut sockets: Vec<PathBuf> = Vec::new();
        for g in &self.cfg.socket_globs {
            // Validated in `new`; entries we cannot read (permissions, races) are skipped.
            if let Ok(paths) = glob::glob(g) {
                sockets.extend(paths.filter_map(std::result::Result::ok));
            }
        }
        sockets.sort();
        for s in sockets {
            let uri = self
                .cfg
                .uri_template
                .replace("{socket}", &s.to_string_lossy());
            if !uris.contains(&uri) {
                uris.push(uri);
            }
        }
        uris
    }

    /// Runs one scrape: discovery, concurrent bounded collection, per-VM outcome.
    pub async fn scrape(&self) -> NodeScrape {
        let uris = self.discover();
        let slots: Vec<Arc<Slot>> = {
            let mut map = self
                .slots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let wanted: HashSet<&String> = uris.iter().collect();
            map.retain(|uri, _| wanted.contains(uri));
            uris.iter()
                .map(|u| {
                    map.entry(u.clone())
                        .or_insert_with(|| {
                            Arc::new(Slot {
                                uri: u.clone(),
                                busy: AtomicBool::new(false),
                                known: Mutex::new(Vec::new()),
                                inner: Mutex::new(SlotInner::default()),
                            })
                        })
                        .clone()
                })
                .collect()
        };
        let wanted: WantedNics =
            Arc::new(self.guest_nics.as_ref().map(|f| f()).unwrap_or_default());
        let jobs = slots
            .into_iter()
            .map(|slot| self.collect_slot(slot, wanted.clone()));
        let results = futures::future::join_all(jobs).await;

        let mut out = NodeScrape::default();
        let mut seen = HashSet::new();
        for (slot, result, seconds) in results {
            let known = || {
                slot.known
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
            };
            match result {
                Ok(mut vms) => {
                    out.connections.up += 1;
                    let ids: Vec<Identity> = vms.iter().map(|v| v.identity.clone()).collect();
                    *slot
                        .known
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = ids;
                    for v in &mut vms {
                        v.duration_seconds = seconds;
                    }
                    out.vms.extend(vms);
                }
                Err(e) => {
                    out.connections.down += 1;
                    tracing::warn!(error = %e, "libvirt collection failed");
                    out.vms
                        .extend(known().into_iter().map(|id| VmStats::failed(id, seconds)));
                }
            }
        }
        // Two connections reporting the same domain name would give duplicate series: keep one.
        out.vms.sort_by(|a, b| a.identity.cmp(&b.identity));
        out.vms.retain(|v| seen.insert(v.identity.clone()));
        out
    }

    async fn collect_slot(
        &self,
        slot: Arc<Slot>,
        wanted: WantedNics,
    ) -> (Arc<Slot>, Result<Vec<VmStats>>, f64) {
        let start = Instant::now();
        let uri = slot.uri.clone();
        if slot.busy.swap(true, Ordering::SeqCst) {
            return (slot, Err(Error::Busy { uri }), 0.0);
        }
        let mut guard = Some(BusyGuard(slot.clone()));
        let timeout = self.cfg.timeout;
        let work = async {
            let _permit = self.sem.acquire().await;
            let s = slot.clone();
            let cfg = self.cfg.clone();
            let g = guard.take();
            let handle = tokio::task::spawn_blocking(move || {
                let _g = g;
                collect_blocking(&s, &cfg, &wanted)
            });
            match handle.await {
                Ok(r) => r,
                Err(_) => Err(Error::Panicked { uri: uri.clone() }),
            }
        };
        let result = match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                uri: slot.uri.clone(),
                timeout,
            }),
        };
        // If the deadline hit before the blocking task started, release `busy` here; once
        // started, the task's own guard releases it when the call returns.
        drop(guard);
        (slot, result, start.elapsed().as_secs_f64())
    }
}

impl NodeCollector {
    /// Scrapes and renders the whole node-mode exposition.
    pub async fn render(&self) -> String {
        let start = Instant::now();
        let s = self.scrape().await;
        // ~1.2 KiB per VM with a NIC and a disk; avoids regrowing the buffer.
        let mut out = crate::render::Exposition::with_capacity(4096 + s.vms.len() * 2048);
        let extra = match &self.vmi_labels {
            Some(src) => src.extras(&s.vms),
            None => Vec::new(),
        };
        crate::render::render_node_labelled(
            &mut out,
            &self.cfg.node_name,
            &s.vms,
            &extra,
            s.connections,
        );
        if let Some(src) = &self.vmi_labels {
            let n = src.len();
            crate::cluster::render_health(&mut out, &[(src.health(), n)]);
        }
        crate::render::render_self(&mut out, "node", start.elapsed().as_secs_f64());
        out.into_string()
    }
}

impl crate::http::MetricsSource for NodeCollector {
    fn render(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send + '_>> {
        Box::pin(NodeCollector::render(self))
    }

    /// Ready as soon as it serves; with `--vmi-label-allowlist`, once the VMI labels synced.
    fn ready(&self) -> bool {
        self.vmi_labels.as_ref().is_none_or(|s| s.ready())
    }
}

/// The blocking part: open if needed, one GetAllDomainStats, then per-domain follow-ups.
fn collect_blocking(
    slot: &Slot,
    cfg: &NodeConfig,
    wanted: &HashMap<Identity, Vec<guest_nics::WantedNic>>,
) -> Result<Vec<VmStats>> {
    let mut inner = slot
        .inner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let alive = inner
        .conn
        .as_ref()
        .is_some_and(|c| c.is_alive().unwrap_or(false));
    if !alive {
        inner.conn = None;
        let conn = Connect::open(Some(&slot.uri)).map_err(|source| Error::Connect {
            uri: slot.uri.clone(),
            source,
        })?;
        inner.conn = Some(conn);
    }
    let conn = inner.conn.as_ref().ok_or_else(|| Error::Busy {
        uri: slot.uri.clone(),
    })?;
    let records =
        match ffi::all_domain_stats(conn, STATS, sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE) {
            Ok(r) => r,
            Err(source) => {
                inner.conn = None;
                return Err(Error::Stats {
                    uri: slot.uri.clone(),
                    source,
                });
            }
        };
    if let Some(hook) = &cfg.hook {
        hook(&slot.uri);
    }
    let mut vms = Vec::with_capacity(records.len());
    let mut names = HashSet::new();
    for rec in &records {
        names.insert(rec.name.clone());
        let cached = inner
            .labels
            .get(&rec.name)
            .filter(|(id, l)| *id == rec.id && l.covers(&rec.params))
            .map(|(_, l)| l.clone());
        let labels = match cached {
            Some(l) => l,
            None => match rec.domain.xml_desc(0) {
                Ok(xml) => {
                    let l = DeviceLabels::from_domain_xml(&xml).unwrap_or_else(|e| {
                        tracing::warn!(domain = %rec.name, error = %e, "unparsable domain XML; using libvirt device names");
                        DeviceLabels::default()
                    });
                    inner.labels.insert(rec.name.clone(), (rec.id, l.clone()));
                    l
                }
                Err(e) => {
                    tracing::warn!(uri = %slot.uri, domain = %rec.name, error = %e, "domain vanished during the scrape");
                    vms.push(VmStats::failed(Identity::from_domain_name(&rec.name), 0.0));
                    continue;
                }
            },
        };
        let mut vm = stats::parse_domain(&rec.name, &rec.params, &labels);
        if !cfg.job_operations.is_empty() {
            match ffi::job_stats(&rec.domain) {
                Ok((ty, params)) => {
                    vm.migration = stats::parse_job(ty, &params, &cfg.job_operations)
                }
                Err(e) => {
                    if rec.domain.is_active().unwrap_or(false) {
                        tracing::debug!(domain = %rec.name, error = %e, "job stats unavailable");
                    } else {
                        tracing::warn!(uri = %slot.uri, domain = %rec.name, "domain stopped during the scrape");
                        vm = VmStats::failed(vm.identity, 0.0);
                    }
                }
            }
        }
        if vm.success {
            if let Some(w) = wanted.get(&vm.identity) {
                vm.guest_agent_interfaces = agent_nics(&rec.domain, &rec.name, &vm, w);
            }
            if cfg.guest_filesystems {
                vm.filesystems = agent_filesystems(&rec.domain, &rec.name);
            }
        }
        vms.push(vm);
    }
    inner.labels.retain(|n, _| names.contains(n));
    Ok(vms)
}

/// Counters of the wanted NICs that libvirt did not report, from the guest agent. A failing
/// agent costs only these series.
fn agent_nics(
    domain: &virt::domain::Domain,
    domain_name: &str,
    vm: &VmStats,
    wanted: &[guest_nics::WantedNic],
) -> Vec<stats::Device<8>> {
    let missing: Vec<guest_nics::WantedNic> = wanted
        .iter()
        .filter(|w| !vm.interfaces.iter().any(|d| d.label == w.interface))
        .cloned()
        .collect();
    if missing.is_empty() {
        return Vec::new();
    }
    match domain.qemu_agent_command(guest_nics::AGENT_COMMAND, guest_nics::AGENT_TIMEOUT_SECS, 0) {
        Ok(answer) => guest_nics::parse_agent_interfaces(&answer, &missing),
        Err(e) => {
            tracing::debug!(domain = %domain_name, error = %e, "guest agent NIC statistics unavailable");
            Vec::new()
        }
    }
}

/// The guest's filesystems from its agent; a failing agent costs only these series.
fn agent_filesystems(
    domain: &virt::domain::Domain,
    domain_name: &str,
) -> Vec<guest_fs::Filesystem> {
    match domain.qemu_agent_command(guest_fs::AGENT_COMMAND, guest_fs::AGENT_TIMEOUT_SECS, 0) {
        Ok(answer) => guest_fs::parse_fsinfo(&answer),
        Err(e) => {
            tracing::debug!(domain = %domain_name, error = %e, "guest agent filesystem info unavailable");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_reevaluates_globs_and_applies_the_template() {
        let dir = tempfile::tempdir().unwrap();
        let pods = dir.path().join("pods");
        for uid in ["b", "a"] {
            let d = pods.join(uid).join("libvirt-runtime");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("virtqemud-sock"), b"").unwrap();
        }
        let cfg = NodeConfig {
            socket_globs: vec![format!(
                "{}/pods/*/libvirt-runtime/virtqemud-sock",
                dir.path().display()
            )],
            uri_template: "qemu+unix:///session?socket={socket}".into(),
            uris: vec!["qemu:///system".into()],
            ..NodeConfig::default()
        };
        let c = NodeCollector::new(cfg).unwrap();
        let got = c.discover();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], "qemu:///system");
        assert!(got[1].ends_with("/pods/a/libvirt-runtime/virtqemud-sock"));
        assert!(got[1].starts_with("qemu+unix:///session?socket=/"));
        std::fs::remove_dir_all(pods.join("a")).unwrap();
        assert_eq!(
            c.discover().len(),
            2,
            "a vanished socket is dropped at the next scrape"
        );
    }

    #[test]
    fn bad_glob_is_refused() {
        let cfg = NodeConfig {
            socket_globs: vec!["/a/[".into()],
            ..NodeConfig::default()
        };
        assert!(matches!(NodeCollector::new(cfg), Err(Error::Glob { .. })));
    }

    /// A socket path nobody listens on: the connection counts as down, the scrape is fast and
    /// no VM is invented.
    #[tokio::test]
    async fn missing_daemon_is_a_down_connection() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = NodeConfig {
            uris: vec![format!(
                "qemu+unix:///system?socket={}/nope",
                dir.path().display()
            )],
            socket_globs: vec![],
            ..NodeConfig::default()
        };
        let c = NodeCollector::new(cfg).unwrap();
        let t = Instant::now();
        let s = c.scrape().await;
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(s.connections.down, 1);
        assert!(s.vms.is_empty());
    }

    /// The in-process test driver: one running domain with state only.
    #[tokio::test]
    async fn test_driver_domain_is_collected() {
        let cfg = NodeConfig {
            uris: vec!["test:///default".into()],
            socket_globs: vec![],
            node_name: "n1".into(),
            ..NodeConfig::default()
        };
        let c = NodeCollector::new(cfg).unwrap();
        let s = c.scrape().await;
        assert_eq!(s.connections.up, 1);
        assert_eq!(s.vms.len(), 1);
        assert!(s.vms[0].success);
        assert_eq!(s.vms[0].identity.name, "test");
    }
}
