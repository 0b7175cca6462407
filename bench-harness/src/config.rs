//! Command line and the resolved run configuration.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use shardmq::codec::{ProtocolVersion, QoS};

use crate::payload::HEADER_LEN;
use crate::transport::{TlsClient, TlsOptions, Transport};

/// Load generator for MQTT brokers: scenarios of the Open MQTT Benchmark Suite, scaled by flags.
///
/// Prints a table on stderr and one JSON line per run on stdout. Exits non-zero when a QoS 1/2
/// message was lost, a connection failed or dropped, or the broker broke the protocol.
#[derive(Debug, Parser)]
#[command(name = "bench-harness", version)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Scenarios and the report generator.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connection storm: connect --clients (default 1000) at --conn-rate per second (default
    /// 1000), hold them idle for --warmup + --duration seconds; reports connections/s,
    /// failures, connect latency and the broker's RSS per idle connection (--broker-pid).
    Conn(RunArgs),
    /// Point to point: --pubs publishers (default 100), each to its own subscriber on a unique
    /// topic, at --rate per publisher (default 0 = as fast as the in-flight window allows).
    P2p(RunArgs),
    /// Fan-out: --pubs publishers (default 5) on --topics topics (default = pubs), --subs
    /// subscribers (default 100) each on all of them, --rate per publisher (default 50).
    Fanout(RunArgs),
    /// Fan-in: --pubs publishers (default 1000) at --rate (default 10) to --subs subscribers
    /// (default 5) on one wildcard filter, either each receiving everything (--mode wildcard)
    /// or one shared subscription `$share/<group>/...` (--mode shared, the default; MQTT 5.0 by
    /// default).
    Fanin(RunArgs),
    /// Latency: --pubs publisher/subscriber pairs (default 10) at a fixed moderate total rate
    /// (--total-rate, default 1000 msg/s); publish-to-receive latency percentiles.
    Latency(RunArgs),
    /// Many quiet connections: --pubs publisher/subscriber pairs (default 1000), each pair on
    /// its own topic, each publisher paced at a low --rate (default 20 msg/s), --payload default
    /// 64 B. Point to point like p2p, named apart: the broker's cost per message when most
    /// connections are idle most of the time (syscall-bound, not user-space-bound).
    Quiet(RunArgs),
    /// Builds a markdown report with SVG charts from JSON result lines (bench-compare.sh).
    Report(ReportArgs),
}

/// How fan-in subscribers subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaninMode {
    /// Every subscriber on `<prefix>/fanin/#`: each receives every message.
    Wildcard,
    /// All subscribers in `$share/<group>/<prefix>/fanin/#`: each message goes to one of them.
    Shared,
}

