//! One worker thread: an epoll event loop (mio) driving many non-blocking MQTT client
//! connections on the workspace's sans-I/O codec.
//!
//! Over TLS or WebSocket, a connection's [`Layer`] sits between its MQTT buffers and the socket
//! (see `transport.rs`); plain TCP connections have none and take the direct path.
//!
//! Writes are batched: packets are appended to a per-connection buffer and flushed once per loop
//! pass (or once per publisher batch), so many PUBLISHes and acknowledgements share one write
//! syscall. QoS 1/2 publishers pipeline up to an in-flight window of packet identifiers.
//!
//! Life of a thread: set up every connection (paced, bounded handshakes in flight) and report
//! ready; wait for the start time; publish until the end of the window; drain what is in flight;
//! DISCONNECT everything; return the counts.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token};
use shardmq::codec::{
    self, Ack, Connect, Disconnect, EncodedPublish, MqttStr, Packet, Properties, PropertyFields,
    ProtocolVersion, Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions,
};
use socket2::{Domain, Socket, Type};

use crate::config::Config;
use crate::pacing::{split_rate, Pacer, NS};
use crate::payload::Header;
use crate::plan::{ConnPlan, Expect, RolePlan};
use crate::seq::{SeqMap, SeqSet};
use crate::stats::{new_histogram, Counts, ErrorLog, HistData, ReadyInfo, WorkerResult};
use crate::sys::mono_ns;
use crate::transport::{Flushed, Layer, Transport};

/// `go` value that tells threads to give up instead of starting.
pub const ABORT: u64 = u64::MAX;

/// Largest packet accepted from the broker.
const MAX_PACKET: usize = 64 * 1024 * 1024;
/// Unpaced QoS 0 publishers fill the write buffer up to this before flushing.
const WRITE_BATCH: usize = 64 * 1024;
/// Paced publishers stop producing while this much is waiting to be written.
const WRITE_HIGH_WATER: usize = 1024 * 1024;
/// Bytes read per syscall.
const READ_CHUNK: usize = 256 * 1024;
/// Messages one publisher produces per turn before others get theirs.
const TURN_MAX: usize = 1024;
/// Drain ends when nothing is in flight and nothing arrived for this long.
const DRAIN_QUIET_NS: u64 = 500_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotStarted,
    Connecting,
    AwaitConnAck,
    AwaitSubAck,
    Ready,
    Failed,
    Closed,
}

impl State {
    fn setting_up(self) -> bool {
        matches!(
            self,
            State::Connecting | State::AwaitConnAck | State::AwaitSubAck
        )
    }
}

struct Publisher {
    id: u32,
    template: EncodedPublish,
    seq: u32,
    /// Per packet-id slot (id = slot + 1): 0 free, 1 awaiting PUBACK/PUBREC, 2 awaiting PUBCOMP.
    slots: Vec<u8>,
    next_slot: usize,
    inflight: usize,
    phase: f64,
    pacer: Option<Pacer>,
    /// In the active queue (unpaced).
    queued: bool,
    /// Paced and stalled on the window or the socket: no timer armed, an ack or writability
    /// re-fires it.
    waiting: bool,
}

enum Tracker {
    One(u32, SeqSet),
    All(SeqMap),
    Shared,
}

enum Role {
    Idle,
    Pub(Box<Publisher>),
    Sub(Box<(Vec<String>, Tracker)>),
}

struct Conn {
    stream: Option<TcpStream>,
    /// TLS and/or WebSocket between `rbuf`/`wbuf` and the socket (None: plain TCP).
    layer: Option<Box<Layer>>,
    state: State,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// A write hit WouldBlock: wait for a writable event.
    blocked: bool,
    /// In the dirty list.
    dirty: bool,
    started_ns: u64,
    last_write_ns: u64,
    role: Role,
}

/// The thread's state apart from the connection table, so handlers can borrow both.
struct Core {
    cfg: Arc<Config>,
    version: ProtocolVersion,
    qos: QoS,
    registry: Registry,
    counts: Counts,
    errors: ErrorLog,
    warnings: ErrorLog,
    latency: Histogram<u64>,
    connect_latency: Histogram<u64>,
    shared: SeqMap,
    has_shared: bool,
    timers: BinaryHeap<Reverse<(u64, usize)>>,
    active: VecDeque<usize>,
    dirty: Vec<usize>,
    pending: usize,
    producing: bool,
    /// Until the end of the run, a dropped connection is an error.
    running: bool,
    measure_start: u64,
    measure_end: u64,
    last_rx_ns: u64,
    inflight_total: usize,
    window: usize,
    /// Host header of WebSocket upgrade requests.
    ws_host: String,
    /// Seeds the connections' WebSocket masking keys.
    seed: u64,
}

