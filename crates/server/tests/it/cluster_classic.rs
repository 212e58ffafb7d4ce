//! Classic queues reachable from every node of a cluster (`server::classic_queues`): a
//! queue declared on one node (its home) is declared, listed, published to, taken from
//! and deleted on the others, its messages staying on the home. Three real `warren`
//! processes (`it::cluster_fixture`), lapin and `rabbitmq_http_client` as the witnesses.

use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};

use crate::cluster_fixture::{Node, eventually, reply_code, started_cluster};

const DURABLE: QueueDeclareOptions =
    QueueDeclareOptions { passive: false, durable: true, exclusive: false, auto_delete: false, nowait: false };
const PASSIVE: QueueDeclareOptions =
    QueueDeclareOptions { passive: true, durable: false, exclusive: false, auto_delete: false, nowait: false };

/// A passive declare of `queue` on `n`: its message count, or the reply code and text.
async fn passive(n: &Node, queue: &str) -> Result<u32, (Option<u16>, String)> {
    let c = n.amqp("guest", "guest", "/").await.map_err(|e| (None, e.to_string()))?;
    let ch = c.create_channel().await.map_err(|e| (None, e.to_string()))?;
    let r = ch.queue_declare(queue.into(), PASSIVE, FieldTable::default()).await;
    let _ = c.close(200, "bye".into()).await;
    r.map(|q| q.message_count()).map_err(|e| (reply_code(&e), e.to_string()))
}

