//! Quorum queues in Raft groups of their own, across three real `warren` processes (the
//! harness of `it::cluster_fixture`), lapin and the management API as the witnesses: each
//! queue's voters follow `x-quorum-initial-group-size` (the declaring node first, capped
//! at the cluster's size), each has its own leader and quorum, the other nodes follow as
//! learners (their consumers are served), a node holds at most `warren.quorum_queue_max`
//! of them, and a deleted queue's group leaves no files.

use std::collections::BTreeSet;
use std::time::Duration;

use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;

use crate::cluster_fixture::{
    Node, consume_all, eventually, names, publish_confirmed, quorum_args, reply_code, started_cluster, wait_for,
};

const DURABLE: QueueDeclareOptions =
    QueueDeclareOptions { passive: false, durable: true, exclusive: false, auto_delete: false, nowait: false };

fn sized(size: AMQPValue) -> FieldTable {
    let mut a = quorum_args();
    a.insert("x-quorum-initial-group-size".into(), size);
    a
}

async fn declare(n: &Node, queue: &str, args: FieldTable) -> Result<(), lapin::Error> {
    let ch = n.amqp("guest", "guest", "/").await.unwrap().create_channel().await.unwrap();
    ch.queue_declare(queue.into(), DURABLE, args).await.map(drop)
}

async fn confirm_channel(n: &Node) -> lapin::Channel {
    let ch = n.amqp("guest", "guest", "/").await.unwrap().create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    ch
}

/// `/api/queues/%2f/{queue}` on `n`, once it names a leader: (leader, members).
fn placement(n: &Node, queue: &str) -> (String, Vec<String>) {
    let mut got = (String::new(), Vec::new());
    wait_for(&format!("a leader of {queue} on {}", n.full), Duration::from_secs(20), || {
        let q: Value = n.try_api(&format!("/api/queues/%2f/{queue}"))?;
        match q["leader"].as_str() {
            Some(l) => {
                got = (l.to_owned(), names(&q["members"]));
                Ok(())
            }
            None => Err(q.to_string()),
        }
    });
    got
}

/// The group directories in a node's data directory.
fn group_dirs(n: &Node) -> Vec<String> {
    match std::fs::read_dir(n.data.join("cluster").join("groups")) {
        Err(_) => Vec::new(),
        Ok(d) => d.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned())).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_quorum_queue_has_its_own_voters_leader_and_quorum_and_learners_serve_their_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let conf = "warren.cluster_write_timeout_ms = 3000\nwarren.quorum_queue_max = 3\n";
    let (mut nodes, _) = started_cluster(dir.path(), conf).await;
    let full: Vec<String> = nodes.iter().map(|n| n.full.clone()).collect();

    // Bad sizes are refused as RabbitMQ refuses them (406, the channel closes).
    for bad in [AMQPValue::LongLongInt(0), AMQPValue::LongString("three".into())] {
        let e = declare(&nodes[0], "bad", sized(bad.clone())).await.unwrap_err();
        assert_eq!(reply_code(&e), Some(406), "{bad:?}: {e}");
        assert!(e.to_string().contains("x-quorum-initial-group-size"), "{e}");
    }

    // "one": one voter, node 1 (it declares it); "two": node 0 and one other; "big": asks
    // for 7, gets the cluster's 3.
    declare(&nodes[1], "one", sized(AMQPValue::LongLongInt(1))).await.unwrap();
    declare(&nodes[0], "two", sized(AMQPValue::ShortInt(2))).await.unwrap();
    declare(&nodes[2], "big", sized(AMQPValue::LongLongInt(7))).await.unwrap();
    for n in &nodes {
        let (leader, members) = placement(n, "one");
        assert_eq!((leader.as_str(), members.as_slice()), (full[1].as_str(), &full[1..2]), "on {}", n.full);
        let (leader, members) = placement(n, "two");
        assert_eq!(members.len(), 2, "on {}: {members:?}", n.full);
        assert!(members.contains(&full[0]) && members.contains(&leader), "on {}: {leader} of {members:?}", n.full);
        let (leader, members) = placement(n, "big");
        assert_eq!(members, {
            let mut f = full.clone();
            f.sort();
            f
        });
        assert!(members.contains(&leader));
    }
    // A fourth is past `warren.quorum_queue_max`: refused (406), nothing declared.
    let e = declare(&nodes[0], "four", quorum_args()).await.unwrap_err();
    assert_eq!(reply_code(&e), Some(406), "{e}");
    assert!(e.to_string().contains("quorum queue limit (warren.quorum_queue_max = 3)"), "{e}");
    // Every node runs every queue's group (voter or learner): three groups, three dirs.
    for n in &nodes {
        wait_for(&format!("three group directories on {}", n.full), Duration::from_secs(10), || {
            let d = group_dirs(n);
            if d.len() == 3 { Ok(()) } else { Err(format!("{d:?}")) }
        });
    }

    // Node 0 is a learner of "one": it takes publishes (forwarded to the leader, confirmed
    // once node 1 has them on disk) and node 2, a learner too, delivers them.
    let on0 = confirm_channel(&nodes[0]).await;
    let first = publish_confirmed(&on0, "one", "first-", 50).await;
    assert_eq!(first.len(), 50, "publishes through a learner are confirmed");
    let want: BTreeSet<String> = first.iter().cloned().collect();
    let c2 = nodes[2].amqp("guest", "guest", "/").await.unwrap().create_channel().await.unwrap();
    let (got, _) = consume_all(&c2, "one", &want, Duration::from_secs(20)).await;
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want, "a learner's consumer gets every message");
    drop(c2);

    // Node 1, "one"'s only voter, is killed: "big" (a majority of 3 is left) confirms
    // through node 0; "one" confirms nothing (its quorum is gone), though node 0 runs it.
    nodes[1].kill();
    let on0 = confirm_channel(&nodes[0]).await;
    let big = publish_confirmed(&on0, "big", "big-", 20).await;
    assert_eq!(big.len(), 20, "a queue whose majority is up goes on");
    let on0 = confirm_channel(&nodes[0]).await;
    let lost_quorum = publish_confirmed(&on0, "one", "none-", 5).await;
    assert!(lost_quorum.is_empty(), "confirmed without the queue's only voter: {lost_quorum:?}");

    // Back: "one" confirms again, and has every message it confirmed (and only those).
    nodes[1].start();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let again = loop {
        let ch = confirm_channel(&nodes[0]).await;
        let got = publish_confirmed(&ch, "one", "again-", 5).await;
        if got.len() == 5 {
            break got;
        }
        assert!(std::time::Instant::now() < deadline, "one confirms again: {} of 5 confirmed", got.len());
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let want: BTreeSet<String> = again.iter().cloned().collect();
    let c0 = nodes[0].amqp("guest", "guest", "/").await.unwrap().create_channel().await.unwrap();
    let (got, _) = consume_all(&c0, "one", &want, Duration::from_secs(20)).await;
    let got: BTreeSet<String> = got.into_iter().collect();
    assert!(want.is_subset(&got), "missing: {:?}", want.difference(&got).collect::<Vec<_>>());
    assert!(got.iter().all(|b| b.starts_with("again-") || b.starts_with("none-")), "{got:?}");

    // Deleted: the groups' files go on every node.
    let ch = nodes[2].amqp("guest", "guest", "/").await.unwrap().create_channel().await.unwrap();
    for q in ["one", "two", "big"] {
        ch.queue_delete(q.into(), QueueDeleteOptions::default()).await.unwrap();
    }
    for n in &nodes {
        wait_for(&format!("no group directory left on {}", n.full), Duration::from_secs(10), || {
            let d = group_dirs(n);
            if d.is_empty() { Ok(()) } else { Err(format!("{d:?}")) }
        });
    }
}

