//! Protocol 3: the messages of protocol 2 in a compact binary form, sent to
//! [`RPC_PATH_V3`](super::RPC_PATH_V3). The messages mean exactly what they
//! mean in JSON; only their bytes change. A pull page of names with one
//! component each takes about a third of its JSON size, and decoding it
//! allocates only what it keeps.
//!
//! A message is, in order (`varint` is unsigned LEB128, at most 10 bytes,
//! the shortest form only; `u64` is 8 bytes little-endian):
//! - the magic `TLY` and the version byte 3;
//! - the sender or responder: node (`varint`), incarnation (`u64`);
//! - its membership as JSON, prefixed by its length (`varint`); in an
//!   answer, length 0 means none (a request always carries one);
//! - one tag byte naming the request or the answer, and its fields:
//!   names as a length and UTF-8 bytes, lists as a count and their items, a
//!   component as node (`varint`), incarnation (`u64`) and count (`varint`).
//!
//! Tag 8 of a request (`PullAhead`) was added after protocol 3 shipped:
//! an older node refuses it as an unknown tag, and the asker goes on with
//! `Pull` (see `replication`).
//!
//! Nothing is believed before it is checked (G11): every length and count
//! is checked against the bytes left before anything is allocated for it,
//! lists against the same bounds as in JSON (names per message, components
//! per push), and a message with bytes after its end, an unknown tag or a
//! non-shortest varint is refused. What the fields say (names, counts, the
//! membership) is checked afterwards by whoever uses the message, exactly
//! as for JSON.

use crate::cluster::Membership;
use crate::crdt::Component;

use super::{
    MAX_COMPONENTS_PER_PUSH, MAX_LIST, MAX_NAMES_PER_MESSAGE, ReplicaId, Request, RequestEnvelope,
    Response, ResponseEnvelope, WireCounter,
};

/// The version this encoding is.
pub const VERSION: u32 = 3;
/// The first bytes of every message: `TLY` and the version.
const MAGIC: [u8; 4] = *b"TLY\x03";
/// Longest name in bytes (SPEC §2); longer is refused while decoding.
const MAX_NAME: usize = 1024;
/// Longest membership, as JSON, a message may carry.
const MAX_MEMBERSHIP: usize = 4 * 1024 * 1024;

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {at}")]
pub struct DecodeError {
    what: String,
    at: usize,
}

mod tag {
    pub const HELLO: u8 = 0;
    pub const PUSH: u8 = 1;
    pub const PULL: u8 = 2;
    pub const READ: u8 = 3;
    pub const READ_MANY: u8 = 4;
    pub const CONFIG: u8 = 5;
    pub const MARK: u8 = 6;
    pub const LIST: u8 = 7;
    pub const PULL_AHEAD: u8 = 8;

    pub const ACK: u8 = 0;
    pub const CHANGES: u8 = 1;
    pub const COUNTER: u8 = 2;
    pub const COUNTERS: u8 = 3;
    pub const MARK_SEQ: u8 = 4;
    pub const PAGE: u8 = 5;
}

/// Encodes a request.
pub fn encode_request(env: &RequestEnvelope) -> Vec<u8> {
    let mut w = Writer::head(env.from, Some(&env.membership));
    match &env.req {
        Request::Hello => w.byte(tag::HELLO),
        Request::Push { counters } => {
            w.byte(tag::PUSH);
            w.counters(counters);
        }
        Request::Pull {
            incarnation,
            since,
            limit,
        } => {
            w.byte(tag::PULL);
            w.u64(*incarnation);
            w.varint(*since);
            w.varint(*limit as u64);
        }
        Request::PullAhead {
            incarnation,
            since,
            start,
            limit,
        } => {
            w.byte(tag::PULL_AHEAD);
            w.u64(*incarnation);
            w.varint(*since);
            w.varint(*start);
            w.varint(*limit as u64);
        }
        Request::Read { name } => {
            w.byte(tag::READ);
            w.str(name);
        }
        Request::ReadMany { names } => {
            w.byte(tag::READ_MANY);
            w.varint(names.len() as u64);
            for name in names {
                w.str(name);
            }
        }
        Request::Config => w.byte(tag::CONFIG),
        Request::Mark { incarnation } => {
            w.byte(tag::MARK);
            w.u64(*incarnation);
        }
        Request::List { after, limit } => {
            w.byte(tag::LIST);
            w.str(after);
            w.varint(*limit as u64);
        }
    }
    w.0
}

