//! A clean stop (everything synced) and a reopen: what comes back, in which order, with
//! which redelivered flag.

use broker::store::MessageStore;
use store::StoreConfig;

use crate::common::*;

/// Message `i` of the mixed workload: every fifth one is transient.
fn is_persistent(i: u64) -> bool {
    i % 5 != 2
}

fn body_len(i: u64) -> usize {
    (i as usize * 37) % 300
}

#[test]
fn persistent_messages_come_back_in_order_with_their_flags() {
    const N: u64 = 60;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("q");
    let syncer = TestSyncer::start();
    let msgs: Vec<_> = (0..N).map(|i| message(i, is_persistent(i), body_len(i))).collect();

    // Run 1: publish everything; deliver the first 20, ack 0..8 of them.
    {
        let mut s = open(&dir, &syncer);
        assert_eq!(s.len(), 0);
        assert_eq!(s.last_seq(), None);
        for i in 0..N {
            let _ = s.push(queued(i + 1, message(i, is_persistent(i), body_len(i)))).expect("push");
        }
        assert_eq!(s.len(), N as usize);
        for i in 0..20 {
            let m = s.pop().expect("pop");
            assert_message(&m, i + 1, &msgs[i as usize], false, "run 1");
            s.delivered(&m);
            if i < 8 {
                s.ack(&m);
            }
        }
        syncer.sync_all();
    }

    // Run 2: persistent, unacked messages are back; those delivered before the stop are
    // flagged redelivered. Ack five of them and publish three more.
    let expected: Vec<u64> = (8..N).filter(|&i| is_persistent(i)).collect();
    {
        let mut s = open(&dir, &syncer);
        assert_eq!(s.last_seq(), Some(N), "run 2: last seq (numbering continues after it)");
        assert_eq!(s.len(), expected.len(), "run 2: ready count before any pop");
        let got = pop_all(&mut s);
        assert_eq!(got.iter().map(|m| m.seq - 1).collect::<Vec<_>>(), expected, "run 2: which messages");
        for (m, &i) in got.iter().zip(&expected) {
            assert_message(m, i + 1, &msgs[i as usize], i < 20, "run 2");
        }
        for m in &got[..5] {
            s.delivered(m);
            s.ack(m);
        }
        for i in N..N + 3 {
            let _ = s.push(queued(i + 1, message(i, true, body_len(i)))).expect("push");
        }
        syncer.sync_all();
    }

    // Run 3: the acks of run 2 held; the new messages follow the old ones.
    {
        let mut s = open(&dir, &syncer);
        assert_eq!(s.last_seq(), Some(N + 3), "run 3: last seq");
        let want: Vec<u64> = expected[5..].iter().copied().chain(N..N + 3).collect();
        assert_eq!(s.len(), want.len(), "run 3: ready count");
        let got = pop_all(&mut s);
        assert_eq!(got.iter().map(|m| m.seq - 1).collect::<Vec<_>>(), want, "run 3: which messages");
        for (m, &i) in got.iter().zip(&want) {
            let original = message(i, i >= N || is_persistent(i), body_len(i));
            // The delivered mark of run 1 still covers messages 8..20; the others were
            // popped in run 2 but never marked delivered.
            assert_message(m, i + 1, &original, i < 20, "run 3");
        }
    }
}

#[test]
fn an_empty_store_reopens_empty() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("q");
    let syncer = TestSyncer::start();
    drop(open(&dir, &syncer));
    syncer.sync_all();
    let mut s = open(&dir, &syncer);
    assert_eq!((s.len(), s.last_seq()), (0, None));
    assert!(s.pop().is_none());
}

#[test]
fn transient_messages_paged_to_disk_do_not_come_back() {
    const N: u64 = 400;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("q");
    let syncer = TestSyncer::start();
    let cfg = StoreConfig { queue_ram_budget_bytes: 4096 };
    {
        let mut s = open_with(&dir, true, &syncer, cfg.clone());
        for i in 0..N {
            let _ = s.push(queued(i + 1, message(i, i % 2 == 0, 100))).expect("push");
        }
        syncer.sync_all();
    }
    let seg = std::fs::read(dir.join(seg_name(0, "seg"))).expect("segment 0");
    let records = record_bounds(&seg).len() as u64;
    assert!(records > N / 2 + 50, "transient messages should have been paged out too ({records} records on disk)");

    let mut s = open_with(&dir, true, &syncer, cfg);
    let want: Vec<u64> = (0..N).filter(|i| i % 2 == 0).collect();
    let len = s.len();
    let got = pop_all(&mut s);
    assert_eq!(got.iter().map(|m| m.seq - 1).collect::<Vec<_>>(), want);
    for (m, &i) in got.iter().zip(&want) {
        assert_message(m, i + 1, &message(i, true, 100), false, "after restart");
    }
    assert_eq!(len, want.len(), "ready count at open: only what will be delivered (the transient records are not)");
}

/// A message that was requeued (delivered, then given back) before the stop comes back at
/// its place, flagged redelivered.
#[test]
fn requeued_messages_come_back_at_their_place() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("q");
    let syncer = TestSyncer::start();
    {
        let mut s = open(&dir, &syncer);
        for i in 0..10 {
            let _ = s.push(queued(i + 1, message(i, true, 20))).expect("push");
        }
        let a = s.pop().expect("pop");
        let b = s.pop().expect("pop");
        s.delivered(&a);
        s.delivered(&b);
        s.ack(&a);
        s.requeue(b);
        syncer.sync_all();
    }
    let mut s = open(&dir, &syncer);
    let got = pop_all(&mut s);
    assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), (2..=10).collect::<Vec<_>>());
    for m in &got {
        assert_message(m, m.seq, &message(m.seq - 1, true, 20), m.seq == 2, "after restart");
    }
}

/// x-delivery-limit counts of requeued persistent messages survive a restart (they used
/// to restart at 0, or 1 for a message delivered before the stop); transient messages
/// and messages never requeued start from what the delivered mark says.
#[test]
fn delivery_counts_of_requeued_messages_survive_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("q");
    let syncer = TestSyncer::start();
    {
        let mut s = open(&dir, &syncer);
        for i in 0..4 {
            let _ = s.push(queued(i + 1, message(i, true, 10))).expect("push");
        }
        // Message 0 is delivered and requeued three times, message 1 once; message 2 is
        // delivered and held (the stop requeues it without a count); 3 never delivered.
        for count in 1..=3u32 {
            let mut m = s.pop().expect("pop");
            assert_eq!(m.seq, 1);
            m.delivery_count = count;
            s.delivered(&m);
            s.requeue(m);
        }
        let _first = s.pop().expect("pop 0");
        let mut m = s.pop().expect("pop 1");
        m.delivery_count = 1;
        s.delivered(&m);
        s.requeue(m);
        let _second = s.pop().expect("pop 1 again");
        let held = s.pop().expect("pop 2");
        assert_eq!(held.seq, 3);
        s.delivered(&held);
        syncer.sync_all();
    }
    let mut s = open(&dir, &syncer);
    let got: Vec<(u64, u32, bool)> = pop_all(&mut s).iter().map(|m| (m.seq, m.delivery_count, m.redelivered)).collect();
    assert_eq!(got, [(1, 3, true), (2, 1, true), (3, 1, true), (4, 0, false)]);
}
