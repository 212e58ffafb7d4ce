//! `tests/fixtures/v<N>`: whole data directories written by each on-disk format (see
//! fixtures/v1/README.md). The current server must open every one of them and find exactly
//! the exchanges, queues, bindings and messages [`expect_fixture`] lists. [`write_fixture`]
//! is how they were made (with the code of their time); a test runs it on the current code
//! too, so the generator and the expectations stay true. Never regenerate a version in
//! place: a format change needs a new directory, added to [`VERSIONS`]; the old ones must
//! still open.

use std::path::{Path, PathBuf};

use lapin::options::{
    BasicAckOptions, ExchangeBindOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeleteOptions,
};
use lapin::types::AMQPValue;

use super::*;

/// Every checked-in data directory version.
const VERSIONS: &[&str] = &["v1", "v2"];

fn fixture_dir(version: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(version)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display())) {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_tree(&e.path(), &target);
        } else if e.file_name() != "README.md" {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

fn max_length() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-max-length".into(), AMQPValue::LongInt(1000));
    t
}

fn max_priority() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-max-priority".into(), AMQPValue::LongInt(3));
    t
}

async fn get_one(ch: &Channel, queue: &str, want: &str) -> lapin::message::Delivery {
    let m = w!(ch.basic_get(queue.into(), BasicGetOptions::default())).expect("basic.get").expect(want);
    assert_eq!(m.delivery.data, want.as_bytes());
    m.delivery
}

