//! Guest filesystem usage from the guest agent (`--guest-agent-filesystems`, off by default).
//!
//! Per scrape and running VM, one `guest-get-fsinfo` call through the guest agent
//! (`virDomainQemuAgentCommand`, timeout [`AGENT_TIMEOUT_SECS`]) gives, per mounted filesystem,
//! `kubevirt_vmi_filesystem_capacity_bytes` and `kubevirt_vmi_filesystem_used_bytes` labelled
//! `disk_name` (the agent's `name`, e.g. `vda1`), `mount_point` and `file_system_type`, as
//! KubeVirt does.
//!
//! Invariants: a failing, slow or absent agent costs only these series (logged at debug level),
//! never the VM's `virtguard_vmi_scrape_success`; an entry without a name, mount point or
//! `total-bytes` is skipped (no guessed sizes); a mount point reported twice (bind mounts) is
//! reported once (the first wins); at most [`MAX_FILESYSTEMS`] per VM, so a guest cannot grow
//! the label set without bound.

use std::collections::HashSet;

use serde_json::Value;

/// Timeout of the agent call, in seconds (libvirt's unit); inside the per-connection deadline.
pub const AGENT_TIMEOUT_SECS: i32 = 1;

/// The agent command.
pub const AGENT_COMMAND: &str = r#"{"execute":"guest-get-fsinfo"}"#;

/// Filesystems reported per VM at most.
pub const MAX_FILESYSTEMS: usize = 64;

/// One guest filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filesystem {
    /// `disk_name` label: the agent's device name of the filesystem.
    pub disk_name: String,
    /// `mount_point` label.
    pub mount_point: String,
    /// `file_system_type` label.
    pub fs_type: String,
    /// Total bytes.
    pub capacity: u64,
    /// Used bytes, when the agent reports them (qemu-ga ≥ 3.0).
    pub used: Option<u64>,
}

/// Parses the agent's answer (`{"return": [...]}`); anything unreadable gives no filesystem.
pub fn parse_fsinfo(answer: &str) -> Vec<Filesystem> {
    let Ok(v) = serde_json::from_str::<Value>(answer) else {
        return Vec::new();
    };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for fs in v["return"].as_array().into_iter().flatten() {
        let (Some(name), Some(mount), Some(total)) = (
            fs["name"].as_str().filter(|s| !s.is_empty()),
            fs["mountpoint"].as_str().filter(|s| !s.is_empty()),
            fs["total-bytes"].as_u64(),
        ) else {
            continue;
        };
        if !seen.insert(mount.to_string()) {
            continue;
        }
        out.push(Filesystem {
            disk_name: name.to_string(),
            mount_point: mount.to_string(),
            fs_type: fs["type"].as_str().unwrap_or("").to_string(),
            capacity: total,
            used: fs["used-bytes"].as_u64(),
        });
        if out.len() == MAX_FILESYSTEMS {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sizes_and_skips_what_it_cannot_name() {
        let answer = r#"{"return": [
            {"name": "vdb", "mountpoint": "/mnt", "type": "ext4", "used-bytes": 4194304,
             "total-bytes": 16777216, "disk": [{"dev": "/dev/vdb", "serial": "x"}]},
            {"name": "vdb", "mountpoint": "/mnt", "type": "ext4", "used-bytes": 1, "total-bytes": 2},
            {"name": "vda1", "mountpoint": "/", "type": "xfs", "total-bytes": 100},
            {"name": "tmpfs", "mountpoint": "/run", "type": "tmpfs"},
            {"mountpoint": "/x", "total-bytes": 5}
        ]}"#;
        let fs = parse_fsinfo(answer);
        assert_eq!(
            fs,
            vec![
                Filesystem {
                    disk_name: "vdb".into(),
                    mount_point: "/mnt".into(),
                    fs_type: "ext4".into(),
                    capacity: 16_777_216,
                    used: Some(4_194_304),
                },
                Filesystem {
                    disk_name: "vda1".into(),
                    mount_point: "/".into(),
                    fs_type: "xfs".into(),
                    capacity: 100,
                    used: None,
                },
            ]
        );
        assert!(parse_fsinfo("not json").is_empty());
        assert!(parse_fsinfo(r#"{"error": {"class": "CommandNotFound"}}"#).is_empty());
    }

    #[test]
    fn at_most_max_filesystems() {
        let many: Vec<String> = (0..100)
            .map(|i| {
                format!(r#"{{"name":"d{i}","mountpoint":"/m{i}","type":"ext4","total-bytes":1}}"#)
            })
            .collect();
        let answer = format!(r#"{{"return":[{}]}}"#, many.join(","));
        assert_eq!(parse_fsinfo(&answer).len(), MAX_FILESYSTEMS);
    }
}
