//! REST semantics of the simulated API server, exercised through the real `kube` client.
#![allow(clippy::unwrap_used)] // test helpers

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde_json::json;
use virtguard_sim::{Sim, SimConfig};

async fn sim() -> (Sim, Client) {
    let sim = Sim::start(SimConfig::default()).await.expect("sim starts");
    let client = sim.client().await.expect("client");
    (sim, client)
}

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": {"k": "v"}
    }))
    .unwrap()
}

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn vm_api(client: &Client) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachine"),
        "virtualmachines",
    );
    Api::namespaced_with(client.clone(), "default", &ar)
}

#[tokio::test]
async fn wrong_token_gets_401_status() {
    let (sim, _client) = sim().await;
    let kc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(sim.kubeconfig_path()).unwrap()).unwrap();
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(
            kc["clusters"][0]["cluster"]["certificate-authority-data"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let r = http
        .get(format!("{}/api/v1/namespaces", sim.url()))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let s: serde_json::Value = r.json().await.unwrap();
    assert_eq!(s["kind"], "Status");
    assert_eq!(s["reason"], "Unauthorized");
    let r = http
        .get(format!("{}/api/v1/namespaces", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn create_get_conflicts_and_generate_name() {
    let (_sim, client) = sim().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let created = api
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.as_ref().is_some_and(|u| u.len() == 36));
    assert!(meta.creation_timestamp.is_some());
    let rv1 = meta.resource_version.clone().unwrap();

    let e = api_error(
        api.create(&PostParams::default(), &cm("a", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));

    let e = api_error(api.get("missing").await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));

    // PUT with the current version succeeds; with the stale one it conflicts.
    let mut c = created.clone();
    c.data = Some([("k".to_string(), "v2".to_string())].into());
    let updated = api.replace("a", &PostParams::default(), &c).await.unwrap();
    assert_ne!(
        updated.metadata.resource_version.as_deref(),
        Some(rv1.as_str())
    );
    let e = api_error(
        api.replace("a", &PostParams::default(), &c)
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));

    let mut g = cm("", json!({}));
    g.metadata.name = None;
    g.metadata.generate_name = Some("gen-".into());
    let made = api.create(&PostParams::default(), &g).await.unwrap();
    let name = made.metadata.name.unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");

    // Namespace must exist.
    let other: Api<ConfigMap> = Api::namespaced(client.clone(), "nope");
    let e = api_error(
        other
            .create(&PostParams::default(), &cm("x", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 404);
}

#[tokio::test]
async fn patches_merge_json_and_apply() {
    let (_sim, client) = sim().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &cm("p", json!({"a": "1"})))
        .await
        .unwrap();

    let p = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"m": "x", "k": null}})),
        )
        .await
        .unwrap();
    let data = p.data.unwrap();
    assert_eq!(data.get("m").map(String::as_str), Some("x"));
    assert!(!data.contains_key("k"));

    let jp: json_patch::Patch = serde_json::from_value(json!([
        {"op": "add", "path": "/metadata/labels/b", "value": "2"},
        {"op": "test", "path": "/data/m", "value": "x"}
    ]))
    .unwrap();
    let p = api
        .patch("p", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .unwrap();
    assert_eq!(
        p.metadata.labels.unwrap().get("b").map(String::as_str),
        Some("2")
    );

    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/data/m", "value": "nope"}]))
            .unwrap();
    let e = api_error(
        api.patch("p", &PatchParams::default(), &Patch::<()>::Json(failing))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 422);

    // Server-side apply creates, then updates.
    let pp = PatchParams::apply("virtguard-test");
    let applied = api
        .patch("ap", &pp, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ap"}, "data": {"x": "1"}})))
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap()["x"], "1");
    let applied = api
        .patch("ap", &pp, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ap"}, "data": {"x": "2"}})))
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap()["x"], "2");

    // Merge patch carrying a stale resourceVersion conflicts.
    let e = api_error(
        api.patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": "1"}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 409);

    // Strategic merge is refused for custom resources, like the real server.
    let vms = vm_api(&client);
    vms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "vm1"},
            "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {}}}}}
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    let e = api_error(
        vms.patch(
            "vm1",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 415);
}

#[tokio::test]
async fn list_selectors_and_pagination() {
    let (_sim, client) = sim().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for (n, tier) in [
        ("c1", "gold"),
        ("c2", "silver"),
        ("c3", "gold"),
        ("c4", "bronze"),
        ("c5", "gold"),
    ] {
        api.create(
            &PostParams::default(),
            &cm(n, json!({"tier": tier, "app": "x"})),
        )
        .await
        .unwrap();
    }
    let names = |l: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items
            .into_iter()
            .map(|c| c.metadata.name.unwrap())
            .collect()
    };
    let l = api
        .list(&ListParams::default().labels("tier=gold"))
        .await
        .unwrap();
    assert_eq!(names(l), ["c1", "c3", "c5"]);
    let l = api
        .list(&ListParams::default().labels("tier in (silver,bronze),app"))
        .await
        .unwrap();
    assert_eq!(names(l), ["c2", "c4"]);
    let l = api
        .list(&ListParams::default().labels("tier notin (gold)"))
        .await
        .unwrap();
    assert_eq!(names(l), ["c2", "c4"]);
    let l = api
        .list(&ListParams::default().fields("metadata.name=c4"))
        .await
        .unwrap();
    assert_eq!(names(l), ["c4"]);
    let all: Api<ConfigMap> = Api::all(client.clone());
    let l = all
        .list(&ListParams::default().fields("metadata.namespace=default"))
        .await
        .unwrap();
    assert_eq!(l.items.len(), 5);

    let mut seen = Vec::new();
    let mut lp = ListParams::default().limit(2);
    loop {
        let page = api.list(&lp).await.unwrap();
        let cont = page.metadata.continue_.clone();
        assert!(page.items.len() <= 2);
        seen.extend(names(page));
        match cont {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(seen, ["c1", "c2", "c3", "c4", "c5"]);
}

#[tokio::test]
async fn watch_events_bookmarks_and_gone() {
    let (sim, client) = sim().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &cm("before", json!({"w": "1"})))
        .await
        .unwrap();
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();

    let wp = WatchParams::default().labels("w=1").timeout(10);
    let mut stream = api.watch(&wp, &rv).await.unwrap().boxed();
    api.create(&PostParams::default(), &cm("w1", json!({"w": "1"})))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("other", json!({"w": "2"})))
        .await
        .unwrap();
    api.patch(
        "w1",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"z": "1"}})),
    )
    .await
    .unwrap();
    // Leaving the selection shows up as DELETED.
    api.patch(
        "w1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"w": "3"}}})),
    )
    .await
    .unwrap();
    api.delete("before", &DeleteParams::default())
        .await
        .unwrap();

    let mut got = Vec::new();
    while got.len() < 4 {
        let ev = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
            .await
            .expect("event in time")
            .unwrap()
            .expect("stream open");
        match ev {
            WatchEvent::Added(o) => got.push(format!("ADDED {}", o.metadata.name.unwrap())),
            WatchEvent::Modified(o) => got.push(format!("MODIFIED {}", o.metadata.name.unwrap())),
            WatchEvent::Deleted(o) => got.push(format!("DELETED {}", o.metadata.name.unwrap())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(
        got,
        ["ADDED w1", "MODIFIED w1", "DELETED w1", "DELETED before"]
    );

    // Bookmarks arrive when asked for.
    let wp = WatchParams::default().timeout(5);
    let mut stream = api.watch(&wp, "0").await.unwrap().boxed();
    let mut bookmark = false;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(4), stream.try_next())
        .await
        .unwrap()
    {
        if matches!(ev, WatchEvent::Bookmark(_)) {
            bookmark = true;
            break;
        }
    }
    assert!(bookmark, "no BOOKMARK within 4 s");

    // After compaction, an old version is gone: 410 in the stream, as the real server does.
    sim.compact();
    let mut stream = api
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410 error event, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_timeout_ends_stream() {
    let (_sim, client) = sim().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let started = std::time::Instant::now();
    let mut stream = api
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap()
        .boxed();
    while let Some(_ev) = stream.try_next().await.unwrap() {}
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn finalizers_and_owner_gc() {
    let (_sim, client) = sim().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut f = cm("fin", json!({}));
    f.metadata.finalizers = Some(vec!["virtguard.io/test".into()]);
    api.create(&PostParams::default(), &f).await.unwrap();
    api.delete("fin", &DeleteParams::default()).await.unwrap();
    let still = api.get("fin").await.unwrap();
    assert!(still.metadata.deletion_timestamp.is_some());
    api.patch(
        "fin",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_error(api.get("fin").await.unwrap_err()).code, 404);

    let owner = api
        .create(&PostParams::default(), &cm("owner", json!({})))
        .await
        .unwrap();
    let mut dep = cm("dep", json!({}));
    dep.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "owner".into(),
            uid: owner.metadata.uid.clone().unwrap(),
            ..Default::default()
        },
    ]);
    api.create(&PostParams::default(), &dep).await.unwrap();
    let mut orphan = dep.clone();
    orphan.metadata.name = Some("dep2".into());
    api.create(&PostParams::default(), &orphan).await.unwrap();
    api.delete("owner", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_error(api.get("dep").await.unwrap_err()).code, 404);
    assert_eq!(api_error(api.get("dep2").await.unwrap_err()).code, 404);

    // Orphan propagation keeps dependents and drops the reference.
    let owner = api
        .create(&PostParams::default(), &cm("owner2", json!({})))
        .await
        .unwrap();
    let mut d = dep.clone();
    d.metadata.name = Some("dep3".into());
    d.metadata.owner_references.as_mut().unwrap()[0].uid = owner.metadata.uid.unwrap();
    api.create(&PostParams::default(), &d).await.unwrap();
    api.delete("owner2", &DeleteParams::orphan()).await.unwrap();
    let kept = api.get("dep3").await.unwrap();
    assert!(kept.metadata.owner_references.is_none());

    // Precondition on resourceVersion.
    let e = api_error(
        api.delete(
            "dep3",
            &DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    resource_version: Some("1".into()),
                    uid: None,
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 409);
}

#[tokio::test]
async fn status_subresource_is_separate() {
    let (_sim, client) = sim().await;
    let vms = vm_api(&client);
    let created = vms
        .create(&PostParams::default(), &serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "s1"},
            "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {}}}}},
            "status": {"printableStatus": "Bogus"}
        })).unwrap())
        .await
        .unwrap();
    assert_eq!(
        created.data["status"]["printableStatus"],
        serde_json::Value::Null
    );
    assert_eq!(created.metadata.generation, Some(1));
    let s = vms
        .patch_status("s1", &PatchParams::default(), &Patch::Merge(json!({"status": {"printableStatus": "Stopped"}, "spec": {"runStrategy": "Always"}})))
        .await
        .unwrap();
    assert_eq!(s.data["status"]["printableStatus"], "Stopped");
    assert_eq!(
        s.data["spec"]["runStrategy"], "Halted",
        "status writes must not change spec"
    );
    assert_eq!(s.metadata.generation, Some(1));
    let m = vms
        .patch(
            "s1",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"printableStatus": "X"}, "metadata": {"labels": {"a": "b"}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        m.data["status"]["printableStatus"], "Stopped",
        "main writes must not change status"
    );
    assert_eq!(
        m.metadata.generation,
        Some(1),
        "labels do not bump generation"
    );
}

