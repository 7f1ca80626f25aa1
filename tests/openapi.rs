//! `docs/openapi.json` held to the code and to real nodes, so it cannot
//! drift: it names exactly the operations of `api::types::ENDPOINTS` (from
//! which the router is built), each with the scope the token check asks
//! for; the router answers every documented operation, refuses every other
//! method (405) and path (404); and every response example is answered as
//! documented by a real node: the 401 and 403 ones by a node with client
//! tokens, the others by an open node, in the order and states the
//! document's description sets out.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::http::Method;
use serde_json::Value;
use tally::api::access::needed;
use tally::api::types::ENDPOINTS;
use tally::auth::Scope;

use common::{BIN, Cluster, Http, TempDir, eintr, eventually, free_port};

const DOCUMENT: &str = include_str!("../docs/openapi.json");
/// What examples call the node asked, and an actor nobody answers at.
const NODE: &str = "127.0.0.1:7777";
const SILENT: &str = "127.0.0.1:7778";
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

fn doc() -> Value {
    serde_json::from_str(DOCUMENT).expect("docs/openapi.json is JSON")
}

/// `v`, or what its `$ref` points to in `doc`.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#').expect("a local $ref");
            resolve(
                doc,
                doc.pointer(pointer)
                    .unwrap_or_else(|| panic!("{r} points nowhere")),
            )
        }
        None => v,
    }
}

/// Every operation: (method in capitals, path template, operation).
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            assert!(
                METHODS.contains(&method.to_uppercase().as_str()),
                "{path}: {method} is not an operation of this API"
            );
            ops.push((method.to_uppercase(), path.clone(), op));
        }
    }
    ops
}

/// The scopes an operation's `security` asks of a client token; `None`
/// when it is open to all (`security: []`).
fn documented_scope(method: &str, path: &str, op: &Value) -> Option<Scope> {
    let security = op["security"]
        .as_array()
        .unwrap_or_else(|| panic!("{method} {path} says nothing of security"));
    if security.is_empty() {
        return None;
    }
    assert_eq!(security.len(), 1, "{method} {path}: one requirement");
    let scopes = security[0]["token"]
        .as_array()
        .unwrap_or_else(|| panic!("{method} {path} needs no token but is not open"));
    assert_eq!(scopes.len(), 1, "{method} {path}: one scope");
    Some(
        scopes[0]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{method} {path}: scope {}", scopes[0])),
    )
}

/// A path of `template` with each parameter taken from its example `key`,
/// or its first example.
fn concrete_path(doc: &Value, template: &str, op: &Value, key: &str) -> String {
    let mut path = template.to_string();
    for p in params(doc, op).iter().filter(|p| p["in"] == "path") {
        let name = p["name"].as_str().expect("a parameter name");
        let value = param_example(p, key)
            .or_else(|| {
                p["examples"]
                    .as_object()
                    .and_then(|e| e.values().next())
                    .map(|e| e["value"].as_str().expect("a string").to_string())
            })
            .unwrap_or_else(|| panic!("{template}: no example of {name}"));
        path = path.replace(&format!("{{{name}}}"), &value);
    }
    path
}

fn params<'a>(doc: &'a Value, op: &'a Value) -> Vec<&'a Value> {
    op["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| resolve(doc, p))
        .collect()
}

fn param_example(p: &Value, key: &str) -> Option<String> {
    p["examples"][key]["value"].as_str().map(String::from)
}

#[test]
fn the_document_names_every_endpoint_with_its_scope_and_nothing_else() {
    let doc = doc();
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(
        version.starts_with("3.1."),
        "openapi {version:?}, not 3.1.x"
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let description = doc["info"]["description"].as_str().unwrap_or_default();
    assert!(
        description.contains("/_internal/"),
        "the description says the internal routes are left out"
    );

    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let served: BTreeSet<(String, String)> = ENDPOINTS
        .iter()
        .map(|e| (e.method.to_string(), e.template.to_string()))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not documented: {undocumented:?}; documented but not served: {unserved:?}"
    );
    assert!(
        documented
            .iter()
            .all(|(_, p)| !p.starts_with("/_internal/"))
    );

    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["token"]["type"], "http");
    assert_eq!(schemes["token"]["scheme"], "bearer");
    for (method, template, op) in operations(&doc) {
        let path = concrete_path(&doc, &template, op, "");
        let method_ = Method::from_bytes(method.as_bytes()).unwrap();
        let scope = documented_scope(&method, &template, op);
        assert_eq!(
            scope,
            needed(&method_, &path),
            "{method} {template}: the document's scope is not the one the node asks for"
        );
        let responses = op["responses"].as_object().expect("responses");
        for status in ["401", "403"] {
            assert_eq!(
                responses.contains_key(status),
                scope.is_some(),
                "{method} {template}: {status} is documented exactly when a token is needed"
            );
        }
        for (status, response) in responses {
            assert!(
                status.parse::<u16>().is_ok(),
                "{method} {template}: {status}"
            );
            assert!(
                resolve(&doc, response)["description"].is_string(),
                "{method} {template} {status}: a description"
            );
        }
    }
}

