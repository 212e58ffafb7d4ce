//! Property tests: random command sequences run against a small reference model of RabbitMQ
//! quorum-queue semantics (two deques and a map per consumer). After every entry the
//! machine's effects must be the ones the model predicts — the same dead letters, confirms
//! and rejections, deliveries of the message the model says is next, with its delivery
//! count, only to consumers with credit (or the single active one), expiries only of
//! expired messages at the head and none left there, no consumer with credit left idle
//! while messages wait — and its contents must equal the model's. Time moves with `Tick`s,
//! and a new leader may stamp entries with a clock that is behind. At the end every enqueued
//! message is accounted for exactly once. Separately: a snapshot taken at any point and
//! the rest of the log replayed over it gives the straight run's effects and state, and two
//! replicas fed the same log agree.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use proptest::prelude::*;

use crate::QuorumQueue;
use crate::types::*;

const CONSUMERS: u64 = 4;
const NODES: u64 = 2;
/// An id no consumer ever holds: settling, returning or discarding it must be ignored.
const BOGUS_DELIVERY: u64 = 9_999;

#[derive(Debug, Clone)]
enum Op {
    Enqueue {
        confirm: bool,
        resend: bool,
        body_bytes: u8,
        ttl_ms: Option<u64>,
    },
    /// Time passes.
    Tick {
        advance_ms: u64,
    },
    /// A new leader, whose clock is `lag_ms` behind: it stamps that much less on entries.
    Leader {
        lag_ms: u64,
    },
    Checkout {
        c: u64,
        prefetch: u32,
    },
    Cancel {
        c: u64,
    },
    Settle {
        c: u64,
        n: usize,
    },
    Return {
        c: u64,
        n: usize,
    },
    Discard {
        c: u64,
        n: usize,
    },
    Dequeue {
        c: u64,
        settle: bool,
    },
    ConsumerDown {
        c: u64,
    },
    NodeDown {
        node: u64,
    },
    NodeUp {
        node: u64,
    },
    ForgetNode {
        node: u64,
    },
    PublisherDown,
    Purge,
    DeadLetterSettleAll,
    SetLimits {
        delivery_limit: Option<u32>,
        max_length: Option<u64>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..CONSUMERS;
    prop_oneof![
        6 => (any::<bool>(), prop::bool::weighted(0.1), 0..4u8, prop::option::weighted(0.2, 0..20u64))
            .prop_map(|(confirm, resend, body_bytes, ttl_ms)| Op::Enqueue { confirm, resend, body_bytes, ttl_ms }),
        2 => (0..10u64).prop_map(|advance_ms| Op::Tick { advance_ms }),
        1 => prop_oneof![Just(0u64), 0..20u64].prop_map(|lag_ms| Op::Leader { lag_ms }),
        2 => (c.clone(), 0..4u32).prop_map(|(c, prefetch)| Op::Checkout { c, prefetch }),
        1 => c.clone().prop_map(|c| Op::Cancel { c }),
        3 => (c.clone(), 0..3usize).prop_map(|(c, n)| Op::Settle { c, n }),
        2 => (c.clone(), 0..3usize).prop_map(|(c, n)| Op::Return { c, n }),
        1 => (c.clone(), 0..3usize).prop_map(|(c, n)| Op::Discard { c, n }),
        1 => (c.clone(), any::<bool>()).prop_map(|(c, settle)| Op::Dequeue { c, settle }),
        1 => c.clone().prop_map(|c| Op::ConsumerDown { c }),
        1 => (0..NODES).prop_map(|node| Op::NodeDown { node }),
        1 => (0..NODES).prop_map(|node| Op::NodeUp { node }),
        1 => (0..NODES).prop_map(|node| Op::ForgetNode { node }),
        1 => Just(Op::PublisherDown),
        1 => Just(Op::Purge),
        1 => Just(Op::DeadLetterSettleAll),
        1 => (prop::option::of(0..4u32), prop::option::of(0..6u64))
            .prop_map(|(delivery_limit, max_length)| Op::SetLimits { delivery_limit, max_length }),
    ]
}

fn config() -> impl Strategy<Value = Config> {
    let limits = (prop::option::of(0..4u32), prop::option::of(0..6u64), prop::option::of(2..8u64));
    let dead_letters = (any::<bool>(), any::<bool>(), any::<bool>());
    let rest = (1..4u64, prop::bool::weighted(0.3), prop::option::weighted(0.2, 0..30u64));
    (limits, dead_letters, rest).prop_map(
        |((delivery_limit, max_length, max_length_bytes), (reject, dlx, at_least_once), (interval, sac, ttl))| Config {
            delivery_limit,
            max_length,
            max_length_bytes,
            overflow: if reject { Overflow::RejectPublish } else { Overflow::DropHead },
            dead_letter: dlx.then(|| DeadLetterTarget { exchange: "dlx".into(), routing_key: None }),
            dead_letter_strategy: if at_least_once {
                DeadLetterStrategy::AtLeastOnce
            } else {
                DeadLetterStrategy::AtMostOnce
            },
            message_ttl_ms: ttl,
            single_active_consumer: sac,
            release_cursor_interval_entries: interval,
        },
    )
}

/// A consumer: node `c % NODES`; basic.get holders have ids of their own.
fn consumer_id(c: u64) -> ConsumerId {
    ConsumerId { node: NodeId(c % NODES), id: c }
}

fn getter_id(c: u64) -> ConsumerId {
    ConsumerId { node: NodeId(c % NODES), id: 100 + c }
}

const PUBLISHER: PublisherId = PublisherId { node: NodeId(0), id: 1 };

/// Effects other than deliveries and release cursors, with the message bodies left out.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Confirmed(u64),
    Rejected(Option<u64>),
    Died { reason: Reason, msg_id: MsgId, delivery_count: u32, at_least_once: bool },
    Dropped(Reason, MsgId),
    Purged(u64),
    Dequeued { consumer: ConsumerId, got: Option<(MsgId, u64, u32)>, ready: u64 },
}

