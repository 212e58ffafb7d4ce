//! [`ClusterNode`]: this node of the cluster, as the broker and `warrenctl` see it — the
//! inter-node listener and transport, the metadata [`Group`] every member belongs to, and
//! the other groups this node runs ([`ClusterNode::open_group`]).
//!
//! The metadata group's operations are [`ClusterNode`]'s own methods (they delegate to
//! [`ClusterNode::meta`]); how writes are forwarded to the leader and reads made
//! linearizable is in [`crate::group`]. Client operations wait for a leader at most the
//! request deadline ([`REQUEST_DEADLINE`] unless configured).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::{Config, SnapshotPolicy};
use tokio::net::TcpListener;

use crate::group::{Group, GroupId, GroupSettings};
use crate::handshake::{Cookie, Offer};
use crate::state_machine::{Applied, Applier};
use crate::transport::{BrokerAnswer, BrokerHandler, Inbound, LinkTls, Request, Response, Transport};
use crate::{Error, Raft, parse_node_name};

/// How long a client operation may wait for a leader (elections included), by default
/// ([`NodeConfig::request_deadline`]).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Largest command `propose` accepts (a quorum-queue entry carries message bodies: this is
/// also the largest message a quorum queue takes). The bound keeps an append batch
/// ([`MAX_ENTRIES_PER_APPEND`] entries, a CBOR byte string each) inside one transport frame
/// (`frame::PAYLOAD_MAX_BYTES`, 64 MiB), even when a follower forwards it wrapped again.
pub const MAX_COMMAND_BYTES: usize = 256 * 1024;
/// Entries per AppendEntries request: 48 × 256 KiB = 12 MiB of commands at most.
pub const MAX_ENTRIES_PER_APPEND: u64 = 48;
/// The rest of a proposal queued at the leader ([`ClusterNode::propose_queued`]): its log
/// index and what applying it returned, once applied on this node (or its index alone once
/// committed, with [`Settles::AtCommit`]).
pub type Queued = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(u64, Vec<u8>), Error>> + Send>>;

/// What [`ClusterNode::propose_queued`] did with a command.
pub enum Proposal {
    Queued(Queued),
    /// Not proposed: this node is not the leader; the command, to forward.
    NotLeader(Vec<u8>),
    Failed(Error),
}

/// When a queued proposal's future ([`Queued`]) completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settles {
    /// Once this node applied the entry: the future carries what applying it returned.
    Applied,
    /// Once a majority has the entry on disk (committed), before it is applied anywhere:
    /// for a caller that already knows what applying it will do.
    AtCommit,
}

/// How long [`ClusterNode::running_members`] waits for a peer's answer.
pub const PING_TIMEOUT: Duration = Duration::from_millis(1000);

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `NAME@HOST:PORT`: the node's identity and the address peers dial.
    pub name: String,
    pub data_dir: PathBuf,
    /// Where to accept peers (may differ from the name's address, e.g. `0.0.0.0:PORT`).
    pub listen: SocketAddr,
    /// RabbitMQ's `cluster_formation.classic_config.nodes`: the initial members, this node
    /// included. Empty for a node that will be added later with `add_member`.
    pub cluster_nodes: Vec<String>,
    /// Take a snapshot (and purge the log before it) every this many applied entries.
    pub snapshot_every_entries: u64,
    /// ... and whenever the log holds more than this many bytes of commands: the log is kept
    /// in memory until a snapshot covers it, so this bounds the node's memory for it
    /// (quorum-queue entries carry message bodies, up to `MAX_COMMAND_BYTES` each).
    pub snapshot_log_bytes: u64,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// The heartbeat of the other groups (quorum queues'), whose election timeout is 2 to 4
    /// times it (a follower campaigns after 6 to 8 without one: the lease comes first). Longer than the metadata group's: every group's leader sends one to each
    /// member, so an idle node's cost grows with the number of groups (committed entries
    /// reach the followers at once anyway; heartbeats only show the leader is alive).
    pub group_heartbeat_ms: u64,
    /// How long a write or read may wait for a leader and a quorum before it fails.
    pub request_deadline: Duration,
    /// The cluster's shared secret: every inter-node connection proves both sides hold it.
    pub cookie: Cookie,
    /// TLS on every inter-node connection (None: plain TCP).
    pub tls: Option<LinkTls>,
    /// Bind outbound inter-node connections to this address (None: the kernel's choice).
    pub source_ip: Option<std::net::IpAddr>,
    /// What the node announces in every inter-node handshake: the wire-protocol versions it
    /// speaks (a peer with none in common is refused) and the feature flags it supports
    /// (a node lacking one the cluster has enabled cannot be added: [`Applier::required_features`]).
    pub offer: Offer,
}

