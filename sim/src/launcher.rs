//! The real launcher: VMIs of the namespaces handed to it boot as **real QEMU/TCG domains**
//! under a libvirt daemon, from their PVCs' backing files — what virt-launcher does in a real
//! cluster, so a restored copy either boots or it does not.
//!
//! Scenario:
//!
//! ```yaml
//! launcher:
//!   libvirtUri: "qemu+unix:///system?socket=/run/vg/libvirt-sock"
//!   kernel: /root/.cache/virtguard/guest/vmlinuz
//!   initrd: /root/.cache/virtguard/guest/initramfs.gz
//!   memoryMiB: 256                 # default 256
//!   namespaces: [virtguard-drills] # VMIs in these namespaces are launched for real
//! ```
//!
//! Lifecycle of a launched VMI (keyed by its uid, so a VMI deleted and recreated under the same
//! name gets a fresh domain):
//! - created → `Scheduled` while the domain is defined and started (`virsh create` of a
//!   transient domain named `<namespace>_<name>`, as KubeVirt names them); the disks are the
//!   VMI's PVC / DataVolume volumes in order (`vda`, `vdb`, ...), each the PVC's backing file;
//! - the domain runs → `Running`; the guest agent answers `guest-ping` through libvirt →
//!   condition `AgentConnected` (checked every second until it answers, then every 5 s);
//! - the domain cannot be started (a disk's PVC is unbound, QEMU fails) → `Failed`, with the
//!   reason in a `Synchronized=False` condition, as virt-handler reports a failed sync;
//! - the VMI is deleted (VM stopped or deleted) → the domain is destroyed, and only then is the
//!   VMI's finalizer [`VMI_FINALIZER`] removed (as virt-handler does), so a client that waits for
//!   the VMI to disappear knows the guest is gone. When the simulator stops, every domain it
//!   started is destroyed.
//!
//! Invariant: a domain exists only while its VMI does; the launcher never touches a domain it did
//! not start (names are prefixed by namespace and checked against its own table).
//!
//! The VMI gets the annotation [`crate::kubevirt::AGENT_LIBVIRT_ANNOTATION`] naming its domain,
//! so freeze/thaw and the guest-agent subresources ([`crate::guest_agent`]) reach the real agent.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::{meta_str, name_ns};
use crate::Inner;

/// KubeVirt's finalizer on a VMI, removed once the guest is shut down.
pub const VMI_FINALIZER: &str = "foregroundDeleteVirtualMachine";

/// The `launcher:` section of a scenario.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LauncherConfig {
    /// libvirt connection URI of the daemon that runs the domains.
    pub libvirt_uri: String,
    /// Guest kernel (`<os><kernel>`).
    pub kernel: PathBuf,
    /// Guest initramfs (`<os><initrd>`).
    pub initrd: PathBuf,
    /// Guest memory, MiB.
    #[serde(default = "default_memory", rename = "memoryMiB")]
    pub memory_mib: u32,
    /// Namespaces whose VMIs are launched for real; the others stay simulated.
    pub namespaces: Vec<String>,
}

fn default_memory() -> u32 {
    256
}

/// Where a launched domain is.
#[derive(Debug, Clone, PartialEq)]
pub enum LaunchPhase {
    /// Being defined and started.
    Starting,
    /// Running; `agent` once the guest agent answered.
    Running { agent: bool },
    /// Could not start (the message says why).
    Failed(String),
}

#[derive(Debug)]
struct Launch {
    uid: String,
    domain: String,
    phase: LaunchPhase,
}

/// The launcher's table of domains, keyed by `namespace/name` of the VMI.
#[derive(Debug, Default)]
pub struct LauncherState {
    config: Option<LauncherConfig>,
    launches: Mutex<HashMap<String, Launch>>,
    /// Uids of deleted VMIs whose domain is being destroyed (their finalizer stays until then).
    destroying: Mutex<std::collections::HashSet<String>>,
}

