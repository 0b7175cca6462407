//! Keep-alive (MQTT 3.1.1 §3.1.2.10): a silent client is disconnected after one and a half
//! keep-alive periods, not earlier; PINGREQ keeps a connection open. Also the lower bound of the
//! CONNECT timeout.

mod common;

use std::time::{Duration, Instant};

use common::{connect_packet, Broker, Client, Raw, TIMEOUT};

/// keep_alive = 1 and nothing sent after CONNECT: closed within ~3 s.
#[test]
fn silent_client_is_disconnected() {
    let broker = Broker::start();
    let mut connect = connect_packet("ka-silent", true);
    connect.keep_alive = 1;
    let start = Instant::now();
    let (mut raw, _) = Raw::connect_with(broker.shard(0), connect);
    let packets = raw.expect_closed(Duration::from_secs(4));
    assert!(
        packets.is_empty(),
        "3.1.1: closed without a packet, got {packets:?}"
    );
    assert!(
        start.elapsed() <= Duration::from_millis(3300),
        "closed after {:?}",
        start.elapsed()
    );
}

/// keep_alive = 1 with a PINGREQ every 500 ms: every PINGREQ is answered and the connection
/// stays open for 3 s.
#[test]
fn pingreq_keeps_the_connection_open() {
    let broker = Broker::start();
    let mut connect = connect_packet("ka-pinger", true);
    connect.keep_alive = 1;
    let (mut raw, _) = Raw::connect_with(broker.shard(1), connect);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(500));
        raw.ping();
    }
}

/// rumqttc with keep-alive 1 s pings on its own and is never disconnected.
#[tokio::test]
async fn rumqttc_with_keep_alive_1s_stays_connected() {
    let broker = Broker::start();
    let mut options = common::mqtt_options(broker.shard(0), "ka-rumqttc");
    options.set_keep_alive(Duration::from_secs(1));
    let (client, _) = Client::connect_with(options).await;
    for _ in 0..2 {
        client
            .outgoing(TIMEOUT, |o| {
                matches!(o, rumqttc::Outgoing::PingReq).then_some(())
            })
            .await
            .expect("rumqttc sends PINGREQ");
        client
            .incoming(TIMEOUT, |p| {
                matches!(p, rumqttc::Packet::PingResp).then_some(())
            })
            .await
            .expect("PINGRESP");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!client.events.finished(), "still connected");
    client.subscribe("ka/t", rumqttc::QoS::AtLeastOnce).await;
}

/// Runs `clients` connections staggered by 100 ms across one second of the broker's clock, each
/// doing `setup` then staying silent; returns how long after its last byte each was closed.
fn silence_to_close(
    broker: &Broker,
    clients: u32,
    setup: fn(&Broker, u32) -> Raw,
) -> Vec<Duration> {
    let start = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                scope.spawn(move || {
                    std::thread::sleep(
                        (start + Duration::from_millis(100) * i)
                            .saturating_duration_since(Instant::now()),
                    );
                    let mut raw = setup(broker, i);
                    let last = Instant::now();
                    raw.expect_closed(Duration::from_secs(5));
                    last.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The server must allow one and a half keep-alive periods of silence (MQTT 3.1.1 §3.1.2.10):
/// with keep_alive = 1 no connection may be closed less than 1.5 s after its last packet,
/// whatever the phase of the broker's clock when the packet arrived.
#[test]
fn keep_alive_allows_one_and_a_half_periods() {
    let broker = Broker::start();
    let gaps = silence_to_close(&broker, 10, |broker, i| {
        let mut connect = connect_packet(&format!("ka-phase-{i}"), true);
        connect.keep_alive = 1;
        let (mut raw, _) = Raw::connect_with(broker.shard(i as usize % 2), connect);
        raw.ping();
        raw
    });
    for (i, gap) in gaps.iter().enumerate() {
        assert!(
            *gap >= Duration::from_millis(1450) && *gap <= Duration::from_millis(3300),
            "client {i} closed {gap:?} after its last packet; allowed 1.5 s (+ timer slack): {gaps:?}"
        );
    }
}

/// `connect_timeout = 2`: no connection is closed for a missing CONNECT less than ~2 s after it
/// was opened, whatever the phase of the broker's clock.
#[test]
fn connect_timeout_is_not_cut_short() {
    let broker = Broker::start_with(|config| config.connect_timeout = 2);
    let gaps = silence_to_close(&broker, 10, |broker, i| {
        Raw::tcp(broker.shard(i as usize % 2))
    });
    for (i, gap) in gaps.iter().enumerate() {
        assert!(
            *gap >= Duration::from_millis(1900),
            "connection {i} closed {gap:?} after it opened; connect_timeout is 2 s: {gaps:?}"
        );
    }
}
