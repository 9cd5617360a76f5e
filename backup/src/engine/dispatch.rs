//! `virtguard backup --dispatch jobs`: one Kubernetes Job per VM instead of in-process backups.
//!
//! The dispatcher (normally the CronJob's own pod) selects the VMs, then creates for each VM a
//! Job that runs `virtguard backup --vm NS/NAME` with the same repository settings, at most
//! `parallel` at a time, waits for each to finish and summarises. Data movement therefore
//! spreads over the nodes the scheduler picks for those Jobs.
//!
//! **Pod template.** When the dispatcher knows its own Job (`--owner-job`, normally from the
//! downward-API label `batch.kubernetes.io/job-name`), each child copies that Job's pod
//! template — image, service account, `env`/`envFrom` (repository Secret), volumes, resources,
//! security context — with only the container arguments replaced, and is owned by it
//! (`ownerReferences`, `controller: false`), so deleting the CronJob's Job deletes the children.
//! The controller-managed labels (`controller-uid`, `job-name`) are dropped from the copy; the
//! API server sets its own. Without an owner Job the template is built from `--job-image`,
//! `--job-service-account` and `--job-env-secret`.
//!
//! **Arguments.** A child gets `backup --vm NS/NAME`, the backup timeouts, and the repository
//! location flags (`--repo`, `--s3-endpoint`, `--s3-region`, `--s3-path-style`, `--key-file`):
//! locations, never credentials — those travel only through the Secret in the template.
//!
//! **Labels.** Children carry `app.kubernetes.io/managed-by=virtguard` and
//! `virtguard.io/dispatch-run=<run id>`, and the annotation `virtguard.io/vm=NS/NAME`. They are
//! not deleted when they finish (their logs are the record) but get `ttlSecondsAfterFinished`.
//! On SIGTERM the dispatcher deletes its unfinished children with background propagation, so
//! Kubernetes sends their pods SIGTERM and each child thaws its guest and cleans up itself.
//!
//! **Outcome.** A VM's result is its Job's `Complete`/`Failed` condition; the summary adds the
//! status record the child wrote into the namespace's `virtguard-status` ConfigMap (reason code,
//! consistency, bytes) when it is newer than the dispatch.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::stream::{self, StreamExt};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvFromSource, PodSpec, PodTemplateSpec, SecretEnvSource,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::runtime::wait::await_condition;
use kube::{Api, Client};
use virtguard_api::labels;
use virtguard_api::status::{BackupResult, BackupStatusRecord};

use crate::cluster::ClusterError;

/// Label on every child Job of one dispatch run.
pub const DISPATCH_RUN: &str = "virtguard.io/dispatch-run";
/// Annotation naming the VM a child Job backs up (`NS/NAME`).
pub const VM_ANNOTATION: &str = "virtguard.io/vm";

/// How children are created.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Namespace the Jobs are created in (where the service account and Secret live).
    pub namespace: String,
    /// Jobs running at the same time.
    pub parallel: usize,
    /// The dispatcher's own Job (in `namespace`): children copy its pod template and are owned by it.
    pub owner_job: Option<String>,
    /// Image when there is no owner Job.
    pub image: Option<String>,
    /// Service account when there is no owner Job.
    pub service_account: Option<String>,
    /// Secret whose keys become the child's environment (repository credentials) when there is
    /// no owner Job.
    pub env_secret: Option<String>,
    /// Arguments after `backup --vm NS/NAME` (timeouts, repository location flags).
    pub child_args: Vec<String>,
    /// A child Job running longer than this fails (`activeDeadlineSeconds`).
    pub job_deadline: Duration,
}

/// What became of one VM.
#[derive(Debug, Clone)]
pub struct DispatchOutcome {
    /// `NS/NAME`.
    pub vm: String,
    /// The child Job's name ("" when it could not be created).
    pub job: String,
    /// `Ok` when the Job completed; `Err(message)` otherwise.
    pub result: Result<(), String>,
    /// The status record the child wrote, when it is from this run.
    pub status: Option<BackupStatusRecord>,
}

