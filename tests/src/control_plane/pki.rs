//! Key material of one test control plane, written as files into its directory.
//!
//! A fresh CA per control plane; kube-apiserver's serving certificate signed by it for the names
//! a client may use (loopback, and the in-cluster `kubernetes.default.svc` names and service IP
//! a Pod would use); the service-account token signing key pair; and bearer tokens in a static
//! token file (`--token-auth-file`): the admin (group `system:masters`) and the
//! kube-controller-manager (user `system:kube-controller-manager`, bound by the API server's
//! bootstrap RBAC). Invariant: secrets only ever go to files in the control plane's private
//! directory (mode 0600), never to argv or logs; the files are gone with the directory.

use std::fmt::Write as _;
use std::fs;
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

use crate::PeerError;

/// The first address of the service range (`--service-cluster-ip-range`): the `kubernetes`
/// Service's cluster IP, which the serving certificate names.
pub const SERVICE_RANGE: &str = "10.96.0.0/16";
const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

/// Paths of the written files (`Debug` leaves the tokens out).
pub struct Pki {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub sa_public: PathBuf,
    pub sa_private: PathBuf,
    pub token_file: PathBuf,
    admin_token: String,
    controller_manager_token: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("ca_cert", &self.ca_cert)
            .field("token_file", &self.token_file)
            .field("tokens", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// Generates everything into `dir`.
    pub fn create(dir: &Path) -> Result<Self, PeerError> {
        let pki_err = |what: &str, e: rcgen::Error| PeerError::Io {
            what: format!("generating the control plane's {what}"),
            source: std::io::Error::other(e),
        };
        let ca_key = KeyPair::generate().map_err(|e| pki_err("CA key", e))?;
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name = name("virtguard-e2e kubernetes CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).map_err(|e| pki_err("CA", e))?;

        let serving_key = KeyPair::generate().map_err(|e| pki_err("serving key", e))?;
        let mut serving = CertificateParams::default();
        serving.distinguished_name = name("kube-apiserver");
        serving.subject_alt_names = vec![
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V4(KUBERNETES_SERVICE_IP)),
        ];
        for dns in [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ] {
            let dns = dns.try_into().map_err(|e| pki_err("serving names", e))?;
            serving.subject_alt_names.push(SanType::DnsName(dns));
        }
        let serving_cert = serving
            .signed_by(&serving_key, &ca_cert, &ca_key)
            .map_err(|e| pki_err("serving certificate", e))?;
        let sa_key = KeyPair::generate().map_err(|e| pki_err("service-account key", e))?;

        let admin_token = random_token()?;
        let controller_manager_token = random_token()?;
        let mut tokens = String::new();
        let _ = writeln!(
            tokens,
            "{admin_token},virtguard-admin,virtguard-admin,system:masters"
        );
        let _ = writeln!(
            tokens,
            "{controller_manager_token},system:kube-controller-manager,system:kube-controller-manager"
        );

        let write = |file: &str, text: &str| -> Result<PathBuf, PeerError> {
            let path = dir.join(file);
            write_private(&path, text)?;
            Ok(path)
        };
        Ok(Self {
            ca_cert: write("ca.crt", &ca_cert.pem())?,
            serving_cert: write("apiserver.crt", &serving_cert.pem())?,
            serving_key: write("apiserver.key", &serving_key.serialize_pem())?,
            sa_public: write("sa.pub", &sa_key.public_key_pem())?,
            sa_private: write("sa.key", &sa_key.serialize_pem())?,
            token_file: write("tokens.csv", &tokens)?,
            admin_token,
            controller_manager_token,
        })
    }

    /// The admin's bearer token (`system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// kube-controller-manager's bearer token.
    pub fn controller_manager_token(&self) -> &str {
        &self.controller_manager_token
    }
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// 32 hex digits from the kernel's CSPRNG.
fn random_token() -> Result<String, PeerError> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|source| PeerError::Io {
            what: "reading /dev/urandom for a control plane token".into(),
            source,
        })?;
    Ok(bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// Writes a file only its owner can read (keys, tokens, kubeconfigs).
pub fn write_private(path: &Path, text: &str) -> Result<(), PeerError> {
    let io = |source| PeerError::Io {
        what: format!("writing {}", path.display()),
        source,
    };
    fs::write(path, text).map_err(io)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io)
}
