//! Cluster formation from the config: which `NAME@HOST:PORT` this node is, where its
//! inter-node listener binds, and the [`cluster::ClusterNode`] the broker runs.
//!
//! Replicated: the access directory (users, vhosts, permissions, topic permissions,
//! policies, operator policies, limits). A change is proposed as a [`Command`] (the
//! changes as the definitions log's JSON); every node applies committed commands in log
//! order through [`Applier`] (`ServerState::apply_committed`), and a snapshot is the
//! directory's content. Quorum queues ([`crate::quorum_queues`]), exchanges and the bindings
//! to exchanges and quorum and classic queues ([`crate::cluster_topology`]) are commands
//! too, and so is the directory of classic queues ([`crate::classic_queues`]), which live
//! on their home node and are reached from the others over the inter-node link.
//! The cookie the inter-node connections prove comes from [`crate::cluster_cookie`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Weak};
use std::time::Duration;

use access::directory::{Change, Directory};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::admin::ChangeError;
use crate::config::Config;
use crate::state::ServerState;

/// How this node takes part in a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPlan {
    /// The node's identity in the cluster, `NAME@HOST:PORT`.
    pub name: String,
    /// Where the inter-node listener binds.
    pub listen: SocketAddr,
    /// `classic_config` members (sorted, deduplicated); may not contain `name` (a node that
    /// waits for `warrenctl join_cluster`).
    pub nodes: Vec<String>,
    /// What `/api/overview` and `cluster_status` call the cluster.
    pub cluster_name: String,
}

/// A running cluster member, as `ServerState` holds it.
pub struct Running {
    pub node: cluster::ClusterNode,
    pub cluster_name: String,
    /// How long a change waits for a leader and a quorum (the node's request deadline).
    pub write_timeout: Duration,
}

/// One entry of the Raft log, as the broker writes it: JSON, the changes in the same form
/// as the definitions log's access records. An enum so that later increments (exchanges,
/// queues) add variants; a node that cannot decode a command refuses it (as every node of
/// the same version does).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Command {
    /// Applied all or nothing, in order.
    Access(Vec<Change>),
    /// Quorum-queue commands, applied in order by every replica.
    Quorum(Vec<crate::quorum_queues::Item>),
    /// A quorum queue is declared (every node creates it and its replica).
    QuorumDeclare(crate::quorum_queues::Declaration),
    /// A quorum queue is deleted everywhere.
    QuorumDelete { vhost: String, name: String },
    /// A binding to a quorum queue is added on every node (with its exchange, if missing).
    QuorumBind(crate::quorum_queues::BindingDeclaration),
    /// A binding to a quorum queue is removed on every node.
    QuorumUnbind(crate::quorum_queues::BindingDeclaration),
    /// An exchange is declared on every node (`crate::cluster_topology`).
    ExchangeDeclare(crate::cluster_topology::VhostExchange),
    /// An exchange and its bindings are deleted on every node.
    ExchangeDelete { vhost: String, name: String, if_unused: bool },
    /// An exchange-to-exchange binding is added on every node.
    ExchangeBind(crate::cluster_topology::ExchangeBinding),
    /// An exchange-to-exchange binding is removed on every node.
    ExchangeUnbind(crate::cluster_topology::ExchangeBinding),
    /// A classic queue enters the directory: every node but its home makes a queue that
    /// forwards to it (`crate::classic_queues`). Its bindings are `QuorumBind` entries.
    ClassicDeclare(crate::classic_queues::ClassicDeclaration),
    /// A classic queue leaves the directory: the other nodes drop theirs; the home deletes
    /// it unless `gone_at_home` (it did already).
    ClassicDelete { vhost: String, name: String, gone_at_home: bool },
}

/// [`Command::Quorum`] without taking the items: the same encoding.
#[derive(Serialize)]
enum CommandRef<'a> {
    Quorum(&'a [crate::quorum_queues::Item]),
}

/// A quorum entry, CBOR: message bodies are byte strings there (JSON would make each byte
/// a number). Access entries stay JSON; [`decode`] tells them apart by the first byte.
pub(crate) fn encode_quorum(items: &[crate::quorum_queues::Item]) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(&CommandRef::Quorum(items), &mut out).expect("commands serialize");
    out
}

pub(crate) fn encode_cbor(c: &Command) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(c, &mut out).expect("commands serialize");
    out
}

/// A command from the log: JSON (an object or a bare variant name) or CBOR.
pub(crate) fn decode(bytes: &[u8]) -> Result<Command, String> {
    match bytes.first() {
        Some(b'{' | b'"') => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        _ => ciborium::from_reader(bytes).map_err(|e| e.to_string()),
    }
}

/// What applying a [`Command`] gave, returned to the proposer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Outcome {
    Applied,
    Invalid(String),
    Store(String),
}

