//! The shard side of the cross-shard mesh: per-peer outboxes with water marks, the local inbox, and the backpressure they put on socket reads.

use super::*;

/// Outbox length (messages) past which a shard stops reading client sockets.
pub(super) const OUTBOX_HIGH_WATER: usize = 64 * 1024;

/// Outbox length under which reading resumes.
pub(super) const OUTBOX_LOW_WATER: usize = 16 * 1024;

impl Shard {
    pub(super) fn send(&mut self, shard: usize, message: ShardMsg) {
        if shard == self.id {
            self.local_inbox.push_back(message);
            return;
        }
        self.outbox[shard].push_back(message);
        if let Some(waker) = self.outbox_wakers[shard].take() {
            waker.wake();
        }
        if self.outbox[shard].len() > OUTBOX_HIGH_WATER && !self.backpressured {
            tracing::debug!(shard = self.id, peer = shard, "cross-shard backpressure on");
            self.backpressured = true;
        }
    }

    pub(super) fn broadcast(&mut self, make: impl Fn() -> ShardMsg) {
        for shard in 0..self.shards {
            if shard != self.id {
                self.send(shard, make());
            }
        }
    }

    /// Hands the pump for `peer` its next batch, or registers its waker.
    pub fn take_outbox_batch(
        &mut self,
        peer: usize,
        max: usize,
        cx: &mut Context<'_>,
    ) -> Poll<Vec<ShardMsg>> {
        let queue = &mut self.outbox[peer];
        if queue.is_empty() {
            self.outbox_wakers[peer] = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let take = queue.len().min(max);
        Poll::Ready(queue.drain(..take).collect())
    }

    /// Resumes socket reads once every outbox is under the low-water mark.
    pub fn relieve_backpressure(&mut self) {
        if self.backpressured && self.outbox.iter().all(|q| q.len() < OUTBOX_LOW_WATER) {
            tracing::debug!(shard = self.id, "cross-shard backpressure off");
            self.backpressured = false;
            for waker in self.paused_readers.drain(..) {
                waker.wake();
            }
        }
    }

    /// Processes messages this shard sent to itself (claims and retained updates it owns).
    pub fn drain_local_inbox(&mut self) {
        while let Some(message) = self.local_inbox.pop_front() {
            self.handle_mesh(message);
        }
    }
}
