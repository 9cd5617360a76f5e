//! The guest agent as KubeVirt exposes it to API clients: the `guestosinfo` and `filesystemlist`
//! subresources of a VMI (GET, answered by virt-handler from the QEMU guest agent).
//!
//! Invariant: read-only; each call is one GET whose error names the VMI and the subresource.
//! [`mount_points`] is the one definition of "the filesystems a guest has mounted" shared by the
//! backup (which records them in the manifest, [`GUEST_MOUNTS_LABEL`]) and the restore drill
//! (which expects them again in the restored copy).

use kube::Client;
use serde::de::DeserializeOwned;
use virtguard_api::{
    VirtualMachineInstanceFileSystem, VirtualMachineInstanceFileSystemList,
    VirtualMachineInstanceGuestAgentInfo,
};

use super::{ClusterError, Result};

/// Manifest label: the mount points of the guest's filesystems when the backup was taken
/// (sorted, comma-separated), from the guest agent. Absent when the VM was not running or its
/// agent did not answer.
pub const GUEST_MOUNTS_LABEL: &str = "guest-mounts";

async fn get<T: DeserializeOwned>(
    client: &Client,
    namespace: &str,
    name: &str,
    what: &'static str,
) -> Result<T> {
    let path = format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{namespace}/virtualmachineinstances/{name}/{what}"
    );
    let req = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| ClusterError::Api {
            action: "reading",
            kind: what,
            object: format!("{namespace}/{name}"),
            source: kube::Error::HttpError(e),
        })?;
    client.request::<T>(req).await.map_err(ClusterError::api(
        "reading",
        what,
        format!("{namespace}/{name}"),
    ))
}

/// The guest's mounted filesystems (`filesystemlist`).
pub async fn filesystems(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Vec<VirtualMachineInstanceFileSystem>> {
    let l: VirtualMachineInstanceFileSystemList =
        get(client, namespace, name, "filesystemlist").await?;
    Ok(l.items.unwrap_or_default())
}

/// What the guest agent says about the guest (`guestosinfo`).
pub async fn os_info(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<VirtualMachineInstanceGuestAgentInfo> {
    get(client, namespace, name, "guestosinfo").await
}

/// The mount points of `fs`, sorted and without duplicates (a filesystem mounted twice, or
/// several entries of one btrfs, count once).
pub fn mount_points(fs: &[VirtualMachineInstanceFileSystem]) -> Vec<String> {
    let mut m: Vec<String> = fs
        .iter()
        .filter_map(|f| f.mount_point.clone())
        .filter(|m| !m.is_empty())
        .collect();
    m.sort();
    m.dedup();
    m
}

/// Parses a [`GUEST_MOUNTS_LABEL`] value.
pub fn parse_mounts(label: &str) -> Vec<String> {
    label
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_sorted_unique_and_round_trip_through_the_label() {
        let f = |m: &str| VirtualMachineInstanceFileSystem {
            mount_point: Some(m.into()),
            ..Default::default()
        };
        let m = mount_points(&[f("/mnt"), f("/"), f("/mnt"), f("")]);
        assert_eq!(m, ["/", "/mnt"]);
        assert_eq!(parse_mounts(&m.join(",")), m);
        assert!(parse_mounts("").is_empty());
    }
}
