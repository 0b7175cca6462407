//! Reading the endpoint: a minimal HTTP client, `/metrics` parsed by `prometheus-parse`, and
//! accessors for the families (per shard, with a second label, the latency histogram).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value};
use shardmq::metrics::{self, MetricsServer};

use super::common::{Broker, TIMEOUT};
use super::{LATENCY, SHARD_GAUGES};

// ----- a minimal HTTP client -------------------------------------------------------------------

/// An HTTP answer.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Response {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` as it is, reads the answer to the end of the stream (the server closes
/// every connection) and parses it; checks `Connection: close` and `Content-Length`.
pub(crate) fn exchange(addr: SocketAddr, request: &[u8]) -> Response {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect to /metrics");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(request).expect("send the request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the answer");
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(&raw) {
        Ok(httparse::Status::Complete(head)) => head,
        other => panic!(
            "not an HTTP answer ({other:?}): {:?}",
            String::from_utf8_lossy(&raw)
        ),
    };
    let answer = Response {
        status: response.code.unwrap(),
        headers: response
            .headers
            .iter()
            .map(|h| {
                let value = String::from_utf8(h.value.to_vec()).unwrap();
                (h.name.to_string(), value)
            })
            .collect(),
        body: String::from_utf8(raw[head..].to_vec()).expect("a UTF-8 body"),
    };
    assert_eq!(response.version, Some(1), "HTTP/1.1");
    assert_eq!(answer.header("Connection"), Some("close"));
    assert_eq!(
        answer.header("Content-Length"),
        Some(answer.body.len().to_string().as_str())
    );
    answer
}

pub(crate) fn get(addr: SocketAddr, path: &str) -> Response {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n\r\n");
    exchange(addr, request.as_bytes())
}

/// `/metrics`, parsed by `prometheus-parse`.
pub(crate) fn scrape(addr: SocketAddr) -> Scrape {
    let response = get(addr, "/metrics");
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(response.header("Content-Type"), Some(metrics::CONTENT_TYPE));
    Scrape::parse(response.body.lines().map(|line| Ok(line.to_owned())))
        .expect("prometheus-parse reads /metrics")
}

/// `name`'s samples by shard; each must be a counter (a gauge if `name` is one of
/// [`SHARD_GAUGES`]) with a `shard` label.
pub(crate) fn per_shard(scrape: &Scrape, name: &str) -> Vec<(usize, f64)> {
    let gauge = SHARD_GAUGES.contains(&name);
    let mut samples: Vec<(usize, f64)> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| {
            let value = match s.value {
                Value::Counter(value) if !gauge => value,
                Value::Gauge(value) if gauge => value,
                _ => panic!(
                    "{name} is not typed as a {}: {s:?}",
                    if gauge { "gauge" } else { "counter" }
                ),
            };
            let shard = s.labels.get("shard").unwrap_or_else(|| {
                panic!("{name} without a shard label: {s:?}");
            });
            assert_eq!(s.labels.len(), 1, "{name}: only the shard label: {s:?}");
            (shard.parse().expect("a numeric shard label"), value)
        })
        .collect();
    samples.sort_by_key(|(shard, _)| *shard);
    samples
}

pub(crate) fn total(scrape: &Scrape, name: &str) -> f64 {
    per_shard(scrape, name).iter().map(|(_, v)| v).sum()
}

pub(crate) fn on_shard(scrape: &Scrape, name: &str, shard: usize) -> f64 {
    per_shard(scrape, name)
        .into_iter()
        .find(|(s, _)| *s == shard)
        .unwrap_or_else(|| panic!("no {name}{{shard=\"{shard}\"}}"))
        .1
}

/// A family with a second label besides `shard`: (shard, label value, value) per series, each
/// a counter.
pub(crate) fn labelled(scrape: &Scrape, name: &str, label: &str) -> Vec<(usize, String, f64)> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| {
            let Value::Counter(value) = s.value else {
                panic!("{name} is not typed as a counter: {s:?}");
            };
            assert_eq!(s.labels.len(), 2, "{name}: shard and {label}: {s:?}");
            let shard = s.labels.get("shard").expect("a shard label");
            let value_label = s.labels.get(label).unwrap_or_else(|| {
                panic!("{name} without a {label} label: {s:?}");
            });
            (shard.parse().unwrap(), value_label.to_string(), value)
        })
        .collect()
}

/// One series of a labelled family, summed over the shards (`None`) or on one shard.
pub(crate) fn series(
    scrape: &Scrape,
    name: &str,
    label: &str,
    value: &str,
    shard: Option<usize>,
) -> f64 {
    let all = labelled(scrape, name, label);
    assert!(
        all.iter().any(|(_, v, _)| v == value),
        "no {name}{{{label}=\"{value}\"}}"
    );
    all.iter()
        .filter(|(s, v, _)| v == value && shard.is_none_or(|shard| *s == shard))
        .map(|(_, _, n)| n)
        .sum()
}

/// A shard's latency histogram: cumulative (upper bound, count) buckets, then sum and count.
pub(crate) struct Histogram {
    pub(crate) buckets: Vec<(f64, f64)>,
    pub(crate) sum: f64,
    pub(crate) count: f64,
}

/// The latency histogram of each shard, by shard.
pub(crate) fn latency(scrape: &Scrape) -> Vec<(usize, Histogram)> {
    let part = |suffix: &str, shard: &str| -> f64 {
        let name = format!("{LATENCY}_{suffix}");
        let samples: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && s.labels.get("shard") == Some(shard))
            .collect();
        assert_eq!(samples.len(), 1, "one {name} for shard {shard}");
        match samples[0].value {
            Value::Untyped(value) | Value::Gauge(value) | Value::Counter(value) => value,
            ref other => panic!("{name}: {other:?}"),
        }
    };
    let mut histograms: Vec<(usize, Histogram)> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == LATENCY)
        .map(|s| {
            let Value::Histogram(ref buckets) = s.value else {
                panic!("{LATENCY} is not typed as a histogram: {s:?}");
            };
            assert_eq!(s.labels.len(), 1, "only the shard label: {s:?}");
            let shard = s.labels.get("shard").expect("a shard label");
            let histogram = Histogram {
                buckets: buckets.iter().map(|b| (b.less_than, b.count)).collect(),
                sum: part("sum", shard),
                count: part("count", shard),
            };
            (shard.parse().unwrap(), histogram)
        })
        .collect();
    histograms.sort_by_key(|(shard, _)| *shard);
    histograms
}

/// A global gauge (one sample, no labels).
pub(crate) fn gauge(scrape: &Scrape, name: &str) -> f64 {
    let samples: Vec<_> = scrape.samples.iter().filter(|s| s.metric == name).collect();
    assert_eq!(samples.len(), 1, "one {name} sample: {samples:?}");
    assert!(samples[0].labels.is_empty(), "{:?}", samples[0]);
    match samples[0].value {
        Value::Gauge(value) => value,
        ref other => panic!("{name} is not typed as a gauge: {other:?}"),
    }
}

/// Scrapes until `check` holds (the shards publish their counters every 200 ms tick).
pub(crate) fn scrape_until(
    addr: SocketAddr,
    what: &str,
    mut check: impl FnMut(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let scrape = scrape(addr);
        if check(&scrape) {
            return scrape;
        }
        assert!(
            Instant::now() < deadline,
            "/metrics never showed {what} within {TIMEOUT:?}: {:#?}",
            scrape.samples
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn spawn_metrics(broker: &Broker) -> MetricsServer {
    metrics::spawn("127.0.0.1:0".parse().unwrap(), broker.stats_source())
        .expect("the metrics endpoint starts")
}
