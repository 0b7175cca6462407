//! [`StoreJournal`]: the shard's [`Journal`] hook for a data directory. Pure: it encodes each
//! [`JournalRecord`] as a frame of the on-disk format (the bytes [`StoreRecord::encode_body`]
//! and [`super::frame::encode_frame`] would give for the corresponding record, without
//! building it) into a buffer, numbers records, and hands the bytes out in batches that say
//! which file each piece goes to; the runtime's writer does the I/O.
//!
//! Files: records go to the current log segment (`shard-<n>-<seq>.log`, its header written
//! with its first record). [`Journal::begin_image`] closes it: the image that follows, up to
//! [`Journal::end_image`], becomes the snapshot `shard-<n>-<seq>.snap` (the state as of the
//! end of that log, closed by its checkpoint), and later records go to log `<seq + 1>`. Once
//! the snapshot is durable the shard's older files can be removed. An image is due when the
//! current log reaches the segment limit ([`JournalOptions::segment_limit`]).
//!
//! Message bodies: [`Journal::message_id`] writes a [`StoreRecord::Message`] only when the
//! message is not the body written last (a message fanned out to many sessions is written
//! once); within an image, each body once. Ids are `epoch << 40 | serial`: unique within the
//! shard's files across boots. An id is valid in the records that follow its body in the same
//! log, or in the image it was written in and the logs after it: ids of bodies written before
//! an image do not survive it (the image gives every body it writes a new id).

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;

use super::frame::encode_frame_with;
use super::record::{generation, options_byte, tag, EncodeError, StoreRecord, Writer};
use super::recover::{RecoveredOrigin, RecoveredRetained, RecoveredSession};
use super::segment::{SegmentHeader, SegmentKind, SegmentName};
use super::snapshot::SnapshotWriter;
use crate::broker::hooks::{
    BatchPart, BatchTarget, Durability, Journal, JournalBatch, JournalRecord, MessageId,
};
use crate::codec::{LastWill, Properties, PropertyFields};
use crate::session::Message;

/// The default segment size limit: an image is due once the current log holds this much.
pub const DEFAULT_SEGMENT_LIMIT: u64 = 64 << 20;

/// The largest buffer kept for a later batch ([`Journal::recycle`]).
const MAX_SPARE: usize = 4 << 20;

/// How often the (monotonic, wall-clock) anchor that converts expiry instants is taken anew.
const ANCHOR_REFRESH: Duration = Duration::from_secs(60);

/// The clocks a journal reads: the monotonic one the shard's `Instant`s come from, and the
/// wall clock the files hold.
pub trait Clock: fmt::Debug {
    /// The monotonic clock.
    fn now(&self) -> Instant;
    /// The wall clock, Unix milliseconds.
    fn unix_ms(&self) -> u64;
}

/// The system's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64)
    }
}

/// Where and how a shard's journal writes.
#[derive(Debug, Clone, Copy)]
pub struct JournalOptions {
    /// The shard.
    pub shard: u16,
    /// How many shards the broker runs.
    pub shard_count: u16,
    /// This boot's epoch (the high bits of message ids).
    pub epoch: u64,
    /// The sequence of the first log segment this journal writes (after every existing one).
    pub first_segment: u64,
    /// An image is due once the current log holds this many bytes.
    pub segment_limit: u64,
}

/// Counters of a journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Frames encoded (records, message bodies, checkpoints).
    pub frames: u64,
    /// Message bodies written.
    pub bodies: u64,
    /// Records that could not be encoded (too long for the format) and were left out.
    pub encode_failures: u64,
    /// Images completed.
    pub images: u64,
}

#[derive(Debug)]
struct LogState {
    sequence: u64,
    salt: u32,
    /// Its header has been written (into a batch).
    created: bool,
    /// Bytes of the segment so far, header included.
    len: u64,
}

