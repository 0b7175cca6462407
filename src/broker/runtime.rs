//! The glommio runtime that drives one shard: the only code that touches sockets, the clock
//! and the cross-shard queues. The shard itself is a state machine (`super::shard`): every
//! input carries `now`, and after every input the runtime collects what the shard wants done
//! (connections to wake for writing, reading or closing; outbox batches to move into the mesh).
//!
//! One task per connection, one pump task per peer, one receive task per peer and the timer
//! loop; they share the shard through `Rc<RefCell<Driver>>` and never hold the borrow across an
//! `.await`.

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::Timer;

use super::handles::ConnId;
use super::mesh::Batch;
use super::shard::{Global, ReadState, Shard, ShardStats};
use super::sys::{self, SysState, Totals};
use crate::config::Config;

/// How often each shard advances its clock (keep-alive, expiry, shutdown check).
const TICK: Duration = Duration::from_millis(200);
/// Time given at shutdown for DISCONNECTs and wills to go out before the shards stop.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(400);
/// Largest batch a pump sends at once.
const MAX_BATCH: usize = 512;
/// Size of the shard's socket read buffer (shared by all its connections).
const SCRATCH_SIZE: usize = 64 * 1024;

/// Sockets and settings one shard starts with.
pub(super) struct ShardSetup {
    pub(super) cpu: Option<usize>,
    /// Listening sockets with the index of the listener (in `Config::listeners`) each serves.
    pub(super) listeners: Vec<(usize, RawFd)>,
    pub(super) test_listener: Option<(SocketAddr, RawFd)>,
}

/// How a shard's runtime reaches the rest of the process.
pub(super) struct ShardLinks {
    pub(super) global: Arc<Global>,
    /// Where this shard publishes its counter snapshot, once per tick.
    pub(super) stats: Arc<std::sync::Mutex<ShardStats>>,
    /// New configurations (reload).
    pub(super) reloads: crossbeam_channel::Receiver<Arc<Config>>,
    /// Every shard's snapshot, for the shard that publishes `$SYS` (empty on the others).
    pub(super) all_stats: Vec<Arc<std::sync::Mutex<ShardStats>>>,
}

/// A shard and the runtime's side tables: who to wake when the shard asks.
pub(super) struct Driver {
    shard: Shard,
    /// Connection tasks waiting for the shard, by connection slot.
    conn_wakers: Vec<Option<Waker>>,
    /// Pump tasks waiting for outbox messages, by peer.
    pump_wakers: Vec<Option<Waker>>,
    scratch: Box<[u8]>,
}

impl Driver {
    fn new(shard: Shard, shards: usize) -> Self {
        Driver {
            shard,
            conn_wakers: Vec::new(),
            pump_wakers: (0..shards).map(|_| None).collect(),
            scratch: vec![0u8; SCRATCH_SIZE].into_boxed_slice(),
        }
    }

    /// Delivers what the shard asked for during the last input: wake-ups for connection tasks
    /// and for the pumps of peers with outbox messages.
    fn dispatch(&mut self) {
        let wakers = &mut self.conn_wakers;
        self.shard.drain_wakes(|conn| {
            if let Some(waker) = wakers.get_mut(conn.slot()).and_then(Option::take) {
                waker.wake();
            }
        });
        for (peer, slot) in self.pump_wakers.iter_mut().enumerate() {
            if self.shard.has_outbox(peer) {
                if let Some(waker) = slot.take() {
                    waker.wake();
                }
            }
        }
    }

    fn register(&mut self, conn: ConnId, waker: &Waker) {
        let slot = conn.slot();
        if self.conn_wakers.len() <= slot {
            self.conn_wakers.resize_with(slot + 1, || None);
        }
        let entry = &mut self.conn_wakers[slot];
        if !entry.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *entry = Some(waker.clone());
        }
    }

    /// Drives one connection's socket: flushes output, reads input, registers for wake-ups.
    fn poll_conn<S>(&mut self, conn: ConnId, stream: &mut S, cx: &mut Context<'_>) -> Poll<Event>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            let Some(out) = self.shard.output(conn) else {
                return Poll::Ready(Event::Closed);
            };
            let mut blocked = false;
            let mut total = 0;
            while !out.is_empty() {
                match Pin::new(&mut *stream).poll_write(cx, out) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Event::Closed),
                    Poll::Ready(Ok(written)) => {
                        out.advance(written);
                        total += written;
                    }
                    Poll::Pending => {
                        blocked = true;
                        break;
                    }
                }
            }
            self.shard.on_written(total);
            if blocked || !self.shard.on_flushed(conn, Instant::now()) {
                break;
            }
        }
        match self.shard.read_state(conn) {
            ReadState::Close => return Poll::Ready(Event::Closed),
            ReadState::Reprocess => return Poll::Ready(Event::Data(BytesMut::new())),
            ReadState::Wait => {}
            ReadState::Read => match Pin::new(&mut *stream).poll_read(cx, &mut self.scratch) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Event::Closed),
                Poll::Ready(Ok(read)) => {
                    return Poll::Ready(Event::Data(BytesMut::from(&self.scratch[..read])));
                }
                Poll::Pending => {}
            },
        }
        self.register(conn, cx.waker());
        Poll::Pending
    }
}

