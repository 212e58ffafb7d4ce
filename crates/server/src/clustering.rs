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

use std::collections::BTreeSet;
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
    /// These feature flags are enabled in the cluster (added to the enabled set; a flag is
    /// never disabled). Every node of a version with flags reads it; a node that does not
    /// support one of them stops there ([`crate::feature_flags`]).
    EnableFeatureFlags(Vec<String>),
    /// A classic queue enters the directory: every node but its home makes a queue that
    /// forwards to it (`crate::classic_queues`). Its bindings are `QuorumBind` entries.
    ClassicDeclare(crate::classic_queues::ClassicDeclaration),
    /// A classic queue leaves the directory: the other nodes drop theirs; the home deletes
    /// it unless `gone_at_home` (it did already).
    ClassicDelete { vhost: String, name: String, gone_at_home: bool },
}

impl Command {
    /// The feature flag that must be enabled before this command is proposed (None: the
    /// base every clustered version reads). Quorum-queue items and deletes need a quorum
    /// queue, which only a declare under `quorum_queue` makes.
    pub(crate) fn feature_flag(&self) -> Option<&'static str> {
        use crate::feature_flags as ff;
        match self {
            Command::Access(_) | Command::EnableFeatureFlags(_) => None,
            // A declare naming its group's voters makes a queue with a group of its own.
            Command::QuorumDeclare(d) if !d.voters.is_empty() => Some(ff::QUORUM_QUEUE_GROUPS),
            Command::Quorum(_) | Command::QuorumDeclare(_) | Command::QuorumDelete { .. } => Some(ff::QUORUM_QUEUE),
            Command::QuorumBind(_) | Command::QuorumUnbind(_) => Some(ff::QUORUM_QUEUE_BINDINGS),
            Command::ExchangeDeclare(_)
            | Command::ExchangeDelete { .. }
            | Command::ExchangeBind(_)
            | Command::ExchangeUnbind(_) => Some(ff::REPLICATED_TOPOLOGY),
            Command::ClassicDeclare(_) | Command::ClassicDelete { .. } => Some(ff::CLASSIC_QUEUE_DIRECTORY),
        }
    }
}

/// [`Command::Quorum`] without taking the items: the same encoding.
#[derive(Serialize)]
enum CommandRef<'a> {
    Quorum(&'a [crate::quorum_queues::Item]),
}

/// The first byte of a quorum entry in postcard ([`encode_quorum`]): never the first byte
/// of a JSON entry (`{`, `"`) nor of a CBOR one (every variant carries data, so CBOR writes
/// a map of one entry: 0xA1).
const POSTCARD_QUORUM_TAG: u8 = 0x01;

/// A quorum entry. With `compact` (the `compact_quorum_entries` feature flag enabled):
/// [`POSTCARD_QUORUM_TAG`], then the items in postcard — fields in order, without names,
/// integers as varints. Otherwise CBOR, which names every field of every item: decoding
/// those names was most of applying a publish, on every replica. Message bodies are byte
/// strings in both (JSON would make each byte a number). Access entries stay JSON;
/// [`decode`] tells them apart by the first byte.
pub(crate) fn encode_quorum(items: &[crate::quorum_queues::Item], compact: bool) -> Vec<u8> {
    if compact {
        return postcard::to_extend(items, vec![POSTCARD_QUORUM_TAG]).expect("commands serialize");
    }
    let mut out = Vec::new();
    ciborium::into_writer(&CommandRef::Quorum(items), &mut out).expect("commands serialize");
    out
}

pub(crate) fn encode_cbor(c: &Command) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(c, &mut out).expect("commands serialize");
    out
}

