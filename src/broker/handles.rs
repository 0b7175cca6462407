//! Typed, generation-checked handles.
//!
//! A connection or session slot is reused once freed. A handle that outlived its slot (held by
//! a barrier, a held acknowledgement, a timer, a message from another shard) must find nothing
//! rather than the slot's next occupant: every handle carries the generation of the slot it was
//! issued for, and [`GenSlab`] answers `None` for a stale one.

use std::fmt;
use std::marker::PhantomData;

/// A slot index and the generation it was issued for.
#[derive(PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Handle<T> {
    slot: u32,
    generation: u32,
    kind: PhantomData<fn() -> T>,
}

impl<T> Handle<T> {
    /// The slot index (for side tables indexed like the slab, e.g. a runtime's wakers).
    pub fn slot(self) -> usize {
        self.slot as usize
    }

    /// The generation of the slot when this handle was issued.
    pub fn generation(self) -> u32 {
        self.generation
    }

    /// Rebuilds a handle from its parts (e.g. carried through an io_uring request's user
    /// data). A handle that was never issued, or is stale, still finds nothing in its slab.
    pub fn from_parts(slot: u32, generation: u32) -> Self {
        Handle {
            slot,
            generation,
            kind: PhantomData,
        }
    }
}

impl<T> Clone for Handle<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Handle<T> {}

impl<T> fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.slot, self.generation)
    }
}

/// Marker for connection handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConnKind {}
/// Marker for session handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SessionKind {}

/// Marker for home-shard registration handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RegistrationKind {}

/// A connection on its shard.
pub type ConnId = Handle<ConnKind>;
/// A session entry on its shard.
pub type SessionId = Handle<SessionKind>;

#[derive(Debug)]
enum Slot<V> {
    Occupied { generation: u32, value: V },
    Vacant { generation: u32, next_free: u32 },
}

/// Slots per chunk of a [`GenSlab`].
const CHUNK: usize = 1024;

/// A vector that grows by fixed-size chunks: growing never copies what is there, and never
/// frees (or keeps spare) a buffer half as large as the new one. A slab with one slot per
/// connection would otherwise leave a freed copy of itself behind at every doubling, which an
/// allocator may keep resident.
#[derive(Debug)]
struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunked<T> {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, index: usize) -> Option<&T> {
        self.chunks.get(index / CHUNK)?.get(index % CHUNK)
    }

    fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.chunks.get_mut(index / CHUNK)?.get_mut(index % CHUNK)
    }

    fn push(&mut self, value: T) {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < CHUNK => chunk.push(value),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(value);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
}

/// A slab whose keys are generation-checked [`Handle`]s.
#[derive(Debug)]
pub struct GenSlab<K, V> {
    slots: Chunked<Slot<V>>,
    free: u32,
    len: usize,
    kind: PhantomData<fn() -> K>,
}

const NO_FREE: u32 = u32::MAX;

impl<K, V> Default for GenSlab<K, V> {
    fn default() -> Self {
        GenSlab {
            slots: Chunked::default(),
            free: NO_FREE,
            len: 0,
            kind: PhantomData,
        }
    }
}

impl<K, V> GenSlab<K, V> {
    /// An empty slab.
    pub fn new() -> Self {
        Self::default()
    }

    /// Occupied slots.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no slot is occupied.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value`; its handle is unlike every handle issued before for the same slot.
    /// `None` when 2^32 - 1 slots are in use.
    pub fn insert(&mut self, value: V) -> Option<Handle<K>> {
        let free = self.free as usize;
        // The free list holds vacant slots only (`NO_FREE` is past the end); should it ever
        // point elsewhere, the value goes to a new slot rather than over a live one.
        if let Some(entry) = self.slots.get_mut(free) {
            if let Slot::Vacant {
                generation,
                next_free,
            } = *entry
            {
                let generation = generation.wrapping_add(1);
                self.free = next_free;
                *entry = Slot::Occupied { generation, value };
                self.len += 1;
                return Some(Handle {
                    slot: free as u32,
                    generation,
                    kind: PhantomData,
                });
            }
        }
        self.free = NO_FREE;
        let slot = u32::try_from(self.slots.len())
            .ok()
            .filter(|&s| s != NO_FREE)?;
        self.slots.push(Slot::Occupied {
            generation: 0,
            value,
        });
        self.len += 1;
        Some(Handle {
            slot,
            generation: 0,
            kind: PhantomData,
        })
    }

    /// The value behind `handle`, unless the handle is stale.
    pub fn get(&self, handle: Handle<K>) -> Option<&V> {
        match self.slots.get(handle.slot as usize)? {
            Slot::Occupied { generation, value } if *generation == handle.generation => Some(value),
            _ => None,
        }
    }

