//! One queue's files, in its own directory:
//!
//! - `NNNNNNNNNN.seg`: append-only message records ([`crate::record`] framing), at most
//!   [`SEGMENT_MAX_BYTES`] each (a record bigger than that gets a segment of its own).
//! - `NNNNNNNNNN.acks`: offsets of acknowledged records of that segment, 8 bytes each
//!   (offset u32 LE + crc32c of those 4 bytes).
//! - `NNNNNNNNNN.meta`: written when a segment is sealed: its record count and length, so
//!   recovery need not scan it.
//! - `delivered`: the highest position handed to a consumer (for redelivered flags after a
//!   restart).
//!
//! A segment whose records are all acknowledged is deleted with its acks and meta.
//! Bytes are appended to an in-memory buffer and written by the syncer's round (or
//! earlier, when a reader needs them); the syncer fsyncs them when the queue is durable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use broker::message::DiskPos;
use broker::store::Durability;
use parking_lot::Mutex;
use tracing::{error, warn};

use crate::Error;
use crate::file_cache::FileCache;
use crate::record::{self, Decoded};
use crate::syncer::{Flush, SyncTarget, Syncer};

/// Segment size before rolling to a new file.
pub const SEGMENT_MAX_BYTES: u64 = 8 * 1024 * 1024;
/// A fully acknowledged write segment at least this big is replaced by a fresh one.
const DRAINED_ROLL_MIN_BYTES: u64 = 1024 * 1024;
/// How much a reader asks for at once.
const READ_CHUNK_BYTES: usize = 256 * 1024;
const ACK_ENTRY_BYTES: usize = 8;
const ACK_TRANSIENT_BIT: u32 = 1 << 31;
/// A delivery-count entry: record offset u32 | count u32 | crc32c of those 8 bytes.
const COUNT_ENTRY_BYTES: usize = 12;

pub struct QueueFiles {
    dir: PathBuf,
    /// fsync on commit (durable queue); otherwise the files only page RAM out.
    fsync: bool,
    syncer: Arc<Syncer>,
    /// The store's open files (bounded, shared by every queue): files are opened on
    /// demand, not held per segment.
    cache: Arc<FileCache>,
    inner: Mutex<Inner>,
}

struct Inner {
    segments: BTreeMap<u32, Segment>,
    write_seg: u32,
    /// Bytes of `write_seg` not yet written to its file.
    pending: Vec<u8>,
    /// Registered with the syncer and not yet flushed.
    dirty: bool,
    /// The commit round that will flush this queue's buffered bytes (valid while dirty).
    flush_epoch: u64,
    /// Files were created or removed since the last directory fsync.
    dir_dirty: bool,
    /// Segment files written since the last commit round, held (so the cache keeps them
    /// open) until that round fsyncs them through the descriptor that wrote them.
    unsynced: Vec<Arc<File>>,
    delivered: Option<DiskPos>,
    delivered_dirty: bool,
    destroyed: bool,
}

struct Segment {
    /// Bytes in the file (for `write_seg`, `pending` follows).
    written: u64,
    count: u32,
    acked: u32,
    /// Records of persistent messages, and how many of those are acknowledged: what a
    /// restart brings back is exactly the difference.
    persistent: u32,
    acked_persistent: u32,
    /// Offsets acknowledged before the last restart, skipped when reading.
    recovered_acks: HashSet<u32>,
    ack_written: u64,
    ack_pending: Vec<u8>,
    /// x-delivery-limit: delivery counts of requeued records (offset → count, the last
    /// entry wins), as read at recovery; and the `.counts` file they are appended to.
    /// Like acks they are not fsynced: a lost entry can only make a count lower.
    recovered_counts: HashMap<u32, u32>,
    count_written: u64,
    count_pending: Vec<u8>,
    /// No more appends; its meta file is due (`meta_written` false) or done.
    sealed: bool,
    meta_written: bool,
    last_seq: Option<u64>,
}

