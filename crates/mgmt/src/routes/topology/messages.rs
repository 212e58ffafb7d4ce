//! Messages over HTTP: publish to an exchange, get from a queue (RabbitMQ's ackmodes), and
//! Warren's additions: a peek that changes nothing, and dead-letter replay.

use std::sync::Arc;

use access::authz::{Perm, Resource, TopicVars};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Extension, Json, Router};
use base64::Engine;
use broker::{ExchangeKind, Queue, QueuedMessage};
use serde::Deserialize;
use serde_json::{Value, json};
use wire::FieldValue;

use super::json::{Encoding, message_json, properties_from_json};
use super::queues::find;
use super::{AppState, Scope, access_refused, amqp, body, exchange_name};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};

/// Most messages one /get, /peek or /replay handles (a reply holds every payload).
const MESSAGES_PER_REQUEST_MAX: usize = 10_000;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/exchanges/{vhost}/{name}/publish", post(publish))
        .route("/api/queues/{vhost}/{name}/get", post(get))
        .route("/api/queues/{vhost}/{name}/peek", post(peek))
        .route("/api/queues/{vhost}/{name}/replay", post(replay))
}

/// RabbitMQ requires every key of a publish.
#[derive(Deserialize)]
struct PublishBody {
    properties: Option<Value>,
    routing_key: Option<String>,
    payload: Option<String>,
    payload_encoding: Option<String>,
}

fn missing(key: &str) -> ApiError {
    ApiError::bad_request(format!("[{{key_missing,{key}}}]"))
}

/// Write on the exchange, and the topic permission for a topic exchange (as basic.publish).
fn require_publish(s: &Scope, caller: &Caller, exchange: &str, routing_key: &str) -> ApiResult<()> {
    s.require(Perm::Write, Resource::Exchange, exchange)?;
    let Ok(e) = s.vh.exchange(exchange) else { return Ok(()) };
    if e.kind() != ExchangeKind::Topic {
        return Ok(());
    }
    let vars = TopicVars { username: caller.name().to_owned(), vhost: s.vh.name.clone(), client_id: None };
    match &s.grants {
        Some(g) if g.check_topic(Perm::Write, exchange, routing_key, &vars).is_ok() => Ok(()),
        _ => Err(access_refused()),
    }
}