impl NodeConfig {
    pub fn new(
        name: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        listen: SocketAddr,
        cookie: Cookie,
    ) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            data_dir: data_dir.into(),
            listen,
            cookie,
            tls: None,
            source_ip: None,
            offer: Offer::default(),
            cluster_nodes: Vec::new(),
            snapshot_every_entries: 10_000,
            snapshot_log_bytes: DEFAULT_SNAPSHOT_LOG_BYTES,
            heartbeat_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            group_heartbeat_ms: DEFAULT_GROUP_HEARTBEAT_MS,
            request_deadline: REQUEST_DEADLINE,
        }
    }
}

/// This node's view of the metadata group, from openraft's metrics and the log store
/// ([`ClusterNode::status`]). Indexes are Raft log indexes; 0 means none yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftStatus {
    /// The current term (bumped by every election this node has seen).
    pub term: u64,
    /// The leader this node knows of, `NAME@HOST:PORT`.
    pub leader: Option<String>,
    pub is_leader: bool,
    /// The last entry appended to this node's log (RabbitMQ's "last written index").
    pub last_log_index: u64,
    /// The last entry this node knows committed.
    pub committed_index: u64,
    /// The last entry applied to this node's state machine.
    pub applied_index: u64,
    /// The last entry covered by this node's snapshot.
    pub snapshot_index: u64,
    /// Bytes of commands the log holds (in memory until a snapshot covers them).
    pub log_bytes: u64,
    /// On the leader: how long the last entry proposed through it took from entering the
    /// log to being committed and applied, in µs (0 on a follower, or before the first).
    pub commit_latency_us: u64,
    /// Every member of the latest membership this node knows, sorted by name.
    pub members: Vec<MemberStatus>,
    /// Why the Raft core stopped, if it did (e.g. its log could not be written: a full
    /// disk). A stopped node takes no part in the group until it is restarted: it neither
    /// votes nor acknowledges, and proposals through it fail.
    pub stopped: Option<String>,
}

/// One member of the group as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberStatus {
    /// `NAME@HOST:PORT`.
    pub name: String,
    /// A voter counts toward the quorum; a learner (a node being added) only receives the log.
    pub voter: bool,
    /// Replication, known on the leader only (None on a follower): the highest log index
    /// the member has acknowledged (None: nothing acknowledged yet, or not yet probed).
    pub replication: Option<Replication>,
}

/// What the leader knows of a member's copy of the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replication {
    /// The highest index the member has acknowledged (None: none yet this term).
    pub matched_index: Option<u64>,
    /// Entries the member lacks: the leader's last log index minus `matched_index`.
    pub lag_entries: u64,
}

