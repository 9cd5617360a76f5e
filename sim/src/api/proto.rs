//! The Kubernetes protobuf encoding, read for what a stock kubectl sends that way: its typed
//! clients (`kubectl auth can-i`, `kubectl create namespace|configmap|secret`) send
//! `application/vnd.kubernetes.protobuf` and do not fall back to JSON on 415.
//!
//! Format: the magic `k8s\0`, then a `runtime.Unknown` message (`typeMeta` = 1 with
//! `apiVersion` = 1 and `kind` = 2, `raw` = 2 holding the object's own message). The kinds
//! below are decoded by a descriptor per message with the field numbers of
//! k8s.io/api's generated.proto (only the fields a client sets; server-owned metadata is
//! skipped); any other kind is 415, and the client has to send JSON (as every generic
//! kubectl command does).
//!
//! Invariant: input is untrusted — every length is bounds-checked and a malformed message is
//! a 400, never a panic.

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::status::ApiError;

const MAGIC: &[u8] = b"k8s\0";

/// How one field of a message maps to JSON.
enum F {
    Str(&'static str),
    /// `bytes`, base64 in JSON.
    Bytes(&'static str),
    Bool(&'static str),
    Msg(&'static str, &'static [(u64, F)]),
    RepStr(&'static str),
    StrMap(&'static str),
    /// `map<string, bytes>`, base64 values in JSON.
    BytesMap(&'static str),
}

const OBJECT_META: &[(u64, F)] = &[
    (1, F::Str("name")),
    (2, F::Str("generateName")),
    (3, F::Str("namespace")),
    (11, F::StrMap("labels")),
    (12, F::StrMap("annotations")),
    (14, F::RepStr("finalizers")),
];
const CONFIG_MAP: &[(u64, F)] = &[
    (1, F::Msg("metadata", OBJECT_META)),
    (2, F::StrMap("data")),
    (3, F::BytesMap("binaryData")),
    (4, F::Bool("immutable")),
];
const SECRET: &[(u64, F)] = &[
    (1, F::Msg("metadata", OBJECT_META)),
    (2, F::BytesMap("data")),
    (3, F::Str("type")),
    (4, F::StrMap("stringData")),
    (5, F::Bool("immutable")),
];
const NAMESPACE: &[(u64, F)] = &[
    (1, F::Msg("metadata", OBJECT_META)),
    (2, F::Msg("spec", &[(1, F::RepStr("finalizers"))])),
];
const RESOURCE_ATTRIBUTES: &[(u64, F)] = &[
    (1, F::Str("namespace")),
    (2, F::Str("verb")),
    (3, F::Str("group")),
    (4, F::Str("version")),
    (5, F::Str("resource")),
    (6, F::Str("subresource")),
    (7, F::Str("name")),
];
const ACCESS_REVIEW: &[(u64, F)] = &[
    (1, F::Msg("metadata", OBJECT_META)),
    (
        2,
        F::Msg(
            "spec",
            &[
                (1, F::Msg("resourceAttributes", RESOURCE_ATTRIBUTES)),
                (
                    2,
                    F::Msg(
                        "nonResourceAttributes",
                        &[(1, F::Str("path")), (2, F::Str("verb"))],
                    ),
                ),
            ],
        ),
    ),
];
const RULES_REVIEW: &[(u64, F)] = &[
    (1, F::Msg("metadata", OBJECT_META)),
    (2, F::Msg("spec", &[(1, F::Str("namespace"))])),
];

/// One field of a message: its number and its value (varint or length-delimited bytes).
struct Field<'a> {
    number: u64,
    varint: Option<u64>,
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
        let mut f = Field {
            number: tag >> 3,
            varint: None,
            bytes: None,
        };
        match tag & 7 {
            0 => f.varint = Some(varint(b, &mut pos)?),
            1 => pos = pos.checked_add(8).ok_or_else(malformed)?,
            2 => {
                let len = usize::try_from(varint(b, &mut pos)?).map_err(|_| malformed())?;
                let end = pos.checked_add(len).ok_or_else(malformed)?;
                f.bytes = Some(b.get(pos..end).ok_or_else(malformed)?);
                pos = end;
            }
            5 => pos = pos.checked_add(4).ok_or_else(malformed)?,
            _ => return Err(malformed()),
        }
        if pos > b.len() {
            return Err(malformed());
        }
        out.push(f);
    }
    Ok(out)
}

fn text(b: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|_| malformed())
}

/// A map entry message: `key` = 1, `value` = 2.
fn entry(b: &[u8]) -> Result<(String, &[u8]), ApiError> {
    let fs = fields(b)?;
    let key = fs
        .iter()
        .find(|f| f.number == 1)
        .and_then(|f| f.bytes)
        .unwrap_or_default();
    let value = fs
        .iter()
        .find(|f| f.number == 2)
        .and_then(|f| f.bytes)
        .unwrap_or_default();
    Ok((text(key)?, value))
}

/// Decode a message by its descriptor (unknown field numbers are skipped).
fn message(b: &[u8], desc: &[(u64, F)]) -> Result<Map<String, Value>, ApiError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut m = Map::new();
    for f in fields(b)? {
        let Some((_, kind)) = desc.iter().find(|(n, _)| *n == f.number) else {
            continue;
        };
        let bytes = f.bytes.unwrap_or_default();
        match kind {
            F::Str(k) => {
                m.insert((*k).into(), json!(text(bytes)?));
            }
            F::Bytes(k) => {
                m.insert((*k).into(), json!(b64.encode(bytes)));
            }
            F::Bool(k) => {
                m.insert((*k).into(), json!(f.varint.unwrap_or(0) != 0));
            }
            F::Msg(k, d) => {
                m.insert((*k).into(), Value::Object(message(bytes, d)?));
            }
            F::RepStr(k) => {
                let list = m.entry(*k).or_insert_with(|| json!([]));
                if let Some(a) = list.as_array_mut() {
                    a.push(json!(text(bytes)?));
                }
            }
            F::StrMap(k) | F::BytesMap(k) => {
                let (key, value) = entry(bytes)?;
                let value = match kind {
                    F::BytesMap(_) => json!(b64.encode(value)),
                    _ => json!(text(value)?),
                };
                let map = m.entry(*k).or_insert_with(|| json!({}));
                if let Some(o) = map.as_object_mut() {
                    o.insert(key, value);
                }
            }
        }
    }
    Ok(m)
}

/// Decode a protobuf request body into the JSON object the rest of the API handles.
pub(crate) fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let rest = body.strip_prefix(MAGIC).ok_or_else(malformed)?;
    let unknown = Value::Object(message(
        rest,
        &[
            (
                1,
                F::Msg(
                    "typeMeta",
                    &[(1, F::Str("apiVersion")), (2, F::Str("kind"))],
                ),
            ),
            (2, F::Bytes("raw")),
        ],
    )?);
    let kind = unknown
        .pointer("/typeMeta/kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(unknown.get("raw").and_then(Value::as_str).unwrap_or(""))
        .map_err(|_| malformed())?;
    let desc = match kind.as_str() {
        "ConfigMap" => CONFIG_MAP,
        "Secret" => SECRET,
        "Namespace" => NAMESPACE,
        "SelfSubjectAccessReview" => ACCESS_REVIEW,
        "SelfSubjectRulesReview" => RULES_REVIEW,
        other => {
            return Err(ApiError::unsupported_media(format!(
                "the body of the request was in an unknown format (application/vnd.kubernetes.protobuf of {other:?}) - accepted media types include: application/json, application/yaml"
            )))
        }
    };
    let mut obj = message(&raw, desc)?;
    obj.insert(
        "apiVersion".into(),
        unknown
            .pointer("/typeMeta/apiVersion")
            .cloned()
            .unwrap_or(json!("v1")),
    );
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
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
        let tm = [ld(1, b"v1"), ld(2, b"Pod")].concat();
        let body = [MAGIC.to_vec(), ld(1, &tm)].concat();
        assert_eq!(decode(&body).unwrap_err().code, 415);
    }
}
