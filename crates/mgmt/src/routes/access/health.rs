//! `/api/health/checks/*` and `/api/aliveness-test/{vhost}`: 200 `{"status":"ok"}` when
//! the check passes, 503 `{"status":"failed","reason":...}` (plus the check's details)
//! when it does not, with RabbitMQ's texts. The alarm checks are this node's (cluster-wide
//! and local agree); `node-is-quorum-critical` asks the cluster's membership.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{Value, json};

use super::users::{can_see_vhost, require_vhost_visible};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::node::{CertificateFile, ClusterStatus, ListenerCertificates, NodeInfo};
use crate::routes::AppState;

const DAY_SECONDS: i64 = 86_400;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/aliveness-test/{vhost}", get(aliveness))
        .route("/api/health/checks/alarms", get(|s| alarms(s, "There are alarms in effect in the cluster")))
        .route("/api/health/checks/local-alarms", get(|s| alarms(s, "There are alarms in effect on the node")))
        .route("/api/health/checks/virtual-hosts", get(virtual_hosts))
        .route("/api/health/checks/port-listener/{port}", get(port_listener))
        .route("/api/health/checks/protocol-listener/{protocol}", get(protocol_listener))
        .route("/api/health/checks/node-is-quorum-critical", get(node_is_quorum_critical))
        .route("/api/health/checks/node-is-mirror-sync-critical", get(|| async { ok() }))
        .route("/api/health/checks/certificate-expiration/{within}/{unit}", get(certificate_expiration))
}

/// The checks RabbitMQ answers without credentials.
pub fn public_routes() -> Router<AppState> {
    Router::new()
        // The API answering means the node is up and serving.
        .route("/api/health/checks/is-in-service", get(|| async { ok() }))
        .route("/api/health/checks/ready-to-serve-clients", get(ready_to_serve_clients))
        .route("/api/health/checks/below-node-connection-limit", get(below_node_connection_limit))
}

