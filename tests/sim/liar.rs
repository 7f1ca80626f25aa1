//! The liar: a host that claims to be a peer and sends the nodes forged
//! internal messages, each of which a node must refuse (SPEC G11).
//!
//! From the start until the heal, every 200–500 ms (seeded), the liar picks
//! a node at random, learns what it needs with honest calls (a `Hello` to
//! learn a node's identity and config, a `Read` to learn what it counted),
//! and sends one forged message:
//!
//! - a push that raises the node's own component of a workload name, to
//!   nearly `u64::MAX` or to 1000 past what it holds (a node that believed
//!   it would show invented increments: G2);
//! - a config more than `MAX_VERSION_STEP` versions ahead of the node's
//!   (or at `u64::MAX - 1`), naming only a host that does not exist (a
//!   config within the step is taken on its word in open mode, by design:
//!   the next post undoes it);
//! - a pull posing as another node, at the node's own incarnation, since
//!   `u64::MAX`: a replica's acknowledgement of increments not yet made;
//! - a push with one component more than a push may carry (once a run: it
//!   is a few megabytes);
//! - a push naming one name more than a message may.
//!
//! Forged messages travel as the JSON body of the internal route and are
//! decoded by the product's own decoder, as the HTTP server does. Each one
//! sent, and what came of it, is recorded in the history; the checker
//! reports every one a node took (`Check::G11ForgedAccepted`).
//!
//! Left out: forged answers (the liar only calls), forged `Read`, `ReadMany`
//! and `Mark` calls, and configs within the version step.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally::cluster::{Actor, ClusterConfig, MAX_VERSION_STEP, Membership, Stamp};
use tally::crdt::Component;
use tally::proto::{
    MAX_COMPONENTS_PER_PUSH, MAX_NAMES_PER_MESSAGE, PROTOCOL_VERSION, ReplicaId, Request,
    RequestEnvelope, Response, ResponseEnvelope, WireCounter,
};

use super::{Frame, History, NAMES, PORT, Plan, Reply, host, now, read_frame, write_frame};

/// Who the liar says it is when it does not pose as a node: no node has this id.
pub const LIAR: ReplicaId = ReplicaId {
    node: 1_000_000,
    incarnation: 1,
};
/// Deadline of each of the liar's calls: a node that is down, paused or
/// cut off is skipped once it passes.
const DEADLINE: Duration = Duration::from_secs(1);
/// Most forged messages in one run (the heal ends the run far sooner).
const MAX_LIES: usize = 1000;
/// Most pushes with too many components in one run: one (it is a few
/// megabytes, which a debug build takes a noticeable time to encode and
/// decode).
const MAX_BIG: usize = 1;
/// How far past `MAX_VERSION_STEP` a forged config goes beyond the version
/// the node reported: more versions than a run makes, so that configs the
/// node learns between its answer and the lie (a node whose folder was
/// lost reports none, then learns the cluster's) cannot bring the lie
/// within the step.
const VERSION_MARGIN: u64 = 64;

/// What a forged message tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lie {
    /// A push that raises the node's own component of a workload name.
    RaiseOwn,
    /// A config more than `MAX_VERSION_STEP` versions ahead of the node's,
    /// naming only a host that does not exist.
    VersionJump,
    /// A pull posing as another node, since past the node's head.
    FakeAck,
    /// A push with `MAX_COMPONENTS_PER_PUSH + 1` components for one name.
    TooManyComponents,
    /// A push naming `MAX_NAMES_PER_MESSAGE + 1` names.
    TooManyNames,
}

impl Lie {
    pub const ALL: [Lie; 5] = [
        Lie::RaiseOwn,
        Lie::VersionJump,
        Lie::FakeAck,
        Lie::TooManyComponents,
        Lie::TooManyNames,
    ];
}

/// What a node answered a forged message.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// It took it: a 200 answer, from the node as it named itself.
    Accepted { from: ReplicaId, resp: String },
    /// It refused it, saying why.
    Refused(String),
    /// No answer: the node was down, paused or cut off, or the deadline passed.
    Unanswered(String),
}

