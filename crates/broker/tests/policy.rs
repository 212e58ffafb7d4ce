//! Policies and operator policies: selection, precedence over x-arguments, live
//! application to existing queues and exchanges; the vhost `max-queues` limit.

use std::sync::Arc;

use broker::args::{Overflow, QueueArgs, QueueType};
use broker::clock::ManualClock;
use broker::exchange::ExchangeOptions;
use broker::policy::{self, ApplyTo, Policy, PolicyDefinition};
use broker::queue::{PublishOutcome, QueueOptions};
use broker::vhost::InMemory;
use broker::{ExchangeKind, Message, Queue, VHost};
use bytes::Bytes;
use wire::{BasicProperties, FieldTable, FieldValue};

fn s(v: &str) -> FieldValue {
    FieldValue::LongStr(Bytes::copy_from_slice(v.as_bytes()))
}

fn msg(body: &str) -> Arc<Message> {
    let mut props = Vec::new();
    BasicProperties::default().encode(&mut props);
    Arc::new(Message {
        exchange: "ex".into(),
        routing_key: "rk".into(),
        properties: Bytes::from(props),
        body: Bytes::copy_from_slice(body.as_bytes()),
        persistent: false,
        priority: 0,
        expiration_ms: None,
    })
}

fn table(pairs: &[(&str, FieldValue)]) -> FieldTable {
    let mut t = FieldTable::new();
    for (k, v) in pairs {
        t.insert(*k, v.clone());
    }
    t
}

fn opts(args: &[(&str, FieldValue)]) -> QueueOptions {
    QueueOptions { durable: false, exclusive: false, auto_delete: false, arguments: table(args) }
}

fn fanout(args: FieldTable) -> ExchangeOptions {
    ExchangeOptions {
        kind: ExchangeKind::Fanout,
        delayed: false,
        durable: false,
        auto_delete: false,
        internal: false,
        arguments: args,
    }
}

/// A vhost with a fanout `dlx` bound to queue `dlq`, on a manual clock.
fn setup() -> (Arc<VHost>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let vh = VHost::with_clock("/", Arc::new(InMemory), clock.clone());
    vh.declare_exchange("dlx", false, fanout(FieldTable::new())).unwrap();
    vh.declare_queue("dlq", false, opts(&[]), 1).unwrap();
    vh.bind_queue("dlq", "dlx", "", FieldTable::new(), 1).unwrap();
    (vh, clock)
}

fn pol(name: &str, pattern: &str, apply_to: ApplyTo, priority: i64, def: &[(&str, FieldValue)]) -> Policy {
    Policy::new(name, pattern, apply_to, priority, PolicyDefinition::from_table(&table(def)).unwrap()).unwrap()
}

fn bodies(q: &Arc<Queue>) -> Vec<String> {
    std::iter::from_fn(|| q.get(true)).map(|(m, _)| String::from_utf8_lossy(&m.msg.body).into_owned()).collect()
}

/// (body, x-death reason of the latest death) of every message in `q`, taken.
fn dead(q: &Arc<Queue>) -> Vec<(String, String)> {
    std::iter::from_fn(|| q.get(true))
        .map(|(m, _)| {
            let h = BasicProperties::decode(&m.msg.properties).unwrap().headers.unwrap();
            let reason = h.get("x-last-death-reason").and_then(FieldValue::as_str).unwrap().to_owned();
            (String::from_utf8_lossy(&m.msg.body).into_owned(), reason)
        })
        .collect()
}

