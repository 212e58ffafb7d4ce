//! Clustering across real processes: three `warren` binaries on 127.0.0.1 (free ports,
//! temp dirs), each with a config file naming all three in
//! `cluster_formation.classic_config.nodes`, form one Raft group; `warrenctl
//! cluster_status` and the management API show members, running members and the leader
//! through a leader kill -9 and its restart; users, vhosts, permissions and policies
//! changed on any node reach every node through the Raft log (witnessed by lapin and
//! `rabbitmq_http_client`), a killed node catches up, and a minority refuses changes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rabbitmq_http_client::commons::PolicyTarget;
use rabbitmq_http_client::requests::{Permissions, PolicyParams, UserParams, VirtualHostParams};
use serde_json::Value;

use crate::cluster_fixture::{
    Node, agreed_status, consume_all, eventually, free_port, joiner, leader, names, publish_confirmed, quorum_args,
    reply_code, start_and_elect, started_cluster, three_nodes, three_nodes_with, wait_for,
};

#[test]
fn three_processes_form_a_cluster_and_survive_a_leader_kill() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(dir.path());
    let (all, leader) = start_and_elect(&mut nodes);
    // No cookie configured: the three share the default file in their $HOME, created by
    // whichever started first, owner-only.
    let cookie = std::fs::metadata(dir.path().join(".erlang.cookie")).expect("the default cookie file");
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&cookie.permissions()) & 0o777, 0o400);
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
    let (all, _) = start_and_elect(&mut nodes);

    // The joiner: no node list, only its inter-node listener; its name adds that port.
    let mut n4 = joiner(dir.path(), "");
    // It was a single node with a user of its own before: joining resets it (RabbitMQ's
    // join_cluster needs a reset node), its users become the cluster's.
    n4.proc = Some(n4.spawn(&[]));
    let (code, out, err) = n4.ctl(&["add_user", "local-only", "pw"]);
    assert_eq!(code, 0, "{out}{err}");
    n4.kill();
    n4.start();
    let alone = n4.status().expect("n4 answers");
    assert_eq!(names(&alone["disk_nodes"]), Vec::<String>::new(), "a joiner is in no cluster yet: {alone}");
    let user_names = |n: &Node| -> Vec<String> {
        let mut u: Vec<String> =
            n.api("/api/users").as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap().to_owned()).collect();
        u.sort();
        u
    };
    assert_eq!(user_names(&n4), Vec::<String>::new(), "reset when it started as a joiner");

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

    wait_for("the joiner has the cluster's users", Duration::from_secs(10), || {
        let got = user_names(&n4);
        if got == ["guest"] { Ok(()) } else { Err(format!("{got:?}")) }
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
        mgmt: 0,
        prom: 0,
        home: dir.path().to_owned(),
        proc: None,
        env: Vec::new(),
    };
    n.proc = Some(n.spawn(&[]));
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
    // Every feature flag is enabled on a single node; enabling them is a no-op.
    let (code, out, err) = n.ctl(&["-q", "--formatter", "json", "list_feature_flags", "name", "state"]);
    assert_eq!(code, 0, "{err}");
    let flags: Value = serde_json::from_str(&out).unwrap();
    let flags = flags.as_array().unwrap();
    assert_eq!(flags.len(), 7, "{out}");
    assert!(flags.iter().all(|f| f["state"] == "enabled"), "{out}");
    let (code, _, err) = n.ctl(&["enable_feature_flag", "all"]);
    assert_eq!(code, 0, "{err}");
    assert!(!dir.path().join(".erlang.cookie").exists(), "a plain node needs no cookie");
    n.kill();
}

