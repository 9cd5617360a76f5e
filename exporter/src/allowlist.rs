//! `--vmi-label-allowlist`: which Kubernetes labels of a VMI are copied onto its per-VM series.
//!
//! ARCHITECTURE.md §2: VMI labels become metric labels only when allow-listed, so an unbounded or
//! sensitive label never reaches Prometheus by accident. A label key `app.kubernetes.io/part-of`
//! is rendered as `label_app_kubernetes_io_part_of` (the kube-state-metrics convention: prefix
//! `label_`, every character outside `[a-zA-Z0-9_]` replaced by `_`), after the catalogue's
//! labels. Only labels the VMI actually carries are written (an empty value would mean the same
//! as an absent label to Prometheus).
//!
//! Invariant: two allow-listed keys never map to the same metric label name (refused when the
//! flag is parsed), so a series never carries a label twice.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// The parsed allow-list: (Kubernetes label key, metric label name), in flag order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmiLabelAllowlist {
    keys: Vec<(String, String)>,
}

/// The metric label name for a Kubernetes label key.
pub fn metric_label_name(key: &str) -> String {
    let mut out = String::with_capacity(6 + key.len());
    out.push_str("label_");
    out.extend(
        key.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
    );
    out
}

impl VmiLabelAllowlist {
    /// Parses the flag's values (already split at commas); blanks are ignored.
    pub fn parse(keys: &[String]) -> Result<VmiLabelAllowlist> {
        let mut out: Vec<(String, String)> = Vec::new();
        for key in keys.iter().map(|k| k.trim()).filter(|k| !k.is_empty()) {
            if out.iter().any(|(k, _)| k == key) {
                continue;
            }
            let name = metric_label_name(key);
            if let Some((other, _)) = out.iter().find(|(_, n)| *n == name) {
                return Err(Error::InvalidFlag {
                    flag: "--vmi-label-allowlist",
                    value: key.to_string(),
                    reason: format!(
                        "it and `{other}` would both become the metric label `{name}`; keep one of them"
                    ),
                });
            }
            out.push((key.to_string(), name));
        }
        Ok(VmiLabelAllowlist { keys: out })
    }

    /// True when no label is allow-listed.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The extra (metric label name, value) pairs for a VMI with these Kubernetes labels.
    pub fn extra(&self, labels: Option<&BTreeMap<String, String>>) -> Vec<(String, String)> {
        let Some(labels) = labels else {
            return Vec::new();
        };
        self.keys
            .iter()
            .filter_map(|(key, name)| {
                labels
                    .get(key)
                    .filter(|v| !v.is_empty())
                    .map(|v| (name.clone(), v.clone()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sanitises_and_copies_only_present_labels() {
        let a = VmiLabelAllowlist::parse(&s(&["app.kubernetes.io/part-of", " team ", "", "team"]))
            .unwrap();
        let mut labels = BTreeMap::new();
        labels.insert("team".to_string(), "blue".to_string());
        labels.insert("secret".to_string(), "x".to_string());
        assert_eq!(
            a.extra(Some(&labels)),
            vec![("label_team".to_string(), "blue".to_string())]
        );
        labels.insert("app.kubernetes.io/part-of".to_string(), "shop".to_string());
        assert_eq!(
            a.extra(Some(&labels))[0],
            (
                "label_app_kubernetes_io_part_of".to_string(),
                "shop".to_string()
            )
        );
        assert!(a.extra(None).is_empty());
        for (_, name) in &a.keys {
            assert!(crate::catalog::is_valid_label_name(name), "{name}");
        }
    }

    #[test]
    fn refuses_keys_that_collide_after_sanitising() {
        let e = VmiLabelAllowlist::parse(&s(&["a.b", "a/b"])).unwrap_err();
        assert!(e.to_string().contains("label_a_b"), "{e}");
    }
}
