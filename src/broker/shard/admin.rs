//! Administrative requests (the `/admin` endpoints of the metrics listener), answered by one
//! shard from its own state: its connected clients, disconnecting one, deleting a stored
//! session. Sans-I/O like the rest of the shard: the runtime hands a request in with `now` and
//! a way to name a connection's peer, and sends the reply back to the asking thread.
//!
//! Nothing here bypasses the client-id ownership protocol (see the parent module docs):
//! - a disconnect closes the connection as a keep-alive timeout would (`kill_conn`, not
//!   graceful): the will is published by the ordinary close path, with its delay, and the
//!   session stays, parked or ended as its clean flag says;
//! - a deletion ends the session as an expiry would (`end_session`): subscriptions and queue
//!   dropped, `Release` sent to the home shard, which forgets the registration unless a newer
//!   claim owns it already (a claim whose `TakeOver` then finds no session starts afresh).
//!
//! A shard only sees the sessions it holds. A client id whose session is moving between shards
//! (a stub here, a claim waiting for its grant, an unsettled registration on its home shard) is
//! answered [`SessionOutcome::InTransit`], so the asking side can ask again once the move is
//! over instead of concluding that there is no such client.

use std::net::SocketAddr;

use super::*;

/// What an administrator asks of a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRequest {
    /// The shard's connected clients: at most `limit` of them (any `limit`, in no particular
    /// order), and how many there are.
    Clients {
        /// Most clients described.
        limit: usize,
    },
    /// Closes the connection of `client_id`: MQTT 5.0 clients get DISCONNECT 0x98
    /// (administrative action) first; the will is published (a server-initiated disconnect).
    Disconnect {
        /// The client id.
        client_id: String,
    },
    /// Ends the session of `client_id`, connected or not (a connection is closed first, as by
    /// `Disconnect`): subscriptions and queued messages are discarded and the client id is
    /// released, so the next CONNECT starts a new session.
    DeleteSession {
        /// The client id.
        client_id: String,
    },
}

/// One connected client, as listed by [`AdminRequest::Clients`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client id.
    pub client_id: String,
    /// The peer address of its connection (when the kernel could tell).
    pub address: Option<SocketAddr>,
    /// The user name it connected with.
    pub username: Option<String>,
    /// Its protocol version.
    pub protocol: ProtocolVersion,
    /// The shard that holds its connection and session.
    pub shard: usize,
    /// Whether its session ends with the connection (clean session / clean start without
    /// expiry).
    pub clean: bool,
    /// Messages queued for it (beyond the in-flight window).
    pub queued: usize,
    /// Outgoing QoS 1/2 messages awaiting its acknowledgement.
    pub inflight: usize,
    /// Seconds since its CONNECT was accepted.
    pub connected_secs: u64,
}

/// What a shard did with a disconnect or deletion request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutcome {
    /// Done on this shard.
    Done(SessionReport),
    /// The session is here but has no connection (a disconnect has nothing to do).
    NotConnected,
    /// Not here, but the client id is moving between shards or being claimed: ask again.
    InTransit,
    /// Not here.
    Absent,
}

/// The session a disconnect or deletion acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionReport {
    /// The shard that held it.
    pub shard: usize,
    /// The protocol of its (last) connection.
    pub protocol: ProtocolVersion,
    /// Whether a connection was closed.
    pub was_connected: bool,
    /// Whether a will was published or is to be (after its delay, for a disconnect).
    pub will: bool,
    /// Its subscriptions (discarded by a deletion).
    pub subscriptions: usize,
    /// Its queued messages (discarded by a deletion).
    pub queued: usize,
    /// Its messages in flight (discarded by a deletion).
    pub inflight: usize,
}

/// A shard's answer to an [`AdminRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminReply {
    /// For [`AdminRequest::Clients`].
    Clients {
        /// At most the asked number of connected clients.
        clients: Vec<ClientInfo>,
        /// How many clients are connected to the shard.
        total: usize,
    },
    /// For [`AdminRequest::Disconnect`] and [`AdminRequest::DeleteSession`].
    Session(SessionOutcome),
}

