//! The restore plan: which backup, which objects, which names, which identity policy — built
//! as pure data before anything is created.
//!
//! [`load_objects`] reads the backup's `resources.tar.zst` (checked against the digest in the
//! manifest): `virtualmachine.json` and `pvc-<claim>.json` per backed-up claim. [`plan`] turns
//! them into a [`Plan`]: the target name and namespace, one [`VolumePlan`] per backed-up volume
//! (claim name, size, storage class after `--storage-class-map`, volume and access modes), the VM
//! object rewritten as `rewrite` describes, and what [`super::check_target`] must find in the
//! target cluster (storage classes, Multus networks, the backup's snapshot classes).
//!
//! Claim names: a copy with a new VM name renames claims consistently (`<old-vm>-root` →
//! `<new-vm>-root`, any other claim `c` → `<new-vm>-c`); in place, every disk goes into a new,
//! *staged* claim (see [`staged_claim_name`]), so the VM's old disks stay untouched until the
//! switch.
//!
//! Invariant: planning reads no cluster state and creates nothing; a plan that cannot be
//! carried out (a volume the saved VM does not have, an invalid name) is refused here.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use serde_json::Value;
use virtguard_api::VirtualMachine;

use super::error::{RestoreError, Result};
use super::model::{BackupObjects, Mode, Plan, RestoreRequest, VolumePlan};
use super::rewrite;
use crate::repo::format::Manifest;
use crate::repo::{BackupRef, Repository};

/// Reads `virtualmachine.json` and the `pvc-*.json` files of a backup.
pub async fn load_objects(repo: &Repository, m: &Manifest) -> Result<BackupObjects> {
    let backup = format!("{}/{}/{}", m.namespace, m.vm, m.id);
    let Some(entry) = &m.resources else {
        return Err(RestoreError::NoVmObject { backup });
    };
    let key = format!("{}resources.tar.zst", m.prefix());
    let (raw, digest) = repo.get_object(&key).await?;
    if digest != entry.object_digest {
        return Err(crate::repo::Error::corrupt(
            key,
            "resources do not match the digest in the manifest",
        )
        .into());
    }
    let files = crate::repo::backup::parse_resources(&key, &raw)?;
    let mut vm = None;
    let mut pvcs = BTreeMap::new();
    for (name, data) in files {
        let parse = |d: &[u8]| {
            serde_json::from_slice::<Value>(d).map_err(|e| {
                crate::repo::Error::corrupt(format!("{key}:{name}"), format!("not JSON: {e}"))
            })
        };
        if name == "virtualmachine.json" {
            vm = Some(parse(&data)?);
        } else if let Some(claim) = name
            .strip_prefix("pvc-")
            .and_then(|n| n.strip_suffix(".json"))
        {
            pvcs.insert(claim.to_string(), parse(&data)?);
        }
    }
    let vm = vm.ok_or(RestoreError::NoVmObject { backup })?;
    Ok(BackupObjects { vm, pvcs })
}

/// The claim name a copy gets.
fn copy_claim_name(old_claim: &str, old_vm: &str, new_vm: &str) -> String {
    if old_vm == new_vm {
        return old_claim.to_string();
    }
    match old_claim.strip_prefix(old_vm) {
        Some(rest) if rest.is_empty() || rest.starts_with('-') => format!("{new_vm}{rest}"),
        _ => format!("{new_vm}-{old_claim}"),
    }
}

/// The claim name an in-place restore writes into: the old name with the restore's suffix
/// `-r<4 hex>` (a suffix of an earlier in-place restore is replaced, not stacked). The old claim
/// stays untouched until the VM has been switched to the new one, so a failed restore never
/// costs the VM its disks.
fn staged_claim_name(old_claim: &str, restore_id: &str) -> String {
    let tag: String = restore_id
        .rsplit('-')
        .next()
        .unwrap_or(restore_id)
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase();
    let tag = &tag[tag.len().saturating_sub(4)..];
    let mut base = old_claim;
    if let Some((b, t)) = old_claim.rsplit_once("-r") {
        if t.len() == 4 && t.bytes().all(|c| c.is_ascii_hexdigit()) && !b.is_empty() {
            base = b;
        }
    }
    // CDI names pods after the DataVolume (`cdi-upload-<name>`): stay within a DNS label.
    let max = 63 - "cdi-upload-".len() - 2 - tag.len();
    let cut = base.char_indices().nth(max).map_or(base.len(), |(i, _)| i);
    let base = base[..cut].trim_end_matches(['-', '.']);
    format!("{base}-r{tag}")
}

