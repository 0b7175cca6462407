//! Cross-shard messages and the tasks that move them.
//!
//! Every pair of shards is joined by a bounded lock-free SPSC queue (glommio's channel mesh)
//! carrying batches. A shard never awaits a send while handling anything else: messages for a
//! peer go into that peer's outbox, and one pump task per peer moves outbox batches into the
//! queue, awaiting room when it is full (glommio issue #555: awaiting a send in a task that also
//! drains inbound queues can deadlock). When an outbox grows past its high-water mark the shard
//! stops reading from client sockets until it drains: backpressure reaches the publishers instead
//! of memory growing without bound.

use std::cell::RefCell;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;

use core_router::interest::InterestDelta;
use glommio::channels::channel_mesh::{Receivers, Senders};

use super::shard::Shard;
use crate::codec::{MqttStr, QoS};
use crate::session::{Message, Session};

/// One message between shards. Payloads travel as `Arc<Message>`: never copied.
#[derive(Debug)]
pub enum ShardMsg {
    /// A publish matched by the receiving shard's interest; it fans out to its local subscribers.
    Publish(Arc<Message>),
    /// A change in the sending shard's interest (first subscriber to a filter, or last gone).
    Interest(InterestDelta),
    /// To a topic's owner shard: set (`Some`) or clear (`None`) the retained message.
    RetainUpdate {
        /// Topic.
        topic: MqttStr,
        /// New retained message.
        message: Option<Arc<Message>>,
        /// Shard and token to answer with [`ShardMsg::RetainAck`] once applied.
        ack: Option<(u16, u64)>,
    },
    /// The owner applied (and replicated) the retained update `token`.
    RetainAck {
        /// Token from the update.
        token: u64,
    },
    /// Answer with `Pong` once everything sent to you before this has been applied.
    Ping {
        /// Shard to answer.
        from: u16,
        /// Barrier token.
        token: u64,
    },
    /// Answer to `Ping`.
    Pong {
        /// Barrier token.
        token: u64,
    },
    /// From the owner shard to every replica, in the owner's order.
    RetainApply {
        /// Topic.
        topic: MqttStr,
        /// New retained message.
        message: Option<Arc<Message>>,
    },
    /// Shard `shard` gained its first (`added`) or lost its last member of a shared group.
    SharedInterest {
        /// The group's full `$share/{group}/{filter}`.
        filter: MqttStr,
        /// The shard.
        shard: u16,
        /// Gained or lost.
        added: bool,
    },
    /// A message for one member of `group` on the receiving shard.
    SharedPublish {
        /// The group's full `$share/{group}/{filter}`.
        group: MqttStr,
        /// The message.
        message: Arc<Message>,
    },
    /// To the client id's home shard: a connection on `shard` wants `client_id`.
    Claim {
        /// Client id.
        client_id: MqttStr,
        /// Identifies this claim (and later the session it creates).
        token: u64,
        /// Shard of the connecting client.
        shard: u16,
        /// Clean start requested.
        clean_start: bool,
    },
    /// From the home shard to the current owner: give the session to `new_shard`.
    TakeOver {
        /// Client id.
        client_id: MqttStr,
        /// Token of the owner's claim.
        old_token: u64,
        /// Shard of the new connection.
        new_shard: u16,
        /// Token of the new claim.
        new_token: u64,
        /// Clean start requested: the session is discarded instead of moved.
        clean_start: bool,
    },
    /// The claim `token` succeeded, with the previous session if it continues.
    Granted {
        /// The claim.
        token: u64,
        /// The session to resume.
        session: Option<Box<Session>>,
        /// How the previous owner handed the session over, when it continues.
        handover: Option<HandoverKind>,
    },
    /// A delivery that reached the stub of a session that moved to the receiving shard.
    Forward {
        /// Client id of the session.
        client_id: MqttStr,
        /// Claim token the session now has.
        token: u64,
        /// The message.
        message: Arc<Message>,
        /// QoS to deliver at.
        qos: QoS,
        /// Retain flag to deliver with.
        retain: bool,
        /// Subscription identifiers to deliver with.
        subscription_ids: Vec<u32>,
        /// Shared group it came through.
        group: Option<MqttStr>,
    },
    /// To the old owner: every shard now routes to the moved session; drop the stub and
    /// answer with [`ShardMsg::StubGone`].
    StubDone {
        /// Client id of the session.
        client_id: MqttStr,
        /// Claim token of the move.
        token: u64,
        /// Shard to answer.
        from: u16,
    },
    /// To the new owner: the stub is gone, and every delivery it forwarded was sent before
    /// this message. The move is complete.
    StubGone {
        /// Client id of the session.
        client_id: MqttStr,
        /// Claim token of the move.
        token: u64,
    },
    /// To the home shard: the claim `token` has settled (its session is installed on the
    /// claimant and no forwarding stub points at it any more); the next takeover may start.
    Settled {
        /// Client id.
        client_id: MqttStr,
        /// The claim.
        token: u64,
    },
    /// From the home shard to a claimant: a newer claim for the same client id arrived while
    /// this one waited its turn; the connection is closed without a session.
    Denied {
        /// The claim.
        token: u64,
    },
    /// To the home shard: the session created by claim `token` has ended.
    Release {
        /// Client id.
        client_id: MqttStr,
        /// The claim that created it.
        token: u64,
    },
}

/// How a continuing session was handed over on takeover.
#[derive(Debug, Clone, Copy)]
pub enum HandoverKind {
    /// Same shard: the session stays in this slot.
    InPlace(usize),
    /// From this shard, which keeps a forwarding stub until told `StubDone`.
    Stub(u16),
}

/// What the queues carry.
pub type Batch = Vec<ShardMsg>;

/// Largest batch a pump sends at once.
const MAX_BATCH: usize = 512;

/// Moves `peer`'s outbox into the mesh, forever.
pub async fn pump(shard: Rc<RefCell<Shard>>, senders: Rc<Senders<Batch>>, peer: usize) {
    loop {
        let batch = poll_fn(|cx| shard.borrow_mut().take_outbox_batch(peer, MAX_BATCH, cx)).await;
        if senders.send_to(peer, batch).await.is_err() {
            tracing::debug!(peer, "cross-shard queue closed");
            return;
        }
        shard.borrow_mut().relieve_backpressure();
    }
}

/// Applies every batch `peer` sends, forever.
pub async fn receive(
    shard: Rc<RefCell<Shard>>,
    receiver: glommio::channels::shared_channel::ConnectedReceiver<Batch>,
) {
    while let Some(batch) = receiver.recv().await {
        {
            let mut shard = shard.borrow_mut();
            for message in batch {
                shard.handle_mesh(message);
            }
            shard.drain_local_inbox();
        }
        glommio::yield_if_needed().await;
    }
}

/// Splits the mesh endpoints into per-peer receivers.
pub fn receivers(
    mut receivers: Receivers<Batch>,
) -> Vec<(
    usize,
    glommio::channels::shared_channel::ConnectedReceiver<Batch>,
)> {
    receivers.streams()
}
