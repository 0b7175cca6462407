//! Persistent sessions (clean session = 0), their queue bound, resumption with DUP, clean
//! session = 1 discarding them, and takeover of a connected client id (3.1.1 and MQTT 5.0).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{ack_publish, Broker, Client, ClientV5, Raw, Sync, QUIET, TIMEOUT};
use rumqttc::QoS as RQoS;
use shardmq::codec::{Ack, Packet, ProtocolVersion, QoS, ReasonCode};

fn persistent_options(addr: std::net::SocketAddr, id: &str) -> rumqttc::MqttOptions {
    let mut options = common::mqtt_options(addr, id);
    options.set_clean_session(false);
    options
}

/// rumqttc, clean session = 0: subscribe, disconnect, messages published meanwhile are queued
/// and delivered on reconnect with session present = 1, on whichever shard it reconnects.
#[tokio::test]
async fn offline_messages_are_delivered_on_reconnect() {
    let broker = Broker::start();
    let mut sync = Sync::new(&broker);
    let publisher = Client::connect(broker.shard(1), "ps-pub").await;

    let (sub, connack) = Client::connect_with(persistent_options(broker.shard(0), "ps-sub")).await;
    assert!(!connack.session_present, "first connection: no session yet");
    sub.subscribe("ps/t", RQoS::AtLeastOnce).await;
    sub.disconnect().await;
    drop(sub);
    sync.settle();

    // Reconnect on the other shard, then back on the first: the session moves each time.
    for (round, shard) in [1, 0].into_iter().enumerate() {
        for i in 0..3 {
            let payload = format!("offline {round}.{i}");
            publisher
                .publish("ps/t", RQoS::AtLeastOnce, false, payload.as_bytes())
                .await;
        }
        let (sub, connack) =
            Client::connect_with(persistent_options(broker.shard(shard), "ps-sub")).await;
        assert!(
            connack.session_present,
            "clean session 0 resumes the stored session"
        );
        for i in 0..3 {
            let got = sub.recv_publish().await;
            assert_eq!(got.payload, format!("offline {round}.{i}").as_bytes());
            assert_eq!(got.qos, RQoS::AtLeastOnce);
        }
        sub.expect_no_publish(QUIET).await;
        // The subscription survived the move: a live publish arrives too.
        sync.settle();
        publisher
            .publish("ps/t", RQoS::AtLeastOnce, false, b"live")
            .await;
        assert_eq!(&sub.recv_publish().await.payload[..], b"live");
        sub.disconnect().await;
        drop(sub);
        sync.settle();
    }
}

/// A raw subscriber that never acknowledges: on resume the broker resends the unacknowledged
/// QoS 1 messages with DUP = 1, same packet identifiers, same order.
#[test]
fn unacknowledged_qos1_is_resent_with_dup_on_resume() {
    let broker = Broker::start();
    let mut sync = Sync::new(&broker);
    let (mut sub, connack) = Raw::connect(broker.shard(0), "dup-sub", false);
    assert!(!connack.session_present);
    sub.subscribe(1, "dup/t", QoS::AtLeastOnce);
    sync.barrier(0, 1);
    let (mut publisher, _) = Raw::connect(broker.shard(1), "dup-pub", true);
    publisher.publish("dup/t", b"one", QoS::AtLeastOnce, false, 1);
    publisher.publish("dup/t", b"two", QoS::AtLeastOnce, false, 2);
    let first: Vec<_> = (0..2).map(|_| sub.recv_publish()).collect();
    assert!(first.iter().all(|p| !p.dup && p.qos == QoS::AtLeastOnce));
    sub.drop_socket();

    for shard in [1, 0] {
        let (mut again, connack) = Raw::connect(broker.shard(shard), "dup-sub", false);
        assert!(connack.session_present);
        let resent: Vec<_> = (0..2).map(|_| again.recv_publish()).collect();
        for (old, new) in first.iter().zip(&resent) {
            assert!(new.dup, "a resent PUBLISH has DUP = 1: {new:?}");
            assert_eq!(new.packet_id, old.packet_id);
            assert_eq!(new.payload, old.payload);
            assert_eq!(new.qos, QoS::AtLeastOnce);
        }
        again.expect_silence(QUIET);
        // Not acknowledged this time either: dropped again, resent again on the next round.
        again.drop_socket();
    }

    let (mut last, connack) = Raw::connect(broker.shard(1), "dup-sub", false);
    assert!(connack.session_present);
    for _ in 0..2 {
        let got = last.recv_publish();
        assert!(got.dup);
        last.send(Packet::PubAck(Ack::new(got.packet_id)));
    }
    sync.settle();
    publisher.publish("dup/t", b"three", QoS::AtLeastOnce, false, 3);
    let got = last.recv_publish();
    assert!(!got.dup, "a first delivery has DUP = 0");
    assert_eq!(&got.payload[..], b"three");
    last.send(Packet::PubAck(Ack::new(got.packet_id)));
    last.drop_socket();

    // Everything acknowledged: nothing is resent.
    let (mut done, connack) = Raw::connect(broker.shard(0), "dup-sub", false);
    assert!(connack.session_present);
    done.expect_silence(QUIET);
}

