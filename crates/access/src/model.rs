//! The access records a node keeps. Serde names follow RabbitMQ's definitions JSON where a
//! record appears there unchanged (permissions, topic permissions, policies, limits).

use serde::{Deserialize, Serialize};

/// How a user's `password_hash` was made (RabbitMQ's module names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashingAlgorithm {
    #[serde(rename = "rabbit_password_hashing_sha256")]
    Sha256,
    #[serde(rename = "rabbit_password_hashing_sha512")]
    Sha512,
    #[serde(rename = "rabbit_password_hashing_md5")]
    Md5,
}

impl HashingAlgorithm {
    /// RabbitMQ's name for the algorithm, as definitions carry it.
    pub fn name(self) -> &'static str {
        match self {
            HashingAlgorithm::Sha256 => "rabbit_password_hashing_sha256",
            HashingAlgorithm::Sha512 => "rabbit_password_hashing_sha512",
            HashingAlgorithm::Md5 => "rabbit_password_hashing_md5",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// base64(salt ‖ digest); "" means the user cannot log in with a password.
    pub password_hash: String,
    pub hashing_algorithm: HashingAlgorithm,
    pub tags: Vec<String>,
    #[serde(default)]
    pub limits: UserLimits,
}

/// Per-user limits; `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserLimits {
    #[serde(rename = "max-connections", default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
    #[serde(rename = "max-channels", default, skip_serializing_if = "Option::is_none")]
    pub max_channels: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vhost {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_queue_type: Option<String>,
    #[serde(default)]
    pub limits: VhostLimits,
}

impl Vhost {
    /// A vhost with no description, tags or limits.
    pub fn named(name: impl Into<String>) -> Vhost {
        Vhost {
            name: name.into(),
            description: String::new(),
            tags: Vec::new(),
            default_queue_type: None,
            limits: VhostLimits::default(),
        }
    }
}

/// Per-vhost limits; `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostLimits {
    #[serde(rename = "max-connections", default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
    #[serde(rename = "max-queues", default, skip_serializing_if = "Option::is_none")]
    pub max_queues: Option<u64>,
}

impl VhostLimits {
    pub fn is_empty(&self) -> bool {
        self.max_connections.is_none() && self.max_queues.is_none()
    }
}

/// A user's configure/write/read regexes in one vhost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// A user's routing-key regexes for one exchange in one vhost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPermission {
    pub user: String,
    pub vhost: String,
    pub exchange: String,
    pub write: String,
    pub read: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub vhost: String,
    pub name: String,
    pub pattern: String,
    #[serde(rename = "apply-to", default)]
    pub apply_to: ApplyTo,
    #[serde(default)]
    pub priority: i64,
    pub definition: serde_json::Map<String, serde_json::Value>,
}

/// Which objects a policy applies to (RabbitMQ's `apply-to` strings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyTo {
    Queues,
    ClassicQueues,
    QuorumQueues,
    Streams,
    Exchanges,
    #[default]
    All,
}
