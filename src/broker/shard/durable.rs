//! Acknowledgements that wait for the journal: what a client is told has happened (a PUBACK,
//! a PUBCOMP, a SUBACK, a retained update's confirmation) goes out only once the journal hook
//! reports the change durable. Per connection, acknowledgements keep their order: one that
//! is durable at once still waits behind an earlier held one.

use super::*;
use std::collections::hash_map::Entry;

use crate::broker::hooks::Journal;
use crate::session::{Change, SessionEvents};

/// An output held for this shard's journal alone (released in sequence order: it never
/// waits for another shard, so two shards never wait for each other).
#[derive(Debug)]
pub(super) struct HeldOutput {
    /// Journal sequence number that must be durable first.
    pub(super) sequence: u64,
    pub(super) kind: HeldKind,
}

/// A `StoreBarrier` whose answer waits for other shards: relayed to the shards this one
/// forwarded deliveries to, and (for a publisher's barrier) behind the relays already under
/// way, which cover what was forwarded before them.
#[derive(Debug)]
pub(super) struct Relay {
    /// Who asked, and its token.
    pub(super) from: usize,
    pub(super) token: u64,
    /// Shards that have not answered the relay yet, plus earlier relays not complete yet.
    pub(super) waiting: u16,
    /// This shard's own records when it was asked.
    pub(super) own: Durability,
    /// Later relays waiting for this one (always newer: the waits form no cycle).
    pub(super) dependents: Vec<u64>,
}

/// An acknowledgement that also waits for peer shards (their `StoreAck`s): kept per
/// connection, in order, apart from [`HeldOutput`]s so that it never blocks another
/// connection's output nor an answer to a peer.
#[derive(Debug)]
pub(super) struct PeerWait {
    /// Journal sequence number that must be durable first.
    pub(super) sequence: u64,
    /// Peer shards whose `StoreAck` for `token` must still arrive (they journaled deliveries
    /// of the publish this acknowledges).
    pub(super) waiting: u16,
    /// The store barrier token (0: none; it only keeps its place in the order).
    pub(super) token: u64,
    /// An inbound QoS 2 PUBREC: once the peers answered, record the packet id (so a crash
    /// before then makes the client resend, instead of the resend being dropped as known
    /// while a peer lost the delivery).
    pub(super) record_inbound: bool,
    /// With `record_inbound`: the peers to send `OriginCommitted` once the packet id is
    /// recorded; the acknowledgement then waits for their answers too (see `origins.rs`).
    pub(super) commit_to: Vec<u16>,
    /// With `record_inbound`: the publisher's session, which records the packet id even if
    /// its connection was taken over meanwhile (the PUBREC may still leave on it).
    pub(super) session: Option<SessionId>,
    pub(super) packet: Box<Packet>,
}

/// A PUBACK or PUBREC without properties (how a publish is answered), kept as its three
/// fields until it is written: a [`Packet`] is about 490 bytes with its empty properties, and
/// holding one for the journal cost a box and two copies of it per durable QoS 1 message.
#[derive(Debug, Clone, Copy)]
pub(super) struct LeanAck {
    /// PUBREC (QoS 2) rather than PUBACK.
    pub(super) rec: bool,
    pub(super) packet_id: u16,
    pub(super) reason: ReasonCode,
}

impl LeanAck {
    /// The packet it stands for.
    pub(super) fn packet(self) -> Packet {
        let ack = Ack {
            packet_id: self.packet_id,
            reason: self.reason,
            properties: Properties::default(),
        };
        if self.rec {
            Packet::PubRec(ack)
        } else {
            Packet::PubAck(ack)
        }
    }
}

#[derive(Debug)]
pub(super) enum HeldKind {
    /// An acknowledgement for a connection, inline.
    Ack(ConnId, LeanAck),
    /// A packet for a connection.
    Packet(ConnId, Box<Packet>),
    /// A message for a peer shard (or this one), boxed: held outputs queue by the thousand
    /// and move as they are released, and most are packets.
    Mesh(usize, Box<ShardMsg>),
}

impl Shard {
    /// Records `record` in the journal.
    pub(super) fn journal(&mut self, record: &JournalRecord<'_>) -> Durability {
        if !self.hooks.journal.enabled() {
            return Durability::Now;
        }
        self.hooks.journal.append(record)
    }

