//! basic.*: consume/cancel, get, ack/nack/reject, recover, redelivery, and the other
//! channel methods (access.request, channel.flow, basic.publish immediate).

use lapin::options::{
    AccessRequestOptions, BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicRecoverOptions, BasicRejectOptions, ChannelFlowOptions,
};

use super::*;

async fn consume_with(ch: &Channel, queue: &str, tag: &str, opts: BasicConsumeOptions) -> lapin::Result<Consumer> {
    w!(ch.basic_consume(queue.into(), tag.into(), opts, FieldTable::default()))
}

async fn publish_n(ch: &Channel, queue: &str, n: usize) {
    for i in 1..=n {
        publish(ch, "", queue, format!("m{i}").as_bytes()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_and_cancel() {
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    let mut named = consume(&ch, &q, "my-tag").await;
    assert_eq!(named.tag().as_str(), "my-tag");
    assert_eq!(named.queue().as_str(), q);
    // An empty tag gets a server-generated one.
    let mut generated = consume(&ch, &q, "").await;
    let tag = generated.tag();
    assert!(tag.as_str().starts_with("amq.ctag-") && tag.as_str().len() > "amq.ctag-".len(), "generated tag {tag}");

    // Two consumers on one queue take turns.
    publish(&ch, "", &q, b"one").await;
    publish(&ch, "", &q, b"two").await;
    let d = next(&mut named).await;
    assert_eq!((body(&d), d.routing_key.as_str(), d.exchange.as_str()), ("one", q.as_str(), ""));
    assert_eq!(body(&next(&mut generated).await), "two");

    // After cancel-ok the cancelled consumer's stream ends and it gets nothing more.
    w!(ch.basic_cancel(tag.clone(), BasicCancelOptions::default())).expect("basic.cancel");
    match w!(generated.next()) {
        None => {}
        other => panic!("a cancelled consumer's stream ends, got {other:?}"),
    }
    publish(&ch, "", &q, b"three").await;
    publish(&ch, "", &q, b"four").await;
    assert_eq!(bodies(&drain(&mut named).await), ["three", "four"]);

    // Cancelling an unknown tag is not an error (RabbitMQ replies cancel-ok).
    w!(ch.basic_cancel("no-such-tag".into(), BasicCancelOptions::default())).expect("cancel unknown tag");
    w!(ch.basic_cancel("my-tag".into(), BasicCancelOptions::default())).expect("basic.cancel");
    match w!(named.next()) {
        None => {}
        other => panic!("a cancelled consumer's stream ends, got {other:?}"),
    }
    // With no consumer left, messages stay in the queue.
    publish(&ch, "", &q, b"kept").await;
    assert_eq!(get_all(&ch, &q).await, ["kept"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_and_cancel_with_nowait() {
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    let nowait = BasicConsumeOptions { nowait: true, ..Default::default() };
    let mut c = consume_with(&ch, &q, "nw", nowait).await.expect("basic.consume nowait");
    publish(&ch, "", &q, b"one").await;
    assert_eq!(body(&next(&mut c).await), "one");
    w!(ch.basic_cancel("nw".into(), BasicCancelOptions { nowait: true })).expect("basic.cancel nowait");
    publish(&ch, "", &q, b"two").await;
    assert_eq!(get_all(&ch, &q).await, ["two"], "no consumer after the nowait cancel");
    assert!(ch.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_tag_reuse_on_a_channel_is_530_on_the_connection() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    let _first = consume(&ch, &q, "dup").await;
    let r = consume_with(&ch, &q, "dup", BasicConsumeOptions::default()).await;
    assert_connection_error(&conn, r, 530).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_consumer_conflicts_are_403() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    let exclusive = BasicConsumeOptions { exclusive: true, ..Default::default() };
    let _sole = consume_with(&ch, &q, "sole", exclusive).await.expect("exclusive consume");
    // Another consumer on a queue with an exclusive consumer: 403 ACCESS_REFUSED.
    let other = channel(&conn).await;
    let r = consume_with(&other, &q, "", BasicConsumeOptions::default()).await;
    assert_channel_error(&conn, &other, r, 403).await;

    // An exclusive consumer on a queue that already has consumers: 403 as well.
    let q2 = declare(&ch, "").await;
    let _plain = consume(&ch, &q2, "plain").await;
    let other = channel(&conn).await;
    let r = consume_with(&other, &q2, "", exclusive).await;
    assert_channel_error(&conn, &other, r, 403).await;
    // The exclusive consumer keeps receiving.
    assert!(ch.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ack_consumer_takes_messages_for_good() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    publish_n(&ch, &q, 3).await;
    let cch = channel(&conn).await;
    let no_ack = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut c = consume_with(&cch, &q, "", no_ack).await.expect("consume");
    let got = [next(&mut c).await, next(&mut c).await, next(&mut c).await];
    assert_eq!(bodies(&got), ["m1", "m2", "m3"]);
    assert!(got.iter().all(|d| !d.redelivered));
    // Nothing to ack, nothing comes back when the channel closes.
    w!(cch.close(200, "OK".into())).expect("close");
    assert_eq!(counts(&conn, &q).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_get_empty() {
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    assert!(get(&ch, &q).await.is_none(), "basic.get-empty on an empty queue");
    publish_n(&ch, &q, 2).await;
    let m = get(&ch, &q).await.expect("basic.get-ok");
    assert_eq!(body(&m), "m1");
    assert_eq!(m.message_count, 1, "messages left after this one");
    assert_eq!(m.exchange.as_str(), "");
    assert_eq!(m.routing_key.as_str(), q);
    assert!(!m.redelivered);
    assert!(w!(m.ack(BasicAckOptions::default())).expect("ack"));
    let m = w!(ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })).expect("get").expect("a message");
    assert_eq!(body(&m), "m2");
    assert_eq!(m.message_count, 0);
    assert!(get(&ch, &q).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_nack_reject_settle_the_right_messages() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    publish_n(&ch, &q, 6).await;
    let mut c = consume(&ch, &q, "").await;
    let got: Vec<Delivery> = vec![
        next(&mut c).await,
        next(&mut c).await,
        next(&mut c).await,
        next(&mut c).await,
        next(&mut c).await,
        next(&mut c).await,
    ];
    assert_eq!(bodies(&got), ["m1", "m2", "m3", "m4", "m5", "m6"]);
    let tag = |i: usize| got[i].delivery_tag;
    assert_eq!((1..=6).collect::<Vec<u64>>(), got.iter().map(|d| d.delivery_tag).collect::<Vec<_>>());

    // ack m1..m2 at once; reject m3 (dropped); nack m4..m5 at once (dropped).
    w!(ch.basic_ack(tag(1), BasicAckOptions { multiple: true })).expect("ack multiple");
    w!(ch.basic_reject(tag(2), BasicRejectOptions { requeue: false })).expect("reject");
    w!(ch.basic_nack(tag(4), BasicNackOptions { multiple: true, requeue: false })).expect("nack multiple");
    // nack m6 with requeue: it comes straight back, marked redelivered, with a new tag.
    w!(ch.basic_nack(tag(5), BasicNackOptions { multiple: false, requeue: true })).expect("nack requeue");
    let again = next(&mut c).await;
    assert_eq!(body(&again), "m6");
    assert!(again.redelivered);
    assert_eq!(again.delivery_tag, 7);
    // reject with requeue: back once more.
    w!(again.reject(BasicRejectOptions { requeue: true })).expect("reject requeue");
    let third = next(&mut c).await;
    assert_eq!((body(&third), third.redelivered, third.delivery_tag), ("m6", true, 8));
    w!(third.ack(BasicAckOptions::default())).expect("ack");
    assert_quiet(&mut c).await;
    // Everything was settled: nothing is left or comes back when the channel closes.
    w!(ch.close(200, "OK".into())).expect("close");
    assert_eq!(counts(&conn, &q).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_all_with_multiple_and_tag_zero() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    publish_n(&ch, &q, 3).await;
    for _ in 0..3 {
        get(&ch, &q).await.expect("a message");
    }
    // delivery_tag 0 with multiple: every outstanding delivery.
    w!(ch.basic_ack(0, BasicAckOptions { multiple: true })).expect("ack all");
    w!(ch.close(200, "OK".into())).expect("close");
    assert_eq!(counts(&conn, &q).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeued_messages_are_redelivered_in_original_order() {
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    publish_n(&ch, &q, 5).await;
    let m1 = get(&ch, &q).await.expect("m1");
    let m2 = get(&ch, &q).await.expect("m2");
    let m3 = get(&ch, &q).await.expect("m3");
    // Requeued in reverse order, they go back to their original positions.
    w!(m3.reject(BasicRejectOptions { requeue: true })).expect("reject m3");
    w!(m1.nack(BasicNackOptions { multiple: false, requeue: true })).expect("nack m1");
    let mut seen = Vec::new();
    while let Some(m) = get(&ch, &q).await {
        seen.push((body(&m).to_owned(), m.redelivered));
        w!(m.ack(BasicAckOptions::default())).expect("ack");
    }
    let want = [("m1", true), ("m3", true), ("m4", false), ("m5", false)];
    assert_eq!(seen, want.map(|(b, r)| (b.to_owned(), r)));
    w!(m2.reject(BasicRejectOptions { requeue: true })).expect("reject m2");
    let back = get(&ch, &q).await.expect("m2 again");
    assert_eq!((body(&back), back.redelivered), ("m2", true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_delivery_tag_is_406_on_the_channel() {
    let server = TestServer::start().await;
    let conn = connect(&server).await;
    let mut errors = Errors::watch(&conn);
    let ch = channel(&conn).await;
    w!(ch.basic_ack(42, BasicAckOptions::default())).expect("ack is sent");
    errors.channel_error(&conn, &ch, 406).await;

    let ch = channel(&conn).await;
    w!(ch.basic_reject(7, BasicRejectOptions { requeue: true })).expect("reject is sent");
    errors.channel_error(&conn, &ch, 406).await;

    let ch = channel(&conn).await;
    let q = declare(&ch, "").await;
    publish(&ch, "", &q, b"x").await;
    get(&ch, &q).await.expect("a message");
    w!(ch.basic_nack(2, BasicNackOptions { multiple: true, requeue: true })).expect("nack is sent");
    errors.channel_error(&conn, &ch, 406).await;
    // The nacked-by-mistake message is still there: the failed nack did nothing, and
    // the channel's close requeued it.
    let ch = channel(&conn).await;
    let m = get(&ch, &q).await.expect("requeued");
    assert!(m.redelivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_ack_is_406_on_the_channel() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    publish(&ch, "", &q, b"x").await;
    let m = get(&ch, &q).await.expect("a message");
    let mut errors = Errors::watch(&conn);
    w!(ch.basic_ack(m.delivery_tag, BasicAckOptions::default())).expect("first ack");
    w!(ch.basic_ack(m.delivery_tag, BasicAckOptions::default())).expect("second ack is sent");
    errors.channel_error(&conn, &ch, 406).await;
    // The first ack counted: the message is gone.
    assert_eq!(counts(&conn, &q).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_requeues_unacked_messages() {
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    publish_n(&ch, &q, 3).await;
    let mut c = consume(&ch, &q, "").await;
    let first = [next(&mut c).await, next(&mut c).await, next(&mut c).await];
    assert!(first.iter().all(|d| !d.redelivered));
    w!(ch.basic_recover(BasicRecoverOptions { requeue: true })).expect("basic.recover");
    // RabbitMQ answers recover-ok before redelivering, and lapin drops deliveries it had
    // buffered before recover-ok: the redeliveries must come after it.
    let again = [next(&mut c).await, next(&mut c).await, next(&mut c).await];
    assert_eq!(bodies(&again), ["m1", "m2", "m3"]);
    assert!(again.iter().all(|d| d.redelivered));
    assert!(again.iter().all(|d| d.delivery_tag > 3), "redeliveries get new tags");
    for d in &again {
        w!(d.ack(BasicAckOptions::default())).expect("ack");
    }
    assert_quiet(&mut c).await;
}

/// Over raw frames: lapin drops its consumers' buffered deliveries once it has *sent*
/// basic.recover-async, so redeliveries that arrive before that bookkeeping ran were lost
/// on the client side under load, a race of the client, not of the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_async_requeues_unacked_messages() {
    use crate::hostile::raw::Raw;
    use wire::frame::Frame;
    use wire::method::Method;

    async fn delivery(c: &mut Raw) -> (u64, bool, Vec<u8>) {
        let Method::BasicDeliver { delivery_tag, redelivered, .. } = c.expect(1, (60, 60)).await else {
            unreachable!()
        };
        let Frame::Header { body_size, .. } = c.frame().await else { panic!("expected a content header") };
        let mut body = Vec::new();
        while (body.len() as u64) < body_size {
            let Frame::Body { payload, .. } = c.frame().await else { panic!("expected a body frame") };
            body.extend_from_slice(&payload);
        }
        (delivery_tag, redelivered, body)
    }

    let server = TestServer::start().await;
    let mut c = Raw::open_channel1(server.addr).await;
    c.declare_queue(1, "recover-async", false).await;
    for m in ["m1", "m2", "m3"] {
        c.publish(1, "recover-async", m.as_bytes()).await;
    }
    c.send_method(
        1,
        &Method::BasicConsume {
            ticket: 0,
            queue: "recover-async".into(),
            consumer_tag: "c".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: wire::FieldTable::new(),
        },
    )
    .await;
    c.expect(1, (60, 21)).await;
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(delivery(&mut c).await);
    }
    assert_eq!(first.iter().map(|d| d.2.clone()).collect::<Vec<_>>(), [b"m1".to_vec(), b"m2".to_vec(), b"m3".to_vec()]);
    c.send_method(1, &Method::BasicAck { delivery_tag: first[0].0, multiple: false }).await;
    c.send_method(1, &Method::BasicRecoverAsync { requeue: true }).await;
    // No reply to recover-async: the two unacked messages come again, flagged, new tags.
    let again = [delivery(&mut c).await, delivery(&mut c).await];
    assert_eq!(again.iter().map(|d| d.2.clone()).collect::<Vec<_>>(), [b"m2".to_vec(), b"m3".to_vec()]);
    assert!(again.iter().all(|d| d.1 && d.0 > 3), "redelivered with new tags: {again:?}");
    // Nothing else: m1 was acked before the recover.
    c.send_method(
        1,
        &Method::QueueDeclare {
            ticket: 0,
            queue: "recover-async".into(),
            passive: true,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: wire::FieldTable::new(),
        },
    )
    .await;
    let Method::QueueDeclareOk { message_count, .. } = c.expect(1, (50, 11)).await else { unreachable!() };
    assert_eq!(message_count, 0);
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_without_requeue_is_not_implemented() {
    // RabbitMQ: basic.recover{requeue=false} is refused with 540 NOT_IMPLEMENTED.
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let r = w!(ch.basic_recover(BasicRecoverOptions { requeue: false }));
    assert_connection_error(&conn, r, 540).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_return_when_the_channel_closes() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    publish_n(&ch, &q, 4).await;
    let cch = channel(&conn).await;
    let mut c = consume(&cch, &q, "").await;
    let got = [next(&mut c).await, next(&mut c).await, next(&mut c).await, next(&mut c).await];
    w!(got[1].ack(BasicAckOptions::default())).expect("ack m2");
    w!(cch.close(200, "OK".into())).expect("close");
    let mut seen = Vec::new();
    while let Some(m) = get(&ch, &q).await {
        seen.push((body(&m).to_owned(), m.redelivered));
    }
    assert_eq!(seen, [("m1", true), ("m3", true), ("m4", true)].map(|(b, r)| (b.to_owned(), r)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_return_when_the_connection_closes() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    publish_n(&ch, &q, 3).await;
    let consumer_conn = connect(&server).await;
    let cch = channel(&consumer_conn).await;
    let mut c = consume(&cch, &q, "").await;
    let _got = [next(&mut c).await, next(&mut c).await, next(&mut c).await];
    assert_eq!(counts(&conn, &q).await, (0, 1), "all three are with the consumer");
    w!(consumer_conn.close(200, "OK".into())).expect("close");
    let mut seen = Vec::new();
    while let Some(m) = get(&ch, &q).await {
        seen.push((body(&m).to_owned(), m.redelivered));
    }
    assert_eq!(seen, [("m1", true), ("m2", true), ("m3", true)].map(|(b, r)| (b.to_owned(), r)));
    assert_connection_usable(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_between_two_consumers() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    let ch2 = channel(&conn).await;
    let mut a = consume(&ch, &q, "a").await;
    let mut b = consume(&ch2, &q, "b").await;
    publish_n(&ch, &q, 10).await;
    let got_a = drain(&mut a).await;
    let got_b = drain(&mut b).await;
    assert_eq!(bodies(&got_a), ["m1", "m3", "m5", "m7", "m9"]);
    assert_eq!(bodies(&got_b), ["m2", "m4", "m6", "m8", "m10"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_request_and_channel_flow_active() {
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    w!(ch.access_request("/data".into(), AccessRequestOptions::default())).expect("access.request");
    assert!(w!(ch.channel_flow(ChannelFlowOptions { active: true })).expect("channel.flow"));
    let q = declare(&ch, "").await;
    publish(&ch, "", &q, b"x").await;
    assert_eq!(get_all(&ch, &q).await, ["x"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_flow_inactive_is_not_implemented() {
    // RabbitMQ 3.3+ does not support flow control initiated by the client:
    // channel.flow{active=false} is refused with 540 NOT_IMPLEMENTED.
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let r = w!(ch.channel_flow(ChannelFlowOptions { active: false }));
    assert_connection_error(&conn, r, 540).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_publish_is_not_implemented() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let mut errors = Errors::watch(&conn);
    let opts = BasicPublishOptions { immediate: true, ..Default::default() };
    w!(ch.basic_publish("".into(), "q".into(), opts, b"x", BasicProperties::default())).expect("publish is sent");
    errors.connection_error(&conn, 540).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_from_missing_queue_is_404() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let r = consume_with(&ch, "missing", "", BasicConsumeOptions::default()).await;
    assert_channel_error(&conn, &ch, r, 404).await;
    let ch = channel(&conn).await;
    let r = w!(ch.basic_get("missing".into(), BasicGetOptions::default()));
    assert_channel_error(&conn, &ch, r, 404).await;
}
