//! Torn writes: a file cut at every byte. Recovery must keep exactly the records wholly
//! inside the prefix, cut the torn tail off, and never panic.

use std::fs;

use broker::store::MessageStore;
use store::definitions::{self, DefinitionsLog};

use crate::common::*;

const SEG: &str = "0000000000.seg";
const ACKS: &str = "0000000000.acks";

/// Is `len` next to a record boundary (where off-by-ones live)?
fn near_boundary(bounds: &[(usize, usize)], len: usize) -> bool {
    bounds.iter().any(|&(_, e)| e.abs_diff(len) <= 1) || len <= 1
}

#[test]
fn segment_cut_at_every_byte() {
    let q = SmallQueue::build();
    let tmp = scratch_dir();
    let syncer = TestSyncer::start();
    let seg = q.seg().to_vec();
    for len in 0..=seg.len() {
        let ctx = format!("segment cut to {len} of {} bytes", seg.len());
        in_ctx(&ctx, || {
            let dir = materialize(tmp.path(), "q", &q.with(SEG, seg[..len].to_vec()));
            let whole = q.bounds.iter().filter(|&&(_, e)| e <= len).count() as u64;
            let valid_end = if whole == 0 { 0 } else { q.bounds[whole as usize - 1].1 };
            let want = small_expected(|i| i < whole, &SMALL_ACKED, true);
            let mut s = assert_serves(&dir, &syncer, &want, &ctx);
            match fs::metadata(dir.join(SEG)) {
                Ok(m) => assert_eq!(m.len(), valid_end as u64, "{ctx}: the torn tail is cut off at open"),
                Err(_) => assert!(want.is_empty(), "{ctx}: segment 0 was deleted though it holds live messages"),
            }
            if near_boundary(&q.bounds, len) || len % 13 == 0 {
                // The queue goes on: a new message lands after the recovered ones.
                let _ = s.push(queued(SMALL_COUNT + 1, small_message(SMALL_COUNT))).expect("push");
                syncer.sync_all();
                drop(s);
                let mut s = open(&dir, &syncer);
                let got: Vec<u64> = pop_all(&mut s).iter().map(|m| m.seq - 1).collect();
                let mut want_ids: Vec<u64> = want.iter().map(|w| w.0).collect();
                want_ids.push(SMALL_COUNT);
                assert_eq!(got, want_ids, "{ctx}: after appending and reopening");
            }
        });
    }
}

#[test]
fn ack_file_cut_at_every_byte() {
    let q = SmallQueue::build();
    let tmp = scratch_dir();
    let syncer = TestSyncer::start();
    let acks = q.files[ACKS].clone();
    assert_eq!(acks.len(), 8 * SMALL_ACKED.len(), "one 8-byte entry per ack");
    for len in 0..=acks.len() {
        let ctx = format!("ack file cut to {len} of {} bytes", acks.len());
        in_ctx(&ctx, || {
            let dir = materialize(tmp.path(), "q", &q.with(ACKS, acks[..len].to_vec()));
            let acked = &SMALL_ACKED[..len / 8];
            let want = small_expected(|_| true, acked, true);
            let mut s = open(&dir, &syncer);
            // The torn entry is ignored; a new ack goes after the last whole entry.
            let first = s.pop().expect("pop");
            assert_eq!(first.seq, 1, "{ctx}");
            s.ack(&first);
            syncer.sync_all();
            drop(s);
            let after: Vec<(u64, bool)> = want.iter().copied().filter(|w| w.0 != 0).collect();
            assert_serves(&dir, &syncer, &after, &format!("{ctx}, then message 0 acked"));
            let ack_len = fs::metadata(dir.join(ACKS)).map(|m| m.len()).unwrap_or(0);
            assert_eq!(ack_len, 8 * (len as u64 / 8 + 1), "{ctx}: the new entry overwrites the torn one");
            // And without the extra ack, exactly the whole entries count.
            let dir = materialize(tmp.path(), "q", &q.with(ACKS, acks[..len].to_vec()));
            assert_serves(&dir, &syncer, &want, &ctx);
        });
    }
}

#[test]
fn delivered_mark_cut_at_every_byte() {
    let q = SmallQueue::build();
    let tmp = scratch_dir();
    let syncer = TestSyncer::start();
    let mark = q.files["delivered"].clone();
    for len in 0..=mark.len() {
        let ctx = format!("delivered mark cut to {len} of {} bytes", mark.len());
        in_ctx(&ctx, || {
            let dir = materialize(tmp.path(), "q", &q.with("delivered", mark[..len].to_vec()));
            // A torn mark is no mark: nothing is flagged redelivered, nothing is lost.
            let want = small_expected(|_| true, &SMALL_ACKED, len == mark.len());
            assert_serves(&dir, &syncer, &want, &ctx);
        });
    }
}

