//! RabbitMQ's queue extensions in the core, driven by a manual clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use broker::clock::ManualClock;
use broker::exchange::ExchangeOptions;
use broker::queue::{Consumer, PublishOutcome, QueueOptions, next_consumer_id};
use broker::vhost::InMemory;
use broker::{ConsumerSink, ExchangeKind, Message, Queue, QueuedMessage, VHost};
use bytes::Bytes;
use parking_lot::Mutex;
use wire::{BasicProperties, FieldTable, FieldValue};

struct Sink {
    credit: AtomicU32,
    got: Mutex<Vec<QueuedMessage>>,
}

impl Sink {
    fn new(credit: u32) -> Arc<Sink> {
        Arc::new(Sink { credit: AtomicU32::new(credit), got: Mutex::new(Vec::new()) })
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
        false
    }
    fn cancelled_by_broker(&self) {}
}

fn s(v: &str) -> FieldValue {
    FieldValue::LongStr(Bytes::copy_from_slice(v.as_bytes()))
}

fn msg(body: &str) -> Arc<Message> {
    msg_with(body, 0, None)
}

fn msg_with(body: &str, priority: u8, expiration_ms: Option<u64>) -> Arc<Message> {
    let mut props = Vec::new();
    BasicProperties { expiration: expiration_ms.map(|e| e.to_string()), ..Default::default() }.encode(&mut props);
    Arc::new(Message {
        exchange: "ex".into(),
        routing_key: "rk".into(),
        properties: Bytes::from(props),
        body: Bytes::copy_from_slice(body.as_bytes()),
        persistent: false,
        priority,
        expiration_ms,
    })
}

fn setup() -> (Arc<VHost>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let vh = VHost::with_clock("/", Arc::new(InMemory), clock.clone());
    vh.declare_exchange(
        "dlx",
        false,
        ExchangeOptions {
            kind: ExchangeKind::Fanout,
            delayed: false,
            durable: false,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::new(),
        },
    )
    .unwrap();
    vh.declare_queue("dlq", false, opts(&[]), 1).unwrap();
    vh.bind_queue("dlq", "dlx", "", FieldTable::new(), 1).unwrap();
    (vh, clock)
}

fn opts(args: &[(&str, FieldValue)]) -> QueueOptions {
    let mut t = FieldTable::new();
    for (k, v) in args {
        t.insert(*k, v.clone());
    }
    QueueOptions { durable: false, exclusive: false, auto_delete: false, arguments: t }
}

fn drain(q: &Arc<Queue>) -> Vec<(String, Option<FieldTable>)> {
    std::iter::from_fn(|| q.get(true))
        .map(|(m, _)| {
            let h = BasicProperties::decode(&m.msg.properties).unwrap().headers;
            (String::from_utf8_lossy(&m.msg.body).into_owned(), h)
        })
        .collect()
}

fn consume(q: &Arc<Queue>, sink: &Arc<Sink>, priority: i32) -> u64 {
    let id = next_consumer_id();
    q.add_consumer(Consumer { id, tag: format!("c{id}"), exclusive: false, priority, sink: sink.clone() }, || {})
        .unwrap();
    id
}

#[test]
fn ttl_expires_at_head_and_dead_letters_with_x_death() {
    let (vh, clock) = setup();
    let (q, _) = vh
        .declare_queue(
            "q",
            false,
            opts(&[("x-message-ttl", FieldValue::I32(100)), ("x-dead-letter-exchange", s("dlx"))]),
            1,
        )
        .unwrap();
    q.publish(msg("a"));
    clock.advance(50);
    q.publish(msg("b"));
    clock.advance(60);
    vh.tick();
    let dlq = vh.queue("dlq", 1).unwrap();
    let dead = drain(&dlq);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, "a");
    let h = dead[0].1.clone().unwrap();
    let Some(FieldValue::Array(deaths)) = h.get("x-death") else { panic!("no x-death") };
    let FieldValue::Table(d) = &deaths[0] else { panic!() };
    assert_eq!(d.get("reason").and_then(FieldValue::as_str), Some("expired"));
    assert_eq!(d.get("queue").and_then(FieldValue::as_str), Some("q"));
    assert_eq!(d.get("count").and_then(FieldValue::as_i64), Some(1));
    assert_eq!(d.get("exchange").and_then(FieldValue::as_str), Some("ex"));
    assert_eq!(d.get("routing-keys"), Some(&FieldValue::Array(vec![s("rk")])));
    assert!(matches!(d.get("time"), Some(FieldValue::Timestamp(1000))));
    assert_eq!(h.get("x-first-death-reason").and_then(FieldValue::as_str), Some("expired"));
    // b is still within its TTL
    assert_eq!(drain(&q).iter().map(|x| x.0.clone()).collect::<Vec<_>>(), ["b"]);
}