impl Shard {
    /// Answers an administrative request. `peer` names a connection's peer address (the
    /// runtime asks its socket); it is called for the listed clients only.
    pub fn admin(
        &mut self,
        request: &AdminRequest,
        now: Instant,
        peer: &mut dyn FnMut(ConnId) -> Option<SocketAddr>,
    ) -> AdminReply {
        self.set_now(now);
        let reply = match request {
            AdminRequest::Clients { limit } => self.admin_clients(*limit, peer),
            AdminRequest::Disconnect { client_id } => {
                AdminReply::Session(self.admin_disconnect(client_id))
            }
            AdminRequest::DeleteSession { client_id } => {
                AdminReply::Session(self.admin_delete(client_id))
            }
        };
        self.drain_local_inbox();
        reply
    }

    /// The session indexed for `client_id` on this shard, with its live connection if any.
    fn admin_lookup(&self, client_id: &str) -> Option<(SessionId, Option<ConnId>)> {
        let slot = self.by_client_id.get(&self.sessions, client_id)?;
        let entry = self.sessions.get(slot)?;
        if entry.moved_to().is_some() {
            return None;
        }
        let conn = entry
            .conn
            .filter(|&c| self.conns.get(c).is_some_and(|c| c.kill.is_none()));
        Some((slot, conn))
    }

    fn admin_clients(
        &self,
        limit: usize,
        peer: &mut dyn FnMut(ConnId) -> Option<SocketAddr>,
    ) -> AdminReply {
        let now_secs = self.clock_ms() / 1000;
        let mut clients = Vec::new();
        let mut total = 0;
        for slot in self.by_client_id.slots(&self.sessions) {
            let Some((entry, conn)) = self
                .sessions
                .get(slot)
                .and_then(|e| Some((e, e.conn?)))
                .filter(|(e, _)| e.moved_to().is_none())
            else {
                continue;
            };
            let Some(c) = self.conns.get(conn).filter(|c| c.kill.is_none()) else {
                continue;
            };
            let ConnState::Active { session, since } = c.state else {
                continue;
            };
            if session != slot {
                continue;
            }
            total += 1;
            if clients.len() >= limit {
                continue;
            }
            let session = &entry.session;
            clients.push(ClientInfo {
                client_id: session.client_id.to_string(),
                address: peer(conn),
                username: session.username.as_deref().map(str::to_string),
                protocol: c.protocol,
                shard: self.id,
                clean: session.clean,
                queued: session.queued_len(),
                inflight: session.inflight().count(),
                connected_secs: now_secs.saturating_sub(u64::from(since)),
            });
        }
        AdminReply::Clients { clients, total }
    }

    /// Whether `client_id` is between places as far as this shard can tell: a claim of it
    /// waits here, a stub here forwards to its new shard, or (on its home shard) a takeover of
    /// it has not settled.
    fn admin_in_transit(&self, client_id: &str) -> bool {
        self.pending_claims
            .values()
            .any(|claim| claim.connect.client_id.as_str() == client_id)
            || self.stubs.values().any(|&slot| {
                self.sessions
                    .get(slot)
                    .is_some_and(|e| e.session.client_id.as_str() == client_id)
            })
            || self
                .registry
                .get(client_id)
                .is_some_and(|r| !r.settled || r.waiting().is_some())
    }

    fn admin_report(&self, slot: SessionId, was_connected: bool) -> Option<SessionReport> {
        let entry = self.sessions.get(slot)?;
        let session = &entry.session;
        Some(SessionReport {
            shard: self.id,
            protocol: session.protocol,
            was_connected,
            will: session.will.is_some() || entry.pending_will().is_some(),
            subscriptions: session.subscriptions.len(),
            queued: session.queued_len(),
            inflight: session.inflight().count(),
        })
    }

    fn admin_disconnect(&mut self, client_id: &str) -> SessionOutcome {
        let Some((slot, conn)) = self.admin_lookup(client_id) else {
            return self.admin_not_here(client_id);
        };
        let Some(conn) = conn else {
            return SessionOutcome::NotConnected;
        };
        let Some(report) = self.admin_report(slot, true) else {
            return SessionOutcome::Absent;
        };
        tracing::info!(
            shard = self.id,
            client = client_id,
            "Client {client_id} disconnected by an administrator."
        );
        // Not graceful: the close path publishes the will (after its delay, if it has one) and
        // parks or ends the session, exactly as for any server-initiated disconnect.
        self.kill_conn(conn, ReasonCode::AdministrativeAction, false);
        SessionOutcome::Done(report)
    }

