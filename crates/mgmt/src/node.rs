//! What the API needs from the node. The server implements [`Node`]; this crate never
//! touches the server's internals, so the HTTP side can be tested against a node built
//! in the test and the server does not depend on HTTP types.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use access::definitions::Definitions;
use access::directory::{Change, Directory};
use access::model::User;
use broker::exchange::{Destination, ExchangeOptions};
use broker::{AmqpError, VHost};
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
    /// A cluster without a leader or a quorum did not take the change within its bound: 503.
    Unavailable(String),
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeError::Invalid(s) | NodeError::NotFound(s) | NodeError::Failed(s) | NodeError::Unavailable(s) => {
                f.write_str(s)
            }
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

/// The memory breakdown Warren can account for; every other RabbitMQ category is 0 and
/// what is not accounted is `other_proc` (see docs/management.md).
#[derive(Debug, Clone, Default)]
pub struct MemoryBreakdown {
    /// `allocated` or `rss`: what the memory alarm compares with the watermark.
    pub strategy: &'static str,
    pub rss_bytes: u64,
    /// Bytes the allocator handed out and not taken back (RSS when it does not count).
    pub allocated_bytes: u64,
    /// Message bodies (and their properties) held in RAM by queues: ready messages not
    /// paged out, and delivered ones not yet acknowledged.
    pub message_bytes: u64,
    /// Bytes connections' outboxes hold: buffer capacity, or the bytes waiting to be
    /// written to clients if more.
    pub connection_writer_bytes: u64,
    /// Capacity of connections' read buffers.
    pub connection_reader_bytes: u64,
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
    // Group "stats" fields.
    /// The client's connection.start-ok properties, as JSON.
    pub client_properties: serde_json::Value,
    pub auth_mechanism: String,
    pub frame_max: u32,
    pub channel_max: u16,
    /// Negotiated heartbeat (s).
    pub timeout_s: u16,
    /// Bytes read from and written to the socket.
    pub recv_oct: u64,
    pub send_oct: u64,
    /// "running", or "blocked" while a resource alarm stops it reading.
    pub state: String,
}

/// A channel's message counters (RabbitMQ's channel `message_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelCounts {
    pub publish: u64,
    /// Publishes on channels in confirm mode.
    pub publish_confirm: u64,
    pub confirm: u64,
    /// Publishes that reached at least one queue.
    pub routed: u64,
    pub return_unroutable: u64,
    pub drop_unroutable: u64,
    pub deliver: u64,
    pub deliver_no_ack: u64,
    pub get: u64,
    pub get_no_ack: u64,
    pub get_empty: u64,
    pub redeliver: u64,
    pub ack: u64,
    /// Published body sizes: how many fell in each of [`MESSAGE_SIZE_BUCKETS`] (not
    /// cumulative; larger ones only in `publish`), and their sum in bytes.
    pub size_buckets: [u64; MESSAGE_SIZE_BUCKETS.len()],
    pub size_sum: u64,
}

/// Upper bounds (bytes) of RabbitMQ's message size histogram (`rabbit_msg_size_metrics`).
pub const MESSAGE_SIZE_BUCKETS: [u64; 8] =
    [100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 50_000_000, 100_000_000];

/// The bucket a body of `size` bytes counts in (None: above the last bound).
#[inline]
pub fn message_size_bucket(size: u64) -> Option<usize> {
    MESSAGE_SIZE_BUCKETS.iter().position(|&b| size <= b)
}

impl ChannelCounts {
    pub fn deliver_get(&self) -> u64 {
        self.deliver + self.deliver_no_ack + self.get + self.get_no_ack
    }

