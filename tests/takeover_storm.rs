//! Session takeover under stress: many clients racing on a few client ids across both shards,
//! with random closes and TCP resets (the "50 threads on `stormcid`" report), and a burst of
//! CONNECTs for one id written before any CONNACK is read. Afterwards: no shard died, at most
//! one connection per id is alive, persistent sessions are intact and the broker still serves.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{ack_publish, connect_packet_for, Broker, Raw, Recv, Sync, QUIET, TIMEOUT};
use shardmq::codec::{
    MqttStr, Packet, Properties, ProtocolVersion, QoS, ReasonCode, Subscribe, SubscriptionOptions,
};

/// Client ids that always connect with a persistent session (clean session 0 / expiry > 0).
const PERSISTENT_IDS: [&str; 3] = ["storm-p0", "storm-p1", "storm-p2"];
/// Client ids that always connect with a clean session.
const CLEAN_IDS: [&str; 2] = ["storm-c0", "storm-c1"];
/// Worker threads (the box has 2 cores: this is about interleavings, not load).
const THREADS: usize = 32;
/// How long each worker keeps connecting.
const STORM: Duration = Duration::from_secs(4);
/// Session expiry of the MQTT 5.0 persistent connections.
const V5_EXPIRY: u32 = 300;
/// Keep-alive of every storm connection, as in the report.
const KEEP_ALIVE: u16 = 60;
/// Fixed seed: each worker derives its own stream of choices from it.
const SEED: u64 = 0x5eed_57a7_e0c0_ffee;

/// A tiny xorshift64* generator: deterministic choices without a `rand` dependency.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        // splitmix64 of the seed, so that nearby seeds give unrelated streams (never 0).
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        XorShift((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-enough in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        (self.next() >> 32) % n
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What the workers saw, summed over all of them.
#[derive(Default)]
struct Tally {
    tcp_failed: AtomicUsize,
    connect_write_failed: AtomicUsize,
    connacks: AtomicUsize,
    session_present: AtomicUsize,
    closed_before_connack: AtomicUsize,
    /// Refused with server busy (3.x: server unavailable): a newer connection won the id.
    superseded: AtomicUsize,
    connack_timeouts: AtomicUsize,
    subacks: AtomicUsize,
    taken_over: AtomicUsize,
    resets: AtomicUsize,
    disconnects: AtomicUsize,
    plain_closes: AtomicUsize,
    /// Whether a SUBACK for `storm/<id>` was seen, per persistent id.
    subscribed: [AtomicBool; PERSISTENT_IDS.len()],
    /// Protocol violations (never expected, whatever the races).
    anomalies: Mutex<Vec<String>>,
}

impl Tally {
    fn bump(counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn anomaly(&self, what: String) {
        let mut anomalies = self.anomalies.lock().unwrap();
        if anomalies.len() < 20 {
            anomalies.push(what);
        }
    }

    fn summary(&self) -> String {
        let get = |c: &AtomicUsize| c.load(Ordering::Relaxed);
        format!(
            "tcp failed {}, CONNECT write failed {}, CONNACKs {} (session present {}), \
             closed before CONNACK {}, superseded {}, CONNACK timeouts {}, SUBACKs {}, taken over {}, \
             closes: reset {} / DISCONNECT {} / plain {}",
            get(&self.tcp_failed),
            get(&self.connect_write_failed),
            get(&self.connacks),
            get(&self.session_present),
            get(&self.closed_before_connack),
            get(&self.superseded),
            get(&self.connack_timeouts),
            get(&self.subacks),
            get(&self.taken_over),
            get(&self.resets),
            get(&self.disconnects),
            get(&self.plain_closes),
        )
    }
}

fn topic_of(id: &str) -> String {
    format!("storm/{id}")
}

fn subscribe_packet(packet_id: u16, filter: &str) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id,
        properties: Properties::default(),
        filters: vec![(
            MqttStr::from(filter),
            SubscriptionOptions::with_qos(QoS::AtLeastOnce),
        )],
    })
}

