//! Policies, operator policies, vhost and user limits, runtime and global parameters:
//! `/api/policies`, `/api/operator-policies`, `/api/vhost-limits`, `/api/user-limits`,
//! `/api/parameters`, `/api/global-parameters`.
//!
//! Policies: `policymaker` in the vhosts it has permissions in, or `administrator`;
//! operator policies and limits: `administrator` (as RabbitMQ). `monitoring` reads them all.

use access::directory::{Change, Directory};
use access::model::{ApplyTo, Policy, UserLimits, VhostLimits};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::users::{can_see_vhost, change, missing_key, parse_body, put_status, require_vhost_visible};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::routes::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/policies", get(|s, c| list_all(s, c, Kind::Policy)))
        .route("/api/policies/{vhost}", get(|s, c, p| list_in(s, c, p, Kind::Policy)))
        .route(
            "/api/policies/{vhost}/{name}",
            get(|s, c, p| get_one(s, c, p, Kind::Policy))
                .put(|s, c, p, b| put_one(s, c, p, b, Kind::Policy))
                .delete(|s, c, p| delete_one(s, c, p, Kind::Policy)),
        )
        .route("/api/operator-policies", get(|s, c| list_all(s, c, Kind::Operator)))
        .route("/api/operator-policies/{vhost}", get(|s, c, p| list_in(s, c, p, Kind::Operator)))
        .route(
            "/api/operator-policies/{vhost}/{name}",
            get(|s, c, p| get_one(s, c, p, Kind::Operator))
                .put(|s, c, p, b| put_one(s, c, p, b, Kind::Operator))
                .delete(|s, c, p| delete_one(s, c, p, Kind::Operator)),
        )
        .route("/api/vhost-limits", get(all_vhost_limits))
        .route("/api/vhost-limits/{vhost}", get(vhost_limits))
        .route("/api/vhost-limits/{vhost}/{name}", axum::routing::put(put_vhost_limit).delete(delete_vhost_limit))
        .route("/api/user-limits", get(all_user_limits))
        .route("/api/user-limits/{user}", get(user_limits))
        .route("/api/user-limits/{user}/{name}", axum::routing::put(put_user_limit).delete(delete_user_limit))
        .route("/api/parameters", get(no_parameters))
        .route("/api/parameters/{component}", get(no_parameters))
        .route("/api/parameters/{component}/{vhost}", get(parameters_in))
        .route(
            "/api/parameters/{component}/{vhost}/{name}",
            get(no_parameter).put(unsupported_parameter).delete(no_parameter),
        )
        .route("/api/global-parameters", get(global_parameters))
        .route("/api/global-parameters/{name}", get(global_parameter).put(put_global_parameter))
}

// ---- policies and operator policies ----

#[derive(Clone, Copy)]
enum Kind {
    Policy,
    Operator,
}

impl Kind {
    fn list<'a>(self, dir: &'a Directory, vhost: &'a str) -> Vec<&'a Policy> {
        match self {
            Kind::Policy => dir.policies(vhost).collect(),
            Kind::Operator => dir.operator_policies(vhost).collect(),
        }
    }

    fn find<'a>(self, dir: &'a Directory, vhost: &'a str, name: &str) -> Option<&'a Policy> {
        self.list(dir, vhost).into_iter().find(|p| p.name == name)
    }

    /// May `caller` read this kind of policy in `vhost`?
    fn can_read(self, caller: &Caller, dir: &Directory, vhost: &str) -> bool {
        match self {
            Kind::Policy => caller.is_monitor() || (caller.is_policymaker() && can_see_vhost(caller, dir, vhost)),
            Kind::Operator => caller.is_monitor(),
        }
    }

    /// Refuse a write `caller` may not make in `vhost`.
    fn require_write(self, caller: &Caller, dir: &Directory, vhost: &str) -> ApiResult<()> {
        match self {
            Kind::Policy => {
                caller.require_policymaker()?;
                if caller.is_admin() || dir.permission(caller.name(), vhost).is_some() {
                    Ok(())
                } else {
                    Err(ApiError::forbidden("Access refused."))
                }
            }
            Kind::Operator => caller.require_admin(),
        }
    }

    /// Refuse a listing `caller` may not see at all.
    fn require_list(self, caller: &Caller) -> ApiResult<()> {
        match self {
            Kind::Policy if caller.is_monitor() => Ok(()),
            Kind::Policy => caller.require_policymaker(),
            Kind::Operator => caller.require_monitor(),
        }
    }
}

fn policy_json(p: &Policy) -> Value {
    json!({
        "vhost": p.vhost, "name": p.name, "pattern": p.pattern, "apply-to": p.apply_to,
        "definition": p.definition, "priority": p.priority,
    })
}

async fn list_all(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    kind: Kind,
) -> ApiResult<Json<Value>> {
    kind.require_list(&caller)?;
    let dir = node.directory();
    let mut out = Vec::new();
    for v in dir.vhosts().filter(|v| kind.can_read(&caller, &dir, &v.name)) {
        out.extend(kind.list(&dir, &v.name).into_iter().map(policy_json));
    }
    Ok(Json(Value::Array(out)))
}

