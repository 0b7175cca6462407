//! The shard side of the cross-shard mesh: sending to peers (through the [`Outbox`]) and to
//! itself (the local inbox), the inputs that deliver peers' messages, and the backpressure
//! outboxes put on socket reads.

use super::*;

impl Shard {
    pub(super) fn send(&mut self, shard: usize, message: ShardMsg) {
        if let Some(targets) = self.store_targets.as_mut() {
            let delivers = matches!(
                message,
                ShardMsg::Publish(_) | ShardMsg::SharedPublish { .. } | ShardMsg::Forward { .. }
            );
            if delivers && shard != self.id && !targets.contains(&shard) {
                targets.push(shard);
            }
        }
        if shard != self.id
            && matches!(message, ShardMsg::Forward { .. })
            && self.hooks.journal.enabled()
            && !self.forwarded_to.contains(&shard)
        {
            self.forwarded_to.push(shard);
        }
        if shard == self.id {
            self.local_inbox.push_back(message);
            return;
        }
        if self.outbox.push(shard, message) {
            // Once per episode, not per message.
            tracing::warn!(
                shard = self.id,
                peer = shard,
                "cross-shard queue full: reading from this shard's clients paused"
            );
            self.stats.backpressure_episodes += 1;
        }
    }

    pub(super) fn broadcast(&mut self, make: impl Fn() -> ShardMsg) {
        for shard in 0..self.shards {
            if shard != self.id {
                self.send(shard, make());
            }
        }
    }

    /// A batch of messages from peer `from`, applied in order.
    pub fn on_mesh_from(
        &mut self,
        from: usize,
        batch: impl IntoIterator<Item = ShardMsg>,
        now: Instant,
    ) {
        self.set_now(now);
        self.mesh_source = Some(from);
        for message in batch {
            self.handle_mesh(message);
        }
        self.mesh_source = None;
        self.drain_local_inbox();
    }

    /// Whether messages wait for `peer` (the runtime then calls [`Shard::take_outbox_batch`]).
    pub fn has_outbox(&self, peer: usize) -> bool {
        self.outbox.has_pending(peer)
    }

    /// Up to `max` of the oldest messages for `peer`.
    pub fn take_outbox_batch(&mut self, peer: usize, max: usize) -> Option<Vec<ShardMsg>> {
        self.outbox.take_batch(peer, max)
    }

    /// The oldest message for `peer` (for simulations that deliver one message at a time).
    pub fn pop_outbox(&mut self, peer: usize) -> Option<ShardMsg> {
        self.outbox.pop(peer)
    }

    /// The runtime moved outbox messages into the mesh: resumes socket reads once every outbox
    /// is under the low-water mark.
    pub fn on_outbox_drained(&mut self) {
        if self.outbox.relieve() {
            tracing::info!(
                shard = self.id,
                "cross-shard queues drained: reading from clients resumed"
            );
            let mut paused = std::mem::take(&mut self.paused_readers);
            for conn in paused.drain(..) {
                self.wake_conn(conn);
            }
            self.paused_readers = paused;
        }
    }

    /// Processes messages this shard sent to itself (claims and retained updates it owns).
    pub(super) fn drain_local_inbox(&mut self) {
        while let Some(message) = self.local_inbox.pop_front() {
            self.handle_mesh(message);
        }
    }
}
