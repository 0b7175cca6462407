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
//! fresh or in-place session, after `StubGone` when the session moved from another shard. The
//! owner of `t` answers `TakeOver{t -> u}` by closing `t`'s connection and handing the session
//! to `u` (in place on the same shard, moved with a stub to another, or ended on clean start).
//! A session that ends sends `Release{t}`; messages about stale tokens are ignored.
//!
//! A move between shards (old shard O, new shard N, every other shard P) runs three barriers
//! (a barrier: ping every peer, act once all have answered; queues are FIFO per pair):
//! 1. O turns the session into a forwarding stub and sends `Granted` only after its barrier:
//!    everything O sent on the session's behalf (retained updates, publishes) has been applied
//!    everywhere, so the old connection's work never lands after the new one's.
//! 2. N installs the session (subscriptions, interest deltas), then pings every peer; once all
//!    answered (every peer routes here) it sends `StubDone` to O. Meanwhile N deduplicates
//!    deliveries against what the session received on its previous shards and still holds,
//!    and takes a peer's direct publishes only after that peer's answer: earlier ones reached
//!    the session through O's stub. Deliveries the stub forwarded before the session arrived
//!    are kept in the claim and delivered at install.
//! 3. O drops the stub only after its own barrier (every peer's earlier deliveries to the stub
//!    have arrived and been forwarded), then sends `StubGone`; N's claim settles.
//!
//! Invariants (checked after every step by the claim-protocol model test):
//! - at most one takeover per client id is in flight, so a `TakeOver{t}` always reaches a shard
//!   that has already processed `Granted{t}` (the race that once left two sessions alive);
//! - at any time at most one session per client id is indexed (`by_client_id`) on any shard,
//!   at most one live connection is attached to it, and no session is reachable from two
//!   index entries;
//! - at most one forwarding stub exists per client id;
//! - a QoS 1/2 message accepted for a live session reaches it, a QoS 2 message once, across
//!   moves (checked by the multi-shard simulation tests, `tests/simulation.rs`).
//!
//! Handles that travel between shards or outlive a borrow (session slots in conns, barriers,
//! handovers) are checked against the session's claim token before use: a stale handle is a
//! dropped event with a debug log, never a panic.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use core_router::interest::{InterestIndex, LocalInterest, ShardSet};
use core_router::retained::RetainedStore;
use core_router::topic;
use core_router::trie::SubscriptionTrie;

use super::handles::{ConnId, ConnKind, GenSlab, SessionId, SessionKind};
use super::hooks::{
    ClientAcl, ClientRef, Durability, Hooks, JournalRecord, ListenerAdmission, SubscribeCheck,
};
use super::mesh::{HandoverKind, OriginMark, Outbox, RecentDeliveries, ShardMsg};
use crate::codec::{
    decode, Ack, ConnAck, Connect, DecodeError, Disconnect, LastWill, MqttStr, Output, Packet,
    Properties, PropertyFields, ProtocolVersion, Publish, QoS, ReasonCode, SubAck, Subscribe,
    SubscriptionOptions, UnsubAck, Unsubscribe,
};
use crate::config::{Config, SharedStrategy};
use crate::session::{EncodeCache, Message, Session, SessionLimits, WillTiming};

mod admin;
mod barrier;
mod conn;
mod connect;
mod delivery;
mod durable;
mod flow;
mod identity;
mod index;
mod login_delay;
mod origins;
mod outbox;
mod overload;
mod publish;
pub(crate) mod rate;
mod recovery;
mod registry;
mod retained;
mod sessions;
mod shared;
mod stats;
mod subscribe;
mod takeover;
mod timers;

pub use admin::{AdminReply, AdminRequest, ClientInfo, SessionOutcome, SessionReport};
use barrier::*;
use conn::*;
pub use conn::{Conn, Kill, ReadState};
use durable::*;
use index::{Registry, SessionIndex};
use login_delay::FailedLogins;
use origins::digest as origin_digest;
use origins::Origin;
use overload::Overload;
pub use rate::RateGate;
use registry::*;
use retained::*;
use sessions::*;
use shared::*;
use stats::SessionMark;
pub use stats::{
    ConnackRefusal, DisconnectCause, DropReason, LatencyHistogram, ShardStats,
    LATENCY_BOUNDS_NANOS, LATENCY_BUCKETS, QOS_LABELS, QOS_LEVELS,
};
use takeover::*;
use timers::*;

