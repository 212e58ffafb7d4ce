//! [`Group`]: one Raft group on this node — its log, state machine and openraft core — and
//! the client operations on it.
//!
//! A node runs the **metadata group** (every member of the cluster belongs to it; its files
//! are the data directory's own) and any number of **other groups** (a quorum queue's: only
//! the nodes chosen as its members run it; files under `groups/<id>/`). All share the node's
//! one transport: a group's traffic travels as [`Request::Group`] with its id, the metadata
//! group's as the plain requests.
//!
//! Writes (`propose`, `add_member`, `remove_member`) may be called on any member: a follower
//! **forwards** them to the leader it knows and returns the leader's answer, retrying while
//! an election is under way, until the request deadline. [`Error::NotLeader`] is returned
//! only when no leader became known before the deadline. A forwarded write whose link fails
//! after sending is not retried (it might apply twice): it returns [`Error::Indeterminate`].
//! Reads go through [`Group::read`], which gets a read index from the leader (which confirms
//! its leadership with a quorum first) and waits until the local state machine has applied
//! it — linearizable on any member.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::collections::VecDeque;

use futures_util::StreamExt;
use openraft::async_runtime::WatchReceiver;
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::Infallible;
use openraft::error::decompose::DecomposeResult;
use openraft::error::{
    LinearizableReadError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, ChangeMembers, Config, ServerState};
use openraft_legacy::network_v1::{
    Adapter, ChunkedSnapshotReceiver, InstallSnapshotError, InstallSnapshotRequest, InstallSnapshotResponse,
    RaftNetwork,
};

use tokio::sync::oneshot;

use crate::log_store::LogStore;
use crate::node::{MAX_COMMAND_BYTES, MemberStatus, PING_TIMEOUT, Proposal, RaftStatus, Replication, Settles};
use crate::state_machine::{Applied, Applier, StateMachine};
use crate::transport::{CallError, ClientFailure, ClientRequest, GroupRequest, Request, Response, Transport};
use crate::{Error, LogId, NodeId, Raft, SnapshotData, TypeConfig, Vote, node_id, parse_node_name};

/// A group's id: chosen by whoever creates the group (the broker uses the metadata log
/// index of the queue's declaration, unique for the cluster's life). The metadata group
/// has none.
pub type GroupId = u64;

/// Pause between attempts while no leader is known.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// How often the node compares a group's log size with its snapshot bound.
const SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// One Raft group this node is a member of. Cloning shares it.
#[derive(Clone)]
pub struct Group {
    inner: Arc<Inner>,
}

struct Inner {
    /// None for the metadata group.
    id: Option<GroupId>,
    /// This node's name.
    me: String,
    request_deadline: Duration,
    raft: Raft,
    /// A clone sharing the Raft's log store: the committed index as this node stored it,
    /// and the log's size.
    log: LogStore,
    state: StateMachine,
    transport: Arc<Transport>,
    fence: ReadFence,
    /// Held (written) by a leader handing its leadership over, so that its log stops
    /// growing and the new leader can have all of it; every proposal holds it (read) while
    /// its entry enters the log.
    writes: tokio::sync::RwLock<()>,
    snapshots: tokio::task::JoinHandle<()>,
    /// How long the last entry proposed on this node as the leader took from entering the
    /// log to being committed and applied here, in µs (0: none yet). RabbitMQ's
    /// `rabbitmq_raft_entry_commit_latency_seconds`.
    /// (Shared with proposals in flight, which must not keep the group itself alive.)
    commit_latency_us: Arc<AtomicU64>,
}

/// Record in `latest` (µs, at least 1: 0 means none measured) the time since `since`.
fn note_commit(latest: &AtomicU64, since: std::time::Instant) {
    let us = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
    latest.store(us, Ordering::Relaxed);
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.snapshots.abort();
    }
}

/// What [`Group::open`] needs besides the group's directory and applier.
#[derive(Clone)]
pub(crate) struct GroupSettings {
    pub me: String,
    pub raft: Arc<Config>,
    pub transport: Arc<Transport>,
    pub request_deadline: Duration,
    pub snapshot_log_bytes: u64,
}

impl Group {
    /// Open (or create) group `id` with its files in `dir`, committed commands going to
    /// `applier`. `reset`: a fresh group (nothing on disk) starts from the empty state, not
    /// from what the applier holds.
    pub(crate) async fn open(
        id: Option<GroupId>,
        dir: &Path,
        applier: Arc<dyn Applier>,
        reset: bool,
        settings: &GroupSettings,
    ) -> Result<Group, Error> {
        let (log, recovery) = LogStore::open(dir)?;
        let state = StateMachine::open(dir, applier, &log, reset)?;
        tracing::info!(node = %settings.me, group = ?id, entries = recovery.entries, cut_bytes = recovery.cut_bytes, "raft log recovered");
        let network = Network { transport: settings.transport.clone(), group: id };
        let log_view = log.clone();
        let raft = Raft::new(node_id(&settings.me), settings.raft.clone(), network, log, state.clone())
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        let snapshots = tokio::spawn(snapshot_by_size(raft.clone(), log_view.clone(), settings.snapshot_log_bytes));
        tokio::spawn(report_fatal(raft.clone(), id));
        Ok(Group {
            inner: Arc::new(Inner {
                id,
                me: settings.me.clone(),
                request_deadline: settings.request_deadline,
                raft,
                log: log_view,
                state,
                transport: settings.transport.clone(),
                fence: ReadFence::default(),
                writes: tokio::sync::RwLock::new(()),
                snapshots,
                commit_latency_us: Arc::new(AtomicU64::new(0)),
            }),
        })
    }