fn ok() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// A failed check: 503 with `{"status":"failed","reason":...}` and `details`' fields.
fn failed(reason: &str, details: Value) -> Response {
    let mut body = json!({"status": "failed", "reason": reason});
    if let (Some(b), Value::Object(d)) = (body.as_object_mut(), details) {
        b.extend(d);
    }
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// RabbitMQ's aliveness test has been a no-op since 4.1: it answers ok when the caller may
/// use the vhost.
async fn aliveness(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    let dir = node.directory();
    require_vhost_visible(&caller, &dir, &vhost)?;
    if node.vhost(&vhost).is_none() {
        return Err(ApiError::internal(format!("vhost '{vhost}' is not running")));
    }
    Ok(ok())
}

/// Whether shutting `s.node` down would leave the metadata group without a majority of its
/// voters running (as this node sees them: members answering its pings, itself when its
/// Raft core runs): no declares, deletes or access changes, and no publishes to quorum
/// queues without a group of their own (declared before `quorum_queue_groups`).
fn meta_critical(s: &ClusterStatus) -> bool {
    let voters: Vec<_> = s.member_details.iter().filter(|m| m.voter).collect();
    let majority = voters.len() / 2 + 1;
    let left = voters.iter().filter(|m| m.running && m.name != s.node).count();
    left < majority
}

/// Whether shutting `s.node` down would leave a quorum queue whose voters are `voters`
/// without a majority of them running (the members answering pings now: `s.running`).
fn queue_critical(s: &ClusterStatus, voters: &[String]) -> bool {
    if !voters.contains(&s.node) {
        return false;
    }
    let left = voters.iter().filter(|m| **m != s.node && s.running.contains(m)).count();
    left < voters.len() / 2 + 1
}

/// RabbitMQ's `rabbitmq-diagnostics check_if_node_is_quorum_critical`, for rolling restarts:
/// 503 with the quorum queues (of the vhosts the caller sees) and the metadata store that
/// would lose their quorum if this node stopped now. Each quorum queue counts its own
/// voters (`x-quorum-initial-group-size`): a queue this node is no voter of is not critical.
async fn node_is_quorum_critical(State(node): State<AppState>, Extension(caller): Extension<Caller>) -> Response {
    let status = node.cluster_status().await;
    let Some(s) = status.filter(|s| s.member_details.iter().filter(|m| m.voter).count() > 1) else {
        return Json(json!({"status": "ok", "reason": "single node cluster"})).into_response();
    };
    let mut queues = Vec::new();
    if meta_critical(&s) {
        // The metadata log is cluster-wide, not a vhost's: listed for every caller
        // (RabbitMQ lists its metadata store the same way, as a `process`).
        queues.push(json!({
            "name": "warren_meta",
            "readable_name": "the cluster's metadata log (users, vhosts, policies, exchanges, bindings, quorum queues)",
            "virtual_host": "(not applicable)",
            "type": "process",
        }));
    }
    let dir = node.directory();
    for vh in node.vhosts() {
        if !can_see_vhost(&caller, &dir, &vh.name) {
            continue;
        }
        for q in vh.queues() {
            if q.declared_args.queue_type != broker::args::QueueType::Quorum {
                continue;
            }
            if q.placement().is_some_and(|p| queue_critical(&s, &p.members)) {
                queues.push(json!({
                    "name": q.name,
                    "readable_name": format!("queue '{}' in vhost '{}'", q.name, vh.name),
                    "virtual_host": vh.name,
                    "type": "quorum",
                }));
            }
        }
    }
    if queues.is_empty() {
        return ok().into_response();
    }
    failed(
        "There are quorum queues that would lose their quorum if the target node is shut down",
        json!({"queues": queues}),
    )
}

async fn alarms(State(node): State<AppState>, reason: &'static str) -> Response {
    let info = node.info();
    let mut alarms = Vec::new();
    if info.mem_alarm {
        alarms.push(json!({"node": info.name, "resource": "memory"}));
    }
    if info.disk_free_alarm {
        alarms.push(json!({"node": info.name, "resource": "disk"}));
    }
    if alarms.is_empty() { ok().into_response() } else { failed(reason, json!({"alarms": alarms})) }
}

/// Every vhost in the directory has its broker side.
async fn virtual_hosts(State(node): State<AppState>) -> Response {
    let down: Vec<String> =
        node.directory().vhosts().filter(|v| node.vhost(&v.name).is_none()).map(|v| v.name.clone()).collect();
    if down.is_empty() {
        ok().into_response()
    } else {
        failed("Some virtual hosts are down", json!({"virtual-hosts": down}))
    }
}

async fn port_listener(State(node): State<AppState>, Path(port): Path<String>) -> Response {
    let Ok(port) = port.parse::<u16>() else {
        return ApiError::bad_request("Invalid port").into_response();
    };
    let info = node.info();
    if info.listeners.iter().any(|l| l.port == port) {
        Json(json!({"status": "ok", "port": port})).into_response()
    } else {
        let ports: Vec<u16> = info.listeners.iter().map(|l| l.port).collect();
        failed("No active listener", json!({"missing": port, "ports": ports}))
    }
}

/// RabbitMQ's aliases for the protocols Warren serves; anything else is taken as is.
fn normalize_protocol(p: &str) -> String {
    let p = p.to_lowercase();
    let canonical = match p.as_str() {
        "amqp091" | "amqp0.9.1" | "amqp0-9-1" | "amqp0_9_1" | "amqp10" | "amqp1.0" | "amqp1-0" | "amqp1_0" => "amqp",
        "amqps" => "amqp/ssl",
        "http1" | "http1.1" | "http_api" | "management" | "management_ui" | "ui" => "http",
        "prometheus" => "http/prometheus",
        _ => return p,
    };
    canonical.to_owned()
}

async fn protocol_listener(State(node): State<AppState>, Path(protocol): Path<String>) -> Response {
    let protocol = normalize_protocol(&protocol);
    let info = node.info();
    if info.listeners.iter().any(|l| l.protocol == protocol) {
        Json(json!({"status": "ok", "protocol": protocol})).into_response()
    } else {
        let protocols: Vec<&str> = info.listeners.iter().map(|l| l.protocol.as_str()).collect();
        failed("No active listener", json!({"missing": protocol, "protocols": protocols}))
    }
}

fn amqp_listening(info: &NodeInfo) -> bool {
    info.listeners.iter().any(|l| l.protocol == "amqp" || l.protocol == "amqp/ssl")
}

async fn ready_to_serve_clients(State(node): State<AppState>) -> Response {
    if !amqp_listening(&node.info()) {
        return failed("no active listeners for AMQP/AMQPS", json!({}));
    }
    let connections = node.connections().len() as u64;
    match node.connection_max() {
        Some(max) if connections >= max => {
            failed("node connection limit is reached", json!({"connections": connections}))
        }
        _ => ok().into_response(),
    }
}

async fn below_node_connection_limit(State(node): State<AppState>) -> Response {
    let connections = node.connections().len() as u64;
    match node.connection_max() {
        Some(max) if connections >= max => {
            failed("node connection limit is reached", json!({"limit": max, "connections": connections}))
        }
        Some(max) => Json(json!({"status": "ok", "limit": max, "connections": connections})).into_response(),
        None => Json(json!({"status": "ok", "limit": "infinity", "connections": connections})).into_response(),
    }
}

/// `{within}/{unit}` in seconds (RabbitMQ's month is a twelfth of 365 days).
fn expiration_window(within: &str, unit: &str) -> Result<i64, &'static str> {
    let n: i64 = within.parse().map_err(|_| "Invalid expiration value.")?;
    let unit_seconds = match unit.to_lowercase().as_str() {
        "days" => DAY_SECONDS,
        "weeks" => 7 * DAY_SECONDS,
        "months" => 365 * DAY_SECONDS / 12,
        "years" => 365 * DAY_SECONDS,
        _ => return Err("Time unit not recognised. Supported units: days, weeks, months, years."),
    };
    n.checked_mul(unit_seconds).ok_or("Invalid expiration value.")
}

