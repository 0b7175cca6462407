//! The result of a run: one JSON line on stdout, a table on stderr, optional histogram file.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::config::{Config, FaninMode, Scenario};
use crate::run::Outcome;
use crate::seq::lost;
use crate::stats::new_histogram;
use crate::sys::{self, ProcSample};
use crate::transport::Transport;

/// Percentiles in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// From a nanosecond histogram.
    pub fn from_ns(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        let us = |ns: u64| round2(ns as f64 / 1000.0);
        Percentiles {
            count: h.len(),
            mean: round2(h.mean() / 1000.0),
            p50: us(h.value_at_quantile(0.5)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Connection figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Connections {
    /// Connections the run opens.
    pub attempted: u64,
    /// Set up (CONNACK, and SUBACK for subscribers).
    pub ok: u64,
    /// Failed to set up.
    pub failed: u64,
    /// Set up, then closed by the broker or the network before the end.
    pub lost: u64,
    /// Set-up connections per second, from the first connect to the last CONNACK/SUBACK.
    pub rate_per_s: f64,
    /// Seconds from the first connect to the last CONNACK/SUBACK.
    pub setup_s: f64,
    /// TCP connect to CONNACK (SUBACK for subscribers).
    pub latency_us: Percentiles,
    /// tcp, tls, ws or wss (older results: empty = tcp).
    #[serde(default)]
    pub transport: String,
    /// TLS and wss: TLS handshakes per second over the set-up (one per connection, so
    /// `rate_per_s`; full handshakes unless --tls-resume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_handshakes_per_s: Option<f64>,
    /// --persistent: client ids whose session was discarded after the run (a clean connect
    /// and disconnect each; = attempted when every one was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_cleared: Option<u64>,
}

/// Message figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Messages {
    /// PUBLISHes sent (warm-up, window and the in-flight tail).
    pub sent: u64,
    /// QoS 1/2 publishes completed by the broker.
    pub acked: u64,
    /// QoS 1/2 publishes the broker never completed.
    pub unacked: u64,
    /// Deliveries that should have happened (sent x subscribers per message).
    pub expected: u64,
    /// Deliveries that happened.
    pub received: u64,
    /// Distinct deliveries (per subscriber, or per shared group).
    pub distinct: u64,
    /// Expected deliveries that never happened.
    pub lost: u64,
    /// Deliveries of a message the receiver (or its shared group) already had.
    pub duplicated: u64,
    /// First deliveries that came after a later message of the same publisher.
    pub reordered: u64,
    /// Deliveries from a publisher the subscriber should not hear.
    pub unexpected: u64,
    /// Deliveries without the harness's payload header.
    pub malformed: u64,
    /// Sent inside the measurement window.
    pub sent_in_window: u64,
    /// Received inside the measurement window.
    pub received_in_window: u64,
}

/// The broker, from /proc/<pid> (present with --broker-pid).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Broker {
    /// Process id.
    pub pid: u32,
    /// VmRSS before the run, KiB.
    pub rss_kb_before: u64,
    /// VmRSS at the end of the window, KiB.
    pub rss_kb: u64,
    /// VmHWM at the end of the window, KiB.
    pub rss_kb_peak: u64,
    /// conn only: (RSS at the end - RSS before) / connections set up, bytes.
    pub rss_bytes_per_conn: Option<f64>,
    /// CPU seconds (user + system) in the measurement window.
    pub cpu_s: f64,
    /// CPU seconds spent while the connections were set up.
    pub cpu_s_setup: f64,
    /// CPU seconds per million messages delivered in the window: the headline efficiency.
    pub cpu_s_per_million_delivered: Option<f64>,
    /// CPU use in the window, percent of one core.
    pub cpu_percent: f64,
    /// Where the broker's time goes: system calls and context switches per delivered message
    /// (conn: per connection set up).
    #[serde(default)]
    pub counters: Option<BrokerCounters>,
}

/// The broker's system calls and context switches over one span, per unit of work.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BrokerCounters {
    /// "window" (the measurement window) or "set-up" (conn: first connect to the start).
    pub span: String,
    /// What the per-unit figures are per: "message" (delivered in the window) or
    /// "connection" (set up).
    pub unit: String,
    /// Units in the span.
    pub units: u64,
    /// Broker CPU seconds (user + system) in the span.
    pub cpu_s: f64,
    /// System calls (perf `raw_syscalls:sys_enter`), with --perf.
    pub syscalls: Option<u64>,
    /// Context switches (perf `context-switches`), with --perf.
    pub ctx_switches_perf: Option<u64>,
    /// Voluntary context switches of all the broker's threads (/proc).
    pub ctx_voluntary: u64,
    /// Involuntary context switches of all the broker's threads (/proc).
    pub ctx_involuntary: u64,
    /// read- plus write-family system calls (/proc/<pid>/io syscr + syscw).
    pub rw_syscalls: Option<u64>,
    /// Broker CPU microseconds per unit.
    pub cpu_us_per_unit: Option<f64>,
    /// System calls per unit (perf).
    pub syscalls_per_unit: Option<f64>,
    /// Context switches per unit: perf's count, else voluntary + involuntary from /proc.
    pub ctx_switches_per_unit: Option<f64>,
    /// read/write-family system calls per unit (/proc).
    pub rw_syscalls_per_unit: Option<f64>,
    /// "perf" when perf counted, "/proc" otherwise.
    pub source: String,
}

