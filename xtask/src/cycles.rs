//! Import cycles between the modules of a crate, found from its source text: every `crate::…`
//! path (in `use` trees and inline) is resolved to the longest module it names, giving an edge
//! from the file's module to that module, and the strongly connected components of that graph
//! are the cycles. Run per file and per top-level folder, so a folder that imports a folder that
//! imports it back fails too. Test modules (`*_tests.rs`, `tests.rs`, and everything after a
//! `#[cfg(test)]`) are left out: tests may reach anywhere. `cargo modules` checks cycles at the
//! level of items (a struct and its own methods count as one), which is not the question here.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::{Context, Result};

type Module = Vec<String>;

/// The module a source file defines, from its path below the crate's `src/`.
fn module_of(rel: &Path) -> Module {
    let mut parts: Vec<String> = rel.with_extension("").iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// The top-level items of a brace list, split at commas outside nested braces.
fn split_top(list: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in list.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(list[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(list[start..].trim());
    out.into_iter().filter(|s| !s.is_empty()).collect()
}

/// Every path a use tree names, e.g. `a::{b, c::{d}}` gives `a::b` and `a::c::d`.
fn tree_paths(tree: &str, prefix: &[String], out: &mut Vec<Module>) {
    let tree = tree.trim();
    let segments = |s: &str| -> Vec<String> {
        s.split(" as ")
            .next()
            .unwrap_or("")
            .split("::")
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    };
    match (tree.find('{'), tree.rfind('}')) {
        (Some(open), Some(close)) if open < close => {
            let mut head = prefix.to_vec();
            head.extend(segments(&tree[..open]));
            for part in split_top(&tree[open + 1..close]) {
                tree_paths(part, &head, out);
            }
        }
        _ => {
            let mut path = prefix.to_vec();
            path.extend(segments(tree));
            out.push(path);
        }
    }
}

/// The end of the brace group opening at `open`.
fn group_end(text: &str, open: usize) -> usize {
    let mut depth = 0;
    for (i, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return open + i;
                }
            }
            _ => {}
        }
    }
    text.len() - 1
}

/// Every `crate::…` path in a source text.
fn crate_paths(text: &str) -> Vec<Module> {
    let mut out = Vec::new();
    let mut rest = 0;
    while let Some(found) = text[rest..].find("crate::") {
        let start = rest + found + "crate::".len();
        let len = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '{'))
            .unwrap_or(text.len() - start);
        let path = &text[start..start + len];
        match path.find('{') {
            Some(open) => {
                let end = group_end(text, start + open);
                tree_paths(&text[start..=end], &[], &mut out);
                rest = end + 1;
            }
            None => {
                tree_paths(path, &[], &mut out);
                // Past at least one whole character: `crate::…` in a comment is followed by a
                // multi-byte one.
                rest = start + len.max(text[start..].chars().next().map_or(1, char::len_utf8));
            }
        }
    }
    out
}

/// Module → modules it imports, for the crate whose sources are below `src`, at file level
/// (`depth` None) or cut to the first `depth` path segments.
pub fn graph(src: &Path, depth: Option<usize>) -> Result<BTreeMap<Module, BTreeSet<Module>>> {
    let mut files = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(f.strip_prefix(src).unwrap_or(f))).collect();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for file in &files {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with("_tests.rs") || name == "tests.rs" {
            continue;
        }
        let me = module_of(file.strip_prefix(src).unwrap_or(file));
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        for path in crate_paths(text) {
            let Some(target) = (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|m| modules.contains(m)) else {
                continue;
            };
            // A module reaching into itself or its own children is not a dependency.
            if me.starts_with(&target) || target.starts_with(&me) {
                continue;
            }
            let cut = |m: &Module| depth.map_or_else(|| m.clone(), |d| m[..d.min(m.len())].to_vec());
            let (from, to) = (cut(&me), cut(&target));
            if from != to && !from.is_empty() {
                edges.entry(from).or_default().insert(to);
            }
        }
    }
    Ok(edges)
}

/// Strongly connected components with more than one member (Tarjan).
pub fn cycles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, (usize, usize)>,
        stack: Vec<&'a Module>,
        next: usize,
        found: Vec<Vec<Module>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a Module) {
            self.index.insert(v, (self.next, self.next));
            self.next += 1;
            self.stack.push(v);
            for w in self.edges.get(v).into_iter().flatten() {
                match self.index.get(w).copied() {
                    None => {
                        self.visit(w);
                        let low = self.index[w].1.min(self.index[v].1);
                        self.index.get_mut(v).expect("visited").1 = low;
                    }
                    Some((wi, _)) if self.stack.contains(&w) => {
                        let low = wi.min(self.index[v].1);
                        self.index.get_mut(v).expect("visited").1 = low;
                    }
                    Some(_) => {}
                }
            }
            let (vi, vl) = self.index[v];
            if vi == vl {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    component.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk { edges, index: BTreeMap::new(), stack: Vec::new(), next: 0, found: Vec::new() };
    for v in edges.keys() {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    walk.found
}

/// Source folders of the workspace's crates, as `cargo xtask lint` checks them.
pub const CRATES: &[&str] = &["monitor/src", "monitor-ebpf/src", "monitor-common/src", "xtask/src"];

/// Checks a crate's `src` folder at file level and at top-level folder level; the error lists
/// every cycle found.
pub fn check(src: &Path) -> Result<()> {
    let mut problems = Vec::new();
    for (what, depth) in [("modules", None), ("folders", Some(1))] {
        for cycle in cycles(&graph(src, depth)?) {
            let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
            problems.push(format!("{what} import each other: {}", names.join(" ↔ ")));
        }
    }
    if problems.is_empty() {
        println!("ok no import cycles in {}", src.display());
        Ok(())
    } else {
        anyhow::bail!("import cycles in {}: {}", src.display(), problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Module {
        s.split("::").map(str::to_owned).collect()
    }

    #[test]
    fn use_trees_expand_to_every_path() {
        let paths = crate_paths("use crate::{a::{self, b::C}, d};\nfn f() { crate::e::g(); }");
        assert_eq!(paths, vec![m("a::self"), m("a::b::C"), m("d"), m("e::g")]);
        // Not a path, and not a panic on the multi-byte character after it.
        assert!(crate_paths("// see `crate::…` and crate::ü").iter().all(Vec::is_empty));
    }

    #[test]
    fn finds_a_cycle_and_only_it() {
        let mut edges = BTreeMap::new();
        edges.insert(m("a"), BTreeSet::from([m("b")]));
        edges.insert(m("b"), BTreeSet::from([m("a"), m("c")]));
        edges.insert(m("c"), BTreeSet::new());
        assert_eq!(cycles(&edges), vec![vec![m("a"), m("b")]]);
        edges.get_mut(&m("b")).unwrap().remove(&m("a"));
        assert!(cycles(&edges).is_empty());
    }

    #[test]
    fn the_workspace_crates_have_none() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
        for krate in CRATES {
            check(&root.join(krate)).unwrap();
        }
    }
}
