//! queue.purge of a backlog paged to disk: how long the queue's lock is held.
//!
//! `cargo run --release -p store --example purge_scale -- [messages] [body bytes] [dir]`
//!
//! Defaults: 100,000 persistent messages of 1 KiB in a durable queue with the default RAM
//! budget (8 MiB), so almost all of the backlog is on disk; data in a temporary directory.

use std::sync::Arc;
use std::time::Instant;

use broker::store::MessageStore;
use broker::{Message, QueuedMessage};
use bytes::Bytes;
use store::{DiskQueueStore, StoreConfig, Syncer};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let size: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1024);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = args.get(3).map_or_else(|| tmp.path().join("q"), std::path::PathBuf::from);
    let syncer = Syncer::start(|_| {});
    let mut s = DiskQueueStore::open(&dir, true, syncer.clone(), &StoreConfig::default()).expect("open");
    let body = Bytes::from(vec![7u8; size]);
    for seq in 0..n {
        let msg = Message {
            exchange: String::new(),
            routing_key: "q".into(),
            properties: Bytes::from_static(&[0, 0]),
            body: body.clone(),
            persistent: true,
            priority: 0,
            expiration_ms: None,
        };
        let m = QueuedMessage {
            msg: Arc::new(msg),
            seq,
            redelivered: false,
            expires_at_ms: 0,
            delivery_count: 0,
            disk: None,
        };
        let _ = s.push(m);
    }
    syncer.sync_all();
    // Cold page cache, as for a backlog written long ago (best effort: needs root).
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
    let started = Instant::now();
    let purged = s.purge();
    let t = started.elapsed();
    assert_eq!(purged as u64, n);
    syncer.sync_all();
    println!("purge {n} paged messages of {size} B: {:.3} s under the queue lock", t.as_secs_f64());
    drop(s);
    let started = Instant::now();
    let mut s = DiskQueueStore::open(&dir, true, syncer.clone(), &StoreConfig::default()).expect("reopen");
    assert_eq!(s.len(), 0, "nothing comes back after the purge");
    assert!(s.pop().is_none());
    println!("reopen after the purge: {:.3} s, 0 messages", started.elapsed().as_secs_f64());
    syncer.shutdown();
}
