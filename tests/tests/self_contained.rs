//! A user's clone builds and tests on its own: no file of the checkout reaches a path outside it
//! (issue 23). The scanner and its own tests are in `virtguard_e2e::checkout`.

use virtguard_e2e::{checkout, workspace_root};

#[test]
fn no_file_refers_to_a_path_outside_the_checkout() {
    let root = workspace_root();
    let found = checkout::outside_references(&root)
        .unwrap_or_else(|e| panic!("scanning {}: {e}", root.display()));
    let listed: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert!(
        found.is_empty(),
        "a clone has nothing beside it; carry what these read inside the repository \
         (schemas go in reference/, see its README):\n{}",
        listed.join("\n")
    );
}

#[test]
fn the_reference_documents_the_build_embeds_are_in_the_checkout() {
    let dir = workspace_root().join("reference");
    for f in [
        "README.md",
        "kubevirt-openapi.json",
        "cdi-openapi.json",
        "snapshot-crds/snapshot.storage.k8s.io_volumesnapshots.yaml",
        "snapshot-crds/groupsnapshot.storage.k8s.io_volumegroupsnapshots.yaml",
    ] {
        assert!(
            dir.join(f).is_file(),
            "reference/{f} is missing from the checkout"
        );
    }
}
