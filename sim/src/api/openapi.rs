//! `/openapi/v2` and `/openapi/v3[/...]`: the documents of `crate::openapi`, with the content
//! negotiation kube-apiserver does.
//!
//! Invariant: JSON is answered whenever the `Accept` header allows it; a client that accepts
//! only protobuf (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`, which the
//! sim does not encode) gets 406 NotAcceptable, as from a server without that encoding, and
//! kubectl then uses the v3 documents (JSON) instead.

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
    accepts_json(req)?;
    let api = inner.openapi();
    match segs {
        ["v2"] => Ok(json_bytes(api.v2().to_vec(), None)),
        ["v3"] => Ok(json_bytes(
            serde_json::to_vec(&api.v3_index()).unwrap_or_default(),
            None,
        )),
        ["v3", rest @ ..] => {
            let doc = api.v3(&rest.join("/")).ok_or_else(not_found_path)?;
            let asked = query(req).get("hash").cloned();
            Ok(json_bytes(
                doc.body.clone(),
                Some((&doc.hash, asked.as_deref() == Some(doc.hash.as_str()))),
            ))
        }
        _ => Err(not_found_path()),
    }
}

/// 406 unless the client accepts JSON.
fn accepts_json(req: &Request<Incoming>) -> Result<(), ApiError> {
    let accept = req
        .headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    if accept.trim().is_empty() {
        return Ok(());
    }
    let ok = accept.split(',').any(|t| {
        let t = t.split(';').next().unwrap_or("").trim();
        matches!(t, "application/json" | "application/*" | "*/*")
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            406,
            "NotAcceptable",
            "only the following media types are accepted: application/json",
        ))
    }
}

/// A JSON document; with `etag`, its hash and whether the client asked for exactly it
/// (then the answer may be cached for good, like kube-apiserver's).
fn json_bytes(body: Vec<u8>, etag: Option<(&str, bool)>) -> Response<Body> {
    let mut r = Response::new(full(body));
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
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
