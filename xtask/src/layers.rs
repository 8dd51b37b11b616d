//! Imports point one way: a check that no module of the daemon's library or of the pure
//! model imports, directly or around a circle, a module that imports it back.
//!
//! A module is a file (`a/b.rs` is `a::b`, `a/mod.rs` is `a`). Its imports are the
//! `crate::`, `super::`, `self::` and child-module paths of its `use` lines and of paths
//! written in its code, test code left out (`#[cfg(test)]` onward, `tests.rs` files); each
//! path counts as an import of the deepest module it names.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::{Context, Result};

/// Module name (`a::b`, the crate root is ``) → the modules it imports.
pub type Imports = BTreeMap<String, BTreeSet<String>>;

/// The modules of the library crate under `src` and what each imports. The crate root
/// only declares modules and re-exports names: a path through a re-export counts as an
/// import of the module the name comes from, and the root is no module of the graph.
pub fn imports(src: &Path) -> Result<Imports> {
    let files = rust_files(src)?;
    let known = Known {
        modules: files.iter().map(|(m, _)| m.clone()).collect(),
        reexports: BTreeMap::new(),
    };
    let root = files
        .iter()
        .find(|(m, _)| m.is_empty())
        .map(|(_, t)| t.as_str());
    let known = Known {
        reexports: root.map_or_else(BTreeMap::new, |text| reexports(text, &known)),
        ..known
    };
    let mut imports = Imports::new();
    for (module, text) in files.iter().filter(|(m, _)| !m.is_empty()) {
        let code = code_only(text);
        let mut targets: BTreeSet<String> = BTreeSet::new();
        for path in paths(&code) {
            let Some(target) = known.resolve(module, &path) else {
                continue;
            };
            // A module imported by name (`use crate::{cni}`, `a::{self}`): the code's
            // `cni::server::f()` is an import of `cni::server`.
            let name = match path.last().map(String::as_str) {
                Some("self") => path.iter().rev().nth(1),
                _ => path.last(),
            };
            if let Some(name) = name.filter(|n| target.rsplit("::").next() == Some(n.as_str())) {
                for used in paths_after(&code, name) {
                    let mut full = vec!["crate".to_string()];
                    full.extend(target.split("::").map(String::from));
                    full.extend(used);
                    targets.extend(known.resolve(module, &full));
                }
            }
            targets.insert(target);
        }
        targets.remove(module);
        imports.insert(module.clone(), targets);
    }
    Ok(imports)
}

/// The segments after each `name::` in `code` that starts a path (not one inside another
/// path: `a::name::` is not it).
fn paths_after(code: &str, name: &str) -> Vec<Vec<String>> {
    let anchor = format!("{name}::");
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(&anchor) {
        let before = rest[..at].chars().next_back();
        let starts = before.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'));
        let tail = &rest[at + anchor.len()..];
        if starts {
            let path: String = tail
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            found.push(split(&path));
        }
        rest = tail;
    }
    found
}

/// The crate's modules, and the names its root re-exports with the module of each.
struct Known {
    modules: BTreeSet<String>,
    reexports: BTreeMap<String, String>,
}

/// The root's `pub use` names and where they come from.
fn reexports(root: &str, known: &Known) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    for line in code_only(root).lines() {
        let Some(tree) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let mut paths = Vec::new();
        flatten(&[], tree.trim_end_matches(';'), &mut paths);
        for path in paths {
            if let (Some(name), Some(module)) = (path.last(), known.resolve("", &path)) {
                found.insert(name.clone(), module);
            }
        }
    }
    found
}

/// Every circle of imports, each as its modules in order.
pub fn cycles(imports: &Imports) -> Vec<Vec<String>> {
    strongly_connected(imports)
        .into_iter()
        .filter(|component| component.len() > 1)
        .collect()
}

/// The library's files as (module, text), binaries (`main.rs`, `bin/`) and test files left
/// out.
fn rust_files(src: &Path) -> Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            let rel = path.strip_prefix(src)?.to_string_lossy().into_owned();
            if path.is_dir() {
                if rel != "bin" {
                    dirs.push(path);
                }
                continue;
            }
            let Some(stem) = rel.strip_suffix(".rs") else {
                continue;
            };
            if stem == "main" || stem == "tests" || stem.ends_with("/tests") {
                continue;
            }
            let module = match stem {
                "lib" => String::new(),
                _ => stem.trim_end_matches("/mod").replace('/', "::"),
            };
            found.push((module, std::fs::read_to_string(&path)?));
        }
    }
    Ok(found)
}

/// The text without comments and without its test module.
fn code_only(text: &str) -> String {
    text.lines()
        .take_while(|line| line.trim() != "#[cfg(test)]")
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path the code names: `use` trees flattened, and `crate::`/`super::` paths.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let starts_word = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric();
        let tail = &rest[at + 4..];
        let Some(end) = tail.find(';') else { break };
        if starts_word {
            flatten(&[], &tail[..end], &mut found);
        }
        rest = &tail[end..];
    }
    for anchor in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(anchor) {
            let path: String = rest[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            // `super::{` opens a `use` tree, read above.
            if split(&path).len() > 1 {
                found.push(split(&path));
            }
            rest = &rest[at + anchor.len()..];
        }
    }
    found
}