/// A running member of the cluster. Cloning shares it.
#[derive(Clone)]
pub struct ClusterNode {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    data_dir: PathBuf,
    /// Whether this start initialised the group (the first start of the node that forms it).
    initialized: std::sync::atomic::AtomicBool,
    meta: Group,
    /// The other groups this node runs, by id (shared with the request handler).
    groups: Arc<Groups>,
    /// How every group is started: Raft settings, the transport, deadlines.
    settings: GroupSettings,
    /// Held while a group is opened, closed or deleted: two opens of one group at once
    /// would open its files twice.
    changing: tokio::sync::Mutex<()>,
    transport: Arc<Transport>,
    /// What this node announces (its own answer to [`ClusterNode::member_offer`]).
    offer: Offer,
    /// Serves the broker's own requests from peers (set once the broker is ready).
    broker: Arc<std::sync::OnceLock<Arc<dyn BrokerHandler>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The groups besides the metadata group that this node runs.
type Groups = std::sync::RwLock<HashMap<GroupId, Group>>;

/// Default for [`NodeConfig::group_heartbeat_ms`].
pub const DEFAULT_GROUP_HEARTBEAT_MS: u64 = 500;

/// Default for [`NodeConfig::snapshot_log_bytes`].
pub const DEFAULT_SNAPSHOT_LOG_BYTES: u64 = 64 << 20;

/// Where group `id`'s files live, under the node's data directory.
fn group_dir(data_dir: &std::path::Path, id: GroupId) -> PathBuf {
    data_dir.join("groups").join(format!("{id:016x}"))
}

impl ClusterNode {
    /// Bind `config.listen` and start, committed commands going to `applier`.
    pub async fn start(config: NodeConfig, applier: Arc<dyn Applier>) -> Result<ClusterNode, Error> {
        let listener = TcpListener::bind(config.listen).await?;
        ClusterNode::start_with_listener(config, listener, applier).await
    }

    /// Start with an already bound listener (tests bind port 0 first to learn the port).
    pub async fn start_with_listener(
        config: NodeConfig,
        listener: TcpListener,
        applier: Arc<dyn Applier>,
    ) -> Result<ClusterNode, Error> {
        parse_node_name(&config.name)?;
        for n in &config.cluster_nodes {
            parse_node_name(n)?;
        }
        let raft_config = Config {
            cluster_name: "warren".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            // JSON snapshot chunks in a debug build take longer than the 200 ms default.
            install_snapshot_timeout: 5_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
            max_in_snapshot_log_to_keep: 0,
            max_payload_entries: MAX_ENTRIES_PER_APPEND,
            // A node that cannot win (cut off, restarted, behind) asks before it raises its
            // term: back in touch, it joins the leader's term instead of deposing the leader
            // (and, in a quorum queue's group, moving its consumers) with a higher one.
            enable_pre_vote: Some(true),
            ..Config::default()
        }
        .validate()
        .map_err(|e| Error::Raft(e.to_string()))?;
        let transport = Transport::with_offer(
            config.name.clone(),
            config.cookie.clone(),
            config.tls.clone(),
            config.source_ip,
            config.offer.clone(),
        );
        // A follower campaigns after a leader lease (openraft: `election_timeout_max`)
        // plus a random election timeout without a heartbeat: 6 to 8 missed heartbeats here
        // (3-4 s at the default 500 ms), so a dead leader is replaced in a few seconds
        // while a loaded machine's late heartbeats start no elections.
        let group_raft = Config {
            heartbeat_interval: config.group_heartbeat_ms,
            election_timeout_min: config.group_heartbeat_ms.saturating_mul(2),
            election_timeout_max: config.group_heartbeat_ms.saturating_mul(4),
            ..raft_config.clone()
        }
        .validate()
        .map_err(|e| Error::Raft(e.to_string()))?;
        let meta_settings = GroupSettings {
            me: config.name.clone(),
            raft: Arc::new(raft_config),
            transport: transport.clone(),
            request_deadline: config.request_deadline,
            snapshot_log_bytes: config.snapshot_log_bytes,
        };
        let settings = GroupSettings { raft: Arc::new(group_raft), ..meta_settings.clone() };
        // A node that is not the one forming the group starts from the group's state, not
        // from what its applier held before it joined.
        let reset = !forms_group(&config);
        let meta = Group::open(None, &config.data_dir, applier, reset, &meta_settings).await?;
        let broker: Arc<std::sync::OnceLock<Arc<dyn BrokerHandler>>> = Arc::default();
        let groups: Arc<Groups> = Arc::default();
        let handler = Arc::new(Handler { meta: meta.clone(), groups: groups.clone(), broker: broker.clone() });
        let server = transport.serve(listener, handler);
        let node = ClusterNode {
            inner: Arc::new(Inner {
                name: config.name.clone(),
                data_dir: config.data_dir.clone(),
                initialized: false.into(),
                meta,
                groups,
                settings,
                changing: tokio::sync::Mutex::new(()),
                transport,
                offer: config.offer.clone(),
                broker,
                server,
            }),
        };
        node.bootstrap(&config).await?;
        Ok(node)
    }

