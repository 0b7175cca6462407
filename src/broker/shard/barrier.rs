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
    /// Old owner: every shard has applied what this shard sent for a session that moves away;
    /// hand it over (the `Granted` message).
    HandOver { shard: u16, message: Box<ShardMsg> },
    /// Old owner: everything other shards sent here while they still routed to the stub has
    /// been forwarded; drop it and tell the new owner.
    DropStub {
        token: u64,
        client_id: MqttStr,
        to: u16,
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

    pub(super) fn on_pong(&mut self, token: u64, from: Option<usize>) {
        let Some(barrier) = self.barriers.get_mut(&token) else {
            return;
        };
        barrier.remaining = barrier.remaining.saturating_sub(1);
        if let (Some(peer), BarrierAction::ReleaseStub { client_id, .. }) = (from, &barrier.action)
        {
            // That peer now routes to the moved session here: its direct publishes may reach it.
            if let Some(recent) = self
                .by_client_id
                .get(&self.sessions, client_id)
                .and_then(|slot| self.sessions.get_mut(slot))
                .and_then(|e| e.recent_mut())
            {
                recent.open_for(peer);
            }
        }
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
            BarrierAction::HandOver { shard, mut message } => {
                if let ShardMsg::Granted {
                    session: Some(session),
                    origins,
                    ..
                } = &mut *message
                {
                    // The session's origin marks go with it, taken now rather than at the
                    // takeover: a commit sent since has cleared some, and one sent from now
                    // on is relayed to the new shard behind this message.
                    *origins = self.origins_move_client(&session.client_id, shard);
                }
                self.send(usize::from(shard), *message)
            }
            BarrierAction::DropStub {
                token,
                client_id,
                to,
            } => {
                self.remove_stub(token);
                self.send(usize::from(to), ShardMsg::StubGone { client_id, token });
            }
            BarrierAction::ReleaseStub {
                shard,
                token,
                client_id,
            } => {
                if let Some(recent) = self
                    .by_client_id
                    .get(&self.sessions, &client_id)
                    .and_then(|slot| self.sessions.get_mut(slot))
                    .filter(|e| e.token == token)
                    .and_then(|e| e.recent_mut())
                {
                    recent.open_gate();
                }
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
