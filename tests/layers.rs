//! The layering of `src/` (ARCHITECTURE.md): a layer imports only the layers below it, and no
//! two files of `src/` import each other, directly or round a circle. Read from the source, so a
//! new `use` that breaks either rule fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each layer folder (or top file) and what it may import besides itself.
const ALLOWED: &[(&str, &[&str])] = &[
    ("config", &["proto"]),
    ("proto", &[]),
    ("runtime", &["config", "proto"]),
    ("cluster", &["config", "runtime"]),
    ("hooks", &["config", "runtime"]),
    ("app", &["config", "proto"]),
    (
        "pubsub",
        &["config", "proto", "runtime", "cluster", "hooks", "app"],
    ),
    (
        "http",
        &[
            "config", "proto", "runtime", "cluster", "hooks", "app", "pubsub",
        ],
    ),
    (
        "transport",
        &[
            "config", "proto", "runtime", "cluster", "hooks", "app", "pubsub", "http",
        ],
    ),
    ("sim", &["config", "proto", "runtime", "app", "pubsub"]),
    (
        "server",
        &[
            "config",
            "proto",
            "runtime",
            "cluster",
            "hooks",
            "app",
            "pubsub",
            "http",
            "transport",
        ],
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file under src/: `runtime/shard.rs` -> ["runtime", "shard"].
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut m: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    if m.last()
        .is_some_and(|l| l == "mod" || l == "lib" || l == "main")
    {
        m.pop();
    }
    m
}

/// `crate::a::b::c` paths used in code (not in comments, not in test modules).
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = Vec::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let path: Vec<String> = rest
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .next()
                .unwrap_or("")
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if !path.is_empty() {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn each_layer_imports_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut broken = Vec::new();
    for f in &files {
        let m = module_of(&src, f);
        let Some(layer) = m.first() else { continue }; // lib.rs
        let Some(ok) = allowed.get(layer.as_str()) else {
            panic!("{} is in no layer of ALLOWED", f.display());
        };
        for path in crate_paths(&std::fs::read_to_string(f).unwrap()) {
            let to = path[0].as_str();
            if to != layer && !ok.contains(&to) {
                broken.push(format!("{} uses crate::{}", f.display(), path.join("::")));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "layer rule broken:\n{}",
        broken.join("\n")
    );
}

#[test]
fn no_two_files_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(&src, f)).collect();
    // Edges between files: a path resolves to the longest module prefix that is a file.
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for f in &files {
        let from = module_of(&src, f);
        for path in crate_paths(&std::fs::read_to_string(f).unwrap()) {
            let to = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains(p));
            if let Some(to) = to
                && to != from
                && !from.starts_with(&to)
            // a file using its own parent module's items
            {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    // Depth-first search for a circle.
    fn visit(
        n: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        match state.get(n) {
            Some(1) => {
                let i = stack.iter().position(|s| s == n).unwrap();
                let mut circle = stack[i..].to_vec();
                circle.push(n.clone());
                return Some(circle);
            }
            Some(_) => return None,
            None => {}
        }
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if let Some(circle) = visit(n, &edges, &mut state, &mut Vec::new()) {
            let names: Vec<String> = circle.iter().map(|m| m.join("::")).collect();
            panic!("files import each other: {}", names.join(" -> "));
        }
    }
    assert!(edges.len() > 10, "the scan found the files' imports");
}

/// Issue 17: glommio's timers could fail to wake an idle executor, so the core's clock (the tick
/// that checks for a stop and drives every deadline) is on the core's own ring. Outside test
/// code, the one glommio timer left is the flusher's short gap under load, which a lost timer
/// delays by at most a tick. A new `glommio::timer` wait elsewhere fails here: give it a
/// deadline on the wheel instead.
#[test]
fn no_core_code_waits_on_glommio_timers_but_the_flusher() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut uses = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        // Test modules come last in a file: stop at the first `#[cfg(test)]`.
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (n, line) in code.lines().enumerate() {
            if line.contains("glommio::timer") && !line.trim_start().starts_with("//") {
                let rel = f.strip_prefix(&src).unwrap().display().to_string();
                uses.push(format!("{rel}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert_eq!(uses.len(), 1, "glommio timers outside tests: {uses:#?}");
    assert!(
        uses[0].starts_with("runtime/shard.rs") && uses[0].contains("FLUSH_GAP"),
        "{uses:?}"
    );
}