    /// The runtime reports whether the journal's disk is full (writes fail with ENOSPC):
    /// while it is, new persistent sessions, QoS 1/2 publishes and persistent subscriptions
    /// are refused (quota exceeded) and retained messages are not stored; nothing earlier is
    /// dropped.
    pub fn set_storage_full(&mut self, full: bool) {
        if self.storage_full != full {
            self.storage_full = full;
            if full {
                tracing::error!(
                    shard = self.id,
                    "data directory full: refusing new persistent sessions, QoS 1/2 publishes and persistent subscriptions"
                );
            } else {
                tracing::warn!(
                    shard = self.id,
                    "data directory writable again: persistent work accepted"
                );
            }
        }
    }

    /// Whether persistent work is refused for lack of disk space.
    pub(super) fn storage_full(&self) -> bool {
        self.storage_full && self.hooks.journal.enabled()
    }

    /// Records the retained update of `topic` this shard owns.
    pub(super) fn journal_retained(
        &mut self,
        topic: &str,
        message: Option<&Arc<Message>>,
    ) -> Durability {
        if !self.hooks.journal.enabled() || is_sys(topic) {
            return Durability::Now;
        }
        let version = self.next_generation();
        match message {
            Some(message) => {
                let id = self.hooks.journal.message_id(message);
                self.journal(&JournalRecord::RetainedSet {
                    topic,
                    version,
                    message: id,
                })
            }
            None => self.journal(&JournalRecord::RetainedCleared { topic, version }),
        }
    }

    /// Writes the whole state of the persistent session in `slot` under its generation: what
    /// a new owner does (a connection, a move between shards, a snapshot).
    pub(super) fn journal_session_image(&mut self, slot: SessionId) -> Durability {
        if !self.hooks.journal.enabled() {
            return Durability::Now;
        }
        let Some(entry) = self.sessions.get(slot).filter(|e| !e.session.clean) else {
            return Durability::Now;
        };
        let session = &entry.session;
        let client_id: &str = &session.client_id;
        let generation = entry.generation;
        let journal = &mut self.hooks.journal;
        let mut durability = journal.append(&JournalRecord::SessionStarted {
            client_id,
            generation,
            username: session.username.as_deref(),
            protocol: session.protocol.level(),
            expiry: session.expiry,
        });
        let will = session.will.as_deref().or(entry.pending_will());
        if let Some(will) = will {
            durability = later(
                durability,
                journal.append(&JournalRecord::WillSet {
                    client_id,
                    generation,
                    will,
                }),
            );
        }
        for (filter, (options, subscription_id)) in &session.subscriptions {
            durability = later(
                durability,
                journal.append(&JournalRecord::Subscribed {
                    client_id,
                    generation,
                    filter,
                    options: *options,
                    subscription_id: *subscription_id,
                }),
            );
        }
        for packet_id in session.committed_incoming_qos2() {
            journal.append(&JournalRecord::InboundReceived {
                client_id,
                generation,
                packet_id,
            });
        }
        let Some(entry) = self.sessions.get_mut(slot) else {
            return durability;
        };
        let mut recorder = Recorder::new(
            &mut self.stats,
            &mut self.hooks.journal,
            entry,
            None,
            self.now,
        );
        entry.session.record_image(&mut recorder);
        let (client_id, generation) = (&*entry.session.client_id, entry.generation);
        let complete = self.hooks.journal.append(&JournalRecord::ImageComplete {
            client_id,
            generation,
        });
        later(later(durability, complete), self.hooks.journal.barrier())
    }

    /// Writes `packet` to `conn` once `durability` allows, after any output held before it
    /// for the same connection.
    pub(super) fn ack_when_durable(
        &mut self,
        conn: ConnId,
        packet: Packet,
        durability: Durability,
    ) {
        self.ack_out_when_durable(conn, packet, durability);
    }

    /// [`Shard::ack_when_durable`] for a PUBACK or PUBREC without properties, held inline.
    pub(super) fn lean_ack_when_durable(
        &mut self,
        conn: ConnId,
        ack: LeanAck,
        durability: Durability,
    ) {
        self.ack_out_when_durable(conn, ack, durability);
    }

