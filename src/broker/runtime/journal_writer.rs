//! The journal writer: one glommio task per shard with a data directory. It takes the batches
//! the shard's [`crate::store::journal::StoreJournal`] encodes, writes them with glommio's file
//! API (io_uring writes and fdatasyncs; renames and removals on glommio's blocking pool, never
//! a blocking syscall on the shard thread), then reports them durable to the shard.
//!
//! Group commit: while a write is in flight the shard goes on appending; the next write takes
//! everything appended meanwhile. `sync = always`: fdatasync after the write, before the
//! shard is told. `sync = interval`: the shard is told once the write completed (page cache):
//! a new log is mapped (`log_map`) and a batch is copied into the mapping, which completes at
//! once (the io_uring write remains for what the mapping cannot take yet); fdatasync every
//! `sync_interval_ms` when something was written, and of a log when it is closed, both beside
//! the writer (no acknowledgement waits for them).
//!
//! A snapshot is written under a temporary name, fdatasynced, renamed and the directory
//! fsynced; then the shard's files it covers are removed. A write that fails (disk full, I/O
//! error) is logged once, kept and retried every [`RETRY`]; meanwhile the shard is told
//! (`Shard::set_storage_full`) and refuses new persistent work, and the tick does not compact.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use glommio::io::{BufferedFile, Directory, OpenOptions};
use glommio::timer::Timer;

use super::super::hooks::{BatchTarget, JournalBatch};
use super::super::store_start::StoreShared;
use super::log_map::LogMap;
use super::{Driver, JournalWait};
use crate::config::SyncMode;
use crate::store::segment::{SegmentKind, SegmentName};

/// How long a failed write waits before it is tried again.
const RETRY: Duration = Duration::from_millis(200);
/// Tries of the last batch at shutdown before it is given up.
const SHUTDOWN_TRIES: u32 = 10;
/// The most bytes one write copies out of a batch and hands to the ring: a start-up image is
/// hundreds of MB, and copying it whole (twice resident, the shard blocked meanwhile) delayed
/// the first clients; the shard runs its other tasks between chunks.
const WRITE_CHUNK: usize = 4 << 20;

/// Why a write did not complete.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A write took no bytes.
    #[error("writing {0}: no bytes written")]
    WriteZero(PathBuf),
}

fn io_error<'a, T>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(glommio::GlommioError<T>) -> WriteError + 'a {
    move |error| WriteError::Io {
        op,
        path: path.to_owned(),
        source: io::Error::from(error),
    }
}

/// The log segment being appended to.
struct OpenLog {
    sequence: u64,
    /// Shared with syncs running beside the writer.
    file: Rc<BufferedFile>,
    path: PathBuf,
    len: u64,
    /// With `sync = interval`: the file mapped, records copied into it (see `log_map`).
    map: Option<LogMap>,
}

/// A batch being written, and how far it got.
struct InProgress {
    batch: JournalBatch,
    /// The batch's bytes (shared with a snapshot written beside the writer; handed back to
    /// the journal when the batch is done, if no snapshot holds them any more).
    bytes: Rc<Vec<u8>>,
    /// The next part to write.
    part: usize,
    /// Where that part starts in the batch's bytes.
    start: usize,
    /// Bytes of that part already written.
    done: usize,
}

/// One shard's writer.
pub(in crate::broker) struct JournalWriter {
    shared: Arc<StoreShared>,
    shard: u16,
    /// This shard's files on disk, for removal once a snapshot covers them.
    files: BTreeSet<SegmentName>,
    log: Option<OpenLog>,
    /// The open log has writes not fdatasynced.
    unsynced: bool,
    /// Files were created or removed since the directory was last fsynced.
    dir_dirty: bool,
    failing: bool,
    first_image_done: bool,
    /// Said once that log mappings are not available.
    map_unsupported_logged: bool,
    /// The journal's segment size: a log's mapping covers it.
    segment_limit: u64,
    /// Syncs and closes running beside the writer (`sync = interval`).
    background: Rc<Background>,
    /// Set at shutdown: write what is left, sync, return.
    stop: Rc<Cell<bool>>,
    /// Writes fail (shared with the tick, which does not compact meanwhile).
    failing_flag: Rc<Cell<bool>>,
}

