//! Certificates made, signed, refused and written.

use super::*;
use rcgen::DnValue;

fn ca() -> (String, String) {
    make_ca(DEFAULT_CA_NAME, 30).unwrap()
}

fn hosts(list: &[&str]) -> Vec<String> {
    list.iter().map(|h| h.to_string()).collect()
}

fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

fn anchor_of(ca_pem: &str) -> TrustAnchor<'static> {
    let der = ders(ca_pem).remove(0);
    webpki::anchor_from_trusted_cert(&der).unwrap().to_owned()
}

fn name(text: &str) -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from(text.to_string()).unwrap()
}

/// A fresh folder under the system's temporary folder, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "tally-cert-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_node_certificate_verifies_for_server_and_client_and_names_its_hosts_and_id() {
    let (ca_cert, ca_key) = ca();
    let hosts = hosts(&["10.0.0.3", "db3.example.com", "[::1]"]);
    let (chain, key) = make_node(&ca_cert, &ca_key, 3, &hosts, 30).unwrap();
    assert!(KeyPair::from_pem(&key).is_ok(), "the key reads back");

    let certs = ders(&chain);
    assert_eq!(certs.len(), 2, "the node's certificate, then the CA's");
    assert_eq!(certs[1], ders(&ca_cert)[0]);
    let anchor = anchor_of(&ca_cert);
    let now = UnixTime::now();
    verify(&certs[0], &anchor, webpki::KeyUsage::server_auth(), now).unwrap();
    verify(&certs[0], &anchor, webpki::KeyUsage::client_auth(), now).unwrap();

    let leaf = webpki::EndEntityCert::try_from(&certs[0]).unwrap();
    for good in ["10.0.0.3", "db3.example.com", "::1", &identity_name(3)] {
        leaf.verify_is_valid_for_subject_name(&name(good))
            .unwrap_or_else(|e| panic!("not valid for {good}: {e}"));
    }
    for bad in [
        &identity_name(4),
        "10.0.0.4",
        "example.com",
        "node-3.tally.evil",
    ] {
        assert!(
            leaf.verify_is_valid_for_subject_name(&name(bad)).is_err(),
            "valid for {bad}"
        );
    }
}

#[test]
fn a_certificate_of_another_ca_does_not_verify() {
    let (ca_cert, ca_key) = ca();
    let (other_cert, other_key) = ca();
    let (chain, _) = make_node(&ca_cert, &ca_key, 1, &hosts(&["127.0.0.1"]), 30).unwrap();
    let leaf = ders(&chain).remove(0);
    let now = UnixTime::now();
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        assert!(verify(&leaf, &anchor_of(&ca_cert), usage, now).is_ok());
        assert!(verify(&leaf, &anchor_of(&other_cert), usage, now).is_err());
    }
    let mismatched = make_node(&ca_cert, &other_key, 1, &hosts(&["127.0.0.1"]), 30);
    assert_eq!(
        mismatched.unwrap_err(),
        "the CA key does not belong to the CA certificate"
    );
}

/// A node's certificate is no CA: what its key signs chains to nothing.
#[test]
fn a_node_certificate_cannot_sign_for_another_node() {
    let (ca_cert, ca_key) = ca();
    let (chain, key) = make_node(&ca_cert, &ca_key, 1, &hosts(&["127.0.0.1"]), 30).unwrap();
    let node_cert = ders(&chain).remove(0);
    let node_pem = chain[..chain.find(PEM_END).unwrap() + PEM_END.len()].to_string();
    let (forged, _) = make_node(&node_pem, &key, 2, &hosts(&["127.0.0.1"]), 30).unwrap();
    let forged = ders(&forged).remove(0);
    let leaf = webpki::EndEntityCert::try_from(&forged).unwrap();
    let anchors = [anchor_of(&ca_cert)];
    let intermediates = [node_cert];
    let result = leaf
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map(|_| ());
    assert!(
        matches!(result, Err(webpki::Error::EndEntityUsedAsCa)),
        "{result:?}"
    );
}

#[test]
fn a_certificate_is_valid_for_the_days_asked() {
    let (ca_cert, ca_key) = ca();
    let (chain, _) = make_node(&ca_cert, &ca_key, 1, &hosts(&["127.0.0.1"]), 10).unwrap();
    let leaf = ders(&chain).remove(0);
    let anchor = anchor_of(&ca_cert);
    let at = |days_from_now: i64| {
        let now = UnixTime::now().as_secs() as i64;
        UnixTime::since_unix_epoch(Duration::from_secs((now + days_from_now * 86_400) as u64))
    };
    let usage = webpki::KeyUsage::server_auth;
    assert!(verify(&leaf, &anchor, usage(), at(9)).is_ok());
    assert!(matches!(
        verify(&leaf, &anchor, usage(), at(11)),
        Err(webpki::Error::CertExpired { .. })
    ));
}

