//! The Prometheus endpoint: `/metrics` read through a real Prometheus text parser
//! (`prometheus-parse`) and checked against known traffic, `/healthz`, the HTTP edges (unknown
//! paths, other methods, oversized, malformed and stalled requests), shutdown, and
//! `--metrics-listen` through the binary. The families with a second label (by QoS, by
//! reason) and the latency histogram are checked in `families.rs`.

#[path = "../common/mod.rs"]
mod common;
mod families;
mod scrape;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::process::{free_port, Process};
use common::{ack_publish, Broker, Raw, TIMEOUT};
use prometheus_parse::{Scrape, Value};
use scrape::*;
use shardmq::broker::{ConnackRefusal, DisconnectCause, DropReason};
use shardmq::codec::QoS;

/// Every per-shard counter family with only the `shard` label, as exported.
const COUNTERS: [&str; 32] = [
    "shardmq_connections_accepted_total",
    "shardmq_connections_closed_total",
    "shardmq_connects_total",
    "shardmq_connects_refused_total",
    "shardmq_keep_alive_timeouts_total",
    "shardmq_sessions_expired_total",
    "shardmq_bytes_in_total",
    "shardmq_bytes_out_total",
    "shardmq_packets_in_total",
    "shardmq_packets_out_total",
    "shardmq_publishes_out_total",
    "shardmq_publishes_in_total",
    "shardmq_deliveries_total",
    "shardmq_forwarded_total",
    "shardmq_not_authorized_total",
    "shardmq_subscriptions_refused_total",
    "shardmq_retained_refused_total",
    "shardmq_publishers_throttled_total",
    "shardmq_backpressure_episodes_total",
    "shardmq_protocol_violations_total",
    "shardmq_connects_refused_memory_total",
    "shardmq_memory_readers_paused_total",
    "shardmq_rate_limit_pauses_total",
    "shardmq_rate_limit_disconnects_total",
    "shardmq_connection_rate_refused_total",
    "shardmq_failed_logins_delayed_total",
    "shardmq_ring_enters_total",
    "shardmq_ring_submissions_total",
    "shardmq_ring_completions_total",
    "shardmq_ring_buffers_exhausted_total",
    "shardmq_ring_sleeps_total",
    "shardmq_executor_parks_total",
];

/// Every per-shard gauge family.
const SHARD_GAUGES: [&str; 5] = [
    "shardmq_sessions",
    "shardmq_subscriptions",
    "shardmq_queued_messages",
    "shardmq_retained",
    "shardmq_memory_pressure",
];

/// Every per-shard counter family with a second label: its name, the label and its values.
const LABELLED: [(&str, &str, &[&str]); 7] = [
    ("shardmq_publish_received_total", "qos", &["0", "1", "2"]),
    (
        "shardmq_publish_received_bytes_total",
        "qos",
        &["0", "1", "2"],
    ),
    ("shardmq_publish_sent_total", "qos", &["0", "1", "2"]),
    ("shardmq_publish_sent_bytes_total", "qos", &["0", "1", "2"]),
    (
        "shardmq_connack_refusals_total",
        "reason",
        &ConnackRefusal::LABELS,
    ),
    (
        "shardmq_disconnects_total",
        "reason",
        &DisconnectCause::LABELS,
    ),
    (
        "shardmq_messages_dropped_total",
        "reason",
        &DropReason::LABELS,
    ),
];

/// The per-shard histogram family.
const LATENCY: &str = "shardmq_publish_latency_seconds";

/// The global gauges (no labels).
const GLOBAL_GAUGES: [&str; 2] = ["shardmq_connections", "shardmq_up"];

// ----- in-process broker ---------------------------------------------------------------------

