//! Clustering across real processes: three `warren` binaries on 127.0.0.1 (free ports,
//! temp dirs), each with a config file naming all three in
//! `cluster_formation.classic_config.nodes`, form one Raft group; `warrenctl
//! cluster_status` and the management API show members, running members and the leader
//! through a leader kill -9 and its restart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::WarrenProcess;

struct Node {
    /// `NAME@127.0.0.1` as given to `--node-name`; the cluster name adds `:PORT`.
    short: String,
    full: String,
    data: PathBuf,
    conf: PathBuf,
    proc: Option<WarrenProcess>,
}

impl Node {
    fn start(&mut self) {
        let conf = self.conf.to_str().unwrap().to_owned();
        self.proc = Some(WarrenProcess::start(&self.data, None, &["--config", &conf, "--node-name", &self.short]));
    }

    fn kill(&mut self) {
        // WarrenProcess's drop is kill -9.
        self.proc = None;
    }

    fn ctl(&self, args: &[&str]) -> (i32, String, String) {
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
    fn status(&self) -> Option<Value> {
        let (code, out, _) = self.ctl(&["-q", "--formatter", "json", "cluster_status"]);
        if code != 0 {
            return None;
        }
        serde_json::from_str(&out).ok()
    }

    /// `GET path` on the node's management API through its control socket.
    fn api(&self, path: &str) -> Value {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(self.data.join("warren.sock")).expect("control socket");
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }
}

fn names(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = v.as_array().into_iter().flatten().filter_map(|x| x.as_str().map(str::to_owned)).collect();
    n.sort();
    n
}

/// Poll `f` until it holds (every 100 ms), at most `limit`.
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("{what}: not within {limit:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn three_nodes(dir: &Path) -> Vec<Node> {
    let ports = [free_port(), free_port(), free_port()];
    let full: Vec<String> = ports.iter().enumerate().map(|(i, p)| format!("n{}@127.0.0.1:{p}", i + 1)).collect();
    let mut conf = String::from("cluster_formation.peer_discovery_backend = classic_config\n");
    for (i, n) in full.iter().enumerate() {
        conf.push_str(&format!("cluster_formation.classic_config.nodes.{} = {n}\n", i + 1));
    }
    (0..3)
        .map(|i| {
            let conf_path = dir.join(format!("n{}.conf", i + 1));
            std::fs::write(&conf_path, &conf).unwrap();
            Node {
                short: format!("n{}@127.0.0.1", i + 1),
                full: full[i].clone(),
                data: dir.join(format!("n{}", i + 1)),
                conf: conf_path,
                proc: None,
            }
        })
        .collect()
}

/// Every node in `up` reports `expect_running` as running, all three as members, and one
/// leader they agree on (which is running); returns it.
fn agreed_status(nodes: &[Node], up: &[usize], expect_running: &[String]) -> Result<String, String> {
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

#[test]
fn three_processes_form_a_cluster_and_survive_a_leader_kill() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(dir.path());
    for n in nodes.iter_mut() {
        n.start();
    }
    let mut all: Vec<String> = nodes.iter().map(|n| n.full.clone()).collect();
    all.sort();
    let mut leader = String::new();
    wait_for("three running nodes and one leader", Duration::from_secs(20), || {
        leader = agreed_status(&nodes, &[0, 1, 2], &all)?;
        Ok(())
    });
    // The cluster is named after the node that formed it (the first in sort order).
    let s = nodes[1].status().unwrap();
    assert_eq!(s["cluster_name"], all[0].as_str());
    assert_eq!(s["ram_nodes"], serde_json::json!([]));

    // rabbitmqctl's text shape.
    let (code, text, err) = nodes[2].ctl(&["cluster_status"]);
    assert_eq!(code, 0, "{text}{err}");
    assert!(
        text.starts_with(&format!(
            "Cluster status of node {} ...\nBasics\n\nCluster name: {}\n",
            nodes[2].full, all[0]
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "Disk Nodes\n\n{}\n\nRunning Nodes\n\n{}\n\nLeader\n\n{leader}\n",
            all.join("\n"),
            all.join("\n")
        )),
        "{text}"
    );

    // The management API: every member in /api/nodes, cluster_name in /api/overview.
    let api_nodes = nodes[0].api("/api/nodes");
    let listed: Vec<(String, bool)> = api_nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap().to_owned(), n["running"].as_bool().unwrap()))
        .collect();
    assert_eq!(listed, all.iter().map(|n| (n.clone(), true)).collect::<Vec<_>>());
    let overview = nodes[0].api("/api/overview");
    assert_eq!(overview["cluster_name"], all[0].as_str());
    assert_eq!(overview["node"], nodes[0].full.as_str());

    // kill -9 the leader: the other two elect a new one and show the old one as not running.
    let li = nodes.iter().position(|n| n.full == leader).expect("the leader is one of ours");
    nodes[li].kill();
    let others: Vec<usize> = (0..3).filter(|&i| i != li).collect();
    let survivors: Vec<String> = all.iter().filter(|n| **n != leader).cloned().collect();
    let killed_at = Instant::now();
    let mut new_leader = String::new();
    wait_for("a new leader and the old one not running", Duration::from_secs(15), || {
        new_leader = agreed_status(&nodes, &others, &survivors)?;
        Ok(())
    });
    assert_ne!(new_leader, leader);
    eprintln!("new leader {new_leader} seen {:?} after the kill", killed_at.elapsed());
    let api_nodes = nodes[others[0]].api("/api/nodes");
    let down: Vec<&Value> = api_nodes.as_array().unwrap().iter().filter(|n| n["running"] == false).collect();
    assert_eq!(down.len(), 1, "{api_nodes}");
    assert_eq!(down[0]["name"], leader.as_str());

    // Restart it (same data dir, same inter-node port): running again, everywhere.
    nodes[li].start();
    wait_for("the restarted node running again", Duration::from_secs(20), || {
        agreed_status(&nodes, &[0, 1, 2], &all).map(|_| ())
    });

    // SIGTERM stops a clustered node cleanly (Raft member included): exit 0, promptly; the
    // other two carry on and show it not running.
    let stop_at = Instant::now();
    let code = nodes[li].proc.as_mut().unwrap().terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "SIGTERM: {}", nodes[li].proc.as_ref().unwrap().log());
    eprintln!("clean stop took {:?}", stop_at.elapsed());
    nodes[li].proc = None;
    wait_for("two running after a clean stop", Duration::from_secs(15), || {
        agreed_status(&nodes, &others, &survivors).map(|_| ())
    });
    eprintln!("whole test took {:?}", started.elapsed());
}

