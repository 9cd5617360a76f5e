//! `/openapi/v2` and `/openapi/v3[/...]`: the documents of `crate::openapi`, with the content
//! negotiation kube-apiserver does.
//!
//! Invariant: `/openapi/v2` answers the first `Accept` clause it can — JSON, or gnostic
//! protobuf (kubectl's client-side validation asks for nothing else) — and 406 with an
//! empty body otherwise, like kube-openapi's handler; the v3 documents are JSON only (406
//! for a client that accepts only protobuf), which is what kubectl asks them in.

use hyper::body::Incoming;
use hyper::{Request, Response};

use super::not_found_path;
use crate::http::{full, query, Body};
use crate::status::ApiError;
use crate::Inner;

/// Serve `/openapi/<segs...>`.
pub(crate) fn serve(
    inner: &Inner,
    req: &Request<Incoming>,
    segs: &[&str],
) -> Result<Response<Body>, ApiError> {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        ));
    }
    let api = inner.openapi();
    let accept = accept_clauses(req);
    match segs {
        ["v2"] => {
            // kube-openapi's handler: the first clause that names JSON or protobuf wins;
            // protobuf is answered under its dotted (parseable) media type.
            for c in &accept {
                if media_matches(c, "application/json") {
                    return Ok(doc(
                        api.v2().to_vec(),
                        "application/json",
                        Some((api.v2_hash(false), true)),
                    ));
                }
                if media_matches(c, PROTOBUF_V2) || media_matches(c, PROTOBUF_V2_DEPRECATED) {
                    return Ok(doc(
                        api.v2_protobuf().to_vec(),
                        PROTOBUF_V2,
                        Some((api.v2_hash(true), true)),
                    ));
                }
            }
            Ok(not_acceptable())
        }
        ["v3", rest @ ..] => {
            if !accept.iter().any(|c| media_matches(c, "application/json")) {
                return Ok(not_acceptable());
            }
            if rest.is_empty() {
                let index = serde_json::to_vec(&api.v3_index()).unwrap_or_default();
                return Ok(doc(index, "application/json", None));
            }
            let d = api.v3(&rest.join("/")).ok_or_else(not_found_path)?;
            let asked = query(req).get("hash").cloned();
            let exact = asked.as_deref() == Some(d.hash.as_str());
            Ok(doc(
                d.body.clone(),
                "application/json",
                Some((&d.hash, exact)),
            ))
        }
        _ => Err(not_found_path()),
    }
}

/// The gnostic protobuf media type kube-apiserver answers with, and the older spelling
/// kubectl asks for (whose `@` Go's MIME parser rejects in a response).
const PROTOBUF_V2: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
const PROTOBUF_V2_DEPRECATED: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

/// The media ranges of the `Accept` header, in order (none given: `*/*`).
fn accept_clauses(req: &Request<Incoming>) -> Vec<String> {
    let clauses: Vec<String> = req
        .headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if clauses.is_empty() {
        vec!["*/*".into()]
    } else {
        clauses
    }
}

/// A media range (`*/*`, `application/*`, or exact) covers `media`.
fn media_matches(range: &str, media: &str) -> bool {
    let (rt, rs) = range.split_once('/').unwrap_or((range, ""));
    let (mt, ms) = media.split_once('/').unwrap_or((media, ""));
    (rt == "*" || rt == mt) && (rs == "*" || rs == ms)
}

/// 406 with an empty body, as kube-openapi's handler answers.
fn not_acceptable() -> Response<Body> {
    let mut r = Response::new(full(Vec::new()));
    *r.status_mut() = hyper::StatusCode::NOT_ACCEPTABLE;
    r
}

/// A document of media type `ctype`; with `etag`, its hash and whether the client asked
/// for exactly it (then the answer may be cached for good, like kube-apiserver's).
fn doc(body: Vec<u8>, ctype: &'static str, etag: Option<(&str, bool)>) -> Response<Body> {
    let mut r = Response::new(full(body));
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    h.insert(
        hyper::header::VARY,
        hyper::header::HeaderValue::from_static("Accept"),
    );
    if let Some((hash, exact)) = etag {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("\"{hash}\"")) {
            h.insert(hyper::header::ETAG, v);
        }
        h.insert(
            hyper::header::CACHE_CONTROL,
            hyper::header::HeaderValue::from_static(if exact {
                "public, immutable"
            } else {
                "no-cache, private"
            }),
        );
    }
    r
}
