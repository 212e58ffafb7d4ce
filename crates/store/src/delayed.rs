//! The durable side of delayed-message exchanges: messages held for `x-delay` are appended
//! to a log (the same segment files and group commit as queues, with the due time in the
//! record's expiry field) and acknowledged once routed. After a restart every held message
//! is read back and scheduled again.

use std::path::Path;
use std::sync::Arc;

use broker::Message;
use broker::message::DiskPos;
use broker::store::Durability;

use crate::Error;
use crate::disk_queue::{decode_payload, encode_payload};
use crate::segments::QueueFiles;
use crate::syncer::Syncer;

/// Bytes read per chunk while recovering.
const RECOVERY_READ_BYTES: usize = 4 * 1024 * 1024;

pub struct DelayedLog {
    files: Arc<QueueFiles>,
}

/// A held message read back at start.
pub struct Held {
    pub pos: DiskPos,
    pub seq: u64,
    pub due_ms: u64,
    pub msg: Message,
}

impl DelayedLog {
    /// Open (or create) the log in `dir` and return every message still held.
    pub fn open(dir: &Path, syncer: Arc<Syncer>) -> Result<(DelayedLog, Vec<Held>), Error> {
        let (files, rec) = QueueFiles::open(dir, true, syncer)?;
        let mut held = Vec::new();
        let mut next = rec.first;
        while let Some(from) = next {
            let (records, after) = files.read(from, RECOVERY_READ_BYTES)?;
            next = after;
            for r in records.into_iter().filter(|r| !r.acked) {
                if let Some((seq, due_ms, msg)) = decode_payload(&r.payload) {
                    held.push(Held { pos: r.pos, seq, due_ms, msg });
                }
            }
        }
        Ok((DelayedLog { files }, held))
    }

    /// Record a held message; returns its position and when it is durable.
    pub fn append(&self, seq: u64, due_ms: u64, msg: &Message) -> Result<(DiskPos, Durability), Error> {
        self.files.append(seq, true, true, |out| encode_payload(out, seq, due_ms, msg))
    }

    /// The message was routed: forget it.
    pub fn ack(&self, pos: DiskPos) {
        self.files.ack(pos, true);
    }

    /// The exchange was deleted.
    pub fn destroy(&self) {
        self.files.destroy();
    }
}
