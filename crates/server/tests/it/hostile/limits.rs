//! What one connection may hold: bodies in many frames, empty body frames, a client that
//! does not read its replies, a client that goes away while it is not being read. The
//! process-wide memory figures of the same attacks are in `memory` (a separate broker
//! process, so other tests do not disturb them).

use std::time::{Duration, Instant};

use wire::{Method, reply};

use super::raw::*;

/// Empty body frames carry nothing: a few are accepted (RabbitMQ accepts them), an
/// endless stream of them for one message is a frame error (they used to be kept, one
/// handle each, until memory ran out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_empty_body_frames_are_a_frame_error() {
    let server = server().await;
    let bystander = Bystander::join(&server).await;
    // A few empty frames around the payload are fine.
    let mut c = Raw::open_channel1(server.addr).await;
    let q = unique("empty-frames");
    c.declare_queue(1, &q, true).await;
    let mut bytes = method_frame(1, &publish_method(&q));
    bytes.extend(header_frame(1, 4, &NO_PROPS));
    for _ in 0..4 {
        bytes.extend(body_frame(1, b""));
    }
    bytes.extend(body_frame(1, b"ab"));
    bytes.extend(body_frame(1, b""));
    bytes.extend(body_frame(1, b"cd"));
    c.send(&bytes).await;
    assert_eq!(c.get(1, &q).await.as_deref(), Some(&b"abcd"[..]));
    // Thousands are not.
    let mut bytes = method_frame(1, &publish_method(&q));
    bytes.extend(header_frame(1, 4, &NO_PROPS));
    for _ in 0..10_000 {
        bytes.extend(body_frame(1, b""));
    }
    c.try_send(&bytes).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, reply::FRAME_ERROR, "{close:?}");
    bystander.check().await;
    assert_healthy(&server).await;
}

/// A body in many small frames arrives whole and in order (it is assembled in one buffer
/// as it arrives).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_in_one_byte_frames_arrives_whole() {
    let server = server().await;
    let mut c = Raw::open_channel1(server.addr).await;
    let q = unique("one-byte-frames");
    c.declare_queue(1, &q, true).await;
    let body: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let mut bytes = method_frame(1, &publish_method(&q));
    bytes.extend(header_frame(1, body.len() as u64, &NO_PROPS));
    for b in &body {
        bytes.extend(body_frame(1, std::slice::from_ref(b)));
    }
    c.send(&bytes).await;
    assert_eq!(c.get(1, &q).await.as_deref(), Some(&body[..]));
    c.close().await;
    assert_healthy(&server).await;
}

/// A client that pipelines requests and never reads the replies: once its unsent replies
/// pass outbox_max_bytes the server stops reading its requests (its writes stall), and
/// other clients are served as usual. It used to read on and buffer every reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_replies_is_not_read() {
    const LIMIT: usize = 256 * 1024;
    let server = server_with(server::Config { outbox_max_bytes: LIMIT, ..server::Config::default() }).await;
    let bystander = Bystander::join(&server).await;
    let mut c = Raw::open_channel1(server.addr).await;
    let q = unique("never-reads");
    c.declare_queue(1, &q, true).await;
    // A 4000-byte message fetched and requeued over and over: ~60 bytes of requests for
    // each 4 KiB reply.
    c.publish(1, &q, &[7u8; 4000]).await;
    // Replies the server would buffer for what we manage to send, if it kept reading.
    let mut replies_bytes = 0usize;
    let mut tag = 0u64;
    let stalled = loop {
        let mut pairs = Vec::new();
        for _ in 0..1000 {
            tag += 1;
            pairs.extend(method_frame(1, &Method::BasicGet { ticket: 0, queue: q.clone(), no_ack: false }));
            pairs.extend(method_frame(1, &Method::BasicReject { delivery_tag: tag, requeue: true }));
        }
        match tokio::time::timeout(Duration::from_secs(2), c.send_unbounded(&pairs)).await {
            Err(_) => break true,
            Ok(()) => replies_bytes += 1000 * 4100,
        }
        // Far more than kernel socket buffers hold: a server still reading is caught.
        if replies_bytes > 400 * 1024 * 1024 {
            break false;
        }
    };
    assert!(stalled, "the server read requests worth {} MiB of unread replies", replies_bytes >> 20);
    bystander.check().await;
    assert_healthy(&server).await;
}

/// A connection that is not read (blocked by a resource alarm) still notices that its
/// client went away, and releases what it holds; it used to stay until the alarm cleared
/// (and an alarm kept on by that very memory never cleared).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_connection_notices_its_client_closing() {
    let server = server().await;
    let baseline = server.state.connection_count();
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut c = Raw::open_channel1(server.addr).await;
        let q = unique("blocked-close");
        c.declare_queue(1, &q, true).await;
        c.publish(1, &q, b"publisher").await;
        clients.push((c, q));
    }
    server.state.force_alarms(server::alarms::Alarms { memory: true, disk: false });
    // Time for the connections to see the alarm; what follows is not read by the server.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (c, q) in &mut clients {
        c.publish(1, q, &[1u8; 10_000]).await;
    }
    assert_eq!(server.state.connection_count(), baseline + 2);
    let (mut half_closed, _) = clients.remove(0);
    half_closed.shutdown_write().await;
    let (dropped, _) = clients.remove(0);
    drop(dropped);
    let deadline = Instant::now() + Duration::from_secs(3);
    while server.state.connection_count() > baseline {
        assert!(Instant::now() < deadline, "blocked connections whose clients left are still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.state.force_alarms(server::alarms::Alarms::default());
    assert_healthy(&server).await;
}
