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
use tracing::{debug, error};

use crate::segments::QueueFiles;

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
    /// The open files of every queue this syncer commits for.
    files: Arc<FileCache>,
}

struct State {
    open_epoch: u64,
    max_requested: u64,
    dirty: Vec<Weak<QueueFiles>>,
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
            state: Mutex::new(State { open_epoch: 1, max_requested: 0, dirty: Vec::new(), stop: false }),
            cv: Condvar::new(),
            done: Condvar::new(),
            durable_epoch: AtomicU64::new(0),
            on_durable: Box::new(on_commit),
            poisoned: AtomicBool::new(false),
            fail_next_round: AtomicBool::new(false),
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
    pub(crate) fn register(&self, files: &Arc<QueueFiles>) -> u64 {
        let mut st = self.state.lock();
        st.dirty.push(Arc::downgrade(files));
        let e = st.open_epoch;
        drop(st);
        self.cv.notify_one();
        e
    }

    /// Block until every append registered so far is durable.
    pub fn sync_all(&self) {
        let target = {
            let mut st = self.state.lock();
            let e = st.open_epoch;
            st.max_requested = st.max_requested.max(e);
            e
        };
        self.cv.notify_one();
        let mut st = self.state.lock();
        while self.durable_epoch() < target && !st.stop && !self.is_poisoned() {
            self.done.wait_for(&mut st, std::time::Duration::from_millis(10));
        }
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
        // round; and how many rounds in a row that happened.
        let mut retry: Vec<SyncTarget> = Vec::new();
        let mut retry_rounds = 0u32;
        loop {
            let (epoch, batch) = {
                let mut st = self.state.lock();
                if !retry.is_empty() {
                    // Give the process a moment to free descriptors.
                    self.cv.wait_for(&mut st, OPEN_RETRY_PAUSE);
                }
                while st.dirty.is_empty() && retry.is_empty() && st.max_requested <= self.durable_epoch() && !st.stop {
                    self.cv.wait(&mut st);
                }
                if st.stop && st.dirty.is_empty() && retry.is_empty() {
                    return;
                }
                let e = st.open_epoch;
                st.open_epoch += 1;
                (e, std::mem::take(&mut st.dirty))
            };
            let started = Instant::now();
            to_sync.clear();
            to_sync.append(&mut retry);
            for files in batch.iter().filter_map(Weak::upgrade) {
                if let Err(e) = files.flush(&mut to_sync) {
                    error!("writing queue files in {}: {e}", files.dir().display());
                    self.poisoned.store(true, Ordering::Relaxed);
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
            if retry.is_empty() {
                retry_rounds = 0;
            } else {
                retry_rounds += 1;
                if retry_rounds > OPEN_RETRY_ROUNDS_MAX {
                    error!(
                        "could not open directories to fsync them for {retry_rounds} rounds; no further publishes will be confirmed"
                    );
                    self.poisoned.store(true, Ordering::Relaxed);
                }
            }
            if self.is_poisoned() {
                retry.clear();
                if !told_failure {
                    // Everyone waiting on this or a later round hears "never": publishers
                    // get nacks instead of confirms that stop without a word.
                    told_failure = true;
                    (self.on_durable)(CommitState { durable_round: self.durable_epoch(), failed: true });
                }
                self.done.notify_all();
                continue;
            }
            if !retry.is_empty() {
                // Not durable yet: a later round that gets the retries through publishes an
                // epoch covering this one.
                continue;
            }
            self.durable_epoch.store(epoch, Ordering::Release);
            debug!(epoch, files = synced, micros = started.elapsed().as_micros() as u64, "commit round");
            (self.on_durable)(CommitState { durable_round: epoch, failed: false });
            self.done.notify_all();
        }
    }
}

/// Pause before a round that retries directory fsyncs whose open failed.
const OPEN_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);
/// Rounds in a row a directory may fail to open for its fsync before the store gives up
/// (poisoned: nacks): about 5 s of [`OPEN_RETRY_PAUSE`].
const OPEN_RETRY_ROUNDS_MAX: u32 = 250;

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
