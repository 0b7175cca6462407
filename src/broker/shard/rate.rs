//! Token buckets: one per rate-limited client on its shard, and one lock-free gate per listener
//! shared by every shard. Both hold one second's worth of tokens and count in thousandths of a
//! token, so a rate of N per second refills N thousandths per millisecond with no rounding.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Thousandths of a token per token.
const MILLI: i64 = 1000;

/// A token bucket on one thread: the caller gives the rate and the time (milliseconds of the
/// shard clock) with every call, so a configuration reload applies at the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenBucket {
    /// Thousandths of a token; negative after a charge the bucket could not cover.
    tokens: i64,
    refilled_ms: u64,
}

impl TokenBucket {
    /// A bucket holding one second's worth at `rate` per second.
    pub(crate) fn full(rate: u64, now_ms: u64) -> TokenBucket {
        TokenBucket {
            tokens: capacity(rate),
            refilled_ms: now_ms,
        }
    }

    /// Refills for the time since the last call, then takes `amount` tokens (possibly into
    /// debt). Returns the balance in thousandths: negative means over the rate. Rate 0 means
    /// no limit (the balance stays 0).
    pub(crate) fn take(&mut self, amount: u64, rate: u64, now_ms: u64) -> i64 {
        if rate == 0 {
            self.tokens = 0;
            self.refilled_ms = now_ms;
            return 0;
        }
        let elapsed = now_ms.saturating_sub(self.refilled_ms);
        let refill = i64::try_from(elapsed.saturating_mul(rate)).unwrap_or(i64::MAX);
        self.tokens = self.tokens.saturating_add(refill).min(capacity(rate));
        self.refilled_ms = self.refilled_ms.max(now_ms);
        let cost = i64::try_from(amount)
            .unwrap_or(i64::MAX)
            .saturating_mul(MILLI);
        self.tokens = self.tokens.saturating_sub(cost);
        self.tokens
    }

    /// Milliseconds until the balance is back to zero at `rate` (0 when it is not in debt).
    pub(crate) fn wait_ms(&self, rate: u64) -> u64 {
        if rate == 0 || self.tokens >= 0 {
            return 0;
        }
        self.tokens.unsigned_abs().div_ceil(rate)
    }
}

fn capacity(rate: u64) -> i64 {
    i64::try_from(rate)
        .unwrap_or(i64::MAX)
        .saturating_mul(MILLI)
}

/// The highest rate a [`RateGate`] enforces (its bucket is 32 bits of thousandths).
const GATE_MAX_RATE: u32 = 4_000_000;
/// The gate's state before its first use: a full bucket.
const UNUSED: u64 = u64::MAX;

/// A token bucket shared by threads, in one atomic word: the high 32 bits are the millisecond
/// of the last refill (since `epoch`, wrapping after 49 days), the low 32 the thousandths of a
/// token. A shard whose clock reads slightly behind another's refills nothing rather than
/// going back in time.
#[derive(Debug)]
pub struct RateGate {
    epoch: Instant,
    state: AtomicU64,
}

impl Default for RateGate {
    fn default() -> Self {
        RateGate {
            epoch: Instant::now(),
            state: AtomicU64::new(UNUSED),
        }
    }
}

impl RateGate {
    /// Takes one token at `rate` per second (one second's burst): `false` when none is left.
    pub fn try_take(&self, rate: u32, now: Instant) -> bool {
        let rate = u64::from(rate.clamp(1, GATE_MAX_RATE));
        let cap = rate * MILLI as u64;
        // Truncation on purpose: the clock wraps, and differences are taken wrapping.
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u32;
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            let (last, tokens) = if current == UNUSED {
                (now_ms, cap)
            } else {
                ((current >> 32) as u32, current & 0xffff_ffff)
            };
            let elapsed = now_ms.wrapping_sub(last);
            // A difference over 2^31 ms is a clock behind `last`, not 24 days of idleness.
            let (last, refill) = if elapsed > 1 << 31 {
                (last, 0)
            } else {
                (now_ms, u64::from(elapsed) * rate)
            };
            let available = (tokens + refill).min(cap);
            if available < MILLI as u64 {
                return false;
            }
            let next = (u64::from(last) << 32) | (available - MILLI as u64);
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_a_second_of_burst_then_the_rate() {
        let mut bucket = TokenBucket::full(10, 0);
        for _ in 0..10 {
            assert!(bucket.take(1, 10, 0) >= 0);
        }
        assert!(bucket.take(1, 10, 0) < 0);
        assert_eq!(bucket.wait_ms(10), 100);
        // 100 ms later the debt is paid; 100 ms more buys one message.
        assert_eq!(bucket.take(0, 10, 100), 0);
        assert!(bucket.take(1, 10, 200) >= 0);
        assert!(bucket.take(1, 10, 200) < 0);
    }

    #[test]
    fn bucket_never_holds_more_than_a_second() {
        let mut bucket = TokenBucket::full(5, 0);
        assert_eq!(bucket.take(0, 5, 3_600_000), 5000);
        // Rate 0: no limit, whatever the amount.
        assert_eq!(bucket.take(u64::MAX, 0, 3_600_001), 0);
    }

    #[test]
    fn byte_bucket_counts_payload_and_saturates() {
        let mut bucket = TokenBucket::full(1000, 0);
        assert_eq!(bucket.take(600, 1000, 0), 400_000);
        assert!(bucket.take(600, 1000, 0) < 0);
        assert_eq!(bucket.wait_ms(1000), 200);
        // Huge values saturate instead of overflowing.
        let mut huge = TokenBucket::full(u64::MAX, 0);
        assert!(huge.take(1, u64::MAX, u64::MAX) > 0);
    }

    #[test]
    fn gate_allows_a_burst_then_refills_at_the_rate() {
        let gate = RateGate::default();
        let start = gate.epoch + Duration::from_secs(1);
        assert_eq!((0..5).filter(|_| gate.try_take(5, start)).count(), 5);
        assert!(!gate.try_take(5, start));
        // 400 ms at 5/s: two more.
        let later = start + Duration::from_millis(400);
        assert_eq!((0..5).filter(|_| gate.try_take(5, later)).count(), 2);
        // A caller whose clock is behind gets nothing new, and does not rewind the gate.
        assert!(!gate.try_take(5, start));
        let much_later = later + Duration::from_secs(10);
        assert_eq!((0..10).filter(|_| gate.try_take(5, much_later)).count(), 5);
    }

    #[test]
    fn gate_is_shared_between_threads() {
        let gate = std::sync::Arc::new(RateGate::default());
        let now = gate.epoch + Duration::from_secs(1);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let gate = std::sync::Arc::clone(&gate);
                std::thread::spawn(move || (0..100).filter(|_| gate.try_take(50, now)).count())
            })
            .collect();
        let taken: usize = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        assert_eq!(taken, 50);
    }
}
