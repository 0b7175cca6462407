//! Retained messages: the owner-shard serialised store and acknowledgements held until the owner applied an update.

use super::*;

/// A PUBACK/PUBREC held until the topic's owner shard has applied a retained update.
#[derive(Debug)]
pub(super) struct HeldAck {
    pub(super) conn: ConnId,
    pub(super) packet: Packet,
}

impl Shard {
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
            self.write(held.conn, held.packet);
            self.resume_reading(held.conn);
        }
    }
}
