//! The routing/queue core without sockets: a fake consumer sink stands in for a channel.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use broker::exchange::ExchangeOptions;
use broker::queue::{Consumer, QueueOptions, next_consumer_id};
use broker::{ConsumerSink, ExchangeKind, Message, Queue, QueuedMessage, VHost};
use bytes::Bytes;
use parking_lot::Mutex;
use proptest::prelude::*;
use wire::{FieldTable, FieldValue};

/// A consumer with a credit limit that records what it received.
struct Sink {
    credit: AtomicU32,
    got: Mutex<Vec<QueuedMessage>>,
    no_ack: bool,
    cancelled: AtomicU32,
}

impl Sink {
    fn new(credit: u32) -> Arc<Sink> {
        Arc::new(Sink {
            credit: AtomicU32::new(credit),
            got: Mutex::new(Vec::new()),
            no_ack: false,
            cancelled: AtomicU32::new(0),
        })
    }
    fn bodies(&self) -> Vec<String> {
        self.got.lock().iter().map(|m| String::from_utf8_lossy(&m.msg.body).into_owned()).collect()
    }
}

impl ConsumerSink for Sink {
    fn try_deliver(&self, _q: &Arc<Queue>, m: QueuedMessage) -> Result<(), QueuedMessage> {
        if self.credit.load(Ordering::Relaxed) == 0 {
            return Err(m);
        }
        self.credit.fetch_sub(1, Ordering::Relaxed);
        self.got.lock().push(m);
        Ok(())
    }
    fn no_ack(&self) -> bool {
        self.no_ack
    }
    fn cancelled_by_broker(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }
}

fn msg(body: &str) -> Arc<Message> {
    Arc::new(Message {
        exchange: String::new(),
        routing_key: String::new(),
        properties: Bytes::from_static(&[0, 0]),
        body: Bytes::copy_from_slice(body.as_bytes()),
        persistent: false,
        priority: 0,
        expiration_ms: None,
    })
}

fn opts() -> QueueOptions {
    QueueOptions { durable: false, exclusive: false, auto_delete: false, arguments: FieldTable::new() }
}

fn consume(q: &Arc<Queue>, sink: &Arc<Sink>) -> u64 {
    let id = next_consumer_id();
    q.add_consumer(Consumer { id, tag: format!("c{id}"), exclusive: false, priority: 0, sink: sink.clone() }, || {})
        .unwrap();
    id
}

#[test]
fn round_robin_between_consumers() {
    let q = Queue::new("/", "q".into(), opts(), None);
    let (a, b) = (Sink::new(100), Sink::new(100));
    consume(&q, &a);
    consume(&q, &b);
    for i in 0..10 {
        q.publish(msg(&i.to_string()));
    }
    assert_eq!(a.bodies(), ["0", "2", "4", "6", "8"]);
    assert_eq!(b.bodies(), ["1", "3", "5", "7", "9"]);
}

#[test]
fn fair_dispatch_skips_consumers_without_credit() {
    let q = Queue::new("/", "q".into(), opts(), None);
    let (slow, fast) = (Sink::new(1), Sink::new(100));
    consume(&q, &slow);
    consume(&q, &fast);
    for i in 0..6 {
        q.publish(msg(&i.to_string()));
    }
    assert_eq!(slow.bodies(), ["0"]);
    assert_eq!(fast.bodies(), ["1", "2", "3", "4", "5"]);
    // The slow consumer acks and gets credit back: the next message goes to it again.
    slow.credit.store(1, Ordering::Relaxed);
    q.publish(msg("6"));
    assert_eq!(slow.bodies(), ["0", "6"]);
}

#[test]
fn messages_wait_until_credit_then_flow() {
    let q = Queue::new("/", "q".into(), opts(), None);
    let s = Sink::new(0);
    consume(&q, &s);
    for i in 0..3 {
        q.publish(msg(&i.to_string()));
    }
    assert_eq!(q.stats().messages_ready, 3);
    s.credit.store(2, Ordering::Relaxed);
    q.dispatch();
    assert_eq!(s.bodies(), ["0", "1"]);
    assert_eq!(q.stats().messages_ready, 1);
    assert_eq!(q.stats().messages_unacked, 2);
}

