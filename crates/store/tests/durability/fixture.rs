//! `fixtures/v<N>`: files written by each on-disk format, checked in. The current code
//! must read every version exactly (see fixtures/v1/README.md). [`write_fixture`] made
//! them, with the code of its time; a test checks that the current code still writes the
//! bytes of [`CURRENT`], so a format change cannot slip in unnoticed. A format change
//! means: a new fixture directory (generated with WARREN_FIXTURE_OUT), added to
//! [`VERSIONS`] and made [`CURRENT`]; the old ones stay as they are and must still open.

use std::fs;
use std::path::{Path, PathBuf};

use broker::Message;
use broker::store::MessageStore;
use bytes::Bytes;
use store::StoreConfig;
use store::definitions::{self, DefinitionsLog};
use wire::{BasicProperties, FieldTable, FieldValue};

use crate::common::*;

/// Every checked-in fixture version.
const VERSIONS: &[&str] = &["v1", "v2"];
/// The version the current code writes.
const CURRENT: &str = "v2";

fn fixture_dir(version: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(version)
}

/// One message of the fixture.
struct V1 {
    seq: u64,
    exchange: &'static str,
    routing_key: String,
    body: Vec<u8>,
    persistent: bool,
    props: BasicProperties,
}

fn v1_messages() -> Vec<V1> {
    let persistent = |id: &str| BasicProperties {
        delivery_mode: Some(2),
        message_id: Some(id.into()),
        ..BasicProperties::default()
    };
    let mut headers = FieldTable::new();
    headers.insert("x-retry", FieldValue::I32(3));
    headers.insert("s", FieldValue::LongStr(Bytes::from_static(b"v")));
    headers.insert("nested", FieldValue::Table(FieldTable::new()));
    vec![
        V1 {
            seq: 1,
            exchange: "",
            routing_key: "orders".into(),
            body: vec![b'a'; 300],
            persistent: true,
            props: BasicProperties { content_type: Some("text/plain".into()), ..persistent("m1") },
        },
        V1 {
            seq: 2,
            exchange: "amq.direct",
            routing_key: "orders".into(),
            body: Vec::new(),
            persistent: true,
            props: BasicProperties { priority: Some(5), headers: Some(headers), ..persistent("m2") },
        },
        V1 {
            seq: 3,
            exchange: "logs",
            routing_key: "a.b.c".into(),
            body: b"transient, acked".to_vec(),
            persistent: false,
            props: BasicProperties { delivery_mode: Some(1), ..BasicProperties::default() },
        },
        V1 {
            seq: 4,
            exchange: "logs",
            routing_key: "a.b.d".into(),
            body: b"delivered, not acked".to_vec(),
            persistent: true,
            props: persistent("m4"),
        },
        V1 {
            seq: 5,
            exchange: "logs",
            routing_key: "a.b.e".into(),
            body: b"transient, paged out, never delivered".to_vec(),
            persistent: false,
            props: BasicProperties::default(),
        },
        V1 {
            seq: 6,
            exchange: "ex.\u{fc}",
            routing_key: "r".repeat(255),
            body: (0..5000u32).map(|i| (i * 7 % 251) as u8).collect(),
            persistent: true,
            props: BasicProperties {
                correlation_id: Some("corr".into()),
                reply_to: Some("amq.rabbitmq.reply-to".into()),
                timestamp: Some(1_700_000_000),
                kind: Some("t".into()),
                user_id: Some("guest".into()),
                app_id: Some("fixture".into()),
                content_encoding: Some("gzip".into()),
                ..persistent("m6")
            },
        },
        V1 {
            seq: 7,
            exchange: "",
            routing_key: "orders".into(),
            body: b"seven".to_vec(),
            persistent: true,
            props: BasicProperties { priority: Some(0), ..persistent("m7") },
        },
        V1 {
            seq: 9,
            exchange: "",
            routing_key: "orders".into(),
            body: b"nine (seq 8 was never in this queue)".to_vec(),
            persistent: true,
            props: persistent("m9"),
        },
    ]
}

