//! `/api/overview`, `/api/nodes`, `/api/whoami`, `/api/cluster-name`, `/api/extensions`,
//! and the probes.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::routing::{get, put};
use axum::{Extension, Json, Router};
use serde_json::{Value, json};

use super::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::node::NodeInfo;
use crate::stats;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/whoami", get(whoami))
        .route("/api/cluster-name", get(cluster_name))
        .route("/api/extensions", get(|| async { Json(json!([])) }))
        .route("/api/docs", get(docs))
        .route("/api/nodes", get(nodes))
        .route("/api/nodes/{node}", get(node))
        .route("/api/nodes/{node}/memory", get(node_memory))
        .route("/api/warren/cluster", get(cluster_status))
        .route("/api/warren/cluster/nodes/{node}", put(cluster_join).delete(cluster_forget))
        .route("/api/feature-flags", get(feature_flags))
        .route("/api/feature-flags/{name}/enable", put(enable_feature_flag))
}

/// `GET /api/feature-flags`: the flags this node supports, RabbitMQ's fields.
async fn feature_flags(State(node): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let flags: Vec<Value> = node
        .feature_flags()
        .into_iter()
        .map(|f| {
            json!({
                "name": f.name,
                "desc": f.desc,
                "doc_url": "",
                "stability": f.stability,
                "provided_by": "warren",
                "state": if f.enabled { "enabled" } else { "disabled" },
            })
        })
        .collect();
    Ok(Json(Value::Array(flags)))
}