/// Opaque definitions records of assorted sizes (the empty one included).
fn definition_records() -> Vec<Vec<u8>> {
    [0usize, 1, 7, 8, 9, 33, 100, 255, 256, 300, 2, 50]
        .iter()
        .enumerate()
        .map(|(k, &n)| (0..n).map(|j| (k * 31 + j * 7) as u8).collect())
        .collect()
}

#[test]
fn definitions_log_cut_at_every_byte() {
    let tmp = scratch_dir();
    let path = tmp.path().join("definitions.log");
    let records = definition_records();
    {
        let log = DefinitionsLog::open(&path, |r| {
            assert!(r.is_empty(), "a new log is empty");
            r
        })
        .expect("open a new log");
        for r in &records {
            log.append(r).expect("append");
        }
    }
    let bytes = fs::read(&path).expect("read the log");
    let bounds = record_bounds(&bytes);
    assert_eq!(bounds.len(), records.len());
    assert_eq!(definitions::parse(&path, &bytes), records, "the whole log parses back");
    for len in 0..=bytes.len() {
        let ctx = format!("definitions log cut to {len} of {} bytes", bytes.len());
        in_ctx(&ctx, || {
            let whole = bounds.iter().filter(|&&(_, e)| e <= len).count();
            let valid_end = if whole == 0 { 0 } else { bounds[whole - 1].1 };
            assert_eq!(definitions::parse(&path, &bytes[..len]), records[..whole], "{ctx}: parse");
            if near_boundary(&bounds, len) || len % 29 == 0 {
                fs::write(&path, &bytes[..len]).expect("write the cut log");
                let log = DefinitionsLog::open(&path, |r| {
                    assert_eq!(r, records[..whole], "{ctx}: records handed to compaction");
                    r
                })
                .expect("open the cut log");
                let on_disk = fs::metadata(&path).expect("metadata").len();
                assert_eq!(on_disk, valid_end as u64, "{ctx}: the torn tail is cut off at open");
                log.append(b"after").expect("append after recovery");
                drop(log);
                let mut want = records[..whole].to_vec();
                want.push(b"after".to_vec());
                let b = fs::read(&path).expect("read");
                assert_eq!(definitions::parse(&path, &b), want, "{ctx}: appending after recovery");
            }
        });
    }
}

/// Damage is not a torn tail: one damaged record anywhere costs that record only, every
/// readable record before and after it is kept, and the original file is saved for an
/// operator before the compacted log replaces it.
#[test]
fn definitions_log_damage_costs_only_the_damaged_record() {
    let tmp = scratch_dir();
    let path = tmp.path().join("definitions.log");
    let records = definition_records();
    {
        let log = DefinitionsLog::open(&path, |r| r).expect("open a new log");
        for r in &records {
            log.append(r).expect("append");
        }
    }
    let bytes = fs::read(&path).expect("read the log");
    let bounds = record_bounds(&bytes);
    for (i, &(start, end)) in bounds.iter().enumerate() {
        let mut want = records.clone();
        want.remove(i);
        for at in start..end {
            let ctx = format!("record {i} ({start}..{end}) flipped at byte {at}");
            in_ctx(&ctx, || {
                let mut damaged = bytes.clone();
                damaged[at] ^= 0x40;
                let parsed = definitions::read_records(&path, &damaged);
                assert_eq!(parsed.records, want, "{ctx}: every other record is kept");
                // The last record's length made larger reads as a torn write: the two
                // cannot be told apart, and either way nothing readable is lost.
                let last_len_field = i == bounds.len() - 1 && at < start + 4;
                if !last_len_field {
                    assert!(parsed.damaged_bytes > 0, "{ctx}: reported as damage, not as a torn tail");
                }
            });
        }
    }
    // Through open: the records handed to compaction, the saved original, the flag.
    let (start, _) = bounds[4];
    let mut damaged = bytes.clone();
    damaged[start + 9] ^= 0x01;
    fs::write(&path, &damaged).expect("write the damaged log");
    let mut want = records.clone();
    want.remove(4);
    let log = DefinitionsLog::open(&path, |r| {
        assert_eq!(r, want, "records handed to compaction");
        r
    })
    .expect("open the damaged log");
    assert!(log.was_damaged());
    drop(log);
    let saved: Vec<_> = fs::read_dir(tmp.path())
        .expect("list")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("definitions.log.damaged-"))
        .collect();
    assert_eq!(saved.len(), 1, "the original is saved beside the log");
    assert_eq!(fs::read(saved[0].path()).expect("read the saved copy"), damaged, "byte for byte");
    assert_eq!(definitions::parse(&path, &fs::read(&path).expect("read")), want, "the compacted log");
    // A clean log after that is not damaged.
    assert!(!DefinitionsLog::open(&path, |r| r).expect("reopen").was_damaged());
}