/// What recovery found.
#[derive(Debug, Default, Clone)]
pub struct Recovered {
    pub records: u64,
    pub acked: u64,
    pub last_seq: Option<u64>,
    pub delivered: Option<DiskPos>,
    /// Position just past the last recovered record.
    pub end: Option<DiskPos>,
    pub first: Option<DiskPos>,
}

/// One record read back.
pub struct ReadRecord {
    pub pos: DiskPos,
    pub payload: Vec<u8>,
    /// Acknowledged before a restart: skip it.
    pub acked: bool,
    /// Its delivery count when it was last requeued before a restart (0: none recorded).
    pub delivery_count: u32,
}

fn seg_path(dir: &Path, id: u32, ext: &str) -> PathBuf {
    dir.join(format!("{id:010}.{ext}"))
}

impl QueueFiles {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Open (recovering) the files in `dir`. Nothing is created until the first append: a
    /// queue that never writes (most transient ones) costs no files.
    pub fn open(dir: &Path, fsync: bool, syncer: Arc<Syncer>) -> Result<(Arc<QueueFiles>, Recovered), Error> {
        let cache = syncer.file_cache().clone();
        let entries = match fs::read_dir(dir) {
            Ok(e) => Some(e),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let mut ids: Vec<u32> = Vec::new();
        for entry in entries.into_iter().flatten() {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name.strip_suffix(".seg").and_then(|n| n.parse().ok()) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut rec = Recovered::default();
        let mut segments = BTreeMap::new();
        let last = ids.last().copied();
        for id in ids {
            let seg = recover_segment(&cache, dir, id, Some(id) == last)?;
            rec.records += u64::from(seg.persistent);
            rec.acked += u64::from(seg.acked_persistent);
            if seg.last_seq.is_some() {
                rec.last_seq = seg.last_seq;
            }
            if seg.count > 0 && seg.acked >= seg.count {
                // Fully acknowledged but not yet removed when we stopped.
                remove_segment_files(&cache, dir, id);
                continue;
            }
            if rec.first.is_none() && seg.count > 0 {
                rec.first = Some(DiskPos { segment: id, offset: 0 });
            }
            rec.end = Some(DiskPos { segment: id, offset: seg.written as u32 });
            segments.insert(id, seg);
        }
        rec.delivered = read_delivered(dir);
        let write_seg = segments.keys().next_back().map_or(0, |id| id + 1);
        let files = Arc::new(QueueFiles {
            dir: dir.to_owned(),
            fsync,
            syncer,
            cache,
            inner: Mutex::new(Inner {
                segments,
                write_seg,
                pending: Vec::new(),
                dirty: false,
                flush_epoch: 0,
                dir_dirty: false,
                unsynced: Vec::new(),
                delivered: rec.delivered,
                delivered_dirty: false,
                destroyed: false,
            }),
        });
        {
            let mut inner = files.inner.lock();
            for seg in inner.segments.values_mut() {
                seg.sealed = true;
            }
        }
        Ok((files, rec))
    }

    /// Append a record whose payload `f` writes. Returns its position and when it is
    /// durable: after a commit round if `wait` is set and these files are fsynced, else
    /// `Now` (the caller does not need it on disk). Fails, writing nothing, once the
    /// syncer has failed: nothing appended after that could ever be confirmed.
    pub fn append(
        self: &Arc<Self>,
        seq: u64,
        persistent: bool,
        wait: bool,
        f: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(DiskPos, Durability), Error> {
        if self.syncer.is_poisoned() {
            return Err(Error::Poisoned);
        }
        let mut inner = self.inner.lock();
        if !inner.segments.contains_key(&inner.write_seg) {
            fs::create_dir_all(&self.dir)?;
            let id = inner.write_seg;
            inner.new_segment(&self.cache, &self.dir, id)?;
        } else if inner.write_len() >= SEGMENT_MAX_BYTES {
            let next = inner.write_seg + 1;
            inner.seal_write_segment(&self.cache, &self.dir)?;
            inner.new_segment(&self.cache, &self.dir, next)?;
        }
        let offset = inner.write_len();
        let Ok(offset) = u32::try_from(offset) else {
            return Err(Error::Corrupt { file: self.dir.clone(), offset, reason: "segment offset overflow".into() });
        };
        record::encode_with(&mut inner.pending, f);
        let id = inner.write_seg;
        if let Some(seg) = inner.segments.get_mut(&id) {
            seg.count += 1;
            seg.persistent += u32::from(persistent);
            seg.last_seq = Some(seq);
        }
        self.mark_dirty(&mut inner);
        let durability = if wait && self.fsync { Durability::AfterCommit(inner.flush_epoch) } else { Durability::Now };
        Ok((DiskPos { segment: id, offset }, durability))
    }

    /// Make sure the next commit round writes (and, for a durable queue, fsyncs) what was
    /// just buffered (its round is `flush_epoch`). Only the first change after a flush
    /// touches the syncer: later ones ride on the round already due, so the publish path
    /// takes no global lock per message.
    fn mark_dirty(self: &Arc<Self>, inner: &mut Inner) {
        if !inner.dirty {
            inner.dirty = true;
            inner.flush_epoch = self.syncer.register(self);
        }
    }

    /// A record was acknowledged. Deletes its segment once every record in it is.
    pub fn ack(self: &Arc<Self>, pos: DiskPos, persistent: bool) {
        let mut inner = self.inner.lock();
        self.ack_locked(&mut inner, pos, persistent);
    }

    fn ack_locked(self: &Arc<Self>, inner: &mut Inner, pos: DiskPos, persistent: bool) {
        let write_seg = inner.write_seg;
        let write_len = inner.write_len();
        let Some(seg) = inner.segments.get_mut(&pos.segment) else { return };
        seg.acked += 1;
        seg.acked_persistent += u32::from(persistent);
        // The ack entry's top bit marks a transient record (offsets stay below 2^31).
        let entry = if persistent { pos.offset } else { pos.offset | ACK_TRANSIENT_BIT };
        if pos.segment == write_seg && seg.acked >= seg.count && write_len >= DRAINED_ROLL_MIN_BYTES {
            // The queue drained its newest segment: start a fresh one so this one can go,
            // and a drained queue gives its disk space back.
            let next = write_seg + 1;
            if inner.seal_write_segment(&self.cache, &self.dir).is_ok() {
                // The next append creates segment `next`.
                inner.write_seg = next;
                inner.segments.remove(&pos.segment);
                remove_segment_files(&self.cache, &self.dir, pos.segment);
                self.mark_dirty(inner);
                return;
            }
            let Some(seg) = inner.segments.get_mut(&pos.segment) else { return };
            seg.ack_pending.extend_from_slice(&entry.to_le_bytes());
            seg.ack_pending.extend_from_slice(&crc32c::crc32c(&entry.to_le_bytes()).to_le_bytes());
            self.mark_dirty(inner);
            return;
        }
        if seg.sealed && seg.acked >= seg.count {
            inner.segments.remove(&pos.segment);
            remove_segment_files(&self.cache, &self.dir, pos.segment);
            inner.dir_dirty = true;
            self.mark_dirty(inner);
            return;
        }
        seg.ack_pending.extend_from_slice(&entry.to_le_bytes());
        seg.ack_pending.extend_from_slice(&crc32c::crc32c(&entry.to_le_bytes()).to_le_bytes());
        self.mark_dirty(inner);
    }

    /// Record the delivery count of a requeued record (x-delivery-limit), so that it
    /// survives a restart. Written with the next commit round, not fsynced.
    pub fn set_delivery_count(self: &Arc<Self>, pos: DiskPos, count: u32) {
        let mut inner = self.inner.lock();
        let Some(seg) = inner.segments.get_mut(&pos.segment) else { return };
        let mut e = [0u8; 8];
        e[..4].copy_from_slice(&pos.offset.to_le_bytes());
        e[4..].copy_from_slice(&count.to_le_bytes());
        seg.count_pending.extend_from_slice(&e);
        seg.count_pending.extend_from_slice(&crc32c::crc32c(&e).to_le_bytes());
        self.mark_dirty(&mut inner);
    }

    /// Acknowledge every record from `from` to the end of the data: the purge of a queue's
    /// on-disk backlog (the caller guarantees nothing from `from` on was delivered). The
    /// segments after `from`'s are deleted unread; only `from`'s own segment is walked from
    /// `from` on to write acks for its records, so the cost is bounded by one segment
    /// whatever the backlog. Returns how many records were acknowledged one by one.
    pub fn purge_from(self: &Arc<Self>, from: DiskPos) -> Result<u64, Error> {
        let mut inner = self.inner.lock();
        if inner.destroyed {
            return Ok(0);
        }
        let ids: Vec<u32> = inner.segments.range(from.segment..).map(|(&id, _)| id).collect();
        let mut acked = 0;
        for id in ids {
            if id == from.segment && from.offset > 0 {
                if id == inner.write_seg {
                    inner.write_pending(&self.cache, &self.dir)?;
                }
                let mut records = Vec::new();
                {
                    let seg = &inner.segments[&id];
                    let start = u64::from(from.offset).min(seg.written);
                    let mut buf = vec![0u8; (seg.written - start) as usize];
                    self.cache.get(&seg_path(&self.dir, id, "seg"))?.read_exact_at(&mut buf, start)?;
                    let mut at = 0usize;
                    // A damaged record ends the walk: `read` cannot reach past it either.
                    while let Decoded::Record(payload, n) = record::decode(&buf[at..]) {
                        let off = (start + at as u64) as u32;
                        if !seg.recovered_acks.contains(&off) {
                            records.push((off, crate::disk_queue::payload_is_persistent(payload)));
                        }
                        at += n;
                    }
                }
                for (offset, persistent) in records {
                    self.ack_locked(&mut inner, DiskPos { segment: id, offset }, persistent);
                    acked += 1;
                }
                continue;
            }
            // Every record of this segment lies past `from`.
            inner.segments.remove(&id);
            remove_segment_files(&self.cache, &self.dir, id);
            inner.dir_dirty = true;
            if id == inner.write_seg {
                // The next append starts a fresh segment.
                inner.pending.clear();
                inner.write_seg = id + 1;
            }
        }
        self.mark_dirty(&mut inner);
        Ok(acked)
    }

    /// Remember that everything up to `pos` was handed to consumers.
    pub fn delivered(self: &Arc<Self>, pos: DiskPos) {
        let mut inner = self.inner.lock();
        if inner.delivered.is_some_and(|d| d >= pos) {
            return;
        }
        inner.delivered = Some(pos);
        inner.delivered_dirty = true;
        self.mark_dirty(&mut inner);
    }

    /// Read records starting at `from`, up to about `max_bytes` of payload. Returns them
    /// and the position after the last one (None at the end of the data).
    pub fn read(&self, from: DiskPos, max_bytes: usize) -> Result<(Vec<ReadRecord>, Option<DiskPos>), Error> {
        let mut inner = self.inner.lock();
        let mut out = Vec::new();
        let mut pos = Some(from);
        let mut got = 0usize;
        while let Some(p) = pos {
            if got >= max_bytes {
                break;
            }
            // Move past segments that are gone or exhausted.
            let Some((&id, seg)) = inner.segments.range(p.segment..).next() else {
                pos = None;
                break;
            };
            let offset = if id == p.segment { u64::from(p.offset) } else { 0 };
            let seg_len = if id == inner.write_seg { seg.written + inner.pending.len() as u64 } else { seg.written };
            if offset >= seg_len {
                pos = if id == inner.write_seg { None } else { Some(DiskPos { segment: id + 1, offset: 0 }) };
                if pos.is_none() {
                    break;
                }
                continue;
            }
            let want = (seg_len - offset).min(READ_CHUNK_BYTES.max(max_bytes - got) as u64) as usize;
            if id == inner.write_seg && !inner.pending.is_empty() {
                // Reading the segment still being appended: its newest bytes may be in the
                // append buffer, so write them out first (records are read from the file).
                inner.write_pending(&self.cache, &self.dir)?;
            }
            let seg = &inner.segments[&id];
            let file = self.cache.get(&seg_path(&self.dir, id, "seg"))?;
            let mut buf = vec![0u8; want];
            file.read_exact_at(&mut buf, offset)?;
            let mut at = 0usize;
            loop {
                match record::decode(&buf[at..]) {
                    Decoded::Record(payload, n) => {
                        let off = (offset + at as u64) as u32;
                        out.push(ReadRecord {
                            pos: DiskPos { segment: id, offset: off },
                            payload: payload.to_vec(),
                            acked: seg.recovered_acks.contains(&off),
                            delivery_count: seg.recovered_counts.get(&off).copied().unwrap_or(0),
                        });
                        got += payload.len();
                        at += n;
                        if got >= max_bytes {
                            break;
                        }
                    }
                    Decoded::Incomplete if at == 0 => {
                        // One record larger than the chunk: read exactly it.
                        let mut hdr = [0u8; record::HEADER_BYTES];
                        file.read_exact_at(&mut hdr, offset)?;
                        let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
                        let total = record::HEADER_BYTES + len;
                        if offset + total as u64 > seg_len {
                            // A damaged length: report it, keep what was read before it.
                            let e = corrupt(&self.dir, id, offset, "record runs past the end of its segment");
                            error!("{e}; skipping the rest of the segment");
                            at = (seg_len - offset) as usize;
                            break;
                        }
                        buf = vec![0u8; total];
                        file.read_exact_at(&mut buf, offset)?;
                        continue;
                    }
                    Decoded::Incomplete => break,
                    Decoded::Corrupt { reason: why, .. } => {
                        let e = corrupt(&self.dir, id, offset + at as u64, why);
                        error!("{e}; skipping the rest of the segment");
                        at = (seg_len - offset) as usize;
                        break;
                    }
                }
            }
            pos = Some(DiskPos { segment: id, offset: (offset + at as u64) as u32 });
        }
        Ok((out, pos))
    }

    /// Write buffered bytes (records, acks, the delivered mark, sealed metas) and add the
    /// files that need an fsync to `to_sync`. Called by the syncer.
    pub(crate) fn flush_files(&self, to_sync: &mut Vec<SyncTarget>) -> Result<(), Error> {
        let mut inner = self.inner.lock();
        inner.dirty = false;
        if inner.destroyed {
            return Ok(());
        }
        inner.write_pending(&self.cache, &self.dir)?;
        // Every segment byte written since the last round (here, or earlier by a read or
        // a roll) is fsynced through the descriptor that wrote it.
        for f in std::mem::take(&mut inner.unsynced) {
            if self.fsync {
                to_sync.push(SyncTarget::File(f));
            }
        }
        let dir = self.dir.clone();
        for (&id, seg) in inner.segments.iter_mut() {
            if !seg.ack_pending.is_empty() {
                let f = self.cache.get(&seg_path(&dir, id, "acks"))?;
                f.write_all_at(&seg.ack_pending, seg.ack_written)?;
                seg.ack_written += seg.ack_pending.len() as u64;
                seg.ack_pending.clear();
            }
            if !seg.count_pending.is_empty() {
                let f = self.cache.get(&seg_path(&dir, id, "counts"))?;
                f.write_all_at(&seg.count_pending, seg.count_written)?;
                seg.count_written += seg.count_pending.len() as u64;
                seg.count_pending.clear();
            }
            if seg.sealed && !seg.meta_written {
                // (The segment's data was fsynced in the round after it was written.)
                write_meta(&dir, id, seg)?;
                seg.meta_written = true;
            }
        }
        if inner.delivered_dirty {
            inner.delivered_dirty = false;
            if let Some(d) = inner.delivered {
                let f = self.cache.get(&dir.join("delivered"))?;
                let mut b = Vec::with_capacity(16);
                record::encode_with(&mut b, |o| {
                    o.extend_from_slice(&d.segment.to_le_bytes());
                    o.extend_from_slice(&d.offset.to_le_bytes());
                });
                f.write_all_at(&b, 0)?;
            }
        }
        if inner.dir_dirty && self.fsync {
            inner.dir_dirty = false;
            to_sync.push(SyncTarget::Dir(dir));
        }
        Ok(())
    }

    /// The queue is gone: delete its directory.
    pub fn destroy(&self) {
        let mut inner = self.inner.lock();
        inner.destroyed = true;
        inner.segments.clear();
        inner.pending.clear();
        inner.unsynced.clear();
        self.cache.forget_dir(&self.dir);
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => warn!("removing {}: {e}", self.dir.display()),
            _ => {}
        }
    }
}

impl Flush for QueueFiles {
    fn flush(&self, to_sync: &mut Vec<SyncTarget>) -> Result<(), Error> {
        self.flush_files(to_sync)
    }

    fn describe(&self) -> String {
        format!("queue files in {}", self.dir.display())
    }
}

impl Drop for QueueFiles {
    /// Close this queue's files: a queue object that is gone holds no descriptors, and a
    /// later queue in the same directory opens its own.
    fn drop(&mut self) {
        self.cache.forget_dir(&self.dir);
    }
}

impl Inner {
    fn write_len(&self) -> u64 {
        self.segments.get(&self.write_seg).map_or(0, |s| s.written) + self.pending.len() as u64
    }

    fn write_pending(&mut self, cache: &FileCache, dir: &Path) -> Result<(), Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let Some(seg) = self.segments.get_mut(&self.write_seg) else { return Ok(()) };
        let file = cache.get(&seg_path(dir, self.write_seg, "seg"))?;
        file.write_all_at(&self.pending, seg.written)?;
        seg.written += self.pending.len() as u64;
        self.pending.clear();
        if !self.unsynced.iter().any(|f| Arc::ptr_eq(f, &file)) {
            self.unsynced.push(file);
        }
        Ok(())
    }

    fn seal_write_segment(&mut self, cache: &FileCache, dir: &Path) -> Result<(), Error> {
        self.write_pending(cache, dir)?;
        if let Some(seg) = self.segments.get_mut(&self.write_seg) {
            seg.sealed = true;
        }
        Ok(())
    }

    fn new_segment(&mut self, cache: &FileCache, dir: &Path, id: u32) -> Result<(), Error> {
        // Create it now: an append must fail here (nack), not at the commit round.
        cache.get(&seg_path(dir, id, "seg"))?;
        self.segments.insert(
            id,
            Segment {
                written: 0,
                count: 0,
                acked: 0,
                persistent: 0,
                acked_persistent: 0,
                recovered_acks: HashSet::new(),
                ack_written: 0,
                ack_pending: Vec::new(),
                recovered_counts: HashMap::new(),
                count_written: 0,
                count_pending: Vec::new(),
                sealed: false,
                meta_written: false,
                last_seq: None,
            },
        );
        self.write_seg = id;
        self.dir_dirty = true;
        Ok(())
    }
}

fn corrupt(dir: &Path, id: u32, offset: u64, why: &str) -> Error {
    Error::Corrupt { file: seg_path(dir, id, "seg"), offset, reason: why.to_owned() }
}

fn remove_segment_files(cache: &FileCache, dir: &Path, id: u32) {
    // The segment file goes last: recovery finds segments by their `.seg` file, so a stop
    // halfway leaves a segment without its acks (its acked messages come back: at least
    // once) — never acks or counts without their segment, which a new segment with the
    // same id would inherit.
    for ext in ["counts", "acks", "meta", "seg"] {
        let path = seg_path(dir, id, ext);
        cache.forget(&path);
        let _ = fs::remove_file(path);
    }
}

/// A segment's `.counts` file: offset → the last delivery count recorded, and the bytes
/// of whole entries (appends continue there). A torn or damaged entry ends the read: a
/// lost count is only ever lower, never a lost message.
fn read_counts(path: &Path) -> (HashMap<u32, u32>, u64) {
    let mut out = HashMap::new();
    let Ok(b) = fs::read(path) else { return (out, 0) };
    let mut written = 0u64;
    for c in b.chunks(COUNT_ENTRY_BYTES) {
        let crc_ok =
            c.len() == COUNT_ENTRY_BYTES && crc32c::crc32c(&c[..8]).to_le_bytes() == [c[8], c[9], c[10], c[11]];
        if !crc_ok {
            warn!("{}: damaged or torn delivery-count entry at {written}; the rest is ignored", path.display());
            break;
        }
        out.insert(u32::from_le_bytes([c[0], c[1], c[2], c[3]]), u32::from_le_bytes([c[4], c[5], c[6], c[7]]));
        written += COUNT_ENTRY_BYTES as u64;
    }
    (out, written)
}

fn write_meta(dir: &Path, id: u32, seg: &Segment) -> Result<(), Error> {
    let mut b = Vec::new();
    record::encode_with(&mut b, |o| {
        o.extend_from_slice(&seg.count.to_le_bytes());
        o.extend_from_slice(&seg.written.to_le_bytes());
        o.extend_from_slice(&seg.last_seq.unwrap_or(u64::MAX).to_le_bytes());
        o.extend_from_slice(&seg.persistent.to_le_bytes());
    });
    fs::write(seg_path(dir, id, "meta"), b)?;
    Ok(())
}

/// (count, length, last seq, persistent count). A meta file of another layout reads as
/// absent, and the segment is scanned instead.
fn read_meta(dir: &Path, id: u32) -> Option<(u32, u64, Option<u64>, u32)> {
    let b = fs::read(seg_path(dir, id, "meta")).ok()?;
    let Decoded::Record(p, _) = record::decode(&b) else { return None };
    let count = u32::from_le_bytes(p.get(0..4)?.try_into().ok()?);
    let len = u64::from_le_bytes(p.get(4..12)?.try_into().ok()?);
    let last = u64::from_le_bytes(p.get(12..20)?.try_into().ok()?);
    let persistent = u32::from_le_bytes(p.get(20..24)?.try_into().ok()?);
    Some((count, len, (last != u64::MAX).then_some(last), persistent))
}

fn read_delivered(dir: &Path) -> Option<DiskPos> {
    let b = fs::read(dir.join("delivered")).ok()?;
    let Decoded::Record(p, _) = record::decode(&b) else { return None };
    Some(DiskPos {
        segment: u32::from_le_bytes(p.get(0..4)?.try_into().ok()?),
        offset: u32::from_le_bytes(p.get(4..8)?.try_into().ok()?),
    })
}

/// Rebuild one segment's state. A sealed segment with a matching meta file is not read;
/// otherwise its records are scanned, and the last segment's torn tail is cut off.
fn recover_segment(cache: &FileCache, dir: &Path, id: u32, is_last: bool) -> Result<Segment, Error> {
    let path = seg_path(dir, id, "seg");
    let file = cache.get(&path)?;
    let file_len = file.metadata()?.len();
    let scan = match read_meta(dir, id) {
        Some((count, len, last_seq, persistent)) if len == file_len && !is_last => {
            Scan { count, len, last_seq, persistent, offsets: None }
        }
        _ => scan_segment(&file, &path, file_len, is_last)?,
    };
    // offset → whether the acknowledged record was persistent.
    let mut acks: HashMap<u32, bool> = HashMap::new();
    let mut ack_written = 0;
    let ack_path = seg_path(dir, id, "acks");
    if let Ok(b) = fs::read(&ack_path) {
        for (i, chunk) in b.chunks(ACK_ENTRY_BYTES).enumerate() {
            if chunk.len() < ACK_ENTRY_BYTES {
                warn!("{}: torn ack entry at offset {} ignored", ack_path.display(), i * ACK_ENTRY_BYTES);
                break;
            }
            let off = [chunk[0], chunk[1], chunk[2], chunk[3]];
            let crc = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
            if crc32c::crc32c(&off) != crc {
                // A damaged ack can only cause a redelivery, never a loss: skip it.
                error!("{}: corrupt ack entry at offset {} ignored", ack_path.display(), i * ACK_ENTRY_BYTES);
                continue;
            }
            let entry = u32::from_le_bytes(off);
            acks.insert(entry & !ACK_TRANSIENT_BIT, entry & ACK_TRANSIENT_BIT == 0);
            ack_written = ((i + 1) * ACK_ENTRY_BYTES) as u64;
        }
    }
    match &scan.offsets {
        Some(records) => {
            // Acks of records that are not there (cut off as a torn tail) acknowledge
            // nothing; and a scanned record says itself whether it is persistent (format-v1
            // ack entries have no transient bit).
            acks.retain(|off, _| records.contains_key(off));
            for (off, persistent) in acks.iter_mut() {
                *persistent = records.get(off).copied().unwrap_or(*persistent);
            }
        }
        None => acks.retain(|off, _| u64::from(*off) < scan.len),
    }
    let (recovered_counts, count_written) = read_counts(&seg_path(dir, id, "counts"));
    let acked = acks.len() as u32;
    let acked_persistent = acks.values().filter(|p| **p).count() as u32;
    Ok(Segment {
        written: scan.len,
        count: scan.count,
        acked,
        persistent: scan.persistent,
        acked_persistent,
        recovered_acks: acks.into_keys().collect(),
        ack_written,
        ack_pending: Vec::new(),
        recovered_counts,
        count_written,
        count_pending: Vec::new(),
        sealed: true,
        meta_written: !is_last && scan.offsets.is_none(),
        last_seq: scan.last_seq,
    })
}

/// What recovery learned of a segment.
struct Scan {
    count: u32,
    /// Valid length in bytes.
    len: u64,
    last_seq: Option<u64>,
    persistent: u32,
    /// Record offsets and whether each is persistent, when the segment was scanned (not
    /// taken from its meta).
    offsets: Option<HashMap<u32, bool>>,
}

/// Walk a segment's records: (count, valid length, last seq, persistent count). In the last segment, an
/// invalid record and everything after it is a torn write: cut it off. In a sealed one it
/// is damage: report file and offset and keep the valid prefix.
fn scan_segment(file: &File, path: &Path, file_len: u64, is_last: bool) -> Result<Scan, Error> {
    let mut buf = vec![0u8; file_len as usize];
    file.read_exact_at(&mut buf, 0)?;
    let mut at = 0usize;
    let mut count = 0u32;
    let mut persistent = 0u32;
    let mut last_seq = None;
    let mut offsets = HashMap::new();
    while at < buf.len() {
        match record::decode(&buf[at..]) {
            Decoded::Record(payload, n) => {
                count += 1;
                let is_persistent = crate::disk_queue::payload_is_persistent(payload);
                offsets.insert(at as u32, is_persistent);
                persistent += u32::from(is_persistent);
                if let Some(seq) = crate::disk_queue::payload_seq(payload) {
                    last_seq = Some(seq);
                }
                at += n;
            }
            Decoded::Incomplete | Decoded::Corrupt { .. } => {
                let why = match record::decode(&buf[at..]) {
                    Decoded::Corrupt { reason: w, .. } => w,
                    _ => "incomplete record",
                };
                if is_last {
                    warn!("{}: {why} at offset {at}: cutting the torn tail ({} bytes)", path.display(), buf.len() - at);
                    file.set_len(at as u64)?;
                } else {
                    error!("{}: {why} at offset {at}: the rest of this segment is unreadable", path.display());
                }
                break;
            }
        }
    }
    Ok(Scan { count, len: at as u64, last_seq, persistent, offsets: Some(offsets) })
}
