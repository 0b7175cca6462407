//! The engine against real loopback sockets, driven by a toy handler (echo, or a fixed reply),
//! so that each socket-level behaviour is checked without the MQTT state machine.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::time::{Duration, Instant};

use super::engine::Engine;
use super::ring::Completion;
use super::token::{Op, Token};
use super::{EngineConfig, Handler};
use crate::broker::handles::{ConnId, ConnKind, GenSlab};
use crate::broker::ReadState;
use crate::codec::Output;

#[derive(Debug, Default)]
struct ToyConn {
    out: Output,
    received: Vec<u8>,
    close: bool,
    paused: bool,
}

/// Echoes what it receives (unless `reply` is set: then it answers every read with it).
#[derive(Debug, Default)]
struct Toy {
    conns: GenSlab<ConnKind, ToyConn>,
    wakes: Vec<ConnId>,
    echo: bool,
    accepted: Vec<ConnId>,
    closed: Vec<(ConnId, Vec<u8>)>,
    written: usize,
}

impl Toy {
    fn echo() -> Self {
        Toy {
            echo: true,
            ..Toy::default()
        }
    }
    fn conn(&mut self, conn: ConnId) -> &mut ToyConn {
        self.conns.get_mut(conn).expect("live connection")
    }
}

impl Handler for Toy {
    fn accept(
        &mut self,
        _listener: Option<usize>,
        peer: Option<std::net::SocketAddr>,
        _now: Instant,
    ) -> Option<ConnId> {
        assert!(
            peer.is_some_and(|p| p.ip().is_loopback()),
            "the engine names the peer: {peer:?}"
        );
        let conn = self.conns.insert(ToyConn::default())?;
        self.accepted.push(conn);
        Some(conn)
    }
    fn received(&mut self, conn: ConnId, bytes: &[u8], _now: Instant) {
        let echo = self.echo;
        if let Some(c) = self.conns.get_mut(conn) {
            c.received.extend_from_slice(bytes);
            if echo {
                c.out.extend_from_slice(bytes);
            }
            self.wakes.push(conn);
        }
    }
    fn reprocess(&mut self, _conn: ConnId, _now: Instant) {}
    fn output(&mut self, conn: ConnId) -> Option<&mut Output> {
        self.conns.get_mut(conn).map(|c| &mut c.out)
    }
    fn written(&mut self, _conn: ConnId, bytes: usize) {
        self.written += bytes;
    }
    fn flushed(&mut self, _conn: ConnId, _now: Instant) -> bool {
        false
    }
    fn read_state(&mut self, conn: ConnId) -> ReadState {
        match self.conns.get(conn) {
            None => ReadState::Close,
            Some(c) if c.close => ReadState::Close,
            Some(c) if c.paused => ReadState::Wait,
            Some(_) => ReadState::Read,
        }
    }
    fn lingers(&self, conn: ConnId) -> bool {
        self.conns.get(conn).is_some_and(|c| c.close)
    }
    fn closed(&mut self, conn: ConnId, _now: Instant) {
        if let Some(c) = self.conns.remove(conn) {
            self.closed.push((conn, c.received));
        }
    }
    fn drain_wakes(&mut self, wake: &mut dyn FnMut(ConnId)) {
        for conn in self.wakes.drain(..) {
            wake(conn);
        }
    }
}

fn listener() -> (SocketAddr, RawFd) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    (listener.local_addr().unwrap(), listener.into_raw_fd())
}

/// Runs engine passes (sleeping on the eventfd when idle) until `done` or the deadline.
fn pump_until(
    engine: &mut Engine,
    toy: &mut Toy,
    timeout: Duration,
    mut done: impl FnMut(&mut Engine, &mut Toy) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done(engine, toy) {
            return true;
        }
        let busy = engine.turn(toy, Instant::now()).unwrap();
        if !busy && engine.prepare_sleep() {
            let mut pfd = libc::pollfd {
                fd: engine.eventfd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 5) };
            if pfd.revents != 0 {
                let mut counter = [0u8; 8];
                // SAFETY: reads 8 bytes into a local buffer.
                unsafe { libc::read(engine.eventfd(), counter.as_mut_ptr().cast(), 8) };
            }
            engine.woke();
        }
    }
    done(engine, toy)
}

