//! Backups and restores of the whole cluster, through any node.
//!
//! **A consistent page** (`GET /backup`) is the listing's counterpart of a
//! consistent read: the counters with names after `after`, heard during the
//! request from every actor of the read set (the same [`ReadRound`], so
//! configs learned and hand-offs confirmed on the way count exactly as for
//! a read). Each actor answers its first `limit` names after `after`; an
//! actor that has more bounds the page at its last name, and the page holds
//! the names up to the smallest such bound. So every name of the page was
//! heard from every actor: whatever any node acknowledged for it before the
//! request began is in it (G1's argument, name by name), and the next page
//! starts after the bound. A walk of pages from the start therefore holds
//! every increment acknowledged before the walk began.
//!
//! **A restore page** (`POST /restore`) merges counters into this node,
//! component by component (merge by maximum: restoring twice is restoring
//! once, and nothing newer is lowered), after a check that none of them
//! raises the own component of any running node past what that node holds:
//! such a count was never acknowledged by its owner (a damaged or forged
//! file), and the owner would refuse every page of anti-entropy carrying it
//! (G11). The owners' current counts are read, during the request, from
//! every actor of the read set; a count only grows, so a check that passes
//! stays true. Components of replicas no running node owns (another
//! cluster's, a departed node's, an older incarnation's) are merged as
//! they are, and replication spreads them like any other.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::read::Reads;
use super::read_round::{Gathered, Incomplete};
use crate::cluster::{Actor, Membership};
use crate::crdt::{GCounter, ReplicaId};
use crate::input::validate_name;
use crate::proto::{MAX_LIST, Request, Response, ResponseEnvelope, WireCounter};
use crate::storage::{Merge, StoreError};

/// What one actor said, or several merged: counters up to `bound`.
#[derive(Debug, Default)]
pub struct Page {
    counters: BTreeMap<String, GCounter>,
    /// Names past this were not heard from every actor that answered:
    /// the last name of an answer with more after it. `None` while every
    /// answer went to the end.
    bound: Option<String>,
}

impl Page {
    fn of(counters: Vec<(String, GCounter)>, more: bool) -> Page {
        let bound = if more {
            counters.last().map(|(n, _)| n.clone())
        } else {
            None
        };
        Page {
            counters: counters.into_iter().collect(),
            bound,
        }
    }

    fn within(&self) -> impl Iterator<Item = (&String, &GCounter)> {
        self.counters
            .iter()
            .take_while(|(n, _)| self.bound.as_ref().is_none_or(|b| *n <= b))
    }
}

/// A page every actor of the read set was heard for.
#[derive(Debug, PartialEq)]
pub struct ConsistentPage {
    pub counters: Vec<(String, GCounter)>,
    /// Where the next page starts (after this name); `None`: the last page.
    pub next: Option<String>,
}

impl Gathered for Page {
    type Value = ConsistentPage;

    fn gather(&mut self, theirs: &Self) {
        for (name, c) in &theirs.counters {
            match self.counters.get_mut(name) {
                Some(ours) => {
                    ours.merge(c);
                }
                None => {
                    self.counters.insert(name.clone(), c.clone());
                }
            }
        }
        if let Some(b) = &theirs.bound
            && self.bound.as_ref().is_none_or(|ours| b < ours)
        {
            self.bound = Some(b.clone());
        }
    }

    fn value(&self) -> ConsistentPage {
        ConsistentPage {
            counters: self.within().map(|(n, c)| (n.clone(), c.clone())).collect(),
            next: self.bound.clone(),
        }
    }

    fn best_known_value(&self) -> u128 {
        self.within().map(|(_, c)| c.value()).sum()
    }
}

/// Each running replica's own component of each name of a restore page,
/// as its node answered during the request.
#[derive(Debug, Default)]
struct Owned(BTreeMap<ReplicaId, Vec<u64>>);

impl Gathered for Owned {
    type Value = BTreeMap<ReplicaId, Vec<u64>>;
    fn gather(&mut self, theirs: &Self) {
        for (r, counts) in &theirs.0 {
            self.0.insert(*r, counts.clone());
        }
    }
    fn value(&self) -> Self::Value {
        self.0.clone()
    }
    fn best_known_value(&self) -> u128 {
        0
    }
}

