//! Raft groups besides the metadata group (a quorum queue's own), on in-process nodes (see
//! `common`): each group runs on the members chosen for it only, replicates apart from the
//! others over the node's one transport, survives its leader's node killed, reopens from
//! disk, grows and shrinks, and is deleted with its files.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cluster::{Group, GroupId};
use common::*;
use openraft::async_runtime::WatchReceiver;

/// Open group `id` on `node` with a fresh recorder; `initial`: its initial members.
fn open(node: &TestNode, id: GroupId, initial: Option<&[String]>) -> (Group, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let g = node.on(node.node().open_group(id, rec.clone(), initial)).expect("open the group");
    (g, rec)
}

/// Wait until the running `members` (indexes into `nodes`) agree on one leader of group
/// `id` that leads it; return its index.
fn wait_group_leader(nodes: &[TestNode], members: &[usize], id: GroupId) -> usize {
    let mut found = 0;
    wait_until(&format!("one agreed leader of group {id}"), Duration::from_secs(15), || {
        let running: Vec<usize> = members.iter().copied().filter(|&i| nodes[i].node.is_some()).collect();
        let leaders: Vec<Option<String>> =
            running.iter().map(|&i| nodes[i].node().group(id).and_then(|g| g.leader())).collect();
        let Some(Some(l)) = leaders.first().cloned() else { return false };
        if !leaders.iter().all(|x| x.as_deref() == Some(l.as_str())) {
            return false;
        }
        match running.iter().copied().find(|&i| nodes[i].name == l) {
            Some(i) if nodes[i].node().group(id).is_some_and(|g| g.is_leader()) => {
                found = i;
                true
            }
            _ => false,
        }
    });
    found
}

/// Propose `n` commands `{tag}-{i}` to `group` through `node` (forwarded to the leader
/// when `node` is a follower).
fn propose(node: &TestNode, group: &Group, tag: &str, n: usize) {
    for i in 0..n {
        node.on(group.propose(cmd(tag, i))).unwrap_or_else(|e| panic!("{tag}-{i} through {}: {e}", node.name));
    }
}

/// Wait until every recorder holds `expect` commands, then check they are the same.
fn converged(recs: &[(&str, &Arc<Recorder>)], expect: usize) -> Vec<(u64, Vec<u8>)> {
    wait_until(&format!("{expect} commands applied by every member"), Duration::from_secs(15), || {
        recs.iter().all(|(_, r)| r.commands.lock().unwrap().len() >= expect)
    });
    let first = recs[0].1.commands.lock().unwrap().clone();
    assert_eq!(first.len(), expect, "{} applied more than was proposed", recs[0].0);
    for (name, r) in &recs[1..] {
        assert_eq!(*r.commands.lock().unwrap(), first, "{name} diverges from {}", recs[0].0);
    }
    first
}

fn bodies(commands: &[(u64, Vec<u8>)]) -> Vec<String> {
    commands.iter().map(|(_, c)| String::from_utf8(c.clone()).unwrap()).collect()
}

/// `n` nodes in the metadata group, with group heartbeats every 100 ms (group elections
/// time out after 200-400 ms, a leader lease is 400 ms).
fn fast_groups(root: &std::path::Path, n: usize) -> Vec<TestNode> {
    let ls = listeners(n);
    let names: Vec<String> = ls.iter().map(|(n, _)| n.clone()).collect();
    ls.into_iter()
        .map(|(name, l)| {
            TestNode::start_with_config(&name, &root.join(&name), l, &names, |c| c.group_heartbeat_ms = 100)
        })
        .collect()
}

/// Four nodes in the metadata group.
fn four(root: &std::path::Path) -> (Vec<TestNode>, Vec<String>) {
    let ls = listeners(4);
    let names: Vec<String> = ls.iter().map(|(n, _)| n.clone()).collect();
    let nodes = ls.into_iter().map(|(name, l)| TestNode::start(&name, &root.join(&name), l, &names, 10_000)).collect();
    (nodes, names)
}