    /// The counters in RabbitMQ's `message_stats` naming (`routed` and `publish_confirm`
    /// are Prometheus-only and left out).
    pub fn named(&self) -> [(&'static str, u64); 12] {
        [
            ("publish", self.publish),
            ("confirm", self.confirm),
            ("return_unroutable", self.return_unroutable),
            ("drop_unroutable", self.drop_unroutable),
            ("deliver", self.deliver),
            ("deliver_no_ack", self.deliver_no_ack),
            ("get", self.get),
            ("get_no_ack", self.get_no_ack),
            ("get_empty", self.get_empty),
            ("deliver_get", self.deliver_get()),
            ("redeliver", self.redeliver),
            ("ack", self.ack),
        ]
    }

    pub fn add(&mut self, o: &ChannelCounts) {
        self.publish += o.publish;
        self.publish_confirm += o.publish_confirm;
        self.confirm += o.confirm;
        self.routed += o.routed;
        self.return_unroutable += o.return_unroutable;
        self.drop_unroutable += o.drop_unroutable;
        self.deliver += o.deliver;
        self.deliver_no_ack += o.deliver_no_ack;
        self.get += o.get;
        self.get_no_ack += o.get_no_ack;
        self.get_empty += o.get_empty;
        self.redeliver += o.redeliver;
        self.ack += o.ack;
        for (a, b) in self.size_buckets.iter_mut().zip(o.size_buckets) {
            *a += b;
        }
        self.size_sum += o.size_sum;
    }
}

/// Objects created and closed since the node started (RabbitMQ's `churn_rates`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Churn {
    pub connection_created: u64,
    pub connection_closed: u64,
    pub channel_created: u64,
    pub channel_closed: u64,
    pub queue_declared: u64,
    pub queue_created: u64,
    pub queue_deleted: u64,
}

impl Churn {
    pub fn named(&self) -> [(&'static str, u64); 7] {
        [
            ("connection_created", self.connection_created),
            ("connection_closed", self.connection_closed),
            ("channel_created", self.channel_created),
            ("channel_closed", self.channel_closed),
            ("queue_declared", self.queue_declared),
            ("queue_created", self.queue_created),
            ("queue_deleted", self.queue_deleted),
        ]
    }
}

/// The node's counters since it started; never decrease (closed channels' counts stay).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeCounters {
    pub messages: ChannelCounts,
    pub churn: Churn,
}

/// One open channel.
#[derive(Debug, Clone)]
pub struct ChannelInfo {
    pub number: u16,
    /// Its connection's name.
    pub connection: String,
    pub peer_host: String,
    pub peer_port: u16,
    pub user: String,
    pub vhost: String,
    pub confirm: bool,
    pub transactional: bool,
    /// basic.qos global=false.
    pub prefetch_count: u32,
    /// basic.qos global=true.
    pub global_prefetch_count: u32,
    pub consumer_count: usize,
    pub messages_unacknowledged: usize,
    pub messages_unconfirmed: usize,
    pub counts: ChannelCounts,
    /// RabbitMQ's channel state: "running", or "flow" while its connection waits for a
    /// queue in flow to drain.
    pub state: String,
}

impl ChannelInfo {
    /// RabbitMQ's channel name: "<connection name> (<number>)".
    pub fn name(&self) -> String {
        format!("{} ({})", self.connection, self.number)
    }
}

/// One consumer.
#[derive(Debug, Clone)]
pub struct ConsumerInfo {
    pub tag: String,
    pub queue: String,
    pub vhost: String,
    pub channel: u16,
    pub connection: String,
    pub peer_host: String,
    pub peer_port: u16,
    pub user: String,
    pub ack_required: bool,
    pub prefetch_count: u32,
    pub exclusive: bool,
    /// basic.consume's arguments, as JSON.
    pub arguments: serde_json::Value,
    /// Effective consumer timeout (ms); 0 when none.
    pub consumer_timeout_ms: u64,
    /// Receives messages (false for a waiting single-active-consumer).
    pub active: bool,
}

/// The cluster as this node sees it (`GET /api/warren/cluster`, `warrenctl cluster_status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterStatus {
    /// This node's name, `NAME@HOST:PORT`.
    pub node: String,
    pub cluster_name: String,
    /// Every member in the latest membership this node knows (RabbitMQ's disk nodes).
    pub members: Vec<String>,
    /// The members that answer over the inter-node link, this node included.
    pub running: Vec<String>,
    /// The Raft leader this node knows of.
    pub leader: Option<String>,
    /// The metadata group's Raft figures on this node.
    pub raft: RaftFigures,
    /// Each member (sorted by name): voter or learner and, on the leader, replication.
    pub member_details: Vec<ClusterMember>,
    /// Why this node's Raft core stopped, if it did (a full disk, ...): it takes no part
    /// in the cluster until restarted.
    pub raft_stopped: Option<String>,
    /// The quorum queues' own Raft groups open on this node, sorted by vhost and name.
    pub queue_groups: Vec<QueueGroupStatus>,
}

