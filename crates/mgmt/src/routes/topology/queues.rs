//! `/api/queues[/{v}[/{q}]]`: list, show, declare, delete, purge, actions, bindings.

use std::collections::HashMap;
use std::sync::Arc;

use access::authz::{Perm, Resource};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use broker::exchange::Destination;
use broker::queue::QueueOptions;
use broker::{Queue, VHost};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::json::{binding_json, default_binding, queue_json, queue_json_ranged};
use super::{AppState, Scope, amqp, body, query_flag, visible_vhosts};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::node::API_CONNECTION;
use crate::routes::listing::{Compare, ListQuery, Shape, respond};
use crate::stats::RateDb;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/queues", get(list_all))
        .route("/api/queues/{vhost}", get(list_vhost))
        .route("/api/queues/{vhost}/{name}", get(show).put(declare).delete(remove))
        .route("/api/queues/{vhost}/{name}/contents", delete(purge))
        .route("/api/queues/{vhost}/{name}/actions", post(actions))
        .route("/api/queues/{vhost}/{name}/bindings", get(bindings))
}

fn by_vhost_name(a: &Arc<Queue>, b: &Arc<Queue>) -> std::cmp::Ordering {
    (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name))
}

/// Sort keys answered without building JSON (one lock per comparison for the counts:
/// still far cheaper than the JSON of every queue).
fn cheap_sort(k: &str) -> Option<Compare<Arc<Queue>>> {
    match k {
        "name" => Some(|a, b| a.name.cmp(&b.name)),
        "vhost" => Some(by_vhost_name),
        "durable" => Some(|a, b| a.options.durable.cmp(&b.options.durable)),
        "messages" => Some(|a, b| {
            let (x, y) = (a.stats(), b.stats());
            (x.messages_ready + x.messages_unacked).cmp(&(y.messages_ready + y.messages_unacked))
        }),
        "messages_ready" => Some(|a, b| a.stats().messages_ready.cmp(&b.stats().messages_ready)),
        "messages_unacknowledged" => Some(|a, b| a.stats().messages_unacked.cmp(&b.stats().messages_unacked)),
        "consumers" => Some(|a, b| a.stats().consumers.cmp(&b.stats().consumers)),
        _ => None,
    }
}

fn list(node: &str, db: &RateDb, q: &HashMap<String, String>, vhosts: Vec<Arc<VHost>>) -> ApiResult<Json<Value>> {
    let query = ListQuery::parse(q)?;
    let items: Vec<Arc<Queue>> = vhosts.iter().flat_map(|vh| vh.queues()).collect();
    let shape = Shape {
        name: |q: &Arc<Queue>| q.name.as_str(),
        cheap_sort,
        default_order: by_vhost_name,
        to_json: |q: &Arc<Queue>| queue_json(q, node, db),
    };
    Ok(Json(respond(&query, items, shape)?))
}

async fn list_all(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let vhosts = visible_vhosts(node.as_ref(), &caller, None)?;
    list(&node.info().name, node.rates(), &q, vhosts)
}

async fn list_vhost(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let vhosts = visible_vhosts(node.as_ref(), &caller, Some(&vhost))?;
    list(&node.info().name, node.rates(), &q, vhosts)
}

/// The queue `name` as the API sees it: exclusive queues of clients included.
pub(super) fn find(vh: &VHost, name: &str) -> ApiResult<Arc<Queue>> {
    match vh.queue(name, API_CONNECTION) {
        Ok(q) => Ok(q),
        Err(e) if e.code == wire::reply::NOT_FOUND => Err(ApiError::not_found()),
        // Another connection's exclusive queue: it exists, look it up without the check.
        Err(_) => vh.queues().into_iter().find(|q| q.name == name).ok_or_else(ApiError::not_found),
    }
}

