//! Broker configuration: the command line (subcommands and flags) and a TOML file, every flag
//! with a config key. Flags override the file; the file overrides the defaults.
//!
//! [`Cli`] is the whole command line; each subcommand that needs a configuration takes the
//! same [`Flags`] and builds it with [`Config::from_flags`], so `serve`, `check-config` and a
//! SIGHUP reload all see exactly the same configuration.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

pub use crate::auth::AuthFiles;
use crate::auth::LoadedFile;
pub use crate::units::ByteSize;

mod admin_token;
mod listener;
mod tls;
pub use admin_token::AdminToken;
pub use listener::{ListenerConfig, ListenerProtocol, TlsVersion};
pub use tls::{LoadedTls, TlsFiles};

/// How a shared subscription picks the member that receives a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum, Default)]
#[serde(rename_all = "snake_case")]
pub enum SharedStrategy {
    /// Members take turns.
    #[default]
    RoundRobin,
    /// A member chosen at random.
    Random,
    /// The same member while it stays connected (per publishing shard: each shard keeps its
    /// own choice, preferring members on itself).
    Sticky,
}

/// What a client publishing faster than `max_publish_rate` / `max_publish_bytes_rate` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum, Default)]
#[serde(rename_all = "snake_case")]
pub enum RateAction {
    /// Its socket is not read until its bucket has refilled (TCP pushes back on the client).
    #[default]
    Throttle,
    /// It is disconnected: DISCONNECT 0x96 (message rate too high) for MQTT 5, a closed
    /// connection for 3.x.
    Disconnect,
}

/// When the journal of a data directory calls what it wrote durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum, Default)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Once the write is in the page cache (survives a crash of the broker, not of the
    /// machine); fdatasync every `sync_interval_ms`.
    #[default]
    Interval,
    /// Once the write is on disk: fdatasync before every acknowledgement that depends on it.
    Always,
}

impl SyncMode {
    /// The config-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Interval => "interval",
            SyncMode::Always => "always",
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines (tracing's default format).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's
    /// fields.
    Json,
}

/// The listen addresses used when neither `listen` nor `[[listener]]` is configured: loopback
/// only (IPv4 and IPv6), so that a broker started without any configuration is not reachable
/// from the network. The IPv6 one is skipped with a log line when it cannot be bound.
pub const DEFAULT_LISTEN: [SocketAddr; 2] = [
    SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        1883,
    )),
    SocketAddr::V6(std::net::SocketAddrV6::new(
        std::net::Ipv6Addr::LOCALHOST,
        1883,
        0,
        0,
    )),
];

/// Everything the broker can be told. Field names are the config-file keys.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Addresses to accept plain MQTT over TCP on; every shard accepts on each (SO_REUSEPORT).
    /// Each is a `[[listener]]` with the defaults (see [`Config::listeners`]).
    ///
    /// Precedence: `--listen` flags replace this list (the file's `listen` key, or the default);
    /// they never remove `[[listener]]` tables. The default `["127.0.0.1:1883", "[::1]:1883"]`
    /// (loopback only; see [`DEFAULT_LISTEN`]) applies only when
    /// neither `listen` nor `[[listener]]` is given: a file with `[[listener]]` tables and no
    /// `listen` key has an empty `listen`. (A `Config` built in code from `Config::default()`
    /// keeps the default address: clear `listen` there if only the tables are wanted.)
    pub listen: Vec<SocketAddr>,
    /// Listeners with settings of their own (`[[listener]]` tables). They come from the config
    /// file only (no flag sets them) and are always added to the `listen` addresses, whatever
    /// `--listen` says. Changing them needs a restart.
    pub listener: Vec<ListenerConfig>,
    /// Addresses for MQTT over TLS (`--tls-listen`), each a listener with the top-level
    /// `certfile`, `keyfile`, `cafile` and `require_certificate`. Changing them needs a restart.
    pub tls_listen: Vec<SocketAddr>,
    /// Addresses for MQTT over WebSocket (`--ws-listen`), path `/mqtt`.
    pub ws_listen: Vec<SocketAddr>,
    /// Addresses for MQTT over WebSocket over TLS (`--wss-listen`), path `/mqtt`, with the
    /// top-level TLS keys.
    pub wss_listen: Vec<SocketAddr>,
    /// The certificate chain (PEM, leaf first) of the `tls_listen` and `wss_listen` listeners.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certfile: Option<PathBuf>,
    /// Their private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyfile: Option<PathBuf>,
    /// CA certificates (PEM) their client certificates are verified against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cafile: Option<PathBuf>,
    /// Their clients must present a certificate signed by `cafile` (mutual TLS).
    pub require_certificate: bool,
    /// TLS handshake steps each shard runs per loop pass, at most (the rest wait for the next
    /// pass): bounds the latency a flood of new TLS clients adds for established ones.
    pub tls_handshakes_per_pass: u32,
    /// Number of shards (executors); default one per CPU the process may run on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
    /// CPUs to pin shards to, e.g. "0,2-5"; default: the process's affinity mask.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing directive).
    pub log_level: String,
    /// How log lines are written: `text` or `json` (one object per line). Changing it needs a
    /// restart.
    pub log_format: LogFormat,
    /// File the log lines are appended to; unset = stderr. Reopened on every SIGHUP (log
    /// rotation: rename the file, then send SIGHUP); a new path applies at that reload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_file: Option<PathBuf>,
    /// Largest packet accepted, fixed header included (bytes).
    pub max_packet_size: u32,
    /// Connections accepted by the whole broker; 0 = unlimited.
    pub max_connections: usize,
    /// Connections accepted by one shard; 0 = unlimited.
    pub max_connections_per_shard: usize,
    /// Outgoing QoS 1/2 messages in flight per client before further ones queue.
    pub max_inflight: u16,
    /// Messages queued per client (offline or beyond the window); 0 = unlimited.
    pub max_queued_messages: usize,
    /// Payload bytes queued per client; 0 = unlimited.
    pub max_queued_bytes: usize,
    /// Levels allowed in a topic name or filter; 0 = unlimited.
    pub max_topic_levels: usize,
    /// Bytes allowed in a topic name or filter; 0 = the protocol's 65,535.
    pub max_topic_length: usize,
    /// Seconds an offline persistent (clean session = 0) MQTT 3.x session is kept; unset = forever.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent_session_expiry: Option<u64>,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout: u16,
    /// Bytes of unsent data a client may have before it counts as a slow consumer: QoS 0
    /// messages to it are dropped and QoS 1/2 ones queued.
    pub max_write_buffer: usize,
    /// Capacity of each cross-shard queue, in batches.
    pub mesh_capacity: usize,
    /// Listen backlog (capped by net.core.somaxconn).
    pub backlog: i32,
    /// Highest topic alias a client may use (MQTT 5.0 Topic Alias Maximum); 0 disables aliases.
    pub topic_alias_maximum: u16,
    /// Unreleased inbound QoS 2 publishes a client may have (MQTT 5.0 Receive Maximum).
    pub receive_maximum: u16,
    /// How shared subscriptions pick a member: round_robin, random or sticky.
    pub shared_subscription_strategy: SharedStrategy,
    /// Seconds between `$SYS/broker/...` updates (Mosquitto's names, retained); 0 = off.
    pub sys_interval: u64,
    /// Subscriptions one client may hold; beyond it SUBACK 0x97 (3.x: 0x80). 0 = unlimited.
    pub max_subscriptions_per_client: usize,
    /// Retained messages the broker keeps; a retained publish to a new topic beyond it is
    /// delivered but not retained (counted and logged). 0 = unlimited.
    pub max_retained_messages: usize,
    /// Payload bytes of retained messages the broker keeps (same rule). 0 = unlimited.
    pub max_retained_bytes: usize,
    /// Memory budget of the process (resident set, sampled a few times a second off the hot
    /// path); 0 = none. Above it new connections are refused (CONNACK 0x89; 3.x: 3) and clients
    /// that publish are not read, until use falls below 90% of it. Takes `512MiB`, `2G`, bytes.
    pub max_memory: ByteSize,
    /// PUBLISH packets per second one client may send (a token bucket holding one second's
    /// worth); 0 = no limit. See `publish_rate_action`.
    pub max_publish_rate: u32,
    /// PUBLISH payload bytes per second one client may send (same bucket rule); 0 = no limit.
    pub max_publish_bytes_rate: ByteSize,
    /// What a client over its publish rate gets: `throttle` (its socket is not read until the
    /// bucket refills) or `disconnect` (MQTT 5: DISCONNECT 0x96; 3.x: closed).
    pub publish_rate_action: RateAction,
    /// New connections per second each listener accepts, all shards together (one second's
    /// burst); beyond it the CONNECT is answered with CONNACK 0x9F (3.x: 3) and the connection
    /// closed. 0 = no limit; a `[[listener]]` table may set its own.
    pub max_connection_rate: u32,
    /// Address of the Prometheus endpoint (`GET /metrics`, `GET /healthz`), served by a thread
    /// that is not a shard; unset = none. Changing it needs a restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Bearer token of the `/admin` endpoints on `metrics_listen` (at least 16 visible ASCII
    /// characters); with neither it nor `admin_token_file` they answer 404. Never printed by
    /// `check-config`. A flag shows in the process list: prefer `admin_token_file`. A reload
    /// applies it.
    #[serde(skip_serializing)]
    pub admin_token: Option<AdminToken>,
    /// A file holding the admin token (its whole content, surrounding whitespace ignored),
    /// read at start and on every SIGHUP. Set this or `admin_token`, not both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// Mosquitto password file (`user:$7$...` lines, as written by `mosquitto_passwd` or
    /// `shardmq passwd`). Once set, clients must give a user name and password from it (CONNACK
    /// 0x86 / 3.x: 4 otherwise) and anonymous clients are refused (0x87 / 5) unless
    /// `allow_anonymous` is true. Read at start and on every SIGHUP; a bad file keeps the
    /// running configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Mosquitto ACL file (`user`, `topic`, `pattern` lines). Once set, everything not granted
    /// is denied. Read at start and on every SIGHUP (existing subscriptions are checked again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl_file: Option<PathBuf>,
    /// Whether clients without a user name are accepted. Unset: yes without a password file
    /// (then every listener must be on loopback), no with one. A `[[listener]]` table's own
    /// `allow_anonymous` overrides this for that listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_anonymous: Option<bool>,
    /// Milliseconds the refusal of a failed login waits, doubling with each further failure
    /// from the same address within a minute (at most 5 s; the connection is not read
    /// meanwhile); 0 = no delay.
    pub failed_login_delay_ms: u32,
    /// Highest keep-alive a client may ask for, in seconds; 65535 = no limit. MQTT 5 clients
    /// asking for more (or for 0) get this value as Server Keep Alive; MQTT 3.x clients asking
    /// for more are refused (CONNACK 2), 3.x keep-alive 0 stays allowed.
    pub max_keepalive: u16,
    /// Use the user name as the client id (clients without a user name are refused, 0x87 / 5).
    pub use_username_as_clientid: bool,
    /// Directory of the durable store (persistent sessions, their queues, retained messages);
    /// unset = everything lives in memory only. Locked while the broker runs. Changing it
    /// needs a restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// When a journal write counts as durable: `interval` (in the page cache; fdatasync every
    /// `sync_interval_ms`) or `always` (fdatasync first). Changing it needs a restart.
    pub sync: SyncMode,
    /// Milliseconds between fdatasyncs with `sync = "interval"` (1 ..= 60000). Changing it
    /// needs a restart.
    pub sync_interval_ms: u64,
    /// Test hook: each shard also listens on its own 127.0.0.1 port so tests can place a client
    /// on a chosen shard.
    pub per_shard_listeners: bool,
    /// Test hook: this shard panics about a second after start (proves that a dead shard ends
    /// the process instead of leaving it half alive). Not a config-file key.
    #[serde(skip)]
    pub test_inject_panic: Option<usize>,
    /// The contents of `password_file` and `acl_file`, as loaded by
    /// [`Config::load_auth_files`] (shared read-only by every shard). Not a config key.
    #[serde(skip)]
    pub auth_files: AuthFiles,
    /// The listeners' certificates and keys, as loaded by [`Config::load_tls`]. Not a config
    /// key.
    #[serde(skip)]
    pub tls_files: TlsFiles,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.to_vec(),
            listener: Vec::new(),
            tls_listen: Vec::new(),
            ws_listen: Vec::new(),
            wss_listen: Vec::new(),
            certfile: None,
            keyfile: None,
            cafile: None,
            require_certificate: false,
            tls_handshakes_per_pass: 4,
            shards: None,
            cpus: None,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            log_file: None,
            max_packet_size: 1 << 20,
            max_connections: 0,
            max_connections_per_shard: 0,
            max_inflight: 512,
            max_queued_messages: 1000,
            max_queued_bytes: 0,
            max_topic_levels: 128,
            max_topic_length: 0,
            persistent_session_expiry: None,
            connect_timeout: 10,
            max_write_buffer: 1 << 20,
            mesh_capacity: 1024,
            backlog: 4096,
            topic_alias_maximum: 1024,
            receive_maximum: 1024,
            shared_subscription_strategy: SharedStrategy::RoundRobin,
            sys_interval: 10,
            max_subscriptions_per_client: 0,
            max_retained_messages: 0,
            max_retained_bytes: 0,
            max_memory: ByteSize(0),
            max_publish_rate: 0,
            max_publish_bytes_rate: ByteSize(0),
            publish_rate_action: RateAction::Throttle,
            max_connection_rate: 0,
            metrics_listen: None,
            admin_token: None,
            admin_token_file: None,
            password_file: None,
            acl_file: None,
            allow_anonymous: None,
            failed_login_delay_ms: 100,
            data_dir: None,
            sync: SyncMode::Interval,
            sync_interval_ms: 1000,
            max_keepalive: u16::MAX,
            use_username_as_clientid: false,
            per_shard_listeners: false,
            test_inject_panic: None,
            auth_files: AuthFiles::default(),
            tls_files: TlsFiles::default(),
        }
    }
}

