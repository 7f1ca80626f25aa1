//! Backups and restores end to end, on real `tally` processes driven by the
//! `tally backup | restore | export | import` commands: a backup holds every
//! acknowledged increment (also one taken under load while a node is
//! paused, checked against the ledger of what was acknowledged), restores
//! into a new cluster, restoring again or into the source changes nothing,
//! a node that cannot be heard from fails the backup (or marks it partial),
//! a damaged file is refused before anything is sent, and a count its
//! owner never acknowledged is refused. Every wait is bounded.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Runs `tally ARGS` to completion (bounded by its own `--timeout`s and
/// the process's deadline below).
fn tally(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("TALLY_NODES")
        .env_remove("TALLY_NODE")
        .env_remove("TALLY_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tally");
    // Read both pipes on threads so a full pipe cannot stall the child.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut b).map(|_| b)
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut b).map(|_| b)
    });
    let mut status = None;
    let finished = wait_until(Duration::from_secs(180), || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if !finished {
        let _ = child.kill();
        let _ = child.wait();
        panic!("tally {args:?} did not finish within 180 s");
    }
    Output {
        status: status.unwrap(),
        stdout: out.join().unwrap().unwrap(),
        stderr: err.join().unwrap().unwrap(),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({:?}): {}{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// Adds `amount` to each name on node `i` with batches.
fn write(c: &Cluster, i: usize, items: &[(String, u64)]) {
    for chunk in items.chunks(1000) {
        let body = json!({
            "increments": chunk.iter().map(|(n, a)| json!({"name": n, "amount": a})).collect::<Vec<_>>()
        });
        let r = c.http.post(&c.url(i, "/counters"), &body.to_string());
        assert_eq!(r.status, 200, "batch on node {}: {r:?}", i + 1);
    }
}

/// Every counter's value, read with `tally export` (consistently).
fn export(node: &str) -> BTreeMap<String, u128> {
    let o = tally(&["export", "--node", node]);
    let out = ok(&o, "export");
    out.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("an export line is JSON");
            let value: u128 = v["value"].to_string().parse().expect("a value");
            (v["name"].as_str().unwrap().to_string(), value)
        })
        .collect()
}

/// 2 500 names: each written on one node, every tenth on all three (so it
/// has three components), with amounts that tell them apart.
fn fill(c: &Cluster) -> BTreeMap<String, u128> {
    let mut ledger = BTreeMap::new();
    let mut per_node: Vec<Vec<(String, u64)>> = vec![Vec::new(); 3];
    for i in 0..2500u64 {
        let name = format!("n{i:05}");
        let nodes: Vec<usize> = if i % 10 == 0 {
            vec![0, 1, 2]
        } else {
            vec![(i % 3) as usize]
        };
        for n in nodes {
            let amount = i % 7 + 1 + n as u64;
            per_node[n].push((name.clone(), amount));
            *ledger.entry(name.clone()).or_insert(0u128) += u128::from(amount);
        }
    }
    for (n, items) in per_node.iter().enumerate() {
        write(c, n, items);
    }
    ledger
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[test]
fn a_backup_restores_into_a_new_cluster_and_restoring_again_changes_nothing() {
    let a = Cluster::start_configured("backup-a", 3, &[]);
    let ledger = fill(&a);
    let file = a.dir().join("cluster.tallybak");
    let node_a = a.url(0, "");
    let o = tally(&["backup", "--node", &node_a, "-o", path_str(&file)]);
    let said = ok(&o, "backup");
    assert!(said.contains("2500 counters"), "{said}");
    assert!(!a.dir().join("cluster.tallybak.partial").exists());

    let v = tally(&["backup", "verify", path_str(&file), "--json"]);
    let report: Value = serde_json::from_str(&ok(&v, "verify")).unwrap();
    assert_eq!(report["trailer"]["counters"], 2500);
    assert_eq!(report["trailer"]["partial"], false);
    let sum: u128 = ledger.values().sum();
    assert_eq!(report["trailer"]["sum"], sum.to_string());

    // Into a new cluster of another size: every value, exactly.
    let b = Cluster::start_configured("backup-b", 2, &[]);
    let node_b = b.url(0, "");
    let r = tally(&["restore", path_str(&file), "--node", &node_b]);
    let said = ok(&r, "restore");
    assert!(
        said.contains("merged 2500 counters; 2500 of them changed"),
        "{said}"
    );
    assert_eq!(export(&node_b), ledger, "the new cluster holds the backup");
    // Through the other node of the new cluster too (replicated).
    assert_eq!(export(&b.url(1, "")), ledger);

    // Again: nothing changes.
    let r = tally(&["restore", path_str(&file), "--node", &b.url(1, "")]);
    let said = ok(&r, "restore again");
    assert!(
        said.contains("merged 2500 counters; 0 of them changed"),
        "{said}"
    );
    assert_eq!(export(&node_b), ledger);

    // Into the cluster it came from, after newer increments: nothing is
    // lowered, nothing added.
    let newer: Vec<(String, u64)> = (0..100).map(|i| (format!("n{i:05}"), 5)).collect();
    write(&a, 1, &newer);
    let mut now = ledger.clone();
    for (n, amount) in &newer {
        *now.get_mut(n).unwrap() += u128::from(*amount);
    }
    let r = tally(&["restore", path_str(&file), "--node", &node_a]);
    let said = ok(&r, "restore into the source");
    assert!(said.contains("0 of them changed"), "{said}");
    assert_eq!(export(&node_a), now);

    // A resumed restore sends only what comes after --after.
    let c = Cluster::start_configured("backup-c", 1, &[]);
    let r = tally(&[
        "restore",
        path_str(&file),
        "--node",
        &c.url(0, ""),
        "--after",
        "n01999",
    ]);
    let said = ok(&r, "resumed restore");
    assert!(said.contains("merged 500 counters"), "{said}");
    let got = export(&c.url(0, ""));
    let want: BTreeMap<String, u128> = ledger
        .iter()
        .filter(|(n, _)| n.as_str() > "n01999")
        .map(|(n, v)| (n.clone(), *v))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn a_damaged_backup_is_refused_before_anything_is_sent() {
    let a = Cluster::start_configured("backup-damage", 1, &[]);
    let ledger = fill_one(&a);
    let file = a.dir().join("b.tallybak");
    ok(
        &tally(&["backup", "--node", &a.url(0, ""), "-o", path_str(&file)]),
        "backup",
    );
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    let damaged = a.dir().join("damaged.tallybak");
    std::fs::write(&damaged, &bytes).unwrap();
    let v = tally(&["backup", "verify", path_str(&damaged)]);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v.stderr));
    assert!(
        text(&v.stderr).contains("damaged frame at byte"),
        "{}",
        text(&v.stderr)
    );
    let cut = a.dir().join("cut.tallybak");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let v = tally(&["backup", "verify", path_str(&cut)]);
    assert_eq!(v.status.code(), Some(1));

    let b = Cluster::start_configured("backup-damage-b", 1, &[]);
    for f in [&damaged, &cut] {
        let r = tally(&["restore", path_str(f), "--node", &b.url(0, "")]);
        assert_eq!(r.status.code(), Some(1), "{}", text(&r.stderr));
    }
    assert_eq!(
        b.status(0)["names"],
        0,
        "nothing of a damaged file was restored"
    );
    assert_eq!(export(&a.url(0, "")), ledger);
}

fn fill_one(c: &Cluster) -> BTreeMap<String, u128> {
    let items: Vec<(String, u64)> = (0..1500).map(|i| (format!("k{i:04}"), i + 1)).collect();
    write(c, 0, &items);
    items.into_iter().map(|(n, a)| (n, u128::from(a))).collect()
}

#[test]
fn a_node_that_cannot_be_heard_fails_the_backup_or_marks_it_partial() {
    let mut a = Cluster::start_configured("backup-partial", 3, &[]);
    let ledger = fill(&a);
    // Every name reached nodes 1 and 2 before node 3 goes: then what the
    // partial backup lacks is only node 3's later state, here nothing.
    for i in 0..2 {
        eventually("every name replicated", Duration::from_secs(30), || {
            let names = a.status(i)["names"].as_u64().unwrap_or(0);
            (names == ledger.len() as u64)
                .then_some(())
                .ok_or(format!("node {} holds {names}", i + 1))
        });
    }
    let silent = a.addrs()[2].clone();
    a.nodes[2].kill();
    let file = a.dir().join("b.tallybak");
    let node = a.url(0, "");
    let o = tally(&[
        "backup",
        "--node",
        &node,
        "-o",
        path_str(&file),
        "--timeout",
        "3s",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains(&silent), "{}", text(&o.stderr));
    assert!(!file.exists() && !a.dir().join("b.tallybak.partial").exists());

    let o = tally(&[
        "backup",
        "--node",
        &node,
        "-o",
        path_str(&file),
        "--timeout",
        "3s",
        "--allow-partial",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let v = tally(&["backup", "verify", path_str(&file), "--json"]);
    let report: Value = serde_json::from_str(&ok(&v, "verify")).unwrap();
    assert_eq!(report["trailer"]["partial"], true);
    assert_eq!(report["trailer"]["without"], json!([silent]));
    // What the other two hold is there: every name, replicated to them
    // before the kill.
    assert_eq!(report["trailer"]["counters"], ledger.len());
}

#[test]
fn a_count_its_owner_never_acknowledged_is_refused() {
    let c = Cluster::start_configured("backup-forged", 2, &[]);
    c.incr(0, "x", 3);
    c.incr(1, "x", 4);
    c.wait_value(1, "x", 7, Duration::from_secs(20));
    let lines = c.dir().join("lines.jsonl");
    for owner in [0usize, 1] {
        let s = c.status(owner);
        let id = s["id"].as_u64().unwrap();
        let incarnation = u64::from_str_radix(s["incarnation"].as_str().unwrap(), 16).unwrap();
        let forged = json!({
            "name": "x",
            "components": [{"node": id, "incarnation": incarnation, "count": 1_000_000}]
        });
        std::fs::write(&lines, format!("{forged}\n")).unwrap();
        // Always through node 1: its own component, then node 2's.
        let o = tally(&["import", path_str(&lines), "--node", &c.url(0, "")]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains("never acknowledged"),
            "{}",
            text(&o.stderr)
        );
        for i in 0..2 {
            assert_eq!(c.value(i, "x"), 7, "node {} unchanged", i + 1);
        }
    }
    // An import of a departed replica's component is merged, once.
    let departed = json!({"name": "x", "components": [{"node": 9, "incarnation": 9, "count": 5}]});
    std::fs::write(&lines, format!("{departed}\n{departed}\n")).unwrap();
    ok(
        &tally(&["import", path_str(&lines), "--node", &c.url(0, "")]),
        "import",
    );
    ok(
        &tally(&["import", path_str(&lines), "--node", &c.url(1, "")]),
        "import again",
    );
    c.wait_value(1, "x", 12, Duration::from_secs(20));
    assert_eq!(c.value(0, "x"), 12);
    // A line whose value is not the sum of its components is refused,
    // and nothing of the file is sent.
    std::fs::write(
        &lines,
        "{\"name\":\"y\",\"value\":1,\"components\":[]}\n{\"name\":\"z\",\"components\":[{\"node\":9,\"incarnation\":9,\"count\":1}]}\n",
    )
    .unwrap();
    let o = tally(&["import", path_str(&lines), "--node", &c.url(0, "")]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains(":1: value 1"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(c.value(0, "z"), 0);
}

/// Under load, with a node paused part of the time, a backup holds every
/// increment acknowledged before it began and nothing never sent; it
/// restores into a fresh cluster, and restoring it again changes nothing.
#[test]
fn a_backup_under_load_and_a_pause_holds_what_was_acknowledged_before_it() {
    let c = Arc::new(Cluster::start_configured("backup-load", 3, &[]));
    let filled = fill(&c);
    // Acknowledged (and sent) per name, by writers on every node.
    let acked: Arc<Mutex<BTreeMap<String, u128>>> = Arc::default();
    let sent: Arc<Mutex<BTreeMap<String, u128>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|n| {
            let (c, acked, sent, stop) = (c.clone(), acked.clone(), sent.clone(), stop.clone());
            std::thread::spawn(move || {
                let http = Http::new(true);
                for k in 0..100_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let name = format!("n{:05}", (k * 7 + n as u64 * 13) % 2500);
                    *sent.lock().unwrap().entry(name.clone()).or_default() += 1;
                    let url = c.url(n, &format!("/counter/{name}"));
                    if let Ok(r) =
                        http.try_request("POST", &url, Some(b"1"), Duration::from_secs(2))
                        && r.status == 200
                    {
                        *acked.lock().unwrap().entry(name).or_default() += 1;
                    }
                }
            })
        })
        .collect();
    // Let the load run, then take what was acknowledged so far.
    assert!(wait_until(Duration::from_secs(30), || acked
        .lock()
        .unwrap()
        .values()
        .sum::<u128>()
        >= 300));
    let before = acked.lock().unwrap().clone();
    let file = c.dir().join("load.tallybak");
    let pauser = {
        let pid = c.nodes[2].pid();
        std::thread::spawn(move || {
            signal(pid, "STOP");
            std::thread::sleep(Duration::from_millis(1500));
            signal(pid, "CONT");
        })
    };
    let o = tally(&["backup", "--node", &c.url(1, ""), "-o", path_str(&file)]);
    pauser.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    ok(&o, "backup under load");
    // The file's values, name by name, against the ledgers: at least what
    // was acknowledged before the backup began, at most what was ever sent.
    let r = Cluster::start_configured("backup-load-r", 1, &[]);
    ok(
        &tally(&["restore", path_str(&file), "--node", &r.url(0, "")]),
        "restore",
    );
    let restored = export(&r.url(0, ""));
    // Restored again: nothing changes.
    let again = tally(&["restore", path_str(&file), "--node", &r.url(0, "")]);
    assert!(ok(&again, "restore again").contains("0 of them changed"));
    assert_eq!(export(&r.url(0, "")), restored);
    let sent = sent.lock().unwrap().clone();
    assert_eq!(restored.len(), filled.len());
    for (name, base) in &filled {
        let got = restored.get(name).copied().unwrap_or(0);
        let floor = base + before.get(name).copied().unwrap_or(0);
        let most = base + sent.get(name).copied().unwrap_or(0);
        assert!(
            (floor..=most).contains(&got),
            "{name}: backup holds {got}, acknowledged before it {floor}, ever sent {most}"
        );
    }
    assert!(before.values().sum::<u128>() >= 300);
}
