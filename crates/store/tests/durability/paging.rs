//! Queues far over their RAM budget, and the reclamation of drained segments.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use broker::store::MessageStore;
use store::StoreConfig;
use store::segments::SEGMENT_MAX_BYTES;

use crate::common::*;

const TINY: StoreConfig = StoreConfig { queue_ram_budget_bytes: 4096 };

fn small_len(i: u64) -> usize {
    40 + (i as usize * 7) % 120
}

fn seg_bytes(dir: &std::path::Path) -> u64 {
    listing(dir).iter().filter(|(n, _)| n.ends_with(".seg")).map(|(_, s)| s).sum()
}

#[test]
fn ten_thousand_messages_through_a_4k_budget() {
    const N: u64 = 10_000;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("q");
    let syncer = TestSyncer::start();
    // A non-durable queue: the files only page messages out of RAM.
    let mut s = open_with(&dir, false, &syncer, TINY);
    for i in 0..N {
        let _ = s.push(queued(i + 1, message(i, false, small_len(i)))).expect("push");
    }
    assert_eq!(s.len(), N as usize);
    // Paged-out bytes are buffered until the next commit round writes them.
    syncer.sync_all();
    let on_disk = seg_bytes(&dir);
    assert!(on_disk > 9_000 * 40, "10,000 messages over a 4 KiB budget must be on disk ({on_disk} bytes are)");
    let got = pop_all(&mut s);
    assert_eq!(got.len(), N as usize);
    for (i, m) in got.iter().enumerate() {
        let i = i as u64;
        assert_message(m, i + 1, &message(i, false, small_len(i)), false, "paged");
    }
    let from_disk = got.iter().filter(|m| m.disk.is_some()).count();
    assert!(from_disk >= 9_900, "only {from_disk} of {N} messages came back from disk");
    assert_eq!(s.len(), 0);
}

/// Three in, two out: the backlog grows past the budget, so pops cross from RAM to disk
/// and back while pushes keep landing behind them (and reads reach bytes still in the
/// append buffer). Every hundredth pair is given back and must be next again, in order.
fn interleave(cfg: StoreConfig, rounds: u64, len: impl Fn(u64) -> usize) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("q");
    let syncer = TestSyncer::start();
    let mut s = open_with(&dir, false, &syncer, cfg);
    let mut next = 0u64;
    let mut expect = 0u64;
    for round in 0..rounds {
        for _ in 0..3 {
            let _ = s.push(queued(next + 1, message(next, false, len(next)))).expect("push");
            next += 1;
        }
        let a = s.pop().expect("pop");
        let b = s.pop().expect("pop");
        assert_message(&a, expect + 1, &message(expect, false, len(expect)), false, "interleaved");
        assert_message(&b, expect + 2, &message(expect + 1, false, len(expect + 1)), false, "interleaved");
        if round % 100 == 0 {
            s.requeue(b);
            s.requeue(a);
        } else {
            expect += 2;
        }
    }
    assert_eq!(s.len() as u64, next - expect);
    for (k, m) in pop_all(&mut s).iter().enumerate() {
        let i = expect + k as u64;
        assert_message(m, i + 1, &message(i, false, len(i)), false, "tail");
    }
}

#[test]
fn interleaved_pushes_pops_and_requeues_keep_order() {
    interleave(TINY, 3_000, small_len);
}

/// The same with a 1 MiB budget and every third message 64 KiB: reads of up to half the
/// budget at once.
#[test]
fn interleaved_big_and_small_messages_keep_order() {
    let len = |i: u64| if i.is_multiple_of(3) { 64 * 1024 } else { small_len(i) };
    interleave(StoreConfig { queue_ram_budget_bytes: 1024 * 1024 }, 400, len);
}

#[test]
fn ten_thousand_persistent_messages_over_budget_survive_a_restart() {
    const N: u64 = 10_000;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("q");
    let syncer = TestSyncer::start();
    {
        let mut s = open_with(&dir, true, &syncer, TINY);
        for i in 0..N {
            let _ = s.push(queued(i + 1, message(i, true, small_len(i)))).expect("push");
        }
        // Half of them consumed and acknowledged before the stop.
        for i in 0..N / 2 {
            let m = s.pop().expect("pop");
            assert_message(&m, i + 1, &message(i, true, small_len(i)), false, "before restart");
            s.delivered(&m);
            s.ack(&m);
        }
        syncer.sync_all();
    }
    let mut s = open_with(&dir, true, &syncer, TINY);
    assert_eq!(s.len() as u64, N / 2);
    let got = pop_all(&mut s);
    assert_eq!(got.len() as u64, N / 2);
    for (k, m) in got.iter().enumerate() {
        let i = N / 2 + k as u64;
        assert_message(m, i + 1, &message(i, true, small_len(i)), false, "after restart");
    }
}

const BIG: usize = 64 * 1024;
/// About three and a bit segments of 64 KiB messages.
const BIG_COUNT: u64 = 400;

