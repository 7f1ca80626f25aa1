//! The writer's decisions, without I/O: from the operations queued for one
//! commit, the batch to write and every caller's answer (which depends on
//! whether the commit succeeds only where the answer says so). Tested here
//! with plain data, no engine and no runtime.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::Arc;

use super::idempotency::{self, KeyRecord, Keys};
use super::{Batch, Incremented, Op, Reply, StoreError};
use crate::cluster::Membership;
use crate::crdt::{GCounter, ReplicaId};

/// One reply owed once the batch's fate is known.
pub(super) struct Pending {
    reply: Replier,
    /// Whether the answer depends on the commit (a replay or a refusal does not).
    needs_commit: bool,
}

pub(super) enum Replier {
    Increment(Reply<Incremented>, Result<Incremented, StoreError>),
    Merge(Reply<usize>, usize),
    Membership(Reply<Option<Membership>>, Option<Membership>),
    Done(Reply<()>),
}

/// A batch decided from queued operations, before any I/O.
#[derive(Default)]
pub(super) struct Plan {
    pub batch: Batch,
    pending: Vec<Pending>,
    /// Names whose own component changed: replication pushes them.
    pub own_changed: Vec<String>,
    /// Increments applied (not replays, not refusals).
    pub applied: u64,
}

impl Plan {
    /// Answers every caller: `head` after a successful commit, or `failure`.
    pub(super) fn answer(self, head: u64, failure: Option<&Arc<StoreError>>) {
        for p in self.pending {
            let failed = failure.filter(|_| p.needs_commit);
            let fail = || StoreError::Unavailable(failed.cloned().expect("failed"));
            match p.reply {
                Replier::Increment(reply, outcome) => {
                    let outcome = match failed {
                        Some(_) => Err(fail()),
                        None => outcome.map(|mut i| {
                            if !i.replayed {
                                i.seq = head;
                            }
                            i
                        }),
                    };
                    let _ = reply.send(outcome);
                }
                Replier::Merge(reply, changed) => {
                    let _ = reply.send(if failed.is_some() {
                        Err(fail())
                    } else {
                        Ok(changed)
                    });
                }
                Replier::Done(reply) => {
                    let _ = reply.send(if failed.is_some() {
                        Err(fail())
                    } else {
                        Ok(())
                    });
                }
                Replier::Membership(reply, next) => {
                    let _ = reply.send(if failed.is_some() {
                        Err(fail())
                    } else {
                        Ok(next)
                    });
                }
            }
        }
    }
}

/// What planning reads.
pub(super) struct State<'a> {
    /// This node's own component.
    pub own: ReplicaId,
    /// Every committed counter (the store's memory, read-locked while a
    /// batch is planned: only the writer changes it).
    pub committed: &'a BTreeMap<Box<str>, GCounter>,
    pub keys: &'a Keys,
    pub membership: &'a Membership,
    /// The last sequence given out.
    pub head: u64,
}