/// Flags shared by every scenario.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port (default: 1883; --tls 8883; --ws 8080; --tls --ws 8443).
    #[arg(long)]
    pub port: Option<u16>,
    /// MQTT over TLS (rustls, ring provider; TLS 1.2 and 1.3); with --ws: WebSocket over TLS.
    /// Needs --cafile or --insecure. Every connection makes a full handshake (no resumption)
    /// unless --tls-resume.
    #[arg(long)]
    pub tls: bool,
    /// PEM file of the CA certificate(s) the broker's certificate is checked against (--tls).
    #[arg(long)]
    pub cafile: Option<PathBuf>,
    /// Skip the broker certificate's verification (handshake signatures are still checked).
    #[arg(long)]
    pub insecure: bool,
    /// PEM client certificate chain (--tls, with --key).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Name sent as SNI and checked against the broker's certificate (--tls).
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Only this TLS version (default: 1.2 or 1.3, as negotiated).
    #[arg(long, value_parser = ["1.2", "1.3"])]
    pub tls_version: Option<String>,
    /// Resume TLS sessions across connections (tickets / session ids): handshakes get cheaper.
    #[arg(long)]
    pub tls_resume: bool,
    /// MQTT over WebSocket (RFC 6455, subprotocol "mqtt"); with --tls: wss.
    #[arg(long)]
    pub ws: bool,
    /// Request path of the WebSocket upgrade (--ws).
    #[arg(long, default_value = "/mqtt")]
    pub ws_path: String,
    /// QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload bytes (at least 16: publisher id, sequence number and send time; default 16,
    /// quiet: 64).
    #[arg(long)]
    pub payload: Option<usize>,
    /// MQTT protocol version: 3.1.1 or 5 (default 3.1.1; 5 for fan-in on shared subscriptions).
    #[arg(long, value_parser = ["3.1.1", "5"])]
    pub protocol: Option<String>,
    /// Idle clients (conn).
    #[arg(long)]
    pub clients: Option<usize>,
    /// Publishers (p2p and latency: publisher/subscriber pairs).
    #[arg(long)]
    pub pubs: Option<usize>,
    /// Subscribers (fanout, fanin).
    #[arg(long)]
    pub subs: Option<usize>,
    /// Distinct topics the publishers spread over (fanout).
    #[arg(long)]
    pub topics: Option<usize>,
    /// Messages per second per publisher; 0 = as fast as the in-flight window and the socket allow.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Total messages per second over all publishers (overrides --rate; latency default 1000).
    #[arg(long)]
    pub total_rate: Option<f64>,
    /// Measured seconds (conn: idle hold after the storm).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds of load before measuring (messages sent then are still checked for loss).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Seconds to wait, after publishing stops, for messages and acknowledgements in flight.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Event-loop threads per process (default: the CPUs this process may run on).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Worker processes (re-executions of this binary) for more connections than one process's
    /// file limit allows; results are merged.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// QoS 1/2 messages in flight per publisher (also capped by the broker's Receive Maximum).
    #[arg(long, default_value_t = 64)]
    pub inflight: u32,
    /// New connections per second over all threads and workers; 0 = as fast as possible
    /// (default 0, conn: 1000).
    #[arg(long)]
    pub conn_rate: Option<f64>,
    /// Connection handshakes in progress at once, over all threads and workers (keep it under
    /// the broker's listen backlog, or SYNs are dropped and retried a second later).
    #[arg(long, default_value_t = 128)]
    pub max_pending: usize,
    /// Seconds before an unanswered TCP connect + CONNECT (+ SUBSCRIBE) counts as failed.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// MQTT keep-alive seconds (PINGREQ every half of it when idle); 0 disables.
    #[arg(long, default_value_t = 300)]
    pub keepalive: u16,
    /// Fan-in subscription kind.
    #[arg(long, value_enum)]
    pub mode: Option<FaninMode>,
    /// Shared subscription group name (fan-in, --mode shared).
    #[arg(long, default_value = "bench")]
    pub share_group: String,
    /// Persistent sessions: every client connects with clean session 0 (3.1.1) / clean start
    /// false and a Session Expiry Interval (5.0) under a client id unique to the run, so a
    /// broker with a durable store journals every QoS 1/2 message to a subscriber. At the end
    /// every client id connects again with a clean session (and disconnects) to discard what
    /// the sessions still hold. The name gets a `-persistent` suffix.
    #[arg(long)]
    pub persistent: bool,
    /// Session Expiry Interval in seconds of --persistent sessions (MQTT 5.0 only; 3.1.1
    /// sessions do not expire): bounds what a run that could not clear its sessions leaves.
    #[arg(long, requires = "persistent")]
    pub session_expiry: Option<u32>,
    /// Source addresses 127.0.0.1, .2, ... to spread connections over (bind before connect);
    /// 0 = automatic: one per 25,000 connections when the broker is on loopback.
    #[arg(long, default_value_t = 0)]
    pub source_ips: usize,
    /// Broker process id: its RSS and CPU time (from /proc) go into the result.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Also count the broker's system calls and context switches with `perf stat -p` over the
    /// measurement window (conn: over the set-up), for the report's "where the time goes"
    /// (needs --broker-pid, perf and the permission to trace the broker). Without it, or when
    /// perf fails, only /proc counters are recorded (context switches of all the broker's
    /// threads, read/write-family syscalls from /proc/<pid>/io).
    #[arg(long)]
    pub perf: bool,
    /// Writes the latency histogram (conn: connect latency) as HdrHistogram percentile text.
    #[arg(long)]
    pub hdr_out: Option<PathBuf>,
    /// Free text copied into the JSON (e.g. the broker's name).
    #[arg(long)]
    pub label: Option<String>,
    /// User name every client sends in its CONNECT (default: none).
    #[arg(long)]
    pub username: Option<String>,
    /// Password every client sends in its CONNECT (needs --username).
    #[arg(long, requires = "username")]
    pub password: Option<String>,
    /// Internal: run as worker process N of --workers (set by the parent).
    #[arg(long, hide = true)]
    pub worker_index: Option<usize>,
    /// Internal: the run's id, shared by its worker processes (topic and client id prefix).
    #[arg(long, hide = true)]
    pub run_id: Option<u32>,
}

