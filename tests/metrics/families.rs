//! The families with a second label and the latency histogram, against known traffic: PUBLISH
//! received and sent by QoS (packets and payload bytes), CONNACK refusals and disconnections by
//! reason, drops by reason with the queue-depth gauge, and the publish latency histogram.
//!
//! Counters are compared as differences from a scrape taken once the setup's own traffic
//! (connections, subscriptions, the barriers that make subscriptions known everywhere) has
//! been counted: the snapshots the shards publish every 200 ms then stop changing.

use std::path::PathBuf;

use bytes::Bytes;
use shardmq::auth::password::{PasswordFile, DEFAULT_ITERATIONS};
use shardmq::codec::{Disconnect, MqttStr, Packet, ProtocolVersion, ReasonCode};

use super::common::{connect_packet, field, frame, Sync};
use super::scrape::*;
use super::*;

/// What a scrape says, to compare two: every sample but the engine's ring and sleep counters
/// (which move while the broker idles), without the parse time.
fn values(scrape: &Scrape) -> Vec<String> {
    let mut values: Vec<String> = scrape
        .samples
        .iter()
        .filter(|s| {
            !s.metric.starts_with("shardmq_ring_") && !s.metric.starts_with("shardmq_executor_")
        })
        .map(|s| {
            let mut labels: Vec<_> = s.labels.iter().collect();
            labels.sort();
            format!("{} {labels:?} {:?}", s.metric, s.value)
        })
        .collect();
    values.sort();
    values
}

/// A scrape once the counters stopped moving (equal scrapes two ticks apart).
fn settled(addr: SocketAddr) -> Scrape {
    let mut last = scrape(addr);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        std::thread::sleep(Duration::from_millis(450));
        let next = scrape(addr);
        if values(&next) == values(&last) {
            return next;
        }
        assert!(Instant::now() < deadline, "the counters never settled");
        last = next;
    }
}

/// `series` after minus before.
fn delta(
    before: &Scrape,
    after: &Scrape,
    name: &str,
    label: &str,
    value: &str,
    shard: Option<usize>,
) -> f64 {
    series(after, name, label, value, shard) - series(before, name, label, value, shard)
}

/// A shard's latency observations after minus before.
fn latency_count(scrape: &Scrape, shard: usize) -> f64 {
    latency(scrape)
        .into_iter()
        .find(|(s, _)| *s == shard)
        .expect("a histogram per shard")
        .1
        .count
}

/// Checks a histogram's shape: cumulative buckets with increasing bounds ending at +Inf, whose
/// last equals the count.
fn check_histogram(histogram: &Histogram) {
    let bounds: Vec<f64> = histogram.buckets.iter().map(|b| b.0).collect();
    assert_eq!(bounds.len(), 16, "15 bounds and +Inf: {bounds:?}");
    assert_eq!(bounds[0], 0.00001);
    assert_eq!(bounds[14], 1.0);
    assert_eq!(bounds[15], f64::INFINITY);
    assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
    let counts: Vec<f64> = histogram.buckets.iter().map(|b| b.1).collect();
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "cumulative: {counts:?}"
    );
    assert_eq!(counts[15], histogram.count, "+Inf holds every observation");
    assert!(histogram.sum >= 0.0);
    if histogram.count > 0.0 {
        assert!(histogram.sum > 0.0, "time passes between read and write");
    }
}