/// After everything is acknowledged, what the queue directory still holds: at most the
/// segment being written (sealed, fully acknowledged segments are deleted).
fn assert_drained(dir: &std::path::Path, what: &str) {
    let files = listing(dir);
    let segs = files.iter().filter(|(n, _)| n.ends_with(".seg")).count();
    let total: u64 = files.iter().map(|(_, s)| s).sum();
    eprintln!("{what}: {segs} segment(s), {total} bytes: {files:?}");
    assert!(
        segs <= 1 && total <= SEGMENT_MAX_BYTES + 2 * BIG as u64,
        "{what}: fully acknowledged segments were not deleted: {segs} segment files, {total} bytes in the queue \
         directory: {files:?}"
    );
}

/// Reopening a drained queue: nothing comes back and the last (fully acknowledged)
/// segment is gone too.
fn assert_reopens_empty(dir: &std::path::Path, syncer: &TestSyncer) {
    let mut s = open(dir, syncer);
    assert_eq!(s.len(), 0, "a drained queue reopens empty");
    assert!(s.pop().is_none(), "a drained queue reopens empty");
    let total: u64 = listing(dir).iter().map(|(_, s)| s).sum();
    assert!(total < 1024, "after reopening a drained queue: {:?}", listing(dir));
}

#[test]
fn segments_are_deleted_once_drained() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("q");
    let syncer = TestSyncer::start();
    {
        let mut s = open(&dir, &syncer);
        for i in 0..BIG_COUNT {
            let _ = s.push(queued(i + 1, message(i, true, BIG))).expect("push");
        }
        syncer.sync_all();
        let segs = listing(&dir).iter().filter(|(n, _)| n.ends_with(".seg")).count();
        assert!(segs >= 4, "{BIG_COUNT} messages of 64 KiB should span 4 segments: {:?}", listing(&dir));
        for i in 0..BIG_COUNT {
            let m = s.pop().expect("pop");
            assert_eq!(m.seq, i + 1);
            s.delivered(&m);
            s.ack(&m);
        }
        syncer.sync_all();
        assert_drained(&dir, "published, then consumed");
    }
    assert_reopens_empty(&dir, &syncer);
}

/// A consumer that keeps up: every message is acknowledged right after it is published,
/// so each segment is fully acknowledged before it is sealed.
#[test]
fn segments_drained_while_being_written_are_deleted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("q");
    let syncer = TestSyncer::start();
    {
        let mut s = open(&dir, &syncer);
        for i in 0..BIG_COUNT {
            let _ = s.push(queued(i + 1, message(i, true, BIG))).expect("push");
            let m = s.pop().expect("pop");
            assert_eq!(m.seq, i + 1);
            s.delivered(&m);
            s.ack(&m);
        }
        syncer.sync_all();
        assert_drained(&dir, "consumed in lockstep");
    }
    assert_reopens_empty(&dir, &syncer);
}

/// Holds the commit thread inside a round's callback while closed, so that bytes appended
/// meanwhile stay in the queue's append buffer.
#[derive(Default)]
struct Gate {
    closed: AtomicBool,
    stalled: AtomicBool,
}

impl Gate {
    fn hold(&self) {
        if self.closed.load(Ordering::Acquire) {
            self.stalled.store(true, Ordering::Release);
            while self.closed.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.stalled.store(false, Ordering::Release);
        }
    }
}

/// Opens the gate when dropped.
struct Opener(Arc<Gate>);

impl Drop for Opener {
    fn drop(&mut self) {
        self.0.closed.store(false, Ordering::Release);
    }
}

/// A refill read that starts in bytes already written but reaches into the append buffer
/// (the commit thread has not written it yet): the read must see those bytes too.
#[test]
fn reads_reaching_into_the_append_buffer() {
    const BIG: usize = 64 * 1024;
    // Half the budget is read at once: 512 KiB, more than the 256 KiB read chunk.
    let cfg = StoreConfig { queue_ram_budget_bytes: 1024 * 1024 };
    for written_first in 16..=26u64 {
        let ctx = format!("{written_first} messages written before the commit thread stalls");
        let tmp = tempfile::tempdir().expect("tempdir");
        let gate = Arc::new(Gate::default());
        let g = gate.clone();
        let syncer = TestSyncer::with_callback(move |_| g.hold());
        // Dropped before the syncer, even when a check panics: its shutdown needs a round.
        let _open = Opener(gate.clone());
        let mut s = open_with(&tmp.path().join("q"), false, &syncer, cfg.clone());
        for i in 0..written_first {
            let _ = s.push(queued(i + 1, message(i, false, BIG))).expect("push");
        }
        syncer.sync_all();
        // Stall the commit thread: close the gate and make it run a round (for another
        // queue); it then waits in the callback.
        gate.closed.store(true, Ordering::Release);
        let mut other = open_with(&tmp.path().join("other"), false, &syncer, StoreConfig { queue_ram_budget_bytes: 0 });
        let _ = other.push(queued(1, message(0, false, 10))).expect("push");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gate.stalled.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline, "{ctx}: the commit thread did not stall");
            std::thread::sleep(Duration::from_millis(1));
        }
        let total = written_first + 12;
        for i in written_first..total {
            let _ = s.push(queued(i + 1, message(i, false, BIG))).expect("push");
        }
        let got = pop_all(&mut s);
        gate.closed.store(false, Ordering::Release);
        assert_eq!(got.len() as u64, total, "{ctx}: messages served");
        for (i, m) in got.iter().enumerate() {
            let i = i as u64;
            assert_message(m, i + 1, &message(i, false, BIG), false, &ctx);
        }
    }
}
