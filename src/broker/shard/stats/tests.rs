//! Unit tests of the counters: label sets, histogram buckets, sums.

use std::time::Duration;

use super::*;
use crate::codec::{QoS, ReasonCode};

#[test]
fn labels_are_distinct_and_indices_dense() {
    fn check<T: Copy + std::fmt::Debug>(
        all: &[T],
        label: fn(T) -> &'static str,
        index: fn(T) -> usize,
    ) {
        let labels: std::collections::HashSet<_> = all.iter().map(|&v| label(v)).collect();
        assert_eq!(labels.len(), all.len());
        for (i, &v) in all.iter().enumerate() {
            assert_eq!(index(v), i, "{v:?}");
            let name = label(v);
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
        }
    }
    check(&DropReason::ALL, DropReason::label, DropReason::index);
    check(
        &DisconnectCause::ALL,
        DisconnectCause::label,
        DisconnectCause::index,
    );
    check(
        &ConnackRefusal::ALL,
        ConnackRefusal::label,
        ConnackRefusal::index,
    );
}

#[test]
fn every_connack_error_has_its_own_label() {
    use crate::codec::ReasonContext;
    let mut seen = std::collections::HashSet::new();
    for byte in 0x80..=0xFF {
        let Some(reason) = ReasonCode::from_u8(byte) else {
            continue;
        };
        let label = ConnackRefusal::from_reason(reason);
        if reason.allowed_in(ReasonContext::ConnAck) {
            assert_ne!(label, ConnackRefusal::Other, "{reason:?}");
            assert!(seen.insert(label), "{reason:?} shares {label:?}");
        } else {
            assert_eq!(label, ConnackRefusal::Other, "{reason:?}");
        }
    }
    assert_eq!(seen.len(), ConnackRefusal::COUNT - 1);
}

#[test]
fn histogram_buckets_are_inclusive_upper_bounds() {
    let mut h = LatencyHistogram::default();
    h.observe(Duration::ZERO);
    h.observe(Duration::from_micros(10));
    h.observe(Duration::from_nanos(10_001));
    h.observe(Duration::from_millis(1));
    h.observe(Duration::from_secs(1));
    h.observe(Duration::from_secs(2));
    h.observe(Duration::MAX);
    assert_eq!(h.count, 7);
    assert_eq!(h.buckets[0], 2, "0 and 10 µs: le 10 µs");
    assert_eq!(h.buckets[1], 1, "10.001 µs: le 25 µs");
    assert_eq!(h.buckets[6], 1, "1 ms: le 1 ms");
    assert_eq!(h.buckets[14], 1, "1 s: le 1 s");
    assert_eq!(h.buckets[15], 2, "above 1 s: +Inf");
    assert_eq!(h.buckets.iter().sum::<u64>(), h.count);
    assert_eq!(h.sum_nanos, u64::MAX, "the sum saturates");
}

#[test]
fn add_assign_sums_the_arrays_and_the_histogram() {
    let mut a = ShardStats::default();
    a.publish_received(QoS::AtMostOnce, 10);
    a.publish_received(QoS::ExactlyOnce, 7);
    a.publish_sent(QoS::AtLeastOnce, 5);
    a.drop_messages(DropReason::QueueFull, 3);
    a.connect_refused(ReasonCode::NotAuthorized);
    a.disconnects[DisconnectCause::KeepAliveTimeout.index()] += 1;
    a.publish_latency.observe(Duration::from_micros(30));
    a.queued_messages = 4;
    a.retained = 2;
    let mut b = ShardStats::default();
    b.publish_received(QoS::AtMostOnce, 1);
    b.publish_sent(QoS::AtLeastOnce, 6);
    b.publish_sent(QoS::ExactlyOnce, 2);
    b.drop_messages(DropReason::QueueFull, 1);
    b.drop_messages(DropReason::Expired, 2);
    b.connect_refused(ReasonCode::NotAuthorized);
    b.connect_refused(ReasonCode::UnsupportedProtocolVersion);
    b.disconnects[DisconnectCause::SocketClosed.index()] += 2;
    b.publish_latency.observe(Duration::from_micros(40));
    b.publish_latency.observe(Duration::from_secs(3));
    b.queued_messages = 1;
    b.retained = 5;

    let mut total = a;
    total += b;
    assert_eq!(total.publishes_in, 3);
    assert_eq!(total.publishes_in_by_qos, [2, 0, 1]);
    assert_eq!(total.publish_bytes_in_by_qos, [11, 0, 7]);
    assert_eq!(total.publishes_out, 3);
    assert_eq!(total.packets_out, 3);
    assert_eq!(total.publishes_out_by_qos, [0, 2, 1]);
    assert_eq!(total.publish_bytes_out_by_qos, [0, 11, 2]);
    assert_eq!(total.dropped(DropReason::QueueFull), 4);
    assert_eq!(total.dropped(DropReason::Expired), 2);
    assert_eq!(total.dropped_total(), 6);
    assert_eq!(total.connects_refused, 3);
    assert_eq!(total.connack_refusals(ConnackRefusal::NotAuthorized), 2);
    assert_eq!(
        total.connack_refusals(ConnackRefusal::UnsupportedProtocolVersion),
        1
    );
    assert_eq!(total.disconnects(DisconnectCause::KeepAliveTimeout), 1);
    assert_eq!(total.disconnects(DisconnectCause::SocketClosed), 2);
    assert_eq!(total.queued_messages, 5);
    assert_eq!(total.retained, 5, "the largest replica");
    assert_eq!(total.publish_latency.count, 3);
    assert_eq!(
        total.publish_latency.buckets[2], 2,
        "30 and 40 µs: le 50 µs"
    );
    assert_eq!(total.publish_latency.buckets[15], 1);
    assert_eq!(total.publish_latency.sum_nanos, 3_000_070_000);
    // Summing into a default changes nothing.
    let mut again = ShardStats::default();
    again += total;
    assert_eq!(again, total);
}
