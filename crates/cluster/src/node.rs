//! [`ClusterNode`]: one member of the metadata Raft group, as the broker and `warrenctl` see it.
//!
//! Writes (`propose`, `add_member`, `remove_member`) may be called on any node: a follower
//! **forwards** them to the leader it knows and returns the leader's answer, retrying while an
//! election is under way, until the request deadline ([`REQUEST_DEADLINE`] unless configured). [`Error::NotLeader`] is returned only
//! when no leader became known before the deadline. A forwarded write whose link fails after
//! sending is not retried (it might apply twice): it returns [`Error::Indeterminate`]. Reads go through [`ClusterNode::read`],
//! which gets a read index from the leader (which confirms its leadership with a quorum first)
//! and waits until the local state machine has applied it — linearizable on any node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    CheckIsLeaderError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, ChangeMembers, Config, ServerState, SnapshotPolicy};
use tokio::net::TcpListener;

use crate::handshake::{Cookie, Offer};
use crate::log_store::LogStore;
use crate::state_machine::{Applied, Applier, StateMachine};
use crate::transport::{
    BrokerAnswer, BrokerHandler, CallError, ClientFailure, ClientRequest, Inbound, LinkTls, Request, Response,
    Transport,
};
use crate::{Error, NodeId, Raft, TypeConfig, node_id, parse_node_name};

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
/// index and what applying it returned, once applied on this node.
pub type Queued = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(u64, Vec<u8>), Error>> + Send>>;

/// What [`ClusterNode::propose_queued`] did with a command.
pub enum Proposal {
    Queued(Queued),
    /// Not proposed: this node is not the leader; the command, to forward.
    NotLeader(Vec<u8>),
    Failed(Error),
}
/// How long [`ClusterNode::running_members`] waits for a peer's answer.
pub const PING_TIMEOUT: Duration = Duration::from_millis(1000);
/// Pause between attempts while no leader is known.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

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

/// A running member of the metadata group. Cloning shares it.
#[derive(Clone)]
pub struct ClusterNode {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    request_deadline: Duration,
    /// Whether this start initialised the group (the first start of the node that forms it).
    initialized: std::sync::atomic::AtomicBool,
    raft: Raft,
    /// A clone sharing the Raft's log store: the committed index, which openraft 0.9's
    /// metrics do not carry.
    log: LogStore,
    state: StateMachine,
    transport: Arc<Transport>,
    fence: Arc<ReadFence>,
    /// What this node announces (its own answer to [`ClusterNode::member_offer`]).
    offer: Offer,
    /// Serves the broker's own requests from peers (set once the broker is ready).
    broker: Arc<std::sync::OnceLock<Arc<dyn BrokerHandler>>>,
    server: tokio::task::JoinHandle<()>,
    snapshots: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.server.abort();
        self.snapshots.abort();
    }
}

/// Default for [`NodeConfig::snapshot_log_bytes`].
pub const DEFAULT_SNAPSHOT_LOG_BYTES: u64 = 64 << 20;

/// How often the node compares its log's size with `snapshot_log_bytes`.
const SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Ask for a snapshot whenever the log holds more than `bound` bytes and the last snapshot
/// is behind what is applied — but not again while one asked for may still be building
/// (openraft ignores a request that comes while it builds one), unless that one is done.
async fn snapshot_by_size(raft: Raft, log: LogStore, bound: u64) {
    /// How long a requested snapshot may take before it is asked for again.
    const BUILD_WAIT: Duration = Duration::from_secs(1);
    let mut asked: Option<(tokio::time::Instant, Option<u64>)> = None;
    loop {
        tokio::time::sleep(SNAPSHOT_CHECK_INTERVAL).await;
        if log.held_bytes() <= bound {
            continue;
        }
        let (applied, snapshot) = {
            let m = raft.metrics();
            let m = m.borrow();
            (m.last_applied.map(|l| l.index), m.snapshot.map(|l| l.index))
        };
        let behind = applied > snapshot;
        let waiting = asked.is_some_and(|(at, snap)| snap == snapshot && at.elapsed() < BUILD_WAIT);
        if behind && !waiting {
            tracing::debug!(held_bytes = log.held_bytes(), bound, "raft log over its bound: snapshot");
            if raft.trigger().snapshot().await.is_err() {
                return; // the Raft has shut down
            }
            asked = Some((tokio::time::Instant::now(), snapshot));
        }
    }
}

