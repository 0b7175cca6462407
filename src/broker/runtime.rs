//! The glommio runtime that drives one shard: the only code that touches the clock and the
//! cross-shard queues; client sockets belong to the shard's io_uring engine (`crate::net`),
//! which this runtime drives. The shard itself is a state machine (`super::shard`): every input
//! carries `now`, and after every input the runtime collects what the shard wants done
//! (connections to serve, outbox batches to move into the mesh).
//!
//! Tasks: the engine task (every client socket of the shard), one pump task and one receive
//! task per peer shard, and the timer loop. They share the shard through `Rc<RefCell<Driver>>`
//! and never hold the borrow across an `.await`. When the engine has nothing to do, the engine
//! task sleeps in the engine's own ring (one blocking `io_uring_enter`, no executor loop) as
//! long as nothing else of the shard needs the thread: the pumps wait for outbox messages, the
//! journal writer for records (or a timer whose deadline ends the sleep), no batch from another
//! shard is pending (peers ring this shard's doorbell after each batch), and the next tick is
//! not due. Otherwise it parks in glommio: on an eventfd the ring signals, read through
//! glommio's own ring, or until another task hands the shard new work.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::codec::Output;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::io::BufferedFile;
use glommio::timer::Timer;

use super::handles::ConnId;
use super::mesh::Batch;
use super::shard::{Global, ReadState, Shard, ShardStats};
use super::sys::{self, SysState, Totals};
use crate::config::Config;
use crate::net::{
    CompletionMode, Doorbell, Engine, EngineConfig, EngineStats, Handler, ListenerTransport,
};
use crate::store::journal::{JournalOptions, StoreJournal, SystemClock, DEFAULT_SEGMENT_LIMIT};

mod journal_writer;
mod log_map;

/// How often each shard advances its clock (keep-alive, expiry, shutdown check).
const TICK: Duration = Duration::from_millis(200);
/// Time given at shutdown for DISCONNECTs and wills to go out before the shards stop.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(400);
/// Largest batch a pump sends at once.
const MAX_BATCH: usize = 512;
/// Shortest sleep in the engine's ring worth its set-up (nearer deadlines park in the
/// executor, whose timers they are).
const MIN_RING_SLEEP: Duration = Duration::from_micros(200);

/// Sockets and settings one shard starts with.
pub(super) struct ShardSetup {
    pub(super) cpu: Option<usize>,
    /// Listening sockets with the index of the listener (in `Config::listeners`) each serves.
    pub(super) listeners: Vec<(usize, RawFd)>,
    pub(super) test_listener: Option<(SocketAddr, RawFd)>,
    /// With a data directory: what the shard recovers and where it writes.
    pub(super) store: Option<super::store_start::ShardStore>,
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
    /// Administrative requests (the metrics listener's `/admin` endpoints).
    pub(super) admin: super::admin::Requests,
    /// Every shard's doorbell, by shard id: rung after each batch sent to that shard.
    pub(super) doorbells: Arc<[Doorbell]>,
}

/// The shard's state machine drives its sockets through the engine.
impl Handler for Shard {
    fn accept(
        &mut self,
        listener: Option<usize>,
        peer: Option<SocketAddr>,
        now: Instant,
    ) -> Option<ConnId> {
        self.on_accept_with_peer(listener, peer, now)
    }
    fn identified(&mut self, conn: ConnId, common_name: Option<String>) {
        self.on_identified(conn, common_name);
    }
    fn received(&mut self, conn: ConnId, bytes: &[u8], now: Instant) {
        self.on_received(conn, bytes, now);
    }
    fn reprocess(&mut self, conn: ConnId, now: Instant) {
        self.on_bytes(conn, BytesMut::new(), now);
    }
    fn output(&mut self, conn: ConnId) -> Option<&mut Output> {
        Shard::output(self, conn)
    }
    fn written(&mut self, _conn: ConnId, bytes: usize) {
        self.on_written(bytes);
    }
    fn flushed(&mut self, conn: ConnId, now: Instant) -> bool {
        self.on_flushed(conn, now)
    }
    fn read_state(&mut self, conn: ConnId) -> ReadState {
        Shard::read_state(self, conn)
    }
    fn lingers(&self, conn: ConnId) -> bool {
        self.lingers_on_close(conn)
    }
    fn closed(&mut self, conn: ConnId, now: Instant) {
        if let Some(kill) = self.close_reason(conn) {
            tracing::trace!(conn = ?conn, reason = %kill.reason, graceful = kill.graceful, "closing");
        }
        self.on_closed(conn, now);
    }
    fn drain_wakes(&mut self, wake: &mut dyn FnMut(ConnId)) {
        Shard::drain_wakes(self, wake);
    }
}

