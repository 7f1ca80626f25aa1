//! The single owner of writes: a loop that takes every queued operation,
//! plans one batch from them, commits it once (group commit), then updates
//! the in-memory state and answers every caller.
//!
//! When a commit fails, nothing of it is acknowledged or published and a
//! failure episode starts: storage is reported unhealthy, operations that
//! need a commit are refused at once (the caller answers 503), and the writer
//! reopens the database in the background with backoff (redb's remedy for
//! an I/O error), reloads what the disk holds (a commit reported as failed
//! may have reached the disk; reloading folds it in rather than counting on
//! from a lower value), proves the disk takes writes with a probe commit,
//! and resumes. For a disk engine the loop runs on a thread of its own (see
//! [`spawn`]). If the writer itself dies, the store says so through
//! `Store::stopped`, and the node exits rather than refusing writes forever.

use std::collections::btree_map::Entry;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, error, warn};

use super::idempotency::{KeyRecord, Keys};
use super::plan::{Plan, State, plan};
use super::{
    Batch, Committed, Engine, Image, MAX_BATCH, Op, ReplicaId, Shared, StoreDeps, StoreError,
    StoreOptions, WallClock, run_engine,
};
use crate::metrics::Metrics;

/// First pause before reopening after a failure; doubles up to the maximum.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between recovery attempts: a disk that comes back is in
/// use again within about a second.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

pub(super) struct Writer {
    engine: Arc<dyn Engine>,
    identity: ReplicaId,
    shared: Arc<Shared>,
    keys: Keys,
    window: Duration,
    capacity: usize,
    key_bytes: usize,
    /// Where durable changes are published for replication.
    publish: mpsc::UnboundedSender<Committed>,
    metrics: Metrics,
    clock: WallClock,
    episode: Option<Episode>,
    /// On a thread of its own: engine calls run inline (see [`spawn`]).
    inline: bool,
}

/// A failure in progress.
struct Episode {
    error: Arc<StoreError>,
    attempts: u32,
    next_try: Instant,
}

/// How the writer ended.
enum Finish {
    Closed(oneshot::Sender<()>),
    /// Every handle is gone.
    Dropped,
    Fatal(String),
}

/// What the writer's end looks like to the watcher: how it finished, or
/// the payload of its panic.
type Ended = std::thread::Result<Finish>;

