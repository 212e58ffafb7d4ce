//! Celery's monitoring events (`worker -E`), so that Flower and `celery events` see a Rust
//! worker: JSON dicts as `celery/events/event.py` makes them (`type`, `hostname`,
//! `utcoffset`, `pid`, `clock`, `timestamp` plus the event's fields), published to the
//! `celeryev` topic exchange with the type's dashes turned into dots as the routing key
//! (`task-succeeded` → `task.succeeded`), transient, with a `hostname` header.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use serde_json::{Map, Value, json};
use tracing::warn;

use crate::amqp;
use crate::protocol::{CONTENT_ENCODING_UTF8, CONTENT_TYPE_JSON, DELIVERY_MODE_TRANSIENT, Properties, RawMessage};

/// Celery's event exchange.
pub const EVENT_EXCHANGE: &str = "celeryev";
/// Seconds between `worker-heartbeat`s (Celery's default `freq`).
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// One worker's event sender: its node name, a Lamport clock, and the counters heartbeats
/// carry (`active`, `processed`).
pub struct Events {
    ch: Channel,
    pub hostname: String,
    pid: u32,
    clock: AtomicU64,
    active: AtomicI64,
    processed: AtomicU64,
}

impl Events {
    /// Declares `celeryev` as Celery does (topic, durable) on a channel of its own.
    pub async fn new(conn: &Connection) -> Result<Events, lapin::Error> {
        let ch = conn.create_channel().await?;
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        ch.exchange_declare(EVENT_EXCHANGE.into(), lapin::ExchangeKind::Topic, durable, FieldTable::default()).await?;
        Ok(Events {
            ch,
            hostname: node_name(),
            pid: std::process::id(),
            clock: AtomicU64::new(0),
            active: AtomicI64::new(0),
            processed: AtomicU64::new(0),
        })
    }

    /// Publishes one event (failures are logged: events never fail a task).
    pub async fn send(&self, event_type: &str, fields: Map<String, Value>) {
        let clock = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        let raw = event_message(event_type, &self.hostname, self.pid, clock, now_secs(), fields);
        let key = event_type.replace('-', ".");
        let published = self
            .ch
            .basic_publish(
                EVENT_EXCHANGE.into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                &raw.body,
                amqp::to_lapin(&raw),
            )
            .await;
        if let Err(e) = published {
            warn!(event_type, "event not published: {e}");
        }
    }

    /// `worker-online`, `worker-heartbeat`, `worker-offline` with the software and load.
    pub async fn worker(&self, event_type: &str) {
        let fields = json!({
            "freq": HEARTBEAT.as_secs_f64(),
            "sw_ident": "warren-tasks",
            "sw_ver": env!("CARGO_PKG_VERSION"),
            "sw_sys": std::env::consts::OS,
            "active": self.active.load(Ordering::Relaxed).max(0),
            "processed": self.processed.load(Ordering::Relaxed),
            "loadavg": load_average(),
        });
        self.send(event_type, fields.as_object().cloned().unwrap_or_default()).await;
    }

    /// A task started (`active` + 1) / ended (`active` - 1, `processed` + 1).
    pub fn task_started(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    pub fn task_ended(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        self.processed.fetch_add(1, Ordering::Relaxed);
    }
}

/// The message of one event (pure, for tests): the fields, then the standard ones.
pub fn event_message(
    event_type: &str,
    hostname: &str,
    pid: u32,
    clock: u64,
    timestamp: f64,
    fields: Map<String, Value>,
) -> RawMessage {
    let mut body = fields;
    body.insert("hostname".into(), hostname.into());
    body.insert("utcoffset".into(), 0.into());
    body.insert("pid".into(), pid.into());
    body.insert("clock".into(), clock.into());
    body.insert("timestamp".into(), json!(timestamp));
    body.insert("type".into(), event_type.into());
    let mut headers = Map::new();
    headers.insert("hostname".into(), hostname.into());
    RawMessage {
        headers,
        properties: Properties {
            content_type: Some(CONTENT_TYPE_JSON.to_owned()),
            content_encoding: Some(CONTENT_ENCODING_UTF8.to_owned()),
            delivery_mode: Some(DELIVERY_MODE_TRANSIENT),
            ..Properties::default()
        },
        body: serde_json::to_vec(&Value::Object(body)).expect("JSON values always serialize"),
    }
}

/// A Python-like repr of an exception, as Celery puts it in `exception` (`ValueError('x')`).
pub fn exception_repr(exc_type: &str, message: &str) -> String {
    format!("{exc_type}('{message}')")
}

/// `warren-tasks.<pid>@<host>`: Celery's `name@host` node name form, unique per process.
fn node_name() -> String {
    let host = crate::origin();
    let host = host.split_once('@').map_or(host.as_str(), |(_, h)| h).to_owned();
    format!("warren-tasks.{}@{host}", std::process::id())
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs_f64()
}

fn load_average() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn events_look_like_celerys() {
        let fields = json!({"uuid": "id-1", "result": "5", "runtime": 0.25}).as_object().cloned().unwrap();
        let raw = event_message("task-succeeded", "w@h", 42, 7, 1700000000.5, fields);
        let body: Value = serde_json::from_slice(&raw.body).unwrap();
        assert_eq!(
            body,
            json!({"uuid": "id-1", "result": "5", "runtime": 0.25, "hostname": "w@h", "utcoffset": 0,
                   "pid": 42, "clock": 7, "timestamp": 1700000000.5, "type": "task-succeeded"})
        );
        assert_eq!(raw.headers["hostname"], json!("w@h"));
        assert_eq!(raw.properties.content_type.as_deref(), Some("application/json"));
        assert_eq!(exception_repr("RuntimeError", "x"), "RuntimeError('x')");
    }
}