/// A command from the log: JSON (an object or a bare variant name), postcard quorum items
/// ([`encode_quorum`]) or CBOR.
pub(crate) fn decode(bytes: &[u8]) -> Result<Command, String> {
    match bytes.first() {
        Some(b'{' | b'"') => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        Some(&POSTCARD_QUORUM_TAG) => postcard::from_bytes(&bytes[1..]).map(Command::Quorum).map_err(|e| e.to_string()),
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
///
/// Unknown fields are refused: a field a newer version added is state this node would
/// silently drop (a newer version adds one only under a feature flag, which a node lacking
/// it never sees enabled, so meeting one is a bug or a downgrade: fail closed).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotData {
    access: Vec<Change>,
    #[serde(default)]
    quorum: Vec<crate::quorum_queues::SnapshotQueue>,
    /// None in a snapshot of an earlier version, whose exchanges were per node: restoring
    /// it leaves this node's exchanges as they are.
    #[serde(default)]
    topology: Option<crate::cluster_topology::TopologySnapshot>,
    /// The cluster's enabled feature flags (None: a snapshot of a version before flags, or
    /// of a cluster that had not settled them yet).
    #[serde(default)]
    feature_flags: Option<Vec<String>>,
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

    /// Propose one command (not an access change) and wait until this node applied it.
    pub(crate) async fn propose_command(&self, cmd: &Command) -> Result<(), ChangeError> {
        let (_, result) = self.node.propose_and_wait(encode_cbor(cmd)).await.map_err(|e| self.failure(e))?;
        match serde_json::from_slice(&result) {
            Ok(Outcome::Applied) => Ok(()),
            Ok(Outcome::Invalid(e)) => Err(ChangeError::Invalid(e)),
            Ok(Outcome::Store(e)) => Err(ChangeError::Store(e)),
            Err(e) => Err(ChangeError::Store(format!("undecodable result from the cluster: {e}"))),
        }
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
        let running = self.node.running_members().await;
        // Read after the pings so the figures are no older than `running`.
        let raft = self.node.status();
        let members: Vec<String> = raft.members.iter().map(|m| m.name.clone()).collect();
        let (figures, member_details) = raft_figures(&raft, &running);
        mgmt::node::ClusterStatus {
            node: self.node.name().to_owned(),
            cluster_name: self.cluster_name.clone(),
            members,
            running,
            leader: raft.leader,
            raft: figures,
            member_details,
            raft_stopped: raft.stopped,
            // The quorum queues' groups: filled in by `ServerState` (mgmt_node), which has them.
            queue_groups: Vec::new(),
        }
    }
}

/// A group's figures and members as management shows them (`running`: the members that
/// answered this node's ping).
pub(crate) fn raft_figures(
    raft: &cluster::node::RaftStatus,
    running: &[String],
) -> (mgmt::node::RaftFigures, Vec<mgmt::node::ClusterMember>) {
    use mgmt::node::{ClusterMember, MemberReplication, RaftFigures};
    let members = raft
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
    let figures = RaftFigures {
        term: raft.term,
        is_leader: raft.is_leader,
        last_written_index: raft.last_log_index,
        commit_index: raft.committed_index,
        last_applied_index: raft.applied_index,
        snapshot_index: raft.snapshot_index,
        log_bytes: raft.log_bytes,
        commit_latency_us: raft.commit_latency_us,
    };
    (figures, members)
}

/// How often the leader looks whether the cluster's feature flags are settled, and how long a
/// gated proposal waits between looks while they are not.
const FLAGS_SETTLE_PERIOD: Duration = Duration::from_millis(200);
/// At most one warning this often while the leader waits for members to settle the flags.
const FLAGS_SETTLE_WARN_PERIOD: Duration = Duration::from_secs(10);

/// One feature flag as `GET /api/feature-flags` and `warrenctl list_feature_flags` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureFlagState {
    pub flag: crate::feature_flags::FeatureFlag,
    pub enabled: bool,
}

impl ServerState {
    /// Whether the cluster has enabled feature flag `flag` (false while the set is not
    /// settled, or when not clustered).
    pub(crate) fn feature_flag_enabled(&self, flag: &str) -> bool {
        self.cluster_feature_flags.read().as_ref().is_some_and(|set| set.contains(flag))
    }

    /// The cluster's enabled feature flags (None: not settled yet, or not clustered).
    pub(crate) fn enabled_feature_flags(&self) -> Option<BTreeSet<String>> {
        self.cluster_feature_flags.read().clone()
    }

    /// Add `flags` to the enabled set (an applied entry or snapshot).
    pub(crate) fn enable_feature_flags(&self, flags: Vec<String>) {
        let mut set = self.cluster_feature_flags.write();
        let set = set.get_or_insert_with(BTreeSet::new);
        for f in flags {
            if set.insert(f.clone()) {
                info!(flag = %f, "feature flag enabled in the cluster");
            }
        }
    }