#[test]
fn selection_by_priority_apply_to_pattern_and_name() {
    let list: Vec<Arc<Policy>> = vec![
        Arc::new(pol("low", "^orders", ApplyTo::All, 0, &[])),
        Arc::new(pol("high", "orders", ApplyTo::Queues, 5, &[])),
        Arc::new(pol("quorum-only", "orders", ApplyTo::QuorumQueues, 9, &[])),
        Arc::new(pol("ex-only", "orders", ApplyTo::Exchanges, 7, &[])),
        Arc::new(pol("b-tie", "^tie$", ApplyTo::All, 1, &[])),
        Arc::new(pol("a-tie", "^tie$", ApplyTo::All, 1, &[])),
    ];
    let name = |p: Option<Arc<Policy>>| p.map(|p| p.name.clone());
    // Highest priority that fits the object's kind and type.
    assert_eq!(name(policy::select_for_queue(&list, "orders.eu", QueueType::Classic)).as_deref(), Some("high"));
    assert_eq!(name(policy::select_for_queue(&list, "orders.eu", QueueType::Quorum)).as_deref(), Some("quorum-only"));
    assert_eq!(name(policy::select_for_exchange(&list, "orders.eu")).as_deref(), Some("ex-only"));
    // Unanchored: "orders" matches inside a name; "^orders" does not.
    assert_eq!(name(policy::select_for_queue(&list, "eu.orders", QueueType::Classic)).as_deref(), Some("high"));
    assert_eq!(name(policy::select_for_exchange(&list, "eu.orders.x")).as_deref(), Some("ex-only"));
    let only_low = [list[0].clone()];
    assert_eq!(name(policy::select_for_queue(&only_low, "eu.orders", QueueType::Classic)), None);
    // Anchored at both ends: a whole-name match only.
    assert_eq!(name(policy::select_for_queue(&list, "tie", QueueType::Classic)).as_deref(), Some("a-tie"));
    assert_eq!(name(policy::select_for_queue(&list, "tie2", QueueType::Classic)), None);
    // A tie in priority goes to the smaller name, whatever the order given.
    let reversed: Vec<_> = list.iter().rev().cloned().collect();
    assert_eq!(name(policy::select_for_queue(&reversed, "tie", QueueType::Classic)).as_deref(), Some("a-tie"));
}

#[test]
fn precedence_of_arguments_policy_and_operator_policy() {
    let declared = QueueArgs {
        message_ttl_ms: Some(100),
        expires_ms: Some(5_000),
        max_length: Some(10),
        max_length_bytes: Some(1_000),
        delivery_limit: Some(3),
        consumer_timeout_ms: Some(60_000),
        overflow: Some(Overflow::RejectPublish),
        dead_letter_exchange: Some("arg-dlx".into()),
        ..Default::default()
    };
    let user = PolicyDefinition {
        message_ttl: Some(50),
        expires: Some(9_000),
        max_length: Some(20),
        max_length_bytes: Some(500),
        delivery_limit: Some(5),
        consumer_timeout: Some(30_000),
        overflow: Some(Overflow::DropHead),
        dead_letter_exchange: Some("pol-dlx".into()),
        dead_letter_routing_key: Some("pol-rk".into()),
        ..Default::default()
    };
    let op = PolicyDefinition {
        message_ttl: Some(70),
        expires: Some(1_000),
        max_length: Some(15),
        max_length_bytes: Some(2_000),
        delivery_limit: Some(1),
        consumer_timeout: Some(45_000),
        overflow: Some(Overflow::RejectPublishDlx),
        ..Default::default()
    };

    // Numeric keys: the lesser of argument and policy.
    let e = policy::effective(&declared, Some(&user), None);
    assert_eq!(e.message_ttl_ms, Some(50));
    assert_eq!(e.expires_ms, Some(5_000));
    assert_eq!(e.max_length, Some(10));
    assert_eq!(e.max_length_bytes, Some(500));
    assert_eq!(e.delivery_limit, Some(3));
    assert_eq!(e.consumer_timeout_ms, Some(30_000));
    // Other keys: the argument beats the policy; the policy fills what is not declared.
    assert_eq!(e.overflow, Some(Overflow::RejectPublish));
    assert_eq!(e.dead_letter_exchange.as_deref(), Some("arg-dlx"));
    assert_eq!(e.dead_letter_routing_key.as_deref(), Some("pol-rk"));

    // The operator policy: the stricter numeric value of all three; its overflow wins.
    let e = policy::effective(&declared, Some(&user), Some(&op));
    assert_eq!(e.message_ttl_ms, Some(50));
    assert_eq!(e.expires_ms, Some(1_000));
    assert_eq!(e.max_length, Some(10));
    assert_eq!(e.max_length_bytes, Some(500));
    assert_eq!(e.delivery_limit, Some(1));
    assert_eq!(e.consumer_timeout_ms, Some(30_000));
    assert_eq!(e.overflow, Some(Overflow::RejectPublishDlx));
    assert_eq!(e.dead_letter_exchange.as_deref(), Some("arg-dlx"));

    // Nothing declared: each value comes from whoever sets it.
    let plain = QueueArgs::default();
    let e = policy::effective(&plain, None, Some(&op));
    assert_eq!((e.max_length, e.message_ttl_ms, e.expires_ms), (Some(15), Some(70), Some(1_000)));
    let e = policy::effective(&plain, Some(&user), None);
    assert_eq!(e.overflow, Some(Overflow::DropHead));
    assert_eq!(e.max_length, Some(20));
    assert_eq!(policy::effective(&plain, None, None), QueueArgs { overflow: Some(Overflow::DropHead), ..plain });

    // Quorum queues keep RabbitMQ 4's default delivery limit unless something sets one.
    let quorum = QueueArgs { queue_type: QueueType::Quorum, ..Default::default() };
    assert_eq!(policy::effective(&quorum, None, None).delivery_limit, Some(20));
    assert_eq!(policy::effective(&quorum, Some(&user), None).delivery_limit, Some(5));
}

