//! Cross-shard routing, placed deterministically with the per-shard listeners: subscriber on
//! one shard, publisher on the other, both ways; UNSUBSCRIBE stops delivery across shards; the
//! SO_REUSEPORT address serves clients too.

mod common;

use common::{ack_publish, Broker, Client, Raw, Sync, QUIET};
use rumqttc::QoS as RQoS;
use shardmq::codec::QoS;

#[test]
fn delivery_from_the_other_shard_both_ways() {
    let broker = Broker::start();
    let mut sync = Sync::new(&broker);
    for (sub_shard, pub_shard) in [(0, 1), (1, 0)] {
        let (mut sub, _) = Raw::connect(
            broker.shard(sub_shard),
            &format!("xs-sub-{sub_shard}"),
            true,
        );
        let topic = format!("xs/{sub_shard}/to");
        sub.subscribe(1, &topic, QoS::ExactlyOnce);
        sync.barrier(sub_shard, pub_shard);
        let (mut publisher, _) = Raw::connect(
            broker.shard(pub_shard),
            &format!("xs-pub-{pub_shard}"),
            true,
        );
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            let payload = format!("from shard {pub_shard} at {qos:?}");
            publisher.publish(&topic, payload.as_bytes(), qos, false, 1 + i as u16);
            let got = sub.recv_publish();
            assert_eq!(got.topic.as_str(), topic);
            assert_eq!(got.payload, payload.as_bytes());
            assert_eq!(got.qos, qos);
            ack_publish(&mut sub, &got);
        }
        sub.expect_silence(QUIET);
    }
}

#[test]
fn unsubscribe_stops_delivery_across_shards() {
    let broker = Broker::start();
    let mut sync = Sync::new(&broker);
    for (sub_shard, pub_shard) in [(0, 1), (1, 0)] {
        let (mut sub, _) = Raw::connect(
            broker.shard(sub_shard),
            &format!("unsub-sub-{sub_shard}"),
            true,
        );
        // A second subscriber on the subscriber's shard keeps that shard interested in the
        // topic: only the per-session unsubscribe can stop delivery to the first one.
        let (mut other, _) = Raw::connect(
            broker.shard(sub_shard),
            &format!("unsub-other-{sub_shard}"),
            true,
        );
        let topic = format!("unsub/{sub_shard}");
        sub.subscribe(1, &topic, QoS::AtLeastOnce);
        other.subscribe(1, &topic, QoS::AtLeastOnce);
        sync.barrier(sub_shard, pub_shard);
        let (mut publisher, _) = Raw::connect(
            broker.shard(pub_shard),
            &format!("unsub-pub-{pub_shard}"),
            true,
        );

        publisher.publish(&topic, b"before", QoS::AtLeastOnce, false, 1);
        for client in [&mut sub, &mut other] {
            let got = client.recv_publish();
            assert_eq!(&got.payload[..], b"before");
            ack_publish(client, &got);
        }

        sub.unsubscribe(2, &topic);
        publisher.publish(&topic, b"after", QoS::AtLeastOnce, false, 2);
        let got = other.recv_publish();
        assert_eq!(&got.payload[..], b"after");
        ack_publish(&mut other, &got);
        sub.expect_silence(QUIET);

        // And with no subscriber left on that shard at all.
        other.unsubscribe(3, &topic);
        publisher.publish(&topic, b"nobody", QoS::AtLeastOnce, false, 3);
        other.expect_silence(QUIET);
        sub.expect_silence(std::time::Duration::ZERO);
        // Unsubscribing from a filter that has no subscription is still acknowledged.
        sub.unsubscribe(4, "never/subscribed");
    }
}

/// The subscription is in force when its SUBACK is sent: a publish made on the other shard
/// right after the SUBACK reaches the subscriber. (MQTT 3.1.1 §3.8.4: the SUBACK confirms the
/// subscription; a broker that routes on a lagging replica loses the first messages, e.g. the
/// reply in a request/response exchange.) Other tests wait with `Sync` instead.
#[test]
fn publish_right_after_suback_from_the_other_shard_is_delivered() {
    let broker = Broker::start();
    let (mut sub, _) = Raw::connect(broker.shard(0), "race-sub", true);
    let (mut publisher, _) = Raw::connect(broker.shard(1), "race-pub", true);
    for i in 0..100u16 {
        let topic = format!("race/{i}");
        sub.subscribe(i + 1, &topic, QoS::AtLeastOnce);
        publisher.publish(&topic, b"x", QoS::AtLeastOnce, false, i + 1);
        match sub.recv_for(std::time::Duration::from_secs(2)) {
            common::Recv::Packet(shardmq::codec::Packet::Publish(got)) => {
                assert_eq!(got.topic.as_str(), topic);
                ack_publish(&mut sub, &got);
            }
            other => panic!("iteration {i}: publish after SUBACK not delivered: {other:?}"),
        }
    }
}