/// The harness's own load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Harness {
    /// CPU use in the window, percent of one core (all worker processes).
    pub cpu_percent: f64,
    /// CPU seconds in the window.
    pub cpu_s: f64,
    /// Cores the harness could use: min(CPUs allowed, threads x workers).
    pub cores: usize,
    /// Over 90% of those cores: the figures may measure the harness, not the broker.
    pub saturated: bool,
    /// CPU use during the connection set-up (first connect to the last CONNACK/SUBACK),
    /// percent of one core (all processes, including their start).
    #[serde(default)]
    pub setup_cpu_percent: Option<f64>,
    /// Over 90% of its cores during the set-up: connections/s may measure the harness.
    #[serde(default)]
    pub setup_saturated: bool,
}

/// One run: the JSON line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// conn, p2p, fanout, fanin, latency.
    pub scenario: String,
    /// Open MQTT Benchmark Suite style name.
    pub name: String,
    /// --label (the broker's name in comparisons).
    pub label: Option<String>,
    /// No errors.
    pub ok: bool,
    /// Why the run failed: lost QoS 1/2 messages, failed or dropped connections, protocol errors.
    pub errors: Vec<String>,
    /// Worth knowing, not failures.
    pub warnings: Vec<String>,
    /// The resolved parameters.
    pub params: serde_json::Value,
    /// Connections.
    pub connections: Connections,
    /// Messages.
    pub messages: Messages,
    /// Target deliveries per second (0 = unpaced).
    pub target_out_per_s: f64,
    /// Publishes per second in the window.
    pub sent_per_s: f64,
    /// Deliveries per second in the window.
    pub delivered_per_s: f64,
    /// Publish-to-receive latency of deliveries in the window.
    pub latency_us: Percentiles,
    /// Broker figures.
    pub broker: Option<Broker>,
    /// Harness figures.
    pub harness: Harness,
    /// Machine.
    pub host: String,
    /// Seconds since the epoch at the end of the run.
    pub unix_time: u64,
}