/// `YYYY-MM-DD H:MM:SS` (UTC), RabbitMQ's format for expiry dates.
fn format_utc(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(DAY_SECONDS), unix.rem_euclid(DAY_SECONDS));
    let (year, month, day) = crate::routes::civil_from_days(days);
    format!("{year}-{month:02}-{day:02} {}:{:02}:{:02}", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// The certificates of `file` that expire before `deadline`, or why it cannot be read;
/// None when none expires.
fn expiring(file: Option<&CertificateFile>, deadline: i64) -> Option<Value> {
    match &file?.not_after {
        Err(why) => Some(json!({"error": why})),
        Ok(dates) => {
            let soon: Vec<String> = dates.iter().filter(|d| **d < deadline).map(|d| format_utc(*d)).collect();
            if soon.is_empty() { None } else { Some(json!(soon)) }
        }
    }
}

fn listener_expiring(node_name: &str, l: &ListenerCertificates, deadline: i64) -> Option<Value> {
    let cert = expiring(Some(&l.certfile), deadline);
    let ca = expiring(l.cacertfile.as_ref(), deadline);
    if cert.is_none() && ca.is_none() {
        return None;
    }
    Some(json!({
        "node": node_name,
        "protocol": l.listener.protocol,
        "interface": l.listener.ip_address,
        "port": l.listener.port,
        "certfile": l.certfile.path,
        "cacertfile": l.cacertfile.as_ref().map(|c| c.path.as_str()).unwrap_or(""),
        "certfile_expires_on": cert.unwrap_or(json!([])),
        "cacertfile_expires_on": ca.unwrap_or(json!([])),
    }))
}

async fn certificate_expiration(
    State(node): State<AppState>,
    Path((within, unit)): Path<(String, String)>,
) -> Response {
    let window = match expiration_window(&within, &unit) {
        Ok(w) => w,
        Err(why) => return ApiError::bad_request(why).into_response(),
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let deadline = now.saturating_add(window);
    let name = node.info().name;
    let expired: Vec<Value> =
        node.listener_certificates().iter().filter_map(|l| listener_expiring(&name, l, deadline)).collect();
    if expired.is_empty() { ok().into_response() } else { failed("Certificates expiring", json!({"expired": expired})) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `me` among members (name, voter, running).
    fn cluster(me: &str, members: &[(&str, bool, bool)]) -> ClusterStatus {
        use crate::node::ClusterMember;
        ClusterStatus {
            node: me.into(),
            member_details: members
                .iter()
                .map(|&(n, voter, running)| ClusterMember { name: n.into(), voter, running, replication: None })
                .collect(),
            ..ClusterStatus::default()
        }
    }

    #[test]
    fn a_node_is_quorum_critical_when_the_others_running_are_not_a_majority() {
        let all_up = [("a", true, true), ("b", true, true), ("c", true, true)];
        assert!(!meta_critical(&cluster("a", &all_up)), "two of three remain");
        let c_down = [("a", true, true), ("b", true, true), ("c", true, false)];
        assert!(meta_critical(&cluster("a", &c_down)), "one of three would remain");
        // A learner being added does not count toward the quorum.
        let learner = [("a", true, true), ("b", true, true), ("c", true, false), ("d", false, true)];
        assert!(meta_critical(&cluster("a", &learner)));
        // Five voters, two down: stopping a third leaves two of five.
        let five = [("a", true, true), ("b", true, true), ("c", true, true), ("d", true, false), ("e", true, false)];
        assert!(meta_critical(&cluster("a", &five)));
        let five_one_down =
            [("a", true, true), ("b", true, true), ("c", true, true), ("d", true, true), ("e", true, false)];
        assert!(!meta_critical(&cluster("a", &five_one_down)));
        // A node whose Raft core stopped (not running itself) is not critical: it already
        // counts for nothing.
        let stopped = [("a", true, false), ("b", true, true), ("c", true, true)];
        assert!(!meta_critical(&cluster("a", &stopped)));
    }

    #[test]
    fn a_node_is_critical_for_a_queue_only_among_its_own_voters() {
        let mut s = cluster("a", &[]);
        s.running = vec!["a".into(), "b".into(), "c".into(), "d".into()];
        let voters = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // One voter: its node always is; another node never is.
        assert!(queue_critical(&s, &voters(&["a"])));
        assert!(!queue_critical(&s, &voters(&["b"])));
        // Two voters: stopping one leaves one of two, no majority.
        assert!(queue_critical(&s, &voters(&["a", "b"])));
        // Three voters all running: two remain.
        assert!(!queue_critical(&s, &voters(&["a", "b", "c"])));
        // Three voters, one not running: stopping a voter leaves one of three.
        s.running = vec!["a".into(), "b".into(), "d".into()];
        assert!(queue_critical(&s, &voters(&["a", "b", "c"])));
        // ... but a node that is no voter of it (a learner) is not critical for it.
        s.node = "d".into();
        assert!(!queue_critical(&s, &voters(&["a", "b", "c"])));
    }

    #[test]
    fn dates_format_as_rabbitmq_does() {
        assert_eq!(format_utc(0), "1970-01-01 0:00:00");
        assert_eq!(format_utc(951_782_400), "2000-02-29 0:00:00");
        assert_eq!(format_utc(1_767_225_599), "2025-12-31 23:59:59");
    }

    #[test]
    fn expiration_windows_follow_rabbitmq_units() {
        assert_eq!(expiration_window("2", "weeks"), Ok(14 * DAY_SECONDS));
        assert_eq!(expiration_window("1", "Months"), Ok(365 * DAY_SECONDS / 12));
        assert_eq!(expiration_window("x", "days"), Err("Invalid expiration value."));
        assert!(expiration_window("1", "fortnights").unwrap_err().starts_with("Time unit not recognised"));
    }

    #[test]
    fn protocol_aliases_map_to_listener_names() {
        assert_eq!(normalize_protocol("AMQP091"), "amqp");
        assert_eq!(normalize_protocol("amqps"), "amqp/ssl");
        assert_eq!(normalize_protocol("http/prometheus"), "http/prometheus");
        assert_eq!(normalize_protocol("mqtt"), "mqtt");
    }
}
