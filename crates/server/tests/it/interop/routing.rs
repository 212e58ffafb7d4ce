//! basic.publish routing through each exchange type, the default exchange, returns of
//! unroutable mandatory messages, and publishing to missing or internal exchanges.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::{AMQPValue, LongString};
use lapin::{Confirmation, ExchangeKind};

use super::*;

async fn exchange(ch: &Channel, name: &str, kind: ExchangeKind) {
    w!(ch.exchange_declare(name.into(), kind, ExchangeDeclareOptions::default(), FieldTable::default()))
        .expect("exchange.declare");
}

async fn bind_args(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) -> lapin::Result<()> {
    w!(ch.queue_bind(queue.into(), exchange.into(), key.into(), QueueBindOptions::default(), args))
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    bind_args(ch, queue, exchange, key, FieldTable::default()).await.expect("queue.bind");
}

/// Publish one message per key (body = key), then check what each queue holds.
async fn check_routing(ch: &Channel, exchange: &str, keys: &[&str], expected: &[(&str, &[&str])]) {
    for key in keys {
        publish(ch, exchange, key, key.as_bytes()).await;
    }
    for (queue, want) in expected {
        assert_eq!(get_all(ch, queue).await, *want, "messages routed to queue {queue}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_exchange_routes_by_exact_key() {
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    exchange(&ch, "d", ExchangeKind::Direct).await;
    for q in ["q1", "q2", "q12", "qempty"] {
        declare(&ch, q).await;
    }
    bind(&ch, "q1", "d", "k1").await;
    bind(&ch, "q2", "d", "k2").await;
    bind(&ch, "q12", "d", "k1").await;
    bind(&ch, "q12", "d", "k2").await;
    bind(&ch, "qempty", "d", "").await;
    // Binding twice is idempotent: still one copy per message.
    bind(&ch, "q1", "d", "k1").await;
    check_routing(
        &ch,
        "d",
        &["k1", "k2", "k3", "", "K1"],
        &[("q1", &["k1"]), ("q2", &["k2"]), ("q12", &["k1", "k2"]), ("qempty", &[""])],
    )
    .await;
    // The predeclared amq.direct behaves the same.
    bind(&ch, "q1", "amq.direct", "via-amq").await;
    check_routing(&ch, "amq.direct", &["via-amq", "k1"], &[("q1", &["via-amq"])]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_exchange_routes_to_every_bound_queue() {
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    exchange(&ch, "f", ExchangeKind::Fanout).await;
    for q in ["a", "b", "unbound"] {
        declare(&ch, q).await;
    }
    bind(&ch, "a", "f", "").await;
    bind(&ch, "b", "f", "ignored-key").await;
    check_routing(&ch, "f", &["x", "", "y.z"], &[("a", &["x", "", "y.z"]), ("b", &["x", "", "y.z"]), ("unbound", &[])])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_exchange_matches_words_stars_and_hashes() {
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    exchange(&ch, "t", ExchangeKind::Topic).await;
    let patterns: &[(&str, &[&str])] = &[
        ("star-mid", &["a.*.c"]),
        ("hash-tail", &["a.#"]),
        ("hash", &["#"]),
        ("star", &["*"]),
        ("hash-mid", &["a.#.c"]),
        ("star-tail", &["a.*"]),
        ("hash-head", &["#.c"]),
        ("empty", &[""]),
        ("two-words", &["*.*"]),
        ("empty-word", &["a..c"]),
        ("overlap", &["a.*", "*.c"]),
    ];
    for (q, keys) in patterns {
        declare(&ch, q).await;
        for key in *keys {
            bind(&ch, q, "t", key).await;
        }
    }
    let keys = ["a.b.c", "a..c", "a.c", "a.b.b.c", "a", "a.b", "b.a", "", "x", "x.y", "a."];
    check_routing(
        &ch,
        "t",
        &keys,
        &[
            ("star-mid", &["a.b.c", "a..c"]),
            ("hash-tail", &["a.b.c", "a..c", "a.c", "a.b.b.c", "a", "a.b", "a."]),
            ("hash", &keys),
            // An empty routing key has no words at all; "a." has two, the second empty.
            ("star", &["a", "x"]),
            ("hash-mid", &["a.b.c", "a..c", "a.c", "a.b.b.c"]),
            ("star-tail", &["a.c", "a.b", "a."]),
            ("hash-head", &["a.b.c", "a..c", "a.c", "a.b.b.c"]),
            ("empty", &[""]),
            ("two-words", &["a.c", "a.b", "b.a", "x.y", "a."]),
            ("empty-word", &["a..c"]),
            // Matched by both of its bindings, a message still arrives once.
            ("overlap", &["a.c", "a.b", "a."]),
        ],
    )
    .await;
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_exchange_matches_all_any_and_with_x() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    exchange(&ch, "h", ExchangeKind::Headers).await;
    let bindings: Vec<(&str, FieldTable)> = vec![
        ("all", table(&[("x-match", s("all")), ("color", s("red")), ("size", AMQPValue::LongInt(1))])),
        ("any", table(&[("x-match", s("any")), ("color", s("red")), ("shape", s("round"))])),
        // No x-match: "all".
        ("default", table(&[("color", s("red"))])),
        ("any-with-x", table(&[("x-match", s("any-with-x")), ("x-tag", s("a"))])),
        // Plain any/all ignore x- arguments: "any" with none left never matches, "all"
        // with none left always does.
        ("any-only-x", table(&[("x-match", s("any")), ("x-tag", s("a"))])),
        ("all-only-x", table(&[("x-match", s("all")), ("x-tag", s("a"))])),
        ("all-with-x", table(&[("x-match", s("all-with-x")), ("x-tag", s("a")), ("color", s("red"))])),
        // A void value only asks for the header to be present.
        ("present", table(&[("x-match", s("all")), ("size", AMQPValue::Void)])),
    ];
    for (q, args) in &bindings {
        declare(&ch, q).await;
        bind_args(&ch, q, "h", "ignored", args.clone()).await.expect("bind");
    }
    let messages: Vec<(&str, Option<FieldTable>)> = vec![
        ("m1", Some(table(&[("color", s("red")), ("size", AMQPValue::LongInt(1))]))),
        ("m2", Some(table(&[("color", s("red"))]))),
        ("m3", Some(table(&[("shape", s("round")), ("x-tag", s("a"))]))),
        ("m4", Some(table(&[("x-tag", s("a"))]))),
        ("m5", None),
        ("m6", Some(table(&[("color", s("blue")), ("size", AMQPValue::LongInt(1))]))),
        ("m7", Some(table(&[("color", s("red")), ("x-tag", s("a"))]))),
        // Integers match by value whatever their width.
        ("m8", Some(table(&[("color", s("red")), ("size", AMQPValue::LongLongInt(1))]))),
    ];
    for (name, headers) in &messages {
        let props = match headers {
            Some(h) => BasicProperties::default().with_headers(h.clone()),
            None => BasicProperties::default(),
        };
        publish_with(&ch, "h", "any-key", name.as_bytes(), props).await;
    }
    let expected: &[(&str, &[&str])] = &[
        ("all", &["m1", "m8"]),
        ("any", &["m1", "m2", "m3", "m7", "m8"]),
        ("default", &["m1", "m2", "m7", "m8"]),
        ("any-with-x", &["m3", "m4", "m7"]),
        ("any-only-x", &[]),
        ("all-only-x", &["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8"]),
        ("all-with-x", &["m7"]),
        ("present", &["m1", "m6", "m8"]),
    ];
    for (q, want) in expected {
        assert_eq!(get_all(&ch, q).await, *want, "messages routed to queue {q}");
    }

    // An invalid x-match is refused at bind time with 406.
    let r = bind_args(&ch, "all", "h", "", table(&[("x-match", s("bogus"))])).await;
    assert_channel_error(&conn, &ch, r, 406).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_exchange_routes_to_the_queue_named_by_the_key() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    declare(&ch, "dq").await;
    publish(&ch, "", "dq", b"hello").await;
    publish(&ch, "", "no-such-queue", b"dropped").await;
    let m = get(&ch, "dq").await.expect("routed by the default exchange");
    assert_eq!(body(&m), "hello");
    assert_eq!(m.exchange.as_str(), "");
    assert_eq!(m.routing_key.as_str(), "dq");
    assert!(get(&ch, "dq").await.is_none());
    // Unroutable, non-mandatory: silently dropped, the channel is fine.
    assert!(ch.status().connected());
    assert_connection_usable(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_mandatory_message_is_returned_with_312() {
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    w!(ch.confirm_select(ConfirmSelectOptions::default())).expect("confirm.select");
    let q = declare(&ch, "").await;
    let mandatory = BasicPublishOptions { mandatory: true, ..Default::default() };
    let props = BasicProperties::default().with_message_id("id-1".into()).with_content_type("text/plain".into());

    for (exchange, key) in [("amq.direct", "nobody"), ("", "no-such-queue")] {
        let confirm = w!(ch.basic_publish(exchange.into(), key.into(), mandatory, b"bounce", props.clone()))
            .expect("basic.publish");
        let confirmation = w!(confirm).expect("confirm");
        assert!(confirmation.is_ack(), "an unroutable message is still acked: {confirmation:?}");
        let ret = confirmation.take_message().expect("basic.return before the ack");
        assert_eq!(ret.reply_code, 312);
        assert_eq!(ret.reply_text.as_str(), "NO_ROUTE");
        assert_eq!(ret.delivery.exchange.as_str(), exchange);
        assert_eq!(ret.delivery.routing_key.as_str(), key);
        assert_eq!(ret.delivery.data, b"bounce");
        assert_eq!(ret.delivery.properties, props);
    }

    // Routable mandatory, and unroutable non-mandatory: acked, nothing returned.
    let confirm = w!(ch.basic_publish("".into(), q.as_str().into(), mandatory, b"ok", props.clone())).expect("publish");
    assert_eq!(w!(confirm).expect("confirm"), Confirmation::Ack(None));
    let confirm =
        w!(ch.basic_publish("amq.direct".into(), "nobody".into(), BasicPublishOptions::default(), b"x", props))
            .expect("publish");
    assert_eq!(w!(confirm).expect("confirm"), Confirmation::Ack(None));
    assert_eq!(get_all(&ch, &q).await, ["ok"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_missing_exchange_is_404_on_the_channel() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let mut errors = Errors::watch(&conn);
    w!(ch.basic_publish(
        "no-such-exchange".into(),
        "k".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default()
    ))
    .expect("the publish itself is sent");
    errors.channel_error(&conn, &ch, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_internal_exchange_is_403_on_the_channel() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let internal = ExchangeDeclareOptions { internal: true, ..Default::default() };
    w!(ch.exchange_declare("int".into(), ExchangeKind::Fanout, internal, FieldTable::default())).expect("declare");
    let mut errors = Errors::watch(&conn);
    w!(ch.basic_publish("int".into(), "k".into(), BasicPublishOptions::default(), b"x", BasicProperties::default()))
        .expect("the publish itself is sent");
    errors.channel_error(&conn, &ch, 403).await;
}
