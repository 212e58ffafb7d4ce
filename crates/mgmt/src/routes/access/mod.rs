//! Group "access": users, vhosts, permissions, topic permissions ([`users`]), policies,
//! limits and parameters ([`policies`]), definitions ([`definitions`]), health checks
//! ([`health`]).

use axum::Router;

use crate::routes::AppState;

mod definitions;
mod health;
mod policies;
mod users;

/// The group's routes behind basic auth.
pub fn routes() -> Router<AppState> {
    Router::new().merge(users::routes()).merge(policies::routes()).merge(definitions::routes()).merge(health::routes())
}

/// The health checks RabbitMQ answers without credentials (load balancers and
/// orchestrators poll them).
pub fn public_routes() -> Router<AppState> {
    health::public_routes()
}
