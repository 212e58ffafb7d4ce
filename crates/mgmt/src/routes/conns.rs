//! Connections, channels and consumers: `/api/connections[/{name}[/channels]]`,
//! `/api/connections/username/{u}` (GET, DELETE), `/api/vhosts/{v}/connections`, `/api/channels[/{name}]`,
//! `/api/vhosts/{v}/channels`, `/api/consumers[/{v}]`.
//!
//! Who sees what (RabbitMQ's rules): monitoring and administrator users see every
//! connection, channel and consumer; other management users only their own. Closing a
//! connection needs administrator, or being its user.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{Value, json};

use super::AppState;
use super::listing::{self, ListQuery, Shape};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::node::{ChannelInfo, ConnectionInfo, ConsumerInfo};
use crate::stats;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/connections", get(connections))
        .route("/api/connections/{name}", get(connection).delete(close_connection))
        .route("/api/connections/{name}/channels", get(connection_channels))
        .route("/api/connections/username/{user}", get(user_connections).delete(close_user_connections))
        .route("/api/vhosts/{vhost}/connections", get(vhost_connections))
        .route("/api/channels", get(channels))
        .route("/api/channels/{name}", get(channel))
        .route("/api/vhosts/{vhost}/channels", get(vhost_channels))
        .route("/api/consumers", get(consumers))
        .route("/api/consumers/{vhost}", get(vhost_consumers))
}

/// RabbitMQ's list parameters (`name`, `use_regex`, `sort`, `sort_reverse`, `page`,
/// `page_size`, `columns`: see [`listing`]) over items already in their default order
/// (these lists are small next to queue lists: their JSON is built before sorting).
fn paged(items: Vec<Value>, q: &HashMap<String, String>) -> ApiResult<Json<Value>> {
    let query = ListQuery::parse(q)?;
    let shape = Shape {
        name: |v: &Value| v["name"].as_str().unwrap_or_default(),
        cheap_sort: |_: &str| None,
        default_order: |_: &Value, _: &Value| std::cmp::Ordering::Equal,
        to_json: |v: &Value| v.clone(),
    };
    Ok(Json(listing::respond(&query, items, shape)?))
}

/// Whether the caller may see an object of `user`.
fn visible(caller: &Caller, user: &str) -> bool {
    caller.is_monitor() || caller.name() == user
}

fn connection_json(node_name: &str, db: &stats::RateDb, c: &ConnectionInfo) -> Value {
    let (recv_rate, send_rate) =
        db.with(|s| s.series(&stats::connection_key(&c.name)).map_or((0.0, 0.0), |x| (x.rate(0), x.rate(1))));
    json!({
        "name": c.name,
        "node": node_name,
        "type": "network",
        "protocol": "AMQP 0-9-1",
        "user": c.user,
        "vhost": c.vhost,
        "connected_at": c.connected_at_ms,
        "host": c.host,
        "port": c.port,
        "peer_host": c.peer_host,
        "peer_port": c.peer_port,
        "ssl": c.tls,
        "auth_mechanism": c.auth_mechanism,
        "frame_max": c.frame_max,
        "channel_max": c.channel_max,
        "timeout": c.timeout_s,
        "channels": c.channels,
        "state": c.state,
        "client_properties": c.client_properties,
        "user_provided_name": c.client_properties.get("connection_name").cloned().unwrap_or(Value::Null),
        "recv_oct": c.recv_oct,
        "recv_oct_details": {"rate": recv_rate},
        "send_oct": c.send_oct,
        "send_oct_details": {"rate": send_rate},
    })
}

fn channel_json(node_name: &str, db: &stats::RateDb, ch: &ChannelInfo) -> Value {
    json!({
        "number": ch.number,
        "name": ch.name(),
        "node": node_name,
        "connection_details": {"name": ch.connection, "peer_host": ch.peer_host, "peer_port": ch.peer_port},
        "vhost": ch.vhost,
        "user": ch.user,
        "state": ch.state,
        "consumer_count": ch.consumer_count,
        "confirm": ch.confirm,
        "transactional": ch.transactional,
        "prefetch_count": ch.prefetch_count,
        "global_prefetch_count": ch.global_prefetch_count,
        "messages_unacknowledged": ch.messages_unacknowledged,
        "messages_unconfirmed": ch.messages_unconfirmed,
        "messages_uncommitted": 0,
        "acks_uncommitted": 0,
        "message_stats": stats::channel_message_stats(db, &ch.connection, ch.number, &ch.counts),
    })
}

