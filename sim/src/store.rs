//! The object store: every object as JSON, keyed by (resource, namespace, name).
//!
//! Invariants, like etcd behind the real API server:
//! - one global `resourceVersion` counter; every write (create, update, delete) takes the next
//!   value, and the object written carries it in `metadata.resourceVersion`;
//! - every write appends one [`Event`] to an in-memory log (capped; older events are compacted,
//!   and a watch that asks for a version older than the log gets 410 Gone);
//! - `uid`, `creationTimestamp` and `generation` (1, then +1 whenever anything outside
//!   `metadata` and `status` changes) are set here, never by clients; `managedFields` are
//!   stored as given (the API layer, `api/managed.rs`, computes them for client writes, and a
//!   controller's read-modify-write carries them over);
//! - deleting an object with finalizers only sets `deletionTimestamp`; the object goes away when
//!   an update removes the last finalizer;
//! - when an object is really removed, dependents whose only owner it was are deleted too
//!   (background garbage collection), and other dependents lose that owner reference.
//!
//! Writers hold a `std::sync::Mutex` for the duration of one write (never across an await).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::resources::{Registry, ResId};
use crate::status::ApiError;

/// Watch event kinds stored in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One write, as seen by watchers.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub res: ResId,
    pub ns: String,
    pub kind: EventType,
    /// The object after the write (for Deleted: the last state, with the delete's version).
    pub obj: Value,
    /// The object before the write, if any (lets label-filtered watches turn a MODIFIED that
    /// leaves the selection into DELETED, as the real server does).
    pub old: Option<Value>,
}

/// Maximum number of events kept for watch resumption.
pub const LOG_CAPACITY: usize = 20_000;

type Key = (ResId, String, String);

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    log: VecDeque<Arc<Event>>,
    /// Events with rv <= compacted are gone from the log.
    compacted: u64,
}

/// The store. Cheap to share behind an `Arc`.
pub struct Store {
    state: Mutex<State>,
    reg: Arc<Registry>,
    tx: watch::Sender<u64>,
}

/// Current time as Kubernetes formats it (RFC 3339, seconds, `Z`).
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A random RFC 4122 version-4 UUID.
pub fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-4{}-{}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        ["8", "9", "a", "b"][(b[8] & 3) as usize],
        &h[17..20],
        &h[20..32]
    )
}

/// `metadata.<field>` as str.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// Name and namespace of an object.
pub fn name_ns(obj: &Value) -> (String, String) {
    (
        meta_str(obj, "name").unwrap_or_default().to_string(),
        meta_str(obj, "namespace").unwrap_or_default().to_string(),
    )
}

/// True when `o` carries finalizer `f`.
pub(crate) fn has_finalizer(o: &Value, f: &str) -> bool {
    o.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x == f))
}

/// Adds finalizer `f` to `o` unless it is there.
pub(crate) fn add_finalizer(o: &mut Value, f: &str) {
    let fs = &mut o["metadata"]["finalizers"];
    if !fs.is_array() {
        *fs = json!([]);
    }
    if let Some(a) = fs.as_array_mut() {
        if !a.iter().any(|x| x == f) {
            a.push(json!(f));
        }
    }
}

/// Removes finalizer `f` from `o`.
pub(crate) fn remove_finalizer(o: &mut Value, f: &str) {
    if let Some(a) = o
        .pointer_mut("/metadata/finalizers")
        .and_then(Value::as_array_mut)
    {
        a.retain(|x| x != f);
    }
}

fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("kind");
        m.remove("apiVersion");
    }
    o
}

fn finalizers_empty(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(|a| a.is_empty())
}

