//! `kill -9` under load. The real `warren` binary runs as a child process; publishers with
//! confirms record every message id whose confirm arrived; the broker is killed at a
//! random moment and restarted on the same data directory; then everything is consumed:
//!
//! - every confirmed id is there (and not acked by a consumer: then it may be gone);
//! - no id appears that was never published;
//! - only ids whose confirm never arrived may appear twice.
//!
//! Every other round, the restarted broker is killed again right away, before the drain.
//!
//! The seed of the random kill moments is printed; WARREN_CRASH_SEED=<n> replays it.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use parking_lot::Mutex;

use super::*;

const QUEUE: &str = "crash";
/// Publishes in flight per publisher (confirms awaited in batches of this size).
const BATCH: usize = 32;
/// How long a publisher or consumer waits on a dead broker before giving up.
const DEAD: Duration = Duration::from_secs(3);

/// A `warren` child process. Killed (SIGKILL) and reaped on drop, so a failing test never
/// leaves a broker behind.
struct Broker {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Broker {
    /// Start `warren` on `data_dir` and wait until it accepts connections.
    fn start(data_dir: &Path, log: &Path) -> Broker {
        for _ in 0..5 {
            let port = free_port();
            let stderr = File::options().create(true).append(true).open(log).expect("broker log file");
            let child = Command::new(env!("CARGO_BIN_EXE_warren"))
                .args([
                    "--amqp-port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--management-port",
                    "0",
                    "--prometheus-port",
                    "0",
                ])
                .args(["--heartbeat", "0", "--data-dir"])
                .arg(data_dir)
                .env("WARREN_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("spawning warren");
            let mut b = Broker { child: Some(child), port, log: log.to_owned() };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return b;
                }
                if let Some(status) = b.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    // Most likely the port was taken meanwhile: try another.
                    eprintln!("warren exited at start ({status}); retrying on another port");
                    b.child = None;
                    break;
                }
                assert!(Instant::now() < deadline, "warren did not start listening:\n{}", b.log_tail());
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("warren failed to start five times:\n{}", tail(log));
    }

    fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f?heartbeat=0", self.port)
    }

    /// SIGKILL, and wait until the process is gone.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn tail(log: &Path) -> String {
    let Ok(f) = File::open(log) else { return String::new() };
    let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// xorshift64*: the kill moments, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn from_env_or_clock() -> Rng {
        let seed = std::env::var("WARREN_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
        });
        eprintln!("crash test seed: WARREN_CRASH_SEED={seed}");
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// What the clients know, across rounds.
#[derive(Default)]
struct Ledger {
    /// Ids handed to basic.publish (maybe never sent).
    published: HashSet<String>,
    /// Ids whose publisher confirm (basic.ack) arrived.
    confirmed: HashSet<String>,
    /// Ids a consumer acknowledged (or was about to: recorded before the ack is sent).
    acked: HashSet<String>,
}

type Shared = Arc<Mutex<Ledger>>;

/// Publish persistent messages `<prefix>-<n>` with confirms until the broker dies (or
/// `limit` are confirmed).
async fn publisher(uri: String, prefix: String, ledger: Shared, limit: usize) {
    let Ok(Ok(conn)) = tokio::time::timeout(DEAD, Connection::connect(&uri, ConnectionProperties::default())).await
    else {
        return;
    };
    let Ok(Ok(ch)) = tokio::time::timeout(DEAD, conn.create_channel()).await else { return };
    if !matches!(tokio::time::timeout(DEAD, ch.confirm_select(ConfirmSelectOptions::default())).await, Ok(Ok(()))) {
        return;
    }
    let mut n = 0usize;
    while n < limit {
        let batch = BATCH.min(limit - n);
        let mut pending = Vec::with_capacity(batch);
        for _ in 0..batch {
            let id = format!("{prefix}-{n}");
            n += 1;
            ledger.lock().published.insert(id.clone());
            let props = persistent(&id);
            let publish =
                ch.basic_publish("".into(), QUEUE.into(), BasicPublishOptions::default(), id.as_bytes(), props);
            match tokio::time::timeout(DEAD, publish).await {
                Ok(Ok(confirm)) => pending.push((id, confirm)),
                _ => break,
            }
        }
        let stop = pending.len() < batch;
        for (id, confirm) in pending {
            match tokio::time::timeout(DEAD, confirm).await {
                Ok(Ok(Confirmation::Ack(_))) => {
                    ledger.lock().confirmed.insert(id);
                }
                Ok(Ok(other)) => panic!("publish {id}: unexpected confirmation {other:?}"),
                _ => return,
            }
        }
        if stop {
            return;
        }
    }
}

