//! basic.qos: per-consumer and per-channel prefetch, unlimited prefetch, changing qos
//! while consuming, and fair dispatch.

use lapin::options::BasicAckOptions;

use super::*;

async fn publish_n(ch: &Channel, queue: &str, n: usize) {
    for i in 1..=n {
        publish(ch, "", queue, format!("m{i}").as_bytes()).await;
    }
}

async fn ack_upto(ch: &Channel, d: &Delivery) {
    w!(ch.basic_ack(d.delivery_tag, BasicAckOptions { multiple: true })).expect("ack multiple");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_consumer_prefetch_limits_unacked_deliveries() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    publish_n(&ch, &q, 10).await;
    let cch = channel(&conn).await;
    qos(&cch, 3, false).await;
    let mut c = consume(&cch, &q, "").await;

    let first = drain(&mut c).await;
    assert_eq!(bodies(&first), ["m1", "m2", "m3"], "only prefetch_count unacked deliveries");
    assert_eq!(counts(&conn, &q).await.0, 7);
    // One ack frees one slot.
    w!(first[0].ack(BasicAckOptions::default())).expect("ack");
    let second = drain(&mut c).await;
    assert_eq!(bodies(&second), ["m4"]);
    // A multiple ack frees them all.
    ack_upto(&cch, &second[0]).await;
    let third = drain(&mut c).await;
    assert_eq!(bodies(&third), ["m5", "m6", "m7"]);
    ack_upto(&cch, &third[2]).await;
    let fourth = drain(&mut c).await;
    assert_eq!(bodies(&fourth), ["m8", "m9", "m10"]);
    ack_upto(&cch, &fourth[2]).await;
    assert_quiet(&mut c).await;
    assert_eq!(counts(&conn, &q).await, (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_consumer_prefetch_applies_to_each_consumer_separately() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let qa = declare(&ch, "").await;
    let qb = declare(&ch, "").await;
    publish_n(&ch, &qa, 5).await;
    publish_n(&ch, &qb, 5).await;
    let cch = channel(&conn).await;
    qos(&cch, 2, false).await;
    let mut a = consume(&cch, &qa, "a").await;
    let mut b = consume(&cch, &qb, "b").await;
    assert_eq!(drain(&mut a).await.len(), 2);
    assert_eq!(drain(&mut b).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_prefetch_limits_the_whole_channel() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let qa = declare(&ch, "").await;
    let qb = declare(&ch, "").await;
    publish_n(&ch, &qa, 5).await;
    publish_n(&ch, &qb, 5).await;
    let cch = channel(&conn).await;
    qos(&cch, 3, true).await;
    let mut a = consume(&cch, &qa, "a").await;
    let mut b = consume(&cch, &qb, "b").await;
    let got_a = drain(&mut a).await;
    let got_b = drain(&mut b).await;
    assert_eq!(got_a.len() + got_b.len(), 3, "3 unacked deliveries across both consumers");
    // Acking one of them lets exactly one more through, to either consumer.
    let one = got_a.first().or(got_b.first()).expect("a delivery");
    w!(one.ack(BasicAckOptions::default())).expect("ack");
    let more = drain(&mut a).await.len() + drain(&mut b).await.len();
    assert_eq!(more, 1);
    assert_eq!(counts(&conn, &qa).await.0 + counts(&conn, &qb).await.0, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_zero_is_unlimited() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    publish_n(&ch, &q, 50).await;
    let cch = channel(&conn).await;
    qos(&cch, 0, false).await;
    let mut c = consume(&cch, &q, "").await;
    let got = drain(&mut c).await;
    assert_eq!(got.len(), 50);
    assert_eq!(counts(&conn, &q).await, (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_qos_changed_while_consuming_applies_at_once() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    publish_n(&ch, &q, 6).await;
    let cch = channel(&conn).await;
    qos(&cch, 1, true).await;
    let mut c = consume(&cch, &q, "").await;
    assert_eq!(bodies(&drain(&mut c).await), ["m1"]);
    // Raising the channel's limit lets more through without any ack.
    qos(&cch, 3, true).await;
    assert_eq!(bodies(&drain(&mut c).await), ["m2", "m3"]);
    // 0 lifts it.
    qos(&cch, 0, true).await;
    assert_eq!(bodies(&drain(&mut c).await), ["m4", "m5", "m6"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_consumer_qos_changed_while_consuming_applies_to_new_consumers() {
    // RabbitMQ: basic.qos(global=false) sets the prefetch of consumers started after it;
    // existing consumers keep theirs.
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    publish_n(&ch, &q, 8).await;
    let cch = channel(&conn).await;
    qos(&cch, 1, false).await;
    let mut old = consume(&cch, &q, "old").await;
    let first = drain(&mut old).await;
    assert_eq!(first.len(), 1);
    qos(&cch, 4, false).await;
    assert_quiet(&mut old).await;
    let mut new = consume(&cch, &q, "new").await;
    assert_eq!(drain(&mut new).await.len(), 4);
    assert_quiet(&mut old).await;
    // The old consumer is still limited to one.
    w!(first[0].ack(BasicAckOptions::default())).expect("ack");
    assert_eq!(drain(&mut old).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_one_dispatches_fairly() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    let slow_ch = channel(&conn).await;
    let fast_ch = channel(&conn).await;
    qos(&slow_ch, 1, false).await;
    qos(&fast_ch, 1, false).await;
    let mut slow = consume(&slow_ch, &q, "slow").await;
    let mut fast = consume(&fast_ch, &q, "fast").await;
    publish_n(&ch, &q, 10).await;
    // The slow consumer never acks: it holds one message; the fast one, which acks each
    // delivery, gets all the others.
    let mut fast_got = Vec::new();
    for _ in 0..9 {
        let d = next(&mut fast).await;
        fast_got.push(body(&d).to_owned());
        w!(d.ack(BasicAckOptions::default())).expect("ack");
    }
    let slow_got = drain(&mut slow).await;
    assert_eq!(slow_got.len(), 1, "the busy consumer got only one message");
    assert_quiet(&mut fast).await;
    let mut all: Vec<String> = fast_got;
    all.push(body(&slow_got[0]).to_owned());
    all.sort_by_key(|b| b[1..].parse::<u32>().expect("mN"));
    assert_eq!(all, (1..=10).map(|i| format!("m{i}")).collect::<Vec<_>>());
}
