//! lapin (a third-party AMQP 0-9-1 client) against Warren over real TCP.
//!
//! RabbitMQ's behaviour is the reference: each test asserts what RabbitMQ does, including
//! the reply code of every error and its level (the channel is closed, or the whole
//! connection). Every test starts its own server; every await is bounded by [`WAIT`].

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures_lite::{Stream, StreamExt};
use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::{BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ErrorKind, Event};

use crate::common::TestServer;

/// Await `$e` for at most [`WAIT`], panicking with the expression's text on timeout.
macro_rules! w {
    ($e:expr) => {
        $crate::interop::within(stringify!($e), $e).await
    };
}

mod basic;
mod confirm;
mod connection;
mod content;
mod exchange;
mod qos;
mod queue;
mod raw;
mod routing;
mod tx;

/// Upper bound for any single wait on the broker.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long we watch for something that must not happen (a delivery beyond prefetch, …).
pub const QUIET: Duration = Duration::from_millis(300);

pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for `{what}`"),
    }
}

/// Poll `cond` until it holds, for at most [`WAIT`].
pub async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn connect(server: &TestServer) -> Connection {
    connect_uri(&server.uri()).await
}

pub async fn connect_uri(uri: &str) -> Connection {
    w!(Connection::connect(uri, ConnectionProperties::default())).expect("connect")
}

pub async fn channel(conn: &Connection) -> Channel {
    w!(conn.create_channel()).expect("channel.open")
}

pub async fn open(server: &TestServer) -> (Connection, Channel) {
    let conn = connect(server).await;
    let ch = channel(&conn).await;
    (conn, ch)
}

/// Declare a transient queue (server-named when `name` is empty) and return its name.
pub async fn declare(ch: &Channel, name: &str) -> String {
    let q = w!(ch.queue_declare(name.into(), QueueDeclareOptions::default(), FieldTable::default()))
        .expect("queue.declare");
    q.name().as_str().to_owned()
}

pub async fn publish(ch: &Channel, exchange: &str, routing_key: &str, body: &[u8]) {
    publish_with(ch, exchange, routing_key, body, BasicProperties::default()).await;
}

pub async fn publish_with(ch: &Channel, exchange: &str, routing_key: &str, body: &[u8], props: BasicProperties) {
    let confirm =
        w!(ch.basic_publish(exchange.into(), routing_key.into(), BasicPublishOptions::default(), body, props))
            .expect("basic.publish");
    // Confirms (if selected) are awaited: a publish is only known routed once confirmed.
    w!(confirm).expect("publisher confirm");
}

/// basic.consume with manual acks.
pub async fn consume(ch: &Channel, queue: &str, tag: &str) -> Consumer {
    w!(ch.basic_consume(queue.into(), tag.into(), BasicConsumeOptions::default(), FieldTable::default()))
        .expect("basic.consume")
}

pub async fn qos(ch: &Channel, prefetch: u16, global: bool) {
    w!(ch.basic_qos(prefetch, BasicQosOptions { global })).expect("basic.qos");
}

/// The next delivery of `c`.
pub async fn next(c: &mut Consumer) -> Delivery {
    match w!(c.next()) {
        Some(Ok(d)) => d,
        Some(Err(e)) => panic!("consumer error: {e}"),
        None => panic!("consumer was cancelled"),
    }
}

/// Every delivery of `c` until none arrives for [`QUIET`].
pub async fn drain(c: &mut Consumer) -> Vec<Delivery> {
    let mut out = Vec::new();
    while let Ok(d) = tokio::time::timeout(QUIET, c.next()).await {
        match d {
            Some(Ok(d)) => out.push(d),
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => break,
        }
    }
    out
}

/// Nothing is delivered to `c` for [`QUIET`].
pub async fn assert_quiet(c: &mut Consumer) {
    if let Ok(d) = tokio::time::timeout(QUIET, c.next()).await {
        let what = d.map(|r| r.map(|d| String::from_utf8_lossy(&d.data).into_owned()));
        panic!("expected no delivery, got {what:?}");
    }
}

/// basic.get with manual ack.
pub async fn get(ch: &Channel, queue: &str) -> Option<BasicGetMessage> {
    w!(ch.basic_get(queue.into(), BasicGetOptions::default())).expect("basic.get")
}

pub fn body(d: &Delivery) -> &str {
    std::str::from_utf8(&d.data).expect("utf-8 body")
}

pub fn bodies(ds: &[Delivery]) -> Vec<&str> {
    ds.iter().map(body).collect()
}

