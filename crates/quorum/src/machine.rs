//! [`QuorumQueue`]: the state every replica of one quorum queue holds, and
//! [`QuorumQueue::apply`], the deterministic step from one log entry to the next state and
//! the effects the leader carries out.
//!
//! Invariants (checked after every step in the tests: by `check_invariants`, and the
//! prefetch one by the model tests, which see each delivery):
//! - every live message (ready, returned, checked out, or an at-least-once dead letter not
//!   yet confirmed) is in exactly one of those places, and its id is in `live`;
//! - `ready_bytes` is the body bytes of `returns` + `ready`, `dlx_bytes` of `dlx_pending`;
//! - `ready` is in id (enqueue) order;
//! - a consumer never holds more than its prefetch (unless its prefetch was lowered while
//!   it held more), and a cancelled consumer that holds nothing is removed;
//! - the last release cursor emitted is below every live message's id.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::types::{
    Command, Config, ConsumerId, Delivery, Effect, Message, Meta, MsgId, NodeId, Overflow, PublishId, PublisherId,
    Reason,
};

/// One quorum queue's replicated state. Everything in it is bounded by what is live
/// (messages, consumers, publishers), not by the length of the log that built it, so a
/// snapshot of it (serde) can replace the log up to [`QuorumQueue::last_index`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumQueue {
    config: Config,
    /// The last index applied; entries at or below it are skipped (a replayed prefix).
    last_index: u64,
    /// The latest time seen in an entry: leaders' clocks may differ, and a queue's time
    /// must not run backwards.
    now_ms: u64,
    /// Returned messages, in the order they came back. Delivered before `ready`: RabbitMQ
    /// 3.10's quorum queues put returned messages at the head.
    returns: VecDeque<Msg>,
    /// Messages never delivered, in enqueue order.
    ready: VecDeque<Msg>,
    /// Body bytes of `returns` and `ready` (x-max-length-bytes).
    ready_bytes: u64,
    #[serde(with = "pairs")]
    consumers: BTreeMap<ConsumerId, Consumer>,
    /// The last sequence number taken from each publisher in confirm mode.
    #[serde(with = "pairs")]
    publishers: BTreeMap<PublisherId, u64>,
    /// At-least-once dead letters waiting for their targets' confirms.
    dlx_pending: BTreeMap<MsgId, (Reason, Msg)>,
    dlx_bytes: u64,
    /// Ids of every live message: the smallest bounds the release cursor.
    live: BTreeSet<MsgId>,
    /// Hands out consumers' registration and service order (round-robin).
    service_clock: u64,
    /// Under single active consumer, the one that receives messages. Sticky: it keeps the
    /// role until it is cancelled, goes down or is suspected down, so a consumer coming
    /// back (node up) never takes over from one that holds messages.
    active: Option<ConsumerId>,
    /// The last release cursor emitted.
    released: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Msg {
    id: MsgId,
    /// Returns so far.
    delivery_count: u32,
    /// When it expires (ms); None: never.
    expires_at_ms: Option<u64>,
    msg: Message,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Status {
    Up,
    /// Its node is unreachable: not served until [`Command::NodeUp`].
    SuspectedDown,
    /// Cancelled (or a basic.get holder): never served; removed once it holds nothing.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Consumer {
    /// 0: unlimited.
    prefetch: u32,
    priority: i32,
    status: Status,
    /// Registration order (single active consumer: the earliest live one is active).
    registered: u64,
    /// When it was last served: among equals, the least recently served goes next.
    served: u64,
    next_delivery_id: u64,
    checked_out: BTreeMap<u64, Msg>,
}

impl Consumer {
    fn has_credit(&self) -> bool {
        self.prefetch == 0 || (self.checked_out.len() as u64) < u64::from(self.prefetch)
    }
}

/// What a replica's queue looks like now (management, queue.declare-ok).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub ready: u64,
    pub ready_bytes: u64,
    pub checked_out: u64,
    pub consumers: u64,
    pub dead_letters_pending: u64,
    /// Body bytes of the pending dead letters.
    pub dead_letter_bytes: u64,
}

