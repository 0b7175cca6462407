//! A log segment appended through a shared memory mapping (`sync = interval` only).
//!
//! Why: `interval` promises that an acknowledged record survives a killed process, which
//! holds once it is in the page cache. A buffered `write` through io_uring gets there the long
//! way on ext4 (no non-blocking buffered writes: each one is handed to an io-wq worker on the
//! shard's CPU, a wake-up and two context switches per write, while the clients wait for their
//! acknowledgements). A store into a `MAP_SHARED` mapping of the file *is* the page cache:
//! the record is as safe from a process crash as after the write completed, with no syscall.
//!
//! No blocking on the shard thread: the file is extended (sparse) and its pages are faulted in
//! ahead of the write position by glommio's blocking pool (`MADV_POPULATE_WRITE`, Linux 5.14),
//! and records are copied only into populated pages; past them (the pool not done yet) the
//! writer uses its ordinary io_uring write, into the same page cache. Page faults the shard
//! can still take: the one page being filled when a periodic fdatasync wrote it back (a minor
//! fault), and populated pages the kernel reclaimed under memory pressure. A disk that fills
//! makes the populating fail (reported as an error, never a SIGBUS on the shard, which copies
//! only into populated pages); the writes past them then fail as before (storage full).
//!
//! At close the file is cut to its records; after a crash the rest of the extended file reads
//! as zeros, which recovery takes as preallocated space, not damage.

use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Bytes populated ahead of the write position (a new populate starts when less than half
/// of it is left).
const POPULATE_AHEAD: usize = 4 << 20;
/// Bytes populated before a new log takes records (the rest follows on the pool while the
/// first ones are written; the writer waits for this part, so it is small).
const FIRST_POPULATE: usize = 256 << 10;

type Populating = Pin<Box<dyn Future<Output = io::Result<usize>>>>;

/// The mapping of one log segment.
pub(super) struct LogMap {
    /// The mapping's address (an integer: the blocking pool gets a copy).
    addr: usize,
    /// Bytes mapped (the file's extended size).
    size: usize,
    /// Bytes from the start that are populated (writable without a first-touch fault).
    populated: usize,
    /// A populate on the blocking pool, resolving to the new `populated`.
    populating: Option<Populating>,
    /// A populate failed (disk full, typically): no more are tried; what does not fit is
    /// written with io_uring.
    failed: bool,
}

impl LogMap {
    /// Extends the (new, empty) file `fd` to `size` bytes, maps it and populates its start.
    /// `Ok(None)`: the kernel cannot populate mappings (before 5.14): the caller writes as
    /// usual.
    pub(super) async fn create(fd: RawFd, size: usize) -> io::Result<Option<LogMap>> {
        let first = size.min(FIRST_POPULATE);
        let mapped = glommio::executor()
            .spawn_blocking(move || map_and_populate(fd, size, first))
            .await?;
        Ok(mapped.map(|addr| LogMap {
            addr,
            size,
            populated: first,
            populating: None,
            failed: false,
        }))
    }

    /// Copies `bytes` to offset `at` if that part of the mapping is populated; `false` if not
    /// (nothing was copied; a populate is started if none runs).
    pub(super) async fn copy(&mut self, at: u64, bytes: &[u8]) -> io::Result<bool> {
        if let Some(populating) = self.populating.as_mut() {
            if let Some(done) = futures_lite::future::poll_once(populating.as_mut()).await {
                self.populating = None;
                match done {
                    Ok(populated) => self.populated = populated,
                    Err(error) => {
                        self.failed = true;
                        return Err(error);
                    }
                }
            }
        }
        let Ok(at) = usize::try_from(at) else {
            return Ok(false);
        };
        let end = at.saturating_add(bytes.len());
        let fits = end <= self.populated;
        if fits {
            // SAFETY: `[at, end)` lies inside the mapping (`populated <= size`), which lives as
            // long as `self`; only this thread writes it (the pool only faults pages in).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    (self.addr + at) as *mut u8,
                    bytes.len(),
                );
            }
        }
        if self.populating.is_none()
            && !self.failed
            && self.populated < self.size
            && self.populated.saturating_sub(end) < POPULATE_AHEAD / 2
        {
            let (addr, from) = (self.addr, self.populated);
            let to = self.size.min(end.max(from) + POPULATE_AHEAD);
            self.populating =
                Some(Box::pin(glommio::executor().spawn_blocking(move || {
                    populate(addr + from, to - from).map(|()| to)
                })));
        }
        Ok(fits)
    }

    /// Hands the mapping to a thread of its own that cuts the file to `len` bytes (its
    /// records) and unmaps it once the returned guard is dropped: the caller closes its
    /// descriptor in between. The thread holds the last references to the file (the mapping
    /// and a duplicate descriptor), so that if the file was removed meanwhile, freeing its
    /// blocks (with the `discard` mount option, a synchronous discard of the device:
    /// milliseconds) happens there, never on the shard thread (an io_uring close runs the last
    /// `fput` on the submitting thread) nor on glommio's blocking pool (populates wait there).
    pub(super) async fn retire(mut self, fd: RawFd, len: u64) -> io::Result<Retired> {
        if let Some(populating) = self.populating.take() {
            let _ = populating.await;
        }
        // SAFETY: `fd` is open (the caller's); the duplicate is the retiring thread's.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(last_error());
        }
        let (addr, size) = (self.addr, self.size);
        self.size = 0;
        let released = Arc::new(AtomicBool::new(false));
        let caller_done = Arc::clone(&released);
        let spawned = std::thread::Builder::new()
            .name("shardmq-log-retire".into())
            .spawn(move || {
                below_the_shard();
                let waited = std::time::Instant::now();
                while !caller_done.load(Ordering::Acquire) && waited.elapsed() < RETIRE_WAIT {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                if let Err(error) = cut_and_unmap(addr, size, dup, len) {
                    tracing::warn!(%error, "cutting a mapped log segment to its records failed");
                }
            });
        if let Err(error) = spawned {
            // No thread: done here (the rare case; the last `fput` may then be the caller's).
            let _ = cut_and_unmap(addr, size, dup, len);
            return Err(error);
        }
        Ok(Retired(released))
    }
}

