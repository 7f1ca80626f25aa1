//! The node-to-node protocol: one request/response pair per call, in one
//! of two encodings of the same messages:
//! - protocol 3, binary ([`binary`]), over `POST /_internal/v3/rpc`;
//! - protocol 2, JSON, over `POST /_internal/v1/rpc`, which every version
//!   since e3a8b29 speaks.
//!
//! A node answers both. It calls a peer in protocol 3 and, when the peer
//! does not know that route (404 or 405: a node of an older version), in
//! protocol 2 from then on, trying 3 again now and then (see
//! [`crate::transport`]): two nodes speak the newest version both know,
//! through a rolling upgrade and a roll-back alike.
//!
//! Every request carries the protocol version, who sent it and the sender's
//! membership (config plus what is known of hand-offs), and every response
//! says who answered and carries the responder's membership when it would
//! change the sender's: membership changes therefore ride on ordinary
//! traffic and reach every node without a separate gossip layer.

use serde::{Deserialize, Serialize};

pub use tally_client::types::{INTERNAL_PREFIX, RPC_PATH, RPC_PATH_V3, SECRET_HEADER};

use crate::cluster::Membership;
pub use crate::crdt::ReplicaId;
use crate::crdt::{Component, GCounter};

pub mod binary;

/// The newest version this node speaks: [`binary`].
pub const PROTOCOL_VERSION: u32 = binary::VERSION;
/// The JSON version, the newest that versions before protocol 3 speak.
pub const PROTOCOL_JSON: u32 = 2;

/// Whether this node speaks protocol `v`.
pub fn speaks(v: u32) -> bool {
    v == PROTOCOL_JSON || v == PROTOCOL_VERSION
}
/// The media type of protocol 3's messages.
pub const BINARY_TYPE: &str = "application/x-tally-3";
/// Most names in one push or one pull page.
pub const MAX_NAMES_PER_MESSAGE: usize = 10_000;
/// Most components in one push, all its counters together. A push is
/// unasked for, so what one can add to this node is bounded here; a sender
/// with more to say sends the rest in later pushes or leaves it to
/// anti-entropy (whose pages are bounded by names and bytes).
pub const MAX_COMPONENTS_PER_PUSH: usize = 65_536;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireCounter {
    pub name: String,
    #[serde(deserialize_with = "bounded::<_, _, MAX_COMPONENTS_PER_PUSH>")]
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
    /// A pull sent while the page before it still merges: the responder's
    /// changes after `start`, while `since` says, as in `Pull`, how far the
    /// asker durably holds them (`since <= start`). Added to protocols 2
    /// and 3 after they shipped: a node that does not know it refuses it
    /// (400), and the asker goes on with `Pull`.
    PullAhead {
        incarnation: u64,
        since: u64,
        start: u64,
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
    /// The responder's counters with names after `after` (all of them when
    /// empty), in name order, at most `limit` (at most
    /// [`MAX_LIST`]): a page of a consistent listing (backups).
    List { after: String, limit: usize },
}

/// Most counters in one `List` page.
pub const MAX_LIST: usize = 1000;

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
    /// The answer to `List`: `more` when counters past the last one exist.
    Page {
        counters: Vec<WireCounter>,
        more: bool,
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

/// Encodes a request in protocol 2 (JSON), whatever version it was made
/// for: the messages are the same.
pub fn encode_request_json(env: &RequestEnvelope) -> Vec<u8> {
    #[derive(Serialize)]
    struct Json<'a> {
        v: u32,
        from: ReplicaId,
        membership: &'a Membership,
        req: &'a Request,
    }
    serde_json::to_vec(&Json {
        v: PROTOCOL_JSON,
        from: env.from,
        membership: &env.membership,
        req: &env.req,
    })
    .expect("requests serialize")
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
                #[serde(deserialize_with = "bounded::<_, _, MAX_NAMES_PER_MESSAGE>")]
                counters: Vec<WireCounter>,
            }
            let Push { counters } = serde_json::from_str(json)?;
            let components: usize = counters.iter().map(|c| c.components.len()).sum();
            if components > MAX_COMPONENTS_PER_PUSH {
                return Err(serde::de::Error::custom(format!(
                    "a push carries at most {MAX_COMPONENTS_PER_PUSH} components, not {components}"
                )));
            }
            Request::Push { counters }
        }
        "read_many" => {
            #[derive(Deserialize)]
            struct ReadMany {
                #[serde(deserialize_with = "bounded::<_, _, MAX_NAMES_PER_MESSAGE>")]
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
                #[serde(deserialize_with = "bounded::<_, _, MAX_NAMES_PER_MESSAGE>")]
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
        "page" => {
            #[derive(Deserialize)]
            struct Page {
                #[serde(deserialize_with = "bounded::<_, _, MAX_LIST>")]
                counters: Vec<WireCounter>,
                more: bool,
            }
            let Page { counters, more } = serde_json::from_str(json)?;
            Response::Page { counters, more }
        }
        "counters" => {
            #[derive(Deserialize)]
            struct Counters {
                #[serde(deserialize_with = "bounded::<_, _, MAX_NAMES_PER_MESSAGE>")]
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

/// Decodes a list of at most `MAX` items, refusing the message at the first
/// one past it: a list never grows beyond its bound while it is decoded.
fn bounded<'de, D, T, const MAX: usize>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Visit<T, const MAX: usize>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>, const MAX: usize> serde::de::Visitor<'de> for Visit<T, MAX> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a list of at most {MAX} items")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX).min(1024));
            while let Some(item) = seq.next_element()? {
                if out.len() == MAX {
                    return Err(serde::de::Error::custom(format!(
                        "a list of more than {MAX} items"
                    )));
                }
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Visit::<T, MAX>(std::marker::PhantomData))
}

/// `names` counters of `components_each` components: a push at a bound.
#[cfg(test)]
fn wide_counters(names: usize, components_each: usize) -> Vec<WireCounter> {
    (0..names)
        .map(|n| WireCounter {
            name: format!("n{n}"),
            components: (0..components_each as u64)
                .map(|i| Component {
                    node: i + 1,
                    incarnation: 1,
                    count: 1,
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_of(names: usize, components_each: usize) -> String {
        let counters = wide_counters(names, components_each);
        serde_json::to_string(&RequestEnvelope {
            v: PROTOCOL_JSON,
            from: ReplicaId {
                node: 2,
                incarnation: 1,
            },
            membership: Membership::default(),
            req: Request::Push { counters },
        })
        .unwrap()
    }

    #[test]
    fn a_push_is_bounded_in_names_and_components_while_decoded() {
        assert!(decode_request(push_of(MAX_NAMES_PER_MESSAGE, 1).as_bytes()).is_ok());
        let names = decode_request(push_of(MAX_NAMES_PER_MESSAGE + 1, 1).as_bytes());
        assert!(names.unwrap_err().to_string().contains("more than"));
        assert!(decode_request(push_of(1, MAX_COMPONENTS_PER_PUSH).as_bytes()).is_ok());
        let one = decode_request(push_of(1, MAX_COMPONENTS_PER_PUSH + 1).as_bytes());
        assert!(one.unwrap_err().to_string().contains("more than"));
        let total = decode_request(push_of(2, MAX_COMPONENTS_PER_PUSH / 2 + 1).as_bytes());
        assert!(total.unwrap_err().to_string().contains("at most"));
    }
}
