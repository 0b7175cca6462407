//! What a thread, a worker process and finally the whole run counted, mergeable and
//! serialisable (workers send theirs to the parent as JSON).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::seq::{merge_maps, SeqMap, SeqTotals};

/// Latencies are recorded in nanoseconds, 1 ns to 100 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// A histogram as (value, count) pairs of its non-empty buckets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistData(pub Vec<(u64, u64)>);

impl HistData {
    /// Snapshot of `h`.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        HistData(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    /// Adds the snapshot into `h`.
    pub fn add_to(&self, h: &mut Histogram<u64>) {
        for &(value, count) in &self.0 {
            h.saturating_record_n(value, count);
        }
    }
}

/// Distinct error messages with their counts (at most [`ErrorLog::MAX_KINDS`] kinds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorLog(pub BTreeMap<String, u64>);

impl ErrorLog {
    /// Kinds kept; later new kinds are counted under "other errors".
    pub const MAX_KINDS: usize = 32;

    /// Counts one occurrence.
    pub fn add(&mut self, message: impl Into<String>) {
        self.add_n(message.into(), 1);
    }

    fn add_n(&mut self, message: String, n: u64) {
        if self.0.len() >= Self::MAX_KINDS && !self.0.contains_key(&message) {
            *self.0.entry("other errors".into()).or_default() += n;
        } else {
            *self.0.entry(message).or_default() += n;
        }
    }

    /// Adds another log.
    pub fn merge(&mut self, other: &ErrorLog) {
        for (message, n) in &other.0 {
            self.add_n(message.clone(), *n);
        }
    }

    /// Human-readable lines "message (xN)".
    pub fn lines(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(m, n)| {
                if *n == 1 {
                    m.clone()
                } else {
                    format!("{m} (x{n})")
                }
            })
            .collect()
    }
}

/// Plain counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// PUBLISHes written.
    pub sent: u64,
    /// PUBLISHes written inside the measurement window.
    pub sent_window: u64,
    /// QoS 1/2 publishes completed (PUBACK / PUBCOMP).
    pub acked: u64,
    /// QoS 1/2 publishes never completed.
    pub unacked: u64,
    /// PUBLISHes received by subscribers.
    pub received: u64,
    /// PUBLISHes received inside the measurement window.
    pub received_window: u64,
    /// Received from a publisher the subscriber should not hear from.
    pub unexpected: u64,
    /// Received payloads without our header.
    pub malformed: u64,
    /// Distinct / duplicate / reordered of subscribers that are not in a shared group.
    pub seq: SeqTotals,
    /// Connections that completed CONNECT (and SUBSCRIBE).
    pub conn_ok: u64,
    /// Connections that failed to set up.
    pub conn_failed: u64,
    /// Set-up connections that closed before the end.
    pub conn_lost: u64,
    /// First TCP connect started, [`crate::sys::mono_ns`].
    pub first_connect_ns: Option<u64>,
    /// Last connection set up.
    pub last_connack_ns: Option<u64>,
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

impl Counts {
    /// Adds another thread's or worker's counts.
    pub fn merge(&mut self, o: &Counts) {
        self.sent += o.sent;
        self.sent_window += o.sent_window;
        self.acked += o.acked;
        self.unacked += o.unacked;
        self.received += o.received;
        self.received_window += o.received_window;
        self.unexpected += o.unexpected;
        self.malformed += o.malformed;
        self.seq.merge(&o.seq);
        self.conn_ok += o.conn_ok;
        self.conn_failed += o.conn_failed;
        self.conn_lost += o.conn_lost;
        self.first_connect_ns = min_opt(self.first_connect_ns, o.first_connect_ns);
        self.last_connack_ns = max_opt(self.last_connack_ns, o.last_connack_ns);
    }
}

/// Connection set-up outcome of a thread or worker, sent before the load starts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReadyInfo {
    /// Set up.
    pub conn_ok: u64,
    /// Failed.
    pub conn_failed: u64,
    /// First connect start.
    pub first_connect_ns: Option<u64>,
    /// Last set-up completion.
    pub last_connack_ns: Option<u64>,
    /// Why connections failed.
    pub errors: ErrorLog,
    /// CPU seconds of the process from its start to the end of the set-up (all processes).
    #[serde(default)]
    pub cpu_s: f64,
}

