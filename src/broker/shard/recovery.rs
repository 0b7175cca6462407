//! Start-up recovery and snapshots: installing what the data directory held, and writing the
//! shard's whole durable state into its journal (the image a new segment starts with).

use super::*;
use crate::broker::hooks::Journal;
use crate::store::recover::{RecoveredRetained, RecoveredSession};

impl Shard {
    /// Installs the sessions recovered for this shard (their home shard for the current shard
    /// count) and the retained messages of the topics this shard owns. Called once, before
    /// the shard serves any connection; each session gets a new generation of this boot.
    pub fn install_recovered(
        &mut self,
        sessions: Vec<RecoveredSession>,
        retained: Vec<(String, RecoveredRetained)>,
        now: Instant,
    ) {
        self.set_now(now);
        // Filled in by the durable-session work (issue 11).
        let _ = (sessions, retained);
    }

    /// Writes the shard's whole durable state (every persistent session it owns, every
    /// retained message of the topics it owns) between `begin_image` and `end_image`.
    pub fn journal_image(&mut self, now: Instant) {
        self.set_now(now);
        if !self.hooks.journal.enabled() {
            return;
        }
        self.hooks.journal.begin_image();
        // Filled in by the durable-session work (issue 11).
        self.hooks.journal.end_image();
    }

    /// The journal hook, for the runtime that writes its batches.
    pub fn journal_mut(&mut self) -> &mut dyn Journal {
        &mut *self.hooks.journal
    }
}
