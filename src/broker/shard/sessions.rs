//! Session entries on this shard: installing (with their subscriptions), parking offline, ending.

use super::*;

#[derive(Debug)]
pub(super) struct SessionEntry {
    pub(super) session: Session,
    pub(super) conn: Option<ConnId>,
    pub(super) token: u64,
    /// The durable generation of this owner (see [`Global::generations`]).
    pub(super) generation: u64,
    /// Milliseconds since the shard started, when the session went offline (`conn` is
    /// `None`: session expiry counts from here) or was attached to its current connection
    /// (`conn` is `Some`: messages read since then are measured for latency when delivered).
    pub(super) since_ms: u64,
    /// The pending will, the stub's forwarding address and the deduplication state of a
    /// moved session, boxed together: an idle session has none of them, and the entry fits
    /// mimalloc's 192-byte size class with one pointer for the three.
    cold: Option<Box<ColdParts>>,
    /// Some subscription of this session may match a topic the client may not read: every
    /// delivery to it asks [`super::hooks::Authorization::may_receive`]. Set when such a
    /// subscription is added, recomputed on install and on an ACL reload; never cleared by an
    /// unsubscribe (a needless check is harmless).
    pub(super) check_deliveries: bool,
    /// What the authorization hook prepared for this client ([`Authorization::prepare`]),
    /// passed back with every publish and delivery check. Kept in step with the session's
    /// identity and the hook by [`Shard::prepare_authorization`]: on install, when a
    /// connection attaches (its CONNECT may bring another username), and when the hooks are
    /// replaced. (A stale one from a replaced ACL would be ignored by the ACL anyway.)
    ///
    /// [`Authorization::prepare`]: super::hooks::Authorization::prepare
    pub(super) prepared: Option<ClientAcl>,
    /// In a slow-consumer episode: its queue passed half of `max_queued_messages` while it was
    /// connected. Logged once when the episode starts and once when it ends (queue at most a
    /// quarter full), not per message.
    pub(super) slow_consumer: bool,
    /// The listener its client last connected through ([`NOT_COUNTED`]: none known): what is
    /// delivered to it has that listener's mount point removed.
    pub(super) listener: u16,
    /// Shard seconds ([`Shard::now_secs`]) when the session last made progress: attached to a
    /// connection or acknowledged an outgoing message. A congested session that made none for
    /// [`STUCK_AFTER_SECS`] is stuck, not slow: it no longer throttles publishers.
    pub(super) progress_secs: u32,
    /// The stuck state was logged (once until the session makes progress again).
    pub(super) stuck_logged: bool,
}

/// Seconds without an acknowledgement after which a congested subscriber stops throttling the
/// publishers that feed it (its queue bound drops the surplus instead). Without this bound one
/// client that subscribes to `#` and stops reading would slow every publisher of its shard
/// until keep-alive noticed it.
pub(super) const STUCK_AFTER_SECS: u32 = 10;

/// What few session entries have at a time (see [`SessionEntry::cold`]).
#[derive(Debug, Default)]
struct ColdParts {
    /// A will waiting out its MQTT 5.0 will delay interval.
    pending_will: Option<Box<LastWill>>,
    /// Set on a stub left behind when the session moved to another shard: deliveries are
    /// forwarded there (shard, claim token) until every shard routes to the new place.
    moved_to: Option<(u16, u64)>,
    /// While a moved session may receive a message both directly and through the old shard's
    /// stub: what it already got, so nothing is delivered twice.
    recent: Option<Box<RecentDeliveries>>,
}

impl ColdParts {
    fn is_empty(&self) -> bool {
        self.pending_will.is_none() && self.moved_to.is_none() && self.recent.is_none()
    }
}

impl SessionEntry {
    fn cold_mut(&mut self) -> &mut ColdParts {
        self.cold.get_or_insert_with(Default::default)
    }

    /// Frees the cold parts once all are empty.
    fn shed_cold(&mut self) {
        if self.cold.as_ref().is_some_and(|c| c.is_empty()) {
            self.cold = None;
        }
    }

    /// A will waiting out its MQTT 5.0 will delay interval.
    pub(super) fn pending_will(&self) -> Option<&LastWill> {
        self.cold.as_ref()?.pending_will.as_deref()
    }

    pub(super) fn set_pending_will(&mut self, will: Box<LastWill>) {
        self.cold_mut().pending_will = Some(will);
    }

    pub(super) fn take_pending_will(&mut self) -> Option<Box<LastWill>> {
        let will = self.cold.as_mut()?.pending_will.take();
        self.shed_cold();
        will
    }

    /// Where a stub forwards to (shard, claim token); `None` for a session that is not a stub.
    pub(super) fn moved_to(&self) -> Option<(u16, u64)> {
        self.cold.as_ref()?.moved_to
    }

