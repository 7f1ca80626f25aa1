//! One peer at a time while far behind.
//!
//! A node that comes back after missing a million changes finds them at
//! every peer, since each peer merged them too. Pulled from all peers at
//! once, each change is served, sent, decoded and compared once per peer,
//! and the copies after the first change nothing. So a pull whose peer has
//! more than a page for us (`more`) takes the *turn* before it fetches
//! further pages, and the other far-behind pulls wait. When the next one
//! gets the turn, most of what it fetches is already here and costs only a
//! comparison. Nothing is skipped: every peer's changes are still fetched,
//! from its own sequence, one pull after the other.
//!
//! Waiting is bounded twice:
//! - a waiter waits only while the holder makes progress: a holder that
//!   merged no page for `stall` (its peer stopped answering, its merge is
//!   stuck) lets the others go on without the turn;
//! - a holder gives the turn up after [`MAX_TURN_ROUNDS`] rounds in a row,
//!   so a peer written to faster than we can pull cannot keep the others
//!   waiting (the semaphore serves waiters first come, first served).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// Rounds (of up to 64 pages each) a pull keeps the turn for.
pub const MAX_TURN_ROUNDS: u32 = 4;

/// The turn to pull while far behind, shared by a node's pull tasks.
#[derive(Clone)]
pub struct CatchUp {
    turn: Arc<Semaphore>,
    /// Pages merged by holders: a count, so that a waiter misses no
    /// progress made while it was not polling.
    progress: Arc<watch::Sender<u64>>,
}

/// A pull's hold on the turn: the rounds it has had.
pub struct Turn {
    _permit: OwnedSemaphorePermit,
    rounds: u32,
}

impl Default for CatchUp {
    fn default() -> Self {
        CatchUp {
            turn: Arc::new(Semaphore::new(1)),
            progress: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl CatchUp {
    /// Waits for the turn while its holder makes progress; `None` when the
    /// holder made none for `stall` (the caller goes on without the turn).
    pub async fn take(&self, stall: Duration) -> Option<Turn> {
        let acquire = self.turn.clone().acquire_owned();
        tokio::pin!(acquire);
        let mut progress = self.progress.subscribe();
        loop {
            tokio::select! {
                permit = &mut acquire => {
                    // The semaphore is never closed.
                    return permit.ok().map(|p| Turn { _permit: p, rounds: 0 });
                }
                // The sender lives as long as `self`.
                _ = progress.changed() => {}
                _ = tokio::time::sleep(stall) => return None,
            }
        }
    }

    /// The holder merged a page: waiters keep waiting.
    pub fn progressed(&self) {
        self.progress
            .send_modify(|pages| *pages = pages.wrapping_add(1));
    }
}

impl Turn {
    /// A round ended with pages left: whether the turn may be kept for
    /// the next one.
    pub fn keep(&mut self) -> bool {
        self.rounds += 1;
        self.rounds < MAX_TURN_ROUNDS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_waiter_waits_while_the_holder_progresses_then_gets_the_turn() {
        let c = CatchUp::default();
        let held = c.take(STALL).await.expect("free turn");
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.take(STALL).await.is_some() }
        });
        // Ten stalls' worth of time, with progress every half stall.
        for _ in 0..20 {
            tokio::time::sleep(STALL / 2).await;
            assert!(!waiter.is_finished(), "gave up on a holder making progress");
            c.progressed();
        }
        drop(held);
        assert!(waiter.await.unwrap(), "the turn went to the waiter");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_goes_on_without_the_turn_when_the_holder_stalls() {
        let c = CatchUp::default();
        let _held = c.take(STALL).await.expect("free turn");
        let started = tokio::time::Instant::now();
        assert!(c.take(STALL).await.is_none());
        assert_eq!(started.elapsed(), STALL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_is_kept_for_a_bounded_number_of_rounds() {
        let c = CatchUp::default();
        let mut turn = c.take(STALL).await.expect("free turn");
        let kept = (0..10).take_while(|_| turn.keep()).count();
        assert_eq!(kept as u32, MAX_TURN_ROUNDS - 1);
    }
}
