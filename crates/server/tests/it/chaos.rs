//! Quorum queues under faults between real processes (issue 15): a partition cut by TCP
//! fault proxies between the nodes, a rolling restart under load, and a fourth node that
//! joins and receives the queue. lapin is the client; the harness is `cluster_fixture`.
//!
//! The partition: node i's inter-node listener is `warren.cluster_listen = 127.0.0.1:Qi`,
//! while the address the others dial (its `classic_config` entry) is `127.0.0.1:Pi`, where a
//! [`FaultProxy`] forwards to Qi. Each node binds its outbound inter-node connections to
//! `127.0.0.(i+1)` (`warren.cluster_source_ip`), so a proxy can tell who dials it. Cutting
//! node X off = X's proxy drops everything, and the others' proxies drop X's source.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use tokio::net::{TcpListener, TcpStream};

use crate::cluster_fixture::{
    Node, agreed_status, consume_all, eventually, free_port, joiner, publish_confirmed, quorum_args, start_seeded,
    three_nodes_with, wait_for,
};

/// What a proxy drops: everything, or connections from these source addresses.
#[derive(Default)]
struct Cut {
    all: bool,
    from: HashSet<IpAddr>,
}

impl Cut {
    fn drops(&self, ip: IpAddr) -> bool {
        self.all || self.from.contains(&ip)
    }
}

/// A TCP forwarder from `port` to `target` that can refuse and sever connections: new
/// ones it drops are closed at once; established ones it drops are aborted (both sockets
/// closed), so a partition starts now, not at the next reconnect.
pub(crate) struct FaultProxy {
    pub(crate) port: u16,
    cut: Arc<Mutex<Cut>>,
    links: Arc<Mutex<Vec<(IpAddr, tokio::task::AbortHandle)>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listen on a free port of 127.0.0.1, forward to `127.0.0.1:target`.
    pub(crate) async fn start(target: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut: Arc<Mutex<Cut>> = Arc::default();
        let links: Arc<Mutex<Vec<(IpAddr, tokio::task::AbortHandle)>>> = Arc::default();
        let (c, l) = (cut.clone(), links.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, from)) = listener.accept().await {
                if c.lock().unwrap().drops(from.ip()) {
                    continue; // dropped: closed
                }
                let task = tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
                let mut l = l.lock().unwrap();
                l.retain(|(_, t)| !t.is_finished());
                l.push((from.ip(), task.abort_handle()));
            }
        });
        FaultProxy { port, cut, links, accept }
    }

    /// Drop everything (`all`) and/or connections from `from`; sever the matching links.
    pub(crate) fn set(&self, all: bool, from: &[IpAddr]) {
        let mut cut = self.cut.lock().unwrap();
        cut.all = all;
        cut.from = from.iter().copied().collect();
        for (ip, task) in self.links.lock().unwrap().iter() {
            if cut.drops(*ip) {
                task.abort();
            }
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for (_, t) in self.links.lock().unwrap().iter() {
            t.abort();
        }
    }
}

/// The outbound source address of node `i` (0-based).
fn source(i: usize) -> IpAddr {
    format!("127.0.0.{}", i + 2).parse().unwrap()
}

/// Three nodes behind fault proxies (see the module doc), each config with `extra` too.
async fn proxied_nodes(dir: &Path, extra: &str) -> (Vec<Node>, Vec<FaultProxy>) {
    let listen = [free_port(), free_port(), free_port()];
    let mut proxies = Vec::new();
    for q in listen {
        proxies.push(FaultProxy::start(q).await);
    }
    let full: Vec<String> =
        proxies.iter().enumerate().map(|(i, p)| format!("n{}@127.0.0.1:{}", i + 1, p.port)).collect();
    let mut nodes_conf = String::from("cluster_formation.peer_discovery_backend = classic_config\n");
    for (i, n) in full.iter().enumerate() {
        nodes_conf.push_str(&format!("cluster_formation.classic_config.nodes.{} = {n}\n", i + 1));
    }
    let nodes = (0..3)
        .map(|i| {
            let conf = dir.join(format!("n{}.conf", i + 1));
            let own =
                format!("warren.cluster_listen = 127.0.0.1:{}\nwarren.cluster_source_ip = {}\n", listen[i], source(i));
            std::fs::write(&conf, format!("{nodes_conf}{own}{extra}")).unwrap();
            Node::new(dir, i, &full[i], conf)
        })
        .collect();
    (nodes, proxies)
}

