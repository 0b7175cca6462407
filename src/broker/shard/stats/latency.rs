//! The publish latency histogram: fixed log-scale buckets, recorded with a binary search over
//! 15 bounds and an increment.

use std::time::Duration;

use super::add_arrays;

/// Upper bounds of the publish latency histogram's buckets, in nanoseconds (10 µs to 1 s, log
/// scale); one more bucket, +Inf, takes everything above the last.
pub const LATENCY_BOUNDS_NANOS: [u64; 15] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
];

/// Number of latency buckets, +Inf included.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_NANOS.len() + 1;

/// A fixed-bucket histogram of durations (`shardmq_publish_latency_seconds`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Observations per bucket, not cumulative: bucket `i` counts durations above bound
    /// `i - 1` and at most bound `i` of [`LATENCY_BOUNDS_NANOS`]; the last, those above 1 s.
    pub buckets: [u64; LATENCY_BUCKETS],
    /// Sum of every observation, in nanoseconds.
    pub sum_nanos: u64,
    /// Number of observations.
    pub count: u64,
}

impl LatencyHistogram {
    /// Records one duration.
    pub fn observe(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.buckets[bucket] += 1;
        self.sum_nanos = self.sum_nanos.saturating_add(nanos);
        self.count += 1;
    }
}

impl std::ops::AddAssign for LatencyHistogram {
    fn add_assign(&mut self, other: LatencyHistogram) {
        add_arrays(&mut self.buckets, &other.buckets);
        self.sum_nanos = self.sum_nanos.saturating_add(other.sum_nanos);
        self.count += other.count;
    }
}
