//! `/api/bindings[/{v}]` and the binding factories between an exchange and a queue
//! (`/e/{x}/q/{q}`) or another exchange (`/e/{x}/e/{y}`), one binding by its
//! `properties_key`.

use std::collections::HashMap;
use std::sync::Arc;

use access::authz::{Perm, Resource};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use broker::exchange::{Binding, Destination};
use broker::{Exchange, VHost};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::json::{binding_json, default_binding, encode_segment, properties_key};
use super::queues::find;
use super::{AppState, Scope, amqp, body, exchange_name, visible_vhosts};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::routes::listing::{Compare, ListQuery, Shape, respond};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/bindings", get(list_all))
        .route("/api/bindings/{vhost}", get(list_vhost))
        .route("/api/bindings/{vhost}/e/{source}/q/{dest}", get(between_q).post(create_q))
        .route("/api/bindings/{vhost}/e/{source}/q/{dest}/{props}", get(one_q).delete(delete_q))
        .route("/api/bindings/{vhost}/e/{source}/e/{dest}", get(between_e).post(create_e))
        .route("/api/bindings/{vhost}/e/{source}/e/{dest}/{props}", get(one_e).delete(delete_e))
}

/// One binding as listed: its vhost and source with it.
struct Row {
    vhost: Arc<str>,
    source: Arc<str>,
    b: Binding,
}

/// Every binding of the vhost, the default exchange's implicit ones included.
fn rows(vh: &VHost, out: &mut Vec<Row>) {
    let vhost: Arc<str> = Arc::from(vh.name.as_str());
    let default: Arc<str> = Arc::from("");
    for q in vh.queues() {
        out.push(Row { vhost: vhost.clone(), source: default.clone(), b: default_binding(&q) });
    }
    for e in vh.exchanges() {
        if e.name.is_empty() {
            continue;
        }
        let source: Arc<str> = Arc::from(e.name.as_str());
        out.extend(e.bindings().into_iter().map(|b| Row { vhost: vhost.clone(), source: source.clone(), b }));
    }
}

fn default_order(a: &Row, b: &Row) -> std::cmp::Ordering {
    (&a.vhost, &a.source, a.b.destination.name(), &a.b.routing_key).cmp(&(
        &b.vhost,
        &b.source,
        b.b.destination.name(),
        &b.b.routing_key,
    ))
}

fn list(q: &HashMap<String, String>, vhosts: Vec<Arc<VHost>>) -> ApiResult<Json<Value>> {
    let query = ListQuery::parse(q)?;
    let mut items = Vec::new();
    for vh in &vhosts {
        rows(vh, &mut items);
    }
    let shape = Shape {
        // RabbitMQ filters bindings on... nothing useful; the source is the closest to a name.
        name: |r: &Row| &*r.source,
        cheap_sort: |k: &str| -> Option<Compare<Row>> {
            match k {
                "source" => Some(|a, b| a.source.cmp(&b.source)),
                "destination" => Some(|a, b| a.b.destination.name().cmp(b.b.destination.name())),
                "routing_key" => Some(|a, b| a.b.routing_key.cmp(&b.b.routing_key)),
                _ => None,
            }
        },
        default_order,
        to_json: |r: &Row| binding_json(&r.vhost, &r.source, &r.b),
    };
    Ok(Json(respond(&query, items, shape)?))
}

async fn list_all(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    list(&q, visible_vhosts(node.as_ref(), &caller, None)?)
}

async fn list_vhost(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    list(&q, visible_vhosts(node.as_ref(), &caller, Some(&vhost))?)
}

/// The two ends of a binding factory's path.
struct Ends {
    scope: Scope,
    source: Arc<Exchange>,
    dest: Destination,
}

fn ends(node: &AppState, caller: &Caller, vhost: &str, source: &str, dest: &str, to_queue: bool) -> ApiResult<Ends> {
    let scope = Scope::new(node.as_ref(), caller, vhost)?;
    let source = scope.vh.exchange(exchange_name(source)).map_err(amqp)?;
    let dest = if to_queue {
        Destination::Queue(find(&scope.vh, dest)?)
    } else {
        Destination::Exchange(scope.vh.exchange(exchange_name(dest)).map_err(amqp)?)
    };
    Ok(Ends { scope, source, dest })
}

/// The bindings from `source` to `dest` (for the default exchange, the implicit one).
fn between(e: &Ends) -> Vec<Binding> {
    if e.source.name.is_empty() {
        return match &e.dest {
            Destination::Queue(q) => vec![default_binding(q)],
            Destination::Exchange(_) => Vec::new(),
        };
    }
    e.source.bindings().into_iter().filter(|b| b.destination == e.dest).collect()
}

