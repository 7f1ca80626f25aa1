//! One node process: binds the listener, builds the HTTP transport, starts
//! the node, serves the API on the listener until asked to stop, then shuts
//! down in order (the server drains first, then the node). The only module
//! that knows every layer; the binary's `cli` calls it.
//!
//! Run by systemd with `Type=notify` (see `docs/tally.service`), it reports
//! `READY=1` once it listens and `STOPPING=1` when asked to stop; without
//! `NOTIFY_SOCKET` in its environment it sends nothing.
//!
//! It also gathers, in [`defaults`], every default a node's flags show, so
//! the command line reads them in one place, and offers `tally check` of a
//! stopped node's folder ([`check_folder`]): the command line knows no
//! layer below this one for a node's settings and files.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use sd_notify::NotifyState;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::Access;
use crate::auth::{Audit, Event, SharedTokens};
use crate::metrics::Metrics;
use crate::node::{Budgets, Deps, Node, Settings, StartError, WallClock};
use crate::server::Limits;
use crate::storage::StoreError;
use crate::tls::{ClientTls, Tls};
use crate::transport::HttpTransport;

pub use crate::storage::check::CheckReport;

/// Every default a node's flags show, in one place for the command line.
/// Each is defined once, next to the code that uses it: the node's in
/// `node::defaults`, the server's and the store's beside them.
pub mod defaults {
    pub use crate::node::defaults::*;
    pub use crate::server::{
        DEFAULT_HEADER_TIMEOUT as HEADER_TIMEOUT, DEFAULT_MAX_CONNECTIONS as MAX_CONNECTIONS,
        DEFAULT_MAX_PEER_CONNECTIONS as MAX_PEER_CONNECTIONS,
        DEFAULT_WRITE_TIMEOUT as WRITE_TIMEOUT,
    };
    pub use crate::storage::{
        DEFAULT_IDEMPOTENCY_BYTES as IDEMPOTENCY_BYTES,
        DEFAULT_IDEMPOTENCY_KEYS as IDEMPOTENCY_KEYS,
        DEFAULT_IDEMPOTENCY_WINDOW as IDEMPOTENCY_WINDOW,
        DEFAULT_STORAGE_TIMEOUT as STORAGE_TIMEOUT,
    };
}

/// Why a data folder could not be checked.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct CheckError(StoreError);

impl CheckError {
    /// A running node holds the folder (it checks its own files as it runs).
    pub fn in_use(&self) -> bool {
        matches!(self.0, StoreError::Locked(_))
    }
}

/// `tally check`: verifies a stopped node's data folder, changing nothing.
pub fn check_folder(dir: &Path) -> Result<CheckReport, CheckError> {
    crate::storage::check::check(dir).map_err(CheckError)
}