/// The fixture data directory, written through the server like any client would, over
/// two runs (so that a recovered segment gets sealed with its meta file, and the
/// definitions log holds a compacted part and appended deletions).
async fn write_fixture(dir: &Path) {
    // Run 1.
    let server = TestServer::start_persistent(dir).await;
    let (conn, ch) = open(&server).await;
    let bind = |q: &'static str, e: &'static str, k: &'static str| {
        let ch = ch.clone();
        async move {
            w!(ch.queue_bind(q.into(), e.into(), k.into(), QueueBindOptions::default(), FieldTable::default()))
                .expect("queue.bind");
        }
    };
    declare_exchange(&ch, "v1.direct", ExchangeKind::Direct, durable_exchange()).await;
    declare_exchange(&ch, "v1.topic", ExchangeKind::Topic, durable_exchange()).await;
    declare_exchange(&ch, "v1.fanout", ExchangeKind::Fanout, durable_exchange()).await;
    declare_exchange(&ch, "v1.gone", ExchangeKind::Direct, durable_exchange()).await;
    declare_exchange(&ch, "v1.transient", ExchangeKind::Direct, ExchangeDeclareOptions::default()).await;
    w!(ch.exchange_bind(
        "v1.fanout".into(),
        "v1.topic".into(),
        "fan.#".into(),
        ExchangeBindOptions::default(),
        FieldTable::default()
    ))
    .expect("exchange.bind");
    declare_queue(&ch, "v1.orders", QueueDeclareOptions::durable(), max_length()).await;
    declare_queue(&ch, "v1.audit", QueueDeclareOptions::durable(), FieldTable::default()).await;
    declare_queue(&ch, "v1.prio", QueueDeclareOptions::durable(), max_priority()).await;
    declare_queue(&ch, "v1.paged", QueueDeclareOptions::durable(), FieldTable::default()).await;
    declare_queue(&ch, "v1.unbound", QueueDeclareOptions::durable(), FieldTable::default()).await;
    declare_queue(&ch, "v1.deleted", QueueDeclareOptions::durable(), FieldTable::default()).await;
    declare_queue(&ch, "v1.nd", QueueDeclareOptions::default(), FieldTable::default()).await;
    bind("v1.orders", "v1.direct", "orders").await;
    bind("v1.orders", "v1.topic", "*.orders.#").await;
    bind("v1.audit", "v1.fanout", "").await;
    bind("v1.unbound", "v1.direct", "x").await;
    bind("v1.deleted", "v1.direct", "orders").await;
    bind("v1.nd", "v1.direct", "orders").await;
    bind("v1.audit", "v1.gone", "g").await;

    let pch = confirm_channel(&conn).await;
    let mut headers = FieldTable::default();
    headers.insert("h".into(), AMQPValue::LongString("v".into()));
    for i in 0..6 {
        let id = format!("o{i}");
        let props = persistent(&id)
            .with_content_type("text/plain".into())
            .with_headers(headers.clone())
            .with_timestamp(1_700_000_000 + i);
        publish_confirmed(&pch, "v1.direct", "orders", &id, props).await;
    }
    publish_confirmed(&pch, "v1.direct", "orders", "o-transient", transient("o-transient")).await;
    publish_confirmed(&pch, "v1.topic", "eu.orders.new", "o6", persistent("o6")).await;
    publish_confirmed(&pch, "v1.topic", "us.orders.new", "o7", persistent("o7").with_correlation_id("c7".into())).await;
    publish_confirmed(&pch, "v1.topic", "fan.x", "a0", persistent("a0")).await;
    publish_confirmed(&pch, "v1.gone", "g", "a1", persistent("a1")).await;
    for (i, p) in [0u8, 3, 1, 3].iter().enumerate() {
        let id = format!("q{i}");
        publish_confirmed(&pch, "", "v1.prio", &id, persistent(&id).with_priority(*p)).await;
    }
    // v1.paged: transient messages fill its 8 MiB of RAM (and are lost at the stop); the
    // small ones after them are paged out to its files, between two persistent messages.
    publish_confirmed(&pch, "", "v1.paged", "p-first", persistent("p-first")).await;
    let fill = vec![b'f'; 100 * 1024];
    let small = vec![b's'; 1024];
    for body in std::iter::repeat_n(&fill, 81).chain(std::iter::repeat_n(&small, 70)) {
        let c =
            w!(pch.basic_publish("".into(), "v1.paged".into(), BasicPublishOptions::default(), body, transient("t")))
                .expect("publish");
        assert_eq!(w!(c).expect("confirm"), Confirmation::Ack(None));
    }
    publish_confirmed(&pch, "", "v1.paged", "p-last", persistent("p-last")).await;

    // o0 and o1 acknowledged; o2 delivered and unacked when the server stops.
    let cch = channel(&conn).await;
    for want in ["o0", "o1", "o2"] {
        let d = get_one(&cch, "v1.orders", want).await;
        if want != "o2" {
            w!(d.acker.ack(BasicAckOptions::default())).expect("ack");
        }
    }
    // A round trip on that channel, so the acks are in before the stop.
    w!(cch.basic_qos(0, Default::default())).expect("basic.qos");
    server.stop().await;

    // Run 2: o2 (redelivered) acked, o3 delivered and unacked at the stop, o8 published;
    // then an unbinding and two deletions.
    let server = TestServer::start_persistent(dir).await;
    let (conn, ch) = open(&server).await;
    let cch = channel(&conn).await;
    let d = get_one(&cch, "v1.orders", "o2").await;
    assert!(d.redelivered, "o2 was delivered in run 1");
    w!(d.acker.ack(BasicAckOptions::default())).expect("ack");
    get_one(&cch, "v1.orders", "o3").await;
    w!(cch.basic_qos(0, Default::default())).expect("basic.qos");
    let pch = confirm_channel(&conn).await;
    publish_confirmed(&pch, "v1.direct", "orders", "o8", persistent("o8")).await;
    w!(ch.queue_unbind("v1.unbound".into(), "v1.direct".into(), "x".into(), FieldTable::default())).expect("unbind");
    w!(ch.queue_delete("v1.deleted".into(), QueueDeleteOptions::default())).expect("queue.delete");
    w!(ch.exchange_delete("v1.gone".into(), ExchangeDeleteOptions::default())).expect("exchange.delete");
    server.stop().await;
}

/// Queues of the fixture and their message counts.
const QUEUES: [(&str, u32); 6] =
    [("v1.orders", 6), ("v1.audit", 2), ("v1.prio", 4), ("v1.paged", 2), ("v1.unbound", 0), ("v1.deleted", 0)];

