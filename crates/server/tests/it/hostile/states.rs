//! Well-formed frames in the wrong place: content without a publish, methods inside
//! content, channels that are not open, connection methods out of order.

use wire::{Method, reply};

use super::raw::*;
use crate::common::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_header_without_publish_is_unexpected_frame() {
    let server = server().await;
    // On an open channel, on a channel never opened, and on channel 0.
    for channel in [1u16, 5, 0] {
        let mut c = Raw::open_channel1(server.addr).await;
        c.send(&header_frame(channel, 3, &NO_PROPS)).await;
        let close = c.expect_connection_close().await;
        assert_eq!(close.code, reply::UNEXPECTED_FRAME, "channel {channel}: {close:?}");
    }
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_before_header_is_unexpected_frame() {
    let server = server().await;
    // basic.publish then a body frame where the header should be.
    let mut c = Raw::open_channel1(server.addr).await;
    let mut frames = method_frame(1, &publish_method("q"));
    frames.extend(body_frame(1, b"abc"));
    c.send(&frames).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, reply::UNEXPECTED_FRAME, "{close:?}");
    // A body frame out of nowhere, on an open and on an unopened channel.
    for channel in [1u16, 9] {
        let mut c = Raw::open_channel1(server.addr).await;
        c.send(&body_frame(channel, b"abc")).await;
        let close = c.expect_connection_close().await;
        assert_eq!(close.code, reply::UNEXPECTED_FRAME, "channel {channel}: {close:?}");
    }
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_in_the_middle_of_content_is_unexpected_frame() {
    let server = server().await;
    let get = method_frame(1, &Method::BasicGet { ticket: 0, queue: "q".into(), no_ack: true });
    // Before the header.
    let mut c = Raw::open_channel1(server.addr).await;
    let mut frames = method_frame(1, &publish_method("q"));
    frames.extend_from_slice(&get);
    c.send(&frames).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, reply::UNEXPECTED_FRAME, "{close:?}");
    assert_eq!((close.class_id, close.method_id), (60, 70), "{close:?}");
    // Between body frames.
    let mut c = Raw::open_channel1(server.addr).await;
    let mut frames = method_frame(1, &publish_method("q"));
    frames.extend(header_frame(1, 10, &NO_PROPS));
    frames.extend(body_frame(1, b"12345"));
    frames.extend_from_slice(&get);
    c.send(&frames).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, reply::UNEXPECTED_FRAME, "{close:?}");
    // A second basic.publish instead of the header.
    let mut c = Raw::open_channel1(server.addr).await;
    let mut frames = method_frame(1, &publish_method("q"));
    frames.extend(method_frame(1, &publish_method("q")));
    c.send(&frames).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, reply::UNEXPECTED_FRAME, "{close:?}");
    assert_healthy(&server).await;
}

/// Content on one channel may interleave with methods and content on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_on_one_channel_interleaves_with_other_channels() {
    let server = server().await;
    let mut c = Raw::open_channel1(server.addr).await;
    c.open_channel(2).await;
    let q = unique("interleave");
    c.declare_queue(1, &q, true).await;
    let mut frames = method_frame(1, &publish_method(&q));
    frames.extend(header_frame(1, 6, &NO_PROPS));
    frames.extend(body_frame(1, b"one"));
    // Channel 1 is in the middle of its content: channel 2 may still do anything.
    frames.extend(method_frame(2, &Method::BasicQos { prefetch_size: 0, prefetch_count: 5, global: false }));
    frames.extend(method_frame(2, &publish_method(&q)));
    frames.extend(header_frame(2, 3, &NO_PROPS));
    frames.extend(body_frame(1, b"two"));
    c.send(&frames).await;
    c.expect(2, (60, 11)).await;
    c.send(&body_frame(2, b"3rd")).await;
    assert_eq!(c.get(1, &q).await.as_deref(), Some(&b"onetwo"[..]));
    assert_eq!(c.get(1, &q).await.as_deref(), Some(&b"3rd"[..]));
    c.close().await;
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_larger_than_declared_is_a_hard_error() {
    let server = server().await;
    let q = unique("overrun");
    let mut c = Raw::open_channel1(server.addr).await;
    c.declare_queue(1, &q, false).await;
    let mut frames = method_frame(1, &publish_method(&q));
    frames.extend(header_frame(1, 4, &NO_PROPS));
    frames.extend(body_frame(1, b"0123456789"));
    c.send(&frames).await;
    let close = c.expect_connection_close().await;
    assert!(matches!(close.code, reply::FRAME_ERROR | reply::UNEXPECTED_FRAME), "{close:?}");
    // Also when the overrun comes in a later body frame.
    let mut c = Raw::open_channel1(server.addr).await;
    let mut frames = method_frame(1, &publish_method(&q));
    frames.extend(header_frame(1, 4, &NO_PROPS));
    frames.extend(body_frame(1, b"01"));
    frames.extend(body_frame(1, b"234"));
    c.send(&frames).await;
    let close = c.expect_connection_close().await;
    assert!(matches!(close.code, reply::FRAME_ERROR | reply::UNEXPECTED_FRAME), "{close:?}");
    let mut c = Raw::open_channel1(server.addr).await;
    assert_eq!(c.get(1, &q).await, None, "an overrun message was enqueued");
    c.close().await;
    assert_healthy(&server).await;
}