/// One queue, as RabbitMQ shows it on its page: with `consumer_details`, and `samples`
/// of its rates and lengths when `msg_rates_age/_incr` and `lengths_age/_incr` ask.
async fn show(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let s = Scope::new(node.as_ref(), &caller, &vhost)?;
    let q = find(&s.vh, &name)?;
    let range = |age: &str, incr: &str| {
        crate::stats::Range::parse(query.get(age).map(String::as_str), query.get(incr).map(String::as_str))
    };
    let mut v = queue_json_ranged(
        &q,
        &node.info().name,
        node.rates(),
        range("msg_rates_age", "msg_rates_incr"),
        range("lengths_age", "lengths_incr"),
    );
    v["consumer_details"] = Value::Array(crate::routes::conns::queue_consumers(&node, &caller, &q.vhost, &q.name));
    Ok(Json(v))
}

#[derive(Deserialize)]
struct DeclareBody {
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    arguments: Map<String, Value>,
}

fn yes() -> bool {
    true
}

/// PUT: 201 when created, 204 when an equivalent queue exists, 400 when it differs.
async fn declare(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult<StatusCode> {
    let s = Scope::new(node.as_ref(), &caller, &vhost)?;
    let b: DeclareBody = body(&raw)?;
    if name.is_empty() {
        return Err(ApiError::bad_request("queue name must not be empty"));
    }
    let arguments = access::json_args::json_to_table(&b.arguments).map_err(ApiError::bad_request)?;
    s.require(Perm::Configure, Resource::Queue, &name)?;
    if let Some(dlx) = arguments.get("x-dead-letter-exchange").and_then(wire::FieldValue::as_str) {
        s.require(Perm::Write, Resource::Exchange, dlx)?;
        s.require(Perm::Read, Resource::Queue, &name)?;
    }
    let opts = QueueOptions { durable: b.durable, exclusive: false, auto_delete: b.auto_delete, arguments };
    let created = node.declare_queue(&s.vh, &name, opts).map_err(amqp)?;
    Ok(if created { StatusCode::CREATED } else { StatusCode::NO_CONTENT })
}

/// DELETE with `if-empty` / `if-unused`; consumers get basic.cancel as on queue.delete.
async fn remove(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    let s = Scope::new(node.as_ref(), &caller, &vhost)?;
    let queue = find(&s.vh, &name)?;
    s.require(Perm::Configure, Resource::Queue, &name)?;
    let stats = queue.stats();
    if query_flag(&q, "if-unused") && stats.consumers > 0 {
        return Err(ApiError::bad_request(format!("queue '{name}' in vhost '{vhost}' in use")));
    }
    if query_flag(&q, "if-empty") && stats.messages_ready > 0 {
        return Err(ApiError::bad_request(format!("queue '{name}' in vhost '{vhost}' is not empty")));
    }
    // By the queue itself rather than by name and connection: the API may delete a
    // client's exclusive queue, as RabbitMQ's may.
    for c in node.delete_queue(&s.vh, &queue).map_err(amqp)? {
        c.sink.cancelled_by_broker();
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn purge(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let s = Scope::new(node.as_ref(), &caller, &vhost)?;
    let q = find(&s.vh, &name)?;
    s.require(Perm::Read, Resource::Queue, &name)?;
    q.purge();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ActionBody {
    action: Option<String>,
}

/// Mirroring actions: Warren has no mirrors, so there is nothing to sync (accepted, as
/// RabbitMQ accepts them for queues without mirrors).
async fn actions(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult<StatusCode> {
    let s = Scope::new(node.as_ref(), &caller, &vhost)?;
    find(&s.vh, &name)?;
    let b: ActionBody = body(&raw)?;
    match b.action.as_deref() {
        Some("sync" | "cancel_sync") => Ok(StatusCode::NO_CONTENT),
        other => Err(ApiError::bad_request(format!("unknown action {other:?}: use sync or cancel_sync"))),
    }
}

/// The queue's bindings, the default exchange's implicit one first.
async fn bindings(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let s = Scope::new(node.as_ref(), &caller, &vhost)?;
    let q = find(&s.vh, &name)?;
    let mut out = vec![binding_json(&vhost, "", &default_binding(&q))];
    let dest = Destination::Queue(q);
    for e in s.vh.exchanges() {
        if e.name.is_empty() {
            continue;
        }
        for b in e.bindings().iter().filter(|b| b.destination == dest) {
            out.push(binding_json(&vhost, &e.name, b));
        }
    }
    Ok(Json(Value::Array(out)))
}