/// Flags of `report`.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// JSON lines written by the scenario runs (each with --label = broker name).
    #[arg(long)]
    pub input: PathBuf,
    /// Markdown file to write; the SVG charts go next to it.
    #[arg(long)]
    pub out: PathBuf,
    /// Text file describing the machine (lscpu, kernel), embedded as is.
    #[arg(long)]
    pub machine: Option<PathBuf>,
    /// The broker the others are compared with (ratios are this / peer).
    #[arg(long, default_value = "shardmq")]
    pub baseline: String,
    /// Free text for the report's method section (commands, pinning).
    #[arg(long)]
    pub notes: Option<String>,
    /// JSON lines of the same scenarios run again with --perf: their broker counters replace
    /// the main runs' in "where the time goes" (perf's tracing costs the broker CPU, so the
    /// headline figures come from runs without it).
    #[arg(long)]
    pub counters: Option<PathBuf>,
}

/// The scenario kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Connection storm and idle hold.
    Conn,
    /// Point to point.
    P2p,
    /// One to many.
    Fanout,
    /// Many to few.
    Fanin,
    /// Latency at a moderate rate.
    Latency,
    /// Many quiet point-to-point pairs.
    Quiet,
}

impl Scenario {
    /// The subcommand name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Conn => "conn",
            Scenario::P2p => "p2p",
            Scenario::Fanout => "fanout",
            Scenario::Fanin => "fanin",
            Scenario::Latency => "latency",
            Scenario::Quiet => "quiet",
        }
    }
}

/// Everything a run needs, resolved from the flags and the scenario's defaults. Serialised as
/// the "params" of the JSON result.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Scenario kind.
    pub scenario: Scenario,
    /// Open MQTT Benchmark Suite style name: `<kind>-<pubs>-<subs>-<topics>-<rate>`.
    pub name: String,
    /// Free text (the broker's name in comparisons).
    pub label: Option<String>,
    /// Broker host as given.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Resolved broker address.
    #[serde(skip)]
    pub addr: SocketAddr,
    /// tcp, tls, ws or wss.
    pub transport: Transport,
    /// TLS flags (tls, wss).
    pub tls: Option<TlsOptions>,
    /// The client configuration built from them.
    #[serde(skip)]
    pub tls_client: Option<TlsClient>,
    /// WebSocket request path (ws, wss).
    pub ws_path: Option<String>,
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// Payload bytes.
    pub payload: usize,
    /// "3.1.1" or "5".
    pub protocol: String,
    /// Idle clients (conn).
    pub clients: usize,
    /// Publishers.
    pub pubs: usize,
    /// Subscribers.
    pub subs: usize,
    /// Topics publishers publish on.
    pub topics: usize,
    /// Messages per second per publisher (0 = unlimited).
    pub rate: f64,
    /// Fan-in subscription kind.
    pub mode: Option<FaninMode>,
    /// Measured seconds.
    pub duration_s: f64,
    /// Warm-up seconds.
    pub warmup_s: f64,
    /// Longest drain, seconds.
    pub drain_s: f64,
    /// Threads per process.
    pub threads: usize,
    /// Processes.
    pub workers: usize,
    /// In-flight window per publisher (QoS 1/2).
    pub inflight: u32,
    /// Connections per second over everything (0 = unlimited).
    pub conn_rate: f64,
    /// Pending handshakes over all threads and workers.
    pub max_pending: usize,
    /// Connect timeout, seconds.
    pub connect_timeout_s: f64,
    /// Keep-alive seconds.
    pub keepalive: u16,
    /// Shared subscription group.
    pub share_group: String,
    /// Clean session 0 / clean start false under run-unique client ids (--persistent).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub persistent: bool,
    /// Session Expiry Interval sent with --persistent over MQTT 5.0, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_expiry_s: Option<u32>,
    /// Source addresses used.
    pub source_ips: usize,
    /// Broker pid.
    pub broker_pid: Option<u32>,
    /// Count the broker's syscalls and context switches with perf.
    #[serde(default)]
    pub perf: bool,
    /// Histogram output.
    #[serde(skip)]
    pub hdr_out: Option<PathBuf>,
    /// CONNECT user name.
    #[serde(default)]
    pub username: Option<String>,
    /// CONNECT password.
    #[serde(default)]
    pub password: Option<String>,
    /// Worker index when this process is a worker.
    #[serde(skip)]
    pub worker_index: Option<usize>,
    /// Run id (topic prefix `bh/<run_id>`).
    pub run_id: u32,
}