/// QoS 2 to a subscriber that sent PUBREC, got PUBREL, but never sent PUBCOMP: on resume the
/// broker resends the PUBREL (not the PUBLISH) — MQTT 3.1.1 §4.4.
#[test]
fn unfinished_qos2_resumes_with_pubrel() {
    let broker = Broker::start();
    let (mut sub, _) = Raw::connect(broker.shard(0), "rel-sub", false);
    sub.subscribe(1, "rel/t", QoS::ExactlyOnce);
    Sync::new(&broker).barrier(0, 1);
    let (mut publisher, _) = Raw::connect(broker.shard(1), "rel-pub", true);
    publisher.publish("rel/t", b"q2", QoS::ExactlyOnce, false, 1);
    let got = sub.recv_publish();
    assert_eq!(got.qos, QoS::ExactlyOnce);
    sub.send(Packet::PubRec(Ack::new(got.packet_id)));
    match sub.recv() {
        Packet::PubRel(ack) => assert_eq!(ack.packet_id, got.packet_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    sub.drop_socket();

    let (mut again, connack) = Raw::connect(broker.shard(1), "rel-sub", false);
    assert!(connack.session_present);
    match again.recv() {
        Packet::PubRel(ack) => assert_eq!(ack.packet_id, got.packet_id),
        other => panic!("expected the PUBREL to be resent, got {other:?}"),
    }
    again.send(Packet::PubComp(Ack::new(got.packet_id)));
    again.expect_silence(QUIET);
}

/// Clean session = 1 discards the stored session: session present = 0, no offline messages,
/// no subscriptions; and its own state does not outlive it either.
#[test]
fn clean_session_discards_the_session() {
    let broker = Broker::start();
    let mut sync = Sync::new(&broker);
    let (mut sub, _) = Raw::connect(broker.shard(0), "cs-sub", false);
    sub.subscribe(1, "cs/t", QoS::AtLeastOnce);
    sub.disconnect();
    sync.settle();
    let (mut publisher, _) = Raw::connect(broker.shard(1), "cs-pub", true);
    publisher.publish("cs/t", b"offline", QoS::AtLeastOnce, false, 1);

    let (mut clean, connack) = Raw::connect(broker.shard(0), "cs-sub", true);
    assert!(
        !connack.session_present,
        "clean session = 1: session present = 0"
    );
    clean.expect_silence(QUIET);
    sync.settle();
    publisher.publish("cs/t", b"after", QoS::AtLeastOnce, false, 2);
    sync.settle();
    clean.expect_silence(QUIET);
    clean.disconnect();

    let (mut fresh, connack) = Raw::connect(broker.shard(1), "cs-sub", false);
    assert!(
        !connack.session_present,
        "a clean session is not kept after it ends"
    );
    fresh.expect_silence(QUIET);
}

/// `max_queued_messages = 5`: 10 messages published while offline, 5 delivered.
#[test]
fn offline_queue_is_bounded() {
    let broker = Broker::start_with(|config| config.max_queued_messages = 5);
    let (mut sub, _) = Raw::connect(broker.shard(0), "bound-sub", false);
    sub.subscribe(1, "bound/t", QoS::AtLeastOnce);
    sub.disconnect();
    Sync::new(&broker).settle();
    let (mut publisher, _) = Raw::connect(broker.shard(1), "bound-pub", true);
    for i in 0..10u16 {
        publisher.publish("bound/t", &i.to_be_bytes(), QoS::AtLeastOnce, false, i + 1);
    }
    let (mut sub, connack) = Raw::connect(broker.shard(0), "bound-sub", false);
    assert!(connack.session_present);
    let mut got = Vec::new();
    loop {
        match sub.recv_for(QUIET) {
            common::Recv::Packet(Packet::Publish(publish)) => {
                ack_publish(&mut sub, &publish);
                got.push(u16::from_be_bytes([publish.payload[0], publish.payload[1]]));
            }
            common::Recv::Timeout => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        got.len(),
        5,
        "exactly max_queued_messages delivered: {got:?}"
    );
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
}

/// rumqttc: the same client id connects on shard 1 while connected on shard 0. The first
/// connection is closed; the second resumes the session (clean session 0) with its
/// subscriptions, so a publish reaches it.
#[tokio::test]
async fn takeover_across_shards_keeps_the_session() {
    let broker = Broker::start();
    let mut sync = Sync::new(&broker);
    let (first, _) = Client::connect_with(persistent_options(broker.shard(0), "tk-sub")).await;
    first.subscribe("tk/t", RQoS::AtLeastOnce).await;

    let (second, connack) =
        Client::connect_with(persistent_options(broker.shard(1), "tk-sub")).await;
    assert!(
        connack.session_present,
        "takeover with clean session 0 resumes the session"
    );
    first.wait_disconnected(TIMEOUT).await;

    sync.settle();
    let publisher = Client::connect(broker.shard(0), "tk-pub").await;
    publisher
        .publish("tk/t", RQoS::AtLeastOnce, false, b"to the new connection")
        .await;
    let got = second.recv_publish().await;
    assert_eq!(&got.payload[..], b"to the new connection");
    second.expect_no_publish(QUIET).await;
}

/// Takeover with clean session = 1: the old session is gone.
#[test]
fn takeover_with_clean_session_starts_afresh() {
    let broker = Broker::start();
    let (mut first, _) = Raw::connect(broker.shard(0), "tkc-sub", false);
    first.subscribe(1, "tkc/t", QoS::AtLeastOnce);
    let (mut second, connack) = Raw::connect(broker.shard(1), "tkc-sub", true);
    assert!(!connack.session_present);
    first.expect_closed(TIMEOUT);
    Sync::new(&broker).settle();
    let (mut publisher, _) = Raw::connect(broker.shard(0), "tkc-pub", true);
    publisher.publish("tkc/t", b"nobody", QoS::AtLeastOnce, false, 1);
    second.expect_silence(QUIET);
}

/// MQTT 5.0: the connection taken over receives DISCONNECT with reason 0x8E. The old
/// connection is a raw client: rumqttc 0.24 cannot parse a DISCONNECT that carries a reason code
/// but omits the property length (legal, MQTT 5.0 §3.14.2.2.1) and reports a plain EOF. The new
/// connection is rumqttc.
#[tokio::test]
async fn v5_takeover_sends_disconnect_0x8e() {
    let broker = Broker::start();
    let mut connect = common::connect_packet("tk5", true);
    connect.protocol = ProtocolVersion::V5;
    let (mut first, _) = Raw::connect_with(broker.shard(0), connect);
    let (second, _) = ClientV5::connect(broker.shard(1), "tk5", |_| {}).await;
    let packets = first.expect_closed(TIMEOUT);
    match &packets[..] {
        [Packet::Disconnect(disconnect)] => {
            assert_eq!(disconnect.reason, ReasonCode::SessionTakenOver);
            assert_eq!(disconnect.reason.as_u8(), 0x8E);
        }
        other => panic!("expected one DISCONNECT 0x8E, got {other:?}"),
    }
    // The new connection works.
    second
        .client
        .subscribe("tk5/t", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .unwrap();
    second
        .incoming(TIMEOUT, |p| {
            matches!(p, rumqttc::v5::mqttbytes::v5::Packet::SubAck(_)).then_some(())
        })
        .await
        .expect("SUBACK on the new connection");
}

/// A persistent subscriber moves to the other shard while a publisher on the old shard keeps
/// publishing at QoS 1: every acknowledged message reaches the session (duplicates allowed).
///
/// The session's queue is unbounded here: with the default bound (1,000) a subscriber that
/// falls behind on a loaded machine loses messages by design, and a queue half full throttles
/// the publisher; neither is what this test is about. The subscriber keeps reading until the
/// publisher is done.
#[test]
fn no_qos1_loss_while_a_session_moves_between_shards() {
    let broker = Broker::start_with(|config| config.max_queued_messages = 0);
    let (mut sub, _) = Raw::connect(broker.shard(0), "move-sub", false);
    sub.subscribe(1, "move/t", QoS::AtLeastOnce);
    let (mut publisher, _) = Raw::connect(broker.shard(0), "move-pub", true);
    let total = 2000u32;
    let publishing = std::thread::spawn(move || {
        for i in 0..total {
            let id = (i % 60000) as u16 + 1;
            publisher.publish("move/t", &i.to_be_bytes(), QoS::AtLeastOnce, false, id);
        }
        publisher
    });
    let mut seen = BTreeSet::new();
    record(&mut sub, &mut seen, Duration::from_millis(20));
    // Reconnect on the other shard and back, a few times, while messages flow.
    let mut current = sub;
    for round in 0..6 {
        let shard = 1 - round % 2;
        let (mut next, connack) = Raw::connect(broker.shard(shard), "move-sub", false);
        assert!(connack.session_present);
        for packet in current.expect_closed(TIMEOUT) {
            if let Packet::Publish(p) = packet {
                seen.insert(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
            }
        }
        record(&mut next, &mut seen, Duration::from_millis(20));
        current = next;
    }
    while !publishing.is_finished() {
        record(&mut current, &mut seen, Duration::from_millis(20));
    }
    let _publisher = publishing.join().unwrap();
    Sync::new(&broker).settle();
    record_until_quiet(&mut current, &mut seen);
    let missing: Vec<u32> = (0..total).filter(|i| !seen.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "{} messages lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

/// Receives and acknowledges PUBLISHes for `total`.
fn record(raw: &mut Raw, seen: &mut BTreeSet<u32>, total: Duration) {
    let deadline = std::time::Instant::now() + total;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        match raw.recv_for(left) {
            common::Recv::Packet(Packet::Publish(p)) => {
                ack_publish(raw, &p);
                seen.insert(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
            }
            common::Recv::Packet(other) => panic!("unexpected {other:?}"),
            common::Recv::Timeout => return,
            common::Recv::Closed => panic!("connection closed"),
        }
    }
}

/// Receives and acknowledges PUBLISHes until none comes for [`QUIET`].
fn record_until_quiet(raw: &mut Raw, seen: &mut BTreeSet<u32>) {
    loop {
        match raw.recv_for(QUIET) {
            common::Recv::Packet(Packet::Publish(p)) => {
                ack_publish(raw, &p);
                seen.insert(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
            }
            common::Recv::Timeout => return,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Takeover between every pair of shards, the same shard included: the old connection is
/// closed, the new one resumes the session (clean session 0) and its subscription works.
#[test]
fn takeover_in_every_direction() {
    let broker = Broker::start();
    let mut sync = Sync::new(&broker);
    let (mut publisher, _) = Raw::connect(broker.shard(0), "dir-pub", true);
    for (n, (from, to)) in [(0, 1), (1, 0), (0, 0), (1, 1)].into_iter().enumerate() {
        let id = format!("dir-{n}");
        let topic = format!("dir/{n}");
        let (mut old, connack) = Raw::connect(broker.shard(from), &id, false);
        assert!(!connack.session_present);
        old.subscribe(1, &topic, QoS::AtLeastOnce);
        let (mut new, connack) = Raw::connect(broker.shard(to), &id, false);
        assert!(connack.session_present, "{from} -> {to}");
        assert!(
            old.expect_closed(TIMEOUT).is_empty(),
            "3.1.1: closed without DISCONNECT"
        );
        sync.settle();
        publisher.publish(&topic, b"moved", QoS::AtLeastOnce, false, 1 + n as u16);
        let got = new.recv_publish();
        assert_eq!(&got.payload[..], b"moved", "{from} -> {to}");
        ack_publish(&mut new, &got);
        new.expect_silence(Duration::from_millis(100));
    }
}

/// Two connections with the same client id CONNECT at the same moment on different shards:
/// both get a CONNACK, exactly one survives, and it works.
#[test]
fn simultaneous_connects_with_one_client_id() {
    let broker = Broker::start();
    for round in 0..10 {
        let id = format!("twin-{round}");
        let barrier = std::sync::Barrier::new(2);
        let (a, b) = std::thread::scope(|scope| {
            let connect = |shard: usize| {
                let barrier = &barrier;
                let id = &id;
                let broker = &broker;
                scope.spawn(move || {
                    let mut raw = Raw::tcp(broker.shard(shard));
                    barrier.wait();
                    raw.send(Packet::Connect(Box::new(common::connect_packet(id, false))));
                    match raw.recv() {
                        Packet::ConnAck(connack) => assert_eq!(connack.reason, ReasonCode::Success),
                        other => panic!("expected CONNACK, got {other:?}"),
                    }
                    raw
                })
            };
            let a = connect(0);
            let b = connect(1);
            (a.join().unwrap(), b.join().unwrap())
        });
        let mut alive: Vec<Raw> = [a, b]
            .into_iter()
            .filter_map(|mut raw| {
                raw.send_bytes(&common::encode(&Packet::PingReq, ProtocolVersion::V3_1_1))
                    .ok()?;
                match raw.recv_for(TIMEOUT) {
                    common::Recv::Packet(Packet::PingResp) => Some(raw),
                    common::Recv::Closed => None,
                    other => panic!("round {round}: unexpected {other:?}"),
                }
            })
            .collect();
        assert_eq!(
            alive.len(),
            1,
            "round {round}: exactly one connection survives"
        );
        alive[0].subscribe(1, "twin/t", QoS::AtMostOnce);
        alive.pop().unwrap().disconnect();
    }
}

/// Connect / disconnect (or drop) the same client id in quick succession, alternating shards:
/// every CONNECT is answered, and session present follows the clean session flags.
#[test]
fn rapid_reconnects_are_always_answered() {
    let broker = Broker::start();
    let mut had_persistent = false;
    for i in 0..60u32 {
        let clean = i % 3 == 0;
        let (raw, connack) = Raw::connect(broker.shard((i % 2) as usize), "rapid", clean);
        let expected = !clean && had_persistent;
        assert_eq!(
            connack.session_present, expected,
            "connect {i} (clean = {clean})"
        );
        had_persistent = !clean;
        if i % 2 == 0 {
            raw.disconnect();
        } else {
            raw.drop_socket();
        }
    }
}

/// `persistent_session_expiry = 1`: an offline clean-session-0 session is discarded after the
/// expiry (it would be kept forever without the setting).
#[test]
fn persistent_session_expires() {
    let broker = Broker::start_with(|config| config.persistent_session_expiry = Some(1));
    let (mut sub, _) = Raw::connect(broker.shard(0), "exp-sub", false);
    sub.subscribe(1, "exp/t", QoS::AtLeastOnce);
    sub.disconnect();
    // Still there right away.
    let (again, connack) = Raw::connect(broker.shard(1), "exp-sub", false);
    assert!(connack.session_present);
    again.disconnect();
    std::thread::sleep(Duration::from_millis(2600));
    let (mut late, connack) = Raw::connect(broker.shard(0), "exp-sub", false);
    assert!(
        !connack.session_present,
        "the session expired after 1 s offline"
    );
    late.expect_silence(Duration::from_millis(100));
}

/// Inbound QoS 2 state is part of the session: a publisher (clean session 0) that got PUBREC,
/// lost its connection and resends the PUBLISH (DUP = 1) from the other shard does not cause a
/// second delivery; its PUBREL then completes the flow.
#[test]
fn inbound_qos2_dedup_survives_reconnect() {
    let broker = Broker::start();
    let (mut sub, _) = Raw::connect(broker.shard(0), "q2r-sub", true);
    sub.subscribe(1, "q2r/t", QoS::AtLeastOnce);
    Sync::new(&broker).settle();

    let (mut publisher, _) = Raw::connect(broker.shard(1), "q2r-pub", false);
    let mut publish = common::publish_packet("q2r/t", b"once", QoS::ExactlyOnce, false, 5);
    publisher.send(Packet::Publish(publish.clone()));
    match publisher.recv() {
        Packet::PubRec(ack) => assert_eq!(ack.packet_id, 5),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    publisher.drop_socket();
    let got = sub.recv_publish();
    assert_eq!(&got.payload[..], b"once");
    ack_publish(&mut sub, &got);

    let (mut publisher, connack) = Raw::connect(broker.shard(0), "q2r-pub", false);
    assert!(connack.session_present);
    publish.dup = true;
    publisher.send(Packet::Publish(publish));
    match publisher.recv() {
        Packet::PubRec(ack) => assert_eq!(ack.packet_id, 5),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    publisher.send(Packet::PubRel(Ack::new(5)));
    match publisher.recv() {
        Packet::PubComp(ack) => assert_eq!(ack.packet_id, 5),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    sub.expect_silence(QUIET);
}
