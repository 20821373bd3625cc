//! The architecture, checked: dependencies between the gateway's modules point one way,
//! and policy crates depend on nothing of the gateway but the plugin API.
//!
//! The gateway's sources are read as text. Every `crate::a::b` path names a module; a file
//! of module `x` that names module `y` is an edge `x -> y`. Two graphs must be acyclic:
//! the top-level modules (`proxy`, `upstream`, `server`, ...), and the sibling modules
//! inside each of them. A child naming its own parent (`super::Item`) is not an edge: that
//! is how a submodule uses its module's types.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_owned()
}

/// Every `.rs` file under `dir`, with its module path (`proxy/forward.rs` -> proxy::forward).
fn modules(dir: &Path, prefix: &[String], out: &mut Vec<(Vec<String>, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read the source dir").flatten().collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        if path.is_dir() {
            let mut next = prefix.to_vec();
            next.push(name);
            modules(&path, &next, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let mut module = prefix.to_vec();
            if !matches!(name.as_str(), "mod" | "lib" | "main") {
                module.push(name);
            }
            out.push((module, std::fs::read_to_string(&path).expect("read a source file")));
        }
    }
}

/// The module paths a source names through `crate::` and `super::`.
fn references(module: &[String], text: &str, known: &BTreeSet<Vec<String>>) -> BTreeSet<Vec<String>> {
    let mut found = BTreeSet::new();
    let code: String = text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
    // In `a/b.rs` and in `a/b/mod.rs` (both module a::b), `super` is `a`.
    let parent = module[..module.len().saturating_sub(1)].to_vec();
    for (anchor, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut rest = code.as_str();
        while let Some(at) = rest.find(anchor) {
            let before = rest[..at].chars().last();
            rest = &rest[at + anchor.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            // The longest run of path segments that is a known module.
            let mut path = base.clone();
            for segment in rest.split("::") {
                let ident: String = segment.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                let mut longer = path.clone();
                longer.push(ident.clone());
                if ident.is_empty() || !known.contains(&longer) {
                    break;
                }
                path = longer;
                if ident.len() != segment.len() {
                    break;
                }
            }
            if !path.is_empty() {
                found.insert(path);
            }
        }
    }
    found
}

fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges.keys().find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

#[test]
fn gateway_modules_depend_on_each_other_one_way_only() {
    let mut files = Vec::new();
    modules(&workspace().join("gateway/src"), &[], &mut files);
    let known: BTreeSet<Vec<String>> = files.iter().map(|(m, _)| m.clone()).collect();
    assert!(known.len() > 20, "the walk found the sources: {known:?}");

    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut siblings: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (module, text) in &files {
        let Some(first) = module.first() else { continue };
        for target in references(module, text, &known) {
            let Some(target_first) = target.first() else { continue };
            if target_first != first {
                top.entry(first.clone()).or_default().insert(target_first.clone());
            } else if module.len() >= 2 && target.len() >= 2 && module[1] != target[1] {
                siblings
                    .entry(first.clone())
                    .or_default()
                    .entry(module[1].clone())
                    .or_default()
                    .insert(target[1].clone());
            }
        }
    }
    assert!(top.get("proxy").is_some_and(|t| t.contains("upstream")), "the scan sees real edges: {top:?}");
    if let Some(cycle) = find_cycle(&top) {
        panic!("import cycle between top-level modules: {}", cycle.join(" -> "));
    }
    for (parent, graph) in &siblings {
        if let Some(cycle) = find_cycle(graph) {
            panic!("import cycle inside {parent}: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let edges: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["c".to_owned()])),
        ("c".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]
    .into();
    assert_eq!(find_cycle(&edges), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    let acyclic: BTreeMap<String, BTreeSet<String>> =
        [("a".to_owned(), BTreeSet::from(["b".to_owned()])), ("b".to_owned(), BTreeSet::new())].into();
    assert_eq!(find_cycle(&acyclic), None);
}

#[test]
fn policy_crates_depend_only_on_the_plugin_api() {
    let plugins = workspace().join("plugins");
    let mut checked = 0;
    for entry in std::fs::read_dir(&plugins).expect("plugins/").flatten() {
        let Ok(manifest) = std::fs::read_to_string(entry.path().join("Cargo.toml")) else { continue };
        let name = entry.file_name().to_string_lossy().into_owned();
        checked += 1;
        for line in manifest.lines().map(str::trim) {
            let dependency = line.split(['.', ' ', '=']).next().unwrap_or_default();
            let internal = dependency == "gateway" || dependency.starts_with("gateway-");
            if internal && !line.starts_with("name") {
                assert_eq!(dependency, "gateway-plugin-api", "plugins/{name} depends on {dependency}");
            }
        }
    }
    assert!(checked >= 7, "found {checked} plugin crates");
}
