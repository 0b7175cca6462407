//! MQTT 5.0 behaviour end to end: CONNACK properties, session and message expiry, topic
//! aliases both ways, flow control both ways, maximum packet size, subscription options and
//! identifiers, shared subscriptions, request/response properties, reason codes, will delay,
//! server DISCONNECTs, enhanced authentication and 3.1.1 interoperability.
//!
//! The third-party `rumqttc::v5` client is used wherever it can express the case; raw bytes
//! (our codec, protocol 5) where it cannot (aliases it would resolve itself, withheld
//! acknowledgements, server DISCONNECTs that rumqttc 0.24 cannot parse, deliberate protocol
//! violations). Publisher and subscriber sit on different shards wherever routing matters.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    ack_publish, connect_packet, publish_packet, raw_publish, v5_session_expiry, will, Broker,
    Client, ClientV5, Raw, Recv, Sync, QUIET, TIMEOUT,
};
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, Filter, PubAckReason, PublishProperties, RetainForwardRule,
    SubscribeProperties,
};
use rumqttc::v5::mqttbytes::QoS as Q5;
use shardmq::codec::{
    Ack, ConnAck, Connect, Disconnect, MqttStr, Packet, Properties, PropertyFields,
    ProtocolVersion, QoS, ReasonCode,
};
use shardmq::config::SharedStrategy;

// ----- broker -------------------------------------------------------------------------------

/// The test's broker ([`Broker`]), stopped on a background thread when the test ends: its
/// shutdown (two 400 ms grace periods) then overlaps the next test instead of adding to the
/// file's wall time. After a failure it stops in place, like the plain guard.
struct TestBroker(Option<Broker>);

fn start_broker() -> TestBroker {
    start_broker_with(|_| {})
}

fn start_broker_with(tweak: impl FnOnce(&mut shardmq::config::Config)) -> TestBroker {
    TestBroker(Some(Broker::start_with(tweak)))
}

impl Deref for TestBroker {
    type Target = Broker;
    fn deref(&self) -> &Broker {
        self.0.as_ref().expect("broker")
    }
}

impl DerefMut for TestBroker {
    fn deref_mut(&mut self) -> &mut Broker {
        self.0.as_mut().expect("broker")
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let Some(broker) = self.0.take() else { return };
        if std::thread::panicking() {
            drop(broker);
        } else {
            std::thread::spawn(move || drop(broker));
        }
    }
}

// ----- raw MQTT 5.0 helpers ------------------------------------------------------------------

/// An MQTT 5.0 CONNECT, keep-alive off, no properties.
fn v5_connect(client_id: &str, clean_start: bool) -> Connect {
    let mut connect = connect_packet(client_id, clean_start);
    connect.protocol = ProtocolVersion::V5;
    connect
}

/// A raw MQTT 5.0 client (clean start) with `tweak` applied to its CONNECT; asserts success.
fn raw_v5(addr: SocketAddr, client_id: &str, tweak: impl FnOnce(&mut Connect)) -> (Raw, ConnAck) {
    let mut connect = v5_connect(client_id, true);
    tweak(&mut connect);
    Raw::connect_with(addr, connect)
}

/// A PUBLISH with properties.
fn publish_v5(
    topic: &str,
    payload: &[u8],
    qos: QoS,
    packet_id: u16,
    properties: Properties,
) -> Packet {
    let mut publish = publish_packet(topic, payload, qos, false, packet_id);
    publish.properties = properties;
    Packet::Publish(publish)
}

