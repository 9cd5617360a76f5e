//! No import circle between the files of any workspace crate (issue 24).
//!
//! Invariant checked: within each crate of the workspace, the files under `src/` import each other
//! without a loop. A file may use what lies below it; two files that need each other's items have a
//! shared part that belongs in a lower (leaf) module. The check needs no external tool: CI runs it
//! with the other tests, and it fails listing every circle (a strongly connected component of more
//! than one file, found with Tarjan's algorithm), each edge inside it and the item names it takes.
//!
//! How the graph is read (lexically, per crate; the reader is `reader.rs`, the circles are found
//! here):
//! - The module tree is followed from each crate root (`src/lib.rs`, `src/main.rs`, `src/bin/*.rs`)
//!   through `mod x;` declarations, resolved the way rustc does without `#[path]`: `x.rs` or
//!   `x/mod.rs` beside a `lib.rs`/`main.rs`/`mod.rs`, else in the folder named after the file.
//!   A `mod` declaration is ownership, not an edge: a parent that declares a child does not depend
//!   on it. Inline `mod x { .. }` blocks (test modules) are part of their file, but `super` and
//!   `self` inside them resolve as rustc resolves them.
//! - Edges come from `use` trees (`crate::`, `super::`, `self::`, and 2018-style paths starting at a
//!   child module) and from paths in code that start with `crate::`, `super::`, `self::`, a child
//!   module or a module brought in by `use` (`commands::human(..)`). A path resolves to the deepest
//!   module it names (`a/b.rs` or `a/b/mod.rs`); the next segment is the item. When that module only
//!   re-exports the item (`use`/`pub use x::Item`, a `pub use x::*` glob whose source defines it, a
//!   `#[macro_export]` macro that lives at the crate root), the edge goes to the file that defines it.
//!   Test modules count: a test that imports a sibling is an import of the file.
//! - An edge from a file up to a module that owns it (its parent `mod.rs`, an ancestor, the crate
//!   root) is recorded but closes no circle: a child module is part of its owner and may use what
//!   the owner defines for its children (the crate's `Error`, the simulator's shared `Inner`, a
//!   `Result` alias), as rustc's privacy lets it; the owner reaching down into its children is the
//!   ordinary direction. Circles between siblings and cousins, at any depth, are all reported.
//! - Comments, doc comments (intra-doc links), strings and char literals are skipped.
//!
//! What it does not see: macro expansion (`$crate::` paths inside a `macro_rules!`, and what a
//! macro's call site pulls in), paths inside attributes' strings (`#[serde(with = "..")]`),
//! `#[path]` attributes, `include!`, glob re-exports whose source re-exports in turn through another
//! glob, modules reached through a type alias, and edges between crates (Cargo forbids those circles
//! already). Scopes are coarse: a `use` inside a function body counts for its whole module, and a
//! code path is taken as a module path only when its first segment names a module (child modules
//! and `use` imports of the module, or of a glob-imported parent).

mod reader;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use reader::crate_graph;
use virtguard_e2e::workspace_root;

#[test]
fn no_import_circle_between_the_files_of_any_crate() {
    let root = workspace_root();
    let members = workspace_members(&root);
    assert!(
        members.len() >= 5,
        "read only {members:?} from the workspace Cargo.toml"
    );
    let mut circles = Vec::new();
    let mut files_read = 0;
    for member in &members {
        let graph = crate_graph(&root, &root.join(member))
            .unwrap_or_else(|e| panic!("reading crate {member}: {e}"));
        assert!(
            !graph.files.is_empty(),
            "crate {member}: no source file reached from src/lib.rs, src/main.rs or src/bin"
        );
        files_read += graph.files.len();
        circles.extend(graph.circles());
    }
    assert!(files_read > 50, "only {files_read} files read");
    assert!(
        circles.is_empty(),
        "{} import circle(s) between files; move the shared items into a lower module that imports \
         neither side:\n{}",
        circles.len(),
        render(&circles)
    );
}