impl JournalWriter {
    /// A writer for `shard`, whose files from before this boot are `old_files`, of logs up to
    /// about `segment_limit` bytes.
    pub(in crate::broker) fn new(
        shared: Arc<StoreShared>,
        shard: u16,
        old_files: Vec<SegmentName>,
        segment_limit: u64,
        stop: Rc<Cell<bool>>,
        failing_flag: Rc<Cell<bool>>,
    ) -> JournalWriter {
        JournalWriter {
            shared,
            shard,
            files: old_files.into_iter().collect(),
            log: None,
            unsynced: false,
            dir_dirty: false,
            failing: false,
            first_image_done: false,
            map_unsupported_logged: false,
            segment_limit,
            background: Rc::default(),
            stop,
            failing_flag,
        }
    }

    fn name(&self, sequence: u64, kind: SegmentKind) -> SegmentName {
        SegmentName {
            shard: self.shard,
            sequence,
            kind,
        }
    }

    /// Writes what is left of `progress` (and, with `sync = always`, syncs it).
    async fn write(&mut self, progress: &mut InProgress) -> Result<(), WriteError> {
        while let Some(part) = progress.batch.parts.get(progress.part).copied() {
            let end = progress.start + part.len;
            let Some(bytes) = progress.bytes.get(progress.start..end) else {
                // A journal bug: parts beyond the bytes. Drop the rest rather than loop.
                tracing::error!(
                    shard = self.shard,
                    "journal batch parts do not match its bytes"
                );
                break;
            };
            match part.target {
                BatchTarget::Log { sequence, create } => {
                    self.open_log(sequence, create).await?;
                    while progress.done < bytes.len() {
                        progress.done += self.append(&bytes[progress.done..]).await?;
                    }
                }
                BatchTarget::Snapshot { sequence } if self.first_image_done => {
                    let range = progress.start..end;
                    self.snapshot_in_background(sequence, Rc::clone(&progress.bytes), range)
                        .await;
                }
                BatchTarget::Snapshot { sequence } => {
                    self.write_snapshot(sequence, bytes).await?;
                }
            }
            progress.part += 1;
            progress.start = end;
            progress.done = 0;
        }
        if self.shared.sync == SyncMode::Always {
            self.sync().await?;
        }
        Ok(())
    }

    /// Makes log `sequence` the open log (syncing and closing the one before).
    async fn open_log(&mut self, sequence: u64, create: bool) -> Result<(), WriteError> {
        if self
            .log
            .as_ref()
            .is_some_and(|log| log.sequence == sequence)
        {
            return Ok(());
        }
        self.close_log().await?;
        let name = self.name(sequence, SegmentKind::Log);
        let path = self.shared.path(&name);
        let mut options = OpenOptions::new();
        // Readable too: a shared writable mapping needs it.
        options.read(true).write(true);
        if create {
            options.create(true).truncate(true);
        }
        let file = options
            .buffered_open(&path)
            .await
            .map_err(io_error("creating", &path))?;
        let len = if create {
            self.dir_dirty = true;
            0
        } else {
            file.file_size().await.map_err(io_error("sizing", &path))?
        };
        self.files.insert(name);
        let map = if create && self.shared.sync == SyncMode::Interval {
            self.map_log(&file, &path).await
        } else {
            None
        };
        self.log = Some(OpenLog {
            sequence,
            file: Rc::new(file),
            path,
            len,
            map,
        });
        Ok(())
    }

    /// A new log's mapping; `None` (written as usual) where the kernel cannot populate
    /// mappings or mapping failed (logged).
    async fn map_log(&mut self, file: &BufferedFile, path: &Path) -> Option<LogMap> {
        let size = usize::try_from(self.segment_limit).unwrap_or(usize::MAX);
        match LogMap::create(file.as_raw_fd(), size).await {
            Ok(Some(map)) => Some(map),
            Ok(None) => {
                if !self.map_unsupported_logged {
                    self.map_unsupported_logged = true;
                    tracing::info!(
                        shard = self.shard,
                        "this kernel cannot populate file mappings (MADV_POPULATE_WRITE, Linux \
                         5.14): the journal writes with io_uring instead"
                    );
                }
                None
            }
            Err(error) => {
                tracing::warn!(shard = self.shard, file = %path.display(), %error, "cannot map a log segment: it is written with io_uring instead");
                None
            }
        }
    }

