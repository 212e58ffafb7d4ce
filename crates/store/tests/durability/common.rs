//! Shared helpers: deterministic messages, store handles, directory snapshots.

use std::collections::BTreeMap;
use std::fs;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use broker::store::MessageStore;
use broker::{Message, QueuedMessage};
use bytes::Bytes;
use store::record::{self, Decoded};
use store::{DiskQueueStore, StoreConfig, Syncer};
use wire::{BasicProperties, FieldTable, FieldValue};

/// A syncer thread that is shut down when the test is done with it.
pub struct TestSyncer(Arc<Syncer>);

impl TestSyncer {
    pub fn start() -> TestSyncer {
        TestSyncer(Syncer::start(|_| {}))
    }

    /// With `on_durable` run on the commit thread after each round.
    pub fn with_callback(on_durable: impl Fn(broker::store::CommitState) + Send + Sync + 'static) -> TestSyncer {
        TestSyncer(Syncer::start(on_durable))
    }

    pub fn arc(&self) -> Arc<Syncer> {
        self.0.clone()
    }
}

impl Deref for TestSyncer {
    type Target = Syncer;
    fn deref(&self) -> &Syncer {
        &self.0
    }
}

impl Drop for TestSyncer {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// A durable queue's store in `dir` (recovering what is there).
pub fn open(dir: &Path, syncer: &TestSyncer) -> DiskQueueStore {
    open_with(dir, true, syncer, StoreConfig::default())
}

pub fn open_with(dir: &Path, durable: bool, syncer: &TestSyncer, cfg: StoreConfig) -> DiskQueueStore {
    DiskQueueStore::open(dir, durable, syncer.arc(), &cfg)
        .unwrap_or_else(|e| panic!("opening the store in {}: {e}", dir.display()))
}

/// Raw content-header properties for message `i`.
pub fn properties(i: u64, persistent: bool) -> Bytes {
    let mut headers = FieldTable::new();
    headers.insert("i", FieldValue::I64(i as i64));
    headers.insert("tag", FieldValue::LongStr(Bytes::from(format!("tag-{i}"))));
    let p = BasicProperties {
        content_type: Some("application/octet-stream".into()),
        headers: Some(headers),
        delivery_mode: Some(if persistent { 2 } else { 1 }),
        priority: Some((i % 10) as u8),
        message_id: Some(format!("id-{i}")),
        timestamp: Some(1_700_000_000 + i),
        ..BasicProperties::default()
    };
    Bytes::from(p.to_raw())
}

/// `len` bytes that start with the message number and differ from any other message's.
pub fn body(i: u64, len: usize) -> Bytes {
    let mut b = format!("body-{i}:").into_bytes();
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while b.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.push(x as u8);
    }
    b.truncate(len);
    Bytes::from(b)
}

/// Message number `i`: its exchange, routing key, properties and body all derive from `i`.
pub fn message(i: u64, persistent: bool, body_len: usize) -> Message {
    Message {
        exchange: if i.is_multiple_of(4) { String::new() } else { format!("ex-{}", i % 3) },
        routing_key: format!("rk.{i}"),
        properties: properties(i, persistent),
        body: body(i, body_len),
        persistent,
        priority: (i % 10) as u8,
        expiration_ms: None,
    }
}

/// The per-queue expiry the tests give the message with `seq` (ms since the epoch, far in
/// the future; 0 = never): it is part of the record and must survive a restart.
pub fn expiry(seq: u64) -> u64 {
    if seq.is_multiple_of(3) { 0 } else { 4_102_444_800_000 + seq }
}

pub fn queued(seq: u64, msg: Message) -> QueuedMessage {
    QueuedMessage {
        msg: Arc::new(msg),
        seq,
        redelivered: false,
        expires_at_ms: expiry(seq),
        delivery_count: 0,
        disk: None,
    }
}

/// Pop until the store is empty.
pub fn pop_all(store: &mut DiskQueueStore) -> Vec<QueuedMessage> {
    let mut out = Vec::new();
    while let Some(m) = store.pop() {
        out.push(m);
        assert!(out.len() <= 10_000_000, "the store never runs empty");
    }
    out
}

/// `got` is message `want` with seq `seq`, exactly.
#[track_caller]
pub fn assert_message(got: &QueuedMessage, seq: u64, want: &Message, redelivered: bool, ctx: &str) {
    assert_eq!(got.seq, seq, "{ctx}: seq");
    let m = &got.msg;
    assert_eq!(m.exchange, want.exchange, "{ctx}: seq {seq}: exchange");
    assert_eq!(m.routing_key, want.routing_key, "{ctx}: seq {seq}: routing key");
    assert_eq!(m.properties, want.properties, "{ctx}: seq {seq}: properties");
    assert!(m.body == want.body, "{ctx}: seq {seq}: body differs ({} vs {} bytes)", m.body.len(), want.body.len());
    assert_eq!(m.persistent, want.persistent, "{ctx}: seq {seq}: persistent");
    assert_eq!(m.priority, want.priority, "{ctx}: seq {seq}: priority");
    assert_eq!(got.redelivered, redelivered, "{ctx}: seq {seq}: redelivered");
    assert_eq!(got.expires_at_ms, expiry(seq), "{ctx}: seq {seq}: expires_at_ms");
}

/// Every regular file of `dir` (not recursive): name → bytes.
pub type Snapshot = BTreeMap<String, Vec<u8>>;