/// A quorum queue's own Raft group as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueGroupStatus {
    pub vhost: String,
    pub name: String,
    /// The group's id (the log index of the queue's declaration in the metadata log).
    pub group: u64,
    pub leader: Option<String>,
    /// This node's term and log positions in the group.
    pub raft: RaftFigures,
    /// Voters and learners (`running`: answered the last ping from this node); replication
    /// on the leader only.
    pub members: Vec<ClusterMember>,
    /// Why the group's Raft core stopped on this node, if it did.
    pub stopped: Option<String>,
}

/// This node's Raft term and log positions (indexes; 0: none yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaftFigures {
    pub term: u64,
    pub is_leader: bool,
    /// The last entry appended to this node's log.
    pub last_written_index: u64,
    pub commit_index: u64,
    pub last_applied_index: u64,
    pub snapshot_index: u64,
    /// Bytes of commands the log holds until a snapshot covers them.
    pub log_bytes: u64,
    /// On the leader, the last entry's time from entering the log to committed and
    /// applied, in µs (0 on a follower, or before the first entry).
    pub commit_latency_us: u64,
}

/// One member of the metadata group as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterMember {
    /// `NAME@HOST:PORT`.
    pub name: String,
    /// Counts toward the quorum (false: a learner being added).
    pub voter: bool,
    /// Answers a ping over the inter-node link from this node.
    pub running: bool,
    /// Replication as the leader tracks it: None on a follower (only the leader knows).
    pub replication: Option<MemberReplication>,
}

/// A member's copy of the log as the leader knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberReplication {
    /// The highest index the member has acknowledged (None: nothing yet this term).
    pub matched_index: Option<u64>,
    /// Entries it lacks: the leader's last index minus `matched_index`.
    pub lag_entries: u64,
}

/// What a quorum queue membership change (`grow`, `shrink`) did to one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumMemberChange {
    pub vhost: String,
    pub name: String,
    /// The queue's voters after the change (before it, when it failed).
    pub voters: usize,
    /// Why the queue was left as it was.
    pub error: Option<String>,
}

/// A feature flag this node supports (`GET /api/feature-flags`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureFlagInfo {
    pub name: String,
    pub desc: String,
    /// `stable`, `experimental` or `required`.
    pub stability: String,
    /// Enabled in the cluster (a single node has every flag it supports enabled).
    pub enabled: bool,
}

