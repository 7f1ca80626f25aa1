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

use crate::node::{Budgets, Node, Settings, StartError};
use crate::server::Limits;
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
    if settings.secret.is_none() {
        warn!(
            "no cluster secret set: anyone who can reach this port can change config and inject counts"
        );
    }
    let transport = Arc::new(HttpTransport::new(
        settings.connect_timeout,
        settings.secret.clone(),
        settings.metrics.clone(),
    ));
    let node = Node::start(settings, transport)?;
    info!(listen = %node.settings().listen, "listening");
    let serving = format!("serving on {}", node.settings().listen);
    notify_systemd(&[NotifyState::Ready, NotifyState::Status(&serving)]);
    let app = crate::api::router(node.clone());
    let token = node.shutdown_token();
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
    )
    .await;
    node.shutdown().await;
    if let Some(reason) = node.fatal() {
        return Err(StartError::Fatal(reason));
    }
    info!("stopped");
    Ok(())
}

/// Tells systemd about the service's state, when it runs under systemd.
fn notify_systemd(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        warn!(error = %e, "cannot notify systemd");
    }
}
