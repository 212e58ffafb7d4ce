//! A cluster node whose disk fills (a tmpfs shrunk under it): it must not confirm what its
//! Raft log could not write, the other nodes go on, and once space returns it restarts and
//! catches up. Three real `warren` processes (`it::cluster_fixture`), lapin as the witness.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};

use crate::cluster_fixture::{consume_all, eventually, quorum_args, start_seeded, three_nodes_with};
use crate::reliability::SmallDisk;

const DURABLE: QueueDeclareOptions =
    QueueDeclareOptions { passive: false, durable: true, exclusive: false, auto_delete: false, nowait: false };

/// Bytes used on the file system holding `path`.
fn used_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("df").args(["-B1", "--output=used"]).arg(path).output().expect("df");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("df output: {text}"))
}

fn resize(path: &Path, bytes: u64) {
    let st = std::process::Command::new("mount")
        .args(["-o", &format!("remount,size={bytes}")])
        .arg(path)
        .status()
        .expect("running mount");
    assert!(st.success(), "resizing the tmpfs at {} to {bytes} bytes", path.display());
}

/// Publish `bodies` on `ch` (confirm mode) in batches; returns the bodies acked and whether
/// the node refused at least one (a nack, or the channel failed).
async fn publish_all(ch: &lapin::Channel, queue: &str, bodies: &[String]) -> (Vec<String>, bool) {
    const BATCH: usize = 25;
    let props = lapin::BasicProperties::default().with_delivery_mode(2);
    let mut acked = Vec::new();
    for batch in bodies.chunks(BATCH) {
        let mut waits = Vec::new();
        for b in batch {
            match ch
                .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), b.as_bytes(), props.clone())
                .await
            {
                Ok(c) => waits.push((b, c)),
                Err(_) => return (acked, true),
            }
        }
        let mut refused = false;
        for (b, c) in waits {
            match tokio::time::timeout(Duration::from_secs(30), c).await {
                Ok(Ok(c)) if c.is_ack() => acked.push(b.clone()),
                _ => refused = true,
            }
        }
        if refused {
            return (acked, true);
        }
    }
    (acked, false)
}

