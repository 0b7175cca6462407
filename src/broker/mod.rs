//! The shard runtime: one glommio executor per shard, pinned to a CPU, each accepting on every
//! listen address (SO_REUSEPORT) and owning the connections it accepts.

mod listener;
mod mesh;
mod shard;

pub use listener::{allowed_cpus, check_io_uring};
pub use shard::{Global, ShardStats};

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::Timer;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use crate::config::{parse_cpu_list, Config};
use mesh::Batch;
use shard::{ConnEvent, Shard};

/// How often each shard advances its clock (keep-alive, expiry, shutdown check).
const TICK: Duration = Duration::from_millis(200);
/// Time given at shutdown for DISCONNECTs and wills to go out before the shards stop.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(400);

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// io_uring is unavailable.
    #[error("{0}")]
    IoUring(io::Error),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// CPU selection failed.
    #[error("cannot choose CPUs: {0}")]
    Cpus(String),
    /// An executor could not be created.
    #[error("cannot start shard executors: {0}")]
    Executor(String),
}

/// A running broker.
#[derive(Debug)]
pub struct BrokerHandle {
    /// The bound listen addresses (ports resolved when 0 was asked for).
    pub listen_addrs: Vec<SocketAddr>,
    /// With `per_shard_listeners`: `shard_addrs[i]` reaches shard `i` only.
    pub shard_addrs: Vec<SocketAddr>,
    global: Arc<Global>,
    /// One message per shard as its thread ends: (shard, exited cleanly).
    exits: crossbeam_channel::Receiver<(usize, bool)>,
    running: usize,
}

impl BrokerHandle {
    /// Asks every shard to stop: clients are disconnected (wills fire), then the shards exit.
    pub fn shutdown(&self) {
        self.global.shutdown.store(true, Ordering::SeqCst);
    }

    /// Open client connections, all shards.
    pub fn connections(&self) -> usize {
        self.global.connections.load(Ordering::Relaxed)
    }

    /// Whether a shard thread has died (panicked). The other shards are told to stop at once:
    /// a broker missing a shard drops that shard's clients, cross-shard messages and claims, so
    /// it must exit (and be restarted by its supervisor) rather than stay half alive.
    pub fn failed(&self) -> bool {
        self.global.failed.load(Ordering::SeqCst)
    }

    /// Waits for every shard to exit.
    pub fn join(mut self) {
        while self.running > 0 {
            if self.exits.recv().is_err() {
                return;
            }
            self.running -= 1;
        }
    }

    /// Waits at most `within` for every shard to exit; returns whether they all did.
    pub fn join_timeout(&mut self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while self.running > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.exits.recv_timeout(left) {
                Ok(_) => self.running -= 1,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => return false,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return true,
            }
        }
        true
    }
}

/// Joins one shard's thread from a thread of its own, so that a shard that dies is noticed at
/// once: the broker is marked failed and every other shard is told to stop.
fn watch_shard(
    index: usize,
    thread: ExecutorJoinHandle<()>,
    global: Arc<Global>,
    exits: crossbeam_channel::Sender<(usize, bool)>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name(format!("shard-{index}-watch"))
        .spawn(move || {
            let clean = thread.join().is_ok();
            if !clean {
                tracing::error!(
                    shard = index,
                    "shard thread died (panicked); stopping the broker"
                );
                global.failed.store(true, Ordering::SeqCst);
                global.shutdown.store(true, Ordering::SeqCst);
            }
            let _ = exits.send((index, clean));
        })
        .map(drop)
}

struct ShardSetup {
    cpu: Option<usize>,
    listeners: Vec<RawFd>,
    test_listener: Option<(SocketAddr, RawFd)>,
}

/// Starts the broker: binds, spawns one executor per shard, returns once every shard accepts.
pub fn start(config: Config) -> Result<BrokerHandle, StartError> {
    check_io_uring().map_err(StartError::IoUring)?;
    let allowed = allowed_cpus().map_err(|e| StartError::Cpus(e.to_string()))?;
    let cpus = match &config.cpus {
        Some(list) => {
            let wanted = parse_cpu_list(list).map_err(|e| StartError::Cpus(e.to_string()))?;
            if let Some(bad) = wanted.iter().find(|cpu| !allowed.contains(cpu)) {
                return Err(StartError::Cpus(format!(
                    "CPU {bad} is not in this process's affinity mask {allowed:?}"
                )));
            }
            wanted
        }
        None => allowed,
    };
    if cpus.is_empty() {
        return Err(StartError::Cpus("no CPU available".into()));
    }
    let shards = config.shards.unwrap_or(cpus.len());
    // More shards than CPUs (tests, small machines): leave them unpinned rather than stacking
    // several executors on one CPU.
    let pin = shards <= cpus.len();
    let mut setups: Vec<ShardSetup> = (0..shards)
        .map(|i| ShardSetup {
            cpu: pin.then(|| cpus[i]),
            listeners: Vec::new(),
            test_listener: None,
        })
        .collect();
    let mut listen_addrs = Vec::new();
    for &addr in &config.listen {
        let (bound, fds) = listener::reuseport_group(addr, shards, config.backlog)
            .map_err(|source| StartError::Listen { addr, source })?;
        listen_addrs.push(bound);
        for (setup, fd) in setups.iter_mut().zip(fds) {
            setup.listeners.push(fd);
        }
    }
    if config.per_shard_listeners {
        for setup in &mut setups {
            let test = listener::loopback_listener(config.backlog).map_err(|source| {
                StartError::Listen {
                    addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                    source,
                }
            })?;
            setup.test_listener = Some(test);
        }
    }
    let global = Arc::new(Global::default());
    let mesh: MeshBuilder<Batch, _> = MeshBuilder::full(shards, config.mesh_capacity);
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, Option<SocketAddr>)>();
    let (exits_tx, exits) = crossbeam_channel::unbounded();
    for (index, setup) in setups.into_iter().enumerate() {
        let placement = match setup.cpu {
            Some(cpu) => Placement::Fixed(cpu),
            None => Placement::Unbound,
        };
        let config = config.clone();
        let shard_global = Arc::clone(&global);
        let mesh = mesh.clone();
        let ready = ready_tx.clone();
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{index}"))
            // No file I/O on shards: the smallest registered-buffer area glommio accepts.
            .io_memory(64 << 10)
            .spawn(move || async move { run_shard(config, shard_global, mesh, setup, ready).await })
            .map_err(|e| StartError::Executor(e.to_string()))?;
        watch_shard(index, handle, Arc::clone(&global), exits_tx.clone())
            .map_err(|e| StartError::Executor(e.to_string()))?;
    }
    drop(ready_tx);
    let mut shard_addrs = vec![SocketAddr::from(([127, 0, 0, 1], 0)); shards];
    for _ in 0..shards {
        let (id, addr) = ready_rx
            .recv()
            .map_err(|_| StartError::Executor("a shard failed to start".into()))?;
        if let Some(addr) = addr {
            shard_addrs[id] = addr;
        }
    }
    if !config.per_shard_listeners {
        shard_addrs.clear();
    }
    tracing::info!(shards, ?listen_addrs, "shardmq accepting connections");
    Ok(BrokerHandle {
        listen_addrs,
        shard_addrs,
        global,
        exits,
        running: shards,
    })
}

