//! Jobs run as local processes.
//!
//! A Job whose first container image contains `virtguard` runs the local `virtguard` binary
//! (configurable) as a child process: arguments are the container's `command[1..]` followed by
//! `args` (a `command[0]` naming the binary is replaced by the configured path), environment
//! from `env` (`value`, or `valueFrom.secretKeyRef` / `configMapKeyRef` resolved from the sim),
//! plus `KUBECONFIG` pointing at the sim's kubeconfig (there is no service account). Output goes
//! to `<state>/jobs/<ns>_<name>.log`. Status: `startTime` and `active: 1` at start, then
//! `succeeded: 1` + condition `Complete` or `failed: 1` + condition `Failed` with the exit
//! code. Deleting the Job stops the process like the kubelet stops a pod: SIGTERM, then SIGKILL
//! after `terminationGracePeriodSeconds`. `envFrom` Secret/ConfigMap refs are honoured. No Pods are created, no retries (`backoffLimit`
//! is ignored), no parallelism. Jobs with other images fail at once with reason
//! `ImageNotSimulated`. CronJobs are stored but never scheduled.
//!
//! PVC volumes: there is no container filesystem, so paths are mapped in the arguments. A
//! `volumeDevices[].devicePath` of a `persistentVolumeClaim` pod volume becomes the PVC's
//! backing file; a `volumeMounts[].mountPath` of one becomes a directory
//! `<state>/jobs/<ns>_<job>.mnt/<volume>/` holding `disk.img`, a symlink to the PVC's backing
//! file (CDI's layout of a Filesystem-mode disk). An argument equal to a device path, or
//! starting with `<mountPath>/` (also after `--flag=`), is rewritten.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::store::{meta_str, name_ns, now_rfc3339};
use crate::Inner;

/// A finished (or running) Job process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRun {
    /// `namespace/name`.
    pub job: String,
    pub args: Vec<String>,
    /// None while running.
    pub exit_code: Option<i32>,
    pub log: PathBuf,
}

/// Running children and finished runs.
#[derive(Debug)]
pub struct JobsState {
    bin: Option<PathBuf>,
    pub(crate) kubeconfig: OnceLock<PathBuf>,
    children: tokio::sync::Mutex<HashMap<String, (String, tokio::process::Child)>>,
    /// terminationGracePeriodSeconds of running Jobs, by uid.
    grace: Mutex<HashMap<String, Duration>>,
    runs: Mutex<Vec<JobRun>>,
}

impl JobsState {
    pub fn new(bin: Option<PathBuf>) -> Self {
        JobsState {
            bin,
            kubeconfig: OnceLock::new(),
            children: tokio::sync::Mutex::new(HashMap::new()),
            grace: Mutex::new(HashMap::new()),
            runs: Mutex::new(Vec::new()),
        }
    }

    pub fn runs(&self) -> Vec<JobRun> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) async fn kill_all(&self) {
        for (_, (_, mut c)) in self.children.lock().await.drain() {
            let _ = c.kill().await;
        }
    }
}

fn env_value(inner: &Inner, ns: &str, e: &Value) -> Option<String> {
    if let Some(v) = e.get("value").and_then(Value::as_str) {
        return Some(v.to_string());
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(r) = e.pointer("/valueFrom/secretKeyRef") {
        let s = inner
            .store
            .get(inner.rid("", "secrets"), ns, r.get("name")?.as_str()?)?;
        let key = r.get("key")?.as_str()?;
        if let Some(v) = s
            .pointer("/stringData")
            .and_then(|d| d.get(key))
            .and_then(Value::as_str)
        {
            return Some(v.to_string());
        }
        let raw = b64.decode(s.get("data")?.get(key)?.as_str()?).ok()?;
        return String::from_utf8(raw).ok();
    }
    if let Some(r) = e.pointer("/valueFrom/configMapKeyRef") {
        let c = inner
            .store
            .get(inner.rid("", "configmaps"), ns, r.get("name")?.as_str()?)?;
        return c
            .get("data")?
            .get(r.get("key")?.as_str()?)?
            .as_str()
            .map(str::to_string);
    }
    None
}

/// Variables from the container's `envFrom` (`secretRef` / `configMapRef`, with `prefix`), in
/// order; a later `env` entry overrides them, as in a real pod. A missing optional source is
/// skipped; a missing required one leaves its variables unset (a real pod would not start).
fn env_from(inner: &Inner, ns: &str, c: &Value) -> Vec<(String, String)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for src in c
        .get("envFrom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let prefix = src.get("prefix").and_then(Value::as_str).unwrap_or("");
        let (plural, r) = match (src.get("secretRef"), src.get("configMapRef")) {
            (Some(r), _) => ("secrets", r),
            (None, Some(r)) => ("configmaps", r),
            _ => continue,
        };
        let Some(name) = r.get("name").and_then(Value::as_str) else {
            continue;
        };
        let Some(obj) = inner.store.get(inner.rid("", plural), ns, name) else {
            continue;
        };
        if let Some(d) = obj.get("data").and_then(Value::as_object) {
            for (k, v) in d {
                let v = v.as_str().unwrap_or("");
                let v = if plural == "secrets" {
                    b64.decode(v).ok().and_then(|b| String::from_utf8(b).ok())
                } else {
                    Some(v.to_string())
                };
                if let Some(v) = v {
                    out.push((format!("{prefix}{k}"), v));
                }
            }
        }
        if let Some(d) = obj.get("stringData").and_then(Value::as_object) {
            for (k, v) in d {
                if let Some(v) = v.as_str() {
                    out.push((format!("{prefix}{k}"), v.to_string()));
                }
            }
        }
    }
    out
}

