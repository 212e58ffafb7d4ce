//! Fail closed (docs/reliability.md): when the store cannot keep a promise the client
//! hears so — a nack or an error — and recovery never deletes data it cannot account for.
//! lapin over TCP against an in-process server on a data directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation};
use server::persist::queue_dir_name;

use crate::common::{TestServer, WarrenProcess};
use crate::durability::*;

/// Await `$e` for at most [`WAIT`], panicking with the expression's text on timeout.
macro_rules! w {
    ($e:expr) => {
        $crate::durability::within(stringify!($e), $e).await
    };
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() }
}

async fn publish(ch: &lapin::Channel, queue: &str, body: &str, props: BasicProperties) -> Confirmation {
    let c = w!(ch.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body.as_bytes(), props))
        .expect("basic.publish");
    w!(c).expect("publisher confirm")
}

fn is_nack(c: &Confirmation) -> bool {
    matches!(c, Confirmation::Nack(_))
}

/// After an fsync failure no persistent message in a durable queue is confirmed: the
/// publishes waiting on the failed round and every later one get a nack (before the fix
/// the confirms stopped without a word and the unconfirmed map grew), while queues that
/// need no disk keep working; tx.commit of a persistent message fails with 541.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_failure_turns_confirms_into_nacks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_persistent(tmp.path()).await;
    let conn = connect_uri(&server.uri()).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "fsync.durable", durable(), FieldTable::default()).await;
    declare_queue(&ch, "fsync.transient", QueueDeclareOptions::default(), FieldTable::default()).await;
    assert_eq!(publish(&ch, "fsync.durable", "before", persistent("0")).await, Confirmation::Ack(None));

    server.state.persistence.as_ref().expect("a persistent server").syncer().inject_fsync_failure();
    for i in 0..5 {
        let c = publish(&ch, "fsync.durable", &format!("after {i}"), persistent("1")).await;
        assert!(is_nack(&c), "publish {i} after the failure: {c:?}");
    }
    // A transient message, and any message in a non-durable queue, needs no disk.
    assert_eq!(publish(&ch, "fsync.durable", "transient", transient("2")).await, Confirmation::Ack(None));
    assert_eq!(publish(&ch, "fsync.transient", "p", persistent("3")).await, Confirmation::Ack(None));

    // tx.commit of a persistent message can never complete: 541 closes the connection.
    let tx = channel(&conn).await;
    w!(tx.tx_select()).expect("tx.select");
    w!(tx.basic_publish("".into(), "fsync.durable".into(), BasicPublishOptions::default(), b"in tx", persistent("4")))
        .expect("publish");
    let e = w!(tx.tx_commit()).expect_err("tx.commit must fail");
    assert_eq!(reply_code(&e), Some(541), "{e}");
    server.stop().await;
}

/// Durable declares and binds wait for the definitions log without blocking a thread:
/// many connections at once, each with several channels in flight, all get their -ok
/// (lapin checks each reply against its request). Once the log's fsync fails, a durable
/// declare is refused with 541 (connection closed), while transient declares still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_declares_await_the_definitions_log_and_fail_with_541() {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_persistent(tmp.path()).await;
    let setup = channel(&connect_uri(&server.uri()).await).await;
    let topic = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    w!(setup.exchange_declare("defs.topic".into(), lapin::ExchangeKind::Topic, topic, FieldTable::default()))
        .expect("exchange.declare");
    let mut tasks = Vec::new();
    for c in 0..4 {
        let uri = server.uri();
        tasks.push(tokio::spawn(async move {
            let conn = connect_uri(&uri).await;
            let mut chans = Vec::new();
            for k in 0..3 {
                let ch = channel(&conn).await;
                chans.push(tokio::spawn(async move {
                    for i in 0..20 {
                        let q = format!("defs.{c}.{k}.{i}");
                        declare_queue(&ch, &q, durable(), FieldTable::default()).await;
                        let key = format!("k.{c}.{k}.{i}");
                        w!(ch.queue_bind(
                            q.as_str().into(),
                            "defs.topic".into(),
                            key.as_str().into(),
                            QueueBindOptions::default(),
                            FieldTable::default()
                        ))
                        .expect("queue.bind");
                    }
                }));
            }
            for t in chans {
                t.await.expect("channel task");
            }
            conn
        }));
    }
    let mut conns = Vec::new();
    for t in tasks {
        conns.push(t.await.expect("connection task"));
    }
    let vh = server.state.vhost("/").expect("default vhost");
    assert_eq!(
        (0..4)
            .flat_map(|c| (0..3).flat_map(move |k| (0..20).map(move |i| format!("defs.{c}.{k}.{i}"))))
            .filter(|q| vh.queue(q, 0).is_ok())
            .count(),
        240
    );

    server.state.persistence.as_ref().expect("a persistent server").inject_definitions_fsync_failure();
    let conn = connect_uri(&server.uri()).await;
    let ch = channel(&conn).await;
    let e = w!(ch.queue_declare("defs.after".into(), durable(), FieldTable::default())).expect_err("must be refused");
    assert_eq!(reply_code(&e), Some(541), "{e}");
    let ch = channel(&conns[0]).await;
    declare_queue(&ch, "defs.transient", QueueDeclareOptions::default(), FieldTable::default()).await;
    server.stop().await;
}

