//! The hooks as the shard uses them: a refusing admission, a restrictive authorization and a
//! journal that makes changes durable later, driven through the sans-I/O inputs of one shard.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use super::{ConnId, Global, Shard};
use crate::broker::hooks::{
    Admission, AllowAll, Authorization, ClientRef, DefaultAdmission, Durability, Hooks, Journal,
    JournalRecord, NoJournal,
};
use crate::codec::{
    decode, Ack, Connect, MqttStr, Packet, Properties, PropertyFields, ProtocolVersion, Publish,
    QoS, ReasonCode, Subscribe, SubscriptionOptions,
};
use crate::config::Config;

#[derive(Debug)]
struct RefuseUser(&'static str);

impl Admission for RefuseUser {
    fn admit(&self, connect: &Connect) -> Result<(), ReasonCode> {
        match connect.username.as_deref() {
            Some(user) if user == self.0 => Err(ReasonCode::BadUserNameOrPassword),
            _ => Ok(()),
        }
    }
}

/// `secret/...` is off limits to everyone but user `admin`.
#[derive(Debug)]
struct SecretTopics;

impl Authorization for SecretTopics {
    fn may_publish(&self, client: ClientRef<'_>, topic: &str) -> bool {
        !topic.starts_with("secret/") || client.username == Some("admin")
    }
    fn may_subscribe(&self, client: ClientRef<'_>, filter: &str) -> bool {
        !filter.starts_with("secret/") || client.username == Some("admin")
    }
    fn checks_deliveries(&self) -> bool {
        true
    }
    fn may_receive(&self, client: ClientRef<'_>, topic: &str) -> bool {
        !topic.starts_with("secret/") || client.username == Some("admin")
    }
}

/// Every record becomes durable at the next sequence number, when the test says so.
#[derive(Debug, Default)]
struct SlowJournal {
    records: Rc<RefCell<Vec<String>>>,
    next: u64,
}

impl Journal for SlowJournal {
    fn enabled(&self) -> bool {
        true
    }
    fn append(&mut self, record: &JournalRecord<'_>) -> Durability {
        self.records.borrow_mut().push(record.kind().to_string());
        self.next += 1;
        Durability::At(self.next)
    }
    fn barrier(&self) -> Durability {
        Durability::At(self.next)
    }
}

struct Client {
    conn: ConnId,
    protocol: ProtocolVersion,
    input: BytesMut,
}

fn shard(hooks: Hooks) -> Shard {
    let mut shard = Shard::new(
        0,
        1,
        Rc::new(Config::default()),
        Arc::new(Global::default()),
        Instant::now(),
    );
    shard.set_hooks(hooks);
    shard
}

/// A shard whose journal records the kinds it is given and makes nothing durable by itself.
fn shard_with_slow_journal() -> (Shard, Rc<RefCell<Vec<String>>>) {
    let records = Rc::new(RefCell::new(Vec::new()));
    let shard = shard(Hooks {
        admission: Box::new(DefaultAdmission::default()),
        authorization: Box::new(AllowAll),
        journal: Box::new(SlowJournal {
            records: Rc::clone(&records),
            next: 0,
        }),
    });
    (shard, records)
}

fn send(shard: &mut Shard, client: &Client, packet: Packet) {
    let mut bytes = BytesMut::new();
    packet.encode(client.protocol, &mut bytes).unwrap();
    shard.on_bytes(client.conn, bytes, Instant::now());
}

fn received(shard: &mut Shard, client: &mut Client) -> Vec<Packet> {
    if let Some(out) = shard.output(client.conn) {
        client.input.extend_from_slice(&std::mem::take(out));
    }
    let mut packets = Vec::new();
    while let Some(packet) = decode(&mut client.input, client.protocol, usize::MAX).unwrap() {
        packets.push(packet);
    }
    packets
}

fn connect(shard: &mut Shard, id: &str, user: Option<&str>, clean: bool) -> (Client, Packet) {
    let mut client = send_connect(shard, id, user, clean);
    let mut packets = received(shard, &mut client);
    // A persistent session's CONNACK waits for its journal records (the images written when
    // the session is installed and when the connection takes it): made durable one by one.
    let mut sequence = 0;
    while packets.is_empty() && !clean && sequence < 8 {
        sequence += 1;
        shard.on_durable(sequence, Instant::now());
        packets = received(shard, &mut client);
    }
    assert_eq!(packets.len(), 1, "one CONNACK: {packets:?}");
    (client, packets.remove(0))
}

/// A new connection sends an MQTT 5 CONNECT (a persistent session unless `clean`).
fn send_connect(shard: &mut Shard, id: &str, user: Option<&str>, clean: bool) -> Client {
    let conn = shard.on_accept(Instant::now()).unwrap();
    let client = Client {
        conn,
        protocol: ProtocolVersion::V5,
        input: BytesMut::new(),
    };
    let mut properties = Properties::default();
    if !clean {
        properties.session_expiry_interval = Some(300);
    }
    let connect = Connect {
        protocol: ProtocolVersion::V5,
        clean_start: clean,
        keep_alive: 0,
        client_id: MqttStr::from(id),
        will: None,
        username: user.map(MqttStr::from),
        password: None,
        properties,
    };
    send(shard, &client, Packet::Connect(Box::new(connect)));
    client
}

fn subscribe(shard: &mut Shard, client: &Client, filter: &str, qos: QoS) {
    send(
        shard,
        client,
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(MqttStr::from(filter), SubscriptionOptions::with_qos(qos))],
        }),
    );
}

