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

use crate::node::{Node, Settings, StartError};
use crate::server::Limits;
use crate::transport::HttpTransport;

/// Runs a node until `stop` resolves: listens, serves, then shuts down in order.
pub async fn run(
    mut settings: Settings,
    limits: Limits,
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
