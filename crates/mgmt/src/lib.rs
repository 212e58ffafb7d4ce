//! Warren's management HTTP API: RabbitMQ's `/api` paths, methods, JSON shapes and status
//! codes (tools such as rabbitmqadmin, Flower, Terraform and Datadog deserialize them
//! strictly), over a [`node::Node`] the server implements.
//!
//! # Layout
//! - [`node`]: what the API needs from the node.
//! - `auth`: basic auth on every `/api` route; the user tags' rights.
//! - `error`: `{"error", "reason"}` replies.
//! - `routes`: one module per group of endpoints.
//! - `ui`: the embedded web UI (`/`, `/ui/...`), files in `crates/mgmt/ui/`.
//!
//! URL rules as RabbitMQ's: vhost and object names are percent-encoded path segments
//! (`%2F` is the vhost `/`), a trailing slash is ignored (Flower asks for `/api/queues/`),
//! and the reply is JSON whatever `Accept` says.

pub mod node;
pub mod prometheus;
pub mod stats;

mod auth;
mod error;
mod routes;
mod ui;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use tower::Layer;
use tower_http::normalize_path::NormalizePathLayer;

pub use auth::Caller;
pub use error::{ApiError, ApiResult};
pub use node::Node;

/// The API's routes over `node`.
pub fn router(node: Arc<dyn Node>) -> Router {
    routes::router(node)
}

/// Serve the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<dyn Node>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Trailing slashes are trimmed before routing (a layer on the Router itself would run
    // after the route was chosen).
    let app = NormalizePathLayer::trim_trailing_slash().layer(router(node.clone()));
    // Rates exist while the API does: the sampler runs beside it.
    let sampler = tokio::spawn(stats::run(node));
    let served = axum::serve(listener, axum::ServiceExt::<Request>::into_make_service(app))
        .with_graceful_shutdown(shutdown)
        .await;
    sampler.abort();
    served
}

/// Serve the API on the node's Unix socket (for `warrenctl`): requests without
/// credentials act as an administrator, so the socket's file mode is the access control.
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    node: Arc<dyn Node>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router(node).layer(axum::Extension(auth::LocalSocket));
    let app = NormalizePathLayer::trim_trailing_slash().layer(router);
    axum::serve(listener, axum::ServiceExt::<Request>::into_make_service(app)).with_graceful_shutdown(shutdown).await
}
