//! Replay: records from every shard's files, in any order across shards (in order within a
//! shard), folded into the state a restarted broker installs. Per client id only the newest
//! generation survives: a session that moved between shards is rebuilt from its newest
//! owner's records alone (a new owner writes the whole session under its generation).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Maps keyed by client ids and topics (which clients choose): a keyed hash, random per
/// process, several times cheaper than SipHash (a million retained topics are hashed at
/// every step of a start-up).
pub type KeyedMap<K, V> = HashMap<K, V, ahash::RandomState>;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use crate::codec::SubscriptionOptions;

use super::record::{
    epoch_of, Delivery, Generation, MessageId, MessageRecord, StoreRecord, WillRecord,
};

/// A subscription of a recovered session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredSubscription {
    /// Options.
    pub options: SubscriptionOptions,
    /// Subscription identifier (0: none).
    pub subscription_id: u32,
}

/// A message waiting in a recovered session's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// The body.
    pub message: Arc<MessageRecord>,
    /// How it goes out.
    pub delivery: Delivery,
}

/// An in-flight outgoing QoS 1/2 exchange of a recovered session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InFlightMessage {
    /// PUBLISH sent, waiting for PUBACK / PUBREC.
    Published {
        /// The body.
        message: Arc<MessageRecord>,
        /// How it went out.
        delivery: Delivery,
        /// DUP is set on the next send.
        dup: bool,
    },
    /// QoS 2: PUBREC received, PUBREL due, waiting for PUBCOMP (the message is no longer
    /// needed: a snapshot writes this state with a `PubRecReceived` record alone).
    PubRelDue,
}

/// One recovered session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredSession {
    /// Client identifier.
    pub client_id: String,
    /// The generation whose records built it.
    pub generation: Generation,
    /// The shard whose files held it.
    pub source_shard: u16,
    /// Whether its `SessionStarted` record was found (if not, it was lost to damage and the
    /// fields it carries are defaults).
    pub started: bool,
    /// The owner's user name.
    pub username: Option<String>,
    /// Protocol level (3, 4, 5; 0 when unknown).
    pub protocol: u8,
    /// Session expiry in seconds after disconnection (`None`: never).
    pub expiry_secs: Option<u32>,
    /// When its client disconnected (wall-clock Unix ms); `None`: connected at the crash
    /// (its will is due, and its expiry counts from the restart).
    pub disconnected_at_ms: Option<u64>,
    /// Its will, if set and not yet published.
    pub will: Option<WillRecord>,
    /// Subscriptions by filter.
    pub subscriptions: BTreeMap<String, RecoveredSubscription>,
    /// Queued messages, oldest first.
    pub queue: VecDeque<QueuedMessage>,
    /// In-flight outgoing messages by packet id.
    pub inflight: BTreeMap<u16, InFlightMessage>,
    /// Inbound QoS 2 packet ids received and not yet released.
    pub inbound_qos2: BTreeSet<u16>,
}

impl RecoveredSession {
    fn new(client_id: &str, generation: Generation, source_shard: u16) -> RecoveredSession {
        RecoveredSession {
            client_id: client_id.to_owned(),
            generation,
            source_shard,
            started: false,
            username: None,
            protocol: 0,
            expiry_secs: None,
            disconnected_at_ms: None,
            will: None,
            subscriptions: BTreeMap::new(),
            queue: VecDeque::new(),
            inflight: BTreeMap::new(),
            inbound_qos2: BTreeSet::new(),
        }
    }
}

/// A QoS 2 publish from another shard that reached `clients` while its publisher's shard
/// had not recorded the packet id (see `StoreRecord::OriginReceived`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredOrigin {
    /// The publisher's client id.
    pub publisher: String,
    /// Its packet id.
    pub packet_id: u16,
    /// CRC-32C of topic and payload.
    pub digest: u32,
    /// The subscribers that have it.
    pub clients: BTreeSet<String>,
}

/// A recovered retained message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredRetained {
    /// Its version.
    pub version: Generation,
    /// The shard whose files held it.
    pub source_shard: u16,
    /// The message.
    pub message: Arc<MessageRecord>,
}

/// Counts of what replay applied and set aside.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Records applied.
    pub applied: u64,
    /// Records read after a newer generation (version) of their client id (topic) had been
    /// seen, and ignored. Records of an older generation read first are applied, then
    /// dropped with their session: see `superseded_sessions`.
    pub stale: u64,
    /// Sessions rebuilt from records and then replaced by a newer generation of their client
    /// id (a session that moved between shards, read in the old shard's files first).
    pub superseded_sessions: u64,
    /// Records referring to a message body that was never found (lost to damage).
    pub missing_messages: u64,
    /// Records referring to a packet id or queue entry that does not exist.
    pub missing_entries: u64,
    /// Sessions whose `SessionStarted` record was not found.
    pub sessions_without_start: u64,
    /// Session images cut short (no `ImageComplete`: a torn write) set aside for the newest
    /// complete generation of their client id.
    pub cut_images: u64,
    /// Checkpoint records seen.
    pub checkpoints: u64,
}

