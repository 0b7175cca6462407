//! Publisher throttling: a publisher that fills a local subscriber's queue is paused until it drains.

use super::*;

impl Shard {
    /// Backpressure instead of loss: the local connection whose publish just filled half of a
    /// subscriber's queue stops being read until that queue drains.
    pub(super) fn throttle_publisher(&mut self, congested: SessionId) {
        let Some(publisher) = self.current_publisher else {
            return;
        };
        let own_session = self.session_of(publisher);
        if self.is_stuck(congested) {
            return;
        }
        let Some(conn) = self.conns.get_mut(publisher) else {
            return;
        };
        // A client is never throttled on its own queue: it must keep reading its PUBACKs.
        if conn.throttled || own_session == Some(congested) {
            return;
        }
        conn.throttled = true;
        self.stats.publishers_throttled += 1;
        self.throttled.push((publisher, congested));
    }

    /// Whether congested `session` acknowledged nothing for [`STUCK_AFTER_SECS`]: throttling
    /// publishers for it would only slow them down. Logged once per slow-consumer episode.
    fn is_stuck(&mut self, session: SessionId) -> bool {
        let now_secs = self.now_secs;
        let Some(entry) = self.sessions.get_mut(session) else {
            return false;
        };
        let idle = now_secs.saturating_sub(entry.progress_secs);
        if idle < STUCK_AFTER_SECS {
            return false;
        }
        if !entry.stuck_logged {
            entry.stuck_logged = true;
            tracing::warn!(
                shard = self.id,
                idle_secs = idle,
                "Client {} acknowledged nothing for {idle} s: publishers are no longer throttled \
                 for it; its messages beyond the queue bound are dropped.",
                entry.session.client_id
            );
        }
        true
    }

    /// Resumes publishers waiting on `session` (all of them when `session` is `None`) once its
    /// queue is at most a quarter full.
    pub(super) fn release_throttled(&mut self, session: Option<SessionId>) {
        if self.throttled.is_empty() {
            return;
        }
        let low_water = self.config.max_queued_messages / 4;
        let drained = |shard: &Shard, s: SessionId| {
            shard
                .sessions
                .get(s)
                .is_none_or(|e| e.session.queued_len() <= low_water)
        };
        let mut released = Vec::new();
        let mut throttled = std::mem::take(&mut self.throttled);
        throttled.retain(|&(conn, waiting_on)| {
            let due = match session {
                None => true,
                Some(s) => s == waiting_on && drained(self, s),
            };
            if due {
                released.push(conn);
            }
            !due
        });
        self.throttled = throttled;
        for conn in released {
            if let Some(c) = self.conns.get_mut(conn) {
                c.throttled = false;
                c.reprocess = !c.leftover.is_empty();
                self.wake_conn(conn);
            }
        }
    }
}
