//! The families `/metrics` exports, encoded from the shards' [`ShardStats`] snapshots on each
//! scrape.
//!
//! Label values of the `reason` families:
//! - `shardmq_connack_refusals_total`: [`ConnackRefusal`] (the MQTT 5.0 CONNACK error names,
//!   also for 3.x clients, whose return codes map onto them as documented there);
//! - `shardmq_disconnects_total`: [`DisconnectCause`] (`client_disconnect`,
//!   `client_disconnect_with_will`, `keep_alive_timeout`, `protocol_error`, `taken_over`,
//!   `server_shutdown`, `connect_refused`, `socket_closed`, `other`); sums to
//!   `shardmq_connections_closed_total`;
//! - `shardmq_messages_dropped_total`: [`DropReason`] (`queue_full`, `qos0_slow_or_offline`,
//!   `expired`, `too_large`, `not_authorized`).

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::broker::{
    ConnackRefusal, DisconnectCause, DropReason, LatencyHistogram, ShardStats, StatsSource,
    LATENCY_BOUNDS_NANOS, LATENCY_BUCKETS, QOS_LABELS,
};

/// Number of plain (single-valued) fields in [`ShardStats`].
const FIELDS: usize = 37;

/// One [`ShardStats`] field as exported: name (without prefix, and without `_total` for a
/// counter), help, type (counter or gauge) and value.
type Field = (&'static str, &'static str, MetricType, u64);

/// Every plain [`ShardStats`] field, each a per-shard family (the arrays are exported by
/// [`LABELLED`] and the latency histogram on its own).
fn fields(stats: &ShardStats) -> [Field; FIELDS] {
    use MetricType::{Counter, Gauge};
    // Destructured without `..`: a new field fails to compile here until it is exported.
    let ShardStats {
        connections_accepted,
        connections_closed,
        disconnects: _,
        connects,
        connects_refused,
        connack_refusals: _,
        keep_alive_timeouts,
        sessions_expired,
        bytes_in,
        bytes_out,
        packets_in,
        packets_out,
        publishes_out,
        publishes_out_by_qos: _,
        publish_bytes_out_by_qos: _,
        publishes_in,
        publishes_in_by_qos: _,
        publish_bytes_in_by_qos: _,
        deliveries,
        forwarded,
        dropped: _,
        not_authorized,
        subscriptions_refused,
        retained_refused,
        publishers_throttled,
        backpressure_episodes,
        sessions,
        subscriptions,
        queued_messages,
        retained,
        protocol_violations,
        connects_refused_memory,
        memory_readers_paused,
        memory_pressure,
        rate_limit_pauses,
        rate_limit_disconnects,
        connection_rate_refused,
        failed_logins_delayed,
        ring_enters,
        ring_submissions,
        ring_completions,
        ring_buffers_exhausted,
        ring_sleeps,
        executor_parks,
        publish_latency: _,
    } = *stats;
    [
        (
            "connections_accepted",
            "Connections accepted (over-limit ones included).",
            Counter,
            connections_accepted,
        ),
        (
            "connections_closed",
            "Connections closed.",
            Counter,
            connections_closed,
        ),
        (
            "connects",
            "CONNECTs answered with a successful CONNACK.",
            Counter,
            connects,
        ),
        (
            "connects_refused",
            "CONNECTs refused with a CONNACK reason code.",
            Counter,
            connects_refused,
        ),
        (
            "keep_alive_timeouts",
            "Connections closed because keep-alive or the connect timeout expired.",
            Counter,
            keep_alive_timeouts,
        ),
        (
            "sessions_expired",
            "Sessions ended by their expiry interval.",
            Counter,
            sessions_expired,
        ),
        (
            "bytes_in",
            "Bytes read from client sockets.",
            Counter,
            bytes_in,
        ),
        (
            "bytes_out",
            "Bytes written to client sockets.",
            Counter,
            bytes_out,
        ),
        (
            "packets_in",
            "MQTT packets received from clients (every type).",
            Counter,
            packets_in,
        ),
        (
            "packets_out",
            "MQTT packets sent to clients (every type, PUBLISH included).",
            Counter,
            packets_out,
        ),
        (
            "publishes_out",
            "PUBLISH packets sent to clients (resends included).",
            Counter,
            publishes_out,
        ),
        (
            "publishes_in",
            "PUBLISH packets received from clients.",
            Counter,
            publishes_in,
        ),
        (
            "deliveries",
            "Messages handed to local sessions (one per session and message).",
            Counter,
            deliveries,
        ),
        (
            "forwarded",
            "Messages forwarded to other shards.",
            Counter,
            forwarded,
        ),
        (
            "not_authorized",
            "PUBLISH, SUBSCRIBE, will or delivery refused by the authorization hook.",
            Counter,
            not_authorized,
        ),
        (
            "subscriptions_refused",
            "Subscriptions refused at max_subscriptions_per_client.",
            Counter,
            subscriptions_refused,
        ),
        (
            "retained_refused",
            "Retained messages not kept at max_retained_messages / max_retained_bytes.",
            Counter,
            retained_refused,
        ),
        (
            "publishers_throttled",
            "Times a publisher was paused because a local subscriber's queue was half full.",
            Counter,
            publishers_throttled,
        ),
        (
            "backpressure_episodes",
            "Times cross-shard backpressure stopped socket reads.",
            Counter,
            backpressure_episodes,
        ),
        ("sessions", "Sessions on the shard.", Gauge, sessions),
        (
            "subscriptions",
            "Subscriptions of the shard's sessions, shared ones included.",
            Gauge,
            subscriptions,
        ),
        (
            "queued_messages",
            "Messages queued in the shard's sessions for their clients (in-flight ones not included).",
            Gauge,
            queued_messages,
        ),
        (
            "retained",
            "Retained messages (every shard holds a full replica: do not sum over shards).",
            Gauge,
            retained,
        ),
        (
            "protocol_violations",
            "Ownership-protocol violations repaired (always 0 unless there is a bug).",
            Counter,
            protocol_violations,
        ),
        (
            "connects_refused_memory",
            "CONNECTs refused (0x89) while the process was over max_memory.",
            Counter,
            connects_refused_memory,
        ),
        (
            "memory_readers_paused",
            "Times a publisher stopped being read because the process was over max_memory.",
            Counter,
            memory_readers_paused,
        ),
        (
            "memory_pressure",
            "1 while the process is over max_memory.",
            Gauge,
            memory_pressure,
        ),
        (
            "rate_limit_pauses",
            "Times a client's reads were paused for its publish rate.",
            Counter,
            rate_limit_pauses,
        ),
        (
            "rate_limit_disconnects",
            "Clients disconnected for their publish rate.",
            Counter,
            rate_limit_disconnects,
        ),
        (
            "connection_rate_refused",
            "Connections refused by a listener's max_connection_rate.",
            Counter,
            connection_rate_refused,
        ),
        (
            "failed_logins_delayed",
            "Refusing CONNACKs delayed after recent failed logins from the same address.",
            Counter,
            failed_logins_delayed,
        ),
        (
            "ring_enters",
            "io_uring_enter calls of the shard's engine.",
            Counter,
            ring_enters,
        ),
        (
            "ring_submissions",
            "Requests the shard's engine submitted to its io_uring.",
            Counter,
            ring_submissions,
        ),
        (
            "ring_completions",
            "Completions the shard's engine reaped from its io_uring.",
            Counter,
            ring_completions,
        ),
        (
            "ring_buffers_exhausted",
            "Receive completions that found the provided-buffer ring empty (the receive is re-armed; nothing is lost).",
            Counter,
            ring_buffers_exhausted,
        ),
        (
            "ring_sleeps",
            "Times the shard slept in its engine's ring (woken by a socket, another shard or a timeout).",
            Counter,
            ring_sleeps,
        ),
        (
            "executor_parks",
            "Times the shard parked in the executor instead (a timer due, cross-shard or journal work pending).",
            Counter,
            executor_parks,
        ),
    ]
}

