//! Fan-out to local sessions: one delivery per session at its best matching QoS, forwarding through move stubs, deduplication during moves.

use super::*;

impl Shard {
    /// Delivers to this shard's subscribers: once per session, at the highest granted QoS of its
    /// matching subscriptions.
    /// Returns whether any local subscription matched.
    pub(super) fn route_local(&mut self, message: &Arc<Message>) -> bool {
        self.route_local_from(message, None)
    }

    /// [`Shard::route_local`] for a publish that peer `from` routed here: sessions that just
    /// moved here take it only once that peer has acknowledged the move.
    pub(super) fn route_local_from(&mut self, message: &Arc<Message>, from: Option<usize>) -> bool {
        let mut matches = std::mem::take(&mut self.matches);
        let mut ids = std::mem::take(&mut self.subscription_ids);
        matches.clear();
        let filters = self
            .subscriptions
            .for_each_match_in_filters(&message.topic, |&session, &(options, id)| {
                matches.push((session, options, id))
            });
        // Sorted so that a session's matches through several filters are adjacent; through
        // one filter, each session appears once already.
        if filters > 1 && matches.len() > 1 {
            matches.sort_unstable_by_key(|&(session, _, id)| (session, id));
        }
        let now = self.now;
        let origin = self.origin_key(message);
        let digest = origin.as_ref().map_or(0, |_| origin_digest(message));
        let mut received: Vec<MqttStr> = Vec::new();
        let mut start = 0;
        while start < matches.len() {
            // One delivery per session: the highest granted QoS of its matching subscriptions,
            // with every matching subscription identifier (MQTT 5.0 §3.3.4).
            let session = matches[start].0;
            let mut end = start;
            let mut options = matches[start].1;
            ids.clear();
            while end < matches.len() && matches[end].0 == session {
                let (_, other, id) = matches[end];
                options.qos = options.qos.max(other.qos);
                options.retain_as_published |= other.retain_as_published;
                options.no_local &= other.no_local;
                if id != 0 {
                    ids.push(id);
                }
                end += 1;
            }
            start = end;
            if options.no_local
                && self
                    .sessions
                    .get(session)
                    .is_none_or(|e| e.session.client_id == message.publisher)
            {
                continue;
            }
            if let Some(peer) = from {
                let held_back = self
                    .sessions
                    .get(session)
                    .and_then(|e| e.recent())
                    .is_some_and(|recent| recent.holds_back(peer));
                if held_back {
                    // Routed before that shard knew of the move: the session gets this message
                    // through its old shard's stub.
                    continue;
                }
            }
            if let (Some(key), Some(entry)) = (&origin, self.sessions.get(session)) {
                if !entry.session.clean && entry.moved_to().is_none() {
                    if self.origin_has(key, digest, &entry.session.client_id) {
                        // A resend after a crash: this subscriber has the first one.
                        continue;
                    }
                    received.push(entry.session.client_id.clone());
                }
            }
            let qos = message.qos.min(options.qos);
            let retain = options.retain_as_published && message.retain;
            self.deliver_to(session, message, qos, retain, &ids, now);
        }
        if let Some(key) = origin {
            self.origin_received(key, digest, &received);
            if from.is_none() {
                // Shards that may hold entries this publish does not reach (marks of sessions
                // that moved away; entries recovery found) are waited for and committed to
                // like the shards routed to.
                let extra: Vec<usize> = self.origin_extra_targets(message);
                if let Some(targets) = self.store_targets.as_mut() {
                    for shard in extra {
                        if shard != self.id && !targets.contains(&shard) {
                            targets.push(shard);
                        }
                    }
                }
            }
        }
        let matched = !matches.is_empty();
        self.matches = matches;
        self.subscription_ids = ids;
        matched
    }

