//! Model test of the client-id ownership protocol: several shards in one thread, a hand-pumped
//! mesh that delivers messages in random (per-pair FIFO) order, clients connecting, taking
//! over, subscribing and closing at random. After every step the invariants of the module docs
//! are checked; after the run the mesh is drained and the settled state is checked.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use super::{ConnId, ConnState, Global, Shard};
use crate::codec::{
    decode, Connect, MqttStr, Packet, Properties, ProtocolVersion, QoS, ReasonCode, Subscribe,
    SubscriptionOptions,
};
use crate::config::Config;

/// xorshift64*: a reproducible schedule per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// One client connection as the simulated network sees it.
struct Client {
    shard: usize,
    conn: ConnId,
    id: usize,
    protocol: ProtocolVersion,
    input: BytesMut,
    connected: bool,
    subscribe_sent: bool,
}

struct Sim {
    shards: Vec<Shard>,
    clients: Vec<Client>,
    ids: Vec<MqttStr>,
    persistent: Vec<bool>,
    /// Persistent ids whose session has been created (some CONNACK was seen).
    established: HashSet<usize>,
    /// Persistent ids whose subscription was acknowledged.
    subscribed: HashSet<usize>,
    connacks: usize,
    /// Claims refused because a newer one superseded them.
    refused: usize,
    /// What happened, for the failure message.
    log: Vec<String>,
}

impl Sim {
    fn new(shards: usize, ids: usize) -> Sim {
        let config = Rc::new(Config::default());
        let global = Arc::new(Global::default());
        Sim {
            shards: (0..shards)
                .map(|i| {
                    Shard::new(
                        i,
                        shards,
                        Rc::clone(&config),
                        Arc::clone(&global),
                        Instant::now(),
                    )
                })
                .collect(),
            clients: Vec::new(),
            ids: (0..ids)
                .map(|i| MqttStr::from(format!("model-{i}")))
                .collect(),
            // Even ids always persistent, odd ids always clean.
            persistent: (0..ids).map(|i| i % 2 == 0).collect(),
            established: HashSet::new(),
            subscribed: HashSet::new(),
            connacks: 0,
            refused: 0,
            log: Vec::new(),
        }
    }

    fn alive(&self, client: &Client) -> bool {
        self.shards[client.shard].conns.contains(client.conn)
    }