fn consumer_json(node_name: &str, c: &ConsumerInfo) -> Value {
    json!({
        "consumer_tag": c.tag,
        "active": c.active,
        "activity_status": if c.active { "up" } else { "waiting" },
        "ack_required": c.ack_required,
        "prefetch_count": c.prefetch_count,
        "exclusive": c.exclusive,
        "arguments": c.arguments,
        "consumer_timeout": c.consumer_timeout_ms,
        "queue": {"name": c.queue, "vhost": c.vhost},
        "channel_details": {
            "number": c.channel,
            "name": format!("{} ({})", c.connection, c.channel),
            "connection_name": c.connection,
            "node": node_name,
            "peer_host": c.peer_host,
            "peer_port": c.peer_port,
            "user": c.user,
        },
    })
}

fn list_connections(node: &AppState, caller: &Caller, vhost: Option<&str>) -> Vec<Value> {
    let name = node.info().name;
    let mut conns: Vec<ConnectionInfo> = node
        .connections()
        .into_iter()
        .filter(|c| visible(caller, &c.user) && vhost.is_none_or(|v| c.vhost == v))
        .collect();
    conns.sort_by(|a, b| a.name.cmp(&b.name));
    conns.iter().map(|c| connection_json(&name, node.rates(), c)).collect()
}

async fn connections(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    paged(list_connections(&node, &caller, None), &q)
}

async fn vhost_connections(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    if node.vhost(&vhost).is_none() {
        return Err(ApiError::not_found());
    }
    paged(list_connections(&node, &caller, Some(&vhost)), &q)
}

fn find_connection(node: &AppState, caller: &Caller, name: &str) -> ApiResult<ConnectionInfo> {
    node.connections().into_iter().find(|c| c.name == name && visible(caller, &c.user)).ok_or_else(ApiError::not_found)
}

async fn connection(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let c = find_connection(&node, &caller, &name)?;
    Ok(Json(connection_json(&node.info().name, node.rates(), &c)))
}

/// The close reason: the `X-Reason` header, else RabbitMQ's default text.
fn reason(headers: &HeaderMap) -> String {
    headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| "Closed via management plugin".to_owned(), str::to_owned)
}

