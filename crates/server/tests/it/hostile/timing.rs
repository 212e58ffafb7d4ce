//! Clients that stall: never finish the handshake, or stop heartbeating.

use std::time::{Duration, Instant};

use wire::{Frame, Method};

use super::raw::*;

/// Read until the socket closes; returns the frames seen (heartbeats included) and when
/// the socket closed.
async fn frames_until_eof(c: &mut Raw) -> (Vec<Frame>, Instant) {
    let mut frames = Vec::new();
    loop {
        match c.event().await {
            Event::Frame(f) => frames.push(f),
            Event::Eof => return (frames, Instant::now()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_are_dropped_after_the_timeout() {
    let server =
        server_with(server::Config { handshake_timeout: Duration::from_millis(500), ..Default::default() }).await;
    let t0 = Instant::now();
    // Sends nothing at all.
    let silent = async {
        let mut c = Raw::connect(server.addr).await;
        let bytes = c.read_to_eof().await;
        assert_eq!(bytes, b"", "a client that sent nothing got bytes back");
        t0.elapsed()
    };
    // Sends the protocol header, then nothing: gets connection.start, then the close.
    let after_header = async {
        let mut c = Raw::connect(server.addr).await;
        c.send(&wire::PROTOCOL_HEADER).await;
        let (frames, at) = frames_until_eof(&mut c).await;
        assert!(
            matches!(frames.first(), Some(Frame::Method { method: Method::ConnectionStart { .. }, .. })),
            "{frames:?}"
        );
        at - t0
    };
    // Logs in, then never sends tune-ok.
    let after_start_ok = async {
        let mut c = Raw::start(server.addr).await;
        c.start_ok("PLAIN", plain("guest", "guest"), true).await;
        let (frames, at) = frames_until_eof(&mut c).await;
        assert!(
            matches!(frames.first(), Some(Frame::Method { method: Method::ConnectionTune { .. }, .. })),
            "{frames:?}"
        );
        at - t0
    };
    let (a, b, c) = tokio::join!(silent, after_header, after_start_ok);
    for (what, took) in [("silent", a), ("after the header", b), ("after start-ok", c)] {
        assert!(took >= Duration::from_millis(400), "{what}: dropped too early, after {took:?}");
        assert!(took <= Duration::from_millis(2500), "{what}: dropped too late, after {took:?}");
    }
    // A client that completes the handshake in time is not affected by the timeout.
    let mut ok = Raw::open_channel1(server.addr).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let q = unique("after-timeout");
    ok.declare_queue(1, &q, true).await;
    ok.close().await;
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_dropped_after_two_missed_heartbeats() {
    let server = server().await;
    // heartbeat = 1 s, then silence.
    let silent = async {
        let mut c = Raw::open_with(server.addr, 1, None).await;
        c.open_channel(1).await;
        let t0 = Instant::now();
        let (frames, at) = frames_until_eof(&mut c).await;
        let took = at - t0;
        let heartbeats = frames.iter().filter(|f| matches!(f, Frame::Heartbeat { channel: 0 })).count();
        assert_eq!(heartbeats, frames.len(), "only heartbeats expected before the drop: {frames:?}");
        assert!(heartbeats >= 1, "the server sent no heartbeat in {took:?}");
        assert!(took >= Duration::from_millis(1500), "dropped after {took:?}, before two heartbeat intervals");
        assert!(took <= Duration::from_secs(5), "dropped after {took:?}");
    };
    // The same, but heartbeating every 500 ms: still connected after 3.5 s.
    let heartbeating = async {
        let mut c = Raw::open_with(server.addr, 1, None).await;
        c.open_channel(1).await;
        for _ in 0..7 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            c.send(&raw_frame(wire::FRAME_HEARTBEAT, 0, &[])).await;
        }
        let q = unique("heartbeating");
        c.declare_queue(1, &q, true).await;
        c.close().await;
    };
    tokio::join!(silent, heartbeating);
    assert_healthy(&server).await;
}

/// Shutdown reaches every connection whatever state its client left it in: mid-frame,
/// mid-content, mid-handshake or idle. Each gets 320 CONNECTION_FORCED and a closed
/// socket, and the server stops promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections_in_every_state() {
    let server = server().await;
    let addr = server.addr;
    let mut idle = Raw::open_channel1(addr).await;
    let mut mid_frame = Raw::open_channel1(addr).await;
    let frame = method_frame(1, &queue_declare("half", false, false));
    mid_frame.send(&frame[..frame.len() / 2]).await;
    let mut mid_content = Raw::open_channel1(addr).await;
    let mut frames = method_frame(1, &publish_method("q"));
    frames.extend(header_frame(1, 100, &NO_PROPS));
    frames.extend(body_frame(1, b"only part of it"));
    mid_content.send(&frames).await;
    let mut mid_handshake = Raw::start(addr).await;
    // Make sure the server has read everything sent so far.
    idle.declare_queue(1, &unique("sync"), true).await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let t0 = Instant::now();
    let stopped = tokio::spawn(server.stop());
    for (what, c) in [
        ("idle", &mut idle),
        ("mid-frame", &mut mid_frame),
        ("mid-content", &mut mid_content),
        ("mid-handshake", &mut mid_handshake),
    ] {
        let code = loop {
            match c.event().await {
                Event::Frame(Frame::Method { channel: 0, method: Method::ConnectionClose { reply_code, .. } }) => {
                    break reply_code;
                }
                Event::Frame(_) => {}
                Event::Eof => panic!("{what}: socket closed without connection.close"),
            }
        };
        assert_eq!(code, wire::reply::CONNECTION_FORCED, "{what}");
        // No close-ok: the server must give up waiting on its own.
        c.expect_eof().await;
    }
    tokio::time::timeout(WAIT, stopped).await.expect("shutdown took too long").expect("serve task");
    assert!(t0.elapsed() < Duration::from_secs(4), "shutdown took {:?}", t0.elapsed());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
    assert_no_panics();
}