/// `PUT /api/feature-flags/{name}/enable` (`all`, as `rabbitmqctl enable_feature_flag all`,
/// enables every flag this node supports): once every member says it supports it.
async fn enable_feature_flag(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<axum::http::StatusCode> {
    caller.require_admin()?;
    node.enable_feature_flag(name).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// The RabbitMQ version Warren answers as (tools gate features on it).
pub const RABBITMQ_VERSION: &str = access::definitions::RABBITMQ_COMPAT_VERSION;

fn listeners(info: &NodeInfo) -> Vec<Value> {
    info.listeners
        .iter()
        .map(|l| {
            json!({"node": info.name, "protocol": l.protocol, "ip_address": l.ip_address, "port": l.port,
                   "socket_opts": {}})
        })
        .collect()
}

async fn overview(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    let info = node.info();
    let vhosts = node.vhosts();
    let (mut queues, mut exchanges, mut consumers) = (0usize, 0usize, 0u64);
    let (mut ready, mut unacked) = (0u64, 0u64);
    for vh in &vhosts {
        exchanges += vh.exchanges().len();
        for q in vh.queues() {
            queues += 1;
            let s = q.stats();
            ready += s.messages_ready;
            unacked += s.messages_unacked;
            consumers += u64::from(s.consumers);
        }
    }
    let conns = node.connections();
    let channels: usize = conns.iter().map(|c| c.channels).sum();
    let msg_range =
        stats::Range::parse(q.get("msg_rates_age").map(String::as_str), q.get("msg_rates_incr").map(String::as_str));
    let lengths_range =
        stats::Range::parse(q.get("lengths_age").map(String::as_str), q.get("lengths_incr").map(String::as_str));
    let activity = stats::overview(
        node.rates(),
        &node.node_counters(),
        [ready + unacked, ready, unacked],
        msg_range,
        lengths_range,
    );
    let exchange_types: Vec<Value> = ["direct", "fanout", "topic", "headers", "x-delayed-message"]
        .iter()
        .map(|t| json!({"name": t, "description": "", "enabled": true}))
        .collect();
    Json(json!({
        "management_version": RABBITMQ_VERSION,
        "rates_mode": "basic",
        "sample_retention_policies": {"global": [600, 3600, 28800, 86400], "basic": [600, 3600], "detailed": [600]},
        "exchange_types": exchange_types,
        "product_version": info.product_version,
        "product_name": "Warren",
        "rabbitmq_version": RABBITMQ_VERSION,
        "cluster_name": info.cluster_name,
        "cluster_tags": {},
        "node_tags": {},
        "erlang_version": "none (Warren is written in Rust)",
        "erlang_full_version": "none",
        "crypto_lib_version": "rustls",
        "disable_stats": false,
        "default_queue_type": "classic",
        "enable_queue_totals": true,
        "is_op_policy_updating_enabled": true,
        "message_stats": activity.message_stats,
        "churn_rates": activity.churn_rates,
        "queue_totals": activity.queue_totals,
        "object_totals": {
            "connections": conns.len(), "channels": channels, "exchanges": exchanges,
            "queues": queues, "consumers": consumers,
        },
        "statistics_db_event_queue": 0,
        "node": info.name,
        "listeners": if caller.is_monitor() { listeners(&info) } else { Vec::new() },
        "contexts": [],
    }))
}

/// What the API offers and where it differs from RabbitMQ: the docs shipped with the
/// binary (docs/management.md and docs/metrics.md), as Markdown inside JSON.
async fn docs() -> Json<Value> {
    Json(json!({
        "format": "markdown",
        "management": include_str!("../../../../docs/management.md"),
        "metrics": include_str!("../../../../docs/metrics.md"),
    }))
}

/// The caller, and (as RabbitMQ when `management.login_session_timeout` is set) the
/// minutes of inactivity after which the web UI logs out.
async fn whoami(State(node): State<AppState>, Extension(caller): Extension<Caller>) -> Json<Value> {
    Json(json!({
        "name": caller.name(),
        "tags": caller.user.tags,
        "is_internal_user": true,
        "login_session_timeout": node.login_session_timeout_min(),
    }))
}

async fn cluster_name(State(node): State<AppState>) -> Json<Value> {
    Json(json!({"name": node.info().cluster_name}))
}

fn node_json(info: &NodeInfo) -> Value {
    json!({
        "name": info.name,
        "type": "disc",
        "running": true,
        "being_drained": false,
        "uptime": info.uptime_ms,
        "os_pid": info.os_pid.to_string(),
        "processors": info.processors,
        "run_queue": 0,
        "fd_used": info.fd_used,
        "fd_total": info.fd_total,
        "sockets_used": info.sockets_used,
        "sockets_total": info.fd_total,
        "proc_used": 0,
        "proc_total": 0,
        "mem_used": info.mem_used_bytes,
        "mem_limit": info.mem_limit_bytes,
        "mem_alarm": info.mem_alarm,
        "disk_free": info.disk_free_bytes,
        "disk_free_limit": info.disk_free_limit_bytes,
        "disk_free_alarm": info.disk_free_alarm,
        "partitions": [],
        "rates_mode": "basic",
        "enabled_plugins": ["rabbitmq_management", "rabbitmq_prometheus"],
        "auth_mechanisms": [{"name": "PLAIN", "description": "SASL PLAIN", "enabled": true},
                            {"name": "AMQPLAIN", "description": "QPid AMQPLAIN", "enabled": true}],
        "exchange_types": [],
        "contexts": [],
        "log_files": [],
        "config_files": info.config_files,
        "db_dir": info.data_dir,
        "net_ticktime": 60,
        "cluster_links": [],
    })
}

/// Another member as `/api/nodes` shows it: only what this node knows truthfully (its
/// name, that it is a disc node, and whether it answers over the inter-node link). Its
/// figures (memory, disk, uptime...) live on that node and are not fetched.
fn member_json(name: &str, running: bool) -> Value {
    json!({"name": name, "type": "disc", "running": running, "being_drained": false})
}

/// `/api/nodes`: this node; in a cluster, also every other member with `running` as seen
/// from here (their figures are not fetched: see [`member_json`]).
async fn nodes(State(node): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Json<Value>> {
    caller.require_monitor()?;
    let info = node.info();
    let Some(status) = node.cluster_status().await else {
        return Ok(Json(json!([node_json(&info)])));
    };
    let mut list = vec![node_json(&info)];
    for m in status.members.iter().filter(|m| **m != info.name) {
        list.push(member_json(m, status.running.contains(m)));
    }
    list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(Json(Value::Array(list)))
}

/// A group's members: voter or learner, running, leader, and (on the leader) replication.
fn members_json(leader: Option<&String>, members: &[crate::node::ClusterMember]) -> Vec<Value> {
    members
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "type": if m.voter { "voter" } else { "learner" },
                "running": m.running,
                "leader": leader == Some(&m.name),
                "matched_index": m.replication.and_then(|x| x.matched_index),
                "lag": m.replication.map(|x| x.lag_entries),
            })
        })
        .collect()
}

fn log_json(r: &crate::node::RaftFigures) -> Value {
    json!({
        "last_written_index": r.last_written_index,
        "commit_index": r.commit_index,
        "last_applied_index": r.last_applied_index,
        "snapshot_index": r.snapshot_index,
        "bytes": r.log_bytes,
        "commit_latency_us": r.commit_latency_us,
    })
}

fn cluster_json(s: &crate::node::ClusterStatus) -> Value {
    let r = &s.raft;
    let queues: Vec<Value> = s
        .queue_groups
        .iter()
        .map(|g| {
            json!({
                "vhost": g.vhost,
                "name": g.name,
                "group": g.group,
                "leader": g.leader,
                "term": g.raft.term,
                "is_leader": g.raft.is_leader,
                "raft_state": if g.stopped.is_some() { "stopped" } else { "running" },
                "raft_error": g.stopped,
                "log": log_json(&g.raft),
                "replication_known": g.raft.is_leader,
                "members": members_json(g.leader.as_ref(), &g.members),
            })
        })
        .collect();
    json!({
        "node": s.node,
        "cluster_name": s.cluster_name,
        "disk_nodes": s.members,
        "ram_nodes": [],
        "running_nodes": s.running,
        "leader": s.leader,
        "term": r.term,
        "is_leader": r.is_leader,
        // "stopped" (with the reason): the Raft core quit on a fatal error, e.g. a full disk.
        "raft_state": if s.raft_stopped.is_some() { "stopped" } else { "running" },
        "raft_error": s.raft_stopped,
        "log": log_json(r),
        // Replication (matched_index, lag) is known on the leader only.
        "replication_known": r.is_leader,
        "members": members_json(s.leader.as_ref(), &s.member_details),
        // Each quorum queue's own Raft group on this node, the same figures.
        "quorum_queues": queues,
    })
}

