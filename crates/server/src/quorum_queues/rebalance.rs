//! `rabbitmq-queues rebalance quorum` (and `POST /api/rebalance/queues`): move quorum
//! queues' leaders so that each running node leads about as many as the others.
//!
//! The plan is RabbitMQ's: with `n` queues and `r` running nodes each node should lead at
//! most `ceil(n / r)`; a node over that hands its queues (the shortest first) one at a time
//! to the member of the queue's group that leads the fewest, each queue tried once. Unlike
//! RabbitMQ, a queue is only handed to a node that stays at or under the bound, so a
//! rebalance never just shuffles leaders between busy nodes. The hand-over itself is the
//! cluster crate's (`Group::transfer_leadership`): the leader holds new writes back until
//! the new one has its whole log, so nothing is lost or applied twice; publishes waiting
//! meanwhile go to the new leader.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

use regex::Regex;
use tracing::{info, warn};

use super::members::MemberError;
use super::{QKey, QuorumQueues};

/// One queue as the rebalance sees it.
#[derive(Debug, Clone)]
pub(crate) struct Led {
    pub key: QKey,
    pub leader: String,
    pub voters: Vec<String>,
    /// Messages in it: the shortest move first (the least to catch up with).
    pub length: u64,
}

/// A hand-over the plan asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Move {
    pub key: QKey,
    pub from: String,
    pub to: String,
}

/// The leaders per running node while the rebalance goes on.
pub(crate) struct Balance {
    /// Per running node, the queues it leads: (length, queue, tried already), untried first
    /// and shortest first.
    by_node: BTreeMap<String, Vec<(u64, QKey, bool)>>,
    voters: HashMap<QKey, Vec<String>>,
    /// Most queues a node should lead.
    max: usize,
}

impl Balance {
    /// The queues led by `running` nodes (the others' are left out: their leader is not
    /// known to be up, and a hand-over needs it).
    pub(crate) fn new(running: &[String], queues: Vec<Led>) -> Balance {
        let mut by_node: BTreeMap<String, Vec<(u64, QKey, bool)>> =
            running.iter().map(|n| (n.clone(), Vec::new())).collect();
        let mut voters = HashMap::new();
        for q in queues {
            if let Some(led) = by_node.get_mut(&q.leader) {
                led.push((q.length, q.key.clone(), false));
                voters.insert(q.key, q.voters);
            }
        }
        let total: usize = by_node.values().map(Vec::len).sum();
        let max = total.div_ceil(running.len().max(1));
        for led in by_node.values_mut() {
            led.sort();
        }
        Balance { by_node, voters, max }
    }

    /// The next hand-over: from the first node over the bound that still leads a queue not
    /// tried, its shortest such queue, to the running voter of that queue leading the
    /// fewest — if that one stays within the bound. The queue counts as tried either way.
    pub(crate) fn next(&mut self) -> Option<Move> {
        loop {
            let max = self.max;
            let (from, at) = self.by_node.iter().find_map(|(node, led)| {
                (led.len() > max).then(|| led.iter().position(|(_, _, tried)| !tried).map(|i| (node.clone(), i)))?
            })?;
            let key = {
                let led = self.by_node.get_mut(&from).expect("a running node");
                led[at].2 = true;
                led[at].1.clone()
            };
            let to = self
                .voters
                .get(&key)
                .into_iter()
                .flatten()
                .filter(|v| **v != from)
                .filter_map(|v| self.by_node.get(v).map(|led| (led.len(), v)))
                .min()
                .filter(|(leads, _)| *leads < max)
                .map(|(_, v)| v.clone());
            if let Some(to) = to {
                return Some(Move { key, from, to });
            }
        }
    }

    /// `key` is led by `now` after a hand-over from `from` (the node asked for, or another
    /// that won the election instead).
    pub(crate) fn moved(&mut self, key: &QKey, from: &str, now: &str) {
        if from == now {
            return;
        }
        let Some(led) = self.by_node.get_mut(from) else { return };
        let Some(i) = led.iter().position(|(_, k, _)| k == key) else { return };
        let (length, key, _) = led.remove(i);
        if let Some(led) = self.by_node.get_mut(now) {
            led.push((length, key, true));
        }
    }