    fn ack_out_when_durable(&mut self, conn: ConnId, packet: impl AckOut, durability: Durability) {
        if self.peer_waits.contains_key(&conn) {
            // Behind an acknowledgement that waits for peers: in order after it.
            let packet = packet.into_packet();
            return self.wait_for_peers(conn, packet, durability, 0, 0, Vec::new());
        }
        let waiting_behind = self.last_held_packet(conn);
        let sequence = match (durability, waiting_behind) {
            (Durability::Now, None) => return self.write(conn, packet.into_packet()),
            (Durability::Now, Some(sequence)) => sequence,
            (Durability::At(sequence), behind) => sequence.max(behind.unwrap_or(0)),
        };
        if self.held_packet_until.insert(conn, sequence).is_none() {
            self.held_packet_conns.push(conn);
        }
        self.hold(sequence, packet.held(conn));
    }

    /// Sends `message` to `shard` once `durability` allows.
    pub(super) fn send_when_durable(
        &mut self,
        shard: usize,
        message: ShardMsg,
        durability: Durability,
    ) {
        match durability {
            Durability::Now => self.send(shard, message),
            Durability::At(sequence) => {
                self.hold(sequence, HeldKind::Mesh(shard, Box::new(message)))
            }
        }
    }

    /// The sequence number the last packet held for `conn` waits for, if one is held: an
    /// index rather than a scan of `held_outputs` per acknowledgement, which grew with the
    /// number of connections.
    fn last_held_packet(&self, conn: ConnId) -> Option<u64> {
        self.held_packet_until
            .get(&conn)
            .copied()
            .filter(|&sequence| sequence > self.durable_through)
    }

    fn hold(&mut self, sequence: u64, kind: HeldKind) {
        // Sequence numbers grow: almost always this goes at the back.
        if self
            .held_outputs
            .back()
            .is_none_or(|last| last.sequence <= sequence)
        {
            self.held_outputs.push_back(HeldOutput { sequence, kind });
            return self.release_held_outputs();
        }
        // Keep the queue sorted even if a journal hands out an older one late.
        let at = self
            .held_outputs
            .iter()
            .rposition(|held| held.sequence <= sequence)
            .map_or(0, |i| i + 1);
        self.held_outputs.insert(at, HeldOutput { sequence, kind });
        // Already durable (the durability was taken before an `on_durable` that covered it).
        self.release_held_outputs();
    }

    /// Acknowledges a publish with `packet` once this shard's journal allows (`durability`)
    /// and every peer in `targets` (shards this publish was routed to) has journaled its
    /// deliveries: each gets a `StoreBarrier` and answers `StoreAck` when durable. In order
    /// with the connection's other held acknowledgements.
    pub(super) fn ack_after_peers(
        &mut self,
        conn: ConnId,
        packet: Packet,
        durability: Durability,
        targets: &[usize],
    ) {
        if targets.is_empty() {
            return self.ack_when_durable(conn, packet, durability);
        }
        let token = self.new_token();
        for &target in targets {
            self.send(
                target,
                ShardMsg::StoreBarrier {
                    from: self.id as u16,
                    token,
                    relayed: false,
                },
            );
        }
        let waiting = u16::try_from(targets.len()).unwrap_or(u16::MAX);
        let commit_to = if matches!(packet, Packet::PubRec(_)) {
            targets.iter().map(|&t| t as u16).collect()
        } else {
            Vec::new()
        };
        self.wait_for_peers(conn, packet, durability, waiting, token, commit_to);
    }

    /// Queues `packet` for `conn` behind its other acknowledgements: it leaves once
    /// `durability` allows and `waiting` peers answered `token`.
    fn wait_for_peers(
        &mut self,
        conn: ConnId,
        packet: Packet,
        durability: Durability,
        waiting: u16,
        token: u64,
        commit_to: Vec<u16>,
    ) {
        // After every output of the connection held for the journal alone.
        let behind = self.last_held_packet(conn).unwrap_or(0);
        let own = match durability {
            Durability::Now => self.durable_through,
            Durability::At(sequence) => sequence,
        };
        let record_inbound = waiting > 0 && matches!(packet, Packet::PubRec(_));
        let session = match self.conns.get(conn).map(|c| &c.state) {
            Some(ConnState::Active { session, .. }) if record_inbound => Some(*session),
            _ => None,
        };
        if token != 0 {
            self.peer_wait_tokens.insert(token, conn);
        }
        self.peer_waits
            .entry(conn)
            .or_default()
            .push_back(PeerWait {
                sequence: own.max(behind),
                waiting,
                token,
                record_inbound,
                commit_to: if record_inbound {
                    commit_to
                } else {
                    Vec::new()
                },
                session,
                packet: Box::new(packet),
            });
        self.release_peer_waits(conn);
    }

