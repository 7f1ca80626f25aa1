//! What the client prints for people: listings, config summaries, status.
//! Every answer is read into the shared types of `api::types`; fields an
//! older node does not send read as defaults and print as `-`.

use std::fmt::Write as _;
use std::time::Duration;

use crate::api::types::{
    ClusterNode, ClusterStatus, ConfigSummary, Leaver, Listing, PeerReport, Status,
};

pub fn format_page(page: &Listing) -> String {
    let names: Vec<String> = page.counters.iter().map(|c| printable(&c.name)).collect();
    let width = names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(0)
        .min(48);
    let mut out = String::new();
    for (name, c) in names.iter().zip(&page.counters) {
        let _ = writeln!(out, "{name:<width$}  {}", c.value);
    }
    out
}

fn or_dash(s: Option<&str>) -> String {
    s.map_or_else(|| "-".to_string(), printable)
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items
            .iter()
            .map(|s| printable(s))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `POST /config`'s answer, for people.
pub fn format_config(c: &ConfigSummary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "changed: {}", c.changed);
    let _ = writeln!(out, "version: {} (from node {})", c.version, c.origin);
    let _ = writeln!(out, "actors:  {}", list(&c.actors));
    let me =
        c.me.as_deref()
            .map_or("not identified yet".into(), printable);
    let _ = writeln!(out, "self:    {me}");
    let _ = writeln!(out, "stored:  {}", list(&c.stored));
    if !c.pending.is_empty() {
        let _ = writeln!(out, "pending: {}", list(&c.pending));
    }
    leavers(&mut out, &c.leaving);
    out
}

/// One line per node handing off what it acknowledged.
fn leavers(out: &mut String, leaving: &[Leaver]) {
    for leaver in leaving {
        let state = if leaver.handed_off {
            "handed off"
        } else {
            "handing off"
        };
        let _ = writeln!(out, "leaving: {} ({state})", printable(&leaver.actor));
    }
}

/// `GET /status`'s answer, for people.
pub fn format_status(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {}, incarnation {}, tally {}, up {}",
        s.id,
        or_dash(
            Some(&s.incarnation)
                .filter(|i| !i.is_empty())
                .map(String::as_str)
        ),
        or_dash(
            Some(&s.version)
                .filter(|v| !v.is_empty())
                .map(String::as_str)
        ),
        human_duration(Duration::from_secs(s.uptime_secs))
    );
    let _ = writeln!(out, "listen:  {}", printable(&s.listen));
    let me =
        s.me.as_deref()
            .map_or("not identified yet".into(), printable);
    match s.role.map(|r| r.as_str()) {
        Some(role) => {
            let _ = writeln!(out, "self:    {me} ({role})");
        }
        None => {
            let _ = writeln!(out, "self:    {me}");
        }
    }
    let c = &s.config;
    if c.actors.is_empty() {
        let _ = writeln!(
            out,
            "config:  none yet (version {}): increments and local reads only; \
             post one with `tally config`",
            c.version
        );
    } else {
        let _ = writeln!(
            out,
            "config:  version {} (from node {}), {} actor{}: {}",
            c.version,
            c.origin,
            c.actors.len(),
            if c.actors.len() == 1 { "" } else { "s" },
            list(&c.actors)
        );
    }
    leavers(&mut out, &c.leaving);
    peers_table(&mut out, &s.peers);
    let _ = writeln!(out, "names:   {}", s.names);
    let _ = writeln!(out, "idempotency keys remembered: {}", s.idempotency_keys);
    if let Some(h) = &s.storage {
        match &h.problem {
            None => {
                let _ = writeln!(out, "storage: healthy");
            }
            Some(p) => {
                let _ = writeln!(out, "storage: UNHEALTHY: {}", printable(p));
            }
        }
    }
    let dir = s.data_dir.as_deref().map_or("in memory".into(), printable);
    let _ = writeln!(out, "data:    {dir} ({})", human_bytes(s.data_bytes));
    out
}