    fn admin_delete(&mut self, client_id: &str) -> SessionOutcome {
        let Some((slot, conn)) = self.admin_lookup(client_id) else {
            return self.admin_not_here(client_id);
        };
        let Some(mut report) = self.admin_report(slot, conn.is_some()) else {
            return SessionOutcome::Absent;
        };
        let Some(entry) = self.sessions.get_mut(slot) else {
            return SessionOutcome::Absent;
        };
        let client = entry.session.client_id.clone();
        let username = entry.session.username.clone();
        // A connection that is closing already (its kill set) is detached as well: the session
        // ends here, not when its socket is gone.
        let old_conn = entry.conn.take();
        let live_will = old_conn.and_then(|_| entry.session.will.take());
        let pending_will = entry.pending_will().is_some();
        // A client that sent DISCONNECT itself (its connection closing gracefully) left no will.
        let graceful = old_conn
            .and_then(|c| self.conns.get(c)?.kill)
            .is_some_and(|kill| kill.graceful);
        let live_will = live_will.filter(|_| !graceful);
        report.will = live_will.is_some() || pending_will;
        tracing::info!(
            shard = self.id,
            client = client_id,
            connected = report.was_connected,
            queued = report.queued,
            subscriptions = report.subscriptions,
            "Session of {client_id} deleted by an administrator."
        );
        if let Some(conn) = old_conn {
            // A server-initiated disconnect publishes the will; the session ends, so a will
            // delay does not hold it back (MQTT 5.0 §3.1.2.5).
            if let Some(will) = live_will {
                self.publish_will(&client, username.as_deref(), will);
            }
            self.kill_conn(conn, ReasonCode::AdministrativeAction, false);
            if let Some(conn) = self.conns.get_mut(conn) {
                conn.state = ConnState::Detached;
            }
        }
        // Subscriptions, queue, a will still waiting out its delay (published now), the index
        // entry, and `Release` to the home shard.
        self.end_session(slot);
        SessionOutcome::Done(report)
    }

