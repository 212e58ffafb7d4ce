//! The durable Raft log and vote of one group, in a data directory:
//!
//! - `vote`: one framed record (the current term and whom it voted for), replaced atomically
//!   (write `vote.tmp`, fsync, rename, fsync the directory).
//! - `log`: append-only framed records — a batch of entries, a truncation (conflicting suffix
//!   removed), a purge (prefix covered by a snapshot) or a committed marker. Each
//!   `append`/`truncate` is fsynced before openraft hears it is done; that is what lets a
//!   node vote and acknowledge honestly. The committed marker is written after the
//!   records the queue is writing (alone when it is idle), and rides on the next fsync
//!   (`save_committed` says why that is safe).
//!   A purge rewrites the file without the purged prefix (write `log.tmp`, fsync, rename,
//!   fsync the directory), so disk stays bounded by the snapshot policy.
//!
//! Recovery replays `log`. A torn tail (a record cut short, or a checksummed record that ends
//! exactly at the end of the file and does not verify — an interrupted last write) is cut
//! off: it was never fsynced, so never acknowledged. Damage followed by more records is not
//! something a crash produces, and is refused as [`Error::Corrupt`].
//!
//! Writes go through one queue per log, done in order by one blocking task at a time
//! ([`WriteQueue`]): `append` only queues (openraft 0.10 goes on — a leader sends the
//! entries to its followers while its own disk writes them) and the entries are readable
//! at once; whatever queued while a write ran is written next with one fsync for all.
//! openraft is told an append is durable only after its fsync, and every write is
//! reported done in the order it was asked for: a vote saved after an append is not
//! durable before that append is.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::RaftLogReader;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use serde::{Deserialize, Serialize};

use crate::frame::{self, Decoded};
use crate::{Entry, Error, LogId, TypeConfig, Vote};

const LOG_FILE: &str = "log";
const VOTE_FILE: &str = "vote";

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
}

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
    /// Reused for every append: a fresh buffer per append (up to a few hundred KiB) costs
    /// more in page faults than the encoding itself (see `codec::encode_framed`).
    scratch: Vec<u8>,
    /// The committed marker last written (or recovered): `save_committed` only sets memory,
    /// and the drain writes a newer marker along with the next records.
    committed_written: Option<LogId>,
}

