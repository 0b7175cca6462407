//! One io_uring, owned by one shard thread: set-up with the best completion mode the kernel
//! offers, submission that never fails for a full queue, reaping into a reusable vector, and
//! the eventfd through which the ring wakes the shard's executor when it has completions.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use io_uring::{cqueue, squeue, IoUring};

/// How completions reach the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletionMode {
    /// SINGLE_ISSUER + DEFER_TASKRUN (Linux 6.1): completion work runs only inside the shard's
    /// own `io_uring_enter`, in batches, never on interrupt exits.
    Deferred,
    /// SINGLE_ISSUER + COOP_TASKRUN (Linux 6.0): completion work runs at the shard thread's
    /// next transition to the kernel; completions are reaped from shared memory.
    Cooperative,
    /// No task-run flags (older kernels): completion work may interrupt the shard.
    Interrupt,
}

impl CompletionMode {
    fn name(self) -> &'static str {
        match self {
            CompletionMode::Deferred => "defer-taskrun",
            CompletionMode::Cooperative => "coop-taskrun",
            CompletionMode::Interrupt => "interrupt",
        }
    }
}

impl std::fmt::Display for CompletionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A completion, copied out of the completion queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Completion {
    pub(crate) user_data: u64,
    pub(crate) result: i32,
    pub(crate) flags: u32,
}

/// Counters of the ring's work (monotonic).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RingCounters {
    /// `io_uring_enter` calls.
    pub enters: u64,
    /// Requests submitted.
    pub submitted: u64,
    /// Completions reaped.
    pub completions: u64,
}

/// The shard's ring and its wake-up eventfd.
pub(crate) struct Ring {
    uring: IoUring,
    mode: CompletionMode,
    eventfd: OwnedFd,
    pub(crate) counters: RingCounters,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("mode", &self.mode)
            .field("counters", &self.counters)
            .finish()
    }
}

