//! Start-up with a data directory (on the main thread, before any shard runs: blocking file
//! I/O is fine here): lock the directory, load every shard's files (one thread per shard's
//! files), drop what expired, set the boot's epoch, and split what was recovered between the
//! shards that install it (sessions by home shard, retained messages by topic owner).
//!
//! Each shard then writes its whole state as a snapshot (its first image), which hides its
//! older files from recovery. So that nothing is lost if the broker stops before every shard's
//! image is durable, a shard's first image also carries, under their old generations, the
//! sessions and retained messages its old files held that now belong to other shards
//! ([`Carry`]); files of shards beyond the new shard count are removed once every shard's
//! first image is durable, and no shard compacts again before that.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Config, SyncMode};
use crate::store::dir::{self, DirLock};
use crate::store::journal::Carry;
use crate::store::load::{load_into, FileReport, FileUse, LoadError};
use crate::store::recover::{RecoveredRetained, RecoveredSession, Replayer};
use crate::store::segment::SegmentName;

use super::shard::Global;

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreStartError {
    /// Locking, the FORMAT file, listing.
    #[error("{0}")]
    Dir(#[from] dir::DirError),
    /// A file cannot be read or is of a newer format.
    #[error("data directory {dir}: {source}")]
    Load {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: LoadError,
    },
    /// A loading thread could not be started or died.
    #[error("data directory {0}: recovery failed (a loading thread died)")]
    Thread(PathBuf),
}

/// What every shard's writer shares: the directory (and its lock, held while any shard runs),
/// the sync mode, and the start-up bookkeeping.
#[derive(Debug)]
pub(super) struct StoreShared {
    pub(super) dir: PathBuf,
    pub(super) sync: SyncMode,
    pub(super) sync_interval: Duration,
    _lock: DirLock,
    /// Shards whose first image is not durable yet.
    first_images_pending: AtomicUsize,
    /// Files of shards beyond the shard count, removed once every first image is durable.
    orphans: Mutex<Vec<SegmentName>>,
}

impl StoreShared {
    /// Whether every shard's first image is durable (compaction may drop carried records).
    pub(super) fn first_images_done(&self) -> bool {
        self.first_images_pending.load(Ordering::Acquire) == 0
    }

    /// A shard's first image is durable: the files of shards beyond the shard count, once it
    /// was the last one (to be removed by that shard's writer).
    pub(super) fn first_image_durable(&self) -> Vec<SegmentName> {
        if self.first_images_pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            return std::mem::take(&mut *self.orphans.lock().unwrap_or_else(|e| e.into_inner()));
        }
        Vec::new()
    }

    /// The path of `name`.
    pub(super) fn path(&self, name: &SegmentName) -> PathBuf {
        self.dir.join(name.file_name())
    }
}

/// What one shard starts with.
#[derive(Debug)]
pub(super) struct ShardStore {
    pub(super) shared: Arc<StoreShared>,
    /// The first log segment it writes (after every existing file).
    pub(super) first_segment: u64,
    /// Sessions to install (their home is this shard).
    pub(super) sessions: Vec<RecoveredSession>,
    /// Retained messages of the topics it owns.
    pub(super) retained: Vec<(String, RecoveredRetained)>,
    /// For its first image (see the module docs).
    pub(super) carry: Carry,
    /// Origin entries of its sessions (QoS 2 resends to recognise).
    pub(super) origins: Vec<crate::store::recover::RecoveredOrigin>,
    /// Its files from before this boot, removed once its first image is durable.
    pub(super) old_files: Vec<SegmentName>,
    /// About how large its first image is (bytes).
    pub(super) image_bytes: usize,
}