/// Session Expiry Interval of --persistent MQTT 5.0 sessions unless --session-expiry.
pub const DEFAULT_SESSION_EXPIRY_S: u32 = 300;

/// The smallest payload.
pub const MIN_PAYLOAD: usize = HEADER_LEN;

/// Connections one source address gets before the next one is used (the ephemeral port range
/// is about 28,000 ports per source address by default).
pub const CONNS_PER_SOURCE_IP: usize = 25_000;

impl Config {
    /// Applies the scenario's defaults and checks the flags.
    pub fn resolve(scenario: Scenario, args: &RunArgs) -> Result<Config, String> {
        let (mut clients, mut pubs, mut subs) = (0, 0, 0);
        let mut rate = args.rate.unwrap_or(0.0);
        let mut mode = None;
        let mut protocol = args.protocol.clone();
        match scenario {
            Scenario::Conn => clients = args.clients.unwrap_or(1000),
            Scenario::P2p => {
                pubs = args.pubs.or(args.clients).unwrap_or(100);
                subs = pubs;
            }
            Scenario::Fanout => {
                pubs = args.pubs.unwrap_or(5);
                subs = args.subs.unwrap_or(100);
                rate = args.rate.unwrap_or(50.0);
            }
            Scenario::Fanin => {
                pubs = args.pubs.unwrap_or(1000);
                subs = args.subs.unwrap_or(5);
                rate = args.rate.unwrap_or(10.0);
                let m = args.mode.unwrap_or(FaninMode::Shared);
                if m == FaninMode::Shared && protocol.is_none() {
                    protocol = Some("5".into());
                }
                mode = Some(m);
            }
            Scenario::Quiet => {
                pubs = args.pubs.or(args.clients).unwrap_or(1000);
                subs = pubs;
                rate = args.rate.unwrap_or(20.0);
            }
            Scenario::Latency => {
                pubs = args.pubs.unwrap_or(10);
                subs = pubs;
                if args.rate.is_none() && args.total_rate.is_none() {
                    rate = 1000.0 / pubs.max(1) as f64;
                }
            }
        }
        if let Some(total) = args.total_rate {
            if total <= 0.0 {
                return Err("--total-rate must be positive".into());
            }
            rate = total / pubs.max(1) as f64;
        }
        if !(rate >= 0.0 && rate.is_finite()) {
            return Err("--rate must be >= 0".into());
        }
        if scenario != Scenario::Conn && (pubs == 0 || subs == 0) {
            return Err("need at least one publisher and one subscriber".into());
        }
        let payload = args
            .payload
            .unwrap_or(if scenario == Scenario::Quiet { 64 } else { 16 });
        if payload < MIN_PAYLOAD {
            return Err(format!(
                "--payload must be at least {MIN_PAYLOAD} bytes (sequence number and timestamp)"
            ));
        }
        if args.inflight == 0 || args.inflight > 65_535 {
            return Err("--inflight must be in 1..=65535".into());
        }
        if args.workers == 0 {
            return Err("--workers must be at least 1".into());
        }
        if !(args.duration > 0.0 && args.warmup >= 0.0 && args.drain >= 0.0) {
            return Err("--duration must be > 0, --warmup and --drain >= 0".into());
        }
        let threads = args
            .threads
            .unwrap_or_else(crate::sys::available_cpus)
            .max(1);
        let conn_rate = args.conn_rate.unwrap_or(if scenario == Scenario::Conn {
            1000.0
        } else {
            0.0
        });
        let transport = Transport::from_flags(args.tls, args.ws);
        let tls_flags = args.cafile.is_some()
            || args.insecure
            || args.cert.is_some()
            || args.tls_version.is_some()
            || args.tls_resume;
        if tls_flags && !args.tls {
            return Err(
                "--cafile, --insecure, --cert, --key, --tls-version and --tls-resume need --tls"
                    .into(),
            );
        }
        if !args.ws_path.starts_with('/') {
            return Err("--ws-path must start with /".into());
        }
        let tls = args.tls.then(|| TlsOptions {
            cafile: args.cafile.clone(),
            insecure: args.insecure,
            cert: args.cert.clone(),
            key: args.key.clone(),
            server_name: args.server_name.clone(),
            resume: args.tls_resume,
            version: args.tls_version.clone(),
        });
        let tls_client = tls.as_ref().map(TlsClient::new).transpose()?;
        let port = args.port.unwrap_or(transport.default_port());
        let addr = resolve_v4(&args.host, port)?;
        let total_conns = clients + pubs + subs;
        let source_ips = match args.source_ips {
            0 if addr.ip().is_loopback() => total_conns.div_ceil(CONNS_PER_SOURCE_IP).max(1),
            0 => 1,
            n => n,
        };
        if source_ips > 1 && !addr.ip().is_loopback() {
            return Err("--source-ips > 1 needs a broker on 127.0.0.0/8".into());
        }
        if source_ips > 65_000 {
            return Err("--source-ips too large".into());
        }
        let topics = match scenario {
            Scenario::Fanout => args.topics.unwrap_or(pubs).clamp(1, pubs),
            Scenario::Conn => 0,
            Scenario::Fanin => pubs,
            _ => pubs,
        };
        let protocol = protocol.unwrap_or_else(|| "3.1.1".into());
        if args.session_expiry.is_some() && protocol != "5" {
            return Err(
                "--session-expiry needs --protocol 5 (3.1.1 sessions do not expire)".into(),
            );
        }
        if args.session_expiry == Some(0) {
            return Err(
                "--session-expiry 0 ends the session at the disconnect: drop --persistent instead"
                    .into(),
            );
        }
        let session_expiry_s = (args.persistent && protocol == "5")
            .then(|| args.session_expiry.unwrap_or(DEFAULT_SESSION_EXPIRY_S));
        let run_id = args
            .run_id
            .unwrap_or_else(|| std::process::id() ^ (crate::sys::mono_ns() as u32 & 0xffff_0000));
        let mut cfg = Config {
            scenario,
            name: String::new(),
            label: args.label.clone(),
            host: args.host.clone(),
            port,
            addr,
            transport,
            tls,
            tls_client,
            ws_path: args.ws.then(|| args.ws_path.clone()),
            qos: args.qos,
            payload,
            protocol,
            clients,
            pubs,
            subs,
            topics,
            rate,
            mode,
            duration_s: args.duration,
            warmup_s: args.warmup,
            drain_s: args.drain,
            threads,
            workers: args.workers,
            inflight: args.inflight,
            conn_rate,
            max_pending: args.max_pending.max(1),
            connect_timeout_s: args.connect_timeout,
            keepalive: args.keepalive,
            share_group: args.share_group.clone(),
            persistent: args.persistent,
            session_expiry_s,
            source_ips,
            broker_pid: args.broker_pid,
            perf: args.perf,
            hdr_out: args.hdr_out.clone(),
            username: args.username.clone(),
            password: args.password.clone(),
            worker_index: args.worker_index,
            run_id,
        };
        cfg.name = cfg.omb_name();
        Ok(cfg)
    }