/// One event-loop thread.
pub struct Engine {
    poll: Poll,
    events: Events,
    plans: Vec<ConnPlan>,
    conns: Vec<Conn>,
    core: Core,
    scratch: Vec<u8>,
    go: Arc<AtomicU64>,
    thread_count: usize,
    last_ping_scan: u64,
}

impl Engine {
    /// A thread for `plans`; `go` is set by the coordinator to the start time (or [`ABORT`]).
    pub fn new(
        cfg: Arc<Config>,
        plans: Vec<ConnPlan>,
        go: Arc<AtomicU64>,
        thread_count: usize,
    ) -> io::Result<Engine> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let conns = plans
            .iter()
            .map(|_| Conn {
                stream: None,
                layer: None,
                state: State::NotStarted,
                rbuf: BytesMut::new(),
                wbuf: BytesMut::new(),
                blocked: false,
                dirty: false,
                started_ns: 0,
                last_write_ns: 0,
                role: Role::Idle,
            })
            .collect();
        let has_shared = plans.iter().any(|p| {
            matches!(
                p.role,
                RolePlan::Sub {
                    expect: Expect::Shared,
                    ..
                }
            )
        });
        Ok(Engine {
            poll,
            events: Events::with_capacity(4096),
            plans,
            conns,
            core: Core {
                version: cfg.version(),
                qos: cfg.qos(),
                window: cfg.inflight as usize,
                registry,
                counts: Counts::default(),
                errors: ErrorLog::default(),
                warnings: ErrorLog::default(),
                latency: new_histogram(),
                connect_latency: new_histogram(),
                shared: SeqMap::default(),
                has_shared,
                timers: BinaryHeap::new(),
                active: VecDeque::new(),
                dirty: Vec::new(),
                pending: 0,
                producing: false,
                running: true,
                measure_start: u64::MAX,
                measure_end: u64::MAX,
                last_rx_ns: 0,
                inflight_total: 0,
                ws_host: format!("{}:{}", cfg.host, cfg.port),
                seed: mono_ns() ^ (u64::from(std::process::id()) << 32),
                cfg,
            },
            scratch: vec![0; READ_CHUNK],
            go,
            thread_count,
            last_ping_scan: mono_ns(),
        })
    }

    /// Runs the thread to the end. `ready` receives the set-up outcome once every connection is
    /// up or has failed.
    pub fn run(mut self, ready: Sender<ReadyInfo>) -> WorkerResult {
        self.setup();
        let info = ReadyInfo {
            conn_ok: self.core.counts.conn_ok,
            conn_failed: self.core.counts.conn_failed,
            first_connect_ns: self.core.counts.first_connect_ns,
            last_connack_ns: self.core.counts.last_connack_ns,
            errors: self.core.errors.clone(),
            cpu_s: 0.0,
        };
        let _ = ready.send(info);
        let go = loop {
            let go = self.go.load(Ordering::Acquire);
            if go != 0 {
                break go;
            }
            self.turn(Some(Duration::from_millis(2)));
        };
        if go != ABORT {
            self.load(go);
            self.drain();
        }
        self.close();
        self.finish()
    }

    fn setup(&mut self) {
        let cfg = self.core.cfg.clone();
        let start = mono_ns();
        let deadline = start
            + ((cfg.connect_timeout_s + 30.0) * 1e9) as u64
            + if cfg.conn_rate > 0.0 {
                (self.plans.len() as f64
                    / split_rate(cfg.conn_rate, cfg.workers * self.thread_count)
                    * 1e9) as u64
            } else {
                // Unpaced: allow 1000 connections per second per thread at the least.
                self.plans.len() as u64 * 1_000_000
            };
        let pacer = (cfg.conn_rate > 0.0).then(|| {
            Pacer::new(
                split_rate(cfg.conn_rate, cfg.workers * self.thread_count),
                start,
                0.0,
            )
        });
        let timeout_ns = (cfg.connect_timeout_s * 1e9) as u64;
        let max_pending = (cfg.max_pending / (cfg.workers * self.thread_count)).max(1);
        let mut next = 0usize;
        let mut last_sweep = start;
        loop {
            let now = mono_ns();
            let allowed = pacer.map_or(self.plans.len() as u64, |p| p.due(now));
            while next < self.plans.len()
                && (next as u64) < allowed
                && self.core.pending < max_pending
            {
                self.start_connect(next, now);
                next += 1;
            }
            let resolved = self.core.counts.conn_ok + self.core.counts.conn_failed;
            if next == self.plans.len() && resolved as usize == self.plans.len() {
                break;
            }
            if now.saturating_sub(last_sweep) >= 100_000_000 || now >= deadline {
                last_sweep = now;
                for idx in 0..next {
                    let conn = &mut self.conns[idx];
                    if conn.state.setting_up()
                        && (now.saturating_sub(conn.started_ns) > timeout_ns || now >= deadline)
                    {
                        fail(&mut self.core, conn, "connect timeout (no CONNACK/SUBACK)");
                    }
                }
                if now >= deadline {
                    for idx in next..self.plans.len() {
                        self.conns[idx].state = State::Failed;
                        self.core.counts.conn_failed += 1;
                        self.core
                            .errors
                            .add("set-up deadline passed before connecting");
                    }
                    next = self.plans.len();
                }
            }
            let wait = match pacer {
                Some(p) if next < self.plans.len() && self.core.pending < max_pending => {
                    Duration::from_nanos(p.due_at(next as u64).saturating_sub(now).min(NS / 10))
                }
                _ => Duration::from_millis(100),
            };
            self.turn(Some(wait));
        }
    }

    fn start_connect(&mut self, idx: usize, now: u64) {
        let plan = &self.plans[idx];
        let core = &mut self.core;
        let conn = &mut self.conns[idx];
        conn.started_ns = now;
        core.counts.first_connect_ns.get_or_insert(now);
        let stream = match open_socket(core.cfg.addr, plan.source) {
            Ok(s) => s,
            Err(e) => {
                conn.state = State::Failed;
                core.counts.conn_failed += 1;
                core.errors.add(format!("socket/connect: {e}"));
                return;
            }
        };
        if core.cfg.transport != Transport::Tcp {
            let cfg = &core.cfg;
            let seed = core.seed ^ (idx as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let path = cfg.ws_path.as_deref().unwrap_or("/mqtt");
            match Layer::new(
                cfg.transport,
                cfg.tls_client.as_ref(),
                &core.ws_host,
                path,
                seed,
            ) {
                Ok(layer) => conn.layer = Some(Box::new(layer)),
                Err(e) => {
                    conn.state = State::Failed;
                    core.counts.conn_failed += 1;
                    core.errors.add(e);
                    return;
                }
            }
        }
        conn.stream = Some(stream);
        if let Err(e) = core.registry.register(
            conn.stream.as_mut().expect("just set"),
            Token(idx),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            conn.stream = None;
            conn.layer = None;
            conn.state = State::Failed;
            core.counts.conn_failed += 1;
            core.errors.add(format!("register: {e}"));
            return;
        }
        core.pending += 1;
        conn.state = State::Connecting;
        conn.role = match &plan.role {
            RolePlan::Idle => Role::Idle,
            RolePlan::Pub { id, topic, phase } => {
                let publish = Publish {
                    qos: core.qos,
                    topic: MqttStr::from(topic.as_str()),
                    packet_id: 1,
                    payload: Bytes::from(vec![0u8; core.cfg.payload]),
                    ..Publish::default()
                };
                let template = EncodedPublish::new(&publish, core.version, core.qos, false)
                    .expect("a valid PUBLISH template");
                Role::Pub(Box::new(Publisher {
                    id: *id,
                    template,
                    seq: 0,
                    slots: vec![0; core.window],
                    next_slot: 0,
                    inflight: 0,
                    phase: *phase,
                    pacer: None,
                    queued: false,
                    waiting: false,
                }))
            }
            RolePlan::Sub { filters, expect } => {
                let tracker = match expect {
                    Expect::One(id) => Tracker::One(*id, SeqSet::new()),
                    Expect::All => Tracker::All(SeqMap::default()),
                    Expect::Shared => Tracker::Shared,
                };
                Role::Sub(Box::new((filters.clone(), tracker)))
            }
        };
        // --persistent: a session the broker keeps (and, with a durable store, journals);
        // MQTT 5.0 bounds its life with a Session Expiry Interval.
        let properties = Properties::from(PropertyFields {
            session_expiry_interval: core.cfg.session_expiry_s,
            ..PropertyFields::default()
        });
        let connect = Connect {
            protocol: core.version,
            clean_start: !core.cfg.persistent,
            keep_alive: core.cfg.keepalive,
            client_id: MqttStr::from(plan.client_id.as_str()),
            will: None,
            username: core.cfg.username.as_deref().map(MqttStr::from),
            password: core
                .cfg
                .password
                .as_ref()
                .map(|p| Bytes::copy_from_slice(p.as_bytes())),
            properties,
        };
        Packet::Connect(Box::new(connect))
            .encode(core.version, &mut conn.wbuf)
            .expect("CONNECT encodes");
    }

    /// One pass: wait for events (at most `timeout`), handle them, flush what was written.
    fn turn(&mut self, timeout: Option<Duration>) {
        let Engine {
            poll,
            events,
            conns,
            core,
            scratch,
            ..
        } = self;
        if let Err(e) = poll.poll(events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                core.errors.add(format!("poll: {e}"));
            }
            return;
        }
        let now = mono_ns();
        for event in events.iter() {
            let idx = event.token().0;
            let conn = &mut conns[idx];
            if conn.stream.is_none() {
                continue;
            }
            if conn.state == State::Connecting {
                if !(event.is_writable() || event.is_error() || event.is_write_closed()) {
                    continue;
                }
                let stream = conn.stream.as_ref().expect("checked");
                match stream.take_error() {
                    Ok(None) => {}
                    Ok(Some(e)) | Err(e) => {
                        fail(core, conn, format!("connect: {e}"));
                        continue;
                    }
                }
                match stream.peer_addr() {
                    Ok(_) => conn.state = State::AwaitConnAck,
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => continue,
                    Err(e) => {
                        fail(core, conn, format!("connect: {e}"));
                        continue;
                    }
                }
                mark_dirty(core, conn, idx);
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                read(core, conn, idx, scratch, now);
            }
            if event.is_writable() && conn.stream.is_some() {
                // Flush now, not at the end of the pass: a stalled publisher decides whether to
                // go on from what is left in its buffer.
                conn.blocked = false;
                flush(core, conn);
                wake(core, conn, idx, now);
            }
        }
        flush_dirty(core, conns);
        // Keep-alive in every phase: a slow connection storm can outlast half the keep-alive.
        if now.saturating_sub(self.last_ping_scan) >= NS {
            self.last_ping_scan = now;
            self.keepalive(now);
        }
    }

    fn load(&mut self, go: u64) {
        let cfg = self.core.cfg.clone();
        self.core.measure_start = go + (cfg.warmup_s * 1e9) as u64;
        self.core.measure_end = self.core.measure_start + (cfg.duration_s * 1e9) as u64;
        serve_until(go, self);
        self.core.producing = true;
        for (idx, conn) in self.conns.iter_mut().enumerate() {
            if conn.state != State::Ready {
                continue;
            }
            if let Role::Pub(p) = &mut conn.role {
                if cfg.rate > 0.0 {
                    let pacer = Pacer::new(cfg.rate, go, p.phase);
                    self.core.timers.push(Reverse((pacer.due_at(0), idx)));
                    p.pacer = Some(pacer);
                } else {
                    p.queued = true;
                    self.core.active.push_back(idx);
                }
            }
        }
        loop {
            let now = mono_ns();
            if now >= self.core.measure_end {
                break;
            }
            self.fire_timers(now);
            self.run_active(now);
            flush_dirty(&mut self.core, &mut self.conns);
            let wait = if self.core.active.is_empty() {
                let next_timer = self
                    .core
                    .timers
                    .peek()
                    .map_or(u64::MAX, |Reverse((due, _))| *due);
                let until = next_timer.min(self.core.measure_end).min(now + NS / 10);
                Duration::from_nanos(until.saturating_sub(mono_ns()))
            } else {
                Duration::ZERO
            };
            self.turn(Some(wait));
        }
        self.core.producing = false;
        self.core.timers.clear();
        self.core.active.clear();
    }

    fn fire_timers(&mut self, now: u64) {
        while let Some(Reverse((due, idx))) = self.core.timers.peek().copied() {
            if due > now {
                break;
            }
            self.core.timers.pop();
            fire(&mut self.core, &mut self.conns[idx], idx, now);
        }
    }

    fn run_active(&mut self, now: u64) {
        for _ in 0..self.core.active.len() {
            let Some(idx) = self.core.active.pop_front() else {
                break;
            };
            let core = &mut self.core;
            let conn = &mut self.conns[idx];
            if let Role::Pub(p) = &mut conn.role {
                p.queued = false;
            }
            if conn.state != State::Ready {
                continue;
            }
            produce(core, conn, idx, now, TURN_MAX, WRITE_BATCH);
            flush(core, conn);
            if can_produce(core, conn, WRITE_BATCH) && !conn.blocked {
                if let Role::Pub(p) = &mut conn.role {
                    p.queued = true;
                }
                core.active.push_back(idx);
            }
        }
    }

    fn keepalive(&mut self, now: u64) {
        let ka = u64::from(self.core.cfg.keepalive);
        if ka == 0 {
            return;
        }
        for (idx, conn) in self.conns.iter_mut().enumerate() {
            if conn.state == State::Ready && now.saturating_sub(conn.last_write_ns) >= ka * NS / 2 {
                Packet::PingReq
                    .encode(self.core.version, &mut conn.wbuf)
                    .expect("PINGREQ encodes");
                conn.last_write_ns = now;
                mark_dirty(&mut self.core, conn, idx);
            }
        }
        flush_dirty(&mut self.core, &mut self.conns);
    }

    fn drain(&mut self) {
        let deadline = self.core.measure_end + (self.core.cfg.drain_s * 1e9) as u64;
        loop {
            let now = mono_ns();
            let quiet = now.saturating_sub(self.core.last_rx_ns) >= DRAIN_QUIET_NS;
            if (self.core.inflight_total == 0 && quiet) || now >= deadline {
                break;
            }
            self.turn(Some(Duration::from_millis(20)));
        }
    }

    fn close(&mut self) {
        self.core.running = false;
        for (idx, conn) in self.conns.iter_mut().enumerate() {
            if conn.state == State::Ready {
                Packet::Disconnect(Disconnect::new(ReasonCode::Success))
                    .encode(self.core.version, &mut conn.wbuf)
                    .expect("DISCONNECT encodes");
                if let Some(layer) = conn.layer.as_mut() {
                    layer.close(&mut conn.wbuf);
                }
                mark_dirty(&mut self.core, conn, idx);
            }
        }
        flush_dirty(&mut self.core, &mut self.conns);
        for conn in &mut self.conns {
            if let Some(mut stream) = conn.stream.take() {
                let _ = self.core.registry.deregister(&mut stream);
                let _ = stream.shutdown(std::net::Shutdown::Write);
            }
            conn.layer = None;
            if conn.state == State::Ready {
                conn.state = State::Closed;
            }
        }
    }

    fn finish(self) -> WorkerResult {
        let mut core = self.core;
        for conn in &self.conns {
            match &conn.role {
                Role::Pub(p) => core.counts.unacked += p.inflight as u64,
                Role::Sub(sub) => match &sub.1 {
                    Tracker::One(_, set) => core.counts.seq.add(set),
                    Tracker::All(map) => map.values().for_each(|set| core.counts.seq.add(set)),
                    Tracker::Shared => {}
                },
                Role::Idle => {}
            }
        }
        WorkerResult {
            counts: core.counts,
            latency: HistData::from_histogram(&core.latency),
            connect_latency: HistData::from_histogram(&core.connect_latency),
            shared: core.has_shared.then_some(core.shared),
            errors: core.errors,
            warnings: core.warnings,
            cpu_s: 0.0,
            nofile: 0,
            sessions_cleared: 0,
        }
    }
}

