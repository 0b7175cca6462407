//! Per-shard counters: plain integers bumped on the shard thread, copied out as a snapshot
//! (`Shard::stats`) for whoever reports them. No atomics or locks on the hot path.
//!
//! Labelled families (by QoS, by reason) are fixed-size arrays indexed by a small enum, and the
//! publish latency histogram is a fixed array of buckets: recording anything is an array index
//! and an increment, never an allocation or a hash.

mod labels;
mod latency;

use std::time::Instant;

use crate::codec::{QoS, ReasonCode};
use crate::session::{Message, Session};

pub use labels::{ConnackRefusal, DisconnectCause, DropReason};
pub use latency::{LatencyHistogram, LATENCY_BOUNDS_NANOS, LATENCY_BUCKETS};

/// Number of QoS levels: the length of the per-QoS arrays (indexed by `QoS as usize`).
pub const QOS_LEVELS: usize = 3;

/// The `qos` label values, by index.
pub const QOS_LABELS: [&str; QOS_LEVELS] = ["0", "1", "2"];

/// Adds `other` to `into`, element by element.
fn add_arrays<const N: usize>(into: &mut [u64; N], other: &[u64; N]) {
    for (into, other) in into.iter_mut().zip(other) {
        *into += other;
    }
}

/// A session's queue length and drop counters at one moment: the shard takes one before
/// handing the session work and folds the difference into its totals afterwards
/// ([`ShardStats::session_changed`]), so the per-session counters stay small (`u32`,
/// wrapping) and every path that queues, sends or drops is accounted for.
#[derive(Debug, Clone, Copy)]
pub(super) struct SessionMark {
    queued: usize,
    /// Drop counters, in the order of [`SessionMark::DROPS`].
    dropped: [u32; 4],
}

impl SessionMark {
    /// The drop reasons a session counts itself.
    const DROPS: [DropReason; 4] = [
        DropReason::QueueFull,
        DropReason::Qos0SlowOrOffline,
        DropReason::Expired,
        DropReason::TooLarge,
    ];

    /// `session`'s counters now.
    pub(super) fn of(session: &Session) -> SessionMark {
        SessionMark {
            queued: session.queued_len(),
            dropped: [
                session.dropped_queue_full,
                session.dropped_qos0,
                session.dropped_expired,
                session.dropped_too_large,
            ],
        }
    }
}

/// Counters for operators and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShardStats {
    /// Connections accepted (over-limit ones included).
    pub connections_accepted: u64,
    /// Connections closed.
    pub connections_closed: u64,
    /// Connections closed, by cause (indexed by [`DisconnectCause`]).
    pub disconnects: [u64; DisconnectCause::COUNT],
    /// CONNECTs answered with a successful CONNACK.
    pub connects: u64,
    /// CONNECTs refused with a CONNACK reason code.
    pub connects_refused: u64,
    /// CONNECTs refused, by reason (indexed by [`ConnackRefusal`]).
    pub connack_refusals: [u64; ConnackRefusal::COUNT],
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
    /// PUBLISH packets sent to clients (resends included).
    pub publishes_out: u64,
    /// PUBLISH packets sent to clients, by the QoS they were sent at.
    pub publishes_out_by_qos: [u64; QOS_LEVELS],
    /// Payload bytes of the PUBLISH packets sent to clients, by QoS.
    pub publish_bytes_out_by_qos: [u64; QOS_LEVELS],
    /// PUBLISH packets received from clients.
    pub publishes_in: u64,
    /// PUBLISH packets received from clients, by QoS.
    pub publishes_in_by_qos: [u64; QOS_LEVELS],
    /// Payload bytes of the PUBLISH packets received from clients, by QoS.
    pub publish_bytes_in_by_qos: [u64; QOS_LEVELS],
    /// Messages handed to local sessions (one per session and message).
    pub deliveries: u64,
    /// Messages forwarded to other shards.
    pub forwarded: u64,
    /// Messages dropped, by reason (indexed by [`DropReason`]).
    pub dropped: [u64; DropReason::COUNT],
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
    /// Messages queued in this shard's sessions, waiting for their clients (gauge; in-flight
    /// ones not included).
    pub queued_messages: u64,
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
    /// Refusing CONNACKs delayed after recent failed logins from the same address.
    pub failed_logins_delayed: u64,
    /// io_uring_enter calls of the shard's engine. Filled in by the runtime.
    pub ring_enters: u64,
    /// Requests the shard's engine submitted to its io_uring. Filled in by the runtime.
    pub ring_submissions: u64,
    /// Completions the shard's engine reaped from its io_uring. Filled in by the runtime.
    pub ring_completions: u64,
    /// Receive completions that found the provided-buffer ring empty (the receive is re-armed; nothing is lost). Filled in by the runtime.
    pub ring_buffers_exhausted: u64,
    /// Times the shard slept in its engine's ring (woken by a socket, the doorbell or a timeout). Filled in by the runtime.
    pub ring_sleeps: u64,
    /// Times the shard parked in the executor instead (a timer due, cross-shard or journal work pending). Filled in by the runtime.
    pub executor_parks: u64,
    /// Time from reading a client's PUBLISH to writing a delivery of it into a subscriber's
    /// output buffer, for subscribers that were connected when it arrived (see
    /// `ShardStats::sent`).
    pub publish_latency: LatencyHistogram,
}

