//! The shard runtime: one glommio executor per shard, pinned to a CPU, each accepting on every
//! listen address (SO_REUSEPORT) and owning the connections it accepts.

pub mod admin;
pub mod handles;
pub mod hooks;
mod listener;
mod mesh;
mod runtime;
mod shard;
mod store_start;
pub mod sys;

pub use listener::{allowed_cpus, check_io_uring};
pub use shard::{
    ConnackRefusal, DisconnectCause, DropReason, Global, LatencyHistogram, ReadState, Shard,
    ShardStats, LATENCY_BOUNDS_NANOS, LATENCY_BUCKETS, QOS_LABELS, QOS_LEVELS,
};

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use crate::config::{parse_cpu_list, Config};
use mesh::Batch;
use runtime::{run_shard, ShardLinks, ShardSetup};

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
    /// The configuration is invalid (e.g. its password or ACL file).
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// The data directory cannot be used (locked by another broker, newer format, unreadable).
    #[error("{0}")]
    Store(#[from] store_start::StoreStartError),
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
    /// Each shard's counters as of its last tick.
    stats: Vec<Arc<Mutex<ShardStats>>>,
    /// The configuration in force, and one channel per shard to hand it a new one.
    config: Mutex<Config>,
    reloads: Vec<crossbeam_channel::Sender<Arc<Config>>>,
    /// The administrative interface (its token follows reloads).
    admin: admin::Admin,
}

/// Read access to the broker's counters from any thread. Each shard publishes a snapshot of
/// its [`ShardStats`] once per tick; reading takes a short lock on that snapshot only, never
/// anything on a shard's hot path.
#[derive(Debug, Clone)]
pub struct StatsSource {
    shards: Vec<Arc<Mutex<ShardStats>>>,
    global: Arc<Global>,
}

impl StatsSource {
    /// Each shard's counters, by shard index.
    pub fn shard_stats(&self) -> Vec<ShardStats> {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| *s).unwrap_or_default())
            .collect()
    }

    /// Open client connections, all shards.
    pub fn connections(&self) -> usize {
        self.global.connections.load(Ordering::Relaxed)
    }

    /// Whether every shard is running (none failed, the broker is not stopping).
    pub fn healthy(&self) -> bool {
        !self.global.failed.load(Ordering::SeqCst) && !self.global.shutdown.load(Ordering::SeqCst)
    }
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Changed keys that every shard now applies to new work.
    pub applied: Vec<String>,
    /// Changed keys that take effect only after a restart (listeners, shard count, ...).
    pub restart_needed: Vec<String>,
}

/// Why a reload was not applied (the running configuration stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration is invalid.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] crate::config::ConfigError),
    /// A shard no longer takes configurations (the broker is stopping or failed).
    #[error("shard {0} is not running")]
    ShardGone(usize),
}

impl BrokerHandle {
    /// Asks every shard to stop: clients are disconnected (wills fire), then the shards exit.
    pub fn shutdown(&self) {
        self.global.shutdown.store(true, Ordering::SeqCst);
    }

    /// Hands a new configuration to every shard (the one reload path: SIGHUP and, later, other
    /// sources use it). Settings for new work (limits, timeouts, queue bounds) apply at each
    /// shard's next tick; keys that need a restart are reported, not applied.
    pub fn reload(&self, mut config: Config) -> Result<ReloadReport, ReloadError> {
        config.validate()?;
        config.ensure_auth_files()?;
        config.ensure_tls()?;
        let mut current = self
            .config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let token = config.admin_token_value()?;
        let (mut applied, restart_needed) = crate::config::reload_diff(&current, &config);
        let shared = Arc::new(config.clone());
        for (shard, channel) in self.reloads.iter().enumerate() {
            channel
                .send(Arc::clone(&shared))
                .map_err(|_| ReloadError::ShardGone(shard))?;
        }
        *current = config;
        // The token file is read anew: new contents under the same path count as a change.
        let token_changed = self.admin.replace_token(token.as_deref());
        if token_changed && !applied.iter().any(|key| key.starts_with("admin_token")) {
            applied.push("admin_token_file".to_string());
        }
        Ok(ReloadReport {
            applied,
            restart_needed,
        })
    }

    /// The administrative interface (the `/admin` endpoints), for any thread.
    pub fn admin(&self) -> admin::Admin {
        self.admin.clone()
    }