fn serve_until(deadline: u64, engine: &mut Engine) {
    // Keep servicing the sockets (pings, a broker closing on us) until the start.
    loop {
        let now = mono_ns();
        if now >= deadline {
            return;
        }
        engine.turn(Some(Duration::from_nanos(deadline - now)));
    }
}

/// A non-blocking TCP socket connecting to `addr`, bound to `source` first if given.
fn open_socket(addr: SocketAddr, source: Option<std::net::Ipv4Addr>) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    if let Some(ip) = source {
        set_bind_address_no_port(&socket);
        socket.bind(&SocketAddr::V4(SocketAddrV4::new(ip, 0)).into())?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// IP_BIND_ADDRESS_NO_PORT: let connect() pick the port for the whole 4-tuple, so one source
/// address is not limited by ports already bound for other destinations.
fn set_bind_address_no_port(socket: &Socket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn mark_dirty(core: &mut Core, conn: &mut Conn, idx: usize) {
    if !conn.dirty {
        conn.dirty = true;
        core.dirty.push(idx);
    }
}

fn flush_dirty(core: &mut Core, conns: &mut [Conn]) {
    // flush() never marks a connection dirty, so the list can be reused as is.
    let mut dirty = std::mem::take(&mut core.dirty);
    for &idx in &dirty {
        let conn = &mut conns[idx];
        conn.dirty = false;
        if !conn.blocked {
            flush(core, conn);
        }
    }
    dirty.clear();
    core.dirty = dirty;
}

/// Writes as much of the buffer as the socket takes.
fn flush(core: &mut Core, conn: &mut Conn) {
    if conn.state == State::Connecting {
        return;
    }
    if let Some(layer) = conn.layer.as_mut() {
        let Some(stream) = conn.stream.as_mut() else {
            conn.wbuf.clear();
            return;
        };
        match layer.flush(&mut conn.wbuf, stream) {
            Ok(Flushed::Idle) => {}
            Ok(Flushed::Blocked) => conn.blocked = true,
            Err(e) => fail(core, conn, e),
        }
        return;
    }
    while !conn.wbuf.is_empty() {
        let Some(stream) = conn.stream.as_mut() else {
            conn.wbuf.clear();
            return;
        };
        match stream.write(&conn.wbuf) {
            Ok(0) => {
                fail(core, conn, "write returned 0");
                return;
            }
            Ok(n) => conn.wbuf.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.blocked = true;
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                fail(core, conn, format!("write: {e}"));
                return;
            }
        }
    }
}

fn read(core: &mut Core, conn: &mut Conn, idx: usize, scratch: &mut [u8], now: u64) {
    loop {
        let Some(stream) = conn.stream.as_mut() else {
            return;
        };
        let n = match stream.read(scratch) {
            Ok(0) => {
                let reason = if conn.state.setting_up() {
                    "broker closed the connection during set-up"
                } else {
                    "broker closed the connection"
                };
                fail(core, conn, reason);
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                fail(core, conn, format!("read: {e}"));
                return;
            }
        };
        match conn.layer.as_mut() {
            None => conn.rbuf.extend_from_slice(&scratch[..n]),
            Some(layer) => {
                if let Err(e) = layer.read(&scratch[..n], &mut conn.rbuf) {
                    fail(core, conn, e);
                    return;
                }
                // Handshake records, pongs, or MQTT bytes held back until the WebSocket
                // upgrade completed: flushed at the end of the pass.
                mark_dirty(core, conn, idx);
            }
        }
        loop {
            match codec::decode(&mut conn.rbuf, core.version, MAX_PACKET) {
                Ok(Some(packet)) => {
                    on_packet(core, conn, idx, packet, now);
                    if conn.stream.is_none() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    fail(core, conn, format!("undecodable packet from broker: {e}"));
                    return;
                }
            }
        }
        if conn.rbuf.is_empty() && conn.rbuf.capacity() > 4096 && matches!(conn.role, Role::Idle) {
            conn.rbuf = BytesMut::new();
        }
        if n < scratch.len() {
            // Short read: the socket is drained (epoll reports the next arrival).
            return;
        }
    }
}

fn on_packet(core: &mut Core, conn: &mut Conn, idx: usize, packet: Packet, now: u64) {
    match (conn.state, packet) {
        (State::AwaitConnAck, Packet::ConnAck(ack)) => {
            if ack.reason != ReasonCode::Success {
                fail(
                    core,
                    conn,
                    format!("CONNACK refused: {}", ack.reason.description()),
                );
                return;
            }
            if ack.session_present {
                // Client ids are unique to the run: a stored session means a collision with
                // another run (or --run-id reused), whose queued messages may arrive here.
                core.warnings.add(
                    "CONNACK with session present: the broker had a session for this client id",
                );
            }
            if let Some(max) = ack.properties.maximum_qos {
                if max < core.qos {
                    fail(core, conn, format!("broker's maximum QoS is {}", max as u8));
                    return;
                }
            }
            if let (Role::Pub(p), Some(rm)) = (&mut conn.role, ack.properties.receive_maximum) {
                let w = p.slots.len().min(usize::from(rm.max(1)));
                p.slots.truncate(w);
            }
            if let Role::Sub(sub) = &conn.role {
                let qos = core.qos;
                let subscribe = Subscribe {
                    packet_id: 1,
                    properties: Properties::default(),
                    filters: sub
                        .0
                        .iter()
                        .map(|f| {
                            (
                                MqttStr::from(f.as_str()),
                                SubscriptionOptions::with_qos(qos),
                            )
                        })
                        .collect(),
                };
                Packet::Subscribe(subscribe)
                    .encode(core.version, &mut conn.wbuf)
                    .expect("SUBSCRIBE encodes");
                conn.last_write_ns = now;
                mark_dirty(core, conn, idx);
                conn.state = State::AwaitSubAck;
            } else {
                set_up(core, conn, now);
            }
        }
        (State::AwaitSubAck, Packet::SubAck(ack)) => {
            if let Some(bad) = ack.reasons.iter().find(|r| r.is_error()) {
                fail(core, conn, format!("SUBACK refused: {}", bad.description()));
                return;
            }
            if ack.reasons.iter().any(|r| (r.as_u8()) < core.qos as u8) {
                core.warnings
                    .add("SUBACK granted a lower QoS than requested (loss checks still apply)");
            }
            set_up(core, conn, now);
        }
        (State::Ready | State::AwaitSubAck, Packet::Publish(publish)) => {
            on_publish(core, conn, idx, &publish, now);
        }
        (State::Ready, Packet::PubAck(ack)) => complete(core, conn, idx, ack.packet_id, 1, now),
        (State::Ready, Packet::PubRec(ack)) => {
            if let Role::Pub(p) = &mut conn.role {
                let slot = usize::from(ack.packet_id) - 1;
                if p.slots.get(slot) == Some(&1) {
                    p.slots[slot] = 2;
                    Packet::PubRel(Ack::new(ack.packet_id))
                        .encode(core.version, &mut conn.wbuf)
                        .expect("PUBREL encodes");
                    mark_dirty(core, conn, idx);
                    core.last_rx_ns = now;
                    return;
                }
            }
            core.errors.add("PUBREC for a packet id not in flight");
        }
        (State::Ready, Packet::PubComp(ack)) => complete(core, conn, idx, ack.packet_id, 2, now),
        (State::Ready, Packet::PubRel(ack)) => {
            Packet::PubComp(Ack::new(ack.packet_id))
                .encode(core.version, &mut conn.wbuf)
                .expect("PUBCOMP encodes");
            mark_dirty(core, conn, idx);
        }
        (_, Packet::PingResp) => {}
        (_, Packet::Disconnect(d)) => {
            fail(
                core,
                conn,
                format!("broker sent DISCONNECT: {}", d.reason.description()),
            );
        }
        (state, packet) => {
            core.errors.add(format!(
                "unexpected {:?} in state {state:?}",
                packet.packet_type()
            ));
        }
    }
}

fn set_up(core: &mut Core, conn: &mut Conn, now: u64) {
    conn.state = State::Ready;
    core.pending -= 1;
    core.counts.conn_ok += 1;
    core.counts.last_connack_ns = Some(core.counts.last_connack_ns.unwrap_or(0).max(now));
    core.connect_latency
        .saturating_record(now.saturating_sub(conn.started_ns).max(1));
}

fn on_publish(core: &mut Core, conn: &mut Conn, idx: usize, publish: &Publish, now: u64) {
    core.last_rx_ns = now;
    core.counts.received += 1;
    match publish.qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => {
            Packet::PubAck(Ack::new(publish.packet_id))
                .encode(core.version, &mut conn.wbuf)
                .expect("PUBACK encodes");
            mark_dirty(core, conn, idx);
        }
        QoS::ExactlyOnce => {
            Packet::PubRec(Ack::new(publish.packet_id))
                .encode(core.version, &mut conn.wbuf)
                .expect("PUBREC encodes");
            mark_dirty(core, conn, idx);
        }
    }
    let Some(header) = Header::read(&publish.payload) else {
        core.counts.malformed += 1;
        return;
    };
    if now >= core.measure_start && now < core.measure_end {
        core.counts.received_window += 1;
        core.latency
            .saturating_record(now.saturating_sub(header.sent_ns).max(1));
    }
    let Role::Sub(sub) = &mut conn.role else {
        core.counts.unexpected += 1;
        return;
    };
    match &mut sub.1 {
        Tracker::One(id, set) => {
            if *id == header.publisher {
                set.insert(header.seq);
            } else {
                core.counts.unexpected += 1;
            }
        }
        Tracker::All(map) => {
            map.entry(header.publisher).or_default().insert(header.seq);
        }
        Tracker::Shared => {
            core.shared
                .entry(header.publisher)
                .or_default()
                .insert(header.seq);
        }
    }
}

