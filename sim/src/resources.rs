//! The resource registry: every REST resource the simulated API server serves.
//!
//! One [`ResourceDef`] per resource (group + plural). Objects are stored once per resource,
//! whatever version a client used; a resource served at several versions (the CSI group
//! snapshot CRDs) returns objects with the `apiVersion` the client asked for, like a CRD with
//! the `None` conversion strategy. The list drives discovery, routing and validation.

/// How an object of a resource is validated on write (see `schema.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaSource {
    /// A core Kubernetes kind checked by deserializing into the k8s-openapi type.
    Core(CoreKind),
    /// A definition in kubevirt-openapi.json (`definitions.<name>`).
    KubeVirt(&'static str),
    /// A definition in cdi-openapi.json.
    Cdi(&'static str),
    /// A CSI snapshot CRD file in snapshot-crds/ (per-version openAPIV3Schema).
    SnapshotCrd(&'static str),
    /// No schema known: accepted as is (like a CRD with `x-kubernetes-preserve-unknown-fields`).
    None,
}

/// Core kinds checked through k8s-openapi types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreKind {
    Namespace,
    PersistentVolumeClaim,
    PersistentVolume,
    Secret,
    ConfigMap,
    Pod,
    Service,
    Event,
    Job,
    CronJob,
    StorageClass,
    Lease,
    NetworkPolicy,
    SelfSubjectAccessReview,
    SelfSubjectRulesReview,
}

/// One served resource.
#[derive(Debug, Clone)]
pub struct ResourceDef {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// Served versions, preferred (storage) first.
    pub versions: &'static [&'static str],
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub namespaced: bool,
    /// Has a `/status` subresource (status is ignored on main-resource writes).
    pub status: bool,
    /// Is a custom resource (strategic merge patch is refused with 415, like the real server).
    pub crd: bool,
    pub schema: SchemaSource,
}

impl ResourceDef {
    /// `v1` or `group/v1`.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    /// The preferred version.
    pub fn version(&self) -> &'static str {
        self.versions[0]
    }

    /// Discovery categories: `all` for what `kubectl get all` lists on a real cluster (the
    /// core workload kinds the sim serves, and the kinds KubeVirt's and CDI's CRDs put there).
    pub fn categories(&self) -> &'static [&'static str] {
        match (self.group, self.plural) {
            ("", "pods" | "services")
            | ("batch", "jobs" | "cronjobs")
            | ("kubevirt.io", "virtualmachines" | "virtualmachineinstances")
            | ("cdi.kubevirt.io", "datavolumes") => &["all"],
            _ => &[],
        }
    }

    /// A virtual resource: a request is answered and never stored (CDI's upload token
    /// requests, the authorization reviews), so `create` is its only verb.
    pub fn create_only(&self) -> bool {
        matches!(
            self.plural,
            "uploadtokenrequests" | "selfsubjectaccessreviews" | "selfsubjectrulesreviews"
        )
    }
}

macro_rules! res {
    ($g:expr, $v:expr, $kind:expr, $plural:expr, $singular:expr, $short:expr, ns=$ns:expr, status=$st:expr, crd=$crd:expr, $schema:expr) => {
        ResourceDef {
            group: $g,
            versions: $v,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            short_names: $short,
            namespaced: $ns,
            status: $st,
            crd: $crd,
            schema: $schema,
        }
    };
}