#[test]
fn requeued_messages_keep_their_place_and_are_redelivered() {
    let q = Queue::new("/", "q".into(), opts(), None);
    for i in 0..5 {
        q.publish(msg(&i.to_string()));
    }
    let (m0, _) = q.get(false).unwrap();
    let (m1, _) = q.get(false).unwrap();
    // Requeue in reverse order: the queue still puts 0 before 1 before the rest.
    q.requeue(vec![m1]);
    q.requeue(vec![m0]);
    let order: Vec<(String, bool)> = std::iter::from_fn(|| q.get(true))
        .map(|(m, _)| (String::from_utf8_lossy(&m.msg.body).into_owned(), m.redelivered))
        .collect();
    assert_eq!(
        order,
        [("0".into(), true), ("1".into(), true), ("2".into(), false), ("3".into(), false), ("4".into(), false)]
    );
}

#[test]
fn exclusive_consumer_conflicts() {
    let q = Queue::new("/", "q".into(), opts(), None);
    let a = Sink::new(1);
    q.add_consumer(
        Consumer { id: next_consumer_id(), tag: "a".into(), exclusive: true, priority: 0, sink: a.clone() },
        || {},
    )
    .unwrap();
    let err = q.add_consumer(
        Consumer { id: next_consumer_id(), tag: "b".into(), exclusive: false, priority: 0, sink: a },
        || {},
    );
    assert_eq!(err.unwrap_err().code, 403);
}

#[test]
fn auto_delete_reported_on_last_consumer() {
    let q = Queue::new("/", "q".into(), QueueOptions { auto_delete: true, ..opts() }, None);
    let s = Sink::new(1);
    let a = consume(&q, &s);
    let b = consume(&q, &s);
    assert!(!q.remove_consumer(a));
    assert!(q.remove_consumer(b));
}

