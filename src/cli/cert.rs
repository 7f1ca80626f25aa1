//! `tally cert`: a CA and node certificates for a test or small cluster.
//!
//! `tally cert ca` makes a self-signed CA; `tally cert node` has it sign one
//! node's certificate. A node certificate names the node's addresses (IP or
//! DNS subject alternative names) and the DNS name
//! [`crate::tls::identity_name`], by which the node proves its id to its
//! peers; it is good for both server and client authentication, since a node
//! is both to its peers under mutual TLS. Keys are ECDSA P-256, for fast
//! handshakes. A key file is readable by its owner only, and no file is
//! replaced without `--force`.
//!
//! To sign, rcgen needs the CA's subject name as the issuer name of the new
//! certificate, byte for byte. Its own certificate parser sits behind a
//! feature this build leaves out, so [`distinguished_name`] reads the name
//! with a small DER reader, and [`make_node`] verifies each certificate it
//! signs against the CA before handing it out: a name read wrong, or a CA
//! key that does not belong to the CA certificate, is an error, never a
//! certificate that peers would refuse.
//!
//! Left out: intermediate CAs, revocation (no CRL, no OCSP), client
//! certificates, and renewal. An operator with a PKI of their own issues
//! node certificates from it instead.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Subcommand;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData as _, SanType,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, DnsName, TrustAnchor, UnixTime};

use crate::tls::identity_name;

/// Common name of a CA made without --name.
const DEFAULT_CA_NAME: &str = "tally test CA";

/// Longest validity --days accepts: 100 years.
const MAX_DAYS: u32 = 36_500;

/// How long before its making a certificate is already valid, so that a
/// host whose clock runs a little behind accepts it at once.
const BACKDATE: Duration = Duration::from_secs(3600);

const PEM_BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const PEM_END: &str = "-----END CERTIFICATE-----";

// Doc comments here are --help text, not rustdoc: brackets and <ID> are literal.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Make a CA: DIR/ca.pem, its certificate, which every node trusts
    /// (--tls-ca), and DIR/ca-key.pem, its key, which only `tally cert node`
    /// needs: keep it off the nodes.
    ///
    /// The CA may sign certificates for nodes only (path length 0), with
    /// key usages certificate and CRL signing.
    Ca {
        /// Folder to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = DEFAULT_CA_NAME)]
        name: String,
        /// Days the CA's certificate is valid. Some TLS clients refuse the
        /// certificates a CA signed once the CA itself has expired: make a
        /// new CA before then.
        #[arg(long, value_name = "N", default_value_t = 3650,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
        days: u32,
        /// Replace ca.pem and ca-key.pem if they exist. Certificates signed
        /// by the old CA stop verifying against the new one.
        #[arg(long)]
        force: bool,
    },
    /// Sign node N's certificate with the CA in --ca: writes DIR/node-N.pem
    /// (the node's certificate followed by the CA's) and DIR/node-N-key.pem,
    /// and prints the node flags that use them.
    ///
    /// The certificate carries every --host as a subject alternative name,
    /// and the DNS name node-N.tally, by which node N proves its id to its
    /// peers; it is good for server and client authentication. A certificate
    /// from another PKI works as well if it holds the same: signed by the
    /// cluster's CA, extended key usages server auth and client auth, the
    /// node's addresses and node-N.tally as subject alternative names.
    Node {
        /// Folder that holds ca.pem and ca-key.pem (see `tally cert ca`).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The node's id.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
        /// An address clients and peers reach the node at: an IP address or a
        /// DNS name, without port. Repeat it (or separate with commas) for
        /// several.
        #[arg(long, value_name = "HOST", required = true, value_delimiter = ',')]
        host: Vec<String>,
        /// Folder to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, value_name = "N", default_value_t = 825,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
        days: u32,
        /// Replace node-N.pem and node-N-key.pem if they exist.
        #[arg(long)]
        force: bool,
    },
}