    /// The value behind `handle`, unless the handle is stale.
    pub fn get_mut(&mut self, handle: Handle<K>) -> Option<&mut V> {
        match self.slots.get_mut(handle.slot as usize)? {
            Slot::Occupied { generation, value } if *generation == handle.generation => Some(value),
            _ => None,
        }
    }

    /// Whether `handle` is live.
    pub fn contains(&self, handle: Handle<K>) -> bool {
        self.get(handle).is_some()
    }

    /// The handle of the value in slot `slot`, if it is occupied (for side tables that store
    /// bare slot numbers and rebuild the current handle).
    pub fn handle_at(&self, slot: u32) -> Option<Handle<K>> {
        match self.slots.get(slot as usize)? {
            Slot::Occupied { generation, .. } => Some(Handle {
                slot,
                generation: *generation,
                kind: PhantomData,
            }),
            Slot::Vacant { .. } => None,
        }
    }

    /// Removes and returns the value behind `handle`, unless the handle is stale.
    pub fn remove(&mut self, handle: Handle<K>) -> Option<V> {
        let entry = self.slots.get_mut(handle.slot as usize)?;
        match entry {
            Slot::Occupied { generation, .. } if *generation == handle.generation => {}
            _ => return None,
        }
        let vacant = Slot::Vacant {
            generation: handle.generation,
            next_free: self.free,
        };
        let Slot::Occupied { value, .. } = std::mem::replace(entry, vacant) else {
            return None;
        };
        self.free = handle.slot;
        self.len -= 1;
        Some(value)
    }

    /// Every live handle and its value.
    pub fn iter(&self) -> impl Iterator<Item = (Handle<K>, &V)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, entry)| match entry {
                Slot::Occupied { generation, value } => Some((
                    Handle {
                        slot: slot as u32,
                        generation: *generation,
                        kind: PhantomData,
                    },
                    value,
                )),
                Slot::Vacant { .. } => None,
            })
    }

    /// Every live handle.
    pub fn handles(&self) -> Vec<Handle<K>> {
        self.iter().map(|(handle, _)| handle).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_handles_find_nothing() {
        let mut slab: GenSlab<ConnKind, &str> = GenSlab::new();
        let a = slab.insert("a").unwrap();
        let b = slab.insert("b").unwrap();
        assert_eq!(slab.get(a), Some(&"a"));
        assert_eq!(slab.remove(a), Some("a"));
        assert_eq!(slab.remove(a), None, "removing twice");
        let c = slab.insert("c").unwrap();
        assert_eq!(c.slot(), a.slot(), "the slot is reused");
        assert_ne!(c, a);
        assert_eq!(slab.get(a), None, "the old handle is stale");
        assert_eq!(slab.get_mut(a), None);
        assert_eq!(slab.get(c), Some(&"c"));
        assert_eq!(slab.get(b), Some(&"b"));
        assert_eq!(slab.len(), 2);
        let live: Vec<_> = slab.iter().map(|(h, v)| (h, *v)).collect();
        assert_eq!(live, vec![(c, "c"), (b, "b")]);
    }

    #[test]
    fn slots_past_a_chunk_boundary_work_alike() {
        let mut slab: GenSlab<ConnKind, usize> = GenSlab::new();
        let handles: Vec<_> = (0..CHUNK * 2 + 3)
            .map(|i| slab.insert(i).unwrap())
            .collect();
        assert_eq!(slab.len(), CHUNK * 2 + 3);
        for (i, &h) in handles.iter().enumerate() {
            assert_eq!(h.slot(), i);
            assert_eq!(slab.get(h), Some(&i));
        }
        let last = handles[CHUNK * 2 + 2];
        assert_eq!(slab.remove(handles[CHUNK]), Some(CHUNK));
        assert_eq!(slab.remove(last), Some(CHUNK * 2 + 2));
        let reused = slab.insert(7).unwrap();
        assert_eq!(reused.slot(), last.slot());
        assert_eq!(slab.get(last), None, "the old handle is stale");
        assert_eq!(slab.insert(8).unwrap().slot(), CHUNK);
        let seen: Vec<usize> = slab.iter().map(|(h, _)| h.slot()).collect();
        assert_eq!(seen, (0..CHUNK * 2 + 3).collect::<Vec<_>>());
    }

    #[test]
    fn free_list_reuses_in_lifo_order() {
        let mut slab: GenSlab<SessionKind, u32> = GenSlab::new();
        let handles: Vec<_> = (0..4).map(|i| slab.insert(i).unwrap()).collect();
        slab.remove(handles[1]);
        slab.remove(handles[3]);
        assert_eq!(slab.insert(10).unwrap().slot(), 3);
        assert_eq!(slab.insert(11).unwrap().slot(), 1);
        assert_eq!(slab.insert(12).unwrap().slot(), 4);
        assert!(slab.handles().iter().all(|h| slab.contains(*h)));
    }
}
