//! `shardmq inspect DIR`: what a data directory holds, for operators. Reads every segment
//! without taking the lock (a running broker's newest segment may show a torn tail: the record
//! being written) and never writes.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use thiserror::Error;

use super::dir::{list_segments, read_format, DirError};
use super::load::{files_by_shard, load, FileUse, LoadError, Loaded};
use super::recover::InFlightMessage;

/// Why a directory cannot be inspected.
#[derive(Debug, Error)]
pub enum InspectError {
    /// The directory or its FORMAT file.
    #[error(transparent)]
    Dir(#[from] DirError),
    /// Reading the segments.
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Loads `dir` and describes it.
pub fn inspect(dir: &Path) -> Result<String, InspectError> {
    let format = read_format(dir)?;
    let names = list_segments(dir)?;
    if format.is_none() && names.is_empty() {
        return Err(DirError::NotADataDir {
            path: dir.to_owned(),
        }
        .into());
    }
    let loaded = load(names, |name| fs::read(dir.join(name.file_name())))?;
    Ok(describe(dir, format, &loaded))
}

/// The report for a loaded directory.
pub fn describe(dir: &Path, format: Option<u32>, loaded: &Loaded) -> String {
    let mut out = String::new();
    let state = &loaded.state;
    let _ = writeln!(out, "data directory: {}", dir.display());
    match format {
        Some(version) => {
            let _ = writeln!(out, "format version: {version}");
        }
        None => {
            let _ = writeln!(out, "format version: none (no FORMAT file)");
        }
    }
    let replayed = loaded
        .files
        .iter()
        .filter(|file| file.used == FileUse::Replayed)
        .count();
    let _ = writeln!(
        out,
        "segments: {} ({} replayed)",
        loaded.files.len(),
        replayed
    );
    for (shard, files) in files_by_shard(&loaded.files) {
        let _ = writeln!(out, "  shard {shard}:");
        for file in files {
            let _ = write!(out, "    {}", file.name);
            if let Some(bytes) = file.bytes {
                let _ = write!(out, ": {bytes} bytes");
            }
            if let Some(count) = file.shard_count {
                let _ = write!(out, ", written with {count} shards");
            }
            match &file.used {
                FileUse::Replayed => {
                    let _ = write!(out, ", {} records", file.scan.records);
                }
                FileUse::IncompleteSnapshot => out.push_str(", incomplete snapshot (not used)"),
                FileUse::SupersededSnapshot => out.push_str(", older snapshot (not used)"),
                FileUse::CoveredLog => out.push_str(", covered by a snapshot (not used)"),
                FileUse::BadHeader(error) => {
                    let _ = write!(out, ", unusable header: {error}");
                }
                FileUse::MisnamedHeader(header) => {
                    let _ = write!(out, ", header names {} (not used)", header.name());
                }
            }
            for region in &file.scan.corrupt {
                let _ = write!(
                    out,
                    ", corrupt at {} ({} bytes skipped, {:?})",
                    region.offset, region.len, region.error
                );
            }
            if file.scan.undecodable > 0 {
                let _ = write!(out, ", {} undecodable records", file.scan.undecodable);
            }
            if let Some(tail) = file.scan.torn_tail {
                if tail.zeros {
                    let _ = write!(out, ", {} zero bytes of padding at the end", tail.len);
                } else {
                    let _ = write!(out, ", torn tail at {} ({} bytes)", tail.offset, tail.len);
                }
            }
            out.push('\n');
        }
    }
    let _ = writeln!(out, "records: {}", loaded.records());
    let _ = writeln!(
        out,
        "corrupt regions: {} ({} bytes skipped)",
        loaded.corrupt_regions(),
        loaded.skipped_bytes()
    );
    let _ = writeln!(out, "undecodable records: {}", loaded.undecodable());
    let _ = writeln!(out, "torn tails: {}", loaded.torn_tails());
    let stats = &state.stats;
    let _ = writeln!(
        out,
        "replay: {} applied, {} stale, {} sessions superseded by a newer owner, {} missing messages, {} missing entries, {} sessions without a start record, {} cut session images set aside",
        stats.applied,
        stats.stale,
        stats.superseded_sessions,
        stats.missing_messages,
        stats.missing_entries,
        stats.sessions_without_start,
        stats.cut_images
    );
    let _ = writeln!(out, "sessions: {}", state.sessions.len());
    for session in state.sessions.values() {
        let pubrel = session
            .inflight
            .values()
            .filter(|entry| **entry == InFlightMessage::PubRelDue)
            .count();
        let _ = write!(
            out,
            "  {:?}: generation {:#x}, shard {}, {} subscriptions, {} queued, {} in flight ({} awaiting PUBCOMP), {} inbound QoS 2",
            session.client_id,
            session.generation,
            session.source_shard,
            session.subscriptions.len(),
            session.queue.len(),
            session.inflight.len(),
            pubrel,
            session.inbound_qos2.len(),
        );
        if let Some(user) = &session.username {
            let _ = write!(out, ", user {user:?}");
        }
        if session.will.is_some() {
            out.push_str(", will pending");
        }
        match session.disconnected_at_ms {
            None => out.push_str(", connected at the end"),
            Some(at) => {
                let _ = write!(out, ", disconnected at {at} ms");
            }
        }
        if !session.started {
            out.push_str(", start record missing");
        }
        out.push('\n');
    }
    let queued: usize = state.sessions.values().map(|s| s.queue.len()).sum();
    let inflight: usize = state.sessions.values().map(|s| s.inflight.len()).sum();
    let _ = writeln!(out, "messages: {queued} queued, {inflight} in flight");
    let _ = writeln!(out, "retained messages: {}", state.retained.len());
    out
}
