//! Topic routing with 10,000 bindings: the bare trie (`TopicIndex`) and a whole
//! `VHost::route` through a topic exchange bound to 1,000 queues.
//!
//! `cargo bench -p broker --bench routing`

use std::hint::black_box;
use std::sync::Arc;

use broker::exchange::ExchangeOptions;
use broker::matching::TopicIndex;
use broker::queue::QueueOptions;
use broker::{ExchangeKind, Queue, VHost};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wire::FieldTable;

const BINDINGS: usize = 10_000;
const QUEUES: usize = 1_000;

/// Binding keys shaped like `region.service.event`, with wildcards in one in five:
/// "r3.s17.e42", "r3.*.e42", "r3.s17.#", "#.e42", "*.s17.*".
fn pattern(i: usize) -> String {
    let (r, s, e) = (i % 10, (i / 10) % 100, i % 97);
    match i % 25 {
        0 => format!("r{r}.*.e{e}"),
        5 => format!("r{r}.s{s}.#"),
        10 => format!("#.e{e}"),
        15 => format!("*.s{s}.*"),
        _ => format!("r{r}.s{s}.e{e}.k{i}"),
    }
}

/// Routing keys: some hit exact bindings, all go through the wildcard branches.
fn keys() -> Vec<String> {
    (0..64).map(|i| format!("r{}.s{}.e{}", i % 10, (i * 7) % 100, (i * 13) % 97)).collect()
}

fn topic_index(c: &mut Criterion) {
    let mut idx: TopicIndex<u32> = TopicIndex::new();
    for i in 0..BINDINGS {
        idx.insert(&pattern(i), (i % QUEUES) as u32);
    }
    let keys = keys();
    let mut out = Vec::new();
    let mut g = c.benchmark_group("topic_10k_bindings");
    g.throughput(Throughput::Elements(keys.len() as u64));
    g.bench_function("TopicIndex::matches", |b| {
        b.iter(|| {
            let mut n = 0;
            for k in &keys {
                out.clear();
                idx.matches(black_box(k), &mut out);
                n += out.len();
            }
            n
        })
    });

    let vh = VHost::new("/");
    let opts = ExchangeOptions {
        kind: ExchangeKind::Topic,
        delayed: false,
        durable: false,
        auto_delete: false,
        internal: false,
        arguments: FieldTable::default(),
    };
    let ex = vh.declare_exchange("bench.topic", false, opts).expect("declare exchange");
    for q in 0..QUEUES {
        let qopts =
            QueueOptions { durable: false, exclusive: false, auto_delete: false, arguments: FieldTable::default() };
        vh.declare_queue(&format!("q{q}"), false, qopts, 1).expect("declare queue");
    }
    for i in 0..BINDINGS {
        vh.bind_queue(&format!("q{}", i % QUEUES), "bench.topic", &pattern(i), FieldTable::default(), 1).expect("bind");
    }
    let mut queues: Vec<Arc<Queue>> = Vec::new();
    g.bench_function("VHost::route", |b| {
        b.iter(|| {
            let mut n = 0;
            for k in &keys {
                queues.clear();
                vh.route(&ex, black_box(k), &mut || None, &mut queues);
                n += queues.len();
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, topic_index);
criterion_main!(benches);