/// Every message ready in `queue`, fetched with basic.get (no-ack), in order.
pub async fn get_all(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = w!(ch.basic_get(queue.into(), BasicGetOptions { no_ack: true })).expect("basic.get") {
        out.push(body(&m.delivery).to_owned());
    }
    out
}

/// (message_count, consumer_count) of an existing queue, by passive declare on a
/// short-lived channel.
pub async fn counts(conn: &Connection, queue: &str) -> (u32, u32) {
    let ch = channel(conn).await;
    let q = w!(ch.queue_declare(queue.into(), QueueDeclareOptions::default().passive(), FieldTable::default()))
        .expect("passive queue.declare");
    w!(ch.close(200, "OK".into())).expect("channel.close");
    (q.message_count(), q.consumer_count())
}

/// The AMQP reply code and text of a protocol error.
pub fn reply(e: &lapin::Error) -> Option<(u16, &str)> {
    match e.kind() {
        ErrorKind::ProtocolError(a) => Some((a.get_id(), a.get_message().as_str())),
        _ => None,
    }
}

/// `e` is a protocol error with reply code `code`, and its reply text starts with the
/// code's name as RabbitMQ's does ("NOT_FOUND - no queue 'q' in vhost '/'").
pub fn assert_code(e: &lapin::Error, code: u16) {
    let Some((got, text)) = reply(e) else { panic!("expected reply code {code}, got error: {e}") };
    assert_eq!(got, code, "expected reply code {code}, got error: {e}");
    let name = match code {
        320 => "CONNECTION_FORCED",
        403 => "ACCESS_REFUSED",
        404 => "NOT_FOUND",
        405 => "RESOURCE_LOCKED",
        406 => "PRECONDITION_FAILED",
        503 => "COMMAND_INVALID",
        530 => "NOT_ALLOWED",
        540 => "NOT_IMPLEMENTED",
        other => panic!("no name known for reply code {other}"),
    };
    assert!(text.starts_with(&format!("{name} - ")), "reply text of {code} should start with '{name} - ': {text:?}");
}

/// `r` failed with reply code `code` at channel level: `ch` is closed, the connection
/// is not, and a new channel on it works.
pub async fn assert_channel_error<T: Debug>(conn: &Connection, ch: &Channel, r: lapin::Result<T>, code: u16) {
    let e = r.expect_err("expected a channel error");
    assert_code(&e, code);
    assert_channel_closed(conn, ch).await;
}

pub async fn assert_channel_closed(conn: &Connection, ch: &Channel) {
    wait_until("the channel is closed", || !ch.status().connected()).await;
    assert_connection_usable(conn).await;
}

/// The connection is open and serves a new channel.
pub async fn assert_connection_usable(conn: &Connection) {
    assert!(conn.status().connected(), "connection should still be open: {:?}", conn.status());
    let ch = channel(conn).await;
    w!(ch.basic_qos(0, BasicQosOptions::default())).expect("basic.qos on a new channel");
    w!(ch.close(200, "OK".into())).expect("channel.close");
}

/// `r` failed with reply code `code` at connection level: the connection is closed.
pub async fn assert_connection_error<T: Debug>(conn: &Connection, r: lapin::Result<T>, code: u16) {
    let e = r.expect_err("expected a connection error");
    assert_code(&e, code);
    assert_connection_closed(conn).await;
}

pub async fn assert_connection_closed(conn: &Connection) {
    wait_until("the connection is closed", || !conn.status().connected()).await;
    assert!(conn.create_channel().await.is_err(), "a closed connection must not open channels");
}

/// The error events of a connection: how asynchronous failures (of a basic.publish or a
/// basic.ack, which have no reply) show up in lapin. Create it before causing the error.
pub struct Errors(Pin<Box<dyn Stream<Item = Event> + Send>>);

impl Errors {
    pub fn watch(conn: &Connection) -> Errors {
        Errors(Box::pin(conn.events_listener()))
    }

    pub async fn next(&mut self) -> lapin::Error {
        loop {
            match w!(self.0.next()) {
                Some(Event::Error(e)) => return e,
                Some(_) => {}
                None => panic!("connection events ended without an error"),
            }
        }
    }

    /// The next error has reply code `code` and closed `ch` only.
    pub async fn channel_error(&mut self, conn: &Connection, ch: &Channel, code: u16) {
        let e = self.next().await;
        assert_code(&e, code);
        assert_channel_closed(conn, ch).await;
    }

    /// The next error has reply code `code` and closed the connection.
    pub async fn connection_error(&mut self, conn: &Connection, code: u16) {
        let e = self.next().await;
        assert_code(&e, code);
        assert_connection_closed(conn).await;
    }
}
