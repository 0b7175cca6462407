//! Client-id indexes that keep no key of their own: the index of this shard's sessions (keyed
//! by the client id each session entry holds) and the home shard's registry (keyed by the
//! client id stored with each registration).

use std::hash::{BuildHasher, RandomState};
use std::marker::PhantomData;

use hashbrown::HashTable;

use super::{GenSlab, MqttStr, Registration, SessionEntry, SessionId, SessionKind};
use crate::broker::handles::{Handle, RegistrationKind};

type Sessions = GenSlab<SessionKind, Box<SessionEntry>>;

/// Client id -> slot in 8 bytes an entry (a 32-bit hash and the slot number) instead of a map
/// entry with its own copy of the key: lookups compare against the key the slot's current
/// occupant holds and answer with its current handle (an entry whose slot was reused by
/// another client id does not match). The hash is kept so the table can grow without reading
/// the slots, and so an entry can be removed after its slot is vacated.
#[derive(Debug)]
struct ClientIndex<K> {
    table: HashTable<Indexed<K>>,
    // Client ids are chosen by clients: a keyed hash, as std's maps use.
    hasher: RandomState,
}

impl<K> Default for ClientIndex<K> {
    fn default() -> Self {
        ClientIndex {
            table: HashTable::new(),
            hasher: RandomState::new(),
        }
    }
}

#[derive(Debug)]
struct Indexed<K> {
    hash: u32,
    slot: u32,
    kind: PhantomData<fn() -> K>,
}

/// The table's hash of a stored 32-bit hash: its bits choose the bucket and its high bits the
/// tag, which hashbrown takes from the low and the top bits of a u64.
fn spread(hash: u32) -> u64 {
    (u64::from(hash) << 32) | u64::from(hash)
}

impl<K> ClientIndex<K> {
    fn hash(&self, client_id: &str) -> u32 {
        // The upper half of a 64-bit keyed hash; truncation keeps it uniform.
        (self.hasher.hash_one(client_id) >> 32) as u32
    }

    /// The slot indexed for `client_id`; `key_of` reads the current occupant of a slot
    /// number: its handle and key.
    fn get<'a>(
        &self,
        client_id: &str,
        key_of: impl Fn(u32) -> Option<(Handle<K>, &'a str)>,
    ) -> Option<Handle<K>> {
        let hash = self.hash(client_id);
        let found = self.table.find(spread(hash), |e| {
            e.hash == hash && key_of(e.slot).is_some_and(|(_, key)| key == client_id)
        })?;
        key_of(found.slot).map(|(handle, _)| handle)
    }

    /// Indexes `slot` (which holds `client_id`); the slot indexed before for it, if any.
    fn insert<'a>(
        &mut self,
        client_id: &str,
        slot: Handle<K>,
        key_of: impl Fn(u32) -> Option<(Handle<K>, &'a str)>,
    ) -> Option<Handle<K>> {
        let hash = self.hash(client_id);
        let number = u32::try_from(slot.slot()).unwrap_or(u32::MAX);
        if let Some(e) = self.table.find_mut(spread(hash), |e| {
            e.hash == hash && key_of(e.slot).is_some_and(|(_, key)| key == client_id)
        }) {
            let old = key_of(e.slot).map(|(handle, _)| handle);
            e.slot = number;
            return old;
        }
        let entry = Indexed {
            hash,
            slot: number,
            kind: PhantomData,
        };
        self.table
            .insert_unique(spread(hash), entry, |e| spread(e.hash));
        None
    }

    /// Removes the entry for `client_id` if it is `slot`'s (whose key may be gone already).
    fn remove_slot(&mut self, client_id: &str, slot: Handle<K>) -> bool {
        let hash = self.hash(client_id);
        let number = slot.slot();
        match self.table.find_entry(spread(hash), |e| {
            e.hash == hash && e.slot as usize == number
        }) {
            Ok(entry) => {
                entry.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// Every indexed slot number.
    fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.table.iter().map(|e| e.slot)
    }
}

/// This shard's sessions by client id (at most one indexed per client id).
#[derive(Debug, Default)]
pub(super) struct SessionIndex(ClientIndex<SessionKind>);

fn session_key<'a>(sessions: &'a Sessions) -> impl Fn(u32) -> Option<(SessionId, &'a str)> + 'a {
    |number| {
        let slot = sessions.handle_at(number)?;
        Some((slot, sessions.get(slot)?.session.client_id.as_str()))
    }
}

impl SessionIndex {
    /// The session indexed for `client_id`.
    pub(super) fn get(&self, sessions: &Sessions, client_id: &str) -> Option<SessionId> {
        self.0.get(client_id, session_key(sessions))
    }

    /// Indexes `slot` (whose session has `client_id`) for `client_id`; the slot indexed before
    /// for it, if any, is returned.
    pub(super) fn insert(
        &mut self,
        sessions: &Sessions,
        client_id: &str,
        slot: SessionId,
    ) -> Option<SessionId> {
        self.0.insert(client_id, slot, session_key(sessions))
    }

    /// Removes the entry for `client_id` (whose session must still be in `sessions`).
    pub(super) fn remove(&mut self, sessions: &Sessions, client_id: &str) -> Option<SessionId> {
        let slot = self.get(sessions, client_id)?;
        self.0.remove_slot(client_id, slot).then_some(slot)
    }

    /// Removes the entry for `client_id` if it is `slot` (whose session may be gone already).
    pub(super) fn remove_slot(&mut self, client_id: &str, slot: SessionId) -> bool {
        self.0.remove_slot(client_id, slot)
    }

    /// Every indexed slot number, occupied or not (for the model checks).
    #[cfg(test)]
    pub(super) fn slot_numbers(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.slots()
    }

    /// Every indexed session (its current handle).
    pub(super) fn slots<'a>(
        &'a self,
        sessions: &'a Sessions,
    ) -> impl Iterator<Item = SessionId> + 'a {
        self.0
            .slots()
            .filter_map(|number| sessions.handle_at(number))
    }
}