/// What a server over a fixture data directory must hold.
async fn expect_fixture(server: &TestServer, version: &str) {
    let (conn, ch) = open(server).await;
    for e in ["v1.direct", "v1.topic", "v1.fanout"] {
        assert_eq!(exchange_exists(&conn, e).await, Ok(()), "{version}: exchange {e}");
    }
    for e in ["v1.gone", "v1.transient"] {
        assert_eq!(exchange_exists(&conn, e).await, Err(Some(404)), "{version}: exchange {e}");
    }
    for q in ["v1.deleted", "v1.nd"] {
        assert_eq!(queue_count(&conn, q).await, Err(Some(404)), "{version}: queue {q}");
    }
    for (q, n) in QUEUES.into_iter().filter(|(q, _)| *q != "v1.deleted") {
        assert_eq!(queue_count(&conn, q).await, Ok(n), "{version}: messages in {q}");
    }

    // Messages, in order, with their properties.
    let mut orders = Vec::new();
    while let Some(m) = w!(ch.basic_get("v1.orders".into(), BasicGetOptions { no_ack: true })).expect("basic.get") {
        let d = &m.delivery;
        let body = String::from_utf8_lossy(&d.data).into_owned();
        let p = &d.properties;
        assert_eq!(p.delivery_mode(), &Some(2), "{version}: {body}");
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some(body.as_str()), "{version}: {body}");
        if let Some(i) = body.strip_prefix('o').and_then(|n| n.parse::<u64>().ok()).filter(|&i| i < 6) {
            assert_eq!(p.content_type().as_ref().map(|s| s.as_str()), Some("text/plain"), "{version}: {body}");
            assert_eq!(p.timestamp(), &Some(1_700_000_000 + i), "{version}: {body}");
            let h = p.headers().as_ref().expect("headers");
            assert_eq!(h.inner().get("h"), Some(&AMQPValue::LongString("v".into())), "{version}: {body}");
            assert_eq!((d.exchange.as_str(), d.routing_key.as_str()), ("v1.direct", "orders"), "{version}: {body}");
        }
        if body == "o7" {
            assert_eq!(p.correlation_id().as_ref().map(|s| s.as_str()), Some("c7"), "{version}");
            assert_eq!((d.exchange.as_str(), d.routing_key.as_str()), ("v1.topic", "us.orders.new"), "{version}");
        }
        orders.push((body, d.redelivered));
    }
    let want: Vec<(String, bool)> =
        [("o3", true), ("o4", false), ("o5", false), ("o6", false), ("o7", false), ("o8", false)]
            .iter()
            .map(|&(b, r)| (b.to_owned(), r))
            .collect();
    assert_eq!(orders, want, "{version}: v1.orders");
    let bodies = |v: Vec<(String, bool)>| v.into_iter().map(|(b, _)| b).collect::<Vec<_>>();
    assert_eq!(bodies(get_all(&ch, "v1.audit").await), ["a0", "a1"], "{version}: v1.audit");
    assert_eq!(bodies(get_all(&ch, "v1.prio").await), ["q1", "q3", "q2", "q0"], "{version}: v1.prio by priority");
    assert_eq!(bodies(get_all(&ch, "v1.paged").await), ["p-first", "p-last"], "{version}: v1.paged");

    // Bindings: routed where they lead, and nowhere the removed ones did.
    let pch = confirm_channel(&conn).await;
    publish_confirmed(&pch, "v1.direct", "orders", "n0", persistent("n0")).await;
    publish_confirmed(&pch, "v1.topic", "eu.orders.x", "n1", persistent("n1")).await;
    publish_confirmed(&pch, "v1.topic", "fan.y", "n2", persistent("n2")).await;
    publish_confirmed(&pch, "v1.direct", "x", "n3", persistent("n3")).await;
    publish_confirmed(&pch, "v1.topic", "other", "n4", persistent("n4")).await;
    assert_eq!(bodies(get_all(&ch, "v1.orders").await), ["n0", "n1"], "{version}: v1.orders bindings");
    assert_eq!(bodies(get_all(&ch, "v1.audit").await), ["n2"], "{version}: v1.audit via v1.topic -> v1.fanout");
    assert_eq!(bodies(get_all(&ch, "v1.unbound").await), Vec::<String>::new(), "{version}: v1.unbound is unbound");

    // Flags and arguments came back: equivalent redeclares work, others are 406.
    declare_queue(&ch, "v1.orders", QueueDeclareOptions::durable(), max_length()).await;
    declare_exchange(&ch, "v1.topic", ExchangeKind::Topic, durable_exchange()).await;
    let ch2 = channel(&conn).await;
    let r = w!(ch2.queue_declare("v1.orders".into(), QueueDeclareOptions::durable(), FieldTable::default()));
    let r = r.map(|_| ()).map_err(|e| reply_code(&e));
    assert_eq!(r, Err(Some(406)), "{version}: v1.orders without its x-max-length");
    let ch2 = channel(&conn).await;
    let r =
        w!(ch2.exchange_declare("v1.topic".into(), ExchangeKind::Direct, durable_exchange(), FieldTable::default()));
    assert_eq!(r.map_err(|e| reply_code(&e)), Err(Some(406)), "{version}: v1.topic as a direct exchange");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_version_opens_with_the_exact_contents() {
    for &version in VERSIONS {
        let tmp = tempfile::tempdir().expect("tempdir");
        copy_tree(&fixture_dir(version), tmp.path());
        let server = TestServer::start_persistent(tmp.path()).await;
        expect_fixture(&server, version).await;
        server.stop().await;
    }
}