/// A map keyed by handles or tokens the broker makes itself (never by client input), looked
/// up per held acknowledgement: SipHash was a visible share of a durable publish.
type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<crate::store::FoldHasher>>;

/// Process-wide state shared by all shards.
#[derive(Debug, Default)]
pub struct Global {
    /// Set to stop the broker.
    pub shutdown: AtomicBool,
    /// Open client connections, all shards.
    pub connections: AtomicUsize,
    /// A shard thread died (panicked): the broker cannot serve correctly any more.
    pub failed: AtomicBool,
    /// Open connections per listener (index in `Config::listeners`), all shards.
    pub listener_connections: Vec<AtomicUsize>,
    /// Each listener's connection-rate bucket (index in `Config::listeners`), all shards.
    pub listener_rates: Vec<RateGate>,
    /// The process is over `max_memory` (set by the shard that samples memory use).
    pub memory_pressure: AtomicBool,
    /// Serial of the durable generations (session owners, retained versions) of this boot:
    /// one counter for all shards, so that an owner installed after another (the ownership
    /// protocol orders them) always has the larger generation.
    pub generations: AtomicU64,
    /// This boot's epoch: the high bits of every generation it issues (one more than the
    /// newest recovered from the data directory).
    pub epoch: AtomicU64,
}

/// A shard: its connections, sessions, subscriptions, replicas and outboxes.
#[derive(Debug)]
pub struct Shard {
    /// This shard's index (its position in the mesh).
    pub id: usize,
    shards: usize,
    config: Rc<Config>,
    /// The limits of the sessions this shard creates or resumes (shared with them).
    limits: Arc<SessionLimits>,
    global: Arc<Global>,
    started: Instant,
    /// The time of the input being handled (given by the runtime; the shard reads no clock).
    now: Instant,
    /// Whole seconds since `started`, as of the last tick (the timing wheel's position).
    now_secs: u32,
    next_serial: u64,
    conns: GenSlab<ConnKind, Conn>,
    // Boxed: a slab grows by doubling, and spare slots of a 264-byte entry would cost more than
    // the pointer.
    sessions: GenSlab<SessionKind, Box<SessionEntry>>,
    by_client_id: SessionIndex,
    /// Local subscriptions: filter -> session slot, with options and subscription identifier.
    subscriptions: SubscriptionTrie<SessionId, (SubscriptionOptions, u32)>,
    local_interest: LocalInterest,
    interest: InterestIndex,
    retained: RetainedStore<Arc<Message>>,
    /// Payload bytes of the retained replica (`$SYS` topics not included).
    retained_bytes: usize,
    /// Retained `$SYS` topics in the replica (outside the retained bounds).
    retained_sys: usize,
    /// A refusal for the retained bounds was logged (once per episode).
    retained_full_logged: bool,
    /// Shared-subscription groups with members on this shard, by `$share/{group}/{filter}`.
    shared_groups: HashMap<MqttStr, SharedGroup>,
    /// Replicated: for each group (keyed by its full `$share/...` filter, stored under the inner
    /// filter), the shards that have members.
    shared_index: SubscriptionTrie<MqttStr, ShardSet>,
    shared_cursor: HashMap<MqttStr, usize>,
    /// Reused by shared-subscription routing for the matching groups of one message.
    shared_scratch: Vec<MqttStr>,
    random_state: u64,
    /// Home-shard registrations by client id.
    registry: Registry,
    hooks: Hooks,
    /// Outputs held until the journal reports them durable, in sequence order.
    held_outputs: VecDeque<HeldOutput>,
    /// Acknowledgements that also wait for peer shards, per connection (see [`PeerWait`]).
    peer_waits: FastMap<ConnId, VecDeque<PeerWait>>,
    /// The connection of each outstanding store barrier token.
    peer_wait_tokens: FastMap<u64, ConnId>,
    /// Peers this shard forwarded deliveries to since it last answered a `StoreBarrier`.
    forwarded_to: Vec<usize>,
    /// Barriers relayed to those peers, by the relay's token.
    relays: HashMap<u64, Relay>,
    /// QoS 2 publishes from peers whose publisher's shard has not recorded the packet id yet,
    /// by publisher and packet id (see `origins.rs`).
    origins: HashMap<(MqttStr, u16), Origin>,
    /// The keys of the origin entries recovery found, on any shard (see `origins.rs`): their
    /// commits go to every shard.
    recovered_origins: std::collections::HashSet<(MqttStr, u16)>,
    /// Barriers waiting for pending claims' forwarded deliveries to be installed.
    deferred_barriers: Vec<(usize, u64, bool)>,
    /// The journal's last report: everything up to this sequence number is durable.
    durable_through: u64,
    /// Connections whose output is held, and the sequence number it waits for.
    output_held_until: FastMap<ConnId, u64>,
    /// The keys of `output_held_until`, each once: what [`Shard::on_durable`] checks (the
    /// connections held since the last write, not a scan of the map's whole table).
    output_held_conns: Vec<ConnId>,
    /// Per connection, the sequence number its last packet in `held_outputs` waits for.
    held_packet_until: FastMap<ConnId, u64>,
    /// The keys of `held_packet_until`, each once (see `output_held_conns`).
    held_packet_conns: Vec<ConnId>,
    /// Always empty: what [`Shard::output`] hands out for a connection whose output is held.
    no_output: Output,
    /// Recovered sessions are being installed (their image follows in `journal_image`).
    installing_recovered: bool,
    /// Peers that announced their recovery ([`Shard::announce_recovered`]).
    peers_recovered: usize,
    /// The journal's disk is full (see [`Shard::set_storage_full`]).
    storage_full: bool,
    /// While a publish is routed with a journal: the peer shards it reaches (they are asked
    /// for a `StoreBarrier` before it is acknowledged). `None`: not collecting.
    store_targets: Option<Vec<usize>>,
    barriers: HashMap<u64, Barrier>,
    /// The connection whose PUBLISH is being routed right now (for publisher throttling).
    current_publisher: Option<ConnId>,
    /// Throttled publishers: (connection, the congested session).
    throttled: Vec<(ConnId, SessionId)>,
    /// Stubs of sessions that moved away, by the new claim's token.
    stubs: HashMap<u64, SessionId>,
    held_acks: HashMap<u64, HeldAck>,
    pending_claims: HashMap<u64, PendingClaim>,
    outbox: Outbox,
    local_inbox: VecDeque<ShardMsg>,
    /// Each listener's own connection limit (0: none), by listener index.
    listener_limits: Vec<usize>,
    /// Each listener's rules for its clients (`allow_anonymous`, `mount_point`), by listener
    /// index. Taken at start: changing a listener needs a restart (`reload_diff` says so).
    listener_rules: Vec<ListenerRules>,
    /// Connections registered over a connection limit, waiting for their refusing CONNACK.
    over_limit: usize,
    /// Connections that wanted to read while cross-shard backpressure was on.
    paused_readers: Vec<ConnId>,
    /// Connections that need the runtime's attention (see [`Shard::drain_wakes`]).
    wakes: Vec<ConnId>,
    /// Peer addresses of connections whose CONNECT is not answered yet (for the connection
    /// and refusal log lines); dropped once it is, so idle clients do not pay for it.
    peers: HashMap<ConnId, std::net::SocketAddr>,
    /// The peer whose batch is being applied (see [`Shard::on_mesh_from`]).
    mesh_source: Option<usize>,
    matches: Vec<(SessionId, SubscriptionOptions, u32)>,
    subscription_ids: Vec<u32>,
    cache: EncodeCache,
    wheel: Wheel,
    /// Memory budget, publish rates, connection rates.
    overload: Overload,
    /// Recent failed logins by address, and refusals they delay.
    failed_logins: FailedLogins,
    /// Certificate CNs of connections whose listener uses them as user names.
    certificate_users: identity::CertificateUsers,
    /// Counters.
    stats: ShardStats,
}

