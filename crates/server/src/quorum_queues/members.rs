//! Who votes in a quorum queue's Raft group: `add_member`, `delete_member`, `grow` and
//! `shrink` (rabbitmq-queues' verbs and the management API's `replicas` endpoints), and
//! the janitor's upkeep of each group's membership — every cluster member at least a
//! learner, a node that left the cluster out of every group — and of the data directory:
//! group files whose queue the metadata no longer has are deleted.
//!
//! A voter taken away stays a learner (every member of the cluster follows every queue,
//! so that consumers are served by their own node); only a node that left the cluster is
//! removed entirely. Changes go to the queue's own group (forwarded to its leader); the
//! declaration's `voters` stay as declared — they only say who initialises the group.

use regex::Regex;
use tracing::{info, warn};

use super::{QKey, QuorumQueues};

/// Why a membership change was not made.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum MemberError {
    /// No such quorum queue: 404.
    NotFound(String),
    /// The change makes no sense (not a cluster member, already a voter, the last voter,
    /// a queue without a group of its own): 400.
    Invalid(String),
    /// The group did not take the change (no leader or quorum within the write timeout): 503.
    Unavailable(String),
}

/// What `grow` or `shrink` did to one queue: its voters after, or why it was left alone.
#[derive(Debug, Clone)]
pub(crate) struct MemberChange {
    pub vhost: String,
    pub name: String,
    pub voters: usize,
    pub error: Option<String>,
}

/// Which queues `grow` adds a node to: all, or only those with an even number of voters
/// (to make it odd again), as `rabbitmq-queues grow <node> all|even`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GrowStrategy {
    All,
    Even,
}

/// How often a membership change looks again for a group still being opened.
const GROUP_OPEN_POLL: std::time::Duration = std::time::Duration::from_millis(50);

fn describe(key: &QKey) -> String {
    format!("quorum queue '{}' in vhost '{}'", key.1, key.0)
}