fn publish(shard: &mut Shard, client: &Client, topic: &str, qos: QoS, id: u16, retain: bool) {
    send(
        shard,
        client,
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: MqttStr::from(topic),
            packet_id: id,
            properties: Properties::default(),
            payload: bytes::Bytes::from_static(b"x"),
        }),
    );
}

#[test]
fn admission_refusal_is_the_connacks_reason() {
    let mut shard = shard(Hooks {
        admission: Box::new(RefuseUser("mallory")),
        authorization: Box::new(AllowAll),
        journal: Box::new(NoJournal),
    });
    let (refused, connack) = connect(&mut shard, "a", Some("mallory"), true);
    assert!(
        matches!(&connack, Packet::ConnAck(c) if c.reason == ReasonCode::BadUserNameOrPassword),
        "{connack:?}"
    );
    // The runtime learns that, and why, the connection closes.
    assert_eq!(shard.read_state(refused.conn), super::ReadState::Close);
    let kill = shard.close_reason(refused.conn).expect("a close reason");
    assert_eq!(kill.reason, ReasonCode::BadUserNameOrPassword);
    assert!(!kill.graceful);
    let (_, connack) = connect(&mut shard, "b", Some("alice"), true);
    assert!(matches!(&connack, Packet::ConnAck(c) if c.reason == ReasonCode::Success));
    assert_eq!(shard.stats().connects_refused, 1);
}

#[test]
fn default_admission_refuses_unknown_authentication_methods() {
    let mut shard = shard(Hooks::default());
    let conn = shard.on_accept(Instant::now()).unwrap();
    let mut client = Client {
        conn,
        protocol: ProtocolVersion::V5,
        input: BytesMut::new(),
    };
    let properties = Properties::from(PropertyFields {
        authentication_method: Some(MqttStr::from("SCRAM-SHA-1")),
        ..PropertyFields::default()
    });
    let connect = Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 0,
        client_id: MqttStr::from("c"),
        will: None,
        username: None,
        password: None,
        properties,
    };
    send(&mut shard, &client, Packet::Connect(Box::new(connect)));
    let packets = received(&mut shard, &mut client);
    assert!(
        matches!(&packets[..], [Packet::ConnAck(c)] if c.reason == ReasonCode::BadAuthenticationMethod)
    );
    assert!(format!("{:?}", DefaultAdmission::default()).contains("methods"));
}

