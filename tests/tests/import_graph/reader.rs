//! Reads one crate's `src/` into its file [`Graph`]: the module tree from each crate root, the
//! `use` trees and paths of every file, resolved to the files that define what they name. What it
//! sees and what it does not is in the test's own docs (`main.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::Graph;

/// Reads the crate at `krate` and builds its file graph; file names are relative to `workspace`.
pub(super) fn crate_graph(workspace: &Path, krate: &Path) -> std::io::Result<Graph> {
    let src = krate.join("src");
    let mut roots = Vec::new();
    for name in ["lib.rs", "main.rs"] {
        if src.join(name).is_file() {
            roots.push(src.join(name));
        }
    }
    if let Ok(entries) = std::fs::read_dir(src.join("bin")) {
        let mut bins: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter_map(|p| {
                if p.extension().is_some_and(|e| e == "rs") {
                    Some(p)
                } else if p.join("main.rs").is_file() {
                    Some(p.join("main.rs"))
                } else {
                    None
                }
            })
            .collect();
        bins.sort();
        roots.extend(bins);
    }
    let mut graph = Graph::default();
    for root in roots {
        let tree = ModuleTree::read(workspace, &root)?;
        tree.add_edges(&mut graph);
    }
    Ok(graph)
}

// ---------------------------------------------------------------------------------------------
// The module tree of one crate root, as read from its files

type ModPath = Vec<String>;

/// One `use` binding: `segs` as written (with `crate`/`super`/`self`), the name it binds (None for
/// a glob, `_` for an anonymous import).
#[derive(Debug, Clone)]
struct UseEntry {
    segs: Vec<String>,
    name: Option<String>,
}

#[derive(Debug, Default)]
struct Module {
    /// The file the module's text is in (relative to the workspace).
    file: String,
    /// Items defined at the module's top level.
    defs: BTreeSet<String>,
    /// `use` bindings at the module's top level or in its functions.
    uses: Vec<UseEntry>,
    /// Paths in code (not in `use`), as written.
    paths: Vec<Vec<String>>,
}

#[derive(Debug, Default)]
struct ModuleTree {
    modules: BTreeMap<ModPath, Module>,
    /// `#[macro_export]` macros: they live at the crate root, defined in this file.
    exported_macros: BTreeMap<String, String>,
}

impl ModuleTree {
    fn read(workspace: &Path, root: &Path) -> std::io::Result<ModuleTree> {
        let mut tree = ModuleTree::default();
        // (file, its module path, whether child files sit beside it)
        let mut queue = vec![(root.to_path_buf(), ModPath::new(), true)];
        while let Some((file, path, mod_rs)) = queue.pop() {
            let text = std::fs::read_to_string(&file)?;
            let rel = file
                .strip_prefix(workspace)
                .unwrap_or(&file)
                .to_string_lossy()
                .replace('\\', "/");
            let dir = if mod_rs {
                file.parent().expect("a file has a folder").to_path_buf()
            } else {
                file.with_extension("")
            };
            let declared = parse_file(&lex(&text), &rel, &path, &mut tree);
            for (inline, child) in declared {
                let mut child_dir = dir.clone();
                for seg in &inline[path.len()..] {
                    child_dir.push(seg);
                }
                let mut child_path = inline.clone();
                child_path.push(child.clone());
                let flat = child_dir.join(format!("{child}.rs"));
                let nested = child_dir.join(&child).join("mod.rs");
                if flat.is_file() {
                    queue.push((flat, child_path, false));
                } else if nested.is_file() {
                    queue.push((nested, child_path, true));
                }
                // else: a module behind #[path] or generated; not read
            }
        }
        Ok(tree)
    }

    fn file_of(&self, path: &[String]) -> Option<&str> {
        self.modules.get(path).map(|m| m.file.as_str())
    }

