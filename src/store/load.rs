//! Reading a data directory's segments back, sans I/O: the caller hands in the list of segment
//! names and a function that reads a file; this decides which files count (the newest complete
//! snapshot per shard, the logs after it), scans them and replays their records, and reports
//! per file what was found. The broker's start-up and `shardmq inspect` share it.

use std::collections::BTreeMap;
use std::io;

use thiserror::Error;

use super::record::StoreRecord;
use super::recover::{RecoveredState, Replayer};
use super::segment::{
    open_segment, plan, snapshot_is_complete, HeaderError, ScanStats, Scanner, SegmentHeader,
    SegmentKind, SegmentName,
};

/// What became of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileUse {
    /// Its records were replayed.
    Replayed,
    /// A snapshot that is incomplete or damaged (a crash during compaction): not used.
    IncompleteSnapshot,
    /// A snapshot older than the one used.
    SupersededSnapshot,
    /// A log covered by the snapshot used (left over from compaction).
    CoveredLog,
    /// The header is unusable (a crash right after creating the file, or damage).
    BadHeader(HeaderError),
    /// The header names another file (shard, sequence or kind).
    MisnamedHeader(SegmentHeader),
}

/// One file's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// The file.
    pub name: SegmentName,
    /// Its length in bytes (`None`: not read, as it was not needed).
    pub bytes: Option<u64>,
    /// The writer's shard count (from the header, when readable).
    pub shard_count: Option<u16>,
    /// What became of it.
    pub used: FileUse,
    /// What its scan found (empty when it was not scanned).
    pub scan: ScanStats,
}

impl FileReport {
    fn new(name: SegmentName, used: FileUse) -> FileReport {
        FileReport {
            name,
            bytes: None,
            shard_count: None,
            used,
            scan: ScanStats::default(),
        }
    }
}

/// Why a directory cannot be loaded at all.
#[derive(Debug, Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("cannot read {name}: {source}")]
    Read {
        /// The file.
        name: SegmentName,
        /// The error.
        source: io::Error,
    },
    /// A file of a newer format than this build understands.
    #[error("{name}: {source}")]
    NewerFormat {
        /// The file.
        name: SegmentName,
        /// The header error (says which versions).
        source: HeaderError,
    },
}

/// What loading found.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The replayed state.
    pub state: RecoveredState,
    /// Every file, in replay order per shard.
    pub files: Vec<FileReport>,
}

impl Loaded {
    /// Records decoded from the files replayed.
    pub fn records(&self) -> u64 {
        self.replayed().map(|file| file.scan.records).sum()
    }

    /// Corrupt regions skipped in the files replayed.
    pub fn corrupt_regions(&self) -> usize {
        self.replayed().map(|file| file.scan.corrupt.len()).sum()
    }

    /// Bytes skipped in corrupt regions of the files replayed.
    pub fn skipped_bytes(&self) -> u64 {
        self.replayed().map(|file| file.scan.skipped_bytes()).sum()
    }

    /// Intact frames whose record this version does not understand.
    pub fn undecodable(&self) -> u64 {
        self.replayed().map(|file| file.scan.undecodable).sum()
    }

    /// Files replayed whose end is not a valid frame (zero padding excluded).
    pub fn torn_tails(&self) -> usize {
        self.replayed()
            .filter(|file| file.scan.torn_tail.is_some_and(|tail| !tail.zeros))
            .count()
    }

    fn replayed(&self) -> impl Iterator<Item = &FileReport> {
        self.files
            .iter()
            .filter(|file| file.used == FileUse::Replayed)
    }
}

/// Loads the segments `names`, reading each with `read`.
pub fn load(
    names: impl IntoIterator<Item = SegmentName>,
    read: impl FnMut(&SegmentName) -> io::Result<Vec<u8>>,
) -> Result<Loaded, LoadError> {
    let mut replayer = Replayer::new();
    let files = load_into(&mut replayer, names, read)?;
    Ok(Loaded {
        state: replayer.finish(),
        files,
    })
}