    /// `<kind>-<pubs>-<subs>-<topics>-<rate>` in the Open MQTT Benchmark Suite's style; the
    /// rate is the target rate out of the broker ("max" when unpaced).
    pub fn omb_name(&self) -> String {
        let n = |v: f64| {
            if v >= 1000.0 && (v / 1000.0).fract() == 0.0 {
                format!("{}K", v / 1000.0)
            } else if v.fract() == 0.0 {
                format!("{v}")
            } else {
                format!("{v:.1}")
            }
        };
        let count = |c: usize| n(c as f64);
        let rate = if self.rate > 0.0 {
            n(self.target_out_per_s())
        } else {
            "max".into()
        };
        // Other transports than TCP: `-tls`, `-ws` or `-wss` after the name (conn: in it).
        let suffix = match self.transport {
            Transport::Tcp => String::new(),
            t => format!("-{t}"),
        };
        let name = match self.scenario {
            Scenario::Conn => {
                let rate = if self.conn_rate > 0.0 {
                    n(self.conn_rate)
                } else {
                    "max".into()
                };
                let persistent = if self.persistent { "-persistent" } else { "" };
                return format!(
                    "conn-{}-{}-{rate}{persistent}",
                    self.transport,
                    count(self.clients)
                );
            }
            Scenario::Fanin => {
                let kind = match self.mode {
                    Some(FaninMode::Wildcard) => "fanin",
                    _ => "sharedsub",
                };
                format!(
                    "{kind}-{}-{}-{}-{rate}",
                    count(self.pubs),
                    count(self.subs),
                    count(self.topics)
                )
            }
            s => format!(
                "{}-{}-{}-{}-{rate}",
                s.as_str(),
                count(self.pubs),
                count(self.subs),
                count(self.topics)
            ),
        };
        let persistent = if self.persistent { "-persistent" } else { "" };
        name + &suffix + persistent
    }

