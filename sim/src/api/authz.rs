//! `authorization.k8s.io/v1` self reviews (`kubectl auth can-i`): the sim has one bearer
//! token and it may do everything, so every access review is allowed and the rules review
//! lists `*` on everything.
//!
//! Invariant: a review is answered from its own `spec` and never stored (like the real
//! server's virtual review resources).

use serde_json::{json, Value};

/// Fill in the `status` of a SelfSubjectAccessReview or SelfSubjectRulesReview.
pub(crate) fn review(mut obj: Value) -> Value {
    let status = if obj["kind"] == "SelfSubjectRulesReview" {
        json!({
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            "incomplete": false,
        })
    } else {
        json!({
            "allowed": true,
            "reason": "virtguard-sim: the bearer token of the kubeconfig may do everything",
        })
    };
    obj["status"] = status;
    obj
}
