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

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use hyper::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
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

/// The certificate a peer presented on a connection: on the server side in
/// each request's extensions, on the client side in each response's.
#[derive(Clone, Debug)]
pub struct PeerCert(pub Arc<CertificateDer<'static>>);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {why}")]
    Read { path: PathBuf, why: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("the CA bundle {path} is unusable: {why}")]
    BadCa { path: PathBuf, why: String },
    #[error("the certificate {cert} and key {key} do not make a TLS config: {why}")]
    BadPair {
        cert: PathBuf,
        key: PathBuf,
        why: String,
    },
}

/// The files of a node's TLS: its certificate chain, its key, and the CA
/// bundle its peers' certificates (and its own) are issued by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_err(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::Read {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// Every certificate of a PEM file, in order.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The CA bundle as trust anchors.
fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

const ALPN_HTTP1: &[u8] = b"http/1.1";

/// A client config that trusts the CA bundle at `ca` and presents no
/// certificate: what the command-line client uses with `--cacert`.
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::BadCa {
            path: ca.to_path_buf(),
            why: e.to_string(),
        })?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
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

/// Where a [`Connector`] takes its client config from.
#[derive(Clone, Debug)]
pub enum ClientTls {
    /// Plain TCP: `http://` only.
    None,
    /// A node's own, reloaded with its files.
    Node(Arc<Tls>),
    /// A fixed one (the command-line client's `--cacert`).
    Fixed(Arc<ClientConfig>),
}

impl ClientTls {
    fn config(&self) -> Option<Arc<ClientConfig>> {
        match self {
            ClientTls::None => None,
            ClientTls::Node(tls) => Some(tls.client_config()),
            ClientTls::Fixed(c) => Some(c.clone()),
        }
    }

    pub fn is_some(&self) -> bool {
        !matches!(self, ClientTls::None)
    }
}

/// Opens TCP connections for hyper's client, and wraps `https://` ones in
/// TLS, keeping the certificate the server presented for its answers
/// ([`PeerCert`] in each response's extensions).
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: ClientTls,
}

impl Connector {
    pub fn new(mut http: HttpConnector, tls: ClientTls) -> Connector {
        http.enforce_http(false);
        Connector { http, tls }
    }
}

/// A connection a [`Connector`] opened.
pub enum MaybeTls {
    Plain(TokioIo<TcpStream>),
    Tls(
        Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>,
        PeerCert,
    ),
}

impl tower_service::Service<Uri> for Connector {
    type Response = MaybeTls;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<MaybeTls, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let https = uri.scheme_str() == Some("https");
        let config = self.tls.config();
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let connecting = self.http.call(uri);
        Box::pin(async move {
            let tcp = connecting.await?;
            if !https {
                return Ok(MaybeTls::Plain(tcp));
            }
            let config = config.ok_or("https:// needs a CA bundle (--cacert or --tls-ca)")?;
            let name = ServerName::try_from(host)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp.into_inner())
                .await?;
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or("the server presented no certificate")?
                .clone()
                .into_owned();
            Ok(MaybeTls::Tls(
                Box::new(TokioIo::new(tls)),
                PeerCert(Arc::new(cert)),
            ))
        })
    }
}

impl Connection for MaybeTls {
    fn connected(&self) -> Connected {
        match self {
            MaybeTls::Plain(s) => s.connected(),
            MaybeTls::Tls(s, cert) => s.inner().get_ref().0.connected().extra(cert.clone()),
        }
    }
}

impl Read for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
