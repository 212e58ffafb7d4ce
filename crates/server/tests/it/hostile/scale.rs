//! Many channels on one connection, many connections at once, and the negotiated limits.

use std::sync::Arc;

use wire::{Method, reply};

use super::raw::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_channels_then_one_past_channel_max() {
    let server = server().await;
    let mut c = Raw::open(server.addr).await;
    // Pipeline 2000 channel.open frames in one write.
    let open = Method::ChannelOpen { out_of_band: String::new() };
    let frames: Vec<u8> = (1..=2000u16).flat_map(|ch| method_frame(ch, &open)).collect();
    c.send(&frames).await;
    for ch in 1..=2000u16 {
        c.expect(ch, (20, 11)).await;
    }
    // Use a few of them, far apart.
    let q = unique("many-channels");
    c.declare_queue(2000, &q, true).await;
    c.publish(1, &q, b"from channel 1").await;
    c.publish(1000, &q, b"from channel 1000").await;
    assert_eq!(c.get(1999, &q).await.as_deref(), Some(&b"from channel 1"[..]));
    assert_eq!(c.get(7, &q).await.as_deref(), Some(&b"from channel 1000"[..]));
    // Close one and reopen it.
    c.send_method(500, &Method::ChannelClose { reply_code: 200, reply_text: String::new(), class_id: 0, method_id: 0 })
        .await;
    c.expect(500, (20, 41)).await;
    c.open_channel(500).await;
    // The highest channel number allowed (channel_max = 2047) works.
    c.open_channel(2047).await;
    assert_eq!(c.get(2047, &q).await, None);
    // One past it does not.
    c.send_method(2048, &open).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, reply::NOT_ALLOWED, "{close:?}");
    assert_eq!((close.class_id, close.method_id), (20, 10), "{close:?}");
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_negotiated_channel_max_is_enforced() {
    let server = server().await;
    let mut c = Raw::start(server.addr).await;
    c.start_ok("PLAIN", plain("guest", "guest"), true).await;
    c.expect(0, (10, 30)).await;
    c.send_method(0, &Method::ConnectionTuneOk { channel_max: 10, frame_max: 131_072, heartbeat: 0 }).await;
    c.open_vhost().await;
    c.open_channel(10).await;
    c.send_method(11, &Method::ChannelOpen { out_of_band: String::new() }).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, reply::NOT_ALLOWED, "{close:?}");
    assert_healthy(&server).await;
}

/// RabbitMQ's validate_negotiated_integer_value: a tune-ok value below the minimum, or
/// above the server's (0 counting as "no limit", i.e. above), is NOT_ALLOWED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_tune_ok_is_not_allowed() {
    let server = server().await;
    for (channel_max, frame_max) in [(2047u16, 131_073u32), (2047, 4095), (2047, 0), (2048, 131_072), (0, 131_072)] {
        let mut c = Raw::start(server.addr).await;
        c.start_ok("PLAIN", plain("guest", "guest"), true).await;
        c.expect(0, (10, 30)).await;
        c.send_method(0, &Method::ConnectionTuneOk { channel_max, frame_max, heartbeat: 0 }).await;
        let close = c.expect_connection_close().await;
        assert_eq!(close.code, reply::NOT_ALLOWED, "channel_max {channel_max}, frame_max {frame_max}: {close:?}");
    }
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_connections_all_handshake() {
    const N: usize = 500;
    let server = server().await;
    let bystander = Bystander::join(&server).await;
    let addr = server.addr;
    // Every client holds its connection open until all have completed the handshake.
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let barrier = barrier.clone();
        tasks.spawn(async move {
            let mut c = Raw::open(addr).await;
            c.open_channel(1).await;
            barrier.wait().await;
            let q = format!("{}-{i}", unique("concurrent"));
            c.declare_queue(1, &q, true).await;
            c.publish(1, &q, q.as_bytes()).await;
            assert_eq!(c.get(1, &q).await.as_deref(), Some(q.as_bytes()));
            c.close().await;
        });
    }
    let all = async {
        while let Some(r) = tasks.join_next().await {
            r.expect("a client task failed");
        }
    };
    tokio::time::timeout(WAIT, all).await.expect("500 connections did not all complete within 5 s");
    bystander.check().await;
    assert_eq!(exclusive_queues(&server), Vec::<String>::new(), "exclusive queues outlived their connections");
    assert_healthy(&server).await;
}