    /// Form the cluster from `classic_config`: the node whose name sorts first initializes the
    /// group with all listed nodes as voters; the others wait to be contacted by the leader.
    /// One deterministic initializer means two nodes never found two different clusters.
    /// A node that already has state (a restart) does nothing here.
    async fn bootstrap(&self, config: &NodeConfig) -> Result<(), Error> {
        if !forms_group(config) {
            return Ok(());
        }
        if self.inner.meta.initialize(&config.cluster_nodes).await? {
            self.inner.initialized.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Whether this start initialised the group: the first start of the node that forms
    /// the cluster (the broker then proposes its seed: default user and vhost).
    pub fn initialized_group(&self) -> bool {
        self.inner.initialized.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The metadata group.
    pub fn meta(&self) -> &Group {
        &self.inner.meta
    }

    /// Open group `id` on this node (its files under `groups/<id>/` in the data directory),
    /// committed commands going to `applier`; the group running already is returned as it
    /// is. `initial`: the group's initial members, this node among them — the group is
    /// initialised with them unless it has state already (every initial member may be
    /// given the same list). None for a member added later (it waits for the leader) or a
    /// restart.
    pub async fn open_group(
        &self,
        id: GroupId,
        applier: Arc<dyn Applier>,
        initial: Option<&[String]>,
    ) -> Result<Group, Error> {
        let _changing = self.inner.changing.lock().await;
        if let Some(g) = self.group(id) {
            return Ok(g);
        }
        let dir = group_dir(&self.inner.data_dir, id);
        let group = Group::open(Some(id), &dir, applier, true, &self.inner.settings).await?;
        self.inner.groups.write().unwrap_or_else(|e| e.into_inner()).insert(id, group.clone());
        if let Some(members) = initial {
            group.initialize(members).await?;
        }
        Ok(group)
    }

    /// Group `id`, if this node runs it.
    pub fn group(&self, id: GroupId) -> Option<Group> {
        self.inner.groups.read().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()
    }

    /// The ids of the groups this node runs (the metadata group aside).
    pub fn group_ids(&self) -> Vec<GroupId> {
        let mut ids: Vec<GroupId> =
            self.inner.groups.read().unwrap_or_else(|e| e.into_inner()).keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The ids of the groups whose files are in the data directory (running or not): what
    /// a restarted node reopens, or removes when their queue is gone.
    pub fn stored_group_ids(&self) -> Result<Vec<GroupId>, Error> {
        let dir = self.inner.data_dir.join("groups");
        let entries = match std::fs::read_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            r => r?,
        };
        let mut ids = Vec::new();
        for e in entries {
            let name = e?.file_name();
            // Anything else in there is not ours: leave it.
            if let Some(id) = name.to_str().and_then(|n| u64::from_str_radix(n, 16).ok()).filter(|_| name.len() == 16) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Stop group `id` on this node (its files stay); peers' requests to it are answered
    /// [`Response::NoGroup`] from now on.
    pub async fn close_group(&self, id: GroupId) {
        let _changing = self.inner.changing.lock().await;
        self.close_group_locked(id).await;
    }

    async fn close_group_locked(&self, id: GroupId) {
        let group = self.inner.groups.write().unwrap_or_else(|e| e.into_inner()).remove(&id);
        if let Some(g) = group {
            g.shutdown().await;
        }
    }

    /// Stop group `id` and delete its files: the group's queue is gone.
    pub async fn delete_group(&self, id: GroupId) -> Result<(), Error> {
        let _changing = self.inner.changing.lock().await;
        self.close_group_locked(id).await;
        match std::fs::remove_dir_all(group_dir(&self.inner.data_dir, id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Serve peers' [`Request::Broker`] requests with `handler` (once; later calls are
    /// ignored). Until then they are answered [`BrokerAnswer::NoHandler`].
    pub fn set_broker_handler(&self, handler: Arc<dyn BrokerHandler>) {
        let _ = self.inner.broker.set(handler);
    }

    /// Send the broker's `request` to `peer` and wait at most `timeout` for its answer.
    pub async fn call_broker(&self, peer: &str, request: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, String> {
        match self.inner.transport.call(peer, Request::Broker(request), timeout).await {
            Ok(Response::Broker(BrokerAnswer::Ok(bytes))) => Ok(bytes),
            Ok(Response::Broker(BrokerAnswer::NoHandler)) => Err(format!("{peer} is still starting")),
            Ok(_) => Err(format!("{peer} answered with a response of the wrong kind")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The metadata group's openraft handle, for metrics and tests.
    pub fn raft(&self) -> &Raft {
        self.inner.meta.raft()
    }

    /// [`Group::propose`] on the metadata group.
    pub async fn propose(&self, cmd: Vec<u8>) -> Result<u64, Error> {
        self.inner.meta.propose(cmd).await
    }

    /// [`Group::propose_and_wait`] on the metadata group.
    pub async fn propose_and_wait(&self, cmd: Vec<u8>) -> Result<(u64, Vec<u8>), Error> {
        self.inner.meta.propose_and_wait(cmd).await
    }

    /// [`Group::propose_queued`] on the metadata group.
    pub async fn propose_queued(&self, cmd: Vec<u8>, settles: Settles) -> Proposal {
        self.inner.meta.propose_queued(cmd, settles).await
    }

    /// [`Group::add_member`] on the metadata group: `warrenctl join_cluster`.
    pub async fn add_member(&self, name: &str) -> Result<u64, Error> {
        self.inner.meta.add_member(name).await
    }

    /// [`Group::remove_member`] on the metadata group: `warrenctl forget_cluster_node`.
    pub async fn remove_member(&self, name: &str) -> Result<u64, Error> {
        self.inner.meta.remove_member(name).await
    }

    /// [`Group::read`] on the metadata group.
    pub async fn read(&self) -> Result<Applied, Error> {
        self.inner.meta.read().await
    }

    /// The metadata group's locally applied state, without a leader round trip (may be stale).
    pub fn local_state(&self) -> Applied {
        self.inner.meta.local_state()
    }

    /// The cluster's members (voters and learners of the metadata group) this node knows.
    pub fn members(&self) -> Vec<String> {
        self.inner.meta.members()
    }

    /// The voters of the metadata group this node knows.
    pub fn voters(&self) -> Vec<String> {
        self.inner.meta.voters()
    }

    /// The metadata group's leader this node knows of.
    pub fn leader(&self) -> Option<String> {
        self.inner.meta.leader()
    }

    /// [`Group::status`] of the metadata group.
    pub fn status(&self) -> RaftStatus {
        self.inner.meta.status()
    }

    /// The members that answer a ping over the inter-node link within [`PING_TIMEOUT`],
    /// this node included: RabbitMQ's "running nodes" as this node sees them. A peer that
    /// restarted may show as not running for up to the transport's reconnect backoff (2 s).
    pub async fn running_members(&self) -> Vec<String> {
        let mut probes = tokio::task::JoinSet::new();
        let mut running = Vec::new();
        for m in self.members() {
            if m == self.inner.name {
                if self.core_running() {
                    running.push(m);
                }
                continue;
            }
            let transport = self.inner.transport.clone();
            probes.spawn(async move {
                let up = transport.answers_ping(&m, PING_TIMEOUT).await;
                (m, up)
            });
        }
        while let Some(r) = probes.join_next().await {
            if let Ok((m, true)) = r {
                running.push(m);
            }
        }
        running.sort();
        running
    }

    /// What `member` announced in its latest inter-node handshake — wire versions and
    /// supported feature flags — after making sure it answers now (a ping within
    /// [`PING_TIMEOUT`], over a connection whose handshake gave the offer). This node's own
    /// for its own name. An error when it does not answer.
    pub async fn member_offer(&self, member: &str) -> Result<Offer, Error> {
        if member == self.inner.name {
            return Ok(self.inner.offer.clone());
        }
        match self.inner.transport.call(member, Request::Ping, PING_TIMEOUT).await {
            Ok(Response::Client(Ok(_))) => {}
            Ok(_) => return Err(Error::Raft(format!("{member} answered a ping with a response of the wrong kind"))),
            Err(e) => return Err(Error::Raft(format!("{member} does not answer over the inter-node link: {e}"))),
        }
        self.inner
            .transport
            .peer_offer(member)
            .ok_or_else(|| Error::Raft(format!("{member} answered without a handshake offer")))
    }

    /// What `member` announced in its latest handshake with this node, without asking it
    /// now (None: no handshake with it yet). It may have restarted since, with another binary.
    pub fn last_offer(&self, member: &str) -> Option<Offer> {
        if member == self.inner.name {
            return Some(self.inner.offer.clone());
        }
        self.inner.transport.peer_offer(member)
    }

    /// This node leads the metadata group.
    pub fn is_leader(&self) -> bool {
        self.inner.meta.is_leader()
    }

    /// The metadata group's Raft core is running (not stopped on a fatal error or shut down).
    pub fn core_running(&self) -> bool {
        self.inner.meta.core_running()
    }

    /// Test hook: drop all traffic between this node and `peer` (both directions as seen
    /// from here; call it on both sides to cut a link completely).
    pub fn isolate(&self, peer: &str, on: bool) {
        self.inner.transport.isolate(peer, on);
    }

    /// Stop cleanly: every group's Raft core, and the listener.
    pub async fn shutdown(&self) {
        for id in self.group_ids() {
            self.close_group(id).await;
        }
        self.inner.meta.shutdown().await;
        self.inner.server.abort();
    }
}

/// Whether `config` makes this node the one that initialises the group: it is listed, and
/// its name sorts first. A node not in the list (or with an empty list) is a joiner that
/// waits for `add_member`; it must never initialise, or it would found a second cluster.
fn forms_group(config: &NodeConfig) -> bool {
    config.cluster_nodes.contains(&config.name) && config.cluster_nodes.iter().min() == Some(&config.name)
}

/// Serves peers' requests on this node.
struct Handler {
    meta: Group,
    groups: Arc<Groups>,
    broker: Arc<std::sync::OnceLock<Arc<dyn BrokerHandler>>>,
}

impl Inbound for Handler {
    async fn handle(&self, from: String, request: Request) -> Response {
        use crate::transport::GroupRequest;
        match request {
            Request::Append(r) => self.meta.serve(GroupRequest::Append(r)).await,
            Request::Vote(r) => self.meta.serve(GroupRequest::Vote(r)).await,
            Request::Snapshot(r) => self.meta.serve(GroupRequest::Snapshot(r)).await,
            Request::Client(r) => self.meta.serve(GroupRequest::Client(r)).await,
            Request::TransferLeader(r) => self.meta.serve(GroupRequest::TransferLeader(r)).await,
            Request::PreVote(r) => self.meta.serve(GroupRequest::PreVote(r)).await,
            Request::Group(id, r) => {
                let group = self.groups.read().unwrap_or_else(|e| e.into_inner()).get(&id).cloned();
                match group {
                    Some(g) => g.serve(r).await,
                    None => Response::NoGroup,
                }
            }
            // A node whose Raft core stopped is not a running member: say so.
            Request::Ping => match &self.meta.raft().metrics().borrow_watched().running_state {
                Ok(()) => Response::Client(Ok((0, Vec::new()))),
                Err(fatal) => {
                    Response::Client(Err(crate::transport::ClientFailure::Other(format!("raft core stopped: {fatal}"))))
                }
            },
            Request::Broker(r) => match self.broker.get() {
                Some(h) => Response::Broker(BrokerAnswer::Ok(h.handle(from, r).await)),
                None => Response::Broker(BrokerAnswer::NoHandler),
            },
        }
    }

    fn append_stream(
        &self,
        group: Option<GroupId>,
        input: crate::transport::AppendInput,
    ) -> Option<crate::transport::AppendAnswers> {
        let raft = match group {
            None => self.meta.raft().clone(),
            Some(id) => self.groups.read().unwrap_or_else(|e| e.into_inner()).get(&id)?.raft().clone(),
        };
        Some(Box::pin(raft.stream_append(input)))
    }
}
