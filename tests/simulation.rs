//! Deterministic simulation of a whole broker in one thread: 2 or 3 shards driven through their
//! sans-I/O API, a hand-pumped mesh that delivers the oldest message of a randomly chosen
//! (from, to) queue (FIFO per pair like the real mesh, any interleaving across pairs), a manual
//! clock, and clients that speak MQTT 3.1.1 and 5.0 through the codec, byte by byte (writes are
//! sometimes split mid-frame; sockets reset, half-open or closed after DISCONNECT). Every
//! schedule comes from a seed; a failure prints the seed and the tail of the event log.
//!
//! Environment: `SIM_SEEDS=n` runs seeds `0..n`, `SIM_SEED=s` only seed `s`; `SIM_LOG=n` keeps
//! the last `n` events for the report; `SIM_KEEP_GOING=1` runs every seed and lists the failing
//! ones. Crash scenario: odd seeds tear the last write at half the crashes (a power loss),
//! `SIM_TORN=1` every seed,
//! `SIM_DEBUG=1` logs what each recovery rebuilt, `SIM_DUMP=<client id>` prints that client's
//! records in every file at each crash.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use shardmq::broker::handles::ConnId;
use shardmq::broker::hooks::BatchTarget;
use shardmq::broker::{Global, ReadState, Shard};
use shardmq::codec::{
    decode, Ack, ConnAck, Connect, Disconnect, LastWill, MqttStr, Packet, Properties,
    PropertyFields, ProtocolVersion, Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions,
};
use shardmq::config::{Config, SharedStrategy};
use shardmq::store::journal::{Clock, JournalOptions, StoreJournal};
use shardmq::store::segment::{SegmentKind, SegmentName};

/// Events kept for the failure report.
const LOG_LINES: usize = 250;
/// Random steps of the scenarios with a random phase.
const STEPS: usize = 1500;
/// Rounds of "deliver the whole mesh, pump every connection" before settling counts as stuck.
const SETTLE_ROUNDS: usize = 500;

// ----- schedule ------------------------------------------------------------------------------

/// xorshift64*: one reproducible schedule per seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    /// Uniform in `low..=high`.
    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.below(items.len())])
    }
    fn qos12(&mut self) -> QoS {
        if self.chance(50) {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        }
    }
}

// ----- simulated clients ---------------------------------------------------------------------

/// One client identity: its settings and the client side of its session.
struct Actor {
    client_id: String,
    /// The session outlives connections (3.x clean session 0; 5.0 expiry `expiry`).
    persistent: bool,
    /// `None`: 3.1.1 or 5.0 at random for each connection.
    protocol: Option<ProtocolVersion>,
    /// MQTT 5.0 session expiry interval sent when persistent.
    expiry: u32,
    will: Option<LastWill>,
    /// Subscribed by a connection that starts a session without a SUBACK seen yet.
    filters: Vec<(String, QoS)>,
    /// Whether a CONNACK must say "session present" once a session is known to exist.
    expect_session: bool,
    /// The connection the client uses now.
    link: Option<usize>,
    /// Sessions begun (CONNACK without session present): deliveries are counted per session.
    epoch: u32,
    /// A CONNACK 0 was seen: the broker holds a session for this id.
    established: bool,
    subscribed: bool,
    next_packet_id: u16,
    next_order: u64,
    outgoing: BTreeMap<u16, Outgoing>,
    /// Inbound QoS 2 packet ids received (PUBREC sent) and not released yet.
    qos2_in: HashSet<u16>,
    /// Own publishes the broker acknowledged (PUBACK, PUBCOMP), in order.
    acked: Vec<Publish>,
}

/// What an own QoS 1/2 publish awaits: PUBACK, PUBREC, PUBCOMP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Ack,
    Rec,
    Comp,
}

#[derive(Debug, Clone)]
struct Outgoing {
    publish: Publish,
    stage: Stage,
    order: u64,
}

/// One TCP connection.
struct Link {
    actor: usize,
    shard: usize,
    conn: ConnId,
    protocol: ProtocolVersion,
    /// Written by the client, not read by the shard yet.
    tx: BytesMut,
    /// Written by the shard, not decoded by the client yet.
    rx: BytesMut,
    connack: Option<ConnAck>,
    /// A session of this persistent id was known to exist when this connection began.
    expect_session: bool,
    /// The client no longer uses it: what arrives is only observed, never answered.
    abandoned: bool,
    /// The client reset the socket: the shard learns it at the next pump.
    reset: bool,
    /// The client closes once the shard has read `tx`.
    eof: bool,
    closed: bool,
    closed_by_server: bool,
}

impl Link {
    fn accepted(&self) -> bool {
        self.connack
            .as_ref()
            .is_some_and(|c| c.reason == ReasonCode::Success)
    }
}

/// How a client leaves a connection.
#[derive(Debug, Clone, Copy)]
enum Leave {
    /// TCP reset: unsent bytes are lost; the shard notices soon.
    Reset,
    /// DISCONNECT with this reason (when connected), then close.
    Disconnect(ReasonCode),
    /// The client walks away; the socket stays open (only a takeover closes it).
    HalfOpen,
}

/// A PUBLISH as the application of a client received it.
#[derive(Debug, Clone)]
struct Delivery {
    actor: usize,
    epoch: u32,
    link: usize,
    topic: String,
    payload: Bytes,
    qos: QoS,
    dup: bool,
    retain: bool,
}

// ----- the simulated broker and network ------------------------------------------------------

struct Sim {
    seed: u64,
    shards: Vec<Shard>,
    base: Instant,
    now_ms: u64,
    rng: Rng,
    links: Vec<Link>,
    actors: Vec<Actor>,
    deliveries: Vec<Delivery>,
    /// QoS 2 deliveries per (actor, session, topic, payload): each at most once.
    qos2_seen: HashSet<(usize, u32, String, Bytes)>,
    /// A (from, to) queue held back for a number of mesh deliveries: a slow peer.
    stalled: Option<(usize, usize, u32)>,
    log: VecDeque<String>,
    log_lines: usize,
    /// With a data directory: the files the shards' journals wrote (what survives a crash).
    disk: Option<Disk>,
    /// The clock journals read (shared with the journals: they outlive no shard).
    clock_ms: Rc<Cell<u64>>,
}

/// The simulated data directory: whole files by name, written batch by batch.
#[derive(Default)]
struct Disk {
    files: BTreeMap<SegmentName, Vec<u8>>,
    crashes: usize,
    /// Writes cut short by a power loss.
    torn_writes: usize,
    /// QoS 2 messages delivered twice to a client after a torn write (the one case where the
    /// broker does not promise exactly once: a torn write can keep a shard's deliveries of a
    /// publish without its origin entry, written after them).
    qos2_twice_after_power_loss: usize,
}

/// The journals' clocks: the simulation's.
#[derive(Debug)]
struct SimClock {
    base: Instant,
    ms: Rc<Cell<u64>>,
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.ms.get())
    }
    fn unix_ms(&self) -> u64 {
        1_800_000_000_000 + self.ms.get()
    }
}

impl Sim {
    fn new(seed: u64, shards: usize) -> Sim {
        let base = Instant::now();
        let config = Rc::new(Config::default());
        let global = Arc::new(Global::default());
        Sim {
            seed,
            shards: (0..shards)
                .map(|i| Shard::new(i, shards, Rc::clone(&config), Arc::clone(&global), base))
                .collect(),
            base,
            now_ms: 0,
            rng: Rng::new(seed),
            links: Vec::new(),
            actors: Vec::new(),
            deliveries: Vec::new(),
            qos2_seen: HashSet::new(),
            stalled: None,
            log: VecDeque::new(),
            log_lines: std::env::var("SIM_LOG")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(LOG_LINES),
            disk: None,
            clock_ms: Rc::new(Cell::new(0)),
        }
    }

    // --- a data directory, and crashes ---

    /// Gives every shard a journal on an empty simulated data directory.
    fn enable_disk(&mut self) {
        self.disk = Some(Disk::default());
        let n = self.shards.len();
        for i in 0..n {
            let journal = self.journal(i, n, 1, 1);
            self.shards[i].set_journal(Box::new(journal));
        }
    }

