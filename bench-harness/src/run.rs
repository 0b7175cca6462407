//! Running a scenario: the worker (threads of one process) and the controller (the process the
//! user started: it starts the workers, in-process or as child processes, gives them one start
//! time, samples the broker during the window and merges the results).
//!
//! Child protocol, one line each way: the child prints `READY <json ReadyInfo>` once its
//! connections are set up and reads `GO <start ns>` (or `ABORT`) from stdin; at the end it prints
//! `RESULT <json WorkerResult>` (or `ERROR <text>`). Tables and logs go to stderr only.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::config::{Config, Scenario};
use crate::engine::{Engine, ABORT};
use crate::perf::{PerfCounter, PerfCounts};
use crate::plan::{plan_worker, ConnPlan, RolePlan};
use crate::stats::{ReadyInfo, WorkerResult};
use crate::sys::{self, mono_ns, sleep_until, ProcSample};

/// How a worker reports set-up and learns when to start.
pub trait Control {
    /// Reports the worker's set-up outcome; returns the start time, or `None` to abort.
    fn ready(&mut self, info: &ReadyInfo) -> Option<u64>;
}

/// Sockets a process keeps free of its file limit (stdio, epoll, pipes).
const FD_RESERVE: u64 = 64;

/// Runs worker `worker`'s share of the connections on `cfg.threads` threads.
pub fn run_worker(
    cfg: Arc<Config>,
    worker: usize,
    ctl: &mut dyn Control,
) -> Result<WorkerResult, String> {
    let cpu_start = sys::self_cpu_s();
    let nofile = sys::raise_nofile();
    let plans = plan_worker(&cfg, worker);
    let conns: usize = plans.iter().map(Vec::len).sum();
    if conns as u64 + FD_RESERVE > nofile {
        let per = nofile.saturating_sub(FD_RESERVE).max(1);
        return Err(format!(
            "worker {worker} needs {conns} sockets but the open-file limit is {nofile}: \
             use --workers {} or more (or raise `ulimit -n`, see scripts/tune-linux.sh)",
            (cfg.total_connections() as u64).div_ceil(per)
        ));
    }
    let go = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut handles = Vec::new();
    for (t, plan) in plans.into_iter().enumerate() {
        let engine = Engine::new(cfg.clone(), plan, go.clone(), cfg.threads)
            .map_err(|e| format!("event loop: {e}"))?;
        let tx = ready_tx.clone();
        let handle = thread::Builder::new()
            .name(format!("bh-w{worker}-t{t}"))
            .spawn(move || engine.run(tx))
            .map_err(|e| format!("spawn: {e}"))?;
        handles.push(handle);
    }
    drop(ready_tx);
    let mut info = ReadyInfo::default();
    let mut died = false;
    for _ in 0..handles.len() {
        match ready_rx.recv() {
            Ok(one) => info.merge(&one),
            Err(_) => {
                died = true;
                break;
            }
        }
    }
    info.cpu_s = sys::self_cpu_s() - cpu_start;
    let start = if died {
        info.errors.add("an event-loop thread died during set-up");
        None
    } else {
        ctl.ready(&info)
    };
    go.store(start.unwrap_or(ABORT), Ordering::Release);
    let mut cpu_s = 0.0;
    if let Some(start) = start {
        let measure_start = start + (cfg.warmup_s * 1e9) as u64;
        let measure_end = measure_start + (cfg.duration_s * 1e9) as u64;
        sleep_until(measure_start);
        let before = sys::self_cpu_s();
        sleep_until(measure_end);
        cpu_s = sys::self_cpu_s() - before;
    }
    let mut result = WorkerResult::default();
    for handle in handles {
        match handle.join() {
            Ok(one) => result.merge(&one),
            Err(_) => result.errors.add("an event-loop thread panicked"),
        }
    }
    if cfg.persistent {
        clear_sessions(&cfg, worker, &mut result);
    }
    result.cpu_s = cpu_s;
    result.nofile = nofile;
    if died {
        return Err("an event-loop thread died during set-up".into());
    }
    Ok(result)
}

