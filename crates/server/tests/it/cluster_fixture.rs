//! The harness of the cluster tests (`cluster`, `chaos`, `qq_features`): three real
//! `warren` processes on 127.0.0.1 (free ports, temp dirs) whose config files name all
//! three in `cluster_formation.classic_config.nodes`, started until they agree on a leader,
//! and the lapin and `rabbitmq_http_client` helpers those tests share.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lapin::{Connection, ConnectionProperties};
use rabbitmq_http_client::api::Client;
use serde_json::Value;

use crate::common::WarrenProcess;

pub(crate) type Http = Client<String, &'static str, &'static str>;

pub(crate) struct Node {
    /// `NAME@127.0.0.1` as given to `--node-name`; the cluster name adds `:PORT`.
    pub(crate) short: String,
    pub(crate) full: String,
    pub(crate) data: PathBuf,
    pub(crate) conf: PathBuf,
    /// The management API's TCP port, picked afresh at each start (as the AMQP port is):
    /// one picked once could be taken by another test before a restart.
    pub(crate) mgmt: u16,
    /// The Prometheus port, picked afresh at each start too.
    pub(crate) prom: u16,
    /// `$HOME` of the process: where a node without `warren.cluster_cookie` finds (or
    /// creates) its cookie file, `.erlang.cookie` — the test's directory, never the real one.
    pub(crate) home: PathBuf,
    pub(crate) proc: Option<WarrenProcess>,
    /// More environment for the process (e.g. the mixed-version test hooks).
    pub(crate) env: Vec<(String, String)>,
}

impl Node {
    /// Node n`i+1` (`i` from 0) named `full` in the cluster, with its data under `dir` and
    /// its config file `conf`; not started.
    pub(crate) fn new(dir: &Path, i: usize, full: &str, conf: PathBuf) -> Node {
        Node {
            short: format!("n{}@127.0.0.1", i + 1),
            full: full.to_owned(),
            data: dir.join(format!("n{}", i + 1)),
            conf,
            mgmt: 0,
            prom: 0,
            home: dir.to_owned(),
            proc: None,
            env: Vec::new(),
        }
    }

    pub(crate) fn start(&mut self) {
        // Ports picked free can be taken by a parallel test before warren binds them:
        // try again with others.
        for attempt in 1.. {
            let args = self.start_args();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            match self.try_spawn(&args) {
                Ok(p) => {
                    self.proc = Some(p);
                    return;
                }
                Err(e) if attempt < 5 && e.contains("Address already in use") => continue,
                Err(e) => panic!("{}: {e}", self.full),
            }
        }
    }

