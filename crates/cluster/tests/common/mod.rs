//! What the cluster crate's integration tests share: in-process nodes on 127.0.0.1, each on
//! its own tokio runtime so that dropping the runtime kills every task of a node at once —
//! the in-process stand-in for kill -9: no clean shutdown, no flush, listener and
//! connections closed by the drop.

#![allow(dead_code)] // each test crate uses its own part

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::{Applier, ClusterNode, Cookie, NodeConfig};
use tokio::runtime::Runtime;

/// The cookie the nodes of these tests share.
pub const COOKIE: &str = "TESTCOOKIE";

/// The test applier: records every command with its index, in order, in memory (so a
/// restarted node starts from its snapshot and the log, as before the applier existed).
#[derive(Default)]
pub struct Recorder {
    pub commands: Mutex<Vec<(u64, Vec<u8>)>>,
    /// Stands for an applier with its own durable storage (the broker's definitions log):
    /// kept across a restart, it reports its last command's index as durable.
    pub durable: bool,
    /// Commands starting with this cannot be applied here (as an older version meets a
    /// newer one's entry): `apply` fails.
    pub refuse: Option<&'static [u8]>,
    /// What the replicated state requires of a member (the broker's enabled feature flags).
    pub required: Vec<String>,
    /// While set, applying a command that starts with `held` waits (a slow state machine).
    pub hold: std::sync::atomic::AtomicBool,
}

impl Applier for Recorder {
    fn apply(&self, index: u64, cmd: &[u8]) -> Result<Vec<u8>, String> {
        if self.refuse.is_some_and(|p| cmd.starts_with(p)) {
            return Err(format!("entry {index} is of a kind this node does not know"));
        }
        while cmd.starts_with(b"held") && self.hold.load(std::sync::atomic::Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.commands.lock().unwrap().push((index, cmd.to_vec()));
        Ok(index.to_string().into_bytes())
    }

    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&*self.commands.lock().unwrap()).unwrap()
    }

    fn restore(&self, _index: u64, data: &[u8]) -> Result<(), String> {
        let commands =
            if data.is_empty() { Vec::new() } else { serde_json::from_slice(data).map_err(|e| e.to_string())? };
        *self.commands.lock().unwrap() = commands;
        Ok(())
    }

    fn durable_index(&self) -> u64 {
        if self.durable { self.commands.lock().unwrap().last().map_or(0, |c| c.0) } else { 0 }
    }

    fn required_features(&self) -> Vec<String> {
        self.required.clone()
    }
}

pub struct TestNode {
    pub name: String,
    pub dir: PathBuf,
    pub rt: Option<Runtime>,
    pub node: Option<ClusterNode>,
    pub recorder: Arc<Recorder>,
}

impl TestNode {
    pub fn start(
        name: &str,
        dir: &Path,
        listener: std::net::TcpListener,
        cluster: &[String],
        snapshot_every: u64,
    ) -> TestNode {
        TestNode::start_with(name, dir, listener, cluster, snapshot_every, Arc::new(Recorder::default()), COOKIE)
    }

    pub fn start_with(
        name: &str,
        dir: &Path,
        listener: std::net::TcpListener,
        cluster: &[String],
        snapshot_every: u64,
        recorder: Arc<Recorder>,
        cookie: &str,
    ) -> TestNode {
        let mut config = NodeConfig::new(name, dir, listener.local_addr().unwrap(), Cookie::new(cookie).unwrap());
        config.cluster_nodes = cluster.to_vec();
        config.snapshot_every_entries = snapshot_every;
        TestNode::start_configured(name, dir, listener, config, recorder)
    }

    pub fn start_with_config(
        name: &str,
        dir: &Path,
        listener: std::net::TcpListener,
        cluster: &[String],
        set: impl FnOnce(&mut NodeConfig),
    ) -> TestNode {
        let mut config = NodeConfig::new(name, dir, listener.local_addr().unwrap(), Cookie::new(COOKIE).unwrap());
        config.cluster_nodes = cluster.to_vec();
        set(&mut config);
        TestNode::start_configured(name, dir, listener, config, Arc::new(Recorder::default()))
    }