/// Run 1 publishes 1..=9 and delivers 1..=4, acking 1 and 3. Run 2 (a restart) serves 2
/// and 4 (redelivered), acks 2, and publishes 10..=12 into a new segment; segment 0 gets
/// its meta file. What comes back then: 4 (redelivered), 6, 7, 9, 10, 12. Messages 5 and 11
/// are transient records on disk (paged out), 3 a transient message never written.
const RUN1_ACKED: [u64; 2] = [1, 3];
const RUN1_DELIVERED: u64 = 4;
const RUN2_ACKED: u64 = 2;
const SERVED: [(u64, bool); 6] = [(4, true), (6, false), (7, false), (9, false), (10, false), (12, false)];

fn run2_messages() -> Vec<V1> {
    vec![
        V1 {
            seq: 10,
            exchange: "",
            routing_key: "orders".into(),
            body: b"ten, after a restart".to_vec(),
            persistent: true,
            props: BasicProperties { delivery_mode: Some(2), ..BasicProperties::default() },
        },
        V1 {
            seq: 11,
            exchange: "",
            routing_key: "orders".into(),
            body: b"eleven, transient, paged out".to_vec(),
            persistent: false,
            props: BasicProperties::default(),
        },
        V1 {
            seq: 12,
            exchange: "",
            routing_key: "orders".into(),
            body: b"twelve".to_vec(),
            persistent: true,
            props: BasicProperties {
                delivery_mode: Some(2),
                expiration: Some("60000".into()),
                ..BasicProperties::default()
            },
        },
    ]
}

fn all_messages() -> Vec<V1> {
    v1_messages().into_iter().chain(run2_messages()).collect()
}

fn to_message(m: &V1) -> Message {
    Message {
        exchange: m.exchange.into(),
        routing_key: m.routing_key.clone(),
        properties: Bytes::from(m.props.to_raw()),
        body: Bytes::from(m.body.clone()),
        persistent: m.persistent,
        priority: m.props.priority.unwrap_or(0),
        expiration_ms: None,
    }
}

/// Opaque definitions records (the server's encoding is the server fixture's business).
fn fixture_definitions() -> Vec<Vec<u8>> {
    vec![b"exchange logs".to_vec(), Vec::new(), vec![0u8; 3], (0..=255u8).collect(), b"queue orders".to_vec()]
}

/// Write the fixture files into `out`: `queue/` (one durable queue, over two runs) and
/// `definitions.log`.
fn write_fixture(out: &Path) {
    let syncer = TestSyncer::start();
    // A small budget, so that the transient messages 5 and 11 are paged out to disk.
    let cfg = StoreConfig { queue_ram_budget_bytes: 1024 };
    let dir = out.join("queue");
    {
        let mut s = open_with(&dir, true, &syncer, cfg.clone());
        for m in v1_messages() {
            let _ = s.push(queued(m.seq, to_message(&m))).expect("push");
        }
        for seq in 1..=RUN1_DELIVERED {
            let m = s.pop().expect("pop");
            assert_eq!(m.seq, seq);
            s.delivered(&m);
            if RUN1_ACKED.contains(&seq) {
                s.ack(&m);
            }
        }
        syncer.sync_all();
    }
    {
        let mut s = open_with(&dir, true, &syncer, cfg);
        for (seq, redelivered) in [(2, true), (4, true)] {
            let m = s.pop().expect("pop");
            assert_eq!((m.seq, m.redelivered), (seq, redelivered));
            s.delivered(&m);
            if seq == RUN2_ACKED {
                s.ack(&m);
            }
        }
        for m in run2_messages() {
            let _ = s.push(queued(m.seq, to_message(&m))).expect("push");
        }
        syncer.sync_all();
    }
    let log = DefinitionsLog::open(&out.join("definitions.log"), |r| r).expect("definitions log");
    for r in fixture_definitions() {
        log.append(&r).expect("append");
    }
}