/// All served resources.
pub fn all() -> Vec<ResourceDef> {
    use CoreKind as C;
    use SchemaSource as S;
    vec![
        res!(
            "",
            &["v1"],
            "Namespace",
            "namespaces",
            "namespace",
            &["ns"],
            ns = false,
            status = true,
            crd = false,
            S::Core(C::Namespace)
        ),
        res!(
            "",
            &["v1"],
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            "persistentvolumeclaim",
            &["pvc"],
            ns = true,
            status = true,
            crd = false,
            S::Core(C::PersistentVolumeClaim)
        ),
        res!(
            "",
            &["v1"],
            "PersistentVolume",
            "persistentvolumes",
            "persistentvolume",
            &["pv"],
            ns = false,
            status = true,
            crd = false,
            S::Core(C::PersistentVolume)
        ),
        res!(
            "",
            &["v1"],
            "Secret",
            "secrets",
            "secret",
            &[],
            ns = true,
            status = false,
            crd = false,
            S::Core(C::Secret)
        ),
        res!(
            "",
            &["v1"],
            "ConfigMap",
            "configmaps",
            "configmap",
            &["cm"],
            ns = true,
            status = false,
            crd = false,
            S::Core(C::ConfigMap)
        ),
        res!(
            "",
            &["v1"],
            "Pod",
            "pods",
            "pod",
            &["po"],
            ns = true,
            status = true,
            crd = false,
            S::Core(C::Pod)
        ),
        res!(
            "",
            &["v1"],
            "Service",
            "services",
            "service",
            &["svc"],
            ns = true,
            status = true,
            crd = false,
            S::Core(C::Service)
        ),
        res!(
            "",
            &["v1"],
            "Event",
            "events",
            "event",
            &["ev"],
            ns = true,
            status = false,
            crd = false,
            S::Core(C::Event)
        ),
        res!(
            "batch",
            &["v1"],
            "Job",
            "jobs",
            "job",
            &[],
            ns = true,
            status = true,
            crd = false,
            S::Core(C::Job)
        ),
        res!(
            "batch",
            &["v1"],
            "CronJob",
            "cronjobs",
            "cronjob",
            &["cj"],
            ns = true,
            status = true,
            crd = false,
            S::Core(C::CronJob)
        ),
        res!(
            "storage.k8s.io",
            &["v1"],
            "StorageClass",
            "storageclasses",
            "storageclass",
            &["sc"],
            ns = false,
            status = false,
            crd = false,
            S::Core(C::StorageClass)
        ),
        res!(
            "coordination.k8s.io",
            &["v1"],
            "Lease",
            "leases",
            "lease",
            &[],
            ns = true,
            status = false,
            crd = false,
            S::Core(C::Lease)
        ),
        res!(
            "networking.k8s.io",
            &["v1"],
            "NetworkPolicy",
            "networkpolicies",
            "networkpolicy",
            &["netpol"],
            ns = true,
            status = false,
            crd = false,
            S::Core(C::NetworkPolicy)
        ),
        res!(
            "authorization.k8s.io",
            &["v1"],
            "SelfSubjectAccessReview",
            "selfsubjectaccessreviews",
            "selfsubjectaccessreview",
            &[],
            ns = false,
            status = false,
            crd = false,
            S::Core(C::SelfSubjectAccessReview)
        ),
        res!(
            "authorization.k8s.io",
            &["v1"],
            "SelfSubjectRulesReview",
            "selfsubjectrulesreviews",
            "selfsubjectrulesreview",
            &[],
            ns = false,
            status = false,
            crd = false,
            S::Core(C::SelfSubjectRulesReview)
        ),
        res!(
            "k8s.cni.cncf.io",
            &["v1"],
            "NetworkAttachmentDefinition",
            "network-attachment-definitions",
            "network-attachment-definition",
            &["net-attach-def"],
            ns = true,
            status = false,
            crd = true,
            S::None
        ),
        res!(
            "kubevirt.io",
            &["v1"],
            "VirtualMachine",
            "virtualmachines",
            "virtualmachine",
            &["vm", "vms"],
            ns = true,
            status = true,
            crd = true,
            S::KubeVirt("v1.VirtualMachine")
        ),
        res!(
            "kubevirt.io",
            &["v1"],
            "VirtualMachineInstance",
            "virtualmachineinstances",
            "virtualmachineinstance",
            &["vmi", "vmis"],
            ns = true,
            status = true,
            crd = true,
            S::KubeVirt("v1.VirtualMachineInstance")
        ),
        res!(
            "kubevirt.io",
            &["v1"],
            "VirtualMachineInstanceMigration",
            "virtualmachineinstancemigrations",
            "virtualmachineinstancemigration",
            &["vmim", "vmims"],
            ns = true,
            status = true,
            crd = true,
            S::KubeVirt("v1.VirtualMachineInstanceMigration")
        ),
        res!(
            "snapshot.kubevirt.io",
            &["v1beta1"],
            "VirtualMachineSnapshot",
            "virtualmachinesnapshots",
            "virtualmachinesnapshot",
            &["vmsnapshot"],
            ns = true,
            status = true,
            crd = true,
            S::KubeVirt("v1beta1.VirtualMachineSnapshot")
        ),
        res!(
            "snapshot.kubevirt.io",
            &["v1beta1"],
            "VirtualMachineSnapshotContent",
            "virtualmachinesnapshotcontents",
            "virtualmachinesnapshotcontent",
            &["vmsnapshotcontent"],
            ns = true,
            status = true,
            crd = true,
            S::KubeVirt("v1beta1.VirtualMachineSnapshotContent")
        ),
        res!(
            "snapshot.kubevirt.io",
            &["v1beta1"],
            "VirtualMachineRestore",
            "virtualmachinerestores",
            "virtualmachinerestore",
            &["vmrestore"],
            ns = true,
            status = true,
            crd = true,
            S::KubeVirt("v1beta1.VirtualMachineRestore")
        ),
        res!(
            "export.kubevirt.io",
            &["v1"],
            "VirtualMachineExport",
            "virtualmachineexports",
            "virtualmachineexport",
            &["vmexport", "vmexports"],
            ns = true,
            status = true,
            crd = true,
            S::KubeVirt("v1.VirtualMachineExport")
        ),
        res!(
            "backup.kubevirt.io",
            &["v1alpha1"],
            "VirtualMachineBackup",
            "virtualmachinebackups",
            "virtualmachinebackup",
            &["vmbackup"],
            ns = true,
            status = true,
            crd = true,
            S::KubeVirt("v1alpha1.VirtualMachineBackup")
        ),
        res!(
            "backup.kubevirt.io",
            &["v1alpha1"],
            "VirtualMachineBackupTracker",
            "virtualmachinebackuptrackers",
            "virtualmachinebackuptracker",
            &[],
            ns = true,
            status = true,
            crd = true,
            S::None
        ),
        res!(
            "cdi.kubevirt.io",
            &["v1beta1"],
            "DataVolume",
            "datavolumes",
            "datavolume",
            &["dv", "dvs"],
            ns = true,
            status = true,
            crd = true,
            S::Cdi("v1beta1.DataVolume")
        ),
        res!(
            "cdi.kubevirt.io",
            &["v1beta1"],
            "CDIConfig",
            "cdiconfigs",
            "cdiconfig",
            &[],
            ns = false,
            status = true,
            crd = true,
            S::Cdi("v1beta1.CDIConfig")
        ),
        res!(
            "upload.cdi.kubevirt.io",
            &["v1beta1"],
            "UploadTokenRequest",
            "uploadtokenrequests",
            "uploadtokenrequest",
            &[],
            ns = true,
            status = false,
            crd = false,
            S::Cdi("v1beta1.UploadTokenRequest")
        ),
        res!(
            "snapshot.storage.k8s.io",
            &["v1"],
            "VolumeSnapshot",
            "volumesnapshots",
            "volumesnapshot",
            &["vs"],
            ns = true,
            status = true,
            crd = true,
            S::SnapshotCrd("snapshot.storage.k8s.io_volumesnapshots.yaml")
        ),
        res!(
            "snapshot.storage.k8s.io",
            &["v1"],
            "VolumeSnapshotContent",
            "volumesnapshotcontents",
            "volumesnapshotcontent",
            &["vsc", "vscs"],
            ns = false,
            status = true,
            crd = true,
            S::SnapshotCrd("snapshot.storage.k8s.io_volumesnapshotcontents.yaml")
        ),
        res!(
            "snapshot.storage.k8s.io",
            &["v1"],
            "VolumeSnapshotClass",
            "volumesnapshotclasses",
            "volumesnapshotclass",
            &["vsclass", "vsclasses"],
            ns = false,
            status = false,
            crd = true,
            S::SnapshotCrd("snapshot.storage.k8s.io_volumesnapshotclasses.yaml")
        ),
        res!(
            "groupsnapshot.storage.k8s.io",
            &["v1beta2", "v1", "v1beta1"],
            "VolumeGroupSnapshot",
            "volumegroupsnapshots",
            "volumegroupsnapshot",
            &["vgs"],
            ns = true,
            status = true,
            crd = true,
            S::SnapshotCrd("groupsnapshot.storage.k8s.io_volumegroupsnapshots.yaml")
        ),
        res!(
            "groupsnapshot.storage.k8s.io",
            &["v1beta2", "v1", "v1beta1"],
            "VolumeGroupSnapshotContent",
            "volumegroupsnapshotcontents",
            "volumegroupsnapshotcontent",
            &["vgsc", "vgscs"],
            ns = false,
            status = true,
            crd = true,
            S::SnapshotCrd("groupsnapshot.storage.k8s.io_volumegroupsnapshotcontents.yaml")
        ),
        res!(
            "groupsnapshot.storage.k8s.io",
            &["v1beta2", "v1", "v1beta1"],
            "VolumeGroupSnapshotClass",
            "volumegroupsnapshotclasses",
            "volumegroupsnapshotclass",
            &["vgsclass", "vgsclasses"],
            ns = false,
            status = false,
            crd = true,
            S::SnapshotCrd("groupsnapshot.storage.k8s.io_volumegroupsnapshotclasses.yaml")
        ),
    ]
}

