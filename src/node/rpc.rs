//! Answers one peer's call: adopt the membership it carries if that changes
//! ours, do what it asks, and send our membership back when it would change
//! the caller's.

use tracing::warn;

use super::Node;
use crate::crdt::GCounter;
use crate::input::validate_name;
use crate::proto::{
    MAX_COMPONENTS_PER_PUSH, MAX_NAMES_PER_MESSAGE, PROTOCOL_VERSION, ReplicaId, Request,
    RequestEnvelope, Response, ResponseEnvelope, WireCounter,
};
use crate::storage::{Merge, StoreError};

/// Errors answering a peer.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Node {
    /// Answers a peer's call.
    pub async fn handle_rpc(&self, env: RequestEnvelope) -> Result<ResponseEnvelope, RpcError> {
        if env.v != PROTOCOL_VERSION {
            return Err(RpcError::BadRequest(format!(
                "protocol {} is not supported; this node speaks {PROTOCOL_VERSION}",
                env.v
            )));
        }
        let theirs = env.membership;
        // Most messages carry the membership this node already has: only one
        // that changes ours is validated and stored.
        let changes_ours = self.store.with_membership(|ours| {
            ours.merged_with(&theirs)
                .map(|_| theirs.check_received(ours))
        });
        if let Some(checked) = changes_ours {
            checked.map_err(|e| RpcError::BadRequest(e.to_string()))?;
            if let Err(e) = self.messenger.adopt(theirs.clone()).await {
                // A hand-off is confirmed only by nodes at the leaver's
                // config, and a poster counts only nodes that stored its
                // config: refuse those two from an older one.
                if matches!(env.req, Request::Mark { .. } | Request::Config) {
                    return Err(e.into());
                }
                warn!(error = %e, "could not store a config learned from a peer");
            }
        }
        let resp = match env.req {
            Request::Hello | Request::Config => Response::Ack,
            Request::Push { counters } => self.on_push(counters).await?,
            Request::Pull {
                incarnation,
                since,
                limit,
            } => self.on_pull(env.from, incarnation, since, limit).await?,
            Request::Read { name } => {
                validate_name(&name).map_err(|e| RpcError::BadRequest(e.to_string()))?;
                Response::Counter {
                    components: (&self.store.counter(&name).unwrap_or_default()).into(),
                }
            }
            Request::ReadMany { names } => {
                if names.len() > MAX_NAMES_PER_MESSAGE {
                    return Err(RpcError::BadRequest(format!(
                        "at most {MAX_NAMES_PER_MESSAGE} names per message"
                    )));
                }
                for name in &names {
                    validate_name(name).map_err(|e| RpcError::BadRequest(e.to_string()))?;
                }
                Response::Counters {
                    counters: names
                        .iter()
                        .map(|name| (&self.store.counter(name).unwrap_or_default()).into())
                        .collect(),
                }
            }
            Request::Mark { incarnation } => Response::Mark {
                seq: self.store.mark(incarnation).await?,
            },
        };
        // Ours travels back only when it would change the caller's.
        let membership = self
            .store
            .with_membership(|ours| theirs.merged_with(ours).is_some().then(|| ours.clone()));
        Ok(ResponseEnvelope {
            v: PROTOCOL_VERSION,
            from: self.identity,
            membership,
            resp,
        })
    }
}

impl Node {
    /// Counters whose own component changed at the sender.
    async fn on_push(&self, counters: Vec<WireCounter>) -> Result<Response, RpcError> {
        let counters = validate_counters(counters)?;
        if let Some((name, claimed, held)) = self.store.raises_own(&counters) {
            return Err(RpcError::BadRequest(format!(
                "a push may not raise this node's own component of {name:?} \
                 (it claims {claimed}, this node counted {held})"
            )));
        }
        self.store
            .merge(Merge {
                counters,
                mark: None,
            })
            .await?;
        Ok(Response::Ack)
    }

    /// Anti-entropy: our changes after `since`, if the asker knows us as
    /// `incarnation`.
    async fn on_pull(
        &self,
        from: ReplicaId,
        incarnation: u64,
        since: u64,
        limit: usize,
    ) -> Result<Response, RpcError> {
        if incarnation != self.identity.incarnation {
            // The asker's mark belongs to another incarnation: tell it who we are first.
            return Ok(Response::Changes {
                counters: Vec::new(),
                next: 0,
                head: 0,
                more: true,
            });
        }
        // The asker has durably merged our changes up to `since`: no
        // further than our head, or it could fake a replica's
        // acknowledgement of increments not made yet.
        let head = self.store.head();
        if since > head {
            return Err(RpcError::BadRequest(format!(
                "a pull since {since} is past this node's head ({head})"
            )));
        }
        self.peers.note_pulled(from, since);
        let limit = limit.clamp(1, MAX_NAMES_PER_MESSAGE);
        let changes = match self.store.changes_since(since, limit).await {
            Ok(changes) => changes,
            Err(e) if e.is_transient() => {
                // Storage is failing (and being reopened): what this node
                // holds must still reach its peers, or a disk that fails
                // and then is lost would take it along. Memory holds every
                // counter, but not which changed after `since`: send them
                // all (a page of them), leaving the asker's mark where it is.
                tracing::debug!(error = %e, "answering a pull from memory while storage fails");
                return Ok(Response::Changes {
                    counters: self
                        .store
                        .list("", None, limit)
                        .into_iter()
                        .map(|(n, c)| WireCounter::new(n, &c))
                        .collect(),
                    next: since,
                    head: self.store.head(),
                    more: false,
                });
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Response::Changes {
            counters: changes
                .counters
                .into_iter()
                .map(|(n, c)| WireCounter::new(n, &c))
                .collect(),
            next: changes.next,
            head: changes.head,
            more: changes.more,
        })
    }
}

fn validate_counters(counters: Vec<WireCounter>) -> Result<Vec<(String, GCounter)>, RpcError> {
    if counters.len() > MAX_NAMES_PER_MESSAGE {
        return Err(RpcError::BadRequest(format!(
            "at most {MAX_NAMES_PER_MESSAGE} counters per message"
        )));
    }
    // Checked while decoding too (see `proto`); here for every other way
    // a message reaches this node.
    let components: usize = counters.iter().map(|c| c.components.len()).sum();
    if components > MAX_COMPONENTS_PER_PUSH {
        return Err(RpcError::BadRequest(format!(
            "a push carries at most {MAX_COMPONENTS_PER_PUSH} components, not {components}"
        )));
    }
    counters
        .into_iter()
        .map(|c| {
            validate_name(&c.name).map_err(|e| RpcError::BadRequest(e.to_string()))?;
            Ok(c.into_parts())
        })
        .collect()
}
