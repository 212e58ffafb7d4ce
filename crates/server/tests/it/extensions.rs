//! RabbitMQ's AMQP 0-9-1 extensions through lapin: dead-lettering and the x-death header
//! (dlx.md), TTLs (ttl.md), length limits (maxlength.md), priority queues (priority.md),
//! consumer priorities, single active consumer and exclusive consumers (consumers.md),
//! alternate exchanges (ae.md), the quorum-queue delivery limit, x-queue-type, argument
//! validation, exchange-to-exchange bindings, direct reply-to (direct-reply-to.md), the
//! per-queue consumer timeout (RabbitMQ 4.x notify_consumer) and the delayed message
//! exchange (rabbitmq-delayed-message-exchange).
//!
//! RabbitMQ's behaviour is the reference. Every test starts its own server; every await is
//! bounded by [`WAIT`].

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::StreamExt;
use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeBindOptions, ExchangeDeclareOptions, ExchangeUnbindOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Consumer, ExchangeKind};

use crate::common::TestServer;
use crate::interop::{
    WAIT, assert_channel_error, assert_connection_usable, assert_quiet, body, channel, connect, drain, get_all, open,
    publish, publish_with, qos,
};

/// Await `$e` for at most [`WAIT`], panicking with the expression's text on timeout.
macro_rules! w {
    ($e:expr) => {
        $crate::interop::within(stringify!($e), $e).await
    };
}

// ------------------------------------------------------------------------------ helpers

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

fn int(v: i32) -> AMQPValue {
    AMQPValue::LongInt(v)
}

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

async fn try_declare(ch: &Channel, name: &str, durable: bool, args: FieldTable) -> lapin::Result<lapin::Queue> {
    w!(ch.queue_declare(name.into(), QueueDeclareOptions { durable, ..QueueDeclareOptions::default() }, args))
}

async fn declare_args(ch: &Channel, name: &str, args: &[(&str, AMQPValue)]) {
    try_declare(ch, name, false, table(args)).await.expect("queue.declare");
}

async fn exchange(ch: &Channel, name: &str, kind: ExchangeKind, args: &[(&str, AMQPValue)]) {
    w!(ch.exchange_declare(name.into(), kind, ExchangeDeclareOptions::default(), table(args)))
        .expect("exchange.declare");
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    w!(ch.queue_bind(queue.into(), exchange.into(), key.into(), QueueBindOptions::default(), args))
        .expect("queue.bind");
}

/// A fanout dead-letter exchange "dlx" with the queue "dlq" bound to it.
async fn dead_letter_target(ch: &Channel) {
    exchange(ch, "dlx", ExchangeKind::Fanout, &[]).await;
    declare_args(ch, "dlq", &[]).await;
    bind(ch, "dlq", "dlx", "", FieldTable::default()).await;
}

async fn confirm_select(ch: &Channel) {
    w!(ch.confirm_select(ConfirmSelectOptions::default())).expect("confirm.select");
}

/// Publish to the default exchange and return the publisher confirm.
async fn publish_confirm(ch: &Channel, queue: &str, payload: &[u8], props: BasicProperties) -> Confirmation {
    let c = w!(ch.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), payload, props))
        .expect("basic.publish");
    w!(c).expect("publisher confirm")
}

/// basic.get (manual ack) until a message is there, for at most [`WAIT`].
async fn get_next(ch: &Channel, queue: &str) -> BasicGetMessage {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(m) = w!(ch.basic_get(queue.into(), BasicGetOptions::default())).expect("basic.get") {
            return m;
        }
        assert!(Instant::now() < deadline, "no message arrived in {queue}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn reject(ch: &Channel, tag: u64, requeue: bool) {
    w!(ch.basic_reject(tag, BasicRejectOptions { requeue })).expect("basic.reject");
}

fn headers(d: &Delivery) -> &FieldTable {
    d.properties.headers().as_ref().expect("the message has headers")
}

fn str_of(v: Option<&AMQPValue>) -> Option<&str> {
    match v {
        Some(AMQPValue::LongString(s)) => Some(std::str::from_utf8(s.as_bytes()).expect("utf-8")),
        _ => None,
    }
}

fn header_str<'a>(h: &'a FieldTable, key: &str) -> Option<&'a str> {
    str_of(h.inner().get(key))
}

/// The x-death entries, most recent first.
fn deaths(h: &FieldTable) -> Vec<&FieldTable> {
    match h.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => t,
                other => panic!("x-death element is not a table: {other:?}"),
            })
            .collect(),
        other => panic!("x-death is not an array: {other:?}"),
    }
}

struct Death<'a> {
    queue: &'a str,
    reason: &'a str,
    exchange: &'a str,
    routing_keys: &'a [&'a str],
    count: i64,
    original_expiration: Option<&'a str>,
}