    pub(super) fn deliver_to(
        &mut self,
        session: SessionId,
        message: &Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: &[u32],
        now: Instant,
    ) {
        self.deliver_tagged(session, message, qos, retain, subscription_ids, None, now);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn deliver_tagged(
        &mut self,
        session: SessionId,
        message: &Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: &[u32],
        group: Option<&MqttStr>,
        now: Instant,
    ) {
        let slot = session;
        let Some(entry) = self.sessions.get_mut(session) else {
            return;
        };
        if let Some((shard, token)) = entry.moved_to() {
            let client_id = entry.session.client_id.clone();
            if group.is_none() {
                self.origin_forwarded(message, shard);
            }
            self.send(
                usize::from(shard),
                ShardMsg::Forward {
                    client_id,
                    token,
                    message: Arc::clone(message),
                    qos,
                    retain,
                    subscription_ids: subscription_ids.to_vec(),
                    group: group.cloned(),
                },
            );
            return;
        }
        // Only sessions holding a subscription that may match a topic the client may not read
        // pay for a check (a filter is classified once, at subscribe time).
        if entry.check_deliveries {
            let client = ClientRef {
                client_id: &entry.session.client_id,
                username: entry.session.username.as_deref(),
                prepared: entry.prepared.as_ref(),
            };
            if !self.hooks.authorization.may_receive(client, &message.topic) {
                self.stats.not_authorized += 1;
                self.stats.drop_messages(DropReason::NotAuthorized, 1);
                return;
            }
        }
        if let Some(recent) = entry.recent_mut() {
            if !recent.first_time(message) {
                return;
            }
        }
        // A client of a mounted listener gets the topic without the mount point, and nothing
        // outside it (its filters are all under the mount point, so this only drops what a
        // session subscribed before connecting through another listener).
        let unmounted;
        let message = match mount_of(&self.listener_rules, entry.listener) {
            None => message,
            Some(mount) => match message.topic.strip_prefix(mount) {
                Some(rest) if !rest.is_empty() => {
                    unmounted = Arc::new(Message {
                        topic: MqttStr::from(rest),
                        ..Message::clone(message)
                    });
                    &unmounted
                }
                _ => return,
            },
        };
        let max_buffer = self.config.max_write_buffer;
        let online = entry.conn.is_some();
        let conn = entry
            .conn
            .and_then(|index| self.conns.get_mut(index).map(|c| (index, c)));
        let connected_at = entry.connected_at(self.started);
        let (out, index, was_empty) = match conn {
            Some((index, conn)) if conn.kill.is_none() && conn.out.len() < max_buffer => {
                let was_empty = conn.out.is_empty();
                (Some(&mut conn.out), Some(index), was_empty)
            }
            _ => (None, None, false),
        };
        let mark = SessionMark::of(&entry.session);
        let before = self.hooks.journal.barrier();
        let mut recorder = Recorder::new(
            &mut self.stats,
            &mut self.hooks.journal,
            entry,
            connected_at,
            now,
        );
        entry.session.deliver(
            message,
            qos,
            retain,
            subscription_ids,
            group,
            out,
            &mut self.cache,
            now,
            &mut recorder,
        );
        let session = &entry.session;
        let queued = session.queued_len();
        self.stats.deliveries += 1;
        self.stats.session_changed(mark, session);
        self.hold_if_recorded(index, before);
        if let Some(index) = index {
            if was_empty {
                self.wake_conn(index);
            }
        }
        // Only a connected subscriber drains its queue; an offline one's queue simply fills to
        // its bound, which must not slow the publishers down.
        let high_water = self.config.max_queued_messages / 2;
        if high_water > 0 && queued >= high_water && online {
            self.slow_consumer_starts(slot, queued);
            self.throttle_publisher(slot);
        }
    }

    /// Logs the start of a slow-consumer episode (once per episode).
    fn slow_consumer_starts(&mut self, slot: SessionId, queued: usize) {
        let limit = self.config.max_queued_messages;
        let Some(entry) = self.sessions.get_mut(slot) else {
            return;
        };
        if entry.slow_consumer {
            return;
        }
        entry.slow_consumer = true;
        tracing::warn!(
            shard = self.id,
            queued,
            limit,
            "Client {} is a slow consumer: publishers on this shard are throttled until it catches \
             up; messages beyond the limit are dropped.",
            entry.session.client_id
        );
    }

    /// Logs the end of a slow-consumer episode: its queue is at most a quarter full again.
    pub(super) fn slow_consumer_maybe_ends(&mut self, slot: SessionId) {
        let low_water = self.config.max_queued_messages / 4;
        let Some(entry) = self.sessions.get_mut(slot) else {
            return;
        };
        let queued = entry.session.queued_len();
        if entry.slow_consumer && queued <= low_water {
            entry.slow_consumer = false;
            tracing::info!(
                shard = self.id,
                queued,
                "Client {} caught up.",
                entry.session.client_id
            );
        }
    }
}
