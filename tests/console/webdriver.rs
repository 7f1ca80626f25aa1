//! Just enough of a WebDriver client (W3C WebDriver, plain HTTP and JSON)
//! to drive the console in headless Chromium through Debian's
//! `chromedriver`: open a page, type into a field, click, run a script that
//! reads the page, take a screenshot.
//!
//! `chromedriver` runs on a loopback port in a process group of its own,
//! with Chromium in a throwaway profile; dropping the [`Driver`] ends the
//! session, kills the group, and then kills any process still naming the
//! profile folder (a browser helper that left the group), so nothing
//! outlives the test, also when it fails. Every call has a deadline.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Http, TempDir, eintr, eventually, free_port};

/// The key under which WebDriver names an element.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Bound on chromedriver answering after it was started.
const START_BOUND: Duration = Duration::from_secs(20);
/// Bound on creating a session (Chromium starts) and on loading a page.
const SESSION_BOUND: Duration = Duration::from_secs(30);
/// Bound on every other call.
const CALL_BOUND: Duration = Duration::from_secs(15);

pub struct Driver {
    child: Child,
    base: String,
    session: Option<String>,
    http: Http,
    /// The profile and logs; removed after the processes are gone.
    dir: TempDir,
}

impl Driver {
    /// Starts `chromedriver` and a headless session of `browser`, its
    /// window `width` × `height`.
    pub fn start(chromedriver: &Path, browser: &Path, width: u32, height: u32) -> Driver {
        let dir = TempDir::new("webdriver");
        let port = free_port();
        let log = dir.path().join("chromedriver.log");
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, with every browser process it starts,
            // so that one kill ends them all.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", chromedriver.display()));
        let mut driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            session: None,
            http: Http::new(false),
            dir,
        };
        eventually("chromedriver ready", START_BOUND, || {
            let status = driver.call("GET", "/status", None, CALL_BOUND)?;
            match status.pointer("/value/ready") {
                Some(Value::Bool(true)) => Ok(()),
                _ => Err(format!("status {status}")),
            }
        });
        let profile = driver.dir.path().join("profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": browser.to_string_lossy(),
                "args": [
                    "--headless",
                    // Root cannot run Chromium's sandbox; the page is our
                    // own, on loopback, in a throwaway profile.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-extensions",
                    "--disable-background-networking",
                    "--disable-sync",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--hide-scrollbars",
                    "--mute-audio",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
            "timeouts": {"script": 10_000, "pageLoad": 20_000, "implicit": 0},
        }}});
        let answer = driver
            .call("POST", "/session", Some(caps), SESSION_BOUND)
            .unwrap_or_else(|e| panic!("no browser session: {e}\n{}", driver.log()));
        let id = answer
            .pointer("/value/sessionId")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no session id in {answer}"));
        driver.session = Some(id.to_string());
        driver
    }

    /// The tail of chromedriver's log, for a failure's message.
    pub fn log(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// One WebDriver call; `Err` when no answer came, or an error did.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        bound: Duration,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let body = body.map(|b| b.to_string());
        let resp = match method {
            "POST" => {
                self.http
                    .try_request_with_headers(
                        "POST",
                        &url,
                        &[("content-type", "application/json")],
                        Some(body.as_deref().unwrap_or("{}").as_bytes()),
                        bound,
                    )?
                    .resp
            }
            _ => self.http.try_request(method, &url, None, bound)?,
        };
        let value: Value = serde_json::from_str(&resp.body)
            .map_err(|e| format!("{method} {path}: not JSON ({e}): {}", resp.body))?;
        if resp.status != 200 {
            return Err(format!(
                "{method} {path}: {} {}",
                resp.status,
                value.pointer("/value/message").unwrap_or(&value)
            ));
        }
        Ok(value)
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let id = self.session.as_deref().ok_or("no session")?;
        let bound = if path == "/url" {
            SESSION_BOUND
        } else {
            CALL_BOUND
        };
        let v = self.call(method, &format!("/session/{id}{path}"), body, bound)?;
        Ok(v.get("value").cloned().unwrap_or(Value::Null))
    }

    /// Loads `url` (returns once the page has loaded).
    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })))
            .unwrap_or_else(|e| panic!("load {url}: {e}"));
    }

    /// The element `css` selects.
    pub fn find(&self, css: &str) -> Result<String, String> {
        let v = self.session_call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        v.get(ELEMENT)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("no element {css}: {v}"))
    }

    /// Empties the field `css` selects and types `text` into it.
    pub fn type_into(&self, css: &str, text: &str) -> Result<(), String> {
        let el = self.find(css)?;
        self.session_call("POST", &format!("/element/{el}/clear"), Some(json!({})))?;
        self.session_call(
            "POST",
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        )?;
        Ok(())
    }

    /// Clicks the element `css` selects, as a user would (the browser
    /// checks it is shown and not covered).
    pub fn click(&self, css: &str) -> Result<(), String> {
        let el = self.find(css)?;
        self.session_call("POST", &format!("/element/{el}/click"), Some(json!({})))?;
        Ok(())
    }

    /// Runs `script` (a function body) in the page with `args`; its
    /// return value, as JSON.
    pub fn run(&self, script: &str, args: Value) -> Result<Value, String> {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// A PNG of the window as shown.
    pub fn screenshot(&self) -> Result<Vec<u8>, String> {
        let v = self.session_call("GET", "/screenshot", None)?;
        let text = v.as_str().ok_or_else(|| format!("no screenshot: {v}"))?;
        base64_decode(text)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(id) = self.session.take() {
            // Closes the browser cleanly when it still answers, and gives
            // its processes a moment to go (bounded) before the kill.
            let closed = self.call(
                "DELETE",
                &format!("/session/{id}"),
                None,
                Duration::from_secs(5),
            );
            if closed.is_ok() {
                crate::common::wait_until(Duration::from_secs(5), || {
                    processes_naming(self.dir.path()).is_empty()
                });
            }
        }
        let _ = eintr::status(
            Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let _ = eintr::wait(&mut self.child);
        // A browser process that left the group still names its profile.
        for pid in processes_naming(self.dir.path()) {
            let _ = eintr::status(
                Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            );
        }
    }
}

/// Processes whose command line names `dir`.
pub fn processes_naming(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(&needle)
                .then_some(pid)
        })
        .filter(|pid| *pid != std::process::id())
        .collect()
}

