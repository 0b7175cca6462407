//! Segment files: their names, their header, and the scanner that reads their frames back,
//! cutting a torn tail and resynchronising after a corrupt frame.
//!
//! Each shard writes its own files: log segments `shard-<n>-<seq>.log` (appended to, then
//! closed and a new one started) and snapshots `shard-<n>-<seq>.snap` (the shard's whole state
//! as of the end of log segment `<seq>`, ending with a [`StoreRecord::Checkpoint`]). A
//! snapshot is written under a temporary name (`.snap.tmp`, never read back), fsynced, renamed,
//! and the directory fsynced; only then are the files it covers removed.
//!
//! Header (32 bytes, little-endian):
//!
//! ```text
//! magic        "SHMQSEG\0"   8 bytes
//! format       u16           FORMAT_VERSION
//! kind         u8            1 log, 2 snapshot
//! reserved     u8            0
//! shard        u16           the shard that wrote the file
//! shard count  u16           how many shards the broker ran with
//! sequence     u64           the segment sequence (as in the name)
//! salt         u32           random per file, seeds every frame checksum (see super::frame)
//! crc          u32           CRC-32C of the 28 bytes before it
//! ```

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};

use thiserror::Error;

use super::crc::crc32c;
use super::frame::{check_frame, FrameError, FRAME_MAGIC};
use super::record::StoreRecord;
use super::FORMAT_VERSION;

/// The first bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SHMQSEG\0";
/// Length of the segment header.
pub const HEADER_LEN: usize = 32;

/// What a segment file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SegmentKind {
    /// Appended records.
    Log,
    /// A compacted image ending with a checkpoint.
    Snapshot,
}

impl SegmentKind {
    fn extension(self) -> &'static str {
        match self {
            SegmentKind::Log => "log",
            SegmentKind::Snapshot => "snap",
        }
    }
}

/// The name of a segment file: which shard, which sequence, which kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    /// The shard that writes it.
    pub shard: u16,
    /// Its sequence number (logs: increasing from 1; snapshots: the last log they cover).
    pub sequence: u64,
    /// Log or snapshot.
    pub kind: SegmentKind,
}

impl SegmentName {
    /// The file name, e.g. `shard-001-00000000000000000042.log`.
    pub fn file_name(&self) -> String {
        format!(
            "shard-{:03}-{:020}.{}",
            self.shard,
            self.sequence,
            self.kind.extension()
        )
    }

    /// Parses a file name; `None` for anything that is not a segment (temporary snapshots,
    /// the `FORMAT` and `LOCK` files, strangers).
    pub fn parse(name: &str) -> Option<SegmentName> {
        let rest = name.strip_prefix("shard-")?;
        let (stem, kind) = if let Some(stem) = rest.strip_suffix(".log") {
            (stem, SegmentKind::Log)
        } else if let Some(stem) = rest.strip_suffix(".snap") {
            (stem, SegmentKind::Snapshot)
        } else {
            return None;
        };
        let (shard, sequence) = stem.split_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(shard) || !digits(sequence) {
            return None;
        }
        Some(SegmentName {
            shard: shard.parse().ok()?,
            sequence: sequence.parse().ok()?,
            kind,
        })
    }
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name())
    }
}

/// The header at the start of every segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version of the records that follow.
    pub format: u16,
    /// Log or snapshot.
    pub kind: SegmentKind,
    /// The writing shard.
    pub shard: u16,
    /// The writer's shard count.
    pub shard_count: u16,
    /// The segment sequence.
    pub sequence: u64,
    /// Seeds the checksum of every frame in the file.
    pub salt: u32,
}

/// Why a segment header is unusable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderError {
    /// The file is shorter than a header (a crash right after creating it).
    #[error("segment header incomplete ({0} of 32 bytes)")]
    Incomplete(usize),
    /// Not a segment file.
    #[error("not a shardmq segment (bad magic)")]
    BadMagic,
    /// The header does not match its checksum.
    #[error("segment header checksum mismatch")]
    BadChecksum,
    /// Written by a newer shardmq.
    #[error("segment format {found} is newer than this shardmq understands ({supported}); upgrade shardmq to read it")]
    NewerFormat {
        /// The version in the file.
        found: u16,
        /// The newest version this build reads.
        supported: u16,
    },
    /// An unknown kind byte.
    #[error("unknown segment kind {0}")]
    UnknownKind(u8),
}

impl SegmentHeader {
    /// A header of the current format with a fresh random salt.
    pub fn new(name: SegmentName, shard_count: u16) -> SegmentHeader {
        SegmentHeader::with_salt(name, shard_count, fresh_salt())
    }

