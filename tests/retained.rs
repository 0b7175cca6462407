//! Retained messages: set, replace, delete with an empty payload; delivered on subscribe with
//! the retain flag, through wildcards, whichever shard the subscriber is on; ordinary
//! deliveries to existing subscribers carry retain = 0 (MQTT 3.1.1 §3.3.1.3).

mod common;

use common::{ack_publish, Broker, Raw, Sync, QUIET};
use shardmq::codec::{Packet, Publish, QoS};

/// Subscribes `raw` to `filter` at `qos`, returns the retained messages that follow the SUBACK
/// (everything before the PINGRESP: the broker writes them right after the SUBACK), then
/// unsubscribes.
fn retained_on(raw: &mut Raw, filter: &str, qos: QoS) -> Vec<Publish> {
    raw.subscribe(1, filter, qos);
    raw.send(Packet::PingReq);
    let mut found = Vec::new();
    loop {
        match raw.recv() {
            Packet::PingResp => break,
            Packet::Publish(publish) => found.push(publish),
            other => panic!("expected retained PUBLISHes then PINGRESP, got {other:?}"),
        }
    }
    for publish in &found {
        ack_publish(raw, publish);
    }
    raw.unsubscribe(2, filter);
    found
}

fn payloads(found: &[Publish]) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<_> = found
        .iter()
        .map(|p| (p.topic.to_string(), p.payload.to_vec()))
        .collect();
    all.sort();
    all
}

#[test]
fn set_replace_and_delete_seen_from_both_shards() {
    let broker = Broker::start();
    let mut sync = Sync::new(&broker);
    let (mut publisher, _) = Raw::connect(broker.shard(0), "ret-pub", true);
    let (mut sub0, _) = Raw::connect(broker.shard(0), "ret-sub0", true);
    let (mut sub1, _) = Raw::connect(broker.shard(1), "ret-sub1", true);

    // Set (QoS 0 retained messages are kept too).
    publisher.publish("ret/a", b"v1", QoS::AtMostOnce, true, 0);
    publisher.ping();
    sync.settle();
    for sub in [&mut sub0, &mut sub1] {
        let found = retained_on(sub, "ret/a", QoS::AtLeastOnce);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(&found[0].payload[..], b"v1");
        assert!(
            found[0].retain,
            "retained delivery on subscribe has retain = 1"
        );
        assert_eq!(found[0].qos, QoS::AtMostOnce);
    }

    // Replace.
    publisher.publish("ret/a", b"v2", QoS::AtLeastOnce, true, 1);
    sync.settle();
    for sub in [&mut sub0, &mut sub1] {
        let found = retained_on(sub, "ret/a", QoS::AtLeastOnce);
        assert_eq!(payloads(&found), vec![("ret/a".into(), b"v2".to_vec())]);
        assert!(found[0].retain);
        assert_eq!(found[0].qos, QoS::AtLeastOnce);
    }

    // Delete: an empty retained payload removes it.
    publisher.publish("ret/a", b"", QoS::AtLeastOnce, true, 2);
    sync.settle();
    for sub in [&mut sub0, &mut sub1] {
        let found = retained_on(sub, "ret/a", QoS::AtLeastOnce);
        assert!(
            found.is_empty(),
            "deleted retained message still delivered: {found:?}"
        );
    }
}

#[test]
fn retained_through_wildcards_at_the_lower_qos() {
    let broker = Broker::start();
    let (mut publisher, _) = Raw::connect(broker.shard(0), "retw-pub", true);
    publisher.publish("retw/x/1", b"x1", QoS::AtLeastOnce, true, 1);
    publisher.publish("retw/x/2", b"x2", QoS::ExactlyOnce, true, 2);
    publisher.publish("retw/y/1", b"y1", QoS::AtLeastOnce, true, 3);
    publisher.publish("other", b"o", QoS::AtLeastOnce, false, 4);
    Sync::new(&broker).settle();

    for shard in [0, 1] {
        let (mut sub, _) = Raw::connect(broker.shard(shard), &format!("retw-sub-{shard}"), true);
        let found = retained_on(&mut sub, "retw/x/+", QoS::ExactlyOnce);
        assert_eq!(
            payloads(&found),
            vec![
                ("retw/x/1".into(), b"x1".to_vec()),
                ("retw/x/2".into(), b"x2".to_vec())
            ],
            "shard {shard}"
        );
        for publish in &found {
            assert!(publish.retain);
            let expected = if publish.topic.as_str() == "retw/x/2" {
                QoS::ExactlyOnce
            } else {
                QoS::AtLeastOnce
            };
            assert_eq!(publish.qos, expected);
        }

        let found = retained_on(&mut sub, "retw/#", QoS::AtMostOnce);
        assert_eq!(found.len(), 3, "shard {shard}: {found:?}");
        assert!(found.iter().all(|p| p.retain && p.qos == QoS::AtMostOnce));

        let found = retained_on(&mut sub, "#", QoS::AtLeastOnce);
        assert_eq!(
            found.len(),
            3,
            "shard {shard}: non-retained messages are not stored"
        );

        let found = retained_on(&mut sub, "+/+/1", QoS::AtLeastOnce);
        let topics: Vec<_> = payloads(&found).into_iter().map(|(t, _)| t).collect();
        assert_eq!(topics, vec!["retw/x/1".to_string(), "retw/y/1".to_string()]);
    }
}

