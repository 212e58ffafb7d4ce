//! The durable publish path of the store: `DiskQueueStore::push` of persistent 1 KiB
//! messages into a durable queue, then one group-commit round (`Syncer::sync_all`, which
//! writes and fsyncs), per batch of 1, 100 and 1000 messages. Draining (pop + ack) happens
//! outside the timed part so the queue stays short.
//!
//! `cargo bench -p store --bench append`

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::store::MessageStore;
use broker::{Message, QueuedMessage};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use store::{DiskQueueStore, StoreConfig, Syncer};

fn message() -> Arc<Message> {
    Arc::new(Message {
        exchange: String::new(),
        routing_key: "store-bench".into(),
        // delivery-mode 2: property flags 0x1000, then the octet.
        properties: Bytes::from_static(&[0x10, 0x00, 0x02]),
        body: Bytes::from(vec![0x5a_u8; 1024]),
        persistent: true,
        priority: 0,
        expiration_ms: None,
    })
}

/// Push `n` copies of `msg` with the next seqs.
fn push_batch(store: &mut DiskQueueStore, msg: &Arc<Message>, seq: &mut u64, n: u64) {
    for _ in 0..n {
        *seq += 1;
        let _ = store
            .push(QueuedMessage {
                msg: msg.clone(),
                seq: *seq,
                redelivered: false,
                expires_at_ms: 0,
                delivery_count: 0,
                disk: None,
            })
            .expect("push");
    }
}

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let syncer = Syncer::start(|_| {});
    let mut store =
        DiskQueueStore::open(&dir.path().join("q"), true, syncer.clone(), &StoreConfig::default()).expect("open");
    let msg = message();
    let mut seq = 0u64;
    let mut g = c.benchmark_group("persistent_1KiB");
    for batch in [1u64, 100, 1000] {
        g.throughput(Throughput::Elements(batch));
        g.bench_function(format!("push_x{batch}+sync_round"), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    push_batch(&mut store, &msg, &mut seq, batch);
                    syncer.sync_all();
                    timed += t.elapsed();
                    while let Some(m) = store.pop() {
                        store.ack(&m);
                    }
                }
                timed
            })
        });
    }
    g.bench_function("push_x1000_no_sync", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                push_batch(&mut store, &msg, &mut seq, 1000);
                timed += t.elapsed();
                syncer.sync_all();
                while let Some(m) = store.pop() {
                    store.ack(&m);
                }
            }
            timed
        })
    });
    g.finish();
    syncer.shutdown();
}

criterion_group!(benches, append);
criterion_main!(benches);
