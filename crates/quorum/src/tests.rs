//! One behaviour per test, through `apply` only; invariants checked after every entry.

use bytes::Bytes;

use crate::types::*;
use crate::{QuorumQueue, Stats};

/// A replica fed one entry at a time, with a fake clock that tests move.
struct Replica {
    q: QuorumQueue,
    index: u64,
    now_ms: u64,
}

fn consumer(id: u64) -> ConsumerId {
    ConsumerId { node: NodeId(1), id }
}

fn on_node(node: u64, id: u64) -> ConsumerId {
    ConsumerId { node: NodeId(node), id }
}

fn publish(seq: u64) -> PublishId {
    PublishId { publisher: PublisherId { node: NodeId(1), id: 7 }, seq }
}

fn msg(body: &str) -> Message {
    Message { payload: Bytes::copy_from_slice(body.as_bytes()), body_bytes: body.len() as u64 }
}

fn dlx() -> Option<DeadLetterTarget> {
    Some(DeadLetterTarget { exchange: "dlx".into(), routing_key: None })
}

impl Replica {
    fn new(config: Config) -> Replica {
        Replica { q: QuorumQueue::new(config), index: 0, now_ms: 1_000 }
    }

    fn run(&mut self, cmd: Command) -> Vec<Effect> {
        self.index += 1;
        let fx = self.q.apply(Meta { index: self.index, now_ms: self.now_ms }, cmd);
        self.q.check_invariants();
        fx
    }

    /// Enqueues `body` without confirms; returns its message id.
    fn enqueue(&mut self, body: &str) -> MsgId {
        self.run(Command::Enqueue { publish: None, msg: msg(body), ttl_ms: None });
        self.index
    }

    fn checkout(&mut self, c: ConsumerId, prefetch: u32) -> Vec<Effect> {
        self.run(Command::Checkout { consumer: c, prefetch, priority: 0 })
    }
}

/// (consumer, msg id, delivery id, delivery count) of every delivery in `fx`.
fn deliveries(fx: &[Effect]) -> Vec<(ConsumerId, MsgId, u64, u32)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Deliver { consumer, delivery } => {
                assert_eq!(delivery.redelivered, delivery.delivery_count > 0);
                Some((*consumer, delivery.msg_id, delivery.delivery_id, delivery.delivery_count))
            }
            _ => None,
        })
        .collect()
}

/// (reason, msg id) of every dead letter or drop in `fx`.
fn deaths(fx: &[Effect]) -> Vec<(Reason, MsgId)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::DeadLetter { reason, msg_id, .. } | Effect::Dropped { reason, msg_id } => Some((*reason, *msg_id)),
            _ => None,
        })
        .collect()
}

#[test]
fn enqueue_confirms_and_a_consumer_gets_messages_in_order() {
    let mut r = Replica::new(Config::default());
    let fx = r.run(Command::Enqueue { publish: Some(publish(1)), msg: msg("a"), ttl_ms: None });
    assert_eq!(fx, vec![Effect::Confirmed { publish: publish(1) }]);
    let b = r.enqueue("b");
    let fx = r.checkout(consumer(1), 0);
    assert_eq!(deliveries(&fx), vec![(consumer(1), 1, 0, 0), (consumer(1), b, 1, 0)]);
    let Effect::Deliver { delivery, .. } = &fx[0] else { panic!("{fx:?}") };
    assert_eq!(delivery.msg, msg("a"));
    assert!(!delivery.redelivered);
    assert_eq!(r.q.stats(), Stats { checked_out: 2, consumers: 1, ..Stats::default() });
}