    /// Initialise a group that has no state yet with `members` (names) as its voters; false
    /// when it already had state (a restart, or a peer's leader reached it first), which is
    /// not an error. Every initial member may call this with the same list: openraft's vote
    /// makes one leader of them (different lists on different members would not be safe).
    pub async fn initialize(&self, members: &[String]) -> Result<bool, Error> {
        let raft = &self.inner.raft;
        if raft.is_initialized().await.map_err(|e| Error::Raft(e.to_string()))? {
            return Ok(false);
        }
        for n in members {
            parse_node_name(n)?;
        }
        let members: BTreeMap<NodeId, BasicNode> = members.iter().map(|n| (node_id(n), BasicNode::new(n))).collect();
        match raft.initialize(members).await {
            Ok(()) => Ok(true),
            // Entries from a peer's leader arrived between the check and the call.
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(false),
            Err(e) => Err(Error::Raft(e.to_string())),
        }
    }

    /// The group's id (None: the metadata group).
    pub fn id(&self) -> Option<GroupId> {
        self.inner.id
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
    /// [`Self::propose_and_wait`] returns — or, with [`Settles::AtCommit`], of its index (and
    /// no result) as soon as a majority has it on disk, before any node applied it (once
    /// this leader has applied an entry of its own term; before that, once applied). Commands
    /// queued by successive calls (each call awaited before the next) enter the log in call
    /// order, so a caller may keep several in flight and still see them applied in order.
    /// When this node is not the leader the command comes back ([`Proposal::NotLeader`]):
    /// forwarding would not keep that order, so the caller proposes it with
    /// [`Self::propose_and_wait`] and waits. If leadership is lost meanwhile the future fails
    /// (the command may still be committed by the next leader, as after a timeout).
    pub async fn propose_queued(&self, cmd: Vec<u8>, settles: Settles) -> Proposal {
        if cmd.len() > MAX_COMMAND_BYTES {
            return Proposal::Failed(Error::CommandTooLarge { bytes: cmd.len(), max: MAX_COMMAND_BYTES });
        }
        let raft = &self.inner.raft;
        let at_commit = {
            let m = raft.metrics();
            let m = m.borrow_watched();
            if !writable(&m, Duration::from_millis(raft.config().election_timeout_max)) {
                return Proposal::NotLeader(cmd);
            }
            // Settling at commit relies on knowing every entry ahead of this one. Entries
            // an earlier leader left are known once this leader applied one of its own
            // term (all before it are applied then); until then the answer waits for the
            // apply.
            settles == Settles::AtCommit && m.last_applied.as_ref().is_some_and(|l| l.leader_id.term == m.current_term)
        };
        let (start, (commit_rx, rx)) = match self.enter(cmd, at_commit).await {
            Ok(entered) => entered,
            Err(e) => return Proposal::Failed(Error::Raft(e.to_string())),
        };
        let (deadline, latency) = (self.inner.request_deadline, self.inner.commit_latency_us.clone());
        Proposal::Queued(Box::pin(async move {
            let until = tokio::time::Instant::now() + deadline;
            if let Some(commit_rx) = commit_rx {
                // openraft tells the responder its entry is committed as it hands the entry
                // to the state machine; a dropped sender means the entry failed, and the
                // result below says why.
                if let Ok(committed) = tokio::time::timeout_at(until, commit_rx).await.map_err(|_| Error::Timeout)? {
                    note_commit(&latency, start);
                    return Ok((committed.index, Vec::new()));
                }
            }
            // The answer comes from the state machine's `apply`, once it has applied the
            // entry here: no wait on openraft's metrics (the state machine tells the core,
            // which then updates them — two more hops on every entry's way to its confirm).
            let answer = tokio::time::timeout_at(until, rx).await.map_err(|_| Error::Timeout)?;
            let written = match written(answer) {
                Ok(w) => w,
                Err(ClientFailure::NotLeader(leader)) => return Err(Error::NotLeader { leader }),
                Err(ClientFailure::Retry(e) | ClientFailure::Other(e)) => return Err(Error::Raft(e)),
            };
            note_commit(&latency, start);
            Ok((written.log_id.index, written.data))
        }))
    }

    /// Add `name` (`NAME@HOST:PORT`) as a voter: first as a learner that receives the log (or a
    /// snapshot), then promoted. What `warrenctl join_cluster` calls on the metadata group.
    pub async fn add_member(&self, name: &str) -> Result<u64, Error> {
        parse_node_name(name)?;
        self.client(ClientRequest::AddMember(name.to_owned())).await.map(|(index, _)| index)
    }

    /// Remove `name` from the voters and the group. What `warrenctl forget_cluster_node`
    /// calls on the metadata group.
    pub async fn remove_member(&self, name: &str) -> Result<u64, Error> {
        parse_node_name(name)?;
        self.client(ClientRequest::RemoveMember(name.to_owned())).await.map(|(index, _)| index)
    }

    /// Take `name`'s vote away; it stays in the group as a learner and keeps receiving the
    /// log. What a quorum queue's `delete_member` and `shrink` call.
    pub async fn demote_member(&self, name: &str) -> Result<u64, Error> {
        parse_node_name(name)?;
        self.client(ClientRequest::DemoteMember(name.to_owned())).await.map(|(index, _)| index)
    }

    /// Remove `name` from the group entirely, voter or learner: what a node that has left
    /// the cluster is removed from quorum queues' groups with.
    pub async fn remove_node(&self, name: &str) -> Result<u64, Error> {
        parse_node_name(name)?;
        self.client(ClientRequest::RemoveNode(name.to_owned())).await.map(|(index, _)| index)
    }

    /// Move the group's leadership to its voter `target` (what `rebalance` calls; forwarded
    /// to the leader, see [`Self::hand_over`]). Returns who leads afterwards: `target`, or
    /// — when another member won the election the hand-over started — that member.
    pub async fn transfer_leadership(&self, target: &str) -> Result<String, Error> {
        parse_node_name(target)?;
        let (_, leader) = self.client(ClientRequest::TransferLeadership(target.to_owned())).await?;
        String::from_utf8(leader).map_err(|e| Error::Raft(e.to_string()))
    }

    /// On a leader that just took its own vote away: hand the leadership to the remaining
    /// voter with the most of the log. openraft lets a learner lead on (it steps down by
    /// itself only a leader removed from the group altogether), so without this the group
    /// would keep a leader that is no longer one of its voters. The demotion stands either
    /// way; a failed hand-over is logged, and the voters elect one once this node stops.
    async fn step_down_demoted(&self) {
        let target = {
            let m = self.inner.raft.metrics();
            let m = m.borrow_watched();
            let matched = |id: &NodeId| m.replication.as_ref().and_then(|r| r.get(id).copied().flatten());
            let membership = m.membership_config.membership();
            let best = membership.voter_ids().filter(|v| *v != m.id).max_by_key(matched);
            best.and_then(|id| membership.get_node(&id).map(|n| n.addr.clone()))
        };
        let Some(target) = target else { return };
        match self.hand_over(&target).await {
            Ok(_) => tracing::info!(group = ?self.inner.id, to = %target, "no longer a voter: leadership handed over"),
            Err(e) => {
                tracing::warn!(group = ?self.inner.id, to = %target, "no longer a voter, leadership not handed over: {e:?}")
            }
        }
    }

    /// On the leader: hand the leadership to voter `target` with openraft's leader transfer:
    ///
    /// 1. it waits until `target` answers and is within [`HAND_OVER_LAG_MAX`] entries;
    /// 2. it holds new writes back ([`Inner::writes`]), so its log stops growing, and waits
    ///    until `target` has every entry and this node has applied them all (the proposers'
    ///    answers are out, none is left to fail as "not leader") — at most
    ///    [`HELD_CATCH_UP_MAX`], so that a target that is down or slow does not stall writes;
    /// 3. it asks openraft to transfer: every member drops its leader lease for `target`,
    ///    which campaigns at once; then it waits until another node leads.
    ///
    /// Writes waiting meanwhile find this node no longer leading and go to the new leader.
    /// Answers the term and name of the node leading afterwards.
    async fn hand_over(&self, target: &str) -> Result<(u64, Vec<u8>), ClientFailure> {
        let raft = &self.inner.raft;
        let target_id = node_id(target);
        {
            let m = raft.metrics();
            let m = m.borrow_watched();
            if m.state != ServerState::Leader || m.current_leader != Some(m.id) {
                let leader = m.current_leader.and_then(|id| m.membership_config.membership().get_node(&id));
                return Err(ClientFailure::NotLeader(leader.map(|n| n.addr.clone())));
            }
            if target_id == m.id {
                return Ok((m.current_term, target.as_bytes().to_vec()));
            }
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            if !voters.contains(&target_id) {
                return Err(ClientFailure::Other(format!("{target} is not a voter of the group")));
            }
        }
        let deadline = tokio::time::Instant::now() + self.inner.request_deadline;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        // First without holding anything back: the target must answer and be close behind
        // (a node that is down or far behind would otherwise stall the queue's writes).
        let caught_up = |held: bool| {
            move |m: &openraft::RaftMetrics<TypeConfig>| {
                let last = m.last_log_index.unwrap_or(0);
                let matched = m.replication.as_ref().and_then(|r| r.get(&target_id).copied().flatten());
                let matched = matched.map_or(0, |l| l.index);
                let applied = m.last_applied.map_or(0, |l| l.index);
                if held { matched == last && applied == last } else { matched + HAND_OVER_LAG_MAX >= last }
            }
        };
        if !self.inner.transport.answers_ping(target, PING_TIMEOUT).await {
            return Err(ClientFailure::Other(format!("{target} does not answer (down, or its Raft stopped)")));
        }
        raft.wait(Some(left()))
            .metrics(caught_up(false), "the new leader close behind")
            .await
            .map_err(|_| ClientFailure::Other(format!("{target} is not keeping up with the log")))?;
        let _held = tokio::time::timeout_at(deadline, self.inner.writes.write())
            .await
            .map_err(|_| ClientFailure::Other("writes in progress did not finish".to_owned()))?;
        raft.wait(Some(HELD_CATCH_UP_MAX.min(left())))
            .metrics(caught_up(true), "the new leader has every entry")
            .await
            .map_err(|_| ClientFailure::Other(format!("{target} did not catch up with the log")))?;
        // openraft's own transfer: every member drops its leader lease for `target`, which
        // campaigns once it has flushed this node's last entry.
        raft.trigger().transfer_leader(target_id).await.map_err(|e| ClientFailure::Other(e.to_string()))?;
        let me = raft.metrics().borrow_watched().id;
        let m = raft
            .wait(Some(left()))
            .metrics(|m| m.current_leader.is_some_and(|l| l != me), "another node leads")
            .await
            .map_err(|_| ClientFailure::Other(format!("{target} did not win its election")))?;
        let leader =
            m.current_leader.and_then(|id| m.membership_config.membership().get_node(&id).map(|n| n.addr.clone()));
        Ok((m.current_term, leader.unwrap_or_default().into_bytes()))
    }

    /// On this node, which must lead the group: add `name` as a learner — it receives the
    /// log and applies it, but does not vote and is not counted in a quorum — without
    /// waiting for it to catch up. Not forwarded ([`Error::NotLeader`] elsewhere).
    pub async fn add_learner(&self, name: &str) -> Result<(), Error> {
        parse_node_name(name)?;
        match self.inner.raft.add_learner(node_id(name), BasicNode::new(name), false).await {
            Ok(_) => Ok(()),
            Err(e) => match fail(e) {
                ClientFailure::NotLeader(leader) => Err(Error::NotLeader { leader }),
                ClientFailure::Retry(e) | ClientFailure::Other(e) => Err(Error::Raft(e)),
            },
        }
    }

    /// Bytes of commands this node's log of the group holds in memory until a snapshot
    /// covers them.
    pub fn log_bytes(&self) -> u64 {
        self.inner.log.held_bytes()
    }

    /// Ask for a snapshot now (and the log purged up to it) if anything was applied since
    /// the last one: what a node-wide bound on all groups' logs calls on the largest. Does
    /// not wait for it; asking again while one is built is ignored. False when the group
    /// has shut down.
    pub async fn compact(&self) -> bool {
        let behind = {
            let m = self.inner.raft.metrics();
            let m = m.borrow_watched();
            m.last_applied.map(|l| l.index) > m.snapshot.map(|l| l.index)
        };
        !behind || self.inner.raft.trigger().snapshot().await.is_ok()
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
        let m = m.borrow_watched();
        m.membership_config.nodes().map(|(_, n)| n.addr.clone()).collect()
    }

    /// Names of the voters in the latest membership this node knows.
    pub fn voters(&self) -> Vec<String> {
        let m = self.inner.raft.metrics();
        let m = m.borrow_watched();
        let membership = m.membership_config.membership();
        membership.voter_ids().filter_map(|id| membership.get_node(&id).map(|n| n.addr.clone())).collect()
    }

    /// The leader this node knows of (none while its core is stopped: its last metrics
    /// would name the leader of then).
    pub fn leader(&self) -> Option<String> {
        let m = self.inner.raft.metrics();
        let m = m.borrow_watched();
        if m.running_state.is_err() {
            return None;
        }
        let id = m.current_leader?;
        m.membership_config.membership().get_node(&id).map(|n| n.addr.clone())
    }

    /// Term, leader, this node's log positions and each member's replication (on the
    /// leader), read from openraft's metrics without any network round trip.
    pub fn status(&self) -> RaftStatus {
        let m = self.inner.raft.metrics();
        let m = m.borrow_watched();
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
        let is_leader = m.state == ServerState::Leader && stopped.is_none();
        RaftStatus {
            term: m.current_term,
            leader,
            is_leader,
            last_log_index,
            committed_index: self.inner.log.committed_index().unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            log_bytes: self.inner.log.held_bytes(),
            commit_latency_us: if is_leader { self.inner.commit_latency_us.load(Ordering::Relaxed) } else { 0 },
            members,
            stopped,
        }
    }

    pub fn is_leader(&self) -> bool {
        let m = self.inner.raft.metrics();
        let m = m.borrow_watched();
        m.state == ServerState::Leader && m.running_state.is_ok()
    }

    /// The Raft core is running (not stopped on a fatal error or shut down).
    pub fn core_running(&self) -> bool {
        self.inner.raft.metrics().borrow_watched().running_state.is_ok()
    }

    /// Stop the group's Raft core (its files stay).
    pub async fn shutdown(&self) {
        let _ = self.inner.raft.shutdown().await;
        self.inner.snapshots.abort();
    }

    /// The feature flags the group's state requires of a member.
    pub(crate) fn required_features(&self) -> Vec<String> {
        self.inner.state.required_features()
    }

    /// Serve a peer's request to this group on this node.
    pub(crate) async fn serve(&self, request: GroupRequest) -> Response {
        let raft = &self.inner.raft;
        match request {
            GroupRequest::Append(r) => Response::Append(raft.append_entries(r).await),
            GroupRequest::Vote(r) => Response::Vote(raft.vote(r).await),
            GroupRequest::PreVote(r) => Response::Vote(raft.pre_vote(r).await),
            GroupRequest::Snapshot(r) => Response::Snapshot(raft.install_snapshot(r).await),
            GroupRequest::TransferLeader(r) => {
                Response::TransferLeader(raft.handle_transfer_leader(r).await.map_err(|e| e.to_string()))
            }
            // Forwarded requests are served here only; never forwarded again, so no loops.
            GroupRequest::Client(r) => Response::Client(self.local(r).await),
        }
    }

    async fn client(&self, req: ClientRequest) -> Result<(u64, Vec<u8>), Error> {
        let deadline = tokio::time::Instant::now() + self.inner.request_deadline;
        let mut last_leader = None;
        while tokio::time::Instant::now() < deadline {
            // A leader cut off from its quorum never finishes a write; the deadline bounds it.
            let attempt = tokio::time::timeout_at(deadline, self.local(req.clone())).await;
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
            if let Some(leader) = leader.filter(|l| *l != self.inner.me) {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let request = GroupRequest::Client(req.clone()).into_request(self.inner.id);
                match self.inner.transport.call(&leader, request, left).await {
                    Ok(Response::Client(Ok(i))) => return Ok(i),
                    Ok(Response::Client(Err(ClientFailure::Other(e)))) => return Err(Error::Raft(e)),
                    // Sent but unanswered: a write may or may not have been committed, and
                    // retrying could apply it twice. Reads are safe to retry.
                    Err(CallError::Lost(e)) if !matches!(req, ClientRequest::ReadIndex) => {
                        return Err(Error::Indeterminate(e));
                    }
                    // The leader moved, is unreachable, no longer runs the group, or could
                    // not reach a quorum this round: ask again after a pause.
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

    /// Put `cmd` in the log (unless a hand-over holds `writes`, which it waits for) and
    /// return when it entered, for the commit latency, with the receiver of its result.
    async fn enter(
        &self,
        cmd: Vec<u8>,
        at_commit: bool,
    ) -> Result<(std::time::Instant, (Option<oneshot::Receiver<LogId>>, WriteAnswer)), openraft::error::Fatal<TypeConfig>>
    {
        let _entering = self.inner.writes.read().await;
        let start = std::time::Instant::now();
        Ok((start, write_ff(&self.inner.raft, cmd, at_commit).await?))
    }

    /// Run a client operation on this node's Raft, which must be the leader.
    async fn local(&self, req: ClientRequest) -> Result<(u64, Vec<u8>), ClientFailure> {
        let (raft, fence) = (&self.inner.raft, &self.inner.fence);
        match req {
            ClientRequest::Propose(cmd) => {
                let (start, (_, rx)) = self.enter(cmd, false).await.map_err(|e| ClientFailure::Other(e.to_string()))?;
                let r = written(rx.await)?;
                note_commit(&self.inner.commit_latency_us, start);
                Ok((r.log_id.index, r.data))
            }
            ClientRequest::TransferLeadership(target) => self.hand_over(&target).await,
            ClientRequest::Campaign => {
                let voter = {
                    let m = raft.metrics();
                    let m = m.borrow_watched();
                    m.membership_config.membership().voter_ids().any(|v| v == m.id)
                };
                if !voter {
                    return Err(ClientFailure::Other(format!("{} is not a voter of the group", self.inner.me)));
                }
                // Ignored by a leader (it leads already) and by a stopped core (an error).
                raft.trigger().elect(false).await.map_err(|e| ClientFailure::Other(e.to_string()))?;
                Ok((0, Vec::new()))
            }
            ClientRequest::AddMember(name) => {
                let id = node_id(&name);
                // Only a leader adds members (a follower's add_learner below says who leads).
                let leading = raft.metrics().borrow_watched().state == ServerState::Leader;
                if leading {
                    probe_joiner(&self.inner.transport, &name, &self.required_features()).await?;
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
            ClientRequest::DemoteMember(name) => {
                let index = raft
                    .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([node_id(&name)])), true)
                    .await
                    .map(|r| r.log_id.index)
                    .map_err(fail)?;
                if name == self.inner.me {
                    self.step_down_demoted().await;
                }
                Ok((index, Vec::new()))
            }
            ClientRequest::RemoveNode(name) => {
                let id = node_id(&name);
                let votes = raft.metrics().borrow_watched().membership_config.membership().voter_ids().any(|v| v == id);
                // A voter is removed with its learner's place (`retain` false); a learner
                // alone is removed as a node.
                let change = if votes {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                raft.change_membership(change, false).await.map(|r| (r.log_id.index, Vec::new())).map_err(fail)
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
}

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
            let m = m.borrow_watched();
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

/// Log once, in the broker's words, when a Raft core stops on a fatal error: openraft's
/// own line does not say what it means for the node.
async fn report_fatal(raft: Raft, group: Option<GroupId>) {
    let mut metrics = raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow_and_update().running_state {
            // A clean shutdown is not news.
            if !matches!(fatal, openraft::error::Fatal::Stopped) {
                match group {
                    None => tracing::error!(
                        error = %fatal,
                        "the cluster's Raft core stopped: this node no longer votes, acknowledges or takes \
                         quorum-queue publishes (they are nacked) until it is restarted; fix the cause (e.g. free \
                         disk space) first"
                    ),
                    Some(g) => tracing::error!(
                        error = %fatal, group = g,
                        "a Raft group's core stopped: this node no longer votes or acknowledges in it until it \
                         is restarted; fix the cause (e.g. free disk space) first"
                    ),
                }
            }
            return;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
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

/// Whether openraft takes writes on this node now: it leads, and a quorum acknowledged it
/// within a leader lease (openraft 0.10 refuses writes otherwise — a leader cut off from
/// its quorum, or one just elected whose first entry no follower has answered yet).
fn writable(m: &openraft::RaftMetrics<TypeConfig>, lease: Duration) -> bool {
    use openraft::Instant as _;
    m.state == ServerState::Leader
        && m.current_leader == Some(m.id)
        && m.last_quorum_acked.as_ref().is_some_and(|t| t.elapsed() < lease)
}

/// Queue `cmd` in the log (on the leader) and return at once with the receiver of its
/// outcome: the entry's log id and what applying it returned, or why it was not committed;
/// with `at_commit`, also the receiver of its log id once it is committed.
/// Where a proposal's result arrives (see [`written`]).
type WriteAnswer = oneshot::Receiver<openraft::raft::ClientWriteResult<TypeConfig>>;

async fn write_ff(
    raft: &Raft,
    cmd: Vec<u8>,
    at_commit: bool,
) -> Result<(Option<oneshot::Receiver<LogId>>, WriteAnswer), openraft::error::Fatal<TypeConfig>> {
    let (complete, rx) = oneshot::channel();
    let (committed, commit_rx) = if at_commit {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    raft.client_write_ff(crate::Command(cmd.into()), Some(WriteResponder { committed, complete })).await?;
    Ok((commit_rx, rx))
}

/// How openraft answers a write proposed with `client_write_ff`: with its log id when it is
/// committed (if asked) and its result once applied. Unlike openraft's `ProgressResponder`
/// it says nothing when the caller stopped listening: a proposal settled at commit drops
/// the receiver of the applied result, on every entry.
pub struct WriteResponder<T> {
    committed: Option<oneshot::Sender<LogId>>,
    complete: oneshot::Sender<T>,
}

impl<T: openraft::OptionalSend + 'static> openraft::raft::responder::Responder<TypeConfig, T> for WriteResponder<T> {
    fn on_commit(&mut self, log_id: LogId) {
        if let Some(tx) = self.committed.take() {
            let _ = tx.send(log_id);
        }
    }

    fn on_complete(self, result: T) {
        let _ = self.complete.send(result);
    }
}

/// A Raft error as the client sees it: where the leader is, or what went wrong.
fn fail<E>(e: RaftError<TypeConfig, E>) -> ClientFailure
where
    E: std::error::Error + openraft::TryAsRef<openraft::error::ForwardToLeader<TypeConfig>>,
{
    match e.forward_to_leader() {
        Some(f) => ClientFailure::NotLeader(f.leader_node.as_ref().map(|n| n.addr.clone())),
        None => ClientFailure::Other(e.to_string()),
    }
}

/// How far behind the leader's log a hand-over's target may be when the leader starts
/// holding writes back, in entries.
const HAND_OVER_LAG_MAX: u64 = 64;

/// Longest a hand-over holds writes back waiting for its target to have every entry; past
/// it the hand-over is given up (an error to whoever asked; a rebalance goes on with the
/// next queue).
const HELD_CATCH_UP_MAX: Duration = Duration::from_secs(1);

/// Whether this process, as leader, has committed an entry of its own before serving a read
/// index. The log store does not fsync the committed marker (see `LogStore::save_committed`),
/// so a leader that restarts in the same term — which openraft allows without an
/// election, hence without the no-op entry an election appends — may start with a committed
/// index older than what it acknowledged before the crash. Committing one blank entry first
/// commits everything before it, so the read index covers every acknowledged write.
#[derive(Default)]
struct ReadFence(std::sync::atomic::AtomicBool);

/// What a write submitted with `write_ff` came to: its result, or why there is none (another
/// node leads, or the core failed or stopped and dropped the responder).
fn written<E: std::fmt::Display>(
    answer: Result<
        Result<openraft::raft::ClientWriteResponse<TypeConfig>, openraft::error::ClientWriteError<TypeConfig>>,
        E,
    >,
) -> Result<openraft::raft::ClientWriteResponse<TypeConfig>, ClientFailure> {
    match answer {
        Ok(Ok(w)) => Ok(w),
        Ok(Err(openraft::error::ClientWriteError::ForwardToLeader(f))) => {
            Err(ClientFailure::NotLeader(f.leader_node.map(|n| n.addr)))
        }
        Ok(Err(e)) => Err(ClientFailure::Other(e.to_string())),
        Err(e) => Err(ClientFailure::Other(e.to_string())),
    }
}

async fn read_index(raft: &Raft) -> Result<(u64, Vec<u8>), ClientFailure> {
    match raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex).await {
        Ok(read) => Ok((read.index(), Vec::new())),
        // Heartbeats did not reach a quorum this round (peers restarting, a partition):
        // the caller retries until its deadline rather than failing a read at once.
        Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(q))) => Err(ClientFailure::Retry(q.to_string())),
        Err(e) => Err(fail(e)),
    }
}

/// openraft's view of the transport, for one group.
struct Network {
    transport: Arc<Transport>,
    group: Option<GroupId>,
}

#[derive(Clone)]
struct PeerClient {
    transport: Arc<Transport>,
    group: Option<GroupId>,
    target: NodeId,
    name: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        let peer = PeerClient { transport: self.transport.clone(), group: self.group, target, name: node.addr.clone() };
        PeerNetwork { appends: peer.clone(), adapter: Adapter::new(peer) }
    }
}

/// One peer, as openraft's replication sees it: openraft-legacy's adapter (snapshots still
/// go in chunks, `InstallSnapshotRequest`, as under openraft 0.9, so nodes of both builds
/// exchange them), except that appends are pipelined to a peer that serves them in order.
struct PeerNetwork {
    adapter: Adapter<TypeConfig, PeerClient, SnapshotData>,
    appends: PeerClient,
}

/// Appends sent to one peer and not yet answered, at most (per stream: the replication's
/// and the heartbeats'). Well under the transport's `PEER_QUEUE_REQUESTS`.
const PIPELINE_APPENDS_MAX: usize = 32;

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        RaftNetworkV2::append_entries(&mut self.adapter, rpc, option).await
    }

    /// A peer of wire protocol 2 or later gets each append as soon as openraft has it,
    /// without waiting for the answers before: the next batch is on its way while the peer
    /// writes and fsyncs the last, instead of one round trip and fsync after the other.
    /// Answers come back in order (one connection, served in order on the other side).
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: futures_util::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let transport = &self.appends.transport;
        if transport.peer_offer(&self.appends.name).is_none() {
            // No handshake with the peer yet, so its wire protocol is unknown: one append,
            // answered, ends the stream, and openraft's next stream asks again (a stream
            // otherwise lasts as long as the leadership).
            return RaftNetworkV2::stream_append(&mut self.adapter, input.take(1), option);
        }
        if !transport.pipelines_to(&self.appends.name) {
            return RaftNetworkV2::stream_append(&mut self.adapter, input, option);
        }
        let peer = self.appends.clone();
        Box::pin(async move { Ok(pipelined(peer, input, option)) })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        RaftNetworkV2::vote(&mut self.adapter, rpc, option).await
    }

    /// Asked before a candidate raises its term. A peer of a wire protocol before pre-votes
    /// is counted as granting it (openraft's answer for a network without them), so a
    /// cluster in a rolling upgrade still elects; one whose protocol is not known yet (no
    /// handshake) is asked, and if it turns out old, drops the link: no grant this round, and
    /// the handshake of the reconnect tells the next round.
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        use openraft::errors::decompose::DecomposeResult;
        let peer = &mut self.appends;
        if peer.transport.pre_votes_to(&peer.name) == Some(false) {
            return Ok(VoteResponse::new(rpc.vote, None, true));
        }
        peer.pre_vote(rpc, option).await.decompose_infallible()
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        RaftNetworkV2::full_snapshot(&mut self.adapter, vote, snapshot, cancel, option).await
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        RaftNetworkV2::transfer_leader(&mut self.adapter, rpc, option).await
    }

    fn backoff(&self) -> Option<Backoff> {
        RaftNetworkV2::backoff(&self.adapter)
    }
}

type Answer = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, CallError>> + Send>>;

/// The pipelined stream: sends each append as `input` yields it (up to
/// [`PIPELINE_APPENDS_MAX`] unanswered) and yields the answers in order. Ends after the
/// first failed answer (openraft starts a new stream from what the peer acknowledged).
fn pipelined<S>(
    peer: PeerClient,
    input: S,
    option: RPCOption,
) -> BoxStream<'static, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>
where
    S: futures_util::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    struct State<S> {
        peer: PeerClient,
        input: Option<S>,
        /// Each unanswered append's log id range (prev, last) and its answer to come.
        sent: VecDeque<(Option<LogId>, Option<LogId>, Answer)>,
        option: RPCOption,
        ended: bool,
    }
    enum Event {
        Answer(Result<Response, CallError>),
        Input(Option<AppendEntriesRequest<TypeConfig>>),
    }
    let state = State { peer, input: Some(input), sent: VecDeque::new(), option, ended: false };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if st.ended {
                return None;
            }
            let more = st.input.is_some() && st.sent.len() < PIPELINE_APPENDS_MAX;
            if st.sent.is_empty() && !more {
                return None;
            }
            let State { input, sent, .. } = &mut st;
            let event = tokio::select! {
                biased;
                answer = async { sent.front_mut().expect("checked").2.as_mut().await }, if !sent.is_empty() => Event::Answer(answer),
                next = async { input.as_mut().expect("checked").next().await }, if more => Event::Input(next),
            };
            match event {
                Event::Input(None) => st.input = None,
                Event::Input(Some(req)) => {
                    let last = req.entries.last().map(|e| e.log_id).or(req.prev_log_id);
                    let prev = req.prev_log_id;
                    let request = GroupRequest::Append(req).into_request(st.peer.group);
                    match st.peer.transport.send(&st.peer.name, request, st.option.hard_ttl()) {
                        Ok(answer) => st.sent.push_back((prev, last, Box::pin(answer))),
                        Err(e) => {
                            st.ended = true;
                            return Some((Err(call_error::<Infallible>(e)), st));
                        }
                    }
                }
                Event::Answer(answer) => {
                    let (prev, last, _) = st.sent.pop_front().expect("answered the first");
                    let item = match st.peer.failure(answer) {
                        Ok(Response::Append(Ok(r))) => {
                            // A partial success acknowledges less than was sent: what was
                            // sent after it does not follow on, so the stream ends there.
                            let partial = matches!(&r, AppendEntriesResponse::PartialSuccess(m) if *m != last);
                            let r = r.into_stream_result(prev, last);
                            st.ended = partial || r.is_err();
                            Ok(r)
                        }
                        Ok(Response::Append(Err(e))) => {
                            Err::<(), _>(st.peer.remote(e)).decompose_infallible().map(|()| unreachable!())
                        }
                        Ok(_) => Err(mismatch()),
                        Err(e) => Err(e),
                    };
                    st.ended |= item.is_err();
                    return Some((item, st));
                }
            }
        }
    }))
}

