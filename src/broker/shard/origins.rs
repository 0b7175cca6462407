//! QoS 2 exactly once across shards and crashes. A QoS 2 PUBLISH from a durable session is
//! recorded as received (its packet id) by the publisher's shard only once the shards it was
//! routed to have written their deliveries; a crash in between makes the client resend it,
//! and the publisher's shard, which lost the packet id, routes it again. So each shard that
//! writes deliveries of such a publish from a peer also writes an *origin entry* (publisher,
//! packet id, a digest of topic and payload, the durable subscribers that got it): a resend
//! matching it skips those subscribers. The publisher's shard clears the entries (and waits
//! for that before its PUBREC) once its own record of the packet id is durable; from then on
//! it recognises a resend itself.
//!
//! The publisher's shard writes entries for its own subscribers too: with peers to wait for,
//! its record of the packet id comes after their answers, so its local deliveries can be on
//! disk without it. A moved session's old shard forwards its deliveries to the new shard,
//! which writes the entry; the old shard relays `OriginCommitted` there.
//!
//! A session that moves to another shard takes its marks along (`Granted`): the new shard
//! writes them under its own journal and the old one relays `OriginCommitted` there, as for a
//! forwarded delivery. A session that ends loses its marks (a new session of the same client
//! id has not got the publish).
//!
//! Not covered: shared subscriptions (a resend may pick another member of the group); a torn
//! write (power loss) that keeps deliveries without the entry written after them.

use super::*;
use crate::store::crc::Crc32c;
use crate::store::recover::RecoveredOrigin;

/// One publish's origin entry on this shard.
#[derive(Debug)]
pub(super) struct Origin {
    /// CRC-32C of topic and payload: a packet id reused for another message is another entry.
    pub(super) digest: u32,
    /// Durable sessions of this shard that have the message.
    pub(super) clients: Vec<MqttStr>,
    /// Shards this one forwarded it to (moved sessions' new shards): they have entries of
    /// their own, and `OriginCommitted` is relayed to them.
    pub(super) forwarded: Vec<u16>,
    /// This shard's journal holds the entry (so clearing it must be journaled, even once
    /// its clients have moved away).
    pub(super) written: bool,
}

/// Topic and payload of `message`, checksummed.
pub(super) fn digest(message: &Message) -> u32 {
    let mut crc = Crc32c::new();
    crc.update(message.topic.as_bytes());
    crc.update(&[0]);
    crc.update(&message.payload);
    crc.finish()
}

impl Shard {
    /// Installs the origin entries recovered for this shard's sessions (after
    /// `install_recovered`); `journal_image` writes them into the first snapshot.
    pub fn install_origins(&mut self, origins: Vec<RecoveredOrigin>) {
        for origin in origins {
            let key = (MqttStr::from(origin.publisher.as_str()), origin.packet_id);
            self.recovered_origins.insert(key.clone());
            if origin.clients.is_empty() {
                continue;
            }
            self.origins.insert(
                key,
                Origin {
                    digest: origin.digest,
                    clients: origin
                        .clients
                        .iter()
                        .map(|client| MqttStr::from(client.as_str()))
                        .collect(),
                    forwarded: Vec::new(),
                    // The first snapshot rewrites it.
                    written: true,
                },
            );
        }
    }

    /// The origin key of `message` (a QoS 2 publish of a durable session), when there is a
    /// journal. Entries are checked whatever shard the publish comes from (after a restart
    /// the subscriber may live on the publisher's shard), written only for peers' publishes
    /// (`from` another shard).
    pub(super) fn origin_key(&self, message: &Message) -> Option<(MqttStr, u16)> {
        (message.origin_packet_id != 0 && self.hooks.journal.enabled())
            .then(|| (message.publisher.clone(), message.origin_packet_id))
    }

    /// Whether `client` already has the publish `key` (a resend after a crash). The DUP flag
    /// cannot tell: clients in the field (rumqttc among them) resend without it.
    pub(super) fn origin_has(&self, key: &(MqttStr, u16), digest: u32, client: &str) -> bool {
        self.origins
            .get(key)
            .is_some_and(|o| o.digest == digest && o.clients.iter().any(|c| &**c == client))
    }

    /// The entry of `key`, made (or remade, for a reused packet id) for `digest`.
    fn origin_entry(&mut self, key: (MqttStr, u16), digest: u32) -> &mut Origin {
        let entry = self.origins.entry(key).or_insert_with(|| Origin {
            digest,
            clients: Vec::new(),
            forwarded: Vec::new(),
            written: false,
        });
        if entry.digest != digest {
            // The packet id was reused: the journal's later record replaces the old entry.
            *entry = Origin {
                digest,
                clients: Vec::new(),
                forwarded: Vec::new(),
                written: entry.written,
            };
        }
        entry
    }