/// Why a restore page was refused or not applied.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(
        "{name:?}: the component of {replica} is {claimed} in what is restored, but that \
         node has counted only {held}: a count its owner never acknowledged (a damaged or \
         forged file?); nothing of this page was restored"
    )]
    RaisesOwner {
        name: String,
        replica: ReplicaId,
        claimed: u64,
        held: u64,
    },
    #[error("{}", .0.reason)]
    Incomplete(Incomplete),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a restore page did.
#[derive(Debug, PartialEq, Eq)]
pub struct Restored {
    /// Counters in the page.
    pub counters: usize,
    /// Of them, those this node's state changed for.
    pub changed: usize,
}

impl Reads {
    /// One consistent page of every counter, names after `after`, at most
    /// `limit`; `excused` actors are not waited for (a partial backup).
    pub async fn consistent_page(
        self: &Arc<Self>,
        after: Option<&str>,
        limit: usize,
        timeout: Duration,
        excused: Vec<Actor>,
    ) -> Result<ConsistentPage, Incomplete> {
        let limit = limit.clamp(1, MAX_LIST);
        let deadline = Instant::now() + timeout;
        let local = || {
            let mut list = self.store.list("", after, limit + 1);
            let more = list.len() > limit;
            list.truncate(limit);
            Page::of(list, more)
        };
        let mut round = self.start_round(local(), timeout)?;
        round.excuse(excused);
        let after = after.unwrap_or_default();
        self.run_round(round, deadline, local, |actor| async move {
            let req = || Request::List {
                after: after.to_string(),
                limit,
            };
            let answer = self
                .call_until(&actor, req, deadline, |resp| page_of(resp, after, limit))
                .await;
            (actor, answer)
        })
        .await
        .map_err(|round| round.give_up())
    }

    /// Merges a restore page into this node, after checking it against
    /// every running node's own component (see the module's docs).
    pub async fn restore(
        self: &Arc<Self>,
        counters: Vec<(String, GCounter)>,
        timeout: Duration,
    ) -> Result<Restored, RestoreError> {
        let deadline = Instant::now() + timeout;
        let names: Vec<String> = counters.iter().map(|(n, _)| n.clone()).collect();
        let local = || {
            let me = self.store.identity();
            let counts = names
                .iter()
                .map(|n| self.store.counter(n).map_or(0, |c| c.get(me)))
                .collect();
            Owned(BTreeMap::from([(me, counts)]))
        };
        let round = self
            .start_round(local(), timeout)
            .map_err(RestoreError::Incomplete)?;
        let names = &names;
        let owners = self
            .run_round(round, deadline, local, |actor| async move {
                let req = || Request::ReadMany {
                    names: names.clone(),
                };
                let answer = self
                    .call_until(&actor, req, deadline, |resp| owned_of(resp, names.len()))
                    .await;
                (actor, answer)
            })
            .await
            .map_err(|round| RestoreError::Incomplete(round.give_up()))?;
        for (replica, held) in &owners {
            for ((name, c), &held) in counters.iter().zip(held) {
                let claimed = c.get(*replica);
                if claimed > held {
                    return Err(RestoreError::RaisesOwner {
                        name: name.clone(),
                        replica: *replica,
                        claimed,
                        held,
                    });
                }
            }
        }
        let n = counters.len();
        let changed = self
            .store
            .merge(Merge {
                counters,
                mark: None,
            })
            .await?;
        Ok(Restored {
            counters: n,
            changed,
        })
    }

