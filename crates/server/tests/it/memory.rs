//! Memory one connection can make the broker hold, measured as the resident set size of a
//! real `warren` process (a child process, so the other tests of this binary do not move
//! the figure). Each attack used to grow the broker by hundreds of MiB or more.

use std::net::SocketAddr;
use std::time::Duration;

use wire::{Frame, Method};

use crate::common::WarrenProcess;
use crate::hostile::raw::*;

/// A `warren` child process on a free port with a data dir of its own, killed on drop.
struct Broker {
    process: WarrenProcess,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start(extra: &[&str]) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let process = WarrenProcess::start(&dir.path().join("data"), None, extra);
        Broker { addr: process.addr(), process, _dir: dir }
    }

    fn rss_mib(&self) -> u64 {
        self.process.rss_mib()
    }
}

/// A body sent as one-byte frames costs about its size, not a handle and a pinned read
/// buffer per byte (it was ~40 bytes of memory per body byte).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_in_one_byte_frames_costs_about_its_size() {
    const BODY: usize = 4 * 1024 * 1024;
    let broker = Broker::start(&[]);
    let mut c = Raw::open_channel1(broker.addr).await;
    c.declare_queue(1, "one-byte", true).await;
    let before = broker.rss_mib();
    let mut head = method_frame(1, &publish_method("one-byte"));
    head.extend(header_frame(1, BODY as u64, &NO_PROPS));
    c.send(&head).await;
    let chunk: Vec<u8> = (0..64 * 1024).flat_map(|_| body_frame(1, b"x")).collect();
    let mut peak = before;
    for _ in 0..BODY / (64 * 1024) {
        c.send(&chunk).await;
        peak = peak.max(broker.rss_mib());
    }
    // The last frame is in the socket: give the broker time to take it in.
    tokio::time::sleep(Duration::from_millis(300)).await;
    peak = peak.max(broker.rss_mib());
    let grown = peak.saturating_sub(before);
    eprintln!("RSS {before} MiB -> peak {peak} MiB for a {} MiB body in one-byte frames", BODY >> 20);
    assert!(grown < 48, "a {} MiB body in one-byte frames grew the broker by {grown} MiB", BODY >> 20);
    let got = c.get(1, "one-byte").await.expect("the message");
    assert!(got.len() == BODY && got.iter().all(|b| *b == b'x'));
    c.close().await;
}

/// A client that pipelines requests and never reads the replies: the broker stops reading
/// it once outbox_max_bytes (default 32 MiB) of replies wait, so its memory stays bounded
/// (it used to buffer every reply: +1.6 GB for 2 GiB of requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_keeps_the_broker_bounded() {
    let broker = Broker::start(&[]);
    let mut c = Raw::open_channel1(broker.addr).await;
    c.declare_queue(1, "never-reads", true).await;
    // A 4000-byte message fetched and requeued over and over: ~60 bytes of requests for
    // each 4 KiB reply.
    c.publish(1, "never-reads", &[7u8; 4000]).await;
    let before = broker.rss_mib();
    let mut peak = before;
    let mut tag = 0u64;
    let stalled = loop {
        let mut pairs = Vec::new();
        for _ in 0..1000 {
            tag += 1;
            pairs.extend(method_frame(1, &Method::BasicGet { ticket: 0, queue: "never-reads".into(), no_ack: false }));
            pairs.extend(method_frame(1, &Method::BasicReject { delivery_tag: tag, requeue: true }));
        }
        let sent = tokio::time::timeout(Duration::from_secs(2), c.send_unbounded(&pairs)).await;
        peak = peak.max(broker.rss_mib());
        if sent.is_err() {
            break true;
        }
        // Stop before hurting the machine: a broker still reading is caught by now.
        if peak - before > 400 {
            break false;
        }
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    peak = peak.max(broker.rss_mib());
    eprintln!("RSS {before} MiB -> peak {peak} MiB; the broker stopped reading: {stalled}");
    assert!(stalled, "the broker kept reading a client that does not read (RSS {before} -> {peak} MiB)");
    assert!(peak - before < 160, "a client that never reads grew the broker by {} MiB", peak - before);
    // Others are still served.
    let mut other = Raw::open_channel1(broker.addr).await;
    other.declare_queue(1, "other", true).await;
    other.publish(1, "other", b"still served").await;
    assert_eq!(other.get(1, "other").await.as_deref(), Some(&b"still served"[..]));
    other.close().await;
}

