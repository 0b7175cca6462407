//! Barriers: run an action once every other shard has applied everything sent to it before (SUBACK ordering, stub release).

use super::*;

/// What to do once every peer has answered a barrier.
#[derive(Debug)]
pub(super) enum BarrierAction {
    /// Answer a SUBSCRIBE: every shard now forwards matching publishes here.
    SubAck {
        conn: ConnId,
        session: SessionId,
        suback: Box<SubAck>,
        retained_for: Vec<(MqttStr, SubscriptionOptions, u32)>,
        /// When the journal has the new subscriptions.
        durability: Durability,
    },
    /// A moved session is now routed to here by every shard: the old shard drops its stub.
    ReleaseStub {
        shard: u16,
        token: u64,
        client_id: MqttStr,
    },
}

#[derive(Debug)]
pub(super) struct Barrier {
    pub(super) remaining: usize,
    pub(super) action: BarrierAction,
}

impl Shard {
    /// Runs `action` once every other shard has applied everything this shard sent it so far
    /// (FIFO queues: a Ping is answered after all that came before it).
    pub(super) fn start_barrier(&mut self, action: BarrierAction) {
        if self.shards == 1 {
            return self.complete_barrier(action);
        }
        let token = self.new_token();
        self.barriers.insert(
            token,
            Barrier {
                remaining: self.shards - 1,
                action,
            },
        );
        let from = self.id as u16;
        self.broadcast(|| ShardMsg::Ping { from, token });
    }

    pub(super) fn on_pong(&mut self, token: u64) {
        let Some(barrier) = self.barriers.get_mut(&token) else {
            return;
        };
        barrier.remaining -= 1;
        if barrier.remaining == 0 {
            if let Some(barrier) = self.barriers.remove(&token) {
                self.complete_barrier(barrier.action);
            }
        }
    }

    pub(super) fn complete_barrier(&mut self, action: BarrierAction) {
        match action {
            BarrierAction::SubAck {
                conn,
                session,
                suback,
                retained_for,
                durability,
            } => {
                if !self.conns.contains(conn) {
                    return;
                }
                self.ack_when_durable(conn, Packet::SubAck(*suback), durability);
                for (filter, options, subscription_id) in retained_for {
                    let mut found = Vec::new();
                    self.retained
                        .for_each_match(&filter, |message| found.push(Arc::clone(message)));
                    let ids: &[u32] = if subscription_id == 0 {
                        &[]
                    } else {
                        &[subscription_id]
                    };
                    let now = self.now;
                    for message in found {
                        let qos = message.qos.min(options.qos);
                        self.deliver_to(session, &message, qos, true, ids, now);
                    }
                }
                self.resume_reading(conn);
            }
            BarrierAction::ReleaseStub {
                shard,
                token,
                client_id,
            } => {
                // The stub's last forwards reach us before its StubGone (FIFO queues): the
                // move completes, and the claim settles, when that arrives.
                let from = self.id as u16;
                self.send(
                    usize::from(shard),
                    ShardMsg::StubDone {
                        client_id,
                        token,
                        from,
                    },
                );
            }
        }
    }
}