/// A shard, its engine, and who to wake when the shard has work for them.
pub(super) struct Driver {
    shard: Shard,
    engine: Engine,
    /// Pump tasks waiting for outbox messages, by peer.
    pump_wakers: Vec<Option<Waker>>,
    /// The engine task while it sleeps.
    engine_waker: Option<Waker>,
    /// Something other than the shard's wake list wants an engine pass (a timer tick).
    engine_kicked: bool,
    /// The journal writer while it waits for records.
    journal_waker: Option<Waker>,
    /// What the journal writer waits for (whether the engine may sleep in its ring).
    journal: JournalWait,
    /// Every shard's doorbell; this shard's wakes it from a sleep in its ring.
    doorbells: Arc<[Doorbell]>,
    /// Batches taken from the mesh so far (compared with this shard's doorbell count).
    mesh_taken: u64,
    /// When the timer loop's next tick is due.
    next_tick: Instant,
    /// Times the engine task parked in the executor (it slept in the ring otherwise).
    executor_parks: u64,
}

/// What the journal writer waits for, as far as a sleep in the engine's ring is concerned:
/// that sleep does not run the executor, so the writer's own I/O and timers would wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JournalWait {
    /// No writer, or one waiting for records only.
    Records,
    /// Waiting for records or its sync timer, due then.
    RecordsOrTimer(Instant),
    /// Writing, syncing, or waiting for I/O of its own.
    Busy,
}

impl Driver {
    fn new(shard: Shard, engine: Engine, shards: usize, doorbells: Arc<[Doorbell]>) -> Self {
        Driver {
            shard,
            engine,
            pump_wakers: (0..shards).map(|_| None).collect(),
            engine_waker: None,
            engine_kicked: false,
            journal_waker: None,
            journal: JournalWait::Records,
            doorbells,
            mesh_taken: 0,
            next_tick: Instant::now(),
            executor_parks: 0,
        }
    }

    /// How long the engine may sleep in its own ring now (`None`: it must park in the
    /// executor, which runs the other tasks, the timers and the mesh). The engine's ring is
    /// all that can wake the thread then; everything else this shard waits for must be
    /// known to wait for nothing but that, or for a deadline before which the sleep ends.
    fn ring_sleep(&mut self, now: Instant) -> Option<Duration> {
        if self.shard.has_wakes() || self.engine_kicked || !self.engine.can_sleep() {
            return None;
        }
        let id = self.shard.shard_id();
        // A pump not parked on the outbox is sending, or waits for room in a peer's queue.
        let pumps_idle =
            self.pump_wakers.iter().enumerate().all(|(peer, waker)| {
                peer == id || (waker.is_some() && !self.shard.has_outbox(peer))
            });
        if !pumps_idle {
            return None;
        }
        let mut deadline = self.next_tick;
        match self.journal {
            JournalWait::Records => {}
            JournalWait::RecordsOrTimer(due) => deadline = deadline.min(due),
            JournalWait::Busy => return None,
        }
        if let Some(due) = self.engine.next_deadline() {
            deadline = deadline.min(due);
        }
        let timeout = deadline.checked_duration_since(now)?;
        if timeout < MIN_RING_SLEEP {
            return None;
        }
        // Last: from here on, a batch handed over writes the doorbell.
        self.doorbells
            .get(id)?
            .prepare_sleep(self.mesh_taken)
            .then_some(timeout)
    }

    /// After an input from another task: wakes the engine task if connections need it, and
    /// the pumps of peers with outbox messages.
    fn dispatch(&mut self) {
        if self.shard.has_wakes() {
            if let Some(waker) = self.engine_waker.take() {
                waker.wake();
            }
        }
        self.wake_pumps();
        self.wake_journal();
    }

    /// Wakes the journal writer if the shard appended records.
    fn wake_journal(&mut self) {
        if self.journal_waker.is_some() && self.shard.journal_mut().has_batch() {
            if let Some(waker) = self.journal_waker.take() {
                waker.wake();
            }
        }
    }