#[test]
fn authorization_guards_publish_subscribe_and_delivery() {
    let mut shard = shard(Hooks {
        admission: Box::new(DefaultAdmission::default()),
        authorization: Box::new(SecretTopics),
        journal: Box::new(NoJournal),
    });
    let (mut admin, _) = connect(&mut shard, "admin", Some("admin"), true);
    let (mut bob, _) = connect(&mut shard, "bob", Some("bob"), true);
    subscribe(&mut shard, &admin, "secret/#", QoS::AtLeastOnce);
    subscribe(&mut shard, &bob, "secret/#", QoS::AtLeastOnce);
    subscribe(&mut shard, &bob, "#", QoS::AtLeastOnce);
    let subacks: Vec<_> = received(&mut shard, &mut bob);
    assert!(
        matches!(&subacks[..], [Packet::SubAck(a), Packet::SubAck(b)]
            if a.reasons == [ReasonCode::NotAuthorized] && b.reasons == [ReasonCode::GrantedQos1]),
        "{subacks:?}"
    );
    received(&mut shard, &mut admin);
    // Bob may not publish there: PUBACK 0x87, nothing delivered.
    publish(&mut shard, &bob, "secret/plans", QoS::AtLeastOnce, 7, false);
    let acks = received(&mut shard, &mut bob);
    assert!(
        matches!(
            &acks[..],
            [Packet::PubAck(Ack {
                packet_id: 7,
                reason: ReasonCode::NotAuthorized,
                ..
            })]
        ),
        "{acks:?}"
    );
    assert!(received(&mut shard, &mut admin).is_empty());
    // The admin may; bob's `#` subscription must not leak it.
    publish(
        &mut shard,
        &admin,
        "secret/plans",
        QoS::AtLeastOnce,
        8,
        false,
    );
    let got = received(&mut shard, &mut admin);
    assert!(got
        .iter()
        .any(|p| matches!(p, Packet::Publish(p) if p.topic == "secret/plans")));
    assert!(received(&mut shard, &mut bob).is_empty());
    assert_eq!(shard.stats().not_authorized, 3);
}

#[test]
fn acknowledgements_wait_for_the_journal_in_order() {
    let (mut shard, records) = shard_with_slow_journal();
    let (mut client, _) = connect(&mut shard, "p", None, false);
    // Installed, then taken by the connection: two images (`connect` made them durable),
    // each closed by its end marker.
    assert_eq!(
        *records.borrow(),
        [
            "session-started",
            "image-complete",
            "session-started",
            "image-complete"
        ]
    );
    subscribe(&mut shard, &client, "t/#", QoS::AtLeastOnce);
    publish(&mut shard, &client, "t/a", QoS::AtLeastOnce, 1, false);
    publish(&mut shard, &client, "t/r", QoS::AtLeastOnce, 2, true);
    // A PINGRESP has nothing to wait for; acknowledgements do, in order.
    send(&mut shard, &client, Packet::PingReq);
    let early = received(&mut shard, &mut client);
    assert!(
        early
            .iter()
            .all(|p| !matches!(p, Packet::SubAck(_) | Packet::PubAck(_))),
        "nothing acknowledged before the journal: {early:?}"
    );
    assert_eq!(
        *records.borrow(),
        [
            "session-started",
            "image-complete",
            "session-started",
            "image-complete",
            "subscribed",
            // The client receives its own messages: each delivery is recorded.
            "in-flight",
            "retained-set",
            "in-flight"
        ]
    );
    // Durable up to the subscription: the SUBACK is due, but the connection's output also
    // holds the deliveries to it (records 6 and 8), so nothing leaves yet.
    shard.on_durable(5, Instant::now());
    let none = received(&mut shard, &mut client);
    assert!(none.is_empty(), "{none:?}");
    shard.on_durable(7, Instant::now());
    let none = received(&mut shard, &mut client);
    assert!(none.is_empty(), "{none:?}");
    // Up to the last record: the SUBACK, both deliveries (a server may deliver before its
    // SUBACK), both PUBACKs in order.
    shard.on_durable(8, Instant::now());
    let packets = received(&mut shard, &mut client);
    assert!(
        packets.iter().any(|p| matches!(p, Packet::SubAck(_))),
        "{packets:?}"
    );
    let publishes = packets
        .iter()
        .filter(|p| matches!(p, Packet::Publish(_)))
        .count();
    assert_eq!(publishes, 2, "{packets:?}");
    let acks: Vec<u16> = packets
        .into_iter()
        .filter_map(|p| match p {
            Packet::PubAck(ack) => Some(ack.packet_id),
            _ => None,
        })
        .collect();
    assert_eq!(acks, [1, 2]);
}