/// Small messages waiting in a queue do not pin their publisher's read buffers: 300 ten-byte
/// messages, each published between two 1 MiB unroutable ones (so each lands in a different
/// 1 MiB read buffer), used to hold ~300 MiB that the queue's accounting saw as 3 KB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_small_messages_do_not_pin_read_buffers() {
    const ROUNDS: usize = 300;
    let broker = Broker::start(&[]);
    let mut c = Raw::open_channel1(broker.addr).await;
    c.declare_queue(1, "small-backlog", true).await;
    let big = vec![0u8; 1024 * 1024];
    let before = broker.rss_mib();
    for i in 0..ROUNDS {
        c.publish(1, "nowhere", &big).await;
        c.publish(1, "small-backlog", format!("small {i:04}").as_bytes()).await;
    }
    // Everything is in: a basic.get answers after every publish before it.
    let first = c.get(1, "small-backlog").await.expect("the first message");
    assert_eq!(first, b"small 0000");
    // Messages still waiting a housekeeping tick (100 ms) later get buffers of their own.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = broker.rss_mib();
    eprintln!("RSS {before} MiB -> {after} MiB holding {} small messages", ROUNDS - 1);
    assert!(after.saturating_sub(before) < 64, "{ROUNDS} queued ten-byte messages hold {} MiB", after - before);
    for i in 1..ROUNDS {
        assert_eq!(c.get(1, "small-backlog").await.expect("a message"), format!("small {i:04}").as_bytes());
    }
    c.close().await;
}

/// The memory breakdown's `connection_readers` and `connection_writers` (bytes, from the
/// management API of an in-process server).
async fn connection_buffers(server: &crate::common::TestServer) -> (u64, u64) {
    let http = reqwest::Client::new();
    let get = |path: String| {
        let r = http.get(format!("{}/{path}", server.api())).basic_auth("guest", Some("guest")).send();
        async move { r.await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    let node = get("overview".into()).await["node"].as_str().unwrap().to_owned();
    let m = get(format!("nodes/{node}/memory")).await;
    let n = |k: &str| m["memory"][k].as_u64().unwrap_or_else(|| panic!("{k} in {m}"));
    (n("connection_readers"), n("connection_writers"))
}

/// A connection's buffers shrink back once it is idle: a consumer that was sent megabytes
/// at once (its writer buffer grew to the outbox's high-water mark) and a publisher of a
/// 1 MiB body (its read buffer grew to read large frames whole) each keep a few KiB, as
/// ten thousand mostly idle connections must.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_buffers_shrink_back_when_idle() {
    const MESSAGES: usize = 20_000;
    let server = crate::common::TestServer::start().await.with_management().await;
    // Heartbeats every second: the connection's timer ticks every 250 ms, so idleness is
    // seen quickly (the client must then send something within 2 s).
    let mut c = Raw::open_with(server.addr, 1, None).await;
    c.open_channel(1).await;
    c.declare_queue(1, "burst", false).await;
    c.publish(1, "nowhere", &vec![7u8; 1024 * 1024]).await;
    let body = vec![1u8; 1024];
    for _ in 0..MESSAGES {
        c.publish(1, "burst", &body).await;
    }
    assert_eq!(c.declare_queue(1, "burst", false).await as usize, MESSAGES);
    c.send_method(
        1,
        &Method::BasicConsume {
            ticket: 0,
            queue: "burst".into(),
            consumer_tag: "c".into(),
            no_local: false,
            no_ack: true,
            exclusive: false,
            nowait: false,
            arguments: Default::default(),
        },
    )
    .await;
    // Not reading yet: 20 MB is more than the sockets hold, so the outbox fills.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, writers_full) = connection_buffers(&server).await;
    assert!(writers_full >= 512 * 1024, "a consumer behind by megabytes: connection_writers {writers_full}");
    let mut bodies = 0;
    while bodies < MESSAGES {
        if let Frame::Body { .. } = c.frame().await {
            bodies += 1;
            if bodies % 2000 == 0 {
                c.send(&raw_frame(wire::FRAME_HEARTBEAT, 0, &[])).await;
            }
        }
    }
    c.send(&raw_frame(wire::FRAME_HEARTBEAT, 0, &[])).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (readers, writers) = connection_buffers(&server).await;
    eprintln!("connection_writers {writers_full} B while behind; idle: readers {readers} B, writers {writers} B");
    assert!(writers <= 32 * 1024, "an idle connection's write buffers: {writers} B");
    assert!(readers <= 16 * 1024, "an idle connection's read buffer: {readers} B");
    c.close().await;
}