/// The disk of a quorum queue's leader fills while it takes the queue's publishes: every
/// publish it acked is delivered later; it acks nothing more once the queue's Raft log
/// cannot write (nacks or a closed channel); the two others elect a leader of the queue and
/// take publishes; after space returns the old leader restarts (its log's torn tail is not
/// damage) and rejoins with the others' state (the same message count on every node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_disk_fills_confirms_nothing_unwritten_and_rejoins_once_space_returns() {
    /// Body size: a few hundred publishes fill the room left.
    const BODY_BYTES: usize = 16 * 1024;
    /// What the shrunk file system leaves free for the leader's writes.
    const ROOM_BYTES: u64 = 3 * 1024 * 1024;
    /// Enough to fill the room several times over.
    const PUBLISHES: usize = 4 * ROOM_BYTES as usize / BODY_BYTES;
    let dir = tempfile::tempdir().unwrap();
    let disks: Vec<SmallDisk> = (0..3).map(|_| SmallDisk::mount(256)).collect();
    // The disk alarm is off: this is about a disk that fills between two checks.
    let mut nodes = three_nodes_with(dir.path(), "disk_free_limit.absolute = 0\n");
    for (n, d) in nodes.iter_mut().zip(&disks) {
        n.data = d.path().join("data");
    }
    let first = start_seeded(&mut nodes).await;
    let body = |prefix: &str, i: usize| {
        let mut b = format!("{prefix}{i} ");
        b.extend(std::iter::repeat_n('.', BODY_BYTES - b.len()));
        b
    };

    // The queue has a Raft group of its own, led by one of its three voters: that node's
    // disk fills.
    let c = nodes[first].amqp("guest", "guest", "/").await.unwrap();
    c.create_channel().await.unwrap().queue_declare("full".into(), DURABLE, quorum_args()).await.unwrap();
    let mut leader = String::new();
    crate::cluster_fixture::wait_for("the queue's group has a leader", Duration::from_secs(20), || {
        let q = nodes[first].try_api("/api/queues/%2f/full")?;
        leader = q["leader"].as_str().unwrap_or_default().to_owned();
        let members = q["members"].as_array().map_or(0, Vec::len);
        if members == 3 && !leader.is_empty() { Ok(()) } else { Err(format!("{q}")) }
    });
    let l = nodes.iter().position(|n| n.full == leader).expect("the queue's leader is a node");
    let others: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    let c = nodes[l].amqp("guest", "guest", "/").await.unwrap();
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let (warm, refused) = publish_all(&ch, "full", &(0..20).map(|i| body("warm", i)).collect::<Vec<_>>()).await;
    assert!(!refused && warm.len() == 20, "publishes before the disk fills are confirmed");

    let leader_disk = disks[l].path();
    resize(leader_disk, used_bytes(leader_disk) + ROOM_BYTES);
    let bodies: Vec<String> = (0..PUBLISHES).map(|i| body("m", i)).collect();
    let (acked, refused) = publish_all(&ch, "full", &bodies).await;
    assert!(refused, "the leader kept confirming with its disk full ({} acked)", acked.len());
    assert!(acked.len() < PUBLISHES, "not everything was confirmed");
    let log = nodes[l].proc.as_ref().unwrap().log();
    assert!(log.contains("No space left on device"), "the leader logs why it stopped:\n{log}");
    // It says so: the queue's group stopped on it, which no longer leads the queue.
    crate::cluster_fixture::wait_for("the broker's own line about it", Duration::from_secs(10), || {
        let log = nodes[l].proc.as_ref().unwrap().log();
        if log.contains("a Raft group's core stopped") { Ok(()) } else { Err(log) }
    });
    let q = nodes[l].api("/api/queues/%2f/full");
    assert_ne!(q["leader"].as_str(), Some(nodes[l].full.as_str()), "{q}");

    // The two others go on: a leader among them takes publishes.
    let o = others[0];
    let c2 = nodes[o].amqp("guest", "guest", "/").await.unwrap();
    let after: Vec<String> = (0..20).map(|i| body("after", i)).collect();
    let mut confirmed_after = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ch2 = c2.create_channel().await.unwrap();
        ch2.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let (ok, refused) = publish_all(&ch2, "full", &after).await;
        confirmed_after.extend(ok);
        if !refused {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no leader took publishes within 60 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every acked body is delivered (from a node whose disk has room).
    let want: BTreeSet<String> = warm.iter().chain(&acked).chain(&confirmed_after).cloned().collect();
    let consumer = nodes[others[1]].amqp("guest", "guest", "/").await.unwrap().create_channel().await.unwrap();
    let (got, _) = consume_all(&consumer, "full", &want, Duration::from_secs(60)).await;
    let got: BTreeSet<String> = got.into_iter().collect();
    let lost: Vec<&String> = want.difference(&got).take(3).collect();
    assert!(lost.is_empty(), "{} confirmed messages lost (first: {lost:?})", want.difference(&got).count());

    // Space returns: the old leader restarts from its own log and agrees with the others.
    drop(c);
    resize(leader_disk, 256 * 1024 * 1024);
    nodes[l].kill();
    nodes[l].start();
    let leader_of =
        |n: &crate::cluster_fixture::Node| n.api("/api/queues/%2f/full")["leader"].as_str().map(str::to_owned);
    eventually("the restarted node follows the others' leader of the queue", Duration::from_secs(60), || {
        let (mine, theirs) = (leader_of(&nodes[l]), leader_of(&nodes[o]));
        async move { if mine.is_some() && mine == theirs { Ok(()) } else { Err(format!("{mine:?} vs {theirs:?}")) } }
    })
    .await;
    assert_eq!(nodes[l].api("/api/warren/cluster")["raft_state"], "running");
    // The same replica as the others': a publish nacked while the leader failed may still
    // have been committed (a nack only says "not confirmed"), and the consumer above stopped
    // at the confirmed ones, so the queue need not be empty; every node must hold the same.
    eventually("the restarted node's replica holds what the others' do", Duration::from_secs(60), || {
        let counts: Vec<Option<u64>> =
            nodes.iter().map(|n| n.api("/api/queues/%2f/full")["messages"].as_u64()).collect();
        async move {
            if counts[0].is_some() && counts.iter().all(|c| *c == counts[0]) {
                Ok(())
            } else {
                Err(format!("messages per node: {counts:?}"))
            }
        }
    })
    .await;
}
