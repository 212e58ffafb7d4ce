//! The durable Raft log and vote of one group, in a data directory:
//!
//! - `vote`: one framed record (the current term and whom it voted for), replaced atomically
//!   (write `vote.tmp`, fsync, rename, fsync the directory).
//! - `log`: framed records — a batch of entries, a truncation (conflicting suffix removed),
//!   a purge (prefix covered by a snapshot) or a committed marker — written in *rounds*.
//!   Each `append`/`truncate` is fsynced before openraft hears it is done; that is what
//!   lets a node vote and acknowledge honestly. The committed marker is written after the
//!   records the queue is writing (alone when it is idle), and rides on the next fsync
//!   (`save_committed` says why that is safe).
//! - `log.spare`: the `log` before the last purge, kept for its disk blocks.
//!
//! A purge writes the kept records as a new *generation* into `log.spare`, fsyncs it and
//! swaps the two names (`renameat2(RENAME_EXCHANGE)`, then an fsync of the directory), so
//! disk stays bounded by the snapshot policy and the next generation is written over blocks
//! the file system already holds for this file: an fdatasync that does not change the
//! file's size writes only the data (on ext4 an append's also writes the inode: under the
//! quorum benchmark, fdatasync p50 0.27–0.31 ms against 0.37–0.40 ms, docs/benchmarks.md).
//!
//! Format 2 (`log` starts with [`magic`]): a header page (magic, the generation's random
//! salt, a checksum), then rounds, each written with one `write` at a page boundary and
//! padded to whole pages: a header (salt, round number, body length, how many rounds were
//! on disk when it was written, the body's checksum, its own checksum) and a body of
//! framed records. A recycled file still holds an older generation's rounds after the
//! current one's end; their salt is not this generation's, so they are never read as its.
//!
//! Recovery replays the rounds in order until one is missing or does not verify. A crash
//! leaves only rounds that were not fsynced undone, and a round is written only once the
//! one before is written; so if a valid round of this generation follows at a later page
//! boundary and its header says the missing one was already on disk, that is damage, not
//! a crash, and is refused as [`Error::Corrupt`]. Otherwise the tail is cut: nothing in it
//! was acknowledged (a later round that lived on was never fsynced, or the missing one
//! would be there too), and the log is rewritten as a new generation, so that rounds left
//! from the cut tail can never be read as the new ones'. Format 1 (no header: records
//! appended one after another, what Warren wrote before) is read the same way record by
//! record, and rewritten as format 2 at open; a build that knows only format 1 reads a
//! format 2 file's first bytes as a damaged record and refuses to start, not as a torn
//! tail it would cut.
//!
//! Writes go through one queue per log, done in order by one blocking task at a time
//! ([`WriteQueue`]): `append` only queues (openraft 0.10 goes on — a leader sends the
//! entries to its followers while its own disk writes them) and the entries are readable
//! at once; whatever queued while a write ran is written next as one round with one fsync.
//! openraft is told an append is durable only after its fsync, and every write is
//! reported done in the order it was asked for: a vote saved after an append is not
//! durable before that append is.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use openraft::RaftLogReader;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use serde::{Deserialize, Serialize};

use crate::frame::{self, Decoded};
use crate::{Entry, Error, LogId, TypeConfig, Vote};

const LOG_FILE: &str = "log";
/// The `log` before the last purge: the next purge writes the next generation over it.
const SPARE_FILE: &str = "log.spare";
const VOTE_FILE: &str = "vote";

/// What a format 2 `log` starts with, after [`MAGIC_LEN`]: read by a build that knows only
/// format 1, it is a record of 8 bytes with a wrong checksum and more bytes after it —
/// damage, so that build refuses to start instead of cutting the file as a torn tail.
const MAGIC_TEXT: &[u8; 8] = b"WRNRAFT2";
const MAGIC_LEN: usize = 16;

/// The first [`MAGIC_LEN`] bytes of a format 2 `log`: the length 8, the inverted crc32c
/// of [`MAGIC_TEXT`], then the text.
fn magic() -> [u8; MAGIC_LEN] {
    let mut m = [0u8; MAGIC_LEN];
    m[0..4].copy_from_slice(&8u32.to_le_bytes());
    m[4..8].copy_from_slice(&(!crc32c::crc32c(MAGIC_TEXT)).to_le_bytes());
    m[8..16].copy_from_slice(MAGIC_TEXT);
    m
}
/// Rounds start on page boundaries and are padded to whole pages: a write of whole pages
/// over a recycled file's blocks never makes the kernel read a block first, and recovery
/// looks for round headers at page boundaries only.
const PAGE_BYTES: usize = 4096;
/// A round's header: salt (u64), round number (u64), body bytes (u64), rounds of this
/// generation on disk when it was written (u64), the body's crc32c, the header's crc32c
/// (over the 36 bytes before it); all little-endian.
const ROUND_HEADER_BYTES: usize = 40;
/// A spare larger than this (the `log` of a group that was behind on its snapshots) is cut
/// to it: what a group keeps on disk besides its `log` stays bounded.
const SPARE_KEEP_BYTES: u64 = 256 << 20;

#[derive(Serialize, Deserialize)]
enum LogRecord {
    Entries(Vec<Entry>),
    /// Entries at this index and after are removed (a conflicting suffix from an old leader).
    Truncate(u64),
    /// Entries up to and including this id are covered by a snapshot and removed.
    Purge(LogId),
    /// Entries up to this id are known committed, so a restarted node applies them at once.
    /// Written without an fsync of its own (see `save_committed`); a leader restarting in
    /// the same term with an older one commits a blank entry before it serves a read index
    /// (`ReadFence` in node.rs).
    Committed(LogId),
}

/// What recovery found, for tests and for the log line at startup.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub entries: usize,
    /// Bytes of torn tail cut from `log`.
    pub cut_bytes: u64,
}

#[derive(Default)]
struct Mem {
    entries: BTreeMap<u64, Entry>,
    /// Command bytes of `entries`: what the log holds in memory (see [`LogStore::held_bytes`]).
    held_bytes: u64,
    last_purged: Option<LogId>,
    committed: Option<LogId>,
    vote: Option<Vote>,
}

/// The log store; clones share the same files and memory (a clone is the log reader).
#[derive(Clone)]
pub struct LogStore {
    dir: Arc<PathBuf>,
    mem: Arc<Mutex<Mem>>,
    /// The open `log` file. Only the queue's drain task writes (one at a time), so this lock
    /// is uncontended; it is separate from `mem` so readers never wait on fsync.
    file: Arc<Mutex<LogFile>>,
    /// Writes not yet done, in the order they were asked for.
    queue: Arc<Mutex<WriteQueue>>,
    /// Rung when a job is queued: a drain waiting to give a committed marker company
    /// ([`MARKER_WAIT`]) takes it at once.
    queued: Arc<Condvar>,
}

