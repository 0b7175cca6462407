//! The engine proper: socket records, the per-pass loop (service woken sockets, one enter,
//! handle completions), accepting, receiving, sending and the close sequence.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use io_uring::{cqueue, opcode, squeue, types};

use super::bufring::BufRing;
use super::layers::{LayerError, Layers, ListenerTransport};
use super::ring::{Completion, CompletionMode, Ring, RingCounters};
use super::token::{Op, Token, MAX_SLOT};
use super::transport::Transport;
use super::Handler;
use crate::broker::handles::{ConnId, GenSlab, Handle};
use crate::broker::ReadState;
use crate::codec::Output;

mod layered;
mod sleep;
mod vectored;

use vectored::Vectored;

/// Marker for socket handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SocketKind {}
/// A socket in the engine's slab.
type SocketId = Handle<SocketKind>;

/// Buffer group of the shard's receive buffers.
const RECV_GROUP: u16 = 0;
/// How long a failed accept (out of descriptors or memory) waits before it is re-armed.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Sizes of the engine's rings.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Submission queue entries (completion queue: four times as many).
    pub ring_entries: u32,
    /// Provided receive buffers (a power of two).
    pub buffers: u16,
    /// Size of each receive buffer.
    pub buffer_size: usize,
    /// How long a closing socket may linger (half-closed, discarding input) or wait for its
    /// last send before it is shut down for good.
    pub linger: Duration,
    /// Forces a completion mode (`None`: the best the kernel accepts).
    pub mode: Option<CompletionMode>,
    /// TLS handshake steps run per pass, at most; input of further handshakes waits for the
    /// next pass (established connections keep their latency during a handshake flood).
    pub handshakes_per_pass: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            ring_entries: 1024,
            buffers: 256,
            buffer_size: 16 * 1024,
            linger: Duration::from_secs(1),
            mode: None,
            handshakes_per_pass: 4,
        }
    }
}

/// Counters of the engine's work (monotonic).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    /// The ring's own counters.
    pub ring: RingCounters,
    /// Sockets accepted.
    pub accepted: u64,
    /// Receives re-armed because the kernel ended them (buffer ring empty, errors).
    pub recv_rearms: u64,
    /// Receive completions that found the buffer ring empty (ENOBUFS).
    pub buffer_ring_empty: u64,
    /// Sleeps in the ring ([`Engine::sleep`] calls that blocked).
    pub sleeps: u64,
    /// Sends submitted (one per connection per pass at most).
    pub sends: u64,
    /// Sends that wrote less than asked and were resubmitted for the rest.
    pub partial_sends: u64,
    /// Completions for sockets that no longer exist (ignored).
    pub stale_completions: u64,
    /// Handshake input put off to a later pass by the per-pass handshake budget.
    pub handshakes_deferred: u64,
    /// TLS or WebSocket transports that failed (bad handshake, bad record or frame).
    pub transport_errors: u64,
    /// Sockets currently open (including closing ones).
    pub open_sockets: u64,
}

/// Byte sizes of the per-connection records, for the footprint guards.
#[derive(Debug, Clone, Copy)]
pub struct SocketRecordSize {
    /// One entry of the socket slab.
    pub socket: usize,
    /// One entry of the connection-to-socket map.
    pub conn_map_entry: usize,
}

mod flag {
    /// A multishot receive is in the kernel.
    pub const RECV_ARMED: u8 = 1;
    /// A cancellation of that receive was submitted.
    pub const RECV_CANCELLING: u8 = 1 << 1;
    /// A send is in the kernel (the socket's `sending` buffer is borrowed by it).
    pub const SENDING: u8 = 1 << 2;
    /// Queued in `dirty`.
    pub const DIRTY: u8 = 1 << 3;
    /// The handler forgot the connection; the socket is being closed.
    pub const CLOSING: u8 = 1 << 4;
    /// Half-closed after a server-side close: input is discarded until EOF or the deadline.
    pub const LINGER: u8 = 1 << 5;
    /// The peer's side is over (EOF, reset, error): no receive is re-armed.
    pub const READ_DONE: u8 = 1 << 6;
    /// A shutdown was submitted.
    pub const SHUT: u8 = 1 << 7;
}

/// One connection's socket: 48 bytes (56 in the slab), no buffer while idle.
#[derive(Debug)]
struct Socket {
    /// The buffer the in-flight send reads from (empty, with no allocation, otherwise).
    sending: BytesMut,
    /// The handler's connection (forgotten by the handler once CLOSING is set).
    conn: ConnId,
    fd: RawFd,
    flags: u8,
    transport: Transport,
}

