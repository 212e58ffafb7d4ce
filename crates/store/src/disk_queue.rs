//! [`DiskQueueStore`]: a queue's ready messages with only the head of the queue in RAM.
//!
//! Ready messages, in delivery order, are: `requeued` (back from consumers, by seq), then
//! `mem` (a contiguous run kept in RAM), then the records on disk from `disk_next` on.
//! New messages go to `mem` while nothing is waiting on disk and `mem` is under its
//! budget; otherwise they are written and left on disk, and `mem` is refilled from disk as
//! it drains. Persistent messages in a durable queue are always written (and fsynced
//! before their publish is confirmed), whether or not they also stay in RAM.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use broker::message::DiskPos;
use broker::store::{Durability, MessageStore, StoreFailed};
use broker::{Message, QueuedMessage};
use bytes::Bytes;
use tracing::error;

use crate::Error;
use crate::segments::{QueueFiles, Recovered};
use crate::syncer::Syncer;

const FLAG_PERSISTENT: u8 = 1;
/// RAM a message costs beyond its bytes (Arc, struct, queue slot), for budgeting.
const MESSAGE_OVERHEAD_BYTES: u64 = 160;
/// Bytes a peek reads from the queue's files per call into them.
const PEEK_READ_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Bytes of ready messages a queue keeps in RAM before paging to disk.
    pub queue_ram_budget_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { queue_ram_budget_bytes: 8 * 1024 * 1024 }
    }
}

pub struct DiskQueueStore {
    files: Arc<QueueFiles>,
    /// Persistent messages are written and fsynced (a durable queue).
    durable: bool,
    budget: u64,
    requeued: BTreeMap<u64, QueuedMessage>,
    mem: VecDeque<QueuedMessage>,
    mem_cost: u64,
    disk_next: Option<DiskPos>,
    disk_count: u64,
    ready_bytes: u64,
    last_seq: Option<u64>,
    /// From recovery: records up to here were delivered before the restart.
    delivered_before: Option<DiskPos>,
    /// From recovery: transient records before here belong to the previous run.
    recovered_end: Option<DiskPos>,
    /// Messages in `mem` with a seq below this have buffers of their own (see `tick`).
    detached_below: u64,
    /// Messages with a seq below this were already waiting at the previous tick.
    waiting_below: u64,
}

fn cost(m: &Message) -> u64 {
    (m.body.len() + m.properties.len() + m.exchange.len() + m.routing_key.len()) as u64 + MESSAGE_OVERHEAD_BYTES
}

// Message record payload, format v1 (docs/storage.md):
// flags u8 | seq u64 | expires_at_ms u64 | exchange u8+bytes | routing key u8+bytes |
// properties u32+bytes | body.

/// Whether a message record's payload is of a persistent message.
pub fn payload_is_persistent(p: &[u8]) -> bool {
    p.first().is_some_and(|f| f & FLAG_PERSISTENT != 0)
}

/// The seq stored in a message record's payload.
pub fn payload_seq(p: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(p.get(1..9)?.try_into().ok()?))
}

pub(crate) fn encode_payload(out: &mut Vec<u8>, seq: u64, expires_at_ms: u64, m: &Message) {
    out.push(if m.persistent { FLAG_PERSISTENT } else { 0 });
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&expires_at_ms.to_le_bytes());
    // Names are short strings on the wire: at most 255 bytes.
    let ex = &m.exchange.as_bytes()[..m.exchange.len().min(255)];
    out.push(ex.len() as u8);
    out.extend_from_slice(ex);
    let rk = &m.routing_key.as_bytes()[..m.routing_key.len().min(255)];
    out.push(rk.len() as u8);
    out.extend_from_slice(rk);
    out.extend_from_slice(&(m.properties.len() as u32).to_le_bytes());
    out.extend_from_slice(&m.properties);
    out.extend_from_slice(&m.body);
}

pub(crate) fn decode_payload(p: &[u8]) -> Option<(u64, u64, Message)> {
    let flags = *p.first()?;
    let seq = payload_seq(p)?;
    let expires_at_ms = u64::from_le_bytes(p.get(9..17)?.try_into().ok()?);
    let mut at = 17;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = p.get(at..at + n)?;
        at += n;
        Some(s)
    };
    let exlen = *take(1)?.first()? as usize;
    let exchange = String::from_utf8_lossy(take(exlen)?).into_owned();
    let rklen = *take(1)?.first()? as usize;
    let routing_key = String::from_utf8_lossy(take(rklen)?).into_owned();
    let plen = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let properties = Bytes::copy_from_slice(take(plen)?);
    let body = Bytes::copy_from_slice(p.get(at..)?);
    let summary = wire::properties::summarize(&properties).ok();
    let priority = summary.and_then(|s| s.priority).unwrap_or(0);
    Some((
        seq,
        expires_at_ms,
        Message {
            exchange,
            routing_key,
            properties,
            body,
            persistent: flags & FLAG_PERSISTENT != 0,
            priority,
            expiration_ms: None,
        },
    ))
}

