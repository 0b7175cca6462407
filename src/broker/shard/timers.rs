//! The timing wheel: keep-alive and connect timeouts, will delay, session expiry, the end of
//! move deduplication; wills at shutdown.
//!
//! Buckets are whole seconds since the shard started; a deadline is checked in the bucket that
//! ends at or after it, never before. Each connection has at most one live entry (its
//! `timer_bucket`); entries left in other buckets are stale and skipped.

use super::*;

/// The wheel's buckets. Connection checks (one live per connection) are kept as bare 8-byte
/// handles, apart from the rarer session timers' 24-byte entries.
#[derive(Debug, Default)]
pub(super) struct Wheel {
    buckets: BTreeMap<u32, Bucket>,
}

#[derive(Debug, Default)]
pub(super) struct Bucket {
    conns: Vec<ConnId>,
    others: Vec<WheelEntry>,
}

impl Wheel {
    /// Adds `entry` to `bucket`.
    pub(super) fn push(&mut self, bucket: u32, entry: WheelEntry) {
        let slot = self.buckets.entry(bucket).or_default();
        match entry {
            WheelEntry::Conn { conn } => slot.conns.push(conn),
            other => slot.others.push(other),
        }
    }

    /// The earliest bucket with entries.
    pub(super) fn first_bucket(&self) -> Option<u32> {
        self.buckets.first_key_value().map(|(&bucket, _)| bucket)
    }

    /// Takes the earliest bucket if it is due at `now_secs`.
    fn pop_due(&mut self, now_secs: u32) -> Option<(u32, Bucket)> {
        let entry = self.buckets.first_entry()?;
        if *entry.key() > now_secs {
            return None;
        }
        let bucket = *entry.key();
        Some((bucket, entry.remove()))
    }