/// A CA made elsewhere, with a name of several attributes and string
/// types, signs as well: the node certificate chains to it.
#[test]
fn a_ca_with_a_longer_name_signs_too() {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        DnType::CountryName,
        DnValue::PrintableString("NL".try_into().unwrap()),
    );
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Exämple Ops");
    params.distinguished_name.push(
        DnType::CustomDnType(vec![0, 9, 2342, 19200300, 100, 1, 25]),
        DnValue::Ia5String("example".try_into().unwrap()),
    );
    params
        .distinguished_name
        .push(DnType::CommonName, "Ops CA 2");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    set_validity(&mut params, 30).unwrap();
    let ca_key = new_key().unwrap();
    let ca_cert = params.self_signed(&ca_key).unwrap();
    let ca_pem = ca_cert.pem();

    let anchor = anchor_of(&ca_pem);
    let (chain, _) = make_node(
        &ca_pem,
        &ca_key.serialize_pem(),
        5,
        &hosts(&["10.1.1.5"]),
        30,
    )
    .unwrap();
    let leaf = ders(&chain).remove(0);
    verify(
        &leaf,
        &anchor,
        webpki::KeyUsage::server_auth(),
        UnixTime::now(),
    )
    .unwrap();
}

#[test]
fn hosts_are_checked() {
    let (ca_cert, ca_key) = ca();
    let node = |id: u64, list: &[&str], days: u32| {
        make_node(&ca_cert, &ca_key, id, &hosts(list), days).map(|_| ())
    };
    assert!(node(1, &["10.0.0.1:7777"], 30).is_err(), "a port");
    assert!(node(1, &["not a host"], 30).is_err());
    assert!(node(1, &["*.example.com"], 30).is_err(), "a wildcard");
    assert!(node(1, &["node-2.tally"], 30).is_err(), "another node's id");
    assert!(node(1, &["x.tally"], 30).is_err(), "the id domain");
    assert!(node(1, &["NODE-1.tally.", "Host.Example."], 30).is_ok());
    assert!(node(0, &["10.0.0.1"], 30).is_err(), "ids are positive");
    assert!(node(1, &["10.0.0.1"], 0).is_err(), "no validity");
    assert!(node(1, &["10.0.0.1"], MAX_DAYS + 1).is_err());
    assert!(make_ca(" ", 30).is_err(), "an empty name");
    assert!(
        make_node(&ca_cert, &ca_key, 1, &[], 30).is_ok(),
        "the id alone"
    );
    let both = format!("{ca_cert}{ca_cert}");
    assert!(make_node(&both, &ca_key, 1, &hosts(&["10.0.0.1"]), 30).is_err());
}

#[test]
fn keys_are_private_and_no_file_is_replaced_without_force() {
    let scratch = Scratch::new("files");
    let dir = scratch.0.join("ca");
    let key_path = dir.join("ca-key.pem");
    write_ca(&dir, DEFAULT_CA_NAME, 30, false).unwrap();
    assert_eq!(mode(&key_path), 0o600);
    let before = std::fs::read_to_string(&key_path).unwrap();

    let refused = write_ca(&dir, DEFAULT_CA_NAME, 30, false).unwrap_err();
    assert!(refused.contains("--force"), "{refused}");
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), before);

    // Replaced whole, and readable by its owner only even where the old
    // file was readable by all.
    std::fs::set_permissions(
        &key_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    write_ca(&dir, DEFAULT_CA_NAME, 30, true).unwrap();
    assert_ne!(std::fs::read_to_string(&key_path).unwrap(), before);
    assert_eq!(mode(&key_path), 0o600);

    let out = scratch.0.join("nodes");
    let report = write_node(&dir, 7, &hosts(&["10.0.0.7"]), &out, 30, false).unwrap();
    let node_key = out.join("node-7-key.pem");
    assert_eq!(mode(&node_key), 0o600);
    assert!(
        report.contains(&format!(
            "--tls-cert {} --tls-key {} --tls-ca {}",
            out.join("node-7.pem").display(),
            node_key.display(),
            key_path.with_file_name("ca.pem").display()
        )),
        "{report}"
    );
    let before = std::fs::read_to_string(&node_key).unwrap();
    assert!(write_node(&dir, 7, &hosts(&["10.0.0.7"]), &out, 30, false).is_err());
    assert_eq!(std::fs::read_to_string(&node_key).unwrap(), before);
    write_node(&dir, 7, &hosts(&["10.0.0.7"]), &out, 30, true).unwrap();
    assert_ne!(std::fs::read_to_string(&node_key).unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");
}

#[test]
fn the_command_line_parses() {
    use clap::Parser as _;
    let parse = |args: &[&str]| {
        super::super::Cli::try_parse_from(["tally", "cert"].into_iter().chain(args.iter().copied()))
    };
    let cli = parse(&[
        "node", "--ca", "c", "--id", "2", "--host", "10.0.0.2", "--host", "a,b", "--out", "o",
    ])
    .unwrap();
    match cli.command {
        Some(super::super::Commands::Cert {
            command:
                CertCommand::Node {
                    id,
                    host,
                    days,
                    force,
                    ..
                },
        }) => {
            assert_eq!((id, days, force), (2, 825, false));
            assert_eq!(host, ["10.0.0.2", "a", "b"]);
        }
        other => panic!("parsed as {other:?}"),
    }
    match parse(&["ca", "--out", "c"]).unwrap().command {
        Some(super::super::Commands::Cert {
            command: CertCommand::Ca { name, days, .. },
        }) => assert_eq!((name.as_str(), days), (DEFAULT_CA_NAME, 3650)),
        other => panic!("parsed as {other:?}"),
    }
    assert!(
        parse(&["node", "--ca", "c", "--id", "2", "--out", "o"]).is_err(),
        "no host"
    );
    assert!(
        parse(&[
            "node", "--ca", "c", "--id", "0", "--host", "h", "--out", "o"
        ])
        .is_err()
    );
    assert!(parse(&["ca", "--out", "c", "--days", "0"]).is_err());
}
