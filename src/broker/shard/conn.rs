//! Connections: registration and limits, framing of received bytes, closing, and the socket polling the runtime drives.

use super::*;

/// Connections beyond a limit that a shard keeps open (until their CONNECT is answered or the
/// connect timeout) to tell them why; past this many more, new ones are closed at once.
pub(super) const MAX_OVER_LIMIT_CONNS: usize = 256;

/// Size of the shard's socket read buffer.
pub(super) const SCRATCH_SIZE: usize = 64 * 1024;

/// Why a connection is being closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kill {
    /// Reason (sent in a DISCONNECT to MQTT 5.0 clients when `notify` is set).
    pub reason: ReasonCode,
    /// The client sent DISCONNECT: no will.
    pub graceful: bool,
}

#[derive(Debug)]
pub(super) enum ConnState {
    AwaitConnect,
    /// Accepted beyond a connection limit: its CONNECT is answered with CONNACK 0x97 (3.x:
    /// 3, server unavailable) and the connection closed, so the client learns why.
    OverLimit,
    Claiming {
        token: u64,
    },
    /// Attached to the session in slot `session` whose claim token is `token` (the handle's
    /// generation: a slot reused by another session has another token). A `u32` slot keeps
    /// the state, and so every connection, 8 bytes smaller.
    Active {
        session: u32,
        token: u64,
    },
    /// Session taken over by another connection; nothing left to clean up.
    Detached,
}

/// A network connection's state on its shard.
#[derive(Debug)]
pub struct Conn {
    pub(super) serial: u64,
    pub(super) state: ConnState,
    pub(super) protocol: ProtocolVersion,
    pub(super) keep_alive: u16,
    /// Milliseconds since the shard started, at the last packet (or the accept).
    pub(super) last_seen: u64,
    pub(super) out: BytesMut,
    pub(super) leftover: BytesMut,
    pub(super) waker: Option<Waker>,
    pub(super) kill: Option<Kill>,
    pub(super) reprocess: bool,
    /// Waiting for other shards before answering (a SUBACK or a retained PUBACK): no further
    /// packets are read meanwhile, so acknowledgements keep their order.
    pub(super) paused: bool,
    /// Publishing faster than a subscriber on this shard drains its queue: reading pauses
    /// until that queue is half empty again (or the next timer tick, so that two clients
    /// feeding each other can never wait on each other for good).
    pub(super) throttled: bool,
    /// Inbound topic aliases (MQTT 5.0), allocated on first use.
    // Boxed on purpose: 8 bytes for the many clients without aliases instead of a 48-byte map.
    #[allow(clippy::box_collection)]
    pub(super) aliases_in: Option<Box<HashMap<u16, MqttStr>>>,
}

/// What a connection task learns from polling its socket.
#[derive(Debug)]
pub enum ConnEvent {
    /// Bytes arrived (or buffered bytes must be processed again).
    Data(BytesMut),
    /// The connection is over; `graceful` when the client sent DISCONNECT.
    Closed,
}

impl Shard {
    /// Registers a freshly accepted connection. Beyond a connection limit it is registered as
    /// over the limit (its CONNECT gets a refusing CONNACK); `None` when even those are too
    /// many and the connection should be closed at once.
    pub fn register_conn(&mut self) -> Option<usize> {
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
        if over_limit {
            if self.over_limit >= MAX_OVER_LIMIT_CONNS {
                return None;
            }
            self.over_limit += 1;
        }
        let serial = self.next_serial();
        let index = self.conns.insert(Conn {
            serial,
            state: if over_limit {
                ConnState::OverLimit
            } else {
                ConnState::AwaitConnect
            },
            protocol: ProtocolVersion::V3_1_1,
            keep_alive: 0,
            last_seen: now_ms,
            out: BytesMut::new(),
            leftover: BytesMut::new(),
            waker: None,
            kill: None,
            reprocess: false,
            paused: false,
            throttled: false,
            aliases_in: None,
        });
        let deadline = Self::bucket(now_ms + 1000 * u64::from(self.config.connect_timeout.max(1)));
        self.wheel
            .entry(deadline)
            .or_default()
            .push(WheelEntry::Conn { index, serial });
        Some(index)
    }

    pub(super) fn wake_conn(&mut self, index: usize) {
        if let Some(conn) = self.conns.get_mut(index) {
            if let Some(waker) = conn.waker.take() {
                waker.wake();
            }
        }
    }

