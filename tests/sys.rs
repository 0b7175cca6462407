//! `$SYS/broker/...` through a real client: Mosquitto's topic names, values that follow known
//! traffic, retained for late subscribers, and still read-only for clients.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Broker, Client, Raw, TIMEOUT};
use shardmq::codec::{Packet, QoS};

/// Reads `$SYS` updates until `done` holds for the latest values (or panics at the deadline).
fn watch_sys(raw: &mut Raw, mut done: impl FnMut(&HashMap<String, String>) -> bool) {
    let mut values = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let common::Recv::Packet(Packet::Publish(publish)) = raw.recv_for(TIMEOUT) {
            let value = String::from_utf8_lossy(&publish.payload).into_owned();
            values.insert(publish.topic.to_string(), value);
            if done(&values) {
                return;
            }
        }
    }
    panic!("$SYS never showed the expected values: {values:#?}");
}

fn number(values: &HashMap<String, String>, name: &str) -> u64 {
    values
        .get(&format!("$SYS/broker/{name}"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn sys_topics_follow_the_traffic() {
    let broker = Broker::start_with(|config| config.sys_interval = 1);
    let subscriber = Client::connect(broker.shard(0), "sys-sub").await;
    subscriber
        .subscribe("sys/test", rumqttc::QoS::AtLeastOnce)
        .await;
    let publisher = Client::connect(broker.shard(1), "sys-pub").await;
    for i in 0..10u8 {
        publisher
            .publish("sys/test", rumqttc::QoS::AtLeastOnce, false, &[i])
            .await;
    }
    for _ in 0..10 {
        subscriber.recv_publish().await;
    }
    let (mut watcher, _) = Raw::connect(broker.shard(0), "sys-watch", true);
    watcher.subscribe(1, "$SYS/broker/#", QoS::AtMostOnce);
    watch_sys(&mut watcher, |values| {
        number(values, "publish/messages/received") >= 10
            && number(values, "publish/messages/sent") >= 10
            && number(values, "clients/connected") == 3
            && number(values, "subscriptions/count") >= 2
            && values.contains_key("$SYS/broker/load/messages/received/1min")
            && values
                .get("$SYS/broker/version")
                .is_some_and(|v| v.starts_with("shardmq version"))
            && values
                .get("$SYS/broker/uptime")
                .is_some_and(|v| v.ends_with(" seconds"))
    });
    // A `#` subscriber does not see `$SYS` (MQTT: wildcards do not match `$` topics).
    let (mut everything, _) = Raw::connect(broker.shard(1), "sys-hash", true);
    everything.subscribe(1, "#", QoS::AtMostOnce);
    everything.expect_silence(Duration::from_millis(1500));
}

#[test]
fn sys_can_be_turned_off() {
    let broker = Broker::start_with(|config| config.sys_interval = 0);
    let (mut watcher, _) = Raw::connect(broker.shard(0), "sys-off", true);
    watcher.subscribe(1, "$SYS/#", QoS::AtMostOnce);
    watcher.expect_silence(Duration::from_millis(1500));
}
