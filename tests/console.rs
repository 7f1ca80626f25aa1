//! The web console (`GET /`) in a real headless browser: a three-node
//! cluster on loopback, the page loaded in Chromium, and what the page shows
//! read back from the DOM Chromium dumps after running the page's script
//! (`--dump-dom` with a virtual-time budget). The script runs only if the
//! Content-Security-Policy allows it, so these tests also hold the policy
//! to the page and its assets.
//!
//! Needs `chromium` (or `TALLY_CHROMIUM=/path/to/chrome`). Without it the
//! tests fail, unless `TALLY_CONSOLE_SKIP=1` asks to skip them (loudly;
//! never under `CI`). See TESTING.md ("Web console").

mod common;
#[path = "console/webdriver.rs"]
mod webdriver;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// Bound on one browser run (start, load, script, dump, exit).
const BROWSER_BOUND: Duration = Duration::from_secs(30);
/// Bound on the page showing what a test waits for, over several runs.
const PAGE_BOUND: Duration = Duration::from_secs(90);
/// Virtual time the page gets: its first refresh and at least one more
/// (the page refreshes every 2 s; virtual time stands still while a fetch
/// is pending, so slow answers cannot eat it).
const VIRTUAL_MS: u32 = 3000;

/// Where screenshots go: `target/test-output/`.
fn output_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target folder")
        .join("test-output");
    std::fs::create_dir_all(&dir).expect("create target/test-output");
    dir
}

// ---------------------------------------------------------------------------
// The browser

/// A tool the test needs is missing: fails, unless the person running the
/// tests opted out with `TALLY_CONSOLE_SKIP=1` (never under CI), in which
/// case it says so past the harness's capture and returns `None`.
fn missing<T>(test: &str, why: &str) -> Option<T> {
    if env_flag("CI") || !env_flag("TALLY_CONSOLE_SKIP") {
        panic!(
            "{test} cannot run: {why}; set TALLY_CONSOLE_SKIP=1 to skip it knowingly \
             (ignored under CI)"
        );
    }
    announce(&format!(
        "\n!!! {test} SKIPPED (not a pass, TALLY_CONSOLE_SKIP=1): {why}\n\
         !!! the web console was not tested in a browser.\n"
    ));
    None
}

struct Browser {
    exe: PathBuf,
}

impl Browser {
    /// The browser to run, or `None` when it is missing and the person
    /// running the tests opted out with `TALLY_CONSOLE_SKIP=1` (never under
    /// CI, where a missing browser fails the test).
    fn find(test: &str) -> Option<Browser> {
        let chosen = std::env::var_os("TALLY_CHROMIUM")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        match webdriver::executable(chosen, &["chromium", "chromium-browser", "google-chrome"]) {
            Ok(exe) => Some(Browser { exe }),
            Err(why) => missing(
                test,
                &format!(
                    "{why} (install the Debian package `chromium`, or point TALLY_CHROMIUM \
                     at a Chrome or Chromium executable)"
                ),
            ),
        }
    }