/// How long a retiring thread waits for its caller to close its descriptor.
const RETIRE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Dropped once the caller closed its descriptor: the retiring thread goes on.
pub(super) struct Retired(Arc<AtomicBool>);

impl Drop for Retired {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Drop for LogMap {
    fn drop(&mut self) {
        if self.size > 0 {
            // Not closed (the writer gave up): unmap at least (a populate still running only
            // faults pages of a mapping that is gone, which it reports as an error).
            // SAFETY: the mapping is ours and nothing refers to it any more.
            unsafe { libc::munmap(self.addr as *mut libc::c_void, self.size) };
        }
    }
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// On the retiring thread: started by a real-time shard thread, it inherits its policy, and
/// would then run ahead of the shard on its CPU (a woken real-time thread does not preempt
/// one of the same priority). Its work is never urgent: back to the normal policy.
pub(super) fn below_the_shard() {
    // SAFETY: plain syscalls about the calling thread.
    unsafe {
        let policy = libc::sched_getscheduler(0);
        if policy == libc::SCHED_FIFO || policy == libc::SCHED_RR {
            let normal = libc::sched_param { sched_priority: 0 };
            libc::sched_setscheduler(0, libc::SCHED_OTHER, &normal);
        }
    }
}

/// On the blocking pool: extends `fd` to `size`, maps it shared and populates `first` bytes.
fn map_and_populate(fd: RawFd, size: usize, first: usize) -> io::Result<Option<usize>> {
    let len = libc::off_t::try_from(size).map_err(|_| io::Error::other("mapping too large"))?;
    // SAFETY: plain syscalls on a descriptor the caller keeps open until this returns.
    unsafe {
        if libc::ftruncate(fd, len) != 0 {
            return Err(last_error());
        }
        let addr = libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        if addr == libc::MAP_FAILED {
            let error = last_error();
            libc::ftruncate(fd, 0);
            return Err(error);
        }
        let addr = addr as usize;
        if let Err(error) = populate(addr, first) {
            libc::munmap(addr as *mut libc::c_void, size);
            libc::ftruncate(fd, 0);
            if error.raw_os_error() == Some(libc::EINVAL) {
                return Ok(None);
            }
            return Err(error);
        }
        Ok(Some(addr))
    }
}

/// On the blocking pool: faults in `len` bytes of a shared mapping from `addr` for writing.
fn populate(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: the range is inside a mapping that outlives this call (`LogMap::close` and the
    // writer wait for it; `Drop` only runs after the writer is gone).
    let result =
        unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE) };
    if result == 0 {
        Ok(())
    } else {
        Err(last_error())
    }
}

/// On the retiring thread: cuts the file to `len`, closes the duplicate descriptor and
/// unmaps (the last references: see [`LogMap::retire`]).
fn cut_and_unmap(addr: usize, size: usize, dup: RawFd, len: u64) -> io::Result<()> {
    let cut = match libc::off_t::try_from(len) {
        // SAFETY: `dup` is this thread's descriptor.
        Ok(len) if unsafe { libc::ftruncate(dup, len) } == 0 => Ok(()),
        Ok(_) => Err(last_error()),
        Err(_) => Err(io::Error::other("log too large")),
    };
    // SAFETY: the descriptor and the mapping are this thread's, unused by anyone else now.
    unsafe {
        libc::close(dup);
        libc::munmap(addr as *mut libc::c_void, size);
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::{LocalExecutorBuilder, Placement};
    use std::os::fd::AsRawFd;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("shardmq-logmap-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    /// A new empty file, readable and writable (as the writer opens a log).
    fn new_file(path: &std::path::Path) -> std::fs::File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .expect("open")
    }

    fn on_executor(test: impl FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send + 'static) {
        LocalExecutorBuilder::new(Placement::Unbound)
            .spawn(test)
            .expect("executor")
            .join()
            .expect("test task");
    }

    /// Records copied into the mapping (past the first populate, so through later ones) are
    /// in the file, which is cut to them when retired; what did not fit yet is refused.
    #[test]
    fn copies_reach_the_file_and_close_cuts_it() {
        let dir = scratch("copy");
        let path = dir.join("log");
        on_executor(move || {
            Box::pin(async move {
                let file = new_file(&path);
                let size = 8 << 20;
                let mut map = LogMap::create(file.as_raw_fd(), size)
                    .await
                    .expect("map")
                    .expect("MADV_POPULATE_WRITE (Linux 5.14; the engine needs 6.0)");
                let mut expected = Vec::new();
                let mut at = 0u64;
                let mut round = 0u32;
                // 6 MB in 4 KiB records: beyond the first populate, so the populate ahead has
                // to keep up (the copy is retried after yielding when it has not yet).
                while at < 6 << 20 {
                    let record: Vec<u8> = (0..4096u32).map(|i| (i ^ round) as u8).collect();
                    if map.copy(at, &record).await.expect("populate") {
                        expected.extend_from_slice(&record);
                        at += record.len() as u64;
                        round += 1;
                    } else {
                        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                    }
                }
                // A copy beyond the mapping is refused.
                assert!(!map.copy(size as u64, b"x").await.expect("beyond"));
                assert!(!map
                    .copy(size as u64 - 1, b"xy")
                    .await
                    .expect("across the end"));
                let retired = map.retire(file.as_raw_fd(), at).await.expect("retire");
                drop(file);
                drop(retired);
                // The retiring thread cuts the file: wait for it (bounded).
                let waited = std::time::Instant::now();
                while std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) != at
                    && waited.elapsed() < std::time::Duration::from_secs(10)
                {
                    glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                }
                let written = std::fs::read(&path).expect("read back");
                assert_eq!(written.len(), expected.len(), "cut to the records");
                assert!(
                    written == expected,
                    "the file holds exactly what was copied"
                );
            })
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A mapping dropped without `close` (the writer gave up) leaves the file extended with
    /// zeros after the records: what recovery reads as preallocated space.
    #[test]
    fn an_unclosed_mapping_leaves_zeros_after_the_records() {
        let dir = scratch("drop");
        let path = dir.join("log");
        let read_path = path.clone();
        on_executor(move || {
            Box::pin(async move {
                let file = new_file(&path);
                let mut map = LogMap::create(file.as_raw_fd(), 1 << 20)
                    .await
                    .expect("map")
                    .expect("MADV_POPULATE_WRITE (Linux 5.14; the engine needs 6.0)");
                assert!(map.copy(0, b"records").await.expect("copy"));
                drop(map);
            })
        });
        let written = std::fs::read(&read_path).expect("read back");
        assert_eq!(written.len(), 1 << 20);
        assert_eq!(&written[..7], b"records");
        assert!(written[7..].iter().all(|&b| b == 0));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