#[test]
fn a_full_data_directory_refuses_new_persistent_work_with_quota_exceeded() {
    let (mut shard, records) = shard_with_slow_journal();
    // Connected before the disk filled up: a persistent and a clean session.
    let (mut persistent, _) = connect(&mut shard, "p", None, false);
    shard.on_durable(u64::MAX, Instant::now());
    received(&mut shard, &mut persistent);
    let (mut clean, _) = connect(&mut shard, "c", None, true);
    shard.set_storage_full(true);
    let recorded = records.borrow().len();

    // A new persistent session: CONNACK 0x97; a clean one is still welcome.
    let (_, connack) = connect(&mut shard, "p2", None, false);
    assert!(
        matches!(&connack, Packet::ConnAck(c) if c.reason == ReasonCode::QuotaExceeded),
        "{connack:?}"
    );
    let (_, connack) = connect(&mut shard, "c2", None, true);
    assert!(matches!(&connack, Packet::ConnAck(c) if c.reason == ReasonCode::Success));

    // QoS 1/2 publishes: refused in their acknowledgement (MQTT 5); QoS 0 goes on.
    publish(&mut shard, &clean, "t/a", QoS::AtLeastOnce, 7, false);
    publish(&mut shard, &clean, "t/b", QoS::ExactlyOnce, 8, false);
    publish(&mut shard, &clean, "t/c", QoS::AtMostOnce, 0, false);
    let acks = received(&mut shard, &mut clean);
    assert!(
        matches!(&acks[..], [Packet::PubAck(a), Packet::PubRec(b)]
            if a.reason == ReasonCode::QuotaExceeded && b.reason == ReasonCode::QuotaExceeded),
        "{acks:?}"
    );
    // A persistent session's subscription: refused; nothing was recorded meanwhile.
    subscribe(&mut shard, &persistent, "t/#", QoS::AtLeastOnce);
    let suback = received(&mut shard, &mut persistent);
    assert!(
        matches!(&suback[..], [Packet::SubAck(s)] if s.reasons == [ReasonCode::QuotaExceeded]),
        "{suback:?}"
    );
    assert_eq!(records.borrow().len(), recorded, "{:?}", records.borrow());

    // Space again: persistent work is accepted.
    shard.set_storage_full(false);
    subscribe(&mut shard, &persistent, "t/#", QoS::AtLeastOnce);
    shard.on_durable(u64::MAX, Instant::now());
    let suback = received(&mut shard, &mut persistent);
    assert!(
        matches!(&suback[..], [Packet::SubAck(s)] if s.reasons == [ReasonCode::GrantedQos1]),
        "{suback:?}"
    );
}

#[test]
/// Each connection has at most one live entry on the timing wheel, however many packets and
/// ticks go by (it once had one for the connect timeout and one for keep-alive, both
/// rescheduling forever).
fn one_timer_entry_per_connection() {
    let mut shard = shard(Hooks::default());
    let start = Instant::now();
    let conn = shard.on_accept(start).unwrap();
    let mut client = Client {
        conn,
        protocol: ProtocolVersion::V5,
        input: BytesMut::new(),
    };
    let connect = Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 2,
        client_id: MqttStr::from("ka"),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    };
    send(&mut shard, &client, Packet::Connect(Box::new(connect)));
    let entries = |shard: &Shard| {
        shard
            .wheel
            .entries()
            .filter(|e| matches!(e, super::WheelEntry::Conn { conn: c } if *c == conn))
            .count()
    };
    for second in 1..=30u64 {
        let now = start + std::time::Duration::from_millis(second * 1000);
        let mut ping = BytesMut::new();
        Packet::PingReq.encode(client.protocol, &mut ping).unwrap();
        shard.on_bytes(conn, ping, now);
        shard.on_tick(now);
        let live = shard.conns.get(conn).map(|c| c.timer_bucket);
        assert_ne!(live, None, "a pinging client stays connected");
        assert!(entries(&shard) <= 2, "{} wheel entries", entries(&shard));
    }
    received(&mut shard, &mut client);
    // Silent from now on: closed after 1.5 keep-alive periods (3 s), checked on the wheel.
    let silent = start + std::time::Duration::from_secs(30);
    shard.on_tick(silent + std::time::Duration::from_secs(2));
    assert!(shard.conns.get(conn).is_some_and(|c| c.kill.is_none()));
    shard.on_tick(silent + std::time::Duration::from_secs(4));
    assert!(shard.conns.get(conn).is_some_and(|c| c.kill.is_some()));
}

