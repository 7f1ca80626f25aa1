//! The single owner of writes: a task that takes every queued operation,
//! plans one batch from them, commits it once (group commit), then updates
//! the in-memory state and answers every caller.
//!
//! When a commit fails, nothing of it is acknowledged or published and a
//! failure episode starts: storage is reported unhealthy, operations that
//! need a commit are refused at once (the caller answers 503), and the task
//! reopens the database in the background with backoff (redb's remedy for
//! an I/O error), reloads what the disk holds (a commit reported as failed
//! may have reached the disk; reloading folds it in rather than counting on
//! from a lower value), proves the disk takes writes with a probe commit,
//! and resumes. If the task itself dies, the store says so through
//! `Store::stopped`, and the node exits rather than refusing writes forever.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, error, warn};

use super::idempotency::{self, KeyRecord, Keys};
use super::{
    Batch, Committed, Engine, Identity, Incremented, MAX_BATCH, Op, Reply, Shared, StoreError,
    StoreOptions, run_engine,
};
use crate::cluster::Membership;
use crate::crdt::{GCounter, ReplicaId};
use crate::metrics::Metrics;

/// First pause before reopening after a failure; doubles up to the maximum.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between recovery attempts: a disk that comes back is in
/// use again within about a second.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

pub(super) struct Writer {
    engine: Arc<dyn Engine>,
    identity: Identity,
    shared: Arc<Shared>,
    keys: Keys,
    window: Duration,
    capacity: usize,
    /// Where durable changes are published for replication.
    publish: mpsc::UnboundedSender<Committed>,
    metrics: Metrics,
    episode: Option<Episode>,
}

/// A failure in progress.
struct Episode {
    error: Arc<StoreError>,
    attempts: u32,
    next_try: Instant,
}

/// How the writer task ended.
enum Finish {
    Closed(oneshot::Sender<()>),
    /// Every handle is gone.
    Dropped,
    Fatal(String),
}

/// Starts the writer and a watcher that reports its unexpected end.
pub(super) fn spawn(writer: Writer, rx: mpsc::Receiver<Op>) {
    let shared = writer.shared.clone();
    let task = tokio::spawn(writer.run(rx));
    tokio::spawn(async move {
        let reason = match task.await {
            Ok(Finish::Closed(reply)) => {
                let _ = reply.send(());
                return;
            }
            Ok(Finish::Dropped) => return,
            Ok(Finish::Fatal(reason)) => reason,
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                format!("the storage writer panicked: {message}")
            }
            // Cancelled: the runtime is shutting down.
            Err(_) => return,
        };
        error!(reason = %reason, "storage writer stopped; this node can no longer write");
        shared.stopped.send_replace(Some(reason));
    });
}

/// One reply owed once the batch's fate is known.
struct Pending {
    reply: Replier,
    /// Whether the answer depends on the commit (a replay or a refusal does not).
    needs_commit: bool,
}

enum Replier {
    Increment(Reply<Incremented>, Result<Incremented, StoreError>),
    Merge(Reply<Vec<String>>, Vec<String>),
    Membership(Reply<Option<Membership>>, Option<Membership>),
}

/// A batch decided from queued operations, before any I/O.
#[derive(Default)]
struct Plan {
    batch: Batch,
    pending: Vec<Pending>,
    /// Names whose own component changed: replication pushes them.
    own_changed: Vec<String>,
    /// Increments applied (not replays, not refusals).
    applied: u64,
}