#[test]
fn echoes_and_closes_cleanly() {
    let mut engine = Engine::new(EngineConfig::default()).unwrap();
    let mut toy = Toy::echo();
    let (addr, fd) = listener();
    engine.listen(fd, None).unwrap();
    let mut client = TcpStream::connect(addr).unwrap();
    client.write_all(b"hello engine").unwrap();
    assert!(pump_until(
        &mut engine,
        &mut toy,
        Duration::from_secs(5),
        |_, t| { t.written >= 12 }
    ));
    let mut back = [0u8; 12];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello engine");
    drop(client);
    assert!(pump_until(
        &mut engine,
        &mut toy,
        Duration::from_secs(5),
        |e, t| t.closed.len() == 1 && e.open_sockets() == 0
    ));
    assert_eq!(toy.closed[0].1, b"hello engine");
    // SAFETY: the listener is ours.
    unsafe { libc::close(fd) };
}

/// An engine listening on loopback with one accepted connection: the engine, the handler,
/// the client side, the connection and the listener's descriptor.
fn one_connection() -> (Engine, Toy, TcpStream, ConnId, RawFd) {
    connected(
        Engine::new(EngineConfig::default()).unwrap(),
        Toy::default(),
    )
}

/// `engine` accepting on a fresh listener (its descriptor last) and one client connected.
fn connected(mut engine: Engine, mut toy: Toy) -> (Engine, Toy, TcpStream, ConnId, RawFd) {
    let (addr, fd) = listener();
    engine.listen(fd, None).unwrap();
    let client = TcpStream::connect(addr).unwrap();
    assert!(pump_until(
        &mut engine,
        &mut toy,
        Duration::from_secs(5),
        |_, t| !t.accepted.is_empty()
    ));
    let conn = toy.accepted[0];
    (engine, toy, client, conn, fd)
}

/// Sends what `conn`'s output holds to a slow reader (the socket buffer fills and sends come
/// back short) and checks that it reads exactly `expected`.
fn send_to_slow_reader(
    engine: &mut Engine,
    toy: &mut Toy,
    client: TcpStream,
    conn: ConnId,
    expected: Vec<u8>,
) {
    toy.wakes.push(conn);
    let total = expected.len();
    let reader = std::thread::spawn(move || {
        let mut client = client;
        let mut got = vec![0u8; expected.len()];
        for chunk in got.chunks_mut(1 << 20) {
            std::thread::sleep(Duration::from_millis(5));
            client.read_exact(chunk).unwrap();
        }
        got == expected
    });
    assert!(pump_until(engine, toy, Duration::from_secs(30), |_, t| t
        .written
        >= total));
    assert_eq!(toy.written, total);
    assert!(reader.join().unwrap(), "bytes arrived intact and in order");
    assert!(
        engine.stats().partial_sends > 0,
        "16 MiB cannot go out in one send on loopback: {:?}",
        engine.stats()
    );
}

#[test]
/// A reply far larger than the socket buffer goes out in several sends, in order, complete.
fn partial_writes_deliver_everything_in_order() {
    let (mut engine, mut toy, client, conn, fd) = one_connection();
    let payload: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    toy.conn(conn).out.extend_from_slice(&payload);
    send_to_slow_reader(&mut engine, &mut toy, client, conn, payload);
    // SAFETY: the listener is ours.
    unsafe { libc::close(fd) };
}