/// Starts the writer and a watcher that reports its unexpected end.
///
/// A disk engine's writer runs on a thread of its own and calls the engine
/// directly: a commit costs no hop to a blocking pool and no wake-up of a
/// runtime task, and nothing else waits behind an fsync. Engines that do
/// not block (memory, simulated disk) keep the writer as a task on the
/// caller's runtime, so that a simulation stays deterministic and paused
/// time reaches it.
pub(super) fn spawn(writer: Writer, rx: mpsc::Receiver<Op>) {
    let shared = writer.shared.clone();
    let ended = if writer.inline {
        on_thread(writer, rx)
    } else {
        on_task(writer, rx)
    };
    tokio::spawn(async move {
        let reason = match ended.await {
            Ok(Ok(Finish::Closed(reply))) => {
                let _ = reply.send(());
                return;
            }
            Ok(Ok(Finish::Dropped)) => return,
            Ok(Ok(Finish::Fatal(reason))) => reason,
            Ok(Err(payload)) => {
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

fn on_task(writer: Writer, rx: mpsc::Receiver<Op>) -> oneshot::Receiver<Ended> {
    let (tx, ended) = oneshot::channel();
    let task = tokio::spawn(writer.run(rx));
    tokio::spawn(async move {
        match task.await {
            Ok(finish) => drop(tx.send(Ok(finish))),
            Err(e) if e.is_panic() => drop(tx.send(Err(e.into_panic()))),
            // Cancelled: dropping `tx` tells the watcher.
            Err(_) => {}
        }
    });
    ended
}

/// Runs the writer on its own thread, under a runtime of its own that only
/// keeps its timers (the backoff between recovery attempts).
fn on_thread(writer: Writer, rx: mpsc::Receiver<Op>) -> oneshot::Receiver<Ended> {
    let (tx, ended) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = tx.send(Ok(Finish::Fatal(format!(
                "could not start the storage writer's runtime: {e}"
            ))));
            return ended;
        }
    };
    let (start_tx, start_rx) =
        std::sync::mpsc::channel::<(Writer, mpsc::Receiver<Op>, oneshot::Sender<Ended>)>();
    let spawned = std::thread::Builder::new()
        .name("tally-writer".into())
        .spawn(move || {
            let Ok((writer, rx, tx)) = start_rx.recv() else {
                return;
            };
            let run = std::panic::AssertUnwindSafe(|| runtime.block_on(Writer::run(writer, rx)));
            let finish: Ended = std::panic::catch_unwind(run);
            let _ = tx.send(finish);
        });
    match spawned {
        Ok(_) => {
            // Handed over only once the thread exists, so that a failed
            // spawn still has the writer's parts to report with.
            let _ = start_tx.send((writer, rx, tx));
        }
        Err(e) => {
            let _ = tx.send(Ok(Finish::Fatal(format!(
                "could not start the storage writer's thread: {e}"
            ))));
        }
    }
    ended
}

impl Writer {
    pub(super) fn new(
        engine: Arc<dyn Engine>,
        identity: ReplicaId,
        shared: Arc<Shared>,
        keys: Vec<(String, KeyRecord)>,
        options: &StoreOptions,
        deps: StoreDeps,
        publish: mpsc::UnboundedSender<Committed>,
    ) -> Self {
        Writer {
            identity,
            shared,
            keys: Keys::new(
                keys,
                options.idempotency_window,
                options.idempotency_capacity,
                options.idempotency_bytes,
            ),
            window: options.idempotency_window,
            capacity: options.idempotency_capacity,
            key_bytes: options.idempotency_bytes,
            publish,
            metrics: deps.metrics,
            clock: deps.clock,
            episode: None,
            inline: engine.blocking(),
            engine,
        }
    }

    /// One engine call: inline on the writer's own thread, otherwise as
    /// any other caller makes it.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Engine) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if !self.inline {
            return run_engine(&self.engine, f).await;
        }
        if let Some(at) = self.engine.ready_at() {
            tokio::time::sleep_until(at).await;
        }
        f(&*self.engine)
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
            let mut rebuild = Vec::new();
            for op in ops {
                match op {
                    Op::Close { reply } => close = close.or(Some(reply)),
                    // Arrived after Close: refused by dropping its reply.
                    _ if close.is_some() => {}
                    Op::Rebuild { reply } => rebuild.push(reply),
                    op => batch.push(op),
                }
            }
            if !rebuild.is_empty() {
                let outcome = self.rebuild().await.map_err(Arc::new);
                for reply in rebuild {
                    let _ = reply.send(outcome.clone().map_err(StoreError::Unavailable));
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
        let head = self.shared.head.load(Ordering::Acquire);
        let mut plan = {
            // Held while the batch is planned: only this thread changes
            // memory, so no reader waits for it (readers share the lock).
            let memory = self.shared.memory.read().unwrap_or_else(|p| p.into_inner());
            let state = State {
                own: self.identity,
                committed: &memory,
                keys: &self.keys,
                membership: &current,
                head,
            };
            plan(ops, &state, self.clock.now_ms())
        };
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
        let result = self.call(move |e| Ok((e.commit(&batch), batch))).await;
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
        for (name, c) in batch.counters {
            // One descent per name, new or held.
            match memory.entry(name.into_boxed_str()) {
                Entry::Occupied(mut held) => *held.get_mut() = c,
                Entry::Vacant(slot) => {
                    slot.insert(c);
                }
            }
        }
        drop(memory);
        if !batch.keys_put.is_empty() || !batch.keys_del.is_empty() {
            self.keys.apply(&batch.keys_del, batch.keys_put);
            self.shared.keys.store(self.keys.len(), Ordering::Relaxed);
        }
        if let Some(m) = batch.membership {
            self.shared.membership.send_replace(Arc::new(m));
        }
        if let Some(me) = batch.me {
            *self.shared.me.lock().unwrap_or_else(|p| p.into_inner()) = Some(me);
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

    /// Replaces the engine's damaged files with what memory holds.
    async fn rebuild(&mut self) -> Result<(), StoreError> {
        let image = Image {
            node: self.identity.node,
            incarnation: self.identity.incarnation,
            counters: self
                .shared
                .memory
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            membership: (**self.shared.membership.borrow()).clone(),
            me: self
                .shared
                .me
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            keys: self.keys.records(),
            head: self.shared.head.load(Ordering::Acquire),
        };
        let head = self.call(move |e| e.rebuild(&image)).await?;
        self.shared.head.store(head, Ordering::Release);
        Ok(())
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
        let node = self.identity.node;
        let reopened = async {
            self.call(|e| e.reopen()).await?;
            self.call(move |e| e.load(node)).await
        };
        let loaded = match reopened.await {
            Err(StoreError::Corrupt(why)) => {
                // Damage found while the node runs: memory holds every
                // counter whole, so the engine is rebuilt from it and
                // nothing is lost.
                error!(damage = %why, "storage damage found while reopening; rebuilding from memory");
                self.shared.health.damage_found(why);
                self.rebuild().await?;
                self.call(move |e| e.load(node)).await?
            }
            other => other?,
        };
        if loaded.incarnation != self.identity.incarnation {
            return Err(Reload::Fatal(format!(
                "the data folder was replaced while the node ran (incarnation {:016x}, expected {:016x})",
                loaded.incarnation, self.identity.incarnation
            )));
        }
        let head = self.call(|e| e.commit(&Batch::default())).await?;
        let mut changed = Vec::new();
        {
            let mut memory = self
                .shared
                .memory
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for (name, theirs) in loaded.counters {
                let mine = memory.entry(name.as_str().into()).or_default();
                if mine.merge(&theirs) {
                    changed.push(name);
                }
            }
        }
        self.keys = Keys::new(loaded.keys, self.window, self.capacity, self.key_bytes);
        self.shared.keys.store(self.keys.len(), Ordering::Relaxed);
        if **self.shared.membership.borrow() != loaded.membership {
            self.shared
                .membership
                .send_replace(Arc::new(loaded.membership));
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