    pub fn start_configured(
        name: &str,
        dir: &Path,
        listener: std::net::TcpListener,
        config: NodeConfig,
        recorder: Arc<Recorder>,
    ) -> TestNode {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let node = rt.block_on(async {
            listener.set_nonblocking(true).unwrap();
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            ClusterNode::start_with_listener(config, l, recorder.clone()).await.unwrap()
        });
        TestNode { name: name.to_owned(), dir: dir.to_owned(), rt: Some(rt), node: Some(node), recorder }
    }

    /// Start again from the same data directory and port.
    pub fn restart(name: &str, dir: &Path, cluster: &[String], snapshot_every: u64) -> TestNode {
        let (_, addr) = cluster::parse_node_name(name).unwrap();
        let listener = std::net::TcpListener::bind(addr).unwrap();
        TestNode::start(name, dir, listener, cluster, snapshot_every)
    }

    pub fn node(&self) -> &ClusterNode {
        self.node.as_ref().expect("node is running")
    }

    pub fn on<T>(&self, f: impl Future<Output = T>) -> T {
        self.rt.as_ref().expect("node is running").block_on(f)
    }

    /// kill -9: every task of the node (Raft core, listener, connections) is dropped where it is.
    pub fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            // Drops every task where it stands (no Raft shutdown, no flush) and waits until
            // the worker threads have dropped them, so the listener's port is free again.
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        self.node = None;
    }

    pub fn commands(&self) -> Vec<(u64, Vec<u8>)> {
        self.recorder.commands.lock().unwrap().clone()
    }

    /// A linearizable read: the commands after a read barrier.
    pub fn read_commands(&self) -> Vec<(u64, Vec<u8>)> {
        self.on(self.node().read()).unwrap();
        self.commands()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Bind `n` listeners on free ports and name the nodes after them.
pub fn listeners(n: usize) -> Vec<(String, std::net::TcpListener)> {
    (0..n)
        .map(|i| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            (format!("warren{i}@127.0.0.1:{}", l.local_addr().unwrap().port()), l)
        })
        .collect()
}

pub fn cluster(root: &Path, snapshot_every: u64) -> Vec<TestNode> {
    let ls = listeners(3);
    let names: Vec<String> = ls.iter().map(|(n, _)| n.clone()).collect();
    ls.into_iter()
        .map(|(name, l)| {
            let dir = root.join(&name);
            TestNode::start(&name, &dir, l, &names, snapshot_every)
        })
        .collect()
}

/// Cut node `x` off from the others (`on`), or heal it: it drops traffic to and from each
/// of them, and they drop its.
pub fn cut_off(nodes: &[TestNode], x: usize, on: bool) {
    for (i, n) in nodes.iter().enumerate() {
        if i != x {
            n.node().isolate(&nodes[x].name, on);
            nodes[x].node().isolate(&n.name, on);
        }
    }
}

pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// Wait until the running nodes agree on one leader among them; return its position.
pub fn wait_leader(nodes: &[TestNode], timeout: Duration) -> usize {
    let mut found = 0;
    wait_until("one agreed leader", timeout, || {
        let running: Vec<&TestNode> = nodes.iter().filter(|n| n.node.is_some()).collect();
        let leaders: Vec<Option<String>> = running.iter().map(|n| n.node().leader()).collect();
        let Some(Some(l)) = leaders.first().cloned() else { return false };
        if !leaders.iter().all(|x| x.as_deref() == Some(l.as_str())) {
            return false;
        }
        match nodes.iter().position(|n| n.name == l && n.node.as_ref().is_some_and(|x| x.is_leader())) {
            Some(i) => {
                found = i;
                true
            }
            None => false,
        }
    });
    found
}

pub fn cmd(tag: &str, i: usize) -> Vec<u8> {
    format!("{tag}-{i}").into_bytes()
}

/// Wait until every running node has applied exactly `expect` commands, then check that
/// they hold the same commands at the same indexes.
pub fn assert_converged(nodes: &[&TestNode], expect: usize, timeout: Duration) -> Vec<(u64, Vec<u8>)> {
    wait_until("all nodes applied every command", timeout, || nodes.iter().all(|n| n.commands().len() >= expect));
    let first = nodes[0].commands();
    assert_eq!(first.len(), expect, "{} applied more than was proposed", nodes[0].name);
    for n in &nodes[1..] {
        assert_eq!(n.commands(), first, "{} diverges from {}", n.name, nodes[0].name);
    }
    first
}
