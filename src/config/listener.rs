//! One listener's settings: a `[[listener]]` table of the config file, one `listen` address, or
//! one of the `--tls-listen` / `--ws-listen` / `--wss-listen` flags. Key names follow
//! Mosquitto's where it has one (`certfile`, `keyfile`, `cafile`, `require_certificate`,
//! `use_identity_as_username`, `tls_version`, `mount_point`, `allow_anonymous`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What a listener speaks above TCP (TLS is orthogonal: on when `certfile` is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// MQTT directly over TCP (or TLS): config value `"mqtt"`.
    #[default]
    Mqtt,
    /// MQTT over WebSocket (RFC 6455), `ws` or, with TLS, `wss`: config value `"ws"`
    /// (Mosquitto's `"websockets"` is accepted too).
    #[serde(alias = "websockets")]
    Ws,
}

/// The lowest TLS version a listener accepts (Mosquitto's `tls_version` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, Default)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (the default).
    #[default]
    #[serde(rename = "tlsv1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "tlsv1.3")]
    Tls13,
}

/// One listener.
///
/// ```toml
/// [[listener]]
/// address = "0.0.0.0:8883"
/// protocol = "mqtt"              # or "ws" ("websockets"); the default is "mqtt"
/// certfile = "/etc/shardmq/server.pem"   # TLS on: PEM chain, leaf first
/// keyfile = "/etc/shardmq/server.key"    # PEM private key (PKCS#8, PKCS#1 or SEC1)
/// cafile = "/etc/shardmq/ca.pem"         # client certificates signed by these CAs are accepted
/// require_certificate = true             # and required (mTLS)
/// use_identity_as_username = true        # the certificate's subject CN is the user name
/// tls_version = "tlsv1.2"                # lowest version accepted: "tlsv1.2" or "tlsv1.3"
/// max_connections = 10000                # 0 (the default) = no per-listener limit
/// name = "devices"                       # optional, for logs
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address to accept on; every shard accepts on it (SO_REUSEPORT). Port 0 = an ephemeral
    /// port.
    pub address: SocketAddr,
    /// What the listener speaks.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Connections accepted through this listener; 0 = no per-listener limit. The broker-wide
    /// `max_connections` and `max_connections_per_shard` apply as well.
    #[serde(default)]
    pub max_connections: usize,
    /// A name for logs and statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// New connections per second this listener accepts (all shards together); unset = the
    /// top-level `max_connection_rate`, 0 = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_rate: Option<u32>,
    /// TLS: the server's certificate chain (PEM, leaf first). Setting it turns TLS on; it
    /// needs `keyfile`. Re-read on SIGHUP (a bad new file keeps the old one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certfile: Option<PathBuf>,
    /// TLS: the server's private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyfile: Option<PathBuf>,
    /// TLS: CA certificates (PEM) that client certificates are verified against. Without
    /// `require_certificate`, a client may still connect without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cafile: Option<PathBuf>,
    /// TLS: a client certificate signed by `cafile` is required (mutual TLS).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_certificate: bool,
    /// TLS: the client certificate's subject CN is the client's user name (its password is not
    /// checked); needs `require_certificate`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_identity_as_username: bool,
    /// TLS: the lowest protocol version accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<TlsVersion>,
    /// TLS: ALPN protocols offered; empty (the default) = no ALPN, any client is accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
    /// WebSocket: the request path served (default `/mqtt`; `"*"` = any path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ws_path: Option<String>,
    /// Whether clients without a user name are accepted on this listener (CONNACK 0x87 / 3.x:
    /// 5 when not). Precedence: this key when set, for this listener only; unset = the
    /// top-level `allow_anonymous` (`--allow-anonymous`), whose own default is "yes without a
    /// password file, no with one". Without a password file, a listener that is not on
    /// loopback must end up with an explicit `true` (here or at the top level), or the broker
    /// refuses to start. Changing it needs a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_anonymous: Option<bool>,
    /// A topic prefix for this listener's clients (Mosquitto's `mount_point`): what they
    /// publish (wills and retained messages included) and the filters they subscribe to (for
    /// `$share/{group}/{filter}`, the filter part) are prefixed with it, what they receive has
    /// it removed, and they see nothing outside it. ACL rules apply to the full, prefixed
    /// topic. No `+` or `#`, not empty, not starting with `$`; usually it ends with `/`
    /// (`"tenant-a/"`). Changing it needs a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_point: Option<String>,
}

impl ListenerConfig {
    /// A plain MQTT listener with no limit of its own: what a `listen` address stands for.
    pub fn mqtt(address: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            address,
            protocol: ListenerProtocol::Mqtt,
            max_connections: 0,
            name: None,
            max_connection_rate: None,
            certfile: None,
            keyfile: None,
            cafile: None,
            require_certificate: false,
            use_identity_as_username: false,
            tls_version: None,
            alpn: Vec::new(),
            ws_path: None,
            allow_anonymous: None,
            mount_point: None,
        }
    }

    /// Checks the combination of keys (files are read by [`super::Config::load_tls`]).
    pub fn validate(&self) -> Result<(), String> {
        let at = self.address;
        if self.certfile.is_some() != self.keyfile.is_some() {
            return Err(format!(
                "listener {at}: certfile and keyfile go together (TLS needs both)"
            ));
        }
        let tls_only = [
            (self.cafile.is_some(), "cafile"),
            (self.require_certificate, "require_certificate"),
            (self.use_identity_as_username, "use_identity_as_username"),
            (self.tls_version.is_some(), "tls_version"),
            (!self.alpn.is_empty(), "alpn"),
        ];
        if let Some((_, key)) = tls_only.iter().find(|(set, _)| *set && !self.tls()) {
            return Err(format!(
                "listener {at}: {key} needs TLS (certfile and keyfile)"
            ));
        }
        if self.require_certificate && self.cafile.is_none() {
            return Err(format!(
                "listener {at}: require_certificate needs cafile (the CAs client certificates \
                 are verified against)"
            ));
        }
        if self.use_identity_as_username && !self.require_certificate {
            return Err(format!(
                "listener {at}: use_identity_as_username needs require_certificate = true"
            ));
        }
        if let Some(path) = &self.ws_path {
            if self.protocol != ListenerProtocol::Ws {
                return Err(format!("listener {at}: ws_path needs protocol = \"ws\""));
            }
            if path != "*" && !path.starts_with('/') {
                return Err(format!(
                    "listener {at}: ws_path {path:?} must start with '/' (or be \"*\": any path)"
                ));
            }
        }
        Ok(())
    }

    /// The WebSocket settings of a `ws` listener.
    pub fn ws_config(&self) -> Option<crate::net::websocket::WsConfig> {
        (self.protocol == ListenerProtocol::Ws).then(|| crate::net::websocket::WsConfig {
            path: match self.ws_path.as_deref() {
                Some("*") => None,
                Some(path) => Some(path.to_string()),
                None => Some(crate::net::websocket::DEFAULT_PATH.to_string()),
            },
            ..crate::net::websocket::WsConfig::default()
        })
    }

    /// Whether the listener speaks TLS.
    pub fn tls(&self) -> bool {
        self.certfile.is_some()
    }

    /// The URL scheme clients use for it (for logs): `mqtt`, `mqtts`, `ws` or `wss`.
    pub fn scheme(&self) -> &'static str {
        match (self.protocol, self.tls()) {
            (ListenerProtocol::Mqtt, false) => "mqtt",
            (ListenerProtocol::Mqtt, true) => "mqtts",
            (ListenerProtocol::Ws, false) => "ws",
            (ListenerProtocol::Ws, true) => "wss",
        }
    }
}
