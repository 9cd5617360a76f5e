//! Opt-in audit trail of the API requests clients made (`SimConfig::audit_log`,
//! `virtguard-sim --audit-log FILE`): one JSON line per authenticated request, with the
//! attributes kube-apiserver's authorizer decides on — verb, API group, resource, subresource,
//! namespace, name — or, for a path outside `/api` and `/apis`, the non-resource path and verb.
//! Tests replay these as SubjectAccessReviews on a real API server to prove that an RBAC role
//! allows what a client really does (`tests/tests/control_plane_rbac.rs`).
//!
//! The attributes are derived from the method and path alone, as the real server's
//! `RequestInfoFactory` derives them (not from the sim's routing), so a request the sim would
//! refuse is recorded as the real server would authorize it. Invariant: only attributes are
//! written — never a body, a header value other than the User-Agent, or a query string (so no
//! token reaches the file); the upload proxy (`/v1beta1/upload`) is not the API and is not
//! recorded.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The authorization attributes of one request (the fields of a SubjectAccessReview's
/// `resourceAttributes`, or of its `nonResourceAttributes` when `path` is set).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub verb: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A non-resource request (`/version`, `/api`, `/openapi/v2`, …): its path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default)]
    pub user_agent: String,
}

impl AuditRecord {
    /// The attributes of `method path?query` as kube-apiserver's authorizer sees them.
    pub fn from_request(method: &str, path: &str, query: &str, user_agent: &str) -> AuditRecord {
        let mut rec = AuditRecord {
            user_agent: user_agent.to_string(),
            ..Default::default()
        };
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let rest = match parts.as_slice() {
            ["api", _version, rest @ ..] if !rest.is_empty() => {
                rec.group = Some(String::new());
                rest
            }
            ["apis", group, _version, rest @ ..] if !rest.is_empty() => {
                rec.group = Some((*group).to_string());
                rest
            }
            _ => {
                rec.verb = method.to_ascii_lowercase();
                rec.path = Some(path.to_string());
                return rec;
            }
        };
        let (watch_path, rest) = match rest {
            ["watch", rest @ ..] => (true, rest),
            r => (false, r),
        };
        // `namespaces/{ns}/{resource}/...`, but `namespaces/{ns}` is the Namespace itself.
        let rest: Vec<&str> = match rest {
            ["namespaces", ns, tail @ ..] if !tail.is_empty() => {
                rec.namespace = Some((*ns).to_string());
                tail.to_vec()
            }
            r => r.to_vec(),
        };
        rec.resource = rest.first().map(|s| (*s).to_string());
        rec.name = rest.get(1).map(|s| (*s).to_string());
        rec.subresource = rest.get(2).map(|s| (*s).to_string());
        let watch_query = query
            .split('&')
            .any(|kv| matches!(kv, "watch=true" | "watch=1"));
        rec.verb = match (method, rec.name.is_some()) {
            ("GET" | "HEAD", _) if watch_path || watch_query => "watch",
            ("GET" | "HEAD", true) => "get",
            ("GET" | "HEAD", false) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            (other, _) => {
                return AuditRecord {
                    verb: other.to_ascii_lowercase(),
                    ..rec
                }
            }
        }
        .to_string();
        rec
    }
}

/// The open audit file; requests append to it one line each.
#[derive(Debug)]
pub struct AuditLog {
    file: Mutex<std::fs::File>,
}

impl AuditLog {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path) -> crate::Result<AuditLog> {
        let file = std::fs::File::create(path).map_err(|source| crate::Error::Io {
            what: "creating the audit log",
            path: path.to_path_buf(),
            source,
        })?;
        Ok(AuditLog {
            file: Mutex::new(file),
        })
    }

    /// Appends one record. A failed write is logged, never fails the request.
    pub fn record(&self, rec: &AuditRecord) {
        let Ok(mut line) = serde_json::to_vec(rec) else {
            return;
        };
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(&line) {
            tracing::warn!(error = %e, "writing the audit log");
        }
    }
}

/// Reads an audit file written by [`AuditLog`].
pub fn read(path: &Path) -> crate::Result<Vec<AuditRecord>> {
    let text = std::fs::read_to_string(path).map_err(|source| crate::Error::Io {
        what: "reading the audit log",
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|e| crate::Error::Io {
                what: "parsing the audit log",
                path: path.to_path_buf(),
                source: std::io::Error::other(e),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(method: &str, path: &str, query: &str) -> AuditRecord {
        let mut r = AuditRecord::from_request(method, path, query, "ua");
        r.user_agent.clear();
        r
    }

    fn res(verb: &str, group: &str, resource: &str) -> AuditRecord {
        AuditRecord {
            verb: verb.into(),
            group: Some(group.into()),
            resource: Some(resource.into()),
            ..Default::default()
        }
    }

    #[test]
    fn attributes_follow_the_real_request_info() {
        assert_eq!(
            rec("GET", "/apis/kubevirt.io/v1/virtualmachines", ""),
            res("list", "kubevirt.io", "virtualmachines")
        );
        assert_eq!(
            rec(
                "GET",
                "/api/v1/namespaces/prod/persistentvolumeclaims",
                "labelSelector=a&watch=true"
            ),
            AuditRecord {
                namespace: Some("prod".into()),
                ..res("watch", "", "persistentvolumeclaims")
            }
        );
        assert_eq!(
            rec(
                "PUT",
                "/apis/subresources.kubevirt.io/v1/namespaces/prod/virtualmachineinstances/db/freeze",
                ""
            ),
            AuditRecord {
                namespace: Some("prod".into()),
                name: Some("db".into()),
                subresource: Some("freeze".into()),
                ..res("update", "subresources.kubevirt.io", "virtualmachineinstances")
            }
        );
        assert_eq!(
            rec("DELETE", "/api/v1/namespaces/prod/secrets", ""),
            AuditRecord {
                namespace: Some("prod".into()),
                ..res("deletecollection", "", "secrets")
            }
        );
        assert_eq!(
            rec("GET", "/api/v1/namespaces/prod", ""),
            AuditRecord {
                name: Some("prod".into()),
                ..res("get", "", "namespaces")
            }
        );
        assert_eq!(
            rec("POST", "/api/v1/persistentvolumes", ""),
            res("create", "", "persistentvolumes")
        );
        assert_eq!(
            rec("GET", "/version", ""),
            AuditRecord {
                verb: "get".into(),
                path: Some("/version".into()),
                ..Default::default()
            }
        );
        assert_eq!(rec("GET", "/apis", "").path.as_deref(), Some("/apis"));
    }

    #[test]
    fn records_round_trip_through_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::create(&path).expect("create");
        let a = AuditRecord::from_request("PATCH", "/api/v1/namespaces/a/configmaps/b", "", "x/1");
        let b = AuditRecord::from_request("GET", "/openapi/v2", "", "kubectl/v1.37");
        log.record(&a);
        log.record(&b);
        assert_eq!(read(&path).expect("read"), vec![a, b]);
    }
}
