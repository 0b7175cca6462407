//! Topic filters through the live broker, on the publisher's shard (subscription trie) and on
//! the other shard (interest index): `+`, `#`, `sport/#` matching `sport`, and the `$` rule.

mod common;

use std::collections::BTreeSet;

use common::{ack_publish, Broker, Raw, Recv, Sync, QUIET, TIMEOUT};
use shardmq::codec::{Packet, QoS};

const END: &str = "end";

/// Publishes every topic then `END` from `publisher`; returns, for each subscriber, the topics
/// it received before `END` (each subscriber is also subscribed to `END`).
fn deliveries(
    publisher: &mut Raw,
    subscribers: &mut [Raw],
    topics: &[&str],
) -> Vec<BTreeSet<String>> {
    for (i, topic) in topics.iter().chain([&END]).enumerate() {
        publisher.publish(
            topic,
            topic.as_bytes(),
            QoS::AtLeastOnce,
            false,
            1 + i as u16,
        );
    }
    subscribers
        .iter_mut()
        .map(|sub| {
            let mut got = BTreeSet::new();
            loop {
                let publish = sub.recv_publish();
                ack_publish(sub, &publish);
                if publish.topic.as_str() == END {
                    break got;
                }
                assert!(
                    got.insert(publish.topic.to_string()),
                    "{} delivered twice",
                    publish.topic
                );
            }
        })
        .collect()
}

#[test]
fn wildcards_match_on_both_shards() {
    let topics = [
        "sport",
        "sport/",
        "sport/tennis/player1",
        "sport/tennis/x/player1",
        "sport//player1",
        "/finance",
        "finance",
        "a/x",
        "$other/x",
    ];
    let table: &[(&str, &[&str])] = &[
        (
            "sport/+/player1",
            &["sport/tennis/player1", "sport//player1"],
        ),
        (
            "sport/#",
            &[
                "sport",
                "sport/",
                "sport/tennis/player1",
                "sport/tennis/x/player1",
                "sport//player1",
            ],
        ),
        (
            "#",
            &[
                "sport",
                "sport/",
                "sport/tennis/player1",
                "sport/tennis/x/player1",
                "sport//player1",
                "/finance",
                "finance",
                "a/x",
            ],
        ),
        ("+", &["sport", "finance"]),
        ("+/+", &["sport/", "/finance", "a/x"]),
        ("/+", &["/finance"]),
        ("+/x", &["a/x"]),
        ("$other/#", &["$other/x"]),
        ("+/+/+", &["sport//player1", "sport/tennis/player1"]),
        ("sport/tennis/player1/#", &["sport/tennis/player1"]),
    ];
    let broker = Broker::start();
    let mut subscribers = Vec::new();
    let mut expected = Vec::new();
    for shard in [0, 1] {
        for (i, (filter, matches)) in table.iter().enumerate() {
            let (mut sub, _) =
                Raw::connect(broker.shard(shard), &format!("wild-{shard}-{i}"), true);
            let suback =
                sub.subscribe_many(1, &[(filter, QoS::AtLeastOnce), (END, QoS::AtLeastOnce)]);
            assert_eq!(suback.reasons.len(), 2);
            assert!(
                suback.reasons.iter().all(|r| !r.is_error()),
                "{filter}: {suback:?}"
            );
            subscribers.push(sub);
            expected.push((
                format!("{filter} (subscriber on shard {shard})"),
                matches
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<BTreeSet<_>>(),
            ));
        }
    }
    Sync::new(&broker).settle();
    let (mut publisher, _) = Raw::connect(broker.shard(1), "wild-pub", true);
    let got = deliveries(&mut publisher, &mut subscribers, &topics);
    for ((what, expected), got) in expected.iter().zip(got) {
        assert_eq!(&got, expected, "filter {what}");
    }
}

/// `#` and `+` never match topics starting with `$`; a client cannot publish to `$SYS`.
#[test]
fn dollar_topics() {
    // The broker's own `$SYS/broker/...` updates are off: this test is about what clients may
    // (not) put under `$SYS` (tests/sys.rs covers the broker's topics).
    let broker = Broker::start_with(|config| config.sys_interval = 0);
    let mut hash = Vec::new();
    let mut sys = Vec::new();
    for shard in [0, 1] {
        let (mut h, _) = Raw::connect(broker.shard(shard), &format!("dollar-hash-{shard}"), true);
        h.subscribe_many(
            1,
            &[
                ("#", QoS::AtMostOnce),
                ("+/x", QoS::AtMostOnce),
                ("+/+", QoS::AtMostOnce),
            ],
        );
        hash.push(h);
        let (mut s, _) = Raw::connect(broker.shard(shard), &format!("dollar-sys-{shard}"), true);
        s.subscribe_many(
            1,
            &[("$SYS/#", QoS::AtMostOnce), ("$other/#", QoS::AtMostOnce)],
        );
        sys.push(s);
    }
    let mut sync = Sync::new(&broker);
    sync.settle();

    for pub_shard in [0, 1] {
        let (mut publisher, _) = Raw::connect(
            broker.shard(pub_shard),
            &format!("dollar-pub-{pub_shard}"),
            true,
        );
        // `$other/x` is an ordinary (if unusual) topic: `$other/#` gets it, `#` and `+/x` not.
        publisher.publish("$other/x", b"dollar", QoS::AtLeastOnce, false, 1);
        for s in &mut sys {
            let got = s.recv_publish();
            assert_eq!(got.topic.as_str(), "$other/x");
        }
        for h in &mut hash {
            h.expect_silence(QUIET);
        }

        // `$SYS/x` from a client is refused: PUBACK or a closed connection are both fine, a
        // delivery is not.
        publisher.send(Packet::Publish(common::publish_packet(
            "$SYS/x",
            b"forged",
            QoS::AtLeastOnce,
            false,
            2,
        )));
        match publisher.recv_for(TIMEOUT) {
            Recv::Packet(Packet::PubAck(ack)) => assert_eq!(ack.packet_id, 2),
            Recv::Closed => {}
            other => panic!("expected PUBACK or close after a $SYS publish, got {other:?}"),
        }
        // Not stored either, when sent with the retain flag.
        publisher.send(Packet::Publish(common::publish_packet(
            "$SYS/retained",
            b"forged",
            QoS::AtMostOnce,
            true,
            0,
        )));
        // Let any forward reach the other shard before looking.
        sync.settle();
        for s in &mut sys {
            s.expect_silence(QUIET);
        }
        for h in &mut hash {
            h.expect_silence(std::time::Duration::ZERO);
        }
    }
    for shard in [0, 1] {
        let (mut late, _) =
            Raw::connect(broker.shard(shard), &format!("dollar-late-{shard}"), true);
        late.subscribe(1, "$SYS/#", QoS::AtMostOnce);
        late.expect_silence(QUIET);
    }
}