/// Files of `dir` and its `queue/`, by relative path.
fn fixture_files(dir: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    out.insert("definitions.log".into(), fs::read(dir.join("definitions.log")).expect("definitions.log"));
    for (name, b) in snapshot(&dir.join("queue")) {
        out.insert(format!("queue/{name}"), b);
    }
    out
}

fn copy_fixture(version: &str, to: &Path) {
    for (name, b) in fixture_files(&fixture_dir(version)) {
        let path = to.join(name);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, b).expect("write");
    }
}

#[test]
fn every_fixture_version_opens_with_the_exact_messages() {
    for &version in VERSIONS {
        let tmp = tempfile::tempdir().expect("tempdir");
        copy_fixture(version, tmp.path());
        let dir = tmp.path().join("queue");
        let syncer = TestSyncer::start();
        let all = all_messages();
        {
            let mut s = open(&dir, &syncer);
            assert_eq!(s.last_seq(), Some(12), "{version}: the last seq on disk");
            let len = s.len();
            let got = pop_all(&mut s);
            let ids: Vec<(u64, bool)> = got.iter().map(|m| (m.seq, m.redelivered)).collect();
            assert_eq!(ids, SERVED, "{version}: (seq, redelivered) served");
            for m in &got {
                let want = all.iter().find(|v| v.seq == m.seq).expect("known seq");
                assert_message(m, want.seq, &to_message(want), m.redelivered, version);
                let props = BasicProperties::decode(&m.msg.properties).expect("properties decode");
                assert_eq!(props, want.props, "{version}: seq {}: properties", m.seq);
            }
            assert_eq!(len, SERVED.len(), "{version}: ready count at open (transient records are not ready)");
            // The old files take new writes: ack everything, add one message.
            for m in &got {
                s.delivered(m);
                s.ack(m);
            }
            let _ = s.push(queued(13, small_message(13))).expect("push");
            syncer.sync_all();
        }
        let mut s = open(&dir, &syncer);
        let got = pop_all(&mut s);
        assert_eq!(got.len(), 1, "{version}: after acking the old messages");
        assert_message(&got[0], 13, &small_message(13), false, version);
    }
}

#[test]
fn every_fixture_version_definitions_log_parses_to_the_exact_records() {
    for &version in VERSIONS {
        let tmp = tempfile::tempdir().expect("tempdir");
        copy_fixture(version, tmp.path());
        let path = tmp.path().join("definitions.log");
        let bytes = fs::read(&path).expect("read");
        assert_eq!(definitions::parse(&path, &bytes), fixture_definitions(), "{version}");
        let log = DefinitionsLog::open(&path, |r| {
            assert_eq!(r, fixture_definitions(), "{version}: records handed to compaction");
            r
        })
        .expect("open");
        drop(log);
        assert_eq!(fs::read(&path).expect("read"), bytes, "{version}: rewriting the same records gives the same bytes");
    }
}

/// The generator still writes exactly the bytes of [`CURRENT`]. If this fails, the on-disk
/// format changed: keep the old fixtures as they are (old data directories look like
/// them), add a new version (WARREN_FIXTURE_OUT=<dir> writes the generator's output
/// there), list it in [`VERSIONS`] and make it [`CURRENT`].
#[test]
fn current_writer_still_writes_the_current_fixture() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_fixture(tmp.path());
    let now = fixture_files(tmp.path());
    if let Some(out) = std::env::var_os("WARREN_FIXTURE_OUT") {
        let out = PathBuf::from(out);
        for (name, b) in &now {
            let path = out.join(name);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, b).expect("write");
        }
        eprintln!("generator output written to {}", out.display());
    }
    let fixed = fixture_files(&fixture_dir(CURRENT));
    let names = |s: &Snapshot| s.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&now), names(&fixed), "the files the current code writes vs fixtures/{CURRENT}");
    for (name, b) in &fixed {
        assert!(
            &now[name] == b,
            "{name}: the current code writes different bytes than fixtures/{CURRENT}: the format changed (see this \
             test's doc)"
        );
    }
}
