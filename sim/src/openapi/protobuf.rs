//! `/openapi/v2` as protobuf (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`),
//! the encoding kubectl asks for when it validates a manifest client-side against the v2
//! models (a `kind: List` manifest, for which it cannot leave validation to the server).
//!
//! Messages and field numbers are gnostic's `openapi.v2` (OpenAPIv2.proto): `Document`
//! (swagger = 1, info = 2, definitions = 9), `Schema` (31 fields), `NamedSchema`, `Any`
//! (whose `yaml` = 2 holds a value as JSON, which is YAML). Only what kubectl's models read
//! is encoded: the document's version and info, and every definition.
//!
//! Invariant: the encoding is derived from the JSON document's `definitions` alone, so the
//! two encodings of `/openapi/v2` never disagree about a schema.

use serde_json::Value;

/// A protobuf message being written.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(byte);
                return;
            }
            self.0.push(byte | 0x80);
        }
    }

    fn tag(&mut self, field: u64, wire: u64) {
        self.varint((field << 3) | wire);
    }

    fn bytes(&mut self, field: u64, b: &[u8]) {
        self.tag(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn string(&mut self, field: u64, s: &str) {
        self.bytes(field, s.as_bytes());
    }

    fn message(&mut self, field: u64, m: Pb) {
        self.bytes(field, &m.0);
    }

    fn bool(&mut self, field: u64, b: bool) {
        self.tag(field, 0);
        self.varint(u64::from(b));
    }

    fn int(&mut self, field: u64, i: i64) {
        self.tag(field, 0);
        // int64: two's complement, as protobuf encodes negative int64 varints.
        self.varint(i as u64);
    }

    fn double(&mut self, field: u64, f: f64) {
        self.tag(field, 1);
        self.0.extend_from_slice(&f.to_le_bytes());
    }
}

/// gnostic `Any` with the value in `yaml` (JSON text is YAML).
fn any(v: &Value) -> Pb {
    let mut m = Pb::default();
    m.string(2, &v.to_string());
    m
}

/// gnostic `Schema`.
fn schema(v: &Value) -> Pb {
    let mut m = Pb::default();
    let Some(o) = v.as_object() else { return m };
    let str_field = |m: &mut Pb, n, k: &str| {
        if let Some(s) = o.get(k).and_then(Value::as_str) {
            m.string(n, s);
        }
    };
    str_field(&mut m, 1, "$ref");
    str_field(&mut m, 2, "format");
    str_field(&mut m, 3, "title");
    str_field(&mut m, 4, "description");
    if let Some(d) = o.get("default") {
        m.message(5, any(d));
    }
    for (n, k) in [(6, "multipleOf"), (7, "maximum"), (9, "minimum")] {
        if let Some(f) = o.get(k).and_then(Value::as_f64) {
            m.double(n, f);
        }
    }
    for (n, k) in [
        (8, "exclusiveMaximum"),
        (10, "exclusiveMinimum"),
        (16, "uniqueItems"),
    ] {
        if let Some(b) = o.get(k).and_then(Value::as_bool) {
            m.bool(n, b);
        }
    }
    for (n, k) in [
        (11, "maxLength"),
        (12, "minLength"),
        (14, "maxItems"),
        (15, "minItems"),
        (17, "maxProperties"),
        (18, "minProperties"),
    ] {
        if let Some(i) = o.get(k).and_then(Value::as_i64) {
            m.int(n, i);
        }
    }
    str_field(&mut m, 13, "pattern");
    for r in o
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(s) = r.as_str() {
            m.string(19, s);
        }
    }
    for e in o
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(20, any(e));
    }
    match o.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            let mut a = Pb::default();
            a.bool(2, *b);
            m.message(21, a);
        }
        Some(s @ Value::Object(_)) => {
            let mut a = Pb::default();
            a.message(1, schema(s));
            m.message(21, a);
        }
        _ => {}
    }
    if let Some(t) = o.get("type").and_then(Value::as_str) {
        let mut ti = Pb::default();
        ti.string(1, t);
        m.message(22, ti);
    }
    match o.get("items") {
        Some(s @ Value::Object(_)) => {
            let mut it = Pb::default();
            it.message(1, schema(s));
            m.message(23, it);
        }
        Some(Value::Array(a)) => {
            let mut it = Pb::default();
            a.iter().for_each(|s| it.message(1, schema(s)));
            m.message(23, it);
        }
        _ => {}
    }
    for s in o
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(24, schema(s));
    }
    if let Some(p) = o.get("properties").and_then(Value::as_object) {
        let mut props = Pb::default();
        for (name, s) in p {
            props.message(1, named(name, schema(s)));
        }
        m.message(25, props);
    }
    str_field(&mut m, 26, "discriminator");
    if let Some(b) = o.get("readOnly").and_then(Value::as_bool) {
        m.bool(27, b);
    }
    if let Some(e) = o.get("example") {
        m.message(30, any(e));
    }
    for (k, x) in o.iter().filter(|(k, _)| k.starts_with("x-")) {
        m.message(31, named(k, any(x)));
    }
    m
}

/// `Named*`: name = 1, value = 2.
fn named(name: &str, value: Pb) -> Pb {
    let mut n = Pb::default();
    n.string(1, name);
    n.message(2, value);
    n
}

/// The gnostic `Document` of a Swagger 2.0 JSON document.
pub(super) fn document(v2: &Value) -> Vec<u8> {
    let mut doc = Pb::default();
    doc.string(1, v2["swagger"].as_str().unwrap_or("2.0"));
    let mut info = Pb::default();
    info.string(1, v2["info"]["title"].as_str().unwrap_or(""));
    info.string(2, v2["info"]["version"].as_str().unwrap_or(""));
    doc.message(2, info);
    let mut defs = Pb::default();
    for (name, s) in v2["definitions"].as_object().into_iter().flatten() {
        defs.message(1, named(name, schema(s)));
    }
    doc.message(9, defs);
    doc.0
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn encodes_schemas_with_gnostic_field_numbers() {
        let s = schema(&json!({"type": "string", "description": "d", "x-k": [1]}));
        // type = 22 (TypeItem { value = 1 }), description = 4, vendor_extension = 31.
        assert_eq!(
            s.0,
            [
                &[0x22, 1, b'd'][..],
                &[0xb2, 1, 8, 0x0a, 6][..],
                b"string",
                &[0xfa, 1, 12, 0x0a, 3][..],
                b"x-k",
                &[0x12, 5, 0x12, 3][..],
                b"[1]",
            ]
            .concat()
        );
        let mut p = Pb::default();
        p.varint(300);
        assert_eq!(p.0, [0xac, 0x02]);
    }
}
