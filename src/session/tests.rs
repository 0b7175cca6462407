use bytes::{Bytes, BytesMut};

use super::*;
use crate::codec::{decode, Publish};

fn message(qos: QoS, payload: &'static [u8]) -> Arc<Message> {
    Arc::new(Message {
        topic: MqttStr::from("t"),
        payload: Bytes::from_static(payload),
        qos,
        retain: false,
        properties: Default::default(),
        publisher: MqttStr::from("pub"),
    })
}

fn session(max_inflight: u16, max_queued: usize) -> Session {
    Session::new(
        MqttStr::from("c"),
        ProtocolVersion::V3_1_1,
        false,
        SessionLimits {
            max_inflight,
            max_queued_messages: max_queued,
            max_queued_bytes: 0,
        },
    )
}

fn packets(out: &mut BytesMut) -> Vec<Packet> {
    let mut packets = Vec::new();
    while let Some(packet) = decode(out, ProtocolVersion::V3_1_1, usize::MAX).unwrap() {
        packets.push(packet);
    }
    packets
}

fn publish_ids(packets: &[Packet]) -> Vec<(u16, bool)> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(Publish { packet_id, dup, .. }) => Some((*packet_id, *dup)),
            _ => None,
        })
        .collect()
}

#[test]
fn window_then_queue_then_drain_in_order() {
    let mut s = session(2, 10);
    let mut cache = EncodeCache::default();
    let mut out = BytesMut::new();
    for payload in [&b"1"[..], b"2", b"3", b"4"] {
        let m = message(QoS::AtLeastOnce, payload);
        s.deliver(&m, QoS::AtLeastOnce, false, Some(&mut out), &mut cache);
    }
    assert_eq!(publish_ids(&packets(&mut out)), [(1, false), (2, false)]);
    assert_eq!(s.queued_len(), 2);
    s.on_puback(1, &mut out).unwrap();
    let sent = packets(&mut out);
    assert_eq!(publish_ids(&sent), [(3, false)]);
    let Packet::Publish(p) = &sent[0] else {
        panic!()
    };
    assert_eq!(&p.payload[..], b"3");
    // Unknown ids are ignored.
    s.on_puback(99, &mut out).unwrap();
    assert!(out.is_empty());
}

#[test]
fn queue_bound_drops_newest_and_counts() {
    let mut s = session(1, 2);
    let mut cache = EncodeCache::default();
    for _ in 0..5 {
        let m = message(QoS::AtLeastOnce, b"x");
        s.deliver(&m, QoS::AtLeastOnce, false, None, &mut cache);
    }
    assert_eq!(s.queued_len(), 2);
    assert_eq!(s.dropped_queue_full, 3);
    let m = message(QoS::AtMostOnce, b"x");
    assert_eq!(
        s.deliver(&m, QoS::AtMostOnce, false, None, &mut cache),
        Delivery::Dropped
    );
    assert_eq!(s.dropped_qos0, 1);
}

#[test]
fn queued_bytes_bound() {
    let mut s = session(1, 0);
    s.set_limits(SessionLimits {
        max_inflight: 1,
        max_queued_messages: 0,
        max_queued_bytes: 5,
    });
    let mut cache = EncodeCache::default();
    let m = message(QoS::AtLeastOnce, b"abc");
    assert_eq!(
        s.deliver(&m, QoS::AtLeastOnce, false, None, &mut cache),
        Delivery::Queued
    );
    assert_eq!(
        s.deliver(&m, QoS::AtLeastOnce, false, None, &mut cache),
        Delivery::Dropped
    );
    assert_eq!(s.queued_bytes(), 3);
}

#[test]
fn resume_retransmits_with_dup_and_pubrel() {
    let mut s = session(10, 10);
    let mut cache = EncodeCache::default();
    let mut out = BytesMut::new();
    let q1 = message(QoS::AtLeastOnce, b"a");
    let q2 = message(QoS::ExactlyOnce, b"b");
    s.deliver(&q1, QoS::AtLeastOnce, false, Some(&mut out), &mut cache);
    s.deliver(&q2, QoS::ExactlyOnce, false, Some(&mut out), &mut cache);
    s.deliver(&q2, QoS::ExactlyOnce, false, Some(&mut out), &mut cache);
    out.clear();
    s.on_pubrec(3, ReasonCode::Success, &mut out).unwrap();
    assert_eq!(packets(&mut out), [Packet::PubRel(Ack::new(3))]);
    // Connection lost; offline messages queue.
    s.deliver(&q1, QoS::AtLeastOnce, false, None, &mut cache);
    s.resume(&mut out);
    let sent = packets(&mut out);
    assert_eq!(publish_ids(&sent), [(1, true), (2, true), (4, false)]);
    assert!(sent.contains(&Packet::PubRel(Ack::new(3))));
    s.on_pubcomp(3, &mut out).unwrap();
    assert_eq!(s.inflight().count(), 3);
}

#[test]
fn qos2_inbound_dedup_until_pubrel() {
    let mut s = session(10, 10);
    assert!(s.on_incoming_qos2(7));
    assert!(!s.on_incoming_qos2(7));
    assert!(s.on_pubrel(7));
    assert!(!s.on_pubrel(7));
    assert!(s.on_incoming_qos2(7));
}

#[test]
fn wrong_ack_for_the_flow_is_an_error() {
    let mut s = session(10, 10);
    let mut cache = EncodeCache::default();
    let mut out = BytesMut::new();
    let q1 = message(QoS::AtLeastOnce, b"a");
    s.deliver(&q1, QoS::AtLeastOnce, false, Some(&mut out), &mut cache);
    assert_eq!(s.on_pubcomp(1, &mut out), Err(SessionError::UnexpectedAck));
    assert_eq!(
        s.on_pubrec(1, ReasonCode::Success, &mut out),
        Err(SessionError::UnexpectedAck)
    );
    // PUBREC for an unknown id still gets a PUBREL.
    out.clear();
    s.on_pubrec(50, ReasonCode::Success, &mut out).unwrap();
    assert!(matches!(packets(&mut out)[..], [Packet::PubRel(_)]));
}

#[test]
fn packet_ids_skip_those_in_flight_and_wrap() {
    let mut s = session(3, 10);
    s.next_packet_id = u16::MAX;
    let mut cache = EncodeCache::default();
    let mut out = BytesMut::new();
    let m = message(QoS::AtLeastOnce, b"a");
    for _ in 0..3 {
        s.deliver(&m, QoS::AtLeastOnce, false, Some(&mut out), &mut cache);
    }
    assert_eq!(
        publish_ids(&packets(&mut out)),
        [(u16::MAX, false), (1, false), (2, false)]
    );
}

#[test]
fn encode_cache_shares_one_encoding_per_layout() {
    let mut cache = EncodeCache::default();
    let m = message(QoS::ExactlyOnce, b"payload");
    let first = cache
        .get(&m, ProtocolVersion::V5, QoS::AtLeastOnce, false)
        .head()
        .as_ptr();
    let again = cache
        .get(&m, ProtocolVersion::V5, QoS::AtLeastOnce, false)
        .head()
        .as_ptr();
    assert_eq!(first, again);
    let other = cache
        .get(&m, ProtocolVersion::V3_1_1, QoS::AtLeastOnce, false)
        .head()
        .as_ptr();
    assert_ne!(first, other);
    // A different message invalidates the cache.
    let m2 = message(QoS::ExactlyOnce, b"other");
    let enc = cache.get(&m2, ProtocolVersion::V5, QoS::AtLeastOnce, false);
    assert_eq!(&enc.payload()[..], b"other");
}
