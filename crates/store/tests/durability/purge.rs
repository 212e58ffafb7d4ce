//! Purging a queue whose backlog is paged to disk: the backlog is acknowledged without
//! being read back, stays gone after a restart, and the queue keeps working.

use broker::store::MessageStore;
use store::StoreConfig;

use crate::common::*;

const TINY: StoreConfig = StoreConfig { queue_ram_budget_bytes: 4096 };
/// Enough 4 KiB messages for three segments.
const N: u64 = 5_000;
const BODY: usize = 4096;

fn seg_files(dir: &std::path::Path) -> usize {
    listing(dir).iter().filter(|(n, _)| n.ends_with(".seg")).count()
}

#[test]
fn purged_backlog_stays_gone_after_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("q");
    let syncer = TestSyncer::start();
    // Run 1: a backlog far over the RAM budget; deliver ten, ack five; purge the rest.
    {
        let mut s = open_with(&dir, true, &syncer, TINY);
        for i in 0..N {
            let _ = s.push(queued(i + 1, message(i, true, BODY))).expect("push");
        }
        syncer.sync_all();
        assert!(seg_files(&dir) >= 3, "{:?}", listing(&dir));
        for i in 0..10 {
            let m = s.pop().expect("pop");
            assert_message(&m, i + 1, &message(i, true, BODY), false, "run 1");
            s.delivered(&m);
            if i < 5 {
                s.ack(&m);
            }
        }
        // The refill stopped in the middle of the first segment: purge walks the rest of
        // that one and deletes the others unread.
        assert_eq!(s.purge(), (N - 10) as usize);
        assert_eq!(s.len(), 0);
        assert!(s.pop().is_none());
        syncer.sync_all();
        assert_eq!(seg_files(&dir), 1, "segments after the first are deleted: {:?}", listing(&dir));
    }
    // Run 2: only the five delivered, unacknowledged messages come back. Publishing after
    // the purge works, and so does a second purge.
    {
        let mut s = open_with(&dir, true, &syncer, TINY);
        let got = pop_all(&mut s);
        assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), (6..=10).collect::<Vec<_>>(), "run 2");
        for m in &got {
            assert_message(m, m.seq, &message(m.seq - 1, true, BODY), true, "run 2");
            s.ack(m);
        }
        for i in N..N + 300 {
            let _ = s.push(queued(i + 1, message(i, true, BODY))).expect("push");
        }
        let m = s.pop().expect("pop after purge");
        assert_message(&m, N + 1, &message(N, true, BODY), false, "run 2 publish after purge");
        s.ack(&m);
        assert_eq!(s.purge(), 299);
        for i in N + 300..N + 303 {
            let _ = s.push(queued(i + 1, message(i, true, BODY))).expect("push");
        }
        syncer.sync_all();
    }
    // Run 3: exactly the three published after the second purge.
    let mut s = open_with(&dir, true, &syncer, TINY);
    let got = pop_all(&mut s);
    assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), (N + 301..=N + 303).collect::<Vec<_>>(), "run 3");
    for m in &got {
        assert_message(m, m.seq, &message(m.seq - 1, true, BODY), false, "run 3");
    }
}

/// Killed after the purge's commit round, before any clean stop: a copy of the files as
/// they are then recovers no purged message.
#[test]
fn purge_survives_a_crash_after_its_commit_round() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("q");
    let syncer = TestSyncer::start();
    let mut s = open_with(&dir, true, &syncer, TINY);
    for i in 0..N {
        let _ = s.push(queued(i + 1, message(i, i % 3 != 1, BODY))).expect("push");
    }
    let head = s.pop().expect("pop");
    s.delivered(&head);
    assert!(s.purge() > 0);
    syncer.sync_all();
    let copy = materialize(tmp.path(), "crashed", &snapshot(&dir));
    let mut r = open_with(&copy, true, &syncer, TINY);
    let got = pop_all(&mut r);
    assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![head.seq], "only the unacked head");
    drop(s);
}

/// A transient queue paged to disk: purge, then publish and consume in order.
#[test]
fn paged_transient_queue_works_after_a_purge() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("q");
    let syncer = TestSyncer::start();
    let mut s = open_with(&dir, false, &syncer, TINY);
    let mut seq = 0;
    for round in 0..3u64 {
        for i in 0..2_000 {
            seq += 1;
            let _ = s.push(queued(seq, message(i, false, 100 + (i as usize % 7) * 600))).expect("push");
        }
        let m = s.pop().expect("pop");
        s.requeue(m);
        assert_eq!(s.purge(), 2_000, "round {round}");
        assert_eq!(s.len(), 0);
        syncer.sync_all();
        for i in 0..50 {
            let _ = s.push(queued(seq + 1 + i, message(i, false, 3000))).expect("push");
        }
        let got = pop_all(&mut s);
        assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), (seq + 1..=seq + 50).collect::<Vec<_>>());
        for m in &got {
            s.ack(m);
        }
        seq += 50;
    }
    syncer.sync_all();
    assert!(seg_files(&dir) <= 2, "drained segments are reclaimed: {:?}", listing(&dir));
}
