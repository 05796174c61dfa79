//! The library's files import each other without circles: every path a
//! file names (`crate::a::b`, `super::x`, a parent's `pub use child::…`)
//! is an edge to the file that defines that module, and the graph of
//! `src/` must have no cycle. A new upward import (a low layer naming a
//! higher one that already depends on it) fails here, naming the circle.
//! Unit tests and loom models (`mod tests`, `mod loom_tests`) may import
//! anything and are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`channel::ring`) of every `.rs` file under `src/`.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(src).unwrap().with_extension("");
                let mut parts: Vec<String> = rel
                    .iter()
                    .map(|c| c.to_string_lossy().into_owned())
                    .collect();
                if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                    parts.pop();
                }
                out.insert(parts.join("::"), p);
            }
        }
    }
    out
}

/// The text of a file without its comments and its test modules.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        let t = l.trim_start();
        if t.starts_with("#[cfg(") && t.contains("test") {
            if let Some(next) = lines.peek() {
                let n = next.trim_start();
                if n.starts_with("mod tests") || n.starts_with("mod loom_tests") {
                    break; // Test modules come last in every file.
                }
            }
        }
        if t.starts_with("//") || t.starts_with("#[doc") {
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Paths named after `prefix::` in `text`, brace groups expanded one level
/// (`crate::{a::X, b}` gives `a::X` and `b`).
fn paths_after(text: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let pat = format!("{prefix}::");
    let mut rest = text;
    while let Some(i) = rest.find(&pat) {
        let before = rest[..i].chars().last();
        rest = &rest[i + pat.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `foo_crate::` and the like
        }
        if let Some(inner) = rest.strip_prefix('{') {
            let end = inner.find('}').unwrap_or(inner.len());
            out.extend(inner[..end].split(',').map(|s| s.trim().to_owned()));
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            // `super::*` is used by inline modules (their parent is the
            // file itself), never across files.
            if end > 0 {
                out.push(rest[..end].to_owned());
            }
        }
    }
    out
}

/// The module a path names: its longest prefix that is a module file.
fn resolve(mods: &BTreeMap<String, PathBuf>, base: &[&str], path: &str) -> Option<String> {
    let parts: Vec<&str> = base
        .iter()
        .copied()
        .chain(path.split("::").filter(|s| !s.is_empty()))
        .collect();
    (1..=parts.len())
        .rev()
        .map(|k| parts[..k].join("::"))
        .find(|m| mods.contains_key(m))
}

fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, path) in &mods {
        let text = code(path);
        let is_dir_module = path
            .file_name()
            .is_some_and(|f| f == "mod.rs" || f == "lib.rs");
        let own: Vec<&str> = m.split("::").filter(|s| !s.is_empty()).collect();
        let parent: Vec<&str> = own[..own.len().saturating_sub(1)].to_vec();
        // `self::` and a directory module's bare child paths resolve below it.
        let here: Vec<&str> = if is_dir_module {
            own.clone()
        } else {
            parent.clone()
        };
        let mut targets: Vec<Option<String>> = Vec::new();
        for p in paths_after(&text, "crate") {
            targets.push(resolve(&mods, &[], &p));
        }
        // In `a/b.rs` and in `a/b/mod.rs` alike, `super` is `a`.
        for p in paths_after(&text, "super") {
            targets.push(resolve(&mods, &parent, &p));
        }
        for p in paths_after(&text, "self") {
            targets.push(resolve(&mods, &here, &p));
        }
        if is_dir_module {
            // `pub use child::…` and `use child::…` name a child module.
            for l in text.lines() {
                let t = l.trim_start();
                let t = t
                    .strip_prefix("pub(crate) ")
                    .or_else(|| t.strip_prefix("pub "))
                    .unwrap_or(t);
                if let Some(rest) = t.strip_prefix("use ") {
                    let first = rest
                        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .next()
                        .unwrap_or("");
                    if !["crate", "super", "self", "std", "core"].contains(&first) {
                        let mut child = here.clone();
                        child.push(first);
                        let c = child.join("::");
                        if mods.contains_key(&c) {
                            targets.push(Some(c));
                        }
                    }
                }
            }
        }
        let e = edges.entry(m.clone()).or_default();
        for t in targets.into_iter().flatten() {
            if &t != m && !t.is_empty() {
                e.insert(t);
            }
        }
    }
    edges
}

/// The strongly connected components of more than one module.
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Kosaraju's algorithm; the graph is small enough to recurse.
    fn visit(
        v: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(v.to_owned()) {
            return;
        }
        for w in edges.get(v).into_iter().flatten() {
            visit(w, edges, seen, order);
        }
        order.push(v.to_owned());
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for v in edges.keys() {
        visit(v, edges, &mut seen, &mut order);
    }
    let mut rev: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (v, ws) in edges {
        for w in ws {
            rev.entry(w.clone()).or_default().insert(v.clone());
        }
    }
    let mut assigned = BTreeSet::new();
    let mut out = Vec::new();
    for v in order.iter().rev() {
        if assigned.contains(v) {
            continue;
        }
        let mut comp = Vec::new();
        visit(v, &rev, &mut assigned, &mut comp);
        if comp.len() > 1 {
            comp.sort();
            out.push(comp);
        }
    }
    out
}

#[test]
fn the_library_s_files_import_each_other_without_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = graph(&src);
    let found = circles(&edges);
    let detail: Vec<String> = found
        .iter()
        .map(|c| {
            let inner: Vec<String> = c
                .iter()
                .map(|m| {
                    let to: Vec<&String> = edges[m].iter().filter(|t| c.contains(t)).collect();
                    format!("  {m} -> {to:?}")
                })
                .collect();
            format!("circle of {}:\n{}", c.len(), inner.join("\n"))
        })
        .collect();
    assert!(
        found.is_empty(),
        "import circles in src/:\n{}",
        detail.join("\n")
    );
}

/// The checker sees a circle when there is one (so a pass means something).
#[test]
fn the_checker_finds_a_planted_circle() {
    let dir = std::env::temp_dir().join(format!("sfb-arch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("low")).unwrap();
    std::fs::write(dir.join("lib.rs"), "mod high;\nmod low;\npub use low::X;\n").unwrap();
    std::fs::write(dir.join("high.rs"), "use crate::low::helper::Y;\n").unwrap();
    std::fs::write(dir.join("low/mod.rs"), "pub mod helper;\npub struct X;\n").unwrap();
    std::fs::write(
        dir.join("low/helper.rs"),
        "use crate::high;\npub struct Y;\n",
    )
    .unwrap();
    let found = circles(&graph(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        found,
        vec![vec!["high".to_owned(), "low::helper".to_owned()]]
    );
}
