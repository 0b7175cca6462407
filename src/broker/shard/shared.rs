//! Shared subscriptions: the replicated group index, member choice per message, redelivery of a departed member's messages.

use super::*;

/// The members of one shared-subscription group on this shard.
#[derive(Debug, Default)]
pub(super) struct SharedGroup {
    pub(super) members: Vec<(SessionId, SubscriptionOptions, u32)>,
    pub(super) cursor: usize,
    pub(super) sticky: Option<SessionId>,
}

impl Shard {
    pub(super) fn add_shared_member(
        &mut self,
        session: SessionId,
        full: &MqttStr,
        options: (SubscriptionOptions, u32),
    ) {
        let group = self.shared_groups.entry(full.clone()).or_default();
        let first = group.members.is_empty();
        match group.members.iter_mut().find(|m| m.0 == session) {
            Some(member) => *member = (session, options.0, options.1),
            None => group.members.push((session, options.0, options.1)),
        }
        if first {
            self.apply_shared_interest(full, self.id, true);
            let shard = self.id as u16;
            self.broadcast(|| ShardMsg::SharedInterest {
                filter: full.clone(),
                shard,
                added: true,
            });
        }
    }

    pub(super) fn remove_shared_member(&mut self, session: SessionId, full: &MqttStr) {
        let Some(group) = self.shared_groups.get_mut(full) else {
            return;
        };
        group.members.retain(|m| m.0 != session);
        if group.sticky == Some(session) {
            group.sticky = None;
        }
        if group.members.is_empty() {
            self.shared_groups.remove(full);
            self.apply_shared_interest(full, self.id, false);
            let shard = self.id as u16;
            self.broadcast(|| ShardMsg::SharedInterest {
                filter: full.clone(),
                shard,
                added: false,
            });
        }
    }

    /// Replica update: `shard` gained its first or lost its last member of group `full`.
    pub(super) fn apply_shared_interest(&mut self, full: &MqttStr, shard: usize, added: bool) {
        let Some(Ok(parsed)) = topic::parse_shared(full) else {
            return;
        };
        let inner = parsed.filter;
        let mut shards = self
            .shared_index
            .get(inner, full)
            .copied()
            .unwrap_or_default();
        if added {
            shards.insert(shard);
        } else {
            shards.remove(shard);
        }
        if shards.is_empty() {
            self.shared_index.remove(inner, full);
        } else {
            self.shared_index.insert(inner, full.clone(), shards);
        }
    }

    pub(super) fn next_random(&mut self) -> u64 {
        // xorshift64: member selection needs spread, not cryptographic quality.
        let mut x = self.random_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random_state = x;
        x
    }

    /// On the publishing shard: one delivery per matching shared-subscription group.
    pub(super) fn route_shared(&mut self, message: &Arc<Message>) -> bool {
        if self.shared_index.is_empty() {
            return false;
        }
        // A scratch list reused across messages: routing allocates nothing per message.
        let mut groups = std::mem::take(&mut self.shared_scratch);
        groups.clear();
        self.shared_index
            .for_each_match(&message.topic, |group, _| groups.push(group.clone()));
        let matched = !groups.is_empty();
        for group in groups.drain(..) {
            self.route_shared_group(&group, message);
        }
        self.shared_scratch = groups;
        matched
    }

    /// Picks the shard that serves this message for `group` and hands it over.
    pub(super) fn route_shared_group(&mut self, group: &MqttStr, message: &Arc<Message>) {
        let Some(Ok(parsed)) = topic::parse_shared(group) else {
            return;
        };
        let Some(shards) = self.shared_index.get(parsed.filter, group).copied() else {
            tracing::debug!(shard = self.id, %group, "shared group has no members; message dropped");
            return;
        };
        let count = shards.len().max(1);
        let pick = match self.config.shared_subscription_strategy {
            SharedStrategy::RoundRobin => {
                let cursor = self.shared_cursor.entry(group.clone()).or_insert(0);
                *cursor = cursor.wrapping_add(1);
                *cursor % count
            }
            SharedStrategy::Random => (self.next_random() % count as u64) as usize,
            // Sticky prefers this shard's members, then the lowest shard with members.
            SharedStrategy::Sticky => shards.iter().position(|s| s == self.id).unwrap_or(0),
        };
        let target = shards.iter().nth(pick).unwrap_or(self.id);
        if target == self.id {
            self.deliver_shared(group, message);
        } else {
            self.send(
                target,
                ShardMsg::SharedPublish {
                    group: group.clone(),
                    message: Arc::clone(message),
                },
            );
        }
    }

    /// Delivers a shared-subscription message to one local member of `group`: connected
    /// members first, in the configured order; an offline persistent member queues it.
    pub(super) fn deliver_shared(&mut self, group_key: &MqttStr, message: &Arc<Message>) {
        let strategy = self.config.shared_subscription_strategy;
        let random = self.next_random() as usize;
        let Some(group) = self.shared_groups.get(group_key) else {
            // Membership changed while the message was in flight: choose again among the
            // shards that still have members.
            let Some(Ok(parsed)) = topic::parse_shared(group_key) else {
                return;
            };
            let elsewhere = self
                .shared_index
                .get(parsed.filter, group_key)
                .is_some_and(|shards| shards.iter().any(|s| s != self.id));
            if elsewhere {
                self.route_shared_group(group_key, message);
            }
            return;
        };
        // Chosen under a shared borrow of the group: no copy of the member list per message.
        let members = &group.members;
        let count = members.len();
        if count == 0 {
            return;
        }
        let start = match strategy {
            SharedStrategy::RoundRobin => group.cursor.wrapping_add(1) % count,
            SharedStrategy::Random => random % count,
            SharedStrategy::Sticky => group
                .sticky
                .and_then(|s| members.iter().position(|m| m.0 == s))
                .unwrap_or(0),
        };
        let online = |shard: &Shard, session: SessionId| {
            shard
                .sessions
                .get(session)
                .and_then(|e| e.conn)
                .and_then(|c| shard.conns.get(c))
                .is_some_and(|c| c.kill.is_none())
        };
        let chosen_offset = (0..count)
            .find(|offset| online(self, members[(start + offset) % count].0))
            .unwrap_or(0);
        let chosen = members[(start + chosen_offset) % count];
        if let Some(group) = self.shared_groups.get_mut(group_key) {
            group.cursor = start + chosen_offset;
            group.sticky = Some(chosen.0);
        }
        let (session, options, id) = chosen;
        let qos = message.qos.min(options.qos);
        let retain = options.retain_as_published && message.retain;
        let ids: &[u32] = if id == 0 { &[] } else { &[id] };
        self.deliver_tagged(
            session,
            message,
            qos,
            retain,
            ids,
            Some(group_key),
            self.now,
        );
    }
}
