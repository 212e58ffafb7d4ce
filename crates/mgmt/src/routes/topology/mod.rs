//! Queues, exchanges and bindings (`/api/queues`, `/api/exchanges`, `/api/bindings`),
//! publishing and getting over HTTP, and Warren's peek and dead-letter replay.
//!
//! Every operation runs with the caller's AMQP permissions in the vhost, as RabbitMQ's
//! internal channel does: declare/delete need configure, publish write on the exchange,
//! get/purge/peek read on the queue. Tags only decide what lists show: a monitor sees
//! every vhost, anyone else the vhosts they hold permissions in.

mod bindings;
mod exchanges;
mod json;
mod messages;
mod queues;
mod replicas;

use std::sync::Arc;

use access::authz::{Grants, Perm, Resource};
use axum::Router;
use broker::{AmqpError, VHost};
use serde::de::DeserializeOwned;

use super::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::node::{Node, NodeError};

pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(exchanges::routes())
        .merge(queues::routes())
        .merge(bindings::routes())
        .merge(messages::routes())
        .merge(replicas::routes())
}

/// The name RabbitMQ gives the default exchange in paths and permission checks.
const DEFAULT_EXCHANGE: &str = "amq.default";

/// A path's exchange name: `amq.default` is the default exchange `""`.
fn exchange_name(path: &str) -> &str {
    if path == DEFAULT_EXCHANGE { "" } else { path }
}

/// RabbitMQ's refusal of an operation the user's permissions do not allow.
fn access_refused() -> ApiError {
    ApiError::forbidden("Access refused.")
}

/// A vhost named in a path, with the caller's permissions in it.
struct Scope {
    vh: Arc<VHost>,
    grants: Option<Grants>,
    /// The node's operator on its Unix socket: every permission.
    local: bool,
}

impl Scope {
    /// 404 if the vhost does not exist; 401 if the caller may not see it (no permissions
    /// there, and not a monitor).
    fn new(node: &dyn Node, caller: &Caller, vhost: &str) -> ApiResult<Scope> {
        let vh = node.vhost(vhost).ok_or_else(ApiError::not_found)?;
        let grants = node.directory().grants(caller.name(), vhost);
        if grants.is_none() && !caller.is_monitor() && !caller.local {
            return Err(access_refused());
        }
        Ok(Scope { vh, grants, local: caller.local })
    }

    /// The caller may do `perm` on the object (the default exchange is `amq.default`).
    fn require(&self, perm: Perm, res: Resource, name: &str) -> ApiResult<()> {
        let name = if res == Resource::Exchange && name.is_empty() { DEFAULT_EXCHANGE } else { name };
        match &self.grants {
            _ if self.local => Ok(()),
            Some(g) if g.check(perm, res, name).is_ok() => Ok(()),
            _ => Err(access_refused()),
        }
    }
}

/// The vhosts a list shows: the one named (404/401 as [`Scope::new`]) or every vhost the
/// caller may see.
fn visible_vhosts(node: &dyn Node, caller: &Caller, vhost: Option<&str>) -> ApiResult<Vec<Arc<VHost>>> {
    if let Some(v) = vhost {
        return Ok(vec![Scope::new(node, caller, v)?.vh]);
    }
    let all = node.vhosts();
    if caller.is_monitor() {
        return Ok(all);
    }
    let dir = node.directory();
    Ok(all.into_iter().filter(|vh| dir.permission(caller.name(), &vh.name).is_some()).collect())
}

/// A broker refusal as an HTTP error (RabbitMQ: 404 for missing objects, 401 for access,
/// 400 with the AMQP text for the rest, e.g. inequivalent arguments).
fn amqp(e: AmqpError) -> ApiError {
    match e.code {
        wire::reply::NOT_FOUND => ApiError::not_found(),
        wire::reply::ACCESS_REFUSED => ApiError::forbidden(e.text),
        // The node could not do it now: a cluster without a quorum, a disk refusing writes.
        wire::reply::INTERNAL_ERROR => NodeError::Unavailable(e.text).into(),
        _ => ApiError::bad_request(e.text),
    }
}

/// A JSON request body (an empty body is `{}`), 400 when malformed.
fn body<T: DeserializeOwned>(raw: &[u8]) -> ApiResult<T> {
    let raw = if raw.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { raw };
    serde_json::from_slice(raw).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// A query flag such as `if-unused=true`.
fn query_flag(q: &std::collections::HashMap<String, String>, key: &str) -> bool {
    q.get(key).is_some_and(|v| v == "true")
}