    fn journal(&self, shard: usize, shards: usize, epoch: u64, first_segment: u64) -> StoreJournal {
        StoreJournal::new(
            JournalOptions {
                shard: shard as u16,
                shard_count: shards as u16,
                epoch,
                first_segment,
                // Small: snapshots happen during the run.
                segment_limit: 16 * 1024,
            },
            Box::new(SimClock {
                base: self.base,
                ms: Rc::clone(&self.clock_ms),
            }),
        )
    }

    /// `shard`'s journal writes what it has; with `torn`, only a random prefix of it reaches
    /// the disk and nothing is reported durable (the process dies during the write).
    fn write_journal(&mut self, shard: usize, torn: bool) -> bool {
        let Some(batch) = self.shards[shard].journal_mut().take_batch() else {
            return false;
        };
        let keep = if torn {
            self.rng.below(batch.bytes.len() + 1)
        } else {
            batch.bytes.len()
        };
        let Some(disk) = self.disk.as_mut() else {
            return false;
        };
        let mut at = 0;
        for part in &batch.parts {
            let end = (at + part.len).min(keep);
            if at >= end {
                break;
            }
            let bytes = &batch.bytes[at..end];
            let (sequence, kind, create) = match part.target {
                BatchTarget::Log { sequence, create } => (sequence, SegmentKind::Log, create),
                // A torn snapshot is never renamed into place: it does not exist.
                BatchTarget::Snapshot { .. } if end < at + part.len => break,
                BatchTarget::Snapshot { sequence } => (sequence, SegmentKind::Snapshot, true),
            };
            let name = SegmentName {
                shard: shard as u16,
                sequence,
                kind,
            };
            let file = disk.files.entry(name).or_default();
            if create {
                file.clear();
            }
            file.extend_from_slice(bytes);
            at += part.len;
        }
        if torn {
            disk.torn_writes += 1;
            self.note(format!(
                "shard {shard}: torn write, {keep} of {} bytes",
                batch.bytes.len()
            ));
            return true;
        }
        let now = self.now();
        let journal = self.shards[shard].journal_mut();
        journal.mark_durable(batch.last_sequence);
        self.shards[shard].on_durable(batch.last_sequence, now);
        self.shards[shard].drain_wakes(|_| {});
        true
    }

    /// The whole broker dies: every connection drops, what the journals had not written is
    /// lost (one shard's last write may be torn), and a new broker recovers from the files
    /// with the same shard count, accepting clients once every shard has recovered.
    fn crash(&mut self) {
        let n = self.shards.len();
        let torn = self.random_shard();
        // Odd seeds (and every seed with SIM_TORN) model power losses too.
        let tears = self.seed % 2 == 1 || std::env::var("SIM_TORN").is_ok();
        if tears && self.rng.chance(50) {
            self.write_journal(torn, true);
        }
        for l in &mut self.links {
            l.closed = true;
        }
        for a in &mut self.actors {
            a.link = None;
        }
        let Some(disk) = self.disk.as_mut() else {
            return;
        };
        disk.crashes += 1;
        let names: Vec<SegmentName> = disk.files.keys().copied().collect();
        if let Ok(client) = std::env::var("SIM_DUMP") {
            for (name, bytes) in &disk.files {
                if let Ok((_, scanner)) = shardmq::store::segment::open_segment(bytes) {
                    for (at, record) in scanner {
                        if record.client_id() == Some(client.as_str()) {
                            eprintln!("DUMP crash{} {:?} @{at}: {record:?}", disk.crashes, name);
                        }
                    }
                }
            }
        }
        let first_segment = names.iter().map(|n| n.sequence).max().unwrap_or(0) + 1;
        let loaded = shardmq::store::load(names, |name| {
            Ok(disk.files.get(name).cloned().unwrap_or_default())
        })
        .expect("the simulated data directory loads");
        let mut state = loaded.state;
        let unix_ms = 1_800_000_000_000 + self.now_ms;
        state.drop_expired(unix_ms);
        let epoch = state.next_epoch();
        let (sessions, pending) = (state.sessions.len(), state.pending_messages());
        if std::env::var("SIM_DEBUG").is_ok() {
            for (id, session) in &state.sessions {
                let line = format!(
                    "recovered {id} gen {:#x} from shard {}: {} subscriptions, {} queued, {} in flight, started {}",
                    session.generation,
                    session.source_shard,
                    session.subscriptions.len(),
                    session.queue.len(),
                    session.inflight.len(),
                    session.started
                );
                self.note(line);
            }
        }
        if std::env::var("SIM_DEBUG").is_ok() {
            for origin in &state.origins {
                let line = format!("recovered origin {origin:?}");
                self.note(line);
            }
        }
        let parts = shardmq::store::split::split(state, n);
        let global = Arc::new(Global::default());
        global
            .epoch
            .store(epoch, std::sync::atomic::Ordering::Relaxed);
        let config = Rc::new(Config::default());
        let now = self.now();
        let mut shards = Vec::new();
        for (i, part) in parts.into_iter().enumerate() {
            let mut shard = Shard::new(i, n, Rc::clone(&config), Arc::clone(&global), now);
            let mut journal = self.journal(i, n, epoch, first_segment);
            journal.carry_into_next_image(part.carry);
            shard.set_journal(Box::new(journal));
            shard.install_recovered(part.sessions, part.retained, now, unix_ms);
            shard.install_origins(part.origins);
            shard.journal_image(now);
            shard.announce_recovered();
            shards.push(shard);
        }
        self.shards = shards;
        self.stalled = None;
        self.note(format!(
            "CRASH: recovered {sessions} sessions, {pending} queued or in flight (epoch {epoch})"
        ));
        while self.deliver_mesh(false) {}
        assert!(
            self.shards.iter().all(|s| s.peers_recovered()),
            "every shard hears every peer's recovery"
        );
    }

