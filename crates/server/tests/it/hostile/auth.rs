//! SASL: AMQPLAIN, bad credentials, unknown mechanisms, malformed responses.

use wire::{Frame, Method, reply};

use super::raw::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqplain_login_works() {
    let server = server().await;
    let mut c = Raw::start(server.addr).await;
    c.start_ok("AMQPLAIN", amqplain("guest", "guest"), true).await;
    c.tune(0, None).await;
    c.open_vhost().await;
    c.open_channel(1).await;
    let q = unique("amqplain");
    c.declare_queue(1, &q, true).await;
    c.publish(1, &q, b"via AMQPLAIN").await;
    assert_eq!(c.get(1, &q).await.as_deref(), Some(&b"via AMQPLAIN"[..]));
    c.close().await;
    assert_healthy(&server).await;
}

/// connection.rs authenticate(): an unknown mechanism is COMMAND_INVALID, as RabbitMQ's
/// auth_mechanism_to_module ("unknown authentication mechanism").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_mechanism_is_command_invalid() {
    let server = server().await;
    for mechanism in ["EXTERNAL", "", "plain", "SCRAM-SHA-256", "PLAIN AMQPLAIN"] {
        let mut c = Raw::start(server.addr).await;
        c.start_ok(mechanism, plain("guest", "guest"), true).await;
        let close = c.expect_connection_close().await;
        assert_eq!(close.code, reply::COMMAND_INVALID, "mechanism {mechanism:?}: {close:?}");
        assert_eq!((close.class_id, close.method_id), (10, 11), "{close:?}");
    }
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_access_refused() {
    let server = server().await;
    // Long, but under the 4096-byte frame limit that applies before tune-ok.
    let too_long = "x".repeat(3000);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("PLAIN", plain("guest", "wrong")),
        ("PLAIN", plain("nobody", "guest")),
        ("PLAIN", b"guest".to_vec()),
        ("PLAIN", Vec::new()),
        ("PLAIN", b"\0\0\0\0\0".to_vec()),
        ("PLAIN", vec![0xff; 64]),
        ("PLAIN", plain("guest", &too_long)),
        ("AMQPLAIN", amqplain("guest", "wrong")),
        ("AMQPLAIN", Vec::new()),
        // Not a field table at all.
        ("AMQPLAIN", vec![0xff; 64]),
        // LOGIN with a value of the wrong type.
        ("AMQPLAIN", vec![5, b'L', b'O', b'G', b'I', b'N', b'I', 0, 0, 0, 1]),
    ];
    for (mechanism, response) in cases {
        let what = format!("{mechanism} {:?}", &response[..response.len().min(16)]);
        let mut c = Raw::start(server.addr).await;
        c.start_ok(mechanism, response, true).await;
        let close = c.expect_connection_close().await;
        assert_eq!(close.code, reply::ACCESS_REFUSED, "{what}: {close:?}");
    }
    assert_healthy(&server).await;
}

/// Without the authentication_failure_close capability, RabbitMQ closes the socket on a
/// failed login without a word (older clients expect that): in particular it must not
/// send connection.tune as if the login had succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_login_without_the_capability_just_closes() {
    let server = server().await;
    let mut c = Raw::start(server.addr).await;
    c.start_ok("PLAIN", plain("guest", "wrong"), false).await;
    let mut frames = Vec::new();
    loop {
        match c.event().await {
            Event::Eof => break,
            Event::Frame(f) => frames.push(f),
        }
    }
    assert!(frames.is_empty(), "a client that failed to log in got {frames:?}");
    assert_healthy(&server).await;
}

/// A client that proceeds after being refused gets nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_client_cannot_continue_the_handshake() {
    let server = server().await;
    let mut c = Raw::start(server.addr).await;
    let mut bytes = start_ok_frame("PLAIN", plain("guest", "wrong"), true);
    bytes.extend(method_frame(0, &Method::ConnectionTuneOk { channel_max: 2047, frame_max: 131_072, heartbeat: 0 }));
    bytes.extend(method_frame(0, &connection_open()));
    bytes.extend(method_frame(1, &Method::ChannelOpen { out_of_band: String::new() }));
    c.try_send(&bytes).await;
    let mut seen = Vec::new();
    let close = loop {
        match c.frame().await {
            Frame::Method { channel: 0, method: Method::ConnectionClose { reply_code, .. } } => break reply_code,
            f => seen.push(f),
        }
    };
    assert_eq!(close, reply::ACCESS_REFUSED);
    assert!(seen.is_empty(), "a refused client got {seen:?} before the close");
    c.try_send(&method_frame(0, &Method::ConnectionCloseOk)).await;
    c.expect_eof().await;
    assert_healthy(&server).await;
}

/// PLAIN as RabbitMQ's rabbit_auth_mechanism_plain reads it: `\0user\0password` and
/// nothing else. A non-empty authzid (asking to act as another identity) or fields after
/// the password are refused, with the same 403 and text as bad credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_refuses_an_authzid_and_trailing_fields() {
    let server = server().await;
    let cases: [&[u8]; 5] = [
        b"guest\0guest\0guest",
        b"admin\0guest\0guest",
        b"\0guest\0guest\0",
        b"\0guest\0guest\0extra",
        b"\0guest\0guest\0guest\0guest",
    ];
    for response in cases {
        let mut c = Raw::start(server.addr).await;
        c.start_ok("PLAIN", response.to_vec(), true).await;
        let close = c.expect_connection_close().await;
        assert_eq!(close.code, reply::ACCESS_REFUSED, "{response:?}: {close:?}");
        assert_eq!(
            close.text,
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile.",
            "{response:?}"
        );
    }
    // The plain form still logs in.
    let c = Raw::open(server.addr).await;
    c.close().await;
    assert_healthy(&server).await;
}