/// [`load`] into a replayer the caller finishes: a shard can load its own files into its own
/// replayer (in parallel with the others), and the replayers be merged
/// ([`Replayer::merge`]).
pub fn load_into<B: AsRef<[u8]>>(
    replayer: &mut Replayer,
    names: impl IntoIterator<Item = SegmentName>,
    mut read: impl FnMut(&SegmentName) -> io::Result<B>,
) -> Result<Vec<FileReport>, LoadError> {
    let mut files = Vec::new();
    for (shard, shard_files) in plan(names) {
        let mut through = None;
        for name in &shard_files.snapshots {
            let mut report = FileReport::new(*name, FileUse::SupersededSnapshot);
            if through.is_none() {
                let file = read(name).map_err(|source| LoadError::Read {
                    name: *name,
                    source,
                })?;
                let bytes = file.as_ref();
                report.bytes = Some(bytes.len() as u64);
                match open_checked(name, bytes)? {
                    Err(used) => report.used = used,
                    Ok((header, mut scanner)) => {
                        report.shard_count = Some(header.shard_count);
                        // Replayed on its own as it is scanned (not collected first: a
                        // snapshot is the shard's whole state), and merged in only once the
                        // whole snapshot checks out. It is the first file of its shard, so a
                        // merge is what replaying it in place would give (see
                        // `Replayer::merge`); into an empty replay, it is a move.
                        let mut image = Replayer::new();
                        let mut last: Option<StoreRecord> = None;
                        for (_, record) in scanner.by_ref() {
                            if let Some(previous) = last.replace(record) {
                                image.apply(shard, previous);
                            }
                        }
                        let scan = scanner.into_stats();
                        if snapshot_is_complete(name, &scan, last.as_ref()) {
                            if let Some(last) = last {
                                image.apply(shard, last);
                            }
                            replayer.merge(image);
                            report.used = FileUse::Replayed;
                            through = Some(name.sequence);
                        } else {
                            report.used = FileUse::IncompleteSnapshot;
                        }
                        report.scan = scan;
                    }
                }
            }
            files.push(report);
        }
        for name in &shard_files.logs {
            let mut report = FileReport::new(*name, FileUse::CoveredLog);
            if through.is_some_and(|through| name.sequence <= through) {
                files.push(report);
                continue;
            }
            let file = read(name).map_err(|source| LoadError::Read {
                name: *name,
                source,
            })?;
            let bytes = file.as_ref();
            report.bytes = Some(bytes.len() as u64);
            match open_checked(name, bytes)? {
                Err(used) => report.used = used,
                Ok((header, mut scanner)) => {
                    report.shard_count = Some(header.shard_count);
                    for (_, record) in scanner.by_ref() {
                        replayer.apply(shard, record);
                    }
                    report.used = FileUse::Replayed;
                    report.scan = scanner.into_stats();
                }
            }
            files.push(report);
        }
    }
    Ok(files)
}

/// The file's header and a scanner over its frames, or why it is not used; a newer format is
/// an error.
fn open_checked<'a>(
    name: &SegmentName,
    bytes: &'a [u8],
) -> Result<Result<(SegmentHeader, Scanner<'a>), FileUse>, LoadError> {
    match open_segment(bytes) {
        Ok((header, _)) if header.name() != *name => Ok(Err(FileUse::MisnamedHeader(header))),
        Ok(opened) => Ok(Ok(opened)),
        Err(source @ HeaderError::NewerFormat { .. }) => Err(LoadError::NewerFormat {
            name: *name,
            source,
        }),
        Err(error) => Ok(Err(FileUse::BadHeader(error))),
    }
}

