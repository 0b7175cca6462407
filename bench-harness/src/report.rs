//! `bench-harness report`: a markdown comparison with hand-written SVG bar charts, from the JSON
//! lines of runs labelled with the broker's name (`--label`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::config::ReportArgs;
use crate::output::{BrokerCounters, RunResult};

/// Reads the results and writes the report and its charts.
pub fn run(args: &ReportArgs) -> Result<(), String> {
    let mut runs = read_runs(&args.input)?;
    if let Some(path) = &args.counters {
        let perf_runs = read_runs(path)?;
        take_counters(&mut runs, &perf_runs);
    }
    let machine = match &args.machine {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let stem = args
        .out
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("report")
        .to_string();
    let dir = args.out.parent().unwrap_or(Path::new("."));
    let table = Table::new(&runs, &args.baseline);
    let charts = table.charts(&stem);
    for (file, svg) in &charts {
        std::fs::write(dir.join(file), svg)
            .map_err(|e| format!("cannot write {}: {e}", dir.join(file).display()))?;
    }
    let md = table.markdown(machine.as_deref(), args.notes.as_deref(), &charts);
    std::fs::write(&args.out, md)
        .map_err(|e| format!("cannot write {}: {e}", args.out.display()))?;
    eprintln!(
        "wrote {} and {} chart(s) next to it",
        args.out.display(),
        charts.len()
    );
    Ok(())
}

fn read_runs(path: &Path) -> Result<Vec<RunResult>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut runs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let run: RunResult =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
        runs.push(run);
    }
    Ok(runs)
}

/// Gives each run the broker counters of the perf run of the same scenario and broker (the
/// last one wins), so "where the time goes" comes from the perf runs and everything else from
/// the runs without perf.
fn take_counters(runs: &mut [RunResult], perf_runs: &[RunResult]) {
    for run in runs.iter_mut() {
        let counted = perf_runs
            .iter()
            .rev()
            .filter(|p| p.name == run.name && p.label == run.label)
            .find_map(|p| p.broker.as_ref()?.counters.clone());
        if let (Some(c), Some(b)) = (counted, run.broker.as_mut()) {
            b.counters = Some(c);
        }
    }
}

/// Runs arranged by scenario name and broker (the last run wins when one is repeated).
struct Table<'a> {
    scenarios: Vec<String>,
    brokers: Vec<String>,
    baseline: String,
    cells: BTreeMap<(String, String), &'a RunResult>,
}

/// A metric: its title, whether lower is better, and how to read it from a run.
struct Metric {
    title: &'static str,
    unit: &'static str,
    lower_is_better: bool,
    get: fn(&RunResult) -> Option<f64>,
}

const CPU_PER_MSG: Metric = Metric {
    title: "Broker CPU per delivered message",
    unit: "CPU s per million delivered",
    lower_is_better: true,
    get: |r| r.broker.as_ref()?.cpu_s_per_million_delivered,
};
const THROUGHPUT: Metric = Metric {
    title: "Delivered messages per second",
    unit: "msg/s",
    lower_is_better: false,
    get: |r| (r.delivered_per_s > 0.0).then_some(r.delivered_per_s),
};
const P50: Metric = Metric {
    title: "Latency p50",
    unit: "µs",
    lower_is_better: true,
    get: |r| (r.latency_us.count > 0).then_some(r.latency_us.p50),
};
const P99: Metric = Metric {
    title: "Latency p99",
    unit: "µs",
    lower_is_better: true,
    get: |r| (r.latency_us.count > 0).then_some(r.latency_us.p99),
};
const P999: Metric = Metric {
    title: "Latency p99.9",
    unit: "µs",
    lower_is_better: true,
    get: |r| (r.latency_us.count > 0).then_some(r.latency_us.p999),
};
const RSS: Metric = Metric {
    title: "Broker RSS at the end of the window",
    unit: "MiB",
    lower_is_better: true,
    get: |r| Some(r.broker.as_ref()?.rss_kb as f64 / 1024.0),
};
const RSS_PER_CONN: Metric = Metric {
    title: "Broker RSS per idle connection",
    unit: "bytes",
    lower_is_better: true,
    get: |r| {
        if r.scenario == "conn" {
            r.broker.as_ref()?.rss_bytes_per_conn
        } else {
            None
        }
    },
};
const CONN_RATE: Metric = Metric {
    title: "Connections per second",
    unit: "conn/s",
    lower_is_better: false,
    get: |r| {
        if r.scenario == "conn" {
            Some(r.connections.rate_per_s)
        } else {
            None
        }
    },
};

