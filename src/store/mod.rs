//! The durable store's foundation (issue 11): the on-disk format of persistent sessions,
//! queues and retained messages, and their recovery, as pure code. Nothing here does I/O on
//! a shard: the runtime's journal writer does the I/O.
//!
//! # Format (version [`FORMAT_VERSION`])
//!
//! A data directory holds a `FORMAT` file, a `LOCK` file ([`dir`]) and per-shard segment
//! files ([`segment`]): logs `shard-<n>-<seq>.log` and snapshots `shard-<n>-<seq>.snap`. Every
//! segment starts with a 32-byte checksummed header (magic, format version, kind, shard,
//! shard count, sequence, a random salt), followed by frames ([`frame`]): magic `D5 5A`, a u32
//! length, a 16-bit check of the length, the CRC-32C of the body ([`crc`]; both seeded with the
//! segment's salt), and the body: a type byte and the record's fields ([`record`]),
//! little-endian. A snapshot is a shard's whole state as of the end of log
//! segment `<seq>`, closed by a [`record::StoreRecord::Checkpoint`] that counts its records.
//!
//! # Recovery
//!
//! [`load`] picks, per shard, the newest complete snapshot and the logs after it, scans them
//! ([`segment::Scanner`]: a torn tail is cut at the last valid frame; a corrupt frame in the
//! middle is skipped by searching for the next frame whose checksum holds, and counted) and
//! replays the records ([`recover::Replayer`]). Records of one shard are applied in file order;
//! shards in any order. Session records carry a generation ([`record::Generation`]): recovery
//! keeps, per client id, only the newest generation's records, so a session that moved between
//! shards comes back exactly as its last owner had it. [`recover::rehome`] then assigns every
//! session to its home shard for the new shard count ([`crate::placement::home_shard`]).
//!
//! # How the broker uses it
//!
//! - [`journal::StoreJournal`] is the shard's [`crate::broker::hooks::Journal`]: it encodes each
//!   record the shard emits as a frame (byte for byte what [`record::StoreRecord`] encodes to),
//!   numbers it, and hands the bytes out in batches that name their files; the runtime's
//!   writer (`broker/runtime/journal_writer.rs`) writes them with io_uring, fdatasyncs them
//!   (`--sync always`: before the shard is told; `interval`: periodically) and calls
//!   `Shard::on_durable`.
//! - A message body ([`record::MessageRecord`]) is written once per shard before the first
//!   record that refers to it; message ids are unique within a shard's files (epoch in the
//!   high bits), and recovery resolves references within the same shard's files only.
//! - Generations must grow per client id over the life of the directory. The claim tokens of
//!   the ownership protocol today are `shard << 48 | serial`, restarting at every boot, so
//!   they do not order claims across shards or boots: the generation written must be issued
//!   in claim order by the client id's home shard, in the boot's epoch
//!   ([`record::generation`]; the epoch is [`recover::RecoveredState::next_epoch`]).
//!   Retained versions the same way, by the topic's owner shard.
//! - A new owner (takeover, move, recovery) writes the whole session under its generation:
//!   started, will, subscriptions, queue and in-flight entries, inbound QoS 2 ids.
//! - Compaction (an image, when the current log reaches its size limit): the journal closes
//!   log N, the shard's whole state becomes `shard-<n>-<N>.snap` (written as `.snap.tmp`,
//!   fdatasynced, renamed, the directory fsynced), later records go to log N + 1, and the
//!   logs up to N and older snapshots of the shard are removed.
//! - Start-up (`broker/store_start.rs`): [`dir::open`] (lock, FORMAT check), [`load`] (one
//!   thread per shard's files), `drop_expired`, the epoch, `rehome`; each shard installs its
//!   sessions under new generations and writes its first image, carrying what its old files
//!   held for other shards, before its old files are removed.

pub mod crc;
pub mod frame;
pub mod load;
pub mod record;
pub mod recover;
pub mod segment;
pub mod snapshot;

#[cfg(test)]
mod prop_tests;

#[cfg(feature = "runtime")]
pub mod dir;
#[cfg(feature = "runtime")]
pub mod inspect;
#[cfg(feature = "runtime")]
pub mod journal;
#[cfg(feature = "runtime")]
pub mod split;

pub use load::{load, Loaded};
pub use record::StoreRecord;
pub use recover::{rehome, RecoveredState};

/// The newest format this build reads and the one it writes. 2: session images end with an
/// `ImageComplete` record (version 1 files, without it, are read as before).
pub const FORMAT_VERSION: u32 = 2;

/// A fast hash for keys the broker makes itself, never input a client chooses: message
/// addresses (an image's body index, looked up for every queued and retained message it
/// writes) and (shard, message id) pairs (replay's body index, looked up for most records).
/// SipHash was a large part of both.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FoldHasher(u64);

impl std::hash::Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte) ^ self.0.rotate_left(8));
        }
    }

    fn write_u16(&mut self, value: u16) {
        self.write_u64(u64::from(value));
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }

    fn write_u64(&mut self, value: u64) {
        // Low bits of an address are alignment zeros: fold the high half of the product (which
        // every input bit reaches) into the low bits the table indexes with.
        let product = (value ^ self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = product ^ (product >> 29);
    }
}
