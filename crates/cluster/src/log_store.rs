//! The durable Raft log and vote of one group, in a data directory:
//!
//! - `vote`: one framed record (the current term and whom it voted for), replaced atomically
//!   (write `vote.tmp`, fsync, rename, fsync the directory).
//! - `log`: append-only framed records — a batch of entries, a truncation (conflicting suffix
//!   removed), a purge (prefix covered by a snapshot) or a committed marker. Each
//!   `append`/`truncate` is fsynced before openraft hears of it; that is what lets a node
//!   vote and acknowledge honestly. The committed marker rides on the next fsync
//!   (`save_committed` says why that is safe).
//!   A purge rewrites the file without the purged prefix (write `log.tmp`, fsync, rename,
//!   fsync the directory), so disk stays bounded by the snapshot policy.
//!
//! Recovery replays `log`. A torn tail (a record cut short, or a checksummed record that ends
//! exactly at the end of the file and does not verify — an interrupted last write) is cut
//! off: it was never fsynced, so never acknowledged. Damage followed by more records is not
//! something a crash produces, and is refused as [`Error::Corrupt`].

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};

use crate::frame::{self, Decoded};
use crate::{Entry, Error, LogId, NodeId, TypeConfig};

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
    vote: Option<Vote<NodeId>>,
}

/// The log store; clones share the same files and memory (a clone is the log reader).
#[derive(Clone)]
pub struct LogStore {
    dir: Arc<PathBuf>,
    mem: Arc<Mutex<Mem>>,
    /// The open `log` file. Only the Raft core writes (openraft serialises its storage calls),
    /// so this lock is uncontended; it is separate from `mem` so readers never wait on fsync.
    file: Arc<Mutex<LogFile>>,
}

