//! Failed logins are slowed down per address: the refusing CONNACK of the n-th failure from one
//! IP address within a minute waits `failed_login_delay_ms * 2^(n-1)`, at most 5 s, while the
//! connection is not read. A password guesser gets a few tries per minute instead of thousands;
//! a user who mistyped once waits a tenth of a second. Counted per shard (an address spread
//! over shards by SO_REUSEPORT is slowed on each).

use std::net::IpAddr;

use super::*;

/// Failures older than this are forgotten.
const WINDOW_MS: u64 = 60_000;
/// The longest a refusal waits (also kept under half the connect timeout).
const MAX_DELAY_MS: u64 = 5_000;
/// Addresses tracked per shard; past it, expired entries are dropped first, then untracked
/// addresses get the longest delay (an attacker with many addresses cannot grow the map).
const MAX_TRACKED: usize = 4096;

/// Recent failures by address, and the refusals waiting for their time.
#[derive(Debug, Default)]
pub(super) struct FailedLogins {
    /// Address -> (failures in the window, millisecond of the last one).
    by_address: HashMap<IpAddr, (u32, u64)>,
    /// Refusals to send: connection, reason, due millisecond of the shard clock.
    pending: Vec<(ConnId, ReasonCode, u64)>,
}

impl FailedLogins {
    /// Records a failure from `address` at `now_ms`; returns how long its refusal waits.
    fn record(&mut self, address: IpAddr, now_ms: u64, base_ms: u64, cap_ms: u64) -> u64 {
        if base_ms == 0 {
            return 0;
        }
        if !self.by_address.contains_key(&address) && self.by_address.len() >= MAX_TRACKED {
            self.by_address
                .retain(|_, &mut (_, last)| now_ms.saturating_sub(last) < WINDOW_MS);
            if self.by_address.len() >= MAX_TRACKED {
                return cap_ms;
            }
        }
        let entry = self.by_address.entry(address).or_insert((0, now_ms));
        if now_ms.saturating_sub(entry.1) >= WINDOW_MS {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now_ms;
        let doublings = (entry.0 - 1).min(20);
        base_ms.saturating_mul(1 << doublings).min(cap_ms)
    }
}

impl Shard {
    /// A CONNECT failed authentication: its refusal is sent now or, after recent failures from
    /// the same address, later (the connection is not read meanwhile).
    pub(super) fn refuse_failed_login(&mut self, index: ConnId, reason: ReasonCode) {
        let Some(address) = self.peers.get(&index).map(std::net::SocketAddr::ip) else {
            return self.refuse_connect(index, reason);
        };
        let now_ms = self.clock_ms();
        let cap_ms = MAX_DELAY_MS.min(500 * u64::from(self.config.connect_timeout.max(1)));
        let delay = self.failed_logins.record(
            address,
            now_ms,
            u64::from(self.config.failed_login_delay_ms),
            cap_ms,
        );
        if delay == 0 {
            return self.refuse_connect(index, reason);
        }
        self.stats.failed_logins_delayed += 1;
        tracing::debug!(shard = self.id, %address, delay_ms = delay, "refusal delayed after failed logins");
        if let Some(conn) = self.conns.get_mut(index) {
            conn.paused = true;
        }
        self.failed_logins
            .pending
            .push((index, reason, now_ms + delay));
    }

    /// Per tick: sends the delayed refusals that are due.
    pub(super) fn release_delayed_refusals(&mut self) {
        if self.failed_logins.pending.is_empty() {
            return;
        }
        let now_ms = self.clock_ms();
        let mut due = Vec::new();
        self.failed_logins.pending.retain(|&(conn, reason, at)| {
            if at <= now_ms {
                due.push((conn, reason));
            }
            at > now_ms
        });
        for (conn, reason) in due {
            self.refuse_connect(conn, reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn delay_doubles_per_failure_and_is_capped() {
        let mut logins = FailedLogins::default();
        let delays: Vec<u64> = (0..8)
            .map(|i| logins.record(ip(1), i * 10, 100, 5_000))
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        // Another address starts from the beginning.
        assert_eq!(logins.record(ip(2), 100, 100, 5_000), 100);
        // A minute without failures: forgotten.
        assert_eq!(logins.record(ip(1), 70 + WINDOW_MS, 100, 5_000), 100);
        // Off.
        assert_eq!(logins.record(ip(1), 80 + WINDOW_MS, 0, 5_000), 0);
    }

    #[test]
    fn the_map_is_bounded() {
        let mut logins = FailedLogins::default();
        for i in 0..MAX_TRACKED as u32 {
            logins.record(IpAddr::from(i.to_be_bytes()), 0, 100, 5_000);
        }
        // Full of recent failures: a new address gets the longest delay, untracked.
        assert_eq!(logins.record(ip(200), 1, 100, 5_000), 5_000);
        assert_eq!(logins.by_address.len(), MAX_TRACKED);
        // Once they have expired, the new address is tracked from scratch.
        assert_eq!(logins.record(ip(200), WINDOW_MS + 1, 100, 5_000), 100);
        assert_eq!(logins.by_address.len(), 1);
    }
}
