//! Acknowledgements that wait for the journal: what a client is told has happened (a PUBACK,
//! a PUBCOMP, a SUBACK, a retained update's confirmation) goes out only once the journal hook
//! reports the change durable. Per connection, acknowledgements keep their order: one that
//! is durable at once still waits behind an earlier held one.

use super::*;

/// An output held for the journal.
#[derive(Debug)]
pub(super) struct HeldOutput {
    /// Journal sequence number that must be durable first.
    pub(super) sequence: u64,
    pub(super) kind: HeldKind,
}

#[derive(Debug)]
pub(super) enum HeldKind {
    /// A packet for a connection.
    Packet(ConnId, Box<Packet>),
    /// A message for a peer shard (or this one).
    Mesh(usize, ShardMsg),
}

impl Shard {
    /// Records `record` in the journal.
    pub(super) fn journal(&mut self, record: &JournalRecord<'_>) -> Durability {
        if !self.hooks.journal.enabled() {
            return Durability::Now;
        }
        self.hooks.journal.append(record)
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
        let will = session.will.as_deref().or(entry.pending_will.as_deref());
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
        durability
    }

    /// Writes `packet` to `conn` once `durability` allows, after any output held before it
    /// for the same connection.
    pub(super) fn ack_when_durable(
        &mut self,
        conn: ConnId,
        packet: Packet,
        durability: Durability,
    ) {
        let waiting_behind = self
            .held_outputs
            .iter()
            .rev()
            .find(|held| matches!(held.kind, HeldKind::Packet(c, _) if c == conn))
            .map(|held| held.sequence);
        let sequence = match (durability, waiting_behind) {
            (Durability::Now, None) => return self.write(conn, packet),
            (Durability::Now, Some(sequence)) => sequence,
            (Durability::At(sequence), behind) => sequence.max(behind.unwrap_or(0)),
        };
        self.hold(sequence, HeldKind::Packet(conn, Box::new(packet)));
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
            Durability::At(sequence) => self.hold(sequence, HeldKind::Mesh(shard, message)),
        }
    }

    fn hold(&mut self, sequence: u64, kind: HeldKind) {
        // Sequence numbers grow; keep the queue sorted even if a journal hands out an older
        // one late.
        let at = self
            .held_outputs
            .iter()
            .rposition(|held| held.sequence <= sequence)
            .map_or(0, |i| i + 1);
        self.held_outputs.insert(at, HeldOutput { sequence, kind });
    }

    /// The journal made everything up to `sequence` durable: held acknowledgements go out.
    pub fn on_durable(&mut self, sequence: u64, now: Instant) {
        self.set_now(now);
        while self
            .held_outputs
            .front()
            .is_some_and(|held| held.sequence <= sequence)
        {
            let Some(held) = self.held_outputs.pop_front() else {
                break;
            };
            match held.kind {
                HeldKind::Packet(conn, packet) => self.write(conn, *packet),
                HeldKind::Mesh(shard, message) => self.send(shard, message),
            }
        }
        self.drain_local_inbox();
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