#[test]
fn the_router_answers_exactly_the_documented_operations() {
    let doc = doc();
    let c = Cluster::start("openapi-router", 1, &[]);
    let served = c.http.get(&c.url(0, "/openapi.json"));
    assert_eq!(served.status, 200, "{served:?}");
    assert!(served.content_type.starts_with("application/json"));
    assert_eq!(served.body, DOCUMENT, "served as it is in the repository");

    let mut by_path: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for (method, template, _) in operations(&doc) {
        by_path.entry(template).or_default().insert(method);
    }
    for (template, methods) in &by_path {
        let op = &doc["paths"][template][methods.first().unwrap().to_lowercase()];
        let path = concrete_path(&doc, template, op, "");
        for method in METHODS {
            let r = c.http.request(method, &c.url(0, &path), Some(b""));
            if methods.contains(method) {
                assert!(
                    r.status != 404 && r.status != 405,
                    "{method} {path} is documented but the router does not serve it: {r:?}"
                );
            } else {
                r.assert_error(405, &format!("{method} {path} is not documented"));
            }
        }
        // The Allow header lists the documented methods (and HEAD with GET).
        let a = c
            .http
            .request_with_headers("POST", &c.url(0, &path), &[], None);
        if !methods.contains("POST") {
            let allow: BTreeSet<String> = a
                .header("allow")
                .unwrap_or_else(|| panic!("405 on {path} without Allow"))
                .split(',')
                .map(|m| m.trim().to_string())
                .filter(|m| m != "HEAD")
                .collect();
            assert_eq!(&allow, methods, "Allow of {path}");
        }
    }
    for path in [
        "/nope",
        "/openapi",
        "/openapi.yaml",
        "/console",
        "/status/nope",
        "/livez/",
        "/counters/x",
        "/counter/x/y",
        "/counter/x/value/y",
        "/_internal/v2/rpc",
    ] {
        c.http
            .get(&c.url(0, path))
            .assert_error(404, &format!("undocumented {path}"));
    }
}

/// One response example, with what to send for it.
struct Case<'a> {
    method: String,
    template: String,
    op: &'a Value,
    status: u16,
    key: String,
    content_type: String,
    example: &'a Value,
    /// Required response headers of the response.
    required_headers: Vec<String>,
}

impl Case<'_> {
    fn state(&self) -> u8 {
        match self.example["x-state"].as_str() {
            None => 1,
            Some("unconfigured") => 0,
            Some("peer-down") => 2,
            Some(other) => panic!("{}: unknown x-state {other}", self.name()),
        }
    }

    /// Config first, then the other writes, then the reads.
    fn rank(&self) -> u8 {
        match (self.method.as_str(), self.template.as_str()) {
            ("POST", "/config") => 0,
            ("POST", _) => 1,
            _ => 2,
        }
    }

    fn name(&self) -> String {
        format!("{} {} example {:?}", self.method, self.template, self.key)
    }
}

fn cases(doc: &Value) -> Vec<Case<'_>> {
    let mut all = Vec::new();
    for (method, template, op) in operations(doc) {
        for (status, response) in op["responses"].as_object().expect("responses") {
            let response = resolve(doc, response);
            let required_headers: Vec<String> = response["headers"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, h)| resolve(doc, h)["required"] == true)
                .map(|(k, _)| k.to_ascii_lowercase())
                .collect();
            for (content_type, media) in response["content"].as_object().into_iter().flatten() {
                for (key, example) in media["examples"].as_object().into_iter().flatten() {
                    all.push(Case {
                        method: method.clone(),
                        template: template.clone(),
                        op,
                        status: status.parse().expect("a status"),
                        key: key.clone(),
                        content_type: content_type.clone(),
                        example: resolve(doc, example),
                        required_headers: required_headers.clone(),
                    });
                }
            }
        }
    }
    all
}