/// What replay rebuilt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveredState {
    /// Live sessions by client id.
    pub sessions: BTreeMap<String, RecoveredSession>,
    /// Retained messages and their topics, each topic once, in no order (a million of them
    /// took a second to sort, and half a second to index again; nothing needs either).
    pub retained: Vec<(String, RecoveredRetained)>,
    /// QoS 2 publishes delivered to durable sessions whose publisher's shard had not yet
    /// recorded the packet id: their resend must not reach those sessions again.
    pub origins: Vec<RecoveredOrigin>,
    /// The newest generation or version seen (ended sessions and cleared topics included).
    pub max_generation: Generation,
    /// Counts.
    pub stats: ReplayStats,
}

impl RecoveredState {
    /// The epoch of the boot that follows: newer than every generation recovered.
    pub fn next_epoch(&self) -> u64 {
        epoch_of(self.max_generation) + 1
    }

    /// Queued plus in-flight messages over every session.
    pub fn pending_messages(&self) -> usize {
        self.sessions
            .values()
            .map(|session| session.queue.len() + session.inflight.len())
            .sum()
    }

    /// Drops retained messages (and queued, not in-flight, messages) whose expiry is at or
    /// before `now_ms`, wall-clock Unix milliseconds.
    pub fn drop_expired(&mut self, now_ms: u64) {
        let expired =
            |message: &MessageRecord| message.expires_at_ms.is_some_and(|at| at <= now_ms);
        self.retained
            .retain(|(_, retained)| !expired(&retained.message));
        for session in self.sessions.values_mut() {
            session.queue.retain(|queued| !expired(&queued.message));
        }
    }
}

/// What replay knows of one client id: the generation it last ended (0: none) and the
/// generations seen since, oldest first. A generation's records start with its image, closed
/// by `ImageComplete`; an image a torn write cut short has no end, and recovery then keeps
/// the newest complete generation (the acknowledged state) rather than the partial one.
/// Only the oldest candidate may be complete: a complete generation drops older ones.
#[derive(Debug, Default)]
struct SessionSlot {
    ended: Generation,
    candidates: Vec<Candidate>,
}

#[derive(Debug)]
struct Candidate {
    session: Box<RecoveredSession>,
    complete: bool,
}

impl SessionSlot {
    /// The generation below which records are stale: the newest ended or complete one.
    fn floor(&self) -> Generation {
        match self.candidates.first() {
            Some(first) if first.complete => first.session.generation.max(self.ended),
            _ => self.ended,
        }
    }

    /// Whether `generation` is the complete candidate (its later records still apply).
    fn is_complete_generation(&self, generation: Generation) -> bool {
        generation > self.ended
            && self
                .candidates
                .first()
                .is_some_and(|c| c.complete && c.session.generation == generation)
    }

    /// Drops candidates older than a complete one or not newer than the end; how many.
    fn prune(&mut self) -> u64 {
        let before = self.candidates.len();
        let ended = self.ended;
        self.candidates.retain(|c| c.session.generation > ended);
        if let Some(newest_complete) = self.candidates.iter().rposition(|c| c.complete) {
            self.candidates.drain(..newest_complete);
        }
        (before - self.candidates.len()) as u64
    }

    /// The state recovery keeps: the newest generation if its image is complete, else the
    /// newest complete one, else (files without image ends) the newest. Counts what it set
    /// aside in `stats`.
    fn chosen(mut self, stats: &mut ReplayStats) -> Option<RecoveredSession> {
        let newest_complete = self.candidates.iter().rposition(|c| c.complete);
        let len = self.candidates.len();
        let at = match (newest_complete, len) {
            (_, 0) => return None,
            (Some(at), _) => {
                stats.cut_images += (len - 1 - at) as u64;
                at
            }
            (None, len) => {
                stats.superseded_sessions += (len - 1) as u64;
                len - 1
            }
        };
        Some(*self.candidates.swap_remove(at).session)
    }
}

#[derive(Debug)]
enum RetainedSlot {
    Set(RecoveredRetained),
    Cleared(Generation),
}

/// Folds records into a [`RecoveredState`].
#[derive(Debug, Default)]
pub struct Replayer {
    sessions: KeyedMap<String, SessionSlot>,
    retained: KeyedMap<String, RetainedSlot>,
    messages: HashMap<(u16, MessageId), Arc<MessageRecord>, BuildHasherDefault<super::FoldHasher>>,
    /// Origin entries by the shard whose files hold them, publisher and packet id.
    origins: BTreeMap<(u16, String, u16), (u32, BTreeSet<String>)>,
    max_generation: Generation,
    stats: ReplayStats,
}

impl RecoveredState {
    /// The retained message of `topic` (a linear search: for tests and tools).
    pub fn retained_at(&self, topic: &str) -> Option<&RecoveredRetained> {
        self.retained
            .iter()
            .find(|(candidate, _)| candidate == topic)
            .map(|(_, retained)| retained)
    }
}

impl Replayer {
    /// An empty replay.
    pub fn new() -> Replayer {
        Replayer::default()
    }

