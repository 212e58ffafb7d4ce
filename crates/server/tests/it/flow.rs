//! Flow control and large bodies over real TCP. A queue near its RAM budget whose consumer
//! is limited by its socket pauses its publishers (RabbitMQ's "flow"); these tests check
//! what a client can see: nothing is lost or reordered while publishers are paused, a
//! consumer that stops reading does not hold publishers up, and large bodies (sent from
//! the publisher's buffers by reference) arrive byte for byte.

use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use server::Config;
use wire::{Frame, Method};

use crate::common::TestServer;
use crate::hostile::raw::Raw;

const WAIT: Duration = Duration::from_secs(60);

/// Body `i`: its index, then a pattern that differs per message and per offset.
fn body(i: u32, len: usize) -> Vec<u8> {
    let mut b: Vec<u8> = (0..len).map(|k| ((k * 31 + i as usize * 7 + k / 253) % 251) as u8).collect();
    b[..4].copy_from_slice(&i.to_be_bytes());
    b
}

async fn server_with_small_budget(dir: &std::path::Path) -> TestServer {
    TestServer::start_persistent_with(Config {
        data_dir: dir.to_owned(),
        queue_ram_budget_bytes: 256 * 1024,
        ..Config::default()
    })
    .await
}

async fn publisher(server: &TestServer, queue: &str) -> (Connection, lapin::Channel) {
    let conn = Connection::connect(&server.uri(), ConnectionProperties::default()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(queue.into(), QueueDeclareOptions::default(), FieldTable::default()).await.expect("declare");
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm.select");
    (conn, ch)
}

/// Publish `n` bodies of `len` bytes with confirms; every one must be acked.
async fn publish_all(ch: &lapin::Channel, queue: &str, n: u32, len: usize) {
    let mut confirms = Vec::with_capacity(n as usize);
    for i in 0..n {
        let c = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body(i, len),
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        confirms.push(c);
    }
    for c in confirms {
        assert!(c.await.expect("confirm").is_ack(), "a publish was nacked");
    }
}

/// A raw consumer: channel 1, basic.consume with `no_ack`, prefetch `prefetch` (0: none).
async fn raw_consumer(server: &TestServer, queue: &str, no_ack: bool, prefetch: u16) -> Raw {
    let mut c = Raw::open_channel1(server.addr).await;
    if prefetch > 0 {
        c.send_method(1, &Method::BasicQos { prefetch_size: 0, prefetch_count: prefetch, global: false }).await;
        c.expect(1, (60, 11)).await;
    }
    c.send_method(
        1,
        &Method::BasicConsume {
            ticket: 0,
            queue: queue.into(),
            consumer_tag: "raw".into(),
            no_local: false,
            no_ack,
            exclusive: false,
            nowait: false,
            arguments: wire::FieldTable::new(),
        },
    )
    .await;
    c.expect(1, (60, 21)).await;
    c
}

/// Read one delivery: (delivery tag, body).
async fn next_delivery(c: &mut Raw) -> (u64, Vec<u8>) {
    let tag = match c.frame().await {
        Frame::Method { method: Method::BasicDeliver { delivery_tag, .. }, .. } => delivery_tag,
        other => panic!("expected basic.deliver, got {other:?}"),
    };
    let Frame::Header { body_size, .. } = c.frame().await else { panic!("expected a content header") };
    let mut body = Vec::with_capacity(body_size as usize);
    while (body.len() as u64) < body_size {
        match c.frame().await {
            Frame::Body { payload, .. } => body.extend_from_slice(&payload),
            other => panic!("expected a body frame, got {other:?}"),
        }
    }
    (tag, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_publisher_loses_and_reorders_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server_with_small_budget(dir.path()).await;
    let (n, len) = (1500u32, 16 * 1024);
    let (_pc, pch) = publisher(&server, "flow-q").await;
    let mut consumer = raw_consumer(&server, "flow-q", true, 0).await;
    // The consumer reads in its own task, slower than the publisher writes, so its socket
    // fills and the queue's backlog passes half its budget: the publisher gets paused.
    let reader = tokio::spawn(async move {
        for i in 0..n {
            let (_, b) = next_delivery(&mut consumer).await;
            assert!(b == body(i, len), "message {i} arrived changed or out of order");
            if i % 64 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        consumer
    });
    tokio::time::timeout(WAIT, publish_all(&pch, "flow-q", n, len)).await.expect("publishing timed out");
    let consumer = tokio::time::timeout(WAIT, reader).await.expect("consuming timed out").expect("reader");
    consumer.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_does_not_block_publishers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server_with_small_budget(dir.path()).await;
    // This consumer never reads: its socket and the server's write buffer fill, and the
    // queue stays in flow. Publishers must still get everything confirmed (paged to disk).
    let (pconn, pch) = publisher(&server, "stuck-q").await;
    let stuck = raw_consumer(&server, "stuck-q", false, 0).await;
    let (n, len) = (800u32, 32 * 1024);
    let start = Instant::now();
    tokio::time::timeout(WAIT, publish_all(&pch, "stuck-q", n, len)).await.expect("publishing timed out");
    let took = start.elapsed();
    // Dropping the stuck connection requeues what it was sent: all n are ready again, in order.
    drop(stuck);
    let mut counts = (0, 0);
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let ok = pch
            .queue_declare(
                "stuck-q".into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .expect("passive declare");
        counts = (ok.message_count(), ok.consumer_count());
        if counts == (n, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counts, (n, 0), "after {took:?} of publishing");
    pconn.close(200, "OK".into()).await.expect("close");
    let mut getter = Raw::open_channel1(server.addr).await;
    for i in 0..n {
        let b = getter.get(1, "stuck-q").await.expect("a message");
        assert!(b == body(i, len), "message {i} changed or out of order after the requeue");
    }
    assert_eq!(getter.get(1, "stuck-q").await, None);
    getter.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_around_the_by_reference_threshold_arrive_intact() {
    // Bodies from 8 KiB up are written from the publisher's buffer, not copied; check the
    // sizes around that threshold and multi-frame ones, to a consumer with 4 KiB frames.
    let server = TestServer::start().await;
    let sizes = [0usize, 1, 8191, 8192, 8193, 4088, 4089, 65_536, 200_000];
    let (pconn, pch) = publisher(&server, "sizes-q").await;
    for (i, len) in sizes.iter().enumerate() {
        pch.basic_publish(
            "".into(),
            "sizes-q".into(),
            BasicPublishOptions::default(),
            &body_or_empty(i as u32, *len),
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    let mut c = Raw::open_with(server.addr, 0, Some(4096)).await;
    c.open_channel(1).await;
    c.send_method(
        1,
        &Method::BasicConsume {
            ticket: 0,
            queue: "sizes-q".into(),
            consumer_tag: "raw".into(),
            no_local: false,
            no_ack: true,
            exclusive: false,
            nowait: false,
            arguments: wire::FieldTable::new(),
        },
    )
    .await;
    c.expect(1, (60, 21)).await;
    for (i, len) in sizes.iter().enumerate() {
        let (_, b) = next_delivery(&mut c).await;
        assert_eq!(b.len(), *len);
        assert!(b == body_or_empty(i as u32, *len), "the {len}-byte body differs");
    }
    c.close().await;
    pconn.close(200, "OK".into()).await.expect("close");
    server.stop().await;
}

fn body_or_empty(i: u32, len: usize) -> Vec<u8> {
    if len < 4 { vec![7; len] } else { body(i, len) }
}