/// The persistent sessions of `worker`'s client ids, discarded after the run: every id
/// connects again with a clean session (MQTT 5.0: Session Expiry Interval 0) and disconnects,
/// on the same threads, so a broker with a durable store does not keep (or journal) what the
/// sessions still hold. Failures are warnings: the figures are already taken.
fn clear_sessions(cfg: &Arc<Config>, worker: usize, result: &mut WorkerResult) {
    let mut clean = Config::clone(cfg);
    clean.persistent = false;
    clean.session_expiry_s = None;
    let clean = Arc::new(clean);
    // Already "aborted": each thread sets its connections up, then closes them at once.
    let go = Arc::new(AtomicU64::new(ABORT));
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut handles = Vec::new();
    for (t, plan) in clean_plans(plan_worker(cfg, worker))
        .into_iter()
        .enumerate()
    {
        let engine = match Engine::new(clean.clone(), plan, go.clone(), cfg.threads) {
            Ok(e) => e,
            Err(e) => {
                result
                    .warnings
                    .add(format!("clearing sessions: event loop: {e}"));
                continue;
            }
        };
        let tx = ready_tx.clone();
        match thread::Builder::new()
            .name(format!("bh-w{worker}-clear{t}"))
            .spawn(move || engine.run(tx))
        {
            Ok(h) => handles.push(h),
            Err(e) => result
                .warnings
                .add(format!("clearing sessions: spawn: {e}")),
        }
    }
    drop(ready_tx);
    while ready_rx.recv().is_ok() {}
    let mut cleared = WorkerResult::default();
    for handle in handles {
        match handle.join() {
            Ok(one) => cleared.merge(&one),
            Err(_) => result.warnings.add("clearing sessions: a thread panicked"),
        }
    }
    result.sessions_cleared += cleared.counts.conn_ok;
    if cleared.counts.conn_failed > 0 {
        result.warnings.add(format!(
            "{} persistent sessions could not be cleared at the end (they stay on the broker{})",
            cleared.counts.conn_failed,
            if cfg.session_expiry_s.is_some() {
                " until their Session Expiry Interval"
            } else {
                ""
            }
        ));
        for line in cleared.errors.lines() {
            result.warnings.add(format!("clearing sessions: {line}"));
        }
    }
}

/// The same connections (client ids, threads, source addresses) as idle clients.
fn clean_plans(threads: Vec<Vec<ConnPlan>>) -> Vec<Vec<ConnPlan>> {
    threads
        .into_iter()
        .map(|plans| {
            plans
                .into_iter()
                .map(|p| ConnPlan {
                    role: RolePlan::Idle,
                    ..p
                })
                .collect()
        })
        .collect()
}

/// Worker side of the child protocol: stdout / stdin.
struct StdioControl;

impl Control for StdioControl {
    fn ready(&mut self, info: &ReadyInfo) -> Option<u64> {
        let mut out = std::io::stdout().lock();
        let line = serde_json::to_string(info).expect("ReadyInfo serialises");
        writeln!(out, "READY {line}").ok()?;
        out.flush().ok()?;
        drop(out);
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer).ok()?;
        answer.trim().strip_prefix("GO ")?.parse().ok()
    }
}

/// Entry point of a child worker process.
pub fn child_main(cfg: Config) -> i32 {
    let worker = cfg.worker_index.unwrap_or(0);
    let result = run_worker(Arc::new(cfg), worker, &mut StdioControl);
    let mut out = std::io::stdout().lock();
    match result {
        Ok(result) => {
            let line = serde_json::to_string(&result).expect("WorkerResult serialises");
            let _ = writeln!(out, "RESULT {line}");
            0
        }
        Err(e) => {
            let _ = writeln!(out, "ERROR {}", e.replace('\n', " "));
            1
        }
    }
}

