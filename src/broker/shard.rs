//! One shard's state and protocol logic. A shard is single-threaded: its connection tasks, mesh
//! tasks and timer share it through `Rc<RefCell<Shard>>` and never hold the borrow across an
//! `.await`.
//!
//! Ownership rules:
//! - A connection lives on the shard that accepted it; its session lives on the same shard.
//! - Every client id has a *home* shard (`hash(id) % shards`) that records which shard owns the
//!   id's session and arbitrates takeovers, so two racing CONNECTs resolve to exactly one owner.
//! - Retained messages for a topic are serialised by the topic's owner shard and replicated to
//!   every shard, so every replica applies updates of one topic in the same order.
//!
//! # The client-id ownership protocol
//!
//! Every CONNECT becomes a *claim* with a token unique in the process. The home shard keeps one
//! [`Registration`] per client id: the current owner claim, whether it has *settled*, and at
//! most one claim waiting for its turn. Per client id the home shard runs this state machine:
//!
//! ```text
//!  (none) --Claim t--> Granting(t)           Granted{t, no session} to t's shard
//!  Granting(t) --Claim u--> Granting(t)+u    u waits; an earlier waiting claim w is Denied
//!                                            (its clean-start flag carries over to u)
//!  Granting(t) --Settled t--> Owned(t)       or, with u waiting: TakeOver{t -> u} to t's
//!                                            shard, state Granting(u)
//!  Owned(t) --Claim u--> Granting(u)         TakeOver{t -> u} to t's shard
//!  any(t) --Release t--> (none)              or, with u waiting: Granted{u, no session},
//!                                            state Granting(u)
//! ```
//!
//! On the shards: a claimant that gets `Granted{t}` installs the session (moved or fresh) and
//! sends `Settled{t}` once nothing can still be addressed to the previous place: at once for a
//! fresh or in-place session, after `StubGone` when the session moved from another shard (the
//! old shard keeps a forwarding stub until every shard routes to the new place; `StubGone`
//! arrives after the last delivery the stub forwarded). The owner of `t` answers
//! `TakeOver{t -> u}` by closing `t`'s connection and handing the session to `u` (in place on
//! the same shard, moved with a stub to another, or ended on clean start). A session that ends
//! sends `Release{t}`; messages about stale tokens are ignored.
//!
//! Invariants (checked after every step by the claim-protocol model test):
//! - at most one takeover per client id is in flight, so a `TakeOver{t}` always reaches a shard
//!   that has already processed `Granted{t}` (the race that once left two sessions alive);
//! - at any time at most one session per client id is indexed (`by_client_id`) on any shard,
//!   at most one live connection is attached to it, and no session is reachable from two
//!   index entries;
//! - at most one forwarding stub exists per client id.
//!
//! Handles that travel between shards or outlive a borrow (session slots in conns, barriers,
//! handovers) are checked against the session's claim token before use: a stale handle is a
//! dropped event with a debug log, never a panic.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use core_router::interest::{InterestIndex, LocalInterest, ShardSet};
use core_router::retained::RetainedStore;
use core_router::topic;
use core_router::trie::SubscriptionTrie;
use slab::Slab;

use super::mesh::{HandoverKind, ShardMsg};
use crate::codec::{
    decode, Ack, ConnAck, Connect, DecodeError, Disconnect, LastWill, MqttStr, Packet, Properties,
    ProtocolVersion, Publish, QoS, ReasonCode, SubAck, Subscribe, SubscriptionOptions, UnsubAck,
    Unsubscribe,
};
use crate::config::{Config, SharedStrategy};
use crate::session::{EncodeCache, Message, PeerLimits, Session, SessionLimits};

/// Process-wide state shared by all shards.
#[derive(Debug, Default)]
pub struct Global {
    /// Set to stop the broker.
    pub shutdown: AtomicBool,
    /// Open client connections, all shards.
    pub connections: AtomicUsize,
    /// A shard thread died (panicked): the broker cannot serve correctly any more.
    pub failed: AtomicBool,
}

/// Outbox length (messages) past which a shard stops reading client sockets.
const OUTBOX_HIGH_WATER: usize = 64 * 1024;
/// Outbox length under which reading resumes.
const OUTBOX_LOW_WATER: usize = 16 * 1024;
/// Connections beyond a limit that a shard keeps open (until their CONNECT is answered or the
/// connect timeout) to tell them why; past this many more, new ones are closed at once.
const MAX_OVER_LIMIT_CONNS: usize = 256;
/// Size of the shard's socket read buffer.
const SCRATCH_SIZE: usize = 64 * 1024;

/// Why a connection is being closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kill {
    /// Reason (sent in a DISCONNECT to MQTT 5.0 clients when `notify` is set).
    pub reason: ReasonCode,
    /// The client sent DISCONNECT: no will.
    pub graceful: bool,
}

#[derive(Debug)]
enum ConnState {
    AwaitConnect,
    /// Accepted beyond a connection limit: its CONNECT is answered with CONNACK 0x97 (3.x:
    /// 3, server unavailable) and the connection closed, so the client learns why.
    OverLimit,
    Claiming {
        token: u64,
    },
    /// Attached to the session in slot `session` whose claim token is `token` (the handle's
    /// generation: a slot reused by another session has another token). A `u32` slot keeps
    /// the state, and so every connection, 8 bytes smaller.
    Active {
        session: u32,
        token: u64,
    },
    /// Session taken over by another connection; nothing left to clean up.
    Detached,
}

/// A network connection's state on its shard.
#[derive(Debug)]
pub struct Conn {
    serial: u64,
    state: ConnState,
    protocol: ProtocolVersion,
    keep_alive: u16,
    /// Milliseconds since the shard started, at the last packet (or the accept).
    last_seen: u64,
    out: BytesMut,
    leftover: BytesMut,
    waker: Option<Waker>,
    kill: Option<Kill>,
    reprocess: bool,
    /// Waiting for other shards before answering (a SUBACK or a retained PUBACK): no further
    /// packets are read meanwhile, so acknowledgements keep their order.
    paused: bool,
    /// Publishing faster than a subscriber on this shard drains its queue: reading pauses
    /// until that queue is half empty again (or the next timer tick, so that two clients
    /// feeding each other can never wait on each other for good).
    throttled: bool,
    /// Inbound topic aliases (MQTT 5.0), allocated on first use.
    // Boxed on purpose: 8 bytes for the many clients without aliases instead of a 48-byte map.
    #[allow(clippy::box_collection)]
    aliases_in: Option<Box<HashMap<u16, MqttStr>>>,
}

#[derive(Debug)]
struct SessionEntry {
    session: Session,
    conn: Option<usize>,
    token: u64,
    /// Milliseconds since the shard started, when the session went offline.
    offline_since: Option<u64>,
    /// A will waiting out its MQTT 5.0 will delay interval.
    pending_will: Option<Box<LastWill>>,
    /// Set on a stub left behind when the session moved to another shard: deliveries are
    /// forwarded there (shard, claim token) until every shard routes to the new place.
    moved_to: Option<(u16, u64)>,
    /// While a moved session may receive a message both directly and through the old shard's
    /// stub: what it already got, so nothing is delivered twice.
    recent: Option<Box<RecentDeliveries>>,
}

/// Messages a session received recently, for deduplication during a move between shards.
#[derive(Debug)]
struct RecentDeliveries {
    messages: VecDeque<(Arc<Message>, Instant)>,
    /// When the move is known everywhere plus a margin; `None` while it is still in progress.
    until: Option<Instant>,
}

/// How long after a move completes duplicates are still filtered.
const MOVE_DEDUP_MARGIN: Duration = Duration::from_secs(2);
/// Most messages remembered for deduplication per moving session.
const MOVE_DEDUP_CAPACITY: usize = 65_536;

#[derive(Debug)]
struct PendingClaim {
    conn: Option<usize>,
    connect: Box<Connect>,
    assigned_id: bool,
}

/// What `on_takeover` did with the session.
enum Handover {
    Ended,
    InPlace(usize),
    Moved(Box<Session>),
}

/// What to do once every peer has answered a barrier.
#[derive(Debug)]
enum BarrierAction {
    /// Answer a SUBSCRIBE: every shard now forwards matching publishes here.
    SubAck {
        conn: usize,
        serial: u64,
        session: usize,
        suback: Box<SubAck>,
        retained_for: Vec<(MqttStr, SubscriptionOptions, u32)>,
    },
    /// A moved session is now routed to here by every shard: the old shard drops its stub.
    ReleaseStub {
        shard: u16,
        token: u64,
        client_id: MqttStr,
    },
}

#[derive(Debug)]
struct Barrier {
    remaining: usize,
    action: BarrierAction,
}

/// A PUBACK/PUBREC held until the topic's owner shard has applied a retained update.
#[derive(Debug)]
struct HeldAck {
    conn: usize,
    serial: u64,
    packet: Packet,
}

/// The members of one shared-subscription group on this shard.
#[derive(Debug, Default)]
struct SharedGroup {
    members: Vec<(usize, SubscriptionOptions, u32)>,
    cursor: usize,
    sticky: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
struct Owner {
    shard: u16,
    token: u64,
}

/// A claim waiting at the home shard until the previous takeover of its client id settles.
#[derive(Debug, Clone, Copy)]
struct WaitingClaim {
    owner: Owner,
    clean_start: bool,
}

/// The home shard's record of one client id (see the module docs for its state machine).
#[derive(Debug, Clone, Copy)]
struct Registration {
    /// The newest granted claim.
    owner: Owner,
    /// The owner's claimant has installed the session and no stub points at an older place.
    settled: bool,
    /// The next claim, started once the owner settles.
    waiting: Option<WaitingClaim>,
}

#[derive(Debug, Clone, Copy)]
enum WheelEntry {
    Conn { index: usize, serial: u64 },
    Session { index: usize, token: u64 },
    Will { index: usize, token: u64 },
}

/// What a connection task learns from polling its socket.
#[derive(Debug)]
pub enum ConnEvent {
    /// Bytes arrived (or buffered bytes must be processed again).
    Data(BytesMut),
    /// The connection is over; `graceful` when the client sent DISCONNECT.
    Closed,
}

/// Counters for operators and tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShardStats {
    /// PUBLISH packets received from clients.
    pub publishes_in: u64,
    /// Messages forwarded to other shards.
    pub forwarded: u64,
    /// Messages dropped at a queue bound.
    pub dropped_queue_full: u64,
    /// QoS 0 messages dropped for offline or slow clients.
    pub dropped_qos0: u64,
    /// Messages dropped because they expired or exceed the client's maximum packet size.
    pub dropped_other: u64,
    /// Events the ownership protocol rules out (a grant for an unknown claim, a second session
    /// for one client id), repaired and logged. Always 0 unless there is a bug.
    pub protocol_violations: u64,
}