#[test]
fn per_message_expiration_and_zero_ttl() {
    let (vh, clock) = setup();
    let (q, _) = vh.declare_queue("q", false, opts(&[]), 1).unwrap();
    q.publish(msg_with("short", 0, Some(10)));
    q.publish(msg_with("long", 0, Some(10_000)));
    clock.advance(11);
    assert_eq!(drain(&q).iter().map(|x| x.0.clone()).collect::<Vec<_>>(), ["long"]);
}

#[test]
fn max_length_drop_head_reject_publish_and_dlx() {
    let (vh, _) = setup();
    let (q, _) = vh
        .declare_queue(
            "q",
            false,
            opts(&[("x-max-length", FieldValue::I32(2)), ("x-dead-letter-exchange", s("dlx"))]),
            1,
        )
        .unwrap();
    for b in ["1", "2", "3"] {
        assert!(matches!(q.publish(msg(b)), PublishOutcome::Enqueued(_)));
    }
    assert_eq!(drain(&q).iter().map(|x| x.0.clone()).collect::<Vec<_>>(), ["2", "3"]);
    let dlq = vh.queue("dlq", 1).unwrap();
    let dead = drain(&dlq);
    assert_eq!(dead[0].0, "1");
    let Some(FieldValue::Array(d)) = dead[0].1.as_ref().unwrap().get("x-death") else { panic!() };
    let FieldValue::Table(d) = &d[0] else { panic!() };
    assert_eq!(d.get("reason").and_then(FieldValue::as_str), Some("maxlen"));

    let (r, _) = vh
        .declare_queue(
            "r",
            false,
            opts(&[("x-max-length", FieldValue::I32(1)), ("x-overflow", s("reject-publish"))]),
            1,
        )
        .unwrap();
    assert!(matches!(r.publish(msg("1")), PublishOutcome::Enqueued(_)));
    assert_eq!(r.publish(msg("2")), PublishOutcome::Rejected);
    let (b, _) = vh
        .declare_queue(
            "b",
            false,
            opts(&[
                ("x-max-length-bytes", FieldValue::I32(3)),
                ("x-overflow", s("reject-publish-dlx")),
                ("x-dead-letter-exchange", s("dlx")),
            ]),
            1,
        )
        .unwrap();
    assert!(matches!(b.publish(msg("abc")), PublishOutcome::Enqueued(_)));
    assert_eq!(b.publish(msg("d")), PublishOutcome::Rejected);
    assert_eq!(drain(&dlq).iter().map(|x| x.0.clone()).collect::<Vec<_>>(), ["d"]);
}

#[test]
fn delivery_limit_dead_letters_poison_messages() {
    let (vh, _) = setup();
    let (q, _) = vh
        .declare_queue(
            "q",
            false,
            opts(&[("x-delivery-limit", FieldValue::I32(1)), ("x-dead-letter-exchange", s("dlx"))]),
            1,
        )
        .unwrap();
    q.publish(msg("poison"));
    let (m, _) = q.get(false).unwrap();
    q.requeue(vec![m]);
    let (m, _) = q.get(false).unwrap();
    assert!(m.redelivered);
    q.requeue(vec![m]);
    assert!(q.get(false).is_none());
    let dead = drain(&vh.queue("dlq", 1).unwrap());
    assert_eq!(dead[0].0, "poison");
}

#[test]
fn priority_queue_serves_highest_first_and_caps() {
    let (vh, _) = setup();
    let (q, _) = vh.declare_queue("q", false, opts(&[("x-max-priority", FieldValue::U8(5))]), 1).unwrap();
    for (b, p) in [("low", 1), ("none", 0), ("high", 5), ("over", 200), ("mid", 3)] {
        q.publish(msg_with(b, p, None));
    }
    assert_eq!(drain(&q).iter().map(|x| x.0.clone()).collect::<Vec<_>>(), ["high", "over", "mid", "low", "none"]);
}

