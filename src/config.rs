//! Broker configuration: command-line flags and a TOML file, every flag with a config key.
//! Flags override the file; the file overrides the defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;

/// How a shared subscription picks the member that receives a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
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

/// Everything the broker can be told. Field names are the config-file keys.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Addresses to accept MQTT over TCP on; every shard accepts on each (SO_REUSEPORT).
    pub listen: Vec<SocketAddr>,
    /// Number of shards (executors); default one per CPU the process may run on.
    pub shards: Option<usize>,
    /// CPUs to pin shards to, e.g. "0,2-5"; default: the process's affinity mask.
    pub cpus: Option<String>,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing directive).
    pub log_level: String,
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
    /// Test hook: each shard also listens on its own 127.0.0.1 port so tests can place a client
    /// on a chosen shard.
    pub per_shard_listeners: bool,
    /// Test hook: this shard panics about a second after start (proves that a dead shard ends
    /// the process instead of leaving it half alive). Not a config-file key.
    #[serde(skip)]
    pub test_inject_panic: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 1883))],
            shards: None,
            cpus: None,
            log_level: "info".into(),
            max_packet_size: 1 << 20,
            max_connections: 0,
            max_connections_per_shard: 0,
            max_inflight: 128,
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
            per_shard_listeners: false,
            test_inject_panic: None,
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

/// Command-line flags. Each one overrides the config key of the same name.
#[derive(Debug, Parser)]
#[command(
    name = "shardmq",
    version,
    about = "io_uring shard-per-core MQTT 3.1/3.1.1/5.0 broker"
)]
pub struct Flags {
    /// TOML config file (keys as the long flags, with underscores).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on (repeatable). Default 0.0.0.0:1883.
    #[arg(long)]
    pub listen: Vec<SocketAddr>,
    /// Number of shards; default one per allowed CPU.
    #[arg(long)]
    pub shards: Option<usize>,
    /// CPUs to pin shards to, e.g. 0,2-5.
    #[arg(long)]
    pub cpus: Option<String>,
    /// Log level or tracing directive.
    #[arg(long)]
    pub log_level: Option<String>,
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
    /// Test hook: one extra 127.0.0.1 listener per shard.
    #[arg(long, hide = true)]
    pub per_shard_listeners: bool,
    /// Test hook: shard N panics about a second after start.
    #[arg(long, hide = true)]
    pub test_inject_panic: Option<usize>,
}

impl Config {
    /// Builds the configuration from flags and the file they name.
    pub fn from_flags(flags: Flags) -> Result<Config, ConfigError> {
        let mut config = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source: Box::new(source),
                })?
            }
            None => Config::default(),
        };
        if !flags.listen.is_empty() {
            config.listen = flags.listen;
        }
        macro_rules! take {
            ($($field:ident),*) => { $( if let Some(value) = flags.$field { config.$field = value; } )* };
        }
        take!(
            log_level,
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
            shared_subscription_strategy
        );
        if flags.shards.is_some() {
            config.shards = flags.shards;
        }
        if flags.cpus.is_some() {
            config.cpus = flags.cpus;
        }
        if flags.persistent_session_expiry.is_some() {
            config.persistent_session_expiry = flags.persistent_session_expiry;
        }
        config.per_shard_listeners |= flags.per_shard_listeners;
        config.test_inject_panic = flags.test_inject_panic;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges that the types alone do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(ConfigError::Invalid("no listen address".into()));
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
        Ok(())
    }
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
}