fn peers_table(out: &mut String, peers: &[PeerReport]) {
    if peers.is_empty() {
        let _ = writeln!(out, "peers:   none");
        return;
    }
    let _ = writeln!(out, "peers:");
    let header = [
        "ACTOR",
        "NODE",
        "REACHABLE",
        "LAST CONTACT",
        "LAG",
        "PENDING PUSHES",
    ];
    let rows: Vec<[String; 6]> = peers
        .iter()
        .map(|p| {
            let reachable = match p.reachable {
                Some(true) => "yes",
                Some(false) => "no",
                None => "unknown",
            };
            let contact = p.last_contact_ms_ago.map_or("never".into(), |ms| {
                let ms = u64::try_from(ms).unwrap_or(u64::MAX);
                format!("{} ago", human_duration(Duration::from_millis(ms)))
            });
            let role = if p.member { "" } else { " (leaving)" };
            [
                format!("{}{role}", printable(&p.actor)),
                p.node.map_or("-".into(), |n| n.to_string()),
                reachable.to_string(),
                contact,
                p.lag_changes.to_string(),
                p.pending_push.to_string(),
            ]
        })
        .collect();
    let lines = table(&header, &rows);
    let _ = writeln!(out, "{}", lines[0]);
    for (line, p) in lines[1..].iter().zip(peers) {
        let _ = writeln!(out, "{line}");
        if let Some(err) = p.last_error.as_deref()
            && p.reachable != Some(true)
        {
            let _ = writeln!(out, "    last error: {}", printable(err));
        }
    }
}

/// Left-aligned columns, two spaces in front: the header line, then one line per row.
fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> Vec<String> {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let render = |cells: &mut dyn Iterator<Item = &str>| {
        let mut line = String::from(" ");
        for (cell, w) in cells.zip(widths) {
            let _ = write!(line, " {cell:<w$}");
        }
        line.trim_end().to_string()
    };
    let mut lines = vec![render(&mut header.iter().copied())];
    lines.extend(
        rows.iter()
            .map(|r| render(&mut r.iter().map(String::as_str))),
    );
    lines
}

/// `tally status --cluster`: one row per actor, then why each unreachable
/// one could not be asked.
pub fn format_cluster(c: &ClusterStatus) -> String {
    let mut out = String::new();
    if c.nodes.is_empty() {
        let _ = writeln!(
            out,
            "node {} has no config yet: post one with `tally config`",
            c.from
        );
        return out;
    }
    let _ = writeln!(
        out,
        "cluster as configured on node {} (config version {}):",
        c.from, c.config_version
    );
    let header = [
        "ID",
        "ADDRESS",
        "REACHABLE",
        "CONFIG",
        "LAG",
        "NAMES",
        "DATA",
        "STORAGE",
        "UPTIME",
    ];
    let rows: Vec<[String; 9]> = c.nodes.iter().map(cluster_row).collect();
    for line in table(&header, &rows) {
        let _ = writeln!(out, "{line}");
    }
    for n in c.nodes.iter().filter(|n| !n.reachable) {
        let why = n.error.as_deref().unwrap_or("no answer");
        let _ = writeln!(out, "  {}: {}", printable(&n.actor), printable(why));
    }
    let _ = writeln!(
        out,
        "LAG: changes each peer had that the node had not merged yet, by peer id (or address)"
    );
    out
}

fn cluster_row(n: &ClusterNode) -> [String; 9] {
    let mut address = printable(&n.actor);
    if n.me {
        address.push_str(" *");
    }
    if n.leaving {
        address.push_str(" (leaving)");
    }
    let Some(s) = n.status.as_ref().filter(|_| n.reachable) else {
        let dash = || "-".to_string();
        return [
            dash(),
            address,
            "no".into(),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
        ];
    };
    let lag: Vec<String> = s
        .peers
        .iter()
        .map(|p| {
            let who = p
                .node
                .map_or_else(|| printable(&p.actor), |id| id.to_string());
            match p.reachable {
                Some(false) => format!("{who}:down"),
                _ => format!("{who}:{}", p.lag_changes),
            }
        })
        .collect();
    let storage = match &s.storage {
        Some(h) if h.healthy => "healthy".to_string(),
        Some(h) => format!(
            "UNHEALTHY: {}",
            printable(h.problem.as_deref().unwrap_or("?"))
        ),
        None => "-".into(),
    };
    let reachable = match n.rtt_ms {
        Some(ms) => format!("yes ({ms:.1}ms)"),
        None => "yes".into(),
    };
    [
        s.id.to_string(),
        address,
        reachable,
        s.config.version.to_string(),
        if lag.is_empty() {
            "-".into()
        } else {
            lag.join(" ")
        },
        s.names.to_string(),
        human_bytes(s.data_bytes),
        storage,
        human_duration(Duration::from_secs(s.uptime_secs)),
    ]
}