/// Publish `n` persistent messages `{prefix}{i}` on `ch` (in confirm mode); returns how many
/// were acked and how many nacked.
async fn publish(ch: &lapin::Channel, exchange: &str, key: &str, prefix: &str, n: usize) -> (usize, usize) {
    let props = BasicProperties::default().with_delivery_mode(2);
    let mut waits = Vec::new();
    for i in 0..n {
        let body = format!("{prefix}{i}");
        let c = ch
            .basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), body.as_bytes(), props.clone())
            .await
            .unwrap();
        waits.push(c);
    }
    let (mut acked, mut nacked) = (0, 0);
    for c in waits {
        match c.await.unwrap() {
            c if c.is_ack() => acked += 1,
            _ => nacked += 1,
        }
    }
    (acked, nacked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_queue_is_reachable_from_every_node_and_its_messages_stay_on_its_home() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _) = started_cluster(dir.path(), "").await;
    let (a, b, c) = (0, 1, 2);

    // Declared on A (its home): B and C see it, and /api/queues on each lists it once, on A.
    let ca = nodes[a].amqp("guest", "guest", "/").await.unwrap();
    let cha = ca.create_channel().await.unwrap();
    cha.queue_declare("cq".into(), DURABLE, FieldTable::default()).await.unwrap();
    for &i in &[b, c] {
        let n = &nodes[i];
        eventually("the classic queue declared on A is seen", Duration::from_secs(10), || async move {
            passive(n, "cq").await.map(drop).map_err(|e| format!("{}: {e:?}", n.full))
        })
        .await;
    }
    for n in &nodes {
        let listed: Vec<_> = n.http().list_queues().await.unwrap().into_iter().filter(|q| q.name == "cq").collect();
        assert_eq!(listed.len(), 1, "{}: {listed:?}", n.full);
        assert_eq!(listed[0].node, nodes[a].full, "{}: the queue's node is its home", n.full);
    }
    // A declare on B with other arguments is refused as on the home.
    let cb = nodes[b].amqp("guest", "guest", "/").await.unwrap();
    let chb = cb.create_channel().await.unwrap();
    let mut other = FieldTable::default();
    other.insert("x-max-length".into(), AMQPValue::LongLongInt(5));
    let e = chb.queue_declare("cq".into(), DURABLE, other).await.unwrap_err();
    assert_eq!(reply_code(&e), Some(406), "{e}");
    let chb = cb.create_channel().await.unwrap();
    // The same declare on B answers with the home's count.
    assert_eq!(chb.queue_declare("cq".into(), DURABLE, FieldTable::default()).await.unwrap().message_count(), 0);

    // A direct exchange and a binding made on C route B's publishes to A's queue.
    let cc = nodes[c].amqp("guest", "guest", "/").await.unwrap();
    let chc = cc.create_channel().await.unwrap();
    let durable_x = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    chc.exchange_declare("cx".into(), lapin::ExchangeKind::Direct, durable_x, FieldTable::default()).await.unwrap();
    chc.queue_bind("cq".into(), "cx".into(), "k".into(), QueueBindOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let nb = &nodes[b];
    eventually("B has the binding made on C", Duration::from_secs(10), || async move {
        let bs = nb.http().list_queue_bindings("/", "cq").await.map_err(|e| e.to_string())?;
        if bs.iter().any(|x| x.source == "cx" && x.routing_key == "k") { Ok(()) } else { Err(format!("{bs:?}")) }
    })
    .await;

    // Publishes with confirms on B: acked once A has them; they are in A's queue.
    chb.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    assert_eq!(publish(&chb, "", "cq", "d", 10).await, (10, 0), "default exchange");
    assert_eq!(publish(&chb, "cx", "k", "x", 10).await, (10, 0), "direct exchange bound on C");
    assert_eq!(passive(&nodes[a], "cq").await.unwrap(), 20, "the messages are on the home");
    assert_eq!(passive(&nodes[c], "cq").await.unwrap(), 20, "C's declare-ok asks the home");
    // B's /api/queues shows the home's count once B has refreshed it (every 5 s).
    let nb = &nodes[b];
    eventually("B's API shows the home's count", Duration::from_secs(12), || async move {
        let q = nb.http().get_queue_info("/", "cq").await.map_err(|e| e.to_string())?;
        if q.message_count == 20 { Ok(()) } else { Err(format!("{} messages", q.message_count)) }
    })
    .await;

    // basic.get on C: an ack removes the message on A; one taken and left unacked goes
    // back (redelivered) when C's connection closes.
    let m = chc.basic_get("cq".into(), BasicGetOptions::default()).await.unwrap().expect("a message");
    assert_eq!(m.delivery.data, b"d0");
    assert_eq!(m.message_count, 19);
    chc.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default()).await.unwrap();
    let na = &nodes[a];
    eventually("the ack from C reached A", Duration::from_secs(10), || async move {
        match passive(na, "cq").await {
            Ok(19) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let m = chc.basic_get("cq".into(), BasicGetOptions::default()).await.unwrap().expect("a message");
    assert_eq!(m.delivery.data, b"d1");
    assert!(!m.delivery.redelivered);
    cc.close(200, "bye".into()).await.unwrap();
    eventually("the message C took unacked is back on A", Duration::from_secs(10), || async move {
        match passive(na, "cq").await {
            Ok(19) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let again = cha.basic_get("cq".into(), BasicGetOptions { no_ack: true }).await.unwrap().expect("a message");
    assert_eq!((again.delivery.data.as_slice(), again.delivery.redelivered), (&b"d1"[..], true));

    // A consumer on C (prefetch 5): the home pushes it 5 messages, 2 more after 2 acks; its
    // connection closed, the 5 it holds go back to A.
    let cc = nodes[c].amqp("guest", "guest", "/").await.unwrap();
    let chc = cc.create_channel().await.unwrap();
    chc.basic_qos(5, BasicQosOptions::default()).await.unwrap();
    let mut consumer =
        chc.basic_consume("cq".into(), "".into(), BasicConsumeOptions::default(), FieldTable::default()).await.unwrap();
    let mut got = Vec::new();
    for i in 0..7 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("delivery {i} did not come (got {got:?})"))
            .unwrap()
            .unwrap();
        got.push(String::from_utf8(d.data.clone()).unwrap());
        if i < 2 {
            d.ack(BasicAckOptions::default()).await.unwrap();
        }
        if i == 4 {
            // Prefetch reached: nothing more comes until the acks free credit.
            assert!(got.len() == 5);
        }
    }
    assert_eq!(got, ["d2", "d3", "d4", "d5", "d6", "d7", "d8"]);
    let extra = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
    assert!(extra.is_err(), "no more than the prefetch unacked: {extra:?}");
    cc.close(200, "bye".into()).await.unwrap();
    eventually("the consumer's unacked messages are back on A", Duration::from_secs(10), || async move {
        match passive(na, "cq").await {
            Ok(16) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let again = cha.basic_get("cq".into(), BasicGetOptions { no_ack: true }).await.unwrap().expect("a message");
    assert_eq!((again.delivery.data.as_slice(), again.delivery.redelivered), (&b"d4"[..], true));

    // Deleted on C: gone everywhere, messages included.
    let cc = nodes[c].amqp("guest", "guest", "/").await.unwrap();
    let chc = cc.create_channel().await.unwrap();
    assert_eq!(chc.queue_delete("cq".into(), QueueDeleteOptions::default()).await.unwrap(), 15);
    for n in &nodes {
        eventually("the deleted queue is gone", Duration::from_secs(10), || async move {
            match passive(n, "cq").await {
                Err((Some(404), _)) => Ok(()),
                other => Err(format!("{}: {other:?}", n.full)),
            }
        })
        .await;
    }

    // The home stops: a declare on B is 404 with RabbitMQ's text, a publish to it is nacked.
    cha.queue_declare("cq2".into(), DURABLE, FieldTable::default()).await.unwrap();
    let nb = &nodes[b];
    eventually("cq2 is seen on B", Duration::from_secs(10), || async move {
        passive(nb, "cq2").await.map(drop).map_err(|e| format!("{e:?}"))
    })
    .await;
    // A consumer on B gets a message published on C, then is cancelled (basic.cancel) when
    // the home dies.
    let cons_b = cb.create_channel().await.unwrap();
    let mut consumer_b = cons_b
        .basic_consume("cq2".into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    chc.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    assert_eq!(publish(&chc, "", "cq2", "to-b", 1).await, (1, 0));
    let d = tokio::time::timeout(Duration::from_secs(10), consumer_b.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(d.data, b"to-b0");
    d.ack(BasicAckOptions::default()).await.unwrap();
    nodes[a].kill();
    let end = tokio::time::timeout(Duration::from_secs(10), consumer_b.next()).await;
    assert!(matches!(end, Ok(None)), "the consumer on B is cancelled when the home dies: {end:?}");
    let chb = cb.create_channel().await.unwrap();
    let e = chb.queue_declare("cq2".into(), DURABLE, FieldTable::default()).await.unwrap_err();
    assert_eq!(reply_code(&e), Some(404), "{e}");
    let text = e.to_string();
    let want = format!("home node '{}' of durable queue 'cq2' in vhost '/' is down or inaccessible", nodes[a].full);
    assert!(text.contains(&want), "{text}");
    let chb = cb.create_channel().await.unwrap();
    chb.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    assert_eq!(publish(&chb, "", "cq2", "lost", 3).await, (0, 3), "nacked while the home is down");
    eprintln!("classic queues across nodes: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_home_requeues_what_a_killed_consumer_node_held() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _) = started_cluster(dir.path(), "").await;
    let (a, c) = (0, 2);
    let ca = nodes[a].amqp("guest", "guest", "/").await.unwrap();
    let cha = ca.create_channel().await.unwrap();
    cha.queue_declare("work".into(), DURABLE, FieldTable::default()).await.unwrap();
    cha.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    assert_eq!(publish(&cha, "", "work", "w", 10).await, (10, 0));
    let nc = &nodes[c];
    eventually("the queue is seen on C", Duration::from_secs(10), || async move {
        passive(nc, "work").await.map(drop).map_err(|e| format!("{e:?}"))
    })
    .await;

    // A consumer on C holds 4 unacked; C is killed: A gets them back, redelivered.
    let cc = nodes[c].amqp("guest", "guest", "/").await.unwrap();
    let chc = cc.create_channel().await.unwrap();
    chc.basic_qos(4, BasicQosOptions::default()).await.unwrap();
    let mut consumer = chc
        .basic_consume("work".into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    for i in 0..4 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(d.data, format!("w{i}").as_bytes());
    }
    assert_eq!(passive(&nodes[a], "work").await.unwrap(), 6, "4 are out to C");
    let killed = Instant::now();
    nodes[c].kill();
    let na = &nodes[a];
    eventually("A requeues what the killed node held", Duration::from_secs(10), || async move {
        match passive(na, "work").await {
            Ok(10) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    eprintln!("requeued {:?} after the kill", killed.elapsed());
    let m = cha.basic_get("work".into(), BasicGetOptions { no_ack: true }).await.unwrap().expect("a message");
    assert_eq!((m.delivery.data.as_slice(), m.delivery.redelivered), (&b"w0"[..], true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_nodes_reach_the_classic_queue_again_through_the_log_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _) = started_cluster(dir.path(), "warren.cluster_snapshot_every = 4\n").await;
    let (a, b, c) = (0, 1, 2);
    let ca = nodes[a].amqp("guest", "guest", "/").await.unwrap();
    let cha = ca.create_channel().await.unwrap();
    cha.queue_declare("kept".into(), DURABLE, FieldTable::default()).await.unwrap();
    let durable_x = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    cha.exchange_declare("kx".into(), lapin::ExchangeKind::Direct, durable_x, FieldTable::default()).await.unwrap();
    cha.queue_bind("kept".into(), "kx".into(), "k".into(), QueueBindOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let nb = &nodes[b];
    eventually("B has the queue's binding", Duration::from_secs(10), || async move {
        let bs = nb.http().list_queue_bindings("/", "kept").await.map_err(|e| e.to_string())?;
        if bs.iter().any(|x| x.source == "kx") { Ok(()) } else { Err(format!("{bs:?}")) }
    })
    .await;

    // B killed while other queues come and go (entries enough for snapshots), restarted:
    // it has the queue and its binding again and routes to A.
    nodes[b].kill();
    for i in 0..6 {
        let name = format!("churn{i}");
        cha.queue_declare(name.as_str().into(), DURABLE, FieldTable::default()).await.unwrap();
        cha.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
    }
    nodes[b].start();
    let nb = &nodes[b];
    eventually("the restarted B routes to A's queue", Duration::from_secs(20), || async move {
        let conn = nb.amqp("guest", "guest", "/").await.map_err(|e| e.to_string())?;
        let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
        ch.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| e.to_string())?;
        let props = BasicProperties::default().with_delivery_mode(2);
        let opts = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
        let confirm = ch
            .basic_publish("kx".into(), "k".into(), opts, b"via-b", props)
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let _ = conn.close(200, "bye".into()).await;
        // Acked and not returned: routed to the queue.
        if confirm.is_ack() && confirm.take_message().is_none() { Ok(()) } else { Err("not routed".into()) }
    })
    .await;
    let m = cha.basic_get("kept".into(), BasicGetOptions { no_ack: true }).await.unwrap().expect("the message on A");
    assert_eq!(m.delivery.data, b"via-b");
    for i in 0..6 {
        let gone = passive(&nodes[b], &format!("churn{i}")).await;
        assert!(matches!(gone, Err((Some(404), _))), "churn{i} on B: {gone:?}");
    }

    // A (the home) killed and restarted: its durable queue and the directory entry are
    // kept, so C still reaches it; C's consumer of it is cancelled (the restarted home does
    // not have it), however quickly A came back.
    let cc = nodes[c].amqp("guest", "guest", "/").await.unwrap();
    let chc = cc.create_channel().await.unwrap();
    let mut consumer = chc
        .basic_consume("kept".into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    nodes[a].kill();
    nodes[a].start();
    let end = tokio::time::timeout(Duration::from_secs(15), consumer.next()).await;
    assert!(matches!(end, Ok(None)), "C's consumer is cancelled: {end:?}");
    let nc = &nodes[c];
    eventually("C reaches the restarted home's queue", Duration::from_secs(20), || async move {
        passive(nc, "kept").await.map(drop).map_err(|e| format!("{e:?}"))
    })
    .await;
    assert_eq!(passive(&nodes[a], "kept").await.unwrap(), 0);
}

/// The janitor drops the directory entries of queues that went away on their home by
/// themselves (auto-delete, x-expires): every node then answers 404 for them. It scans
/// only when a vhost's topology or the directory changed (`classic_queues::Fingerprint`),
/// so this also checks that those changes wake it after idle rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_their_home_auto_deleted_or_expired_leave_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, _) = started_cluster(dir.path(), "").await;
    let (a, b, c) = (0, 1, 2);
    let ca = nodes[a].amqp("guest", "guest", "/").await.unwrap();
    let cha = ca.create_channel().await.unwrap();
    let auto_delete = QueueDeclareOptions { durable: false, auto_delete: true, ..DURABLE };
    cha.queue_declare("ad".into(), auto_delete, FieldTable::default()).await.unwrap();
    let consumer = cha
        .basic_consume("ad".into(), "ad-consumer".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let mut expiring = FieldTable::default();
    expiring.insert("x-expires".into(), AMQPValue::LongInt(3000));
    cha.queue_declare("exp".into(), DURABLE, expiring).await.unwrap();
    for &i in &[b, c] {
        let n = &nodes[i];
        eventually("both queues are in the directory", Duration::from_secs(10), || async move {
            for q in ["ad", "exp"] {
                n.http().get_queue_info("/", q).await.map_err(|e| format!("{}: {q}: {e}", n.full))?;
            }
            Ok(())
        })
        .await;
    }
    // Idle janitor rounds on every node (nothing to reconcile), then the home's own changes.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    cha.basic_cancel(consumer.tag(), lapin::options::BasicCancelOptions::default()).await.unwrap();
    let gone_at_home = passive(&nodes[a], "ad").await;
    assert!(matches!(gone_at_home, Err((Some(404), _))), "auto-deleted on its home: {gone_at_home:?}");
    for &i in &[b, c] {
        let n = &nodes[i];
        eventually(
            "the auto-deleted and the expired queue leave the directory",
            Duration::from_secs(15),
            || async move {
                for q in ["ad", "exp"] {
                    if n.http().get_queue_info("/", q).await.is_ok() {
                        return Err(format!("{}: {q} still listed", n.full));
                    }
                }
                Ok(())
            },
        )
        .await;
        for q in ["ad", "exp"] {
            let r = passive(n, q).await;
            assert!(matches!(r, Err((Some(404), _))), "{}: {q}: {r:?}", n.full);
        }
    }
}
