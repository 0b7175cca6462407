//! Connections: registration and limits, framing of received bytes, closing, and the socket polling the runtime drives.

use super::*;

/// Connections beyond a limit that a shard keeps open (until their CONNECT is answered or the
/// connect timeout) to tell them why; past this many more, new ones are closed at once.
pub(super) const MAX_OVER_LIMIT_CONNS: usize = 256;

/// `Conn::listener` of a connection no listener counts.
pub(super) const NOT_COUNTED: u16 = u16::MAX;

/// Why a connection is being closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kill {
    /// Reason (sent in a DISCONNECT to MQTT 5.0 clients when the server ends the connection).
    pub reason: ReasonCode,
    /// The client sent DISCONNECT: no will.
    pub graceful: bool,
    /// What the close counts as (`shardmq_disconnects_total`).
    pub cause: DisconnectCause,
}

#[derive(Debug)]
pub(super) enum ConnState {
    AwaitConnect,
    /// Accepted beyond a connection limit (`reason` 0x97) or connection rate (0x9F): its
    /// CONNECT is answered with a CONNACK of that reason (3.x: 3, server unavailable) and the
    /// connection closed, so the client learns why.
    OverLimit {
        reason: ReasonCode,
    },
    Claiming {
        token: u64,
    },
    /// Attached to a session (whose `conn` points back here).
    Active {
        session: SessionId,
        /// Whole seconds since the shard started, when the CONNECT was accepted (for the
        /// admin client list; it fits where `Claiming`'s token leaves room).
        since: u32,
    },
    /// Session taken over by another connection; nothing left to clean up.
    Detached,
}

/// A network connection's state on its shard.
#[derive(Debug)]
pub struct Conn {
    pub(super) state: ConnState,
    pub(super) protocol: ProtocolVersion,
    pub(super) keep_alive: u16,
    /// Milliseconds since the shard started, at the last packet (or the accept).
    pub(super) last_seen: u64,
    pub(super) out: Output,
    pub(super) leftover: Leftover,
    pub(super) kill: Option<Kill>,
    pub(super) reprocess: bool,
    /// Waiting for other shards before answering (a SUBACK or a retained PUBACK): no further
    /// packets are read meanwhile, so acknowledgements keep their order.
    pub(super) paused: bool,
    /// Publishing faster than a subscriber on this shard drains its queue: reading pauses
    /// until that queue is half empty again (or the next timer tick, so that two clients
    /// feeding each other can never wait on each other for good).
    pub(super) throttled: bool,
    /// Overload state (whether it publishes, why it is not read) and whether a wake-up is
    /// queued for the runtime (see [`Limited`]).
    pub(super) limited: Limited,
    /// The wheel bucket of this connection's one live timer entry (0: none).
    pub(super) timer_bucket: u32,
    /// The listener it came through, when that listener's connections are counted
    /// ([`NOT_COUNTED`] otherwise; a plain `u16` keeps `Conn` within its budget).
    pub(super) listener: u16,
    /// Inbound topic aliases (MQTT 5.0), allocated on first use.
    // Boxed on purpose: 8 bytes for the many clients without aliases instead of a 48-byte map.
    #[allow(clippy::box_collection)]
    pub(super) aliases_in: Option<Box<HashMap<u16, MqttStr>>>,
}

/// The partial packet kept from the last read: 8 bytes where an empty `BytesMut` takes 32,
/// as most connections hold none between reads.
#[derive(Debug, Default)]
pub(super) struct Leftover(Option<Box<BytesMut>>);

impl Leftover {
    pub(super) fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|bytes| bytes.is_empty())
    }

    /// The kept bytes (an empty buffer if none), leaving none.
    pub(super) fn take(&mut self) -> BytesMut {
        self.0.take().map_or_else(BytesMut::new, |bytes| *bytes)
    }

    /// Keeps a copy of `partial` (in memory of its own: it must not pin the read buffer).
    pub(super) fn keep(&mut self, partial: &[u8]) {
        self.0 = (!partial.is_empty()).then(|| Box::new(BytesMut::from(partial)));
    }
}

/// A connection's flags in one byte (`Conn` is allocated per connection and has a budget).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Limited(u8);

