//! The node-to-node protocol: one request/response pair per call, JSON over
//! `POST /_internal/v1/rpc`.
//!
//! Every request carries the protocol version, who sent it and the sender's
//! membership (config plus what is known of hand-offs), and every response
//! says who answered and carries the responder's membership when it would
//! change the sender's: membership changes therefore ride on ordinary
//! traffic and reach every node without a separate gossip layer.

use serde::{Deserialize, Serialize};

use crate::cluster::Membership;
pub use crate::crdt::ReplicaId;
use crate::crdt::{Component, GCounter};

pub const PROTOCOL_VERSION: u32 = 2;
/// The prefix of every internal route; it cannot collide with the public API.
/// The server counts a connection whose first request is under it against
/// the peer budget (see [`crate::server`]).
pub const INTERNAL_PREFIX: &str = "/_internal/";
/// The path of the one internal route, under [`INTERNAL_PREFIX`].
pub const RPC_PATH: &str = "/_internal/v1/rpc";
/// Header carrying the cluster secret on `/config` and internal calls.
pub const SECRET_HEADER: &str = "x-tally-secret";
/// Most names in one push or one pull page.
pub const MAX_NAMES_PER_MESSAGE: usize = 10_000;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireCounter {
    pub name: String,
    pub components: Vec<Component>,
}

impl WireCounter {
    pub fn new(name: String, counter: &GCounter) -> Self {
        WireCounter {
            name,
            components: counter.into(),
        }
    }

    pub fn into_parts(self) -> (String, GCounter) {
        (self.name, self.components.into_iter().collect())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Who are you? Used to find which actor is this node itself.
    Hello,
    /// Counters whose own component changed at the sender.
    Push { counters: Vec<WireCounter> },
    /// Anti-entropy: the responder's changes after `since`, valid only if the
    /// responder's incarnation is still `incarnation`.
    Pull {
        incarnation: u64,
        since: u64,
        limit: usize,
    },
    /// The responder's current state of one counter (consistent reads).
    Read { name: String },
    /// The same for many counters at once (reads gathered per peer), at
    /// most [`MAX_NAMES_PER_MESSAGE`]; answered with `Counters` in order.
    ReadMany { names: Vec<String> },
    /// Adopt this membership if it is newer (it travels in the envelope).
    Config,
    /// How far the responder has durably merged the asker's changes (the
    /// asker's own sequence, for this incarnation of the asker): a leaving
    /// node confirms its hand-off with it.
    Mark { incarnation: u64 },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Response {
    Ack,
    Changes {
        counters: Vec<WireCounter>,
        next: u64,
        head: u64,
        more: bool,
    },
    Counter {
        components: Vec<Component>,
    },
    Counters {
        counters: Vec<Vec<Component>>,
    },
    Mark {
        seq: u64,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub v: u32,
    pub from: ReplicaId,
    pub membership: Membership,
    pub req: Request,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResponseEnvelope {
    pub v: u32,
    pub from: ReplicaId,
    pub membership: Option<Membership>,
    pub resp: Response,
}

/// Decodes a request envelope: the same answer as `serde_json::from_slice`,
/// faster for the large messages. Serde decodes an internally tagged enum
/// (`{"op": "push", ...}`) by buffering the whole object and decoding it a
/// second time; here the tag is read first (skipping the rest without
/// allocating) and a large message is then decoded straight into its
/// variant. Small and unknown messages go through the derived decoder.
pub fn decode_request(bytes: &[u8]) -> serde_json::Result<RequestEnvelope> {
    #[derive(Deserialize)]
    struct Raw<'a> {
        v: u32,
        from: ReplicaId,
        membership: Membership,
        #[serde(borrow)]
        req: &'a serde_json::value::RawValue,
    }
    let raw: Raw<'_> = serde_json::from_slice(bytes)?;
    let json = raw.req.get();
    let req = match op_of(json)?.as_ref() {
        "push" => {
            #[derive(Deserialize)]
            struct Push {
                counters: Vec<WireCounter>,
            }
            let Push { counters } = serde_json::from_str(json)?;
            Request::Push { counters }
        }
        "read_many" => {
            #[derive(Deserialize)]
            struct ReadMany {
                names: Vec<String>,
            }
            let ReadMany { names } = serde_json::from_str(json)?;
            Request::ReadMany { names }
        }
        _ => serde_json::from_str(json)?,
    };
    Ok(RequestEnvelope {
        v: raw.v,
        from: raw.from,
        membership: raw.membership,
        req,
    })
}

/// Decodes a response envelope, like [`decode_request`].
pub fn decode_response(bytes: &[u8]) -> serde_json::Result<ResponseEnvelope> {
    #[derive(Deserialize)]
    struct Raw<'a> {
        v: u32,
        from: ReplicaId,
        membership: Option<Membership>,
        #[serde(borrow)]
        resp: &'a serde_json::value::RawValue,
    }
    let raw: Raw<'_> = serde_json::from_slice(bytes)?;
    let json = raw.resp.get();
    let resp = match op_of(json)?.as_ref() {
        "changes" => {
            #[derive(Deserialize)]
            struct Changes {
                counters: Vec<WireCounter>,
                next: u64,
                head: u64,
                more: bool,
            }
            let Changes {
                counters,
                next,
                head,
                more,
            } = serde_json::from_str(json)?;
            Response::Changes {
                counters,
                next,
                head,
                more,
            }
        }
        "counters" => {
            #[derive(Deserialize)]
            struct Counters {
                counters: Vec<Vec<Component>>,
            }
            let Counters { counters } = serde_json::from_str(json)?;
            Response::Counters { counters }
        }
        _ => serde_json::from_str(json)?,
    };
    Ok(ResponseEnvelope {
        v: raw.v,
        from: raw.from,
        membership: raw.membership,
        resp,
    })
}

/// The `op` of a tagged message, read without decoding the rest.
fn op_of(json: &str) -> serde_json::Result<std::borrow::Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Op<'a> {
        #[serde(borrow)]
        op: std::borrow::Cow<'a, str>,
    }
    // A message without an `op` is refused by the derived decoder, with its
    // own error.
    match serde_json::from_str::<Op<'_>>(json) {
        Ok(Op { op }) => Ok(op),
        Err(_) => Ok(std::borrow::Cow::Borrowed("")),
    }
}