impl LogStore {
    /// Open (or create) the log in `dir`, recovering what a crash left.
    pub fn open(dir: &Path) -> Result<(LogStore, Recovery), Error> {
        std::fs::create_dir_all(dir)?;
        let mut mem = Mem { vote: read_vote(dir)?, ..Mem::default() };
        let path = dir.join(LOG_FILE);
        let mut file = OpenOptions::new().create(true).truncate(false).read(true).append(true).open(&path)?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        let mut at = 0usize;
        let mut recovery = Recovery::default();
        loop {
            match frame::decode(&buf[at..]) {
                Decoded::Record(payload, n) => {
                    let record: LogRecord = crate::codec::decode(payload).map_err(|_| Error::Corrupt {
                        path: path.clone(),
                        offset: at as u64,
                        reason: "undecodable log record",
                    })?;
                    replay(&mut mem, record);
                    at += n;
                }
                Decoded::Incomplete | Decoded::Corrupt { reaches_end: true, .. } => break,
                Decoded::Corrupt { reason, reaches_end: false } => {
                    return Err(Error::Corrupt { path, offset: at as u64, reason });
                }
            }
        }
        if at < buf.len() {
            recovery.cut_bytes = (buf.len() - at) as u64;
            tracing::warn!(bytes = recovery.cut_bytes, "cutting a torn tail from the raft log");
            file.set_len(at as u64)?;
            file.sync_all()?;
        }
        // A new `log` file (or data directory) must have its directory entry on disk before
        // the first fdatasync of its contents counts: fdatasync does not cover the name.
        File::open(dir)?.sync_all()?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
        recovery.entries = mem.entries.len();
        let committed_written = mem.committed;
        let store = LogStore {
            dir: Arc::new(dir.to_owned()),
            mem: Arc::new(Mutex::new(mem)),
            file: Arc::new(Mutex::new(LogFile { file, scratch: Vec::new(), committed_written })),
            queue: Arc::new(Mutex::new(WriteQueue { marker_taken: committed_written, ..WriteQueue::default() })),
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
            // leave a hole where the failed record was cut back.
            let (jobs, mut failed, marker): (Vec<Job>, Option<String>, Option<LogId>) = {
                let mut q = self.queue.lock().expect("log queue lock");
                // The committed marker this round writes after its records, read as its jobs
                // are taken (the queue's lock, then memory's: no path takes them the other
                // way round). Every entry it covers was queued before openraft saved it (an
                // entry is queued when appended), so this round or an earlier one writes the
                // entry first; a marker read later could cover entries of the next round,
                // and a crash between the two would leave it beyond the log's end. A barrier
                // queued after a `save_committed` finds that marker here.
                let marker = self.mem.lock().expect("log mem lock").committed;
                let newer = marker.filter(|c| q.marker_taken.is_none_or(|t| t.index < c.index));
                if q.jobs.is_empty() && newer.is_none() {
                    q.running = false;
                    return;
                }
                if newer.is_some() {
                    q.marker_taken = newer;
                }
                (q.jobs.drain(..).collect(), q.failed.clone(), marker)
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

    /// Rewrite `log` as one purge marker plus the entries still kept, then switch to it.
    fn rewrite(&self, f: &mut LogFile) -> std::io::Result<()> {
        let mut buf = Vec::new();
        {
            let mem = self.mem.lock().expect("log mem lock");
            if let Some(p) = mem.last_purged {
                crate::codec::encode_framed(&mut buf, &LogRecord::Purge(p))?;
            }
            if let Some(c) = mem.committed {
                crate::codec::encode_framed(&mut buf, &LogRecord::Committed(c))?;
            }
            f.committed_written = mem.committed;
            let kept: Vec<Entry> = mem.entries.values().cloned().collect();
            if !kept.is_empty() {
                crate::codec::encode_framed(&mut buf, &LogRecord::Entries(kept))?;
            }
        }
        replace_file(&self.dir, LOG_FILE, &buf)?;
        f.file = OpenOptions::new().append(true).read(true).open(self.dir.join(LOG_FILE))?;
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
        let (mut out, mut at, mut dropped) = (Vec::new(), 0, 0);
        while let Decoded::Record(payload, n) = frame::decode(&buf[at..]) {
            match crate::codec::decode::<LogRecord>(payload) {
                Ok(LogRecord::Committed(_)) => dropped += 1,
                _ => out.extend_from_slice(&buf[at..at + n]),
            }
            at += n;
        }
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
/// then written with one `write` and at most one fsync.
#[derive(Default)]
struct Batch {
    sync: bool,
    waiting: Vec<Done>,
    error: Option<String>,
}

impl Batch {
    fn add(&mut self, f: &mut LogFile, record: LogRecord, sync: bool, done: Done) {
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
            None if f.scratch.is_empty() => Ok(()),
            None => append_whole(&mut f.file, &f.scratch, self.sync),
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

/// Append `buf` (whole records) to the log file, then fsync it if `sync`. On failure the
/// file is cut back to its length before: a full disk can leave part of a record, and
/// anything written after a torn record (the Raft core stops on the error, but a commit
/// record may be on its way) would make reading the log at the next start report damage.
fn append_whole(f: &mut File, buf: &[u8], sync: bool) -> std::io::Result<()> {
    let before = f.metadata()?.len();
    let written = f.write_all(buf).and_then(|()| if sync { f.sync_data() } else { Ok(()) });
    if written.is_err() {
        let _ = f.set_len(before);
    }
    written
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

    /// `save_committed` does not queue a write of its own: the drain writes the marker
    /// after the records it is writing, or alone when the log is idle; a reopened log has
    /// it.
    #[tokio::test]
    async fn the_committed_marker_is_written_after_the_next_records() {
        let dir = tempfile::tempdir().unwrap();
        let lid = |i| LogId::new(CommittedLeaderId::new(1, 1), i);
        let log_len = || std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().len();
        {
            let (mut s, _) = LogStore::open(dir.path()).unwrap();
            let last_record = || {
                let buf = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
                let (mut at, mut last) = (0, None);
                while let Decoded::Record(payload, n) = frame::decode(&buf[at..]) {
                    last = Some(crate::codec::decode::<LogRecord>(payload).unwrap());
                    at += n;
                }
                last
            };
            append(&mut s, (1..=3).map(|i| entry(1, i, b"x")).collect()).await;
            s.save_committed(Some(lid(3))).await.unwrap();
            s.save_committed(Some(lid(2))).await.unwrap();
            // Idle: written alone, soon (no barrier asks for it).
            for _ in 0..500 {
                if matches!(last_record(), Some(LogRecord::Committed(c)) if c.index == 3) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            assert!(matches!(last_record(), Some(LogRecord::Committed(c)) if c.index == 3));
            let before = log_len();
            s.save_committed(Some(lid(3))).await.unwrap();
            s.written().await.unwrap();
            assert_eq!(log_len(), before, "a marker already written is not written again");
            // With records being written: after them.
            s.append_entries(vec![entry(1, 4, b"y")], Done::Nobody);
            s.save_committed(Some(lid(4))).await.unwrap();
            s.written().await.unwrap();
            assert!(matches!(last_record(), Some(LogRecord::Committed(c)) if c.index == 4), "after the entry");
        }
        let (mut s, _) = LogStore::open(dir.path()).unwrap();
        assert_eq!(s.read_committed().await.unwrap(), Some(lid(4)));
    }

    #[tokio::test]
    async fn torn_tail_is_cut_at_every_length() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = LogStore::open(dir.path()).unwrap();
            append(&mut s, vec![entry(1, 1, b"a")]).await;
            append(&mut s, vec![entry(1, 2, b"bb")]).await;
        }
        let full = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
        let Decoded::Record(_, first) = frame::decode(&full) else { panic!() };
        for cut in first..full.len() {
            std::fs::write(dir.path().join(LOG_FILE), &full[..cut]).unwrap();
            let (s, r) = LogStore::open(dir.path()).unwrap();
            assert_eq!(indexes(&s), vec![1], "cut at {cut}");
            assert_eq!(r.cut_bytes, (cut - first) as u64);
            assert_eq!(std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().len(), first as u64);
        }
        // A last record with a flipped byte is an interrupted write too: cut, not refused.
        let mut flipped = full.clone();
        *flipped.last_mut().unwrap() ^= 0x40;
        std::fs::write(dir.path().join(LOG_FILE), &flipped).unwrap();
        let (s, r) = LogStore::open(dir.path()).unwrap();
        assert_eq!((indexes(&s), r.cut_bytes), (vec![1], (full.len() - first) as u64));
    }

    #[tokio::test]
    async fn damage_before_the_tail_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = LogStore::open(dir.path()).unwrap();
            append(&mut s, vec![entry(1, 1, b"a")]).await;
            append(&mut s, vec![entry(1, 2, b"b")]).await;
        }
        let mut bytes = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
        bytes[frame::HEADER_BYTES + 2] ^= 0x01;
        std::fs::write(dir.path().join(LOG_FILE), &bytes).unwrap();
        assert!(matches!(LogStore::open(dir.path()), Err(Error::Corrupt { offset: 0, .. })));
        // A damaged vote file is refused as well: forgetting a vote could mean voting twice.
        std::fs::write(dir.path().join(LOG_FILE), b"").unwrap();
        std::fs::write(dir.path().join(VOTE_FILE), b"garbage!garbage!").unwrap();
        assert!(matches!(LogStore::open(dir.path()), Err(Error::Corrupt { .. })));
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
