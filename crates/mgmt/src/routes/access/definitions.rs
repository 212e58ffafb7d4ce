//! `GET|POST /api/definitions[/{vhost}]`: RabbitMQ's definitions export and import
//! (administrator only). Import is all or nothing: the node validates the whole file
//! before changing anything.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{Map, Value, json};

use super::users::parse_body;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::routes::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/definitions", get(export_all).post(import_all))
        .route("/api/definitions/{vhost}", get(export_vhost).post(import_vhost))
}

/// The lists a single-vhost export carries (each entry without its `vhost` field).
const VHOST_SCOPED: &[&str] = &["parameters", "policies", "queues", "exchanges", "bindings"];

/// `?download=NAME` makes browsers save the reply as the file NAME.
fn reply(body: Value, query: &HashMap<String, String>) -> Response {
    let mut r = Json(body).into_response();
    if let Some(name) = query.get("download").filter(|n| !n.is_empty()) {
        // Quotes and control characters would break out of the header's quoted string.
        let safe: String = name.chars().filter(|c| !c.is_control() && *c != '"' && *c != '\\').collect();
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
            r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
    }
    r
}

fn export_json(node: &AppState) -> ApiResult<Map<String, Value>> {
    match serde_json::to_value(node.export_definitions()) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ApiError::internal("definitions did not serialize to a JSON object")),
    }
}

async fn export_all(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let mut m = export_json(&node)?;
    let cluster = node.info().cluster_name;
    m.insert("rabbitmq_definition_format".into(), json!("cluster"));
    m.insert("original_cluster_name".into(), json!(cluster));
    m.insert("explanation".into(), json!(format!("Definitions of cluster '{cluster}'")));
    Ok(reply(Value::Object(m), &query))
}

async fn export_vhost(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let v = node.directory().vhost(&vhost).cloned().ok_or_else(ApiError::not_found)?;
    let all = export_json(&node)?;
    let mut m = Map::new();
    for key in ["rabbit_version", "rabbitmq_version", "product_name", "product_version"] {
        if let Some(x) = all.get(key) {
            m.insert(key.into(), x.clone());
        }
    }
    m.insert("rabbitmq_definition_format".into(), json!("single_virtual_host"));
    m.insert("original_vhost_name".into(), json!(vhost));
    m.insert("explanation".into(), json!(format!("Definitions of virtual host '{vhost}'")));
    let dqt = v.default_queue_type.clone().unwrap_or_else(|| "classic".into());
    m.insert("metadata".into(), json!({"description": v.description, "tags": v.tags, "default_queue_type": dqt}));
    m.insert("description".into(), json!(v.description));
    m.insert("default_queue_type".into(), json!(dqt));
    m.insert("limits".into(), json!(v.limits));
    for key in VHOST_SCOPED {
        let items = all.get(*key).and_then(Value::as_array).cloned().unwrap_or_default();
        let mine = items
            .into_iter()
            .filter(|i| i.get("vhost").and_then(Value::as_str) == Some(vhost.as_str()))
            .map(|mut i| {
                if let Some(o) = i.as_object_mut() {
                    o.remove("vhost");
                }
                i
            })
            .collect();
        m.insert((*key).into(), Value::Array(mine));
    }
    Ok(reply(Value::Object(m), &query))
}

async fn import_all(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    node.import_definitions(&body)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Imports a single-vhost file into `vhost`: its parameters, policies, queues, exchanges
/// and bindings go there whatever vhost they name; users, vhosts and permissions in it
/// are ignored, as RabbitMQ does.
async fn import_vhost(
    State(node): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    node.directory().vhost(&vhost).ok_or_else(ApiError::not_found)?;
    let file: Value = parse_body(&body)?;
    let Value::Object(file) = file else {
        return Err(ApiError::bad_request("definitions file: expected a JSON object"));
    };
    let mut doc = Map::new();
    if let Some(v) = file.get("rabbit_version").or_else(|| file.get("rabbitmq_version")) {
        doc.insert("rabbit_version".into(), v.clone());
    }
    for key in VHOST_SCOPED {
        let items = match file.get(*key) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items.clone(),
            Some(_) => return Err(ApiError::bad_request(format!("definitions file: '{key}' must be a list"))),
        };
        let mut placed = Vec::with_capacity(items.len());
        for mut item in items {
            let Some(o) = item.as_object_mut() else {
                return Err(ApiError::bad_request(format!("definitions file: '{key}' entries must be objects")));
            };
            o.insert("vhost".into(), json!(vhost));
            placed.push(item);
        }
        doc.insert((*key).into(), Value::Array(placed));
    }
    let json = serde_json::to_vec(&Value::Object(doc)).map_err(|e| ApiError::internal(e.to_string()))?;
    node.import_definitions(&json)?;
    Ok(StatusCode::NO_CONTENT)
}