    pub(super) fn kill_conn(&mut self, index: usize, reason: ReasonCode, graceful: bool) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        if conn.kill.is_some() {
            return;
        }
        if !graceful && conn.protocol.is_v5() && matches!(conn.state, ConnState::Active { .. }) {
            let _ =
                Packet::Disconnect(Disconnect::new(reason)).encode(conn.protocol, &mut conn.out);
        }
        conn.kill = Some(Kill { reason, graceful });
        self.wake_conn(index);
    }

    /// Drives one connection's socket: flushes output, reads input, registers for wake-ups.
    /// Called from the connection task's `poll_fn`; the shard borrow ends when it returns.
    pub fn poll_conn<S>(
        &mut self,
        index: usize,
        stream: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<ConnEvent>
    where
        S: futures_lite::io::AsyncRead + futures_lite::io::AsyncWrite + Unpin,
    {
        use std::pin::Pin;
        let Some(conn) = self.conns.get_mut(index) else {
            return Poll::Ready(ConnEvent::Closed);
        };
        while !conn.out.is_empty() {
            match Pin::new(&mut *stream).poll_write(cx, &conn.out) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(ConnEvent::Closed),
                Poll::Ready(Ok(written)) => conn.out.advance(written),
                Poll::Pending => break,
            }
        }
        if conn.out.is_empty() {
            // Messages queued while the client was a slow consumer go out once it has caught up.
            if let ConnState::Active { session, token } = conn.state {
                if let Some(entry) = self
                    .sessions
                    .get_mut(session as usize)
                    .filter(|e| e.token == token)
                {
                    let session = &mut entry.session;
                    if session.queued_len() > 0
                        && session.fill_window(&mut conn.out, Instant::now()) > 0
                    {
                        cx.waker().wake_by_ref();
                    }
                }
            }
        }
        if conn.out.is_empty() && conn.out.capacity() > 0 {
            // No output buffer is kept while there is nothing to send: an idle connection
            // costs no buffer memory.
            conn.out = BytesMut::new();
        }
        if conn.kill.is_some() {
            // One flush attempt for a pending DISCONNECT, then close: a peer that does not read
            // must not keep the connection alive.
            return Poll::Ready(ConnEvent::Closed);
        }
        if conn.reprocess {
            conn.reprocess = false;
            return Poll::Ready(ConnEvent::Data(BytesMut::new()));
        }
        let reading =
            !matches!(conn.state, ConnState::Claiming { .. }) && !conn.paused && !conn.throttled;
        if reading && self.backpressured {
            self.paused_readers.push(cx.waker().clone());
        } else if reading {
            match Pin::new(&mut *stream).poll_read(cx, &mut self.scratch) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(ConnEvent::Closed),
                Poll::Ready(Ok(read)) => {
                    return Poll::Ready(ConnEvent::Data(BytesMut::from(&self.scratch[..read])));
                }
                Poll::Pending => {}
            }
        }
        let conn = &mut self.conns[index];
        if !conn.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            conn.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Decodes and handles everything complete in `data` (after any leftover partial frame).
    pub fn on_data(&mut self, index: usize, data: BytesMut) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        let mut buf = if conn.leftover.is_empty() {
            data
        } else {
            let mut buf = std::mem::take(&mut conn.leftover);
            buf.extend_from_slice(&data);
            buf
        };
        let max = self.config.max_packet_size as usize;
        let now_ms = self.clock_ms();
        if let Some(conn) = self.conns.get_mut(index) {
            conn.last_seen = now_ms;
        }
        loop {
            let conn = &mut self.conns[index];
            if conn.kill.is_some()
                || conn.paused
                || conn.throttled
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
                conn.leftover = BytesMut::from(&buf[..]);
            }
        }
    }

    pub(super) fn on_decode_error(&mut self, index: usize, error: DecodeError) {
        let conn = &mut self.conns[index];
        tracing::debug!(shard = self.id, conn = index, %error, "closing connection on bad input");
        if matches!(conn.state, ConnState::AwaitConnect | ConnState::OverLimit) {
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
            }
            conn.kill = Some(Kill {
                reason: error.reason_code(),
                graceful: false,
            });
            return;
        }
        self.kill_conn(index, error.reason_code(), false);
    }

    /// The connection task ended: publish the will unless the client disconnected properly,
    /// end or park the session, free the connection.
    pub fn on_conn_closed(&mut self, index: usize) {
        if !self.conns.contains(index) {
            return;
        }
        let conn = self.conns.remove(index);
        if matches!(conn.state, ConnState::OverLimit) {
            self.over_limit -= 1;
        } else {
            self.global.connections.fetch_sub(1, Ordering::Relaxed);
        }
        let graceful = conn.kill.is_some_and(|k| k.graceful);
        match conn.state {
            ConnState::AwaitConnect | ConnState::OverLimit | ConnState::Detached => {}
            ConnState::Claiming { token } => {
                // The claim goes on without its connection: its answer still settles the
                // client id's ownership (see `on_granted`).
                if let Some(claim) = self.pending_claims.get_mut(&token) {
                    claim.conn = None;
                }
            }
            ConnState::Active { session, token } => {
                let session = session as usize;
                let now_ms = self.clock_ms();
                let Some(entry) = self
                    .sessions
                    .get_mut(session)
                    .filter(|e| e.token == token && e.conn == Some(index))
                else {
                    tracing::debug!(
                        shard = self.id,
                        conn = index,
                        "closed connection had a stale session handle"
                    );
                    self.drain_local_inbox();
                    return;
                };
                entry.conn = None;
                let will = entry.session.will.take();
                let client_id = entry.session.client_id.clone();
                if let (false, Some(will)) = (graceful, will) {
                    let delay = will.properties.will_delay_interval.unwrap_or(0);
                    if delay == 0 || entry.session.clean {
                        // No delay, or the session ends now: the will goes out now.
                        self.publish_will(&client_id, will);
                    } else {
                        entry.pending_will = Some(will);
                        let token = entry.token;
                        self.wheel
                            .entry(Self::bucket(now_ms + 1000 * u64::from(delay)))
                            .or_default()
                            .push(WheelEntry::Will {
                                index: session,
                                token,
                            });
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

    pub(super) fn resume_reading(&mut self, conn: usize) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.paused = false;
            c.reprocess = !c.leftover.is_empty();
            self.wake_conn(conn);
        }
    }

    /// Second phase of shutdown: closes every connection (MQTT 5 clients get DISCONNECT 0x8B).
    pub fn shutdown_all(&mut self) {
        let indices: Vec<usize> = self.conns.iter().map(|(index, _)| index).collect();
        for index in indices {
            self.kill_conn(index, ReasonCode::ServerShuttingDown, false);
        }
    }
}
