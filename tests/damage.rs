//! Damaged data folders, on real processes: a byte flipped in a stopped
//! node's write-ahead log is reported (log, `/status`, metrics, `tally
//! check`), never taken for a torn tail; the node salvages what reads back
//! and counts on under a new incarnation, or refuses to start when told
//! to; in a cluster nothing its peers hold is lost, and what it counts
//! after the salvage is never hidden under what peers saw before.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// The newest log segment of a data folder.
fn newest_segment(data: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(data.join("log"))
        .expect("a log folder")
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    segments.pop().expect("a log segment")
}

/// Flips one byte two thirds of the way into what the segment holds
/// before its zeros: inside a record some ten records before the end of
/// thirty, in any record format. Returns the offset.
fn flip_inside(segment: &Path) -> usize {
    let bytes = std::fs::read(segment).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).expect("records");
    let at = end * 2 / 3;
    write_in_place(segment, at, bytes[at] ^ 0x20);
    at
}

/// Writes one byte of a file where it stands (never truncating it: a
/// running node may read the file at any moment).
fn write_in_place(path: &Path, at: usize, byte: u8) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&[byte], at as u64).unwrap();
    file.sync_data().unwrap();
}

fn names(status: &serde_json::Value) -> u64 {
    status["names"].as_u64().unwrap()
}

fn check(dir: &Path) -> (Option<i32>, String) {
    let child = Command::new(BIN)
        .arg("check")
        .arg(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tally check");
    let out = eintr::wait_with_output(child).expect("tally check ends");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The measurement that opened this work: one node, 30 increments to 30
/// new names, killed, one byte flipped in a record near the end of its
/// log. It used to start silently with 20 names.
#[test]
fn a_flipped_byte_in_the_log_is_reported_and_salvaged() {
    let mut c = Cluster::start("damage-one", 1, &[]);
    assert_eq!(c.post_config(0, &c.addrs()).status, 200);
    for i in 0..30u64 {
        assert_eq!(c.incr(0, &format!("n{i:02}"), i + 1), u128::from(i + 1));
    }
    let before = c.status(0);
    c.nodes[0].kill();
    let data = c.nodes[0].spec.data_dir.clone().unwrap();
    let segment = newest_segment(&data);
    let offset = flip_inside(&segment);

    // The offline check names the damage and exits 1, changing nothing.
    let (code, report) = check(&data);
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("DAMAGE"), "{report}");
    assert!(
        report.contains(&segment.file_name().unwrap().to_string_lossy().into_owned()),
        "{report}"
    );
    assert_eq!(check(&data).0, Some(1), "a second check finds the same");

    // Told to refuse, the node stops with the file and offset named.
    let mut cmd = c.nodes[0].spec.command();
    cmd.args(["--on-damage", "refuse"]);
    let (status, stderr) =
        run_expecting_exit(cmd, &c.dir().join("refuse.log"), Duration::from_secs(15));
    let status = status.expect("the node exits");
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("--on-damage salvage"), "{stderr}");
    assert!(
        stderr.contains(&format!("at byte {}", offset / 512 * 512)),
        "{stderr}"
    );

    // By default it salvages: 29 names, a new incarnation, the event shown.
    c.restart(0);
    let after = c.status(0);
    assert_eq!(names(&after), 29, "{after}");
    assert_ne!(after["incarnation"], before["incarnation"]);
    let storage = &after["storage"];
    assert_eq!(
        storage["salvaged"].as_array().unwrap().len(),
        1,
        "{storage}"
    );
    assert!(storage["damage_found"].as_u64().unwrap() >= 1, "{storage}");
    assert!(
        storage["damage"][0].as_str().unwrap().contains("at byte"),
        "{storage}"
    );
    let metrics = c.http.get(&c.url(0, "/metrics")).body;
    assert!(metrics.contains("tally_storage_salvages 1"), "{metrics}");
    assert!(c.nodes[0].log().contains("storage damage"), "logged");
    let kept: u128 = (0..30).map(|i| c.value(0, &format!("n{i:02}"))).sum();
    let all: u128 = (1..=30).sum();
    assert!(
        kept < all && kept >= all - 30,
        "one record's name lost: {kept}"
    );
    assert_eq!(c.incr(0, "n00", 1), 2, "it counts on");

    // Salvaged once: the next start is clean, same incarnation.
    c.nodes[0].kill();
    assert_eq!(check(&data).0, Some(0), "clean after the salvage");
    c.restart(0);
    let again = c.status(0);
    assert_eq!(again["incarnation"], after["incarnation"]);
    assert_eq!(again["storage"]["salvaged"].as_array().unwrap().len(), 1);
    assert_eq!(again["storage"]["damage_found"], 0);
}