/// Stops a Job's process the way the kubelet stops a pod: SIGTERM, then SIGKILL after the pod's
/// `terminationGracePeriodSeconds` (default 30 s), in the background.
fn terminate(mut c: tokio::process::Child, grace: Duration) {
    let Some(pid) = c.id() else { return };
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    tokio::spawn(async move {
        if tokio::time::timeout(grace, c.wait()).await.is_err() {
            let _ = c.kill().await;
        }
    });
}

/// Rewrites container paths of PVC volumes in `args` into host paths (see the module docs).
fn map_volume_paths(
    inner: &Inner,
    job: &Value,
    c: &Value,
    ns: &str,
    name: &str,
    args: Vec<String>,
) -> Option<Vec<String>> {
    let claims: HashMap<String, String> = job
        .pointer("/spec/template/spec/volumes")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter_map(|v| {
                    Some((
                        v.get("name")?.as_str()?.to_string(),
                        v.pointer("/persistentVolumeClaim/claimName")?
                            .as_str()?
                            .to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    // (container path, host path, is a mount directory)
    let mut map: Vec<(String, String, bool)> = Vec::new();
    let list = |k: &str| {
        c.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    for d in list("volumeDevices") {
        let (Some(vol), Some(path)) = (
            d.get("name").and_then(Value::as_str),
            d.get("devicePath").and_then(Value::as_str),
        ) else {
            continue;
        };
        if let Some(claim) = claims.get(vol) {
            let file = crate::snapshot::pvc_file(inner, ns, claim).ok()?;
            map.push((path.to_string(), file.display().to_string(), false));
        }
    }
    for m in list("volumeMounts") {
        let (Some(vol), Some(path)) = (
            m.get("name").and_then(Value::as_str),
            m.get("mountPath").and_then(Value::as_str),
        ) else {
            continue;
        };
        let Some(claim) = claims.get(vol) else {
            continue;
        };
        let file = crate::snapshot::pvc_file(inner, ns, claim).ok()?;
        let dir = inner
            .state_dir
            .join("jobs")
            .join(format!("{ns}_{name}.mnt"))
            .join(vol);
        let _ = std::fs::create_dir_all(&dir);
        let link = dir.join("disk.img");
        let _ = std::fs::remove_file(&link);
        if std::os::unix::fs::symlink(&file, &link).is_ok() {
            map.push((
                path.trim_end_matches('/').to_string(),
                dir.display().to_string(),
                true,
            ));
        }
    }
    let mapped = args
        .into_iter()
        .map(|a| {
            let (flag, value) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (format!("{f}="), v.to_string()),
                _ => (String::new(), a.clone()),
            };
            for (from, to, dir) in &map {
                if !dir && value == *from {
                    return format!("{flag}{to}");
                }
                if *dir {
                    if let Some(rest) = value.strip_prefix(&format!("{from}/")) {
                        return format!("{flag}{to}/{rest}");
                    }
                }
            }
            a
        })
        .collect();
    Some(mapped)
}

/// One pass: start new Jobs, reap finished ones, stop deleted ones.
pub(crate) async fn reconcile(inner: &Inner) {
    let res = inner.rid("batch", "jobs");
    let (jobs, _) = inner.store.list(res, None);
    let mut children = inner.jobs.children.lock().await;
    // Kill processes of deleted Jobs.
    let live: Vec<String> = jobs
        .iter()
        .map(|j| meta_str(j, "uid").unwrap_or_default().to_string())
        .collect();
    let gone: Vec<String> = children
        .keys()
        .filter(|k| !live.contains(k))
        .cloned()
        .collect();
    for k in gone {
        if let Some((_, c)) = children.remove(&k) {
            let grace = inner
                .jobs
                .grace
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&k)
                .unwrap_or(Duration::from_secs(30));
            terminate(c, grace);
        }
    }
    for job in jobs {
        let (name, ns) = name_ns(&job);
        let uid = meta_str(&job, "uid").unwrap_or_default().to_string();
        let key = format!("{ns}/{name}");
        if let Some((_, child)) = children.get_mut(&uid) {
            if let Ok(Some(status)) = child.try_wait() {
                let code = status.code().unwrap_or(-1);
                children.remove(&uid);
                {
                    let mut runs = inner.jobs.runs.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(r) = runs
                        .iter_mut()
                        .rev()
                        .find(|r| r.job == key && r.exit_code.is_none())
                    {
                        r.exit_code = Some(code);
                    }
                }
                let ok = code == 0;
                let _ = inner.store.mutate(res, &ns, &name, |o| {
                    let st = &mut o["status"];
                    st["active"] = json!(0);
                    st["ready"] = json!(0);
                    st["completionTime"] = json!(now_rfc3339());
                    if ok {
                        st["succeeded"] = json!(1);
                        st["conditions"] = json!([{"type": "Complete", "status": "True", "lastProbeTime": now_rfc3339(), "lastTransitionTime": now_rfc3339()}]);
                    } else {
                        st["failed"] = json!(1);
                        st["conditions"] = json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                            "message": format!("process exited with code {code}"), "lastProbeTime": now_rfc3339(), "lastTransitionTime": now_rfc3339()}]);
                    }
                });
            }
            continue;
        }
        if job.pointer("/status/startTime").is_some()
            || job.pointer("/metadata/deletionTimestamp").is_some()
        {
            continue;
        }
        let c = job
            .pointer("/spec/template/spec/containers/0")
            .cloned()
            .unwrap_or(json!({}));
        let image = c.get("image").and_then(Value::as_str).unwrap_or("");
        if !image.contains("virtguard") {
            let _ = inner.store.mutate(res, &ns, &name, |o| {
                o["status"] = json!({"startTime": now_rfc3339(), "failed": 1, "active": 0, "conditions": [{"type": "Failed", "status": "True",
                    "reason": "ImageNotSimulated", "message": format!("virtguard-sim only runs virtguard images as local processes, not {image:?}"),
                    "lastProbeTime": now_rfc3339(), "lastTransitionTime": now_rfc3339()}]});
            });
            continue;
        }
        let strs = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut args = strs(c.get("command"));
        if !args.is_empty() {
            args.remove(0);
        }
        args.extend(strs(c.get("args")));
        // Like a pod, the process starts once its PVCs are bound.
        let Some(args) = map_volume_paths(inner, &job, &c, &ns, &name, args) else {
            continue;
        };
        let bin = inner
            .jobs
            .bin
            .clone()
            .unwrap_or_else(|| PathBuf::from("virtguard"));
        let log = inner
            .state_dir
            .join("jobs")
            .join(format!("{ns}_{name}.log"));
        let _ = std::fs::create_dir_all(inner.state_dir.join("jobs"));
        let out = std::fs::File::create(&log);
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.args(&args)
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null());
        if let Ok(f) = out {
            if let Ok(f2) = f.try_clone() {
                cmd.stdout(f).stderr(f2);
            }
        }
        if let Some(kc) = inner.jobs.kubeconfig.get() {
            cmd.env("KUBECONFIG", kc);
        }
        cmd.env("POD_NAMESPACE", &ns);
        for (k, v) in env_from(inner, &ns, &c) {
            cmd.env(k, v);
        }
        for e in c
            .get("env")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            if let (Some(k), Some(v)) = (
                e.get("name").and_then(Value::as_str),
                env_value(inner, &ns, &e),
            ) {
                cmd.env(k, v);
            }
        }
        match cmd.spawn() {
            Ok(child) => {
                inner
                    .jobs
                    .runs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(JobRun {
                        job: key.clone(),
                        args: args.clone(),
                        exit_code: None,
                        log: log.clone(),
                    });
                let grace = job
                    .pointer("/spec/template/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_u64)
                    .unwrap_or(30);
                inner
                    .jobs
                    .grace
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(uid.clone(), Duration::from_secs(grace));
                children.insert(uid, (key, child));
                let _ = inner.store.mutate(res, &ns, &name, |o| {
                    o["status"] = json!({"startTime": now_rfc3339(), "active": 1, "ready": 1});
                });
            }
            Err(e) => {
                let _ = inner.store.mutate(res, &ns, &name, |o| {
                    o["status"] = json!({"startTime": now_rfc3339(), "failed": 1, "active": 0, "conditions": [{"type": "Failed", "status": "True",
                        "reason": "StartError", "message": format!("starting {}: {e}", bin.display()),
                        "lastProbeTime": now_rfc3339(), "lastTransitionTime": now_rfc3339()}]});
                });
            }
        }
    }
}