/// How long a drain with nothing to write but a newer committed marker waits for records
/// to write it with. A busy log's next records are usually on their way, and a marker
/// written alone is a write (and a page) of its own in front of them; an idle log's marker
/// is written this much later.
const MARKER_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// The log's writes still to do, and whether a blocking task is doing them.
#[derive(Default)]
struct WriteQueue {
    jobs: VecDeque<Job>,
    /// A blocking task is draining `jobs`; a new job is left for it.
    running: bool,
    /// A write failed: the file may lack what memory holds, so every later write fails too
    /// (openraft stops the group's core on the first error; this keeps stragglers honest).
    failed: Option<String>,
    /// The newest committed marker a drain round has taken to write (or the one recovered).
    /// A newer one in memory makes the drain go on (or start) to write it.
    marker_taken: Option<LogId>,
}

/// One write, with whom to tell when it is done.
struct Job {
    what: WriteOp,
    done: Done,
}

enum WriteOp {
    /// Append a record to `log`; fsync before `done` if `sync` (the committed marker does
    /// not ask for one of its own).
    Record { record: LogRecord, sync: bool },
    /// Rewrite `log` from memory (after a purge).
    Rewrite,
    /// Replace the `vote` file with this encoded vote.
    Vote(Vec<u8>),
    /// Nothing: done once everything queued before it is.
    Barrier,
}

enum Done {
    Nobody,
    /// openraft's callback for an append.
    Flushed(IOFlushed<TypeConfig>),
    /// A caller awaiting the write (truncate, purge, vote, tests).
    Waiter(tokio::sync::oneshot::Sender<Result<(), String>>),
}

impl Done {
    fn complete(self, result: &Result<(), String>) {
        match self {
            Done::Nobody => {}
            Done::Flushed(cb) => cb.io_completed(result.clone().map_err(std::io::Error::other)),
            Done::Waiter(tx) => {
                let _ = tx.send(result.clone());
            }
        }
    }
}

/// The open `log` file and the buffer records are encoded into before they are written.
struct LogFile {
    file: File,
    /// Reused for every round: a fresh buffer per append (up to a few hundred KiB) costs
    /// more in page faults than the encoding itself (see `codec::encode_framed`). Holds
    /// the round being put together: room for its header, then its records.
    scratch: Vec<u8>,
    /// The committed marker last written (or recovered): `save_committed` only sets memory,
    /// and the drain writes a newer marker along with the next records.
    committed_written: Option<LogId>,
    /// This generation's salt, in the file's header and in every round's.
    salt: u64,
    /// The number of the next round.
    seq: u64,
    /// Rounds of this generation known to be on disk (fsynced, or written before an fsync).
    durable: u64,
    /// Where the next round goes (a page boundary).
    end: u64,
}

/// Where writing goes on in a format 2 `log` that recovery found whole.
struct GoOn {
    salt: u64,
    seq: u64,
    end: u64,
}

