//! Retained messages: the owner-shard serialised store and acknowledgements held until the owner applied an update.

use super::*;

/// A PUBACK/PUBREC held until the topic's owner shard has applied a retained update.
#[derive(Debug)]
pub(super) struct HeldAck {
    pub(super) conn: ConnId,
    pub(super) packet: Packet,
    /// When the journal has the publish itself.
    pub(super) durability: Durability,
    /// Peer shards whose journals must have the publish's deliveries first.
    pub(super) targets: Vec<usize>,
}

impl Shard {
    /// Owner role: applies a retained update (set or clear) for a topic this shard owns,
    /// replicates it to every shard in this order, and confirms it to the publishing shard
    /// once the journal has it. Returns the journal's answer.
    pub(super) fn own_retained_update(
        &mut self,
        topic: &MqttStr,
        message: Option<Arc<Message>>,
        ack: Option<(u16, u64)>,
    ) -> Durability {
        if message.is_some() && self.storage_full() && !is_sys(topic) {
            // The data directory is full: delivered, not kept (and not acknowledged as kept
            // any longer than the publisher is told: 5.0 publishers were refused already).
            self.stats.retained_refused += 1;
            if let Some((shard, token)) = ack {
                self.send(usize::from(shard), ShardMsg::RetainAck { token });
            }
            return Durability::Now;
        }
        if let Some(new) = &message {
            if !self.retained_fits(topic, new) {
                // Over the retained bounds: the message was delivered, it is not kept.
                self.stats.retained_refused += 1;
                if !self.retained_full_logged {
                    self.retained_full_logged = true;
                    tracing::warn!(
                        shard = self.id,
                        %topic,
                        stored = self.retained.len(),
                        bytes = self.retained_bytes,
                        "retained store full (max_retained_messages / max_retained_bytes): new retained messages are not kept"
                    );
                }
                if let Some((shard, token)) = ack {
                    self.send(usize::from(shard), ShardMsg::RetainAck { token });
                }
                return Durability::Now;
            }
        }
        let durability = self.journal_retained(topic, message.as_ref());
        self.apply_retained(topic, message.clone());
        self.broadcast(|| ShardMsg::RetainApply {
            topic: topic.clone(),
            message: message.clone(),
        });
        if let Some((shard, token)) = ack {
            // After the broadcast: whoever hears of this ack sees the update first.
            let ack = ShardMsg::RetainAck { token };
            self.send_when_durable(usize::from(shard), ack, durability);
        }
        durability
    }

    /// Whether storing `new` under `topic` stays within the retained bounds. The broker's own
    /// `$SYS` topics are outside them (and not counted in them): a small retained budget must
    /// not hide the broker's statistics, nor `$SYS` eat the clients' budget.
    fn retained_fits(&self, topic: &str, new: &Message) -> bool {
        if is_sys(topic) {
            return true;
        }
        let max_messages = self.config.max_retained_messages;
        let max_bytes = self.config.max_retained_bytes;
        let old = self.retained.get(topic).map(|m| m.payload.len());
        let stored = self.retained.len() - self.retained_sys;
        if max_messages != 0 && old.is_none() && stored >= max_messages {
            return false;
        }
        let bytes = self.retained_bytes - old.unwrap_or(0) + new.payload.len();
        max_bytes == 0 || bytes <= max_bytes
    }

    pub(super) fn apply_retained(&mut self, topic: &str, message: Option<Arc<Message>>) {
        let added = message.as_ref().map_or(0, |m| m.payload.len());
        let present = message.is_some();
        let old = match message {
            Some(message) => self.retained.set(topic, message),
            None => self.retained.remove(topic),
        };
        if is_sys(topic) {
            match (old.is_some(), present) {
                (false, true) => self.retained_sys += 1,
                (true, false) => self.retained_sys -= 1,
                _ => {}
            }
            return;
        }
        self.retained_bytes =
            self.retained_bytes - old.as_ref().map_or(0, |m| m.payload.len()) + added;
        if self.retained_full_logged && old.is_some() && added == 0 {
            // Room again after a removal: the next refusal is a new episode worth a log line.
            self.retained_full_logged = false;
        }
    }

    pub(super) fn release_held_ack(&mut self, token: u64) {
        let Some(held) = self.held_acks.remove(&token) else {
            return;
        };
        if self.conns.contains(held.conn) {
            self.ack_after_peers(held.conn, held.packet, held.durability, &held.targets);
            self.resume_reading(held.conn);
        }
    }
}

/// The broker's own statistics topics.
pub(super) fn is_sys(topic: &str) -> bool {
    topic.starts_with("$SYS/")
}