    /// Syncs and closes the open log: with `sync = interval` (not at shutdown) beside the
    /// writer, which goes on with the next log meanwhile (that sync is there to bound what a
    /// power loss takes, like the periodic one: acknowledgements never waited for it, and a
    /// log's worth of it held every client for a disk write of up to a segment).
    async fn close_log(&mut self) -> Result<(), WriteError> {
        if self.log.is_none() {
            return Ok(());
        }
        if self.shared.sync == SyncMode::Interval && !self.stop.get() {
            if let Some(log) = self.log.take() {
                let unsynced = std::mem::take(&mut self.unsynced);
                let dir = self.dir_dirty.then(|| self.shared.dir.clone());
                self.dir_dirty = false;
                let shard = self.shard;
                let background = Rc::clone(&self.background);
                background.closing.borrow_mut().insert(log.path.clone());
                self.background.spawn(async move {
                    let synced = async {
                        if unsynced {
                            log.file
                                .fdatasync()
                                .await
                                .map_err(io_error("syncing", &log.path))?;
                        }
                        if let Some(dir) = dir {
                            sync_dir(&dir).await?;
                        }
                        Ok(())
                    }
                    .await;
                    // Closed (and removed if covered) even if the sync failed: the failure is
                    // reported, and the records are in the page cache.
                    let path = log.path.clone();
                    finish_log(shard, log).await;
                    background.closed(shard, &path);
                    synced
                });
            }
            return Ok(());
        }
        self.sync().await?;
        if let Some(log) = self.log.take() {
            let path = log.path.clone();
            finish_log(self.shard, log).await;
            self.background.closed(self.shard, &path);
        }
        Ok(())
    }

    /// The periodic sync (`sync = interval`): beside the writer, which goes on writing (a
    /// second of records can take a while to reach the disk, and no acknowledgement waits
    /// for it). Covers what was written before it started.
    fn sync_in_background(&mut self) {
        if self.background.syncing.get() {
            // The last one is still at it: the next tick tries again.
            return;
        }
        let file = self
            .log
            .as_ref()
            .filter(|_| self.unsynced)
            .map(|log| (Rc::clone(&log.file), log.path.clone()));
        let dir = self.dir_dirty.then(|| self.shared.dir.clone());
        if file.is_none() && dir.is_none() {
            return;
        }
        self.unsynced = false;
        self.dir_dirty = false;
        let syncing = Rc::clone(&self.background.syncing);
        syncing.set(true);
        self.background.spawn(async move {
            let result = async {
                if let Some((file, path)) = file {
                    file.fdatasync().await.map_err(io_error("syncing", &path))?;
                }
                if let Some(dir) = dir {
                    sync_dir(&dir).await?;
                }
                Ok(())
            }
            .await;
            syncing.set(false);
            result
        });
    }

    /// Appends `bytes` (or a prefix) to the open log; how many went.
    async fn append(&mut self, bytes: &[u8]) -> Result<usize, WriteError> {
        let Some(log) = self.log.as_mut() else {
            return Ok(bytes.len());
        };
        if let Some(map) = log.map.as_mut() {
            let chunk = &bytes[..bytes.len().min(WRITE_CHUNK)];
            match map.copy(log.len, chunk).await {
                Ok(true) => {
                    log.len += chunk.len() as u64;
                    self.unsynced = true;
                    return Ok(chunk.len());
                }
                Ok(false) => {}
                Err(error) => {
                    // Populating failed (disk full, typically): the io_uring write below
                    // reports what is wrong, or works.
                    tracing::debug!(shard = self.shard, %error, "populating a log mapping failed");
                }
            }
        }
        let written = log
            .file
            .write_at(bytes[..bytes.len().min(WRITE_CHUNK)].to_vec(), log.len)
            .await
            .map_err(io_error("writing", &log.path))?;
        if written == 0 {
            return Err(WriteError::WriteZero(log.path.clone()));
        }
        log.len += written as u64;
        self.unsynced = true;
        Ok(written)
    }