    /// Leaders per running node, by name.
    pub(crate) fn counts(&self) -> Vec<(String, usize)> {
        self.by_node.iter().map(|(n, led)| (n.clone(), led.len())).collect()
    }
}

/// Clears the "rebalance in progress" mark however the rebalance ends.
struct Running<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl QuorumQueues {
    /// Rebalance the leaders of the quorum queues (with a group of their own) matching the
    /// patterns over the running nodes; returns the leaders per running node afterwards.
    /// One at a time in the cluster as far as this node can tell (a second call here while
    /// one runs is refused, as RabbitMQ refuses it).
    pub(crate) async fn rebalance(&self, vhost: &Regex, queue: &Regex) -> Result<Vec<(String, usize)>, MemberError> {
        if self.rebalancing.swap(true, Ordering::AcqRel) {
            return Err(MemberError::Unavailable("a queue rebalance is already in progress on this node".into()));
        }
        let _running = Running(&self.rebalancing);
        // Asked now (a ping each): the list refreshed every second is empty just after a start.
        let running = self.running_members_now().await;
        let mut groups = HashMap::new();
        let mut queues = Vec::new();
        for key in self.grouped_queues(vhost, queue) {
            let Ok(group) = self.member_group(&key).await else { continue };
            let Some(leader) = group.leader() else { continue };
            let length = self.machines.lock().get(&key).map_or(0, |m| {
                let s = m.qq.stats();
                s.ready + s.checked_out
            });
            queues.push(Led { key: key.clone(), leader, voters: group.voters(), length });
            groups.insert(key, group);
        }
        info!(queues = queues.len(), nodes = running.len(), "quorum queues: rebalancing their leaders");
        let mut plan = Balance::new(&running, queues);
        while let Some(m) = plan.next() {
            let Some(group) = groups.get(&m.key) else { continue };
            match group.transfer_leadership(&m.to).await {
                Ok(now) => {
                    info!(queue = %m.key.1, vhost = %m.key.0, from = %m.from, to = %now, "quorum queue: leader moved");
                    plan.moved(&m.key, &m.from, &now);
                }
                Err(e) => {
                    warn!(queue = %m.key.1, vhost = %m.key.0, from = %m.from, to = %m.to, "quorum queue: leader not moved: {e}");
                    // It may have moved anyway (an election the hand-over started).
                    if let Some(now) = group.leader() {
                        plan.moved(&m.key, &m.from, &now);
                    }
                }
            }
        }
        let counts = plan.counts();
        info!(?counts, "quorum queues: rebalance done");
        Ok(counts)
    }
}

impl QuorumQueues {
    /// Before this node (`me`) stops: hand every queue it leads to another online voter of
    /// the queue (the one leading fewest), so that the queues' other members need not wait
    /// for an election timeout (2-4 s by default) before they take publishes again. Up to
    /// [`STOP_HAND_OVERS_AT_ONCE`] at a time (a leader elected less than a lease ago waits
    /// for it to run out: those waits overlap), until `deadline`. Returns how many were
    /// handed over.
    /// `running`: the members that answer now (the caller asked them once for every group).
    pub(crate) async fn hand_over_all(&self, me: &str, running: &[String], deadline: tokio::time::Instant) -> usize {
        self.hand_over(me, running, deadline, HandOver::Stopping).await
    }

    /// The queues this node leads without a broker queue of theirs here (a local classic
    /// queue of the same name shadows them, `attach_detached`): a leader's work that needs
    /// the broker queue (routing dead letters) cannot be done here, so each goes to another
    /// online voter, as before a stop. Run by the janitor's upkeep; a queue with no other
    /// voter online stays (its dead letters wait for a leader that can route them).
    pub(crate) async fn hand_over_detached(&self) -> usize {
        let detached_leads = self
            .machines
            .lock()
            .values()
            .any(|m| m.queue.strong_count() == 0 && m.group.as_ref().is_some_and(|g| g.is_leader()));
        let Some(state) = self.state.upgrade() else { return 0 };
        let Some(running) = state.cluster.get() else { return 0 };
        if !detached_leads {
            return 0;
        }
        let me = running.node.name().to_owned();
        let online = self.online.lock().clone();
        let deadline = tokio::time::Instant::now() + DETACHED_HAND_OVER_MAX;
        self.hand_over(&me, &online, deadline, HandOver::Detached).await
    }