/// Why the configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this schema.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// The whole command line: a subcommand, or the flags of `serve` alone (`shardmq [FLAGS]` is
/// `shardmq serve [FLAGS]`). Further subcommands are further [`Command`] variants.
#[derive(Debug, Parser)]
#[command(
    name = "shardmq",
    version,
    about = "io_uring shard-per-core MQTT 3.1/3.1.1/5.0 broker",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do; none = serve with `flags`.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The flags given without a subcommand (those of `serve`).
    #[command(flatten)]
    pub flags: Flags,
}

impl Cli {
    /// The subcommand to run, `serve` when none was named.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Serve(self.flags))
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker (the default when no subcommand is given).
    Serve(Flags),
    /// Validate the configuration and print it as TOML.
    ///
    /// Builds the configuration exactly as `serve` would (the file, then the flags), validates
    /// it and prints it with every key, defaults included. Exit status 2 if it is invalid, with
    /// the reason (file, line and key) on stderr.
    CheckConfig(Flags),
    /// Create or update a password file (Mosquitto's format, like `mosquitto_passwd`).
    ///
    /// `shardmq passwd [-c] FILE USER` prompts for the password twice; `-b FILE USER PASSWORD`
    /// takes it from the command line; `-D FILE USER` deletes the user. `-c` creates the file
    /// (replacing an existing one). Entries are PBKDF2-SHA512 (`$7$`); the file is replaced
    /// atomically and has mode 0600.
    Passwd(PasswdArgs),
    /// Print what a data directory holds (read-only; safe while a broker uses it).
    ///
    /// Format version, segment files (and any damage found in them: corrupt records skipped,
    /// torn tails), sessions with their subscriptions, queued and in-flight messages, and the
    /// retained message count. Exit status 2 if the directory cannot be read. The broker does
    /// not write a data directory yet (issue 11): this reads the format it will write.
    Inspect(InspectArgs),
}

/// The arguments of `shardmq inspect`.
#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    /// The data directory.
    pub dir: PathBuf,
}

/// The hash `shardmq passwd` writes (`-H`, Mosquitto's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PasswdHash {
    /// `$7$`: PBKDF2-HMAC-SHA512, 101 iterations, a 12-byte salt (readable by Mosquitto 2.0).
    #[value(name = "sha512-pbkdf2")]
    Sha512Pbkdf2,
    /// `$argon2id$`: Argon2id with Mosquitto 2.1's parameters (m=47104 KiB, t=1, p=1, 64-byte
    /// salt and hash); Mosquitto 2.0 cannot read it.
    #[value(name = "argon2id")]
    Argon2id,
}

/// The arguments of `shardmq passwd`.
#[derive(Debug, Clone, clap::Args)]
pub struct PasswdArgs {
    /// Create a new password file (an existing one is overwritten).
    #[arg(short = 'c', conflicts_with = "delete")]
    pub create: bool,
    /// Batch mode: the password is the last argument instead of being prompted for.
    #[arg(short = 'b', conflicts_with = "delete")]
    pub batch: bool,
    /// Delete the user from the file.
    #[arg(short = 'D')]
    pub delete: bool,
    /// The hash to write: `sha512-pbkdf2` (`$7$`, the default, as in `mosquitto_passwd` 2.0 and
    /// 2.1) or `argon2id` (`$argon2id$`, Mosquitto 2.1's `-H argon2id`).
    #[arg(short = 'H', value_enum, default_value_t = PasswdHash::Sha512Pbkdf2, conflicts_with = "delete")]
    pub hash: PasswdHash,
    /// The password file.
    pub file: PathBuf,
    /// The user name.
    pub username: String,
    /// The password (batch mode only).
    pub password: Option<String>,
}