#[derive(Debug)]
struct ImageState {
    /// The log segment it covers (the snapshot's sequence).
    sequence: u64,
    salt: u32,
    /// Records so far (the checkpoint counts them).
    records: u64,
    /// Bodies written in the image, by address (the Arc keeps the address from being reused).
    bodies: HashMap<usize, (Arc<Message>, MessageId), BuildHasherDefault<super::FoldHasher>>,
}

/// What recovery found in this shard's old files that now belongs to other shards: written into
/// the shard's first image (under the old generations), so that the image, which hides the
/// shard's older files, loses nothing before the new owners' images are durable.
#[derive(Debug, Default)]
pub struct Carry {
    /// Sessions whose newest records were in this shard's files, installed elsewhere.
    pub sessions: Vec<RecoveredSession>,
    /// Retained messages read from this shard's files, owned elsewhere now.
    pub retained: Vec<(String, RecoveredRetained)>,
    /// Origin entries of clients homed on other shards (which file held an entry is not
    /// kept, so every shard carries them: an extra copy is harmless, a lost one lets a resend
    /// through twice).
    pub origins: Vec<RecoveredOrigin>,
}

impl Carry {
    /// Nothing to carry.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.retained.is_empty() && self.origins.is_empty()
    }
}

/// The [`Journal`] of a shard with a data directory (see the module docs).
pub struct StoreJournal {
    options: JournalOptions,
    clock: Box<dyn Clock>,
    /// (monotonic, wall-clock ms) taken together, for converting expiry instants.
    anchor: (Instant, u64),
    next_message: u64,
    /// The last sequence number given out.
    sequence: u64,
    /// The last sequence number the runtime reported durable.
    durable: u64,
    log: LogState,
    image: Option<ImageState>,
    last_body: Option<(Arc<Message>, MessageId)>,
    carry: Option<Carry>,
    bytes: Vec<u8>,
    parts: Vec<BatchPart>,
    /// Buffers of a written batch ([`Journal::recycle`]), empty, for the next batch.
    spare: Option<(Vec<u8>, Vec<BatchPart>)>,
    /// The file the bytes from `open_start` on go to.
    open: Option<BatchTarget>,
    open_start: usize,
    scratch: BytesMut,
    stats: JournalStats,
}