pub fn snapshot(dir: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    for e in fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("dir entry");
        if e.file_type().expect("file type").is_file() {
            out.insert(e.file_name().to_string_lossy().into_owned(), fs::read(e.path()).expect("read"));
        }
    }
    out
}

/// A fresh directory `root/name` holding exactly `files`.
pub fn materialize(root: &Path, name: &str, files: &Snapshot) -> PathBuf {
    let dir = root.join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir).expect("remove old dir");
    }
    fs::create_dir_all(&dir).expect("create dir");
    for (n, b) in files {
        fs::write(dir.join(n), b).expect("write file");
    }
    dir
}

/// (name, size) of every file in `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            let e = e.expect("dir entry");
            (e.file_name().to_string_lossy().into_owned(), e.metadata().expect("metadata").len())
        })
        .collect();
    v.sort();
    v
}

/// Byte ranges `[start, end)` of the records in a segment file, found with the record
/// framing alone (independently of the store's recovery code).
pub fn record_bounds(seg: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < seg.len() {
        match record::decode(&seg[at..]) {
            Decoded::Record(_, n) => {
                out.push((at, at + n));
                at += n;
            }
            other => panic!("the pristine segment has a bad record at {at}: {other:?}"),
        }
    }
    out
}

pub fn seg_name(id: u32, ext: &str) -> String {
    format!("{id:010}.{ext}")
}

/// The small queue of the torn-write and bit-flip tests: [`SMALL_COUNT`] persistent
/// messages in one segment (the last, so recovery scans it), the first
/// [`SMALL_DELIVERED`] delivered, [`SMALL_ACKED`] of those acknowledged, in that order.
pub struct SmallQueue {
    pub files: Snapshot,
    /// Record ranges in the segment, by message index.
    pub bounds: Vec<(usize, usize)>,
}

pub const SMALL_COUNT: u64 = 20;
pub const SMALL_DELIVERED: u64 = 8;
pub const SMALL_ACKED: [u64; 4] = [1, 3, 4, 6];

pub fn small_body_len(i: u64) -> usize {
    1 + (i as usize * 7) % 50
}

pub fn small_message(i: u64) -> Message {
    message(i, true, small_body_len(i))
}

impl SmallQueue {
    pub fn build() -> SmallQueue {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("q");
        let syncer = TestSyncer::start();
        let mut s = open(&dir, &syncer);
        for i in 0..SMALL_COUNT {
            let _ = s.push(queued(i + 1, small_message(i))).expect("push");
        }
        let mut popped = Vec::new();
        for _ in 0..SMALL_DELIVERED {
            let m = s.pop().expect("pop");
            s.delivered(&m);
            popped.push(m);
        }
        for &i in &SMALL_ACKED {
            s.ack(&popped[i as usize]);
        }
        syncer.sync_all();
        drop(s);
        let files = snapshot(&dir);
        let names: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(names, ["0000000000.acks", "0000000000.seg", "delivered"], "the small queue's files");
        let bounds = record_bounds(&files["0000000000.seg"]);
        assert_eq!(bounds.len() as u64, SMALL_COUNT);
        SmallQueue { files, bounds }
    }

    pub fn seg(&self) -> &[u8] {
        &self.files["0000000000.seg"]
    }

    /// With some files replaced.
    pub fn with(&self, name: &str, bytes: Vec<u8>) -> Snapshot {
        let mut f = self.files.clone();
        f.insert(name.to_owned(), bytes);
        f
    }
}

/// (message index, redelivered) of what a store opened on a variant of the small queue
/// must serve: the messages `present` lets through, minus `acked`, with the delivered mark
/// applied when `mark` holds.
pub fn small_expected(present: impl Fn(u64) -> bool, acked: &[u64], mark: bool) -> Vec<(u64, bool)> {
    (0..SMALL_COUNT).filter(|&i| present(i) && !acked.contains(&i)).map(|i| (i, mark && i < SMALL_DELIVERED)).collect()
}

/// Open the store in `dir` and check that it serves exactly `want`, with the right
/// ready count first.
#[track_caller]
pub fn assert_serves(dir: &Path, syncer: &TestSyncer, want: &[(u64, bool)], ctx: &str) -> DiskQueueStore {
    let mut s = open(dir, syncer);
    let len = s.len();
    let got = pop_all(&mut s);
    let got_ids: Vec<u64> = got.iter().map(|m| m.seq - 1).collect();
    let want_ids: Vec<u64> = want.iter().map(|w| w.0).collect();
    assert_eq!(got_ids, want_ids, "{ctx}: messages served");
    for (m, &(i, redelivered)) in got.iter().zip(want) {
        assert_message(m, i + 1, &small_message(i), redelivered, ctx);
    }
    assert_eq!(len, want.len(), "{ctx}: ready count at open (messages served: {got_ids:?})");
    s
}

/// Run `f`; if it panics, panic again naming `ctx` (the panic message itself is printed
/// by the hook above it).
pub fn in_ctx<T>(ctx: &str, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => panic!("failed at {ctx} (see the panic above)"),
    }
}

/// A temporary directory for loops that rewrite files thousands of times: on tmpfs when
/// the host has one (on ext4, replacing small files costs milliseconds each), else in the
/// default temporary directory. Nothing that needs real fsyncs belongs here.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().expect("tempdir")
}