pub trait Node: Send + Sync + 'static {
    fn info(&self) -> NodeInfo;
    /// The feature flags this node supports and their state.
    fn feature_flags(&self) -> Vec<FeatureFlagInfo> {
        Vec::new()
    }
    /// Enable feature flag `name` (`all`: every one this node supports) in the cluster.
    fn enable_feature_flag(&self, name: String) -> BoxFuture<'_, Result<(), NodeError>> {
        Box::pin(async move { Err(NodeError::Invalid(format!("feature flag '{name}' is not supported by this node"))) })
    }
    /// The cluster this node is a member of; None for a node without clustering.
    fn cluster_status(&self) -> BoxFuture<'_, Option<ClusterStatus>> {
        Box::pin(async { None })
    }
    /// Add (`join`) or remove a member of the cluster, named `NAME@HOST:PORT`.
    fn cluster_change(&self, node: String, join: bool) -> BoxFuture<'_, Result<(), NodeError>> {
        let _ = (node, join);
        Box::pin(async { Err(NodeError::Invalid("this node is not clustered".into())) })
    }
    /// Add (`add`) or take away `node`'s vote in quorum queue `vhost`/`name`
    /// (`POST /api/queues/quorum/{vhost}/{name}/replicas/add`, `DELETE .../replicas/delete`).
    fn quorum_member(
        &self,
        vhost: String,
        name: String,
        node: String,
        add: bool,
    ) -> BoxFuture<'_, Result<(), NodeError>> {
        let _ = (vhost, name, node, add);
        Box::pin(async { Err(NodeError::Invalid("this node is not clustered".into())) })
    }
    /// `grow` (`Some((even_only, vhost pattern, queue pattern))`) or `shrink` (None): make
    /// `node` a voter of every matching quorum queue, or no longer a voter of any.
    fn quorum_regroup(
        &self,
        node: String,
        grow: Option<(bool, regex::Regex, regex::Regex)>,
    ) -> BoxFuture<'_, Result<Vec<QuorumMemberChange>, NodeError>> {
        let _ = (node, grow);
        Box::pin(async { Err(NodeError::Invalid("this node is not clustered".into())) })
    }
    /// Rebalance the leaders of the quorum queues whose vhost and name match the patterns
    /// over the running nodes (`rabbitmq-queues rebalance quorum`); the leaders per running
    /// node afterwards. A node without clustering has nothing to move.
    fn quorum_rebalance(
        &self,
        vhosts: regex::Regex,
        queues: regex::Regex,
    ) -> BoxFuture<'_, Result<Vec<(String, usize)>, NodeError>> {
        let _ = (vhosts, queues);
        Box::pin(async { Ok(Vec::new()) })
    }
    /// Where the node's memory goes (`GET /api/nodes/{node}/memory`); None answers
    /// RabbitMQ's `"not_available"`.
    fn memory_breakdown(&self) -> Option<MemoryBreakdown> {
        None
    }
    /// Largest request body the API reads, in bytes (`management.http.max_body_size`).
    fn http_max_body_bytes(&self) -> usize {
        20 * 1024 * 1024
    }
    /// Minutes of inactivity after which the web UI logs out (RabbitMQ's
    /// `management.login_session_timeout`), given to it by `/api/whoami`.
    fn login_session_timeout_min(&self) -> u64 {
        480
    }
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
    /// Declare the queue `name` (create it, or check that the existing one is equivalent:
    /// 406); whether it was created. A clustered node declares a quorum queue through the
    /// cluster, so every node has it.
    fn declare_queue(&self, vh: &VHost, name: &str, opts: broker::queue::QueueOptions) -> Result<bool, AmqpError>;
    /// Delete `queue` (on every node of a cluster for a quorum queue); the consumers it had
    /// here, to be told (basic.cancel).
    fn delete_queue(&self, vh: &VHost, queue: &Arc<broker::Queue>) -> Result<Vec<broker::queue::Consumer>, AmqpError>;
    /// Declare `name` (create it, or check that the existing one is equivalent: 406). A
    /// clustered node declares it through the cluster, so every node has it; without a
    /// quorum that fails with 541 INTERNAL_ERROR (the API's 503).
    fn declare_exchange(&self, vh: &VHost, name: &str, opts: ExchangeOptions) -> Result<(), AmqpError>;
    /// Delete `name` and its bindings (on every node of a cluster).
    fn delete_exchange(&self, vh: &VHost, name: &str, if_unused: bool) -> Result<(), AmqpError>;
    /// Add (or remove) a binding of `source` to `destination`. In a cluster a binding to an
    /// exchange or a quorum queue is made on every node; one to a classic queue on this one.
    fn change_binding(
        &self,
        vh: &VHost,
        source: &str,
        destination: &Destination,
        routing_key: &str,
        arguments: wire::FieldTable,
        add: bool,
    ) -> Result<(), AmqpError>;

    // ---- Group "stats": connections, channels, consumers, statistics ----
    /// The rate store the sampler fills (see [`crate::stats`]).
    fn rates(&self) -> &crate::stats::RateDb;
    /// Every open channel of logged-in connections.
    fn channels(&self) -> Vec<ChannelInfo>;
    /// Every consumer of every channel.
    fn consumers(&self) -> Vec<ConsumerInfo>;
    /// Message totals and churn since the node started.
    fn node_counters(&self) -> NodeCounters;
}

/// What async [`Node`] methods return (the trait is used as `dyn Node`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The connection id the HTTP API acts as in the broker. Connection ids start at 1, so no
/// client's exclusive queue is ever this one's.
pub const API_CONNECTION: broker::ConnectionId = 0;
