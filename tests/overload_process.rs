//! Overload episodes as an operator sees them, on the `shardmq` binary: each limit driven past
//! its bound shows up once in the log (start and end of the episode, not a line per refusal)
//! and in `/metrics` (read with the `prometheus-parse` crate), and a config reload on SIGHUP
//! moves the memory budget.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::process::{free_port, Process, TempDir};
use common::{connect_packet, Raw, TIMEOUT};
use prometheus_parse::{Scrape, Value};
use shardmq::codec::{Connect, Packet, ProtocolVersion, QoS, ReasonCode};

fn v5(client_id: &str) -> Connect {
    let mut connect = connect_packet(client_id, true);
    connect.protocol = ProtocolVersion::V5;
    connect
}

/// `GET /metrics`, parsed.
fn scrape(addr: SocketAddr) -> Scrape {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics listener");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    Scrape::parse(body.lines().map(|line| Ok(line.to_owned()))).expect("prometheus-parse reads it")
}

/// A family's value summed over shards.
fn sum(scrape: &Scrape, name: &str) -> f64 {
    let samples: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) => v,
            ref other => panic!("{name}: unexpected {other:?}"),
        })
        .collect();
    assert!(!samples.is_empty(), "no {name} in /metrics");
    samples.iter().sum()
}

fn scrape_until(addr: SocketAddr, name: &str, wanted: f64) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let value = sum(&scrape(addr), name);
        if value == wanted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {value}, expected {wanted}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn overload_episodes_are_logged_once_and_exported() {
    let dir = TempDir::new("overload");
    let config = dir.0.join("shardmq.toml");
    let port = free_port();
    let metrics_port = free_port();
    let write_config = |max_memory: &str| {
        std::fs::write(
            &config,
            format!(
                "listen = [\"127.0.0.1:{port}\"]\nshards = 2\nmax_connection_rate = 4\n\
                 max_publish_rate = 5\npublish_rate_action = \"disconnect\"\n\
                 max_memory = \"{max_memory}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n"
            ),
        )
        .unwrap();
    };
    write_config("0");
    let process = Process::spawn(&["--config", config.to_str().unwrap()]);
    process.wait_for_output("shardmq accepting connections", 1);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, metrics_port));

    // A connection storm: 12 CONNECTs at once against 4 per second.
    let mut refused = 0;
    let mut kept = Vec::new();
    for i in 0..12 {
        let (raw, connack) = Raw::try_connect(addr, v5(&format!("storm-{i}")));
        match connack.reason {
            ReasonCode::Success => kept.push(raw),
            ReasonCode::ConnectionRateExceeded => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(refused >= 6, "{refused} refused");
    process.wait_for_output("connection rate back under max_connection_rate", 1);
    let output = process.output();
    // One line at the start of the episode per shard that refused, whatever the refusals.
    let starts = output
        .matches("connection rate above max_connection_rate")
        .count();
    assert!((1..=2).contains(&starts), "{output}");
    scrape_until(
        metrics,
        "shardmq_connection_rate_refused_total",
        f64::from(refused),
    );

    // A publisher over its rate is disconnected with 0x96.
    std::thread::sleep(Duration::from_millis(1100));
    let (mut flooder, _) = Raw::connect_with(addr, v5("flooder"));
    for _ in 0..20 {
        flooder.send(Packet::Publish(common::publish_packet(
            "flood/t",
            b"x",
            QoS::AtMostOnce,
            false,
            0,
        )));
    }
    let packets = flooder.expect_closed(TIMEOUT);
    assert!(
        packets.iter().any(
            |p| matches!(p, Packet::Disconnect(d) if d.reason == ReasonCode::MessageRateTooHigh)
        ),
        "{packets:?}"
    );
    process.wait_for_output("Client flooder publishes faster than its rate limit", 1);
    scrape_until(metrics, "shardmq_rate_limit_disconnects_total", 1.0);

    // The memory budget, lowered under the broker's footprint by a reload, then raised.
    write_config("1");
    process.signal(libc::SIGHUP);
    process.wait_for_output("above max_memory", 1);
    scrape_until(metrics, "shardmq_memory_pressure", 2.0);
    std::thread::sleep(Duration::from_millis(1100));
    let (_, busy) = Raw::try_connect(addr, v5("while-busy"));
    assert_eq!(busy.reason, ReasonCode::ServerBusy);
    scrape_until(metrics, "shardmq_connects_refused_memory_total", 1.0);
    write_config("64GiB");
    process.signal(libc::SIGHUP);
    process.wait_for_output("back under 90% of max_memory", 1);
    scrape_until(metrics, "shardmq_memory_pressure", 0.0);
    let (_, accepted) = Raw::try_connect(addr, v5("after"));
    assert_eq!(accepted.reason, ReasonCode::Success);

    // Everyone who was let in is still served.
    for raw in &mut kept {
        raw.ping();
    }
    let output = process.output();
    assert_eq!(output.matches("B) above max_memory").count(), 1, "{output}");
    assert!(!output.contains("panicked"), "{output}");
}