impl Socket {
    fn has(&self, bit: u8) -> bool {
        self.flags & bit != 0
    }
    fn set(&mut self, bit: u8) {
        self.flags |= bit;
    }
    fn clear(&mut self, bit: u8) {
        self.flags &= !bit;
    }
    /// The handler's connection, while the handler still knows it.
    fn live_conn(&self) -> Option<ConnId> {
        (!self.has(flag::CLOSING)).then_some(self.conn)
    }
}

/// A listening socket served by a multishot accept.
#[derive(Debug)]
struct Listening {
    fd: RawFd,
    /// The listener's index in the configuration (`None`: no settings of its own).
    index: Option<usize>,
    /// What its connections speak above TCP.
    transport: ListenerTransport,
    armed: bool,
    retry_at: Option<Instant>,
}

/// The shard's io_uring engine (see the module documentation).
pub struct Engine {
    // Field order matters: the ring is closed before the buffer memory it points to is freed.
    ring: Ring,
    buffers: BufRing,
    sockets: GenSlab<SocketKind, Socket>,
    /// The socket of each handler connection, by connection slot.
    by_conn: Vec<Option<SocketId>>,
    listeners: Vec<Listening>,
    accepting: bool,
    dirty: Vec<SocketId>,
    /// Closing sockets and the time by which they are shut down for good.
    deadlines: VecDeque<(Instant, SocketId)>,
    /// Output the handler still had for a socket whose last send was in flight when it closed.
    final_output: HashMap<SocketId, Output>,
    /// Sends of several buffers in flight (output with shared payloads), by socket: such a
    /// socket's `sending` is empty. Boxed: the kernel reads the header and iovecs in place.
    vectored: HashMap<SocketId, Box<Vectored>>,
    /// TLS / WebSocket state of the sockets whose transport is `Layered`.
    layers: HashMap<SocketId, Box<Layers>>,
    /// Sockets with handshake input waiting for the next pass's budget.
    deferred: Vec<SocketId>,
    /// Handshake steps this pass may still run.
    handshakes_left: u32,
    completions: Vec<Completion>,
    /// The read that lets other threads end [`Engine::sleep`].
    doorbell: Option<sleep::DoorbellRead>,
    config: EngineConfig,
    stats: EngineStats,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("ring", &self.ring)
            .field("buffers", &self.buffers)
            .field("sockets", &self.sockets.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Engine {
    /// A ring and a buffer ring for the calling thread (which must be the only one that uses
    /// the engine: the ring is set up for a single issuer).
    pub fn new(config: EngineConfig) -> io::Result<Engine> {
        let ring = Ring::new(config.ring_entries, config.mode)?;
        let buffers = BufRing::register(&ring, RECV_GROUP, config.buffers, config.buffer_size)
            .map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!(
                        "registering the receive buffer ring failed ({error}): shardmq needs \
                         Linux >= 6.0 (multishot receive with a provided-buffer ring)"
                    ),
                )
            })?;
        Ok(Engine {
            ring,
            buffers,
            sockets: GenSlab::new(),
            by_conn: Vec::new(),
            listeners: Vec::new(),
            accepting: true,
            dirty: Vec::new(),
            deadlines: VecDeque::new(),
            final_output: HashMap::new(),
            vectored: HashMap::new(),
            layers: HashMap::new(),
            deferred: Vec::new(),
            handshakes_left: config.handshakes_per_pass,
            completions: Vec::with_capacity(256),
            doorbell: None,
            config,
            stats: EngineStats::default(),
        })
    }

    /// Tries, on a throw-away engine, every kernel feature the engine relies on: the ring's
    /// set-up flags, the provided-buffer ring, and a multishot receive that really stays armed
    /// across a completion (IORING_REGISTER_PROBE lists opcodes, not multishot flags). The
    /// error says what is missing.
    pub fn probe() -> io::Result<CompletionMode> {
        let mut engine = Engine::new(EngineConfig {
            ring_entries: 8,
            buffers: 2,
            buffer_size: 64,
            ..EngineConfig::default()
        })?;
        let mut fds = [0 as RawFd; 2];
        // SAFETY: writes two descriptors into `fds`.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        let close_pair = || {
            // SAFETY: both descriptors are ours.
            unsafe {
                libc::close(fds[0]);
                libc::close(fds[1]);
            }
        };
        let entry = opcode::RecvMulti::new(types::Fd(fds[0]), RECV_GROUP)
            .build()
            .user_data(1);
        // SAFETY: the receive writes only into ring buffers.
        let pushed = unsafe { engine.ring.push(&entry) }.and_then(|()| engine.ring.enter());
        // SAFETY: writes one byte from a local.
        let wrote = unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) };
        let mut completions = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(1);
        while pushed.is_ok() && wrote == 1 && completions.is_empty() && Instant::now() < deadline {
            engine.ring.enter()?;
            engine.ring.reap(&mut completions);
        }
        close_pair();
        pushed?;
        match completions.first() {
            Some(c) if c.result == 1 && cqueue::more(c.flags) => Ok(engine.mode()),
            other => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "multishot receive does not work on this kernel (completion {other:?}): \
                     shardmq needs Linux >= 6.0"
                ),
            )),
        }
    }

    /// The completion mode the ring runs in.
    pub fn mode(&self) -> CompletionMode {
        self.ring.mode()
    }

    /// The eventfd the ring signals while [`Engine::prepare_sleep`] has turned wake-ups on.
    pub fn eventfd(&self) -> RawFd {
        self.ring.eventfd()
    }

    /// Counters so far.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            ring: self.ring.counters,
            open_sockets: self.sockets.len() as u64,
            ..self.stats
        }
    }

    /// Sizes of the per-connection records.
    pub fn record_size() -> SocketRecordSize {
        SocketRecordSize {
            socket: std::mem::size_of::<Socket>(),
            conn_map_entry: std::mem::size_of::<Option<SocketId>>(),
        }
    }

    /// Serves listening socket `fd` (kept open by the caller) for plain MQTT listener `index`.
    pub fn listen(&mut self, fd: RawFd, index: Option<usize>) -> io::Result<()> {
        self.listen_with(fd, index, ListenerTransport::default())
    }

    /// Serves listening socket `fd` for listener `index`, whose connections speak `transport`.
    pub fn listen_with(
        &mut self,
        fd: RawFd,
        index: Option<usize>,
        transport: ListenerTransport,
    ) -> io::Result<()> {
        let slot = self.listeners.len() as u32;
        self.listeners.push(Listening {
            fd,
            index,
            transport,
            armed: false,
            retry_at: None,
        });
        self.arm_accept(slot)
    }

    /// Replaces what new connections of listener `index` speak (a reload with new
    /// certificates); established connections keep theirs.
    pub fn set_transport(&mut self, index: usize, transport: ListenerTransport) {
        for listener in &mut self.listeners {
            if listener.index == Some(index) {
                listener.transport = transport.clone();
            }
        }
    }

    /// Stops re-arming accepts (shutdown: the caller shuts the listening sockets down, which
    /// ends the accepts in the kernel).
    pub fn stop_accepting(&mut self) {
        self.accepting = false;
    }

    /// Sockets open (including closing ones).
    pub fn open_sockets(&self) -> usize {
        self.sockets.len()
    }

    /// One pass: serve sockets the handler woke, submit everything queued and run completion
    /// work with one `io_uring_enter`, handle the completions. Returns whether the pass did
    /// anything (then the caller yields and runs another; otherwise it may sleep).
    pub fn turn(&mut self, handler: &mut impl Handler, now: Instant) -> io::Result<bool> {
        self.handshakes_left = self.config.handshakes_per_pass;
        let resumed = self.run_deferred(handler, now)?;
        self.collect_wakes(handler);
        self.service_dirty(handler, now)?;
        self.rearm_listeners(now)?;
        self.expire_deadlines(now)?;
        let entered = self.ring.needs_enter();
        if entered {
            self.ring.enter()?;
        }
        let mut completions = std::mem::take(&mut self.completions);
        self.ring.reap(&mut completions);
        let worked = entered || resumed || !completions.is_empty();
        for completion in completions.iter().copied() {
            self.complete(handler, completion, now)?;
        }
        self.completions = completions;
        // Output produced by those completions goes into the next pass's enter.
        self.collect_wakes(handler);
        self.service_dirty(handler, now)?;
        Ok(worked || self.ring.queued() > 0)
    }

    /// Turns ring wake-ups on before the caller sleeps on [`Engine::eventfd`]. Returns
    /// `false` (and turns them off again) when there is work already: do not sleep.
    pub fn prepare_sleep(&mut self) -> bool {
        self.ring.set_wakeups(true);
        if self.ring.has_work() || !self.dirty.is_empty() || !self.deferred.is_empty() {
            self.ring.set_wakeups(false);
            return false;
        }
        true
    }

    /// The caller woke up: completions are reaped by passes from now on, no eventfd needed.
    pub fn woke(&mut self) {
        self.ring.set_wakeups(false);
    }

    /// The peer address of `conn`'s socket while the handler still knows the connection (one
    /// getpeername(2); for the admin client list, so no connection keeps its address).
    pub fn peer_addr(&self, conn: ConnId) -> Option<std::net::SocketAddr> {
        let id = (*self.by_conn.get(conn.slot())?)?;
        let socket = self.sockets.get(id)?;
        if socket.live_conn() != Some(conn) {
            return None;
        }
        peer_address(socket.fd)
    }

    /// The earliest deadline of a closing socket (the caller wakes the engine by then).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|&(at, _)| at)
    }

    fn collect_wakes(&mut self, handler: &mut impl Handler) {
        let by_conn = &self.by_conn;
        let sockets = &mut self.sockets;
        let dirty = &mut self.dirty;
        handler.drain_wakes(&mut |conn| {
            let Some(Some(id)) = by_conn.get(conn.slot()).copied() else {
                return;
            };
            if let Some(socket) = sockets.get_mut(id) {
                if socket.live_conn() == Some(conn) && !socket.has(flag::DIRTY) {
                    socket.set(flag::DIRTY);
                    dirty.push(id);
                }
            }
        });
    }

    fn mark_dirty(&mut self, id: SocketId) {
        if let Some(socket) = self.sockets.get_mut(id) {
            if !socket.has(flag::DIRTY) {
                socket.set(flag::DIRTY);
                self.dirty.push(id);
            }
        }
    }

    fn service_dirty(&mut self, handler: &mut impl Handler, now: Instant) -> io::Result<()> {
        // Servicing may wake more sockets (a close frees a session another socket waited
        // for): keep going until none is left.
        while !self.dirty.is_empty() {
            let dirty = std::mem::take(&mut self.dirty);
            for &id in &dirty {
                if let Some(socket) = self.sockets.get_mut(id) {
                    socket.clear(flag::DIRTY);
                    self.service(handler, id, now)?;
                }
            }
            if self.dirty.is_empty() {
                self.dirty = dirty;
                self.dirty.clear();
            }
            self.collect_wakes(handler);
        }
        Ok(())
    }

    /// Brings one socket in line with what the handler wants: its output sent, its receive
    /// armed or cancelled, or its close started.
    fn service(
        &mut self,
        handler: &mut impl Handler,
        id: SocketId,
        now: Instant,
    ) -> io::Result<()> {
        let Some(socket) = self.sockets.get(id) else {
            return Ok(());
        };
        let Some(conn) = socket.live_conn() else {
            return self.continue_close(id);
        };
        loop {
            let Some(socket) = self.sockets.get_mut(id) else {
                return Ok(());
            };
            if !socket.has(flag::SENDING) {
                match self.next_output(handler, id, conn, false) {
                    Ok(Some(out)) => self.start_send(id, out)?,
                    Ok(None) => {}
                    Err(gone) => {
                        let peer_gone = gone.is_none();
                        if let Some(error) = gone {
                            self.transport_failed(id, &error);
                        }
                        return self.close(handler, id, now, peer_gone);
                    }
                }
            }
            match handler.read_state(conn) {
                ReadState::Close => return self.close(handler, id, now, false),
                ReadState::Reprocess => {
                    handler.reprocess(conn, now);
                    continue;
                }
                ReadState::Wait => self.pause_recv(id)?,
                ReadState::Read => self.arm_recv(id)?,
            }
            return Ok(());
        }
    }

    fn token(&self, op: Op, id: SocketId) -> u64 {
        Token::new(op, id.slot() as u32, id.generation()).encode()
    }

    fn arm_recv(&mut self, id: SocketId) -> io::Result<()> {
        let Some(socket) = self.sockets.get_mut(id) else {
            return Ok(());
        };
        if socket.has(flag::RECV_ARMED) || socket.has(flag::READ_DONE) {
            return Ok(());
        }
        socket.set(flag::RECV_ARMED);
        let entry = opcode::RecvMulti::new(types::Fd(socket.fd), self.buffers.group())
            .build()
            .user_data(self.token(Op::Recv, id));
        // SAFETY: the receive writes only into ring buffers, which outlive the ring.
        unsafe { self.ring.push(&entry) }
    }

    fn pause_recv(&mut self, id: SocketId) -> io::Result<()> {
        let Some(socket) = self.sockets.get_mut(id) else {
            return Ok(());
        };
        if !socket.has(flag::RECV_ARMED) || socket.has(flag::RECV_CANCELLING) {
            return Ok(());
        }
        socket.set(flag::RECV_CANCELLING);
        let target = self.token(Op::Recv, id);
        let entry = opcode::AsyncCancel::new(target)
            .build()
            .user_data(self.token(Op::Cancel, id))
            .flags(squeue::Flags::SKIP_SUCCESS);
        // SAFETY: a cancellation refers to no memory.
        unsafe { self.ring.push(&entry) }
    }

    /// Sends `out` on a socket with no send in flight: from one buffer, or, when it shares
    /// payloads, as several buffers in one `SENDMSG`.
    fn start_send(&mut self, id: SocketId, out: Output) -> io::Result<()> {
        let Some(socket) = self.sockets.get_mut(id) else {
            return Ok(());
        };
        debug_assert!(!socket.has(flag::SENDING));
        if out.has_shared() {
            self.vectored
                .insert(id, Box::new(Vectored::new(out.into_segments())));
        } else {
            socket.sending = out.into_contiguous();
        }
        self.submit_send(id)
    }

    fn submit_send(&mut self, id: SocketId) -> io::Result<()> {
        let Some(socket) = self.sockets.get_mut(id) else {
            return Ok(());
        };
        if socket.sending.is_empty() {
            if let Some(vectored) = self.vectored.get_mut(&id) {
                socket.set(flag::SENDING);
                let header = vectored.prepare();
                let entry = opcode::SendMsg::new(types::Fd(socket.fd), header)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
                    .user_data(Token::new(Op::Send, id.slot() as u32, id.generation()).encode());
                self.stats.sends += 1;
                // SAFETY: the header, its iovecs and the buffers they point into live in the
                // boxed `Vectored`, which stays in `vectored` untouched until the completion.
                return unsafe { self.ring.push(&entry) };
            }
        }
        debug_assert!(!socket.sending.is_empty());
        socket.set(flag::SENDING);
        let len = u32::try_from(socket.sending.len()).unwrap_or(u32::MAX);
        let entry = opcode::Send::new(types::Fd(socket.fd), socket.sending.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(self.token(Op::Send, id));
        self.stats.sends += 1;
        // SAFETY: `sending` is neither touched nor dropped while SENDING is set, and the
        // socket record (which owns it) is removed only when no request is in flight.
        unsafe { self.ring.push(&entry) }
    }

    fn arm_accept(&mut self, slot: u32) -> io::Result<()> {
        let Some(listener) = self.listeners.get_mut(slot as usize) else {
            return Ok(());
        };
        if listener.armed || !self.accepting {
            return Ok(());
        }
        listener.armed = true;
        listener.retry_at = None;
        // Blocking sockets on purpose: io_uring waits for them with its internal poll, where a
        // non-blocking one would fail sends with EAGAIN and need a poll request of our own.
        let entry = opcode::AcceptMulti::new(types::Fd(listener.fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(Token::new(Op::Accept, slot, 0).encode());
        // SAFETY: a multishot accept without an address buffer refers to no memory.
        unsafe { self.ring.push(&entry) }
    }

    fn rearm_listeners(&mut self, now: Instant) -> io::Result<()> {
        for slot in 0..self.listeners.len() {
            let listener = &self.listeners[slot];
            if !listener.armed && listener.retry_at.is_none_or(|at| at <= now) {
                self.arm_accept(slot as u32)?;
            }
        }
        Ok(())
    }

    fn expire_deadlines(&mut self, now: Instant) -> io::Result<()> {
        while let Some(&(at, id)) = self.deadlines.front() {
            if at > now {
                break;
            }
            self.deadlines.pop_front();
            let Some(socket) = self.sockets.get_mut(id) else {
                continue;
            };
            // Lingered long enough, or the last send is stuck behind a peer that does not
            // read: shut both ways, which ends the requests still in the kernel.
            socket.clear(flag::LINGER);
            shutdown(socket.fd, libc::SHUT_RDWR);
            self.continue_close(id)?;
        }
        Ok(())
    }

    /// Starts closing a socket: the handler forgets the connection now (its session is free
    /// for a takeover at once); the socket sends what is left, lingers if the handler says so,
    /// and is closed once no request of its own is in the kernel.
    fn close(
        &mut self,
        handler: &mut impl Handler,
        id: SocketId,
        now: Instant,
        peer_gone: bool,
    ) -> io::Result<()> {
        let Some(socket) = self.sockets.get_mut(id) else {
            return Ok(());
        };
        let Some(conn) = socket.live_conn() else {
            return self.continue_close(id);
        };
        socket.set(flag::CLOSING);
        if peer_gone {
            socket.set(flag::READ_DONE);
        } else {
            if handler.lingers(conn) {
                socket.set(flag::LINGER);
            }
            // The last output (a refusing CONNACK, a DISCONNECT) still goes out.
            if let Ok(Some(out)) = self.next_output(handler, id, conn, true) {
                if let Some(socket) = self.sockets.get_mut(id) {
                    if socket.has(flag::SENDING) {
                        self.final_output.insert(id, out);
                    } else {
                        self.start_send(id, out)?;
                    }
                }
            }
        }
        if let Some(entry) = self.by_conn.get_mut(conn.slot()) {
            *entry = None;
        }
        handler.closed(conn, now);
        self.deadlines.push_back((now + self.config.linger, id));
        self.continue_close(id)
    }

    /// Advances a closing socket: last send, half-close and linger, cancel the receive, close.
    fn continue_close(&mut self, id: SocketId) -> io::Result<()> {
        let Some(socket) = self.sockets.get_mut(id) else {
            return Ok(());
        };
        if socket.has(flag::SENDING) {
            return Ok(());
        }
        if let Some(rest) = self.final_output.remove(&id) {
            if !socket.has(flag::READ_DONE) {
                return self.start_send(id, rest);
            }
        }
        if socket.has(flag::LINGER) && !socket.has(flag::READ_DONE) {
            if !socket.has(flag::SHUT) {
                socket.set(flag::SHUT);
                shutdown(socket.fd, libc::SHUT_WR);
                // Keep receiving (and discarding) until the client closes or the deadline.
                return self.arm_recv(id);
            }
            return Ok(());
        }
        let Some(socket) = self.sockets.get_mut(id) else {
            return Ok(());
        };
        if socket.has(flag::RECV_ARMED) {
            return self.pause_recv(id);
        }
        // Nothing of this socket is in the kernel any more: the slot can be reused.
        let Some(socket) = self.sockets.remove(id) else {
            return Ok(());
        };
        self.layers.remove(&id);
        let entry = opcode::Close::new(types::Fd(socket.fd))
            .build()
            .user_data(Token::new(Op::Close, 0, 0).encode())
            .flags(squeue::Flags::SKIP_SUCCESS);
        // SAFETY: refers to no memory.
        unsafe { self.ring.push(&entry) }
    }

    fn socket_of(&mut self, token: Token) -> Option<SocketId> {
        let id = SocketId::from_parts(token.slot, token.generation);
        if self.sockets.contains(id) {
            Some(id)
        } else {
            self.stats.stale_completions += 1;
            None
        }
    }

    pub(super) fn complete(
        &mut self,
        handler: &mut impl Handler,
        completion: Completion,
        now: Instant,
    ) -> io::Result<()> {
        let Some(token) = Token::decode(completion.user_data) else {
            tracing::warn!(
                user_data = completion.user_data,
                "completion the engine did not ask for"
            );
            return Ok(());
        };
        match token.op {
            Op::Accept => self.on_accept(handler, token.slot, completion, now),
            Op::Recv => self.on_recv(handler, token, completion, now),
            Op::Send => self.on_send(handler, token, completion, now),
            Op::Doorbell => self.on_doorbell(completion),
            Op::Cancel => {
                // Only failures come back (SKIP_SUCCESS). ENOENT/EALREADY: the request had
                // ended already.
                if !matches!(-completion.result, libc::ENOENT | libc::EALREADY) {
                    tracing::debug!(op = ?token.op, result = completion.result, "request failed");
                }
                Ok(())
            }
            Op::Close => {
                tracing::debug!(result = completion.result, "close failed");
                Ok(())
            }
        }
    }

    fn on_accept(
        &mut self,
        handler: &mut impl Handler,
        slot: u32,
        completion: Completion,
        now: Instant,
    ) -> io::Result<()> {
        let more = cqueue::more(completion.flags);
        let Some(listener) = self.listeners.get_mut(slot as usize) else {
            return Ok(());
        };
        let index = listener.index;
        let layers = Layers::new(&listener.transport);
        let wants_layers = !listener.transport.is_plain();
        if !more {
            listener.armed = false;
        }
        if completion.result < 0 {
            let error = io::Error::from_raw_os_error(-completion.result);
            if self.accepting {
                // Out of descriptors or memory: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                listener.retry_at = Some(now + ACCEPT_RETRY);
            }
            return Ok(());
        }
        let fd = completion.result;
        self.stats.accepted += 1;
        // A TLS connection whose state could not be made is refused like one without room.
        let room = self.sockets.len() < MAX_SLOT as usize && layers.is_some() == wants_layers;
        match handler
            .accept(index, peer_address(fd), now)
            .filter(|_| room)
        {
            Some(conn) => self.open(conn, fd, layers),
            None => {
                tracing::debug!("connection refused at accept; closing it");
                // SAFETY: `fd` was just accepted and is owned by nobody else.
                unsafe { libc::close(fd) };
                Ok(())
            }
        }
    }

    fn open(&mut self, conn: ConnId, fd: RawFd, layers: Option<Box<Layers>>) -> io::Result<()> {
        let inserted = self.sockets.insert(Socket {
            sending: BytesMut::new(),
            conn,
            fd,
            flags: 0,
            transport: if layers.is_some() {
                Transport::Layered
            } else {
                Transport::Plain
            },
        });
        let Some(id) = inserted.filter(|id| id.slot() <= MAX_SLOT as usize) else {
            // SAFETY: as above.
            unsafe { libc::close(fd) };
            return Ok(());
        };
        let slot = conn.slot();
        if self.by_conn.len() <= slot {
            self.by_conn.resize(slot + 1, None);
        }
        self.by_conn[slot] = Some(id);
        if let Some(layers) = layers {
            self.layers.insert(id, layers);
        }
        self.arm_recv(id)
    }

    fn on_recv(
        &mut self,
        handler: &mut impl Handler,
        token: Token,
        completion: Completion,
        now: Instant,
    ) -> io::Result<()> {
        let buffer = cqueue::buffer_select(completion.flags);
        let Some(id) = self.socket_of(token) else {
            if let Some(bid) = buffer {
                self.buffers.recycle(bid);
            }
            return Ok(());
        };
        let more = cqueue::more(completion.flags);
        let result = completion.result;
        let Some(socket) = self.sockets.get_mut(id) else {
            return Ok(());
        };
        if !more {
            socket.clear(flag::RECV_ARMED);
            socket.clear(flag::RECV_CANCELLING);
        }
        let conn = socket.live_conn();
        let layered = !socket.transport.is_identity();
        let mut failed = None;
        if result > 0 {
            if let Some(bid) = buffer {
                if let Some(conn) = conn {
                    let bytes = self.buffers.bytes(bid, result as usize);
                    // Plain sockets skip the side map.
                    match layered.then(|| self.layers.get_mut(&id)).flatten() {
                        None => handler.received(conn, bytes, now),
                        Some(layers) => {
                            let defer = !layers.deferred.is_empty()
                                || (layers.handshaking() && self.handshakes_left == 0);
                            if defer {
                                if layers.deferred.is_empty() {
                                    self.deferred.push(id);
                                    self.stats.handshakes_deferred += 1;
                                }
                                layers.deferred.extend_from_slice(bytes);
                                if layers.deferred.len() > MAX_DEFERRED {
                                    failed = Some(LayerError::HandshakeFlood);
                                }
                            } else {
                                if layers.handshaking() {
                                    self.handshakes_left -= 1;
                                }
                                failed = feed(layers, handler, conn, bytes, now).err();
                            }
                        }
                    }
                }
                // Copied out (or discarded while lingering): the buffer is free again.
                self.buffers.recycle(bid);
            }
        } else if result == 0 {
            socket.set(flag::READ_DONE);
            socket.clear(flag::LINGER);
        } else {
            match -result {
                libc::ENOBUFS => {
                    // Every buffer was in use: the data waits in the socket; re-armed below.
                    self.stats.buffer_ring_empty += 1;
                }
                libc::ECANCELED => {}
                _ => {
                    socket.set(flag::READ_DONE);
                    socket.clear(flag::LINGER);
                }
            }
        }
        if let Some(error) = failed {
            self.transport_failed(id, &error);
            return self.close(handler, id, now, false);
        }
        let Some(socket) = self.sockets.get(id) else {
            return Ok(());
        };
        let read_done = socket.has(flag::READ_DONE);
        match (conn, read_done) {
            (Some(_), true) => self.close(handler, id, now, true),
            (Some(_), false) => {
                if !more {
                    self.stats.recv_rearms += 1;
                }
                self.mark_dirty(id);
                Ok(())
            }
            (None, _) => self.continue_close(id),
        }
    }

    fn on_send(
        &mut self,
        handler: &mut impl Handler,
        token: Token,
        completion: Completion,
        now: Instant,
    ) -> io::Result<()> {
        let Some(id) = self.socket_of(token) else {
            return Ok(());
        };
        let Some(socket) = self.sockets.get_mut(id) else {
            return Ok(());
        };
        socket.clear(flag::SENDING);
        let conn = socket.live_conn();
        if completion.result < 0 {
            // The peer is gone (EPIPE, ECONNRESET) or the close deadline shut the socket.
            socket.sending = BytesMut::new();
            socket.set(flag::READ_DONE);
            socket.clear(flag::LINGER);
            self.final_output.remove(&id);
            self.vectored.remove(&id);
            return match conn {
                Some(_) => self.close(handler, id, now, true),
                None => self.continue_close(id),
            };
        }
        let vectored = match socket.sending.is_empty() {
            true => self.vectored.get_mut(&id),
            false => None,
        };
        let was_vectored = vectored.is_some();
        let (written, rest) = match vectored {
            Some(vectored) => {
                let written = vectored.advance(completion.result as usize);
                (written, vectored.remaining())
            }
            None => {
                let written = (completion.result as usize).min(socket.sending.len());
                socket.sending.advance(written);
                (written, socket.sending.len())
            }
        };
        let layered = !socket.transport.is_identity();
        if let Some(conn) = conn {
            match layered.then(|| self.layers.get_mut(&id)).flatten() {
                None => handler.written(conn, written),
                // The handler's bytes (before framing and encryption) count once the send
                // that carries them is complete.
                Some(layers) if rest == 0 => {
                    handler.written(conn, std::mem::take(&mut layers.app_in_flight));
                }
                Some(_) => {}
            }
        }
        if rest > 0 {
            // A short write: the rest goes first, before anything newer.
            self.stats.partial_sends += 1;
            return self.submit_send(id);
        }
        socket.sending = BytesMut::new();
        if was_vectored {
            self.vectored.remove(&id);
        }
        match conn {
            Some(conn) => {
                handler.flushed(conn, now);
                self.mark_dirty(id);
                Ok(())
            }
            None => self.continue_close(id),
        }
    }
}

/// Handshake input a socket may pile up while it waits for a pass's handshake budget: a
/// client that sends more before the server has answered its first flight is misbehaving.
const MAX_DEFERRED: usize = 64 * 1024;

/// Passes socket bytes through a connection's layers and the decoded MQTT bytes (and, once,
/// the TLS identity) to the handler.
fn feed(
    layers: &mut Layers,
    handler: &mut impl Handler,
    conn: ConnId,
    input: &[u8],
    now: Instant,
) -> Result<(), LayerError> {
    let result = layers.on_input(input);
    if let Some(common_name) = layers.take_identity() {
        handler.identified(conn, common_name);
    }
    if !layers.app.is_empty() {
        handler.received(conn, &layers.app, now);
        layers.app.clear();
    }
    result
}

/// shutdown(2) as a direct syscall, never as a ring request: the kernel always runs a shutdown
/// request on an io-wq worker, which looks the descriptor up late — after a close queued behind
/// it may have freed the number and a new connection (on any shard) may have reused it.
fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: `fd` is a socket this engine owns and has not closed. Failure (the peer is
    // gone: ENOTCONN) needs no handling.
    unsafe { libc::shutdown(fd, how) };
}

/// The address of the peer of socket `fd` (one getpeername(2): multishot accepts return no
/// address).
fn peer_address(fd: RawFd) -> Option<std::net::SocketAddr> {
    // SAFETY: `fd` is an open socket owned by the engine for the duration of this call.
    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&socket)
        .peer_addr()
        .ok()?
        .as_socket()
}