/// Encodes an answer.
pub fn encode_response(env: &ResponseEnvelope) -> Vec<u8> {
    let mut w = Writer::head(env.from, env.membership.as_ref());
    match &env.resp {
        Response::Ack => w.byte(tag::ACK),
        Response::Changes {
            counters,
            next,
            head,
            more,
        } => {
            w.byte(tag::CHANGES);
            w.counters(counters);
            w.varint(*next);
            w.varint(*head);
            w.byte(u8::from(*more));
        }
        Response::Counter { components } => {
            w.byte(tag::COUNTER);
            w.components(components);
        }
        Response::Counters { counters } => {
            w.byte(tag::COUNTERS);
            w.varint(counters.len() as u64);
            for components in counters {
                w.components(components);
            }
        }
        Response::Mark { seq } => {
            w.byte(tag::MARK_SEQ);
            w.varint(*seq);
        }
        Response::Page { counters, more } => {
            w.byte(tag::PAGE);
            w.counters(counters);
            w.byte(u8::from(*more));
        }
    }
    w.0
}

/// Decodes a request; its `v` is [`VERSION`].
pub fn decode_request(bytes: &[u8]) -> Result<RequestEnvelope, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let (from, membership) = r.head()?;
    let membership = membership.ok_or_else(|| r.error("a request without a membership"))?;
    let req = match r.byte()? {
        tag::HELLO => Request::Hello,
        tag::PUSH => {
            let counters = r.counters()?;
            let total: usize = counters.iter().map(|c| c.components.len()).sum();
            if total > MAX_COMPONENTS_PER_PUSH {
                return Err(r.error(&format!(
                    "a push carries at most {MAX_COMPONENTS_PER_PUSH} components, not {total}"
                )));
            }
            Request::Push { counters }
        }
        tag::PULL => Request::Pull {
            incarnation: r.u64()?,
            since: r.varint()?,
            limit: usize::try_from(r.varint()?).map_err(|_| r.error("a limit past usize"))?,
        },
        tag::PULL_AHEAD => Request::PullAhead {
            incarnation: r.u64()?,
            since: r.varint()?,
            start: r.varint()?,
            limit: usize::try_from(r.varint()?).map_err(|_| r.error("a limit past usize"))?,
        },
        tag::READ => Request::Read { name: r.str()? },
        tag::READ_MANY => {
            let n = r.count(MAX_NAMES_PER_MESSAGE, 1)?;
            let mut names = Vec::with_capacity(n);
            for _ in 0..n {
                names.push(r.str()?);
            }
            Request::ReadMany { names }
        }
        tag::CONFIG => Request::Config,
        tag::MARK => Request::Mark {
            incarnation: r.u64()?,
        },
        tag::LIST => Request::List {
            after: r.str()?,
            limit: usize::try_from(r.varint()?).map_err(|_| r.error("a limit past usize"))?,
        },
        other => return Err(r.error(&format!("unknown request {other}"))),
    };
    r.end()?;
    Ok(RequestEnvelope {
        v: VERSION,
        from,
        membership,
        req,
    })
}

/// Decodes an answer; its `v` is [`VERSION`].
pub fn decode_response(bytes: &[u8]) -> Result<ResponseEnvelope, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let (from, membership) = r.head()?;
    let resp = match r.byte()? {
        tag::ACK => Response::Ack,
        tag::CHANGES => Response::Changes {
            counters: r.counters()?,
            next: r.varint()?,
            head: r.varint()?,
            more: r.flag()?,
        },
        tag::PAGE => {
            let counters = r.counters()?;
            if counters.len() > MAX_LIST {
                return Err(r.error(&format!("a page of more than {MAX_LIST} counters")));
            }
            Response::Page {
                counters,
                more: r.flag()?,
            }
        }
        tag::COUNTER => Response::Counter {
            components: r.components()?,
        },
        tag::COUNTERS => {
            let n = r.count(MAX_NAMES_PER_MESSAGE, 1)?;
            let mut counters = Vec::with_capacity(n);
            for _ in 0..n {
                counters.push(r.components()?);
            }
            Response::Counters { counters }
        }
        tag::MARK_SEQ => Response::Mark { seq: r.varint()? },
        other => return Err(r.error(&format!("unknown answer {other}"))),
    };
    r.end()?;
    Ok(ResponseEnvelope {
        v: VERSION,
        from,
        membership,
        resp,
    })
}