enum Msg {
    Ready(ReadyInfo),
    Result(Box<WorkerResult>),
    Failed(String),
}

struct LocalControl {
    tx: Sender<(usize, Msg)>,
    go: Receiver<Option<u64>>,
}

impl Control for LocalControl {
    fn ready(&mut self, info: &ReadyInfo) -> Option<u64> {
        self.tx.send((0, Msg::Ready(info.clone()))).ok()?;
        self.go.recv().ok().flatten()
    }
}

enum GoSender {
    Local(Sender<Option<u64>>),
    Child(ChildStdin),
}

impl GoSender {
    fn send(&mut self, go: Option<u64>) {
        match self {
            GoSender::Local(tx) => {
                let _ = tx.send(go);
            }
            GoSender::Child(stdin) => {
                let line = match go {
                    Some(t) => format!("GO {t}\n"),
                    None => "ABORT\n".into(),
                };
                let _ = stdin.write_all(line.as_bytes());
                let _ = stdin.flush();
            }
        }
    }
}

/// The broker at the moments that matter.
#[derive(Debug, Clone, Copy, Default)]
pub struct BrokerSamples {
    /// Before any connection.
    pub before: Option<ProcSample>,
    /// At the start time (after set-up).
    pub at_go: Option<ProcSample>,
    /// At the start of the measurement window.
    pub window_start: Option<ProcSample>,
    /// At the end of the window.
    pub window_end: Option<ProcSample>,
}

/// What the controller hands to the output stage.
#[derive(Debug)]
pub struct Outcome {
    /// Merged results (empty when the run was aborted before the start).
    pub result: WorkerResult,
    /// Merged set-up outcome.
    pub ready: ReadyInfo,
    /// Broker samples.
    pub broker: BrokerSamples,
    /// Why the run stopped early, if it did.
    pub aborted: Option<String>,
    /// The broker's system calls and context switches from perf (--perf) over the window
    /// (conn: over the set-up, from the `before` sample to the `at_go` one).
    pub perf: Option<PerfCounts>,
}

/// `perf stat` on the broker, enabled over one span; any failure turns it off with a note.
struct Perf(Option<PerfCounter>);

impl Perf {
    fn start(cfg: &Config, notes: &mut Vec<String>) -> Perf {
        if !cfg.perf {
            return Perf(None);
        }
        let Some(pid) = cfg.broker_pid else {
            notes.push("--perf needs --broker-pid: no perf counts".into());
            return Perf(None);
        };
        match PerfCounter::start(pid) {
            Ok(p) => Perf(Some(p)),
            Err(e) => {
                notes.push(format!("perf: {e}; only /proc counters"));
                Perf(None)
            }
        }
    }

    fn switch(&mut self, on: bool, notes: &mut Vec<String>) {
        let Some(p) = &mut self.0 else { return };
        let done = if on { p.enable() } else { p.disable() };
        if let Err(e) = done {
            notes.push(format!("perf: {e}; only /proc counters"));
            self.0 = None;
        }
    }

    fn finish(self, notes: &mut Vec<String>) -> Option<PerfCounts> {
        match self.0?.finish() {
            Ok(c) => Some(c),
            Err(e) => {
                notes.push(format!("perf: {e}; only /proc counters"));
                None
            }
        }
    }
}

fn sample(pid: Option<u32>, errors: &mut Vec<String>) -> Option<ProcSample> {
    let pid = pid?;
    match sys::sample_process(pid) {
        Ok(s) => Some(s),
        Err(e) => {
            errors.push(format!("cannot read /proc/{pid}: {e}"));
            None
        }
    }
}