    /// A header of the current format with `salt` (tests and tools that want fixed bytes).
    pub fn with_salt(name: SegmentName, shard_count: u16, salt: u32) -> SegmentHeader {
        SegmentHeader {
            format: FORMAT_VERSION as u16,
            kind: name.kind,
            shard: name.shard,
            shard_count,
            sequence: name.sequence,
            salt,
        }
    }

    /// The name a file with this header has.
    pub fn name(&self) -> SegmentName {
        SegmentName {
            shard: self.shard,
            sequence: self.sequence,
            kind: self.kind,
        }
    }

    /// Appends the 28 header bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&SEGMENT_MAGIC);
        out.extend_from_slice(&self.format.to_le_bytes());
        out.push(match self.kind {
            SegmentKind::Log => 1,
            SegmentKind::Snapshot => 2,
        });
        out.push(0);
        out.extend_from_slice(&self.shard.to_le_bytes());
        out.extend_from_slice(&self.shard_count.to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&self.salt.to_le_bytes());
        let crc = crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// Reads the header at the start of `file`.
    pub fn decode(file: &[u8]) -> Result<SegmentHeader, HeaderError> {
        let Some(header) = file.get(..HEADER_LEN) else {
            return Err(
                if SEGMENT_MAGIC.starts_with(file) || file.starts_with(&SEGMENT_MAGIC) {
                    HeaderError::Incomplete(file.len())
                } else {
                    HeaderError::BadMagic
                },
            );
        };
        if header[..8] != SEGMENT_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let u16_at = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
        let u32_at = |at: usize| {
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        if crc32c(&header[..28]) != u32_at(28) {
            return Err(HeaderError::BadChecksum);
        }
        let format = u16_at(8);
        if u32::from(format) > FORMAT_VERSION {
            return Err(HeaderError::NewerFormat {
                found: format,
                supported: FORMAT_VERSION as u16,
            });
        }
        let kind = match header[10] {
            1 => SegmentKind::Log,
            2 => SegmentKind::Snapshot,
            other => return Err(HeaderError::UnknownKind(other)),
        };
        let mut sequence = [0u8; 8];
        sequence.copy_from_slice(&header[16..24]);
        Ok(SegmentHeader {
            format,
            kind,
            shard: u16_at(12),
            shard_count: u16_at(14),
            sequence: u64::from_le_bytes(sequence),
            salt: u32_at(24),
        })
    }
}

/// Where the valid data of a scanned buffer ends, when bytes follow it that are not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornTail {
    /// Offset (in the scanned buffer) where valid data ends: the file can be cut here.
    pub offset: usize,
    /// Bytes after it.
    pub len: usize,
    /// Whether those bytes are all zero (preallocated or padded space, not damage).
    pub zeros: bool,
}

/// A stretch of bytes between two valid frames that is not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorruptRegion {
    /// Offset of the first bad byte.
    pub offset: usize,
    /// Bytes skipped.
    pub len: usize,
    /// What was wrong at `offset`.
    pub error: FrameFault,
}

/// The kind of damage at the start of a corrupt region (a [`FrameError`] without its data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameFault {
    /// No magic where a frame should start.
    BadMagic,
    /// A header check that does not match the length.
    BadHeader,
    /// A length out of range.
    BadLength,
    /// A checksum mismatch.
    BadChecksum,
    /// A frame whose length runs past a later valid frame (or the end).
    Incomplete,
}

/// What a scan found, besides the records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Records decoded.
    pub records: u64,
    /// Bytes of valid frames (decoded or not).
    pub valid_bytes: u64,
    /// Damaged stretches skipped by resynchronising, in order.
    pub corrupt: Vec<CorruptRegion>,
    /// Intact frames (checksum valid) whose body is not a record this version knows.
    pub undecodable: u64,
    /// Bytes after the last valid frame that are not a frame.
    pub torn_tail: Option<TornTail>,
}

impl ScanStats {
    /// Bytes skipped in corrupt regions.
    pub fn skipped_bytes(&self) -> u64 {
        self.corrupt.iter().map(|region| region.len as u64).sum()
    }

    /// Whether anything was damaged (a zero-filled tail is not damage).
    pub fn is_damaged(&self) -> bool {
        !self.corrupt.is_empty()
            || self.undecodable > 0
            || self.torn_tail.is_some_and(|tail| !tail.zeros)
    }
}

/// Iterates over the records of a buffer of frames (a segment's bytes after its header),
/// yielding each valid record with its offset. Never panics, whatever the bytes.
#[derive(Debug)]
pub struct Scanner<'a> {
    buf: &'a [u8],
    salt: u32,
    at: usize,
    stats: ScanStats,
}