/// Encodes a whole segment file (header and frames) from `records`: what a shard writes,
/// for tests and tools. Records that cannot be encoded are skipped.
pub fn encode_segment(name: SegmentName, shard_count: u16, records: &[StoreRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    let header = SegmentHeader::new(name, shard_count);
    header.encode(&mut out);
    for record in records {
        let _ = super::frame::encode_frame(record, header.salt, &mut out);
    }
    out
}

/// [`encode_segment`] for a snapshot: `records` followed by the checkpoint that completes it.
pub fn encode_snapshot(name: SegmentName, shard_count: u16, records: &[StoreRecord]) -> Vec<u8> {
    let mut all = records.to_vec();
    all.push(StoreRecord::Checkpoint {
        through_segment: name.sequence,
        records: records.len() as u64,
    });
    encode_segment(
        SegmentName {
            kind: SegmentKind::Snapshot,
            ..name
        },
        shard_count,
        &all,
    )
}

/// Per-shard counts for reports: shard -> files.
pub fn files_by_shard(files: &[FileReport]) -> BTreeMap<u16, Vec<&FileReport>> {
    let mut by_shard = BTreeMap::<u16, Vec<&FileReport>>::new();
    for file in files {
        by_shard.entry(file.name.shard).or_default().push(file);
    }
    by_shard
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use crate::store::record::{Delivery, MessageRecord};
    use bytes::Bytes;
    use std::collections::HashMap;

    fn log(shard: u16, sequence: u64) -> SegmentName {
        SegmentName {
            shard,
            sequence,
            kind: SegmentKind::Log,
        }
    }

    fn snap(shard: u16, sequence: u64) -> SegmentName {
        SegmentName {
            shard,
            sequence,
            kind: SegmentKind::Snapshot,
        }
    }

    fn started(client: &str, generation: u64) -> StoreRecord {
        StoreRecord::SessionStarted {
            client_id: client.into(),
            generation,
            username: None,
            protocol: 4,
            expiry_secs: None,
            at_ms: 0,
        }
    }

    fn sub(client: &str, generation: u64, filter: &str) -> StoreRecord {
        StoreRecord::Subscribed {
            client_id: client.into(),
            generation,
            filter: filter.into(),
            options: Default::default(),
            subscription_id: 0,
        }
    }

    fn run(files: &HashMap<SegmentName, Vec<u8>>) -> Loaded {
        load(files.keys().copied(), |name| {
            files
                .get(name)
                .cloned()
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        })
        .unwrap()
    }

    #[test]
    fn a_complete_snapshot_replaces_the_logs_it_covers() {
        let mut files = HashMap::new();
        files.insert(
            log(0, 1),
            encode_segment(log(0, 1), 1, &[started("a", 1), sub("a", 1, "old")]),
        );
        files.insert(
            snap(0, 1),
            encode_snapshot(snap(0, 1), 1, &[started("a", 1), sub("a", 1, "snap")]),
        );
        files.insert(
            log(0, 2),
            encode_segment(log(0, 2), 1, &[sub("a", 1, "after")]),
        );
        let loaded = run(&files);
        let session = &loaded.state.sessions["a"];
        assert_eq!(
            session.subscriptions.keys().collect::<Vec<_>>(),
            vec!["after", "snap"]
        );
        let uses: HashMap<_, _> = loaded
            .files
            .iter()
            .map(|f| (f.name, f.used.clone()))
            .collect();
        assert_eq!(uses[&log(0, 1)], FileUse::CoveredLog);
        assert_eq!(uses[&snap(0, 1)], FileUse::Replayed);
        assert_eq!(uses[&log(0, 2)], FileUse::Replayed);
    }

    #[test]
    fn an_incomplete_snapshot_is_ignored_for_the_logs() {
        let mut files = HashMap::new();
        files.insert(
            log(0, 1),
            encode_segment(log(0, 1), 1, &[started("a", 1), sub("a", 1, "log")]),
        );
        let mut partial = encode_snapshot(snap(0, 1), 1, &[started("a", 1), sub("a", 1, "snap")]);
        partial.truncate(partial.len() - 3);
        files.insert(snap(0, 1), partial);
        let loaded = run(&files);
        assert_eq!(
            loaded.state.sessions["a"]
                .subscriptions
                .keys()
                .collect::<Vec<_>>(),
            vec!["log"]
        );
        assert!(loaded
            .files
            .iter()
            .any(|f| f.used == FileUse::IncompleteSnapshot));
    }

    #[test]
    fn bad_and_misnamed_headers_are_reported_not_fatal() {
        let mut files = HashMap::new();
        files.insert(log(0, 1), b"SHMQSEG".to_vec());
        files.insert(log(0, 2), encode_segment(log(0, 3), 1, &[started("x", 1)]));
        files.insert(log(1, 1), encode_segment(log(1, 1), 2, &[started("y", 1)]));
        let loaded = run(&files);
        assert_eq!(loaded.state.sessions.keys().collect::<Vec<_>>(), vec!["y"]);
        assert!(matches!(
            loaded.files[0].used,
            FileUse::BadHeader(HeaderError::Incomplete(7))
        ));
        assert!(matches!(loaded.files[1].used, FileUse::MisnamedHeader(_)));
    }

    #[test]
    fn a_newer_format_is_an_error_and_read_errors_surface() {
        let mut bytes = Vec::new();
        SegmentHeader {
            format: crate::store::FORMAT_VERSION as u16 + 1,
            ..SegmentHeader::new(log(0, 1), 1)
        }
        .encode(&mut bytes);
        let result = load([log(0, 1)], |_| Ok(bytes.clone()));
        assert!(matches!(result, Err(LoadError::NewerFormat { .. })));
        let result = load([log(0, 1)], |_| Err(io::Error::other("disk on fire")));
        assert!(result.unwrap_err().to_string().contains("disk on fire"));
    }

    #[test]
    fn damage_counts_are_summed_over_replayed_files() {
        let body = StoreRecord::Message(MessageRecord {
            id: 1,
            topic: "t".into(),
            publisher: "p".into(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Bytes::new(),
            payload: Bytes::from_static(b"x"),
            expires_at_ms: None,
        });
        let queue = StoreRecord::Enqueued {
            client_id: "a".into(),
            generation: 1,
            message: 1,
            delivery: Delivery {
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: vec![],
            },
        };
        let mut bytes = encode_segment(log(0, 1), 1, &[started("a", 1), body, queue.clone()]);
        let salt = SegmentHeader::decode(&bytes).unwrap().salt;
        // A torn last frame.
        crate::store::frame::encode_frame(&queue, salt, &mut bytes).unwrap();
        bytes.truncate(bytes.len() - 1);
        // Flip a byte inside the first record's body.
        bytes[crate::store::segment::HEADER_LEN + 12] ^= 0x55;
        let mut files = HashMap::new();
        files.insert(log(0, 1), bytes);
        let loaded = run(&files);
        assert_eq!(loaded.records(), 2);
        assert_eq!(loaded.corrupt_regions(), 1);
        assert_eq!(loaded.torn_tails(), 1);
        assert!(loaded.skipped_bytes() > 0);
        // The session lost its start but keeps its queue.
        let session = &loaded.state.sessions["a"];
        assert!(!session.started);
        assert_eq!(session.queue.len(), 1);
    }
}