/// Decides one batch from queued operations; does no I/O.
pub(super) fn plan(ops: Vec<Op>, state: &State<'_>, now_ms: u64) -> Plan {
    let mut plan = Plan::default();
    let mut membership = state.membership.clone();
    let head = state.head;
    for op in ops {
        match op {
            Op::Increment { items, key, reply } => {
                let (outcome, needs_commit) =
                    plan_increment(&mut plan, state, items, key, now_ms, head);
                plan.pending.push(Pending {
                    reply: Replier::Increment(reply, outcome),
                    needs_commit,
                });
            }
            Op::Merge { merge, reply } => {
                let mut changed = 0;
                for (name, theirs) in merge.counters {
                    // One descent of the batch per name; a counter already
                    // staged is merged in place.
                    let raised = match plan.batch.counters.entry(name) {
                        Entry::Occupied(mut staged) => staged.get_mut().merge(&theirs),
                        // Nothing is copied for a counter that already
                        // covers theirs: the usual case for a page of
                        // changes this node has had from another peer.
                        Entry::Vacant(slot) => match state.committed.get(slot.key().as_str()) {
                            Some(held) if !held.would_change(&theirs) => false,
                            held => {
                                let mut c = held.cloned().unwrap_or_default();
                                let raised = c.merge(&theirs);
                                if raised {
                                    slot.insert(c);
                                }
                                raised
                            }
                        },
                    };
                    changed += usize::from(raised);
                }
                let needs_commit = changed > 0 || merge.mark.is_some();
                plan.batch.marks.extend(merge.mark);
                plan.pending.push(Pending {
                    reply: Replier::Merge(reply, changed),
                    needs_commit,
                });
            }
            Op::Membership { change, reply } => {
                let next = change(&membership);
                if let Some(next) = &next {
                    membership = next.clone();
                    plan.batch.membership = Some(next.clone());
                }
                let needs_commit = next.is_some();
                plan.pending.push(Pending {
                    reply: Replier::Membership(reply, next),
                    needs_commit,
                });
            }
            Op::RememberMe { me, reply } => {
                plan.batch.me = Some(me);
                plan.pending.push(Pending {
                    reply: Replier::Done(reply),
                    needs_commit: true,
                });
            }
            Op::Close { .. } | Op::Rebuild { .. } => unreachable!("filtered by run"),
        }
    }
    if !plan.batch.keys_put.is_empty() {
        plan.batch.keys_del = state.keys.expired(now_ms, &plan.batch.keys_put);
    }
    plan
}