impl<'a> Scanner<'a> {
    /// A scanner over `buf` (frames back to back, of a segment with `salt`).
    pub fn new(buf: &'a [u8], salt: u32) -> Scanner<'a> {
        Scanner {
            buf,
            salt,
            at: 0,
            stats: ScanStats::default(),
        }
    }

    /// What the scan found so far (all of it once the iterator returned `None`).
    pub fn stats(&self) -> &ScanStats {
        &self.stats
    }

    /// The stats, consuming the scanner.
    pub fn into_stats(self) -> ScanStats {
        self.stats
    }

    /// The next position after `from` where a frame with a valid checksum starts.
    fn resync(&self, from: usize) -> Option<usize> {
        let mut at = from;
        while let Some(found) = find_magic(self.buf.get(at..)?) {
            let candidate = at + found;
            if check_frame(&self.buf[candidate..], self.salt).is_ok() {
                return Some(candidate);
            }
            at = candidate + 1;
        }
        None
    }
}

fn find_magic(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|pair| pair == FRAME_MAGIC)
}

impl Iterator for Scanner<'_> {
    type Item = (usize, StoreRecord);

    fn next(&mut self) -> Option<(usize, StoreRecord)> {
        loop {
            let start = self.at;
            let rest = self.buf.get(start..)?;
            if rest.is_empty() {
                return None;
            }
            match check_frame(rest, self.salt) {
                Ok((body, len)) => {
                    self.at = start + len;
                    self.stats.valid_bytes += len as u64;
                    match StoreRecord::decode_body(body) {
                        Ok(record) => {
                            self.stats.records += 1;
                            return Some((start, record));
                        }
                        Err(_) => {
                            self.stats.undecodable += 1;
                            continue;
                        }
                    }
                }
                Err(error) => {
                    let fault = match error {
                        FrameError::BadMagic => FrameFault::BadMagic,
                        FrameError::BadHeader => FrameFault::BadHeader,
                        FrameError::BadLength(_) => FrameFault::BadLength,
                        FrameError::BadChecksum { .. } => FrameFault::BadChecksum,
                        FrameError::Incomplete { .. } | FrameError::Record(_) => {
                            FrameFault::Incomplete
                        }
                    };
                    match self.resync(start + 1) {
                        Some(next) => {
                            self.stats.corrupt.push(CorruptRegion {
                                offset: start,
                                len: next - start,
                                error: fault,
                            });
                            self.at = next;
                        }
                        None => {
                            self.stats.torn_tail = Some(TornTail {
                                offset: start,
                                len: rest.len(),
                                zeros: rest.iter().all(|&b| b == 0),
                            });
                            self.at = self.buf.len();
                            return None;
                        }
                    }
                }
            }
        }
    }
}

/// A salt for a new segment: random per process (std's `RandomState` keys), mixed with the
/// time and a counter so that files created in one process differ too.
pub fn fresh_salt() -> u32 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    hasher.write_u64(nanos);
    let hash = hasher.finish();
    (hash ^ (hash >> 32)) as u32
}

/// A segment file's header and a scanner over its frames.
pub fn open_segment(file: &[u8]) -> Result<(SegmentHeader, Scanner<'_>), HeaderError> {
    let header = SegmentHeader::decode(file)?;
    let frames = file.get(HEADER_LEN..).unwrap_or_default();
    Ok((header, Scanner::new(frames, header.salt)))
}

/// Which files of one shard recovery reads, in order: the newest snapshot (if any survives
/// validation, tried newest first), then the logs after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardFiles {
    /// Snapshots, newest first.
    pub snapshots: Vec<SegmentName>,
    /// Logs, oldest first.
    pub logs: Vec<SegmentName>,
}

impl ShardFiles {
    /// The logs to replay after a snapshot through `through` (all of them without one).
    pub fn logs_after(&self, through: Option<u64>) -> impl Iterator<Item = &SegmentName> {
        self.logs
            .iter()
            .filter(move |log| through.is_none_or(|through| log.sequence > through))
    }
}

/// Groups segment names by shard, in replay order.
pub fn plan(
    names: impl IntoIterator<Item = SegmentName>,
) -> std::collections::BTreeMap<u16, ShardFiles> {
    let mut shards = std::collections::BTreeMap::<u16, ShardFiles>::new();
    for name in names {
        let files = shards.entry(name.shard).or_default();
        match name.kind {
            SegmentKind::Log => files.logs.push(name),
            SegmentKind::Snapshot => files.snapshots.push(name),
        }
    }
    for files in shards.values_mut() {
        files.logs.sort();
        files.logs.dedup();
        files.snapshots.sort_by(|a, b| b.cmp(a));
        files.snapshots.dedup();
    }
    shards
}

