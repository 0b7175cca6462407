//! Overload protection: the memory budget (refuse CONNECTs, stop reading publishers), per-client
//! publish rate limits and per-listener connection rates. The shard takes the memory verdict as
//! input ([`Shard::set_memory_pressure`]); the clock it uses is the `now` of each input.

use super::rate::TokenBucket;
use super::*;
use crate::config::RateAction;

/// A client's publish buckets, kept only for clients that published while a limit is set.
#[derive(Debug)]
pub(super) struct PublishLimiter {
    messages: TokenBucket,
    bytes: TokenBucket,
    /// The throttling of this client was logged (once per connection).
    logged: bool,
}

/// The shard's overload state: small, and empty while nothing is limited.
#[derive(Debug, Default)]
pub(super) struct Overload {
    /// The process is over `max_memory` (as last told by the runtime).
    memory_pressure: bool,
    /// Publishers not read because of memory pressure, woken when it ends.
    memory_paused: Vec<ConnId>,
    /// Publish buckets by connection (only with `max_publish_rate` / `max_publish_bytes_rate`).
    publish: HashMap<ConnId, PublishLimiter>,
    /// Connections over their publish rate, with the shard-clock millisecond their bucket is
    /// back in credit.
    rate_paused: Vec<(ConnId, u64)>,
    /// Each listener's connection rate (0: none), by listener index.
    listener_rates: Vec<u32>,
    /// Connections refused by a connection rate in the current episode (logged at its start
    /// and end), and when the last one was.
    connection_rate_refused: u64,
    connection_rate_last_ms: u64,
}

impl Overload {
    pub(super) fn new(config: &Config) -> Overload {
        let mut overload = Overload::default();
        overload.on_config(config);
        overload
    }

    /// Each listener's connection rate: its own, or the top-level `max_connection_rate`.
    pub(super) fn on_config(&mut self, config: &Config) {
        self.listener_rates = config
            .listeners()
            .iter()
            .map(|l| l.max_connection_rate.unwrap_or(config.max_connection_rate))
            .collect();
    }
}