    /// The session `client_id` at `generation`, made fresh when `generation` is newer than
    /// what is known; `None` when the record is stale.
    fn session(
        &mut self,
        shard: u16,
        client_id: &str,
        generation: Generation,
    ) -> Option<&mut RecoveredSession> {
        self.max_generation = self.max_generation.max(generation);
        if !self.sessions.contains_key(client_id) {
            self.sessions
                .insert(client_id.to_owned(), SessionSlot::default());
        }
        let slot = self.sessions.get_mut(client_id)?;
        if generation <= slot.floor() && !slot.is_complete_generation(generation) {
            self.stats.stale += 1;
            return None;
        }
        let at = match slot
            .candidates
            .binary_search_by_key(&generation, |c| c.session.generation)
        {
            Ok(at) => at,
            Err(at) => {
                slot.candidates.insert(
                    at,
                    Candidate {
                        session: Box::new(RecoveredSession::new(client_id, generation, shard)),
                        complete: false,
                    },
                );
                at
            }
        };
        Some(&mut *slot.candidates[at].session)
    }

    /// `ImageComplete`: the image of `client_id` at `generation` is whole; older generations
    /// are superseded.
    fn image_complete(&mut self, client_id: &str, generation: Generation) -> Option<()> {
        let slot = self.sessions.get_mut(client_id)?;
        let at = slot
            .candidates
            .binary_search_by_key(&generation, |c| c.session.generation)
            .ok()?;
        slot.candidates[at].complete = true;
        self.stats.superseded_sessions += slot.prune();
        Some(())
    }

    fn message(&mut self, shard: u16, id: MessageId) -> Option<Arc<MessageRecord>> {
        let found = self.messages.get(&(shard, id)).cloned();
        if found.is_none() {
            self.stats.missing_messages += 1;
        }
        found
    }

    /// Applies one record read from the files of shard `shard`. Records of one shard must come
    /// in file order; shards may interleave in any way.
    pub fn apply(&mut self, shard: u16, record: StoreRecord) {
        use StoreRecord::*;
        let applied = match record {
            SessionStarted {
                client_id,
                generation,
                username,
                protocol,
                expiry_secs,
                at_ms: _,
            } => self.session(shard, &client_id, generation).map(|session| {
                session.started = true;
                session.username = username;
                session.protocol = protocol;
                session.expiry_secs = expiry_secs;
                session.disconnected_at_ms = None;
            }),
            SessionDisconnected {
                client_id,
                generation,
                at_ms,
                expiry_secs,
            } => self.session(shard, &client_id, generation).map(|session| {
                session.disconnected_at_ms = Some(at_ms);
                session.expiry_secs = expiry_secs;
            }),
            SessionEnded {
                client_id,
                generation,
            } => {
                self.max_generation = self.max_generation.max(generation);
                let slot = self.sessions.entry(client_id).or_default();
                if generation > slot.ended && generation >= slot.floor() {
                    slot.ended = generation;
                    let dropped = slot.prune();
                    // The ended generation itself is not a supersession.
                    self.stats.superseded_sessions += dropped.saturating_sub(1);
                    Some(())
                } else {
                    self.stats.stale += 1;
                    None
                }
            }
            WillSet {
                client_id,
                generation,
                will,
            } => self
                .session(shard, &client_id, generation)
                .map(|session| session.will = Some(will)),
            WillCleared {
                client_id,
                generation,
            } => self
                .session(shard, &client_id, generation)
                .map(|session| session.will = None),
            ImageComplete {
                client_id,
                generation,
            } => self.image_complete(&client_id, generation),
            OriginReceived {
                publisher,
                packet_id,
                digest,
                clients,
            } => {
                let entry = self
                    .origins
                    .entry((shard, publisher, packet_id))
                    .or_insert_with(|| (digest, BTreeSet::new()));
                if entry.0 != digest {
                    // The packet id was reused for another message: a new entry.
                    *entry = (digest, BTreeSet::new());
                }
                entry.1.extend(clients);
                Some(())
            }
            OriginCleared {
                publisher,
                packet_id,
            } => self
                .origins
                .remove(&(shard, publisher, packet_id))
                .map(|_| ()),
            Subscribed {
                client_id,
                generation,
                filter,
                options,
                subscription_id,
            } => self.session(shard, &client_id, generation).map(|session| {
                session.subscriptions.insert(
                    filter,
                    RecoveredSubscription {
                        options,
                        subscription_id,
                    },
                );
            }),
            Unsubscribed {
                client_id,
                generation,
                filter,
            } => self.session(shard, &client_id, generation).map(|session| {
                session.subscriptions.remove(&filter);
            }),
            Message(message) => {
                self.messages.insert((shard, message.id), Arc::new(message));
                Some(())
            }
            Enqueued {
                client_id,
                generation,
                message,
                delivery,
            } => {
                let body = self.message(shard, message);
                match (body, self.session(shard, &client_id, generation)) {
                    (Some(message), Some(session)) => {
                        session.queue.push_back(QueuedMessage { message, delivery });
                        Some(())
                    }
                    _ => None,
                }
            }
            InFlight {
                client_id,
                generation,
                message,
                packet_id,
                delivery,
            } => {
                let body = self.message(shard, message);
                match (body, self.session(shard, &client_id, generation)) {
                    (Some(body), Some(session)) => {
                        if let Some(at) = session
                            .queue
                            .iter()
                            .position(|queued| queued.message.id == message)
                        {
                            session.queue.remove(at);
                        }
                        session.inflight.insert(
                            packet_id,
                            InFlightMessage::Published {
                                message: body,
                                delivery,
                                dup: false,
                            },
                        );
                        Some(())
                    }
                    _ => None,
                }
            }
            DupSet {
                client_id,
                generation,
                packet_id,
            } => self.inflight(shard, &client_id, generation, packet_id, |entry| {
                if let InFlightMessage::Published { dup, .. } = entry {
                    *dup = true;
                }
            }),
            // The entry may be absent: a snapshot writes a PUBREL-due exchange this way.
            PubRecReceived {
                client_id,
                generation,
                packet_id,
            } => self.session(shard, &client_id, generation).map(|session| {
                session
                    .inflight
                    .insert(packet_id, InFlightMessage::PubRelDue);
            }),
            Acked {
                client_id,
                generation,
                packet_id,
            } => {
                let session = self.session(shard, &client_id, generation);
                match session.map(|session| session.inflight.remove(&packet_id)) {
                    Some(Some(_)) => Some(()),
                    Some(None) => {
                        self.stats.missing_entries += 1;
                        None
                    }
                    None => None,
                }
            }
            Dequeued {
                client_id,
                generation,
                message,
            } => {
                let session = self.session(shard, &client_id, generation);
                let removed = session.map(|session| {
                    session
                        .queue
                        .iter()
                        .position(|queued| queued.message.id == message)
                        .and_then(|at| session.queue.remove(at))
                        .is_some()
                });
                match removed {
                    Some(true) => Some(()),
                    Some(false) => {
                        self.stats.missing_entries += 1;
                        None
                    }
                    None => None,
                }
            }
            InboundReceived {
                client_id,
                generation,
                packet_id,
            } => self.session(shard, &client_id, generation).map(|session| {
                session.inbound_qos2.insert(packet_id);
            }),
            InboundReleased {
                client_id,
                generation,
                packet_id,
            } => self.session(shard, &client_id, generation).map(|session| {
                session.inbound_qos2.remove(&packet_id);
            }),
            RetainedSet {
                topic,
                version,
                message,
            } => match self.message(shard, message) {
                Some(message) => self.retain(shard, topic, version, Some(message)),
                None => None,
            },
            RetainedCleared { topic, version } => self.retain(shard, topic, version, None),
            Checkpoint { .. } => {
                self.stats.checkpoints += 1;
                Some(())
            }
        };
        if applied.is_some() {
            self.stats.applied += 1;
        }
    }