/// What a connection task learns from polling its socket.
#[derive(Debug)]
enum Event {
    /// Bytes arrived (or input kept while paused must be handled).
    Data(BytesMut),
    /// The connection is over.
    Closed,
}

/// Runs one shard until the broker shuts down.
pub(super) async fn run_shard(
    config: Config,
    links: ShardLinks,
    mesh: MeshBuilder<Batch, Full>,
    setup: ShardSetup,
    ready: mpsc::Sender<(usize, Option<SocketAddr>)>,
) {
    let ShardLinks {
        global,
        stats,
        reloads,
        all_stats,
    } = links;
    // Joining the mesh is also the start barrier: it completes once every shard has joined.
    let Ok((senders, receivers)) = mesh.join().await else {
        tracing::error!("could not join the cross-shard mesh");
        return;
    };
    let id = senders.peer_id();
    let shards = senders.nr_consumers();
    let config = Rc::new(config);
    let shard = Shard::new(
        id,
        shards,
        Rc::clone(&config),
        Arc::clone(&global),
        Instant::now(),
    );
    let driver = Rc::new(RefCell::new(Driver::new(shard, shards)));
    let senders = Rc::new(senders);
    // Kept (not detached) so that dropping them at shutdown cancels them.
    let mut tasks = Vec::new();
    let mut receivers = receivers;
    for (peer, receiver) in receivers.streams() {
        if peer != id {
            tasks.push(glommio::spawn_local(receive(
                Rc::clone(&driver),
                receiver,
                peer,
            )));
        }
    }
    for peer in (0..shards).filter(|&p| p != id) {
        tasks.push(glommio::spawn_local(pump(
            Rc::clone(&driver),
            Rc::clone(&senders),
            peer,
        )));
    }
    let mut listening_fds: Vec<RawFd> = setup.listeners.iter().map(|&(_, fd)| fd).collect();
    if let Some((_, fd)) = setup.test_listener {
        listening_fds.push(fd);
    }
    for (index, fd) in setup.listeners {
        // SAFETY: the fd is a listening TCP socket created for this shard and owned by nobody else.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        tasks.push(glommio::spawn_local(accept_loop(
            Rc::clone(&driver),
            listener,
            Some(index),
        )));
    }
    let test_addr = setup.test_listener.map(|(addr, fd)| {
        // SAFETY: as above.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        tasks.push(glommio::spawn_local(accept_loop(
            Rc::clone(&driver),
            listener,
            None,
        )));
        addr
    });
    let _ = ready.send((id, test_addr));
    drop(ready);
    let panic_at = (config.test_inject_panic == Some(id)).then(|| Instant::now() + TICK * 5);
    let mut sys =
        (!all_stats.is_empty()).then(|| SysPublisher::new(all_stats, Arc::clone(&global)));
    while !global.shutdown.load(Ordering::Relaxed) {
        Timer::new(TICK).await;
        {
            let mut driver = driver.borrow_mut();
            while let Ok(config) = reloads.try_recv() {
                driver.shard.on_config(Rc::new((*config).clone()));
            }
            driver.shard.on_tick(Instant::now());
            driver.dispatch();
            if let Ok(mut snapshot) = stats.lock() {
                *snapshot = driver.shard.stats();
            }
            if let Some(sys) = sys.as_mut() {
                let interval = driver.shard.config().sys_interval;
                sys.maybe_publish(&mut driver.shard, interval, Instant::now());
                driver.dispatch();
            }
        }
        if panic_at.is_some_and(|at| Instant::now() >= at) {
            panic!("shard {id}: panic injected by --test-inject-panic");
        }
    }
    tracing::debug!(shard = id, "shutting down");
    // Wills first, on every shard, while every shard still delivers; then the connections.
    {
        let mut driver = driver.borrow_mut();
        driver.shard.publish_wills_for_shutdown(Instant::now());
        driver.dispatch();
    }
    Timer::new(SHUTDOWN_GRACE).await;
    {
        let mut driver = driver.borrow_mut();
        driver.shard.shutdown_all(Instant::now());
        driver.dispatch();
    }
    Timer::new(SHUTDOWN_GRACE).await;
    // Stop listening explicitly: whatever still holds the listener objects, new connections are
    // refused from here on. The fds stay owned (and are closed) by the listeners.
    for fd in listening_fds {
        // SAFETY: `fd` is a listening socket owned by one of this shard's listeners, still open.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
    // Dropping the tasks releases the listeners and the cross-shard queues.
    senders.close();
    drop(tasks);
}

