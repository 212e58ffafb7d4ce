//! The storage seam: a queue keeps its ready messages in a [`MessageStore`]. Routing and
//! dispatch only see this trait, so the durable store can replace [`MemoryStore`] without
//! touching them.

use std::collections::{BTreeMap, VecDeque};

use crate::message::QueuedMessage;

/// When a stored message is safe: the promise a publisher confirm (or tx.commit-ok) waits
/// on. A type rather than a bare commit number so that "no wait" is a deliberate value,
/// never what an error path falls back to. Ordered: `Now` < `AfterCommit(1)` < … so the
/// wait for a message routed to several queues is the largest of theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
#[must_use]
pub enum Durability {
    /// Nothing has to reach the disk (a transient message, or a non-durable queue).
    #[default]
    Now,
    /// Safe once the group-commit round with this number has fsynced.
    AfterCommit(u64),
}

/// Where the group commit stands, as a confirming channel sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitState {
    /// Every round up to this one is fsynced.
    pub durable_round: u64,
    /// An fsync failed: no later round will ever be durable (the kernel may have
    /// dropped the dirty pages, so retrying proves nothing).
    pub failed: bool,
    /// Rounds up to this one could not be written in time (e.g. the disk is full): their
    /// publishes are refused. The store keeps retrying, and later rounds are confirmed
    /// once writes succeed again.
    pub failed_through: u64,
}

/// What a confirm waiting on a [`Durability`] may say now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Still waiting for the disk.
    Pending,
    /// On disk (or never needed it): ack.
    Durable,
    /// Will never be on disk: nack.
    Failed,
}

impl Durability {
    pub fn settled(self, c: CommitState) -> Settled {
        match self {
            Durability::Now => Settled::Durable,
            Durability::AfterCommit(r) if r <= c.durable_round => Settled::Durable,
            Durability::AfterCommit(r) if c.failed || r <= c.failed_through => Settled::Failed,
            Durability::AfterCommit(_) => Settled::Pending,
        }
    }
}

/// A store could not take a message (it was not enqueued): the publish must be refused
/// (nack), never confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFailed(pub String);

impl std::fmt::Display for StoreFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub trait MessageStore: Send {
    /// Append a newly published message (its seq is greater than every seq seen before).
    /// Returns when the message is safe (see [`Durability`]); on `Err` the message was not
    /// stored and its publisher must get a nack.
    fn push(&mut self, m: QueuedMessage) -> Result<Durability, StoreFailed>;
    /// The next message to deliver, without removing it. (`&mut`: a disk store may have to
    /// read it in.)
    fn peek(&mut self) -> Option<&QueuedMessage>;
    /// Remove and return the next message to deliver.
    fn pop(&mut self) -> Option<QueuedMessage>;
    /// Up to `count` ready messages from position `offset` on (0: the next to deliver), in
    /// delivery order, without removing or changing any (management's peek). A store that
    /// pages to disk reads the paged-out part without bringing it back into RAM.
    fn peek_range(&mut self, offset: usize, count: usize) -> Vec<QueuedMessage>;
    /// Put a delivered-but-unacked message back at its original position (by seq).
    fn requeue(&mut self, m: QueuedMessage);
    /// A delivered message was acknowledged and leaves the queue for good.
    fn ack(&mut self, m: &QueuedMessage);
    /// Number of ready messages.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Body bytes of ready messages.
    fn bytes(&self) -> u64;
    /// Bytes the ready messages held in RAM cost (the memory breakdown's `binary`); a
    /// store that pages to disk counts only what it keeps in RAM.
    fn ram_bytes(&self) -> u64 {
        self.bytes()
    }
    /// Drop every ready message; returns how many were dropped.
    fn purge(&mut self) -> usize;
    /// A message was handed to a consumer (the store may remember this, so that after a
    /// restart it comes back with redelivered=true).
    fn delivered(&mut self, _m: &QueuedMessage) {}
    /// The highest seq this store has seen (recovered stores continue numbering after it).
    fn last_seq(&self) -> Option<u64> {
        None
    }
    /// The queue was deleted: release everything, including files.
    fn destroy(&mut self) {}
    /// Periodic upkeep (the housekeeping tick, every 100 ms).
    fn tick(&mut self) {}
    /// The ready backlog is about to spill (or spills) out of RAM: a store that pages to
    /// disk reports this so publishers can be slowed while consumers drain (see
    /// [`crate::Queue::in_flow`]). A RAM-only store never pages.
    fn near_ram_budget(&self) -> bool {
        false
    }
}