    fn inflight(
        &mut self,
        shard: u16,
        client_id: &str,
        generation: Generation,
        packet_id: u16,
        change: impl FnOnce(&mut InFlightMessage),
    ) -> Option<()> {
        let session = self.session(shard, client_id, generation)?;
        match session.inflight.get_mut(&packet_id) {
            Some(entry) => {
                change(entry);
                Some(())
            }
            None => {
                self.stats.missing_entries += 1;
                None
            }
        }
    }

    fn retain(
        &mut self,
        shard: u16,
        topic: String,
        version: Generation,
        message: Option<Arc<MessageRecord>>,
    ) -> Option<()> {
        self.max_generation = self.max_generation.max(version);
        let slot = match message {
            Some(message) => RetainedSlot::Set(RecoveredRetained {
                version,
                source_shard: shard,
                message,
            }),
            None => RetainedSlot::Cleared(version),
        };
        match self.retained.entry(topic) {
            Entry::Vacant(vacant) => {
                vacant.insert(slot);
            }
            Entry::Occupied(mut occupied) => {
                let current = match occupied.get() {
                    RetainedSlot::Set(retained) => retained.version,
                    RetainedSlot::Cleared(version) => *version,
                };
                // Equal versions come from one owner's file in order: the later record wins.
                if version < current {
                    self.stats.stale += 1;
                    return None;
                }
                occupied.insert(slot);
            }
        }
        Some(())
    }

    /// Folds in `other`, a replay of other shards' files (each shard's files wholly in one
    /// replayer): so that shards can replay their own files in parallel and the results be
    /// merged. Per client id (and topic) the newest generation (version) wins, an end (a
    /// clear) winning a tie, as in a single replay.
    pub fn merge(&mut self, mut other: Replayer) {
        let stats = other.stats;
        self.stats.applied += stats.applied;
        self.stats.stale += stats.stale;
        self.stats.missing_messages += stats.missing_messages;
        self.stats.missing_entries += stats.missing_entries;
        self.stats.checkpoints += stats.checkpoints;
        self.stats.superseded_sessions += stats.superseded_sessions;
        self.stats.cut_images += stats.cut_images;
        self.max_generation = self.max_generation.max(other.max_generation);
        self.origins.append(&mut other.origins);
        if self.sessions.is_empty() && self.retained.is_empty() && self.messages.is_empty() {
            // Nothing to fold into: take the other's maps as they are.
            self.sessions = std::mem::take(&mut other.sessions);
            self.retained = std::mem::take(&mut other.retained);
            self.messages = std::mem::take(&mut other.messages);
            return;
        }
        self.messages.extend(other.messages);
        self.sessions.reserve(other.sessions.len());
        self.retained.reserve(other.retained.len());
        for (client_id, theirs) in other.sessions {
            let Some(mine) = self.sessions.get_mut(&client_id) else {
                self.sessions.insert(client_id, theirs);
                continue;
            };
            mine.ended = mine.ended.max(theirs.ended);
            for candidate in theirs.candidates {
                let generation = candidate.session.generation;
                match mine
                    .candidates
                    .binary_search_by_key(&generation, |c| c.session.generation)
                {
                    // One generation in two shards' files (a carried copy): a complete one wins.
                    Ok(at) => {
                        if candidate.complete && !mine.candidates[at].complete {
                            mine.candidates[at] = candidate;
                        }
                    }
                    Err(at) => mine.candidates.insert(at, candidate),
                }
            }
            self.stats.superseded_sessions += mine.prune();
        }
        fn retained_rank(slot: &RetainedSlot) -> (Generation, bool) {
            match slot {
                RetainedSlot::Set(retained) => (retained.version, false),
                RetainedSlot::Cleared(version) => (*version, true),
            }
        }
        for (topic, slot) in other.retained {
            match self.retained.get(&topic) {
                Some(mine) if retained_rank(mine) >= retained_rank(&slot) => {}
                _ => {
                    self.retained.insert(topic, slot);
                }
            }
        }
    }

