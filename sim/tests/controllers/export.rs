//! VirtualMachineExport: a PVC in use keeps its export Pending, a VM export names the VM, and a
//! TTL deletes the export.

use std::time::Duration;

use kube::api::PostParams;
use serde_json::json;

use crate::common::{field, obj, prod, start, wait_for, wait_phase, EXPORT, SECRET, VMI};

#[tokio::test]
async fn export_waits_for_pvc_in_use_and_honours_ttl() {
    let (_sim, client) = start("", None).await;
    let exports = prod(&client, EXPORT);
    exports
        .create(&PostParams::default(), &obj(json!({"apiVersion": "export.kubevirt.io/v1", "kind": "VirtualMachineExport",
            "metadata": {"name": "busy"}, "spec": {"source": {"apiGroup": "", "kind": "PersistentVolumeClaim", "name": "db-root"}}})))
        .await
        .unwrap();
    let vmis = prod(&client, VMI);
    wait_phase(&vmis, "db", "Running", "db running").await;
    wait_for(5, "InUse", || async {
        (field(&exports, "busy", "/status/conditions/0/reason").await? == "InUse").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        field(&exports, "busy", "/status/phase").await,
        Some(json!("Pending"))
    );

    // A VM export of a stopped VM is Ready and names the VM; a short TTL deletes it.
    exports
        .create(
            &PostParams::default(),
            &obj(
                json!({"apiVersion": "export.kubevirt.io/v1", "kind": "VirtualMachineExport",
            "metadata": {"name": "vmex"}, "spec": {"ttlDuration": "2s", "tokenSecretRef": "mytoken",
            "source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "off"}}}),
            ),
        )
        .await
        .unwrap();
    let secrets = prod(&client, SECRET);
    secrets
        .create(&PostParams::default(), &obj(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mytoken"}, "stringData": {}, "data": {"token": "c2VjcmV0"}})))
        .await
        .unwrap();
    wait_phase(&exports, "vmex", "Ready", "vm export ready").await;
    assert_eq!(
        field(&exports, "vmex", "/status/virtualMachineName").await,
        Some(json!("off"))
    );
    assert_eq!(
        field(&exports, "vmex", "/status/tokenSecretRef").await,
        Some(json!("mytoken"))
    );
    assert!(field(&exports, "vmex", "/status/ttlExpirationTime")
        .await
        .is_some());
    wait_for(6, "TTL expiry", || async {
        exports.get("vmex").await.is_err().then_some(())
    })
    .await;
}