/// A clean session's QoS 2 exchange ends with PUBCOMP success (a journal-only condition once
/// answered it with 0x92; MQTT.js 5 reported it, rumqttc ignores the reason).
#[test]
fn an_inbound_qos2_exchange_completes_without_a_journal() {
    let mut shard = shard(Hooks::default());
    let (mut client, _) = connect(&mut shard, "q2", None, true);
    publish(&mut shard, &client, "t/q2", QoS::ExactlyOnce, 7, false);
    let rec = received(&mut shard, &mut client);
    assert!(
        matches!(&rec[..], [Packet::PubRec(a)] if a.packet_id == 7),
        "{rec:?}"
    );
    send(&mut shard, &client, Packet::PubRel(Ack::new(7)));
    let comp = received(&mut shard, &mut client);
    assert!(
        matches!(&comp[..], [Packet::PubComp(a)] if a.packet_id == 7 && a.reason == ReasonCode::Success),
        "{comp:?}"
    );
}

/// A connection taken over while its CONNACK still waits for the journal is not closed at
/// once (the CONNACK would be lost, or the DISCONNECT go out without it) nor flushed before
/// its records are durable: it waits, then gets its CONNACK and the DISCONNECT, then closes.
#[test]
fn a_connection_taken_over_while_its_output_is_held_closes_after_the_journal() {
    let (mut shard, _) = shard_with_slow_journal();
    let (_first, _) = connect(&mut shard, "dev", None, false);
    let mut second = send_connect(&mut shard, "dev", None, false);
    assert!(received(&mut shard, &mut second).is_empty(), "CONNACK held");
    let mut third = send_connect(&mut shard, "dev", None, false);
    assert_eq!(shard.read_state(second.conn), super::ReadState::Wait);
    assert!(received(&mut shard, &mut second).is_empty(), "still held");
    shard.on_durable(1_000, Instant::now());
    let packets = received(&mut shard, &mut second);
    assert!(
        matches!(packets.first(), Some(Packet::ConnAck(_))),
        "{packets:?}"
    );
    assert!(
        matches!(packets.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::SessionTakenOver),
        "{packets:?}"
    );
    assert_eq!(shard.read_state(second.conn), super::ReadState::Close);
    let packets = received(&mut shard, &mut third);
    assert!(
        matches!(packets.first(), Some(Packet::ConnAck(_))),
        "{packets:?}"
    );
}

/// A recovered session whose client had disconnected keeps counting down its expiry from the
/// disconnection, the downtime included: one offline for 50 of its 60 s expires 10 s after
/// the restart, one offline for 70 s at once.
#[test]
fn a_recovered_session_expires_counting_the_downtime() {
    use crate::store::recover::RecoveredSession;
    use std::time::Duration;
    let mut shard = shard(Hooks::default());
    let start = Instant::now();
    let unix_ms = 1_800_000_000_000;
    let session = |client_id: &str, offline_secs: u64| RecoveredSession {
        client_id: client_id.into(),
        generation: 1,
        source_shard: 0,
        started: true,
        username: None,
        protocol: 5,
        expiry_secs: Some(60),
        disconnected_at_ms: Some(unix_ms - 1000 * offline_secs),
        will: None,
        subscriptions: Default::default(),
        queue: Default::default(),
        inflight: Default::default(),
        inbound_qos2: Default::default(),
    };
    shard.install_recovered(
        vec![session("fifty", 50), session("seventy", 70)],
        Vec::new(),
        start,
        unix_ms,
    );
    shard.on_tick(start + Duration::from_secs(2));
    assert_eq!(
        shard.stats().sessions_expired,
        1,
        "the one offline for 70 s"
    );
    shard.on_tick(start + Duration::from_secs(8));
    assert_eq!(shard.stats().sessions_expired, 1);
    shard.on_tick(start + Duration::from_secs(12));
    assert_eq!(shard.stats().sessions_expired, 2, "10 s after the restart");
}
