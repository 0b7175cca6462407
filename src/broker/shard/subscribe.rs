//! SUBSCRIBE and UNSUBSCRIBE: the session, the local trie and the replicated interest index.

use super::*;

impl Shard {
    pub(super) fn add_subscription(
        &mut self,
        session: SessionId,
        filter: &MqttStr,
        options: (SubscriptionOptions, u32),
    ) {
        if topic::parse_shared(filter).is_some() {
            return self.add_shared_member(session, filter, options);
        }
        if self
            .subscriptions
            .insert(filter, session, options)
            .is_none()
        {
            if let Some(delta) = self.local_interest.subscribe(filter) {
                self.interest.apply(&delta);
                self.broadcast(|| ShardMsg::Interest(delta.clone()));
            }
        }
    }

    pub(super) fn remove_subscription(&mut self, session: SessionId, filter: &MqttStr) {
        if topic::parse_shared(filter).is_some() {
            return self.remove_shared_member(session, filter);
        }
        if self.subscriptions.remove(filter, &session).is_some() {
            if let Some(delta) = self.local_interest.unsubscribe(filter) {
                self.interest.apply(&delta);
                self.broadcast(|| ShardMsg::Interest(delta.clone()));
            }
        }
    }

    pub(super) fn on_subscribe(&mut self, index: ConnId, session: SessionId, subscribe: Subscribe) {
        let Some(protocol) = self.conns.get(index).map(|c| c.protocol) else {
            return;
        };
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut retained_for = Vec::new();
        let subscription_id = subscribe
            .properties
            .subscription_identifiers
            .first()
            .copied()
            .unwrap_or(0);
        for (filter, options) in subscribe.filters {
            if !self.topic_within_limits(&filter) {
                reasons.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
            let shared = topic::parse_shared(&filter).is_some();
            let entry = (options, subscription_id);
            let Some(existing) = self.sessions.get_mut(session) else {
                return;
            };
            let existed = existing
                .session
                .subscriptions
                .insert(filter.clone(), entry)
                .is_some();
            if existed && !shared {
                // Same filter again: new options replace the old, interest is unchanged.
                self.subscriptions.insert(&filter, session, entry);
            } else {
                self.add_subscription(session, &filter, entry);
            }
            reasons.push(match options.qos {
                QoS::AtMostOnce => ReasonCode::Success,
                QoS::AtLeastOnce => ReasonCode::GrantedQos1,
                QoS::ExactlyOnce => ReasonCode::GrantedQos2,
            });
            let send_retained = match options.retain_handling {
                crate::codec::RetainHandling::SendOnSubscribe => true,
                crate::codec::RetainHandling::SendIfNew => !existed,
                crate::codec::RetainHandling::DoNotSend => false,
            };
            // Shared subscriptions never receive retained messages on subscribe (MQTT 5.0 §4.8.2).
            if !shared && (send_retained || !protocol.is_v5()) {
                retained_for.push((filter, options));
            }
        }
        let suback = SubAck {
            packet_id: subscribe.packet_id,
            properties: Properties::default(),
            reasons,
        };
        let retained_for = retained_for
            .into_iter()
            .map(|(filter, options)| (filter, options, subscription_id))
            .collect();
        let action = BarrierAction::SubAck {
            conn: index,
            session,
            suback: Box::new(suback),
            retained_for,
        };
        // SUBACK only once every other shard has applied the interest change (and any
        // retained update it had already accepted): a publish the client sees acknowledged
        // anywhere after its SUBACK is then routed here.
        if let Some(conn) = self.conns.get_mut(index) {
            conn.paused = true;
        }
        self.start_barrier(action);
    }

    pub(super) fn on_unsubscribe(
        &mut self,
        index: ConnId,
        session: SessionId,
        unsubscribe: Unsubscribe,
    ) {
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        for filter in &unsubscribe.filters {
            let existed = self
                .sessions
                .get_mut(session)
                .is_some_and(|e| e.session.subscriptions.remove(filter).is_some());
            if existed {
                self.remove_subscription(session, filter);
                reasons.push(ReasonCode::Success);
            } else {
                reasons.push(ReasonCode::NoSubscriptionExisted);
            }
        }
        self.write(
            index,
            Packet::UnsubAck(UnsubAck {
                packet_id: unsubscribe.packet_id,
                properties: Properties::default(),
                reasons,
            }),
        );
    }
}
