//! RabbitMQ's quorum queue membership endpoints (`rabbitmq-queues add_member`,
//! `delete_member`, `grow`, `shrink`), with its paths and status codes:
//!
//! - `POST /api/queues/quorum/{vhost}/{name}/replicas/add` `{"node": N}` → 204
//! - `DELETE /api/queues/quorum/{vhost}/{name}/replicas/delete` `{"node": N}` → 202
//! - `POST /api/queues/quorum/replicas/on/{node}/grow` `{"strategy": "all"|"even",
//!   "vhost_pattern", "queue_pattern"}` → 204
//! - `DELETE /api/queues/quorum/replicas/on/{node}/shrink` → 202
//!
//! - `POST /api/warren/replicas/on/{node}/grow`, `DELETE /api/warren/replicas/on/{node}/shrink`:
//!   the same as the two above, answered 200 with a row per queue considered,
//!   `[{"vhost", "name", "size", "result"}]` (`size`: its voters after; `result`: `ok` or
//!   `error: ...`), the table `rabbitmq-queues grow`/`shrink` print (and `warrenctl`)
//! - `POST /api/rebalance/queues` → 204: the quorum queues' leaders spread over the running
//!   nodes (`rabbitmq-queues rebalance`); an optional body `{"type": "quorum"|"all",
//!   "vhost_pattern", "queue_pattern"}` narrows it (RabbitMQ's endpoint rebalances all)
//! - `POST /api/warren/rebalance` with the same body → 200 and the leaders per running node
//!   afterwards, `[{"node", "quorum_leaders"}]` (what `warrenctl rebalance` prints)
//!
//! Administrators only, as in RabbitMQ. Unlike RabbitMQ, which starts the change and
//! answers at once, Warren answers once the queues' groups have committed it (a rebalance
//! once every leader it moves has moved); `grow` and `shrink` answer 503 naming the queues
//! that were left as they were (the others changed).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use super::{AppState, body};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::node::{NodeError, QuorumMemberChange};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/queues/quorum/{vhost}/{name}/replicas/add", post(add))
        .route("/api/queues/quorum/{vhost}/{name}/replicas/delete", delete(remove))
        .route("/api/queues/quorum/replicas/on/{node}/grow", post(grow))
        .route("/api/queues/quorum/replicas/on/{node}/shrink", delete(shrink))
        .route("/api/warren/replicas/on/{node}/grow", post(grow_report))
        .route("/api/warren/replicas/on/{node}/shrink", delete(shrink_report))
        .route("/api/rebalance/queues", post(rebalance))
        .route("/api/warren/rebalance", post(rebalance_report))
}

#[derive(Deserialize)]
struct MemberBody {
    node: Option<String>,
}

fn node_of(raw: &[u8]) -> ApiResult<String> {
    let b: MemberBody = body(raw)?;
    b.node.filter(|n| !n.is_empty()).ok_or_else(|| ApiError::bad_request("the body names no node: {\"node\": NAME}"))
}

