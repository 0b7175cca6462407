//! Connection rules: what CONNECT must look like and when, protocol levels 3/4 (and 6 refused),
//! client identifiers, the connection limit, and graceful shutdown.

mod common;

use std::time::{Duration, Instant};

use common::{ack_publish, connect_packet, field, frame, Broker, Client, Raw, QUIET, TIMEOUT};
use shardmq::codec::{Packet, ProtocolVersion, QoS, ReasonCode};

/// The broker closed the connection without sending anything.
fn assert_closed_silently(raw: &mut Raw) {
    let packets = raw.expect_closed(TIMEOUT);
    assert!(
        packets.is_empty(),
        "expected a close without any packet, got {packets:?}"
    );
}

#[test]
fn first_packet_must_be_connect() {
    let broker = Broker::start();
    for first in [
        frame(0xC0, &[]),                                         // PINGREQ
        frame(0x82, &[&[0, 1][..], &field(b"a"), &[0]].concat()), // SUBSCRIBE
        frame(0x30, &[field(b"a/b"), b"x".to_vec()].concat()),    // PUBLISH
    ] {
        for shard in [0, 1] {
            let mut raw = Raw::tcp(broker.shard(shard));
            raw.send_bytes(&first).unwrap();
            assert_closed_silently(&mut raw);
        }
    }
}

#[test]
fn second_connect_closes_the_connection() {
    let broker = Broker::start();
    let (mut raw, _) = Raw::connect(broker.shard(0), "twice", true);
    raw.send(Packet::Connect(Box::new(connect_packet("twice", true))));
    assert_closed_silently(&mut raw);
    // The client id is free again.
    let (mut again, connack) = Raw::connect(broker.shard(1), "twice", true);
    assert!(!connack.session_present);
    again.ping();
}

/// Protocol level 6 (unknown): CONNACK with return code 1, then close (3.1.1 §3.1.2.2).
#[test]
fn unsupported_protocol_level_gets_return_code_1() {
    let broker = Broker::start();
    let body = [field(b"MQTT"), vec![6, 0x02, 0, 60], field(b"level-six")].concat();
    let mut raw = Raw::tcp(broker.shard(0));
    raw.send_bytes(&frame(0x10, &body)).unwrap();
    let packets = raw.expect_closed(TIMEOUT);
    match &packets[..] {
        [Packet::ConnAck(connack)] => {
            assert_eq!(connack.reason, ReasonCode::UnsupportedProtocolVersion);
            assert_eq!(connack.reason.to_v3_connack(), 1);
            assert!(!connack.session_present);
        }
        other => panic!("expected one CONNACK (1), got {other:?}"),
    }
}

/// 3.1.1 §3.1.3.1: an empty client id needs clean session = 1; otherwise CONNACK 2 and close.
#[test]
fn empty_client_id_rules() {
    let broker = Broker::start();
    let mut raw = Raw::tcp(broker.shard(0));
    raw.send(Packet::Connect(Box::new(connect_packet("", false))));
    match &raw.expect_closed(TIMEOUT)[..] {
        [Packet::ConnAck(connack)] => {
            assert_eq!(connack.reason, ReasonCode::ClientIdentifierNotValid);
            assert_eq!(connack.reason.to_v3_connack(), 2);
        }
        other => panic!("expected one CONNACK (2), got {other:?}"),
    }

    // Clean session 1: accepted, and the connection works (two of them, distinct sessions).
    let (mut a, connack) = Raw::connect(broker.shard(0), "", true);
    assert!(!connack.session_present);
    let (mut b, _) = Raw::connect(broker.shard(0), "", true);
    a.subscribe(1, "anon/t", QoS::AtLeastOnce);
    b.publish("anon/t", b"hello", QoS::AtLeastOnce, false, 1);
    let got = a.recv_publish();
    assert_eq!(&got.payload[..], b"hello");
    ack_publish(&mut a, &got);
    // b was not taken over by a: both still open.
    a.ping();
    b.ping();
}

