//! VolumeGroupSnapshots (v1beta2): one instant over the selected PVCs, members restorable like
//! any VolumeSnapshot, deletion of the group with its members, and errors that name the cause.

use std::io::Write;
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde_json::{json, Value};
use virtguard_sim::{FaultRule, Sim};

use crate::common::{
    dyn_api, field, obj, prod, sha, start, wait_for, wait_phase, PVC, VOLUME_SNAPSHOT,
};

const GROUP_CLASSES: &str = r#"
storageClasses:
  - {name: sim-csi, driver: sim.csi.virtguard.io, default: true, snapshotClass: sim-csi-snap, groupSnapshotClass: sim-csi-group}
  - {name: slow, driver: slow.csi.example}
"#;

fn vgs_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    dyn_api(
        client,
        "groupsnapshot.storage.k8s.io",
        "v1beta2",
        "VolumeGroupSnapshot",
        "volumegroupsnapshots",
        ns,
    )
}

fn cluster_api(
    client: &Client,
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural),
    )
}

/// Creates PVC `prod/<name>` labelled `labels`, waits until it is bound, fills it with `seed`.
async fn group_pvc(sim: &Sim, client: &Client, name: &str, class: &str, labels: Value, seed: u8) {
    let pvcs = prod(client, PVC);
    pvcs.create(
        &PostParams::default(),
        &obj(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "labels": labels},
        "spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Block", "storageClassName": class,
                 "resources": {"requests": {"storage": "2Mi"}}}})),
    )
    .await
    .unwrap();
    wait_phase(&pvcs, name, "Bound", "PVC bound").await;
    let data: Vec<u8> = (0..2u32 << 20)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    std::fs::write(sim.pvc_path("prod", name).unwrap(), data).unwrap();
}

async fn create_group(client: &Client, name: &str, spec: Value) {
    vgs_api(client, "prod")
        .create(
            &PostParams::default(),
            &obj(json!({"apiVersion": "groupsnapshot.storage.k8s.io/v1beta2",
            "kind": "VolumeGroupSnapshot", "metadata": {"name": name}, "spec": spec})),
        )
        .await
        .unwrap();
}

