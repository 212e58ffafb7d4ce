//! connection.*: handshake, server properties, authentication, vhosts, channel_max,
//! heartbeats, closing from either side, and graceful server shutdown.

use std::time::Duration;

use lapin::protocol::{AMQPClass, channel as channel_class};
use lapin::types::AMQPValue;
use server::Config;

use super::raw::{In, Raw};
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_channels_open_and_close() {
    let server = TestServer::start().await;
    let conn = connect(&server).await;
    assert!(conn.status().connected());
    assert_eq!(conn.status().vhost().as_str(), "/");
    assert_eq!(conn.status().username(), "guest");
    // RabbitMQ's defaults, as tuned by the server.
    let cfg = conn.configuration();
    assert_eq!(cfg.frame_max(), 131_072);
    assert_eq!(cfg.channel_max(), 2047);
    assert_eq!(cfg.heartbeat(), 60);

    let a = channel(&conn).await;
    let b = channel(&conn).await;
    let c = channel(&conn).await;
    assert!(a.id() != b.id() && b.id() != c.id() && a.id() != c.id());
    w!(b.close(200, "OK".into())).expect("channel.close");
    assert!(!b.status().connected());
    assert!(b.basic_qos(1, Default::default()).await.is_err(), "a closed channel is unusable");
    // The other channels are unaffected.
    declare(&a, "").await;
    declare(&c, "").await;
    // Channels can be opened again after others closed.
    let d = channel(&conn).await;
    declare(&d, "").await;

    w!(conn.close(200, "OK".into())).expect("connection.close");
    wait_until("the connection is closed", || !conn.status().connected()).await;
    assert!(conn.create_channel().await.is_err());

    // The server keeps serving new connections.
    let conn = connect(&server).await;
    assert_connection_usable(&conn).await;
    w!(conn.close(200, "OK".into())).expect("connection.close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_ends_in_the_closed_state() {
    // RabbitMQ leaves the socket open after connection.close-ok until the client closes
    // it, so lapin always finishes a clean close in the Closed state. If the server
    // closes the socket first, lapin may see the EOF before it has processed close-ok
    // and end in the Error state instead. Repeat to catch the race.
    let server = TestServer::start().await;
    for i in 0..20 {
        let conn = connect(&server).await;
        let ch = channel(&conn).await;
        declare(&ch, "").await;
        w!(conn.close(200, "OK".into())).expect("connection.close");
        wait_until("the connection leaves the connected state", || !conn.status().connected()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(conn.status().closed(), "clean close #{i} ended in {:?}", conn.status());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_secret_is_acknowledged() {
    let server = TestServer::start().await;
    let conn = connect(&server).await;
    w!(conn.update_secret("guest".into(), "rotation".into())).expect("connection.update-secret");
    assert_connection_usable(&conn).await;
}

fn str_prop<'a>(t: &'a lapin::types::FieldTable, key: &str) -> &'a str {
    match t.inner().get(key) {
        Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes()).expect("utf-8"),
        other => panic!("server property {key}: expected a long string, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_properties_advertise_rabbitmq_capabilities() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.addr).await;
    let start = raw.start().await;
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    let mechanisms = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
    let mechanisms: Vec<&str> = mechanisms.split(' ').collect();
    assert!(mechanisms.contains(&"PLAIN") && mechanisms.contains(&"AMQPLAIN"), "{mechanisms:?}");
    assert_eq!(start.locales.as_bytes(), b"en_US");

    let props = &start.server_properties;
    assert!(!str_prop(props, "product").is_empty());
    for key in ["version", "platform", "copyright", "information", "cluster_name"] {
        str_prop(props, key);
    }
    let caps = match props.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => t,
        other => panic!("capabilities: expected a table, got {other:?}"),
    };
    // What RabbitMQ advertises and clients (lapin included) look for.
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        assert_eq!(caps.inner().get(cap), Some(&AMQPValue::Boolean(true)), "capability {cap}");
    }

    // The rest of the handshake: tune offers RabbitMQ's defaults.
    let tune = raw.tune_and_open(2047, 0).await;
    assert_eq!((tune.channel_max, tune.frame_max, tune.heartbeat), (2047, 131_072, 60));
    raw.expect_open_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused_with_403_and_server_keeps_serving() {
    let server = TestServer::start().await;
    for uri in [format!("amqp://guest:wrong@{}/%2f", server.addr), format!("amqp://nobody:guest@{}/%2f", server.addr)] {
        let r = w!(Connection::connect(&uri, ConnectionProperties::default()));
        let e = r.expect_err("login must be refused");
        assert_code(&e, 403);
    }
    // A following good connection is served normally.
    let conn = connect(&server).await;
    assert_connection_usable(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_vhost_is_refused_with_530() {
    let server = TestServer::start().await;
    let uri = format!("amqp://guest:guest@{}/no-such-vhost", server.addr);
    let e = w!(Connection::connect(&uri, ConnectionProperties::default())).expect_err("unknown vhost");
    assert_code(&e, 530);
    let conn = connect(&server).await;
    assert_connection_usable(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_max_is_negotiated_and_enforced() {
    let server = TestServer::start_with(Config { channel_max: 3, ..Config::default() }).await;

    // lapin takes the server's limit (and enforces it on its side, so the server's own
    // check is exercised with the raw client below).
    let conn = connect(&server).await;
    assert_eq!(conn.configuration().channel_max(), 3);
    let ch = channel(&conn).await;
    declare(&ch, "").await;

    // The server enforces it too, for clients that do not: the 4th channel.open is
    // refused with 530 NOT_ALLOWED, closing the connection (class 20, method 10).
    let mut raw = Raw::connect(server.addr).await;
    raw.start().await;
    raw.tune_and_open(3, 0).await;
    raw.expect_open_ok().await;
    for id in 1..=3 {
        raw.open_channel(id).await;
        match raw.method().await {
            (ch, AMQPClass::Channel(channel_class::AMQPMethod::OpenOk(_))) => assert_eq!(ch, id),
            other => panic!("expected channel.open-ok, got {other:?}"),
        }
    }
    raw.open_channel(4).await;
    let close = raw.expect_connection_close().await;
    assert_eq!((close.reply_code, close.class_id, close.method_id), (530, 20, 10), "{close:?}");
    raw.expect_eof().await;

    // A client asking for more channels than offered is refused at tune-ok (RabbitMQ:
    // "negotiated channel_max = 10 is higher than the maximum allowed value (3)").
    let mut raw = Raw::connect(server.addr).await;
    raw.start().await;
    raw.tune_and_open(10, 0).await;
    let close = raw.expect_connection_close().await;
    assert_eq!(close.reply_code, 530, "{close:?}");

    // None of this disturbed the lapin connection.
    assert_connection_usable(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_is_negotiated_to_the_lower_value() {
    let server = TestServer::start().await;
    // The client asks for less than the server's 60 s: the lower value wins.
    let conn = connect_uri(&format!("{}?heartbeat=5", server.uri())).await;
    assert_eq!(conn.configuration().heartbeat(), 5);
    assert_connection_usable(&conn).await;
    // No preference: the server's value.
    let conn = connect(&server).await;
    assert_eq!(conn.configuration().heartbeat(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_an_idle_connection_alive() {
    let server = TestServer::start_with(Config { heartbeat_secs: 1, ..Config::default() }).await;
    let conn = connect(&server).await;
    assert_eq!(conn.configuration().heartbeat(), 1);
    // Idle for more than twice the interval: without heartbeats both sides would have
    // given up on each other by now.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_connection_usable(&conn).await;

    // The server sends heartbeat frames on an idle connection.
    let mut raw = Raw::connect(server.addr).await;
    raw.start().await;
    let tune = raw.tune_and_open(2047, 1).await;
    assert_eq!(tune.heartbeat, 1);
    raw.expect_open_ok().await;
    match raw.read().await {
        In::Heartbeat => {}
        other => panic!("expected a heartbeat frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_closes_connections_with_320() {
    let server = TestServer::start().await;
    let (c1, ch1) = open(&server).await;
    let (c2, _ch2) = open(&server).await;
    let q = declare(&ch1, "").await;
    let mut consumer = consume(&ch1, &q, "").await;
    let mut e1 = Errors::watch(&c1);
    let mut e2 = Errors::watch(&c2);

    w!(server.stop());

    for (conn, errors) in [(&c1, &mut e1), (&c2, &mut e2)] {
        let e = errors.next().await;
        assert_code(&e, 320);
        assert_connection_closed(conn).await;
    }
    // The consumer learns of it too.
    match w!(consumer.next()) {
        None | Some(Err(_)) => {}
        Some(Ok(d)) => panic!("unexpected delivery {d:?}"),
    }
}

/// connection_max: as RabbitMQ, connection.open beyond the limit is refused with 530
/// NOT_ALLOWED ("connection refused: node connection limit (N) is reached"); once a
/// connection closes, a new one is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_max_refuses_connections_beyond_it_with_530() {
    let server = TestServer::start_with(Config { connection_max: Some(2), ..Config::default() }).await;
    let a = connect(&server).await;
    let b = connect(&server).await;
    let e = w!(Connection::connect(&server.uri(), ConnectionProperties::default())).expect_err("a third connection");
    assert_code(&e, 530);
    let (_, text) = reply(&e).expect("reply");
    assert!(text.contains("node connection limit (2) is reached"), "{text}");
    assert_connection_usable(&a).await;
    w!(b.close(200, "bye".into())).expect("close");
    wait_until("the closed connection is no longer counted", || server.state.connection_count() < 2).await;
    let c = connect(&server).await;
    assert_connection_usable(&c).await;
}