fn split(path: &str) -> Vec<String> {
    path.split("::")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A `use` tree (`a::{b, c::{d, e}}`) as its paths.
fn flatten(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if tree.is_empty() {
        return; // after a trailing comma
    }
    let Some(open) = tree.find('{') else {
        let mut path = prefix.to_vec();
        path.extend(split(tree.split(" as ").next().unwrap_or(tree)));
        out.push(path);
        return;
    };
    let mut head = prefix.to_vec();
    head.extend(split(&tree[..open]));
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                flatten(&head, &inner[start..i], out);
                start = i + 1;
            }
            _ => {}
        }
    }
    flatten(&head, &inner[start..], out);
}

impl Known {
    /// The deepest module that `path`, written in `from`, names; None for other crates
    /// and for paths that name nothing here.
    fn resolve(&self, from: &str, path: &[String]) -> Option<String> {
        let modules = &self.modules;
        let mut at: Vec<&str> = match from {
            "" => Vec::new(),
            _ => from.split("::").collect(),
        };
        let mut segments = path.iter().map(String::as_str).peekable();
        match segments.peek().copied()? {
            "crate" => {
                at.clear();
                segments.next();
            }
            "self" => {
                segments.next();
            }
            "super" => {
                while segments.peek() == Some(&"super") {
                    at.pop();
                    segments.next();
                }
            }
            // A child module named without `self::`.
            child if modules.contains(&join(&at, Some(child))) => {}
            _ => return None,
        }
        let mut deepest = join(&at, None);
        for segment in segments {
            let deeper = join(&at, Some(segment));
            if !modules.contains(&deeper) {
                break;
            }
            at.push(segment);
            deepest = deeper;
        }
        match deepest.as_str() {
            // Through a name the root re-exports.
            "" => path
                .get(1)
                .and_then(|name| self.reexports.get(name))
                .cloned(),
            _ => modules.contains(&deepest).then_some(deepest),
        }
    }
}

fn join(at: &[&str], next: Option<&str>) -> String {
    at.iter()
        .copied()
        .chain(next)
        .collect::<Vec<_>>()
        .join("::")
}

/// Tarjan's strongly connected components.
fn strongly_connected(imports: &Imports) -> Vec<Vec<String>> {
    struct State<'a> {
        imports: &'a Imports,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.imports.get(v).into_iter().flatten() {
            if !s.index.contains_key(w.as_str()) {
                visit(s, w);
                let low = s.low[v].min(s.low[w.as_str()]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w.as_str()) {
                let low = s.low[v].min(s.index[w.as_str()]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            component.sort();
            s.found.push(component);
        }
    }
    let mut state = State {
        imports,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in imports.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(krate: &str) {
        let src = crate::cmd::workspace().join(krate).join("src");
        let imports = imports(&src).unwrap();
        assert!(imports.len() > 5, "{krate}: modules not found");
        let circles = cycles(&imports);
        let shown: Vec<String> = circles
            .iter()
            .map(|c| {
                let arrows: Vec<String> = c
                    .iter()
                    .map(|m| {
                        let to: Vec<&String> =
                            imports[m].iter().filter(|t| c.contains(t)).collect();
                        format!("  {m} -> {to:?}")
                    })
                    .collect();
                arrows.join("\n")
            })
            .collect();
        assert!(
            circles.is_empty(),
            "{krate}: modules import each other around a circle:\n{}",
            shown.join("\n\n")
        );
    }

    #[test]
    fn the_daemon_library_has_no_import_cycles() {
        check("userspace");
    }

    #[test]
    fn the_model_has_no_import_cycles() {
        check("model");
    }

    #[test]
    fn a_circle_is_found_and_paths_resolve_to_the_deepest_module() {
        let known = Known {
            modules: ["", "a", "a::b", "c"].map(String::from).into(),
            reexports: [("Z".to_string(), "a::b".to_string())].into(),
        };
        let resolve = |from: &str, path: &str| known.resolve(from, &split(path));
        assert_eq!(resolve("a::b", "super::X"), Some("a".into()));
        assert_eq!(resolve("a", "b::Y"), Some("a::b".into()));
        assert_eq!(resolve("c", "crate::a::b::f"), Some("a::b".into()));
        assert_eq!(resolve("c", "tokio::net"), None);
        assert_eq!(resolve("c", "crate::Z"), Some("a::b".into()));
        let mut paths_found = Vec::new();
        flatten(
            &[],
            "crate::{a::{self, b::Z,}, c as d,\n}",
            &mut paths_found,
        );
        assert_eq!(paths_found.len(), 3);
        let imports: Imports = [
            ("a".into(), ["a::b".into()].into()),
            ("a::b".into(), ["c".into()].into()),
            ("c".into(), ["a".into()].into()),
        ]
        .into();
        assert_eq!(cycles(&imports), vec![vec!["a", "a::b", "c"]]);
    }
}
