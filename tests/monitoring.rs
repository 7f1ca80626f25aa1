//! The monitoring that ships in `docs/monitoring/`: the alerting rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`), every
//! alert has a test, and every metric the rules and the Grafana dashboard
//! use is one a real node exports.
//!
//! promtool comes from Debian's `prometheus` package (`scripts/deps.sh` takes
//! it out of the package); without it these tests fail, unless
//! `TALLY_MONITORING_SKIP=1` asks to skip them (loudly; ignored under CI).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

fn monitoring(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/monitoring")
        .join(file)
}

fn read(file: &str) -> String {
    let path = monitoring(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// promtool, or `None` when it is missing and the tests may be skipped.
fn promtool(test: &str) -> Option<PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file());
    if found.is_some() {
        return found;
    }
    let why = "no promtool on PATH (run scripts/deps.sh as root, which takes it out of \
               Debian's prometheus package)";
    if env_flag("CI") || !env_flag("TALLY_MONITORING_SKIP") {
        panic!(
            "{test} cannot run: {why}; set TALLY_MONITORING_SKIP=1 to skip it knowingly \
             (ignored under CI)"
        );
    }
    announce(&format!(
        "\n!!! {test} SKIPPED (not a pass, TALLY_MONITORING_SKIP=1): {why}\n"
    ));
    None
}

fn run(promtool: &Path, args: &[&str]) {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(monitoring(""))
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The names after `key` on the lines of `text` (`alert: X`, `alertname: X`).
fn values_of(text: &str, key: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.trim().trim_start_matches("- ").strip_prefix(key))
        .map(|v| v.trim().to_string())
        .collect()
}

#[test]
fn the_alerting_rules_pass_their_unit_tests() {
    let Some(promtool) = promtool("the_alerting_rules_pass_their_unit_tests") else {
        return;
    };
    run(&promtool, &["check", "rules", "tally-rules.yml"]);
    run(&promtool, &["test", "rules", "tally-rules.test.yml"]);
    let alerts = values_of(&read("tally-rules.yml"), "alert:");
    let tested = values_of(&read("tally-rules.test.yml"), "alertname:");
    assert!(alerts.len() >= 6, "alerts found: {alerts:?}");
    let untested: Vec<_> = alerts.difference(&tested).collect();
    assert!(untested.is_empty(), "alerts without a test: {untested:?}");
}

/// Every `tally_*` and `process_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("tally_") || t.starts_with("process_"))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_metric_of_the_rules_and_the_dashboard_is_exported() {
    let rules = metric_names(&read("tally-rules.yml"));
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana-dashboard.json")).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("an expr").to_string());
        }
    }
    exprs.push(
        dashboard["templating"]["list"]
            .as_array()
            .expect("variables")
            .iter()
            .filter_map(|v| v["definition"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
    );
    let shown = metric_names(&exprs.join("\n"));
    for (what, names, must) in [
        ("rules", &rules, "tally_storage_free_bytes"),
        ("dashboard", &shown, "tally_peer_lag_changes"),
    ] {
        assert!(names.contains(must), "{what} read as {names:?}");
    }

    // A node that has done what the metrics count: peers called and pulled,
    // an increment, a consistent read.
    let c = Cluster::start_configured("monitoring", 2, &[]);
    c.incr(0, "m", 1);
    let r = c.consistent(0, "m", "5s");
    assert_eq!(r.status, 200, "{r:?}");
    // Some are sampled on threads of their own (the data folder's free
    // space): each must show within the bound, not at the first scrape.
    let wanted: Vec<&String> = rules.union(&shown).collect();
    eventually(
        "node 1 exports every metric the rules and the dashboard use",
        Duration::from_secs(30),
        || {
            let exported = c.http.get(&c.url(0, "/metrics")).body;
            let missing: Vec<_> = wanted
                .iter()
                .filter(|name| {
                    !exported.lines().any(|l| {
                        l.strip_prefix(name.as_str())
                            .is_some_and(|rest| rest.starts_with(['{', ' ']))
                    })
                })
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "used in docs/monitoring/ but not exported: {missing:?}"
                ))
            }
        },
    );
}