    /// The node cannot go on: the binary shuts down and exits non-zero with `reason`.
    pub(crate) fn fail(&self, reason: String) {
        self.fatal.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// Becomes `Some(reason)` when the node cannot go on ([`Self::fail`]).
    pub fn fatal_error(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.fatal.subscribe()
    }

    /// The flags this node supports, each with whether it is enabled: in a cluster, in the
    /// cluster's set; a single node has every flag it supports enabled.
    pub fn feature_flag_states(&self) -> Vec<FeatureFlagState> {
        let support = crate::feature_flags::support();
        let enabled =
            if self.cluster.get().is_some() { self.enabled_feature_flags() } else { Some(support.flags.clone()) };
        crate::feature_flags::FLAGS
            .iter()
            .filter(|f| support.flags.contains(f.name))
            .map(|f| FeatureFlagState { flag: *f, enabled: enabled.as_ref().is_some_and(|e| e.contains(f.name)) })
            .collect()
    }

    /// Why `cmd` may not be proposed now: its feature flag is not enabled in the cluster
    /// (None: it may). While the cluster has not settled its flags (just formed: the leader
    /// waits for every member's answer) this waits for them, at most the write timeout; a
    /// flag this node has not seen enabled is looked for again after a read barrier.
    pub(crate) async fn feature_flag_refusal(&self, cmd: &Command) -> Option<String> {
        let flag = cmd.feature_flag()?;
        let running = self.cluster.get()?;
        let deadline = tokio::time::Instant::now() + running.write_timeout;
        let mut barrier_done = false;
        loop {
            match self.enabled_feature_flags() {
                Some(set) if set.contains(flag) => return None,
                Some(_) if barrier_done => {
                    return Some(format!(
                        "feature flag '{flag}' is not enabled in this cluster (a member does not support it, or it \
                         was not enabled after an upgrade): see `warrenctl list_feature_flags`, and `warrenctl \
                         enable_feature_flag {flag}` once every node runs a version that has it"
                    ));
                }
                Some(_) => {
                    barrier_done = true;
                    let _ = tokio::time::timeout_at(deadline, running.node.read()).await;
                    continue;
                }
                None => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Some(format!(
                    "the cluster's feature flags are not settled yet (its leader waits for every member to say \
                     which it supports: is one down?); '{flag}' is needed for this"
                ));
            }
            tokio::time::sleep(FLAGS_SETTLE_PERIOD).await;
        }
    }

    /// Enable `name` (or every flag this node supports: `all`) in the cluster, once every
    /// member says it supports it. A single node has them all enabled already.
    pub async fn enable_feature_flag(&self, name: &str) -> Result<(), ChangeError> {
        let support = crate::feature_flags::support();
        let wanted: Vec<String> = if name == "all" {
            support.flags.iter().cloned().collect()
        } else if support.flags.contains(name) {
            vec![name.to_owned()]
        } else {
            return Err(ChangeError::Invalid(format!("feature flag '{name}' is not supported by this node")));
        };
        let Some(running) = self.cluster.get() else { return Ok(()) };
        let enabled = self.enabled_feature_flags().unwrap_or_default();
        let wanted: Vec<String> = wanted.into_iter().filter(|f| !enabled.contains(f)).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        for member in running.node.members() {
            let offer = running.node.member_offer(&member).await.map_err(|e| {
                ChangeError::Unavailable(format!(
                    "cannot enable feature flags: {e} (every member must be running to enable one)"
                ))
            })?;
            if let Some(f) = wanted.iter().find(|f| !offer.features.contains(f)) {
                return Err(ChangeError::Invalid(format!(
                    "cannot enable feature flag '{f}': cluster member {member} does not support it (upgrade it, or \
                     remove it with forget_cluster_node)"
                )));
            }
        }
        running.propose_command(&Command::EnableFeatureFlags(wanted)).await
    }
}

/// In the background on every clustered node: while the cluster has no enabled set (a new
/// cluster, or one upgraded from a version before flags, whose log already uses what every
/// flag names), the leader asks every member which flags it supports — over the inter-node
/// link, whose handshake says — and once all have answered proposes enabling the flags all
/// of them support. A member never heard from holds it up (a gated proposal waits, then is
/// refused), since it could be a version lacking a flag; one that answered an earlier
/// handshake and is down now counts with what it said then.
pub fn settle_feature_flags(state: &Arc<ServerState>) {
    if state.cluster.get().is_none() {
        return;
    }
    let state = state.clone();
    tokio::spawn(async move {
        let Some(running) = state.cluster.get() else { return };
        let mut warned: Option<tokio::time::Instant> = None;
        loop {
            if *state.shutdown.borrow() || state.enabled_feature_flags().is_some() {
                return;
            }
            if running.node.is_leader() {
                match common_feature_flags(&running.node).await {
                    Ok(flags) => {
                        if let Err(e) = running.propose_command(&Command::EnableFeatureFlags(flags.clone())).await {
                            warn!("proposing the cluster's feature flags {flags:?}: {e}");
                        } else {
                            info!(?flags, "the cluster's feature flags are settled");
                        }
                    }
                    Err(e) if warned.is_none_or(|t| t.elapsed() >= FLAGS_SETTLE_WARN_PERIOD) => {
                        warn!("the cluster's feature flags are not settled yet: {e}");
                        warned = Some(tokio::time::Instant::now());
                    }
                    Err(_) => {}
                }
            }
            tokio::time::sleep(FLAGS_SETTLE_PERIOD).await;
        }
    });
}

/// The flags every member announces (this node included), or why they are not known yet. A
/// member that does not answer now counts with what its latest handshake with this node
/// said (a cluster whose member went down just after forming still settles); one never
/// heard from holds it up.
async fn common_feature_flags(node: &cluster::ClusterNode) -> Result<Vec<String>, String> {
    let mut common: Option<BTreeSet<String>> = None;
    for member in node.members() {
        let offer = match node.member_offer(&member).await {
            Ok(o) => o,
            Err(e) => node.last_offer(&member).ok_or_else(|| format!("waiting for {member}: {e}"))?,
        };
        let theirs: BTreeSet<String> = offer.features.into_iter().collect();
        common = Some(match common {
            None => theirs,
            Some(c) => c.intersection(&theirs).cloned().collect(),
        });
    }
    Ok(common.unwrap_or_default().into_iter().collect())
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
    /// The feature flags this node supports: an entry or snapshot needing another stops it.
    supported: BTreeSet<String>,
}

impl Applier {
    fn new(state: &Arc<ServerState>) -> Applier {
        Applier::supporting(state, crate::feature_flags::support().flags.clone())
    }