async fn publish(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult<Json<Value>> {
    let s = Scope::new(node.as_ref(), &caller, &vhost)?;
    let b: PublishBody = body(&raw)?;
    let properties = b.properties.ok_or_else(|| missing("properties"))?;
    let routing_key = b.routing_key.ok_or_else(|| missing("routing_key"))?;
    let payload = b.payload.ok_or_else(|| missing("payload"))?;
    let payload = match b.payload_encoding.as_deref() {
        Some("string") => payload.into_bytes(),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(payload.as_bytes())
            .map_err(|e| ApiError::bad_request(format!("payload is not base64: {e}")))?,
        Some(other) => return Err(ApiError::bad_request(format!("unknown payload_encoding '{other}'"))),
        None => return Err(missing("payload_encoding")),
    };
    let props = properties_from_json(&properties)?;
    if let Some(u) = &props.user_id
        && u != caller.name()
    {
        return Err(ApiError::bad_request(format!(
            "user_id property set to '{u}' but authenticated user was '{}'",
            caller.name()
        )));
    }
    let exchange = exchange_name(&name);
    require_publish(&s, &caller, exchange, &routing_key)?;
    let mut raw_props = Vec::new();
    props.encode(&mut raw_props);
    let routed = node.publish(&vhost, exchange, &routing_key, raw_props.into(), payload.into()).await?;
    Ok(Json(json!({"routed": routed})))
}

#[derive(Clone, Copy, PartialEq)]
enum AckMode {
    AckRequeueTrue,
    AckRequeueFalse,
    RejectRequeueTrue,
    RejectRequeueFalse,
}

const ACKMODES: &str = "ack_requeue_true, ack_requeue_false, reject_requeue_true, reject_requeue_false";

impl AckMode {
    fn parse(s: Option<&str>) -> ApiResult<AckMode> {
        Ok(match s {
            Some("ack_requeue_true") => AckMode::AckRequeueTrue,
            Some("ack_requeue_false") => AckMode::AckRequeueFalse,
            Some("reject_requeue_true") => AckMode::RejectRequeueTrue,
            Some("reject_requeue_false") => AckMode::RejectRequeueFalse,
            other => {
                return Err(ApiError::bad_request(format!("Unknown ackmode {other:?}; valid values: {ACKMODES}")));
            }
        })
    }
}

#[derive(Deserialize)]
struct GetBody {
    count: Option<usize>,
    ackmode: Option<String>,
    encoding: Option<String>,
    truncate: Option<usize>,
}

fn count(c: Option<usize>) -> ApiResult<usize> {
    let c = c.ok_or_else(|| missing("count"))?;
    if c > MESSAGES_PER_REQUEST_MAX {
        return Err(ApiError::bad_request(format!("count must be at most {MESSAGES_PER_REQUEST_MAX}")));
    }
    Ok(c)
}

/// RabbitMQ's /get: basic.get `count` times on the caller's behalf, then settle them all
/// as `ackmode` says (requeued ones come back redelivered; rejected ones dead-letter).
async fn get(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult<Json<Value>> {
    let s = Scope::new(node.as_ref(), &caller, &vhost)?;
    let b: GetBody = body(&raw)?;
    let n = count(b.count)?;
    let mode = AckMode::parse(b.ackmode.as_deref())?;
    let enc = Encoding::parse(b.encoding.as_deref())?;
    let q = find(&s.vh, &name)?;
    s.require(Perm::Read, Resource::Queue, &name)?;
    let no_ack = mode == AckMode::AckRequeueFalse;
    let mut taken: Vec<QueuedMessage> = Vec::new();
    let mut out = Vec::new();
    while taken.len() < n {
        let Some((m, remaining)) = q.get(no_ack) else { break };
        out.push(message_json(&m, u64::from(remaining), enc, b.truncate));
        taken.push(m);
    }
    match mode {
        AckMode::AckRequeueFalse => {}
        AckMode::AckRequeueTrue | AckMode::RejectRequeueTrue => q.requeue(taken),
        AckMode::RejectRequeueFalse => q.reject(taken),
    }
    Ok(Json(Value::Array(out)))
}

#[derive(Deserialize)]
struct PeekBody {
    #[serde(default)]
    offset: usize,
    count: Option<usize>,
    encoding: Option<String>,
    truncate: Option<usize>,
}

/// Warren's peek: ready messages from `offset` on, as /get shows them, left exactly where
/// they are (never marked redelivered, never reordered). Needs read on the queue.
async fn peek(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult<Json<Value>> {
    let s = Scope::new(node.as_ref(), &caller, &vhost)?;
    let b: PeekBody = body(&raw)?;
    let n = count(b.count)?;
    let enc = Encoding::parse(b.encoding.as_deref())?;
    let q = find(&s.vh, &name)?;
    s.require(Perm::Read, Resource::Queue, &name)?;
    let ready = q.stats().messages_ready;
    let msgs = q.peek(b.offset, n);
    let out: Vec<Value> = msgs
        .iter()
        .enumerate()
        .map(|(i, m)| {
            // As /get would report it: the messages after this one.
            let after = ready.saturating_sub((b.offset + i + 1) as u64);
            message_json(m, after, enc, b.truncate)
        })
        .collect();
    Ok(Json(Value::Array(out)))
}

#[derive(Deserialize)]
struct Target {
    exchange: String,
    routing_key: String,
}

#[derive(Deserialize)]
struct ReplayBody {
    count: Option<usize>,
    target: Option<Target>,
}

/// Where a dead letter goes back to: its most recent death's exchange and first routing key.
fn origin(m: &QueuedMessage) -> Option<(String, String)> {
    let props = wire::BasicProperties::decode(&m.msg.properties).ok()?;
    let death = broker::dead_letter::deaths(&props).into_iter().next()?;
    let exchange = death.get("exchange").and_then(FieldValue::as_str)?.to_owned();
    let key = match death.get("routing-keys") {
        Some(FieldValue::Array(keys)) => keys.first().and_then(FieldValue::as_str).unwrap_or_default().to_owned(),
        _ => String::new(),
    };
    Some((exchange, key))
}

/// Warren's dead-letter replay: move up to `count` messages from the queue to the exchange
/// and routing key they died from (their first x-death entry) or to `target`, as publishes
/// by the caller (read on the queue, write on each exchange). A message leaves the queue
/// only once its publish is done (on disk where that is due); a message that cannot be
/// moved (no origin, no permission, routed nowhere) stops the replay and goes back.
async fn replay(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult<Json<Value>> {
    let s = Scope::new(node.as_ref(), &caller, &vhost)?;
    let b: ReplayBody = body(&raw)?;
    let n = count(b.count)?;
    let q = find(&s.vh, &name)?;
    s.require(Perm::Read, Resource::Queue, &name)?;
    let target = b.target.map(|t| (exchange_name(&t.exchange).to_owned(), t.routing_key));
    let mut moved = 0usize;
    while moved < n {
        let Some((m, _)) = q.get(false) else { break };
        let Some((exchange, key)) = target.clone().or_else(|| origin(&m)) else {
            put_back(&q, m);
            return Err(ApiError::bad_request(format!(
                "message {moved} in the queue has no x-death header to replay it by: give a target"
            )));
        };
        if let Err(e) = require_publish(&s, &caller, &exchange, &key) {
            put_back(&q, m);
            return Err(e);
        }
        if let Err(e) = s.vh.exchange(&exchange) {
            put_back(&q, m);
            return Err(amqp(e));
        }
        match node.publish(&vhost, &exchange, &key, m.msg.properties.clone(), m.msg.body.clone()).await {
            Ok(true) => {
                q.ack(std::slice::from_ref(&m));
                moved += 1;
            }
            Ok(false) => {
                // Nothing took it: moving it would lose it.
                put_back(&q, m);
                return Err(ApiError::bad_request(format!(
                    "moved {moved}; the next message routes nowhere from exchange '{exchange}' with routing key '{key}'"
                )));
            }
            Err(e) => {
                put_back(&q, m);
                return Err(e.into());
            }
        }
    }
    Ok(Json(json!({"moved": moved})))
}

/// Return a message the replay took but could not move. (As any requeue, it comes back
/// at its place, marked redelivered.)
fn put_back(q: &Arc<Queue>, m: QueuedMessage) {
    q.requeue(vec![m]);
}
