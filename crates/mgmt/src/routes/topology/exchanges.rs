//! `/api/exchanges[/{v}[/{x}]]`: list, show, declare, delete, and the exchange's bindings.

use std::collections::HashMap;
use std::sync::Arc;

use access::authz::{Perm, Resource};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use broker::exchange::{Destination, ExchangeOptions};
use broker::{Exchange, VHost};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::json::{binding_json, default_binding, exchange_json};
use super::{AppState, Scope, amqp, body, exchange_name, query_flag, visible_vhosts};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::routes::listing::{Compare, ListQuery, Shape, respond};
use crate::stats::RateDb;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/exchanges", get(list_all))
        .route("/api/exchanges/{vhost}", get(list_vhost))
        .route("/api/exchanges/{vhost}/{name}", get(show).put(declare).delete(delete))
        .route("/api/exchanges/{vhost}/{name}/bindings/source", get(bindings_source))
        .route("/api/exchanges/{vhost}/{name}/bindings/destination", get(bindings_destination))
}

fn by_vhost_name(a: &Arc<Exchange>, b: &Arc<Exchange>) -> std::cmp::Ordering {
    (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name))
}

fn list(db: &RateDb, q: &HashMap<String, String>, vhosts: Vec<Arc<VHost>>) -> ApiResult<Json<Value>> {
    let query = ListQuery::parse(q)?;
    let items: Vec<Arc<Exchange>> = vhosts.iter().flat_map(|vh| vh.exchanges()).collect();
    let shape = Shape {
        name: |e: &Arc<Exchange>| e.name.as_str(),
        cheap_sort: |k: &str| -> Option<Compare<Arc<Exchange>>> {
            match k {
                "name" => Some(|a, b| a.name.cmp(&b.name)),
                "vhost" => Some(by_vhost_name),
                _ => None,
            }
        },
        default_order: by_vhost_name,
        to_json: |e: &Arc<Exchange>| exchange_json(e, db),
    };
    Ok(Json(respond(&query, items, shape)?))
}

async fn list_all(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    list(node.rates(), &q, visible_vhosts(node.as_ref(), &caller, None)?)
}

async fn list_vhost(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    list(node.rates(), &q, visible_vhosts(node.as_ref(), &caller, Some(&vhost))?)
}

async fn show(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let s = Scope::new(node.as_ref(), &caller, &vhost)?;
    let e = s.vh.exchange(exchange_name(&name)).map_err(amqp)?;
    Ok(Json(exchange_json(&e, node.rates())))
}

#[derive(Deserialize)]
struct DeclareBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    arguments: Map<String, Value>,
}

fn yes() -> bool {
    true
}

/// PUT: 201 when created, 204 when an equivalent exchange exists, 400 when it differs.
async fn declare(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult<StatusCode> {
    let s = Scope::new(node.as_ref(), &caller, &vhost)?;
    let b: DeclareBody = body(&raw)?;
    let kind = b.kind.ok_or_else(|| ApiError::bad_request("[{key_missing,type}]"))?;
    let name = exchange_name(&name);
    if name.is_empty() {
        return Err(ApiError::forbidden("operation not permitted on the default exchange"));
    }
    let arguments = access::json_args::json_to_table(&b.arguments).map_err(ApiError::bad_request)?;
    s.require(Perm::Configure, Resource::Exchange, name)?;
    if let Some(ae) = arguments.get("alternate-exchange").and_then(wire::FieldValue::as_str) {
        s.require(Perm::Write, Resource::Exchange, ae)?;
        s.require(Perm::Read, Resource::Exchange, name)?;
    }
    let (kind, delayed) = broker::exchange::parse_type(&kind, &arguments).map_err(amqp)?;
    let existed = s.vh.exchange(name).is_ok();
    let opts = ExchangeOptions {
        kind,
        delayed,
        durable: b.durable,
        auto_delete: b.auto_delete,
        internal: b.internal,
        arguments,
    };
    node.declare_exchange(&s.vh, name, opts).map_err(amqp)?;
    Ok(if existed { StatusCode::NO_CONTENT } else { StatusCode::CREATED })
}

async fn delete(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    let s = Scope::new(node.as_ref(), &caller, &vhost)?;
    let name = exchange_name(&name);
    s.vh.exchange(name).map_err(amqp)?;
    s.require(Perm::Configure, Resource::Exchange, name)?;
    node.delete_exchange(&s.vh, name, query_flag(&q, "if-unused")).map_err(amqp)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Bindings whose source is the exchange (the default exchange's are implicit: one per queue).
async fn bindings_source(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let s = Scope::new(node.as_ref(), &caller, &vhost)?;
    let e = s.vh.exchange(exchange_name(&name)).map_err(amqp)?;
    let out: Vec<Value> = if e.name.is_empty() {
        let mut qs = s.vh.queues();
        qs.sort_by(|a, b| a.name.cmp(&b.name));
        qs.iter().map(|q| binding_json(&vhost, "", &default_binding(q))).collect()
    } else {
        e.bindings().iter().map(|b| binding_json(&vhost, &e.name, b)).collect()
    };
    Ok(Json(Value::Array(out)))
}

/// Bindings whose destination is the exchange.
async fn bindings_destination(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let s = Scope::new(node.as_ref(), &caller, &vhost)?;
    let e = s.vh.exchange(exchange_name(&name)).map_err(amqp)?;
    let dest = Destination::Exchange(e);
    let mut out = Vec::new();
    for src in s.vh.exchanges() {
        for b in src.bindings().iter().filter(|b| b.destination == dest) {
            out.push(binding_json(&vhost, &src.name, b));
        }
    }
    Ok(Json(Value::Array(out)))
}