/// Known PUBLISH traffic at each QoS with known payload sizes, to a subscriber on the same
/// shard and one on the other: the by-QoS counters move by exactly that, the totals agree,
/// and the latency histogram has one observation per delivery.
#[test]
fn publishes_by_qos_and_latency() {
    let broker = Broker::start();
    let server = spawn_metrics(&broker);
    let addr = server.local_addr();

    let (mut local, _) = Raw::connect(broker.shard(0), "qos-local", true);
    local.subscribe(1, "qos/#", QoS::ExactlyOnce);
    let (mut remote, _) = Raw::connect(broker.shard(1), "qos-remote", true);
    remote.subscribe(1, "qos/#", QoS::ExactlyOnce);
    let (mut publisher, _) = Raw::connect(broker.shard(0), "qos-pub", true);
    Sync::new(&broker).settle();
    let before = settled(addr);

    // (QoS, messages, payload bytes each).
    let plan = [
        (QoS::AtMostOnce, 3, 10),
        (QoS::AtLeastOnce, 4, 20),
        (QoS::ExactlyOnce, 5, 30),
    ];
    let mut packet_id = 0;
    for (qos, count, size) in plan {
        for _ in 0..count {
            packet_id += 1;
            publisher.publish("qos/t", &vec![b'x'; size], qos, false, packet_id);
            for subscriber in [&mut local, &mut remote] {
                let got = subscriber.recv_publish();
                assert_eq!((got.qos, got.payload.len()), (qos, size));
                ack_publish(subscriber, &got);
            }
        }
    }
    local.ping();
    remote.ping();

    let after = scrape_until(addr, "12 publishes in and 24 out", |s| {
        total(s, "shardmq_publishes_in_total") - total(&before, "shardmq_publishes_in_total")
            == 12.0
            && total(s, "shardmq_publishes_out_total")
                - total(&before, "shardmq_publishes_out_total")
                == 24.0
    });
    let received = "shardmq_publish_received_total";
    let received_bytes = "shardmq_publish_received_bytes_total";
    let sent = "shardmq_publish_sent_total";
    let sent_bytes = "shardmq_publish_sent_bytes_total";
    for (qos, count, size) in plan {
        let q = (qos as u8).to_string();
        let (count, bytes) = (count as f64, (count * size) as f64);
        // Received: all on the publisher's shard.
        assert_eq!(delta(&before, &after, received, "qos", &q, Some(0)), count);
        assert_eq!(delta(&before, &after, received, "qos", &q, Some(1)), 0.0);
        assert_eq!(
            delta(&before, &after, received_bytes, "qos", &q, None),
            bytes
        );
        // Sent: once per subscriber, each on its own shard.
        for shard in [0, 1] {
            let shard = Some(shard);
            assert_eq!(delta(&before, &after, sent, "qos", &q, shard), count, "{q}");
            assert_eq!(delta(&before, &after, sent_bytes, "qos", &q, shard), bytes);
        }
    }
    // The by-QoS families sum to the totals.
    for (family, totals) in [
        (received, "shardmq_publishes_in_total"),
        (sent, "shardmq_publishes_out_total"),
    ] {
        let by_qos: f64 = ["0", "1", "2"]
            .iter()
            .map(|q| series(&after, family, "qos", q, None))
            .sum();
        assert_eq!(by_qos, total(&after, totals), "{family}");
    }

    // One latency observation per delivery, each on the subscriber's shard.
    let deliveries = |s: &Scrape, shard| on_shard(s, "shardmq_deliveries_total", shard);
    for shard in [0, 1] {
        assert_eq!(deliveries(&after, shard) - deliveries(&before, shard), 12.0);
        assert_eq!(
            latency_count(&after, shard) - latency_count(&before, shard),
            12.0,
            "shard {shard}"
        );
    }
    for (_, histogram) in latency(&after) {
        check_histogram(&histogram);
    }
    drop((local, remote, publisher));
}

/// A temporary password file, removed on drop.
struct PasswordPath(PathBuf);

impl PasswordPath {
    fn new(user: &str, password: &str) -> PasswordPath {
        let mut file = PasswordFile::default();
        file.set(user, password.as_bytes(), DEFAULT_ITERATIONS, [7; 12])
            .unwrap();
        let path = std::env::temp_dir().join(format!(
            "shardmq-metrics-passwd-{}-{user}",
            std::process::id()
        ));
        std::fs::write(&path, file.to_text()).unwrap();
        PasswordPath(path)
    }
}