impl Store {
    pub fn new(reg: Arc<Registry>) -> Self {
        let (tx, _) = watch::channel(0);
        Store {
            state: Mutex::new(State::default()),
            reg,
            tx,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (writes are single inserts), so
        // recover from poisoning instead of propagating it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribe to "something was written" notifications (value: latest resourceVersion).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    /// Wake the controllers (something outside the store changed).
    pub fn poke(&self) {
        self.tx.send_modify(|_| {});
    }

    /// The latest resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, res: ResId, ns: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(res, ns.to_string(), name.to_string()))
            .cloned()
    }

    /// All objects of a resource (in one namespace, or all), sorted by namespace and name,
    /// and the resourceVersion the list is consistent with.
    pub fn list(&self, res: ResId, ns: Option<&str>) -> (Vec<Value>, u64) {
        let st = self.lock();
        let items = st
            .objects
            .range((res, String::new(), String::new())..)
            .take_while(|((r, _, _), _)| *r == res)
            .filter(|((_, n, _), _)| ns.is_none_or(|want| want == n))
            .map(|(_, v)| v.clone())
            .collect();
        (items, st.rv)
    }

    /// Events after `rv` (exclusive), or 410 Gone when they were compacted away.
    pub fn events_after(&self, rv: u64) -> Result<Vec<Arc<Event>>, ApiError> {
        let st = self.lock();
        if rv < st.compacted {
            return Err(ApiError::gone(format!(
                "too old resource version: {} ({})",
                rv,
                st.compacted + 1
            )));
        }
        let start = st.log.partition_point(|e| e.rv <= rv);
        Ok(st.log.iter().skip(start).cloned().collect())
    }

    /// Drop the whole event log (tests use it to provoke 410 Gone).
    pub fn compact(&self) {
        let mut st = self.lock();
        st.log.clear();
        st.compacted = st.rv;
    }

    fn push_event(&self, st: &mut State, ev: Event) {
        st.log.push_back(Arc::new(ev));
        while st.log.len() > LOG_CAPACITY {
            if let Some(e) = st.log.pop_front() {
                st.compacted = e.rv;
            }
        }
    }

    fn notify(&self, rv: u64) {
        self.tx.send_replace(rv);
    }

    fn not_found(&self, res: ResId, name: &str) -> ApiError {
        let d = self.reg.def(res);
        ApiError::not_found(d.group, d.plural, name)
    }

    /// Create an object. `obj.metadata.name` (and namespace for namespaced resources) must be
    /// set. Server-owned metadata is (re)set here.
    pub fn create(&self, res: ResId, mut obj: Value) -> Result<Value, ApiError> {
        let d = self.reg.def(res).clone();
        let (name, ns) = name_ns(&obj);
        let mut st = self.lock();
        if d.namespaced {
            let ns_res = self.reg.by_plural("", "namespaces");
            if let Some(nsr) = ns_res {
                match st.objects.get(&(nsr, String::new(), ns.clone())) {
                    None => return Err(ApiError::not_found("", "namespaces", &ns)),
                    Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => {
                        return Err(ApiError::new(
                            403,
                            "Forbidden",
                            format!(
                                "{} \"{}\" is forbidden: unable to create new content in namespace {} because it is being terminated",
                                d.plural, name, ns
                            ),
                        ))
                    }
                    _ => {}
                }
            }
        }
        let key = (res, ns.clone(), name.clone());
        if st.objects.contains_key(&key) {
            return Err(ApiError::already_exists(d.group, d.plural, &name));
        }
        st.rv += 1;
        let rv = st.rv;
        let meta = obj
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("object must be a JSON object"))?
            .entry("metadata")
            .or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.insert("uid".into(), json!(new_uid()));
            m.insert("resourceVersion".into(), json!(rv.to_string()));
            m.insert("creationTimestamp".into(), json!(now_rfc3339()));
            m.insert("generation".into(), json!(1));
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            if !d.namespaced {
                m.remove("namespace");
            }
        }
        st.objects.insert(key, obj.clone());
        self.push_event(
            &mut st,
            Event {
                rv,
                res,
                ns,
                kind: EventType::Added,
                obj: obj.clone(),
                old: None,
            },
        );
        drop(st);
        self.notify(rv);
        Ok(obj)
    }

    /// Replace an object. With `expected_rv`, fails with 409 Conflict when the stored version
    /// differs. Server-owned metadata is kept from the stored object. Removing the last
    /// finalizer of an object being deleted removes it.
    pub fn update(
        &self,
        res: ResId,
        mut obj: Value,
        expected_rv: Option<&str>,
    ) -> Result<Value, ApiError> {
        let d = self.reg.def(res).clone();
        let (name, ns) = name_ns(&obj);
        let ns = if d.namespaced { ns } else { String::new() };
        let mut st = self.lock();
        let key = (res, ns.clone(), name.clone());
        let old = st
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| self.not_found(res, &name))?;
        let old_rv = meta_str(&old, "resourceVersion").unwrap_or_default();
        if let Some(want) = expected_rv {
            if want != old_rv {
                return Err(ApiError::conflict(
                    d.group,
                    d.plural,
                    &name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
        }
        if let Some(want) = meta_str(&obj, "uid") {
            if Some(want) != meta_str(&old, "uid") {
                return Err(ApiError::conflict(
                    d.group,
                    d.plural,
                    &name,
                    "Precondition failed: UID in precondition does not match the UID of the stored object",
                ));
            }
        }
        // Keep server-owned metadata.
        let gen = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let spec_changed = spec_part(&old) != spec_part(&obj);
        {
            let m = obj
                .get_mut("metadata")
                .and_then(Value::as_object_mut)
                .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                match old.pointer(&format!("/metadata/{f}")) {
                    Some(v) => {
                        m.insert(f.into(), v.clone());
                    }
                    None => {
                        m.remove(f);
                    }
                }
            }
            m.insert(
                "generation".into(),
                json!(if spec_changed { gen + 1 } else { gen }),
            );
            if !d.namespaced {
                m.remove("namespace");
            }
        }
        // Nothing changed: no new version, no event (like the real server).
        let mut cmp = obj.clone();
        if let Some(m) = cmp.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), json!(old_rv));
        }
        if cmp == old {
            return Ok(old);
        }
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let deleting = obj.pointer("/metadata/deletionTimestamp").is_some();
        if deleting && finalizers_empty(&obj) {
            st.objects.remove(&key);
            self.push_event(
                &mut st,
                Event {
                    rv,
                    res,
                    ns,
                    kind: EventType::Deleted,
                    obj: obj.clone(),
                    old: Some(old),
                },
            );
            let uid = meta_str(&obj, "uid").unwrap_or_default().to_string();
            self.collect_garbage(&mut st, &uid, false);
        } else {
            st.objects.insert(key, obj.clone());
            self.push_event(
                &mut st,
                Event {
                    rv,
                    res,
                    ns,
                    kind: EventType::Modified,
                    obj: obj.clone(),
                    old: Some(old),
                },
            );
        }
        let rv = st.rv;
        drop(st);
        self.notify(rv);
        Ok(obj)
    }

    /// Read-modify-write for controllers: `f` edits the object; no write when unchanged.
    pub fn mutate(
        &self,
        res: ResId,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Result<Value, ApiError> {
        let old = self
            .get(res, ns, name)
            .ok_or_else(|| self.not_found(res, name))?;
        let mut new = old.clone();
        f(&mut new);
        if new == old {
            return Ok(old);
        }
        let rv = meta_str(&old, "resourceVersion").map(str::to_string);
        self.update(res, new, rv.as_deref())
    }

    /// Delete an object. With finalizers, only marks it (deletionTimestamp) and returns it.
    /// `orphan` leaves dependents in place (their owner reference removed).
    pub fn delete(
        &self,
        res: ResId,
        ns: &str,
        name: &str,
        precondition_rv: Option<&str>,
        precondition_uid: Option<&str>,
        orphan: bool,
    ) -> Result<(Value, bool), ApiError> {
        let d = self.reg.def(res).clone();
        let mut st = self.lock();
        let key = (res, ns.to_string(), name.to_string());
        let old = st
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| self.not_found(res, name))?;
        if let Some(want) = precondition_rv {
            if Some(want) != meta_str(&old, "resourceVersion") {
                return Err(ApiError::conflict(
                    d.group,
                    d.plural,
                    name,
                    "Precondition failed: ResourceVersion in precondition does not match the stored object",
                ));
            }
        }
        if let Some(want) = precondition_uid {
            if Some(want) != meta_str(&old, "uid") {
                return Err(ApiError::conflict(
                    d.group,
                    d.plural,
                    name,
                    "Precondition failed: UID in precondition does not match the UID of the stored object",
                ));
            }
        }
        st.rv += 1;
        let rv = st.rv;
        let mut obj = old.clone();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let removed = if !finalizers_empty(&old) {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                // Already being deleted: nothing changes.
                st.rv -= 1;
                return Ok((old, false));
            }
            obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            st.objects.insert(key, obj.clone());
            self.push_event(
                &mut st,
                Event {
                    rv,
                    res,
                    ns: ns.to_string(),
                    kind: EventType::Modified,
                    obj: obj.clone(),
                    old: Some(old),
                },
            );
            false
        } else {
            st.objects.remove(&key);
            self.push_event(
                &mut st,
                Event {
                    rv,
                    res,
                    ns: ns.to_string(),
                    kind: EventType::Deleted,
                    obj: obj.clone(),
                    old: Some(old),
                },
            );
            let uid = meta_str(&obj, "uid").unwrap_or_default().to_string();
            self.collect_garbage(&mut st, &uid, orphan);
            true
        };
        let rv = st.rv;
        drop(st);
        self.notify(rv);
        Ok((obj, removed))
    }

    /// Remove dependents of `owner_uid` (or just the reference, when orphaning or when they
    /// have other owners). Runs with the lock held; recursion through a work list.
    fn collect_garbage(&self, st: &mut State, owner_uid: &str, orphan: bool) {
        let mut work = vec![(owner_uid.to_string(), orphan)];
        while let Some((uid, orphan)) = work.pop() {
            let dependents: Vec<Key> = st
                .objects
                .iter()
                .filter(|(_, v)| {
                    v.pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .is_some_and(|refs| {
                            refs.iter()
                                .any(|r| r.get("uid").and_then(Value::as_str) == Some(&uid))
                        })
                })
                .map(|(k, _)| k.clone())
                .collect();
            for key in dependents {
                let Some(old) = st.objects.get(&key).cloned() else {
                    continue;
                };
                let mut obj = old.clone();
                let mut others = 0;
                if let Some(refs) = obj
                    .pointer_mut("/metadata/ownerReferences")
                    .and_then(Value::as_array_mut)
                {
                    refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(&uid));
                    others = refs.len();
                    if refs.is_empty() {
                        if let Some(m) = obj["metadata"].as_object_mut() {
                            m.remove("ownerReferences");
                        }
                    }
                }
                st.rv += 1;
                let rv = st.rv;
                obj["metadata"]["resourceVersion"] = json!(rv.to_string());
                let delete = !orphan && others == 0;
                if delete && finalizers_empty(&obj) {
                    st.objects.remove(&key);
                    let dep_uid = meta_str(&obj, "uid").unwrap_or_default().to_string();
                    self.push_event(
                        st,
                        Event {
                            rv,
                            res: key.0,
                            ns: key.1.clone(),
                            kind: EventType::Deleted,
                            obj,
                            old: Some(old),
                        },
                    );
                    work.push((dep_uid, false));
                } else {
                    if delete && obj.pointer("/metadata/deletionTimestamp").is_none() {
                        obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                        obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                    }
                    st.objects.insert(key.clone(), obj.clone());
                    self.push_event(
                        st,
                        Event {
                            rv,
                            res: key.0,
                            ns: key.1.clone(),
                            kind: EventType::Modified,
                            obj,
                            old: Some(old),
                        },
                    );
                }
            }
        }
    }

    /// Every object (for persistence).
    pub fn dump(&self) -> (Vec<(ResId, Value)>, u64) {
        let st = self.lock();
        (
            st.objects
                .iter()
                .map(|((r, _, _), v)| (*r, v.clone()))
                .collect(),
            st.rv,
        )
    }

    /// Load objects as they were dumped (no events; the version counter continues).
    pub fn load(&self, objects: Vec<(ResId, Value)>, rv: u64) {
        let mut st = self.lock();
        for (res, obj) in objects {
            let (name, ns) = name_ns(&obj);
            st.objects.insert((res, ns, name), obj);
        }
        st.rv = st.rv.max(rv);
        st.compacted = st.rv;
    }
}
