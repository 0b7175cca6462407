//! The timing wheel: keep-alive and connect timeouts, will delay, session expiry; wills at shutdown.

use super::*;

#[derive(Debug, Clone, Copy)]
pub(super) enum WheelEntry {
    Conn { index: usize, serial: u64 },
    Session { index: usize, token: u64 },
    Will { index: usize, token: u64 },
}

impl Shard {
    /// Advances the shard clock: keep-alive and CONNECT timeouts, session expiry. Called a few
    /// times a second; the wheel holds one entry per connection, not one timer each.
    pub fn tick(&mut self) {
        self.now = self.started.elapsed().as_secs() as u32;
        self.release_throttled(None);
        while let Some(entry) = self.wheel.first_entry() {
            if *entry.key() > self.now {
                break;
            }
            for item in entry.remove() {
                match item {
                    WheelEntry::Conn { index, serial } => self.check_keep_alive(index, serial),
                    WheelEntry::Session { index, token } => self.check_session_expiry(index, token),
                    WheelEntry::Will { index, token } => self.check_will_delay(index, token),
                }
            }
        }
        self.drain_local_inbox();
    }

    pub(super) fn check_keep_alive(&mut self, index: usize, serial: u64) {
        let Some(conn) = self.conns.get(index) else {
            return;
        };
        if conn.serial != serial || conn.kill.is_some() {
            return;
        }
        let (deadline, reason) = match conn.state {
            ConnState::AwaitConnect | ConnState::OverLimit | ConnState::Claiming { .. } => (
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
        if deadline <= self.clock_ms() {
            tracing::debug!(shard = self.id, conn = index, %reason, "closing idle connection");
            self.kill_conn(index, reason, false);
        } else {
            self.wheel
                .entry(Self::bucket(deadline))
                .or_default()
                .push(WheelEntry::Conn { index, serial });
        }
    }

    pub(super) fn check_will_delay(&mut self, index: usize, token: u64) {
        let Some(entry) = self.sessions.get_mut(index) else {
            return;
        };
        if entry.token != token || entry.conn.is_some() {
            return;
        }
        if let Some(will) = entry.pending_will.take() {
            let client_id = entry.session.client_id.clone();
            self.publish_will(&client_id, will);
        }
    }

    pub(super) fn check_session_expiry(&mut self, index: usize, token: u64) {
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
        let since = entry.offline_since.unwrap_or(now_ms);
        if now_ms.saturating_sub(since) >= 1000 * u64::from(expiry) {
            tracing::debug!(shard = self.id, client = %entry.session.client_id, "session expired");
            self.end_session(index);
        }
    }

    /// First phase of shutdown: every will (of connected clients and delayed ones) goes out
    /// while all shards still deliver.
    pub fn publish_wills_for_shutdown(&mut self) {
        let sessions: Vec<usize> = self.sessions.iter().map(|(index, _)| index).collect();
        for index in sessions {
            let entry = &mut self.sessions[index];
            let client_id = entry.session.client_id.clone();
            let wills: Vec<Box<LastWill>> = entry
                .session
                .will
                .take()
                .into_iter()
                .chain(entry.pending_will.take())
                .collect();
            for will in wills {
                self.publish_will(&client_id, will);
            }
        }
        self.drain_local_inbox();
    }
}