#[test]
fn lower_max_length_drops_excess_at_once_and_removal_restores() {
    let (vh, _) = setup();
    let (q, _) = vh.declare_queue("work", false, opts(&[("x-max-length", FieldValue::I32(100))]), 1).unwrap();
    for i in 0..10 {
        q.publish(msg(&i.to_string()));
    }
    vh.set_policies(vec![pol("cap", "^work$", ApplyTo::Queues, 0, &[("max-length", FieldValue::U8(4))])], Vec::new());
    assert_eq!(q.policy_name().as_deref(), Some("cap"));
    assert_eq!(q.effective_args().max_length, Some(4));
    assert_eq!(q.stats().messages_ready, 4);
    // No DLX: the excess is dropped, not dead-lettered.
    assert!(bodies(&vh.queue("dlq", 1).unwrap()).is_empty());
    q.publish(msg("10"));
    assert_eq!(bodies(&q), ["7", "8", "9", "10"]);

    // Removing the policy restores the declared limit of 100.
    vh.set_policies(Vec::new(), Vec::new());
    assert_eq!(q.policy_name(), None);
    assert_eq!(q.effective_args().max_length, Some(100));
    for i in 0..10 {
        q.publish(msg(&i.to_string()));
    }
    assert_eq!(q.stats().messages_ready, 10);
}

#[test]
fn lower_max_length_dead_letters_excess_through_a_policy_dlx() {
    let (vh, _) = setup();
    let (q, _) = vh.declare_queue("work", false, opts(&[]), 1).unwrap();
    for i in 0..10 {
        q.publish(msg(&i.to_string()));
    }
    vh.set_policies(
        vec![pol(
            "cap",
            "work",
            ApplyTo::All,
            0,
            &[("max-length", FieldValue::I32(7)), ("dead-letter-exchange", s("dlx"))],
        )],
        Vec::new(),
    );
    assert_eq!(q.stats().messages_ready, 7);
    let d = dead(&vh.queue("dlq", 1).unwrap());
    assert_eq!(d, [("0", "maxlen"), ("1", "maxlen"), ("2", "maxlen")].map(|(b, r)| (b.to_owned(), r.to_owned())));
}

#[test]
fn reject_publish_keeps_the_excess_and_refuses_publishes() {
    let (vh, _) = setup();
    let (q, _) = vh.declare_queue("work", false, opts(&[]), 1).unwrap();
    for i in 0..5 {
        q.publish(msg(&i.to_string()));
    }
    vh.set_policies(
        vec![pol("cap", "work", ApplyTo::All, 0, &[("max-length", FieldValue::I32(2))])],
        // The operator policy's overflow wins over the policy's (unset) and the default.
        vec![pol("guard", ".*", ApplyTo::Queues, 0, &[("overflow", s("reject-publish"))])],
    );
    assert_eq!(q.operator_policy_name().as_deref(), Some("guard"));
    assert_eq!(q.stats().messages_ready, 5);
    assert_eq!(q.publish(msg("5")), PublishOutcome::Rejected);
    assert_eq!(q.effective_policy_definition().overflow, Some(Overflow::RejectPublish));
    assert_eq!(q.effective_policy_definition().max_length, Some(2));
}

#[test]
fn policy_ttl_expires_messages_published_after_it() {
    let (vh, clock) = setup();
    let (q, _) = vh.declare_queue("work", false, opts(&[]), 1).unwrap();
    q.publish(msg("before"));
    vh.set_policies(
        vec![pol(
            "ttl",
            "^work",
            ApplyTo::ClassicQueues,
            0,
            &[("message-ttl", FieldValue::I16(100)), ("dead-letter-exchange", s("dlx"))],
        )],
        Vec::new(),
    );
    q.publish(msg("after"));
    clock.advance(101);
    vh.tick();
    // As in RabbitMQ, a message's expiry is fixed at enqueue: "before" had none and
    // stays; it is at the head, so "after" expires when it reaches the head.
    assert_eq!(bodies(&q), ["before"]);
    q.publish(msg("late"));
    clock.advance(101);
    vh.tick();
    assert!(bodies(&q).is_empty());
    let d = dead(&vh.queue("dlq", 1).unwrap());
    assert_eq!(d, [("after", "expired"), ("late", "expired")].map(|(b, r)| (b.to_owned(), r.to_owned())));
}

