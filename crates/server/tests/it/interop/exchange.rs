//! exchange.*: declare, delete, exchange-to-exchange bindings, auto-delete.

use lapin::ExchangeKind;
use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, ExchangeUnbindOptions, QueueBindOptions,
};

use super::*;

fn passive() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions { passive: true, ..Default::default() }
}

async fn declare_exchange(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    opts: ExchangeDeclareOptions,
) -> lapin::Result<()> {
    w!(ch.exchange_declare(name.into(), kind, opts, FieldTable::default()))
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    w!(ch.queue_bind(queue.into(), exchange.into(), key.into(), QueueBindOptions::default(), FieldTable::default()))
        .expect("queue.bind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_each_exchange_type() {
    let server = TestServer::start().await;
    let (_conn, ch) = open(&server).await;
    let kinds = [
        ("x.direct", ExchangeKind::Direct),
        ("x.fanout", ExchangeKind::Fanout),
        ("x.topic", ExchangeKind::Topic),
        ("x.headers", ExchangeKind::Headers),
    ];
    for (name, kind) in &kinds {
        declare_exchange(&ch, name, kind.clone(), Default::default()).await.expect("exchange.declare");
        // An equivalent redeclare is a no-op; so is a passive declare.
        declare_exchange(&ch, name, kind.clone(), Default::default()).await.expect("redeclare");
        declare_exchange(&ch, name, ExchangeKind::Direct, passive()).await.expect("passive declare");
    }
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    declare_exchange(&ch, "x.durable", ExchangeKind::Topic, durable).await.expect("durable exchange");
    let auto_delete = ExchangeDeclareOptions { auto_delete: true, ..Default::default() };
    declare_exchange(&ch, "x.ad", ExchangeKind::Fanout, auto_delete).await.expect("auto-delete exchange");
    let internal = ExchangeDeclareOptions { internal: true, ..Default::default() };
    declare_exchange(&ch, "x.internal", ExchangeKind::Direct, internal).await.expect("internal exchange");
    // The predeclared exchanges exist, and an equivalent redeclare of one is allowed.
    for name in ["amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"] {
        declare_exchange(&ch, name, ExchangeKind::Direct, passive()).await.expect(name);
    }
    declare_exchange(&ch, "amq.direct", ExchangeKind::Direct, durable).await.expect("redeclare amq.direct");
    // nowait declares get no reply but take effect.
    let nowait = ExchangeDeclareOptions { nowait: true, ..Default::default() };
    declare_exchange(&ch, "x.nowait", ExchangeKind::Fanout, nowait).await.expect("nowait declare");
    declare_exchange(&ch, "x.nowait", ExchangeKind::Fanout, passive()).await.expect("declared by nowait");
    assert!(ch.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_declare_of_missing_exchange_is_404_on_the_channel() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let r = declare_exchange(&ch, "missing", ExchangeKind::Direct, passive()).await;
    assert_channel_error(&conn, &ch, r, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_with_other_type_or_flags_is_406() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    declare_exchange(&ch, "x", ExchangeKind::Direct, Default::default()).await.expect("declare");
    let r = declare_exchange(&ch, "x", ExchangeKind::Fanout, Default::default()).await;
    assert_channel_error(&conn, &ch, r, 406).await;

    let ch = channel(&conn).await;
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    let r = declare_exchange(&ch, "x", ExchangeKind::Direct, durable).await;
    assert_channel_error(&conn, &ch, r, 406).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inequivalent_redeclare_of_a_predeclared_exchange_is_406() {
    // A predeclared exchange exists, so an inequivalent redeclare is a 406 as for any
    // other exchange: RabbitMQ checks the reserved amq. prefix only when it would create
    // the exchange (rabbit_channel: lookup, then check_name only on not_found, then
    // assert_equivalence).
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    let r = declare_exchange(&ch, "amq.direct", ExchangeKind::Fanout, durable).await;
    assert_channel_error(&conn, &ch, r, 406).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_and_default_exchange_names_are_403() {
    let server = TestServer::start().await;
    let conn = connect(&server).await;

    let ch = channel(&conn).await;
    let r = declare_exchange(&ch, "amq.foo", ExchangeKind::Direct, Default::default()).await;
    assert_channel_error(&conn, &ch, r, 403).await;

    let ch = channel(&conn).await;
    let r = declare_exchange(&ch, "", ExchangeKind::Direct, Default::default()).await;
    assert_channel_error(&conn, &ch, r, 403).await;

    let ch = channel(&conn).await;
    let r = w!(ch.exchange_delete("amq.direct".into(), ExchangeDeleteOptions::default()));
    assert_channel_error(&conn, &ch, r, 403).await;

    let ch = channel(&conn).await;
    let r = w!(ch.exchange_delete("".into(), ExchangeDeleteOptions::default()));
    assert_channel_error(&conn, &ch, r, 403).await;

    // Binding a queue to the default exchange is not allowed either.
    let ch = channel(&conn).await;
    let q = declare(&ch, "").await;
    let r =
        w!(ch.queue_bind(q.as_str().into(), "".into(), "k".into(), QueueBindOptions::default(), FieldTable::default()));
    assert_channel_error(&conn, &ch, r, 403).await;

    // The predeclared exchanges survived.
    let ch = channel(&conn).await;
    declare_exchange(&ch, "amq.direct", ExchangeKind::Direct, passive()).await.expect("amq.direct exists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_exchange_type_is_406_on_the_channel() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let r = declare_exchange(&ch, "x", ExchangeKind::Custom("x-no-such-type".into()), Default::default()).await;
    assert_channel_error(&conn, &ch, r, 406).await;
    // The connection goes on.
    assert_connection_usable(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_exchange_and_if_unused() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    declare_exchange(&ch, "used", ExchangeKind::Direct, Default::default()).await.expect("declare");
    declare_exchange(&ch, "unused", ExchangeKind::Direct, Default::default()).await.expect("declare");
    let q = declare(&ch, "").await;
    bind(&ch, &q, "used", "k").await;

    let if_unused = ExchangeDeleteOptions { if_unused: true, ..Default::default() };
    w!(ch.exchange_delete("unused".into(), if_unused)).expect("delete an unused exchange");
    let r = w!(ch.exchange_delete("used".into(), if_unused));
    assert_channel_error(&conn, &ch, r, 406).await;

    let ch = channel(&conn).await;
    declare_exchange(&ch, "used", ExchangeKind::Direct, passive()).await.expect("still there after 406");
    w!(ch.exchange_delete("used".into(), ExchangeDeleteOptions::default())).expect("unconditional delete");
    // Deleting a missing exchange succeeds (RabbitMQ 3.x+).
    w!(ch.exchange_delete("used".into(), ExchangeDeleteOptions::default())).expect("delete missing");
    // Its bindings went with it: nothing routes to the queue any more.
    publish(&ch, "amq.direct", "k", b"x").await;
    assert_eq!(counts(&conn, &q).await, (0, 0));
    let r = declare_exchange(&ch, "used", ExchangeKind::Direct, passive()).await;
    assert_channel_error(&conn, &ch, r, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_to_exchange_bind_routes_and_unbind_stops() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    declare_exchange(&ch, "src", ExchangeKind::Topic, Default::default()).await.expect("declare src");
    declare_exchange(&ch, "dst", ExchangeKind::Direct, Default::default()).await.expect("declare dst");
    let q = declare(&ch, "").await;
    bind(&ch, &q, "dst", "a.b").await;
    w!(ch.exchange_bind(
        "dst".into(),
        "src".into(),
        "a.*".into(),
        ExchangeBindOptions::default(),
        FieldTable::default()
    ))
    .expect("exchange.bind");

    publish(&ch, "src", "a.b", b"through").await; // src matches a.*, dst matches a.b
    publish(&ch, "src", "a.c", b"dst-miss").await; // src matches, dst does not
    publish(&ch, "src", "b.b", b"src-miss").await; // src does not match
    publish(&ch, "dst", "a.b", b"direct").await;
    let got = get(&ch, &q).await.expect("a message");
    assert_eq!(body(&got), "through");
    assert_eq!(got.exchange.as_str(), "src", "the exchange published to is reported");
    assert_eq!(got.routing_key.as_str(), "a.b");
    assert_eq!(get_all(&ch, &q).await, ["direct"]);

    w!(ch.exchange_unbind(
        "dst".into(),
        "src".into(),
        "a.*".into(),
        ExchangeUnbindOptions::default(),
        FieldTable::default()
    ))
    .expect("exchange.unbind");
    publish(&ch, "src", "a.b", b"after-unbind").await;
    assert!(get_all(&ch, &q).await.is_empty());

    // Binding from or to a missing exchange is 404.
    let r = w!(ch.exchange_bind(
        "dst".into(),
        "missing".into(),
        "".into(),
        ExchangeBindOptions::default(),
        FieldTable::default()
    ));
    assert_channel_error(&conn, &ch, r, 404).await;
    let ch = channel(&conn).await;
    let r = w!(ch.exchange_bind(
        "missing".into(),
        "src".into(),
        "".into(),
        ExchangeBindOptions::default(),
        FieldTable::default()
    ));
    assert_channel_error(&conn, &ch, r, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_exchange_goes_with_its_last_binding() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let ad = ExchangeDeclareOptions { auto_delete: true, ..Default::default() };
    declare_exchange(&ch, "ad", ExchangeKind::Direct, ad).await.expect("declare");
    // No binding yet: it stays.
    declare_exchange(&ch, "ad", ExchangeKind::Direct, passive()).await.expect("exists before any binding");
    let q1 = declare(&ch, "").await;
    let q2 = declare(&ch, "").await;
    bind(&ch, &q1, "ad", "k").await;
    bind(&ch, &q2, "ad", "k").await;
    w!(ch.queue_unbind(q1.as_str().into(), "ad".into(), "k".into(), FieldTable::default())).expect("unbind");
    declare_exchange(&ch, "ad", ExchangeKind::Direct, passive()).await.expect("one binding left");
    w!(ch.queue_unbind(q2.as_str().into(), "ad".into(), "k".into(), FieldTable::default())).expect("unbind");
    let r = declare_exchange(&ch, "ad", ExchangeKind::Direct, passive()).await;
    assert_channel_error(&conn, &ch, r, 404).await;

    // Same when the last binding goes because its queue is deleted, and for an
    // exchange-to-exchange binding whose source is the auto-delete exchange.
    let ch = channel(&conn).await;
    declare_exchange(&ch, "ad2", ExchangeKind::Fanout, ad).await.expect("declare");
    declare_exchange(&ch, "ad3", ExchangeKind::Fanout, ad).await.expect("declare");
    let q3 = declare(&ch, "").await;
    bind(&ch, &q3, "ad2", "").await;
    w!(ch.exchange_bind(
        "amq.fanout".into(),
        "ad3".into(),
        "".into(),
        ExchangeBindOptions::default(),
        FieldTable::default()
    ))
    .expect("exchange.bind");
    w!(ch.queue_delete(q3.as_str().into(), Default::default())).expect("queue.delete");
    w!(ch.exchange_unbind(
        "amq.fanout".into(),
        "ad3".into(),
        "".into(),
        ExchangeUnbindOptions::default(),
        FieldTable::default()
    ))
    .expect("exchange.unbind");
    for name in ["ad2", "ad3"] {
        let ch = channel(&conn).await;
        let r = declare_exchange(&ch, name, ExchangeKind::Fanout, passive()).await;
        assert_channel_error(&conn, &ch, r, 404).await;
    }
}