/// A snapshot: the directory's content as the changes that rebuild it from empty.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct SnapshotData {
    access: Vec<Change>,
    #[serde(default)]
    quorum: Vec<crate::quorum_queues::SnapshotQueue>,
    /// None in a snapshot of an earlier version, whose exchanges were per node: restoring
    /// it leaves this node's exchanges as they are.
    #[serde(default)]
    topology: Option<crate::cluster_topology::TopologySnapshot>,
    /// The directory of classic queues (empty in a snapshot of an earlier version).
    #[serde(default)]
    classic: Vec<crate::classic_queues::SnapshotClassic>,
}

/// Room left in a command for the enum's JSON around the changes.
const COMMAND_OVERHEAD_BYTES: usize = 64;

/// Encode `changes` as commands of at most `cluster::node::MAX_COMMAND_BYTES` each (a
/// single change larger than that still makes one command, which `propose` refuses).
pub(crate) fn commands(changes: Vec<Change>) -> Vec<Vec<u8>> {
    let max = cluster::node::MAX_COMMAND_BYTES - COMMAND_OVERHEAD_BYTES;
    let mut out = Vec::new();
    let (mut chunk, mut bytes) = (Vec::new(), 0);
    for c in changes {
        let len = serde_json::to_vec(&c).map_or(0, |j| j.len()) + 1;
        if !chunk.is_empty() && bytes + len > max {
            out.push(encode(&Command::Access(std::mem::take(&mut chunk))));
            bytes = 0;
        }
        bytes += len;
        chunk.push(c);
    }
    if !chunk.is_empty() {
        out.push(encode(&Command::Access(chunk)));
    }
    out
}

fn encode_snapshot(s: &SnapshotData) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(s, &mut out).expect("snapshots serialize");
    out
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("commands serialize")
}

impl Running {
    /// Make `changes` through the Raft log and return once this node has applied them,
    /// with the result of applying them. Blocks the calling thread: the management API's
    /// handlers call the directory synchronously, so the wait is taken off the runtime's
    /// worker with `block_in_place` (its other tasks move to another thread; changes are
    /// rare and bounded by the write timeout), as the definitions log's fsync waits are.
    pub fn change(&self, changes: Vec<Change>) -> Result<(), ChangeError> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| ChangeError::Unavailable("cluster changes need the broker's runtime".into()))?;
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err(ChangeError::Unavailable("cluster changes need a multi-thread runtime".into()));
        }
        tokio::task::block_in_place(|| handle.block_on(self.propose(changes)))
    }

    /// [`Self::change`] for async callers.
    pub async fn propose(&self, changes: Vec<Change>) -> Result<(), ChangeError> {
        for cmd in commands(changes) {
            let (_, result) = self.node.propose_and_wait(cmd).await.map_err(|e| self.failure(e))?;
            match serde_json::from_slice(&result) {
                Ok(Outcome::Applied) => {}
                Ok(Outcome::Invalid(e)) => return Err(ChangeError::Invalid(e)),
                Ok(Outcome::Store(e)) => return Err(ChangeError::Store(e)),
                Err(e) => return Err(ChangeError::Store(format!("undecodable result from the cluster: {e}"))),
            }
        }
        Ok(())
    }

    fn failure(&self, e: cluster::Error) -> ChangeError {
        let ms = self.write_timeout.as_millis();
        match e {
            cluster::Error::CommandTooLarge { .. } => ChangeError::Invalid(e.to_string()),
            cluster::Error::Timeout => ChangeError::Unavailable(format!(
                "the cluster did not commit the change within {ms} ms (no quorum: are a majority of the nodes \
                 running?); it is not applied on this node (it may still be, if a majority comes back)"
            )),
            cluster::Error::NotLeader { .. } => ChangeError::Unavailable(format!(
                "the cluster has no leader after {ms} ms (no quorum: are a majority of the nodes running?); the \
                 change is not applied"
            )),
            cluster::Error::Indeterminate(_) => ChangeError::Unavailable(format!(
                "the cluster's leader did not answer, the change may or may not be applied: {e}"
            )),
            e => ChangeError::Unavailable(format!("cluster: {e}")),
        }
    }

    /// Members, running members, leader, term, log positions and (on the leader) each
    /// member's replication, as this node sees them.
    pub async fn status(&self) -> mgmt::node::ClusterStatus {
        use mgmt::node::{ClusterMember, MemberReplication, RaftFigures};
        let running = self.node.running_members().await;
        // Read after the pings so the figures are no older than `running`.
        let raft = self.node.status();
        let members: Vec<String> = raft.members.iter().map(|m| m.name.clone()).collect();
        let member_details = raft
            .members
            .iter()
            .map(|m| ClusterMember {
                name: m.name.clone(),
                voter: m.voter,
                running: running.contains(&m.name),
                replication: m
                    .replication
                    .map(|r| MemberReplication { matched_index: r.matched_index, lag_entries: r.lag_entries }),
            })
            .collect();
        mgmt::node::ClusterStatus {
            node: self.node.name().to_owned(),
            cluster_name: self.cluster_name.clone(),
            members,
            running,
            leader: raft.leader,
            raft: RaftFigures {
                term: raft.term,
                is_leader: raft.is_leader,
                last_written_index: raft.last_log_index,
                commit_index: raft.committed_index,
                last_applied_index: raft.applied_index,
                snapshot_index: raft.snapshot_index,
                log_bytes: raft.log_bytes,
            },
            member_details,
        }
    }
}

