//! The byte level: protocol header, frame boundaries, sizes, end octets, frame types,
//! undecodable method payloads and field tables.

use std::time::{Duration, Instant};

use wire::{FieldTable, FieldValue, Method, reply};

use super::raw::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_protocol_header_gets_ours_and_a_close() {
    let server = server().await;
    let headers: [&[u8]; 7] = [
        b"AMQP\x00\x00\x09\x00",
        b"AMQP\x00\x00\x08\x00",
        b"AMQP\x01\x01\x00\x0a",
        b"amqp\x00\x00\x09\x01",
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", // a TLS ClientHello
        &[0xff; 64],
    ];
    for h in headers {
        let mut c = Raw::connect(server.addr).await;
        c.send(h).await;
        let reply = c.read_to_eof().await;
        assert_eq!(reply, wire::PROTOCOL_HEADER, "reply to header {h:?}");
    }
    // Fewer than 8 bytes, then the client goes away: nothing to answer, just clean up.
    let mut c = Raw::connect(server.addr).await;
    c.send(b"AMQ").await;
    c.shutdown_write().await;
    assert_eq!(c.read_to_eof().await, b"", "a partial header then EOF gets no reply");
    // The header in two pieces is still a header.
    let mut c = Raw::connect(server.addr).await;
    c.send(b"AMQP\x00").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.send(b"\x00\x09\x01").await;
    c.expect(0, (10, 10)).await;
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_handshake_is_a_frame_error() {
    let server = server().await;
    let bystander = Bystander::join(&server).await;
    let mut c = Raw::open_channel1(server.addr).await;
    c.send(b"\xde\xad\xbe\xef this is not AMQP at all \x00\x01\x02\x03").await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, reply::FRAME_ERROR, "{close:?}");

    // Garbage in place of start-ok.
    let mut c = Raw::start(server.addr).await;
    c.send(&[0x41; 32]).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, reply::FRAME_ERROR, "{close:?}");
    bystander.check().await;
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frame_is_refused_from_its_header() {
    let server = server().await;
    let bystander = Bystander::join(&server).await;
    for kind in [wire::FRAME_METHOD, wire::FRAME_HEADER, wire::FRAME_BODY] {
        let mut c = Raw::open_channel1(server.addr).await;
        // Only the 7-byte header claiming 100 MB: the close must come without the payload.
        let mut header = vec![kind, 0, 1];
        header.extend_from_slice(&100_000_000u32.to_be_bytes());
        c.send(&header).await;
        let close = c.expect_connection_close().await;
        assert_eq!(close.code, reply::FRAME_ERROR, "frame type {kind}: {close:?}");
    }
    // Also in place of start-ok, before anything was negotiated.
    let mut c = Raw::start(server.addr).await;
    c.send(&[wire::FRAME_METHOD, 0, 0, 0x05, 0xf5, 0xe1, 0x00]).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, reply::FRAME_ERROR, "{close:?}");
    bystander.check().await;
    assert_healthy(&server).await;
}

