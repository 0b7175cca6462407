//! Overload protection on the real broker: the memory budget, per-client publish rates and
//! per-listener connection rates. Each test drives a limit past its bound and checks that the
//! broker refuses or slows down the offender with the spec'd answer, keeps serving everyone
//! else, counts the episode, and recovers once the load is gone.

mod common;

use std::time::{Duration, Instant};

use common::{connect_packet, Broker, Raw, QUIET, TIMEOUT};
use shardmq::broker::ShardStats;
use shardmq::codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use shardmq::config::{ByteSize, RateAction};

fn total(broker: &Broker, field: impl Fn(&ShardStats) -> u64) -> u64 {
    broker.stats().iter().map(field).sum()
}

fn v5(client_id: &str) -> shardmq::codec::Connect {
    let mut connect = connect_packet(client_id, true);
    connect.protocol = ProtocolVersion::V5;
    connect
}

#[test]
fn over_the_memory_budget_connects_are_refused_and_publishers_wait() {
    let mut broker = Broker::start();
    let (mut subscriber, _) = Raw::connect(broker.shard(0), "mem-sub", true);
    subscriber.subscribe(1, "mem/#", QoS::AtMostOnce);
    let (mut publisher, _) = Raw::connect(broker.shard(1), "mem-pub", true);
    publisher.publish("mem/1", b"before", QoS::AtMostOnce, false, 0);
    assert_eq!(&subscriber.recv_publish().payload[..], b"before");

    // A budget of one byte: the process is over it at the next sample.
    broker.reload(|config| config.max_memory = ByteSize(1));
    common::wait_until(TIMEOUT, "every shard to see the memory pressure", || {
        let stats = broker.stats();
        stats.len() == 2 && stats.iter().all(|s| s.memory_pressure == 1)
    });

    // New clients are told the server is busy: 0x89, and 3 (server unavailable) for 3.1.1.
    let (_, refused) = Raw::try_connect(broker.shard(0), v5("mem-new-v5"));
    assert_eq!(refused.reason, ReasonCode::ServerBusy);
    let (_, refused) = Raw::try_connect(broker.shard(1), connect_packet("mem-new-v3", true));
    assert_eq!(refused.reason, ReasonCode::ServerUnavailable);

    // The publisher is not read: its message waits in the socket.
    publisher.publish("mem/2", b"during", QoS::AtMostOnce, false, 0);
    subscriber.expect_silence(Duration::from_secs(1));
    assert!(total(&broker, |s| s.memory_readers_paused) >= 1);
    // Clients that only subscribe are still served.
    subscriber.ping();

    // A generous budget: below its low-water mark, everything resumes and nothing was lost.
    broker.reload(|config| config.max_memory = ByteSize(64 << 30));
    assert_eq!(&subscriber.recv_publish().payload[..], b"during");
    common::wait_until(TIMEOUT, "the pressure to end", || {
        broker.stats().iter().all(|s| s.memory_pressure == 0)
    });
    let (_, accepted) = Raw::try_connect(broker.shard(0), v5("mem-after"));
    assert_eq!(accepted.reason, ReasonCode::Success);
    assert_eq!(total(&broker, |s| s.connects_refused_memory), 2);
}

#[test]
fn a_client_over_its_publish_rate_is_throttled_and_loses_nothing() {
    const RATE: u32 = 20;
    const SENT: usize = 60;
    let broker = Broker::start_with(|config| {
        config.max_publish_rate = RATE;
        config.publish_rate_action = RateAction::Throttle;
    });
    let (mut subscriber, _) = Raw::connect(broker.shard(0), "rate-sub", true);
    subscriber.subscribe(1, "rate/#", QoS::AtLeastOnce);
    let (mut flooder, _) = Raw::connect(broker.shard(1), "rate-flood", true);
    let (mut other, _) = Raw::connect(broker.shard(1), "rate-other", true);

    let started = Instant::now();
    for i in 0..SENT {
        flooder.publish("rate/flood", &i.to_be_bytes(), QoS::AtMostOnce, false, 0);
    }
    // Another client on the same shard is not slowed down by the flooder's throttling: its
    // PUBACK comes back (`publish` waits for it), and its message overtakes most of the flood.
    other.publish("rate/other", b"hello", QoS::AtLeastOnce, false, 1);

    let mut flood = Vec::new();
    let mut other_after = None;
    while flood.len() < SENT {
        let publish = subscriber.recv_publish();
        if publish.qos != QoS::AtMostOnce {
            common::ack_publish(&mut subscriber, &publish);
        }
        if &publish.topic[..] == "rate/other" {
            other_after = Some(flood.len());
            continue;
        }
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&publish.payload[..8]);
        flood.push(usize::from_be_bytes(bytes));
    }
    let elapsed = started.elapsed();
    // In order, none lost: throttling is backpressure, not loss.
    assert_eq!(flood, (0..SENT).collect::<Vec<_>>());
    let other_after = other_after.expect("the other client's message arrived");
    assert!(
        other_after < SENT - 10,
        "the other client's message waited behind {other_after} throttled ones"
    );
    // One second's burst, then RATE per second: at least (SENT - RATE) / RATE seconds (a lower
    // bound, which a slow machine cannot break).
    let floor = Duration::from_millis(1000 * (SENT as u64 - u64::from(RATE)) / u64::from(RATE));
    assert!(
        elapsed >= floor - Duration::from_millis(100),
        "{SENT} messages at {RATE}/s took only {elapsed:?}"
    );
    assert!(total(&broker, |s| s.rate_limit_pauses) >= 1);
    assert_eq!(total(&broker, |s| s.rate_limit_disconnects), 0);
}