    /// Records that `clients` (durable sessions here) got the publish `key`, after their
    /// deliveries (a torn write keeps the deliveries without the entry, never the reverse).
    pub(super) fn origin_received(
        &mut self,
        key: (MqttStr, u16),
        digest: u32,
        clients: &[MqttStr],
    ) {
        if clients.is_empty() {
            return;
        }
        self.hooks.journal.append(&JournalRecord::OriginReceived {
            publisher: &key.0,
            packet_id: key.1,
            digest,
            clients,
        });
        let entry = self.origin_entry(key, digest);
        entry.written = true;
        for client in clients {
            if !entry.clients.contains(client) {
                entry.clients.push(client.clone());
            }
        }
    }

    /// `client`'s session moves to `shard`: its marks go with it (returned for `Granted`),
    /// and `OriginCommitted` for them will be relayed there. This shard's journal keeps its
    /// records until then: if the new shard's copy is lost in a crash, recovery still finds
    /// them (entries are re-homed by client).
    pub(super) fn origins_move_client(&mut self, client: &str, shard: u16) -> Vec<OriginMark> {
        let mut marks = Vec::new();
        for ((publisher, packet_id), origin) in self.origins.iter_mut() {
            let Some(at) = origin.clients.iter().position(|c| &**c == client) else {
                continue;
            };
            origin.clients.swap_remove(at);
            if !origin.forwarded.contains(&shard) {
                origin.forwarded.push(shard);
            }
            marks.push(OriginMark {
                publisher: publisher.clone(),
                packet_id: *packet_id,
                digest: origin.digest,
            });
        }
        marks
    }

    /// A moved session of `client` arrived with its marks: they are written here.
    pub(super) fn origins_arrive(&mut self, client: &MqttStr, marks: Vec<OriginMark>) {
        if !self.hooks.journal.enabled() {
            return;
        }
        for mark in marks {
            self.origin_received(
                (mark.publisher, mark.packet_id),
                mark.digest,
                std::slice::from_ref(client),
            );
        }
    }

    /// `client`'s session ended here: a later session of that client id has not got those
    /// publishes. Each entry it was in is rewritten without it.
    pub(super) fn origins_forget_client(&mut self, client: &str) {
        let keys: Vec<(MqttStr, u16)> = self
            .origins
            .iter()
            .filter(|(_, origin)| origin.clients.iter().any(|c| &**c == client))
            .map(|(key, _)| key.clone())
            .collect();
        for key in keys {
            let Some(origin) = self.origins.get_mut(&key) else {
                continue;
            };
            origin.clients.retain(|c| &**c != client);
            let (digest, remaining) = (origin.digest, origin.clients.clone());
            self.hooks.journal.append(&JournalRecord::OriginCleared {
                publisher: &key.0,
                packet_id: key.1,
            });
            if !remaining.is_empty() {
                self.hooks.journal.append(&JournalRecord::OriginReceived {
                    publisher: &key.0,
                    packet_id: key.1,
                    digest,
                    clients: &remaining,
                });
            }
        }
    }

    /// Shards that may hold entries for `message` (published here) that its routing does not
    /// reach: every shard for a key recovery found (its entries sit with the subscribers' home
    /// shards, and copies in other shards' first snapshots), else those this shard's entry was
    /// passed on to (moved sessions' new shards). The publisher's shard waits for them and
    /// commits to them like the shards routed to.
    pub(super) fn origin_extra_targets(&self, message: &Message) -> Vec<usize> {
        let Some(key) = self.origin_key(message) else {
            return Vec::new();
        };
        if self.recovered_origins.contains(&key) {
            return (0..self.shards).filter(|&s| s != self.id).collect();
        }
        self.origins
            .get(&key)
            .filter(|origin| origin.digest == digest(message))
            .map(|origin| origin.forwarded.iter().map(|&s| usize::from(s)).collect())
            .unwrap_or_default()
    }

    /// The durable session of publisher `client` ended: no resend of its unfinished QoS 2
    /// publishes (`pending`, and any recovery found) will come, so every shard drops their
    /// entries (told without waiting: an entry outliving this only makes a later resend of
    /// the same packet id, topic and payload skip a subscriber).
    pub(super) fn origins_publisher_ended(&mut self, client: &MqttStr, pending: Vec<u16>) {
        let mut packet_ids = pending;
        for (publisher, packet_id) in &self.recovered_origins {
            if publisher == client && !packet_ids.contains(packet_id) {
                packet_ids.push(*packet_id);
            }
        }
        self.origins_drop_everywhere(client, packet_ids);
    }

    /// Every shard drops its entries for `packet_ids` of publisher `client` (told without
    /// waiting for answers).
    pub(super) fn origins_drop_everywhere(&mut self, client: &MqttStr, packet_ids: Vec<u16>) {
        if packet_ids.is_empty() {
            return;
        }
        let token = self.new_token();
        for packet_id in packet_ids {
            // Every shard is told below, those it passed entries on to included.
            let _passed_on = self.origin_clear_local(client, packet_id);
            let (shards, own) = (self.shards, self.id);
            for shard in (0..shards).filter(|&s| s != own) {
                let commit = ShardMsg::OriginCommitted {
                    from: self.id as u16,
                    token,
                    publisher: client.clone(),
                    packet_id,
                };
                self.send(shard, commit);
            }
        }
    }