/// RabbitMQ's reader starts with frame_max = 4096 (?FRAME_MIN_SIZE) until tune-ok, and
/// wire::decode_frame's docs tell callers to do the same: a peer must not be able to make
/// the broker wait for (and buffer) a frame larger than that before it has even logged in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_before_tune_ok_are_limited_to_frame_min_size() {
    let server = server().await;
    let mut c = Raw::start(server.addr).await;
    // A start-ok claiming a 64 KiB payload: under the configured 128 KiB, over 4096.
    c.send(&[wire::FRAME_METHOD, 0, 0, 0x00, 0x01, 0x00, 0x00]).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, reply::FRAME_ERROR, "{close:?}");
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiated_frame_max_is_enforced_with_rabbitmqs_tolerance() {
    let server = server().await;
    let mut c = Raw::open_with(server.addr, 0, Some(4096)).await;
    c.open_channel(1).await;
    let q = unique("fmax");
    c.declare_queue(1, &q, true).await;
    // RabbitMQ accepts a payload of exactly frame_max bytes (it tolerates 8 extra octets).
    let body = vec![7u8; 4096];
    let mut frames = method_frame(1, &publish_method(&q));
    frames.extend(header_frame(1, body.len() as u64, &NO_PROPS));
    frames.extend(body_frame(1, &body));
    c.send(&frames).await;
    assert_eq!(c.get(1, &q).await, Some(body));
    // One byte more is a frame error.
    let mut frames = method_frame(1, &publish_method(&q));
    frames.extend(header_frame(1, 4097, &NO_PROPS));
    frames.extend(body_frame(1, &[1u8; 4097]));
    c.send(&frames).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, reply::FRAME_ERROR, "{close:?}");
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frame_end_octet_is_a_frame_error() {
    let server = server().await;
    let cases: Vec<Vec<u8>> = vec![
        {
            let mut f = method_frame(2, &Method::ChannelOpen { out_of_band: String::new() });
            *f.last_mut().unwrap() = 0x00;
            f
        },
        vec![wire::FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, 0xcd],
        {
            let mut f = publish_frames(1, "x", &NO_PROPS, b"abc", 131_072);
            *f.last_mut().unwrap() = b'c';
            f
        },
    ];
    for bytes in cases {
        let mut c = Raw::open_channel1(server.addr).await;
        c.send(&bytes).await;
        let close = c.expect_connection_close().await;
        assert_eq!(close.code, reply::FRAME_ERROR, "{bytes:?}: {close:?}");
    }
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_frame_type_is_a_frame_error() {
    let server = server().await;
    for kind in [0u8, 4, 9, 0x41, 0xff] {
        let mut c = Raw::open_channel1(server.addr).await;
        c.send(&raw_frame(kind, 1, b"hello")).await;
        let close = c.expect_connection_close().await;
        assert_eq!(close.code, reply::FRAME_ERROR, "frame type {kind}: {close:?}");
    }
    // A heartbeat frame with a payload.
    let mut c = Raw::open_channel1(server.addr).await;
    c.send(&raw_frame(wire::FRAME_HEARTBEAT, 0, b"x")).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, reply::FRAME_ERROR, "{close:?}");
    assert_healthy(&server).await;
}

/// The wire crate closes unknown (class, method) pairs with NOT_IMPLEMENTED
/// (wire::method::UNKNOWN_METHOD_REPLY_CODE) and reports the ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_class_or_method_is_not_implemented() {
    let server = server().await;
    assert_eq!(wire::method::UNKNOWN_METHOD_REPLY_CODE, reply::NOT_IMPLEMENTED);
    // basic.credit (RabbitMQ's legacy 60/200), a class that does not exist, an unknown
    // connection method on channel 0, and the gap method id exchange 40/41.
    for (channel, class_id, method_id) in [(1u16, 60u16, 200u16), (1, 99, 10), (0, 10, 99), (1, 40, 41), (1, 0, 0)] {
        let mut c = Raw::open_channel1(server.addr).await;
        c.send(&raw_method(channel, class_id, method_id, &[0; 8])).await;
        let close = c.expect_connection_close().await;
        assert_eq!(close.code, reply::NOT_IMPLEMENTED, "{class_id}/{method_id}: {close:?}");
        assert_eq!((close.class_id, close.method_id), (class_id, method_id), "{close:?}");
    }
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_method_arguments_are_frame_errors() {
    let server = server().await;
    let bystander = Bystander::join(&server).await;
    let declare = method_frame(1, &queue_declare("args", false, false));
    let declare_args = &declare[11..declare.len() - 1]; // after type, channel, size, ids
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("payload shorter than the ids", raw_frame(wire::FRAME_METHOD, 1, &[0, 50, 0])),
        ("empty payload", raw_frame(wire::FRAME_METHOD, 1, &[])),
        ("truncated arguments", raw_method(1, 50, 10, &declare_args[..declare_args.len() - 3])),
        ("trailing bytes", raw_method(1, 50, 10, &[declare_args, &[0, 0]].concat())),
        // ticket, shortstr of 2 bytes that are not UTF-8, bits, empty table.
        ("non-UTF-8 short string", raw_method(1, 50, 10, &[0, 0, 2, 0xc3, 0x28, 0, 0, 0, 0, 0])),
        // A shortstr length running past the payload.
        ("shortstr past the end", raw_method(1, 50, 10, &[0, 0, 200, b'a', b'b'])),
        // The arguments table's length runs past the payload (a truncated method).
        ("table length past the end", raw_method(1, 50, 10, &[0, 0, 1, b'q', 0, 0, 0, 1, 0, b'k'])),
    ];
    for (what, bytes) in cases {
        let mut c = Raw::open_channel1(server.addr).await;
        c.send(&bytes).await;
        let close = c.expect_connection_close().await;
        assert_eq!(close.code, wire::method::BAD_ARGUMENTS_REPLY_CODE, "{what}: {close:?}");
        assert_eq!(close.code, reply::FRAME_ERROR, "{what}: {close:?}");
    }
    bystander.check().await;
    assert_healthy(&server).await;
}