    /// Calls `actor` with `req()` until it gives an answer `check` accepts
    /// or `deadline` passes. The pause between attempts stays short.
    async fn call_until<S>(
        &self,
        actor: &Actor,
        req: impl Fn() -> Request,
        deadline: Instant,
        check: impl Fn(ResponseEnvelope) -> Option<S>,
    ) -> Option<(S, Option<Membership>)> {
        let mut pause = Duration::from_millis(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let per_call = self.peer_timeout.min(left);
            if let Ok(resp) = self.messenger.call(actor, req(), per_call).await {
                let membership = resp.membership.clone();
                if let Some(s) = check(resp) {
                    return Some((s, membership));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
}

/// A peer's page, believed only if it is one (G11): valid names in strictly
/// increasing order, all after `after`, at most `limit`.
fn page_of(resp: ResponseEnvelope, after: &str, limit: usize) -> Option<Page> {
    let Response::Page { counters, more } = resp.resp else {
        return None;
    };
    if counters.len() > limit || (more && counters.is_empty()) {
        return None;
    }
    let mut last = after.to_string();
    let mut out = Vec::with_capacity(counters.len());
    for c in counters {
        if validate_name(&c.name).is_err() || c.name <= last {
            return None;
        }
        last = c.name.clone();
        out.push(WireCounter::into_parts(c));
    }
    Some(Page::of(out, more))
}

/// A peer's own component of each of `n` names, from its `ReadMany` answer.
fn owned_of(resp: ResponseEnvelope, n: usize) -> Option<Owned> {
    let Response::Counters { counters } = resp.resp else {
        return None;
    };
    if counters.len() != n {
        return None;
    }
    let me = resp.from;
    let counts = counters
        .into_iter()
        .map(|components| {
            let c: GCounter = components.into_iter().collect();
            c.get(me)
        })
        .collect();
    Some(Owned(BTreeMap::from([(me, counts)])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::Component;

    fn counter(node: u64, count: u64) -> GCounter {
        std::iter::once(Component {
            node,
            incarnation: 1,
            count,
        })
        .collect()
    }

    fn answer(node: u64, names: &[&str], more: bool) -> Page {
        Page::of(
            names
                .iter()
                .map(|n| (n.to_string(), counter(node, 1)))
                .collect(),
            more,
        )
    }

    fn names(p: &ConsistentPage) -> Vec<&str> {
        p.counters.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Two nodes holding different names, pages of two: a name past the
    /// first node's last one is left for the next page, since that node
    /// may hold it too (its state of it was not heard).
    #[test]
    fn a_page_ends_at_the_smallest_last_name_of_an_answer_with_more() {
        let mut page = answer(1, &["a", "c"], true);
        page.gather(&answer(2, &["b", "d"], true));
        let v = page.value();
        assert_eq!(names(&v), ["a", "b", "c"]);
        assert_eq!(v.next.as_deref(), Some("c"));
        // In the other order, the same.
        let mut page = answer(2, &["b", "d"], true);
        page.gather(&answer(1, &["a", "c"], true));
        assert_eq!(page.value(), v);
    }

    #[test]
    fn the_last_page_is_the_one_every_answer_ended() {
        let mut page = answer(1, &["a"], false);
        page.gather(&answer(2, &["b"], false));
        let v = page.value();
        assert_eq!(names(&v), ["a", "b"]);
        assert_eq!(v.next, None);
        // One answer with more is enough to bound the page.
        page.gather(&answer(3, &["a"], true));
        assert_eq!(names(&page.value()), ["a"]);
        assert_eq!(page.value().next.as_deref(), Some("a"));
    }

    #[test]
    fn answers_for_the_same_name_merge_their_components() {
        let mut page = Page::of(vec![("x".into(), counter(1, 3))], false);
        page.gather(&Page::of(vec![("x".into(), counter(2, 4))], false));
        page.gather(&Page::of(vec![("x".into(), counter(1, 2))], false));
        let v = page.value();
        assert_eq!(v.counters[0].1.value(), 7, "per component, never totals");
        assert_eq!(page.best_known_value(), 7);
    }

    fn envelope(resp: Response) -> ResponseEnvelope {
        ResponseEnvelope {
            v: crate::proto::PROTOCOL_VERSION,
            from: ReplicaId {
                node: 2,
                incarnation: 1,
            },
            membership: None,
            resp,
        }
    }

    fn wire(names: &[&str]) -> Vec<WireCounter> {
        names
            .iter()
            .map(|n| WireCounter::new(n.to_string(), &counter(2, 1)))
            .collect()
    }

    /// A peer's page is believed only if it is one (G11).
    #[test]
    fn a_page_out_of_order_too_long_or_before_its_start_is_not_believed() {
        let page = |names: &[&str], more| {
            envelope(Response::Page {
                counters: wire(names),
                more,
            })
        };
        assert!(page_of(page(&["b", "c"], true), "a", 2).is_some());
        assert!(
            page_of(page(&["c", "b"], false), "a", 2).is_none(),
            "out of order"
        );
        assert!(
            page_of(page(&["b", "b"], false), "a", 2).is_none(),
            "a name twice"
        );
        assert!(
            page_of(page(&["a", "b"], false), "a", 2).is_none(),
            "not after `after`"
        );
        assert!(
            page_of(page(&["b", "c", "d"], false), "", 2).is_none(),
            "past the limit"
        );
        assert!(
            page_of(page(&[], true), "", 2).is_none(),
            "more after nothing"
        );
        assert!(
            page_of(page(&[""], false), "", 2).is_none(),
            "an invalid name"
        );
        assert!(page_of(envelope(Response::Ack), "", 2).is_none());
    }
}