/// Every file under `dir` (relative path → contents).
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(p.strip_prefix(root).expect("under root").to_owned(), std::fs::read(&p).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// A durable queue whose files cannot be opened (here: a stray directory named like a
/// segment) is unavailable, and declaring it fails with 541 — before the fix it silently
/// ran from RAM, so everything confirmed into it vanished at the next restart. Its files
/// stay untouched, and once the stray directory is gone it recovers every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_queue_with_unreadable_files_is_refused_not_kept_in_ram() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let qdir = tmp.path().join("queues").join(queue_dir_name("/", "unreadable"));
    {
        let server = TestServer::start_persistent(tmp.path()).await;
        let (conn, _) = open(&server).await;
        let ch = confirm_channel(&conn).await;
        declare_queue(&ch, "unreadable", durable(), FieldTable::default()).await;
        for i in 0..3 {
            publish_confirmed(&ch, "", "unreadable", &format!("m{i}"), persistent(&i.to_string())).await;
        }
        let _ = w!(conn.close(200, "OK".into()));
        server.stop().await;
    }
    let stray = qdir.join("0000000099.seg");
    std::fs::create_dir(&stray).expect("stray directory");
    let before = tree(&qdir);
    {
        let server = TestServer::start_persistent(tmp.path()).await;
        let conn = connect_uri(&server.uri()).await;
        assert_eq!(queue_count(&conn, "unreadable").await, Err(Some(404)), "not recovered into RAM");
        let ch = channel(&conn).await;
        let e = w!(ch.queue_declare("unreadable".into(), durable(), FieldTable::default()))
            .expect_err("declaring a queue whose files cannot be opened");
        assert_eq!(reply_code(&e), Some(541), "{e}");
        assert!(e.to_string().contains("cannot open the store of queue 'unreadable'"), "{e}");
        server.stop().await;
    }
    assert_eq!(tree(&qdir), before, "the queue's files are untouched");
    std::fs::remove_dir(&stray).expect("remove the stray directory");
    let server = TestServer::start_persistent(tmp.path()).await;
    let (_conn, ch) = open(&server).await;
    let got: Vec<String> = get_all(&ch, "unreadable").await.into_iter().map(|(b, _)| b).collect();
    assert_eq!(got, ["m0", "m1", "m2"]);
    server.stop().await;
}

/// The end offsets of the records of a definitions log.
fn record_ends(log: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0;
    while let store::record::Decoded::Record(_, n) = store::record::decode(&log[at..]) {
        at += n;
        out.push(at);
    }
    assert_eq!(at, log.len(), "the log is whole");
    out
}