/// Runs `tally cert ...`: prints the files written, or the error on stderr
/// and exits 1.
pub fn run(command: CertCommand) -> ExitCode {
    let result = match command {
        CertCommand::Ca {
            out,
            name,
            days,
            force,
        } => write_ca(&out, &name, days, force),
        CertCommand::Node {
            ca,
            id,
            host,
            out,
            days,
            force,
        } => write_node(&ca, id, &host, &out, days, force),
    };
    match result {
        Ok(report) => {
            let _ = std::io::stdout().write_all(report.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            super::say(&e);
            ExitCode::FAILURE
        }
    }
}

/// Makes a CA: its certificate and its key, both PEM. The CA is
/// self-signed, named `CN=name`, may sign end-entity certificates only
/// (path length 0) and is valid for `days` days.
pub(crate) fn make_ca(name: &str, days: u32) -> Result<(String, String), String> {
    if name.trim().is_empty() {
        return Err("the CA's name is empty".into());
    }
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, days)?;
    let key = new_key()?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("cannot sign the CA certificate: {e}"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Makes node `id`'s certificate, signed by the CA, and its key, both PEM.
/// The first PEM is the chain: the node's certificate, then the CA's.
///
/// Subject alternative names: each of `hosts` as an IP address when it
/// parses as one, else as a DNS name, then [`identity_name`]`(id)`. A host
/// under `.tally` other than that name is refused: it would let this node
/// claim another node's id.
pub(crate) fn make_node(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    id: u64,
    hosts: &[String],
    days: u32,
) -> Result<(String, String), String> {
    if id == 0 {
        return Err("node ids are positive integers".into());
    }
    let (ca_der, ca_block) = one_certificate(ca_cert_pem)?;
    let anchor = webpki::anchor_from_trusted_cert(&ca_der)
        .map_err(|e| format!("cannot read the CA certificate: {e}"))?;
    let ca_key =
        KeyPair::from_pem(ca_key_pem).map_err(|e| format!("cannot read the CA key: {e}"))?;
    if ca_key.subject_public_key_info() != webpki::spki_for_anchor(&anchor).as_ref() {
        return Err("the CA key does not belong to the CA certificate".into());
    }
    let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key)
        .map_err(|e| format!("cannot use the CA certificate as an issuer: {e}"))?;

    let mut params = CertificateParams::default();
    params.subject_alt_names = subject_alt_names(id, hosts)?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("tally node {id}"));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    set_validity(&mut params, days)?;
    let key = new_key()?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| format!("cannot sign the node certificate: {e}"))?;
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        verify(cert.der(), &anchor, usage, UnixTime::now()).map_err(|e| {
            format!("the certificate just signed does not verify against the CA: {e}")
        })?;
    }
    Ok((format!("{}{ca_block}\n", cert.pem()), key.serialize_pem()))
}

/// Checks that `cert` chains to `anchor` for `usage` at `now`, with no
/// intermediate certificate, as a node's TLS stack would.
fn verify(
    cert: &CertificateDer<'_>,
    anchor: &TrustAnchor<'_>,
    usage: webpki::KeyUsage,
    now: UnixTime,
) -> Result<(), webpki::Error> {
    let cert = webpki::EndEntityCert::try_from(cert)?;
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        std::slice::from_ref(anchor),
        &[],
        now,
        usage,
        None,
        None,
    )
    .map(|_| ())
}

/// A fresh ECDSA P-256 key.
fn new_key() -> Result<KeyPair, String> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| format!("cannot make a key: {e}"))
}

/// Valid from [`BACKDATE`] ago until `days` days from now.
fn set_validity(params: &mut CertificateParams, days: u32) -> Result<(), String> {
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(format!(
            "a validity of {days} days is out of range (1 to {MAX_DAYS})"
        ));
    }
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + Duration::from_secs(u64::from(days) * 86_400)).into();
    Ok(())
}

/// The one certificate a CA file holds: its DER, and its PEM block as
/// written in the file (to append to a node's chain).
fn one_certificate(pem: &str) -> Result<(CertificateDer<'static>, &str), String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot read the CA certificate: {e}"))?;
    let [der] = <[_; 1]>::try_from(certs).map_err(|certs| {
        format!(
            "the CA certificate file holds {} certificates; it must hold exactly one",
            certs.len()
        )
    })?;
    let block = pem
        .find(PEM_BEGIN)
        .and_then(|start| {
            let end = start + pem[start..].find(PEM_END)? + PEM_END.len();
            Some(&pem[start..end])
        })
        .ok_or("cannot find the CA certificate's PEM block")?;
    Ok((der, block))
}