/// One forged message and its answer.
#[derive(Clone, Debug)]
pub struct Forged {
    pub lie: Lie,
    pub node: usize,
    pub start: Duration,
    pub end: Duration,
    /// What was forged, in a few words.
    pub what: String,
    /// Whose identity the lie turns on: the owner of the component a push
    /// raises, or the incarnation a forged pull names. A node that answers
    /// as someone else (it lost its data folder in between) was not lied to.
    pub aimed_at: Option<ReplicaId>,
    pub answer: Answer,
}

impl Forged {
    /// Whether the node took a message it must refuse. A pull that names
    /// an incarnation the node no longer has is answered with an empty
    /// page that tells the asker who the node is, which changes nothing.
    pub fn believed(&self) -> bool {
        match &self.answer {
            Answer::Accepted { from, .. } => match self.lie {
                Lie::RaiseOwn | Lie::FakeAck => self.aimed_at == Some(*from),
                Lie::VersionJump | Lie::TooManyComponents | Lie::TooManyNames => true,
            },
            Answer::Refused(_) | Answer::Unanswered(_) => false,
        }
    }
}

/// One call and its answer: `Err` when none came (the call failed or its
/// deadline passed), `Ok(Err)` when the node refused.
async fn call(x: usize, frame: &Frame) -> Result<Result<ResponseEnvelope, String>, String> {
    let exchange = async {
        let mut s = turmoil::net::TcpStream::connect((host(x).as_str(), PORT))
            .await
            .map_err(|e| e.to_string())?;
        write_frame(&mut s, frame)
            .await
            .map_err(|e| e.to_string())?;
        read_frame::<Reply>(&mut s).await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(DEADLINE, exchange).await {
        Err(_) => Err(format!("no answer within {DEADLINE:?}")),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Reply::Rpc(answer))) => Ok(answer),
        Ok(Ok(other)) => Err(format!("unexpected reply {other:?}")),
    }
}

/// An honest call from the liar's own identity, with no config.
async fn ask(x: usize, req: Request) -> Option<ResponseEnvelope> {
    call(x, &Frame::Rpc(envelope(LIAR, Membership::default(), req)))
        .await
        .ok()?
        .ok()
}

fn envelope(from: ReplicaId, membership: Membership, req: Request) -> RequestEnvelope {
    RequestEnvelope {
        v: PROTOCOL_VERSION,
        from,
        membership,
        req,
    }
}

/// A forged message, ready to send, and what the history says of it.
struct Draft {
    what: String,
    aimed_at: Option<ReplicaId>,
    env: RequestEnvelope,
}