#[test]
fn a_resent_publish_is_confirmed_again_but_enqueued_once() {
    let mut r = Replica::new(Config::default());
    r.run(Command::Enqueue { publish: Some(publish(5)), msg: msg("a"), ttl_ms: None });
    let fx = r.run(Command::Enqueue { publish: Some(publish(5)), msg: msg("a"), ttl_ms: None });
    assert_eq!(fx, vec![Effect::Confirmed { publish: publish(5) }]);
    // Lower numbers are resends too; sequence gaps are normal (other queues' publishes).
    r.run(Command::Enqueue { publish: Some(publish(3)), msg: msg("x"), ttl_ms: None });
    r.run(Command::Enqueue { publish: Some(publish(9)), msg: msg("b"), ttl_ms: None });
    assert_eq!(r.q.stats().ready, 2);
    // A closed publisher is forgotten: its numbers start over on a new channel.
    r.run(Command::PublisherDown { publisher: publish(0).publisher });
    r.run(Command::Enqueue { publish: Some(publish(1)), msg: msg("c"), ttl_ms: None });
    assert_eq!(r.q.stats().ready, 3);
}

#[test]
fn prefetch_is_honoured_and_equal_consumers_take_turns() {
    let mut r = Replica::new(Config::default());
    r.checkout(consumer(1), 1);
    r.checkout(consumer(2), 1);
    let ids: Vec<MsgId> = (0..5).map(|i| r.enqueue(&format!("m{i}"))).collect();
    assert_eq!((r.q.held_by(consumer(1)), r.q.held_by(consumer(2)), r.q.stats().ready), (1, 1, 3));
    let fx = r.run(Command::Settle { consumer: consumer(1), delivery_ids: vec![0] });
    assert_eq!(deliveries(&fx), vec![(consumer(1), ids[2], 1, 0)]);
    // basic.qos raising the prefetch takes effect at once.
    let fx = r.checkout(consumer(2), 2);
    assert_eq!(deliveries(&fx), vec![(consumer(2), ids[3], 1, 0)]);
    // Unlimited prefetch (0) takes the rest.
    let fx = r.checkout(consumer(3), 0);
    assert_eq!(deliveries(&fx), vec![(consumer(3), ids[4], 0, 0)]);
    // Consumers with credit to spare alternate, the least recently served first.
    let mut r = Replica::new(Config::default());
    r.checkout(consumer(1), 0);
    r.checkout(consumer(2), 0);
    let got: Vec<ConsumerId> = (0..4)
        .flat_map(|i| deliveries(&r.run(Command::Enqueue { publish: None, msg: msg(&format!("m{i}")), ttl_ms: None })))
        .map(|d| d.0)
        .collect();
    assert_eq!(got, vec![consumer(1), consumer(2), consumer(1), consumer(2)]);
}

#[test]
fn higher_priority_consumers_are_served_first_while_they_have_credit() {
    let mut r = Replica::new(Config::default());
    r.checkout(consumer(1), 10);
    r.run(Command::Checkout { consumer: consumer(2), prefetch: 2, priority: 5 });
    let ids: Vec<MsgId> = (0..4).map(|i| r.enqueue(&format!("m{i}"))).collect();
    assert_eq!(r.q.held_by(consumer(2)), 2);
    assert_eq!(r.q.held_by(consumer(1)), 2);
    let held: Vec<MsgId> = r.q.checked_out(consumer(2)).iter().map(|d| d.msg_id).collect();
    assert_eq!(held, vec![ids[0], ids[1]]);
}

#[test]
fn settle_removes_messages_and_unknown_ids_are_ignored() {
    let mut r = Replica::new(Config::default());
    r.enqueue("a");
    r.enqueue("b");
    r.checkout(consumer(1), 0);
    let fx = r.run(Command::Settle { consumer: consumer(1), delivery_ids: vec![0, 0, 42] });
    assert!(fx.is_empty(), "{fx:?}");
    r.run(Command::Settle { consumer: consumer(9), delivery_ids: vec![1] });
    assert_eq!(r.q.stats().checked_out, 1);
    r.run(Command::Settle { consumer: consumer(1), delivery_ids: vec![1] });
    assert_eq!(r.q.stats(), Stats { consumers: 1, ..Stats::default() });
}