#[test]
/// Output with shared payloads goes out as several buffers per send; short writes advance
/// across them; the peer reads every byte in order.
fn shared_payloads_go_out_whole_and_in_order_through_short_writes() {
    let (mut engine, mut toy, client, conn, fd) = one_connection();
    let payload = bytes::Bytes::from((0..2u32 << 20).map(|i| (i % 241) as u8).collect::<Vec<_>>());
    let mut expected = Vec::new();
    for round in 0..8u8 {
        let head = [b'h', round, b'/'];
        toy.conn(conn).out.extend_from_slice(&head);
        toy.conn(conn).out.put_payload(&payload);
        expected.extend_from_slice(&head);
        expected.extend_from_slice(&payload);
    }
    toy.conn(conn).out.extend_from_slice(b"end");
    expected.extend_from_slice(b"end");
    assert!(toy.conn(conn).out.has_shared());
    send_to_slow_reader(&mut engine, &mut toy, client, conn, expected);
    // Sent, and the engine let go of the shared payload.
    assert!(payload.is_unique(), "the engine still holds the payload");
    // SAFETY: the listener is ours.
    unsafe { libc::close(fd) };
}

#[test]
/// More readable connections than receive buffers: receives end with ENOBUFS, are re-armed,
/// and no byte is lost or reordered on any connection.
fn buffer_ring_exhaustion_loses_nothing() {
    let config = EngineConfig {
        buffers: 4,
        buffer_size: 64,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config).unwrap();
    let mut toy = Toy::default();
    let (addr, fd) = listener();
    engine.listen(fd, None).unwrap();
    const CLIENTS: usize = 64;
    const BYTES: usize = 4096;
    let mut clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    assert!(pump_until(
        &mut engine,
        &mut toy,
        Duration::from_secs(5),
        |_, t| t.accepted.len() == CLIENTS
    ));
    // Every client writes before the engine runs again: all readable at once.
    for (i, client) in clients.iter_mut().enumerate() {
        let data: Vec<u8> = (0..BYTES).map(|j| ((i * 7 + j) % 256) as u8).collect();
        client.write_all(&data).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(pump_until(
        &mut engine,
        &mut toy,
        Duration::from_secs(20),
        |_, t| t.conns.iter().all(|(_, c)| c.received.len() >= BYTES)
    ));
    let mut seen = Vec::new();
    for (_, c) in toy.conns.iter() {
        assert_eq!(c.received.len(), BYTES);
        // Which client this is: 7 is invertible mod 256, so the first byte names it.
        let client = (0..CLIENTS)
            .find(|i| (i * 7) % 256 == usize::from(c.received[0]))
            .expect("a known client");
        let expected: Vec<u8> = (0..BYTES).map(|j| ((client * 7 + j) % 256) as u8).collect();
        assert_eq!(c.received, expected, "client {client}");
        seen.push(client);
    }
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), CLIENTS);
    let stats = engine.stats();
    assert!(
        stats.buffer_ring_empty > 0,
        "64 connections with 4 buffers must exhaust the ring: {stats:?}"
    );
    // SAFETY: the listener is ours.
    unsafe { libc::close(fd) };
}

#[test]
/// The peer resets while a large send is in flight: the socket closes, the handler hears of
/// it once, nothing leaks.
fn peer_reset_mid_send_closes_cleanly() {
    let mut engine = Engine::new(EngineConfig::default()).unwrap();
    let mut toy = Toy::default();
    let (addr, fd) = listener();
    engine.listen(fd, None).unwrap();
    let client = TcpStream::connect(addr).unwrap();
    assert!(pump_until(
        &mut engine,
        &mut toy,
        Duration::from_secs(5),
        |_, t| !t.accepted.is_empty()
    ));
    let conn = toy.accepted[0];
    toy.conn(conn).out.extend_from_slice(&vec![1u8; 32 << 20]);
    toy.wakes.push(conn);
    assert!(pump_until(
        &mut engine,
        &mut toy,
        Duration::from_secs(5),
        |e, _| e.stats().sends > 0
    ));
    // SO_LINGER 0: close sends a reset.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: sets an option on our own socket with a correctly sized value.
    unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    drop(client);
    assert!(pump_until(
        &mut engine,
        &mut toy,
        Duration::from_secs(5),
        |e, t| t.closed.len() == 1 && e.open_sockets() == 0
    ));
    // Descriptor leaks are counted exactly in tests/engine_scale.rs (its own process; here
    // other tests open descriptors in parallel).
    // SAFETY: the listener is ours.
    unsafe { libc::close(fd) };
}

