//! How this node calls another: every request carries this node's identity
//! and membership, every answer is checked for the protocol version, and
//! any membership an answer carries is merged into this node's (durably,
//! through the storage writer) before the answer is used.
//!
//! Replication, membership and consistent reads all call peers through a
//! [`Messenger`], so none of them needs the node itself.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::cluster::{Actor, Membership};
use crate::proto::{
    PROTOCOL_JSON, PROTOCOL_VERSION, Request, RequestEnvelope, ResponseEnvelope, speaks,
};
use crate::storage::{ReplicaId, Store, StoreError};
use crate::transport::{CallError, Transport};

/// Cheap to clone.
#[derive(Clone)]
pub struct Messenger {
    transport: Arc<dyn Transport>,
    store: Store,
    identity: ReplicaId,
}

impl Messenger {
    pub fn new(transport: Arc<dyn Transport>, store: Store) -> Self {
        let identity = store.identity();
        Messenger {
            transport,
            store,
            identity,
        }
    }

    /// A request from this node, carrying its current membership.
    pub fn envelope(&self, req: Request) -> RequestEnvelope {
        RequestEnvelope {
            v: PROTOCOL_VERSION,
            from: self.identity,
            membership: self.store.membership(),
            req,
        }
    }

    /// Calls `to` with at most `timeout`, and adopts any newer membership
    /// its answer carries.
    pub async fn call(
        &self,
        to: &Actor,
        req: Request,
        timeout: Duration,
    ) -> Result<ResponseEnvelope, CallError> {
        let resp = self.call_raw(to, &self.envelope(req), timeout).await?;
        if let Some(theirs) = &resp.membership {
            if let Err(e) = self
                .store
                .with_membership(|ours| theirs.check_received(ours))
            {
                return Err(CallError::Protocol(format!(
                    "peer sent an invalid config: {e}"
                )));
            }
            if let Err(e) = self.adopt(theirs.clone()).await {
                warn!(error = %e, "could not store a config learned from a peer");
            }
        }
        Ok(resp)
    }

    /// Calls `to` with a ready envelope; checks only the protocol version.
    pub async fn call_raw(
        &self,
        to: &Actor,
        env: &RequestEnvelope,
        timeout: Duration,
    ) -> Result<ResponseEnvelope, CallError> {
        let resp = self.transport.call(to, env, timeout).await?;
        if !speaks(resp.v) {
            return Err(CallError::Protocol(format!(
                "peer speaks protocol {}, this node {PROTOCOL_JSON} and {PROTOCOL_VERSION}",
                resp.v
            )));
        }
        Ok(resp)
    }

    /// Merges a membership heard from a peer; returns whether ours changed.
    pub async fn adopt(&self, theirs: Membership) -> Result<bool, StoreError> {
        if self.store.membership().merged_with(&theirs).is_none() {
            return Ok(false);
        }
        let adopted = self
            .store
            .update_membership(move |ours| ours.merged_with(&theirs))
            .await?;
        if let Some(m) = &adopted {
            log_adopted(m);
        }
        Ok(adopted.is_some())
    }
}

/// One line per membership change.
pub fn log_adopted(m: &Membership) {
    info!(
        version = m.config.stamp.version,
        origin = m.config.stamp.origin,
        actors = ?m.config.actors.iter().map(Actor::as_str).collect::<Vec<_>>(),
        leaving = ?m.leavers().iter().filter(|(_, done)| !done).map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
        "config applied"
    );
}