/// The home shard's registrations by client id: each stored with its client id in a slab
/// that grows by chunks, found through a [`ClientIndex`]. Per registration: 64 bytes of slab
/// slot and 8 of index, and no table of whole entries to copy and leave behind as it grows.
#[derive(Debug, Default)]
pub(super) struct Registry {
    index: ClientIndex<RegistrationKind>,
    records: Records,
}

type Records = GenSlab<RegistrationKind, (MqttStr, Registration)>;

fn record_key<'a>(
    records: &'a Records,
) -> impl Fn(u32) -> Option<(Handle<RegistrationKind>, &'a str)> + 'a {
    |number| {
        let slot = records.handle_at(number)?;
        Some((slot, records.get(slot)?.0.as_str()))
    }
}

impl Registry {
    fn find(&self, client_id: &str) -> Option<Handle<RegistrationKind>> {
        self.index.get(client_id, record_key(&self.records))
    }

    /// The registration of `client_id`.
    pub(super) fn get(&self, client_id: &str) -> Option<&Registration> {
        let slot = self.find(client_id)?;
        self.records.get(slot).map(|(_, r)| r)
    }

    /// The registration of `client_id`, to change.
    pub(super) fn get_mut(&mut self, client_id: &str) -> Option<&mut Registration> {
        let slot = self.find(client_id)?;
        self.records.get_mut(slot).map(|(_, r)| r)
    }

    /// Registers `client_id`, replacing (and returning) its registration if it had one.
    pub(super) fn insert(
        &mut self,
        client_id: MqttStr,
        registration: Registration,
    ) -> Option<Registration> {
        if let Some(existing) = self.get_mut(&client_id) {
            return Some(std::mem::replace(existing, registration));
        }
        let slot = self.records.insert((client_id, registration))?;
        let records = &self.records;
        let key = records.get(slot).map(|(key, _)| key.as_str()).unwrap_or("");
        self.index.insert(key, slot, record_key(records));
        None
    }

    /// Forgets the registration of `client_id`.
    pub(super) fn remove(&mut self, client_id: &str) -> Option<Registration> {
        let slot = self.find(client_id)?;
        self.index.remove_slot(client_id, slot);
        self.records.remove(slot).map(|(_, r)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexed_entry_is_eight_bytes() {
        assert_eq!(std::mem::size_of::<Indexed<SessionKind>>(), 8);
    }

    fn registration(token: u64) -> Registration {
        Registration::new(super::super::Owner { shard: 0, token }, None, false)
    }

    #[test]
    fn registry_behaves_as_a_map() {
        let mut registry = Registry::default();
        let ids: Vec<MqttStr> = (0..3000).map(|i| MqttStr::from(format!("c{i}"))).collect();
        for (i, id) in ids.iter().enumerate() {
            assert!(registry
                .insert(id.clone(), registration(i as u64))
                .is_none());
        }
        let replaced = registry.insert(ids[7].clone(), registration(70_000));
        assert_eq!(replaced.map(|r| r.owner().token), Some(7));
        for (i, id) in ids.iter().enumerate() {
            let want = if i == 7 { 70_000 } else { i as u64 };
            assert_eq!(
                registry.get(id).map(|r| r.owner().token),
                Some(want),
                "{id}"
            );
        }
        for id in ids.iter().step_by(2) {
            assert!(registry.remove(id).is_some());
            assert!(registry.remove(id).is_none(), "removed twice");
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(registry.get(id).is_some(), i % 2 == 1, "{id}");
        }
        // Freed slots are reused; the index still finds every key.
        for (i, id) in ids.iter().enumerate().step_by(2) {
            assert!(registry
                .insert(id.clone(), registration(i as u64))
                .is_none());
        }
        if let Some(r) = registry.get_mut("c3") {
            r.settled = true;
        }
        assert!(registry.get("c3").is_some_and(|r| r.settled));
        assert!(registry.get("c3000").is_none());
    }
}