/// A database file that fails its check at start (here garbage where the
/// B-tree should be, as a lost first sector would leave it): told to
/// refuse, the node stops naming its folder and changes nothing; by
/// default it moves the file to `damaged/`, byte for byte, and counts on
/// under a new incarnation with the salvage shown.
#[test]
fn a_damaged_database_file_is_refused_or_set_aside() {
    let mut c = Cluster::empty("damage-btree");
    let dir = c.dir().join("node-1");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let junk: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("tally.redb"), &junk).expect("write");
    let mut spec = c.spec(1, &[]);
    spec.data_dir = Some(dir.clone());

    let mut cmd = spec.command();
    cmd.args(["--on-damage", "refuse"]);
    let (status, stderr) =
        run_expecting_exit(cmd, &c.dir().join("refuse.log"), Duration::from_secs(15));
    let status = status.expect("the node exits");
    assert!(!status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let shown = dir.display().to_string();
    assert!(stderr.contains(&shown), "does not name {shown}: {stderr}");
    assert_eq!(std::fs::read(dir.join("tally.redb")).expect("read"), junk);
    assert!(!dir.join("damaged").exists(), "refusing changes nothing");

    let i = c.add(spec);
    let after = c.status(i);
    let storage = &after["storage"];
    assert_eq!(
        storage["salvaged"].as_array().unwrap().len(),
        1,
        "{storage}"
    );
    assert!(storage["damage_found"].as_u64().unwrap() >= 1, "{storage}");
    let aside: Vec<PathBuf> = std::fs::read_dir(dir.join("damaged"))
        .expect("damaged/")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(&aside[0]).expect("read"),
        junk,
        "kept as found"
    );
    assert_eq!(c.incr(i, "x", 1), 1, "it counts on");
}

/// In a cluster, a salvaged node loses nothing its peers hold: consistent
/// reads include every acknowledged increment, its own values come back
/// by anti-entropy, and what it counts afterwards adds up everywhere (its
/// new incarnation is a component nobody has seen, so nothing it counts
/// hides under an older maximum).
#[test]
fn a_salvaged_node_gets_back_what_its_peers_hold() {
    let mut c = Cluster::start_configured("damage-three", 3, &[]);
    for i in 0..30u64 {
        c.incr(0, &format!("n{i:02}"), i + 1);
    }
    for i in 0..30u64 {
        c.wait_value(
            2,
            &format!("n{i:02}"),
            u128::from(i + 1),
            Duration::from_secs(10),
        );
    }
    let before = c.status(0);
    c.nodes[0].kill();
    let data = c.nodes[0].spec.data_dir.clone().unwrap();
    flip_inside(&newest_segment(&data));
    c.restart(0);
    let after = c.status(0);
    assert_ne!(after["incarnation"], before["incarnation"], "salvaged");
    for i in 0..30u64 {
        let name = format!("n{i:02}");
        let r = c.consistent(0, &name, "5s");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.number(), u128::from(i + 1), "{name}");
        c.wait_value(0, &name, u128::from(i + 1), Duration::from_secs(10));
    }
    for i in 0..30u64 {
        c.incr(0, &format!("n{i:02}"), 100);
    }
    for node in 0..3 {
        for i in 0..30u64 {
            c.wait_value(
                node,
                &format!("n{i:02}"),
                u128::from(i + 101),
                Duration::from_secs(10),
            );
        }
    }
}

/// Waits until node `i` reports `want` places found damaged.
fn wait_damage_found(c: &Cluster, i: usize, want: u64) -> serde_json::Value {
    eventually(
        "the scrub finds the damage",
        Duration::from_secs(20),
        || {
            let s = c.status(i);
            let found = s["storage"]["damage_found"].as_u64().unwrap_or(0);
            if found >= want {
                Ok(s)
            } else {
                Err(format!("{}", s["storage"]))
            }
        },
    )
}

/// While the node runs, its scrub reads the files back: a byte flipped in
/// a synced log record is found and repaired by folding the log, a byte
/// flipped in the B-tree by rebuilding it from memory. Nothing is lost,
/// the incarnation stays, and the next start finds nothing to salvage.
#[test]
fn the_scrub_finds_and_repairs_damage_while_the_node_runs() {
    let mut c = Cluster::start("damage-scrub", 1, &["--scrub-interval", "300ms"]);
    assert_eq!(c.post_config(0, &c.addrs()).status, 200);
    for i in 0..30u64 {
        c.incr(0, &format!("n{i:02}"), i + 1);
    }
    let data = c.nodes[0].spec.data_dir.clone().unwrap();
    let before = c.status(0);
    flip_inside(&newest_segment(&data));
    let s = wait_damage_found(&c, 0, 1);
    assert!(
        s["storage"]["damage"][0].as_str().unwrap().contains(".wal"),
        "{s}"
    );
    let found = s["storage"]["damage_found"].as_u64().unwrap();

    // The B-tree: flip a byte of every copy of a name's row key.
    let tree = data.join("tally.redb");
    let bytes = std::fs::read(&tree).unwrap();
    let spots: Vec<usize> = (0..bytes.len() - 3)
        .filter(|&at| &bytes[at..at + 3] == b"n15")
        .collect();
    assert!(!spots.is_empty(), "the log was folded into the B-tree");
    for at in spots {
        write_in_place(&tree, at + 2, bytes[at + 2] ^ 0x01);
    }
    let s = wait_damage_found(&c, 0, found + 1);
    assert!(
        s["storage"]["scrub"]["passes"].as_u64().unwrap() >= 1,
        "{s}"
    );
    for i in 0..30u64 {
        assert_eq!(c.value(0, &format!("n{i:02}")), u128::from(i + 1));
    }
    assert_eq!(c.incr(0, "n00", 1), 2, "writes go on");

    c.nodes[0].kill();
    assert_eq!(check(&data).0, Some(0), "clean after the repairs");
    c.restart(0);
    let after = c.status(0);
    assert_eq!(after["incarnation"], before["incarnation"]);
    assert!(after["storage"]["salvaged"].is_null(), "{after}");
    assert_eq!(c.value(0, "n00"), 2);
    assert_eq!(c.value(0, "n29"), 30);
}