impl Drop for PasswordPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Refused CONNECTs counted by CONNACK reason (3.x and 5.0 alike), and every way a connection
/// ends counted under its cause: the family sums to the closed connections.
#[test]
fn refusals_and_disconnects_by_reason() {
    let passwords = PasswordPath::new("dave", "dave-pw");
    let broker = Broker::start_with(|config| config.password_file = Some(passwords.0.clone()));
    let server = spawn_metrics(&broker);
    let addr = server.local_addr();
    let login = |client_id: &str, password: &str, protocol| {
        let mut connect = connect_packet(client_id, true);
        connect.protocol = protocol;
        connect.username = Some(MqttStr::from("dave"));
        connect.password = Some(Bytes::copy_from_slice(password.as_bytes()));
        connect
    };
    let user = |shard: usize, client_id: &str, protocol| {
        Raw::connect_with(broker.shard(shard), login(client_id, "dave-pw", protocol)).0
    };

    // Refused: a wrong password (3.1.1 gets return code 4, 5.0 gets 0x86), anonymous (5), an
    // unknown protocol level (1).
    for (shard, protocol) in [(0, ProtocolVersion::V3_1_1), (1, ProtocolVersion::V5)] {
        let (mut raw, connack) = Raw::try_connect(
            broker.shard(shard),
            login(&format!("wrong-{shard}"), "nope", protocol),
        );
        assert_eq!(connack.reason, ReasonCode::BadUserNameOrPassword);
        raw.expect_closed(TIMEOUT);
    }
    let (mut anonymous, connack) =
        Raw::try_connect(broker.shard(0), connect_packet("anonymous", true));
    assert_eq!(connack.reason, ReasonCode::NotAuthorized);
    anonymous.expect_closed(TIMEOUT);
    let body = [field(b"MQTT"), vec![6, 0x02, 0, 60], field(b"level-six")].concat();
    let mut level_six = Raw::tcp(broker.shard(1));
    level_six.send_bytes(&frame(0x10, &body)).unwrap();
    match &level_six.expect_closed(TIMEOUT)[..] {
        [Packet::ConnAck(connack)] => {
            assert_eq!(connack.reason, ReasonCode::UnsupportedProtocolVersion)
        }
        other => panic!("expected one CONNACK, got {other:?}"),
    }

    // Every cause of a close, once each.
    user(0, "normal", ProtocolVersion::V3_1_1).disconnect();
    let mut with_will = user(0, "with-will", ProtocolVersion::V5);
    with_will.send(Packet::Disconnect(Disconnect::new(
        ReasonCode::DisconnectWithWill,
    )));
    with_will.expect_closed(TIMEOUT);
    let mut idle = login("idle", "dave-pw", ProtocolVersion::V3_1_1);
    idle.keep_alive = 1;
    let (mut idle, _) = Raw::connect_with(broker.shard(1), idle);
    idle.expect_closed(TIMEOUT);
    let mut rude = user(1, "rude", ProtocolVersion::V3_1_1);
    rude.send(Packet::Connect(Box::new(login(
        "rude",
        "dave-pw",
        ProtocolVersion::V3_1_1,
    ))));
    rude.expect_closed(TIMEOUT);
    let mut old = user(0, "twin", ProtocolVersion::V3_1_1);
    let new = user(1, "twin", ProtocolVersion::V3_1_1);
    old.expect_closed(TIMEOUT);
    user(1, "gone", ProtocolVersion::V3_1_1).drop_socket();

    let reasons = "shardmq_connack_refusals_total";
    let causes = "shardmq_disconnects_total";
    let scrape = scrape_until(addr, "four refusals and ten closes", |s| {
        total(s, "shardmq_connects_refused_total") == 4.0
            && total(s, "shardmq_connections_closed_total") == 10.0
    });
    let refused = |reason: &str| series(&scrape, reasons, "reason", reason, None);
    assert_eq!(refused("bad_username_or_password"), 2.0);
    assert_eq!(
        series(
            &scrape,
            reasons,
            "reason",
            "bad_username_or_password",
            Some(0)
        ),
        1.0
    );
    assert_eq!(refused("not_authorized"), 1.0);
    assert_eq!(refused("unsupported_protocol_version"), 1.0);
    let all_refusals: f64 = ConnackRefusal::LABELS.iter().map(|r| refused(r)).sum();
    assert_eq!(
        all_refusals,
        total(&scrape, "shardmq_connects_refused_total")
    );

    let closed = |cause: &str| series(&scrape, causes, "reason", cause, None);
    assert_eq!(closed("connect_refused"), 4.0);
    assert_eq!(closed("client_disconnect"), 1.0);
    assert_eq!(closed("client_disconnect_with_will"), 1.0);
    assert_eq!(closed("keep_alive_timeout"), 1.0);
    assert_eq!(
        series(&scrape, causes, "reason", "keep_alive_timeout", Some(1)),
        1.0
    );
    assert_eq!(total(&scrape, "shardmq_keep_alive_timeouts_total"), 1.0);
    assert_eq!(closed("protocol_error"), 1.0);
    assert_eq!(closed("taken_over"), 1.0);
    assert_eq!(closed("socket_closed"), 1.0);
    assert_eq!(closed("server_shutdown"), 0.0);
    assert_eq!(closed("other"), 0.0);
    let all_closes: f64 = DisconnectCause::LABELS.iter().map(|c| closed(c)).sum();
    assert_eq!(all_closes, 10.0);
    assert_eq!(
        all_closes,
        total(&scrape, "shardmq_connections_closed_total")
    );
    drop(new); // the one connection still open
}