/// The saved PVC object of claim `claim`, if the backup has one.
fn saved_pvc(
    objs: &BackupObjects,
    claim: &str,
    source: &BackupRef,
) -> Result<Option<PersistentVolumeClaim>> {
    let Some(raw) = objs.pvcs.get(claim) else {
        return Ok(None);
    };
    serde_json::from_value(raw.clone()).map(Some).map_err(|e| {
        RestoreError::Invalid(format!(
            "backup {source}: pvc-{claim}.json is not a PersistentVolumeClaim: {e}"
        ))
    })
}

/// Builds the plan (pure: no cluster access).
pub fn plan(
    m: &Manifest,
    objs: &BackupObjects,
    req: &RestoreRequest,
    restore_id: &str,
) -> Result<Plan> {
    let namespace = req
        .target_namespace
        .clone()
        .unwrap_or_else(|| m.namespace.clone());
    let name = req.name.clone().unwrap_or_else(|| m.vm.clone());
    crate::repo::format::check_name("namespace", &namespace)?;
    crate::repo::format::check_name("VM name", &name)?;
    let source = BackupRef {
        namespace: m.namespace.clone(),
        vm: m.vm.clone(),
        id: m.id.clone(),
    };
    if !objs.vm.is_object() {
        return Err(RestoreError::Invalid(format!(
            "backup {source}: virtualmachine.json is not an object"
        )));
    }
    let mut vm: VirtualMachine = serde_json::from_value(objs.vm.clone()).map_err(|e| {
        RestoreError::Invalid(format!(
            "backup {source}: virtualmachine.json is not a VirtualMachine: {e}"
        ))
    })?;
    let old_vm = m.vm.clone();
    rewrite::as_new_object(&mut vm, &namespace, &name, &source, restore_id);

    // The claims behind the backed-up volumes.
    let tvols = vm
        .template_spec()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let mut volumes = Vec::new();
    for ve in &m.volumes {
        let v = tvols
            .iter()
            .find(|v| v.name.as_deref() == Some(ve.name.as_str()))
            .ok_or_else(|| {
                RestoreError::Invalid(format!(
                    "backup {source}: volume `{}` is not in the saved VM's spec.template.spec.volumes",
                    ve.name
                ))
            })?;
        let old_claim = v
            .claim_name()
            .ok_or_else(|| {
                RestoreError::Invalid(format!(
                    "backup {source}: volume `{}` is neither a PVC nor a DataVolume in the saved VM",
                    ve.name
                ))
            })?
            .to_string();
        let claim = match req.mode {
            Mode::Copy => copy_claim_name(&old_claim, &old_vm, &name),
            Mode::InPlace => staged_claim_name(&old_claim, restore_id),
        };
        crate::repo::format::check_name("claim name", &claim)?;
        let pvc = saved_pvc(objs, &old_claim, &source)?;
        let spec = pvc.as_ref().and_then(|p| p.spec.as_ref());
        let orig_request = spec
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone());
        let request = match &orig_request {
            Some(q) if virtguard_api::quantity::bytes(q).is_some_and(|b| b >= ve.size) => q.clone(),
            _ => ve.size.to_string(),
        };
        let storage_class = spec
            .and_then(|s| s.storage_class_name.as_deref())
            .map(|sc| {
                req.storage_class_map
                    .get(sc)
                    .cloned()
                    .unwrap_or_else(|| sc.to_string())
            });
        let volume_mode = spec.and_then(|s| s.volume_mode.clone());
        let access_modes = spec
            .and_then(|s| s.access_modes.clone())
            .unwrap_or_else(|| vec!["ReadWriteOnce".to_string()]);
        volumes.push(VolumePlan {
            volume: ve.name.clone(),
            old_claim,
            claim,
            size: ve.size,
            request,
            storage_class,
            volume_mode,
            access_modes,
        });
    }

    rewrite::point_disks_at(&mut vm, &volumes, req.method);
    rewrite::set_run_strategy(&mut vm, req.start);
    // Network identity.
    if req.mode == Mode::Copy {
        rewrite::new_identity(&mut vm, &old_vm, &name);
    }

    let networks = vm
        .template_spec()
        .and_then(|s| s.networks.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|n| n.multus.as_ref()?.network_name.clone())
        .collect();
    let mut storage_classes: Vec<String> = volumes
        .iter()
        .filter_map(|v| v.storage_class.clone())
        .collect();
    storage_classes.sort();
    storage_classes.dedup();
    let snapshot_classes = m
        .labels
        .get(crate::engine::backup::SNAPSHOT_CLASSES_LABEL)
        .map(|l| {
            l.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let group_snapshot_class = m
        .labels
        .get(crate::engine::backup::GROUP_SNAPSHOT_CLASS_LABEL)
        .filter(|c| !c.is_empty())
        .cloned();
    Ok(Plan {
        source,
        namespace,
        name,
        mode: req.mode,
        method: req.method,
        restore_id: restore_id.to_string(),
        vm,
        volumes,
        storage_classes,
        networks,
        snapshot_classes,
        group_snapshot_class,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::restore::objects::{objects_to_create, JOB_DEVICE_PATH};
    use crate::engine::restore::rewrite::is_fixed_ip_annotation;
    use crate::engine::restore::{Method, RESTORED_FROM};
    use crate::repo::format::{BackupId, Consistency, VolumeEntry};
    use serde_json::json;
    use std::time::Duration;

    fn manifest() -> Manifest {
        let vol = |name: &str, size: u64| VolumeEntry {
            name: name.into(),
            size,
            chunk_size: 1 << 20,
            chunks: 1,
            zero_chunks: 0,
            new_chunks: 0,
            bytes_read: 0,
            bytes_new: 0,
            bytes_stored: 0,
            index_digest: String::new(),
            image_digest: String::new(),
        };
        Manifest {
            format_version: 1,
            id: "20261121T233302Z-3f9a".parse::<BackupId>().unwrap(),
            namespace: "prod".into(),
            vm: "db".into(),
            started: chrono::Utc::now(),
            finished: chrono::Utc::now(),
            consistency: Consistency::CrashConsistent,
            parent: None,
            volumes: vec![vol("root", 6 << 20), vol("data", 3 << 20)],
            resources: None,
            tool_version: "0".into(),
            labels: Default::default(),
        }
    }

    fn objects() -> BackupObjects {
        let vm = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "db", "namespace": "prod", "uid": "u1", "resourceVersion": "9",
                "generation": 3, "creationTimestamp": "2026-01-01T00:00:00Z", "managedFields": [{}],
                "finalizers": ["kubevirt.io/virtualMachineControllerFinalize"],
                "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "gone", "uid": "u0"}],
                "annotations": {"ipam.spidernet.io/ippool": "{\"ipv4\":[\"p\"]}", "keep.me/x": "1"},
                "labels": {"app": "db"}},
            "spec": {
                "running": true,
                "dataVolumeTemplates": [{"metadata": {"name": "db-data"}, "spec": {"source": {"http": {"url": "http://x"}}, "storage": {}}},
                                        {"metadata": {"name": "other"}, "spec": {}}],
                "template": {
                    "metadata": {"labels": {"kubevirt.io/domain": "db"},
                                 "annotations": {"ipam.spidernet.io/ippools": "x", "cni.projectcalico.org/ipAddrs": "[\"10.0.0.5\"]", "other": "y"}},
                    "spec": {
                        "domain": {"firmware": {"uuid": "11111111-2222-3333-4444-555555555555"},
                                   "devices": {"interfaces": [{"name": "default", "masquerade": {}, "macAddress": "02:00:00:00:00:01"}]},
                                   "unknownField": {"kept": true}},
                        "networks": [{"name": "default", "pod": {}}, {"name": "br", "multus": {"networkName": "br-data"}}],
                        "volumes": [
                            {"name": "root", "persistentVolumeClaim": {"claimName": "db-root"}},
                            {"name": "data", "dataVolume": {"name": "db-data"}},
                            {"name": "ci", "cloudInitNoCloud": {"userData": "x"}}
                        ]
                    }
                }
            },
            "status": {"printableStatus": "Running"}
        });
        let pvc = |size: &str, sc: &str| json!({"spec": {"resources": {"requests": {"storage": size}}, "storageClassName": sc, "accessModes": ["ReadWriteMany"], "volumeMode": "Block"}});
        BackupObjects {
            vm,
            pvcs: BTreeMap::from([
                ("db-root".to_string(), pvc("6Mi", "fast")),
                ("db-data".to_string(), pvc("1Mi", "slow")),
            ]),
        }
    }

    fn request(mode: Mode) -> RestoreRequest {
        RestoreRequest {
            target_namespace: Some("dr".into()),
            name: Some("db2".into()),
            storage_class_map: BTreeMap::from([("fast".to_string(), "ssd".to_string())]),
            mode,
            method: Method::CdiUpload,
            start: false,
            force: false,
            keep_partial: false,
            timeout: Duration::from_secs(1),
            wait: false,
            concurrency: 4,
            job_image: "virtguard".into(),
            job_env: vec![],
            upload_proxy_url: None,
            upload_proxy_ca: None,
        }
    }

    #[test]
    fn copy_gets_a_new_identity_and_renamed_disks() {
        let p = plan(&manifest(), &objects(), &request(Mode::Copy), "r1").unwrap();
        // The VM as it goes to the API server.
        let vm = &serde_json::to_value(&p.vm).unwrap();
        assert_eq!(vm["metadata"]["name"], "db2");
        assert_eq!(vm["metadata"]["namespace"], "dr");
        for k in [
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
            "finalizers",
            "ownerReferences",
        ] {
            assert!(vm["metadata"].get(k).is_none(), "{k} kept");
        }
        assert!(vm.get("status").is_none());
        assert_eq!(vm["spec"]["runStrategy"], "Halted");
        assert!(vm["spec"].get("running").is_none());
        let ifc = &vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0];
        assert!(ifc.get("macAddress").is_none());
        assert_eq!(ifc["masquerade"], json!({}));
        let uuid = vm["spec"]["template"]["spec"]["domain"]["firmware"]["uuid"]
            .as_str()
            .unwrap();
        assert_ne!(uuid, "11111111-2222-3333-4444-555555555555");
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "4");
        assert_eq!(
            vm["metadata"]["annotations"],
            json!({"keep.me/x": "1", RESTORED_FROM: "prod/db/20261121T233302Z-3f9a"})
        );
        assert_eq!(
            vm["spec"]["template"]["metadata"]["annotations"],
            json!({"other": "y"})
        );
        assert_eq!(
            vm["spec"]["template"]["metadata"]["labels"]["kubevirt.io/domain"],
            "db2"
        );
        assert_eq!(
            vm["spec"]["template"]["spec"]["domain"]["unknownField"],
            json!({"kept": true})
        );
        let vols = &vm["spec"]["template"]["spec"]["volumes"];
        assert_eq!(vols[0]["persistentVolumeClaim"]["claimName"], "db2-root");
        assert_eq!(vols[1]["dataVolume"]["name"], "db2-data");
        assert_eq!(vols[2]["cloudInitNoCloud"]["userData"], "x");
        let t = &vm["spec"]["dataVolumeTemplates"];
        assert_eq!(t[0]["metadata"]["name"], "db2-data");
        assert_eq!(t[0]["spec"]["source"], json!({"upload": {}}));
        assert_eq!(t[1]["metadata"]["name"], "other");
        assert_eq!(p.volumes[0].claim, "db2-root");
        assert_eq!(p.volumes[0].storage_class.as_deref(), Some("ssd"));
        assert_eq!(p.volumes[0].request, "6Mi");
        // The original request was smaller than the image: sized to the image.
        assert_eq!(p.volumes[1].request, (3u64 << 20).to_string());
        assert_eq!(p.volumes[1].storage_class.as_deref(), Some("slow"));
        assert_eq!(p.volumes[1].volume_mode.as_deref(), Some("Block"));
        assert_eq!(p.networks, vec!["br-data".to_string()]);
        assert_eq!(
            p.storage_classes,
            vec!["slow".to_string(), "ssd".to_string()]
        );
    }

    #[test]
    fn in_place_keeps_identity() {
        let mut req = request(Mode::InPlace);
        req.target_namespace = None;
        req.name = None;
        req.start = true;
        let p = plan(&manifest(), &objects(), &req, "20261201t071500z-3f9a").unwrap();
        // The VM as it goes to the API server.
        let vm = &serde_json::to_value(&p.vm).unwrap();
        assert_eq!(vm["metadata"]["name"], "db");
        assert_eq!(vm["spec"]["runStrategy"], "Always");
        let spec = &vm["spec"]["template"]["spec"];
        assert_eq!(
            spec["domain"]["devices"]["interfaces"][0]["macAddress"],
            "02:00:00:00:00:01"
        );
        assert_eq!(
            spec["domain"]["firmware"]["uuid"],
            "11111111-2222-3333-4444-555555555555"
        );
        assert_eq!(
            vm["metadata"]["annotations"]["ipam.spidernet.io/ippool"],
            "{\"ipv4\":[\"p\"]}"
        );
        assert_eq!(
            vm["spec"]["template"]["metadata"]["annotations"]["cni.projectcalico.org/ipAddrs"],
            "[\"10.0.0.5\"]"
        );
        // The disks go into staged claims; the VM spec points at them.
        assert_eq!(
            spec["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "db-root-r3f9a"
        );
        assert_eq!(p.volumes[0].old_claim, "db-root");
        assert_eq!(p.volumes[1].claim, "db-data-r3f9a");
    }

    #[test]
    fn staged_claim_names() {
        let id = "20261201t071500z-3f9a";
        assert_eq!(staged_claim_name("db-root", id), "db-root-r3f9a");
        // An earlier restore's suffix is replaced, not stacked.
        assert_eq!(staged_claim_name("db-root-r1b2c", id), "db-root-r3f9a");
        // A name that merely ends in `-r` plus something else keeps it.
        assert_eq!(staged_claim_name("disk-rootfs", id), "disk-rootfs-r3f9a");
        assert_eq!(staged_claim_name("-r1b2c", id), "-r1b2c-r3f9a");
        // Long names are cut so that `cdi-upload-<name>` stays a DNS label.
        let long = "a".repeat(80);
        let n = staged_claim_name(&long, id);
        assert!(
            n.ends_with("-r3f9a") && "cdi-upload-".len() + n.len() <= 63,
            "{n}"
        );
    }

    #[test]
    fn job_method_uses_plain_pvcs() {
        let mut req = request(Mode::Copy);
        req.method = Method::Job;
        req.job_env = vec![
            ("VIRTGUARD_REPO".into(), "s3://b/p".into()),
            ("VIRTGUARD_KEY".into(), "secret!".into()),
        ];
        let p = plan(&manifest(), &objects(), &req, "r1").unwrap();
        // The VM as it goes to the API server.
        let vm = serde_json::to_value(&p.vm).unwrap();
        let vols = &vm["spec"]["template"]["spec"]["volumes"];
        assert_eq!(vols[1]["persistentVolumeClaim"]["claimName"], "db2-data");
        assert!(vols[1].get("dataVolume").is_none());
        assert_eq!(
            vm["spec"]["dataVolumeTemplates"].as_array().unwrap().len(),
            1
        );
        let objs = objects_to_create(&p, &req);
        let text = serde_json::to_string(&objs).unwrap();
        assert!(
            !text.contains("secret!"),
            "dry-run output must not show secret values"
        );
        let job = objs.iter().find(|o| o["kind"] == "Job").unwrap();
        let args = job["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        assert!(
            !args.contains("s3://"),
            "repository settings come from the Secret: {args}"
        );
        assert!(args.contains(JOB_DEVICE_PATH));
    }

    #[test]
    fn claim_names_and_fixed_ip_annotations() {
        assert_eq!(copy_claim_name("db-root", "db", "x"), "x-root");
        assert_eq!(copy_claim_name("dbroot", "db", "x"), "x-dbroot");
        assert_eq!(copy_claim_name("disk", "db", "db"), "disk");
        assert!(is_fixed_ip_annotation("ipam.spidernet.io/ippools"));
        assert!(!is_fixed_ip_annotation("ipam.spidernet.io"));
    }

    #[test]
    fn unknown_volume_is_refused() {
        let mut o = objects();
        o.vm["spec"]["template"]["spec"]["volumes"] = json!([]);
        let e = plan(&manifest(), &o, &request(Mode::Copy), "r").unwrap_err();
        assert!(e.to_string().contains("volume `root`"), "{e}");
    }
}