#[test]
/// A completion carrying an old generation for a slot that now belongs to another socket is
/// ignored (and its buffer goes back to the ring, so the ring keeps working).
fn late_completion_for_a_reused_slot_is_ignored() {
    let config = EngineConfig {
        buffers: 2,
        buffer_size: 64,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config).unwrap();
    let mut toy = Toy::echo();
    let (addr, fd) = listener();
    engine.listen(fd, None).unwrap();
    let first = TcpStream::connect(addr).unwrap();
    assert!(pump_until(
        &mut engine,
        &mut toy,
        Duration::from_secs(5),
        |_, t| t.accepted.len() == 1
    ));
    drop(first);
    assert!(pump_until(
        &mut engine,
        &mut toy,
        Duration::from_secs(5),
        |e, _| e.open_sockets() == 0
    ));
    let mut second = TcpStream::connect(addr).unwrap();
    assert!(pump_until(
        &mut engine,
        &mut toy,
        Duration::from_secs(5),
        |_, t| t.accepted.len() == 2
    ));
    // The first socket had slot 0, generation 0; the second reuses slot 0 with generation 1.
    let stale = Token::new(Op::Recv, 0, 0).encode();
    let before = engine.stats().stale_completions;
    for bid in 0..2u32 {
        // Pretend the kernel delivered 5 bytes in buffer `bid` for the old socket.
        let flags = io_uring_flags_for_buffer(bid);
        engine
            .complete(
                &mut toy,
                Completion {
                    user_data: stale,
                    result: 5,
                    flags,
                },
                Instant::now(),
            )
            .unwrap();
    }
    assert_eq!(engine.stats().stale_completions, before + 2);
    assert!(toy.conns.iter().all(|(_, c)| c.received.is_empty()));
    // Both buffers went back: the new socket still echoes through the 2-buffer ring.
    second.write_all(b"still works").unwrap();
    assert_echoed(&mut engine, &mut toy, &mut second, b"still works");
    // SAFETY: the listener is ours.
    unsafe { libc::close(fd) };
}

fn io_uring_flags_for_buffer(bid: u32) -> u32 {
    const IORING_CQE_F_BUFFER: u32 = 1;
    const IORING_CQE_BUFFER_SHIFT: u32 = 16;
    IORING_CQE_F_BUFFER | (bid << IORING_CQE_BUFFER_SHIFT)
}

#[test]
/// A server-side close half-closes and lingers: a client that keeps sending still reads the
/// last reply, then sees EOF (not a reset), and the socket is gone within the linger time.
fn server_close_lingers_so_the_client_reads_the_reply() {
    let config = EngineConfig {
        linger: Duration::from_millis(300),
        ..EngineConfig::default()
    };
    let (mut engine, mut toy, mut client, conn, fd) =
        connected(Engine::new(config).unwrap(), Toy::default());
    // The client sends a lot the server will never read ...
    client.write_all(&vec![9u8; 256 << 10]).unwrap();
    // ... while the server answers and closes.
    let c = toy.conn(conn);
    c.out.extend_from_slice(b"refused");
    c.close = true;
    toy.wakes.push(conn);
    assert!(pump_until(
        &mut engine,
        &mut toy,
        Duration::from_secs(5),
        |_, t| t.closed.len() == 1
    ));
    let reader = std::thread::spawn(move || {
        let mut reply = Vec::new();
        let result = client.read_to_end(&mut reply);
        (result.map_err(|e| e.kind()), reply)
    });
    assert!(pump_until(
        &mut engine,
        &mut toy,
        Duration::from_secs(5),
        |e, _| e.open_sockets() == 0
    ));
    let (result, reply) = reader.join().unwrap();
    assert_eq!(reply, b"refused");
    assert!(result.is_ok(), "EOF, not a reset: {result:?}");
    // SAFETY: the listener is ours.
    unsafe { libc::close(fd) };
}

