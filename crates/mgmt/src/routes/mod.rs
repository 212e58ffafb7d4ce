//! The routes, one module per group. Each group's `routes()` returns a `Router` whose
//! paths are under `/api`; all of them sit behind basic auth except the probes.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::auth::require_user;
use crate::error::ApiError;
use crate::node::Node;

mod access;
pub(crate) mod conns;
mod ctl;
mod listing;
mod overview;
mod topology;

pub type AppState = Arc<dyn Node>;

pub fn router(node: Arc<dyn Node>) -> Router {
    let body_max = node.http_max_body_bytes();
    let api = Router::new()
        .merge(overview::routes())
        .merge(ctl::routes())
        .merge(access::routes())
        .merge(topology::routes())
        .merge(conns::routes())
        .route_layer(middleware::from_fn_with_state(node.clone(), require_user))
        // Every body is bounded (RabbitMQ's management.http.max_body_size); past it,
        // RabbitMQ's 400 as JSON instead of the extractor's plain-text 413.
        .layer(DefaultBodyLimit::max(body_max))
        .layer(middleware::map_response(body_too_large));
    Router::new()
        .merge(api)
        .merge(access::public_routes())
        // The embedded web UI (`/`, `/ui/...`): static files, no credentials needed.
        .merge(crate::ui::routes())
        // Unauthenticated liveness and readiness probes (for orchestrators).
        .route("/healthz", get(overview::healthz))
        .route("/readyz", get(overview::readyz))
        .fallback(|| async { ApiError::not_found() })
        .with_state(node)
}

async fn body_too_large(r: Response) -> Response {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        tracing::warn!("HTTP API: a request body exceeded management.http.max_body_size");
        return ApiError::bad_request("Exceeded HTTP request body size limit").into_response();
    }
    r
}