    async fn hand_over(&self, me: &str, running: &[String], deadline: tokio::time::Instant, why: HandOver) -> usize {
        let online: Vec<&String> = running.iter().filter(|m| *m != me).collect();
        let groups: Vec<(QKey, cluster::Group)> = self
            .machines
            .lock()
            .iter()
            .filter(|(_, m)| why == HandOver::Stopping || m.queue.strong_count() == 0)
            .filter_map(|(k, m)| m.group.clone().map(|g| (k.clone(), g)))
            .collect();
        let mut leads: HashMap<String, usize> = HashMap::new();
        for (_, g) in &groups {
            if let Some(l) = g.leader() {
                *leads.entry(l).or_default() += 1;
            }
        }
        let at_once = std::sync::Arc::new(tokio::sync::Semaphore::new(STOP_HAND_OVERS_AT_ONCE));
        let mut tasks = tokio::task::JoinSet::new();
        for (key, g) in groups.into_iter().filter(|(_, g)| g.is_leader()) {
            let Some(to) = g
                .voters()
                .into_iter()
                .filter(|v| online.contains(&v))
                .min_by_key(|v| (leads.get(v).copied().unwrap_or(0), v.clone()))
            else {
                continue;
            };
            *leads.entry(to.clone()).or_default() += 1;
            let at_once = at_once.clone();
            tasks.spawn(async move {
                let _turn = at_once.acquire_owned().await;
                let r = tokio::time::timeout_at(deadline, g.transfer_leadership(&to)).await;
                (key, to, r)
            });
        }
        let mut moved = 0;
        while let Some(done) = tasks.join_next().await {
            let Ok((key, to, r)) = done else { continue };
            let (vhost, queue, when) = (&key.0, &key.1, why.when());
            match r {
                // Handing over from a detached replica is worth an operator's look (a classic
                // queue shadows a quorum queue here); before a stop it is routine.
                Ok(Ok(now)) if why == HandOver::Detached => {
                    warn!(queue = %queue, vhost = %vhost, to = %now, "quorum queue: leader handed over {when}");
                    moved += 1;
                }
                Ok(Ok(now)) => {
                    info!(queue = %queue, vhost = %vhost, to = %now, "quorum queue: leader handed over {when}");
                    moved += 1;
                }
                Ok(Err(e)) => {
                    warn!(queue = %queue, vhost = %vhost, to = %to, "quorum queue: leader not handed over {when}: {e}")
                }
                Err(_) => {
                    warn!(queue = %queue, vhost = %vhost, to = %to, "quorum queue: leader not handed over {when} in time")
                }
            }
        }
        moved
    }
}

impl QuorumQueues {
    /// The cluster members that answer a ping now.
    async fn running_members_now(&self) -> Vec<String> {
        let Some(state) = self.state.upgrade() else { return Vec::new() };
        let Some(running) = state.cluster.get() else { return Vec::new() };
        let mut members = running.node.running_members().await;
        members.sort();
        members
    }
}

/// Hand-overs a stopping node runs at once.
const STOP_HAND_OVERS_AT_ONCE: usize = 32;

/// Longest the janitor's upkeep spends handing detached leaderships over in one round (a
/// transfer waits at most a leader lease, 2 s by default); what is left is tried next round.
const DETACHED_HAND_OVER_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Why leaderships are handed over: which queues, and what the log says.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HandOver {
    /// Every queue led here: the node stops.
    Stopping,
    /// The queues led here without their broker queue (`hand_over_detached`).
    Detached,
}

impl HandOver {
    fn when(self) -> &'static str {
        match self {
            HandOver::Stopping => "before stopping",
            HandOver::Detached => "(no broker queue of it on this node: a local classic queue shadows it)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn led(name: &str, leader: &str, voters: &[&str], length: u64) -> Led {
        Led {
            key: ("/".to_owned(), name.to_owned()),
            leader: leader.to_owned(),
            voters: voters.iter().map(|v| (*v).to_owned()).collect(),
            length,
        }
    }

