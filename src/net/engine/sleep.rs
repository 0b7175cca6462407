//! Sleeping in the engine's own ring: the shard thread blocks in one `io_uring_enter` until a
//! completion arrives (a socket's input, a send's end, the doorbell) or the caller's timeout
//! passes, instead of parking in the executor (which re-arms its own timers on every loop and
//! links its rings before each sleep). The doorbell is how other shards wake it.

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{opcode, types};

use super::Engine;
use crate::net::ring::Completion;
use crate::net::token::{Op, Token};

/// The ring's read of the doorbell eventfd: re-armed after every completion.
#[derive(Debug)]
pub(super) struct DoorbellRead {
    fd: RawFd,
    /// Where the kernel writes the eventfd's counter. Never freed: a read still in the kernel
    /// when the ring closes may complete after the engine is gone (8 bytes per shard).
    value: ManuallyDrop<Box<u64>>,
}

impl Engine {
    /// Keeps a read of `doorbell` (an eventfd another thread writes to wake this shard) in the
    /// ring, so that a write ends [`Engine::sleep`]. The descriptor must outlive the engine.
    pub fn watch_doorbell(&mut self, doorbell: RawFd) -> io::Result<()> {
        self.doorbell = Some(DoorbellRead {
            fd: doorbell,
            value: ManuallyDrop::new(Box::new(0)),
        });
        self.arm_doorbell()
    }

    fn arm_doorbell(&mut self) -> io::Result<()> {
        let Some(read) = self.doorbell.as_mut() else {
            return Ok(());
        };
        let value: *mut u64 = &mut **read.value;
        let entry = opcode::Read::new(types::Fd(read.fd), value.cast(), 8)
            .build()
            .user_data(Token::new(Op::Doorbell, 0, 0).encode());
        // SAFETY: the 8-byte target is never freed (see `DoorbellRead::value`); the caller of
        // `watch_doorbell` keeps the descriptor open.
        unsafe { self.ring.push(&entry) }
    }

    pub(super) fn on_doorbell(&mut self, completion: Completion) -> io::Result<()> {
        if completion.result < 0 && !matches!(-completion.result, libc::EINTR | libc::EAGAIN) {
            // The eventfd is gone or unreadable: the shard no longer sleeps in its ring
            // (`sleep` refuses), it parks in the executor instead.
            tracing::warn!(
                error = %io::Error::from_raw_os_error(-completion.result),
                "the doorbell's read failed: sleeping in the executor from now on"
            );
            self.doorbell = None;
            return Ok(());
        }
        self.arm_doorbell()
    }

    /// Whether [`Engine::sleep`] can be woken by other threads (a doorbell is watched).
    pub fn can_sleep(&self) -> bool {
        self.doorbell.is_some()
    }

    /// Blocks the thread in the ring until a completion arrives or `timeout` passes; returns
    /// whether the next pass has something to do. Returns at once if it has already. The
    /// caller made sure nothing else needs the thread meanwhile (other tasks, timers, the
    /// mesh: see the shard runtime's `drive`).
    pub fn sleep(&mut self, timeout: Duration) -> io::Result<bool> {
        if self.doorbell.is_none() {
            return Ok(false);
        }
        if self.ring.has_work() || !self.dirty.is_empty() || !self.deferred.is_empty() {
            return Ok(true);
        }
        self.stats.sleeps += 1;
        self.ring.wait(timeout)?;
        Ok(self.ring.has_work())
    }
}
