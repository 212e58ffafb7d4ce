//! queue.*: declare (server-named, passive, counts, equivalence), exclusive and
//! auto-delete queues, bind/unbind, purge, delete and its conditions.

use lapin::options::{
    BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};

use super::*;

async fn declare_opts(ch: &Channel, name: &str, opts: QueueDeclareOptions) -> lapin::Result<lapin::Queue> {
    w!(ch.queue_declare(name.into(), opts, FieldTable::default()))
}

async fn passive(ch: &Channel, name: &str) -> lapin::Result<lapin::Queue> {
    declare_opts(ch, name, QueueDeclareOptions::default().passive()).await
}

async fn delete(ch: &Channel, name: &str, opts: QueueDeleteOptions) -> lapin::Result<u32> {
    w!(ch.queue_delete(name.into(), opts))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_named_queue_and_declare_ok_counts() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    assert!(q.starts_with("amq.gen-") && q.len() == "amq.gen-".len() + 22, "server-named queue {q}");
    let q2 = declare(&ch, "").await;
    assert_ne!(q, q2);
    publish(&ch, "", &q, b"to the generated name").await;
    assert_eq!(get_all(&ch, &q).await, ["to the generated name"]);

    // declare-ok carries the ready message count and the consumer count.
    declare(&ch, "counted").await;
    for i in 0..3 {
        publish(&ch, "", "counted", format!("m{i}").as_bytes()).await;
    }
    let again = declare_opts(&ch, "counted", QueueDeclareOptions::default()).await.expect("redeclare");
    assert_eq!((again.message_count(), again.consumer_count()), (3, 0));
    // A consumer holding one unacked message: 2 ready, 1 consumer.
    let other = channel(&conn).await;
    qos(&other, 1, false).await;
    let mut c = consume(&other, "counted", "").await;
    let _held = next(&mut c).await;
    let p = passive(&ch, "counted").await.expect("passive declare");
    assert_eq!((p.message_count(), p.consumer_count()), (2, 1));
    assert_eq!(p.name().as_str(), "counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_declare_of_missing_queue_is_404() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let r = passive(&ch, "missing").await;
    assert_channel_error(&conn, &ch, r, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_queue_name_is_403() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let r = declare_opts(&ch, "amq.mine", QueueDeclareOptions::default()).await;
    assert_channel_error(&conn, &ch, r, 403).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_with_other_flags_is_406_on_the_channel_only() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    declare_opts(&ch, "q", QueueDeclareOptions::default()).await.expect("declare");
    let r = declare_opts(&ch, "q", QueueDeclareOptions::durable()).await;
    assert_channel_error(&conn, &ch, r, 406).await;

    let ch = channel(&conn).await;
    let r = declare_opts(&ch, "q", QueueDeclareOptions::default().auto_delete()).await;
    assert_channel_error(&conn, &ch, r, 406).await;

    // The queue is unchanged and still usable.
    let ch = channel(&conn).await;
    declare_opts(&ch, "q", QueueDeclareOptions::default()).await.expect("equivalent redeclare");
    publish(&ch, "", "q", b"still here").await;
    assert_eq!(get_all(&ch, "q").await, ["still here"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queue_is_locked_to_its_connection_and_goes_with_it() {
    let server = TestServer::start().await;
    let (owner, och) = open(&server).await;
    declare_opts(&och, "excl", QueueDeclareOptions::exclusive()).await.expect("declare exclusive");
    publish(&och, "", "excl", b"mine").await;

    let other = connect(&server).await;
    // Every use from another connection: 405 RESOURCE_LOCKED, closing only that channel.
    let ch = channel(&other).await;
    let r = passive(&ch, "excl").await;
    assert_channel_error(&other, &ch, r, 405).await;
    let ch = channel(&other).await;
    let r = declare_opts(&ch, "excl", QueueDeclareOptions::default()).await;
    assert_channel_error(&other, &ch, r, 405).await;
    let ch = channel(&other).await;
    let r = w!(ch.basic_consume("excl".into(), "".into(), BasicConsumeOptions::default(), FieldTable::default()));
    assert_channel_error(&other, &ch, r, 405).await;
    let ch = channel(&other).await;
    let r = w!(ch.basic_get("excl".into(), Default::default()));
    assert_channel_error(&other, &ch, r, 405).await;
    let ch = channel(&other).await;
    let r = w!(ch.queue_purge("excl".into(), QueuePurgeOptions::default()));
    assert_channel_error(&other, &ch, r, 405).await;
    let ch = channel(&other).await;
    let r = delete(&ch, "excl", QueueDeleteOptions::default()).await;
    assert_channel_error(&other, &ch, r, 405).await;

    // The owner is unaffected.
    assert_eq!(get_all(&och, "excl").await, ["mine"]);

    // When the owning connection closes, the queue is deleted.
    w!(owner.close(200, "OK".into())).expect("close owner");
    let ch = channel(&other).await;
    let mut gone = false;
    for _ in 0..50 {
        let probe = channel(&other).await;
        match passive(&probe, "excl").await {
            Err(e) => {
                assert_code(&e, 404);
                gone = true;
                break;
            }
            Ok(_) => {
                w!(probe.close(200, "OK".into())).expect("close probe");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    assert!(gone, "the exclusive queue outlived its connection");
    // Its name is free again.
    declare_opts(&ch, "excl", QueueDeclareOptions::default()).await.expect("redeclare by another connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_queue_goes_after_its_last_consumer_cancels() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    declare_opts(&ch, "ad", QueueDeclareOptions::default().auto_delete()).await.expect("declare");
    // Never consumed: it stays.
    passive(&ch, "ad").await.expect("exists before any consumer");
    let _c1 = consume(&ch, "ad", "c1").await;
    let _c2 = consume(&ch, "ad", "c2").await;
    w!(ch.basic_cancel("c1".into(), Default::default())).expect("cancel c1");
    assert_eq!(passive(&ch, "ad").await.expect("one consumer left").consumer_count(), 1);
    w!(ch.basic_cancel("c2".into(), Default::default())).expect("cancel c2");
    let r = passive(&ch, "ad").await;
    assert_channel_error(&conn, &ch, r, 404).await;

    // Also when the last consumer goes because its channel closes.
    let ch = channel(&conn).await;
    declare_opts(&ch, "ad2", QueueDeclareOptions::default().auto_delete()).await.expect("declare");
    let cch = channel(&conn).await;
    let _c = consume(&cch, "ad2", "").await;
    w!(cch.close(200, "OK".into())).expect("close consumer channel");
    let r = passive(&ch, "ad2").await;
    assert_channel_error(&conn, &ch, r, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_and_unbind() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    w!(ch.queue_bind(
        q.as_str().into(),
        "amq.direct".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default()
    ))
    .expect("queue.bind");
    publish(&ch, "amq.direct", "k", b"bound").await;
    assert_eq!(get_all(&ch, &q).await, ["bound"]);
    w!(ch.queue_unbind(q.as_str().into(), "amq.direct".into(), "k".into(), FieldTable::default()))
        .expect("queue.unbind");
    publish(&ch, "amq.direct", "k", b"unbound").await;
    assert!(get_all(&ch, &q).await.is_empty());
    // Unbinding a binding that does not exist succeeds.
    w!(ch.queue_unbind(q.as_str().into(), "amq.direct".into(), "k".into(), FieldTable::default()))
        .expect("unbind again");

    // Binding a missing queue, or to a missing exchange: 404.
    let r = w!(ch.queue_bind(
        "missing".into(),
        "amq.direct".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default()
    ));
    assert_channel_error(&conn, &ch, r, 404).await;
    let ch = channel(&conn).await;
    let r = w!(ch.queue_bind(
        q.as_str().into(),
        "missing".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default()
    ));
    assert_channel_error(&conn, &ch, r, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_drops_ready_messages_and_reports_the_count() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    for i in 0..4 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    // One message is delivered and unacked: purge leaves it alone.
    let held = get(&ch, &q).await.expect("a message");
    assert_eq!(body(&held), "m0");
    assert_eq!(w!(ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default())).expect("purge"), 3);
    assert_eq!(w!(ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default())).expect("purge"), 0);
    assert!(get(&ch, &q).await.is_none());
    // The unacked one comes back when its channel closes.
    let other = channel(&conn).await;
    w!(ch.close(200, "OK".into())).expect("close");
    let back = get(&other, &q).await.expect("requeued on close");
    assert_eq!(body(&back), "m0");
    assert!(back.redelivered);

    let r = w!(other.queue_purge("missing".into(), QueuePurgeOptions::default()));
    assert_channel_error(&conn, &other, r, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_reports_count_and_honours_if_unused_and_if_empty() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;

    // if_unused with a consumer: 406, the queue stays.
    declare(&ch, "used").await;
    let cch = channel(&conn).await;
    let _c = consume(&cch, "used", "").await;
    let r = delete(&ch, "used", QueueDeleteOptions { if_unused: true, ..Default::default() }).await;
    assert_channel_error(&conn, &ch, r, 406).await;
    let ch = channel(&conn).await;
    assert_eq!(passive(&ch, "used").await.expect("still there").consumer_count(), 1);

    // if_empty with messages: 406, the queue and its messages stay.
    declare(&ch, "full").await;
    publish(&ch, "", "full", b"a").await;
    publish(&ch, "", "full", b"b").await;
    let r = delete(&ch, "full", QueueDeleteOptions { if_empty: true, ..Default::default() }).await;
    assert_channel_error(&conn, &ch, r, 406).await;
    let ch = channel(&conn).await;
    assert_eq!(passive(&ch, "full").await.expect("still there").message_count(), 2);

    // Conditions met: deleted; delete-ok reports the messages deleted with it.
    declare(&ch, "empty-unused").await;
    let opts = QueueDeleteOptions { if_unused: true, if_empty: true, ..Default::default() };
    assert_eq!(delete(&ch, "empty-unused", opts).await.expect("delete"), 0);
    publish(&ch, "", "full", b"c").await;
    assert_eq!(delete(&ch, "full", QueueDeleteOptions::default()).await.expect("delete"), 3);
    // Deleting a missing queue succeeds with a count of 0.
    assert_eq!(delete(&ch, "full", QueueDeleteOptions::default()).await.expect("delete missing"), 0);
    let r = passive(&ch, "full").await;
    assert_channel_error(&conn, &ch, r, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_cancels_its_consumers() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    declare(&ch, "doomed").await;
    let mut consumer = consume(&ch, "doomed", "watcher").await;
    publish(&ch, "", "doomed", b"before").await;
    assert_eq!(body(&next(&mut consumer).await), "before");

    let other = connect(&server).await;
    let och = channel(&other).await;
    assert_eq!(delete(&och, "doomed", QueueDeleteOptions::default()).await.expect("delete"), 0);

    // The broker sends basic.cancel: the consumer stream ends.
    match w!(consumer.next()) {
        None => {}
        Some(r) => panic!("expected the consumer to be cancelled, got {r:?}"),
    }
    // Only the consumer went: its channel and connection remain open.
    assert!(ch.status().connected());
    declare(&ch, "").await;
    assert_connection_usable(&conn).await;
}

/// max_arguments_table_bytes: a declare, bind or consume whose argument table is larger
/// is refused with 406 on the channel, naming the limit; tables up to it are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argument_tables_over_the_limit_are_406() {
    use lapin::types::{AMQPValue, LongString};
    let server =
        TestServer::start_with(server::Config { max_arguments_table_bytes: 1024, ..server::Config::default() }).await;
    let conn = connect(&server).await;
    let table = |n: usize| {
        let mut t = FieldTable::default();
        t.insert("x-filler".into(), AMQPValue::LongString(LongString::from(vec![b'x'; n])));
        t
    };
    // 1 + 8 + 1 + 4 + 1000 bytes: under the limit.
    let ch = channel(&conn).await;
    w!(ch.queue_declare("args-ok".into(), QueueDeclareOptions::default(), table(1000))).expect("small table");

    let ch = channel(&conn).await;
    let r = w!(ch.queue_declare("args-big".into(), QueueDeclareOptions::default(), table(2000)));
    let e = r.as_ref().expect_err("a table over the limit");
    assert!(reply(e).is_some_and(|(_, t)| t.contains("max_arguments_table_bytes")), "{e}");
    assert_channel_error(&conn, &ch, r, 406).await;

    let ch = channel(&conn).await;
    let r =
        w!(ch.queue_bind("args-ok".into(), "amq.headers".into(), "".into(), QueueBindOptions::default(), table(4000)));
    assert_channel_error(&conn, &ch, r, 406).await;

    let ch = channel(&conn).await;
    let r = w!(ch.exchange_declare("args-ex".into(), lapin::ExchangeKind::Direct, Default::default(), table(4000)));
    assert_channel_error(&conn, &ch, r, 406).await;

    let ch = channel(&conn).await;
    let r = w!(ch.basic_consume("args-ok".into(), "".into(), BasicConsumeOptions::default(), table(4000)));
    assert_channel_error(&conn, &ch, r, 406).await;
    assert_eq!(counts(&conn, "args-ok").await, (0, 0), "nothing was bound or consumed");
}
