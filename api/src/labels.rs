//! Labels and annotations virtguard puts on (or reads from) cluster objects. They are a contract
//! between the backup engine, `virtguard cleanup`, the exporter and users' selectors: never rename.

/// On every object a backup run creates (snapshots, temporary PVCs, exports, Jobs, Leases): the
/// backup id. `virtguard cleanup` deletes only objects carrying it.
pub const BACKUP_ID: &str = "virtguard.io/backup-id";
/// On a VM's own PVCs while a run takes one VolumeGroupSnapshot of them: the backup id (the
/// group's `spec.source.selector` matches it). Deliberately not [`BACKUP_ID`]: `virtguard
/// cleanup` deletes what carries that, and must only ever remove this label from a user's PVC.
pub const GROUP_SNAPSHOT: &str = "virtguard.io/group-snapshot";
/// Standard managed-by label on everything virtguard creates.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY`].
pub const MANAGED_BY_VALUE: &str = "virtguard";
/// On a VM: `"false"` opts the VM out of every backup selection.
pub const BACKUP_OPT_OUT: &str = "virtguard.io/backup";
/// On a VirtualMachine or a Namespace: the retention policy `prune --policy` applies to its
/// backups, e.g. `last=3,daily=7,weekly=4,monthly=6`.
pub const RETENTION: &str = "virtguard.io/retention";
/// On the per-namespace backup status ConfigMap: `"true"` (the exporter watches these).
pub const STATUS: &str = "virtguard.io/status";
/// Name of the per-namespace backup status ConfigMap.
pub const STATUS_CONFIGMAP: &str = "virtguard-status";
/// Name of the repository maintenance status ConfigMap (in the namespace `virtguard maintain`
/// runs in, labelled [`STATUS`]`=true` too; its keys are repository ids, not VM names).
pub const MAINTENANCE_STATUS_CONFIGMAP: &str = "virtguard-maintenance-status";
/// Name of the per-namespace restore drill status ConfigMap (in the *source* VM's namespace,
/// labelled [`STATUS`]`=true`; key = source VM name, value = JSON of
/// [`DrillStatusRecord`](crate::status::DrillStatusRecord)).
pub const DRILL_STATUS_CONFIGMAP: &str = "virtguard-drill-status";
/// Name of the per-namespace restore status ConfigMap (in the namespace of the VM a restore
/// wrote, labelled [`STATUS`]`=true`; key = that VM's name, value = JSON of
/// [`RestoreStatusRecord`](crate::status::RestoreStatusRecord)).
pub const RESTORE_STATUS_CONFIGMAP: &str = "virtguard-restore-status";
/// On every object a restore drill creates in its sandbox namespace: the drill's id. Cleanup
/// after a killed drill deletes only objects carrying it.
pub const DRILL_ID: &str = "virtguard.io/drill-id";
/// On a drill's sandbox copy: the source VM as `namespace/name`.
pub const DRILL_SOURCE: &str = "virtguard.io/drill-source";
/// KubeVirt's label on PVCs restored from a VM snapshot (the source VM's name).
pub const RESTORE_SOURCE_VM_NAME: &str = "restore.kubevirt.io/source-vm-name";
/// KubeVirt's label on PVCs restored from a VM snapshot (the source VM's namespace).
pub const RESTORE_SOURCE_VM_NAMESPACE: &str = "restore.kubevirt.io/source-vm-namespace";

/// KubeVirt's label on a scheduled VMI naming its node (virt-controller keeps it equal to
/// `status.nodeName`; node agents such as virt-handler select their VMIs by it).
pub const VMI_NODE_NAME: &str = "kubevirt.io/nodeName";
/// The well-known node label; a VM's `nodeSelector` on it pins the VM to one node.
pub const HOSTNAME: &str = "kubernetes.io/hostname";
