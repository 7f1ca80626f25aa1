//! Answers turned into what the client prints and how it exits.

use super::*;

#[test]
fn server_deadline_leaves_a_margin() {
    assert_eq!(
        server_deadline(Duration::from_secs(2)),
        Duration::from_millis(1600)
    );
    assert_eq!(
        server_deadline(Duration::from_secs(15)),
        Duration::from_secs(14)
    );
    assert!(server_deadline(Duration::from_nanos(1)) > Duration::ZERO);
}

fn answer(status: u16, body: &str) -> Answer {
    Answer {
        status,
        body: body.into(),
    }
}

fn get(consistent: bool) -> Action {
    Action::Get {
        name: "a\"b".into(),
        consistent,
    }
}

#[test]
fn values_print_plain_or_as_json() {
    assert_eq!(
        interpret(&get(false), false, &answer(200, "42")).stdout,
        "42\n"
    );
    let json = interpret(&get(false), true, &answer(200, "42")).stdout;
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v, serde_json::json!({"name": "a\"b", "value": 42}));
    let big = u128::MAX.to_string();
    let out = interpret(&get(false), true, &answer(200, &big));
    assert!(out.stdout.contains(&big), "{out:?}");
    for bad in [
        "",
        "-1",
        "1.5",
        "x",
        "+3",
        "99999999999999999999999999999999999999999",
    ] {
        let out = interpret(&get(false), false, &answer(200, bad));
        assert_eq!(out.code, EXIT_FAILED, "{bad:?}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn errors_name_status_and_message() {
    let out = interpret(&get(false), false, &answer(400, r#"{"error":"bad name"}"#));
    assert_eq!(out.code, 1);
    assert_eq!(out.stderr, "tally: 400 Bad Request: bad name\n");
    let out = interpret(&get(false), false, &answer(502, "<html>oops</html>"));
    assert_eq!(out.stderr, "tally: 502 Bad Gateway: <html>oops</html>\n");
    let out = interpret(&Action::Status { cluster: false }, false, &answer(599, ""));
    assert_eq!(out.stderr, "tally: 599: (no message)\n");
    let out = interpret(
        &Action::Config {
            actors: vec![],
            forget: vec![],
        },
        false,
        &answer(401, r#"{"error":"needs secret"}"#),
    );
    assert!(out.stderr.contains("--secret"), "{out:?}");
}

#[test]
fn incomplete_consistent_reads_exit_3() {
    let body = r#"{"error":"could not hear","unreachable":["10.0.0.2:7777","10.0.0.3:7777"],"best_known_value":7}"#;
    let out = interpret(&get(true), false, &answer(503, body));
    assert_eq!(out.code, EXIT_INCOMPLETE);
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr.contains("10.0.0.2:7777, 10.0.0.3:7777"),
        "{out:?}"
    );
    assert!(out.stderr.contains("best known value: 7"), "{out:?}");
    let no_config = r#"{"error":"no config","unreachable":[],"best_known_value":7}"#;
    let out = interpret(&get(true), false, &answer(503, no_config));
    assert_eq!(out.code, EXIT_INCOMPLETE);
    assert!(!out.stderr.contains("unreachable"), "{out:?}");
    let out = interpret(&get(true), true, &answer(503, body));
    assert_eq!(out.stdout.trim(), body);
    // A 503 without the list (a node shutting down) is an ordinary error.
    let out = interpret(
        &get(true),
        false,
        &answer(503, r#"{"error":"shutting down"}"#),
    );
    assert_eq!(out.code, EXIT_FAILED);
    let out = interpret(&get(false), false, &answer(503, body));
    assert_eq!(out.code, EXIT_FAILED);
}

#[test]
fn listings_print_and_explain_old_nodes() {
    let ls = Action::Ls {
        prefix: None,
        limit: None,
        after: None,
    };
    let body =
        r#"{"counters":[{"name":"a","value":1},{"name":"bbb\n","value":22}],"next":"bbb\n"}"#;
    let out = interpret(&ls, false, &answer(200, body));
    assert_eq!(out.code, 0);
    assert_eq!(out.stdout, "a      1\nbbb\\n  22\n");
    assert!(out.stderr.contains("--after 'bbb\\n'"), "{out:?}");
    let out = interpret(&ls, false, &answer(200, r#"{"counters":[],"next":null}"#));
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", ""));
    let out = interpret(
        &ls,
        false,
        &answer(404, r#"{"error":"no route /counters"}"#),
    );
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("does not list counters"), "{out:?}");
    let out = interpret(&ls, false, &answer(200, "[]"));
    assert_eq!(out.code, 1);
}

#[test]
fn idempotency_keys_are_header_safe() {
    assert!(parse_idempotency_key("abc-123").is_ok());
    for bad in ["", "a b", "é", "a\nb", &"k".repeat(129)] {
        assert!(parse_idempotency_key(bad).is_err(), "{bad:?}");
    }
}