/// Whether a snapshot's scan is complete: no damage, and its last record is the checkpoint
/// for `name` counting every record before it.
pub fn snapshot_is_complete(
    name: &SegmentName,
    stats: &ScanStats,
    last: Option<&StoreRecord>,
) -> bool {
    let tail_ok = stats.torn_tail.is_none_or(|tail| tail.zeros);
    let checkpoint_ok = matches!(
        last,
        Some(StoreRecord::Checkpoint { through_segment, records })
            if *through_segment == name.sequence && *records + 1 == stats.records
    );
    stats.corrupt.is_empty() && stats.undecodable == 0 && tail_ok && checkpoint_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::frame::encode_frame;
    use crate::store::record::tests::samples;

    const SALT: u32 = 77;

    fn frames(records: &[StoreRecord]) -> (Vec<u8>, Vec<usize>) {
        let mut buf = Vec::new();
        let mut offsets = Vec::new();
        for record in records {
            offsets.push(buf.len());
            encode_frame(record, SALT, &mut buf).unwrap();
        }
        (buf, offsets)
    }

    #[test]
    fn names_round_trip_and_strangers_are_ignored() {
        for kind in [SegmentKind::Log, SegmentKind::Snapshot] {
            let name = SegmentName {
                shard: 7,
                sequence: 123_456,
                kind,
            };
            assert_eq!(SegmentName::parse(&name.file_name()), Some(name));
        }
        assert_eq!(
            SegmentName::parse("shard-1-2.log"),
            Some(SegmentName {
                shard: 1,
                sequence: 2,
                kind: SegmentKind::Log
            })
        );
        for stranger in [
            "FORMAT",
            "LOCK",
            "shard-1-2.snap.tmp",
            "shard--2.log",
            "shard-1-.log",
            "shard-x-2.log",
            "shard-1-+2.log",
            "shard-99999-2.log",
            "shard-1-99999999999999999999999.log",
        ] {
            assert_eq!(SegmentName::parse(stranger), None, "{stranger}");
        }
    }

    #[test]
    fn header_round_trips_and_refuses_damage() {
        let name = SegmentName {
            shard: 3,
            sequence: 9,
            kind: SegmentKind::Snapshot,
        };
        let header = SegmentHeader::new(name, 4);
        assert_ne!(header.salt, SegmentHeader::new(name, 4).salt);
        let mut buf = Vec::new();
        header.encode(&mut buf);
        assert_eq!(buf.len(), HEADER_LEN);
        assert_eq!(SegmentHeader::decode(&buf), Ok(header));
        assert_eq!(header.name(), name);
        for len in 0..HEADER_LEN {
            assert!(SegmentHeader::decode(&buf[..len]).is_err());
        }
        let mut bad = buf.clone();
        bad[13] ^= 1;
        assert_eq!(SegmentHeader::decode(&bad), Err(HeaderError::BadChecksum));
        let mut newer = Vec::new();
        SegmentHeader {
            format: FORMAT_VERSION as u16 + 1,
            ..header
        }
        .encode(&mut newer);
        let error = SegmentHeader::decode(&newer).unwrap_err();
        assert!(matches!(error, HeaderError::NewerFormat { .. }));
        assert!(error.to_string().contains("upgrade"));
        assert_eq!(
            SegmentHeader::decode(b"garbage garbage garbage garbage"),
            Err(HeaderError::BadMagic)
        );
    }

    #[test]
    fn a_clean_buffer_scans_completely() {
        let records = samples();
        let (buf, offsets) = frames(&records);
        let mut scanner = Scanner::new(&buf, SALT);
        let found: Vec<_> = scanner.by_ref().collect();
        assert_eq!(found.iter().map(|(at, _)| *at).collect::<Vec<_>>(), offsets);
        assert_eq!(
            found.into_iter().map(|(_, r)| r).collect::<Vec<_>>(),
            records
        );
        let stats = scanner.into_stats();
        assert_eq!(stats.records, records.len() as u64);
        assert_eq!(stats.valid_bytes, buf.len() as u64);
        assert!(!stats.is_damaged());
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_valid_frame() {
        let records = samples();
        let (buf, offsets) = frames(&records);
        let cut = offsets[5] + 7;
        let mut scanner = Scanner::new(&buf[..cut], SALT);
        assert_eq!(scanner.by_ref().count(), 5);
        let stats = scanner.into_stats();
        assert_eq!(
            stats.torn_tail,
            Some(TornTail {
                offset: offsets[5],
                len: 7,
                zeros: false
            })
        );
        assert!(stats.corrupt.is_empty());
    }

    #[test]
    fn zero_padding_is_a_tail_but_not_damage() {
        let (mut buf, _) = frames(&samples()[..3]);
        let end = buf.len();
        buf.resize(end + 4096, 0);
        let mut scanner = Scanner::new(&buf, SALT);
        assert_eq!(scanner.by_ref().count(), 3);
        let stats = scanner.into_stats();
        assert_eq!(
            stats.torn_tail,
            Some(TornTail {
                offset: end,
                len: 4096,
                zeros: true
            })
        );
        assert!(!stats.is_damaged());
    }

    #[test]
    fn a_corrupt_frame_in_the_middle_is_skipped_and_counted() {
        let records = samples();
        let (mut buf, offsets) = frames(&records);
        // Damage the body of record 4 and the magic of record 9.
        buf[offsets[4] + 12] ^= 0xff;
        buf[offsets[9]] ^= 0xff;
        let mut scanner = Scanner::new(&buf, SALT);
        let found: Vec<_> = scanner.by_ref().map(|(_, r)| r).collect();
        let mut expected = records.clone();
        expected.remove(9);
        expected.remove(4);
        assert_eq!(found, expected);
        let stats = scanner.into_stats();
        assert_eq!(stats.corrupt.len(), 2);
        assert_eq!(stats.corrupt[0].offset, offsets[4]);
        assert_eq!(stats.corrupt[0].len, offsets[5] - offsets[4]);
        assert_eq!(stats.corrupt[0].error, FrameFault::BadChecksum);
        assert_eq!(stats.corrupt[1].error, FrameFault::BadMagic);
        assert!(stats.torn_tail.is_none());
        assert!(stats.is_damaged());
    }

    #[test]
    fn a_damaged_length_does_not_swallow_later_frames() {
        let records = samples();
        let (mut buf, offsets) = frames(&records);
        // Record 2 now claims to run to the end of the buffer.
        let huge = (buf.len() as u32).to_le_bytes();
        buf[offsets[2] + 2..offsets[2] + 6].copy_from_slice(&huge);
        let found: Vec<_> = Scanner::new(&buf, SALT).map(|(_, r)| r).collect();
        assert_eq!(found.len(), records.len() - 1);
    }

    /// A damaged frame whose payload is full of frame-looking headers claiming long bodies
    /// (a client can publish such a payload): the header check rejects each in constant time,
    /// so resynchronising stays linear and finds the next frame.
    #[test]
    fn resync_through_a_hostile_payload_stays_linear() {
        let mut fake = Vec::new();
        while fake.len() < 1 << 20 {
            fake.extend_from_slice(&FRAME_MAGIC);
            fake.extend_from_slice(&(1u32 << 19).to_le_bytes());
            fake.extend_from_slice(&[0; 6]);
        }
        let hostile = StoreRecord::Message(crate::store::record::MessageRecord {
            id: 1,
            topic: "t".into(),
            publisher: "p".into(),
            qos: crate::codec::QoS::AtLeastOnce,
            retain: false,
            properties: bytes::Bytes::new(),
            payload: bytes::Bytes::from(fake),
            expires_at_ms: None,
        });
        let after = samples()[0].clone();
        let (mut buf, offsets) = frames(&[hostile, after.clone()]);
        buf[offsets[0] + 20] ^= 1;
        let started = std::time::Instant::now();
        let mut scanner = Scanner::new(&buf, SALT);
        let found: Vec<_> = scanner.by_ref().map(|(_, record)| record).collect();
        assert_eq!(found, vec![after]);
        assert_eq!(scanner.stats().corrupt.len(), 1);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn plan_orders_files_per_shard() {
        let log = |shard, sequence| SegmentName {
            shard,
            sequence,
            kind: SegmentKind::Log,
        };
        let snap = |shard, sequence| SegmentName {
            shard,
            sequence,
            kind: SegmentKind::Snapshot,
        };
        let plan = plan([
            log(1, 3),
            log(0, 2),
            snap(0, 1),
            log(0, 1),
            snap(0, 2),
            log(0, 3),
        ]);
        assert_eq!(plan.len(), 2);
        let zero = &plan[&0];
        assert_eq!(zero.snapshots, vec![snap(0, 2), snap(0, 1)]);
        assert_eq!(zero.logs, vec![log(0, 1), log(0, 2), log(0, 3)]);
        assert_eq!(
            zero.logs_after(Some(2)).copied().collect::<Vec<_>>(),
            vec![log(0, 3)]
        );
        assert_eq!(zero.logs_after(None).count(), 3);
    }
}
