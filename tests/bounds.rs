//! Operator bounds: subscriptions per client, retained messages and retained bytes. Beyond them
//! the broker refuses cleanly (SUBACK reason code; retained message delivered but not kept),
//! counts the refusals and keeps serving.

mod common;

use std::time::Duration;

use common::{Broker, Raw, QUIET, TIMEOUT};
use shardmq::codec::{Packet, ProtocolVersion, QoS, ReasonCode};

#[test]
fn subscriptions_per_client_are_bounded() {
    let broker = Broker::start_with(|config| config.max_subscriptions_per_client = 2);
    let (mut v3, _) = Raw::connect(broker.shard(0), "bound-v3", true);
    let suback = v3.subscribe_many(
        1,
        &[
            ("a/1", QoS::AtLeastOnce),
            ("a/2", QoS::AtLeastOnce),
            ("a/3", QoS::AtLeastOnce),
        ],
    );
    assert_eq!(
        suback.reasons,
        // MQTT 3.1.1 has one failure code, 0x80 (read back as "unspecified error").
        [
            ReasonCode::GrantedQos1,
            ReasonCode::GrantedQos1,
            ReasonCode::UnspecifiedError
        ]
    );
    // Re-subscribing to a filter it has is not a new subscription.
    let again = v3.subscribe(2, "a/2", QoS::AtMostOnce);
    assert_eq!(again.reasons, [ReasonCode::Success]);
    // After an unsubscribe there is room again.
    v3.unsubscribe(3, "a/1");
    let room = v3.subscribe(4, "a/3", QoS::AtLeastOnce);
    assert_eq!(room.reasons, [ReasonCode::GrantedQos1]);

    let mut connect = common::connect_packet("bound-v5", true);
    connect.protocol = ProtocolVersion::V5;
    let (mut v5, _) = Raw::connect_with(broker.shard(1), connect);
    let suback = v5.subscribe_many(
        1,
        &[
            ("b/1", QoS::AtMostOnce),
            ("b/2", QoS::AtMostOnce),
            ("b/3", QoS::AtMostOnce),
        ],
    );
    assert_eq!(suback.reasons[2], ReasonCode::QuotaExceeded);
    v5.ping();
    common::wait_until(TIMEOUT, "the refusals to be counted", || {
        broker
            .stats()
            .iter()
            .map(|s| s.subscriptions_refused)
            .sum::<u64>()
            == 2
    });
}

#[test]
fn retained_messages_are_bounded() {
    let broker = Broker::start_with(|config| {
        config.max_retained_messages = 2;
        config.max_retained_bytes = 10;
    });
    let (mut publisher, _) = Raw::connect(broker.shard(0), "bound-pub", true);
    publisher.publish("r/1", b"one", QoS::AtLeastOnce, true, 1);
    publisher.publish("r/2", b"two", QoS::AtLeastOnce, true, 2);
    // A third topic: delivered to subscribers, acknowledged, not retained.
    let (mut live, _) = Raw::connect(broker.shard(1), "bound-live", true);
    live.subscribe(1, "r/3", QoS::AtLeastOnce);
    common::Sync::new(&broker).settle();
    publisher.publish("r/3", b"three", QoS::AtLeastOnce, true, 3);
    let got = live.recv_publish();
    assert_eq!(&got.payload[..], b"three");
    // Replacing a kept topic within the byte budget works; beyond it, the old value stays.
    publisher.publish("r/1", b"uno", QoS::AtLeastOnce, true, 4);
    publisher.publish("r/2", b"much too long", QoS::AtLeastOnce, true, 5);
    common::Sync::new(&broker).settle();
    let (mut late, _) = Raw::connect(broker.shard(1), "bound-late", true);
    late.subscribe(1, "r/#", QoS::AtMostOnce);
    let mut kept = Vec::new();
    while let common::Recv::Packet(Packet::Publish(p)) = late.recv_for(QUIET) {
        kept.push((p.topic.to_string(), p.payload.to_vec()));
    }
    kept.sort();
    assert_eq!(
        kept,
        [
            ("r/1".to_string(), b"uno".to_vec()),
            ("r/2".to_string(), b"two".to_vec())
        ]
    );
    common::wait_until(Duration::from_secs(5), "the refusals to be counted", || {
        broker
            .stats()
            .iter()
            .map(|s| s.retained_refused)
            .sum::<u64>()
            == 2
    });
}

/// `$SYS` topics (retained, published by the broker) neither count against the retained bounds
/// nor are refused by them: a small budget hides no statistics and loses no client slot.
#[test]
fn sys_topics_are_outside_the_retained_bounds() {
    let broker = Broker::start_with(|config| {
        config.max_retained_messages = 1;
        config.max_retained_bytes = 4;
        config.sys_interval = 1;
    });
    let (mut watcher, _) = Raw::connect(broker.shard(1), "bound-sys", true);
    watcher.subscribe(1, "$SYS/broker/uptime", QoS::AtMostOnce);
    // The first $SYS round arrives live (and is retained).
    let uptime = watcher.recv_publish();
    assert_eq!(&uptime.topic[..], "$SYS/broker/uptime");
    let (mut publisher, _) = Raw::connect(broker.shard(0), "bound-sys-pub", true);
    publisher.publish("client/one", b"1234", QoS::AtLeastOnce, true, 1);
    common::Sync::new(&broker).settle();
    let (mut late, _) = Raw::connect(broker.shard(1), "bound-sys-late", true);
    let suback = late.subscribe_many(
        1,
        &[
            ("client/#", QoS::AtMostOnce),
            ("$SYS/broker/uptime", QoS::AtMostOnce),
        ],
    );
    assert_eq!(suback.reasons.len(), 2);
    let mut topics = Vec::new();
    while let common::Recv::Packet(Packet::Publish(p)) = late.recv_for(QUIET) {
        if p.retain {
            topics.push(p.topic.to_string());
        }
    }
    topics.sort();
    topics.dedup();
    assert_eq!(topics, ["$SYS/broker/uptime", "client/one"]);
    let refused: u64 = broker.stats().iter().map(|s| s.retained_refused).sum();
    assert_eq!(refused, 0);
}