impl ShardStats {
    /// A PUBLISH packet received from a client.
    pub(super) fn publish_received(&mut self, qos: QoS, payload: usize) {
        self.publishes_in += 1;
        self.publishes_in_by_qos[qos as usize] += 1;
        self.publish_bytes_in_by_qos[qos as usize] += payload as u64;
    }

    /// A PUBLISH packet written for a client.
    pub(super) fn publish_sent(&mut self, qos: QoS, payload: usize) {
        self.publishes_out += 1;
        self.packets_out += 1;
        self.publishes_out_by_qos[qos as usize] += 1;
        self.publish_bytes_out_by_qos[qos as usize] += payload as u64;
    }

    /// A PUBLISH of `message` written at `qos` into the output buffer of a client whose
    /// current connection was attached at `connected_at` (`None`: do not measure, e.g. what a
    /// session's resumption sends): counted, and its latency measured (up to `now`, the time
    /// of the input being handled) if the message was read while that client was connected,
    /// whether it went out at once or waited for a window slot. Messages read before (held
    /// while the client was offline, resent after a reconnect) are not measured: their wait
    /// is the client's absence, not the broker's work. Neither are messages without a receive
    /// time (retained replays, `$SYS`, wills).
    pub(super) fn sent(
        &mut self,
        message: &Message,
        qos: QoS,
        connected_at: Option<Instant>,
        now: Instant,
    ) {
        self.publish_sent(qos, message.payload.len());
        if let (Some(received), Some(connected_at)) = (message.received_at, connected_at) {
            if received >= connected_at {
                self.publish_latency
                    .observe(now.saturating_duration_since(received));
            }
        }
    }

    /// `count` messages dropped for `reason`.
    pub(super) fn drop_messages(&mut self, reason: DropReason, count: u64) {
        self.dropped[reason.index()] += count;
    }

    /// Accounts for what happened to `session` since `mark` was taken: messages queued or
    /// taken from its queue (the `queued_messages` gauge) and messages it dropped.
    pub(super) fn session_changed(&mut self, mark: SessionMark, session: &Session) {
        let now = SessionMark::of(session);
        self.queued_messages = self
            .queued_messages
            .wrapping_add(now.queued as u64)
            .wrapping_sub(mark.queued as u64);
        for (reason, (now, before)) in SessionMark::DROPS
            .into_iter()
            .zip(now.dropped.into_iter().zip(mark.dropped))
        {
            self.dropped[reason.index()] += u64::from(now.wrapping_sub(before));
        }
    }

    /// A session with `queued` messages came to this shard (`true`) or left it.
    pub(super) fn session_queue_moved(&mut self, queued: usize, arrived: bool) {
        self.queued_messages = if arrived {
            self.queued_messages.wrapping_add(queued as u64)
        } else {
            self.queued_messages.wrapping_sub(queued as u64)
        };
    }

    /// A CONNECT refused with `reason`.
    pub(super) fn connect_refused(&mut self, reason: ReasonCode) {
        self.connects_refused += 1;
        self.connack_refusals[ConnackRefusal::from_reason(reason).index()] += 1;
    }

    /// Messages dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }

    /// Messages dropped, every reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// Connections closed for `cause`.
    pub fn disconnects(&self, cause: DisconnectCause) -> u64 {
        self.disconnects[cause.index()]
    }

    /// CONNECTs refused with `reason`.
    pub fn connack_refusals(&self, reason: ConnackRefusal) -> u64 {
        self.connack_refusals[reason.index()]
    }
}

