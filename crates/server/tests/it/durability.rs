//! Durability through the whole server, over AMQP with lapin: what a restart on the same
//! data directory keeps (docs/storage.md, "What survives a restart").
//!
//! - [`restart`]: graceful stop and start in-process ([`TestServer::start_persistent`]).
//! - [`crash`]: the real `warren` binary killed with SIGKILL under load, then restarted:
//!   no confirmed message is lost, nothing appears that was never published. The only
//!   place in the project where a broker is killed.
//! - [`fixture`]: `tests/fixtures/v<N>`, data directories written by each on-disk format.
//!
//! Every await on the broker is bounded by [`WAIT`].

use std::future::Future;
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind, ExchangeKind};

use crate::common::TestServer;

/// Await `$e` for at most [`WAIT`], panicking with the expression's text on timeout.
macro_rules! w {
    ($e:expr) => {
        $crate::durability::within(stringify!($e), $e).await
    };
}

mod crash;
mod fixture;
mod restart;

/// Upper bound for any single wait on the broker.
pub const WAIT: Duration = Duration::from_secs(10);

pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for `{what}`"),
    }
}

pub async fn connect_uri(uri: &str) -> Connection {
    w!(Connection::connect(uri, ConnectionProperties::default())).expect("connect")
}

pub async fn open(server: &TestServer) -> (Connection, Channel) {
    let conn = connect_uri(&server.uri()).await;
    let ch = channel(&conn).await;
    (conn, ch)
}

pub async fn channel(conn: &Connection) -> Channel {
    w!(conn.create_channel()).expect("channel.open")
}

/// A channel in confirm mode.
pub async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = channel(conn).await;
    w!(ch.confirm_select(ConfirmSelectOptions::default())).expect("confirm.select");
    ch
}

pub async fn declare_queue(ch: &Channel, name: &str, opts: QueueDeclareOptions, args: FieldTable) {
    w!(ch.queue_declare(name.into(), opts, args)).unwrap_or_else(|e| panic!("queue.declare {name}: {e}"));
}

pub async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind, opts: ExchangeDeclareOptions) {
    w!(ch.exchange_declare(name.into(), kind, opts, FieldTable::default()))
        .unwrap_or_else(|e| panic!("exchange.declare {name}: {e}"));
}

pub fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() }
}

/// Persistent (delivery_mode 2) properties carrying `id` as message-id.
pub fn persistent(id: &str) -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2).with_message_id(id.into())
}

/// Transient (delivery_mode 1) properties carrying `id` as message-id.
pub fn transient(id: &str) -> BasicProperties {
    BasicProperties::default().with_delivery_mode(1).with_message_id(id.into())
}

/// Publish `body` on a confirm channel and wait for the broker's ack.
pub async fn publish_confirmed(ch: &Channel, exchange: &str, key: &str, body: &str, props: BasicProperties) {
    let confirm =
        w!(ch.basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), body.as_bytes(), props))
            .expect("basic.publish");
    assert_eq!(w!(confirm).expect("publisher confirm"), Confirmation::Ack(None), "confirm of {body}");
}

/// (body, redelivered) of every message ready in `queue`, in order (basic.get, no-ack).
pub async fn get_all(ch: &Channel, queue: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    while let Some(m) = w!(ch.basic_get(queue.into(), BasicGetOptions { no_ack: true })).expect("basic.get") {
        out.push((String::from_utf8_lossy(&m.delivery.data).into_owned(), m.delivery.redelivered));
        assert!(out.len() < 1_000_000, "{queue} never runs empty");
    }
    out
}

/// Message count of `queue` by passive declare on a short-lived channel, or the reply
/// code if that fails (404: no such queue).
pub async fn queue_count(conn: &Connection, queue: &str) -> Result<u32, Option<u16>> {
    let ch = channel(conn).await;
    match w!(ch.queue_declare(queue.into(), QueueDeclareOptions::default().passive(), FieldTable::default())) {
        Ok(q) => {
            let _ = w!(ch.close(200, "OK".into()));
            Ok(q.message_count())
        }
        Err(e) => Err(reply_code(&e)),
    }
}

/// Whether `exchange` exists (passive declare), or the reply code of the failure.
pub async fn exchange_exists(conn: &Connection, exchange: &str) -> Result<(), Option<u16>> {
    let ch = channel(conn).await;
    let opts = ExchangeDeclareOptions { passive: true, ..ExchangeDeclareOptions::default() };
    match w!(ch.exchange_declare(exchange.into(), ExchangeKind::Direct, opts, FieldTable::default())) {
        Ok(()) => {
            let _ = w!(ch.close(200, "OK".into()));
            Ok(())
        }
        Err(e) => Err(reply_code(&e)),
    }
}

/// The AMQP reply code of a protocol error.
pub fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        ErrorKind::ProtocolError(a) => Some(a.get_id()),
        _ => None,
    }
}