/// A counter family with a second label besides `shard`: name (without prefix and `_total`),
/// help, the label's name, its values, and where a shard's values are (one per label value).
struct Labelled {
    name: &'static str,
    help: &'static str,
    label: &'static str,
    values: &'static [&'static str],
    get: fn(&ShardStats) -> &[u64],
}

/// Every array of [`ShardStats`], each a per-shard family with one more label.
const LABELLED: [Labelled; 7] = [
    Labelled {
        name: "publish_received",
        help: "PUBLISH packets received from clients, by QoS.",
        label: "qos",
        values: &QOS_LABELS,
        get: |s| &s.publishes_in_by_qos,
    },
    Labelled {
        name: "publish_received_bytes",
        help: "Payload bytes of the PUBLISH packets received from clients, by QoS.",
        label: "qos",
        values: &QOS_LABELS,
        get: |s| &s.publish_bytes_in_by_qos,
    },
    Labelled {
        name: "publish_sent",
        help: "PUBLISH packets sent to clients (resends included), by the QoS sent at.",
        label: "qos",
        values: &QOS_LABELS,
        get: |s| &s.publishes_out_by_qos,
    },
    Labelled {
        name: "publish_sent_bytes",
        help: "Payload bytes of the PUBLISH packets sent to clients, by QoS.",
        label: "qos",
        values: &QOS_LABELS,
        get: |s| &s.publish_bytes_out_by_qos,
    },
    Labelled {
        name: "connack_refusals",
        help: "CONNECTs refused, by CONNACK reason (MQTT 5.0 names; 3.x clients get the \
               closest return code).",
        label: "reason",
        values: &ConnackRefusal::LABELS,
        get: |s| &s.connack_refusals,
    },
    Labelled {
        name: "disconnects",
        help: "Connections closed, by cause.",
        label: "reason",
        values: &DisconnectCause::LABELS,
        get: |s| &s.disconnects,
    },
    Labelled {
        name: "messages_dropped",
        help: "Messages not delivered to a subscriber, by reason.",
        label: "reason",
        values: &DropReason::LABELS,
        get: |s| &s.dropped,
    },
];