/// The node's name as configured, or RabbitMQ-style `warren@<hostname>`.
pub fn node_name(config: &Config) -> String {
    config.node_name.clone().unwrap_or_else(|| format!("warren@{}", hostname()))
}

/// This host's name, for RabbitMQ-style node names (`warren@host`).
pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".to_owned())
}

/// The cluster plan for `config` (None: no clustering configured, a single node as before).
///
/// The node's identity is, in order: the node name itself when it is a full
/// `NAME@HOST:PORT`; else the one `classic_config` entry whose `NAME@HOST` equals the node
/// name; else the node name with `warren.cluster_listen`'s port. The listener binds
/// `warren.cluster_listen`, else the identity's `HOST:PORT` (resolved).
pub fn plan(config: &Config, node_name: &str) -> Result<Option<ClusterPlan>, String> {
    if config.cluster_nodes.is_empty() && config.cluster_listen.is_none() {
        return Ok(None);
    }
    let name = if cluster::parse_node_name(node_name).is_ok() {
        node_name.to_owned()
    } else {
        let mine: Vec<&String> = config
            .cluster_nodes
            .iter()
            .filter(|n| n.rsplit_once(':').is_some_and(|(base, _)| base == node_name))
            .collect();
        match (mine.as_slice(), config.cluster_listen) {
            ([one], _) => (*one).clone(),
            ([], Some(listen)) => format!("{node_name}:{}", listen.port()),
            ([], None) => {
                return Err(format!(
                    "node {node_name} is not in cluster_formation.classic_config.nodes: list it there as \
                     {node_name}:PORT, name the node NAME@HOST:PORT, or set warren.cluster_listen"
                ));
            }
            (many, _) => {
                let many: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
                return Err(format!(
                    "node {node_name} matches several cluster_formation.classic_config.nodes ({}): name the \
                     node NAME@HOST:PORT",
                    many.join(", ")
                ));
            }
        }
    };
    let (_, addr) = cluster::parse_node_name(&name).map_err(|e| e.to_string())?;
    let listen = match config.cluster_listen {
        Some(l) => l,
        None => addr
            .to_socket_addrs()
            .map_err(|e| format!("resolving {addr} (the inter-node address of {name}): {e}"))?
            .next()
            .ok_or_else(|| format!("{addr} (the inter-node address of {name}) resolves to no address"))?,
    };
    let cluster_name = config
        .cluster_name
        .clone()
        .or_else(|| config.cluster_nodes.iter().min().cloned())
        .unwrap_or_else(|| name.clone());
    Ok(Some(ClusterPlan { name, listen, nodes: config.cluster_nodes.clone(), cluster_name }))
}

/// The broker's directory as the Raft group's state.
pub struct Applier {
    state: Weak<ServerState>,
    /// Set once `ClusterNode::start` has returned: a snapshot restored from then on was
    /// sent by the leader because this node was behind, and is the cluster's topology
    /// (exchanges it lacks were deleted meanwhile). One restored during the start is this
    /// node's own, older than what the node holds (its definitions log has the exchanges
    /// declared since, with their classic bindings, and the log replayed after it deletes
    /// what was deleted), so it removes nothing.
    caught_up_by_leader: std::sync::atomic::AtomicBool,
    /// Exchanges (vhost, name) this process declared while replaying entries it had
    /// applied before a restart (or added from its own snapshot): a replayed delete removes
    /// these, and keeps one the definitions log brought back (declared again since).
    replayed: parking_lot::Mutex<std::collections::HashSet<(String, String)>>,
}

