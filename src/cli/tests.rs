//! Flags: what parses, what is refused, and that the defaults are the code's.

use super::*;
use crate::daemon::defaults;
use crate::node::{OnDamage, Settings};
use crate::server::Limits;
use crate::tls::PlainHttp;
use clap::CommandFactory;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("tally").chain(args.iter().copied()))
}

#[test]
fn definitions_are_consistent() {
    Cli::command().debug_assert();
}

/// The flags' defaults are the node's, the store's and the server's own.
#[test]
fn flag_defaults_are_the_code_defaults() {
    let cli = parse(&["1"]).unwrap();
    let listen = cli.node.listen;
    let (settings, limits) = cli.node.into_settings(1, "d".into(), None);
    let want = Settings::new(1, listen, "d".into());
    assert_eq!(listen.to_string(), defaults::LISTEN);
    assert_eq!(settings, want);
    assert_eq!(format!("{limits:?}"), format!("{:?}", Limits::default()));
}

/// Each choice of --on-damage and --plain-http is one of the node's, and back.
#[test]
fn flag_choices_are_the_node_vocabulary() {
    use clap::ValueEnum;
    for &policy in DamagePolicy::value_variants() {
        assert_eq!(DamagePolicy::from(OnDamage::from(policy)), policy);
    }
    for &plain in PlainHttpArg::value_variants() {
        assert_eq!(PlainHttpArg::from(PlainHttp::from(plain)), plain);
    }
}

#[test]
fn a_number_runs_a_node() {
    let cli = parse(&["1"]).unwrap();
    assert!(cli.command.is_none());
    assert_eq!(cli.node.id, Some(1));
    let cli = parse(&["7", "--listen", "127.0.0.1:9000", "--log", "warn"]).unwrap();
    assert!(cli.command.is_none());
    assert_eq!(cli.node.id, Some(7));
    assert_eq!(cli.node.listen, "127.0.0.1:9000".parse().unwrap());
    assert!(parse(&[]).is_err(), "a node needs an id");
    assert!(parse(&["0"]).is_err(), "ids are positive");
    assert!(parse(&["1", "inc", "x"]).is_err(), "a node takes one id");
}

#[test]
fn inc_is_the_client() {
    let cli = parse(&["inc", "x"]).unwrap();
    match cli.command {
        Some(Commands::Inc {
            name,
            n,
            idempotency_key,
            client,
        }) => {
            assert_eq!((name.as_str(), n, idempotency_key), ("x", 1, None));
            assert!(!client.json);
            assert_eq!(client.timeout, None);
        }
        other => panic!("parsed as {other:?}"),
    }
    let cli = parse(&[
        "inc",
        "a/b",
        "5",
        "--node",
        "127.0.0.1:7701",
        "--idempotency-key",
        "k1",
        "--json",
        "--timeout",
        "2s",
        "--secret",
        "s",
    ])
    .unwrap();
    match cli.command {
        Some(Commands::Inc {
            name,
            n,
            idempotency_key,
            client,
        }) => {
            assert_eq!(name, "a/b");
            assert_eq!(n, 5);
            assert_eq!(idempotency_key.as_deref(), Some("k1"));
            assert_eq!(client.nodes, ["http://127.0.0.1:7701"]);
            assert!(client.json);
            assert_eq!(client.timeout, Some(Duration::from_secs(2)));
            assert_eq!(client.secret.as_deref(), Some("s"));
        }
        other => panic!("parsed as {other:?}"),
    }
    for bad in [
        &["inc"][..],
        &["inc", "x", "-1"],
        &["inc", "x", "1.5"],
        &["inc", "x", "18446744073709551616"],
        &["inc", ""],
        &["inc", "x", "--node", "ftp://x"],
        &["inc", "x", "--timeout", "0"],
        &["inc", "x", "--idempotency-key", "a b"],
        &["get"],
        &["config"],
        &["ls", "--limit", "0"],
    ] {
        assert!(parse(bad).is_err(), "{bad:?} should be refused");
    }
}

#[test]
fn every_client_command_parses() {
    assert!(matches!(
        parse(&["get", "x", "--consistent", "--timeout", "500ms"]).unwrap().command,
        Some(Commands::Get { consistent: true, client, .. })
            if client.timeout == Some(Duration::from_millis(500))
    ));
    assert!(matches!(
        parse(&["status", "--json"]).unwrap().command,
        Some(Commands::Status { client, cluster: false, .. }) if client.json
    ));
    assert!(matches!(
        parse(&["status", "--cluster", "-o", "json", "--node", "a:1,b:2", "--node", "c"])
            .unwrap()
            .command,
        Some(Commands::Status { client, cluster: true, output: Output::Json })
            if client.nodes == ["http://a:1", "http://b:2", "http://c:7777"]
    ));
    assert!(matches!(
        parse(&["health", "--live"]).unwrap().command,
        Some(Commands::Health { live: true, client }) if client.nodes.is_empty()
    ));
    assert!(parse(&["status", "-o", "yaml"]).is_err());
    assert!(matches!(
        parse(&["config", "10.0.0.1", "10.0.0.2:7777"]).unwrap().command,
        Some(Commands::Config { actors, .. }) if actors == ["10.0.0.1", "10.0.0.2:7777"]
    ));
    assert!(matches!(
        parse(&["ls", "ab", "--limit", "10", "--after", "abc"]).unwrap().command,
        Some(Commands::Ls { prefix: Some(p), limit: Some(10), after: Some(a), .. })
            if p == "ab" && a == "abc"
    ));
    assert!(matches!(
        parse(&["demo"]).unwrap().command,
        Some(Commands::Demo { nodes: 3, .. })
    ));
}

#[test]
fn a_secret_that_cannot_travel_in_a_header_is_refused() {
    assert!(super::check_secret("0123456789abcdef-secret").is_ok());
    for bad in ["", "has space", "tab\there", "line\nbreak", "é-accent"] {
        let err = super::check_secret(bad).unwrap_err();
        assert!(err.contains("secret"), "{bad:?}: {err}");
    }
}