/// Command-line flags. Each one overrides the config key of the same name.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "shardmq",
    version,
    about = "io_uring shard-per-core MQTT 3.1/3.1.1/5.0 broker"
)]
pub struct Flags {
    /// TOML config file (keys as the long flags, with underscores).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on (repeatable); replaces the file's `listen` list, its `[[listener]]`
    /// tables still apply. Default 127.0.0.1:1883 and [::1]:1883 when neither is set.
    #[arg(long)]
    pub listen: Vec<SocketAddr>,
    /// Address for MQTT over TLS (repeatable); needs --cert and --key.
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Vec<SocketAddr>,
    /// Address for MQTT over WebSocket, path /mqtt (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub ws_listen: Vec<SocketAddr>,
    /// Address for MQTT over secure WebSocket, path /mqtt (repeatable); needs --cert and --key.
    #[arg(long, value_name = "ADDR")]
    pub wss_listen: Vec<SocketAddr>,
    /// Certificate chain (PEM) of the --tls-listen and --wss-listen listeners.
    #[arg(long = "cert", alias = "certfile", value_name = "FILE")]
    pub certfile: Option<PathBuf>,
    /// Private key (PEM) of the --tls-listen and --wss-listen listeners.
    #[arg(long = "key", alias = "keyfile", value_name = "FILE")]
    pub keyfile: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates are verified against.
    #[arg(long, value_name = "FILE")]
    pub cafile: Option<PathBuf>,
    /// Clients of the --tls-listen and --wss-listen listeners need a certificate signed by
    /// --cafile.
    #[arg(long)]
    pub require_certificate: bool,
    /// TLS handshake steps per shard per loop pass, at most.
    #[arg(long, value_name = "N")]
    pub tls_handshakes_per_pass: Option<u32>,
    /// Number of shards; default one per allowed CPU.
    #[arg(long)]
    pub shards: Option<usize>,
    /// CPUs to pin shards to, e.g. 0,2-5.
    #[arg(long)]
    pub cpus: Option<String>,
    /// Log level or tracing directive.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log line format: text or json (one JSON object per line).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Append log lines to this file instead of stderr; reopened on SIGHUP (log rotation).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Largest packet accepted (bytes).
    #[arg(long)]
    pub max_packet_size: Option<u32>,
    /// Connections accepted in total (0 = unlimited).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Connections accepted per shard (0 = unlimited).
    #[arg(long)]
    pub max_connections_per_shard: Option<usize>,
    /// Outgoing QoS 1/2 messages in flight per client.
    #[arg(long)]
    pub max_inflight: Option<u16>,
    /// Messages queued per client (0 = unlimited).
    #[arg(long)]
    pub max_queued_messages: Option<usize>,
    /// Payload bytes queued per client (0 = unlimited).
    #[arg(long)]
    pub max_queued_bytes: Option<usize>,
    /// Levels allowed in a topic (0 = unlimited).
    #[arg(long)]
    pub max_topic_levels: Option<usize>,
    /// Bytes allowed in a topic (0 = 65535).
    #[arg(long)]
    pub max_topic_length: Option<usize>,
    /// Seconds an offline MQTT 3.x persistent session is kept (default: forever).
    #[arg(long)]
    pub persistent_session_expiry: Option<u64>,
    /// Seconds a new connection has to send CONNECT.
    #[arg(long)]
    pub connect_timeout: Option<u16>,
    /// Unsent bytes before a client counts as a slow consumer.
    #[arg(long)]
    pub max_write_buffer: Option<usize>,
    /// Capacity of each cross-shard queue (batches).
    #[arg(long)]
    pub mesh_capacity: Option<usize>,
    /// Listen backlog.
    #[arg(long)]
    pub backlog: Option<i32>,
    /// Highest topic alias a client may use (0 disables).
    #[arg(long)]
    pub topic_alias_maximum: Option<u16>,
    /// Unreleased inbound QoS 2 publishes per client (MQTT 5.0 Receive Maximum).
    #[arg(long)]
    pub receive_maximum: Option<u16>,
    /// Shared-subscription member selection.
    #[arg(long, value_enum)]
    pub shared_subscription_strategy: Option<SharedStrategy>,
    /// Seconds between $SYS updates (0 = off).
    #[arg(long)]
    pub sys_interval: Option<u64>,
    /// Subscriptions per client (0 = unlimited).
    #[arg(long)]
    pub max_subscriptions_per_client: Option<usize>,
    /// Retained messages kept (0 = unlimited).
    #[arg(long)]
    pub max_retained_messages: Option<usize>,
    /// Retained payload bytes kept (0 = unlimited).
    #[arg(long)]
    pub max_retained_bytes: Option<usize>,
    /// Memory budget (e.g. 2G, 512MiB; 0 = none): above it new connections are refused and
    /// publishers are not read.
    #[arg(long, value_name = "SIZE")]
    pub max_memory: Option<ByteSize>,
    /// PUBLISH packets per second per client (0 = no limit).
    #[arg(long, value_name = "N")]
    pub max_publish_rate: Option<u32>,
    /// PUBLISH payload bytes per second per client (e.g. 1M; 0 = no limit).
    #[arg(long, value_name = "SIZE")]
    pub max_publish_bytes_rate: Option<ByteSize>,
    /// What a client over its publish rate gets.
    #[arg(long, value_enum)]
    pub publish_rate_action: Option<RateAction>,
    /// New connections per second per listener, all shards together (0 = no limit).
    #[arg(long, value_name = "N")]
    pub max_connection_rate: Option<u32>,
    /// Serve Prometheus metrics (GET /metrics) and a health check (GET /healthz) on this
    /// address, e.g. 127.0.0.1:9100.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Bearer token for the /admin endpoints on --metrics-listen (at least 16 characters;
    /// visible in the process list: prefer --admin-token-file).
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<String>,
    /// File holding the bearer token for the /admin endpoints (read again on SIGHUP).
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Mosquitto password file; clients must then authenticate (anonymous ones are refused
    /// unless --allow-anonymous).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Mosquitto ACL file; everything it does not grant is denied.
    #[arg(long, value_name = "FILE")]
    pub acl_file: Option<PathBuf>,
    /// Accept clients without a user name (also on listeners that are not on loopback).
    /// `--allow-anonymous false` refuses them.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub allow_anonymous: Option<bool>,
    /// Delay of a failed login's refusal, doubling per further failure from the address within
    /// a minute, at most 5 s (0 = none).
    #[arg(long, value_name = "MS")]
    pub failed_login_delay_ms: Option<u32>,
    /// Highest keep-alive a client may ask for (65535 = no limit).
    #[arg(long, value_name = "SECONDS")]
    pub max_keepalive: Option<u16>,
    /// Use the user name as the client id.
    #[arg(long)]
    pub use_username_as_clientid: bool,
    /// Directory of the durable store (persistent sessions, queues, retained messages); without
    /// it they live in memory only.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// When a journal write counts as durable: in the page cache (interval: fdatasync every
    /// --sync-interval-ms) or on disk (always).
    #[arg(long, value_enum)]
    pub sync: Option<SyncMode>,
    /// Milliseconds between fdatasyncs with --sync interval.
    #[arg(long, value_name = "MS")]
    pub sync_interval_ms: Option<u64>,
    /// Test hook: one extra 127.0.0.1 listener per shard.
    #[arg(long, hide = true)]
    pub per_shard_listeners: bool,
    /// Test hook: shard N panics about a second after start.
    #[arg(long, hide = true)]
    pub test_inject_panic: Option<usize>,
}

impl Config {
    /// Builds the configuration from flags and the file they name: the file (or the defaults),
    /// then every flag given overrides its key, then [`Config::validate`]. `serve`,
    /// `check-config` and a SIGHUP reload all build it this way.
    pub fn from_flags(flags: Flags) -> Result<Config, ConfigError> {
        let mut config = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Config::from_toml(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source: Box::new(source),
                })?
            }
            None => Config::default(),
        };
        if !flags.listen.is_empty() {
            config.listen = flags.listen;
        }
        // Like --listen: a flag's list replaces the file's list of the same key.
        if !flags.tls_listen.is_empty() {
            config.tls_listen = flags.tls_listen;
        }
        if !flags.ws_listen.is_empty() {
            config.ws_listen = flags.ws_listen;
        }
        if !flags.wss_listen.is_empty() {
            config.wss_listen = flags.wss_listen;
        }
        if flags.certfile.is_some() {
            config.certfile = flags.certfile;
        }
        if flags.keyfile.is_some() {
            config.keyfile = flags.keyfile;
        }
        if flags.cafile.is_some() {
            config.cafile = flags.cafile;
        }
        config.require_certificate |= flags.require_certificate;
        macro_rules! take {
            ($($field:ident),*) => { $( if let Some(value) = flags.$field { config.$field = value; } )* };
        }
        take!(
            log_level,
            log_format,
            max_packet_size,
            max_connections,
            max_connections_per_shard,
            max_inflight,
            max_queued_messages,
            max_queued_bytes,
            max_topic_levels,
            max_topic_length,
            connect_timeout,
            max_write_buffer,
            mesh_capacity,
            backlog,
            topic_alias_maximum,
            receive_maximum,
            shared_subscription_strategy,
            sys_interval,
            max_subscriptions_per_client,
            max_retained_messages,
            max_retained_bytes,
            max_keepalive,
            max_memory,
            max_publish_rate,
            max_publish_bytes_rate,
            publish_rate_action,
            max_connection_rate,
            failed_login_delay_ms,
            tls_handshakes_per_pass,
            sync,
            sync_interval_ms
        );
        if flags.data_dir.is_some() {
            config.data_dir = flags.data_dir;
        }
        if flags.log_file.is_some() {
            config.log_file = flags.log_file;
        }
        if flags.password_file.is_some() {
            config.password_file = flags.password_file;
        }
        if flags.acl_file.is_some() {
            config.acl_file = flags.acl_file;
        }
        if flags.allow_anonymous.is_some() {
            config.allow_anonymous = flags.allow_anonymous;
        }
        config.use_username_as_clientid |= flags.use_username_as_clientid;
        if flags.shards.is_some() {
            config.shards = flags.shards;
        }
        if flags.cpus.is_some() {
            config.cpus = flags.cpus;
        }
        if flags.persistent_session_expiry.is_some() {
            config.persistent_session_expiry = flags.persistent_session_expiry;
        }
        if flags.metrics_listen.is_some() {
            config.metrics_listen = flags.metrics_listen;
        }
        // One setting under two keys: a flag for either replaces whichever the file has.
        if flags.admin_token.is_some() || flags.admin_token_file.is_some() {
            config.admin_token = flags.admin_token.map(AdminToken);
            config.admin_token_file = flags.admin_token_file;
        }
        config.per_shard_listeners |= flags.per_shard_listeners;
        config.test_inject_panic = flags.test_inject_panic;
        config.validate()?;
        config.load_auth_files()?;
        config.load_tls()?;
        config.admin_token_value()?;
        Ok(config)
    }

    /// Reads `password_file` and `acl_file` (anew, whatever was loaded before) into
    /// [`Config::auth_files`]. [`Config::from_flags`] does it; a `Config` built in code needs it
    /// before use ([`crate::broker::start`] and reloads call [`Config::ensure_auth_files`]).
    pub fn load_auth_files(&mut self) -> Result<(), ConfigError> {
        self.auth_files = AuthFiles {
            passwords: match &self.password_file {
                Some(path) => Some(
                    LoadedFile::load(path, crate::auth::password::PasswordFile::parse)
                        .map_err(|e| ConfigError::Invalid(format!("password_file {e}")))?,
                ),
                None => None,
            },
            acl: match &self.acl_file {
                Some(path) => Some(
                    LoadedFile::load(path, crate::acl::Acl::parse)
                        .map_err(|e| ConfigError::Invalid(format!("acl_file {e}")))?,
                ),
                None => None,
            },
        };
        Ok(())
    }

    /// Reads the certificates, keys and CAs of every TLS listener anew into
    /// [`Config::tls_files`]. [`Config::from_flags`] does it; a `Config` built in code gets it from
    /// [`Config::ensure_tls`] at start and reload.
    pub fn load_tls(&mut self) -> Result<(), ConfigError> {
        let by_listener = self
            .listeners()
            .iter()
            .map(|listener| {
                listener
                    .tls()
                    .then(|| tls::load(listener))
                    .transpose()
                    .map_err(ConfigError::Invalid)
            })
            .collect::<Result<Vec<_>, _>>()?;
        // No TLS listener: nothing loaded (a configuration without TLS compares equal to one
        // built in code).
        let by_listener = if by_listener.iter().any(Option::is_some) {
            by_listener
        } else {
            Vec::new()
        };
        self.tls_files = TlsFiles { by_listener };
        Ok(())
    }

    /// Loads the TLS files unless [`Config::tls_files`] already has an entry for each listener.
    pub fn ensure_tls(&mut self) -> Result<(), ConfigError> {
        let listeners = self.listeners();
        if !listeners.iter().any(ListenerConfig::tls) {
            self.tls_files = TlsFiles::default();
            return Ok(());
        }
        let loaded = listeners.len() == self.tls_files.by_listener.len()
            && listeners
                .iter()
                .zip(&self.tls_files.by_listener)
                .all(|(listener, loaded)| listener.tls() == loaded.is_some());
        if loaded {
            return Ok(());
        }
        self.load_tls()
    }

    /// Loads the auth files unless [`Config::auth_files`] already holds exactly the files named
    /// by `password_file` and `acl_file`.
    pub fn ensure_auth_files(&mut self) -> Result<(), ConfigError> {
        let loaded = |file: Option<&PathBuf>, path: Option<&PathBuf>| file == path;
        let passwords = self.auth_files.passwords.as_ref().map(|f| &f.path);
        let acl = self.auth_files.acl.as_ref().map(|f| &f.path);
        if loaded(passwords, self.password_file.as_ref()) && loaded(acl, self.acl_file.as_ref()) {
            return Ok(());
        }
        self.load_auth_files()
    }

    /// Whether clients without a user name are accepted: `allow_anonymous` when set, otherwise
    /// only without a password file (all listeners are then on loopback, see
    /// [`Config::validate`]).
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous.unwrap_or(self.password_file.is_none())
    }

    /// Whether every listener is on a loopback address.
    pub fn loopback_only(&self) -> bool {
        self.listeners()
            .iter()
            .all(|listener| listener.address.ip().is_loopback())
    }

    /// Parses a config file's text (not validated). Missing keys take their defaults, except
    /// that a file with `[[listener]]` tables and no `listen` key has no `listen` address: the
    /// default 0.0.0.0:1883 is only for a file that configures no listener at all.
    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        let mut config: Config = toml::from_str(text)?;
        if !config.listener.is_empty() && !text.parse::<toml::Table>()?.contains_key("listen") {
            config.listen.clear();
        }
        Ok(config)
    }

    /// The configuration as a config file with every key, defaults included. TOML has no null,
    /// so the optional keys that are unset (`shards`, `cpus`, `persistent_session_expiry`,
    /// `metrics_listen`) appear as comments saying what unset means.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        let mut text = String::new();
        let unset = [
            (self.shards.is_none(), "shards", "one shard per CPU allowed"),
            (self.cpus.is_none(), "cpus", "the process's affinity mask"),
            (
                self.persistent_session_expiry.is_none(),
                "persistent_session_expiry",
                "kept forever",
            ),
            (self.log_file.is_none(), "log_file", "stderr"),
            (
                self.metrics_listen.is_none(),
                "metrics_listen",
                "no metrics endpoint",
            ),
            (
                self.admin_token.is_none(),
                "admin_token",
                "no /admin endpoints unless admin_token_file is set",
            ),
            (
                self.admin_token_file.is_none(),
                "admin_token_file",
                "no /admin endpoints unless admin_token is set",
            ),
            (
                self.password_file.is_none(),
                "password_file",
                "no authentication",
            ),
            (
                self.acl_file.is_none(),
                "acl_file",
                "every client may use every topic",
            ),
            (
                self.allow_anonymous.is_none(),
                "allow_anonymous",
                "true without password_file (loopback listeners only), false with one",
            ),
        ];
        for (is_unset, key, meaning) in unset {
            if is_unset {
                text.push_str(&format!("# {key}: unset ({meaning})\n"));
            }
        }
        if self.admin_token.is_some() {
            // A secret: said to be set, never printed.
            text.push_str("# admin_token: set (not printed)\n");
        }
        text.push_str(&toml::to_string_pretty(self)?);
        Ok(text)
    }

    /// Every listener: each `listen` address as a plain MQTT listener with the defaults, then
    /// the `tls_listen`, `ws_listen` and `wss_listen` addresses (with the top-level TLS keys),
    /// then the `[[listener]]` tables, in file order. A listener's index in this list names it
    /// everywhere (connection counts, rates, TLS material).
    pub fn listeners(&self) -> Vec<ListenerConfig> {
        let with_tls = |listener: ListenerConfig| ListenerConfig {
            certfile: self.certfile.clone(),
            keyfile: self.keyfile.clone(),
            cafile: self.cafile.clone(),
            require_certificate: self.require_certificate,
            ..listener
        };
        let ws = |address| ListenerConfig {
            protocol: ListenerProtocol::Ws,
            ..ListenerConfig::mqtt(address)
        };
        self.listen
            .iter()
            .map(|&address| ListenerConfig::mqtt(address))
            .chain(
                self.tls_listen
                    .iter()
                    .map(|&address| with_tls(ListenerConfig::mqtt(address))),
            )
            .chain(self.ws_listen.iter().map(|&address| ws(address)))
            .chain(self.wss_listen.iter().map(|&address| with_tls(ws(address))))
            .chain(self.listener.iter().cloned())
            .collect()
    }

    /// Checks ranges that the types alone do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let listeners = self.listeners();
        if listeners.is_empty() {
            return Err(ConfigError::Invalid(
                "no listener: set listen (--listen) or add a [[listener]] table".into(),
            ));
        }
        let flag_tls = !self.tls_listen.is_empty() || !self.wss_listen.is_empty();
        if flag_tls && (self.certfile.is_none() || self.keyfile.is_none()) {
            return Err(ConfigError::Invalid(
                "tls_listen / wss_listen (--tls-listen / --wss-listen) need certfile and keyfile \
                 (--cert FILE --key FILE)"
                    .into(),
            ));
        }
        if !flag_tls
            && (self.certfile.is_some()
                || self.keyfile.is_some()
                || self.cafile.is_some()
                || self.require_certificate)
        {
            return Err(ConfigError::Invalid(
                "certfile, keyfile, cafile and require_certificate apply to tls_listen and \
                 wss_listen listeners (--tls-listen / --wss-listen), and none is configured; \
                 a [[listener]] table sets its own"
                    .into(),
            ));
        }
        let mut bound = HashSet::new();
        for listener in &listeners {
            listener.validate().map_err(ConfigError::Invalid)?;
            // Port 0 asks for an ephemeral port: each such listener gets a port of its own.
            if listener.address.port() != 0 && !bound.insert(listener.address) {
                return Err(ConfigError::Invalid(format!(
                    "address {} is bound twice (listen and [[listener]] addresses must differ)",
                    listener.address
                )));
            }
        }
        if let Some(metrics) = self.metrics_listen {
            if metrics.port() != 0 && bound.contains(&metrics) {
                return Err(ConfigError::Invalid(format!(
                    "metrics_listen {metrics} is also an MQTT listener address"
                )));
            }
        }
        if self.max_packet_size < 64 {
            return Err(ConfigError::Invalid(
                "max_packet_size must be at least 64".into(),
            ));
        }
        if self.max_inflight == 0 {
            return Err(ConfigError::Invalid(
                "max_inflight must be at least 1".into(),
            ));
        }
        if self.receive_maximum == 0 {
            return Err(ConfigError::Invalid(
                "receive_maximum must be at least 1".into(),
            ));
        }
        if self.mesh_capacity == 0 {
            return Err(ConfigError::Invalid(
                "mesh_capacity must be at least 1".into(),
            ));
        }
        if let Some(shards) = self.shards {
            if shards == 0 || shards > core_router::interest::MAX_SHARDS {
                return Err(ConfigError::Invalid(format!(
                    "shards must be between 1 and {}",
                    core_router::interest::MAX_SHARDS
                )));
            }
        }
        if let Some(cpus) = &self.cpus {
            parse_cpu_list(cpus)?;
        }
        if !(1..=60_000).contains(&self.sync_interval_ms) {
            return Err(ConfigError::Invalid(
                "sync_interval_ms must be between 1 and 60000".into(),
            ));
        }
        if self
            .data_dir
            .as_ref()
            .is_some_and(|dir| dir.as_os_str().is_empty())
        {
            return Err(ConfigError::Invalid(
                "data_dir is empty (leave the key out to keep everything in memory)".into(),
            ));
        }
        if self.admin_token.is_some() && self.admin_token_file.is_some() {
            return Err(ConfigError::Invalid(
                "admin_token and admin_token_file are both set: set one".into(),
            ));
        }
        if let Some(token) = &self.admin_token {
            admin_token::check(&token.0, "admin_token")?;
        }
        for listener in &listeners {
            if let Some(mount) = &listener.mount_point {
                check_mount_point(mount).map_err(|reason| {
                    ConfigError::Invalid(format!(
                        "listener {}: mount_point {mount:?} {reason}",
                        listener.address
                    ))
                })?;
            }
        }
        // Safe by default (Mosquitto 2.0): without authentication, only loopback clients. A
        // listener's own `allow_anonymous` decides for it; unset, the top-level key does.
        if self.password_file.is_none() {
            let open = listeners.iter().find(|l| {
                !l.address.ip().is_loopback()
                    && l.allow_anonymous.or(self.allow_anonymous) != Some(true)
            });
            if let Some(open) = open {
                return Err(ConfigError::Invalid(format!(
                    "listener {} is not on loopback and no password_file is configured: anyone \
                     on the network could connect without credentials. Configure a password file \
                     (--password-file FILE, see `shardmq passwd`) or accept anonymous clients \
                     explicitly (--allow-anonymous / allow_anonymous = true, or \
                     allow_anonymous = true in that [[listener]] table)",
                    open.address
                )));
            }
        }
        Ok(())
    }
}