/// Escapes control characters so a name cannot rearrange the terminal.
pub fn printable(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        s.to_string()
    }
}

pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/:@%+=,".contains(&b));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", printable(s).replace('\'', r"'\''"))
    }
}

pub fn excerpt(body: &str) -> String {
    let t = body.trim();
    let cut: String = t.chars().take(300).collect();
    let mut cut = printable(&cut);
    if t.chars().count() > 300 {
        cut.push('…');
    }
    cut
}

pub fn status_line(code: u16) -> String {
    match hyper::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        Some(reason) => format!("{code} {reason}"),
        None => code.to_string(),
    }
}

pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let s = d.as_secs();
    if ms < 1000 {
        format!("{ms}ms")
    } else if s < 60 && d.subsec_millis() == 0 {
        format!("{s}s")
    } else if s < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if s < 3600 {
        format!("{}m {}s", s / 60, s % 60)
    } else if s < 86400 {
        format!("{}h {}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d {}h", s / 86400, (s % 86400) / 3600)
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_config_render() {
        let status: Status = serde_json::from_value(serde_json::json!({
            "id": 3, "incarnation": "00ff", "version": "0.1.0", "listen": "0.0.0.0:7777",
            "uptime_secs": 75, "self": "10.0.0.3:7777", "role": "member",
            "config": {"version": 2, "origin": 1, "actors": ["10.0.0.1:7777", "10.0.0.3:7777"],
                       "leaving": [{"actor": "10.0.0.9:7777", "handed_off": false}]},
            "peers": [{"actor": "10.0.0.1:7777", "reachable": false, "last_contact_ms_ago": 1500,
                       "last_error": "refused", "node": null, "incarnation": null,
                       "lag_changes": 4, "pending_push": 2, "member": true, "stored_seq": 0}],
            "names": 12, "storage": {"healthy": false, "problem": "disk full", "unhealthy_for_ms": 5,
                                     "last_error": "disk full", "last_error_ms_ago": 5,
                                     "errors": 1, "recoveries": 0},
            "data_dir": "/d", "data_bytes": 2048
        }))
        .unwrap();
        let text = format_status(&status);
        for want in [
            "node 3",
            "up 1m 15s",
            "10.0.0.3:7777 (member)",
            "version 2 (from node 1), 2 actors",
            "leaving: 10.0.0.9:7777 (handing off)",
            "REACHABLE",
            "no",
            "1.5s ago",
            "last error: refused",
            "names:   12",
            "storage: UNHEALTHY: disk full",
            "/d (2.0 KiB)",
        ] {
            assert!(text.contains(want), "{want:?} missing in\n{text}");
        }
        // What an older node sends reads, with defaults.
        let old: Status = serde_json::from_str(r#"{"id": 1, "names": 2}"#).unwrap();
        assert!(format_status(&old).starts_with("node 1, incarnation -"));
        let cfg: ConfigSummary = serde_json::from_value(serde_json::json!({
            "changed": true, "version": 1, "origin": 1,
            "actors": ["127.0.0.1:7777"], "self": null}))
        .unwrap();
        let text = format_config(&cfg);
        assert!(text.contains("changed: true"), "{text}");
        assert!(text.contains("not identified yet"), "{text}");
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
        assert_eq!(human_duration(Duration::from_millis(5)), "5ms");
        assert_eq!(human_duration(Duration::from_secs(3700)), "1h 1m");
    }
}