#[test]
fn returned_messages_go_to_the_head_in_return_order_with_one_more_delivery() {
    let mut r = Replica::new(Config::default());
    let ids: Vec<MsgId> = (0..4).map(|i| r.enqueue(&format!("m{i}"))).collect();
    r.checkout(consumer(1), 3);
    // Return the third then the first: both come back before the never-delivered fourth.
    r.run(Command::Return { consumer: consumer(1), delivery_ids: vec![2] });
    // The freed credit takes the returned message again, not the fourth: returns are at
    // the head.
    assert_eq!(r.q.checked_out(consumer(1)).last().map(|d| (d.msg_id, d.delivery_count)), Some((ids[2], 1)));
    r.run(Command::Cancel { consumer: consumer(1) });
    let fx = r.run(Command::Return { consumer: consumer(1), delivery_ids: vec![3, 0] });
    assert!(deliveries(&fx).is_empty());
    assert_eq!(r.q.ready_ids(), vec![ids[0], ids[2], ids[3]]);
    let fx = r.checkout(consumer(2), 0);
    let got: Vec<(MsgId, u32)> = deliveries(&fx).iter().map(|d| (d.1, d.3)).collect();
    assert_eq!(got, vec![(ids[0], 1), (ids[2], 2), (ids[3], 0)]);
}

#[test]
fn a_message_returned_more_times_than_the_delivery_limit_is_dead_lettered() {
    let mut r = Replica::new(Config { delivery_limit: Some(1), dead_letter: dlx(), ..Config::default() });
    let id = r.enqueue("poison");
    r.checkout(consumer(1), 1);
    // Returned once: within the limit, delivered again with x-delivery-count 1.
    let fx = r.run(Command::Return { consumer: consumer(1), delivery_ids: vec![0] });
    assert_eq!(deliveries(&fx), vec![(consumer(1), id, 1, 1)]);
    // Returned a second time (here by the consumer going down): past the limit.
    let fx = r.run(Command::ConsumerDown { consumer: consumer(1) });
    assert_eq!(
        fx,
        vec![Effect::DeadLetter {
            reason: Reason::DeliveryLimit,
            msg_id: id,
            delivery_count: 2,
            msg: msg("poison"),
            at_least_once: false
        }]
    );
    assert_eq!(r.q.stats(), Stats::default());
    // Without a dead-letter exchange it is dropped; a limit of 0 allows no return at all.
    let mut r = Replica::new(Config { delivery_limit: Some(0), ..Config::default() });
    let id = r.enqueue("poison");
    r.checkout(consumer(1), 1);
    let fx = r.run(Command::Return { consumer: consumer(1), delivery_ids: vec![0] });
    assert_eq!(fx, vec![Effect::Dropped { reason: Reason::DeliveryLimit, msg_id: id }]);
}

#[test]
fn discard_dead_letters_as_rejected_without_counting_a_delivery() {
    let mut r = Replica::new(Config { dead_letter: dlx(), ..Config::default() });
    let id = r.enqueue("a");
    r.checkout(consumer(1), 0);
    r.run(Command::Return { consumer: consumer(1), delivery_ids: vec![0] });
    let fx = r.run(Command::Discard { consumer: consumer(1), delivery_ids: vec![1] });
    let Effect::DeadLetter { reason: Reason::Rejected, msg_id, delivery_count: 1, .. } = &fx[0] else {
        panic!("{fx:?}")
    };
    assert_eq!(*msg_id, id);
    assert_eq!(r.q.stats().checked_out, 0);
}

#[test]
fn a_consumer_going_down_returns_what_it_held_to_the_others() {
    let mut r = Replica::new(Config::default());
    let a = r.enqueue("a");
    let b = r.enqueue("b");
    r.checkout(consumer(1), 0);
    r.checkout(consumer(2), 0);
    let fx = r.run(Command::ConsumerDown { consumer: consumer(1) });
    assert_eq!(deliveries(&fx), vec![(consumer(2), a, 0, 1), (consumer(2), b, 1, 1)]);
    assert_eq!(r.q.stats().consumers, 1);
}