#[tokio::test]
async fn discovery_finds_kubevirt_and_snapshot_groups() {
    let (_sim, client) = sim().await;
    let d = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .unwrap();
    let groups: Vec<String> = d.groups().map(|g| g.name().to_string()).collect();
    for g in [
        "kubevirt.io",
        "snapshot.storage.k8s.io",
        "export.kubevirt.io",
        "cdi.kubevirt.io",
        "",
    ] {
        assert!(
            groups.iter().any(|x| x == g),
            "group {g:?} missing in {groups:?}"
        );
    }
    let (ar, caps) = kube::discovery::pinned_kind(
        &client,
        &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachineInstance"),
    )
    .await
    .unwrap();
    assert_eq!(ar.plural, "virtualmachineinstances");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    let v = client.apiserver_version().await.unwrap();
    assert_eq!(v.major, "1");
    let ns: Api<Namespace> = Api::all(client.clone());
    assert!(ns.get("default").await.is_ok());
}

#[tokio::test]
async fn kube_runtime_watcher_sees_changes() {
    use kube::runtime::{watcher, WatchStreamExt};
    let (_sim, client) = sim().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &cm("pre", json!({})))
        .await
        .unwrap();
    for cfg in [
        watcher::Config::default(),
        watcher::Config::default().streaming_lists(),
    ] {
        let mut s = watcher(api.clone(), cfg).applied_objects().boxed();
        let name = format!("new-{}", rand::random::<u16>());
        let mut seen = Vec::new();
        let mut created = false;
        while !seen.contains(&name) {
            let o = tokio::time::timeout(Duration::from_secs(5), s.try_next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            seen.push(o.metadata.name.unwrap());
            if !created && seen.iter().any(|n| n == "pre") {
                api.create(&PostParams::default(), &cm(&name, json!({})))
                    .await
                    .unwrap();
                created = true;
            }
        }
        assert!(seen.iter().position(|n| n == "pre") < seen.iter().position(|n| *n == name));
    }
}
