//! Reading snapshots through KubeVirt's VirtualMachineExport.
//!
//! A VolumeSnapshot cannot be read directly, so each one becomes a temporary PVC
//! (`dataSource: VolumeSnapshot`), and one VirtualMachineExport per PVC serves it over HTTPS.
//! The export is authenticated by a token we generate and store in a Secret we own
//! (`spec.tokenSecretRef`); clients send it in the `x-kubevirt-export-token` header and trust
//! the CA certificate from `status.links.internal.cert`. The raw image is the `raw` format URL
//! (`.../disk.img`), which supports HTTP Range requests.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, Secret, TypedLocalObjectReference,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::PostParams;
use kube::{Api, Client};
use virtguard_api::refs::TypedLocalObjectReference as KvRef;
use virtguard_api::{VirtualMachineExport, VirtualMachineExportSpec};

use super::{go_duration, ClusterError, Result};

/// The header KubeVirt's export server checks.
pub const TOKEN_HEADER: &str = "x-kubevirt-export-token";

/// Creates PVC `namespace/name` restored from VolumeSnapshot `snapshot`, sized `size`, with the
/// source claim's storage class, access modes and volume mode.
pub async fn pvc_from_snapshot(
    client: &Client,
    namespace: &str,
    name: &str,
    snapshot: &str,
    size: &Quantity,
    like: &PersistentVolumeClaimSpec,
    labels: &BTreeMap<String, String>,
) -> Result<PersistentVolumeClaim> {
    let pvc = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: like.access_modes.clone(),
            storage_class_name: like.storage_class_name.clone(),
            volume_mode: like.volume_mode.clone(),
            data_source: Some(TypedLocalObjectReference {
                api_group: Some("snapshot.storage.k8s.io".into()),
                kind: "VolumeSnapshot".into(),
                name: snapshot.to_string(),
            }),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), size.clone())])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pvc)
        .await
        .map_err(ClusterError::api(
            "creating",
            "PersistentVolumeClaim",
            format!("{namespace}/{name}"),
        ))
}

/// A fresh random export token (hex, 256 bits).
pub fn new_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Creates Secret `namespace/name` holding `token` under key `token`.
pub async fn create_token_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    token: &str,
    labels: &BTreeMap<String, String>,
) -> Result<()> {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "token".to_string(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .map(|_| ())
        .map_err(ClusterError::api(
            "creating",
            "Secret",
            format!("{namespace}/{name}"),
        ))
}

/// Creates VirtualMachineExport `namespace/name` of PVC `pvc`, authenticated by `token_secret`.
pub async fn create_export(
    client: &Client,
    namespace: &str,
    name: &str,
    pvc: &str,
    token_secret: &str,
    ttl: Duration,
    labels: &BTreeMap<String, String>,
) -> Result<VirtualMachineExport> {
    let mut export = VirtualMachineExport::new(
        name,
        Some(namespace),
        VirtualMachineExportSpec {
            source: Some(KvRef {
                api_group: Some(String::new()),
                kind: Some("PersistentVolumeClaim".into()),
                name: Some(pvc.to_string()),
                ..Default::default()
            }),
            token_secret_ref: Some(token_secret.to_string()),
            ttl_duration: Some(go_duration(ttl)),
            ..Default::default()
        },
    );
    export.metadata.labels = Some(labels.clone());
    Api::<VirtualMachineExport>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &export)
        .await
        .map_err(ClusterError::api(
            "creating",
            "VirtualMachineExport",
            format!("{namespace}/{name}"),
        ))
}

/// What a Ready export offers for one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedVolume {
    /// Volume name as the export lists it.
    pub name: String,
    /// URL of the raw image (`format: raw`).
    pub raw_url: String,
}

/// What a Ready export offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportLinks {
    /// PEM CA certificate of the export server.
    pub ca_pem: String,
    /// Exported volumes.
    pub volumes: Vec<ExportedVolume>,
}

/// Extracts the internal links of a Ready export.
pub fn links_of(export: &VirtualMachineExport) -> Result<ExportLinks> {
    let object = format!(
        "{}/{}",
        export.metadata.namespace.as_deref().unwrap_or_default(),
        export.metadata.name.as_deref().unwrap_or_default()
    );
    let fail = |message: &str| ClusterError::Export {
        object: object.clone(),
        message: message.to_string(),
    };
    let internal = export
        .status
        .as_ref()
        .and_then(|s| s.links.as_ref())
        .and_then(|l| l.internal.as_ref())
        .ok_or_else(|| fail("status.links.internal is missing"))?;
    let ca_pem = internal
        .cert
        .clone()
        .ok_or_else(|| fail("status.links.internal.cert is missing"))?;
    let volumes = internal
        .volumes
        .iter()
        .flatten()
        .map(|v| {
            let raw = v
                .formats
                .iter()
                .flatten()
                .find(|f| f.format.as_deref() == Some("raw"))
                .and_then(|f| f.url.clone())
                .ok_or_else(|| fail("a volume has no `raw` format URL"))?;
            Ok(ExportedVolume {
                name: v.name.clone().unwrap_or_default(),
                raw_url: raw,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if volumes.is_empty() {
        return Err(fail("status.links.internal.volumes is empty"));
    }
    Ok(ExportLinks { ca_pem, volumes })
}

/// Waits until export `namespace/name` is `Ready` and returns its links.
pub async fn wait_ready(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<ExportLinks> {
    let api = Api::<VirtualMachineExport>::namespaced(client.clone(), namespace);
    let cond = |e: Option<&VirtualMachineExport>| {
        e.and_then(|e| e.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            == Some("Ready")
    };
    let export = tokio::time::timeout(timeout, kube::runtime::wait::await_condition(api, name, cond))
        .await
        .map_err(|_| ClusterError::Timeout {
            what: format!("VirtualMachineExport {namespace}/{name} to become Ready (is the KubeVirt export feature enabled? `kubectl get vmexport {name} -n {namespace} -o yaml`)"),
            waited: timeout,
        })?
        .map_err(|e| ClusterError::Export {
            object: format!("{namespace}/{name}"),
            message: format!("watch failed: {e}"),
        })?
        .ok_or_else(|| ClusterError::Export {
            object: format!("{namespace}/{name}"),
            message: "deleted while waiting".into(),
        })?;
    links_of(&export)
}