/// A damaged definitions log deletes no queue data: one flipped byte in any record, or a
/// cut at any record boundary, and every queue file is still there afterwards — served
/// if its definition was readable, else moved to `quarantine/` byte for byte. Before the
/// fix every record after the damage was dropped and recovery deleted the directories of
/// every queue they named, with their confirmed messages. A directory an operator put
/// under `queues/` is never touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_definitions_log_deletes_no_queue_data() {
    let queues = ["dmg.a", "dmg.b", "dmg.c"];
    let golden = tempfile::tempdir().expect("tempdir");
    {
        let server = TestServer::start_persistent(golden.path()).await;
        let (conn, _) = open(&server).await;
        let ch = confirm_channel(&conn).await;
        for q in queues {
            declare_queue(&ch, q, durable(), FieldTable::default()).await;
            for i in 0..2 {
                publish_confirmed(&ch, "", q, &format!("{q}/{i}"), persistent("x")).await;
            }
        }
        declare_exchange(&ch, "dmg.x", lapin::ExchangeKind::Direct, durable_exchange()).await;
        w!(ch.queue_bind("dmg.b".into(), "dmg.x".into(), "k".into(), Default::default(), FieldTable::default()))
            .expect("bind");
        let _ = w!(conn.close(200, "OK".into()));
        server.stop().await;
    }
    std::fs::create_dir_all(golden.path().join("queues").join("operator-notes")).expect("mkdir");
    std::fs::write(golden.path().join("queues").join("operator-notes").join("README"), b"mine").expect("write");
    let log = std::fs::read(golden.path().join("definitions.log")).expect("definitions.log");
    let ends = record_ends(&log);
    let queue_files: BTreeMap<PathBuf, Vec<u8>> = tree(&golden.path().join("queues"));
    assert!(queue_files.keys().filter(|p| p.extension().is_some_and(|e| e == "seg")).count() >= 3);

    // The log starts with the access records of a fresh node (the default vhost, user
    // and permission); damage there may cost guest its login, never queue data.
    const ACCESS_RECORDS: usize = 3;
    let mut damages: Vec<(String, usize, Vec<u8>)> = Vec::new();
    let mut start = 0;
    for (i, &end) in ends.iter().enumerate() {
        let mut flipped = log.clone();
        flipped[(start + end) / 2] ^= 0x10;
        damages.push((format!("byte {} flipped", (start + end) / 2), i, flipped));
        damages.push((format!("cut at {start}"), i, log[..start].to_vec()));
        start = end;
    }
    for (what, record, damaged) in damages {
        let tmp = tempfile::tempdir().expect("tempdir");
        copy_dir(golden.path(), tmp.path());
        std::fs::write(tmp.path().join("definitions.log"), &damaged).expect("damage the log");
        let server = TestServer::start_persistent(tmp.path()).await;
        let conn = match w!(lapin::Connection::connect(&server.uri(), lapin::ConnectionProperties::default())) {
            Ok(c) => Some(c),
            Err(e) => {
                assert!(record < ACCESS_RECORDS, "{what}: guest refused although no access record was damaged: {e}");
                assert!(matches!(reply_code(&e), Some(403 | 530)), "{what}: {e}");
                None
            }
        };
        // Every queue file is somewhere: in place, or quarantined as it was.
        let mut found = tree(&tmp.path().join("queues"));
        for (p, bytes) in tree(&tmp.path().join("quarantine").join("queues")) {
            found.insert(p, bytes);
        }
        for (p, bytes) in &queue_files {
            assert_eq!(found.get(p), Some(bytes), "{what}: {} lost or changed", p.display());
        }
        // Queues still defined serve their messages.
        if let Some(conn) = conn {
            for q in queues {
                if let Ok(n) = queue_count(&conn, q).await {
                    assert_eq!(n, 2, "{what}: {q}");
                }
            }
            let _ = w!(conn.close(200, "OK".into()));
        }
        server.stop().await;
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            std::fs::create_dir_all(&dest).expect("mkdir");
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).expect("copy");
        }
    }
}