    fn connect(&mut self, shard: usize, id: usize, v5: bool) {
        let Some(conn) = self.shards[shard].on_accept(Instant::now()) else {
            return;
        };
        self.log.push(format!(
            "connect id {id} on shard {shard} conn {conn:?} v5 {v5}"
        ));
        let protocol = if v5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V3_1_1
        };
        let persistent = self.persistent[id];
        let mut properties = Properties::default();
        if v5 && persistent {
            properties.session_expiry_interval = Some(300);
        }
        let connect = Connect {
            protocol,
            clean_start: !persistent,
            keep_alive: 0,
            client_id: self.ids[id].clone(),
            will: None,
            username: None,
            password: None,
            properties,
        };
        let mut bytes = BytesMut::new();
        Packet::Connect(Box::new(connect))
            .encode(protocol, &mut bytes)
            .unwrap();
        self.clients.push(Client {
            shard,
            conn,
            id,
            protocol,
            input: BytesMut::new(),
            connected: false,
            subscribe_sent: false,
        });
        self.shards[shard].on_bytes(conn, bytes, Instant::now());
    }

    /// Reads what the broker wrote to each client; persistent clients subscribe once connected.
    fn read_outputs(&mut self) {
        for i in 0..self.clients.len() {
            if !self.alive(&self.clients[i]) {
                continue;
            }
            let client = &self.clients[i];
            let Some(pending) = self.shards[client.shard].conns.get(client.conn) else {
                continue;
            };
            if !pending.out.is_empty() {
                let line = format!(
                    "  out to shard {} conn {:?} id {}: {:?}",
                    client.shard,
                    client.conn,
                    client.id,
                    &pending.out[..]
                );
                self.log.push(line);
            }
            let (shard, conn) = (self.clients[i].shard, self.clients[i].conn);
            let Some(out) = self.shards[shard].output(conn).map(std::mem::take) else {
                continue;
            };
            let client = &mut self.clients[i];
            client.input.extend_from_slice(&out);
            let mut subscribe = false;
            while let Some(packet) = decode(&mut client.input, client.protocol, usize::MAX)
                .expect("the broker writes valid packets")
            {
                match packet {
                    Packet::ConnAck(connack) if connack.reason != ReasonCode::Success => {
                        // A newer connection won the id before this claim's turn.
                        assert!(
                            matches!(
                                connack.reason,
                                ReasonCode::ServerBusy | ReasonCode::ServerUnavailable
                            ),
                            "unexpected refusal {connack:?}"
                        );
                        self.refused += 1;
                    }
                    Packet::ConnAck(connack) => {
                        assert!(!client.connected, "a second CONNACK");
                        client.connected = true;
                        self.connacks += 1;
                        if self.persistent[client.id] {
                            let known = !self.established.insert(client.id);
                            assert_eq!(
                                connack.session_present, known,
                                "session present for persistent id {} (seen before: {known})",
                                client.id
                            );
                            subscribe = !client.subscribe_sent;
                        }
                    }
                    Packet::SubAck(_) => {
                        self.subscribed.insert(client.id);
                    }
                    _ => {}
                }
            }
            if subscribe {
                client.subscribe_sent = true;
                let filter = MqttStr::from(format!("t/{}", self.ids[client.id]));
                let mut bytes = BytesMut::new();
                Packet::Subscribe(Subscribe {
                    packet_id: 1,
                    properties: Properties::default(),
                    filters: vec![(filter, SubscriptionOptions::with_qos(QoS::AtLeastOnce))],
                })
                .encode(client.protocol, &mut bytes)
                .unwrap();
                self.shards[shard].on_bytes(conn, bytes, Instant::now());
            }
        }
    }

    /// The runtime's part: a connection the shard asked to close is closed.
    fn reap_one(&mut self, rng: &mut Rng) {
        let shard = rng.below(self.shards.len());
        let killed: Vec<ConnId> = self.shards[shard]
            .conns
            .iter()
            .filter(|(_, c)| c.kill.is_some())
            .map(|(i, _)| i)
            .collect();
        if let Some(&conn) = killed.get(rng.below(killed.len().max(1))) {
            self.log.push(format!("reap shard {shard} conn {conn:?}"));
            self.shards[shard].on_closed(conn, Instant::now());
        }
    }

    fn reap_all(&mut self) {
        for shard in &mut self.shards {
            let killed: Vec<ConnId> = shard
                .conns
                .iter()
                .filter(|(_, c)| c.kill.is_some())
                .map(|(i, _)| i)
                .collect();
            for conn in killed {
                shard.on_closed(conn, Instant::now());
            }
        }
    }

    /// A client goes away: abruptly, or after DISCONNECT.
    fn close(&mut self, rng: &mut Rng) {
        let open: Vec<usize> = (0..self.clients.len())
            .filter(|&i| self.alive(&self.clients[i]))
            .collect();
        let Some(&i) = open.get(rng.below(open.len().max(1))) else {
            return;
        };
        let (shard, conn, protocol) = (
            self.clients[i].shard,
            self.clients[i].conn,
            self.clients[i].protocol,
        );
        self.log.push(format!("close shard {shard} conn {conn:?}"));
        let s = &mut self.shards[shard];
        if self.clients[i].connected && rng.chance(50) {
            let mut bytes = BytesMut::new();
            Packet::Disconnect(crate::codec::Disconnect::new(
                crate::codec::ReasonCode::Success,
            ))
            .encode(protocol, &mut bytes)
            .unwrap();
            s.on_bytes(conn, bytes, Instant::now());
        }
        s.on_closed(conn, Instant::now());
    }

    /// Delivers the oldest message of one random non-empty (from, to) queue.
    fn deliver_one(&mut self, rng: &mut Rng) -> bool {
        let n = self.shards.len();
        let queues: Vec<(usize, usize)> = (0..n)
            .flat_map(|from| (0..n).map(move |to| (from, to)))
            .filter(|&(from, to)| self.shards[from].has_outbox(to))
            .collect();
        let Some(&(from, to)) = queues.get(rng.below(queues.len().max(1))) else {
            return false;
        };
        if let Some(message) = self.shards[from].pop_outbox(to) {
            self.log.push(format!("deliver {from}->{to}: {message:?}"));
            self.shards[to].on_mesh_from(from, [message], Instant::now());
        }
        true
    }

    fn step(&mut self, rng: &mut Rng) {
        match rng.below(100) {
            0..=24 => {
                let shard = rng.below(self.shards.len());
                let id = rng.below(self.ids.len());
                let v5 = rng.chance(50);
                self.connect(shard, id, v5);
            }
            25..=34 => self.close(rng),
            35..=44 => self.reap_one(rng),
            _ => {
                self.deliver_one(rng);
            }
        }
        self.read_outputs();
    }

    /// Drains the mesh and the runtime's pending closes until nothing moves.
    fn settle(&mut self, rng: &mut Rng) {
        for _ in 0..100_000 {
            self.reap_all();
            self.read_outputs();
            if !self.deliver_one(rng) && self.shards.iter().all(|s| s.local_inbox.is_empty()) {
                self.reap_all();
                self.read_outputs();
                if self
                    .shards
                    .iter()
                    .all(|s| (0..s.shards).all(|peer| !s.has_outbox(peer)))
                {
                    return;
                }
            }
        }
        panic!("the mesh did not go quiet");
    }

    /// Invariants that hold after every step.
    fn check_always(&self) {
        for shard in &self.shards {
            assert_eq!(
                shard.stats.protocol_violations, 0,
                "protocol violation repaired"
            );
        }
        let mut indexed: HashMap<&str, usize> = HashMap::new();
        let mut stubs: HashMap<&str, usize> = HashMap::new();
        let mut live_conns: HashMap<&str, usize> = HashMap::new();
        for (shard_id, shard) in self.shards.iter().enumerate() {
            let mut slots = HashSet::new();
            for number in shard.by_client_id.slot_numbers() {
                assert!(
                    slots.insert(number),
                    "shard {shard_id}: two index entries for slot {number}"
                );
                let slot = shard
                    .sessions
                    .handle_at(number)
                    .unwrap_or_else(|| panic!("shard {shard_id}: index entry to a free slot"));
                let entry = shard
                    .sessions
                    .get(slot)
                    .unwrap_or_else(|| panic!("shard {shard_id}: index entry to a free slot"));
                // The index keys by the session's own client id: its entry must be found
                // under it (the stored hash agrees with the key).
                let client_id = entry.session.client_id.as_str();
                assert_eq!(
                    shard.by_client_id.get(&shard.sessions, client_id),
                    Some(slot),
                    "shard {shard_id}: index entry of {client_id} not found under its key"
                );
                *indexed.entry(client_id).or_default() += 1;
                assert!(entry.moved_to().is_none(), "a stub is indexed");
            }
            for (slot, entry) in shard.sessions.iter() {
                let client_id = entry.session.client_id.as_str();
                if entry.moved_to().is_some() {
                    *stubs.entry(client_id).or_default() += 1;
                    assert!(entry.conn.is_none(), "a stub has a connection");
                    continue;
                }
                assert_eq!(
                    shard
                        .by_client_id
                        .get(&shard.sessions, &entry.session.client_id),
                    Some(slot),
                    "shard {shard_id}: session of {client_id} not indexed (orphan)"
                );
                if let Some(conn) = entry.conn {
                    let c = shard
                        .conns
                        .get(conn)
                        .expect("session attached to a closed conn");
                    assert!(
                        matches!(c.state, ConnState::Active { session, .. } if session == slot),
                        "shard {shard_id}: session and connection disagree"
                    );
                }
            }
            for (index, conn) in shard.conns.iter() {
                if let ConnState::Active { session, .. } = conn.state {
                    let entry = shard.sessions.get(session).expect("active conn, free slot");
                    assert_eq!(entry.conn, Some(index));
                    if conn.kill.is_none() {
                        *live_conns
                            .entry(entry.session.client_id.as_str())
                            .or_default() += 1;
                    }
                }
            }
        }
        for (client_id, count) in indexed {
            assert!(count <= 1, "{client_id}: {count} sessions indexed");
        }
        for (client_id, count) in stubs {
            assert!(count <= 1, "{client_id}: {count} stubs");
        }
        for (client_id, count) in live_conns {
            assert!(count <= 1, "{client_id}: {count} live connections");
        }
    }

    /// Invariants of the quiet state: every claim answered, every registration settled and
    /// pointing at the one session, persistent sessions and their subscriptions kept.
    fn check_settled(&self) {
        for (shard_id, shard) in self.shards.iter().enumerate() {
            assert!(
                shard.pending_claims.is_empty(),
                "shard {shard_id}: unanswered claims"
            );
            assert!(shard.stubs.is_empty(), "shard {shard_id}: stubs left");
            assert!(shard.barriers.is_empty(), "shard {shard_id}: barriers left");
            assert!(
                shard.sessions.iter().all(|(_, e)| e.moved_to().is_none()),
                "shard {shard_id}: stub sessions left"
            );
        }
        for (id, client_id) in self.ids.iter().enumerate() {
            let home = self.shards[0].home_shard(client_id);
            let registration = self.shards[home].registry.get(client_id);
            let holder = self.shards.iter().enumerate().find_map(|(i, s)| {
                s.by_client_id
                    .get(&s.sessions, client_id)
                    .map(|slot| (i, slot))
            });
            match (registration, holder) {
                (Some(r), Some((shard, slot))) => {
                    assert!(
                        r.settled && r.waiting().is_none(),
                        "{client_id}: not settled"
                    );
                    assert_eq!(
                        usize::from(r.owner().shard),
                        shard,
                        "{client_id}: owner shard"
                    );
                    assert_eq!(
                        self.shards[shard].sessions.get(slot).map(|e| e.token),
                        Some(r.owner().token),
                        "{client_id}: owner token"
                    );
                }
                (None, None) => {}
                (r, h) => panic!("{client_id}: registration {r:?} but session {h:?}"),
            }
            if self.persistent[id] && self.established.contains(&id) {
                let (shard, slot) =
                    holder.unwrap_or_else(|| panic!("{client_id}: persistent session lost"));
                if self.subscribed.contains(&id) {
                    let filter = format!("t/{client_id}");
                    assert!(
                        self.shards[shard]
                            .sessions
                            .get(slot)
                            .expect("indexed session")
                            .session
                            .subscriptions
                            .contains_key(filter.as_str()),
                        "{client_id}: subscription lost"
                    );
                }
            }
        }
    }
}