/// A closing connection's exclusive queues, found through the per-connection index.
#[test]
fn exclusive_queues_by_owner() {
    let vh = VHost::new("/");
    let excl = QueueOptions { exclusive: true, ..opts() };
    for (name, conn) in [("a", 1), ("b", 1), ("c", 2)] {
        vh.declare_queue(name, false, excl.clone(), conn).unwrap();
    }
    vh.declare_queue("shared", false, opts(), 1).unwrap();
    let names = |conn| {
        let mut v: Vec<String> = vh.queues_owned_by(conn).iter().map(|q| q.name.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(names(1), ["a", "b"]);
    assert_eq!(names(2), ["c"]);
    vh.delete_queue("a", false, false, 1).unwrap();
    assert_eq!(names(1), ["b"]);
    for q in vh.queues_owned_by(1) {
        vh.remove_queue(&q);
    }
    assert!(names(1).is_empty());
    assert_eq!(names(2), ["c"]);
    assert!(vh.queue("shared", 1).is_ok());
}

/// A closing channel removes its consumers of one queue in one call: the others keep
/// taking turns, and removing the rest reports the auto-delete queue's last consumer gone.
#[test]
fn consumers_removed_in_one_batch() {
    let q = Queue::new("/", "q".into(), QueueOptions { auto_delete: true, ..opts() }, None);
    let sinks: Vec<Arc<Sink>> = (0..6).map(|_| Sink::new(10)).collect();
    let ids: Vec<u64> = sinks.iter().map(|s| consume(&q, s)).collect();
    for i in 0..3 {
        q.publish(msg(&format!("m{i}")));
    }
    // Consumers 0..3 got one each; the next turn is consumer 3's. Remove 0, 2 and 4.
    assert!(!q.remove_consumers(&[ids[0], ids[2], ids[4]]));
    assert_eq!(q.consumer_count(), 3);
    for i in 3..6 {
        q.publish(msg(&format!("m{i}")));
    }
    let got: Vec<Vec<String>> = sinks.iter().map(|s| s.bodies()).collect();
    assert_eq!(got[1], ["m1", "m5"]);
    assert_eq!(got[3], ["m3"]);
    assert_eq!(got[5], ["m4"]);
    assert!(!q.remove_consumers(&[ids[0], ids[2]]), "already gone");
    assert!(q.remove_consumers(&[ids[1], ids[3], ids[5]]));
    assert_eq!(q.consumer_count(), 0);
}

proptest! {
    /// Whatever mix of publish, get and requeue, the ready messages come out in
    /// publish order with requeued ones back at their original position.
    #[test]
    fn queue_order_matches_model(ops in proptest::collection::vec(0u8..4, 1..200)) {
        let q = Queue::new("/", "q".into(), opts(), None);
        let mut model: VecDeque<u64> = VecDeque::new(); // ready seqs, sorted
        let mut held: Vec<QueuedMessage> = Vec::new();
        let mut next = 0u64;
        for op in ops {
            match op {
                0 | 1 => {
                    q.publish(msg(&next.to_string()));
                    model.push_back(next);
                    next += 1;
                }
                2 => {
                    let got = q.get(false).map(|(m, _)| m);
                    prop_assert_eq!(got.as_ref().map(|m| m.seq), model.pop_front());
                    held.extend(got);
                }
                _ => {
                    if let Some(m) = held.pop() {
                        let at = model.partition_point(|s| *s < m.seq);
                        model.insert(at, m.seq);
                        q.requeue(vec![m]);
                    }
                }
            }
            prop_assert_eq!(q.stats().messages_ready as usize, model.len());
        }
    }
}

fn exchange_opts(kind: ExchangeKind) -> ExchangeOptions {
    ExchangeOptions {
        kind,
        delayed: false,
        durable: false,
        auto_delete: false,
        internal: false,
        arguments: FieldTable::new(),
    }
}

fn routed(vh: &VHost, exchange: &str, key: &str, headers: Option<FieldTable>) -> Vec<String> {
    let e = vh.exchange(exchange).unwrap();
    let mut out = Vec::new();
    let mut h = || headers.clone();
    vh.route(&e, key, &mut h, &mut out);
    let mut names: Vec<String> = out.iter().map(|q| q.name.clone()).collect();
    names.sort();
    names
}

#[test]
fn default_and_predeclared_exchanges() {
    let vh = VHost::new("/");
    for name in ["", "amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"] {
        assert!(vh.exchange(name).is_ok(), "{name}");
    }
    assert_eq!(vh.declare_exchange("amq.custom", false, exchange_opts(ExchangeKind::Direct)).unwrap_err().code, 403);
    vh.declare_queue("q1", false, opts(), 1).unwrap();
    assert_eq!(routed(&vh, "", "q1", None), ["q1"]);
    assert!(routed(&vh, "", "nope", None).is_empty());
}

#[test]
fn declare_checks() {
    let vh = VHost::new("/");
    let (q, created) = vh.declare_queue("", false, opts(), 1).unwrap();
    assert!(created && q.name.starts_with("amq.gen-") && q.name.len() == "amq.gen-".len() + 22);
    assert_eq!(vh.declare_queue("missing", true, opts(), 1).unwrap_err().code, 404);
    vh.declare_queue("d", false, QueueOptions { durable: true, ..opts() }, 1).unwrap();
    assert_eq!(vh.declare_queue("d", false, opts(), 1).unwrap_err().code, 406);
    vh.declare_queue("x", false, QueueOptions { exclusive: true, ..opts() }, 1).unwrap();
    assert_eq!(vh.declare_queue("x", false, QueueOptions { exclusive: true, ..opts() }, 2).unwrap_err().code, 405);
    assert_eq!(vh.queue("x", 2).unwrap_err().code, 405);
    assert!(vh.queue("x", 1).is_ok());
    let mut args = FieldTable::new();
    args.insert("x-message-ttl", FieldValue::I32(1000));
    vh.declare_queue("a", false, QueueOptions { arguments: args.clone(), ..opts() }, 1).unwrap();
    // Same value under another integer type is equivalent, as in RabbitMQ.
    let mut args64 = FieldTable::new();
    args64.insert("x-message-ttl", FieldValue::I64(1000));
    vh.declare_queue("a", false, QueueOptions { arguments: args64, ..opts() }, 1).unwrap();
    assert_eq!(vh.declare_queue("a", false, opts(), 1).unwrap_err().code, 406);
    vh.declare_exchange("e", false, exchange_opts(ExchangeKind::Direct)).unwrap();
    assert_eq!(vh.declare_exchange("e", false, exchange_opts(ExchangeKind::Fanout)).unwrap_err().code, 406);
}

#[test]
fn routing_through_every_kind_and_exchange_bindings() {
    let vh = VHost::new("/");
    for q in ["qa", "qb", "qc"] {
        vh.declare_queue(q, false, opts(), 1).unwrap();
    }
    vh.declare_exchange("logs", false, exchange_opts(ExchangeKind::Fanout)).unwrap();
    vh.declare_exchange("topic", false, exchange_opts(ExchangeKind::Topic)).unwrap();
    vh.declare_exchange("hdr", false, exchange_opts(ExchangeKind::Headers)).unwrap();
    vh.bind_queue("qa", "logs", "", FieldTable::new(), 1).unwrap();
    vh.bind_queue("qb", "logs", "", FieldTable::new(), 1).unwrap();
    assert_eq!(routed(&vh, "logs", "anything", None), ["qa", "qb"]);

    vh.bind_queue("qa", "topic", "kern.*", FieldTable::new(), 1).unwrap();
    vh.bind_queue("qb", "topic", "*.critical", FieldTable::new(), 1).unwrap();
    vh.bind_queue("qc", "topic", "#", FieldTable::new(), 1).unwrap();
    assert_eq!(routed(&vh, "topic", "kern.critical", None), ["qa", "qb", "qc"]);
    assert_eq!(routed(&vh, "topic", "kern", None), ["qc"]);

    let mut bind = FieldTable::new();
    bind.insert("x-match", FieldValue::LongStr(Bytes::from_static(b"any")));
    bind.insert("format", FieldValue::LongStr(Bytes::from_static(b"pdf")));
    bind.insert("type", FieldValue::LongStr(Bytes::from_static(b"report")));
    vh.bind_queue("qc", "hdr", "", bind, 1).unwrap();
    let mut h = FieldTable::new();
    h.insert("type", FieldValue::LongStr(Bytes::from_static(b"report")));
    assert_eq!(routed(&vh, "hdr", "", Some(h)), ["qc"]);
    assert!(routed(&vh, "hdr", "", None).is_empty());

    // logs -> topic (e2e), and a cycle topic -> logs must not loop.
    vh.bind_exchange("topic", "logs", "", FieldTable::new()).unwrap();
    vh.bind_exchange("logs", "topic", "#", FieldTable::new()).unwrap();
    assert_eq!(routed(&vh, "logs", "kern.x", None), ["qa", "qb", "qc"]);
    vh.unbind_exchange("topic", "logs", "", FieldTable::new()).unwrap();
    assert_eq!(routed(&vh, "logs", "kern.x", None), ["qa", "qb"]);

    // Deleting a queue removes its bindings.
    vh.delete_queue("qa", false, false, 1).unwrap();
    assert_eq!(routed(&vh, "logs", "x", None), ["qb"]);
}

#[test]
fn auto_delete_exchange_goes_with_last_binding() {
    let vh = VHost::new("/");
    vh.declare_queue("q", false, opts(), 1).unwrap();
    vh.declare_exchange("ad", false, ExchangeOptions { auto_delete: true, ..exchange_opts(ExchangeKind::Direct) })
        .unwrap();
    vh.bind_queue("q", "ad", "k", FieldTable::new(), 1).unwrap();
    vh.unbind_queue("q", "ad", "k", FieldTable::new(), 1).unwrap();
    assert_eq!(vh.exchange("ad").unwrap_err().code, 404);
}

#[test]
fn auto_delete_cascades_up_exchange_to_exchange_chains() {
    // outer -> inner -> q, both exchanges auto-delete (amqp091-go's recovery test): the
    // queue's deletion empties inner, whose deletion empties outer.
    let vh = VHost::new("/");
    let ad = |kind| ExchangeOptions { auto_delete: true, ..exchange_opts(kind) };
    vh.declare_exchange("outer", false, ad(ExchangeKind::Fanout)).unwrap();
    vh.declare_exchange("inner", false, ad(ExchangeKind::Direct)).unwrap();
    vh.declare_exchange("keep", false, exchange_opts(ExchangeKind::Fanout)).unwrap();
    vh.bind_exchange("inner", "outer", "", FieldTable::new()).unwrap();
    vh.bind_exchange("inner", "keep", "", FieldTable::new()).unwrap();
    vh.declare_queue("q", false, opts(), 1).unwrap();
    vh.bind_queue("q", "inner", "k", FieldTable::new(), 1).unwrap();
    vh.delete_queue("q", false, false, 1).unwrap();
    for gone in ["inner", "outer"] {
        assert_eq!(vh.exchange(gone).unwrap_err().code, 404, "{gone}");
    }
    assert!(vh.exchange("keep").is_ok(), "not auto-delete: stays, without its binding");
    // exchange.delete of a destination empties its auto-delete sources too.
    vh.declare_exchange("src", false, ad(ExchangeKind::Fanout)).unwrap();
    vh.declare_exchange("dst", false, exchange_opts(ExchangeKind::Fanout)).unwrap();
    vh.bind_exchange("dst", "src", "", FieldTable::new()).unwrap();
    vh.delete_exchange("dst", false).unwrap();
    assert_eq!(vh.exchange("src").unwrap_err().code, 404);
}

#[test]
fn deleting_a_queue_cancels_its_consumers() {
    let vh = VHost::new("/");
    let (q, _) = vh.declare_queue("q", false, opts(), 1).unwrap();
    let s = Sink::new(10);
    consume(&q, &s);
    q.publish(msg("m"));
    let d = vh.delete_queue("q", false, false, 1).unwrap();
    assert_eq!(d.consumers.len(), 1);
    assert_eq!(q.publish(msg("late")), broker::queue::PublishOutcome::Deleted, "a deleted queue takes no messages");
    assert_eq!(vh.delete_queue("q", false, false, 1).unwrap().message_count, 0);
}

#[test]
fn delete_if_unused_and_if_empty() {
    let vh = VHost::new("/");
    let (q, _) = vh.declare_queue("q", false, opts(), 1).unwrap();
    q.publish(msg("m"));
    assert_eq!(vh.delete_queue("q", false, true, 1).unwrap_err().code, 406);
    let s = Sink::new(0);
    consume(&q, &s);
    assert_eq!(vh.delete_queue("q", true, false, 1).unwrap_err().code, 406);
    assert_eq!(vh.delete_queue("q", false, false, 1).unwrap().message_count, 1);
}

fn ex_opts(kind: ExchangeKind, auto_delete: bool) -> ExchangeOptions {
    ExchangeOptions { kind, delayed: false, durable: false, auto_delete, internal: false, arguments: FieldTable::new() }
}

/// Node limits on queues, exchanges and bindings: reaching one is 406 with a clear text
/// (RabbitMQ's for queues), and every way of removing something gives its unit back —
/// queue.delete, exchange.delete (with its own bindings), unbind, a deleted queue's
/// bindings, an auto-deleted exchange, an exclusive queue whose connection closed.
#[test]
fn node_limits_on_queues_exchanges_and_bindings_count_exactly() {
    use broker::clock::SystemClock;
    use broker::limits::{Limits, NodeLimits};
    let node = Arc::new(NodeLimits::new(Limits { queue_max_count: 3, exchange_max_count: 2, binding_max_count: 4 }));
    let vh = VHost::with_limits("/", Arc::new(broker::vhost::InMemory), Arc::new(SystemClock), node.clone());
    for q in ["q1", "q2", "q3"] {
        vh.declare_queue(q, false, opts(), 1).expect("under the queue limit");
    }
    let e = vh.declare_queue("q4", false, opts(), 1).expect_err("over the queue limit");
    assert_eq!(e.code, 406);
    assert_eq!(e.text, "cannot declare queue 'q4': queue limit in cluster (3) is reached");
    // A redeclare of an existing queue is not a new one.
    vh.declare_queue("q1", false, opts(), 1).expect("redeclare");
    vh.declare_exchange("x1", false, ex_opts(ExchangeKind::Direct, false)).expect("exchange 1");
    vh.declare_exchange("x2", false, ex_opts(ExchangeKind::Fanout, true)).expect("exchange 2");
    let e = vh.declare_exchange("x3", false, ex_opts(ExchangeKind::Topic, false)).expect_err("over");
    assert_eq!((e.code, e.text.as_str()), (406, "cannot declare exchange 'x3': exchange limit (2) is reached"));
    vh.bind_queue("q1", "x1", "a", FieldTable::new(), 1).expect("binding 1");
    vh.bind_queue("q2", "x1", "a", FieldTable::new(), 1).expect("binding 2");
    vh.bind_queue("q1", "x1", "a", FieldTable::new(), 1).expect("the same binding again");
    vh.bind_queue("q3", "x2", "", FieldTable::new(), 1).expect("binding 3");
    vh.bind_exchange("x2", "x1", "b", FieldTable::new()).expect("binding 4");
    let e = vh.bind_queue("q3", "x1", "c", FieldTable::new(), 1).expect_err("over the binding limit");
    assert_eq!((e.code, e.text.as_str()), (406, "cannot bind: binding limit (4) is reached"));
    assert_eq!(node.used(), (3, 2, 4));
    // Unbind gives one back.
    vh.unbind_queue("q2", "x1", "a", FieldTable::new(), 1).expect("unbind");
    assert_eq!(node.used(), (3, 2, 3));
    // Deleting q3 takes its binding from x2; that was x2's last binding, so the
    // auto-delete x2 goes too, with the binding x1 → x2.
    vh.delete_queue("q3", false, false, 1).expect("delete q3");
    assert_eq!(node.used(), (2, 1, 1), "q3, its binding, x2 and the binding to x2 are gone");
    // Deleting x1 takes its own bindings (to q1).
    vh.delete_exchange("x1", false).expect("delete x1");
    let queues = node.used().0;
    assert_eq!(node.used(), (2, 0, 0), "x1 and its binding are gone");
    // Exclusive queues of a closing connection.
    vh.declare_queue("excl", false, QueueOptions { exclusive: true, ..opts() }, 7).expect("exclusive");
    assert_eq!(node.used().0, queues + 1);
    for q in vh.queues_owned_by(7) {
        vh.remove_queue(&q);
    }
    assert_eq!(node.used().0, queues);
    // Room again for what was refused.
    vh.declare_queue("q4", false, opts(), 1).expect("room for q4 now");
    vh.declare_exchange("x3", false, ex_opts(ExchangeKind::Topic, false)).expect("room for x3 now");
    vh.bind_queue("q4", "x3", "c", FieldTable::new(), 1).expect("room for a binding");
}

/// queue.bind racing queue.delete of the same queue (issue 9's check-then-act race): the
/// bind either comes first (and the delete removes its binding) or fails with 404, so no
/// exchange is left holding a binding to a queue that no longer exists.
#[test]
fn a_bind_racing_a_queue_delete_leaves_no_binding_to_a_deleted_queue() {
    let vh = VHost::new("/");
    let direct = ExchangeOptions {
        kind: ExchangeKind::Direct,
        delayed: false,
        durable: false,
        auto_delete: false,
        internal: false,
        arguments: FieldTable::new(),
    };
    let x = vh.declare_exchange("x", false, direct).unwrap();
    let opts = QueueOptions { durable: false, exclusive: false, auto_delete: false, arguments: FieldTable::new() };
    for round in 0..400 {
        vh.declare_queue("q", false, opts.clone(), 1).unwrap();
        let go = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                go.wait();
                // Until the delete wins (bounded, in case it never does).
                for i in 0..100_000 {
                    match vh.bind_queue("q", "x", &format!("k{round}.{i}"), FieldTable::new(), 1) {
                        Ok(()) => {}
                        Err(e) => {
                            assert_eq!(e.code, wire::reply::NOT_FOUND);
                            break;
                        }
                    }
                }
            });
            s.spawn(|| {
                go.wait();
                for _ in 0..round % 7 {
                    std::thread::yield_now();
                }
                vh.delete_queue("q", false, false, 1).unwrap();
            });
        });
        assert_eq!(x.binding_count(), 0, "round {round}: a binding outlived its queue: {:?}", x.bindings());
    }
}
