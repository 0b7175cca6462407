//! Start-up recovery and snapshots: installing what the data directory held, and writing the
//! shard's whole durable state into its journal (the image a new segment starts with).

use super::*;
use crate::broker::hooks::Journal;
use crate::codec::wire::Reader;
use crate::codec::PropertyContext;
use crate::session::{Inflight, InflightState, Queued};
use crate::store::record::{MessageRecord, WillRecord};
use crate::store::recover::{InFlightMessage, RecoveredRetained, RecoveredSession};

/// A recovered will waits at least this long, so that every shard has installed its
/// sessions before it is published.
const FIRST_WILL_DELAY_MS: u64 = 1000;

/// Recovered retained messages go to the peers this many per mesh message.
const RETAINED_CHUNK: usize = 1024;

impl Shard {
    /// Installs the sessions recovered for this shard (their home shard for the current shard
    /// count) and the retained messages of the topics this shard owns. Called once, before
    /// the shard serves any connection; each session gets a new generation of this boot.
    /// `unix_ms` is the wall clock at `now` (stored deadlines are wall-clock times).
    pub fn install_recovered(
        &mut self,
        sessions: Vec<RecoveredSession>,
        retained: Vec<(String, RecoveredRetained)>,
        now: Instant,
        unix_ms: u64,
    ) {
        self.set_now(now);
        let mut installed = 0usize;
        let mut converter = Converter::new(now, unix_ms);
        // `journal_image` writes them all next.
        self.installing_recovered = true;
        for recovered in sessions {
            if self.install_one(recovered, &mut converter).is_some() {
                installed += 1;
            }
        }
        self.installing_recovered = false;
        let mut kept = 0usize;
        let mut chunk = Vec::with_capacity(RETAINED_CHUNK);
        for (topic, retained) in retained {
            let message = converter.message(retained.message);
            if message.is_expired(now) {
                continue;
            }
            let topic = if message.topic == *topic {
                message.topic.clone()
            } else {
                MqttStr::from(topic)
            };
            self.apply_retained(&topic, Some(Arc::clone(&message)));
            chunk.push((topic, message));
            if chunk.len() == RETAINED_CHUNK {
                let messages: Arc<[_]> = std::mem::take(&mut chunk).into();
                self.broadcast(|| ShardMsg::RetainRecovered {
                    messages: Arc::clone(&messages),
                });
            }
            kept += 1;
        }
        if !chunk.is_empty() {
            let messages: Arc<[_]> = chunk.into();
            self.broadcast(|| ShardMsg::RetainRecovered {
                messages: Arc::clone(&messages),
            });
        }
        tracing::debug!(
            shard = self.id,
            sessions = installed,
            retained = kept,
            "recovered state installed"
        );
    }

