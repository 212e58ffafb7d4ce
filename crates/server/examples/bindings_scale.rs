//! Scale check of the topology paths (issue 9 item 5, issue 14): durable bindings created
//! through the broker core over the real disk persistence, then recovered as a restart
//! does; the same bindings in RAM (the core's own cost, without the definitions log's
//! fsync per binding); one publish through a headers binding with 26,000 keys; and the
//! exclusive-queue lookup a closing connection makes, among 100,000 queues; and 50,000
//! queues bound with one pattern (bind, route to all, delete).
//!
//! `cargo run --release -p server --example bindings_scale -- [bindings] [queues] [dir]`
//!
//! Defaults: 100,000 bindings over 1,000 durable queues, data in a temporary directory
//! (give `dir` to put it on another disk; it must not exist or be empty).

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::exchange::ExchangeOptions;
use broker::queue::QueueOptions;
use broker::{ExchangeKind, VHost};
use server::persist::DiskPersistence;
use store::StoreConfig;
use wire::{FieldTable, FieldValue};

const HEADER_KEYS: usize = 26_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bindings: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let queues: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = args.get(3).map_or_else(|| tmp.path().join("data"), std::path::PathBuf::from);

    let (t, _) = create(&VHost::new("/"), bindings, queues, 1);
    report(&format!("create {bindings} bindings, in RAM"), t, bindings);

    let (p, rec) = DiskPersistence::open(&dir, StoreConfig::default(), 1024, |_| {}).expect("open data dir");
    let vh = VHost::with_persistence("/", p.clone());
    p.recover_into(rec, |_| Some(vh.clone()));
    let (t, fsync) = create(&vh, bindings, queues, 1);
    report(&format!("create {bindings} durable bindings, one client (an fsync per binding)"), t, bindings);
    println!("  of which one definitions-log fsync, measured alone: {:.3} ms", fsync.as_secs_f64() * 1e3);
    drop(vh);
    p.syncer().shutdown();
    drop(p);

    // The same from 10 clients at once, into a second data directory.
    let dir10 = dir.with_extension("10-clients");
    let (p, rec) = DiskPersistence::open(&dir10, StoreConfig::default(), 1024, |_| {}).expect("open data dir");
    let vh = VHost::with_persistence("/", p.clone());
    p.recover_into(rec, |_| Some(vh.clone()));
    let (t, _) = create(&vh, bindings, queues, CLIENTS);
    report(&format!("create {bindings} durable bindings, {CLIENTS} clients (group commit)"), t, bindings);
    assert_eq!(vh.exchange("scale.topic").expect("exchange").binding_count(), bindings);
    drop(vh);
    p.syncer().shutdown();
    drop(p);
    let _ = std::fs::remove_dir_all(&dir10);

    let started = Instant::now();
    let (p, rec) = DiskPersistence::open(&dir, StoreConfig::default(), 1024, |_| {}).expect("reopen data dir");
    let opened = started.elapsed();
    let vh = VHost::with_persistence("/", p.clone());
    p.recover_into(rec, |_| Some(vh.clone()));
    let t = started.elapsed();
    let recovered = vh.exchange("scale.topic").expect("recovered exchange").binding_count();
    assert_eq!(recovered, bindings, "every binding recovered");
    report(
        &format!("recover {bindings} durable bindings (open + compact: {:.3} s)", opened.as_secs_f64()),
        t,
        bindings,
    );
    p.syncer().shutdown();

    headers_publish();
    teardown_lookup(queues.max(100_000));
    one_pattern_many_queues(FAN_QUEUES);
}

const FAN_QUEUES: usize = 50_000;
/// Concurrent clients of the group-commit run.
const CLIENTS: usize = 10;

/// Many queues bound with the same pattern (one event queue per worker, all `#`): bind
/// them, route one message to all of them, delete them.
fn one_pattern_many_queues(n: usize) {
    let vh = VHost::new("/");
    let ex = ExchangeOptions {
        kind: ExchangeKind::Topic,
        delayed: false,
        durable: false,
        auto_delete: false,
        internal: false,
        arguments: FieldTable::new(),
    };
    let e = vh.declare_exchange("events", false, ex).expect("declare exchange");
    let q = QueueOptions { durable: false, exclusive: false, auto_delete: false, arguments: FieldTable::new() };
    for i in 0..n {
        vh.declare_queue(&format!("w{i}"), false, q.clone(), 1).expect("declare queue");
    }
    let started = Instant::now();
    for i in 0..n {
        vh.bind_queue(&format!("w{i}"), "events", "#", FieldTable::new(), 1).expect("bind");
    }
    let bind = started.elapsed();
    let started = Instant::now();
    let mut out = Vec::new();
    vh.route(&e, "worker.heartbeat", &mut || None, &mut out);
    assert_eq!(out.len(), n);
    let route = started.elapsed();
    let started = Instant::now();
    for i in 0..n {
        vh.delete_queue(&format!("w{i}"), false, false, 1).expect("delete queue");
    }
    let delete = started.elapsed();
    println!(
        "{n} queues bound with '#': bind {:.3} s, route one message to all {:.3} ms, delete the queues {:.3} s",
        bind.as_secs_f64(),
        route.as_secs_f64() * 1e3,
        delete.as_secs_f64()
    );
}