/// The latency histogram's bucket bounds in seconds (the last, +Inf), with a shard's counts.
fn latency_buckets(histogram: &LatencyHistogram) -> [(f64, u64); LATENCY_BUCKETS] {
    let mut buckets = [(f64::INFINITY, 0); LATENCY_BUCKETS];
    for (i, (bound, count)) in buckets.iter_mut().enumerate() {
        if let Some(&nanos) = LATENCY_BOUNDS_NANOS.get(i) {
            *bound = nanos as f64 / 1e9;
        }
        *count = histogram.buckets[i];
    }
    buckets
}

/// Encodes the broker's snapshot on each scrape: the shards' published counters, the open
/// connections and whether the broker is up.
#[derive(Debug)]
pub(super) struct BrokerCollector {
    pub(super) source: StatsSource,
}

impl Collector for BrokerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = self.source.shard_stats();
        let shards: Vec<_> = stats.iter().map(fields).collect();
        let families = fields(&ShardStats::default());
        for (index, (name, help, metric_type, _)) in families.into_iter().enumerate() {
            let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
            for (shard, values) in shards.iter().enumerate() {
                let labels = [("shard", shard)];
                let sample = family.encode_family(&labels)?;
                let value = values[index].3;
                match metric_type {
                    MetricType::Counter => ConstCounter::new(value).encode(sample)?,
                    _ => ConstGauge::new(value).encode(sample)?,
                }
            }
        }
        for labelled in &LABELLED {
            let mut family = encoder.encode_descriptor(
                labelled.name,
                labelled.help,
                None,
                MetricType::Counter,
            )?;
            for (shard, stats) in stats.iter().enumerate() {
                for (&value, &label) in (labelled.get)(stats).iter().zip(labelled.values) {
                    let labels = ([("shard", shard)], [(labelled.label, label)]);
                    ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "publish_latency_seconds",
            "Time from reading a PUBLISH to writing a delivery of it into the output buffer of a \
             subscriber connected when it arrived (not: queued while offline, retained replays).",
            None,
            MetricType::Histogram,
        )?;
        for (shard, stats) in stats.iter().enumerate() {
            let histogram = &stats.publish_latency;
            family
                .encode_family(&[("shard", shard)])?
                .encode_histogram::<NoLabelSet>(
                    histogram.sum_nanos as f64 / 1e9,
                    histogram.count,
                    &latency_buckets(histogram),
                    None,
                )?;
        }
        let connections = ConstGauge::new(self.source.connections());
        connections.encode(encoder.encode_descriptor(
            "connections",
            "Open client connections, all shards.",
            None,
            connections.metric_type(),
        )?)?;
        let up = ConstGauge::new(i64::from(self.source.healthy()));
        up.encode(encoder.encode_descriptor(
            "up",
            "1 while every shard runs; 0 once a shard failed or the broker is stopping.",
            None,
            up.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_a_distinct_name() {
        let families = fields(&ShardStats::default());
        let mut names: std::collections::HashSet<_> = families.iter().map(|f| f.0).collect();
        assert_eq!(names.len(), FIELDS);
        for labelled in &LABELLED {
            assert!(names.insert(labelled.name), "{}", labelled.name);
            assert_eq!(
                (labelled.get)(&ShardStats::default()).len(),
                labelled.values.len(),
                "{}",
                labelled.name
            );
        }
        assert!(names.insert("publish_latency_seconds"));
        assert!(names.iter().all(|name| !name.ends_with("_total")));
        assert!(!names.contains("connections") && !names.contains("up"));
    }

    #[test]
    fn latency_buckets_end_with_infinity() {
        let mut histogram = LatencyHistogram::default();
        histogram.observe(std::time::Duration::from_micros(20));
        histogram.observe(std::time::Duration::from_secs(5));
        let buckets = latency_buckets(&histogram);
        assert_eq!(buckets[0], (0.00001, 0));
        assert_eq!(buckets[1], (0.000025, 1));
        assert_eq!(buckets[14], (1.0, 0));
        assert_eq!(buckets[15], (f64::INFINITY, 1));
        assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
