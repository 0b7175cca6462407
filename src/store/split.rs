//! What a restarted broker's shards each install: the recovered state split for the current
//! shard count (sessions by home shard, retained messages by topic owner), and what each
//! shard's first snapshot must carry for others (see [`Carry`]). Pure: start-up and the
//! simulation tests share it.

use super::journal::Carry;
use super::recover::{
    rehome, RecoveredOrigin, RecoveredRetained, RecoveredSession, RecoveredState,
};
use crate::placement::{home_shard, topic_owner};

/// One shard's part of a recovered state.
#[derive(Debug, Default)]
pub struct ShardPart {
    /// Sessions to install (their home is this shard).
    pub sessions: Vec<RecoveredSession>,
    /// Retained messages of the topics it owns.
    pub retained: Vec<(String, RecoveredRetained)>,
    /// What its old files held for other shards, for its first snapshot.
    pub carry: Carry,
    /// Every recovered origin entry, each with the clients homed here (possibly none).
    pub origins: Vec<RecoveredOrigin>,
}

/// Splits `state` between `shards` shards (at least one).
pub fn split(mut state: RecoveredState, shards: usize) -> Vec<ShardPart> {
    let shards = shards.max(1);
    let mut parts: Vec<ShardPart> = (0..shards).map(|_| ShardPart::default()).collect();
    let share = state.retained.len() / shards;
    for part in &mut parts {
        part.retained.reserve(share + share / 8);
    }
    for session in state.sessions.values() {
        let source = usize::from(session.source_shard);
        if source < shards && source != home_shard(&session.client_id, shards) {
            parts[source].carry.sessions.push(session.clone());
        }
    }
    for (topic, message) in std::mem::take(&mut state.retained) {
        let owner = topic_owner(&topic, shards).min(shards - 1);
        let source = usize::from(message.source_shard);
        if source < shards && source != owner {
            parts[source]
                .carry
                .retained
                .push((topic.clone(), message.clone()));
        }
        parts[owner].retained.push((topic, message));
    }
    for origin in std::mem::take(&mut state.origins) {
        for (shard, part) in parts.iter_mut().enumerate() {
            let clients: std::collections::BTreeSet<String> = origin
                .clients
                .iter()
                .filter(|client| home_shard(client, shards).min(shards - 1) == shard)
                .cloned()
                .collect();
            let others: std::collections::BTreeSet<String> =
                origin.clients.difference(&clients).cloned().collect();
            // Every shard learns every key, with or without clients of its own: entries
            // may sit on shards the publisher's resend does not reach, so its commit goes
            // to all of them (see `broker/shard/origins.rs`).
            part.origins.push(RecoveredOrigin {
                clients,
                ..origin.clone()
            });
            // The old file that held them may be this shard's: its first snapshot keeps
            // them until the home shards' snapshots are durable.
            if !others.is_empty() {
                part.carry.origins.push(RecoveredOrigin {
                    clients: others,
                    ..origin.clone()
                });
            }
        }
    }
    let sessions = rehome(std::mem::take(&mut state.sessions), shards, home_shard);
    for (part, sessions) in parts.iter_mut().zip(sessions) {
        part.sessions = sessions;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each shard installs the origin entries of the clients homed on it, knows every key, and
    /// carries the other clients' entries in its first snapshot: the old file that held them
    /// may be its own.
    #[test]
    fn origin_entries_go_home_and_are_carried_by_every_other_shard() {
        let clients: std::collections::BTreeSet<String> =
            (0..8).map(|i| format!("client-{i}")).collect();
        let state = RecoveredState {
            origins: vec![RecoveredOrigin {
                publisher: "publisher".into(),
                packet_id: 7,
                digest: 42,
                clients: clients.clone(),
            }],
            ..RecoveredState::default()
        };
        let parts = split(state, 3);
        let mut installed = std::collections::BTreeSet::new();
        for (shard, part) in parts.iter().enumerate() {
            assert_eq!(part.origins.len(), 1, "every shard knows the key");
            let own: std::collections::BTreeSet<String> = part
                .origins
                .iter()
                .flat_map(|o| o.clients.iter().cloned())
                .collect();
            assert!(own.iter().all(|c| home_shard(c, 3) == shard));
            let carried: std::collections::BTreeSet<String> = part
                .carry
                .origins
                .iter()
                .flat_map(|o| o.clients.iter().cloned())
                .collect();
            assert!(own.is_disjoint(&carried));
            let mut all = own.clone();
            all.extend(carried);
            assert_eq!(all, clients, "shard {shard} keeps every client's entry");
            installed.extend(own);
        }
        assert_eq!(installed, clients);
    }
}
