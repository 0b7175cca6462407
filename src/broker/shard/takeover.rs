//! The claimant and owner roles of the ownership protocol: grants, takeovers, session moves between shards with forwarding stubs, and settling.

use super::*;

#[derive(Debug)]
pub(super) struct PendingClaim {
    pub(super) conn: Option<ConnId>,
    pub(super) connect: Box<Connect>,
    pub(super) assigned_id: bool,
    /// The listener the client connected through (`Conn::listener`): the session's mount
    /// point comes from it.
    pub(super) listener: u16,
    /// Deliveries a forwarding stub sent for this claim's session before the session arrived
    /// here (the old shard waits for a barrier before handing it over), in arrival order.
    pub(super) forwards: Vec<Forwarded>,
}

/// Most forwarded deliveries kept for a session on its way to this shard.
const MAX_IN_TRANSIT: usize = 65_536;

/// A delivery forwarded by a stub, kept until the session is installed.
#[derive(Debug)]
pub(super) struct Forwarded {
    pub(super) message: Arc<Message>,
    pub(super) qos: QoS,
    pub(super) retain: bool,
    pub(super) subscription_ids: Vec<u32>,
    pub(super) group: Option<MqttStr>,
}

/// What `on_takeover` did with the session.
pub(super) enum Handover {
    Ended,
    InPlace(SessionId),
    Moved(Box<Session>, Option<Box<RecentDeliveries>>),
}

impl Shard {
    /// Claimant role: a newer connection won the client id before this claim's turn came.
    pub(super) fn on_denied(&mut self, token: u64, reason: ReasonCode) {
        let Some(claim) = self.pending_claims.remove(&token) else {
            return;
        };
        if reason == ReasonCode::NotAuthorized {
            tracing::info!(
                shard = self.id,
                client = %claim.connect.client_id,
                username = claim.connect.username.as_deref().unwrap_or(""),
                "CONNECT refused: the client id belongs to another user's session"
            );
            if let Some(index) = claim.conn {
                self.refuse_connect(index, reason);
            }
            return;
        }
        if let Some(index) = claim.conn {
            // Several connections raced for this client id within one takeover's round trip;
            // a newer one won. The loser learns it with "server busy" (3.x: server
            // unavailable) rather than a silent close.
            tracing::debug!(shard = self.id, client = %claim.connect.client_id, "claim superseded by a newer connection");
            self.refuse_connect(index, ReasonCode::ServerBusy);
        }
    }

    /// Tells the home shard that the session of claim `token` has ended (or never began).
    pub(super) fn release(&mut self, client_id: MqttStr, token: u64) {
        let home = self.home_shard(&client_id);
        self.send(home, ShardMsg::Release { client_id, token });
    }

    /// Tells the home shard that claim `token` has settled here.
    pub(super) fn settle(&mut self, client_id: &MqttStr, token: u64) {
        let home = self.home_shard(client_id);
        self.send(
            home,
            ShardMsg::Settled {
                client_id: client_id.clone(),
                token,
            },
        );
    }

    /// New-owner role: the stub that forwarded to the moved session is gone: the move is
    /// complete (duplicates are still filtered for a short margin) and the claim settles.
    pub(super) fn on_stub_gone(&mut self, client_id: MqttStr, token: u64) {
        let Some(slot) = self.by_client_id.get(&self.sessions, &client_id) else {
            return;
        };
        let Some(entry) = self.sessions.get_mut(slot).filter(|e| e.token == token) else {
            return;
        };
        if entry.recent().is_some() {
            // Copies sent directly by other shards before they learned of the move may still
            // be on their way: keep filtering for a margin.
            let deadline = self.clock_ms() + MOVE_DEDUP_MARGIN.as_millis() as u64;
            self.wheel.push(
                Self::bucket(deadline),
                WheelEntry::DedupEnd { session: slot },
            );
        }
        self.settle(&client_id, token);
    }

