//! Per-shard counters.

/// Counters for operators and tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShardStats {
    /// PUBLISH packets received from clients.
    pub publishes_in: u64,
    /// Messages forwarded to other shards.
    pub forwarded: u64,
    /// Messages dropped at a queue bound.
    pub dropped_queue_full: u64,
    /// QoS 0 messages dropped for offline or slow clients.
    pub dropped_qos0: u64,
    /// Messages dropped because they expired or exceed the client's maximum packet size.
    pub dropped_other: u64,
    /// Events the ownership protocol rules out (a grant for an unknown claim, a second session
    /// for one client id), repaired and logged. Always 0 unless there is a bug.
    pub protocol_violations: u64,
}
