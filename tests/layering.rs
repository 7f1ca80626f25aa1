//! The module graph against the documented layering (docs/ARCHITECTURE.md):
//! every module of the crate may use only the modules below it, so data and
//! calls flow one way and no two modules import each other.
//!
//! Reads `src/` and collects every `crate::<module>` path (outside
//! comments, `crate::{a, b}` groups included); each must name a module
//! earlier in [`LAYERS`]. On top of the order, [`NEVER`] lists imports that
//! stay forbidden even if the order changes.
//!
//! Left out: paths through `super::super::` and the tests in `tests/`,
//! which see the crate as `tally::` (they may use every layer).

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
    "replication",
    "node",
    "api",
    "server",
    "daemon",
    "client",
    "backup",
    "cli",
];

/// Modules that must never use another one, whatever the order says: the
/// client and the command line read nodes only through the public
/// vocabulary (`api::types`), so storage and replication can change how
/// they keep their state without breaking them; storage knows nothing of
/// whom it replicates with, and replication reaches the node only through
/// its narrow `Context`.
const NEVER: &[(&str, &str)] = &[
    ("client", "storage"),
    ("client", "replication"),
    ("backup", "storage"),
    ("backup", "replication"),
    ("cli", "storage"),
    ("cli", "replication"),
    ("storage", "replication"),
    ("replication", "node"),
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

/// Every module a source text refers to as `crate::<module>` or inside a
/// `crate::{...}` group (which may span lines), with the line it is on;
/// comments are skipped.
fn uses(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    // Brace depth inside an open `crate::{` group (0: none), and whether the
    // next name there starts an item (so names a module).
    let mut depth = 0usize;
    let mut item_starts = false;
    for (n, line) in text.lines().enumerate() {
        let mut rest = line.split("//").next().unwrap_or("");
        loop {
            if depth == 0 {
                let Some(i) = rest.find("crate::") else {
                    break;
                };
                rest = &rest[i + "crate::".len()..];
                if let Some(group) = rest.strip_prefix('{') {
                    (depth, item_starts, rest) = (1, true, group);
                    continue;
                }
                let name = ident(rest);
                if !name.is_empty() {
                    out.push((name.to_string(), n + 1));
                }
                rest = &rest[name.len()..];
                continue;
            }
            let Some(c) = rest.chars().next() else {
                break;
            };
            let name = ident(rest);
            if !name.is_empty() {
                if depth == 1 && item_starts && name != "self" {
                    out.push((name.to_string(), n + 1));
                }
                item_starts = false;
                rest = &rest[name.len()..];
                continue;
            }
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 1 => item_starts = true,
                _ => {}
            }
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The identifier `text` starts with (empty if none).
fn ident(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// Each use in `text` (a file of `module`, shown as `file`) that [`NEVER`]
/// forbids, as `file:line: ...`.
fn forbidden(module: &str, file: &str, text: &str) -> Vec<String> {
    uses(text)
        .into_iter()
        .filter(|(used, _)| NEVER.contains(&(module, used.as_str())))
        .map(|(used, line)| format!("{file}:{line}: {module} uses {used}, which it must never use"))
        .collect()
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
    let grouped = uses("use crate::{api::{self, types}, cluster::Actor,\n  storage};");
    assert_eq!(
        grouped,
        vec![
            ("api".to_string(), 1),
            ("cluster".to_string(), 1),
            ("storage".to_string(), 2)
        ]
    );
}

#[test]
fn no_module_uses_what_it_must_never_use() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut bad = Vec::new();
    for path in &all {
        let rel = path.strip_prefix(&src).unwrap();
        let Some(module) = module_of(rel) else {
            continue;
        };
        let text = std::fs::read_to_string(path).unwrap();
        bad.extend(forbidden(&module, &rel.display().to_string(), &text));
    }
    bad.sort();
    assert!(bad.is_empty(), "forbidden imports:\n{}", bad.join("\n"));
}

#[test]
fn a_planted_forbidden_use_is_caught() {
    let planted = "use crate::api::types::Status;\n\
                   // crate::storage in a comment is fine\n\
                   fn f() { crate::replication::peer::PeerView::clone; }\n";
    assert_eq!(
        forbidden("client", "client/x.rs", planted),
        vec!["client/x.rs:3: client uses replication, which it must never use"]
    );
    assert!(forbidden("api", "api/x.rs", planted).is_empty(), "api may");
    let grouped = "use crate::{\n    api::types::Status,\n    storage::{self, Store},\n};\n";
    assert_eq!(
        forbidden("cli", "cli/x.rs", grouped),
        vec!["cli/x.rs:3: cli uses storage, which it must never use"]
    );
}

/// The client crate pulls in nothing of a node: no storage engine, no
/// server framework, not tally itself (`cargo tree` of its normal
/// dependencies, from the lock file, offline).
#[test]
fn the_client_crate_depends_on_no_part_of_a_node() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "tally-client",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--locked",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"hyper"), "not a dependency tree: {tree}");
    for node_only in [
        "redb",
        "axum",
        "tally",
        "prometheus-client",
        "clap",
        "rcgen",
    ] {
        assert!(
            !crates.contains(&node_only),
            "tally-client depends on {node_only}:\n{tree}"
        );
    }
}