/// The check can fail: a tiny crate with a deliberate circle (and decoys that are no edges).
#[test]
fn the_detector_finds_a_deliberate_circle_and_ignores_decoys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let krate = dir.path().join("demo");
    let files: &[(&str, &str)] = &[
        (
            "src/lib.rs",
            "//! root: owns every module, which is no edge\n\
             mod a;\nmod b;\npub mod leaf;\nmod deep;\n\
             pub use a::A;\n",
        ),
        // a -> b through a `use`
        (
            "src/a.rs",
            "use crate::b::make;\npub struct A;\npub fn f() -> A { make(); A }\n",
        ),
        // b -> a through a code path; comment, doc and string mentions of `crate::leaf` are no edges
        (
            "src/b.rs",
            "/// see [`crate::leaf::Leaf`]\n\
             pub fn make() -> crate::A { let _s = \"crate::leaf::Leaf\"; let _c = '\"'; crate::A }\n\
             pub fn quote() -> (char, &'static str) { ('\\'', r#\"crate::leaf::Leaf\"#) }\n\
             // crate::leaf::Leaf\n\
             /* crate::leaf::Leaf /* nested */ crate::leaf::Leaf */\n\
             #[cfg(test)]\nmod tests {\n    use super::*;\n    #[test]\n    fn t() { make(); }\n}\n",
        ),
        // a leaf whose inline test module reaches its own file through `super` (a self edge,
        // ignored)
        (
            "src/leaf.rs",
            "pub struct Leaf;\n#[cfg(test)]\nmod tests { use super::Leaf; }\n",
        ),
        // a folder module with a child: the child uses its owner and the owner calls the child
        // (no circle: an owner and its children are one unit), and the owner uses the leaf
        (
            "src/deep/mod.rs",
            "mod inner;\nuse crate::leaf::Leaf;\npub struct Outer(pub Leaf);\n\
             pub fn h() { inner::g(Outer(Leaf)) }\n",
        ),
        (
            "src/deep/inner.rs",
            "use super::Outer;\npub fn g(_: Outer) {}\n",
        ),
    ];
    for (path, text) in files {
        let path = krate.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write");
    }
    let graph = crate_graph(dir.path(), &krate).expect("read the demo crate");
    assert_eq!(graph.files.len(), 6, "files: {:?}", graph.files);
    let circles = graph.circles();
    let text = render(&circles);
    assert_eq!(
        circles.len(),
        1,
        "expected exactly the a <-> b circle:\n{text}"
    );
    assert_eq!(
        circles[0].files,
        vec!["demo/src/a.rs".to_string(), "demo/src/b.rs".to_string()],
        "{text}"
    );
    // `crate::A` is re-exported by lib.rs: the edge goes to a.rs, where A is defined
    assert!(
        text.contains("demo/src/a.rs -> demo/src/b.rs: make"),
        "{text}"
    );
    assert!(text.contains("demo/src/b.rs -> demo/src/a.rs: A"), "{text}");
    // no edge from a comment, a doc link or a string
    assert!(
        !graph
            .edges
            .contains_key(&("demo/src/b.rs".to_string(), "demo/src/leaf.rs".to_string())),
        "b.rs mentions leaf only in comments and strings: {:?}",
        graph.edges
    );
    assert!(graph.edges.contains_key(&(
        "demo/src/deep/inner.rs".to_string(),
        "demo/src/deep/mod.rs".to_string()
    )));
    // the parent reaches down into its child and the child up into its owner: no circle
    assert!(graph.edges.contains_key(&(
        "demo/src/deep/mod.rs".to_string(),
        "demo/src/deep/inner.rs".to_string()
    )));
}

// ---------------------------------------------------------------------------------------------
// The workspace

