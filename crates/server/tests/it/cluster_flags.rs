//! Mixed versions in one cluster, without a second binary: the test hooks
//! `WARREN_TEST_CLUSTER_FEATURES` (a node claims fewer feature flags, as an older version
//! would) and `WARREN_TEST_WIRE_VERSION` (another inter-node wire protocol), read once at
//! start. `warrenctl` and `rabbitmq_http_client` list and enable the flags; lapin and the
//! management API meet a gated operation's refusal.

use std::time::Duration;

use lapin::ExchangeKind;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use rabbitmq_http_client::requests::ExchangeParams;
use rabbitmq_http_client::responses::FeatureFlagState;
use serde_json::Value;

use crate::cluster_fixture::{
    Node, agreed_status, joiner, member_names, quorum_args, reply_code, start_seeded, three_nodes, wait_for,
};

/// What an older Warren version supports: quorum queues and their bindings, no replicated
/// exchanges and no CBOR snapshots.
const OLD_FLAGS: &str = "quorum_queue,quorum_queue_bindings";
const ALL_FLAGS: [&str; 7] = [
    "cbor_snapshots",
    "classic_queue_directory",
    "compact_quorum_entries",
    "quorum_queue",
    "quorum_queue_bindings",
    "quorum_queue_groups",
    "replicated_topology",
];

const DURABLE_EXCHANGE: ExchangeDeclareOptions =
    ExchangeDeclareOptions { passive: false, durable: true, auto_delete: false, internal: false, nowait: false };
const PASSIVE: ExchangeDeclareOptions =
    ExchangeDeclareOptions { passive: true, durable: false, auto_delete: false, internal: false, nowait: false };

fn old(mut n: Node) -> Node {
    n.env.push(("WARREN_TEST_CLUSTER_FEATURES".into(), OLD_FLAGS.into()));
    n
}

/// `warrenctl list_feature_flags --formatter json` on `n`: (name, state) sorted by name.
fn flag_states(n: &Node) -> Vec<(String, String)> {
    let (code, out, err) = n.ctl(&["-q", "--formatter", "json", "list_feature_flags", "name", "state"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let mut flags: Vec<(String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap().to_owned(), f["state"].as_str().unwrap().to_owned()))
        .collect();
    flags.sort();
    flags
}

fn states(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(n, s)| (n.to_string(), s.to_string())).collect()
}

fn all_enabled() -> Vec<(String, String)> {
    ALL_FLAGS.iter().map(|f| (f.to_string(), "enabled".to_string())).collect()
}