impl QuorumQueues {
    /// The open group of quorum queue `key`, for a membership change: waits for a group
    /// still being opened (a node just started), at most the write timeout.
    pub(super) async fn member_group(&self, key: &QKey) -> Result<cluster::Group, MemberError> {
        let deadline = tokio::time::Instant::now() + self.write_timeout();
        loop {
            {
                let machines = self.machines.lock();
                let Some(m) = machines.get(key) else {
                    return Err(MemberError::NotFound(format!("no {}", describe(key))));
                };
                if m.declaration.group.is_none() {
                    return Err(MemberError::Invalid(format!(
                        "{} was declared before the quorum_queue_groups feature flag: it is replicated by \
                         the metadata group, whose members are the cluster's (join_cluster / forget_cluster_node)",
                        describe(key)
                    )));
                }
                if let Some(g) = &m.group {
                    return Ok(g.clone());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(MemberError::Unavailable(format!(
                    "the Raft group of {} is not open on this node",
                    describe(key)
                )));
            }
            tokio::time::sleep(GROUP_OPEN_POLL).await;
        }
    }

    /// The cluster's members as this node knows them.
    fn cluster_members(&self) -> Vec<String> {
        self.state.upgrade().and_then(|s| s.cluster.get().map(|c| c.node.members())).unwrap_or_default()
    }

    /// Make `node` a voter of queue `vhost`/`name` (it must be a running cluster member).
    pub(crate) async fn add_member(&self, vhost: &str, name: &str, node: &str) -> Result<usize, MemberError> {
        let key: QKey = (vhost.to_owned(), name.to_owned());
        let group = self.member_group(&key).await?;
        if !self.cluster_members().iter().any(|m| m == node) {
            return Err(MemberError::Invalid(format!("{node} is not a member of the cluster")));
        }
        let voters = group.voters();
        if voters.iter().any(|v| v == node) {
            return Err(MemberError::Invalid(format!("{node} is already a member of {}", describe(&key))));
        }
        group.add_member(node).await.map_err(|e| unavailable(&key, node, e))?;
        info!(queue = %name, vhost = %vhost, node = %node, "quorum queue: a member added");
        // Committed by the group's leader; this node's own view may not have applied it yet.
        Ok(voters.len() + 1)
    }

    /// Take `node`'s vote in queue `vhost`/`name` away (it keeps a learner's copy while it
    /// is in the cluster). The last voter is never removed.
    pub(crate) async fn delete_member(&self, vhost: &str, name: &str, node: &str) -> Result<usize, MemberError> {
        let key: QKey = (vhost.to_owned(), name.to_owned());
        let group = self.member_group(&key).await?;
        let voters = group.voters();
        if !voters.iter().any(|v| v == node) {
            return Err(MemberError::Invalid(format!("{node} is not a member of {}", describe(&key))));
        }
        if voters.len() == 1 {
            return Err(MemberError::Invalid(format!(
                "{node} is the last member of {}: delete the queue instead",
                describe(&key)
            )));
        }
        group.demote_member(node).await.map_err(|e| unavailable(&key, node, e))?;
        info!(queue = %name, vhost = %vhost, node = %node, "quorum queue: a member removed (it stays a learner)");
        Ok(voters.len() - 1)
    }

    /// Every queue's group open on this node, sorted by vhost and name: its id and Raft
    /// figures (management's cluster view and Prometheus).
    pub(crate) fn group_statuses(&self) -> Vec<(QKey, u64, cluster::RaftStatus)> {
        let mut open: Vec<(QKey, u64, cluster::Group)> = self
            .machines
            .lock()
            .iter()
            .filter_map(|(k, m)| Some((k.clone(), m.declaration.group?, m.group.clone()?)))
            .collect();
        open.sort_by(|a, b| a.0.cmp(&b.0));
        // Each group's status outside the machines' lock (it reads the group's metrics).
        open.into_iter().map(|(k, id, g)| (k, id, g.status())).collect()
    }

    /// `balanced` leader placement: of the `running` members, the one leading the fewest
    /// quorum queues as this node knows them (a group's leader, or for a group not open
    /// here its first voter); `me` on a tie, else one of the tied at random.
    pub(crate) fn least_leading(&self, me: &str, running: &[String]) -> String {
        let mut count: std::collections::HashMap<&str, usize> = running.iter().map(|m| (m.as_str(), 0)).collect();
        let leaders: Vec<Option<String>> = self
            .machines
            .lock()
            .values()
            .filter(|m| m.declaration.group.is_some())
            .map(|m| m.group.as_ref().and_then(|g| g.leader()).or_else(|| m.declaration.voters.first().cloned()))
            .collect();
        for l in leaders.iter().flatten() {
            if let Some(c) = count.get_mut(l.as_str()) {
                *c += 1;
            }
        }
        let Some(min) = count.values().copied().min() else { return me.to_owned() };
        if count.get(me) == Some(&min) {
            return me.to_owned();
        }
        let mut tied: Vec<&str> = count.iter().filter(|(_, c)| **c == min).map(|(m, _)| *m).collect();
        tied.sort_unstable();
        tied[fastrand::usize(..tied.len())].to_owned()
    }

    /// Queues with a group of their own matching the patterns, sorted.
    pub(super) fn grouped_queues(&self, vhost: &Regex, queue: &Regex) -> Vec<QKey> {
        let mut keys: Vec<QKey> = self
            .machines
            .lock()
            .iter()
            .filter(|(k, m)| m.declaration.group.is_some() && vhost.is_match(&k.0) && queue.is_match(&k.1))
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys
    }

    /// Make `node` a voter of every queue matching the patterns that it does not vote in
    /// yet (`Even`: only those with an even number of voters). One queue's failure does
    /// not stop the others: each is reported.
    pub(crate) async fn grow(
        &self,
        node: &str,
        strategy: GrowStrategy,
        vhost: &Regex,
        queue: &Regex,
    ) -> Result<Vec<MemberChange>, MemberError> {
        if !self.cluster_members().iter().any(|m| m == node) {
            return Err(MemberError::Invalid(format!("{node} is not a member of the cluster")));
        }
        let mut out = Vec::new();
        for key in self.grouped_queues(vhost, queue) {
            let voters = match self.member_group(&key).await {
                Ok(g) => g.voters(),
                Err(e) => {
                    out.push(change(&key, 0, Some(reason(e))));
                    continue;
                }
            };
            if voters.iter().any(|v| v == node) || (strategy == GrowStrategy::Even && voters.len() % 2 == 1) {
                continue;
            }
            out.push(match self.add_member(&key.0, &key.1, node).await {
                Ok(n) => change(&key, n, None),
                Err(e) => change(&key, voters.len(), Some(reason(e))),
            });
        }
        Ok(out)
    }

    /// Take `node`'s vote away in every queue it votes in, except where it is the last voter
    /// (reported as an error, as RabbitMQ does).
    pub(crate) async fn shrink(&self, node: &str) -> Vec<MemberChange> {
        let all = Regex::new("").expect("the empty pattern");
        let mut out = Vec::new();
        for key in self.grouped_queues(&all, &all) {
            let group = match self.member_group(&key).await {
                Ok(g) => g,
                Err(e) => {
                    out.push(change(&key, 0, Some(reason(e))));
                    continue;
                }
            };
            let voters = group.voters();
            if !voters.iter().any(|v| v == node) {
                continue;
            }
            out.push(match self.delete_member(&key.0, &key.1, node).await {
                Ok(n) => change(&key, n, None),
                Err(e) => change(&key, voters.len(), Some(reason(e))),
            });
        }
        out
    }

    /// On the leader of each queue with a group of its own: every cluster member that is
    /// not in the group joins it as a learner. Learners get the queue's log and apply it —
    /// so consumers on any node are served by their own node, as with the metadata group's
    /// queues — but neither vote nor count toward a confirm's majority: that is the
    /// voters' (`x-quorum-initial-group-size`, `add_member`, `grow`). A node no longer in
    /// the cluster (`forget_cluster_node`) is removed from the group, voter or learner.
    pub(super) async fn tend_groups(&self) {
        let Some(state) = self.state.upgrade() else { return };
        let Some(running) = state.cluster.get() else { return };
        let members = running.node.members();
        let led: Vec<(String, cluster::Group)> = self
            .machines
            .lock()
            .iter()
            .filter_map(|(k, m)| m.group.clone().filter(|g| g.is_leader()).map(|g| (k.1.clone(), g)))
            .collect();
        let mut strangers = Vec::new();
        for (name, g) in &led {
            let has = g.members();
            for m in members.iter().filter(|m| !has.contains(m)) {
                match g.add_learner(m).await {
                    Ok(()) => {
                        info!(queue = %name, node = %m, "quorum queue: a member of the cluster joins its group as a learner")
                    }
                    Err(e) => tracing::debug!(queue = %name, node = %m, "quorum queue: adding a learner: {e}"),
                }
            }
            strangers.extend(has.into_iter().filter(|m| !members.contains(m)).map(|m| (name.clone(), g.clone(), m)));
        }
        if strangers.is_empty() {
            return;
        }
        // This node's view of the cluster may lag (a join it has not applied yet): read
        // the metadata group through its leader before removing anyone.
        if running.node.read().await.is_err() {
            return;
        }
        let members = running.node.members();
        for (name, g, m) in strangers.into_iter().filter(|(_, _, m)| !members.contains(m)) {
            // A group is never left without a voter (one that cannot change membership
            // without a majority of its old voters waits here until they are back).
            if g.voters() == [m.clone()] {
                continue;
            }
            match g.remove_node(&m).await {
                Ok(_) => info!(queue = %name, node = %m, "quorum queue: a node that left the cluster leaves its group"),
                Err(e) => warn!(queue = %name, node = %m, "quorum queue: removing a node that left the cluster: {e}"),
            }
        }
    }
}

impl QuorumQueues {
    /// The node-wide bound on all quorum queues' group logs (`warren.quorum_queue_logs_max_bytes`):
    /// each log stays in memory until a snapshot covers it, and each is bounded on its own
    /// (`warren.cluster_snapshot_log_bytes`), but a thousand queues under that bound could
    /// still hold a thousand times it. Past the bound, the largest logs are snapshotted
    /// (and purged) until what is left is at most half of it, so that this does not run
    /// again at the next tick.
    pub(super) async fn bound_group_logs(&self) {
        let Some(state) = self.state.upgrade() else { return };
        let bound = state.config.quorum_queue_logs_max_bytes;
        let mut logs: Vec<(u64, String, cluster::Group)> = self
            .machines
            .lock()
            .iter()
            .filter_map(|(k, m)| m.group.as_ref().map(|g| (g.log_bytes(), k.1.clone(), g.clone())))
            .collect();
        let total: u64 = logs.iter().map(|(b, _, _)| b).sum();
        let over = total > bound;
        if self.logs_over.swap(over, std::sync::atomic::Ordering::Relaxed) != over {
            if over {
                warn!(
                    total,
                    bound,
                    "quorum queues: their logs hold more than warren.quorum_queue_logs_max_bytes; snapshotting the largest"
                );
            } else {
                info!(total, bound, "quorum queues: their logs are back under warren.quorum_queue_logs_max_bytes");
            }
        }
        if !over {
            return;
        }
        logs.sort_by_key(|l| std::cmp::Reverse(l.0));
        let mut left = total;
        for (bytes, name, g) in logs {
            if left <= bound / 2 {
                break;
            }
            tracing::debug!(queue = %name, bytes, "quorum queue: snapshot for the node-wide log bound");
            g.compact().await;
            left -= bytes;
        }
    }