/// The broker's counters of a run, if they are per `unit` ("message" or "connection").
fn counters<'r>(r: &'r RunResult, unit: &str) -> Option<&'r BrokerCounters> {
    r.broker
        .as_ref()?
        .counters
        .as_ref()
        .filter(|c| c.unit == unit && c.units > 0)
}

const SYSCALLS_PER_MSG: Metric = Metric {
    title: "System calls per delivered message",
    unit: "perf raw_syscalls:sys_enter",
    lower_is_better: true,
    get: |r| counters(r, "message")?.syscalls_per_unit,
};
const CTX_PER_MSG: Metric = Metric {
    title: "Context switches per delivered message",
    unit: "perf context-switches, else /proc voluntary + involuntary",
    lower_is_better: true,
    get: |r| counters(r, "message")?.ctx_switches_per_unit,
};
const RW_PER_MSG: Metric = Metric {
    title: "read/write-family system calls per delivered message",
    unit: "/proc/<pid>/io syscr + syscw",
    lower_is_better: true,
    get: |r| counters(r, "message")?.rw_syscalls_per_unit,
};
const SYSCALLS_PER_CONN: Metric = Metric {
    title: "System calls per connection set up",
    unit: "perf raw_syscalls:sys_enter over the set-up",
    lower_is_better: true,
    get: |r| counters(r, "connection")?.syscalls_per_unit,
};
const CTX_PER_CONN: Metric = Metric {
    title: "Context switches per connection set up",
    unit: "over the set-up",
    lower_is_better: true,
    get: |r| counters(r, "connection")?.ctx_switches_per_unit,
};
const CPU_PER_CONN: Metric = Metric {
    title: "Broker CPU per connection set up",
    unit: "µs",
    lower_is_better: true,
    get: |r| counters(r, "connection")?.cpu_us_per_unit,
};

impl<'a> Table<'a> {
    fn new(runs: &'a [RunResult], baseline: &str) -> Self {
        let mut scenarios: Vec<String> = Vec::new();
        let mut brokers: Vec<String> = Vec::new();
        let mut cells = BTreeMap::new();
        for run in runs {
            let broker = run.label.clone().unwrap_or_else(|| "unlabelled".into());
            if !scenarios.contains(&run.name) {
                scenarios.push(run.name.clone());
            }
            if !brokers.contains(&broker) {
                brokers.push(broker.clone());
            }
            cells.insert((run.name.clone(), broker), run);
        }
        // Baseline first, the peers in order of appearance.
        brokers.sort_by_key(|b| b != baseline);
        Table {
            scenarios,
            brokers,
            baseline: baseline.to_string(),
            cells,
        }
    }