    /// The codec's protocol version.
    pub fn version(&self) -> ProtocolVersion {
        if self.protocol == "5" {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V3_1_1
        }
    }

    /// The codec's QoS.
    pub fn qos(&self) -> QoS {
        QoS::from_u8(self.qos).unwrap_or(QoS::AtLeastOnce)
    }

    /// How many subscribers each published message should reach.
    pub fn expected_multiplier(&self) -> u64 {
        match (self.scenario, self.mode) {
            (Scenario::Fanout, _) | (Scenario::Fanin, Some(FaninMode::Wildcard)) => {
                self.subs as u64
            }
            (Scenario::Conn, _) => 0,
            _ => 1,
        }
    }

    /// Target messages per second into the broker (0 when unpaced).
    pub fn target_in_per_s(&self) -> f64 {
        self.rate * self.pubs as f64
    }

    /// Target messages per second out of the broker (0 when unpaced).
    pub fn target_out_per_s(&self) -> f64 {
        self.target_in_per_s() * self.expected_multiplier() as f64
    }

    /// Connections this run opens.
    pub fn total_connections(&self) -> usize {
        self.clients + self.pubs + self.subs
    }

    /// Topic prefix unique to this run, so runs never see each other's messages.
    pub fn prefix(&self) -> String {
        format!("bh/{}", self.run_id)
    }

    /// Source address number `k` (127.0.0.1 + k).
    pub fn source_ip(&self, k: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 1)) + k as u32)
    }
}