#[test]
fn two_groups_on_overlapping_members_replicate_apart_and_only_on_their_members() {
    let root = tempfile::tempdir().unwrap();
    let (nodes, names) = four(root.path());
    wait_leader(&nodes, Duration::from_secs(10));
    let (a, b): (GroupId, GroupId) = (7, 9);
    let a_members = [0, 1, 2];
    let b_members = [1, 2, 3];
    let a_names: Vec<String> = a_members.iter().map(|&i| names[i].clone()).collect();
    let b_names: Vec<String> = b_members.iter().map(|&i| names[i].clone()).collect();
    // Opened one member after another: the first ones campaign while the others do not run
    // the group yet (their answer is "no such group", taken as unreachable).
    let a_open: Vec<(Group, Arc<Recorder>)> = a_members.iter().map(|&i| open(&nodes[i], a, Some(&a_names))).collect();
    let b_open: Vec<(Group, Arc<Recorder>)> = b_members.iter().map(|&i| open(&nodes[i], b, Some(&b_names))).collect();
    let a_leader = wait_group_leader(&nodes, &a_members, a);
    let b_leader = wait_group_leader(&nodes, &b_members, b);
    eprintln!("group {a} led by {}, group {b} by {}", nodes[a_leader].name, nodes[b_leader].name);

    // Through a follower of each where there is one: forwarded to the group's leader.
    let via_a = a_members.iter().position(|&i| i != a_leader).unwrap();
    let via_b = b_members.iter().position(|&i| i != b_leader).unwrap();
    propose(&nodes[a_members[via_a]], &a_open[via_a].0, "a", 60);
    propose(&nodes[b_members[via_b]], &b_open[via_b].0, "b", 40);

    let a_recs: Vec<(&str, &Arc<Recorder>)> =
        a_members.iter().zip(&a_open).map(|(&i, (_, r))| (nodes[i].name.as_str(), r)).collect();
    let b_recs: Vec<(&str, &Arc<Recorder>)> =
        b_members.iter().zip(&b_open).map(|(&i, (_, r))| (nodes[i].name.as_str(), r)).collect();
    let got_a = converged(&a_recs, 60);
    let got_b = converged(&b_recs, 40);
    assert_eq!(bodies(&got_a), (0..60).map(|i| format!("a-{i}")).collect::<Vec<_>>());
    assert_eq!(bodies(&got_b), (0..40).map(|i| format!("b-{i}")).collect::<Vec<_>>());

    // Only the members run a group, keep its files and know its membership.
    assert!(nodes[3].node().group(a).is_none() && nodes[0].node().group(b).is_none());
    assert_eq!(nodes[0].node().group_ids(), vec![a]);
    assert_eq!(nodes[1].node().group_ids(), vec![a, b]);
    assert_eq!(nodes[3].node().stored_group_ids().unwrap(), vec![b]);
    assert_eq!(nodes[2].node().stored_group_ids().unwrap(), vec![a, b]);
    let mut voters = a_open[0].0.voters();
    voters.sort();
    let mut want = a_names.clone();
    want.sort();
    assert_eq!(voters, want);
    // The metadata group saw none of it.
    for n in &nodes {
        assert!(n.commands().is_empty(), "{} applied group commands as metadata", n.name);
    }
    // A group's status is its own: its log holds its entries (membership, blank, commands).
    let s = a_open[0].0.status();
    assert!(s.last_log_index >= 60 && s.members.len() == 3, "{s:?}");

    // Node 3 becomes a learner of group a: it gets every entry, votes in nothing.
    let (learner, learner_rec) = open(&nodes[3], a, None);
    let a_lead = &a_open[a_members.iter().position(|&i| i == a_leader).unwrap()].0;
    let follower = a_members[via_a];
    let refused = nodes[follower].on(a_open[via_a].0.add_learner(&names[3]));
    assert!(matches!(refused, Err(cluster::Error::NotLeader { .. })), "a follower adds no learner: {refused:?}");
    nodes[a_leader].on(a_lead.add_learner(&names[3])).expect("the leader adds a learner");
    propose(&nodes[3], &learner, "a-late", 5);
    let mut recs = a_recs.clone();
    recs.push((nodes[3].name.as_str(), &learner_rec));
    converged(&recs, 65);
    assert_eq!(learner.members().len(), 4);
    assert_eq!(learner.voters().len(), 3, "a learner is no voter");
}

