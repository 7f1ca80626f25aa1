//! One node process: binds the listener, builds the HTTP transport, starts
//! the node, serves the API on the listener until asked to stop, then shuts
//! down in order (the server drains first, then the node). The only module
//! that knows every layer; the binary's `cli` calls it.
//!
//! Run by systemd with `Type=notify` (see `docs/tally.service`), it reports
//! `READY=1` once it listens and `STOPPING=1` when asked to stop; without
//! `NOTIFY_SOCKET` in its environment it sends nothing.

use std::future::Future;
use std::sync::Arc;

use sd_notify::NotifyState;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::Event;
use crate::node::{Budgets, Node, Settings, StartError};
use crate::server::Limits;
use crate::tls::{ClientTls, Tls};
use crate::transport::HttpTransport;

/// Runs a node until `stop` resolves: listens, serves, then shuts down in order.
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
    if let Some(path) = &settings.tokens_file {
        if tls.is_none() && settings.secret.is_none() {
            return Err(StartError::Security(
                "--tokens-file needs the internal route closed to clients too (--tls-* or a \
                 cluster secret): otherwise a forged internal message is a write without a token"
                    .into(),
            ));
        }
        let tokens = crate::auth::SharedTokens::load(path)
            .map_err(|e| StartError::Security(format!("client tokens: {e}")))?;
        info!(tokens = tokens.current().len(), file = %path.display(), "client tokens in force");
        settings.tokens = Some(Arc::new(tokens));
    }
    match (&tls, &settings.tokens, &settings.secret) {
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
        Some(tls) if settings.plain_http.calls_tls() => ClientTls::Node(tls.clone()),
        _ => ClientTls::None,
    };
    if tls.is_some() && settings.plain_http.accepted() {
        warn!(
            plain_http = ?settings.plain_http,
            "TLS and plain HTTP side by side (--plain-http): only as safe as plain HTTP; \
             turn it off once every node has TLS"
        );
    }
    settings.client_tls = client_tls.clone();
    let transport = Arc::new(HttpTransport::new(
        settings.connect_timeout,
        settings.secret.clone(),
        settings.metrics.clone(),
        client_tls,
    ));
    let node = Node::start(settings, transport)?;
    info!(listen = %node.settings().listen, "listening");
    let serving = format!("serving on {}", node.settings().listen);
    notify_systemd(&[NotifyState::Ready, NotifyState::Status(&serving)]);
    let app = crate::api::router(node.clone());
    let token = node.shutdown_token();
    if let Some(tls) = &tls {
        tokio::spawn(tls.clone().watch(crate::tls::WATCH_INTERVAL, token.clone()));
    }
    reload_on_sighup(tls.clone(), node.settings().clone(), token.clone());
    tokio::spawn(flush_audit(node.settings().audit.clone(), token.clone()));
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
        &node.settings().metrics,
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
fn reload_on_sighup(tls: Option<Arc<Tls>>, settings: Settings, stop: CancellationToken) {
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
            if let Some(tokens) = &settings.tokens {
                let now = std::time::Instant::now();
                match tokens.reload() {
                    Ok(n) => settings
                        .audit
                        .record(&Event::TokensReloaded { tokens: n }, now),
                    Err(e) => settings
                        .audit
                        .record(&Event::ReloadFailed { error: &e }, now),
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
async fn flush_audit(audit: Arc<crate::auth::Audit>, stop: CancellationToken) {
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
