//! KubeVirt objects (kubevirt.io/v1, snapshot.kubevirt.io/v1beta1, export.kubevirt.io/v1,
//! backup.kubevirt.io/v1alpha1), modelled from reference/kubevirt-openapi.json.
//!
//! Only the fields virtguard reads or writes are typed; everything else travels in `extra`.
//! Timestamps are kept as the RFC 3339 strings the API server sends, so a round trip preserves
//! them byte for byte.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::cdi::DataVolumeSpec;
use crate::refs::TypedLocalObjectReference;
use crate::{model, resource};

model! {
    /// A condition as KubeVirt reports it on VMs, VMIs and migrations.
    pub struct Condition {
        "type" => type_: String,
        /// "True", "False" or "Unknown".
        "status" => status: String,
        "reason" => reason: String,
        "message" => message: String,
        "lastTransitionTime" => last_transition_time: String,
        "lastProbeTime" => last_probe_time: String,
    }
}

// ---------------------------------------------------------------------------------------------
// VirtualMachine
// ---------------------------------------------------------------------------------------------

resource! {
    /// kubevirt.io/v1 VirtualMachine.
    pub struct VirtualMachine {
        group: "kubevirt.io", version: "v1", plural: "virtualmachines",
        scope: NamespaceResourceScope, schema: KubeVirt "v1.VirtualMachine",
        spec: VirtualMachineSpec, status: VirtualMachineStatus,
    }
}

model! {
    /// VirtualMachine spec.
    pub struct VirtualMachineSpec {
        /// Always, RerunOnFailure, Manual, Halted, Once, WaitAsReceiver.
        "runStrategy" => run_strategy: String,
        /// Deprecated boolean form of runStrategy.
        "running" => running: bool,
        "template" => template: VirtualMachineInstanceTemplateSpec,
        "dataVolumeTemplates" => data_volume_templates: Vec<DataVolumeTemplateSpec>,
        "instancetype" => instancetype: serde_json::Value,
        "preference" => preference: serde_json::Value,
    }
}

model! {
    /// A DataVolume the VM owns, created from this template.
    pub struct DataVolumeTemplateSpec {
        "metadata" => metadata: ObjectMeta,
        "spec" => spec: DataVolumeSpec,
    }
}

model! {
    /// VirtualMachine status.
    pub struct VirtualMachineStatus {
        "printableStatus" => printable_status: String,
        "created" => created: bool,
        "ready" => ready: bool,
        "runStrategy" => run_strategy: String,
        "conditions" => conditions: Vec<Condition>,
        "volumeSnapshotStatuses" => volume_snapshot_statuses: Vec<VmVolumeSnapshotStatus>,
    }
}

model! {
    /// Whether KubeVirt considers a VM volume snapshottable (KubeVirt's `v1.VolumeSnapshotStatus`;
    /// renamed here so it does not clash with the CSI VolumeSnapshot's status).
    pub struct VmVolumeSnapshotStatus {
        "name" => name: String,
        "enabled" => enabled: bool,
        "reason" => reason: String,
    }
}

model! {
    /// The VMI template inside a VM.
    pub struct VirtualMachineInstanceTemplateSpec {
        "metadata" => metadata: ObjectMeta,
        "spec" => spec: VirtualMachineInstanceSpec,
    }
}

// ---------------------------------------------------------------------------------------------
// VirtualMachineInstance
// ---------------------------------------------------------------------------------------------

resource! {
    /// kubevirt.io/v1 VirtualMachineInstance: a running (or scheduled) VM.
    pub struct VirtualMachineInstance {
        group: "kubevirt.io", version: "v1", plural: "virtualmachineinstances",
        scope: NamespaceResourceScope, schema: KubeVirt "v1.VirtualMachineInstance",
        spec: VirtualMachineInstanceSpec, status: VirtualMachineInstanceStatus,
    }
}

