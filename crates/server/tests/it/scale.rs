//! Scale smoke test (issue 14): 10,000 queues, 100,000 topic bindings and 2,000
//! connections on one broker, checking correctness, not speed, against a reference model:
//! every queue exists, the counts agree, a set of routing keys reaches exactly the queues
//! `broker::matching::topic_matches` says, deleting leaves nothing, and a restart brings
//! back every durable queue and binding. The timed figures are `scripts/bench-scale.sh`'s.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use broker::matching::topic_matches;
use wire::{FieldTable, Method};

use crate::common::TestServer;
use crate::hostile::raw::{Raw, method_frame, publish_frames};

const QUEUES: u64 = 10_000;
/// Queues 0..DURABLE_QUEUES are durable (bound through the durable exchange), the rest transient.
const DURABLE_QUEUES: u64 = 500;
const BINDINGS: u64 = 100_000;
/// Durable bindings: the first DURABLE_BINDINGS of those whose queue is durable.
const DURABLE_BINDINGS: u64 = 2_000;
const CONNECTIONS: usize = 2_000;
/// Connections the setup work is spread over.
const SETUP_CONNS: usize = 8;
const DURABLE_X: &str = "smoke.durable";
const TRANSIENT_X: &str = "smoke.transient";

fn queue_name(q: u64) -> String {
    if q < DURABLE_QUEUES { format!("sd-{q}") } else { format!("st-{q}") }
}

/// Binding `i`'s pattern (as `warren-scale`'s: mostly exact four-word keys, some `*` and
/// `#`, and every 10,000th an audit-style `r<n>.#` reaching many keys). Unique but for
/// the audit ones.
fn pattern(i: u64) -> String {
    let r = (i / 7) % 20;
    let s = (i / 140) % 50;
    if i.is_multiple_of(10_000) {
        return format!("r{}.#", (i / 10_000) % 20);
    }
    match i % 20 {
        0..=13 => format!("r{r}.s{s}.e{i}.v{}", i % 5),
        14..=16 => format!("r{r}.s{s}.*.v{i}"),
        17..=18 => format!("r{r}.s{s}.e{i}.*"),
        _ => format!("r{r}.s{s}.e{i}.#"),
    }
}

/// The bindings: (exchange, queue, pattern), each binding `i` to queue `i % QUEUES`.
/// Durable queues get their first bindings through the durable exchange (until
/// DURABLE_BINDINGS), further ones through the transient exchange (a transient
/// exchange may bind a durable queue; the binding then does not survive a restart).
fn bindings() -> Vec<(&'static str, u64, String)> {
    let mut durable = 0;
    (0..BINDINGS)
        .map(|i| {
            let q = i % QUEUES;
            let x = if q < DURABLE_QUEUES && durable < DURABLE_BINDINGS {
                durable += 1;
                DURABLE_X
            } else {
                TRANSIENT_X
            };
            (x, q, pattern(i))
        })
        .collect()
}