    /// Forgets the message bodies by id: records applied after this no longer find them
    /// (bodies already referred to stay). Before merging replays that are complete, so that
    /// the merge does not index bodies nothing will look up.
    pub fn forget_message_ids(&mut self) {
        self.messages = HashMap::default();
    }

    /// The state replayed so far.
    pub fn finish(self) -> RecoveredState {
        let mut stats = self.stats;
        drop(self.messages);
        let sessions = sorted_map(
            self.sessions
                .into_iter()
                .filter_map(|(client_id, slot)| Some((client_id, slot.chosen(&mut stats)?))),
        );
        stats.sessions_without_start = sessions.values().filter(|s| !s.started).count() as u64;
        let origins = reconcile_origins(self.origins, &sessions);
        RecoveredState {
            sessions,
            retained: self
                .retained
                .into_iter()
                .filter_map(|(topic, slot)| match slot {
                    RetainedSlot::Set(retained) => Some((topic, retained)),
                    RetainedSlot::Cleared(_) => None,
                })
                .collect(),
            origins,
            max_generation: self.max_generation,
            stats,
        }
    }
}

/// The origin entries still needed, one per publish: those whose publisher's session lives
/// on without the packet id recorded (once recorded there, the resend is recognised by the
/// publisher's shard; with the session gone, no resend comes), for subscribers that live on.
fn reconcile_origins(
    entries: BTreeMap<(u16, String, u16), (u32, BTreeSet<String>)>,
    sessions: &BTreeMap<String, RecoveredSession>,
) -> Vec<RecoveredOrigin> {
    let mut merged: BTreeMap<(String, u16, u32), BTreeSet<String>> = BTreeMap::new();
    for ((_, publisher, packet_id), (digest, clients)) in entries {
        let pending = sessions
            .get(&publisher)
            .is_some_and(|session| !session.inbound_qos2.contains(&packet_id));
        if pending {
            merged
                .entry((publisher, packet_id, digest))
                .or_default()
                .extend(clients.into_iter().filter(|c| sessions.contains_key(c)));
        }
    }
    merged
        .into_iter()
        .filter(|(_, clients)| !clients.is_empty())
        .map(
            |((publisher, packet_id, digest), clients)| RecoveredOrigin {
                publisher,
                packet_id,
                digest,
                clients,
            },
        )
        .collect()
}

/// A map of unique keys, sorted without the stable sort `BTreeMap::from_iter` makes (which
/// then finds them in order, in one pass).
fn sorted_map<V>(entries: impl Iterator<Item = (String, V)>) -> BTreeMap<String, V> {
    let mut entries: Vec<(String, V)> = entries.collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    entries.into_iter().collect()
}

/// Replays `records` (each with the shard whose files held it) into a state.
pub fn replay(records: impl IntoIterator<Item = (u16, StoreRecord)>) -> RecoveredState {
    let mut replayer = Replayer::new();
    for (shard, record) in records {
        replayer.apply(shard, record);
    }
    replayer.finish()
}