/// Descriptor exhaustion never produces a confirm for bytes that are not on disk. The
/// issue's case: under `prlimit --nofile=128`, 130 idle connections (none logs in), then
/// persistent publishes into a durable queue — before the fix the segment file could not
/// be opened, the append fell back to "confirm now", and the acked messages were gone
/// after a restart. Now connections past the descriptor budget are refused, the store
/// keeps its reserve, and every acked message survives kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_exhaust_descriptors_the_store_needs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let mut acked = 0;
    {
        let broker = WarrenProcess::start(&data, Some(128), &[]);
        let conn = connect_uri(&broker.uri()).await;
        let ch = confirm_channel(&conn).await;
        let idle: Vec<std::net::TcpStream> =
            (0..130).filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", broker.port)).ok()).collect();
        // The broker closes the connections it refuses: reading them gives EOF at once.
        let refused = idle
            .iter()
            .filter(|s| {
                use std::io::Read;
                s.set_read_timeout(Some(std::time::Duration::from_millis(50))).expect("timeout");
                // An accepted connection waits for our protocol header: the read times out.
                match (&**s).read(&mut [0u8; 8]) {
                    Ok(n) => n == 0,
                    Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                }
            })
            .count();
        assert!(refused > 0, "no connection was refused\n{}", broker.log());
        declare_queue(&ch, "fd.q", durable(), FieldTable::default()).await;
        for i in 0..20 {
            match publish(&ch, "fd.q", &format!("m{i}"), persistent("x")).await {
                Confirmation::Ack(_) => acked += 1,
                Confirmation::Nack(_) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(acked, 20, "the store kept its descriptors\n{}", broker.log());
        drop(idle);
        drop(broker); // kill -9
    }
    let broker = WarrenProcess::start(&data, None, &[]);
    let conn = connect_uri(&broker.uri()).await;
    assert_eq!(queue_count(&conn, "fd.q").await, Ok(acked), "{}", broker.log());
}

/// Queue files do not multiply descriptors: under `prlimit --nofile=160`, 220 durable
/// queues and a durable x-max-priority=255 queue with a message at every level (each a
/// file of its own) all take their persistent messages — the store keeps a bounded set of
/// files open and reopens the others on demand — and after kill -9 every one is there.
/// (Each queue used to keep its files open: the descriptors ran out after ~140 queues,
/// and a priority queue held one per level.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_queues_and_priority_levels_share_a_bounded_set_of_descriptors() {
    const QUEUES: usize = 220;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let mut prio_args = FieldTable::default();
    prio_args.insert("x-max-priority".into(), lapin::types::AMQPValue::ShortShortUInt(255));
    {
        let broker = WarrenProcess::start(&data, Some(160), &[]);
        let conn = connect_uri(&broker.uri()).await;
        let ch = confirm_channel(&conn).await;
        for i in 0..QUEUES {
            let q = format!("fd.{i}");
            if let Err(e) = w!(ch.queue_declare(q.as_str().into(), durable(), FieldTable::default())) {
                panic!("declaring {q}: {e}\n{}", broker.log());
            }
            let c = publish(&ch, &q, &q, persistent("x")).await;
            assert_eq!(c, Confirmation::Ack(None), "{q}\n{}", broker.log());
        }
        declare_queue(&ch, "fd.prio", durable(), prio_args.clone()).await;
        for p in 0..=255u8 {
            let c = publish(&ch, "fd.prio", &p.to_string(), persistent("p").with_priority(p)).await;
            assert_eq!(c, Confirmation::Ack(None), "priority {p}\n{}", broker.log());
        }
        drop(broker); // kill -9
    }
    let broker = WarrenProcess::start(&data, Some(160), &[]);
    let conn = connect_uri(&broker.uri()).await;
    for i in 0..QUEUES {
        assert_eq!(queue_count(&conn, &format!("fd.{i}")).await, Ok(1), "fd.{i}\n{}", broker.log());
    }
    let ch = channel(&conn).await;
    let got: Vec<String> = get_all(&ch, "fd.prio").await.into_iter().map(|(b, _)| b).collect();
    let want: Vec<String> = (0..=255u8).rev().map(|p| p.to_string()).collect();
    assert_eq!(got, want, "highest priority first, every level");
}