/// Why `mount` cannot be a listener's `mount_point` (Mosquitto's rule: no `+` or `#`; also
/// not empty, not under `$` topics such as `$SYS`, and a valid UTF-8 topic without NUL).
fn check_mount_point(mount: &str) -> Result<(), &'static str> {
    if mount.is_empty() {
        return Err("is empty (leave the key out for no mount point)");
    }
    if mount.contains(['+', '#']) {
        return Err("contains a wildcard (+ or #)");
    }
    if mount.starts_with('$') {
        return Err("starts with `$` (topics there belong to the broker)");
    }
    if mount.contains('\0') {
        return Err("contains a NUL character");
    }
    if mount.len() > usize::from(u16::MAX) {
        return Err("is longer than an MQTT topic can be");
    }
    Ok(())
}

/// What changed between two configurations, by config key: `(applied, restart_needed)`.
/// `restart_needed` lists the changed keys that only take effect at start (`listen`,
/// `listener`, `shards`, `cpus`, `backlog`, `mesh_capacity`, `metrics_listen`,
/// `per_shard_listeners`, `log_format`, `data_dir`, `sync`, `sync_interval_ms`); every other changed key is in `applied` (`log_file`
/// among them: the SIGHUP path in the binary reopens the log at the new path). Both are empty when
/// nothing changed.
pub fn reload_diff(old: &Config, new: &Config) -> (Vec<String>, Vec<String>) {
    // Destructured without `..`: a new field fails to compile here until it is classified.
    let Config {
        listen,
        listener,
        shards,
        cpus,
        log_level,
        log_format,
        log_file,
        max_packet_size,
        max_connections,
        max_connections_per_shard,
        max_inflight,
        max_queued_messages,
        max_queued_bytes,
        max_topic_levels,
        max_topic_length,
        persistent_session_expiry,
        connect_timeout,
        max_write_buffer,
        mesh_capacity,
        backlog,
        topic_alias_maximum,
        receive_maximum,
        shared_subscription_strategy,
        sys_interval,
        max_subscriptions_per_client,
        max_retained_messages,
        max_retained_bytes,
        max_memory,
        max_publish_rate,
        max_publish_bytes_rate,
        publish_rate_action,
        max_connection_rate,
        metrics_listen,
        admin_token,
        admin_token_file,
        password_file,
        acl_file,
        allow_anonymous,
        failed_login_delay_ms,
        max_keepalive,
        use_username_as_clientid,
        per_shard_listeners,
        tls_listen,
        ws_listen,
        wss_listen,
        certfile,
        keyfile,
        cafile,
        require_certificate,
        tls_handshakes_per_pass,
        data_dir,
        sync,
        sync_interval_ms,
        test_inject_panic: _,
        auth_files,
        tls_files,
    } = new;
    let mut applied = Vec::new();
    let mut restart_needed = Vec::new();
    macro_rules! diff {
        ($list:ident: $($field:ident),*) => {
            $( if old.$field != *$field { $list.push(stringify!($field).to_string()); } )*
        };
    }
    diff!(
        restart_needed: listen,
        listener,
        shards,
        cpus,
        backlog,
        mesh_capacity,
        metrics_listen,
        per_shard_listeners,
        log_format,
        tls_listen,
        ws_listen,
        wss_listen,
        data_dir,
        sync,
        sync_interval_ms
    );
    diff!(
        applied: log_level,
        log_file,
        max_packet_size,
        max_connections,
        max_connections_per_shard,
        max_inflight,
        max_queued_messages,
        max_queued_bytes,
        max_topic_levels,
        max_topic_length,
        persistent_session_expiry,
        connect_timeout,
        max_write_buffer,
        topic_alias_maximum,
        receive_maximum,
        shared_subscription_strategy,
        sys_interval,
        max_subscriptions_per_client,
        max_retained_messages,
        max_retained_bytes,
        max_memory,
        max_publish_rate,
        max_publish_bytes_rate,
        publish_rate_action,
        max_connection_rate,
        admin_token,
        admin_token_file,
        password_file,
        acl_file,
        allow_anonymous,
        failed_login_delay_ms,
        max_keepalive,
        use_username_as_clientid,
        certfile,
        keyfile,
        cafile,
        require_certificate,
        tls_handshakes_per_pass
    );
    // Certificates are read again on every reload: new files under the same paths count.
    let same_paths = old.certfile == *certfile && old.keyfile == *keyfile && old.cafile == *cafile;
    if old.tls_files != *tls_files && same_paths {
        applied.push("certificates".to_string());
    }
    // The files are read again on every reload: a changed file under the same path counts.
    if old.password_file == *password_file && old.auth_files.passwords != auth_files.passwords {
        applied.push("password_file".to_string());
    }
    if old.acl_file == *acl_file && old.auth_files.acl != auth_files.acl {
        applied.push("acl_file".to_string());
    }
    (applied, restart_needed)
}