/// Each listener's connection limit, by listener index.
fn listener_limits(config: &Config) -> Vec<usize> {
    config
        .listeners()
        .iter()
        .map(|listener| listener.max_connections)
        .collect()
}

/// A listener's own rules for the clients it accepts.
#[derive(Debug, Clone, Default)]
pub(super) struct ListenerRules {
    /// `allow_anonymous`: overrides the broker-wide rule when set.
    pub(super) allow_anonymous: Option<bool>,
    /// `mount_point`: the topic prefix of its clients (`None`: no prefix).
    pub(super) mount_point: Option<MqttStr>,
}

/// Each listener's rules, by listener index.
fn listener_rules(config: &Config) -> Vec<ListenerRules> {
    config
        .listeners()
        .iter()
        .map(|listener| ListenerRules {
            allow_anonymous: listener.allow_anonymous,
            mount_point: listener
                .mount_point
                .as_deref()
                .filter(|mount| !mount.is_empty())
                .map(MqttStr::from),
        })
        .collect()
}

/// The mount point of listener `listener` (a `Conn::listener` or `SessionEntry::listener`).
pub(super) fn mount_of(rules: &[ListenerRules], listener: u16) -> Option<&str> {
    rules
        .get(usize::from(listener))
        .and_then(|rules| rules.mount_point.as_deref())
}