    /// Loads `url` headless and returns the DOM after the page's script ran,
    /// or writes a screenshot to `shot` (and returns "").
    fn run(&self, url: &str, shot: Option<&Path>) -> Result<String, String> {
        let dir = TempDir::new("browser");
        let out = dir.path().join("dom.html");
        let err = dir.path().join("stderr.log");
        let mut cmd = Command::new(&self.exe);
        cmd.args([
            "--headless",
            // Root cannot run Chromium's sandbox; the page is our own, on
            // loopback, in a throwaway profile.
            "--no-sandbox",
            "--disable-gpu",
            // Without it, a screenshot taken while a fetch is pending
            // sometimes waits forever for a frame.
            "--run-all-compositor-stages-before-draw",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-sync",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--mute-audio",
            "--window-size=1280,1000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("--virtual-time-budget={VIRTUAL_MS}"));
        match shot {
            Some(path) => cmd.arg(format!("--screenshot={}", path.display())),
            None => cmd.arg("--dump-dom"),
        };
        cmd.arg(url)
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("create the dump file"))
            .stderr(std::fs::File::create(&err).expect("create the log file"))
            // Its own process group, so a timeout kills every helper
            // process it started, not only the first.
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("start {:?}: {e}", self.exe))?;
        let mut status = None;
        wait_until(BROWSER_BOUND, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        let stderr = || {
            let log = std::fs::read_to_string(&err).unwrap_or_default();
            let tail: Vec<&str> = log.lines().filter(|l| !l.contains("dbus")).collect();
            tail[tail.len().saturating_sub(15)..].join("\n")
        };
        let Some(status) = status else {
            let _ = eintr::status(
                Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            );
            let _ = eintr::wait(&mut child);
            return Err(format!(
                "the browser did not finish within {BROWSER_BOUND:?} (killed); stderr:\n{}",
                stderr()
            ));
        };
        if !status.success() {
            return Err(format!(
                "the browser exited with {status}; stderr:\n{}",
                stderr()
            ));
        }
        if let Some(path) = shot {
            return match std::fs::metadata(path) {
                Ok(m) if m.len() > 0 => Ok(String::new()),
                _ => Err(format!("no screenshot written; stderr:\n{}", stderr())),
            };
        }
        std::fs::read_to_string(&out).map_err(|e| format!("read the dump: {e}"))
    }

    /// Loads `url` until `check` accepts the DOM (several runs, within
    /// [`PAGE_BOUND`]); panics with the last reason and DOM otherwise.
    fn eventually<T>(&self, what: &str, url: &str, check: impl Fn(&Dom) -> Result<T, String>) -> T {
        let started = Instant::now();
        let deadline = started + PAGE_BOUND;
        let mut runs = 0;
        loop {
            runs += 1;
            let last = match self.run(url, None) {
                Ok(html) => {
                    let dom = Dom(html);
                    match check(&dom) {
                        Ok(v) => {
                            eprintln!("{what}: shown after {runs} runs, {:?}", started.elapsed());
                            return v;
                        }
                        Err(e) => format!("{e}\n---- DOM ----\n{}", dom.body()),
                    }
                }
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!("{what}: not shown within {PAGE_BOUND:?} ({runs} runs); last: {last}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Writes a screenshot of `url` to `path`, retrying a run that failed.
    fn screenshot(&self, url: &str, path: &Path) {
        let mut last = String::new();
        for _ in 0..3 {
            match self.run(url, Some(path)) {
                Ok(_) => return,
                Err(e) => {
                    eprintln!("screenshot of {url} failed, trying again: {e}");
                    last = e;
                }
            }
        }
        panic!("no screenshot of {url}: {last}");
    }
}

// ---------------------------------------------------------------------------
// Reading the dumped DOM (Chromium's own serialisation, so a few string
// searches suffice)

struct Dom(String);

/// The body of an element: from its start tag to the matching end tag, or
/// to the end of the start tag for a void element.
struct El<'a>(&'a str);

/// Escapes a value the way the DOM serialiser writes it in an attribute.
fn attr_escape(v: &str) -> String {
    v.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\u{a0}', "&nbsp;")
}

fn unescape(v: &str) -> String {
    v.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// Whether `html[at..]` starts the tag `open` (`<div`), not a longer one.
fn starts_tag(html: &str, at: usize, open: &str) -> bool {
    html[at..].starts_with(open)
        && matches!(html.as_bytes().get(at + open.len()), Some(b' ' | b'>'))
}

/// Every element `<tag ...>...</tag>` in `html` whose start tag contains
/// `needle`, from its start tag to its matching end tag (nesting counted).
fn elements<'a>(html: &'a str, tag: &str, needle: &str) -> Vec<El<'a>> {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = html[from..].find(&open) {
        let start = from + i;
        if !starts_tag(html, start, &open) {
            from = start + open.len();
            continue;
        }
        let Some(j) = html[start..].find('>') else {
            break;
        };
        let head_end = start + j + 1;
        if html[start..head_end].contains(needle) {
            // Find the matching end tag.
            let mut depth = 1;
            let mut at = head_end;
            let mut end = html.len();
            while let Some(k) = html[at..].find('<') {
                let p = at + k;
                if html[p..].starts_with(&close) {
                    depth -= 1;
                    if depth == 0 {
                        end = p + close.len();
                        break;
                    }
                    at = p + close.len();
                } else {
                    if starts_tag(html, p, &open) {
                        depth += 1;
                    }
                    at = p + 1;
                }
            }
            out.push(El(&html[start..end]));
        }
        from = head_end;
    }
    out
}

impl Dom {
    fn body(&self) -> &str {
        let s = &self.0;
        let start = s.find("<body").unwrap_or(0);
        let end = s.find("<script").unwrap_or(s.len()).max(start);
        &s[start..end]
    }

    fn by_id(&self, id: &str) -> Result<El<'_>, String> {
        let needle = format!("id=\"{id}\"");
        let body = self.body();
        for tag in ["div", "span", "table", "ul", "p", "button", "input"] {
            if let Some(e) = elements(body, tag, &needle).into_iter().next() {
                return Ok(e);
            }
        }
        Err(format!("no element #{id}"))
    }

    fn rows(&self, table: &str, attr: &str) -> Result<Vec<El<'_>>, String> {
        let t = self.by_id(table)?;
        Ok(elements(t.0, "tr", &format!("{attr}=\"")))
    }

