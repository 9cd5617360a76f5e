//! Kubernetes `Status` errors as the real API server returns them.
//!
//! Every failed request gets a `{"kind":"Status","apiVersion":"v1","status":"Failure",...}` body
//! with the reason and code the real server uses for the same situation, so clients that match
//! on `reason` (kube's `ErrorResponse`) behave as they would against a cluster.

use serde_json::{json, Value};

/// One `StatusCause` (field-level detail of an Invalid error).
#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    pub reason: String,
    pub message: String,
    pub field: String,
}

/// A failed API call, rendered as a `Status` object (boxed: errors travel far).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError(Box<ApiErrorBody>);

impl std::ops::Deref for ApiError {
    type Target = ApiErrorBody;
    fn deref(&self) -> &ApiErrorBody {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut ApiErrorBody {
        &mut self.0
    }
}

/// The fields of an [`ApiError`].
#[derive(Debug, Clone, PartialEq)]
pub struct ApiErrorBody {
    pub code: u16,
    pub reason: String,
    pub message: String,
    pub details: Option<Value>,
    pub causes: Vec<Cause>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.reason, self.code, self.message)
    }
}

impl ApiError {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError(Box::new(ApiErrorBody {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: None,
            causes: Vec::new(),
        }))
    }

    fn with_details(mut self, group: &str, kind: &str, name: &str) -> Self {
        let mut d = json!({ "name": name, "kind": kind });
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        self.details = Some(d);
        self
    }

    /// `<plural>.<group> "name" not found`.
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{}\" not found", qualified(group, plural), name),
        )
        .with_details(group, plural, name)
    }

    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{}\" already exists", qualified(group, plural), name),
        )
        .with_details(group, plural, name)
    }

    pub fn conflict(group: &str, plural: &str, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": {}",
                qualified(group, plural),
                name,
                why
            ),
        )
        .with_details(group, plural, name)
    }

    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> Self {
        let list: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{} \"{}\" is invalid: {}", kind, name, list.join(", ")),
        )
        .with_details(group, kind, name);
        e.causes = causes;
        e
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn unsupported_media(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut details = self.details.clone();
        if !self.causes.is_empty() {
            let causes: Vec<Value> = self
                .causes
                .iter()
                .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                .collect();
            let d = details.get_or_insert_with(|| json!({}));
            d["causes"] = Value::Array(causes);
        }
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        // Some failures carry no reason at all (an apply configuration with undeclared fields).
        if self.reason.is_empty() {
            if let Some(m) = s.as_object_mut() {
                m.remove("reason");
            }
        }
        if let Some(d) = details {
            s["details"] = d;
        }
        s
    }
}

fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

/// A success `Status` (returned by some deletes).
pub fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
}
