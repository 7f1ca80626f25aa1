//! The functions every request or message passes through: the CRDT merge,
//! the increment body parser, and the internal message codec (JSON).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tally::cluster::{Actor, Membership};
use tally::crdt::{GCounter, ReplicaId};
use tally::input::parse_amount;
use tally::proto::{
    PROTOCOL_VERSION, Request, RequestEnvelope, Response, ResponseEnvelope, WireCounter,
    decode_request, decode_response,
};

/// A counter with one component per node of a three-node cluster.
fn counter(base: u64) -> GCounter {
    let mut c = GCounter::new();
    for node in 1..=3 {
        let replica = ReplicaId {
            node,
            incarnation: 0x5eed_0000 + node,
        };
        c.increment(replica, base * node).unwrap();
    }
    c
}

fn membership() -> Membership {
    let actors = ["10.0.0.1:7777", "10.0.0.2:7777", "10.0.0.3:7777"]
        .iter()
        .map(|a| Actor::parse(a).unwrap())
        .collect();
    Membership::default().post(actors, 1).unwrap()
}

fn crdt(c: &mut Criterion) {
    let ours = counter(10);
    let theirs = counter(11);
    c.bench_function("crdt/merge 3 components", |b| {
        b.iter(|| {
            let mut mine = ours.clone();
            black_box(mine.merge(black_box(&theirs)))
        })
    });
    c.bench_function("crdt/value", |b| b.iter(|| black_box(&ours).value()));
    let encoded = ours.encode();
    c.bench_function("crdt/decode", |b| {
        b.iter(|| GCounter::decode(black_box(&encoded)).unwrap())
    });
}

fn body(c: &mut Criterion) {
    c.bench_function("input/parse_amount \"1\"", |b| {
        b.iter(|| parse_amount(black_box(b"1")).unwrap())
    });
    c.bench_function("input/parse_amount 20 digits + newline", |b| {
        b.iter(|| parse_amount(black_box(b"18446744073709551615\n")).unwrap())
    });
}

fn codec(c: &mut Criterion) {
    let push = RequestEnvelope {
        v: PROTOCOL_VERSION,
        from: ReplicaId {
            node: 1,
            incarnation: 7,
        },
        membership: membership(),
        req: Request::Push {
            counters: (0..100)
                .map(|i| WireCounter::new(format!("name-{i:05}"), &counter(i)))
                .collect(),
        },
    };
    let json = serde_json::to_vec(&push).unwrap();
    c.bench_function("proto/encode push of 100 names", |b| {
        b.iter(|| serde_json::to_vec(black_box(&push)).unwrap())
    });
    c.bench_function("proto/decode push of 100 names, derived", |b| {
        b.iter(|| serde_json::from_slice::<RequestEnvelope>(black_box(&json)).unwrap())
    });
    c.bench_function("proto/decode push of 100 names", |b| {
        b.iter(|| decode_request(black_box(&json)).unwrap())
    });
    let read = RequestEnvelope {
        req: Request::Read {
            name: "visits".into(),
        },
        ..push.clone()
    };
    let json = serde_json::to_vec(&read).unwrap();
    c.bench_function("proto/decode read", |b| {
        b.iter(|| decode_request(black_box(&json)).unwrap())
    });
    let page = ResponseEnvelope {
        v: PROTOCOL_VERSION,
        from: ReplicaId {
            node: 2,
            incarnation: 8,
        },
        membership: None,
        resp: Response::Changes {
            counters: (0..1000)
                .map(|i| WireCounter::new(format!("name-{i:05}"), &counter(i)))
                .collect(),
            next: 1000,
            head: 5000,
            more: true,
        },
    };
    let json = serde_json::to_vec(&page).unwrap();
    c.bench_function("proto/decode pull page of 1000 names, derived", |b| {
        b.iter(|| serde_json::from_slice::<ResponseEnvelope>(black_box(&json)).unwrap())
    });
    c.bench_function("proto/decode pull page of 1000 names", |b| {
        b.iter(|| decode_response(black_box(&json)).unwrap())
    });
}

criterion_group!(benches, crdt, body, codec);
criterion_main!(benches);