/// Consume `QUEUE` with manual acks until the broker dies, recording each id before acking.
async fn acking_consumer(uri: String, ledger: Shared) {
    let Ok(Ok(conn)) = tokio::time::timeout(DEAD, Connection::connect(&uri, ConnectionProperties::default())).await
    else {
        return;
    };
    let Ok(Ok(ch)) = tokio::time::timeout(DEAD, conn.create_channel()).await else { return };
    if !matches!(tokio::time::timeout(DEAD, ch.basic_qos(16, BasicQosOptions::default())).await, Ok(Ok(()))) {
        return;
    }
    let consume = ch.basic_consume(QUEUE.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default());
    let Ok(Ok(mut consumer)) = tokio::time::timeout(DEAD, consume).await else { return };
    while let Ok(Some(Ok(d))) = tokio::time::timeout(DEAD, consumer.next()).await {
        let id = String::from_utf8_lossy(&d.data).into_owned();
        ledger.lock().acked.insert(id);
        if !matches!(tokio::time::timeout(DEAD, d.acker.ack(BasicAckOptions::default())).await, Ok(Ok(_))) {
            return;
        }
    }
}

/// Consume every message of `QUEUE` (no-ack) from a freshly restarted broker: id → times
/// seen.
async fn drain(broker: &Broker) -> HashMap<String, u32> {
    let conn = connect_uri(&broker.uri()).await;
    let expected = queue_count(&conn, QUEUE).await.unwrap_or_else(|e| panic!("{QUEUE} after the restart: {e:?}"));
    let ch = channel(&conn).await;
    w!(ch.basic_qos(1000, BasicQosOptions::default())).expect("basic.qos");
    let opts = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
    let mut consumer =
        w!(ch.basic_consume(QUEUE.into(), "drain".into(), opts, FieldTable::default())).expect("consume");
    let mut seen: HashMap<String, u32> = HashMap::new();
    for k in 0..expected {
        let d = match tokio::time::timeout(WAIT, consumer.next()).await {
            Ok(Some(Ok(d))) => d,
            other => panic!(
                "after the restart {QUEUE} reported {expected} messages but delivery {k} did not come: {other:?}\n{}",
                broker.log_tail()
            ),
        };
        *seen.entry(String::from_utf8_lossy(&d.data).into_owned()).or_default() += 1;
    }
    // Nothing beyond the count the queue reported.
    if let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(200), consumer.next()).await {
        panic!("a delivery beyond the {expected} messages {QUEUE} reported: {}", String::from_utf8_lossy(&d.data));
    }
    let _ = w!(conn.close(200, "OK".into()));
    seen
}