/// The open `log` file and the buffer records are encoded into before they are written.
struct LogFile {
    file: File,
    /// Reused for every append: a fresh buffer per append (up to a few hundred KiB) costs
    /// more in page faults than the encoding itself (see `codec::encode_framed`).
    scratch: Vec<u8>,
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
        let store = LogStore {
            dir: Arc::new(dir.to_owned()),
            mem: Arc::new(Mutex::new(mem)),
            file: Arc::new(Mutex::new(LogFile { file, scratch: Vec::new() })),
        };
        Ok((store, recovery))
    }

    /// Append one record to `log` and fsync it, off the async threads; the record is handed
    /// back (appended entries then go to memory without a copy).
    async fn write_record(&self, record: LogRecord) -> std::io::Result<LogRecord> {
        let file = self.file.clone();
        blocking(move || {
            let mut f = file.lock().expect("log file lock");
            let LogFile { file, scratch } = &mut *f;
            scratch.clear();
            crate::codec::encode_framed(scratch, &record)?;
            let written = append_whole(file, scratch, true);
            crate::codec::shrink_scratch(scratch);
            written.map(|()| record)
        })
        .await
    }

    /// Append entries: written (and fsynced) first, then kept in memory. openraft reads them
    /// (to replicate or apply) only after `append`'s flush callback, and a failed write
    /// leaves no entry in memory that the file lacks.
    async fn write_entries(&self, entries: Vec<Entry>) -> std::io::Result<()> {
        if let LogRecord::Entries(entries) = self.write_record(LogRecord::Entries(entries)).await? {
            let mut mem = self.mem.lock().expect("log mem lock");
            for e in entries {
                mem.insert(e);
            }
        }
        Ok(())
    }

    /// Rewrite `log` as one purge marker plus the entries still kept, then switch to it.
    async fn rewrite(&self) -> std::io::Result<()> {
        let mut buf = Vec::new();
        {
            let mem = self.mem.lock().expect("log mem lock");
            if let Some(p) = mem.last_purged {
                crate::codec::encode_framed(&mut buf, &LogRecord::Purge(p))?;
            }
            if let Some(c) = mem.committed {
                crate::codec::encode_framed(&mut buf, &LogRecord::Committed(c))?;
            }
            let kept: Vec<Entry> = mem.entries.values().cloned().collect();
            if !kept.is_empty() {
                crate::codec::encode_framed(&mut buf, &LogRecord::Entries(kept))?;
            }
        }
        let dir = self.dir.clone();
        let file = self.file.clone();
        blocking(move || {
            let mut f = file.lock().expect("log file lock");
            let tmp = dir.join("log.tmp");
            let mut t = File::create(&tmp)?;
            t.write_all(&buf)?;
            t.sync_all()?;
            std::fs::rename(&tmp, dir.join(LOG_FILE))?;
            File::open(dir.as_path())?.sync_all()?;
            f.file = OpenOptions::new().append(true).read(true).open(dir.join(LOG_FILE))?;
            Ok(())
        })
        .await
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
    pub fn last_membership_in(
        &self,
        range: std::ops::RangeInclusive<u64>,
    ) -> Option<openraft::StoredMembership<NodeId, openraft::BasicNode>> {
        let mem = self.mem.lock().expect("log mem lock");
        mem.entries.range(range).rev().find_map(|(_, e)| match &e.payload {
            openraft::EntryPayload::Membership(m) => Some(openraft::StoredMembership::new(Some(e.log_id), m.clone())),
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

fn read_vote(dir: &Path) -> Result<Option<Vote<NodeId>>, Error> {
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

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(std::io::Error::other)?
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

fn write_err(e: std::io::Error) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let mem = self.mem.lock().expect("log mem lock");
        Ok(mem.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let mem = self.mem.lock().expect("log mem lock");
        let last = mem.entries.values().next_back().map(|e| e.log_id).or(mem.last_purged);
        Ok(LogState { last_purged_log_id: mem.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut buf = Vec::new();
        crate::codec::encode_framed(&mut buf, vote).map_err(|e| StorageIOError::write_vote(&e))?;
        let dir = self.dir.clone();
        blocking(move || {
            let tmp = dir.join("vote.tmp");
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
            std::fs::rename(&tmp, dir.join(VOTE_FILE))?;
            File::open(dir.as_path())?.sync_all()
        })
        .await
        .map_err(|e| StorageIOError::write_vote(&e))?;
        self.mem.lock().expect("log mem lock").vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.mem.lock().expect("log mem lock").vote)
    }

    /// Written, not fsynced: openraft 0.9 calls this inside its core loop before every
    /// apply, so an fsync here would sit on every entry's commit path, on every node. The
    /// record becomes durable with the next append's fsync (same file, written before it).
    /// A crash before that leaves an older committed index, which is safe for Raft (committed
    /// entries are re-committed by the leader); the one thing it could break — a leader that
    /// restarts in the same term serving a read index older than a write it acknowledged —
    /// is closed by the read fence in node.rs.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError<NodeId>> {
        let Some(c) = committed else { return Ok(()) };
        let mut buf = Vec::new();
        crate::codec::encode_framed(&mut buf, &LogRecord::Committed(c)).map_err(write_err)?;
        // A small append to a file only the core writes (openraft serialises storage calls):
        // no blocking-pool hop.
        append_whole(&mut self.file.lock().expect("log file lock").file, &buf, false).map_err(write_err)?;
        replay(&mut self.mem.lock().expect("log mem lock"), LogRecord::Committed(c));
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<NodeId>> {
        Ok(self.mem.lock().expect("log mem lock").committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let result = self.write_entries(entries.into_iter().collect()).await;
        let failed = result.as_ref().err().map(|e| std::io::Error::new(e.kind(), e.to_string()));
        // Only now, after the fsync, may openraft count these entries as durable here.
        callback.log_io_completed(result);
        match failed {
            Some(e) => Err(write_err(e)),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        self.mem.lock().expect("log mem lock").remove_from(log_id.index);
        self.write_record(LogRecord::Truncate(log_id.index)).await.map(drop).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        {
            let mut mem = self.mem.lock().expect("log mem lock");
            replay(&mut mem, LogRecord::Purge(log_id));
        }
        self.rewrite().await.map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64, data: &[u8]) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(crate::Command(data.to_vec().into())),
        }
    }

    async fn append(store: &mut LogStore, entries: Vec<Entry>) {
        // LogFlushed cannot be built outside openraft, so tests call what `append` does
        // before it reports the flush.
        store.write_entries(entries).await.unwrap();
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
            s.truncate(LogId::new(CommittedLeaderId::new(1, 1), 4)).await.unwrap();
            append(&mut s, vec![entry(2, 4, b"y"), entry(2, 5, b"z")]).await;
            s.purge(LogId::new(CommittedLeaderId::new(1, 1), 2)).await.unwrap();
            append(&mut s, vec![entry(2, 6, b"w")]).await;
            s.save_vote(&Vote::new(2, 7)).await.unwrap();
            s.save_committed(Some(LogId::new(CommittedLeaderId::new(2, 1), 5))).await.unwrap();
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