model! {
    /// VMI spec (also the VM template's spec).
    pub struct VirtualMachineInstanceSpec {
        "domain" => domain: DomainSpec,
        "volumes" => volumes: Vec<Volume>,
        "networks" => networks: Vec<Network>,
        "nodeSelector" => node_selector: BTreeMap<String, String>,
        "evictionStrategy" => eviction_strategy: String,
        "terminationGracePeriodSeconds" => termination_grace_period_seconds: i64,
    }
}

model! {
    /// The virtual hardware.
    pub struct DomainSpec {
        "devices" => devices: Devices,
        "firmware" => firmware: Firmware,
        "resources" => resources: serde_json::Value,
        "memory" => memory: serde_json::Value,
        "cpu" => cpu: serde_json::Value,
    }
}

model! {
    /// Firmware identity; `uuid` is regenerated when a VM is restored as a copy.
    pub struct Firmware {
        "uuid" => uuid: String,
        "serial" => serial: String,
        "bootloader" => bootloader: serde_json::Value,
    }
}

model! {
    /// Devices of the domain.
    pub struct Devices {
        "disks" => disks: Vec<Disk>,
        "interfaces" => interfaces: Vec<Interface>,
    }
}

model! {
    /// A disk device; `name` matches a volume.
    pub struct Disk {
        "name" => name: String,
        "disk" => disk: serde_json::Value,
        "cdrom" => cdrom: serde_json::Value,
        "lun" => lun: serde_json::Value,
        "bootOrder" => boot_order: i64,
        "serial" => serial: String,
    }
}

model! {
    /// A network interface; `name` matches a network. `macAddress` is cleared on copy-restore.
    pub struct Interface {
        "name" => name: String,
        "macAddress" => mac_address: String,
        "model" => model: String,
        "masquerade" => masquerade: serde_json::Value,
        "bridge" => bridge: serde_json::Value,
        "sriov" => sriov: serde_json::Value,
    }
}

model! {
    /// A network: the pod network or a Multus NetworkAttachmentDefinition.
    pub struct Network {
        "name" => name: String,
        "pod" => pod: serde_json::Value,
        "multus" => multus: MultusNetwork,
    }
}

model! {
    /// Multus network reference: `networkName` is `<nad>` or `<namespace>/<nad>`.
    pub struct MultusNetwork {
        "networkName" => network_name: String,
        "default" => default: bool,
    }
}

model! {
    /// A volume source. Exactly one source field is set.
    pub struct Volume {
        "name" => name: String,
        "persistentVolumeClaim" => persistent_volume_claim: PersistentVolumeClaimVolumeSource,
        "dataVolume" => data_volume: DataVolumeSource,
        "containerDisk" => container_disk: serde_json::Value,
        "cloudInitNoCloud" => cloud_init_no_cloud: serde_json::Value,
        "cloudInitConfigDrive" => cloud_init_config_drive: serde_json::Value,
        "emptyDisk" => empty_disk: serde_json::Value,
        "ephemeral" => ephemeral: serde_json::Value,
        "hostDisk" => host_disk: serde_json::Value,
        "configMap" => config_map: serde_json::Value,
        "secret" => secret: serde_json::Value,
        "serviceAccount" => service_account: serde_json::Value,
        "sysprep" => sysprep: serde_json::Value,
        "downwardAPI" => downward_api: serde_json::Value,
        "downwardMetrics" => downward_metrics: serde_json::Value,
        "memoryDump" => memory_dump: serde_json::Value,
    }
}

model! {
    /// A PVC-backed volume.
    pub struct PersistentVolumeClaimVolumeSource {
        "claimName" => claim_name: String,
        "readOnly" => read_only: bool,
        "hotpluggable" => hotpluggable: bool,
    }
}

model! {
    /// A DataVolume-backed volume (the PVC has the DataVolume's name).
    pub struct DataVolumeSource {
        "name" => name: String,
        "hotpluggable" => hotpluggable: bool,
    }
}

