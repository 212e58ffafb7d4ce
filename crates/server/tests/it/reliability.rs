//! Fail closed (docs/reliability.md): when the store cannot keep a promise the client
//! hears so — a nack or an error — and recovery never deletes data it cannot account for.
//! lapin over TCP against an in-process server on a data directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation};
use server::persist::queue_dir_name;

use crate::common::TestServer;
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

    let mut damages: Vec<(String, Vec<u8>)> = Vec::new();
    let mut start = 0;
    for &end in &ends {
        let mut flipped = log.clone();
        flipped[(start + end) / 2] ^= 0x10;
        damages.push((format!("byte {} flipped", (start + end) / 2), flipped));
        damages.push((format!("cut at {start}"), log[..start].to_vec()));
        start = end;
    }
    for (what, damaged) in damages {
        let tmp = tempfile::tempdir().expect("tempdir");
        copy_dir(golden.path(), tmp.path());
        std::fs::write(tmp.path().join("definitions.log"), &damaged).expect("damage the log");
        let server = TestServer::start_persistent(tmp.path()).await;
        let conn = connect_uri(&server.uri()).await;
        // Every queue file is somewhere: in place, or quarantined as it was.
        let mut found = tree(&tmp.path().join("queues"));
        for (p, bytes) in tree(&tmp.path().join("quarantine").join("queues")) {
            found.insert(p, bytes);
        }
        for (p, bytes) in &queue_files {
            assert_eq!(found.get(p), Some(bytes), "{what}: {} lost or changed", p.display());
        }
        // Queues still defined serve their messages.
        for q in queues {
            if let Ok(n) = queue_count(&conn, q).await {
                assert_eq!(n, 2, "{what}: {q}");
            }
        }
        let _ = w!(conn.close(200, "OK".into()));
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
