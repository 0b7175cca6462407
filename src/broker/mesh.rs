//! Cross-shard messages and the outbox that holds them: plain data, no tasks and no I/O.
//!
//! Every pair of shards is joined by a bounded lock-free SPSC queue (the runtime's channel mesh)
//! carrying batches. A shard never waits on a send: messages for a peer go into that peer's
//! outbox, and the runtime moves outbox batches into the queue.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use core_router::interest::{InterestDelta, ShardSet};

use crate::codec::{MqttStr, QoS};
use crate::session::{Message, Session};

/// One message between shards. Payloads travel as `Arc<Message>`: never copied.
#[derive(Debug)]
pub enum ShardMsg {
    /// A publish matched by the receiving shard's interest; it fans out to its local subscribers.
    Publish(Arc<Message>),
    /// A change in the sending shard's interest (first subscriber to a filter, or last gone).
    Interest(InterestDelta),
    /// To a topic's owner shard: set (`Some`) or clear (`None`) the retained message.
    RetainUpdate {
        /// Topic.
        topic: MqttStr,
        /// New retained message.
        message: Option<Arc<Message>>,
        /// Shard and token to answer with [`ShardMsg::RetainAck`] once applied.
        ack: Option<(u16, u64)>,
    },
    /// The owner applied (and replicated) the retained update `token`.
    RetainAck {
        /// Token from the update.
        token: u64,
    },
    /// The sender installed its recovered sessions (and sent their subscriptions' interest
    /// before this): once every peer said so, the receiver may accept clients.
    Recovered,
    /// Answer with `StoreAck` once everything you journaled so far is durable (the deliveries
    /// of the publishes sent to you before this).
    StoreBarrier {
        /// Shard to answer.
        from: u16,
        /// Barrier token.
        token: u64,
        /// Sent by a shard passing on a barrier to where it forwarded deliveries (not by the
        /// publisher's shard): such a barrier never waits for relays already under way, so
        /// two shards relaying to each other never wait on each other.
        relayed: bool,
    },
    /// The publisher's shard recorded the packet id of a QoS 2 publish routed to you: drop
    /// its origin entry, and answer with `StoreAck` once that is durable.
    OriginCommitted {
        /// Shard to answer.
        from: u16,
        /// Token of the answer.
        token: u64,
        /// The publisher's client id.
        publisher: MqttStr,
        /// Its packet id.
        packet_id: u16,
    },
    /// Answer to `StoreBarrier` (and `OriginCommitted`).
    StoreAck {
        /// Barrier token.
        token: u64,
    },
    /// Answer with `Pong` once everything sent to you before this has been applied.
    Ping {
        /// Shard to answer.
        from: u16,
        /// Barrier token.
        token: u64,
    },
    /// Answer to `Ping`.
    Pong {
        /// Barrier token.
        token: u64,
    },
    /// From the owner shard to every replica, in the owner's order.
    RetainApply {
        /// Topic.
        topic: MqttStr,
        /// New retained message.
        message: Option<Arc<Message>>,
    },
    /// Start-up: retained messages the owner recovered, in chunks (one message per topic
    /// would queue a million messages for each peer).
    RetainRecovered {
        /// Topics and their messages.
        messages: Arc<[(MqttStr, Arc<Message>)]>,
    },
    /// Shard `shard` gained its first (`added`) or lost its last member of a shared group.
    SharedInterest {
        /// The group's full `$share/{group}/{filter}`.
        filter: MqttStr,
        /// The shard.
        shard: u16,
        /// Gained or lost.
        added: bool,
    },
    /// A message for one member of `group` on the receiving shard.
    SharedPublish {
        /// The group's full `$share/{group}/{filter}`.
        group: MqttStr,
        /// The message.
        message: Arc<Message>,
    },
    /// To the client id's home shard: a connection on `shard` wants `client_id`.
    Claim {
        /// Client id.
        client_id: MqttStr,
        /// Identifies this claim (and later the session it creates).
        token: u64,
        /// Shard of the connecting client.
        shard: u16,
        /// Clean start requested.
        clean_start: bool,
        /// The user name of the connecting client: a client id belongs to the user whose
        /// session holds it (checked when a password file authenticates user names).
        username: Option<MqttStr>,
    },
    /// From the home shard to the current owner: give the session to `new_shard`.
    TakeOver {
        /// Client id.
        client_id: MqttStr,
        /// Token of the owner's claim.
        old_token: u64,
        /// Shard of the new connection.
        new_shard: u16,
        /// Token of the new claim.
        new_token: u64,
        /// Clean start requested: the session is discarded instead of moved.
        clean_start: bool,
    },
    /// The claim `token` succeeded, with the previous session if it continues.
    Granted {
        /// The claim.
        token: u64,
        /// The session to resume.
        session: Option<Box<Session>>,
        /// How the previous owner handed the session over, when it continues.
        handover: Option<HandoverKind>,
        /// What the session received recently on its way (deduplication during moves).
        recent: Option<Box<RecentDeliveries>>,
        /// The QoS 2 publishes the session has whose publishers have not recorded them yet
        /// (its origin marks on the old shard): a resend after a crash must skip it here too.
        origins: Vec<OriginMark>,
    },
    /// A delivery that reached the stub of a session that moved to the receiving shard.
    Forward {
        /// Client id of the session.
        client_id: MqttStr,
        /// Claim token the session now has.
        token: u64,
        /// The message.
        message: Arc<Message>,
        /// QoS to deliver at.
        qos: QoS,
        /// Retain flag to deliver with.
        retain: bool,
        /// Subscription identifiers to deliver with.
        subscription_ids: Vec<u32>,
        /// Shared group it came through.
        group: Option<MqttStr>,
    },
    /// To the old owner: every shard now routes to the moved session; drop the stub and
    /// answer with [`ShardMsg::StubGone`].
    StubDone {
        /// Client id of the session.
        client_id: MqttStr,
        /// Claim token of the move.
        token: u64,
        /// Shard to answer.
        from: u16,
    },
    /// To the new owner: the stub is gone, and every delivery it forwarded was sent before
    /// this message. The move is complete.
    StubGone {
        /// Client id of the session.
        client_id: MqttStr,
        /// Claim token of the move.
        token: u64,
    },
    /// To the home shard: the claim `token` has settled (its session is installed on the
    /// claimant and no forwarding stub points at it any more); the next takeover may start.
    Settled {
        /// Client id.
        client_id: MqttStr,
        /// The claim.
        token: u64,
    },
    /// From the home shard to a claimant: a newer claim for the same client id arrived while
    /// this one waited its turn (`ServerBusy`), or the client id belongs to another user
    /// (`NotAuthorized`); the connection is refused without a session.
    Denied {
        /// The claim.
        token: u64,
        /// The CONNACK reason code.
        reason: crate::codec::ReasonCode,
    },
    /// To the home shard: the session created by claim `token` has ended.
    Release {
        /// Client id.
        client_id: MqttStr,
        /// The claim that created it.
        token: u64,
    },
}