#[test]
fn a_byte_rate_counts_payload_bytes() {
    let broker = Broker::start_with(|config| {
        config.max_publish_bytes_rate = ByteSize(10_000);
    });
    let (mut subscriber, _) = Raw::connect(broker.shard(0), "bytes-sub", true);
    subscriber.subscribe(1, "bytes/#", QoS::AtMostOnce);
    let (mut publisher, _) = Raw::connect(broker.shard(1), "bytes-pub", true);
    let payload = vec![7u8; 5_000];
    let started = Instant::now();
    for _ in 0..6 {
        publisher.publish("bytes/big", &payload, QoS::AtMostOnce, false, 0);
    }
    for _ in 0..6 {
        assert_eq!(subscriber.recv_publish().payload.len(), 5_000);
    }
    // 30 kB at 10 kB/s with a 10 kB burst, and one message of debt allowed: at least 1.5 s.
    assert!(started.elapsed() >= Duration::from_millis(1400));
    assert!(total(&broker, |s| s.rate_limit_pauses) >= 1);
}

#[test]
fn with_the_disconnect_action_a_flooder_is_disconnected_with_0x96() {
    let broker = Broker::start_with(|config| {
        config.max_publish_rate = 5;
        config.publish_rate_action = RateAction::Disconnect;
    });
    let (mut subscriber, _) = Raw::connect(broker.shard(0), "disc-sub", true);
    subscriber.subscribe(1, "disc/#", QoS::AtMostOnce);

    let (mut flooder, _) = Raw::connect_with(broker.shard(1), v5("disc-v5"));
    for _ in 0..20 {
        flooder.publish("disc/v5", b"x", QoS::AtMostOnce, false, 0);
    }
    let packets = flooder.expect_closed(TIMEOUT);
    let disconnect = packets.iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason),
        _ => None,
    });
    assert_eq!(disconnect, Some(ReasonCode::MessageRateTooHigh));

    let (mut v3, _) = Raw::connect(broker.shard(1), "disc-v3", true);
    for _ in 0..20 {
        if v3
            .send_bytes(&common::encode(
                &Packet::Publish(common::publish_packet(
                    "disc/v3",
                    b"x",
                    QoS::AtMostOnce,
                    false,
                    0,
                )),
                ProtocolVersion::V3_1_1,
            ))
            .is_err()
        {
            break;
        }
    }
    v3.expect_closed(TIMEOUT);

    // The burst (5 each) went through before the cut; the broker keeps serving others.
    let mut delivered = 0;
    while let common::Recv::Packet(Packet::Publish(_)) = subscriber.recv_for(QUIET) {
        delivered += 1;
    }
    assert_eq!(delivered, 10);
    let (_, accepted) = Raw::try_connect(broker.shard(1), v5("disc-after"));
    assert_eq!(accepted.reason, ReasonCode::Success);
    assert_eq!(total(&broker, |s| s.rate_limit_disconnects), 2);
}

#[test]
fn a_connection_storm_beyond_the_listener_rate_gets_0x9f() {
    const RATE: u32 = 5;
    let mut broker = Broker::start_with(|config| config.max_connection_rate = RATE);
    // The shared listener (index 0) is rate limited; the per-shard test listeners are not
    // listeners of the configuration and are not.
    let mut accepted = 0;
    let mut refused_v5 = 0;
    let mut keep = Vec::new();
    for i in 0..20 {
        let (raw, connack) = Raw::try_connect(broker.addr, v5(&format!("storm-{i}")));
        match connack.reason {
            ReasonCode::Success => {
                accepted += 1;
                keep.push(raw);
            }
            ReasonCode::ConnectionRateExceeded => refused_v5 += 1,
            other => panic!("unexpected CONNACK {other:?}"),
        }
    }
    // One second's burst, plus what refilled while the storm ran.
    assert!(
        (RATE as usize..=RATE as usize + 5).contains(&accepted),
        "{accepted} accepted"
    );
    assert_eq!(accepted + refused_v5, 20);
    let (_, v3) = Raw::try_connect(broker.addr, connect_packet("storm-v3", true));
    if v3.reason != ReasonCode::Success {
        assert_eq!(v3.reason, ReasonCode::ServerUnavailable);
    }
    // Connected clients are unaffected.
    for raw in &mut keep {
        raw.ping();
    }
    common::wait_until(TIMEOUT, "the refusals to be counted", || {
        total(&broker, |s| s.connection_rate_refused)
            == refused_v5 as u64 + u64::from(v3.reason != ReasonCode::Success)
    });

    // After a second the bucket has refilled.
    std::thread::sleep(Duration::from_millis(1100));
    let (_, later) = Raw::try_connect(broker.addr, v5("storm-later"));
    assert_eq!(later.reason, ReasonCode::Success);

    // The limit is reloadable: 0 lifts it.
    broker.reload(|config| config.max_connection_rate = 0);
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..20 {
        let (_, connack) = Raw::try_connect(broker.addr, v5(&format!("free-{i}")));
        assert_eq!(connack.reason, ReasonCode::Success);
    }
}
