//! WATCH: a stream of `{"type","object"}` lines from a resourceVersion, with bookmarks.
//!
//! Invariants: events are sent in resourceVersion order with nothing skipped; an object that
//! leaves the label/field selection is sent as DELETED and one that enters it as ADDED; a
//! start version older than the event log gets one `ERROR` 410 Expired event; the stream
//! ends at `timeoutSeconds`, when the client goes, or when the sim stops.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use serde_json::{json, Value};

use super::{out, Target};
use crate::http::Body;
use crate::resources::ResourceDef;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::EventType;
use crate::Inner;

pub(crate) fn watch(
    inner: Arc<Inner>,
    t: &Target,
    def: &ResourceDef,
    q: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let mut fsel = q.get("fieldSelector").cloned().unwrap_or_default();
    if let Some(n) = &t.name {
        // Legacy /watch/.../{name} form.
        if !fsel.is_empty() {
            fsel.push(',');
        }
        fsel.push_str(&format!("metadata.name={n}"));
    }
    let ls = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?;
    let fs = FieldSelector::parse(&fsel)?;
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let initial_events = q.get("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1800)
        .min(3600);
    let rv_param = q.get("resourceVersion").cloned().unwrap_or_default();
    let def = def.clone();
    let version = t.version.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let res = t.res;
    let ns = t.ns.clone();
    let ev_line = move |typ: &str, obj: Value| -> Bytes {
        let mut b = serde_json::to_vec(&json!({"type": typ, "object": obj})).unwrap_or_default();
        b.push(b'\n');
        Bytes::from(b)
    };
    let bookmark = {
        let def = def.clone();
        let version = version.clone();
        move |rv: u64, initial_end: bool| -> Value {
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if initial_end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            json!({"kind": def.kind, "apiVersion": def.api_version(&version), "metadata": meta})
        }
    };
    let matches = {
        let ls = ls.clone();
        let fs = fs.clone();
        move |o: &Value| ls.matches(o) && fs.matches(o)
    };
    // Establish the starting point synchronously so the response reflects the request time.
    let mut initial: Vec<Bytes> = Vec::new();
    let mut pos: u64;
    let mut gone: Option<ApiError> = None;
    if rv_param.is_empty() || rv_param == "0" || initial_events {
        let (items, rv) = inner.store.list(res, ns.as_deref());
        for o in items.into_iter().filter(|o| matches(o)) {
            initial.push(ev_line("ADDED", out(&def, &version, o)));
        }
        pos = rv;
        if initial_events && bookmarks {
            initial.push(ev_line("BOOKMARK", bookmark(rv, true)));
        }
    } else {
        pos = rv_param
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv_param:?}")))?;
        if let Err(e) = inner.store.events_after(pos) {
            gone = Some(e);
        }
    }
    let mut notify = inner.store.subscribe();
    let stop = inner.stop.clone();
    tokio::spawn(async move {
        for b in initial {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        if let Some(e) = gone {
            let _ = tx.send(ev_line("ERROR", e.to_status())).await;
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut last_bookmark = tokio::time::Instant::now();
        loop {
            let events = match inner.store.events_after(pos) {
                Ok(e) => e,
                Err(e) => {
                    let _ = tx.send(ev_line("ERROR", e.to_status())).await;
                    return;
                }
            };
            for e in events {
                pos = e.rv;
                if e.res != res || ns.as_deref().is_some_and(|n| n != e.ns) {
                    continue;
                }
                let now_m = matches(&e.obj);
                let was_m = e.old.as_ref().is_some_and(&matches);
                let typ = match e.kind {
                    EventType::Added if now_m => "ADDED",
                    EventType::Deleted if now_m || was_m => "DELETED",
                    EventType::Modified if now_m && was_m => "MODIFIED",
                    EventType::Modified if now_m => "ADDED",
                    EventType::Modified if was_m => "DELETED",
                    _ => continue,
                };
                if tx
                    .send(ev_line(typ, out(&def, &version, e.obj.clone())))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if bookmarks && last_bookmark.elapsed() >= Duration::from_secs(1) {
                last_bookmark = tokio::time::Instant::now();
                if tx
                    .send(ev_line("BOOKMARK", bookmark(pos, false)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            tokio::select! {
                _ = notify.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(1000)) => {}
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                _ = stop.cancelled() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
    });
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream.boxed())));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}