/// The reference model: which queues a (exchange, key) reaches, by `topic_matches` over
/// every binding of that exchange (bucketed by first word to keep it quick).
struct Model {
    by_first_word: HashMap<(&'static str, String), Vec<(u64, String)>>,
}

impl Model {
    fn new(bindings: &[(&'static str, u64, String)], keep: impl Fn(&str, u64) -> bool) -> Model {
        let mut by_first_word: HashMap<_, Vec<_>> = HashMap::new();
        for (x, q, p) in bindings {
            if keep(x, *q) {
                let first = p.split('.').next().unwrap_or_default().to_owned();
                by_first_word.entry((*x, first)).or_default().push((*q, p.clone()));
            }
        }
        Model { by_first_word }
    }

    fn route(&self, x: &'static str, key: &str) -> BTreeSet<u64> {
        let first = key.split('.').next().unwrap_or_default().to_owned();
        let mut out = BTreeSet::new();
        for bucket in [(x, first), (x, "#".to_owned()), (x, "*".to_owned())] {
            for (q, p) in self.by_first_word.get(&bucket).into_iter().flatten() {
                if topic_matches(p, key) {
                    out.insert(*q);
                }
            }
        }
        out
    }
}

/// Routing keys for the check on exchange `x`: keys made from ~150 of its bindings'
/// patterns (matching them and the audit patterns), keys no binding matches, and near
/// misses (one word short or long).
fn keys(all: &[(&'static str, u64, String)], x: &str) -> Vec<String> {
    let on_x: Vec<&String> = all.iter().filter(|(bx, _, _)| *bx == x).map(|(_, _, p)| p).collect();
    let mut keys = Vec::new();
    for p in on_x.iter().step_by((on_x.len() / 150).max(1)) {
        let words: Vec<String> = p
            .split('.')
            .map(|w| match w {
                "*" => "x".to_owned(),
                "#" => "y.z".to_owned(),
                w => w.to_owned(),
            })
            .collect();
        keys.push(words.join("."));
        keys.push(words[..words.len() - 1].join("."));
        keys.push(format!("{}.extra", words.join(".")));
    }
    keys.extend(["r3.s1.nothing.here".to_owned(), "nobody".to_owned(), "r99".to_owned()]);
    keys
}

/// Send `reqs` on channel 1 in batches, each reply must be `ids`; returns the replies.
async fn pipeline(c: &mut Raw, reqs: &[Method], ids: (u16, u16)) -> Vec<Method> {
    let mut out = Vec::with_capacity(reqs.len());
    for batch in reqs.chunks(200) {
        let bytes: Vec<u8> = batch.iter().flat_map(|m| method_frame(1, m)).collect();
        c.send(&bytes).await;
        for _ in batch {
            out.push(c.expect(1, ids).await);
        }
    }
    out
}

/// Run `reqs` spread over the connections (request i on connection i % n), concurrently.
async fn spread(conns: &mut Vec<Raw>, reqs: Vec<Method>, ids: (u16, u16)) -> Vec<Method> {
    let n = conns.len();
    let mut parts: Vec<Vec<(usize, Method)>> = vec![Vec::new(); n];
    for (i, m) in reqs.into_iter().enumerate() {
        parts[i % n].push((i, m));
    }
    let mut tasks = Vec::new();
    for (mut c, part) in conns.drain(..).zip(parts) {
        tasks.push(tokio::spawn(async move {
            let (idx, ms): (Vec<usize>, Vec<Method>) = part.into_iter().unzip();
            let replies = pipeline(&mut c, &ms, ids).await;
            (c, idx.into_iter().zip(replies).collect::<Vec<_>>())
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let (c, replies) = t.await.expect("setup task");
        conns.push(c);
        all.extend(replies);
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, m)| m).collect()
}

async fn open_conns(addr: SocketAddr, n: usize) -> Vec<Raw> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Raw::open_channel1(addr).await);
    }
    out
}

fn declare(q: u64, passive: bool) -> Method {
    Method::QueueDeclare {
        ticket: 0,
        queue: queue_name(q),
        passive,
        durable: q < DURABLE_QUEUES,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::new(),
    }
}

fn delete(q: u64) -> Method {
    Method::QueueDelete { ticket: 0, queue: queue_name(q), if_unused: false, if_empty: false, nowait: false }
}

/// Passive-declare queues `qs`: every one must exist; returns their message counts.
async fn message_counts(conns: &mut Vec<Raw>, qs: impl Iterator<Item = u64>) -> BTreeMap<u64, u32> {
    let qs: Vec<u64> = qs.collect();
    let replies = spread(conns, qs.iter().map(|&q| declare(q, true)).collect(), (50, 11)).await;
    qs.into_iter()
        .zip(replies)
        .map(|(q, m)| {
            let Method::QueueDeclareOk { queue, message_count, .. } = m else { unreachable!() };
            assert_eq!(queue, queue_name(q));
            (q, message_count)
        })
        .collect()
}

/// Publish every key to exchange `x` (body: the key), with confirms on connection `c`.
async fn publish_keys(c: &mut Raw, x: &str, keys: &[String]) {
    c.send(&method_frame(1, &Method::ConfirmSelect { nowait: false })).await;
    c.expect(1, (85, 11)).await;
    let mut bytes = Vec::new();
    for k in keys {
        let mut frames = method_frame(
            1,
            &Method::BasicPublish {
                ticket: 0,
                exchange: x.to_owned(),
                routing_key: k.clone(),
                mandatory: false,
                immediate: false,
            },
        );
        wire::frame::encode_content(&mut frames, 1, &[0, 0], k.as_bytes(), 131_072);
        bytes.extend_from_slice(&frames);
    }
    c.send(&bytes).await;
    let mut confirmed = 0u64;
    while confirmed < keys.len() as u64 {
        match c.method().await {
            (1, Method::BasicAck { delivery_tag, multiple }) => {
                confirmed = if multiple { delivery_tag } else { confirmed + 1 };
            }
            other => panic!("expected basic.ack, got {other:?}"),
        }
    }
}

/// Publish the keys to `x`, then check each queue holds exactly the model's messages
/// (counts for all queues in `qs`, bodies for those that got any), draining them.
async fn check_routing(
    conns: &mut Vec<Raw>,
    model: &Model,
    x: &'static str,
    keys: &[String],
    qs: impl Iterator<Item = u64>,
) {
    let mut expected: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for k in keys {
        for q in model.route(x, k) {
            expected.entry(q).or_default().push(k.clone());
        }
    }
    assert!(expected.len() >= 100, "the keys should reach many queues, reach {}", expected.len());
    publish_keys(&mut conns[0], x, keys).await;
    let counts = message_counts(conns, qs).await;
    for (q, n) in &counts {
        let want = expected.get(q).map_or(0, Vec::len);
        assert_eq!(*n as usize, want, "queue {} holds {n} messages, the model says {want}", queue_name(*q));
    }
    let c = &mut conns[0];
    for (q, want) in expected {
        let mut got = Vec::new();
        while let Some(body) = c.get(1, &queue_name(q)).await {
            got.push(String::from_utf8(body).expect("utf-8 body"));
        }
        let (mut got, mut want) = (got, want);
        got.sort();
        want.sort();
        assert_eq!(got, want, "messages in {}", queue_name(q));
    }
}

async fn overview(server: &TestServer) -> serde_json::Value {
    let r = reqwest::Client::new()
        .get(format!("{}/overview", server.api()))
        .basic_auth("guest", Some("guest"))
        .timeout(std::time::Duration::from_secs(20))
        .send()
        .await
        .expect("GET /api/overview");
    assert!(r.status().is_success());
    r.json().await.expect("overview json")
}

fn binding_count(server: &TestServer, x: &str) -> Option<usize> {
    let vh = server.state.vhost("/").expect("vhost /");
    vh.exchanges().into_iter().find(|e| e.name == x).map(|e| e.binding_count())
}

async fn declare_exchange(c: &mut Raw, x: &str, durable: bool) {
    let m = Method::ExchangeDeclare {
        ticket: 0,
        exchange: x.to_owned(),
        kind: "topic".into(),
        passive: false,
        durable,
        auto_delete: false,
        internal: false,
        nowait: false,
        arguments: FieldTable::new(),
    };
    pipeline(c, &[m], (40, 11)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_queues_hundred_thousand_bindings_two_thousand_connections() {
    server::fds::raise_nofile_limit();
    let t0 = std::time::Instant::now();
    let step = |what: &str| eprintln!("[{:6.2} s] {what}", t0.elapsed().as_secs_f64());
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_persistent(dir.path()).await.with_management().await;
    let mut conns = open_conns(server.addr, SETUP_CONNS).await;

    // Topology: 10,000 queues (500 durable), 100,000 bindings (2,000 durable).
    declare_exchange(&mut conns[0], DURABLE_X, true).await;
    declare_exchange(&mut conns[0], TRANSIENT_X, false).await;
    spread(&mut conns, (0..QUEUES).map(|q| declare(q, false)).collect(), (50, 11)).await;
    let all = bindings();
    let binds = all
        .iter()
        .map(|(x, q, p)| Method::QueueBind {
            ticket: 0,
            queue: queue_name(*q),
            exchange: (*x).to_owned(),
            routing_key: p.clone(),
            nowait: false,
            arguments: FieldTable::new(),
        })
        .collect();
    spread(&mut conns, binds, (50, 21)).await;

    step("topology declared and bound");
    // Counts: the overview, the exchanges, every queue by passive declare.
    let ov = overview(&server).await;
    assert_eq!(ov["object_totals"]["queues"], QUEUES);
    assert_eq!(binding_count(&server, DURABLE_X), Some(DURABLE_BINDINGS as usize));
    assert_eq!(binding_count(&server, TRANSIENT_X), Some((BINDINGS - DURABLE_BINDINGS) as usize));
    let counts = message_counts(&mut conns, 0..QUEUES).await;
    assert_eq!(counts.len() as u64, QUEUES);
    assert!(counts.values().all(|&n| n == 0));

    step("counts checked");
    // Routing against the model, through both exchanges.
    let model = Model::new(&all, |_, _| true);
    let (durable_keys, transient_keys) = (keys(&all, DURABLE_X), keys(&all, TRANSIENT_X));
    check_routing(&mut conns, &model, TRANSIENT_X, &transient_keys, 0..QUEUES).await;
    check_routing(&mut conns, &model, DURABLE_X, &durable_keys, 0..QUEUES).await;

    step("routing checked");
    // 2,000 more connections, all at once; each uses its channel (a passive declare of
    // "its" queue and a publish to one shared queue), then they all close.
    let shared = "smoke.conns";
    pipeline(&mut conns[0], &[crate::hostile::raw::queue_declare(shared, false, false)], (50, 11)).await;
    // At most 100 handshakes in flight: a burst of 2,000 SYNs overflows the listen
    // backlog (1,024), and the kernel then drops some connections it already completed.
    let handshakes = std::sync::Arc::new(tokio::sync::Semaphore::new(100));
    let mut tasks = Vec::new();
    for i in 0..CONNECTIONS {
        let addr = server.addr;
        let handshakes = handshakes.clone();
        tasks.push(tokio::spawn(async move {
            let permit = handshakes.acquire_owned().await.expect("semaphore");
            let mut c = Raw::open_channel1(addr).await;
            drop(permit);
            pipeline(&mut c, &[declare(i as u64 % QUEUES, true)], (50, 11)).await;
            c.send(&publish_frames(1, shared, &[0, 0], format!("conn {i}").as_bytes(), 131_072)).await;
            c
        }));
    }
    let mut many = Vec::new();
    for t in tasks {
        many.push(t.await.expect("connection task"));
    }
    step("2,000 connections open");
    let ov = overview(&server).await;
    assert_eq!(ov["object_totals"]["connections"], CONNECTIONS + SETUP_CONNS);
    step("overview counted them");
    // Half close cleanly (connection.close), half just drop the socket. Concurrently:
    // `Raw::close` waits for the server to close the socket, which it leaves to the client
    // for 2 s after close-ok (CLOSE_LINGER, as RabbitMQ), so 2,000 in a row take 4,000 s.
    let mut closes = Vec::new();
    for (i, c) in many.into_iter().enumerate() {
        if i % 2 == 0 {
            closes.push(tokio::spawn(c.close()));
        }
    }
    for t in closes {
        t.await.expect("connection.close");
    }
    step("closed");
    let got = pipeline(&mut conns[0], &[crate::hostile::raw::queue_declare(shared, true, false)], (50, 11)).await;
    let Method::QueueDeclareOk { message_count, .. } = got[0] else { unreachable!() };
    assert_eq!(message_count as usize, CONNECTIONS);
    pipeline(
        &mut conns[0],
        &[Method::QueueDelete { ticket: 0, queue: shared.into(), if_unused: false, if_empty: false, nowait: false }],
        (50, 41),
    )
    .await;
    // The dropped sockets are noticed as the server reads EOF: poll until they are gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let n = overview(&server).await["object_totals"]["connections"].as_u64();
        if n == Some(SETUP_CONNS as u64) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{n:?} connections left, expected {SETUP_CONNS}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    step("connections checked");
    // Delete the transient queues: their bindings go with them.
    spread(&mut conns, (DURABLE_QUEUES..QUEUES).map(delete).collect(), (50, 41)).await;
    let ov = overview(&server).await;
    assert_eq!(ov["object_totals"]["queues"], DURABLE_QUEUES);
    let transient_left = all.iter().filter(|(x, q, _)| *x == TRANSIENT_X && *q < DURABLE_QUEUES).count();
    assert_eq!(binding_count(&server, TRANSIENT_X), Some(transient_left));

    step("transient queues deleted");
    // Restart: the durable queues and bindings come back, nothing transient does.
    drop(conns); // (not Raw::close: 2 s of linger each, see above)
    server.stop().await;
    let server = TestServer::start_persistent(dir.path()).await.with_management().await;
    let mut conns = open_conns(server.addr, SETUP_CONNS).await;
    let ov = overview(&server).await;
    assert_eq!(ov["object_totals"]["queues"], DURABLE_QUEUES);
    assert_eq!(binding_count(&server, DURABLE_X), Some(DURABLE_BINDINGS as usize));
    assert_eq!(binding_count(&server, TRANSIENT_X), None, "the transient exchange is gone");
    let counts = message_counts(&mut conns, 0..DURABLE_QUEUES).await;
    assert!(counts.values().all(|&n| n == 0), "transient messages do not survive");
    let durable_model = Model::new(&all, |x, _| x == DURABLE_X);
    check_routing(&mut conns, &durable_model, DURABLE_X, &durable_keys, 0..DURABLE_QUEUES).await;

    step("restarted, durable part checked");
    // Delete everything: zero left, and still zero after another restart.
    spread(&mut conns, (0..DURABLE_QUEUES).map(delete).collect(), (50, 41)).await;
    let x = Method::ExchangeDelete { ticket: 0, exchange: DURABLE_X.into(), if_unused: false, nowait: false };
    pipeline(&mut conns[0], &[x], (40, 21)).await;
    assert_eq!(overview(&server).await["object_totals"]["queues"], 0);
    drop(conns);
    server.stop().await;
    let server = TestServer::start_persistent(dir.path()).await.with_management().await;
    assert_eq!(overview(&server).await["object_totals"]["queues"], 0);
    assert_eq!(binding_count(&server, DURABLE_X), None);
    server.stop().await;
    step("deleted; nothing after a restart");
}

#[test]
fn model_matches_by_scan() {
    // The bucketed model gives what a scan of every binding with topic_matches gives.
    let all: Vec<_> = bindings().into_iter().take(5_000).collect();
    let model = Model::new(&all, |_, _| true);
    let mut nonempty = 0;
    for x in [DURABLE_X, TRANSIENT_X] {
        for k in keys(&all, x) {
            let scan: BTreeSet<u64> =
                all.iter().filter(|(bx, _, p)| *bx == x && topic_matches(p, &k)).map(|(_, q, _)| *q).collect();
            assert_eq!(model.route(x, &k), scan, "{x} {k}");
            nonempty += usize::from(!scan.is_empty());
        }
    }
    assert!(nonempty > 200, "most keys match something: {nonempty}");
}
