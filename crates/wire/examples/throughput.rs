//! Rough single-core throughput of the hot paths: `cargo run -p wire --release --example throughput`.
//! Not a test: numbers depend on the machine. Decodes publish+header+body triples the way
//! a broker reader does, and encodes deliver+header+body the way a consumer writer does.

use std::time::Instant;

use bytes::BytesMut;
use wire::frame::{Frame, decode_frame, encode_basic_deliver, encode_content, encode_method};
use wire::properties::summarize;
use wire::{BasicProperties, Method};

fn main() {
    const N: usize = 1_000_000;
    let props = BasicProperties {
        content_type: Some("application/octet-stream".into()),
        delivery_mode: Some(2),
        ..Default::default()
    }
    .to_raw();
    let body = [0u8; 64];
    let mut one = Vec::new();
    encode_method(
        &mut one,
        1,
        &Method::BasicPublish {
            ticket: 0,
            exchange: "amq.direct".into(),
            routing_key: "bench-queue".into(),
            mandatory: false,
            immediate: false,
        },
    );
    encode_content(&mut one, 1, &props, &body, 131_072);

    let batch = 1000;
    let mut stream = Vec::with_capacity(one.len() * batch);
    for _ in 0..batch {
        stream.extend_from_slice(&one);
    }
    let start = Instant::now();
    let mut frames = 0usize;
    for _ in 0..N / batch {
        let mut buf = BytesMut::from(&stream[..]);
        while let Some(frame) = decode_frame(&mut buf, 131_072).expect("valid") {
            if let Frame::Header { properties, .. } = &frame {
                summarize(properties).expect("valid");
            }
            frames += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("decode publish+header(summarized)+body: {:.2} M msgs/s ({frames} frames)", N as f64 / secs / 1e6);

    let mut out = Vec::with_capacity(one.len() * batch * 2);
    let start = Instant::now();
    for i in 0..N {
        if i % batch == 0 {
            out.clear();
        }
        encode_basic_deliver(&mut out, 1, "amq.ctag-abcdefghijklmnop", i as u64, false, "amq.direct", "bench-queue");
        encode_content(&mut out, 1, &props, &body, 131_072);
    }
    let secs = start.elapsed().as_secs_f64();
    println!("encode deliver+header+body: {:.2} M msgs/s ({} bytes last batch)", N as f64 / secs / 1e6, out.len());
}
