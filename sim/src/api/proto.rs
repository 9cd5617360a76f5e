//! The Kubernetes protobuf encoding, read for the one case a stock kubectl needs it: its
//! typed clients (`kubectl auth can-i`) send access reviews as
//! `application/vnd.kubernetes.protobuf` and do not fall back to JSON on 415.
//!
//! Format: the magic `k8s\0`, then a `runtime.Unknown` message (`typeMeta` = 1 with
//! `apiVersion` = 1 and `kind` = 2, `raw` = 2 holding the object's own message). Only
//! SelfSubjectAccessReview and SelfSubjectRulesReview specs are decoded (field numbers of
//! k8s.io/api/authorization/v1/generated.proto); any other kind is 415, as before.
//!
//! Invariant: input is untrusted — every length is bounds-checked and a malformed message is
//! a 400, never a panic.

use serde_json::{json, Map, Value};

use crate::status::ApiError;

const MAGIC: &[u8] = b"k8s\0";

/// One field of a message: its number and, for length-delimited fields, the bytes.
struct Field<'a> {
    number: u64,
    bytes: Option<&'a [u8]>,
}

fn malformed() -> ApiError {
    ApiError::bad_request("malformed protobuf body")
}

fn varint(b: &[u8], pos: &mut usize) -> Result<u64, ApiError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos).ok_or_else(malformed)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(malformed())
}

/// The fields of one message, in order.
fn fields(b: &[u8]) -> Result<Vec<Field<'_>>, ApiError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let tag = varint(b, &mut pos)?;
        let number = tag >> 3;
        let bytes = match tag & 7 {
            0 => {
                varint(b, &mut pos)?;
                None
            }
            1 => {
                pos = pos.checked_add(8).ok_or_else(malformed)?;
                None
            }
            2 => {
                let len = usize::try_from(varint(b, &mut pos)?).map_err(|_| malformed())?;
                let end = pos.checked_add(len).ok_or_else(malformed)?;
                let s = b.get(pos..end).ok_or_else(malformed)?;
                pos = end;
                Some(s)
            }
            5 => {
                pos = pos.checked_add(4).ok_or_else(malformed)?;
                None
            }
            _ => return Err(malformed()),
        };
        if pos > b.len() {
            return Err(malformed());
        }
        out.push(Field { number, bytes });
    }
    Ok(out)
}

fn sub<'a>(fs: &[Field<'a>], n: u64) -> Option<&'a [u8]> {
    fs.iter()
        .rev()
        .find(|f| f.number == n)
        .and_then(|f| f.bytes)
}

/// String fields `(number, json name)` of a message as a JSON object (empty ones left out).
fn strings(b: &[u8], names: &[(u64, &str)]) -> Result<Map<String, Value>, ApiError> {
    let fs = fields(b)?;
    let mut m = Map::new();
    for (n, name) in names {
        if let Some(s) = sub(&fs, *n) {
            let s = std::str::from_utf8(s).map_err(|_| malformed())?;
            if !s.is_empty() {
                m.insert((*name).to_string(), json!(s));
            }
        }
    }
    Ok(m)
}

/// Decode a protobuf request body into the JSON object the rest of the API handles.
pub(crate) fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let rest = body.strip_prefix(MAGIC).ok_or_else(malformed)?;
    let unknown = fields(rest)?;
    let type_meta = strings(
        sub(&unknown, 1).unwrap_or_default(),
        &[(1, "apiVersion"), (2, "kind")],
    )?;
    let raw = fields(sub(&unknown, 2).unwrap_or_default())?;
    let spec = fields(sub(&raw, 2).unwrap_or_default())?;
    let kind = type_meta.get("kind").and_then(Value::as_str).unwrap_or("");
    let spec = match kind {
        "SelfSubjectAccessReview" => {
            let mut s = Map::new();
            if let Some(r) = sub(&spec, 1) {
                let attrs = strings(
                    r,
                    &[
                        (1, "namespace"),
                        (2, "verb"),
                        (3, "group"),
                        (4, "version"),
                        (5, "resource"),
                        (6, "subresource"),
                        (7, "name"),
                    ],
                )?;
                s.insert("resourceAttributes".into(), Value::Object(attrs));
            }
            if let Some(r) = sub(&spec, 2) {
                let attrs = strings(r, &[(1, "path"), (2, "verb")])?;
                s.insert("nonResourceAttributes".into(), Value::Object(attrs));
            }
            Value::Object(s)
        }
        "SelfSubjectRulesReview" => {
            let raw_spec = sub(&raw, 2).unwrap_or_default();
            Value::Object(strings(raw_spec, &[(1, "namespace")])?)
        }
        other => {
            return Err(ApiError::unsupported_media(format!(
                "the body of the request was in an unknown format (application/vnd.kubernetes.protobuf of {other:?}) - accepted media types include: application/json, application/yaml"
            )))
        }
    };
    Ok(json!({
        "apiVersion": type_meta.get("apiVersion").cloned().unwrap_or(json!("authorization.k8s.io/v1")),
        "kind": kind,
        "metadata": {},
        "spec": spec,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ld(n: u8, b: &[u8]) -> Vec<u8> {
        let mut v = vec![(n << 3) | 2, u8::try_from(b.len()).unwrap()];
        v.extend_from_slice(b);
        v
    }

    #[test]
    fn decodes_an_access_review_and_refuses_garbage() {
        let attrs = [
            ld(2, b"create"),
            ld(3, b"kubevirt.io"),
            ld(5, b"virtualmachines"),
        ]
        .concat();
        let spec = ld(1, &attrs);
        let raw = [ld(1, b""), ld(2, &spec)].concat();
        let tm = [
            ld(1, b"authorization.k8s.io/v1"),
            ld(2, b"SelfSubjectAccessReview"),
        ]
        .concat();
        let body = [MAGIC.to_vec(), ld(1, &tm), ld(2, &raw)].concat();
        let v = decode(&body).unwrap();
        assert_eq!(v["kind"], "SelfSubjectAccessReview");
        assert_eq!(
            v["spec"]["resourceAttributes"],
            json!({"verb": "create", "group": "kubevirt.io", "resource": "virtualmachines"})
        );
        assert_eq!(decode(b"k8s\0\x0a\xff").unwrap_err().code, 400);
        assert_eq!(decode(b"{}").unwrap_err().code, 400);
        let tm = [ld(1, b"v1"), ld(2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), ld(1, &tm)].concat();
        assert_eq!(decode(&body).unwrap_err().code, 415);
    }
}
