//! Which retention policy applies to a VM, read from the cluster.
//!
//! Order: the [`labels::RETENTION`] annotation on the VirtualMachine, else on its Namespace, else
//! the caller's fallback (the `--keep-*` flags of the CronJob, else [`DEFAULT_POLICY`]).
//!
//! Invariant: a broken annotation never falls through to a looser rule. It resolves to "keep
//! every backup of this VM" with the parse error (column included), and a Warning Event
//! (`InvalidRetentionPolicy`) is recorded on the object that carries it, where
//! `kubectl describe` shows it. A VM that no longer exists still has its namespace's policy; a
//! cluster that cannot be read is an error, never a silent fallback.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Event, EventSource, Namespace, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::PostParams;
use kube::{Api, Client, Resource, ResourceExt};
use virtguard_api::kubevirt::VirtualMachine;
use virtguard_api::labels;
use virtguard_repo::retention::KeepPolicy;

use super::{ClusterError, Result};

/// The policy used when neither the VM, its namespace nor the flags give one.
pub const DEFAULT_POLICY: &str = "last=3,daily=7,weekly=4,monthly=6";

/// Where a VM's policy came from (printed by `prune --dry-run`, and in its JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicySource {
    VmAnnotation,
    NamespaceAnnotation,
    Flags,
    Default,
}

impl std::fmt::Display for PolicySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PolicySource::VmAnnotation => "annotation on the VM",
            PolicySource::NamespaceAnnotation => "annotation on the namespace",
            PolicySource::Flags => "--keep-* flags",
            PolicySource::Default => "default",
        })
    }
}

/// One VM's policy: `policy` is `None` when its annotation is broken (keep everything).
#[derive(Debug, Clone)]
pub struct ResolvedPolicy {
    pub policy: Option<KeepPolicy>,
    pub source: PolicySource,
    /// Why everything is kept (the parse error), for the output and the Event.
    pub warning: Option<String>,
}

/// Resolves policies VM by VM, reading each namespace once.
pub struct PolicyResolver {
    client: Client,
    fallback: (KeepPolicy, PolicySource),
    namespaces: HashMap<String, Option<Namespace>>,
    warned: Vec<String>,
}

impl PolicyResolver {
    /// `flags`: the `--keep-*` flags when any is set.
    pub fn new(client: Client, flags: Option<KeepPolicy>) -> PolicyResolver {
        let fallback = match flags {
            Some(p) => (p, PolicySource::Flags),
            None => (
                DEFAULT_POLICY
                    .parse()
                    .unwrap_or_else(|_| KeepPolicy::default()),
                PolicySource::Default,
            ),
        };
        PolicyResolver {
            client,
            fallback,
            namespaces: HashMap::new(),
            warned: Vec::new(),
        }
    }

    /// The policy of VM `namespace/name`; records a Warning Event for a broken annotation (once
    /// per object per run).
    pub async fn resolve(&mut self, namespace: &str, name: &str) -> Result<ResolvedPolicy> {
        let vm_id = format!("{namespace}/{name}");
        let vm = Api::<VirtualMachine>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(ClusterError::api("reading", "VirtualMachine", &vm_id))?;
        if let Some(vm) = vm {
            if let Some(text) = vm.annotations().get(labels::RETENTION) {
                let r = parsed(text, PolicySource::VmAnnotation);
                if let Some(w) = &r.warning {
                    let reference = reference_of(&vm, namespace);
                    self.warn(reference, namespace, w).await;
                }
                return Ok(r);
            }
        }
        if !self.namespaces.contains_key(namespace) {
            let ns = Api::<Namespace>::all(self.client.clone())
                .get_opt(namespace)
                .await
                .map_err(ClusterError::api("reading", "Namespace", namespace))?;
            self.namespaces.insert(namespace.to_string(), ns);
        }
        let ns_text = self
            .namespaces
            .get(namespace)
            .and_then(|ns| ns.as_ref())
            .and_then(|ns| ns.annotations().get(labels::RETENTION).cloned());
        if let Some(text) = ns_text {
            let r = parsed(&text, PolicySource::NamespaceAnnotation);
            if let (Some(w), Some(Some(ns))) = (&r.warning, self.namespaces.get(namespace)) {
                let reference = reference_of(ns, "");
                // Events about a namespace are recorded in it.
                self.warn(reference, namespace, w).await;
            }
            return Ok(r);
        }
        Ok(ResolvedPolicy {
            policy: Some(self.fallback.0.clone()),
            source: self.fallback.1.clone(),
            warning: None,
        })
    }

    /// Best effort: an Event that cannot be written is logged, the prune goes on (the warning is
    /// also in the command's output).
    async fn warn(&mut self, about: ObjectReference, events_ns: &str, message: &str) {
        let key = format!(
            "{}/{events_ns}/{}",
            about.kind.as_deref().unwrap_or_default(),
            about.name.as_deref().unwrap_or_default()
        );
        if self.warned.contains(&key) {
            return;
        }
        self.warned.push(key);
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!(
                    "{}.",
                    about.name.clone().unwrap_or_else(|| "retention".into())
                )),
                namespace: Some(events_ns.to_string()),
                ..Default::default()
            },
            involved_object: about,
            reason: Some(INVALID_POLICY_REASON.into()),
            message: Some(message.to_string()),
            type_: Some("Warning".into()),
            source: Some(EventSource {
                component: Some("virtguard-prune".into()),
                host: None,
            }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        };
        if let Err(e) = Api::<Event>::namespaced(self.client.clone(), events_ns)
            .create(&PostParams::default(), &event)
            .await
        {
            tracing::warn!(error = %e, "could not record the InvalidRetentionPolicy Event");
        }
    }
}

/// The Event reason of a broken `virtguard.io/retention` annotation.
pub const INVALID_POLICY_REASON: &str = "InvalidRetentionPolicy";

fn parsed(text: &str, source: PolicySource) -> ResolvedPolicy {
    match text.parse::<KeepPolicy>() {
        Ok(p) => ResolvedPolicy {
            policy: Some(p),
            source,
            warning: None,
        },
        Err(e) => ResolvedPolicy {
            policy: None,
            warning: Some(format!(
                "{source} {}: {e}; every backup of this VM is kept until it is fixed",
                labels::RETENTION
            )),
            source,
        },
    }
}

fn reference_of<K>(obj: &K, namespace: &str) -> ObjectReference
where
    K: Resource<DynamicType = ()>,
{
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: obj.meta().name.clone(),
        namespace: (!namespace.is_empty()).then(|| namespace.to_string()),
        uid: obj.meta().uid.clone(),
        ..Default::default()
    }
}