/// Resource ids are indexes into [`Registry::defs`].
pub type ResId = usize;

/// Lookup tables over [`all`].
#[derive(Debug)]
pub struct Registry {
    pub defs: Vec<ResourceDef>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry { defs: all() }
    }
}

impl Registry {
    /// Find a resource by group, version and plural.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<ResId> {
        self.defs
            .iter()
            .position(|d| d.group == group && d.plural == plural && d.versions.contains(&version))
    }

    /// Find a resource by group and plural (any version).
    pub fn by_plural(&self, group: &str, plural: &str) -> Option<ResId> {
        self.defs
            .iter()
            .position(|d| d.group == group && d.plural == plural)
    }

    /// Find by group and kind.
    pub fn by_kind(&self, group: &str, kind: &str) -> Option<ResId> {
        self.defs
            .iter()
            .position(|d| d.group == group && d.kind == kind)
    }

    pub fn def(&self, id: ResId) -> &ResourceDef {
        &self.defs[id]
    }

    /// Groups (non-core) in first-seen order with their versions.
    pub fn groups(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
        for d in &self.defs {
            if d.group.is_empty() {
                continue;
            }
            match out.iter_mut().find(|(g, _)| *g == d.group) {
                Some((_, vs)) => {
                    for v in d.versions {
                        if !vs.contains(v) {
                            vs.push(v);
                        }
                    }
                }
                None => out.push((d.group, d.versions.to_vec())),
            }
        }
        out
    }
}
