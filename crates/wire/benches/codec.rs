//! Codec hot path: decoding what a publisher sends (basic.publish + content header + body
//! frames) and encoding what a consumer receives (basic.deliver + header + body).
//!
//! `cargo bench -p wire --bench codec`

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use wire::frame::{encode_basic_deliver, encode_content, encode_method};
use wire::{BasicProperties, Frame, Method, decode_frame};

const FRAME_MAX: u32 = 131_072;
const BATCH: usize = 1000;

fn properties() -> Vec<u8> {
    BasicProperties { delivery_mode: Some(2), ..Default::default() }.to_raw()
}

/// `BATCH` publishes of `size`-byte bodies, as one client write would carry them.
fn publish_stream(size: usize) -> Vec<u8> {
    let props = properties();
    let body = vec![0x5a_u8; size];
    let publish = Method::BasicPublish {
        ticket: 0,
        exchange: String::new(),
        routing_key: "perf-0".into(),
        mandatory: false,
        immediate: false,
    };
    let mut out = Vec::new();
    for _ in 0..BATCH {
        encode_method(&mut out, 1, &publish);
        encode_content(&mut out, 1, &props, &body, FRAME_MAX);
    }
    out
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_publish");
    for size in [16usize, 1024, 65536] {
        let stream = publish_stream(size);
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(format!("{size}B_x{BATCH}"), |b| {
            b.iter_batched(
                || BytesMut::from(&stream[..]),
                |mut buf| {
                    let mut n = 0usize;
                    while let Some(f) = decode_frame(&mut buf, FRAME_MAX).expect("valid frames") {
                        if let Frame::Body { payload, .. } = &f {
                            n += payload.len();
                        }
                        black_box(&f);
                    }
                    // Returned, so freeing the input happens outside the timed part.
                    (n, buf)
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let props = properties();
    let mut g = c.benchmark_group("encode_deliver");
    for size in [16usize, 1024, 65536] {
        let body = vec![0x5a_u8; size];
        let mut out = Vec::with_capacity(BATCH * (size + 128));
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(format!("{size}B_x{BATCH}"), |b| {
            b.iter(|| {
                out.clear();
                for tag in 1..=BATCH as u64 {
                    encode_basic_deliver(&mut out, 1, "amq.ctag-perf", tag, false, "", "perf-0");
                    encode_content(&mut out, 1, &props, &body, FRAME_MAX);
                }
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
