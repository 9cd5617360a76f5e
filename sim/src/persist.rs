//! Optional persistence: with an explicit state directory, all objects are written to
//! `<state_dir>/objects.json` (atomically: temp file, then rename) about once a second when
//! something changed, and on [`crate::Sim::save_state`]. A simulator started on a state
//! directory that has this file resumes from it (PVC files are already there) instead of
//! applying its scenario. Not persisted: the watch event log (watches after a restart start
//! from the saved resourceVersion, older ones get 410), freeze timers, upload tokens and
//! running Job processes.
//!
//! Format: `{"formatVersion": 1, "resourceVersion": N, "objects": [{"group": g, "plural": p,
//! "object": {...}}]}`.

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::{Error, Inner};

/// Version of the objects.json format; bump when it changes incompatibly.
pub const FORMAT_VERSION: u64 = 1;

fn path(inner: &Inner) -> PathBuf {
    inner.state_dir.join("objects.json")
}

/// Write every object.
pub(crate) fn save(inner: &Inner) -> Result<(), Error> {
    let (objects, rv) = inner.store.dump();
    let list: Vec<Value> = objects
        .into_iter()
        .map(|(res, o)| {
            let d = inner.reg.def(res);
            json!({"group": d.group, "plural": d.plural, "object": o})
        })
        .collect();
    let doc = json!({"formatVersion": FORMAT_VERSION, "resourceVersion": rv, "objects": list});
    let p = path(inner);
    let tmp = p.with_extension("json.tmp");
    let io = |what: &'static str, path: PathBuf| move |source| Error::Io { what, path, source };
    std::fs::write(&tmp, serde_json::to_vec(&doc).unwrap_or_default())
        .map_err(io("writing", tmp.clone()))?;
    std::fs::rename(&tmp, &p).map_err(io("renaming into place", p.clone()))?;
    Ok(())
}

/// Load saved objects; Ok(false) when there is nothing to resume.
pub(crate) fn load(inner: &Inner) -> Result<bool, Error> {
    let p = path(inner);
    if !inner.persist || !p.exists() {
        return Ok(false);
    }
    let bad = |m: String| Error::Scenario {
        path: p.display().to_string(),
        message: m,
    };
    let text = std::fs::read(&p).map_err(|source| Error::Io {
        what: "reading saved state",
        path: p.clone(),
        source,
    })?;
    let doc: Value =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    if doc["formatVersion"].as_u64() != Some(FORMAT_VERSION) {
        return Err(bad(format!("unsupported formatVersion {} (expected {FORMAT_VERSION}); remove the file to start from the scenario", doc["formatVersion"])));
    }
    let mut objects = Vec::new();
    for e in doc["objects"].as_array().cloned().unwrap_or_default() {
        let group = e["group"].as_str().unwrap_or("");
        let plural = e["plural"].as_str().unwrap_or("");
        let res = inner
            .reg
            .by_plural(group, plural)
            .ok_or_else(|| bad(format!("unknown resource {plural}.{group}")))?;
        objects.push((res, e["object"].clone()));
    }
    inner
        .store
        .load(objects, doc["resourceVersion"].as_u64().unwrap_or(0));
    Ok(true)
}
