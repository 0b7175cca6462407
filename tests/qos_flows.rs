//! QoS 0/1/2 publish → subscribe flows: with rumqttc (both clients publish and subscribe, one
//! per shard), packet by packet with raw bytes for QoS 2, inbound QoS 2 deduplication, QoS
//! downgrade to the granted QoS, and overlapping subscriptions of one client.

mod common;

use common::{ack_publish, publish_packet, Broker, Client, Raw, Sync, QUIET, TIMEOUT};
use rumqttc::{Outgoing, Packet as RPacket, QoS as RQoS, SubscribeReasonCode};
use shardmq::codec::{Ack, Packet, QoS, ReasonCode};

/// A and B (shard 0 and shard 1) each subscribe to the other's topic at `qos` and publish at
/// `qos`: every step of both the client→broker and the broker→client flow is checked.
async fn two_way_flow(qos: RQoS) {
    let broker = Broker::start();
    let a = Client::connect(broker.shard(0), "flow-a").await;
    let b = Client::connect(broker.shard(1), "flow-b").await;
    assert_eq!(
        a.subscribe("to/a", qos).await,
        vec![SubscribeReasonCode::Success(qos)]
    );
    assert_eq!(
        b.subscribe("to/b", qos).await,
        vec![SubscribeReasonCode::Success(qos)]
    );

    for (from, to, topic) in [(&a, &b, "to/b"), (&b, &a, "to/a")] {
        let payload = format!("{qos:?} to {topic}");
        from.client
            .publish(topic, qos, false, payload.clone().into_bytes())
            .await
            .unwrap();
        // Publisher side of the flow.
        match qos {
            RQoS::AtMostOnce => {}
            RQoS::AtLeastOnce => {
                from.incoming(TIMEOUT, |p| matches!(p, RPacket::PubAck(_)).then_some(()))
                    .await
                    .expect("PUBACK to the publisher");
            }
            RQoS::ExactlyOnce => {
                from.incoming(TIMEOUT, |p| matches!(p, RPacket::PubRec(_)).then_some(()))
                    .await
                    .expect("PUBREC to the publisher");
                from.outgoing(TIMEOUT, |o| matches!(o, Outgoing::PubRel(_)).then_some(()))
                    .await
                    .expect("publisher sends PUBREL");
                from.incoming(TIMEOUT, |p| matches!(p, RPacket::PubComp(_)).then_some(()))
                    .await
                    .expect("PUBCOMP to the publisher");
            }
        }
        // Subscriber side.
        let got = to.recv_publish().await;
        assert_eq!(got.topic, topic);
        assert_eq!(got.payload, payload.as_bytes());
        assert_eq!(got.qos, qos);
        assert!(!got.retain);
        assert!(!got.dup);
        match qos {
            RQoS::AtMostOnce => assert_eq!(got.pkid, 0),
            RQoS::AtLeastOnce => {
                to.outgoing(TIMEOUT, |o| {
                    matches!(o, Outgoing::PubAck(id) if *id == got.pkid).then_some(())
                })
                .await
                .expect("subscriber sends PUBACK");
            }
            RQoS::ExactlyOnce => {
                to.outgoing(TIMEOUT, |o| {
                    matches!(o, Outgoing::PubRec(id) if *id == got.pkid).then_some(())
                })
                .await
                .expect("subscriber sends PUBREC");
                to.incoming(TIMEOUT, |p| {
                    matches!(p, RPacket::PubRel(r) if r.pkid == got.pkid).then_some(())
                })
                .await
                .expect("broker sends PUBREL");
                to.outgoing(TIMEOUT, |o| {
                    matches!(o, Outgoing::PubComp(id) if *id == got.pkid).then_some(())
                })
                .await
                .expect("subscriber sends PUBCOMP");
            }
        }
    }
    // Exactly once each: nothing more arrives.
    a.expect_no_publish(QUIET).await;
    b.expect_no_publish(std::time::Duration::ZERO).await;
}