/// The `members` of the workspace `Cargo.toml`.
fn workspace_members(root: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(root.join("Cargo.toml")).expect("read Cargo.toml");
    let start = text.find("members").expect("a members list");
    let open = start + text[start..].find('[').expect("members = [");
    let close = open + text[open..].find(']').expect("members = [..]");
    text[open + 1..close]
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The file graph of one crate

/// One circle: its files, and every edge between them with the item names taken.
#[derive(Debug)]
struct Circle {
    files: Vec<String>,
    edges: Vec<(String, String, Vec<String>)>,
}

fn render(circles: &[Circle]) -> String {
    let mut out = String::new();
    for (i, c) in circles.iter().enumerate() {
        let _ = writeln!(
            out,
            "circle {}: {} files: {}",
            i + 1,
            c.files.len(),
            c.files.join(", ")
        );
        for (from, to, items) in &c.edges {
            let _ = writeln!(out, "  {from} -> {to}: {}", items.join(", "));
        }
    }
    out
}

#[derive(Debug, Default)]
struct Graph {
    /// Files read, as paths relative to the workspace root.
    files: BTreeSet<String>,
    /// (from, to) -> item names.
    edges: BTreeMap<(String, String), BTreeSet<String>>,
    /// (file, file of a module that owns it: its parent, grandparent, .., crate root).
    owners: BTreeSet<(String, String)>,
}

impl Graph {
    /// The edges that can close a circle: all but those from a file to one of its owners.
    fn counted(&self) -> impl Iterator<Item = (&(String, String), &BTreeSet<String>)> {
        self.edges
            .iter()
            .filter(|(key, _)| !self.owners.contains(*key))
    }

    /// Tarjan's strongly connected components with more than one file, each with its edges.
    fn circles(&self) -> Vec<Circle> {
        let nodes: Vec<&String> = self.files.iter().collect();
        let index_of: BTreeMap<&String, usize> =
            nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut adj = vec![Vec::new(); nodes.len()];
        for ((from, to), _) in self.counted() {
            if let (Some(&f), Some(&t)) = (index_of.get(from), index_of.get(to)) {
                adj[f].push(t);
            }
        }
        let mut t = Tarjan {
            adj: &adj,
            index: vec![None; nodes.len()],
            low: vec![0; nodes.len()],
            on_stack: vec![false; nodes.len()],
            stack: Vec::new(),
            next: 0,
            components: Vec::new(),
        };
        for v in 0..nodes.len() {
            if t.index[v].is_none() {
                t.visit(v);
            }
        }
        let mut circles: Vec<Circle> = t
            .components
            .into_iter()
            .filter(|c| c.len() > 1)
            .map(|c| {
                let mut files: Vec<String> = c.iter().map(|&i| nodes[i].clone()).collect();
                files.sort();
                let edges = self
                    .counted()
                    .filter(|((f, to), _)| files.contains(f) && files.contains(to))
                    .map(|((f, to), items)| {
                        (f.clone(), to.clone(), items.iter().cloned().collect())
                    })
                    .collect();
                Circle { files, edges }
            })
            .collect();
        circles.sort_by(|a, b| a.files.cmp(&b.files));
        circles
    }
}

struct Tarjan<'a> {
    adj: &'a [Vec<usize>],
    index: Vec<Option<usize>>,
    low: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    next: usize,
    components: Vec<Vec<usize>>,
}

impl Tarjan<'_> {
    fn visit(&mut self, v: usize) {
        self.index[v] = Some(self.next);
        self.low[v] = self.next;
        self.next += 1;
        self.stack.push(v);
        self.on_stack[v] = true;
        for &w in &self.adj[v] {
            match self.index[w] {
                None => {
                    self.visit(w);
                    self.low[v] = self.low[v].min(self.low[w]);
                }
                Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(self.low[v]) == self.index[v] {
            let mut component = Vec::new();
            while let Some(w) = self.stack.pop() {
                self.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            self.components.push(component);
        }
    }
}
