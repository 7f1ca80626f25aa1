//! TLS for the listener and for calls to peers (rustls with the `ring`
//! provider).
//!
//! A node's certificate names it twice: by the addresses it is reached at
//! (IP or DNS subject alternative names, checked as usual by whoever
//! connects), and by its node id, as the DNS name [`identity_name`]. The
//! second is what a peer proves when it calls: a node answers an internal
//! message only from a caller whose certificate, issued by the cluster's
//! CA, names the node id the message claims to come from ([`speaks_for`]);
//! and it believes an answer only from a peer whose certificate names the
//! node id the answer claims.
//!
//! The listener asks every client for a certificate but does not require
//! one: a connection that presents none is a client's, and can never reach
//! the internal routes. One that presents a certificate is verified against
//! the CA bundle during the handshake (a certificate of another CA ends the
//! handshake).
//!
//! The files are read again when they change (checked every few seconds)
//! or on SIGHUP. New connections use the new certificates; connections in
//! use keep theirs. A bundle of several CAs is trusted as a whole, which is
//! how a CA is rotated without an outage (see the README).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ServerConfig};
pub use tally_client::tls::{
    ALPN_HTTP1, ClientTls, ConfigSource, Connector, MaybeTls, PeerCert, TlsError, client_config,
};
use tally_client::tls::{certificates, provider, read_err, roots};
use tracing::{info, warn};

/// How often the certificate files are checked for a change.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// The DNS name a node's certificate carries to prove its node id.
pub fn identity_name(node: u64) -> String {
    format!("node-{node}.tally")
}

/// Whether `cert` (already verified against the CA) names node `node`.
pub fn speaks_for(cert: &CertificateDer<'_>, node: u64) -> bool {
    let Ok(name) = ServerName::try_from(identity_name(node)) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
}

/// Plain HTTP beside TLS on a node that has TLS: how TLS is turned on in a
/// running cluster one node at a time (see the README). A node with TLS and
/// plain HTTP is only as safe as plain HTTP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PlainHttp {
    /// TLS only (once every node has TLS).
    #[default]
    Off,
    /// Plain HTTP accepted too; peers called over TLS.
    Accept,
    /// Plain HTTP accepted too, and peers called over plain HTTP (while
    /// some have no TLS yet).
    Call,
}

impl PlainHttp {
    /// Whether a node with TLS also accepts plain HTTP.
    pub fn accepted(self) -> bool {
        self != PlainHttp::Off
    }

    /// Whether a node with TLS calls its peers over TLS.
    pub fn calls_tls(self) -> bool {
        self != PlainHttp::Call
    }
}

/// The first byte of a TLS connection (a handshake record): how a listener
/// that also takes plain HTTP tells the two apart.
pub const HANDSHAKE_RECORD: u8 = 0x16;

/// The files of a node's TLS: its certificate chain, its key, and the CA
/// bundle its peers' certificates (and its own) are issued by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// What one reading of the files made.
struct Loaded {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    /// (modification time, length) of each file when it was read.
    stamps: Vec<Option<(SystemTime, u64)>>,
}

/// A node's TLS: both configs, made again when the files change.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<Loaded>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// Reads the files; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, TlsError> {
        let loaded = Self::read(&files)?;
        Ok(Arc::new(Tls {
            files,
            current: RwLock::new(Arc::new(loaded)),
        }))
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    fn stamps(files: &TlsFiles) -> Vec<Option<(SystemTime, u64)>> {
        [&files.cert, &files.key, &files.ca]
            .iter()
            .map(|p| {
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok()?, m.len()))
            })
            .collect()
    }

    fn read(files: &TlsFiles) -> Result<Loaded, TlsError> {
        let stamps = Self::stamps(files);
        let chain = certificates(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| read_err(&files.key, e))?;
        let roots = roots(&files.ca)?;
        let bad_pair = |why: String| TlsError::BadPair {
            cert: files.cert.clone(),
            key: files.key.clone(),
            why,
        };
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::BadCa {
                    path: files.ca.clone(),
                    why: e.to_string(),
                })?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad_pair(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| bad_pair(e.to_string()))?;
        server.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad_pair(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| bad_pair(e.to_string()))?;
        client.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        Ok(Loaded {
            server: Arc::new(server),
            client: Arc::new(client),
            stamps,
        })
    }

    fn now(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The config new connections to this node are accepted with.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.now().server.clone()
    }

    /// The config this node calls its peers with.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.now().client.clone()
    }

    /// Reads the files again; on an error the configs in use stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = Self::read(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        Ok(())
    }

    /// Reloads when a file changed since it was read; returns whether it
    /// did. A file caught half-written fails to load and is tried again at
    /// the next check (its stamp is not taken as read).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        if Self::stamps(&self.files) == self.now().stamps {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// Checks the files every `interval` until `stop`, and reloads them on
    /// a change; logs what it did.
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            self.reload_logged("the certificate files changed");
        }
    }

    /// Reloads if anything changed, and logs the outcome; `why` says what
    /// asked for it.
    pub fn reload_logged(&self, why: &str) {
        match self.reload_if_changed() {
            Ok(true) => info!(cert = %self.files.cert.display(), why, "TLS certificates reloaded"),
            Ok(false) => {}
            Err(e) => warn!(error = %e, why, "TLS certificates not reloaded; the ones in use stay"),
        }
    }
}

impl ConfigSource for Tls {
    fn client_config(&self) -> Arc<ClientConfig> {
        Tls::client_config(self)
    }
}
