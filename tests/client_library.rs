//! The Rust client library (`tally-client`) against real nodes: increments
//! applied once under a repeated key, reads that fail over, a consistent
//! read's 503 as a typed error, and an increment that no node received
//! going to the next node. Every wait is bounded (the client's own
//! deadline, `eventually`).

mod common;

use std::time::Duration;

use common::*;
use tally_client::{Client, Error};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_client_counts_once_fails_over_and_types_an_incomplete_read() {
    let mut c = Cluster::start_configured("client-lib", 2, &[]);
    let rt = runtime();
    let client = Client::builder()
        .node(&c.url(0, ""))
        .unwrap()
        .node(&c.url(1, ""))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    rt.block_on(async {
        let first = client.increment("x", 3).await.unwrap();
        assert_eq!(
            (first.value, first.node.as_str()),
            (3, c.url(0, "").as_str())
        );
        // The same key again: acknowledged again, applied once.
        let key = Client::new_key();
        assert_eq!(
            client.increment_with_key("x", 4, &key).await.unwrap().value,
            7
        );
        assert_eq!(
            client.increment_with_key("x", 4, &key).await.unwrap().value,
            7
        );
        let batch = client.increment_batch(&[("y", 1), ("z", 2)]).await.unwrap();
        assert_eq!(batch.iter().map(|v| v.value).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(client.consistent_value("x").await.unwrap(), 7);
        let view = client.counter("x").await.unwrap();
        assert_eq!(view.value, 7);
        assert_eq!(client.status().await.unwrap().names, 3);
    });
    c.wait_value(1, "x", 7, Duration::from_secs(20));

    // Node 1 down: its connection is refused, so nothing reached it; the
    // increment goes to node 2, reads fail over, and a consistent read
    // names node 1.
    c.nodes[0].kill();
    rt.block_on(async {
        let moved = client.increment("x", 1).await.unwrap();
        assert_eq!(
            (moved.value, moved.node.as_str()),
            (8, c.url(1, "").as_str())
        );
        assert_eq!(client.value("x").await.unwrap(), 8);
        match client.consistent_value("x").await {
            Err(Error::Incomplete {
                unreachable,
                best_known_value,
                ..
            }) => {
                assert_eq!(unreachable, [c.addrs()[0].clone()]);
                assert_eq!(best_known_value, 8);
            }
            other => panic!("not an incomplete read: {other:?}"),
        }
        // Bad input is refused, typed, and changes nothing.
        assert!(matches!(
            client.increment("", 1).await,
            Err(Error::Refused {
                status: 404 | 400 | 405,
                ..
            })
        ));
    });
    let alone = Client::builder()
        .node(&c.url(0, ""))
        .unwrap()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert!(matches!(
        rt.block_on(alone.increment("x", 1)),
        Err(Error::Unreachable(_))
    ));
    assert_eq!(c.value(1, "x"), 8);
}