    fn kick_engine(&mut self) {
        self.engine_kicked = true;
        if let Some(waker) = self.engine_waker.take() {
            waker.wake();
        }
    }

    fn wake_pumps(&mut self) {
        for (peer, slot) in self.pump_wakers.iter_mut().enumerate() {
            if self.shard.has_outbox(peer) {
                if let Some(waker) = slot.take() {
                    waker.wake();
                }
            }
        }
    }

    /// The shard's counters with the engine's added.
    fn snapshot(&self) -> ShardStats {
        let engine = self.engine.stats();
        ShardStats {
            ring_enters: engine.ring.enters,
            ring_submissions: engine.ring.submitted,
            ring_completions: engine.ring.completions,
            ring_buffers_exhausted: engine.buffer_ring_empty,
            ring_sleeps: engine.sleeps,
            executor_parks: self.executor_parks,
            ..self.shard.stats()
        }
    }

    /// One engine pass; whether it did anything.
    fn turn(&mut self) -> bool {
        let busy = match self.engine.turn(&mut self.shard, Instant::now()) {
            Ok(busy) => busy,
            // The ring itself failed (not a socket): nothing of this shard can work any more,
            // and the process must not stay half-alive. The shard watcher exits non-zero.
            Err(error) => panic!(
                "shard {}: io_uring engine failed: {error}",
                self.shard.shard_id()
            ),
        };
        self.wake_pumps();
        self.wake_journal();
        busy
    }
}

/// The engine's ring sizes. Tuning knobs for benchmarks, read from the environment (not
/// config keys: the defaults are what the measurements chose): `SHARDMQ_RING_MODE`
/// (`defer`, `coop`, `interrupt`), `SHARDMQ_RECV_BUFFERS` (a power of two),
/// `SHARDMQ_RECV_BUFFER_SIZE` (bytes).
fn engine_config(config: &Config) -> EngineConfig {
    let mut engine = EngineConfig {
        handshakes_per_pass: config.tls_handshakes_per_pass.max(1),
        ..EngineConfig::default()
    };
    let var = |name: &str| std::env::var(name).ok();
    match var("SHARDMQ_RING_MODE").as_deref() {
        Some("defer") => engine.mode = Some(CompletionMode::Deferred),
        Some("coop") => engine.mode = Some(CompletionMode::Cooperative),
        Some("interrupt") => engine.mode = Some(CompletionMode::Interrupt),
        Some(other) => tracing::warn!(mode = other, "unknown SHARDMQ_RING_MODE; using the default"),
        None => {}
    }
    if let Some(count) = var("SHARDMQ_RECV_BUFFERS").and_then(|v| v.parse::<u16>().ok()) {
        engine.buffers = count;
    }
    if let Some(size) = var("SHARDMQ_RECV_BUFFER_SIZE").and_then(|v| v.parse::<usize>().ok()) {
        engine.buffer_size = size;
    }
    engine
}