/// Builds the result and the histograms (latency, connect latency).
pub fn build(cfg: &Config, outcome: &Outcome) -> (RunResult, Histogram<u64>, Histogram<u64>) {
    let r = &outcome.result;
    let c = &r.counts;
    let mut latency = new_histogram();
    r.latency.add_to(&mut latency);
    let mut connect_latency = new_histogram();
    r.connect_latency.add_to(&mut connect_latency);

    let shared = r.shared_totals();
    let distinct = c.seq.distinct + shared.distinct;
    let expected = c.sent * cfg.expected_multiplier();
    let messages = Messages {
        sent: c.sent,
        acked: c.acked,
        unacked: c.unacked,
        expected,
        received: c.received,
        distinct,
        lost: lost(expected, distinct),
        duplicated: c.seq.duplicates + shared.duplicates,
        reordered: c.seq.reordered + shared.reordered,
        unexpected: c.unexpected,
        malformed: c.malformed,
        sent_in_window: c.sent_window,
        received_in_window: c.received_window,
    };
    let setup_s = match (
        outcome.ready.first_connect_ns,
        outcome.ready.last_connack_ns,
    ) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
        _ => 0.0,
    };
    let conn_ok = outcome.ready.conn_ok;
    let rate_per_s = if setup_s > 0.0 {
        round2(conn_ok as f64 / setup_s)
    } else {
        0.0
    };
    let connections = Connections {
        attempted: cfg.total_connections() as u64,
        ok: conn_ok,
        failed: outcome.ready.conn_failed,
        lost: c.conn_lost,
        rate_per_s,
        setup_s: round3(setup_s),
        latency_us: Percentiles::from_ns(&connect_latency),
        transport: cfg.transport.to_string(),
        tls_handshakes_per_s: cfg.transport.tls().then_some(rate_per_s),
        sessions_cleared: cfg.persistent.then_some(r.sessions_cleared),
    };
    let duration = cfg.duration_s;
    let delivered_per_s = round2(c.received_window as f64 / duration);
    let broker = cfg.broker_pid.and_then(|pid| {
        broker_figures(
            cfg.scenario == Scenario::Conn,
            pid,
            outcome,
            conn_ok,
            c.received_window,
            duration,
        )
    });
    let cores = sys::available_cpus().min(cfg.threads * cfg.workers).max(1);
    let cpu_percent = round2(r.cpu_s / duration * 100.0);
    let setup_cpu_percent = (setup_s > 0.0).then(|| round2(outcome.ready.cpu_s / setup_s * 100.0));
    let harness = Harness {
        cpu_percent,
        cpu_s: round3(r.cpu_s),
        cores,
        saturated: cpu_percent >= 90.0 * cores as f64,
        setup_cpu_percent,
        // Only a set-up long enough to measure: process start-up dominates a short one.
        setup_saturated: setup_s >= 0.5
            && setup_cpu_percent.is_some_and(|p| p >= 90.0 * cores as f64),
    };
    let mut result = RunResult {
        scenario: cfg.scenario.as_str().into(),
        name: cfg.name.clone(),
        label: cfg.label.clone(),
        ok: false,
        errors: Vec::new(),
        warnings: Vec::new(),
        params: serde_json::to_value(cfg).expect("Config serialises"),
        connections,
        messages,
        target_out_per_s: cfg.target_out_per_s(),
        sent_per_s: round2(c.sent_window as f64 / duration),
        delivered_per_s,
        latency_us: Percentiles::from_ns(&latency),
        broker,
        harness,
        host: sys::hostname(),
        unix_time: sys::unix_time(),
    };
    let (errors, warnings) = judge(cfg, &result, outcome);
    result.ok = errors.is_empty();
    result.errors = errors;
    result.warnings = warnings;
    (result, latency, connect_latency)
}

fn broker_figures(
    conn_scenario: bool,
    pid: u32,
    outcome: &Outcome,
    conn_ok: u64,
    delivered: u64,
    duration: f64,
) -> Option<Broker> {
    let b = &outcome.broker;
    let before = b.before?;
    let end: ProcSample = b.window_end.or(b.at_go).unwrap_or(before);
    let cpu_s = match (b.window_start, b.window_end) {
        (Some(s), Some(e)) => e.cpu_s - s.cpu_s,
        _ => 0.0,
    };
    let cpu_s_setup = b.at_go.map_or(0.0, |g| g.cpu_s - before.cpu_s);
    let counters = if conn_scenario {
        b.at_go
            .map(|g| counters("set-up", "connection", &before, &g, conn_ok, outcome))
    } else {
        match (b.window_start, b.window_end) {
            (Some(s), Some(e)) => Some(counters("window", "message", &s, &e, delivered, outcome)),
            _ => None,
        }
    };
    Some(Broker {
        pid,
        rss_kb_before: before.rss_kb,
        rss_kb: end.rss_kb,
        rss_kb_peak: end.hwm_kb,
        // Only the idle-connection scenario isolates connection memory.
        rss_bytes_per_conn: (conn_scenario && conn_ok > 0)
            .then(|| round2((end.rss_kb as f64 - before.rss_kb as f64) * 1024.0 / conn_ok as f64)),
        cpu_s: round3(cpu_s),
        cpu_s_setup: round3(cpu_s_setup),
        cpu_s_per_million_delivered: (delivered > 0)
            .then(|| round3(cpu_s / delivered as f64 * 1e6)),
        cpu_percent: round2(cpu_s / duration * 100.0),
        counters,
    })
}