impl ReadyInfo {
    /// Adds another.
    pub fn merge(&mut self, o: &ReadyInfo) {
        self.conn_ok += o.conn_ok;
        self.conn_failed += o.conn_failed;
        self.first_connect_ns = min_opt(self.first_connect_ns, o.first_connect_ns);
        self.last_connack_ns = max_opt(self.last_connack_ns, o.last_connack_ns);
        self.errors.merge(&o.errors);
        self.cpu_s += o.cpu_s;
    }
}

/// Everything a thread or a worker process measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    /// Counters.
    pub counts: Counts,
    /// Publish-to-receive latency (ns) of messages received in the window.
    pub latency: HistData,
    /// TCP connect start to CONNACK (SUBACK for subscribers), ns.
    pub connect_latency: HistData,
    /// Union of what the shared-subscription group members saw, per publisher.
    pub shared: Option<SeqMap>,
    /// Errors.
    pub errors: ErrorLog,
    /// Notable but not errors (e.g. a subscription granted a lower QoS).
    pub warnings: ErrorLog,
    /// CPU seconds of the process during the measurement window.
    pub cpu_s: f64,
    /// Open-file limit of the process.
    pub nofile: u64,
    /// --persistent: sessions discarded after the run (clean reconnects that succeeded).
    #[serde(default)]
    pub sessions_cleared: u64,
}

impl WorkerResult {
    /// Adds another.
    pub fn merge(&mut self, o: &WorkerResult) {
        self.counts.merge(&o.counts);
        self.latency.0.extend_from_slice(&o.latency.0);
        self.connect_latency
            .0
            .extend_from_slice(&o.connect_latency.0);
        if let Some(theirs) = &o.shared {
            merge_maps(self.shared.get_or_insert_with(SeqMap::default), theirs);
        }
        self.errors.merge(&o.errors);
        self.warnings.merge(&o.warnings);
        self.cpu_s += o.cpu_s;
        self.nofile = self.nofile.max(o.nofile);
        self.sessions_cleared += o.sessions_cleared;
    }

    /// Group totals of the shared subscription, if any.
    pub fn shared_totals(&self) -> SeqTotals {
        let mut totals = SeqTotals::default();
        if let Some(map) = &self.shared {
            map.values().for_each(|set| totals.add(set));
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_round_trip_and_merge() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        for v in [1_000u64, 2_000, 2_000, 50_000] {
            a.record(v).unwrap();
        }
        b.record(7_000_000).unwrap();
        let mut merged = WorkerResult {
            latency: HistData::from_histogram(&a),
            ..Default::default()
        };
        merged.merge(&WorkerResult {
            latency: HistData::from_histogram(&b),
            ..Default::default()
        });
        let json = serde_json::to_string(&merged).unwrap();
        let back: WorkerResult = serde_json::from_str(&json).unwrap();
        let mut h = new_histogram();
        back.latency.add_to(&mut h);
        assert_eq!(h.len(), 5);
        assert_eq!(h.value_at_quantile(0.5), 2_000);
        assert!(h.max() >= 7_000_000 && h.max() < 7_010_000);
    }

    #[test]
    fn error_log_caps_kinds() {
        let mut log = ErrorLog::default();
        for i in 0..100 {
            log.add(format!("e{i}"));
        }
        log.add("e0");
        assert_eq!(log.0.len(), ErrorLog::MAX_KINDS + 1);
        assert_eq!(log.0["e0"], 2);
        assert_eq!(log.0["other errors"], 100 - ErrorLog::MAX_KINDS as u64);
    }

    #[test]
    fn counts_merge_times() {
        let mut a = Counts {
            sent: 1,
            first_connect_ns: Some(10),
            last_connack_ns: Some(20),
            ..Default::default()
        };
        a.merge(&Counts {
            sent: 2,
            first_connect_ns: Some(5),
            last_connack_ns: None,
            ..Default::default()
        });
        assert_eq!(a.sent, 3);
        assert_eq!(a.first_connect_ns, Some(5));
        assert_eq!(a.last_connack_ns, Some(20));
    }
}