#[test]
fn with_a_configured_cookie_three_form_a_cluster_and_a_node_with_another_cannot_join() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes_with(dir.path(), "warren.cluster_cookie = SHAREDCOOKIEOFTHREE\n");
    let (all, _) = start_and_elect(&mut nodes);
    assert!(!dir.path().join(".erlang.cookie").exists(), "the key wins: no cookie file read or created");

    let mut n4 = joiner(dir.path(), "warren.cluster_cookie = NOTTHESAMECOOKIE\n");
    n4.start();
    let (code, out, err) = nodes[1].ctl(&["join_cluster", &n4.full]);
    assert_eq!(code, 70, "{out}{err}");
    assert!(err.contains(&n4.full) && err.contains("cookie mismatch"), "{err}");
    // The three keep their membership and their leader; the odd node is in no cluster.
    wait_for("still three", Duration::from_secs(10), || agreed_status(&nodes, &[0, 1, 2], &all).map(|_| ()));
    let alone = n4.status().expect("n4 answers");
    assert_eq!(names(&alone["disk_nodes"]), Vec::<String>::new(), "{alone}");
    // Its log names the refused connection: the leader's address and the mismatch.
    let log = n4.proc.as_ref().unwrap().log();
    assert!(
        log.contains("refused an inter-node connection from 127.0.0.1:") && log.contains("cookie mismatch"),
        "{log}"
    );
    // The cluster still takes changes.
    let (code, out, err) = nodes[2].ctl(&["add_vhost", "after-refusal"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// A CA (`<name>-ca.pem`) and a certificate it signed for 127.0.0.1, usable to accept and
/// to dial (`<name>-node.pem`, `<name>-node.key`), in `dir`; the `warren.cluster_tls.*`
/// lines naming them.
fn cluster_pki(dir: &Path, name: &str) -> String {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, format!("Warren cluster CA {name}"));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let (ca_file, cert_file, key_file) = (
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}-node.pem")),
        dir.join(format!("{name}-node.key")),
    );
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    format!(
        "warren.cluster_tls.certfile = {}\nwarren.cluster_tls.keyfile = {}\nwarren.cluster_tls.cacertfile = {}\n",
        cert_file.display(),
        key_file.display(),
        ca_file.display()
    )
}