model! {
    /// VMI status.
    pub struct VirtualMachineInstanceStatus {
        /// Pending, Scheduling, Scheduled, Running, Succeeded, Failed, Unknown.
        "phase" => phase: String,
        "nodeName" => node_name: String,
        "reason" => reason: String,
        /// Includes `AgentConnected`, `Ready`, `LiveMigratable`, `Paused`.
        "conditions" => conditions: Vec<Condition>,
        /// "frozen" while the guest's filesystems are frozen; absent otherwise.
        "fsFreezeStatus" => fs_freeze_status: String,
        "volumeStatus" => volume_status: Vec<VolumeStatus>,
        "migrationState" => migration_state: VirtualMachineInstanceMigrationState,
        "interfaces" => interfaces: Vec<VirtualMachineInstanceNetworkInterface>,
        "phaseTransitionTimestamps" => phase_transition_timestamps: Vec<PhaseTransitionTimestamp>,
        "guestOSInfo" => guest_os_info: serde_json::Value,
    }
}

model! {
    /// Per-volume status of a VMI.
    pub struct VolumeStatus {
        "name" => name: String,
        "target" => target: String,
        "phase" => phase: String,
        "reason" => reason: String,
        "message" => message: String,
        "size" => size: i64,
        "persistentVolumeClaimInfo" => persistent_volume_claim_info: PersistentVolumeClaimInfo,
        "hotplugVolume" => hotplug_volume: serde_json::Value,
    }
}

model! {
    /// What KubeVirt knows of a volume's claim.
    pub struct PersistentVolumeClaimInfo {
        "claimName" => claim_name: String,
        "accessModes" => access_modes: Vec<String>,
        "volumeMode" => volume_mode: String,
        "capacity" => capacity: BTreeMap<String, Quantity>,
        "requests" => requests: BTreeMap<String, Quantity>,
    }
}

model! {
    /// A NIC as reported by the VMI (from the domain and the guest agent).
    pub struct VirtualMachineInstanceNetworkInterface {
        "name" => name: String,
        "mac" => mac: String,
        "ipAddress" => ip_address: String,
        "ipAddresses" => ip_addresses: Vec<String>,
        "interfaceName" => interface_name: String,
        "infoSource" => info_source: String,
        "queueCount" => queue_count: i64,
    }
}

model! {
    /// When a VMI or migration entered a phase.
    pub struct PhaseTransitionTimestamp {
        "phase" => phase: String,
        "phaseTransitionTimestamp" => phase_transition_timestamp: String,
    }
}

model! {
    /// Live-migration state on the VMI (and on the migration object).
    pub struct VirtualMachineInstanceMigrationState {
        "migrationUid" => migration_uid: String,
        "startTimestamp" => start_timestamp: String,
        "endTimestamp" => end_timestamp: String,
        "completed" => completed: bool,
        "failed" => failed: bool,
        "abortStatus" => abort_status: String,
        "mode" => mode: String,
        "sourceNode" => source_node: String,
        "targetNode" => target_node: String,
        "targetPod" => target_pod: String,
    }
}

// ---------------------------------------------------------------------------------------------
// Freeze, migrations, snapshots, exports, backups
// ---------------------------------------------------------------------------------------------

model! {
    /// Body of `PUT .../virtualmachineinstances/{name}/freeze`: the guest is thawed by KubeVirt
    /// when `unfreezeTimeout` (a Go duration such as "5m0s") expires — our safety net.
    pub struct FreezeUnfreezeTimeout {
        "unfreezeTimeout" => unfreeze_timeout: String,
    }
}

model! {
    /// Answer of `GET .../virtualmachineinstances/{name}/filesystemlist`: the guest's mounted
    /// filesystems, from the guest agent.
    pub struct VirtualMachineInstanceFileSystemList {
        "items" => items: Vec<VirtualMachineInstanceFileSystem>,
    }
}

