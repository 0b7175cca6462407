//! Rate pacing: when the k-th message of a paced sender (publisher or connector) is due.
//!
//! A sender with rate `r` per second started at `start` with phase `phase` (to spread many
//! senders over one interval instead of firing them together) has message `k` (from 0) due at
//! `start + phase + k / r`. Being late does not lower the rate: whatever is due is sent as soon
//! as it can be, so the achieved rate is the target unless the sender is blocked.

/// Nanoseconds per second.
pub const NS: u64 = 1_000_000_000;

/// A constant-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pacer {
    start_ns: u64,
    /// Nanoseconds between two messages.
    interval_ns: f64,
}

impl Pacer {
    /// A schedule of `rate` per second (must be > 0) whose first message is due at
    /// `start_ns + phase * interval`, `phase` in `[0, 1)`.
    pub fn new(rate: f64, start_ns: u64, phase: f64) -> Self {
        assert!(rate > 0.0 && rate.is_finite(), "rate must be positive");
        let interval_ns = NS as f64 / rate;
        Pacer {
            start_ns: start_ns + (phase.clamp(0.0, 1.0) * interval_ns) as u64,
            interval_ns,
        }
    }

    /// How many messages are due by `now_ns` (messages 0..n).
    pub fn due(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns {
            return 0;
        }
        ((now_ns - self.start_ns) as f64 / self.interval_ns).floor() as u64 + 1
    }

    /// When message `k` is due.
    pub fn due_at(&self, k: u64) -> u64 {
        self.start_ns + (k as f64 * self.interval_ns).ceil() as u64
    }
}

/// The phase in `[0, 1)` of sender `index` out of `count`, so that `count` senders at the same
/// rate are spread evenly over one interval.
pub fn phase(index: usize, count: usize) -> f64 {
    if count == 0 {
        0.0
    } else {
        index as f64 / count as f64
    }
}

/// Splits a total rate over `parts` senders (threads or processes). 0 (unlimited) stays 0.
pub fn split_rate(total: f64, parts: usize) -> f64 {
    if total <= 0.0 || parts == 0 {
        0.0
    } else {
        total / parts as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_message_due_at_start() {
        let p = Pacer::new(10.0, 1_000, 0.0);
        assert_eq!(p.due(999), 0);
        assert_eq!(p.due(1_000), 1);
        assert_eq!(p.due_at(0), 1_000);
    }

    #[test]
    fn rate_over_a_second() {
        let start = 5 * NS;
        let p = Pacer::new(1000.0, start, 0.0);
        // Messages 0..=1000 are due by start + 1 s: 1001 including the one at t = 0.
        assert_eq!(p.due(start + NS), 1001);
        assert_eq!(p.due(start + NS - 1), 1000);
        assert_eq!(p.due_at(1000), start + NS);
        assert_eq!(p.due_at(1), start + 1_000_000);
    }

    #[test]
    fn due_at_and_due_agree() {
        let p = Pacer::new(7.3, 123, 0.25);
        for k in 0..1000u64 {
            let t = p.due_at(k);
            assert_eq!(p.due(t), k + 1, "k = {k}");
            assert_eq!(p.due(t - 1), k, "k = {k}");
        }
    }

    #[test]
    fn fractional_rates() {
        let p = Pacer::new(0.5, 0, 0.0);
        assert_eq!(p.due(0), 1);
        assert_eq!(p.due(2 * NS - 1), 1);
        assert_eq!(p.due(2 * NS), 2);
    }

    #[test]
    fn phases_spread_senders() {
        let rate = 1.0;
        let starts: Vec<u64> = (0..4)
            .map(|i| Pacer::new(rate, 0, phase(i, 4)).due_at(0))
            .collect();
        assert_eq!(starts, vec![0, NS / 4, NS / 2, 3 * NS / 4]);
        assert_eq!(phase(0, 0), 0.0);
    }

    #[test]
    fn split_rate_over_threads() {
        assert_eq!(split_rate(1000.0, 4), 250.0);
        assert_eq!(split_rate(0.0, 4), 0.0);
        assert_eq!(split_rate(100.0, 0), 0.0);
    }
}
