//! Checks the modelled types against the reference schemas the repository carries (`reference/`
//! at the workspace root) and against realistic objects.
//!
//! - `every_modelled_field_exists_in_reference`: walks each type's [`Shape`] through the reference
//!   schema (Swagger 2.0 definitions with `$ref`s, or a CRD's openAPIV3Schema) and fails on any field
//!   path that does not exist there or has an incompatible JSON type.
//! - `identity_matches_reference`: group, version, kind, plural and scope match the reference.
//! - `fixtures_round_trip`: realistic objects (written from the schemas, with fields we do not
//!   model at several depths) survive deserialize → serialize unchanged.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use virtguard_api::schema::{ResourceInfo, SchemaSource, Shape};
use virtguard_api::*;

fn reference_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VIRTGUARD_REFERENCE_DIR") {
        return PathBuf::from(dir);
    }
    // The copy the repository carries: <workspace root>/reference (see its README).
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../reference")
}

struct Reference {
    kubevirt: Value,
    cdi: Value,
}

impl Reference {
    fn load() -> Self {
        let dir = reference_dir();
        let read = |f: &str| -> Value {
            let p = dir.join(f);
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| {
                panic!(
                    "reading {}: {e} (the repository's reference/ folder is missing: restore it from git, or set VIRTGUARD_REFERENCE_DIR)",
                    p.display()
                )
            });
            serde_json::from_str(&text).unwrap()
        };
        Self {
            kubevirt: read("kubevirt-openapi.json"),
            cdi: read("cdi-openapi.json"),
        }
    }

    fn crd(file: &str) -> Value {
        let p = reference_dir().join("snapshot-crds").join(file);
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        serde_yaml::from_str(&text).unwrap()
    }

    /// The schema node of a resource, and the document its `$ref`s resolve in.
    fn root<R: ResourceInfo + k8s_openapi::Resource>(&self) -> (Value, Value) {
        match R::SCHEMA_SOURCE {
            SchemaSource::KubeVirt => (
                self.kubevirt["definitions"][R::SCHEMA_DEFINITION].clone(),
                self.kubevirt.clone(),
            ),
            SchemaSource::Cdi => (
                self.cdi["definitions"][R::SCHEMA_DEFINITION].clone(),
                self.cdi.clone(),
            ),
            SchemaSource::SnapshotCrd => {
                let crd = Self::crd(R::SCHEMA_DEFINITION);
                let version = crd["spec"]["versions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|v| v["name"] == R::VERSION)
                    .unwrap_or_else(|| {
                        panic!("{} has no version {}", R::SCHEMA_DEFINITION, R::VERSION)
                    })
                    .clone();
                (version["schema"]["openAPIV3Schema"].clone(), Value::Null)
            }
        }
    }
}

/// Follows `$ref` (and a single-element `allOf`) within `doc`.
fn resolve<'a>(mut node: &'a Value, doc: &'a Value) -> &'a Value {
    loop {
        if let Some(r) = node.get("$ref").and_then(Value::as_str) {
            let name = r.trim_start_matches("#/definitions/");
            node = &doc["definitions"][name];
        } else if let Some([one]) = node
            .get("allOf")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
        {
            node = one;
        } else {
            return node;
        }
    }
}