    fn set_config(&mut self, config: Config) {
        let config = Rc::new(config);
        for shard in &mut self.shards {
            shard.on_config(Rc::clone(&config));
        }
    }

    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.now_ms)
    }

    fn note(&mut self, line: String) {
        if self.log.len() >= self.log_lines {
            self.log.pop_front();
        }
        self.log
            .push_back(format!("[{:>6} ms] {line}", self.now_ms));
    }

    fn random_shard(&mut self) -> usize {
        self.rng.below(self.shards.len())
    }

    fn add_actor(&mut self, client_id: &str, persistent: bool) -> usize {
        self.actors.push(Actor {
            client_id: client_id.to_string(),
            persistent,
            protocol: None,
            expiry: 3600,
            will: None,
            filters: Vec::new(),
            expect_session: true,
            link: None,
            epoch: 0,
            established: false,
            subscribed: false,
            next_packet_id: 1,
            next_order: 0,
            outgoing: BTreeMap::new(),
            qos2_in: HashSet::new(),
            acked: Vec::new(),
        });
        self.actors.len() - 1
    }

    // --- client actions ---

    /// Opens a connection for `actor` on `shard` and writes its CONNECT. The actor's previous
    /// connection is left as it is: callers leave it first, or let the two race.
    fn connect(&mut self, actor: usize, shard: usize) -> Option<usize> {
        let now = self.now();
        let v5 = self.rng.chance(50);
        let Some(conn) = self.shards[shard].on_accept(now) else {
            self.note(format!(
                "shard {shard} refused a connection for actor {actor}"
            ));
            return None;
        };
        let a = &self.actors[actor];
        let protocol = a.protocol.unwrap_or(if v5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V3_1_1
        });
        let mut properties = Properties::default();
        if protocol.is_v5() && a.persistent {
            properties.session_expiry_interval = Some(a.expiry);
        }
        let connect = Connect {
            protocol,
            clean_start: !a.persistent,
            keep_alive: 0,
            client_id: MqttStr::from(a.client_id.as_str()),
            will: a.will.clone(),
            username: None,
            password: None,
            properties,
        };
        let line = format!(
            "link {} = {} on shard {shard} ({protocol:?}, clean {})",
            self.links.len(),
            a.client_id,
            !a.persistent
        );
        let expect_session = a.persistent && a.expect_session && a.established;
        let mut tx = BytesMut::new();
        Packet::Connect(Box::new(connect))
            .encode(protocol, &mut tx)
            .expect("CONNECT encodes");
        self.links.push(Link {
            actor,
            shard,
            conn,
            protocol,
            tx,
            rx: BytesMut::new(),
            connack: None,
            expect_session,
            abandoned: false,
            reset: false,
            eof: false,
            closed: false,
            closed_by_server: false,
        });
        let link = self.links.len() - 1;
        self.actors[actor].link = Some(link);
        self.note(line);
        Some(link)
    }

    fn connect_random(&mut self, actor: usize) -> Option<usize> {
        let shard = self.random_shard();
        self.connect(actor, shard)
    }

    /// The client stops using `link`.
    fn leave(&mut self, link: usize, how: Leave) {
        let l = &mut self.links[link];
        if l.closed || l.abandoned {
            return;
        }
        l.abandoned = true;
        match how {
            Leave::Reset => {
                l.tx.clear();
                l.reset = true;
            }
            Leave::HalfOpen => l.tx.clear(),
            Leave::Disconnect(reason) => {
                if l.accepted() {
                    Packet::Disconnect(Disconnect::new(reason))
                        .encode(l.protocol, &mut l.tx)
                        .expect("DISCONNECT encodes");
                }
                l.eof = true;
            }
        }
        let actor = l.actor;
        if self.actors[actor].link == Some(link) {
            self.actors[actor].link = None;
        }
        self.note(format!("link {link} left: {how:?}"));
    }

    /// The client's current connection, if it is accepted and open.
    fn live_link(&self, actor: usize) -> Option<usize> {
        self.actors[actor]
            .link
            .filter(|&l| self.links[l].accepted() && !self.links[l].closed)
    }

    /// Whether the client has a connection open or opening.
    fn online(&self, actor: usize) -> bool {
        self.actors[actor]
            .link
            .is_some_and(|l| !self.links[l].closed)
    }

    /// The client drops its connection in a random way; sometimes it reconnects at once on a
    /// random shard (a takeover while the old connection may still be open).
    fn disrupt(&mut self, actor: usize) {
        let Some(link) = self.actors[actor].link.filter(|&l| !self.links[l].closed) else {
            return;
        };
        let normal = Leave::Disconnect(ReasonCode::Success);
        let (how, reconnect) = match self.rng.below(5) {
            0 => (Leave::Reset, false),
            1 => (normal, false),
            2 => (Leave::HalfOpen, true),
            3 => (Leave::Reset, true),
            _ => (normal, true),
        };
        self.leave(link, how);
        if reconnect {
            self.connect_random(actor);
        }
    }

    fn reconnect_if_offline(&mut self, actor: usize) {
        if !self.online(actor) {
            self.connect_random(actor);
        }
    }

    fn send(&mut self, link: usize, packet: Packet) {
        let l = &mut self.links[link];
        if l.closed || l.abandoned {
            return;
        }
        packet
            .encode(l.protocol, &mut l.tx)
            .expect("client packet encodes");
        self.note(format!("link {link} -> {}", describe(&packet)));
    }

    fn allocate_packet_id(&mut self, actor: usize) -> u16 {
        let a = &mut self.actors[actor];
        loop {
            let id = a.next_packet_id;
            a.next_packet_id = a.next_packet_id.checked_add(1).unwrap_or(1);
            if !a.outgoing.contains_key(&id) {
                return id;
            }
        }
    }

    /// Publishes on the actor's live connection (false when it has none).
    fn publish(
        &mut self,
        actor: usize,
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    ) -> bool {
        let Some(link) = self.live_link(actor) else {
            return false;
        };
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            self.allocate_packet_id(actor)
        };
        let publish = Publish {
            dup: false,
            qos,
            retain,
            topic: MqttStr::from(topic),
            packet_id,
            properties: Properties::default(),
            payload,
        };
        let a = &mut self.actors[actor];
        if qos != QoS::AtMostOnce {
            a.next_order += 1;
            let stage = if qos == QoS::AtLeastOnce {
                Stage::Ack
            } else {
                Stage::Rec
            };
            let (publish, order) = (publish.clone(), a.next_order);
            let out = Outgoing {
                publish,
                stage,
                order,
            };
            a.outgoing.insert(packet_id, out);
        }
        self.send(link, Packet::Publish(publish));
        true
    }

    // --- the client's side of the protocol ---

    /// Decodes what arrived on `link`; unless the client abandoned it, answers as a client does.
    fn client_read(&mut self, link: usize) -> bool {
        let mut progress = false;
        loop {
            let l = &mut self.links[link];
            let packet = match decode(&mut l.rx, l.protocol, usize::MAX) {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(error) => {
                    panic!("link {link}: the broker wrote bytes the codec refuses: {error}")
                }
            };
            progress = true;
            self.note(format!("link {link} <- {}", describe(&packet)));
            self.on_packet(link, packet);
        }
        let l = &self.links[link];
        assert!(
            !l.closed_by_server || l.abandoned || l.connack.is_some(),
            "link {link}: closed by the broker before it answered the CONNECT"
        );
        progress
    }

    fn on_packet(&mut self, link: usize, packet: Packet) {
        let actor = self.links[link].actor;
        match packet {
            Packet::ConnAck(connack) => self.on_connack(link, connack),
            _ if self.links[link].abandoned => {}
            Packet::Publish(publish) => self.on_publish(link, publish),
            Packet::PubAck(ack) => self.on_ack(link, Stage::Ack, ack),
            Packet::PubRec(ack) => self.on_ack(link, Stage::Rec, ack),
            Packet::PubComp(ack) => self.on_ack(link, Stage::Comp, ack),
            Packet::PubRel(ack) => {
                self.actors[actor].qos2_in.remove(&ack.packet_id);
                self.send(link, Packet::PubComp(Ack::new(ack.packet_id)));
            }
            Packet::SubAck(suback) => {
                assert!(
                    suback.reasons.iter().all(|r| !r.is_error()),
                    "link {link}: subscription refused: {suback:?}"
                );
                self.actors[actor].subscribed = true;
            }
            _ => {}
        }
    }

    fn on_connack(&mut self, link: usize, connack: ConnAck) {
        let l = &mut self.links[link];
        assert!(l.connack.is_none(), "link {link}: a second CONNACK");
        l.connack = Some(connack.clone());
        let (actor, abandoned, expect_session) = (l.actor, l.abandoned, l.expect_session);
        if connack.reason != ReasonCode::Success {
            // A claim superseded by a newer connection before its turn.
            assert!(
                matches!(
                    connack.reason,
                    ReasonCode::ServerBusy | ReasonCode::ServerUnavailable
                ),
                "link {link}: unexpected refusal {connack:?}"
            );
            return;
        }
        assert!(
            connack.session_present || !expect_session,
            "link {link}: {} lost its persistent session",
            self.actors[actor].client_id
        );
        self.actors[actor].established = true;
        if abandoned {
            return;
        }
        let a = &mut self.actors[actor];
        if !connack.session_present {
            a.epoch += 1;
            a.qos2_in.clear();
            a.outgoing.clear();
            a.subscribed = false;
        }
        // A resumed session: unacknowledged PUBLISHes again with DUP, PUBRELs again, in order.
        let mut resend: Vec<(u16, Outgoing)> =
            a.outgoing.iter().map(|(&id, o)| (id, o.clone())).collect();
        resend.sort_by_key(|(_, o)| o.order);
        let subscribe = (!a.subscribed && !a.filters.is_empty()).then(|| a.filters.clone());
        for (packet_id, out) in resend {
            let packet = match out.stage {
                Stage::Comp => Packet::PubRel(Ack::new(packet_id)),
                Stage::Ack | Stage::Rec => Packet::Publish(Publish {
                    dup: true,
                    ..out.publish
                }),
            };
            self.send(link, packet);
        }
        if let Some(filters) = subscribe {
            let packet_id = self.allocate_packet_id(actor);
            let filters = filters
                .into_iter()
                .map(|(f, q)| (MqttStr::from(f), SubscriptionOptions::with_qos(q)))
                .collect();
            self.send(
                link,
                Packet::Subscribe(Subscribe {
                    packet_id,
                    properties: Properties::default(),
                    filters,
                }),
            );
        }
    }

    fn on_publish(&mut self, link: usize, publish: Publish) {
        let actor = self.links[link].actor;
        let packet_id = publish.packet_id;
        let fresh = match publish.qos {
            QoS::AtMostOnce => true,
            QoS::AtLeastOnce => {
                self.send(link, Packet::PubAck(Ack::new(packet_id)));
                true
            }
            QoS::ExactlyOnce => {
                // Received before and not released: the same delivery again, not a new one.
                let fresh = self.actors[actor].qos2_in.insert(packet_id);
                assert!(
                    fresh || publish.dup,
                    "link {link}: QoS 2 packet id {packet_id} reused before its PUBREL"
                );
                self.send(link, Packet::PubRec(Ack::new(packet_id)));
                fresh
            }
        };
        if !fresh {
            return;
        }
        let epoch = self.actors[actor].epoch;
        let topic = publish.topic.as_str().to_string();
        if publish.qos == QoS::ExactlyOnce {
            let key = (actor, epoch, topic.clone(), publish.payload.clone());
            let fresh = self.qos2_seen.insert(key);
            if let Some(disk) = self.disk.as_mut().filter(|d| !fresh && d.torn_writes > 0) {
                disk.qos2_twice_after_power_loss += 1;
                return;
            }
            assert!(
                fresh,
                "link {link}: QoS 2 message {topic} {:?} delivered twice to {} (session {epoch})",
                publish.payload, self.actors[actor].client_id
            );
        }
        self.deliveries.push(Delivery {
            actor,
            epoch,
            link,
            topic,
            payload: publish.payload,
            qos: publish.qos,
            dup: publish.dup,
            retain: publish.retain,
        });
    }

    /// PUBACK / PUBREC / PUBCOMP for the client's own publishes.
    fn on_ack(&mut self, link: usize, kind: Stage, ack: Ack) {
        // PUBCOMP 0x92 answers a PUBREL resent for an id the broker already released.
        assert!(
            !ack.reason.is_error() || ack.reason == ReasonCode::PacketIdentifierNotFound,
            "link {link}: publish refused: {ack:?}"
        );
        let actor = self.links[link].actor;
        let packet_id = ack.packet_id;
        let a = &mut self.actors[actor];
        let Some(out) = a.outgoing.get_mut(&packet_id) else {
            return;
        };
        match (kind, out.stage) {
            (Stage::Ack, Stage::Ack) | (Stage::Comp, Stage::Comp) => {
                if let Some(out) = a.outgoing.remove(&packet_id) {
                    a.acked.push(out.publish);
                }
            }
            (Stage::Rec, Stage::Rec | Stage::Comp) => {
                out.stage = Stage::Comp;
                self.send(link, Packet::PubRel(Ack::new(packet_id)));
            }
            _ => {}
        }
    }

    // --- the runtime's and the network's part ---

    /// One connection: the shard's output goes to the client, the client's bytes go to the
    /// shard when it reads (sometimes split mid-frame), closes are noticed. Returns whether
    /// anything happened.
    fn pump(&mut self, link: usize) -> bool {
        let now = self.now();
        let split = self.rng.chance(25);
        let random = self.rng.next() as usize;
        let l = &mut self.links[link];
        if l.closed {
            return false;
        }
        let shard = &mut self.shards[l.shard];
        let mut progress = false;
        if l.reset {
            shard.on_closed(l.conn, now);
            l.closed = true;
            self.note(format!("link {link} closed (reset)"));
            return true;
        }
        while let Some(out) = shard.output(l.conn) {
            if !out.is_empty() {
                l.rx.extend_from_slice(&out.split());
                progress = true;
            }
            if !shard.on_flushed(l.conn, now) {
                break;
            }
        }
        let mut closed = None;
        match shard.read_state(l.conn) {
            ReadState::Close => {
                if let Some(out) = shard.output(l.conn) {
                    l.rx.extend_from_slice(&out.split());
                }
                shard.on_closed(l.conn, now);
                l.closed = true;
                l.closed_by_server = true;
                closed = Some("by the broker");
            }
            ReadState::Reprocess => {
                shard.on_bytes(l.conn, BytesMut::new(), now);
                progress = true;
            }
            ReadState::Wait => {}
            ReadState::Read if !l.tx.is_empty() => {
                let n = if split {
                    1 + random % l.tx.len()
                } else {
                    l.tx.len()
                };
                let bytes = l.tx.split_to(n);
                shard.on_bytes(l.conn, bytes, now);
                progress = true;
            }
            ReadState::Read if l.eof => {
                shard.on_closed(l.conn, now);
                l.closed = true;
                closed = Some("by the client");
            }
            ReadState::Read => {}
        }
        if let Some(by) = closed {
            self.note(format!("link {link} closed {by}"));
            progress = true;
        }
        self.client_read(link) || progress
    }

    /// Delivers the oldest message (sometimes a small batch) of a random non-empty queue. In
    /// the random phases one queue at a time may stall for a while (a slow peer); `settle`
    /// delivers everything.
    fn deliver_mesh(&mut self, allow_stall: bool) -> bool {
        let n = self.shards.len();
        if allow_stall && self.stalled.is_none() && self.rng.chance(5) {
            let from = self.random_shard();
            let to = (from + 1 + self.rng.below(n - 1)) % n;
            let steps = self.rng.range(10, 150) as u32;
            self.stalled = Some((from, to, steps));
            self.note(format!("mesh {from}->{to} stalls for {steps} deliveries"));
        }
        let stalled = match self.stalled {
            Some((from, to, left)) if allow_stall && left > 0 => {
                self.stalled = Some((from, to, left - 1));
                Some((from, to))
            }
            _ => {
                self.stalled = None;
                None
            }
        };
        let mut queues = Vec::new();
        for from in 0..n {
            for to in (0..n).filter(|&to| to != from) {
                if self.shards[from].has_outbox(to) && stalled != Some((from, to)) {
                    queues.push((from, to));
                }
            }
        }
        let Some((from, to)) = self.rng.pick(&queues) else {
            return false;
        };
        let now = self.now();
        let batch = if self.rng.chance(20) {
            let max = 1 + self.rng.below(4);
            self.shards[from]
                .take_outbox_batch(to, max)
                .unwrap_or_default()
        } else {
            self.shards[from].pop_outbox(to).into_iter().collect()
        };
        for message in &batch {
            let text = format!("{message:?}");
            self.note(format!("mesh {from}->{to}: {}", truncate(&text, 180)));
        }
        self.shards[to].on_mesh_from(from, batch, now);
        self.shards[from].on_outbox_drained();
        true
    }

    fn mesh_empty(&self) -> bool {
        let n = self.shards.len();
        (0..n).all(|from| (0..n).all(|to| !self.shards[from].has_outbox(to)))
    }

    fn open_links(&self) -> Vec<usize> {
        (0..self.links.len())
            .filter(|&l| !self.links[l].closed)
            .collect()
    }

    /// A random network event: one mesh delivery or one connection pumped.
    fn network_step(&mut self) {
        if self.disk.is_some() && self.rng.chance(25) {
            let shard = self.random_shard();
            if self.write_journal(shard, false) {
                return;
            }
        }
        if self.rng.chance(50) && self.deliver_mesh(true) {
            return;
        }
        let open = self.open_links();
        if let Some(link) = self.rng.pick(&open) {
            self.pump(link);
        }
    }

    fn tick(&mut self) {
        let now = self.now();
        for shard in &mut self.shards {
            shard.on_tick(now);
            shard.drain_wakes(|_| {});
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
        self.clock_ms.set(self.now_ms);
        self.note(format!("clock +{ms} ms"));
        self.tick();
    }

    /// Runs the network, without moving the clock, until nothing moves any more. Then no
    /// connection may still hold bytes the broker will never read.
    fn settle(&mut self) {
        for _ in 0..SETTLE_ROUNDS {
            self.tick();
            let mut progress = false;
            for shard in 0..self.shards.len() {
                while self.write_journal(shard, false) {
                    progress = true;
                }
            }
            while self.deliver_mesh(false) {
                progress = true;
            }
            let mut open = self.open_links();
            for i in (1..open.len()).rev() {
                open.swap(i, self.rng.below(i + 1));
            }
            for link in open {
                progress |= self.pump(link);
            }
            if !progress && self.mesh_empty() {
                for (i, l) in self.links.iter().enumerate() {
                    assert!(
                        l.closed || (l.tx.is_empty() && !l.eof && !l.reset),
                        "link {i}: quiet, but the broker never read the client's bytes"
                    );
                }
                return;
            }
        }
        panic!("the broker did not settle within {SETTLE_ROUNDS} rounds");
    }

    /// Settles with every client of `actors` connected (reconnecting those that are not).
    fn settle_connected(&mut self, actors: &[usize]) {
        for _ in 0..20 {
            self.settle();
            let missing: Vec<usize> = actors
                .iter()
                .copied()
                .filter(|&a| self.live_link(a).is_none())
                .collect();
            if missing.is_empty() {
                return;
            }
            for actor in missing {
                if let Some(link) = self.actors[actor].link {
                    self.leave(link, Leave::Reset);
                }
                self.connect_random(actor);
            }
        }
        panic!("clients could not connect");
    }

    /// Connections of `actor` that got CONNACK 0, are open, and that the broker has not marked
    /// for closing (asking the shard the way the runtime does).
    fn server_live(&mut self, actor: usize) -> Vec<usize> {
        let now = self.now();
        let mut live = Vec::new();
        for (i, l) in self.links.iter().enumerate() {
            if l.actor != actor || l.closed || !l.accepted() {
                continue;
            }
            let shard = &mut self.shards[l.shard];
            let mut state = shard.read_state(l.conn);
            while state == ReadState::Reprocess {
                shard.on_bytes(l.conn, BytesMut::new(), now);
                state = shard.read_state(l.conn);
            }
            if state != ReadState::Close {
                live.push(i);
            }
        }
        live
    }

    fn check_stats(&self, drops_allowed: bool) {
        for (i, shard) in self.shards.iter().enumerate() {
            let stats = shard.stats();
            assert_eq!(
                stats.protocol_violations, 0,
                "shard {i}: ownership protocol violation"
            );
            if !drops_allowed {
                assert_eq!(
                    stats.dropped_total(),
                    0,
                    "shard {i}: messages dropped: {:?}",
                    stats.dropped
                );
            }
        }
    }

    fn deliveries_to(&self, actor: usize) -> impl Iterator<Item = &Delivery> {
        self.deliveries.iter().filter(move |d| d.actor == actor)
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

fn describe(packet: &Packet) -> String {
    match packet {
        Packet::Connect(c) => format!("CONNECT {} clean {}", c.client_id, c.clean_start),
        Packet::ConnAck(c) => format!("CONNACK {} present {}", c.reason, c.session_present),
        Packet::Publish(p) => format!(
            "PUBLISH {} {:?} qos {} id {} dup {} retain {}",
            p.topic, p.payload, p.qos as u8, p.packet_id, p.dup, p.retain
        ),
        Packet::PubAck(a) => format!("PUBACK {} {}", a.packet_id, a.reason),
        Packet::PubRec(a) => format!("PUBREC {} {}", a.packet_id, a.reason),
        Packet::PubRel(a) => format!("PUBREL {} {}", a.packet_id, a.reason),
        Packet::PubComp(a) => format!("PUBCOMP {} {}", a.packet_id, a.reason),
        Packet::Disconnect(d) => format!("DISCONNECT {}", d.reason),
        other => truncate(&format!("{other:?}"), 120).to_string(),
    }
}

/// Runs `scenario` for every seed, with `shard_counts[seed % len]` shards. On a failure,
/// prints the tail of the event log and the seed, then fails. Returns the sum of what the
/// scenarios report having checked.
fn run_seeds(
    name: &str,
    default_seeds: u64,
    shard_counts: &[usize],
    scenario: fn(&mut Sim) -> usize,
) -> usize {
    let env = |key: &str| std::env::var(key).ok().and_then(|v| v.parse::<u64>().ok());
    let seeds: Vec<u64> = match env("SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env("SIM_SEEDS").unwrap_or(default_seeds)).collect(),
    };
    let started = Instant::now();
    let mut checked = 0;
    let keep_going = std::env::var("SIM_KEEP_GOING").is_ok();
    let mut failed = Vec::new();
    for &seed in &seeds {
        let mut sim = Sim::new(seed, shard_counts[seed as usize % shard_counts.len()]);
        match catch_unwind(AssertUnwindSafe(|| scenario(&mut sim))) {
            Ok(n) => checked += n,
            Err(_) if keep_going => {
                eprintln!("{name}: seed {seed} failed");
                failed.push(seed);
            }
            Err(panic) => {
                eprintln!(
                    "---- {name}, seed {seed}: the last {} events ----",
                    sim.log.len()
                );
                for line in &sim.log {
                    eprintln!("  {line}");
                }
                eprintln!(
                    "{name} failed with seed {seed} ({} shards); rerun with SIM_SEED={seed}",
                    sim.shards.len()
                );
                resume_unwind(panic);
            }
        }
    }
    eprintln!(
        "{name}: {} seeds, {checked} checks, {:?}",
        seeds.len(),
        started.elapsed()
    );
    assert!(failed.is_empty(), "{name}: seeds {failed:?} failed");
    checked
}

/// Whether the seeds were chosen by hand (the totals checked by the tests then do not apply).
fn custom_seeds() -> bool {
    std::env::var("SIM_SEED").is_ok() || std::env::var("SIM_SEEDS").is_ok()
}

/// How often (percent of steps) each kind of random step happens; the rest are network events.
struct Mix {
    act: usize,
    disrupt: usize,
    reconnect: usize,
    clock: usize,
}

/// The random phase of a scenario: mostly network events; sometimes `act` (the scenario's
/// client action), one of `clients` dropping its connection, an offline one coming back, or
/// time passing. The counters are checked after every step.
fn random_phase(
    sim: &mut Sim,
    clients: &[usize],
    mix: Mix,
    drops_allowed: bool,
    mut act: impl FnMut(&mut Sim),
) {
    let disrupt = mix.act + mix.disrupt;
    let reconnect = disrupt + mix.reconnect;
    let clock = reconnect + mix.clock;
    for _ in 0..STEPS {
        let roll = sim.rng.below(100);
        let client = sim.rng.pick(clients).unwrap_or(0);
        match roll {
            r if r < mix.act => act(sim),
            r if r < disrupt => sim.disrupt(client),
            r if r < reconnect => sim.reconnect_if_offline(client),
            r if r < clock => {
                let ms = sim.rng.range(1, 100);
                sim.advance(ms);
            }
            _ => sim.network_step(),
        }
        sim.check_stats(drops_allowed);
    }
}

// ----- scenarios -----------------------------------------------------------------------------

/// Racing CONNECTs on a few ids across shards, random closes; at every step at most one
/// accepted connection per id is live; after settling, persistent ids still have their session
/// and subscription, clean ids none.
fn takeover_races(sim: &mut Sim) -> usize {
    let mut ids = Vec::new();
    for (name, persistent) in [
        ("race-p0", true),
        ("race-p1", true),
        ("race-c0", false),
        ("race-c1", false),
    ] {
        let a = sim.add_actor(name, persistent);
        if persistent {
            sim.actors[a].filters = vec![(format!("t/{name}"), QoS::AtLeastOnce)];
        }
        ids.push(a);
    }
    let check = |sim: &mut Sim| {
        sim.check_stats(true);
        for &a in &ids {
            let live = sim.server_live(a);
            assert!(
                live.len() <= 1,
                "{}: links {live:?} are all live",
                sim.actors[a].client_id
            );
        }
    };
    for _ in 0..300 {
        match sim.rng.below(100) {
            0..=19 => {
                let a = sim.rng.pick(&ids).unwrap_or(0);
                sim.connect_random(a);
            }
            20..=29 => {
                let open: Vec<usize> = sim
                    .open_links()
                    .into_iter()
                    .filter(|&l| !sim.links[l].abandoned)
                    .collect();
                if let Some(link) = sim.rng.pick(&open) {
                    let how = match sim.rng.below(3) {
                        0 => Leave::Reset,
                        1 => Leave::Disconnect(ReasonCode::Success),
                        _ => Leave::HalfOpen,
                    };
                    sim.leave(link, how);
                }
            }
            30..=96 => sim.network_step(),
            _ => {
                let ms = sim.rng.range(1, 50);
                sim.advance(ms);
            }
        }
        check(sim);
    }
    sim.settle();
    check(sim);
    // A fresh connection per id (the client moved on from its others) finds what it must.
    let verifier = sim.add_actor("race-verifier", false);
    sim.connect_random(verifier);
    sim.settle();
    let mut verified = 0;
    for &a in &ids {
        for link in sim.open_links() {
            if sim.links[link].actor == a {
                sim.leave(link, Leave::HalfOpen);
            }
        }
        let (established, subscribed) = (sim.actors[a].established, sim.actors[a].subscribed);
        // No resubscription: a lost subscription must show.
        sim.actors[a].filters.clear();
        let Some(link) = sim.connect_random(a) else {
            continue;
        };
        sim.settle();
        let name = sim.actors[a].client_id.clone();
        let connack = sim.links[link].connack.clone();
        let connack = connack.unwrap_or_else(|| panic!("{name}: no CONNACK after settling"));
        assert_eq!(connack.reason, ReasonCode::Success, "{name}: {connack:?}");
        // A session may exist unseen (granted after its client reset the connection); one
        // that was seen must still be there, and clean ids never have one.
        let persistent = sim.actors[a].persistent;
        assert!(
            connack.session_present || !(persistent && established),
            "{name}: the persistent session is lost"
        );
        assert!(
            persistent || !connack.session_present,
            "{name}: a clean start resumed a session"
        );
        assert_eq!(sim.server_live(a), vec![link], "{name}: live links");
        if persistent && subscribed {
            let payload = Bytes::from(format!("check {name}"));
            let topic = format!("t/{name}");
            assert!(sim.publish(verifier, &topic, payload.clone(), QoS::AtLeastOnce, false));
            sim.settle();
            assert!(
                sim.deliveries_to(a)
                    .any(|d| d.link == link && d.payload == payload),
                "{name}: the subscription of the persistent session is lost"
            );
            verified += 1;
        }
    }
    verified
}

/// Persistent subscribers (QoS 1 and QoS 2) move between shards by reconnecting while
/// persistent publishers (resending after reconnects) publish numbered messages.
fn no_loss_across_moves(sim: &mut Sim) -> usize {
    no_loss_scenario(sim, false)
}

/// With a data directory: the same clients and checks as [`no_loss_across_moves`], and the
/// whole broker crashing at random moments (what the journals had not written is lost, a
/// write may be torn) and recovering from its files. Every acknowledged message reaches
/// every subscriber, QoS 2 messages exactly once, and no session is lost.
fn no_loss_across_crashes(sim: &mut Sim) -> usize {
    sim.enable_disk();
    let checked = no_loss_scenario(sim, true);
    let crashes = sim.disk.as_ref().map_or(0, |d| d.crashes);
    assert!(crashes > 0, "the broker never crashed");
    // Every publisher's exchanges completed: no origin entry is left, in memory or in the
    // files (one left over could make a later publish reusing the packet id for the same
    // topic and payload skip a subscriber after a crash).
    for (i, shard) in sim.shards.iter().enumerate() {
        assert_eq!(
            shard.origin_entries(),
            Vec::<String>::new(),
            "shard {i} holds origin entries"
        );
    }
    for shard in 0..sim.shards.len() {
        while sim.write_journal(shard, false) {}
    }
    if let Some(disk) = &sim.disk {
        let names: Vec<SegmentName> = disk.files.keys().copied().collect();
        let loaded = shardmq::store::load(names, |name| {
            Ok(disk.files.get(name).cloned().unwrap_or_default())
        })
        .expect("the simulated data directory loads");
        assert_eq!(
            loaded.state.origins,
            Vec::new(),
            "origin entries left in the files"
        );
    }
    if let Some(disk) = &sim.disk {
        POWER_LOSS_DUPLICATES.fetch_add(disk.qos2_twice_after_power_loss, Ordering::Relaxed);
        POWER_LOSS_SEEDS.fetch_add(usize::from(disk.torn_writes > 0), Ordering::Relaxed);
    }
    checked
}

/// Across the crash scenario's seeds: QoS 2 duplicates after torn writes, and the seeds that
/// tore a write (reported, not failed: see `Disk::qos2_twice_after_power_loss`).
static POWER_LOSS_DUPLICATES: AtomicUsize = AtomicUsize::new(0);
static POWER_LOSS_SEEDS: AtomicUsize = AtomicUsize::new(0);

fn no_loss_scenario(sim: &mut Sim, crashes: bool) -> usize {
    let mut subscribers = Vec::new();
    for (name, qos) in [
        ("sub-q1", QoS::AtLeastOnce),
        ("sub-q2", QoS::ExactlyOnce),
        ("sub-q2b", QoS::ExactlyOnce),
    ] {
        let a = sim.add_actor(name, true);
        sim.actors[a].filters = vec![("seq/#".to_string(), qos)];
        subscribers.push((a, qos));
    }
    let publishers: Vec<usize> = (0..2)
        .map(|i| sim.add_actor(&format!("pub-{i}"), true))
        .collect();
    let mut everyone: Vec<usize> = subscribers.iter().map(|&(a, _)| a).collect();
    everyone.extend(&publishers);
    for &a in &everyone {
        sim.connect_random(a);
    }
    sim.settle_connected(&everyone);
    let mix = Mix {
        act: 20,
        disrupt: 4,
        reconnect: 11,
        clock: 3,
    };
    let mut sequence = 0;
    random_phase(sim, &everyone, mix, false, |sim| {
        if crashes && sim.rng.chance(3) {
            return sim.crash();
        }
        // Numbered messages, at most 4 unacknowledged per publisher.
        let p = sim.rng.pick(&publishers).unwrap_or(0);
        if sim.live_link(p).is_some() && sim.actors[p].outgoing.len() < 4 {
            sequence += 1;
            let qos = sim.rng.qos12();
            let topic = format!("seq/{p}");
            sim.publish(p, &topic, Bytes::from(format!("m{sequence}")), qos, false);
        }
    });
    if crashes && sim.disk.as_ref().is_some_and(|d| d.crashes == 0) {
        // A schedule without a crash step still ends with one.
        sim.crash();
    }
    sim.settle_connected(&everyone);
    sim.check_stats(false);
    let mut published: HashMap<Bytes, QoS> = HashMap::new();
    for &p in &publishers {
        let a = &sim.actors[p];
        assert!(
            a.outgoing.is_empty(),
            "{}: flows left unfinished",
            a.client_id
        );
        assert_eq!(a.epoch, 1, "{}: session lost", a.client_id);
        for m in &a.acked {
            published.insert(m.payload.clone(), m.qos);
        }
    }
    let mut checked = 0;
    for &(s, sub_qos) in &subscribers {
        let name = sim.actors[s].client_id.clone();
        assert_eq!(sim.actors[s].epoch, 1, "{name}: session lost");
        let mut counts: HashMap<&Bytes, usize> = HashMap::new();
        for d in sim.deliveries_to(s) {
            let published_qos = *published
                .get(&d.payload)
                .unwrap_or_else(|| panic!("{name}: got {:?}, never acknowledged", d.payload));
            assert_eq!(
                d.qos,
                published_qos.min(sub_qos),
                "{name}: QoS of {:?}",
                d.payload
            );
            *counts.entry(&d.payload).or_default() += 1;
        }
        for (payload, &qos) in &published {
            let n = counts.get(payload).copied().unwrap_or(0);
            assert!(
                n >= 1,
                "{name}: acknowledged {payload:?} (QoS {qos:?}) never delivered"
            );
            if qos.min(sub_qos) == QoS::ExactlyOnce {
                assert_eq!(n, 1, "{name}: QoS 2 {payload:?} delivered {n} times");
            }
            checked += 1;
        }
    }
    checked
}

/// Retained updates and clears from publishers on different shards; afterwards a new
/// subscriber on every shard sees, per topic, the last acknowledged update.
fn retained_ordering(sim: &mut Sim) -> usize {
    let topics = ["r/a", "r/b/c", "r/d"];
    let publishers: Vec<usize> = (0..topics.len())
        .map(|i| sim.add_actor(&format!("retainer-{i}"), true))
        .collect();
    for &p in &publishers {
        sim.connect_random(p);
    }
    sim.settle_connected(&publishers);
    let mix = Mix {
        act: 27,
        disrupt: 3,
        reconnect: 7,
        clock: 3,
    };
    let mut counter = 0;
    random_phase(sim, &publishers, mix, true, |sim| {
        let i = sim.rng.below(topics.len());
        let p = publishers[i];
        if sim.actors[p].outgoing.is_empty() {
            // One update in flight per topic: the next waits for the acknowledgement.
            counter += 1;
            let payload = if sim.rng.chance(20) {
                Bytes::new()
            } else {
                Bytes::from(format!("{}:{counter}", topics[i]))
            };
            let qos = sim.rng.qos12();
            sim.publish(p, topics[i], payload, qos, true);
        } else if sim.online(p) && sim.rng.chance(10) {
            // Tired of waiting for the acknowledgement, the publisher reconnects elsewhere.
            if let Some(link) = sim.actors[p].link {
                sim.leave(link, Leave::Reset);
            }
            sim.connect_random(p);
        }
    });
    sim.settle_connected(&publishers);
    let mut expected: BTreeMap<&str, Bytes> = BTreeMap::new();
    for (i, &p) in publishers.iter().enumerate() {
        let a = &sim.actors[p];
        assert!(
            a.outgoing.is_empty(),
            "{}: update not acknowledged",
            a.client_id
        );
        if let Some(last) = a.acked.last().filter(|m| !m.payload.is_empty()) {
            expected.insert(topics[i], last.payload.clone());
        }
    }
    let observers: Vec<usize> = (0..sim.shards.len())
        .map(|shard| {
            let a = sim.add_actor(&format!("observer-{shard}"), false);
            sim.actors[a].filters = vec![("r/#".to_string(), QoS::AtLeastOnce)];
            sim.connect(a, shard);
            a
        })
        .collect();
    sim.settle_connected(&observers);
    for (shard, &o) in observers.iter().enumerate() {
        let mut seen: BTreeMap<&str, Bytes> = BTreeMap::new();
        for d in sim.deliveries_to(o).filter(|d| d.retain) {
            let previous = seen.insert(d.topic.as_str(), d.payload.clone());
            assert!(
                previous.is_none(),
                "shard {shard}: {} retained twice",
                d.topic
            );
        }
        assert_eq!(
            seen, expected,
            "shard {shard}: retained messages differ from the last acknowledged updates"
        );
    }
    topics.len() * observers.len()
}

/// Members of one shared group on different shards leave and rejoin while messages are
/// published on random shards.
fn shared_subscriptions(sim: &mut Sim) -> usize {
    let strategy = [
        SharedStrategy::RoundRobin,
        SharedStrategy::Random,
        SharedStrategy::Sticky,
    ][(sim.seed / 2 % 3) as usize];
    sim.set_config(Config {
        shared_subscription_strategy: strategy,
        ..Config::default()
    });
    let mut persistent_members = Vec::new();
    let mut members = Vec::new();
    for (name, persistent) in [
        ("member-p0", true),
        ("member-p1", true),
        ("member-c0", false),
        ("member-c1", false),
    ] {
        let a = sim.add_actor(name, persistent);
        sim.actors[a].filters = vec![("$share/g/s/#".to_string(), QoS::AtLeastOnce)];
        members.push(a);
        if persistent {
            persistent_members.push(a);
        }
    }
    let publishers: Vec<usize> = (0..2)
        .map(|i| sim.add_actor(&format!("spub-{i}"), false))
        .collect();
    let mut everyone = members.clone();
    everyone.extend(&publishers);
    for &a in &everyone {
        sim.connect_random(a);
    }
    sim.settle_connected(&everyone);
    let mix = Mix {
        act: 20,
        disrupt: 5,
        reconnect: 10,
        clock: 3,
    };
    let mut sequence = 0;
    random_phase(sim, &everyone, mix, false, |sim| {
        let p = sim.rng.pick(&publishers).unwrap_or(0);
        if sim.live_link(p).is_some() && sim.actors[p].outgoing.len() < 4 {
            sequence += 1;
            let topic = format!("s/{p}/{}", sequence % 3);
            let payload = Bytes::from(format!("m{sequence}"));
            sim.publish(p, &topic, payload, QoS::AtLeastOnce, false);
        }
    });
    // Persistent members come back (their queues drain). A clean member stays away, unless
    // the broker still holds its session on a half-open connection (nothing but a keep-alive,
    // off here, would end that): it reconnects, which ends that session.
    let mut back = persistent_members.clone();
    for &a in &members {
        let half_open = sim
            .links
            .iter()
            .any(|l| l.actor == a && l.abandoned && !l.closed && !l.eof && !l.reset);
        if !sim.actors[a].persistent && half_open && !sim.online(a) {
            back.push(a);
        }
    }
    sim.settle_connected(&back);
    sim.check_stats(false);
    let mut per_session: HashMap<(usize, u32, &Bytes), Vec<&Delivery>> = HashMap::new();
    for d in sim.deliveries.iter().filter(|d| members.contains(&d.actor)) {
        per_session
            .entry((d.actor, d.epoch, &d.payload))
            .or_default()
            .push(d);
    }
    for ((actor, epoch, payload), list) in &per_session {
        for (i, d) in list.iter().enumerate().skip(1) {
            // Only a resumed session's redelivery of an unacknowledged message repeats one.
            assert!(
                d.dup && list[..i].iter().all(|e| e.link != d.link),
                "{} (session {epoch}): {payload:?} delivered again without a reconnect (dup {})",
                sim.actors[*actor].client_id,
                d.dup
            );
        }
    }
    let mut checked = 0;
    for &p in &publishers {
        for m in &sim.actors[p].acked {
            assert!(
                sim.deliveries
                    .iter()
                    .any(|d| members.contains(&d.actor) && d.payload == m.payload),
                "acknowledged {:?} on {} reached no member ({strategy:?})",
                m.payload,
                m.topic
            );
            checked += 1;
        }
    }
    checked
}

/// What one MQTT 5.0 client of the will scenario does, and what must follow.
struct WillPlan {
    actor: usize,
    topic: String,
    close_at: u64,
    how: Leave,
    /// Reconnect (a takeover when `how` is `HalfOpen`) at this time.
    reconnect_at: Option<u64>,
    /// When the will must go out (never before; at most a second later): `None`, never.
    due: Option<u64>,
    /// Whether a connection at the end finds the session.
    session_at_end: bool,
    closed: bool,
    reconnected: bool,
}

/// MQTT 5.0 will delay and session expiry with a manual clock.
fn will_delay_and_expiry(sim: &mut Sim) -> usize {
    let watchers: Vec<usize> = [ProtocolVersion::V5, ProtocolVersion::V3_1_1]
        .into_iter()
        .enumerate()
        .map(|(i, protocol)| {
            let a = sim.add_actor(&format!("watcher-{i}"), false);
            sim.actors[a].protocol = Some(protocol);
            sim.actors[a].filters = vec![("will/#".to_string(), QoS::AtLeastOnce)];
            sim.connect_random(a);
            a
        })
        .collect();
    let mut plans = Vec::new();
    for kind in 0..6 {
        let name = [
            "delayed",
            "cancelled",
            "takeover",
            "expiry-first",
            "graceful",
            "clean",
        ][kind];
        let delay = sim.rng.range(2, 6) as u32;
        let expiry = match kind {
            0 => delay + sim.rng.range(3, 8) as u32,
            3 => (delay - 1).min(sim.rng.range(1, 4) as u32),
            4 => sim.rng.range(2, 6) as u32,
            5 => 0,
            _ => 3600,
        };
        let close_at = sim.rng.range(100, 1500);
        let a = sim.add_actor(&format!("will-{name}"), expiry > 0);
        let actor = &mut sim.actors[a];
        actor.protocol = Some(ProtocolVersion::V5);
        actor.expiry = expiry;
        actor.expect_session = false;
        let topic = format!("will/{name}");
        actor.will = Some(LastWill {
            topic: MqttStr::from(topic.as_str()),
            payload: Bytes::from(name),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::from(PropertyFields {
                will_delay_interval: Some(delay),
                ..PropertyFields::default()
            }),
        });
        let with_will = Leave::Disconnect(ReasonCode::DisconnectWithWill);
        let (how, reconnect_at, due) = match kind {
            0 if sim.rng.chance(50) => (with_will, None, Some(close_at + 1000 * u64::from(delay))),
            0 => (Leave::Reset, None, Some(close_at + 1000 * u64::from(delay))),
            1 => {
                let back = close_at + sim.rng.range(0, 1000 * u64::from(delay - 1));
                (Leave::Reset, Some(back), None)
            }
            2 => (Leave::HalfOpen, Some(close_at), None),
            3 => (
                Leave::Reset,
                None,
                Some(close_at + 1000 * u64::from(expiry)),
            ),
            4 => (Leave::Disconnect(ReasonCode::Success), None, None),
            _ => (Leave::Reset, None, Some(close_at)),
        };
        plans.push(WillPlan {
            actor: a,
            topic,
            close_at,
            how,
            reconnect_at,
            due,
            session_at_end: matches!(kind, 1 | 2),
            closed: false,
            reconnected: false,
        });
        sim.connect_random(a);
    }
    let mut everyone = watchers.clone();
    everyone.extend(plans.iter().map(|p| p.actor));
    sim.settle_connected(&everyone);
    let end = 30_000;
    while sim.now_ms < end {
        // Stop at every action, and a second before and after every will's due time.
        let next_stop = plans
            .iter()
            .flat_map(|p| {
                let due = p.due.filter(|&due| due != p.close_at);
                [
                    (!p.closed).then_some(p.close_at),
                    p.reconnect_at.filter(|_| !p.reconnected),
                    due.map(|due| due - 1000),
                    due.map(|due| due + 1000),
                ]
            })
            .flatten()
            .filter(|&t| t > sim.now_ms)
            .min()
            .unwrap_or(end);
        let step = sim.rng.range(50, 400);
        let target = (sim.now_ms + step).min(next_stop).min(end);
        sim.advance(target - sim.now_ms);
        sim.settle();
        for plan in &mut plans {
            if !plan.closed && plan.close_at <= sim.now_ms {
                plan.closed = true;
                if let Some(link) = sim.actors[plan.actor].link {
                    sim.leave(link, plan.how);
                }
            }
            if plan.closed
                && !plan.reconnected
                && plan.reconnect_at.is_some_and(|t| t <= sim.now_ms)
            {
                plan.reconnected = true;
                let link = sim.connect_random(plan.actor);
                sim.settle();
                let connack = link.and_then(|l| sim.links[l].connack.clone());
                assert!(
                    connack.is_some_and(|c| c.session_present),
                    "{}: reconnect within the will delay did not resume the session",
                    plan.topic
                );
            }
        }
        sim.settle();
        for plan in &plans {
            for &w in &watchers {
                let n = sim
                    .deliveries_to(w)
                    .filter(|d| d.topic == plan.topic)
                    .count();
                match plan.due {
                    None => assert_eq!(n, 0, "{}: a will that must not go out", plan.topic),
                    Some(due) if sim.now_ms < due => {
                        assert_eq!(n, 0, "{}: will before its time (due {due})", plan.topic)
                    }
                    Some(due) if sim.now_ms >= due + 1000 || (due == plan.close_at) => {
                        assert_eq!(n, 1, "{}: will not published once (due {due})", plan.topic)
                    }
                    Some(_) => assert!(n <= 1, "{}: will published twice", plan.topic),
                }
            }
        }
    }
    // A connection at the end: expired sessions are gone, the others resume.
    for plan in &plans {
        sim.actors[plan.actor].will = None;
        if let Some(link) = sim.actors[plan.actor].link {
            sim.leave(link, Leave::HalfOpen);
        }
        let link = sim.connect_random(plan.actor);
        sim.settle();
        let connack = link.and_then(|l| sim.links[l].connack.clone());
        let connack = connack.unwrap_or_else(|| panic!("{}: no CONNACK", plan.topic));
        assert_eq!(connack.reason, ReasonCode::Success);
        assert_eq!(
            connack.session_present, plan.session_at_end,
            "{}: session present at the end",
            plan.topic
        );
    }
    sim.check_stats(true);
    plans.len()
}

/// A QoS 2 publish that the publisher's shard had not yet recorded when the broker crashed is
/// resent afterwards. A subscriber whose shard had written its delivery, and which moved to
/// another shard after the restart but before the resend, gets the message once: its origin
/// marks moved with it.
fn qos2_resend_after_a_move(sim: &mut Sim) -> usize {
    let n = sim.shards.len();
    sim.enable_disk();
    let sub = sim.add_actor("sub-moving", true);
    sim.actors[sub].filters = vec![("seq/#".to_string(), QoS::ExactlyOnce)];
    let publisher = sim.add_actor("pub-resending", true);
    let home = shardmq::placement::home_shard("sub-moving", n);
    let away = (home + 1 + sim.rng.below(n - 1)) % n;
    let publisher_shard = (home + 1 + sim.rng.below(n - 1)) % n;
    sim.connect(sub, home);
    sim.connect(publisher, publisher_shard);
    sim.settle_connected(&[sub, publisher]);
    let payload = Bytes::from_static(b"exactly-once");
    assert!(sim.publish(publisher, "seq/p", payload.clone(), QoS::ExactlyOnce, false));
    // The publisher's shard routes it; the subscriber's shard writes the delivery; the crash
    // comes before its answer reaches the publisher's shard.
    let link = sim
        .live_link(publisher)
        .expect("the publisher is connected");
    while !sim.links[link].tx.is_empty() {
        sim.pump(link);
    }
    while sim.shards[publisher_shard].has_outbox(home) {
        let batch: Vec<_> = sim.shards[publisher_shard]
            .pop_outbox(home)
            .into_iter()
            .collect();
        let now = sim.now();
        sim.shards[home].on_mesh_from(publisher_shard, batch, now);
    }
    assert!(sim.write_journal(home, false), "the delivery is written");
    sim.crash();
    // The subscriber comes back on another shard (its session moves there), then the
    // publisher resends.
    sim.connect(sub, away);
    sim.settle_connected(&[sub]);
    let resend_shard = sim.random_shard();
    sim.connect(publisher, resend_shard);
    sim.settle_connected(&[sub, publisher]);
    assert!(
        sim.actors[publisher].outgoing.is_empty(),
        "the publisher's flow completes"
    );
    let got = sim
        .deliveries_to(sub)
        .filter(|d| d.payload == payload)
        .count();
    assert_eq!(
        got, 1,
        "QoS 2 delivered {got} times (subscriber home {home}, moved to {away}; publisher on {publisher_shard}, resent on {resend_shard})"
    );
    1
}

// ----- tests ---------------------------------------------------------------------------------

#[test]
fn simulation_takeover_races() {
    let verified = run_seeds("simulation_takeover_races", 500, &[2, 3], takeover_races);
    assert!(
        custom_seeds() || verified > 500,
        "only {verified} subscriptions verified"
    );
}

#[test]
fn simulation_no_qos1_qos2_loss_across_moves() {
    let checked = run_seeds(
        "simulation_no_qos1_qos2_loss_across_moves",
        500,
        &[2, 3],
        no_loss_across_moves,
    );
    assert!(
        custom_seeds() || checked > 20_000,
        "only {checked} deliveries checked"
    );
}

#[test]
fn simulation_qos2_resend_after_a_move() {
    run_seeds(
        "simulation_qos2_resend_after_a_move",
        200,
        &[2, 3],
        qos2_resend_after_a_move,
    );
}

#[test]
fn simulation_no_loss_across_crashes() {
    let checked = run_seeds(
        "simulation_no_loss_across_crashes",
        200,
        &[2, 3],
        no_loss_across_crashes,
    );
    eprintln!(
        "simulation_no_loss_across_crashes: {} QoS 2 duplicates after torn writes ({} seeds tore a write)",
        POWER_LOSS_DUPLICATES.load(Ordering::Relaxed),
        POWER_LOSS_SEEDS.load(Ordering::Relaxed)
    );
    assert!(
        custom_seeds() || checked > 5_000,
        "only {checked} deliveries checked"
    );
}

#[test]
fn simulation_retained_ordering() {
    run_seeds(
        "simulation_retained_ordering",
        1000,
        &[2, 3],
        retained_ordering,
    );
}

#[test]
fn simulation_shared_subscriptions() {
    let checked = run_seeds(
        "simulation_shared_subscriptions",
        500,
        &[2, 3],
        shared_subscriptions,
    );
    assert!(
        custom_seeds() || checked > 20_000,
        "only {checked} messages checked"
    );
}

#[test]
fn simulation_will_delay_and_expiry() {
    run_seeds(
        "simulation_will_delay_and_expiry",
        500,
        &[2, 3],
        will_delay_and_expiry,
    );
}