impl Limited {
    /// It has sent a PUBLISH: not read while the process is over its memory budget.
    pub(super) const PUBLISHER: u8 = 1;
    /// Not read because of memory pressure (and listed to be woken when it ends).
    pub(super) const MEMORY_PAUSED: u8 = 2;
    /// Over its publish rate: not read until its bucket is back in credit.
    pub(super) const RATE_PAUSED: u8 = 4;
    /// A wake-up for this connection is queued for the runtime (so it is queued once).
    pub(super) const WAKE_QUEUED: u8 = 8;
    /// The CONNACK of a persistent session waits for the journal: the output (CONNACK, then
    /// whatever follows it) is not handed to the runtime until the session's records are
    /// durable.
    pub(super) const OUTPUT_HELD: u8 = 16;

    pub(super) fn has(self, flag: u8) -> bool {
        self.0 & flag != 0
    }

    pub(super) fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.0 |= flag;
        } else {
            self.0 &= !flag;
        }
    }

    /// Not to be read for an overload reason.
    pub(super) fn paused(self) -> bool {
        self.has(Self::MEMORY_PAUSED | Self::RATE_PAUSED)
    }
}

/// What the runtime should do next with a connection's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadState {
    /// Read from the socket and hand the bytes to [`Shard::on_bytes`].
    Read,
    /// Call [`Shard::on_bytes`] with no new bytes: input kept while reading was paused can be
    /// handled now.
    Reprocess,
    /// Do not read; wait for a wake-up.
    Wait,
    /// Flush what [`Shard::output`] holds (one attempt), then close the socket and call
    /// [`Shard::on_closed`].
    Close,
}

impl Shard {
    /// A connection was accepted. Beyond a connection limit it is registered as over the limit
    /// (its CONNECT gets a refusing CONNACK); `None` when even those are too many and the
    /// socket should be closed at once.
    pub fn on_accept(&mut self, now: Instant) -> Option<ConnId> {
        self.on_accept_from(None, now)
    }

    /// [`Shard::on_accept`] for a connection that came through listener `listener` (its index
    /// in `Config::listeners`), whose own connection limit applies too.
    pub fn on_accept_from(&mut self, listener: Option<usize>, now: Instant) -> Option<ConnId> {
        self.set_now(now);
        self.register_conn(listener)
    }

    /// [`Shard::on_accept_from`] for a connection whose peer address the runtime knows: it
    /// appears in the connection's log lines (Mosquitto's "New client connected from ...").
    pub fn on_accept_with_peer(
        &mut self,
        listener: Option<usize>,
        peer: Option<std::net::SocketAddr>,
        now: Instant,
    ) -> Option<ConnId> {
        let conn = self.on_accept_from(listener, now)?;
        self.certificate_users.accepted(listener, conn);
        if let Some(peer) = peer {
            self.peers.insert(conn, peer);
        }
        Some(conn)
    }

    /// The peer address of a connection whose CONNECT is not answered yet, for log lines.
    pub(super) fn peer_of(&self, conn: ConnId) -> String {
        self.peers
            .get(&conn)
            .map_or_else(|| "unknown".to_string(), ToString::to_string)
    }