    /// Resolves a path written in module `cur` to (module, remaining segments). None when it
    /// leaves the crate (another crate, std, a local name).
    fn resolve_path(&self, cur: &[String], segs: &[String], depth: usize) -> Option<ModPath> {
        let (mut base, mut i): (ModPath, usize) = match segs.first()?.as_str() {
            "crate" => (Vec::new(), 1),
            "self" => (cur.to_vec(), 1),
            "super" => {
                let mut base = cur.to_vec();
                let mut i = 0;
                while segs.get(i).is_some_and(|s| s == "super") {
                    base.pop()?;
                    i += 1;
                }
                (base, i)
            }
            first => {
                let mut child = cur.to_vec();
                child.push(first.to_string());
                if self.modules.contains_key(&child) {
                    (child, 1)
                } else {
                    (self.module_alias(cur, first, depth)?, 1)
                }
            }
        };
        while let Some(seg) = segs.get(i) {
            let mut child = base.clone();
            child.push(seg.clone());
            if !self.modules.contains_key(&child) {
                break;
            }
            base = child;
            i += 1;
        }
        let mut resolved = base;
        resolved.extend(segs[i..].iter().cloned());
        Some(resolved)
    }

    /// A module that `use` in module `cur` brings in under `name`.
    fn module_alias(&self, cur: &[String], name: &str, depth: usize) -> Option<ModPath> {
        if depth > 8 {
            return None;
        }
        let module = self.modules.get(cur)?;
        let named = module
            .uses
            .iter()
            .filter(|u| u.name.as_deref() == Some(name))
            .filter_map(|u| self.resolve_path(cur, &u.segs, depth + 1))
            .find(|p| self.modules.contains_key(p));
        // `use super::*` brings the parent's child modules and module imports into scope
        named.or_else(|| {
            module
                .uses
                .iter()
                .filter(|u| u.name.is_none())
                .filter_map(|u| self.resolve_path(cur, &u.segs, depth + 1))
                .filter(|source| self.modules.contains_key(source))
                .find_map(|source| {
                    let mut child = source.clone();
                    child.push(name.to_string());
                    if self.modules.contains_key(&child) {
                        Some(child)
                    } else {
                        self.module_alias(&source, name, depth + 1)
                    }
                })
        })
    }