/// A shard: its connections, sessions, subscriptions, replicas and outboxes.
#[derive(Debug)]
pub struct Shard {
    /// This shard's index (its position in the mesh).
    pub id: usize,
    shards: usize,
    config: Rc<Config>,
    limits: SessionLimits,
    global: Arc<Global>,
    started: Instant,
    now: u32,
    next_serial: u64,
    conns: Slab<Conn>,
    // Boxed: a slab grows by doubling, and spare slots of a 264-byte entry would cost more than
    // the pointer.
    sessions: Slab<Box<SessionEntry>>,
    by_client_id: HashMap<MqttStr, usize>,
    /// Local subscriptions: filter -> session slot, with options and subscription identifier.
    subscriptions: SubscriptionTrie<usize, (SubscriptionOptions, u32)>,
    local_interest: LocalInterest,
    interest: InterestIndex,
    retained: RetainedStore<Arc<Message>>,
    /// Shared-subscription groups with members on this shard, by `$share/{group}/{filter}`.
    shared_groups: HashMap<MqttStr, SharedGroup>,
    /// Replicated: for each group (keyed by its full `$share/...` filter, stored under the inner
    /// filter), the shards that have members.
    shared_index: SubscriptionTrie<MqttStr, ShardSet>,
    shared_cursor: HashMap<MqttStr, usize>,
    random_state: u64,
    registry: HashMap<MqttStr, Registration>,
    auth: crate::auth::AuthMethods,
    barriers: HashMap<u64, Barrier>,
    /// The connection whose PUBLISH is being routed right now (for publisher throttling).
    current_publisher: Option<usize>,
    /// Throttled publishers: (connection, its serial, the congested session).
    throttled: Vec<(usize, u64, usize)>,
    /// Stubs of sessions that moved away, by the new claim's token.
    stubs: HashMap<u64, usize>,
    held_acks: HashMap<u64, HeldAck>,
    pending_claims: HashMap<u64, PendingClaim>,
    outbox: Vec<VecDeque<ShardMsg>>,
    outbox_wakers: Vec<Option<Waker>>,
    local_inbox: VecDeque<ShardMsg>,
    backpressured: bool,
    /// Connections registered over a connection limit, waiting for their refusing CONNACK.
    over_limit: usize,
    paused_readers: Vec<Waker>,
    scratch: Box<[u8]>,
    matches: Vec<(usize, SubscriptionOptions, u32)>,
    subscription_ids: Vec<u32>,
    cache: EncodeCache,
    wheel: BTreeMap<u32, Vec<WheelEntry>>,
    /// Counters.
    pub stats: ShardStats,
}