#[tokio::test]
async fn qos0_flow_both_ways() {
    two_way_flow(RQoS::AtMostOnce).await;
}

#[tokio::test]
async fn qos1_flow_both_ways() {
    two_way_flow(RQoS::AtLeastOnce).await;
}

#[tokio::test]
async fn qos2_flow_both_ways() {
    two_way_flow(RQoS::ExactlyOnce).await;
}

#[tokio::test]
async fn many_messages_arrive_in_order() {
    let broker = Broker::start();
    let sub = Client::connect(broker.shard(0), "order-sub").await;
    let publisher = Client::connect(broker.shard(1), "order-pub").await;
    sub.subscribe("order/#", RQoS::AtLeastOnce).await;
    Sync::new(&broker).barrier(0, 1);
    for i in 0..50u32 {
        publisher
            .client
            .publish(
                "order/x",
                RQoS::AtLeastOnce,
                false,
                i.to_be_bytes().to_vec(),
            )
            .await
            .unwrap();
    }
    for i in 0..50u32 {
        let got = sub.recv_publish().await;
        assert_eq!(
            got.payload,
            i.to_be_bytes().to_vec(),
            "message {i} in order"
        );
    }
}

/// QoS 2 with raw bytes, both halves checked packet by packet:
/// publisher → PUBLISH, broker → PUBREC, publisher → PUBREL, broker → PUBCOMP;
/// broker → PUBLISH, subscriber → PUBREC, broker → PUBREL, subscriber → PUBCOMP.
#[test]
fn qos2_exchange_packet_by_packet() {
    let broker = Broker::start();
    let (mut sub, _) = Raw::connect(broker.shard(0), "q2-sub", true);
    let suback = sub.subscribe(1, "q2/topic", QoS::ExactlyOnce);
    assert_eq!(suback.reasons, vec![ReasonCode::GrantedQos2]);
    Sync::new(&broker).barrier(0, 1);
    let (mut publisher, _) = Raw::connect(broker.shard(1), "q2-pub", true);

    publisher.send(Packet::Publish(publish_packet(
        "q2/topic",
        b"exactly once",
        QoS::ExactlyOnce,
        false,
        7,
    )));
    match publisher.recv() {
        Packet::PubRec(ack) => assert_eq!(ack.packet_id, 7),
        other => panic!("expected PUBREC 7, got {other:?}"),
    }

    let got = sub.recv_publish();
    assert_eq!(got.qos, QoS::ExactlyOnce);
    assert_eq!(got.topic.as_str(), "q2/topic");
    assert_eq!(&got.payload[..], b"exactly once");
    assert!(!got.dup);
    assert!(!got.retain);
    assert_ne!(got.packet_id, 0);
    sub.send(Packet::PubRec(Ack::new(got.packet_id)));
    match sub.recv() {
        Packet::PubRel(ack) => assert_eq!(ack.packet_id, got.packet_id),
        other => panic!("expected PUBREL {}, got {other:?}", got.packet_id),
    }
    sub.send(Packet::PubComp(Ack::new(got.packet_id)));

    publisher.send(Packet::PubRel(Ack::new(7)));
    match publisher.recv() {
        Packet::PubComp(ack) => assert_eq!(ack.packet_id, 7),
        other => panic!("expected PUBCOMP 7, got {other:?}"),
    }
    // The flow is over: no retransmission, no second copy, and both connections still work.
    sub.expect_silence(QUIET);
    sub.ping();
    publisher.ping();
}