    /// fdatasyncs the open log and, if files came or went, the directory.
    async fn sync(&mut self) -> Result<(), WriteError> {
        if self.unsynced {
            if let Some(log) = &self.log {
                log.file
                    .fdatasync()
                    .await
                    .map_err(io_error("syncing", &log.path))?;
            }
            self.unsynced = false;
        }
        if self.dir_dirty {
            sync_dir(&self.shared.dir).await?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Writes a whole snapshot: temporary file, fdatasync, rename, directory fsync; then
    /// removes the files it covers. The first image at start-up (clients wait for it anyway).
    async fn write_snapshot(&mut self, sequence: u64, bytes: &[u8]) -> Result<(), WriteError> {
        let path = self
            .shared
            .path(&self.name(sequence, SegmentKind::Snapshot));
        write_snapshot_file(self.shard, &self.shared.dir, &path, bytes).await?;
        self.after_snapshot(sequence, true).await;
        Ok(())
    }

    /// A later snapshot (a log reached its size) is written beside the writer: until it is
    /// durable the files it covers stay, and recovery replays them and the next log instead,
    /// so no acknowledgement needs to wait for it (it held every client for a file write, an
    /// fdatasync, a rename and a directory fsync at each rotation). One at a time.
    async fn snapshot_in_background(
        &mut self,
        sequence: u64,
        bytes: Rc<Vec<u8>>,
        range: std::ops::Range<usize>,
    ) {
        self.background.snapshot_written().await;
        let path = self
            .shared
            .path(&self.name(sequence, SegmentKind::Snapshot));
        let dir = self.shared.dir.clone();
        let shard = self.shard;
        let background = Rc::clone(&self.background);
        background.snapshot_running.set(true);
        self.background.spawn(async move {
            let result = match bytes.get(range) {
                Some(bytes) => write_snapshot_file(shard, &dir, &path, bytes).await,
                None => Ok(()),
            };
            drop(bytes);
            background.snapshot_running.set(false);
            if result.is_ok() {
                background.snapshots_done.borrow_mut().push(sequence);
            }
            result
        });
    }

    /// Snapshot `sequence` is durable: the files it covers go (older logs and snapshots of
    /// this shard; after the first image, the files of shards beyond the shard count).
    /// `sync_removals`: fsync the directory after the removals too.
    async fn after_snapshot(&mut self, sequence: u64, sync_removals: bool) {
        self.files
            .insert(self.name(sequence, SegmentKind::Snapshot));
        let covered: Vec<SegmentName> = self
            .files
            .iter()
            .filter(|file| match file.kind {
                SegmentKind::Log => file.sequence <= sequence,
                SegmentKind::Snapshot => file.sequence < sequence,
            })
            .copied()
            .collect();
        let mut removed = self.remove(&covered).await;
        if !self.first_image_done {
            self.first_image_done = true;
            let orphans = self.shared.first_image_durable();
            removed |= self.remove(&orphans).await;
        }
        if removed && sync_removals {
            if let Err(error) = sync_dir(&self.shared.dir).await {
                tracing::warn!(shard = self.shard, %error, "syncing the data directory failed");
            }
        }
    }

    /// Removes `names` (failures are logged: a covered file left behind is harmless).
    async fn remove(&mut self, names: &[SegmentName]) -> bool {
        let mut now = Vec::new();
        for name in names {
            self.files.remove(name);
            let path = self.shared.path(name);
            let open = self.log.as_ref().is_some_and(|log| log.path == path);
            if open || self.background.closing.borrow().contains(&path) {
                // Removed once closed (a snapshot covers the log it rotates away from): the
                // last close of an unlinked file frees its blocks (with the `discard` mount
                // option, a synchronous discard of the device: milliseconds), and an io_uring
                // close runs that on the shard thread. The blocking pool's unlink takes it.
                self.background.remove_after_close.borrow_mut().insert(path);
                continue;
            }
            now.push(path);
        }
        remove_files(self.shard, now);
        !names.is_empty()
    }

    fn failed(&mut self, driver: &RefCell<Driver>, error: &WriteError) {
        if !self.failing {
            self.failing = true;
            self.failing_flag.set(true);
            tracing::error!(
                shard = self.shard,
                %error,
                "journal write failed: records are kept in memory and the write is retried; \
                 nothing new becomes durable until it succeeds"
            );
            driver.borrow_mut().shard.set_storage_full(true);
        }
    }

    fn recovered(&mut self, driver: &RefCell<Driver>) {
        if self.failing {
            self.failing = false;
            self.failing_flag.set(false);
            tracing::info!(shard = self.shard, "journal writes work again");
            driver.borrow_mut().shard.set_storage_full(false);
        }
    }
}

/// Writes a snapshot file: under a temporary name, fdatasynced, renamed, the directory
/// fsynced.
async fn write_snapshot_file(
    shard: u16,
    dir: &Path,
    path: &Path,
    bytes: &[u8],
) -> Result<(), WriteError> {
    let tmp = path.with_extension("snap.tmp");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .buffered_open(&tmp)
        .await
        .map_err(io_error("creating", &tmp))?;
    let mut done = 0;
    while done < bytes.len() {
        let written = file
            .write_at(
                bytes[done..bytes.len().min(done + WRITE_CHUNK)].to_vec(),
                done as u64,
            )
            .await
            .map_err(io_error("writing", &tmp))?;
        if written == 0 {
            return Err(WriteError::WriteZero(tmp));
        }
        done += written;
    }
    file.fdatasync().await.map_err(io_error("syncing", &tmp))?;
    if let Err(error) = file.close().await {
        tracing::warn!(shard, file = %tmp.display(), %error, "closing a snapshot failed");
    }
    glommio::io::rename(&tmp, path)
        .await
        .map_err(io_error("renaming", &tmp))?;
    sync_dir(dir).await
}

/// Removes files a snapshot covers, on a thread of their own, not awaited (a failure is
/// logged: a covered file left behind is harmless). Removing a closed file frees its blocks
/// (with the `discard` mount option, a synchronous discard of the device: milliseconds per
/// segment): on glommio's blocking pool that held up the populates of the next log behind it.
fn remove_files(shard: u16, paths: Vec<PathBuf>) {
    if paths.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name(format!("shard-{shard}-remove"))
        .spawn(move || {
            super::log_map::below_the_shard();
            for path in paths {
                if let Err(error) = std::fs::remove_file(&path) {
                    if error.kind() != io::ErrorKind::NotFound {
                        tracing::warn!(shard, file = %path.display(), %error, "cannot remove a file the snapshot covers");
                    }
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(shard, %error, "cannot start a thread to remove covered files: they stay");
    }
}

/// Unmaps (cutting the file to its records) and closes a log no longer written.
async fn finish_log(shard: u16, mut log: OpenLog) {
    // Dropped after the close below: the retiring thread then cuts and unmaps the file.
    let mut retired = None;
    if let Some(map) = log.map.take() {
        match map.retire(log.file.as_raw_fd(), log.len).await {
            Ok(guard) => retired = Some(guard),
            // The file keeps zeros after its records: recovery reads them as such.
            Err(error) => {
                tracing::warn!(shard, file = %log.path.display(), %error, "cutting a mapped log segment to its records failed")
            }
        }
    }
    // A periodic sync may still hold the file: the close waits for it, so that the file is
    // closed before a snapshot's removal unlinks it (see `JournalWriter::remove`).
    let mut file = log.file;
    let file = loop {
        match Rc::try_unwrap(file) {
            Ok(file) => break file,
            Err(shared) => {
                file = shared;
                Timer::new(Duration::from_millis(5)).await;
            }
        }
    };
    if let Err(error) = file.close().await {
        tracing::warn!(shard, file = %log.path.display(), %error, "closing a log segment failed");
    }
    drop(retired);
}

/// Syncs and closes running beside the writer (`sync = interval`), and the first error one
/// of them met (the writer then reports the storage failing and syncs again).
#[derive(Default)]
struct Background {
    running: Cell<usize>,
    syncing: Rc<Cell<bool>>,
    error: RefCell<Option<WriteError>>,
    /// The writer, waiting for an error or for the last task to end.
    waker: RefCell<Option<std::task::Waker>>,
    /// Logs being closed.
    closing: RefCell<BTreeSet<PathBuf>>,
    /// Of those, the ones a snapshot covered meanwhile: removed once closed.
    remove_after_close: RefCell<BTreeSet<PathBuf>>,
    /// A snapshot is being written beside the writer.
    snapshot_running: Cell<bool>,
    /// Snapshots written beside the writer, durable now: the writer removes what they cover.
    snapshots_done: RefCell<Vec<u64>>,
}

impl Background {
    /// A log's close is done: removed now if a snapshot covered it meanwhile.
    fn closed(&self, shard: u16, path: &Path) {
        self.closing.borrow_mut().remove(path);
        let covered = self.remove_after_close.borrow_mut().remove(path);
        if covered {
            remove_files(shard, vec![path.to_owned()]);
        }
    }

    fn spawn(self: &Rc<Self>, work: impl Future<Output = Result<(), WriteError>> + 'static) {
        self.running.set(self.running.get() + 1);
        let this = Rc::clone(self);
        glommio::spawn_local(async move {
            let result = work.await;
            this.running.set(this.running.get().saturating_sub(1));
            if let Err(error) = result {
                this.error.borrow_mut().get_or_insert(error);
            }
            if let Some(waker) = this.waker.borrow_mut().take() {
                waker.wake();
            }
        })
        .detach();
    }

    /// Until no snapshot is being written.
    async fn snapshot_written(&self) {
        poll_fn(|cx| {
            if !self.snapshot_running.get() {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
    }

    /// Until none runs (shutdown).
    async fn idle(&self) {
        poll_fn(|cx| {
            if self.running.get() == 0 {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
    }
}

async fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    let handle = Directory::open(dir)
        .await
        .map_err(io_error("opening", dir))?;
    let synced = handle.sync().await.map_err(io_error("syncing", dir));
    let _ = handle.close().await;
    synced
}

/// What woke the writer.
enum Event {
    Batch(JournalBatch),
    Sync,
    /// A sync beside the writer failed.
    SyncFailed(WriteError),
    /// A snapshot written beside the writer is durable.
    SnapshotDone(u64),
    Stop,
}

/// Tells the shard everything up to `sequence` is durable; `batch`, written, goes back to the
/// journal for its buffers.
fn durable(driver: &RefCell<Driver>, sequence: u64, batch: JournalBatch) {
    let mut driver = driver.borrow_mut();
    let journal = driver.shard.journal_mut();
    journal.recycle(batch);
    journal.mark_durable(sequence);
    driver.shard.on_durable(sequence, Instant::now());
    driver.dispatch();
}

/// A sync timer and when it fires (at or after the timer's own deadline).
fn sync_after(delay: Duration) -> (Option<Pin<Box<Timer>>>, Option<Instant>) {
    let timer = Box::pin(Timer::new(delay));
    (Some(timer), Some(Instant::now() + delay))
}

/// The writer task: until `writer.stop` is set, then the last records, synced.
pub(in crate::broker) async fn run(driver: Rc<RefCell<Driver>>, mut writer: JournalWriter) {
    let mut pending: Option<InProgress> = None;
    let mut sync_timer: Option<Pin<Box<Timer>>> = None;
    // When `sync_timer` fires (the engine's sleeps in its ring end by then).
    let mut sync_due: Option<Instant> = None;
    let mut stopping = false;
    let mut tries = 0u32;
    loop {
        if pending.is_none() {
            let event = poll_fn(|cx| {
                let mut driver = driver.borrow_mut();
                if let Some(batch) = driver.shard.journal_mut().take_batch() {
                    return Poll::Ready(Event::Batch(batch));
                }
                if writer.stop.get() {
                    return Poll::Ready(Event::Stop);
                }
                if let Some(error) = writer.background.error.borrow_mut().take() {
                    return Poll::Ready(Event::SyncFailed(error));
                }
                if let Some(sequence) = writer.background.snapshots_done.borrow_mut().pop() {
                    return Poll::Ready(Event::SnapshotDone(sequence));
                }
                *writer.background.waker.borrow_mut() = Some(cx.waker().clone());
                if let Some(timer) = sync_timer.as_mut() {
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Event::Sync);
                    }
                }
                driver.journal_waker = Some(cx.waker().clone());
                driver.journal = if writer.background.running.get() > 0 {
                    JournalWait::Busy
                } else {
                    match (sync_timer.is_some(), sync_due) {
                        (true, Some(due)) => JournalWait::RecordsOrTimer(due),
                        (true, None) => JournalWait::Busy,
                        (false, _) => JournalWait::Records,
                    }
                };
                Poll::Pending
            })
            .await;
            {
                let mut driver = driver.borrow_mut();
                driver.journal_waker = None;
                driver.journal = JournalWait::Busy;
            }
            match event {
                Event::Batch(mut batch) => {
                    let bytes = Rc::new(std::mem::take(&mut batch.bytes));
                    pending = Some(InProgress {
                        batch,
                        bytes,
                        part: 0,
                        start: 0,
                        done: 0,
                    });
                    tries = 0;
                }
                Event::Sync if writer.shared.sync == SyncMode::Interval => {
                    (sync_timer, sync_due) = (None, None);
                    writer.sync_in_background();
                    continue;
                }
                Event::SnapshotDone(sequence) => {
                    writer.after_snapshot(sequence, false).await;
                    continue;
                }
                Event::SyncFailed(error) => {
                    // Tried again after RETRY (everything written since the last sync).
                    writer.unsynced = true;
                    writer.failed(&driver, &error);
                    (sync_timer, sync_due) = sync_after(RETRY);
                    continue;
                }
                Event::Sync => {
                    (sync_timer, sync_due) = (None, None);
                    match writer.sync().await {
                        Ok(()) => writer.recovered(&driver),
                        Err(error) => {
                            writer.failed(&driver, &error);
                            (sync_timer, sync_due) = sync_after(RETRY);
                        }
                    }
                    continue;
                }
                Event::Stop => {
                    writer.background.idle().await;
                    let done = std::mem::take(&mut *writer.background.snapshots_done.borrow_mut());
                    for sequence in done {
                        writer.after_snapshot(sequence, true).await;
                    }
                    if let Some(error) = writer.background.error.borrow_mut().take() {
                        tracing::error!(shard = writer.shard, %error, "a journal sync failed");
                        writer.unsynced = true;
                    }
                    if let Err(error) = writer.close_log().await {
                        tracing::error!(shard = writer.shard, %error, "the journal's last sync failed");
                    }
                    return;
                }
            }
        }
        let Some(progress) = pending.as_mut() else {
            continue;
        };
        match writer.write(progress).await {
            Ok(()) => {
                let sequence = progress.batch.last_sequence;
                let mut batch = std::mem::take(&mut progress.batch);
                // Back to the journal for the next batch, unless a snapshot still holds it.
                batch.bytes =
                    Rc::try_unwrap(std::mem::take(&mut progress.bytes)).unwrap_or_default();
                pending = None;
                writer.recovered(&driver);
                durable(&driver, sequence, batch);
                if writer.unsynced && sync_timer.is_none() {
                    (sync_timer, sync_due) = sync_after(writer.shared.sync_interval);
                }
            }
            Err(error) => {
                writer.failed(&driver, &error);
                stopping |= writer.stop.get();
                tries += 1;
                if stopping && tries >= SHUTDOWN_TRIES {
                    tracing::error!(
                        shard = writer.shard,
                        %error,
                        "giving up on the journal's last records at shutdown: they are lost"
                    );
                    return;
                }
                Timer::new(RETRY).await;
            }
        }
    }
}