/// One storm worker: connect, maybe subscribe, read a little, close in one of three ways;
/// repeat until `until`. Network errors are outcomes, never panics.
fn storm_worker(shards: &[SocketAddr], tally: &Tally, worker: usize, until: Instant) {
    let mut rng = XorShift::new(SEED ^ (worker as u64).wrapping_mul(0x1000_0000_01B3));
    let mut packet_id: u16 = 0;
    while Instant::now() < until {
        let pick = rng.below((PERSISTENT_IDS.len() + CLEAN_IDS.len()) as u64) as usize;
        let (id, persistent) = match PERSISTENT_IDS.get(pick) {
            Some(id) => (*id, true),
            None => (CLEAN_IDS[pick - PERSISTENT_IDS.len()], false),
        };
        let shard = rng.below(2) as usize;
        let protocol = if rng.chance(50) {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V3_1_1
        };
        let subscribe = persistent || rng.chance(50);
        let linger = Duration::from_millis(rng.below(51));
        let close = rng.below(100);

        let mut raw = match Raw::try_tcp(shards[shard], TIMEOUT) {
            Ok(raw) => raw,
            Err(_) => {
                Tally::bump(&tally.tcp_failed);
                continue;
            }
        };
        raw.version = protocol;
        let connect = connect_packet_for(protocol, id, persistent, KEEP_ALIVE, V5_EXPIRY);
        if raw.try_send(&Packet::Connect(Box::new(connect))).is_err() {
            Tally::bump(&tally.connect_write_failed);
            raw.reset();
            continue;
        }
        let what = format!("worker {worker}, {id} ({protocol:?}) on shard {shard}");
        match raw.recv_for(TIMEOUT) {
            Recv::Packet(Packet::ConnAck(connack)) if connack.reason == ReasonCode::Success => {
                Tally::bump(&tally.connacks);
                if connack.session_present {
                    Tally::bump(&tally.session_present);
                    if !persistent {
                        tally.anomaly(format!("{what}: session present for a clean session"));
                    }
                }
            }
            Recv::Packet(Packet::ConnAck(connack)) if connack.reason == ReasonCode::ServerBusy => {
                // A newer connection for the same id won the race before this one's turn
                // (5.0: 0x89 server busy; 3.x: return code 3, read back as server unavailable).
                Tally::bump(&tally.superseded);
                raw.close();
                continue;
            }
            Recv::Packet(Packet::ConnAck(connack))
                if !protocol.is_v5() && connack.reason == ReasonCode::ServerUnavailable =>
            {
                Tally::bump(&tally.superseded);
                raw.close();
                continue;
            }
            Recv::Packet(other) => {
                tally.anomaly(format!(
                    "{what}: expected a successful CONNACK, got {other:?}"
                ));
                raw.reset();
                continue;
            }
            Recv::Closed => {
                // Taken over before the CONNACK: legitimate in a race.
                Tally::bump(&tally.closed_before_connack);
                raw.close();
                continue;
            }
            Recv::Timeout => {
                Tally::bump(&tally.connack_timeouts);
                tally.anomaly(format!(
                    "{what}: no CONNACK and no close within {TIMEOUT:?}"
                ));
                raw.reset();
                continue;
            }
        }
        let mut open = true;
        if subscribe {
            packet_id = packet_id.wrapping_add(1).max(1);
            open = raw
                .try_send(&subscribe_packet(packet_id, &topic_of(id)))
                .is_ok();
        }
        // Read for the linger time: SUBACK, maybe a DISCONNECT 0x8E (5.0) and the close when
        // another connection takes the id over.
        let deadline = Instant::now() + linger;
        while open {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match raw.recv_for(left) {
                Recv::Packet(Packet::SubAck(suback)) => {
                    Tally::bump(&tally.subacks);
                    if suback.packet_id != packet_id || suback.reasons != [ReasonCode::GrantedQos1]
                    {
                        tally.anomaly(format!("{what}: unexpected {suback:?}"));
                    } else if persistent {
                        tally.subscribed[pick].store(true, Ordering::Relaxed);
                    }
                }
                Recv::Packet(Packet::Disconnect(disconnect)) => {
                    Tally::bump(&tally.taken_over);
                    if !protocol.is_v5() || disconnect.reason != ReasonCode::SessionTakenOver {
                        tally.anomaly(format!("{what}: unexpected {disconnect:?}"));
                    }
                    open = false;
                }
                Recv::Packet(Packet::Publish(publish)) => {
                    // Nobody publishes during the storm; acknowledge anyway.
                    tally.anomaly(format!("{what}: unexpected {publish:?}"));
                    if publish.qos == QoS::AtLeastOnce {
                        let _ = raw
                            .try_send(&Packet::PubAck(shardmq::codec::Ack::new(publish.packet_id)));
                    }
                }
                Recv::Packet(other) => tally.anomaly(format!("{what}: unexpected {other:?}")),
                Recv::Closed => {
                    Tally::bump(&tally.taken_over);
                    open = false;
                }
                Recv::Timeout => break,
            }
        }
        if close < 30 {
            Tally::bump(&tally.resets);
            raw.reset();
        } else if close < 65 {
            Tally::bump(&tally.disconnects);
            let _ = raw.try_send(&Packet::Disconnect(Default::default()));
            raw.close();
        } else {
            Tally::bump(&tally.plain_closes);
            raw.close();
        }
    }
}