impl Plan {
    /// Answers every caller: `head` after a successful commit, or `failure`.
    fn answer(self, head: u64, failure: Option<&Arc<StoreError>>) {
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

fn now_ms() -> u64 {
    // Idempotency windows are wall-clock: they must survive a restart.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Writer {
    pub(super) fn new(
        engine: Arc<dyn Engine>,
        identity: Identity,
        shared: Arc<Shared>,
        keys: Vec<(String, KeyRecord)>,
        options: &StoreOptions,
        publish: mpsc::UnboundedSender<Committed>,
    ) -> Self {
        Writer {
            engine,
            identity,
            shared,
            keys: Keys::new(
                keys,
                options.idempotency_window,
                options.idempotency_capacity,
            ),
            window: options.idempotency_window,
            capacity: options.idempotency_capacity,
            publish,
            metrics: options.metrics.clone(),
            episode: None,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Op>) -> Finish {
        loop {
            let due = self.episode.as_ref().map(|e| e.next_try);
            if due.is_some_and(|t| t <= Instant::now()) {
                if let Err(reason) = self.try_recover().await {
                    return Finish::Fatal(reason);
                }
                continue;
            }
            let first = match due {
                None => rx.recv().await,
                Some(due) => tokio::select! {
                    biased;
                    op = rx.recv() => op,
                    _ = tokio::time::sleep_until(due) => continue,
                },
            };
            let Some(first) = first else {
                return Finish::Dropped;
            };
            let mut ops = vec![first];
            while ops.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            let mut close = None;
            let mut batch = Vec::with_capacity(ops.len());
            for op in ops {
                match op {
                    Op::Close { reply } => close = close.or(Some(reply)),
                    // Arrived after Close: refused by dropping its reply.
                    _ if close.is_some() => {}
                    op => batch.push(op),
                }
            }
            self.apply(batch).await;
            if let Some(reply) = close {
                rx.close();
                return Finish::Closed(reply);
            }
        }
    }

    async fn apply(&mut self, ops: Vec<Op>) {
        if ops.is_empty() {
            return;
        }
        let count = ops.len();
        let current = self.shared.membership.borrow().clone();
        let mut plan = plan(ops, &State::of(self, &current), now_ms());
        let head = self.shared.head.load(Ordering::Acquire);
        if plan.batch.is_empty() {
            plan.answer(head, None);
            return;
        }
        if let Some(episode) = &self.episode {
            // Failing: do not touch the engine until it has been reopened.
            let error = episode.error.clone();
            plan.answer(head, Some(&error));
            return;
        }
        let batch = std::mem::take(&mut plan.batch);
        let started = Instant::now();
        self.shared.health.commit_started();
        let result = run_engine(&self.engine, move |e| Ok((e.commit(&batch), batch))).await;
        self.shared.health.commit_finished();
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.commit_batch_size.observe(count as f64);
        match result {
            Ok((Ok(head), batch)) => self.publish(plan, batch, head),
            Ok((Err(e), _)) | Err(e) => {
                let error = Arc::new(e);
                self.start_episode(&error);
                plan.answer(head, Some(&error));
            }
        }
    }

    /// Makes a durable batch visible: memory, keys, membership, then replies,
    /// then replication.
    fn publish(&mut self, mut plan: Plan, batch: Batch, head: u64) {
        self.shared.head.store(head, Ordering::Release);
        let mut memory = self
            .shared
            .memory
            .write()
            .unwrap_or_else(|p| p.into_inner());
        memory.extend(batch.counters);
        drop(memory);
        if !batch.keys_put.is_empty() || !batch.keys_del.is_empty() {
            self.keys.apply(&batch.keys_del, batch.keys_put);
            self.shared.keys.store(self.keys.len(), Ordering::Relaxed);
        }
        if let Some(m) = batch.membership {
            self.shared.membership.send_replace(m);
        }
        self.metrics.increments.inc_by(plan.applied);
        // Published before anything is acknowledged: a node stopped right
        // after an acknowledgement still finds the change queued and pushes it.
        let mut names = std::mem::take(&mut plan.own_changed);
        if !names.is_empty() {
            names.sort();
            names.dedup();
            // Nobody listening (replication stopped) is not the writer's concern.
            let _ = self.publish.send(Committed { names, head });
        }
        plan.answer(head, None);
    }

    fn start_episode(&mut self, error: &Arc<StoreError>) {
        if self.shared.health.failed(&error.to_string()) {
            error!(
                error = %error,
                "storage failed: refusing writes (503) until it recovers; reads keep working"
            );
        }
        self.episode = Some(Episode {
            error: error.clone(),
            attempts: 0,
            next_try: Instant::now() + BACKOFF_MIN,
        });
    }

    /// One recovery attempt; `Err` only when recovery can never succeed.
    async fn try_recover(&mut self) -> Result<(), String> {
        match self.reload().await {
            Ok(()) => {
                let attempts = self.episode.take().map_or(0, |e| e.attempts + 1);
                let took = self.shared.health.recovered().unwrap_or_default();
                // WARN, like the failure it ends, so a log filtered to warnings shows both.
                warn!(?took, attempts, "storage recovered; writes resume");
                Ok(())
            }
            Err(Reload::Fatal(reason)) => Err(reason),
            Err(Reload::Failed(e)) => {
                self.shared.health.failed(&e.to_string());
                let episode = self.episode.as_mut().expect("recovering from an episode");
                episode.attempts += 1;
                let pause = BACKOFF_MIN
                    .saturating_mul(1 << episode.attempts.min(10))
                    .min(BACKOFF_MAX);
                debug!(error = %e, attempts = episode.attempts, ?pause, "storage still failing");
                episode.error = Arc::new(e);
                episode.next_try = Instant::now() + pause;
                Ok(())
            }
        }
    }

    /// Reopens the engine, folds in what it holds, and proves it takes a write.
    async fn reload(&mut self) -> Result<(), Reload> {
        run_engine(&self.engine, |e| e.reopen()).await?;
        let node = self.identity.node;
        let loaded = run_engine(&self.engine, move |e| e.load(node)).await?;
        if loaded.incarnation != self.identity.incarnation {
            return Err(Reload::Fatal(format!(
                "the data folder was replaced while the node ran (incarnation {:016x}, expected {:016x})",
                loaded.incarnation, self.identity.incarnation
            )));
        }
        let head = run_engine(&self.engine, |e| e.commit(&Batch::default())).await?;
        let mut changed = Vec::new();
        {
            let mut memory = self
                .shared
                .memory
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for (name, theirs) in loaded.counters {
                let mine = memory.entry(name.clone()).or_default();
                if mine.merge(&theirs) {
                    changed.push(name);
                }
            }
        }
        self.keys = Keys::new(loaded.keys, self.window, self.capacity);
        self.shared.keys.store(self.keys.len(), Ordering::Relaxed);
        if *self.shared.membership.borrow() != loaded.membership {
            self.shared.membership.send_replace(loaded.membership);
        }
        self.shared.head.store(head, Ordering::Release);
        if !changed.is_empty() {
            let _ = self.publish.send(Committed {
                names: changed,
                head,
            });
        }
        Ok(())
    }
}

enum Reload {
    Failed(StoreError),
    Fatal(String),
}

impl From<StoreError> for Reload {
    fn from(e: StoreError) -> Self {
        Reload::Failed(e)
    }
}

/// What planning reads.
struct State<'a> {
    own: ReplicaId,
    shared: &'a Shared,
    keys: &'a Keys,
    membership: &'a Membership,
}

impl<'a> State<'a> {
    fn of(w: &'a Writer, membership: &'a Membership) -> Self {
        State {
            own: w.identity.replica(),
            shared: &w.shared,
            keys: &w.keys,
            membership,
        }
    }

    fn counter(&self, name: &str) -> GCounter {
        self.shared
            .memory
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .unwrap_or_default()
    }
}

/// Decides one batch from queued operations; does no I/O.
fn plan(ops: Vec<Op>, state: &State<'_>, now_ms: u64) -> Plan {
    let mut plan = Plan::default();
    let mut membership = state.membership.clone();
    let head = state.shared.head.load(Ordering::Acquire);
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
                let mut changed = Vec::new();
                for (name, theirs) in merge.counters {
                    let mut c = plan
                        .batch
                        .counters
                        .get(&name)
                        .cloned()
                        .unwrap_or_else(|| state.counter(&name));
                    if c.merge(&theirs) {
                        plan.batch.counters.insert(name.clone(), c);
                        changed.push(name);
                    }
                }
                let needs_commit = !changed.is_empty() || merge.mark.is_some();
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
            Op::Close { .. } => unreachable!("filtered by run"),
        }
    }
    if !plan.batch.keys_put.is_empty() {
        plan.batch.keys_del = state.keys.expired(now_ms, plan.batch.keys_put.len());
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
    let mut staged: BTreeMap<String, GCounter> = BTreeMap::new();
    for (name, amount) in &items {
        let mut c = staged
            .get(name)
            .or_else(|| plan.batch.counters.get(name))
            .cloned()
            .unwrap_or_else(|| state.counter(name));
        if let Err(e) = c.increment(state.own, *amount) {
            return (Err(StoreError::Overflow(e)), false);
        }
        staged.insert(name.clone(), c);
    }
    let values: Vec<u128> = items.iter().map(|(n, _)| staged[n].value()).collect();
    let mut wrote = false;
    for (name, c) in staged {
        if items.iter().any(|(n, a)| n == &name && *a > 0) {
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