    /// Each shard's counters, as of its last tick (a few times a second).
    pub fn stats(&self) -> Vec<ShardStats> {
        self.stats_source().shard_stats()
    }

    /// A cheap, cloneable view of the broker's counters for other threads (metrics, `$SYS`).
    pub fn stats_source(&self) -> StatsSource {
        StatsSource {
            shards: self.stats.clone(),
            global: Arc::clone(&self.global),
        }
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

/// Starts the broker: binds, spawns one executor per shard, returns once every shard accepts.
pub fn start(mut config: Config) -> Result<BrokerHandle, StartError> {
    config.ensure_auth_files()?;
    config.ensure_tls()?;
    let admin_token = config.admin_token_value()?;
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
            store: None,
        })
        .collect();
    let mut listen_addrs = Vec::new();
    let listeners = config.listeners();
    for (index, listener) in listeners.iter().enumerate() {
        let addr = listener.address;
        let (bound, fds) = match listener::reuseport_group(addr, shards, config.backlog) {
            Ok(group) => group,
            // The default [::1]:1883 is best effort (a host without IPv6 loopback).
            Err(source) if addr.is_ipv6() && config.listen == crate::config::DEFAULT_LISTEN => {
                tracing::info!(%addr, %source, "not listening on the default IPv6 loopback address");
                continue;
            }
            Err(source) => return Err(StartError::Listen { addr, source }),
        };
        tracing::info!(listener = listener.name.as_deref().unwrap_or(""), %bound, scheme = listener.scheme(), "listening");
        listen_addrs.push(bound);
        for (setup, fd) in setups.iter_mut().zip(fds) {
            setup.listeners.push((index, fd));
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
    let global = Arc::new(Global {
        listener_connections: listeners.iter().map(|_| AtomicUsize::new(0)).collect(),
        listener_rates: listeners
            .iter()
            .map(|_| shard::RateGate::default())
            .collect(),
        ..Global::default()
    });
    // The data directory: locked, loaded, and split between the shards (sets the epoch).
    if let Some(stores) = store_start::open(&config, shards, &global)? {
        for (setup, store) in setups.iter_mut().zip(stores) {
            setup.store = Some(store);
        }
    }
    let mesh: MeshBuilder<Batch, _> = MeshBuilder::full(shards, config.mesh_capacity);
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, Option<SocketAddr>)>();
    let (exits_tx, exits) = crossbeam_channel::unbounded();
    let stats: Vec<Arc<Mutex<ShardStats>>> = (0..shards)
        .map(|_| Arc::new(Mutex::new(ShardStats::default())))
        .collect();
    let doorbells: Arc<[crate::net::Doorbell]> = (0..shards)
        .map(|_| crate::net::Doorbell::new())
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| StartError::Executor(format!("cannot create a shard's doorbell: {e}")))?
        .into();
    let mut reloads = Vec::with_capacity(shards);
    let (admin_senders, admin_requests) = admin::channels(shards);
    for ((index, setup), admin_requests) in setups.into_iter().enumerate().zip(admin_requests) {
        let placement = match setup.cpu {
            Some(cpu) => Placement::Fixed(cpu),
            None => Placement::Unbound,
        };
        let config = config.clone();
        let (reload_tx, reload_rx) = crossbeam_channel::unbounded();
        reloads.push(reload_tx);
        let links = ShardLinks {
            global: Arc::clone(&global),
            stats: Arc::clone(&stats[index]),
            reloads: reload_rx,
            // Shard 0 publishes `$SYS` from every shard's snapshot.
            all_stats: if index == 0 {
                stats.clone()
            } else {
                Vec::new()
            },
            admin: admin_requests,
            doorbells: Arc::clone(&doorbells),
        };
        let mesh = mesh.clone();
        let ready = ready_tx.clone();
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{index}"))
            // The journal writes through buffered files (no registered buffers): the smallest
            // registered-buffer area glommio accepts.
            .io_memory(64 << 10)
            .spawn(move || async move { run_shard(config, links, mesh, setup, ready).await })
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
    let admin_handle =
        admin::Admin::new(admin_senders, admin_token.as_deref(), Arc::clone(&global));
    Ok(BrokerHandle {
        listen_addrs,
        shard_addrs,
        global,
        exits,
        running: shards,
        stats,
        config: Mutex::new(config),
        reloads,
        admin: admin_handle,
    })
}