/// Errors of dispatching (per-VM failures are [`DispatchOutcome`]s instead).
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// Neither an owner Job nor an image to build the children from.
    #[error("--dispatch jobs needs the pod template of the dispatcher's Job (--owner-job, or env VIRTGUARD_OWNER_JOB from the downward API) or --job-image")]
    NoTemplate,
    /// The owner Job cannot be read or has no container.
    #[error("owner Job {namespace}/{name}: {message}")]
    Owner {
        namespace: String,
        name: String,
        message: String,
    },
    /// A cluster call failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl DispatchError {
    /// A refusal caused by how the command was asked (no pod template to copy): exit status 2.
    pub fn is_usage(&self) -> bool {
        matches!(self, DispatchError::NoTemplate)
    }
}

/// Labels controllers set on a Job's pod template; a copy must not carry the parent's values.
const CONTROLLER_LABELS: &[&str] = &[
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "job-name",
    "batch.kubernetes.io/job-name",
];

/// The pod template children are made from, and the owner reference they carry.
async fn template(
    client: &Client,
    cfg: &DispatchConfig,
) -> Result<(PodTemplateSpec, Option<OwnerReference>), DispatchError> {
    let Some(owner) = &cfg.owner_job else {
        let image = cfg.image.clone().ok_or(DispatchError::NoTemplate)?;
        let env_from = cfg.env_secret.as_ref().map(|s| {
            vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: s.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }]
        });
        let spec = PodSpec {
            restart_policy: Some("Never".into()),
            service_account_name: cfg.service_account.clone(),
            termination_grace_period_seconds: Some(120),
            containers: vec![Container {
                name: "backup".into(),
                image: Some(image),
                env_from,
                ..Default::default()
            }],
            ..Default::default()
        };
        let t = PodTemplateSpec {
            metadata: None,
            spec: Some(spec),
        };
        return Ok((t, None));
    };
    let err = |message: String| DispatchError::Owner {
        namespace: cfg.namespace.clone(),
        name: owner.clone(),
        message,
    };
    let job = Api::<Job>::namespaced(client.clone(), &cfg.namespace)
        .get(owner)
        .await
        .map_err(|e| {
            err(format!(
                "cannot be read ({e}); check --owner-job and the RBAC rule for get jobs"
            ))
        })?;
    let mut t = job
        .spec
        .map(|s| s.template)
        .ok_or_else(|| err("has no spec".into()))?;
    if t.spec.as_ref().is_none_or(|s| s.containers.is_empty()) {
        return Err(err("has no container to copy".into()));
    }
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        for k in CONTROLLER_LABELS {
            l.remove(*k);
        }
    }
    let uid = job.metadata.uid.ok_or_else(|| err("has no uid".into()))?;
    let reference = OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: owner.clone(),
        uid,
        controller: Some(false),
        block_owner_deletion: Some(false),
    };
    Ok((t, Some(reference)))
}

/// A Job name prefix for `vm`: `virtguard-<vm>-`, short enough for generateName.
fn name_prefix(vm: &str) -> String {
    let mut s: String = vm
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.truncate(40);
    format!("virtguard-{}-", s.trim_matches('-'))
}

/// The child Job for VM `ns/name`.
fn child_job(
    t: &PodTemplateSpec,
    owner: &Option<OwnerReference>,
    cfg: &DispatchConfig,
    run: &str,
    ns: &str,
    name: &str,
) -> Job {
    let mut t = t.clone();
    let mut args = vec![
        "backup".to_string(),
        "--vm".to_string(),
        format!("{ns}/{name}"),
    ];
    args.extend(cfg.child_args.iter().cloned());
    if let Some(c) = t.spec.as_mut().and_then(|s| s.containers.first_mut()) {
        c.args = Some(args);
    }
    let mut l = BTreeMap::from([
        (
            labels::MANAGED_BY.to_string(),
            labels::MANAGED_BY_VALUE.to_string(),
        ),
        (DISPATCH_RUN.to_string(), run.to_string()),
    ]);
    let meta = t.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(Default::default)
        .extend(l.clone());
    l.extend(
        meta.labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k.starts_with("app.kubernetes.io/")),
    );
    Job {
        metadata: ObjectMeta {
            generate_name: Some(name_prefix(name)),
            namespace: Some(cfg.namespace.clone()),
            labels: Some(l),
            annotations: Some(BTreeMap::from([(
                VM_ANNOTATION.to_string(),
                format!("{ns}/{name}"),
            )])),
            owner_references: owner.clone().map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(cfg.job_deadline.as_secs().max(1) as i64),
            ttl_seconds_after_finished: Some(7 * 24 * 3600),
            template: t,
            ..Default::default()
        }),
        status: None,
    }
}