/// The size at which a log segment is closed and the shard's state written as a snapshot:
/// [`DEFAULT_SEGMENT_LIMIT`], or `SHARDMQ_SEGMENT_LIMIT` bytes (at least 64 KiB) for tests
/// that want rotations and compactions often (not a config key: the default is what the
/// measurements used).
fn segment_limit() -> u64 {
    std::env::var("SHARDMQ_SEGMENT_LIMIT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(DEFAULT_SEGMENT_LIMIT, |limit| limit.max(64 << 10))
}

/// What each listener's connections speak (TLS material as loaded, WebSocket settings), by
/// listener index.
fn listener_transports(config: &Config) -> Vec<ListenerTransport> {
    config
        .listeners()
        .iter()
        .enumerate()
        .map(|(index, listener)| ListenerTransport {
            tls: config
                .tls_files
                .by_listener
                .get(index)
                .and_then(Option::as_ref)
                .map(|loaded| Arc::clone(&loaded.server)),
            ws: listener.ws_config().map(Arc::new),
        })
        .collect()
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
        admin,
        doorbells,
    } = links;
    // Joining the mesh is also the start barrier: it completes once every shard has joined.
    let Ok((senders, receivers)) = mesh.join().await else {
        tracing::error!("could not join the cross-shard mesh");
        return;
    };
    let id = senders.peer_id();
    let shards = senders.nr_consumers();
    let mut engine = match Engine::new(engine_config(&config)) {
        Ok(engine) => engine,
        Err(error) => panic!("shard {id}: cannot start its io_uring engine: {error}"),
    };
    tracing::debug!(shard = id, mode = %engine.mode(), "io_uring engine ready");
    let mut listening_fds: Vec<RawFd> = Vec::new();
    let transports = listener_transports(&config);
    for &(index, fd) in &setup.listeners {
        listening_fds.push(fd);
        let transport = transports.get(index).cloned().unwrap_or_default();
        if let Err(error) = engine.listen_with(fd, Some(index), transport) {
            panic!("shard {id}: cannot accept on listener {index}: {error}");
        }
    }
    let test_addr = setup.test_listener.map(|(addr, fd)| {
        listening_fds.push(fd);
        if let Err(error) = engine.listen(fd, None) {
            panic!("shard {id}: cannot accept on the test listener: {error}");
        }
        addr
    });
    // glommio reads the engine's eventfd through its own ring: the wake-up when the engine's
    // ring has completions while the shard sleeps.
    // SAFETY: dup has no memory preconditions.
    let wake_fd = unsafe { libc::dup(engine.eventfd()) };
    if wake_fd < 0 {
        panic!(
            "shard {id}: cannot duplicate the engine's eventfd: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: `wake_fd` is a fresh descriptor owned by nobody else.
    let wake_file = Rc::new(unsafe { BufferedFile::from_raw_fd(wake_fd) });
    let config = Rc::new(config);
    let mut shard = Shard::new(
        id,
        shards,
        Rc::clone(&config),
        Arc::clone(&global),
        Instant::now(),
    );
    // With a data directory: the journal, the recovered state, and the first image (which
    // the writer makes durable before the shard's older files go), all before any accept.
    let writer = setup.store.map(|store| {
        let mut journal = StoreJournal::new(
            JournalOptions {
                shard: id as u16,
                shard_count: shards as u16,
                epoch: global.epoch.load(Ordering::Relaxed),
                first_segment: store.first_segment,
                segment_limit: segment_limit(),
            },
            Box::new(SystemClock),
        );
        journal.carry_into_next_image(store.carry);
        journal.reserve(store.image_bytes);
        shard.set_journal(Box::new(journal));
        let now = Instant::now();
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        let install_started = Instant::now();
        let cpu = super::store_start::thread_cpu();
        shard.install_recovered(store.sessions, store.retained, now, unix_ms);
        let install_ms = install_started.elapsed().as_millis() as u64;
        let install_cpu = super::store_start::thread_cpu() - cpu;
        shard.install_origins(store.origins);
        shard.journal_image(now);
        tracing::info!(
            shard = id,
            install_ms,
            install_cpu_ms = install_cpu.as_millis() as u64,
            image_ms = (install_started.elapsed().as_millis() as u64).saturating_sub(install_ms),
            image_cpu_ms =
                (super::store_start::thread_cpu() - cpu - install_cpu).as_millis() as u64,
            "recovered state installed and its first image encoded"
        );
        // Peers learn this shard's recovered subscriptions (broadcast by the install, before
        // this on the ordered mesh); clients are accepted once every shard has announced.
        shard.announce_recovered();
        let stop = Rc::new(std::cell::Cell::new(false));
        let failing = Rc::new(std::cell::Cell::new(false));
        let shared = Arc::clone(&store.shared);
        let writer = journal_writer::JournalWriter::new(
            store.shared,
            id as u16,
            store.old_files,
            segment_limit(),
            Rc::clone(&stop),
            Rc::clone(&failing),
        );
        (writer, stop, (shared, failing))
    });
    // Without a doorbell the engine never sleeps in its ring: the shard parks in the executor.
    match doorbells
        .get(id)
        .map(|doorbell| engine.watch_doorbell(doorbell.eventfd()))
    {
        Some(Ok(())) => {}
        Some(Err(error)) => {
            tracing::warn!(shard = id, %error, "cannot watch the doorbell: the shard parks in the executor")
        }
        None => tracing::warn!(
            shard = id,
            "no doorbell for this shard: it parks in the executor"
        ),
    }
    let driver = Rc::new(RefCell::new(Driver::new(
        shard,
        engine,
        shards,
        Arc::clone(&doorbells),
    )));
    if writer.is_some() {
        // Until the writer first waits for records.
        driver.borrow_mut().journal = JournalWait::Busy;
    }
    let (writer_task, store) = match writer {
        Some((writer, stop, shared)) => (
            Some((
                glommio::spawn_local(journal_writer::run(Rc::clone(&driver), writer)),
                stop,
            )),
            Some(shared),
        ),
        None => (None, None),
    };
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
    // With a data directory, the engine (and so every accept) starts once every shard has
    // installed what it recovered: a publish accepted here then reaches every recovered
    // subscription. Connections wait in the listen backlog meanwhile.
    if store.is_some() {
        while !driver.borrow().shard.peers_recovered() && !global.shutdown.load(Ordering::Relaxed) {
            Timer::new(Duration::from_millis(1)).await;
        }
    }
    tasks.push(glommio::spawn_local(drive(
        Rc::clone(&driver),
        Rc::clone(&wake_file),
    )));
    let _ = ready.send((id, test_addr));
    drop(ready);
    let panic_at = (config.test_inject_panic == Some(id)).then(|| Instant::now() + TICK * 5);
    let mut memory = MemoryWatch::default();
    let mut sys =
        (!all_stats.is_empty()).then(|| SysPublisher::new(all_stats, Arc::clone(&global)));
    while !global.shutdown.load(Ordering::Relaxed) {
        let tick = Timer::new(TICK);
        // At or after the timer's own deadline (set when it was made).
        driver.borrow_mut().next_tick = Instant::now() + TICK;
        tick.await;
        {
            let mut driver = driver.borrow_mut();
            while let Ok(config) = reloads.try_recv() {
                if config.tls_files != driver.shard.config().tls_files {
                    // New certificates for new connections; established ones keep theirs.
                    for (index, transport) in listener_transports(&config).into_iter().enumerate() {
                        driver.engine.set_transport(index, transport);
                    }
                }
                driver.shard.on_config(Rc::new((*config).clone()));
            }
            if id == 0 {
                memory.sample(driver.shard.config().max_memory.bytes(), &global);
            }
            let pressure = global.memory_pressure.load(Ordering::Relaxed);
            driver.shard.set_memory_pressure(pressure, Instant::now());
            {
                let driver = &mut *driver;
                let engine = &driver.engine;
                super::admin::serve(&admin, &mut driver.shard, &mut |conn| {
                    engine.peer_addr(conn)
                });
            }
            driver.shard.on_tick(Instant::now());
            // Compaction: once the current log is full (and every shard's first image is
            // durable, so that what it carries may go).
            let compact = store
                .as_ref()
                .is_some_and(|(store, failing)| store.first_images_done() && !failing.get());
            if compact && driver.shard.journal_mut().image_due() {
                driver.shard.journal_image(Instant::now());
            }
            driver.dispatch();
            // Deadlines of closing sockets and accept retries are checked by engine passes.
            driver.kick_engine();
            let snapshot_now = driver.snapshot();
            if let Ok(mut snapshot) = stats.lock() {
                *snapshot = snapshot_now;
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
        driver.engine.stop_accepting();
        driver.shard.shutdown_all(Instant::now());
        driver.dispatch();
    }
    // Stop listening: new connections are refused from here on.
    for &fd in &listening_fds {
        // SAFETY: `fd` is a listening socket of this shard, still open.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
    Timer::new(SHUTDOWN_GRACE).await;
    let engine_stats: EngineStats = driver.borrow().engine.stats();
    tracing::debug!(shard = id, ?engine_stats, "engine stopped");
    // The journal's last records, written and synced.
    if let Some((task, stop)) = writer_task {
        stop.set(true);
        if let Some(waker) = driver.borrow_mut().journal_waker.take() {
            waker.wake();
        }
        task.await;
    }
    // Dropping the tasks releases the engine (its ring and sockets) and the cross-shard queues.
    senders.close();
    drop(tasks);
    for fd in listening_fds {
        // SAFETY: the listening sockets were handed to this shard, which owns them; the engine
        // (whose accepts referred to them) is gone or shut down.
        unsafe { libc::close(fd) };
    }
}

/// Drives the engine: a pass whenever there is work, sleep when the ring and the shard are
/// both idle.
async fn drive(driver: Rc<RefCell<Driver>>, wake_file: Rc<BufferedFile>) {
    // The pending eventfd read, kept across sleeps (dropping it would cancel and resubmit).
    let mut wake_read: Option<Pin<Box<dyn Future<Output = ()>>>> = None;
    loop {
        if driver.borrow_mut().turn() {
            // Let the mesh, the pumps and the timers run between passes.
            futures_lite::future::yield_now().await;
            continue;
        }
        // Quiet but not idle: sleep in the engine's ring, where the next socket event wakes
        // the thread with one enter and no executor loop. After a timeout (a timer is due)
        // or the doorbell (a batch from another shard), park in the executor below instead,
        // which runs the timers and the mesh.
        {
            let mut driver = driver.borrow_mut();
            if let Some(timeout) = driver.ring_sleep(Instant::now()) {
                let busy = driver.engine.sleep(timeout);
                let id = driver.shard.shard_id();
                if let Some(doorbell) = driver.doorbells.get(id) {
                    doorbell.woke();
                }
                match busy {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(error) => panic!("shard {id}: io_uring engine failed: {error}"),
                }
            }
        }
        if !driver.borrow_mut().engine.prepare_sleep() {
            continue;
        }
        let read = wake_read.get_or_insert_with(|| {
            let file = Rc::clone(&wake_file);
            Box::pin(async move {
                if let Err(error) = file.read_at(0, 8).await {
                    tracing::warn!(%error, "reading the engine's eventfd failed");
                    Timer::new(Duration::from_millis(10)).await;
                }
            })
        });
        let ring_woke = poll_fn(|cx| {
            if read.as_mut().poll(cx).is_ready() {
                return Poll::Ready(true);
            }
            let mut driver = driver.borrow_mut();
            if driver.shard.has_wakes() || driver.engine_kicked {
                driver.engine_kicked = false;
                return Poll::Ready(false);
            }
            if driver.engine_waker.is_none() {
                driver.executor_parks += 1;
            }
            driver.engine_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        if ring_woke {
            wake_read = None;
        }
        let mut driver = driver.borrow_mut();
        driver.engine_waker = None;
        driver.engine.woke();
    }
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
        if let Some(doorbell) = driver.doorbells.get(peer) {
            doorbell.ring();
        }
        driver.shard.on_outbox_drained();
        driver.dispatch();
    }
}

/// Applies every batch a peer sends, forever.
async fn receive(driver: Rc<RefCell<Driver>>, receiver: ConnectedReceiver<Batch>, peer: usize) {
    while let Some(batch) = receiver.recv().await {
        {
            let mut driver = driver.borrow_mut();
            driver.mesh_taken += 1;
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

/// Shard 0's watch over `max_memory`: the resident set, read once per tick (a few
/// microseconds, off the hot path), turns the broker-wide pressure flag on above the budget
/// and off below 90% of it. Every shard reads the flag at its tick.
#[derive(Debug, Default)]
struct MemoryWatch {
    over: bool,
}

impl MemoryWatch {
    fn sample(&mut self, max_memory: u64, global: &Global) {
        if max_memory == 0 {
            if std::mem::take(&mut self.over) {
                global.memory_pressure.store(false, Ordering::Relaxed);
                tracing::info!(
                    "max_memory removed: accepting connections and reading publishers again"
                );
            }
            return;
        }
        let resident = resident_bytes();
        let low_water = max_memory / 10 * 9;
        if !self.over && resident > max_memory {
            self.over = true;
            global.memory_pressure.store(true, Ordering::Relaxed);
            tracing::warn!(
                resident,
                max_memory,
                "memory use ({resident} B) above max_memory ({max_memory} B): refusing new \
                 connections (CONNACK 0x89) and pausing clients that publish"
            );
        } else if self.over && resident < low_water {
            self.over = false;
            global.memory_pressure.store(false, Ordering::Relaxed);
            tracing::info!(
                resident,
                max_memory,
                "memory use ({resident} B) back under 90% of max_memory: accepting connections \
                 and reading publishers again"
            );
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

    #[test]
    /// What the engine keeps per connection: the socket record and the map entry from the
    /// shard's connection to it. No task, no poll registration, no buffer while idle.
    fn engine_records_are_small() {
        let size = Engine::record_size();
        assert!(size.socket <= 48, "socket record: {} bytes", size.socket);
        assert!(
            size.conn_map_entry <= 12,
            "map entry: {} bytes",
            size.conn_map_entry
        );
    }
}