async fn add(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult<StatusCode> {
    change_member(&node, &caller, vhost, name, &raw, true).await.map(|()| StatusCode::NO_CONTENT)
}

async fn remove(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult<StatusCode> {
    change_member(&node, &caller, vhost, name, &raw, false).await.map(|()| StatusCode::ACCEPTED)
}

async fn change_member(
    node: &AppState,
    caller: &Caller,
    vhost: String,
    name: String,
    raw: &[u8],
    add: bool,
) -> ApiResult<()> {
    caller.require_admin()?;
    let member = node_of(raw)?;
    Ok(node.quorum_member(vhost, name, member, add).await?)
}

#[derive(Deserialize)]
struct GrowBody {
    strategy: Option<String>,
    vhost_pattern: Option<String>,
    queue_pattern: Option<String>,
}

fn pattern(p: Option<String>, what: &str) -> ApiResult<regex::Regex> {
    let p = p.filter(|p| !p.is_empty()).unwrap_or_else(|| ".*".to_owned());
    regex::Regex::new(&p).map_err(|e| ApiError::bad_request(format!("invalid {what} '{p}': {e}")))
}

async fn grow(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(member): Path<String>,
    raw: Bytes,
) -> ApiResult<StatusCode> {
    let changes = run_grow(&node, &caller, member, &raw).await?;
    outcome(&changes, StatusCode::NO_CONTENT)
}

async fn shrink(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(member): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let changes = node.quorum_regroup(member, None).await?;
    outcome(&changes, StatusCode::ACCEPTED)
}

async fn grow_report(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(member): Path<String>,
    raw: Bytes,
) -> ApiResult<Json<Vec<ChangeRow>>> {
    Ok(Json(rows(run_grow(&node, &caller, member, &raw).await?)))
}

async fn shrink_report(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(member): Path<String>,
) -> ApiResult<Json<Vec<ChangeRow>>> {
    caller.require_admin()?;
    Ok(Json(rows(node.quorum_regroup(member, None).await?)))
}

async fn run_grow(node: &AppState, caller: &Caller, member: String, raw: &[u8]) -> ApiResult<Vec<QuorumMemberChange>> {
    caller.require_admin()?;
    let b: GrowBody = body(raw)?;
    let even = match b.strategy.as_deref() {
        None | Some("all") => false,
        Some("even") => true,
        Some(s) => return Err(ApiError::bad_request(format!("unknown strategy '{s}': use all or even"))),
    };
    let vhosts = pattern(b.vhost_pattern, "vhost_pattern")?;
    let queues = pattern(b.queue_pattern, "queue_pattern")?;
    Ok(node.quorum_regroup(member, Some((even, vhosts, queues))).await?)
}

/// A row of `rabbitmq-queues grow`/`shrink`'s table.
#[derive(Serialize)]
struct ChangeRow {
    vhost: String,
    name: String,
    size: usize,
    result: String,
}

fn rows(changes: Vec<QuorumMemberChange>) -> Vec<ChangeRow> {
    changes
        .into_iter()
        .map(|c| ChangeRow {
            vhost: c.vhost,
            name: c.name,
            size: c.voters,
            result: c.error.map_or_else(|| "ok".to_owned(), |e| format!("error: {e}")),
        })
        .collect()
}

#[derive(Deserialize)]
struct RebalanceBody {
    r#type: Option<String>,
    vhost_pattern: Option<String>,
    queue_pattern: Option<String>,
}

#[derive(Serialize)]
struct Leaders {
    node: String,
    quorum_leaders: usize,
}

async fn rebalance(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    raw: Bytes,
) -> ApiResult<StatusCode> {
    run_rebalance(&node, &caller, &raw).await.map(|_| StatusCode::NO_CONTENT)
}

async fn rebalance_report(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    raw: Bytes,
) -> ApiResult<Json<Vec<Leaders>>> {
    let counts = run_rebalance(&node, &caller, &raw).await?;
    Ok(Json(counts.into_iter().map(|(node, quorum_leaders)| Leaders { node, quorum_leaders }).collect()))
}

async fn run_rebalance(node: &AppState, caller: &Caller, raw: &[u8]) -> ApiResult<Vec<(String, usize)>> {
    caller.require_admin()?;
    // RabbitMQ's clients post `{}` or nothing.
    let b: RebalanceBody = body(raw)?;
    match b.r#type.as_deref() {
        None | Some("all" | "quorum") => {}
        Some(t @ ("classic" | "stream")) => {
            return Err(ApiError::bad_request(format!(
                "{t} queues have no replicas to rebalance in Warren: use quorum or all"
            )));
        }
        Some(t) => return Err(ApiError::bad_request(format!("unknown queue type '{t}': use quorum or all"))),
    }
    let vhosts = pattern(b.vhost_pattern, "vhost_pattern")?;
    let queues = pattern(b.queue_pattern, "queue_pattern")?;
    Ok(node.quorum_rebalance(vhosts, queues).await?)
}

/// `ok` when every queue changed; else 503 naming the ones that did not, and why.
fn outcome(changes: &[QuorumMemberChange], ok: StatusCode) -> ApiResult<StatusCode> {
    let failed: Vec<String> = changes
        .iter()
        .filter_map(|c| c.error.as_ref().map(|e| format!("'{}' in vhost '{}': {e}", c.name, c.vhost)))
        .collect();
    if failed.is_empty() {
        return Ok(ok);
    }
    let changed = changes.len() - failed.len();
    Err(NodeError::Unavailable(format!("{changed} queue(s) changed; left as they were: {}", failed.join("; "))).into())
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::extract::Path;
    use axum::http::Request;
    use axum::routing::{get, post};
    use tower::ServiceExt;

    /// The membership paths share `/api/queues/{vhost}/{name}`'s first segments: queues
    /// in a vhost named `quorum` (or `replicas`) must still be reached.
    #[tokio::test]
    async fn membership_paths_leave_queues_in_vhosts_named_like_them_reachable() {
        let app: Router = Router::new()
            .route(
                "/api/queues/{vhost}/{name}",
                get(|Path((v, n)): Path<(String, String)>| async move { format!("show {v}/{n}") }),
            )
            .route(
                "/api/queues/{vhost}/{name}/bindings",
                get(|Path((v, n)): Path<(String, String)>| async move { format!("bindings {v}/{n}") }),
            )
            .route(
                "/api/queues/quorum/{vhost}/{name}/replicas/add",
                post(|Path((v, n)): Path<(String, String)>| async move { format!("add {v}/{n}") }),
            )
            .route(
                "/api/queues/quorum/replicas/on/{node}/grow",
                post(|Path(n): Path<String>| async move { format!("grow {n}") }),
            );
        let call = |method: &str, uri: &str| {
            let app = app.clone();
            let req = Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
            async move {
                let r = app.oneshot(req).await.unwrap();
                let status = r.status().as_u16();
                let b = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
                (status, String::from_utf8(b.to_vec()).unwrap())
            }
        };
        assert_eq!(call("GET", "/api/queues/quorum/q1").await, (200, "show quorum/q1".into()));
        assert_eq!(call("GET", "/api/queues/quorum/replicas").await, (200, "show quorum/replicas".into()));
        assert_eq!(call("GET", "/api/queues/quorum/q1/bindings").await, (200, "bindings quorum/q1".into()));
        assert_eq!(call("POST", "/api/queues/quorum/%2F/q1/replicas/add").await, (200, "add //q1".into()));
        assert_eq!(call("POST", "/api/queues/quorum/replicas/q1/replicas/add").await, (200, "add replicas/q1".into()));
        assert_eq!(call("POST", "/api/queues/quorum/replicas/on/n1@h:1/grow").await, (200, "grow n1@h:1".into()));
    }
}