async fn close_connection(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let c = node.connections().into_iter().find(|c| c.name == name).ok_or_else(ApiError::not_found)?;
    if !caller.is_admin() && caller.name() != c.user {
        return Err(ApiError::forbidden("Not administrator user"));
    }
    if !node.close_connection(&name, &reason(&headers)) {
        return Err(ApiError::not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `[{name, node, user, vhost}]` of one user's connections.
async fn user_connections(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    if !visible(&caller, &user) {
        return Err(ApiError::forbidden("Not monitor user"));
    }
    let name = node.info().name;
    let conns: Vec<Value> = node
        .connections()
        .into_iter()
        .filter(|c| c.user == user)
        .map(|c| json!({"name": c.name, "node": name, "user": c.user, "vhost": c.vhost}))
        .collect();
    Ok(Json(Value::Array(conns)))
}

async fn close_user_connections(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    if !caller.is_admin() && caller.name() != user {
        return Err(ApiError::forbidden("Not administrator user"));
    }
    let why = reason(&headers);
    for c in node.connections().into_iter().filter(|c| c.user == user) {
        node.close_connection(&c.name, &why);
    }
    Ok(StatusCode::NO_CONTENT)
}

fn list_channels(node: &AppState, caller: &Caller, keep: impl Fn(&ChannelInfo) -> bool) -> Vec<Value> {
    let name = node.info().name;
    let mut chans: Vec<ChannelInfo> =
        node.channels().into_iter().filter(|c| visible(caller, &c.user) && keep(c)).collect();
    chans.sort_by(|a, b| a.connection.cmp(&b.connection).then(a.number.cmp(&b.number)));
    chans.iter().map(|c| channel_json(&name, node.rates(), c)).collect()
}

async fn channels(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    paged(list_channels(&node, &caller, |_| true), &q)
}

async fn vhost_channels(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    if node.vhost(&vhost).is_none() {
        return Err(ApiError::not_found());
    }
    paged(list_channels(&node, &caller, |c| c.vhost == vhost), &q)
}

async fn connection_channels(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    find_connection(&node, &caller, &name)?;
    Ok(Json(Value::Array(list_channels(&node, &caller, |c| c.connection == name))))
}

async fn channel(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let ch = node.channels().into_iter().find(|c| c.name() == name && visible(&caller, &c.user));
    let ch = ch.ok_or_else(ApiError::not_found)?;
    let node_name = node.info().name;
    let mut v = channel_json(&node_name, node.rates(), &ch);
    let consumers: Vec<Value> = node
        .consumers()
        .iter()
        .filter(|c| c.connection == ch.connection && c.channel == ch.number)
        .map(|c| consumer_json(&node_name, c))
        .collect();
    v["consumer_details"] = Value::Array(consumers);
    Ok(Json(v))
}

/// The consumers of one queue the caller may see (a queue's `consumer_details`).
pub(crate) fn queue_consumers(node: &AppState, caller: &Caller, vhost: &str, queue: &str) -> Vec<Value> {
    let name = node.info().name;
    let mut cs: Vec<ConsumerInfo> = node
        .consumers()
        .into_iter()
        .filter(|c| visible(caller, &c.user) && c.vhost == vhost && c.queue == queue)
        .collect();
    cs.sort_by(|a, b| a.tag.cmp(&b.tag));
    cs.iter().map(|c| consumer_json(&name, c)).collect()
}

fn list_consumers(node: &AppState, caller: &Caller, vhost: Option<&str>) -> Vec<Value> {
    let name = node.info().name;
    let mut cs: Vec<ConsumerInfo> = node
        .consumers()
        .into_iter()
        .filter(|c| visible(caller, &c.user) && vhost.is_none_or(|v| c.vhost == v))
        .collect();
    cs.sort_by(|a, b| (&a.vhost, &a.queue, &a.tag).cmp(&(&b.vhost, &b.queue, &b.tag)));
    cs.iter().map(|c| consumer_json(&name, c)).collect()
}

/// RabbitMQ answers consumer lists with `reply_list`: `sort`, `sort_reverse` and `columns`
/// apply, `page`, `page_size`, `name` and `use_regex` are ignored (the list is not paged).
fn unpaged(items: Vec<Value>, q: &HashMap<String, String>) -> ApiResult<Json<Value>> {
    let mut q = q.clone();
    for k in ["page", "page_size", "name", "use_regex"] {
        q.remove(k);
    }
    paged(items, &q)
}

async fn consumers(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    unpaged(list_consumers(&node, &caller, None), &q)
}

async fn vhost_consumers(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    if node.vhost(&vhost).is_none() {
        return Err(ApiError::not_found());
    }
    unpaged(list_consumers(&node, &caller, Some(&vhost)), &q)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn items(n: usize) -> Vec<Value> {
        (0..n).map(|i| json!({"name": format!("Conn-{i}")})).collect()
    }

    #[test]
    fn lists_page_and_filter_as_rabbitmq() {
        assert_eq!(paged(items(3), &q(&[])).unwrap().0.as_array().unwrap().len(), 3);
        let p = paged(items(5), &q(&[("page", "2"), ("page_size", "2")])).unwrap().0;
        assert_eq!((p["page_count"].as_u64(), p["item_count"].as_u64()), (Some(3), Some(2)));
        assert_eq!(p["items"][0]["name"], "Conn-2");
        let f = paged(items(12), &q(&[("name", "conn-1")])).unwrap().0;
        assert_eq!(f.as_array().unwrap().len(), 3, "Conn-1, Conn-10, Conn-11");
        assert!(paged(items(5), &q(&[("page", "4"), ("page_size", "2")])).is_err());
        assert!(paged(items(5), &q(&[("page", "1"), ("page_size", "501")])).is_err());
        assert!(paged(items(0), &q(&[("page", "1")])).is_ok(), "an empty list has one empty page");
        // Regex names, sort on any field, columns.
        let r = paged(items(12), &q(&[("name", "^Conn-1[01]$"), ("use_regex", "true")])).unwrap().0;
        assert_eq!(r.as_array().unwrap().len(), 2);
        let s = paged(items(3), &q(&[("sort", "name"), ("sort_reverse", "true"), ("columns", "name")])).unwrap().0;
        assert_eq!(s, json!([{"name": "Conn-2"}, {"name": "Conn-1"}, {"name": "Conn-0"}]));
    }

    #[test]
    fn consumer_lists_sort_and_project_but_never_page() {
        let u = unpaged(
            items(3),
            &q(&[("page", "2"), ("page_size", "1"), ("name", "zzz"), ("sort_reverse", "true"), ("sort", "name")]),
        )
        .unwrap()
        .0;
        assert_eq!(u, json!([{"name": "Conn-2"}, {"name": "Conn-1"}, {"name": "Conn-0"}]));
        let c = unpaged(
            vec![json!({"consumer_tag": "a", "queue": {"name": "q", "vhost": "/"}})],
            &q(&[("columns", "queue.name")]),
        )
        .unwrap()
        .0;
        assert_eq!(c, json!([{"queue": {"name": "q"}}]));
    }
}
