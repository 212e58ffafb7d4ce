//! Graceful stop, then a new server on the same data directory.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions};
use lapin::types::AMQPValue;

use super::*;

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    w!(ch.queue_bind(queue.into(), exchange.into(), key.into(), QueueBindOptions::default(), FieldTable::default()))
        .unwrap_or_else(|e| panic!("queue.bind {queue} <- {exchange} ({key}): {e}"));
}

fn args(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn ids(n: usize, prefix: &str) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Expected (body, redelivered) pairs.
fn pairs(v: &[(&str, bool)]) -> Vec<(String, bool)> {
    v.iter().map(|&(b, r)| (b.to_owned(), r)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_topology_and_persistent_messages_survive_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_persistent(tmp.path()).await;
    let (conn, ch) = open(&server).await;
    declare_exchange(&ch, "d.topic", ExchangeKind::Topic, durable_exchange()).await;
    declare_exchange(&ch, "t.fanout", ExchangeKind::Fanout, ExchangeDeclareOptions::default()).await;
    declare_queue(&ch, "d.q", QueueDeclareOptions::durable(), FieldTable::default()).await;
    declare_queue(&ch, "nd.q", QueueDeclareOptions::default(), FieldTable::default()).await;
    declare_queue(&ch, "d.behind-transient", QueueDeclareOptions::durable(), FieldTable::default()).await;
    let excl = QueueDeclareOptions { durable: true, exclusive: true, ..QueueDeclareOptions::default() };
    declare_queue(&ch, "d.excl", excl, FieldTable::default()).await;
    bind(&ch, "d.q", "d.topic", "a.#").await;
    bind(&ch, "nd.q", "d.topic", "a.#").await;
    bind(&ch, "d.behind-transient", "t.fanout", "").await;

    // m0..m14 to d.q and nd.q; every third one (m2, m5, …) transient.
    let pch = confirm_channel(&conn).await;
    for (i, id) in ids(15, "m").iter().enumerate() {
        let props = if i % 3 == 2 { transient(id) } else { persistent(id) };
        publish_confirmed(&pch, "d.topic", "a.b", id, props).await;
    }
    publish_confirmed(&pch, "", "d.excl", "exclusive", persistent("exclusive")).await;
    publish_confirmed(&pch, "t.fanout", "", "via the transient exchange", persistent("vt")).await;

    // m0 acked; m1 and m2 delivered and still unacked when the server stops.
    let cch = channel(&conn).await;
    let m0 = w!(cch.basic_get("d.q".into(), BasicGetOptions::default())).expect("get").expect("m0");
    assert_eq!(m0.delivery.data, b"m0");
    w!(m0.delivery.acker.ack(BasicAckOptions::default())).expect("ack m0");
    for want in ["m1", "m2"] {
        let m = w!(cch.basic_get("d.q".into(), BasicGetOptions::default())).expect("get").expect(want);
        assert_eq!(m.delivery.data, want.as_bytes());
    }
    server.stop().await;

    let server = TestServer::start_persistent(tmp.path()).await;
    let (conn, ch) = open(&server).await;
    assert_eq!(exchange_exists(&conn, "d.topic").await, Ok(()), "durable exchange");
    assert_eq!(exchange_exists(&conn, "t.fanout").await, Err(Some(404)), "non-durable exchange");
    assert_eq!(queue_count(&conn, "nd.q").await, Err(Some(404)), "non-durable queue");
    assert_eq!(queue_count(&conn, "d.excl").await, Err(Some(404)), "durable exclusive queue");
    assert_eq!(queue_count(&conn, "d.behind-transient").await, Ok(1), "durable queue behind a transient exchange");
    assert_eq!(queue_count(&conn, "d.q").await, Ok(9), "persistent, unacked messages of d.q");

    // Persistent messages, in order; m1 was delivered before the stop. The properties
    // are the publisher's.
    let mut got = Vec::new();
    while let Some(m) = w!(ch.basic_get("d.q".into(), BasicGetOptions { no_ack: true })).expect("basic.get") {
        let body = String::from_utf8_lossy(&m.delivery.data).into_owned();
        let p = &m.delivery.properties;
        assert_eq!(p.delivery_mode(), &Some(2), "{body}: delivery mode");
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some(body.as_str()), "{body}: message id");
        assert_eq!(m.delivery.exchange.as_str(), "d.topic", "{body}: exchange");
        assert_eq!(m.delivery.routing_key.as_str(), "a.b", "{body}: routing key");
        got.push((body, m.delivery.redelivered));
    }
    let want = pairs(&[
        ("m1", true),
        ("m3", false),
        ("m4", false),
        ("m6", false),
        ("m7", false),
        ("m9", false),
        ("m10", false),
        ("m12", false),
        ("m13", false),
    ]);
    assert_eq!(got, want, "d.q after the restart");

    // The binding survived, with its key.
    let pch = confirm_channel(&conn).await;
    publish_confirmed(&pch, "d.topic", "a.after", "routed", persistent("routed")).await;
    publish_confirmed(&pch, "d.topic", "b.after", "unroutable", persistent("unroutable")).await;
    assert_eq!(get_all(&ch, "d.q").await, pairs(&[("routed", false)]));

    // The exchange kept its type and the queue its flags: other ones are inequivalent.
    let ch2 = channel(&conn).await;
    let r = w!(ch2.exchange_declare("d.topic".into(), ExchangeKind::Fanout, durable_exchange(), FieldTable::default()));
    assert_eq!(r.map_err(|e| reply_code(&e)), Err(Some(406)), "d.topic redeclared as fanout");
    let ch2 = channel(&conn).await;
    let r = w!(ch2.queue_declare("d.q".into(), QueueDeclareOptions::default(), FieldTable::default()));
    assert_eq!(r.map(|_| ()).map_err(|e| reply_code(&e)), Err(Some(406)), "d.q redeclared non-durable");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_unacked_at_the_stop_come_back_redelivered() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_persistent(tmp.path()).await;
    let (conn, ch) = open(&server).await;
    declare_queue(&ch, "c.q", QueueDeclareOptions::durable(), FieldTable::default()).await;
    let pch = confirm_channel(&conn).await;
    for id in ids(20, "c") {
        publish_confirmed(&pch, "", "c.q", &id, persistent(&id)).await;
    }
    let cch = channel(&conn).await;
    w!(cch.basic_qos(5, BasicQosOptions::default())).expect("basic.qos");
    let mut consumer =
        w!(cch.basic_consume("c.q".into(), "c".into(), BasicConsumeOptions::default(), FieldTable::default()))
            .expect("basic.consume");
    let mut delivered = Vec::new();
    for _ in 0..5 {
        let d = w!(consumer.next()).expect("a delivery").expect("delivery");
        delivered.push(d);
    }
    let bodies: Vec<&[u8]> = delivered.iter().map(|d| d.data.as_slice()).collect();
    assert_eq!(bodies, [b"c0", b"c1", b"c2", b"c3", b"c4"]);
    for d in &delivered[..2] {
        w!(d.acker.ack(BasicAckOptions::default())).expect("ack");
    }
    // The two acks free the prefetch window: c5 and c6 are delivered too.
    for want in ["c5", "c6"] {
        let d = w!(consumer.next()).expect("a delivery").expect("delivery");
        assert_eq!(d.data, want.as_bytes());
    }
    server.stop().await;

    let server = TestServer::start_persistent(tmp.path()).await;
    let (_conn, ch) = open(&server).await;
    let mut want: Vec<(String, bool)> = (2..7).map(|i| (format!("c{i}"), true)).collect();
    want.extend((7..20).map(|i| (format!("c{i}"), false)));
    assert_eq!(get_all(&ch, "c.q").await, want);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_durable_queues_and_exchanges_as_rabbitmq() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_persistent(tmp.path()).await;
    let (conn, ch) = open(&server).await;
    let ad = QueueDeclareOptions::durable().auto_delete();
    let ad_ex = ExchangeDeclareOptions { durable: true, auto_delete: true, ..ExchangeDeclareOptions::default() };
    // Never consumed: an auto-delete queue is only deleted when its last consumer goes,
    // so it stays, across the restart too.
    declare_queue(&ch, "ad.idle", ad, FieldTable::default()).await;
    declare_exchange(&ch, "ad.ex", ExchangeKind::Direct, ad_ex).await;
    bind(&ch, "ad.idle", "ad.ex", "k").await;
    let pch = confirm_channel(&conn).await;
    publish_confirmed(&pch, "", "ad.idle", "i0", persistent("i0")).await;
    publish_confirmed(&pch, "ad.ex", "k", "i1", persistent("i1")).await;
    // Consumed, then the consumer cancelled: deleted at once, and stays deleted.
    declare_queue(&ch, "ad.used", ad, FieldTable::default()).await;
    publish_confirmed(&pch, "", "ad.used", "u0", persistent("u0")).await;
    let cch = channel(&conn).await;
    let _consumer =
        w!(cch.basic_consume("ad.used".into(), "u".into(), BasicConsumeOptions::default(), FieldTable::default()))
            .expect("basic.consume");
    w!(cch.basic_cancel("u".into(), BasicCancelOptions::default())).expect("basic.cancel");
    assert_eq!(queue_count(&conn, "ad.used").await, Err(Some(404)), "auto-delete queue after its last consumer");
    // An auto-delete exchange whose last binding went is deleted, and stays deleted.
    declare_queue(&ch, "plain", QueueDeclareOptions::durable(), FieldTable::default()).await;
    declare_exchange(&ch, "ad.ex2", ExchangeKind::Direct, ad_ex).await;
    bind(&ch, "plain", "ad.ex2", "k").await;
    w!(ch.queue_unbind("plain".into(), "ad.ex2".into(), "k".into(), FieldTable::default())).expect("queue.unbind");
    assert_eq!(exchange_exists(&conn, "ad.ex2").await, Err(Some(404)), "auto-delete exchange after its last binding");
    server.stop().await;

    let server = TestServer::start_persistent(tmp.path()).await;
    let (conn, ch) = open(&server).await;
    assert_eq!(queue_count(&conn, "ad.used").await, Err(Some(404)), "ad.used after the restart");
    assert_eq!(exchange_exists(&conn, "ad.ex2").await, Err(Some(404)), "ad.ex2 after the restart");
    assert_eq!(exchange_exists(&conn, "ad.ex").await, Ok(()), "ad.ex after the restart");
    assert_eq!(queue_count(&conn, "ad.idle").await, Ok(2), "ad.idle after the restart");
    // Still auto-delete (an equivalent redeclare works, a non-auto-delete one is 406).
    declare_queue(&ch, "ad.idle", ad, FieldTable::default()).await;
    let ch2 = channel(&conn).await;
    let r = w!(ch2.queue_declare("ad.idle".into(), QueueDeclareOptions::durable(), FieldTable::default()));
    assert_eq!(r.map(|_| ()).map_err(|e| reply_code(&e)), Err(Some(406)), "ad.idle redeclared without auto-delete");
    // Its binding from ad.ex survived.
    let pch = confirm_channel(&conn).await;
    publish_confirmed(&pch, "ad.ex", "k", "i2", persistent("i2")).await;
    assert_eq!(get_all(&ch, "ad.idle").await, pairs(&[("i0", false), ("i1", false), ("i2", false)]));
    // And it still goes with its last consumer.
    let cch = channel(&conn).await;
    let _consumer =
        w!(cch.basic_consume("ad.idle".into(), "i".into(), BasicConsumeOptions::default(), FieldTable::default()))
            .expect("basic.consume");
    w!(cch.basic_cancel("i".into(), BasicCancelOptions::default())).expect("basic.cancel");
    assert_eq!(queue_count(&conn, "ad.idle").await, Err(Some(404)), "recovered auto-delete queue after its consumer");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_queue_order_survives_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_persistent(tmp.path()).await;
    let (conn, ch) = open(&server).await;
    declare_queue(&ch, "prio", QueueDeclareOptions::durable(), args(&[("x-max-priority", AMQPValue::LongInt(3))]))
        .await;
    let pch = confirm_channel(&conn).await;
    for (i, p) in [0u8, 3, 1, 3, 2, 0, 9].iter().enumerate() {
        let id = format!("p{i}");
        publish_confirmed(&pch, "", "prio", &id, persistent(&id).with_priority(*p)).await;
    }
    server.stop().await;

    let server = TestServer::start_persistent(tmp.path()).await;
    let (_conn, ch) = open(&server).await;
    // Highest first (9 counts as the maximum, 3), FIFO within a priority.
    let want = ["p1", "p3", "p6", "p4", "p2", "p0", "p5"].map(|b| (b.to_owned(), false));
    assert_eq!(get_all(&ch, "prio").await, want);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_ttl_keeps_counting_across_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_persistent(tmp.path()).await;
    let (conn, ch) = open(&server).await;
    declare_queue(
        &ch,
        "ttl.short",
        QueueDeclareOptions::durable(),
        args(&[("x-message-ttl", AMQPValue::LongInt(400))]),
    )
    .await;
    declare_queue(
        &ch,
        "ttl.long",
        QueueDeclareOptions::durable(),
        args(&[("x-message-ttl", AMQPValue::LongInt(600_000))]),
    )
    .await;
    declare_queue(&ch, "ttl.msg", QueueDeclareOptions::durable(), FieldTable::default()).await;
    let pch = confirm_channel(&conn).await;
    publish_confirmed(&pch, "", "ttl.short", "s", persistent("s")).await;
    publish_confirmed(&pch, "", "ttl.long", "l", persistent("l")).await;
    publish_confirmed(&pch, "", "ttl.msg", "short", persistent("short").with_expiration("400".into())).await;
    publish_confirmed(&pch, "", "ttl.msg", "long", persistent("long").with_expiration("600000".into())).await;
    server.stop().await;
    // The short TTLs run out while the broker is down.
    tokio::time::sleep(Duration::from_millis(600)).await;

    let server = TestServer::start_persistent(tmp.path()).await;
    let (_conn, ch) = open(&server).await;
    assert_eq!(get_all(&ch, "ttl.short").await, [], "expired during the downtime");
    assert_eq!(get_all(&ch, "ttl.long").await, pairs(&[("l", false)]));
    assert_eq!(get_all(&ch, "ttl.msg").await, pairs(&[("long", false)]));
    server.stop().await;
}

/// Queues deeper than their RAM budget (8 MiB): the durable one comes back whole and in
/// order; the non-durable one's paging files are wiped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_queues_page_to_disk_and_restart_cleanly() {
    const N: usize = 120;
    let big = |i: usize| -> Vec<u8> {
        let mut b = format!("big{i}:").into_bytes();
        b.extend((0..100 * 1024).map(|j| ((i * 31 + j * 7 + j / 251) % 256) as u8));
        b
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_persistent(tmp.path()).await;
    let (conn, ch) = open(&server).await;
    declare_queue(&ch, "deep.durable", QueueDeclareOptions::durable(), FieldTable::default()).await;
    declare_queue(&ch, "deep.transient", QueueDeclareOptions::default(), FieldTable::default()).await;
    let pch = confirm_channel(&conn).await;
    for i in 0..N {
        for (q, props) in [("deep.durable", persistent("d")), ("deep.transient", transient("t"))] {
            let c = w!(pch.basic_publish("".into(), q.into(), BasicPublishOptions::default(), &big(i), props))
                .expect("publish");
            assert_eq!(w!(c).expect("confirm"), Confirmation::Ack(None));
        }
    }
    let paged: usize = walk(&tmp.path().join("transient")).iter().map(|(_, n)| *n as usize).sum();
    assert!(paged > 1024 * 1024, "the non-durable queue pages to transient/ ({paged} bytes there)");
    server.stop().await;

    let server = TestServer::start_persistent(tmp.path()).await;
    let (conn, ch) = open(&server).await;
    assert_eq!(queue_count(&conn, "deep.transient").await, Err(Some(404)));
    assert_eq!(walk(&tmp.path().join("transient")), [], "transient/ is wiped at start");
    assert_eq!(queue_count(&conn, "deep.durable").await, Ok(N as u32));
    for i in 0..N {
        let m = w!(ch.basic_get("deep.durable".into(), BasicGetOptions { no_ack: true }))
            .expect("basic.get")
            .unwrap_or_else(|| panic!("message {i} is missing"));
        assert!(m.delivery.data == big(i), "message {i} differs");
    }
    assert_eq!(get_all(&ch, "deep.durable").await, []);
    server.stop().await;
}

/// Every file under `dir`, recursively: (path, size).
fn walk(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push((p, e.metadata().map(|m| m.len()).unwrap_or(0)));
        }
    }
    out
}

