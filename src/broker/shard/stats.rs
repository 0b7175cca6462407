//! Per-shard counters: plain integers bumped on the shard thread, copied out as a snapshot
//! (`Shard::stats`) for whoever reports them. No atomics or locks on the hot path.

/// Counters for operators and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShardStats {
    /// Connections accepted (over-limit ones included).
    pub connections_accepted: u64,
    /// Connections closed.
    pub connections_closed: u64,
    /// CONNECTs answered with a successful CONNACK.
    pub connects: u64,
    /// CONNECTs refused with a CONNACK reason code.
    pub connects_refused: u64,
    /// Connections closed because keep-alive or the connect timeout expired.
    pub keep_alive_timeouts: u64,
    /// Sessions ended by their expiry interval.
    pub sessions_expired: u64,
    /// Bytes read from client sockets.
    pub bytes_in: u64,
    /// Bytes written to client sockets.
    pub bytes_out: u64,
    /// MQTT packets received from clients (every type).
    pub packets_in: u64,
    /// MQTT packets sent to clients (every type; PUBLISH included).
    pub packets_out: u64,
    /// PUBLISH packets sent to clients.
    pub publishes_out: u64,
    /// PUBLISH packets received from clients.
    pub publishes_in: u64,
    /// Messages handed to local sessions (one per session and message).
    pub deliveries: u64,
    /// Messages forwarded to other shards.
    pub forwarded: u64,
    /// Messages dropped at a queue bound.
    pub dropped_queue_full: u64,
    /// QoS 0 messages dropped for offline or slow clients.
    pub dropped_qos0: u64,
    /// Messages dropped because they expired or exceed the client's maximum packet size.
    pub dropped_other: u64,
    /// PUBLISH or SUBSCRIBE refused by the authorization hook.
    pub not_authorized: u64,
    /// Times a publisher was paused because a local subscriber's queue was half full.
    pub publishers_throttled: u64,
    /// Times cross-shard backpressure stopped socket reads.
    pub backpressure_episodes: u64,
    /// Sessions on this shard (gauge, at the snapshot).
    pub sessions: u64,
    /// Subscriptions of this shard's sessions, shared ones included (gauge).
    pub subscriptions: u64,
    /// Retained messages (gauge; every shard holds a full replica).
    pub retained: u64,
    /// Events the ownership protocol rules out (a grant for an unknown claim, a second session
    /// for one client id), repaired and logged. Always 0 unless there is a bug.
    pub protocol_violations: u64,
}