fn run(seed: u64, shards: usize, ids: usize, steps: usize) -> usize {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut sim = Sim::new(shards, ids);
    for _ in 0..steps {
        sim.step(&mut rng);
        sim.check_always();
    }
    sim.settle(&mut rng);
    sim.check_always();
    sim.check_settled();
    // Once quiet, one more connection per persistent id finds its session.
    let persistent: Vec<usize> = (0..ids).filter(|&id| sim.persistent[id]).collect();
    for id in persistent {
        let shard = rng.below(shards);
        sim.connect(shard, id, rng.chance(50));
        sim.settle(&mut rng);
        sim.check_always();
        sim.check_settled();
    }
    // Move deduplication ends by the clock, deliveries or not: no quiet moved session keeps
    // its memory of recent messages.
    let later = Instant::now() + std::time::Duration::from_secs(5);
    for shard in &mut sim.shards {
        shard.on_tick(later);
        assert!(
            shard.sessions.iter().all(|(_, e)| e.recent().is_none()),
            "move deduplication outlived its margin"
        );
    }
    sim.connacks
}

#[test]
fn claim_protocol_keeps_one_owner_under_random_interleavings() {
    let mut connacks = 0;
    for seed in 0..300 {
        let shards = 2 + (seed as usize % 2);
        let result = std::panic::catch_unwind(|| run(seed, shards, 4, 300));
        match result {
            Ok(count) => connacks += count,
            Err(panic) => {
                let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
                let mut sim = Sim::new(shards, 4);
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    for _ in 0..300 {
                        sim.step(&mut rng);
                        sim.check_always();
                    }
                    sim.settle(&mut rng);
                }));
                let tail = sim.log.len().saturating_sub(400);
                for line in &sim.log[tail..] {
                    eprintln!("  {line}");
                }
                eprintln!("claim model failed with seed {seed} ({shards} shards)");
                std::panic::resume_unwind(panic);
            }
        }
    }
    // The schedules must exercise the protocol, not just refuse everything.
    assert!(connacks > 3000, "only {connacks} CONNACKs in all runs");
}
