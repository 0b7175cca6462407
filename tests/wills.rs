//! Wills: published on keep-alive timeout, on a socket closed without DISCONNECT, on a protocol
//! violation, on takeover and on broker shutdown; not after DISCONNECT; QoS and retain flag
//! honoured. The will's owner and the subscriber are on different shards where it matters.

mod common;

use std::time::Duration;

use common::{ack_publish, connect_packet, will, Broker, Client, Raw, Recv, Sync, QUIET, TIMEOUT};
use rumqttc::{LastWill, QoS as RQoS};
use shardmq::codec::{Packet, Publish, QoS};

/// A subscriber to `will/#` on shard `shard`, visible to both shards.
fn will_watcher(broker: &Broker, shard: usize, id: &str) -> Raw {
    let (mut sub, _) = Raw::connect(broker.shard(shard), id, true);
    sub.subscribe(1, "will/#", QoS::AtLeastOnce);
    Sync::new(broker).settle();
    sub
}

fn expect_will(sub: &mut Raw, topic: &str, payload: &[u8], within: Duration) -> Publish {
    match sub.recv_for(within) {
        Recv::Packet(Packet::Publish(got)) => {
            assert_eq!(got.topic.as_str(), topic);
            assert_eq!(&got.payload[..], payload);
            ack_publish(sub, &got);
            got
        }
        other => panic!("expected the will on {topic}, got {other:?}"),
    }
}

/// A 3.1.1 client with keep-alive 1 s that then says nothing.
#[test]
fn will_on_keep_alive_timeout() {
    let broker = Broker::start();
    let mut sub = will_watcher(&broker, 0, "w-ka-sub");
    let mut connect = connect_packet("w-ka", true);
    connect.keep_alive = 1;
    connect.will = Some(will("will/ka", b"timed out", QoS::AtLeastOnce, false));
    let (mut silent, _) = Raw::connect_with(broker.shard(1), connect);
    let got = expect_will(&mut sub, "will/ka", b"timed out", Duration::from_secs(5));
    assert_eq!(got.qos, QoS::AtLeastOnce);
    assert!(!got.retain);
    silent.expect_closed(TIMEOUT);
}

/// rumqttc with a will; its event loop is dropped (socket closed, no DISCONNECT).
#[tokio::test]
async fn will_on_socket_close_without_disconnect() {
    let broker = Broker::start();
    let sub = Client::connect(broker.shard(0), "w-close-sub").await;
    sub.subscribe("will/#", RQoS::ExactlyOnce).await;
    Sync::new(&broker).settle();
    let mut options = common::mqtt_options(broker.shard(1), "w-close");
    options.set_last_will(LastWill::new(
        "will/close",
        "gone",
        RQoS::ExactlyOnce,
        false,
    ));
    let (victim, _) = Client::connect_with(options).await;
    drop(victim);
    let got = sub.recv_publish().await;
    assert_eq!(got.topic, "will/close");
    assert_eq!(&got.payload[..], b"gone");
    assert_eq!(got.qos, RQoS::ExactlyOnce);
    assert!(!got.retain);
    sub.expect_no_publish(QUIET).await;
}

/// A malformed packet (PUBREL with reserved flags 0000) closes the connection: will published.
#[test]
fn will_on_protocol_violation() {
    let broker = Broker::start();
    let mut sub = will_watcher(&broker, 0, "w-bad-sub");
    let mut connect = connect_packet("w-bad", true);
    connect.will = Some(will("will/bad", b"violated", QoS::AtMostOnce, false));
    let (mut bad, _) = Raw::connect_with(broker.shard(1), connect);
    bad.send_bytes(&[0x60, 0x02, 0x00, 0x01]).unwrap();
    bad.expect_closed(TIMEOUT);
    expect_will(&mut sub, "will/bad", b"violated", TIMEOUT);
}

/// The same client id connects on the other shard: the first connection's will is published.
#[test]
fn will_on_takeover() {
    let broker = Broker::start();
    let mut sub = will_watcher(&broker, 0, "w-take-sub");
    let mut connect = connect_packet("w-take", true);
    connect.will = Some(will("will/take", b"taken over", QoS::AtLeastOnce, false));
    let (mut first, _) = Raw::connect_with(broker.shard(0), connect);
    let (mut second, _) = Raw::connect(broker.shard(1), "w-take", true);
    first.expect_closed(TIMEOUT);
    expect_will(&mut sub, "will/take", b"taken over", TIMEOUT);
    // Exactly once, and the new connection (without a will) works.
    sub.expect_silence(QUIET);
    second.ping();
}

/// DISCONNECT discards the will.
#[test]
fn no_will_after_disconnect() {
    let broker = Broker::start();
    let mut sub = will_watcher(&broker, 0, "w-dis-sub");
    let mut sync = Sync::new(&broker);
    for shard in [0, 1] {
        let mut connect = connect_packet(&format!("w-dis-{shard}"), true);
        connect.will = Some(will("will/dis", b"must not fire", QoS::AtLeastOnce, false));
        let (polite, _) = Raw::connect_with(broker.shard(shard), connect);
        polite.disconnect();
    }
    sync.settle();
    sub.expect_silence(QUIET);
}

/// Will retain flag: a retained will is stored (a later subscriber gets it with retain = 1);
/// a non-retained one is not. Live subscribers get both with retain = 0 (3.1.1).
#[test]
fn will_retain_flag_is_honoured() {
    let broker = Broker::start();
    let mut sub = will_watcher(&broker, 0, "w-ret-sub");
    for (id, topic, retain) in [
        ("w-ret-1", "will/kept", true),
        ("w-ret-2", "will/not-kept", false),
    ] {
        let mut connect = connect_packet(id, true);
        connect.will = Some(will(topic, id.as_bytes(), QoS::AtLeastOnce, retain));
        let (victim, _) = Raw::connect_with(broker.shard(1), connect);
        victim.drop_socket();
        let got = expect_will(&mut sub, topic, id.as_bytes(), TIMEOUT);
        assert!(!got.retain, "live delivery of a will: retain = 0 in 3.1.1");
    }
    Sync::new(&broker).settle();
    for shard in [0, 1] {
        let (mut late, _) = Raw::connect(broker.shard(shard), &format!("w-ret-late-{shard}"), true);
        late.subscribe(1, "will/#", QoS::AtLeastOnce);
        let got = late.recv_publish();
        assert_eq!(got.topic.as_str(), "will/kept");
        assert!(got.retain);
        ack_publish(&mut late, &got);
        late.expect_silence(QUIET);
    }
}

/// `shutdown()` closes every client without DISCONNECT from them: their wills are published,
/// and must reach subscribers before those are disconnected too (same shard and other shard).
#[test]
fn wills_on_broker_shutdown() {
    let broker = Broker::start();
    let mut sub = will_watcher(&broker, 0, "w-stop-sub");
    let mut victims = Vec::new();
    for shard in [0, 1] {
        let mut connect = connect_packet(&format!("w-stop-{shard}"), true);
        connect.will = Some(will(
            &format!("will/stop/{shard}"),
            b"bye",
            QoS::AtLeastOnce,
            false,
        ));
        victims.push(Raw::connect_with(broker.shard(shard), connect).0);
    }
    broker.signal_shutdown();
    let mut topics = Vec::new();
    for packet in sub.expect_closed(TIMEOUT) {
        if let Packet::Publish(publish) = packet {
            topics.push(publish.topic.to_string());
        }
    }
    topics.sort();
    assert_eq!(
        topics,
        vec!["will/stop/0".to_string(), "will/stop/1".to_string()]
    );
}