/// One x-death entry, field by field and type by type, as RabbitMQ writes it.
fn assert_death(d: &FieldTable, e: Death<'_>) {
    let mut keys: Vec<&str> = d.inner().keys().map(|k| k.as_str()).collect();
    keys.sort_unstable();
    let mut want = vec!["count", "exchange", "queue", "reason", "routing-keys", "time"];
    if e.original_expiration.is_some() {
        want.push("original-expiration");
    }
    want.sort_unstable();
    assert_eq!(keys, want, "x-death entry {d:?}");
    assert_eq!(header_str(d, "queue"), Some(e.queue), "queue in {d:?}");
    assert_eq!(header_str(d, "reason"), Some(e.reason), "reason in {d:?}");
    assert_eq!(header_str(d, "exchange"), Some(e.exchange), "exchange in {d:?}");
    let rks = FieldArray::from(e.routing_keys.iter().map(|k| s(k)).collect::<Vec<_>>());
    assert_eq!(d.inner().get("routing-keys"), Some(&AMQPValue::FieldArray(rks)), "routing-keys in {d:?}");
    assert_eq!(d.inner().get("count"), Some(&AMQPValue::LongLongInt(e.count)), "count (a long) in {d:?}");
    if let Some(exp) = e.original_expiration {
        assert_eq!(header_str(d, "original-expiration"), Some(exp), "original-expiration in {d:?}");
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    match d.inner().get("time") {
        Some(AMQPValue::Timestamp(t)) => assert!(t.abs_diff(now) < 60, "time {t} is not about now ({now})"),
        other => panic!("time is not a timestamp: {other:?}"),
    }
}

fn first_death(h: &FieldTable) -> (Option<&str>, Option<&str>, Option<&str>) {
    (
        header_str(h, "x-first-death-reason"),
        header_str(h, "x-first-death-queue"),
        header_str(h, "x-first-death-exchange"),
    )
}

fn last_death(h: &FieldTable) -> (Option<&str>, Option<&str>, Option<&str>) {
    (header_str(h, "x-last-death-reason"), header_str(h, "x-last-death-queue"), header_str(h, "x-last-death-exchange"))
}

async fn consume_opts(ch: &Channel, queue: &str, opts: BasicConsumeOptions, args: FieldTable) -> Consumer {
    w!(ch.basic_consume(queue.into(), "".into(), opts, args)).expect("basic.consume")
}

async fn next_body(c: &mut Consumer) -> String {
    match w!(c.next()) {
        Some(Ok(d)) => body(&d).to_owned(),
        Some(Err(e)) => panic!("consumer error: {e}"),
        None => panic!("consumer was cancelled"),
    }
}

// ------------------------------------------------------------------------------ dead-lettering

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_without_requeue_dead_letters_with_x_death() {
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    dead_letter_target(&ch).await;
    declare_args(&ch, "work", &[("x-dead-letter-exchange", s("dlx"))]).await;
    let props = BasicProperties::default().with_headers(table(&[("app", s("kept"))])).with_message_id("m1".into());
    publish_with(&ch, "", "work", b"bad", props).await;
    let m = get_next(&ch, "work").await;
    reject(&ch, m.delivery.delivery_tag, false).await;

    let d = get_next(&ch, "dlq").await.delivery;
    assert_eq!(body(&d), "bad");
    // Republished to the DLX with the original routing key.
    assert_eq!((d.exchange.as_str(), d.routing_key.as_str()), ("dlx", "work"));
    assert_eq!(d.properties.message_id().as_ref().map(|m| m.as_str()), Some("m1"));
    let h = headers(&d);
    assert_eq!(header_str(h, "app"), Some("kept"));
    let ds = deaths(h);
    assert_eq!(ds.len(), 1);
    assert_death(
        ds[0],
        Death {
            queue: "work",
            reason: "rejected",
            exchange: "",
            routing_keys: &["work"],
            count: 1,
            original_expiration: None,
        },
    );
    assert_eq!(first_death(h), (Some("rejected"), Some("work"), Some("")));
    assert_eq!(last_death(h), (Some("rejected"), Some("work"), Some("")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_and_dead_letter_routing_key() {
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    exchange(&ch, "dlx", ExchangeKind::Direct, &[]).await;
    declare_args(&ch, "dlq", &[]).await;
    bind(&ch, "dlq", "dlx", "dead", FieldTable::default()).await;
    exchange(&ch, "src", ExchangeKind::Direct, &[]).await;
    declare_args(&ch, "work", &[("x-dead-letter-exchange", s("dlx")), ("x-dead-letter-routing-key", s("dead"))]).await;
    bind(&ch, "work", "src", "orig", FieldTable::default()).await;
    publish(&ch, "src", "orig", b"rk").await;
    let m = get_next(&ch, "work").await;
    w!(ch.basic_nack(m.delivery.delivery_tag, BasicNackOptions { multiple: false, requeue: false }))
        .expect("basic.nack");

    let d = get_next(&ch, "dlq").await.delivery;
    assert_eq!((d.exchange.as_str(), d.routing_key.as_str()), ("dlx", "dead"));
    let h = headers(&d);
    let ds = deaths(h);
    assert_death(
        ds[0],
        Death {
            queue: "work",
            reason: "rejected",
            exchange: "src",
            routing_keys: &["orig"],
            count: 1,
            original_expiration: None,
        },
    );
    assert_eq!(first_death(h), (Some("rejected"), Some("work"), Some("src")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_are_dead_lettered_without_their_expiration() {
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    dead_letter_target(&ch).await;
    declare_args(&ch, "ttl", &[("x-message-ttl", int(100)), ("x-dead-letter-exchange", s("dlx"))]).await;
    declare_args(&ch, "exp", &[("x-dead-letter-exchange", s("dlx"))]).await;
    publish(&ch, "", "ttl", b"queue-ttl").await;
    let d = get_next(&ch, "dlq").await.delivery;
    assert_eq!(body(&d), "queue-ttl");
    assert_death(
        deaths(headers(&d))[0],
        Death {
            queue: "ttl",
            reason: "expired",
            exchange: "",
            routing_keys: &["ttl"],
            count: 1,
            original_expiration: None,
        },
    );

    publish_with(&ch, "", "exp", b"message-ttl", BasicProperties::default().with_expiration("150".into())).await;
    let d = get_next(&ch, "dlq").await.delivery;
    assert_eq!(body(&d), "message-ttl");
    // The expiration is removed from the copy, and recorded in x-death.
    assert_eq!(d.properties.expiration(), &None);
    assert_death(
        deaths(headers(&d))[0],
        Death {
            queue: "exp",
            reason: "expired",
            exchange: "",
            routing_keys: &["exp"],
            count: 1,
            original_expiration: Some("150"),
        },
    );
    assert_eq!(first_death(headers(&d)), (Some("expired"), Some("exp"), Some("")));
    assert!(get_all(&ch, "ttl").await.is_empty());
    assert!(get_all(&ch, "exp").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_loop_counts_deaths_per_queue_and_reason() {
    // work -(reject)-> retry (fanout) -> wait -(TTL)-> default exchange -> work
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    exchange(&ch, "retry", ExchangeKind::Fanout, &[]).await;
    declare_args(&ch, "work", &[("x-dead-letter-exchange", s("retry"))]).await;
    declare_args(
        &ch,
        "wait",
        &[("x-message-ttl", int(50)), ("x-dead-letter-exchange", s("")), ("x-dead-letter-routing-key", s("work"))],
    )
    .await;
    bind(&ch, "wait", "retry", "", FieldTable::default()).await;
    publish(&ch, "", "work", b"job").await;

    let first = get_next(&ch, "work").await;
    assert!(first.delivery.properties.headers().is_none(), "a fresh message has no x-death");
    reject(&ch, first.delivery.delivery_tag, false).await;
    for attempt in 1..=3 {
        let m = get_next(&ch, "work").await;
        let d = &m.delivery;
        assert_eq!(body(d), "job");
        assert_eq!((d.exchange.as_str(), d.routing_key.as_str()), ("", "work"));
        let h = headers(d);
        let ds = deaths(h);
        assert_eq!(ds.len(), 2, "attempt {attempt}: {ds:?}");
        assert_death(
            ds[0],
            Death {
                queue: "wait",
                reason: "expired",
                exchange: "retry",
                routing_keys: &["work"],
                count: attempt,
                original_expiration: None,
            },
        );
        assert_death(
            ds[1],
            Death {
                queue: "work",
                reason: "rejected",
                exchange: "",
                routing_keys: &["work"],
                count: attempt,
                original_expiration: None,
            },
        );
        assert_eq!(first_death(h), (Some("rejected"), Some("work"), Some("")));
        assert_eq!(last_death(h), (Some("expired"), Some("wait"), Some("retry")));
        reject(&ch, d.delivery_tag, false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_death_time_is_when_the_entry_was_first_recorded() {
    // dlx.md: "time: when this message was dead lettered the first time from this queue
    // for this reason"; later deaths increase the count only.
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    declare_args(&ch, "a", &[("x-dead-letter-exchange", s("")), ("x-dead-letter-routing-key", s("b"))]).await;
    declare_args(&ch, "b", &[("x-dead-letter-exchange", s("")), ("x-dead-letter-routing-key", s("a"))]).await;
    publish(&ch, "", "a", b"ping-pong").await;
    let m = get_next(&ch, "a").await;
    reject(&ch, m.delivery.delivery_tag, false).await;
    let m = get_next(&ch, "b").await;
    let first_time = deaths(headers(&m.delivery))[0].inner().get("time").cloned();
    reject(&ch, m.delivery.delivery_tag, false).await;
    let m = get_next(&ch, "a").await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // timestamps are in seconds
    reject(&ch, m.delivery.delivery_tag, false).await;
    let m = get_next(&ch, "b").await;
    let ds = deaths(headers(&m.delivery));
    assert_eq!(header_str(ds[0], "queue"), Some("a"));
    assert_eq!(ds[0].inner().get("count"), Some(&AMQPValue::LongLongInt(2)));
    assert_eq!(ds[0].inner().get("time").cloned(), first_time, "the entry's time must not change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_expiration_is_406() {
    let server = TestServer::start().await;
    let conn = connect(&server).await;
    for bad in ["soon", "-5", "1.5"] {
        let ch = channel(&conn).await;
        confirm_select(&ch).await;
        declare_args(&ch, "q", &[]).await;
        let props = BasicProperties::default().with_expiration(bad.into());
        let r = match w!(ch.basic_publish("".into(), "q".into(), BasicPublishOptions::default(), b"x", props)) {
            Ok(confirm) => w!(confirm),
            Err(e) => Err(e),
        };
        assert_channel_error(&conn, &ch, r, 406).await;
    }
    let ch = channel(&conn).await;
    assert!(get_all(&ch, "q").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_expires_when_unused() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    declare_args(&ch, "short-lived", &[("x-expires", int(300))]).await;
    declare_args(&ch, "in-use", &[("x-expires", int(300))]).await;
    let _c = consume_opts(&ch, "in-use", BasicConsumeOptions::default(), FieldTable::default()).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    let r = w!(ch.queue_declare("short-lived".into(), QueueDeclareOptions::default().passive(), FieldTable::default()));
    assert_channel_error(&conn, &ch, r, 404).await;
    // A queue with a consumer is in use.
    let ch = channel(&conn).await;
    w!(ch.queue_declare("in-use".into(), QueueDeclareOptions::default().passive(), FieldTable::default()))
        .expect("the queue with a consumer is still there");
}

// ------------------------------------------------------------------------------ length limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_length_drops_the_head_into_the_dlx() {
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    dead_letter_target(&ch).await;
    declare_args(&ch, "bounded", &[("x-max-length", int(2)), ("x-dead-letter-exchange", s("dlx"))]).await;
    declare_args(&ch, "bytes", &[("x-max-length-bytes", int(10))]).await;
    confirm_select(&ch).await;
    for b in ["m1", "m2", "m3"] {
        publish(&ch, "", "bounded", b.as_bytes()).await;
    }
    assert_eq!(get_all(&ch, "bounded").await, ["m2", "m3"]);
    let d = get_next(&ch, "dlq").await.delivery;
    assert_eq!(body(&d), "m1");
    assert_death(
        deaths(headers(&d))[0],
        Death {
            queue: "bounded",
            reason: "maxlen",
            exchange: "",
            routing_keys: &["bounded"],
            count: 1,
            original_expiration: None,
        },
    );
    for b in ["aaaa", "bbbb", "cccc"] {
        publish(&ch, "", "bytes", b.as_bytes()).await;
    }
    assert_eq!(get_all(&ch, "bytes").await, ["bbbb", "cccc"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_reject_publish_nacks_and_reject_publish_dlx_dead_letters() {
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    dead_letter_target(&ch).await;
    declare_args(&ch, "rp", &[("x-max-length", int(1)), ("x-overflow", s("reject-publish"))]).await;
    declare_args(
        &ch,
        "rpd",
        &[("x-max-length", int(1)), ("x-overflow", s("reject-publish-dlx")), ("x-dead-letter-exchange", s("dlx"))],
    )
    .await;
    confirm_select(&ch).await;
    let p = BasicProperties::default;
    assert_eq!(publish_confirm(&ch, "rp", b"kept", p()).await, Confirmation::Ack(None));
    assert!(matches!(publish_confirm(&ch, "rp", b"refused", p()).await, Confirmation::Nack(_)));
    assert_eq!(get_all(&ch, "rp").await, ["kept"]);
    // Room again: accepted.
    assert_eq!(publish_confirm(&ch, "rp", b"next", p()).await, Confirmation::Ack(None));

    assert_eq!(publish_confirm(&ch, "rpd", b"kept", p()).await, Confirmation::Ack(None));
    assert!(matches!(publish_confirm(&ch, "rpd", b"refused", p()).await, Confirmation::Nack(_)));
    assert_eq!(get_all(&ch, "rpd").await, ["kept"]);
    let d = get_next(&ch, "dlq").await.delivery;
    assert_eq!(body(&d), "refused");
    assert_eq!(header_str(deaths(headers(&d))[0], "reason"), Some("maxlen"));
}

// ------------------------------------------------------------------------------ priorities, consumers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_queue_delivers_highest_first_and_caps_at_max() {
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    declare_args(&ch, "prio", &[("x-max-priority", AMQPValue::ShortShortUInt(5))]).await;
    confirm_select(&ch).await;
    for (b, p) in [("p1", Some(1)), ("none", None), ("p5", Some(5)), ("p9", Some(9)), ("p3", Some(3)), ("p5b", Some(5))]
    {
        let props = match p {
            Some(p) => BasicProperties::default().with_priority(p),
            None => BasicProperties::default(),
        };
        publish_with(&ch, "", "prio", b.as_bytes(), props).await;
    }
    // 9 is above the maximum: treated as 5, FIFO among the 5s.
    assert_eq!(get_all(&ch, "prio").await, ["p5", "p9", "p5b", "p3", "p1", "none"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_priority_prefers_the_high_priority_consumer_while_it_has_credit() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    declare_args(&ch, "q", &[]).await;
    let (low_ch, high_ch) = (channel(&conn).await, channel(&conn).await);
    qos(&low_ch, 10, false).await;
    qos(&high_ch, 2, false).await;
    let mut low = consume_opts(&low_ch, "q", BasicConsumeOptions::default(), FieldTable::default()).await;
    let mut high = consume_opts(&high_ch, "q", BasicConsumeOptions::default(), table(&[("x-priority", int(10))])).await;
    for i in 0..5 {
        publish(&ch, "", "q", format!("m{i}").as_bytes()).await;
    }
    let hs = drain(&mut high).await;
    let ls = drain(&mut low).await;
    assert_eq!(crate::interop::bodies(&hs), ["m0", "m1"]);
    assert_eq!(crate::interop::bodies(&ls), ["m2", "m3", "m4"]);
    // Credit again: the high-priority consumer is served first again.
    w!(hs[1].acker.ack(BasicAckOptions { multiple: true })).expect("ack");
    publish(&ch, "", "q", b"m5").await;
    assert_eq!(next_body(&mut high).await, "m5");
    assert_quiet(&mut low).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumer_fails_over_when_the_active_one_cancels() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    declare_args(&ch, "sac", &[("x-single-active-consumer", AMQPValue::Boolean(true))]).await;
    let (ch_a, ch_b) = (channel(&conn).await, channel(&conn).await);
    let no_ack = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
    let mut a = consume_opts(&ch_a, "sac", no_ack, FieldTable::default()).await;
    let mut b = consume_opts(&ch_b, "sac", no_ack, FieldTable::default()).await;
    for i in 0..3 {
        publish(&ch, "", "sac", format!("m{i}").as_bytes()).await;
    }
    assert_eq!(crate::interop::bodies(&drain(&mut a).await), ["m0", "m1", "m2"]);
    assert_quiet(&mut b).await;
    w!(ch_a.basic_cancel(a.tag(), BasicCancelOptions::default())).expect("basic.cancel");
    for i in 3..5 {
        publish(&ch, "", "sac", format!("m{i}").as_bytes()).await;
    }
    assert_eq!(crate::interop::bodies(&drain(&mut b).await), ["m3", "m4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_consumers_conflict_with_403() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    declare_args(&ch, "excl", &[]).await;
    declare_args(&ch, "sac", &[("x-single-active-consumer", AMQPValue::Boolean(true))]).await;
    let exclusive = BasicConsumeOptions { exclusive: true, ..BasicConsumeOptions::default() };
    let _owner = consume_opts(&ch, "excl", exclusive, FieldTable::default()).await;
    let other = channel(&conn).await;
    let r = w!(other.basic_consume("excl".into(), "".into(), BasicConsumeOptions::default(), FieldTable::default()));
    assert_channel_error(&conn, &other, r, 403).await;
    // consumers.md: an exclusive consumer on a single-active-consumer queue is an error.
    let other = channel(&conn).await;
    let r = w!(other.basic_consume("sac".into(), "".into(), exclusive, FieldTable::default()));
    assert_channel_error(&conn, &other, r, 403).await;
}

// ------------------------------------------------------------------------------ exchanges

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternate_exchange_takes_unroutable_messages_without_a_return() {
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    exchange(&ch, "ae", ExchangeKind::Fanout, &[]).await;
    declare_args(&ch, "unrouted", &[]).await;
    bind(&ch, "unrouted", "ae", "", FieldTable::default()).await;
    exchange(&ch, "main", ExchangeKind::Direct, &[("alternate-exchange", s("ae"))]).await;
    declare_args(&ch, "routed", &[]).await;
    bind(&ch, "routed", "main", "known", FieldTable::default()).await;
    confirm_select(&ch).await;
    let mandatory = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
    for (key, payload) in [("unknown", "to-ae"), ("known", "direct")] {
        let c =
            w!(ch.basic_publish("main".into(), key.into(), mandatory, payload.as_bytes(), BasicProperties::default()))
                .expect("publish");
        assert_eq!(w!(c).expect("confirm"), Confirmation::Ack(None), "{payload}: routed, so no basic.return");
    }
    let d = get_next(&ch, "unrouted").await.delivery;
    assert_eq!(body(&d), "to-ae");
    assert_eq!((d.exchange.as_str(), d.routing_key.as_str()), ("main", "unknown"));
    assert_eq!(get_all(&ch, "routed").await, ["direct"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_to_exchange_bindings_through_every_type() {
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    let hdr = |v: &str| table(&[("h", s(v))]);
    let match_all = table(&[("x-match", s("all")), ("h", s("1"))]);
    // (kind, binding key, binding args, matching (key, headers), other (key, headers))
    let cases = [
        (ExchangeKind::Direct, "k", FieldTable::default(), ("k", None), Some(("other", None))),
        (ExchangeKind::Fanout, "", FieldTable::default(), ("any", None), None),
        (ExchangeKind::Topic, "a.*", FieldTable::default(), ("a.b", None), Some(("b.a", None))),
        (ExchangeKind::Headers, "", match_all, ("", Some(hdr("1"))), Some(("", Some(hdr("2"))))),
    ];
    confirm_select(&ch).await;
    for (i, (kind, key, args, matching, other)) in cases.into_iter().enumerate() {
        let (src, dst, q) = (format!("src{i}"), format!("dst{i}"), format!("q{i}"));
        exchange(&ch, &src, kind.clone(), &[]).await;
        exchange(&ch, &dst, kind.clone(), &[]).await;
        declare_args(&ch, &q, &[]).await;
        w!(ch.exchange_bind(
            dst.as_str().into(),
            src.as_str().into(),
            key.into(),
            ExchangeBindOptions::default(),
            args.clone()
        ))
        .expect("exchange.bind");
        bind(&ch, &q, &dst, key, args.clone()).await;
        let props = |h: Option<FieldTable>| match h {
            Some(h) => BasicProperties::default().with_headers(h),
            None => BasicProperties::default(),
        };
        publish_with(&ch, &src, matching.0, b"match", props(matching.1.clone())).await;
        if let Some((k, h)) = other {
            publish_with(&ch, &src, k, b"other", props(h)).await;
        }
        assert_eq!(get_all(&ch, &q).await, ["match"], "{kind:?}");
        w!(ch.exchange_unbind(
            dst.as_str().into(),
            src.as_str().into(),
            key.into(),
            ExchangeUnbindOptions::default(),
            args
        ))
        .expect("exchange.unbind");
        publish_with(&ch, &src, matching.0, b"after-unbind", props(matching.1)).await;
        assert!(get_all(&ch, &q).await.is_empty(), "{kind:?}: unbound");
    }
}

// ------------------------------------------------------------------------------ delivery limit, queue types, arguments

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_limit_dead_letters_a_poison_message() {
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    dead_letter_target(&ch).await;
    let args =
        table(&[("x-queue-type", s("quorum")), ("x-delivery-limit", int(2)), ("x-dead-letter-exchange", s("dlx"))]);
    try_declare(&ch, "poison", true, args).await.expect("quorum queue.declare");
    publish(&ch, "", "poison", b"poison").await;
    let mut redelivered = Vec::new();
    for _ in 0..3 {
        let m = get_next(&ch, "poison").await;
        redelivered.push(m.delivery.redelivered);
        reject(&ch, m.delivery.delivery_tag, true).await;
    }
    assert_eq!(redelivered, [false, true, true]);
    let d = get_next(&ch, "dlq").await.delivery;
    assert_eq!(body(&d), "poison");
    assert_death(
        deaths(headers(&d))[0],
        Death {
            queue: "poison",
            reason: "delivery_limit",
            exchange: "",
            routing_keys: &["poison"],
            count: 1,
            original_expiration: None,
        },
    );
    assert!(get_all(&ch, "poison").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_types_classic_and_quorum_are_accepted_others_are_406() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    try_declare(&ch, "classic", false, table(&[("x-queue-type", s("classic"))])).await.expect("classic");
    // The tutorial's new_task.py.
    try_declare(&ch, "task_queue", true, table(&[("x-queue-type", s("quorum"))])).await.expect("quorum");
    publish(&ch, "", "task_queue", b"Hello World!").await;
    let again = try_declare(&ch, "task_queue", true, table(&[("x-queue-type", s("quorum"))])).await.expect("again");
    assert_eq!(again.message_count(), 1);
    assert_eq!(get_all(&ch, "task_queue").await, ["Hello World!"]);
    let r = try_declare(&ch, "bogus", false, table(&[("x-queue-type", s("bogus"))])).await;
    assert_channel_error(&conn, &ch, r, 406).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_queue_arguments_are_406_naming_the_argument() {
    let server = TestServer::start().await;
    let conn = connect(&server).await;
    let cases = [
        ("x-message-ttl", s("soon")),
        ("x-max-length", int(-1)),
        ("x-max-priority", int(300)),
        ("x-overflow", s("bogus")),
        ("x-expires", int(0)),
    ];
    for (arg, value) in cases {
        let ch = channel(&conn).await;
        let r = try_declare(&ch, "q", false, table(&[(arg, value)])).await;
        let e = r.as_ref().expect_err("expected 406");
        assert!(e.to_string().contains(&format!("'{arg}'")), "{arg}: {e}");
        assert_channel_error(&conn, &ch, r, 406).await;
    }
    assert_connection_usable(&conn).await;
}

// ------------------------------------------------------------------------------ direct reply-to, consumer timeout, delayed messages

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reply_to_round_trip() {
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    declare_args(&ch, "rpc", &[]).await;
    let no_ack = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
    let mut replies = consume_opts(&ch, "amq.rabbitmq.reply-to", no_ack, FieldTable::default()).await;
    let props =
        BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()).with_correlation_id("c-1".into());
    publish_with(&ch, "", "rpc", b"question", props).await;

    let (_server_conn, server_ch) = open(&server).await;
    let req = get_next(&server_ch, "rpc").await.delivery;
    let reply_to = req.properties.reply_to().as_ref().expect("reply_to").as_str().to_owned();
    assert!(
        reply_to.starts_with("amq.rabbitmq.reply-to.") && reply_to.len() > "amq.rabbitmq.reply-to.".len(),
        "reply_to was not rewritten: {reply_to}"
    );
    let answer = BasicProperties::default().with_correlation_id("c-1".into());
    publish_with(&server_ch, "", &reply_to, b"answer", answer).await;
    match w!(replies.next()) {
        Some(Ok(d)) => {
            assert_eq!(body(&d), "answer");
            assert_eq!(d.properties.correlation_id().as_ref().map(|c| c.as_str()), Some("c-1"));
        }
        other => panic!("expected the reply, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_timeout_cancels_the_consumer_and_requeues() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    declare_args(&ch, "slow", &[("x-consumer-timeout", int(500))]).await;
    let slow_ch = channel(&conn).await;
    let mut slow = consume_opts(&slow_ch, "slow", BasicConsumeOptions::default(), FieldTable::default()).await;
    publish(&ch, "", "slow", b"job").await;
    assert_eq!(next_body(&mut slow).await, "job");
    // Held unacked past the timeout: the broker sends basic.cancel (the stream ends).
    match w!(slow.next()) {
        None => {}
        Some(r) => panic!("expected the consumer to be cancelled, got {r:?}"),
    }
    // The channel is not closed, and the message went back to the queue.
    assert!(slow_ch.status().connected());
    let m = get_next(&slow_ch, "slow").await;
    assert_eq!(body(&m.delivery), "job");
    assert!(m.delivery.redelivered);
    // A late ack of the requeued delivery is ignored, single or `multiple` (a client that
    // batches its acks names the highest tag it finished): the channel stays open.
    w!(slow_ch.basic_ack(1, BasicAckOptions { multiple: true })).expect("late multiple ack");
    w!(m.delivery.acker.ack(BasicAckOptions::default())).expect("ack of the redelivery");
    assert!(crate::interop::get(&slow_ch, "slow").await.is_none());
    assert!(slow_ch.status().connected());
}

/// Warren's lease extension: a publish to `amq.warren.lease` with routing key = the
/// delivery tag, on the consuming channel, restarts that delivery's consumer-timeout clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_extension_keeps_a_slow_consumer_past_its_timeout() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    declare_args(&ch, "leased", &[("x-consumer-timeout", int(600))]).await;
    let slow_ch = channel(&conn).await;
    confirm_select(&slow_ch).await;
    let mut slow = consume_opts(&slow_ch, "leased", BasicConsumeOptions::default(), FieldTable::default()).await;
    publish(&ch, "", "leased", b"long job").await;
    let d = w!(slow.next()).expect("a delivery").expect("no error");
    assert_eq!(body(&d), "long job");
    let lease = |tag: u64| {
        let slow_ch = slow_ch.clone();
        async move {
            w!(w!(slow_ch.basic_publish(
                "amq.warren.lease".into(),
                tag.to_string().as_str().into(),
                BasicPublishOptions::default(),
                b"",
                BasicProperties::default()
            ))
            .expect("published"))
            .expect("confirmed")
        }
    };
    // Held for 2.4 s, four times the timeout, extended every 200 ms: never cancelled.
    let held = Instant::now();
    while held.elapsed() < Duration::from_millis(2400) {
        assert!(lease(d.delivery_tag).await.is_ack());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // An unknown tag is acked and changes nothing.
    assert!(lease(d.delivery_tag + 1000).await.is_ack());
    assert!(tokio::time::timeout(Duration::from_millis(300), slow.next()).await.is_err(), "consumer cancelled");
    // The ack is accepted: the message is gone for good (not requeued).
    w!(d.acker.ack(BasicAckOptions::default())).expect("ack");
    assert!(crate::interop::get(&ch, "leased").await.is_none(), "the acked message came back");

    // A second delivery, not extended: the timeout fires as before.
    publish(&ch, "", "leased", b"abandoned").await;
    let d2 = w!(slow.next()).expect("a delivery").expect("no error");
    assert_eq!(body(&d2), "abandoned");
    match w!(slow.next()) {
        None => {}
        Some(r) => panic!("expected the consumer to be cancelled, got {r:?}"),
    }
    let m = get_next(&ch, "leased").await;
    assert_eq!(body(&m.delivery), "abandoned");
    assert!(m.delivery.redelivered);

    // A routing key that is not a delivery tag is a channel error (406).
    let bad = slow_ch
        .basic_publish(
            "amq.warren.lease".into(),
            "x".into(),
            BasicPublishOptions::default(),
            b"",
            BasicProperties::default(),
        )
        .await;
    let r = match bad {
        Ok(c) => c.await,
        Err(e) => Err(e),
    };
    assert_channel_error(&conn, &slow_ch, r, 406).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_message_exchange_routes_after_x_delay() {
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    exchange(&ch, "delayed", ExchangeKind::Custom("x-delayed-message".into()), &[("x-delayed-type", s("direct"))])
        .await;
    declare_args(&ch, "q", &[]).await;
    bind(&ch, "q", "delayed", "k", FieldTable::default()).await;
    let no_ack = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
    let mut c = consume_opts(&ch, "q", no_ack, FieldTable::default()).await;
    let start = Instant::now();
    let delay = BasicProperties::default().with_headers(table(&[("x-delay", int(300))]));
    publish_with(&ch, "delayed", "k", b"later", delay).await;
    publish(&ch, "delayed", "k", b"now").await;
    assert_eq!(next_body(&mut c).await, "now");
    assert!(start.elapsed() < Duration::from_millis(280), "the undelayed message was held");
    assert_eq!(next_body(&mut c).await, "later");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(280), "delivered after {waited:?}, before its x-delay");
}

/// Resource alarms (connection-blocked.md): while an alarm is on, a connection that
/// publishes gets connection.blocked and is not read, so its confirms stop; a consumer
/// connection keeps draining; when the alarm clears, connection.unblocked and the held
/// publish goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_alarm_blocks_publishers_and_not_consumers() {
    let server = TestServer::start().await;
    let (pconn, pch) = open(&server).await;
    let (_cconn, cch) = open(&server).await;
    let q = "alarmed";
    declare_args(&pch, q, &[]).await;
    confirm_select(&pch).await;
    assert_eq!(publish_confirm(&pch, q, b"before", BasicProperties::default()).await, Confirmation::Ack(None));

    server.state.force_alarms(server::alarms::Alarms { memory: true, disk: false });
    // The alarm blocks the connection (it has published). Two more publishes, from a task:
    // whichever of them lapin sends before it sees connection.blocked waits unread on the
    // server, and lapin itself holds the rest while blocked (so awaiting basic_publish here
    // could wait for the unblock: a race with the broker's prompt connection.blocked).
    let pch2 = pch.clone();
    let publishes = tokio::spawn(async move {
        let mut confirms = Vec::new();
        for body in [&b"held"[..], b"later"] {
            confirms.push(
                pch2.basic_publish(
                    "".into(),
                    "alarmed".into(),
                    BasicPublishOptions::default(),
                    body,
                    BasicProperties::default(),
                )
                .await
                .expect("publish"),
            );
        }
        let mut out = Vec::new();
        for c in confirms {
            out.push(c.await.expect("confirm"));
        }
        out
    });
    let deadline = Instant::now() + WAIT;
    while !pconn.status().blocked() {
        assert!(Instant::now() < deadline, "no connection.blocked within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A consumer-only connection keeps working while publishers are blocked.
    let m = get_next(&cch, q).await;
    assert_eq!(m.delivery.data, b"before");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The blocked connection is not read: neither publish reached the queue.
    assert!(w!(cch.basic_get(q.into(), BasicGetOptions { no_ack: true })).expect("basic.get").is_none());
    assert!(pconn.status().blocked());

    server.state.force_alarms(server::alarms::Alarms::default());
    assert_eq!(w!(publishes).expect("join"), vec![Confirmation::Ack(None), Confirmation::Ack(None)]);
    assert_eq!(get_next(&cch, q).await.delivery.data, b"held");
    assert_eq!(get_next(&cch, q).await.delivery.data, b"later");
    let deadline = Instant::now() + WAIT;
    while pconn.status().blocked() {
        assert!(Instant::now() < deadline, "no connection.unblocked within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