#[test]
fn a_group_outlives_its_leaders_node_and_the_restarted_member_reopens_it_from_disk() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 10_000);
    wait_leader(&nodes, Duration::from_secs(10));
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let id: GroupId = 0x5eed;
    let mut open_groups: Vec<Option<(Group, Arc<Recorder>)>> =
        nodes.iter().map(|n| Some(open(n, id, Some(&names)))).collect();
    let leader = wait_group_leader(&nodes, &[0, 1, 2], id);
    let g = open_groups[leader].as_ref().unwrap().0.clone();
    propose(&nodes[leader], &g, "before", 30);

    // kill -9 the group leader's node; the others elect a new group leader and go on.
    nodes[leader].kill();
    open_groups[leader] = None;
    let rest: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = wait_group_leader(&nodes, &rest, id);
    assert_ne!(new_leader, leader);
    let other = rest.iter().copied().find(|&i| i != new_leader).unwrap();
    propose(&nodes[other], &open_groups[other].as_ref().unwrap().0, "after", 30);

    // The restarted node finds the group in its data directory and reopens it (no initial
    // list: it has state); it catches up with what was committed while it was down.
    nodes[leader] = TestNode::restart(&names[leader], &root.path().join(&names[leader]), &names, 10_000);
    assert_eq!(nodes[leader].node().stored_group_ids().unwrap(), vec![id]);
    open_groups[leader] = Some(open(&nodes[leader], id, None));
    let recs: Vec<(&str, &Arc<Recorder>)> =
        (0..3).map(|i| (nodes[i].name.as_str(), &open_groups[i].as_ref().unwrap().1)).collect();
    let got = converged(&recs, 60);
    let want: Vec<String> =
        (0..30).map(|i| format!("before-{i}")).chain((0..30).map(|i| format!("after-{i}"))).collect();
    assert_eq!(bodies(&got), want, "every acknowledged command, once, in order");
}

#[test]
fn a_group_grows_to_a_new_member_shrinks_and_is_deleted_with_its_files() {
    let root = tempfile::tempdir().unwrap();
    let nodes = cluster(root.path(), 10_000);
    wait_leader(&nodes, Duration::from_secs(10));
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let id: GroupId = 3;
    // x-quorum-initial-group-size = 2: nodes 0 and 1.
    let initial = [names[0].clone(), names[1].clone()];
    let g0 = open(&nodes[0], id, Some(&initial));
    let g1 = open(&nodes[1], id, Some(&initial));
    wait_group_leader(&nodes, &[0, 1], id);
    propose(&nodes[0], &g0.0, "two", 10);

    // Grow: node 2 opens the group with no initial list (it waits), the leader adds it.
    let g2 = open(&nodes[2], id, None);
    nodes[0].on(g0.0.add_member(&names[2])).expect("add node 2 to the group");
    propose(&nodes[2], &g2.0, "three", 10);
    converged(&[(&names[0], &g0.1), (&names[1], &g1.1), (&names[2], &g2.1)], 20);
    let mut voters = g2.0.voters();
    voters.sort();
    assert_eq!(voters, names);

    // Shrink: node 0 leaves the group and deletes its copy; the other two go on.
    nodes[1].on(g1.0.remove_member(&names[0])).expect("remove node 0 from the group");
    wait_until("node 0 out of the group's voters", Duration::from_secs(10), || {
        !g1.0.voters().contains(&names[0]) && !g2.0.voters().contains(&names[0])
    });
    nodes[0].on(nodes[0].node().delete_group(id)).unwrap();
    assert!(nodes[0].node().group(id).is_none());
    assert_eq!(nodes[0].node().stored_group_ids().unwrap(), Vec::<GroupId>::new());
    wait_group_leader(&nodes, &[1, 2], id);
    propose(&nodes[2], &g2.0, "two-again", 10);
    converged(&[(&names[1], &g1.1), (&names[2], &g2.1)], 30);

    // Deleted everywhere: no files, and the metadata group is untouched.
    for n in &nodes[1..] {
        n.on(n.node().delete_group(id)).unwrap();
        assert!(n.node().group_ids().is_empty() && n.node().stored_group_ids().unwrap().is_empty());
    }
    let leader = wait_leader(&nodes, Duration::from_secs(10));
    nodes[leader].on(nodes[leader].node().propose(b"meta".to_vec())).unwrap();
    assert_converged(&nodes.iter().collect::<Vec<_>>(), 1, Duration::from_secs(10));
}

