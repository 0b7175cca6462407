//! Malformed input closes only the offending connection, without a reply (MQTT 3.1.1 has no
//! way to say why) and without routing anything; other clients keep working.
//!
//! Each case runs on a broker with `max_packet_size = 1024` and `max_topic_levels = 8`, with
//! a `#` watcher on each shard, and sends the bad bytes from a client on each shard in turn.

mod common;

use common::{ack_publish, field, frame, raw_publish, Broker, Raw, Sync, TIMEOUT};
use shardmq::codec::QoS;

fn closes_only_that_connection(bad_bytes: &[u8]) {
    let broker = Broker::start_with(|config| {
        config.max_packet_size = 1024;
        config.max_topic_levels = 8;
    });
    let mut watchers = Vec::new();
    for shard in [0, 1] {
        let (mut watcher, _) = Raw::connect(broker.shard(shard), &format!("watch-{shard}"), true);
        watcher.subscribe(1, "#", QoS::AtLeastOnce);
        watchers.push(watcher);
    }
    let mut sync = Sync::new(&broker);
    sync.settle();
    let (mut publisher, _) = Raw::connect(broker.shard(1), "healthy-pub", true);

    for shard in [0, 1] {
        let (mut bad, _) = Raw::connect(broker.shard(shard), &format!("bad-{shard}"), true);
        // The broker may close before it has read everything.
        let _ = bad.send_bytes(bad_bytes);
        let packets = bad.expect_closed(TIMEOUT);
        assert!(
            packets.is_empty(),
            "shard {shard}: expected a silent close, got {packets:?}"
        );

        // Let anything the bad packet might have routed reach every shard, then check that the
        // next message the watchers see is the healthy one.
        sync.settle();
        let id = 1 + shard as u16;
        publisher.publish("ok/t", b"still-alive", QoS::AtLeastOnce, false, id);
        for watcher in &mut watchers {
            let got = watcher.recv_publish();
            assert_eq!(
                got.topic.as_str(),
                "ok/t",
                "nothing from the bad client is routed"
            );
            assert_eq!(&got.payload[..], b"still-alive");
            ack_publish(watcher, &got);
        }
    }
    for watcher in &mut watchers {
        watcher.ping();
    }
    publisher.ping();
}

#[test]
fn remaining_length_of_five_bytes() {
    // 0xFF 0xFF 0xFF 0xFF 0x01: a fifth length byte (§2.2.3 allows at most four).
    closes_only_that_connection(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x00, 0x01, b'a']);
}

#[test]
fn reserved_flags_on_subscribe() {
    // SUBSCRIBE must have flags 0010; 0000 here.
    let body = [&[0, 1][..], &field(b"x/y"), &[1]].concat();
    closes_only_that_connection(&frame(0x80, &body));
}

#[test]
fn reserved_flags_on_pubrel_and_pingreq() {
    // PUBREL must have flags 0010; 0000 here.
    closes_only_that_connection(&[0x60, 0x02, 0x00, 0x01]);
    // PINGREQ with flags 0001.
    closes_only_that_connection(&[0xC1, 0x00]);
}

#[test]
fn invalid_utf8_in_topic_name() {
    closes_only_that_connection(&raw_publish(
        0x00,
        &[b'o', b'k', b'/', 0xFF, 0xFE],
        None,
        b"x",
    ));
}

#[test]
fn nul_character_in_topic_name() {
    // U+0000 is not allowed in MQTT strings (§1.5.3).
    closes_only_that_connection(&raw_publish(0x02, b"ok/\0t", Some(1), b"x"));
}

#[test]
fn invalid_utf8_in_topic_filter() {
    let body = [&[0, 1][..], &field(&[b'a', 0xC0, 0xAF]), &[0]].concat();
    closes_only_that_connection(&frame(0x82, &body));
}

#[test]
fn wildcards_in_publish_topic_name() {
    closes_only_that_connection(&raw_publish(0x00, b"ok/+", None, b"x"));
    closes_only_that_connection(&raw_publish(0x02, b"ok/#", Some(3), b"x"));
}

#[test]
fn publish_with_qos_3() {
    closes_only_that_connection(&raw_publish(0x06, b"ok/t", Some(1), b"x"));
}

#[test]
fn packet_larger_than_max_packet_size() {
    let payload = vec![b'z'; 2000];
    closes_only_that_connection(&raw_publish(0x02, b"ok/t", Some(1), &payload));
}

#[test]
fn topic_with_more_levels_than_max_topic_levels() {
    // Nine levels; the broker allows eight.
    closes_only_that_connection(&raw_publish(0x02, b"ok/b/c/d/e/f/g/h/i", Some(1), b"x"));
}

/// A SUBSCRIBE beyond `max_topic_levels` is refused with 0x80 for that filter only; the
/// connection stays open and the other filter works.
#[test]
fn subscribe_beyond_max_topic_levels_is_refused_not_closed() {
    let broker = Broker::start_with(|config| config.max_topic_levels = 8);
    let (mut sub, _) = Raw::connect(broker.shard(0), "deep-sub", true);
    let suback = sub.subscribe_many(
        1,
        &[
            ("a/b/c/d/e/f/g/h/+", QoS::AtLeastOnce),
            ("a/b", QoS::AtLeastOnce),
        ],
    );
    assert_eq!(suback.reasons.len(), 2);
    assert_eq!(suback.reasons[0].to_v3_suback(), 0x80);
    assert_eq!(suback.reasons[1], shardmq::codec::ReasonCode::GrantedQos1);
    sub.publish("a/b", b"ok", QoS::AtMostOnce, false, 0);
    assert_eq!(&sub.recv_publish().payload[..], b"ok");
}

#[test]
fn subscribe_without_any_filter() {
    // §3.8.3: the payload must contain at least one filter.
    closes_only_that_connection(&frame(0x82, &[0, 1]));
}

/// `max_packet_size` counts the whole packet, fixed header included: 1024 bytes pass, 1025 do
/// not.
#[test]
fn max_packet_size_boundary() {
    let broker = Broker::start_with(|config| config.max_packet_size = 1024);
    let (mut sub, _) = Raw::connect(broker.shard(0), "edge-sub", true);
    sub.subscribe(1, "edge", QoS::AtMostOnce);
    let (mut publisher, _) = Raw::connect(broker.shard(0), "edge-pub", true);
    // 1 type byte + 2 length bytes + 2 + 4 topic bytes = 9 bytes of overhead.
    let exact = raw_publish(0x00, b"edge", None, &vec![b'e'; 1024 - 9]);
    assert_eq!(exact.len(), 1024);
    publisher.send_bytes(&exact).unwrap();
    assert_eq!(sub.recv_publish().payload.len(), 1024 - 9);
    let over = raw_publish(0x00, b"edge", None, &vec![b'e'; 1025 - 9]);
    assert_eq!(over.len(), 1025);
    let _ = publisher.send_bytes(&over);
    assert!(publisher.expect_closed(TIMEOUT).is_empty());
    sub.expect_silence(common::QUIET);
}

#[test]
fn qos1_publish_with_packet_id_0() {
    // §2.3.1: QoS > 0 packets need a non-zero packet identifier.
    closes_only_that_connection(&raw_publish(0x02, b"ok/t", Some(0), b"x"));
}