/// One increment request: a replay, a refusal, or staged changes.
fn plan_increment(
    plan: &mut Plan,
    state: &State<'_>,
    items: Vec<(String, u64)>,
    key: Option<String>,
    now_ms: u64,
    head: u64,
) -> (Result<Incremented, StoreError>, bool) {
    let fingerprint = key.as_ref().map(|_| idempotency::fingerprint(&items));
    if let (Some(key), Some(fingerprint)) = (&key, &fingerprint) {
        let seen = plan
            .batch
            .keys_put
            .iter()
            .find(|(put, _)| put == key)
            .map(|(_, r)| r)
            .or_else(|| state.keys.get(key, now_ms));
        if let Some(record) = seen {
            let outcome = if &record.fingerprint == fingerprint {
                Ok(Incremented {
                    values: record.values.clone(),
                    replayed: true,
                    seq: head,
                })
            } else {
                Err(StoreError::KeyReused(key.clone()))
            };
            // A replay of a key put in this very batch is only true once it commits.
            let in_batch = plan.batch.keys_put.iter().any(|(put, _)| put == key);
            return (outcome, in_batch);
        }
    }
    // Each name's staged counter, and whether any of its amounts is
    // positive (a zero increment writes nothing).
    let mut staged: BTreeMap<String, (GCounter, bool)> = BTreeMap::new();
    for (name, amount) in &items {
        let (mut c, positive) = match staged.get(name) {
            Some(staged) => staged.clone(),
            None => (
                plan.batch.counters.get(name).cloned().unwrap_or_else(|| {
                    state
                        .committed
                        .get(name.as_str())
                        .cloned()
                        .unwrap_or_default()
                }),
                false,
            ),
        };
        if let Err(e) = c.increment(state.own, *amount) {
            return (Err(StoreError::Overflow(e)), false);
        }
        staged.insert(name.clone(), (c, positive || *amount > 0));
    }
    let values: Vec<u128> = items.iter().map(|(n, _)| staged[n].0.value()).collect();
    let mut wrote = false;
    for (name, (c, positive)) in staged {
        if positive {
            plan.own_changed.push(name.clone());
            plan.batch.counters.insert(name, c);
            wrote = true;
        }
    }
    if let (Some(key), Some(fingerprint)) = (key, fingerprint) {
        plan.batch.keys_put.push((
            key,
            KeyRecord {
                fingerprint,
                values: values.clone(),
                created_ms: now_ms,
            },
        ));
        wrote = true;
    }
    plan.applied += 1;
    (
        Ok(Incremented {
            values,
            replayed: false,
            seq: head,
        }),
        wrote,
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;
    use crate::storage::{Merge, PeerMark};

    const ME: ReplicaId = ReplicaId {
        node: 1,
        incarnation: 7,
    };

    fn counter_of(pairs: &[(&str, u64)]) -> BTreeMap<String, GCounter> {
        pairs
            .iter()
            .map(|(n, v)| {
                let mut c = GCounter::new();
                c.increment(ME, *v).unwrap();
                (n.to_string(), c)
            })
            .collect()
    }

    fn inc(
        items: &[(&str, u64)],
        key: Option<&str>,
    ) -> (Op, oneshot::Receiver<Result<Incremented, StoreError>>) {
        let (reply, rx) = oneshot::channel();
        let op = Op::Increment {
            items: items.iter().map(|(n, a)| (n.to_string(), *a)).collect(),
            key: key.map(str::to_string),
            reply,
        };
        (op, rx)
    }

    /// Plans `ops` over `stored` (committed counters) with no remembered keys.
    fn plan_over(stored: &BTreeMap<String, GCounter>, ops: Vec<Op>) -> Plan {
        let committed = stored
            .iter()
            .map(|(n, c)| (n.as_str().into(), c.clone()))
            .collect();
        let keys = Keys::new(Vec::new(), Duration::from_secs(60), 10, usize::MAX);
        let membership = Membership::default();
        let state = State {
            own: ME,
            committed: &committed,
            keys: &keys,
            membership: &membership,
            head: 4,
        };
        plan(ops, &state, 1_000)
    }

    #[test]
    fn increments_stage_on_top_of_each_other_and_answer_after_the_commit() {
        let stored = counter_of(&[("a", 5)]);
        let (first, mut r1) = inc(&[("a", 1)], None);
        let (second, mut r2) = inc(&[("a", 2), ("b", 3)], None);
        let plan = plan_over(&stored, vec![first, second]);
        assert_eq!(plan.batch.counters["a"].value(), 8);
        assert_eq!(plan.batch.counters["b"].value(), 3);
        assert_eq!(plan.own_changed, ["a", "a", "b"]);
        assert_eq!(plan.applied, 2);
        assert!(
            r1.try_recv().is_err(),
            "nothing is answered before the commit"
        );
        plan.answer(9, None);
        let done = r2.try_recv().unwrap().unwrap();
        assert_eq!((done.values, done.seq), (vec![8, 3], 9));
        assert_eq!(r1.try_recv().unwrap().unwrap().values, vec![6]);
    }

    #[test]
    fn an_overflow_refuses_its_whole_request_and_stages_nothing() {
        let stored = counter_of(&[("a", u64::MAX)]);
        let (op, mut rx) = inc(&[("b", 1), ("a", 1)], None);
        let plan = plan_over(&stored, vec![op]);
        assert!(plan.batch.is_empty());
        // A refusal does not depend on the commit: even a failed one answers it.
        plan.answer(0, Some(&Arc::new(StoreError::Closed)));
        assert!(matches!(
            rx.try_recv().unwrap(),
            Err(StoreError::Overflow(_))
        ));
    }

    #[test]
    fn a_key_repeated_in_one_batch_is_applied_once_and_fails_with_its_commit() {
        let stored = BTreeMap::new();
        let (first, mut r1) = inc(&[("a", 2)], Some("k"));
        let (again, mut r2) = inc(&[("a", 2)], Some("k"));
        let (reused, mut r3) = inc(&[("a", 3)], Some("k"));
        let plan = plan_over(&stored, vec![first, again, reused]);
        assert_eq!(plan.batch.counters["a"].value(), 2, "applied once");
        assert_eq!(plan.batch.keys_put.len(), 1);
        plan.answer(0, Some(&Arc::new(StoreError::Closed)));
        assert!(matches!(
            r1.try_recv().unwrap(),
            Err(StoreError::Unavailable(_))
        ));
        assert!(
            matches!(r2.try_recv().unwrap(), Err(StoreError::Unavailable(_))),
            "a replay of a key this very commit failed to keep is not a success"
        );
        assert!(
            matches!(r3.try_recv().unwrap(), Err(StoreError::Unavailable(_))),
            "nor is a key refused for a first use that was not kept"
        );
        // Committed, the same three answer as a first use, a replay and a refusal.
        let (first, mut r1) = inc(&[("a", 2)], Some("k"));
        let (again, mut r2) = inc(&[("a", 2)], Some("k"));
        let (reused, mut r3) = inc(&[("a", 3)], Some("k"));
        plan_over(&stored, vec![first, again, reused]).answer(5, None);
        assert!(!r1.try_recv().unwrap().unwrap().replayed);
        assert!(r2.try_recv().unwrap().unwrap().replayed);
        assert!(matches!(
            r3.try_recv().unwrap(),
            Err(StoreError::KeyReused(_))
        ));
    }

    #[test]
    fn a_merge_that_teaches_nothing_writes_nothing_but_its_mark() {
        let stored = counter_of(&[("a", 5)]);
        let (reply, _rx) = oneshot::channel();
        let merge = Op::Merge {
            merge: Merge {
                counters: counter_of(&[("a", 3)]).into_iter().collect(),
                mark: Some(PeerMark {
                    incarnation: 2,
                    seq: 9,
                }),
            },
            reply,
        };
        let plan = plan_over(&stored, vec![merge]);
        assert!(plan.batch.counters.is_empty(), "5 already covers 3");
        assert_eq!(plan.batch.marks.len(), 1);
        assert!(plan.own_changed.is_empty(), "merged changes are not pushed");
    }

    /// A merge into a committed counter stages the committed components
    /// with the raised one; one that raises nothing stages nothing.
    #[test]
    fn a_merge_raises_a_committed_counter_and_keeps_its_components() {
        let stored = counter_of(&[("a", 5), ("b", 6)]);
        let peer = ReplicaId {
            node: 2,
            incarnation: 3,
        };
        let mut theirs = GCounter::new();
        theirs.increment(peer, 4).unwrap();
        let mut covered = GCounter::new();
        covered.increment(ME, 6).unwrap();
        let (reply, mut rx) = oneshot::channel();
        let merge = Op::Merge {
            merge: Merge {
                counters: vec![("a".to_string(), theirs), ("b".to_string(), covered)],
                mark: None,
            },
            reply,
        };
        let plan = plan_over(&stored, vec![merge]);
        let a = &plan.batch.counters["a"];
        assert_eq!((a.get(ME), a.get(peer)), (5, 4), "{a:?}");
        assert!(!plan.batch.counters.contains_key("b"), "6 covers 6");
        plan.answer(5, None);
        assert_eq!(rx.try_recv().unwrap().unwrap(), 1);
    }

    /// A merge meets a counter an earlier operation of the same batch staged:
    /// it merges into that one, not into the committed one.
    #[test]
    fn a_merge_builds_on_what_the_batch_already_staged() {
        let stored = counter_of(&[("a", 5)]);
        let peer = ReplicaId {
            node: 2,
            incarnation: 3,
        };
        let merge_of = |count: u64| {
            let mut c = GCounter::new();
            c.increment(peer, count).unwrap();
            let (reply, rx) = oneshot::channel();
            let op = Op::Merge {
                merge: Merge {
                    counters: vec![("a".to_string(), c)],
                    mark: None,
                },
                reply,
            };
            (op, rx)
        };
        let (raise, _r0) = inc(&[("a", 2)], None);
        let (first, mut r1) = merge_of(4);
        let (same, mut r2) = merge_of(4);
        let (lower, mut r3) = merge_of(1);
        let plan = plan_over(&stored, vec![raise, first, same, lower]);
        let a = &plan.batch.counters["a"];
        assert_eq!((a.get(ME), a.get(peer)), (7, 4), "both kept: {a:?}");
        plan.answer(5, None);
        assert_eq!(r1.try_recv().unwrap().unwrap(), 1);
        assert_eq!(r2.try_recv().unwrap().unwrap(), 0, "already staged");
        assert_eq!(r3.try_recv().unwrap().unwrap(), 0, "lower than staged");
    }
}