fn counters(
    span: &str,
    unit: &str,
    start: &ProcSample,
    end: &ProcSample,
    units: u64,
    outcome: &Outcome,
) -> BrokerCounters {
    let per = |v: f64| (units > 0).then(|| round3(v / units as f64));
    let perf = outcome.perf.unwrap_or_default();
    let ctx_voluntary = end.ctx_voluntary.saturating_sub(start.ctx_voluntary);
    let ctx_involuntary = end.ctx_involuntary.saturating_sub(start.ctx_involuntary);
    let rw_syscalls = match (start.rw_syscalls, end.rw_syscalls) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let cpu_s = (end.cpu_s - start.cpu_s).max(0.0);
    let ctx = perf.ctx_switches.unwrap_or(ctx_voluntary + ctx_involuntary);
    BrokerCounters {
        span: span.into(),
        unit: unit.into(),
        units,
        cpu_s: round3(cpu_s),
        syscalls: perf.syscalls,
        ctx_switches_perf: perf.ctx_switches,
        ctx_voluntary,
        ctx_involuntary,
        rw_syscalls,
        cpu_us_per_unit: per(cpu_s * 1e6),
        syscalls_per_unit: perf.syscalls.and_then(|s| per(s as f64)),
        ctx_switches_per_unit: per(ctx as f64),
        rw_syscalls_per_unit: rw_syscalls.and_then(|s| per(s as f64)),
        source: if outcome.perf.is_some() {
            "perf".into()
        } else {
            "/proc".into()
        },
    }
}

/// Errors (the run failed) and warnings, from the counts.
pub fn judge(cfg: &Config, r: &RunResult, outcome: &Outcome) -> (Vec<String>, Vec<String>) {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let m = &r.messages;
    if let Some(why) = &outcome.aborted {
        errors.push(format!("run aborted before the load: {why}"));
    }
    if r.connections.failed > 0 && outcome.aborted.is_none() {
        errors.push(format!(
            "{} of {} connections failed to set up",
            r.connections.failed, r.connections.attempted
        ));
    }
    if r.connections.lost > 0 {
        errors.push(format!(
            "{} connections were closed during the run",
            r.connections.lost
        ));
    }
    if cfg.scenario != Scenario::Conn && outcome.aborted.is_none() {
        if m.lost > 0 {
            let text = format!(
                "{} of {} expected QoS {} deliveries lost",
                m.lost, m.expected, cfg.qos
            );
            if cfg.qos >= 1 {
                errors.push(text);
            } else {
                warnings.push(text);
            }
        }
        if m.duplicated > 0 {
            let text = format!("{} duplicate deliveries at QoS {}", m.duplicated, cfg.qos);
            if cfg.qos == 2 {
                errors.push(text);
            } else {
                warnings.push(text);
            }
        }
        if m.unacked > 0 {
            errors.push(format!(
                "{} QoS {} publishes never acknowledged by the broker",
                m.unacked, cfg.qos
            ));
        }
        if m.unexpected > 0 {
            errors.push(format!(
                "{} deliveries to a subscriber that should not receive them",
                m.unexpected
            ));
        }
        if m.malformed > 0 {
            errors.push(format!("{} deliveries with a foreign payload", m.malformed));
        }
        if m.reordered > 0 && cfg.qos >= 1 && cfg.mode != Some(FaninMode::Shared) {
            warnings.push(format!(
                "{} deliveries out of publish order (MQTT orders QoS 1/2 per topic)",
                m.reordered
            ));
        }
        if cfg.rate > 0.0 && r.sent_per_s < 0.95 * cfg.target_in_per_s() {
            warnings.push(format!(
                "publishers sent {:.0}/s of a {:.0}/s target (broker backpressure or a slow harness)",
                r.sent_per_s,
                cfg.target_in_per_s()
            ));
        }
        if cfg.qos == 0 && cfg.rate == 0.0 {
            warnings.push(
                "QoS 0 without --rate: only socket buffers limit the publishers, so latency \
                 includes socket-buffer queueing and unsent tails count as lost"
                    .into(),
            );
        }
        if m.received_in_window == 0 {
            errors.push("nothing was delivered in the measurement window".into());
        }
    }
    errors.extend(outcome.result.errors.lines());
    warnings.extend(outcome.result.warnings.lines());
    if r.harness.saturated {
        warnings.push(format!(
            "harness saturated ({:.0}% CPU on {} core(s)): the figures may measure the harness; \
             add --threads/--workers or cores",
            r.harness.cpu_percent, r.harness.cores
        ));
    }
    if r.harness.setup_saturated {
        warnings.push(format!(
            "harness saturated during the connection set-up ({:.0}% CPU on {} core(s)): \
             connections/s may measure the harness; add --workers or cores",
            r.harness.setup_cpu_percent.unwrap_or(0.0),
            r.harness.cores
        ));
    }
    (errors, warnings)
}

fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

/// The human-readable table (for stderr).
pub fn table(cfg: &Config, r: &RunResult) -> String {
    let mut t = String::new();
    let label = r
        .label
        .as_deref()
        .map(|l| format!(" [{l}]"))
        .unwrap_or_default();
    let _ = writeln!(t, "== {}{label}", r.name);
    let _ = writeln!(
        t,
        "   MQTT {} QoS {}, {} B payload, {:.1} s measured after {:.1} s warm-up, {} thread(s) x {} process(es)",
        cfg.protocol, cfg.qos, cfg.payload, cfg.duration_s, cfg.warmup_s, cfg.threads, cfg.workers
    );
    let c = &r.connections;
    let rate = match (cfg.transport, &cfg.tls) {
        (Transport::Tcp, _) => format!("{} conn/s", thousands(c.rate_per_s)),
        (t, Some(tls)) => format!(
            "{} conn/s over {t} (= {} TLS handshakes/s)",
            thousands(c.rate_per_s),
            if tls.resume {
                "resumed or full"
            } else {
                "full"
            }
        ),
        (t, None) => format!("{} conn/s over {t}", thousands(c.rate_per_s)),
    };
    let _ = writeln!(
        t,
        "connections  {} ok, {} failed, {} lost of {}; {rate} over {:.2} s; connect p50 {} p99 {} max {}",
        thousands(c.ok as f64),
        c.failed,
        c.lost,
        thousands(c.attempted as f64),
        c.setup_s,
        us(c.latency_us.p50),
        us(c.latency_us.p99),
        us(c.latency_us.max)
    );
    if let Some(cleared) = c.sessions_cleared {
        let expiry = cfg
            .session_expiry_s
            .map(|s| format!(", session expiry {s} s"))
            .unwrap_or_default();
        let _ = writeln!(
            t,
            "sessions     persistent (clean session 0{expiry}); {} of {} cleared after the run",
            thousands(cleared as f64),
            thousands(c.attempted as f64)
        );
    }
    if cfg.scenario != Scenario::Conn {
        let m = &r.messages;
        let _ = writeln!(
            t,
            "messages     sent {}  acked {}  expected {}  received {}  lost {}  duplicated {}  reordered {}",
            thousands(m.sent as f64),
            thousands(m.acked as f64),
            thousands(m.expected as f64),
            thousands(m.received as f64),
            m.lost,
            m.duplicated,
            m.reordered
        );
        let target = if r.target_out_per_s > 0.0 {
            format!("{}/s", thousands(r.target_out_per_s))
        } else {
            "max".into()
        };
        let _ = writeln!(
            t,
            "throughput   in {}/s  out (delivered) {}/s  target out {target}",
            thousands(r.sent_per_s),
            thousands(r.delivered_per_s)
        );
        let l = &r.latency_us;
        let _ = writeln!(
            t,
            "latency      p50 {}  p99 {}  p99.9 {}  max {}  mean {}  (n = {})",
            us(l.p50),
            us(l.p99),
            us(l.p999),
            us(l.max),
            us(l.mean),
            thousands(l.count as f64)
        );
    }
    if let Some(b) = &r.broker {
        let per_msg = b
            .cpu_s_per_million_delivered
            .map(|v| format!(" = {v:.3} s per million delivered"))
            .unwrap_or_default();
        let per_conn = b
            .rss_bytes_per_conn
            .map(|v| format!(", {} B per connection", thousands(v)))
            .unwrap_or_default();
        let _ = writeln!(
            t,
            "broker       pid {}  cpu {:.2} s in window ({:.0}%){per_msg}; set-up {:.2} s",
            b.pid, b.cpu_s, b.cpu_percent, b.cpu_s_setup
        );
        let _ = writeln!(
            t,
            "             rss {:.1} MiB (before {:.1} MiB, peak {:.1} MiB){per_conn}",
            b.rss_kb as f64 / 1024.0,
            b.rss_kb_before as f64 / 1024.0,
            b.rss_kb_peak as f64 / 1024.0
        );
        if let Some(c) = &b.counters {
            let f = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{v:.2}"));
            let _ = writeln!(
                t,
                "             per {} ({}, {}): cpu {} µs, syscalls {}, context switches {} \
                 ({} voluntary, {} involuntary in all), read/write syscalls {}",
                c.unit,
                c.span,
                c.source,
                f(c.cpu_us_per_unit),
                f(c.syscalls_per_unit),
                f(c.ctx_switches_per_unit),
                thousands(c.ctx_voluntary as f64),
                thousands(c.ctx_involuntary as f64),
                f(c.rw_syscalls_per_unit)
            );
        }
    }
    let h = &r.harness;
    let setup = h
        .setup_cpu_percent
        .map(|p| {
            format!(
                "; set-up {p:.0}%{}",
                if h.setup_saturated {
                    " ** SATURATED **"
                } else {
                    ""
                }
            )
        })
        .unwrap_or_default();
    let _ = writeln!(
        t,
        "harness      cpu {:.0}% of {} core(s){}{setup}",
        h.cpu_percent,
        h.cores,
        if h.saturated { "  ** SATURATED **" } else { "" }
    );
    for w in &r.warnings {
        let _ = writeln!(t, "warning      {w}");
    }
    if r.ok {
        let _ = writeln!(t, "result       OK");
    } else {
        for e in &r.errors {
            let _ = writeln!(t, "ERROR        {e}");
        }
        let _ = writeln!(t, "result       FAILED");
    }
    t
}