/// Opens and loads `config.data_dir` for `shards` shards; `None` without one. Sets
/// `global.epoch`.
pub(super) fn open(
    config: &Config,
    shards: usize,
    global: &Global,
) -> Result<Option<Vec<ShardStore>>, StoreStartError> {
    let Some(path) = config.data_dir.clone() else {
        tracing::info!("no data directory: sessions and retained messages live in memory only");
        return Ok(None);
    };
    let started = Instant::now();
    let cpu = thread_cpu();
    let lock = dir::open(&path)?;
    remove_temporaries(&path);
    let names = dir::list_segments(&path)?;
    let (mut state, files) = load_parallel(&path, &names)?;
    let loaded_ms = started.elapsed().as_millis() as u64;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64);
    state.drop_expired(now_ms);
    global.epoch.store(state.next_epoch(), Ordering::Relaxed);
    let shards = shards.max(1);
    let first_segment = names.iter().map(|name| name.sequence).max().unwrap_or(0) + 1;

    let mut stores: Vec<ShardStore> = Vec::with_capacity(shards);
    let mut orphans = Vec::new();
    let mut old_files: Vec<Vec<SegmentName>> = vec![Vec::new(); shards];
    for name in &names {
        match old_files.get_mut(usize::from(name.shard)) {
            Some(files) => files.push(*name),
            None => orphans.push(*name),
        }
    }
    let shared = Arc::new(StoreShared {
        dir: path.clone(),
        sync: config.sync,
        sync_interval: Duration::from_millis(config.sync_interval_ms),
        _lock: lock,
        first_images_pending: AtomicUsize::new(shards),
        orphans: Mutex::new(orphans),
    });
    let sessions_count = state.sessions.len();
    let pending = state.pending_messages();
    let retained_count = state.retained.len();
    let stats = state.stats;
    let split_started = Instant::now();
    let parts = crate::store::split::split(state, shards);
    let split_ms = split_started.elapsed().as_millis() as u64;
    let replayed_bytes: u64 = files
        .iter()
        .filter(|file| file.used == FileUse::Replayed)
        .filter_map(|file| file.bytes)
        .sum();
    // Half again as much: an image that outgrows its buffer copies it whole (and touches
    // twice the memory); room reserved but not written costs no memory.
    let image_bytes = (replayed_bytes.saturating_mul(3) / 2 / shards as u64) as usize;
    for (part, old_files) in parts.into_iter().zip(old_files) {
        stores.push(ShardStore {
            shared: Arc::clone(&shared),
            first_segment,
            sessions: part.sessions,
            retained: part.retained,
            carry: part.carry,
            origins: part.origins,
            old_files,
            image_bytes,
        });
    }
    let corrupt = files.iter().map(|f| f.scan.corrupt.len()).sum::<usize>();
    let torn = files
        .iter()
        .filter(|f| f.scan.torn_tail.is_some_and(|tail| !tail.zeros))
        .count();
    tracing::info!(
        data_dir = %path.display(),
        sync = config.sync.as_str(),
        sync_interval_ms = config.sync_interval_ms,
        files = files.len(),
        sessions = sessions_count,
        queued_messages = pending,
        retained = retained_count,
        corrupt_regions = corrupt,
        torn_tails = torn,
        missing_messages = stats.missing_messages,
        cut_images = stats.cut_images,
        epoch = global.epoch.load(Ordering::Relaxed),
        load_ms = loaded_ms,
        split_ms,
        ms = started.elapsed().as_millis() as u64,
        main_cpu_ms = (thread_cpu() - cpu).as_millis() as u64,
        "data directory loaded: {sessions_count} sessions, {pending} queued messages, \
         {retained_count} retained messages recovered"
    );
    if corrupt > 0 || torn > 0 {
        tracing::warn!(
            data_dir = %path.display(),
            corrupt_regions = corrupt,
            torn_tails = torn,
            "data directory damaged: {corrupt} corrupt regions skipped, {torn} torn tails cut; \
             everything intact was recovered"
        );
    }
    Ok(Some(stores))
}

/// A segment file's bytes: mapped (read-only, private) rather than copied into a buffer of
/// the file's size (a large directory's logs are hundreds of MB: reading them into the heap
/// cost fresh pages and a copy); read into a buffer when it cannot be mapped (an empty
/// file). The directory is locked, so nothing else writes the file while it is mapped.
enum FileBytes {
    Mapped {
        address: *mut libc::c_void,
        len: usize,
    },
    Read(Vec<u8>),
}