/// The generator, run by the current code, gives a directory that meets the same
/// expectations. WARREN_FIXTURE_OUT=<dir> keeps a copy of it (to make a new version:
/// never to overwrite an old one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_generator_still_meets_the_expectations() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_fixture(tmp.path()).await;
    if let Some(out) = std::env::var_os("WARREN_FIXTURE_OUT") {
        copy_tree(tmp.path(), Path::new(&out));
        eprintln!("generated data directory copied to {}", Path::new(&out).display());
    }
    let server = TestServer::start_persistent(tmp.path()).await;
    expect_fixture(&server, "generated").await;
    server.stop().await;
}

/// (tag, name) of each record of a definitions log: 1 exchange, 2 exchange deleted, 3 queue,
/// 4 queue deleted, 5 binding, 6 unbinding (docs/storage.md); with each record's end.
fn definitions(log: &[u8]) -> Vec<(u8, String, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < log.len() {
        let store::record::Decoded::Record(p, n) = store::record::decode(&log[at..]) else {
            panic!("the fixture's definitions.log is damaged at {at}")
        };
        let str_at = |o: usize| {
            let len = usize::from(u16::from_le_bytes([p[o], p[o + 1]]));
            (String::from_utf8_lossy(&p[o + 2..o + 2 + len]).into_owned(), o + 2 + len)
        };
        let (_vhost, o) = str_at(1);
        let (name, _) = str_at(o);
        at += n;
        out.push((p[0], name, at));
    }
    out
}

/// A fixture data directory whose definitions log was torn after any record or inside
/// one: the server starts, and holds exactly the exchanges and queues of the records
/// wholly before the cut (a queue cut from the log goes with its messages: it was never
/// declare-ok'd).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_version_with_a_torn_definitions_log() {
    let exchanges = ["v1.direct", "v1.topic", "v1.fanout", "v1.gone"];
    for &version in VERSIONS {
        let log = std::fs::read(fixture_dir(version).join("definitions.log")).expect("definitions.log");
        let defs = definitions(&log);
        let mut cuts: Vec<usize> = vec![0, 3];
        for &(_, _, end) in &defs {
            cuts.extend([end, (end + 5).min(log.len())]);
        }
        cuts.dedup();
        for cut in cuts {
            let ctx = format!("{version}, log cut at {cut} of {}", log.len());
            let whole: Vec<&(u8, String, usize)> = defs.iter().filter(|d| d.2 <= cut).collect();
            let live = |add: u8, del: u8, name: &str| {
                whole.iter().fold(false, |live, (tag, n, _)| match *tag {
                    t if t == add && n == name => true,
                    t if t == del && n == name => false,
                    _ => live,
                })
            };
            let tmp = tempfile::tempdir().expect("tempdir");
            copy_tree(&fixture_dir(version), tmp.path());
            std::fs::write(tmp.path().join("definitions.log"), &log[..cut]).expect("cut the log");
            let server = TestServer::start_persistent(tmp.path()).await;
            let conn = connect_uri(&server.uri()).await;
            for e in exchanges {
                let want = if live(1, 2, e) { Ok(()) } else { Err(Some(404)) };
                assert_eq!(exchange_exists(&conn, e).await, want, "{ctx}: exchange {e}");
            }
            for (q, n) in QUEUES {
                let want = if live(3, 4, q) { Ok(n) } else { Err(Some(404)) };
                assert_eq!(queue_count(&conn, q).await, want, "{ctx}: queue {q}");
            }
            let _ = w!(conn.close(200, "OK".into()));
            server.stop().await;
        }
    }
}