impl QuorumQueue {
    pub fn new(config: Config) -> QuorumQueue {
        QuorumQueue {
            config,
            last_index: 0,
            now_ms: 0,
            returns: VecDeque::new(),
            ready: VecDeque::new(),
            ready_bytes: 0,
            consumers: BTreeMap::new(),
            publishers: BTreeMap::new(),
            dlx_pending: BTreeMap::new(),
            dlx_bytes: 0,
            live: BTreeSet::new(),
            service_clock: 0,
            released: 0,
            active: None,
        }
    }

    /// Apply the entry at `meta.index`. An entry at or below the last applied index is
    /// ignored (no effects), so replaying a log over a snapshot that already covers part of
    /// it is harmless.
    pub fn apply(&mut self, meta: Meta, cmd: Command) -> Vec<Effect> {
        let mut fx = Vec::new();
        if meta.index <= self.last_index {
            return fx;
        }
        self.last_index = meta.index;
        self.now_ms = self.now_ms.max(meta.now_ms);
        match cmd {
            Command::Enqueue { publish, msg, ttl_ms } => self.enqueue(meta.index, publish, msg, ttl_ms, &mut fx),
            Command::Checkout { consumer, prefetch, priority } => self.checkout(consumer, prefetch, priority),
            Command::Cancel { consumer } => {
                if let Some(c) = self.consumers.get_mut(&consumer) {
                    c.status = Status::Cancelled;
                }
                self.remove_if_done(consumer);
            }
            Command::Settle { consumer, delivery_ids } => {
                for m in self.take_checked_out(consumer, &delivery_ids) {
                    self.live.remove(&m.id);
                }
                self.remove_if_done(consumer);
            }
            Command::Return { consumer, delivery_ids } => {
                for m in self.take_checked_out(consumer, &delivery_ids) {
                    self.return_msg(m, &mut fx);
                }
                self.remove_if_done(consumer);
            }
            Command::Discard { consumer, delivery_ids } => {
                for m in self.take_checked_out(consumer, &delivery_ids) {
                    self.dead_letter(m, Reason::Rejected, &mut fx);
                }
                self.remove_if_done(consumer);
            }
            Command::Dequeue { consumer, settle } => self.dequeue(consumer, settle, &mut fx),
            Command::ConsumerDown { consumer } => {
                if let Some(c) = self.consumers.remove(&consumer) {
                    for m in c.checked_out.into_values() {
                        self.return_msg(m, &mut fx);
                    }
                }
            }
            Command::NodeDown { node } => self.node_down(node, &mut fx),
            Command::NodeUp { node } => {
                for (_, c) in self.consumers.range_mut(node_range(node)) {
                    if c.status == Status::SuspectedDown {
                        c.status = Status::Up;
                    }
                }
            }
            Command::ForgetNode { node } => {
                let gone: Vec<ConsumerId> = self.consumers.range(node_range(node)).map(|(id, _)| *id).collect();
                for id in gone {
                    if let Some(c) = self.consumers.remove(&id) {
                        for m in c.checked_out.into_values() {
                            self.return_msg(m, &mut fx);
                        }
                    }
                }
                let on_node = PublisherId { node, id: 0 }..=PublisherId { node, id: u64::MAX };
                let gone: Vec<PublisherId> = self.publishers.range(on_node).map(|(id, _)| *id).collect();
                for id in gone {
                    self.publishers.remove(&id);
                }
            }
            Command::PublisherDown { publisher } => {
                self.publishers.remove(&publisher);
            }
            Command::Purge => {
                let count = (self.returns.len() + self.ready.len()) as u64;
                for m in self.returns.drain(..).chain(self.ready.drain(..)) {
                    self.live.remove(&m.id);
                }
                self.ready_bytes = 0;
                fx.push(Effect::Purged { count });
            }
            Command::SetConfig(config) => self.set_config(config, &mut fx),
            Command::DeadLetterSettled { msg_ids } => {
                for id in msg_ids {
                    if let Some((_, m)) = self.dlx_pending.remove(&id) {
                        self.dlx_bytes -= m.msg.body_bytes;
                        self.live.remove(&id);
                    }
                }
            }
            Command::Tick => {}
        }
        self.dispatch(&mut fx);
        self.maybe_release(&mut fx);
        fx
    }

