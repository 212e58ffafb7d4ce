//! Celery-compatible tasks in Rust over AMQP 0-9-1: Rust workers that run tasks sent by
//! Python Celery clients, and a client that sends tasks to Rust or Python Celery workers.
//!
//! # Layout
//!
//! - [`protocol`]: Celery protocol v2 task messages and `rpc://` result messages as values;
//!   no I/O. Checked against golden messages made by real Celery (`tests/golden`).
//! - [`registry`]: tasks as async functions with serde-typed arguments, by Celery name.
//! - [`worker`]: consumes queues with lapin, runs each delivery on its own tokio task, at
//!   most `concurrency` at once, acks after the task finished (late ack), publishes results.
//! - [`client`]: sends tasks and waits for their results on an exclusive reply queue.
//! - [`canvas`]: signatures, chains, link callbacks/errbacks, groups and the broker-native
//!   chord (what the worker sends after a task, what the client sends for a canvas).
//! - [`events`]: Celery's monitoring events (`worker -E`) on the `celeryev` exchange.
//! - [`lease`]: Warren's lease extension, so long tasks outlive the consumer timeout.
//! - [`demo`]: the `demo.*` tasks the binary registers with `--demo`.
//! - `amqp`: lapin's header tables and properties to and from the protocol's JSON view.
//!
//! See docs/tasks.md for what exists and what does not yet.

mod acks;
pub(crate) mod amqp;
pub mod canvas;
pub mod client;
pub mod demo;
pub mod events;
pub mod lease;
pub mod protocol;
pub mod registry;
pub mod worker;

use std::time::Duration;

pub use registry::{Registry, TaskError};

/// Errors of the AMQP side (worker and client). Task failures are not errors here: they
/// are results ([`protocol::ResultMessage`] with status FAILURE).
#[derive(Debug)]
pub enum Error {
    Amqp(lapin::Error),
    Protocol(protocol::ProtocolError),
    /// No result arrived in time.
    Timeout(Duration),
    /// The broker ended a consumer or the connection under us.
    Closed(&'static str),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Amqp(e) => write!(f, "AMQP: {e}"),
            Error::Protocol(e) => write!(f, "protocol: {e}"),
            Error::Timeout(d) => write!(f, "no result within {:.1} s", d.as_secs_f64()),
            Error::Closed(what) => write!(f, "closed: {what}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<lapin::Error> for Error {
    fn from(e: lapin::Error) -> Error {
        Error::Amqp(e)
    }
}

impl From<protocol::ProtocolError> for Error {
    fn from(e: protocol::ProtocolError) -> Error {
        Error::Protocol(e)
    }
}

/// A random (version 4) UUID in its hyphenated form, Celery's task id format.
pub fn new_task_id() -> String {
    let mut b = fastrand::u128(..);
    b = (b & !(0xF << 76)) | (0x4 << 76);
    b = (b & !(0x3 << 62)) | (0x2 << 62);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        b >> 96,
        (b >> 80) & 0xffff,
        (b >> 64) & 0xffff,
        (b >> 48) & 0xffff,
        b & 0xffff_ffff_ffff
    )
}

/// Celery's `origin`/hostname form, `pid@host`.
pub(crate) fn origin() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()))
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{}@{host}", std::process::id())
}

/// Declares `name` the way Celery declares a queue it routes to by name
/// (`task_create_missing_queues`): a durable queue bound to a durable direct exchange of the
/// same name with the same routing key. Same arguments, so Python and Rust declarations agree.
pub(crate) async fn declare_task_queue(ch: &lapin::Channel, name: &str) -> Result<(), lapin::Error> {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare(name.into(), lapin::ExchangeKind::Direct, durable, FieldTable::default()).await?;
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare(name.into(), durable, FieldTable::default()).await?;
    ch.queue_bind(name.into(), name.into(), name.into(), QueueBindOptions::default(), FieldTable::default()).await?;
    Ok(())
}

/// The broker's `x-delayed-message` exchange that holds tasks until their `eta`. Every task
/// queue is bound to it with its own name as the routing key.
pub const DELAYED_EXCHANGE: &str = "warren.tasks.delayed";

/// Declares [`DELAYED_EXCHANGE`] (durable, so persistent held tasks survive a broker restart)
/// and binds `queue` to it.
pub(crate) async fn declare_delayed(ch: &lapin::Channel, queue: &str) -> Result<(), lapin::Error> {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let mut args = FieldTable::default();
    args.insert("x-delayed-type".into(), AMQPValue::LongString(LongString::from("direct")));
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare(
        DELAYED_EXCHANGE.into(),
        lapin::ExchangeKind::Custom("x-delayed-message".to_owned()),
        durable,
        args,
    )
    .await?;
    ch.queue_bind(
        queue.into(),
        DELAYED_EXCHANGE.into(),
        queue.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// Whether the broker knows the `x-delayed-message` exchange type (and [`DELAYED_EXCHANGE`]
/// is not taken by another type), asked on a connection of its own: RabbitMQ without the
/// plugin refuses the unknown type with a *connection* error (503 COMMAND_INVALID), which
/// would close the caller's connection; a name taken by another type is a channel error
/// (406). Both mean: no delayed exchange.
pub(crate) async fn has_delayed_exchange(broker: &str) -> Result<bool, lapin::Error> {
    use lapin::options::ExchangeDeclareOptions;
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let conn = lapin::Connection::connect(broker, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert("x-delayed-type".into(), AMQPValue::LongString(LongString::from("direct")));
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    let kind = lapin::ExchangeKind::Custom("x-delayed-message".to_owned());
    let declared = ch.exchange_declare(DELAYED_EXCHANGE.into(), kind, durable, args).await;
    if conn.status().connected() {
        let _ = conn.close(200, "probed".into()).await;
    }
    match declared {
        Ok(()) => Ok(true),
        Err(e) => {
            tracing::debug!("delayed exchange refused: {e}");
            Ok(false)
        }
    }
}

/// The `x-delay` header (ms) for a task due at `eta`; `None` when it is due (or nearly).
pub(crate) fn delay_until(eta: std::time::SystemTime) -> Option<u64> {
    // Less than this early is not worth a round trip through the broker.
    const DELAY_MIN: Duration = Duration::from_millis(20);
    let d = eta.duration_since(std::time::SystemTime::now()).ok()?;
    (d >= DELAY_MIN).then(|| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn task_ids_are_version_4_uuids() {
        let id = super::new_task_id();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{id}");
        assert!(parts[2].starts_with('4'), "{id}");
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(id, super::new_task_id());
    }
}
