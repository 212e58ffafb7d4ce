//! Random garbage and randomly mutated real traffic, replayable from the seed each case
//! prints on failure. Whatever the input, the server must answer only with well-formed
//! frames, close with a hard reply code (never INTERNAL_ERROR), close the socket once the
//! client is gone, and keep serving everyone else.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use wire::{BasicProperties, FieldTable, FieldValue, Frame, Method, reply};

use super::raw::*;

/// Cases in flight at once.
const PARALLEL: usize = 16;

/// Check everything the server sent in one case.
fn check_replies(ctx: &str, received: &[u8]) {
    let mut buf = BytesMut::from(received);
    let mut closed: Option<u16> = None;
    loop {
        let f = match wire::decode_frame(&mut buf, 0) {
            Ok(Some(f)) => f,
            // A trailing partial frame can only come from a reset cutting the stream.
            Ok(None) => break,
            Err(e) => panic!("{ctx}: the server sent an undecodable frame: {e}"),
        };
        if let Some(code) = closed {
            // close-ok answers a connection.close the client sent meanwhile.
            assert!(
                matches!(f, Frame::Heartbeat { .. } | Frame::Method { channel: 0, method: Method::ConnectionCloseOk }),
                "{ctx}: frame after connection.close {code}: {f:?}"
            );
        }
        match f {
            Frame::Method { channel: 0, method: Method::ConnectionClose { reply_code, ref reply_text, .. } } => {
                assert!(
                    connection_level(reply_code) && reply_code != reply::INTERNAL_ERROR,
                    "{ctx}: connection.close {reply_code} {reply_text}"
                );
                closed = Some(reply_code);
            }
            Frame::Method { channel, method: Method::ChannelClose { reply_code, ref reply_text, .. } } => {
                assert!(
                    !reply::is_hard(reply_code),
                    "{ctx}: channel.close on {channel} with hard code {reply_code} {reply_text}"
                );
            }
            _ => {}
        }
    }
}

/// One case: `prefix` (protocol header, or nothing if the connection is opened first)
/// then `bytes`, then EOF from the client; the server must close the socket.
async fn run_case(addr: SocketAddr, ctx: String, after_handshake: bool, bytes: Vec<u8>) {
    let mut c = if after_handshake {
        Raw::open_channel1(addr).await
    } else {
        let mut c = Raw::connect(addr).await;
        c.send(&wire::PROTOCOL_HEADER).await;
        c
    };
    c.try_send(&bytes).await;
    c.shutdown_write().await;
    let received = c.read_to_eof().await;
    check_replies(&ctx, &received);
}