/// RabbitMQ's command assembler: "expected content header for class 60, got one for class
/// 50 instead" is UNEXPECTED_FRAME.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_header_for_another_class_is_unexpected_frame() {
    let server = server().await;
    let mut c = Raw::open_channel1(server.addr).await;
    let mut frames = method_frame(1, &publish_method("q"));
    let mut header = Vec::new();
    wire::frame::encode_header(&mut header, 1, wire::class::QUEUE, 3, &NO_PROPS);
    frames.extend(header);
    c.send(&frames).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, reply::UNEXPECTED_FRAME, "{close:?}");
    assert_healthy(&server).await;
}

/// A message over max_message_size_bytes (16 MiB) is refused when its header arrives: a
/// channel error (406, as RabbitMQ), and the body frames that follow it (sent before the
/// client saw the channel.close) are discarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_message_closes_only_its_channel() {
    let server = server().await;
    let q = unique("too-big");
    let mut c = Raw::open_channel1(server.addr).await;
    c.declare_queue(1, &q, true).await;
    let mut frames = method_frame(1, &publish_method(&q));
    frames.extend(header_frame(1, 1 << 30, &NO_PROPS));
    frames.extend(body_frame(1, &[0u8; 1000]));
    frames.extend(body_frame(1, &[0u8; 1000]));
    c.send(&frames).await;
    let close = c.expect_channel_close(1).await;
    assert_eq!(close.code, reply::PRECONDITION_FAILED, "{close:?}");
    // The channel number can be reused after close-ok.
    c.open_channel(1).await;
    assert_eq!(c.get(1, &q).await, None);
    c.publish(1, &q, b"small").await;
    assert_eq!(c.get(1, &q).await.as_deref(), Some(&b"small"[..]));
    c.close().await;
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_on_unopened_channel_is_channel_error() {
    let server = server().await;
    let mut c = Raw::open_channel1(server.addr).await;
    c.send_method(7, &queue_declare("q", false, false)).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, reply::CHANNEL_ERROR, "{close:?}");
    assert_eq!((close.class_id, close.method_id), (50, 10), "{close:?}");
    // channel.close on a channel that was never opened.
    let mut c = Raw::open(server.addr).await;
    c.send_method(3, &Method::ChannelClose { reply_code: 200, reply_text: String::new(), class_id: 0, method_id: 0 })
        .await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, reply::CHANNEL_ERROR, "{close:?}");
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_channel_open_is_channel_error() {
    let server = server().await;
    let mut c = Raw::open_channel1(server.addr).await;
    c.send_method(1, &Method::ChannelOpen { out_of_band: String::new() }).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, reply::CHANNEL_ERROR, "{close:?}");
    assert_eq!((close.class_id, close.method_id), (20, 10), "{close:?}");
    assert_healthy(&server).await;
}