#[test]
fn node_down_suspends_its_consumers_and_node_up_resumes_them() {
    let mut r = Replica::new(Config::default());
    let a = r.enqueue("a");
    r.checkout(on_node(2, 1), 1);
    let fx = r.run(Command::NodeDown { node: NodeId(2) });
    assert!(deliveries(&fx).is_empty(), "a suspended consumer gets nothing");
    assert_eq!(r.q.ready_ids(), vec![a]);
    // Consumers on other nodes are not affected.
    r.run(Command::NodeDown { node: NodeId(3) });
    let fx = r.run(Command::NodeUp { node: NodeId(2) });
    assert_eq!(deliveries(&fx), vec![(on_node(2, 1), a, 1, 1)]);
}

#[test]
fn a_forgotten_node_loses_its_consumers_and_publishers() {
    let mut r = Replica::new(Config::default());
    let a = r.enqueue("a");
    r.checkout(on_node(2, 1), 0);
    r.checkout(on_node(3, 1), 0);
    let from_node_2 = PublishId { publisher: PublisherId { node: NodeId(2), id: 1 }, seq: 1 };
    r.run(Command::Enqueue { publish: Some(from_node_2), msg: msg("b"), ttl_ms: None });
    let b = r.index;
    // Node 2's consumer held both (it was served longer ago when b came).
    let fx = r.run(Command::ForgetNode { node: NodeId(2) });
    assert_eq!(deliveries(&fx), vec![(on_node(3, 1), a, 0, 1), (on_node(3, 1), b, 1, 1)]);
    assert_eq!(r.q.stats().consumers, 1);
    // Its sequence numbers are forgotten: the same seq is a new message now.
    r.run(Command::Enqueue { publish: Some(from_node_2), msg: msg("c"), ttl_ms: None });
    assert_eq!(r.q.stats().checked_out, 3);
}

#[test]
fn a_cancelled_consumer_gets_nothing_more_and_leaves_once_it_holds_nothing() {
    let mut r = Replica::new(Config::default());
    r.enqueue("a");
    r.checkout(consumer(1), 0);
    r.run(Command::Cancel { consumer: consumer(1) });
    let fx = r.run(Command::Enqueue { publish: None, msg: msg("b"), ttl_ms: None });
    assert!(deliveries(&fx).is_empty());
    assert_eq!(r.q.stats(), Stats { ready: 1, ready_bytes: 1, checked_out: 1, ..Stats::default() });
    r.run(Command::Settle { consumer: consumer(1), delivery_ids: vec![0] });
    assert_eq!(r.q.stats().checked_out, 0);
    // Gone: settling again is ignored, and a new checkout under the same id starts fresh.
    r.run(Command::Settle { consumer: consumer(1), delivery_ids: vec![0] });
    let fx = r.checkout(consumer(1), 0);
    assert_eq!(deliveries(&fx).len(), 1);
}

#[test]
fn dequeue_takes_the_head_settled_or_checked_out() {
    let mut r = Replica::new(Config::default());
    let fx = r.run(Command::Dequeue { consumer: consumer(1), settle: true });
    assert_eq!(fx, vec![Effect::Dequeued { consumer: consumer(1), delivery: None, ready: 0 }]);
    let a = r.enqueue("a");
    let b = r.enqueue("b");
    let fx = r.run(Command::Dequeue { consumer: consumer(1), settle: true });
    let Effect::Dequeued { delivery: Some(d), ready: 1, .. } = &fx[0] else { panic!("{fx:?}") };
    assert_eq!(d.msg_id, a);
    assert_eq!(r.q.stats().consumers, 0);
    let fx = r.run(Command::Dequeue { consumer: consumer(1), settle: false });
    let Effect::Dequeued { delivery: Some(d), ready: 0, .. } = &fx[0] else { panic!("{fx:?}") };
    assert_eq!((d.msg_id, r.q.stats().checked_out), (b, 1));
    // Rejected with requeue it comes back; the get holder is never served by dispatch.
    r.run(Command::Return { consumer: consumer(1), delivery_ids: vec![d.delivery_id] });
    assert_eq!(r.q.ready_ids(), vec![b]);
    assert_eq!(r.q.stats().checked_out, 0);
}

