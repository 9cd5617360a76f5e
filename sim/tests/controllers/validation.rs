//! Schema validation of the API server, like structural CRDs: wrong types and missing required
//! fields are refused with causes, unknown fields pruned (or refused under strict validation).

use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::common::{obj, prod, start, CONFIG_MAP, VM, VOLUME_SNAPSHOT};

#[tokio::test]
async fn validation_like_structural_crds() {
    let (_sim, client) = start("", None).await;
    let vms = prod(&client, VM);
    let bad = vms
        .create(&PostParams::default(), &obj(json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "bad"}, "spec": {"runStrategy": 5, "template": {"spec": {"domain": {"devices": {}}}}}})))
        .await
        .unwrap_err();
    let kube::Error::Api(s) = bad else { panic!() };
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    let causes = s.details.unwrap().causes;
    assert!(
        causes
            .iter()
            .any(|c| c.field == "spec.runStrategy" && c.reason == "FieldValueTypeInvalid"),
        "{causes:?}"
    );

    let missing = vms
        .create(&PostParams::default(), &obj(json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "nospec"}})))
        .await
        .unwrap_err();
    let kube::Error::Api(s) = missing else {
        panic!()
    };
    assert_eq!(s.code, 422);
    assert!(s
        .details
        .unwrap()
        .causes
        .iter()
        .any(|c| c.field == "spec" && c.reason == "FieldValueRequired"));

    // Unknown fields are pruned...
    let made = vms
        .create(&PostParams::default(), &obj(json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "extra"},
            "spec": {"bogus": 1, "runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {}}}}}})))
        .await
        .unwrap();
    assert!(made.data["spec"].get("bogus").is_none());
    assert_eq!(made.data["spec"]["runStrategy"], "Halted");
    // ...but a server-side apply configuration with an undeclared field cannot be typed at
    // all: kube-apiserver (1.37, checked with the same request) answers 500 without a reason,
    // whatever fieldValidation says.
    let strict = vms
        .patch(
            "extra",
            &PatchParams::apply("t").validation_strict(),
            &Patch::Apply(
                json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "extra"}, "spec": {"bogus": 2}}),
            ),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(s) = strict else {
        panic!()
    };
    assert_eq!(s.code, 500);
    assert!(
        s.message
            .contains(".spec.bogus: field not declared in schema"),
        "{}",
        s.message
    );

    // CSI CRD schema: VolumeSnapshot needs spec.source.
    let vs = prod(&client, VOLUME_SNAPSHOT);
    let e = vs
        .create(&PostParams::default(), &obj(json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot", "metadata": {"name": "x"}, "spec": {}})))
        .await
        .unwrap_err();
    let kube::Error::Api(s) = e else { panic!() };
    assert_eq!(s.code, 422);
    assert!(s
        .details
        .unwrap()
        .causes
        .iter()
        .any(|c| c.field == "spec.source"));

    // Core kinds through k8s-openapi types.
    let cms = prod(&client, CONFIG_MAP);
    let e = cms
        .create(&PostParams::default(), &obj(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": 1}})))
        .await
        .unwrap_err();
    let kube::Error::Api(s) = e else { panic!() };
    assert_eq!(s.code, 422);
}