/// Prepares a forged message of kind `lie` for node `x`, with honest calls
/// first where the lie needs to know something; `None` when they went
/// unanswered.
async fn draft(plan: &Plan, rng: &mut fastrand::Rng, x: usize, lie: Lie) -> Option<Draft> {
    let name = NAMES[rng.usize(0..NAMES.len())];
    match lie {
        Lie::RaiseOwn => {
            let huge = rng.bool();
            let below_max = rng.u64(0..1000);
            let who = ask(x, Request::Hello).await?.from;
            let read = ask(
                x,
                Request::Read {
                    name: name.to_string(),
                },
            )
            .await?;
            // A node that lost its folder in between is someone else now.
            let Response::Counter { components } = read.resp else {
                return None;
            };
            if read.from != who {
                return None;
            }
            let held = components
                .iter()
                .find(|c| c.node == who.node && c.incarnation == who.incarnation)
                .map_or(0, |c| c.count);
            let count = if huge {
                u64::MAX - below_max
            } else {
                held.saturating_add(1000)
            };
            let counters = vec![WireCounter {
                name: name.to_string(),
                components: vec![Component {
                    node: who.node,
                    incarnation: who.incarnation,
                    count,
                }],
            }];
            Some(Draft {
                what: format!("{name:?} of {who} raised from {held} to {count}"),
                aimed_at: Some(who),
                env: envelope(LIAR, Membership::default(), Request::Push { counters }),
            })
        }
        Lie::VersionJump => {
            let to_the_end = rng.bool();
            // The node sends its membership back when it is newer than the
            // caller's, which an empty one always is once a config is set.
            let ours = ask(x, Request::Hello)
                .await?
                .membership
                .map_or(0, |m| m.config.stamp.version);
            let version = if to_the_end {
                u64::MAX - 1
            } else {
                ours.saturating_add(MAX_VERSION_STEP + 1 + VERSION_MARGIN)
            };
            let ghost = Actor::parse("ghost.invalid:7777").expect("a valid actor");
            let membership = Membership {
                config: ClusterConfig {
                    stamp: Stamp {
                        version,
                        origin: LIAR.node,
                    },
                    actors: vec![ghost],
                    ..ClusterConfig::default()
                },
                ..Membership::default()
            };
            Some(Draft {
                what: format!(
                    "config version {version} (the node's is {ours}) naming only a ghost"
                ),
                aimed_at: None,
                env: envelope(LIAR, membership, Request::Config),
            })
        }
        Lie::FakeAck => {
            let other = (x + 1 + rng.usize(0..plan.nodes - 1)) % plan.nodes;
            let posing = ask(other, Request::Hello).await?.from;
            let target = ask(x, Request::Hello).await?.from;
            Some(Draft {
                what: format!("pull posing as {posing}, at incarnation {target}, since u64::MAX"),
                aimed_at: Some(target),
                env: envelope(
                    posing,
                    Membership::default(),
                    Request::Pull {
                        incarnation: target.incarnation,
                        since: u64::MAX,
                        limit: 100,
                    },
                ),
            })
        }
        Lie::TooManyComponents => {
            let components = (0..=MAX_COMPONENTS_PER_PUSH as u64)
                .map(|k| Component {
                    node: 2_000_000 + k,
                    incarnation: 1,
                    count: 1,
                })
                .collect();
            let counters = vec![WireCounter {
                name: name.to_string(),
                components,
            }];
            Some(Draft {
                what: format!(
                    "{name:?} with {} fake replicas of count 1",
                    MAX_COMPONENTS_PER_PUSH + 1
                ),
                aimed_at: None,
                env: envelope(LIAR, Membership::default(), Request::Push { counters }),
            })
        }
        Lie::TooManyNames => {
            // No components: the names alone are past the bound.
            let counters = (0..=MAX_NAMES_PER_MESSAGE)
                .map(|k| WireCounter {
                    name: format!("liar-{k}"),
                    components: Vec::new(),
                })
                .collect();
            Some(Draft {
                what: format!("{} names", MAX_NAMES_PER_MESSAGE + 1),
                aimed_at: None,
                env: envelope(LIAR, Membership::default(), Request::Push { counters }),
            })
        }
    }
}

/// Draws the next lie: a raise of the node's own component two times in
/// five, a version jump and a faked acknowledgement one in five each, too
/// many names one in ten, too many components one in ten until it was sent
/// [`MAX_BIG`] times (then a version jump).
fn draw(rng: &mut fastrand::Rng, big_sent: usize) -> Lie {
    match rng.u8(0..10) {
        0..=3 => Lie::RaiseOwn,
        4 | 5 => Lie::VersionJump,
        6 | 7 => Lie::FakeAck,
        8 => Lie::TooManyNames,
        _ if big_sent < MAX_BIG => Lie::TooManyComponents,
        _ => Lie::VersionJump,
    }
}

/// The liar's host: lies until the heal, recording each one in `history`.
pub async fn liar(plan: Plan, history: Arc<Mutex<History>>) {
    let mut rng = fastrand::Rng::with_seed(plan.seed ^ 0x6c69_6172_2121_2121);
    let mut big_sent = 0;
    for _ in 0..MAX_LIES {
        tokio::time::sleep(Duration::from_millis(rng.u64(200..=500))).await;
        if now() >= plan.heal_at {
            break;
        }
        let x = rng.usize(0..plan.nodes);
        let lie = draw(&mut rng, big_sent);
        let Some(draft) = draft(&plan, &mut rng, x, lie).await else {
            continue;
        };
        big_sent += usize::from(lie == Lie::TooManyComponents);
        let body = serde_json::value::to_raw_value(&draft.env).expect("envelopes serialize");
        let start = now();
        let answer = match call(x, &Frame::Forged(body)).await {
            Ok(Ok(env)) => Answer::Accepted {
                from: env.from,
                resp: format!("{:?}", env.resp),
            },
            Ok(Err(e)) => Answer::Refused(e),
            Err(e) => Answer::Unanswered(e),
        };
        history.lock().unwrap().forged.push(Forged {
            lie,
            node: x,
            start,
            end: now(),
            what: draft.what,
            aimed_at: draft.aimed_at,
            answer,
        });
    }
}