/// Three clients (subscriber and publisher on shard 0, an idle one on shard 1), ten QoS 1
/// messages: /metrics shows exactly that, per shard, typed and labelled.
#[test]
fn metrics_reflect_known_traffic() {
    let broker = Broker::start();
    let server = spawn_metrics(&broker);
    let addr = server.local_addr();

    let (mut sub, _) = Raw::connect(broker.shard(0), "metrics-sub", true);
    sub.subscribe(1, "metrics/t", QoS::AtLeastOnce);
    let (mut publisher, _) = Raw::connect(broker.shard(0), "metrics-pub", true);
    let (idle, _) = Raw::connect(broker.shard(1), "metrics-idle", true);
    for i in 0..10u16 {
        publisher.publish(
            "metrics/t",
            format!("m{i}").as_bytes(),
            QoS::AtLeastOnce,
            false,
            i + 1,
        );
        let got = sub.recv_publish();
        assert_eq!(got.payload, format!("m{i}").as_bytes());
        ack_publish(&mut sub, &got);
    }
    sub.ping();

    let scrape = scrape_until(addr, "10 publishes and 10 deliveries", |s| {
        total(s, "shardmq_publishes_in_total") == 10.0
            && total(s, "shardmq_deliveries_total") >= 10.0
    });
    assert_eq!(total(&scrape, "shardmq_publishes_in_total"), 10.0);
    assert_eq!(on_shard(&scrape, "shardmq_publishes_in_total", 0), 10.0);
    assert_eq!(on_shard(&scrape, "shardmq_publishes_in_total", 1), 0.0);
    assert!(total(&scrape, "shardmq_deliveries_total") >= 10.0);
    assert!(on_shard(&scrape, "shardmq_deliveries_total", 0) >= 10.0);
    assert_eq!(
        on_shard(&scrape, "shardmq_connections_accepted_total", 0),
        2.0
    );
    assert_eq!(
        on_shard(&scrape, "shardmq_connections_accepted_total", 1),
        1.0
    );
    assert!(on_shard(&scrape, "shardmq_bytes_in_total", 1) > 0.0);
    assert!(on_shard(&scrape, "shardmq_publishes_out_total", 0) >= 10.0);
    assert!(on_shard(&scrape, "shardmq_packets_in_total", 0) >= 10.0);
    assert!(on_shard(&scrape, "shardmq_bytes_out_total", 0) > 0.0);
    assert_eq!(on_shard(&scrape, "shardmq_sessions", 0), 2.0);
    assert_eq!(on_shard(&scrape, "shardmq_sessions", 1), 1.0);
    assert_eq!(on_shard(&scrape, "shardmq_subscriptions", 0), 1.0);
    assert_eq!(on_shard(&scrape, "shardmq_subscriptions", 1), 0.0);
    assert_eq!(total(&scrape, "shardmq_protocol_violations_total"), 0.0);
    // The engine's ring: at least one completion per packet read on shard 0 (receives) and
    // fewer enters than completions (one enter serves many).
    let completions = on_shard(&scrape, "shardmq_ring_completions_total", 0);
    assert!(completions >= 10.0, "ring completions {completions}");
    assert!(on_shard(&scrape, "shardmq_ring_submissions_total", 0) > 0.0);
    assert!(on_shard(&scrape, "shardmq_ring_enters_total", 0) > 0.0);
    // Between packets the shard sleeps in its own ring, not in the executor.
    assert!(on_shard(&scrape, "shardmq_ring_sleeps_total", 0) > 0.0);
    assert_eq!(gauge(&scrape, "shardmq_connections"), 3.0);
    assert_eq!(broker.connections(), 3);
    assert_eq!(gauge(&scrape, "shardmq_up"), 1.0);

    assert_eq!(on_shard(&scrape, "shardmq_queued_messages", 0), 0.0);

    // Every per-shard family: one sample per shard (and label value), labelled, documented;
    // no other series.
    for name in COUNTERS.into_iter().chain(SHARD_GAUGES) {
        let shards: Vec<usize> = per_shard(&scrape, name).iter().map(|(s, _)| *s).collect();
        assert_eq!(shards, vec![0, 1], "{name}");
        assert!(scrape.docs.contains_key(name), "HELP for {name}");
    }
    for (name, label, values) in LABELLED {
        let mut series: Vec<(usize, String)> = labelled(&scrape, name, label)
            .into_iter()
            .map(|(shard, value, _)| (shard, value))
            .collect();
        series.sort();
        let expected: Vec<(usize, String)> = (0..2)
            .flat_map(|shard| values.iter().map(move |v| (shard, v.to_string())))
            .collect();
        let mut expected = expected;
        expected.sort();
        assert_eq!(series, expected, "{name}");
        assert!(scrape.docs.contains_key(name), "HELP for {name}");
    }
    assert_eq!(latency(&scrape).len(), 2, "a histogram per shard");
    let histogram_parts = [format!("{LATENCY}_sum"), format!("{LATENCY}_count")];
    for sample in &scrape.samples {
        let name = sample.metric.as_str();
        match sample.value {
            Value::Counter(_) if COUNTERS.contains(&name) => {
                assert!(sample.labels.get("shard").is_some(), "{sample:?}");
            }
            Value::Counter(_) => {
                assert!(LABELLED.iter().any(|f| f.0 == name), "{sample:?}");
                assert!(sample.labels.get("shard").is_some(), "{sample:?}");
            }
            Value::Gauge(_) if SHARD_GAUGES.contains(&name) => {
                assert!(sample.labels.get("shard").is_some(), "{sample:?}");
            }
            Value::Gauge(_) => assert!(GLOBAL_GAUGES.contains(&name), "{sample:?}"),
            Value::Histogram(_) => assert_eq!(name, LATENCY, "{sample:?}"),
            // prometheus-parse leaves a histogram's _sum and _count untyped.
            Value::Untyped(_) if histogram_parts.iter().any(|p| p == name) => {
                assert!(sample.labels.get("shard").is_some(), "{sample:?}");
            }
            _ => panic!("untyped or unexpected sample: {sample:?}"),
        }
    }
    let labelled_series: usize = LABELLED.iter().map(|f| f.2.len()).sum();
    assert_eq!(
        scrape.samples.len(),
        (COUNTERS.len() + SHARD_GAUGES.len() + labelled_series) * 2
            + 3 * 2 // the histogram, its _sum and _count, per shard
            + GLOBAL_GAUGES.len()
    );

    // The connection gauge follows clients leaving.
    idle.disconnect();
    scrape_until(
        addr,
        "2 connections, 1 closed, no session on shard 1",
        |s| {
            gauge(s, "shardmq_connections") == 2.0
                && on_shard(s, "shardmq_connections_closed_total", 1) == 1.0
                && on_shard(s, "shardmq_sessions", 1) == 0.0
        },
    );
    drop((sub, publisher));
}

