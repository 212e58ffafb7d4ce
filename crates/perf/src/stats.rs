//! State shared by the workers and the reporter.
//!
//! Counters are bumped once per batch (a write of many publishes, a read of many
//! deliveries or confirms), never per message, so even with several worker threads the
//! atomics stay off the profile.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};

use crate::histogram::Histogram;

pub struct Stats {
    pub published: AtomicU64,
    pub confirmed: AtomicU64,
    pub nacked: AtomicU64,
    pub consumed: AtomicU64,
    /// connection.blocked notifications received (the broker's flow control kicking in).
    pub blocked: AtomicU64,
    /// Publish→deliver latencies (ns) since the reporter last took them.
    pub latency: Mutex<Histogram>,
    /// Publish→confirm latencies (ns) with --confirm: from the write of a message's batch to
    /// the ack that confirms its last message.
    pub confirm_latency: Mutex<Histogram>,
    /// Workers connected and set up (channel open, consume-ok / confirm-ok received).
    pub ready: AtomicUsize,
    /// Producers that sent their -C messages (and got them confirmed).
    pub producers_done: AtomicUsize,
    /// Consumers that received their -D messages.
    pub consumers_done: AtomicUsize,
    errors: Mutex<Vec<String>>,
    /// Wakes the main loop when `ready`, `*_done` or `errors` change.
    pub progress: Notify,
    /// Set once: every worker stops.
    pub stop: watch::Sender<bool>,
    /// Set once all workers are ready: producers start publishing.
    pub go: watch::Sender<bool>,
}

/// Counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub published: u64,
    pub confirmed: u64,
    pub nacked: u64,
    pub consumed: u64,
}

impl std::ops::Sub for Snapshot {
    type Output = Snapshot;
    fn sub(self, o: Snapshot) -> Snapshot {
        Snapshot {
            published: self.published.saturating_sub(o.published),
            confirmed: self.confirmed.saturating_sub(o.confirmed),
            nacked: self.nacked.saturating_sub(o.nacked),
            consumed: self.consumed.saturating_sub(o.consumed),
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            published: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            nacked: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            blocked: AtomicU64::new(0),
            latency: Mutex::new(Histogram::new()),
            confirm_latency: Mutex::new(Histogram::new()),
            ready: AtomicUsize::new(0),
            producers_done: AtomicUsize::new(0),
            consumers_done: AtomicUsize::new(0),
            errors: Mutex::new(Vec::new()),
            progress: Notify::new(),
            stop: watch::Sender::new(false),
            go: watch::Sender::new(false),
        }
    }
}

impl Stats {
    /// Read consumed before published: a message is counted as published before its
    /// bytes are written, so this order guarantees consumed <= published in a snapshot
    /// (absent messages left in the queues by earlier runs).
    pub fn snapshot(&self) -> Snapshot {
        let consumed = self.consumed.load(Ordering::Acquire);
        let confirmed = self.confirmed.load(Ordering::Acquire);
        let nacked = self.nacked.load(Ordering::Acquire);
        let published = self.published.load(Ordering::Acquire);
        Snapshot { published, confirmed, nacked, consumed }
    }

    /// Record a worker's failure and stop the run.
    pub fn fail(&self, message: String) {
        if let Ok(mut errors) = self.errors.lock() {
            errors.push(message);
        }
        self.stop.send_replace(true);
        self.progress.notify_one();
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }

    pub fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    pub fn bump(&self, counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::AcqRel);
        self.progress.notify_one();
    }

    pub fn take_latency(&self) -> Histogram {
        self.latency.lock().map(|mut h| std::mem::take(&mut *h)).unwrap_or_default()
    }

    pub fn take_confirm_latency(&self) -> Histogram {
        self.confirm_latency.lock().map(|mut h| std::mem::take(&mut *h)).unwrap_or_default()
    }

    pub fn record_latencies(&self, values: &mut Vec<u64>) {
        if values.is_empty() {
            return;
        }
        if let Ok(mut h) = self.latency.lock() {
            for &v in values.iter() {
                h.record(v);
            }
        }
        values.clear();
    }
}

/// CPU time (user + system) of a process, in seconds, from /proc (Linux only).
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name (which may contain spaces): state is
    // field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux ABI we run on (reading it would need libc).
    Some((utime + stime) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_is_readable() {
        if cfg!(target_os = "linux") {
            assert!(cpu_seconds(None).is_some());
        }
    }

    #[test]
    fn fail_stops_and_records() {
        let s = Stats::default();
        assert!(!s.stopped());
        s.fail("boom".into());
        assert!(s.stopped());
        assert_eq!(s.errors(), ["boom"]);
    }
}