    fn supporting(state: &Arc<ServerState>, supported: BTreeSet<String>) -> Applier {
        Applier {
            state: Arc::downgrade(state),
            caught_up_by_leader: std::sync::atomic::AtomicBool::new(false),
            replayed: parking_lot::Mutex::new(std::collections::HashSet::new()),
            supported,
        }
    }

    /// This node cannot go on applying the log: say why (an error naming the entry and the
    /// flag), and make the broker exit non-zero. The state machine stops at the entry.
    fn halt(&self, state: Option<&ServerState>, reason: String) -> String {
        let reason = format!("{reason}; this node stops rather than skip it and diverge from the cluster");
        error!("{reason}");
        if let Some(state) = state {
            state.fail(reason.clone());
        }
        reason
    }

    /// Why this node cannot apply `flags` (the first one it does not support), if so.
    fn unsupported<'a>(&self, flags: impl IntoIterator<Item = &'a String>) -> Option<&'a String> {
        flags.into_iter().find(|f| !self.supported.contains(*f))
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

impl Applier {
    /// A decoded command this node supports, applied.
    fn apply_command(&self, state: Arc<ServerState>, index: u64, command: Command) -> Vec<u8> {
        let outcome = match command {
            Command::EnableFeatureFlags(flags) => {
                state.enable_feature_flags(flags);
                Outcome::Applied
            }
            Command::Quorum(items) => {
                if let Some(q) = state.quorum.get() {
                    q.apply(index, items);
                }
                Outcome::Applied
            }
            Command::QuorumDeclare(mut d) => {
                // A queue with a group of its own: the group's id is this entry's index,
                // the same on every node and never reused.
                if !d.voters.is_empty() {
                    d.group = Some(index);
                }
                match state.apply_quorum_declare(d) {
                    Ok(()) => Outcome::Applied,
                    Err(e) => Outcome::Invalid(e),
                }
            }
            Command::QuorumDelete { vhost, name } => {
                state.apply_quorum_delete(&vhost, &name);
                Outcome::Applied
            }
            Command::QuorumBind(d) => match state.apply_quorum_bind(d) {
                Ok(()) => Outcome::Applied,
                Err(e) => Outcome::Invalid(e),
            },
            Command::QuorumUnbind(d) => match state.apply_quorum_unbind(d) {
                Ok(()) => Outcome::Applied,
                Err(e) => Outcome::Invalid(e),
            },
            Command::ExchangeDeclare(d) => {
                let replay = index <= state.cluster_applied.load(std::sync::atomic::Ordering::Acquire);
                let new = state.vhost(&d.vhost).is_some_and(|vh| vh.exchange(&d.exchange.name).is_err());
                let answer = state.apply_exchange_declare(&d);
                if replay && new && answer.is_ok() {
                    self.replayed.lock().insert((d.vhost, d.exchange.name));
                }
                return crate::cluster_topology::encode_answer(&answer);
            }
            Command::ExchangeDelete { vhost, name, if_unused } => {
                return self.apply_exchange_delete(&state, index, vhost, name, if_unused);
            }
            Command::ClassicDeclare(d) => {
                if let Some(c) = state.classic.get() {
                    c.apply_declare(&state, d);
                }
                Outcome::Applied
            }
            Command::ClassicDelete { vhost, name, gone_at_home } => {
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
            Command::ExchangeBind(b) => {
                return crate::cluster_topology::encode_answer(&state.apply_exchange_binding(&b, true));
            }
            Command::ExchangeUnbind(b) => {
                return crate::cluster_topology::encode_answer(&state.apply_exchange_binding(&b, false));
            }
            // Already in this node's definitions log (it was applied before a restart).
            Command::Access(_) if index <= state.cluster_applied.load(std::sync::atomic::Ordering::Acquire) => {
                Outcome::Applied
            }
            Command::Access(changes) => match state.apply_committed(index, changes) {
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
}

#[cfg(test)]
impl Applier {
    /// `apply`, for a command the node can apply.
    fn apply_ok(&self, index: u64, cmd: &[u8]) -> Vec<u8> {
        cluster::Applier::apply(self, index, cmd).expect("applied")
    }
}

impl cluster::Applier for Applier {
    fn apply(&self, index: u64, cmd: &[u8]) -> Result<Vec<u8>, String> {
        let Some(state) = self.state() else { return Ok(encode(&Outcome::Store("the node is stopping".into()))) };
        // Never skipped: every other node applies it, so this one would diverge.
        let command = decode(cmd).map_err(|e| {
            self.halt(
                Some(&state),
                format!("raft entry {index} cannot be decoded (written by a newer Warren version?): {e}"),
            )
        })?;
        if let Some(flag) = command.feature_flag().filter(|f| !self.supported.contains(*f)) {
            return Err(self.halt(
                Some(&state),
                format!("raft entry {index} needs feature flag {flag}, which this node does not support"),
            ));
        }
        if let Command::EnableFeatureFlags(flags) = &command
            && let Some(flag) = self.unsupported(flags)
        {
            return Err(self.halt(
                Some(&state),
                format!("raft entry {index} enables feature flag {flag}, which this node does not support"),
            ));
        }
        Ok(self.apply_command(state, index, command))
    }

    fn snapshot(&self) -> Vec<u8> {
        let Some(state) = self.state() else { return encode_snapshot(&SnapshotData::default()) };
        let access = state.with_access(Directory::all_changes);
        let quorum = state.quorum.get().map(|q| q.snapshot()).unwrap_or_default();
        let flags = state.enabled_feature_flags();
        let enabled = |f: &str| flags.as_ref().is_none_or(|set| set.contains(f));
        // Without `replicated_topology` exchanges are not in the log, and a version before
        // it does not know the field.
        let topology = enabled(crate::feature_flags::REPLICATED_TOPOLOGY).then(|| state.topology_snapshot());
        let cbor = enabled(crate::feature_flags::CBOR_SNAPSHOTS);
        let feature_flags = flags.map(|set| set.into_iter().collect());
        // Without `classic_queue_directory` the directory is empty anyway.
        let classic = state.classic.get().map(|c| c.snapshot(&state)).unwrap_or_default();
        let data = SnapshotData { access, quorum, topology, feature_flags, classic };
        if cbor {
            // CBOR: quorum queues' messages are byte strings there (JSON, the first
            // encoding, made each byte a number, ~3.5 bytes each to write and parse).
            encode_snapshot(&data)
        } else {
            encode(&data)
        }
    }

    fn restore(&self, index: u64, data: &[u8]) -> Result<(), String> {
        let state = self.state().ok_or("the node is stopping")?;
        let snapshot: SnapshotData = match data.first() {
            None => Ok(SnapshotData::default()),
            // Taken by an earlier version (JSON; a CBOR map never starts with `{`).
            Some(b'{') => serde_json::from_slice(data).map_err(|e| e.to_string()),
            Some(_) => ciborium::from_reader(data).map_err(|e| e.to_string()),
        }
        .map_err(|e| {
            self.halt(
                Some(&state),
                format!("the cluster snapshot at {index} cannot be decoded (taken by a newer Warren version?): {e}"),
            )
        })?;
        if let Some(flag) = self.unsupported(snapshot.feature_flags.iter().flatten()) {
            return Err(self.halt(
                Some(&state),
                format!(
                    "the cluster snapshot at {index} has feature flag {flag} enabled, which this node does not support"
                ),
            ));
        }
        if let Some(flags) = &snapshot.feature_flags {
            state.enable_feature_flags(flags.clone());
        }
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

    fn required_features(&self) -> Vec<String> {
        self.state().and_then(|s| s.enabled_feature_flags()).map(|f| f.into_iter().collect()).unwrap_or_default()
    }
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
    c.group_heartbeat_ms = state.config.quorum_queue_heartbeat_ms;
    let support = crate::feature_flags::support();
    c.offer = cluster::Offer {
        wire_min: support.wire_min,
        wire_max: support.wire_max,
        features: support.flags.iter().cloned().collect(),
    };
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

/// Longest a stopping node spends handing its leaderships over ([`hand_over_leadership`]).
pub const STOP_HAND_OVER_MAX: Duration = Duration::from_secs(10);

/// Before a clustered node stops (SIGTERM, after its client connections closed): hand the
/// quorum queues it leads, and then the metadata group if it leads it, to other running
/// members, within [`STOP_HAND_OVER_MAX`]. The others then go on at once instead of after
/// an election timeout. What is not handed over in time fails over as after a crash.
pub async fn hand_over_leadership(state: &Arc<ServerState>) {
    let Some(running) = state.cluster.get() else { return };
    let deadline = tokio::time::Instant::now() + STOP_HAND_OVER_MAX;
    let me = running.node.name().to_owned();
    // Who can take over: asked once, for the queues and the metadata group alike.
    let online = running.node.running_members().await;
    if let Some(qq) = state.quorum.get() {
        let moved = qq.hand_over_all(&me, &online, deadline).await;
        if moved > 0 {
            info!(queues = moved, "quorum queues led here handed over before stopping");
        }
    }
    let meta = running.node.meta();
    if !meta.is_leader() {
        return;
    }
    let Some(to) = meta.voters().into_iter().find(|v| *v != me && online.contains(v)) else { return };
    match tokio::time::timeout_at(deadline, meta.transfer_leadership(&to)).await {
        Ok(Ok(now)) => info!(to = %now, "the cluster's metadata leadership handed over before stopping"),
        Ok(Err(e)) => warn!(to = %to, "the cluster's metadata leadership not handed over before stopping: {e}"),
        Err(_) => warn!("stopping before the cluster's metadata leadership was handed over"),
    }
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
        assert_eq!(outcome(&a.apply_ok(5, &ok)), Outcome::Applied);
        assert!(s.with_access(|d| d.permission("guest", "v").is_some()));
        assert!(s.vhost("v").is_some(), "carried out: the broker has the vhost");
        assert_eq!(s.cluster_applied.load(std::sync::atomic::Ordering::Acquire), 5);
        // The second change fails: the first is not applied either, the index stays.
        let bad = encode(&Command::Access(vec![Change::PutVhost(Vhost::named("w")), perm("ghost", "w")]));
        assert_eq!(outcome(&a.apply_ok(6, &bad)), Outcome::Invalid("user 'ghost' does not exist".into()));
        assert!(s.with_access(|d| d.vhost("w").is_none()));
        assert_eq!(s.cluster_applied.load(std::sync::atomic::Ordering::Acquire), 5);
        // Undecodable (a newer version's entry): not skipped, the node stops.
        let e = cluster::Applier::apply(&a, 7, b"{\"Exchange\":1}").unwrap_err();
        assert!(e.contains("raft entry 7 cannot be decoded"), "{e}");
        assert_eq!(s.fatal_error().borrow().as_deref(), Some(e.as_str()), "the broker is told to exit");
    }

    #[test]
    fn a_snapshot_restores_as_the_same_directory_and_empty_restores_as_empty() {
        let (from, to) = (state(), state());
        let a = Applier::new(&from);
        let b = Applier::new(&to);
        a.apply_ok(1, &encode(&Command::Access(vec![user("alice"), Change::PutVhost(Vhost::named("v"))])));
        // `to` has its own guest (another salt) and a vhost `from` lacks.
        b.apply_ok(1, &encode(&Command::Access(vec![Change::PutVhost(Vhost::named("only-here"))])));
        b.restore(9, &a.snapshot()).unwrap();
        assert_eq!(to.with_access(Directory::all_changes), from.with_access(Directory::all_changes));
        assert!(to.vhost("only-here").is_none(), "carried out: the broker's vhost is gone");
        assert_eq!(to.cluster_applied.load(std::sync::atomic::Ordering::Acquire), 9);
        b.restore(10, &[]).unwrap();
        assert!(to.with_access(Directory::all_changes).is_empty());
        assert!(b.restore(11, b"not json").is_err());
    }
    fn flags(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn an_entry_needing_a_flag_this_node_lacks_stops_it_instead_of_being_skipped() {
        use crate::feature_flags::{QUORUM_QUEUE, REPLICATED_TOPOLOGY};
        let s = state();
        let old = Applier::supporting(&s, flags(&[QUORUM_QUEUE]));
        assert_eq!(
            outcome(&old.apply_ok(1, &encode(&Command::Access(vec![Change::PutVhost(Vhost::named("v"))])))),
            Outcome::Applied
        );
        let enable = encode_cbor(&Command::EnableFeatureFlags(vec![QUORUM_QUEUE.into()]));
        assert_eq!(outcome(&old.apply_ok(2, &enable)), Outcome::Applied);
        assert_eq!(s.enabled_feature_flags(), Some(flags(&[QUORUM_QUEUE])));
        let declare = Command::ExchangeDelete { vhost: "v".into(), name: "x".into(), if_unused: false };
        let e = cluster::Applier::apply(&old, 3, &encode_cbor(&declare)).unwrap_err();
        assert!(
            e.starts_with("raft entry 3 needs feature flag replicated_topology, which this node does not support"),
            "{e}"
        );
        assert_eq!(s.fatal_error().borrow().as_deref(), Some(e.as_str()));
        let enable = encode_cbor(&Command::EnableFeatureFlags(vec![REPLICATED_TOPOLOGY.into()]));
        let e = cluster::Applier::apply(&old, 4, &enable).unwrap_err();
        assert!(e.contains("enables feature flag replicated_topology"), "{e}");
        assert_eq!(s.enabled_feature_flags(), Some(flags(&[QUORUM_QUEUE])), "not applied");
        // A node supporting it applies both.
        let t = state();
        let new = Applier::new(&t);
        new.apply_ok(1, &encode(&Command::Access(vec![Change::PutVhost(Vhost::named("v"))])));
        assert_eq!(outcome(&new.apply_ok(4, &enable)), Outcome::Applied);
        assert!(matches!(
            serde_json::from_slice::<Result<(), (u16, String)>>(&new.apply_ok(5, &encode_cbor(&declare))),
            Ok(Ok(()))
        ));
        assert!(t.fatal_error().borrow().is_none());
    }

    #[test]
    fn snapshots_carry_the_enabled_flags_and_one_a_node_cannot_read_stops_it() {
        use crate::feature_flags::{CBOR_SNAPSHOTS, QUORUM_QUEUE, REPLICATED_TOPOLOGY};
        let (from, to, old) = (state(), state(), state());
        let a = Applier::new(&from);
        a.apply_ok(1, &encode_cbor(&Command::EnableFeatureFlags(vec![QUORUM_QUEUE.into()])));
        // Without cbor_snapshots and replicated_topology: JSON, no topology (what a version
        // before them reads).
        let snap = cluster::Applier::snapshot(&a);
        assert_eq!(snap.first(), Some(&b'{'), "JSON");
        let parsed: SnapshotData = serde_json::from_slice(&snap).unwrap();
        assert!(parsed.topology.is_none());
        assert_eq!(parsed.feature_flags, Some(vec![QUORUM_QUEUE.to_owned()]));
        Applier::new(&to).restore(5, &snap).unwrap();
        assert_eq!(to.enabled_feature_flags(), Some(flags(&[QUORUM_QUEUE])));
        let none = Applier::supporting(&old, BTreeSet::new());
        let e = none.restore(5, &snap).unwrap_err();
        assert!(e.contains("has feature flag quorum_queue enabled, which this node does not support"), "{e}");
        assert!(old.fatal_error().borrow().is_some());
        // Enabled: CBOR with the topology.
        a.apply_ok(
            2,
            &encode_cbor(&Command::EnableFeatureFlags(vec![CBOR_SNAPSHOTS.into(), REPLICATED_TOPOLOGY.into()])),
        );
        let snap = cluster::Applier::snapshot(&a);
        assert_ne!(snap.first(), Some(&b'{'), "CBOR");
        let parsed: SnapshotData = ciborium::from_reader(&snap[..]).unwrap();
        assert!(parsed.topology.is_some());
        // A field of a newer version is refused, not dropped.
        let future = state();
        let e = Applier::new(&future).restore(6, br#"{"access":[],"shovels":[]}"#).unwrap_err();
        assert!(e.contains("cannot be decoded") && e.contains("shovels"), "{e}");
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
        a.apply_ok(1, &encode(&Command::Access(vec![Change::PutVhost(Vhost::named("v"))])));
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
        assert_eq!(answer(&a.apply_ok(2, &encode_cbor(&exchange("x", "topic", true)))), Ok(()));
        assert_eq!(answer(&a.apply_ok(3, &encode_cbor(&exchange("y", "direct", false)))), Ok(()));
        // Equivalent again: fine; another type: 406, the exchange unchanged.
        assert_eq!(answer(&a.apply_ok(4, &encode_cbor(&exchange("x", "topic", true)))), Ok(()));
        let refused = answer(&a.apply_ok(5, &encode_cbor(&exchange("x", "fanout", true))));
        assert!(matches!(&refused, Err((406, t)) if t.contains("inequivalent arg 'type'")), "{refused:?}");
        assert_eq!(answer(&a.apply_ok(6, &encode_cbor(&Command::ExchangeBind(binding("x", "y"))))), Ok(()));
        let missing = answer(&a.apply_ok(7, &encode_cbor(&Command::ExchangeBind(binding("x", "nope")))));
        assert!(matches!(missing, Err((404, _))), "{missing:?}");
        // if-unused counts the e2e binding (replicated, the same on every node).
        let busy = Command::ExchangeDelete { vhost: "v".into(), name: "y".into(), if_unused: true };
        assert!(matches!(answer(&a.apply_ok(8, &encode_cbor(&busy))), Err((406, _))));
        let gone = Command::ExchangeDelete { vhost: "v".into(), name: "x".into(), if_unused: false };
        assert_eq!(answer(&a.apply_ok(9, &encode_cbor(&gone))), Ok(()));
        assert_eq!(names(&s), ["y"]);
        assert!(s.topology_snapshot().bindings.is_empty(), "the binding went with its source");
    }

    #[test]
    fn a_replayed_delete_keeps_an_exchange_declared_again_since_and_removes_one_the_replay_made() {
        let (s, a) = node();
        a.apply_ok(2, &encode_cbor(&exchange("x", "topic", true)));
        let delete = |name: &str| Command::ExchangeDelete { vhost: "v".into(), name: name.into(), if_unused: false };
        // Applied now: deleted, and the index recorded.
        assert_eq!(answer(&a.apply_ok(3, &encode_cbor(&delete("x")))), Ok(()));
        assert!(names(&s).is_empty());
        assert_eq!(s.cluster_applied.load(std::sync::atomic::Ordering::Acquire), 3);
        // As after a restart: `x` is back from the definitions log (declared again after
        // the delete); replaying the delete at 3 keeps it.
        a.apply_ok(4, &encode_cbor(&exchange("x", "topic", true)));
        s.record_cluster_applied(4);
        assert_eq!(answer(&a.apply_ok(3, &encode_cbor(&delete("x")))), Ok(()));
        assert_eq!(names(&s), ["x"]);
        // One the replay itself declares (a transient one, say) goes with its delete.
        let fresh = Applier::new(&s);
        assert_eq!(answer(&fresh.apply_ok(2, &encode_cbor(&exchange("t", "fanout", false)))), Ok(()));
        assert_eq!(answer(&fresh.apply_ok(3, &encode_cbor(&delete("t")))), Ok(()));
        assert_eq!(names(&s), ["x"]);
    }

    #[test]
    fn a_snapshot_carries_exchanges_and_e2e_bindings_and_one_without_them_keeps_the_nodes() {
        let (from, a) = node();
        let (to, b) = node();
        for (i, c) in [exchange("x", "topic", true), exchange("y", "direct", false)].iter().enumerate() {
            a.apply_ok(2 + i as u64, &encode_cbor(c));
        }
        a.apply_ok(4, &encode_cbor(&Command::ExchangeBind(binding("x", "y"))));
        // `to` has an exchange the cluster deleted, and `y` declared otherwise.
        b.apply_ok(2, &encode_cbor(&exchange("stale", "fanout", true)));
        b.apply_ok(3, &encode_cbor(&exchange("y", "fanout", true)));
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
