//! What the demo sent and what the nodes acknowledged, and `--with-load`:
//! a steady trickle of increments on every node.
//!
//! Each load increment carries an `Idempotency-Key` and is retried on the
//! same node, with the same key, until the node answers: a node that was
//! paused or killed meanwhile applies it once, so the acknowledged total is
//! exact and `consistent_value` can be held to it. An increment still
//! unanswered when the demo ends stays "in doubt": it may or may not have
//! been applied.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::requests::{Client, Reply, post_increment};

/// Names the load increments.
pub const NAMES: [&str; 3] = ["load-a", "load-b", "load-c"];
/// Pause between two increments of one node's load: 5 a second per node.
const PACE: Duration = Duration::from_millis(200);
/// Deadline of one attempt.
const ATTEMPT: Duration = Duration::from_secs(1);
/// Pause before retrying an unanswered increment.
const RETRY: Duration = Duration::from_millis(500);

/// Per name: acknowledged, and sent but not (yet) answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    pub acked: u128,
    pub in_doubt: u128,
}

/// Everything the demo sent, by name and by node. A std mutex: each update
/// is a few additions.
#[derive(Default)]
pub struct Ledger {
    inner: Mutex<Books>,
}

#[derive(Default)]
struct Books {
    by_name: BTreeMap<String, Sent>,
    /// Acknowledged by each node (index = node number - 1), all names.
    by_node: BTreeMap<usize, u128>,
}

impl Ledger {
    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn sending(&self, name: &str, amount: u64) {
        self.books()
            .by_name
            .entry(name.to_string())
            .or_default()
            .in_doubt += u128::from(amount);
    }

    /// Settles an increment `sending` counted: acknowledged by `node`, or
    /// known not applied (`node` is `None`).
    pub fn settle(&self, name: &str, amount: u64, node: Option<usize>) {
        let mut b = self.books();
        let sent = b.by_name.entry(name.to_string()).or_default();
        sent.in_doubt -= u128::from(amount);
        if let Some(node) = node {
            sent.acked += u128::from(amount);
            *b.by_node.entry(node).or_default() += u128::from(amount);
        }
    }

    pub fn of(&self, name: &str) -> Sent {
        self.books().by_name.get(name).copied().unwrap_or_default()
    }

    pub fn acked_by(&self, node: usize) -> u128 {
        self.books().by_node.get(&node).copied().unwrap_or(0)
    }

    pub fn all(&self) -> Vec<(String, Sent)> {
        self.books()
            .by_name
            .iter()
            .map(|(n, s)| (n.clone(), *s))
            .collect()
    }
}

/// Node `node`'s share of the load until `stop`: cycles through [`NAMES`].
pub async fn drive(
    client: Client,
    node: usize,
    listen: SocketAddr,
    run: u64,
    ledger: Arc<Ledger>,
    stop: CancellationToken,
) {
    for seq in 0u64.. {
        let name = NAMES[(seq as usize + node) % NAMES.len()];
        let amount = fastrand::u64(1..=5);
        let key = format!("demo-{run:x}-{}-{seq}", node + 1);
        ledger.sending(name, amount);
        loop {
            let reply = tokio::select! {
                r = post_increment(&client, listen, name, amount, Some(&key), ATTEMPT) => r,
                () = stop.cancelled() => return,
            };
            match reply {
                Reply::Value(_) => {
                    ledger.settle(name, amount, Some(node));
                    break;
                }
                // Refused with a 4xx: nothing was applied.
                Reply::Error { status, .. } if (400..500).contains(&status) => {
                    ledger.settle(name, amount, None);
                    break;
                }
                // 5xx or no answer: it may be applied; retry with the key.
                Reply::Error { .. } | Reply::NotSent(_) | Reply::NoAnswer(_) => {}
            }
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                () = stop.cancelled() => return,
            }
        }
        tokio::select! {
            () = tokio::time::sleep(PACE) => {}
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_counts_what_was_acknowledged_and_what_is_in_doubt() {
        let l = Ledger::default();
        l.sending("a", 5);
        l.sending("a", 2);
        assert_eq!(
            l.of("a"),
            Sent {
                acked: 0,
                in_doubt: 7
            }
        );
        l.settle("a", 5, Some(1));
        l.settle("a", 2, None);
        assert_eq!(
            l.of("a"),
            Sent {
                acked: 5,
                in_doubt: 0
            }
        );
        assert_eq!((l.acked_by(1), l.acked_by(0)), (5, 0));
        assert_eq!(l.of("b"), Sent::default());
    }
}