fn list_between(node: AppState, caller: Caller, p: (String, String, String), to_queue: bool) -> ApiResult<Json<Value>> {
    let (vhost, source, dest) = p;
    let e = ends(&node, &caller, &vhost, &source, &dest, to_queue)?;
    Ok(Json(Value::Array(between(&e).iter().map(|b| binding_json(&vhost, &e.source.name, b)).collect())))
}

fn find_one(e: &Ends, props: &str) -> ApiResult<Binding> {
    between(e)
        .into_iter()
        .find(|b| properties_key(&b.routing_key, &b.arguments) == props)
        .ok_or_else(ApiError::not_found)
}

fn show_one(
    node: AppState,
    caller: Caller,
    p: (String, String, String, String),
    to_queue: bool,
) -> ApiResult<Json<Value>> {
    let (vhost, source, dest, props) = p;
    let e = ends(&node, &caller, &vhost, &source, &dest, to_queue)?;
    let b = find_one(&e, &props)?;
    Ok(Json(binding_json(&vhost, &e.source.name, &b)))
}

/// RabbitMQ's binding permissions: write on the destination, read on the source.
fn require_bind(e: &Ends) -> ApiResult<()> {
    let (res, name) = match &e.dest {
        Destination::Queue(q) => (Resource::Queue, q.name.as_str()),
        Destination::Exchange(x) => (Resource::Exchange, x.name.as_str()),
    };
    e.scope.require(Perm::Write, res, name)?;
    e.scope.require(Perm::Read, Resource::Exchange, &e.source.name)
}

#[derive(Deserialize)]
struct BindBody {
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    arguments: Map<String, Value>,
}

/// POST: 201 with `Location` ending in the new binding's properties key.
fn create(
    node: AppState,
    caller: Caller,
    p: (String, String, String),
    to_queue: bool,
    raw: &[u8],
) -> ApiResult<Response> {
    let (vhost, source, dest) = p;
    let e = ends(&node, &caller, &vhost, &source, &dest, to_queue)?;
    let b: BindBody = body(raw)?;
    let args = access::json_args::json_to_table(&b.arguments).map_err(ApiError::bad_request)?;
    require_bind(&e)?;
    let key = properties_key(&b.routing_key, &args);
    node.change_binding(&e.scope.vh, &e.source.name, &e.dest, &b.routing_key, args, true).map_err(amqp)?;
    let location = format!(
        "/api/bindings/{}/e/{}/{}/{}/{}",
        encode_segment(&vhost),
        encode_segment(&source),
        if to_queue { "q" } else { "e" },
        encode_segment(&dest),
        encode_segment(&key)
    );
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

fn remove(
    node: AppState,
    caller: Caller,
    p: (String, String, String, String),
    to_queue: bool,
) -> ApiResult<StatusCode> {
    let (vhost, source, dest, props) = p;
    let e = ends(&node, &caller, &vhost, &source, &dest, to_queue)?;
    let b = find_one(&e, &props)?;
    require_bind(&e)?;
    node.change_binding(&e.scope.vh, &e.source.name, &e.dest, &b.routing_key, b.arguments, false).map_err(amqp)?;
    Ok(StatusCode::NO_CONTENT)
}

type P3 = Path<(String, String, String)>;
type P4 = Path<(String, String, String, String)>;

async fn between_q(State(n): State<AppState>, Extension(c): Extension<Caller>, Path(p): P3) -> ApiResult<Json<Value>> {
    list_between(n, c, p, true)
}
async fn between_e(State(n): State<AppState>, Extension(c): Extension<Caller>, Path(p): P3) -> ApiResult<Json<Value>> {
    list_between(n, c, p, false)
}
async fn one_q(State(n): State<AppState>, Extension(c): Extension<Caller>, Path(p): P4) -> ApiResult<Json<Value>> {
    show_one(n, c, p, true)
}
async fn one_e(State(n): State<AppState>, Extension(c): Extension<Caller>, Path(p): P4) -> ApiResult<Json<Value>> {
    show_one(n, c, p, false)
}
async fn create_q(
    State(n): State<AppState>,
    Extension(c): Extension<Caller>,
    Path(p): P3,
    raw: Bytes,
) -> ApiResult<Response> {
    create(n, c, p, true, &raw)
}
async fn create_e(
    State(n): State<AppState>,
    Extension(c): Extension<Caller>,
    Path(p): P3,
    raw: Bytes,
) -> ApiResult<Response> {
    create(n, c, p, false, &raw)
}
async fn delete_q(State(n): State<AppState>, Extension(c): Extension<Caller>, Path(p): P4) -> ApiResult<StatusCode> {
    remove(n, c, p, true)
}
async fn delete_e(State(n): State<AppState>, Extension(c): Extension<Caller>, Path(p): P4) -> ApiResult<StatusCode> {
    remove(n, c, p, false)
}