    pub(super) fn register_conn(&mut self, listener: Option<usize>) -> Option<ConnId> {
        let now_ms = self.clock_ms();
        let max_total = self.config.max_connections;
        let max_here = self.config.max_connections_per_shard;
        let mut over_limit = max_here != 0 && self.conns.len() - self.over_limit >= max_here;
        if !over_limit {
            let total = self.global.connections.fetch_add(1, Ordering::Relaxed) + 1;
            if max_total != 0 && total > max_total {
                self.global.connections.fetch_sub(1, Ordering::Relaxed);
                over_limit = true;
            }
        }
        // The listener's own limit, counted across shards.
        let mut counted_listener = NOT_COUNTED;
        if let Some((index, count)) =
            listener.and_then(|index| Some((index, self.global.listener_connections.get(index)?)))
        {
            if !over_limit {
                let limit = self.listener_limits.get(index).copied().unwrap_or(0);
                let open = count.fetch_add(1, Ordering::Relaxed) + 1;
                if limit != 0 && open > limit {
                    count.fetch_sub(1, Ordering::Relaxed);
                    self.global.connections.fetch_sub(1, Ordering::Relaxed);
                    over_limit = true;
                } else {
                    counted_listener = u16::try_from(index).unwrap_or(NOT_COUNTED);
                }
            }
        }
        let mut over_limit = over_limit.then_some(ReasonCode::QuotaExceeded);
        if over_limit.is_none() && !self.admit_connection_rate(listener) {
            self.global.connections.fetch_sub(1, Ordering::Relaxed);
            self.uncount_listener(counted_listener);
            counted_listener = NOT_COUNTED;
            over_limit = Some(ReasonCode::ConnectionRateExceeded);
        }
        if over_limit.is_some() && self.over_limit >= MAX_OVER_LIMIT_CONNS {
            return None;
        }
        let inserted = self.conns.insert(Conn {
            state: match over_limit {
                Some(reason) => ConnState::OverLimit { reason },
                None => ConnState::AwaitConnect,
            },
            protocol: ProtocolVersion::V3_1_1,
            keep_alive: 0,
            last_seen: now_ms,
            out: Output::default(),
            leftover: Leftover::default(),
            kill: None,
            reprocess: false,
            paused: false,
            throttled: false,
            limited: Limited::default(),
            timer_bucket: 0,
            listener: counted_listener,
            aliases_in: None,
        });
        let Some(conn) = inserted else {
            if over_limit.is_none() {
                self.global.connections.fetch_sub(1, Ordering::Relaxed);
            }
            self.uncount_listener(counted_listener);
            return None;
        };
        if over_limit.is_some() {
            self.over_limit += 1;
        }
        self.stats.connections_accepted += 1;
        let connect_timeout = 1000 * u64::from(self.config.connect_timeout.max(1));
        self.schedule_conn_check(conn, now_ms + connect_timeout);
        Some(conn)
    }

    fn uncount_listener(&mut self, listener: u16) {
        if listener == NOT_COUNTED {
            return;
        }
        if let Some(count) = self.global.listener_connections.get(usize::from(listener)) {
            count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Queues a wake-up for the runtime: the connection has output, must close, or may read.
    pub(super) fn wake_conn(&mut self, index: ConnId) {
        if let Some(conn) = self.conns.get_mut(index) {
            if !conn.limited.has(Limited::WAKE_QUEUED) {
                conn.limited.set(Limited::WAKE_QUEUED, true);
                self.wakes.push(index);
            }
        }
    }

    /// Hands the runtime every connection that needs its attention since the last call.
    pub fn drain_wakes(&mut self, mut wake: impl FnMut(ConnId)) {
        let mut wakes = std::mem::take(&mut self.wakes);
        for conn in wakes.drain(..) {
            if let Some(c) = self.conns.get_mut(conn) {
                c.limited.set(Limited::WAKE_QUEUED, false);
                wake(conn);
            }
        }
        self.wakes = wakes;
    }

    /// The server ends the connection: an MQTT 5.0 client that is connected gets a DISCONNECT
    /// with `reason` first, unless `graceful` (the client itself disconnected).
    pub(super) fn kill_conn(&mut self, index: ConnId, reason: ReasonCode, graceful: bool) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        if conn.kill.is_some() {
            return;
        }
        // Output held for the journal (a CONNACK, PUBLISHes to a durable session) stays held
        // until its records are durable: the DISCONNECT queues behind it, and the connection
        // closes once it has gone out (see `read_state`).
        if !graceful && conn.protocol.is_v5() && matches!(conn.state, ConnState::Active { .. }) {
            let _ =
                Packet::Disconnect(Disconnect::new(reason)).encode(conn.protocol, &mut conn.out);
        }
        conn.kill = Some(Kill {
            reason,
            graceful,
            cause: DisconnectCause::from_reason(reason),
        });
        self.wake_conn(index);
    }

    /// The client sent DISCONNECT: close after what is already queued for it (acknowledgements
    /// of packets from the same read included), with its will unless `graceful`.
    pub(super) fn client_disconnected(&mut self, index: ConnId, graceful: bool) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        if conn.kill.is_none() {
            conn.kill = Some(Kill {
                reason: ReasonCode::Success,
                graceful,
                cause: if graceful {
                    DisconnectCause::ClientDisconnect
                } else {
                    DisconnectCause::ClientDisconnectWithWill
                },
            });
            self.wake_conn(index);
        }
    }