model! {
    /// One mounted guest filesystem.
    pub struct VirtualMachineInstanceFileSystem {
        "diskName" => disk_name: String,
        "mountPoint" => mount_point: String,
        "fileSystemType" => file_system_type: String,
        "usedBytes" => used_bytes: i64,
        "totalBytes" => total_bytes: i64,
    }
}

model! {
    /// Answer of `GET .../virtualmachineinstances/{name}/guestosinfo`.
    pub struct VirtualMachineInstanceGuestAgentInfo {
        "guestAgentVersion" => guest_agent_version: String,
        "hostname" => hostname: String,
        "os" => os: VirtualMachineInstanceGuestOSInfo,
    }
}

model! {
    /// The guest OS as its agent reports it.
    pub struct VirtualMachineInstanceGuestOSInfo {
        "id" => id: String,
        "name" => name: String,
        "prettyName" => pretty_name: String,
        "version" => version: String,
        "kernelRelease" => kernel_release: String,
    }
}

resource! {
    /// kubevirt.io/v1 VirtualMachineInstanceMigration.
    pub struct VirtualMachineInstanceMigration {
        group: "kubevirt.io", version: "v1", plural: "virtualmachineinstancemigrations",
        scope: NamespaceResourceScope, schema: KubeVirt "v1.VirtualMachineInstanceMigration",
        spec: VirtualMachineInstanceMigrationSpec, status: VirtualMachineInstanceMigrationStatus,
    }
}

model! {
    /// Migration spec.
    pub struct VirtualMachineInstanceMigrationSpec {
        "vmiName" => vmi_name: String,
    }
}

model! {
    /// Migration status.
    pub struct VirtualMachineInstanceMigrationStatus {
        /// Pending, Scheduling, Scheduled, PreparingTarget, TargetReady, Running, Succeeded, Failed.
        "phase" => phase: String,
        "phaseTransitionTimestamps" => phase_transition_timestamps: Vec<PhaseTransitionTimestamp>,
        "migrationState" => migration_state: VirtualMachineInstanceMigrationState,
        "conditions" => conditions: Vec<Condition>,
    }
}

resource! {
    /// snapshot.kubevirt.io/v1beta1 VirtualMachineSnapshot.
    pub struct VirtualMachineSnapshot {
        group: "snapshot.kubevirt.io", version: "v1beta1", plural: "virtualmachinesnapshots",
        scope: NamespaceResourceScope, schema: KubeVirt "v1beta1.VirtualMachineSnapshot",
        spec: VirtualMachineSnapshotSpec, status: VirtualMachineSnapshotStatus,
    }
}

model! {
    /// VM snapshot spec.
    pub struct VirtualMachineSnapshotSpec {
        "source" => source: TypedLocalObjectReference,
        "deletionPolicy" => deletion_policy: String,
        "failureDeadline" => failure_deadline: String,
    }
}

model! {
    /// VM snapshot status.
    pub struct VirtualMachineSnapshotStatus {
        "phase" => phase: String,
        "readyToUse" => ready_to_use: bool,
        "creationTime" => creation_time: String,
        "sourceUID" => source_uid: String,
        "virtualMachineSnapshotContentName" => content_name: String,
        "indications" => indications: Vec<String>,
        "conditions" => conditions: Vec<Condition>,
        "error" => error: SnapshotError,
    }
}

model! {
    /// A snapshot error (KubeVirt and CSI use the same shape).
    pub struct SnapshotError {
        "message" => message: String,
        "time" => time: String,
    }
}

resource! {
    /// export.kubevirt.io/v1 VirtualMachineExport: serves a VM's or PVC's volumes over HTTPS.
    pub struct VirtualMachineExport {
        group: "export.kubevirt.io", version: "v1", plural: "virtualmachineexports",
        scope: NamespaceResourceScope, schema: KubeVirt "v1.VirtualMachineExport",
        spec: VirtualMachineExportSpec, status: VirtualMachineExportStatus,
    }
}

