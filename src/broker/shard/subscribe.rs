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
        let Some((protocol, listener)) = self.conns.get(index).map(|c| (c.protocol, c.listener))
        else {
            return;
        };
        let mount = mount_of(&self.listener_rules, listener).map(MqttStr::from);
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut retained_for = Vec::new();
        let subscription_id = subscribe
            .properties
            .subscription_identifiers
            .first()
            .copied()
            .unwrap_or(0);
        let mut durability = Durability::Now;
        for (filter, options) in subscribe.filters {
            // A mounted listener's client subscribes under its mount point (for a shared
            // subscription, the filter part).
            let filter = match &mount {
                None => filter,
                Some(mount) => match mount_topic(mount, &filter) {
                    Some(mounted) => mounted,
                    None => {
                        reasons.push(ReasonCode::TopicFilterInvalid);
                        continue;
                    }
                },
            };
            if !self.topic_within_limits(&filter) {
                reasons.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
            let parsed = topic::parse_shared(&filter);
            let shared = parsed.is_some();
            let inner = match &parsed {
                Some(Ok(shared)) => shared.filter,
                _ => filter.as_str(),
            };
            let Some(client) = self.client_of(session) else {
                return;
            };
            let check = self.hooks.authorization.subscribe_check(client, inner);
            if check == SubscribeCheck::Denied {
                tracing::info!(
                    shard = self.id,
                    client = client.client_id,
                    username = client.username.unwrap_or(""),
                    %filter,
                    "SUBSCRIBE denied: not authorized"
                );
                self.stats.not_authorized += 1;
                reasons.push(ReasonCode::NotAuthorized);
                continue;
            }
            if self.storage_full() && self.sessions.get(session).is_some_and(|e| !e.session.clean) {
                reasons.push(ReasonCode::QuotaExceeded);
                continue;
            }
            let entry = (options, subscription_id);
            let Some(existing) = self.sessions.get_mut(session) else {
                return;
            };
            let limit = self.config.max_subscriptions_per_client;
            if limit != 0
                && existing.session.subscriptions.len() >= limit
                && !existing.session.subscriptions.contains_key(&filter)
            {
                self.stats.subscriptions_refused += 1;
                reasons.push(ReasonCode::QuotaExceeded);
                continue;
            }
            if !existing.session.clean {
                let client_id = existing.session.client_id.clone();
                let generation = existing.generation;
                let recorded = self.journal(&JournalRecord::Subscribed {
                    client_id: &client_id,
                    generation,
                    filter: &filter,
                    options,
                    subscription_id,
                });
                durability = later(durability, recorded);
            }
            let Some(existing) = self.sessions.get_mut(session) else {
                return;
            };
            if check == SubscribeCheck::AllowedCheckEachMessage {
                existing.check_deliveries = true;
            }
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
            durability,
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
        let mut durability = Durability::Now;
        let mount = self
            .conns
            .get(index)
            .and_then(|conn| mount_of(&self.listener_rules, conn.listener))
            .map(MqttStr::from);
        for filter in &unsubscribe.filters {
            let mounted;
            let filter = match &mount {
                None => filter,
                Some(mount) => match mount_topic(mount, filter) {
                    Some(under_mount) => {
                        mounted = under_mount;
                        &mounted
                    }
                    // A malformed `$share/` filter was never subscribed: nothing to remove.
                    None => {
                        reasons.push(ReasonCode::NoSubscriptionExisted);
                        continue;
                    }
                },
            };
            let Some(entry) = self.sessions.get_mut(session) else {
                return;
            };
            let existed = entry.session.subscriptions.remove(filter).is_some();
            if existed && !entry.session.clean {
                let client_id = entry.session.client_id.clone();
                let generation = entry.generation;
                let recorded = self.journal(&JournalRecord::Unsubscribed {
                    client_id: &client_id,
                    generation,
                    filter,
                });
                durability = later(durability, recorded);
            }
            if existed {
                self.remove_subscription(session, filter);
                reasons.push(ReasonCode::Success);
            } else {
                reasons.push(ReasonCode::NoSubscriptionExisted);
            }
        }
        let unsuback = Packet::UnsubAck(UnsubAck {
            packet_id: unsubscribe.packet_id,
            properties: Properties::default(),
            reasons,
        });
        self.ack_when_durable(index, unsuback, durability);
    }
}
