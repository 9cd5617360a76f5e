//! Cluster mode (Deployment): state read from the Kubernetes API through reflectors.
//!
//! Status: only the backup-status format and its rendering exist so far
//! ([`backup_status`]); the reflectors (VMIM, VMI, VirtualMachineSnapshot, restored PVCs,
//! status ConfigMaps) are not implemented yet.

pub mod backup_status;
