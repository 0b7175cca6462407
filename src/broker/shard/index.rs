//! The index of this shard's sessions by client id, keyed by the client id each session entry
//! already holds.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

use super::{GenSlab, SessionEntry, SessionId, SessionKind};

type Sessions = GenSlab<SessionKind, Box<SessionEntry>>;

/// Client id -> session slot in 12 bytes a session (a 32-bit hash and the handle) instead of a
/// 40-byte map entry with its own copy of the key: lookups compare against the session's own
/// client id. The hash is kept so the table can grow without reading the sessions, and so an
/// entry can be removed by its handle after its session is gone.
#[derive(Debug, Default)]
pub(super) struct SessionIndex {
    table: HashTable<Indexed>,
    // Client ids are chosen by clients: a keyed hash, as std's maps use.
    hasher: RandomState,
}

#[derive(Debug, Clone, Copy)]
struct Indexed {
    hash: u32,
    slot: SessionId,
}

/// The table's hash of a stored 32-bit hash: its bits choose the bucket and its high bits the
/// tag, which hashbrown takes from the low and the top bits of a u64.
fn spread(hash: u32) -> u64 {
    (u64::from(hash) << 32) | u64::from(hash)
}

fn key_of(sessions: &Sessions, slot: SessionId) -> Option<&str> {
    sessions.get(slot).map(|e| e.session.client_id.as_str())
}

impl SessionIndex {
    fn hash(&self, client_id: &str) -> u32 {
        // The upper half of a 64-bit keyed hash; truncation keeps it uniform.
        (self.hasher.hash_one(client_id) >> 32) as u32
    }

    /// The session indexed for `client_id`.
    pub(super) fn get(&self, sessions: &Sessions, client_id: &str) -> Option<SessionId> {
        let hash = self.hash(client_id);
        self.table
            .find(spread(hash), |e| {
                e.hash == hash && key_of(sessions, e.slot) == Some(client_id)
            })
            .map(|e| e.slot)
    }

    /// Indexes `slot` (whose session has `client_id`) for `client_id`; the slot indexed before
    /// for it, if any, is returned.
    pub(super) fn insert(
        &mut self,
        sessions: &Sessions,
        client_id: &str,
        slot: SessionId,
    ) -> Option<SessionId> {
        let hash = self.hash(client_id);
        if let Some(e) = self.table.find_mut(spread(hash), |e| {
            e.hash == hash && key_of(sessions, e.slot) == Some(client_id)
        }) {
            return Some(std::mem::replace(&mut e.slot, slot));
        }
        self.table
            .insert_unique(spread(hash), Indexed { hash, slot }, |e| spread(e.hash));
        None
    }

    /// Removes the entry for `client_id` (whose session must still be in `sessions`).
    pub(super) fn remove(&mut self, sessions: &Sessions, client_id: &str) -> Option<SessionId> {
        let hash = self.hash(client_id);
        let entry = self
            .table
            .find_entry(spread(hash), |e| {
                e.hash == hash && key_of(sessions, e.slot) == Some(client_id)
            })
            .ok()?;
        Some(entry.remove().0.slot)
    }

    /// Removes the entry for `client_id` if it is `slot` (whose session may be gone already).
    pub(super) fn remove_slot(&mut self, client_id: &str, slot: SessionId) -> bool {
        let hash = self.hash(client_id);
        match self
            .table
            .find_entry(spread(hash), |e| e.hash == hash && e.slot == slot)
        {
            Ok(entry) => {
                entry.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// Every indexed slot.
    pub(super) fn slots(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.table.iter().map(|e| e.slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexed_entry_is_twelve_bytes() {
        assert_eq!(std::mem::size_of::<Indexed>(), 12);
    }
}