/// RabbitMQ's reader, after tune-ok and before connection.open ("opening"), answers any
/// frame on a non-zero channel with unexpected_frame (505) and closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_frames_before_connection_open_are_unexpected() {
    let server = server().await;
    let mut c = Raw::start(server.addr).await;
    c.start_ok("PLAIN", plain("guest", "guest"), true).await;
    c.tune(0, None).await;
    c.send_method(1, &Method::ChannelOpen { out_of_band: String::new() }).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, reply::UNEXPECTED_FRAME, "{close:?}");
    assert_healthy(&server).await;
}

/// RabbitMQ's handle_method0 fallback: "unexpected method in connection state running"
/// is CHANNEL_ERROR (504), for a repeated handshake method and for a non-connection
/// method on channel 0 alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_place_methods_on_channel_zero_are_channel_errors() {
    let server = server().await;
    let cases = [
        connection_open(),
        Method::ConnectionTuneOk { channel_max: 2047, frame_max: 131_072, heartbeat: 0 },
        queue_declare("q", false, false),
        Method::ChannelOpen { out_of_band: String::new() },
    ];
    for m in cases {
        let mut c = Raw::open(server.addr).await;
        c.send_method(0, &m).await;
        let close = c.expect_connection_close().await;
        assert_eq!(close.code, reply::CHANNEL_ERROR, "{} on channel 0: {close:?}", m.name());
        assert_eq!((close.class_id, close.method_id), m.ids(), "{close:?}");
    }
    assert_healthy(&server).await;
}

/// The spec (4.2.7): "Heartbeat frames must have a channel number of zero. A peer that
/// receives an invalid heartbeat frame MUST raise a connection exception with reply code
/// 501 (frame error)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_on_a_nonzero_channel_is_a_frame_error() {
    let server = server().await;
    let mut c = Raw::open_channel1(server.addr).await;
    // Heartbeats on channel 0 are fine at any time.
    c.send(&raw_frame(wire::FRAME_HEARTBEAT, 0, &[])).await;
    c.send(&raw_frame(wire::FRAME_HEARTBEAT, 1, &[])).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, reply::FRAME_ERROR, "{close:?}");
    assert_healthy(&server).await;
}

/// amqp091-go's TestChannelExceptionWithCloseIssue43: the server closes channel 1 (404)
/// while the client's own channel.close for it is on the wire. As RabbitMQ, the server
/// answers the crossing close with close-ok, takes the client's close-ok (its answer to
/// the server's close) as the end of the channel, and the connection and its other
/// channels carry on. (Warren used to forget the channel at the client's close and then
/// close the connection with 504 at the close-ok.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossed_channel_close_completes_and_other_channels_carry_on() {
    let server = server().await;
    let mut c = Raw::open_channel1(server.addr).await;
    c.open_channel(2).await;
    let q = unique("crossed");
    c.declare_queue(2, &q, true).await;
    // A 404 on channel 1 and the client's close of it, in one write: they cross.
    let mut bytes = method_frame(1, &queue_declare("no-such-queue", true, false));
    bytes.extend(method_frame(
        1,
        &Method::ChannelClose { reply_code: 200, reply_text: "bye".into(), class_id: 0, method_id: 0 },
    ));
    // Frames on a closing channel other than close/close-ok are dropped.
    bytes.extend(method_frame(1, &Method::BasicQos { prefetch_size: 0, prefetch_count: 1, global: false }));
    c.send(&bytes).await;
    let Method::ChannelClose { reply_code, .. } = c.expect(1, (20, 40)).await else { unreachable!() };
    assert_eq!(reply_code, reply::NOT_FOUND);
    c.expect(1, (20, 41)).await;
    // The client answers the server's close.
    c.send_method(1, &Method::ChannelCloseOk).await;
    // Channel 2 is untouched and channel 1 can be opened again.
    c.publish(2, &q, b"after the crossed close").await;
    assert_eq!(c.get(2, &q).await.as_deref(), Some(&b"after the crossed close"[..]));
    c.open_channel(1).await;
    c.declare_queue(1, &q, true).await;
    c.close().await;
    assert_healthy(&server).await;
}