#[test]
fn purge_drops_ready_messages_but_not_checked_out_ones() {
    let mut r = Replica::new(Config { dead_letter: dlx(), ..Config::default() });
    r.enqueue("a");
    r.checkout(consumer(1), 1);
    r.enqueue("b");
    r.enqueue("c");
    let fx = r.run(Command::Purge);
    assert_eq!(fx, vec![Effect::Purged { count: 2 }]);
    assert_eq!(r.q.stats().checked_out, 1);
    assert_eq!(r.q.stats().ready, 0);
}

#[test]
fn drop_head_dead_letters_the_oldest_over_max_length_and_max_length_bytes() {
    let mut r = Replica::new(Config { max_length: Some(2), dead_letter: dlx(), ..Config::default() });
    let a = r.enqueue("a");
    let b = r.enqueue("b");
    let fx = r.run(Command::Enqueue { publish: Some(publish(1)), msg: msg("c"), ttl_ms: None });
    assert_eq!(deaths(&fx), vec![(Reason::MaxLen, a)]);
    let c = r.index;
    assert_eq!(r.q.ready_ids(), vec![b, c]);
    // A confirmed publish can push out an older message: it was accepted all the same.
    let fx = r.run(Command::Enqueue { publish: Some(publish(2)), msg: msg("d"), ttl_ms: None });
    assert_eq!(fx[0], Effect::Confirmed { publish: publish(2) });
    assert_eq!(deaths(&fx), vec![(Reason::MaxLen, b)]);
    let mut r = Replica::new(Config { max_length_bytes: Some(5), ..Config::default() });
    let a = r.enqueue("aaa");
    let fx = r.run(Command::Enqueue { publish: None, msg: msg("bbb"), ttl_ms: None });
    assert_eq!(fx, vec![Effect::Dropped { reason: Reason::MaxLen, msg_id: a }]);
    // Checked-out messages do not count.
    r.checkout(consumer(1), 1);
    r.enqueue("ccccc");
    assert_eq!(r.q.stats().ready, 1);
}

#[test]
fn reject_publish_refuses_publishes_while_the_queue_is_full() {
    let mut r = Replica::new(Config { max_length: Some(1), overflow: Overflow::RejectPublish, ..Config::default() });
    r.run(Command::Enqueue { publish: Some(publish(1)), msg: msg("a"), ttl_ms: None });
    let fx = r.run(Command::Enqueue { publish: Some(publish(2)), msg: msg("b"), ttl_ms: None });
    assert_eq!(fx, vec![Effect::Rejected { publish: Some(publish(2)) }]);
    let fx = r.run(Command::Enqueue { publish: None, msg: msg("b"), ttl_ms: None });
    assert_eq!(fx, vec![Effect::Rejected { publish: None }]);
    // Once a consumer took the message there is room; the rejected seq may be resent.
    r.checkout(consumer(1), 0);
    let fx = r.run(Command::Enqueue { publish: Some(publish(2)), msg: msg("b"), ttl_ms: None });
    assert_eq!(fx[0], Effect::Confirmed { publish: publish(2) });
}

#[test]
fn lowering_max_length_drops_the_excess_under_drop_head_only() {
    let mut r = Replica::new(Config::default());
    let ids: Vec<MsgId> = (0..3).map(|i| r.enqueue(&format!("m{i}"))).collect();
    let reject = Config { max_length: Some(1), overflow: Overflow::RejectPublish, ..Config::default() };
    assert!(r.run(Command::SetConfig(reject)).is_empty());
    assert_eq!(r.q.stats().ready, 3);
    let fx = r.run(Command::SetConfig(Config { max_length: Some(1), ..Config::default() }));
    assert_eq!(deaths(&fx), vec![(Reason::MaxLen, ids[0]), (Reason::MaxLen, ids[1])]);
}