fn resolve_v4(host: &str, port: u16) -> Result<SocketAddr, String> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let all: Vec<SocketAddr> = addrs.collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .copied()
        .ok_or_else(|| format!("{host} has no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> (Scenario, RunArgs) {
        let cli = Cli::try_parse_from(std::iter::once("bench-harness").chain(list.iter().copied()))
            .unwrap();
        match cli.command {
            Command::Conn(a) => (Scenario::Conn, a),
            Command::P2p(a) => (Scenario::P2p, a),
            Command::Fanout(a) => (Scenario::Fanout, a),
            Command::Fanin(a) => (Scenario::Fanin, a),
            Command::Latency(a) => (Scenario::Latency, a),
            Command::Quiet(a) => (Scenario::Quiet, a),
            Command::Report(_) => panic!("report"),
        }
    }

    fn cfg(list: &[&str]) -> Config {
        let (s, a) = args(list);
        Config::resolve(s, &a).unwrap()
    }

    #[test]
    fn scenario_defaults_and_names() {
        let c = cfg(&["fanout", "--subs", "1000", "--threads", "1"]);
        assert_eq!((c.pubs, c.subs, c.topics, c.rate), (5, 1000, 5, 50.0));
        assert_eq!(c.expected_multiplier(), 1000);
        assert_eq!(c.target_out_per_s(), 250_000.0);
        assert_eq!(c.name, "fanout-5-1K-5-250K");

        let c = cfg(&["fanin"]);
        assert_eq!(c.protocol, "5");
        assert_eq!(c.mode, Some(FaninMode::Shared));
        assert_eq!(c.expected_multiplier(), 1);
        assert_eq!(c.name, "sharedsub-1K-5-1K-10K");

        let c = cfg(&["fanin", "--mode", "wildcard", "--subs", "2"]);
        assert_eq!(c.protocol, "3.1.1");
        assert_eq!(c.expected_multiplier(), 2);

        let c = cfg(&["latency", "--pubs", "4"]);
        assert_eq!(c.rate, 250.0);
        assert_eq!(c.target_in_per_s(), 1000.0);

        let c = cfg(&["p2p", "--pubs", "50"]);
        assert_eq!(c.name, "p2p-50-50-50-max");

        let c = cfg(&["conn", "--clients", "10000", "--conn-rate", "100"]);
        assert_eq!(c.name, "conn-tcp-10K-100");
        assert_eq!(c.source_ips, 1);

        let c = cfg(&[
            "conn",
            "--clients",
            "10000",
            "--conn-rate",
            "0",
            "--workers",
            "2",
        ]);
        assert_eq!(c.name, "conn-tcp-10K-max");

        let c = cfg(&["quiet"]);
        assert_eq!((c.pubs, c.subs, c.rate, c.payload), (1000, 1000, 20.0, 64));
        assert_eq!(c.expected_multiplier(), 1);
        assert_eq!(c.target_out_per_s(), 20_000.0);
        assert_eq!(c.name, "quiet-1K-1K-1K-20K");
        assert!(!c.perf);

        let c = cfg(&["quiet", "--pubs", "5000", "--rate", "2", "--perf"]);
        assert_eq!(c.name, "quiet-5K-5K-5K-10K");
        assert_eq!(c.total_connections(), 10_000);
        assert!(c.perf);

        let c = cfg(&["p2p"]);
        assert_eq!(c.payload, 16);
    }

    #[test]
    fn transports_name_ports_and_flags() {
        let c = cfg(&["p2p", "--pubs", "10"]);
        assert_eq!((c.transport, c.port), (Transport::Tcp, 1883));
        assert!(c.tls.is_none() && c.ws_path.is_none());
        let c = cfg(&["p2p", "--pubs", "10", "--ws"]);
        assert_eq!((c.transport, c.port), (Transport::Ws, 8080));
        assert_eq!(c.name, "p2p-10-10-10-max-ws");
        assert_eq!(c.ws_path.as_deref(), Some("/mqtt"));
        let c = cfg(&[
            "conn",
            "--clients",
            "5000",
            "--tls",
            "--insecure",
            "--port",
            "18883",
        ]);
        assert_eq!((c.transport, c.port), (Transport::Tls, 18883));
        assert_eq!(c.name, "conn-tls-5K-1K");
        assert!(c.tls_client.is_some());
        let c = cfg(&["fanout", "--tls", "--insecure", "--ws", "--ws-path", "/"]);
        assert_eq!((c.transport, c.port), (Transport::Wss, 8443));
        assert_eq!(c.name, "fanout-5-100-5-25K-wss");
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["transport"], "wss");
        assert_eq!(json["tls"]["insecure"], true);

        let (s, a) = args(&["p2p", "--tls"]);
        assert!(Config::resolve(s, &a).unwrap_err().contains("--cafile"));
        let (s, a) = args(&["p2p", "--insecure"]);
        assert!(Config::resolve(s, &a).unwrap_err().contains("need --tls"));
        let (s, a) = args(&["p2p", "--ws", "--ws-path", "mqtt"]);
        assert!(Config::resolve(s, &a).is_err());
        let (s, a) = args(&["p2p", "--tls", "--cafile", "/nonexistent/ca.pem"]);
        assert!(Config::resolve(s, &a)
            .unwrap_err()
            .contains("/nonexistent/ca.pem"));
        assert!(Cli::try_parse_from(["bench-harness", "p2p", "--tls", "--cert", "c.pem"]).is_err());
    }

    #[test]
    fn persistent_sessions() {
        let c = cfg(&["p2p", "--pubs", "10"]);
        assert!(!c.persistent);
        assert_eq!(c.session_expiry_s, None);
        assert_eq!(c.name, "p2p-10-10-10-max");
        // The default JSON is unchanged: no persistent keys.
        let json = serde_json::to_value(&c).unwrap();
        assert!(json.get("persistent").is_none() && json.get("session_expiry_s").is_none());

        let c = cfg(&["p2p", "--pubs", "10", "--persistent"]);
        assert!(c.persistent);
        assert_eq!(c.session_expiry_s, None, "3.1.1 sessions do not expire");
        assert_eq!(c.name, "p2p-10-10-10-max-persistent");
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["persistent"], true);

        let c = cfg(&["p2p", "--persistent", "--protocol", "5"]);
        assert_eq!(c.session_expiry_s, Some(DEFAULT_SESSION_EXPIRY_S));
        let c = cfg(&[
            "p2p",
            "--persistent",
            "--protocol",
            "5",
            "--session-expiry",
            "30",
            "--ws",
        ]);
        assert_eq!(c.session_expiry_s, Some(30));
        assert_eq!(c.name, "p2p-100-100-100-max-ws-persistent");
        let c = cfg(&["conn", "--clients", "10", "--persistent"]);
        assert_eq!(c.name, "conn-tcp-10-1K-persistent");

        let (s, a) = args(&["p2p", "--persistent", "--session-expiry", "30"]);
        assert!(Config::resolve(s, &a).unwrap_err().contains("--protocol 5"));
        let (s, a) = args(&[
            "p2p",
            "--persistent",
            "--protocol",
            "5",
            "--session-expiry",
            "0",
        ]);
        assert!(Config::resolve(s, &a).is_err());
        assert!(Cli::try_parse_from(["bench-harness", "p2p", "--session-expiry", "30"]).is_err());
    }

    #[test]
    fn source_ips_spread_large_runs() {
        let c = cfg(&["conn", "--clients", "1000000"]);
        assert_eq!(c.source_ips, 40);
        assert_eq!(c.source_ip(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(c.source_ip(300), Ipv4Addr::new(127, 0, 1, 45));
    }

    #[test]
    fn rejects_bad_flags() {
        let (s, mut a) = args(&["p2p"]);
        a.payload = Some(8);
        assert!(Config::resolve(s, &a).is_err());
        let (s, mut a) = args(&["p2p"]);
        a.inflight = 0;
        assert!(Config::resolve(s, &a).is_err());
        assert!(Cli::try_parse_from(["bench-harness", "p2p", "--qos", "3"]).is_err());
        assert!(Cli::try_parse_from(["bench-harness", "p2p", "--protocol", "4"]).is_err());
    }
}