#[test]
fn policy_expires_restarts_the_idle_timer() {
    let (vh, clock) = setup();
    vh.declare_queue("idle", false, opts(&[]), 1).unwrap();
    clock.advance(10_000);
    vh.set_policies(vec![pol("exp", "idle", ApplyTo::All, 0, &[("expires", FieldValue::I32(1_000))])], Vec::new());
    // Unused for 10 s already, but the timer starts when the policy applies.
    assert!(vh.tick().is_empty());
    clock.advance(1_000);
    assert_eq!(vh.tick().len(), 1);
    assert!(vh.queue("idle", 1).is_err());
}

#[test]
fn policy_dlx_is_used_by_reject_and_removing_it_restores_the_declared_one() {
    let (vh, _) = setup();
    vh.declare_exchange("dlx2", false, fanout(FieldTable::new())).unwrap();
    vh.declare_queue("dlq2", false, opts(&[]), 1).unwrap();
    vh.bind_queue("dlq2", "dlx2", "", FieldTable::new(), 1).unwrap();
    let (q, _) = vh.declare_queue("work", false, opts(&[]), 1).unwrap();
    vh.set_policies(vec![pol("dl", "work", ApplyTo::Queues, 0, &[("dead-letter-exchange", s("dlx"))])], Vec::new());
    q.publish(msg("a"));
    let (m, _) = q.get(false).unwrap();
    q.reject(vec![m]);
    assert_eq!(dead(&vh.queue("dlq", 1).unwrap()), [("a".to_owned(), "rejected".to_owned())]);

    // The declared x-dead-letter-exchange beats the policy's.
    let (r, _) = vh.declare_queue("work2", false, opts(&[("x-dead-letter-exchange", s("dlx2"))]), 1).unwrap();
    vh.set_policies(vec![pol("dl", "work", ApplyTo::Queues, 0, &[("dead-letter-exchange", s("dlx"))])], Vec::new());
    r.publish(msg("b"));
    let (m, _) = r.get(false).unwrap();
    r.reject(vec![m]);
    assert_eq!(dead(&vh.queue("dlq2", 1).unwrap()), [("b".to_owned(), "rejected".to_owned())]);

    // Without the policy, "work" has no DLX again: a rejected message is dropped.
    vh.set_policies(Vec::new(), Vec::new());
    q.publish(msg("c"));
    let (m, _) = q.get(false).unwrap();
    q.reject(vec![m]);
    assert!(bodies(&vh.queue("dlq", 1).unwrap()).is_empty());
    assert_eq!(q.stats().messages_unacked, 0);
}

#[test]
fn policy_delivery_limit_dead_letters_on_requeue() {
    let (vh, _) = setup();
    let (q, _) = vh.declare_queue("work", false, opts(&[("x-dead-letter-exchange", s("dlx"))]), 1).unwrap();
    q.publish(msg("a"));
    vh.set_policies(
        Vec::new(),
        vec![pol("limit", "work", ApplyTo::Queues, 0, &[("delivery-limit", FieldValue::I32(1))])],
    );
    let (m, _) = q.get(false).unwrap();
    q.requeue(vec![m]);
    let (m, _) = q.get(false).unwrap();
    q.requeue(vec![m]);
    assert!(q.get(true).is_none());
    assert_eq!(dead(&vh.queue("dlq", 1).unwrap()), [("a".to_owned(), "delivery_limit".to_owned())]);
}