/// Messages a session received recently, for deduplication during a move between shards: a
/// message can reach it both directly and through the old shard's stub. The set travels with
/// the session when it moves on, and starts with what the session still holds. Identity is the
/// message's allocation (one `Arc` per published message, shared by every path); the `Arc`s
/// are kept so an address cannot be reused while it is remembered.
#[derive(Debug, Default)]
pub struct RecentDeliveries {
    seen: HashSet<*const Message>,
    order: VecDeque<Arc<Message>>,
    /// While the session's new shard waits for every peer to acknowledge the move (a barrier):
    /// the peers that have, whose direct publishes may reach the session. A peer's publishes
    /// sent before that reached the session through the old shard's stub instead.
    gate: Option<ShardSet>,
}

impl RecentDeliveries {
    /// Whether `message` is new to the session (and remembers it). Constant time; at most
    /// `MOVE_DEDUP_CAPACITY` messages are remembered.
    pub fn first_time(&mut self, message: &Arc<Message>) -> bool {
        if !self.seen.insert(Arc::as_ptr(message)) {
            return false;
        }
        if self.order.len() >= MOVE_DEDUP_CAPACITY {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&Arc::as_ptr(&oldest));
            }
        }
        self.order.push_back(Arc::clone(message));
        true
    }

    /// Remembers `message` as received.
    pub fn remember(&mut self, message: &Arc<Message>) {
        self.first_time(message);
    }

    /// Starts holding back direct publishes from peers until each acknowledges the move.
    pub fn close_gate(&mut self) {
        self.gate = Some(ShardSet::default());
    }

    /// `peer` has acknowledged the move.
    pub fn open_for(&mut self, peer: usize) {
        if let Some(gate) = self.gate.as_mut() {
            gate.insert(peer);
        }
    }

    /// Every peer has acknowledged the move.
    pub fn open_gate(&mut self) {
        self.gate = None;
    }

    /// Whether a direct publish from `peer` must not reach the session yet.
    pub fn holds_back(&self, peer: usize) -> bool {
        self.gate.as_ref().is_some_and(|gate| !gate.contains(peer))
    }
}

