//! What a clone carries: finds references from the checkout's own files to paths outside it.
//!
//! Invariant checked: a user's `git clone` into an empty folder builds, runs its scripts and passes
//! its tests with nothing beside it. So no source, build, script or documentation file may name a
//! sibling folder of the checkout (the `shared/` folder our own machines happen to have), and no
//! relative path in them may climb above the checkout root.
//!
//! The scan is lexical. Every path-like token that contains `../` is normalised twice — relative
//! to the directory of the file it appears in (how `include_str!`, `#[path]`, Cargo `path =` and
//! Markdown links resolve) and relative to the checkout root (how scripts run from the root see
//! it) — and reported when it escapes the root both ways. A path naming the `shared` folder
//! beside the checkout is reported outright. `target/`, `.git/` and the upstream documents in `reference/` (data, not ours) are
//! not scanned.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// One reference to a path outside the checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutsideReference {
    /// The file, relative to the checkout root.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// The path-like token as written.
    pub token: String,
}

impl fmt::Display for OutsideReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: `{}` points outside the checkout",
            self.file.display(),
            self.line,
            self.token
        )
    }
}

/// Directories never scanned: build output, git's own, and the upstream schema documents.
const SKIPPED_DIRS: &[&str] = &["target", ".git", "reference"];

/// File kinds that are source, build, script or documentation files.
const SCANNED_EXTENSIONS: &[&str] = &[
    "rs", "toml", "sh", "py", "yaml", "yml", "md", "go", "mod", "json", "txt", "cfg",
];

/// Scans every file of the checkout at `root`.
pub fn outside_references(root: &Path) -> std::io::Result<Vec<OutsideReference>> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let mut entries = std::fs::read_dir(&dir)?.collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                if !(dir == root && SKIPPED_DIRS.contains(&name.as_ref())) {
                    dirs.push(path);
                }
            } else if kind.is_file() && is_scanned(&path)? {
                let Ok(text) = std::fs::read_to_string(&path) else {
                    continue; // not UTF-8: not a source or script file
                };
                let rel = path.strip_prefix(root).unwrap_or(&path);
                found.extend(scan_text(rel, &text));
            }
        }
    }
    found.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    Ok(found)
}

fn is_scanned(path: &Path) -> std::io::Result<bool> {
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        return Ok(SCANNED_EXTENSIONS.contains(&ext));
    }
    // Files without an extension: scripts (a shebang), and `.ci/run`-like entry points.
    let mut head = [0u8; 2];
    let mut file = std::fs::File::open(path)?;
    let n = std::io::Read::read(&mut file, &mut head)?;
    Ok(n == 2 && &head == b"#!")
}

/// Scans one file's text; `rel` is its path relative to the checkout root.
pub fn scan_text(rel: &Path, text: &str) -> Vec<OutsideReference> {
    let dir = rel.parent().unwrap_or(Path::new(""));
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        for token in path_tokens(line) {
            let named_sibling = token.contains(concat!("..", "/shared"));
            if named_sibling || (escapes(dir, token) && escapes(Path::new(""), token)) {
                found.push(OutsideReference {
                    file: rel.to_path_buf(),
                    line: i + 1,
                    token: token.to_string(),
                });
            }
        }
    }
    found
}

/// The maximal path-like runs of a line that contain `../`.
fn path_tokens(line: &str) -> Vec<&str> {
    let is_path_char =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '_' | '-' | '*' | '~');
    line.split(|c: char| !is_path_char(c))
        .filter(|t| t.contains("../"))
        .collect()
}

/// Whether `token`, taken relative to `base` (a directory relative to the root), climbs above the
/// root. Absolute tokens are not relative paths and are left to review.
fn escapes(base: &Path, token: &str) -> bool {
    if token.starts_with('/') || token.starts_with('~') {
        return false;
    }
    let mut depth: i64 = 0;
    for c in base.join(token).components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// `n` parent-directory steps. Fixtures are built at run time, so that this file does not
    /// itself hold the paths the scan of the checkout must not find.
    fn up(n: usize) -> String {
        "../".repeat(n)
    }

    fn scan(file: &str, text: &str) -> Vec<String> {
        scan_text(Path::new(file), text)
            .into_iter()
            .map(|f| f.token)
            .collect()
    }

    #[test]
    fn include_str_climbing_out_of_the_checkout_is_found() {
        let bad = format!("{}shared/reference/kubevirt-openapi.json", up(3));
        let text = format!("const K: &str = include_str!(\"{bad}\");");
        assert_eq!(scan("sim/src/schema.rs", &text), [bad]);
        // The same depth into the checkout's own copy is fine.
        let ok = format!(
            "const K: &str = include_str!(\"{}reference/x.json\");",
            up(2)
        );
        assert!(scan("sim/src/schema.rs", &ok).is_empty());
    }

    #[test]
    fn sibling_folder_is_found_from_the_root_and_from_scripts() {
        let design = format!("{}shared/DESIGN.md", up(1));
        assert_eq!(scan("README.md", &format!("see `{design}`")), [design]);
        let other = format!("{}other/thing", up(2));
        assert_eq!(scan("scripts/x.sh", &format!("cp {other} .")), [other]);
        // A path that escapes from the file's directory but not from the root (a script run from
        // the root) is not reported, nor is one inside the checkout from the file's directory.
        assert!(scan("scripts/x.sh", &format!("cat {}README.md", up(1))).is_empty());
        assert!(scan("sim/README.md", &format!("[top]({}README.md)", up(1))).is_empty());
    }

    #[test]
    fn manifest_dir_join_is_resolved_from_the_file() {
        let bad = format!("{}shared/reference", up(2));
        let text = format!("PathBuf::from(env!(\"CARGO_MANIFEST_DIR\")).join(\"{bad}\")");
        assert_eq!(scan("api/tests/conformance.rs", &text), [bad]);
        let good = format!(
            "PathBuf::from(env!(\"CARGO_MANIFEST_DIR\")).join(\"{}reference\")",
            up(1)
        );
        assert!(scan("api/tests/conformance.rs", &good).is_empty());
    }

    #[test]
    fn whole_tree_scan_reports_file_and_line() {
        let far = format!("{}x", up(3));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/src")).unwrap();
        std::fs::write(
            dir.path().join("a/src/lib.rs"),
            format!("//! ok\nx(\"{far}\");\n"),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("target")).unwrap();
        std::fs::write(dir.path().join("target/gen.rs"), format!("x(\"{far}\");\n")).unwrap();
        std::fs::write(
            dir.path().join("run"),
            format!("#!/bin/sh\ncd {}elsewhere\n", up(2)),
        )
        .unwrap();
        let found = outside_references(dir.path()).unwrap();
        let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                format!("a/src/lib.rs:2: `{far}` points outside the checkout"),
                format!("run:2: `{}elsewhere` points outside the checkout", up(2)),
            ]
        );
    }
}
