//! The definitions log: durable exchanges, queues and bindings as opaque records (the
//! server encodes them), appended and fsynced before the client hears declare-ok. At
//! start it is replayed, then rewritten compacted (write a new file, fsync, rename, fsync
//! the directory), so it never grows beyond the live definitions plus what came since.
//!
//! Two ways to append. [`DefinitionsLog::append`] writes and fsyncs before it returns
//! (imports, access changes). [`DefinitionsLog::append_grouped`] only buffers the record
//! and returns its sequence number, so a declare can append under the vhost's locks and
//! wait for the disk after releasing them, in [`DefinitionsLog::sync_through`]: the first
//! waiter writes and fsyncs everything buffered (no thread hand-off, so a lone client
//! waits for one fsync), and whoever arrives during that fsync is served by the next one
//! — concurrent declares share fsyncs. The log is also part of every commit round of the
//! syncer (see [`Flush`]), so a message published into a queue whose definition is not
//! on disk yet is confirmed only once the definition is.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use tracing::{error, warn};

use crate::Error;
use crate::record::{self, Decoded};
use crate::syncer::{Flush, SyncTarget};

pub struct DefinitionsLog {
    inner: Mutex<Inner>,
    /// Wakes waiters of [`DefinitionsLog::sync_through`] after an fsync.
    synced_cv: Condvar,
    /// Bytes of the file that could not be read at open (damage, not a torn tail).
    damaged_bytes: usize,
    /// Fault injection: the next fsync of a waiter fails.
    fail_next_sync: std::sync::atomic::AtomicBool,
}

struct Inner {
    file: Arc<File>,
    /// The file's length: what is written (a failed write is cut back to it).
    len: u64,
    /// Grouped records not written yet, in append order.
    buf: Vec<u8>,
    /// Sequence numbers of records: the last appended, written, and fsynced.
    appended: u64,
    written: u64,
    synced: u64,
    /// A waiter is fsyncing (without the lock): the others wait for it.
    syncing: bool,
    /// What the syncer's current round wrote (synced when the round is).
    round_upto: u64,
    /// An fsync of the log failed: nothing appended since can be promised.
    failed: Option<String>,
}

