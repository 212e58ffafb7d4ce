//! How fast one replica applies entries (release build):
//! `cargo run --release -p quorum --example apply_rate`.
//! A publisher in confirm mode, one consumer with prefetch 100 acking 10 deliveries per
//! entry; then the size and cost of a serde_json snapshot of 100,000 live messages.

use std::time::Instant;

use bytes::Bytes;
use quorum::*;

fn main() {
    let n: u64 = 1_000_000;
    let c = ConsumerId { node: NodeId(1), id: 1 };
    let p = PublisherId { node: NodeId(1), id: 1 };
    let body = Bytes::from(vec![7u8; 100]);
    for round in 0..3 {
        let mut q = QuorumQueue::new(Config::default());
        let mut idx = 0;
        let mut meta = || {
            idx += 1;
            Meta { index: idx, now_ms: 1 }
        };
        q.apply(meta(), Command::Checkout { consumer: c, prefetch: 100, priority: 0 });
        let t = Instant::now();
        let mut held = Vec::new();
        let mut fx_count = 0;
        for seq in 0..n {
            let msg = Message { payload: body.clone(), body_bytes: 100 };
            let fx =
                q.apply(meta(), Command::Enqueue { publish: Some(PublishId { publisher: p, seq }), msg, ttl_ms: None });
            for e in &fx {
                if let Effect::Deliver { delivery, .. } = e {
                    held.push(delivery.delivery_id);
                }
            }
            fx_count += fx.len();
            if held.len() >= 10 {
                fx_count +=
                    q.apply(meta(), Command::Settle { consumer: c, delivery_ids: std::mem::take(&mut held) }).len();
            }
        }
        let dt = t.elapsed();
        println!(
            "round {round}: {n} enqueue+deliver+settle(10 per entry) in {:.3}s = {:.0} msg/s, {} entries, {} effects",
            dt.as_secs_f64(),
            n as f64 / dt.as_secs_f64(),
            idx,
            fx_count
        );
    }
    // Snapshot of 100k live messages (100 B bodies) through serde_json.
    let mut q = QuorumQueue::new(Config::default());
    for i in 1..=100_000u64 {
        q.apply(
            Meta { index: i, now_ms: 1 },
            Command::Enqueue { publish: None, msg: Message { payload: body.clone(), body_bytes: 100 }, ttl_ms: None },
        );
    }
    let t = Instant::now();
    let bytes = serde_json::to_vec(&q).unwrap();
    let ser = t.elapsed();
    let t = Instant::now();
    let back: QuorumQueue = serde_json::from_slice(&bytes).unwrap();
    let de = t.elapsed();
    assert!(back == q);
    println!(
        "snapshot of 100k x 100 B messages: {} bytes JSON, serialize {:.3}s, deserialize {:.3}s",
        bytes.len(),
        ser.as_secs_f64(),
        de.as_secs_f64()
    );
}