fn recv_puback(raw: &mut Raw) -> Ack {
    match raw.recv() {
        Packet::PubAck(ack) => ack,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

fn recv_pubrec(raw: &mut Raw) -> Ack {
    match raw.recv() {
        Packet::PubRec(ack) => ack,
        other => panic!("expected PUBREC, got {other:?}"),
    }
}

/// Waits for the broker to close the connection and asserts that its last packet was a
/// DISCONNECT with `reason`. Returns the packets that came before it.
fn expect_server_disconnect(raw: &mut Raw, reason: ReasonCode, within: Duration) -> Vec<Packet> {
    let mut packets = raw.expect_closed(within);
    match packets.pop() {
        Some(Packet::Disconnect(disconnect)) => assert_eq!(
            disconnect.reason,
            reason,
            "DISCONNECT 0x{:02X} ({}), expected 0x{:02X}",
            disconnect.reason.as_u8(),
            disconnect.reason.description(),
            reason.as_u8()
        ),
        other => panic!(
            "expected DISCONNECT 0x{:02X} before the close, got {other:?}",
            reason.as_u8()
        ),
    }
    packets
}

/// A 3.1.1 subscriber on `addr` watching `filter` at QoS 1.
fn watcher(addr: SocketAddr, client_id: &str, filter: &str) -> Raw {
    let (mut raw, _) = Raw::connect(addr, client_id, true);
    raw.subscribe(1, filter, QoS::AtLeastOnce);
    raw
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sub_props(id: usize) -> SubscribeProperties {
    SubscribeProperties {
        id: Some(id),
        user_properties: Vec::new(),
    }
}

// ----- CONNACK ---------------------------------------------------------------------------------

/// CONNACK to a 5.0 client carries the configured Receive Maximum, Topic Alias Maximum and
/// Maximum Packet Size; an assigned client identifier when the id was empty (only then); and
/// Response Information only when asked for with request_response_information = 1.
#[tokio::test]
async fn connack_properties() {
    let broker = start_broker_with(|config| {
        config.receive_maximum = 77;
        config.topic_alias_maximum = 33;
        config.max_packet_size = 50_000;
    });

    let (_anon0, connack) = ClientV5::connect(broker.shard(0), "", |_| {}).await;
    let props = connack.properties.expect("CONNACK properties");
    assert_eq!(props.receive_max, Some(77));
    assert_eq!(props.topic_alias_max, Some(33));
    assert_eq!(props.max_packet_size, Some(50_000));
    assert_eq!(props.response_information, None, "not requested");
    let first_id = props
        .assigned_client_identifier
        .expect("an empty client id gets an assigned identifier");
    assert!(!first_id.is_empty());

    let (_anon1, connack) = ClientV5::connect(broker.shard(1), "", |_| {}).await;
    let second_id = connack
        .properties
        .and_then(|p| p.assigned_client_identifier)
        .expect("assigned identifier");
    assert_ne!(first_id, second_id, "assigned identifiers are unique");

    let (_asker, connack) = ClientV5::connect(broker.shard(1), "ca-asker", |o| {
        o.set_request_response_info(Some(1));
    })
    .await;
    let props = connack.properties.expect("CONNACK properties");
    assert_eq!(
        props.assigned_client_identifier, None,
        "the client chose its id"
    );
    let info = props
        .response_information
        .expect("request_response_information = 1 gets response information");
    assert!(!info.is_empty());

    let (_declined, connack) = ClientV5::connect(broker.shard(0), "ca-declined", |o| {
        o.set_request_response_info(Some(0));
    })
    .await;
    let props = connack.properties.expect("CONNACK properties");
    assert_eq!(
        props.response_information, None,
        "request_response_information = 0"
    );
    assert_eq!(props.assigned_client_identifier, None);

    // The defaults.
    let defaults = start_broker();
    let (_client, connack) = ClientV5::connect(defaults.shard(0), "ca-defaults", |_| {}).await;
    let props = connack.properties.expect("CONNACK properties");
    assert_eq!(props.receive_max, Some(1024));
    assert_eq!(props.topic_alias_max, Some(1024));
    assert_eq!(props.max_packet_size, Some(1 << 20));
}

// ----- session expiry ------------------------------------------------------------------------

/// Session expiry interval 0 (the default) ends the session with the connection, even with
/// clean start = 0: the subscription is gone everywhere and a reconnect has session present 0.
#[tokio::test]
async fn session_expiry_zero_ends_the_session_at_disconnect() {
    let broker = start_broker();
    let mut sync = Sync::new(&broker);
    let (sub, connack) = ClientV5::connect(broker.shard(0), "se0-sub", |o| {
        o.set_clean_start(false);
    })
    .await;
    assert!(!connack.session_present);
    sub.subscribe("se0/t", Q5::AtLeastOnce).await;
    sub.disconnect().await;
    drop(sub);
    sync.settle();

    let (publisher, _) = ClientV5::connect(broker.shard(1), "se0-pub", |_| {}).await;
    assert_eq!(
        publisher
            .publish("se0/t", Q5::AtLeastOnce, false, b"after")
            .await,
        Some(PubAckReason::NoMatchingSubscribers),
        "the subscription ended with the session"
    );
    let (sub, connack) = ClientV5::connect(broker.shard(1), "se0-sub", |o| {
        o.set_clean_start(false);
    })
    .await;
    assert!(!connack.session_present, "no session survived");
    sub.expect_no_publish(QUIET).await;
}

/// A non-zero session expiry keeps subscriptions and queued QoS 1 messages: the reconnect
/// (on the other shard) has session present 1, gets the queued message, and the subscription
/// still routes live messages from either shard.
#[tokio::test]
async fn session_expiry_keeps_subscriptions_and_queued_messages() {
    let broker = start_broker();
    let mut sync = Sync::new(&broker);
    let persistent = |o: &mut rumqttc::v5::MqttOptions| {
        o.set_clean_start(false);
        v5_session_expiry(o, 60);
    };
    let (sub, connack) = ClientV5::connect(broker.shard(0), "se60-sub", persistent).await;
    assert!(!connack.session_present);
    sub.subscribe("se60/t", Q5::AtLeastOnce).await;
    sub.disconnect().await;
    drop(sub);
    sync.settle();

    let (pub1, _) = ClientV5::connect(broker.shard(1), "se60-pub1", |_| {}).await;
    assert_eq!(
        pub1.publish("se60/t", Q5::AtLeastOnce, false, b"queued")
            .await,
        Some(PubAckReason::Success),
        "an offline session's subscription still matches"
    );

    let (sub, connack) = ClientV5::connect(broker.shard(1), "se60-sub", persistent).await;
    assert!(connack.session_present, "the session was kept");
    let got = sub.recv_publish().await;
    assert_eq!(&got.topic[..], b"se60/t");
    assert_eq!(&got.payload[..], b"queued");
    assert_eq!(got.qos, Q5::AtLeastOnce);
    sub.expect_no_publish(QUIET).await;

    sync.settle();
    let (pub0, _) = ClientV5::connect(broker.shard(0), "se60-pub0", |_| {}).await;
    pub0.publish("se60/t", Q5::AtLeastOnce, false, b"live-0")
        .await;
    pub1.publish("se60/t", Q5::AtLeastOnce, false, b"live-1")
        .await;
    let mut live = vec![
        text(&sub.recv_publish().await.payload),
        text(&sub.recv_publish().await.payload),
    ];
    live.sort();
    assert_eq!(live, ["live-0", "live-1"]);
}

/// Once the session expiry interval (1 s) has elapsed offline, the session is gone: its
/// subscription no longer matches and a reconnect has session present 0.
#[test]
fn session_is_gone_after_its_expiry_interval() {
    let broker = start_broker();
    let mut sync = Sync::new(&broker);
    let (mut sub, _) = raw_v5(broker.shard(0), "sexp-sub", |c| {
        c.properties.session_expiry_interval = Some(1);
    });
    sub.subscribe(1, "sexp/t", QoS::AtLeastOnce);
    sub.disconnect();
    std::thread::sleep(Duration::from_millis(2000));
    sync.settle();

    let (mut publisher, _) = raw_v5(broker.shard(1), "sexp-pub", |_| {});
    publisher.send(publish_v5(
        "sexp/t",
        b"late",
        QoS::AtLeastOnce,
        1,
        Properties::default(),
    ));
    assert_eq!(
        recv_puback(&mut publisher).reason,
        ReasonCode::NoMatchingSubscribers,
        "the expired session's subscription is gone"
    );
    let (mut sub, connack) = Raw::connect_with(broker.shard(0), v5_connect("sexp-sub", false));
    assert!(!connack.session_present, "the session expired");
    sub.expect_silence(QUIET);
}

/// The session must survive for its whole expiry interval. Four clients with a 2 s expiry
/// disconnect 250 ms apart (so their disconnects fall at different points of a wall-clock
/// second) and each reconnects 1.6 s after its own disconnect: every session is still there.
#[test]

fn session_is_kept_for_its_whole_expiry_interval() {
    let broker = start_broker();
    let start = Instant::now();
    let mut disconnected = Vec::new();
    let clients: Vec<Raw> = (0..4)
        .map(|i| {
            raw_v5(broker.shard(i % 2), &format!("sfull-{i}"), |c| {
                c.properties.session_expiry_interval = Some(2);
            })
            .0
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        let at = start + Duration::from_millis(250 * i as u64);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        disconnected.push(Instant::now());
        client.disconnect();
    }
    let mut lost = Vec::new();
    for (i, at) in disconnected.into_iter().enumerate() {
        let reconnect = at + Duration::from_millis(1600);
        std::thread::sleep(reconnect.saturating_duration_since(Instant::now()));
        let mut connect = v5_connect(&format!("sfull-{i}"), false);
        connect.properties.session_expiry_interval = Some(2);
        let (_client, connack) = Raw::connect_with(broker.shard(i % 2), connect);
        if !connack.session_present {
            lost.push(i);
        }
    }
    assert!(
        lost.is_empty(),
        "sessions {lost:?} ended less than 1.6 s into their 2 s expiry interval"
    );
}

/// CONNECT without a session expiry interval, then DISCONNECT setting one: a protocol error.
/// The server answers DISCONNECT 0x82 and, the DISCONNECT being invalid, publishes the will.
#[test]
fn disconnect_cannot_give_a_session_an_expiry_it_did_not_have() {
    let broker = start_broker();
    let mut watch = watcher(broker.shard(1), "sezero-watch", "sezero/will");
    let (mut client, _) = raw_v5(broker.shard(0), "sezero", |c| {
        c.will = Some(will(
            "sezero/will",
            b"bad-disconnect",
            QoS::AtLeastOnce,
            false,
        ));
    });
    let mut disconnect = Disconnect::new(ReasonCode::Success);
    disconnect.properties.session_expiry_interval = Some(30);
    client.send(Packet::Disconnect(disconnect));
    expect_server_disconnect(&mut client, ReasonCode::ProtocolError, TIMEOUT);
    let got = watch.recv_publish();
    assert_eq!(&got.payload[..], b"bad-disconnect");
    ack_publish(&mut watch, &got);
    let (_client, connack) = Raw::connect_with(broker.shard(0), v5_connect("sezero", false));
    assert!(!connack.session_present);
}

/// DISCONNECT with session expiry 0 ends a session that CONNECT made persistent.
#[test]
fn disconnect_with_expiry_zero_ends_a_persistent_session() {
    let broker = start_broker();
    let (mut client, _) = raw_v5(broker.shard(0), "sedz", |c| {
        c.properties.session_expiry_interval = Some(60);
    });
    client.subscribe(1, "sedz/t", QoS::AtLeastOnce);
    let mut disconnect = Disconnect::new(ReasonCode::Success);
    disconnect.properties.session_expiry_interval = Some(0);
    client.send(Packet::Disconnect(disconnect));
    let packets = client.expect_closed(TIMEOUT);
    assert!(packets.is_empty(), "a valid DISCONNECT: {packets:?}");

    // Control: the same flow with a normal DISCONNECT keeps the session.
    let (kept, _) = raw_v5(broker.shard(0), "sedz-control", |c| {
        c.properties.session_expiry_interval = Some(60);
    });
    kept.disconnect();

    let mut connect = v5_connect("sedz", false);
    connect.properties.session_expiry_interval = Some(60);
    let (_client, connack) = Raw::connect_with(broker.shard(1), connect);
    assert!(!connack.session_present, "expiry 0 at DISCONNECT ended it");
    let mut connect = v5_connect("sedz-control", false);
    connect.properties.session_expiry_interval = Some(60);
    let (_kept, connack) = Raw::connect_with(broker.shard(1), connect);
    assert!(connack.session_present, "control: the session was kept");
}

/// Clean start = 1 discards an existing session: session present 0, its queued message and
/// its subscription are gone.
#[tokio::test]
async fn clean_start_discards_the_existing_session() {
    let broker = start_broker();
    let mut sync = Sync::new(&broker);
    let persistent = |o: &mut rumqttc::v5::MqttOptions| {
        o.set_clean_start(false);
        v5_session_expiry(o, 60);
    };
    let (sub, _) = ClientV5::connect(broker.shard(0), "cs-sub", persistent).await;
    sub.subscribe("cs/t", Q5::AtLeastOnce).await;
    sub.disconnect().await;
    drop(sub);
    let (publisher, _) = ClientV5::connect(broker.shard(1), "cs-pub", |_| {}).await;
    publisher
        .publish("cs/t", Q5::AtLeastOnce, false, b"queued")
        .await;

    let (sub, connack) = ClientV5::connect(broker.shard(1), "cs-sub", |o| {
        o.set_clean_start(true);
        v5_session_expiry(o, 60);
    })
    .await;
    assert!(!connack.session_present, "clean start = 1 discards it");
    sub.expect_no_publish(QUIET).await;
    sync.settle();
    assert_eq!(
        publisher
            .publish("cs/t", Q5::AtLeastOnce, false, b"new")
            .await,
        Some(PubAckReason::NoMatchingSubscribers),
        "the old subscription went with the old session"
    );
    sub.expect_no_publish(QUIET).await;
}

// ----- message expiry ------------------------------------------------------------------------

/// Queued for an offline session: a message with expiry 2 s is not delivered after 3 s
/// offline; one with 30 s is, with the remaining interval (below 30, above 0).
#[tokio::test]
async fn message_expiry_for_queued_messages() {
    let broker = start_broker();
    let persistent = |o: &mut rumqttc::v5::MqttOptions| {
        o.set_clean_start(false);
        v5_session_expiry(o, 60);
    };
    let (sub, _) = ClientV5::connect(broker.shard(0), "mx-sub", persistent).await;
    sub.subscribe("mx/#", Q5::AtLeastOnce).await;
    sub.disconnect().await;
    drop(sub);

    let (publisher, _) = ClientV5::connect(broker.shard(1), "mx-pub", |_| {}).await;
    for (topic, expiry) in [("mx/short", 2), ("mx/long", 30)] {
        let properties = PublishProperties {
            message_expiry_interval: Some(expiry),
            ..Default::default()
        };
        publisher
            .publish_with(
                topic,
                Q5::AtLeastOnce,
                false,
                topic.as_bytes(),
                Some(properties),
            )
            .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (sub, connack) = ClientV5::connect(broker.shard(0), "mx-sub", persistent).await;
    assert!(connack.session_present);
    let got = sub.recv_publish().await;
    assert_eq!(
        &got.topic[..],
        b"mx/long",
        "the expired message is not delivered"
    );
    let remaining = got
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
        .expect("message expiry interval forwarded");
    assert!(
        remaining > 0 && remaining < 30,
        "remaining interval {remaining}, expected 0 < x < 30 after 3 s waiting"
    );
    sub.expect_no_publish(QUIET).await;
}

/// A retained message's expiry interval keeps counting down for every later subscriber:
/// a subscriber arriving 1.2 s after another gets a smaller remaining interval.
#[test]

fn retained_message_expiry_counts_down_for_later_subscribers() {
    let broker = start_broker();
    let (mut publisher, _) = raw_v5(broker.shard(1), "rx-pub", |_| {});
    let properties = Properties::from(PropertyFields {
        message_expiry_interval: Some(30),
        ..PropertyFields::default()
    });
    let mut publish = publish_packet("rx/t", b"kept", QoS::AtLeastOnce, true, 1);
    publish.properties = properties;
    publisher.send(Packet::Publish(publish));
    recv_puback(&mut publisher);

    let mut remaining = Vec::new();
    for (i, wait) in [0u64, 1200].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(wait));
        let (mut sub, _) = raw_v5(broker.shard(0), &format!("rx-sub-{i}"), |_| {});
        sub.subscribe(1, "rx/t", QoS::AtLeastOnce);
        let got = sub.recv_publish();
        assert!(got.retain);
        remaining.push(
            got.properties
                .message_expiry_interval
                .expect("message expiry interval"),
        );
        ack_publish(&mut sub, &got);
    }
    assert!(remaining[0] <= 30);
    assert!(
        remaining[1] < remaining[0],
        "1.2 s later the remaining interval must be smaller: {remaining:?}"
    );
}

// ----- topic aliases -------------------------------------------------------------------------

/// Inbound aliases: a PUBLISH with topic and alias defines it, one with an empty topic uses
/// it, a new topic with the same alias redefines it. The subscriber (rumqttc, other shard)
/// gets every message on its real topic.
#[tokio::test]
async fn inbound_topic_alias_is_resolved() {
    let broker = start_broker();
    let (sub, _) = ClientV5::connect(broker.shard(1), "tai-sub", |_| {}).await;
    sub.subscribe("tai/#", Q5::AtLeastOnce).await;

    let (mut publisher, _) = raw_v5(broker.shard(0), "tai-pub", |_| {});
    let sends = [
        ("tai/a", "one"),
        ("", "two"),
        ("tai/b", "three"),
        ("", "four"),
    ];
    for (i, (topic, payload)) in sends.into_iter().enumerate() {
        let properties = Properties::from(PropertyFields {
            topic_alias: Some(1),
            ..PropertyFields::default()
        });
        let id = i as u16 + 1;
        publisher.send(publish_v5(
            topic,
            payload.as_bytes(),
            QoS::AtLeastOnce,
            id,
            properties,
        ));
        let ack = recv_puback(&mut publisher);
        assert_eq!((ack.packet_id, ack.reason), (id, ReasonCode::Success));
    }
    let expected = [
        ("tai/a", "one"),
        ("tai/a", "two"),
        ("tai/b", "three"),
        ("tai/b", "four"),
    ];
    for (topic, payload) in expected {
        let got = sub.recv_publish().await;
        assert_eq!(
            (text(&got.topic), text(&got.payload)),
            (topic.into(), payload.into())
        );
        assert_eq!(got.properties.and_then(|p| p.topic_alias), None);
    }
    sub.expect_no_publish(QUIET).await;
}

/// An alias above the Topic Alias Maximum (config 10; 10 itself is fine) gets DISCONNECT 0x94.
#[test]
fn inbound_topic_alias_above_maximum_is_refused() {
    let broker = start_broker_with(|config| config.topic_alias_maximum = 10);
    let (mut client, connack) = raw_v5(broker.shard(0), "tamax", |_| {});
    assert_eq!(connack.properties.topic_alias_maximum, Some(10));
    let at_max = Properties::from(PropertyFields {
        topic_alias: Some(10),
        ..PropertyFields::default()
    });
    client.send(publish_v5("tamax/t", b"ok", QoS::AtLeastOnce, 1, at_max));
    recv_puback(&mut client);
    let above = Properties::from(PropertyFields {
        topic_alias: Some(11),
        ..PropertyFields::default()
    });
    client.send(publish_v5("tamax/t", b"no", QoS::AtLeastOnce, 2, above));
    expect_server_disconnect(&mut client, ReasonCode::TopicAliasInvalid, TIMEOUT);
}

/// An empty topic with an alias the client never defined: DISCONNECT 0x82.
#[test]
fn inbound_unknown_topic_alias_is_a_protocol_error() {
    let broker = start_broker();
    let (mut watch, _) = raw_v5(broker.shard(1), "taunk-watch", |_| {});
    watch.subscribe(1, "#", QoS::AtLeastOnce);
    let (mut client, _) = raw_v5(broker.shard(0), "taunk", |_| {});
    let properties = Properties::from(PropertyFields {
        topic_alias: Some(3),
        ..PropertyFields::default()
    });
    client.send(publish_v5("", b"where?", QoS::AtLeastOnce, 1, properties));
    expect_server_disconnect(&mut client, ReasonCode::ProtocolError, TIMEOUT);
    watch.expect_silence(QUIET);
}

/// Outbound aliases: a subscriber that accepts 5 aliases gets the first message on a topic
/// with topic name and alias, later ones with an empty topic name and the same alias; a
/// different topic gets a different alias, and no alias is ever above 5.
#[test]
fn outbound_topic_aliases_within_the_client_maximum() {
    let broker = start_broker();
    let (mut sub, _) = raw_v5(broker.shard(0), "tao-sub", |c| {
        c.properties.topic_alias_maximum = Some(5);
    });
    sub.subscribe(1, "tao/#", QoS::AtLeastOnce);
    let (mut publisher, _) = raw_v5(broker.shard(1), "tao-pub", |_| {});
    let topics = [
        "tao/x", "tao/x", "tao/y", "tao/x", "tao/y", "tao/0", "tao/1", "tao/2", "tao/3", "tao/4",
        "tao/x",
    ];
    for (i, topic) in topics.iter().enumerate() {
        publisher.publish(
            topic,
            format!("{i}").as_bytes(),
            QoS::AtLeastOnce,
            false,
            i as u16 + 1,
        );
    }
    let mut known: BTreeMap<u16, String> = BTreeMap::new();
    let mut received = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        let got = sub.recv_publish();
        ack_publish(&mut sub, &got);
        assert_eq!(text(&got.payload), i.to_string());
        let resolved = match got.properties.topic_alias {
            Some(alias) => {
                assert!(
                    (1..=5).contains(&alias),
                    "alias {alias} above the client's 5"
                );
                if got.topic.is_empty() {
                    known
                        .get(&alias)
                        .cloned()
                        .expect("an alias used before it is defined")
                } else {
                    known.insert(alias, got.topic.as_str().to_owned());
                    got.topic.as_str().to_owned()
                }
            }
            None => got.topic.as_str().to_owned(),
        };
        assert_eq!(resolved, *topic);
        received.push((got.topic.as_str().to_owned(), got.properties.topic_alias));
    }
    // First message on tao/x: full topic and an alias; the second: empty topic, same alias.
    let alias_x = received[0].1.expect("tao/x gets an alias");
    assert_eq!(received[0].0, "tao/x");
    assert_eq!(received[1], (String::new(), Some(alias_x)));
    let alias_y = received[2].1.expect("tao/y gets an alias");
    assert_ne!(alias_x, alias_y);
    assert_eq!(received[3], (String::new(), Some(alias_x)));
    assert_eq!(received[4], (String::new(), Some(alias_y)));
}

// ----- flow control --------------------------------------------------------------------------

/// The broker never has more unacknowledged QoS 1 PUBLISHes out to a client than the client's
/// Receive Maximum (2): exactly 2 arrive, then one more per PUBACK.
#[test]
fn outbound_receive_maximum_is_respected() {
    let broker = start_broker();
    let (mut sub, _) = raw_v5(broker.shard(0), "rm-sub", |c| {
        c.properties.receive_maximum = Some(2);
    });
    sub.subscribe(1, "rm/t", QoS::AtLeastOnce);
    let (mut publisher, _) = raw_v5(broker.shard(1), "rm-pub", |_| {});
    for i in 0..5u16 {
        publisher.publish(
            "rm/t",
            format!("{i}").as_bytes(),
            QoS::AtLeastOnce,
            false,
            i + 1,
        );
    }
    let mut outstanding = vec![sub.recv_publish(), sub.recv_publish()];
    sub.expect_silence(QUIET);
    let mut next = 2;
    while !outstanding.is_empty() {
        let oldest = outstanding.remove(0);
        ack_publish(&mut sub, &oldest);
        if next < 5 {
            let got = sub.recv_publish();
            assert_eq!(text(&got.payload), next.to_string(), "in order");
            outstanding.push(got);
            next += 1;
        }
        sub.expect_silence(Duration::from_millis(150));
    }
    assert_eq!(next, 5);
}

/// Inbound: with receive_maximum = 2, a third unreleased QoS 2 PUBLISH gets DISCONNECT 0x93.
#[test]
fn inbound_receive_maximum_exceeded() {
    let broker = start_broker_with(|config| config.receive_maximum = 2);
    let (mut client, connack) = raw_v5(broker.shard(0), "rmin", |_| {});
    assert_eq!(connack.properties.receive_maximum, Some(2));
    for id in 1..=2 {
        client.send(publish_v5(
            "rmin/t",
            b"q2",
            QoS::ExactlyOnce,
            id,
            Properties::default(),
        ));
        assert_eq!(recv_pubrec(&mut client).packet_id, id);
    }
    client.send(publish_v5(
        "rmin/t",
        b"q2",
        QoS::ExactlyOnce,
        3,
        Properties::default(),
    ));
    expect_server_disconnect(&mut client, ReasonCode::ReceiveMaximumExceeded, TIMEOUT);
}

/// A client that is still sending when the server disconnects it reads the DISCONNECT: the
/// broker half-closes and discards input for a while instead of closing a socket with unread
/// input, which would reset the connection and destroy the DISCONNECT (and the PUBRECs before
/// it) in the client's receive buffer.
#[test]
fn server_disconnect_reaches_a_client_that_keeps_sending() {
    let broker = start_broker_with(|config| config.receive_maximum = 2);
    let (mut client, _) = raw_v5(broker.shard(0), "rmin-linger", |_| {});
    // Three QoS 2 PUBLISHes (the third exceeds Receive Maximum) and 100 KiB more, written
    // before anything is read: the broker stops at the third with input still unread.
    let mut bytes = Vec::new();
    for id in 1..=103u16 {
        let payload = if id <= 3 {
            vec![b'q'; 2]
        } else {
            vec![b'x'; 1024]
        };
        let packet = publish_v5(
            "rmin/linger",
            &payload,
            QoS::ExactlyOnce,
            id,
            Properties::default(),
        );
        bytes.extend_from_slice(&common::encode(&packet, ProtocolVersion::V5));
    }
    client
        .send_bytes(&bytes)
        .expect("the broker reads while it decides");
    assert_eq!(recv_pubrec(&mut client).packet_id, 1);
    assert_eq!(recv_pubrec(&mut client).packet_id, 2);
    expect_server_disconnect(&mut client, ReasonCode::ReceiveMaximumExceeded, TIMEOUT);
}

/// Receive Maximum counts distinct messages: QoS 2 PUBLISHes whose PUBREC was lost are resent
/// (DUP, same identifiers) after reconnecting (MQTT 5.0 §4.4); with receive_maximum = 2 and two
/// unreleased messages, the resends are deduplicated, not a quota violation.
#[test]

fn inbound_qos2_resend_after_reconnect_is_not_counted_twice() {
    let broker = start_broker_with(|config| config.receive_maximum = 2);
    let mut watch = watcher(broker.shard(1), "rmdup-watch", "rmdup/t");
    let persistent = |c: &mut Connect| c.properties.session_expiry_interval = Some(60);
    let (mut client, _) = raw_v5(broker.shard(0), "rmdup", persistent);
    for id in 1..=2 {
        client.send(publish_v5(
            "rmdup/t",
            b"q2",
            QoS::ExactlyOnce,
            id,
            Properties::default(),
        ));
        recv_pubrec(&mut client);
    }
    // The PUBRECs are "lost": the connection drops before the client processed them.
    client.drop_socket();
    let mut connect = v5_connect("rmdup", false);
    persistent(&mut connect);
    let (mut client, connack) = Raw::connect_with(broker.shard(0), connect);
    assert!(connack.session_present);
    for id in 1..=2 {
        let mut resend = publish_packet("rmdup/t", b"q2", QoS::ExactlyOnce, false, id);
        resend.dup = true;
        client.send(Packet::Publish(resend));
        match client.recv_for(TIMEOUT) {
            Recv::Packet(Packet::PubRec(ack)) => assert_eq!(ack.packet_id, id),
            other => panic!("resend {id}: expected PUBREC, got {other:?}"),
        }
    }
    for id in 1..=2 {
        client.send(Packet::PubRel(Ack::new(id)));
        match client.recv() {
            Packet::PubComp(ack) => assert_eq!(ack.packet_id, id),
            other => panic!("expected PUBCOMP, got {other:?}"),
        }
    }
    for _ in 0..2 {
        let got = watch.recv_publish();
        ack_publish(&mut watch, &got);
    }
    watch.expect_silence(QUIET);
}

// ----- maximum packet size -------------------------------------------------------------------

/// A subscriber declaring Maximum Packet Size 100 is not sent a 200-byte message (and is not
/// disconnected for it); a following small message arrives.
#[tokio::test]
async fn outbound_maximum_packet_size() {
    let broker = start_broker();
    let (sub, _) = ClientV5::connect(broker.shard(0), "mps-sub", |o| {
        o.set_max_packet_size(Some(100));
    })
    .await;
    sub.subscribe("mps/#", Q5::AtLeastOnce).await;
    let (publisher, _) = ClientV5::connect(broker.shard(1), "mps-pub", |_| {}).await;
    publisher
        .publish("mps/t", Q5::AtLeastOnce, false, &[b'x'; 200])
        .await;
    publisher
        .publish("mps/t", Q5::AtMostOnce, false, &[b'y'; 200])
        .await;
    publisher
        .publish("mps/t", Q5::AtLeastOnce, false, b"small")
        .await;
    let got = sub.recv_publish().await;
    assert_eq!(
        &got.payload[..],
        b"small",
        "the large messages were not sent"
    );
    sub.expect_no_publish(QUIET).await;
    assert!(!sub.events.finished(), "still connected");
}

// ----- subscription options ------------------------------------------------------------------

/// No Local: a client's own publishes are not echoed on a no_local subscription (they are on
/// a normal one, and other clients' publishes arrive on the no_local one).
#[tokio::test]
async fn no_local_subscription() {
    let broker = start_broker();
    let (a, _) = ClientV5::connect(broker.shard(0), "nl-a", |_| {}).await;
    let (b, _) = ClientV5::connect(broker.shard(1), "nl-b", |_| {}).await;
    let no_local = Filter {
        nolocal: true,
        ..Filter::new("nl/t", Q5::AtLeastOnce)
    };
    a.subscribe_filters(vec![no_local], None).await;
    a.subscribe("nl/echo", Q5::AtLeastOnce).await;
    b.subscribe("nl/t", Q5::AtLeastOnce).await;

    a.publish("nl/t", Q5::AtLeastOnce, false, b"mine").await;
    a.publish("nl/echo", Q5::AtLeastOnce, false, b"echo").await;
    assert_eq!(&b.recv_publish().await.payload[..], b"mine");
    let first = a.recv_publish().await;
    assert_eq!(
        (text(&first.topic), text(&first.payload)),
        ("nl/echo".into(), "echo".into()),
        "own publish on the no_local subscription is not echoed"
    );
    b.publish("nl/t", Q5::AtLeastOnce, false, b"theirs").await;
    assert_eq!(&a.recv_publish().await.payload[..], b"theirs");
    a.expect_no_publish(QUIET).await;
}

/// Retain As Published keeps the retain flag on live delivery; without it the flag is cleared.
#[tokio::test]
async fn retain_as_published() {
    let broker = start_broker();
    let (kept, _) = ClientV5::connect(broker.shard(0), "rap-kept", |_| {}).await;
    let (cleared, _) = ClientV5::connect(broker.shard(1), "rap-cleared", |_| {}).await;
    let rap = Filter {
        preserve_retain: true,
        ..Filter::new("rap/t", Q5::AtLeastOnce)
    };
    kept.subscribe_filters(vec![rap], None).await;
    cleared.subscribe("rap/t", Q5::AtLeastOnce).await;
    let (publisher, _) = ClientV5::connect(broker.shard(1), "rap-pub", |_| {}).await;
    publisher
        .publish("rap/t", Q5::AtLeastOnce, true, b"retained")
        .await;
    let got = kept.recv_publish().await;
    assert_eq!(&got.payload[..], b"retained");
    assert!(got.retain, "retain_as_published keeps the flag");
    let got = cleared.recv_publish().await;
    assert_eq!(&got.payload[..], b"retained");
    assert!(
        !got.retain,
        "without retain_as_published the flag is cleared"
    );
}

/// Retain handling 0: retained message on every subscribe; 1: only when the subscription is
/// new (a re-subscribe gets nothing); 2: never.
#[tokio::test]
async fn retain_handling() {
    let broker = start_broker();
    let (publisher, _) = ClientV5::connect(broker.shard(0), "rh-pub", |_| {}).await;
    publisher
        .publish("rh/t", Q5::AtLeastOnce, true, b"kept")
        .await;
    let cases = [
        (RetainForwardRule::OnEverySubscribe, [true, true]),
        (RetainForwardRule::OnNewSubscribe, [true, false]),
        (RetainForwardRule::Never, [false, false]),
    ];
    for (i, (rule, expected)) in cases.into_iter().enumerate() {
        let (sub, _) =
            ClientV5::connect(broker.shard((i + 1) % 2), &format!("rh-{i}"), |_| {}).await;
        for (round, expect) in expected.into_iter().enumerate() {
            let filter = Filter {
                retain_forward_rule: rule.clone(),
                ..Filter::new("rh/t", Q5::AtLeastOnce)
            };
            sub.subscribe_filters(vec![filter], None).await;
            match (expect, sub.try_recv_publish(QUIET).await) {
                (true, Some(got)) => {
                    assert_eq!(&got.payload[..], b"kept");
                    assert!(got.retain);
                }
                (false, None) => {}
                (true, None) => panic!("{rule:?}, subscribe #{round}: retained message expected"),
                (false, Some(got)) => {
                    panic!("{rule:?}, subscribe #{round}: nothing expected, got {got:?}")
                }
            }
        }
    }
}

// ----- subscription identifiers --------------------------------------------------------------

/// Subscription identifiers are delivered with matching PUBLISHes; two matching subscriptions
/// (ids 1 and 2) give one PUBLISH carrying both; re-subscribing without an id removes it.
#[tokio::test]
async fn subscription_identifiers() {
    let broker = start_broker();
    let (sub, _) = ClientV5::connect(broker.shard(0), "sid-sub", |_| {}).await;
    sub.subscribe_filters(
        vec![Filter::new("sid/a", Q5::AtLeastOnce)],
        Some(sub_props(1)),
    )
    .await;
    sub.subscribe_filters(
        vec![Filter::new("sid/+", Q5::AtLeastOnce)],
        Some(sub_props(2)),
    )
    .await;
    let (publisher, _) = ClientV5::connect(broker.shard(1), "sid-pub", |_| {}).await;

    let ids = |p: &rumqttc::v5::mqttbytes::v5::Publish| {
        let mut ids = p
            .properties
            .as_ref()
            .map(|p| p.subscription_identifiers.clone())
            .unwrap_or_default();
        ids.sort_unstable();
        ids
    };
    publisher
        .publish("sid/a", Q5::AtLeastOnce, false, b"both")
        .await;
    let got = sub.recv_publish().await;
    assert_eq!(&got.payload[..], b"both");
    assert_eq!(ids(&got), [1, 2], "one PUBLISH with both identifiers");
    sub.expect_no_publish(QUIET).await;

    publisher
        .publish("sid/b", Q5::AtLeastOnce, false, b"one")
        .await;
    let got = sub.recv_publish().await;
    assert_eq!(ids(&got), [2]);

    sub.subscribe("sid/a", Q5::AtLeastOnce).await;
    publisher
        .publish("sid/a", Q5::AtLeastOnce, false, b"again")
        .await;
    let got = sub.recv_publish().await;
    assert_eq!(&got.payload[..], b"again");
    assert_eq!(ids(&got), [2], "the re-subscribe replaced id 1 with none");
    sub.expect_no_publish(QUIET).await;
}

// ----- shared subscriptions ------------------------------------------------------------------

/// Collects `total` numbered payloads from `members`, failing after [`TIMEOUT`].
async fn collect_numbers(members: &[&ClientV5], total: usize) -> Vec<Vec<u32>> {
    let deadline = Instant::now() + TIMEOUT;
    let mut got = vec![Vec::new(); members.len()];
    while got.iter().map(Vec::len).sum::<usize>() < total {
        assert!(
            Instant::now() < deadline,
            "only {got:?} of {total} shared messages arrived"
        );
        for (i, member) in members.iter().enumerate() {
            if let Some(p) = member.try_recv_publish(Duration::from_millis(5)).await {
                got[i].push(text(&p.payload).parse().unwrap());
            }
        }
    }
    for member in members {
        member.expect_no_publish(QUIET).await;
    }
    got
}

/// Members of `$share/g/...` on both shards, publishers on both shards: each message reaches
/// exactly one member. Returns what each member got.
async fn shared_exactly_once(strategy: SharedStrategy, tag: &str) -> Vec<Vec<u32>> {
    let broker = start_broker_with(|config| config.shared_subscription_strategy = strategy);
    let filter = format!("$share/g/{tag}/#");
    let (m0, _) = ClientV5::connect(broker.shard(0), &format!("{tag}-m0"), |_| {}).await;
    let (m1, _) = ClientV5::connect(broker.shard(1), &format!("{tag}-m1"), |_| {}).await;
    m0.subscribe(&filter, Q5::AtLeastOnce).await;
    m1.subscribe(&filter, Q5::AtLeastOnce).await;
    let (p0, _) = ClientV5::connect(broker.shard(0), &format!("{tag}-p0"), |_| {}).await;
    let (p1, _) = ClientV5::connect(broker.shard(1), &format!("{tag}-p1"), |_| {}).await;
    const N: u32 = 20;
    for i in 0..N {
        let publisher = if i < N / 2 { &p0 } else { &p1 };
        let topic = format!("{tag}/t/{}", i % 3);
        publisher
            .publish(&topic, Q5::AtLeastOnce, false, i.to_string().as_bytes())
            .await;
    }
    let got = collect_numbers(&[&m0, &m1], N as usize).await;
    let mut all: Vec<u32> = got.concat();
    all.sort_unstable();
    assert_eq!(all, (0..N).collect::<Vec<_>>(), "each message exactly once");
    got
}

/// Round robin: exactly once, and both members get some.
#[tokio::test]
async fn shared_round_robin_delivers_each_message_once() {
    let got = shared_exactly_once(SharedStrategy::RoundRobin, "shrr").await;
    assert!(
        got.iter().all(|member| !member.is_empty()),
        "round robin uses both members: {got:?}"
    );
}

/// Random: exactly once.
#[tokio::test]
async fn shared_random_delivers_each_message_once() {
    shared_exactly_once(SharedStrategy::Random, "shrnd").await;
}

/// Sticky: exactly once.
#[tokio::test]
async fn shared_sticky_delivers_each_message_once() {
    shared_exactly_once(SharedStrategy::Sticky, "shst").await;
}

/// Subscribing to a shared filter sends no retained messages (a normal filter does).
#[tokio::test]
async fn shared_subscription_gets_no_retained_messages() {
    let broker = start_broker();
    let (publisher, _) = ClientV5::connect(broker.shard(1), "shret-pub", |_| {}).await;
    publisher
        .publish("shret/t", Q5::AtLeastOnce, true, b"kept")
        .await;
    let (sub, _) = ClientV5::connect(broker.shard(0), "shret-sub", |_| {}).await;
    sub.subscribe("$share/g/shret/#", Q5::AtLeastOnce).await;
    sub.expect_no_publish(QUIET).await;
    sub.subscribe("shret/#", Q5::AtLeastOnce).await;
    let got = sub.recv_publish().await;
    assert_eq!(
        &got.payload[..],
        b"kept",
        "control: a normal filter gets it"
    );
    assert!(got.retain);
}

/// A member that disconnects (session expiry 0) with unacknowledged QoS 1 messages: they are
/// redelivered to the other member (on the other shard); nothing is lost or duplicated there.
#[test]
fn shared_unacknowledged_messages_go_to_another_member() {
    let broker = start_broker();
    let filter = "$share/g/shrd/#";
    let (mut quitter, _) = raw_v5(broker.shard(0), "shrd-quitter", |_| {});
    quitter.subscribe(1, filter, QoS::AtLeastOnce);
    let (mut stayer, _) = raw_v5(broker.shard(1), "shrd-stayer", |_| {});
    stayer.subscribe(1, filter, QoS::AtLeastOnce);
    let (mut publisher, _) = raw_v5(broker.shard(0), "shrd-pub", |_| {});
    const N: u16 = 8;
    for i in 0..N {
        publisher.publish(
            "shrd/t",
            format!("{i}").as_bytes(),
            QoS::AtLeastOnce,
            false,
            i + 1,
        );
    }
    // The quitter reads its share and acknowledges none of it.
    let mut withheld = Vec::new();
    while let Recv::Packet(packet) = quitter.recv_for(QUIET) {
        match packet {
            Packet::Publish(p) => withheld.push(text(&p.payload)),
            other => panic!("quitter: unexpected {other:?}"),
        }
    }
    assert!(
        !withheld.is_empty(),
        "round robin gave the quitter some messages"
    );
    let mut got = Vec::new();
    while let Recv::Packet(packet) = stayer.recv_for(QUIET) {
        match packet {
            Packet::Publish(p) => {
                ack_publish(&mut stayer, &p);
                got.push(text(&p.payload));
            }
            other => panic!("stayer: unexpected {other:?}"),
        }
    }
    assert_eq!(got.len() + withheld.len(), usize::from(N));
    quitter.drop_socket();
    for _ in 0..withheld.len() {
        let p = stayer.recv_publish();
        ack_publish(&mut stayer, &p);
        got.push(text(&p.payload));
    }
    stayer.expect_silence(QUIET);
    let mut numbers: Vec<u16> = got.iter().map(|s| s.parse().unwrap()).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (0..N).collect::<Vec<_>>(),
        "each message once, none lost"
    );
}

// ----- request/response and properties -------------------------------------------------------

/// Response topic and correlation data reach the responder unchanged, and so do payload format
/// indicator, content type and user properties (order and duplicates kept); the response
/// reaches the requester with the correlation data.
#[tokio::test]
async fn request_response_properties_pass_through() {
    let broker = start_broker();
    let (requester, _) = ClientV5::connect(broker.shard(0), "rr-req", |_| {}).await;
    let (responder, _) = ClientV5::connect(broker.shard(1), "rr-resp", |_| {}).await;
    requester.subscribe("rr/resp/#", Q5::AtLeastOnce).await;
    responder.subscribe("rr/req", Q5::AtLeastOnce).await;

    let user_properties: Vec<(String, String)> = [("k", "1"), ("a", "x"), ("k", "2"), ("k", "1")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let request = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("rr/resp/42".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr\xff")),
        user_properties: user_properties.clone(),
        ..Default::default()
    };
    requester
        .publish_with(
            "rr/req",
            Q5::AtLeastOnce,
            false,
            b"{\"q\":1}",
            Some(request),
        )
        .await;

    let got = responder.recv_publish().await;
    assert_eq!(&got.payload[..], b"{\"q\":1}");
    let props = got.properties.expect("properties forwarded");
    assert_eq!(props.payload_format_indicator, Some(1));
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert_eq!(props.response_topic.as_deref(), Some("rr/resp/42"));
    assert_eq!(
        props.correlation_data.as_deref(),
        Some(&b"\x00\x01corr\xff"[..])
    );
    assert_eq!(
        props.user_properties, user_properties,
        "order and duplicates kept"
    );

    let response = PublishProperties {
        correlation_data: props.correlation_data.clone(),
        ..Default::default()
    };
    responder
        .publish_with(
            props.response_topic.as_deref().unwrap(),
            Q5::AtLeastOnce,
            false,
            b"answer",
            Some(response),
        )
        .await;
    let got = requester.recv_publish().await;
    assert_eq!(&got.topic[..], b"rr/resp/42");
    assert_eq!(&got.payload[..], b"answer");
    assert_eq!(
        got.properties.and_then(|p| p.correlation_data).as_deref(),
        Some(&b"\x00\x01corr\xff"[..])
    );
}

// ----- PUBACK reason codes -------------------------------------------------------------------

/// 0x10 No matching subscribers when nobody subscribes (rumqttc sees it); 0x00 once a
/// subscriber on the other shard exists.
#[tokio::test]
async fn puback_no_matching_subscribers() {
    let broker = start_broker();
    let (publisher, _) = ClientV5::connect(broker.shard(0), "nms-pub", |_| {}).await;
    assert_eq!(
        publisher
            .publish("nms/t", Q5::AtLeastOnce, false, b"anyone?")
            .await,
        Some(PubAckReason::NoMatchingSubscribers)
    );
    let (sub, _) = ClientV5::connect(broker.shard(1), "nms-sub", |_| {}).await;
    sub.subscribe("nms/#", Q5::AtLeastOnce).await;
    assert_eq!(
        publisher
            .publish("nms/t", Q5::AtLeastOnce, false, b"someone")
            .await,
        Some(PubAckReason::Success)
    );
    assert_eq!(&sub.recv_publish().await.payload[..], b"someone");
}

/// 0x99 for payload_format_indicator = 1 with a payload that is not UTF-8, 0x87 for a publish
/// to `$SYS/x`; neither is routed. A valid UTF-8 payload with the indicator is accepted.
#[test]
fn puback_payload_format_invalid_and_not_authorized() {
    let broker = start_broker();
    let (mut watch, _) = raw_v5(broker.shard(1), "prc-watch", |_| {});
    watch.subscribe_many(
        1,
        // The exact topic the client tries to publish to: the broker's own `$SYS/broker/...`
        // updates are not what this test is about.
        &[("prc/#", QoS::AtLeastOnce), ("$SYS/x", QoS::AtLeastOnce)],
    );
    let (mut publisher, _) = raw_v5(broker.shard(0), "prc-pub", |_| {});
    let utf8 = Properties::from(PropertyFields {
        payload_format_indicator: Some(1),
        ..PropertyFields::default()
    });

    publisher.send(publish_v5(
        "prc/t",
        b"\xff\xfe\xfd",
        QoS::AtLeastOnce,
        1,
        utf8.clone(),
    ));
    let ack = recv_puback(&mut publisher);
    assert_eq!(ack.packet_id, 1);
    assert_eq!(ack.reason, ReasonCode::PayloadFormatInvalid);

    publisher.send(publish_v5(
        "$SYS/x",
        b"nope",
        QoS::AtLeastOnce,
        2,
        Properties::default(),
    ));
    let ack = recv_puback(&mut publisher);
    assert_eq!(ack.packet_id, 2);
    assert_eq!(ack.reason, ReasonCode::NotAuthorized);
    watch.expect_silence(QUIET);

    publisher.send(publish_v5(
        "prc/t",
        "héllo".as_bytes(),
        QoS::AtLeastOnce,
        3,
        utf8,
    ));
    assert_eq!(recv_puback(&mut publisher).reason, ReasonCode::Success);
    let got = watch.recv_publish();
    assert_eq!(got.payload.as_ref(), "héllo".as_bytes());
    assert_eq!(got.properties.payload_format_indicator, Some(1));
}

/// A QoS 2 PUBLISH refused with an error PUBREC (0x87, 0x99) ends its flow (MQTT 5.0 §4.3.3):
/// the packet identifier is free, and a new message reusing it is routed.
#[test]

fn qos2_packet_id_is_free_after_an_error_pubrec() {
    let broker = start_broker();
    let (mut watch, _) = raw_v5(broker.shard(1), "q2e-watch", |_| {});
    watch.subscribe(1, "q2e/#", QoS::AtLeastOnce);
    let (mut publisher, _) = raw_v5(broker.shard(0), "q2e-pub", |_| {});
    let utf8 = Properties::from(PropertyFields {
        payload_format_indicator: Some(1),
        ..PropertyFields::default()
    });
    let refusals = [
        (
            "$SYS/x",
            &b"nope"[..],
            Properties::default(),
            ReasonCode::NotAuthorized,
        ),
        (
            "q2e/t",
            &b"\xff"[..],
            utf8,
            ReasonCode::PayloadFormatInvalid,
        ),
    ];
    for (i, (topic, payload, properties, reason)) in refusals.into_iter().enumerate() {
        let id = 7 + i as u16;
        publisher.send(publish_v5(topic, payload, QoS::ExactlyOnce, id, properties));
        let rec = recv_pubrec(&mut publisher);
        assert_eq!((rec.packet_id, rec.reason), (id, reason));
        // Flow over; the identifier is reused for a new message.
        let fresh = format!("fresh-{i}");
        publisher.publish("q2e/t", fresh.as_bytes(), QoS::ExactlyOnce, false, id);
        let got = watch.recv_publish();
        assert_eq!(text(&got.payload), fresh, "the new message is routed");
        ack_publish(&mut watch, &got);
    }
}

// ----- will delay ----------------------------------------------------------------------------

/// A raw 5.0 client on `addr` with a will on `topic` (delay `delay` s) and a session expiry.
fn will_client(
    addr: SocketAddr,
    client_id: &str,
    topic: &str,
    delay: u32,
    session_expiry: Option<u32>,
) -> Raw {
    raw_v5(addr, client_id, |c| {
        let mut last_will = will(topic, b"gone", QoS::AtLeastOnce, false);
        last_will.properties.will_delay_interval = Some(delay);
        c.will = Some(last_will);
        c.properties.session_expiry_interval = session_expiry;
    })
    .0
}

/// Will delay 2 s, session expiry 10 s: reconnecting 0.5 s after an abnormal disconnect
/// cancels the will.
#[test]
fn will_delay_reconnect_within_the_delay_cancels_the_will() {
    let broker = start_broker();
    let mut watch = watcher(broker.shard(1), "wdc-watch", "wdc/will");
    let client = will_client(broker.shard(0), "wdc", "wdc/will", 2, Some(10));
    client.drop_socket();
    std::thread::sleep(Duration::from_millis(500));
    let mut connect = v5_connect("wdc", false);
    connect.properties.session_expiry_interval = Some(10);
    let (client, connack) = Raw::connect_with(broker.shard(1), connect);
    assert!(connack.session_present);
    watch.expect_silence(Duration::from_millis(2300));
    client.disconnect();
    watch.expect_silence(QUIET);
}

/// Will delay 2 s, session expiry 10 s, no reconnect: the will is not published at once
/// (nothing within 0.5 s) but is within 3.5 s. That it never comes before the full 2 s is
/// `will_delay_is_never_cut_short`.
#[test]
fn will_delay_publishes_the_will_after_the_delay() {
    let broker = start_broker();
    let mut watch = watcher(broker.shard(1), "wdp-watch", "wdp/will");
    let client = will_client(broker.shard(0), "wdp", "wdp/will", 2, Some(10));
    let dropped = Instant::now();
    client.drop_socket();
    watch.expect_silence(Duration::from_millis(500));
    let got = watch.recv_publish();
    let after = dropped.elapsed();
    assert_eq!(&got.payload[..], b"gone");
    assert!(
        after <= Duration::from_millis(3500),
        "will published {after:?} after the disconnect"
    );
}

/// The will delay is never cut short: four clients (will delay 2 s) drop their connections
/// 250 ms apart, so the drops fall at different points of a wall-clock second; none of the wills
/// may be published less than 2 s after its drop.
#[test]

fn will_delay_is_never_cut_short() {
    let broker = start_broker();
    let mut watch = watcher(broker.shard(1), "wde-watch", "wde/#");
    let clients: Vec<Raw> = (0..4)
        .map(|i| {
            will_client(
                broker.shard(0),
                &format!("wde-{i}"),
                &format!("wde/{i}"),
                2,
                Some(10),
            )
        })
        .collect();
    let start = Instant::now();
    let mut dropped = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let at = start + Duration::from_millis(250 * i as u64);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        dropped.push(Instant::now());
        client.drop_socket();
    }
    let mut delays = BTreeMap::new();
    while delays.len() < 4 {
        let got = watch.recv_publish();
        let i: usize = got.topic.as_str()["wde/".len()..].parse().unwrap();
        delays.insert(i, dropped[i].elapsed());
        ack_publish(&mut watch, &got);
    }
    let early: Vec<_> = delays
        .iter()
        .filter(|(_, d)| **d < Duration::from_millis(1950))
        .collect();
    assert!(
        early.is_empty(),
        "wills published before their 2 s delay: {delays:?}"
    );
}

/// Will delay 2 s with session expiry 0: the session ends with the connection, so the will is
/// published at once.
#[test]
fn will_delay_with_session_expiry_zero_publishes_at_once() {
    let broker = start_broker();
    let mut watch = watcher(broker.shard(1), "wdz-watch", "wdz/will");
    let client = will_client(broker.shard(0), "wdz", "wdz/will", 2, None);
    let dropped = Instant::now();
    client.drop_socket();
    let got = watch.recv_publish();
    assert_eq!(&got.payload[..], b"gone");
    assert!(
        dropped.elapsed() < Duration::from_millis(800),
        "published {:?} after the drop",
        dropped.elapsed()
    );
}

// ----- server DISCONNECT reason codes --------------------------------------------------------

/// 0x8E: the connection taken over by a new one (rumqttc, other shard) for the same client id.
#[tokio::test]
async fn server_disconnect_session_taken_over() {
    let broker = start_broker();
    let (mut first, _) = raw_v5(broker.shard(0), "dtk", |_| {});
    let (second, _) = ClientV5::connect(broker.shard(1), "dtk", |_| {}).await;
    expect_server_disconnect(&mut first, ReasonCode::SessionTakenOver, TIMEOUT);
    second.subscribe("dtk/t", Q5::AtMostOnce).await;
}

/// 0x8D: keep-alive 1 s and silence.
#[test]
fn server_disconnect_keep_alive_timeout() {
    let broker = start_broker();
    let (mut client, _) = raw_v5(broker.shard(1), "dka", |c| c.keep_alive = 1);
    let start = Instant::now();
    expect_server_disconnect(
        &mut client,
        ReasonCode::KeepAliveTimeout,
        Duration::from_secs(4),
    );
    assert!(
        start.elapsed() >= Duration::from_millis(1400),
        "not before 1.5 keep-alives"
    );
}

/// 0x95: a packet above the configured max_packet_size (1024).
#[test]
fn server_disconnect_packet_too_large() {
    let broker = start_broker_with(|config| config.max_packet_size = 1024);
    let (mut client, connack) = raw_v5(broker.shard(0), "dbig", |_| {});
    assert_eq!(connack.properties.maximum_packet_size, Some(1024));
    client.send(publish_v5(
        "dbig/t",
        &[0u8; 2000],
        QoS::AtLeastOnce,
        1,
        Properties::default(),
    ));
    expect_server_disconnect(&mut client, ReasonCode::PacketTooLarge, TIMEOUT);
}

/// 0x81: a malformed packet (PUBLISH with QoS 3).
#[test]
fn server_disconnect_malformed_packet() {
    let broker = start_broker();
    let (mut client, _) = raw_v5(broker.shard(1), "dmal", |_| {});
    client
        .send_bytes(&raw_publish(0b0110, b"dmal/t", Some(1), b"\x00x"))
        .unwrap();
    expect_server_disconnect(&mut client, ReasonCode::MalformedPacket, TIMEOUT);
}

/// 0x8B: the broker shuts down; MQTT 5.0 clients on both shards are told.
#[test]
fn server_disconnect_server_shutting_down() {
    let mut broker = start_broker();
    let mut clients: Vec<Raw> = (0..2)
        .map(|shard| raw_v5(broker.shard(shard), &format!("dstop-{shard}"), |_| {}).0)
        .collect();
    broker.signal_shutdown();
    for client in &mut clients {
        expect_server_disconnect(client, ReasonCode::ServerShuttingDown, TIMEOUT);
    }
    assert!(broker.stop(TIMEOUT));
}

// ----- enhanced authentication ---------------------------------------------------------------

/// CONNECT with authentication method "SCRAM-SHA-1" (not supported): CONNACK 0x8C, seen by
/// rumqttc as a refused connection and by a raw client as the reason code.
#[tokio::test]
async fn auth_method_not_supported() {
    let broker = start_broker();
    let addr = broker.shard(0);
    let mut options =
        rumqttc::v5::MqttOptions::new("auth-rumqttc", addr.ip().to_string(), addr.port());
    options.set_authentication_method(Some("SCRAM-SHA-1".into()));
    let (_client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 10);
    let answer = tokio::time::timeout(TIMEOUT, eventloop.poll())
        .await
        .expect("the broker answers the CONNECT");
    match answer {
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, ConnectReturnCode::BadAuthenticationMethod)
        }
        other => panic!("expected a refused connection, got {other:?}"),
    }

    let mut connect = v5_connect("auth-raw", true);
    connect.properties.authentication_method = Some(MqttStr::from("SCRAM-SHA-1"));
    let (mut raw, connack) = Raw::try_connect(broker.shard(1), connect);
    assert_eq!(connack.reason, ReasonCode::BadAuthenticationMethod);
    assert_eq!(connack.reason.as_u8(), 0x8C);
    assert!(!connack.session_present);
    raw.expect_closed(TIMEOUT);
}