/// An MQTT 3.1 client (protocol name MQIsdp, level 3) connects, subscribes, publishes, and
/// exchanges messages with a 3.1.1 client.
#[test]
fn mqtt_3_1_client_works() {
    let broker = Broker::start();
    let mut connect = connect_packet("old-client", true);
    connect.protocol = ProtocolVersion::V3_1;
    let (mut old, connack) = Raw::connect_with(broker.shard(1), connect);
    assert_eq!(connack.reason, ReasonCode::Success);
    assert_eq!(old.version, ProtocolVersion::V3_1);
    old.subscribe(1, "v31/#", QoS::ExactlyOnce);
    let (mut new, _) = Raw::connect(broker.shard(1), "new-client", true);
    new.subscribe(1, "v311/#", QoS::AtLeastOnce);

    // 3.1 to itself (QoS 0: no acknowledgement to interleave with the delivery), to the
    // 3.1.1 client, and 3.1.1 to the 3.1 client.
    old.publish("v31/self", b"me", QoS::AtMostOnce, false, 0);
    let got = old.recv_publish();
    assert_eq!(&got.payload[..], b"me");
    old.publish("v311/x", b"from 3.1", QoS::AtLeastOnce, false, 3);
    let got = new.recv_publish();
    assert_eq!(&got.payload[..], b"from 3.1");
    ack_publish(&mut new, &got);
    new.publish("v31/x", b"from 3.1.1", QoS::AtLeastOnce, false, 4);
    let got = old.recv_publish();
    assert_eq!(&got.payload[..], b"from 3.1.1");
    assert_eq!(got.qos, QoS::AtLeastOnce);
    ack_publish(&mut old, &got);
    old.disconnect();
}

/// `connect_timeout = 1`: a connection that sends no CONNECT (or only part of one) is closed.
#[test]
fn no_connect_within_connect_timeout_closes() {
    let broker = Broker::start_with(|config| config.connect_timeout = 1);
    let start = Instant::now();
    let mut silent = Raw::tcp(broker.shard(0));
    let mut partial = Raw::tcp(broker.shard(1));
    let connect = common::encode(
        &Packet::Connect(Box::new(connect_packet("slow", true))),
        ProtocolVersion::V3_1_1,
    );
    partial.send_bytes(&connect[..connect.len() / 2]).unwrap();
    for raw in [&mut silent, &mut partial] {
        assert!(raw.expect_closed(Duration::from_secs(4)).is_empty());
    }
    assert!(start.elapsed() < Duration::from_secs(4));
    // A prompt client is unaffected.
    let (mut prompt, _) = Raw::connect(broker.shard(0), "prompt", true);
    std::thread::sleep(Duration::from_millis(1500));
    prompt.ping();
}

/// `max_connections = 2`: a third connection is closed without CONNACK; once one closes, a
/// new one is accepted.
#[test]
fn connection_limit() {
    let broker = Broker::start_with(|config| config.max_connections = 2);
    let (a, _) = Raw::connect(broker.shard(0), "limit-a", true);
    let (mut b, _) = Raw::connect(broker.shard(1), "limit-b", true);
    for addr in [broker.shard(0), broker.shard(1), broker.addr] {
        // Over the limit, the CONNECT is still read and answered: return code 3 (server
        // unavailable), then the connection closes.
        let (mut third, connack) = Raw::try_connect(addr, connect_packet("limit-c", true));
        assert_eq!(connack.reason, ReasonCode::ServerUnavailable);
        assert!(!connack.session_present);
        assert!(third.expect_closed(TIMEOUT).is_empty());
    }
    b.ping();
    a.disconnect();
    common::wait_until(TIMEOUT, "the connection count to drop", || {
        broker.connections() == 1
    });
    let (mut c, _) = Raw::connect(broker.shard(0), "limit-c", true);
    c.ping();
    b.ping();
}