/// The memory alarm clears once memory drops, always: messages held unacknowledged by a
/// consumer push the broker over its watermark and publishers are blocked; once they are
/// gone (consumer closed, queue purged) the freed memory goes back to the system and the
/// alarm clears (below 90 % of the watermark: no flapping), unblocking the publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_alarm_clears_once_memory_is_freed() {
    use lapin::options::{BasicConsumeOptions, QueuePurgeOptions};
    const WATERMARK_MIB: u64 = 96;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let watermark = (WATERMARK_MIB << 20).to_string();
    let broker = WarrenProcess::start(&data, None, &["--memory-high-watermark", &watermark]);
    let pconn = connect_uri(&broker.uri()).await;
    let pch = channel(&pconn).await;
    declare_queue(&pch, "mem.q", QueueDeclareOptions::default(), FieldTable::default()).await;
    let cconn = connect_uri(&broker.uri()).await;
    let cch = channel(&cconn).await;
    // A consumer that never acks: every delivery stays in the broker's unacked map.
    let _consumer =
        w!(cch.basic_consume("mem.q".into(), "hog".into(), BasicConsumeOptions::default(), FieldTable::default()))
            .expect("consume");
    let body = vec![7u8; 1 << 20];
    let publisher = tokio::spawn(async move {
        for _ in 0..400 {
            let r = pch
                .basic_publish("".into(), "mem.q".into(), BasicPublishOptions::default(), &body, transient("m"))
                .await;
            if r.is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !pconn.status().blocked() {
        assert!(
            std::time::Instant::now() < deadline,
            "no connection.blocked (broker RSS {} MiB)\n{}",
            broker.rss_mib(),
            broker.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let peak = broker.rss_mib();
    assert!(peak > WATERMARK_MIB, "blocked at {peak} MiB");
    // Free it: the consumer goes (its deliveries are requeued), then the queue is purged
    // from a connection that never published (not blocked).
    let _ = w!(cconn.close(200, "OK".into()));
    let admin = connect_uri(&broker.uri()).await;
    let ach = channel(&admin).await;
    w!(ach.queue_purge("mem.q".into(), QueuePurgeOptions::default())).expect("purge");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while pconn.status().blocked() {
        assert!(
            std::time::Instant::now() < deadline,
            "the alarm never cleared (RSS {peak} -> {} MiB, queue {:?})\n{}",
            broker.rss_mib(),
            w!(channel(&admin).await.queue_declare(
                "mem.q".into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default()
            ))
            .map(|q| (q.message_count(), q.consumer_count())),
            broker.log()
        );
        // What the unblocked publisher sends meanwhile lands in the queue: keep it empty.
        let _ = w!(ach.queue_purge("mem.q".into(), QueuePurgeOptions::default()));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    eprintln!("memory alarm: blocked at {peak} MiB, cleared at {} MiB", broker.rss_mib());
    publisher.abort();
}

/// The node's queue limit (RabbitMQ's cluster_queue_limit): the declare past it is 406 on
/// the channel with RabbitMQ's text, the connection carries on, and deleting a queue makes
/// room. (Exchanges and bindings have the same kind of limit: broker core tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_limit_refuses_the_declare_past_it_with_406() {
    let server = TestServer::start_with(server::Config { queue_max_count: 2, ..server::Config::default() }).await;
    let (conn, ch) = open(&server).await;
    declare_queue(&ch, "lim.1", QueueDeclareOptions::default(), FieldTable::default()).await;
    declare_queue(&ch, "lim.2", QueueDeclareOptions::default(), FieldTable::default()).await;
    let e = w!(ch.queue_declare("lim.3".into(), QueueDeclareOptions::default(), FieldTable::default()))
        .expect_err("a third queue");
    assert_eq!(reply_code(&e), Some(406), "{e}");
    assert!(e.to_string().contains("cannot declare queue 'lim.3': queue limit in cluster (2) is reached"), "{e}");
    let ch = channel(&conn).await;
    w!(ch.queue_delete("lim.1".into(), Default::default())).expect("delete");
    declare_queue(&ch, "lim.3", QueueDeclareOptions::default(), FieldTable::default()).await;
    server.stop().await;
}

/// A tmpfs of `mib` MiB mounted on a new temporary directory (tests run as root),
/// unmounted on drop.
pub(crate) struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    pub(crate) fn mount(mib: u32) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(st.success(), "mounting a {mib} MiB tmpfs (the tests run as root)");
        SmallDisk { dir }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// A full disk refuses publishes (nacks) without poisoning the store: once space
/// returns, persistent publishes are confirmed again with no restart, and every message
/// acked before, during and after survives one. (A failed write used to poison the store
/// like a failed fsync: every later persistent publish was nacked until a restart.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_publishes_until_space_returns() {
    let disk = SmallDisk::mount(24);
    let data = disk.path().join("data");
    // The disk alarm is off: this is about a disk that fills between two checks.
    let config = || server::Config { data_dir: data.clone(), disk_free_limit_bytes: 0, ..server::Config::default() };
    let mut acked: Vec<String> = Vec::new();
    {
        let server = TestServer::start_persistent_with(config()).await;
        let (conn, _) = open(&server).await;
        let ch = confirm_channel(&conn).await;
        declare_queue(&ch, "full.q", durable(), FieldTable::default()).await;
        // Fill the disk, leaving a little room.
        let filler = disk.path().join("filler");
        let free = nix::sys::statvfs::statvfs(disk.path()).map(|s| s.blocks_available() * s.fragment_size()).unwrap();
        std::fs::write(&filler, vec![0u8; (free as usize).saturating_sub(256 * 1024)]).expect("filler");
        let body = "x".repeat(16 * 1024);
        let mut nacked = 0;
        for i in 0..200 {
            let id = format!("m{i}");
            match publish(&ch, "full.q", &format!("{id} {body}"), persistent(&id)).await {
                Confirmation::Ack(_) => acked.push(id),
                Confirmation::Nack(_) => nacked += 1,
                other => panic!("{other:?}"),
            }
            if nacked >= 3 {
                break;
            }
        }
        assert!(nacked >= 3, "the disk never filled ({} acked)", acked.len());
        // Space returns: publishing is confirmed again, without a restart.
        std::fs::remove_file(&filler).expect("remove the filler");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let mut after = 0;
        let mut i = 1000;
        while after < 5 {
            assert!(std::time::Instant::now() < deadline, "publishes never confirmed again after space returned");
            let id = format!("m{i}");
            i += 1;
            if publish(&ch, "full.q", &format!("{id} {body}"), persistent(&id)).await == Confirmation::Ack(None) {
                acked.push(id);
                after += 1;
            }
        }
        let _ = w!(conn.close(200, "OK".into()));
        server.stop().await;
    }
    let server = TestServer::start_persistent_with(config()).await;
    let (_conn, ch) = open(&server).await;
    let got: std::collections::HashSet<String> = get_all(&ch, "full.q")
        .await
        .into_iter()
        .map(|(b, _)| b.split(' ').next().unwrap_or_default().to_owned())
        .collect();
    for id in &acked {
        assert!(got.contains(id), "{id} was acked but is gone after the restart");
    }
    server.stop().await;
}

/// x-delivery-limit counts survive a restart in durable queues (they restarted at 0):
/// with a limit of 3, three requeues before the restart and one after dead-letter the
/// message; before the fix it went round again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_limit_counts_survive_a_restart() {
    use lapin::options::{BasicGetOptions, BasicNackOptions};
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut args = FieldTable::default();
    args.insert("x-delivery-limit".into(), lapin::types::AMQPValue::LongInt(3));
    args.insert("x-dead-letter-exchange".into(), lapin::types::AMQPValue::LongString("".into()));
    args.insert("x-dead-letter-routing-key".into(), lapin::types::AMQPValue::LongString("limit.dlq".into()));
    async fn get_and_requeue(ch: &lapin::Channel) {
        let m = w!(ch.basic_get("limit.q".into(), BasicGetOptions::default())).expect("get").expect("a message");
        w!(m.delivery.nack(BasicNackOptions { requeue: true, ..Default::default() })).expect("nack");
    }
    {
        let server = TestServer::start_persistent(tmp.path()).await;
        let (conn, _) = open(&server).await;
        let ch = confirm_channel(&conn).await;
        declare_queue(&ch, "limit.dlq", durable(), FieldTable::default()).await;
        declare_queue(&ch, "limit.q", durable(), args.clone()).await;
        publish_confirmed(&ch, "", "limit.q", "task", persistent("1")).await;
        for _ in 0..3 {
            get_and_requeue(&ch).await;
        }
        assert_eq!(queue_count(&conn, "limit.q").await, Ok(1));
        let _ = w!(conn.close(200, "OK".into()));
        server.stop().await;
    }
    let server = TestServer::start_persistent(tmp.path()).await;
    let (conn, ch) = open(&server).await;
    get_and_requeue(&ch).await;
    assert_eq!(queue_count(&conn, "limit.q").await, Ok(0), "the fourth delivery is past the limit");
    assert_eq!(queue_count(&conn, "limit.dlq").await, Ok(1), "dead-lettered");
    server.stop().await;
}
