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

/// (year, month, day) of a day counted from 1970-01-01, in the proleptic Gregorian
/// calendar (Howard Hinnant's civil-from-days: 400-year eras of 146,097 days).
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

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
