//! Users, vhosts, permissions and topic permissions: `/api/users`, `/api/vhosts`,
//! `/api/permissions`, `/api/topic-permissions`, `/api/auth/hash_password`.
//!
//! Reads come from [`Node::directory`]; every write is one [`Change`] through
//! [`Node::change`] (validated, logged and carried out by the node). Users, permissions and
//! vhost writes need `administrator`; a user without `monitoring` sees only the vhosts it
//! has permissions in.

use access::directory::{Change, Directory};
use access::model::{HashingAlgorithm, Permission, TopicPermission, User, UserLimits, Vhost};
use access::password;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::node::Node;
use crate::routes::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/users", get(list_users))
        .route("/api/users/without-permissions", get(users_without_permissions))
        .route("/api/users/bulk-delete", post(bulk_delete_users))
        .route("/api/users/{user}", get(get_user).put(put_user).delete(delete_user))
        .route("/api/users/{user}/permissions", get(user_permissions))
        .route("/api/users/{user}/topic-permissions", get(user_topic_permissions))
        .route("/api/auth/hash_password/{password}", get(hash_password))
        .route("/api/vhosts", get(list_vhosts))
        .route("/api/vhosts/{vhost}", get(get_vhost).put(put_vhost).delete(delete_vhost))
        .route("/api/vhosts/{vhost}/permissions", get(vhost_permissions))
        .route("/api/vhosts/{vhost}/topic-permissions", get(vhost_topic_permissions))
        .route("/api/permissions", get(list_permissions))
        .route("/api/permissions/{vhost}/{user}", get(get_permission).put(put_permission).delete(delete_permission))
        .route("/api/topic-permissions", get(list_topic_permissions))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(get_topic_permissions).put(put_topic_permission).delete(delete_topic_permissions),
        )
}

// ---- helpers shared by this group's modules ----

/// Parse a request body as JSON (whatever its content type says: curl's `-d` sends
/// form-urlencoded). An empty body parses as `{}`.
pub(super) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// RabbitMQ takes tags as a list or a comma-separated string.
pub(super) fn parse_tags(v: &Value) -> ApiResult<Vec<String>> {
    let words: Vec<String> = match v {
        Value::String(s) => s.split(',').map(str::to_owned).collect(),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned).ok_or_else(|| ApiError::bad_request("tags must be strings")))
            .collect::<ApiResult<_>>()?,
        Value::Null => Vec::new(),
        _ => return Err(ApiError::bad_request("tags must be a list or a comma-separated string")),
    };
    Ok(words.iter().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect())
}

/// 201 for a PUT that created the object, 204 for one that replaced it.
pub(super) fn put_status(existed: bool) -> StatusCode {
    if existed { StatusCode::NO_CONTENT } else { StatusCode::CREATED }
}

/// May `caller` see objects in `vhost`? Monitors see every vhost; others those they have
/// permissions in.
pub(super) fn can_see_vhost(caller: &Caller, dir: &Directory, vhost: &str) -> bool {
    caller.is_monitor() || dir.permission(caller.name(), vhost).is_some()
}

/// 404 for a vhost that does not exist, 401 "Access refused." for one the caller cannot see.
pub(super) fn require_vhost_visible(caller: &Caller, dir: &Directory, vhost: &str) -> ApiResult<()> {
    if dir.vhost(vhost).is_none() {
        return Err(ApiError::not_found());
    }
    if can_see_vhost(caller, dir, vhost) { Ok(()) } else { Err(ApiError::forbidden("Access refused.")) }
}

/// Apply one change through the node.
pub(super) fn change(node: &AppState, c: Change) -> ApiResult<()> {
    Ok(node.change(c)?)
}

/// RabbitMQ's name for a missing mandatory key.
pub(super) fn missing_key(key: &str) -> ApiError {
    ApiError::bad_request(format!("key_missing: {key}"))
}

// ---- users ----

fn user_json(u: &User) -> Value {
    json!({
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": u.hashing_algorithm.name(),
        "tags": u.tags,
        "limits": u.limits,
    })
}

async fn list_users(State(node): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    Ok(Json(node.directory().users().map(user_json).collect()))
}

async fn users_without_permissions(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let dir = node.directory();
    let lonely = dir.users().filter(|u| !dir.permissions().any(|p| p.user == u.name)).map(user_json).collect();
    Ok(Json(lonely))
}

async fn get_user(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    node.directory().user(&name).map(|u| Json(user_json(u))).ok_or_else(ApiError::not_found)
}

#[derive(Deserialize)]
struct UserBody {
    password: Option<String>,
    password_hash: Option<String>,
    hashing_algorithm: Option<String>,
    #[serde(default)]
    tags: Option<Value>,
}

/// The hashing algorithm a PUT names (RabbitMQ's module names), or sha256.
fn hashing_algorithm(name: Option<&str>) -> ApiResult<HashingAlgorithm> {
    match name {
        None | Some("") => Ok(HashingAlgorithm::Sha256),
        Some(n) => serde_json::from_value(Value::String(n.to_owned())).map_err(|_| {
            ApiError::bad_request(format!(
                "unknown hashing_algorithm '{n}': use rabbit_password_hashing_sha256, \
                 rabbit_password_hashing_sha512 or rabbit_password_hashing_md5"
            ))
        }),
    }
}

