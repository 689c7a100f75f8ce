//! The runtime's module graph has layers and no cycles (STYLE.md): bottom up, error reporting,
//! logging and timeouts → state/config types → hooks and the agent connector → the pod process
//! (`pod_vmm`) → the pod library (`api`) → the OCI library (`oci`) → the CLI (`cli`). A module
//! may use only modules of a lower layer; the files of one module must not use each other in
//! a circle.
//!
//! The check reads `runtime/src`: every `crate::NAME` (any file), `super::NAME` and
//! `crate::OWN::NAME` (between sibling files of a folder) outside comments is an edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules and their layer (a module may use strictly lower layers only).
const LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("logging", 0),
    ("timeouts", 0),
    ("config", 1),
    ("network", 1),
    ("state", 2),
    ("hooks", 3),
    ("agent_link", 3),
    ("pod_vmm", 4),
    ("api", 5),
    ("oci", 6),
    ("cli", 7),
];

/// A source file: its path under `src/` (`api/pod.rs`) and its text.
struct File {
    path: String,
    text: String,
}

fn read_tree(src: &Path) -> Vec<File> {
    fn walk(dir: &Path, src: &Path, out: &mut Vec<File>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, src, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(File {
                    path: p.strip_prefix(src).unwrap().to_string_lossy().into_owned(),
                    text: std::fs::read_to_string(&p).unwrap(),
                });
            }
        }
    }
    let mut out = Vec::new();
    walk(src, src, &mut out);
    out
}

/// The text without `//` comments (doc comments included) and string literals' contents, so
/// paths in prose or messages are not edges.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = ' ';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if in_str {
                if c == '"' && prev != '\\' {
                    in_str = false;
                    out.push('"');
                }
                prev = if prev == '\\' && c == '\\' { ' ' } else { c };
                continue;
            }
            if c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' && prev != '\'' {
                in_str = true;
            }
            out.push(c);
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// Identifiers that follow `prefix` in `code`: `prefix::name` and `prefix::{a, b::c, d}`.
fn names_after(code: &str, prefix: &str) -> Vec<String> {
    let pat = format!("{prefix}::");
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(&pat) {
        // Not the tail of a longer path (`foo_crate::`, `x.super::`).
        let before = rest[..i].chars().last();
        let after = &rest[i + pat.len()..];
        rest = after;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

/// `api/pod.rs` → ("api", Some("pod")); `api/mod.rs` → ("api", None); `lib.rs` → ("lib", None).
fn module_of(path: &str) -> (String, Option<String>) {
    let parts: Vec<&str> = path.trim_end_matches(".rs").split('/').collect();
    match parts.as_slice() {
        [top] => (top.to_string(), None),
        [top, "mod"] => (top.to_string(), None),
        [top, sub, ..] => (top.to_string(), Some(sub.to_string())),
        [] => (String::new(), None),
    }
}

/// Everything wrong with the tree: upward or same-layer uses, unknown top-level modules, and
/// cycles between the files of one folder.
fn violations(files: &[File]) -> Vec<String> {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    // Sibling files per folder (what `super::NAME` can name).
    let mut subs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        if let (top, Some(sub)) = module_of(&f.path) {
            subs.entry(top).or_default().insert(sub);
        }
    }
    let mut bad = Vec::new();
    // Edges between sibling files: folder -> (from, to).
    let mut sibling_edges: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for f in files {
        let (top, sub) = module_of(&f.path);
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(&own) = layer.get(top.as_str()) else {
            bad.push(format!("{}: module {top} has no layer", f.path));
            continue;
        };
        let code = code_only(&f.text);
        for used in names_after(&code, "crate") {
            if used == top {
                continue;
            }
            match layer.get(used.as_str()) {
                Some(&l) if l < own => {}
                Some(&l) => bad.push(format!(
                    "{}: uses crate::{used} (layer {l}), not below {top} (layer {own})",
                    f.path
                )),
                None => bad.push(format!(
                    "{}: uses crate::{used}, which has no layer",
                    f.path
                )),
            }
        }
        let Some(sub) = sub else { continue };
        let siblings = subs.get(&top).cloned().unwrap_or_default();
        let mut targets = names_after(&code, "super");
        targets.extend(names_after(&code, &format!("crate::{top}")));
        for t in targets {
            if t != sub && siblings.contains(&t) {
                sibling_edges
                    .entry(top.clone())
                    .or_default()
                    .insert((sub.clone(), t));
            }
        }
    }
    for (folder, edges) in &sibling_edges {
        if let Some(cycle) = find_cycle(edges) {
            bad.push(format!(
                "{folder}: files use each other in a circle: {cycle}"
            ));
        }
    }
    bad
}

/// A cycle in the directed graph `edges`, as `a -> b -> a`, if there is one.
fn find_cycle(edges: &BTreeSet<(String, String)>) -> Option<String> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges {
        next.entry(a).or_default().push(b);
    }
    fn visit<'a>(
        n: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<String> {
        if let Some(i) = path.iter().position(|p| *p == n) {
            let mut c: Vec<&str> = path[i..].to_vec();
            c.push(n);
            return Some(c.join(" -> "));
        }
        if done.contains(n) {
            return None;
        }
        path.push(n);
        for m in next.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n);
        None
    }
    let mut done = BTreeSet::new();
    for n in next.keys() {
        if let Some(c) = visit(n, &next, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_runtime_has_layers_and_no_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = read_tree(&src);
    assert!(files.len() > 20, "read {} files from {src:?}", files.len());
    let bad = violations(&files);
    assert!(bad.is_empty(), "module graph:\n{}", bad.join("\n"));
}

fn file(path: &str, text: &str) -> File {
    File {
        path: path.to_string(),
        text: text.to_string(),
    }
}

#[test]
fn an_upward_import_and_a_cycle_are_found() {
    let files = [
        // state may not use the pod library above it.
        file("state/mod.rs", "use crate::api::PodConfig;\n"),
        // Comments, strings and longer paths are not edges.
        file(
            "pod_vmm/mod.rs",
            "// see crate::cli\nlet s = \"crate::oci\"; use my_crate::cli; use crate::state;\n",
        ),
        // Two files of api that use each other.
        file("api/pod.rs", "use super::{container::Info, Error};\n"),
        file("api/container.rs", "use crate::api::pod::helper;\n"),
        file(
            "api/mod.rs",
            "mod pod; mod container; use crate::pod_vmm;\n",
        ),
        file("oci/vm.rs", "use crate::nowhere::X;\n"),
    ];
    let bad = violations(&files);
    assert!(
        bad.iter()
            .any(|b| b.starts_with("state/mod.rs: uses crate::api")),
        "{bad:?}"
    );
    assert!(
        bad.iter().any(|b| b.contains("api: files use each other")),
        "{bad:?}"
    );
    assert!(
        bad.iter()
            .any(|b| b.contains("crate::nowhere, which has no layer")),
        "{bad:?}"
    );
    assert!(!bad.iter().any(|b| b.starts_with("pod_vmm")), "{bad:?}");
    assert_eq!(bad.len(), 3, "{bad:?}");
}

#[test]
fn a_layered_tree_passes() {
    let files = [
        file("config.rs", "use crate::logging::Format;\n"),
        file("api/mod.rs", "mod pod; use crate::{config, state};\n"),
        file("api/pod.rs", "use super::{container::Info, Error};\n"),
        file("api/container.rs", "use super::Runtime;\n"),
    ];
    assert_eq!(violations(&files), Vec::<String>::new());
}
