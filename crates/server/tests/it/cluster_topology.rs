//! Replicated exchanges and bindings across three real `warren` processes (the harness of
//! `it::cluster_fixture`), lapin and `rabbitmq_http_client` as the witnesses: exchanges and
//! exchange-to-exchange bindings made on one node route on the others, a management-API
//! binding too, a delete reaches every node, a node that was down catches up from a
//! snapshot, and a node without a majority answers with an error instead of hanging.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, ExchangeKind};
use rabbitmq_http_client::requests::ExchangeParams;

use crate::cluster_fixture::{Node, consume_all, eventually, quorum_args, reply_code, started_cluster};

const DURABLE_QUEUE: QueueDeclareOptions =
    QueueDeclareOptions { passive: false, durable: true, exclusive: false, auto_delete: false, nowait: false };
const DURABLE_EXCHANGE: ExchangeDeclareOptions =
    ExchangeDeclareOptions { passive: false, durable: true, auto_delete: false, internal: false, nowait: false };
const PASSIVE: ExchangeDeclareOptions =
    ExchangeDeclareOptions { passive: true, durable: false, auto_delete: false, internal: false, nowait: false };

async fn channel(n: &Node) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(20);
    let c = loop {
        match n.amqp("guest", "guest", "/").await {
            Ok(c) => break c,
            Err(e) if Instant::now() >= deadline => panic!("{} takes no connection: {e}", n.full),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    c.create_channel().await.unwrap()
}

/// A passive exchange.declare of `name` on `n`: Ok, or the reply code it was refused with.
async fn passive(n: &Node, name: &str) -> Result<(), Option<u16>> {
    let ch = channel(n).await;
    ch.exchange_declare(name.into(), ExchangeKind::Direct, PASSIVE, FieldTable::default())
        .await
        .map_err(|e| reply_code(&e))
}

/// Publish `body` to `exchange` with `key`, mandatory, and wait for the confirm: true when
/// acked and not returned (routed).
async fn routed(ch: &Channel, exchange: &str, key: &str, body: &str) -> bool {
    let mandatory = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
    let props = lapin::BasicProperties::default().with_delivery_mode(2);
    let c = ch.basic_publish(exchange.into(), key.into(), mandatory, body.as_bytes(), props).await.unwrap();
    let c = c.await.unwrap();
    c.is_ack() && c.take_message().is_none()
}

/// Wait until `n` lists a binding `source` → `destination` (or none, `present` false).
async fn binding_on(n: &Node, source: &str, destination: &str, present: bool) {
    eventually("the binding replicated", Duration::from_secs(15), || async {
        let bs = n.http().list_bindings_in("/").await.map_err(|e| e.to_string())?;
        let has = bs.iter().any(|b| b.source == source && b.destination == destination);
        if has == present { Ok(()) } else { Err(format!("{}: binding {source} -> {destination}: {has}", n.full)) }
    })
    .await;
}

/// The exchanges `n` has that a client declared (not the built-in ones), with their type.
async fn exchanges(n: &Node) -> Vec<(String, String, bool)> {
    let mut x: Vec<_> = n
        .http()
        .list_exchanges_in("/")
        .await
        .unwrap()
        .into_iter()
        .filter(|e| !e.name.is_empty() && !e.name.starts_with("amq."))
        .map(|e| (e.name, e.exchange_type, e.durable))
        .collect();
    x.sort();
    x
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_and_bindings_made_on_one_node_route_and_go_away_on_every_node() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (nodes, f) = started_cluster(dir.path(), "").await;
    let (a, b, c) = (f, (f + 1) % 3, (f + 2) % 3);

    // On node a: a topic exchange bound (e2e) to a direct exchange bound to a quorum queue.
    let ch_a = channel(&nodes[a]).await;
    ch_a.exchange_declare("tx".into(), ExchangeKind::Topic, DURABLE_EXCHANGE, FieldTable::default()).await.unwrap();
    ch_a.exchange_declare("dx".into(), ExchangeKind::Direct, DURABLE_EXCHANGE, FieldTable::default()).await.unwrap();
    ch_a.queue_declare("orders".into(), DURABLE_QUEUE, quorum_args()).await.unwrap();
    let no_args = FieldTable::default();
    ch_a.queue_bind("orders".into(), "dx".into(), "orders.new".into(), QueueBindOptions::default(), no_args.clone())
        .await
        .unwrap();
    ch_a.exchange_bind("dx".into(), "tx".into(), "orders.*".into(), ExchangeBindOptions::default(), no_args.clone())
        .await
        .unwrap();
    // Every node has both exchanges as declared (a non-durable one would be the same).
    for n in &nodes {
        eventually("the exchanges on every node", Duration::from_secs(10), || async {
            let x = exchanges(n).await;
            let want = [("dx".to_owned(), "direct".to_owned(), true), ("tx".to_owned(), "topic".to_owned(), true)];
            if x == want { Ok(()) } else { Err(format!("{}: {x:?}", n.full)) }
        })
        .await;
    }

    // Published to the topic exchange on node b, with confirms: routed through both.
    binding_on(&nodes[b], "tx", "dx", true).await;
    let ch_b = channel(&nodes[b]).await;
    ch_b.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    for i in 0..5 {
        assert!(routed(&ch_b, "tx", "orders.new", &format!("t{i}")).await, "t{i} routed on {}", nodes[b].full);
    }
    assert!(!routed(&ch_b, "tx", "invoices.new", "nowhere").await, "a key no binding matches is returned");

    // Consumed on node c.
    let ch_c = channel(&nodes[c]).await;
    let want: BTreeSet<String> = (0..5).map(|i| format!("t{i}")).collect();
    let (got, _) = consume_all(&ch_c, "orders", &want, Duration::from_secs(10)).await;
    assert_eq!(got, ["t0", "t1", "t2", "t3", "t4"]);

    // The management API on node b: an exchange, an e2e binding and a binding to the quorum
    // queue; both route on node a.
    let http_b = nodes[b].http();
    http_b.declare_exchange("/", &ExchangeParams::durable_fanout("mx", None)).await.unwrap();
    http_b.bind_exchange("/", "dx", "mx", Some(""), None).await.unwrap();
    http_b.declare_exchange("/", &ExchangeParams::durable_direct("mq", None)).await.unwrap();
    http_b.bind_queue("/", "orders", "mq", Some("m"), None).await.unwrap();
    binding_on(&nodes[a], "mx", "dx", true).await;
    binding_on(&nodes[a], "mq", "orders", true).await;
    ch_a.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    assert!(routed(&ch_a, "mx", "orders.new", "via-mx").await, "the API's e2e binding routes on node a");
    assert!(routed(&ch_a, "mq", "m", "via-mq").await, "the API's quorum binding routes on node a");
    let want: BTreeSet<String> = ["via-mx", "via-mq"].map(str::to_owned).into();
    let (got, _) = consume_all(&ch_c, "orders", &want, Duration::from_secs(10)).await;
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);

    // A re-declare with another type on another node: 406, on AMQP and on the API.
    let ch = channel(&nodes[c]).await;
    let e = ch
        .exchange_declare("tx".into(), ExchangeKind::Fanout, DURABLE_EXCHANGE, FieldTable::default())
        .await
        .unwrap_err();
    assert_eq!(reply_code(&e), Some(406), "{e}");
    let e = nodes[a].http().declare_exchange("/", &ExchangeParams::durable_fanout("dx", None)).await.unwrap_err();
    assert!(format!("{e:?}").contains("400") && format!("{e:?}").contains("inequivalent"), "{e:?}");
    // if-unused on an exchange with bindings: 406, and it stays.
    let ch = channel(&nodes[b]).await;
    let e =
        ch.exchange_delete("dx".into(), ExchangeDeleteOptions { if_unused: true, nowait: false }).await.unwrap_err();
    assert_eq!(reply_code(&e), Some(406), "{e}");
    assert_eq!(passive(&nodes[a], "dx").await, Ok(()));

    // Deleted on node c: gone on a and b (passive declare 404), its bindings with it.
    let ch = channel(&nodes[c]).await;
    ch.exchange_delete("tx".into(), ExchangeDeleteOptions::default()).await.unwrap();
    // And the API's delete on node a of the e2e source mx.
    nodes[a].http().delete_exchange("/", "mx", false).await.unwrap();
    for n in &nodes {
        eventually("the deleted exchanges gone", Duration::from_secs(10), || async {
            match (passive(n, "tx").await, passive(n, "mx").await) {
                (Err(Some(404)), Err(Some(404))) => Ok(()),
                other => Err(format!("{}: {other:?}", n.full)),
            }
        })
        .await;
        binding_on(n, "tx", "dx", false).await;
        binding_on(n, "mx", "dx", false).await;
        let x = exchanges(n).await;
        assert_eq!(x.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["dx", "mq"], "{}", n.full);
    }
    // Declared at once on two nodes with different types: one wins, the other gets 406,
    // and every node has the winner's type.
    let (ch1, ch2) = (channel(&nodes[a]).await, channel(&nodes[c]).await);
    let (r1, r2) = tokio::join!(
        ch1.exchange_declare("race".into(), ExchangeKind::Topic, DURABLE_EXCHANGE, FieldTable::default()),
        ch2.exchange_declare("race".into(), ExchangeKind::Fanout, DURABLE_EXCHANGE, FieldTable::default()),
    );
    let winner = match (&r1, &r2) {
        (Ok(()), Err(e)) if reply_code(e) == Some(406) => "topic",
        (Err(e), Ok(())) if reply_code(e) == Some(406) => "fanout",
        other => panic!("one declare wins, the other is refused with 406: {other:?}"),
    };
    for n in &nodes {
        eventually("the winner's type on every node", Duration::from_secs(10), || async {
            let x = n.http().get_exchange_info("/", "race").await.map_err(|e| e.to_string())?;
            if x.exchange_type == winner { Ok(()) } else { Err(format!("{}: {}", n.full, x.exchange_type)) }
        })
        .await;
    }
    eprintln!("replicated topology test: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_during_topology_changes_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    // Snapshots every 4 entries: what is made while the node is down is purged from the log
    // it would need, so it catches up from a snapshot.
    let (mut nodes, f) = started_cluster(dir.path(), "warren.cluster_snapshot_every = 4\n").await;
    let via = (f + 1) % 3;
    let ch = channel(&nodes[via]).await;
    let no_args = FieldTable::default();
    // Before the kill: an exchange, an e2e binding and a quorum queue's binding that go
    // while the node is down.
    ch.exchange_declare("old".into(), ExchangeKind::Fanout, DURABLE_EXCHANGE, no_args.clone()).await.unwrap();
    ch.exchange_declare("kept".into(), ExchangeKind::Direct, DURABLE_EXCHANGE, no_args.clone()).await.unwrap();
    ch.exchange_bind("kept".into(), "old".into(), "".into(), ExchangeBindOptions::default(), no_args.clone())
        .await
        .unwrap();
    ch.queue_declare("unbound".into(), DURABLE_QUEUE, quorum_args()).await.unwrap();
    ch.queue_bind("unbound".into(), "kept".into(), "a.b".into(), QueueBindOptions::default(), no_args.clone())
        .await
        .unwrap();
    binding_on(&nodes[f], "old", "kept", true).await;
    binding_on(&nodes[f], "kept", "unbound", true).await;
    nodes[f].kill();

    ch.exchange_delete("old".into(), ExchangeDeleteOptions::default()).await.unwrap();
    ch.queue_unbind("unbound".into(), "kept".into(), "a.b".into(), no_args.clone()).await.unwrap();
    let transient = ExchangeDeclareOptions { durable: false, ..DURABLE_EXCHANGE };
    ch.exchange_declare("fresh".into(), ExchangeKind::Topic, transient, no_args.clone()).await.unwrap();
    ch.exchange_bind("kept".into(), "fresh".into(), "a.*".into(), ExchangeBindOptions::default(), no_args.clone())
        .await
        .unwrap();
    ch.queue_declare("sink".into(), DURABLE_QUEUE, quorum_args()).await.unwrap();
    ch.queue_bind("sink".into(), "kept".into(), "a.b".into(), QueueBindOptions::default(), no_args.clone())
        .await
        .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    // One entry each (each waits for its confirm): snapshots after the topology's entries.
    for i in 0..12 {
        assert!(routed(&ch, "fresh", "a.b", &format!("m{i}")).await, "m{i}");
    }

    nodes[f].start();
    let ch_f = channel(&nodes[f]).await;
    binding_on(&nodes[f], "fresh", "kept", true).await;
    assert_eq!(exchanges(&nodes[f]).await, exchanges(&nodes[via]).await);
    assert_eq!(passive(&nodes[f], "old").await, Err(Some(404)), "deleted while the node was down");
    binding_on(&nodes[f], "old", "kept", false).await;
    binding_on(&nodes[f], "kept", "unbound", false).await;
    ch_f.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    assert!(routed(&ch_f, "fresh", "a.b", "after").await, "routed on the node restored from a snapshot");
    let want: BTreeSet<String> = (0..12).map(|i| format!("m{i}")).chain(["after".to_owned()]).collect();
    let (got, _) = consume_all(&ch_f, "sink", &want, Duration::from_secs(10)).await;
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);
    // Unbound while the node was down: nothing reached it, through any node.
    for n in [&nodes[f], &nodes[via]] {
        let q = n.http().get_queue_info("/", "unbound").await.unwrap();
        assert_eq!(q.message_count, 0, "{}", n.full);
    }
    // Once more, killed and restarted: its own snapshot and log give the same exchanges.
    nodes[f].kill();
    nodes[f].start();
    let _ = channel(&nodes[f]).await;
    eventually("the same exchanges after a second restart", Duration::from_secs(10), || async {
        let (x, y) = (exchanges(&nodes[f]).await, exchanges(&nodes[via]).await);
        if x == y { Ok(()) } else { Err(format!("{x:?} vs {y:?}")) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_majority_an_exchange_declare_fails_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, f) = started_cluster(dir.path(), "warren.cluster_write_timeout_ms = 1500\n").await;
    let last = f;
    for i in (0..3).filter(|&i| i != last) {
        nodes[i].kill();
    }
    let ch = channel(&nodes[last]).await;
    let t = Instant::now();
    let e = ch
        .exchange_declare("lonely".into(), ExchangeKind::Direct, DURABLE_EXCHANGE, FieldTable::default())
        .await
        .unwrap_err();
    let took = t.elapsed();
    assert_eq!(reply_code(&e), Some(541), "{e}");
    assert!(took < Duration::from_secs(6), "refused after {took:?}");
    let t = Instant::now();
    let e =
        nodes[last].http().declare_exchange("/", &ExchangeParams::durable_direct("lonely2", None)).await.unwrap_err();
    assert!(format!("{e:?}").contains("503"), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(6), "refused after {:?}", t.elapsed());
    assert!(exchanges(&nodes[last]).await.is_empty(), "nothing declared");
}

/// `n`'s (last applied, snapshot) Raft indexes.
fn log_positions(n: &Node) -> (u64, u64) {
    let v = n.api("/api/warren/cluster");
    let log = &v["log"];
    (log["last_applied_index"].as_u64().unwrap(), log["snapshot_index"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_classic_bindings_of_exchanges_declared_after_its_last_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, f) = started_cluster(dir.path(), "warren.cluster_snapshot_every = 8\n").await;
    let ch = channel(&nodes[f]).await;
    let no_args = FieldTable::default();
    // Entries until this node has just taken a snapshot, so the next declare is after it.
    let mut pads = 0;
    loop {
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut snapped = false;
        while Instant::now() < deadline && !snapped {
            let (applied, snapshot) = log_positions(&nodes[f]);
            snapped = applied == snapshot;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if snapped {
            break;
        }
        assert!(pads < 20, "no snapshot of its own after {pads} entries");
        let pad = format!("pad{pads}");
        ch.exchange_declare(pad.as_str().into(), ExchangeKind::Direct, DURABLE_EXCHANGE, no_args.clone())
            .await
            .unwrap();
        pads += 1;
    }
    // Declared, deleted and declared again: three entries the restart replays.
    for _ in 0..2 {
        ch.exchange_declare("late".into(), ExchangeKind::Fanout, DURABLE_EXCHANGE, no_args.clone()).await.unwrap();
        ch.exchange_delete("late".into(), ExchangeDeleteOptions::default()).await.unwrap();
    }
    ch.exchange_declare("late".into(), ExchangeKind::Direct, DURABLE_EXCHANGE, no_args.clone()).await.unwrap();
    let (applied, snapshot) = log_positions(&nodes[f]);
    assert!(applied - snapshot >= 5, "the deletes are after the node's last snapshot ({snapshot}, {applied})");
    // A classic queue homed here and its binding (also in this node's definitions log).
    ch.queue_declare("cq".into(), DURABLE_QUEUE, FieldTable::default()).await.unwrap();
    ch.queue_bind("cq".into(), "late".into(), "k".into(), QueueBindOptions::default(), no_args.clone()).await.unwrap();

    nodes[f].kill();
    nodes[f].start();
    let ch = channel(&nodes[f]).await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    binding_on(&nodes[f], "late", "cq", true).await;
    assert!(routed(&ch, "late", "k", "kept").await, "the classic binding survived the restart");
    for n in &nodes {
        assert_eq!(passive(n, "late").await, Ok(()), "{}", n.full);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definitions_import_declares_exchanges_and_their_bindings_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, f) = started_cluster(dir.path(), "").await;
    let (a, b) = (f, (f + 1) % 3);
    // A quorum queue the import binds; a classic queue on node b the import binds too.
    let ch_a = channel(&nodes[a]).await;
    ch_a.queue_declare("imported.q".into(), DURABLE_QUEUE, quorum_args()).await.unwrap();
    let defs = serde_json::json!({
        "exchanges": [
            {"name": "imp.topic", "vhost": "/", "type": "topic", "durable": true, "auto_delete": false,
             "internal": false, "arguments": {}},
            {"name": "imp.direct", "vhost": "/", "type": "direct", "durable": false, "auto_delete": false,
             "internal": false, "arguments": {}}
        ],
        "queues": [
            {"name": "imp.classic", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {}},
            {"name": "imp.qq", "vhost": "/", "durable": true, "auto_delete": false,
             "arguments": {"x-queue-type": "quorum"}}
        ],
        "bindings": [
            {"source": "imp.topic", "vhost": "/", "destination": "imp.direct", "destination_type": "exchange",
             "routing_key": "i.*", "arguments": {}},
            {"source": "imp.direct", "vhost": "/", "destination": "imported.q", "destination_type": "queue",
             "routing_key": "i.x", "arguments": {}},
            {"source": "imp.direct", "vhost": "/", "destination": "imp.classic", "destination_type": "queue",
             "routing_key": "i.x", "arguments": {}},
            {"source": "imp.direct", "vhost": "/", "destination": "imp.qq", "destination_type": "queue",
             "routing_key": "i.x", "arguments": {}}
        ]
    });
    eventually("the quorum queue on node b", Duration::from_secs(10), || async {
        nodes[b].http().get_queue_info("/", "imported.q").await.map(drop).map_err(|e| e.to_string())
    })
    .await;
    nodes[b].http().import_definitions(defs).await.unwrap();
    for n in &nodes {
        binding_on(n, "imp.topic", "imp.direct", true).await;
        binding_on(n, "imp.direct", "imported.q", true).await;
        // A quorum queue in the import is one on every node, with its binding.
        binding_on(n, "imp.direct", "imp.qq", true).await;
        let q = n.http().get_queue_info("/", "imp.qq").await.unwrap();
        assert_eq!(q.queue_type, "quorum", "{}", n.full);
        let x = exchanges(n).await;
        let want =
            [("imp.direct".to_owned(), "direct".to_owned(), false), ("imp.topic".to_owned(), "topic".to_owned(), true)];
        assert_eq!(x, want, "{}", n.full);
    }
    // The classic queue lives on node b (its home), and every node has it and its binding.
    for n in &nodes {
        binding_on(n, "imp.direct", "imp.classic", true).await;
        let q = n.http().get_queue_info("/", "imp.classic").await.unwrap();
        assert_eq!(q.node, nodes[b].full, "{}: the imported classic queue's home", n.full);
    }
    // A publish on node a routes through the imported topology to the quorum queue.
    ch_a.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    assert!(routed(&ch_a, "imp.topic", "i.x", "imported").await);
    let want: BTreeSet<String> = ["imported".to_owned()].into();
    let (got, _) = consume_all(&ch_a, "imported.q", &want, Duration::from_secs(10)).await;
    assert_eq!(got, ["imported"]);
    let ch_c = channel(&nodes[(f + 2) % 3]).await;
    let (got, _) = consume_all(&ch_c, "imp.qq", &want, Duration::from_secs(10)).await;
    assert_eq!(got, ["imported"], "the imported quorum queue got it, read on a third node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_declared_and_deleted_through_the_api_is_on_every_node() {
    use rabbitmq_http_client::requests::QueueParams;
    let dir = tempfile::tempdir().unwrap();
    let (nodes, f) = started_cluster(dir.path(), "").await;
    let (a, b) = (f, (f + 1) % 3);
    nodes[a].http().declare_queue("/", &QueueParams::new_quorum_queue("api.qq", None)).await.unwrap();
    // Declared through the log: every node has it as a quorum queue at once (no barrier
    // needed for the API's answer to hold elsewhere: the entry is committed).
    for n in &nodes {
        eventually("the API's quorum queue on every node", Duration::from_secs(10), || async {
            let q = n.http().get_queue_info("/", "api.qq").await.map_err(|e| e.to_string())?;
            if q.queue_type == "quorum" { Ok(()) } else { Err(format!("{}: type {}", n.full, q.queue_type)) }
        })
        .await;
    }
    // A message published on another node is there; a non-durable one is refused (400).
    let ch = channel(&nodes[b]).await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let props = lapin::BasicProperties::default().with_delivery_mode(2);
    let c = ch.basic_publish("".into(), "api.qq".into(), BasicPublishOptions::default(), b"m", props).await.unwrap();
    assert!(c.await.unwrap().is_ack());
    let mut bad = QueueParams::new_quorum_queue("api.bad", None);
    bad.durable = false;
    let refused = nodes[a].http().declare_queue("/", &bad).await;
    assert!(refused.is_err(), "a non-durable quorum queue through the API: {refused:?}");
    for n in &nodes {
        assert!(n.http().get_queue_info("/", "api.bad").await.is_err(), "{} has the refused queue", n.full);
    }
    // Deleted through the API on a third node: gone everywhere.
    nodes[(f + 2) % 3].http().delete_queue("/", "api.qq", false).await.unwrap();
    for n in &nodes {
        eventually("the API's delete on every node", Duration::from_secs(10), || async {
            match n.http().get_queue_info("/", "api.qq").await {
                Err(_) => Ok(()),
                Ok(_) => Err(format!("{} still has api.qq", n.full)),
            }
        })
        .await;
    }
}
