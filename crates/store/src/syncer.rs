//! Group commit. Appends register the queue files they dirtied and get the number of the
//! commit round ("epoch") that will make them durable. One thread runs rounds: it takes
//! every dirty file set, writes their buffered bytes, fsyncs them, then publishes the
//! epoch as durable. Everything that arrived while one round ran goes into the next, so a
//! lone publisher waits for one fsync while a thousand in flight share one.
//!
//! Correctness of the epoch hand-off: a queue's files register when they go from clean to
//! dirty, reading the open epoch E under the same lock the syncer holds while it closes E
//! and takes the dirty list — so those files are in round E's list. Later appends to the
//! same files (under their own lock) reuse E until round E flushes them, which it does
//! under that lock after the appends. So every byte reported with epoch E is written and
//! fsynced before E is published.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use broker::store::CommitState;

use crate::file_cache::{FileCache, OPEN_FILES_MAX_DEFAULT};
use parking_lot::{Condvar, Mutex};
use tracing::{debug, error, info, warn};

use crate::Error;

/// Something holding bytes for the next commit round: a queue's files, the definitions
/// log. The syncer writes them (`flush`) and fsyncs what `flush` names.
pub(crate) trait Flush: Send + Sync {
    /// Write the buffered bytes and add what needs an fsync to `to_sync`. On error the
    /// bytes stay buffered and the syncer calls again next round.
    fn flush(&self, to_sync: &mut Vec<SyncTarget>) -> Result<(), Error>;
    /// For log lines.
    fn describe(&self) -> String;
    /// The round that called `flush` fsynced everything it named.
    fn synced(&self) {}
}

type DurableCallback = Box<dyn Fn(CommitState) + Send + Sync>;

pub struct Syncer {
    state: Mutex<State>,
    /// Wakes the commit thread.
    cv: Condvar,
    /// Wakes `sync_all` callers after a round.
    done: Condvar,
    durable_epoch: AtomicU64,
    on_durable: DurableCallback,
    /// An fsync failed: durability can no longer be promised (see docs/storage.md).
    poisoned: AtomicBool,
    /// Fault injection: the next round fails as if an fsync had.
    fail_next_round: AtomicBool,
    /// Rounds up to this one were refused because they could not be written in time.
    failed_through: AtomicU64,
    /// The open files of every queue this syncer commits for.
    files: Arc<FileCache>,
}

struct State {
    open_epoch: u64,
    max_requested: u64,
    dirty: Vec<Weak<dyn Flush>>,
    /// Flushed in every round, dirty or not (the definitions log).
    always: Vec<Weak<dyn Flush>>,
    stop: bool,
}

impl Syncer {
    /// Start the commit thread. `on_commit(state)` runs on it after each round, and once
    /// more with `failed` set when a write or fsync fails.
    pub fn start(on_commit: impl Fn(CommitState) + Send + Sync + 'static) -> Arc<Syncer> {
        Self::start_with(on_commit, OPEN_FILES_MAX_DEFAULT)
    }

    /// [`Syncer::start`], keeping at most `open_files_max` queue files open.
    pub fn start_with(on_commit: impl Fn(CommitState) + Send + Sync + 'static, open_files_max: usize) -> Arc<Syncer> {
        let s = Arc::new(Syncer {
            state: Mutex::new(State {
                open_epoch: 1,
                max_requested: 0,
                dirty: Vec::new(),
                always: Vec::new(),
                stop: false,
            }),
            cv: Condvar::new(),
            done: Condvar::new(),
            durable_epoch: AtomicU64::new(0),
            on_durable: Box::new(on_commit),
            poisoned: AtomicBool::new(false),
            fail_next_round: AtomicBool::new(false),
            failed_through: AtomicU64::new(0),
            files: Arc::new(FileCache::new(open_files_max)),
        });
        let me = s.clone();
        std::thread::Builder::new()
            .name("warren-syncer".into())
            .spawn(move || me.run())
            .expect("spawning the syncer thread");
        s
    }

    pub fn durable_epoch(&self) -> u64 {
        self.durable_epoch.load(Ordering::Acquire)
    }