    /// Owner role: close the current connection of `client_id` and hand its session over.
    pub(super) fn on_takeover(
        &mut self,
        client_id: MqttStr,
        old_token: u64,
        new_shard: u16,
        new_token: u64,
        clean_start: bool,
    ) {
        let session = self
            .by_client_id
            .get(&self.sessions, &client_id)
            .filter(|&slot| {
                self.sessions
                    .get(slot)
                    .is_some_and(|e| e.token == old_token)
            });
        if session.is_none() {
            // The session of the settled owner ended meanwhile (its Release is on the way):
            // the new claim starts afresh.
            tracing::debug!(shard = self.id, client = %client_id, "takeover of a session that already ended");
        }
        let handover =
            session.map(|slot| self.hand_over(slot, &client_id, new_shard, new_token, clean_start));
        let moved = matches!(handover, Some(Handover::Moved(..)));
        let (session, handover, recent) = match handover {
            Some(Handover::InPlace(slot)) => (None, Some(HandoverKind::InPlace(slot)), None),
            Some(Handover::Moved(data, recent)) => {
                (Some(data), Some(HandoverKind::Stub(self.id as u16)), recent)
            }
            Some(Handover::Ended) | None => (None, None, None),
        };
        let granted = ShardMsg::Granted {
            token: new_token,
            session,
            handover,
            recent,
            // A moving session's origin marks are added when the message leaves (after the
            // barrier below).
            origins: Vec::new(),
        };
        if moved {
            // The session continues elsewhere only once every shard has applied what this
            // shard sent on its behalf (retained updates, publishes): its old connection's
            // work can never land after its new connection's.
            self.start_barrier(BarrierAction::HandOver {
                shard: new_shard,
                message: Box::new(granted),
            });
        } else {
            self.send(usize::from(new_shard), granted);
        }
    }

    /// Detaches the session in `slot` from its connection (closing it) and ends it, keeps it
    /// in place for `new_token`, or turns it into a forwarding stub and returns its data.
    pub(super) fn hand_over(
        &mut self,
        slot: SessionId,
        client_id: &MqttStr,
        new_shard: u16,
        new_token: u64,
        clean_start: bool,
    ) -> Handover {
        let Some(entry) = self.sessions.get_mut(slot) else {
            return Handover::Ended;
        };
        let ends = entry.session.ends_on_takeover(clean_start);
        let pending_will = entry.take_pending_will();
        let old_conn = entry.conn.take();
        let live_will = old_conn.and_then(|_| entry.session.will.take());
        let username = entry.session.username.clone();
        if let Some(will) = pending_will {
            // A reconnect within the will delay cancels the will, unless the session ends.
            if ends {
                self.publish_will(client_id, username.as_deref(), will);
            }
        }
        if let Some(conn) = old_conn {
            tracing::info!(
                shard = self.id,
                "Client {client_id} already connected, closing old connection."
            );
            // The old connection closes without a DISCONNECT from its client: its will fires,
            // unless it has a will delay that the new connection now cancels (MQTT 5.0).
            if let Some(will) = live_will {
                let delayed = will.properties.will_delay_interval.unwrap_or(0) > 0;
                if !delayed || ends {
                    self.publish_will(client_id, username.as_deref(), will);
                }
            }
            self.kill_conn(conn, ReasonCode::SessionTakenOver, false);
            if let Some(conn) = self.conns.get_mut(conn) {
                conn.state = ConnState::Detached;
            }
        }
        if ends {
            // The session ends here: queued shared-subscription messages go to other
            // members; the registry already points at the new owner.
            self.end_session(slot);
            return Handover::Ended;
        }
        let Some(entry) = self.sessions.get_mut(slot) else {
            return Handover::Ended;
        };
        if usize::from(new_shard) == self.id {
            // Same shard: the session stays where it is, subscriptions untouched, so nothing
            // routed meanwhile is missed.
            entry.token = new_token;
            return Handover::InPlace(slot);
        }
        // Another shard: the data moves; a stub keeps the subscriptions here and forwards
        // deliveries until every shard routes to the new place.
        let mut stub = Session::new(
            entry.session.client_id.clone(),
            entry.session.protocol,
            false,
            self.limits.clone(),
        );
        stub.subscriptions = entry.session.subscriptions.clone();
        let data = std::mem::replace(&mut entry.session, stub);
        self.stats.session_queue_moved(data.queued_len(), false);
        entry.set_moved_to(new_shard, new_token);
        // What the session got recently goes with it: a copy of one of those messages may still
        // reach it on its new shard.
        let recent = entry.take_recent();
        self.by_client_id.remove(&self.sessions, client_id);
        self.stubs.insert(new_token, slot);
        Handover::Moved(Box::new(data), recent)
    }