async fn channel(n: &Node) -> lapin::Channel {
    n.amqp("guest", "guest", "/").await.unwrap().create_channel().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_enable_every_flag_and_a_node_lacking_one_or_speaking_another_wire_version_cannot_join() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(dir.path());
    let leader = start_seeded(&mut nodes).await;
    let all = member_names(&nodes);
    for n in &nodes {
        wait_for("every flag enabled", Duration::from_secs(10), || {
            let got = flag_states(n);
            if got == all_enabled() { Ok(()) } else { Err(format!("{}: {got:?}", n.full)) }
        });
    }
    // rabbitmqctl's table (the default columns: name, state, stability, desc).
    let (code, out, err) = nodes[1].ctl(&["list_feature_flags"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("Listing feature flags ...\nname\tstate\tstability\tdesc\n"), "{out}");
    assert!(out.contains("replicated_topology\tenabled\tstable\tExchanges and exchange-to-exchange bindings"), "{out}");
    // rabbitmq_http_client parses RabbitMQ's fields.
    let listed = nodes[2].http().list_feature_flags().await.unwrap();
    assert_eq!(listed.len(), ALL_FLAGS.len());
    assert!(listed.iter().all(|f| f.state == FeatureFlagState::Enabled && f.provided_by == "warren"), "{listed:?}");
    nodes[0].http().enable_feature_flag("quorum_queue").await.unwrap();
    let e = nodes[0].http().enable_feature_flag("warp_drive").await.unwrap_err();
    assert!(format!("{e:?}").contains("400"), "{e:?}");
    let (code, _, err) = nodes[0].ctl(&["enable_feature_flag", "all"]);
    assert_eq!(code, 0, "{err}");

    // A node of an "older version" (no replicated_topology, no cbor_snapshots): refused
    // before it becomes a member, naming the flags; nothing disturbed.
    let mut n4 = old(joiner(dir.path(), ""));
    n4.start();
    let (code, out, err) = nodes[leader].ctl(&["join_cluster", &n4.full]);
    assert_eq!(code, 70, "{out}{err}");
    assert!(err.contains(&n4.full) && err.contains("does not support the feature flags"), "{err}");
    assert!(err.contains("cbor_snapshots") && err.contains("replicated_topology"), "{err}");
    wait_for("still three", Duration::from_secs(10), || agreed_status(&nodes, &[0, 1, 2], &all).map(|_| ()));
    let alone = n4.status().expect("n4 answers");
    assert_eq!(alone["disk_nodes"], serde_json::json!([]), "{alone}");
    let (code, out, err) = nodes[2].ctl(&["add_vhost", "after-refusal"]);
    assert_eq!(code, 0, "{out}{err}");
    n4.kill();

    // A node speaking another inter-node wire protocol: refused at the handshake, both
    // versions named on both sides.
    std::fs::create_dir_all(dir.path().join("n5")).unwrap();
    let mut n5 = joiner(&dir.path().join("n5"), "");
    n5.home = dir.path().to_owned();
    n5.env.push(("WARREN_TEST_WIRE_VERSION".into(), "4".into()));
    n5.start();
    let (code, out, err) = nodes[0].ctl(&["join_cluster", &n5.full]);
    assert_eq!(code, 70, "{out}{err}");
    assert!(err.contains("incompatible wire protocol versions"), "{err}");
    assert!(err.contains(&format!("{} speaks 4", n5.full)), "{err}");
    let log = n5.proc.as_ref().unwrap().log();
    assert!(
        log.contains("refused an inter-node connection from 127.0.0.1:")
            && log.contains(&format!("incompatible wire protocol versions: {} speaks 4, ", n5.full))
            && log.contains(" speaks 1..=3"),
        "{log}"
    );
    wait_for("still three", Duration::from_secs(10), || agreed_status(&nodes, &[0, 1, 2], &all).map(|_| ()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_an_old_node_keeps_its_new_flags_disabled_until_the_node_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(dir.path());
    let n3 = nodes.pop().unwrap();
    nodes.push(old(n3));
    start_seeded(&mut nodes).await;
    let mixed = states(&[
        ("cbor_snapshots", "disabled"),
        ("classic_queue_directory", "disabled"),
        ("compact_quorum_entries", "disabled"),
        ("quorum_queue", "enabled"),
        ("quorum_queue_bindings", "enabled"),
        ("quorum_queue_groups", "disabled"),
        ("replicated_topology", "disabled"),
    ]);
    // The old node lists what it knows: its two flags, enabled.
    let known_to_old = states(&[("quorum_queue", "enabled"), ("quorum_queue_bindings", "enabled")]);
    for (n, want) in [(&nodes[0], &mixed), (&nodes[1], &mixed), (&nodes[2], &known_to_old)] {
        wait_for("the common flags enabled", Duration::from_secs(10), || {
            let got = flag_states(n);
            if got == *want { Ok(()) } else { Err(format!("{}: {got:?}", n.full)) }
        });
    }

    // What the enabled flags gate works; what the disabled one gates is refused with a clear
    // error, by AMQP (541, the connection closes) and the API (503).
    let ch = channel(&nodes[0]).await;
    ch.queue_declare(
        "qq".into(),
        lapin::options::QueueDeclareOptions { durable: true, ..Default::default() },
        quorum_args(),
    )
    .await
    .unwrap();
    let e = ch
        .exchange_declare("x".into(), ExchangeKind::Topic, DURABLE_EXCHANGE, FieldTable::default())
        .await
        .unwrap_err();
    assert_eq!(reply_code(&e), Some(541), "{e}");
    assert!(format!("{e}").contains("feature flag 'replicated_topology' is not enabled"), "{e}");
    let e = nodes[1].http().declare_exchange("/", &ExchangeParams::durable_topic("x", None)).await.unwrap_err();
    assert!(format!("{e:?}").contains("503") && format!("{e:?}").contains("replicated_topology"), "{e:?}");
    // Enabling asks every member: the old one lacks it.
    let (code, out, err) = nodes[0].ctl(&["enable_feature_flag", "replicated_topology"]);
    assert_eq!(code, 65, "{out}{err}");
    assert!(err.contains(&format!("cluster member {} does not support it", nodes[2].full)), "{err}");

    // Replace the old node: forget it, join a node of the current version, enable all.
    let (code, out, err) = nodes[0].ctl(&["forget_cluster_node", &nodes[2].full]);
    assert_eq!(code, 0, "{out}{err}");
    nodes[2].kill();
    let mut n4 = joiner(dir.path(), "");
    n4.start();
    let (code, out, err) = nodes[1].ctl(&["join_cluster", &n4.full]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = nodes[1].ctl(&["enable_feature_flag", "all"]);
    assert_eq!(code, 0, "{out}{err}");
    for n in [&nodes[0], &nodes[1], &n4] {
        wait_for("every flag enabled", Duration::from_secs(10), || {
            let got = flag_states(n);
            if got == all_enabled() { Ok(()) } else { Err(format!("{}: {got:?}", n.full)) }
        });
    }
    let ch = channel(&nodes[0]).await;
    ch.exchange_declare("x".into(), ExchangeKind::Topic, DURABLE_EXCHANGE, FieldTable::default()).await.unwrap();
    let on4 = channel(&n4).await;
    on4.exchange_declare("x".into(), ExchangeKind::Topic, PASSIVE, FieldTable::default()).await.unwrap();

    // A member restarted as the older version (a downgrade) meets an entry enabling a flag
    // it lacks: it stops with an error naming it (exit 1), instead of skipping the entry.
    nodes[1].kill();
    nodes[1].env.push(("WARREN_TEST_CLUSTER_FEATURES".into(), OLD_FLAGS.into()));
    let args = nodes[1].start_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, log) = match nodes[1].try_spawn(&args) {
        // It may stop before it accepts AMQP connections.
        Err(e) => (if e.contains("exit status: 1") { Some(1) } else { None }, e),
        Ok(mut p) => (p.exited_within(Duration::from_secs(20)), p.log()),
    };
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("enables feature flag cbor_snapshots, which this node does not support"), "{log}");
    assert!(log.contains("this node stops rather than skip it"), "{log}");
    // The two others go on.
    let (code, out, err) = nodes[0].ctl(&["add_vhost", "after-downgrade"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_of_the_old_node_in_place_lets_every_flag_be_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(dir.path());
    let n3 = nodes.pop().unwrap();
    nodes.push(old(n3));
    start_seeded(&mut nodes).await;
    let all = member_names(&nodes);
    wait_for("replicated_topology disabled", Duration::from_secs(10), || {
        let got = flag_states(&nodes[0]);
        let off = got.contains(&("replicated_topology".to_owned(), "disabled".to_owned()));
        if off { Ok(()) } else { Err(format!("{got:?}")) }
    });
    // The old node is stopped and started again on its data directory as the current version.
    let code = nodes[2].proc.as_mut().unwrap().terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    nodes[2].proc = None;
    nodes[2].env.clear();
    nodes[2].start();
    wait_for("three running again", Duration::from_secs(20), || agreed_status(&nodes, &[0, 1, 2], &all).map(|_| ()));
    let (code, out, err) = nodes[0].ctl(&["enable_feature_flag", "all"]);
    assert_eq!(code, 0, "{out}{err}");
    for n in &nodes {
        wait_for("every flag enabled", Duration::from_secs(10), || {
            let got = flag_states(n);
            if got == all_enabled() { Ok(()) } else { Err(format!("{}: {got:?}", n.full)) }
        });
    }
    // What replicated_topology gates works from the upgraded node.
    let ch = channel(&nodes[2]).await;
    ch.exchange_declare("upgraded".into(), ExchangeKind::Fanout, DURABLE_EXCHANGE, FieldTable::default())
        .await
        .unwrap();
    let on1 = channel(&nodes[0]).await;
    on1.exchange_declare("upgraded".into(), ExchangeKind::Fanout, PASSIVE, FieldTable::default()).await.unwrap();
}
