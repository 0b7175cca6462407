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
    /// PUBLISH, SUBSCRIBE, will or delivery refused by the authorization hook (and
    /// subscriptions an ACL reload removed). Refused CONNECTs count in `connects_refused`.
    pub not_authorized: u64,
    /// Subscriptions refused at `max_subscriptions_per_client`.
    pub subscriptions_refused: u64,
    /// Retained messages not kept at `max_retained_messages` / `max_retained_bytes`.
    pub retained_refused: u64,
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
    /// CONNECTs refused (0x89) because the process was over `max_memory`.
    pub connects_refused_memory: u64,
    /// Times a publisher stopped being read because the process was over `max_memory`.
    pub memory_readers_paused: u64,
    /// 1 while the process is over `max_memory` (gauge, at the snapshot).
    pub memory_pressure: u64,
    /// Times a client's reads were paused for its publish rate (`max_publish_rate`, `max_publish_bytes_rate`).
    pub rate_limit_pauses: u64,
    /// Clients disconnected for their publish rate (`publish_rate_action = "disconnect"`).
    pub rate_limit_disconnects: u64,
    /// Connections refused by a listener's `max_connection_rate` (CONNACK 0x9F; 3.x: 3).
    pub connection_rate_refused: u64,
    /// io_uring_enter calls of the shard's engine. Filled in by the runtime.
    pub ring_enters: u64,
    /// Requests the shard's engine submitted to its io_uring. Filled in by the runtime.
    pub ring_submissions: u64,
    /// Completions the shard's engine reaped from its io_uring. Filled in by the runtime.
    pub ring_completions: u64,
    /// Receive completions that found the provided-buffer ring empty (the receive is re-armed; nothing is lost). Filled in by the runtime.
    pub ring_buffers_exhausted: u64,
}

/// Broker-wide totals: every counter and gauge summed, except `retained`, which every shard
/// holds in full (a replica), so the total is the largest.
impl std::ops::AddAssign for ShardStats {
    fn add_assign(&mut self, other: ShardStats) {
        // Destructured without `..`: a new field fails to compile here until it is summed.
        let ShardStats {
            connections_accepted,
            connections_closed,
            connects,
            connects_refused,
            keep_alive_timeouts,
            sessions_expired,
            bytes_in,
            bytes_out,
            packets_in,
            packets_out,
            publishes_out,
            publishes_in,
            deliveries,
            forwarded,
            dropped_queue_full,
            dropped_qos0,
            dropped_other,
            not_authorized,
            subscriptions_refused,
            retained_refused,
            publishers_throttled,
            backpressure_episodes,
            sessions,
            subscriptions,
            retained,
            protocol_violations,
            connects_refused_memory,
            memory_readers_paused,
            memory_pressure,
            rate_limit_pauses,
            rate_limit_disconnects,
            connection_rate_refused,
            ring_enters,
            ring_submissions,
            ring_completions,
            ring_buffers_exhausted,
        } = other;
        self.connections_accepted += connections_accepted;
        self.connections_closed += connections_closed;
        self.connects += connects;
        self.connects_refused += connects_refused;
        self.keep_alive_timeouts += keep_alive_timeouts;
        self.sessions_expired += sessions_expired;
        self.bytes_in += bytes_in;
        self.bytes_out += bytes_out;
        self.packets_in += packets_in;
        self.packets_out += packets_out;
        self.publishes_out += publishes_out;
        self.publishes_in += publishes_in;
        self.deliveries += deliveries;
        self.forwarded += forwarded;
        self.dropped_queue_full += dropped_queue_full;
        self.dropped_qos0 += dropped_qos0;
        self.dropped_other += dropped_other;
        self.not_authorized += not_authorized;
        self.subscriptions_refused += subscriptions_refused;
        self.retained_refused += retained_refused;
        self.publishers_throttled += publishers_throttled;
        self.backpressure_episodes += backpressure_episodes;
        self.sessions += sessions;
        self.subscriptions += subscriptions;
        self.retained = self.retained.max(retained);
        self.protocol_violations += protocol_violations;
        self.connects_refused_memory += connects_refused_memory;
        self.memory_readers_paused += memory_readers_paused;
        self.memory_pressure += memory_pressure;
        self.rate_limit_pauses += rate_limit_pauses;
        self.rate_limit_disconnects += rate_limit_disconnects;
        self.connection_rate_refused += connection_rate_refused;
        self.ring_enters += ring_enters;
        self.ring_submissions += ring_submissions;
        self.ring_completions += ring_completions;
        self.ring_buffers_exhausted += ring_buffers_exhausted;
    }
}
