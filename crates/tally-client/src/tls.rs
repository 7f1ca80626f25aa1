//! TLS on the client side (rustls with the `ring` provider): the
//! connector that opens `http://` and `https://` connections for hyper's
//! client, where its config comes from, and a config that trusts a CA
//! bundle. A tally node calls its peers through the same connector, with
//! its own certificate and a config it reloads when its files change.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;

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

/// The crypto provider of every TLS config tally makes.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn read_err(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::Read {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// Every certificate of a PEM file, in order.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
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
pub fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

/// The one protocol tally speaks over TLS.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

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

/// A client config that may change between connections.
pub trait ConfigSource: Send + Sync + std::fmt::Debug {
    /// The config for the next connection.
    fn client_config(&self) -> Arc<ClientConfig>;
}

/// Where a [`Connector`] takes its client config from.
#[derive(Clone, Debug)]
pub enum ClientTls {
    /// Plain TCP: `http://` only.
    None,
    /// One that changes: a node's own, reloaded with its files.
    Reloading(Arc<dyn ConfigSource>),
    /// A fixed one (the command-line client's `--cacert`).
    Fixed(Arc<ClientConfig>),
}

impl ClientTls {
    fn config(&self) -> Option<Arc<ClientConfig>> {
        match self {
            ClientTls::None => None,
            ClientTls::Reloading(source) => Some(source.client_config()),
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
            let config =
                config.ok_or("https:// needs a CA bundle to trust (--cacert, --tls-ca)")?;
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