impl DiskQueueStore {
    /// Open the store in `dir`, recovering what is there. `durable` queues fsync
    /// persistent messages; others use the files only to page out of RAM (their directory
    /// should be empty at open).
    pub fn open(dir: &Path, durable: bool, syncer: Arc<Syncer>, cfg: &StoreConfig) -> Result<DiskQueueStore, Error> {
        let (files, rec): (_, Recovered) = QueueFiles::open(dir, durable, syncer)?;
        Ok(DiskQueueStore {
            files,
            durable,
            budget: cfg.queue_ram_budget_bytes,
            requeued: BTreeMap::new(),
            mem: VecDeque::new(),
            mem_cost: 0,
            disk_next: rec.first,
            disk_count: rec.records.saturating_sub(rec.acked),
            ready_bytes: 0,
            last_seq: rec.last_seq,
            delivered_before: rec.delivered,
            recovered_end: rec.end,
            detached_below: 0,
            waiting_below: 0,
        })
    }

    /// Append `m`'s record. `wait`: the caller will wait for it to be fsynced (a
    /// persistent message in a durable queue).
    fn write(&mut self, m: &QueuedMessage, wait: bool) -> Result<(DiskPos, Durability), StoreFailed> {
        self.files
            .append(m.seq, m.msg.persistent, wait, |out| encode_payload(out, m.seq, m.expires_at_ms, &m.msg))
            .map_err(|e| {
                error!("appending to {}: {e}", self.files.dir().display());
                StoreFailed(format!("cannot write queue files: {e}"))
            })
    }

    /// Move messages from disk into `mem` until it holds about half its budget.
    fn refill(&mut self) {
        while self.mem.is_empty() {
            let Some(from) = self.disk_next else { return };
            let (records, next) = match self.files.read(from, (self.budget / 2).max(64 * 1024) as usize) {
                Ok(r) => r,
                Err(e) => {
                    error!("reading {}: {e}; messages after {from:?} are skipped", self.files.dir().display());
                    (Vec::new(), None)
                }
            };
            self.disk_next = next;
            for r in records {
                if r.acked {
                    continue;
                }
                let Some((seq, expires_at_ms, msg)) = decode_payload(&r.payload) else {
                    error!("{}: undecodable message record at {:?}, skipped", self.files.dir().display(), r.pos);
                    continue;
                };
                let from_previous_run = self.recovered_end.is_some_and(|end| r.pos < end);
                if from_previous_run && !msg.persistent {
                    // A transient message paged out before the restart: gone, by contract
                    // (and never counted in `disk_count`, which counts persistent records).
                    self.files.ack(r.pos, false);
                    continue;
                }
                let redelivered =
                    from_previous_run && (r.delivery_count > 0 || self.delivered_before.is_some_and(|d| r.pos <= d));
                self.disk_count = self.disk_count.saturating_sub(1);
                let msg = Arc::new(msg);
                self.mem_cost += cost(&msg);
                self.mem.push_back(QueuedMessage {
                    msg,
                    seq,
                    redelivered,
                    expires_at_ms,
                    delivery_count: r.delivery_count.max(u32::from(redelivered)),
                    disk: Some(r.pos),
                });
            }
            if self.disk_next.is_none() {
                self.disk_count = 0;
            }
        }
    }
}

impl MessageStore for DiskQueueStore {
    fn push(&mut self, mut m: QueuedMessage) -> Result<Durability, StoreFailed> {
        let mut durability = Durability::Now;
        if self.durable && m.msg.persistent {
            // A persistent message in a durable queue must reach the disk before its
            // confirm: if the write fails, the publish fails (nack), it is not kept in RAM.
            let (pos, d) = self.write(&m, true)?;
            m.disk = Some(pos);
            durability = d;
        }
        let c = cost(&m.msg);
        let (seq, size) = (m.seq, m.msg.body_size());
        if self.disk_next.is_none() && self.mem_cost + c <= self.budget {
            self.mem_cost += c;
            self.mem.push_back(m);
        } else {
            // Page out: the message lives on disk only. If that write fails the publish
            // fails too: keeping it in RAM would break the budget, and put it ahead of older
            // messages already on disk.
            let p = match m.disk {
                Some(p) => p,
                None => self.write(&m, false)?.0,
            };
            self.disk_next.get_or_insert(p);
            self.disk_count += 1;
        }
        // Counted only once stored: a refused publish leaves no trace.
        self.last_seq = Some(seq);
        self.ready_bytes += size;
        Ok(durability)
    }