/// The VolumeSnapshots in prod that name `group` in `status.volumeGroupSnapshotName`, by PVC.
async fn group_members(client: &Client, group: &str) -> std::collections::BTreeMap<String, Value> {
    let vs = prod(client, VOLUME_SNAPSHOT);
    vs.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .filter(|o| {
            o.pointer("/status/volumeGroupSnapshotName")
                .and_then(Value::as_str)
                == Some(group)
        })
        .map(|o| {
            (
                o["spec"]["source"]["persistentVolumeClaimName"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                o,
            )
        })
        .collect()
}

/// Writes the object's own status back with strict field validation: the server accepts only
/// what the reference schema allows, so this proves the controller wrote a valid object.
async fn assert_schema_valid(api: &Api<DynamicObject>, name: &str) {
    let o = serde_json::to_value(api.get(name).await.unwrap()).unwrap();
    api.patch_status(
        name,
        &PatchParams::default().validation_strict(),
        &Patch::Merge(json!({"status": o["status"]})),
    )
    .await
    .unwrap_or_else(|e| panic!("{name} does not pass its schema: {e}"));
}

#[tokio::test]
async fn group_snapshot_is_one_point_in_time_over_its_pvcs() {
    let (sim, client) = start(GROUP_CLASSES, None).await;
    for (name, seed) in [("pair-a", 1), ("pair-b", 2)] {
        group_pvc(
            &sim,
            &client,
            name,
            "sim-csi",
            json!({"group": "pair"}),
            seed,
        )
        .await;
    }
    // Same driver, not selected.
    group_pvc(
        &sim,
        &client,
        "loner",
        "sim-csi",
        json!({"group": "other"}),
        3,
    )
    .await;
    let want: Vec<String> = ["pair-a", "pair-b"]
        .iter()
        .map(|p| sha(&std::fs::read(sim.pvc_path("prod", p).unwrap()).unwrap()))
        .collect();

    create_group(
        &client,
        "g1",
        json!({"source": {"selector": {"matchLabels": {"group": "pair"}}}}),
    )
    .await;
    let groups = vgs_api(&client, "prod");
    let created = wait_for(5, "group creationTime", || async {
        field(&groups, "g1", "/status/creationTime").await
    })
    .await;
    // Written after the client saw creationTime: in neither member.
    for p in ["pair-a", "pair-b"] {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(sim.pvc_path("prod", p).unwrap())
            .unwrap();
        f.write_all(&[0xAB; 8192]).unwrap();
    }
    let g = serde_json::to_value(groups.get("g1").await.unwrap()).unwrap();
    assert_eq!(
        g["spec"]["volumeGroupSnapshotClassName"], "sim-csi-group",
        "the default class of the driver"
    );
    assert_eq!(
        g["status"]["readyToUse"], false,
        "ready only after snapshotReadyMs"
    );
    assert!(g["metadata"]["finalizers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "groupsnapshot.storage.kubernetes.io/volumegroupsnapshot-bound-protection"));
    let content_name = g["status"]["boundVolumeGroupSnapshotContentName"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        content_name,
        format!(
            "groupsnapcontent-{}",
            g["metadata"]["uid"].as_str().unwrap()
        )
    );

    let members = group_members(&client, "g1").await;
    assert_eq!(
        members.keys().collect::<Vec<_>>(),
        ["pair-a", "pair-b"],
        "one member per selected PVC"
    );
    for m in members.values() {
        assert_eq!(
            m["status"]["creationTime"], created,
            "one instant for every member"
        );
        let owner = &m["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["uid"].as_str()),
            (Some("VolumeGroupSnapshot"), g["metadata"]["uid"].as_str())
        );
        assert!(m["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("snapshot-"));
    }

    wait_for(5, "group readyToUse", || async {
        (field(&groups, "g1", "/status/readyToUse").await? == json!(true)).then_some(())
    })
    .await;
    let members = group_members(&client, "g1").await;
    let contents = cluster_api(
        &client,
        "groupsnapshot.storage.k8s.io",
        "v1beta2",
        "VolumeGroupSnapshotContent",
        "volumegroupsnapshotcontents",
    );
    let c = serde_json::to_value(contents.get(&content_name).await.unwrap()).unwrap();
    assert_eq!(c["spec"]["driver"], "sim.csi.virtguard.io");
    assert_eq!(c["spec"]["volumeGroupSnapshotRef"]["name"], "g1");
    assert_eq!(
        c["spec"]["source"]["volumeHandles"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(c["status"]["readyToUse"], true);
    assert!(c["status"]["volumeGroupSnapshotHandle"].as_str().is_some());
    let infos = c["status"]["volumeSnapshotInfoList"].as_array().unwrap();
    assert_eq!(infos.len(), 2);
    let vscs = cluster_api(
        &client,
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshotContent",
        "volumesnapshotcontents",
    );
    let mut images = Vec::new();
    for (pvc, want) in ["pair-a", "pair-b"].iter().zip(&want) {
        let m = &members[*pvc];
        let name = m["metadata"]["name"].as_str().unwrap();
        assert_eq!(m["status"]["readyToUse"], true);
        assert_eq!(m["status"]["restoreSize"], json!((2u64 << 20).to_string()));
        let vsc = serde_json::to_value(
            vscs.get(
                m["status"]["boundVolumeSnapshotContentName"]
                    .as_str()
                    .unwrap(),
            )
            .await
            .unwrap(),
        )
        .unwrap();
        assert_eq!(vsc["status"]["readyToUse"], true);
        assert_eq!(
            vsc["status"]["volumeGroupSnapshotHandle"],
            c["status"]["volumeGroupSnapshotHandle"]
        );
        assert_eq!(vsc["spec"]["volumeSnapshotRef"]["name"], name);
        assert!(infos
            .iter()
            .any(|i| i["snapshotHandle"] == vsc["status"]["snapshotHandle"]
                && i["volumeHandle"] == vsc["spec"]["source"]["volumeHandle"]
                && i["creationTime"] == vsc["status"]["creationTime"]
                && i["readyToUse"] == true
                && i["restoreSize"] == json!(2u64 << 20)));
        let image = sim.snapshot_path("prod", name).unwrap();
        assert_eq!(
            &sha(&std::fs::read(&image).unwrap()),
            want,
            "member of {pvc} is the disk at creationTime"
        );
        assert_ne!(
            &sha(&std::fs::read(sim.pvc_path("prod", pvc).unwrap()).unwrap()),
            want
        );
        images.push(image);
    }

    // Everything the controller wrote passes the reference schemas.
    assert_schema_valid(&groups, "g1").await;
    assert_schema_valid(&contents, &content_name).await;
    let vs_api = prod(&client, VOLUME_SNAPSHOT);
    for m in members.values() {
        assert_schema_valid(&vs_api, m["metadata"]["name"].as_str().unwrap()).await;
        assert_schema_valid(
            &vscs,
            m["status"]["boundVolumeSnapshotContentName"]
                .as_str()
                .unwrap(),
        )
        .await;
    }

    // A member restores like any VolumeSnapshot.
    let member_a = members["pair-a"]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let pvcs = prod(&client, PVC);
    pvcs.create(&PostParams::default(), &obj(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "from-member"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Mi"}},
                 "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": member_a}}})))
        .await
        .unwrap();
    wait_phase(&pvcs, "from-member", "Bound", "restored PVC bound").await;
    assert_eq!(
        sha(&std::fs::read(sim.pvc_path("prod", "from-member").unwrap()).unwrap()),
        want[0]
    );

    // One member cannot be deleted out of its group...
    vs_api.delete(&member_a, &Default::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(field(&vs_api, &member_a, "/metadata/deletionTimestamp")
        .await
        .is_some());
    assert!(images[0].exists(), "the group still holds its member");
    // ...deleting the group deletes the members, their contents and images, and its content.
    groups.delete("g1", &Default::default()).await.unwrap();
    wait_for(5, "group gone", || async {
        groups.get("g1").await.is_err().then_some(())
    })
    .await;
    assert!(group_members(&client, "g1").await.is_empty());
    for m in members.values() {
        assert!(vs_api
            .get(m["metadata"]["name"].as_str().unwrap())
            .await
            .is_err());
        assert!(vscs
            .get(
                m["status"]["boundVolumeSnapshotContentName"]
                    .as_str()
                    .unwrap()
            )
            .await
            .is_err());
    }
    assert!(contents.get(&content_name).await.is_err());
    assert!(
        images.iter().all(|i| !i.exists()),
        "member images are deleted"
    );
    // The restored PVC is a copy: it outlives the group.
    assert_eq!(
        sha(&std::fs::read(sim.pvc_path("prod", "from-member").unwrap()).unwrap()),
        want[0]
    );
}

#[tokio::test]
async fn group_snapshot_errors_name_the_cause() {
    let (sim, client) = start(GROUP_CLASSES, None).await;
    group_pvc(
        &sim,
        &client,
        "fast-1",
        "sim-csi",
        json!({"set": "mixed", "only": "fast"}),
        1,
    )
    .await;
    group_pvc(
        &sim,
        &client,
        "slow-1",
        "slow",
        json!({"set": "mixed", "only": "slow"}),
        2,
    )
    .await;
    let groups = vgs_api(&client, "prod");
    let error_of = |name: &'static str| {
        let groups = groups.clone();
        async move {
            let v = wait_for(5, name, || async {
                field(&groups, name, "/status/error/message").await
            })
            .await;
            assert_eq!(
                field(&groups, name, "/status/readyToUse").await,
                Some(json!(false))
            );
            v.as_str().unwrap().to_string()
        }
    };
    create_group(
        &client,
        "nothing",
        json!({"source": {"selector": {"matchLabels": {"set": "none"}}}}),
    )
    .await;
    let msg = error_of("nothing").await;
    assert!(
        msg.contains("not applied to any PVC") && msg.contains("none"),
        "{msg}"
    );

    create_group(
        &client,
        "noclass",
        json!({"source": {"selector": {"matchLabels": {"only": "slow"}}}}),
    )
    .await;
    let msg = error_of("noclass").await;
    assert!(
        msg.contains("cannot find default group snapshot class for driver slow.csi.example"),
        "{msg}"
    );

    create_group(
        &client,
        "named",
        json!({"volumeGroupSnapshotClassName": "gone",
        "source": {"selector": {"matchLabels": {"only": "fast"}}}}),
    )
    .await;
    let msg = error_of("named").await;
    assert!(msg.contains("\"gone\" not found"), "{msg}");

    create_group(&client, "mixed", json!({"source": {"selector": {"matchExpressions": [{"key": "set", "operator": "In", "values": ["mixed"]}]}}})).await;
    let msg = error_of("mixed").await;
    assert!(
        msg.contains("different CSI drivers") && msg.contains("slow-1: slow.csi.example"),
        "{msg}"
    );

    // Injected faults, targeted by a member PVC.
    sim.inject(FaultRule {
        op: "group-snapshot-error".into(),
        target: Some("prod/fast-1".into()),
        message: Some("array offline".into()),
        ..Default::default()
    });
    create_group(
        &client,
        "faulty",
        json!({"source": {"selector": {"matchLabels": {"only": "fast"}}}}),
    )
    .await;
    assert_eq!(error_of("faulty").await, "array offline");
    sim.clear_faults();
    sim.inject(FaultRule {
        op: "group-snapshot-never-ready".into(),
        target: Some("prod/slowpoke".into()),
        ..Default::default()
    });
    create_group(
        &client,
        "slowpoke",
        json!({"source": {"selector": {"matchLabels": {"only": "fast"}}}}),
    )
    .await;
    wait_for(5, "slowpoke creationTime", || async {
        field(&groups, "slowpoke", "/status/creationTime").await
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        field(&groups, "slowpoke", "/status/readyToUse").await,
        Some(json!(false))
    );
    assert_eq!(group_members(&client, "slowpoke").await.len(), 1);
    // None of the failed groups made members, a content or a finalizer.
    for g in ["nothing", "noclass", "named", "mixed", "faulty"] {
        assert!(group_members(&client, g).await.is_empty(), "{g}");
        assert!(
            field(&groups, g, "/status/boundVolumeGroupSnapshotContentName")
                .await
                .is_none(),
            "{g}"
        );
        groups.delete(g, &Default::default()).await.unwrap();
        assert!(
            groups.get(g).await.is_err(),
            "{g} has no finalizer to wait for"
        );
    }

    // A REST call fault on the group resource, like on any other.
    sim.inject(FaultRule {
        op: "create volumegroupsnapshots".into(),
        target: Some("prod/*".into()),
        times: Some(1),
        status: Some(500),
        ..Default::default()
    });
    let e = groups
        .create(&PostParams::default(), &obj(json!({"apiVersion": "groupsnapshot.storage.k8s.io/v1beta2", "kind": "VolumeGroupSnapshot",
            "metadata": {"name": "refused"}, "spec": {"source": {"selector": {"matchLabels": {"only": "fast"}}}}})))
        .await
        .unwrap_err();
    assert!(matches!(e, kube::Error::Api(s) if s.code == 500));
}