// Only an address, used for identity while the `Arc` is held in `order`: never dereferenced.
// SAFETY: the pointers are compared, never read, so sending them between shards is sound.
unsafe impl Send for RecentDeliveries {}

/// Most messages remembered for deduplication per moving session.
pub const MOVE_DEDUP_CAPACITY: usize = 65_536;

/// How a continuing session was handed over on takeover.
#[derive(Debug, Clone, Copy)]
pub enum HandoverKind {
    /// Same shard: the session stays in this slot.
    InPlace(super::handles::SessionId),
    /// From this shard, which keeps a forwarding stub until told `StubDone`.
    Stub(u16),
}

/// A QoS 2 publish a moved session already has (see `broker/shard/origins.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginMark {
    /// The publisher's client id.
    pub publisher: MqttStr,
    /// Its packet id.
    pub packet_id: u16,
    /// CRC-32C of topic and payload.
    pub digest: u32,
}

/// What the queues carry.
pub type Batch = Vec<ShardMsg>;

/// Outbox length (messages, any peer) past which the shard stops reading client sockets.
pub const OUTBOX_HIGH_WATER: usize = 64 * 1024;
/// Outbox length under which (for every peer) reading resumes.
pub const OUTBOX_LOW_WATER: usize = 16 * 1024;

/// A shard's messages for its peers, waiting for the runtime to move them into the mesh.
/// Sending never blocks: a peer that falls behind makes its outbox grow past the high-water
/// mark, and the shard stops reading client sockets until it drains (backpressure that reaches
/// the publishers instead of memory growing without bound).
#[derive(Debug)]
pub struct Outbox {
    queues: Vec<VecDeque<ShardMsg>>,
    backpressured: bool,
}

impl Outbox {
    /// Empty outboxes for `shards` peers (this shard's own slot stays unused).
    pub fn new(shards: usize) -> Self {
        Outbox {
            queues: (0..shards).map(|_| VecDeque::new()).collect(),
            backpressured: false,
        }
    }

    /// Queues `message` for `peer`. Returns true when this pushed the outbox past its
    /// high-water mark (backpressure begins).
    pub fn push(&mut self, peer: usize, message: ShardMsg) -> bool {
        let Some(queue) = self.queues.get_mut(peer) else {
            return false;
        };
        queue.push_back(message);
        if queue.len() > OUTBOX_HIGH_WATER && !self.backpressured {
            self.backpressured = true;
            return true;
        }
        false
    }

    /// Whether messages wait for `peer`.
    pub fn has_pending(&self, peer: usize) -> bool {
        self.queues.get(peer).is_some_and(|q| !q.is_empty())
    }

    /// Up to `max` of the oldest messages for `peer`, in order.
    pub fn take_batch(&mut self, peer: usize, max: usize) -> Option<Batch> {
        let queue = self.queues.get_mut(peer)?;
        if queue.is_empty() {
            return None;
        }
        let take = queue.len().min(max);
        Some(queue.drain(..take).collect())
    }

    /// The oldest message for `peer` (simulations deliver one at a time).
    pub fn pop(&mut self, peer: usize) -> Option<ShardMsg> {
        self.queues.get_mut(peer)?.pop_front()
    }

    /// Whether reads are paused for backpressure.
    pub fn backpressured(&self) -> bool {
        self.backpressured
    }

    /// Ends backpressure once every outbox is under the low-water mark. Returns true when it
    /// just ended.
    pub fn relieve(&mut self) -> bool {
        if self.backpressured && self.queues.iter().all(|q| q.len() < OUTBOX_LOW_WATER) {
            self.backpressured = false;
            return true;
        }
        false
    }
}