async fn put_user(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let b: UserBody = parse_body(&body)?;
    let existing = node.directory().user(&name).cloned();
    let alg = hashing_algorithm(b.hashing_algorithm.as_deref())?;
    let (password_hash, hashing_algorithm) = match (b.password, b.password_hash) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give either password or password_hash, not both")),
        (Some(pw), None) => {
            if pw.is_empty() {
                return Err(ApiError::bad_request("password must not be empty (use \"password_hash\": \"\")"));
            }
            (password::hash_password(HashingAlgorithm::Sha256, &pw), HashingAlgorithm::Sha256)
        }
        (None, Some(hash)) => (hash.trim().to_owned(), alg),
        // Neither: an existing user keeps its password; a new one cannot log in with one.
        (None, None) => match &existing {
            Some(u) => (u.password_hash.clone(), u.hashing_algorithm),
            None => (String::new(), alg),
        },
    };
    let tags = match &b.tags {
        Some(t) => parse_tags(t)?,
        None => existing.as_ref().map(|u| u.tags.clone()).unwrap_or_default(),
    };
    let limits = existing.as_ref().map(|u| u.limits.clone()).unwrap_or_else(UserLimits::default);
    change(&node, Change::PutUser(User { name, password_hash, hashing_algorithm, tags, limits }))?;
    Ok(put_status(existing.is_some()))
}