#[test]
fn a_demoted_voter_keeps_learning_and_a_removed_node_voter_or_learner_leaves_the_group() {
    let root = tempfile::tempdir().unwrap();
    let nodes = cluster(root.path(), 10_000);
    wait_leader(&nodes, Duration::from_secs(10));
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let id: GroupId = 11;
    let open_groups: Vec<(Group, Arc<Recorder>)> = nodes.iter().map(|n| open(n, id, Some(&names))).collect();
    wait_group_leader(&nodes, &[0, 1, 2], id);
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };

    // Demoted through node 2 itself (forwarded to the leader wherever it is): it no longer
    // votes, but it is still a member and applies what the other two commit.
    nodes[2].on(open_groups[2].0.demote_member(&names[2])).expect("demote node 2");
    wait_until("node 2 a learner everywhere", Duration::from_secs(10), || {
        open_groups.iter().all(|(g, _)| g.voters().len() == 2 && g.members().len() == 3)
    });
    assert_eq!(sorted(open_groups[0].0.voters()), names[..2].to_vec());
    propose(&nodes[0], &open_groups[0].0, "demoted", 10);
    let recs: Vec<(&str, &Arc<Recorder>)> =
        nodes.iter().zip(&open_groups).map(|(n, (_, r))| (n.name.as_str(), r)).collect();
    converged(&recs, 10);

    // A learner removed: out of the membership; it gets nothing more.
    nodes[0].on(open_groups[0].0.remove_node(&names[2])).expect("remove learner node 2");
    wait_until("node 2 gone from the membership", Duration::from_secs(10), || {
        open_groups[..2].iter().all(|(g, _)| g.members().len() == 2)
    });
    propose(&nodes[1], &open_groups[1].0, "pair", 5);
    converged(&recs[..2], 15);
    assert_eq!(open_groups[2].1.commands.lock().unwrap().len(), 10, "a removed learner receives nothing");

    // A voter removed: the group goes on with the one voter left.
    nodes[1].on(open_groups[1].0.remove_node(&names[1])).expect("remove voter node 1");
    wait_until("node 0 the only member", Duration::from_secs(10), || {
        open_groups[0].0.members() == vec![names[0].clone()] && open_groups[0].0.voters() == vec![names[0].clone()]
    });
    wait_group_leader(&nodes, &[0], id);
    propose(&nodes[0], &open_groups[0].0, "alone", 5);
    converged(&recs[..1], 20);
}