#[test]
fn consumer_priorities_and_single_active_consumer() {
    let (vh, _) = setup();
    let (q, _) = vh.declare_queue("q", false, opts(&[]), 1).unwrap();
    let (lo, hi) = (Sink::new(100), Sink::new(2));
    consume(&q, &lo, 0);
    consume(&q, &hi, 10);
    for i in 0..5 {
        q.publish(msg(&i.to_string()));
    }
    assert_eq!(hi.bodies(), ["0", "1"], "the high-priority consumer is served while it has credit");
    assert_eq!(lo.bodies(), ["2", "3", "4"]);

    let (sac, _) =
        vh.declare_queue("sac", false, opts(&[("x-single-active-consumer", FieldValue::Bool(true))]), 1).unwrap();
    let (a, b) = (Sink::new(100), Sink::new(100));
    let ida = consume(&sac, &a, 0);
    consume(&sac, &b, 0);
    for i in 0..3 {
        sac.publish(msg(&i.to_string()));
    }
    assert_eq!(a.bodies(), ["0", "1", "2"]);
    assert!(b.bodies().is_empty());
    sac.remove_consumer(ida);
    sac.publish(msg("3"));
    assert_eq!(b.bodies(), ["3"]);
}

#[test]
fn queue_expires_when_unused() {
    let (vh, clock) = setup();
    vh.declare_queue("q", false, opts(&[("x-expires", FieldValue::I32(1000))]), 1).unwrap();
    clock.advance(500);
    assert!(vh.tick().is_empty());
    vh.declare_queue("q", false, opts(&[("x-expires", FieldValue::I32(1000))]), 1).unwrap(); // redeclare = use
    clock.advance(900);
    assert!(vh.tick().is_empty());
    clock.advance(200);
    assert_eq!(vh.tick().len(), 1);
    assert_eq!(vh.queue("q", 1).unwrap_err().code, 404);
}

#[test]
fn alternate_exchange_takes_unroutable_messages() {
    let (vh, _) = setup();
    let mut args = FieldTable::new();
    args.insert("alternate-exchange", s("dlx"));
    let e = vh
        .declare_exchange(
            "main",
            false,
            ExchangeOptions {
                kind: ExchangeKind::Direct,
                delayed: false,
                durable: false,
                auto_delete: false,
                internal: false,
                arguments: args,
            },
        )
        .unwrap();
    let mut out = Vec::new();
    vh.route(&e, "nowhere", &mut || None, &mut out);
    assert_eq!(out.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(), ["dlq"]);
}

#[test]
fn dead_letter_cycles_are_dropped_unless_rejected() {
    let (vh, clock) = setup();
    // q dead-letters to the default exchange with its own name: an expiry cycle.
    let (q, _) = vh
        .declare_queue(
            "q",
            false,
            opts(&[
                ("x-message-ttl", FieldValue::I32(10)),
                ("x-dead-letter-exchange", s("")),
                ("x-dead-letter-routing-key", s("q")),
            ]),
            1,
        )
        .unwrap();
    q.publish(msg("loop"));
    clock.advance(20);
    vh.tick();
    // It would reach q a second time with no rejection on the way: RabbitMQ drops it.
    assert_eq!(q.stats().messages_ready, 0);

    // A rejection breaks the cycle: the message comes back.
    let (r, _) = vh
        .declare_queue("r", false, opts(&[("x-dead-letter-exchange", s("")), ("x-dead-letter-routing-key", s("r"))]), 1)
        .unwrap();
    r.publish(msg("again"));
    let (m, _) = r.get(false).unwrap();
    r.reject(vec![m]);
    let back = drain(&r);
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].0, "again");
}

#[test]
fn invalid_arguments_are_406_naming_the_argument() {
    let (vh, _) = setup();
    let e = vh.declare_queue("q", false, opts(&[("x-message-ttl", s("soon"))]), 1).unwrap_err();
    assert_eq!(e.code, 406);
    assert!(e.text.contains("'x-message-ttl'"), "{}", e.text);
    let e = vh.declare_queue("q", false, opts(&[("x-overflow", s("explode"))]), 1).unwrap_err();
    assert!(e.text.contains("'x-overflow'"), "{}", e.text);
    let e = vh.declare_queue("q", false, opts(&[("x-queue-type", s("quorum"))]), 1).unwrap_err();
    assert!(e.text.contains("'non-durable'"), "quorum queues are durable: {}", e.text);
    let durable = QueueOptions { durable: true, ..opts(&[("x-queue-type", s("quorum"))]) };
    let (q, _) = vh.declare_queue("qq", false, durable, 1).unwrap();
    assert_eq!(q.effective_args().delivery_limit, Some(20), "RabbitMQ 4.x default delivery limit");
}

