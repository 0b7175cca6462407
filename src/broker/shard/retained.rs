//! Retained messages: the owner-shard serialised store and acknowledgements held until the owner applied an update.

use super::*;

/// A PUBACK/PUBREC held until the topic's owner shard has applied a retained update.
#[derive(Debug)]
pub(super) struct HeldAck {
    pub(super) conn: ConnId,
    pub(super) packet: Packet,
    /// When the journal has the publish itself.
    pub(super) durability: Durability,
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
        let durability = self.journal(&JournalRecord::Retained {
            topic,
            message: message.as_ref(),
        });
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

    pub(super) fn apply_retained(&mut self, topic: &str, message: Option<Arc<Message>>) {
        match message {
            Some(message) => {
                self.retained.set(topic, message);
            }
            None => {
                self.retained.remove(topic);
            }
        }
    }

    pub(super) fn release_held_ack(&mut self, token: u64) {
        let Some(held) = self.held_acks.remove(&token) else {
            return;
        };
        if self.conns.contains(held.conn) {
            self.ack_when_durable(held.conn, held.packet, held.durability);
            self.resume_reading(held.conn);
        }
    }
}