/// Log once, in the broker's words, when the Raft core stops on a fatal error: openraft's
/// own line does not say what it means for the node.
async fn report_fatal(raft: Raft) {
    let mut metrics = raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow_and_update().running_state {
            // A clean shutdown is not news.
            if !matches!(fatal, openraft::error::Fatal::Stopped) {
                tracing::error!(
                    error = %fatal,
                    "the cluster's Raft core stopped: this node no longer votes, acknowledges or takes quorum-queue \
                     publishes (they are nacked) until it is restarted; fix the cause (e.g. free disk space) first"
                );
            }
            return;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
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
        let (log, recovery) = LogStore::open(&config.data_dir)?;
        // A node that is not the one forming the group starts from the group's state, not
        // from what its applier held before it joined.
        let reset = !forms_group(&config);
        let state = StateMachine::open(&config.data_dir, applier, &log, reset)?;
        tracing::info!(node = %config.name, entries = recovery.entries, cut_bytes = recovery.cut_bytes, "raft log recovered");
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
        let network = Network { transport: transport.clone() };
        let id = node_id(&config.name);
        let log_view = log.clone();
        let raft = Raft::new(id, Arc::new(raft_config), network, log, state.clone())
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        let fence = Arc::new(ReadFence::default());
        let broker: Arc<std::sync::OnceLock<Arc<dyn BrokerHandler>>> = Arc::default();
        let handler = Arc::new(Handler {
            raft: raft.clone(),
            transport: transport.clone(),
            fence: fence.clone(),
            state: state.clone(),
            broker: broker.clone(),
        });
        let server = transport.serve(listener, handler);
        let snapshots = tokio::spawn(snapshot_by_size(raft.clone(), log_view.clone(), config.snapshot_log_bytes));
        tokio::spawn(report_fatal(raft.clone()));
        let node = ClusterNode {
            inner: Arc::new(Inner {
                name: config.name.clone(),
                request_deadline: config.request_deadline,
                initialized: false.into(),
                raft,
                log: log_view,
                state,
                transport,
                fence,
                offer: config.offer.clone(),
                broker,
                server,
                snapshots,
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
        let raft = &self.inner.raft;
        if raft.is_initialized().await.map_err(|e| Error::Raft(e.to_string()))? {
            return Ok(());
        }
        if !forms_group(config) {
            return Ok(());
        }
        let members: BTreeMap<NodeId, BasicNode> =
            config.cluster_nodes.iter().map(|n| (node_id(n), BasicNode::new(n))).collect();
        raft.initialize(members).await.map_err(|e| Error::Raft(e.to_string()))?;
        self.inner.initialized.store(true, std::sync::atomic::Ordering::Relaxed);
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

    /// The openraft handle, for metrics and tests.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Replicate `cmd` to a majority and apply it; returns its log index. Forwarded to the
    /// leader when called on a follower.
    pub async fn propose(&self, cmd: Vec<u8>) -> Result<u64, Error> {
        if cmd.len() > MAX_COMMAND_BYTES {
            return Err(Error::CommandTooLarge { bytes: cmd.len(), max: MAX_COMMAND_BYTES });
        }
        self.client(ClientRequest::Propose(cmd)).await.map(|(index, _)| index)
    }

    /// [`Self::propose`], then wait until this node has applied it too (read-your-writes
    /// here); returns the index and what applying it returned (on the leader; every node
    /// returns the same).
    pub async fn propose_and_wait(&self, cmd: Vec<u8>) -> Result<(u64, Vec<u8>), Error> {
        if cmd.len() > MAX_COMMAND_BYTES {
            return Err(Error::CommandTooLarge { bytes: cmd.len(), max: MAX_COMMAND_BYTES });
        }
        let (index, result) = self.client(ClientRequest::Propose(cmd)).await?;
        self.inner
            .raft
            .wait(Some(self.inner.request_deadline))
            .applied_index_at_least(Some(index), "propose_and_wait")
            .await
            .map_err(|_| Error::Timeout)?;
        Ok((index, result))
    }

    /// On the leader: queue `cmd` in the log and return at once with a future of what
    /// [`Self::propose_and_wait`] returns. Commands queued by successive calls (each call
    /// awaited before the next) enter the log in call order, so a caller may keep several
    /// in flight and still see them applied in order. When this node is not the leader the
    /// command comes back ([`Proposal::NotLeader`]): forwarding would not keep that order, so
    /// the caller proposes it with [`Self::propose_and_wait`] and waits. If leadership is
    /// lost meanwhile the future fails (the command may still be committed by the next
    /// leader, as after a timeout).
    pub async fn propose_queued(&self, cmd: Vec<u8>) -> Proposal {
        if cmd.len() > MAX_COMMAND_BYTES {
            return Proposal::Failed(Error::CommandTooLarge { bytes: cmd.len(), max: MAX_COMMAND_BYTES });
        }
        let raft = &self.inner.raft;
        {
            let m = raft.metrics();
            let m = m.borrow();
            if m.state != ServerState::Leader || m.current_leader != Some(m.id) {
                return Proposal::NotLeader(cmd);
            }
        }
        let rx = match raft.client_write_ff(crate::Command(cmd.into())).await {
            Ok(rx) => rx,
            Err(e) => return Proposal::Failed(Error::Raft(e.to_string())),
        };
        let (raft, deadline) = (raft.clone(), self.inner.request_deadline);
        Proposal::Queued(Box::pin(async move {
            let answer = tokio::time::timeout(deadline, rx).await.map_err(|_| Error::Timeout)?;
            let written = match answer {
                Ok(Ok(w)) => w,
                Ok(Err(openraft::error::ClientWriteError::ForwardToLeader(f))) => {
                    return Err(Error::NotLeader { leader: f.leader_node.map(|n| n.addr) });
                }
                Ok(Err(e)) => return Err(Error::Raft(e.to_string())),
                // The responder was dropped: the core stopped.
                Err(e) => return Err(Error::Raft(e.to_string())),
            };
            let index = written.log_id.index;
            raft.wait(Some(deadline))
                .applied_index_at_least(Some(index), "propose_queued")
                .await
                .map_err(|_| Error::Timeout)?;
            Ok((index, written.data))
        }))
    }

    /// Add `name` (`NAME@HOST:PORT`) as a voter: first as a learner that receives the log (or a
    /// snapshot), then promoted. What `warrenctl join_cluster` will call.
    pub async fn add_member(&self, name: &str) -> Result<u64, Error> {
        parse_node_name(name)?;
        self.client(ClientRequest::AddMember(name.to_owned())).await.map(|(index, _)| index)
    }

    /// Remove `name` from the voters and the group. What `warrenctl forget_cluster_node` will call.
    pub async fn remove_member(&self, name: &str) -> Result<u64, Error> {
        parse_node_name(name)?;
        self.client(ClientRequest::RemoveMember(name.to_owned())).await.map(|(index, _)| index)
    }

    /// A linearizable read barrier: once it returns, every command acknowledged before this
    /// call started has been applied here (read the applier then); returns the position.
    pub async fn read(&self) -> Result<Applied, Error> {
        let (index, _) = self.client(ClientRequest::ReadIndex).await?;
        self.inner
            .raft
            .wait(Some(self.inner.request_deadline))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|_| Error::Timeout)?;
        Ok(self.inner.state.applied())
    }

    /// The locally applied state, without a leader round trip (may be stale).
    pub fn local_state(&self) -> Applied {
        self.inner.state.applied()
    }

    /// Names of the members (voters and learners) in the latest membership this node knows.
    pub fn members(&self) -> Vec<String> {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        m.membership_config.nodes().map(|(_, n)| n.addr.clone()).collect()
    }

    /// Names of the voters in the latest membership this node knows.
    pub fn voters(&self) -> Vec<String> {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        membership.voter_ids().filter_map(|id| membership.get_node(&id).map(|n| n.addr.clone())).collect()
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<String> {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        m.membership_config.membership().get_node(&id).map(|n| n.addr.clone())
    }

    /// Term, leader, this node's log positions and each member's replication (on the
    /// leader), read from openraft's metrics without any network round trip.
    pub fn status(&self) -> RaftStatus {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last_log_index = m.last_log_index.unwrap_or(0);
        let mut members: Vec<MemberStatus> = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                name: node.addr.clone(),
                voter: voters.contains(id),
                // `replication` is the leader's progress map: every member, the leader
                // included (its own entry is what it has flushed).
                replication: m.replication.as_ref().map(|r| {
                    let matched_index = r.get(id).copied().flatten().map(|l| l.index);
                    Replication {
                        matched_index,
                        lag_entries: last_log_index.saturating_sub(matched_index.unwrap_or(0)),
                    }
                }),
            })
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let stopped = m.running_state.as_ref().err().map(|e| e.to_string());
        // The last metrics of a stopped core still name its role then: it has none now.
        let leader = m
            .current_leader
            .filter(|_| stopped.is_none())
            .and_then(|id| membership.get_node(&id).map(|n| n.addr.clone()));
        RaftStatus {
            term: m.current_term,
            leader,
            is_leader: m.state == ServerState::Leader && stopped.is_none(),
            last_log_index,
            committed_index: self.inner.log.committed_index().unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            log_bytes: self.inner.log.held_bytes(),
            members,
            stopped,
        }
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
                let up = matches!(transport.call(&m, Request::Ping, PING_TIMEOUT).await, Ok(Response::Client(Ok(_))));
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

    pub fn is_leader(&self) -> bool {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.running_state.is_ok()
    }

    /// The Raft core is running (not stopped on a fatal error or shut down).
    pub fn core_running(&self) -> bool {
        self.inner.raft.metrics().borrow().running_state.is_ok()
    }

    /// Test hook: drop all traffic between this node and `peer` (both directions as seen
    /// from here; call it on both sides to cut a link completely).
    pub fn isolate(&self, peer: &str, on: bool) {
        self.inner.transport.isolate(peer, on);
    }

    /// Stop cleanly: the Raft core and the listener.
    pub async fn shutdown(&self) {
        let _ = self.inner.raft.shutdown().await;
        self.inner.server.abort();
    }

    async fn client(&self, req: ClientRequest) -> Result<(u64, Vec<u8>), Error> {
        let deadline = tokio::time::Instant::now() + self.inner.request_deadline;
        let mut last_leader = None;
        while tokio::time::Instant::now() < deadline {
            // A leader cut off from its quorum never finishes a write; the deadline bounds it.
            let attempt = tokio::time::timeout_at(
                deadline,
                local(&self.inner.raft, &self.inner.transport, &self.inner.fence, &self.inner.state, req.clone()),
            )
            .await;
            let Ok(attempt) = attempt else { return Err(Error::Timeout) };
            let leader = match attempt {
                Err(ClientFailure::NotLeader(leader)) => leader,
                Err(ClientFailure::Retry(_)) => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
                Ok(i) => return Ok(i),
                Err(ClientFailure::Other(e)) => return Err(Error::Raft(e)),
            };
            last_leader = leader.clone();
            if let Some(leader) = leader.filter(|l| *l != self.inner.name) {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match self.inner.transport.call(&leader, Request::Client(req.clone()), left).await {
                    Ok(Response::Client(Ok(i))) => return Ok(i),
                    Ok(Response::Client(Err(ClientFailure::Other(e)))) => return Err(Error::Raft(e)),
                    // Sent but unanswered: a write may or may not have been committed, and
                    // retrying could apply it twice. Reads are safe to retry.
                    Err(CallError::Lost(e)) if !matches!(req, ClientRequest::ReadIndex) => {
                        return Err(Error::Indeterminate(e));
                    }
                    // The leader moved, is unreachable, or could not reach a quorum this round:
                    // ask again after a pause.
                    Ok(_) | Err(CallError::Unreachable(_) | CallError::Refused(_) | CallError::Lost(_)) => {}
                }
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        match last_leader {
            None => Err(Error::NotLeader { leader: None }),
            Some(_) => Err(Error::Timeout),
        }
    }
}

/// Whether `config` makes this node the one that initialises the group: it is listed, and
/// its name sorts first. A node not in the list (or with an empty list) is a joiner that
/// waits for `add_member`; it must never initialise, or it would found a second cluster.
fn forms_group(config: &NodeConfig) -> bool {
    config.cluster_nodes.contains(&config.name) && config.cluster_nodes.iter().min() == Some(&config.name)
}

/// How long the leader tries to reach a node it is asked to add before refusing.
const JOIN_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether the leader reaches `name` over the inter-node link (connect and handshake): a
/// node that cannot be reached — or holds another cookie, or speaks no wire-protocol
/// version this one does — is refused before it becomes a member, rather than added as a
/// learner that never catches up (and counted in quorums once promoted). So is one whose
/// handshake did not announce every feature flag in `required` (the cluster's enabled
/// ones): it could not apply the log. Retries while the link is in reconnect backoff.
async fn probe_joiner(transport: &Arc<Transport>, name: &str, required: &[String]) -> Result<(), ClientFailure> {
    let deadline = tokio::time::Instant::now() + JOIN_PROBE_TIMEOUT;
    loop {
        let e = match transport.call(name, Request::Ping, PING_TIMEOUT).await {
            Ok(Response::Client(Ok(_))) => {
                let offered = transport.peer_offer(name).map(|o| o.features).unwrap_or_default();
                let missing: Vec<&str> = required.iter().filter(|f| !offered.contains(f)).map(String::as_str).collect();
                if missing.is_empty() {
                    return Ok(());
                }
                return Err(ClientFailure::Other(format!(
                    "{name} cannot join: it does not support the feature flag{} {} enabled in this cluster \
                     (upgrade it to a version that does)",
                    if missing.len() == 1 { "" } else { "s" },
                    missing.join(", ")
                )));
            }
            // Asking again would meet the same cookie.
            Err(CallError::Refused(e)) => return Err(ClientFailure::Other(format!("{name} cannot join: {e}"))),
            Ok(_) => "a response of the wrong kind".to_owned(),
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
            return Err(ClientFailure::Other(format!("{name} cannot be reached over the inter-node link: {e}")));
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Run a client operation on this node's Raft, which must be the leader.
/// A Raft error as the client sees it: where the leader is, or what went wrong.
fn fail<E>(e: RaftError<NodeId, E>) -> ClientFailure
where
    E: std::error::Error + openraft::TryAsRef<openraft::error::ForwardToLeader<NodeId, BasicNode>>,
{
    match e.forward_to_leader::<BasicNode>() {
        Some(f) => ClientFailure::NotLeader(f.leader_node.as_ref().map(|n| n.addr.clone())),
        None => ClientFailure::Other(e.to_string()),
    }
}

/// Whether this process, as leader, has committed an entry of its own before serving a read
/// index. The log store does not fsync the committed marker (see `LogStore::save_committed`),
/// so a leader that restarts in the same term — which openraft 0.9 allows without an
/// election, hence without the no-op entry an election appends — may start with a committed
/// index older than what it acknowledged before the crash. Committing one blank entry first
/// commits everything before it, so the read index covers every acknowledged write.
#[derive(Default)]
struct ReadFence(std::sync::atomic::AtomicBool);

async fn local(
    raft: &Raft,
    transport: &Arc<Transport>,
    fence: &ReadFence,
    state: &StateMachine,
    req: ClientRequest,
) -> Result<(u64, Vec<u8>), ClientFailure> {
    match req {
        ClientRequest::Propose(cmd) => {
            raft.client_write(crate::Command(cmd.into())).await.map(|r| (r.log_id.index, r.data)).map_err(fail)
        }
        ClientRequest::AddMember(name) => {
            let id = node_id(&name);
            // Only a leader adds members (a follower's add_learner below says who leads).
            let leading = raft.metrics().borrow().state == ServerState::Leader;
            if leading {
                probe_joiner(transport, &name, &state.required_features()).await?;
            }
            // Learner first so the new node has the log before it counts toward a quorum.
            raft.add_learner(id, BasicNode::new(&name), true).await.map_err(fail)?;
            raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map(|r| (r.log_id.index, Vec::new()))
                .map_err(fail)
        }
        ClientRequest::RemoveMember(name) => {
            let id = node_id(&name);
            raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map(|r| (r.log_id.index, Vec::new()))
                .map_err(fail)
        }
        ClientRequest::ReadIndex => {
            if !fence.0.load(std::sync::atomic::Ordering::Acquire) {
                // An empty command: the state machine applies it as nothing.
                raft.client_write(crate::Command::default()).await.map_err(fail)?;
                fence.0.store(true, std::sync::atomic::Ordering::Release);
            }
            read_index(raft).await
        }
    }
}

async fn read_index(raft: &Raft) -> Result<(u64, Vec<u8>), ClientFailure> {
    match raft.ensure_linearizable().await {
        Ok(read) => Ok((read.map_or(0, |l| l.index), Vec::new())),
        // Heartbeats did not reach a quorum this round (peers restarting, a partition):
        // the caller retries until its deadline rather than failing a read at once.
        Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => Err(ClientFailure::Retry(q.to_string())),
        Err(e) => Err(fail(e)),
    }
}

/// Serves peers' requests on this node.
struct Handler {
    raft: Raft,
    transport: Arc<Transport>,
    fence: Arc<ReadFence>,
    state: StateMachine,
    broker: Arc<std::sync::OnceLock<Arc<dyn BrokerHandler>>>,
}

impl Inbound for Handler {
    async fn handle(&self, from: String, request: Request) -> Response {
        match request {
            Request::Append(r) => Response::Append(self.raft.append_entries(r).await),
            Request::Vote(r) => Response::Vote(self.raft.vote(r).await),
            Request::Snapshot(r) => Response::Snapshot(self.raft.install_snapshot(r).await),
            // Forwarded requests are served here only; never forwarded again, so no loops.
            Request::Client(r) => {
                Response::Client(local(&self.raft, &self.transport, &self.fence, &self.state, r).await)
            }
            // A node whose Raft core stopped is not a running member: say so.
            Request::Ping => match &self.raft.metrics().borrow().running_state {
                Ok(()) => Response::Client(Ok((0, Vec::new()))),
                Err(fatal) => Response::Client(Err(ClientFailure::Other(format!("raft core stopped: {fatal}")))),
            },
            Request::Broker(r) => match self.broker.get() {
                Some(h) => Response::Broker(BrokerAnswer::Ok(h.handle(from, r).await)),
                None => Response::Broker(BrokerAnswer::NoHandler),
            },
        }
    }
}

/// openraft's view of the transport.
struct Network {
    transport: Arc<Transport>,
}

struct PeerClient {
    transport: Arc<Transport>,
    target: NodeId,
    name: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient { transport: self.transport.clone(), target, name: node.addr.clone() }
    }
}

impl PeerClient {
    async fn call<E: std::error::Error>(
        &self,
        req: Request,
        option: &RPCOption,
    ) -> Result<Response, RPCError<NodeId, BasicNode, E>> {
        self.transport.call(&self.name, req, option.hard_ttl()).await.map_err(|e| match e {
            CallError::Unreachable(_) | CallError::Refused(_) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Lost(_) => RPCError::Network(NetworkError::new(&e)),
        })
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<NodeId, BasicNode, E> {
        RPCError::RemoteError(RemoteError::new(self.target, e))
    }
}

fn mismatch<E: std::error::Error>() -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other("response of the wrong kind")))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(Request::Append(rpc), &option).await? {
            Response::Append(r) => r.map_err(|e| self.remote(e)),
            _ => Err(mismatch()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        match self.call(Request::Snapshot(rpc), &option).await? {
            Response::Snapshot(r) => r.map_err(|e| self.remote(e)),
            _ => Err(mismatch()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(Request::Vote(rpc), &option).await? {
            Response::Vote(r) => r.map_err(|e| self.remote(e)),
            _ => Err(mismatch()),
        }
    }
}