    /// Claimant role: the id is ours; finish the CONNECT (or, when the connection is already
    /// gone, keep a persistent session offline). Either way the claim settles, or its session
    /// ends and is released.
    pub(super) fn on_granted(
        &mut self,
        token: u64,
        previous: Option<Box<Session>>,
        handover: Option<HandoverKind>,
        recent: Option<Box<RecentDeliveries>>,
        origins: Vec<OriginMark>,
    ) {
        if !self.pending_claims.contains_key(&token) {
            // Every claim is answered once, by Granted or Denied: this is a protocol bug. Keep
            // the broker alive and say so.
            tracing::error!(shard = self.id, token, "grant for an unknown claim ignored");
            self.stats.protocol_violations += 1;
            return;
        }
        self.finish_grant(token, previous, handover, recent, origins);
    }

    /// Finishes a grant: installs or resumes the session and answers the CONNECT.
    fn finish_grant(
        &mut self,
        token: u64,
        previous: Option<Box<Session>>,
        handover: Option<HandoverKind>,
        mut recent: Option<Box<RecentDeliveries>>,
        origins: Vec<OriginMark>,
    ) {
        let now_ms = self.clock_ms();
        let Some(claim) = self.pending_claims.remove(&token) else {
            return;
        };
        let forwards = claim.forwards;
        let connect = claim.connect;
        let listener = claim.listener;
        let in_place = match handover {
            Some(HandoverKind::InPlace(slot))
                if self.sessions.get(slot).is_some_and(|e| e.token == token) =>
            {
                Some(slot)
            }
            _ => None,
        };
        let stub_shard = match handover {
            Some(HandoverKind::Stub(shard)) => Some(shard),
            _ => None,
        };
        let Some(index) = claim.conn.filter(|&c| self.conns.contains(c)) else {
            if let Some(slot) = in_place {
                self.park_session(slot);
                self.settle(&connect.client_id, token);
                return;
            }
            // The client left while we waited. Keep a persistent session it had; otherwise
            // release the id.
            match previous {
                Some(session) if !connect.clean_start => {
                    let mut session = *session;
                    session.will = None;
                    let Some(slot) = self.install_session(session, token) else {
                        return self.release(connect.client_id, token);
                    };
                    if let Some(entry) = self.sessions.get_mut(slot) {
                        entry.listener = listener;
                    }
                    self.origins_arrive(&connect.client_id, origins);
                    self.park_session(slot);
                    match stub_shard {
                        Some(shard) => self.start_stub_release(shard, token, slot, recent.take()),
                        None => self.settle(&connect.client_id, token),
                    }
                    self.replay_forwards(slot, forwards);
                }
                _ => self.release(connect.client_id, token),
            }
            return;
        };
        let protocol = connect.protocol;
        let session_present = (previous.is_some() || in_place.is_some()) && !connect.clean_start;
        let mut session = match (in_place, previous) {
            (Some(slot), _) => {
                let limits = self.limits.clone();
                let Some(entry) = self.sessions.get_mut(slot) else {
                    return;
                };
                entry.take_pending_will();
                let session = std::mem::replace(
                    &mut entry.session,
                    Session::new(MqttStr::default(), protocol, true, limits),
                );
                self.stats.session_queue_moved(session.queued_len(), false);
                session
            }
            (None, Some(session)) if !connect.clean_start => *session,
            (None, _) => Session::new(
                connect.client_id.clone(),
                protocol,
                connect.clean_start,
                self.limits.clone(),
            ),
        };
        session.set_limits(self.limits.clone());
        session.apply_connect(&connect, self.config.persistent_session_expiry);
        let slot = match in_place.and_then(|slot| self.sessions.get_mut(slot).map(|e| (slot, e))) {
            Some((slot, entry)) => {
                self.stats.session_queue_moved(session.queued_len(), true);
                entry.session = session;
                Some(slot)
            }
            None => self.install_session(session, token),
        };
        let Some(slot) = slot else {
            tracing::error!(shard = self.id, "no room for another session");
            self.refuse_connect(index, ReasonCode::QuotaExceeded);
            return self.release(connect.client_id, token);
        };
        // The CONNECT may have brought another username (an in-place takeover).
        self.prepare_authorization(slot);
        let mut started = false;
        let generation = self.next_generation();
        if let Some(entry) = self.sessions.get_mut(slot) {
            // Every connection is a new owner: its records replace what older ones wrote.
            entry.generation = generation;
            entry.conn = Some(index);
            entry.listener = listener;
            entry.since_ms = now_ms;
            entry.progress_secs = self.now_secs;
            entry.stuck_logged = false;
            started = !entry.session.clean;
        }
        if session_present {
            self.origins_arrive(&connect.client_id, origins);
        }
        if started {
            // The CONNACK and everything after it wait until the new owner's records are
            // durable: a client told "session present" finds it after a crash.
            let durability = self.journal_session_image(slot);
            self.hold_output(index, durability);
        }
        match stub_shard {
            Some(shard) => self.start_stub_release(shard, token, slot, recent.take()),
            None => self.settle(&connect.client_id, token),
        }
        // max_keepalive: an MQTT 5 client asking for more, or for none, gets the maximum
        // (Server Keep Alive); 3.x clients asking for more were refused at CONNECT.
        let max_keepalive = self.config.max_keepalive;
        let keep_alive = if protocol.is_v5()
            && max_keepalive < u16::MAX
            && (connect.keep_alive == 0 || connect.keep_alive > max_keepalive)
        {
            max_keepalive
        } else {
            connect.keep_alive
        };
        let mut properties = Properties::default();
        if protocol.is_v5() {
            if claim.assigned_id {
                properties.assigned_client_identifier = Some(connect.client_id.clone());
            }
            properties.maximum_packet_size = Some(self.config.max_packet_size);
            properties.receive_maximum = Some(self.config.receive_maximum);
            if self.config.topic_alias_maximum > 0 {
                properties.topic_alias_maximum = Some(self.config.topic_alias_maximum);
            }
            if connect.keep_alive != keep_alive {
                properties.server_keep_alive = Some(keep_alive);
            }
            if connect.properties.request_response_information == Some(true) {
                // Request/response: a topic prefix the client may use for responses.
                properties.response_information =
                    Some(MqttStr::from(format!("response/{}", connect.client_id)));
            }
        }
        let connack = ConnAck {
            session_present,
            reason: ReasonCode::Success,
            properties,
        };
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        conn.state = ConnState::Active {
            session: slot,
            since: u32::try_from(now_ms / 1000).unwrap_or(u32::MAX),
        };
        conn.last_seen = now_ms;
        conn.keep_alive = keep_alive;
        conn.reprocess = !conn.leftover.is_empty();
        let _ = Packet::ConnAck(connack).encode(protocol, &mut conn.out);
        if session_present {
            if let Some(entry) = self.sessions.get_mut(slot) {
                // What was held for the client while it was away: counted as sent, not
                // measured for latency.
                let (mark, now) = (SessionMark::of(&entry.session), self.now);
                let before = self.hooks.journal.barrier();
                let mut recorder =
                    Recorder::new(&mut self.stats, &mut self.hooks.journal, entry, None, now);
                entry.session.resume(&mut conn.out, now, &mut recorder);
                self.stats.session_changed(mark, &entry.session);
                self.hold_if_recorded(Some(index), before);
            }
        }
        if keep_alive > 0 {
            // The connection's one timer entry moves from the connect timeout to keep-alive.
            self.schedule_conn_check(index, now_ms + 1500 * u64::from(keep_alive));
        }
        self.replay_forwards(slot, forwards);
        self.stats.connects += 1;
        // Mosquitto's line, so existing log tooling finds it (p1/p2/p5: MQTT 3.1/3.1.1/5.0).
        let level = match protocol {
            ProtocolVersion::V3_1 => 1,
            ProtocolVersion::V3_1_1 => 2,
            ProtocolVersion::V5 => 5,
        };
        let user = connect
            .username
            .as_deref()
            .map(|u| format!(", u'{u}'"))
            .unwrap_or_default();
        let peer = self.peer_of(index);
        self.peers.remove(&index);
        tracing::info!(
            shard = self.id,
            conn = ?index,
            session_present,
            "New client connected from {peer} as {} (p{level}, c{}, k{}{user}).",
            connect.client_id,
            u8::from(connect.clean_start),
            keep_alive,
        );
        self.wake_conn(index);
    }