async fn list_in(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
    kind: Kind,
) -> ApiResult<Json<Value>> {
    kind.require_list(&caller)?;
    let dir = node.directory();
    dir.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    if !kind.can_read(&caller, &dir, &vhost) {
        return Err(ApiError::forbidden("Access refused."));
    }
    Ok(Json(kind.list(&dir, &vhost).into_iter().map(policy_json).collect()))
}

async fn get_one(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    kind: Kind,
) -> ApiResult<Json<Value>> {
    kind.require_list(&caller)?;
    let dir = node.directory();
    dir.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    if !kind.can_read(&caller, &dir, &vhost) {
        return Err(ApiError::forbidden("Access refused."));
    }
    kind.find(&dir, &vhost, &name).map(|p| Json(policy_json(p))).ok_or_else(ApiError::not_found)
}

#[derive(Deserialize)]
struct PolicyBody {
    pattern: Option<String>,
    definition: Option<Map<String, Value>>,
    #[serde(default)]
    priority: Option<Value>,
    #[serde(rename = "apply-to", default)]
    apply_to: Option<String>,
}

/// RabbitMQ accepts the priority as a number or a numeric string.
fn priority(v: Option<Value>) -> ApiResult<i64> {
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| ApiError::bad_request("priority must be an integer")),
        Some(Value::String(s)) => s.trim().parse().map_err(|_| ApiError::bad_request("priority must be an integer")),
        Some(_) => Err(ApiError::bad_request("priority must be an integer")),
    }
}

fn apply_to(s: Option<String>) -> ApiResult<ApplyTo> {
    match s.as_deref() {
        None | Some("") => Ok(ApplyTo::All),
        Some(t) => serde_json::from_value(Value::String(t.to_owned())).map_err(|_| {
            ApiError::bad_request(format!(
                "apply-to '{t}' is not one of all, queues, classic_queues, quorum_queues, streams, exchanges"
            ))
        }),
    }
}

async fn put_one(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
    kind: Kind,
) -> ApiResult<StatusCode> {
    let dir = node.directory();
    kind.require_write(&caller, &dir, &vhost)?;
    dir.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    let b: PolicyBody = parse_body(&body)?;
    let p = Policy {
        pattern: b.pattern.ok_or_else(|| missing_key("pattern"))?,
        definition: b.definition.ok_or_else(|| missing_key("definition"))?,
        priority: priority(b.priority)?,
        apply_to: apply_to(b.apply_to)?,
        vhost,
        name,
    };
    let existed = kind.find(&dir, &p.vhost, &p.name).is_some();
    let c = match kind {
        Kind::Policy => Change::PutPolicy(p),
        Kind::Operator => Change::PutOperatorPolicy(p),
    };
    change(&node, c)?;
    Ok(put_status(existed))
}

async fn delete_one(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    kind: Kind,
) -> ApiResult<StatusCode> {
    let dir = node.directory();
    kind.require_write(&caller, &dir, &vhost)?;
    kind.find(&dir, &vhost, &name).ok_or_else(ApiError::not_found)?;
    let c = match kind {
        Kind::Policy => Change::DeletePolicy { vhost, name },
        Kind::Operator => Change::DeleteOperatorPolicy { vhost, name },
    };
    change(&node, c)?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- limits ----
//
// As RabbitMQ (`rabbit_mgmt_wm_limit`, `rabbit_mgmt_wm_user_limit`: cowboy resources that
// always exist): PUT answers 204 whether the limit was set before or not, and DELETE of a
// limit that is not set is a 204 too (RabbitMQ's clear_limit deletes a missing key).

/// A limit's value from `{"value": N}`: a count, or -1 (any negative number, as
/// RabbitMQ) for no limit.
fn limit_value(body: &[u8]) -> ApiResult<Option<u64>> {
    #[derive(Deserialize)]
    struct LimitBody {
        value: Option<Value>,
    }
    let b: LimitBody = parse_body(body)?;
    let v = b.value.ok_or_else(|| missing_key("value"))?;
    let n = match &v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    match n {
        Some(n) if n < 0 => Ok(None),
        Some(n) => Ok(Some(n as u64)),
        None => Err(ApiError::bad_request(format!("limit value {v} is not an integer"))),
    }
}

fn vhost_limits_json(vhost: &str, l: &VhostLimits) -> Value {
    json!({"vhost": vhost, "value": l})
}

fn user_limits_json(user: &str, l: &UserLimits) -> Value {
    json!({"user": user, "value": l})
}

fn user_limits_empty(l: &UserLimits) -> bool {
    l.max_connections.is_none() && l.max_channels.is_none()
}

async fn all_vhost_limits(State(node): State<AppState>, Extension(caller): Extension<Caller>) -> Json<Value> {
    let dir = node.directory();
    let visible = dir.vhosts().filter(|v| !v.limits.is_empty() && can_see_vhost(&caller, &dir, &v.name));
    Json(visible.map(|v| vhost_limits_json(&v.name, &v.limits)).collect())
}

async fn vhost_limits(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    let dir = node.directory();
    require_vhost_visible(&caller, &dir, &vhost)?;
    let v = dir.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    let out = if v.limits.is_empty() { Vec::new() } else { vec![vhost_limits_json(&v.name, &v.limits)] };
    Ok(Json(Value::Array(out)))
}

/// The slot of a vhost limit named in the path.
fn vhost_limit_slot<'a>(l: &'a mut VhostLimits, name: &str) -> ApiResult<&'a mut Option<u64>> {
    match name {
        "max-connections" => Ok(&mut l.max_connections),
        "max-queues" => Ok(&mut l.max_queues),
        _ => Err(ApiError::bad_request(format!(
            "unknown vhost limit '{name}': Warren supports max-connections and max-queues"
        ))),
    }
}

