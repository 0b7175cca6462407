use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::codec::{decode, Publish, ReasonCode};

fn message(qos: QoS, payload: &'static [u8]) -> Arc<Message> {
    Arc::new(Message {
        topic: MqttStr::from("t"),
        payload: Bytes::from_static(payload),
        qos,
        retain: false,
        properties: Default::default(),
        publisher: MqttStr::from("pub"),
        expires_at: None,
        received_at: None,
        origin_packet_id: 0,
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

/// Delivers `m` at QoS 1 (no subscription ids, no group) into `out`.
fn deliver_qos1(
    s: &mut Session,
    m: &Arc<Message>,
    out: &mut impl OutputSink,
    cache: &mut EncodeCache,
    now: Instant,
) -> Delivery {
    s.deliver(
        m,
        QoS::AtLeastOnce,
        false,
        &[],
        None,
        Some(out),
        cache,
        now,
        &mut |_: &Message, _: QoS| {},
    )
}

#[test]
fn window_then_queue_then_drain_in_order() {
    let mut s = session(2, 10);
    let mut cache = EncodeCache::default();
    let mut out = BytesMut::new();
    for payload in [&b"1"[..], b"2", b"3", b"4"] {
        let m = message(QoS::AtLeastOnce, payload);
        s.deliver(
            &m,
            QoS::AtLeastOnce,
            false,
            &[],
            None,
            Some(&mut out),
            &mut cache,
            Instant::now(),
            &mut |_: &Message, _: QoS| {},
        );
    }
    assert_eq!(publish_ids(&packets(&mut out)), [(1, false), (2, false)]);
    assert_eq!(s.queued_len(), 2);
    s.on_puback(1, &mut out, Instant::now(), &mut |_: &Message, _: QoS| {})
        .unwrap();
    let sent = packets(&mut out);
    assert_eq!(publish_ids(&sent), [(3, false)]);
    let Packet::Publish(p) = &sent[0] else {
        panic!()
    };
    assert_eq!(&p.payload[..], b"3");
    // Unknown ids are ignored.
    s.on_puback(99, &mut out, Instant::now(), &mut |_: &Message, _: QoS| {})
        .unwrap();
    assert!(out.is_empty());
}

/// An idle session holds no traffic state: it is allocated by the first QoS 1/2 message or
/// inbound QoS 2 id and freed when the last one is acknowledged or released.
#[test]
fn traffic_state_exists_only_while_messages_flow() {
    let mut s = session(1, 10);
    let mut cache = EncodeCache::default();
    let mut out = BytesMut::new();
    assert!(s.traffic.is_none());
    for payload in [&b"1"[..], b"2"] {
        s.deliver(
            &message(QoS::AtLeastOnce, payload),
            QoS::AtLeastOnce,
            false,
            &[],
            None,
            Some(&mut out),
            &mut cache,
            Instant::now(),
            &mut |_: &Message, _: QoS| {},
        );
    }
    assert!(s.traffic.is_some());
    s.on_puback(1, &mut out, Instant::now(), &mut |_: &Message, _: QoS| {})
        .unwrap();
    assert!(s.traffic.is_some(), "the queued message is in flight now");
    s.on_puback(2, &mut out, Instant::now(), &mut |_: &Message, _: QoS| {})
        .unwrap();
    assert!(s.traffic.is_none(), "nothing in flight or queued");
    assert!(s.on_incoming_qos2(7));
    assert!(s.traffic.is_some());
    assert!(s.on_pubrel(7));
    assert!(s.traffic.is_none(), "the QoS 2 id was released");
    assert_eq!(publish_ids(&packets(&mut out)), [(1, false), (2, false)]);
}

#[test]
fn queue_bound_drops_newest_and_counts() {
    let mut s = session(1, 2);
    let mut cache = EncodeCache::default();
    for _ in 0..5 {
        let m = message(QoS::AtLeastOnce, b"x");
        s.deliver(
            &m,
            QoS::AtLeastOnce,
            false,
            &[],
            None,
            None::<&mut BytesMut>,
            &mut cache,
            Instant::now(),
            &mut |_: &Message, _: QoS| {},
        );
    }
    assert_eq!(s.queued_len(), 2);
    assert_eq!(s.dropped_queue_full, 3);
    let m = message(QoS::AtMostOnce, b"x");
    assert_eq!(
        s.deliver(
            &m,
            QoS::AtMostOnce,
            false,
            &[],
            None,
            None::<&mut BytesMut>,
            &mut cache,
            Instant::now(),
            &mut |_: &Message, _: QoS| {}
        ),
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
        s.deliver(
            &m,
            QoS::AtLeastOnce,
            false,
            &[],
            None,
            None::<&mut BytesMut>,
            &mut cache,
            Instant::now(),
            &mut |_: &Message, _: QoS| {}
        ),
        Delivery::Queued
    );
    assert_eq!(
        s.deliver(
            &m,
            QoS::AtLeastOnce,
            false,
            &[],
            None,
            None::<&mut BytesMut>,
            &mut cache,
            Instant::now(),
            &mut |_: &Message, _: QoS| {}
        ),
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
    s.deliver(
        &q1,
        QoS::AtLeastOnce,
        false,
        &[],
        None,
        Some(&mut out),
        &mut cache,
        Instant::now(),
        &mut |_: &Message, _: QoS| {},
    );
    s.deliver(
        &q2,
        QoS::ExactlyOnce,
        false,
        &[],
        None,
        Some(&mut out),
        &mut cache,
        Instant::now(),
        &mut |_: &Message, _: QoS| {},
    );
    s.deliver(
        &q2,
        QoS::ExactlyOnce,
        false,
        &[],
        None,
        Some(&mut out),
        &mut cache,
        Instant::now(),
        &mut |_: &Message, _: QoS| {},
    );
    out.clear();
    s.on_pubrec(
        3,
        ReasonCode::Success,
        &mut out,
        Instant::now(),
        &mut |_: &Message, _: QoS| {},
    )
    .unwrap();
    assert_eq!(packets(&mut out), [Packet::PubRel(Ack::new(3))]);
    // Connection lost; offline messages queue.
    s.deliver(
        &q1,
        QoS::AtLeastOnce,
        false,
        &[],
        None,
        None::<&mut BytesMut>,
        &mut cache,
        Instant::now(),
        &mut |_: &Message, _: QoS| {},
    );
    s.resume(&mut out, Instant::now(), &mut |_: &Message, _: QoS| {});
    let sent = packets(&mut out);
    assert_eq!(publish_ids(&sent), [(1, true), (2, true), (4, false)]);
    assert!(sent.contains(&Packet::PubRel(Ack::new(3))));
    s.on_pubcomp(3, &mut out, Instant::now(), &mut |_: &Message, _: QoS| {})
        .unwrap();
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
    s.deliver(
        &q1,
        QoS::AtLeastOnce,
        false,
        &[],
        None,
        Some(&mut out),
        &mut cache,
        Instant::now(),
        &mut |_: &Message, _: QoS| {},
    );
    assert_eq!(
        s.on_pubcomp(1, &mut out, Instant::now(), &mut |_: &Message, _: QoS| {}),
        Err(SessionError::UnexpectedAck)
    );
    assert_eq!(
        s.on_pubrec(
            1,
            ReasonCode::Success,
            &mut out,
            Instant::now(),
            &mut |_: &Message, _: QoS| {}
        ),
        Err(SessionError::UnexpectedAck)
    );
    // PUBREC for an unknown id still gets a PUBREL.
    out.clear();
    s.on_pubrec(
        50,
        ReasonCode::Success,
        &mut out,
        Instant::now(),
        &mut |_: &Message, _: QoS| {},
    )
    .unwrap();
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
        s.deliver(
            &m,
            QoS::AtLeastOnce,
            false,
            &[],
            None,
            Some(&mut out),
            &mut cache,
            Instant::now(),
            &mut |_: &Message, _: QoS| {},
        );
    }
    assert_eq!(
        publish_ids(&packets(&mut out)),
        [(u16::MAX, false), (1, false), (2, false)]
    );
}

/// A message left unacknowledged while 70,000 others go out and are acknowledged: the ids
/// wrap around, and the stuck one's id is skipped (past the run of ids that need no scan).
#[test]
fn a_long_unacknowledged_id_is_skipped_after_wrapping() {
    let mut s = session(2, 10);
    let mut cache = EncodeCache::default();
    let mut out = BytesMut::new();
    let now = Instant::now();
    let stuck = message(QoS::AtLeastOnce, b"stuck");
    let m = message(QoS::AtLeastOnce, b"a");
    deliver_qos1(&mut s, &stuck, &mut out, &mut cache, now);
    assert_eq!(publish_ids(&packets(&mut out)), [(1, false)]);
    let mut wrapped = false;
    for round in 0..70_000u32 {
        deliver_qos1(&mut s, &m, &mut out, &mut cache, now);
        let ids = publish_ids(&packets(&mut out));
        assert_eq!(ids.len(), 1, "round {round}");
        let id = ids[0].0;
        assert_ne!(
            id, 1,
            "round {round}: the id of the message still in flight reused"
        );
        wrapped |= id == 2 && round > 0;
        s.on_puback(id, &mut out, now, &mut |_: &Message, _: QoS| {})
            .unwrap();
    }
    assert!(wrapped, "the ids never wrapped around");
    assert_eq!(s.inflight().map(|m| m.packet_id).collect::<Vec<_>>(), [1]);
}

#[test]
fn encode_cache_shares_one_encoding_per_layout() {
    let mut cache = EncodeCache::default();
    let m = message(QoS::ExactlyOnce, b"payload");
    let first = cache
        .get(
            &m,
            ProtocolVersion::V5,
            QoS::AtLeastOnce,
            false,
            Instant::now(),
        )
        .unwrap()
        .head()
        .as_ptr();
    let again = cache
        .get(
            &m,
            ProtocolVersion::V5,
            QoS::AtLeastOnce,
            false,
            Instant::now(),
        )
        .unwrap()
        .head()
        .as_ptr();
    assert_eq!(first, again);
    let other = cache
        .get(
            &m,
            ProtocolVersion::V3_1_1,
            QoS::AtLeastOnce,
            false,
            Instant::now(),
        )
        .unwrap()
        .head()
        .as_ptr();
    assert_ne!(first, other);
    // A different message invalidates the cache.
    let m2 = message(QoS::ExactlyOnce, b"other");
    let enc = cache
        .get(
            &m2,
            ProtocolVersion::V5,
            QoS::AtLeastOnce,
            false,
            Instant::now(),
        )
        .unwrap();
    assert_eq!(&enc.payload()[..], b"other");
}

#[test]
fn expired_messages_are_dropped_and_remaining_interval_is_forwarded() {
    let mut s = session(10, 10);
    s.protocol = ProtocolVersion::V5;
    let mut cache = EncodeCache::default();
    let mut out = BytesMut::new();
    let now = Instant::now();
    let mut m = (*message(QoS::AtLeastOnce, b"x")).clone();
    m.expires_at = Some(now + Duration::from_secs(10));
    let m = Arc::new(m);
    s.deliver(
        &m,
        QoS::AtLeastOnce,
        false,
        &[],
        None,
        None::<&mut BytesMut>,
        &mut cache,
        now,
        &mut |_: &Message, _: QoS| {},
    );
    // Offline for 4 s: 6 s remain.
    s.resume(
        &mut out,
        now + Duration::from_secs(4),
        &mut |_: &Message, _: QoS| {},
    );
    let mut v5 = out.clone();
    let Some(Packet::Publish(p)) = decode(&mut v5, ProtocolVersion::V5, usize::MAX).unwrap() else {
        panic!()
    };
    assert_eq!(p.properties.message_expiry_interval, Some(6));
    // Past its expiry it is never sent.
    s.deliver(
        &m,
        QoS::AtLeastOnce,
        false,
        &[],
        None,
        None::<&mut BytesMut>,
        &mut cache,
        now,
        &mut |_: &Message, _: QoS| {},
    );
    out.clear();
    s.on_puback(
        1,
        &mut out,
        now + Duration::from_secs(11),
        &mut |_: &Message, _: QoS| {},
    )
    .unwrap();
    assert!(out.is_empty());
    assert_eq!(s.dropped_expired, 1);
}

#[test]
fn subscription_ids_aliases_and_peer_maximum_packet_size() {
    let mut s = session(10, 10);
    s.protocol = ProtocolVersion::V5;
    s.attach(PeerLimits {
        max_packet_size: 64,
        topic_alias_max: 1,
        receive_maximum: 10,
    });
    let mut cache = EncodeCache::default();
    let mut out = BytesMut::new();
    let now = Instant::now();
    let m = message(QoS::AtMostOnce, b"small");
    s.deliver(
        &m,
        QoS::AtMostOnce,
        false,
        &[3, 9],
        None,
        Some(&mut out),
        &mut cache,
        now,
        &mut |_: &Message, _: QoS| {},
    );
    s.deliver(
        &m,
        QoS::AtMostOnce,
        false,
        &[],
        None,
        Some(&mut out),
        &mut cache,
        now,
        &mut |_: &Message, _: QoS| {},
    );
    let mut packets = Vec::new();
    while let Some(p) = decode(&mut out, ProtocolVersion::V5, usize::MAX).unwrap() {
        packets.push(p);
    }
    let [Packet::Publish(first), Packet::Publish(second)] = &packets[..] else {
        panic!("{packets:?}")
    };
    assert_eq!(first.properties.subscription_identifiers, vec![3, 9]);
    assert_eq!(first.topic, "t");
    assert_eq!(first.properties.topic_alias, Some(1));
    assert!(second.topic.is_empty(), "second use sends only the alias");
    assert_eq!(second.properties.topic_alias, Some(1));
    // Larger than the client's maximum packet size: not sent, not queued, counted.
    let big = message(QoS::AtLeastOnce, &[0u8; 100]);
    assert_eq!(
        s.deliver(
            &big,
            QoS::AtLeastOnce,
            false,
            &[],
            None,
            Some(&mut out),
            &mut cache,
            now,
            &mut |_: &Message, _: QoS| {}
        ),
        Delivery::Dropped
    );
    assert!(out.is_empty());
    assert_eq!(s.dropped_too_large, 1);
    assert_eq!(s.inflight().count(), 0);
}

#[test]
fn receive_maximum_limits_the_window() {
    let mut s = session(32, 10);
    s.attach(PeerLimits {
        receive_maximum: 1,
        ..PeerLimits::default()
    });
    let mut cache = EncodeCache::default();
    let mut out = BytesMut::new();
    let m = message(QoS::AtLeastOnce, b"x");
    let now = Instant::now();
    assert_eq!(
        s.deliver(
            &m,
            QoS::AtLeastOnce,
            false,
            &[],
            None,
            Some(&mut out),
            &mut cache,
            now,
            &mut |_: &Message, _: QoS| {}
        ),
        Delivery::Sent
    );
    assert_eq!(
        s.deliver(
            &m,
            QoS::AtLeastOnce,
            false,
            &[],
            None,
            Some(&mut out),
            &mut cache,
            now,
            &mut |_: &Message, _: QoS| {}
        ),
        Delivery::Queued
    );
}

/// `on_sent` hears of every PUBLISH written, whichever method writes it (direct delivery,
/// the window filling after an acknowledgement, resends and the queue on resume), and of
/// nothing else: the calls match the PUBLISH packets in the output, QoS and payload included.
#[test]
fn on_sent_reports_every_publish_written() {
    /// Checks that the reported messages are the PUBLISH packets in `out`, and takes both.
    fn check(
        out: &mut BytesMut,
        reported: &mut Vec<(QoS, Bytes)>,
        written: &mut Vec<(QoS, Bytes)>,
    ) {
        let publishes: Vec<(QoS, Bytes)> = packets(out)
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some((p.qos, p.payload)),
                _ => None,
            })
            .collect();
        assert_eq!(publishes, *reported);
        written.append(reported);
    }
    let mut s = session(2, 10);
    let mut cache = EncodeCache::default();
    let mut out = BytesMut::new();
    let mut reported: Vec<(QoS, Bytes)> = Vec::new();
    let mut written = Vec::new();
    let now = Instant::now();
    let payloads: [&'static [u8]; 4] = [b"a", b"bb", b"ccc", b"dddd"];
    for (i, payload) in payloads.into_iter().enumerate() {
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        s.deliver(
            &message(qos, payload),
            qos,
            false,
            &[],
            None,
            Some(&mut out),
            &mut cache,
            now,
            &mut |m: &Message, qos: QoS| reported.push((qos, m.payload.clone())),
        );
    }
    // QoS 0: written at once, never queued.
    s.deliver(
        &message(QoS::AtMostOnce, b"zero"),
        QoS::AtMostOnce,
        false,
        &[],
        None,
        Some(&mut out),
        &mut cache,
        now,
        &mut |m: &Message, qos: QoS| reported.push((qos, m.payload.clone())),
    );
    check(&mut out, &mut reported, &mut written);
    assert_eq!(written.len(), 3, "two in the window and the QoS 0 one");
    // A PUBACK frees a slot: the window takes the next queued message.
    s.on_puback(1, &mut out, now, &mut |m: &Message, qos: QoS| {
        reported.push((qos, m.payload.clone()))
    })
    .unwrap();
    check(&mut out, &mut reported, &mut written);
    assert_eq!(written.len(), 4);
    // A PUBREC with an error ends a flow: the last queued message goes out. Then the client
    // reconnects: both in flight are resent (DUP).
    s.on_pubrec(
        2,
        ReasonCode::UnspecifiedError,
        &mut out,
        now,
        &mut |m: &Message, qos: QoS| reported.push((qos, m.payload.clone())),
    )
    .unwrap();
    s.resume(&mut out, now, &mut |m: &Message, qos: QoS| {
        reported.push((qos, m.payload.clone()))
    });
    check(&mut out, &mut reported, &mut written);
    assert_eq!(
        written
            .iter()
            .map(|(q, p)| (*q as u8, p.len()))
            .collect::<Vec<_>>(),
        [(1, 1), (2, 2), (0, 4), (1, 3), (2, 4), (1, 3), (2, 4)]
    );
}

/// Large payloads go into an `Output` by reference on every path: delivered at once (the
/// encode cache), from the queue when the window opens, and resent with DUP on resumption;
/// the bytes are those of the packets encoded whole.
#[test]
fn large_payloads_are_shared_on_every_send_path() {
    let big: &'static [u8] = Box::leak(vec![0xab; crate::codec::SHARE_MIN + 10].into_boxed_slice());
    let first = message(QoS::AtLeastOnce, big);
    let second = message(QoS::AtLeastOnce, big);
    let mut s = session(1, 10);
    let mut cache = EncodeCache::default();
    let now = Instant::now();
    let mut out = crate::codec::Output::default();
    for m in [&first, &second] {
        deliver_qos1(&mut s, m, &mut out, &mut cache, now);
    }
    // Takes the output: it must share the payload and hold one PUBLISH (id, DUP) of `big`.
    let sent_once = |out: &mut crate::codec::Output, id: (u16, bool), path: &str| {
        assert!(out.has_shared(), "{path}: the payload by reference");
        let mut sent = std::mem::take(out).into_contiguous();
        let got = packets(&mut sent);
        assert_eq!(publish_ids(&got), [id], "{path}");
        let Packet::Publish(publish) = &got[0] else {
            panic!("{path}: {got:?}")
        };
        assert_eq!(&publish.payload[..], big, "{path}");
    };
    // The first went out, the second waits for the window.
    sent_once(&mut out, (1, false), "delivered at once");
    s.on_puback(1, &mut out, now, &mut |_: &Message, _: QoS| {})
        .unwrap();
    sent_once(&mut out, (2, false), "from the queue");
    s.resume(&mut out, now, &mut |_: &Message, _: QoS| {});
    sent_once(&mut out, (2, true), "resent");
}
