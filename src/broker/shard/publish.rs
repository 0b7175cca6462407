//! Inbound PUBLISH and its acknowledgements, wills, and routing a message to local subscribers, shared groups, retained storage and other shards.

use super::*;

impl Shard {
    pub(super) fn topic_within_limits(&self, topic: &str) -> bool {
        topic::check_limits(
            topic,
            self.config.max_topic_length,
            self.config.max_topic_levels,
        )
        .is_ok()
    }

    pub(super) fn on_publish(&mut self, index: ConnId, session: SessionId, mut publish: Publish) {
        self.stats
            .publish_received(publish.qos, publish.payload.len());
        let (Some(conn), Some(entry)) = (self.conns.get(index), self.sessions.get(session)) else {
            return;
        };
        let protocol = conn.protocol;
        let listener = conn.listener;
        let publisher = entry.session.client_id.clone();
        // `fields_mut`: nothing is allocated for the PUBLISH without properties.
        let alias = publish
            .properties
            .fields_mut()
            .and_then(|fields| fields.topic_alias.take());
        if let Some(alias) = alias {
            // MQTT 5.0 §3.3.2.3.4: an alias above our maximum is an error; a topic with an alias
            // (re)defines it; an empty topic uses it.
            if alias > self.config.topic_alias_maximum {
                return self.kill_conn(index, ReasonCode::TopicAliasInvalid, false);
            }
            let Some(conn) = self.conns.get_mut(index) else {
                return;
            };
            let aliases = conn.aliases_in.get_or_insert_with(Default::default);
            if publish.topic.is_empty() {
                match aliases.get(&alias) {
                    Some(topic) => publish.topic = topic.clone(),
                    None => return self.kill_conn(index, ReasonCode::ProtocolError, false),
                }
            } else {
                // Own memory: an alias outlives the read buffer its topic arrived in.
                aliases.insert(alias, MqttStr::from(publish.topic.as_str()));
            }
        }
        if !publish.properties.subscription_identifiers.is_empty() {
            return self.kill_conn(index, ReasonCode::ProtocolError, false);
        }
        // A mounted listener's client publishes under its mount point (after topic alias
        // resolution: aliases stand for the topic as the client sent it). Authorization and
        // retained storage see the full topic.
        if let Some(mount) = mount_of(&self.listener_rules, listener) {
            publish.topic = MqttStr::from(format!("{mount}{}", publish.topic));
        }
        if !self.topic_within_limits(&publish.topic) {
            return self.kill_conn(index, ReasonCode::TopicNameInvalid, false);
        }
        // `$SYS/...` belongs to the broker: clients may not publish there. Everything else is
        // the authorization hook's call, on the topic a topic alias stands for.
        let Some(entry) = self.sessions.get(session) else {
            return;
        };
        let client = ClientRef {
            client_id: &entry.session.client_id,
            username: entry.session.username.as_deref(),
            prepared: entry.prepared.as_ref(),
        };
        let refused = publish.topic.starts_with("$SYS")
            || !self.hooks.authorization.may_publish(client, &publish.topic);
        if refused {
            // 3.x: acknowledged and dropped (the protocol has no way to say no); 5.0: the
            // PUBACK/PUBREC says 0x87 (a QoS 0 publish is dropped silently).
            tracing::info!(
                shard = self.id,
                client = client.client_id,
                username = client.username.unwrap_or(""),
                topic = %publish.topic,
                "PUBLISH denied: not authorized"
            );
            self.stats.not_authorized += 1;
            self.stats.drop_messages(DropReason::NotAuthorized, 1);
        }
        let qos = publish.qos;
        let packet_id = publish.packet_id;
        if qos != QoS::AtMostOnce && self.storage_full() {
            // Nothing new that must be durable while the disk is full: 5.0 says so in the
            // acknowledgement (0x97), 3.x has no way to but closing the connection.
            self.stats.drop_messages(DropReason::StorageFull, 1);
            if !protocol.is_v5() {
                return self.kill_conn(index, ReasonCode::QuotaExceeded, false);
            }
            let ack = Ack {
                packet_id,
                reason: ReasonCode::QuotaExceeded,
                properties: Properties::default(),
            };
            let packet = if qos == QoS::AtLeastOnce {
                Packet::PubAck(ack)
            } else {
                Packet::PubRec(ack)
            };
            return self.ack_when_durable(index, packet, Durability::Now);
        }
        let receive_maximum = usize::from(self.config.receive_maximum);
        let Some(entry) = self.sessions.get_mut(session) else {
            return;
        };
        if qos == QoS::ExactlyOnce
            && protocol.is_v5()
            && !entry.session.has_incoming_qos2(packet_id)
            && entry.session.incoming_qos2_len() >= receive_maximum
        {
            // More unreleased QoS 2 publishes than the Receive Maximum we announced.
            return self.kill_conn(index, ReasonCode::ReceiveMaximumExceeded, false);
        }
        let payload_invalid = publish.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&publish.payload).is_err();
        // A refused QoS 2 publish ends with its error PUBREC (MQTT 5.0 §4.3.3): its packet id
        // is not kept, so the client may reuse it at once.
        let resent_qos2 = qos == QoS::ExactlyOnce
            && !refused
            && !payload_invalid
            && entry.session.has_incoming_qos2(packet_id);
        let route = !refused
            && !payload_invalid
            && (qos != QoS::ExactlyOnce || entry.session.on_incoming_qos2(packet_id));
        let mut durability = Durability::Now;
        let mut matched = true;
        let mut retain_ack = None;
        let mut targets = Vec::new();
        if route {
            let mut properties = std::mem::take(&mut publish.properties);
            // The expiry travels as a deadline; each delivery carries the time remaining.
            let expires_at = properties
                .fields_mut()
                .and_then(|fields| fields.message_expiry_interval.take())
                .map(|secs| self.now + Duration::from_secs(u64::from(secs)));
            // With a journal, the acknowledgement waits until every delivery of the message
            // to a durable session is on disk: here, and on the peers it is routed to.
            let journaling = qos != QoS::AtMostOnce && self.hooks.journal.enabled();
            let durable_publisher = self.sessions.get(session).is_some_and(|e| !e.session.clean);
            let origin_packet_id = if journaling && qos == QoS::ExactlyOnce && durable_publisher {
                packet_id
            } else {
                0
            };
            // Only a journaled QoS 2 publish needs the publisher's id again (origin entries).
            let origin_publisher = (origin_packet_id != 0).then(|| publisher.clone());
            let message = Arc::new(Message {
                topic: publish.topic,
                payload: publish.payload,
                qos,
                retain: publish.retain,
                properties: properties.compacted(),
                publisher,
                expires_at,
                // The time of the read that brought the PUBLISH: the start of its latency.
                received_at: Some(self.now),
                origin_packet_id,
            });
            self.store_targets = journaling.then(Vec::new);
            if journaling && qos == QoS::ExactlyOnce {
                // Journaled once its deliveries are (here or after the peers answered).
                if let Some(entry) = self.sessions.get_mut(session) {
                    entry.session.mark_inbound_uncommitted(packet_id);
                }
            }
            self.current_publisher = Some(index);
            let (any, retained) = self.route_publish(message);
            self.current_publisher = None;
            targets = self.store_targets.take().unwrap_or_default();
            if journaling {
                if targets.is_empty() {
                    // With peers, the id is recorded once their deliveries are durable (see
                    // `ack_after_peers`).
                    durability = later(durability, self.journal_inbound(session, qos, packet_id));
                    if let Some(publisher_id) = origin_publisher {
                        // No shard was routed to, so no mark was passed on during this
                        // publish; one passed on earlier is told without waiting (its shard
                        // recognises a resend by the packet id recorded here anyway).
                        let token = self.new_token();
                        for shard in self.origin_clear_local(&publisher_id, packet_id) {
                            let commit = ShardMsg::OriginCommitted {
                                from: self.id as u16,
                                token,
                                publisher: publisher_id.clone(),
                                packet_id,
                            };
                            self.send(usize::from(shard), commit);
                        }
                    }
                }
                durability = later(durability, self.hooks.journal.barrier());
            }
            matched = any;
            match retained {
                RetainWait::Owner(token) => retain_ack = Some(token),
                RetainWait::Journal(Durability::At(at)) => {
                    durability = match durability {
                        Durability::At(published) => Durability::At(published.max(at)),
                        Durability::Now => Durability::At(at),
                    }
                }
                RetainWait::Journal(Durability::Now) | RetainWait::Nothing => {}
            }
        }
        if resent_qos2 && self.hooks.journal.enabled() {
            // A resend of a QoS 2 publish still awaiting PUBREL (on a new connection, say):
            // not routed again, but its PUBREC must not overtake the first attempt's
            // deliveries to the journals, here and on every peer that may have them.
            targets = (0..self.shards).filter(|&shard| shard != self.id).collect();
            durability = later(durability, self.hooks.journal.barrier());
        }
        let reason = match () {
            _ if !protocol.is_v5() => ReasonCode::Success,
            _ if refused => ReasonCode::NotAuthorized,
            // MQTT 5.0 §3.3.2.3.2: the server may refuse a payload that is not the UTF-8 it claims.
            _ if payload_invalid => ReasonCode::PayloadFormatInvalid,
            _ if !matched => ReasonCode::NoMatchingSubscribers,
            _ => ReasonCode::Success,
        };
        let ack = LeanAck {
            rec: match qos {
                QoS::AtMostOnce => return,
                QoS::AtLeastOnce => false,
                QoS::ExactlyOnce => true,
            },
            packet_id,
            reason,
        };
        match retain_ack {
            // A retained message is acknowledged once its topic's owner has applied it, so a
            // client that saw the PUBACK finds it on every shard.
            Some(token) => {
                if let Some(conn) = self.conns.get_mut(index) {
                    conn.paused = true;
                    self.held_acks.insert(
                        token,
                        HeldAck {
                            conn: index,
                            packet: ack.packet(),
                            durability,
                            targets,
                        },
                    );
                }
            }
            // The common case, held inline while the journal writes.
            None if targets.is_empty() => self.lean_ack_when_durable(index, ack, durability),
            None => self.ack_after_peers(index, ack.packet(), durability, &targets),
        }
    }

    pub(super) fn on_ack(&mut self, index: ConnId, session: SessionId, kind: AckKind, ack: Ack) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        let was_empty = conn.out.is_empty();
        let Some(entry) = self.sessions.get_mut(session) else {
            return;
        };
        let online_since = entry.connected_at(self.started);
        entry.progress_secs = self.now_secs;
        entry.stuck_logged = false;
        let now = self.now;
        let before = self.hooks.journal.barrier();
        let on_sent = &mut Recorder::new(
            &mut self.stats,
            &mut self.hooks.journal,
            entry,
            online_since,
            now,
        );
        let entry = &mut entry.session;
        let mark = SessionMark::of(entry);
        let out = &mut conn.out;
        let result = match kind {
            AckKind::Ack => entry.on_puback(ack.packet_id, out, now, on_sent),
            AckKind::Rec => entry.on_pubrec(ack.packet_id, ack.reason, out, now, on_sent),
            AckKind::Comp => entry.on_pubcomp(ack.packet_id, out, now, on_sent),
        };
        self.stats.session_changed(mark, entry);
        if result.is_err() {
            return self.kill_conn(index, ReasonCode::ProtocolError, false);
        }
        if was_empty && !conn.out.is_empty() {
            self.wake_conn(index);
        }
        self.hold_if_recorded(Some(index), before);
        self.slow_consumer_maybe_ends(session);
        self.release_throttled(Some(session));
    }

    /// A message the broker itself publishes (`$SYS/...`): retained, QoS 0, from no client.
    pub fn publish_internal(&mut self, topic: &str, payload: Bytes, now: Instant) {
        self.set_now(now);
        let message = Arc::new(Message {
            topic: MqttStr::from(topic),
            payload,
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            publisher: MqttStr::default(),
            expires_at: None,
            received_at: None,
            origin_packet_id: 0,
        });
        self.route_publish(message);
        self.drain_local_inbox();
    }

    /// Publishes a will, if the publisher (`client_id`, `username`) may publish to its topic
    /// now (the check is made when the will is published, as in Mosquitto).
    // The will arrives boxed, as sessions and timers hold it.
    #[allow(clippy::boxed_local)]
    pub(super) fn publish_will(
        &mut self,
        client_id: &MqttStr,
        username: Option<&str>,
        will: Box<LastWill>,
    ) {
        let client = ClientRef {
            client_id,
            username,
            prepared: None,
        };
        if !self.hooks.authorization.may_publish(client, &will.topic) {
            tracing::info!(
                shard = self.id,
                client = %client_id,
                username = username.unwrap_or(""),
                topic = %will.topic,
                "will not published: not authorized"
            );
            self.stats.not_authorized += 1;
            self.stats.drop_messages(DropReason::NotAuthorized, 1);
            return;
        }
        let will = *will;
        let expires_at = will
            .properties
            .message_expiry_interval
            .map(|secs| self.now + Duration::from_secs(u64::from(secs)));
        let will_properties = will.properties.into_fields();
        let properties = Properties::from(PropertyFields {
            payload_format_indicator: will_properties.payload_format_indicator,
            content_type: will_properties.content_type,
            response_topic: will_properties.response_topic,
            correlation_data: will_properties.correlation_data,
            user_properties: will_properties.user_properties,
            ..PropertyFields::default()
        });
        let message = Arc::new(Message {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties,
            publisher: client_id.clone(),
            expires_at,
            received_at: None,
            origin_packet_id: 0,
        });
        tracing::debug!(shard = self.id, client = %client_id, topic = %message.topic, "publishing will");
        self.route_publish(message);
    }

    /// Routes a message published on this shard: retained store, local subscribers, and one
    /// forward per other interested shard.
    /// Returns whether any subscriber (on any shard, as far as the replicas know) matched.
    /// `retain_ack` says what the client's acknowledgement waits for when the message updates
    /// a retained topic: the owner shard's confirmation, or (when this shard owns the topic)
    /// the journal.
    pub(super) fn route_publish(&mut self, message: Arc<Message>) -> (bool, RetainWait) {
        let mut retain_ack = RetainWait::Nothing;
        if message.retain {
            let owned = if message.payload.is_empty() {
                None
            } else {
                // Retained messages live long: give them memory of their own instead of a slice
                // that pins the whole read buffer. Replayed at subscribe time, they are not
                // measured for latency.
                Some(Arc::new(Message {
                    topic: MqttStr::from(message.topic.as_str()),
                    payload: Bytes::copy_from_slice(&message.payload),
                    received_at: None,
                    origin_packet_id: 0,
                    ..(*message).clone()
                }))
            };
            let owner = self.topic_owner(&message.topic);
            if owner == self.id {
                // This shard serialises the topic: apply now, in publish order.
                let durability = self.own_retained_update(&message.topic, owned, None);
                retain_ack = RetainWait::Journal(durability);
            } else {
                let token = self.new_token();
                retain_ack = RetainWait::Owner(token);
                self.send(
                    owner,
                    ShardMsg::RetainUpdate {
                        topic: message.topic.clone(),
                        message: owned,
                        ack: Some((self.id as u16, token)),
                    },
                );
            }
        }
        let mut matched = self.route_local(&message);
        matched |= self.route_shared(&message);
        let shards = self.interest.shards_for(&message.topic);
        matched |= shards.iter().any(|shard| shard != self.id);
        for shard in shards.iter() {
            if shard != self.id && shard < self.shards {
                self.stats.forwarded += 1;
                self.send(shard, ShardMsg::Publish(Arc::clone(&message)));
            }
        }
        (matched, retain_ack)
    }
}

/// What the acknowledgement of a retained publish waits for.
#[derive(Debug, Clone, Copy)]
pub(super) enum RetainWait {
    /// Not a retained update.
    Nothing,
    /// The owner shard's `RetainAck` with this token.
    Owner(u64),
    /// This shard owns the topic: the journal's record of the update.
    Journal(Durability),
}