    /// The page finished a refresh without errors.
    fn refreshed(&self) -> Result<(), String> {
        let u = self.by_id("updated")?;
        let n: u64 = u
            .attr("data-refreshes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if n == 0 {
            return Err(format!("no refresh finished yet: {}", u.text()));
        }
        if u.attr("data-failed").as_deref() != Some("false") {
            return Err(format!("the last refresh failed: {}", u.text()));
        }
        if !u.text().starts_with("updated ") {
            return Err(format!("no \"updated HH:MM:SS\": {:?}", u.text()));
        }
        Ok(())
    }
}

impl<'a> El<'a> {
    fn head(&self) -> &'a str {
        let end = self.0.find('>').map_or(self.0.len(), |i| i + 1);
        &self.0[..end]
    }

    fn attr(&self, name: &str) -> Option<String> {
        let head = self.head();
        let key = format!(" {name}=\"");
        let i = head.find(&key)? + key.len();
        let j = head[i..].find('"')?;
        Some(unescape(&head[i..i + j]))
    }

    fn has_attr(&self, name: &str) -> bool {
        let head = self.head();
        head.contains(&format!(" {name}=")) || head.contains(&format!(" {name}>"))
    }

    /// The text content, tags dropped and entities decoded.
    fn text(&self) -> String {
        let mut out = String::new();
        let mut in_tag = false;
        for c in self.0.chars() {
            match c {
                '<' => in_tag = true,
                '>' => in_tag = false,
                c if !in_tag => out.push(c),
                _ => {}
            }
        }
        unescape(&out)
    }

    fn find(&self, tag: &str, needle: &str) -> Vec<El<'a>> {
        elements(self.0, tag, needle)
    }
}

/// The row of `table` whose `attr` is `value`.
fn row<'a>(dom: &'a Dom, table: &str, attr: &str, value: &str) -> Result<El<'a>, String> {
    let needle = format!("{attr}=\"{}\"", attr_escape(value));
    dom.rows(table, attr)?
        .into_iter()
        .find(|r| r.head().contains(&needle))
        .ok_or_else(|| format!("#{table} has no row with {needle}"))
}

/// The per-node components a counter row shows: (node, count).
fn components(row: &El<'_>) -> Vec<(String, String)> {
    row.find("li", "data-node=")
        .iter()
        .map(|li| {
            (
                li.attr("data-node").unwrap_or_default(),
                li.attr("data-count").unwrap_or_default(),
            )
        })
        .collect()
}

fn consistent_result(row: &El<'_>) -> Result<(String, String), String> {
    let span = row
        .find("span", "consistent-result")
        .into_iter()
        .next()
        .ok_or("no consistent-read result")?;
    Ok((span.attr("data-state").unwrap_or_default(), span.text()))
}

// ---------------------------------------------------------------------------
// The tests

const ODD_NAME: &str = "<i>&\"x\"";