impl Applier {
    fn new(state: &Arc<ServerState>) -> Applier {
        Applier {
            state: Arc::downgrade(state),
            caught_up_by_leader: std::sync::atomic::AtomicBool::new(false),
            replayed: parking_lot::Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// An exchange delete at `index`. One this node applied before a restart (at or below
    /// the durable applied index) is replayed only for exchanges the replay itself made:
    /// an exchange it finds from its definitions log was declared again after the delete,
    /// and deleting it would lose this node's classic queues' bindings to it. A delete
    /// applied now records its index (the definitions log's `ClusterApplied`).
    fn apply_exchange_delete(
        &self,
        state: &ServerState,
        index: u64,
        vhost: String,
        name: String,
        if_unused: bool,
    ) -> Vec<u8> {
        let replay = index <= state.cluster_applied.load(std::sync::atomic::Ordering::Acquire);
        let key = (vhost, name);
        let made_by_replay = self.replayed.lock().remove(&key);
        let exists = state.vhost(&key.0).is_some_and(|vh| vh.exchange(&key.1).is_ok());
        let answer = if replay && exists && !made_by_replay {
            Ok(())
        } else {
            state.apply_exchange_delete(&key.0, &key.1, if_unused)
        };
        if !replay {
            state.record_cluster_applied(index);
        }
        crate::cluster_topology::encode_answer(&answer)
    }

    fn state(&self) -> Option<Arc<ServerState>> {
        self.state.upgrade()
    }
}

impl cluster::Applier for Applier {
    fn apply(&self, index: u64, cmd: &[u8]) -> Vec<u8> {
        let outcome = match (self.state(), decode(cmd)) {
            (None, _) => Outcome::Store("the node is stopping".into()),
            (_, Err(e)) => Outcome::Invalid(format!("undecodable cluster command (a newer version?): {e}")),
            (Some(state), Ok(Command::Quorum(items))) => {
                if let Some(q) = state.quorum.get() {
                    q.apply(index, items);
                }
                Outcome::Applied
            }
            (Some(state), Ok(Command::QuorumDeclare(d))) => match state.apply_quorum_declare(d) {
                Ok(()) => Outcome::Applied,
                Err(e) => Outcome::Invalid(e),
            },
            (Some(state), Ok(Command::QuorumDelete { vhost, name })) => {
                state.apply_quorum_delete(&vhost, &name);
                Outcome::Applied
            }
            (Some(state), Ok(Command::QuorumBind(d))) => match state.apply_quorum_bind(d) {
                Ok(()) => Outcome::Applied,
                Err(e) => Outcome::Invalid(e),
            },
            (Some(state), Ok(Command::QuorumUnbind(d))) => match state.apply_quorum_unbind(d) {
                Ok(()) => Outcome::Applied,
                Err(e) => Outcome::Invalid(e),
            },
            (Some(state), Ok(Command::ExchangeDeclare(d))) => {
                let replay = index <= state.cluster_applied.load(std::sync::atomic::Ordering::Acquire);
                let new = state.vhost(&d.vhost).is_some_and(|vh| vh.exchange(&d.exchange.name).is_err());
                let answer = state.apply_exchange_declare(&d);
                if replay && new && answer.is_ok() {
                    self.replayed.lock().insert((d.vhost, d.exchange.name));
                }
                return crate::cluster_topology::encode_answer(&answer);
            }
            (Some(state), Ok(Command::ExchangeDelete { vhost, name, if_unused })) => {
                return self.apply_exchange_delete(&state, index, vhost, name, if_unused);
            }
            (Some(state), Ok(Command::ClassicDeclare(d))) => {
                if let Some(c) = state.classic.get() {
                    c.apply_declare(&state, d);
                }
                Outcome::Applied
            }
            (Some(state), Ok(Command::ClassicDelete { vhost, name, gone_at_home })) => {
                // Replayed after a restart (applied before it): the home's queue of that
                // name now is one declared since, never deleted by an old entry.
                let replay = index <= state.cluster_applied.load(std::sync::atomic::Ordering::Acquire);
                if let Some(c) = state.classic.get() {
                    c.apply_delete(&state, &vhost, &name, gone_at_home || replay);
                }
                if !replay && !gone_at_home {
                    state.record_cluster_applied(index);
                }
                Outcome::Applied
            }
            (Some(state), Ok(Command::ExchangeBind(b))) => {
                return crate::cluster_topology::encode_answer(&state.apply_exchange_binding(&b, true));
            }
            (Some(state), Ok(Command::ExchangeUnbind(b))) => {
                return crate::cluster_topology::encode_answer(&state.apply_exchange_binding(&b, false));
            }
            // Already in this node's definitions log (it was applied before a restart).
            (Some(state), Ok(Command::Access(_)))
                if index <= state.cluster_applied.load(std::sync::atomic::Ordering::Acquire) =>
            {
                Outcome::Applied
            }
            (Some(state), Ok(Command::Access(changes))) => match state.apply_committed(index, changes) {
                Ok(()) => Outcome::Applied,
                Err(ChangeError::Invalid(e)) => Outcome::Invalid(e),
                Err(e @ (ChangeError::Store(_) | ChangeError::Unavailable(_))) => {
                    // Not applied here and not recorded as applied: a restart applies it
                    // again from the Raft log.
                    error!("raft entry {index} could not be applied on this node: {e}");
                    Outcome::Store(e.to_string())
                }
            },
        };
        encode(&outcome)
    }

    fn snapshot(&self) -> Vec<u8> {
        // CBOR: quorum queues' messages are byte strings there (JSON, the first encoding,
        // made each byte a number, ~3.5 bytes each to write and parse).
        let Some(state) = self.state() else { return encode_snapshot(&SnapshotData::default()) };
        let access = state.with_access(Directory::all_changes);
        let quorum = state.quorum.get().map(|q| q.snapshot()).unwrap_or_default();
        let topology = Some(state.topology_snapshot());
        let classic = state.classic.get().map(|c| c.snapshot(&state)).unwrap_or_default();
        encode_snapshot(&SnapshotData { access, quorum, topology, classic })
    }

    fn restore(&self, index: u64, data: &[u8]) -> Result<(), String> {
        let state = self.state().ok_or("the node is stopping")?;
        let snapshot: SnapshotData = match data.first() {
            None => SnapshotData::default(),
            // Taken by an earlier version (JSON; a CBOR map never starts with `{`).
            Some(b'{') => serde_json::from_slice(data).map_err(|e| format!("undecodable cluster snapshot: {e}"))?,
            Some(_) => ciborium::from_reader(data).map_err(|e| format!("undecodable cluster snapshot: {e}"))?,
        };
        // The directory is durable in the definitions log: a snapshot older than what it
        // holds (a restart, which replays the log from its last snapshot for the quorum
        // queues' sake) must not move it back.
        if index >= state.cluster_applied.load(std::sync::atomic::Ordering::Acquire) {
            let mut target = Directory::new();
            for c in snapshot.access {
                target.apply(c).map_err(|e| format!("cluster snapshot at {index}: {e}"))?;
            }
            state.restore_committed(index, &target).map_err(|e| e.to_string())?;
        }
        // Exchanges before the quorum queues (their bindings need them), exchange-to-exchange
        // bindings last (a restored queue's binding may have brought its exchange back).
        let exact = self.caught_up_by_leader.load(std::sync::atomic::Ordering::Acquire);
        if let Some(t) = &snapshot.topology {
            let added = state.restore_exchanges(t, exact);
            if !exact {
                self.replayed.lock().extend(added);
            }
        }
        let mut quorum_bindings: Vec<_> = snapshot.quorum.iter().flat_map(|q| q.bindings.iter().cloned()).collect();
        state.restore_quorum(snapshot.quorum);
        if let Some(c) = state.classic.get() {
            quorum_bindings.extend(c.restore(&state, snapshot.classic, exact));
        }
        if let Some(t) = &snapshot.topology {
            state.restore_exchange_bindings(t, exact);
            if exact {
                state.remove_quorum_bindings_not_in(&quorum_bindings);
            }
        }
        Ok(())
    }

    // `durable_index` stays 0: the quorum queues' replicas live in memory, so a restart
    // replays the log from the last snapshot; access entries the definitions log already
    // holds are skipped in `apply` and `restore` instead.
}

/// Start the node's Raft member as `plan` says, its data under `<data_dir>/cluster`, with
/// `state`'s directory as what it replicates.
pub async fn start(
    plan: &ClusterPlan,
    cookie: cluster::Cookie,
    tls: Option<cluster::LinkTls>,
    data_dir: &std::path::Path,
    state: &Arc<ServerState>,
) -> Result<Running, String> {
    let dir = data_dir.join("cluster");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut c = cluster::NodeConfig::new(plan.name.clone(), dir, plan.listen, cookie);
    c.tls = tls;
    c.source_ip = state.config.cluster_source_ip;
    c.cluster_nodes = plan.nodes.clone();
    c.snapshot_every_entries = state.config.cluster_snapshot_every_entries;
    c.snapshot_log_bytes = state.config.cluster_snapshot_log_bytes;
    c.request_deadline = Duration::from_millis(state.config.cluster_write_timeout_ms);
    let write_timeout = c.request_deadline;
    let applier = Arc::new(Applier::new(state));
    let node = cluster::ClusterNode::start(c, applier.clone())
        .await
        .map_err(|e| format!("starting cluster node {} on {}: {e}", plan.name, plan.listen))?;
    applier.caught_up_by_leader.store(true, std::sync::atomic::Ordering::Release);
    if let Some(c) = state.classic.get() {
        node.set_broker_handler(c.handler());
    }
    Ok(Running { node, cluster_name: plan.cluster_name.clone(), write_timeout })
}

/// The quorum-queue replicas of a clustered node: before [`start`], whose log replay
/// applies their commands.
pub fn start_quorum_queues(plan: &ClusterPlan, state: &Arc<ServerState>) {
    let _ = state.quorum.set(crate::quorum_queues::QuorumQueues::start(&plan.name, state));
    let _ = state.classic.set(crate::classic_queues::ClassicQueues::start(&plan.name, state));
}

/// Pause between attempts to propose the seed while the group has no leader yet.
const SEED_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// On the node that just formed the group (its first start): propose the cluster's first
/// directory once, in the background (it commits when a majority of the nodes is up) —
/// this node's own directory if it has one (a single node becoming a cluster keeps its
/// users), else `load_definitions`, else the defaults (guest, `/`). No other node seeds, so
/// the defaults (salted password hashes included) are the same everywhere.
pub fn seed(state: &Arc<ServerState>) {
    let Some(running) = state.cluster.get() else { return };
    if !running.node.initialized_group() {
        return;
    }
    let state = state.clone();
    tokio::spawn(async move {
        let Some(running) = state.cluster.get() else { return };
        loop {
            if *state.shutdown.borrow() {
                return;
            }
            let own = state.with_access(Directory::all_changes);
            let (what, r) = match (&state.config.load_definitions, own.is_empty()) {
                (_, false) => ("this node's directory", running.propose(own).await),
                (Some(file), true) => {
                    let bytes = match std::fs::read(file) {
                        Ok(b) => b,
                        Err(e) => {
                            error!("cluster seed: reading {}: {e}", file.display());
                            return;
                        }
                    };
                    // The import blocks (it waits for the log); keep it off the workers.
                    let st = state.clone();
                    let r = tokio::task::spawn_blocking(move || st.import_definitions(&bytes)).await;
                    ("load_definitions", r.unwrap_or_else(|e| Err(ChangeError::Store(e.to_string()))))
                }
                (None, true) => ("the defaults", running.propose(state.default_access()).await),
            };
            match r {
                Ok(()) => {
                    info!("cluster formed: proposed {what} as its first directory");
                    return;
                }
                Err(ChangeError::Unavailable(e)) => {
                    warn!("cluster seed ({what}) not committed yet, retrying: {e}");
                    tokio::time::sleep(SEED_RETRY_PAUSE).await;
                }
                Err(e) => {
                    error!("cluster seed ({what}) refused: {e}");
                    return;
                }
            }
        }
    });
}

#[cfg(test)]
mod applier_tests {
    use access::model::{HashingAlgorithm, Permission, User, UserLimits, Vhost};
    use cluster::Applier as _;

    use super::*;

    fn state() -> Arc<ServerState> {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        ServerState::new(Config::default(), rx)
    }

    fn user(name: &str) -> Change {
        Change::PutUser(User {
            name: name.into(),
            password_hash: access::password::hash_password(HashingAlgorithm::Sha256, "pw"),
            hashing_algorithm: HashingAlgorithm::Sha256,
            tags: vec!["x".repeat(200)],
            limits: UserLimits::default(),
        })
    }

    fn perm(user: &str, vhost: &str) -> Change {
        Change::PutPermission(Permission {
            user: user.into(),
            vhost: vhost.into(),
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        })
    }

    fn outcome(bytes: &[u8]) -> Outcome {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn commands_split_at_the_size_limit_and_decode_back_in_order() {
        let changes: Vec<Change> = (0..2400).map(|i| user(&format!("user{i}"))).collect();
        let cmds = commands(changes.clone());
        assert!(cmds.len() > 1, "{} commands", cmds.len());
        let mut back = Vec::new();
        for c in &cmds {
            assert!(c.len() <= cluster::node::MAX_COMMAND_BYTES, "{} bytes", c.len());
            let Ok(Command::Access(part)) = decode(c) else { panic!("an access command") };
            back.extend(part);
        }
        assert_eq!(back, changes);
        assert!(commands(Vec::new()).is_empty());
    }

    #[test]
    fn committed_entries_apply_all_or_nothing_and_refusals_are_results() {
        let s = state();
        let a = Applier::new(&s);
        let ok = encode(&Command::Access(vec![Change::PutVhost(Vhost::named("v")), perm("guest", "v")]));
        assert_eq!(outcome(&a.apply(5, &ok)), Outcome::Applied);
        assert!(s.with_access(|d| d.permission("guest", "v").is_some()));
        assert!(s.vhost("v").is_some(), "carried out: the broker has the vhost");
        assert_eq!(s.cluster_applied.load(std::sync::atomic::Ordering::Acquire), 5);
        // The second change fails: the first is not applied either, the index stays.
        let bad = encode(&Command::Access(vec![Change::PutVhost(Vhost::named("w")), perm("ghost", "w")]));
        assert_eq!(outcome(&a.apply(6, &bad)), Outcome::Invalid("user 'ghost' does not exist".into()));
        assert!(s.with_access(|d| d.vhost("w").is_none()));
        assert_eq!(s.cluster_applied.load(std::sync::atomic::Ordering::Acquire), 5);
        assert!(matches!(outcome(&a.apply(7, b"{\"Exchange\":1}")), Outcome::Invalid(m) if m.contains("undecodable")));
    }

    #[test]
    fn a_snapshot_restores_as_the_same_directory_and_empty_restores_as_empty() {
        let (from, to) = (state(), state());
        let a = Applier::new(&from);
        let b = Applier::new(&to);
        a.apply(1, &encode(&Command::Access(vec![user("alice"), Change::PutVhost(Vhost::named("v"))])));
        // `to` has its own guest (another salt) and a vhost `from` lacks.
        b.apply(1, &encode(&Command::Access(vec![Change::PutVhost(Vhost::named("only-here"))])));
        b.restore(9, &a.snapshot()).unwrap();
        assert_eq!(to.with_access(Directory::all_changes), from.with_access(Directory::all_changes));
        assert!(to.vhost("only-here").is_none(), "carried out: the broker's vhost is gone");
        assert_eq!(to.cluster_applied.load(std::sync::atomic::Ordering::Acquire), 9);
        b.restore(10, &[]).unwrap();
        assert!(to.with_access(Directory::all_changes).is_empty());
        assert!(b.restore(11, b"not json").is_err());
    }
}

#[cfg(test)]
mod topology_tests {
    use access::model::Vhost;
    use cluster::Applier as _;

    use super::*;
    use crate::cluster_topology::{ExchangeBinding, VhostExchange};
    use crate::quorum_queues::ExchangeDeclaration;

    fn exchange(name: &str, kind: &str, durable: bool) -> Command {
        let exchange = ExchangeDeclaration {
            name: name.into(),
            kind: kind.into(),
            durable,
            auto_delete: false,
            internal: false,
            arguments: Vec::new(),
        };
        Command::ExchangeDeclare(VhostExchange { vhost: "v".into(), exchange })
    }

    fn binding(source: &str, destination: &str) -> ExchangeBinding {
        ExchangeBinding {
            vhost: "v".into(),
            source: source.into(),
            destination: destination.into(),
            routing_key: "k".into(),
            arguments: Vec::new(),
        }
    }

    fn answer(bytes: &[u8]) -> Result<(), (u16, String)> {
        serde_json::from_slice(bytes).unwrap()
    }

    /// A node with vhost `v` and the applier over it.
    fn node() -> (Arc<ServerState>, Applier) {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let s = ServerState::new(Config::default(), rx);
        let a = Applier::new(&s);
        a.apply(1, &encode(&Command::Access(vec![Change::PutVhost(Vhost::named("v"))])));
        (s, a)
    }

    fn names(s: &ServerState) -> Vec<String> {
        let mut n: Vec<String> = s.vhost("v").unwrap().exchanges().into_iter().map(|e| e.name.clone()).collect();
        n.retain(|n| !n.is_empty() && !n.starts_with("amq."));
        n.sort();
        n
    }

    #[test]
    fn exchange_commands_apply_and_refusals_carry_the_amqp_code() {
        let (s, a) = node();
        assert_eq!(answer(&a.apply(2, &encode_cbor(&exchange("x", "topic", true)))), Ok(()));
        assert_eq!(answer(&a.apply(3, &encode_cbor(&exchange("y", "direct", false)))), Ok(()));
        // Equivalent again: fine; another type: 406, the exchange unchanged.
        assert_eq!(answer(&a.apply(4, &encode_cbor(&exchange("x", "topic", true)))), Ok(()));
        let refused = answer(&a.apply(5, &encode_cbor(&exchange("x", "fanout", true))));
        assert!(matches!(&refused, Err((406, t)) if t.contains("inequivalent arg 'type'")), "{refused:?}");
        assert_eq!(answer(&a.apply(6, &encode_cbor(&Command::ExchangeBind(binding("x", "y"))))), Ok(()));
        let missing = answer(&a.apply(7, &encode_cbor(&Command::ExchangeBind(binding("x", "nope")))));
        assert!(matches!(missing, Err((404, _))), "{missing:?}");
        // if-unused counts the e2e binding (replicated, the same on every node).
        let busy = Command::ExchangeDelete { vhost: "v".into(), name: "y".into(), if_unused: true };
        assert!(matches!(answer(&a.apply(8, &encode_cbor(&busy))), Err((406, _))));
        let gone = Command::ExchangeDelete { vhost: "v".into(), name: "x".into(), if_unused: false };
        assert_eq!(answer(&a.apply(9, &encode_cbor(&gone))), Ok(()));
        assert_eq!(names(&s), ["y"]);
        assert!(s.topology_snapshot().bindings.is_empty(), "the binding went with its source");
    }

    #[test]
    fn a_replayed_delete_keeps_an_exchange_declared_again_since_and_removes_one_the_replay_made() {
        let (s, a) = node();
        a.apply(2, &encode_cbor(&exchange("x", "topic", true)));
        let delete = |name: &str| Command::ExchangeDelete { vhost: "v".into(), name: name.into(), if_unused: false };
        // Applied now: deleted, and the index recorded.
        assert_eq!(answer(&a.apply(3, &encode_cbor(&delete("x")))), Ok(()));
        assert!(names(&s).is_empty());
        assert_eq!(s.cluster_applied.load(std::sync::atomic::Ordering::Acquire), 3);
        // As after a restart: `x` is back from the definitions log (declared again after
        // the delete); replaying the delete at 3 keeps it.
        a.apply(4, &encode_cbor(&exchange("x", "topic", true)));
        s.record_cluster_applied(4);
        assert_eq!(answer(&a.apply(3, &encode_cbor(&delete("x")))), Ok(()));
        assert_eq!(names(&s), ["x"]);
        // One the replay itself declares (a transient one, say) goes with its delete.
        let fresh = Applier::new(&s);
        assert_eq!(answer(&fresh.apply(2, &encode_cbor(&exchange("t", "fanout", false)))), Ok(()));
        assert_eq!(answer(&fresh.apply(3, &encode_cbor(&delete("t")))), Ok(()));
        assert_eq!(names(&s), ["x"]);
    }

    #[test]
    fn a_snapshot_carries_exchanges_and_e2e_bindings_and_one_without_them_keeps_the_nodes() {
        let (from, a) = node();
        let (to, b) = node();
        for (i, c) in [exchange("x", "topic", true), exchange("y", "direct", false)].iter().enumerate() {
            a.apply(2 + i as u64, &encode_cbor(c));
        }
        a.apply(4, &encode_cbor(&Command::ExchangeBind(binding("x", "y"))));
        // `to` has an exchange the cluster deleted, and `y` declared otherwise.
        b.apply(2, &encode_cbor(&exchange("stale", "fanout", true)));
        b.apply(3, &encode_cbor(&exchange("y", "fanout", true)));
        // At start (this node's own snapshot) nothing is removed or declared otherwise.
        b.restore(8, &a.snapshot()).unwrap();
        assert_eq!(names(&to), ["stale", "x", "y"]);
        assert_eq!(to.vhost("v").unwrap().exchange("y").unwrap().options.type_name(), "fanout");
        // From the leader, once started: exactly the snapshot's.
        b.caught_up_by_leader.store(true, std::sync::atomic::Ordering::Release);
        b.restore(9, &a.snapshot()).unwrap();
        assert_eq!(names(&to), ["x", "y"]);
        assert_eq!(to.topology_snapshot().bindings, from.topology_snapshot().bindings);
        let y = to.vhost("v").unwrap().exchange("y").unwrap();
        assert_eq!((y.options.type_name(), y.options.durable), ("direct", false));
        // An earlier version's snapshot (JSON, no topology): read, and the node's exchanges stay.
        let mut old: SnapshotData = ciborium::from_reader(&a.snapshot()[..]).unwrap();
        old.topology = None;
        b.restore(10, &serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(names(&to), ["x", "y"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(nodes: &[&str], listen: Option<&str>) -> Config {
        Config {
            cluster_nodes: nodes.iter().map(|s| s.to_string()).collect(),
            cluster_listen: listen.map(|l| l.parse().unwrap()),
            ..Config::default()
        }
    }

    const THREE: [&str; 3] = ["a@127.0.0.1:25001", "b@127.0.0.1:25002", "c@127.0.0.1:25003"];

    #[test]
    fn no_cluster_keys_is_a_single_node() {
        assert_eq!(plan(&Config::default(), "warren@h").unwrap(), None);
    }

    #[test]
    fn node_name_picks_its_entry_in_the_list() {
        let p = plan(&config(&THREE, None), "b@127.0.0.1").unwrap().unwrap();
        assert_eq!(p.name, "b@127.0.0.1:25002");
        assert_eq!(p.listen, "127.0.0.1:25002".parse().unwrap());
        assert_eq!(p.nodes.len(), 3);
        assert_eq!(p.cluster_name, "a@127.0.0.1:25001");
    }

    #[test]
    fn full_name_and_listen_override() {
        let p = plan(&config(&THREE, Some("0.0.0.0:25003")), "c@127.0.0.1:25003").unwrap().unwrap();
        assert_eq!(p.name, "c@127.0.0.1:25003");
        assert_eq!(p.listen, "0.0.0.0:25003".parse().unwrap());
        let named = Config { cluster_name: Some("prod".into()), ..config(&THREE, None) };
        assert_eq!(plan(&named, "a@127.0.0.1").unwrap().unwrap().cluster_name, "prod");
    }

    #[test]
    fn a_joiner_needs_only_a_listen_address() {
        let p = plan(&config(&[], Some("127.0.0.1:25004")), "d@127.0.0.1").unwrap().unwrap();
        assert_eq!(p.name, "d@127.0.0.1:25004");
        assert!(p.nodes.is_empty());
        assert_eq!(p.cluster_name, "d@127.0.0.1:25004");
    }

    #[test]
    fn a_node_missing_from_the_list_or_ambiguous_is_refused() {
        let e = plan(&config(&THREE, None), "z@127.0.0.1").unwrap_err();
        assert!(e.contains("not in cluster_formation.classic_config.nodes"), "{e}");
        let e = plan(&config(&["a@h:1", "a@h:2"], None), "a@h").unwrap_err();
        assert!(e.contains("matches several"), "{e}");
    }
}
