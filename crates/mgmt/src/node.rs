//! What the API needs from the node. The server implements [`Node`]; this crate never
//! touches the server's internals, so the HTTP side can be tested against a node built
//! in the test and the server does not depend on HTTP types.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use access::definitions::Definitions;
use access::directory::{Change, Directory};
use access::model::User;
use broker::VHost;
use bytes::Bytes;

/// Why the node refused a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeError {
    /// Invalid request (unknown user or vhost, bad regex, bad definitions file): 400.
    Invalid(String),
    /// Not found: 404.
    NotFound(String),
    /// The node could not record it (disk): 500.
    Failed(String),
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeError::Invalid(s) | NodeError::NotFound(s) | NodeError::Failed(s) => f.write_str(s),
        }
    }
}

/// A listener of the node, for `/api/overview` and `/api/nodes`.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    /// "amqp", "amqp/ssl", "http", "http/prometheus".
    pub protocol: String,
    pub ip_address: String,
    pub port: u16,
}

/// The node's own figures.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    /// RabbitMQ-style node name, `warren@host`.
    pub name: String,
    pub cluster_name: String,
    pub product_version: String,
    pub uptime_ms: u64,
    pub os_pid: u32,
    pub processors: usize,
    pub listeners: Vec<ListenerInfo>,
    pub mem_used_bytes: u64,
    pub mem_limit_bytes: u64,
    pub mem_alarm: bool,
    pub disk_free_bytes: u64,
    pub disk_free_limit_bytes: u64,
    pub disk_free_alarm: bool,
    pub fd_used: u64,
    pub fd_total: u64,
    pub sockets_used: u64,
    pub data_dir: String,
    pub config_files: Vec<String>,
}

/// One certificate file of a TLS listener and when its certificates stop being valid.
#[derive(Debug, Clone)]
pub struct CertificateFile {
    pub path: String,
    /// Each certificate's `notAfter` in seconds since the Unix epoch, or why the file
    /// could not be read (unreadable, no PEM certificate, not yet valid).
    pub not_after: Result<Vec<i64>, String>,
}

/// The certificates a TLS listener presents and trusts.
#[derive(Debug, Clone)]
pub struct ListenerCertificates {
    pub listener: ListenerInfo,
    pub certfile: CertificateFile,
    /// None when the listener has no CA file.
    pub cacertfile: Option<CertificateFile>,
}

/// One logged-in client connection.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// RabbitMQ's name: "peer_ip:port -> local_ip:port".
    pub name: String,
    pub user: String,
    pub vhost: String,
    pub peer_host: String,
    pub peer_port: u16,
    pub host: String,
    pub port: u16,
    pub connected_at_ms: u64,
    pub channels: usize,
    pub tls: bool,
}

pub trait Node: Send + Sync + 'static {
    fn info(&self) -> NodeInfo;
    /// A user who may log in with this password (None: refused).
    fn authenticate(&self, user: &str, password: &str) -> Option<User>;
    /// A copy of the users, vhosts, permissions, policies and limits.
    fn directory(&self) -> Directory;
    /// Apply one access change (validated, logged, applied, carried out).
    fn change(&self, c: Change) -> Result<(), NodeError>;
    fn vhost(&self, name: &str) -> Option<Arc<VHost>>;
    fn vhosts(&self) -> Vec<Arc<VHost>>;
    fn export_definitions(&self) -> Definitions;
    /// Import RabbitMQ definitions JSON, all or nothing.
    fn import_definitions(&self, json: &[u8]) -> Result<(), NodeError>;
    fn connections(&self) -> Vec<ConnectionInfo>;
    /// Close the connection named `name` with 320 and `reason`; false if there is none.
    fn close_connection(&self, name: &str, reason: &str) -> bool;

    // --- warrenctl: node settings without a RabbitMQ HTTP endpoint ------------------------
    /// Set the memory alarm threshold (bytes of RSS) until the node restarts.
    fn set_memory_high_watermark(&self, bytes: u64);
    /// Set the disk alarm limit (free bytes) until the node restarts.
    fn set_disk_free_limit(&self, bytes: u64);
    /// The node's effective settings, for `warrenctl environment`.
    fn environment(&self) -> serde_json::Value;
    /// The machine's RAM (bytes), for relative thresholds.
    fn total_memory_bytes(&self) -> Option<u64>;

    // ---- group "access": users, vhosts, permissions, policies, limits, definitions, health ----

    /// The node-wide connection limit (RabbitMQ's `connection_max`); None: unlimited.
    fn connection_max(&self) -> Option<u64>;
    /// The certificates of the node's TLS listeners (empty without TLS).
    fn listener_certificates(&self) -> Vec<ListenerCertificates>;

    // ---- Topology group: queues, exchanges, bindings, publish/get, peek, replay ----

    /// Publish as a channel does without `mandatory`: route from `exchange` (`""`: the
    /// default exchange; delayed and alternate exchanges as on a channel), enqueue, and
    /// for a persistent message reaching a durable queue return only once it is on disk.
    /// `properties` are raw content-header properties, kept byte-for-byte. Ok(routed).
    /// Permissions are checked by the caller; a missing vhost or exchange is NotFound; an
    /// internal exchange, a queue refusing it (x-overflow) or a store failure is Invalid or
    /// Failed.
    fn publish(
        &self,
        vhost: &str,
        exchange: &str,
        routing_key: &str,
        properties: Bytes,
        body: Bytes,
    ) -> BoxFuture<'_, Result<bool, NodeError>>;
}

/// What async [`Node`] methods return (the trait is used as `dyn Node`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The connection id the HTTP API acts as in the broker. Connection ids start at 1, so no
/// client's exclusive queue is ever this one's.
pub const API_CONNECTION: broker::ConnectionId = 0;