/// queue.declare arguments: ticket(2) name("q") bits(1) + the given raw table bytes.
fn declare_with_table(table: &[u8]) -> Vec<u8> {
    let mut args = vec![0, 0, 1, b'q', 0];
    args.extend_from_slice(table);
    raw_method(1, 50, 10, &args)
}

/// A table from raw entry bytes (adds the length prefix).
fn table(entries: &[u8]) -> Vec<u8> {
    let mut t = (entries.len() as u32).to_be_bytes().to_vec();
    t.extend_from_slice(entries);
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_field_tables_are_syntax_errors() {
    let server = server().await;
    let bystander = Bystander::join(&server).await;
    // Nested tables 100 deep: past wire::types::MAX_NESTING_DEPTH.
    let mut deep = table(&[]);
    for _ in 0..100 {
        let mut entry = vec![1, b'n', b'F'];
        entry.extend_from_slice(&deep);
        deep = table(&entry);
    }
    // Arrays 10 000 deep: would blow the stack of a naive recursive decoder.
    let mut deep_array = Vec::new();
    for _ in 0..10_000 {
        let mut inner = vec![b'A'];
        inner.extend_from_slice(&(deep_array.len() as u32).to_be_bytes());
        inner.extend_from_slice(&deep_array);
        deep_array = inner;
    }
    let mut deep_array_entry = vec![1, b'a'];
    deep_array_entry.extend_from_slice(&deep_array);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown value type", table(&[1, b'k', b'Z', 0, 0])),
        ("value type 0x00", table(&[1, b'k', 0])),
        ("truncated integer", table(&[1, b'k', b'I', 0, 0])),
        ("key longer than the table", table(&[9, b'k'])),
        ("long string longer than the table", table(&[1, b'k', b'S', 0, 0, 0, 50, b'x'])),
        ("non-UTF-8 key", table(&[1, 0xff, b'V'])),
        ("nested table overrunning its parent", table(&[1, b'k', b'F', 0, 0, 0, 9, 1, b'j', b'V'])),
        ("nesting too deep", deep),
        ("arrays nested 10000 deep", table(&deep_array_entry)),
    ];
    for (what, t) in cases {
        let mut c = Raw::open_channel1(server.addr).await;
        c.send(&declare_with_table(&t)).await;
        let close = c.expect_connection_close().await;
        assert_eq!(close.code, reply::SYNTAX_ERROR, "{what}: {close:?}");
        assert_eq!((close.class_id, close.method_id), (50, 10), "{what}: {close:?}");
    }
    // The same table as message headers: refused (hard), never routed.
    let q = unique("bad-headers");
    let mut c = Raw::open_channel1(server.addr).await;
    c.declare_queue(1, &q, false).await;
    let mut props = vec![0x20, 0x00]; // flags: headers present
    props.extend_from_slice(&table(&[1, b'k', b'Z', 0, 0]));
    c.send(&publish_frames(1, &q, &props, b"body", 131_072)).await;
    let close = c.expect_connection_close().await;
    assert!(matches!(close.code, reply::FRAME_ERROR | reply::SYNTAX_ERROR), "{close:?}");
    let mut c = Raw::open_channel1(server.addr).await;
    assert_eq!(c.declare_queue(1, &q, false).await, 0, "a message with malformed headers was enqueued");
    c.close().await;

    // A well-formed table with every type still works after all that.
    let mut args = FieldTable::new();
    args.insert(
        "x-nested",
        FieldValue::Table(FieldTable(vec![("a".into(), FieldValue::Array(vec![FieldValue::Void]))])),
    );
    let mut c = Raw::open_channel1(server.addr).await;
    let m = Method::QueueDeclare {
        ticket: 0,
        queue: unique("good-table"),
        passive: false,
        durable: false,
        exclusive: true,
        auto_delete: false,
        nowait: false,
        arguments: args,
    };
    c.send_method(1, &m).await;
    c.expect(1, (50, 11)).await;
    c.close().await;
    bystander.check().await;
    assert_healthy(&server).await;
}