/// Walks `shape` through `node`, collecting every mismatch as "path: problem".
fn walk(shape: &Shape, node: &Value, doc: &Value, path: &str, errors: &mut Vec<String>) {
    let node = resolve(node, doc);
    if node.is_null() {
        errors.push(format!("{path}: no schema (unresolved reference?)"));
        return;
    }
    // `type` is a name, or (KubeVirt's nullable fields) a list such as ["string", "null"].
    let types: Vec<&str> = match node.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let ty = types.iter().copied().find(|t| *t != "null");
    let expect = |want: &str, errors: &mut Vec<String>| {
        if ty != Some(want) {
            errors.push(format!("{path}: modelled as {want}, reference says {ty:?}"));
        }
    };
    match shape {
        Shape::String => expect("string", errors),
        Shape::Integer => {
            // CSI CRDs write int64 fields as integer; some KubeVirt ones as integer/int64.
            expect("integer", errors)
        }
        Shape::Number => {
            if !matches!(ty, Some("number") | Some("integer")) {
                errors.push(format!("{path}: modelled as number, reference says {ty:?}"));
            }
        }
        Shape::Boolean => expect("boolean", errors),
        Shape::Any | Shape::External(_) => {}
        Shape::Array(inner) => {
            expect("array", errors);
            walk(inner, &node["items"], doc, &format!("{path}[]"), errors);
        }
        Shape::Map(inner) => {
            let ap = &node["additionalProperties"];
            if ap.is_object() {
                walk(inner, ap, doc, &format!("{path}{{}}"), errors);
            } else {
                errors.push(format!(
                    "{path}: modelled as a map, reference has no additionalProperties"
                ));
            }
        }
        Shape::Object(fields) => {
            let props = node.get("properties").and_then(Value::as_object);
            let Some(props) = props else {
                errors.push(format!(
                    "{path}: modelled as an object with fields, reference has no properties"
                ));
                return;
            };
            for f in fields {
                let child = format!("{path}.{}", f.json);
                match props.get(f.json) {
                    Some(sub) => walk(&f.shape, sub, doc, &child, errors),
                    None => errors.push(format!("{child}: not in the reference schema")),
                }
            }
        }
    }
}

fn check<R: ResourceInfo + k8s_openapi::Resource>(reference: &Reference, errors: &mut Vec<String>) {
    let (root, doc) = reference.root::<R>();
    if root.is_null() {
        errors.push(format!(
            "{}: definition {} not found",
            R::KIND,
            R::SCHEMA_DEFINITION
        ));
        return;
    }
    walk(&R::object_shape(), &root, &doc, R::KIND, errors);
}

macro_rules! for_all_resources {
    ($mac:ident) => {
        $mac!(VirtualMachine);
        $mac!(VirtualMachineInstance);
        $mac!(VirtualMachineInstanceMigration);
        $mac!(VirtualMachineSnapshot);
        $mac!(VirtualMachineExport);
        $mac!(VirtualMachineBackup);
        $mac!(DataVolume);
        $mac!(UploadTokenRequest);
        $mac!(VolumeSnapshot);
        $mac!(VolumeSnapshotContent);
        $mac!(VolumeSnapshotClass);
        $mac!(VolumeGroupSnapshot);
        $mac!(VolumeGroupSnapshotClass);
    };
}

#[test]
fn every_modelled_field_exists_in_reference() {
    let reference = Reference::load();
    let mut errors = Vec::new();
    macro_rules! one {
        ($t:ty) => {
            check::<$t>(&reference, &mut errors)
        };
    }
    for_all_resources!(one);
    // CDIConfig's fields (its identity is checked on its own in `identity_matches_reference`).
    one!(CDIConfig);
    // FreezeUnfreezeTimeout is a request body, not a resource.
    walk(
        &<FreezeUnfreezeTimeout as schema::Schema>::shape(),
        &reference.kubevirt["definitions"]["v1.FreezeUnfreezeTimeout"],
        &reference.kubevirt,
        "FreezeUnfreezeTimeout",
        &mut errors,
    );
    // The guest-agent subresources' answers are not resources either.
    for (shape, def) in [
        (
            <VirtualMachineInstanceFileSystemList as schema::Schema>::shape(),
            "v1.VirtualMachineInstanceFileSystemList",
        ),
        (
            <VirtualMachineInstanceGuestAgentInfo as schema::Schema>::shape(),
            "v1.VirtualMachineInstanceGuestAgentInfo",
        ),
    ] {
        walk(
            &shape,
            &reference.kubevirt["definitions"][def],
            &reference.kubevirt,
            def,
            &mut errors,
        );
    }
    assert!(
        errors.is_empty(),
        "modelled fields not in the reference:\n{}",
        errors.join("\n")
    );
}

/// The walker really catches a wrong name and a wrong type (so the test above can fail).
#[test]
fn walker_reports_unknown_fields_and_wrong_types() {
    let reference = Reference::load();
    let bogus = Shape::Object(vec![
        schema::Field {
            json: "runStrategy",
            shape: Shape::Boolean,
        },
        schema::Field {
            json: "runStrateggy",
            shape: Shape::String,
        },
    ]);
    let mut errors = Vec::new();
    walk(
        &bogus,
        &reference.kubevirt["definitions"]["v1.VirtualMachineSpec"],
        &reference.kubevirt,
        "spec",
        &mut errors,
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains("spec.runStrategy: modelled as boolean"),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("spec.runStrateggy: not in the reference"),
        "{errors:?}"
    );
}