/// The subject alternative names of node `id`'s certificate.
fn subject_alt_names(id: u64, hosts: &[String]) -> Result<Vec<SanType>, String> {
    let identity = identity_name(id);
    let mut dns_names = Vec::new();
    let mut ips = Vec::new();
    for raw in hosts {
        let host = raw.trim();
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
            continue;
        }
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if DnsName::try_from(name.as_str()).is_err() {
            return Err(format!(
                "--host {raw:?} is neither an IP address nor a DNS name (give it without a port)"
            ));
        }
        if (name == "tally" || name.ends_with(".tally")) && name != identity {
            return Err(format!(
                "--host {raw:?} is in the .tally domain, which names node ids; node {id}'s \
                 certificate may hold only {identity} there (it is added by itself)"
            ));
        }
        if !dns_names.contains(&name) {
            dns_names.push(name);
        }
    }
    if !dns_names.contains(&identity) {
        dns_names.push(identity);
    }
    let mut sans: Vec<SanType> = ips.into_iter().map(SanType::IpAddress).collect();
    for name in dns_names {
        let name = name
            .try_into()
            .map_err(|e| format!("cannot put a DNS name in a certificate: {e}"))?;
        sans.push(SanType::DnsName(name));
    }
    Ok(sans)
}

/// `tally cert ca`: makes a CA and writes it into `out`.
fn write_ca(out: &Path, name: &str, days: u32, force: bool) -> Result<String, String> {
    let cert_path = out.join("ca.pem");
    let key_path = out.join("ca-key.pem");
    refuse_existing(&[&cert_path, &key_path], force)?;
    let (cert, key) = make_ca(name, days)?;
    create_folder(out)?;
    write_file(&key_path, &key, 0o600, force)?;
    write_file(&cert_path, &cert, 0o644, force)?;
    Ok(format!(
        "wrote {} (the CA certificate: every node trusts it, --tls-ca)\n\
         wrote {} (the CA key: only `tally cert node` needs it; keep it off the nodes)\n",
        cert_path.display(),
        key_path.display()
    ))
}

/// `tally cert node`: signs node `id`'s certificate with the CA in `ca`
/// and writes it into `out`.
fn write_node(
    ca: &Path,
    id: u64,
    hosts: &[String],
    out: &Path,
    days: u32,
    force: bool,
) -> Result<String, String> {
    let ca_cert_path = ca.join("ca.pem");
    let ca_key_path = ca.join("ca-key.pem");
    let cert_path = out.join(format!("node-{id}.pem"));
    let key_path = out.join(format!("node-{id}-key.pem"));
    refuse_existing(&[&cert_path, &key_path], force)?;
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let (chain, key) = make_node(&read(&ca_cert_path)?, &read(&ca_key_path)?, id, hosts, days)?;
    create_folder(out)?;
    write_file(&key_path, &key, 0o600, force)?;
    write_file(&cert_path, &chain, 0o644, force)?;
    Ok(format!(
        "wrote {} (node {id}'s certificate, then the CA's)\n\
         wrote {} (node {id}'s key)\n\
         node {id}: --tls-cert {} --tls-key {} --tls-ca {}\n",
        cert_path.display(),
        key_path.display(),
        shell_word(&cert_path),
        shell_word(&key_path),
        shell_word(&ca_cert_path),
    ))
}

/// Refuses before anything is made or written, so that an existing pair is
/// never left half replaced.
fn refuse_existing(paths: &[&Path], force: bool) -> Result<(), String> {
    if force {
        return Ok(());
    }
    let existing: Vec<String> = paths
        .iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| p.display().to_string())
        .collect();
    match existing.as_slice() {
        [] => Ok(()),
        [one] => Err(format!("{one} already exists; pass --force to replace it")),
        _ => Err(format!(
            "{} already exist; pass --force to replace them",
            existing.join(" and ")
        )),
    }
}

fn create_folder(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// Writes a new file with permissions `mode`. Without `force` the file must
/// not exist. With it, the contents go to a new file beside it that then
/// replaces it by a rename, so a replaced key is never readable with the
/// old file's permissions, nor ever half written.
pub(crate) fn write_file(
    path: &Path,
    contents: &str,
    mode: u32,
    force: bool,
) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let target = if force {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".new");
        let temp = path.with_file_name(name);
        match std::fs::remove_file(&temp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fail(e)),
            _ => {}
        }
        temp
    } else {
        path.to_path_buf()
    };
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&target)
        .and_then(|mut file| {
            // The mode given at creation is reduced by the umask; this is exact.
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
            file.write_all(contents.as_bytes())?;
            file.sync_all()
        });
    if let Err(e) = written {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            let _ = std::fs::remove_file(&target);
        }
        return Err(fail(e));
    }
    if force {
        std::fs::rename(&target, path).map_err(|e| {
            let _ = std::fs::remove_file(&target);
            fail(e)
        })?;
    }
    Ok(())
}

/// A path as one shell word: quoted when it holds anything but plain
/// characters.
fn shell_word(path: &Path) -> String {
    let text = path.display().to_string();
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@,".contains(c));
    if plain {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests;