    /// Sends what `conn` may have of its peer-waiting acknowledgements, in order.
    fn release_peer_waits(&mut self, conn: ConnId) {
        let durable = self.durable_through;
        let alive = self.conns.contains(conn);
        let Some(queue) = self.peer_waits.get_mut(&conn) else {
            return;
        };
        let mut ready = Vec::new();
        while let Some(front) = queue.front() {
            if alive && (front.waiting > 0 || front.sequence > durable) {
                break;
            }
            if let Some(wait) = queue.pop_front() {
                if wait.token != 0 {
                    self.peer_wait_tokens.remove(&wait.token);
                }
                ready.push(wait.packet);
            }
        }
        if queue.is_empty() {
            self.peer_waits.remove(&conn);
        }
        if alive {
            for packet in ready {
                self.write(conn, *packet);
            }
        }
    }

    /// Records that the inbound QoS 2 `packet_id` of a durable session was accepted (after
    /// its deliveries on this shard, in the same file: both survive a crash or neither).
    pub(super) fn journal_inbound(
        &mut self,
        session: SessionId,
        qos: QoS,
        packet_id: u16,
    ) -> Durability {
        if qos != QoS::ExactlyOnce {
            return Durability::Now;
        }
        let Some(entry) = self.sessions.get_mut(session).filter(|e| !e.session.clean) else {
            return Durability::Now;
        };
        entry.session.commit_inbound(packet_id);
        let (client_id, generation) = (&*entry.session.client_id, entry.generation);
        self.hooks.journal.append(&JournalRecord::InboundReceived {
            client_id,
            generation,
            packet_id,
        })
    }

    /// A peer's answer to a `StoreBarrier` (its deliveries of that publish are durable) or to
    /// an `OriginCommitted` (its origin entry is gone).
    pub(super) fn on_store_ack(&mut self, token: u64) {
        if self.on_relay_ack(token) {
            return;
        }
        let Some(conn) = self.peer_wait_tokens.get(&token).copied() else {
            return;
        };
        let mut inbound = None;
        if let Some(wait) = self
            .peer_waits
            .get_mut(&conn)
            .and_then(|queue| queue.iter_mut().find(|w| w.token == token))
        {
            wait.waiting = wait.waiting.saturating_sub(1);
            if wait.waiting == 0 && wait.record_inbound {
                wait.record_inbound = false;
                if let Packet::PubRec(ack) = &*wait.packet {
                    inbound = Some((ack.packet_id, std::mem::take(&mut wait.commit_to)));
                }
            }
        }
        // The session that published, as long as it is still here (a session that moved
        // away records the id when its client resends on the new shard).
        let session = self
            .peer_waits
            .get(&conn)
            .and_then(|queue| queue.iter().find(|w| w.token == token))
            .and_then(|w| w.session)
            .filter(|&s| self.sessions.get(s).is_some_and(|e| e.moved_to().is_none()));
        if inbound.is_some() && session.is_none() {
            // The session moved away (or ended) before the id could be recorded here: no
            // PUBREC, so its client resends the PUBLISH on its new connection, where the id
            // is recorded and the shards are told to drop their origin entries.
            if let Some(queue) = self.peer_waits.get_mut(&conn) {
                queue.retain(|w| w.token != token);
            }
            self.peer_wait_tokens.remove(&token);
            return self.release_peer_waits(conn);
        }
        if let (Some((packet_id, commit_to)), Some(session)) = (inbound, session) {
            if let Durability::At(sequence) =
                self.journal_inbound(session, QoS::ExactlyOnce, packet_id)
            {
                // Once the packet id is durable here, the peers drop their origin entries;
                // the PUBREC waits for that too, so no entry outlives the exchange.
                let publisher = self
                    .sessions
                    .get(session)
                    .map(|e| e.session.client_id.clone());
                let mut commit_to = commit_to;
                if let Some(publisher) = &publisher {
                    for shard in self.origin_clear_local(publisher, packet_id) {
                        if usize::from(shard) != self.id && !commit_to.contains(&shard) {
                            commit_to.push(shard);
                        }
                    }
                }
                let commit = match publisher {
                    Some(publisher) if !commit_to.is_empty() => {
                        let commit_token = self.new_token();
                        for &peer in &commit_to {
                            let message = ShardMsg::OriginCommitted {
                                from: self.id as u16,
                                token: commit_token,
                                publisher: publisher.clone(),
                                packet_id,
                            };
                            self.send_when_durable(
                                usize::from(peer),
                                message,
                                Durability::At(sequence),
                            );
                        }
                        self.peer_wait_tokens.remove(&token);
                        self.peer_wait_tokens.insert(commit_token, conn);
                        Some((commit_token, commit_to.len()))
                    }
                    _ => None,
                };
                if let Some(wait) = self
                    .peer_waits
                    .get_mut(&conn)
                    .and_then(|queue| queue.iter_mut().find(|w| w.token == token))
                {
                    wait.sequence = wait.sequence.max(sequence);
                    if let Some((commit_token, peers)) = commit {
                        wait.token = commit_token;
                        wait.waiting = u16::try_from(peers).unwrap_or(u16::MAX);
                    }
                }
            }
        }
        self.release_peer_waits(conn);
    }