/// Poll `cond` until it holds (for at most [`WAIT`]): the load is under way.
async fn wait_for(broker: &Broker, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}\n{}", broker.log_tail());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The drain after round `round` is consistent with what the clients saw.
fn check(round: &str, seen: &HashMap<String, u32>, ledger: &Ledger, log: &str) {
    let phantom: Vec<&String> = seen.keys().filter(|id| !ledger.published.contains(*id)).collect();
    assert!(phantom.is_empty(), "{round}: ids that were never published: {phantom:?}\n{log}");
    let mut lost: Vec<&String> = ledger
        .confirmed
        .iter()
        .filter(|id| id.starts_with(round) && !ledger.acked.contains(*id) && !seen.contains_key(*id))
        .collect();
    lost.sort();
    assert!(
        lost.is_empty(),
        "{round}: {} confirmed, unacked messages lost, e.g. {:?}\n{log}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let dup_confirmed: Vec<(&String, &u32)> =
        seen.iter().filter(|(id, n)| **n > 1 && ledger.confirmed.contains(*id)).collect();
    assert!(dup_confirmed.is_empty(), "{round}: confirmed messages delivered more than once: {dup_confirmed:?}\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_confirmed_message() {
    const ROUNDS: usize = 5;
    const PUBLISHERS: usize = 4;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let log = tmp.path().join("warren.log");
    let mut rng = Rng::from_env_or_clock();
    let ledger: Shared = Arc::default();
    let started = Instant::now();

    let mut broker = Broker::start(&data, &log);
    {
        let conn = connect_uri(&broker.uri()).await;
        let ch = channel(&conn).await;
        declare_queue(&ch, QUEUE, QueueDeclareOptions::durable(), FieldTable::default()).await;
        let _ = w!(conn.close(200, "OK".into()));
    }
    for round in 0..ROUNDS {
        let prefix = format!("r{round}");
        let tasks: Vec<_> = (0..PUBLISHERS)
            .map(|p| tokio::spawn(publisher(broker.uri(), format!("{prefix}-p{p}"), ledger.clone(), usize::MAX)))
            .collect();
        let round_prefix = format!("{prefix}-");
        wait_for(&broker, "a first confirm", || ledger.lock().confirmed.iter().any(|id| id.starts_with(&round_prefix)))
            .await;
        let at = Duration::from_millis(200 + rng.below(300));
        tokio::time::sleep(at).await;
        broker.kill9();
        for t in tasks {
            t.await.expect("publisher task");
        }
        broker = Broker::start(&data, &log);
        if round % 2 == 1 {
            // Killed again right after it came up (recovery just done or still running:
            // the torn tail was cut, drained segments removed): recovery must be
            // repeatable.
            tokio::time::sleep(Duration::from_millis(rng.below(100))).await;
            broker.kill9();
            broker = Broker::start(&data, &log);
        }
        let seen = drain(&broker).await;
        let l = ledger.lock();
        let confirmed = l.confirmed.iter().filter(|id| id.starts_with(&format!("{prefix}-"))).count();
        let published = l.published.iter().filter(|id| id.starts_with(&format!("{prefix}-"))).count();
        eprintln!(
            "round {round}: killed {at:?} after a confirm: {published} published, {confirmed} confirmed, {} back",
            seen.keys().filter(|id| id.starts_with(&format!("{prefix}-"))).count()
        );
        assert!(confirmed > 0, "round {round}: nothing was confirmed before the kill\n{}", broker.log_tail());
        check(&format!("{prefix}-"), &seen, &l, &broker.log_tail());
    }
    eprintln!("{ROUNDS} rounds in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_consumers_ack() {
    const PREFILL: usize = 3000;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let log = tmp.path().join("warren.log");
    let mut rng = Rng::from_env_or_clock();
    let ledger: Shared = Arc::default();

    let mut broker = Broker::start(&data, &log);
    {
        let conn = connect_uri(&broker.uri()).await;
        let ch = channel(&conn).await;
        declare_queue(&ch, QUEUE, QueueDeclareOptions::durable(), FieldTable::default()).await;
        let _ = w!(conn.close(200, "OK".into()));
    }
    // A backlog, all confirmed.
    publisher(broker.uri(), "a-pre".into(), ledger.clone(), PREFILL).await;
    assert_eq!(ledger.lock().confirmed.len(), PREFILL, "the backlog is confirmed\n{}", broker.log_tail());

    // Two consumers acking while two publishers keep publishing; then the kill.
    let mut tasks = Vec::new();
    for _ in 0..2 {
        tasks.push(tokio::spawn(acking_consumer(broker.uri(), ledger.clone())));
    }
    for p in 0..2 {
        tasks.push(tokio::spawn(publisher(broker.uri(), format!("a-p{p}"), ledger.clone(), usize::MAX)));
    }
    wait_for(&broker, "a first consumer ack", || !ledger.lock().acked.is_empty()).await;
    let at = Duration::from_millis(200 + rng.below(300));
    tokio::time::sleep(at).await;
    broker.kill9();
    for t in tasks {
        t.await.expect("client task");
    }
    broker = Broker::start(&data, &log);
    let seen = drain(&broker).await;
    let l = ledger.lock();
    eprintln!(
        "killed {at:?} after the first ack: {} published, {} confirmed, {} acked by consumers, {} recovered",
        l.published.len(),
        l.confirmed.len(),
        l.acked.len(),
        seen.len()
    );
    assert!(!l.acked.is_empty(), "the consumers acked nothing before the kill\n{}", broker.log_tail());
    check("a-", &seen, &l, &broker.log_tail());
}

/// declare-ok and bind-ok mean on disk (the definitions log's group commit), also when ten
/// channels declare at once; `nowait` declares do not wait, but a confirmed message in the
/// last of them implies the queue's definition is on disk too. SIGKILL right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_topology_survives_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, log) = (dir.path().join("data"), dir.path().join("broker.log"));
    let mut broker = Broker::start(&data, &log);
    let conn = connect_uri(&broker.uri()).await;
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    let ch = channel(&conn).await;
    declare_exchange(&ch, "topo.x", ExchangeKind::Direct, durable_exchange()).await;
    let mut tasks = Vec::new();
    for c in 0..10 {
        let ch = channel(&conn).await;
        tasks.push(tokio::spawn(async move {
            for i in 0..30 {
                let q = format!("topo.{c}.{i}");
                declare_queue(&ch, &q, durable, FieldTable::default()).await;
                w!(ch.queue_bind(
                    q.as_str().into(),
                    "topo.x".into(),
                    q.as_str().into(),
                    Default::default(),
                    FieldTable::default()
                ))
                .expect("queue.bind");
            }
        }));
    }
    for t in tasks {
        t.await.expect("declaring channel");
    }
    broker.kill9();

    let mut broker = Broker::start(&data, &log);
    let conn = connect_uri(&broker.uri()).await;
    let confirms = confirm_channel(&conn).await;
    for c in 0..10 {
        for i in 0..30 {
            let q = format!("topo.{c}.{i}");
            // The binding came back too: a message routed by it arrives.
            publish_confirmed(&confirms, "topo.x", &q, "routed", persistent("r")).await;
            assert_eq!(queue_count(&conn, &q).await, Ok(1), "{q} or its binding was lost\n{}", broker.log_tail());
        }
    }
    let ch = channel(&conn).await;
    let nowait = QueueDeclareOptions { durable: true, nowait: true, ..QueueDeclareOptions::default() };
    for i in 0..100 {
        declare_queue(&ch, &format!("topo.nowait.{i}"), nowait, FieldTable::default()).await;
    }
    publish_confirmed(&confirms, "", "topo.nowait.99", "last", persistent("last")).await;
    broker.kill9();

    let broker = Broker::start(&data, &log);
    let conn = connect_uri(&broker.uri()).await;
    assert_eq!(queue_count(&conn, "topo.nowait.99").await, Ok(1), "{}", broker.log_tail());
    assert_eq!(queue_count(&conn, "topo.nowait.0").await, Ok(0), "{}", broker.log_tail());
}
