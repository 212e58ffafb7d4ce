//! Server settings. Defaults are RabbitMQ's, so clients see what they expect.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where a listener binds: an address, or (None) every interface, IPv4 and IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr {
    pub ip: Option<IpAddr>,
    pub port: u16,
}

/// Whether AMQPS clients must present a certificate (RabbitMQ's `ssl_options.verify`
/// and `ssl_options.fail_if_no_peer_cert`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `verify_none`: no client certificate is asked for.
    None,
    /// `verify_peer` with `fail_if_no_peer_cert = false`: a certificate, if sent, must be
    /// signed by a CA in `cacertfile`; clients without one are let in.
    Optional,
    /// `verify_peer` with `fail_if_no_peer_cert = true`: a certificate signed by a CA in
    /// `cacertfile` is required.
    Required,
}

/// TLS protocol versions an AMQPS listener accepts (`ssl_options.versions.N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// AMQPS settings (RabbitMQ's `ssl_options.*`). Files are PEM.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// The server's certificate chain, leaf first.
    pub certfile: PathBuf,
    /// The server's private key (PKCS#8, PKCS#1 or SEC1).
    pub keyfile: PathBuf,
    /// CAs that sign client certificates (needed for client verification).
    pub cacertfile: Option<PathBuf>,
    pub client_auth: ClientAuth,
    /// Accepted versions; RabbitMQ's default is TLS 1.3 and 1.2.
    pub versions: Vec<TlsVersion>,
    /// Time the TLS handshake may take (RabbitMQ's `ssl_handshake_timeout`: 5 s), before
    /// `handshake_timeout` starts for the AMQP handshake.
    pub handshake_timeout: Duration,
}

/// TLS on the inter-node link (`warren.cluster_tls.*`), mutual: every node presents
/// `certfile` (for the host of its `NAME@HOST:PORT`, usable as server and client) and
/// accepts only peers whose certificate `cacertfile` signed. Files are PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTlsFiles {
    pub certfile: PathBuf,
    pub keyfile: PathBuf,
    pub cacertfile: PathBuf,
}

impl TlsConfig {
    /// RabbitMQ's `ssl_handshake_timeout` default.
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(5000);
}