fn stable_hash(bytes: &[u8]) -> u64 {
    // SipHash with fixed keys: every shard of the process computes the same value.
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

impl Shard {
    /// A shard with no connections yet.
    pub fn new(id: usize, shards: usize, config: Rc<Config>, global: Arc<Global>) -> Self {
        let limits = SessionLimits {
            max_inflight: config.max_inflight,
            max_queued_messages: config.max_queued_messages,
            max_queued_bytes: config.max_queued_bytes,
        };
        Shard {
            id,
            shards,
            limits,
            global,
            started: Instant::now(),
            now: 0,
            next_serial: 1,
            conns: Slab::new(),
            sessions: Slab::new(),
            by_client_id: HashMap::new(),
            subscriptions: SubscriptionTrie::new(),
            local_interest: LocalInterest::new(id as u16),
            interest: InterestIndex::new(),
            retained: RetainedStore::new(),
            shared_groups: HashMap::new(),
            shared_index: SubscriptionTrie::new(),
            shared_cursor: HashMap::new(),
            random_state: 0x9e37_79b9_7f4a_7c15 ^ (id as u64 + 1),
            registry: HashMap::new(),
            auth: crate::auth::AuthMethods::default(),
            barriers: HashMap::new(),
            current_publisher: None,
            throttled: Vec::new(),
            stubs: HashMap::new(),
            held_acks: HashMap::new(),
            pending_claims: HashMap::new(),
            outbox: (0..shards).map(|_| VecDeque::new()).collect(),
            outbox_wakers: (0..shards).map(|_| None).collect(),
            local_inbox: VecDeque::new(),
            backpressured: false,
            over_limit: 0,
            paused_readers: Vec::new(),
            scratch: vec![0u8; SCRATCH_SIZE].into_boxed_slice(),
            matches: Vec::new(),
            subscription_ids: Vec::new(),
            cache: EncodeCache::default(),
            wheel: BTreeMap::new(),
            stats: ShardStats::default(),
            config,
        }
    }

    fn home_shard(&self, client_id: &str) -> usize {
        (stable_hash(client_id.as_bytes()) % self.shards as u64) as usize
    }

    fn topic_owner(&self, topic: &str) -> usize {
        (stable_hash(topic.as_bytes()).rotate_left(17) % self.shards as u64) as usize
    }

    fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The wheel bucket (whole seconds, rounded up) in which a deadline is checked: never
    /// before the deadline itself.
    fn bucket(deadline_ms: u64) -> u32 {
        u32::try_from(deadline_ms.div_ceil(1000)).unwrap_or(u32::MAX)
    }

    fn next_serial(&mut self) -> u64 {
        let serial = self.next_serial;
        self.next_serial += 1;
        serial
    }

    fn new_token(&mut self) -> u64 {
        ((self.id as u64) << 48) | self.next_serial()
    }

    // ----- cross-shard plumbing -------------------------------------------------------------

    fn send(&mut self, shard: usize, message: ShardMsg) {
        if shard == self.id {
            self.local_inbox.push_back(message);
            return;
        }
        self.outbox[shard].push_back(message);
        if let Some(waker) = self.outbox_wakers[shard].take() {
            waker.wake();
        }
        if self.outbox[shard].len() > OUTBOX_HIGH_WATER && !self.backpressured {
            tracing::debug!(shard = self.id, peer = shard, "cross-shard backpressure on");
            self.backpressured = true;
        }
    }

    fn broadcast(&mut self, make: impl Fn() -> ShardMsg) {
        for shard in 0..self.shards {
            if shard != self.id {
                self.send(shard, make());
            }
        }
    }

    /// Hands the pump for `peer` its next batch, or registers its waker.
    pub fn take_outbox_batch(
        &mut self,
        peer: usize,
        max: usize,
        cx: &mut Context<'_>,
    ) -> Poll<Vec<ShardMsg>> {
        let queue = &mut self.outbox[peer];
        if queue.is_empty() {
            self.outbox_wakers[peer] = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let take = queue.len().min(max);
        Poll::Ready(queue.drain(..take).collect())
    }

    /// Resumes socket reads once every outbox is under the low-water mark.
    pub fn relieve_backpressure(&mut self) {
        if self.backpressured && self.outbox.iter().all(|q| q.len() < OUTBOX_LOW_WATER) {
            tracing::debug!(shard = self.id, "cross-shard backpressure off");
            self.backpressured = false;
            for waker in self.paused_readers.drain(..) {
                waker.wake();
            }
        }
    }

    /// Processes messages this shard sent to itself (claims and retained updates it owns).
    pub fn drain_local_inbox(&mut self) {
        while let Some(message) = self.local_inbox.pop_front() {
            self.handle_mesh(message);
        }
    }

    /// Applies one message from a peer (or from this shard to itself).
    pub fn handle_mesh(&mut self, message: ShardMsg) {
        match message {
            ShardMsg::Publish(message) => {
                self.route_local(&message);
            }
            ShardMsg::Interest(delta) => {
                self.interest.apply(&delta);
            }
            ShardMsg::RetainUpdate {
                topic,
                message,
                ack,
            } => {
                self.apply_retained(&topic, message.clone());
                self.broadcast(|| ShardMsg::RetainApply {
                    topic: topic.clone(),
                    message: message.clone(),
                });
                if let Some((shard, token)) = ack {
                    // After the broadcast: whoever hears of this ack sees the update first.
                    self.send(usize::from(shard), ShardMsg::RetainAck { token });
                }
            }
            ShardMsg::RetainAck { token } => self.release_held_ack(token),
            ShardMsg::Ping { from, token } => {
                self.send(usize::from(from), ShardMsg::Pong { token });
            }
            ShardMsg::Pong { token } => self.on_pong(token),
            ShardMsg::RetainApply { topic, message } => self.apply_retained(&topic, message),
            ShardMsg::SharedInterest {
                filter,
                shard,
                added,
            } => self.apply_shared_interest(&filter, usize::from(shard), added),
            ShardMsg::SharedPublish { group, message } => self.deliver_shared(&group, &message),
            ShardMsg::Claim {
                client_id,
                token,
                shard,
                clean_start,
            } => self.on_claim(client_id, token, shard, clean_start),
            ShardMsg::TakeOver {
                client_id,
                old_token,
                new_shard,
                new_token,
                clean_start,
            } => self.on_takeover(client_id, old_token, new_shard, new_token, clean_start),
            ShardMsg::Granted {
                token,
                session,
                handover,
            } => self.on_granted(token, session, handover),
            ShardMsg::Forward {
                client_id,
                token,
                message,
                qos,
                retain,
                subscription_ids,
                group,
            } => self.on_forward(
                client_id,
                token,
                message,
                qos,
                retain,
                subscription_ids,
                group,
            ),
            ShardMsg::StubDone {
                client_id,
                token,
                from,
            } => {
                self.remove_stub(token);
                self.send(usize::from(from), ShardMsg::StubGone { client_id, token });
            }
            ShardMsg::StubGone { client_id, token } => self.on_stub_gone(client_id, token),
            ShardMsg::Settled { client_id, token } => self.on_settled(client_id, token),
            ShardMsg::Denied { token } => self.on_denied(token),
            ShardMsg::Release { client_id, token } => self.on_release(client_id, token),
        }
    }

    // ----- connections ------------------------------------------------------------------------

    /// Registers a freshly accepted connection. Beyond a connection limit it is registered as
    /// over the limit (its CONNECT gets a refusing CONNACK); `None` when even those are too
    /// many and the connection should be closed at once.
    pub fn register_conn(&mut self) -> Option<usize> {
        let now_ms = self.clock_ms();
        let max_total = self.config.max_connections;
        let max_here = self.config.max_connections_per_shard;
        let mut over_limit = max_here != 0 && self.conns.len() - self.over_limit >= max_here;
        if !over_limit {
            let total = self.global.connections.fetch_add(1, Ordering::Relaxed) + 1;
            if max_total != 0 && total > max_total {
                self.global.connections.fetch_sub(1, Ordering::Relaxed);
                over_limit = true;
            }
        }
        if over_limit {
            if self.over_limit >= MAX_OVER_LIMIT_CONNS {
                return None;
            }
            self.over_limit += 1;
        }
        let serial = self.next_serial();
        let index = self.conns.insert(Conn {
            serial,
            state: if over_limit {
                ConnState::OverLimit
            } else {
                ConnState::AwaitConnect
            },
            protocol: ProtocolVersion::V3_1_1,
            keep_alive: 0,
            last_seen: now_ms,
            out: BytesMut::new(),
            leftover: BytesMut::new(),
            waker: None,
            kill: None,
            reprocess: false,
            paused: false,
            throttled: false,
            aliases_in: None,
        });
        let deadline = Self::bucket(now_ms + 1000 * u64::from(self.config.connect_timeout.max(1)));
        self.wheel
            .entry(deadline)
            .or_default()
            .push(WheelEntry::Conn { index, serial });
        Some(index)
    }

    fn wake_conn(&mut self, index: usize) {
        if let Some(conn) = self.conns.get_mut(index) {
            if let Some(waker) = conn.waker.take() {
                waker.wake();
            }
        }
    }

    fn kill_conn(&mut self, index: usize, reason: ReasonCode, graceful: bool) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        if conn.kill.is_some() {
            return;
        }
        if !graceful && conn.protocol.is_v5() && matches!(conn.state, ConnState::Active { .. }) {
            let _ =
                Packet::Disconnect(Disconnect::new(reason)).encode(conn.protocol, &mut conn.out);
        }
        conn.kill = Some(Kill { reason, graceful });
        self.wake_conn(index);
    }

    /// Drives one connection's socket: flushes output, reads input, registers for wake-ups.
    /// Called from the connection task's `poll_fn`; the shard borrow ends when it returns.
    pub fn poll_conn<S>(
        &mut self,
        index: usize,
        stream: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<ConnEvent>
    where
        S: futures_lite::io::AsyncRead + futures_lite::io::AsyncWrite + Unpin,
    {
        use std::pin::Pin;
        let Some(conn) = self.conns.get_mut(index) else {
            return Poll::Ready(ConnEvent::Closed);
        };
        while !conn.out.is_empty() {
            match Pin::new(&mut *stream).poll_write(cx, &conn.out) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(ConnEvent::Closed),
                Poll::Ready(Ok(written)) => conn.out.advance(written),
                Poll::Pending => break,
            }
        }
        if conn.out.is_empty() {
            // Messages queued while the client was a slow consumer go out once it has caught up.
            if let ConnState::Active { session, token } = conn.state {
                if let Some(entry) = self
                    .sessions
                    .get_mut(session as usize)
                    .filter(|e| e.token == token)
                {
                    let session = &mut entry.session;
                    if session.queued_len() > 0
                        && session.fill_window(&mut conn.out, Instant::now()) > 0
                    {
                        cx.waker().wake_by_ref();
                    }
                }
            }
        }
        if conn.out.is_empty() && conn.out.capacity() > 0 {
            // No output buffer is kept while there is nothing to send: an idle connection
            // costs no buffer memory.
            conn.out = BytesMut::new();
        }
        if conn.kill.is_some() {
            // One flush attempt for a pending DISCONNECT, then close: a peer that does not read
            // must not keep the connection alive.
            return Poll::Ready(ConnEvent::Closed);
        }
        if conn.reprocess {
            conn.reprocess = false;
            return Poll::Ready(ConnEvent::Data(BytesMut::new()));
        }
        let reading =
            !matches!(conn.state, ConnState::Claiming { .. }) && !conn.paused && !conn.throttled;
        if reading && self.backpressured {
            self.paused_readers.push(cx.waker().clone());
        } else if reading {
            match Pin::new(&mut *stream).poll_read(cx, &mut self.scratch) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(ConnEvent::Closed),
                Poll::Ready(Ok(read)) => {
                    return Poll::Ready(ConnEvent::Data(BytesMut::from(&self.scratch[..read])));
                }
                Poll::Pending => {}
            }
        }
        let conn = &mut self.conns[index];
        if !conn.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            conn.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Decodes and handles everything complete in `data` (after any leftover partial frame).
    pub fn on_data(&mut self, index: usize, data: BytesMut) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        let mut buf = if conn.leftover.is_empty() {
            data
        } else {
            let mut buf = std::mem::take(&mut conn.leftover);
            buf.extend_from_slice(&data);
            buf
        };
        let max = self.config.max_packet_size as usize;
        let now_ms = self.clock_ms();
        if let Some(conn) = self.conns.get_mut(index) {
            conn.last_seen = now_ms;
        }
        loop {
            let conn = &mut self.conns[index];
            if conn.kill.is_some()
                || conn.paused
                || conn.throttled
                || matches!(conn.state, ConnState::Claiming { .. })
            {
                break;
            }
            match decode(&mut buf, conn.protocol, max) {
                Ok(Some(packet)) => {
                    self.handle_packet(index, packet);
                }
                Ok(None) => break,
                Err(error) => {
                    self.on_decode_error(index, error);
                    break;
                }
            }
        }
        if let Some(conn) = self.conns.get_mut(index) {
            if conn.kill.is_none() && !buf.is_empty() {
                // Keep only the partial frame, in memory of its own, so it does not pin the
                // whole read buffer.
                conn.leftover = BytesMut::from(&buf[..]);
            }
        }
    }

    fn on_decode_error(&mut self, index: usize, error: DecodeError) {
        let conn = &mut self.conns[index];
        tracing::debug!(shard = self.id, conn = index, %error, "closing connection on bad input");
        if matches!(conn.state, ConnState::AwaitConnect | ConnState::OverLimit) {
            if let DecodeError::UnsupportedProtocolVersion(level) = error {
                // The client's protocol is unknown: answer in 3.1.1 form (return code 1), as
                // MQTT 3.1.1 §3.1.2.2 requires; a 5.0-capable client reads it too.
                let version = if level == 5 {
                    ProtocolVersion::V5
                } else {
                    ProtocolVersion::V3_1_1
                };
                let connack = ConnAck {
                    reason: ReasonCode::UnsupportedProtocolVersion,
                    ..Default::default()
                };
                let _ = Packet::ConnAck(connack).encode(version, &mut conn.out);
            }
            conn.kill = Some(Kill {
                reason: error.reason_code(),
                graceful: false,
            });
            return;
        }
        self.kill_conn(index, error.reason_code(), false);
    }

    /// The connection task ended: publish the will unless the client disconnected properly,
    /// end or park the session, free the connection.
    pub fn on_conn_closed(&mut self, index: usize) {
        if !self.conns.contains(index) {
            return;
        }
        let conn = self.conns.remove(index);
        if matches!(conn.state, ConnState::OverLimit) {
            self.over_limit -= 1;
        } else {
            self.global.connections.fetch_sub(1, Ordering::Relaxed);
        }
        let graceful = conn.kill.is_some_and(|k| k.graceful);
        match conn.state {
            ConnState::AwaitConnect | ConnState::OverLimit | ConnState::Detached => {}
            ConnState::Claiming { token } => {
                // The claim goes on without its connection: its answer still settles the
                // client id's ownership (see `on_granted`).
                if let Some(claim) = self.pending_claims.get_mut(&token) {
                    claim.conn = None;
                }
            }
            ConnState::Active { session, token } => {
                let session = session as usize;
                let now_ms = self.clock_ms();
                let Some(entry) = self
                    .sessions
                    .get_mut(session)
                    .filter(|e| e.token == token && e.conn == Some(index))
                else {
                    tracing::debug!(
                        shard = self.id,
                        conn = index,
                        "closed connection had a stale session handle"
                    );
                    self.drain_local_inbox();
                    return;
                };
                entry.conn = None;
                let will = entry.session.will.take();
                let client_id = entry.session.client_id.clone();
                if let (false, Some(will)) = (graceful, will) {
                    let delay = will.properties.will_delay_interval.unwrap_or(0);
                    if delay == 0 || entry.session.clean {
                        // No delay, or the session ends now: the will goes out now.
                        self.publish_will(&client_id, will);
                    } else {
                        entry.pending_will = Some(will);
                        let token = entry.token;
                        self.wheel
                            .entry(Self::bucket(now_ms + 1000 * u64::from(delay)))
                            .or_default()
                            .push(WheelEntry::Will {
                                index: session,
                                token,
                            });
                    }
                }
                if self.sessions.get(session).is_some_and(|e| e.session.clean) {
                    self.end_session(session);
                } else {
                    self.park_session(session);
                }
            }
        }
        self.drain_local_inbox();
    }

    fn park_session(&mut self, session: usize) {
        let now_ms = self.clock_ms();
        let Some(entry) = self.sessions.get_mut(session) else {
            return;
        };
        entry.offline_since = Some(now_ms);
        let token = entry.token;
        if let Some(expiry) = entry.session.expiry {
            let deadline = Self::bucket(now_ms + 1000 * u64::from(expiry));
            self.wheel
                .entry(deadline)
                .or_default()
                .push(WheelEntry::Session {
                    index: session,
                    token,
                });
        }
    }

    /// Removes a session from this shard: its subscriptions, its registry entry.
    fn end_session(&mut self, session: usize) {
        let Some(mut entry) = self.sessions.try_remove(session) else {
            return;
        };
        let orphans = entry.session.take_shared_undelivered();
        if let Some(will) = entry.pending_will.take() {
            // The session ends before the will delay: the will goes out now (MQTT 5.0 §3.1.2.5).
            self.publish_will(&entry.session.client_id, will);
        }
        if self.by_client_id.get(&entry.session.client_id) == Some(&session) {
            self.by_client_id.remove(&entry.session.client_id);
        }
        for filter in entry.session.subscriptions.keys() {
            self.remove_subscription(session, filter);
        }
        let home = self.home_shard(&entry.session.client_id);
        self.send(
            home,
            ShardMsg::Release {
                client_id: entry.session.client_id,
                token: entry.token,
            },
        );
        // A member left with messages it had not acknowledged: they go to another member.
        for (group, message) in orphans {
            self.route_shared_group(&group, &message);
        }
    }

    // ----- timers -----------------------------------------------------------------------------

    /// Advances the shard clock: keep-alive and CONNECT timeouts, session expiry. Called a few
    /// times a second; the wheel holds one entry per connection, not one timer each.
    pub fn tick(&mut self) {
        self.now = self.started.elapsed().as_secs() as u32;
        self.release_throttled(None);
        while let Some(entry) = self.wheel.first_entry() {
            if *entry.key() > self.now {
                break;
            }
            for item in entry.remove() {
                match item {
                    WheelEntry::Conn { index, serial } => self.check_keep_alive(index, serial),
                    WheelEntry::Session { index, token } => self.check_session_expiry(index, token),
                    WheelEntry::Will { index, token } => self.check_will_delay(index, token),
                }
            }
        }
        self.drain_local_inbox();
    }

    fn check_keep_alive(&mut self, index: usize, serial: u64) {
        let Some(conn) = self.conns.get(index) else {
            return;
        };
        if conn.serial != serial || conn.kill.is_some() {
            return;
        }
        let (deadline, reason) = match conn.state {
            ConnState::AwaitConnect | ConnState::OverLimit | ConnState::Claiming { .. } => (
                conn.last_seen + 1000 * u64::from(self.config.connect_timeout.max(1)),
                ReasonCode::MaximumConnectTime,
            ),
            ConnState::Detached => return,
            ConnState::Active { .. } if conn.keep_alive == 0 => return,
            // MQTT: close after one and a half keep-alive periods without a packet.
            ConnState::Active { .. } => (
                conn.last_seen + 1500 * u64::from(conn.keep_alive),
                ReasonCode::KeepAliveTimeout,
            ),
        };
        if deadline <= self.clock_ms() {
            tracing::debug!(shard = self.id, conn = index, %reason, "closing idle connection");
            self.kill_conn(index, reason, false);
        } else {
            self.wheel
                .entry(Self::bucket(deadline))
                .or_default()
                .push(WheelEntry::Conn { index, serial });
        }
    }

    fn check_will_delay(&mut self, index: usize, token: u64) {
        let Some(entry) = self.sessions.get_mut(index) else {
            return;
        };
        if entry.token != token || entry.conn.is_some() {
            return;
        }
        if let Some(will) = entry.pending_will.take() {
            let client_id = entry.session.client_id.clone();
            self.publish_will(&client_id, will);
        }
    }

    fn check_session_expiry(&mut self, index: usize, token: u64) {
        let Some(entry) = self.sessions.get(index) else {
            return;
        };
        if entry.token != token || entry.conn.is_some() {
            return;
        }
        let Some(expiry) = entry.session.expiry else {
            return;
        };
        let now_ms = self.clock_ms();
        let since = entry.offline_since.unwrap_or(now_ms);
        if now_ms.saturating_sub(since) >= 1000 * u64::from(expiry) {
            tracing::debug!(shard = self.id, client = %entry.session.client_id, "session expired");
            self.end_session(index);
        }
    }

    /// First phase of shutdown: every will (of connected clients and delayed ones) goes out
    /// while all shards still deliver.
    pub fn publish_wills_for_shutdown(&mut self) {
        let sessions: Vec<usize> = self.sessions.iter().map(|(index, _)| index).collect();
        for index in sessions {
            let entry = &mut self.sessions[index];
            let client_id = entry.session.client_id.clone();
            let wills: Vec<Box<LastWill>> = entry
                .session
                .will
                .take()
                .into_iter()
                .chain(entry.pending_will.take())
                .collect();
            for will in wills {
                self.publish_will(&client_id, will);
            }
        }
        self.drain_local_inbox();
    }

    /// Second phase of shutdown: closes every connection (MQTT 5 clients get DISCONNECT 0x8B).
    pub fn shutdown_all(&mut self) {
        let indices: Vec<usize> = self.conns.iter().map(|(index, _)| index).collect();
        for index in indices {
            self.kill_conn(index, ReasonCode::ServerShuttingDown, false);
        }
    }

    // ----- packets ----------------------------------------------------------------------------

    fn write(&mut self, index: usize, packet: Packet) {
        if let Some(conn) = self.conns.get_mut(index) {
            let was_empty = conn.out.is_empty();
            if let Err(error) = packet.encode(conn.protocol, &mut conn.out) {
                tracing::warn!(%error, "failed to encode a packet");
            }
            if was_empty {
                self.wake_conn(index);
            }
        }
    }

    /// The session attached to connection `index`, if its handle is still valid.
    fn session_of(&self, index: usize) -> Option<usize> {
        match self.conns.get(index)?.state {
            ConnState::Active { session, token } => {
                let session = session as usize;
                let valid = self
                    .sessions
                    .get(session)
                    .is_some_and(|e| e.token == token && e.conn == Some(index));
                if !valid {
                    tracing::debug!(shard = self.id, conn = index, "stale session handle");
                }
                valid.then_some(session)
            }
            _ => None,
        }
    }

    fn handle_packet(&mut self, index: usize, packet: Packet) {
        let Some(session) = self.session_of(index) else {
            match packet {
                Packet::Connect(connect)
                    if matches!(
                        self.conns[index].state,
                        ConnState::AwaitConnect | ConnState::OverLimit
                    ) =>
                {
                    self.on_connect(index, connect)
                }
                _ => {
                    tracing::debug!(shard = self.id, conn = index, "first packet is not CONNECT");
                    self.kill_conn(index, ReasonCode::ProtocolError, false);
                }
            }
            return;
        };
        match packet {
            Packet::Publish(publish) => self.on_publish(index, session, publish),
            Packet::PubAck(ack) => self.on_ack(index, session, AckKind::Ack, ack),
            Packet::PubRec(ack) => self.on_ack(index, session, AckKind::Rec, ack),
            Packet::PubComp(ack) => self.on_ack(index, session, AckKind::Comp, ack),
            Packet::PubRel(ack) => {
                let known = self.sessions[session].session.on_pubrel(ack.packet_id);
                let mut complete = Ack::new(ack.packet_id);
                if !known {
                    complete.reason = ReasonCode::PacketIdentifierNotFound;
                }
                self.write(index, Packet::PubComp(complete));
            }
            Packet::Subscribe(subscribe) => self.on_subscribe(index, session, subscribe),
            Packet::Unsubscribe(unsubscribe) => self.on_unsubscribe(index, session, unsubscribe),
            Packet::PingReq => self.write(index, Packet::PingResp),
            Packet::Disconnect(disconnect) => {
                if let Some(expiry) = disconnect.properties.session_expiry_interval {
                    let entry = &mut self.sessions[session].session;
                    if entry.clean && expiry != 0 {
                        // MQTT 5.0 §3.14.2.2.2: a session that began with expiry 0 cannot be
                        // given one at DISCONNECT.
                        return self.kill_conn(index, ReasonCode::ProtocolError, false);
                    }
                    entry.clean = expiry == 0;
                    entry.expiry = (expiry != u32::MAX).then_some(expiry);
                }
                if disconnect.reason == ReasonCode::DisconnectWithWill {
                    self.kill_conn(index, ReasonCode::Success, false);
                    if let Some(conn) = self.conns.get_mut(index) {
                        conn.out.clear();
                    }
                } else {
                    self.sessions[session].session.will = None;
                    self.kill_conn(index, ReasonCode::Success, true);
                }
            }
            Packet::Connect(_) => {
                tracing::debug!(shard = self.id, conn = index, "second CONNECT");
                self.kill_conn(index, ReasonCode::ProtocolError, false);
            }
            // AUTH without an authentication method, and packets only a server sends.
            Packet::Auth(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => self.kill_conn(index, ReasonCode::ProtocolError, false),
        }
    }

    fn on_connect(&mut self, index: usize, mut connect: Box<Connect>) {
        let protocol = connect.protocol;
        {
            let conn = &mut self.conns[index];
            conn.protocol = protocol;
            conn.keep_alive = connect.keep_alive;
        }
        let refuse = |shard: &mut Shard, reason: ReasonCode| {
            let connack = ConnAck {
                reason,
                ..Default::default()
            };
            let conn = &mut shard.conns[index];
            let _ = Packet::ConnAck(connack).encode(protocol, &mut conn.out);
            conn.kill = Some(Kill {
                reason,
                graceful: false,
            });
            shard.wake_conn(index);
        };
        if matches!(self.conns[index].state, ConnState::OverLimit) {
            tracing::debug!(shard = self.id, client = %connect.client_id, "connection limit reached; refusing");
            return refuse(self, ReasonCode::QuotaExceeded);
        }
        if let Some(method) = &connect.properties.authentication_method {
            // Enhanced authentication (crate::auth): unknown methods get 0x8C. A registered
            // method decides in one step; multi-step AUTH exchanges are not wired up yet.
            let step = self.auth.find(method).map(|auth| {
                let mut state = None;
                auth.start(
                    &connect.client_id,
                    connect.properties.authentication_data.as_ref(),
                    &mut state,
                )
            });
            match step {
                None => return refuse(self, ReasonCode::BadAuthenticationMethod),
                Some(crate::auth::AuthStep::Success) => {}
                Some(crate::auth::AuthStep::Fail(reason)) => return refuse(self, reason),
                Some(crate::auth::AuthStep::Continue(_)) => {
                    return refuse(self, ReasonCode::ImplementationSpecificError)
                }
            }
        }
        let mut assigned_id = false;
        if connect.client_id.is_empty() {
            if !connect.clean_start && !protocol.is_v5() {
                return refuse(self, ReasonCode::ClientIdentifierNotValid);
            }
            let serial = self.next_serial();
            let nanos = self.started.elapsed().as_nanos() as u64;
            connect.client_id = MqttStr::from(format!("shardmq-{}-{serial:x}-{nanos:x}", self.id));
            assigned_id = true;
        }
        if let Some(will) = &connect.will {
            if topic::check_limits(
                &will.topic,
                self.config.max_topic_length,
                self.config.max_topic_levels,
            )
            .is_err()
                || will.topic.starts_with("$SYS")
            {
                return refuse(self, ReasonCode::TopicNameInvalid);
            }
        }
        let token = self.new_token();
        let home = self.home_shard(&connect.client_id);
        let claim = ShardMsg::Claim {
            client_id: connect.client_id.clone(),
            token,
            shard: self.id as u16,
            clean_start: connect.clean_start,
        };
        self.conns[index].state = ConnState::Claiming { token };
        self.pending_claims.insert(
            token,
            PendingClaim {
                conn: Some(index),
                connect,
                assigned_id,
            },
        );
        self.send(home, claim);
    }

    /// Home-shard role: a new claim. Granted at once when nobody owns the id, handed to the
    /// owner as a takeover when its claim has settled, otherwise kept waiting (replacing, and
    /// denying, an older waiting claim).
    fn on_claim(&mut self, client_id: MqttStr, token: u64, shard: u16, clean_start: bool) {
        let claim = Owner { shard, token };
        let Some(registration) = self.registry.get_mut(&client_id) else {
            self.registry.insert(
                client_id,
                Registration {
                    owner: claim,
                    settled: false,
                    waiting: None,
                },
            );
            return self.send(
                usize::from(shard),
                ShardMsg::Granted {
                    token,
                    session: None,
                    handover: None,
                },
            );
        };
        if !registration.settled {
            // A takeover of this id is still in flight: this claim waits for it. An older
            // waiting claim lost the race before it was granted; its clean start still
            // applies, since it would have discarded the session before this one took over.
            let mut clean_start = clean_start;
            if let Some(older) = registration.waiting.take() {
                clean_start |= older.clean_start;
                self.send(
                    usize::from(older.owner.shard),
                    ShardMsg::Denied {
                        token: older.owner.token,
                    },
                );
            }
            if let Some(registration) = self.registry.get_mut(&client_id) {
                registration.waiting = Some(WaitingClaim {
                    owner: claim,
                    clean_start,
                });
            }
            return;
        }
        self.start_takeover(client_id, claim, clean_start);
    }

    /// Home-shard role: `claim` becomes the owner; the settled previous owner hands over.
    fn start_takeover(&mut self, client_id: MqttStr, claim: Owner, clean_start: bool) {
        let Some(registration) = self.registry.get_mut(&client_id) else {
            return;
        };
        let old = std::mem::replace(&mut registration.owner, claim);
        registration.settled = false;
        self.send(
            usize::from(old.shard),
            ShardMsg::TakeOver {
                client_id,
                old_token: old.token,
                new_shard: claim.shard,
                new_token: claim.token,
                clean_start,
            },
        );
    }

    /// Home-shard role: the owner's claim settled; a waiting claim may take over now.
    fn on_settled(&mut self, client_id: MqttStr, token: u64) {
        let Some(registration) = self.registry.get_mut(&client_id) else {
            return;
        };
        if registration.owner.token != token {
            return;
        }
        registration.settled = true;
        if let Some(next) = registration.waiting.take() {
            self.start_takeover(client_id, next.owner, next.clean_start);
        }
    }

    /// Home-shard role: the session of claim `token` ended. A waiting claim gets the id with
    /// no session to resume.
    fn on_release(&mut self, client_id: MqttStr, token: u64) {
        let Some(registration) = self.registry.get_mut(&client_id) else {
            return;
        };
        if registration.owner.token != token {
            return;
        }
        match registration.waiting.take() {
            Some(next) => {
                registration.owner = next.owner;
                registration.settled = false;
                self.send(
                    usize::from(next.owner.shard),
                    ShardMsg::Granted {
                        token: next.owner.token,
                        session: None,
                        handover: None,
                    },
                );
            }
            None => {
                self.registry.remove(&client_id);
            }
        }
    }

    /// Claimant role: a newer connection won the client id before this claim's turn came.
    fn on_denied(&mut self, token: u64) {
        let Some(claim) = self.pending_claims.remove(&token) else {
            return;
        };
        if let Some(index) = claim.conn {
            tracing::debug!(shard = self.id, client = %claim.connect.client_id, "claim superseded by a newer connection");
            self.kill_conn(index, ReasonCode::SessionTakenOver, false);
        }
    }

    /// Tells the home shard that claim `token` has settled here.
    fn settle(&mut self, client_id: &MqttStr, token: u64) {
        let home = self.home_shard(client_id);
        self.send(
            home,
            ShardMsg::Settled {
                client_id: client_id.clone(),
                token,
            },
        );
    }

    /// New-owner role: the stub that forwarded to the moved session is gone: the move is
    /// complete (duplicates are still filtered for a short margin) and the claim settles.
    fn on_stub_gone(&mut self, client_id: MqttStr, token: u64) {
        let Some(&slot) = self.by_client_id.get(&client_id) else {
            return;
        };
        let Some(entry) = self.sessions.get_mut(slot).filter(|e| e.token == token) else {
            return;
        };
        if let Some(recent) = entry.recent.as_mut() {
            recent.until = Some(Instant::now() + MOVE_DEDUP_MARGIN);
        }
        self.settle(&client_id, token);
    }

    /// Owner role: close the current connection of `client_id` and hand its session over.
    fn on_takeover(
        &mut self,
        client_id: MqttStr,
        old_token: u64,
        new_shard: u16,
        new_token: u64,
        clean_start: bool,
    ) {
        let session = self.by_client_id.get(&client_id).copied().filter(|&slot| {
            self.sessions
                .get(slot)
                .is_some_and(|e| e.token == old_token)
        });
        if session.is_none() {
            // The session of the settled owner ended meanwhile (its Release is on the way):
            // the new claim starts afresh.
            tracing::debug!(shard = self.id, client = %client_id, "takeover of a session that already ended");
        }
        let handover =
            session.map(|slot| self.hand_over(slot, &client_id, new_shard, new_token, clean_start));
        let (session, handover) = match handover {
            Some(Handover::InPlace(slot)) => (None, Some(HandoverKind::InPlace(slot))),
            Some(Handover::Moved(data)) => (Some(data), Some(HandoverKind::Stub(self.id as u16))),
            Some(Handover::Ended) | None => (None, None),
        };
        self.send(
            usize::from(new_shard),
            ShardMsg::Granted {
                token: new_token,
                session,
                handover,
            },
        );
    }

    /// Detaches the session in `slot` from its connection (closing it) and ends it, keeps it
    /// in place for `new_token`, or turns it into a forwarding stub and returns its data.
    fn hand_over(
        &mut self,
        slot: usize,
        client_id: &MqttStr,
        new_shard: u16,
        new_token: u64,
        clean_start: bool,
    ) -> Handover {
        let Some(entry) = self.sessions.get_mut(slot) else {
            return Handover::Ended;
        };
        let ends = clean_start || entry.session.clean;
        let pending_will = entry.pending_will.take();
        let old_conn = entry.conn.take();
        let live_will = old_conn.and_then(|_| entry.session.will.take());
        if let Some(will) = pending_will {
            // A reconnect within the will delay cancels the will, unless the session ends.
            if ends {
                self.publish_will(client_id, will);
            }
        }
        if let Some(conn) = old_conn {
            tracing::debug!(shard = self.id, client = %client_id, "session taken over");
            // The old connection closes without a DISCONNECT from its client: its will fires,
            // unless it has a will delay that the new connection now cancels (MQTT 5.0).
            if let Some(will) = live_will {
                let delay = will.properties.will_delay_interval.unwrap_or(0);
                if delay == 0 || ends {
                    self.publish_will(client_id, will);
                }
            }
            self.kill_conn(conn, ReasonCode::SessionTakenOver, false);
            if let Some(conn) = self.conns.get_mut(conn) {
                conn.state = ConnState::Detached;
            }
        }
        if ends {
            // The session ends here: queued shared-subscription messages go to other
            // members; the registry already points at the new owner.
            self.end_session(slot);
            return Handover::Ended;
        }
        let Some(entry) = self.sessions.get_mut(slot) else {
            return Handover::Ended;
        };
        if usize::from(new_shard) == self.id {
            // Same shard: the session stays where it is, subscriptions untouched, so nothing
            // routed meanwhile is missed.
            entry.token = new_token;
            return Handover::InPlace(slot);
        }
        // Another shard: the data moves; a stub keeps the subscriptions here and forwards
        // deliveries until every shard routes to the new place.
        let mut stub = Session::new(
            entry.session.client_id.clone(),
            entry.session.protocol,
            false,
            self.limits,
        );
        stub.subscriptions = entry.session.subscriptions.clone();
        let data = std::mem::replace(&mut entry.session, stub);
        entry.moved_to = Some((new_shard, new_token));
        entry.recent = None;
        self.by_client_id.remove(client_id);
        self.stubs.insert(new_token, slot);
        Handover::Moved(Box::new(data))
    }

    /// Claimant role: the id is ours; finish the CONNECT (or, when the connection is already
    /// gone, keep a persistent session offline). Either way the claim settles, or its session
    /// ends and is released.
    fn on_granted(
        &mut self,
        token: u64,
        previous: Option<Box<Session>>,
        handover: Option<HandoverKind>,
    ) {
        let now_ms = self.clock_ms();
        let Some(claim) = self.pending_claims.remove(&token) else {
            // Every claim is answered once, by Granted or Denied: this is a protocol bug. Keep
            // the broker alive and say so.
            tracing::error!(shard = self.id, token, "grant for an unknown claim ignored");
            self.stats.protocol_violations += 1;
            return;
        };
        let connect = claim.connect;
        let in_place = match handover {
            Some(HandoverKind::InPlace(slot))
                if self.sessions.get(slot).is_some_and(|e| e.token == token) =>
            {
                Some(slot)
            }
            _ => None,
        };
        let stub_shard = match handover {
            Some(HandoverKind::Stub(shard)) => Some(shard),
            _ => None,
        };
        let Some(index) = claim.conn.filter(|&c| self.conns.contains(c)) else {
            if let Some(slot) = in_place {
                self.park_session(slot);
                self.settle(&connect.client_id, token);
                return;
            }
            // The client left while we waited. Keep a persistent session it had; otherwise
            // release the id.
            match previous {
                Some(session) if !connect.clean_start => {
                    let mut session = *session;
                    session.will = None;
                    let slot = self.install_session(session, token);
                    self.park_session(slot);
                    match stub_shard {
                        Some(shard) => self.start_stub_release(shard, token, slot),
                        None => self.settle(&connect.client_id, token),
                    }
                }
                _ => {
                    let home = self.home_shard(&connect.client_id);
                    self.send(
                        home,
                        ShardMsg::Release {
                            client_id: connect.client_id,
                            token,
                        },
                    );
                }
            }
            return;
        };
        let protocol = connect.protocol;
        let session_present = (previous.is_some() || in_place.is_some()) && !connect.clean_start;
        let mut session = match (in_place, previous) {
            (Some(slot), _) => {
                let limits = self.limits;
                let Some(entry) = self.sessions.get_mut(slot) else {
                    return;
                };
                entry.pending_will = None;
                entry.offline_since = None;
                let mut session = std::mem::replace(
                    &mut entry.session,
                    Session::new(MqttStr::default(), protocol, true, limits),
                );
                session.protocol = protocol;
                session.set_limits(limits);
                session
            }
            (None, previous) => match previous {
                Some(session) if !connect.clean_start => {
                    let mut session = *session;
                    session.protocol = protocol;
                    session.set_limits(self.limits);
                    session
                }
                _ => Session::new(
                    connect.client_id.clone(),
                    protocol,
                    connect.clean_start,
                    self.limits,
                ),
            },
        };
        if protocol.is_v5() {
            // MQTT 5.0: clean start only discards an old session; how long this one lasts is
            // the session expiry interval (0, the default, ends it with the connection).
            let expiry = connect.properties.session_expiry_interval.unwrap_or(0);
            session.clean = expiry == 0;
            session.expiry = (expiry != u32::MAX).then_some(expiry);
            session.attach(PeerLimits {
                max_packet_size: connect.properties.maximum_packet_size.unwrap_or(u32::MAX),
                topic_alias_max: connect.properties.topic_alias_maximum.unwrap_or(0),
                receive_maximum: connect.properties.receive_maximum.unwrap_or(u16::MAX),
            });
        } else {
            session.clean = connect.clean_start;
            session.expiry = self
                .config
                .persistent_session_expiry
                .map(|secs| u32::try_from(secs).unwrap_or(u32::MAX));
            session.attach(PeerLimits::default());
        }
        session.will = connect.will.map(Box::new);
        let slot = match in_place.and_then(|slot| self.sessions.get_mut(slot).map(|e| (slot, e))) {
            Some((slot, entry)) => {
                entry.session = session;
                slot
            }
            None => self.install_session(session, token),
        };
        if let Some(entry) = self.sessions.get_mut(slot) {
            entry.conn = Some(index);
        }
        match stub_shard {
            Some(shard) => self.start_stub_release(shard, token, slot),
            None => self.settle(&connect.client_id, token),
        }
        let mut properties = Properties::default();
        if protocol.is_v5() {
            if claim.assigned_id {
                properties.assigned_client_identifier = Some(connect.client_id.clone());
            }
            properties.maximum_packet_size = Some(self.config.max_packet_size);
            properties.receive_maximum = Some(self.config.receive_maximum);
            if self.config.topic_alias_maximum > 0 {
                properties.topic_alias_maximum = Some(self.config.topic_alias_maximum);
            }
            if connect.properties.request_response_information == Some(true) {
                // Request/response: a topic prefix the client may use for responses.
                properties.response_information =
                    Some(MqttStr::from(format!("response/{}", connect.client_id)));
            }
        }
        let connack = ConnAck {
            session_present,
            reason: ReasonCode::Success,
            properties,
        };
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        let Ok(session) = u32::try_from(slot) else {
            tracing::error!(shard = self.id, "more than 2^32 sessions on one shard");
            return self.kill_conn(index, ReasonCode::QuotaExceeded, false);
        };
        conn.state = ConnState::Active { session, token };
        conn.last_seen = now_ms;
        conn.reprocess = !conn.leftover.is_empty();
        let serial = conn.serial;
        let _ = Packet::ConnAck(connack).encode(protocol, &mut conn.out);
        if session_present {
            if let Some(entry) = self.sessions.get_mut(slot) {
                entry.session.resume(&mut conn.out, Instant::now());
            }
        }
        if connect.keep_alive > 0 {
            let deadline = Self::bucket(now_ms + 1500 * u64::from(connect.keep_alive));
            self.wheel
                .entry(deadline)
                .or_default()
                .push(WheelEntry::Conn { index, serial });
        }
        tracing::debug!(shard = self.id, client = %connect.client_id, session_present, "client connected");
        self.wake_conn(index);
    }

    /// A session arrived from `shard`, which keeps a forwarding stub: once every shard routes
    /// here (a barrier over the interest deltas just sent), the stub can go. Until shortly
    /// after, deliveries to the session are deduplicated; the claim settles when the old shard
    /// confirms the stub is gone (`StubGone`).
    fn start_stub_release(&mut self, shard: u16, token: u64, slot: usize) {
        let Some(entry) = self.sessions.get_mut(slot) else {
            return;
        };
        entry.recent = Some(Box::new(RecentDeliveries {
            messages: VecDeque::new(),
            until: None,
        }));
        let action = BarrierAction::ReleaseStub {
            shard,
            token,
            client_id: entry.session.client_id.clone(),
        };
        self.start_barrier(action);
    }

    /// Runs `action` once every other shard has applied everything this shard sent it so far
    /// (FIFO queues: a Ping is answered after all that came before it).
    fn start_barrier(&mut self, action: BarrierAction) {
        if self.shards == 1 {
            return self.complete_barrier(action);
        }
        let token = self.new_token();
        self.barriers.insert(
            token,
            Barrier {
                remaining: self.shards - 1,
                action,
            },
        );
        let from = self.id as u16;
        self.broadcast(|| ShardMsg::Ping { from, token });
    }

    fn install_session(&mut self, session: Session, token: u64) -> usize {
        let client_id = session.client_id.clone();
        let filters: Vec<(MqttStr, (SubscriptionOptions, u32))> = session
            .subscriptions
            .iter()
            .map(|(f, o)| (f.clone(), *o))
            .collect();
        let slot = self.sessions.insert(Box::new(SessionEntry {
            session,
            conn: None,
            token,
            offline_since: None,
            pending_will: None,
            moved_to: None,
            recent: None,
        }));
        if let Some(stale) = self.by_client_id.insert(client_id.clone(), slot) {
            // The ownership protocol rules this out (one session per client id). Should it
            // happen anyway, end the older session rather than leave it unreachable.
            tracing::error!(shard = self.id, client = %client_id, "a second session for one client id; ending the older");
            self.stats.protocol_violations += 1;
            if let Some(entry) = self.sessions.get_mut(stale) {
                if let Some(conn) = entry.conn.take() {
                    self.kill_conn(conn, ReasonCode::SessionTakenOver, false);
                    if let Some(conn) = self.conns.get_mut(conn) {
                        conn.state = ConnState::Detached;
                    }
                }
                self.by_client_id.insert(client_id.clone(), stale);
                self.end_session(stale);
                self.by_client_id.insert(client_id, slot);
            }
        }
        for (filter, options) in filters {
            self.add_subscription(slot, &filter, options);
        }
        slot
    }

    fn add_subscription(
        &mut self,
        session: usize,
        filter: &MqttStr,
        options: (SubscriptionOptions, u32),
    ) {
        if topic::parse_shared(filter).is_some() {
            return self.add_shared_member(session, filter, options);
        }
        if self
            .subscriptions
            .insert(filter, session, options)
            .is_none()
        {
            if let Some(delta) = self.local_interest.subscribe(filter) {
                self.interest.apply(&delta);
                self.broadcast(|| ShardMsg::Interest(delta.clone()));
            }
        }
    }

    fn remove_subscription(&mut self, session: usize, filter: &MqttStr) {
        if topic::parse_shared(filter).is_some() {
            return self.remove_shared_member(session, filter);
        }
        if self.subscriptions.remove(filter, &session).is_some() {
            if let Some(delta) = self.local_interest.unsubscribe(filter) {
                self.interest.apply(&delta);
                self.broadcast(|| ShardMsg::Interest(delta.clone()));
            }
        }
    }

    fn topic_within_limits(&self, topic: &str) -> bool {
        topic::check_limits(
            topic,
            self.config.max_topic_length,
            self.config.max_topic_levels,
        )
        .is_ok()
    }

    fn on_publish(&mut self, index: usize, session: usize, mut publish: Publish) {
        self.stats.publishes_in += 1;
        let protocol = self.conns[index].protocol;
        if let Some(alias) = publish.properties.topic_alias.take() {
            // MQTT 5.0 §3.3.2.3.4: an alias above our maximum is an error; a topic with an alias
            // (re)defines it; an empty topic uses it.
            if alias > self.config.topic_alias_maximum {
                return self.kill_conn(index, ReasonCode::TopicAliasInvalid, false);
            }
            let conn = &mut self.conns[index];
            let aliases = conn.aliases_in.get_or_insert_with(Default::default);
            if publish.topic.is_empty() {
                match aliases.get(&alias) {
                    Some(topic) => publish.topic = topic.clone(),
                    None => return self.kill_conn(index, ReasonCode::ProtocolError, false),
                }
            } else {
                // Own memory: an alias outlives the read buffer its topic arrived in.
                aliases.insert(alias, MqttStr::from(publish.topic.as_str()));
            }
        }
        if !publish.properties.subscription_identifiers.is_empty() {
            return self.kill_conn(index, ReasonCode::ProtocolError, false);
        }
        if !self.topic_within_limits(&publish.topic) {
            return self.kill_conn(index, ReasonCode::TopicNameInvalid, false);
        }
        let qos = publish.qos;
        let packet_id = publish.packet_id;
        if qos == QoS::ExactlyOnce
            && protocol.is_v5()
            && !self.sessions[session].session.has_incoming_qos2(packet_id)
            && self.sessions[session].session.incoming_qos2_len()
                >= usize::from(self.config.receive_maximum)
        {
            // More unreleased QoS 2 publishes than the Receive Maximum we announced.
            return self.kill_conn(index, ReasonCode::ReceiveMaximumExceeded, false);
        }
        // `$SYS/...` belongs to the broker: clients may not publish there.
        let refused = publish.topic.starts_with("$SYS");
        let payload_invalid = publish.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&publish.payload).is_err();
        // A refused QoS 2 publish ends with its error PUBREC (MQTT 5.0 §4.3.3): its packet id
        // is not kept, so the client may reuse it at once.
        let route = !refused
            && !payload_invalid
            && (qos != QoS::ExactlyOnce
                || self.sessions[session].session.on_incoming_qos2(packet_id));
        if refused {
            tracing::debug!(shard = self.id, topic = %publish.topic, "refused publish to $SYS");
        }
        let mut matched = true;
        let mut retain_ack = None;
        if route {
            let mut properties = std::mem::take(&mut publish.properties);
            // The expiry travels as a deadline; each delivery carries the time remaining.
            let expires_at = properties
                .message_expiry_interval
                .take()
                .map(|secs| Instant::now() + Duration::from_secs(u64::from(secs)));
            let message = Arc::new(Message {
                topic: publish.topic,
                payload: publish.payload,
                qos,
                retain: publish.retain,
                properties,
                publisher: self.sessions[session].session.client_id.clone(),
                expires_at,
            });
            self.current_publisher = Some(index);
            let (any, ack) = self.route_publish(message);
            self.current_publisher = None;
            matched = any;
            retain_ack = ack;
        }
        let reason = match () {
            _ if !protocol.is_v5() => ReasonCode::Success,
            _ if refused => ReasonCode::NotAuthorized,
            // MQTT 5.0 §3.3.2.3.2: the server may refuse a payload that is not the UTF-8 it claims.
            _ if payload_invalid => ReasonCode::PayloadFormatInvalid,
            _ if !matched => ReasonCode::NoMatchingSubscribers,
            _ => ReasonCode::Success,
        };
        let ack = Ack {
            packet_id,
            reason,
            properties: Properties::default(),
        };
        let packet = match qos {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => Packet::PubAck(ack),
            QoS::ExactlyOnce => Packet::PubRec(ack),
        };
        match retain_ack {
            // A retained message is acknowledged once its topic's owner has applied it, so a
            // client that saw the PUBACK finds it on every shard.
            Some(token) => {
                let serial = self.conns[index].serial;
                self.conns[index].paused = true;
                self.held_acks.insert(
                    token,
                    HeldAck {
                        conn: index,
                        serial,
                        packet,
                    },
                );
            }
            None => self.write(index, packet),
        }
    }

    fn on_ack(&mut self, index: usize, session: usize, kind: AckKind, ack: Ack) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        let was_empty = conn.out.is_empty();
        let entry = &mut self.sessions[session].session;
        let result = match kind {
            AckKind::Ack => entry.on_puback(ack.packet_id, &mut conn.out, Instant::now()),
            AckKind::Rec => {
                entry.on_pubrec(ack.packet_id, ack.reason, &mut conn.out, Instant::now())
            }
            AckKind::Comp => entry.on_pubcomp(ack.packet_id, &mut conn.out, Instant::now()),
        };
        if result.is_err() {
            return self.kill_conn(index, ReasonCode::ProtocolError, false);
        }
        if was_empty && !self.conns[index].out.is_empty() {
            self.wake_conn(index);
        }
        self.release_throttled(Some(session));
    }

    fn on_subscribe(&mut self, index: usize, session: usize, subscribe: Subscribe) {
        let protocol = self.conns[index].protocol;
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut retained_for = Vec::new();
        let subscription_id = subscribe
            .properties
            .subscription_identifiers
            .first()
            .copied()
            .unwrap_or(0);
        for (filter, options) in subscribe.filters {
            if !self.topic_within_limits(&filter) {
                reasons.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
            let shared = topic::parse_shared(&filter).is_some();
            let entry = (options, subscription_id);
            let existed = self.sessions[session]
                .session
                .subscriptions
                .insert(filter.clone(), entry)
                .is_some();
            if existed && !shared {
                // Same filter again: new options replace the old, interest is unchanged.
                self.subscriptions.insert(&filter, session, entry);
            } else {
                self.add_subscription(session, &filter, entry);
            }
            reasons.push(match options.qos {
                QoS::AtMostOnce => ReasonCode::Success,
                QoS::AtLeastOnce => ReasonCode::GrantedQos1,
                QoS::ExactlyOnce => ReasonCode::GrantedQos2,
            });
            let send_retained = match options.retain_handling {
                crate::codec::RetainHandling::SendOnSubscribe => true,
                crate::codec::RetainHandling::SendIfNew => !existed,
                crate::codec::RetainHandling::DoNotSend => false,
            };
            // Shared subscriptions never receive retained messages on subscribe (MQTT 5.0 §4.8.2).
            if !shared && (send_retained || !protocol.is_v5()) {
                retained_for.push((filter, options));
            }
        }
        let suback = SubAck {
            packet_id: subscribe.packet_id,
            properties: Properties::default(),
            reasons,
        };
        let retained_for = retained_for
            .into_iter()
            .map(|(filter, options)| (filter, options, subscription_id))
            .collect();
        let serial = self.conns[index].serial;
        let action = BarrierAction::SubAck {
            conn: index,
            serial,
            session,
            suback: Box::new(suback),
            retained_for,
        };
        // SUBACK only once every other shard has applied the interest change (and any
        // retained update it had already accepted): a publish the client sees acknowledged
        // anywhere after its SUBACK is then routed here.
        self.conns[index].paused = true;
        self.start_barrier(action);
    }

    fn on_pong(&mut self, token: u64) {
        let Some(barrier) = self.barriers.get_mut(&token) else {
            return;
        };
        barrier.remaining -= 1;
        if barrier.remaining == 0 {
            if let Some(barrier) = self.barriers.remove(&token) {
                self.complete_barrier(barrier.action);
            }
        }
    }

    fn complete_barrier(&mut self, action: BarrierAction) {
        match action {
            BarrierAction::SubAck {
                conn,
                serial,
                session,
                suback,
                retained_for,
            } => {
                if self.conns.get(conn).is_none_or(|c| c.serial != serial) {
                    return;
                }
                self.write(conn, Packet::SubAck(*suback));
                for (filter, options, subscription_id) in retained_for {
                    let mut found = Vec::new();
                    self.retained
                        .for_each_match(&filter, |message| found.push(Arc::clone(message)));
                    let ids: &[u32] = if subscription_id == 0 {
                        &[]
                    } else {
                        &[subscription_id]
                    };
                    let now = Instant::now();
                    for message in found {
                        let qos = message.qos.min(options.qos);
                        self.deliver_to(session, &message, qos, true, ids, now);
                    }
                }
                self.resume_reading(conn);
            }
            BarrierAction::ReleaseStub {
                shard,
                token,
                client_id,
            } => {
                // The stub's last forwards reach us before its StubGone (FIFO queues): the
                // move completes, and the claim settles, when that arrives.
                let from = self.id as u16;
                self.send(
                    usize::from(shard),
                    ShardMsg::StubDone {
                        client_id,
                        token,
                        from,
                    },
                );
            }
        }
    }

    fn remove_stub(&mut self, token: u64) {
        let Some(slot) = self.stubs.remove(&token) else {
            return;
        };
        let is_stub = self
            .sessions
            .get(slot)
            .is_some_and(|e| e.moved_to.is_some_and(|m| m.1 == token));
        if !is_stub {
            return;
        }
        let entry = self.sessions.remove(slot);
        for filter in entry.session.subscriptions.keys() {
            self.remove_subscription(slot, filter);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_forward(
        &mut self,
        client_id: MqttStr,
        token: u64,
        message: Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: Vec<u32>,
        group: Option<MqttStr>,
    ) {
        match self.by_client_id.get(&client_id) {
            Some(&slot) if self.sessions.get(slot).is_some_and(|e| e.token == token) => self
                .deliver_tagged(
                    slot,
                    &message,
                    qos,
                    retain,
                    &subscription_ids,
                    group.as_ref(),
                    Instant::now(),
                ),
            _ => {
                tracing::debug!(shard = self.id, client = %client_id, "forwarded message for a session that moved on");
            }
        }
    }

    fn resume_reading(&mut self, conn: usize) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.paused = false;
            c.reprocess = !c.leftover.is_empty();
            self.wake_conn(conn);
        }
    }

    fn release_held_ack(&mut self, token: u64) {
        let Some(held) = self.held_acks.remove(&token) else {
            return;
        };
        if self
            .conns
            .get(held.conn)
            .is_some_and(|c| c.serial == held.serial)
        {
            self.write(held.conn, held.packet);
            self.resume_reading(held.conn);
        }
    }

    fn on_unsubscribe(&mut self, index: usize, session: usize, unsubscribe: Unsubscribe) {
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        for filter in &unsubscribe.filters {
            let existed = self.sessions[session]
                .session
                .subscriptions
                .remove(filter)
                .is_some();
            if existed {
                self.remove_subscription(session, filter);
                reasons.push(ReasonCode::Success);
            } else {
                reasons.push(ReasonCode::NoSubscriptionExisted);
            }
        }
        self.write(
            index,
            Packet::UnsubAck(UnsubAck {
                packet_id: unsubscribe.packet_id,
                properties: Properties::default(),
                reasons,
            }),
        );
    }

    // ----- routing ----------------------------------------------------------------------------

    fn publish_will(&mut self, client_id: &MqttStr, will: Box<LastWill>) {
        let will = *will;
        let expires_at = will
            .properties
            .message_expiry_interval
            .map(|secs| Instant::now() + Duration::from_secs(u64::from(secs)));
        let properties = Properties {
            payload_format_indicator: will.properties.payload_format_indicator,
            content_type: will.properties.content_type,
            response_topic: will.properties.response_topic,
            correlation_data: will.properties.correlation_data,
            user_properties: will.properties.user_properties,
            ..Properties::default()
        };
        let message = Arc::new(Message {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties,
            publisher: client_id.clone(),
            expires_at,
        });
        tracing::debug!(shard = self.id, client = %client_id, topic = %message.topic, "publishing will");
        self.route_publish(message);
    }

    /// Routes a message published on this shard: retained store, local subscribers, and one
    /// forward per other interested shard.
    /// Returns whether any subscriber (on any shard, as far as the replicas know) matched.
    /// `retain_ack` is set when a retained update went to another shard with a request to
    /// confirm it (the caller holds the client's acknowledgement until then).
    fn route_publish(&mut self, message: Arc<Message>) -> (bool, Option<u64>) {
        let mut retain_ack = None;
        if message.retain {
            let owned = if message.payload.is_empty() {
                None
            } else {
                // Retained messages live long: give them memory of their own instead of a slice
                // that pins the whole read buffer.
                Some(Arc::new(Message {
                    topic: MqttStr::from(message.topic.as_str()),
                    payload: Bytes::copy_from_slice(&message.payload),
                    ..(*message).clone()
                }))
            };
            let owner = self.topic_owner(&message.topic);
            let ack = if owner != self.id {
                let token = self.new_token();
                retain_ack = Some(token);
                Some((self.id as u16, token))
            } else {
                None
            };
            self.send(
                owner,
                ShardMsg::RetainUpdate {
                    topic: message.topic.clone(),
                    message: owned,
                    ack,
                },
            );
        }
        let mut matched = self.route_local(&message);
        matched |= self.route_shared(&message);
        let shards = self.interest.shards_for(&message.topic);
        matched |= shards.iter().any(|shard| shard != self.id);
        for shard in shards.iter() {
            if shard != self.id && shard < self.shards {
                self.stats.forwarded += 1;
                self.send(shard, ShardMsg::Publish(Arc::clone(&message)));
            }
        }
        (matched, retain_ack)
    }

    fn apply_retained(&mut self, topic: &str, message: Option<Arc<Message>>) {
        match message {
            Some(message) => {
                self.retained.set(topic, message);
            }
            None => {
                self.retained.remove(topic);
            }
        }
    }

    fn add_shared_member(
        &mut self,
        session: usize,
        full: &MqttStr,
        options: (SubscriptionOptions, u32),
    ) {
        let group = self.shared_groups.entry(full.clone()).or_default();
        let first = group.members.is_empty();
        match group.members.iter_mut().find(|m| m.0 == session) {
            Some(member) => *member = (session, options.0, options.1),
            None => group.members.push((session, options.0, options.1)),
        }
        if first {
            self.apply_shared_interest(full, self.id, true);
            let shard = self.id as u16;
            self.broadcast(|| ShardMsg::SharedInterest {
                filter: full.clone(),
                shard,
                added: true,
            });
        }
    }

    fn remove_shared_member(&mut self, session: usize, full: &MqttStr) {
        let Some(group) = self.shared_groups.get_mut(full) else {
            return;
        };
        group.members.retain(|m| m.0 != session);
        if group.sticky == Some(session) {
            group.sticky = None;
        }
        if group.members.is_empty() {
            self.shared_groups.remove(full);
            self.apply_shared_interest(full, self.id, false);
            let shard = self.id as u16;
            self.broadcast(|| ShardMsg::SharedInterest {
                filter: full.clone(),
                shard,
                added: false,
            });
        }
    }

    /// Replica update: `shard` gained its first or lost its last member of group `full`.
    fn apply_shared_interest(&mut self, full: &MqttStr, shard: usize, added: bool) {
        let Some(Ok(parsed)) = topic::parse_shared(full) else {
            return;
        };
        let inner = parsed.filter;
        let mut shards = self
            .shared_index
            .get(inner, full)
            .copied()
            .unwrap_or_default();
        if added {
            shards.insert(shard);
        } else {
            shards.remove(shard);
        }
        if shards.is_empty() {
            self.shared_index.remove(inner, full);
        } else {
            self.shared_index.insert(inner, full.clone(), shards);
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: member selection needs spread, not cryptographic quality.
        let mut x = self.random_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random_state = x;
        x
    }

    /// On the publishing shard: one delivery per matching shared-subscription group.
    fn route_shared(&mut self, message: &Arc<Message>) -> bool {
        if self.shared_index.is_empty() {
            return false;
        }
        let mut groups: Vec<MqttStr> = Vec::new();
        self.shared_index
            .for_each_match(&message.topic, |group, _| groups.push(group.clone()));
        let matched = !groups.is_empty();
        for group in groups {
            self.route_shared_group(&group, message);
        }
        matched
    }

    /// Picks the shard that serves this message for `group` and hands it over.
    fn route_shared_group(&mut self, group: &MqttStr, message: &Arc<Message>) {
        let Some(Ok(parsed)) = topic::parse_shared(group) else {
            return;
        };
        let Some(shards) = self.shared_index.get(parsed.filter, group).copied() else {
            tracing::debug!(shard = self.id, %group, "shared group has no members; message dropped");
            return;
        };
        let count = shards.len().max(1);
        let pick = match self.config.shared_subscription_strategy {
            SharedStrategy::RoundRobin => {
                let cursor = self.shared_cursor.entry(group.clone()).or_insert(0);
                *cursor = cursor.wrapping_add(1);
                *cursor % count
            }
            SharedStrategy::Random => (self.next_random() % count as u64) as usize,
            // Sticky prefers this shard's members, then the lowest shard with members.
            SharedStrategy::Sticky => shards.iter().position(|s| s == self.id).unwrap_or(0),
        };
        let target = shards.iter().nth(pick).unwrap_or(self.id);
        if target == self.id {
            self.deliver_shared(group, message);
        } else {
            self.send(
                target,
                ShardMsg::SharedPublish {
                    group: group.clone(),
                    message: Arc::clone(message),
                },
            );
        }
    }

    /// Delivers a shared-subscription message to one local member of `group`: connected
    /// members first, in the configured order; an offline persistent member queues it.
    fn deliver_shared(&mut self, group_key: &MqttStr, message: &Arc<Message>) {
        let strategy = self.config.shared_subscription_strategy;
        let random = self.next_random() as usize;
        let Some(group) = self.shared_groups.get(group_key) else {
            // Membership changed while the message was in flight: choose again among the
            // shards that still have members.
            let Some(Ok(parsed)) = topic::parse_shared(group_key) else {
                return;
            };
            let elsewhere = self
                .shared_index
                .get(parsed.filter, group_key)
                .is_some_and(|shards| shards.iter().any(|s| s != self.id));
            if elsewhere {
                self.route_shared_group(group_key, message);
            }
            return;
        };
        let members = group.members.clone();
        let count = members.len();
        if count == 0 {
            return;
        }
        let start = match strategy {
            SharedStrategy::RoundRobin => group.cursor.wrapping_add(1) % count,
            SharedStrategy::Random => random % count,
            SharedStrategy::Sticky => group
                .sticky
                .and_then(|s| members.iter().position(|m| m.0 == s))
                .unwrap_or(0),
        };
        let online = |shard: &Shard, session: usize| {
            shard
                .sessions
                .get(session)
                .and_then(|e| e.conn)
                .and_then(|c| shard.conns.get(c))
                .is_some_and(|c| c.kill.is_none())
        };
        let chosen_offset = (0..count)
            .find(|offset| online(self, members[(start + offset) % count].0))
            .unwrap_or(0);
        let chosen = members[(start + chosen_offset) % count];
        if let Some(group) = self.shared_groups.get_mut(group_key) {
            group.cursor = start + chosen_offset;
            group.sticky = Some(chosen.0);
        }
        let (session, options, id) = chosen;
        let qos = message.qos.min(options.qos);
        let retain = options.retain_as_published && message.retain;
        let ids: &[u32] = if id == 0 { &[] } else { &[id] };
        self.deliver_tagged(
            session,
            message,
            qos,
            retain,
            ids,
            Some(group_key),
            Instant::now(),
        );
    }

    /// Delivers to this shard's subscribers: once per session, at the highest granted QoS of its
    /// matching subscriptions.
    /// Returns whether any local subscription matched.
    fn route_local(&mut self, message: &Arc<Message>) -> bool {
        let mut matches = std::mem::take(&mut self.matches);
        let mut ids = std::mem::take(&mut self.subscription_ids);
        matches.clear();
        self.subscriptions
            .for_each_match(&message.topic, |&session, &(options, id)| {
                matches.push((session, options, id))
            });
        if matches.len() > 1 {
            matches.sort_unstable_by_key(|&(session, _, id)| (session, id));
        }
        let now = Instant::now();
        let mut start = 0;
        while start < matches.len() {
            // One delivery per session: the highest granted QoS of its matching subscriptions,
            // with every matching subscription identifier (MQTT 5.0 §3.3.4).
            let session = matches[start].0;
            let mut end = start;
            let mut options = matches[start].1;
            ids.clear();
            while end < matches.len() && matches[end].0 == session {
                let (_, other, id) = matches[end];
                options.qos = options.qos.max(other.qos);
                options.retain_as_published |= other.retain_as_published;
                options.no_local &= other.no_local;
                if id != 0 {
                    ids.push(id);
                }
                end += 1;
            }
            start = end;
            if options.no_local
                && self
                    .sessions
                    .get(session)
                    .is_none_or(|e| e.session.client_id == message.publisher)
            {
                continue;
            }
            let qos = message.qos.min(options.qos);
            let retain = options.retain_as_published && message.retain;
            self.deliver_to(session, message, qos, retain, &ids, now);
        }
        let matched = !matches.is_empty();
        self.matches = matches;
        self.subscription_ids = ids;
        matched
    }

    fn deliver_to(
        &mut self,
        session: usize,
        message: &Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: &[u32],
        now: Instant,
    ) {
        self.deliver_tagged(session, message, qos, retain, subscription_ids, None, now);
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver_tagged(
        &mut self,
        session: usize,
        message: &Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: &[u32],
        group: Option<&MqttStr>,
        now: Instant,
    ) {
        let slot = session;
        let Some(entry) = self.sessions.get_mut(session) else {
            return;
        };
        if let Some((shard, token)) = entry.moved_to {
            let client_id = entry.session.client_id.clone();
            self.send(
                usize::from(shard),
                ShardMsg::Forward {
                    client_id,
                    token,
                    message: Arc::clone(message),
                    qos,
                    retain,
                    subscription_ids: subscription_ids.to_vec(),
                    group: group.cloned(),
                },
            );
            return;
        }
        if let Some(recent) = entry.recent.as_mut() {
            if recent.until.is_some_and(|until| until <= now) {
                entry.recent = None;
            } else {
                if recent.messages.iter().any(|(m, _)| Arc::ptr_eq(m, message)) {
                    return;
                }
                if recent.messages.len() >= MOVE_DEDUP_CAPACITY {
                    recent.messages.pop_front();
                }
                recent.messages.push_back((Arc::clone(message), now));
            }
        }
        let max_buffer = self.config.max_write_buffer;
        let online = entry.conn.is_some();
        let conn = entry
            .conn
            .and_then(|index| self.conns.get_mut(index).map(|c| (index, c)));
        let (out, index, was_empty) = match conn {
            Some((index, conn)) if conn.kill.is_none() && conn.out.len() < max_buffer => {
                let was_empty = conn.out.is_empty();
                (Some(&mut conn.out), Some(index), was_empty)
            }
            _ => (None, None, false),
        };
        let session = &mut entry.session;
        let before = (
            session.dropped_queue_full,
            session.dropped_qos0,
            session.dropped_expired + session.dropped_too_large,
        );
        session.deliver(
            message,
            qos,
            retain,
            subscription_ids,
            group,
            out,
            &mut self.cache,
            now,
        );
        let queued = session.queued_len();
        self.stats.dropped_queue_full += session.dropped_queue_full - before.0;
        self.stats.dropped_qos0 += session.dropped_qos0 - before.1;
        self.stats.dropped_other += session.dropped_expired + session.dropped_too_large - before.2;
        if let Some(index) = index {
            if was_empty {
                self.wake_conn(index);
            }
        }
        // Only a connected subscriber drains its queue; an offline one's queue simply fills to
        // its bound, which must not slow the publishers down.
        let high_water = self.config.max_queued_messages / 2;
        if high_water > 0 && queued >= high_water && online {
            self.throttle_publisher(slot);
        }
    }

    /// Backpressure instead of loss: the local connection whose publish just filled half of a
    /// subscriber's queue stops being read until that queue drains.
    fn throttle_publisher(&mut self, congested: usize) {
        let Some(publisher) = self.current_publisher else {
            return;
        };
        let own_session = self.session_of(publisher);
        let Some(conn) = self.conns.get_mut(publisher) else {
            return;
        };
        // A client is never throttled on its own queue: it must keep reading its PUBACKs.
        if conn.throttled || own_session == Some(congested) {
            return;
        }
        conn.throttled = true;
        self.throttled.push((publisher, conn.serial, congested));
    }

    /// Resumes publishers waiting on `session` (all of them when `session` is `None`) once its
    /// queue is at most a quarter full.
    fn release_throttled(&mut self, session: Option<usize>) {
        if self.throttled.is_empty() {
            return;
        }
        let low_water = self.config.max_queued_messages / 4;
        let drained = |shard: &Shard, s: usize| {
            shard
                .sessions
                .get(s)
                .is_none_or(|e| e.session.queued_len() <= low_water)
        };
        let mut released = Vec::new();
        let mut throttled = std::mem::take(&mut self.throttled);
        throttled.retain(|&(conn, serial, waiting_on)| {
            let due = match session {
                None => true,
                Some(s) => s == waiting_on && drained(self, s),
            };
            if due {
                released.push((conn, serial));
            }
            !due
        });
        self.throttled = throttled;
        for (conn, serial) in released {
            if let Some(c) = self.conns.get_mut(conn) {
                if c.serial == serial {
                    c.throttled = false;
                    c.reprocess = !c.leftover.is_empty();
                    self.wake_conn(conn);
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum AckKind {
    Ack,
    Rec,
    Comp,
}

#[cfg(test)]
mod claim_model;

#[cfg(test)]
mod footprint {
    /// Memory per idle connection is a product target (at most 2 KiB including glommio's own
    /// ~0.9 KiB): these structs are allocated once per connection or session, so growth here
    /// is a regression.
    #[test]
    fn per_connection_structs_stay_small() {
        assert!(std::mem::size_of::<super::Conn>() <= 128);
        assert!(std::mem::size_of::<super::SessionEntry>() <= 352);
    }
}