impl LogStore {
    /// Open (or create) the log in `dir`, recovering what a crash left.
    pub fn open(dir: &Path) -> Result<(LogStore, Recovery), Error> {
        std::fs::create_dir_all(dir)?;
        let mut mem = Mem { vote: read_vote(dir)?, ..Mem::default() };
        let path = dir.join(LOG_FILE);
        let mut recovery = Recovery::default();
        let go_on = match std::fs::read(&path) {
            Ok(buf) => {
                let (go_on, cut) = read_log(&buf, &path, |r| replay(&mut mem, r))?;
                recovery.cut_bytes = cut;
                go_on
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        if recovery.cut_bytes > 0 {
            tracing::warn!(bytes = recovery.cut_bytes, dir = %dir.display(), "cutting a torn tail from the raft log");
        }
        // A new `log` file (or data directory) must have its directory entry on disk before
        // the first fdatasync of its contents counts: fdatasync does not cover the name.
        // (A new generation syncs the directory itself; this covers the parent's entry.)
        let file = match go_on {
            Some(GoOn { salt, seq, end }) => {
                let file = OpenOptions::new().read(true).write(true).open(&path)?;
                // What was read may be in the page cache only (a killed process, not a
                // power loss): on disk before the next round says it is (`durable`).
                file.sync_data()?;
                LogFile { file, scratch: Vec::new(), committed_written: mem.committed, salt, seq, durable: seq, end }
            }
            // No log yet, one in format 1, or a tail cut: a new generation.
            None => new_generation(dir, &mem)?,
        };
        File::open(dir)?.sync_all()?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
        recovery.entries = mem.entries.len();
        let committed_written = mem.committed;
        let store = LogStore {
            dir: Arc::new(dir.to_owned()),
            mem: Arc::new(Mutex::new(mem)),
            file: Arc::new(Mutex::new(file)),
            queue: Arc::new(Mutex::new(WriteQueue { marker_taken: committed_written, ..WriteQueue::default() })),
            queued: Arc::new(Condvar::new()),
        };
        Ok((store, recovery))
    }

    /// Queue `job`; start a blocking task to do the queue unless one is at it.
    fn submit(&self, what: WriteOp, done: Done) {
        let mut q = self.queue.lock().expect("log queue lock");
        if let Some(e) = &q.failed {
            let e = e.clone();
            drop(q);
            done.complete(&Err(e));
            return;
        }
        q.jobs.push_back(Job { what, done });
        self.queued.notify_one();
        if !q.running {
            q.running = true;
            let me = self.clone();
            tokio::task::spawn_blocking(move || me.drain());
        }
    }

    /// Queue `what` and wait until it is done (and fsynced).
    async fn write(&self, what: WriteOp) -> std::io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(what, Done::Waiter(tx));
        match rx.await {
            Ok(r) => r.map_err(std::io::Error::other),
            Err(_) => Err(std::io::Error::other("the raft log writer stopped")),
        }
    }

    /// The blocking task: do queued writes until none is left. Records queued together
    /// are written with one `write` and one fsync; a rewrite or a vote first finishes what
    /// was queued before it.
    fn drain(&self) {
        loop {
            // Jobs queued before an earlier round failed are failed too: writing them would
            // leave a hole where the failed round is.
            let (jobs, mut failed, marker): (Vec<Job>, Option<String>, Option<LogId>) = {
                let mut q = self.queue.lock().expect("log queue lock");
                let mut waited = false;
                loop {
                    // The committed marker this round writes after its records, read as its
                    // jobs are taken (the queue's lock, then memory's: no path takes them the
                    // other way round). Every entry it covers was queued before openraft saved
                    // it (an entry is queued when appended), so this round or an earlier one
                    // writes the entry first; a marker read later could cover entries of the
                    // next round, and a crash between the two would leave it beyond the log's
                    // end. A barrier queued after a `save_committed` finds that marker here.
                    let marker = self.mem.lock().expect("log mem lock").committed;
                    let newer = marker.filter(|c| q.marker_taken.is_none_or(|t| t.index < c.index));
                    if q.jobs.is_empty() && newer.is_none() {
                        q.running = false;
                        return;
                    }
                    if q.jobs.is_empty() && !waited && q.failed.is_none() {
                        q = self.queued.wait_timeout(q, MARKER_WAIT).expect("log queue lock").0;
                        waited = true;
                        continue;
                    }
                    if newer.is_some() {
                        q.marker_taken = newer;
                    }
                    break (q.jobs.drain(..).collect(), q.failed.clone(), marker);
                }
            };
            let mut f = self.file.lock().expect("log file lock");
            let mut batch = Batch::default();
            for job in jobs {
                if let Some(e) = &failed {
                    job.done.complete(&Err(e.clone()));
                    continue;
                }
                let result = match job.what {
                    WriteOp::Record { record, sync } => {
                        batch.add(&mut f, record, sync, job.done);
                        continue;
                    }
                    WriteOp::Rewrite => batch.finish(&mut f).and_then(|()| self.rewrite(&mut f)),
                    WriteOp::Vote(buf) => batch.finish(&mut f).and_then(|()| replace_file(&self.dir, VOTE_FILE, &buf)),
                    WriteOp::Barrier => {
                        with_marker(&mut batch, &mut f, marker);
                        batch.finish(&mut f)
                    }
                };
                let result = result.map_err(|e| e.to_string());
                job.done.complete(&result);
                failed = result.err();
            }
            if failed.is_none() {
                with_marker(&mut batch, &mut f, marker);
                failed = batch.finish(&mut f).err().map(|e| e.to_string());
            }
            crate::codec::shrink_scratch(&mut f.scratch);
            if let Some(e) = failed {
                tracing::error!(dir = %self.dir.display(), error = %e, "writing the raft log failed");
                self.queue.lock().expect("log queue lock").failed.get_or_insert(e);
            }
        }
    }

    /// Rewrite `log` as a new generation of what memory holds (after a purge).
    fn rewrite(&self, f: &mut LogFile) -> std::io::Result<()> {
        // Memory's lock only while the bytes are made: readers (a leader replicating,
        // openraft appending) do not wait on the disk.
        let (salt, buf, committed) = {
            let mem = self.mem.lock().expect("log mem lock");
            let (salt, buf) = generation_bytes(&mem)?;
            (salt, buf, mem.committed)
        };
        *f = install_generation(&self.dir, salt, &buf, committed)?;
        Ok(())
    }

    /// Wait until every write asked for so far is done (the committed marker included).
    pub async fn written(&self) -> std::io::Result<()> {
        self.write(WriteOp::Barrier).await
    }

    /// Put `entries` in memory (readable at once: a leader replicates them while they are
    /// written) and queue their write; `done` hears when they are on disk.
    fn append_entries(&self, entries: Vec<Entry>, done: Done) {
        {
            let mut mem = self.mem.lock().expect("log mem lock");
            for e in &entries {
                mem.insert(e.clone());
            }
        }
        self.submit(WriteOp::Record { record: LogRecord::Entries(entries), sync: true }, done);
    }

    /// Rewrite the `log` in `dir` (of a stopped node) without its committed markers: what a
    /// power loss can leave, as they are not fsynced on their own. For tests of the read fence.
    #[doc(hidden)]
    pub fn drop_committed_markers(dir: &Path) -> Result<usize, Error> {
        let path = dir.join(LOG_FILE);
        let buf = std::fs::read(&path)?;
        let (mut mem, mut dropped) = (Mem::default(), 0);
        read_log(&buf, &path, |r| match r {
            LogRecord::Committed(_) => dropped += 1,
            r => replay(&mut mem, r),
        })?;
        let (_, out) = generation_bytes(&mem)?;
        std::fs::write(&path, out)?;
        Ok(dropped)
    }

    /// The last index known committed here (what openraft last gave `save_committed`).
    pub fn committed_index(&self) -> Option<u64> {
        self.mem.lock().expect("log mem lock").committed.map(|c| c.index)
    }

    /// Command bytes of the entries held, in memory and in `log`: they are dropped only when
    /// a snapshot covers them, so the node takes one when this passes its bound
    /// (`NodeConfig::snapshot_log_bytes`).
    pub fn held_bytes(&self) -> u64 {
        self.mem.lock().expect("log mem lock").held_bytes
    }

    /// Entries currently held (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.mem.lock().expect("log mem lock").entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// No vote was ever saved and nothing was purged: with an empty log, a node that never
    /// took part in a group.
    pub fn is_unvoted(&self) -> bool {
        let mem = self.mem.lock().expect("log mem lock");
        mem.vote.is_none() && mem.last_purged.is_none()
    }

    /// The log id of the entry at `index`, if the log holds it.
    pub fn log_id_at(&self, index: u64) -> Option<LogId> {
        self.mem.lock().expect("log mem lock").entries.get(&index).map(|e| e.log_id)
    }

    /// The last membership entry with its index in `range`, as the state machine stores it.
    pub fn last_membership_in(&self, range: std::ops::RangeInclusive<u64>) -> Option<crate::StoredMembership> {
        let mem = self.mem.lock().expect("log mem lock");
        mem.entries.range(range).rev().find_map(|(_, e)| match &e.payload {
            openraft::EntryPayload::Membership(m) => Some(crate::StoredMembership::new(Some(e.log_id), m.clone())),
            _ => None,
        })
    }
}

/// The command bytes an entry holds (membership and blank entries count as none).
fn entry_bytes(e: &Entry) -> u64 {
    match &e.payload {
        openraft::EntryPayload::Normal(c) => c.0.len() as u64,
        _ => 0,
    }
}

impl Mem {
    fn insert(&mut self, e: Entry) {
        self.held_bytes += entry_bytes(&e);
        if let Some(old) = self.entries.insert(e.log_id.index, e) {
            self.held_bytes -= entry_bytes(&old);
        }
    }

    /// Drop the entries at `since` and after.
    fn remove_from(&mut self, since: u64) {
        let removed = self.entries.split_off(&since);
        self.held_bytes -= removed.values().map(entry_bytes).sum::<u64>();
    }