    /// A delivery of a peer's publish forwarded to `shard` (a moved session's new shard).
    pub(super) fn origin_forwarded(&mut self, message: &Message, shard: u16) {
        let from_peer = self.mesh_source.is_some_and(|peer| peer != self.id);
        let Some(key) = self.origin_key(message).filter(|_| from_peer) else {
            return;
        };
        let entry = self.origin_entry(key, digest(message));
        if !entry.forwarded.contains(&shard) {
            entry.forwarded.push(shard);
        }
    }

    /// A forwarded delivery arrives for `slot` (a session here): skipped if it has the
    /// publish already (a resend), else delivered and, for a durable session, recorded.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn deliver_forwarded(
        &mut self,
        slot: SessionId,
        message: &Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: &[u32],
        group: Option<&MqttStr>,
    ) {
        let origin = self.origin_key(message).filter(|_| group.is_none());
        let mut received = Vec::new();
        if let (Some(key), Some(entry)) = (&origin, self.sessions.get(slot)) {
            if !entry.session.clean && entry.moved_to().is_none() {
                let digest = digest(message);
                if self.origin_has(key, digest, &entry.session.client_id) {
                    return;
                }
                received.push(entry.session.client_id.clone());
            }
        }
        let now = self.now;
        self.deliver_tagged(slot, message, qos, retain, subscription_ids, group, now);
        // Forwarded by another shard's stub: whoever published it, the forwarding shard
        // (or the publisher's, which counted this one among its targets) will commit it.
        if let Some(key) = origin {
            self.origin_received(key, digest(message), &received);
        }
    }

    /// This shard (the publisher's) recorded the packet id: its own entry for the local
    /// deliveries goes (after that record, in the same file).
    /// Returns the shards the entry was passed on to (moved sessions' new shards), which
    /// must be sent `OriginCommitted` too.
    #[must_use]
    pub(super) fn origin_clear_local(&mut self, publisher: &MqttStr, packet_id: u16) -> Vec<u16> {
        let key = (publisher.clone(), packet_id);
        // A recovered key: this shard's first snapshot may hold a copy for other shards.
        let recovered = self.recovered_origins.remove(&key);
        let origin = self.origins.remove(&key);
        if recovered || origin.as_ref().is_some_and(|o| o.written) {
            self.hooks.journal.append(&JournalRecord::OriginCleared {
                publisher,
                packet_id,
            });
        }
        origin.map(|o| o.forwarded).unwrap_or_default()
    }

    /// `OriginCommitted`: the publisher's shard recorded the packet id; the entry goes (and
    /// is relayed to where this shard forwarded the publish), and the answer waits for that.
    pub(super) fn on_origin_committed(
        &mut self,
        from: usize,
        token: u64,
        publisher: MqttStr,
        packet_id: u16,
    ) {
        let key = (publisher.clone(), packet_id);
        // A recovered key: this shard's first snapshot may hold a copy for other shards.
        let recovered = self.recovered_origins.remove(&key);
        let removed = self.origins.remove(&key);
        let own = match &removed {
            _ if recovered => self.hooks.journal.append(&JournalRecord::OriginCleared {
                publisher: &publisher,
                packet_id,
            }),
            Some(origin) if origin.written => {
                self.hooks.journal.append(&JournalRecord::OriginCleared {
                    publisher: &publisher,
                    packet_id,
                })
            }
            _ => Durability::Now,
        };
        let forwarded = removed.map(|origin| origin.forwarded).unwrap_or_default();
        if forwarded.is_empty() {
            return self.send_when_durable(from, ShardMsg::StoreAck { token }, own);
        }
        let relay = self.new_token();
        for &shard in &forwarded {
            self.send(
                usize::from(shard),
                ShardMsg::OriginCommitted {
                    from: self.id as u16,
                    token: relay,
                    publisher: publisher.clone(),
                    packet_id,
                },
            );
        }
        self.relays.insert(
            relay,
            Relay {
                from,
                token,
                waiting: u16::try_from(forwarded.len()).unwrap_or(u16::MAX),
                own,
                dependents: Vec::new(),
            },
        );
    }

    /// Writes every origin entry (a snapshot must keep them).
    pub(super) fn journal_origins(&mut self) {
        for ((publisher, packet_id), origin) in &self.origins {
            if origin.clients.is_empty() {
                continue;
            }
            self.hooks.journal.append(&JournalRecord::OriginReceived {
                publisher,
                packet_id: *packet_id,
                digest: origin.digest,
                clients: &origin.clients,
            });
        }
    }
}