/// /healthz is 200 while the broker runs and 503 once it stops, and `shardmq_up` follows.
#[test]
fn healthz_follows_the_broker() {
    let mut broker = Broker::start();
    let server = spawn_metrics(&broker);
    let addr = server.local_addr();

    let health = get(addr, "/healthz");
    assert_eq!(health.status, 200);
    assert_eq!(health.body.trim(), "ok");
    assert_eq!(gauge(&scrape(addr), "shardmq_up"), 1.0);

    assert!(broker.stop(Duration::from_secs(10)), "the broker stops");
    let health = get(addr, "/healthz");
    assert_eq!(health.status, 503, "{}", health.body);
    let scrape = scrape(addr);
    assert_eq!(gauge(&scrape, "shardmq_up"), 0.0);
    assert_eq!(gauge(&scrape, "shardmq_connections"), 0.0);
}

/// Unknown paths, other methods, oversized, malformed and stalled requests get their status
/// codes, and the endpoint keeps serving; after shutdown nothing listens.
#[test]
fn http_edges_and_shutdown() {
    let broker = Broker::start();
    let mut server = spawn_metrics(&broker);
    let addr = server.local_addr();

    assert_eq!(get(addr, "/").status, 404);
    assert_eq!(get(addr, "/metricsx").status, 404);
    assert_eq!(get(addr, "/metrics?name[]=x").status, 200);

    let post = exchange(
        addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(post.status, 405);
    assert_eq!(post.header("Allow"), Some("GET"));
    let head = exchange(addr, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(head.status, 405);

    assert_eq!(exchange(addr, b"\x01\x02 nonsense\r\n\r\n").status, 400);

    // Exactly 8 KiB without the end of the headers: the most the server reads.
    let mut oversized = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
    oversized.resize(8 * 1024, b'a');
    assert_eq!(exchange(addr, &oversized).status, 431);

    // A client that never finishes its request is answered after ~2 s, not waited for.
    let started = Instant::now();
    let stalled = exchange(addr, b"GET /metrics HTTP/1.1\r\n");
    assert_eq!(stalled.status, 408);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // A client that leaves without a request costs nothing.
    drop(TcpStream::connect(addr).unwrap());
    assert_eq!(get(addr, "/healthz").status, 200);

    server.shutdown();
    server.shutdown();
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "nothing listens on {addr} after shutdown"
    );
}

/// How long one scrape of 2 shards takes, request to answer over loopback (a figure to read,
/// not a check): `cargo test --release --test metrics -- --ignored --nocapture scrape_cost`.
#[test]
#[ignore]
fn scrape_cost() {
    let broker = Broker::start();
    let server = spawn_metrics(&broker);
    let addr = server.local_addr();
    let scrapes = 1000;
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..scrapes {
        let response = get(addr, "/metrics");
        assert_eq!(response.status, 200);
        bytes = response.body.len();
    }
    let per = started.elapsed() / scrapes;
    println!("{scrapes} scrapes of {bytes} bytes (2 shards): {per:?} per scrape");
}

// ----- the binary ----------------------------------------------------------------------------

#[test]
fn binary_serves_metrics_and_stops_on_sigterm() {
    let mqtt = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let metrics_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let mut process = Process::spawn(&[
        "--listen",
        &mqtt.to_string(),
        "--metrics-listen",
        &metrics_addr.to_string(),
        "--shards",
        "2",
        "--log-level",
        "info",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = process.try_exit() {
            panic!("shardmq exited ({status}):\n{}", process.output());
        }
        if TcpStream::connect_timeout(&metrics_addr, Duration::from_millis(200)).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no metrics endpoint on {metrics_addr} within 10 s:\n{}",
            process.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let health = get(metrics_addr, "/healthz");
    assert_eq!(health.status, 200, "{}", process.output());
    assert_eq!(health.body.trim(), "ok");
    let scrape = scrape(metrics_addr);
    assert_eq!(gauge(&scrape, "shardmq_up"), 1.0);
    assert_eq!(
        per_shard(&scrape, "shardmq_publishes_in_total").len(),
        2,
        "two shards"
    );
    // The MQTT listener is up too.
    TcpStream::connect_timeout(&mqtt, TIMEOUT).expect("MQTT listener");

    process.signal(libc::SIGTERM);
    let Some(status) = process.wait_exit(Duration::from_secs(10)) else {
        panic!("no exit within 10 s of SIGTERM:\n{}", process.output());
    };
    let output = process.output();
    assert!(status.success(), "exit status {status}:\n{output}");
    assert!(
        output.contains(&metrics_addr.to_string()),
        "the metrics address is logged:\n{output}"
    );
}

/// A metrics address that cannot be bound stops the broker with status 2, saying why.
#[test]
fn binary_refuses_a_taken_metrics_address() {
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let mqtt = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let mut process = Process::spawn(&[
        "--listen",
        &mqtt.to_string(),
        "--metrics-listen",
        &taken_addr.to_string(),
        "--shards",
        "1",
        "--log-level",
        "warn",
    ]);
    let Some(status) = process.wait_exit(Duration::from_secs(10)) else {
        panic!(
            "still running with a taken metrics address:\n{}",
            process.output()
        );
    };
    let output = process.output();
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("cannot serve metrics"), "{output}");
    drop(taken);
}