/// Runs a node until `stop` resolves: listens, serves, then shuts down in order.
/// Builds what the node is handed beside its settings: metrics, the HTTP
/// transport; and what the API is handed beside the node: the tokens loaded
/// from `settings.tokens_file`, an audit log, how to call other nodes.
pub async fn run(
    mut settings: Settings,
    mut limits: Limits,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let listener =
        TcpListener::bind(settings.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: settings.listen,
                source,
            })?;
    settings.listen = listener.local_addr().map_err(|source| StartError::Listen {
        addr: settings.listen,
        source,
    })?;
    let open_files = crate::server::raise_open_files_limit();
    if let Some(files) = open_files {
        let asked = limits.clone();
        if limits.fit_to(files) {
            warn!(
                open_files = files,
                asked_clients = asked.max_connections,
                asked_peers = asked.max_peer_connections,
                clients = limits.max_connections,
                peers = limits.max_peer_connections,
                pending = limits.max_pending_connections,
                "the connection budgets do not fit the open-files limit; shrunk to fit"
            );
        }
    }
    let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    settings.budgets = Budgets {
        max_connections: n(limits.max_connections),
        max_peer_connections: n(limits.max_peer_connections),
        max_pending_connections: n(limits.max_pending_connections),
        open_files_limit: open_files.unwrap_or(0),
        write_timeout_secs: limits.write_timeout.as_secs_f64(),
    };
    let tls = match &settings.tls {
        Some(files) => {
            Some(Tls::load(files.clone()).map_err(|e| StartError::Security(format!("TLS: {e}")))?)
        }
        None => None,
    };
    let mut tokens = None;
    if let Some(path) = &settings.tokens_file {
        if tls.is_none() && settings.secret.is_none() {
            return Err(StartError::Security(
                "--tokens-file needs the internal route closed to clients too (--tls-* or a \
                 cluster secret): otherwise a forged internal message is a write without a token"
                    .into(),
            ));
        }
        let loaded = SharedTokens::load(path)
            .map_err(|e| StartError::Security(format!("client tokens: {e}")))?;
        info!(tokens = loaded.current().len(), file = %path.display(), "client tokens in force");
        tokens = Some(Arc::new(loaded));
    }
    match (&tls, &tokens, &settings.secret) {
        (None, None, None) => warn!(
            "open mode (no TLS, no tokens, no cluster secret): anyone who can reach this port \
             can read, increment, change the config and send internal messages"
        ),
        (None, None, Some(_)) => warn!(
            "no TLS and no client tokens: /config and internal routes need the cluster secret, \
             which travels in clear text; counters are open to anyone who can reach this port"
        ),
        (Some(_), None, _) => warn!(
            "TLS without client tokens: peers prove who they are, but counters and /config \
             are open to any client that can reach this port"
        ),
        (None, Some(_), _) => {
            warn!("client tokens without TLS: tokens and the secret travel in clear text")
        }
        (Some(_), Some(_), _) => info!("TLS with mutual TLS between peers, and client tokens"),
    }
    settings.peer_tls = tls.is_some() && !settings.plain_http.accepted();
    let client_tls = match &tls {
        Some(tls) if settings.plain_http.calls_tls() => ClientTls::Reloading(tls.clone()),
        _ => ClientTls::None,
    };
    if tls.is_some() && settings.plain_http.accepted() {
        warn!(
            plain_http = ?settings.plain_http,
            "TLS and plain HTTP side by side (--plain-http): only as safe as plain HTTP; \
             turn it off once every node has TLS"
        );
    }
    let metrics = Metrics::default();
    metrics.watch_folder(&settings.data_dir);
    let transport = Arc::new(HttpTransport::new(
        settings.connect_timeout,
        settings.secret.clone(),
        metrics.clone(),
        client_tls.clone(),
    ));
    let deps = Deps {
        metrics,
        clock: WallClock::default(),
        transport,
        engine: None,
    };
    let node = Node::start(settings, deps)?;
    let access = Arc::new(Access {
        tokens,
        audit: Arc::new(Audit::default()),
        client_tls,
    });
    info!(listen = %node.settings().listen, "listening");
    let serving = format!("serving on {}", node.settings().listen);
    notify_systemd(&[NotifyState::Ready, NotifyState::Status(&serving)]);
    let app = crate::api::router(node.clone(), access.clone());
    let token = node.shutdown_token();
    if let Some(tls) = &tls {
        tokio::spawn(tls.clone().watch(crate::tls::WATCH_INTERVAL, token.clone()));
    }
    reload_on_sighup(
        tls.clone(),
        access.tokens.clone(),
        access.audit.clone(),
        token.clone(),
    );
    tokio::spawn(flush_audit(access.audit.clone(), token.clone()));
    let stop_serving = CancellationToken::new();
    let trigger = stop_serving.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop => {}
            _ = token.cancelled() => {}
        }
        notify_systemd(&[NotifyState::Stopping]);
        trigger.cancel();
    });
    crate::server::serve(
        listener,
        app,
        limits,
        node.metrics(),
        stop_serving,
        node.settings().shutdown_timeout,
        tls.map(|tls| (tls, node.settings().plain_http.accepted())),
    )
    .await;
    node.shutdown().await;
    if let Some(reason) = node.fatal() {
        return Err(StartError::Fatal(reason));
    }
    info!("stopped");
    Ok(())
}

/// Reads the certificate files and the tokens file again on every SIGHUP,
/// until `stop`. A file that does not load leaves the one in force.
fn reload_on_sighup(
    tls: Option<Arc<Tls>>,
    tokens: Option<Arc<SharedTokens>>,
    audit: Arc<Audit>,
    stop: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot install the SIGHUP handler; files are reloaded only when they change");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                got = hangups.recv() => if got.is_none() { return },
            }
            info!("SIGHUP: reloading");
            if let Some(tokens) = &tokens {
                let now = std::time::Instant::now();
                match tokens.reload() {
                    Ok(n) => audit.record(&Event::TokensReloaded { tokens: n }, now),
                    Err(e) => audit.record(&Event::ReloadFailed { error: &e }, now),
                };
            }
            if let Some(tls) = &tls {
                match tls.reload() {
                    Ok(()) => {
                        info!(cert = %tls.files().cert.display(), "TLS certificates reloaded")
                    }
                    Err(e) => {
                        warn!(error = %e, "TLS certificates not reloaded; the ones in use stay")
                    }
                }
            }
        }
    });
}

/// Reports the audit lines the rate limit dropped, once a second.
async fn flush_audit(audit: Arc<Audit>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => audit.flush(std::time::Instant::now()),
        }
    }
}

/// Tells systemd about the service's state, when it runs under systemd.
fn notify_systemd(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        warn!(error = %e, "cannot notify systemd");
    }
}