/// PUBACK (stage 1) or PUBCOMP (stage 2) of `packet_id`.
fn complete(core: &mut Core, conn: &mut Conn, idx: usize, packet_id: u16, stage: u8, now: u64) {
    core.last_rx_ns = now;
    let Role::Pub(p) = &mut conn.role else {
        core.errors
            .add("acknowledgement on a subscriber connection");
        return;
    };
    let slot = usize::from(packet_id).wrapping_sub(1);
    if p.slots.get(slot) != Some(&stage) {
        core.errors
            .add("acknowledgement for a packet id not in flight (or wrong stage)");
        return;
    }
    p.slots[slot] = 0;
    p.inflight -= 1;
    core.inflight_total -= 1;
    core.counts.acked += 1;
    wake(core, conn, idx, now);
}

/// Whether the publisher on `conn` may produce another message now.
fn can_produce(core: &Core, conn: &Conn, buffer_limit: usize) -> bool {
    let Role::Pub(p) = &conn.role else {
        return false;
    };
    if conn.state != State::Ready || !core.producing || conn.wbuf.len() >= buffer_limit {
        return false;
    }
    core.qos == QoS::AtMostOnce || p.slots[p.next_slot] == 0
}

/// After an ack or writability: give a stalled publisher its turn again.
fn wake(core: &mut Core, conn: &mut Conn, idx: usize, now: u64) {
    if !core.producing {
        return;
    }
    let paced = matches!(&conn.role, Role::Pub(p) if p.pacer.is_some());
    if paced {
        let waiting = matches!(&conn.role, Role::Pub(p) if p.waiting);
        if waiting && can_produce(core, conn, WRITE_HIGH_WATER) {
            if let Role::Pub(p) = &mut conn.role {
                p.waiting = false;
            }
            fire(core, conn, idx, now);
        }
    } else if can_produce(core, conn, WRITE_BATCH) && !conn.blocked {
        if let Role::Pub(p) = &mut conn.role {
            // Refill a QoS 1/2 window only once a quarter of it is free: one write of many
            // PUBLISHes instead of one write per acknowledgement.
            let refill = core.qos == QoS::AtMostOnce || p.inflight <= p.slots.len() * 3 / 4;
            if refill && !p.queued {
                p.queued = true;
                core.active.push_back(idx);
            }
        }
    }
}

