//! `$SYS/broker/...`: the broker's statistics as retained messages, under Mosquitto's topic
//! names so existing dashboards work. Pure data: shard 0's runtime sums every shard's counter
//! snapshot every `sys_interval` seconds, this module turns the sums into topics and payloads,
//! and the shard publishes them like any retained message.

use std::time::Duration;

use super::ShardStats;

/// Exponentially damped per-minute rates over 1, 5 and 15 minutes, as Mosquitto computes
/// its `load/...` topics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    /// 1-minute average, per minute.
    pub one: f64,
    /// 5-minute average, per minute.
    pub five: f64,
    /// 15-minute average, per minute.
    pub fifteen: f64,
    last: u64,
    primed: bool,
}

impl Load {
    /// Folds in the counter's value after `elapsed` since the last update.
    pub fn update(&mut self, value: u64, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if !self.primed || seconds <= 0.0 {
            self.last = value;
            self.primed = true;
            return;
        }
        let per_minute = value.saturating_sub(self.last) as f64 * 60.0 / seconds;
        self.last = value;
        for (load, minutes) in [
            (&mut self.one, 1.0),
            (&mut self.five, 5.0),
            (&mut self.fifteen, 15.0),
        ] {
            let decay = (-seconds / (60.0 * minutes)).exp();
            *load = per_minute + decay * (*load - per_minute);
        }
    }
}

/// Everything `$SYS` reports that is not a plain sum of counters.
#[derive(Debug, Clone, Default)]
pub struct SysState {
    /// Loads, in the order of [`LOADS`].
    loads: [Load; LOADS.len()],
    /// Most connections seen at once.
    pub connections_peak: u64,
}

/// Reads one counter from the totals.
type Counter = fn(&Totals) -> u64;

/// The `load/...` topics and the counter each follows.
const LOADS: [(&str, Counter); 7] = [
    ("messages/received", |t| t.stats.packets_in),
    ("messages/sent", |t| t.stats.packets_out),
    ("publish/received", |t| t.stats.publishes_in),
    ("publish/sent", |t| t.stats.publishes_out),
    ("bytes/received", |t| t.stats.bytes_in),
    ("bytes/sent", |t| t.stats.bytes_out),
    ("connections", |t| t.stats.connects),
];

/// The broker-wide figures one `$SYS` update reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    /// Every shard's counters, summed.
    pub stats: ShardStats,
    /// Open client connections.
    pub connections: u64,
    /// Seconds since the broker started.
    pub uptime: u64,
    /// Bytes of memory the process holds (resident set).
    pub memory: u64,
}

/// Sums shards' counters field by field (`retained`: the largest replica).
pub fn sum(shards: &[ShardStats]) -> ShardStats {
    let mut total = ShardStats::default();
    for s in shards {
        total += *s;
    }
    total
}

impl SysState {
    /// The topics and payloads of one update, `elapsed` after the previous one.
    pub fn update(&mut self, totals: &Totals, elapsed: Duration) -> Vec<(String, String)> {
        self.connections_peak = self.connections_peak.max(totals.connections);
        for (load, (_, counter)) in self.loads.iter_mut().zip(LOADS) {
            load.update(counter(totals), elapsed);
        }
        let s = &totals.stats;
        let dropped = s.dropped_total();
        let mut topics: Vec<(String, String)> = vec![
            (
                "version".into(),
                format!("shardmq version {}", env!("CARGO_PKG_VERSION")),
            ),
            ("uptime".into(), format!("{} seconds", totals.uptime)),
            ("clients/connected".into(), totals.connections.to_string()),
            (
                "clients/disconnected".into(),
                s.sessions.saturating_sub(totals.connections).to_string(),
            ),
            ("clients/total".into(), s.sessions.to_string()),
            ("clients/maximum".into(), self.connections_peak.to_string()),
            ("clients/expired".into(), s.sessions_expired.to_string()),
            ("messages/received".into(), s.packets_in.to_string()),
            ("messages/sent".into(), s.packets_out.to_string()),
            ("messages/stored".into(), s.retained.to_string()),
            (
                "publish/messages/received".into(),
                s.publishes_in.to_string(),
            ),
            ("publish/messages/sent".into(), s.publishes_out.to_string()),
            ("publish/messages/dropped".into(), dropped.to_string()),
            ("bytes/received".into(), s.bytes_in.to_string()),
            ("bytes/sent".into(), s.bytes_out.to_string()),
            ("subscriptions/count".into(), s.subscriptions.to_string()),
            ("retained messages/count".into(), s.retained.to_string()),
            ("heap/current".into(), totals.memory.to_string()),
        ];
        for (load, (name, _)) in self.loads.iter().zip(LOADS) {
            for (window, value) in [
                ("1min", load.one),
                ("5min", load.five),
                ("15min", load.fifteen),
            ] {
                topics.push((format!("load/{name}/{window}"), format!("{value:.2}")));
            }
        }
        for (topic, _) in &mut topics {
            topic.insert_str(0, "$SYS/broker/");
        }
        topics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_follow_a_steady_rate() {
        let mut load = Load::default();
        let mut value = 0;
        load.update(value, Duration::from_secs(10));
        // 100 minutes: even the 15-minute average has converged.
        for _ in 0..600 {
            value += 100; // 100 per 10 s = 600 per minute
            load.update(value, Duration::from_secs(10));
        }
        assert!((load.one - 600.0).abs() < 1.0, "{load:?}");
        assert!((load.fifteen - 600.0).abs() < 30.0, "{load:?}");
        // Traffic stops: the 1-minute load falls faster than the 15-minute one.
        for _ in 0..6 {
            load.update(value, Duration::from_secs(10));
        }
        assert!(load.one < 250.0 && load.fifteen > 450.0, "{load:?}");
    }

    #[test]
    fn topics_use_mosquittos_names_and_sums() {
        let shard = ShardStats {
            publishes_in: 3,
            sessions: 2,
            retained: 5,
            // queue_full, qos0_slow_or_offline, expired, too_large, not_authorized, storage_full
            dropped: [1, 2, 0, 3, 1, 0],
            ..ShardStats::default()
        };
        let totals = Totals {
            stats: sum(&[shard, shard]),
            connections: 3,
            uptime: 42,
            memory: 1000,
        };
        let mut state = SysState::default();
        let topics = state.update(&totals, Duration::from_secs(10));
        let get = |name: &str| {
            topics
                .iter()
                .find(|(t, _)| t == &format!("$SYS/broker/{name}"))
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no {name}"))
        };
        assert_eq!(get("uptime"), "42 seconds");
        assert_eq!(get("publish/messages/received"), "6");
        assert_eq!(
            get("publish/messages/dropped"),
            "14",
            "every drop reason, both shards"
        );
        assert_eq!(get("clients/total"), "4");
        assert_eq!(get("clients/connected"), "3");
        assert_eq!(get("clients/disconnected"), "1");
        assert_eq!(get("retained messages/count"), "5");
        assert!(get("version").starts_with("shardmq version "));
        assert_eq!(get("load/connections/1min"), "0.00");
        assert_eq!(get("load/bytes/sent/15min"), "0.00");
    }
}