/// What examples say of addresses, made true of this run.
fn localize(text: &str, node: &str, silent: &str) -> String {
    text.replace(NODE, node).replace(SILENT, silent)
}

/// The request of `case`: path with query, headers, body.
fn request_of(doc: &Value, case: &Case) -> (String, Vec<(String, String)>, Option<String>) {
    let mut path = concrete_path(doc, &case.template, case.op, &case.key);
    let mut query = Vec::new();
    let mut headers = Vec::new();
    for p in params(doc, case.op) {
        let Some(value) = param_example(p, &case.key) else {
            continue;
        };
        let name = p["name"].as_str().unwrap().to_string();
        match p["in"].as_str() {
            Some("query") => query.push(format!("{name}={value}")),
            Some("header") => headers.push((name, value)),
            _ => {}
        }
    }
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let body = case.op["requestBody"]["content"]
        .as_object()
        .and_then(|c| c.values().find_map(|m| m["examples"].get(&case.key)))
        .map(|e| match &e["value"] {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        });
    (path, headers, body)
}

/// Compares an answer's JSON to an example's, value for value, except at
/// the pointers in `varies`, where only the type must match.
fn same_json(want: &Value, got: &Value, at: &str, varies: &[&str]) -> Result<(), String> {
    if varies.contains(&at) {
        let kind = |v: &Value| std::mem::discriminant(v);
        return (kind(want) == kind(got))
            .then_some(())
            .ok_or(format!("{at}: {got} is not of the type of {want}"));
    }
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            let wk: BTreeSet<_> = w.keys().collect();
            let gk: BTreeSet<_> = g.keys().collect();
            if wk != gk {
                return Err(format!("{at}: fields {gk:?}, documented {wk:?}"));
            }
            for k in w.keys() {
                same_json(&w[k], &g[k], &format!("{at}/{k}"), varies)?;
            }
            Ok(())
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            for (i, (w, g)) in w.iter().zip(g).enumerate() {
                same_json(w, g, &format!("{at}/{i}"), varies)?;
            }
            Ok(())
        }
        (w, g) if w == g => Ok(()),
        (w, g) => Err(format!("{at}: {g}, documented {w}")),
    }
}

/// Sends the request of `case` to `port` with `extra` headers and checks
/// the answer against the example.
fn run_case(
    doc: &Value,
    http: &Http,
    case: &Case,
    port: u16,
    silent: &str,
    extra: &[(String, String)],
) {
    let node = format!("127.0.0.1:{port}");
    let (path, mut headers, body) = request_of(doc, case);
    headers.extend(extra.iter().cloned());
    let path = localize(&path, &node, silent);
    let body = body.map(|b| localize(&b, &node, silent));
    let headers_ref: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let answer = http.request_with_headers(
        &case.method,
        &format!("http://{node}{path}"),
        &headers_ref,
        body.as_deref().map(str::as_bytes),
    );
    let r = &answer.resp;
    let name = case.name();
    assert_eq!(r.status, case.status, "{name}: {r:?}");
    assert!(
        r.content_type.starts_with(&case.content_type),
        "{name}: content type {:?}, documented {:?}",
        r.content_type,
        case.content_type
    );
    for h in &case.required_headers {
        assert!(answer.header(h).is_some(), "{name}: no {h} header");
    }
    for (h, want) in case.example["x-headers"].as_object().into_iter().flatten() {
        assert_eq!(
            answer.header(h),
            want.as_str(),
            "{name}: header {h}; {answer:?}"
        );
    }
    let varies: Vec<&str> = case.example["x-varies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p.as_str().expect("a JSON pointer"))
        .collect();
    match &case.example["value"] {
        Value::String(want) => {
            let want = localize(want, &node, silent);
            if case.example["x-match"] == "contains" {
                let start: String = r.body.chars().take(300).collect();
                assert!(
                    r.body.contains(&want),
                    "{name}: {want:?} not in the answer ({} {}, beginning {start:?})",
                    r.status,
                    r.content_type
                );
            } else {
                assert_eq!(r.body, want, "{name}");
            }
        }
        want => {
            let want: Value = serde_json::from_str(&localize(&want.to_string(), &node, silent))
                .expect("an example is JSON");
            let got: Value = serde_json::from_str(&r.body)
                .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {r:?}"));
            if let Err(e) = same_json(&want, &got, "", &varies) {
                panic!("{name}: {e}; answer {r:?}");
            }
        }
    }
}

/// A node process killed when dropped (the harness's `Cluster` waits for
/// an open `/status`, which a node with tokens does not give).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = eintr::wait(&mut self.0);
    }
}

