//! The answering half of the internal protocol: a peer's call is checked,
//! the membership it carries adopted when it changes ours, and what it asks
//! done: merge a push, page our changes for a pull (the other half of
//! anti-entropy, in `mod.rs`), read counters for a consistent read, say how
//! far a leaver's changes are merged. Ours travels back only when it would
//! change the caller's.
//!
//! Nothing a message claims is believed before it is checked (G11): names
//! are valid, sizes bounded, no count raises this node's own component, no
//! pull claims to hold more of our changes than we made.

use tracing::warn;

use super::Replicator;
use super::error::AnswerError;
use crate::crdt::GCounter;
use crate::input::validate_name;
use crate::proto::{
    MAX_COMPONENTS_PER_PUSH, MAX_LIST, MAX_NAMES_PER_MESSAGE, PROTOCOL_VERSION, ReplicaId, Request,
    RequestEnvelope, Response, ResponseEnvelope, WireCounter, speaks,
};
use crate::storage::Merge;

impl Replicator {
    /// Answers a peer's call.
    pub async fn answer(&self, env: RequestEnvelope) -> Result<ResponseEnvelope, AnswerError> {
        if !speaks(env.v) {
            return Err(AnswerError::Protocol {
                got: env.v,
                speaks: PROTOCOL_VERSION,
            });
        }
        let v = env.v;
        let store = &self.ctx.store;
        let theirs = env.membership;
        // Most messages carry the membership this node already has: only one
        // that changes ours is validated and stored.
        let changes_ours = store.with_membership(|ours| {
            ours.merged_with(&theirs)
                .map(|_| theirs.check_received(ours))
        });
        if let Some(checked) = changes_ours {
            checked.map_err(AnswerError::Membership)?;
            if let Err(e) = self.ctx.messenger.adopt(theirs.clone()).await {
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
            } => {
                self.on_pull(env.from, incarnation, since, since, limit)
                    .await?
            }
            Request::PullAhead {
                incarnation,
                since,
                start,
                limit,
            } => {
                self.on_pull(env.from, incarnation, since, start, limit)
                    .await?
            }
            Request::Read { name } => {
                validate_name(&name)?;
                Response::Counter {
                    components: (&store.counter(&name).unwrap_or_default()).into(),
                }
            }
            Request::ReadMany { names } => {
                if names.len() > MAX_NAMES_PER_MESSAGE {
                    return Err(AnswerError::TooMany {
                        what: "names",
                        max: MAX_NAMES_PER_MESSAGE,
                    });
                }
                for name in &names {
                    validate_name(name)?;
                }
                Response::Counters {
                    counters: names
                        .iter()
                        .map(|name| (&store.counter(name).unwrap_or_default()).into())
                        .collect(),
                }
            }
            Request::Mark { incarnation } => Response::Mark {
                seq: store.mark(incarnation).await?,
            },
            Request::List { after, limit } => {
                if !after.is_empty() {
                    validate_name(&after)?;
                }
                if limit == 0 || limit > MAX_LIST {
                    return Err(AnswerError::TooMany {
                        what: "counters in a page (and at least 1)",
                        max: MAX_LIST,
                    });
                }
                let after = (!after.is_empty()).then_some(after.as_str());
                // One more than asked: whether there is more.
                let mut page = store.list("", after, limit + 1);
                let more = page.len() > limit;
                page.truncate(limit);
                Response::Page {
                    counters: page
                        .into_iter()
                        .map(|(n, c)| WireCounter::new(n, &c))
                        .collect(),
                    more,
                }
            }
        };
        let membership =
            store.with_membership(|ours| theirs.merged_with(ours).is_some().then(|| ours.clone()));
        Ok(ResponseEnvelope {
            v,
            from: store.identity(),
            membership,
            resp,
        })
    }

    /// Counters whose own component changed at the sender.
    async fn on_push(&self, counters: Vec<WireCounter>) -> Result<Response, AnswerError> {
        let counters = validate_counters(counters)?;
        if let Some((name, claimed, held)) = self.ctx.store.raises_own(&counters) {
            return Err(AnswerError::RaisesOwn {
                name: name.to_string(),
                claimed,
                held,
            });
        }
        self.ctx
            .store
            .merge(Merge {
                counters,
                mark: None,
            })
            .await?;
        Ok(Response::Ack)
    }

    /// Anti-entropy: our changes after `start`, if the asker knows us as
    /// `incarnation`; it holds them up to `since` (`start` is `since` but
    /// for a pull ahead).
    async fn on_pull(
        &self,
        from: ReplicaId,
        incarnation: u64,
        since: u64,
        start: u64,
        limit: usize,
    ) -> Result<Response, AnswerError> {
        let store = &self.ctx.store;
        if incarnation != store.identity().incarnation {
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
        let head = store.head();
        if since > head {
            return Err(AnswerError::PastHead { since, head });
        }
        if start < since || start > head {
            return Err(AnswerError::BadStart { since, start, head });
        }
        self.note_pulled(from, since);
        let limit = limit.clamp(1, MAX_NAMES_PER_MESSAGE);
        let changes = match store.changes_since(start, limit).await {
            Ok(changes) => changes,
            Err(e) if e.is_transient() => {
                // Storage is failing (and being reopened): what this node
                // holds must still reach its peers, or a disk that fails
                // and then is lost would take it along. Memory holds every
                // counter, but not which changed after `since`: send them
                // all (a page of them), leaving the asker's mark where it is.
                tracing::debug!(error = %e, "answering a pull from memory while storage fails");
                return Ok(Response::Changes {
                    counters: page_for(from, store.list("", None, limit)),
                    next: since,
                    head: store.head(),
                    more: false,
                });
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Response::Changes {
            counters: page_for(from, changes.counters),
            next: changes.next,
            head: changes.head,
            more: changes.more,
        })
    }
}

/// A pull page for `asker`, without the counters it is sure to hold
/// already: those whose every component (one at least) is the asker's own, at the
/// incarnation it asks as. A node holds its own component at least as high
/// as anyone it told, for as long as it keeps its folder (a node that lost
/// it asks as a new incarnation), and it refuses any page that would raise
/// it (G11). Without this, a node that merged a peer's changes serves them
/// straight back to it: a million names written on one node would cross
/// the network twice more, and be decoded and compared for nothing.
///
/// The page still covers every change it skipped: the asker's mark moves
/// past them, which is true of what it holds.
fn page_for(asker: ReplicaId, counters: Vec<(String, GCounter)>) -> Vec<WireCounter> {
    counters
        .into_iter()
        .filter(|(_, c)| c.is_empty() || c.components().any(|(r, _)| r != asker))
        .map(|(n, c)| WireCounter::new(n, &c))
        .collect()
}

fn validate_counters(counters: Vec<WireCounter>) -> Result<Vec<(String, GCounter)>, AnswerError> {
    if counters.len() > MAX_NAMES_PER_MESSAGE {
        return Err(AnswerError::TooMany {
            what: "counters",
            max: MAX_NAMES_PER_MESSAGE,
        });
    }
    // Checked while decoding too (see `proto`); here for every other way
    // a message reaches this node.
    let components: usize = counters.iter().map(|c| c.components.len()).sum();
    if components > MAX_COMPONENTS_PER_PUSH {
        return Err(AnswerError::TooManyComponents {
            max: MAX_COMPONENTS_PER_PUSH,
            got: components,
        });
    }
    counters
        .into_iter()
        .map(|c| {
            validate_name(&c.name)?;
            Ok(c.into_parts())
        })
        .collect()
}