/// `GET /api/warren/cluster`: members, running members and leader as this node sees them
/// (404 when the node is not clustered).
async fn cluster_status(State(node): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Json<Value>> {
    caller.require_monitor()?;
    match node.cluster_status().await {
        Some(s) => Ok(Json(cluster_json(&s))),
        None => Err(ApiError::not_found()),
    }
}

/// `PUT /api/warren/cluster/nodes/{NAME@HOST:PORT}`: add a running node to the cluster
/// (`warrenctl join_cluster`).
async fn cluster_join(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<axum::http::StatusCode> {
    caller.require_admin()?;
    node.cluster_change(name, true).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// `DELETE /api/warren/cluster/nodes/{NAME@HOST:PORT}`: remove a member
/// (`warrenctl forget_cluster_node`).
async fn cluster_forget(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<axum::http::StatusCode> {
    caller.require_admin()?;
    node.cluster_change(name, false).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

async fn node(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    caller.require_monitor()?;
    let info = node.info();
    if name != info.name {
        // Another member: what `/api/nodes` says of it (404 for a name that is none).
        let status = node.cluster_status().await;
        return match status.filter(|s| s.members.contains(&name)) {
            Some(s) => Ok(Json(member_json(&name, s.running.contains(&name)))),
            None => Err(ApiError::not_found()),
        };
    }
    let mut j = node_json(&info);
    if q.get("memory").is_some_and(|v| v == "true") {
        j["memory"] = memory_json(node.memory_breakdown());
    }
    Ok(Json(j))
}

/// `GET /api/nodes/{node}/memory`: RabbitMQ's memory breakdown, `{"memory": {...}}`.
async fn node_memory(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_monitor()?;
    if name != node.info().name {
        return Err(ApiError::not_found());
    }
    Ok(Json(json!({ "memory": memory_json(node.memory_breakdown()) })))
}

/// RabbitMQ's categories, with what Warren accounts: message bodies in RAM are `binary`
/// (RabbitMQ's refc binaries hold them too), connections' read buffers are
/// `connection_readers`, their write buffers (or unsent bytes, if more) `connection_writers`, the rest of what is allocated is `other_proc`, and what RSS holds
/// beyond that (pages the allocator keeps for reuse) is `allocated_unused`.
fn memory_json(b: Option<crate::node::MemoryBreakdown>) -> Value {
    let Some(b) = b else { return json!("not_available") };
    let other =
        b.allocated_bytes.saturating_sub(b.message_bytes + b.connection_writer_bytes + b.connection_reader_bytes);
    json!({
        "connection_readers": b.connection_reader_bytes,
        "connection_writers": b.connection_writer_bytes,
        "connection_channels": 0,
        "connection_other": 0,
        "queue_procs": 0,
        "queue_slave_procs": 0,
        "quorum_queue_procs": 0,
        "quorum_queue_dlx_procs": 0,
        "stream_queue_procs": 0,
        "stream_queue_replica_reader_procs": 0,
        "stream_queue_coordinator_procs": 0,
        "plugins": 0,
        "metadata_store": 0,
        "other_proc": other,
        "metrics": 0,
        "mgmt_db": 0,
        "mnesia": 0,
        "quorum_ets": 0,
        "metadata_store_ets": 0,
        "other_ets": 0,
        "binary": b.message_bytes,
        "msg_index": 0,
        "code": 0,
        "atom": 0,
        "other_system": 0,
        "allocated_unused": b.rss_bytes.saturating_sub(b.allocated_bytes),
        "reserved_unallocated": 0,
        "strategy": b.strategy,
        "total": {"erlang": b.allocated_bytes, "rss": b.rss_bytes, "allocated": b.allocated_bytes},
    })
}

/// Liveness: the HTTP side runs.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: no resource alarm is in force (publishers would be blocked).
pub async fn readyz(State(node): State<AppState>) -> Result<Json<Value>, ApiError> {
    let info = node.info();
    if info.mem_alarm || info.disk_free_alarm {
        let mut e = ApiError::internal("resource alarm in effect");
        e.status = axum::http::StatusCode::SERVICE_UNAVAILABLE;
        e.error = "failed".into();
        return Err(e);
    }
    Ok(Json(json!({"status": "ok"})))
}
