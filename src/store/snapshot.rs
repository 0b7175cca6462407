//! The records of a snapshot: a shard's whole durable state written out again, as compaction
//! and the start-up re-homing do. Replaying them gives back the same state (the property test
//! in `prop_tests.rs` checks it), so whatever recovery can hold, a snapshot can express.
//!
//! Message bodies are written first, once each, under fresh ids from the caller's counter
//! (bodies recovered from different shards' files may share an id); then every session
//! (under its `generation`: set a new one before, when the session changes owner); then the
//! retained messages; then the checkpoint.

use std::collections::HashMap;
use std::sync::Arc;

use super::record::{MessageId, MessageRecord, StoreRecord};
use super::recover::{InFlightMessage, RecoveredRetained, RecoveredSession};

/// Collects the records of one snapshot.
#[derive(Debug)]
pub struct SnapshotWriter {
    bodies: HashMap<*const MessageRecord, MessageId>,
    next_id: MessageId,
    records: Vec<StoreRecord>,
}

impl SnapshotWriter {
    /// A snapshot whose message bodies get ids from `first_id` on.
    pub fn new(first_id: MessageId) -> SnapshotWriter {
        SnapshotWriter {
            bodies: HashMap::new(),
            next_id: first_id,
            records: Vec::new(),
        }
    }

    /// The id of `message` in this snapshot, writing its body the first time.
    fn body(&mut self, message: &Arc<MessageRecord>) -> MessageId {
        if let Some(id) = self.bodies.get(&Arc::as_ptr(message)) {
            return *id;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.bodies.insert(Arc::as_ptr(message), id);
        self.records.push(StoreRecord::Message(MessageRecord {
            id,
            ..MessageRecord::clone(message)
        }));
        id
    }

    /// Adds `session`, under its generation.
    pub fn session(&mut self, session: &RecoveredSession) {
        let client_id = || session.client_id.clone();
        let generation = session.generation;
        // Bodies before the records that refer to them.
        let queued: Vec<_> = session
            .queue
            .iter()
            .map(|queued| (self.body(&queued.message), queued.delivery.clone()))
            .collect();
        let inflight: Vec<_> = session
            .inflight
            .iter()
            .map(|(packet_id, entry)| match entry {
                InFlightMessage::Published {
                    message,
                    delivery,
                    dup,
                } => (
                    *packet_id,
                    Some((self.body(message), delivery.clone(), *dup)),
                ),
                InFlightMessage::PubRelDue => (*packet_id, None),
            })
            .collect();
        self.records.push(StoreRecord::SessionStarted {
            client_id: client_id(),
            generation,
            username: session.username.clone(),
            protocol: session.protocol,
            expiry_secs: session.expiry_secs,
            at_ms: 0,
        });
        if let Some(at_ms) = session.disconnected_at_ms {
            self.records.push(StoreRecord::SessionDisconnected {
                client_id: client_id(),
                generation,
                at_ms,
                expiry_secs: session.expiry_secs,
            });
        }
        if let Some(will) = &session.will {
            self.records.push(StoreRecord::WillSet {
                client_id: client_id(),
                generation,
                will: will.clone(),
            });
        }
        for (filter, subscription) in &session.subscriptions {
            self.records.push(StoreRecord::Subscribed {
                client_id: client_id(),
                generation,
                filter: filter.clone(),
                options: subscription.options,
                subscription_id: subscription.subscription_id,
            });
        }
        for (packet_id, entry) in inflight {
            match entry {
                Some((message, delivery, dup)) => {
                    self.records.push(StoreRecord::InFlight {
                        client_id: client_id(),
                        generation,
                        message,
                        packet_id,
                        delivery,
                    });
                    if dup {
                        self.records.push(StoreRecord::DupSet {
                            client_id: client_id(),
                            generation,
                            packet_id,
                        });
                    }
                }
                None => self.records.push(StoreRecord::PubRecReceived {
                    client_id: client_id(),
                    generation,
                    packet_id,
                }),
            }
        }
        for (message, delivery) in queued {
            self.records.push(StoreRecord::Enqueued {
                client_id: client_id(),
                generation,
                message,
                delivery,
            });
        }
        for packet_id in &session.inbound_qos2 {
            self.records.push(StoreRecord::InboundReceived {
                client_id: client_id(),
                generation,
                packet_id: *packet_id,
            });
        }
        self.records.push(StoreRecord::ImageComplete {
            client_id: client_id(),
            generation,
        });
    }

    /// Adds the retained message of `topic`.
    pub fn retained(&mut self, topic: &str, retained: &RecoveredRetained) {
        let message = self.body(&retained.message);
        self.records.push(StoreRecord::RetainedSet {
            topic: topic.to_owned(),
            version: retained.version,
            message,
        });
    }

    /// The next unused message id (the shard's counter continues from it).
    pub fn next_id(&self) -> MessageId {
        self.next_id
    }

    /// The records, closed by the checkpoint for log segment `through_segment`.
    pub fn finish(mut self, through_segment: u64) -> Vec<StoreRecord> {
        let records = self.records.len() as u64;
        self.records.push(StoreRecord::Checkpoint {
            through_segment,
            records,
        });
        self.records
    }
}