/// What every closing connection does first: find its exclusive queues, in a vhost holding
/// `queues` queues (none of them its own, the usual case).
fn teardown_lookup(queues: usize) {
    let vh = VHost::new("/");
    let q = QueueOptions { durable: false, exclusive: false, auto_delete: false, arguments: FieldTable::new() };
    for i in 0..queues {
        vh.declare_queue(&format!("q{i}"), false, q.clone(), 1).expect("declare queue");
    }
    let closes = 10_000u64;
    let started = Instant::now();
    let mut found = 0;
    for conn in 0..closes {
        found += vh.queues_owned_by(1_000 + conn).len();
    }
    assert_eq!(found, 0);
    let per = started.elapsed() / closes as u32;
    println!("find a closing connection's exclusive queues among {queues} queues: {:.1} µs", per.as_secs_f64() * 1e6);
}

/// Declare a durable topic exchange and `queues` durable queues, then bind; returns the
/// binding time and the time of one extra durable declare (≈ one log fsync).
fn create(vh: &Arc<VHost>, bindings: usize, queues: usize, threads: usize) -> (Duration, Duration) {
    let ex = ExchangeOptions {
        kind: ExchangeKind::Topic,
        delayed: false,
        durable: true,
        auto_delete: false,
        internal: false,
        arguments: FieldTable::new(),
    };
    vh.declare_exchange("scale.topic", false, ex.clone()).expect("declare exchange");
    let q = QueueOptions { durable: true, exclusive: false, auto_delete: false, arguments: FieldTable::new() };
    for i in 0..queues {
        vh.declare_queue(&format!("q{i}"), false, q.clone(), 1).expect("declare queue");
    }
    let started = Instant::now();
    // `threads` clients binding at once, as separate connections would: their durable
    // bindings share the definitions log's commit rounds.
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for i in (t..bindings).step_by(threads) {
                    vh.bind_queue(&format!("q{}", i % queues), "scale.topic", &pattern(i), FieldTable::new(), 1)
                        .expect("bind");
                }
            });
        }
    });
    let t = started.elapsed();
    let one = Instant::now();
    vh.declare_exchange("scale.fsync-probe", false, ex).expect("declare probe");
    (t, one.elapsed())
}

/// Topic binding keys with `*` and `#` in one in five.
fn pattern(i: usize) -> String {
    let (r, s) = (i % 10, (i / 10) % 100);
    match i % 25 {
        0 => format!("r{r}.*.k{i}"),
        5 => format!("r{r}.s{s}.k{i}.#"),
        10 => format!("#.k{i}"),
        15 => format!("*.s{s}.k{i}"),
        _ => format!("r{r}.s{s}.k{i}"),
    }
}

fn report(what: &str, t: Duration, n: usize) {
    println!("{what}: {:.3} s ({:.0}/s)", t.as_secs_f64(), n as f64 / t.as_secs_f64().max(1e-9));
}

/// A headers binding with 26,000 keys (x-match all) and messages carrying the same 26,000
/// headers in reverse order: the CPU cost of routing one message.
fn headers_publish() {
    let vh = VHost::new("/");
    let ex = ExchangeOptions {
        kind: ExchangeKind::Headers,
        delayed: false,
        durable: false,
        auto_delete: false,
        internal: false,
        arguments: FieldTable::new(),
    };
    let e = vh.declare_exchange("scale.headers", false, ex).expect("declare exchange");
    let q = QueueOptions { durable: false, exclusive: false, auto_delete: false, arguments: FieldTable::new() };
    vh.declare_queue("hq", false, q, 1).expect("declare queue");
    let mut args = FieldTable::new();
    args.0.push(("x-match".into(), FieldValue::LongStr("all".into())));
    args.0.extend((0..HEADER_KEYS).map(|i| (format!("h{i}"), FieldValue::I32(i as i32))));
    vh.bind_queue("hq", "scale.headers", "", args, 1).expect("bind");
    let headers = FieldTable((0..HEADER_KEYS).rev().map(|i| (format!("h{i}"), FieldValue::I32(i as i32))).collect());
    let mut out = Vec::new();
    let rounds = 3;
    let started = Instant::now();
    for _ in 0..rounds {
        out.clear();
        vh.route(&e, "", &mut || Some(headers.clone()), &mut out);
        assert_eq!(out.len(), 1, "the message matches");
    }
    let per = started.elapsed() / rounds;
    println!("route one message through a {HEADER_KEYS}-key headers binding: {:.3} ms", per.as_secs_f64() * 1e3);
}