model! {
    /// Export spec.
    pub struct VirtualMachineExportSpec {
        /// A PersistentVolumeClaim, VirtualMachine or VirtualMachineSnapshot (required).
        "source" => source: TypedLocalObjectReference,
        /// Secret holding the token under key `token`.
        "tokenSecretRef" => token_secret_ref: String,
        "ttlDuration" => ttl_duration: String,
    }
}

model! {
    /// Export status.
    pub struct VirtualMachineExportStatus {
        /// Pending, Ready, Terminated, Skipped.
        "phase" => phase: String,
        "links" => links: VirtualMachineExportLinks,
        "tokenSecretRef" => token_secret_ref: String,
        "serviceName" => service_name: String,
        "ttlExpirationTime" => ttl_expiration_time: String,
        "virtualMachineName" => virtual_machine_name: String,
        "conditions" => conditions: Vec<Condition>,
    }
}

model! {
    /// In-cluster and external links.
    pub struct VirtualMachineExportLinks {
        "internal" => internal: VirtualMachineExportLink,
        "external" => external: VirtualMachineExportLink,
    }
}

model! {
    /// One set of export URLs and the CA certificate that signs the server.
    pub struct VirtualMachineExportLink {
        /// PEM CA certificate of the export server (required).
        "cert" => cert: String,
        "volumes" => volumes: Vec<VirtualMachineExportVolume>,
        "manifests" => manifests: Vec<VirtualMachineExportManifest>,
        "backups" => backups: Vec<VirtualMachineExportBackup>,
    }
}

model! {
    /// An exported volume.
    pub struct VirtualMachineExportVolume {
        "name" => name: String,
        "formats" => formats: Vec<VirtualMachineExportVolumeFormat>,
    }
}

model! {
    /// One format of an exported volume: `raw` (disk.img), `gzip` (disk.img.gz), `dir`, `tar.gz`.
    pub struct VirtualMachineExportVolumeFormat {
        "format" => format: String,
        "url" => url: String,
    }
}

model! {
    /// A manifest URL: type `all` or `auth-header-secret`.
    pub struct VirtualMachineExportManifest {
        "type" => type_: String,
        "url" => url: String,
    }
}

model! {
    /// Backup (changed-block) endpoints of an export.
    pub struct VirtualMachineExportBackup {
        "name" => name: String,
        "endpoints" => endpoints: Vec<VirtualMachineExportBackupEndpoint>,
    }
}

model! {
    /// A backup endpoint: `map` or `data`.
    pub struct VirtualMachineExportBackupEndpoint {
        "endpoint" => endpoint: String,
        "url" => url: String,
    }
}

resource! {
    /// backup.kubevirt.io/v1alpha1 VirtualMachineBackup: KubeVirt's changed-block-tracking backup.
    pub struct VirtualMachineBackup {
        group: "backup.kubevirt.io", version: "v1alpha1", plural: "virtualmachinebackups",
        scope: NamespaceResourceScope, schema: KubeVirt "v1alpha1.VirtualMachineBackup",
        spec: VirtualMachineBackupSpec, status: VirtualMachineBackupStatus,
    }
}

model! {
    /// Backup spec.
    pub struct VirtualMachineBackupSpec {
        "source" => source: TypedLocalObjectReference,
        /// "Push" or "Pull".
        "mode" => mode: String,
        "pvcName" => pvc_name: String,
        "skipQuiesce" => skip_quiesce: bool,
        "forceFullBackup" => force_full_backup: bool,
        "tokenSecretRef" => token_secret_ref: String,
        "ttlDuration" => ttl_duration: String,
    }
}

model! {
    /// Backup status.
    pub struct VirtualMachineBackupStatus {
        /// "Full" or "Incremental".
        "type" => type_: String,
        "checkpointName" => checkpoint_name: String,
        "endpointCert" => endpoint_cert: String,
        "exportUID" => export_uid: String,
        "includedVolumes" => included_volumes: Vec<BackupVolumeInfo>,
        "conditions" => conditions: Vec<Condition>,
    }
}