    /// Splits a resolved path into its deepest module and the item after it.
    fn split<'p>(&self, resolved: &'p [String]) -> (&'p [String], Option<&'p String>) {
        let mut n = resolved.len();
        while n > 0 && !self.modules.contains_key(&resolved[..n]) {
            n -= 1;
        }
        (&resolved[..n], resolved.get(n))
    }

    /// The file that defines `item` as seen in `module`, following re-exports.
    fn defining_file(&self, module: &[String], item: &str, depth: usize) -> Option<String> {
        let m = self.modules.get(module)?;
        if depth > 8 || m.defs.contains(item) {
            return Some(m.file.clone());
        }
        if module.is_empty() {
            if let Some(file) = self.exported_macros.get(item) {
                return Some(file.clone());
            }
        }
        if let Some(u) = m.uses.iter().find(|u| u.name.as_deref() == Some(item)) {
            // an import of another crate's item (`use virtguard_repo as repo`) is no edge
            let resolved = self.resolve_path(module, &u.segs, 0)?;
            let (target, next) = self.split(&resolved);
            return match next {
                Some(next) => self.defining_file(target, next, depth + 1),
                None => self.file_of(target).map(str::to_string),
            };
        }
        for u in m.uses.iter().filter(|u| u.name.is_none()) {
            let Some(resolved) = self.resolve_path(module, &u.segs, 0) else {
                continue;
            };
            let (source, _) = self.split(&resolved);
            let Some(s) = self.modules.get(source) else {
                continue;
            };
            let names_it = s.defs.contains(item)
                || s.uses.iter().any(|u| u.name.as_deref() == Some(item))
                || (source.is_empty() && self.exported_macros.contains_key(item));
            if names_it {
                return self.defining_file(source, item, depth + 1);
            }
        }
        Some(m.file.clone())
    }

    /// One edge from module `cur` for the path `segs` (a glob when `glob`).
    fn edge(&self, cur: &[String], segs: &[String], glob: bool) -> Option<(String, String)> {
        let resolved = self.resolve_path(cur, segs, 0)?;
        let (module, item) = self.split(&resolved);
        match (glob, item) {
            (true, _) | (false, None) => {
                let name = if glob { "*" } else { "(module)" };
                Some((self.file_of(module)?.to_string(), name.to_string()))
            }
            (false, Some(item)) => Some((self.defining_file(module, item, 0)?, item.clone())),
        }
    }

    fn add_edges(&self, graph: &mut Graph) {
        for (path, module) in &self.modules {
            graph.files.insert(module.file.clone());
            for n in 0..path.len() {
                if let Some(owner) = self.file_of(&path[..n]) {
                    if owner != module.file {
                        graph
                            .owners
                            .insert((module.file.clone(), owner.to_string()));
                    }
                }
            }
            let uses = module.uses.iter().map(|u| (&u.segs, u.name.is_none()));
            let paths = module.paths.iter().map(|p| (p, false));
            for (segs, glob) in uses.chain(paths) {
                if let Some((to, item)) = self.edge(path, segs, glob) {
                    if to != module.file {
                        graph
                            .edges
                            .entry((module.file.clone(), to))
                            .or_default()
                            .insert(item);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lexing and parsing

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    Sep,
    Punct(char),
}

/// Tokens of Rust source without comments, strings, chars, lifetimes and numbers.
fn lex(text: &str) -> Vec<Tok> {
    let c: Vec<char> = text.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if ch == '"' {
            i = skip_string(&c, i + 1);
        } else if ch == '\'' {
            if at(i + 1) == '\\' {
                // an escaped char: skip quote, backslash and the escaped char, then to the quote
                i += 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1; // a lifetime: its name lexes as an identifier, harmlessly
            }
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let raw_prefix = matches!(word.as_str(), "r" | "br" | "cr");
            if matches!(word.as_str(), "b" | "c") && at(i) == '"' {
                i = skip_string(&c, i + 1);
            } else if matches!(word.as_str(), "b") && at(i) == '\'' {
                i += 1;
                while i < c.len() && c[i] != '\'' {
                    i += if c[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            } else if raw_prefix && (at(i) == '"' || at(i) == '#') {
                let mut hashes = 0;
                while at(i + hashes) == '#' {
                    hashes += 1;
                }
                if at(i + hashes) == '"' {
                    i += hashes + 1;
                    // the raw string ends at `"` followed by as many `#`
                    loop {
                        if i >= c.len() {
                            break;
                        }
                        if c[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                            i += hashes + 1;
                            break;
                        }
                        i += 1;
                    }
                } else if word == "r" && hashes == 1 {
                    i += 1; // raw identifier r#name
                } else {
                    toks.push(Tok::Ident(word));
                }
            } else {
                toks.push(Tok::Ident(word));
            }
        } else if ch == ':' && at(i + 1) == ':' {
            toks.push(Tok::Sep);
            i += 2;
        } else {
            toks.push(Tok::Punct(ch));
            i += 1;
        }
    }
    toks
}

/// Skips a (non-raw) string whose opening quote is before `i`; returns the index after it.
fn skip_string(c: &[char], mut i: usize) -> usize {
    while i < c.len() {
        match c[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

const DEF_KEYWORDS: &[&str] = &[
    "fn", "struct", "enum", "union", "trait", "type", "const", "static", "mod",
];

/// Parses one file whose module path is `path` into `tree`; returns its `mod x;` declarations
/// as (module path of the declaring (inline) module, child name).
fn parse_file(
    toks: &[Tok],
    file: &str,
    path: &[String],
    tree: &mut ModuleTree,
) -> Vec<(ModPath, String)> {
    let ident = |i: usize| match toks.get(i) {
        Some(Tok::Ident(s)) => Some(s.as_str()),
        _ => None,
    };
    let module = |tree: &mut ModuleTree, p: &ModPath| {
        tree.modules.entry(p.clone()).or_insert_with(|| Module {
            file: file.to_string(),
            ..Module::default()
        });
    };
    let mut declared = Vec::new();
    // inline modules: (path, brace depth inside them)
    let mut stack: Vec<(ModPath, usize)> = vec![(path.to_vec(), 0)];
    module(tree, &path.to_vec());
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let (cur, base) = stack.last().cloned().expect("the file's module");
        match &toks[i] {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                if depth == base && stack.len() > 1 {
                    stack.pop();
                }
                depth = depth.saturating_sub(1);
            }
            // `use<'a>` in `impl Trait + use<'a>` is no use declaration
            Tok::Ident(w)
                if w == "use" && !matches!(toks.get(i + 1), Some(Tok::Punct('!' | '<'))) =>
            {
                let mut j = i + 1;
                let mut entries = Vec::new();
                parse_use_tree(toks, &mut j, Vec::new(), &mut entries);
                module(tree, &cur);
                let m = tree.modules.get_mut(&cur).expect("inserted");
                m.uses.extend(entries);
                while j < toks.len() && toks[j] != Tok::Punct(';') {
                    j += 1;
                }
                i = j + 1;
                continue;
            }
            Tok::Ident(w) if w == "mod" => {
                if let Some(name) = ident(i + 1) {
                    match toks.get(i + 2) {
                        Some(Tok::Punct(';')) => {
                            declared.push((cur.clone(), name.to_string()));
                            i += 3;
                            continue;
                        }
                        Some(Tok::Punct('{')) => {
                            let mut inner = cur.clone();
                            inner.push(name.to_string());
                            module(tree, &inner);
                            depth += 1;
                            stack.push((inner, depth));
                            i += 3;
                            continue;
                        }
                        _ => {}
                    }
                }
            }
            Tok::Ident(w) if w == "macro_rules" && toks.get(i + 1) == Some(&Tok::Punct('!')) => {
                if let Some(name) = ident(i + 2) {
                    let exported =
                        toks[i.saturating_sub(6)..i].contains(&Tok::Ident("macro_export".into()));
                    if exported {
                        tree.exported_macros
                            .insert(name.to_string(), file.to_string());
                    } else if let Some(m) = tree.modules.get_mut(&cur) {
                        m.defs.insert(name.to_string());
                    }
                }
            }
            Tok::Ident(w) if depth == base && DEF_KEYWORDS.contains(&w.as_str()) => {
                if let Some(name) = ident(i + 1) {
                    if let Some(m) = tree.modules.get_mut(&cur) {
                        m.defs.insert(name.to_string());
                    }
                }
            }
            Tok::Ident(w)
                if toks.get(i + 1) == Some(&Tok::Sep)
                    && !matches!(
                        toks.get(i.wrapping_sub(1)),
                        Some(Tok::Sep | Tok::Punct('$' | '.'))
                    )
                    && w.starts_with(|c: char| c.is_lowercase() || c == '_') =>
            {
                let mut segs = vec![w.clone()];
                let mut j = i + 1;
                while toks.get(j) == Some(&Tok::Sep) {
                    match ident(j + 1) {
                        Some(s) => segs.push(s.to_string()),
                        None => break,
                    }
                    j += 2;
                }
                if let Some(m) = tree.modules.get_mut(&cur) {
                    m.paths.push(segs);
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    declared
}

/// Parses a use tree at `*j` with `prefix` already read; pushes one entry per binding.
fn parse_use_tree(toks: &[Tok], j: &mut usize, prefix: Vec<String>, out: &mut Vec<UseEntry>) {
    let mut segs = prefix;
    if toks.get(*j) == Some(&Tok::Sep) {
        *j += 1; // a leading `::`: another crate; its segments resolve to nothing here
        segs.push("::".to_string());
    }
    loop {
        match toks.get(*j) {
            Some(Tok::Ident(s)) => {
                segs.push(s.clone());
                *j += 1;
                if toks.get(*j) == Some(&Tok::Sep) {
                    *j += 1;
                    continue;
                }
                // end of a simple path: `as name`?
                let mut name = if s == "self" {
                    segs.pop();
                    segs.last().cloned()
                } else {
                    Some(s.clone())
                };
                if toks.get(*j) == Some(&Tok::Ident("as".into())) {
                    if let Some(Tok::Ident(alias)) = toks.get(*j + 1) {
                        name = Some(alias.clone());
                    }
                    *j += 2;
                }
                if !segs.is_empty() {
                    out.push(UseEntry {
                        segs,
                        name: name.or(Some("_".to_string())),
                    });
                }
                return;
            }
            Some(Tok::Punct('*')) => {
                *j += 1;
                out.push(UseEntry { segs, name: None });
                return;
            }
            Some(Tok::Punct('{')) => {
                *j += 1;
                loop {
                    match toks.get(*j) {
                        Some(Tok::Punct('}')) => {
                            *j += 1;
                            return;
                        }
                        Some(Tok::Punct(',')) => *j += 1,
                        None => return,
                        Some(_) => {
                            let before = *j;
                            parse_use_tree(toks, j, segs.clone(), out);
                            if *j == before {
                                *j += 1;
                            }
                        }
                    }
                }
            }
            _ => return,
        }
    }
}