impl DefinitionsLog {
    /// Read every valid record of `path`, then rewrite the file to hold
    /// `compact(records)` and open it for appending. A torn tail is cut off with a log
    /// line. Damage before the end (a record that fails its checksum with valid records
    /// after it) is skipped record by record, keeping everything readable on both sides,
    /// and the original file is kept beside the log (`definitions.log.damaged-<unix secs>`)
    /// for an operator before the compacted one replaces it.
    pub fn open(path: &Path, compact: impl FnOnce(Vec<Vec<u8>>) -> Vec<Vec<u8>>) -> Result<DefinitionsLog, Error> {
        let (parsed, original) = match fs::read(path) {
            Ok(b) => (read_records(path, &b), Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Parsed::default(), None),
            Err(e) => return Err(e.into()),
        };
        if parsed.damaged_bytes > 0
            && let Some(original) = original
        {
            let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let keep = path.with_extension(format!("log.damaged-{secs}"));
            let mut f = File::create(&keep)?;
            f.write_all(&original)?;
            f.sync_all()?;
            error!(
                "{}: {} damaged bytes skipped; every readable definition was kept; the original file is saved as {}",
                path.display(),
                parsed.damaged_bytes,
                keep.display()
            );
        }
        let live = compact(parsed.records);
        let tmp = path.with_extension("tmp");
        {
            let mut f = File::create(&tmp)?;
            let mut buf = Vec::new();
            for r in &live {
                record::encode(&mut buf, r);
            }
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        let file = OpenOptions::new().append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(DefinitionsLog {
            inner: Mutex::new(Inner {
                file: Arc::new(file),
                len,
                buf: Vec::new(),
                appended: 0,
                written: 0,
                synced: 0,
                syncing: false,
                round_upto: 0,
                failed: None,
            }),
            synced_cv: Condvar::new(),
            damaged_bytes: parsed.damaged_bytes,
            fail_next_sync: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether damage (not just a torn tail) was found at open: recovery must then assume
    /// that definitions are missing, and delete nothing it cannot account for.
    pub fn was_damaged(&self) -> bool {
        self.damaged_bytes > 0
    }

    /// Append one record and fsync it (with any grouped records before it, in order).
    pub fn append(&self, payload: &[u8]) -> Result<(), Error> {
        let mut inner = self.inner.lock();
        if let Some(why) = &inner.failed {
            return Err(failed(why));
        }
        let mut buf = std::mem::take(&mut inner.buf);
        let grouped = buf.len();
        record::encode(&mut buf, payload);
        if let Err(e) = inner.write(&buf) {
            // The grouped records stay for their waiters; this one is refused.
            buf.truncate(grouped);
            inner.buf = buf;
            return Err(e);
        }
        buf.clear();
        inner.buf = buf;
        inner.written = inner.appended;
        let upto = inner.written;
        let r = inner.file.sync_data();
        self.synced(&mut inner, upto, r)
    }

    /// Buffer one record; it is on disk once [`DefinitionsLog::sync_through`] its
    /// sequence number returned. Records keep their order with every other append.
    pub fn append_grouped(&self, payload: &[u8]) -> Result<u64, Error> {
        let mut inner = self.inner.lock();
        if let Some(why) = &inner.failed {
            return Err(failed(why));
        }
        record::encode(&mut inner.buf, payload);
        inner.appended += 1;
        Ok(inner.appended)
    }

    /// Fault injection for tests and drills: the next fsync made for a waiter fails as
    /// a disk error would.
    pub fn inject_fsync_failure(&self) {
        self.fail_next_sync.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Make the log part of every commit round of `syncer` (see the module docs).
    pub fn commit_with(self: &Arc<Self>, syncer: &crate::Syncer) {
        syncer.always_flush(self);
    }

    /// The sequence number of the newest record appended (0: none).
    pub fn appended(&self) -> u64 {
        self.inner.lock().appended
    }

    /// Whether every record up to `seq` is fsynced already (nothing to wait for).
    pub fn is_synced_through(&self, seq: u64) -> bool {
        self.inner.lock().synced >= seq
    }

    /// Return once every record up to `seq` is fsynced: by this caller, which then also
    /// writes and fsyncs every record buffered meanwhile, or by the caller already doing so.
    pub fn sync_through(&self, seq: u64) -> Result<(), Error> {
        let mut inner = self.inner.lock();
        loop {
            if let Some(why) = &inner.failed {
                return Err(failed(why));
            }
            if inner.synced >= seq {
                return Ok(());
            }
            if inner.syncing {
                self.synced_cv.wait(&mut inner);
                continue;
            }
            inner.write_buffered()?;
            let upto = inner.written;
            inner.syncing = true;
            let file = inner.file.clone();
            drop(inner);
            let r = if self.fail_next_sync.swap(false, std::sync::atomic::Ordering::Relaxed) {
                Err(std::io::Error::other("injected fsync failure"))
            } else {
                file.sync_data()
            };
            inner = self.inner.lock();
            inner.syncing = false;
            self.synced(&mut inner, upto, r)?;
        }
    }

    /// Record the outcome of an fsync that covered records up to `upto`.
    fn synced(&self, inner: &mut Inner, upto: u64, r: std::io::Result<()>) -> Result<(), Error> {
        let r = match r {
            Ok(()) => {
                inner.synced = inner.synced.max(upto);
                Ok(())
            }
            Err(e) => {
                // The kernel may have dropped the dirty pages: retrying proves nothing.
                error!("fsync of the definitions log failed; no further definitions will be accepted: {e}");
                inner.failed = Some(e.to_string());
                Err(e.into())
            }
        };
        self.synced_cv.notify_all();
        r
    }
}

fn failed(why: &str) -> Error {
    Error::from(std::io::Error::other(format!("an earlier fsync of the definitions log failed: {why}")))
}

impl Inner {
    /// Write every grouped record buffered so far (they stay buffered if that fails).
    fn write_buffered(&mut self) -> Result<(), Error> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.buf);
        let r = self.write(&buf);
        if r.is_ok() {
            buf.clear();
            self.written = self.appended;
        }
        self.buf = buf;
        r
    }

    /// Write `buf` at the end of the file; a partial write is cut off again, so a failure
    /// never leaves half a record for later records to follow.
    fn write(&mut self, buf: &[u8]) -> Result<(), Error> {
        if buf.is_empty() {
            return Ok(());
        }
        match (&*self.file).write_all(buf) {
            Ok(()) => {
                self.len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                if let Err(t) = self.file.set_len(self.len) {
                    error!("cutting a failed definitions write back to {} bytes: {t}", self.len);
                }
                Err(e.into())
            }
        }
    }
}

/// The syncer runs this in every commit round (see [`crate::Syncer::always_flush`]): a
/// message appended after a definition gets a round that starts after it, so its confirm
/// waits for the definition too.
impl Flush for DefinitionsLog {
    fn flush(&self, to_sync: &mut Vec<SyncTarget>) -> Result<(), Error> {
        let mut inner = self.inner.lock();
        while inner.syncing {
            // A waiter's fsync covers what it wrote; it takes one fsync at most.
            self.synced_cv.wait(&mut inner);
        }
        if inner.failed.is_some() {
            // Declares after the failure were refused; messages keep their own files.
            return Ok(());
        }
        inner.write_buffered()?;
        if inner.written > inner.synced {
            inner.round_upto = inner.written;
            to_sync.push(SyncTarget::File(inner.file.clone()));
        }
        Ok(())
    }

    fn synced(&self) {
        let mut inner = self.inner.lock();
        if inner.failed.is_none() && inner.round_upto > inner.synced {
            inner.synced = inner.round_upto;
            self.synced_cv.notify_all();
        }
    }

    fn describe(&self) -> String {
        "the definitions log".to_owned()
    }
}

/// What a definitions file holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Every record that passed its checksum, in file order.
    pub records: Vec<Vec<u8>>,
    /// Bytes skipped because they were damaged (a torn final record is not damage).
    pub damaged_bytes: usize,
}

/// The valid records of a definitions file (see [`read_records`]).
pub fn parse(path: &Path, b: &[u8]) -> Vec<Vec<u8>> {
    read_records(path, b).records
}

/// Read a definitions file. Records are only ever appended, so an unreadable record at
/// the very end is a torn write and is cut off. An unreadable record with a readable
/// one after it is damage: it is skipped (the next record is found by scanning for a
/// position where a whole record passes its checksum) and counted, and reading goes on,
/// so one flipped byte costs one definition, not every definition after it.
pub fn read_records(path: &Path, b: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    let mut at = 0;
    while at < b.len() {
        match record::decode(&b[at..]) {
            Decoded::Record(p, n) => {
                out.records.push(p.to_vec());
                at += n;
            }
            bad => match next_record(b, at + 1) {
                Some(next) => {
                    error!(
                        "{}: unreadable record at offset {at} ({bad:?}); skipped {} bytes",
                        path.display(),
                        next - at
                    );
                    out.damaged_bytes += next - at;
                    at = next;
                }
                None => {
                    if let Decoded::Corrupt { reason: why, .. } = bad {
                        // The last record is there whole but wrong: damage, not a torn write.
                        error!("{}: {why} in the last record at offset {at}; skipped", path.display());
                        out.damaged_bytes += b.len() - at;
                    } else {
                        warn!("{}: torn record at offset {at}, cut off ({} bytes)", path.display(), b.len() - at);
                    }
                    break;
                }
            },
        }
    }
    out
}

/// The first offset from `from` on where a whole valid, non-empty record starts. (Eight
/// zero bytes frame a valid empty record — crc32c of nothing is 0 — and zeros are common
/// inside payloads; definitions are never empty, so empty records are no place to resume.)
fn next_record(b: &[u8], from: usize) -> Option<usize> {
    (from..b.len()).find(|&i| matches!(record::decode(&b[i..]), Decoded::Record(p, _) if !p.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Syncer;

    fn reread(path: &Path) -> Vec<Vec<u8>> {
        parse(path, &fs::read(path).unwrap())
    }

    #[test]
    fn grouped_and_synchronous_appends_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("definitions.log");
        let log = DefinitionsLog::open(&path, |r| r).unwrap();
        assert_eq!(log.appended(), 0);
        let a = log.append_grouped(b"a").unwrap();
        let b = log.append_grouped(b"b").unwrap();
        assert_eq!((a, b), (1, 2));
        assert!(reread(&path).is_empty(), "grouped records wait for a sync");
        // A synchronous append writes the grouped records before its own.
        log.append(b"c").unwrap();
        assert_eq!(reread(&path), vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        let d = log.append_grouped(b"d").unwrap();
        log.sync_through(d).unwrap();
        assert_eq!(reread(&path), vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]);
        // Already synced: nothing to do.
        log.sync_through(b).unwrap();
    }

    #[test]
    fn concurrent_grouped_appends_are_all_on_disk_once_synced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("definitions.log");
        let log = DefinitionsLog::open(&path, |r| r).unwrap();
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let log = &log;
                s.spawn(move || {
                    for i in 0..50u8 {
                        // What a declare does: append under its locks, sync after.
                        let seq = log.append_grouped(&[t, i]).unwrap();
                        log.sync_through(seq).unwrap();
                        assert!(log.inner.lock().synced >= seq);
                    }
                });
            }
        });
        let records = reread(&path);
        assert_eq!(records.len(), 400);
        // Each thread's records are in its own order.
        for t in 0..8u8 {
            let mine: Vec<u8> = records.iter().filter(|r| r[0] == t).map(|r| r[1]).collect();
            assert_eq!(mine, (0..50).collect::<Vec<u8>>());
        }
        drop(log);
        let again = DefinitionsLog::open(&path, |r| {
            assert_eq!(r.len(), 400);
            r
        })
        .unwrap();
        assert!(!again.was_damaged());
    }

    /// A commit round of the syncer writes and fsyncs buffered definitions too, so a
    /// message confirmed after a declare implies the declare's record is on disk.
    #[test]
    fn every_commit_round_carries_the_buffered_definitions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("definitions.log");
        let log = Arc::new(DefinitionsLog::open(&path, |r| r).unwrap());
        let syncer = Syncer::start(|_| {});
        log.commit_with(&syncer);
        let seq = log.append_grouped(b"queue q").unwrap();
        // A queue's append after the definition: its round includes the log.
        let queue_dir = dir.path().join("q");
        let (files, _) = crate::segments::QueueFiles::open(&queue_dir, true, syncer.clone()).unwrap();
        drop(files);
        syncer.sync_all();
        assert_eq!(reread(&path), vec![b"queue q".to_vec()]);
        assert!(log.inner.lock().synced >= seq, "the round's fsync counts for the log's waiters");
        log.sync_through(seq).unwrap();
        syncer.shutdown();
    }
}
