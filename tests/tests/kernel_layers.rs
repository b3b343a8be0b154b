//! The kernel crate stays layered: hardware below memory below address spaces.
//!
//! Reads `kernel/src` and collects, in code (comments skipped), every path that names a
//! top-level module: `crate::m`, `crate::{m, ..}`, and `super::m` in a file whose parent
//! is the crate root. Each top-level module has a rank in [`LAYERS`]; a module may import
//! only modules of its own rank or lower. In-kernel tests and benchmarks (files named
//! `tests.rs`, `*_tests.rs` or `bench.rs`, and files under a `tests` folder) drive every
//! layer from above and are left out.

use std::fs;
use std::path::{Path, PathBuf};

/// The kernel's top-level modules by rank, lowest first.
const LAYERS: &[&[&str]] = &[
    &["arch"],
    &["mem"],
    &["smp"],
    &["tlb"],
    &["vm"],
    &["harness", "bench", "main", "options"],
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel/src")
}

fn is_test_or_bench(rel: &[String]) -> bool {
    let name = rel.last().map(String::as_str).unwrap_or("");
    rel.iter().rev().skip(1).any(|dir| dir == "tests")
        || matches!(name, "tests.rs" | "bench.rs")
        || name.ends_with("_tests.rs")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read a kernel source folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// An identifier at the start of `s`.
fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level names each `prefix` in `code` is followed by (a `{a, b::c}` group gives
/// `a` and `b`).
fn names_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let word_start = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric();
        rest = &rest[i + prefix.len()..];
        if !word_start {
            continue;
        }
        match rest.strip_prefix('{') {
            Some(group) => {
                let group = group.split('}').next().unwrap_or("");
                names.extend(group.split(',').map(|item| ident(item.trim())));
            }
            None => names.push(ident(rest)),
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

/// Code of a source file without its comments (line and doc comments).
fn code(src: &str) -> String {
    src.lines()
        .map(|line| line.find("//").map_or(line, |i| &line[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Upward imports: `(file, its module, imported module)`.
fn upward_imports(src: &Path) -> Vec<(String, String, String)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut found = Vec::new();
    for file in files {
        let rel: Vec<String> = file
            .strip_prefix(src)
            .expect("a file under kernel/src")
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        if is_test_or_bench(&rel) {
            continue;
        }
        let module = rel[0].trim_end_matches(".rs").to_string();
        let own = rank(&module)
            .unwrap_or_else(|| panic!("top-level module `{module}` has no rank in LAYERS"));
        let text = code(&fs::read_to_string(&file).expect("read a kernel source file"));
        let mut targets = names_after(&text, "crate::");
        let parent_is_root = rel.len() == 1 || (rel.len() == 2 && rel[1] == "mod.rs");
        if parent_is_root {
            targets.extend(names_after(&text, "super::"));
        }
        for target in targets {
            if rank(target).is_some_and(|r| r > own) {
                found.push((rel.join("/"), module.clone(), target.to_string()));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn every_top_level_module_has_a_rank() {
    for entry in fs::read_dir(src_dir()).expect("read kernel/src") {
        let name = entry.expect("a folder entry").file_name();
        let name = name.to_string_lossy();
        let module = name.trim_end_matches(".rs");
        assert!(
            rank(module).is_some(),
            "kernel/src/{name}: top-level module `{module}` has no rank in LAYERS"
        );
    }
}

#[test]
fn no_layer_imports_a_higher_one() {
    let found = upward_imports(&src_dir());
    let lines: Vec<String> = found
        .iter()
        .map(|(file, from, to)| format!("kernel/src/{file}: `{from}` imports higher layer `{to}`"))
        .collect();
    assert!(lines.is_empty(), "upward imports:\n{}", lines.join("\n"));
}

#[test]
fn the_parser_sees_groups_and_skips_comments() {
    let text =
        code("use crate::{mem::frames, tlb};\n// crate::vm in a comment\nx(crate::harness::f);");
    assert_eq!(names_after(&text, "crate::"), ["mem", "tlb", "harness"]);
    assert!(!names_after("notcrate::vm", "crate::").contains(&"vm"));
}