    /// A peer asks when what it routed here is durable: answer once everything journaled so
    /// far is (the mesh is ordered, so that includes its deliveries). Deliveries this shard
    /// passed on (a moved session's stub forwards them to its new shard) must be durable
    /// there too: the barrier is relayed to the shards forwarded to since the last relay, and
    /// a publisher's barrier also waits for the relays under way (what was forwarded before
    /// them is theirs to cover). Deliveries waiting for a claim to be granted here are
    /// journaled only when it is: the answer waits for that.
    pub(super) fn on_store_barrier(&mut self, from: usize, token: u64, relayed: bool) {
        if self.pending_claims.values().any(|c| !c.forwards.is_empty()) {
            self.deferred_barriers.push((from, token, relayed));
            return;
        }
        let own = self.hooks.journal.barrier();
        let forwarded = std::mem::take(&mut self.forwarded_to);
        // A relayed barrier does not wait for relays under way: two shards that forward to
        // each other would each wait for the other's relay. What a relay leaves uncovered is
        // a delivery forwarded twice (two moves) while another relay is under way.
        let earlier: Vec<u64> = if relayed {
            Vec::new()
        } else {
            self.relays.keys().copied().collect()
        };
        if forwarded.is_empty() && earlier.is_empty() {
            return self.send_when_durable(from, ShardMsg::StoreAck { token }, own);
        }
        let relay = self.new_token();
        for &peer in &forwarded {
            self.send(
                peer,
                ShardMsg::StoreBarrier {
                    from: self.id as u16,
                    token: relay,
                    relayed: true,
                },
            );
        }
        for earlier_token in &earlier {
            if let Some(earlier_relay) = self.relays.get_mut(earlier_token) {
                earlier_relay.dependents.push(relay);
            }
        }
        let waiting = forwarded.len() + earlier.len();
        self.relays.insert(
            relay,
            Relay {
                from,
                token,
                waiting: u16::try_from(waiting).unwrap_or(u16::MAX),
                own,
                dependents: Vec::new(),
            },
        );
    }

    /// Barriers put off while claims with forwarded deliveries were pending: answered once
    /// none is.
    pub(super) fn retry_deferred_barriers(&mut self) {
        if self.deferred_barriers.is_empty()
            || self.pending_claims.values().any(|c| !c.forwards.is_empty())
        {
            return;
        }
        for (from, token, relayed) in std::mem::take(&mut self.deferred_barriers) {
            self.on_store_barrier(from, token, relayed);
        }
    }

    /// A `StoreAck` for a relayed barrier: once every shard it was relayed to answered and
    /// every earlier relay it waits for completed, the original asker is answered (after
    /// this shard's own records). `false`: not a relay.
    fn on_relay_ack(&mut self, token: u64) -> bool {
        if !self.relays.contains_key(&token) {
            return false;
        }
        let mut done = vec![token];
        while let Some(token) = done.pop() {
            let Some(relay) = self.relays.get_mut(&token) else {
                continue;
            };
            relay.waiting = relay.waiting.saturating_sub(1);
            if relay.waiting > 0 {
                continue;
            }
            if let Some(relay) = self.relays.remove(&token) {
                let ack = ShardMsg::StoreAck { token: relay.token };
                self.send_when_durable(relay.from, ack, relay.own);
                done.extend(relay.dependents);
            }
        }
        true
    }