/// Assigns every session to a shard of `shard_count` with `home` (the broker's
/// [`crate::placement::home_shard`]): the result has one list per shard, sessions in client-id
/// order. The shards that install them give each a new generation of the new boot, so the
/// files they then write supersede the old ones whatever shard count wrote those.
pub fn rehome(
    sessions: BTreeMap<String, RecoveredSession>,
    shard_count: usize,
    home: impl Fn(&str, usize) -> usize,
) -> Vec<Vec<RecoveredSession>> {
    let shard_count = shard_count.max(1);
    let mut shards: Vec<Vec<RecoveredSession>> = (0..shard_count).map(|_| Vec::new()).collect();
    for (client_id, session) in sessions {
        // A home function out of range is a bug in the caller; clamp rather than panic.
        let shard = home(&client_id, shard_count).min(shard_count - 1);
        shards[shard].push(session);
    }
    shards
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{QoS, RetainHandling};
    use bytes::Bytes;

    fn message(id: MessageId, topic: &str) -> StoreRecord {
        StoreRecord::Message(MessageRecord {
            id,
            topic: topic.into(),
            publisher: "p".into(),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: Bytes::new(),
            payload: Bytes::from(format!("m{id}")),
            expires_at_ms: None,
        })
    }

    fn started(client: &str, generation: Generation) -> StoreRecord {
        StoreRecord::SessionStarted {
            client_id: client.into(),
            generation,
            username: Some("u".into()),
            protocol: 5,
            expiry_secs: Some(60),
            at_ms: 1,
        }
    }

    fn delivery(qos: QoS) -> Delivery {
        Delivery {
            qos,
            retain: false,
            subscription_ids: vec![],
        }
    }

    fn enqueued(client: &str, generation: Generation, message: MessageId) -> StoreRecord {
        StoreRecord::Enqueued {
            client_id: client.into(),
            generation,
            message,
            delivery: delivery(QoS::AtLeastOnce),
        }
    }

    fn subscribed(client: &str, generation: Generation, filter: &str) -> StoreRecord {
        StoreRecord::Subscribed {
            client_id: client.into(),
            generation,
            filter: filter.into(),
            options: SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::SendOnSubscribe,
            },
            subscription_id: 3,
        }
    }

    #[test]
    fn a_session_is_rebuilt_with_its_queue_inflight_and_inbound_ids() {
        let c = "c";
        let state = replay(
            [
                started(c, 5),
                subscribed(c, 5, "a/#"),
                subscribed(c, 5, "b"),
                StoreRecord::Unsubscribed {
                    client_id: c.into(),
                    generation: 5,
                    filter: "b".into(),
                },
                message(1, "a/1"),
                message(2, "a/2"),
                message(3, "a/3"),
                enqueued(c, 5, 1),
                enqueued(c, 5, 2),
                enqueued(c, 5, 3),
                StoreRecord::InFlight {
                    client_id: c.into(),
                    generation: 5,
                    message: 1,
                    packet_id: 10,
                    delivery: delivery(QoS::ExactlyOnce),
                },
                StoreRecord::InFlight {
                    client_id: c.into(),
                    generation: 5,
                    message: 2,
                    packet_id: 11,
                    delivery: delivery(QoS::AtLeastOnce),
                },
                StoreRecord::DupSet {
                    client_id: c.into(),
                    generation: 5,
                    packet_id: 11,
                },
                StoreRecord::PubRecReceived {
                    client_id: c.into(),
                    generation: 5,
                    packet_id: 10,
                },
                StoreRecord::InboundReceived {
                    client_id: c.into(),
                    generation: 5,
                    packet_id: 7,
                },
                StoreRecord::InboundReceived {
                    client_id: c.into(),
                    generation: 5,
                    packet_id: 8,
                },
                StoreRecord::InboundReleased {
                    client_id: c.into(),
                    generation: 5,
                    packet_id: 7,
                },
                StoreRecord::SessionDisconnected {
                    client_id: c.into(),
                    generation: 5,
                    at_ms: 99,
                    expiry_secs: Some(10),
                },
            ]
            .into_iter()
            .map(|r| (0, r)),
        );
        let session = &state.sessions[c];
        assert!(session.started);
        assert_eq!(session.username.as_deref(), Some("u"));
        assert_eq!(
            session.subscriptions.keys().collect::<Vec<_>>(),
            vec!["a/#"]
        );
        assert_eq!(session.queue.len(), 1);
        assert_eq!(session.queue[0].message.id, 3);
        assert_eq!(session.inflight[&10], InFlightMessage::PubRelDue);
        assert!(matches!(
            &session.inflight[&11],
            InFlightMessage::Published { dup: true, message, .. } if message.id == 2
        ));
        assert_eq!(
            session.inbound_qos2.iter().copied().collect::<Vec<_>>(),
            vec![8]
        );
        assert_eq!(session.disconnected_at_ms, Some(99));
        assert_eq!(session.expiry_secs, Some(10));
        assert_eq!(state.stats.stale, 0);
        assert_eq!(state.stats.missing_messages, 0);
        assert_eq!(state.pending_messages(), 3);
    }

    #[test]
    fn a_pubrel_due_exchange_needs_no_message() {
        let state = replay([
            (0, started("c", 1)),
            (
                0,
                StoreRecord::PubRecReceived {
                    client_id: "c".into(),
                    generation: 1,
                    packet_id: 4,
                },
            ),
            (
                0,
                StoreRecord::DupSet {
                    client_id: "c".into(),
                    generation: 1,
                    packet_id: 4,
                },
            ),
        ]);
        assert_eq!(state.sessions["c"].inflight[&4], InFlightMessage::PubRelDue);
        assert_eq!(state.stats.missing_entries, 0);
        assert_eq!(state.stats.missing_messages, 0);
    }

    #[test]
    fn acks_and_dequeues_remove_entries() {
        let c = "c";
        let state = replay(
            [
                started(c, 1),
                message(1, "t"),
                message(2, "t"),
                enqueued(c, 1, 1),
                enqueued(c, 1, 2),
                StoreRecord::Dequeued {
                    client_id: c.into(),
                    generation: 1,
                    message: 2,
                },
                StoreRecord::InFlight {
                    client_id: c.into(),
                    generation: 1,
                    message: 1,
                    packet_id: 1,
                    delivery: delivery(QoS::AtLeastOnce),
                },
                StoreRecord::Acked {
                    client_id: c.into(),
                    generation: 1,
                    packet_id: 1,
                },
                StoreRecord::Acked {
                    client_id: c.into(),
                    generation: 1,
                    packet_id: 1,
                },
            ]
            .into_iter()
            .map(|r| (0, r)),
        );
        assert_eq!(state.pending_messages(), 0);
        assert_eq!(state.stats.missing_entries, 1);
    }

    fn complete(client: &str, generation: Generation) -> StoreRecord {
        StoreRecord::ImageComplete {
            client_id: client.into(),
            generation,
        }
    }

    fn tagged(shard: u16, records: &[StoreRecord]) -> Vec<(u16, StoreRecord)> {
        records.iter().cloned().map(|r| (shard, r)).collect()
    }

    /// `a` then `b`, `b` then `a`, and the two interleaved record by record (either first).
    fn orders(
        a: Vec<(u16, StoreRecord)>,
        b: Vec<(u16, StoreRecord)>,
    ) -> Vec<Vec<(u16, StoreRecord)>> {
        let interleaved = |first: &[(u16, StoreRecord)], second: &[(u16, StoreRecord)]| {
            let mut mixed = Vec::new();
            for i in 0..first.len().max(second.len()) {
                mixed.extend(first.get(i).cloned());
                mixed.extend(second.get(i).cloned());
            }
            mixed
        };
        vec![
            [a.clone(), b.clone()].concat(),
            [b.clone(), a.clone()].concat(),
            interleaved(&a, &b),
            interleaved(&b, &a),
        ]
    }

    /// A session moved from shard 0 (generation 1) to shard 1 (generation 2): whatever order
    /// the shards' records come in, only generation 2's state survives; with image ends (as
    /// the broker writes them) and without (files of the first format).
    #[test]
    fn the_newest_generation_wins_in_any_shard_order() {
        let c = "mover";
        for with_ends in [true, false] {
            let mut old = vec![started(c, 1), subscribed(c, 1, "old")];
            let mut new = vec![started(c, 2), subscribed(c, 2, "new")];
            if with_ends {
                old.push(complete(c, 1));
                new.push(complete(c, 2));
            }
            old.extend([
                message(1, "x"),
                enqueued(c, 1, 1),
                subscribed(c, 1, "old-later"),
            ]);
            new.extend([message(1, "y"), enqueued(c, 2, 1)]);
            for order in orders(tagged(0, &old), tagged(1, &new)) {
                let state = replay(order);
                let session = &state.sessions[c];
                assert_eq!(session.generation, 2);
                assert_eq!(session.source_shard, 1);
                assert_eq!(
                    session.subscriptions.keys().collect::<Vec<_>>(),
                    vec!["new"]
                );
                assert_eq!(session.queue.len(), 1);
                assert_eq!(session.queue[0].message.topic, "y");
                assert_eq!(state.max_generation, 2);
                assert!(
                    state.stats.superseded_sessions + state.stats.stale >= u64::from(with_ends),
                    "the old generation is either replayed then superseded, or read late and stale"
                );
            }
        }
    }

    /// A torn write cut generation 2's image short (no `ImageComplete`): generation 1, whose
    /// image is whole, is what was acknowledged, and recovery keeps it, in any shard order.
    #[test]
    fn a_cut_image_gives_way_to_the_newest_complete_generation() {
        let c = "torn";
        let old = vec![
            started(c, 1),
            subscribed(c, 1, "a"),
            message(1, "x"),
            enqueued(c, 1, 1),
            complete(c, 1),
            subscribed(c, 1, "b"),
        ];
        let cut = vec![started(c, 2), subscribed(c, 2, "a")];
        for order in orders(tagged(0, &old), tagged(1, &cut)) {
            let state = replay(order);
            let session = &state.sessions[c];
            assert_eq!(session.generation, 1);
            assert_eq!(
                session.subscriptions.keys().collect::<Vec<_>>(),
                vec!["a", "b"]
            );
            assert_eq!(session.queue.len(), 1);
            assert_eq!(state.max_generation, 2, "the next epoch still passes it");
            assert_eq!(state.stats.cut_images, 1);
        }
        // The same in one shard's file (a takeover on the same shard).
        let state = replay(tagged(0, &[old.clone(), cut.clone()].concat()));
        assert_eq!(state.sessions[c].generation, 1);
        // Once generation 2's image is whole, it wins.
        let whole = [cut, vec![complete(c, 2)]].concat();
        for order in orders(tagged(0, &old), tagged(1, &whole)) {
            let state = replay(order);
            assert_eq!(state.sessions[c].generation, 2);
            assert_eq!(state.sessions[c].queue.len(), 0);
        }
        // Replays merged per shard agree.
        let mut merged = Replayer::new();
        for (shard, records) in [(1u16, &vec![started(c, 2)]), (0, &old)] {
            let mut one = Replayer::new();
            for record in records.iter().cloned() {
                one.apply(shard, record);
            }
            merged.merge(one);
        }
        assert_eq!(merged.finish().sessions[c].generation, 1);
    }

    /// Origin entries survive recovery only while a resend can still come and reach a
    /// subscriber that has the message: the publisher's session lives on without the packet
    /// id recorded, and the subscriber's session lives on. Entries of two shards merge.
    #[test]
    fn origin_entries_are_kept_while_a_resend_can_come() {
        let received = |publisher: &str, packet_id, clients: &[&str]| StoreRecord::OriginReceived {
            publisher: publisher.into(),
            packet_id,
            digest: 7,
            clients: clients.iter().map(|c| c.to_string()).collect(),
        };
        let inbound = |client: &str, packet_id| StoreRecord::InboundReceived {
            client_id: client.into(),
            generation: 1,
            packet_id,
        };
        let state = replay([
            (0, started("pub", 1)),
            (0, started("sub-a", 1)),
            (1, started("sub-b", 2)),
            (0, received("pub", 1, &["sub-a"])),
            (1, received("pub", 1, &["sub-b", "gone"])),
            // Recorded by the publisher's shard: the resend is recognised there.
            (0, received("pub", 2, &["sub-a"])),
            (0, inbound("pub", 2)),
            // Cleared.
            (1, received("pub", 3, &["sub-b"])),
            (
                1,
                StoreRecord::OriginCleared {
                    publisher: "pub".into(),
                    packet_id: 3,
                },
            ),
            // The publisher's session is gone: no resend comes.
            (0, received("nobody", 4, &["sub-a"])),
        ]);
        assert_eq!(
            state.origins,
            vec![RecoveredOrigin {
                publisher: "pub".into(),
                packet_id: 1,
                digest: 7,
                clients: ["sub-a".to_string(), "sub-b".to_string()].into(),
            }]
        );
    }

    #[test]
    fn an_ended_session_stays_ended_unless_a_newer_generation_follows() {
        let c = "c";
        let ended = StoreRecord::SessionEnded {
            client_id: c.into(),
            generation: 3,
        };
        let state = replay([
            (1, ended.clone()),
            (0, started(c, 2)),
            (0, subscribed(c, 2, "a")),
        ]);
        assert!(state.sessions.is_empty());
        assert_eq!(state.stats.stale, 2);
        let state = replay([(1, ended), (0, started(c, 4))]);
        assert_eq!(state.sessions[c].generation, 4);
    }

    #[test]
    fn records_without_their_start_or_body_are_counted() {
        let state = replay([(0, subscribed("c", 1, "a")), (0, enqueued("c", 1, 42))]);
        assert_eq!(state.sessions["c"].subscriptions.len(), 1);
        assert!(!state.sessions["c"].started);
        assert_eq!(state.stats.sessions_without_start, 1);
        assert_eq!(state.stats.missing_messages, 1);
    }

    #[test]
    fn message_ids_are_scoped_by_shard() {
        // Shard 1's message 1 is not shard 0's message 1.
        let state = replay([
            (0, message(1, "zero")),
            (1, message(1, "one")),
            (0, started("c", 1)),
            (0, enqueued("c", 1, 1)),
        ]);
        assert_eq!(state.sessions["c"].queue[0].message.topic, "zero");
    }

    #[test]
    fn retained_keeps_the_newest_version_and_clears() {
        let set = |topic: &str, version, message| StoreRecord::RetainedSet {
            topic: topic.into(),
            version,
            message,
        };
        let state = replay([
            (0, message(1, "a")),
            (0, message(2, "a")),
            (1, message(1, "b")),
            (0, set("a", 5, 2)),
            (0, set("a", 4, 1)),
            (1, set("b", 1, 1)),
            (
                1,
                StoreRecord::RetainedCleared {
                    topic: "b".into(),
                    version: 2,
                },
            ),
            (0, set("b", 1, 1)),
        ]);
        assert_eq!(state.retained.len(), 1);
        assert_eq!(state.retained_at("a").unwrap().version, 5);
        assert_eq!(
            state.retained_at("a").unwrap().message.payload,
            Bytes::from("m2")
        );
        assert_eq!(state.stats.stale, 2);
    }

    #[test]
    fn expired_messages_are_dropped_on_request() {
        let mut expiring = message(1, "a");
        if let StoreRecord::Message(m) = &mut expiring {
            m.expires_at_ms = Some(1000);
        }
        let mut state = replay([
            (0, expiring),
            (
                0,
                StoreRecord::RetainedSet {
                    topic: "a".into(),
                    version: 1,
                    message: 1,
                },
            ),
            (0, started("c", 1)),
            (0, enqueued("c", 1, 1)),
        ]);
        state.drop_expired(999);
        assert_eq!(state.retained.len(), 1);
        state.drop_expired(1000);
        assert!(state.retained.is_empty());
        assert!(state.sessions["c"].queue.is_empty());
    }

    #[test]
    fn rehome_uses_the_broker_placement() {
        let records: Vec<_> = (0..50)
            .map(|i| (0u16, started(&format!("client-{i}"), 1)))
            .collect();
        let state = replay(records);
        for shards in [1, 2, 3, 7] {
            let homed = rehome(state.sessions.clone(), shards, crate::placement::home_shard);
            assert_eq!(homed.len(), shards);
            assert_eq!(homed.iter().map(Vec::len).sum::<usize>(), 50);
            for (shard, sessions) in homed.iter().enumerate() {
                for session in sessions {
                    assert_eq!(
                        crate::placement::home_shard(&session.client_id, shards),
                        shard
                    );
                }
            }
        }
        // A home function out of range does not panic.
        let homed = rehome(state.sessions, 2, |_, _| 9);
        assert_eq!(homed[1].len(), 50);
    }

    #[test]
    fn next_epoch_is_after_every_generation() {
        use crate::store::record::generation;
        let state = replay([(0, started("c", generation(4, 9)))]);
        assert_eq!(state.next_epoch(), 5);
        assert_eq!(RecoveredState::default().next_epoch(), 1);
    }
}
