//! `use_identity_as_username`: on such a TLS listener the client certificate (verified against
//! its `cafile` during the handshake) is the credential, and its subject CN is the user name,
//! as in Mosquitto. The password file is not consulted for these clients; the ACL applies to
//! the CN as to any user name.

use std::collections::HashMap;

use super::*;

/// Which listeners take the user name from the certificate, and the CNs of their connections
/// until the CONNECT is answered (a side map: other connections pay nothing).
#[derive(Debug, Default)]
pub(super) struct CertificateUsers {
    /// By listener index.
    by_listener: Vec<bool>,
    /// Connections of such listeners: `None` until (or unless) the handshake gave a CN.
    pending: HashMap<ConnId, Option<MqttStr>>,
}

impl CertificateUsers {
    pub(super) fn new(config: &Config) -> CertificateUsers {
        let mut users = CertificateUsers::default();
        users.on_config(config);
        users
    }

    pub(super) fn on_config(&mut self, config: &Config) {
        self.by_listener = config
            .listeners()
            .iter()
            .map(|listener| listener.use_identity_as_username)
            .collect();
    }

    /// A connection arrived on `listener`.
    pub(super) fn accepted(&mut self, listener: Option<usize>, conn: ConnId) {
        let uses_identity = listener
            .and_then(|index| self.by_listener.get(index).copied())
            .unwrap_or(false);
        if uses_identity {
            self.pending.insert(conn, None);
        }
    }

    /// The TLS handshake of `conn` completed with a certificate whose CN is `common_name`.
    pub(super) fn identified(&mut self, conn: ConnId, common_name: Option<String>) {
        if let Some(entry) = self.pending.get_mut(&conn) {
            *entry = common_name.map(MqttStr::from);
        }
    }

    /// At CONNECT: `Some(cn)` when the connection's listener uses the certificate's identity
    /// (`Some(None)`: it has no CN), `None` otherwise.
    pub(super) fn take(&mut self, conn: ConnId) -> Option<Option<MqttStr>> {
        self.pending.remove(&conn)
    }

    pub(super) fn closed(&mut self, conn: ConnId) {
        self.pending.remove(&conn);
    }
}

impl Shard {
    /// The TLS handshake of `conn` completed (see [`crate::net::Handler::identified`]).
    pub fn on_identified(&mut self, conn: ConnId, common_name: Option<String>) {
        self.certificate_users.identified(conn, common_name);
    }
}