/// Transient messages that were paged out to a durable queue's files (the queue was over
/// its 8 MiB RAM budget) are gone after a restart, and not counted either: the message
/// count sees only the persistent messages. (6 MiB of them are paged out, more than the
/// store reads back in one go.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_out_transient_messages_are_gone_after_a_restart() {
    const N: usize = 140;
    let filler = vec![7u8; 100 * 1024];
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_persistent(tmp.path()).await;
    let (conn, ch) = open(&server).await;
    declare_queue(&ch, "mixed", QueueDeclareOptions::durable(), FieldTable::default()).await;
    declare_queue(
        &ch,
        "mixed.prio",
        QueueDeclareOptions::durable(),
        args(&[("x-max-priority", AMQPValue::LongInt(2))]),
    )
    .await;
    let pch = confirm_channel(&conn).await;
    for (q, prio) in [("mixed", 0u8), ("mixed.prio", 2)] {
        publish_confirmed(&pch, "", q, "first", persistent("first").with_priority(prio)).await;
        for _ in 0..N {
            let props = transient("filler").with_priority(prio);
            let c = w!(pch.basic_publish("".into(), q.into(), BasicPublishOptions::default(), &filler, props))
                .expect("publish");
            assert_eq!(w!(c).expect("confirm"), Confirmation::Ack(None));
        }
        publish_confirmed(&pch, "", q, "last", persistent("last").with_priority(prio)).await;
    }
    server.stop().await;

    let server = TestServer::start_persistent(tmp.path()).await;
    let (conn, ch) = open(&server).await;
    for q in ["mixed", "mixed.prio"] {
        assert_eq!(queue_count(&conn, q).await, Ok(2), "{q}: message count after the restart");
        assert_eq!(get_all(&ch, q).await, pairs(&[("first", false), ("last", false)]), "{q}: messages");
    }
    server.stop().await;
}