model! {
    /// Per-volume pull endpoints: `mapEndpoint` lists changed extents, `dataEndpoint` serves them.
    pub struct BackupVolumeInfo {
        "volumeName" => volume_name: String,
        "mapEndpoint" => map_endpoint: String,
        "dataEndpoint" => data_endpoint: String,
    }
}

impl VirtualMachine {
    /// The spec of the VMI template (`spec.template.spec`), if the VM has one.
    pub fn template_spec(&self) -> Option<&VirtualMachineInstanceSpec> {
        self.spec.as_ref()?.template.as_ref()?.spec.as_ref()
    }

    /// [`Self::template_spec`], to change it.
    pub fn template_spec_mut(&mut self) -> Option<&mut VirtualMachineInstanceSpec> {
        self.spec.as_mut()?.template.as_mut()?.spec.as_mut()
    }
}

impl Volume {
    /// The claim behind a PVC volume (`persistentVolumeClaim.claimName`) or a DataVolume volume
    /// (`dataVolume.name`: the DataVolume's PVC has its name); None for other sources.
    pub fn claim_name(&self) -> Option<&str> {
        let pvc = self.persistent_volume_claim.as_ref();
        let dv = self.data_volume.as_ref();
        pvc.and_then(|p| p.claim_name.as_deref())
            .or_else(|| dv.and_then(|d| d.name.as_deref()))
    }
}

impl VirtualMachineInstance {
    /// The status of condition `type_` ("True"/"False"/"Unknown"), if reported.
    pub fn condition(&self, type_: &str) -> Option<&str> {
        self.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_.as_deref() == Some(type_))?
            .status
            .as_deref()
    }

    /// True when the guest agent is connected (condition `AgentConnected` is "True").
    pub fn agent_connected(&self) -> bool {
        self.condition("AgentConnected") == Some("True")
    }

    /// The VMI phase, or "" when not reported.
    pub fn phase(&self) -> &str {
        self.status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("")
    }

    /// True in phase `Running` (also while paused: KubeVirt keeps the phase and adds a
    /// condition, see [`Self::paused`]).
    pub fn is_running(&self) -> bool {
        self.phase() == "Running"
    }

    /// True when the VMI is paused (condition `Paused` is "True", set by `virtctl pause`).
    pub fn paused(&self) -> bool {
        self.condition("Paused") == Some("True")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_names_its_pvc_or_its_datavolume() {
        let v: Volume = serde_json::from_value(serde_json::json!(
            {"name": "root", "persistentVolumeClaim": {"claimName": "db-root"}}
        ))
        .unwrap();
        assert_eq!(v.claim_name(), Some("db-root"));
        let v: Volume = serde_json::from_value(serde_json::json!(
            {"name": "data", "dataVolume": {"name": "db-data"}}
        ))
        .unwrap();
        assert_eq!(v.claim_name(), Some("db-data"));
        let v: Volume = serde_json::from_value(serde_json::json!(
            {"name": "ci", "cloudInitNoCloud": {"userData": "x"}}
        ))
        .unwrap();
        assert_eq!(v.claim_name(), None);
    }

    #[test]
    fn template_spec_is_spec_template_spec() {
        let mut vm: VirtualMachine = serde_json::from_value(serde_json::json!(
            {"spec": {"template": {"spec": {"volumes": [{"name": "root"}]}}}}
        ))
        .unwrap();
        assert_eq!(
            vm.template_spec().unwrap().volumes.as_ref().unwrap().len(),
            1
        );
        vm.template_spec_mut().unwrap().volumes = None;
        assert_eq!(
            serde_json::to_value(&vm).unwrap()["spec"]["template"]["spec"],
            serde_json::json!({})
        );
        assert!(VirtualMachine::default().template_spec().is_none());
    }
}