    /// The open-file cache shared by the queues.
    pub fn file_cache(&self) -> &Arc<FileCache> {
        &self.files
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Relaxed)
    }

    fn commit_state(&self, durable_round: u64, failed: bool) -> CommitState {
        CommitState { durable_round, failed, failed_through: self.failed_through.load(Ordering::Acquire) }
    }

    /// Fault injection for tests and failure drills: the next commit round fails as an
    /// fsync failure would (the store is poisoned; waiting confirms become nacks).
    pub fn inject_fsync_failure(&self) {
        self.fail_next_round.store(true, Ordering::Relaxed);
        {
            let mut st = self.state.lock();
            st.max_requested = st.max_requested.max(st.open_epoch);
        }
        self.cv.notify_one();
    }

    /// Called with `files`' lock held, when they go from clean to dirty. Returns the
    /// epoch of the round that will flush them.
    pub(crate) fn register<F: Flush + 'static>(&self, files: &Arc<F>) -> u64 {
        let files: Arc<dyn Flush> = files.clone();
        let mut st = self.state.lock();
        st.dirty.push(Arc::downgrade(&files));
        let e = st.open_epoch;
        drop(st);
        self.cv.notify_one();
        e
    }

    /// Flush `f` in every round from now on, before the round's epoch is published.
    pub(crate) fn always_flush<F: Flush + 'static>(&self, f: &Arc<F>) {
        let f: Arc<dyn Flush> = f.clone();
        self.state.lock().always.push(Arc::downgrade(&f));
    }

    /// Run a commit round soon even if no queue file is dirty (it flushes the
    /// [`Syncer::always_flush`] members, e.g. definitions nobody waits for).
    pub fn request_round(&self) {
        {
            let mut st = self.state.lock();
            st.max_requested = st.max_requested.max(st.open_epoch);
        }
        self.cv.notify_one();
    }

    /// Block until every append registered so far is durable.
    pub fn sync_all(&self) {
        let target = self.state.lock().open_epoch;
        self.wait_durable(target);
    }

    /// Block until round `epoch` is durable (true), or will never be: an fsync failed,
    /// its writes were refused, or the syncer stopped (false).
    pub fn wait_durable(&self, epoch: u64) -> bool {
        {
            let mut st = self.state.lock();
            st.max_requested = st.max_requested.max(epoch);
        }
        self.cv.notify_one();
        let mut st = self.state.lock();
        loop {
            if self.durable_epoch() >= epoch {
                return true;
            }
            if self.failed_through.load(Ordering::Acquire) >= epoch || st.stop || self.is_poisoned() {
                return false;
            }
            // (Rounds notify under the state lock, so no wake-up is missed; the timeout
            // only bounds a stop.)
            self.done.wait_for(&mut st, std::time::Duration::from_millis(100));
        }
    }

    /// Wake `wait_durable` callers. Taking the state lock first orders this after any
    /// waiter's check: a waiter that saw the old epoch is already waiting.
    fn wake_waiters(&self) {
        drop(self.state.lock());
        self.done.notify_all();
    }

    /// Flush everything and stop the thread.
    pub fn shutdown(&self) {
        self.sync_all();
        self.state.lock().stop = true;
        self.cv.notify_all();
        self.done.notify_all();
    }

    fn run(self: Arc<Self>) {
        let mut to_sync = Vec::new();
        let mut told_failure = false;
        // Directories whose fsync could not even be opened (EMFILE), carried to the next
        // round; since when rounds have not completed (a write or such an open failed),
        // and whether this stall already refuses publishes.
        let mut retry: Vec<SyncTarget> = Vec::new();
        let mut stalled_since: Option<Instant> = None;
        let mut refusing = false;
        loop {
            let (epoch, batch) = {
                let mut st = self.state.lock();
                if stalled_since.is_some() {
                    if st.stop {
                        // Shutting down with writes that cannot be made: what they held
                        // was never confirmed.
                        return;
                    }
                    // Give the system a moment (free space, free descriptors).
                    self.cv.wait_for(&mut st, STALLED_RETRY_PAUSE);
                }
                while st.dirty.is_empty() && retry.is_empty() && st.max_requested <= self.durable_epoch() && !st.stop {
                    self.cv.wait(&mut st);
                }
                if st.stop && st.dirty.is_empty() && retry.is_empty() {
                    return;
                }
                let e = st.open_epoch;
                st.open_epoch += 1;
                let mut batch = std::mem::take(&mut st.dirty);
                st.always.retain(|f| f.strong_count() > 0);
                batch.extend(st.always.iter().cloned());
                (e, batch)
            };
            let started = Instant::now();
            to_sync.clear();
            to_sync.append(&mut retry);
            let mut write_failed = false;
            let batch: Vec<Arc<dyn Flush>> = batch.iter().filter_map(Weak::upgrade).collect();
            for files in &batch {
                if let Err(e) = files.flush(&mut to_sync) {
                    // Nothing is lost: the bytes stay buffered and the files are flushed
                    // again next round (a full disk, out of descriptors). Only an fsync
                    // failure is final.
                    if stalled_since.is_none() {
                        error!("writing {}: {e}; retrying", files.describe());
                    }
                    write_failed = true;
                    self.state.lock().dirty.push(Arc::downgrade(files));
                }
            }
            let synced = to_sync.len();
            for f in to_sync.drain(..) {
                match f.sync() {
                    Ok(()) => {}
                    Err(SyncError::Open(e)) => {
                        // Nothing was lost (the directory could not be opened to fsync
                        // it, e.g. out of descriptors): this round is not durable yet.
                        debug!("opening a directory to fsync it: {e}; retrying");
                        retry.push(f);
                    }
                    Err(SyncError::Sync(e)) => {
                        // After a failed fsync the kernel may have dropped the dirty pages:
                        // retrying cannot prove anything. Stop confirming (poisoned).
                        error!("fsync failed, no further publishes will be confirmed: {e}");
                        self.poisoned.store(true, Ordering::Relaxed);
                    }
                }
            }
            if self.fail_next_round.swap(false, Ordering::Relaxed) {
                error!("fsync failed (injected), no further publishes will be confirmed");
                self.poisoned.store(true, Ordering::Relaxed);
            }
            if self.is_poisoned() {
                retry.clear();
                if !told_failure {
                    // Everyone waiting on this or a later round hears "never": publishers
                    // get nacks instead of confirms that stop without a word.
                    told_failure = true;
                    (self.on_durable)(self.commit_state(self.durable_epoch(), true));
                }
                self.wake_waiters();
                continue;
            }
            if write_failed || !retry.is_empty() {
                // Not durable yet: a later round that gets through publishes an epoch
                // covering this one. Publishers are not kept waiting meanwhile: once this
                // has lasted STALLED_NACK_AFTER, the rounds so far are refused (nacks).
                let since = *stalled_since.get_or_insert(started);
                if since.elapsed() >= STALLED_NACK_AFTER {
                    if !refusing {
                        refusing = true;
                        warn!(
                            "queue files could not be written for {:?}: refusing publishes until they can",
                            since.elapsed()
                        );
                    }
                    self.failed_through.store(epoch, Ordering::Release);
                    (self.on_durable)(self.commit_state(self.durable_epoch(), false));
                    self.wake_waiters();
                }
                continue;
            }
            refusing = false;
            if let Some(since) = stalled_since.take() {
                info!("queue files written again after {:?}; confirming publishes again", since.elapsed());
            }
            for files in &batch {
                files.synced();
            }
            self.durable_epoch.store(epoch, Ordering::Release);
            debug!(epoch, files = synced, micros = started.elapsed().as_micros() as u64, "commit round");
            (self.on_durable)(self.commit_state(epoch, false));
            self.wake_waiters();
        }
    }
}

/// Pause between rounds while writes keep failing (or directories cannot be opened).
const STALLED_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);
/// How long publishes wait on rounds that cannot be written before they are nacked.
const STALLED_NACK_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

enum SyncError {
    /// The file or directory could not be opened: nothing is known lost; retry.
    Open(std::io::Error),
    /// fsync itself failed: the dirty pages may be gone.
    Sync(std::io::Error),
}

/// Something the syncer must fsync after writing.
pub(crate) enum SyncTarget {
    /// fdatasync a data file.
    File(Arc<std::fs::File>),
    /// fsync a directory (new or removed files).
    Dir(std::path::PathBuf),
}

impl SyncTarget {
    fn sync(&self) -> Result<(), SyncError> {
        match self {
            SyncTarget::File(f) => f.sync_data().map_err(SyncError::Sync),
            SyncTarget::Dir(d) => match std::fs::File::open(d) {
                Ok(f) => f.sync_all().map_err(SyncError::Sync),
                // Deleted meanwhile (its queue was): nothing left to make durable.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(SyncError::Open(e)),
            },
        }
    }
}