impl Shard {
    /// The runtime's verdict on the memory budget (sampled off the hot path). While on, new
    /// CONNECTs are refused with 0x89 (3.x: 3) and clients that publish are not read; when it
    /// ends, they are read again.
    pub fn set_memory_pressure(&mut self, on: bool, now: Instant) {
        if self.overload.memory_pressure == on {
            return;
        }
        self.set_now(now);
        self.overload.memory_pressure = on;
        if on {
            // Publishers whose receive is armed stop at their next read_state: ask now.
            let publishers: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(_, c)| c.limited.has(Limited::PUBLISHER) && c.kill.is_none())
                .map(|(id, _)| id)
                .collect();
            for conn in publishers {
                self.wake_conn(conn);
            }
        } else {
            let paused = std::mem::take(&mut self.overload.memory_paused);
            for conn in paused {
                if let Some(c) = self.conns.get_mut(conn) {
                    c.limited.set(Limited::MEMORY_PAUSED, false);
                    c.reprocess = !c.leftover.is_empty();
                    self.wake_conn(conn);
                }
            }
        }
    }

    /// Whether the shard is under memory pressure (see [`Shard::set_memory_pressure`]).
    pub fn memory_pressure(&self) -> bool {
        self.overload.memory_pressure
    }

    /// A CONNECT under memory pressure is refused: `Some(reason)`.
    pub(super) fn memory_refusal(&mut self) -> Option<ReasonCode> {
        if !self.overload.memory_pressure {
            return None;
        }
        self.stats.connects_refused_memory += 1;
        Some(ReasonCode::ServerBusy)
    }

    /// Whether `conn` may not be read because of memory pressure (it has published); it is
    /// woken when the pressure ends.
    pub(super) fn paused_for_memory(&mut self, conn: ConnId) -> bool {
        if !self.overload.memory_pressure {
            return false;
        }
        let Some(c) = self.conns.get_mut(conn) else {
            return false;
        };
        if !c.limited.has(Limited::PUBLISHER) || c.limited.has(Limited::MEMORY_PAUSED) {
            return c.limited.has(Limited::MEMORY_PAUSED);
        }
        c.limited.set(Limited::MEMORY_PAUSED, true);
        self.overload.memory_paused.push(conn);
        self.stats.memory_readers_paused += 1;
        true
    }

    /// Charges a PUBLISH to its client's buckets. `false`: the client was disconnected for its
    /// rate and the PUBLISH must be dropped. In throttle mode the PUBLISH goes through (a
    /// bucket may go into debt by one message) and reading stops until the debt is paid.
    pub(super) fn admit_publish(&mut self, index: ConnId, payload_len: usize) -> bool {
        let Some(conn) = self.conns.get_mut(index) else {
            return false;
        };
        conn.limited.set(Limited::PUBLISHER, true);
        let message_rate = u64::from(self.config.max_publish_rate);
        let byte_rate = self.config.max_publish_bytes_rate.bytes();
        if message_rate == 0 && byte_rate == 0 {
            return true;
        }
        let now_ms = self.clock_ms();
        let limiter = self
            .overload
            .publish
            .entry(index)
            .or_insert_with(|| PublishLimiter {
                messages: TokenBucket::full(message_rate, now_ms),
                bytes: TokenBucket::full(byte_rate, now_ms),
                logged: false,
            });
        let messages = limiter.messages.take(1, message_rate, now_ms);
        let bytes = limiter.bytes.take(payload_len as u64, byte_rate, now_ms);
        if messages >= 0 && bytes >= 0 {
            return true;
        }
        let wait_ms = limiter
            .messages
            .wait_ms(message_rate)
            .max(limiter.bytes.wait_ms(byte_rate));
        let first = !std::mem::replace(&mut limiter.logged, true);
        let client = self.client_id_of(index);
        match self.config.publish_rate_action {
            RateAction::Disconnect => {
                self.stats.rate_limit_disconnects += 1;
                tracing::warn!(
                    shard = self.id,
                    client = %client,
                    max_publish_rate = self.config.max_publish_rate,
                    max_publish_bytes_rate = byte_rate,
                    "Client {client} publishes faster than its rate limit, disconnecting."
                );
                self.kill_conn(index, ReasonCode::MessageRateTooHigh, false);
                false
            }
            RateAction::Throttle => {
                self.stats.rate_limit_pauses += 1;
                if first {
                    tracing::warn!(
                        shard = self.id,
                        client = %client,
                        max_publish_rate = self.config.max_publish_rate,
                        max_publish_bytes_rate = byte_rate,
                        "Client {client} publishes faster than its rate limit: reading throttled."
                    );
                }
                if let Some(c) = self.conns.get_mut(index) {
                    c.limited.set(Limited::RATE_PAUSED, true);
                }
                self.overload.rate_paused.push((index, now_ms + wait_ms));
                true
            }
        }
    }

    /// The client id of an active connection, for log lines.
    fn client_id_of(&self, index: ConnId) -> MqttStr {
        self.session_of(index)
            .and_then(|s| self.sessions.get(s))
            .map_or_else(|| MqttStr::from("?"), |e| e.session.client_id.clone())
    }

    /// Forgets a closed connection's overload state.
    pub(super) fn forget_overload(&mut self, index: ConnId) {
        if !self.overload.publish.is_empty() {
            self.overload.publish.remove(&index);
        }
    }

    /// Per tick: resumes rate-limited clients whose bucket is back in credit, and ends a
    /// connection-rate episode a second after its last refusal.
    pub(super) fn overload_tick(&mut self) {
        let now_ms = self.clock_ms();
        if !self.overload.rate_paused.is_empty() {
            let mut due = Vec::new();
            self.overload.rate_paused.retain(|&(conn, at)| {
                let ready = at <= now_ms;
                if ready {
                    due.push(conn);
                }
                !ready
            });
            for conn in due {
                tracing::debug!(shard = self.id, ?conn, "publish rate: reading again");
                if let Some(c) = self.conns.get_mut(conn) {
                    c.limited.set(Limited::RATE_PAUSED, false);
                    c.reprocess = !c.leftover.is_empty();
                    self.wake_conn(conn);
                }
            }
        }
        if self.overload.connection_rate_refused > 0
            && now_ms >= self.overload.connection_rate_last_ms + 1000
        {
            tracing::info!(
                shard = self.id,
                refused = self.overload.connection_rate_refused,
                "connection rate back under max_connection_rate ({} connections refused)",
                self.overload.connection_rate_refused
            );
            self.overload.connection_rate_refused = 0;
        }
    }

    /// Takes a token from listener `listener`'s connection rate: `false` when the rate is
    /// exceeded (the connection's CONNECT is then refused with 0x9F).
    pub(super) fn admit_connection_rate(&mut self, listener: Option<usize>) -> bool {
        let Some(index) = listener else {
            return true;
        };
        let rate = self
            .overload
            .listener_rates
            .get(index)
            .copied()
            .unwrap_or(0);
        if rate == 0 {
            return true;
        }
        let Some(gate) = self.global.listener_rates.get(index) else {
            return true;
        };
        if gate.try_take(rate, self.now) {
            return true;
        }
        self.stats.connection_rate_refused += 1;
        if self.overload.connection_rate_refused == 0 {
            tracing::warn!(
                shard = self.id,
                listener = index,
                max_connection_rate = rate,
                "connection rate above max_connection_rate: new connections are refused (CONNACK 0x9F)"
            );
        }
        self.overload.connection_rate_refused += 1;
        self.overload.connection_rate_last_ms = self.clock_ms();
        false
    }
}