fn event(e: &Effect) -> Option<Event> {
    Some(match e {
        Effect::Confirmed { publish } => Event::Confirmed(publish.seq),
        Effect::Rejected { publish } => Event::Rejected(publish.map(|p| p.seq)),
        Effect::DeadLetter { reason, msg_id, delivery_count, at_least_once, .. } => Event::Died {
            reason: *reason,
            msg_id: *msg_id,
            delivery_count: *delivery_count,
            at_least_once: *at_least_once,
        },
        Effect::Dropped { reason, msg_id } => Event::Dropped(*reason, *msg_id),
        Effect::Purged { count } => Event::Purged(*count),
        Effect::Dequeued { consumer, delivery, ready } => Event::Dequeued {
            consumer: *consumer,
            got: delivery.as_ref().map(|d| (d.msg_id, d.delivery_id, d.delivery_count)),
            ready: *ready,
        },
        Effect::Deliver { .. } | Effect::ReleaseCursor { .. } => return None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Up,
    Suspected,
    Cancelled,
}

#[derive(Debug, Default)]
struct MConsumer {
    prefetch: u32,
    status: Option<Status>,
    registered: u64,
    next_delivery_id: u64,
    held: BTreeMap<u64, MsgId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Settled,
    Died(Reason),
    Purged,
}

/// The reference: what RabbitMQ's quorum queue semantics say should happen.
#[derive(Debug)]
struct Model {
    config: Config,
    returns: VecDeque<MsgId>,
    ready: VecDeque<MsgId>,
    body: BTreeMap<MsgId, u64>,
    expires_at_ms: BTreeMap<MsgId, u64>,
    /// The queue's time: the latest stamped on an entry.
    now_ms: u64,
    count: BTreeMap<MsgId, u32>,
    consumers: BTreeMap<ConsumerId, MConsumer>,
    dlx_pending: BTreeSet<MsgId>,
    fate: BTreeMap<MsgId, Fate>,
    enqueued: BTreeSet<MsgId>,
    last_seq: Option<u64>,
    next_seq: u64,
    expected: Vec<Event>,
    /// Registration order of consumers.
    clock: u64,
    /// Single active consumer: the one served.
    active: Option<ConsumerId>,
}

impl Model {
    fn new(config: Config) -> Model {
        Model {
            config,
            returns: VecDeque::new(),
            ready: VecDeque::new(),
            body: BTreeMap::new(),
            expires_at_ms: BTreeMap::new(),
            now_ms: 0,
            count: BTreeMap::new(),
            consumers: BTreeMap::new(),
            dlx_pending: BTreeSet::new(),
            fate: BTreeMap::new(),
            enqueued: BTreeSet::new(),
            last_seq: None,
            next_seq: 1,
            expected: Vec::new(),
            clock: 0,
            active: None,
        }
    }

    fn ready_len(&self) -> u64 {
        (self.returns.len() + self.ready.len()) as u64
    }

    fn over_limit(&self, msgs: u64, bytes: u64) -> bool {
        let held_bytes: u64 =
            self.returns.iter().chain(&self.ready).chain(&self.dlx_pending).map(|id| self.body[id]).sum();
        self.config.max_length.is_some_and(|m| self.ready_len() + self.dlx_pending.len() as u64 + msgs > m)
            || self.config.max_length_bytes.is_some_and(|m| held_bytes + bytes > m)
    }

    fn head(&self) -> Option<MsgId> {
        self.returns.front().or_else(|| self.ready.front()).copied()
    }

    fn expired(&self, id: MsgId) -> bool {
        self.expires_at_ms.get(&id).is_some_and(|&t| t < self.now_ms)
    }

    fn expire_head(&mut self) {
        while let Some(id) = self.head().filter(|&id| self.expired(id)) {
            self.pop_head();
            self.die(id, Reason::Expired);
        }
    }

    fn pop_head(&mut self) -> Option<MsgId> {
        self.returns.pop_front().or_else(|| self.ready.pop_front())
    }

    fn die(&mut self, id: MsgId, reason: Reason) {
        let to_dlx = self.config.dead_letter.is_some();
        let at_least_once = self.config.at_least_once();
        self.expected.push(if to_dlx {
            Event::Died { reason, msg_id: id, delivery_count: self.count[&id], at_least_once }
        } else {
            Event::Dropped(reason, id)
        });
        if at_least_once {
            self.dlx_pending.insert(id);
        }
        self.fate.insert(id, Fate::Died(reason));
    }

    fn drop_over_limit(&mut self) {
        while self.over_limit(0, 0) {
            let Some(id) = self.pop_head() else { return };
            self.die(id, Reason::MaxLen);
        }
    }

    fn give_back(&mut self, id: MsgId) {
        let n = self.count.get_mut(&id).unwrap();
        *n += 1;
        let n = *n;
        if self.config.delivery_limit.is_some_and(|l| n > l) {
            self.die(id, Reason::DeliveryLimit);
        } else {
            self.returns.push_back(id);
        }
    }

    fn remove_if_done(&mut self, c: ConsumerId) {
        if self.consumers.get(&c).is_some_and(|m| m.status == Some(Status::Cancelled) && m.held.is_empty()) {
            self.consumers.remove(&c);
        }
    }

    /// The first `n` deliveries `c` holds, plus one it never had.
    fn pick(&self, c: ConsumerId, n: usize) -> Vec<u64> {
        let mut ids: Vec<u64> =
            self.consumers.get(&c).map(|m| m.held.keys().copied().take(n).collect()).unwrap_or_default();
        ids.push(BOGUS_DELIVERY);
        ids
    }

    fn take(&mut self, c: ConsumerId, ids: &[u64]) -> Vec<MsgId> {
        let Some(m) = self.consumers.get_mut(&c) else { return Vec::new() };
        ids.iter().filter_map(|d| m.held.remove(d)).collect()
    }

    /// Turns `op` into a command and applies it to the model, recording the events it
    /// expects from the machine.
    fn command(&mut self, op: &Op, meta: Meta) -> Command {
        self.expected.clear();
        self.now_ms = self.now_ms.max(meta.now_ms);
        let cmd = self.command_inner(op, meta.index);
        let up = |m: &MConsumer| m.status == Some(Status::Up);
        if self.config.single_active_consumer && !self.active.and_then(|c| self.consumers.get(&c)).is_some_and(up) {
            self.active =
                self.consumers.iter().filter(|(_, m)| up(m)).min_by_key(|(_, m)| m.registered).map(|(c, _)| *c);
        }
        cmd
    }

    /// A consumer entry, registered now if it is new.
    fn entry(&mut self, c: ConsumerId) -> &mut MConsumer {
        let clock = &mut self.clock;
        self.consumers.entry(c).or_insert_with(|| {
            *clock += 1;
            MConsumer { registered: *clock, ..MConsumer::default() }
        })
    }

    fn command_inner(&mut self, op: &Op, index: u64) -> Command {
        match *op {
            Op::Tick { .. } | Op::Leader { .. } => Command::Tick,
            Op::Enqueue { confirm, resend, body_bytes, ttl_ms } => {
                let seq = match (confirm, resend, self.last_seq) {
                    (false, ..) => None,
                    (true, true, Some(last)) => Some(last),
                    (true, ..) => {
                        self.next_seq += 1;
                        Some(self.next_seq)
                    }
                };
                let publish = seq.map(|seq| PublishId { publisher: PUBLISHER, seq });
                let body = u64::from(body_bytes);
                if let Some(s) = seq
                    && self.last_seq.is_some_and(|l| s <= l)
                {
                    self.expected.push(Event::Confirmed(s));
                } else if self.config.overflow == Overflow::RejectPublish && self.over_limit(1, body) {
                    self.expected.push(Event::Rejected(seq));
                } else {
                    if let Some(s) = seq {
                        self.last_seq = Some(s);
                        self.expected.push(Event::Confirmed(s));
                    }
                    self.enqueued.insert(index);
                    self.body.insert(index, body);
                    self.count.insert(index, 0);
                    let ttl = [self.config.message_ttl_ms, ttl_ms].into_iter().flatten().min();
                    if let Some(ttl) = ttl {
                        self.expires_at_ms.insert(index, self.now_ms + ttl);
                    }
                    self.ready.push_back(index);
                    if self.config.overflow == Overflow::DropHead {
                        self.drop_over_limit();
                    }
                }
                let msg = Message { payload: Bytes::from(vec![b'x'; body_bytes.into()]), body_bytes: body };
                Command::Enqueue { publish, msg, ttl_ms }
            }
            Op::Checkout { c, prefetch } => {
                let m = self.entry(consumer_id(c));
                m.prefetch = prefetch;
                m.status = Some(Status::Up);
                Command::Checkout { consumer: consumer_id(c), prefetch, priority: 0 }
            }
            Op::Cancel { c } => {
                if let Some(m) = self.consumers.get_mut(&consumer_id(c)) {
                    m.status = Some(Status::Cancelled);
                }
                self.remove_if_done(consumer_id(c));
                Command::Cancel { consumer: consumer_id(c) }
            }
            Op::Settle { c, n } | Op::Return { c, n } | Op::Discard { c, n } => {
                // Half of the time the basic.get holder acts instead.
                let id = if n % 2 == 1 && self.consumers.contains_key(&getter_id(c)) {
                    getter_id(c)
                } else {
                    consumer_id(c)
                };
                let delivery_ids = self.pick(id, n);
                for msg in self.take(id, &delivery_ids) {
                    match op {
                        Op::Settle { .. } => {
                            self.fate.insert(msg, Fate::Settled);
                        }
                        Op::Return { .. } => self.give_back(msg),
                        _ => self.die(msg, Reason::Rejected),
                    }
                }
                self.remove_if_done(id);
                match op {
                    Op::Settle { .. } => Command::Settle { consumer: id, delivery_ids },
                    Op::Return { .. } => Command::Return { consumer: id, delivery_ids },
                    _ => Command::Discard { consumer: id, delivery_ids },
                }
            }
            Op::Dequeue { c, settle } => {
                let id = getter_id(c);
                self.expire_head();
                match self.pop_head() {
                    None => self.expected.push(Event::Dequeued { consumer: id, got: None, ready: 0 }),
                    Some(msg) => {
                        let m = self.entry(id);
                        m.status.get_or_insert(Status::Cancelled);
                        let d = m.next_delivery_id;
                        m.next_delivery_id += 1;
                        if settle {
                            self.fate.insert(msg, Fate::Settled);
                        } else {
                            m.held.insert(d, msg);
                        }
                        self.remove_if_done(id);
                        let ready = self.ready_len();
                        self.expected.push(Event::Dequeued {
                            consumer: id,
                            got: Some((msg, d, self.count[&msg])),
                            ready,
                        });
                    }
                }
                Command::Dequeue { consumer: id, settle }
            }
            Op::ConsumerDown { c } => {
                if let Some(m) = self.consumers.remove(&consumer_id(c)) {
                    m.held.into_values().for_each(|msg| self.give_back(msg));
                }
                Command::ConsumerDown { consumer: consumer_id(c) }
            }
            Op::NodeDown { node } => {
                let on_node: Vec<ConsumerId> =
                    self.consumers.keys().filter(|k| k.node == NodeId(node)).copied().collect();
                for id in on_node {
                    let m = self.consumers.get_mut(&id).unwrap();
                    if m.status == Some(Status::Up) {
                        m.status = Some(Status::Suspected);
                    }
                    let held = std::mem::take(&mut m.held);
                    held.into_values().for_each(|msg| self.give_back(msg));
                    self.remove_if_done(id);
                }
                Command::NodeDown { node: NodeId(node) }
            }
            Op::NodeUp { node } => {
                for (_, m) in self.consumers.iter_mut().filter(|(k, _)| k.node == NodeId(node)) {
                    if m.status == Some(Status::Suspected) {
                        m.status = Some(Status::Up);
                    }
                }
                Command::NodeUp { node: NodeId(node) }
            }
            Op::ForgetNode { node } => {
                let on_node: Vec<ConsumerId> =
                    self.consumers.keys().filter(|k| k.node == NodeId(node)).copied().collect();
                for id in on_node {
                    let m = self.consumers.remove(&id).unwrap();
                    m.held.into_values().for_each(|msg| self.give_back(msg));
                }
                if PUBLISHER.node == NodeId(node) {
                    self.last_seq = None;
                }
                Command::ForgetNode { node: NodeId(node) }
            }
            Op::PublisherDown => {
                self.last_seq = None;
                Command::PublisherDown { publisher: PUBLISHER }
            }
            Op::Purge => {
                let gone: Vec<MsgId> = self.returns.drain(..).chain(self.ready.drain(..)).collect();
                self.expected.push(Event::Purged(gone.len() as u64));
                gone.into_iter().for_each(|id| {
                    self.fate.insert(id, Fate::Purged);
                });
                Command::Purge
            }
            Op::DeadLetterSettleAll => {
                let msg_ids = std::mem::take(&mut self.dlx_pending).into_iter().collect();
                Command::DeadLetterSettled { msg_ids }
            }
            Op::SetLimits { delivery_limit, max_length } => {
                let config = Config { delivery_limit, max_length, ..self.config.clone() };
                self.config = config.clone();
                if self.config.overflow == Overflow::DropHead {
                    self.drop_over_limit();
                }
                Command::SetConfig(config)
            }
        }
    }

    fn eligible(&self, c: &ConsumerId) -> bool {
        if self.config.single_active_consumer && self.active != Some(*c) {
            return false;
        }
        self.consumers.get(c).is_some_and(|m| {
            m.status == Some(Status::Up) && (m.prefetch == 0 || (m.held.len() as u64) < u64::from(m.prefetch))
        })
    }

    /// A delivery the machine made: to a consumer with credit, of the message next in line,
    /// which has not expired.
    fn delivered(&mut self, consumer: ConsumerId, d: &Delivery) {
        assert!(self.eligible(&consumer), "delivery to {consumer:?} without credit: {self:?}");
        assert!(!self.expired(d.msg_id), "delivered an expired message");
        assert_eq!(Some(d.msg_id), self.pop_head(), "not the message next in line");
        assert_eq!(d.delivery_count, self.count[&d.msg_id]);
        assert_eq!(d.redelivered, d.delivery_count > 0);
        let m = self.consumers.get_mut(&consumer).unwrap();
        assert_eq!(d.delivery_id, m.next_delivery_id);
        m.next_delivery_id += 1;
        m.held.insert(d.delivery_id, d.msg_id);
    }

    fn live(&self) -> BTreeSet<MsgId> {
        let held = self.consumers.values().flat_map(|m| m.held.values());
        self.returns.iter().chain(&self.ready).chain(held).chain(&self.dlx_pending).copied().collect()
    }
}

/// Runs `ops` against the machine and the model, checking every step; returns the log.
fn run_checked(config: &Config, ops: &[Op]) -> Vec<(Meta, Command)> {
    let mut q = QuorumQueue::new(config.clone());
    let mut model = Model::new(config.clone());
    let mut log = Vec::new();
    let (mut clock_ms, mut lag_ms) = (0u64, 0u64);
    for (i, op) in ops.iter().enumerate() {
        match *op {
            Op::Tick { advance_ms } => clock_ms += advance_ms,
            Op::Leader { lag_ms: lag } => lag_ms = lag,
            _ => {}
        }
        let meta = Meta { index: i as u64 + 1, now_ms: clock_ms.saturating_sub(lag_ms) };
        let cmd = model.command(op, meta);
        let fx = q.apply(meta, cmd.clone());
        log.push((meta, cmd));
        // First the command's own effects, as the model predicts them...
        let n = model.expected.len().min(fx.len());
        let events: Vec<Event> = fx[..n].iter().filter_map(event).collect();
        assert_eq!(events, model.expected, "after {op:?}: {fx:?}");
        // ...then dispatch: deliveries, and the expiries it meets on the way.
        for e in &fx[n..] {
            match e {
                Effect::Deliver { consumer, delivery } => model.delivered(*consumer, delivery),
                Effect::ReleaseCursor { index } => {
                    assert!(
                        model.live().first().is_none_or(|first| index < first),
                        "cursor {index} passed a live message"
                    )
                }
                e => {
                    let head = model.head().unwrap_or_else(|| panic!("{e:?} in dispatch with nothing ready"));
                    assert!(model.expired(head), "dispatch emitted {e:?} but the head has not expired");
                    model.pop_head();
                    model.expected.clear();
                    model.die(head, Reason::Expired);
                    assert_eq!(event(e).as_ref(), model.expected.first(), "after {op:?}");
                }
            }
        }
        assert!(model.head().is_none_or(|h| !model.expired(h)), "an expired message left at the head");
        q.check_invariants();
        if model.ready_len() > 0 {
            assert!(!model.consumers.keys().any(|c| model.eligible(c)), "a consumer with credit was left idle");
        }
        assert_eq!(q.ready_ids(), model.returns.iter().chain(&model.ready).copied().collect::<Vec<_>>());
        // (Prefetch: `delivered` checked each delivery had credit. A consumer may hold more
        // than its prefetch only after basic.qos lowered it.)
        for (c, m) in &model.consumers {
            let held: Vec<MsgId> = q.checked_out(*c).iter().map(|d| d.msg_id).collect();
            assert_eq!(held, m.held.values().copied().collect::<Vec<_>>(), "{c:?} holds");
        }
        assert_eq!(q.stats().dead_letters_pending, model.dlx_pending.len() as u64);
        assert_eq!(q.active_consumer(), model.active.filter(|_| config.single_active_consumer));
        assert!(model.live().first().is_none_or(|first| q.release_cursor() < *first));
    }
    // Every message enqueued is in exactly one place or has exactly one fate.
    let live = model.live();
    for id in &model.enqueued {
        let places = usize::from(live.contains(id)) + usize::from(model.fate.contains_key(id));
        let pending_dlx = model.dlx_pending.contains(id);
        assert!(
            places == 1 || (pending_dlx && places == 2),
            "message {id}: live {} fate {:?}",
            live.contains(id),
            model.fate.get(id)
        );
    }
    assert!(live.iter().all(|id| model.enqueued.contains(id)), "a message nobody enqueued");
    log
}

fn replay(q: &mut QuorumQueue, log: &[(Meta, Command)]) -> Vec<Vec<Effect>> {
    log.iter().map(|(meta, cmd)| q.apply(*meta, cmd.clone())).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_machine_follows_the_model(config in config(), ops in prop::collection::vec(op(), 1..80)) {
        run_checked(&config, &ops);
    }

    #[test]
    fn a_snapshot_anywhere_plus_the_rest_of_the_log_equals_the_straight_run(
        config in config(),
        ops in prop::collection::vec(op(), 1..80),
        cut in any::<prop::sample::Index>(),
    ) {
        let log = run_checked(&config, &ops);
        let mut straight = QuorumQueue::new(config.clone());
        let fx = replay(&mut straight, &log);
        let k = cut.index(log.len() + 1);
        let mut first = QuorumQueue::new(config.clone());
        replay(&mut first, &log[..k]);
        let bytes = serde_json::to_vec(&first).unwrap();
        let restored: QuorumQueue = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(&restored, &first);
        // The rest of the log...
        let mut rest = restored.clone();
        let rest_fx = replay(&mut rest, &log[k..]);
        prop_assert_eq!(&rest_fx[..], &fx[k..]);
        prop_assert_eq!(&rest, &straight);
        // ...or all of it: entries the snapshot covers are skipped.
        let mut all = restored;
        let all_fx = replay(&mut all, &log);
        prop_assert!(all_fx[..k].iter().all(Vec::is_empty));
        prop_assert_eq!(&all, &straight);
    }

    #[test]
    fn two_replicas_fed_the_same_log_agree(config in config(), ops in prop::collection::vec(op(), 1..80)) {
        let log = run_checked(&config, &ops);
        let (mut a, mut b) = (QuorumQueue::new(config.clone()), QuorumQueue::new(config));
        prop_assert_eq!(replay(&mut a, &log), replay(&mut b, &log));
        prop_assert_eq!(a, b);
    }
}