#[test]
fn stalled_time_counts_only_while_ready_messages_wait_for_credit() {
    let (vh, clock) = setup();
    let (q, _) = vh.declare_queue("work", false, opts(&[]), 1).unwrap();
    let sink = Sink::new(1);
    consume(&q, &sink, 0);
    // One message, one credit: delivered at once, nothing waits.
    q.publish(msg("a"));
    clock.advance(50);
    assert_eq!(q.stats().stalled_ms, 0);
    // A second message finds the consumer out of credit: a stall starts.
    q.publish(msg("b"));
    clock.advance(300);
    assert_eq!(q.stats().stalled_ms, 300, "an open stall counts up to now");
    // Credit comes back: "b" goes out and the stall ends at 300 ms.
    sink.credit.store(1, Ordering::Relaxed);
    let first = sink.got.lock()[0].clone();
    q.ack(&[first]);
    q.dispatch();
    clock.advance(1_000);
    assert_eq!(q.stats().stalled_ms, 300);
    assert_eq!(sink.bodies(), ["a", "b"]);
    assert_eq!((q.stats().messages_unacked, q.stats().unacked_bytes), (1, 1), "\"b\" is out, unacked");
    // A stall ended by a purge.
    q.publish(msg("c"));
    clock.advance(20);
    q.purge();
    clock.advance(500);
    assert_eq!(q.stats().stalled_ms, 320);
}

/// The housekeeping tick visits only timed queues: those holding messages or with
/// x-expires. A queue joins the set when a message arrives (publish, requeue, a dead
/// letter) or x-expires is declared, and leaves it at the first tick that finds it empty
/// without x-expires; 10,000 idle queues are never visited.
#[test]
fn only_queues_with_messages_or_x_expires_are_timed() {
    let (vh, clock) = setup();
    assert_eq!(vh.timed_queues(), 0, "an empty queue without x-expires is not timed");
    for i in 0..10_000 {
        vh.declare_queue(&format!("idle{i}"), false, opts(&[]), 1).unwrap();
    }
    assert_eq!(vh.timed_queues(), 0, "10,000 idle queues: nothing to visit");
    assert!(vh.tick().is_empty());
    assert_eq!(vh.timed_queues(), 0);

    let (exp, _) = vh.declare_queue("exp", false, opts(&[("x-expires", FieldValue::I32(1000))]), 1).unwrap();
    assert_eq!(vh.timed_queues(), 1, "x-expires needs the timer while the queue is empty");
    let (p, _) = vh.declare_queue("p", false, opts(&[]), 1).unwrap();
    p.publish(msg("a"));
    p.publish(msg("b"));
    assert_eq!(vh.timed_queues(), 2, "a queue joins the set once, however many messages arrive");
    assert!(vh.tick().is_empty());
    assert_eq!(vh.timed_queues(), 2, "both still need it");

    // Consumed empty: out at the next tick. Requeued: back in.
    let sink = Sink::new(10);
    let id = consume(&p, &sink, 0);
    assert_eq!(sink.bodies(), ["a", "b"]);
    assert!(vh.tick().is_empty());
    assert_eq!(vh.timed_queues(), 1, "empty again (the messages are unacked): only exp");
    p.remove_consumer(id);
    p.requeue(std::mem::take(&mut *sink.got.lock()));
    assert_eq!(vh.timed_queues(), 2, "requeued messages need the tick again");
    assert_eq!(drain(&p).len(), 2);
    assert!(vh.tick().is_empty());
    assert_eq!(vh.timed_queues(), 1);

    // A message that expires at the head is dead-lettered by the tick, which puts the
    // dead-letter queue into the set; x-expires still deletes its queue on time.
    let (ttl, _) = vh
        .declare_queue(
            "ttl",
            false,
            opts(&[("x-message-ttl", FieldValue::I32(100)), ("x-dead-letter-exchange", s("dlx"))]),
            1,
        )
        .unwrap();
    assert_eq!(vh.timed_queues(), 1, "message TTL alone, no messages: not timed");
    ttl.publish(msg("old"));
    assert_eq!(vh.timed_queues(), 2);
    clock.advance(200);
    assert!(vh.tick().is_empty());
    assert_eq!(ttl.stats().messages_ready, 0, "expired at the tick");
    assert_eq!(vh.timed_queues(), 2, "exp, and dlq with the dead letter (ttl left the set)");
    assert_eq!(drain(&vh.queue("dlq", 1).unwrap()).len(), 1);
    clock.advance(1000);
    let deleted = vh.tick();
    assert_eq!(deleted.len(), 1, "exp expired");
    assert!(vh.queue("exp", 1).is_err());
    drop(exp);
    assert_eq!(vh.timed_queues(), 0);
}
