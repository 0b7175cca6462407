//! CONNECT: limits, admission (credentials and enhanced authentication, through the
//! admission hook), client-id assignment, and the claim that starts the ownership protocol.

use super::*;

impl Shard {
    pub(super) fn on_connect(&mut self, index: ConnId, mut connect: Box<Connect>) {
        let protocol = connect.protocol;
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        conn.protocol = protocol;
        conn.keep_alive = connect.keep_alive;
        let listener = conn.listener;
        let over_limit = match conn.state {
            ConnState::OverLimit { reason } => Some(reason),
            _ => None,
        };
        let refuse = |shard: &mut Shard, reason: ReasonCode| shard.refuse_connect(index, reason);
        if let Some(reason) = over_limit {
            tracing::debug!(shard = self.id, client = %connect.client_id, %reason, "connection or rate limit reached; refusing");
            return refuse(self, reason);
        }
        if let Some(reason) = self.memory_refusal() {
            tracing::info!(
                shard = self.id,
                peer = %self.peer_of(index),
                client = %connect.client_id,
                "CONNECT refused: memory use above max_memory"
            );
            return refuse(self, reason);
        }
        if self.storage_full() && wants_persistence(&connect) {
            tracing::warn!(
                shard = self.id,
                peer = %self.peer_of(index),
                client = %connect.client_id,
                "CONNECT refused: the data directory is full (no new persistent sessions)"
            );
            return refuse(self, ReasonCode::QuotaExceeded);
        }
        // use_identity_as_username: the verified certificate is the credential.
        let certificate_user = self.certificate_users.take(index);
        let certificate_user_checked = certificate_user.is_some();
        if let Some(common_name) = certificate_user {
            let Some(common_name) = common_name else {
                tracing::info!(
                    shard = self.id,
                    peer = %self.peer_of(index),
                    client = %connect.client_id,
                    "CONNECT refused: use_identity_as_username and the client certificate has no CN"
                );
                return refuse(self, ReasonCode::NotAuthorized);
            };
            connect.username = Some(common_name);
            connect.password = None;
        }
        // Credentials, enhanced authentication, and whatever else the admission hook checks;
        // the listener's own `allow_anonymous` overrides the broker-wide rule.
        let rules = self.listener_rules.get(usize::from(listener));
        let on_listener = ListenerAdmission {
            allow_anonymous: rules.and_then(|rules| rules.allow_anonymous),
        };
        let admitted = if certificate_user_checked {
            Ok(())
        } else {
            self.hooks.admission.admit_on(&connect, on_listener)
        };
        if let Err(reason) = admitted {
            tracing::info!(
                shard = self.id,
                peer = %self.peer_of(index),
                listener = rules.map_or(-1, |_| i32::from(listener)),
                client = %connect.client_id,
                username = connect.username.as_deref().unwrap_or(""),
                anonymous = connect.username.is_none(),
                %reason,
                "CONNECT refused: authentication failed"
            );
            return self.refuse_failed_login(index, reason);
        }
        let max_keepalive = self.config.max_keepalive;
        if !protocol.is_v5() && max_keepalive < u16::MAX && connect.keep_alive > max_keepalive {
            // MQTT 3.x cannot be told another keep-alive: refused as Mosquitto does (return
            // code 2, identifier rejected). Keep-alive 0 (off) stays allowed.
            tracing::info!(
                shard = self.id,
                client = %connect.client_id,
                keep_alive = connect.keep_alive,
                max_keepalive,
                "CONNECT refused: keep-alive above max_keepalive"
            );
            return refuse(self, ReasonCode::ClientIdentifierNotValid);
        }
        if self.config.use_username_as_clientid {
            match &connect.username {
                Some(username) => connect.client_id = username.clone(),
                None => {
                    tracing::info!(
                        shard = self.id,
                        client = %connect.client_id,
                        "CONNECT refused: use_username_as_clientid and no user name"
                    );
                    return refuse(self, ReasonCode::NotAuthorized);
                }
            }
        }
        let mut assigned_id = false;
        if connect.client_id.is_empty() {
            if !connect.clean_start && !protocol.is_v5() {
                return refuse(self, ReasonCode::ClientIdentifierNotValid);
            }
            let serial = self.next_serial();
            let nanos = self.now.saturating_duration_since(self.started).as_nanos() as u64;
            connect.client_id = MqttStr::from(format!("shardmq-{}-{serial:x}-{nanos:x}", self.id));
            assigned_id = true;
        }
        // A mounted listener's client: its will goes to the topic under the mount point.
        if let (Some(will), Some(mount)) = (
            connect.will.as_mut(),
            mount_of(&self.listener_rules, listener),
        ) {
            will.topic = MqttStr::from(format!("{mount}{}", will.topic));
        }
        if let Some(will) = &connect.will {
            if topic::check_limits(
                &will.topic,
                self.config.max_topic_length,
                self.config.max_topic_levels,
            )
            .is_err()
                || will.topic.starts_with("$SYS")
            {
                return refuse(self, ReasonCode::TopicNameInvalid);
            }
        }
        // The id (and the user name the registration keeps) outlive the CONNECT: copies of
        // their own, so they do not pin the whole packet (password and will included) and its
        // shared-buffer header for the life of the connection.
        connect.client_id = MqttStr::from(connect.client_id.as_str());
        let token = self.new_token();
        let home = self.home_shard(&connect.client_id);
        let claim = ShardMsg::Claim {
            client_id: connect.client_id.clone(),
            token,
            shard: self.id as u16,
            clean_start: connect.clean_start,
            username: connect.username.as_deref().map(MqttStr::from),
        };
        if let Some(conn) = self.conns.get_mut(index) {
            conn.state = ConnState::Claiming { token };
        }
        self.pending_claims.insert(
            token,
            PendingClaim {
                conn: Some(index),
                connect,
                assigned_id,
                listener,
                forwards: Vec::new(),
            },
        );
        self.send(home, claim);
    }

    /// Answers a CONNECT with a refusing CONNACK (in the connection's protocol version: 3.x
    /// gets the closest return code) and closes the connection.
    pub(super) fn refuse_connect(&mut self, index: ConnId, reason: ReasonCode) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        let connack = ConnAck {
            reason,
            ..Default::default()
        };
        let _ = Packet::ConnAck(connack).encode(conn.protocol, &mut conn.out);
        self.stats.connect_refused(reason);
        self.peers.remove(&index);
        conn.kill = Some(Kill {
            reason,
            graceful: false,
            cause: DisconnectCause::ConnectRefused,
        });
        self.wake_conn(index);
    }
}

/// Whether a CONNECT asks for a session that outlives the connection.
fn wants_persistence(connect: &Connect) -> bool {
    if connect.protocol.is_v5() {
        connect.properties.session_expiry_interval.unwrap_or(0) > 0
    } else {
        !connect.clean_start
    }
}
