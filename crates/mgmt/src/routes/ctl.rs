//! Warren's own endpoints for what rabbitmqctl does without RabbitMQ's HTTP API
//! (`warrenctl authenticate_user`, `set_vm_memory_high_watermark`, `set_disk_free_limit`,
//! `environment`). Administrators only.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/warren/authenticate", post(authenticate))
        .route("/api/warren/vm-memory-high-watermark", put(memory_watermark))
        .route("/api/warren/disk-free-limit", put(disk_free_limit))
        .route("/api/warren/environment", get(environment))
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

async fn authenticate(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(c): Json<Credentials>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    match node.authenticate(&c.username, &c.password) {
        Some(u) => Ok(Json(json!({"name": u.name, "tags": u.tags}))),
        None => Err(ApiError::unauthorized(format!("invalid credentials for user '{}'", c.username))),
    }
}

#[derive(Deserialize)]
struct Threshold {
    relative: Option<f64>,
    mem_relative: Option<f64>,
    absolute: Option<u64>,
}

/// Bytes from `absolute`, or a fraction of RAM (`relative` / `mem_relative`).
fn bytes(node: &AppState, t: &Threshold) -> ApiResult<u64> {
    if let Some(b) = t.absolute {
        return Ok(b);
    }
    let f = t.relative.or(t.mem_relative).ok_or_else(|| ApiError::bad_request("give relative or absolute"))?;
    if !(0.0..=100.0).contains(&f) {
        return Err(ApiError::bad_request(format!("invalid fraction {f}")));
    }
    let total = node.total_memory_bytes().ok_or_else(|| ApiError::internal("total memory unknown"))?;
    Ok((total as f64 * f) as u64)
}

async fn memory_watermark(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(t): Json<Threshold>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    node.set_memory_high_watermark(bytes(&node, &t)?);
    Ok(StatusCode::NO_CONTENT)
}

async fn disk_free_limit(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(t): Json<Threshold>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    node.set_disk_free_limit(bytes(&node, &t)?);
    Ok(StatusCode::NO_CONTENT)
}

async fn environment(State(node): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    Ok(Json(node.environment()))
}