/// A three-node cluster seen through the console: every node reachable,
/// the config, lag, counters with their per-node components and consistent
/// values; then one node paused (SIGSTOP) and shown unreachable, with the
/// consistent reads' 503 naming it; the listing's prefix filter and pages.
#[test]
fn the_console_shows_the_cluster_in_a_browser() {
    let Some(browser) = Browser::find("the_console_shows_the_cluster_in_a_browser") else {
        return;
    };
    let c = Cluster::start_configured("console", 3, &[]);
    let addrs = c.addrs();
    c.incr(0, "visits", 5);
    c.incr(1, "visits", 7);
    c.incr(2, "visits", 11);
    c.incr(1, "a%2Fb", 3);
    c.incr(2, &tally::api::types::encode_name(ODD_NAME), 2);
    c.wait_value(0, "visits", 23, Duration::from_secs(10));
    c.wait_value(0, "a%2Fb", 3, Duration::from_secs(10));
    c.wait_value(
        0,
        &tally::api::types::encode_name(ODD_NAME),
        2,
        Duration::from_secs(10),
    );

    // The page itself: headers, and its route in the metrics.
    let a = c
        .http
        .request_with_headers("GET", &c.url(0, "/"), &[], None);
    assert_eq!(a.resp.status, 200, "{a:?}");
    assert_eq!(a.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let csp = a.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.starts_with("default-src 'none';") && csp.contains("script-src 'self';"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    for (asset, content_type) in [
        ("console.js", "text/javascript; charset=utf-8"),
        ("console.css", "text/css; charset=utf-8"),
    ] {
        let r = c.http.get(&c.url(0, &format!("/console/{asset}")));
        assert_eq!(r.status, 200, "{asset}: {r:?}");
        assert_eq!(r.content_type, content_type, "{asset}");
    }
    c.http
        .get(&c.url(0, "/console/other.js"))
        .assert_error(404, "an asset the console does not have");
    let metrics = c.http.get(&c.url(0, "/metrics")).body;
    assert!(
        metrics.contains(r#"tally_http_requests_total{method="GET",route="/",status="200"} 1"#),
        "GET / is not counted under route \"/\""
    );

    // Everything reachable.
    let url = c.url(0, "/#consistent=1");
    browser.eventually("three reachable nodes and the counters", &url, |dom| {
        dom.refreshed()?;
        let banner = dom.by_id("banner")?;
        if !banner.has_attr("hidden") {
            return Err(format!("error banner shown: {}", banner.text()));
        }
        let nodes = dom.rows("nodes", "data-actor")?;
        if nodes.len() != 3 {
            return Err(format!("{} node rows", nodes.len()));
        }
        for (i, addr) in addrs.iter().enumerate() {
            let r = row(dom, "nodes", "data-actor", addr)?;
            let text = r.text();
            let want = [
                ("data-reachable", "true"),
                ("data-me", if i == 0 { "true" } else { "false" }),
                ("data-leaving", "false"),
                ("data-id", &(i + 1).to_string()),
            ];
            for (k, v) in want {
                if r.attr(k).as_deref() != Some(v) {
                    return Err(format!("{addr}: {k} is {:?}, not {v}: {text}", r.attr(k)));
                }
            }
            for word in ["reachable", "member", "healthy", "v1"] {
                if !text.contains(word) {
                    return Err(format!("{addr}: no {word:?} in {text:?}"));
                }
            }
            if (i == 0) != text.contains("this node") {
                return Err(format!("{addr}: \"this node\" wrong: {text}"));
            }
            // Lag: a row per node, a cell per peer with a number.
            let lag = row(dom, "lag", "data-from", addr)?;
            let cells = lag.find("td", "data-lag=");
            if cells.len() != 2 {
                return Err(format!(
                    "lag of {addr}: {} peer cells: {}",
                    cells.len(),
                    lag.text()
                ));
            }
        }
        let config = dom.by_id("config")?;
        if config.attr("data-version").as_deref() != Some("1") {
            return Err(format!("config: {}", config.text()));
        }
        let shown: Vec<String> = config
            .find("li", "data-actor=")
            .iter()
            .filter_map(|li| li.attr("data-actor"))
            .collect();
        if shown != addrs {
            return Err(format!("config actors {shown:?}"));
        }

        let visits = row(dom, "counters", "data-name", "visits")?;
        let value = visits
            .find("td", "value")
            .into_iter()
            .next()
            .ok_or("no value")?;
        if value.attr("data-value").as_deref() != Some("23") || value.text() != "23" {
            return Err(format!("visits shows {}", visits.text()));
        }
        let mut comps = components(&visits);
        comps.sort();
        let want: Vec<(String, String)> = [("1", "5"), ("2", "7"), ("3", "11")]
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        if comps != want {
            return Err(format!("visits components {comps:?}"));
        }
        if consistent_result(&visits)? != ("ok".into(), "23".into()) {
            return Err(format!(
                "visits consistent read: {:?}",
                consistent_result(&visits)
            ));
        }
        let ab = row(dom, "counters", "data-name", "a/b")?;
        if components(&ab) != [("2".to_string(), "3".to_string())]
            || consistent_result(&ab)? != ("ok".into(), "3".into())
        {
            return Err(format!("a/b shows {}", ab.text()));
        }
        // A name that looks like markup is shown as text, never parsed.
        let odd = row(dom, "counters", "data-name", ODD_NAME)?;
        let name = odd
            .find("td", "name")
            .into_iter()
            .next()
            .ok_or("no name cell")?;
        if name.text() != ODD_NAME || consistent_result(&odd)? != ("ok".into(), "2".into()) {
            return Err(format!("{ODD_NAME} shows {}", odd.text()));
        }
        if dom.body().contains("<i>") {
            return Err("a name was inserted as markup".into());
        }
        Ok(())
    });

    // One node paused: unreachable, with a reason; consistent reads name it.
    let paused = addrs[2].clone();
    c.nodes[2].signal("STOP");
    let resume = Resume(c.nodes[2].pid());
    browser.eventually("the paused node unreachable", &url, |dom| {
        dom.refreshed()?;
        let r = row(dom, "nodes", "data-actor", &paused)?;
        if r.attr("data-reachable").as_deref() != Some("false") {
            return Err(format!("{paused} not shown unreachable: {}", r.text()));
        }
        // Its id, from what its peers last heard from it.
        if r.attr("data-id").as_deref() != Some("3") {
            return Err(format!("{paused} shown without its id: {}", r.text()));
        }
        let reason = r.find("div", "reason");
        if !r.text().contains("unreachable") || reason.is_empty() || reason[0].text().is_empty() {
            return Err(format!("{paused}: no reason shown: {}", r.text()));
        }
        for addr in &addrs[..2] {
            let r = row(dom, "nodes", "data-actor", addr)?;
            if r.attr("data-reachable").as_deref() != Some("true") {
                return Err(format!("{addr} not reachable: {}", r.text()));
            }
        }
        let visits = row(dom, "counters", "data-name", "visits")?;
        let (state, text) = consistent_result(&visits)?;
        if state != "unavailable" || !text.starts_with("503") || !text.contains(&paused) {
            return Err(format!("consistent read of visits: {state} {text:?}"));
        }
        Ok(())
    });
    // The history's lag chart names the paused peer unreachable too.
    browser.eventually(
        "the paused peer unreachable in the lag chart",
        &url,
        |dom| {
            let charts = dom.by_id("charts")?;
            let lag = charts
                .find("path", "data-series=\"lag_changes\"")
                .into_iter()
                .find(|p| p.attr("data-peer").as_deref() == Some(paused.as_str()))
                .ok_or_else(|| format!("no lag line of {paused}: {}", charts.0))?;
            match lag.attr("data-reachable").as_deref() {
                Some("false") => Ok(()),
                other => Err(format!("{paused}'s lag line: data-reachable {other:?}")),
            }
        },
    );
    let shot = output_dir().join("console.png");
    browser.screenshot(&url, &shot);
    eprintln!("screenshot: {}", shot.display());
    drop(resume);

    // The listing: a prefix filter (from the URL) and pages of 25.
    let batch: Vec<serde_json::Value> = (0..30)
        .map(|i| serde_json::json!({"name": format!("zz-{i:02}"), "amount": 1}))
        .collect();
    let r = c.http.post(
        &c.url(0, "/counters"),
        &serde_json::json!({ "increments": batch }).to_string(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    browser.eventually("a filtered first page", &c.url(0, "/#prefix=zz-"), |dom| {
        dom.refreshed()?;
        let rows = dom.rows("counters", "data-name")?;
        let names: Vec<String> = rows.iter().filter_map(|r| r.attr("data-name")).collect();
        let want: Vec<String> = (0..25).map(|i| format!("zz-{i:02}")).collect();
        if names != want {
            return Err(format!("names {names:?}"));
        }
        let next = dom.by_id("next")?;
        if next.has_attr("disabled") {
            return Err("no next page offered".into());
        }
        Ok(())
    });
}

/// SIGCONTs a paused node when dropped, also when the test fails.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = eintr::status(
            Command::new("kill")
                .args(["-CONT", &self.0.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
    }
}

/// When the node that served the page cannot be reached any more, the page
/// says so in its error banner instead of showing old data as current. The
/// page is served by a stand-in that then drops every connection.
#[test]
fn the_console_shows_a_banner_when_its_node_is_unreachable() {
    let Some(browser) = Browser::find("the_console_shows_a_banner_when_its_node_is_unreachable")
    else {
        return;
    };
    let c = Cluster::start("console-banner", 1, &[]);
    let page = c
        .http
        .request_with_headers("GET", &c.url(0, "/"), &[], None);
    assert_eq!(page.resp.status, 200, "{page:?}");
    let csp = page
        .header("content-security-policy")
        .expect("a policy")
        .to_string();
    let mut files = vec![("/".to_string(), page.resp)];
    for asset in ["/console/console.js", "/console/console.css"] {
        let r = c.http.get(&c.url(0, asset));
        assert_eq!(r.status, 200, "{asset}: {r:?}");
        files.push((asset.to_string(), r));
    }
    drop(c);

    let files = files
        .into_iter()
        .map(|(path, r)| (path, r.content_type, r.body))
        .collect();
    let server = StandIn::start(files, csp);
    let url = format!("http://127.0.0.1:{}/", server.port);
    browser.eventually("the error banner", &url, |dom| {
        let banner = dom.by_id("banner")?;
        if banner.has_attr("hidden") || !banner.text().contains("cannot reach this node") {
            return Err(format!("banner: {:?} {:?}", banner.head(), banner.text()));
        }
        let updated = dom.by_id("updated")?;
        if updated.attr("data-failed").as_deref() != Some("true")
            || !updated.text().starts_with("update failed")
        {
            return Err(format!("updated: {}", updated.text()));
        }
        Ok(())
    });
}

/// Serves the console page at `/` and its assets, and drops every other
/// connection unanswered, until dropped.
struct StandIn {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandIn {
    /// `files`: path, content type and body of each file served.
    fn start(files: Vec<(String, String, String)>, csp: String) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // Bounded even if the test never drops it.
            let deadline = Instant::now() + Duration::from_secs(300);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let mut stream = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(_) => {
                        std::thread::sleep(STEP);
                        continue;
                    }
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match eintr::read(&mut stream, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let served = files
                    .iter()
                    .find(|(path, _, _)| head.starts_with(format!("GET {path} ").as_bytes()));
                if let Some((_, content_type, body)) = served {
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\n\
                         cache-control: no-store\r\ncontent-security-policy: {csp}\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = eintr::write_all(&mut stream, answer.as_bytes());
                }
                // Anything else: closed unanswered, as by a node that is gone.
            }
        });
        StandIn {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// The page driven over WebDriver: forms, buttons and the charts

/// The history route, read directly: this node's samples, one a second.
fn history(c: &Cluster, i: usize) -> serde_json::Value {
    let r = c.http.get(&c.url(i, "/status/history"));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.content_type.starts_with("application/json"), "{r:?}");
    r.json()
}

/// What the charts show: for each line, its data- attributes.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    series: String,
    peer: Option<String>,
    /// Another node's line (`None`: the page's own node).
    node: Option<String>,
    points: usize,
    last: Option<f64>,
    max: Option<f64>,
}

/// Every chart line the page shows, and how many samples it drew from.
fn chart_lines(driver: &webdriver::Driver) -> Result<(usize, Vec<Line>), String> {
    let v = driver.run(
        r#"const box = document.getElementById("charts");
           const lines = [...box.querySelectorAll("figure.chart path[data-series]")].map((p) => ({
             series: p.dataset.series, peer: p.dataset.peer === undefined ? null : p.dataset.peer,
             node: p.dataset.node === undefined ? null : p.dataset.node,
             points: p.dataset.points, last: p.dataset.last, max: p.dataset.max }));
           return { samples: box.dataset.samples, lines };"#,
        serde_json::json!([]),
    )?;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let number = |v: &serde_json::Value| text(v).parse::<f64>().ok();
    let samples = text(&v["samples"]).parse().unwrap_or(0);
    let lines = v["lines"]
        .as_array()
        .ok_or_else(|| format!("no lines in {v}"))?
        .iter()
        .map(|l| Line {
            series: text(&l["series"]),
            peer: l["peer"].as_str().map(str::to_string),
            node: l["node"].as_str().map(str::to_string),
            points: text(&l["points"]).parse().unwrap_or(0),
            last: number(&l["last"]),
            max: number(&l["max"]),
        })
        .collect();
    Ok((samples, lines))
}

/// The page's own node's line of `series`.
fn line<'a>(lines: &'a [Line], series: &str) -> Result<&'a Line, String> {
    lines
        .iter()
        .find(|l| l.series == series && l.node.is_none())
        .ok_or_else(|| format!("no {series} line in {lines:?}"))
}

/// The page's text of `css`, and a data- attribute of it.
fn shown(driver: &webdriver::Driver, css: &str, attr: &str) -> Result<(String, String), String> {
    let v = driver.run(
        "const e = document.querySelector(arguments[0]); \
         return e ? [e.textContent, e.getAttribute(arguments[1]) || \"\"] : null;",
        serde_json::json!([css, attr]),
    )?;
    match v.as_array().map(Vec::as_slice) {
        Some([text, value]) => Ok((
            text.as_str().unwrap_or_default().to_string(),
            value.as_str().unwrap_or_default().to_string(),
        )),
        _ => Err(format!("nothing matches {css}")),
    }
}

/// The console driven like a user would, in headless Chromium over
/// WebDriver: the increment form adds to a counter and the page shows the
/// new value; the consistent-read button shows the cluster-wide value
/// (including an increment this node has not necessarily merged); the
/// charts of `/status/history` are there from the first load, each line with
/// points, and the increments chart goes from idle to the writes that
/// follow. Keeps a screenshot in `target/test-output/console-charts.png`.
#[test]
fn the_console_is_driven_and_charts_the_nodes_history() {
    const TEST: &str = "the_console_is_driven_and_charts_the_nodes_history";
    let Some(browser) = Browser::find(TEST) else {
        return;
    };
    let chosen = std::env::var_os("TALLY_CHROMEDRIVER")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    let chromedriver = match webdriver::executable(chosen, &["chromedriver"]) {
        Ok(exe) => exe,
        Err(why) => {
            let why = format!(
                "{why} (install the Debian package `chromium-driver`, or point \
                 TALLY_CHROMEDRIVER at a chromedriver matching the browser)"
            );
            let _skipped: Option<()> = missing(TEST, &why);
            return;
        }
    };
    let c = Cluster::start_configured("console-driven", 3, &[]);
    let addrs = c.addrs();
    c.incr(1, "clicks", 3);
    c.wait_value(0, "clicks", 3, Duration::from_secs(10));

    // The route: this node's samples, a bounded ring, columns of one length.
    let h = eventually("a first sample", Duration::from_secs(10), || {
        let h = history(&c, 0);
        match h["at_ms"].as_array().map(Vec::len) {
            Some(n) if n >= 1 => Ok(h),
            _ => Err(format!("{h}")),
        }
    });
    assert_eq!(h["node"], 1, "{h}");
    assert_eq!(h["interval_ms"], 1000, "{h}");
    assert_eq!(h["capacity"], 600, "{h}");
    let n = h["at_ms"].as_array().map_or(0, Vec::len);
    for column in [
        "increments_per_sec",
        "consistent_ok_per_sec",
        "consistent_failed_per_sec",
        "consistent_read_ms",
        "storage_healthy",
    ] {
        assert_eq!(h[column].as_array().map(Vec::len), Some(n), "{column}: {h}");
    }

    let driver = webdriver::Driver::start(&chromedriver, &browser.exe, 1280, 1100);
    driver.goto(&c.url(0, "/"));
    eventually("the page's first refresh", PAGE_BOUND, || {
        let (text, failed) = shown(&driver, "#updated", "data-failed")?;
        if failed == "false" && text.starts_with("updated ") {
            Ok(())
        } else {
            Err(format!("{text:?}, failed {failed:?}"))
        }
    });

    // The increment form: 4 more on this node, whose value was 3.
    driver
        .type_into("#incr-name", "clicks")
        .expect("type a name");
    driver
        .type_into("#incr-amount", "4")
        .expect("type an amount");
    driver
        .click("#increment button[type=submit]")
        .expect("submit the form");
    eventually("the increment's answer", PAGE_BOUND, || {
        let (text, _) = shown(&driver, "#incr-result", "class")?;
        let (value, data) = shown(
            &driver,
            r#"#counters tr[data-name="clicks"] td.value"#,
            "data-value",
        )?;
        if text == "clicks is now 7 on this node" && value == "7" && data == "7" {
            Ok(())
        } else {
            Err(format!("result {text:?}, row shows {value:?} ({data:?})"))
        }
    });
    assert_eq!(c.http.get(&c.url(0, "/counter/clicks/value")).number(), 7);

    // The consistent-read button: 5 more on node 3 first, so the value
    // shown is the cluster's, not only what node 1 holds.
    c.incr(2, "clicks", 5);
    driver
        .click(r#"#counters tr[data-name="clicks"] button"#)
        .expect("click the consistent-read button");
    eventually("the consistent read's value", PAGE_BOUND, || {
        let (text, state) = shown(
            &driver,
            r#"#counters tr[data-name="clicks"] .consistent-result"#,
            "data-state",
        )?;
        if state == "ok" && text == "12" {
            Ok(())
        } else {
            Err(format!("{state:?} {text:?}"))
        }
    });

    // The charts: every line there with points; the increments chart idle
    // (its last second without writes) before the writes below.
    let (samples_before, points_before) = eventually("idle charts", PAGE_BOUND, || {
        let (samples, lines) = chart_lines(&driver)?;
        let inc = line(&lines, "increments_per_sec")?;
        if inc.points == 0 || inc.last != Some(0.0) {
            return Err(format!("increments line not idle yet: {inc:?}"));
        }
        Ok((samples, inc.points))
    });
    // Writes (and consistent reads) until the page shows them: each round
    // is a few requests, and the rounds are bounded by PAGE_BOUND.
    let started = Instant::now();
    let mut written = 0u64;
    let (samples, lines) = loop {
        for _ in 0..10 {
            c.incr(0, "load", 1);
            written += 1;
        }
        assert_eq!(
            c.http
                .get(&c.url(0, "/counter/load/consistent_value"))
                .number(),
            u128::from(written)
        );
        let (samples, lines) = chart_lines(&driver).expect("read the charts");
        let inc = line(&lines, "increments_per_sec").expect("an increments line");
        let ok = line(&lines, "consistent_ok_per_sec").expect("a consistent reads line");
        if inc.last.is_some_and(|v| v > 0.0) && ok.max.is_some_and(|v| v > 0.0) {
            break (samples, lines);
        }
        assert!(
            started.elapsed() < PAGE_BOUND,
            "the increments chart did not move within {PAGE_BOUND:?} of {written} writes: {lines:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "charts moved after {written} writes, {:?}: {lines:?}",
        started.elapsed()
    );
    let inc = line(&lines, "increments_per_sec").unwrap();
    assert!(
        samples > samples_before && inc.points > points_before,
        "no new points: {samples_before} -> {samples} samples, {points_before} -> {} points",
        inc.points
    );
    assert!(line(&lines, "consistent_failed_per_sec").unwrap().points > 0);
    let latency = line(&lines, "consistent_read_ms").unwrap();
    assert!(
        latency.points > 0 && latency.max.is_some_and(|v| v > 0.0),
        "{latency:?}"
    );
    let storage = line(&lines, "storage_healthy").unwrap();
    assert!(
        storage.points > 0 && storage.last == Some(1.0),
        "{storage:?}"
    );
    // The other nodes' lines (from `/status/cluster/history`) beside node
    // 1's own, each with points: per node, increments, consistent reads
    // and their latency.
    for series in [
        "increments_per_sec",
        "consistent_ok_per_sec",
        "consistent_read_ms",
    ] {
        let mut nodes: Vec<String> = lines
            .iter()
            .filter(|l| l.series == series && l.points > 0)
            .filter_map(|l| l.node.clone())
            .collect();
        nodes.sort();
        let mut want = addrs[1..].to_vec();
        want.sort();
        if series == "consistent_read_ms" {
            // Only nodes that served consistent reads have a latency.
            assert!(
                nodes.iter().all(|n| want.contains(n)),
                "{series}: {lines:?}"
            );
        } else {
            assert_eq!(nodes, want, "{series}: {lines:?}");
        }
    }
    // A lag line per peer of node 1: the other two actors.
    let mut peers: Vec<String> = lines
        .iter()
        .filter(|l| l.series == "lag_changes" && l.points > 0)
        .filter_map(|l| l.peer.clone())
        .collect();
    peers.sort();
    let mut want = addrs[1..].to_vec();
    want.sort();
    assert_eq!(peers, want, "{lines:?}");

    // For the screenshot, a few more seconds of a varying load: until the
    // page shows 15 samples, bounded like the rest.
    let started = Instant::now();
    let mut round = 0u64;
    loop {
        round += 1;
        for _ in 0..(round % 4 + 1) * 4 {
            c.incr(0, "load", 1);
        }
        let _ = c.http.get(&c.url(0, "/counter/load/consistent_value"));
        let (samples, _) = chart_lines(&driver).expect("read the charts");
        if samples >= 15 {
            break;
        }
        assert!(
            started.elapsed() < PAGE_BOUND,
            "the page shows {samples} samples after {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let shot = output_dir().join("console-charts.png");
    let png = driver.screenshot().expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    std::fs::write(&shot, png).expect("write the screenshot");
    eprintln!("screenshot: {}", shot.display());
}