/// Accepts connections for one listener (`None`: the test hook's per-shard listener, which
/// has no settings of its own).
async fn accept_loop(driver: Rc<RefCell<Driver>>, listener: TcpListener, index: Option<usize>) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let accepted = driver
                    .borrow_mut()
                    .shard
                    .on_accept_from(index, Instant::now());
                let Some(conn) = accepted else {
                    tracing::debug!(
                        "too many connections over the limit waiting for a refusal; closing a new one"
                    );
                    continue;
                };
                glommio::spawn_local(run_connection(Rc::clone(&driver), stream, conn)).detach();
            }
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                Timer::new(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn run_connection(driver: Rc<RefCell<Driver>>, mut stream: TcpStream, conn: ConnId) {
    loop {
        let event = poll_fn(|cx| driver.borrow_mut().poll_conn(conn, &mut stream, cx)).await;
        match event {
            Event::Data(data) => {
                let mut driver = driver.borrow_mut();
                driver.shard.on_bytes(conn, data, Instant::now());
                driver.dispatch();
            }
            Event::Closed => break,
        }
        glommio::yield_if_needed().await;
    }
    let mut driver = driver.borrow_mut();
    if let Some(kill) = driver.shard.close_reason(conn) {
        tracing::trace!(conn = ?conn, reason = %kill.reason, graceful = kill.graceful, "closing");
    }
    driver.shard.on_closed(conn, Instant::now());
    // The task is ending: its waker must not keep it (and its future) alive in the table.
    if let Some(slot) = driver.conn_wakers.get_mut(conn.slot()) {
        *slot = None;
    }
    driver.dispatch();
}

/// Moves `peer`'s outbox into the mesh, forever. Awaiting room in the queue happens only here,
/// never in a task that also drains inbound queues (glommio issue #555: that can deadlock).
async fn pump(driver: Rc<RefCell<Driver>>, senders: Rc<Senders<Batch>>, peer: usize) {
    loop {
        let batch = poll_fn(|cx| {
            let mut driver = driver.borrow_mut();
            match driver.shard.take_outbox_batch(peer, MAX_BATCH) {
                Some(batch) => Poll::Ready(batch),
                None => {
                    driver.pump_wakers[peer] = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        if senders.send_to(peer, batch).await.is_err() {
            tracing::debug!(peer, "cross-shard queue closed");
            return;
        }
        let mut driver = driver.borrow_mut();
        driver.shard.on_outbox_drained();
        driver.dispatch();
    }
}

/// Applies every batch a peer sends, forever.
async fn receive(driver: Rc<RefCell<Driver>>, receiver: ConnectedReceiver<Batch>, peer: usize) {
    while let Some(batch) = receiver.recv().await {
        {
            let mut driver = driver.borrow_mut();
            driver.shard.on_mesh_from(peer, batch, Instant::now());
            driver.dispatch();
        }
        glommio::yield_if_needed().await;
    }
}

/// Shard 0's `$SYS` duty: every `sys_interval` seconds, every shard's snapshot summed and
/// published as retained messages.
struct SysPublisher {
    sources: Vec<Arc<std::sync::Mutex<ShardStats>>>,
    global: Arc<Global>,
    started: Instant,
    last: Option<Instant>,
    state: SysState,
}

impl SysPublisher {
    fn new(sources: Vec<Arc<std::sync::Mutex<ShardStats>>>, global: Arc<Global>) -> Self {
        SysPublisher {
            sources,
            global,
            started: Instant::now(),
            last: None,
            state: SysState::default(),
        }
    }

    fn maybe_publish(&mut self, shard: &mut Shard, interval_secs: u64, now: Instant) {
        if interval_secs == 0 {
            return;
        }
        let elapsed = self.last.map(|last| now.saturating_duration_since(last));
        if elapsed.is_some_and(|e| e < Duration::from_secs(interval_secs)) {
            return;
        }
        self.last = Some(now);
        let snapshots: Vec<ShardStats> = self
            .sources
            .iter()
            .map(|s| s.lock().map(|s| *s).unwrap_or_default())
            .collect();
        let totals = Totals {
            stats: sys::sum(&snapshots),
            connections: self.global.connections.load(Ordering::Relaxed) as u64,
            uptime: now.saturating_duration_since(self.started).as_secs(),
            memory: resident_bytes(),
        };
        for (topic, payload) in self.state.update(&totals, elapsed.unwrap_or_default()) {
            shard.publish_internal(&topic, bytes::Bytes::from(payload), now);
        }
    }
}

/// The process's resident set size, from /proc (0 if unreadable).
fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|text| text.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

#[cfg(test)]
mod footprint {
    use super::*;
    use glommio::{LocalExecutorBuilder, Placement};

    #[test]
    /// The connection task's future lives as long as the connection: keep it small.
    fn connection_future_is_small() {
        LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(64 << 10)
            .spawn(|| async {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let _client = std::net::TcpStream::connect(addr).unwrap();
                let stream = listener.accept().await.unwrap();
                let shard = Shard::new(
                    0,
                    1,
                    Rc::new(Config::default()),
                    Arc::new(Global::default()),
                    Instant::now(),
                );
                let driver = Rc::new(RefCell::new(Driver::new(shard, 1)));
                let conn = driver.borrow_mut().shard.on_accept(Instant::now()).unwrap();
                let future = run_connection(driver, stream, conn);
                assert!(std::mem::size_of_val(&future) <= 384);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