/// Writes `h` (nanoseconds) as an HdrHistogram percentile distribution in microseconds, the
/// text format HdrHistogram's plotters read.
pub fn write_hgrm(h: &Histogram<u64>, path: &Path) -> io::Result<()> {
    std::fs::write(path, hgrm(h))
}

/// The .hgrm text.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value(us)", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if h.is_empty() {
        return out;
    }
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let value = v.value_iterated_to() as f64 / 1000.0;
        if q < 1.0 {
            let _ = writeln!(
                out,
                "{value:>12.3} {q:>14.12} {total:>10} {:>14.2}",
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(out, "{value:>12.3} {q:>14.12} {total:>10}");
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command};
    use crate::run::{BrokerSamples, Outcome};
    use crate::seq::SeqSet;
    use crate::stats::{Counts, HistData, ReadyInfo, WorkerResult};
    use clap::Parser;

    fn cfg(list: &[&str]) -> Config {
        let cli = Cli::try_parse_from(std::iter::once("bench-harness").chain(list.iter().copied()))
            .unwrap();
        match cli.command {
            Command::P2p(a) => Config::resolve(Scenario::P2p, &a).unwrap(),
            Command::Fanout(a) => Config::resolve(Scenario::Fanout, &a).unwrap(),
            _ => unreachable!(),
        }
    }

    fn outcome(sent: u64, seqs: &[u32]) -> Outcome {
        let mut set = SeqSet::new();
        for &s in seqs {
            set.insert(s);
        }
        let mut counts = Counts {
            sent,
            sent_window: sent,
            acked: sent,
            received: seqs.len() as u64,
            received_window: seqs.len() as u64,
            conn_ok: 2,
            ..Default::default()
        };
        counts.seq.add(&set);
        let mut h = new_histogram();
        h.record(150_000).unwrap();
        Outcome {
            result: WorkerResult {
                counts,
                latency: HistData::from_histogram(&h),
                cpu_s: 0.5,
                ..Default::default()
            },
            ready: ReadyInfo {
                conn_ok: 2,
                first_connect_ns: Some(1_000_000_000),
                last_connack_ns: Some(1_500_000_000),
                ..Default::default()
            },
            broker: BrokerSamples::default(),
            aborted: None,
            perf: None,
        }
    }

    #[test]
    fn clean_run_is_ok_and_serialises_to_one_line() {
        let c = cfg(&["p2p", "--pubs", "1", "--duration", "2", "--threads", "1"]);
        let (r, _, _) = build(&c, &outcome(4, &[0, 1, 2, 3]));
        assert!(r.ok, "{:?}", r.errors);
        assert_eq!(r.messages.lost, 0);
        assert_eq!(r.delivered_per_s, 2.0);
        assert!(
            (r.latency_us.p50 - 150.0).abs() < 0.2,
            "{}",
            r.latency_us.p50
        );
        assert_eq!(r.connections.rate_per_s, 4.0);
        assert_eq!(r.harness.cpu_percent, 25.0);
        let line = serde_json::to_string(&r).unwrap();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        for key in [
            "scenario",
            "params",
            "messages",
            "delivered_per_s",
            "latency_us",
            "broker",
            "harness",
            "connections",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["params"]["qos"], 1);
        assert_eq!(v["latency_us"]["p999"], v["latency_us"]["p50"]);
        let back: RunResult = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn persistent_runs_report_cleared_sessions() {
        let c = cfg(&["p2p", "--pubs", "1", "--threads", "1"]);
        let (r, _, _) = build(&c, &outcome(4, &[0, 1, 2, 3]));
        assert_eq!(r.connections.sessions_cleared, None);
        let line = serde_json::to_string(&r).unwrap();
        assert!(!line.contains("sessions_cleared"), "{line}");
        assert!(!table(&c, &r).contains("sessions"));

        let c = cfg(&["p2p", "--pubs", "1", "--threads", "1", "--persistent"]);
        let mut o = outcome(4, &[0, 1, 2, 3]);
        o.result.sessions_cleared = 2;
        let (r, _, _) = build(&c, &o);
        assert!(r.ok, "{:?}", r.errors);
        assert_eq!(r.name, "p2p-1-1-1-max-persistent");
        assert_eq!(r.connections.sessions_cleared, Some(2));
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["connections"]["sessions_cleared"], 2);
        assert_eq!(v["params"]["persistent"], true);
        assert!(
            table(&c, &r).contains("2 of 2 cleared"),
            "{}",
            table(&c, &r)
        );
    }

    #[test]
    fn lost_qos1_message_is_an_error() {
        let c = cfg(&["p2p", "--pubs", "1", "--threads", "1"]);
        let (r, _, _) = build(&c, &outcome(5, &[0, 1, 3, 4]));
        assert!(!r.ok);
        assert_eq!(r.messages.lost, 1);
        assert!(r.errors[0].contains("lost"), "{:?}", r.errors);
        assert!(table(&c, &r).contains("FAILED"));
    }

    #[test]
    fn lost_qos0_message_is_a_warning() {
        let c = cfg(&["p2p", "--pubs", "1", "--qos", "0", "--threads", "1"]);
        let (r, _, _) = build(&c, &outcome(5, &[0, 1, 3, 4, 4]));
        assert!(r.ok, "{:?}", r.errors);
        assert_eq!(r.messages.lost, 1);
        assert_eq!(r.messages.duplicated, 1);
        // Loss, duplicate, and the note on unpaced QoS 0.
        assert_eq!(r.warnings.len(), 3, "{:?}", r.warnings);
        assert!(r.warnings[2].contains("socket"));
    }

    #[test]
    fn fanout_expects_every_subscriber() {
        let c = cfg(&["fanout", "--pubs", "1", "--subs", "3", "--threads", "1"]);
        let (r, _, _) = build(&c, &outcome(2, &[0, 1]));
        assert_eq!(r.messages.expected, 6);
        assert_eq!(r.messages.lost, 4);
        assert!(!r.ok);
    }

    #[test]
    fn hgrm_format() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let text = hgrm(&h);
        assert!(text.starts_with("   Value(us)"));
        assert!(text.contains("#[Max     ="));
        let last = text
            .lines()
            .rfind(|l| !l.starts_with('#') && !l.is_empty())
            .unwrap();
        assert!(last.contains("1.000000000000"), "{last}");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-1000.0), "-1,000");
    }
}