/// Where `name` is on `PATH`, or `chosen` when set.
pub fn executable(chosen: Option<PathBuf>, names: &[&str]) -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = match &chosen {
        Some(p) => vec![p.clone()],
        None => names
            .iter()
            .flat_map(|name| {
                std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                    .map(move |dir| dir.join(name))
                    .collect::<Vec<_>>()
            })
            .collect(),
    };
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| match chosen {
            Some(p) => format!("{} is not a file", p.display()),
            None => format!("no {} on PATH", names.join(" or ")),
        })
}

/// Standard base64 (with padding), as WebDriver sends a screenshot.
fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let value = |c: u8| -> Result<u32, String> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(format!("not base64: byte {c}")),
        } as u32)
    };
    let bytes: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !bytes.len().is_multiple_of(4) {
        return Err(format!("base64 of {} characters", bytes.len()));
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&b| b == b'=').count();
        let mut n = 0u32;
        for &b in &chunk[..4 - pad] {
            n = (n << 6) | value(b)?;
        }
        n <<= 6 * pad as u32;
        let three = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&three[..3 - pad]);
    }
    Ok(out)
}

#[test]
fn base64_decodes_as_written() {
    assert_eq!(base64_decode("").unwrap(), b"");
    assert_eq!(base64_decode("Zg==").unwrap(), b"f");
    assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
    assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
    assert_eq!(base64_decode("iVBORw0KGgo=").unwrap(), b"\x89PNG\r\n\x1a\n");
    assert!(base64_decode("Zm9").is_err());
    assert!(base64_decode("Zm!v").is_err());
}