/// Leadership handed over on request (what `rebalance` does): in a group of three (the
/// old leader's vote and the new one's make a majority) and in one of five (the old leader
/// stops its heartbeats until the followers' leases run out), asked through any member;
/// every command proposed before, between and after is applied once, in one order, by all.
#[test]
fn leadership_is_handed_to_the_voter_asked_for_in_groups_of_three_and_five() {
    let root = tempfile::tempdir().unwrap();
    // Short group timers: the five-member hand-over waits one leader lease (4 heartbeats).
    let nodes = fast_groups(root.path(), 5);
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    wait_leader(&nodes, Duration::from_secs(10));
    for (id, size) in [(21 as GroupId, 3usize), (22, 5)] {
        let members = &names[..size];
        let groups: Vec<(Group, Arc<Recorder>)> = nodes[..size].iter().map(|n| open(n, id, Some(members))).collect();
        let mut leader = wait_group_leader(&nodes, &(0..size).collect::<Vec<_>>(), id);
        propose(&nodes[0], &groups[0].0, "before", 5);
        let mut proposed = 5;
        for step in 0..2 {
            let target = (leader + 1 + step) % size;
            // Asked through a member that is neither the leader nor the target when there is one.
            let via = (0..size).find(|&i| i != leader && i != target).unwrap_or(target);
            let now = nodes[via].on(groups[via].0.transfer_leadership(&names[target])).unwrap_or_else(|e| {
                panic!("group {id}: hand over from {} to {} through {}: {e}", names[leader], names[target], names[via])
            });
            assert_eq!(now, names[target], "group {id}: leader after the hand-over");
            leader = wait_group_leader(&nodes, &(0..size).collect::<Vec<_>>(), id);
            assert_eq!(leader, target, "group {id}: the members agree on the new leader");
            propose(&nodes[via], &groups[via].0, &format!("after{step}"), 5);
            proposed += 5;
        }
        // Asking the leader for itself changes nothing; a node outside the group is refused.
        assert_eq!(nodes[leader].on(groups[leader].0.transfer_leadership(&names[leader])).unwrap(), names[leader]);
        if size < names.len() {
            let err = nodes[0].on(groups[0].0.transfer_leadership(&names[size])).unwrap_err();
            assert!(err.to_string().contains("not a voter"), "{err}");
        }
        let recs: Vec<(&str, &Arc<Recorder>)> =
            names[..size].iter().map(String::as_str).zip(groups.iter().map(|(_, r)| r)).collect();
        let applied = converged(&recs, proposed);
        let mut want: Vec<String> = (0..5).map(|i| format!("before-{i}")).collect();
        for step in 0..2 {
            want.extend((0..5).map(|i| format!("after{step}-{i}")));
        }
        assert_eq!(bodies(&applied), want, "group {id}: every command once, in order");
    }
}