/// `topic` (a topic name or a filter) under `mount`; for `$share/{group}/{filter}` the prefix
/// goes on the filter part. `None` for a malformed `$share/` filter.
pub(super) fn mount_topic(mount: &str, topic: &str) -> Option<MqttStr> {
    match topic::parse_shared(topic) {
        None => Some(MqttStr::from(format!("{mount}{topic}"))),
        Some(Ok(shared)) => Some(MqttStr::from(format!(
            "$share/{}/{mount}{}",
            shared.group, shared.filter
        ))),
        Some(Err(_)) => None,
    }
}

/// The session limits a configuration sets.
fn session_limits(config: &Config) -> Arc<SessionLimits> {
    Arc::new(SessionLimits {
        max_inflight: config.max_inflight,
        max_queued_messages: config.max_queued_messages,
        max_queued_bytes: config.max_queued_bytes,
    })
}

impl Shard {
    /// A shard with no connections yet.
    pub fn new(
        id: usize,
        shards: usize,
        config: Rc<Config>,
        global: Arc<Global>,
        now: Instant,
    ) -> Self {
        let limits = session_limits(&config);
        let (admission, authorization) = super::hooks::auth_hooks(&config);
        let hooks = Hooks {
            admission,
            authorization,
            ..Hooks::default()
        };
        Shard {
            id,
            shards,
            limits,
            global,
            started: now,
            now,
            now_secs: 0,
            next_serial: 1,
            conns: GenSlab::new(),
            sessions: GenSlab::new(),
            by_client_id: SessionIndex::default(),
            subscriptions: SubscriptionTrie::new(),
            local_interest: LocalInterest::new(id as u16),
            interest: InterestIndex::new(),
            retained: RetainedStore::new(),
            retained_bytes: 0,
            retained_sys: 0,
            retained_full_logged: false,
            shared_groups: HashMap::new(),
            shared_index: SubscriptionTrie::new(),
            shared_cursor: HashMap::new(),
            shared_scratch: Vec::new(),
            random_state: 0x9e37_79b9_7f4a_7c15 ^ (id as u64 + 1),
            registry: Registry::default(),
            hooks,
            held_outputs: VecDeque::new(),
            peer_waits: FastMap::default(),
            peer_wait_tokens: FastMap::default(),
            forwarded_to: Vec::new(),
            relays: HashMap::new(),
            origins: HashMap::new(),
            recovered_origins: std::collections::HashSet::new(),
            deferred_barriers: Vec::new(),
            durable_through: 0,
            storage_full: false,
            peers_recovered: 0,
            installing_recovered: false,
            no_output: Output::default(),
            output_held_until: FastMap::default(),
            output_held_conns: Vec::new(),
            held_packet_until: FastMap::default(),
            held_packet_conns: Vec::new(),
            store_targets: None,
            barriers: HashMap::new(),
            current_publisher: None,
            throttled: Vec::new(),
            stubs: HashMap::new(),
            held_acks: HashMap::new(),
            pending_claims: HashMap::new(),
            outbox: Outbox::new(shards),
            local_inbox: VecDeque::new(),
            over_limit: 0,
            listener_limits: listener_limits(&config),
            listener_rules: listener_rules(&config),
            paused_readers: Vec::new(),
            wakes: Vec::new(),
            peers: HashMap::new(),
            mesh_source: None,
            matches: Vec::new(),
            subscription_ids: Vec::new(),
            cache: EncodeCache::default(),
            wheel: Wheel::default(),
            stats: ShardStats::default(),
            overload: Overload::new(&config),
            failed_logins: FailedLogins::default(),
            certificate_users: identity::CertificateUsers::new(&config),
            config,
        }
    }