    /// The bytes waiting to be written to `conn`'s socket. The runtime writes from the front
    /// and advances the buffer by what the socket took.
    pub fn output(&mut self, conn: ConnId) -> Option<&mut Output> {
        match self.conns.get_mut(conn) {
            Some(c) if c.limited.has(Limited::OUTPUT_HELD) => {
                // Nothing to send yet; the connection is still there.
                self.no_output.clear();
                Some(&mut self.no_output)
            }
            Some(c) => Some(&mut c.out),
            None => None,
        }
    }

    /// The runtime wrote everything [`Shard::output`] held: messages queued while the client
    /// was a slow consumer go out now. Returns whether there is new output.
    pub fn on_flushed(&mut self, conn: ConnId, now: Instant) -> bool {
        self.set_now(now);
        let Some(c) = self.conns.get_mut(conn) else {
            return false;
        };
        if c.limited.has(Limited::OUTPUT_HELD) {
            // Waiting for the journal: the release wakes the connection.
            return false;
        }
        if !c.out.is_empty() {
            return true;
        }
        let mut sent = 0;
        let mut before = Durability::Now;
        if let ConnState::Active { session, .. } = c.state {
            if let Some(entry) = self.sessions.get_mut(session) {
                let connected_at = entry.connected_at(self.started);
                if entry.session.queued_len() > 0 {
                    let mark = SessionMark::of(&entry.session);
                    let now = self.now;
                    before = self.hooks.journal.barrier();
                    let mut recorder = Recorder::new(
                        &mut self.stats,
                        &mut self.hooks.journal,
                        entry,
                        connected_at,
                        now,
                    );
                    sent = entry.session.fill_window(&mut c.out, now, &mut recorder);
                    let session = &entry.session;
                    self.stats.session_changed(mark, session);
                }
            }
        }
        if sent > 0 {
            self.hold_if_recorded(Some(conn), before);
            return self
                .conns
                .get(conn)
                .is_some_and(|c| !c.limited.has(Limited::OUTPUT_HELD));
        }
        if c.out.capacity() > 0 {
            // No output buffer is kept while there is nothing to send: an idle connection
            // costs no buffer memory.
            c.out = Output::default();
        }
        false
    }

    /// Why the shard is closing `conn` (after [`ReadState::Close`]): the reason code, and
    /// whether the client ended it itself. `None` while the connection is not being closed.
    pub fn close_reason(&self, conn: ConnId) -> Option<Kill> {
        self.conns.get(conn).and_then(|c| c.kill)
    }

    /// Whether the runtime should read `conn`'s socket now. A connection that may not read
    /// because of cross-shard backpressure is woken when the backpressure ends.
    pub fn read_state(&mut self, conn: ConnId) -> ReadState {
        let Some(c) = self.conns.get_mut(conn) else {
            return ReadState::Close;
        };
        if c.kill.is_some() {
            if c.limited.has(Limited::OUTPUT_HELD) {
                // Its last packets wait for the journal (the release wakes it).
                return ReadState::Wait;
            }
            // One flush attempt for a pending DISCONNECT, then close: a peer that does not read
            // must not keep the connection alive.
            return ReadState::Close;
        }
        if c.reprocess {
            c.reprocess = false;
            return ReadState::Reprocess;
        }
        if matches!(c.state, ConnState::Claiming { .. })
            || c.paused
            || c.throttled
            || c.limited.paused()
        {
            return ReadState::Wait;
        }
        if self.paused_for_memory(conn) {
            return ReadState::Wait;
        }
        if self.outbox.backpressured() {
            self.paused_readers.push(conn);
            return ReadState::Wait;
        }
        ReadState::Read
    }

    /// Bytes arrived on `conn` (empty after [`ReadState::Reprocess`]).
    pub fn on_bytes(&mut self, conn: ConnId, data: BytesMut, now: Instant) {
        self.set_now(now);
        self.stats.bytes_in += data.len() as u64;
        self.on_data(conn, data);
        self.drain_local_inbox();
    }