    /// Delete the files of groups whose queue the cluster deleted while this node could
    /// not (it was down, or stopped between applying the delete and removing the files,
    /// or caught up by a snapshot that no longer has the queue). Only after reading the
    /// metadata through its leader, and only groups older than what that read applied (a
    /// group id is its declaration's index in the metadata log, so a queue declared since
    /// is never taken for deleted).
    pub(super) async fn sweep_orphan_groups(&self) {
        let Some(state) = self.state.upgrade() else { return };
        let Some(running) = state.cluster.get() else { return };
        let node = &running.node;
        let known = || -> std::collections::HashSet<u64> {
            self.machines.lock().values().filter_map(|m| m.declaration.group).collect()
        };
        let stored = match node.stored_group_ids() {
            Ok(ids) => ids,
            Err(e) => return warn!("quorum queues: listing the group directories: {e}"),
        };
        let before = known();
        let candidates: Vec<u64> =
            stored.into_iter().filter(|id| !before.contains(id) && node.group(*id).is_none()).collect();
        if candidates.is_empty() {
            return;
        }
        let Ok(applied) = node.read().await else { return };
        let applied = applied.last_applied.map_or(0, |l| l.index);
        let after = known();
        for id in candidates.into_iter().filter(|id| *id <= applied && !after.contains(id) && node.group(*id).is_none())
        {
            match node.delete_group(id).await {
                Ok(()) => info!(group = id, "quorum queues: deleted the files of a group whose queue was deleted"),
                Err(e) => warn!(group = id, "quorum queues: deleting the files of a deleted queue's group: {e}"),
            }
        }
    }
}

fn change(key: &QKey, voters: usize, error: Option<String>) -> MemberChange {
    MemberChange { vhost: key.0.clone(), name: key.1.clone(), voters, error }
}

fn reason(e: MemberError) -> String {
    match e {
        MemberError::NotFound(s) | MemberError::Invalid(s) | MemberError::Unavailable(s) => s,
    }
}

fn unavailable(key: &QKey, node: &str, e: cluster::Error) -> MemberError {
    warn!(queue = %key.1, vhost = %key.0, node = %node, "quorum queue: a membership change failed: {e}");
    MemberError::Unavailable(format!("changing the members of {}: {e}", describe(key)))
}