/// Existing subscribers get a retained publish as an ordinary message: retain = 0 in 3.1.1.
/// Also an empty retained payload (the delete) reaches them (§3.3.1.3: "processed as normal").
#[test]
fn live_deliveries_carry_retain_0() {
    let broker = Broker::start();
    let mut subs = Vec::new();
    for shard in [0, 1] {
        let (mut sub, _) = Raw::connect(broker.shard(shard), &format!("live-{shard}"), true);
        sub.subscribe(1, "live/t", QoS::AtLeastOnce);
        subs.push(sub);
    }
    Sync::new(&broker).settle();
    let (mut publisher, _) = Raw::connect(broker.shard(0), "live-pub", true);
    for (i, payload) in [&b"retained"[..], b""].into_iter().enumerate() {
        publisher.publish("live/t", payload, QoS::AtLeastOnce, true, 1 + i as u16);
        for sub in &mut subs {
            let got = sub.recv_publish();
            assert_eq!(&got.payload[..], payload);
            assert!(!got.retain, "3.1.1 live delivery must have retain = 0");
            ack_publish(sub, &got);
        }
    }
    for sub in &mut subs {
        sub.expect_silence(QUIET);
    }
}

/// A retained message acknowledged (PUBACK) on shard 0 is there for a SUBSCRIBE on shard 1
/// that follows the PUBACK. Other tests wait with `Sync` first.
#[test]
fn retained_right_after_puback_is_seen_on_the_other_shard() {
    let broker = Broker::start();
    let (mut publisher, _) = Raw::connect(broker.shard(0), "retr-pub", true);
    let (mut sub, _) = Raw::connect(broker.shard(1), "retr-sub", true);
    for i in 0..20u16 {
        let topic = format!("retr/{i}");
        publisher.publish(&topic, b"kept", QoS::AtLeastOnce, true, i + 1);
        let found = retained_on(&mut sub, &topic, QoS::AtLeastOnce);
        assert_eq!(
            found.len(),
            1,
            "iteration {i}: retained message missing on shard 1"
        );
    }
}

/// Retained messages follow the matching rules too: `sport/#` gets the one on `sport`, `#` and
/// `+/x` do not get the one on `$other/x`, `$other/#` does.
#[test]
fn retained_matching_parent_level_and_dollar_topics() {
    let broker = Broker::start();
    let (mut publisher, _) = Raw::connect(broker.shard(0), "retd-pub", true);
    publisher.publish("sport", b"parent", QoS::AtLeastOnce, true, 1);
    publisher.publish("$other/x", b"dollar", QoS::AtLeastOnce, true, 2);
    Sync::new(&broker).settle();
    for shard in [0, 1] {
        let (mut sub, _) = Raw::connect(broker.shard(shard), &format!("retd-sub-{shard}"), true);
        let topics = |found: Vec<Publish>| -> Vec<String> {
            let mut topics: Vec<_> = found.iter().map(|p| p.topic.to_string()).collect();
            topics.sort();
            topics
        };
        assert_eq!(
            topics(retained_on(&mut sub, "sport/#", QoS::AtMostOnce)),
            vec!["sport"]
        );
        assert_eq!(
            topics(retained_on(&mut sub, "#", QoS::AtMostOnce)),
            vec!["sport"]
        );
        assert!(retained_on(&mut sub, "+/x", QoS::AtMostOnce).is_empty());
        assert_eq!(
            topics(retained_on(&mut sub, "$other/#", QoS::AtMostOnce)),
            vec!["$other/x"]
        );
        assert_eq!(
            topics(retained_on(&mut sub, "$other/+", QoS::AtMostOnce)),
            vec!["$other/x"]
        );
    }
}

/// A retained message set on shard 0 (PUBACK received) and then replaced, or deleted, from
/// shard 1 stays replaced or deleted: the later update wins on every shard, whichever shard
/// owns the topic.
#[test]
fn later_retained_update_from_another_shard_wins() {
    let broker = Broker::start();
    let (mut first, _) = Raw::connect(broker.shard(0), "reto-first", true);
    let (mut second, _) = Raw::connect(broker.shard(1), "reto-second", true);
    let topics: Vec<String> = (0..16).map(|i| format!("reto/{i}")).collect();
    for (i, topic) in topics.iter().enumerate() {
        let id = 1 + i as u16;
        first.publish(topic, b"old", QoS::AtLeastOnce, true, id);
        let newer: &[u8] = if i % 2 == 0 { b"new" } else { b"" };
        second.publish(topic, newer, QoS::AtLeastOnce, true, id);
    }
    Sync::new(&broker).settle();
    let mut wrong = Vec::new();
    for shard in [0, 1] {
        let (mut sub, _) = Raw::connect(broker.shard(shard), &format!("reto-sub-{shard}"), true);
        for (i, topic) in topics.iter().enumerate() {
            let found = payloads(&retained_on(&mut sub, topic, QoS::AtMostOnce));
            let expected = if i % 2 == 0 {
                vec![(topic.clone(), b"new".to_vec())]
            } else {
                vec![]
            };
            if found != expected {
                wrong.push(format!("shard {shard}, {topic}: {found:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "stale retained state: {wrong:#?}");
}