/// Waits until the broker counts `expected` connections; fails with the last count.
fn wait_for_connections(broker: &Broker, expected: usize, what: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = broker.connections();
        if now == expected {
            return;
        }
        assert!(
            !broker.failed(),
            "a shard died ({now} connections counted, {expected} expected: {what})"
        );
        assert!(
            Instant::now() < deadline,
            "{what}: {now} connections still counted after {TIMEOUT:?}, {expected} expected"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh client on each shard subscribes, and a publish from the other shard reaches it.
fn assert_serves_new_clients(broker: &Broker, sync: &mut Sync, tag: &str) {
    for shard in 0..2 {
        let topic = format!("storm/fresh/{tag}/{shard}");
        let (mut sub, _) = Raw::connect(broker.shard(shard), &format!("{tag}-sub-{shard}"), true);
        sub.subscribe(1, &topic, QoS::AtLeastOnce);
        sync.settle();
        let (mut publisher, _) =
            Raw::connect(broker.shard(1 - shard), &format!("{tag}-pub-{shard}"), true);
        publisher.publish(&topic, b"fresh", QoS::AtLeastOnce, false, 1);
        let got = sub.recv_publish();
        assert_eq!(&got.payload[..], b"fresh", "new clients on shard {shard}");
        ack_publish(&mut sub, &got);
        sub.disconnect();
        publisher.disconnect();
    }
}

/// The storm: 32 threads for 4 s on 3 persistent and 2 clean client ids, both shards, 3.1.1
/// and 5.0 mixed, 30% of closes with a reset. Then: no shard died, every connection is gone,
/// each persistent id resumes its session (session present) with its subscription, and new
/// clients are served on both shards.
#[test]
fn takeover_storm_leaves_a_consistent_broker() {
    let broker = Broker::start();
    let tally = Tally::default();
    let until = Instant::now() + STORM;
    std::thread::scope(|scope| {
        for worker in 0..THREADS {
            let (shards, tally) = (&broker.shard_addrs[..], &tally);
            scope.spawn(move || storm_worker(shards, tally, worker, until));
        }
    });
    let summary = tally.summary();
    eprintln!("storm: {summary}");

    assert!(
        !broker.failed(),
        "a shard died during the takeover storm ({summary})"
    );
    // Every storm socket is closed: the broker must let go of all of them (at most one
    // connection per id is alive, in the strongest form).
    wait_for_connections(
        &broker,
        0,
        "after the storm, with every client socket closed",
    );
    let anomalies = tally.anomalies.lock().unwrap().clone();
    assert!(
        anomalies.is_empty(),
        "protocol violations during the storm ({summary}): {anomalies:#?}"
    );
    let connacks = tally.connacks.load(Ordering::Relaxed);
    assert!(
        connacks > 200,
        "too few CONNACKs for the storm to mean anything: {summary}"
    );
    for (i, id) in PERSISTENT_IDS.iter().enumerate() {
        assert!(
            tally.subscribed[i].load(Ordering::Relaxed),
            "{id} never got a SUBACK during the storm ({summary})"
        );
    }

    // Each persistent session survived with its subscription.
    let mut sync = Sync::new(&broker);
    for (i, id) in PERSISTENT_IDS.iter().enumerate() {
        let shard = i % 2;
        let protocol = if i % 2 == 0 {
            ProtocolVersion::V3_1_1
        } else {
            ProtocolVersion::V5
        };
        let (mut sub, connack) = Raw::connect_with(
            broker.shard(shard),
            connect_packet_for(protocol, id, true, KEEP_ALIVE, V5_EXPIRY),
        );
        assert!(
            connack.session_present,
            "{id} ({protocol:?}, shard {shard}): the persistent session survived the storm"
        );
        sync.settle();
        let (mut publisher, _) =
            Raw::connect(broker.shard(1 - shard), &format!("{id}-after"), true);
        publisher.publish(
            &topic_of(id),
            b"after the storm",
            QoS::AtLeastOnce,
            false,
            1,
        );
        let got = sub.recv_publish();
        assert_eq!(&got.payload[..], b"after the storm", "{id}");
        assert_eq!(got.qos, QoS::AtLeastOnce, "{id}");
        ack_publish(&mut sub, &got);
        sub.expect_silence(QUIET);
        publisher.disconnect();
        sub.disconnect();
    }

    assert_serves_new_clients(&broker, &mut sync, "storm");
    assert!(!broker.failed(), "a shard died after the storm");
}

/// One persistent subscriber on shard 0, then 10 CONNECTs for its id written back to back
/// (alternating shards 1 and 0, 3.1.1 and 5.0) before any CONNACK is read. Exactly one of the
/// 11 connections survives, it resumed the session, and the subscription delivers to it.
#[test]
fn burst_of_takeovers_leaves_exactly_one_connection() {
    const ID: &str = "burst-cid";
    const TOPIC: &str = "storm/burst";
    let broker = Broker::start();
    let (mut first, connack) = Raw::connect(broker.shard(0), ID, false);
    assert!(!connack.session_present);
    first.subscribe(1, TOPIC, QoS::AtLeastOnce);

    let mut contenders: Vec<(usize, Raw)> = (0..10)
        .map(|i| {
            let shard = if i % 2 == 0 { 1 } else { 0 };
            let mut raw = Raw::tcp(broker.shard(shard));
            raw.version = if i % 3 == 1 {
                ProtocolVersion::V5
            } else {
                ProtocolVersion::V3_1_1
            };
            (shard, raw)
        })
        .collect();
    for (_, raw) in &mut contenders {
        let connect = connect_packet_for(raw.version, ID, true, KEEP_ALIVE, V5_EXPIRY);
        // A contender may already be closed by a later one's takeover: not an error.
        let _ = raw.try_send(&Packet::Connect(Box::new(connect)));
    }

    // The subscriber and 9 of the 10 contenders are closed by the broker. Whatever happens,
    // look at every connection first, so that a failure says what each one saw.
    let deadline = Instant::now() + TIMEOUT;
    while broker.connections() != 1 && Instant::now() < deadline && !broker.failed() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let counted = broker.connections();
    let (first_packets, first_alive) = observe(&mut first);
    let seen: Vec<Seen> = contenders
        .iter_mut()
        .enumerate()
        .map(|(index, (shard, raw))| {
            let (packets, alive) = observe(raw);
            Seen {
                index,
                shard: *shard,
                version: raw.version,
                packets,
                alive,
            }
        })
        .collect();
    let states = format!(
        "original (V3_1_1, shard 0): [{}], {}\n{}",
        brief(&first_packets),
        if first_alive { "open" } else { "closed" },
        seen.iter()
            .map(Seen::describe)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(!broker.failed(), "a shard died; connections:\n{states}");
    assert_eq!(
        counted, 1,
        "connections counted {TIMEOUT:?} after the burst (1 expected); connections:\n{states}"
    );
    assert!(
        !first_alive && first_packets.is_empty(),
        "3.1.1: the original connection is closed without a packet; connections:\n{states}"
    );
    for s in &seen {
        // At most a successful CONNACK, then (5.0, taken over) DISCONNECT 0x8E.
        let well_formed = match &s.packets[..] {
            [] => true,
            [Packet::ConnAck(c)] => {
                c.reason == ReasonCode::Success
                    // Superseded by a newer contender before its turn came.
                    || (!s.alive && c.reason == ReasonCode::ServerBusy)
                    || (!s.alive
                        && !s.version.is_v5()
                        && c.reason == ReasonCode::ServerUnavailable)
            }
            [Packet::ConnAck(c), Packet::Disconnect(d)] => {
                c.reason == ReasonCode::Success
                    && s.version.is_v5()
                    && d.reason == ReasonCode::SessionTakenOver
                    && !s.alive
            }
            _ => false,
        };
        assert!(
            well_formed,
            "{}: unexpected packets; connections:\n{states}",
            s.describe()
        );
    }
    let mut survivors: Vec<usize> = seen.iter().filter(|s| s.alive).map(|s| s.index).collect();
    assert_eq!(
        survivors.len(),
        1,
        "exactly one contender survives; connections:\n{states}"
    );
    let i = survivors.pop().unwrap();
    let (shard, mut survivor) = contenders.swap_remove(i);
    let connack = match seen[i].packets.first() {
        Some(Packet::ConnAck(connack)) => connack.clone(),
        _ => panic!("contender {i} survived without a CONNACK; connections:\n{states}"),
    };
    assert!(
        connack.session_present,
        "contender {i} (shard {shard}) resumed the persistent session"
    );
    survivor.ping();

    let mut sync = Sync::new(&broker);
    sync.settle();
    for publisher_shard in [0, 1] {
        let (mut publisher, _) = Raw::connect(
            broker.shard(publisher_shard),
            &format!("burst-pub-{publisher_shard}"),
            true,
        );
        publisher.publish(TOPIC, b"to the survivor", QoS::AtLeastOnce, false, 1);
        let got = survivor.recv_publish();
        assert_eq!(&got.payload[..], b"to the survivor");
        ack_publish(&mut survivor, &got);
        survivor.expect_silence(QUIET);
        publisher.disconnect();
    }
    survivor.disconnect();
    assert!(!broker.failed(), "a shard died");
}

/// What one connection of the burst saw.
struct Seen {
    index: usize,
    shard: usize,
    version: ProtocolVersion,
    packets: Vec<Packet>,
    alive: bool,
}

impl Seen {
    fn describe(&self) -> String {
        format!(
            "contender {} ({:?}, shard {}): [{}], {}",
            self.index,
            self.version,
            self.shard,
            brief(&self.packets),
            if self.alive { "open" } else { "closed" }
        )
    }
}

/// Packets in a few words each.
fn brief(packets: &[Packet]) -> String {
    packets
        .iter()
        .map(|packet| match packet {
            Packet::ConnAck(c) => format!(
                "CONNACK {:#04x} session present {}",
                c.reason.as_u8(),
                u8::from(c.session_present)
            ),
            Packet::Disconnect(d) => format!("DISCONNECT {:#04x}", d.reason.as_u8()),
            other => format!("{other:?}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Everything a connection receives until it is closed (false) or quiet for [`QUIET`] (true,
/// still open).
fn observe(raw: &mut Raw) -> (Vec<Packet>, bool) {
    let mut packets = Vec::new();
    loop {
        match raw.recv_for(QUIET) {
            Recv::Packet(packet) => packets.push(packet),
            Recv::Closed => return (packets, false),
            Recv::Timeout => return (packets, true),
        }
    }
}