    /// Keep only the entries at `from` and after.
    fn keep_from(&mut self, from: u64) {
        let kept = self.entries.split_off(&from);
        self.held_bytes -= self.entries.values().map(entry_bytes).sum::<u64>();
        self.entries = kept;
    }
}

fn replay(mem: &mut Mem, record: LogRecord) {
    match record {
        LogRecord::Entries(entries) => {
            for e in entries {
                mem.insert(e);
            }
        }
        LogRecord::Truncate(since) => mem.remove_from(since),
        LogRecord::Purge(upto) => {
            mem.keep_from(upto.index + 1);
            if mem.last_purged.is_none_or(|p| p.index < upto.index) {
                mem.last_purged = Some(upto);
            }
        }
        LogRecord::Committed(c) => {
            if mem.committed.is_none_or(|old| old.index < c.index) {
                mem.committed = Some(c);
            }
        }
    }
}

fn read_vote(dir: &Path) -> Result<Option<Vote>, Error> {
    let path = dir.join(VOTE_FILE);
    let buf = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // The vote file is replaced by rename after an fsync, so it is whole or absent; damage is real.
    match frame::decode(&buf) {
        Decoded::Record(p, n) if n == buf.len() => crate::codec::decode(p).map(Some).map_err(|_| Error::Corrupt {
            path,
            offset: 0,
            reason: "undecodable vote",
        }),
        Decoded::Corrupt { reason, .. } => Err(Error::Corrupt { path, offset: 0, reason }),
        _ => Err(Error::Corrupt { path, offset: 0, reason: "vote file has the wrong length" }),
    }
}

/// Add the committed marker `marker` to `batch` unless it (or a newer one) is written.
fn with_marker(batch: &mut Batch, f: &mut LogFile, marker: Option<LogId>) {
    if let Some(c) = marker.filter(|c| f.committed_written.is_none_or(|w| w.index < c.index)) {
        batch.add(f, LogRecord::Committed(c), false, Done::Nobody);
        f.committed_written = Some(c);
    }
}

/// Records queued together: encoded one after another into the file's scratch buffer,
/// then written as one round with at most one fsync.
#[derive(Default)]
struct Batch {
    sync: bool,
    waiting: Vec<Done>,
    error: Option<String>,
}

impl Batch {
    fn add(&mut self, f: &mut LogFile, record: LogRecord, sync: bool, done: Done) {
        if f.scratch.is_empty() {
            f.scratch.resize(ROUND_HEADER_BYTES, 0);
        }
        if self.error.is_none()
            && let Err(e) = crate::codec::encode_framed(&mut f.scratch, &record)
        {
            self.error = Some(e.to_string());
        }
        self.sync |= sync;
        self.waiting.push(done);
    }

    /// Write what was added (fsynced if any record asked), then tell each waiter.
    fn finish(&mut self, f: &mut LogFile) -> std::io::Result<()> {
        let result = match self.error.take() {
            Some(e) => Err(std::io::Error::other(e)),
            None if f.scratch.len() <= ROUND_HEADER_BYTES => Ok(()),
            None => write_round(f, self.sync),
        };
        f.scratch.clear();
        self.sync = false;
        let told = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
        for done in self.waiting.drain(..) {
            done.complete(&told);
        }
        result
    }
}

/// Replace `dir/name` with `buf` atomically: write `name.tmp`, fsync, rename, fsync the
/// directory. A crash leaves the old file or the new one, whole.
pub(crate) fn replace_file(dir: &Path, name: &str, buf: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(buf)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// Write the round in `f.scratch` (its records after room for the header) at the log's
/// end, then fsync it if `sync`. On failure nothing moves on: the queue fails every later
/// write, and recovery cuts what part of the round reached the disk.
fn write_round(f: &mut LogFile, sync: bool) -> std::io::Result<()> {
    seal_round(&mut f.scratch, f.salt, f.seq, f.durable);
    f.file.write_all_at(&f.scratch, f.end)?;
    if sync {
        f.file.sync_data()?;
    }
    f.end += f.scratch.len() as u64;
    f.seq += 1;
    if sync {
        f.durable = f.seq;
    }
    Ok(())
}

/// Fill in the header of the round in `buf` (its body after [`ROUND_HEADER_BYTES`]) and
/// pad it with zeros to whole pages.
fn seal_round(buf: &mut Vec<u8>, salt: u64, seq: u64, durable: u64) {
    let body = (buf.len() - ROUND_HEADER_BYTES) as u64;
    let body_crc = crc32c::crc32c(&buf[ROUND_HEADER_BYTES..]);
    buf[0..8].copy_from_slice(&salt.to_le_bytes());
    buf[8..16].copy_from_slice(&seq.to_le_bytes());
    buf[16..24].copy_from_slice(&body.to_le_bytes());
    buf[24..32].copy_from_slice(&durable.to_le_bytes());
    buf[32..36].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&buf[..36]);
    buf[36..40].copy_from_slice(&header_crc.to_le_bytes());
    buf.resize(buf.len().next_multiple_of(PAGE_BYTES), 0);
}

/// A round's header, read back.
struct RoundHeader {
    seq: u64,
    body: u64,
    durable: u64,
    body_crc: u32,
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().expect("8 bytes"))
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().expect("4 bytes"))
}

/// The header of a round of the generation `salt` at `at`, if one is there and verifies.
fn round_header(buf: &[u8], at: usize, salt: u64) -> Option<RoundHeader> {
    let h = buf.get(at..at.checked_add(ROUND_HEADER_BYTES)?)?;
    if le_u64(&h[0..8]) != salt || crc32c::crc32c(&h[..36]) != le_u32(&h[36..40]) {
        return None;
    }
    Some(RoundHeader {
        seq: le_u64(&h[8..16]),
        body: le_u64(&h[16..24]),
        durable: le_u64(&h[24..32]),
        body_crc: le_u32(&h[32..36]),
    })
}

/// The header page of a format 2 `log`: [`magic`], the salt, the crc32c of the 24 bytes
/// before it.
fn file_header(salt: u64) -> Vec<u8> {
    let mut page = vec![0u8; PAGE_BYTES];
    page[0..16].copy_from_slice(&magic());
    page[16..24].copy_from_slice(&salt.to_le_bytes());
    let crc = crc32c::crc32c(&page[..24]);
    page[24..28].copy_from_slice(&crc.to_le_bytes());
    page
}

/// The salt in a format 2 `log`'s header.
fn salt_of(header: &[u8]) -> u64 {
    le_u64(&header[16..24])
}

/// Read a `log` file's records in order into `each`. Returns where writing may go on in
/// the same generation (`None` for format 1, or when a torn tail was cut: the caller
/// writes a new generation), and how many bytes of torn tail were cut.
fn read_log(buf: &[u8], path: &Path, mut each: impl FnMut(LogRecord)) -> Result<(Option<GoOn>, u64), Error> {
    let corrupt =
        |offset: usize, reason: &'static str| Error::Corrupt { path: path.to_owned(), offset: offset as u64, reason };
    if !buf.starts_with(&magic()) {
        let at = read_records(buf, 0, &mut each).map_err(|(at, reason)| corrupt(at, reason))?;
        return Ok((None, (buf.len() - at) as u64));
    }
    // The header page is written (and fsynced) before the file is named `log`: damage.
    let header = buf.get(..28).ok_or_else(|| corrupt(0, "log header cut short"))?;
    if crc32c::crc32c(&header[..24]) != le_u32(&header[24..28]) {
        return Err(corrupt(0, "log header checksum mismatch"));
    }
    let salt = salt_of(header);
    let (mut at, mut seq) = (PAGE_BYTES, 0u64);
    let mut cut = 0u64;
    while let Some(h) = round_header(buf, at, salt) {
        if h.seq != seq {
            return Err(corrupt(at, "log round out of order"));
        }
        let start = at + ROUND_HEADER_BYTES;
        let body = usize::try_from(h.body).ok().and_then(|n| start.checked_add(n)).and_then(|end| buf.get(start..end));
        let Some(body) = body.filter(|b| crc32c::crc32c(b) == h.body_crc) else {
            // Its header made it to disk, not all of its body.
            cut = (ROUND_HEADER_BYTES as u64).saturating_add(h.body);
            break;
        };
        let end = read_records(body, 0, &mut each).map_err(|(_, reason)| corrupt(at, reason))?;
        if end != body.len() {
            // A checksummed body whose records do not fill it: not a torn write.
            return Err(corrupt(at, "log round with a partial record"));
        }
        at = (start + body.len()).next_multiple_of(PAGE_BYTES);
        seq += 1;
    }
    // The log ends at `at`. A later round of this generation that was written once this
    // one was on disk means this one was lost after that: damage.
    let mut later = at + PAGE_BYTES;
    let mut torn_later = false;
    while later + ROUND_HEADER_BYTES <= buf.len() {
        if let Some(h) = round_header(buf, later, salt) {
            if h.durable > seq {
                return Err(corrupt(at, "log round missing or damaged before a later one"));
            }
            torn_later = true;
        }
        later += PAGE_BYTES;
    }
    if torn_later && cut == 0 {
        // Rounds written after one that never reached the disk (they were not fsynced
        // either: the fsync would have taken the missing one along).
        cut = (buf.len() - at) as u64;
    }
    Ok(((cut == 0).then_some(GoOn { salt, seq, end: at as u64 }), cut))
}