impl Ring {
    /// A ring with `entries` submission slots (and four times as many completion slots:
    /// multishot requests post many completions per submission). `mode` forces a completion
    /// mode; `None` takes the best one the kernel accepts.
    pub(crate) fn new(entries: u32, mode: Option<CompletionMode>) -> io::Result<Ring> {
        let candidates: &[CompletionMode] = match mode {
            Some(CompletionMode::Deferred) => &[CompletionMode::Deferred],
            Some(CompletionMode::Cooperative) => &[CompletionMode::Cooperative],
            Some(CompletionMode::Interrupt) => &[CompletionMode::Interrupt],
            // Cooperative first: on quiet connections it cost 3-4% less broker CPU per message
            // than Deferred (which signals the wake-up eventfd twice per completion batch: when
            // the task work is queued and when our enter posts the completion); saturated, the
            // two are within 2% (bench-harness/results/2026-12-02-vm-engine.md).
            None => &[
                CompletionMode::Cooperative,
                CompletionMode::Deferred,
                CompletionMode::Interrupt,
            ],
        };
        let mut last_error = None;
        for &mode in candidates {
            let mut builder = IoUring::<squeue::Entry, cqueue::Entry>::builder();
            builder.setup_cqsize(entries.saturating_mul(4));
            match mode {
                CompletionMode::Deferred => {
                    builder
                        .setup_single_issuer()
                        .setup_defer_taskrun()
                        .setup_taskrun_flag();
                }
                CompletionMode::Cooperative => {
                    builder
                        .setup_single_issuer()
                        .setup_coop_taskrun()
                        .setup_taskrun_flag();
                }
                CompletionMode::Interrupt => {}
            }
            match builder.build(entries) {
                Ok(uring) => {
                    // Blocking on purpose: glommio reads it through its own ring, which waits
                    // for it with an internal poll instead of failing with EAGAIN.
                    // SAFETY: eventfd has no memory preconditions.
                    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
                    let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
                    uring.submitter().register_eventfd(eventfd.as_raw_fd())?;
                    let mut ring = Ring {
                        uring,
                        mode,
                        eventfd,
                        counters: RingCounters::default(),
                    };
                    ring.set_wakeups(false);
                    return Ok(ring);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no io_uring completion mode")))
    }

    pub(crate) fn mode(&self) -> CompletionMode {
        self.mode
    }

    /// The eventfd the ring signals on completions while wake-ups are on.
    pub(crate) fn eventfd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    pub(crate) fn submitter(&self) -> io_uring::Submitter<'_> {
        self.uring.submitter()
    }

    /// Queues a request; submits what is queued first if the queue is full.
    ///
    /// # Safety
    /// Every buffer, descriptor and pointer the entry refers to must stay valid until its
    /// (last) completion has been reaped.
    pub(crate) unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: forwarded to the caller.
            if unsafe { self.uring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.enter()?;
        }
    }

    /// Requests queued and not submitted yet.
    pub(crate) fn queued(&mut self) -> usize {
        self.uring.submission().len()
    }

    /// Whether the kernel holds completion work that only an enter runs (deferred task work,
    /// or completions that overflowed the queue).
    fn kernel_has_work(&mut self) -> bool {
        let sq = self.uring.submission();
        sq.taskrun() || sq.cq_overflow()
    }

    /// Whether an enter is needed: requests to submit, or completion work to run.
    pub(crate) fn needs_enter(&mut self) -> bool {
        self.queued() > 0 || self.kernel_has_work()
    }

    /// Whether anything is ready to be reaped or run: the shard must not sleep.
    pub(crate) fn has_work(&mut self) -> bool {
        self.needs_enter() || !self.uring.completion().is_empty()
    }

    /// Submits everything queued and runs pending completion work, in one `io_uring_enter`.
    pub(crate) fn enter(&mut self) -> io::Result<()> {
        let queued = self.queued();
        let result = self.uring.submit();
        if let Some(error) = self.count_enter(result)? {
            tracing::debug!(%error, queued, "io_uring_enter deferred");
        }
        Ok(())
    }

    /// Blocks in `io_uring_enter` until at least one completion is posted or `timeout`
    /// passes (submitting whatever is queued on the way).
    pub(crate) fn wait(&mut self, timeout: std::time::Duration) -> io::Result<()> {
        let timespec = io_uring::types::Timespec::from(timeout);
        let args = io_uring::types::SubmitArgs::new().timespec(&timespec);
        let result = self.uring.submitter().submit_with_args(1, &args);
        // Timing out is how a sleep with nothing to do ends: the caller looks again.
        self.count_enter(result).map(|_| ())
    }

    /// Counts one enter and what it submitted. A transient failure (timed out, interrupted,
    /// out of kernel memory for requests, completions to reap first) comes back as
    /// `Ok(Some(error))`: the queued requests stay queued for the next enter.
    fn count_enter(&mut self, result: io::Result<usize>) -> io::Result<Option<io::Error>> {
        self.counters.enters += 1;
        match result {
            Ok(submitted) => {
                self.counters.submitted += submitted as u64;
                Ok(None)
            }
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) =>
            {
                Ok(Some(error))
            }
            Err(error) => Err(error),
        }
    }

    /// Moves every available completion into `into` (cleared first).
    pub(crate) fn reap(&mut self, into: &mut Vec<Completion>) {
        into.clear();
        into.extend(self.uring.completion().map(|cqe| Completion {
            user_data: cqe.user_data(),
            result: cqe.result(),
            flags: cqe.flags(),
        }));
        self.counters.completions += into.len() as u64;
    }

    /// Turns eventfd notifications on (before the shard sleeps) or off (while it is awake and
    /// reaps anyway).
    pub(crate) fn set_wakeups(&mut self, on: bool) {
        let cq = self.uring.completion();
        if on {
            cq.enable_eventfd();
        } else {
            cq.disable_eventfd();
        }
    }
}