/// A consumer the client has cancelled never gets a server basic.cancel, even when its
/// queue is deleted (from another connection) while the client's basic.cancel is being
/// handled: the client has cancel-ok and raises on a basic.cancel for a tag it no longer
/// knows (kombu's test_ack_from_another_thread, ConsumerCancelled). A server cancel may
/// only come before the cancel-ok, never after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_cancel_after_the_clients_cancel_ok() {
    const CONSUMERS: usize = 200;
    let server = server().await;
    for round in 0..10 {
        let mut a = Raw::open_channel1(server.addr).await;
        let mut b = Raw::open_channel1(server.addr).await;
        let q = unique("stale-cancel");
        a.declare_queue(1, &q, false).await;
        let mut consume = Vec::new();
        for i in 0..CONSUMERS {
            consume.extend(method_frame(1, &basic_consume(&q, &format!("c{i}"))));
        }
        a.send(&consume).await;
        for _ in 0..CONSUMERS {
            a.expect(1, (60, 21)).await;
        }
        // Cancelled last-first: the queue deletion notifies its consumers first-first, so
        // the two meet in the middle.
        let mut cancels = Vec::new();
        for i in (0..CONSUMERS).rev() {
            cancels.extend(method_frame(1, &Method::BasicCancel { consumer_tag: format!("c{i}"), nowait: false }));
        }
        let delete = method_frame(
            1,
            &Method::QueueDelete { ticket: 0, queue: q.clone(), if_unused: false, if_empty: false, nowait: false },
        );
        // The delete and the cancels race on two connections.
        b.send(&delete).await;
        a.send(&cancels).await;
        b.expect(1, (50, 41)).await;
        let mut ok = std::collections::HashSet::new();
        while ok.len() < CONSUMERS {
            match a.method().await {
                (1, Method::BasicCancelOk { consumer_tag }) => {
                    ok.insert(consumer_tag);
                }
                (1, Method::BasicCancel { consumer_tag, .. }) => {
                    assert!(
                        !ok.contains(&consumer_tag),
                        "round {round}: basic.cancel for {consumer_tag} after its cancel-ok"
                    );
                }
                other => panic!("round {round}: unexpected {other:?}"),
            }
        }
        // Nothing more may follow for the cancelled consumers.
        a.send_method(1, &Method::BasicQos { prefetch_size: 0, prefetch_count: 0, global: false }).await;
        a.expect(1, (60, 11)).await;
        // (A clean close waits out the server's linger: just hang up.)
        drop((a, b));
    }
    assert_healthy(&server).await;
}

/// A client deleting a queue it consumes from gets queue.delete-ok before the server's
/// basic.cancel for its consumer, as RabbitMQ orders them (py-amqp, waiting for delete-ok,
/// raised a cancel that came first as ConsumerCancelled: kombu's
/// `test_ack_from_another_thread`). Also for a durable queue, whose delete-ok waits for
/// the definitions log's fsync (the cancel must wait with it).
#[tokio::test]
async fn queue_delete_ok_comes_before_the_cancel_of_its_own_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_persistent(dir.path()).await;
    for durable in [false, true] {
        let mut a = Raw::open_channel1(server.addr).await;
        let q = unique("delete-own");
        let declare = Method::QueueDeclare {
            ticket: 0,
            queue: q.clone(),
            passive: false,
            durable,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: wire::FieldTable::new(),
        };
        a.send_method(1, &declare).await;
        a.expect(1, (50, 11)).await;
        a.send_method(1, &basic_consume(&q, "own")).await;
        a.expect(1, (60, 21)).await;
        a.send_method(
            1,
            &Method::QueueDelete { ticket: 0, queue: q.clone(), if_unused: false, if_empty: false, nowait: false },
        )
        .await;
        assert!(matches!(a.method().await, (1, Method::QueueDeleteOk { .. })), "durable {durable}: delete-ok first");
        match a.method().await {
            (1, Method::BasicCancel { consumer_tag, .. }) => assert_eq!(consumer_tag, "own"),
            other => panic!("durable {durable}: expected the server's basic.cancel, got {other:?}"),
        }
        drop(a);
    }
    assert_healthy(&server).await;
}

fn basic_consume(queue: &str, tag: &str) -> Method {
    Method::BasicConsume {
        ticket: 0,
        queue: queue.to_owned(),
        consumer_tag: tag.to_owned(),
        no_local: false,
        no_ack: false,
        exclusive: false,
        nowait: false,
        arguments: wire::FieldTable::new(),
    }
}