/// RabbitMQ's membership endpoints on `n`'s API with reqwest, as guest: (status, body).
async fn replicas(n: &Node, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, String) {
    let url = format!("http://127.0.0.1:{}/api/queues/quorum/{path}", n.mgmt);
    let mut req = reqwest::Client::new().request(method, url).basic_auth("guest", Some("guest"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Wait until every node in `on` shows `queue` with exactly `members` as its voters.
fn wait_members(nodes: &[Node], on: &[usize], queue: &str, members: &[&String]) {
    let mut want: Vec<String> = members.iter().map(|m| (*m).clone()).collect();
    want.sort();
    for &i in on {
        wait_for(&format!("{queue}'s members {want:?} on {}", nodes[i].full), Duration::from_secs(30), || {
            let q: Value = nodes[i].try_api(&format!("/api/queues/%2f/{queue}"))?;
            let leader = q["leader"].as_str().unwrap_or("");
            if names(&q["members"]) == want && want.iter().any(|m| m == leader) { Ok(()) } else { Err(q.to_string()) }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queues_voters_change_with_add_member_delete_member_grow_and_shrink_and_a_forgotten_node_leaves() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _) = started_cluster(dir.path(), "warren.cluster_write_timeout_ms = 3000\n").await;
    let full: Vec<String> = nodes.iter().map(|n| n.full.clone()).collect();
    let (n0, n1, n2) = (&full[0].clone(), &full[1].clone(), &full[2].clone());
    declare(&nodes[0], "solo", sized(AMQPValue::LongLongInt(1))).await.unwrap();
    declare(&nodes[0], "trio", quorum_args()).await.unwrap();
    wait_members(&nodes, &[0, 1, 2], "solo", &[n0]);
    let first = publish_confirmed(&confirm_channel(&nodes[1]).await, "solo", "first-", 20).await;
    assert_eq!(first.len(), 20);

    // add_member: RabbitMQ's path and 204; the caller's mistakes are 400 or 404.
    let add = |node: &str| Some(serde_json::json!({ "node": node }));
    assert_eq!(replicas(&nodes[2], Method::POST, "%2F/solo/replicas/add", add(n1)).await.0, 204);
    wait_members(&nodes, &[0, 1, 2], "solo", &[n0, n1]);
    // The group as its leader (node 0) sees it: /api/warren/cluster, warrenctl
    // quorum_status and Prometheus' per-object series.
    wait_for("solo's group on /api/warren/cluster", Duration::from_secs(15), || {
        let s: Value = nodes[0].api("/api/warren/cluster");
        let g = s["quorum_queues"].as_array().and_then(|a| a.iter().find(|g| g["name"] == "solo")).cloned();
        let Some(g) = g else { return Err(s.to_string()) };
        let kinds: Vec<(String, String)> = g["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["name"].as_str().unwrap().to_owned(), m["type"].as_str().unwrap().to_owned()))
            .collect();
        let want = vec![(n0.clone(), "voter".into()), (n1.clone(), "voter".into()), (n2.clone(), "learner".into())];
        let caught_up = g["members"].as_array().unwrap().iter().all(|m| m["lag"] == 0);
        let ok = g["is_leader"] == true && g["leader"] == n0.as_str() && kinds == want && caught_up;
        let ok = ok && g["raft_state"] == "running" && g["log"]["commit_index"].as_u64() > Some(0);
        // The leader timed the publishes forwarded to it.
        let ok = ok && g["log"]["commit_latency_us"].as_u64() > Some(0);
        if ok { Ok(()) } else { Err(g.to_string()) }
    });
    let (code, out, err) = nodes[0].ctl(&["-q", "--formatter", "json", "quorum_status", "solo"]);
    assert_eq!(code, 0, "{out}{err}");
    let rows: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let row = |n: &str| rows.as_array().unwrap().iter().find(|r| r["Node Name"] == n).cloned().unwrap();
    assert_eq!((row(n0)["Raft State"].as_str(), row(n0)["Membership"].as_str()), (Some("leader"), Some("voter")));
    assert_eq!(row(n2)["Membership"], "non_voter", "{rows}");
    assert!(row(n0)["Commit Index"].as_u64() > Some(0), "{rows}");
    let (code, _, err) = nodes[0].ctl(&["quorum_status", "nosuch"]);
    assert_eq!(code, 70, "{err}");
    // "trio"'s group may still be electing its first leader (node 0, which declared it).
    assert_eq!(placement(&nodes[0], "trio").0, *n0);
    let text = reqwest::get(format!("http://127.0.0.1:{}/metrics/per-object", nodes[0].prom))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let commit =
        text.lines().find_map(|l| l.strip_prefix("rabbitmq_raft_log_commit_index{vhost=\"/\",queue=\"solo\"} "));
    assert!(commit.and_then(|v| v.parse::<u64>().ok()) > Some(0), "{text}");
    // Its leader timed the 20 publishes forwarded to it: RabbitMQ's commit latency gauge.
    let latency = text
        .lines()
        .find_map(|l| l.strip_prefix("rabbitmq_raft_entry_commit_latency_seconds{vhost=\"/\",queue=\"solo\"} "));
    let latency: f64 = latency.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{text}"));
    assert!(latency > 0.0 && latency < 30.0, "{text}");
    assert!(text.contains("warren_quorum_queue_groups 2\n"), "{text}");
    assert!(text.contains("warren_quorum_queue_groups_led 2\n"), "node 0 declared both: {text}");

    let (st, body) = replicas(&nodes[0], Method::POST, "%2F/solo/replicas/add", add(n1)).await;
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("already a member"), "{body}");
    let (st, body) = replicas(&nodes[0], Method::POST, "%2F/solo/replicas/add", add("zz@127.0.0.1:1")).await;
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("not a member of the cluster"), "{body}");
    assert_eq!(replicas(&nodes[0], Method::POST, "%2F/nosuch/replicas/add", add(n1)).await.0, 404);
    assert_eq!(replicas(&nodes[0], Method::POST, "%2F/solo/replicas/add", None).await.0, 400);

    // delete_member of the leader: 202; node 1 is left the only voter and leads.
    assert_eq!(replicas(&nodes[1], Method::DELETE, "%2F/solo/replicas/delete", add(n0)).await.0, 202);
    wait_members(&nodes, &[0, 1, 2], "solo", &[n1]);
    let (st, body) = replicas(&nodes[0], Method::DELETE, "%2F/solo/replicas/delete", add(n1)).await;
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("last member"), "{body}");

    // Node 0 no longer counts: killed, "solo" still confirms (node 1 alone has them on disk).
    nodes[0].kill();
    let second = publish_confirmed(&confirm_channel(&nodes[2]).await, "solo", "second-", 10).await;
    assert_eq!(second.len(), 10, "node 0's vote was taken away");
    nodes[0].start();

    // warrenctl grow / shrink (rabbitmq-queues' shapes and tables: a row per queue).
    let (code, out, err) = nodes[0].ctl(&["-q", "--formatter", "json", "grow", n2, "all", "--queue-pattern", "^solo$"]);
    assert_eq!(code, 0, "{out}{err}");
    let rows: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(rows, serde_json::json!([{"vhost": "/", "name": "solo", "size": 2, "result": "ok"}]));
    wait_members(&nodes, &[0, 1, 2], "solo", &[n1, n2]);
    wait_members(&nodes, &[0], "trio", &[n0, n1, n2]);
    let (code, out, err) = nodes[1].ctl(&["-q", "--formatter", "json", "shrink", n2]);
    assert_eq!(code, 0, "{out}{err}");
    let rows: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        rows,
        serde_json::json!([
            {"vhost": "/", "name": "solo", "size": 1, "result": "ok"},
            {"vhost": "/", "name": "trio", "size": 2, "result": "ok"},
        ])
    );
    wait_members(&nodes, &[0, 1, 2], "solo", &[n1]);
    wait_members(&nodes, &[0, 1, 2], "trio", &[n0, n1]);
    // "even": only queues with an even number of voters grow ("trio" has 2, "solo" 1).
    let (code, out, err) = nodes[2].ctl(&["grow", n2, "even"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_members(&nodes, &[0, 1, 2], "trio", &[n0, n1, n2]);
    wait_members(&nodes, &[0, 1, 2], "solo", &[n1]);
    let (code, _, err) = nodes[2].ctl(&["grow", n2, "some"]);
    assert_eq!(code, 64, "{err}");

    // A voter that leaves the cluster leaves its queues' groups: "trio" goes on with two.
    nodes[2].kill();
    let (code, out, err) = nodes[0].ctl(&["forget_cluster_node", n2]);
    assert_eq!(code, 0, "{out}{err}");
    wait_members(&nodes, &[0, 1], "trio", &[n0, n1]);
    let trio = publish_confirmed(&confirm_channel(&nodes[1]).await, "trio", "trio-", 10).await;
    assert_eq!(trio.len(), 10);

    // Every confirmed message of "solo" is there, through all the changes.
    let want: BTreeSet<String> = first.iter().chain(&second).cloned().collect();
    let c0 = nodes[0].amqp("guest", "guest", "/").await.unwrap().create_channel().await.unwrap();
    let (got, _) = consume_all(&c0, "solo", &want, Duration::from_secs(20)).await;
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);

    // A shrink that cannot take a queue's last voter: the other queue changes, the table
    // (`--errors-only`: that row alone) says why, and warrenctl exits 69 naming it.
    let (code, out, err) = nodes[0].ctl(&["-q", "--formatter", "json", "shrink", n1, "--errors-only"]);
    assert_eq!(code, 69, "{out}{err}");
    assert!(err.contains("'solo' in vhost '/'"), "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0]["name"].as_str(), rows[0]["size"].as_u64()), (Some("solo"), Some(1)));
    assert!(
        rows[0]["result"].as_str().unwrap().starts_with("error: ")
            && rows[0]["result"].as_str().unwrap().contains("last member"),
        "{rows:?}"
    );
    wait_members(&nodes, &[0, 1], "trio", &[n0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_files_of_a_queue_the_cluster_no_longer_has_are_swept_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _) = started_cluster(dir.path(), "").await;
    declare(&nodes[0], "kept", quorum_args()).await.unwrap();
    wait_for("kept's group on node 2", Duration::from_secs(15), || {
        let d = group_dirs(&nodes[2]);
        if d.len() == 1 { Ok(()) } else { Err(format!("{d:?}")) }
    });
    let kept = group_dirs(&nodes[2]);
    // While node 2 is down: the files of a group the metadata log has no queue for (id 1
    // is the log's first entry, never a declaration), and of one past anything the log
    // holds (a declaration this node has not seen yet must not lose its files).
    nodes[2].kill();
    let groups = nodes[2].data.join("cluster").join("groups");
    let orphan = groups.join(format!("{:016x}", 1));
    let future = groups.join(format!("{:016x}", u64::MAX >> 8));
    for d in [&orphan, &future] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("log"), b"entries of a deleted queue").unwrap();
    }
    nodes[2].start();
    wait_for("the orphan's files swept on node 2", Duration::from_secs(30), || {
        if orphan.exists() { Err(format!("{:?}", group_dirs(&nodes[2]))) } else { Ok(()) }
    });
    assert!(future.join("log").exists(), "a group past the applied log is left alone");
    for k in &kept {
        assert!(groups.join(k).exists(), "kept's group {k} is still there");
    }
    let got = publish_confirmed(&confirm_channel(&nodes[2]).await, "kept", "k-", 5).await;
    assert_eq!(got.len(), 5, "kept still works through node 2");
}

/// A node that restarts knowing less of the metadata log than it had applied (its commit
/// markers lost, as a power loss can leave them) does not have the quorum queue yet: a
/// declare of it waits for the cluster (and fails without a quorum), rather than finding
/// the broker queue its definitions log recovered, without a replica. With no quorum, a
/// classic queue of the same name is declared there and takes messages: when the node
/// catches up and the quorum declare is applied there, the classic queue keeps its
/// messages, and the quorum queue keeps this node's replica — its group's files are not
/// swept as an orphan's, not at once nor after a restart — and keeps working; once the
/// classic queue is deleted, that node serves the quorum queue again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_shadowed_by_a_classic_queue_on_one_node_keeps_that_nodes_group_files() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _) = started_cluster(dir.path(), "warren.cluster_write_timeout_ms = 2000\n").await;
    declare(&nodes[0], "q", quorum_args()).await.unwrap();
    wait_for("q's group on node 2", Duration::from_secs(15), || {
        let d = group_dirs(&nodes[2]);
        if d.len() == 1 { Ok(()) } else { Err(format!("{d:?}")) }
    });
    let group = nodes[2].data.join("cluster").join("groups").join(&group_dirs(&nodes[2])[0]);
    let confirmed = publish_confirmed(&confirm_channel(&nodes[0]).await, "q", "qq-", 3).await;
    assert_eq!(confirmed.len(), 3);
    for n in nodes.iter_mut() {
        n.kill();
    }
    let dropped = cluster::log_store::LogStore::drop_committed_markers(&nodes[2].data.join("cluster")).unwrap();
    assert!(dropped > 0, "node 2's metadata log had committed markers");

    // Node 2 alone: it applied nothing of the log yet. A quorum declare needs the cluster;
    // a classic one is declared here (its read barrier times out without a quorum).
    nodes[2].start();
    let e = declare(&nodes[2], "q", quorum_args()).await.unwrap_err();
    assert!(reply_code(&e).is_some(), "{e}");
    let ch = nodes[2].amqp("guest", "guest", "/").await.unwrap().create_channel().await.unwrap();
    let passive = QueueDeclareOptions { passive: true, ..DURABLE };
    let e = ch.queue_declare("q".into(), passive, FieldTable::default()).await.unwrap_err();
    assert_eq!(reply_code(&e), Some(404), "{e}");
    declare(&nodes[2], "q", FieldTable::default()).await.unwrap();
    let local = publish_confirmed(&confirm_channel(&nodes[2]).await, "q", "classic-", 2).await;
    assert_eq!(local.len(), 2, "the classic queue confirms on its own");
    nodes[0].start();
    nodes[1].start();
    wait_for("node 2 applies the quorum declare", Duration::from_secs(30), || {
        let log = nodes[2].proc.as_ref().unwrap().log();
        if log.contains("holds a classic queue with messages or consumers") { Ok(()) } else { Err(String::new()) }
    });
    // Restarted, node 2 replays the declare at once and its first orphan sweep follows
    // within seconds, with a quorum to read through this time.
    nodes[2].kill();
    nodes[2].start();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let log = nodes[2].proc.as_ref().unwrap().log();
    assert!(!log.contains("deleted the files of a group"), "{log}");
    assert!(group.join("log").exists(), "node 2's files of q's group are kept");
    let q: Value = nodes[2].api("/api/queues/%2f/q");
    assert_eq!(q["messages"].as_u64(), Some(2), "{q}");

    // The quorum queue goes on through the other nodes.
    let more = publish_confirmed(&confirm_channel(&nodes[0]).await, "q", "more-", 2).await;
    assert_eq!(more.len(), 2);

    // Node 2 made q's only voter leads it though it cannot do a leader's work that needs the
    // broker queue (dead-lettering); once another voter is back it hands the leadership
    // over by itself.
    use reqwest::Method;
    let full: Vec<String> = nodes.iter().map(|n| n.full.clone()).collect();
    let node = |n: &String| Some(serde_json::json!({ "node": n }));
    for gone in [0, 1] {
        let (st, body) = replicas(&nodes[0], Method::DELETE, "%2F/q/replicas/delete", node(&full[gone])).await;
        assert_eq!(st, 202, "{body}");
        let left: Vec<&String> = full[gone + 1..].iter().collect();
        wait_members(&nodes, &[0, 1], "q", &left);
    }
    assert_eq!(placement(&nodes[0], "q").0, full[2], "the only voter leads");
    assert_eq!(replicas(&nodes[0], Method::POST, "%2F/q/replicas/add", node(&full[0])).await.0, 204);
    let mut two = vec![full[0].clone(), full[2].clone()];
    two.sort();
    wait_for("node 2 hands q over to node 0", Duration::from_secs(30), || {
        let q: Value = nodes[0].try_api("/api/queues/%2f/q")?;
        let ok = q["leader"] == full[0].as_str() && names(&q["members"]) == two;
        if ok { Ok(()) } else { Err(q.to_string()) }
    });
    let log = nodes[2].proc.as_ref().unwrap().log();
    assert!(log.contains("leader handed over (no broker queue of it on this node"), "{log}");
    assert_eq!(replicas(&nodes[0], Method::POST, "%2F/q/replicas/add", node(&full[1])).await.0, 204);
    wait_members(&nodes, &[0, 1], "q", &[&full[0], &full[1], &full[2]]);

    // Node 2's classic queue drained and deleted: node 2 serves the quorum queue again,
    // with everything it confirmed, without a restart.
    let ch = nodes[2].amqp("guest", "guest", "/").await.unwrap().create_channel().await.unwrap();
    let (local_got, _) = consume_all(&ch, "q", &local.iter().cloned().collect(), Duration::from_secs(10)).await;
    assert_eq!(local_got, local);
    ch.queue_delete("q".into(), QueueDeleteOptions { if_empty: true, ..QueueDeleteOptions::default() }).await.unwrap();
    wait_for("node 2 serves the quorum queue", Duration::from_secs(15), || {
        let all: Value = nodes[2].api("/api/queues/%2f");
        let q = all.as_array().and_then(|a| a.iter().find(|q| q["name"] == "q").cloned()).unwrap_or_default();
        if q["type"] == "quorum" && q["leader"].is_string() { Ok(()) } else { Err(q.to_string()) }
    });
    let want: BTreeSet<String> = confirmed.into_iter().chain(more).collect();
    let ch = nodes[2].amqp("guest", "guest", "/").await.unwrap().create_channel().await.unwrap();
    let (got, _) = consume_all(&ch, "q", &want, Duration::from_secs(20)).await;
    let got: BTreeSet<String> = got.into_iter().collect();
    assert!(want.is_subset(&got), "missing {:?}", want.difference(&got).collect::<Vec<_>>());
}

/// `warren_quorum_queue_log_bytes` on `n`'s aggregated `/metrics`.
async fn logs_bytes(n: &Node) -> u64 {
    let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", n.prom)).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("warren_quorum_queue_log_bytes "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no warren_quorum_queue_log_bytes in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_queues_logs_together_stay_under_the_node_wide_bound() {
    let dir = tempfile::tempdir().unwrap();
    // Each group's own bound (64 MiB) and snapshot interval (10,000 entries) are far away:
    // only the node-wide 1 MiB bound makes these logs shrink (with the default 512 MiB
    // they stay at about 1.9 MiB: checked by hand).
    let (nodes, _) = started_cluster(dir.path(), "warren.quorum_queue_logs_max_bytes = 1MiB\n").await;
    for q in ["logs-a", "logs-b", "logs-c"] {
        declare(&nodes[0], q, quorum_args()).await.unwrap();
    }
    let body = vec![b'x'; 16 * 1024];
    let ch = confirm_channel(&nodes[1]).await;
    let props = lapin::BasicProperties::default().with_delivery_mode(2);
    let mut confirms = Vec::new();
    // 3 × 40 × 16 KiB ≈ 1.9 MiB of message bodies in three logs.
    for i in 0..40 {
        for q in ["logs-a", "logs-b", "logs-c"] {
            let c = ch
                .basic_publish(
                    "".into(),
                    q.into(),
                    lapin::options::BasicPublishOptions::default(),
                    &body,
                    props.clone(),
                )
                .await
                .unwrap();
            confirms.push((i, c));
        }
    }
    for (i, c) in confirms {
        assert!(c.await.unwrap().is_ack(), "publish {i} confirmed");
    }
    for n in &nodes {
        eventually(&format!("{}'s logs under the bound", n.full), Duration::from_secs(20), || async {
            let b = logs_bytes(n).await;
            if b <= 1 << 20 { Ok(()) } else { Err(format!("{b} bytes")) }
        })
        .await;
        let s: Value = n.api("/api/warren/cluster");
        let snapshotted = s["quorum_queues"].as_array().unwrap().iter().filter(|g| g["log"]["snapshot_index"] != 0);
        assert!(snapshotted.count() >= 1, "a snapshot made room: {s}");
    }
    // Nothing was lost to the snapshots: every message is there.
    for q in ["logs-a", "logs-b", "logs-c"] {
        wait_for(&format!("{q} holds 40"), Duration::from_secs(10), || {
            let v: Value = nodes[2].try_api(&format!("/api/queues/%2f/{q}"))?;
            if v["messages"] == 40 { Ok(()) } else { Err(v["messages"].to_string()) }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_leader_locator_spreads_leaders_and_client_local_keeps_the_declaring_node() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, _) = started_cluster(dir.path(), "").await;
    let full: Vec<String> = nodes.iter().map(|n| n.full.clone()).collect();
    let located = |how: &str| {
        let mut a = quorum_args();
        a.insert("x-queue-leader-locator".into(), AMQPValue::LongString(how.into()));
        a
    };
    let bad = declare(&nodes[0], "bad", located("nearest")).await.unwrap_err();
    assert_eq!(reply_code(&bad), Some(406), "{bad}");
    assert!(bad.to_string().contains("x-queue-leader-locator"), "{bad}");

    // Six balanced queues declared through node 0: two led by each node.
    for i in 0..6 {
        declare(&nodes[0], &format!("bal-{i}"), located(if i % 2 == 0 { "balanced" } else { "least-leaders" }))
            .await
            .unwrap();
    }
    let mut led = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..6 {
        *led.entry(placement(&nodes[1], &format!("bal-{i}")).0).or_default() += 1;
    }
    assert_eq!(led.values().copied().collect::<Vec<_>>(), vec![2, 2, 2], "{led:?}");
    // client-local (and no locator at all) through node 2: node 2 leads.
    declare(&nodes[2], "local", located("client-local")).await.unwrap();
    declare(&nodes[2], "plain", quorum_args()).await.unwrap();
    assert_eq!(placement(&nodes[0], "local").0, full[2]);
    assert_eq!(placement(&nodes[0], "plain").0, full[2]);

    // A policy's queue-leader-locator applies to a queue declared without the argument:
    // node 2 now leads four queues and the others two each, so these two go to nodes 0 and 1.
    let url = format!("http://127.0.0.1:{}/api/policies/%2F/spread", nodes[2].mgmt);
    let body = serde_json::json!({"pattern": "^pol-", "apply-to": "queues", "definition": {"queue-leader-locator": "balanced"}});
    let r = reqwest::Client::new().put(url).basic_auth("guest", Some("guest")).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    for i in 0..2 {
        declare(&nodes[2], &format!("pol-{i}"), quorum_args()).await.unwrap();
    }
    let pol: BTreeSet<String> = (0..2).map(|i| placement(&nodes[1], &format!("pol-{i}")).0).collect();
    assert_eq!(
        pol,
        full[..2].iter().cloned().collect::<BTreeSet<_>>(),
        "the policy placed them on the nodes leading fewest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_whose_files_cannot_be_read_is_left_alone_and_its_node_confirms_nothing_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _) = started_cluster(dir.path(), "warren.cluster_write_timeout_ms = 2000\n").await;
    declare(&nodes[0], "hurt", quorum_args()).await.unwrap();
    let first = publish_confirmed(&confirm_channel(&nodes[0]).await, "hurt", "a-", 10).await;
    assert_eq!(first.len(), 10);
    wait_for("hurt's group on node 2", Duration::from_secs(15), || {
        if group_dirs(&nodes[2]).len() == 1 { Ok(()) } else { Err(format!("{:?}", group_dirs(&nodes[2]))) }
    });
    // Node 2's copy of the group's vote is damaged while it is down.
    nodes[2].kill();
    let group = nodes[2].data.join("cluster").join("groups").join(&group_dirs(&nodes[2])[0]);
    std::fs::write(group.join("vote"), b"\x00\x01 not a vote").unwrap();
    nodes[2].start();
    wait_for("node 2 logs that it cannot open the group", Duration::from_secs(20), || {
        let log = nodes[2].proc.as_ref().unwrap().log();
        if log.contains("opening the quorum queue's Raft group on this node") { Ok(()) } else { Err("not yet".into()) }
    });
    // Nothing of it is deleted: not by the open, not by the orphan sweep (the queue exists).
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(std::fs::read(group.join("vote")).unwrap(), b"\x00\x01 not a vote", "the damaged file is kept");
    let s: Value = nodes[2].api("/api/warren/cluster");
    assert!(s["quorum_queues"].as_array().unwrap().is_empty(), "the group is not open on node 2: {s}");
    // Through node 2 a publish to it is nacked (after the write timeout), never confirmed;
    // the other two voters still confirm.
    let ch2 = confirm_channel(&nodes[2]).await;
    let props = lapin::BasicProperties::default().with_delivery_mode(2);
    let confirm = ch2
        .basic_publish("".into(), "hurt".into(), lapin::options::BasicPublishOptions::default(), b"b", props)
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_nack(), "a publish through a node that cannot run the group: {confirm:?}");
    let more = publish_confirmed(&confirm_channel(&nodes[1]).await, "hurt", "c-", 10).await;
    assert_eq!(more.len(), 10, "the majority goes on");
}

/// Leaders per node among the `rb-*` queues, as node `n`'s `/api/queues` says.
fn leaders_per_node(n: &Node, nodes: &[Node], prefix: &str) -> Vec<usize> {
    let qs: Value = n.api("/api/queues");
    nodes
        .iter()
        .map(|x| {
            qs.as_array()
                .unwrap()
                .iter()
                .filter(|q| q["name"].as_str().is_some_and(|s| s.starts_with(prefix)) && q["leader"] == x.full.as_str())
                .count()
        })
        .collect()
}

/// `rabbitmq-queues rebalance quorum` and `POST /api/rebalance/queues`: six queues led by
/// the node that declared them (as a rule) end up led two by each node; a publisher confirming
/// through the rebalance loses nothing (every confirmed message is delivered once the
/// leaders moved, from another node), and the queues take publishes on their new leaders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_spreads_quorum_queue_leaders_without_losing_a_confirmed_message() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, _) = started_cluster(dir.path(), "").await;
    for i in 0..6 {
        declare(&nodes[0], &format!("rb-{i}"), quorum_args()).await.unwrap();
    }
    let mut before = Vec::new();
    for i in 0..6 {
        let q = format!("rb-{i}");
        // Node 0 leads it (client-local) unless, on a loaded machine, another voter
        // initialised the group first: either way the rebalance below evens them out.
        placement(&nodes[1], &q);
        before.extend(publish_confirmed(&confirm_channel(&nodes[1]).await, &q, &format!("{q}-before-"), 20).await);
    }
    assert_eq!(before.len(), 120);
    // A publisher keeps confirming to rb-0 through node 2 while the leaders move.
    let publisher = {
        let ch = confirm_channel(&nodes[2]).await;
        tokio::spawn(async move {
            let mut confirmed = Vec::new();
            for round in 0..40 {
                confirmed.extend(publish_confirmed(&ch, "rb-0", &format!("during-{round}-"), 10).await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            confirmed
        })
    };

    // warrenctl on three of them: one each (ceil(3/3) = 1), a table per node.
    let (code, out, err) =
        nodes[1].ctl(&["-q", "--formatter", "json", "rebalance", "quorum", "--queue-pattern", "^rb-[0-2]$"]);
    assert_eq!(code, 0, "{out}{err}");
    let rows: Value =
        serde_json::from_str(out.lines().filter(|l| !l.starts_with("Re-balancing")).collect::<String>().as_str())
            .unwrap_or_else(|e| panic!("{e}: {out}"));
    let per: Vec<(String, u64)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["Node name"].as_str().unwrap().to_owned(), r["Number of quorum queues"].as_u64().unwrap()))
        .collect();
    let mut want: Vec<(String, u64)> = nodes.iter().map(|n| (n.full.clone(), 1)).collect();
    want.sort();
    assert_eq!(per, want, "{out}");
    let first: Vec<usize> = (0..3)
        .map(|i| nodes.iter().position(|n| n.full == placement(&nodes[2], &format!("rb-{i}")).0).unwrap())
        .collect();
    assert_eq!(first.iter().copied().collect::<BTreeSet<_>>().len(), 3, "rb-0..2 led by three nodes: {first:?}");

    // rabbitmq_http_client's rebalance_queue_leaders (RabbitMQ's POST, `{}`): all six.
    nodes[2].http().rebalance_queue_leaders().await.expect("POST /api/rebalance/queues");
    assert_eq!(leaders_per_node(&nodes[0], &nodes, "rb-"), vec![2, 2, 2]);
    let (code, _, err) = nodes[0].ctl(&["rebalance", "classic"]);
    assert_ne!(code, 0, "{err}");

    let during = publisher.await.unwrap();
    assert!(during.len() >= 200, "the publisher kept being confirmed through the moves: {}", during.len());
    for i in 0..6 {
        let q = format!("rb-{i}");
        let after = publish_confirmed(&confirm_channel(&nodes[0]).await, &q, &format!("{q}-after-"), 10).await;
        assert_eq!(after.len(), 10, "{q} takes publishes on its new leader");
        before.extend(after);
    }
    let want: BTreeSet<String> = before.iter().chain(&during).cloned().collect();
    let mut got = BTreeSet::new();
    for i in 0..6 {
        let q = format!("rb-{i}");
        let mine: BTreeSet<String> = want
            .iter()
            .filter(|b| b.starts_with(&format!("{q}-")) || (i == 0 && b.starts_with("during-")))
            .cloned()
            .collect();
        let ch = nodes[1].amqp("guest", "guest", "/").await.unwrap().create_channel().await.unwrap();
        let (bodies, _) = consume_all(&ch, &q, &mine, Duration::from_secs(30)).await;
        got.extend(bodies);
    }
    let lost: Vec<&String> = want.difference(&got).take(5).collect();
    assert!(lost.is_empty(), "{} confirmed messages lost, e.g. {lost:?}", want.difference(&got).count());
}

/// A node stopped cleanly (SIGTERM) hands the quorum queues it leads to the other voters
/// before it exits: the others lead them as soon as it is gone — not after an election
/// timeout (3 s or more at the default heartbeat: a lease and 2-4 heartbeats), so the
/// first look at the API after the exit already names another leader — and a publisher on
/// another node is confirmed; nothing confirmed is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopping_cleanly_hands_its_quorum_queues_over_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = crate::cluster_fixture::three_nodes(dir.path());
    // The stopping node's info lines say what it handed over.
    for n in nodes.iter_mut() {
        n.env.push(("WARREN_LOG".into(), "info".into()));
    }
    crate::cluster_fixture::start_seeded(&mut nodes).await;
    for q in ["so-0", "so-1"] {
        declare(&nodes[0], q, quorum_args()).await.unwrap();
    }
    // Node 0 leads both (client-local) as a rule; the node stopped is so-0's leader.
    let leaders: Vec<String> = ["so-0", "so-1"].iter().map(|q| placement(&nodes[1], q).0).collect();
    let x = nodes.iter().position(|n| n.full == leaders[0]).unwrap();
    let led = leaders.iter().filter(|l| **l == nodes[x].full).count();
    let (a, b) = ((x + 1) % 3, (x + 2) % 3);
    let mut confirmed = Vec::new();
    for q in ["so-0", "so-1"] {
        confirmed.extend(publish_confirmed(&confirm_channel(&nodes[a]).await, q, &format!("{q}-before-"), 20).await);
    }
    let code = nodes[x].proc.as_mut().unwrap().terminate(Duration::from_secs(20));
    assert_eq!(code, Some(0), "a clean exit");
    let log = nodes[x].proc.as_ref().unwrap().log();
    assert_eq!(log.matches("leader handed over before stopping").count(), led, "{log}");
    // At once (well within an election timeout): the others lead both queues and confirm.
    let ch = confirm_channel(&nodes[b]).await;
    for q in ["so-0", "so-1"] {
        let q_now: Value = nodes[a].api(&format!("/api/queues/%2f/{q}"));
        let leader = q_now["leader"].as_str().unwrap_or_default().to_owned();
        assert!(
            leader == nodes[a].full || leader == nodes[b].full,
            "{q}: leader {leader} once {} stopped",
            nodes[x].full
        );
        let after = publish_confirmed(&ch, q, &format!("{q}-after-"), 20).await;
        assert_eq!(after.len(), 20, "{q}: confirmed without {}", nodes[x].full);
        confirmed.extend(after);
    }
    nodes[x].start();
    let want: BTreeSet<String> = confirmed.into_iter().collect();
    let mut got = BTreeSet::new();
    for q in ["so-0", "so-1"] {
        let mine: BTreeSet<String> = want.iter().filter(|b| b.starts_with(&format!("{q}-"))).cloned().collect();
        let ch = nodes[x].amqp("guest", "guest", "/").await.unwrap().create_channel().await.unwrap();
        got.extend(consume_all(&ch, q, &mine, Duration::from_secs(30)).await.0);
    }
    assert_eq!(got, want, "every confirmed message, from the restarted node");
}