async fn run_shard(
    config: Config,
    global: Arc<Global>,
    mesh: MeshBuilder<Batch, glommio::channels::channel_mesh::Full>,
    setup: ShardSetup,
    ready: mpsc::Sender<(usize, Option<SocketAddr>)>,
) {
    // Joining the mesh is also the start barrier: it completes once every shard has joined.
    let Ok((senders, receivers)) = mesh.join().await else {
        tracing::error!("could not join the cross-shard mesh");
        return;
    };
    let id = senders.peer_id();
    let shards = senders.nr_consumers();
    let config = Rc::new(config);
    let shard = Rc::new(RefCell::new(Shard::new(
        id,
        shards,
        Rc::clone(&config),
        Arc::clone(&global),
    )));
    let senders = Rc::new(senders);
    // Kept (not detached) so that dropping them at shutdown cancels them.
    let mut tasks = Vec::new();
    for (peer, receiver) in mesh::receivers(receivers) {
        if peer != id {
            tasks.push(glommio::spawn_local(mesh::receive(
                Rc::clone(&shard),
                receiver,
            )));
        }
    }
    for peer in (0..shards).filter(|&p| p != id) {
        tasks.push(glommio::spawn_local(mesh::pump(
            Rc::clone(&shard),
            Rc::clone(&senders),
            peer,
        )));
    }
    let mut listening_fds: Vec<RawFd> = setup.listeners.clone();
    if let Some((_, fd)) = setup.test_listener {
        listening_fds.push(fd);
    }
    for fd in setup.listeners {
        // SAFETY: the fd is a listening TCP socket created for this shard and owned by nobody else.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        tasks.push(glommio::spawn_local(accept_loop(
            Rc::clone(&shard),
            listener,
        )));
    }
    let test_addr = setup.test_listener.map(|(addr, fd)| {
        // SAFETY: as above.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        tasks.push(glommio::spawn_local(accept_loop(
            Rc::clone(&shard),
            listener,
        )));
        addr
    });
    let _ = ready.send((id, test_addr));
    drop(ready);
    let panic_at = (config.test_inject_panic == Some(id))
        .then(|| std::time::Instant::now() + Duration::from_secs(1));
    while !global.shutdown.load(Ordering::Relaxed) {
        Timer::new(TICK).await;
        shard.borrow_mut().tick();
        if panic_at.is_some_and(|at| std::time::Instant::now() >= at) {
            panic!("shard {id}: panic injected by --test-inject-panic");
        }
    }
    tracing::debug!(shard = id, "shutting down");
    // Wills first, on every shard, while every shard still delivers; then the connections.
    shard.borrow_mut().publish_wills_for_shutdown();
    Timer::new(SHUTDOWN_GRACE).await;
    shard.borrow_mut().shutdown_all();
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

async fn accept_loop(shard: Rc<RefCell<Shard>>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let Some(index) = shard.borrow_mut().register_conn() else {
                    tracing::debug!("too many connections over the limit waiting for a refusal; closing a new one");
                    continue;
                };
                glommio::spawn_local(run_connection(Rc::clone(&shard), stream, index)).detach();
            }
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                Timer::new(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn run_connection(shard: Rc<RefCell<Shard>>, mut stream: TcpStream, index: usize) {
    loop {
        let event = poll_fn(|cx| shard.borrow_mut().poll_conn(index, &mut stream, cx)).await;
        match event {
            ConnEvent::Data(data) => {
                let mut shard = shard.borrow_mut();
                shard.on_data(index, data);
                shard.drain_local_inbox();
            }
            ConnEvent::Closed => break,
        }
        glommio::yield_if_needed().await;
    }
    shard.borrow_mut().on_conn_closed(index);
}

#[cfg(test)]
mod footprint {
    use super::*;

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
                let shard = Rc::new(RefCell::new(Shard::new(
                    0,
                    1,
                    Rc::new(Config::default()),
                    Arc::new(Global::default()),
                )));
                let future = run_connection(shard, stream, 0);
                assert!(std::mem::size_of_val(&future) <= 384);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