    fn get(&self, scenario: &str, broker: &str) -> Option<&'a RunResult> {
        self.cells
            .get(&(scenario.to_string(), broker.to_string()))
            .copied()
    }

    fn peers(&self) -> Vec<&String> {
        self.brokers
            .iter()
            .filter(|b| **b != self.baseline)
            .collect()
    }

    /// Scenario rows with the metric per broker and the baseline/peer ratios.
    fn metric_table(&self, out: &mut String, metric: &Metric) {
        let rows: Vec<&String> = self
            .scenarios
            .iter()
            .filter(|s| {
                self.brokers
                    .iter()
                    .any(|b| self.get(s, b).and_then(metric.get).is_some())
            })
            .collect();
        if rows.is_empty() {
            return;
        }
        let better = if metric.lower_is_better {
            "lower is better"
        } else {
            "higher is better"
        };
        let _ = writeln!(out, "### {} ({}; {better})\n", metric.title, metric.unit);
        let peers = self.peers();
        let mut header = String::from("| scenario |");
        let mut rule = String::from("|---|");
        for b in &self.brokers {
            let _ = write!(header, " {b} |");
            rule.push_str("---:|");
        }
        for p in &peers {
            let _ = write!(header, " {}/{p} |", self.baseline);
            rule.push_str("---:|");
        }
        let _ = writeln!(out, "{header}\n{rule}");
        for s in rows {
            let mut line = format!("| {s} |");
            for b in &self.brokers {
                let cell = match self.get(s, b) {
                    None => "—".to_string(),
                    Some(run) => {
                        let value = (metric.get)(run).map_or("—".to_string(), fmt_num);
                        if run.ok {
                            value
                        } else {
                            format!("{value} ✗")
                        }
                    }
                };
                let _ = write!(line, " {cell} |");
            }
            let base = self.get(s, &self.baseline).and_then(metric.get);
            for p in &peers {
                let peer = self.get(s, p).and_then(metric.get);
                let ratio = match (base, peer) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                    _ => "n/a".into(),
                };
                let _ = write!(line, " {ratio} |");
            }
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out);
    }

    fn markdown(
        &self,
        machine: Option<&str>,
        notes: Option<&str>,
        charts: &[(String, String)],
    ) -> String {
        let mut out = String::new();
        let host = self
            .cells
            .values()
            .next()
            .map_or("unknown".to_string(), |r| r.host.clone());
        let _ = writeln!(
            out,
            "# Broker comparison: {} vs {}\n",
            self.baseline,
            self.peers()
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            out,
            "Host `{host}`. Generated by `bench-harness report` from {} runs. \
             Ratios are {} / peer; ✗ marks a run that failed its checks (see Failures).\n",
            self.cells.len(),
            self.baseline
        );
        if let Some(machine) = machine {
            let _ = writeln!(out, "## Machine\n\n```text\n{}\n```\n", machine.trim_end());
        }
        let _ = writeln!(out, "## Method\n");
        if let Some(notes) = notes {
            let _ = writeln!(out, "{}\n", notes.trim_end());
        }
        let sample = self
            .cells
            .values()
            .find(|r| r.scenario != "conn")
            .or_else(|| self.cells.values().next());
        if let Some(run) = sample {
            let p = &run.params;
            let _ = writeln!(
                out,
                "Common parameters: MQTT {}, QoS {}, {} B payload, {} s measured after {} s \
                 warm-up, keep-alive {} s, clean session. Per-scenario parameters are in the \
                 scenario names (`<kind>-<pubs>-<subs>-<topics>-<target out rate>`, Open MQTT \
                 Benchmark Suite style) and in the JSON lines next to this file.\n",
                p["protocol"].as_str().unwrap_or("?"),
                p["qos"],
                p["payload"],
                p["duration_s"],
                p["warmup_s"],
                p["keepalive"]
            );
        }
        let missing: Vec<&String> = self
            .brokers
            .iter()
            .filter(|b| self.scenarios.iter().all(|s| self.get(s, b).is_none()))
            .collect();
        if !self.brokers.contains(&self.baseline) || !missing.is_empty() {
            let _ = writeln!(
                out,
                "**No results for {}**: ratios are n/a.\n",
                self.baseline
            );
        }
        let _ = writeln!(
            out,
            "## Headline: broker CPU per delivered message\n\n\
             Broker CPU time (user + system, from /proc) during the measurement window divided by \
             the messages delivered in it. This is the efficiency figure that matters when the \
             broker is pinned to one core.\n"
        );
        self.metric_table(&mut out, &CPU_PER_MSG);
        for (heading, metrics) in [
            (
                "Throughput and latency",
                &[&THROUGHPUT, &P50, &P99, &P999, &RSS][..],
            ),
            ("Connections", &[&CONN_RATE, &RSS_PER_CONN][..]),
        ] {
            let mut section = String::new();
            for metric in metrics {
                self.metric_table(&mut section, metric);
            }
            if !section.is_empty() {
                let _ = writeln!(out, "## {heading}\n\n{section}");
            }
        }
        self.where_time_goes(&mut out);
        self.harness_bound(&mut out);
        if !charts.is_empty() {
            let _ = writeln!(out, "## Charts\n");
            for (file, _) in charts {
                let _ = writeln!(out, "![{file}]({file})\n");
            }
        }
        let _ = writeln!(out, "## All runs\n");
        let _ = writeln!(
            out,
            "| scenario | broker | ok | delivered/s | sent/s | p50 µs | p99 µs | p99.9 µs | max µs | \
             broker CPU % | CPU s / M msg | RSS MiB | conn/s | lost | dup | harness CPU % |"
        );
        let _ = writeln!(
            out,
            "|---|---|:-:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for s in &self.scenarios {
            for b in &self.brokers {
                let Some(r) = self.get(s, b) else { continue };
                let broker = r.broker.as_ref();
                let _ = writeln!(
                    out,
                    "| {s} | {b} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}{} |",
                    if r.ok { "✓" } else { "✗" },
                    fmt_num(r.delivered_per_s),
                    fmt_num(r.sent_per_s),
                    fmt_num(r.latency_us.p50),
                    fmt_num(r.latency_us.p99),
                    fmt_num(r.latency_us.p999),
                    fmt_num(r.latency_us.max),
                    broker.map_or("—".into(), |b| fmt_num(b.cpu_percent)),
                    broker
                        .and_then(|b| b.cpu_s_per_million_delivered)
                        .map_or("—".into(), fmt_num),
                    broker.map_or("—".into(), |b| fmt_num(b.rss_kb as f64 / 1024.0)),
                    fmt_num(r.connections.rate_per_s),
                    r.messages.lost,
                    r.messages.duplicated,
                    fmt_num(r.harness.cpu_percent),
                    if r.harness.saturated { " (saturated)" } else { "" },
                );
            }
        }
        let _ = writeln!(out);
        let failures: Vec<(&String, &String, &RunResult)> = self
            .scenarios
            .iter()
            .flat_map(|s| self.brokers.iter().map(move |b| (s, b)))
            .filter_map(|(s, b)| self.get(s, b).map(|r| (s, b, r)))
            .filter(|(_, _, r)| !r.ok || !r.warnings.is_empty())
            .collect();
        if !failures.is_empty() {
            let _ = writeln!(out, "## Failures and warnings\n");
            for (s, b, r) in failures {
                for e in &r.errors {
                    let _ = writeln!(out, "- **{s} / {b}**: error: {e}");
                }
                for w in &r.warnings {
                    let _ = writeln!(out, "- {s} / {b}: warning: {w}");
                }
            }
            let _ = writeln!(out);
        }
        out
    }

    /// "Where the time goes": system calls and context switches per unit of work.
    fn where_time_goes(&self, out: &mut String) {
        let runs: Vec<(&String, &String, &RunResult, &BrokerCounters)> = self
            .scenarios
            .iter()
            .flat_map(|s| self.brokers.iter().map(move |b| (s, b)))
            .filter_map(|(s, b)| {
                let r = self.get(s, b)?;
                let c = r.broker.as_ref()?.counters.as_ref()?;
                (c.units > 0).then_some((s, b, r, c))
            })
            .collect();
        if runs.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "## Where the time goes\n\n\
             The broker's system calls and context switches, all its threads, over the \
             measurement window divided by the messages delivered in it (connection storms: \
             over the set-up, divided by the connections set up). System calls are perf's \
             `raw_syscalls:sys_enter` (`perf stat -p <broker>`, enabled by the harness exactly \
             over the span; counting them puts every system call of the machine on the \
             kernel's tracing path, which costs the broker CPU, so bench-compare.sh takes \
             these counts from a second run of each scenario, whose CPU is in this section \
             only, and the headline figures from the runs without perf); \
             without perf only /proc is read: context switches from \
             /proc/<pid>/task/*/status and read/write-family calls from /proc/<pid>/io \
             (`syscr` + `syscw`: read/write/readv/writev, not recv/send/epoll/io_uring).\n"
        );
        let mut section = String::new();
        for metric in [
            &SYSCALLS_PER_MSG,
            &CTX_PER_MSG,
            &RW_PER_MSG,
            &CPU_PER_CONN,
            &SYSCALLS_PER_CONN,
            &CTX_PER_CONN,
        ] {
            self.metric_table(&mut section, metric);
        }
        out.push_str(&section);
        let _ = writeln!(
            out,
            "| scenario | broker | per | CPU µs | syscalls | context switches | voluntary | \
             involuntary | read/write syscalls | µs CPU per syscall | counted by |"
        );
        let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
        for (s, b, _, c) in runs {
            let per = |v: u64| fmt_num(v as f64 / c.units as f64);
            let opt = |v: Option<f64>| v.map_or("—".to_string(), fmt_num);
            let cpu_per_syscall = c
                .syscalls
                .filter(|n| *n > 0)
                .map(|n| c.cpu_s * 1e6 / n as f64);
            let _ = writeln!(
                out,
                "| {s} | {b} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.unit,
                opt(c.cpu_us_per_unit),
                opt(c.syscalls_per_unit),
                opt(c.ctx_switches_per_unit),
                per(c.ctx_voluntary),
                per(c.ctx_involuntary),
                opt(c.rw_syscalls_per_unit),
                opt(cpu_per_syscall),
                c.source
            );
        }
        let _ = writeln!(out);
    }

    /// Which figures measure the harness rather than the broker.
    fn harness_bound(&self, out: &mut String) {
        let mut lines = Vec::new();
        for s in &self.scenarios {
            for b in &self.brokers {
                let Some(r) = self.get(s, b) else { continue };
                let h = &r.harness;
                if h.saturated {
                    lines.push(format!(
                        "- {s} / {b}: the harness used {}% of {} core(s) in the window: its \
                         throughput and latency figures are harness-bound",
                        fmt_num(h.cpu_percent),
                        h.cores
                    ));
                }
                if h.setup_saturated {
                    lines.push(format!(
                        "- {s} / {b}: the harness used {}% of {} core(s) during the set-up: \
                         its connections/s is harness-bound",
                        fmt_num(h.setup_cpu_percent.unwrap_or(0.0)),
                        h.cores
                    ));
                }
            }
        }
        if lines.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "## Harness-bound figures\n\n\
             The harness saturated its own CPU in these runs: the figures named are a floor for \
             the broker, not its limit.\n\n{}\n",
            lines.join("\n")
        );
    }

    fn charts(&self, stem: &str) -> Vec<(String, String)> {
        let mut charts = Vec::new();
        let series: Vec<String> = self.brokers.clone();
        let mut chart = |file: String,
                         title: &str,
                         unit: &str,
                         groups: Vec<String>,
                         values: Vec<Vec<Option<f64>>>,
                         log: bool| {
            if groups.is_empty() || values.iter().flatten().all(Option::is_none) {
                return;
            }
            charts.push((file, bar_chart(title, unit, &groups, &series, &values, log)));
        };
        let by_metric = |metric: &Metric| {
            let groups: Vec<String> = self
                .scenarios
                .iter()
                .filter(|s| {
                    self.brokers
                        .iter()
                        .any(|b| self.get(s, b).and_then(metric.get).is_some())
                })
                .cloned()
                .collect();
            let values = groups
                .iter()
                .map(|s| {
                    self.brokers
                        .iter()
                        .map(|b| self.get(s, b).and_then(metric.get))
                        .collect()
                })
                .collect();
            (groups, values)
        };
        let (g, v) = by_metric(&THROUGHPUT);
        chart(
            format!("{stem}-throughput.svg"),
            "Delivered messages per second (higher is better)",
            "msg/s",
            g,
            v,
            true,
        );
        let (g, v) = by_metric(&CPU_PER_MSG);
        chart(
            format!("{stem}-cpu.svg"),
            "Broker CPU seconds per million delivered messages (lower is better)",
            "CPU s / M msg",
            g,
            v,
            false,
        );
        // Latency percentiles: one group per (scenario, percentile), log scale.
        let mut groups = Vec::new();
        let mut values = Vec::new();
        for s in &self.scenarios {
            if !s.starts_with("latency") {
                continue;
            }
            for metric in [&P50, &P99, &P999] {
                let row: Vec<Option<f64>> = self
                    .brokers
                    .iter()
                    .map(|b| self.get(s, b).and_then(metric.get))
                    .collect();
                if row.iter().any(Option::is_some) {
                    groups.push(format!(
                        "{s} {}",
                        metric.title.trim_start_matches("Latency ")
                    ));
                    values.push(row);
                }
            }
        }
        if groups.is_empty() {
            // No latency scenario: p99 of every scenario instead.
            (groups, values) = by_metric(&P99);
        }
        chart(
            format!("{stem}-latency.svg"),
            "Publish-to-receive latency percentiles (lower is better)",
            "µs",
            groups,
            values,
            true,
        );
        charts
    }
}