/// A paced publisher's timer: send what is due, re-arm.
fn fire(core: &mut Core, conn: &mut Conn, idx: usize, now: u64) {
    if !core.producing || conn.state != State::Ready {
        return;
    }
    let Role::Pub(p) = &conn.role else { return };
    let Some(pacer) = p.pacer else { return };
    let due = pacer.due(now);
    let behind = due.saturating_sub(u64::from(p.seq)) as usize;
    produce(core, conn, idx, now, behind.min(TURN_MAX), WRITE_HIGH_WATER);
    let Role::Pub(p) = &mut conn.role else { return };
    if u64::from(p.seq) >= due {
        core.timers
            .push(Reverse((pacer.due_at(u64::from(p.seq)), idx)));
    } else if can_produce(core, conn, WRITE_HIGH_WATER) {
        // Only the per-turn cap stopped it: continue on the next pass.
        core.timers.push(Reverse((now, idx)));
    } else if let Role::Pub(p) = &mut conn.role {
        p.waiting = true;
    }
}

/// Appends up to `max` PUBLISHes while the window and the buffer allow.
fn produce(
    core: &mut Core,
    conn: &mut Conn,
    idx: usize,
    now: u64,
    max: usize,
    buffer_limit: usize,
) {
    let mut made = 0;
    let in_window = now >= core.measure_start && now < core.measure_end;
    while made < max && can_produce(core, conn, buffer_limit) {
        let Role::Pub(p) = &mut conn.role else { return };
        let packet_id = if core.qos == QoS::AtMostOnce {
            0
        } else {
            let slot = p.next_slot;
            p.slots[slot] = 1;
            p.next_slot = (slot + 1) % p.slots.len();
            p.inflight += 1;
            core.inflight_total += 1;
            slot as u16 + 1
        };
        p.template.write_to(&mut conn.wbuf, packet_id, false);
        let end = conn.wbuf.len();
        let start = end - core.cfg.payload;
        Header {
            publisher: p.id,
            seq: p.seq,
            sent_ns: now,
        }
        .write(&mut conn.wbuf[start..end]);
        p.seq = p.seq.wrapping_add(1);
        core.counts.sent += 1;
        if in_window {
            core.counts.sent_window += 1;
        }
        made += 1;
    }
    if made > 0 {
        conn.last_write_ns = now;
        mark_dirty(core, conn, idx);
    }
}

/// Ends a connection: set-up failure or loss of an established one.
fn fail(core: &mut Core, conn: &mut Conn, reason: impl Into<String>) {
    if matches!(
        conn.state,
        State::Failed | State::Closed | State::NotStarted
    ) {
        return;
    }
    if let Some(mut stream) = conn.stream.take() {
        let _ = core.registry.deregister(&mut stream);
    }
    conn.layer = None;
    conn.wbuf = BytesMut::new();
    conn.rbuf = BytesMut::new();
    let reason = reason.into();
    if conn.state.setting_up() {
        core.pending -= 1;
        core.counts.conn_failed += 1;
        core.errors.add(reason);
    } else if conn.state == State::Ready && core.running {
        core.counts.conn_lost += 1;
        core.errors.add(reason);
    }
    conn.state = State::Failed;
    if let Role::Pub(p) = &mut conn.role {
        // Its in-flight messages stay counted as unacknowledged.
        core.inflight_total -= p.inflight;
    }
}