#[test]
/// Pausing cancels the multishot receive (bytes stay in the socket); resuming re-arms it and
/// nothing is lost.
fn pause_and_resume_reading() {
    let mut engine = Engine::new(EngineConfig::default()).unwrap();
    let mut toy = Toy::default();
    let (addr, fd) = listener();
    engine.listen(fd, None).unwrap();
    let mut client = TcpStream::connect(addr).unwrap();
    assert!(pump_until(
        &mut engine,
        &mut toy,
        Duration::from_secs(5),
        |_, t| !t.accepted.is_empty()
    ));
    let conn = toy.accepted[0];
    toy.conn(conn).paused = true;
    toy.wakes.push(conn);
    pump_until(&mut engine, &mut toy, Duration::from_millis(100), |_, _| {
        false
    });
    client.write_all(b"while paused").unwrap();
    pump_until(&mut engine, &mut toy, Duration::from_millis(200), |_, _| {
        false
    });
    assert!(
        toy.conn(conn).received.is_empty(),
        "nothing read while paused"
    );
    toy.conn(conn).paused = false;
    toy.wakes.push(conn);
    assert!(pump_until(
        &mut engine,
        &mut toy,
        Duration::from_secs(5),
        |_, t| t
            .conns
            .get(conn)
            .is_some_and(|c| c.received == b"while paused")
    ));
    // SAFETY: the listener is ours.
    unsafe { libc::close(fd) };
}

/// Runs passes until the echo of `sent` (already written by `client`) went out, then reads
/// it back.
fn assert_echoed(engine: &mut Engine, toy: &mut Toy, client: &mut TcpStream, sent: &[u8]) {
    let target = toy.written + sent.len();
    assert!(pump_until(engine, toy, Duration::from_secs(5), |_, t| t
        .written
        >= target));
    let mut back = vec![0u8; sent.len()];
    client.read_exact(&mut back).unwrap();
    assert_eq!(back, sent);
}

/// Passes until one does nothing (the engine is idle).
fn settle(engine: &mut Engine, toy: &mut Toy) {
    for _ in 0..100 {
        if !engine.turn(toy, Instant::now()).unwrap() {
            return;
        }
    }
    panic!("the engine never went idle");
}

#[test]
fn a_sleep_in_the_ring_ends_with_socket_input_or_the_doorbell_and_otherwise_times_out() {
    let mut engine = Engine::new(EngineConfig::default()).unwrap();
    let doorbell = std::sync::Arc::new(super::Doorbell::new().unwrap());
    assert!(
        !engine.can_sleep(),
        "no doorbell yet: the caller must park elsewhere"
    );
    engine.watch_doorbell(doorbell.eventfd()).unwrap();
    assert!(engine.can_sleep());
    let (mut engine, mut toy, mut client, _conn, fd) = connected(engine, Toy::echo());
    settle(&mut engine, &mut toy);
    // Nothing happens: the sleep runs out.
    assert!(!engine.sleep(Duration::from_millis(20)).unwrap());

    // Input from another thread ends it (10 s: far beyond the 50 ms the input takes).
    let writer = {
        let mut client = client.try_clone().unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            client.write_all(b"wake").unwrap();
        })
    };
    assert!(
        engine.sleep(Duration::from_secs(10)).unwrap(),
        "input must end the sleep"
    );
    writer.join().unwrap();
    assert_echoed(&mut engine, &mut toy, &mut client, b"wake");
    settle(&mut engine, &mut toy);

    // The doorbell ends it too, once the sleeper announced itself; the read is re-armed.
    for round in 0..3u64 {
        assert!(doorbell.prepare_sleep(round));
        let ringer = {
            let doorbell = std::sync::Arc::clone(&doorbell);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                doorbell.ring();
            })
        };
        assert!(
            engine.sleep(Duration::from_secs(10)).unwrap(),
            "the doorbell must end the sleep (round {round})"
        );
        doorbell.woke();
        ringer.join().unwrap();
        settle(&mut engine, &mut toy);
        assert!(
            !engine.sleep(Duration::from_millis(20)).unwrap(),
            "no stale wake-up"
        );
    }
    assert!(toy.closed.is_empty(), "the doorbell is not a socket");
    // SAFETY: the listener is ours.
    unsafe { libc::close(fd) };
}