#[tokio::test]
async fn reuseport_address_serves_clients_on_every_shard() {
    let broker = Broker::start();
    let mut clients = Vec::new();
    for i in 0..6 {
        let client = Client::connect(broker.addr, &format!("reuse-{i}")).await;
        client
            .subscribe(&format!("reuse/{i}"), RQoS::AtLeastOnce)
            .await;
        clients.push(client);
    }
    Sync::new(&broker).settle();
    // Each client publishes to the next one: whichever shards the kernel chose, all arrive.
    for i in 0..clients.len() {
        let to = (i + 1) % clients.len();
        clients[i]
            .publish(
                &format!("reuse/{to}"),
                RQoS::AtLeastOnce,
                false,
                format!("{i}").as_bytes(),
            )
            .await;
    }
    for (i, client) in clients.iter().enumerate() {
        let from = (i + clients.len() - 1) % clients.len();
        let got = client.recv_publish().await;
        assert_eq!(got.payload, format!("{from}").as_bytes());
    }
}

/// One publish, 40 subscribers spread over both shards: each gets it exactly once.
#[test]
fn fan_out_to_many_subscribers_on_both_shards() {
    let broker = Broker::start();
    let mut subs: Vec<Raw> = (0..40)
        .map(|i| {
            let (mut sub, _) = Raw::connect(broker.shard(i % 2), &format!("fan-{i}"), true);
            let filter = ["fan/t", "fan/+", "fan/#", "#"][i % 4];
            sub.subscribe(1, filter, QoS::AtLeastOnce);
            sub
        })
        .collect();
    Sync::new(&broker).settle();
    let (mut publisher, _) = Raw::connect(broker.shard(1), "fan-pub", true);
    publisher.publish("fan/t", b"everyone", QoS::AtLeastOnce, false, 1);
    for sub in &mut subs {
        let got = sub.recv_publish();
        assert_eq!(&got.payload[..], b"everyone");
        ack_publish(sub, &got);
    }
    for sub in &mut subs {
        sub.expect_silence(std::time::Duration::from_millis(20));
    }
}

/// Payloads large enough to be sent by reference (2 KiB and more), mixed with small ones that
/// are copied, fanned out at QoS 0 and 1 to rumqttc subscribers on both shards: every
/// subscriber gets every byte, in publish order.
#[tokio::test]
async fn large_payloads_fan_out_intact_and_in_order() {
    let broker = Broker::start();
    let mut subscribers = Vec::new();
    for i in 0..6 {
        let mut options = common::mqtt_options(broker.addr, &format!("big-sub-{i}"));
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, _) = Client::connect_with(options).await;
        client.subscribe("big/#", RQoS::AtLeastOnce).await;
        subscribers.push(client);
    }
    Sync::new(&broker).settle();
    let mut options = common::mqtt_options(broker.addr, "big-pub");
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (publisher, _) = Client::connect_with(options).await;
    let sizes = [
        100_000,
        2048,
        10,
        shardmq::codec::SHARE_MIN - 1,
        65_536,
        3,
        300_000,
    ];
    let payloads: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(n, &size)| (0..size).map(|i| (i * 7 + n * 13) as u8).collect())
        .collect();
    for (n, payload) in payloads.iter().enumerate() {
        let qos = if n % 2 == 0 {
            RQoS::AtLeastOnce
        } else {
            RQoS::AtMostOnce
        };
        publisher
            .publish(&format!("big/{n}"), qos, false, payload)
            .await;
    }
    for subscriber in &subscribers {
        for (n, payload) in payloads.iter().enumerate() {
            let got = subscriber.recv_publish().await;
            assert_eq!(got.topic, format!("big/{n}"), "in publish order");
            assert_eq!(got.payload.len(), payload.len());
            assert!(got.payload[..] == payload[..], "payload {n} intact");
        }
    }
}