/// The same QoS 2 PUBLISH (same packet id, DUP = 1 the second time) received twice before
/// PUBREL is delivered once; after PUBREL the id starts a new message.
#[test]
fn qos2_inbound_duplicate_is_delivered_once() {
    let broker = Broker::start();
    let (mut sub, _) = Raw::connect(broker.shard(0), "dedup-sub", true);
    sub.subscribe(1, "dedup/t", QoS::AtLeastOnce);
    Sync::new(&broker).barrier(0, 1);
    let (mut publisher, _) = Raw::connect(broker.shard(1), "dedup-pub", true);

    let mut first = publish_packet("dedup/t", b"once", QoS::ExactlyOnce, false, 42);
    publisher.send(Packet::Publish(first.clone()));
    match publisher.recv() {
        Packet::PubRec(ack) => assert_eq!(ack.packet_id, 42),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    // Retransmission (as after a lost PUBREC): must be acknowledged again, not re-delivered.
    first.dup = true;
    publisher.send(Packet::Publish(first.clone()));
    match publisher.recv() {
        Packet::PubRec(ack) => assert_eq!(ack.packet_id, 42),
        other => panic!("expected a second PUBREC, got {other:?}"),
    }

    let got = sub.recv_publish();
    assert_eq!(&got.payload[..], b"once");
    ack_publish(&mut sub, &got);
    sub.expect_silence(QUIET);

    publisher.send(Packet::PubRel(Ack::new(42)));
    match publisher.recv() {
        Packet::PubComp(ack) => assert_eq!(ack.packet_id, 42),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    sub.expect_silence(QUIET);

    // A repeated PUBREL (its PUBCOMP was lost) is answered with PUBCOMP again (§4.3.3).
    publisher.send(Packet::PubRel(Ack::new(42)));
    match publisher.recv() {
        Packet::PubComp(ack) => assert_eq!(ack.packet_id, 42),
        other => panic!("expected PUBCOMP for a repeated PUBREL, got {other:?}"),
    }

    // Released: the same identifier now carries a new message.
    publisher.publish("dedup/t", b"again", QoS::ExactlyOnce, false, 42);
    let got = sub.recv_publish();
    assert_eq!(&got.payload[..], b"again");
    ack_publish(&mut sub, &got);
    sub.expect_silence(QUIET);
}

/// Delivery QoS is the lower of the published QoS and the granted QoS; never upgraded.
#[test]
fn qos_is_downgraded_to_the_granted_qos() {
    let broker = Broker::start();
    let mut subs: Vec<(Raw, QoS)> = Vec::new();
    for (i, granted) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let (mut sub, _) = Raw::connect(broker.shard(i % 2), &format!("down-{i}"), true);
        let suback = sub.subscribe(1, "down/t", granted);
        assert_eq!(suback.reasons.len(), 1);
        subs.push((sub, granted));
    }
    Sync::new(&broker).settle();
    let (mut publisher, _) = Raw::connect(broker.shard(1), "down-pub", true);
    for (n, published) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publisher.publish("down/t", b"m", published, false, 10 + n as u16);
        for (sub, granted) in &mut subs {
            let got = sub.recv_publish();
            let expected = published.min(*granted);
            assert_eq!(
                got.qos, expected,
                "published at {published:?}, granted {granted:?}"
            );
            if expected == QoS::AtMostOnce {
                assert_eq!(got.packet_id, 0);
            }
            ack_publish(sub, &got);
        }
    }
    for (sub, _) in &mut subs {
        sub.expect_silence(QUIET);
    }
}

/// `a/+` at QoS 0 and `a/#` at QoS 1 by one client: one copy, at QoS 1.
#[test]
fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    let broker = Broker::start();
    let (mut sub, _) = Raw::connect(broker.shard(0), "overlap-sub", true);
    assert_eq!(
        sub.subscribe(1, "a/+", QoS::AtMostOnce).reasons,
        vec![ReasonCode::Success]
    );
    assert_eq!(
        sub.subscribe(2, "a/#", QoS::AtLeastOnce).reasons,
        vec![ReasonCode::GrantedQos1]
    );
    Sync::new(&broker).barrier(0, 1);
    // Publisher on the same shard and on the other one.
    for (shard, id) in [(0, "overlap-pub0"), (1, "overlap-pub1")] {
        let (mut publisher, _) = Raw::connect(broker.shard(shard), id, true);
        for published in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            publisher.publish("a/b", id.as_bytes(), published, false, 5);
            let got = sub.recv_publish();
            assert_eq!(got.qos, QoS::AtLeastOnce, "published at {published:?}");
            assert_eq!(&got.payload[..], id.as_bytes());
            ack_publish(&mut sub, &got);
            sub.expect_silence(QUIET);
        }
    }
}