/// `Some(Ok)` when the Job completed, `Some(Err(message))` when it failed, `None` while running.
pub fn job_outcome(job: &Job) -> Option<Result<(), String>> {
    let st = job.status.as_ref()?;
    for c in st.conditions.iter().flatten() {
        if c.status != "True" {
            continue;
        }
        match c.type_.as_str() {
            "Complete" | "SuccessCriteriaMet" => return Some(Ok(())),
            "Failed" | "FailureTarget" => {
                return Some(Err(format!(
                    "Job failed: {}{}",
                    c.reason.clone().unwrap_or_default(),
                    c.message
                        .as_ref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                )))
            }
            _ => {}
        }
    }
    None
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Runs one child Job for `ns/name` to its end.
async fn run_one(
    client: &Client,
    cfg: &DispatchConfig,
    t: &PodTemplateSpec,
    owner: &Option<OwnerReference>,
    run: &str,
    ns: String,
    name: String,
) -> DispatchOutcome {
    let vm = format!("{ns}/{name}");
    let started = unix_now();
    let api = Api::<Job>::namespaced(client.clone(), &cfg.namespace);
    let job = child_job(t, owner, cfg, run, &ns, &name);
    let created = match api.create(&PostParams::default(), &job).await {
        Ok(j) => j,
        Err(e) => {
            return DispatchOutcome {
                vm,
                job: String::new(),
                result: Err(format!(
                    "creating its Job in namespace {} failed: {e}",
                    cfg.namespace
                )),
                status: None,
            }
        }
    };
    let job_name = created.metadata.name.clone().unwrap_or_default();
    tracing::info!(vm = %vm, job = %job_name, "dispatched");
    let done = await_condition(api, &job_name, |j: Option<&Job>| {
        j.is_none_or(|j| job_outcome(j).is_some())
    });
    // The Job's own activeDeadlineSeconds fails it; this margin only covers a lost watch.
    let wait = cfg.job_deadline + Duration::from_secs(120);
    let result = match tokio::time::timeout(wait, done).await {
        Ok(Ok(Some(j))) => job_outcome(&j).unwrap_or(Ok(())),
        Ok(Ok(None)) => Err("its Job was deleted before it finished".into()),
        Ok(Err(e)) => Err(format!("watching its Job failed: {e}")),
        Err(_) => Err(format!(
            "its Job did not finish within {}",
            humantime::format_duration(wait)
        )),
    };
    let status = super::backup::read_status(client, &ns, &name)
        .await
        .filter(|s| s.last_attempt_timestamp >= started);
    // A child that could not even write its status still failed for the summary's reader.
    let result = match (&result, &status) {
        (Ok(()), Some(s)) if s.result == BackupResult::Failed => {
            Err("the backup reported failure".into())
        }
        _ => result,
    };
    DispatchOutcome {
        vm,
        job: job_name,
        result,
        status,
    }
}

/// Dispatches one Job per VM, at most `cfg.parallel` at a time, and waits for all of them.
pub async fn dispatch(
    client: &Client,
    vms: Vec<(String, String)>,
    cfg: &DispatchConfig,
    run: &str,
) -> Result<Vec<DispatchOutcome>, DispatchError> {
    let (t, owner) = template(client, cfg).await?;
    let out = stream::iter(vms)
        .map(|(ns, name)| run_one(client, cfg, &t, &owner, run, ns, name))
        .buffer_unordered(cfg.parallel.max(1))
        .collect::<Vec<_>>()
        .await;
    Ok(out)
}

/// Deletes the unfinished child Jobs of dispatch run `run` (background propagation: their pods
/// get SIGTERM and thaw/clean up themselves). Returns the names deleted.
pub async fn cancel(
    client: &Client,
    namespace: &str,
    run: &str,
) -> Result<Vec<String>, ClusterError> {
    let api = Api::<Job>::namespaced(client.clone(), namespace);
    let jobs = api
        .list(&ListParams::default().labels(&format!("{DISPATCH_RUN}={run}")))
        .await
        .map_err(ClusterError::api(
            "listing",
            "Job",
            &format!("{namespace}/(dispatch {run})"),
        ))?;
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    let mut deleted = Vec::new();
    for j in jobs.items {
        if job_outcome(&j).is_some() {
            continue;
        }
        let Some(name) = j.metadata.name else {
            continue;
        };
        match api.delete(&name, &dp).await {
            Ok(_) => deleted.push(name),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(ClusterError::api(
                    "deleting",
                    "Job",
                    &format!("{namespace}/{name}"),
                )(e))
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DispatchConfig {
        DispatchConfig {
            namespace: "virtguard".into(),
            parallel: 2,
            owner_job: None,
            image: Some("quay.io/x/virtguard:1".into()),
            service_account: Some("virtguard-backup".into()),
            env_secret: Some("virtguard-repo".into()),
            child_args: vec!["--repo".into(), "s3://b/p".into()],
            job_deadline: Duration::from_secs(3600),
        }
    }

    #[test]
    fn names_fit_generate_name_and_dns() {
        let p = name_prefix("A_Very.Long-VM-name-that-goes-on-and-on-and-on-forever-and-ever");
        assert!(p.starts_with("virtguard-a-very-long-vm-name"), "{p}");
        assert!(p.len() <= 63 - 5, "{p}");
        assert!(p
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
    }

    #[test]
    fn child_runs_one_vm_and_strips_parent_controller_labels() {
        let mut t = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(BTreeMap::from([
                    ("job-name".to_string(), "parent".to_string()),
                    (
                        "batch.kubernetes.io/controller-uid".to_string(),
                        "u".to_string(),
                    ),
                    (
                        "app.kubernetes.io/name".to_string(),
                        "virtguard-backup".to_string(),
                    ),
                ])),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "backup".into(),
                    args: Some(vec!["backup".into(), "--all-namespaces".into()]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        };
        for k in CONTROLLER_LABELS {
            t.metadata
                .as_mut()
                .unwrap()
                .labels
                .as_mut()
                .unwrap()
                .remove(*k);
        }
        let j = child_job(&t, &None, &cfg(), "run1", "prod", "db");
        let spec = j.spec.unwrap();
        let c = &spec.template.spec.unwrap().containers[0];
        assert_eq!(
            c.args.clone().unwrap(),
            ["backup", "--vm", "prod/db", "--repo", "s3://b/p"]
        );
        let tl = spec.template.metadata.unwrap().labels.unwrap();
        assert!(!tl.contains_key("job-name"));
        assert_eq!(tl[DISPATCH_RUN], "run1");
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(j.metadata.annotations.unwrap()[VM_ANNOTATION], "prod/db");
        assert_eq!(
            j.metadata.labels.unwrap()["app.kubernetes.io/name"],
            "virtguard-backup"
        );
    }

    #[test]
    fn outcome_reads_conditions() {
        let mut j = Job::default();
        assert!(job_outcome(&j).is_none());
        j.status = Some(
            serde_json::from_value(serde_json::json!({
                "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                "message": "too slow"}]
            }))
            .unwrap(),
        );
        assert_eq!(
            job_outcome(&j),
            Some(Err("Job failed: DeadlineExceeded: too slow".into()))
        );
        j.status = Some(
            serde_json::from_value(serde_json::json!({
                "conditions": [{"type": "Complete", "status": "True"}]
            }))
            .unwrap(),
        );
        assert_eq!(job_outcome(&j), Some(Ok(())));
    }
}
