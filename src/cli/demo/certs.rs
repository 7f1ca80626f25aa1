//! `--tls`: a CA and one certificate per node, in the demo's data folder.
//!
//! The files go to `tls/` in the data folder: `ca.pem` and `ca-key.pem`
//! (the CA), and for node N `node-N.pem` (its certificate, then the CA's)
//! and `node-N-key.pem`, the same names `tally cert` uses. Each node's
//! certificate names 127.0.0.1 and localhost, where the nodes and their
//! proxies listen, and the node's id (see [`crate::tls`]). Keys are readable
//! by their owner only, and every file is written beside its place and then
//! renamed into it, so a demo stopped halfway never leaves half a file.
//!
//! In a kept data folder (`--data-dir`) the files of an earlier run are used
//! again, so a client that trusts its `ca.pem` keeps working across runs;
//! only what is missing is made, signed by the same CA. A CA whose
//! certificate or key is missing is an error rather than replaced, since a
//! new CA would break every certificate it did not sign.
//!
//! Left out: renewal. A kept certificate that has expired is not replaced
//! (the node then fails its handshakes); removing `tls/` has new files made.

use std::path::{Path, PathBuf};

use crate::cli::cert::{make_ca, make_node};
use crate::tls::TlsFiles;

/// The CA's common name.
const CA_NAME: &str = "tally demo CA";
/// Days the CA is valid.
const CA_DAYS: u32 = 3650;
/// Days a node's certificate is valid.
const NODE_DAYS: u32 = 825;
/// What each node's certificate names besides its id: where the nodes and
/// their proxies listen.
const HOSTS: [&str; 2] = ["127.0.0.1", "localhost"];

/// The demo's TLS files.
pub struct Certs {
    /// The CA certificate, which every node and the demo's client trust.
    pub ca: PathBuf,
    /// Each node's files, in the order of the ids given to [`Certs::prepare`].
    pub nodes: Vec<TlsFiles>,
    /// What was made and what was found.
    pub made: String,
}

impl Certs {
    /// Finds or makes the CA and a certificate for each of `ids` in `data/tls`.
    pub fn prepare(data: &Path, ids: &[u64]) -> Result<Certs, String> {
        let dir = data.join("tls");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let ca = dir.join("ca.pem");
        let ca_key = dir.join("ca-key.pem");
        let (ca_pem, ca_key_pem, ca_new) = match (read(&ca)?, read(&ca_key)?) {
            (Some(cert), Some(key)) => (cert, key, false),
            (None, None) => {
                let (cert, key) = make_ca(CA_NAME, CA_DAYS)?;
                write(&ca_key, &key, 0o600)?;
                write(&ca, &cert, 0o644)?;
                (cert, key, true)
            }
            (cert, _) => {
                let missing = if cert.is_none() { &ca } else { &ca_key };
                return Err(format!(
                    "{} is missing beside the other half of the demo's CA; remove {} to have \
                     a new CA and new certificates made",
                    missing.display(),
                    dir.display()
                ));
            }
        };
        let hosts: Vec<String> = HOSTS.iter().map(|h| h.to_string()).collect();
        let mut nodes = Vec::new();
        let mut signed = Vec::new();
        for &id in ids {
            let files = TlsFiles {
                cert: dir.join(format!("node-{id}.pem")),
                key: dir.join(format!("node-{id}-key.pem")),
                ca: ca.clone(),
            };
            if ca_new || !files.cert.exists() || !files.key.exists() {
                let (chain, key) = make_node(&ca_pem, &ca_key_pem, id, &hosts, NODE_DAYS)?;
                write(&files.key, &key, 0o600)?;
                write(&files.cert, &chain, 0o644)?;
                signed.push(id.to_string());
            }
            nodes.push(files);
        }
        let made = match (ca_new, signed.is_empty()) {
            (true, _) => format!(
                "tls: made a CA and a certificate per node in {}",
                dir.display()
            ),
            (false, true) => format!(
                "tls: the CA and certificates of an earlier run, in {}",
                dir.display()
            ),
            (false, false) => format!(
                "tls: the CA of an earlier run, in {}; signed a new certificate for {} {}",
                dir.display(),
                if signed.len() == 1 { "node" } else { "nodes" },
                signed.join(", ")
            ),
        };
        Ok(Certs { ca, nodes, made })
    }
}

/// The file's text, or `None` when there is no such file.
fn read(path: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes a file whole, with permissions `mode`, replacing any earlier one
/// by a rename (see `cert::write_file`).
fn write(path: &Path, contents: &str, mode: u32) -> Result<(), String> {
    crate::cli::cert::write_file(path, contents, mode, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tally-demo-certs-{tag}-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir(&dir).expect("create a scratch folder");
        dir
    }

    #[test]
    fn makes_the_files_then_reuses_them_and_signs_only_what_is_missing() {
        let data = scratch("reuse");
        let first = Certs::prepare(&data, &[1, 2]).expect("make");
        assert!(first.made.contains("made a CA"), "{}", first.made);
        let tls = data.join("tls");
        assert_eq!(first.ca, tls.join("ca.pem"));
        assert_eq!(first.nodes[1].cert, tls.join("node-2.pem"));
        assert_eq!(first.nodes[1].key, tls.join("node-2-key.pem"));
        for key in ["ca-key.pem", "node-1-key.pem", "node-2-key.pem"] {
            assert_eq!(mode(&tls.join(key)), 0o600, "{key}");
        }
        assert_eq!(mode(&tls.join("node-1.pem")), 0o644);
        let before = std::fs::read(tls.join("node-1.pem")).expect("read");

        let again = Certs::prepare(&data, &[1, 2, 3]).expect("reuse");
        assert!(
            again.made.contains("signed a new certificate for node 3"),
            "{}",
            again.made
        );
        assert_eq!(std::fs::read(tls.join("node-1.pem")).expect("read"), before);
        // The new certificate chains to the same CA: it ends with the CA's.
        let ca = std::fs::read_to_string(tls.join("ca.pem")).expect("read");
        let chain = std::fs::read_to_string(tls.join("node-3.pem")).expect("read");
        assert!(chain.trim_end().ends_with(ca.trim_end()));
        let files: Vec<_> = std::fs::read_dir(&tls)
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".new"))
            .collect();
        assert!(files.is_empty(), "{files:?}");

        std::fs::remove_file(tls.join("ca-key.pem")).expect("remove");
        let err = Certs::prepare(&data, &[1])
            .err()
            .expect("a CA without its key");
        assert!(err.contains("ca-key.pem is missing"), "{err}");
        std::fs::remove_dir_all(&data).expect("clean up");
    }
}