impl LauncherState {
    pub fn new(config: Option<LauncherConfig>) -> Self {
        LauncherState {
            config,
            launches: Mutex::new(HashMap::new()),
            destroying: Mutex::new(std::collections::HashSet::new()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Launch>> {
        self.launches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether VMIs of `namespace` are launched for real.
    pub fn handles(&self, namespace: &str) -> bool {
        self.config
            .as_ref()
            .is_some_and(|c| c.namespaces.iter().any(|n| n == namespace))
    }

    /// The phase of the domain of VMI `ns/name` with `uid` (None: not launched yet).
    pub fn phase(&self, ns: &str, name: &str, uid: &str) -> Option<LaunchPhase> {
        self.table()
            .get(&format!("{ns}/{name}"))
            .filter(|l| l.uid == uid)
            .map(|l| l.phase.clone())
    }

    /// `URI DOMAIN` of a running launched VMI (the value of the agent annotation).
    pub fn agent_target(&self, ns: &str, name: &str) -> Option<String> {
        let c = self.config.as_ref()?;
        let t = self.table();
        let l = t.get(&format!("{ns}/{name}"))?;
        matches!(l.phase, LaunchPhase::Running { .. })
            .then(|| format!("{} {}", c.libvirt_uri, l.domain))
    }

    fn set_phase(&self, key: &str, uid: &str, phase: LaunchPhase) {
        if let Some(l) = self.table().get_mut(key).filter(|l| l.uid == uid) {
            l.phase = phase;
        }
    }

    /// Destroys every domain the launcher started, synchronously (from `Drop`).
    pub fn destroy_all_blocking(&self) {
        let Some(c) = &self.config else { return };
        let all: Vec<String> = self.table().drain().map(|(_, l)| l.domain).collect();
        for d in all {
            let _ = std::process::Command::new("virsh")
                .args(["-c", &c.libvirt_uri, "destroy", &d])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }

    /// Destroys every domain the launcher started (the simulator stops).
    pub async fn destroy_all(&self) {
        let Some(c) = &self.config else { return };
        let all: Vec<String> = self.table().drain().map(|(_, l)| l.domain).collect();
        for d in all {
            destroy(&c.libvirt_uri, &d).await;
        }
    }
}

/// One pass: launch new VMIs of the handled namespaces, destroy domains whose VMI is gone.
/// Starting and agent checks run in background tasks; this only reads the store.
pub(crate) fn reconcile(inner: &Arc<Inner>) {
    let Some(config) = inner.launcher.config.clone() else {
        return;
    };
    let vmi_res = inner.rid("kubevirt.io", "virtualmachineinstances");
    let (vmis, _) = inner.store.list(vmi_res, None);
    let mut live: HashMap<String, String> = HashMap::new();
    let mut deleting: HashMap<String, String> = HashMap::new();
    for vmi in &vmis {
        let (name, ns) = name_ns(vmi);
        if !inner.launcher.handles(&ns) {
            continue;
        }
        let uid = meta_str(vmi, "uid").unwrap_or_default().to_string();
        if vmi.pointer("/metadata/deletionTimestamp").is_some() {
            deleting.insert(uid, format!("{ns}/{name}"));
        } else {
            live.insert(format!("{ns}/{name}"), uid);
        }
    }
    // Gone (or replaced by a new VMI of the same name): destroy, then release the VMI.
    let gone: Vec<(String, String)> = {
        let mut t = inner.launcher.table();
        let keys: Vec<String> = t
            .iter()
            .filter(|(k, l)| live.get(*k) != Some(&l.uid))
            .map(|(k, _)| k.clone())
            .collect();
        keys.into_iter()
            .filter_map(|k| t.remove(&k).map(|l| (l.uid, l.domain)))
            .collect()
    };
    for (uid, d) in gone {
        inner
            .launcher
            .destroying
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid.clone());
        let uri = config.libvirt_uri.clone();
        let inner = inner.clone();
        let key = deleting.get(&uid).cloned();
        tokio::spawn(async move {
            destroy(&uri, &d).await;
            if let Some(key) = key {
                release(&inner, &key, &uid);
            }
            inner
                .launcher
                .destroying
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&uid);
        });
    }
    // Deleted VMIs without a domain (never started, or already destroyed): release now.
    for (uid, key) in &deleting {
        let busy = inner
            .launcher
            .destroying
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(uid);
        if !busy {
            release(inner, key, uid);
        }
    }
    for vmi in vmis {
        let (name, ns) = name_ns(&vmi);
        let key = format!("{ns}/{name}");
        let Some(uid) = live.get(&key).cloned() else {
            continue;
        };
        let domain = format!("{ns}_{name}");
        {
            let mut t = inner.launcher.table();
            if t.contains_key(&key) {
                continue;
            }
            t.insert(
                key.clone(),
                Launch {
                    uid: uid.clone(),
                    domain: domain.clone(),
                    phase: LaunchPhase::Starting,
                },
            );
        }
        let inner = inner.clone();
        let config = config.clone();
        tokio::spawn(async move {
            let phase = match start(&inner, &config, &vmi, &ns, &domain).await {
                Ok(()) => LaunchPhase::Running { agent: false },
                Err(e) => {
                    tracing::warn!(vmi = %key, error = %e, "the launcher could not start the domain");
                    LaunchPhase::Failed(e)
                }
            };
            let started = matches!(phase, LaunchPhase::Running { .. });
            inner.launcher.set_phase(&key, &uid, phase);
            inner.store.poke();
            if started {
                watch_agent(&inner, &config.libvirt_uri, &key, &uid, &domain).await;
            }
        });
    }
}

/// Removes [`VMI_FINALIZER`] from the VMI `key` (`ns/name`) if it is still the one with `uid`.
fn release(inner: &Inner, key: &str, uid: &str) {
    let Some((ns, name)) = key.split_once('/') else {
        return;
    };
    let vmi_res = inner.rid("kubevirt.io", "virtualmachineinstances");
    let _ = inner.store.mutate(vmi_res, ns, name, |o| {
        if meta_str(o, "uid") != Some(uid) {
            return;
        }
        if let Some(f) = o
            .pointer_mut("/metadata/finalizers")
            .and_then(Value::as_array_mut)
        {
            f.retain(|x| x != VMI_FINALIZER);
        }
    });
}

/// Defines and starts the transient domain of `vmi`.
async fn start(
    inner: &Inner,
    config: &LauncherConfig,
    vmi: &Value,
    ns: &str,
    domain: &str,
) -> Result<(), String> {
    let mut disks = Vec::new();
    for v in vmi
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(claim) = v
            .pointer("/persistentVolumeClaim/claimName")
            .or_else(|| v.pointer("/dataVolume/name"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let path = crate::snapshot::pvc_file(inner, ns, claim)
            .map_err(|e| format!("volume {}: PVC {ns}/{claim}: {e}", v["name"]))?;
        disks.push(path);
    }
    if disks.is_empty() {
        return Err("the VMI has no PVC or DataVolume disk to boot from".into());
    }
    let dir = inner.state_dir.join("launcher");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let xml_path = dir.join(format!("{domain}.xml"));
    let console = dir.join(format!("{domain}.console.log"));
    let _ = std::fs::remove_file(&console);
    std::fs::write(&xml_path, domain_xml(config, domain, &disks, &console))
        .map_err(|e| format!("writing {}: {e}", xml_path.display()))?;
    // A domain left behind by a killed simulator would block the name.
    destroy(&config.libvirt_uri, domain).await;
    virsh(
        &config.libvirt_uri,
        &["create", &xml_path.display().to_string()],
    )
    .await
    .map(|_| ())
}

/// Polls the guest agent until it answers, then keeps checking it (every 5 s) while the domain
/// is in the launcher's table.
async fn watch_agent(inner: &Arc<Inner>, uri: &str, key: &str, uid: &str, domain: &str) {
    let mut connected = false;
    loop {
        if inner.stop.is_cancelled() || inner.launcher.phase_uid(key) != Some(uid.to_string()) {
            return;
        }
        let ok = virsh(
            uri,
            &[
                "qemu-agent-command",
                domain,
                r#"{"execute":"guest-ping"}"#,
                "--timeout",
                "3",
            ],
        )
        .await
        .is_ok();
        if ok != connected {
            connected = ok;
            inner
                .launcher
                .set_phase(key, uid, LaunchPhase::Running { agent: ok });
            inner.store.poke();
        }
        let pause = if connected { 5 } else { 1 };
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(pause)) => {}
        }
    }
}

impl LauncherState {
    fn phase_uid(&self, key: &str) -> Option<String> {
        self.table().get(key).map(|l| l.uid.clone())
    }
}

/// Runs `virsh -c URI ARGS...` (bounded to 60 s); its stdout, or stderr as the error.
pub(crate) async fn virsh(uri: &str, args: &[&str]) -> Result<String, String> {
    let run = tokio::process::Command::new("virsh")
        .args(["-c", uri])
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(60), run).await {
        Err(_) => Err(format!("virsh {} timed out after 60 s", args[0])),
        Ok(Err(e)) => Err(format!("running virsh: {e}")),
        Ok(Ok(o)) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(Ok(o)) => Err(format!(
            "virsh {} failed: {}",
            args[0],
            String::from_utf8_lossy(&o.stderr).trim()
        )),
    }
}

async fn destroy(uri: &str, domain: &str) {
    // Absent is fine (never started, or already gone).
    let _ = virsh(uri, &["destroy", domain]).await;
}

/// The domain XML: TCG q35 booting the guest kernel, one virtio disk per volume, the guest
/// agent channel, a serial console logged next to the XML. No NIC: a launched VMI is a sandbox.
fn domain_xml(
    config: &LauncherConfig,
    domain: &str,
    disks: &[PathBuf],
    console: &std::path::Path,
) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('\'', "&apos;")
    };
    let mut devices = String::new();
    for (i, d) in disks.iter().enumerate() {
        let dev = format!("vd{}", (b'a' + (i as u8 % 26)) as char);
        devices.push_str(&format!(
            "    <disk type='file' device='disk'><driver name='qemu' type='raw' cache='none' io='threads'/><source file='{}'/><target dev='{dev}' bus='virtio'/></disk>\n",
            esc(&d.display().to_string())
        ));
    }
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{mem}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
{devices}    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
    <memballoon model='virtio'/>
  </devices>
</domain>
",
        name = esc(domain),
        mem = config.memory_mib,
        kernel = esc(&config.kernel.display().to_string()),
        initrd = esc(&config.initrd.display().to_string()),
        console = esc(&console.display().to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_xml_has_one_disk_per_volume_and_escapes_paths() {
        let c = LauncherConfig {
            libvirt_uri: "test:///default".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            memory_mib: 128,
            namespaces: vec!["sb".into()],
        };
        let x = domain_xml(
            &c,
            "sb_copy",
            &[PathBuf::from("/a/1.img"), PathBuf::from("/b/o'2.img")],
            std::path::Path::new("/c.log"),
        );
        assert!(x.contains("<name>sb_copy</name>"));
        assert!(x.contains("<source file='/a/1.img'/><target dev='vda'"));
        assert!(x.contains("<source file='/b/o&apos;2.img'/><target dev='vdb'"));
        assert!(x.contains("<memory unit='MiB'>128</memory>"));
        let s = LauncherState::new(Some(c));
        assert!(s.handles("sb"));
        assert!(!s.handles("prod"));
    }
}