impl PeerClient {
    async fn call<E: std::error::Error>(
        &self,
        req: GroupRequest,
        option: &RPCOption,
    ) -> Result<Response, RPCError<TypeConfig, E>> {
        let request = req.into_request(self.group);
        self.failure(self.transport.call(&self.name, request, option.hard_ttl()).await)
    }

    /// The transport's failures (and a peer not running the group) as openraft's errors.
    fn failure<E: std::error::Error>(
        &self,
        answer: Result<Response, CallError>,
    ) -> Result<Response, RPCError<TypeConfig, E>> {
        match answer {
            // The peer does not run the group (yet, or any more): as good as unreachable, so
            // openraft paces its retries.
            Ok(Response::NoGroup) => {
                let e = std::io::Error::other(format!("{} does not run group {:?}", self.name, self.group));
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Ok(r) => Ok(r),
            Err(e) => Err(call_error(e)),
        }
    }

    /// A pre-vote (wire protocol 3), answered as a vote.
    async fn pre_vote(
        &self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig, RaftError<TypeConfig>>> {
        match self.call(GroupRequest::PreVote(rpc), &option).await? {
            Response::Vote(r) => r.map_err(|e| self.remote(e)),
            _ => Err(mismatch()),
        }
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<TypeConfig, E> {
        RPCError::RemoteError(RemoteError::new(self.target, e))
    }
}

fn call_error<E: std::error::Error>(e: CallError) -> RPCError<TypeConfig, E> {
    match e {
        CallError::Unreachable(_) | CallError::Refused(_) => RPCError::Unreachable(Unreachable::new(&e)),
        CallError::Lost(_) => RPCError::Network(NetworkError::new(&e)),
    }
}

fn mismatch<E: std::error::Error>() -> RPCError<TypeConfig, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other("response of the wrong kind")))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig, RaftError<TypeConfig>>> {
        match self.call(GroupRequest::Append(rpc), &option).await? {
            Response::Append(r) => r.map_err(|e| self.remote(e)),
            _ => Err(mismatch()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<TypeConfig>, RPCError<TypeConfig, RaftError<TypeConfig, InstallSnapshotError>>>
    {
        match self.call(GroupRequest::Snapshot(rpc), &option).await? {
            Response::Snapshot(r) => r.map_err(|e| self.remote(e)),
            _ => Err(mismatch()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig, RaftError<TypeConfig>>> {
        match self.call(GroupRequest::Vote(rpc), &option).await? {
            Response::Vote(r) => r.map_err(|e| self.remote(e)),
            _ => Err(mismatch()),
        }
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(GroupRequest::TransferLeader(rpc), &option).await? {
            Response::TransferLeader(Ok(r)) => Ok(r),
            Response::TransferLeader(Err(fatal)) => {
                Err(RPCError::Network(NetworkError::new(&std::io::Error::other(fatal))))
            }
            _ => Err(mismatch()),
        }
    }
}
