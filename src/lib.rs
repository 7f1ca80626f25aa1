//! tally: a highly available, partition-tolerant database of named
//! grow-only counters.
//!
//! Layers, each calling only downward:
//! - [`crdt`]: the G-Counter, pure.
//! - [`cluster`]: actor addresses, config versions and hand-offs, pure;
//!   [`input`]: what a client may send (names, amounts, keys, durations), pure.
//! - [`storage`]: durable redb store with group commit and a change index.
//! - [`proto`] and [`transport`]: the node-to-node messages and the seam that carries them.
//! - [`replication`]: push and anti-entropy tasks per peer.
//! - [`node`]: wiring, membership, consistent reads, shutdown.
//! - [`api`]: HTTP routes and error mapping; [`server`]: the accept loop and its limits.
//! - [`metrics`]: Prometheus metrics recorded by every layer.
//! - [`cli`]: flags, environment and the `demo` command.
//! - [`client`]: the command-line client (`tally inc`, `get`, `status`, `config`, `ls`).

pub mod api;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod crdt;
pub mod daemon;
pub mod input;
pub mod messenger;
pub mod metrics;
pub mod node;
pub mod proto;
pub mod replication;
pub mod server;
pub mod storage;
pub mod transport;
