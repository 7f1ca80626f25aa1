//! A Rust client for tally, the database of named grow-only counters.
//!
//! [`Client`] talks to the nodes of a cluster over HTTP or HTTPS, with a
//! client token when the nodes require one:
//! - increments carry an idempotency key the client makes, so a retry
//!   after a lost answer is applied once; a retry goes to the same node
//!   (keys are remembered per node), or to the next one only when the
//!   request cannot have reached the first;
//! - reads fail over from node to node;
//! - a consistent read that cannot hear from every node is
//!   [`Error::Incomplete`], with the nodes it could not hear from and the
//!   best value it knew.
//!
//! ```no_run
//! # async fn run() -> Result<(), tally_client::Error> {
//! let client = tally_client::Client::builder()
//!     .node("http://10.0.0.1:7777")?
//!     .node("10.0.0.2")?
//!     .build()?;
//! let now = client.increment("visits", 5).await?;
//! let total = client.consistent_value("visits").await?;
//! assert!(total >= u128::from(5u64) && now.value >= 5);
//! # Ok(())
//! # }
//! ```
//!
//! The modules below are the vocabulary and plumbing the client is made
//! of, shared with the tally node: [`types`] (paths, headers, limits and
//! every JSON body), [`exchange`] (one request with a deadline) and
//! [`tls`] (the connector for `https://`).

mod client;
pub mod exchange;
pub mod tls;
pub mod types;

pub use client::{Builder, Client, Error, Incremented};