impl fmt::Debug for StoreJournal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreJournal")
            .field("shard", &self.options.shard)
            .field("sequence", &self.sequence)
            .field("durable", &self.durable)
            .field("log", &self.log)
            .field("pending", &self.bytes.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl StoreJournal {
    /// A journal for `options`, reading `clock`.
    pub fn new(options: JournalOptions, clock: Box<dyn Clock>) -> StoreJournal {
        let anchor = (clock.now(), clock.unix_ms());
        StoreJournal {
            log: LogState {
                sequence: options.first_segment,
                salt: super::segment::fresh_salt(),
                created: false,
                len: 0,
            },
            options,
            clock,
            anchor,
            next_message: 1,
            sequence: 0,
            durable: 0,
            image: None,
            last_body: None,
            carry: None,
            bytes: Vec::new(),
            parts: Vec::new(),
            spare: None,
            open: None,
            open_start: 0,
            scratch: BytesMut::new(),
            stats: JournalStats::default(),
        }
    }

    /// Makes room for `bytes` more bytes of records: a start-up's first image is about as
    /// large as what recovery read, and growing a buffer of hundreds of MB by doubling copied
    /// it several times over.
    pub fn reserve(&mut self, bytes: usize) {
        self.bytes.reserve(bytes);
    }

    /// Records to add to the next image (see [`Carry`]).
    pub fn carry_into_next_image(&mut self, carry: Carry) {
        if !carry.is_empty() {
            self.carry = Some(carry);
        }
    }

    /// Counters.
    pub fn stats(&self) -> JournalStats {
        self.stats
    }

    /// The log segment records go to now.
    pub fn current_segment(&self) -> u64 {
        self.log.sequence
    }

    /// The last sequence number given out.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Wall-clock Unix milliseconds of `at`, through the anchor.
    fn unix_ms_at(&mut self, at: Instant) -> u64 {
        let now = self.clock.now();
        if now.saturating_duration_since(self.anchor.0) > ANCHOR_REFRESH {
            self.anchor = (now, self.clock.unix_ms());
        }
        let (instant, ms) = self.anchor;
        if at >= instant {
            ms.saturating_add(at.duration_since(instant).as_millis() as u64)
        } else {
            ms.saturating_sub(instant.duration_since(at).as_millis() as u64)
        }
    }

    fn new_message_id(&mut self) -> MessageId {
        let id = generation(self.options.epoch, self.next_message);
        self.next_message += 1;
        id
    }

    /// Makes `target` the file the next bytes go to.
    fn switch_to(&mut self, target: BatchTarget) {
        if self.open == Some(target) {
            return;
        }
        self.close_part();
        self.open = Some(target);
        self.open_start = self.bytes.len();
    }

    fn close_part(&mut self) {
        if let Some(target) = self.open.take() {
            let len = self.bytes.len() - self.open_start;
            if len > 0 {
                self.parts.push(BatchPart { target, len });
            }
        }
        self.open_start = self.bytes.len();
    }

    /// The salt of the file the next frame goes to, its header written first if it is new.
    fn frame_target(&mut self) -> u32 {
        if let Some(image) = &self.image {
            return image.salt;
        }
        let sequence = self.log.sequence;
        if !self.log.created {
            self.log.created = true;
            self.switch_to(BatchTarget::Log {
                sequence,
                create: true,
            });
            let before = self.bytes.len();
            SegmentHeader::with_salt(
                self.segment_name(sequence, SegmentKind::Log),
                self.shard_count(),
                self.log.salt,
            )
            .encode(&mut self.bytes);
            self.log.len += (self.bytes.len() - before) as u64;
        } else if self.open.is_none() {
            self.switch_to(BatchTarget::Log {
                sequence,
                create: false,
            });
        }
        self.log.salt
    }

    fn segment_name(&self, sequence: u64, kind: SegmentKind) -> SegmentName {
        SegmentName {
            shard: self.options.shard,
            sequence,
            kind,
        }
    }

    fn shard_count(&self) -> u16 {
        self.options.shard_count
    }

    /// Appends one frame whose body `body` writes; its sequence number, or `None` if the record
    /// cannot be encoded (then nothing is written).
    fn frame(
        &mut self,
        body: impl FnOnce(&mut Vec<u8>, &mut BytesMut) -> Result<(), EncodeError>,
    ) -> Option<u64> {
        let salt = self.frame_target();
        let scratch = &mut self.scratch;
        match encode_frame_with(salt, &mut self.bytes, |out| body(out, scratch)) {
            Ok(len) => {
                self.sequence += 1;
                self.stats.frames += 1;
                match &mut self.image {
                    Some(image) => image.records += 1,
                    None => self.log.len += len as u64,
                }
                Some(self.sequence)
            }
            Err(error) => {
                self.stats.encode_failures += 1;
                tracing::error!(
                    shard = self.options.shard,
                    %error,
                    "a journal record cannot be encoded; it is left out"
                );
                None
            }
        }
    }

    fn store_record(&mut self, record: &StoreRecord) -> Option<u64> {
        self.frame(|out, _| record.encode_body(out))
    }

    /// Writes the body of `message` under `id`.
    fn write_body(&mut self, message: &Message, id: MessageId) {
        let expires_at_ms = message.expires_at.map(|at| self.unix_ms_at(at));
        self.stats.bodies += 1;
        self.frame(|out, scratch| {
            let mut w = Writer(out);
            w.u8(tag::MESSAGE);
            w.u64(id);
            w.str("topic", &message.topic)?;
            w.str("publisher", &message.publisher)?;
            w.u8(message.qos as u8);
            w.bool(message.retain);
            match message.properties.get() {
                // Most messages have none: an empty block, without comparing every field of
                // a `Properties` with its default.
                None => w.bytes("properties", &[])?,
                Some(properties) => {
                    encode_properties(properties, scratch)?;
                    w.bytes("properties", scratch)?;
                }
            }
            w.bytes("payload", &message.payload)?;
            w.opt_u64(expires_at_ms);
            Ok(())
        });
    }

    /// The carried records, written at the end of an image.
    fn write_carry(&mut self) {
        let Some(carry) = self.carry.take() else {
            return;
        };
        let first = self.new_message_id();
        let mut writer = SnapshotWriter::new(first);
        for session in &carry.sessions {
            writer.session(session);
        }
        for (topic, retained) in &carry.retained {
            writer.retained(topic, retained);
        }
        // The ids the writer used, taken from the counter.
        let used = writer.next_id().saturating_sub(first);
        self.next_message += used;
        let mut records = writer.finish(0);
        records.pop(); // its checkpoint: the image writes its own
        for record in &records {
            self.store_record(record);
        }
        for origin in carry.origins {
            self.store_record(&StoreRecord::OriginReceived {
                publisher: origin.publisher,
                packet_id: origin.packet_id,
                digest: origin.digest,
                clients: origin.clients.into_iter().collect(),
            });
        }
    }
}

/// The MQTT 5.0 property block of `properties` as encoded on the wire, its length prefix
/// included (nothing when there are none), into `scratch`.
fn encode_properties(
    properties: &PropertyFields,
    scratch: &mut BytesMut,
) -> Result<(), EncodeError> {
    scratch.clear();
    if properties.is_empty() {
        return Ok(());
    }
    properties
        .encode(scratch)
        .map_err(|_| EncodeError::TooLong {
            field: "properties",
            len: properties.body_len(),
        })
}

/// The body of `record` (what [`StoreRecord::encode_body`] writes for the corresponding store
/// record), `at_ms` for its wall-clock field.
fn encode_journal_body(
    record: &JournalRecord<'_>,
    at_ms: u64,
    out: &mut Vec<u8>,
    scratch: &mut BytesMut,
) -> Result<(), EncodeError> {
    use JournalRecord::*;
    let mut w = Writer(out);
    match *record {
        SessionStarted {
            client_id,
            generation,
            username,
            protocol,
            expiry,
        } => {
            w.u8(tag::SESSION_STARTED);
            w.session(client_id, generation)?;
            w.opt_str("username", username)?;
            w.u8(protocol);
            w.opt_u32(expiry);
            w.u64(at_ms);
        }
        SessionDisconnected {
            client_id,
            generation,
            expiry,
        } => {
            w.u8(tag::SESSION_DISCONNECTED);
            w.session(client_id, generation)?;
            w.u64(at_ms);
            w.opt_u32(expiry);
        }
        SessionEnded {
            client_id,
            generation,
        } => {
            w.u8(tag::SESSION_ENDED);
            w.session(client_id, generation)?;
        }
        WillSet {
            client_id,
            generation,
            will,
        } => {
            w.u8(tag::WILL_SET);
            w.session(client_id, generation)?;
            encode_will(&mut w, will, scratch)?;
        }
        WillCleared {
            client_id,
            generation,
        } => {
            w.u8(tag::WILL_CLEARED);
            w.session(client_id, generation)?;
        }
        ImageComplete {
            client_id,
            generation,
        } => {
            w.u8(tag::IMAGE_COMPLETE);
            w.session(client_id, generation)?;
        }
        OriginReceived {
            publisher,
            packet_id,
            digest,
            clients,
        } => w.origin_received(publisher, packet_id, digest, clients)?,
        OriginCleared {
            publisher,
            packet_id,
        } => {
            w.u8(tag::ORIGIN_CLEARED);
            w.origin(publisher, packet_id)?;
        }
        Subscribed {
            client_id,
            generation,
            filter,
            options,
            subscription_id,
        } => {
            w.u8(tag::SUBSCRIBED);
            w.session(client_id, generation)?;
            w.str("filter", filter)?;
            w.u8(options_byte(&options));
            w.u32(subscription_id);
        }
        Unsubscribed {
            client_id,
            generation,
            filter,
        } => {
            w.u8(tag::UNSUBSCRIBED);
            w.session(client_id, generation)?;
            w.str("filter", filter)?;
        }
        Enqueued {
            client_id,
            generation,
            message,
            qos,
            retain,
            subscription_ids,
        } => {
            w.u8(tag::ENQUEUED);
            w.session(client_id, generation)?;
            w.u64(message);
            w.delivery_parts(qos, retain, subscription_ids)?;
        }
        InFlight {
            client_id,
            generation,
            message,
            packet_id,
            qos,
            retain,
            subscription_ids,
        } => {
            w.u8(tag::IN_FLIGHT);
            w.session(client_id, generation)?;
            w.u64(message);
            w.u16(packet_id);
            w.delivery_parts(qos, retain, subscription_ids)?;
        }
        DupSet {
            client_id,
            generation,
            packet_id,
        } => w.packet(tag::DUP_SET, client_id, generation, packet_id)?,
        PubRecReceived {
            client_id,
            generation,
            packet_id,
        } => w.packet(tag::PUBREC_RECEIVED, client_id, generation, packet_id)?,
        Acked {
            client_id,
            generation,
            packet_id,
        } => w.packet(tag::ACKED, client_id, generation, packet_id)?,
        Dequeued {
            client_id,
            generation,
            message,
        } => {
            w.u8(tag::DEQUEUED);
            w.session(client_id, generation)?;
            w.u64(message);
        }
        InboundReceived {
            client_id,
            generation,
            packet_id,
        } => w.packet(tag::INBOUND_RECEIVED, client_id, generation, packet_id)?,
        InboundReleased {
            client_id,
            generation,
            packet_id,
        } => w.packet(tag::INBOUND_RELEASED, client_id, generation, packet_id)?,
        RetainedSet {
            topic,
            version,
            message,
        } => {
            w.u8(tag::RETAINED_SET);
            w.str("topic", topic)?;
            w.u64(version);
            w.u64(message);
        }
        RetainedCleared { topic, version } => {
            w.u8(tag::RETAINED_CLEARED);
            w.str("topic", topic)?;
            w.u64(version);
        }
    }
    Ok(())
}

/// A will as [`super::record::WillRecord`] encodes it (delay: the will delay interval).
fn encode_will(
    w: &mut Writer<'_>,
    will: &LastWill,
    scratch: &mut BytesMut,
) -> Result<(), EncodeError> {
    w.str("will topic", &will.topic)?;
    w.u8(will.qos as u8);
    w.bool(will.retain);
    encode_properties(&will.properties, scratch)?;
    w.bytes("will properties", scratch)?;
    w.bytes("will payload", &will.payload)?;
    w.u32(will.properties.will_delay_interval.unwrap_or(0));
    Ok(())
}

/// Whether a record carries a wall-clock time.
fn has_time(record: &JournalRecord<'_>) -> bool {
    matches!(
        record,
        JournalRecord::SessionStarted { .. } | JournalRecord::SessionDisconnected { .. }
    )
}

impl Journal for StoreJournal {
    fn enabled(&self) -> bool {
        true
    }

    fn append(&mut self, record: &JournalRecord<'_>) -> Durability {
        let at_ms = if has_time(record) {
            self.clock.unix_ms()
        } else {
            0
        };
        match self.frame(|out, scratch| encode_journal_body(record, at_ms, out, scratch)) {
            Some(sequence) => Durability::At(sequence),
            None => self.barrier(),
        }
    }

    fn message_id(&mut self, message: &Arc<Message>) -> MessageId {
        let key = Arc::as_ptr(message) as usize;
        if let Some(image) = &self.image {
            if let Some((_, id)) = image.bodies.get(&key) {
                return *id;
            }
        } else if let Some((last, id)) = &self.last_body {
            if Arc::ptr_eq(last, message) {
                return *id;
            }
        }
        let id = self.new_message_id();
        self.write_body(message, id);
        match &mut self.image {
            Some(image) => {
                image.bodies.insert(key, (Arc::clone(message), id));
            }
            None => self.last_body = Some((Arc::clone(message), id)),
        }
        id
    }

    fn barrier(&self) -> Durability {
        if self.sequence > self.durable {
            Durability::At(self.sequence)
        } else {
            Durability::Now
        }
    }

    fn take_batch(&mut self) -> Option<JournalBatch> {
        if self.image.is_some() {
            return None;
        }
        self.close_part();
        if self.bytes.is_empty() {
            return None;
        }
        self.open_start = 0;
        // The next batch goes into the buffers of one written before (group commit: one batch
        // is written while the next fills, so two buffers take turns, each as large as the
        // largest batch so far: no allocation and no regrowth per batch). Without one, it
        // starts with room for a batch like this (up to 1 MiB: not a snapshot's size): growing
        // from empty would reallocate and copy it a dozen times.
        let (bytes, parts) = match self.spare.take() {
            Some(spare) => spare,
            None => (
                Vec::with_capacity(self.bytes.len().min(1 << 20)),
                Vec::new(),
            ),
        };
        Some(JournalBatch {
            bytes: std::mem::replace(&mut self.bytes, bytes),
            last_sequence: self.sequence,
            parts: std::mem::replace(&mut self.parts, parts),
        })
    }

    fn recycle(&mut self, batch: JournalBatch) {
        let JournalBatch {
            mut bytes,
            mut parts,
            ..
        } = batch;
        // A snapshot's buffer (hundreds of MB after a large recovery) is not kept.
        if bytes.capacity() > MAX_SPARE {
            return;
        }
        bytes.clear();
        parts.clear();
        self.spare = Some((bytes, parts));
    }

    fn image_due(&self) -> bool {
        self.image.is_none() && self.log.len >= self.options.segment_limit
    }

    fn begin_image(&mut self) {
        if self.image.is_some() {
            return;
        }
        let sequence = self.log.sequence;
        let salt = super::segment::fresh_salt();
        self.switch_to(BatchTarget::Snapshot { sequence });
        SegmentHeader::with_salt(
            self.segment_name(sequence, SegmentKind::Snapshot),
            self.shard_count(),
            salt,
        )
        .encode(&mut self.bytes);
        self.image = Some(ImageState {
            sequence,
            salt,
            records: 0,
            bodies: HashMap::default(),
        });
        // The body written last may be in the log the image replaces.
        self.last_body = None;
    }

    fn end_image(&mut self) {
        if self.image.is_none() {
            return;
        }
        self.write_carry();
        let Some(image) = self.image.as_ref() else {
            return;
        };
        let checkpoint = StoreRecord::Checkpoint {
            through_segment: image.sequence,
            records: image.records,
        };
        self.store_record(&checkpoint);
        let Some(image) = self.image.take() else {
            return;
        };
        self.close_part();
        self.stats.images += 1;
        self.log = LogState {
            sequence: image.sequence + 1,
            salt: super::segment::fresh_salt(),
            created: false,
            len: 0,
        };
    }

    fn has_batch(&self) -> bool {
        self.image.is_none() && !self.bytes.is_empty()
    }

    fn mark_durable(&mut self, sequence: u64) {
        self.durable = self.durable.max(sequence);
    }
}

/// Decodes properties stored by a journal ([`super::record::MessageRecord::properties`],
/// [`super::record::WillRecord::properties`]: the wire block, length prefix included; empty
/// bytes: none).
pub fn decode_properties(
    bytes: &[u8],
    context: crate::codec::PropertyContext,
) -> Result<Properties, crate::codec::DecodeError> {
    if bytes.is_empty() {
        return Ok(Properties::default());
    }
    let mut reader = crate::codec::wire::Reader::new(bytes::Bytes::copy_from_slice(bytes));
    Properties::decode(&mut reader, context)
}

#[cfg(test)]
mod tests;