/// The permissions the default user gets on the default vhost (regular expressions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub configure: String,
    pub write: String,
    pub read: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Largest frame we accept and offer in connection.tune, framing included (RabbitMQ: 131072).
    pub frame_max: u32,
    /// Highest channel number offered in connection.tune (RabbitMQ: 2047).
    pub channel_max: u16,
    /// Heartbeat interval offered in connection.tune, in seconds (RabbitMQ: 60).
    pub heartbeat_secs: u16,
    /// Largest message body accepted (RabbitMQ 4.x: 16 MiB).
    pub max_message_size_bytes: u64,
    /// Time a new connection has to complete the handshake (RabbitMQ: 10 s).
    pub handshake_timeout: Duration,
    /// Users allowed to log in only from a loopback address (RabbitMQ: [guest]).
    pub loopback_users: Vec<String>,
    /// Outgoing bytes buffered per connection before deliveries to it pause.
    pub outbox_high_water_bytes: usize,
    /// Outgoing bytes buffered per connection (replies of every kind, deliveries, and the
    /// batch being written) above which the server stops reading that client's requests
    /// until the client reads its replies. Above outbox_high_water_bytes plus the largest
    /// message, so deliveries alone never pause a connection's reading.
    pub outbox_max_bytes: usize,
    /// Largest argument table (encoded bytes) accepted by a declare, bind, unbind or
    /// consume; larger ones are refused with 406 PRECONDITION_FAILED.
    pub max_arguments_table_bytes: usize,
    /// Connections the node accepts at once (RabbitMQ's connection_max); None = no limit,
    /// as RabbitMQ's default. connection.open beyond it gets 530 NOT_ALLOWED.
    pub connection_max: Option<usize>,
    pub data_dir: PathBuf,
    /// Bytes of ready messages a queue keeps in RAM before paging the rest to disk.
    pub queue_ram_budget_bytes: u64,
    /// Consumer timeout for every queue without x-consumer-timeout. Off by default:
    /// RabbitMQ's 30-minute default kills channels that hold long or delayed tasks.
    pub consumer_timeout: Option<Duration>,
    /// Memory alarm threshold (bytes of RSS); None = 0.6 of the machine's RAM, as
    /// RabbitMQ's vm_memory_high_watermark.
    pub memory_high_watermark_bytes: Option<u64>,
    /// What the memory alarm compares with the watermark (RabbitMQ's
    /// `vm_memory_calculation_strategy`): RSS (default, as RabbitMQ) or bytes allocated.
    pub memory_strategy: crate::alarms::MemoryStrategy,
    /// Disk alarm: raised when free space under the data dir drops below this
    /// (RabbitMQ's disk_free_limit: 50 MB).
    pub disk_free_limit_bytes: u64,
    /// File descriptors kept free for queue files when admitting connections: a new
    /// connection is refused (closed at once) when fewer than this would remain under
    /// RLIMIT_NOFILE. Capped at a quarter of the limit.
    pub fd_reserve_count: u64,
    /// Queue files (segments, acks, …) the store keeps open at most, shared by all queues;
    /// others are opened on demand (least recently used closed first).
    pub store_open_files_max: usize,
    /// Queues, exchanges (beyond the predeclared ones) and bindings the node holds at most:
    /// each costs memory for as long as it exists, and declares are not blocked by the
    /// memory alarm. Reaching one is 406 on the channel (for queues with RabbitMQ's
    /// `cluster_queue_limit` text).
    pub queue_max_count: usize,
    pub exchange_max_count: usize,
    pub binding_max_count: usize,
    /// Plain AMQP listeners (RabbitMQ's `listeners.tcp.*`: port 5672 on every interface).
    pub amqp_listeners: Vec<ListenAddr>,
    /// AMQPS listeners (`listeners.ssl.*`: none by default); they need `tls`.
    pub amqps_listeners: Vec<ListenAddr>,
    /// AMQPS settings; None when no `ssl_options` were given.
    pub tls: Option<TlsConfig>,
    /// The user created on a fresh node (RabbitMQ: guest / guest, on vhost "/").
    pub default_user: String,
    pub default_pass: String,
    pub default_vhost: String,
    /// Tags of the default user (RabbitMQ: administrator).
    pub default_user_tags: Vec<String>,
    /// Permissions of the default user on the default vhost (RabbitMQ: ".*" for all three).
    pub default_permissions: Permissions,
    /// Definitions file (JSON export) imported at boot (RabbitMQ's `load_definitions`).
    pub load_definitions: Option<PathBuf>,
    /// HTTP management API port and address (RabbitMQ: 15672 on every interface).
    pub management_port: u16,
    pub management_ip: Option<IpAddr>,
    /// Largest HTTP API request body, in bytes (RabbitMQ's `management.http.max_body_size`,
    /// 20 MiB: a definitions file of about 200k queues).
    pub management_http_max_body_bytes: u64,
    /// Minutes of inactivity after which the web UI logs its user out (RabbitMQ's
    /// `management.login_session_timeout`, 480: 8 hours).
    pub management_login_session_timeout_min: u64,
    /// Prometheus metrics port and address (RabbitMQ: 15692 on every interface).
    pub prometheus_port: u16,
    pub prometheus_ip: Option<IpAddr>,
    /// The node's name (`--node-name`, `$WARREN_NODENAME`, `$RABBITMQ_NODENAME`,
    /// `warren.node_name`); None: `warren@<hostname>`. In a cluster, `NAME@HOST` picks the
    /// node's own entry in `cluster_nodes`, or it is the full `NAME@HOST:PORT`.
    pub node_name: Option<String>,
    /// RabbitMQ's `cluster_formation.classic_config.nodes.N`: `NAME@HOST:PORT` of every
    /// initial member. Empty (and no `cluster_listen`): a single node, no clustering.
    pub cluster_nodes: Vec<String>,
    /// Where the inter-node (Raft) listener binds (`warren.cluster_listen`); None: the
    /// address of the node's own `NAME@HOST:PORT`.
    pub cluster_listen: Option<std::net::SocketAddr>,
    /// The local IP outbound inter-node connections bind (`warren.cluster_source_ip`); None:
    /// the kernel's choice. For a fault proxy that must tell nodes on one host apart.
    pub cluster_source_ip: Option<std::net::IpAddr>,
    /// RabbitMQ's `cluster_name`; None: the name of the first node of `cluster_nodes` (in
    /// sort order, the one that forms the cluster), or the node's own name when alone.
    pub cluster_name: Option<String>,
    /// In a cluster: how long a change of users, vhosts, permissions, policies or limits
    /// waits for a leader and a quorum before it fails (`warren.cluster_write_timeout_ms`).
    pub cluster_write_timeout_ms: u64,
    /// In a cluster: take a Raft snapshot (and drop the log before it) every this many
    /// applied entries (`warren.cluster_snapshot_every`).
    pub cluster_snapshot_every_entries: u64,
    /// In a cluster: also take one whenever the Raft log holds more than this many bytes
    /// of commands, which it keeps in memory until then (`warren.cluster_snapshot_log_bytes`).
    pub cluster_snapshot_log_bytes: u64,
    /// In a cluster: bytes of quorum-queue commands waiting for the cluster (not yet
    /// committed) past which publishes are nacked (`warren.cluster_pending_max_bytes`).
    pub cluster_pending_max_bytes: usize,
    /// Quorum queues a clustered node holds at most (`warren.quorum_queue_max`): each has a
    /// Raft group of its own — a task, timers, open log files and a log in memory until
    /// its snapshot — on every node. Past it a quorum declare is refused with 406.
    pub quorum_queue_max_count: usize,
    /// Bytes all quorum queues' group logs may hold in memory on this node together
    /// (`warren.quorum_queue_logs_max_bytes`); past it the largest are snapshotted.
    pub quorum_queue_logs_max_bytes: u64,
    /// The heartbeat of each quorum queue's Raft group, ms (`warren.quorum_queue_heartbeat_ms`);
    /// a queue elects a new leader 6 to 8 times this after its leader stops answering.
    pub quorum_queue_heartbeat_ms: u64,
    /// In a cluster: bytes of messages forwarded to classic queues of other nodes and not
    /// yet answered past which further such publishes are nacked
    /// (`warren.cluster_forward_max_bytes`).
    pub cluster_forward_max_bytes: usize,
    /// In a cluster: the cookie every node shares (`warren.cluster_cookie`); None: from
    /// `$RABBITMQ_ERLANG_COOKIE` or the cookie file (`cluster_cookie`).
    pub cluster_cookie: Option<String>,
    /// In a cluster: the file holding the cookie (`warren.cluster_cookie_file`); None:
    /// `$HOME/.erlang.cookie`, created when missing.
    pub cluster_cookie_file: Option<PathBuf>,
    /// In a cluster: TLS on the inter-node link; None: plain TCP.
    pub cluster_tls: Option<ClusterTlsFiles>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat_secs: 60,
            max_message_size_bytes: 16 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            loopback_users: vec!["guest".to_owned()],
            outbox_high_water_bytes: 1024 * 1024,
            outbox_max_bytes: 32 * 1024 * 1024,
            max_arguments_table_bytes: 64 * 1024,
            connection_max: None,
            data_dir: PathBuf::from("./warren-data"),
            queue_ram_budget_bytes: 8 * 1024 * 1024,
            consumer_timeout: None,
            memory_high_watermark_bytes: None,
            memory_strategy: crate::alarms::MemoryStrategy::Rss,
            disk_free_limit_bytes: 50_000_000,
            fd_reserve_count: 256,
            store_open_files_max: 1024,
            queue_max_count: 1_000_000,
            exchange_max_count: 1_000_000,
            binding_max_count: 5_000_000,
            amqp_listeners: vec![ListenAddr { ip: None, port: 5672 }],
            amqps_listeners: Vec::new(),
            tls: None,
            default_user: "guest".to_owned(),
            default_pass: "guest".to_owned(),
            default_vhost: "/".to_owned(),
            default_user_tags: vec!["administrator".to_owned()],
            default_permissions: Permissions {
                configure: ".*".to_owned(),
                write: ".*".to_owned(),
                read: ".*".to_owned(),
            },
            load_definitions: None,
            management_port: 15672,
            management_ip: None,
            management_http_max_body_bytes: 20 * 1024 * 1024,
            management_login_session_timeout_min: 480,
            prometheus_port: 15692,
            prometheus_ip: None,
            node_name: None,
            cluster_nodes: Vec::new(),
            cluster_listen: None,
            cluster_source_ip: None,
            cluster_name: None,
            cluster_write_timeout_ms: 10_000,
            cluster_snapshot_every_entries: 10_000,
            cluster_snapshot_log_bytes: cluster::node::DEFAULT_SNAPSHOT_LOG_BYTES,
            cluster_pending_max_bytes: crate::quorum_queues::PENDING_MAX_BYTES,
            quorum_queue_max_count: crate::quorum_queues::QUORUM_QUEUE_MAX,
            quorum_queue_logs_max_bytes: crate::quorum_queues::QUORUM_QUEUE_LOGS_MAX_BYTES,
            quorum_queue_heartbeat_ms: cluster::node::DEFAULT_GROUP_HEARTBEAT_MS,
            cluster_forward_max_bytes: crate::classic_queues::FORWARD_MAX_BYTES,
            cluster_cookie: None,
            cluster_cookie_file: None,
            cluster_tls: None,
        }
    }
}