    fn peek(&mut self) -> Option<&QueuedMessage> {
        if self.requeued.is_empty() && self.mem.is_empty() {
            self.refill();
        }
        match self.requeued.first_key_value() {
            Some((_, m)) => Some(m),
            None => self.mem.front(),
        }
    }

    fn pop(&mut self) -> Option<QueuedMessage> {
        if self.requeued.is_empty() && self.mem.is_empty() {
            self.refill();
        }
        let m = match self.requeued.pop_first() {
            Some((_, m)) => m,
            None => {
                let m = self.mem.pop_front()?;
                self.mem_cost = self.mem_cost.saturating_sub(cost(&m.msg));
                m
            }
        };
        self.ready_bytes = self.ready_bytes.saturating_sub(m.msg.body_size());
        Some(m)
    }

    /// RAM parts first, then the paged-out records, read from disk and decoded into
    /// copies that nothing else keeps (the store's own position does not move).
    fn peek_range(&mut self, offset: usize, count: usize) -> Vec<QueuedMessage> {
        let mut out: Vec<QueuedMessage> =
            self.requeued.values().chain(self.mem.iter()).skip(offset).take(count).cloned().collect();
        let mut skip = offset.saturating_sub(self.requeued.len() + self.mem.len());
        let mut from = self.disk_next;
        while out.len() < count
            && let Some(at) = from
        {
            let (records, next) = match self.files.read(at, PEEK_READ_BYTES) {
                Ok(r) => r,
                Err(e) => {
                    error!("peeking into {} at {at:?}: {e}", self.files.dir().display());
                    break;
                }
            };
            from = next;
            for r in records {
                if r.acked || out.len() >= count {
                    continue;
                }
                let Some((seq, expires_at_ms, msg)) = decode_payload(&r.payload) else { continue };
                let from_previous_run = self.recovered_end.is_some_and(|end| r.pos < end);
                if from_previous_run && !msg.persistent {
                    continue; // dropped at the restart (see `refill`)
                }
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                let redelivered =
                    from_previous_run && (r.delivery_count > 0 || self.delivered_before.is_some_and(|d| r.pos <= d));
                out.push(QueuedMessage {
                    msg: Arc::new(msg),
                    seq,
                    redelivered,
                    expires_at_ms,
                    delivery_count: r.delivery_count,
                    disk: Some(r.pos),
                });
            }
        }
        out
    }

    fn requeue(&mut self, m: QueuedMessage) {
        if let (true, true, Some(pos)) = (self.durable, m.msg.persistent, m.disk) {
            // x-delivery-limit counts survive a restart in durable queues.
            self.files.set_delivery_count(pos, m.delivery_count);
        }
        self.ready_bytes += m.msg.body_size();
        self.requeued.insert(m.seq, m);
    }

    fn ack(&mut self, m: &QueuedMessage) {
        if let Some(pos) = m.disk {
            self.files.ack(pos, m.msg.persistent);
        }
    }

    fn delivered(&mut self, m: &QueuedMessage) {
        if let (true, Some(pos)) = (self.durable, m.disk) {
            self.files.delivered(pos);
        }
    }

    fn len(&self) -> usize {
        self.requeued.len() + self.mem.len() + self.disk_count as usize
    }

    fn bytes(&self) -> u64 {
        self.ready_bytes
    }

    fn ram_bytes(&self) -> u64 {
        self.mem_cost
    }

    /// Half the budget: publishers get paused (flow) before anything is paged out, so a
    /// queue whose consumers keep up on average never writes transient messages.
    fn near_ram_budget(&self) -> bool {
        self.disk_next.is_some() || self.mem_cost >= self.budget / 2
    }

    /// Drops the RAM parts and acknowledges the disk part without reading it back (it was
    /// read, message by message, under the queue's lock).
    fn purge(&mut self) -> usize {
        let n = self.len();
        for m in std::mem::take(&mut self.requeued).into_values().chain(std::mem::take(&mut self.mem)) {
            self.ack(&m);
        }
        self.mem_cost = 0;
        if let Some(from) = self.disk_next.take()
            && let Err(e) = self.files.purge_from(from)
        {
            // Not acknowledged on disk: the purged messages come back after a restart.
            error!("purging {} from {from:?}: {e}", self.files.dir().display());
        }
        self.disk_count = 0;
        self.ready_bytes = 0;
        n
    }

    fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// Messages that were already waiting at the previous tick get buffers of their own.
    /// A body that arrived in one frame is a slice of its publisher's read buffer (64 KiB
    /// to 1 MiB) and keeps all of it alive (see `Message::detached`): harmless for a message
    /// delivered at once, but a backlog of ten-byte messages could pin a megabyte each that
    /// no budget sees. Copying only what outlived a tick keeps the copy off the path of
    /// queues whose consumers keep up.
    fn tick(&mut self) {
        let waiting_below = self.waiting_below;
        for m in self.mem.iter_mut().rev() {
            if m.seq >= waiting_below {
                continue; // arrived since the previous tick
            }
            if m.seq < self.detached_below {
                break;
            }
            m.msg = Arc::new(m.msg.detached());
        }
        self.detached_below = self.detached_below.max(waiting_below);
        self.waiting_below = self.last_seq.map_or(0, |s| s + 1);
    }

    fn destroy(&mut self) {
        self.requeued.clear();
        self.mem.clear();
        self.disk_next = None;
        self.disk_count = 0;
        self.files.destroy();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: u64, size: usize) -> Arc<Message> {
        let mut body = vec![(i % 251) as u8; size];
        body[..8].copy_from_slice(&i.to_le_bytes());
        Arc::new(Message {
            exchange: String::new(),
            routing_key: "q".into(),
            properties: Bytes::from_static(&[0, 0]),
            body: Bytes::from(body),
            persistent: false,
            priority: 0,
            expiration_ms: None,
        })
    }

    /// Regression: a transient queue past its RAM budget lost messages when a refill read
    /// reached bytes still in the append buffer ("failed to fill whole buffer").
    #[test]
    fn paged_messages_come_back_in_order_while_publishing_continues() {
        let dir = tempfile::tempdir().unwrap();
        let syncer = Syncer::start(|_| {});
        let cfg = StoreConfig { queue_ram_budget_bytes: 256 * 1024 };
        let mut s = DiskQueueStore::open(dir.path(), false, syncer, &cfg).unwrap();
        let (mut next_in, mut next_out) = (0u64, 0u64);
        for round in 0..200u64 {
            for _ in 0..(5 + round % 7) {
                let m = msg(next_in, if next_in % 3 == 0 { 64 * 1024 } else { 100 });
                let _ = s
                    .push(QueuedMessage {
                        msg: m,
                        seq: next_in,
                        redelivered: false,
                        expires_at_ms: 0,
                        delivery_count: 0,
                        disk: None,
                    })
                    .expect("push");
                next_in += 1;
            }
            for _ in 0..(4 + round % 5) {
                let Some(m) = s.pop() else { break };
                assert_eq!(m.seq, next_out);
                assert_eq!(u64::from_le_bytes(m.msg.body[..8].try_into().unwrap()), next_out);
                s.ack(&m);
                next_out += 1;
            }
        }
        while let Some(m) = s.pop() {
            assert_eq!(m.seq, next_out);
            s.ack(&m);
            next_out += 1;
        }
        assert_eq!(next_out, next_in);
        assert_eq!(s.len(), 0);
    }

    fn queued(i: u64, size: usize) -> QueuedMessage {
        QueuedMessage { msg: msg(i, size), seq: i, redelivered: false, expires_at_ms: 0, delivery_count: 0, disk: None }
    }

    /// Peek sees RAM and paged-out messages in delivery order and changes nothing: the
    /// same messages then pop in the same order.
    #[test]
    fn peek_range_reads_paged_messages_without_taking_them() {
        let dir = tempfile::tempdir().unwrap();
        let syncer = Syncer::start(|_| {});
        let cfg = StoreConfig { queue_ram_budget_bytes: 64 * 1024 };
        let mut s = DiskQueueStore::open(dir.path(), false, syncer, &cfg).unwrap();
        for i in 0..100u64 {
            let _ = s.push(queued(i, 4096)).expect("push");
        }
        assert!(s.disk_next.is_some(), "the test needs messages paged out");
        let (len, bytes) = (s.len(), s.bytes());
        let all = s.peek_range(0, 1000);
        assert_eq!(all.iter().map(|m| m.seq).collect::<Vec<_>>(), (0..100).collect::<Vec<_>>());
        assert_eq!(u64::from_le_bytes(all[90].msg.body[..8].try_into().unwrap()), 90);
        let mid = s.peek_range(40, 5);
        assert_eq!(mid.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![40, 41, 42, 43, 44]);
        assert!(s.peek_range(100, 5).is_empty());
        assert_eq!((s.len(), s.bytes()), (len, bytes));
        // A requeued message comes first, in the peek as in delivery.
        let first = s.pop().unwrap();
        s.requeue(first);
        assert_eq!(s.peek_range(0, 2).iter().map(|m| m.seq).collect::<Vec<_>>(), vec![0, 1]);
        for i in 0..100u64 {
            let m = s.pop().unwrap();
            assert_eq!(m.seq, i);
            assert!(!m.redelivered);
            s.ack(&m);
        }
        assert!(s.pop().is_none());
    }
}