/// Broker-wide totals: every counter and gauge summed, except `retained`, which every shard
/// holds in full (a replica), so the total is the largest.
impl std::ops::AddAssign for ShardStats {
    fn add_assign(&mut self, other: ShardStats) {
        // Destructured without `..`: a new field fails to compile here until it is summed.
        let ShardStats {
            connections_accepted,
            connections_closed,
            disconnects,
            connects,
            connects_refused,
            connack_refusals,
            keep_alive_timeouts,
            sessions_expired,
            bytes_in,
            bytes_out,
            packets_in,
            packets_out,
            publishes_out,
            publishes_out_by_qos,
            publish_bytes_out_by_qos,
            publishes_in,
            publishes_in_by_qos,
            publish_bytes_in_by_qos,
            deliveries,
            forwarded,
            dropped,
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
            publish_latency,
        } = other;
        self.connections_accepted += connections_accepted;
        self.connections_closed += connections_closed;
        add_arrays(&mut self.disconnects, &disconnects);
        self.connects += connects;
        self.connects_refused += connects_refused;
        add_arrays(&mut self.connack_refusals, &connack_refusals);
        self.keep_alive_timeouts += keep_alive_timeouts;
        self.sessions_expired += sessions_expired;
        self.bytes_in += bytes_in;
        self.bytes_out += bytes_out;
        self.packets_in += packets_in;
        self.packets_out += packets_out;
        self.publishes_out += publishes_out;
        add_arrays(&mut self.publishes_out_by_qos, &publishes_out_by_qos);
        add_arrays(
            &mut self.publish_bytes_out_by_qos,
            &publish_bytes_out_by_qos,
        );
        self.publishes_in += publishes_in;
        add_arrays(&mut self.publishes_in_by_qos, &publishes_in_by_qos);
        add_arrays(&mut self.publish_bytes_in_by_qos, &publish_bytes_in_by_qos);
        self.deliveries += deliveries;
        self.forwarded += forwarded;
        add_arrays(&mut self.dropped, &dropped);
        self.not_authorized += not_authorized;
        self.subscriptions_refused += subscriptions_refused;
        self.retained_refused += retained_refused;
        self.publishers_throttled += publishers_throttled;
        self.backpressure_episodes += backpressure_episodes;
        self.sessions += sessions;
        self.subscriptions += subscriptions;
        self.queued_messages += queued_messages;
        self.retained = self.retained.max(retained);
        self.protocol_violations += protocol_violations;
        self.connects_refused_memory += connects_refused_memory;
        self.memory_readers_paused += memory_readers_paused;
        self.memory_pressure += memory_pressure;
        self.rate_limit_pauses += rate_limit_pauses;
        self.rate_limit_disconnects += rate_limit_disconnects;
        self.connection_rate_refused += connection_rate_refused;
        self.failed_logins_delayed += failed_logins_delayed;
        self.ring_enters += ring_enters;
        self.ring_submissions += ring_submissions;
        self.ring_completions += ring_completions;
        self.ring_buffers_exhausted += ring_buffers_exhausted;
        self.ring_sleeps += ring_sleeps;
        self.executor_parks += executor_parks;
        self.publish_latency += publish_latency;
    }
}

impl super::Shard {
    /// A snapshot of this shard's counters (gauges filled in now, in constant time; the queued
    /// messages gauge is kept up to date as queues change).
    pub fn stats(&self) -> ShardStats {
        let shared_members: usize = self.shared_groups.values().map(|g| g.members.len()).sum();
        #[cfg(debug_assertions)]
        {
            // The queue gauge is kept by differences: check it against a count in test builds.
            let queued: usize = self
                .sessions
                .iter()
                .map(|(_, e)| e.session.queued_len())
                .sum();
            debug_assert_eq!(
                self.stats.queued_messages, queued as u64,
                "shard {}",
                self.id
            );
        }
        ShardStats {
            sessions: (self.sessions.len() - self.stubs.len()) as u64,
            subscriptions: (self.subscriptions.len() + shared_members) as u64,
            retained: self.retained.len() as u64,
            memory_pressure: u64::from(self.memory_pressure()),
            ..self.stats
        }
    }

    /// The runtime wrote `bytes` to a client socket (for the byte counters).
    pub fn on_written(&mut self, bytes: usize) {
        self.stats.bytes_out += bytes as u64;
    }
}

#[cfg(test)]
mod tests;
