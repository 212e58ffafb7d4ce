//! The routes, one module per group. Each group's `routes()` returns a `Router` whose
//! paths are under `/api`; all of them sit behind basic auth except the probes.

use std::sync::Arc;

use axum::Router;
use axum::middleware;
use axum::routing::get;

use crate::auth::require_user;
use crate::error::ApiError;
use crate::node::Node;

mod access;
mod conns;
mod ctl;
mod listing;
mod overview;
mod topology;

pub type AppState = Arc<dyn Node>;

pub fn router(node: Arc<dyn Node>) -> Router {
    let api = Router::new()
        .merge(overview::routes())
        .merge(ctl::routes())
        .merge(access::routes())
        .merge(topology::routes())
        .merge(conns::routes())
        .route_layer(middleware::from_fn_with_state(node.clone(), require_user));
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