fn user_limit_slot<'a>(l: &'a mut UserLimits, name: &str) -> ApiResult<&'a mut Option<u64>> {
    match name {
        "max-connections" => Ok(&mut l.max_connections),
        "max-channels" => Ok(&mut l.max_channels),
        _ => Err(ApiError::bad_request(format!(
            "unknown user limit '{name}': Warren supports max-connections and max-channels"
        ))),
    }
}

async fn put_vhost_limit(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let mut limits = node.directory().vhost(&vhost).ok_or_else(ApiError::not_found)?.limits.clone();
    *vhost_limit_slot(&mut limits, &name)? = limit_value(&body)?;
    change(&node, Change::SetVhostLimits { vhost, limits })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_vhost_limit(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let mut limits = node.directory().vhost(&vhost).ok_or_else(ApiError::not_found)?.limits.clone();
    if vhost_limit_slot(&mut limits, &name)?.take().is_none() {
        return Ok(StatusCode::NO_CONTENT);
    }
    change(&node, Change::SetVhostLimits { vhost, limits })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn all_user_limits(State(node): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Json<Value>> {
    caller.require_monitor()?;
    let dir = node.directory();
    let with_limits = dir.users().filter(|u| !user_limits_empty(&u.limits));
    Ok(Json(with_limits.map(|u| user_limits_json(&u.name, &u.limits)).collect()))
}

/// A user's own limits are visible to it; others' need `monitoring`.
async fn user_limits(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    if user != caller.name() {
        caller.require_monitor()?;
    }
    let dir = node.directory();
    let u = dir.user(&user).ok_or_else(ApiError::not_found)?;
    let out = if user_limits_empty(&u.limits) { Vec::new() } else { vec![user_limits_json(&u.name, &u.limits)] };
    Ok(Json(Value::Array(out)))
}

async fn put_user_limit(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((user, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let mut limits = node.directory().user(&user).ok_or_else(ApiError::not_found)?.limits.clone();
    *user_limit_slot(&mut limits, &name)? = limit_value(&body)?;
    change(&node, Change::SetUserLimits { user, limits })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_user_limit(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((user, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let mut limits = node.directory().user(&user).ok_or_else(ApiError::not_found)?.limits.clone();
    if user_limit_slot(&mut limits, &name)?.take().is_none() {
        return Ok(StatusCode::NO_CONTENT);
    }
    change(&node, Change::SetUserLimits { user, limits })?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- runtime and global parameters ----

/// Warren has none of the components runtime parameters configure (federation, shovels...):
/// every listing is empty.
async fn no_parameters(Extension(caller): Extension<Caller>) -> ApiResult<Json<Value>> {
    caller.require_policymaker().or_else(|_| caller.require_monitor())?;
    Ok(Json(json!([])))
}

async fn parameters_in(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_component, vhost)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_policymaker().or_else(|_| caller.require_monitor())?;
    node.directory().vhost(&vhost).ok_or_else(ApiError::not_found)?;
    Ok(Json(json!([])))
}

async fn no_parameter() -> ApiError {
    ApiError::not_found()
}

async fn unsupported_parameter(Path((component, _, _)): Path<(String, String, String)>) -> ApiError {
    ApiError::bad_request(format!("component '{component}' is not supported by Warren"))
}

/// The one global parameter Warren has: its cluster name (the node name).
fn global_params(node: &AppState) -> Vec<Value> {
    vec![json!({"name": "cluster_name", "value": node.info().cluster_name})]
}

async fn global_parameters(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    caller.require_admin().or_else(|_| caller.require_monitor())?;
    Ok(Json(Value::Array(global_params(&node))))
}

async fn global_parameter(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin().or_else(|_| caller.require_monitor())?;
    global_params(&node).into_iter().find(|p| p["name"] == name).map(Json).ok_or_else(ApiError::not_found)
}

async fn put_global_parameter(Extension(caller): Extension<Caller>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    if name == "cluster_name" {
        return Err(ApiError::bad_request("Warren's cluster name is its node name and cannot be changed"));
    }
    Err(ApiError::bad_request(format!("global parameter '{name}' is not supported by Warren")))
}