// SAFETY: the mapping is private to the value and read-only; it is unmapped on drop.
unsafe impl Send for FileBytes {}

impl FileBytes {
    fn read(path: &Path) -> std::io::Result<FileBytes> {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len() as usize;
        if len == 0 {
            return Ok(FileBytes::Read(Vec::new()));
        }
        // SAFETY: a fresh read-only private mapping of an open file; no memory is aliased.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return std::fs::read(path).map(FileBytes::Read);
        }
        Ok(FileBytes::Mapped { address, len })
    }
}

impl AsRef<[u8]> for FileBytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            // SAFETY: the mapping is `len` readable bytes, alive as long as `self`.
            FileBytes::Mapped { address, len } => unsafe {
                std::slice::from_raw_parts(address.cast::<u8>(), *len)
            },
            FileBytes::Read(bytes) => bytes,
        }
    }
}

impl Drop for FileBytes {
    fn drop(&mut self) {
        if let FileBytes::Mapped { address, len } = *self {
            // SAFETY: a mapping this value made and nothing borrows any more.
            unsafe { libc::munmap(address, len) };
        }
    }
}

/// CPU time of the calling thread (for the start-up timings, which wall time alone does not
/// tell apart from a busy machine).
pub(super) fn thread_cpu() -> Duration {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid timespec to write.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

/// Removes snapshots left half-written by a crash (never read back).
fn remove_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_tmp = name
            .to_str()
            .is_some_and(|name| name.starts_with("shard-") && name.ends_with(".snap.tmp"));
        if is_tmp {
            if let Err(error) = std::fs::remove_file(entry.path()) {
                tracing::warn!(file = %entry.path().display(), %error, "cannot remove a leftover temporary snapshot");
            }
        }
    }
}

/// Loads `names` with one thread per shard's files, the replays merged.
fn load_parallel(
    dir: &Path,
    names: &[SegmentName],
) -> Result<(crate::store::RecoveredState, Vec<FileReport>), StoreStartError> {
    let mut by_shard: BTreeMap<u16, Vec<SegmentName>> = BTreeMap::new();
    for name in names {
        by_shard.entry(name.shard).or_default().push(*name);
    }
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = by_shard
            .into_values()
            .map(|names| {
                std::thread::Builder::new()
                    .name("store-load".into())
                    .spawn_scoped(scope, move || {
                        let started = Instant::now();
                        let cpu = thread_cpu();
                        let mut read_time = Duration::ZERO;
                        let mut replayer = Replayer::new();
                        let files = load_into(&mut replayer, names, |name| {
                            let reading = Instant::now();
                            let bytes = FileBytes::read(&dir.join(name.file_name()));
                            read_time += reading.elapsed();
                            bytes
                        })?;
                        // Complete: no record will look a body up by id any more. Dropped
                        // here, on the shard's loading thread, not in the merge.
                        replayer.forget_message_ids();
                        tracing::info!(
                            files = files.len(),
                            read_ms = read_time.as_millis() as u64,
                            ms = started.elapsed().as_millis() as u64,
                            cpu_ms = (thread_cpu() - cpu).as_millis() as u64,
                            "a shard's files read and replayed"
                        );
                        Ok::<_, LoadError>((replayer, files))
                    })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| match handle {
                Ok(handle) => handle.join().ok(),
                Err(_) => None,
            })
            .collect::<Vec<_>>()
    });
    let merging = Instant::now();
    let mut replayer = Replayer::new();
    let mut files = Vec::new();
    for result in results {
        let Some(result) = result else {
            return Err(StoreStartError::Thread(dir.to_owned()));
        };
        let (shard_replayer, shard_files) = result.map_err(|source| StoreStartError::Load {
            dir: dir.to_owned(),
            source,
        })?;
        replayer.merge(shard_replayer);
        files.extend(shard_files);
    }
    let merge_ms = merging.elapsed().as_millis() as u64;
    let state = replayer.finish();
    tracing::info!(
        merge_ms,
        finish_ms = (merging.elapsed().as_millis() as u64).saturating_sub(merge_ms),
        "replays merged"
    );
    Ok((state, files))
}