    fn enqueue(
        &mut self,
        index: u64,
        publish: Option<PublishId>,
        msg: Message,
        ttl_ms: Option<u64>,
        fx: &mut Vec<Effect>,
    ) {
        if let Some(p) = publish
            && self.publishers.get(&p.publisher).is_some_and(|&last| p.seq <= last)
        {
            // A resend (the publisher could not tell whether its first attempt committed):
            // it is in the queue already, or was taken and consumed.
            fx.push(Effect::Confirmed { publish: p });
            return;
        }
        if self.config.overflow == Overflow::RejectPublish && self.over_limit(1, msg.body_bytes) {
            // Not recorded as taken: a resend of this publish is judged again.
            fx.push(Effect::Rejected { publish });
            return;
        }
        if let Some(p) = publish {
            self.publishers.insert(p.publisher, p.seq);
            fx.push(Effect::Confirmed { publish: p });
        }
        let ttl = match (self.config.message_ttl_ms, ttl_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.ready_bytes += msg.body_bytes;
        self.live.insert(index);
        self.ready.push_back(Msg {
            id: index,
            delivery_count: 0,
            expires_at_ms: ttl.map(|t| self.now_ms.saturating_add(t)),
            msg,
        });
        if self.config.overflow == Overflow::DropHead {
            self.drop_over_limit(fx);
        }
    }

    fn checkout(&mut self, consumer: ConsumerId, prefetch: u32, priority: i32) {
        let clock = &mut self.service_clock;
        let c = self.consumers.entry(consumer).or_insert_with(|| {
            *clock += 1;
            Consumer {
                prefetch,
                priority,
                status: Status::Up,
                registered: *clock,
                served: *clock,
                next_delivery_id: 0,
                checked_out: BTreeMap::new(),
            }
        });
        // A checkout from a consumer we held as suspected down (or a basic.get holder that
        // now consumes) means it is alive and wants messages.
        c.prefetch = prefetch;
        c.priority = priority;
        c.status = Status::Up;
    }

    /// Removes the named deliveries from the consumer, in delivery order; unknown ids (a
    /// settle that raced a consumer-down, a duplicate) are ignored.
    fn take_checked_out(&mut self, consumer: ConsumerId, ids: &[u64]) -> Vec<Msg> {
        let Some(c) = self.consumers.get_mut(&consumer) else { return Vec::new() };
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter().filter_map(|id| c.checked_out.remove(&id)).collect()
    }

    fn remove_if_done(&mut self, consumer: ConsumerId) {
        if self.consumers.get(&consumer).is_some_and(|c| c.status == Status::Cancelled && c.checked_out.is_empty()) {
            self.consumers.remove(&consumer);
        }
    }

    /// Back to the queue (at the head, after earlier returns) with one more delivery
    /// counted, unless that passes the delivery limit.
    fn return_msg(&mut self, mut m: Msg, fx: &mut Vec<Effect>) {
        m.delivery_count = m.delivery_count.saturating_add(1);
        if self.config.delivery_limit.is_some_and(|limit| m.delivery_count > limit) {
            self.dead_letter(m, Reason::DeliveryLimit, fx);
            return;
        }
        self.ready_bytes += m.msg.body_bytes;
        self.returns.push_back(m);
    }

    fn node_down(&mut self, node: NodeId, fx: &mut Vec<Effect>) {
        let ids: Vec<ConsumerId> = self.consumers.range(node_range(node)).map(|(id, _)| *id).collect();
        for id in ids {
            let Some(c) = self.consumers.get_mut(&id) else { continue };
            let held = std::mem::take(&mut c.checked_out);
            if c.status == Status::Up {
                c.status = Status::SuspectedDown;
            }
            for m in held.into_values() {
                self.return_msg(m, fx);
            }
            self.remove_if_done(id);
        }
    }

    fn dequeue(&mut self, consumer: ConsumerId, settle: bool, fx: &mut Vec<Effect>) {
        let Some(m) = self.next_message(fx) else {
            fx.push(Effect::Dequeued { consumer, delivery: None, ready: 0 });
            return;
        };
        let clock = &mut self.service_clock;
        let c = self.consumers.entry(consumer).or_insert_with(|| {
            *clock += 1;
            Consumer {
                prefetch: 0,
                priority: 0,
                status: Status::Cancelled,
                registered: *clock,
                served: *clock,
                next_delivery_id: 0,
                checked_out: BTreeMap::new(),
            }
        });
        let delivery = delivery(c, &m);
        if settle {
            self.live.remove(&m.id);
        } else {
            c.checked_out.insert(delivery.delivery_id, m);
        }
        self.remove_if_done(consumer);
        let ready = (self.returns.len() + self.ready.len()) as u64;
        fx.push(Effect::Dequeued { consumer, delivery: Some(delivery), ready });
    }

    fn set_config(&mut self, config: Config, fx: &mut Vec<Effect>) {
        let was_at_least_once = self.config.at_least_once();
        self.config = config;
        if was_at_least_once && !self.config.at_least_once() {
            // RabbitMQ deletes dead letters its targets have not confirmed when a queue
            // leaves at-least-once: they were handed to the dead-letter exchange already.
            for id in std::mem::take(&mut self.dlx_pending).into_keys() {
                self.live.remove(&id);
            }
            self.dlx_bytes = 0;
        }
        // A lower limit under drop-head drops the excess now; under reject-publish the
        // queue refuses publishes until it is below the limit.
        if self.config.overflow == Overflow::DropHead {
            self.drop_over_limit(fx);
        }
    }

    /// The message died: to the dead-letter exchange, kept until confirmed (at-least-once)
    /// or let go (at-most-once), or dropped when there is no dead-letter exchange.
    fn dead_letter(&mut self, m: Msg, reason: Reason, fx: &mut Vec<Effect>) {
        if self.config.dead_letter.is_none() {
            self.live.remove(&m.id);
            fx.push(Effect::Dropped { reason, msg_id: m.id });
            return;
        }
        let at_least_once = self.config.at_least_once();
        fx.push(Effect::DeadLetter {
            reason,
            msg_id: m.id,
            delivery_count: m.delivery_count,
            msg: m.msg.clone(),
            at_least_once,
        });
        if at_least_once {
            self.dlx_bytes += m.msg.body_bytes;
            self.dlx_pending.insert(m.id, (reason, m));
        } else {
            self.live.remove(&m.id);
        }
    }

    /// Whether the queue would be over its length limits with `msgs` and `bytes` more.
    /// Ready messages and unconfirmed dead letters count (as in RabbitMQ); checked-out
    /// messages do not.
    fn over_limit(&self, msgs: u64, bytes: u64) -> bool {
        let count = (self.returns.len() + self.ready.len() + self.dlx_pending.len()) as u64;
        self.config.max_length.is_some_and(|max| count + msgs > max)
            || self.config.max_length_bytes.is_some_and(|max| self.ready_bytes + self.dlx_bytes + bytes > max)
    }

    fn drop_over_limit(&mut self, fx: &mut Vec<Effect>) {
        while self.over_limit(0, 0) {
            let Some(m) = self.pop_head() else { return };
            self.dead_letter(m, Reason::MaxLen, fx);
        }
    }

    /// The next message to deliver, without looking at its expiry.
    fn pop_head(&mut self) -> Option<Msg> {
        let m = self.returns.pop_front().or_else(|| self.ready.pop_front())?;
        self.ready_bytes -= m.msg.body_bytes;
        Some(m)
    }

    fn head(&self) -> Option<&Msg> {
        self.returns.front().or_else(|| self.ready.front())
    }

    /// The next message to deliver, dead-lettering the expired ones on the way (RabbitMQ
    /// expires messages when they reach the head of the queue).
    fn next_message(&mut self, fx: &mut Vec<Effect>) -> Option<Msg> {
        self.expire_head(fx);
        self.pop_head()
    }

    fn expire_head(&mut self, fx: &mut Vec<Effect>) {
        while self.head().is_some_and(|m| m.expires_at_ms.is_some_and(|t| t < self.now_ms)) {
            let Some(m) = self.pop_head() else { return };
            self.dead_letter(m, Reason::Expired, fx);
        }
    }

    /// Deliver to consumers with credit until the queue or the credit runs out: the
    /// highest priority first, round-robin (least recently served) within a priority;
    /// under single active consumer only the active one.
    fn dispatch(&mut self, fx: &mut Vec<Effect>) {
        if self.config.single_active_consumer {
            self.elect_active();
        }
        // Expiring before every pick leaves no expired message at the head when this
        // returns, whether it stopped for lack of messages or of credit.
        loop {
            self.expire_head(fx);
            if self.head().is_none() {
                return;
            }
            let Some(id) = self.next_consumer() else { return };
            let Some(m) = self.pop_head() else { return };
            self.service_clock += 1;
            let c = self.consumers.get_mut(&id).expect("next_consumer picks a registered consumer");
            c.served = self.service_clock;
            let delivery = delivery(c, &m);
            c.checked_out.insert(delivery.delivery_id, m);
            fx.push(Effect::Deliver { consumer: id, delivery });
        }
    }

    /// Keeps the active consumer while it is up; otherwise the earliest registered one that
    /// is up takes over (RabbitMQ 3.10 ignores consumer priorities here).
    fn elect_active(&mut self) {
        let up = |c: &Consumer| c.status == Status::Up;
        if self.active.and_then(|id| self.consumers.get(&id)).is_some_and(up) {
            return;
        }
        self.active = self.consumers.iter().filter(|(_, c)| up(c)).min_by_key(|(_, c)| c.registered).map(|(id, _)| *id);
    }

    /// O(consumers) per delivery: fine for the tens of consumers a queue usually has; a
    /// queue with thousands would want an ordered service set instead.
    fn next_consumer(&self) -> Option<ConsumerId> {
        if self.config.single_active_consumer {
            let id = self.active?;
            return self.consumers.get(&id).is_some_and(Consumer::has_credit).then_some(id);
        }
        self.consumers
            .iter()
            .filter(|(_, c)| c.status == Status::Up && c.has_credit())
            .min_by_key(|(_, c)| (std::cmp::Reverse(c.priority), c.served))
            .map(|(id, _)| *id)
    }

    fn maybe_release(&mut self, fx: &mut Vec<Effect>) {
        let cursor = self.release_cursor();
        if cursor >= self.released.saturating_add(self.config.release_cursor_interval_entries.max(1)) {
            self.released = cursor;
            fx.push(Effect::ReleaseCursor { index: cursor });
        }
    }

    /// The highest log index no live message needs: one below the oldest live message's
    /// `Enqueue` entry, or the last applied index when nothing is live.
    pub fn release_cursor(&self) -> u64 {
        self.live.first().map_or(self.last_index, |id| id - 1)
    }

    /// Every consumer the queue knows (active, cancelled with messages still checked out,
    /// or suspended with its node).
    pub fn consumers(&self) -> Vec<ConsumerId> {
        self.consumers.keys().copied().collect()
    }

    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Under single active consumer, the consumer receiving messages (management's
    /// `single_active_consumer_tag`).
    pub fn active_consumer(&self) -> Option<ConsumerId> {
        if self.config.single_active_consumer { self.active } else { None }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether applying a publish may answer [`Effect::Rejected`] (`x-overflow:
    /// reject-publish`). When it may not, every publish applied is taken (or dropped as a
    /// resend already taken), so its outcome is known before it is applied: the broker
    /// confirms it as soon as its entry is committed. Only [`Command::SetConfig`] changes
    /// this, applied in log order.
    pub fn may_refuse_publishes(&self) -> bool {
        self.config.overflow == Overflow::RejectPublish
    }

    /// When the message at the head expires, if it does: the leader proposes a
    /// [`Command::Tick`] after that time so it is dead-lettered without waiting for traffic.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.head().and_then(|m| m.expires_at_ms)
    }

    pub fn stats(&self) -> Stats {
        Stats {
            ready: (self.returns.len() + self.ready.len()) as u64,
            ready_bytes: self.ready_bytes,
            checked_out: self.consumers.values().map(|c| c.checked_out.len() as u64).sum(),
            consumers: self.consumers.values().filter(|c| c.status != Status::Cancelled).count() as u64,
            dead_letters_pending: self.dlx_pending.len() as u64,
            dead_letter_bytes: self.dlx_bytes,
        }
    }

    /// Whether message `id` is an at-least-once dead letter not yet settled.
    pub fn is_dead_letter_pending(&self, id: MsgId) -> bool {
        self.dlx_pending.contains_key(&id)
    }

    /// At-least-once dead letters not yet confirmed, as [`Effect::DeadLetter`]s: a new
    /// leader sends them again (duplicates at the targets are possible, as in RabbitMQ).
    pub fn pending_dead_letters(&self) -> Vec<Effect> {
        self.dlx_pending
            .values()
            .map(|(reason, m)| Effect::DeadLetter {
                reason: *reason,
                msg_id: m.id,
                delivery_count: m.delivery_count,
                msg: m.msg.clone(),
                at_least_once: true,
            })
            .collect()
    }

    /// What `consumer` holds, in delivery order: a new leader's view of the deliveries in
    /// flight (the consumer's channel may need them again).
    pub fn checked_out(&self, consumer: ConsumerId) -> Vec<Delivery> {
        let Some(c) = self.consumers.get(&consumer) else { return Vec::new() };
        c.checked_out
            .iter()
            .map(|(&delivery_id, m)| Delivery {
                delivery_id,
                msg_id: m.id,
                redelivered: m.delivery_count > 0,
                delivery_count: m.delivery_count,
                msg: m.msg.clone(),
            })
            .collect()
    }
}

fn delivery(c: &mut Consumer, m: &Msg) -> Delivery {
    let delivery_id = c.next_delivery_id;
    c.next_delivery_id += 1;
    Delivery {
        delivery_id,
        msg_id: m.id,
        redelivered: m.delivery_count > 0,
        delivery_count: m.delivery_count,
        msg: m.msg.clone(),
    }
}

/// Every consumer id on `node` (ids sort by node first).
fn node_range(node: NodeId) -> std::ops::RangeInclusive<ConsumerId> {
    ConsumerId { node, id: 0 }..=ConsumerId { node, id: u64::MAX }
}

/// Maps with struct keys as sequences of pairs: formats such as JSON only have string keys.
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer, K: Serialize, V: Serialize>(
        map: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, K: Deserialize<'de> + Ord, V: Deserialize<'de>>(
        d: D,
    ) -> Result<BTreeMap<K, V>, D::Error> {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
impl QuorumQueue {
    /// Panics if an invariant in the module docs does not hold.
    pub(crate) fn check_invariants(&self) {
        let mut ids = BTreeSet::new();
        let mut all = |id: MsgId| assert!(ids.insert(id), "message {id} is in two places");
        self.returns.iter().chain(&self.ready).for_each(|m| all(m.id));
        self.consumers.values().flat_map(|c| c.checked_out.values()).for_each(|m| all(m.id));
        self.dlx_pending.keys().for_each(|&id| all(id));
        assert_eq!(ids, self.live, "live set");
        let bytes: u64 = self.returns.iter().chain(&self.ready).map(|m| m.msg.body_bytes).sum();
        assert_eq!(bytes, self.ready_bytes, "ready bytes");
        assert_eq!(self.dlx_pending.values().map(|(_, m)| m.msg.body_bytes).sum::<u64>(), self.dlx_bytes);
        assert!(self.ready.iter().zip(self.ready.iter().skip(1)).all(|(a, b)| a.id < b.id), "ready in order");
        for c in self.consumers.values() {
            assert!(!(c.status == Status::Cancelled && c.checked_out.is_empty()), "finished consumer kept");
        }
        if let Some(&first) = self.live.first() {
            assert!(self.released < first, "release cursor {} passed live message {first}", self.released);
        }
    }

    pub(crate) fn held_by(&self, consumer: ConsumerId) -> usize {
        self.consumers.get(&consumer).map_or(0, |c| c.checked_out.len())
    }

    /// Ids of the ready messages in delivery order.
    pub(crate) fn ready_ids(&self) -> Vec<MsgId> {
        self.returns.iter().chain(&self.ready).map(|m| m.id).collect()
    }
}
