//! tx.*: transactional publishes and acks, and their exclusion with confirm mode.

use lapin::options::{BasicAckOptions, BasicNackOptions, ConfirmSelectOptions};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_publishes_are_invisible_until_commit() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    let tch = channel(&conn).await;
    w!(tch.tx_select()).expect("tx.select");
    w!(tch.tx_select()).expect("tx.select again is harmless");
    publish(&tch, "", &q, b"a").await;
    publish(&tch, "", &q, b"b").await;
    assert_eq!(counts(&conn, &q).await.0, 0, "nothing before commit");
    assert!(get(&ch, &q).await.is_none());
    w!(tch.tx_commit()).expect("tx.commit");
    assert_eq!(get_all(&ch, &q).await, ["a", "b"]);
    // The channel stays transactional: the next commit covers what follows.
    publish(&tch, "", &q, b"c").await;
    assert_eq!(counts(&conn, &q).await.0, 0);
    w!(tch.tx_commit()).expect("tx.commit");
    assert_eq!(get_all(&ch, &q).await, ["c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_rollback_discards_publishes() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    let tch = channel(&conn).await;
    w!(tch.tx_select()).expect("tx.select");
    publish(&tch, "", &q, b"discarded").await;
    w!(tch.tx_rollback()).expect("tx.rollback");
    assert_eq!(counts(&conn, &q).await.0, 0);
    publish(&tch, "", &q, b"kept").await;
    w!(tch.tx_commit()).expect("tx.commit");
    assert_eq!(get_all(&ch, &q).await, ["kept"]);
    // Closing a channel with an open transaction discards it too.
    publish(&tch, "", &q, b"never").await;
    w!(tch.close(200, "OK".into())).expect("close");
    assert_eq!(counts(&conn, &q).await.0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_acks_take_effect_at_commit() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    publish(&ch, "", &q, b"m1").await;

    // An ack rolled back is forgotten: the message is unacked again and can be acked
    // again; once committed, the ack is final.
    let t1 = channel(&conn).await;
    w!(t1.tx_select()).expect("tx.select");
    let m = get(&t1, &q).await.expect("m1");
    w!(t1.basic_ack(m.delivery_tag, BasicAckOptions::default())).expect("ack in tx");
    w!(t1.tx_rollback()).expect("tx.rollback");
    w!(t1.basic_ack(m.delivery_tag, BasicAckOptions::default())).expect("ack again in tx");
    w!(t1.tx_commit()).expect("tx.commit");
    w!(t1.close(200, "OK".into())).expect("close");
    assert_eq!(counts(&conn, &q).await.0, 0, "the committed ack removed m1");

    // A nack with requeue in a transaction also waits for the commit.
    publish(&ch, "", &q, b"m3").await;
    let t3 = channel(&conn).await;
    w!(t3.tx_select()).expect("tx.select");
    let m = get(&t3, &q).await.expect("m3");
    w!(t3.basic_nack(m.delivery_tag, BasicNackOptions { multiple: false, requeue: true })).expect("nack in tx");
    assert_eq!(counts(&conn, &q).await.0, 0, "not requeued before commit");
    w!(t3.tx_commit()).expect("tx.commit");
    assert_eq!(counts(&conn, &q).await.0, 1, "requeued at commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncommitted_tx_acks_are_discarded_when_the_channel_closes() {
    // An ack never committed does not count: closing the channel requeues the message
    // like any other unacknowledged delivery.
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    publish(&ch, "", &q, b"m1").await;
    publish(&ch, "", &q, b"m2").await;
    let t = channel(&conn).await;
    w!(t.tx_select()).expect("tx.select");
    let m1 = get(&t, &q).await.expect("m1");
    let _m2 = get(&t, &q).await.expect("m2");
    w!(t.basic_ack(m1.delivery_tag, BasicAckOptions::default())).expect("ack in tx");
    w!(t.close(200, "OK".into())).expect("close");
    let mut back = Vec::new();
    while let Some(m) = get(&ch, &q).await {
        back.push((body(&m).to_owned(), m.redelivered));
    }
    assert_eq!(back, [("m1", true), ("m2", true)].map(|(b, r)| (b.to_owned(), r)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_or_rollback_without_select_is_406() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let r = w!(ch.tx_commit());
    assert_channel_error(&conn, &ch, r, 406).await;
    let ch = channel(&conn).await;
    let r = w!(ch.tx_rollback());
    assert_channel_error(&conn, &ch, r, 406).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_and_confirm_modes_exclude_each_other() {
    let server = TestServer::start().await;
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    w!(ch.tx_select()).expect("tx.select");
    let r = w!(ch.confirm_select(ConfirmSelectOptions::default()));
    assert_channel_error(&conn, &ch, r, 406).await;

    let ch = channel(&conn).await;
    w!(ch.confirm_select(ConfirmSelectOptions::default())).expect("confirm.select");
    let r = w!(ch.tx_select());
    assert_channel_error(&conn, &ch, r, 406).await;
}

/// A commit whose publish names an exchange deleted since it was published still applies
/// every operation: RabbitMQ routes a transactional publish when it arrives and delivers
/// it at commit, so the commit succeeds, the message reaches the queue bound at publish
/// time, and the acks in the same transaction take effect (they used to be dropped with
/// the rest of the commit: the messages were neither acked nor requeued).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_applies_every_operation_when_an_exchange_was_deleted_meanwhile() {
    use lapin::options::{ExchangeDeleteOptions, QueueBindOptions};
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let src = declare(&ch, "").await;
    let dst = declare(&ch, "").await;
    w!(ch.exchange_declare("tx-gone".into(), lapin::ExchangeKind::Direct, Default::default(), FieldTable::default()))
        .expect("exchange.declare");
    w!(ch.queue_bind(
        dst.as_str().into(),
        "tx-gone".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default()
    ))
    .expect("queue.bind");
    publish(&ch, "", &src, b"m1").await;
    publish(&ch, "", &src, b"m2").await;

    let t = channel(&conn).await;
    w!(t.tx_select()).expect("tx.select");
    let m1 = get(&t, &src).await.expect("m1");
    publish(&t, "tx-gone", "k", b"routed before the delete").await;
    w!(t.basic_ack(m1.delivery_tag, BasicAckOptions::default())).expect("ack in tx");
    let m2 = get(&t, &src).await.expect("m2");
    w!(t.basic_nack(m2.delivery_tag, BasicNackOptions { multiple: false, requeue: true })).expect("nack in tx");
    w!(ch.exchange_delete("tx-gone".into(), ExchangeDeleteOptions::default())).expect("exchange.delete");

    w!(t.tx_commit()).expect("tx.commit after the exchange was deleted");
    assert!(t.status().connected(), "the transactional channel stays open");
    assert_eq!(get_all(&ch, &dst).await, ["routed before the delete"]);
    // m1 acked, m2 requeued: nothing left unacknowledged on the channel.
    let left: Vec<(String, bool)> = {
        let mut v = Vec::new();
        while let Some(m) = get(&ch, &src).await {
            v.push((body(&m).to_owned(), m.redelivered));
        }
        v
    };
    assert_eq!(left, [("m2".to_owned(), true)]);
    w!(t.close(200, "OK".into())).expect("close");
    assert_eq!(counts(&conn, &src).await.0, 0, "closing the channel requeued nothing: m1 was acked");
}