    fn install_one(
        &mut self,
        recovered: RecoveredSession,
        converter: &mut Converter,
    ) -> Option<SessionId> {
        let unix_ms = converter.unix_ms;
        let RecoveredSession {
            client_id,
            username,
            protocol,
            expiry_secs,
            disconnected_at_ms,
            will,
            subscriptions,
            queue,
            inflight,
            inbound_qos2,
            ..
        } = recovered;
        let protocol = match protocol {
            3 => ProtocolVersion::V3_1,
            4 => ProtocolVersion::V3_1_1,
            _ => ProtocolVersion::V5,
        };
        let client_id = MqttStr::from(client_id);
        let mut session = Session::new(client_id.clone(), protocol, false, self.limits.clone());
        session.username = username.map(String::into_boxed_str);
        // A session whose client had disconnected has been counting down since then, the
        // time the broker was down included.
        session.expiry = match (expiry_secs, disconnected_at_ms) {
            (Some(expiry), Some(at)) => {
                let offline_secs = unix_ms.saturating_sub(at) / 1000;
                Some(expiry.saturating_sub(u32::try_from(offline_secs).unwrap_or(u32::MAX)))
            }
            (expiry, _) => expiry,
        };
        for (filter, subscription) in subscriptions {
            session.subscriptions.insert(
                MqttStr::from(filter),
                (subscription.options, subscription.subscription_id),
            );
        }
        // A message released by PUBREC needs no body: a placeholder stands in for it.
        let released = Arc::new(Message {
            topic: MqttStr::default(),
            payload: Bytes::new(),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: Default::default(),
            publisher: MqttStr::default(),
            expires_at: None,
            received_at: None,
            origin_packet_id: 0,
        });
        for (packet_id, inflight) in inflight {
            let entry = match inflight {
                InFlightMessage::Published {
                    message, delivery, ..
                } => Inflight {
                    packet_id,
                    message: converter.message(message),
                    qos: delivery.qos,
                    retain: delivery.retain,
                    subscription_ids: delivery.subscription_ids,
                    group: None,
                    state: if delivery.qos == QoS::AtLeastOnce {
                        InflightState::AwaitPubAck
                    } else {
                        InflightState::AwaitPubRec
                    },
                    store_id: 0,
                },
                InFlightMessage::PubRelDue => Inflight {
                    packet_id,
                    message: Arc::clone(&released),
                    qos: QoS::ExactlyOnce,
                    retain: false,
                    subscription_ids: Vec::new(),
                    group: None,
                    state: InflightState::AwaitPubComp,
                    store_id: 0,
                },
            };
            session.restore_inflight(entry);
        }
        for queued in queue {
            session.restore_queued(Queued {
                message: converter.message(queued.message),
                qos: queued.delivery.qos,
                retain: queued.delivery.retain,
                subscription_ids: queued.delivery.subscription_ids,
                group: None,
                store_id: 0,
            });
        }
        for packet_id in inbound_qos2 {
            session.restore_incoming_qos2(packet_id);
        }
        let username = session.username.as_deref().map(MqttStr::from);
        let token = self.new_token();
        let slot = self.install_session(session, token)?;
        // Recovery runs on the client id's home shard: the registry entry is local.
        let owner = Owner {
            shard: self.id as u16,
            token,
        };
        self.registry
            .insert(client_id.clone(), Registration::new(owner, username, true));
        let now_ms = self.clock_ms();
        let will_record = will;
        let will = will_record.as_ref().map(will_from);
        let Some(entry) = self.sessions.get_mut(slot) else {
            return Some(slot);
        };
        entry.since_ms = now_ms;
        if let (Some(will), Some(record)) = (will, will_record.as_ref()) {
            // Connected at the crash: the connection ended abnormally now, the will delay
            // counts from here. Disconnected with a delayed will: what is left of the delay.
            let delay_ms = 1000 * u64::from(record.delay_secs);
            let left_ms = match disconnected_at_ms {
                None => delay_ms,
                Some(at) => (at + delay_ms).saturating_sub(unix_ms),
            };
            entry.set_pending_will(Box::new(will));
            self.wheel.push(
                Self::bucket(now_ms + left_ms.max(FIRST_WILL_DELAY_MS)),
                WheelEntry::Will {
                    session: slot,
                    token,
                },
            );
        }
        if let Some(expiry) = entry.session.expiry {
            let deadline = Self::bucket(now_ms + 1000 * u64::from(expiry));
            self.wheel.push(
                deadline,
                WheelEntry::Session {
                    session: slot,
                    token,
                },
            );
        }
        Some(slot)
    }

    /// Writes the shard's whole durable state (every persistent session it owns, every
    /// retained message of the topics it owns) between `begin_image` and `end_image`.
    pub fn journal_image(&mut self, now: Instant) {
        self.set_now(now);
        if !self.hooks.journal.enabled() {
            return;
        }
        self.hooks.journal.begin_image();
        for slot in self.sessions.handles() {
            let live = self
                .sessions
                .get(slot)
                .is_some_and(|e| !e.session.clean && e.moved_to().is_none());
            if !live {
                continue;
            }
            self.journal_session_image(slot);
            let Some(entry) = self.sessions.get(slot) else {
                continue;
            };
            if entry.conn.is_none() {
                let (client_id, generation) = (&*entry.session.client_id, entry.generation);
                self.hooks
                    .journal
                    .append(&JournalRecord::SessionDisconnected {
                        client_id,
                        generation,
                        expiry: entry.session.expiry,
                    });
            }
        }
        self.journal_origins();
        // Every retained message (`#` matches all but `$` topics, which are the broker's).
        let mut owned: Vec<Arc<Message>> = Vec::new();
        self.retained
            .for_each_match("#", |message| owned.push(Arc::clone(message)));
        owned.retain(|message| self.topic_owner(&message.topic) == self.id);
        for message in owned {
            self.journal_retained(&message.topic, Some(&message));
        }
        self.hooks.journal.end_image();
    }

