//! exporter/README.md's metric table is generated from the catalogue; this test fails when they
//! drift. Regenerate with `VIRTGUARD_UPDATE_README=1 cargo test -p virtguard-exporter --test readme`.
#![allow(clippy::unwrap_used)] // test code

const BEGIN: &str = "<!-- metrics-table:begin (generated from src/catalog.rs) -->\n";
const END: &str = "<!-- metrics-table:end -->";

#[test]
fn readme_metric_table_matches_the_catalogue() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text
        .find(BEGIN)
        .expect("begin marker in exporter/README.md")
        + BEGIN.len();
    let end = text.find(END).expect("end marker in exporter/README.md");
    let want = virtguard_exporter::catalog::markdown_table();
    if std::env::var("VIRTGUARD_UPDATE_README").is_ok_and(|v| v == "1") {
        let new = format!("{}{}{}", &text[..start], want, &text[end..]);
        std::fs::write(&path, new).unwrap();
        return;
    }
    assert_eq!(
        &text[start..end],
        want,
        "exporter/README.md metric table is stale"
    );
}