#[test]
fn three_nodes_cluster_over_mutual_tls_and_a_certificate_of_another_ca_cannot_join() {
    let dir = tempfile::tempdir().unwrap();
    let tls = cluster_pki(dir.path(), "main");
    let mut nodes = three_nodes_with(dir.path(), &format!("warren.cluster_cookie = SHAREDCOOKIE\n{tls}"));
    let (all, _) = start_and_elect(&mut nodes);
    let (code, out, err) = nodes[1].ctl(&["add_vhost", "over-tls"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_for("the vhost on every node", Duration::from_secs(10), || {
        let missing: Vec<&str> = nodes
            .iter()
            .filter(|n| !n.api("/api/vhosts").as_array().unwrap().iter().any(|v| v["name"] == "over-tls"))
            .map(|n| n.full.as_str())
            .collect();
        if missing.is_empty() { Ok(()) } else { Err(format!("not on {missing:?}")) }
    });

    // The right cookie, but a certificate the cluster's CA did not sign (and trusting only
    // its own CA): the link never comes up.
    let foreign = cluster_pki(dir.path(), "foreign");
    let mut n4 = joiner(dir.path(), &format!("warren.cluster_cookie = SHAREDCOOKIE\n{foreign}"));
    n4.start();
    let (code, out, err) = nodes[0].ctl(&["join_cluster", &n4.full]);
    assert_eq!(code, 70, "{out}{err}");
    assert!(err.contains(&n4.full) && err.contains("TLS"), "{err}");
    wait_for("still three", Duration::from_secs(10), || agreed_status(&nodes, &[0, 1, 2], &all).map(|_| ()));
    let log = n4.proc.as_ref().unwrap().log();
    assert!(log.contains("refused an inter-node connection from 127.0.0.1:") && log.contains("TLS"), "{log}");
}

/// `warren` on a one-node cluster config with `$HOME` = `home` and `extra` config lines;
/// its exit code and stderr, when it exits within 20 s (it is killed otherwise).
fn start_refused(dir: &Path, home: &Path, extra: &str) -> (Option<i32>, String) {
    let conf = dir.join("one.conf");
    let port = free_port();
    std::fs::write(&conf, format!("cluster_formation.classic_config.nodes.1 = n1@127.0.0.1:{port}\n{extra}")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--config", conf.to_str().unwrap(), "--node-name", "n1@127.0.0.1", "--amqp-port", "0"])
        .args(["--management-port", "0", "--prometheus-port", "0", "--data-dir"])
        .arg(dir.join("data"))
        .env("HOME", home)
        .env_remove("RABBITMQ_ERLANG_COOKIE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let o = child.wait_with_output().unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn a_cookie_file_others_can_read_refuses_start_and_names_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    // The default file, $HOME/.erlang.cookie.
    let default = home.join(".erlang.cookie");
    std::fs::write(&default, "SOMECOOKIE\n").unwrap();
    std::fs::set_permissions(&default, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = start_refused(dir.path(), &home, "");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("cluster cookie file {} must be accessible by its owner only", default.display())),
        "{err}"
    );
    // A configured one.
    let file = dir.path().join("cookie");
    std::fs::write(&file, "SOMECOOKIE\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = start_refused(dir.path(), &home, &format!("warren.cluster_cookie_file = {}\n", file.display()));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&file.display().to_string()) && err.contains("(its mode is 0644)"), "{err}");
    // An empty one.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&file, "\n").unwrap();
    let (code, err) = start_refused(dir.path(), &home, &format!("warren.cluster_cookie_file = {}\n", file.display()));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("cluster cookie file {} is empty", file.display())), "{err}");
}

/// `list_users` of a node, as (name, password hash, tags), sorted.
async fn users(n: &Node) -> Vec<(String, String, Vec<String>)> {
    let mut u: Vec<_> = n
        .http()
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| (u.name, u.password_hash.map(|h| h.to_string()).unwrap_or_default(), u.tags.0))
        .collect();
    u.sort();
    u
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_changes_on_any_node_apply_on_all_three() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (nodes, f) = started_cluster(dir.path(), "").await;
    // The seed is the same everywhere (one node proposed it: even the salted hash).
    let seeded = users(&nodes[0]).await;
    assert_eq!(seeded.iter().map(|u| u.0.as_str()).collect::<Vec<_>>(), ["guest"]);
    for n in &nodes[1..] {
        assert_eq!(users(n).await, seeded, "{}", n.full);
    }

    // A user and its permissions made on a follower's API: read-your-writes there, and
    // lapin logs in with it on every node.
    let api = nodes[f].http();
    let hash = rabbitmq_http_client::password_hashing::base64_encoded_salted_password_hash_sha256(
        &rabbitmq_http_client::password_hashing::salt(),
        "s3cret",
    );
    api.create_user(&UserParams::new("alice", &hash, "management")).await.unwrap();
    api.declare_permissions(&Permissions { user: "alice", vhost: "/", configure: ".*", write: ".*", read: ".*" })
        .await
        .unwrap();
    nodes[f].amqp("alice", "s3cret", "/").await.expect("alice on the node that took the change");
    for n in &nodes {
        eventually("alice logs in everywhere", Duration::from_secs(5), || async {
            n.amqp("alice", "s3cret", "/").await.map(drop).map_err(|e| format!("{}: {e}", n.full))
        })
        .await;
        let e = n.amqp("alice", "wrong", "/").await.expect_err("a wrong password");
        assert_eq!(reply_code(&e), Some(403), "{}: {e}", n.full);
        assert!(e.to_string().contains("ACCESS_REFUSED"), "{e}");
    }
    let expect = users(&nodes[f]).await;
    assert_eq!(expect.len(), 2);
    for n in &nodes {
        assert_eq!(users(n).await, expect, "list_users on {}", n.full);
    }

    // A vhost made on node 2 exists on nodes 1 and 3; deleting it on node 3 closes a
    // connection to it on node 1 with 320.
    nodes[1].http().create_vhost(&VirtualHostParams::named("shared")).await.unwrap();
    eventually("the vhost on node 1", Duration::from_secs(5), || async {
        nodes[0].amqp("guest", "guest", "shared").await.map(drop).map_err(|e| e.to_string())
    })
    .await;
    let conn = nodes[0].amqp("guest", "guest", "shared").await.unwrap();
    eventually("the vhost on node 3", Duration::from_secs(5), || async {
        nodes[2].amqp("guest", "guest", "shared").await.map(drop).map_err(|e| e.to_string())
    })
    .await;
    let mut errors = crate::interop::Errors::watch(&conn);
    nodes[2].http().delete_vhost("shared", false).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), errors.next()).await.expect("node 1 closed the connection");
    crate::interop::assert_code(&e, 320);
    for n in &nodes {
        eventually("the vhost gone everywhere", Duration::from_secs(5), || async {
            match n.amqp("guest", "guest", "shared").await {
                Err(e) if reply_code(&e) == Some(530) => Ok(()),
                other => Err(format!("{}: {:?}", n.full, other.map(drop))),
            }
        })
        .await;
    }

    // A policy set on node 1 shows on every node and takes effect on a queue that node 3
    // holds (declared there before the policy existed).
    let ch = nodes[2].amqp("guest", "guest", "/").await.unwrap().create_channel().await.unwrap();
    ch.queue_declare("pol.q".into(), Default::default(), Default::default()).await.unwrap();
    let mut def = serde_json::Map::new();
    def.insert("max-length".into(), serde_json::json!(7));
    let policy = PolicyParams {
        vhost: "/",
        name: "cap",
        pattern: "^pol\\.",
        apply_to: PolicyTarget::Queues,
        priority: 1,
        definition: def,
    };
    nodes[0].http().declare_policy(&policy).await.unwrap();
    for n in &nodes {
        eventually("the policy everywhere", Duration::from_secs(5), || async {
            let p = n.http().list_policies().await.map_err(|e| e.to_string())?;
            if p.iter().any(|p| p.name == "cap") { Ok(()) } else { Err(format!("{}: {p:?}", n.full)) }
        })
        .await;
    }
    eventually("the policy applied to node 3's queue", Duration::from_secs(5), || async {
        let q = nodes[2].http().get_queue_info("/", "pol.q").await.map_err(|e| e.to_string())?;
        let got = q.effective_policy_definition.and_then(|d| d.0).and_then(|d| d.get("max-length").cloned());
        if got == Some(serde_json::json!(7)) { Ok(()) } else { Err(format!("{got:?}")) }
    })
    .await;

    // warrenctl against a follower: the change goes through the leader, exit 0.
    let (code, out, err) = nodes[f].ctl(&["add_user", "bob", "pw"]);
    assert_eq!(code, 0, "{out}{err}");
    for n in &nodes {
        eventually("bob everywhere", Duration::from_secs(5), || async {
            let u = n.http().list_users().await.map_err(|e| e.to_string())?;
            if u.iter().any(|u| u.name == "bob") { Ok(()) } else { Err(n.full.clone()) }
        })
        .await;
    }

    // A definitions import on one node: its users, vhosts and permissions reach all three.
    let defs = serde_json::json!({
        "users": [{"name": "dave", "password_hash": hash, "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ""}],
        "vhosts": [{"name": "imported"}],
        "permissions": [{"user": "dave", "vhost": "imported", "configure": ".*", "write": ".*", "read": ".*"}]
    });
    let file = dir.path().join("defs.json");
    std::fs::write(&file, defs.to_string()).unwrap();
    let (code, out, err) = nodes[2].ctl(&["import_definitions", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    for n in &nodes {
        eventually("the imported user everywhere", Duration::from_secs(5), || async {
            n.amqp("dave", "s3cret", "imported").await.map(drop).map_err(|e| format!("{}: {e}", n.full))
        })
        .await;
    }
    eprintln!("whole test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_catches_up_by_snapshot_and_a_minority_refuses_changes() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // Snapshots every 4 entries: the ten changes made while a node is down purge the log
    // it would need, so it catches up from a snapshot. Short write timeout for the minority.
    let extra = "warren.cluster_snapshot_every = 4\nwarren.cluster_write_timeout_ms = 1500\n";
    let (mut nodes, f) = started_cluster(dir.path(), extra).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != f).collect();

    nodes[f].kill();
    for i in 0..10 {
        let name = format!("u{i}");
        let via = &nodes[others[i % 2]];
        let hash = rabbitmq_http_client::password_hashing::base64_encoded_salted_password_hash_sha256(
            &rabbitmq_http_client::password_hashing::salt(),
            "pw",
        );
        via.http().create_user(&UserParams::new(&name, &hash, "")).await.unwrap();
        via.http()
            .declare_permissions(&Permissions { user: &name, vhost: "/", configure: "", write: "", read: ".*" })
            .await
            .unwrap();
    }
    nodes[others[0]].http().delete_user("u0", false).await.unwrap();
    let expect = users(&nodes[others[0]]).await;
    assert_eq!(expect.len(), 10, "guest, u1..u9");

    // Restarted on its data dir: it sees what was made while it was down.
    nodes[f].start();
    eventually("the restarted node caught up", Duration::from_secs(15), || async {
        let got = users(&nodes[f]).await;
        if got == expect { Ok(()) } else { Err(format!("{got:?}")) }
    })
    .await;
    nodes[f].amqp("u9", "pw", "/").await.expect("u9, created while the node was down");
    let e = nodes[f].amqp("u0", "pw", "/").await.expect_err("u0 was deleted while the node was down");
    assert_eq!(reply_code(&e), Some(403), "{e}");
    assert!(std::fs::metadata(nodes[f].data.join("cluster/snapshot")).is_ok(), "the restarted node holds a snapshot");
    // Killed again right after catching up: its own definitions log and Raft log bring it
    // back to the same directory.
    nodes[f].kill();
    nodes[f].start();
    eventually("the node restarted again converges", Duration::from_secs(15), || async {
        let got = users(&nodes[f]).await;
        if got == expect { Ok(()) } else { Err(format!("{got:?}")) }
    })
    .await;

    // Two nodes down: the last one refuses a change within the write timeout (503 with the
    // reason; warrenctl exits 69), and does not apply it.
    let last = others[0];
    nodes[f].kill();
    nodes[others[1]].kill();
    let hash = rabbitmq_http_client::password_hashing::base64_encoded_salted_password_hash_sha256(
        &rabbitmq_http_client::password_hashing::salt(),
        "pw",
    );
    // The client's own overhead on this call is 0.7–2 s in a debug build (warrenctl and
    // a plain reqwest PUT see the node answer in the 1.5 s timeout): bounded loosely here,
    // tightly with warrenctl below.
    let api = nodes[last].http();
    let t = Instant::now();
    let e = api.create_user(&UserParams::new("lonely", &hash, "")).await.unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.status_code().map(|s| s.as_u16()), Some(503), "{e}");
    assert!(format!("{e:?}").contains("no quorum"), "{e:?}");
    assert!(took < Duration::from_secs(6), "refused after {took:?}");
    let t = Instant::now();
    let (code, out, err) = nodes[last].ctl(&["add_user", "lonely2", "pw"]);
    let ctl_took = t.elapsed();
    assert_eq!(code, 69, "{out}{err}");
    assert!(err.contains("no quorum"), "{err}");
    assert!(ctl_took < Duration::from_secs(4), "warrenctl refused after {ctl_took:?}");
    let names: Vec<String> = users(&nodes[last]).await.into_iter().map(|u| u.0).collect();
    assert!(!names.iter().any(|n| n.starts_with("lonely")), "{names:?}");
    eprintln!("refused in {took:?} (warrenctl: {ctl_took:?}); whole test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_is_replicated_and_loses_no_confirmed_message_when_the_leader_dies() {
    use lapin::options::{BasicGetOptions, ConfirmSelectOptions, QueueDeclareOptions};
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, f) = started_cluster(dir.path(), "").await;
    let leader = leader(&nodes);
    let other = (0..3).find(|&i| i != f && i != leader).unwrap();

    // Declared on the metadata leader, which so leads the queue's own group too (the
    // declaring node does); every node has it (a passive declare answers on each).
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    let c0 = nodes[leader].amqp("guest", "guest", "/").await.unwrap();
    c0.create_channel().await.unwrap().queue_declare("qq".into(), durable, quorum_args()).await.unwrap();
    wait_for("the declaring node leads the queue", Duration::from_secs(10), || {
        let q = nodes[f].try_api("/api/queues/%2f/qq")?;
        if q["leader"] == nodes[leader].full.as_str() { Ok(()) } else { Err(q.to_string()) }
    });
    drop(c0);
    let c1 = nodes[f].amqp("guest", "guest", "/").await.unwrap();
    let ch1 = c1.create_channel().await.unwrap();
    ch1.queue_declare("qq".into(), durable, quorum_args()).await.unwrap();
    let bad = ch1
        .queue_declare("qq-transient".into(), QueueDeclareOptions::default(), quorum_args())
        .await
        .expect_err("a non-durable quorum queue is refused");
    assert_eq!(reply_code(&bad), Some(406), "{bad}");
    for n in &nodes {
        let c = n.amqp("guest", "guest", "/").await.unwrap();
        let ch = c.create_channel().await.unwrap();
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        ch.queue_declare("qq".into(), passive, lapin::types::FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", n.full));
    }

    // Published with confirms on one follower, consumed on the other node.
    let ch1 = c1.create_channel().await.unwrap();
    ch1.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let first = publish_confirmed(&ch1, "qq", "a", 200).await;
    assert_eq!(first.len(), 200, "every publish confirmed");
    let c2 = nodes[other].amqp("guest", "guest", "/").await.unwrap();
    let ch2 = c2.create_channel().await.unwrap();
    let want: std::collections::BTreeSet<String> = first.iter().cloned().collect();
    let (got, _) = consume_all(&ch2, "qq", &want, Duration::from_secs(20)).await;
    assert_eq!(got, first, "delivered once each, in order, on another node");
    let _ = c2.close(200, "bye".into()).await;

    // Unacked messages of a consumer whose connection dies go back, marked redelivered.
    let first2 = publish_confirmed(&ch1, "qq", "b", 20).await;
    assert_eq!(first2.len(), 20);
    let c3 = nodes[leader].amqp("guest", "guest", "/").await.unwrap();
    let ch3 = c3.create_channel().await.unwrap();
    // (Messages delivered to the consumer closed above before its cancel was committed
    // come back a moment later: retry.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        match ch3.basic_get("qq".into(), BasicGetOptions::default()).await.unwrap() {
            Some(m) => break m,
            None if Instant::now() >= deadline => panic!("no message for basic.get"),
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let got_b = String::from_utf8(m.delivery.data.clone()).unwrap();
    assert!(got_b.starts_with('b'), "{got_b}");
    c3.close(200, "bye".into()).await.unwrap();
    let c2 = nodes[other].amqp("guest", "guest", "/").await.unwrap();
    let ch2 = c2.create_channel().await.unwrap();
    let want: std::collections::BTreeSet<String> = first2.iter().cloned().collect();
    let (got, redelivered) = consume_all(&ch2, "qq", &want, Duration::from_secs(20)).await;
    assert_eq!(got.iter().cloned().collect::<std::collections::BTreeSet<_>>(), want);
    // The message got was returned when the getter's connection closed. (Others may be too: a message
    // delivered to the closed consumer before its cancel was committed goes back.)
    assert!(redelivered.contains(&got_b), "{got_b} not among the redelivered {redelivered:?}");
    let _ = c2.close(200, "bye".into()).await;

    // The leader is killed -9 while a follower's publisher keeps publishing: every
    // confirmed message is there afterwards.
    let pub_ch = ch1.clone();
    let publisher = tokio::spawn(async move {
        let mut confirmed = Vec::new();
        for round in 0..30 {
            confirmed.extend(publish_confirmed(&pub_ch, "qq", &format!("c{round}-"), 20).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        confirmed
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    nodes[leader].kill();
    let confirmed = publisher.await.unwrap();
    assert!(confirmed.len() >= 100, "publishing went on through the new leader: {} confirmed", confirmed.len());
    let c2 = nodes[other].amqp("guest", "guest", "/").await.unwrap();
    let ch2 = c2.create_channel().await.unwrap();
    let want: std::collections::BTreeSet<String> = confirmed.iter().cloned().collect();
    let (got, _) = consume_all(&ch2, "qq", &want, Duration::from_secs(30)).await;
    let got: std::collections::BTreeSet<String> = got.into_iter().collect();
    let lost: Vec<&String> = want.difference(&got).collect();
    assert!(
        lost.is_empty(),
        "{} confirmed messages lost, e.g. {:?}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    let _ = c2.close(200, "bye".into()).await;

    // The killed node comes back: it replays the log (and snapshot) into its replica and
    // serves messages published while it was down to a consumer of its own.
    let later = publish_confirmed(&ch1, "qq", "d", 10).await;
    assert_eq!(later.len(), 10);
    nodes[leader].start();
    let deadline = Instant::now() + Duration::from_secs(20);
    let c4 = loop {
        match nodes[leader].amqp("guest", "guest", "/").await {
            Ok(c) => break c,
            Err(e) if Instant::now() >= deadline => panic!("the restarted node takes no connection: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let ch4 = c4.create_channel().await.unwrap();
    let want: std::collections::BTreeSet<String> = later.iter().cloned().collect();
    let (got, _) = consume_all(&ch4, "qq", &want, Duration::from_secs(20)).await;
    assert_eq!(got, later, "the restarted node's consumer gets what was published while it was down");
    eprintln!("quorum queue test: {} confirmed through the leader kill, {:?}", confirmed.len(), started.elapsed());
}

/// `GET /api/warren/cluster` on `n` with reqwest, as guest.
async fn cluster_view(n: &Node) -> Result<Value, String> {
    let url = format!("http://127.0.0.1:{}/api/warren/cluster", n.mgmt);
    let r =
        reqwest::Client::new().get(url).basic_auth("guest", Some("guest")).send().await.map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("{}: {}", n.full, r.status()));
    }
    r.json().await.map_err(|e| e.to_string())
}

/// `n`'s Prometheus `/metrics` text.
async fn metrics(n: &Node) -> String {
    let url = format!("http://127.0.0.1:{}/metrics", n.prom);
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// The value of the sample `series` (name and labels exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// On the leader: three voters, all running, none lagging, matched at its last index.
fn all_caught_up(v: &Value) -> Result<(), String> {
    let last = v["log"]["last_written_index"].as_u64().ok_or("no log index")?;
    let members = v["members"].as_array().ok_or("no members")?;
    let ok = v["is_leader"] == true
        && members.len() == 3
        && members.iter().all(|m| {
            m["type"] == "voter" && m["running"] == true && m["lag"] == 0 && m["matched_index"].as_u64() == Some(last)
        })
        && v["log"]["commit_index"].as_u64() == Some(last);
    if ok { Ok(()) } else { Err(v.to_string()) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_metrics_show_term_leader_members_and_a_killed_members_lag() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, f) = started_cluster(dir.path(), "").await;
    // A write (on a follower, forwarded): every member acknowledges it.
    nodes[f].http().create_vhost(&VirtualHostParams::named("views")).await.unwrap();
    let leader_name = cluster_view(&nodes[f]).await.unwrap()["leader"].as_str().unwrap().to_owned();
    let l = nodes.iter().position(|n| n.full == leader_name).unwrap();
    eventually("every member caught up, on the leader", Duration::from_secs(10), || async {
        all_caught_up(&cluster_view(&nodes[l]).await?)
    })
    .await;
    let lv = cluster_view(&nodes[l]).await.unwrap();
    let term = lv["term"].as_u64().unwrap();
    assert!(term > 0, "{lv}");
    let marked: Vec<&Value> = lv["members"].as_array().unwrap().iter().filter(|m| m["leader"] == true).collect();
    assert_eq!(marked.len(), 1, "{lv}");
    assert_eq!(marked[0]["name"], leader_name.as_str());
    assert_eq!(lv["replication_known"], true);
    for (i, n) in nodes.iter().enumerate().filter(|(i, _)| *i != l) {
        let v = cluster_view(n).await.unwrap();
        assert_eq!(
            (v["term"].as_u64(), v["leader"].as_str()),
            (Some(term), Some(leader_name.as_str())),
            "node {i}: {v}"
        );
        assert_eq!((&v["is_leader"], &v["replication_known"]), (&Value::Bool(false), &Value::Bool(false)), "{v}");
        assert!(v["members"].as_array().unwrap().iter().all(|m| m["lag"].is_null() && m["running"] == true), "{v}");
        let log = &v["log"];
        assert!(log["last_applied_index"].as_u64() <= log["commit_index"].as_u64(), "{v}");
    }

    // /api/nodes and /api/nodes/{other} parse in rabbitmq_http_client's shape.
    let listed = nodes[f].http().list_nodes().await.unwrap();
    let mut names: Vec<String> = listed.iter().map(|n| n.name.clone()).collect();
    names.sort();
    let mut all: Vec<String> = nodes.iter().map(|n| n.full.clone()).collect();
    all.sort();
    assert_eq!(names, all);
    let other = nodes[f].http().get_node_info(&leader_name).await.unwrap();
    assert_eq!(other.name, leader_name);
    assert!(!other.being_drained);

    // Prometheus: the same term on every node, exactly one leader, three running members,
    // follower lag on the leader only (zero now).
    let raft = |name: &str| format!("rabbitmq_raft_{name}{{raft_cluster=\"warren_meta\"}}");
    let mut leaders = 0.0;
    for (i, n) in nodes.iter().enumerate() {
        let t = metrics(n).await;
        assert_eq!(sample(&t, &raft("term_total")), Some(term as f64), "node {i}:\n{t}");
        let (applied, commit, written) = (
            sample(&t, &raft("log_last_applied_index")).unwrap(),
            sample(&t, &raft("log_commit_index")).unwrap(),
            sample(&t, &raft("log_last_written_index")).unwrap(),
        );
        assert!(applied > 0.0 && applied <= commit && commit <= written, "node {i}:\n{t}");
        assert!(sample(&t, &raft("log_snapshot_index")).is_some(), "node {i}:\n{t}");
        // The forwarded vhost write was timed where it was committed: on the leader.
        let latency = sample(&t, &raft("entry_commit_latency_seconds")).unwrap();
        assert!(if i == l { latency > 0.0 && latency < 30.0 } else { latency == 0.0 }, "node {i}:\n{t}");
        assert_eq!(sample(&t, "warren_cluster_members"), Some(3.0), "node {i}:\n{t}");
        assert_eq!(sample(&t, "warren_cluster_running_members"), Some(3.0), "node {i}:\n{t}");
        leaders += sample(&t, "warren_cluster_is_leader").unwrap();
        let lags = t.lines().filter(|l| l.starts_with("warren_cluster_follower_lag_entries{")).count();
        assert_eq!(lags, if i == l { 2 } else { 0 }, "node {i}:\n{t}");
    }
    assert_eq!(leaders, 1.0, "exactly one node says it leads");

    // kill -9 a follower and write without it: the leader shows it not running, lagging.
    let gone = (0..3).find(|&i| i != l).unwrap();
    let gone_name = nodes[gone].full.clone();
    nodes[gone].kill();
    for i in 0..3 {
        nodes[l].http().create_vhost(&VirtualHostParams::named(&format!("views{i}"))).await.unwrap();
    }
    eventually("the killed member not running and lagging", Duration::from_secs(10), || async {
        let v = cluster_view(&nodes[l]).await?;
        let m = v["members"].as_array().unwrap().iter().find(|m| m["name"] == gone_name.as_str()).cloned().unwrap();
        if m["running"] == false && m["lag"].as_u64() >= Some(3) { Ok(()) } else { Err(v.to_string()) }
    })
    .await;
    let t = metrics(&nodes[l]).await;
    assert_eq!(sample(&t, "warren_cluster_running_members"), Some(2.0), "{t}");
    assert_eq!(sample(&t, "warren_cluster_members"), Some(3.0), "{t}");
    let lag = sample(&t, &format!("warren_cluster_follower_lag_entries{{peer=\"{gone_name}\"}}")).unwrap();
    assert!(lag >= 3.0, "{t}");
    let live = (0..3).find(|&i| i != l && i != gone).unwrap();
    assert_eq!(
        sample(&t, &format!("warren_cluster_follower_lag_entries{{peer=\"{}\"}}", nodes[live].full)),
        Some(0.0),
        "{t}"
    );
    // /api/nodes on the leader: the killed member listed, not running.
    let listed = nodes[l].http().list_nodes().await.unwrap();
    let down: Vec<&str> = listed.iter().filter(|n| n.name == gone_name).map(|n| n.name.as_str()).collect();
    assert_eq!(down, [gone_name.as_str()]);
    let j = nodes[l].api(&format!("/api/nodes/{gone_name}"));
    assert_eq!((j["running"].as_bool(), j["type"].as_str()), (Some(false), Some("disc")), "{j}");
    eprintln!("whole test took {:?}", started.elapsed());
}