    fn nodes(n: &[&str]) -> Vec<String> {
        n.iter().map(|x| (*x).to_owned()).collect()
    }

    /// Carry the plan out with every hand-over going where it was asked.
    fn run(plan: &mut Balance) -> Vec<Move> {
        let mut moves = Vec::new();
        while let Some(m) = plan.next() {
            plan.moved(&m.key, &m.from, &m.to);
            moves.push(m);
        }
        moves
    }

    #[test]
    fn six_queues_led_by_one_of_three_nodes_end_two_each_shortest_moved_first() {
        let all = ["a", "b", "c"];
        let queues = (0..6).map(|i| led(&format!("q{i}"), "a", &all, 10 - i)).collect();
        let mut plan = Balance::new(&nodes(&all), queues);
        let moves = run(&mut plan);
        assert_eq!(plan.counts(), vec![("a".into(), 2), ("b".into(), 2), ("c".into(), 2)]);
        assert_eq!(moves.len(), 4);
        // q5 is the shortest (5 messages): moved first, to the least leading (b, by name).
        assert_eq!(moves[0], Move { key: ("/".into(), "q5".into()), from: "a".into(), to: "b".into() });
        assert_eq!(moves[1].to, "c");
    }

    #[test]
    fn a_queue_moves_only_to_its_own_running_voters_and_never_over_the_bound() {
        // q1..q3 can only go to b (their voters a, b); c is running but no voter of them.
        let queues = vec![
            led("q1", "a", &["a", "b"], 0),
            led("q2", "a", &["a", "b"], 0),
            led("q3", "a", &["a", "b"], 0),
            led("q4", "b", &["b", "c"], 0),
        ];
        let mut plan = Balance::new(&nodes(&["a", "b", "c"]), queues);
        let moves = run(&mut plan);
        // Bound: ceil(4/3) = 2. b leads one; it can take one more; then it is full.
        assert_eq!(moves.len(), 1, "{moves:?}");
        assert_eq!(moves[0].to, "b");
        assert_eq!(plan.counts(), vec![("a".into(), 2), ("b".into(), 2), ("c".into(), 0)]);
    }

    #[test]
    fn balanced_or_unreachable_leaders_mean_no_moves_and_a_failed_move_is_not_retried() {
        let all = ["a", "b", "c"];
        let balanced = vec![led("q1", "a", &all, 0), led("q2", "b", &all, 0), led("q3", "c", &all, 0)];
        assert!(run(&mut Balance::new(&nodes(&all), balanced)).is_empty());
        // A leader on a node not running: left out.
        let mut plan = Balance::new(&nodes(&["a", "b"]), vec![led("q1", "c", &all, 0), led("q2", "c", &all, 0)]);
        assert_eq!(plan.next(), None);
        assert_eq!(plan.counts(), vec![("a".into(), 0), ("b".into(), 0)]);
        // A hand-over that fails (the queue stays on a): that queue is not asked for again,
        // the next one is.
        let mut plan = Balance::new(&nodes(&all), vec![led("q1", "a", &all, 0), led("q2", "a", &all, 1)]);
        let first = plan.next().unwrap();
        assert_eq!(first.key.1, "q1");
        assert_eq!(plan.next().map(|m| m.key.1), Some("q2".to_owned()));
        assert_eq!(plan.next(), None, "every queue of a was tried");
        assert_eq!(plan.counts(), vec![("a".into(), 2), ("b".into(), 0), ("c".into(), 0)]);
    }

    #[test]
    fn a_hand_over_won_by_another_member_counts_for_that_member() {
        let all = ["a", "b", "c"];
        let mut plan = Balance::new(&nodes(&all), (0..3).map(|i| led(&format!("q{i}"), "a", &all, i)).collect());
        let m = plan.next().unwrap();
        assert_eq!(m.to, "b");
        plan.moved(&m.key, &m.from, "c");
        assert_eq!(plan.counts(), vec![("a".into(), 2), ("b".into(), 0), ("c".into(), 1)]);
        let m = plan.next().unwrap();
        assert_eq!((m.from.as_str(), m.to.as_str()), ("a", "b"));
    }
}