/// Short human number: 1234567 -> 1.23M, 12.3456 -> 12.3.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const PALETTE: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];

/// A grouped bar chart: one group per entry of `groups`, one bar per series in each.
/// `values[group][series]`; missing values leave a gap. `log` uses a log10 axis.
pub fn bar_chart(
    title: &str,
    unit: &str,
    groups: &[String],
    series: &[String],
    values: &[Vec<Option<f64>>],
    log: bool,
) -> String {
    let bar_w = 34.0;
    let group_gap = 30.0;
    let top = 64.0;
    let plot_h = 260.0;
    let group_w = bar_w * series.len().max(1) as f64 + group_gap;
    // Group labels are rotated 30 degrees: room below and, for the first, to the left.
    let longest = groups.iter().map(|g| g.chars().count()).max().unwrap_or(0) as f64;
    let bottom = 24.0 + longest * 3.3;
    let left = (longest * 5.6 - group_w / 2.0 + 10.0).max(80.0);
    let width = (left + 20.0 + group_w * groups.len() as f64).max(480.0);
    let height = top + plot_h + bottom;
    let max = values
        .iter()
        .flatten()
        .flatten()
        .fold(0.0f64, |m, v| m.max(*v));
    let min_pos = values
        .iter()
        .flatten()
        .flatten()
        .filter(|v| **v > 0.0)
        .fold(f64::MAX, |m, v| m.min(*v));
    // Axis: linear 0..nice(max), or log10 from the decade below the smallest value.
    let (lo, hi) = if log {
        // At least a third of a decade of bar under the smallest value.
        let lo = if min_pos == f64::MAX {
            0.0
        } else {
            (min_pos.log10() - 0.3).floor()
        };
        let hi = max.max(1.0).log10().ceil().max(lo + 1.0);
        (lo, hi)
    } else {
        (0.0, nice_ceiling(max))
    };
    let y = |v: f64| -> f64 {
        let frac = if log {
            if v <= 0.0 {
                0.0
            } else {
                (v.log10() - lo) / (hi - lo)
            }
        } else if hi > 0.0 {
            v / hi
        } else {
            0.0
        };
        top + plot_h - frac.clamp(0.0, 1.0) * plot_h
    };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{:.0}" y="20" font-size="14" text-anchor="middle" font-weight="bold">{}</text>"#,
        width / 2.0,
        escape(title)
    );
    // Grid and ticks.
    let ticks: Vec<f64> = if log {
        (lo as i32..=hi as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..=5).map(|i| hi * i as f64 / 5.0).collect()
    };
    for t in ticks {
        let ty = y(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#ddd"/><text x="{:.0}" y="{:.1}" text-anchor="end">{}</text>"##,
            width - 10.0,
            left - 6.0,
            ty + 4.0,
            fmt_num(t)
        );
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{left}" y1="{top}" x2="{left}" y2="{:.1}" stroke="#333"/><line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        top + plot_h,
        top + plot_h,
        width - 10.0,
        top + plot_h
    );
    let _ = writeln!(
        svg,
        r#"<text x="14" y="{:.0}" transform="rotate(-90 14 {:.0})" text-anchor="middle">{}{}</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        escape(unit),
        if log { " (log scale)" } else { "" }
    );
    for (g, group) in groups.iter().enumerate() {
        let gx = left + group_gap / 2.0 + g as f64 * group_w;
        for (s, value) in values[g].iter().enumerate() {
            let Some(v) = value else { continue };
            let x = gx + s as f64 * bar_w;
            let by = y(*v);
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{by:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                bar_w - 2.0,
                (top + plot_h - by).max(0.5),
                PALETTE[s % PALETTE.len()],
                escape(&series[s]),
                fmt_num(*v)
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" font-size="9.5" text-anchor="middle">{}</text>"#,
                x + (bar_w - 2.0) / 2.0,
                by - 3.0,
                fmt_num(*v)
            );
        }
        let cx = gx + bar_w * series.len() as f64 / 2.0;
        let ly = top + plot_h + 14.0;
        let _ = writeln!(
            svg,
            r#"<text x="{cx:.1}" y="{ly:.1}" text-anchor="end" transform="rotate(-30 {cx:.1} {ly:.1})">{}</text>"#,
            escape(group)
        );
    }
    // Legend, under the title.
    for (s, name) in series.iter().enumerate() {
        let lx = left + 10.0 + s as f64 * 120.0;
        let ly = 44.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{lx:.0}" y="{:.0}" width="12" height="12" fill="{}"/><text x="{:.0}" y="{ly:.0}">{}</text>"#,
            ly - 10.0,
            PALETTE[s % PALETTE.len()],
            lx + 16.0,
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The smallest 1, 2 or 5 times a power of ten at or above `v`.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{Broker, Percentiles};

    fn run(name: &str, label: &str, delivered: f64, cpu: f64) -> RunResult {
        RunResult {
            scenario: name.split('-').next().unwrap().into(),
            name: name.into(),
            label: Some(label.into()),
            ok: true,
            params: serde_json::json!({"protocol": "3.1.1", "qos": 1, "payload": 16,
                "duration_s": 3.0, "warmup_s": 1.0, "keepalive": 300}),
            delivered_per_s: delivered,
            latency_us: Percentiles {
                count: 10,
                p50: 50.0,
                p99: 500.0,
                p999: 900.0,
                ..Default::default()
            },
            broker: Some(Broker {
                cpu_s_per_million_delivered: Some(cpu),
                rss_kb: 10240,
                ..Default::default()
            }),
            host: "box".into(),
            ..Default::default()
        }
    }

    #[test]
    fn ratios_are_baseline_over_peer() {
        let runs = vec![
            run("p2p-10-10-10-max", "mosquitto", 50_000.0, 10.0),
            run("p2p-10-10-10-max", "shardmq", 100_000.0, 4.0),
            run("latency-10-10-10-1K", "mosquitto", 1000.0, 50.0),
        ];
        let table = Table::new(&runs, "shardmq");
        assert_eq!(table.brokers, vec!["shardmq", "mosquitto"]);
        let charts = table.charts("r");
        let md = table.markdown(Some("Model name: test cpu"), Some("pinned"), &charts);
        assert!(md.contains("| scenario | shardmq | mosquitto | shardmq/mosquitto |"));
        // CPU per message: 4 / 10.
        assert!(md.contains("| p2p-10-10-10-max | 4 | 10 | 0.40 |"), "{md}");
        // Throughput: 100k / 50k.
        assert!(
            md.contains("| p2p-10-10-10-max | 100.0k | 50.0k | 2.00 |"),
            "{md}"
        );
        // Missing baseline run: n/a.
        assert!(
            md.contains("| latency-10-10-10-1K | — | 50 | n/a |"),
            "{md}"
        );
        assert!(md.contains("test cpu"));
        let names: Vec<&str> = charts.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            names,
            vec!["r-throughput.svg", "r-cpu.svg", "r-latency.svg"]
        );
        for (_, svg) in &charts {
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
            assert!(svg.contains("shardmq") && svg.contains("mosquitto"));
        }
    }

    #[test]
    fn where_the_time_goes_and_harness_bound() {
        let mut a = run("quiet-1K-1K-1K-20K", "shardmq", 20_000.0, 45.0);
        let mut b = run("quiet-1K-1K-1K-20K", "mosquitto", 20_000.0, 32.0);
        for (r, syscalls, ctx) in [(&mut a, 100_000, 20_000), (&mut b, 50_000, 40_000)] {
            r.broker.as_mut().unwrap().counters = Some(BrokerCounters {
                span: "window".into(),
                unit: "message".into(),
                units: 10_000,
                cpu_s: 0.4,
                syscalls: Some(syscalls),
                ctx_switches_perf: Some(ctx),
                ctx_voluntary: ctx - 100,
                ctx_involuntary: 100,
                rw_syscalls: Some(0),
                cpu_us_per_unit: Some(40.0),
                syscalls_per_unit: Some(syscalls as f64 / 10_000.0),
                ctx_switches_per_unit: Some(ctx as f64 / 10_000.0),
                rw_syscalls_per_unit: Some(0.0),
                source: "perf".into(),
            });
        }
        let mut storm = run("conn-tcp-10K-max", "mosquitto", 0.0, 0.0);
        storm.scenario = "conn".into();
        storm.harness.setup_saturated = true;
        storm.harness.setup_cpu_percent = Some(99.0);
        storm.harness.cores = 1;
        let runs = vec![a, b, storm];
        let table = Table::new(&runs, "shardmq");
        let md = table.markdown(None, None, &[]);
        assert!(md.contains("## Where the time goes"), "{md}");
        assert!(
            md.contains("### System calls per delivered message"),
            "{md}"
        );
        // 10 vs 5 syscalls per message: ratio 2.
        assert!(
            md.contains("| quiet-1K-1K-1K-20K | 10 | 5 | 2.00 |"),
            "{md}"
        );
        assert!(md.contains("| quiet-1K-1K-1K-20K | 2 | 4 | 0.50 |"), "{md}");
        assert!(
            md.contains("| quiet-1K-1K-1K-20K | shardmq | message | 40 | 10 | 2 |"),
            "{md}"
        );
        assert!(md.contains("## Harness-bound figures"), "{md}");
        assert!(
            md.contains(
                "conn-tcp-10K-max / mosquitto: the harness used 99% of 1 core(s) during the set-up"
            ),
            "{md}"
        );
    }

    #[test]
    fn counters_come_from_the_perf_runs() {
        let mut runs = vec![run("quiet-1K-1K-1K-20K", "shardmq", 20_000.0, 45.0)];
        let mut perf = run("quiet-1K-1K-1K-20K", "shardmq", 20_000.0, 47.0);
        perf.broker.as_mut().unwrap().counters = Some(BrokerCounters {
            syscalls: Some(7),
            source: "perf".into(),
            ..Default::default()
        });
        let other = run("quiet-1K-1K-1K-20K", "mosquitto", 20_000.0, 30.0);
        take_counters(&mut runs, &[perf, other]);
        let b = runs[0].broker.as_ref().unwrap();
        assert_eq!(b.cpu_s_per_million_delivered, Some(45.0));
        assert_eq!(b.counters.as_ref().unwrap().syscalls, Some(7));
    }

    #[test]
    fn numbers_and_axes() {
        assert_eq!(fmt_num(1_234_567.0), "1.23M");
        assert_eq!(fmt_num(12_345.0), "12.3k");
        assert_eq!(fmt_num(12.345), "12.35");
        assert_eq!(fmt_num(0.01234), "0.012");
        assert_eq!(fmt_num(5.0), "5");
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(120.0), 200.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
        assert_eq!(escape("a<b&\"c\""), "a&lt;b&amp;&quot;c&quot;");
    }
}