    fn admin_not_here(&self, client_id: &str) -> SessionOutcome {
        if self.admin_in_transit(client_id) {
            SessionOutcome::InTransit
        } else {
            SessionOutcome::Absent
        }
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use bytes::BytesMut;

    use super::{AdminReply, AdminRequest, SessionOutcome};
    use crate::broker::handles::ConnId;
    use crate::broker::shard::{Global, Shard};
    use crate::codec::{
        decode, Connect, LastWill, MqttStr, Packet, Properties, ProtocolVersion, Publish, QoS,
        ReasonCode, Subscribe, SubscriptionOptions,
    };
    use crate::config::Config;

    struct Client {
        conn: ConnId,
        protocol: ProtocolVersion,
        input: BytesMut,
    }

    fn shard() -> Shard {
        Shard::new(
            0,
            1,
            Rc::new(Config::default()),
            Arc::new(Global::default()),
            Instant::now(),
        )
    }

    fn send(shard: &mut Shard, client: &Client, packet: Packet) {
        let mut bytes = BytesMut::new();
        packet.encode(client.protocol, &mut bytes).unwrap();
        shard.on_bytes(client.conn, bytes, Instant::now());
    }

    fn received(shard: &mut Shard, client: &mut Client) -> Vec<Packet> {
        if let Some(out) = shard.output(client.conn) {
            client.input.extend_from_slice(&std::mem::take(out));
        }
        let mut packets = Vec::new();
        while let Some(packet) = decode(&mut client.input, client.protocol, usize::MAX).unwrap() {
            packets.push(packet);
        }
        packets
    }

    /// Connects `id` (persistent unless `clean`, with a will on `will/<id>` if asked); returns
    /// the client and whether the CONNACK said session present, and leaves what follows the
    /// CONNACK (resumed messages) for the next [`received`].
    fn connect(
        shard: &mut Shard,
        id: &str,
        protocol: ProtocolVersion,
        clean: bool,
        will: bool,
    ) -> (Client, bool) {
        let conn = shard.on_accept(Instant::now()).unwrap();
        let mut client = Client {
            conn,
            protocol,
            input: BytesMut::new(),
        };
        let mut properties = Properties::default();
        if !clean && protocol.is_v5() {
            properties.session_expiry_interval = Some(3600);
        }
        let connect = Connect {
            protocol,
            clean_start: clean,
            keep_alive: 0,
            client_id: MqttStr::from(id),
            will: will.then(|| LastWill {
                topic: MqttStr::from(format!("will/{id}").as_str()),
                payload: bytes::Bytes::from_static(b"gone"),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Properties::default(),
            }),
            username: Some(MqttStr::from("user")),
            password: None,
            properties,
        };
        send(shard, &client, Packet::Connect(Box::new(connect)));
        let mut out = std::mem::take(shard.output(client.conn).unwrap()).into_contiguous();
        let connack = decode(&mut out, protocol, usize::MAX).unwrap();
        client.input = out;
        let Some(Packet::ConnAck(connack)) = connack else {
            panic!("no CONNACK: {connack:?}");
        };
        assert_eq!(connack.reason, ReasonCode::Success);
        (client, connack.session_present)
    }

    fn subscribe(shard: &mut Shard, client: &mut Client, filter: &str) {
        send(
            shard,
            client,
            Packet::Subscribe(Subscribe {
                packet_id: 1,
                properties: Properties::default(),
                filters: vec![(
                    MqttStr::from(filter),
                    SubscriptionOptions::with_qos(QoS::AtLeastOnce),
                )],
            }),
        );
        assert!(matches!(
            received(shard, client).as_slice(),
            [Packet::SubAck(_)]
        ));
    }

    fn publish(shard: &mut Shard, client: &Client, topic: &str, packet_id: u16) {
        send(
            shard,
            client,
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: MqttStr::from(topic),
                packet_id,
                properties: Properties::default(),
                payload: bytes::Bytes::from_static(b"m"),
            }),
        );
    }

    fn ask(shard: &mut Shard, request: AdminRequest) -> AdminReply {
        let peer = "192.0.2.7:4242".parse().unwrap();
        shard.admin(&request, Instant::now(), &mut |_| Some(peer))
    }

    fn outcome(shard: &mut Shard, request: AdminRequest) -> SessionOutcome {
        match ask(shard, request) {
            AdminReply::Session(outcome) => outcome,
            other => panic!("not a session outcome: {other:?}"),
        }
    }

    fn close(shard: &mut Shard, client: &Client) {
        shard.on_closed(client.conn, Instant::now());
    }

    #[test]
    fn lists_connected_clients_up_to_the_limit() {
        let mut shard = shard();
        let (_a, _) = connect(&mut shard, "a", ProtocolVersion::V5, true, false);
        let (_b, _) = connect(&mut shard, "b", ProtocolVersion::V3_1_1, false, false);
        let (c, _) = connect(&mut shard, "c", ProtocolVersion::V3_1_1, false, false);
        close(&mut shard, &c);
        let AdminReply::Clients { clients, total } =
            ask(&mut shard, AdminRequest::Clients { limit: 10 })
        else {
            panic!("not a client list");
        };
        assert_eq!(total, 2, "{clients:?}");
        let mut ids: Vec<&str> = clients.iter().map(|c| c.client_id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["a", "b"]);
        let b = clients.iter().find(|c| c.client_id == "b").unwrap();
        assert_eq!(b.protocol, ProtocolVersion::V3_1_1);
        assert_eq!(b.username.as_deref(), Some("user"));
        assert_eq!(b.address, Some("192.0.2.7:4242".parse().unwrap()));
        assert!(!b.clean);
        assert_eq!((b.shard, b.queued, b.inflight), (0, 0, 0));
        let AdminReply::Clients { clients, total } =
            ask(&mut shard, AdminRequest::Clients { limit: 1 })
        else {
            panic!("not a client list");
        };
        assert_eq!((clients.len(), total), (1, 2));
    }

    #[test]
    fn disconnect_sends_0x98_to_mqtt5_and_publishes_the_will() {
        let mut shard = shard();
        let (mut watcher, _) = connect(&mut shard, "watcher", ProtocolVersion::V5, true, false);
        subscribe(&mut shard, &mut watcher, "will/#");
        let (mut target, _) = connect(&mut shard, "target", ProtocolVersion::V5, true, true);
        let request = AdminRequest::Disconnect {
            client_id: "target".into(),
        };
        let SessionOutcome::Done(report) = outcome(&mut shard, request.clone()) else {
            panic!("not disconnected");
        };
        assert!(report.was_connected && report.will);
        let packets = received(&mut shard, &mut target);
        let [Packet::Disconnect(disconnect)] = packets.as_slice() else {
            panic!("no DISCONNECT: {packets:?}");
        };
        assert_eq!(disconnect.reason, ReasonCode::AdministrativeAction);
        // The runtime closes the socket; the will goes out then.
        close(&mut shard, &target);
        let packets = received(&mut shard, &mut watcher);
        assert!(
            matches!(packets.as_slice(), [Packet::Publish(p)] if p.topic.as_str() == "will/target"),
            "{packets:?}"
        );
        assert_eq!(outcome(&mut shard, request), SessionOutcome::Absent);
    }

    #[test]
    fn disconnect_of_an_offline_session_is_not_connected() {
        let mut shard = shard();
        let (client, _) = connect(&mut shard, "p", ProtocolVersion::V3_1_1, false, false);
        close(&mut shard, &client);
        let request = AdminRequest::Disconnect {
            client_id: "p".into(),
        };
        assert_eq!(outcome(&mut shard, request), SessionOutcome::NotConnected);
    }

    #[test]
    fn delete_discards_the_session_of_a_connected_client() {
        let mut shard = shard();
        let (mut sub, _) = connect(&mut shard, "sub", ProtocolVersion::V3_1_1, false, false);
        subscribe(&mut shard, &mut sub, "t");
        let (mut watcher, _) = connect(&mut shard, "watcher", ProtocolVersion::V5, true, false);
        subscribe(&mut shard, &mut watcher, "will/#");
        let (publisher, _) = connect(&mut shard, "pub", ProtocolVersion::V5, true, false);
        // Offline for a moment: two messages queue.
        close(&mut shard, &sub);
        publish(&mut shard, &publisher, "t", 1);
        publish(&mut shard, &publisher, "t", 2);
        let (mut sub, present) = connect(&mut shard, "sub", ProtocolVersion::V3_1_1, false, true);
        assert!(present);
        let resumed = received(&mut shard, &mut sub);
        assert_eq!(resumed.len(), 2, "{resumed:?}");
        let request = AdminRequest::DeleteSession {
            client_id: "sub".into(),
        };
        let SessionOutcome::Done(report) = outcome(&mut shard, request.clone()) else {
            panic!("not deleted");
        };
        assert!(report.was_connected && report.will);
        assert_eq!((report.subscriptions, report.inflight), (1, 2));
        // 3.1.1: no DISCONNECT, the socket closes; the will is out already.
        assert!(received(&mut shard, &mut sub).is_empty());
        assert!(shard.close_reason(sub.conn).is_some());
        let packets = received(&mut shard, &mut watcher);
        assert!(
            matches!(packets.as_slice(), [Packet::Publish(p)] if p.topic.as_str() == "will/sub"),
            "{packets:?}"
        );
        close(&mut shard, &sub);
        assert!(received(&mut shard, &mut watcher).is_empty(), "one will");
        assert_eq!(outcome(&mut shard, request), SessionOutcome::Absent);
        // Nothing is routed to the deleted session any more, and the client starts afresh.
        publish(&mut shard, &publisher, "t", 3);
        let (mut sub, present) = connect(&mut shard, "sub", ProtocolVersion::V3_1_1, false, false);
        assert!(!present);
        assert!(received(&mut shard, &mut sub).is_empty());
        assert_eq!(shard.stats().subscriptions, 1, "only the watcher's");
    }

    #[test]
    fn delete_of_an_offline_session() {
        let mut shard = shard();
        let (mut sub, _) = connect(&mut shard, "off", ProtocolVersion::V5, false, false);
        subscribe(&mut shard, &mut sub, "t");
        close(&mut shard, &sub);
        let (publisher, _) = connect(&mut shard, "pub", ProtocolVersion::V5, true, false);
        publish(&mut shard, &publisher, "t", 1);
        let request = AdminRequest::DeleteSession {
            client_id: "off".into(),
        };
        let SessionOutcome::Done(report) = outcome(&mut shard, request.clone()) else {
            panic!("not deleted");
        };
        assert!(!report.was_connected);
        assert_eq!((report.subscriptions, report.queued), (1, 1));
        assert_eq!(shard.stats().sessions, 1, "only the publisher's");
        assert_eq!(outcome(&mut shard, request), SessionOutcome::Absent);
        let (_sub, present) = connect(&mut shard, "off", ProtocolVersion::V5, false, false);
        assert!(!present);
        shard.on_tick(Instant::now() + Duration::from_secs(1));
    }
}