    /// Replaces the hooks (admission, authorization, journal). [`Shard::new`] installs the
    /// admission and authorization the configuration asks for (password file, ACL file); this
    /// replaces them, e.g. in tests, until a reload changes the auth settings.
    pub fn set_hooks(&mut self, hooks: Hooks) {
        self.hooks = hooks;
        self.prepare_all_authorization();
    }

    /// Replaces the journal hook only (the runtime's, with a data directory).
    pub fn set_journal(&mut self, journal: Box<dyn super::hooks::Journal>) {
        self.hooks.journal = journal;
    }

    /// A new configuration (reload): limits and timeouts apply to new work from now on;
    /// sessions take the new queue limits when they next attach.
    ///
    /// Changed auth settings (a password or ACL file read anew, `allow_anonymous`) replace the
    /// admission and authorization hooks at once: new CONNECTs, publishes and subscriptions
    /// are checked against them. Connected clients stay connected. With a new ACL every
    /// session's subscriptions are checked again: a subscription the new ACL denies is removed
    /// (logged; the client is not told, as MQTT has no way to), and deliveries are re-classified
    /// (checked per message or not).
    pub fn on_config(&mut self, config: Rc<Config>) {
        self.limits = session_limits(&config);
        self.listener_limits = listener_limits(&config);
        self.certificate_users.on_config(&config);
        self.overload.on_config(&config);
        let old = &self.config;
        let new_acl = !crate::auth::LoadedFile::same(&old.auth_files.acl, &config.auth_files.acl);
        let auth_changed = new_acl
            || !crate::auth::LoadedFile::same(
                &old.auth_files.passwords,
                &config.auth_files.passwords,
            )
            || old.anonymous_allowed() != config.anonymous_allowed();
        self.config = config;
        if auth_changed {
            let (admission, authorization) = super::hooks::auth_hooks(&self.config);
            self.hooks.admission = admission;
            self.hooks.authorization = authorization;
            self.prepare_all_authorization();
        }
        if new_acl {
            self.recheck_subscriptions();
        }
    }