async fn delete_user(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    if node.directory().user(&name).is_none() {
        return Err(ApiError::not_found());
    }
    change(&node, Change::DeleteUser(name))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct BulkDelete {
    users: Option<Vec<String>>,
}

/// Deletes the named users that exist; names of unknown users are skipped, as RabbitMQ does.
async fn bulk_delete_users(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let b: BulkDelete = parse_body(&body)?;
    let names = b.users.ok_or_else(|| missing_key("users"))?;
    for name in names {
        if node.directory().user(&name).is_some() {
            change(&node, Change::DeleteUser(name))?;
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn user_permissions(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let dir = node.directory();
    dir.user(&name).ok_or_else(ApiError::not_found)?;
    Ok(Json(json!(dir.permissions().filter(|p| p.user == name).collect::<Vec<_>>())))
}

async fn user_topic_permissions(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let dir = node.directory();
    dir.user(&name).ok_or_else(ApiError::not_found)?;
    Ok(Json(json!(dir.topic_permissions().filter(|p| p.user == name).collect::<Vec<_>>())))
}

/// A salted hash of `password` with the default algorithm (sha256), for `password_hash`.
async fn hash_password(Path(password): Path<String>) -> ApiResult<Json<Value>> {
    if password.is_empty() {
        return Err(ApiError::bad_request("password must not be empty"));
    }
    Ok(Json(json!({"ok": password::hash_password(HashingAlgorithm::Sha256, &password)})))
}

// ---- vhosts ----

fn vhost_json(node: &dyn Node, v: &Vhost) -> Value {
    let (mut ready, mut unacked) = (0u64, 0u64);
    if let Some(vh) = node.vhost(&v.name) {
        for q in vh.queues() {
            let s = q.stats();
            ready += s.messages_ready;
            unacked += s.messages_unacked;
        }
    }
    let rate = json!({"rate": 0.0});
    let dqt = v.default_queue_type.as_deref().unwrap_or("classic");
    json!({
        "name": v.name,
        "description": v.description,
        "tags": v.tags,
        "default_queue_type": dqt,
        "metadata": {"description": v.description, "tags": v.tags, "default_queue_type": dqt},
        "tracing": false,
        "protected_from_deletion": false,
        "cluster_state": {node.info().name: "running"},
        "messages": ready + unacked, "messages_details": rate,
        "messages_ready": ready, "messages_ready_details": rate,
        "messages_unacknowledged": unacked, "messages_unacknowledged_details": rate,
    })
}

async fn list_vhosts(State(node): State<AppState>, Extension(caller): Extension<Caller>) -> Json<Value> {
    let dir = node.directory();
    let visible = dir.vhosts().filter(|v| can_see_vhost(&caller, &dir, &v.name));
    Json(visible.map(|v| vhost_json(node.as_ref(), v)).collect())
}

async fn get_vhost(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let dir = node.directory();
    require_vhost_visible(&caller, &dir, &name)?;
    let v = dir.vhost(&name).ok_or_else(ApiError::not_found)?;
    Ok(Json(vhost_json(node.as_ref(), v)))
}

#[derive(Deserialize)]
struct VhostBody {
    description: Option<String>,
    tags: Option<Value>,
    default_queue_type: Option<String>,
}

/// Creates the vhost, or changes the description, tags and default queue type the body
/// names (what it leaves out, and the limits, stay as they are).
async fn put_vhost(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let b: VhostBody = parse_body(&body)?;
    let existing = node.directory().vhost(&name).cloned();
    let mut v = existing.clone().unwrap_or_else(|| Vhost::named(&name));
    if let Some(d) = b.description {
        v.description = d;
    }
    if let Some(t) = &b.tags {
        v.tags = parse_tags(t)?;
    }
    if let Some(t) = b.default_queue_type.filter(|t| !t.is_empty()) {
        v.default_queue_type = Some(t);
    }
    change(&node, Change::PutVhost(v))?;
    // As RabbitMQ's HTTP API: whoever creates a vhost gets full permissions in it (when
    // they are a user of this node; the Unix socket's operator is not).
    if existing.is_none() && !caller.local && node.directory().user(&caller.user.name).is_some() {
        let all = ".*".to_owned();
        let p = Permission {
            user: caller.user.name.clone(),
            vhost: name.clone(),
            configure: all.clone(),
            write: all.clone(),
            read: all,
        };
        change(&node, Change::PutPermission(p))?;
    }
    Ok(put_status(existing.is_some()))
}

async fn delete_vhost(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    if node.directory().vhost(&name).is_none() {
        return Err(ApiError::not_found());
    }
    change(&node, Change::DeleteVhost(name))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn vhost_permissions(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let dir = node.directory();
    dir.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    Ok(Json(json!(dir.permissions().filter(|p| p.vhost == vhost).collect::<Vec<_>>())))
}

async fn vhost_topic_permissions(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let dir = node.directory();
    dir.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    Ok(Json(json!(dir.topic_permissions().filter(|p| p.vhost == vhost).collect::<Vec<_>>())))
}

// ---- permissions ----

async fn list_permissions(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    Ok(Json(json!(node.directory().permissions().collect::<Vec<_>>())))
}

async fn get_permission(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    node.directory().permission(&user, &vhost).map(|p| Json(json!(p))).ok_or_else(ApiError::not_found)
}

#[derive(Deserialize)]
struct PermissionBody {
    configure: Option<String>,
    write: Option<String>,
    read: Option<String>,
}

/// RabbitMQ answers a PUT naming an unknown user or vhost with this 400.
fn need_user_and_vhost(dir: &Directory, user: &str, vhost: &str) -> ApiResult<()> {
    if dir.user(user).is_none() || dir.vhost(vhost).is_none() {
        return Err(ApiError::bad_request("vhost_or_user_not_found"));
    }
    Ok(())
}

async fn put_permission(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let b: PermissionBody = parse_body(&body)?;
    let configure = b.configure.ok_or_else(|| missing_key("configure"))?;
    let write = b.write.ok_or_else(|| missing_key("write"))?;
    let read = b.read.ok_or_else(|| missing_key("read"))?;
    let dir = node.directory();
    need_user_and_vhost(&dir, &user, &vhost)?;
    let existed = dir.permission(&user, &vhost).is_some();
    change(&node, Change::PutPermission(Permission { user, vhost, configure, write, read }))?;
    Ok(put_status(existed))
}

async fn delete_permission(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    if node.directory().permission(&user, &vhost).is_none() {
        return Err(ApiError::not_found());
    }
    change(&node, Change::DeletePermission { user, vhost })?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- topic permissions ----

async fn list_topic_permissions(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    Ok(Json(json!(node.directory().topic_permissions().collect::<Vec<_>>())))
}

fn topic_permissions_of(dir: &Directory, user: &str, vhost: &str) -> Vec<TopicPermission> {
    dir.topic_permissions().filter(|t| t.user == user && t.vhost == vhost).cloned().collect()
}

/// A list (one entry per exchange), as RabbitMQ answers; 404 when there is none.
async fn get_topic_permissions(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let found = topic_permissions_of(&node.directory(), &user, &vhost);
    if found.is_empty() {
        return Err(ApiError::not_found());
    }
    Ok(Json(json!(found)))
}

#[derive(Deserialize)]
struct TopicPermissionBody {
    exchange: Option<String>,
    write: Option<String>,
    read: Option<String>,
}

async fn put_topic_permission(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let b: TopicPermissionBody = parse_body(&body)?;
    let exchange = b.exchange.ok_or_else(|| missing_key("exchange"))?;
    let write = b.write.ok_or_else(|| missing_key("write"))?;
    let read = b.read.ok_or_else(|| missing_key("read"))?;
    let dir = node.directory();
    need_user_and_vhost(&dir, &user, &vhost)?;
    let existed = topic_permissions_of(&dir, &user, &vhost).iter().any(|t| t.exchange == exchange);
    change(&node, Change::PutTopicPermission(TopicPermission { user, vhost, exchange, write, read }))?;
    Ok(put_status(existed))
}

/// Removes all of the user's topic permissions in the vhost, as RabbitMQ does.
async fn delete_topic_permissions(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let found = topic_permissions_of(&node.directory(), &user, &vhost);
    if found.is_empty() {
        return Err(ApiError::not_found());
    }
    for t in found {
        change(&node, Change::DeleteTopicPermission { user: t.user, vhost: t.vhost, exchange: t.exchange })?;
    }
    Ok(StatusCode::NO_CONTENT)
}