/// Cut node `x` off from the others (or heal everything).
fn partition(proxies: &[FaultProxy], x: Option<usize>) {
    for (i, p) in proxies.iter().enumerate() {
        match x {
            None => p.set(false, &[]),
            Some(x) if x == i => p.set(true, &[]),
            Some(x) => p.set(false, &[source(x)]),
        }
    }
}

/// A connection to `n`, retried while the node starts (at most `limit`).
async fn connect(n: &Node, limit: Duration) -> lapin::Connection {
    let deadline = Instant::now() + limit;
    loop {
        match n.amqp("guest", "guest", "/").await {
            Ok(c) => return c,
            Err(e) if Instant::now() >= deadline => panic!("{}: no connection: {e}", n.full),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// `queue`'s message count on `n` (a passive declare), None on an error.
async fn message_count(n: &Node, queue: &str) -> Option<u32> {
    let c = n.amqp("guest", "guest", "/").await.ok()?;
    let ch = c.create_channel().await.ok()?;
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    let q = ch.queue_declare(queue.into(), passive, lapin::types::FieldTable::default()).await.ok();
    let _ = c.close(200, "bye".into()).await;
    Some(q?.message_count())
}

/// Wait until every node in `nodes` reports the same count of `queue` twice in a row
/// (quiet); returns it.
async fn agreed_count(nodes: &[&Node], queue: &str, limit: Duration) -> u32 {
    let deadline = Instant::now() + limit;
    let mut last: Option<Vec<Option<u32>>> = None;
    loop {
        let mut counts = Vec::new();
        for n in nodes {
            counts.push(message_count(n, queue).await);
        }
        let same = counts[0].is_some() && counts.iter().all(|c| *c == counts[0]);
        if same && last.as_ref() == Some(&counts) {
            return counts[0].unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "replicas do not agree on {queue}'s message count within {limit:?}: {counts:?}"
        );
        last = Some(counts);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn declare_quorum(c: &lapin::Connection, queue: &str) {
    let ch = c.create_channel().await.unwrap();
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    ch.queue_declare(queue.into(), durable, quorum_args()).await.unwrap();
}

async fn confirm_channel(c: &lapin::Connection) -> lapin::Channel {
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    ch
}

/// Consume every message of `queue` on `n` until it has been quiet for a while; bodies in
/// arrival order.
async fn drain(n: &Node, queue: &str, want: &BTreeSet<String>, limit: Duration) -> Vec<String> {
    let c = connect(n, Duration::from_secs(10)).await;
    let ch = c.create_channel().await.unwrap();
    let (got, _) = consume_all(&ch, queue, want, limit).await;
    let _ = c.close(200, "bye".into()).await;
    got
}

fn assert_delivered(confirmed: &BTreeSet<String>, got: &[String], what: &str) {
    let seen: BTreeSet<String> = got.iter().cloned().collect();
    let lost: Vec<&String> = confirmed.difference(&seen).collect();
    assert!(
        lost.is_empty(),
        "{what}: {} of {} confirmed lost, e.g. {:?}",
        lost.len(),
        confirmed.len(),
        &lost[..lost.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_stops_confirming_and_heals_without_divergence() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // Quick queue failover: the majority must elect its queue leader within the rounds below.
    let conf = "warren.cluster_write_timeout_ms = 1500\nwarren.quorum_queue_heartbeat_ms = 100\n";
    let (mut nodes, proxies) = proxied_nodes(dir.path(), conf).await;
    let x = start_seeded(&mut nodes).await;
    let m = (0..3).find(|&i| i != x).unwrap();
    let cx = connect(&nodes[x], Duration::from_secs(5)).await;
    declare_quorum(&cx, "qp").await;
    let cm = connect(&nodes[m], Duration::from_secs(5)).await;
    let (chx, chm) = (confirm_channel(&cx).await, confirm_channel(&cm).await);
    let mut confirmed: BTreeSet<String> = publish_confirmed(&chx, "qp", "before-", 50).await.into_iter().collect();
    assert_eq!(confirmed.len(), 50, "all confirmed before the cut");

    // Cut the leader off. Its publisher gets no ack (a nack after the write timeout); the
    // majority elects a leader and confirms its own publisher.
    partition(&proxies, Some(x));
    let cut_at = Instant::now();
    let minority = tokio::spawn({
        let chx = chx.clone();
        async move {
            let props = lapin::BasicProperties::default().with_delivery_mode(2);
            // All 20 in flight at once: each is nacked after the write timeout.
            let mut waits = Vec::new();
            for i in 0..20 {
                let body = format!("minority-{i}");
                match chx
                    .basic_publish(
                        "".into(),
                        "qp".into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        props.clone(),
                    )
                    .await
                {
                    Ok(c) => waits.push(c),
                    Err(_) => break,
                }
            }
            let (mut acks, mut nacks) = (0, 0);
            for c in waits {
                match tokio::time::timeout(Duration::from_secs(5), c).await {
                    Ok(Ok(c)) if c.is_ack() => acks += 1,
                    _ => nacks += 1,
                }
            }
            (acks, nacks)
        }
    });
    let mut majority = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut round = 0;
    while Instant::now() < deadline {
        majority.extend(publish_confirmed(&chm, "qp", &format!("majority{round}-"), 20).await);
        round += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(majority.len() >= 20, "the majority confirms its publisher: {} confirmed", majority.len());
    confirmed.extend(majority.iter().cloned());
    // The minority's publisher (done by now, while the cut holds): nothing acked.
    let (acks, nacks) = minority.await.unwrap();
    assert_eq!(acks, 0, "the cut-off node confirmed {acks} publishes ({nacks} not)");
    assert!(nacks > 0);
    eprintln!("cut for {:?}: majority confirmed {}, minority nacked {nacks}", cut_at.elapsed(), majority.len());

    // Heal: the old leader rejoins; its publisher confirms again; every replica agrees.
    partition(&proxies, None);
    let mut all: Vec<String> = nodes.iter().map(|n| n.full.clone()).collect();
    all.sort();
    wait_for("all three running after the heal", Duration::from_secs(20), || {
        agreed_status(&nodes, &[0, 1, 2], &all).map(|_| ())
    });
    let cx = connect(&nodes[x], Duration::from_secs(5)).await;
    let chx = confirm_channel(&cx).await;
    let after = publish_confirmed(&chx, "qp", "after-", 20).await;
    assert_eq!(after.len(), 20, "the healed node confirms again");
    confirmed.extend(after);
    let count = agreed_count(&[&nodes[0], &nodes[1], &nodes[2]], "qp", Duration::from_secs(20)).await;
    assert!(count as usize >= confirmed.len(), "{count} ready < {} confirmed", confirmed.len());

    let other = (0..3).find(|&i| i != x && i != m).unwrap();
    let got = drain(&nodes[other], "qp", &confirmed, Duration::from_secs(20)).await;
    assert_delivered(&confirmed, &got, "after the partition");
    let distinct: BTreeSet<&String> = got.iter().collect();
    assert_eq!(distinct.len(), got.len(), "no message delivered twice");
    assert_eq!(got.len(), count as usize, "the consumer got what every replica counted");
    // Nothing of the minority's cut-off publishes is required; say what became of them.
    let extra = got.iter().filter(|b| b.starts_with("minority-")).count();
    eprintln!(
        "partition test: {} confirmed, {extra} nacked minority publishes delivered, {:?}",
        confirmed.len(),
        started.elapsed()
    );
}

/// Publish with confirms in rounds of 10 to whichever node answers (starting after the
/// last one used) until `stop`; returns the confirmed bodies.
async fn roaming_publisher(
    ports: Arc<Mutex<Vec<Option<u16>>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> BTreeSet<String> {
    use std::sync::atomic::Ordering;
    let mut confirmed = BTreeSet::new();
    let (mut next, mut round) = (0usize, 0usize);
    while !stop.load(Ordering::Acquire) {
        next += 1;
        let port = ports.lock().unwrap()[next % 3];
        let Some(port) = port else { continue };
        let uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f?heartbeat=0");
        let Ok(Ok(c)) =
            tokio::time::timeout(Duration::from_secs(2), lapin::Connection::connect(&uri, Default::default())).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(ch) = c.create_channel().await else { continue };
        if ch.confirm_select(ConfirmSelectOptions::default()).await.is_err() {
            continue;
        }
        while !stop.load(Ordering::Acquire) {
            let prefix = format!("r{round}-");
            round += 1;
            let batch = tokio::time::timeout(Duration::from_secs(15), publish_confirmed(&ch, "qr", &prefix, 10)).await;
            let Ok(batch) = batch else { break };
            let short = batch.len() < 10;
            confirmed.extend(batch);
            if short || !c.status().connected() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = c.close(200, "bye".into()).await;
    }
    confirmed
}

/// Consume with acks from whichever node answers until `stop`; returns the bodies acked.
async fn roaming_consumer(
    ports: Arc<Mutex<Vec<Option<u16>>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<String> {
    use futures_lite::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    use std::sync::atomic::Ordering;
    let mut got = Vec::new();
    let mut next = 1usize;
    while !stop.load(Ordering::Acquire) {
        next += 1;
        let port = ports.lock().unwrap()[next % 3];
        let Some(port) = port else { continue };
        let uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f?heartbeat=0");
        let Ok(Ok(c)) =
            tokio::time::timeout(Duration::from_secs(2), lapin::Connection::connect(&uri, Default::default())).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(ch) = c.create_channel().await else { continue };
        let _ = ch.basic_qos(20, BasicQosOptions::default()).await;
        let Ok(mut consumer) =
            ch.basic_consume("qr".into(), "".into(), BasicConsumeOptions::default(), Default::default()).await
        else {
            continue;
        };
        while !stop.load(Ordering::Acquire) {
            match tokio::time::timeout(Duration::from_millis(500), consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    if d.ack(BasicAckOptions::default()).await.is_err() {
                        break;
                    }
                    got.push(String::from_utf8(d.data.clone()).unwrap());
                }
                Ok(_) => break,
                Err(_) if !c.status().connected() => break,
                Err(_) => {}
            }
        }
        let _ = c.close(200, "bye".into()).await;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_no_confirmed_message() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes_with(dir.path(), "warren.cluster_write_timeout_ms = 3000\n");
    start_seeded(&mut nodes).await;
    let c = connect(&nodes[0], Duration::from_secs(5)).await;
    declare_quorum(&c, "qr").await;
    let _ = c.close(200, "bye".into()).await;
    let ports = Arc::new(Mutex::new(nodes.iter().map(|n| n.proc.as_ref().map(|p| p.port)).collect::<Vec<_>>()));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(roaming_publisher(ports.clone(), stop.clone()));
    let consumer = tokio::spawn(roaming_consumer(ports.clone(), stop.clone()));
    let mut all: Vec<String> = nodes.iter().map(|n| n.full.clone()).collect();
    all.sort();

    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        ports.lock().unwrap()[i] = None;
        let code = nodes[i].proc.as_mut().unwrap().terminate(Duration::from_secs(10));
        assert_eq!(code, Some(0), "SIGTERM: {}", nodes[i].proc.as_ref().unwrap().log());
        nodes[i].proc = None;
        tokio::time::sleep(Duration::from_millis(500)).await;
        nodes[i].start();
        wait_for("all three running again", Duration::from_secs(20), || {
            agreed_status(&nodes, &[0, 1, 2], &all).map(|_| ())
        });
        let _ = connect(&nodes[i], Duration::from_secs(10)).await;
        ports.lock().unwrap()[i] = nodes[i].proc.as_ref().map(|p| p.port);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Release);
    let confirmed = publisher.await.unwrap();
    let mut got = consumer.await.unwrap();
    assert!(confirmed.len() >= 100, "publishing went on through the restarts: {} confirmed", confirmed.len());
    let rest: BTreeSet<String> = confirmed.difference(&got.iter().cloned().collect()).cloned().collect();
    got.extend(drain(&nodes[1], "qr", &rest, Duration::from_secs(20)).await);
    let missing = confirmed.difference(&got.iter().cloned().collect()).count();
    if missing > 0 {
        // For the failure message: are they stuck (counted as ready/held) or gone?
        let mut counts = Vec::new();
        for n in &nodes {
            counts.push(message_count(n, "qr").await);
        }
        let logs: Vec<String> = nodes.iter().map(|n| n.proc.as_ref().unwrap().log()).collect();
        eprintln!("{missing} missing; ready counts per node {counts:?}; node logs:\n{}", logs.join("\n----\n"));
    }
    assert_delivered(&confirmed, &got, "after the rolling restart");
    eprintln!("rolling restart: {} confirmed, {} delivered, {:?}", confirmed.len(), got.len(), started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_that_joins_receives_the_quorum_queue() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes_with(dir.path(), "");
    start_seeded(&mut nodes).await;
    let c = connect(&nodes[0], Duration::from_secs(5)).await;
    declare_quorum(&c, "qj").await;
    let ch = confirm_channel(&c).await;
    let sent = publish_confirmed(&ch, "qj", "j", 100).await;
    assert_eq!(sent.len(), 100);

    let mut n4 = joiner(dir.path(), "");
    n4.start();
    let (code, out, err) = nodes[1].ctl(&["join_cluster", &n4.full]);
    assert_eq!(code, 0, "{out}{err}");
    // Published after the join too: it replicates to the new member as it happens.
    let later = publish_confirmed(&ch, "qj", "k", 20).await;
    assert_eq!(later.len(), 20);
    let want = 120;
    eventually("the joiner's replica has every message", Duration::from_secs(20), || async {
        match message_count(&n4, "qj").await {
            Some(n) if n == want => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let count = agreed_count(&[&nodes[0], &nodes[1], &nodes[2], &n4], "qj", Duration::from_secs(10)).await;
    assert_eq!(count, want);
    let all: BTreeSet<String> = sent.iter().chain(&later).cloned().collect();
    let got = drain(&n4, "qj", &all, Duration::from_secs(20)).await;
    let expect: Vec<String> = sent.into_iter().chain(later).collect();
    assert_eq!(got, expect, "the joiner's consumer gets every message once, in order");

    // `grow` makes the joiner a voter of the queue (it was a learner): four voters, so
    // with one of the first three killed the queue still has its majority, through n4.
    let (code, out, err) = n4.ctl(&["grow", &n4.full, "all"]);
    assert_eq!(code, 0, "{out}{err}");
    eventually("n4 among qj's voters", Duration::from_secs(20), || async {
        let q = nodes[0].api("/api/queues/%2f/qj");
        let members = q["members"].as_array().map_or(0, |m| m.len());
        let has = q["members"].as_array().is_some_and(|m| m.iter().any(|x| x == n4.full.as_str()));
        if has && members == 4 { Ok(()) } else { Err(q.to_string()) }
    })
    .await;
    nodes[1].kill();
    let c4 = connect(&n4, Duration::from_secs(5)).await;
    let after = publish_confirmed(&confirm_channel(&c4).await, "qj", "v", 10).await;
    assert_eq!(after.len(), 10, "three of four voters confirm");
}
