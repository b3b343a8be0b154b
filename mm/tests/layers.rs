//! The crate's module graph stays layered and acyclic.
//!
//! Reads the crate's own sources and collects every `crate::…` and `super::…` path in
//! code (comments are skipped). Two rules, each a failure with the offending file and
//! path when broken:
//!
//! 1. a top-level module (a layer) imports only the layers listed before it in
//!    [`LAYERS`];
//! 2. inside a layer, the modules (one per file or sub-folder, the layer's own `mod.rs`
//!    and test files excluded) import each other without a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, lowest first: each may import only the ones before it.
const LAYERS: &[&str] = &[
    "base", "frame", "backend", "paging", "mapping", "aspace", "ops",
];

/// Files that are tests or test scaffolding, not part of the graph.
fn is_test_file(name: &str) -> bool {
    matches!(name, "tests.rs" | "testing.rs")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read the source folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of `src` with line comments (doc comments included) removed.
fn code_lines(src: &str) -> impl Iterator<Item = &str> {
    src.lines().map(|line| match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    })
}

/// The first path segments after each `prefix` in `line`, with `{a, b::c}` groups
/// expanded to `a` and `b`.
fn segments_after(line: &str, prefix: &str, out: &mut Vec<(String, Option<String>)>) {
    let mut rest = line;
    while let Some(i) = rest.find(prefix) {
        let before_ok = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric();
        rest = &rest[i + prefix.len()..];
        if !before_ok {
            continue;
        }
        let first: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if first.is_empty() {
            continue;
        }
        let after = &rest[first.len()..];
        let mut seconds = Vec::new();
        if let Some(tail) = after.strip_prefix("::") {
            if let Some(group) = tail.strip_prefix('{') {
                let group = group.split('}').next().unwrap_or("");
                for item in group.split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        seconds.push(Some(name));
                    }
                }
            } else {
                let name: String = tail
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                seconds.push((!name.is_empty()).then_some(name));
            }
        }
        if seconds.is_empty() {
            seconds.push(None);
        }
        for second in seconds {
            out.push((first.clone(), second));
        }
    }
}

/// A source file's place: its layer and its module inside the layer (`None` for the
/// layer's `mod.rs` and for `lib.rs`).
fn place(src_dir: &Path, file: &Path) -> (Option<String>, Option<String>) {
    let rel: Vec<String> = file
        .strip_prefix(src_dir)
        .expect("a file under src")
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    match rel.as_slice() {
        [lib] if lib == "lib.rs" => (None, None),
        [top] => (Some(top.trim_end_matches(".rs").to_string()), None),
        [layer, file] if file == "mod.rs" => (Some(layer.clone()), None),
        [layer, module, ..] => (
            Some(layer.clone()),
            Some(module.trim_end_matches(".rs").to_string()),
        ),
        [] => (None, None),
    }
}

/// Every edge of the crate: (file, its layer, its module, target layer, target module).
struct Edge {
    file: String,
    layer: String,
    module: Option<String>,
    to_layer: String,
    to_module: Option<String>,
}

fn edges() -> Vec<Edge> {
    let src_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src_dir, &mut files);
    let mut edges = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if is_test_file(&name) {
            continue;
        }
        let (Some(layer), module) = place(&src_dir, &file) else {
            continue;
        };
        let src = fs::read_to_string(&file).expect("read a source file");
        let mut refs = Vec::new();
        let mut supers = Vec::new();
        for line in code_lines(&src) {
            segments_after(line, "crate::", &mut refs);
            segments_after(line, "super::", &mut supers);
        }
        let shown = file.strip_prefix(&src_dir).unwrap().display().to_string();
        for (to_layer, to_module) in refs {
            edges.push(Edge {
                file: shown.clone(),
                layer: layer.clone(),
                module: module.clone(),
                to_layer,
                to_module,
            });
        }
        // `super::x` from a file directly in a layer folder names module `x` of the same
        // layer (or an item of the layer's mod.rs, which is no module edge).
        let depth = file.strip_prefix(&src_dir).unwrap().iter().count();
        if depth == 2 {
            for (to_module, _) in supers {
                edges.push(Edge {
                    file: shown.clone(),
                    layer: layer.clone(),
                    module: module.clone(),
                    to_layer: layer.clone(),
                    to_module: Some(to_module),
                });
            }
        }
    }
    edges
}

#[test]
fn layers_import_only_lower_layers() {
    let rank = |l: &str| LAYERS.iter().position(|x| *x == l);
    let mut wrong = BTreeSet::new();
    for e in edges() {
        let (Some(from), Some(to)) = (rank(&e.layer), rank(&e.to_layer)) else {
            if rank(&e.layer).is_none() {
                wrong.insert(format!("{}: layer `{}` is not in LAYERS", e.file, e.layer));
            }
            continue;
        };
        if to > from {
            wrong.insert(format!(
                "{}: layer `{}` imports the higher layer `{}`",
                e.file, e.layer, e.to_layer
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "layering broken:\n{}",
        wrong.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn modules_inside_a_layer_form_no_cycle() {
    let src_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in edges() {
        let (Some(from), Some(to)) = (&e.module, &e.to_module) else {
            continue;
        };
        let is_module = src_dir.join(&e.to_layer).join(format!("{to}.rs")).exists()
            || src_dir.join(&e.to_layer).join(to).is_dir();
        if e.layer != e.to_layer || from == to || !is_module {
            continue;
        }
        graph
            .entry(format!("{}::{from}", e.layer))
            .or_default()
            .insert(format!("{}::{to}", e.layer));
    }
    // Depth-first search for a back edge; report the cycle found.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            panic!("module cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_checker_sees_groups_and_skips_comments() {
    let mut out = Vec::new();
    segments_after(
        "use crate::frame::{buddy::AllocError, meta::FrameTable}; // crate::ops::x",
        "crate::",
        &mut out,
    );
    let lines: Vec<&str> = code_lines("use crate::a::b; // crate::c::d\n/// crate::e").collect();
    assert_eq!(
        out,
        [
            ("frame".to_string(), Some("buddy".to_string())),
            ("frame".to_string(), Some("meta".to_string())),
            ("ops".to_string(), Some("x".to_string())),
        ]
    );
    let mut code = Vec::new();
    for l in lines {
        segments_after(l, "crate::", &mut code);
    }
    assert_eq!(code, [("a".to_string(), Some("b".to_string()))]);
}