    /// Delivers what a stub forwarded while the session was on its way here.
    fn replay_forwards(&mut self, slot: SessionId, forwards: Vec<Forwarded>) {
        for f in forwards {
            self.deliver_forwarded(
                slot,
                &f.message,
                f.qos,
                f.retain,
                &f.subscription_ids,
                f.group.as_ref(),
            );
        }
    }

    /// A session arrived from `shard`, which keeps a forwarding stub: once every shard routes
    /// here (a barrier over the interest deltas just sent), the stub can go. Until shortly
    /// after, deliveries to the session are deduplicated; the claim settles when the old shard
    /// confirms the stub is gone (`StubGone`).
    pub(super) fn start_stub_release(
        &mut self,
        shard: u16,
        token: u64,
        slot: SessionId,
        recent: Option<Box<RecentDeliveries>>,
    ) {
        let Some(entry) = self.sessions.get_mut(slot) else {
            return;
        };
        // Deduplicate against what the session received on its previous shards and what it
        // still holds: a copy of any of those may still arrive here.
        let mut recent = recent.unwrap_or_default();
        for message in entry.session.pending_messages() {
            recent.remember(message);
        }
        recent.close_gate();
        entry.set_recent(recent);
        let action = BarrierAction::ReleaseStub {
            shard,
            token,
            client_id: entry.session.client_id.clone(),
        };
        self.start_barrier(action);
    }

