//! tally: a highly available, partition-tolerant database of named
//! grow-only counters.
//!
//! Layers, bottom to top; each uses only the ones above it in this list
//! (`tests/layering.rs` checks it):
//! - Below them all, the crate `tally_client`: the public vocabulary
//!   (`tally_client::types`), one HTTP request to a node's public routes
//!   (`tally_client::exchange`) and the client side of TLS, shared with
//!   every client.
//! - [`crdt`]: the G-Counter; [`input`]: what a client may send; [`cluster`]:
//!   actor addresses, configs, membership and hand-offs. All pure.
//! - [`metrics`]: Prometheus metrics recorded by every layer.
//! - [`tls`]: certificates, keys and the TLS configs of both sides, reloaded
//!   when their files change; [`auth`]: client tokens, their scopes and the
//!   audit log.
//! - [`storage`]: durable redb store with group commit, a change index, and
//!   recovery from disk faults.
//! - [`proto`] and [`transport`]: the node-to-node messages and the seam
//!   that carries them; [`messenger`]: a call with this node's envelope.
//! - [`replication`]: a pure per-peer core and the push/pull tasks around it.
//! - [`node`]: increments, consistent reads, membership, peers' calls, shutdown.
//! - [`api`]: HTTP routes, the public vocabulary and error mapping;
//!   [`server`]: the accept loop and its limits; [`daemon`]: one process.
//! - [`client`]: the command-line client; [`backup`]: the backup file;
//!   [`cli`]: flags, environment, `demo`.

pub mod api;
pub mod auth;
pub mod backup;
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
pub mod tls;
pub mod transport;