    /// Tells every peer that this shard's recovered sessions are installed (their interest was
    /// broadcast before: the mesh is ordered).
    pub fn announce_recovered(&mut self) {
        self.broadcast(|| ShardMsg::Recovered);
    }

    /// Whether every peer announced its recovery: this shard knows every recovered
    /// subscription, so a publish it accepts now reaches them all. The runtime starts
    /// accepting clients after this.
    pub fn peers_recovered(&self) -> bool {
        self.peers_recovered + 1 >= self.shards
    }

    /// QoS 2 origin entries held (see `origins.rs`): none once every publisher's exchanges
    /// completed.
    pub fn origin_entries(&self) -> Vec<String> {
        self.origins
            .iter()
            .map(|((publisher, packet_id), origin)| {
                format!(
                    "{publisher}/{packet_id} {:?} forwarded {:?}",
                    origin.clients, origin.forwarded
                )
            })
            .collect()
    }

    /// The journal hook, for the runtime that writes its batches.
    pub fn journal_mut(&mut self) -> &mut dyn Journal {
        &mut *self.hooks.journal
    }
}

/// Turns stored messages into messages as the broker routes them (deadlines go from wall
/// clock to `Instant`), without copying what it can move: a body only one entry refers to is
/// taken apart, its text moved; a body several entries share (a message queued for several
/// sessions) becomes one message they share, as it was before the restart. The text of
/// consecutive messages with the same topic or publisher (a session's queue, often) is shared.
struct Converter {
    now: Instant,
    unix_ms: u64,
    /// Bodies several entries refer to, by address (the `Arc` kept keeps the address).
    shared: HashMap<*const MessageRecord, (Arc<MessageRecord>, Arc<Message>)>,
    topic: MqttStr,
    publisher: MqttStr,
}

impl Converter {
    fn new(now: Instant, unix_ms: u64) -> Converter {
        Converter {
            now,
            unix_ms,
            shared: HashMap::new(),
            topic: MqttStr::default(),
            publisher: MqttStr::default(),
        }
    }

    fn message(&mut self, record: Arc<MessageRecord>) -> Arc<Message> {
        if Arc::strong_count(&record) > 1 {
            let key = Arc::as_ptr(&record);
            if let Some((_, message)) = self.shared.get(&key) {
                return Arc::clone(message);
            }
            let message = Arc::new(self.convert(MessageRecord::clone(&record)));
            self.shared.insert(key, (record, Arc::clone(&message)));
            return message;
        }
        match Arc::try_unwrap(record) {
            Ok(record) => Arc::new(self.convert(record)),
            Err(record) => Arc::new(self.convert(MessageRecord::clone(&record))),
        }
    }

    fn convert(&mut self, record: MessageRecord) -> Message {
        Message {
            topic: same_or_new(&mut self.topic, record.topic),
            payload: record.payload,
            qos: record.qos,
            retain: record.retain,
            properties: properties_from(&record.properties, PropertyContext::Publish),
            publisher: same_or_new(&mut self.publisher, record.publisher),
            expires_at: record
                .expires_at_ms
                .map(|at| self.now + Duration::from_millis(at.saturating_sub(self.unix_ms))),
            received_at: None,
            origin_packet_id: 0,
        }
    }
}

/// `last` when it holds `text`, else `text` (which becomes `last`).
fn same_or_new(last: &mut MqttStr, text: String) -> MqttStr {
    if *last.as_str() != *text {
        *last = MqttStr::from(text);
    }
    last.clone()
}

fn will_from(record: &WillRecord) -> LastWill {
    LastWill {
        topic: MqttStr::from(record.topic.as_str()),
        payload: record.payload.clone(),
        qos: record.qos,
        retain: record.retain,
        properties: properties_from(&record.properties, PropertyContext::Will),
    }
}

/// Properties stored as their wire block (length prefix included); empty bytes: none.
fn properties_from(bytes: &Bytes, context: PropertyContext) -> Properties {
    if bytes.is_empty() {
        return Properties::default();
    }
    let mut reader = Reader::new(bytes.clone());
    Properties::decode(&mut reader, context).unwrap_or_else(|error| {
        tracing::warn!(%error, "stored message properties do not decode: dropped");
        Properties::default()
    })
}