/// Runs the whole scenario and merges what every worker measured.
pub fn run_controller(cfg: Config) -> Outcome {
    let cfg = Arc::new(cfg);
    let mut notes = Vec::new();
    // perf counts the set-up of a connection storm, the measurement window otherwise.
    let perf_on_setup = cfg.scenario == Scenario::Conn;
    let mut perf = Perf::start(&cfg, &mut notes);
    if perf_on_setup {
        perf.switch(true, &mut notes);
    }
    let mut broker = BrokerSamples {
        before: sample(cfg.broker_pid, &mut notes),
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel::<(usize, Msg)>();
    let mut senders = Vec::new();
    let mut children: Vec<Child> = Vec::new();
    if cfg.workers == 1 {
        let (go_tx, go_rx) = mpsc::channel();
        senders.push(GoSender::Local(go_tx));
        let tx = tx.clone();
        let cfg = cfg.clone();
        thread::spawn(move || {
            let mut ctl = LocalControl {
                tx: tx.clone(),
                go: go_rx,
            };
            let msg = match run_worker(cfg, 0, &mut ctl) {
                Ok(r) => Msg::Result(Box::new(r)),
                Err(e) => Msg::Failed(e),
            };
            let _ = tx.send((0, msg));
        });
    } else {
        let exe = std::env::current_exe().expect("own executable path");
        for w in 0..cfg.workers {
            let mut command = Command::new(&exe);
            command
                .args(std::env::args_os().skip(1))
                .arg("--worker-index")
                .arg(w.to_string());
            if !std::env::args().any(|a| a == "--run-id" || a.starts_with("--run-id=")) {
                command.arg("--run-id").arg(cfg.run_id.to_string());
            }
            let mut child = match command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
            {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send((w, Msg::Failed(format!("cannot start worker: {e}"))));
                    continue;
                }
            };
            senders.push(GoSender::Child(child.stdin.take().expect("piped")));
            let stdout = child.stdout.take().expect("piped");
            let tx = tx.clone();
            thread::spawn(move || {
                let mut got_result = false;
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let msg = if let Some(json) = line.strip_prefix("READY ") {
                        serde_json::from_str(json)
                            .map(Msg::Ready)
                            .unwrap_or_else(|e| Msg::Failed(format!("bad READY line: {e}")))
                    } else if let Some(json) = line.strip_prefix("RESULT ") {
                        got_result = true;
                        serde_json::from_str(json)
                            .map(|r| Msg::Result(Box::new(r)))
                            .unwrap_or_else(|e| Msg::Failed(format!("bad RESULT line: {e}")))
                    } else if let Some(text) = line.strip_prefix("ERROR ") {
                        got_result = true;
                        Msg::Failed(text.to_string())
                    } else {
                        continue;
                    };
                    if tx.send((w, msg)).is_err() {
                        return;
                    }
                }
                if !got_result {
                    let _ = tx.send((w, Msg::Failed("worker exited without a result".into())));
                }
            });
            children.push(child);
        }
    }
    drop(tx);

    // Set-up: every worker reports (its threads fail connections past their own deadline).
    let setup_budget_s = cfg.connect_timeout_s
        + 60.0
        + if cfg.conn_rate > 0.0 {
            cfg.total_connections() as f64 / cfg.conn_rate
        } else {
            cfg.total_connections() as f64 / 1000.0
        };
    let setup_deadline = mono_ns() + (setup_budget_s * 1e9) as u64;
    let mut ready = ReadyInfo::default();
    let mut ready_count = 0;
    let mut failures: Vec<String> = Vec::new();
    let mut result = WorkerResult::default();
    let mut results = 0;
    while ready_count + failures.len() < cfg.workers {
        let left = setup_deadline.saturating_sub(mono_ns());
        match rx.recv_timeout(Duration::from_nanos(left)) {
            Ok((_, Msg::Ready(info))) => {
                ready.merge(&info);
                ready_count += 1;
            }
            Ok((w, Msg::Failed(e))) => failures.push(format!("worker {w}: {e}")),
            Ok((_, Msg::Result(r))) => {
                result.merge(&r);
                results += 1;
            }
            Err(RecvTimeoutError::Timeout) => {
                failures.push("workers did not finish connecting in time".into());
                break;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let abort = if !failures.is_empty() {
        Some(failures.join("; "))
    } else if ready.conn_ok == 0 {
        Some(format!(
            "no connection could be set up to {} ({})",
            cfg.addr,
            ready.errors.lines().join("; ")
        ))
    } else if cfg.scenario != Scenario::Conn && ready.conn_failed > 0 {
        Some(format!(
            "{} of {} connections failed to set up ({})",
            ready.conn_failed,
            cfg.total_connections(),
            ready.errors.lines().join("; ")
        ))
    } else {
        None
    };
    let go = abort.is_none().then(|| mono_ns() + 200_000_000);
    for sender in &mut senders {
        sender.send(go);
    }
    if let Some(go) = go {
        sleep_until(go);
        broker.at_go = sample(cfg.broker_pid, &mut notes);
        if perf_on_setup {
            perf.switch(false, &mut notes);
        }
        let measure_start = go + (cfg.warmup_s * 1e9) as u64;
        let measure_end = measure_start + (cfg.duration_s * 1e9) as u64;
        sleep_until(measure_start);
        broker.window_start = sample(cfg.broker_pid, &mut notes);
        if !perf_on_setup {
            perf.switch(true, &mut notes);
        }
        sleep_until(measure_end);
        broker.window_end = sample(cfg.broker_pid, &mut notes);
        if !perf_on_setup {
            perf.switch(false, &mut notes);
        }
    }
    let perf = if go.is_some() {
        perf.finish(&mut notes)
    } else {
        None
    };
    // --persistent: the workers connect every client id again to clear its session.
    let clear_s = if cfg.persistent { setup_budget_s } else { 0.0 };
    let result_deadline = mono_ns() + ((cfg.drain_s + 60.0 + clear_s) * 1e9) as u64;
    let expected = cfg.workers - failures.len();
    let mut late_failures = Vec::new();
    while results + late_failures.len() < expected {
        let left = result_deadline.saturating_sub(mono_ns());
        match rx.recv_timeout(Duration::from_nanos(left)) {
            Ok((_, Msg::Result(r))) => {
                result.merge(&r);
                results += 1;
            }
            Ok((w, Msg::Failed(e))) => late_failures.push(format!("worker {w}: {e}")),
            Ok((_, Msg::Ready(_))) => {}
            Err(_) => {
                late_failures.push("workers did not report in time".into());
                break;
            }
        }
    }
    for mut child in children {
        let deadline = mono_ns() + 5_000_000_000;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if mono_ns() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }
    for failure in late_failures {
        result.errors.add(failure);
    }
    for note in notes {
        result.warnings.add(note);
    }
    Outcome {
        result,
        ready,
        broker,
        aborted: abort,
        perf,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command};
    use clap::Parser;

    #[test]
    fn clean_plans_keep_ids_threads_and_sources() {
        let cli = Cli::try_parse_from([
            "bench-harness",
            "p2p",
            "--pubs",
            "3",
            "--threads",
            "2",
            "--source-ips",
            "2",
            "--run-id",
            "7",
            "--persistent",
        ])
        .unwrap();
        let Command::P2p(a) = cli.command else {
            unreachable!()
        };
        let cfg = Config::resolve(Scenario::P2p, &a).unwrap();
        let plans = plan_worker(&cfg, 0);
        let clean = clean_plans(plans.clone());
        assert_eq!(clean.len(), plans.len());
        for (ours, theirs) in clean.iter().zip(&plans) {
            assert_eq!(ours.len(), theirs.len());
            for (o, t) in ours.iter().zip(theirs) {
                assert_eq!(o.role, RolePlan::Idle);
                assert_eq!((&o.client_id, o.source), (&t.client_id, t.source));
            }
        }
        assert_eq!(clean[0][0].client_id, "bh7s0");
    }
}