    /// The configuration in force (the last one given by [`Shard::on_config`]).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Open connections on this shard.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn home_shard(&self, client_id: &str) -> usize {
        crate::placement::home_shard(client_id, self.shards)
    }

    fn topic_owner(&self, topic: &str) -> usize {
        crate::placement::topic_owner(topic, self.shards)
    }

    /// Milliseconds since the shard started, at the current input.
    fn clock_ms(&self) -> u64 {
        self.now.saturating_duration_since(self.started).as_millis() as u64
    }

    /// Advances the shard's notion of time (never backwards).
    fn set_now(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    fn next_serial(&mut self) -> u64 {
        let serial = self.next_serial;
        self.next_serial += 1;
        serial
    }

    /// A new durable generation (see [`Global::generations`]).
    pub(super) fn next_generation(&self) -> u64 {
        let serial = self.global.generations.fetch_add(1, Ordering::Relaxed);
        crate::store::record::generation(self.global.epoch.load(Ordering::Relaxed), serial)
    }

    fn new_token(&mut self) -> u64 {
        ((self.id as u64) << 48) | self.next_serial()
    }

    /// Applies one message from a peer (or from this shard to itself).
    pub(super) fn handle_mesh(&mut self, message: ShardMsg) {
        let settles_claims = matches!(message, ShardMsg::Granted { .. } | ShardMsg::Denied { .. });
        self.apply_mesh(message);
        if settles_claims {
            self.retry_deferred_barriers();
        }
    }

    fn apply_mesh(&mut self, message: ShardMsg) {
        match message {
            ShardMsg::Publish(message) => {
                self.route_local_from(&message, self.mesh_source);
            }
            ShardMsg::Interest(delta) => {
                self.interest.apply(&delta);
            }
            ShardMsg::RetainUpdate {
                topic,
                message,
                ack,
            } => {
                self.own_retained_update(&topic, message, ack);
            }
            ShardMsg::RetainAck { token } => self.release_held_ack(token),
            ShardMsg::StoreBarrier {
                from,
                token,
                relayed,
            } => self.on_store_barrier(usize::from(from), token, relayed),
            ShardMsg::StoreAck { token } => self.on_store_ack(token),
            ShardMsg::OriginCommitted {
                from,
                token,
                publisher,
                packet_id,
            } => self.on_origin_committed(usize::from(from), token, publisher, packet_id),
            ShardMsg::Recovered => self.peers_recovered += 1,
            ShardMsg::Ping { from, token } => {
                self.send(usize::from(from), ShardMsg::Pong { token });
            }
            ShardMsg::Pong { token } => self.on_pong(token, self.mesh_source),
            ShardMsg::RetainApply { topic, message } => self.apply_retained(&topic, message),
            ShardMsg::RetainRecovered { messages } => {
                for (topic, message) in messages.iter() {
                    self.apply_retained(topic, Some(Arc::clone(message)));
                }
            }
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
                username,
            } => self.on_claim(client_id, token, shard, clean_start, username),
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
                recent,
                origins,
            } => self.on_granted(token, session, handover, recent, origins),
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
                // Other shards may still have deliveries for the stub on their way here
                // (sent before they learned of the move): drop it once those arrived.
                self.start_barrier(BarrierAction::DropStub {
                    token,
                    client_id,
                    to: from,
                });
            }
            ShardMsg::StubGone { client_id, token } => self.on_stub_gone(client_id, token),
            ShardMsg::Settled { client_id, token } => self.on_settled(client_id, token),
            ShardMsg::Denied { token, reason } => self.on_denied(token, reason),
            ShardMsg::Release { client_id, token } => self.on_release(client_id, token),
        }
    }

    fn handle_packet(&mut self, index: ConnId, packet: Packet) {
        self.stats.packets_in += 1;
        let Some(session) = self.session_of(index) else {
            match packet {
                Packet::Connect(connect)
                    if self.conns.get(index).is_some_and(|c| {
                        matches!(
                            c.state,
                            ConnState::AwaitConnect | ConnState::OverLimit { .. }
                        )
                    }) =>
                {
                    self.on_connect(index, connect)
                }
                _ => {
                    tracing::debug!(shard = self.id, conn = ?index, "first packet is not CONNECT");
                    self.kill_conn(index, ReasonCode::ProtocolError, false);
                }
            }
            return;
        };
        match packet {
            Packet::Publish(publish) => {
                if self.admit_publish(index, publish.payload.len()) {
                    self.on_publish(index, session, publish);
                }
            }
            Packet::PubAck(ack) => self.on_ack(index, session, AckKind::Ack, ack),
            Packet::PubRec(ack) => self.on_ack(index, session, AckKind::Rec, ack),
            Packet::PubComp(ack) => self.on_ack(index, session, AckKind::Comp, ack),
            Packet::PubRel(ack) => {
                let Some(entry) = self.sessions.get_mut(session) else {
                    return;
                };
                let uncommitted = entry.session.is_incoming_qos2_uncommitted(ack.packet_id);
                let known = entry.session.on_pubrel(ack.packet_id);
                let mut complete = Ack::new(ack.packet_id);
                let mut durability = Durability::Now;
                if !known {
                    complete.reason = ReasonCode::PacketIdentifierNotFound;
                    let key = (entry.session.client_id.clone(), ack.packet_id);
                    if self.recovered_origins.contains(&key) {
                        // Its PUBREC left before a crash that lost the id: no resend comes.
                        self.origins_drop_everywhere(&key.0, vec![key.1]);
                    }
                } else if !entry.session.clean {
                    let client_id = entry.session.client_id.clone();
                    let generation = entry.generation;
                    durability = self.journal(&JournalRecord::InboundReleased {
                        client_id: &client_id,
                        generation,
                        packet_id: ack.packet_id,
                    });
                    if uncommitted && self.hooks.journal.enabled() {
                        // Its PUBREC left on a connection taken over before the id was
                        // recorded: no commit told the shards to drop their entries.
                        self.origins_drop_everywhere(&client_id, vec![ack.packet_id]);
                    }
                }
                self.ack_when_durable(index, Packet::PubComp(complete), durability);
            }
            Packet::Subscribe(subscribe) => self.on_subscribe(index, session, subscribe),
            Packet::Unsubscribe(unsubscribe) => self.on_unsubscribe(index, session, unsubscribe),
            Packet::PingReq => self.write(index, Packet::PingResp),
            Packet::Disconnect(disconnect) => {
                let Some(entry) = self.sessions.get_mut(session) else {
                    return;
                };
                match entry.session.on_disconnect(&disconnect) {
                    Ok(with_will) => self.client_disconnected(index, !with_will),
                    Err(reason) => self.kill_conn(index, reason, false),
                }
            }
            Packet::Connect(_) => {
                tracing::debug!(shard = self.id, conn = ?index, "second CONNECT");
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

    fn write(&mut self, index: ConnId, packet: Packet) {
        if let Some(conn) = self.conns.get_mut(index) {
            self.stats.packets_out += 1;
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
    fn session_of(&self, index: ConnId) -> Option<SessionId> {
        match self.conns.get(index)?.state {
            ConnState::Active { session, .. } => {
                let valid = self
                    .sessions
                    .get(session)
                    .is_some_and(|e| e.conn == Some(index));
                if !valid {
                    tracing::debug!(shard = self.id, conn = ?index, "stale session handle");
                }
                valid.then_some(session)
            }
            _ => None,
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
mod hook_tests;

#[cfg(test)]
mod defaults {
    #[test]
    /// The session module's defaults are the broker's defaults.
    fn session_limits_default_matches_the_config_default() {
        let config = crate::config::Config::default();
        assert_eq!(
            *super::session_limits(&config),
            crate::session::SessionLimits::default()
        );
    }
}

#[cfg(test)]
mod footprint {
    /// Memory per idle connection is a product target (at most 2 KiB including glommio's own
    /// ~0.9 KiB): these structs are allocated once per connection or session, so growth here
    /// is a regression.
    #[test]
    fn per_connection_structs_stay_small() {
        // Connections: 96 bytes (no serial and no waker since the runtime owns wakers and
        // handles carry generations; the partial-packet buffer is boxed, 8 bytes; the output
        // is 40: its shared payloads are boxed).
        let conn = std::mem::size_of::<super::Conn>();
        assert!(conn <= 96, "Conn is {conn} bytes");
        // Sessions: 192 bytes, mimalloc's size class (one `since_ms` serves session expiry and
        // latency measurement; the in-flight window, queue and inbound QoS 2 ids are boxed
        // while messages flow, the subscription map from the first subscription, a pending
        // will, a stub's address and a moved session's deduplication together when present;
        // the limits are shared with the shard; 8 bytes of prepared ACL state; 8 of durable
        // generation).
        let session_entry = std::mem::size_of::<super::SessionEntry>();
        assert!(
            session_entry <= 192,
            "SessionEntry is {session_entry} bytes"
        );
        // The home shard's registration of a client id: 24 bytes (user name and waiting claim
        // boxed together), stored with its client id in a chunked slab, found through an
        // 8-byte index entry.
        let registration = std::mem::size_of::<super::Registration>();
        assert!(registration <= 24, "Registration is {registration} bytes");
        // One per published message (shared by its subscribers): 144 bytes, properties
        // boxed (8 bytes; 520 while they were inline), the receive time for the latency
        // histogram included.
        let message = std::mem::size_of::<crate::session::Message>();
        assert!(message <= 144, "Message is {message} bytes");
    }
}