#[test]
fn at_least_once_dead_letters_stay_until_their_targets_confirm() {
    let config = Config {
        dead_letter: dlx(),
        dead_letter_strategy: DeadLetterStrategy::AtLeastOnce,
        overflow: Overflow::RejectPublish,
        max_length: Some(2),
        ..Config::default()
    };
    assert!(config.at_least_once());
    let mut r = Replica::new(config.clone());
    let a = r.enqueue("a");
    r.checkout(consumer(1), 0);
    let fx = r.run(Command::Discard { consumer: consumer(1), delivery_ids: vec![0] });
    assert!(matches!(fx[0], Effect::DeadLetter { reason: Reason::Rejected, at_least_once: true, .. }));
    assert_eq!(r.q.pending_dead_letters(), fx);
    assert_eq!(r.q.release_cursor(), a - 1, "a pending dead letter is live");
    // It counts against max-length: one more fits, the next is refused.
    r.run(Command::Cancel { consumer: consumer(1) });
    r.enqueue("b");
    let fx = r.run(Command::Enqueue { publish: None, msg: msg("c"), ttl_ms: None });
    assert_eq!(fx, vec![Effect::Rejected { publish: None }]);
    r.run(Command::DeadLetterSettled { msg_ids: vec![a, 12345] });
    assert_eq!(r.q.stats().dead_letters_pending, 0);
    r.enqueue("c");
    assert_eq!(r.q.stats().ready, 2);
    // Leaving at-least-once deletes the unconfirmed ones.
    let mut r = Replica::new(config.clone());
    r.enqueue("a");
    r.checkout(consumer(1), 0);
    r.run(Command::Discard { consumer: consumer(1), delivery_ids: vec![0] });
    r.run(Command::SetConfig(Config { overflow: Overflow::DropHead, ..config }));
    assert_eq!(r.q.stats().dead_letters_pending, 0);
}

#[test]
fn expired_messages_are_dead_lettered_at_the_head_by_the_time_in_the_log() {
    let mut r = Replica::new(Config { message_ttl_ms: Some(1_000), dead_letter: dlx(), ..Config::default() });
    let a = r.enqueue("a"); // expires at 2_000 (queue TTL)
    r.run(Command::Enqueue { publish: None, msg: msg("b"), ttl_ms: Some(100) }); // 1_100
    let b = r.index;
    assert_eq!(r.q.next_expiry_ms(), Some(2_000));
    r.now_ms = 1_500;
    let c = r.enqueue("c"); // 2_500
    // b expired but is not at the head: RabbitMQ expires messages as they reach it.
    assert!(deaths(&r.run(Command::Tick)).is_empty());
    r.now_ms = 2_001;
    let fx = r.run(Command::Tick);
    assert_eq!(deaths(&fx), vec![(Reason::Expired, a), (Reason::Expired, b)]);
    assert_eq!(r.q.next_expiry_ms(), Some(2_500));
    // A leader whose clock is behind cannot move the queue's time backwards: d expires
    // 5 ms after 2_001, not at 5.
    r.now_ms = 0;
    r.run(Command::Enqueue { publish: None, msg: msg("d"), ttl_ms: Some(5) });
    let d = r.index;
    r.now_ms = 2_003;
    let fx = r.checkout(consumer(1), 0);
    assert!(deaths(&fx).is_empty());
    assert_eq!(deliveries(&fx), vec![(consumer(1), c, 0, 0), (consumer(1), d, 1, 0)]);
}

#[test]
fn single_active_consumer_serves_only_the_earliest_until_it_leaves() {
    let mut r = Replica::new(Config { single_active_consumer: true, ..Config::default() });
    r.checkout(consumer(1), 1);
    r.checkout(consumer(2), 0);
    let a = r.enqueue("a");
    let b = r.enqueue("b");
    assert_eq!(r.q.held_by(consumer(1)), 1);
    assert_eq!(r.q.held_by(consumer(2)), 0, "waiting consumers get nothing, even with credit");
    let fx = r.run(Command::Cancel { consumer: consumer(1) });
    assert_eq!(deliveries(&fx), vec![(consumer(2), b, 0, 0)]);
    // The cancelled one still holds `a`; returned, it goes to the new active consumer.
    let fx = r.run(Command::Return { consumer: consumer(1), delivery_ids: vec![0] });
    assert_eq!(deliveries(&fx), vec![(consumer(2), a, 1, 1)]);
}