/// Read framed records from `buf[at..]` into `each` until the bytes end or stop making a
/// record; returns where the last whole record ends. `Err((offset, reason))` for damage:
/// a record that does not decode, or a bad frame followed by more bytes.
fn read_records(buf: &[u8], mut at: usize, each: &mut impl FnMut(LogRecord)) -> Result<usize, (usize, &'static str)> {
    loop {
        match frame::decode(&buf[at..]) {
            Decoded::Record(payload, n) => {
                let record: LogRecord = crate::codec::decode(payload).map_err(|_| (at, "undecodable log record"))?;
                each(record);
                at += n;
            }
            Decoded::Incomplete | Decoded::Corrupt { reaches_end: true, .. } => return Ok(at),
            Decoded::Corrupt { reason, reaches_end: false } => return Err((at, reason)),
        }
    }
}

/// Write what `mem` holds as a new generation of `log` in `dir`: into `log.spare` (made if
/// there is none, else overwritten from its start), fsynced, then swapped with `log`, and
/// the directory fsynced. A crash before the swap leaves `log` as it was; after it, the new
/// generation whole. The old `log` becomes the spare.
fn new_generation(dir: &Path, mem: &Mem) -> std::io::Result<LogFile> {
    let (salt, buf) = generation_bytes(mem)?;
    install_generation(dir, salt, &buf, mem.committed)
}

/// A new generation's salt and first bytes (header page and round 0) holding what `mem`
/// holds: a purge marker, the committed marker, the entries kept.
fn generation_bytes(mem: &Mem) -> std::io::Result<(u64, Vec<u8>)> {
    let salt = getrandom::u64().map_err(|e| std::io::Error::other(format!("the OS random source failed: {e}")))?;
    let mut buf = file_header(salt);
    let mut round = vec![0u8; ROUND_HEADER_BYTES];
    if let Some(p) = mem.last_purged {
        crate::codec::encode_framed(&mut round, &LogRecord::Purge(p))?;
    }
    if let Some(c) = mem.committed {
        crate::codec::encode_framed(&mut round, &LogRecord::Committed(c))?;
    }
    let kept: Vec<Entry> = mem.entries.values().cloned().collect();
    if !kept.is_empty() {
        crate::codec::encode_framed(&mut round, &LogRecord::Entries(kept))?;
    }
    seal_round(&mut round, salt, 0, 0);
    buf.extend_from_slice(&round);
    Ok((salt, buf))
}