/// A hand-over to a member that is down is given up, and the group's writes are not held
/// back meanwhile: the leader waits for the target to come close behind before it holds
/// anything, and then at most a second.
#[test]
fn a_hand_over_to_a_member_that_is_down_fails_and_writes_go_on() {
    let root = tempfile::tempdir().unwrap();
    let ls = listeners(3);
    let names: Vec<String> = ls.iter().map(|(n, _)| n.clone()).collect();
    let mut nodes: Vec<TestNode> = ls
        .into_iter()
        .map(|(name, l)| {
            TestNode::start_with_config(&name, &root.path().join(&name), l, &names, |c| {
                c.group_heartbeat_ms = 100;
                c.request_deadline = Duration::from_secs(3);
            })
        })
        .collect();
    wait_leader(&nodes, Duration::from_secs(10));
    let id: GroupId = 31;
    let groups: Vec<(Group, Arc<Recorder>)> = nodes.iter().map(|n| open(n, id, Some(&names))).collect();
    let leader = wait_group_leader(&nodes, &[0, 1, 2], id);
    let down = (leader + 1) % 3;
    let up = 3 - leader - down;
    propose(&nodes[leader], &groups[leader].0, "before", 5);
    nodes[down].kill();
    // Writes while the leader tries: they keep being committed by the two left.
    let writer = {
        let g = groups[up].0.clone();
        nodes[up].rt.as_ref().unwrap().spawn(async move {
            for i in 0..20 {
                g.propose(cmd("during", i)).await.expect("a write while a hand-over is tried");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let err = nodes[leader].on(groups[leader].0.transfer_leadership(&names[down])).unwrap_err();
    assert!(err.to_string().contains("does not answer"), "{err}");
    nodes[up].on(writer).unwrap();
    assert_eq!(wait_group_leader(&nodes, &[leader, up], id), leader, "the leader stayed");
    let recs = [(names[leader].as_str(), &groups[leader].1), (names[up].as_str(), &groups[up].1)];
    assert_eq!(converged(&recs, 25).len(), 25);
}

#[test]
fn a_member_cut_off_from_a_group_rejoins_without_deposing_its_leader() {
    let root = tempfile::tempdir().unwrap();
    let nodes = fast_groups(root.path(), 3);
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    wait_leader(&nodes, Duration::from_secs(10));
    let id: GroupId = 7;
    let opened: Vec<(Group, Arc<Recorder>)> = nodes.iter().map(|n| open(n, id, Some(&names))).collect();
    let leader = wait_group_leader(&nodes, &[0, 1, 2], id);
    propose(&nodes[leader], &opened[leader].0, "before", 5);
    let recs: Vec<(&str, &Arc<Recorder>)> = nodes.iter().zip(&opened).map(|(n, (_, r))| (n.name.as_str(), r)).collect();
    converged(&recs, 5);
    let term = |i: usize| opened[i].0.raft().metrics().borrow_watched().current_term;
    let term_before = term(leader);

    // A follower cut off for twenty election timeouts keeps its term (it only pre-votes),
    // so back in touch it follows the same leader instead of forcing an election.
    let cut = (leader + 1) % 3;
    cut_off(&nodes, cut, true);
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(term(cut), term_before, "the cut-off member raised its term");
    cut_off(&nodes, cut, false);
    propose(&nodes[leader], &opened[leader].0, "after", 5);
    converged(&recs, 10);
    std::thread::sleep(Duration::from_secs(2));
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(
            opened[i].0.leader().as_deref(),
            Some(nodes[leader].name.as_str()),
            "{} follows another leader",
            n.name
        );
        assert_eq!(term(i), term_before, "{} is in another term", n.name);
    }
}

/// A leader whose vote is taken away (`delete_member` of it: it stays a learner) does not
/// lead on as a learner — openraft lets a learner lead, and steps down only a leader
/// removed from the group altogether — but hands the leadership to a remaining voter;
/// what was committed before and what is proposed after is applied by all.
#[test]
fn a_demoted_leader_hands_its_leadership_to_a_remaining_voter() {
    let root = tempfile::tempdir().unwrap();
    let nodes = fast_groups(root.path(), 3);
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    wait_leader(&nodes, Duration::from_secs(10));
    let id: GroupId = 9;
    let opened: Vec<(Group, Arc<Recorder>)> = nodes.iter().map(|n| open(n, id, Some(&names))).collect();
    let leader = wait_group_leader(&nodes, &[0, 1, 2], id);
    propose(&nodes[leader], &opened[leader].0, "before", 5);
    let via = (leader + 1) % 3;
    nodes[via].on(opened[via].0.demote_member(&names[leader])).expect("demote the leader");
    let rest: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let now = wait_group_leader(&nodes, &rest, id);
    assert_ne!(now, leader);
    assert!(!opened[leader].0.is_leader(), "the demoted node still leads");
    let mut voters = opened[now].0.voters();
    voters.sort();
    let mut want: Vec<String> = rest.iter().map(|&i| names[i].clone()).collect();
    want.sort();
    assert_eq!(voters, want);
    propose(&nodes[leader], &opened[leader].0, "after", 5);
    let recs: Vec<(&str, &Arc<Recorder>)> = nodes.iter().zip(&opened).map(|(n, (_, r))| (n.name.as_str(), r)).collect();
    converged(&recs, 10);
}