/// Open channel 1, passive-declare `queue` on it, and return the channel.close code
/// (channel 1 is closed again afterwards).
async fn passive_declare_code(c: &mut Raw, queue: &str) -> u16 {
    c.open_channel(1).await;
    c.send_method(1, &queue_declare(queue, true, false)).await;
    c.expect_channel_close(1).await.code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frame_then_close_cleans_up() {
    let server = server().await;
    let q = unique("trunc-excl");
    let mut a = Raw::open_channel1(server.addr).await;
    a.declare_queue(1, &q, true).await;
    // Another connection sees the exclusive queue as locked while `a` lives.
    let mut b = Raw::open(server.addr).await;
    assert_eq!(passive_declare_code(&mut b, &q).await, reply::RESOURCE_LOCKED);

    // Half a queue.declare, then the socket goes away.
    let frame = method_frame(1, &queue_declare("never", false, false));
    a.send(&frame[..frame.len() / 2]).await;
    drop(a);

    // The server notices and deletes the exclusive queue.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let code = passive_declare_code(&mut b, &q).await;
        if code == reply::NOT_FOUND {
            break;
        }
        assert_eq!(code, reply::RESOURCE_LOCKED);
        assert!(Instant::now() < deadline, "the server kept the dead connection's exclusive queue");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Truncated in the middle of content: the partial message is dropped.
    let q2 = unique("trunc-content");
    b.open_channel(1).await;
    b.declare_queue(1, &q2, false).await;
    let mut a = Raw::open_channel1(server.addr).await;
    let body = vec![9u8; 1000];
    let frames = publish_frames(1, &q2, &NO_PROPS, &body, 131_072);
    a.send(&frames[..frames.len() - 300]).await;
    a.shutdown_write().await;
    a.expect_eof().await;
    assert_eq!(b.get(1, &q2).await, None, "a message with a truncated body was enqueued");
    b.close().await;
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_drip_one_byte_writes_work() {
    let server = server().await;
    let mut c = Raw::connect(server.addr).await;
    c.drip(&wire::PROTOCOL_HEADER).await;
    c.expect(0, (10, 10)).await;
    c.drip(&start_ok_frame("PLAIN", plain("guest", "guest"), true)).await;
    let Method::ConnectionTune { channel_max, frame_max, .. } = c.expect(0, (10, 30)).await else { unreachable!() };
    let mut bytes = method_frame(0, &Method::ConnectionTuneOk { channel_max, frame_max, heartbeat: 0 });
    bytes.extend(method_frame(0, &connection_open()));
    bytes.extend(method_frame(1, &Method::ChannelOpen { out_of_band: String::new() }));
    c.drip(&bytes).await;
    c.expect(0, (10, 41)).await;
    c.expect(1, (20, 11)).await;
    let q = unique("drip");
    c.drip(&method_frame(1, &queue_declare(&q, false, true))).await;
    c.expect(1, (50, 11)).await;
    let mut props = Vec::new();
    wire::BasicProperties { content_type: Some("text/plain".into()), ..Default::default() }.encode(&mut props);
    // A 40-byte body in 4 body frames, every frame dripped.
    let mut frames = method_frame(1, &publish_method(&q));
    frames.extend(header_frame(1, 40, &props));
    for chunk in b"0123456789abcdefghijklmnopqrstuvwxyz!?#$".chunks(10) {
        frames.extend(body_frame(1, chunk));
    }
    c.drip(&frames).await;
    c.drip(&method_frame(1, &Method::BasicGet { ticket: 0, queue: q.clone(), no_ack: true })).await;
    c.expect(1, (60, 71)).await;
    let wire::Frame::Header { body_size: 40, .. } = c.frame().await else { panic!("expected a 40-byte header") };
    let mut body = Vec::new();
    while body.len() < 40 {
        let wire::Frame::Body { payload, .. } = c.frame().await else { panic!("expected a body frame") };
        body.extend_from_slice(&payload);
    }
    assert_eq!(body, b"0123456789abcdefghijklmnopqrstuvwxyz!?#$");
    c.close().await;
    assert_healthy(&server).await;
}