    /// The process with this node's `$HOME` (and no cookie from the test's environment).
    pub(crate) fn spawn(&self, args: &[&str]) -> WarrenProcess {
        self.try_spawn(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::spawn`], or why the process exited before it accepted connections.
    pub(crate) fn try_spawn(&self, args: &[&str]) -> Result<WarrenProcess, String> {
        let mut env = vec![("HOME", Some(self.home.as_os_str())), ("RABBITMQ_ERLANG_COOKIE", None)];
        env.extend(self.env.iter().map(|(k, v)| (k.as_str(), Some(std::ffi::OsStr::new(v.as_str())))));
        WarrenProcess::try_start_env(&self.data, None, args, &env)
    }

    /// The arguments [`Self::start`] runs `warren` with (ports picked afresh).
    pub(crate) fn start_args(&mut self) -> Vec<String> {
        self.mgmt = free_port();
        self.prom = free_port();
        let conf = self.conf.to_str().unwrap().to_owned();
        ["--config", &conf, "--node-name", &self.short, "--management-port", &self.mgmt.to_string()]
            .into_iter()
            .map(str::to_owned)
            .chain(["--prometheus-port".to_owned(), self.prom.to_string()])
            .collect()
    }

    /// `rabbitmq_http_client` on this node's API, as guest.
    pub(crate) fn http(&self) -> Http {
        Client::new(format!("http://127.0.0.1:{}/api", self.mgmt), "guest", "guest")
    }

    /// A lapin connection to this node as `user` into `vhost`.
    pub(crate) async fn amqp(&self, user: &str, pass: &str, vhost: &str) -> Result<Connection, lapin::Error> {
        let port = self.proc.as_ref().expect("running").port;
        let vhost = vhost.replace('/', "%2f");
        let uri = format!("amqp://{user}:{pass}@127.0.0.1:{port}/{vhost}?heartbeat=0");
        Connection::connect(&uri, ConnectionProperties::default()).await
    }

    pub(crate) fn kill(&mut self) {
        // WarrenProcess's drop is kill -9.
        self.proc = None;
    }

    pub(crate) fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let o = Command::new(env!("CARGO_BIN_EXE_warrenctl"))
            .args(args)
            .env("WARREN_DATA_DIR", &self.data)
            .output()
            .expect("run warrenctl");
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// `warrenctl cluster_status --formatter json`, None while the node does not answer.
    pub(crate) fn status(&self) -> Option<Value> {
        let (code, out, _) = self.ctl(&["-q", "--formatter", "json", "cluster_status"]);
        if code != 0 {
            return None;
        }
        serde_json::from_str(&out).ok()
    }

    /// `GET path` on the node's management API through its control socket.
    pub(crate) fn api(&self, path: &str) -> Value {
        self.try_api(path).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::api`], with an answer other than 200 (e.g. 404: a queue this node has not
    /// applied the declaration of yet) as an error, for the waits that retry.
    pub(crate) fn try_api(&self, path: &str) -> Result<Value, String> {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(self.data.join("warren.sock")).expect("control socket");
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!("GET {path}: {head}"));
        }
        Ok(serde_json::from_str(body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}")))
    }
}

pub(crate) fn names(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = v.as_array().into_iter().flatten().filter_map(|x| x.as_str().map(str::to_owned)).collect();
    n.sort();
    n
}

/// Poll `f` until it holds (every 100 ms), at most `limit`.
pub(crate) fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("{what}: not within {limit:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A port that was free a moment ago, below the kernel's ephemeral range (32768–60999
/// here): a port from that range (what binding port 0 gives) can be taken by any test's
/// outbound connection before the node binds it, and a cluster node's port is written
/// into its name, so its start cannot simply retry with another.
///
/// The port is also reserved for the rest of this test process: nextest runs every test
/// in a process of its own, and without a reservation another test could pick the same
/// number while a node is down between a kill and its restart, or between the pick and
/// the bind. The reservation is an exclusive lock on a file named after the port, held
/// until the process exits (the kernel drops it even on a crash).
pub(crate) fn free_port() -> u16 {
    use std::sync::Mutex;
    /// Ports tried: under the ephemeral range, above the well-known and common ones.
    const LOW: u16 = 20_000;
    const HIGH: u16 = 32_000;
    /// The locks held: dropping one would release its port.
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("warren-it-ports");
    std::fs::create_dir_all(&dir).expect("the port reservation directory");
    loop {
        let port = fastrand::u16(LOW..HIGH);
        let Ok(lock) =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(port.to_string()))
        else {
            continue;
        };
        if lock.try_lock().is_err() {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            HELD.lock().unwrap_or_else(|e| e.into_inner()).push(lock);
            return port;
        }
    }
}

pub(crate) fn three_nodes(dir: &Path) -> Vec<Node> {
    three_nodes_with(dir, "")
}

/// Three nodes whose config files also hold `extra`.
pub(crate) fn three_nodes_with(dir: &Path, extra: &str) -> Vec<Node> {
    let ports = [free_port(), free_port(), free_port()];
    let full: Vec<String> = ports.iter().enumerate().map(|(i, p)| format!("n{}@127.0.0.1:{p}", i + 1)).collect();
    let mut conf = format!("cluster_formation.peer_discovery_backend = classic_config\n{extra}");
    for (i, n) in full.iter().enumerate() {
        conf.push_str(&format!("cluster_formation.classic_config.nodes.{} = {n}\n", i + 1));
    }
    (0..3)
        .map(|i| {
            let conf_path = dir.join(format!("n{}.conf", i + 1));
            std::fs::write(&conf_path, &conf).unwrap();
            Node::new(dir, i, &full[i], conf_path)
        })
        .collect()
}

/// A fourth node, n4, with no node list (a node `join_cluster` can add): only its
/// inter-node listener on a free port (its name adds that port), and `extra`; not started.
pub(crate) fn joiner(dir: &Path, extra: &str) -> Node {
    let port = free_port();
    let conf = dir.join("n4.conf");
    std::fs::write(&conf, format!("warren.cluster_listen = 127.0.0.1:{port}\n{extra}")).unwrap();
    Node::new(dir, 3, &format!("n4@127.0.0.1:{port}"), conf)
}

/// Every node in `up` reports `expect_running` as running, all three as members, and one
/// leader they agree on (which is running); returns it.
pub(crate) fn agreed_status(nodes: &[Node], up: &[usize], expect_running: &[String]) -> Result<String, String> {
    let all: Vec<String> = {
        let mut a: Vec<String> = nodes.iter().map(|n| n.full.clone()).collect();
        a.sort();
        a
    };
    let mut leader: Option<String> = None;
    for &i in up {
        let s = nodes[i].status().ok_or_else(|| format!("{} does not answer", nodes[i].full))?;
        if names(&s["disk_nodes"]) != all {
            return Err(format!("{}: disk_nodes {}", nodes[i].full, s["disk_nodes"]));
        }
        if names(&s["running_nodes"]) != expect_running {
            return Err(format!("{}: running_nodes {}", nodes[i].full, s["running_nodes"]));
        }
        let l = s["leader"].as_str().ok_or_else(|| format!("{}: no leader", nodes[i].full))?.to_owned();
        if !expect_running.contains(&l) {
            return Err(format!("{}: leader {l} is not running", nodes[i].full));
        }
        if leader.as_ref().is_some_and(|x| *x != l) {
            return Err(format!("leaders differ: {leader:?} and {l}"));
        }
        leader = Some(l);
    }
    leader.ok_or_else(|| "no node up".to_owned())
}

/// Poll `f` until it holds (every 100 ms), at most `limit` (async).
pub(crate) async fn eventually<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match f().await {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("{what}: not within {limit:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The nodes' cluster names, sorted (as `cluster_status` lists them).
pub(crate) fn member_names(nodes: &[Node]) -> Vec<String> {
    let mut all: Vec<String> = nodes.iter().map(|n| n.full.clone()).collect();
    all.sort();
    all
}

/// Start every node and wait until all run and agree on one leader; returns the sorted
/// member names and the leader's.
pub(crate) fn start_and_elect(nodes: &mut [Node]) -> (Vec<String>, String) {
    for n in nodes.iter_mut() {
        n.start();
    }
    let all = member_names(nodes);
    let up: Vec<usize> = (0..nodes.len()).collect();
    let mut leader = String::new();
    wait_for("all running and one leader", Duration::from_secs(20), || {
        leader = agreed_status(nodes, &up, &all)?;
        Ok(())
    });
    (all, leader)
}

/// [`start_and_elect`], then wait for the seed (guest, `/`) on every node; returns the
/// leader's index.
pub(crate) async fn start_seeded(nodes: &mut [Node]) -> usize {
    let (_, leader) = start_and_elect(nodes);
    for n in nodes.iter() {
        eventually("the seeded guest user on every node", Duration::from_secs(20), || async {
            n.http().current_user().await.map(drop).map_err(|e| format!("{}: {e}", n.full))
        })
        .await;
    }
    nodes.iter().position(|n| n.full == leader).expect("the leader is one of the nodes")
}

/// Start three nodes with `extra` config; wait for a leader and for the seed (guest, `/`)
/// on every node. Returns the nodes and the index of a follower.
pub(crate) async fn started_cluster(dir: &Path, extra: &str) -> (Vec<Node>, usize) {
    let mut nodes = three_nodes_with(dir, extra);
    let leader = start_seeded(&mut nodes).await;
    let follower = (0..nodes.len()).find(|&i| i != leader).unwrap();
    (nodes, follower)
}

/// The index of the node the others say leads now.
pub(crate) fn leader(nodes: &[Node]) -> usize {
    let name = nodes.iter().find_map(|n| n.status().and_then(|s| s["leader"].as_str().map(str::to_owned)));
    nodes.iter().position(|n| Some(&n.full) == name.as_ref()).expect("a leader among the nodes")
}

pub(crate) fn reply_code(e: &lapin::Error) -> Option<u16> {
    crate::durability::reply_code(e)
}

/// Publish `n` messages `{prefix}{i}` with confirms on `ch`; returns the bodies confirmed
/// (acked). Stops at the first channel error (the node went away).
pub(crate) async fn publish_confirmed(ch: &lapin::Channel, queue: &str, prefix: &str, n: usize) -> Vec<String> {
    use lapin::options::BasicPublishOptions;
    let mut confirmed = Vec::new();
    let props = lapin::BasicProperties::default().with_delivery_mode(2);
    let mut waits = Vec::new();
    for i in 0..n {
        let body = format!("{prefix}{i}");
        match ch
            .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body.as_bytes(), props.clone())
            .await
        {
            Ok(c) => waits.push((body, c)),
            Err(_) => break,
        }
    }
    for (body, c) in waits {
        if c.await.is_ok_and(|c| c.is_ack()) {
            confirmed.push(body);
        }
    }
    confirmed
}

/// Consume from `queue` on `ch` until `want` distinct bodies arrived or `limit` passed;
/// acks everything. Returns (bodies in arrival order, the bodies that came redelivered).
pub(crate) async fn consume_all(
    ch: &lapin::Channel,
    queue: &str,
    want: &std::collections::BTreeSet<String>,
    limit: Duration,
) -> (Vec<String>, Vec<String>) {
    use futures_lite::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    ch.basic_qos(50, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), lapin::types::FieldTable::default())
        .await
        .unwrap();
    let (mut got, mut redelivered) = (Vec::new(), Vec::new());
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + limit;
    while !want.is_subset(&seen) && Instant::now() < deadline {
        let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await else { continue };
        let body = String::from_utf8(d.data.clone()).unwrap();
        if d.redelivered {
            redelivered.push(body.clone());
        }
        d.ack(BasicAckOptions::default()).await.unwrap();
        seen.insert(body.clone());
        got.push(body);
    }
    (got, redelivered)
}

pub(crate) fn quorum_args() -> lapin::types::FieldTable {
    let mut args = lapin::types::FieldTable::default();
    args.insert("x-queue-type".into(), lapin::types::AMQPValue::LongString("quorum".into()));
    args
}