/// Parses "0,2-5" into [0, 2, 3, 4, 5].
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, ConfigError> {
    let bad = || ConfigError::Invalid(format!("bad CPU list {text:?}"));
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((low, high)) => {
                let low: usize = low.trim().parse().map_err(|_| bad())?;
                let high: usize = high.trim().parse().map_err(|_| bad())?;
                if low > high || high > 4095 {
                    return Err(bad());
                }
                cpus.extend(low..=high);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    if cpus.is_empty() {
        return Err(bad());
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0,2-5").unwrap(), vec![0, 2, 3, 4, 5]);
        assert_eq!(parse_cpu_list("3, 1").unwrap(), vec![1, 3]);
        assert!(parse_cpu_list("5-2").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
    }

    #[test]
    fn file_then_flags() {
        let dir = std::env::temp_dir().join(format!("shardmq-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("broker.toml");
        std::fs::write(
            &path,
            "listen = [\"127.0.0.1:1999\"]\nmax_inflight = 7\nshards = 3\n",
        )
        .unwrap();
        let flags = Flags::parse_from([
            "shardmq",
            "--config",
            path.to_str().unwrap(),
            "--shards",
            "2",
        ]);
        let config = Config::from_flags(flags).unwrap();
        assert_eq!(config.listen, vec!["127.0.0.1:1999".parse().unwrap()]);
        assert_eq!(config.max_inflight, 7);
        assert_eq!(config.shards, Some(2));
        std::fs::write(&path, "no_such_key = 1\n").unwrap();
        let flags = Flags::parse_from(["shardmq", "--config", path.to_str().unwrap()]);
        assert!(matches!(
            Config::from_flags(flags),
            Err(ConfigError::Parse { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A temporary directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("shardmq-config-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn file(&self, text: &str) -> PathBuf {
            let path = self.0.join("broker.toml");
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn load(path: &std::path::Path, extra: &[&str]) -> Result<Config, ConfigError> {
        let mut args = vec!["shardmq", "--config", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        Config::from_flags(Flags::parse_from(args))
    }

    const TABLES: &str = r#"
max_inflight = 7

[[listener]]
address = "127.0.0.1:1884"
max_connections = 100
name = "internal"

[[listener]]
address = "127.0.0.1:1885"
protocol = "mqtt"
"#;

    #[test]
    fn listener_tables_parse() {
        let dir = TempDir::new("tables");
        let path = dir.file(&format!("listen = [\"127.0.0.1:1883\"]\n{TABLES}"));
        let config = load(&path, &[]).unwrap();
        assert_eq!(config.max_inflight, 7);
        assert_eq!(config.listen, vec![addr("127.0.0.1:1883")]);
        assert_eq!(
            config.listener,
            vec![
                ListenerConfig {
                    max_connections: 100,
                    name: Some("internal".into()),
                    ..ListenerConfig::mqtt(addr("127.0.0.1:1884"))
                },
                ListenerConfig::mqtt(addr("127.0.0.1:1885")),
            ]
        );
        let listeners = config.listeners();
        assert_eq!(listeners.len(), 3);
        assert_eq!(listeners[0], ListenerConfig::mqtt(addr("127.0.0.1:1883")));
        assert_eq!(listeners[1].name.as_deref(), Some("internal"));
        assert_eq!(listeners[2].address, addr("127.0.0.1:1885"));

        // --listen replaces the file's listen list; the tables stay.
        let config = load(&path, &["--listen", "127.0.0.1:2883"]).unwrap();
        assert_eq!(config.listen, vec![addr("127.0.0.1:2883")]);
        let addresses: Vec<_> = config.listeners().iter().map(|l| l.address).collect();
        assert_eq!(
            addresses,
            vec![
                addr("127.0.0.1:2883"),
                addr("127.0.0.1:1884"),
                addr("127.0.0.1:1885")
            ]
        );
    }

    #[test]
    fn unknown_key_in_listener_table_is_named() {
        let dir = TempDir::new("unknown");
        let path = dir.file("[[listener]]\naddress = \"127.0.0.1:1884\"\ntls_cert = \"x.pem\"\n");
        let error = load(&path, &[]).unwrap_err();
        assert!(matches!(error, ConfigError::Parse { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("tls_cert"), "{message}");
        assert!(message.contains("line 3"), "{message}");
        assert!(message.contains("broker.toml"), "{message}");

        let path = dir.file("[[listener]]\naddress = \"127.0.0.1:1884\"\nprotocol = \"quic\"\n");
        let message = load(&path, &[]).unwrap_err().to_string();
        assert!(message.contains("quic"), "{message}");

        // Key combinations the types allow but a listener cannot serve are named too.
        let path =
            dir.file("[[listener]]\naddress = \"127.0.0.1:1884\"\nrequire_certificate = true\n");
        let message = load(&path, &[]).unwrap_err().to_string();
        assert!(
            message.contains("require_certificate needs TLS"),
            "{message}"
        );
        let path = dir.file("listen = []\ntls_listen = [\"127.0.0.1:8883\"]\n");
        let message = load(&path, &[]).unwrap_err().to_string();
        assert!(message.contains("--cert"), "{message}");

        let path = dir.file("[[listener]]\nname = \"no address\"\n");
        let message = load(&path, &[]).unwrap_err().to_string();
        assert!(message.contains("address"), "{message}");
    }

    #[test]
    fn duplicate_address_is_refused() {
        let dir = TempDir::new("duplicate");
        let path =
            dir.file("listen = [\"127.0.0.1:1884\"]\n[[listener]]\naddress = \"127.0.0.1:1884\"\n");
        let error = load(&path, &[]).unwrap_err();
        assert!(matches!(error, ConfigError::Invalid(_)), "{error:?}");
        assert!(error.to_string().contains("127.0.0.1:1884"), "{error}");

        // Twice the same --listen address.
        let flags = Flags::parse_from([
            "shardmq",
            "--listen",
            "127.0.0.1:1886",
            "--listen",
            "127.0.0.1:1886",
        ]);
        let error = Config::from_flags(flags).unwrap_err();
        assert!(error.to_string().contains("127.0.0.1:1886"), "{error}");

        // Port 0 is a fresh ephemeral port each time: not a duplicate.
        let flags = Flags::parse_from([
            "shardmq",
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
        ]);
        assert!(Config::from_flags(flags).is_ok());
    }

    #[test]
    fn listen_only_default() {
        let config = Config::from_flags(Flags::parse_from(["shardmq"])).unwrap();
        assert_eq!(config.listen, DEFAULT_LISTEN.to_vec());
        assert!(config.listener.is_empty());
        let defaults: Vec<_> = DEFAULT_LISTEN
            .iter()
            .map(|&a| ListenerConfig::mqtt(a))
            .collect();
        assert_eq!(config.listeners(), defaults);
        assert_eq!(
            DEFAULT_LISTEN,
            [addr("127.0.0.1:1883"), addr("[::1]:1883")],
            "loopback only by default"
        );
        assert!(config.loopback_only());

        // A file that configures no listener keeps the default too.
        let dir = TempDir::new("default");
        let path = dir.file("max_inflight = 9\n");
        let config = load(&path, &[]).unwrap();
        assert_eq!(config.listeners(), defaults);

        // An explicitly empty listen list and no table: nothing to listen on.
        let path = dir.file("listen = []\n");
        let error = load(&path, &[]).unwrap_err();
        assert!(error.to_string().contains("no listener"), "{error}");
    }

    #[test]
    fn listener_tables_only_have_no_default_listen() {
        let dir = TempDir::new("only");
        let path = dir.file(TABLES);
        let config = load(&path, &[]).unwrap();
        assert!(config.listen.is_empty(), "{:?}", config.listen);
        let addresses: Vec<_> = config.listeners().iter().map(|l| l.address).collect();
        assert_eq!(
            addresses,
            vec![addr("127.0.0.1:1884"), addr("127.0.0.1:1885")]
        );
        // --listen adds plain listeners beside the tables.
        let config = load(&path, &["--listen", "127.0.0.1:2883"]).unwrap();
        assert_eq!(config.listeners().len(), 3);
        assert_eq!(config.listeners()[0].address, addr("127.0.0.1:2883"));
    }

    #[test]
    fn to_toml_round_trips() {
        let dir = TempDir::new("roundtrip");
        let path = dir.file(&format!(
            "listen = [\"127.0.0.1:1883\"]\ncpus = \"0\"\n{TABLES}"
        ));
        let config = load(&path, &[]).unwrap();
        let text = config.to_toml().unwrap();
        assert!(text.contains("max_inflight = 7"), "{text}");
        assert!(text.contains("[[listener]]"), "{text}");
        assert!(text.contains("# shards: unset"), "{text}");
        assert!(!text.contains("# cpus"), "{text}");
        assert_eq!(Config::from_toml(&text).unwrap(), config);

        // Only tables: printed with `listen = []`, which reads back the same.
        let config = load(&dir.file(TABLES), &[]).unwrap();
        let text = config.to_toml().unwrap();
        assert_eq!(Config::from_toml(&text).unwrap(), config);

        let config = Config::from_flags(Flags::parse_from(["shardmq"])).unwrap();
        assert_eq!(
            Config::from_toml(&config.to_toml().unwrap()).unwrap(),
            config
        );
    }

    #[test]
    fn command_line() {
        let cli = Cli::parse_from(["shardmq", "--listen", "127.0.0.1:1999"]);
        match cli.into_command() {
            Command::Serve(flags) => assert_eq!(flags.listen, vec![addr("127.0.0.1:1999")]),
            other => panic!("{other:?}"),
        }
        let cli = Cli::parse_from(["shardmq", "serve", "--shards", "2"]);
        assert!(matches!(cli.into_command(), Command::Serve(f) if f.shards == Some(2)));
        let cli = Cli::parse_from(["shardmq", "check-config", "--config", "x.toml"]);
        match cli.into_command() {
            Command::CheckConfig(flags) => assert_eq!(flags.config, Some("x.toml".into())),
            other => panic!("{other:?}"),
        }
        // Top-level flags and a subcommand do not mix.
        assert!(Cli::try_parse_from(["shardmq", "--shards", "2", "serve"]).is_err());
        assert!(Cli::try_parse_from(["shardmq", "no-such-command"]).is_err());
    }

    #[test]
    fn durable_store_keys_parse_validate_and_need_a_restart() {
        let cli = Cli::try_parse_from([
            "shardmq",
            "--data-dir",
            "/var/lib/shardmq",
            "--sync",
            "always",
            "--sync-interval-ms",
            "250",
        ])
        .unwrap();
        let Command::Serve(flags) = cli.into_command() else {
            panic!("not serve");
        };
        let config = Config::from_flags(flags).unwrap();
        assert_eq!(config.data_dir, Some(PathBuf::from("/var/lib/shardmq")));
        assert_eq!(config.sync, SyncMode::Always);
        assert_eq!(config.sync_interval_ms, 250);
        let text = config.to_toml().unwrap();
        assert!(text.contains("data_dir = \"/var/lib/shardmq\""), "{text}");
        assert!(text.contains("sync = \"always\""), "{text}");
        assert_eq!(Config::from_toml(&text).unwrap(), config);
        // Defaults: no directory, interval sync every second.
        let defaults = Config::default();
        assert_eq!(
            (
                defaults.data_dir.clone(),
                defaults.sync,
                defaults.sync_interval_ms
            ),
            (None, SyncMode::Interval, 1000)
        );
        let from_file = Config::from_toml("data_dir = \"d\"\nsync = \"interval\"\n").unwrap();
        assert_eq!(from_file.data_dir, Some(PathBuf::from("d")));
        assert!(Config::from_toml("sync = \"sometimes\"").is_err());
        for bad in [0, 60_001] {
            let config = Config {
                sync_interval_ms: bad,
                ..Config::default()
            };
            assert!(config.validate().is_err(), "{bad}");
        }
        let (applied, restart_needed) = reload_diff(&defaults, &config);
        assert!(applied.is_empty(), "{applied:?}");
        assert_eq!(restart_needed, vec!["data_dir", "sync", "sync_interval_ms"]);
    }

    #[test]
    fn reload_diff_names_changed_keys() {
        let old = Config::default();
        assert_eq!(reload_diff(&old, &old.clone()), (vec![], vec![]));

        let mut new = old.clone();
        new.max_inflight = 5;
        new.log_level = "debug".into();
        new.persistent_session_expiry = Some(60);
        new.shared_subscription_strategy = SharedStrategy::Sticky;
        new.shards = Some(3);
        new.listener
            .push(ListenerConfig::mqtt(addr("127.0.0.1:1884")));
        new.backlog = 16;
        let (applied, restart_needed) = reload_diff(&old, &new);
        assert_eq!(
            applied,
            vec![
                "log_level",
                "max_inflight",
                "persistent_session_expiry",
                "shared_subscription_strategy"
            ]
        );
        assert_eq!(restart_needed, vec!["listener", "shards", "backlog"]);

        let mut new = old.clone();
        new.listen = vec![addr("127.0.0.1:1")];
        new.cpus = Some("0".into());
        new.mesh_capacity = 8;
        new.metrics_listen = Some(addr("127.0.0.1:9100"));
        new.per_shard_listeners = true;
        new.max_connections = 10;
        // Not a config key: never reported.
        new.test_inject_panic = Some(0);
        let (applied, restart_needed) = reload_diff(&old, &new);
        assert_eq!(applied, vec!["max_connections"]);
        assert_eq!(
            restart_needed,
            vec![
                "listen",
                "cpus",
                "mesh_capacity",
                "metrics_listen",
                "per_shard_listeners"
            ]
        );
    }

    #[test]
    fn metrics_listen_from_file_and_flag() {
        let dir = TempDir::new("metrics");
        let path = dir.file("metrics_listen = \"127.0.0.1:9100\"\n");
        let config = load(&path, &[]).unwrap();
        assert_eq!(config.metrics_listen, Some(addr("127.0.0.1:9100")));
        let config = load(&path, &["--metrics-listen", "127.0.0.1:9200"]).unwrap();
        assert_eq!(config.metrics_listen, Some(addr("127.0.0.1:9200")));
        let text = config.to_toml().unwrap();
        assert!(
            text.contains("metrics_listen = \"127.0.0.1:9200\""),
            "{text}"
        );
        assert_eq!(Config::from_toml(&text).unwrap(), config);

        // Unset by default, printed as a comment.
        let config = Config::from_flags(Flags::parse_from(["shardmq"])).unwrap();
        assert_eq!(config.metrics_listen, None);
        let text = config.to_toml().unwrap();
        assert!(text.contains("# metrics_listen: unset"), "{text}");

        // Not on an MQTT listener's address.
        let flags = Flags::parse_from([
            "shardmq",
            "--listen",
            "127.0.0.1:1886",
            "--metrics-listen",
            "127.0.0.1:1886",
        ]);
        let error = Config::from_flags(flags).unwrap_err();
        assert!(error.to_string().contains("metrics_listen"), "{error}");
    }

    #[test]
    fn log_keys_from_file_and_flags() {
        // Defaults: text on stderr; the unset file is printed as a comment.
        let config = Config::from_flags(Flags::parse_from(["shardmq"])).unwrap();
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.log_file, None);
        let text = config.to_toml().unwrap();
        assert!(text.contains("log_format = \"text\""), "{text}");
        assert!(text.contains("# log_file: unset (stderr)"), "{text}");

        let dir = TempDir::new("logs");
        let path = dir.file("log_format = \"json\"\nlog_file = \"/var/log/shardmq.log\"\n");
        let config = load(&path, &[]).unwrap();
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(
            config.log_file.as_deref(),
            Some(std::path::Path::new("/var/log/shardmq.log"))
        );
        let text = config.to_toml().unwrap();
        assert!(text.contains("log_format = \"json\""), "{text}");
        assert!(
            text.contains("log_file = \"/var/log/shardmq.log\""),
            "{text}"
        );
        assert_eq!(Config::from_toml(&text).unwrap(), config);

        // Flags override the file.
        let config = load(
            &path,
            &["--log-format", "text", "--log-file", "/tmp/other.log"],
        )
        .unwrap();
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(
            config.log_file.as_deref(),
            Some(std::path::Path::new("/tmp/other.log"))
        );

        // Anything but text or json is refused, naming the key.
        let path = dir.file("log_format = \"xml\"\n");
        let error = load(&path, &[]).unwrap_err();
        assert!(matches!(error, ConfigError::Parse { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.contains("xml") && message.contains("line 1"),
            "{message}"
        );
        assert!(Flags::try_parse_from(["shardmq", "--log-format", "xml"]).is_err());

        // The file follows a reload; the format needs a restart.
        let old = Config::default();
        let mut new = old.clone();
        new.log_file = Some("/tmp/new.log".into());
        new.log_format = LogFormat::Json;
        assert_eq!(
            reload_diff(&old, &new),
            (vec!["log_file".to_string()], vec!["log_format".to_string()])
        );
    }

    const PASSWORDS: &str =
        "alice:$6$c2hhcmRtcS1zYWx0$GDOEqXcWpoBPz2MQ6RfzAqt+bMonCr5JFYNzJke4qL8frgqEq+GKaEt18J7sHPP8lY8d9EEi6SZhkdfcMPZqPQ==\n";

    #[test]
    fn auth_keys_from_file_and_flags() {
        let dir = TempDir::new("auth");
        let passwords = dir.0.join("passwd");
        std::fs::write(&passwords, PASSWORDS).unwrap();
        let acl = dir.0.join("acl");
        std::fs::write(&acl, "user alice\ntopic readwrite a/#\n").unwrap();
        let path = dir.file(&format!(
            "password_file = {:?}\nacl_file = {:?}\nmax_keepalive = 60\nuse_username_as_clientid = true\n",
            passwords, acl
        ));
        let config = load(&path, &[]).unwrap();
        assert_eq!(config.password_file.as_deref(), Some(passwords.as_path()));
        assert_eq!(config.max_keepalive, 60);
        assert!(config.use_username_as_clientid);
        assert_eq!(config.allow_anonymous, None);
        assert!(
            !config.anonymous_allowed(),
            "a password file refuses anonymous clients"
        );
        let loaded = config.auth_files.passwords.as_ref().expect("loaded");
        assert_eq!(loaded.data.len(), 1);
        let acl_data = &config.auth_files.acl.as_ref().expect("loaded").data;
        assert!(acl_data.may_publish(Some("alice"), "c", "a/b"));
        assert!(!acl_data.may_publish(Some("bob"), "c", "a/b"));

        let config = load(&path, &["--allow-anonymous", "--max-keepalive", "30"]).unwrap();
        assert_eq!(config.allow_anonymous, Some(true));
        assert!(config.anonymous_allowed());
        assert_eq!(config.max_keepalive, 30);
        let config = load(&path, &["--allow-anonymous", "false"]).unwrap();
        assert_eq!(config.allow_anonymous, Some(false));

        // Printed and read back; the unset ones are comments.
        let text = config.to_toml().unwrap();
        assert!(text.contains("password_file = "), "{text}");
        assert_eq!(Config::from_toml(&text).unwrap().acl_file, config.acl_file);
        let text = Config::default().to_toml().unwrap();
        assert!(text.contains("# password_file: unset"), "{text}");
        assert!(text.contains("# allow_anonymous: unset"), "{text}");
        assert!(text.contains("max_keepalive = 65535"), "{text}");

        // A bad file is a clear error naming the file and the line.
        std::fs::write(&passwords, "alice:$6$Kn+eCwFQiyHyVD1N\n").unwrap();
        let error = load(&path, &[]).unwrap_err().to_string();
        assert!(error.contains("password_file"), "{error}");
        assert!(error.contains("passwd"), "{error}");
        assert!(error.contains("line 1"), "{error}");
        std::fs::write(&passwords, PASSWORDS).unwrap();
        std::fs::write(&acl, "user alice\ntopic rw a/#\n").unwrap();
        let error = load(&path, &[]).unwrap_err().to_string();
        assert!(
            error.contains("acl_file") && error.contains("line 2"),
            "{error}"
        );
        std::fs::remove_file(&acl).unwrap();
        let error = load(&path, &[]).unwrap_err().to_string();
        assert!(error.contains("cannot read"), "{error}");
    }

    #[test]
    fn listener_allow_anonymous_decides_for_its_listener() {
        let listener = |address: &str, anonymous: Option<bool>| {
            let mut listener = ListenerConfig::mqtt(address.parse().unwrap());
            listener.allow_anonymous = anonymous;
            listener
        };
        let config = |top: Option<bool>, listeners: Vec<ListenerConfig>| Config {
            listen: vec!["127.0.0.1:1883".parse().unwrap()],
            listener: listeners,
            allow_anonymous: top,
            ..Config::default()
        };
        // No password file: an open listener must say yes itself, or inherit an explicit yes.
        assert!(config(None, vec![listener("0.0.0.0:1884", Some(true))])
            .validate()
            .is_ok());
        let error = config(None, vec![listener("0.0.0.0:1884", None)])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(error.contains("0.0.0.0:1884"), "{error}");
        assert!(config(Some(true), vec![listener("0.0.0.0:1884", None)])
            .validate()
            .is_ok());
        // The listener's no wins over the top-level yes.
        let error = config(Some(true), vec![listener("0.0.0.0:1884", Some(false))])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(error.contains("0.0.0.0:1884"), "{error}");
        // Loopback listeners need nothing.
        assert!(
            config(Some(false), vec![listener("127.0.0.2:1884", Some(false))])
                .validate()
                .is_ok()
        );
        // One open listener is enough to refuse.
        let error = config(
            None,
            vec![
                listener("0.0.0.0:1884", Some(true)),
                listener("0.0.0.0:1885", None),
            ],
        )
        .validate()
        .unwrap_err()
        .to_string();
        assert!(error.contains("0.0.0.0:1885"), "{error}");
    }

    #[test]
    fn mount_points_are_checked() {
        let with_mount = |mount: &str| {
            let mut listener = ListenerConfig::mqtt("127.0.0.1:1884".parse().unwrap());
            listener.mount_point = Some(mount.to_owned());
            Config {
                listen: vec!["127.0.0.1:1883".parse().unwrap()],
                listener: vec![listener],
                ..Config::default()
            }
            .validate()
        };
        for good in ["tenant/a/", "a", "site 1/", "/leading", "ü/"] {
            assert!(with_mount(good).is_ok(), "{good:?}");
        }
        for bad in ["", "a/+/", "a/#", "#", "+", "a+b/", "$SYS/", "$x", "a\0b"] {
            let error = with_mount(bad).unwrap_err().to_string();
            assert!(error.contains("mount_point"), "{bad:?}: {error}");
        }
        // From a config file too.
        let config = Config::from_toml(
            "[[listener]]\naddress = \"127.0.0.1:1884\"\nmount_point = \"x/#\"\n",
        )
        .unwrap();
        assert!(config.validate().is_err());
    }

    #[test]
    fn non_loopback_listener_needs_authentication() {
        let error = Config::from_flags(Flags::parse_from(["shardmq", "--listen", "0.0.0.0:1883"]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("0.0.0.0:1883"), "{error}");
        assert!(error.contains("--allow-anonymous"), "{error}");
        assert!(error.contains("--password-file"), "{error}");
        let config = Config::from_flags(Flags::parse_from([
            "shardmq",
            "--listen",
            "0.0.0.0:1883",
            "--allow-anonymous",
        ]))
        .unwrap();
        assert!(config.anonymous_allowed());
        assert!(!config.loopback_only());

        let dir = TempDir::new("open");
        let passwords = dir.0.join("passwd");
        std::fs::write(&passwords, PASSWORDS).unwrap();
        let config = Config::from_flags(Flags::parse_from([
            "shardmq",
            "--listen",
            "[::]:1883",
            "--password-file",
            passwords.to_str().unwrap(),
        ]))
        .unwrap();
        assert!(!config.anonymous_allowed());
        // A [[listener]] table is checked the same way.
        let path = dir.file("[[listener]]\naddress = \"10.1.2.3:1884\"\n");
        assert!(load(&path, &[]).is_err());
    }

    #[test]
    fn reload_diff_sees_changed_auth_files() {
        let dir = TempDir::new("authdiff");
        let passwords = dir.0.join("passwd");
        std::fs::write(&passwords, PASSWORDS).unwrap();
        let path = dir.file(&format!("password_file = {passwords:?}\n"));
        let old = load(&path, &[]).unwrap();
        let same = load(&path, &[]).unwrap();
        assert_eq!(reload_diff(&old, &same), (vec![], vec![]));
        std::fs::write(&passwords, format!("{PASSWORDS}# a comment\n")).unwrap();
        let changed = load(&path, &[]).unwrap();
        assert_eq!(reload_diff(&old, &changed).0, vec!["password_file"]);
        let mut new = old.clone();
        new.max_keepalive = 10;
        new.allow_anonymous = Some(true);
        assert_eq!(
            reload_diff(&old, &new).0,
            vec!["allow_anonymous", "max_keepalive"]
        );
    }
}