    /// Bytes arrived on `conn`, in a buffer the runtime reuses: they are copied once, onto
    /// the end of the partial packet kept from the last read if there is one.
    pub fn on_received(&mut self, conn: ConnId, bytes: &[u8], now: Instant) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let data = if c.leftover.is_empty() {
            BytesMut::from(bytes)
        } else {
            let mut data = c.leftover.take();
            data.extend_from_slice(bytes);
            data
        };
        self.set_now(now);
        self.stats.bytes_in += bytes.len() as u64;
        self.on_data(conn, data);
        self.drain_local_inbox();
    }

    /// This shard's number.
    pub fn shard_id(&self) -> usize {
        self.id
    }

    /// Whether connections wait for the runtime's attention (see [`Shard::drain_wakes`]).
    pub fn has_wakes(&self) -> bool {
        !self.wakes.is_empty()
    }

    /// Whether closing `conn` should half-close and linger: the server ended it (a refusing
    /// CONNACK or a DISCONNECT went out), so a client still sending reads the reason instead
    /// of a reset. A client that disconnected itself, or went away, does not linger.
    pub fn lingers_on_close(&self, conn: ConnId) -> bool {
        self.conns
            .get(conn)
            .and_then(|c| c.kill)
            .is_some_and(|kill| !kill.graceful)
    }

    /// The runtime closed `conn`'s socket (after [`ReadState::Close`], or because the peer
    /// went away): the will, the session, the slot.
    pub fn on_closed(&mut self, conn: ConnId, now: Instant) {
        self.set_now(now);
        self.on_conn_closed(conn);
    }

    /// Decodes and handles everything complete in `data` (after any leftover partial frame).
    pub(super) fn on_data(&mut self, index: ConnId, data: BytesMut) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        let mut buf = if conn.leftover.is_empty() {
            data
        } else {
            let mut buf = conn.leftover.take();
            buf.extend_from_slice(&data);
            buf
        };
        let max = self.config.max_packet_size as usize;
        let now_ms = self.clock_ms();
        if let Some(conn) = self.conns.get_mut(index) {
            conn.last_seen = now_ms;
        }
        while let Some(conn) = self.conns.get_mut(index) {
            if conn.kill.is_some()
                || conn.paused
                || conn.throttled
                || conn.limited.paused()
                || matches!(conn.state, ConnState::Claiming { .. })
            {
                break;
            }
            match decode(&mut buf, conn.protocol, max) {
                Ok(Some(packet)) => {
                    self.handle_packet(index, packet);
                }
                Ok(None) => break,
                Err(error) => {
                    self.on_decode_error(index, error);
                    break;
                }
            }
        }
        if let Some(conn) = self.conns.get_mut(index) {
            if conn.kill.is_none() && !buf.is_empty() {
                // Keep only the partial frame, in memory of its own, so it does not pin the
                // whole read buffer.
                conn.leftover.keep(&buf);
            }
        }
    }

    pub(super) fn on_decode_error(&mut self, index: ConnId, error: DecodeError) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        tracing::debug!(shard = self.id, conn = ?index, %error, "closing connection on bad input");
        if matches!(
            conn.state,
            ConnState::AwaitConnect | ConnState::OverLimit { .. }
        ) {
            if let DecodeError::UnsupportedProtocolVersion(level) = error {
                // The client's protocol is unknown: answer in 3.1.1 form (return code 1), as
                // MQTT 3.1.1 §3.1.2.2 requires; a 5.0-capable client reads it too.
                let version = if level == 5 {
                    ProtocolVersion::V5
                } else {
                    ProtocolVersion::V3_1_1
                };
                let connack = ConnAck {
                    reason: ReasonCode::UnsupportedProtocolVersion,
                    ..Default::default()
                };
                let _ = Packet::ConnAck(connack).encode(version, &mut conn.out);
                self.stats
                    .connect_refused(ReasonCode::UnsupportedProtocolVersion);
            }
            let reason = error.reason_code();
            conn.kill = Some(Kill {
                reason,
                graceful: false,
                cause: match error {
                    DecodeError::UnsupportedProtocolVersion(_) => DisconnectCause::ConnectRefused,
                    _ => DisconnectCause::from_reason(reason),
                },
            });
            self.wake_conn(index);
            return;
        }
        self.kill_conn(index, error.reason_code(), false);
    }

    /// The connection task ended: publish the will unless the client disconnected properly,
    /// end or park the session, free the connection.
    pub(super) fn on_conn_closed(&mut self, index: ConnId) {
        self.peers.remove(&index);
        self.certificate_users.closed(index);
        let Some(conn) = self.conns.remove(index) else {
            return;
        };
        self.stats.connections_closed += 1;
        let cause = conn
            .kill
            .map_or(DisconnectCause::SocketClosed, |kill| kill.cause);
        self.stats.disconnects[cause.index()] += 1;
        self.uncount_listener(conn.listener);
        self.forget_overload(index);
        if matches!(conn.state, ConnState::OverLimit { .. }) {
            self.over_limit -= 1;
        } else {
            self.global.connections.fetch_sub(1, Ordering::Relaxed);
        }
        let graceful = conn.kill.is_some_and(|k| k.graceful);
        match conn.state {
            ConnState::AwaitConnect | ConnState::OverLimit { .. } | ConnState::Detached => {}
            ConnState::Claiming { token } => {
                // The claim goes on without its connection: its answer still settles the
                // client id's ownership (see `on_granted`).
                if let Some(claim) = self.pending_claims.get_mut(&token) {
                    claim.conn = None;
                }
            }
            ConnState::Active { session, .. } => {
                let now_ms = self.clock_ms();
                if let Some(entry) = self.sessions.get(session) {
                    log_disconnect(self.id, &entry.session.client_id, conn.kill);
                }
                let Some(entry) = self
                    .sessions
                    .get_mut(session)
                    .filter(|e| e.conn == Some(index))
                else {
                    tracing::debug!(
                        shard = self.id,
                        conn = ?index,
                        "closed connection had a stale session handle"
                    );
                    self.drain_local_inbox();
                    return;
                };
                entry.conn = None;
                let will = entry.session.will.take();
                let client_id = entry.session.client_id.clone();
                let username = entry.session.username.clone();
                if let (false, Some(will)) = (graceful, will) {
                    match entry
                        .session
                        .will_timing(will.properties.will_delay_interval)
                    {
                        WillTiming::Now => self.publish_will(&client_id, username.as_deref(), will),
                        WillTiming::After(delay) => {
                            entry.set_pending_will(will);
                            let token = entry.token;
                            self.wheel.push(
                                Self::bucket(now_ms + 1000 * u64::from(delay)),
                                WheelEntry::Will { session, token },
                            );
                        }
                    }
                }
                if self.sessions.get(session).is_some_and(|e| e.session.clean) {
                    self.end_session(session);
                } else {
                    self.park_session(session);
                }
            }
        }
        self.drain_local_inbox();
    }

    pub(super) fn resume_reading(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.paused = false;
            c.reprocess = !c.leftover.is_empty();
            self.wake_conn(conn);
        }
    }

    /// Second phase of shutdown: closes every connection (MQTT 5 clients get DISCONNECT 0x8B).
    pub fn shutdown_all(&mut self, now: Instant) {
        self.set_now(now);
        let indices = self.conns.handles();
        for index in indices {
            self.kill_conn(index, ReasonCode::ServerShuttingDown, false);
        }
    }
}

/// Mosquitto's disconnect lines, so existing log tooling finds them.
fn log_disconnect(shard: usize, client_id: &MqttStr, kill: Option<Kill>) {
    match kill {
        Some(Kill {
            reason: ReasonCode::Success,
            ..
        }) => tracing::info!(shard, "Client {client_id} disconnected."),
        Some(Kill {
            reason: ReasonCode::KeepAliveTimeout,
            ..
        }) => tracing::info!(
            shard,
            "Client {client_id} has exceeded timeout, disconnecting."
        ),
        Some(Kill { reason, .. }) => {
            tracing::info!(shard, %reason, "Client {client_id} disconnected: {reason}.")
        }
        None => tracing::info!(shard, "Client {client_id} closed its connection."),
    }
}
