//! HTTP basic auth on every `/api` route, and what each user tag allows
//! (operate.md §1.2: management < policymaker, monitoring < administrator).

use std::sync::Arc;

use access::model::User;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;

use crate::error::ApiError;
use crate::node::Node;

/// The logged-in user of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: Arc<User>,
    /// Came through the node's Unix socket without credentials: the node's operator, with
    /// every right (including every vhost's AMQP permissions).
    pub local: bool,
}

impl Caller {
    fn has(&self, tag: &str) -> bool {
        self.user.tags.iter().any(|t| t == tag)
    }

    pub fn name(&self) -> &str {
        &self.user.name
    }

    pub fn is_admin(&self) -> bool {
        self.has("administrator")
    }

    /// Sees every vhost's objects and the node's figures.
    pub fn is_monitor(&self) -> bool {
        self.is_admin() || self.has("monitoring")
    }

    /// Changes policies and parameters in the vhosts it can reach.
    pub fn is_policymaker(&self) -> bool {
        self.is_admin() || self.has("policymaker")
    }

    /// May use the management API at all.
    pub fn is_management(&self) -> bool {
        self.is_monitor() || self.is_policymaker() || self.has("management")
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() { Ok(()) } else { Err(ApiError::forbidden("Not administrator user")) }
    }

    pub fn require_monitor(&self) -> Result<(), ApiError> {
        if self.is_monitor() { Ok(()) } else { Err(ApiError::forbidden("Not monitor user")) }
    }

    pub fn require_policymaker(&self) -> Result<(), ApiError> {
        if self.is_policymaker() { Ok(()) } else { Err(ApiError::forbidden("Not policymaker user")) }
    }
}

/// `Authorization: Basic base64(user:password)` → (user, password).
fn basic_credentials(req: &Request) -> Option<(String, String)> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// Marks requests that came through the node's Unix socket: whoever can open it (file
/// permissions, as lavinmqctl's) acts as an administrator unless it sends credentials.
#[derive(Debug, Clone, Copy)]
pub struct LocalSocket;

/// Authenticate the request (401 otherwise) and require a management tag.
pub async fn require_user(
    State(node): State<Arc<dyn Node>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if req.extensions().get::<LocalSocket>().is_some() && basic_credentials(&req).is_none() {
        let local = User {
            name: "warrenctl".into(),
            password_hash: String::new(),
            hashing_algorithm: access::model::HashingAlgorithm::Sha256,
            tags: vec!["administrator".into()],
            limits: Default::default(),
        };
        req.extensions_mut().insert(Caller { user: Arc::new(local), local: true });
        return Ok(next.run(req).await);
    }
    let Some((user, password)) = basic_credentials(&req) else {
        return Err(ApiError::unauthorized("Not_Authorized"));
    };
    let Some(u) = node.authenticate(&user, &password) else {
        tracing::warn!(user, "HTTP API login refused");
        return Err(ApiError::unauthorized("Not_Authorized"));
    };
    let caller = Caller { user: Arc::new(u), local: false };
    if !caller.is_management() {
        return Err(ApiError::forbidden("Not management user"));
    }
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}
