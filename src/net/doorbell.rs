//! How another thread wakes a shard that sleeps in its own ring ([`super::Engine::sleep`]).
//!
//! The shard's engine keeps a read of the doorbell's eventfd in its ring; a thread that hands
//! the shard work (a cross-shard batch) counts it with [`Doorbell::ring`], which writes the
//! eventfd only while the shard sleeps there. The shard compares the count with the work it
//! has taken before it sleeps ([`Doorbell::prepare_sleep`]), so that work handed over just
//! before is never slept through (the same handshake as a futex: both sides use sequentially
//! consistent operations on the flag and the count).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// One shard's doorbell, shared with the threads that hand it work.
#[derive(Debug)]
pub struct Doorbell {
    /// Blocking on purpose: the ring's read of it then waits instead of failing with EAGAIN.
    eventfd: OwnedFd,
    /// Work handed over so far.
    handed: AtomicU64,
    /// The shard sleeps in its ring (or is about to).
    sleeping: AtomicBool,
}

impl Doorbell {
    /// A doorbell with a fresh eventfd.
    pub fn new() -> io::Result<Doorbell> {
        // SAFETY: eventfd has no memory preconditions.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Doorbell {
            // SAFETY: `fd` is a fresh descriptor owned by nobody else.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
            handed: AtomicU64::new(0),
            sleeping: AtomicBool::new(false),
        })
    }

    /// The eventfd the shard's engine reads ([`super::Engine::watch_doorbell`]).
    pub fn eventfd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Another thread handed the shard one piece of work: counted, and the shard woken if it
    /// sleeps in its ring (one write, by whichever thread saw it asleep first).
    pub fn ring(&self) {
        self.handed.fetch_add(1, Ordering::SeqCst);
        if self.sleeping.swap(false, Ordering::SeqCst) {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer.
            let written = unsafe { libc::write(self.eventfd.as_raw_fd(), one.as_ptr().cast(), 8) };
            if written != 8 {
                // The counter cannot overflow from single increments; nothing else can fail
                // on an open eventfd. The shard still wakes at its next tick.
                tracing::warn!(error = %io::Error::last_os_error(), "ringing a shard's doorbell failed");
            }
        }
    }

    /// The shard is about to sleep in its ring, having taken `taken` pieces of work. `false`
    /// (and no sleep) if more were handed over: the shard must take them first.
    pub fn prepare_sleep(&self, taken: u64) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        if self.handed.load(Ordering::SeqCst) != taken {
            self.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// The shard woke up (or did not sleep after all): no more writes needed.
    pub fn woke(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(doorbell: &Doorbell) -> u64 {
        let mut poll = libc::pollfd {
            fd: doorbell.eventfd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one live descriptor, no wait.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        if ready != 1 {
            return 0;
        }
        let mut value = [0u8; 8];
        // SAFETY: reads 8 bytes into a live buffer; the eventfd is readable.
        assert_eq!(
            unsafe { libc::read(doorbell.eventfd(), value.as_mut_ptr().cast(), 8) },
            8
        );
        u64::from_ne_bytes(value)
    }

    #[test]
    fn writes_only_while_the_shard_sleeps_and_once_per_sleep() {
        let doorbell = Doorbell::new().expect("eventfd");
        doorbell.ring();
        assert_eq!(pending(&doorbell), 0, "awake: counted, not written");
        assert!(!doorbell.prepare_sleep(0), "work handed over: no sleep");
        assert!(doorbell.prepare_sleep(1));
        doorbell.ring();
        doorbell.ring();
        assert_eq!(pending(&doorbell), 1, "one write wakes the sleeper");
        doorbell.woke();
        assert!(!doorbell.prepare_sleep(1), "two more were handed over");
        assert!(doorbell.prepare_sleep(3));
        doorbell.woke();
        doorbell.ring();
        assert_eq!(pending(&doorbell), 0);
    }

    #[test]
    fn no_hand_over_is_slept_through_under_a_race() {
        // A sender thread hands work over while this thread sleeps on the eventfd whenever
        // prepare_sleep allows: every piece is seen, and no sleep lasts for ever.
        let doorbell = std::sync::Arc::new(Doorbell::new().expect("eventfd"));
        let sender = {
            let doorbell = std::sync::Arc::clone(&doorbell);
            std::thread::spawn(move || {
                for i in 0..20_000u32 {
                    doorbell.ring();
                    if i % 64 == 0 {
                        std::thread::yield_now();
                    }
                }
            })
        };
        let mut taken = 0u64;
        while taken < 20_000 {
            if doorbell.prepare_sleep(taken) {
                let mut poll = libc::pollfd {
                    fd: doorbell.eventfd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: polls one live descriptor. 10 s: far beyond any wake-up.
                let ready = unsafe { libc::poll(&mut poll, 1, 10_000) };
                assert_eq!(ready, 1, "slept through work handed over (taken {taken})");
                pending(&doorbell);
                doorbell.woke();
            }
            taken = doorbell.handed.load(Ordering::SeqCst);
        }
        sender.join().expect("sender");
    }
}