    /// The journal made everything up to `sequence` durable: held acknowledgements go out.
    pub fn on_durable(&mut self, sequence: u64, now: Instant) {
        self.set_now(now);
        self.durable_through = self.durable_through.max(sequence);
        self.release_held_outputs();
        self.forget_released_packets();
        self.release_held_conns();
        let conns: Vec<ConnId> = self.peer_waits.keys().copied().collect();
        for conn in conns {
            self.release_peer_waits(conn);
        }
        self.drain_local_inbox();
    }

    fn release_held_outputs(&mut self) {
        let sequence = self.durable_through;
        while self
            .held_outputs
            .front()
            .is_some_and(|held| held.sequence <= sequence)
        {
            let Some(held) = self.held_outputs.pop_front() else {
                break;
            };
            match held.kind {
                HeldKind::Ack(conn, ack) => self.write(conn, ack.packet()),
                HeldKind::Packet(conn, packet) => self.write(conn, *packet),
                HeldKind::Mesh(shard, message) => self.send(shard, *message),
            }
        }
    }

    /// The index of each connection's last held packet forgets the connections whose last
    /// held packet went out: once per write and connection held meanwhile, not a lookup and
    /// a removal per released packet.
    fn forget_released_packets(&mut self) {
        let durable = self.durable_through;
        let until = &mut self.held_packet_until;
        self.held_packet_conns.retain(|conn| {
            if until.get(conn).is_some_and(|&last| last > durable) {
                return true;
            }
            until.remove(conn);
            false
        });
    }

    /// Held connections whose last held record is durable go again: their output, written
    /// while held, is flushed. Once per write and connection held meanwhile, instead of a
    /// queued release per held delivery.
    fn release_held_conns(&mut self) {
        let durable = self.durable_through;
        let mut conns = std::mem::take(&mut self.output_held_conns);
        conns.retain(|&conn| {
            if self
                .output_held_until
                .get(&conn)
                .is_some_and(|&until| until > durable)
            {
                return true;
            }
            self.output_held_until.remove(&conn);
            if let Some(c) = self.conns.get_mut(conn) {
                c.limited.set(Limited::OUTPUT_HELD, false);
                self.wake_conn(conn);
            }
            false
        });
        self.output_held_conns = conns;
    }

    /// Holds everything `conn` is sent from now on until `durability` allows: a persistent
    /// session's CONNACK waits for its records, a PUBLISH or PUBREL to a durable session for
    /// the record of it (so that after a crash it is resent with the same packet id, never
    /// again as a new message).
    pub(super) fn hold_output(&mut self, conn: ConnId, durability: Durability) {
        let Durability::At(sequence) = durability else {
            return;
        };
        if sequence <= self.durable_through {
            return;
        }
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        c.limited.set(Limited::OUTPUT_HELD, true);
        // Released by `release_held_conns` once `sequence` is durable.
        match self.output_held_until.entry(conn) {
            Entry::Occupied(mut held) => {
                let until = held.get_mut();
                *until = (*until).max(sequence);
            }
            Entry::Vacant(vacant) => {
                vacant.insert(sequence);
                self.output_held_conns.push(conn);
            }
        }
    }

    /// After a session call that may have written to `conn`: if it recorded anything (the
    /// journal's barrier moved past `before`), the connection's output waits for it.
    pub(super) fn hold_if_recorded(&mut self, conn: Option<ConnId>, before: Durability) {
        let Some(conn) = conn else {
            return;
        };
        let after = self.hooks.journal.barrier();
        if after != before {
            self.hold_output(conn, after);
        }
    }

    /// The identity checks are about.
    pub(super) fn client_of(&self, session: SessionId) -> Option<ClientRef<'_>> {
        self.sessions.get(session).map(|entry| ClientRef {
            client_id: &entry.session.client_id,
            username: entry.session.username.as_deref(),
            prepared: entry.prepared.as_ref(),
        })
    }
}