// ----- interoperability ----------------------------------------------------------------------

/// A 3.1.1 subscriber receives a 5.0 publisher's message (with properties) as a plain
/// message; a 5.0 subscriber receives a 3.1.1 publisher's message.
#[tokio::test]
async fn interop_between_3_1_1_and_5_0() {
    let broker = start_broker();
    let v3_sub = Client::connect(broker.shard(0), "io-v3-sub").await;
    v3_sub
        .subscribe("io/from5", rumqttc::QoS::AtLeastOnce)
        .await;
    let (v5_sub, _) = ClientV5::connect(broker.shard(0), "io-v5-sub", |_| {}).await;
    v5_sub.subscribe("io/from3", Q5::AtLeastOnce).await;

    let (v5_pub, _) = ClientV5::connect(broker.shard(1), "io-v5-pub", |_| {}).await;
    let properties = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        content_type: Some("text/plain".into()),
        response_topic: Some("io/reply".into()),
        correlation_data: Some(Bytes::from_static(b"c")),
        user_properties: vec![("k".into(), "v".into())],
        ..Default::default()
    };
    v5_pub
        .publish_with(
            "io/from5",
            Q5::AtLeastOnce,
            false,
            b"hello v3",
            Some(properties),
        )
        .await;
    let got = v3_sub.recv_publish().await;
    assert_eq!(got.topic, "io/from5");
    assert_eq!(
        &got.payload[..],
        b"hello v3",
        "no properties leak into the payload"
    );
    assert_eq!(got.qos, rumqttc::QoS::AtLeastOnce);

    let v3_pub = Client::connect(broker.shard(1), "io-v3-pub").await;
    v3_pub
        .publish("io/from3", rumqttc::QoS::AtLeastOnce, false, b"hello v5")
        .await;
    let got = v5_sub.recv_publish().await;
    assert_eq!(&got.topic[..], b"io/from3");
    assert_eq!(&got.payload[..], b"hello v5");
    assert_eq!(got.qos, Q5::AtLeastOnce);
    let props = got.properties.unwrap_or_default();
    assert!(props.user_properties.is_empty() && props.response_topic.is_none());
    v3_sub.expect_no_publish(QUIET).await;
}