/// An offline persistent session's queue fills to `max_queued_messages`: what does not fit is
/// dropped as `queue_full` (QoS 0 for the offline client as `qos0_slow_or_offline`), the queue
/// shows in the gauge, and the backlog sent at reconnection is counted as sent but not
/// measured for latency; a message published once it is back is.
#[test]
fn drops_by_reason_and_queue_depth() {
    let broker = Broker::start_with(|config| config.max_queued_messages = 3);
    let server = spawn_metrics(&broker);
    let addr = server.local_addr();
    let dropped = "shardmq_messages_dropped_total";

    let (mut subscriber, _) = Raw::connect(broker.shard(1), "drop-sub", false);
    subscriber.subscribe(1, "drop/t", QoS::AtLeastOnce);
    subscriber.disconnect();
    let (mut publisher, _) = Raw::connect(broker.shard(0), "drop-pub", true);
    Sync::new(&broker).settle();
    let before = settled(addr);
    assert_eq!(total(&before, "shardmq_queued_messages"), 0.0);

    for i in 0..5u16 {
        publisher.publish(
            "drop/t",
            format!("m{i}").as_bytes(),
            QoS::AtLeastOnce,
            false,
            i + 1,
        );
    }
    publisher.publish("drop/t", b"zero", QoS::AtMostOnce, false, 0);
    publisher.ping();
    let full = scrape_until(addr, "two drops at the queue bound", |s| {
        series(s, dropped, "reason", "queue_full", None) == 2.0
    });
    assert_eq!(series(&full, dropped, "reason", "queue_full", Some(1)), 2.0);
    assert_eq!(
        series(&full, dropped, "reason", "qos0_slow_or_offline", None),
        1.0
    );
    for reason in ["expired", "too_large", "not_authorized"] {
        assert_eq!(
            series(&full, dropped, "reason", reason, None),
            0.0,
            "{reason}"
        );
    }
    assert_eq!(on_shard(&full, "shardmq_queued_messages", 1), 3.0);
    assert_eq!(on_shard(&full, "shardmq_queued_messages", 0), 0.0);

    // Back online: the backlog goes out (sent, not measured), the gauge empties.
    let (mut subscriber, connack) = Raw::connect(broker.shard(1), "drop-sub", false);
    assert!(connack.session_present);
    for i in 0..3 {
        let got = subscriber.recv_publish();
        assert_eq!(got.payload, format!("m{i}").as_bytes());
        ack_publish(&mut subscriber, &got);
    }
    subscriber.ping();
    let back = scrape_until(addr, "an empty queue", |s| {
        total(s, "shardmq_queued_messages") == 0.0
            && delta(
                &before,
                s,
                "shardmq_publish_sent_total",
                "qos",
                "1",
                Some(1),
            ) == 3.0
    });
    assert_eq!(
        latency_count(&back, 1),
        latency_count(&before, 1),
        "backlog not measured"
    );

    // A message published while it is connected is.
    publisher.publish("drop/t", b"live", QoS::AtLeastOnce, false, 9);
    let got = subscriber.recv_publish();
    assert_eq!(&got.payload[..], b"live");
    ack_publish(&mut subscriber, &got);
    subscriber.ping();
    let live = scrape_until(addr, "one latency observation", |s| {
        latency_count(s, 1) == latency_count(&before, 1) + 1.0
    });
    for (_, histogram) in latency(&live) {
        check_histogram(&histogram);
    }
    assert_eq!(
        series(&live, dropped, "reason", "queue_full", None),
        2.0,
        "nothing more dropped"
    );
}
