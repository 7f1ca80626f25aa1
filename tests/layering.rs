//! The module graph against the documented layering (docs/ARCHITECTURE.md):
//! every module of the crate may use only the modules below it, so data and
//! calls flow one way and no two modules import each other.
//!
//! Reads `src/` and collects every `crate::<module>` path (outside
//! comments); each must name a module earlier in [`LAYERS`].

use std::collections::BTreeSet;
use std::path::Path;

/// Bottom to top. Keep in step with docs/ARCHITECTURE.md.
const LAYERS: &[&str] = &[
    "crdt",
    "input",
    "cluster",
    "metrics",
    "tls",
    "auth",
    "storage",
    "proto",
    "transport",
    "messenger",
    "exchange",
    "replication",
    "node",
    "api",
    "server",
    "daemon",
    "client",
    "cli",
];

/// The top-level module a file of `src/` belongs to.
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    Some(first.trim_end_matches(".rs").to_string())
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every module a source text refers to as `crate::<module>`, with the
/// line it is on; comments are skipped.
fn uses(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((name, n + 1));
            }
        }
    }
    out
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut seen = BTreeSet::new();
    let mut bad = Vec::new();
    for path in &all {
        let rel = path.strip_prefix(&src).unwrap();
        let Some(module) = module_of(rel) else {
            continue;
        };
        if module == "lib" || module == "bin" {
            continue;
        }
        seen.insert(module.clone());
        let Some(level) = LAYERS.iter().position(|m| *m == module) else {
            bad.push(format!(
                "{}: module {module} is not in LAYERS",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(path).unwrap();
        for (used, line) in uses(&text) {
            if used == module {
                continue;
            }
            match LAYERS.iter().position(|m| *m == used) {
                Some(l) if l < level => {}
                Some(_) => bad.push(format!(
                    "{}:{line}: {module} uses {used}, which is not below it",
                    rel.display()
                )),
                None => bad.push(format!(
                    "{}:{line}: {module} uses crate::{used}, not in LAYERS",
                    rel.display()
                )),
            }
        }
    }
    for m in LAYERS {
        if !seen.contains(*m) {
            bad.push(format!("LAYERS names {m}, which has no file in src/"));
        }
    }
    assert!(bad.is_empty(), "layering violations:\n{}", bad.join("\n"));
}

#[test]
fn the_scanner_sees_uses_and_skips_comments() {
    let found = uses(
        "use crate::node::Node; // crate::api is fine here\nlet x = crate::storage::Store::open;",
    );
    assert_eq!(
        found,
        vec![("node".to_string(), 1), ("storage".to_string(), 2)]
    );
}