/// `max_inflight = 2`: a subscriber that does not acknowledge has at most two QoS 1 messages
/// outstanding; each PUBACK releases the next queued one, in order.
#[test]
fn inflight_window_limits_unacknowledged_messages() {
    let broker = Broker::start_with(|config| config.max_inflight = 2);
    let (mut sub, _) = Raw::connect(broker.shard(0), "window-sub", true);
    sub.subscribe(1, "window/t", QoS::AtLeastOnce);
    Sync::new(&broker).barrier(0, 1);
    let (mut publisher, _) = Raw::connect(broker.shard(1), "window-pub", true);
    for i in 0..5u8 {
        publisher.publish("window/t", &[i], QoS::AtLeastOnce, false, 1 + u16::from(i));
    }
    let mut outstanding: Vec<_> = (0..2).map(|_| sub.recv_publish()).collect();
    sub.expect_silence(QUIET);
    let mut received = Vec::new();
    while let Some(first) = (!outstanding.is_empty()).then(|| outstanding.remove(0)) {
        received.push(first.payload[0]);
        sub.send(Packet::PubAck(Ack::new(first.packet_id)));
        if received.len() + outstanding.len() < 5 {
            outstanding.push(sub.recv_publish());
        }
    }
    assert_eq!(received, vec![0, 1, 2, 3, 4]);
    sub.expect_silence(QUIET);
}

/// A payload close to the default 1 MiB packet limit crosses shards byte for byte, in both
/// directions, at QoS 0 and 1.
#[test]
fn large_payload_crosses_shards_intact() {
    let broker = Broker::start();
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for (sub_shard, pub_shard) in [(0, 1), (1, 0)] {
        let (mut sub, _) = Raw::connect(
            broker.shard(sub_shard),
            &format!("big-sub-{sub_shard}"),
            true,
        );
        sub.subscribe(1, "big/t", QoS::AtLeastOnce);
        Sync::new(&broker).barrier(sub_shard, pub_shard);
        let (mut publisher, _) = Raw::connect(
            broker.shard(pub_shard),
            &format!("big-pub-{pub_shard}"),
            true,
        );
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            publisher.publish("big/t", &payload, qos, false, 1);
            let got = sub.recv_publish();
            assert_eq!(got.payload.len(), payload.len());
            assert!(got.payload[..] == payload[..], "payload corrupted");
            ack_publish(&mut sub, &got);
        }
    }
}

/// A subscriber that stops reading (tiny receive buffer) becomes a slow consumer: QoS 1
/// messages to it are queued, not lost, and arrive in order once it reads again.
#[test]
fn slow_consumer_gets_every_qos1_message_in_order() {
    let broker = Broker::start_with(|config| {
        config.max_write_buffer = 8 * 1024;
        // The in-flight window must not be what holds messages back.
        config.max_inflight = 1000;
        config.max_queued_messages = 0;
    });
    let (mut sub, _) = Raw::connect_small_buffer(broker.shard(0), "slow-sub", 4096);
    sub.subscribe(1, "slow/t", QoS::AtLeastOnce);
    Sync::new(&broker).barrier(0, 1);
    let (mut publisher, _) = Raw::connect(broker.shard(1), "slow-pub", true);
    let payload = vec![b's'; 2048];
    let total = 600u16;
    for i in 0..total {
        let mut body = i.to_be_bytes().to_vec();
        body.extend_from_slice(&payload);
        publisher.publish("slow/t", &body, QoS::AtLeastOnce, false, i + 1);
    }
    for i in 0..total {
        let got = sub.recv_publish();
        assert_eq!(
            u16::from_be_bytes([got.payload[0], got.payload[1]]),
            i,
            "in order"
        );
        ack_publish(&mut sub, &got);
    }
    sub.expect_silence(QUIET);
}