    pub(super) fn remove_stub(&mut self, token: u64) {
        let Some(slot) = self.stubs.remove(&token) else {
            return;
        };
        let is_stub = self
            .sessions
            .get(slot)
            .is_some_and(|e| e.moved_to().is_some_and(|m| m.1 == token));
        if !is_stub {
            return;
        }
        let Some(entry) = self.sessions.remove(slot) else {
            return;
        };
        self.stats
            .session_queue_moved(entry.session.queued_len(), false);
        for filter in entry.session.subscriptions.keys() {
            self.remove_subscription(slot, filter);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_forward(
        &mut self,
        client_id: MqttStr,
        token: u64,
        message: Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: Vec<u32>,
        group: Option<MqttStr>,
    ) {
        match self.by_client_id.get(&self.sessions, &client_id) {
            Some(slot) if self.sessions.get(slot).is_some_and(|e| e.token == token) => self
                .deliver_forwarded(
                    slot,
                    &message,
                    qos,
                    retain,
                    &subscription_ids,
                    group.as_ref(),
                ),
            _ => {
                if let Some(claim) = self.pending_claims.get_mut(&token) {
                    // The session is on its way here: keep the delivery until it is installed.
                    // These messages were accepted for the session already; the bound only
                    // protects memory (the mesh's own backpressure keeps it far from here).
                    if claim.forwards.len() < MAX_IN_TRANSIT {
                        claim.forwards.push(Forwarded {
                            message,
                            qos,
                            retain,
                            subscription_ids,
                            group,
                        });
                    } else {
                        self.stats.drop_messages(DropReason::QueueFull, 1);
                    }
                    return;
                }
                tracing::debug!(shard = self.id, client = %client_id, "forwarded message for a session that moved on");
            }
        }
    }
}