struct Writer(Vec<u8>);

impl Writer {
    fn head(from: ReplicaId, membership: Option<&Membership>) -> Writer {
        let mut w = Writer(Vec::with_capacity(256));
        w.0.extend_from_slice(&MAGIC);
        w.varint(from.node);
        w.u64(from.incarnation);
        match membership {
            Some(m) => {
                let json = serde_json::to_vec(m).expect("memberships serialize");
                w.varint(json.len() as u64);
                w.0.extend_from_slice(&json);
            }
            None => w.varint(0),
        }
        w
    }

    fn byte(&mut self, b: u8) {
        self.0.push(b);
    }

    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn str(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }

    fn components(&mut self, components: &[Component]) {
        self.varint(components.len() as u64);
        for c in components {
            self.varint(c.node);
            self.u64(c.incarnation);
            self.varint(c.count);
        }
    }

    fn counters(&mut self, counters: &[WireCounter]) {
        self.varint(counters.len() as u64);
        for c in counters {
            self.str(&c.name);
            self.components(&c.components);
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn error(&self, what: &str) -> DecodeError {
        DecodeError {
            what: what.to_string(),
            at: self.at,
        }
    }

    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if n > self.left() {
            return Err(self.error(&format!("{n} bytes expected, {} left", self.left())));
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.error(&format!("{other} is not a flag"))),
        }
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let start = self.at;
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            // The tenth byte holds bit 63 only.
            if i == 9 && bits > 1 {
                self.at = start;
                return Err(self.error("a varint past 64 bits"));
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    self.at = start;
                    return Err(self.error("a varint not in its shortest form"));
                }
                return Ok(v);
            }
        }
        self.at = start;
        Err(self.error("a varint past 64 bits"))
    }

    /// A count of items that are at least `min_bytes` each and at most `max`.
    fn count(&mut self, max: usize, min_bytes: usize) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        if n > max as u64 {
            return Err(self.error(&format!("a list of {n} items, past its bound of {max}")));
        }
        let n = n as usize;
        if n.saturating_mul(min_bytes) > self.left() {
            return Err(self.error(&format!("a list of {n} items in {} bytes", self.left())));
        }
        Ok(n)
    }

    fn str(&mut self) -> Result<String, DecodeError> {
        let n = self.varint()?;
        if n > MAX_NAME as u64 {
            return Err(self.error(&format!("a name of {n} bytes, past {MAX_NAME}")));
        }
        let bytes = self.take(n as usize)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => Err(self.error("a name that is not UTF-8")),
        }
    }

    fn components(&mut self) -> Result<Vec<Component>, DecodeError> {
        // node, incarnation and count: at least 1 + 8 + 1 bytes.
        let n = self.count(MAX_COMPONENTS_PER_PUSH, 10)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(Component {
                node: self.varint()?,
                incarnation: self.u64()?,
                count: self.varint()?,
            });
        }
        Ok(out)
    }

    fn counters(&mut self) -> Result<Vec<WireCounter>, DecodeError> {
        // A name's length and a count of components: at least 2 bytes.
        let n = self.count(MAX_NAMES_PER_MESSAGE, 2)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(WireCounter {
                name: self.str()?,
                components: self.components()?,
            });
        }
        Ok(out)
    }

    fn head(&mut self) -> Result<(ReplicaId, Option<Membership>), DecodeError> {
        if self.take(4)? != MAGIC {
            self.at = 0;
            return Err(self.error("not a protocol 3 message"));
        }
        let from = ReplicaId {
            node: self.varint()?,
            incarnation: self.u64()?,
        };
        let len = self.varint()?;
        if len > MAX_MEMBERSHIP as u64 {
            return Err(self.error(&format!("a membership of {len} bytes")));
        }
        let membership = match len {
            0 => None,
            n => {
                let at = self.at;
                let json = self.take(n as usize)?;
                let m = serde_json::from_slice(json).map_err(|e| DecodeError {
                    what: format!("a membership that does not decode: {e}"),
                    at,
                })?;
                Some(m)
            }
        };
        Ok((from, membership))
    }

    fn end(&self) -> Result<(), DecodeError> {
        match self.left() {
            0 => Ok(()),
            n => Err(self.error(&format!("{n} bytes after the end of the message"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn replica() -> impl Strategy<Value = ReplicaId> {
        (any::<u64>(), any::<u64>()).prop_map(|(node, incarnation)| ReplicaId { node, incarnation })
    }

    fn component() -> impl Strategy<Value = Component> {
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(node, incarnation, count)| {
            Component {
                node,
                incarnation,
                count,
            }
        })
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-zé/ %]{0,12}"
    }

    fn counters() -> impl Strategy<Value = Vec<WireCounter>> {
        prop::collection::vec(
            (name(), prop::collection::vec(component(), 0..4))
                .prop_map(|(name, components)| WireCounter { name, components }),
            0..5,
        )
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            Just(Request::Hello),
            counters().prop_map(|counters| Request::Push { counters }),
            (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(incarnation, since, limit)| {
                Request::Pull {
                    incarnation,
                    since,
                    limit: limit as usize,
                }
            }),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>()).prop_map(
                |(incarnation, since, start, limit)| Request::PullAhead {
                    incarnation,
                    since,
                    start,
                    limit: limit as usize,
                }
            ),
            name().prop_map(|name| Request::Read { name }),
            prop::collection::vec(name(), 0..5).prop_map(|names| Request::ReadMany { names }),
            Just(Request::Config),
            any::<u64>().prop_map(|incarnation| Request::Mark { incarnation }),
            (name(), any::<u32>()).prop_map(|(after, limit)| Request::List {
                after,
                limit: limit as usize
            }),
        ]
    }

    fn response() -> impl Strategy<Value = Response> {
        prop_oneof![
            Just(Response::Ack),
            (counters(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
                |(counters, next, head, more)| Response::Changes {
                    counters,
                    next,
                    head,
                    more
                }
            ),
            prop::collection::vec(component(), 0..4)
                .prop_map(|components| Response::Counter { components }),
            prop::collection::vec(prop::collection::vec(component(), 0..3), 0..4)
                .prop_map(|counters| Response::Counters { counters }),
            any::<u64>().prop_map(|seq| Response::Mark { seq }),
            (counters(), any::<bool>())
                .prop_map(|(counters, more)| Response::Page { counters, more }),
        ]
    }

    fn nobody() -> ReplicaId {
        ReplicaId {
            node: 0,
            incarnation: 0,
        }
    }

    fn json<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
    }

    fn request_env(from: ReplicaId, req: Request) -> RequestEnvelope {
        RequestEnvelope {
            v: VERSION,
            from,
            membership: Membership::default(),
            req,
        }
    }

    proptest! {
        /// Every message reads back as itself.
        #[test]
        fn requests_and_answers_read_back_as_written(
            from in replica(),
            req in request(),
            resp in response(),
            with_membership in any::<bool>(),
        ) {
            let env = request_env(from, req);
            let back = decode_request(&encode_request(&env)).unwrap();
            prop_assert_eq!(json(&back), json(&env));
            let env = ResponseEnvelope {
                v: VERSION,
                from,
                membership: with_membership.then(Membership::default),
                resp,
            };
            let back = decode_response(&encode_response(&env)).unwrap();
            prop_assert_eq!(json(&back), json(&env));
        }

        /// A request cut short is refused (the encoding is prefix-free: a
        /// decoder reads a message to its end and wants nothing after it).
        /// Cut short or with a byte changed, it may read as some answer, or
        /// the changed one as another request; nothing ever panics.
        #[test]
        fn damaged_messages_are_refused_or_read_never_a_panic(
            from in replica(),
            req in request(),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            xor in 1u8..=255,
        ) {
            let bytes = encode_request(&request_env(from, req));
            let short = &bytes[..cut.index(bytes.len())];
            prop_assert!(decode_request(short).is_err());
            let _ = decode_response(short);
            let mut flipped = bytes.clone();
            let i = flip.index(flipped.len());
            flipped[i] ^= xor;
            let _ = decode_request(&flipped);
            let _ = decode_response(&flipped);
        }

        /// Arbitrary bytes after the magic never panic either.
        #[test]
        fn arbitrary_bytes_never_panic(tail in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&tail);
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
        }
    }

    fn push_of(names: usize, components_each: usize) -> Vec<u8> {
        let counters = super::super::wide_counters(names, components_each);
        encode_request(&request_env(nobody(), Request::Push { counters }))
    }

    /// The same bounds as the JSON decoder: names per message, components
    /// per push, in total and in one counter.
    #[test]
    fn a_push_is_bounded_in_names_and_components() {
        assert!(decode_request(&push_of(MAX_NAMES_PER_MESSAGE, 1)).is_ok());
        let names = decode_request(&push_of(MAX_NAMES_PER_MESSAGE + 1, 1)).unwrap_err();
        assert!(names.to_string().contains("past its bound"), "{names}");
        assert!(decode_request(&push_of(1, MAX_COMPONENTS_PER_PUSH)).is_ok());
        let one = decode_request(&push_of(1, MAX_COMPONENTS_PER_PUSH + 1)).unwrap_err();
        assert!(one.to_string().contains("past its bound"), "{one}");
        let total = decode_request(&push_of(2, MAX_COMPONENTS_PER_PUSH / 2 + 1)).unwrap_err();
        assert!(total.to_string().contains("at most"), "{total}");
    }

    /// A count is checked against the bytes left before anything is
    /// allocated for it: a few bytes cannot ask for a large list.
    #[test]
    fn a_count_larger_than_the_bytes_left_is_refused() {
        let mut w = Writer::head(nobody(), Some(&Membership::default()));
        w.byte(tag::READ_MANY);
        w.varint(MAX_NAMES_PER_MESSAGE as u64);
        let err = decode_request(&w.0).unwrap_err();
        assert!(err.to_string().contains("items in 0 bytes"), "{err}");
    }

    /// Bytes after the end, an unknown tag, a long varint, a name that is
    /// not UTF-8 or too long, another magic: each refused, saying which.
    #[test]
    fn malformed_messages_are_refused_saying_why() {
        let hello = encode_request(&request_env(nobody(), Request::Hello));
        let mut trailing = hello.clone();
        trailing.push(0);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (trailing, "after the end"),
            (
                {
                    let mut b = hello.clone();
                    *b.last_mut().unwrap() = 99;
                    b
                },
                "unknown request 99",
            ),
            (b"TLY\x02".to_vec(), "not a protocol 3 message"),
            (b"{\"v\":2}".to_vec(), "not a protocol 3 message"),
            (
                {
                    let mut b = MAGIC.to_vec();
                    b.extend_from_slice(&[0x80; 11]);
                    b
                },
                "past 64 bits",
            ),
            (
                {
                    let mut b = MAGIC.to_vec();
                    b.extend_from_slice(&[0x81, 0x00]);
                    b
                },
                "shortest form",
            ),
            (
                {
                    let mut w = Writer::head(nobody(), Some(&Membership::default()));
                    w.byte(tag::READ);
                    w.varint(2);
                    w.0.extend_from_slice(&[0xff, 0xfe]);
                    w.0
                },
                "not UTF-8",
            ),
            (
                {
                    let mut w = Writer::head(nobody(), Some(&Membership::default()));
                    w.byte(tag::READ);
                    w.str(&"x".repeat(MAX_NAME + 1));
                    w.0
                },
                "past 1024",
            ),
            (
                {
                    let mut w = Writer::head(nobody(), None);
                    w.byte(tag::HELLO);
                    w.0
                },
                "without a membership",
            ),
        ];
        for (bytes, want) in cases {
            let err = decode_request(&bytes).unwrap_err();
            assert!(err.to_string().contains(want), "{err} (wanted {want:?})");
        }
    }

    /// What protocol 3 is for: a page of pulled names is far smaller than
    /// in JSON.
    #[test]
    fn a_pull_page_is_a_third_of_its_json() {
        let counters: Vec<WireCounter> = (0..1000)
            .map(|n| WireCounter {
                name: format!("name-{n:06}"),
                components: vec![Component {
                    node: 1,
                    incarnation: 0x4476_f239_c183_5c99,
                    count: 1000 + n,
                }],
            })
            .collect();
        let env = ResponseEnvelope {
            v: VERSION,
            from: nobody(),
            membership: None,
            resp: Response::Changes {
                counters,
                next: 1001,
                head: 1001,
                more: false,
            },
        };
        let binary = encode_response(&env).len();
        let json = serde_json::to_vec(&env).unwrap().len();
        assert!(binary * 3 <= json, "binary {binary} bytes, JSON {json}");
        assert!(binary / 1000 < 30, "{} bytes per name", binary / 1000);
    }
}