async fn run_all(server: &crate::common::TestServer, cases: Vec<(String, bool, Vec<u8>)>) {
    let limit = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut tasks = tokio::task::JoinSet::new();
    for (ctx, after_handshake, bytes) in cases {
        let permit = limit.clone().acquire_owned().await.expect("semaphore");
        let addr = server.addr;
        tasks.spawn(async move {
            run_case(addr, ctx, after_handshake, bytes).await;
            drop(permit);
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

fn mutate(rng: &mut Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + rng.below(4) {
        if bytes.is_empty() {
            break;
        }
        let i = rng.below(bytes.len());
        match rng.below(7) {
            0 => bytes[i] = rng.next_u64() as u8,
            1 => bytes[i] = [0, 1, 2, 3, 8, 0x7f, 0x80, 0xff, wire::FRAME_END][rng.below(9)],
            2 => bytes[i] ^= 1 << rng.below(8),
            3 => bytes.truncate(i),
            4 => {
                let end = (i + 1 + rng.below(16)).min(bytes.len());
                bytes.drain(i..end);
            }
            5 => {
                let end = (i + 1 + rng.below(32)).min(bytes.len());
                let dup = bytes[i..end].to_vec();
                bytes.splice(i..i, dup);
            }
            _ => {
                let n = 1 + rng.below(8);
                let ins = rng.bytes(n);
                bytes.splice(i..i, ins);
            }
        }
    }
    bytes
}

/// (type, channel, payload) of each frame of a well-formed stream.
fn split_frames(bytes: &[u8]) -> Vec<(u8, u16, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 8 {
        let size = u32::from_be_bytes([rest[3], rest[4], rest[5], rest[6]]) as usize;
        frames.push((rest[0], u16::from_be_bytes([rest[1], rest[2]]), rest[7..7 + size].to_vec()));
        rest = &rest[8 + size..];
    }
    frames
}

/// Mutations that keep the framing valid, to get past the frame decoder: payload bytes,
/// channel numbers, and frames dropped, duplicated or reordered (state machine input).
fn mutate_frames(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    let mut frames = split_frames(bytes);
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(frames.len());
        match rng.below(8) {
            0..=2 => {
                let payload = std::mem::take(&mut frames[i].2);
                frames[i].2 = mutate(rng, payload);
            }
            3 => frames[i].1 = [0, 1, 2, 3, 2047, 2048, u16::MAX][rng.below(7)],
            4 => {
                frames.remove(i);
            }
            5 => {
                let f = frames[i].clone();
                let j = rng.below(frames.len());
                frames.insert(j, f);
            }
            6 => {
                let j = rng.below(frames.len());
                frames.swap(i, j);
            }
            _ => frames[i].0 = [wire::FRAME_METHOD, wire::FRAME_HEADER, wire::FRAME_BODY][rng.below(3)],
        }
        if frames.is_empty() {
            break;
        }
    }
    frames.iter().flat_map(|(kind, channel, payload)| raw_frame(*kind, *channel, payload)).collect()
}

fn s(v: &str) -> FieldValue {
    FieldValue::LongStr(bytes::Bytes::copy_from_slice(v.as_bytes()))
}

/// Realistic traffic on an open connection with channel 1 open: topology with argument
/// tables, publishes with properties and multi-frame bodies, consume, acks, confirms,
/// transactions, deletes.
fn traffic(name: &str) -> Vec<u8> {
    let q = format!("{name}-q");
    let x = format!("{name}-x");
    let mut args = FieldTable::new();
    args.insert("x-message-ttl", FieldValue::I32(60_000));
    args.insert(
        "x-meta",
        FieldValue::Table(FieldTable(vec![(
            "a".into(),
            FieldValue::Array(vec![
                s("x"),
                FieldValue::I64(-1),
                FieldValue::Decimal(2, 314),
                FieldValue::Timestamp(1_700_000_000),
                FieldValue::F64(0.5),
                FieldValue::Void,
                FieldValue::ByteArray(bytes::Bytes::from_static(b"\x00\x01")),
            ]),
        )])),
    );
    args.insert("flag", FieldValue::Bool(true));
    let mut headers = FieldTable::new();
    headers.insert("h1", s("v1"));
    headers.insert("n", FieldValue::U8(7));
    let props = BasicProperties {
        content_type: Some("application/octet-stream".into()),
        headers: Some(headers.clone()),
        delivery_mode: Some(2),
        priority: Some(3),
        message_id: Some("m-1".into()),
        timestamp: Some(1),
        expiration: Some("60000".into()),
        ..Default::default()
    }
    .to_raw();
    let body: Vec<u8> = (0..300u32).map(|i| i as u8).collect();

    let mut out = Vec::new();
    let mut m = |ch: u16, method: Method| out.extend(method_frame(ch, &method));
    m(
        1,
        Method::QueueDeclare {
            ticket: 0,
            queue: q.clone(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: args,
        },
    );
    m(
        1,
        Method::ExchangeDeclare {
            ticket: 0,
            exchange: x.clone(),
            kind: "headers".into(),
            passive: false,
            durable: false,
            auto_delete: false,
            internal: false,
            nowait: false,
            arguments: FieldTable::new(),
        },
    );
    let mut bind_args = headers.clone();
    bind_args.insert("x-match", s("any"));
    m(
        1,
        Method::QueueBind {
            ticket: 0,
            queue: q.clone(),
            exchange: x.clone(),
            routing_key: String::new(),
            nowait: false,
            arguments: bind_args,
        },
    );
    m(1, Method::ConfirmSelect { nowait: false });
    m(1, Method::BasicQos { prefetch_size: 0, prefetch_count: 10, global: false });
    m(
        1,
        Method::BasicConsume {
            ticket: 0,
            queue: q.clone(),
            consumer_tag: "c1".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::new(),
        },
    );
    publish(&mut out, 1, &x, "", &props, &body);
    publish(&mut out, 1, "", &q, &NO_PROPS, b"");
    publish(&mut out, 1, "", "no-such-queue", &NO_PROPS, b"returned");
    let mut m = |ch: u16, method: Method| out.extend(method_frame(ch, &method));
    m(1, Method::BasicGet { ticket: 0, queue: q.clone(), no_ack: false });
    m(1, Method::BasicAck { delivery_tag: 1, multiple: false });
    m(1, Method::BasicNack { delivery_tag: 2, multiple: true, requeue: true });
    m(1, Method::BasicReject { delivery_tag: 3, requeue: false });
    m(1, Method::ChannelFlow { active: true });
    m(1, Method::BasicRecover { requeue: true });
    m(1, Method::BasicCancel { consumer_tag: "c1".into(), nowait: false });
    m(2, Method::ChannelOpen { out_of_band: String::new() });
    m(2, Method::TxSelect);
    publish(&mut out, 2, "", &q, &NO_PROPS, b"in a transaction");
    let mut m = |ch: u16, method: Method| out.extend(method_frame(ch, &method));
    m(2, Method::TxCommit);
    m(2, Method::TxRollback);
    m(1, Method::QueuePurge { ticket: 0, queue: q.clone(), nowait: false });
    m(
        1,
        Method::QueueUnbind {
            ticket: 0,
            queue: q.clone(),
            exchange: x.clone(),
            routing_key: String::new(),
            arguments: FieldTable::new(),
        },
    );
    m(1, Method::ExchangeDelete { ticket: 0, exchange: x, if_unused: false, nowait: false });
    m(1, Method::QueueDelete { ticket: 0, queue: q, if_unused: false, if_empty: false, nowait: false });
    m(2, Method::ChannelClose { reply_code: 200, reply_text: "done".into(), class_id: 0, method_id: 0 });
    m(0, Method::ConnectionClose { reply_code: 200, reply_text: "done".into(), class_id: 0, method_id: 0 });
    out
}

/// basic.publish (mandatory) with content split into body frames of at most 128 bytes.
fn publish(out: &mut Vec<u8>, ch: u16, exchange: &str, rk: &str, props: &[u8], body: &[u8]) {
    let p = Method::BasicPublish {
        ticket: 0,
        exchange: exchange.into(),
        routing_key: rk.into(),
        mandatory: true,
        immediate: false,
    };
    out.extend(method_frame(ch, &p));
    wire::frame::encode_content(out, ch, props, body, 128);
}

/// The handshake after the protocol header, then a little traffic.
fn handshake(name: &str) -> Vec<u8> {
    let mut out = start_ok_frame("PLAIN", plain("guest", "guest"), true);
    out.extend(method_frame(0, &Method::ConnectionTuneOk { channel_max: 2047, frame_max: 131_072, heartbeat: 0 }));
    out.extend(method_frame(0, &connection_open()));
    out.extend(method_frame(1, &Method::ChannelOpen { out_of_band: String::new() }));
    out.extend(method_frame(1, &queue_declare(&format!("{name}-hq"), false, true)));
    out.extend(publish_frames(1, &format!("{name}-hq"), &NO_PROPS, b"hello", 131_072));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmutated_traffic_is_accepted() {
    // The fuzz corpus itself must be valid, or the mutations below prove little.
    let server = server().await;
    let mut c = Raw::open_channel1(server.addr).await;
    c.send(&traffic("clean")).await;
    let mut seen = Vec::new();
    loop {
        match c.frame().await {
            Frame::Method { channel: 0, method: Method::ConnectionCloseOk } => break,
            Frame::Method { channel: 0, method: m @ Method::ConnectionClose { .. } } => panic!("{m:?} after {seen:?}"),
            Frame::Method { method: m @ Method::ChannelClose { .. }, .. } => panic!("{m:?} after {seen:?}"),
            Frame::Method { method, .. } => seen.push(method.name()),
            _ => {}
        }
    }
    c.expect_eof().await;
    for expected in
        ["queue.declare-ok", "queue.bind-ok", "basic.consume-ok", "basic.return", "tx.commit-ok", "queue.delete-ok"]
    {
        assert!(seen.contains(&expected), "no {expected} in {seen:?}");
    }
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_garbage_never_crashes_the_server() {
    let server = server().await;
    let bystander = Bystander::join(&server).await;
    let mut cases = Vec::new();
    for (i, len) in [1usize, 2, 7, 8, 9, 15, 64, 500, 4096, 70_000].into_iter().enumerate() {
        for variant in 0..4u64 {
            let seed = (i as u64) << 8 | variant;
            let mut rng = Rng::new(seed);
            let mut bytes = rng.bytes(len);
            if variant >= 2 && len >= 8 {
                // Looks like a frame header: valid type, small size, random payload.
                bytes[0] =
                    [wire::FRAME_METHOD, wire::FRAME_HEADER, wire::FRAME_BODY, wire::FRAME_HEARTBEAT][rng.below(4)];
                bytes[1] = 0;
                bytes[2] = (variant & 1) as u8;
                let size = rng.below(len - 7) as u32;
                bytes[3..7].copy_from_slice(&size.to_be_bytes());
            }
            let after_handshake = variant % 2 == 0;
            cases.push((
                format!("garbage seed {seed}, len {len}, after handshake {after_handshake}"),
                after_handshake,
                bytes,
            ));
        }
    }
    run_all(&server, cases).await;
    bystander.check().await;
    // Every case's connection is gone, and so are the exclusive queues they declared.
    assert_eq!(exclusive_queues(&server), Vec::<String>::new());
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_traffic_never_crashes_the_server() {
    let server = server().await;
    let bystander = Bystander::join(&server).await;
    let mut cases = Vec::new();
    for seed in 0..300u64 {
        let mut rng = Rng::new(seed);
        let name = format!("fz{seed}");
        let bytes = mutate(&mut rng, traffic(&name));
        cases.push((format!("traffic mutation seed {seed}"), true, bytes));
    }
    for seed in 2000..2300u64 {
        let mut rng = Rng::new(seed);
        let name = format!("fz{seed}");
        let bytes = mutate_frames(&mut rng, &traffic(&name));
        cases.push((format!("frame-level traffic mutation seed {seed}"), true, bytes));
    }
    for seed in 1000..1150u64 {
        let mut rng = Rng::new(seed);
        let name = format!("fz{seed}");
        let bytes = mutate(&mut rng, handshake(&name));
        cases.push((format!("handshake mutation seed {seed}"), false, bytes));
    }
    run_all(&server, cases).await;
    bystander.check().await;
    // Every case's connection is gone, and so are the exclusive queues they declared.
    assert_eq!(exclusive_queues(&server), Vec::<String>::new());
    assert_healthy(&server).await;
}