#[test]
fn alternate_exchange_from_a_policy() {
    let (vh, _) = setup();
    vh.declare_exchange("ae", false, fanout(FieldTable::new())).unwrap();
    vh.declare_queue("unrouted", false, opts(&[]), 1).unwrap();
    vh.bind_queue("unrouted", "ae", "", FieldTable::new(), 1).unwrap();
    let direct = ExchangeOptions { kind: ExchangeKind::Direct, ..fanout(FieldTable::new()) };
    let ex = vh.declare_exchange("orders", false, direct.clone()).unwrap();
    let route = |e| {
        let mut out = Vec::new();
        vh.route(&vh.exchange(e).unwrap(), "nowhere", &mut || None, &mut out);
        out.into_iter().map(|q| q.name.clone()).collect::<Vec<_>>()
    };
    assert!(route("orders").is_empty());
    let ae_policy = || vec![pol("ae", "^orders", ApplyTo::Exchanges, 0, &[("alternate-exchange", s("ae"))])];
    vh.set_policies(ae_policy(), Vec::new());
    assert_eq!(ex.policy_name().as_deref(), Some("ae"));
    assert_eq!(ex.alternate_exchange().as_deref(), Some("ae"));
    assert_eq!(route("orders"), ["unrouted"]);
    // An exchange declared later gets it too; one with its own argument keeps that.
    vh.declare_exchange("orders.eu", false, direct.clone()).unwrap();
    assert_eq!(route("orders.eu"), ["unrouted"]);
    let own = ExchangeOptions { arguments: table(&[("alternate-exchange", s("dlx"))]), ..direct };
    vh.declare_exchange("orders.us", false, own).unwrap();
    assert_eq!(route("orders.us"), ["dlq"]);
    // A queue-only policy does not touch exchanges.
    vh.set_policies(vec![pol("ae", "^orders", ApplyTo::Queues, 0, &[("alternate-exchange", s("ae"))])], Vec::new());
    assert_eq!(ex.policy_name(), None);
    assert!(route("orders").is_empty());
}

#[test]
fn queue_declared_after_set_policies_gets_them() {
    let (vh, _) = setup();
    vh.set_policies(
        vec![
            pol("classic", "^jobs", ApplyTo::ClassicQueues, 0, &[("max-length", FieldValue::I32(3))]),
            pol("quorum", "^jobs", ApplyTo::QuorumQueues, 0, &[("max-length", FieldValue::I32(5))]),
        ],
        vec![pol("op", ".", ApplyTo::Queues, 0, &[("message-ttl", FieldValue::I32(60_000))])],
    );
    let (q, _) = vh.declare_queue("jobs.a", false, opts(&[]), 1).unwrap();
    assert_eq!(q.policy_name().as_deref(), Some("classic"));
    assert_eq!(q.operator_policy_name().as_deref(), Some("op"));
    assert_eq!(q.effective_args().max_length, Some(3));
    assert_eq!(q.effective_args().message_ttl_ms, Some(60_000));
    // The declared arguments are kept as declared.
    assert_eq!(q.declared_args.max_length, None);
    let quorum = QueueOptions {
        durable: true,
        exclusive: false,
        auto_delete: false,
        arguments: table(&[("x-queue-type", s("quorum"))]),
    };
    let (qq, _) = vh.declare_queue("jobs.b", false, quorum, 1).unwrap();
    assert_eq!(qq.policy_name().as_deref(), Some("quorum"));
    assert_eq!(qq.effective_args().max_length, Some(5));
    assert_eq!(qq.effective_args().delivery_limit, Some(20));
    // consumer-timeout is read by the server when a consumer registers.
    vh.set_policies(
        vec![pol("ct", "^jobs", ApplyTo::All, 0, &[("consumer-timeout", FieldValue::I32(1_000))])],
        Vec::new(),
    );
    assert_eq!(q.consumer_timeout_ms(), Some(1_000));
}

#[test]
fn max_queues_limit() {
    let (vh, _) = setup(); // holds "dlq"
    vh.set_max_queues(Some(2));
    assert_eq!(vh.max_queues(), Some(2));
    vh.declare_queue("a", false, opts(&[]), 1).unwrap();
    let e = vh.declare_queue("b", false, opts(&[]), 1).unwrap_err();
    assert_eq!(e.code, 406);
    assert_eq!(e.text, "cannot declare queue 'b': queue limit in vhost '/' (2) is reached");
    // Redeclaring an existing queue is fine.
    assert!(!vh.declare_queue("a", false, opts(&[]), 1).unwrap().1);
    assert!(vh.declare_queue("", false, opts(&[]), 1).is_err());
    vh.delete_queue("a", false, false, 1).unwrap();
    vh.declare_queue("b", false, opts(&[]), 1).unwrap();
    vh.set_max_queues(Some(0));
    assert!(vh.declare_queue("c", false, opts(&[]), 1).unwrap_err().text.contains("(0) is reached"));
    vh.set_max_queues(None);
    vh.declare_queue("c", false, opts(&[]), 1).unwrap();
}