#[test]
fn identity_matches_reference() {
    let reference = Reference::load();
    let mut errors = Vec::new();
    macro_rules! one {
        ($t:ty) => {{
            type R = $t;
            let namespaced = std::any::type_name::<<R as k8s_openapi::Resource>::Scope>()
                .ends_with("NamespaceResourceScope");
            match <R as ResourceInfo>::SCHEMA_SOURCE {
                SchemaSource::SnapshotCrd => {
                    let crd = Reference::crd(<R as ResourceInfo>::SCHEMA_DEFINITION);
                    let spec = &crd["spec"];
                    let scope = if namespaced { "Namespaced" } else { "Cluster" };
                    for (what, got, want) in [
                        (
                            "group",
                            spec["group"].clone(),
                            Value::from(<R as k8s_openapi::Resource>::GROUP),
                        ),
                        (
                            "kind",
                            spec["names"]["kind"].clone(),
                            Value::from(<R as k8s_openapi::Resource>::KIND),
                        ),
                        (
                            "plural",
                            spec["names"]["plural"].clone(),
                            Value::from(<R as k8s_openapi::Resource>::URL_PATH_SEGMENT),
                        ),
                        ("scope", spec["scope"].clone(), Value::from(scope)),
                    ] {
                        if got != want {
                            errors.push(format!(
                                "{}: {what} is {want}, reference says {got}",
                                stringify!($t)
                            ));
                        }
                    }
                    let served = spec["versions"].as_array().unwrap().iter().any(|v| {
                        v["name"] == <R as k8s_openapi::Resource>::VERSION && v["served"] == true
                    });
                    if !served {
                        errors.push(format!("{}: version not served", stringify!($t)));
                    }
                }
                src => {
                    let doc = if src == SchemaSource::KubeVirt {
                        &reference.kubevirt
                    } else {
                        &reference.cdi
                    };
                    let group = <R as k8s_openapi::Resource>::GROUP;
                    let version = <R as k8s_openapi::Resource>::VERSION;
                    let plural = <R as k8s_openapi::Resource>::URL_PATH_SEGMENT;
                    let path = if namespaced {
                        format!("/apis/{group}/{version}/namespaces/{{namespace}}/{plural}")
                    } else {
                        format!("/apis/{group}/{version}/{plural}")
                    };
                    // CDI writes path parameters with their regex: `{namespace:[a-z0-9]...}`.
                    let op = doc["paths"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .find_map(|(p, ops)| (normalize_path(p) == path).then_some(ops));
                    let def = <R as ResourceInfo>::SCHEMA_DEFINITION;
                    match op {
                        None => {
                            errors.push(format!("{}: path {path} not in reference", stringify!($t)))
                        }
                        Some(ops) => {
                            // Creating at that path takes exactly our definition.
                            let body = ops["post"]["parameters"].as_array().and_then(|ps| {
                                ps.iter()
                                    .find(|p| p["in"] == "body")
                                    .map(|p| p["schema"]["$ref"].clone())
                            });
                            let want = Value::from(format!("#/definitions/{def}"));
                            if body.as_ref() != Some(&want) {
                                errors.push(format!(
                                    "{}: POST {path} takes {body:?}, not {want}",
                                    stringify!($t)
                                ));
                            }
                        }
                    }
                    let kind = def.rsplit('.').next().unwrap_or_default();
                    if kind != <R as k8s_openapi::Resource>::KIND {
                        errors.push(format!(
                            "{}: kind differs from definition {def}",
                            stringify!($t)
                        ));
                    }
                }
            }
        }};
    }
    for_all_resources!(one);
    // CDIConfig is cluster-scoped, but CDI's generated OpenAPI lists its create, get and update
    // only under a namespace path: check the kind, and that the cluster-wide list exists.
    if <CDIConfig as ResourceInfo>::SCHEMA_DEFINITION
        .rsplit('.')
        .next()
        != Some(<CDIConfig as k8s_openapi::Resource>::KIND)
    {
        errors.push("CDIConfig: kind differs from its definition".into());
    }
    let list = reference.cdi["paths"]["/apis/cdi.kubevirt.io/v1beta1/cdiconfigs"]["get"].clone();
    if list.is_null() {
        errors.push(
            "CDIConfig: GET /apis/cdi.kubevirt.io/v1beta1/cdiconfigs not in reference".into(),
        );
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// `{namespace:[a-z0-9][a-z0-9\\-]*}` → `{namespace}` (CDI's paths carry regexes).
fn normalize_path(p: &str) -> String {
    let mut out = String::new();
    let mut rest = p;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..=i]);
        let after = &rest[i + 1..];
        let end = after.find('}').unwrap_or(after.len());
        let inner = &after[..end];
        // Regexes can contain `}` only inside quantifiers we don't have; take the name part.
        out.push_str(inner.split(':').next().unwrap_or(inner));
        out.push('}');
        rest = after.get(end + 1..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

/// Drops `null` members: the API server treats an explicit null like an absent field, and our
/// `Option`s write neither.
fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

fn fixture(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&p).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn round_trip<T: DeserializeOwned + Serialize>(name: &str) -> T {
    let original = without_nulls(fixture(name));
    let typed: T = serde_json::from_value(original.clone())
        .unwrap_or_else(|e| panic!("{name}: does not deserialize: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    if back != original {
        panic!(
            "{name}: round trip changed the object\n--- original\n{}\n--- after\n{}",
            serde_json::to_string_pretty(&original).unwrap(),
            serde_json::to_string_pretty(&back).unwrap()
        );
    }
    typed
}

#[test]
fn fixtures_round_trip() {
    let vm: VirtualMachine = round_trip("virtualmachine.yaml");
    let spec = vm.spec.as_ref().unwrap();
    assert_eq!(spec.run_strategy.as_deref(), Some("Always"));
    let tmpl = spec.template.as_ref().unwrap().spec.as_ref().unwrap();
    let domain = tmpl.domain.as_ref().unwrap();
    let ifaces = domain
        .devices
        .as_ref()
        .unwrap()
        .interfaces
        .as_ref()
        .unwrap();
    assert_eq!(ifaces[1].mac_address.as_deref(), Some("02:42:ac:11:00:05"));
    assert_eq!(
        domain.firmware.as_ref().unwrap().uuid.as_deref(),
        Some("5d307ca9-b3ef-428c-8861-06e72d69f223")
    );
    // Unmodelled fields landed in `extra` at their depth.
    assert!(domain.devices.as_ref().unwrap().extra.contains_key("rng"));
    assert!(tmpl.extra.contains_key("affinity"));
    let nets = tmpl.networks.as_ref().unwrap();
    assert_eq!(
        nets[1].multus.as_ref().unwrap().network_name.as_deref(),
        Some("prod/vlan-100")
    );
    let vols = tmpl.volumes.as_ref().unwrap();
    assert!(vols[2].cloud_init_no_cloud.is_some());
    assert_eq!(
        vols[1]
            .persistent_volume_claim
            .as_ref()
            .unwrap()
            .claim_name
            .as_deref(),
        Some("db-1-data")
    );

    let vmi: VirtualMachineInstance = round_trip("virtualmachineinstance.yaml");
    assert!(vmi.agent_connected());
    assert_eq!(vmi.phase(), "Running");
    let st = vmi.status.as_ref().unwrap();
    assert_eq!(st.fs_freeze_status.as_deref(), Some("frozen"));
    assert!(st.volume_status.as_ref().unwrap()[1]
        .hotplug_volume
        .is_some());
    assert_eq!(st.migration_state.as_ref().unwrap().completed, Some(true));

    let _: VirtualMachineInstanceMigration = round_trip("virtualmachineinstancemigration.yaml");
    let _: VirtualMachineSnapshot = round_trip("virtualmachinesnapshot.yaml");
    let export: VirtualMachineExport = round_trip("virtualmachineexport.yaml");
    let internal = export.status.unwrap().links.unwrap().internal.unwrap();
    assert!(internal.cert.unwrap().contains("BEGIN CERTIFICATE"));
    let formats = internal.volumes.unwrap()[0].formats.clone().unwrap();
    assert_eq!(formats[0].format.as_deref(), Some("raw"));
    assert!(formats[0].url.as_deref().unwrap().ends_with("/disk.img"));

    let backup: VirtualMachineBackup = round_trip("virtualmachinebackup.yaml");
    assert_eq!(
        backup.status.unwrap().included_volumes.unwrap()[0]
            .map_endpoint
            .as_deref(),
        Some("https://backup.prod.svc/rootdisk/map")
    );
    let dv: DataVolume = round_trip("datavolume.yaml");
    assert!(dv.spec.unwrap().source.unwrap().upload.is_some());
    let cfg: CDIConfig = round_trip("cdiconfig.yaml");
    assert_eq!(
        cfg.status.unwrap().upload_proxy_url.as_deref(),
        Some("cdi-uploadproxy.cdi.svc:443")
    );
    let utr: UploadTokenRequest = round_trip("uploadtokenrequest.yaml");
    assert_eq!(
        utr.spec.unwrap().pvc_name.as_deref(),
        Some("db-1-copy-root")
    );
    let vs: VolumeSnapshot = round_trip("volumesnapshot.yaml");
    assert_eq!(
        vs.status.unwrap().creation_time.as_deref(),
        Some("2026-11-21T02:00:01Z")
    );
    let vsc: VolumeSnapshotContent = round_trip("volumesnapshotcontent.yaml");
    assert_eq!(vsc.status.unwrap().restore_size, Some(21_474_836_480));
    let class: VolumeSnapshotClass = round_trip("volumesnapshotclass.yaml");
    assert!(class.is_default());
    assert_eq!(class.driver, "rbd.csi.ceph.com");
    let _: VolumeGroupSnapshot = round_trip("volumegroupsnapshot.yaml");
    let gclass: VolumeGroupSnapshotClass = round_trip("volumegroupsnapshotclass.yaml");
    assert!(!gclass.is_default());
}

/// A read-modify-write keeps what we did not model: change the run strategy, keep the rest.
#[test]
fn read_modify_write_keeps_unmodelled_fields() {
    let original = without_nulls(fixture("virtualmachine.yaml"));
    let mut vm: VirtualMachine = serde_json::from_value(original.clone()).unwrap();
    vm.spec.as_mut().unwrap().run_strategy = Some("Halted".into());
    let mut back = serde_json::to_value(&vm).unwrap();
    assert_eq!(back["spec"]["runStrategy"], "Halted");
    back["spec"]["runStrategy"] = original["spec"]["runStrategy"].clone();
    assert_eq!(back, original);
    assert_eq!(
        back["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
            ["matchExpressions"][0]["operator"],
        "Exists"
    );
}

/// Our types are kube resources with the right URLs.
#[test]
fn kube_urls() {
    use kube::Resource;
    let cases: BTreeMap<&str, String> = [
        (
            "/apis/kubevirt.io/v1/namespaces/ns/virtualmachines",
            VirtualMachine::url_path(&(), Some("ns")),
        ),
        (
            "/apis/export.kubevirt.io/v1/namespaces/ns/virtualmachineexports",
            VirtualMachineExport::url_path(&(), Some("ns")),
        ),
        (
            "/apis/snapshot.storage.k8s.io/v1/volumesnapshotclasses",
            VolumeSnapshotClass::url_path(&(), None),
        ),
        (
            "/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/ns/uploadtokenrequests",
            UploadTokenRequest::url_path(&(), Some("ns")),
        ),
    ]
    .into_iter()
    .collect();
    for (want, got) in cases {
        assert_eq!(got, want);
    }
}

#[test]
fn api_version_and_kind_are_written() {
    let vs = VolumeSnapshot::new(
        "snap",
        Some("ns"),
        VolumeSnapshotSpec {
            source: Some(VolumeSnapshotSource {
                persistent_volume_claim_name: Some("pvc".into()),
                ..Default::default()
            }),
            volume_snapshot_class_name: Some("cls".into()),
            ..Default::default()
        },
    );
    let v = serde_json::to_value(&vs).unwrap();
    assert_eq!(v["apiVersion"], "snapshot.storage.k8s.io/v1");
    assert_eq!(v["kind"], "VolumeSnapshot");
    assert_eq!(v["spec"]["source"]["persistentVolumeClaimName"], "pvc");
    assert!(v.get("status").is_none());
}
