//! Flow control in the core: a queue whose backlog nears its store's RAM budget while its
//! consumers are held back only by their write buffers asks publishers to pause, and wakes
//! them when that ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use broker::queue::{Consumer, QueueOptions, next_consumer_id};
use broker::store::{MemoryStore, MessageStore};
use broker::vhost::Persistence;
use broker::{ConsumerSink, Message, Queue, QueuedMessage, VHost};
use bytes::Bytes;
use parking_lot::Mutex;
use wire::FieldTable;

/// A RAM store that says it is near its budget from `limit` ready messages on.
struct SmallStore {
    inner: MemoryStore,
    limit: usize,
}

impl MessageStore for SmallStore {
    fn push(&mut self, m: QueuedMessage) -> Result<broker::store::Durability, broker::store::StoreFailed> {
        self.inner.push(m)
    }
    fn peek(&mut self) -> Option<&QueuedMessage> {
        self.inner.peek()
    }
    fn pop(&mut self) -> Option<QueuedMessage> {
        self.inner.pop()
    }
    fn peek_range(&mut self, offset: usize, count: usize) -> Vec<QueuedMessage> {
        self.inner.peek_range(offset, count)
    }
    fn requeue(&mut self, m: QueuedMessage) {
        self.inner.requeue(m)
    }
    fn ack(&mut self, m: &QueuedMessage) {
        self.inner.ack(m)
    }
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn bytes(&self) -> u64 {
        self.inner.bytes()
    }
    fn purge(&mut self) -> usize {
        self.inner.purge()
    }
    fn near_ram_budget(&self) -> bool {
        self.inner.len() >= self.limit
    }
}

struct Small(usize);

impl Persistence for Small {
    fn queue_store(
        &self,
        _vhost: &str,
        _queue: &str,
        _options: &QueueOptions,
    ) -> Result<Box<dyn MessageStore>, broker::AmqpError> {
        Ok(Box::new(SmallStore { inner: MemoryStore::new(), limit: self.0 }))
    }
}

/// A consumer whose "socket" is either writable (takes everything) or full, or which is
/// out of prefetch credit (refuses, but is not write-blocked).
#[derive(Default)]
struct Sink {
    socket_full: AtomicBool,
    no_credit: AtomicBool,
    got: Mutex<Vec<QueuedMessage>>,
}

impl ConsumerSink for Sink {
    fn try_deliver(&self, _q: &Arc<Queue>, m: QueuedMessage) -> Result<(), QueuedMessage> {
        if self.socket_full.load(Ordering::Relaxed) || self.no_credit.load(Ordering::Relaxed) {
            return Err(m);
        }
        self.got.lock().push(m);
        Ok(())
    }
    fn no_ack(&self) -> bool {
        true
    }
    fn cancelled_by_broker(&self) {}
    fn write_blocked(&self) -> bool {
        self.socket_full.load(Ordering::Relaxed) && !self.no_credit.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct CountingWaker(AtomicU32);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn msg(n: usize) -> Arc<Message> {
    Arc::new(Message {
        exchange: String::new(),
        routing_key: "q".into(),
        properties: Bytes::from_static(&[0, 0]),
        body: Bytes::from(format!("m{n}")),
        persistent: false,
        priority: 0,
        expiration_ms: None,
    })
}

fn setup(limit: usize) -> (Arc<VHost>, Arc<Queue>, Arc<Sink>, u64) {
    let vh = VHost::with_persistence("/", Arc::new(Small(limit)));
    let opts = QueueOptions { durable: false, exclusive: false, auto_delete: false, arguments: FieldTable::new() };
    let (q, _) = vh.declare_queue("q", false, opts, 1).unwrap();
    let sink = Arc::new(Sink::default());
    let id = next_consumer_id();
    q.add_consumer(Consumer { id, tag: "c".into(), exclusive: false, priority: 0, sink: sink.clone() }, || {}).unwrap();
    (vh, q, sink, id)
}

#[test]
fn flow_starts_near_the_budget_with_write_blocked_consumers_and_wakes_publishers_when_it_ends() {
    let (_vh, q, sink, _) = setup(4);
    // A writable consumer takes everything: no backlog, no flow.
    for i in 0..10 {
        q.publish(msg(i));
    }
    assert!(!q.in_flow());
    assert_eq!(q.deliveries(), 10);

    // The consumer's socket is full: the backlog grows; flow from 4 ready messages on.
    sink.socket_full.store(true, Ordering::Relaxed);
    for i in 10..13 {
        q.publish(msg(i));
        assert!(!q.in_flow(), "below the budget mark at {} ready", q.stats().messages_ready);
    }
    q.publish(msg(13));
    assert!(q.in_flow());

    // A paused publisher registers and is pending while flow lasts.
    let counter = Arc::new(CountingWaker::default());
    let waker = Waker::from(counter.clone());
    let mut cx = Context::from_waker(&waker);
    assert_eq!(q.poll_flow_cleared(&mut cx), Poll::Pending);
    assert_eq!(q.poll_flow_cleared(&mut cx), Poll::Pending, "registering twice is harmless");

    // The socket drains and the queue dispatches: flow ends, the publisher is woken once,
    // and nothing was lost or reordered.
    sink.socket_full.store(false, Ordering::Relaxed);
    q.dispatch();
    assert!(!q.in_flow());
    assert_eq!(counter.0.load(Ordering::Relaxed), 1);
    assert_eq!(q.poll_flow_cleared(&mut cx), Poll::Ready(()));
    let bodies: Vec<String> =
        sink.got.lock().iter().map(|m| String::from_utf8_lossy(&m.msg.body).into_owned()).collect();
    assert_eq!(bodies, (0..14).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert_eq!(q.deliveries(), 14);
}

#[test]
fn no_flow_for_consumers_out_of_credit_or_for_queues_without_consumers() {
    // A slow worker (prefetch used up) must not slow publishers down: the queue is a buffer.
    let (_vh, q, sink, id) = setup(2);
    sink.no_credit.store(true, Ordering::Relaxed);
    for i in 0..10 {
        q.publish(msg(i));
    }
    assert!(!q.in_flow());

    // Write-blocked: flow. The last consumer goes: flow ends and paused publishers wake.
    sink.no_credit.store(false, Ordering::Relaxed);
    sink.socket_full.store(true, Ordering::Relaxed);
    q.publish(msg(10));
    assert!(q.in_flow());
    let counter = Arc::new(CountingWaker::default());
    let waker = Waker::from(counter.clone());
    assert_eq!(q.poll_flow_cleared(&mut Context::from_waker(&waker)), Poll::Pending);
    q.remove_consumer(id);
    assert!(!q.in_flow());
    assert_eq!(counter.0.load(Ordering::Relaxed), 1);
    q.publish(msg(11));
    assert!(!q.in_flow(), "a queue with no consumer pages; it never asks for flow");
    assert_eq!(q.stats().messages_ready, 12);
}