#[test]
fn the_single_active_consumer_keeps_its_role_when_an_earlier_one_comes_back() {
    let mut r = Replica::new(Config { single_active_consumer: true, ..Config::default() });
    r.checkout(on_node(2, 1), 0);
    r.checkout(on_node(3, 2), 0);
    assert_eq!(r.q.active_consumer(), Some(on_node(2, 1)));
    let a = r.enqueue("a");
    let fx = r.run(Command::NodeDown { node: NodeId(2) });
    assert_eq!(deliveries(&fx), vec![(on_node(3, 2), a, 0, 1)]);
    // Node 2 is back: its consumer waits, or two consumers would hold messages at once.
    r.run(Command::NodeUp { node: NodeId(2) });
    assert_eq!(r.q.active_consumer(), Some(on_node(3, 2)));
    let b = r.enqueue("b");
    assert_eq!(r.q.checked_out(on_node(3, 2)).iter().map(|d| d.msg_id).collect::<Vec<_>>(), vec![a, b]);
    r.run(Command::ConsumerDown { consumer: on_node(3, 2) });
    assert_eq!(r.q.active_consumer(), Some(on_node(2, 1)));
    assert_eq!(r.q.held_by(on_node(2, 1)), 2);
}

#[test]
fn the_release_cursor_follows_the_oldest_live_message() {
    let mut r = Replica::new(Config { release_cursor_interval_entries: 1, ..Config::default() });
    let a = r.enqueue("a");
    let b = r.enqueue("b");
    assert_eq!(r.q.release_cursor(), a - 1);
    r.checkout(consumer(1), 0);
    let fx = r.run(Command::Settle { consumer: consumer(1), delivery_ids: vec![0] });
    assert_eq!(fx, vec![Effect::ReleaseCursor { index: b - 1 }]);
    let fx = r.run(Command::Settle { consumer: consumer(1), delivery_ids: vec![1] });
    assert_eq!(fx, vec![Effect::ReleaseCursor { index: r.index }], "nothing live: everything applied");
    // A returned message keeps its place in the log: the cursor cannot pass it.
    let c = r.enqueue("c");
    for _ in 0..3 {
        let held = r.q.checked_out(consumer(1))[0].delivery_id;
        r.run(Command::Return { consumer: consumer(1), delivery_ids: vec![held] });
        r.enqueue("more");
        assert_eq!(r.q.release_cursor(), c - 1);
    }
    // With the default interval the effect is rare.
    let mut r = Replica::new(Config::default());
    let fx: Vec<Effect> = (0..100).flat_map(|_| r.run(Command::Tick)).collect();
    assert!(fx.is_empty());
}

#[test]
fn entries_at_or_below_the_last_applied_index_are_ignored() {
    let mut r = Replica::new(Config::default());
    r.enqueue("a");
    let before = r.q.clone();
    let fx = r.q.apply(Meta { index: 1, now_ms: 5 }, Command::Purge);
    assert!(fx.is_empty());
    assert_eq!(r.q, before);
}

#[test]
fn a_snapshot_round_trips_through_serde() {
    let mut r = Replica::new(Config { dead_letter: dlx(), delivery_limit: Some(3), ..Config::default() });
    for i in 0..5 {
        r.run(Command::Enqueue { publish: Some(publish(i)), msg: msg(&format!("m{i}")), ttl_ms: Some(60_000) });
    }
    r.checkout(consumer(1), 2);
    r.run(Command::Return { consumer: consumer(1), delivery_ids: vec![1] });
    let json = serde_json::to_vec(&r.q).unwrap();
    let back: QuorumQueue = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, r.q);
    // Bounded by what is live: settling everything shrinks it back (462 bytes in JSON).
    r.checkout(consumer(1), 0);
    let held: Vec<u64> = r.q.checked_out(consumer(1)).iter().map(|d| d.delivery_id).collect();
    r.run(Command::Settle { consumer: consumer(1), delivery_ids: held });
    r.run(Command::PublisherDown { publisher: publish(0).publisher });
    r.run(Command::ConsumerDown { consumer: consumer(1) });
    let empty = serde_json::to_vec(&r.q).unwrap();
    assert!(empty.len() < 1_000, "{} bytes", empty.len());
}