    pub(super) fn set_moved_to(&mut self, shard: u16, token: u64) {
        self.cold_mut().moved_to = Some((shard, token));
    }

    /// What a moved session already got (while copies may arrive twice).
    pub(super) fn recent(&self) -> Option<&RecentDeliveries> {
        self.cold.as_ref()?.recent.as_deref()
    }

    pub(super) fn recent_mut(&mut self) -> Option<&mut RecentDeliveries> {
        self.cold.as_mut()?.recent.as_deref_mut()
    }

    pub(super) fn set_recent(&mut self, recent: Box<RecentDeliveries>) {
        self.cold_mut().recent = Some(recent);
    }

    pub(super) fn take_recent(&mut self) -> Option<Box<RecentDeliveries>> {
        let recent = self.cold.as_mut()?.recent.take();
        self.shed_cold();
        recent
    }

    /// When the session's current connection was attached (to a millisecond), given when the
    /// shard started; `None` while it is offline.
    pub(super) fn connected_at(&self, started: Instant) -> Option<Instant> {
        self.conn
            .map(|_| started + Duration::from_millis(self.since_ms))
    }
}

/// The filter an authorization check sees: without a `$share/{group}/` prefix.
pub(super) fn inner_filter(filter: &str) -> &str {
    match topic::parse_shared(filter) {
        Some(Ok(shared)) => shared.filter,
        _ => filter,
    }
}

/// How long after a move completes duplicates are still filtered.
pub(super) const MOVE_DEDUP_MARGIN: Duration = Duration::from_secs(2);

impl Shard {
    /// Adds a session to this shard (index, subscriptions); `None` when the slab is full.
    pub(super) fn install_session(&mut self, session: Session, token: u64) -> Option<SessionId> {
        let client_id = session.client_id.clone();
        let filters: Vec<(MqttStr, (SubscriptionOptions, u32))> = session
            .subscriptions
            .iter()
            .map(|(f, o)| (f.clone(), *o))
            .collect();
        let check_deliveries = self.needs_delivery_checks(&session);
        let queued = session.queued_len();
        let slot = self.sessions.insert(Box::new(SessionEntry {
            session,
            conn: None,
            token,
            generation: self.next_generation(),
            since_ms: self.clock_ms(),
            cold: None,
            check_deliveries,
            prepared: None,
            slow_consumer: false,
            listener: NOT_COUNTED,
            progress_secs: self.now_secs,
            stuck_logged: false,
        }))?;
        self.stats.session_queue_moved(queued, true);
        self.prepare_authorization(slot);
        if !self.installing_recovered {
            // A new owner, whatever comes next (its connection may already be gone): its
            // records start with the whole session, or recovery would find a newest
            // generation without it.
            self.journal_session_image(slot);
        }
        if let Some(stale) = self.by_client_id.insert(&self.sessions, &client_id, slot) {
            // The ownership protocol rules this out (one session per client id). Should it
            // happen anyway, end the older session rather than leave it unreachable.
            tracing::error!(shard = self.id, client = %client_id, "a second session for one client id; ending the older");
            self.stats.protocol_violations += 1;
            if let Some(entry) = self.sessions.get_mut(stale) {
                if let Some(conn) = entry.conn.take() {
                    self.kill_conn(conn, ReasonCode::SessionTakenOver, false);
                    if let Some(conn) = self.conns.get_mut(conn) {
                        conn.state = ConnState::Detached;
                    }
                }
                self.by_client_id.insert(&self.sessions, &client_id, stale);
                self.end_session(stale);
                self.by_client_id.insert(&self.sessions, &client_id, slot);
            }
        }
        for (filter, options) in filters {
            self.add_subscription(slot, &filter, options);
        }
        Some(slot)
    }

    /// Works out the session's [`SessionEntry::prepared`] from its identity and the current
    /// authorization hook.
    pub(super) fn prepare_authorization(&mut self, slot: SessionId) {
        let Some(entry) = self.sessions.get_mut(slot) else {
            return;
        };
        let client = ClientRef {
            client_id: &entry.session.client_id,
            username: entry.session.username.as_deref(),
            prepared: None,
        };
        entry.prepared = self.hooks.authorization.prepare(client);
    }

    /// [`Shard::prepare_authorization`] for every session (the authorization hook changed).
    pub(super) fn prepare_all_authorization(&mut self) {
        for slot in self.sessions.handles() {
            self.prepare_authorization(slot);
        }
    }

    /// Whether any of `session`'s subscriptions needs a per-delivery read check.
    pub(super) fn needs_delivery_checks(&self, session: &Session) -> bool {
        let authorization = &self.hooks.authorization;
        if !authorization.checks_deliveries() {
            return false;
        }
        let client = ClientRef {
            client_id: &session.client_id,
            username: session.username.as_deref(),
            prepared: None,
        };
        session.subscriptions.keys().any(|filter| {
            authorization.subscribe_check(client, inner_filter(filter)) != SubscribeCheck::Allowed
        })
    }

