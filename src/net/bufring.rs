//! The shard's provided-buffer ring: receive buffers shared by all its connections. The kernel
//! picks a buffer only when data arrives, so an idle connection holds none. Each completion's
//! bytes are copied out once (into the connection's own input, where decoded payloads then
//! live as shared slices) and the buffer goes straight back to the ring: a message that waits
//! in an offline queue never pins a ring buffer, so the ring cannot run dry because of slow
//! subscribers.

use std::alloc::{self, Layout};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

use super::ring::Ring;

/// Page alignment the kernel requires for the ring of buffer descriptors.
const RING_ALIGN: usize = 4096;

/// A registered ring of `count` buffers of `size` bytes, buffer group `group`.
pub(crate) struct BufRing {
    /// Buffer descriptors the kernel consumes (page-aligned, `count` entries).
    entries: *mut BufRingEntry,
    entries_layout: Layout,
    /// The buffers themselves, back to back.
    memory: Box<[u8]>,
    count: u16,
    size: usize,
    /// Next tail value to publish (the kernel reads it from the first entry's reserved field).
    tail: u16,
    group: u16,
}

impl std::fmt::Debug for BufRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufRing")
            .field("count", &self.count)
            .field("size", &self.size)
            .field("group", &self.group)
            .finish()
    }
}

impl BufRing {
    /// Allocates and registers the ring with `ring`. `count` must be a power of two (at most
    /// 32768).
    pub(crate) fn register(ring: &Ring, group: u16, count: u16, size: usize) -> io::Result<Self> {
        if !count.is_power_of_two() || count > 1 << 15 || size == 0 || size > u32::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer ring: count must be a power of two <= 32768 and size fit in 32 bits",
            ));
        }
        let entries_layout = Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<BufRingEntry>(),
            RING_ALIGN,
        )
        .map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size.
        let entries = unsafe { alloc::alloc_zeroed(entries_layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let mut ring_buffers = BufRing {
            entries,
            entries_layout,
            memory: vec![0u8; usize::from(count) * size].into_boxed_slice(),
            count,
            size,
            tail: 0,
            group,
        };
        for bid in 0..count {
            ring_buffers.put(bid);
        }
        ring_buffers.publish();
        // SAFETY: the descriptor memory lives as long as `ring_buffers`, which the engine drops
        // only after the ring itself (field order), and it is page-aligned.
        let registered = unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, count, group, 0)
        };
        registered?;
        Ok(ring_buffers)
    }

    pub(crate) fn group(&self) -> u16 {
        self.group
    }

    /// The first `len` bytes of buffer `bid` (as filled by a completion).
    pub(crate) fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid % self.count) * self.size;
        &self.memory[start..start + len.min(self.size)]
    }

    /// Hands buffer `bid` back to the kernel.
    pub(crate) fn recycle(&mut self, bid: u16) {
        self.put(bid % self.count);
        self.publish();
    }

    fn put(&mut self, bid: u16) {
        let index = usize::from(self.tail & (self.count - 1));
        let addr = self.memory.as_ptr() as u64 + (usize::from(bid) * self.size) as u64;
        // SAFETY: `index < count`, inside the descriptor allocation; the kernel reads only
        // entries between its head and the published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.entries.add(index) };
        entry.set_addr(addr);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every entry put so far visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail field is the first entry's reserved u16, inside the allocation and
        // suitably aligned; the kernel reads it atomically.
        let tail = unsafe {
            &*(BufRingEntry::tail(self.entries)
                .cast_mut()
                .cast::<AtomicU16>())
        };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `register` with this layout.
        unsafe { alloc::dealloc(self.entries.cast(), self.entries_layout) };
    }
}
