//! File descriptors: one budget (RLIMIT_NOFILE) that connections and queue files draw
//! from. When it runs short Warren refuses new connections — never confirms: a store
//! append that cannot open a file is a nack (see `store`), but the aim is that it never
//! gets there, so a reserve is kept for the store and for the clients already connected.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use parking_lot::Mutex;
use tracing::{info, warn};

/// How stale the count of open descriptors may be before a refusal re-counts it.
const RECOUNT_AFTER: Duration = Duration::from_millis(100);
/// At most one "refusing connections" log line per this period.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Raise the soft RLIMIT_NOFILE to the hard limit (most systems start processes at a soft
/// 1024 with a far higher hard limit). Returns the limit in force afterwards.
pub fn raise_nofile_limit() -> u64 {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard {
                match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                    Ok(()) => {
                        info!(from = soft, to = hard, "raised the open-file limit");
                        return hard;
                    }
                    Err(e) => warn!("raising the open-file limit from {soft} to {hard}: {e}"),
                }
            }
            soft
        }
        Err(e) => {
            warn!("reading the open-file limit: {e}");
            u64::MAX
        }
    }
}

/// The soft RLIMIT_NOFILE now (u64::MAX if unknown).
pub fn nofile_limit() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE).map_or(u64::MAX, |(soft, _)| soft)
}

/// Descriptors open in this process, counted in /proc/self/fd.
pub fn open_count() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

/// Admission control for new connections against the descriptor budget.
pub struct FdBudget {
    limit: u64,
    reserve: u64,
    /// Descriptors open at the last count, plus connections admitted since.
    in_use: AtomicU64,
    counted_at: Mutex<Instant>,
    recount_after: Duration,
    last_log: Mutex<Option<Instant>>,
    refused: AtomicU64,
}

impl FdBudget {
    /// `reserve`: descriptors kept free for queue files and the like; capped at a quarter
    /// of `limit` so that a small limit still admits connections.
    pub fn new(limit: u64, reserve: u64) -> FdBudget {
        let b = FdBudget {
            limit,
            reserve: reserve.min(limit / 4),
            in_use: AtomicU64::new(0),
            counted_at: Mutex::new(Instant::now()),
            recount_after: RECOUNT_AFTER,
            last_log: Mutex::new(None),
            refused: AtomicU64::new(0),
        };
        b.recount();
        b
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Descriptors in use at the last count (plus connections admitted since).
    pub fn in_use(&self) -> u64 {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Connections refused for want of descriptors, since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Count the open descriptors again (periodically, and before refusing).
    pub fn recount(&self) {
        if let Some(n) = open_count() {
            self.in_use.store(n, Ordering::Relaxed);
        }
        *self.counted_at.lock() = Instant::now();
    }

    /// May a new connection (already accepted: its socket is counted) stay open?
    pub fn admit(&self) -> bool {
        let fits = |used: u64| used.saturating_add(self.reserve) < self.limit;
        if fits(self.in_use.fetch_add(1, Ordering::Relaxed) + 1) {
            return true;
        }
        // Closed connections and files are only seen by a count: take one, unless the
        // last is fresh.
        if self.counted_at.lock().elapsed() >= self.recount_after {
            self.recount();
            if fits(self.in_use()) {
                return true;
            }
        }
        // The refused socket is about to be closed.
        self.in_use.fetch_sub(1, Ordering::Relaxed);
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_log.lock();
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            warn!(
                in_use = self.in_use(),
                limit = self.limit,
                reserve = self.reserve,
                refused_so_far = self.refused(),
                "file descriptors running short: refusing new connections (raise the open-file limit, \
                 e.g. `ulimit -n`, or lower --fd-reserve)"
            );
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_until_the_reserve_then_refuses() {
        let open = open_count().expect("/proc/self/fd");
        let mut b = FdBudget::new(open + 40, 20);
        b.recount_after = Duration::from_secs(3600);
        let admitted = (0..100).take_while(|_| b.admit()).count() as u64;
        // The count may move by a few (other tests open files meanwhile).
        assert!((10..=30).contains(&admitted), "admitted {admitted}");
        assert!(!b.admit());
        assert!(b.refused() >= 2);
    }

    #[test]
    fn reserve_is_capped_at_a_quarter_of_the_limit() {
        let b = FdBudget::new(u64::MAX, 1 << 20);
        assert!(b.admit());
        let small = FdBudget::new(128, 256);
        assert_eq!(small.reserve, 32);
    }
}