    /// Every entry (for tests).
    #[cfg(test)]
    pub(super) fn entries(&self) -> impl Iterator<Item = WheelEntry> + '_ {
        self.buckets.values().flat_map(|b| {
            b.conns
                .iter()
                .map(|&conn| WheelEntry::Conn { conn })
                .chain(b.others.iter().copied())
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum WheelEntry {
    Conn { conn: ConnId },
    Session { session: SessionId, token: u64 },
    Will { session: SessionId, token: u64 },
    DedupEnd { session: SessionId },
}

impl Shard {
    /// Time passed: keep-alive and CONNECT timeouts, will delays, session expiry.
    pub fn on_tick(&mut self, now: Instant) {
        self.set_now(now);
        self.now_secs = self.now.saturating_duration_since(self.started).as_secs() as u32;
        self.release_throttled(None);
        self.overload_tick();
        self.release_delayed_refusals();
        while let Some((bucket, due)) = self.wheel.pop_due(self.now_secs) {
            // Connection checks first, then session timers: they act on different things (a
            // keep-alive kill is a close the runtime reports later), so the order is free.
            for conn in due.conns {
                self.check_keep_alive(conn, bucket);
            }
            for item in due.others {
                match item {
                    WheelEntry::Conn { conn } => self.check_keep_alive(conn, bucket),
                    WheelEntry::Session { session, token } => {
                        self.check_session_expiry(session, token)
                    }
                    WheelEntry::Will { session, token } => self.check_will_delay(session, token),
                    WheelEntry::DedupEnd { session } => {
                        // The handle's generation is enough: a session is deduplicated once per
                        // arrival on this shard, and in-place takeovers since then change its
                        // token but not the fact that the move is long over.
                        if let Some(entry) = self.sessions.get_mut(session) {
                            entry.take_recent();
                        }
                    }
                }
            }
        }
        self.drain_local_inbox();
    }

    /// When the shard next needs [`Shard::on_tick`] (the earliest wheel bucket), if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let bucket = self.wheel.first_bucket()?;
        Some(self.started + Duration::from_secs(u64::from(bucket)))
    }

    /// The wheel bucket (whole seconds, rounded up) in which a deadline is checked: never
    /// before the deadline itself.
    pub(super) fn bucket(deadline_ms: u64) -> u32 {
        u32::try_from(deadline_ms.div_ceil(1000)).unwrap_or(u32::MAX)
    }

    /// Makes sure `conn` is checked at `deadline_ms` (or earlier): one live entry per
    /// connection, moved earlier when needed, never duplicated.
    pub(super) fn schedule_conn_check(&mut self, conn: ConnId, deadline_ms: u64) {
        let bucket = Self::bucket(deadline_ms);
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if c.timer_bucket != 0 && c.timer_bucket <= bucket {
            return;
        }
        c.timer_bucket = bucket;
        self.wheel.push(bucket, WheelEntry::Conn { conn });
    }

    pub(super) fn check_keep_alive(&mut self, index: ConnId, bucket: u32) {
        let now_ms = self.clock_ms();
        let backpressured = self.outbox.backpressured();
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        if conn.timer_bucket != bucket {
            // A stale entry: the connection's check moved to another bucket.
            return;
        }
        conn.timer_bucket = 0;
        if conn.kill.is_some() {
            return;
        }
        if matches!(conn.state, ConnState::Active { .. })
            && (conn.paused || conn.throttled || backpressured)
        {
            // The broker is not reading this client: its silence is ours, not its own. The
            // keep-alive period restarts when reading resumes.
            conn.last_seen = now_ms;
        }
        let (deadline, reason) = match conn.state {
            ConnState::AwaitConnect | ConnState::OverLimit { .. } | ConnState::Claiming { .. } => (
                conn.last_seen + 1000 * u64::from(self.config.connect_timeout.max(1)),
                ReasonCode::MaximumConnectTime,
            ),
            ConnState::Detached => return,
            ConnState::Active { .. } if conn.keep_alive == 0 => return,
            // MQTT: close after one and a half keep-alive periods without a packet.
            ConnState::Active { .. } => (
                conn.last_seen + 1500 * u64::from(conn.keep_alive),
                ReasonCode::KeepAliveTimeout,
            ),
        };
        if deadline <= now_ms {
            tracing::debug!(shard = self.id, conn = ?index, %reason, "closing idle connection");
            self.stats.keep_alive_timeouts += 1;
            self.kill_conn(index, reason, false);
        } else {
            self.schedule_conn_check(index, deadline);
        }
    }

    pub(super) fn check_will_delay(&mut self, index: SessionId, token: u64) {
        let Some(entry) = self.sessions.get_mut(index) else {
            return;
        };
        if entry.token != token || entry.conn.is_some() {
            return;
        }
        if let Some(will) = entry.take_pending_will() {
            let client_id = entry.session.client_id.clone();
            let username = entry.session.username.clone();
            if !entry.session.clean {
                let generation = entry.generation;
                self.journal(&JournalRecord::WillCleared {
                    client_id: &client_id,
                    generation,
                });
            }
            self.publish_will(&client_id, username.as_deref(), will);
        }
    }

    pub(super) fn check_session_expiry(&mut self, index: SessionId, token: u64) {
        let Some(entry) = self.sessions.get(index) else {
            return;
        };
        if entry.token != token || entry.conn.is_some() {
            return;
        }
        let Some(expiry) = entry.session.expiry else {
            return;
        };
        let now_ms = self.clock_ms();
        let since = entry.since_ms;
        if now_ms.saturating_sub(since) >= 1000 * u64::from(expiry) {
            tracing::debug!(shard = self.id, client = %entry.session.client_id, "session expired");
            self.stats.sessions_expired += 1;
            self.end_session(index);
        }
    }

    /// First phase of shutdown: every will (of connected clients and delayed ones) goes out
    /// while all shards still deliver.
    pub fn publish_wills_for_shutdown(&mut self, now: Instant) {
        self.set_now(now);
        for index in self.sessions.handles() {
            let Some(entry) = self.sessions.get_mut(index) else {
                continue;
            };
            let client_id = entry.session.client_id.clone();
            let username = entry.session.username.clone();
            let wills: Vec<Box<LastWill>> = entry
                .session
                .will
                .take()
                .into_iter()
                .chain(entry.take_pending_will())
                .collect();
            for will in wills {
                self.publish_will(&client_id, username.as_deref(), will);
            }
        }
        self.drain_local_inbox();
    }
}