/// A new token with `scopes`: (the token, its line for the tokens file).
fn new_token(name: &str, scopes: &str) -> (String, String) {
    let out = Command::new(BIN)
        .args(["token", "new", "--name", name, "--scope", scopes])
        .stdin(Stdio::null())
        .output()
        .expect("tally token new");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    (
        lines.next().expect("the token").to_string(),
        lines.next().expect("the line").to_string(),
    )
}

#[test]
fn every_example_is_answered_as_documented() {
    let doc = doc();
    let mut cases = cases(&doc);
    assert!(cases.len() > 20, "the document has examples");
    cases.sort_by(|a, b| {
        (a.state(), a.rank(), &a.template, &a.method, &a.key).cmp(&(
            b.state(),
            b.rank(),
            &b.template,
            &b.method,
            &b.key,
        ))
    });
    let (refusals, answers): (Vec<&Case>, Vec<&Case>) = cases
        .iter()
        .partition(|c| c.status == 401 || c.status == 403);

    // The open node, through its states: no config, a cluster of one, then
    // a config with an actor nobody answers at (the example that posts it
    // is the first of that state).
    let c = Cluster::start("openapi-examples", 1, &[]);
    let silent = format!("127.0.0.1:{}", free_port());
    for case in &answers {
        run_case(&doc, &c.http, case, c.nodes[0].spec.port, &silent, &[]);
    }
    assert!(answers.iter().any(|c| c.state() == 0) && answers.iter().any(|c| c.state() == 2));

    // A node with tokens: every secured operation refuses a request without
    // a token (401) and one with a token without its scope (403), as its
    // examples say; the open ones need no token.
    let dir = TempDir::new("openapi-tokens");
    let (reader, reader_line) = new_token("reader", "read");
    let (writer, writer_line) = new_token("writer", "write");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{reader_line}\n{writer_line}\n")).unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-cluster-secret-of-some-length\n").unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
    let _node = Guard(
        Command::new(BIN)
            .args(["1", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--tokens-file")
            .arg(&tokens)
            .arg("--secret-file")
            .arg(&secret)
            .env("TALLY_LOG", "warn")
            .env_remove("TALLY_SECRET")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn tally"),
    );
    let http = Http::new(false);
    eventually("the node with tokens live", Duration::from_secs(15), || {
        http.try_request(
            "GET",
            &format!("http://127.0.0.1:{port}/livez"),
            None,
            Duration::from_secs(2),
        )
        .and_then(|r| (r.status == 200).then_some(()).ok_or(format!("{r:?}")))
    });
    let mut refused = BTreeSet::new();
    for case in &refusals {
        let method = Method::from_bytes(case.method.as_bytes()).unwrap();
        let path = concrete_path(&doc, &case.template, case.op, &case.key);
        let need = needed(&method, &path).expect("a refusal on a secured route");
        let extra = match case.status {
            401 => vec![],
            _ => {
                let other = if need == Scope::Read {
                    &writer
                } else {
                    &reader
                };
                vec![("Authorization".to_string(), format!("Bearer {other}"))]
            }
        };
        run_case(&doc, &http, case, port, &silent, &extra);
        refused.insert((case.method.clone(), case.template.clone(), case.status));
    }
    for e in ENDPOINTS {
        match e.scope {
            Some(need) => {
                for status in [401, 403] {
                    assert!(
                        refused.contains(&(e.method.to_string(), e.template.to_string(), status)),
                        "{} {}: no {status} example ran",
                        e.method,
                        e.template
                    );
                }
                // The 403 names the scope needed.
                let path = e.template.replace("{name}", "visits");
                let other = if need == Scope::Read {
                    &writer
                } else {
                    &reader
                };
                let a = http.request_with_headers(
                    e.method,
                    &format!("http://127.0.0.1:{port}{path}"),
                    &[("Authorization", &format!("Bearer {other}"))],
                    Some(b"1"),
                );
                assert_eq!(a.resp.status, 403, "{} {path}: {a:?}", e.method);
                let www = a.header("www-authenticate").unwrap_or_default();
                assert!(
                    www.contains(&format!("scope=\"{need}\"")),
                    "{} {path}: {www}",
                    e.method
                );
            }
            None => {
                let path = e.template.replace("{asset}", "console.js");
                let r = http.get(&format!("http://127.0.0.1:{port}{path}"));
                assert!(r.status != 401 && r.status != 403, "{path} is open: {r:?}");
            }
        }
    }
}