/// Write `buf` ([`generation_bytes`]) into the spare and swap it in (see [`new_generation`]).
fn install_generation(dir: &Path, salt: u64, buf: &[u8], committed: Option<LogId>) -> std::io::Result<LogFile> {
    let (log, spare) = (dir.join(LOG_FILE), dir.join(SPARE_FILE));
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&spare)?;
    file.write_all_at(buf, 0)?;
    file.sync_data()?;
    let swapped = log.exists()
        && match rustix::fs::renameat_with(
            rustix::fs::CWD,
            &spare,
            rustix::fs::CWD,
            &log,
            rustix::fs::RenameFlags::EXCHANGE,
        ) {
            Ok(()) => true,
            // A file system without RENAME_EXCHANGE: replaced, not recycled.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP) => false,
            Err(e) => return Err(e.into()),
        };
    if !swapped {
        std::fs::rename(&spare, &log)?;
    }
    File::open(dir)?.sync_all()?;
    if swapped {
        let old = OpenOptions::new().write(true).open(&spare)?;
        if old.metadata()?.len() > SPARE_KEEP_BYTES {
            old.set_len(SPARE_KEEP_BYTES)?;
        }
    }
    Ok(LogFile {
        file,
        scratch: Vec::new(),
        committed_written: committed,
        salt,
        seq: 1,
        durable: 1,
        end: buf.len() as u64,
    })
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> std::io::Result<Vec<Entry>> {
        let mem = self.mem.lock().expect("log mem lock");
        Ok(mem.entries.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> std::io::Result<Option<Vote>> {
        Ok(self.mem.lock().expect("log mem lock").vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> std::io::Result<LogState<TypeConfig>> {
        let mem = self.mem.lock().expect("log mem lock");
        let last = mem.entries.values().next_back().map(|e| e.log_id).or(mem.last_purged);
        Ok(LogState { last_purged_log_id: mem.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    /// Durable when this returns (openraft counts it so), and after every write asked
    /// for before it.
    async fn save_vote(&mut self, vote: &Vote) -> std::io::Result<()> {
        let mut buf = Vec::new();
        crate::codec::encode_framed(&mut buf, vote)?;
        self.write(WriteOp::Vote(buf)).await?;
        self.mem.lock().expect("log mem lock").vote = Some(*vote);
        Ok(())
    }

    /// Set in memory; the write queue's drain writes the marker after the records of its
    /// current round (a busy log: no write of its own), or starts to write it alone (an
    /// idle one: a restarted process replays up to it, so a group whose last entries were
    /// committed while its log then stayed idle still applies them at start — the broker
    /// relies on that to know its quorum queues before it recovers classic ones). Never
    /// fsynced on its own: openraft calls this before every apply, so an fsync would sit
    /// on every entry's commit path, on every node; it becomes durable with the next
    /// append's. A power loss before that leaves an older committed index, which is safe
    /// for Raft (committed entries are re-committed by the leader); the one thing it could
    /// break — a leader that restarts in the same term serving a read index older than a
    /// write it acknowledged — is closed by the read fence in node.rs.
    async fn save_committed(&mut self, committed: Option<LogId>) -> std::io::Result<()> {
        let Some(c) = committed else { return Ok(()) };
        replay(&mut self.mem.lock().expect("log mem lock"), LogRecord::Committed(c));
        // Checked under the queue's lock after memory changed: a drain about to stop
        // checks memory under the same lock, so one of the two sees this marker.
        let mut q = self.queue.lock().expect("log queue lock");
        if !q.running && q.failed.is_none() {
            q.running = true;
            let me = self.clone();
            tokio::task::spawn_blocking(move || me.drain());
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> std::io::Result<Option<LogId>> {
        Ok(self.mem.lock().expect("log mem lock").committed)
    }

    /// Queues the write and returns: `callback` hears after the fsync. The entries are
    /// readable at once (openraft 0.10 replicates what was submitted, not only what is
    /// flushed; it counts this node's copy only once `callback` says so).
    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> std::io::Result<()>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        self.append_entries(entries.into_iter().collect(), Done::Flushed(callback));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> std::io::Result<()> {
        let since = last_log_id.map_or(0, |l| l.index + 1);
        self.mem.lock().expect("log mem lock").remove_from(since);
        self.write(WriteOp::Record { record: LogRecord::Truncate(since), sync: true }).await
    }

    async fn purge(&mut self, log_id: LogId) -> std::io::Result<()> {
        replay(&mut self.mem.lock().expect("log mem lock"), LogRecord::Purge(log_id));
        self.write(WriteOp::Rewrite).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CommittedLeaderId;
    use openraft::EntryPayload;
    use openraft::vote::RaftLeaderId;

    fn entry(term: u64, index: u64, data: &[u8]) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(crate::Command(data.to_vec().into())),
        }
    }

    async fn append(store: &mut LogStore, entries: Vec<Entry>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        store.append_entries(entries, Done::Waiter(tx));
        rx.await.unwrap().unwrap();
    }

    /// Writes queued before a failure was recorded (a drain round that found the queue
    /// failed) are failed too, not written after the record that was cut back: that would
    /// leave a hole in the log.
    #[tokio::test]
    async fn writes_queued_before_a_failure_are_failed_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = LogStore::open(dir.path()).unwrap();
        append(&mut s, vec![entry(1, 1, b"a")]).await;
        let before = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut q = s.queue.lock().unwrap();
            q.failed = Some("disk full".to_owned());
            let record = LogRecord::Entries(vec![entry(1, 3, b"c")]);
            q.jobs.push_back(Job { what: WriteOp::Record { record, sync: true }, done: Done::Waiter(tx) });
            q.running = true;
        }
        s.drain();
        assert_eq!(rx.await.unwrap(), Err("disk full".to_owned()));
        assert_eq!(std::fs::read(dir.path().join(LOG_FILE)).unwrap(), before);
        assert!(!s.queue.lock().unwrap().running);
        // And one asked for afterwards fails at once.
        assert!(s.written().await.is_err());
    }

    /// A write the disk refuses (here: every write goes to `/dev/full`, ENOSPC) fails its
    /// waiter and every write asked for after it — records, the vote, a purge's rewrite, a
    /// barrier — and a newer committed marker is kept in memory only: the file is not
    /// touched again, and the log reopens with what was written before it.
    #[tokio::test]
    async fn a_refused_write_fails_every_later_one_and_the_log_reopens_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = LogStore::open(dir.path()).unwrap();
        append(&mut s, vec![entry(1, 1, b"a"), entry(1, 2, b"b")]).await;
        s.save_committed(Some(lid(2))).await.unwrap();
        s.written().await.unwrap();
        let before = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
        s.file.lock().unwrap().file = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        s.append_entries(vec![entry(1, 3, b"c")], Done::Waiter(tx));
        let refused = rx.await.unwrap().unwrap_err();
        assert!(refused.contains("No space left"), "{refused}");
        let (tx, rx) = tokio::sync::oneshot::channel();
        s.append_entries(vec![entry(1, 4, b"d")], Done::Waiter(tx));
        assert_eq!(rx.await.unwrap(), Err(refused.clone()));
        assert!(s.save_vote(&Vote::new(2, 1)).await.is_err());
        assert!(s.purge(lid(1)).await.is_err());
        s.save_committed(Some(lid(3))).await.unwrap();
        assert!(s.written().await.is_err());
        drop(s);
        assert_eq!(std::fs::read(dir.path().join(LOG_FILE)).unwrap(), before);
        assert!(!dir.path().join(VOTE_FILE).exists());
        let (mut s, r) = LogStore::open(dir.path()).unwrap();
        assert_eq!(r, Recovery { entries: 2, cut_bytes: 0 });
        assert_eq!(indexes(&s), vec![1, 2]);
        assert_eq!(s.read_committed().await.unwrap(), Some(lid(2)));
    }

    fn indexes(store: &LogStore) -> Vec<u64> {
        store.mem.lock().unwrap().entries.keys().copied().collect()
    }

    #[tokio::test]
    async fn recovers_entries_vote_truncation_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, r) = LogStore::open(dir.path()).unwrap();
            assert_eq!(r, Recovery::default());
            append(&mut s, (1..=5).map(|i| entry(1, i, b"x")).collect()).await;
            s.truncate_after(Some(LogId::new(CommittedLeaderId::new(1, 1), 3))).await.unwrap();
            append(&mut s, vec![entry(2, 4, b"y"), entry(2, 5, b"z")]).await;
            s.purge(LogId::new(CommittedLeaderId::new(1, 1), 2)).await.unwrap();
            append(&mut s, vec![entry(2, 6, b"w")]).await;
            s.save_vote(&Vote::new(2, 7)).await.unwrap();
            s.save_committed(Some(LogId::new(CommittedLeaderId::new(2, 1), 5))).await.unwrap();
            s.written().await.unwrap();
        }
        let (mut s, r) = LogStore::open(dir.path()).unwrap();
        assert_eq!(r, Recovery { entries: 4, cut_bytes: 0 });
        assert_eq!(indexes(&s), vec![3, 4, 5, 6]);
        // Entry 3 ("x") and the rewritten 4, 5, 6 ("y", "z", "w"): what truncation and
        // purging removed is no longer counted.
        assert_eq!(s.held_bytes(), 4);
        let state = s.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.unwrap().index, 2);
        assert_eq!(state.last_log_id.unwrap(), LogId::new(CommittedLeaderId::new(2, 1), 6));
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(2, 7)));
        assert_eq!(s.read_committed().await.unwrap(), Some(LogId::new(CommittedLeaderId::new(2, 1), 5)));
        let got = s.try_get_log_entries(4..6).await.unwrap();
        assert_eq!(got.iter().map(|e| e.log_id.leader_id.term).collect::<Vec<_>>(), vec![2, 2]);
    }

    /// The records `log` in `dir` holds, in order.
    fn records(dir: &Path) -> Vec<LogRecord> {
        let path = dir.join(LOG_FILE);
        let mut out = Vec::new();
        read_log(&std::fs::read(&path).unwrap(), &path, |r| out.push(r)).unwrap();
        out
    }

    /// The offsets of the rounds `log` in `dir` holds, in order.
    fn round_offsets(dir: &Path) -> Vec<usize> {
        let buf = std::fs::read(dir.join(LOG_FILE)).unwrap();
        let salt = salt_of(&buf);
        let mut at = PAGE_BYTES;
        let mut out = Vec::new();
        while let Some(h) = round_header(&buf, at, salt) {
            out.push(at);
            at = (at + ROUND_HEADER_BYTES + h.body as usize).next_multiple_of(PAGE_BYTES);
        }
        out
    }

    fn lid(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    /// Wait until the last record `log` holds is the committed marker of `index`.
    async fn marker_written(dir: &Path, index: u64) {
        for _ in 0..500 {
            if matches!(records(dir).last(), Some(LogRecord::Committed(c)) if c.index == index) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        panic!("the committed marker of {index} was not written");
    }

    /// `save_committed` does not queue a write of its own: the drain writes the marker
    /// after the records it is writing, or alone when the log is idle; a reopened log has
    /// it.
    #[tokio::test]
    async fn the_committed_marker_is_written_after_the_next_records() {
        let dir = tempfile::tempdir().unwrap();
        let log_bytes = || std::fs::read(dir.path().join(LOG_FILE)).unwrap();
        {
            let (mut s, _) = LogStore::open(dir.path()).unwrap();
            append(&mut s, (1..=3).map(|i| entry(1, i, b"x")).collect()).await;
            s.save_committed(Some(lid(3))).await.unwrap();
            s.save_committed(Some(lid(2))).await.unwrap();
            // Idle: written alone, soon (no barrier asks for it).
            marker_written(dir.path(), 3).await;
            let before = log_bytes();
            s.save_committed(Some(lid(3))).await.unwrap();
            s.written().await.unwrap();
            assert!(log_bytes() == before, "a marker already written is not written again");
            // With records being written: after them.
            s.append_entries(vec![entry(1, 4, b"y")], Done::Nobody);
            s.save_committed(Some(lid(4))).await.unwrap();
            s.written().await.unwrap();
            assert!(
                matches!(records(dir.path()).last(), Some(LogRecord::Committed(c)) if c.index == 4),
                "after the entry"
            );
        }
        let (mut s, _) = LogStore::open(dir.path()).unwrap();
        assert_eq!(s.read_committed().await.unwrap(), Some(lid(4)));
    }

    /// A round cut short anywhere (its header or its body), or with a byte of its body
    /// wrong, and nothing after it: an interrupted last write, cut. The log goes on in a
    /// new generation.
    #[tokio::test]
    async fn torn_tail_is_cut_at_every_length() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = LogStore::open(dir.path()).unwrap();
            append(&mut s, vec![entry(1, 1, b"a")]).await;
            append(&mut s, vec![entry(1, 2, &[7u8; 5000])]).await;
        }
        let full = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
        let last = *round_offsets(dir.path()).last().unwrap();
        let body_end = last + ROUND_HEADER_BYTES + le_u64(&full[last + 16..last + 24]) as usize;
        for cut in (last..body_end).step_by(13).chain([last + ROUND_HEADER_BYTES - 1, body_end - 1]) {
            std::fs::write(dir.path().join(LOG_FILE), &full[..cut]).unwrap();
            let (s, r) = LogStore::open(dir.path()).unwrap();
            assert_eq!(indexes(&s), vec![1], "cut at {cut}");
            // A header that made it whole tells how much of the round is missing.
            let torn = if cut >= last + ROUND_HEADER_BYTES { (body_end - last) as u64 } else { 0 };
            assert_eq!(r.cut_bytes, torn, "cut at {cut}");
        }
        // A last round with a wrong byte is an interrupted write too: cut, not refused.
        let mut flipped = full.clone();
        flipped[body_end - 1] ^= 0x40;
        std::fs::write(dir.path().join(LOG_FILE), &flipped).unwrap();
        let salt = salt_of(&flipped);
        let (mut s, r) = LogStore::open(dir.path()).unwrap();
        assert_eq!((indexes(&s), r.cut_bytes), (vec![1], (body_end - last) as u64));
        let now = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
        assert_ne!(salt_of(&now), salt, "a cut tail starts a new generation");
        append(&mut s, vec![entry(2, 2, b"b")]).await;
        drop(s);
        let (s, r) = LogStore::open(dir.path()).unwrap();
        assert_eq!((indexes(&s), r.cut_bytes), (vec![1, 2], 0));
    }

    /// A round missing or damaged before a later one that was written after it was on
    /// disk is not what a crash leaves: refused, wherever the damage is.
    #[tokio::test]
    async fn damage_before_the_tail_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = LogStore::open(dir.path()).unwrap();
            append(&mut s, vec![entry(1, 1, b"a")]).await;
            append(&mut s, vec![entry(1, 2, b"b")]).await;
        }
        let bytes = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
        let first = round_offsets(dir.path())[1];
        for (at, what) in [(first + ROUND_HEADER_BYTES + 2, "body"), (first + 9, "header"), (first, "salt")] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            std::fs::write(dir.path().join(LOG_FILE), &damaged).unwrap();
            let got = LogStore::open(dir.path()).map(drop);
            assert!(matches!(got, Err(Error::Corrupt { offset, .. }) if offset == first as u64), "{what}: {got:?}");
        }
        let mut damaged = bytes.clone();
        damaged[20] ^= 0x01;
        std::fs::write(dir.path().join(LOG_FILE), &damaged).unwrap();
        assert!(matches!(LogStore::open(dir.path()), Err(Error::Corrupt { offset: 0, .. })), "the file header");
        // A damaged vote file is refused as well: forgetting a vote could mean voting twice.
        std::fs::write(dir.path().join(LOG_FILE), b"").unwrap();
        std::fs::write(dir.path().join(VOTE_FILE), b"garbage!garbage!").unwrap();
        assert!(matches!(LogStore::open(dir.path()), Err(Error::Corrupt { .. })));
    }

    /// The committed marker is written without an fsync of its own. A crash can lose its
    /// round yet keep the next one's pages (written, its fsync not done): that later round
    /// says the marker's round was not on disk yet, so the tail is cut from the missing
    /// round on (nothing in it was acknowledged), not refused. The same loss of a round
    /// that was fsynced is damage.
    #[tokio::test]
    async fn a_round_lost_before_a_later_unsynced_one_is_cut_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = LogStore::open(dir.path()).unwrap();
            append(&mut s, vec![entry(1, 1, b"a")]).await;
            s.save_committed(Some(lid(1))).await.unwrap();
            marker_written(dir.path(), 1).await;
            append(&mut s, vec![entry(1, 2, b"b")]).await;
        }
        let bytes = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
        let rounds = round_offsets(dir.path());
        assert_eq!(rounds.len(), 4, "the first generation's round, entry 1, the marker, entry 2");
        let zero_page = |at: usize| {
            let mut b = bytes.clone();
            b[at..at + PAGE_BYTES].fill(0);
            std::fs::write(dir.path().join(LOG_FILE), b).unwrap();
        };
        zero_page(rounds[2]);
        let (mut s, r) = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&s), vec![1]);
        assert!(r.cut_bytes > 0);
        append(&mut s, vec![entry(1, 2, b"b")]).await;
        drop(s);
        assert_eq!(indexes(&LogStore::open(dir.path()).unwrap().0), vec![1, 2]);
        zero_page(rounds[1]);
        assert!(matches!(LogStore::open(dir.path()), Err(Error::Corrupt { offset, .. }) if offset == rounds[1] as u64));
    }

    /// A build that reads only format 1 (records from the file's start) finds damage in a
    /// format 2 log — a bad frame with more after it, which it refuses — not a torn tail,
    /// which it would cut (the whole file).
    #[tokio::test]
    async fn a_format_1_reader_refuses_a_format_2_log_rather_than_cut_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = LogStore::open(dir.path()).unwrap();
        append(&mut s, vec![entry(1, 1, b"a")]).await;
        let buf = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
        assert!(matches!(frame::decode(&buf), Decoded::Corrupt { reaches_end: false, .. }));
    }

    /// A purge writes the next generation into the spare (the log before the previous
    /// purge) and swaps the two: from the second purge on, rounds go over blocks the file
    /// already has, and the file does not grow while they fit. The older generation's
    /// rounds after the new one's end are never read.
    #[tokio::test]
    async fn purges_write_over_the_previous_logs_blocks() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let ino = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().ino();
        let len = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().len();
        let big = |i: u64| entry(1, i, &[i as u8; 8000]);
        let (mut s, _) = LogStore::open(dir.path()).unwrap();
        for i in 1..=20 {
            append(&mut s, vec![big(i)]).await;
        }
        let first = ino(LOG_FILE);
        s.purge(lid(10)).await.unwrap();
        assert_eq!(ino(SPARE_FILE), first, "the purged log is the spare");
        for i in 21..=25 {
            append(&mut s, vec![big(i)]).await;
        }
        s.purge(lid(20)).await.unwrap();
        assert_eq!(ino(LOG_FILE), first, "the next generation went into the first file");
        let before = len(LOG_FILE);
        assert!(before > 20 * 8000);
        for i in 26..=35 {
            append(&mut s, vec![big(i)]).await;
        }
        assert_eq!(len(LOG_FILE), before, "rounds went over blocks the file had");
        drop(s);
        let (s, r) = LogStore::open(dir.path()).unwrap();
        assert_eq!((indexes(&s), r.cut_bytes), ((21..=35).collect::<Vec<_>>(), 0));
        let got = s.mem.lock().unwrap().entries.get(&30).cloned().unwrap();
        assert!(matches!(got.payload, EntryPayload::Normal(c) if c.0.as_ref() == [30u8; 8000]));
    }

    /// A crash while a purge writes the spare leaves whatever in it: `log` is what counts,
    /// and the spare is only ever overwritten.
    #[tokio::test]
    async fn a_spare_is_never_read() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = LogStore::open(dir.path()).unwrap();
            append(&mut s, vec![entry(1, 1, b"a"), entry(1, 2, b"b")]).await;
        }
        let log = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
        // A half-written new generation: the log's own first pages, then garbage.
        let mut spare = log[..PAGE_BYTES + 100].to_vec();
        spare.extend_from_slice(&[0xa5; 9000]);
        std::fs::write(dir.path().join(SPARE_FILE), &spare).unwrap();
        let (mut s, r) = LogStore::open(dir.path()).unwrap();
        assert_eq!((indexes(&s), r.cut_bytes), (vec![1, 2], 0));
        s.purge(lid(1)).await.unwrap();
        append(&mut s, vec![entry(1, 3, b"c")]).await;
        drop(s);
        assert_eq!(indexes(&LogStore::open(dir.path()).unwrap().0), vec![2, 3]);
    }

    /// The files a group directory held under the openraft 0.9 build (fixtures written by
    /// it: an initial membership, a blank and a command; a commit marker; a suffix truncated
    /// by a new leader; a committed vote; the new leader's entries and membership) open
    /// unchanged in every later build: upgrading openraft must not make a node unable to
    /// read its own log (it would refuse to start, or worse, vote without its history).
    #[tokio::test]
    async fn opens_the_log_and_vote_the_openraft_0_9_build_wrote() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openraft-0.9/group");
        let dir = tempfile::tempdir().unwrap();
        for f in [LOG_FILE, VOTE_FILE] {
            std::fs::copy(fixture.join(f), dir.path().join(f)).unwrap();
        }
        let (s, r) = LogStore::open(dir.path()).unwrap();
        assert_eq!(r, Recovery { entries: 6, cut_bytes: 0 });
        // Rewritten in format 2 at open; the old file is the spare.
        assert!(std::fs::read(dir.path().join(LOG_FILE)).unwrap().starts_with(&magic()));
        assert_eq!(std::fs::read(dir.path().join(SPARE_FILE)).unwrap(), std::fs::read(fixture.join(LOG_FILE)).unwrap());
        drop(s);
        let (mut s, r) = LogStore::open(dir.path()).unwrap();
        assert_eq!(r, Recovery { entries: 6, cut_bytes: 0 });
        let state = s.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, None);
        assert_eq!(state.last_log_id, Some(LogId::new(CommittedLeaderId::new(2, 22), 5)));
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new_committed(2, 22)));
        assert_eq!(s.read_committed().await.unwrap(), Some(LogId::new(CommittedLeaderId::new(2, 22), 5)));
        let got = s.try_get_log_entries(0..).await.unwrap();
        let shape: Vec<(u64, u64, u64, String)> = got
            .iter()
            .map(|e| {
                let what = match &e.payload {
                    EntryPayload::Blank => "blank".to_owned(),
                    EntryPayload::Normal(c) => format!("{:?}", c.0.as_ref()),
                    EntryPayload::Membership(m) => format!("voters {:?}", m.voter_ids().collect::<Vec<_>>()),
                };
                (e.log_id.leader_id.term, e.log_id.leader_id.node_id, e.log_id.index, what)
            })
            .collect();
        let want = [
            (1, 11, 0, "voters [11, 22, 33]".to_owned()),
            (1, 11, 1, "blank".to_owned()),
            (1, 11, 2, format!("{:?}", &b"first"[..])),
            (2, 22, 3, "blank".to_owned()),
            (2, 22, 4, format!("{:?}", &[0u8, 1, 2, 255][..])),
            (2, 22, 5, "voters [11, 22]".to_owned()),
        ];
        assert_eq!(shape, want);
        let EntryPayload::Membership(m) = &got[0].payload else { panic!() };
        let addrs: Vec<_> = m.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
        assert_eq!(
            addrs,
            [(11, "a@127.0.0.1:1"), (22, "b@127.0.0.1:2"), (33, "c@127.0.0.1:3")].map(|(i, a)| (i, a.to_owned()))
        );
    }
}