/// Ready messages in RAM. Invariant: every seq in `requeued` is smaller than every seq in
/// `fifo` — a message can only have been delivered (and so requeued) after everything
/// before it in the FIFO — so the next message is always the first of `requeued`, if any.
#[derive(Debug, Default)]
pub struct MemoryStore {
    fifo: VecDeque<QueuedMessage>,
    requeued: BTreeMap<u64, QueuedMessage>,
    bytes: u64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl MessageStore for MemoryStore {
    fn push(&mut self, m: QueuedMessage) -> Result<Durability, StoreFailed> {
        self.bytes += m.msg.body_size();
        self.fifo.push_back(m);
        Ok(Durability::Now)
    }

    fn peek(&mut self) -> Option<&QueuedMessage> {
        match self.requeued.first_key_value() {
            Some((_, m)) => Some(m),
            None => self.fifo.front(),
        }
    }

    fn pop(&mut self) -> Option<QueuedMessage> {
        let m = match self.requeued.pop_first() {
            Some((_, m)) => Some(m),
            None => self.fifo.pop_front(),
        }?;
        self.bytes -= m.msg.body_size();
        Some(m)
    }

    fn peek_range(&mut self, offset: usize, count: usize) -> Vec<QueuedMessage> {
        self.requeued.values().chain(self.fifo.iter()).skip(offset).take(count).cloned().collect()
    }

    fn requeue(&mut self, m: QueuedMessage) {
        self.bytes += m.msg.body_size();
        match self.fifo.front() {
            Some(front) if m.seq > front.seq => {
                // Only reachable if a caller requeues a message it never popped; keep order
                // anyway by inserting into the FIFO.
                let at = self.fifo.partition_point(|x| x.seq < m.seq);
                self.fifo.insert(at, m);
            }
            _ => {
                self.requeued.insert(m.seq, m);
            }
        }
    }

    fn ack(&mut self, _m: &QueuedMessage) {}

    fn len(&self) -> usize {
        self.fifo.len() + self.requeued.len()
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn purge(&mut self) -> usize {
        let n = self.len();
        self.fifo.clear();
        self.requeued.clear();
        self.bytes = 0;
        n
    }
}

/// x-max-priority: one store per priority level, highest served first. A message's level
/// is its priority capped at the maximum (RabbitMQ treats higher values as the maximum).
pub struct PriorityStore {
    levels: Vec<Box<dyn MessageStore>>,
}

impl PriorityStore {
    /// `levels[p]` holds priority p; there must be at least one.
    pub fn new(levels: Vec<Box<dyn MessageStore>>) -> PriorityStore {
        assert!(!levels.is_empty(), "a priority store needs a level");
        PriorityStore { levels }
    }

    fn level_of(&self, m: &QueuedMessage) -> usize {
        usize::from(m.msg.priority).min(self.levels.len() - 1)
    }

    fn top(&mut self) -> Option<&mut Box<dyn MessageStore>> {
        self.levels.iter_mut().rev().find(|l| !l.is_empty())
    }
}

impl MessageStore for PriorityStore {
    fn push(&mut self, m: QueuedMessage) -> Result<Durability, StoreFailed> {
        let l = self.level_of(&m);
        self.levels[l].push(m)
    }

    fn peek(&mut self) -> Option<&QueuedMessage> {
        // Find the level first: a disk level reports its length without reading.
        let i = self.levels.iter().rposition(|l| !l.is_empty())?;
        self.levels[i].peek()
    }

    fn pop(&mut self) -> Option<QueuedMessage> {
        self.top()?.pop()
    }

    /// Highest level first, as delivered.
    fn peek_range(&mut self, mut offset: usize, count: usize) -> Vec<QueuedMessage> {
        let mut out = Vec::new();
        for l in self.levels.iter_mut().rev() {
            if out.len() >= count {
                break;
            }
            let n = l.len();
            if offset >= n {
                offset -= n;
                continue;
            }
            out.extend(l.peek_range(offset, count - out.len()));
            offset = 0;
        }
        out
    }

    fn requeue(&mut self, m: QueuedMessage) {
        let l = self.level_of(&m);
        self.levels[l].requeue(m);
    }

    fn ack(&mut self, m: &QueuedMessage) {
        let l = self.level_of(m);
        self.levels[l].ack(m);
    }

    fn len(&self) -> usize {
        self.levels.iter().map(|l| l.len()).sum()
    }

    fn bytes(&self) -> u64 {
        self.levels.iter().map(|l| l.bytes()).sum()
    }

    fn ram_bytes(&self) -> u64 {
        self.levels.iter().map(|l| l.ram_bytes()).sum()
    }

    fn purge(&mut self) -> usize {
        self.levels.iter_mut().map(|l| l.purge()).sum()
    }

    fn delivered(&mut self, m: &QueuedMessage) {
        let l = self.level_of(m);
        self.levels[l].delivered(m);
    }

    fn last_seq(&self) -> Option<u64> {
        self.levels.iter().filter_map(|l| l.last_seq()).max()
    }

    fn destroy(&mut self) {
        for l in &mut self.levels {
            l.destroy();
        }
    }

    fn near_ram_budget(&self) -> bool {
        self.levels.iter().any(|l| l.near_ram_budget())
    }

    fn tick(&mut self) {
        for l in &mut self.levels {
            if !l.is_empty() {
                l.tick();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::message::Message;

    fn queued(seq: u64, priority: u8) -> QueuedMessage {
        let msg = Arc::new(Message {
            exchange: String::new(),
            routing_key: "q".into(),
            properties: Bytes::new(),
            body: Bytes::from(seq.to_le_bytes().to_vec()),
            persistent: false,
            priority,
            expiration_ms: None,
        });
        QueuedMessage { msg, seq, redelivered: false, expires_at_ms: 0, delivery_count: 0, disk: None }
    }

    fn seqs(v: &[QueuedMessage]) -> Vec<u64> {
        v.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn memory_peek_range_follows_delivery_order_and_leaves_the_store_alone() {
        let mut s = MemoryStore::new();
        for i in 0..10 {
            let _ = s.push(queued(i, 0)).unwrap();
        }
        let a = s.pop().unwrap();
        let b = s.pop().unwrap();
        s.requeue(b);
        s.requeue(a);
        assert_eq!(seqs(&s.peek_range(0, 3)), vec![0, 1, 2]);
        assert_eq!(seqs(&s.peek_range(8, 5)), vec![8, 9]);
        assert!(s.peek_range(10, 1).is_empty());
        assert_eq!(s.len(), 10);
        assert_eq!(s.pop().unwrap().seq, 0);
    }

    #[test]
    fn priority_peek_range_starts_with_the_highest_level() {
        let mut s = PriorityStore::new(vec![Box::new(MemoryStore::new()), Box::new(MemoryStore::new())]);
        for i in 0..6 {
            let _ = s.push(queued(i, (i % 2) as u8)).unwrap();
        }
        assert_eq!(seqs(&s.peek_range(0, 10)), vec![1, 3, 5, 0, 2, 4]);
        assert_eq!(seqs(&s.peek_range(2, 3)), vec![5, 0, 2]);
        assert_eq!(seqs(&s.peek_range(4, 3)), vec![2, 4]);
        assert_eq!(s.len(), 6);
    }
}