    /// After an ACL reload: every session's subscriptions checked against the new rules. Denied
    /// ones are removed (and logged); the per-delivery check is recomputed.
    pub(super) fn recheck_subscriptions(&mut self) {
        let slots: Vec<SessionId> = self.by_client_id.slots(&self.sessions).collect();
        let mut removed = 0usize;
        for slot in slots {
            let Some(entry) = self.sessions.get(slot) else {
                continue;
            };
            if entry.moved_to().is_some() {
                continue;
            }
            let session = &entry.session;
            let client = ClientRef {
                client_id: &session.client_id,
                username: session.username.as_deref(),
                prepared: entry.prepared.as_ref(),
            };
            let denied: Vec<MqttStr> = session
                .subscriptions
                .keys()
                .filter(|filter| {
                    self.hooks
                        .authorization
                        .subscribe_check(client, inner_filter(filter))
                        == SubscribeCheck::Denied
                })
                .cloned()
                .collect();
            let client_id = session.client_id.clone();
            let persistent = !session.clean;
            for filter in denied {
                tracing::info!(
                    shard = self.id,
                    client = %client_id,
                    %filter,
                    "subscription removed: the reloaded ACL denies it"
                );
                if let Some(entry) = self.sessions.get_mut(slot) {
                    entry.session.subscriptions.remove(&filter);
                }
                if persistent {
                    let generation = self.sessions.get(slot).map_or(0, |e| e.generation);
                    self.journal(&JournalRecord::Unsubscribed {
                        client_id: &client_id,
                        generation,
                        filter: &filter,
                    });
                }
                self.remove_subscription(slot, &filter);
                self.stats.not_authorized += 1;
                removed += 1;
            }
            let check = self
                .sessions
                .get(slot)
                .is_some_and(|e| self.needs_delivery_checks(&e.session));
            if let Some(entry) = self.sessions.get_mut(slot) {
                entry.check_deliveries = check;
            }
        }
        if removed > 0 {
            tracing::info!(
                shard = self.id,
                removed,
                "ACL reloaded: denied subscriptions removed"
            );
        }
    }

    pub(super) fn park_session(&mut self, session: SessionId) {
        let now_ms = self.clock_ms();
        let Some(entry) = self.sessions.get_mut(session) else {
            return;
        };
        entry.since_ms = now_ms;
        let token = entry.token;
        if !entry.session.clean && self.hooks.journal.enabled() {
            let (client_id, generation) = (&*entry.session.client_id, entry.generation);
            let journal = &mut self.hooks.journal;
            if entry.pending_will().is_none() {
                journal.append(&JournalRecord::WillCleared {
                    client_id,
                    generation,
                });
            }
            journal.append(&JournalRecord::SessionDisconnected {
                client_id,
                generation,
                expiry: entry.session.expiry,
            });
        }
        if let Some(expiry) = entry.session.expiry {
            let deadline = Self::bucket(now_ms + 1000 * u64::from(expiry));
            self.wheel
                .push(deadline, WheelEntry::Session { session, token });
        }
    }

    /// Removes a session from this shard: its subscriptions, its registry entry.
    pub(super) fn end_session(&mut self, session: SessionId) {
        let Some(mut entry) = self.sessions.remove(session) else {
            return;
        };
        // Its queue goes with it (shared-subscription messages to other members, as new
        // deliveries).
        self.stats
            .session_queue_moved(entry.session.queued_len(), false);
        if !entry.session.clean {
            self.journal(&JournalRecord::SessionEnded {
                client_id: &entry.session.client_id,
                generation: entry.generation,
            });
            if entry.moved_to().is_none() && self.hooks.journal.enabled() {
                self.origins_forget_client(&entry.session.client_id);
                let pending = entry.session.uncommitted_incoming_qos2();
                self.origins_publisher_ended(&entry.session.client_id, pending);
            }
        }
        let orphans = entry.session.take_shared_undelivered();
        if let Some(will) = entry.take_pending_will() {
            // The session ends before the will delay: the will goes out now (MQTT 5.0 §3.1.2.5).
            let username = entry.session.username.as_deref();
            self.publish_will(&entry.session.client_id, username, will);
        }
        self.by_client_id
            .remove_slot(&entry.session.client_id, session);
        for filter in entry.session.subscriptions.keys() {
            self.remove_subscription(session, filter);
        }
        self.release(entry.session.client_id, entry.token);
        // A member left with messages it had not acknowledged: they go to another member.
        for (group, message) in orphans {
            self.route_shared_group(&group, &message);
        }
    }
}