#[test]
fn a_bad_cluster_config_fails_start_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bad.conf");
    std::fs::write(&conf, "cluster_formation.peer_discovery_backend = classic_config\ncluster_formation.classic_config.nodes.1 = n1@127.0.0.1\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--config", conf.to_str().unwrap(), "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.conf:2: cluster_formation.classic_config.nodes.1: expected NAME@HOST:PORT"), "{err}");
    // A node not in its own list, without warren.cluster_listen, cannot tell its port.
    std::fs::write(&conf, "cluster_formation.classic_config.nodes.1 = n1@127.0.0.1:1\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--config", conf.to_str().unwrap(), "--node-name", "n9@127.0.0.1", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("n9@127.0.0.1 is not in cluster_formation.classic_config.nodes"), "{err}");
}

#[test]
fn a_fourth_node_joins_with_join_cluster_and_leaves_with_forget_cluster_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(dir.path());
    for n in nodes.iter_mut() {
        n.start();
    }
    let mut all: Vec<String> = nodes.iter().map(|n| n.full.clone()).collect();
    all.sort();
    wait_for("three running nodes", Duration::from_secs(20), || agreed_status(&nodes, &[0, 1, 2], &all).map(|_| ()));

    // The joiner: no node list, only its inter-node listener; its name adds that port.
    let port = free_port();
    let conf = dir.path().join("n4.conf");
    std::fs::write(&conf, format!("warren.cluster_listen = 127.0.0.1:{port}\n")).unwrap();
    let mut n4 = Node {
        short: "n4@127.0.0.1".into(),
        full: format!("n4@127.0.0.1:{port}"),
        data: dir.path().join("n4"),
        conf,
        proc: None,
    };
    n4.start();
    let alone = n4.status().expect("n4 answers");
    assert_eq!(names(&alone["disk_nodes"]), Vec::<String>::new(), "a joiner is in no cluster yet: {alone}");

    let (code, out, err) = nodes[1].ctl(&["join_cluster", &n4.full]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with(&format!("Adding node {} to the cluster of node {} ...", n4.full, nodes[1].full)), "{out}");
    let mut four = all.clone();
    four.push(n4.full.clone());
    four.sort();
    wait_for("four members, all running, on every node", Duration::from_secs(15), || {
        for n in nodes.iter().chain(std::iter::once(&n4)) {
            let s = n.status().ok_or("no answer")?;
            if names(&s["disk_nodes"]) != four || names(&s["running_nodes"]) != four {
                return Err(format!("{}: {s}", n.full));
            }
        }
        Ok(())
    });

    let (code, out, err) = nodes[2].ctl(&["forget_cluster_node", &n4.full]);
    assert_eq!(code, 0, "{out}{err}");
    n4.kill();
    wait_for("back to three", Duration::from_secs(15), || agreed_status(&nodes, &[0, 1, 2], &all).map(|_| ()));
    // Forgetting a node that is not a member: rabbitmqctl's failure exit code.
    let (code, _, err) = nodes[0].ctl(&["forget_cluster_node", "zz@127.0.0.1:1"]);
    assert_eq!(code, 70, "{err}");
    // A malformed name is the caller's error.
    let (code, _, err) = nodes[0].ctl(&["join_cluster", "nonsense"]);
    assert_eq!(code, 65, "{err}");
}

#[test]
fn a_node_without_clustering_is_a_cluster_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node {
        short: String::new(),
        full: String::new(),
        data: dir.path().join("data"),
        conf: PathBuf::new(),
        proc: Some(WarrenProcess::start(&dir.path().join("data"), None, &[])),
    };
    let me = n.api("/api/overview")["node"].as_str().unwrap().to_owned();
    assert!(me.starts_with("warren@") && !me.contains(':'), "{me}");
    n.full = me.clone();
    let s = n.status().expect("cluster_status");
    assert_eq!(s["disk_nodes"], serde_json::json!([me]));
    assert_eq!(s["running_nodes"], serde_json::json!([me]));
    assert_eq!(s["cluster_name"], me.as_str());
    assert_eq!(s["leader"], Value::Null);
    let (code, _, err) = n.ctl(&["join_cluster", "n2@127.0.0.1:1"]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("not clustered"), "{err}");
    n.kill();
}