/// An acknowledgement to send once durable: a packet, or a [`LeanAck`] held inline.
trait AckOut {
    fn into_packet(self) -> Packet;
    fn held(self, conn: ConnId) -> HeldKind;
}

impl AckOut for Packet {
    fn into_packet(self) -> Packet {
        self
    }
    fn held(self, conn: ConnId) -> HeldKind {
        HeldKind::Packet(conn, Box::new(self))
    }
}

impl AckOut for LeanAck {
    fn into_packet(self) -> Packet {
        self.packet()
    }
    fn held(self, conn: ConnId) -> HeldKind {
        HeldKind::Ack(conn, self)
    }
}

/// The later of two durability points.
pub(super) fn later(a: Durability, b: Durability) -> Durability {
    match (a, b) {
        (Durability::At(x), Durability::At(y)) => Durability::At(x.max(y)),
        (Durability::At(x), Durability::Now) | (Durability::Now, Durability::At(x)) => {
            Durability::At(x)
        }
        (Durability::Now, Durability::Now) => Durability::Now,
    }
}

/// What a session reports while it works, turned into counters and, for a durable session,
/// journal records.
pub(super) struct Recorder<'a> {
    pub(super) stats: &'a mut ShardStats,
    /// When the session's client connected (latency is measured for messages read since).
    pub(super) connected_at: Option<Instant>,
    pub(super) now: Instant,
    /// The journal and the session's generation: `None` when nothing is recorded (no data
    /// directory, or a clean session). The client id comes with each change, borrowed from
    /// the session: a copy here cost two reference-count updates per recorder (two recorders
    /// per durable QoS 1 message).
    pub(super) journal: Option<(&'a mut dyn Journal, u64)>,
}

impl<'a> Recorder<'a> {
    /// A recorder for the session of `entry`; `journal` is the shard's hook.
    pub(super) fn new(
        stats: &'a mut ShardStats,
        journal: &'a mut Box<dyn Journal>,
        entry: &SessionEntry,
        connected_at: Option<Instant>,
        now: Instant,
    ) -> Self {
        let journal = (journal.enabled() && !entry.session.clean)
            .then_some((&mut **journal as &mut dyn Journal, entry.generation));
        Recorder {
            stats,
            connected_at,
            now,
            journal,
        }
    }
}

impl SessionEvents for Recorder<'_> {
    fn sent(&mut self, message: &Message, qos: QoS) {
        self.stats.sent(message, qos, self.connected_at, self.now);
    }

    fn change(&mut self, client_id: &str, change: Change<'_>) -> u64 {
        let Some((journal, generation)) = self.journal.as_mut() else {
            return 0;
        };
        let generation = *generation;
        let (record, id) = match change {
            Change::Queued {
                message,
                qos,
                retain,
                subscription_ids,
            } => {
                let id = journal.message_id(message);
                let record = JournalRecord::Enqueued {
                    client_id,
                    generation,
                    message: id,
                    qos,
                    retain,
                    subscription_ids,
                };
                (record, id)
            }
            Change::SentNew {
                message,
                packet_id,
                qos,
                retain,
                subscription_ids,
            } => {
                let id = journal.message_id(message);
                let record = JournalRecord::InFlight {
                    client_id,
                    generation,
                    message: id,
                    packet_id,
                    qos,
                    retain,
                    subscription_ids,
                };
                (record, id)
            }
            Change::SentQueued {
                store_id,
                packet_id,
                qos,
                retain,
                subscription_ids,
            } => {
                let record = JournalRecord::InFlight {
                    client_id,
                    generation,
                    message: store_id,
                    packet_id,
                    qos,
                    retain,
                    subscription_ids,
                };
                (record, store_id)
            }
            Change::Dup(packet_id) => (
                JournalRecord::DupSet {
                    client_id,
                    generation,
                    packet_id,
                },
                0,
            ),
            Change::PubRec(packet_id) => (
                JournalRecord::PubRecReceived {
                    client_id,
                    generation,
                    packet_id,
                },
                0,
            ),
            Change::Acked(packet_id) => (
                JournalRecord::Acked {
                    client_id,
                    generation,
                    packet_id,
                },
                0,
            ),
            Change::Dequeued(store_id) => (
                JournalRecord::Dequeued {
                    client_id,
                    generation,
                    message: store_id,
                },
                0,
            ),
        };
        journal.append(&record);
        id
    }
}