/// `shutdown()` disconnects every client (rumqttc sees the connection drop, an MQTT 5.0 client
/// gets DISCONNECT 0x8B first) and `join()` returns.
#[tokio::test]
async fn graceful_shutdown() {
    let mut broker = Broker::start();
    let a = Client::connect(broker.shard(0), "stop-a").await;
    let b = Client::connect(broker.shard(1), "stop-b").await;
    a.subscribe("stop/#", rumqttc::QoS::AtLeastOnce).await;
    let mut connect = connect_packet("stop-v5", true);
    connect.protocol = ProtocolVersion::V5;
    let (mut v5, _) = Raw::connect_with(broker.shard(1), connect);

    let started = Instant::now();
    broker.signal_shutdown();
    a.wait_disconnected(TIMEOUT).await;
    b.wait_disconnected(TIMEOUT).await;
    match &v5.expect_closed(TIMEOUT)[..] {
        [Packet::Disconnect(disconnect)] => {
            assert_eq!(disconnect.reason, ReasonCode::ServerShuttingDown)
        }
        other => panic!("expected DISCONNECT 0x8B, got {other:?}"),
    }
    assert!(broker.stop(TIMEOUT), "join() returns after shutdown()");
    assert!(started.elapsed() < TIMEOUT);
}

/// Once `join()` has returned, the broker's listening sockets are closed: a client gets
/// "connection refused" instead of a TCP connection nobody will ever serve.
#[test]
fn shutdown_closes_the_listeners() {
    let mut broker = Broker::start();
    let addrs = [broker.addr, broker.shard(0), broker.shard(1)];
    assert!(broker.stop(TIMEOUT));
    for addr in addrs {
        assert!(
            std::net::TcpStream::connect_timeout(&addr, QUIET).is_err(),
            "{addr} still accepts connections after join()"
        );
    }
}

/// CONNECT flag rules (3.1.1 §3.1.2.3, §3.1.2.9): reserved bit set, will QoS without a will,
/// password without user name, will QoS 3: closed without CONNACK.
#[test]
fn malformed_connect_flags_close_without_connack() {
    let broker = Broker::start();
    for (what, flags, extra) in [
        ("reserved flag", 0x03u8, vec![]),
        ("will QoS without will flag", 0x0A, vec![]),
        ("will retain without will flag", 0x22, vec![]),
        ("password without user name", 0x42, field(b"secret")),
        ("will QoS 3", 0x1E, [field(b"w/t"), field(b"x")].concat()),
    ] {
        let body = [
            field(b"MQTT"),
            vec![4, flags, 0, 30],
            field(b"flags"),
            extra,
        ]
        .concat();
        let mut raw = Raw::tcp(broker.shard(0));
        raw.send_bytes(&frame(0x10, &body)).unwrap();
        let packets = raw.expect_closed(TIMEOUT);
        assert!(
            packets.is_empty(),
            "{what}: expected a silent close, got {packets:?}"
        );
    }
}

/// A client may send packets right after CONNECT without waiting for the CONNACK (3.1.1
/// §3.1.4): CONNECT + SUBSCRIBE + PUBLISH (to itself) + PINGREQ + DISCONNECT in one write are
/// all processed, in order. Several client ids, so that both the local and the remote home
/// shard paths are taken.
#[test]
fn packets_pipelined_after_connect_are_processed_in_order() {
    let broker = Broker::start();
    for i in 0..8 {
        let id = format!("pipeline-{i}");
        let mut bytes = Vec::new();
        for packet in [
            Packet::Connect(Box::new(connect_packet(&id, true))),
            Packet::Subscribe(shardmq::codec::Subscribe {
                packet_id: 1,
                properties: Default::default(),
                filters: vec![(
                    "pipe/t".into(),
                    shardmq::codec::SubscriptionOptions::with_qos(QoS::AtLeastOnce),
                )],
            }),
            Packet::Publish(common::publish_packet(
                "pipe/t",
                id.as_bytes(),
                QoS::AtLeastOnce,
                false,
                2,
            )),
            Packet::PingReq,
            Packet::Disconnect(Default::default()),
        ] {
            bytes.extend(common::encode(&packet, ProtocolVersion::V3_1_1));
        }
        let mut raw = Raw::tcp(broker.shard(i % 2));
        raw.send_bytes(&bytes).unwrap();
        let packets = raw.expect_closed(TIMEOUT);
        let kinds: Vec<_> = packets.iter().map(|p| p.packet_type()).collect();
        use shardmq::codec::PacketType::*;
        // The self-delivery may come before or after the PUBACK; everything else in order.
        let ok = kinds == [ConnAck, SubAck, Publish, PubAck, PingResp]
            || kinds == [ConnAck, SubAck, PubAck, Publish, PingResp];
        assert!(ok, "{id}: got {packets:?}");
    }
}
