//! A queue: its ready messages (behind [`MessageStore`]), its consumers, dispatch, and the
//! RabbitMQ queue features that act on messages: TTL, length limits, delivery limits and
//! dead-lettering, consumer priorities and single active consumer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use wire::FieldTable;

use crate::ConnectionId;
use crate::args::{Overflow, QueueArgs};
use crate::clock::{Clock, SystemClock};
use crate::counters::{QueueCounters, bump_single_writer as bump};
use crate::dead_letter::Reason;
use crate::error::AmqpError;
use crate::message::{Message, QueuedMessage};
use crate::policy::{self, Applied, PolicyDefinition};
use crate::store::{MemoryStore, MessageStore};
use crate::vhost::VHost;

/// Where a queue hands its messages. Implemented by the server for each basic.consume.
///
/// Called with the queue's lock held: implementations must not call back into any queue.
pub trait ConsumerSink: Send + Sync {
    /// Deliver `m` if this consumer has credit (prefetch, channel flow, socket buffer),
    /// or hand it back. A no-ack consumer's delivery counts as acknowledged at once.
    fn try_deliver(&self, queue: &Arc<Queue>, m: QueuedMessage) -> Result<(), QueuedMessage>;
    /// Deliver `m` whatever the consumer's credit: a [`Replica`] already counted it against
    /// the consumer's prefetch. Handed back only when the consumer is gone.
    fn force_deliver(&self, queue: &Arc<Queue>, m: QueuedMessage) -> Result<(), QueuedMessage> {
        self.try_deliver(queue, m)
    }
    /// Whether the consumer was registered with no_ack (its deliveries leave the queue).
    fn no_ack(&self) -> bool;
    /// Its prefetch (basic.qos global=false when it started), 0 = unlimited: what a
    /// [`Replica`] counts its deliveries against.
    fn prefetch(&self) -> u32 {
        0
    }
    /// The queue was deleted under the consumer: tell the client (basic.cancel).
    fn cancelled_by_broker(&self);
    /// The consumer has credit but its connection's write buffer is full: it takes
    /// messages as fast as its socket drains.
    fn write_blocked(&self) -> bool {
        false
    }
}

/// Global, process-unique consumer ids (used to cancel a consumer on its queue).
static NEXT_CONSUMER_ID: AtomicU64 = AtomicU64::new(1);

/// How a replica settles deliveries ([`Replica::settle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Ack,
    Requeue,
    Reject,
}

/// A queue whose messages live elsewhere: a replicated quorum queue, whose commands the
/// server's Raft group applies on every node. The broker's [`Queue`] keeps its name,
/// arguments, bindings and declare checks; every method that acts on messages or consumers
/// hands over to the replica. `seq` of a [`QueuedMessage`] it delivers is the replica's
/// own key for that delivery, which is how acks find it again.
pub trait Replica: Send + Sync {
    /// Propose the message; the outcome says what a confirm waits for. `confirm`: the
    /// publisher waits for a confirm, so a refusal is kept until it asks (one without
    /// confirms loses a refused message silently, as in RabbitMQ, and nothing is kept).
    fn publish(&self, queue: &Arc<Queue>, msg: Arc<Message>, confirm: bool) -> PublishOutcome;
    /// Register a consumer (deliveries come later, from the replica, through its sink).
    fn add_consumer(&self, queue: &Arc<Queue>, consumer: Consumer) -> Result<(), AmqpError>;
    fn remove_consumers(&self, ids: &[u64]);
    fn settle(&self, msgs: Vec<QueuedMessage>, how: Settle);
    /// basic.get (waits for the replica's answer).
    fn get(&self, queue: &Arc<Queue>, no_ack: bool) -> Result<Option<(QueuedMessage, u32)>, AmqpError>;
    fn purge(&self) -> Result<usize, AmqpError>;
    /// Ready, unacked, consumers and ready bytes as this node's replica has them.
    fn stats(&self) -> QueueStats;
    /// Where the queue's replicas run, as this node knows it.
    fn placement(&self) -> Placement;
    /// The counts queue.declare-ok reports: a replica that must ask another node for them
    /// does so here (and fails, e.g. with 404, when that node cannot be reached).
    fn declare_stats(&self) -> Result<QueueStats, AmqpError> {
        Ok(self.stats())
    }
}

/// Where a replicated queue runs (management's `leader`, `members` and `online`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// The node whose replica leads, when one is known.
    pub leader: Option<String>,
    /// Every node with a replica.
    pub members: Vec<String>,
    /// The members that answer.
    pub online: Vec<String>,
    /// A classic queue living on another node (`leader` is its home): only management's
    /// `node` applies, not the quorum fields.
    pub home_only: bool,
}

pub fn next_consumer_id() -> u64 {
    NEXT_CONSUMER_ID.fetch_add(1, Ordering::Relaxed)
}

pub struct Consumer {
    pub id: u64,
    pub tag: String,
    pub exclusive: bool,
    /// x-priority: consumers of higher priority get messages first.
    pub priority: i32,
    pub sink: Arc<dyn ConsumerSink>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueOptions {
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

pub struct Queue {
    pub name: String,
    pub vhost: String,
    pub options: QueueOptions,
    /// The arguments as declared. What the queue acts on is its effective settings
    /// ([`Queue::effective_args`]): these combined with the policies that apply, kept in
    /// the queue state and recomputed when the vhost's policies change. Settings no policy
    /// can change (max priority, single active consumer, type) are read from here.
    pub declared_args: QueueArgs,
    /// The connection that declared an exclusive queue.
    pub owner: Option<ConnectionId>,
    clock: Arc<dyn Clock>,
    /// Some message with its own expiration was ever published here.
    may_expire: AtomicBool,
    /// The effective settings name a dead-letter exchange (mirrors `eff`, set under the
    /// state lock): messages dropped by a queue without one cost no second lock.
    has_dlx: AtomicBool,
    /// For dead-lettering (routing through the vhost's exchanges).
    vhost_ref: Weak<VHost>,
    /// See [`Queue::in_flow`]; recomputed whenever dispatch stops.
    flow: AtomicBool,
    /// Messages handed to consumers so far (a progress counter for flow control).
    deliveries: AtomicU64,
    /// Publishers paused by flow, woken when it clears.
    flow_waiters: Mutex<Vec<Waker>>,
    /// Message counters (management statistics), changed under `state`'s lock.
    pub counters: QueueCounters,
    /// Set for a replicated quorum queue, or a classic queue of another node: messages and
    /// consumers are the replica's.
    replica: std::sync::OnceLock<Arc<dyn Replica>>,
    /// A classic queue whose home is another node of the cluster: nothing of it (the queue,
    /// its bindings) is recorded by this node's persistence.
    remote: AtomicBool,
    state: Mutex<QueueState>,
}

struct QueueState {
    store: Box<dyn MessageStore>,
    /// Sorted by priority, highest first; registration order within a priority.
    consumers: Vec<Consumer>,
    /// Round-robin position: the consumer tried first on the next delivery (within the
    /// highest priority group that has credit).
    cursor: usize,
    next_seq: u64,
    /// Delivered to a consumer that must still ack.
    unacked: u64,
    /// Their body bytes.
    unacked_bytes: u64,
    /// Since when ready messages wait while every consumer is out of credit (none while
    /// the queue can deliver at once): consumer utilisation is the rest of the time.
    stalled_since_ms: Option<u64>,
    /// Milliseconds of stalls that have ended.
    stalled_ms: u64,
    deleted: bool,
    /// The queue is in its vhost's set of queues the housekeeping tick visits (see
    /// [`Queue::arm`]).
    timed: bool,
    /// Last time the queue was used (consumer added, get, redeclare), for x-expires.
    last_used_ms: u64,
    /// `declared_args` combined with `applied`: read under this lock, which every path
    /// that acts on a message already holds, so policies cost the hot path nothing.
    eff: QueueArgs,
    applied: Applied,
}

/// Counts for queue.declare-ok and management.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    pub messages_ready: u64,
    pub messages_unacked: u64,
    pub consumers: u32,
    pub ready_bytes: u64,
    /// What the ready messages kept in RAM cost (paged-out ones are not counted).
    pub ready_ram_bytes: u64,
    /// Body bytes of the messages delivered and not yet acked.
    pub unacked_bytes: u64,
    /// Milliseconds, in total, that ready messages waited while every consumer was out of
    /// credit (prefetch, flow, a full socket): the complement of RabbitMQ's consumer
    /// utilisation, as a counter whose rate the statistics sampler turns into a fraction.
    pub stalled_ms: u64,
    /// A quorum queue's at-least-once dead letters, kept until every target has them
    /// (RabbitMQ's `messages_dlx`), and their body bytes (`message_bytes_dlx`).
    pub dead_letters: u64,
    pub dead_letter_bytes: u64,
}

/// The outcome of a housekeeping visit ([`Queue::tick_timed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ticked {
    /// Nothing to do (empty, no x-expires, or deleted): out of the timed set.
    Idle,
    /// Still timed: visit again next tick.
    Keep,
    /// x-expires elapsed: the vhost deletes the queue.
    Expired,
}

/// What became of a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Enqueued; confirm once it is durable.
    Enqueued(crate::store::Durability),
    /// Handed to a replica ([`Replica`]) as its command number `ticket`: confirm once the
    /// replica has applied it (or nack if it says it failed).
    Replicated(u64),
    /// The queue's store could not take it (e.g. a write failed): it was not enqueued, and
    /// a confirming publisher gets a nack.
    Failed,
    /// Refused by x-overflow=reject-publish(-dlx): nack a confirming publisher.
    Rejected,
    /// The queue was deleted meanwhile.
    Deleted,
}

/// Dead letters collected under the lock, routed after it is released (routing takes other
/// queues' locks).
pub type Letters = Vec<(QueuedMessage, Reason)>;

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("name", &self.name).field("vhost", &self.vhost).finish()
    }
}

impl Queue {
    /// A standalone in-memory queue on the system clock (tests, pseudo-queues).
    pub fn new(vhost: &str, name: String, options: QueueOptions, owner: Option<ConnectionId>) -> Arc<Queue> {
        let args = QueueArgs::parse(&options.arguments, &name, vhost).unwrap_or_default();
        Self::build(
            vhost,
            name,
            options,
            args,
            Applied::default(),
            owner,
            Box::new(MemoryStore::new()),
            Arc::new(SystemClock),
            Weak::new(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        vhost: &str,
        name: String,
        options: QueueOptions,
        args: QueueArgs,
        applied: Applied,
        owner: Option<ConnectionId>,
        store: Box<dyn MessageStore>,
        clock: Arc<dyn Clock>,
        vhost_ref: Weak<VHost>,
    ) -> Arc<Queue> {
        let next_seq = store.last_seq().map_or(0, |s| s + 1);
        // Recovered messages may carry expiry times.
        let may_expire = !store.is_empty();
        let now = clock.now_ms();
        let eff = policy::effective(&args, def(&applied.policy), def(&applied.operator));
        Arc::new(Queue {
            name,
            vhost: vhost.to_owned(),
            options,
            declared_args: args,
            owner,
            clock,
            may_expire: AtomicBool::new(may_expire),
            has_dlx: AtomicBool::new(eff.dead_letter_exchange.is_some()),
            vhost_ref,
            flow: AtomicBool::new(false),
            deliveries: AtomicU64::new(0),
            flow_waiters: Mutex::new(Vec::new()),
            counters: QueueCounters::default(),
            replica: std::sync::OnceLock::new(),
            remote: AtomicBool::new(false),
            state: Mutex::new(QueueState {
                store,
                consumers: Vec::new(),
                cursor: 0,
                next_seq,
                unacked: 0,
                unacked_bytes: 0,
                stalled_since_ms: None,
                stalled_ms: 0,
                deleted: false,
                timed: false,
                last_used_ms: now,
                eff,
                applied,
            }),
        })
    }

    /// Hand this queue's messages and consumers to `replica` (once; later calls are ignored).
    pub fn set_replica(&self, replica: Arc<dyn Replica>) {
        let _ = self.replica.set(replica);
    }

    pub fn replica(&self) -> Option<&Arc<dyn Replica>> {
        self.replica.get()
    }

    pub(crate) fn mark_remote(&self) {
        self.remote.store(true, Ordering::Relaxed);
    }

    /// A classic queue whose home is another node ([`crate::VHost::declare_remote_queue`]).
    pub fn is_remote(&self) -> bool {
        self.remote.load(Ordering::Relaxed)
    }

    /// The counts for queue.declare-ok: [`Queue::stats`], or the replica's answer (which
    /// may have to ask another node, and fail).
    pub fn declare_stats(&self) -> Result<QueueStats, AmqpError> {
        match self.replica.get() {
            Some(r) => r.declare_stats(),
            None => Ok(self.stats()),
        }
    }

    /// Where a replicated queue's replicas run (None for a queue of this node only).
    pub fn placement(&self) -> Option<Placement> {
        self.replica.get().map(|r| r.placement())
    }

    pub fn stats(&self) -> QueueStats {
        if let Some(r) = self.replica.get() {
            return r.stats();
        }
        let st = self.state.lock();
        let open = st.stalled_since_ms.map_or(0, |t| self.clock.now_ms().saturating_sub(t));
        QueueStats {
            messages_ready: st.store.len() as u64,
            messages_unacked: st.unacked,
            consumers: st.consumers.len() as u32,
            ready_bytes: st.store.bytes(),
            ready_ram_bytes: st.store.ram_bytes(),
            unacked_bytes: st.unacked_bytes,
            stalled_ms: st.stalled_ms + open,
            dead_letters: 0,
            dead_letter_bytes: 0,
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The time, when anything in this queue can depend on it (TTLs, expiring messages,
    /// x-expires); else 0, which expires nothing. Saves a clock read per message on the
    /// hot path of queues that never expire anything. Read under the state lock, so a
    /// TTL set by a policy a moment ago is seen.
    fn time_if_needed(&self, st: &QueueState) -> u64 {
        if st.eff.message_ttl_ms.is_some() || st.eff.expires_ms.is_some() || self.may_expire.load(Ordering::Relaxed) {
            self.clock.now_ms()
        } else {
            0
        }
    }

    /// Mark the queue used (redeclare), resetting its x-expires timer.
    pub fn touch(&self) {
        self.state.lock().last_used_ms = self.clock.now_ms();
    }

    /// When the message expires in this queue: the earlier of the queue's message TTL
    /// (`ttl_ms`, effective now) and the message's own expiration (ms; validated by the
    /// publisher's channel).
    fn expiry_for(msg: &Message, ttl_ms: Option<u64>, now: u64) -> u64 {
        let per_queue = ttl_ms.map(|t| now.saturating_add(t));
        let per_message = msg.expiration_ms.map(|t| now.saturating_add(t));
        match (per_queue, per_message) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => 0,
        }
    }

    fn over_limit(st: &QueueState, extra_msgs: u64, extra_bytes: u64) -> bool {
        st.eff.max_length.is_some_and(|max| st.store.len() as u64 + extra_msgs > max)
            || st.eff.max_length_bytes.is_some_and(|max| st.store.bytes() + extra_bytes > max)
    }

    /// Enqueue a routed message and deliver what consumers can take (no publisher
    /// confirm waits for it).
    pub fn publish(self: &Arc<Self>, msg: Arc<Message>) -> PublishOutcome {
        self.publish_for(msg, false)
    }

    /// [`Queue::publish`] for a publisher in confirm mode: a replicated queue keeps a
    /// refusal of it until the publisher's channel asks.
    pub fn publish_confirmed(self: &Arc<Self>, msg: Arc<Message>) -> PublishOutcome {
        self.publish_for(msg, true)
    }

    fn publish_for(self: &Arc<Self>, msg: Arc<Message>, confirm: bool) -> PublishOutcome {
        if let Some(r) = self.replica.get() {
            if self.state.lock().deleted {
                return PublishOutcome::Deleted;
            }
            return r.publish(self, msg, confirm);
        }
        if msg.expiration_ms.is_some() {
            self.may_expire.store(true, Ordering::Relaxed);
        }
        let mut letters = Letters::new();
        let outcome = {
            let mut st = self.state.lock();
            if st.deleted {
                return PublishOutcome::Deleted;
            }
            let now = self.time_if_needed(&st);
            self.expire_head(&mut st, now, &mut letters);
            let size = msg.body_size();
            let seq = st.next_seq;
            st.next_seq += 1;
            let m = QueuedMessage {
                expires_at_ms: Self::expiry_for(&msg, st.eff.message_ttl_ms, now),
                msg,
                seq,
                redelivered: false,
                delivery_count: 0,
                disk: None,
            };
            let overflow = st.eff.overflow.unwrap_or_default();
            if overflow != Overflow::DropHead && Self::over_limit(&st, 1, size) {
                if overflow == Overflow::RejectPublishDlx {
                    letters.push((m, Reason::MaxLen));
                }
                PublishOutcome::Rejected
            } else {
                // The store logs why it failed; the publisher hears a nack.
                match st.store.push(m) {
                    Ok(durability) => {
                        bump(&self.counters.publish, 1);
                        self.arm(&mut st);
                        self.after_push(st, now, &mut letters);
                        PublishOutcome::Enqueued(durability)
                    }
                    Err(_) => PublishOutcome::Failed,
                }
            }
        };
        self.dead_letter(letters);
        outcome
    }

    /// Enforce the length limits and deliver, after a push.
    fn after_push(self: &Arc<Self>, mut st: parking_lot::MutexGuard<'_, QueueState>, now: u64, letters: &mut Letters) {
        Self::drop_over_limit(&mut st, letters);
        if !st.consumers.is_empty() {
            self.dispatch_locked(&mut st, now, letters);
        }
        // A publisher re-locks at once for its next message: hand the lock to a waiting
        // consumer (ack, dispatch) instead of barging ahead of it.
        parking_lot::MutexGuard::unlock_fair(st);
    }

    /// RabbitMQ's "flow" state, for this queue: its ready backlog is near its store's RAM
    /// budget while its consumers are limited only by their sockets. A publisher routing
    /// here should pause briefly (while [`Queue::deliveries`] advances) instead of making
    /// the queue page to disk messages that consumers would have taken a moment later.
    pub fn in_flow(&self) -> bool {
        self.flow.load(Ordering::Relaxed)
    }

    /// Messages handed to consumers since the queue was created.
    pub fn deliveries(&self) -> u64 {
        self.deliveries.load(Ordering::Relaxed)
    }

    /// Drop (dead-letter, reason maxlen) messages from the head while the queue is over
    /// its length limits.
    fn drop_over_limit(st: &mut QueueState, letters: &mut Letters) {
        while Self::over_limit(st, 0, 0) {
            let Some(head) = st.store.pop() else { break };
            st.store.ack(&head);
            letters.push((head, Reason::MaxLen));
        }
    }

    /// Try to deliver ready messages to consumers (after credit was freed).
    pub fn dispatch(self: &Arc<Self>) {
        if self.replica.get().is_some() {
            return;
        }
        let mut letters = Letters::new();
        {
            let mut st = self.state.lock();
            let now = self.time_if_needed(&st);
            self.dispatch_locked(&mut st, now, &mut letters);
        }
        self.dead_letter(letters);
    }

    /// Drop (dead-letter) expired messages at the head of the queue. RabbitMQ expires
    /// messages when they reach the head; so do we.
    fn expire_head(&self, st: &mut QueueState, now: u64, letters: &mut Letters) {
        while let Some(m) = st.store.peek() {
            if m.expires_at_ms == 0 || m.expires_at_ms >= now {
                return;
            }
            let Some(m) = st.store.pop() else { return };
            st.store.ack(&m);
            letters.push((m, Reason::Expired));
        }
    }

    /// The consumers that may receive now: the active one under single-active-consumer,
    /// else all, highest priority group first.
    fn dispatch_locked(self: &Arc<Self>, st: &mut QueueState, now: u64, letters: &mut Letters) {
        let stalled = self.deliver_ready(st, now, letters);
        // The clock is read only when a stall starts or ends, not per message.
        match (stalled, st.stalled_since_ms) {
            (true, None) => st.stalled_since_ms = Some(self.clock.now_ms()),
            (false, Some(t)) => {
                st.stalled_ms += self.clock.now_ms().saturating_sub(t);
                st.stalled_since_ms = None;
            }
            _ => {}
        }
        let flow = stalled && st.store.near_ram_budget() && st.consumers.iter().any(|c| c.sink.write_blocked());
        if flow != self.flow.load(Ordering::Relaxed) {
            self.set_flow(flow);
        }
    }

    fn set_flow(&self, flow: bool) {
        self.flow.store(flow, Ordering::Relaxed);
        if !flow {
            for w in std::mem::take(&mut *self.flow_waiters.lock()) {
                w.wake();
            }
        }
    }

    /// Ready once the queue is out of flow; otherwise the task is woken when it leaves it.
    pub fn poll_flow_cleared(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.in_flow() {
            return Poll::Ready(());
        }
        {
            let mut w = self.flow_waiters.lock();
            if !w.iter().any(|x| x.will_wake(cx.waker())) {
                w.push(cx.waker().clone());
            }
        }
        // Flow may have cleared before the waker was registered.
        if self.in_flow() { Poll::Pending } else { Poll::Ready(()) }
    }

    /// Deliver until the queue is empty (false) or no consumer takes the next message (true).
    fn deliver_ready(self: &Arc<Self>, st: &mut QueueState, now: u64, letters: &mut Letters) -> bool {
        loop {
            self.expire_head(st, now, letters);
            let n = st.consumers.len();
            if n == 0 {
                return false;
            }
            let Some(next) = st.store.peek() else { return false };
            let mut m = next.clone();
            m.delivery_count += 1;
            let mut held = Some(m);
            let mut taken = None;
            if self.declared_args.single_active_consumer {
                let c = &st.consumers[0];
                if let Some(m) = held.take()
                    && c.sink.try_deliver(self, m).is_ok()
                {
                    taken = Some((0, c.sink.no_ack()));
                }
            } else {
                // Walk priority groups from the highest; round-robin inside a group.
                let mut start = 0;
                while start < n && taken.is_none() {
                    let prio = st.consumers[start].priority;
                    let end = start + st.consumers[start..].iter().take_while(|c| c.priority == prio).count();
                    let len = end - start;
                    let first = if st.cursor >= start && st.cursor < end { st.cursor - start } else { 0 };
                    for i in 0..len {
                        let idx = start + (first + i) % len;
                        let c = &st.consumers[idx];
                        let Some(m) = held.take() else { break };
                        match c.sink.try_deliver(self, m) {
                            Ok(()) => {
                                taken = Some((idx, c.sink.no_ack()));
                                break;
                            }
                            Err(back) => held = Some(back),
                        }
                    }
                    start = end;
                }
            }
            let Some((idx, no_ack)) = taken else { return true };
            st.cursor = idx + 1;
            self.deliveries.fetch_add(1, Ordering::Relaxed);
            if let Some(d) = st.store.pop() {
                st.store.delivered(&d);
                let c = &self.counters;
                bump(if no_ack { &c.deliver_no_ack } else { &c.deliver }, 1);
                if d.redelivered {
                    bump(&c.redeliver, 1);
                }
                if no_ack {
                    st.store.ack(&d);
                } else {
                    st.unacked += 1;
                    st.unacked_bytes += d.msg.body_size();
                }
            }
        }
    }

    /// basic.get: take the next message. `no_ack` acknowledges it at once.
    /// Returns the message and how many remain ready.
    pub fn get(self: &Arc<Self>, no_ack: bool) -> Option<(QueuedMessage, u32)> {
        if let Some(r) = self.replica.get() {
            // The replica logs why a get failed; the client sees get-empty.
            return r.get(self, no_ack).ok().flatten();
        }
        let mut letters = Letters::new();
        let got = {
            let mut st = self.state.lock();
            let now = self.time_if_needed(&st);
            // A get is a use of the queue (x-expires), whether or not TTLs need the time.
            st.last_used_ms = if now == 0 { self.clock.now_ms() } else { now };
            self.expire_head(&mut st, now, &mut letters);
            let got = st.store.pop().map(|mut m| {
                m.delivery_count += 1;
                st.store.delivered(&m);
                let c = &self.counters;
                bump(if no_ack { &c.get_no_ack } else { &c.get }, 1);
                if m.redelivered {
                    bump(&c.redeliver, 1);
                }
                if no_ack {
                    st.store.ack(&m);
                } else {
                    st.unacked += 1;
                    st.unacked_bytes += m.msg.body_size();
                }
                let remaining = st.store.len() as u32;
                (m, remaining)
            });
            if got.is_none() {
                bump(&self.counters.get_empty, 1);
            }
            got
        };
        self.dead_letter(letters);
        got
    }

    /// Messages acknowledged by their consumer.
    pub fn ack(&self, msgs: &[QueuedMessage]) {
        if let Some(r) = self.replica.get() {
            return r.settle(msgs.to_vec(), Settle::Ack);
        }
        self.settle(msgs, true);
    }

    /// Messages settled for good: acked (counted as acks) or rejected.
    fn settle(&self, msgs: &[QueuedMessage], acked: bool) {
        let mut st = self.state.lock();
        for m in msgs {
            st.store.ack(m);
        }
        st.unacked = st.unacked.saturating_sub(msgs.len() as u64);
        st.unacked_bytes = st.unacked_bytes.saturating_sub(msgs.iter().map(|m| m.msg.body_size()).sum());
        if acked {
            bump(&self.counters.ack, msgs.len() as u64);
        }
    }

    /// Messages rejected (or nacked) without requeue: dead-lettered if configured.
    pub fn reject(self: &Arc<Self>, msgs: Vec<QueuedMessage>) {
        if let Some(r) = self.replica.get() {
            return r.settle(msgs, Settle::Reject);
        }
        self.settle(&msgs, false);
        self.dead_letter(msgs.into_iter().map(|m| (m, Reason::Rejected)).collect());
    }

    /// Return unacked messages to the queue at their original positions, marked redelivered,
    /// then deliver what consumers can take. Messages past x-delivery-limit are
    /// dead-lettered instead.
    pub fn requeue(self: &Arc<Self>, msgs: Vec<QueuedMessage>) {
        if let Some(r) = self.replica.get() {
            return r.settle(msgs, Settle::Requeue);
        }
        let mut letters = Letters::new();
        {
            let mut st = self.state.lock();
            st.unacked = st.unacked.saturating_sub(msgs.len() as u64);
            st.unacked_bytes = st.unacked_bytes.saturating_sub(msgs.iter().map(|m| m.msg.body_size()).sum());
            if st.deleted {
                return;
            }
            let now = self.time_if_needed(&st);
            for mut m in msgs {
                if st.eff.delivery_limit.is_some_and(|limit| u64::from(m.delivery_count) > limit) {
                    st.store.ack(&m);
                    letters.push((m, Reason::DeliveryLimit));
                    continue;
                }
                m.redelivered = true;
                st.store.requeue(m);
            }
            self.arm(&mut st);
            self.dispatch_locked(&mut st, now, &mut letters);
        }
        self.dead_letter(letters);
    }

    /// Register a consumer and deliver what it can take. `registered` runs under the
    /// queue's lock once the consumer is accepted and before any delivery to it (the
    /// server writes basic.consume-ok there, so it precedes the first basic.deliver).
    pub fn add_consumer(self: &Arc<Self>, consumer: Consumer, registered: impl FnOnce()) -> Result<(), AmqpError> {
        let now = self.clock.now_ms();
        let mut letters = Letters::new();
        {
            let mut st = self.state.lock();
            if st.deleted {
                return Err(AmqpError::not_found(format!("no queue '{}' in vhost '{}'", self.name, self.vhost)));
            }
            // An exclusive consumer shuts others out, and single-active-consumer queues take
            // no exclusive consumers at all (RabbitMQ answers 403 to both).
            // (An exclusive consumer is only ever the sole one, so the first tells.)
            if st.consumers.first().is_some_and(|c| c.exclusive)
                || (consumer.exclusive && (!st.consumers.is_empty() || self.declared_args.single_active_consumer))
            {
                return Err(AmqpError::access_refused(format!(
                    "queue '{}' in vhost '{}' in exclusive use",
                    self.name, self.vhost
                )));
            }
            st.last_used_ms = now;
            if let Some(r) = self.replica.get() {
                drop(st);
                registered();
                return r.add_consumer(self, consumer);
            }
            // After every consumer of the same or a higher priority (the list is sorted).
            let at = st.consumers.partition_point(|c| c.priority >= consumer.priority);
            st.consumers.insert(at, consumer);
            if at < st.cursor {
                st.cursor += 1;
            }
            registered();
            self.dispatch_locked(&mut st, now, &mut letters);
        }
        self.dead_letter(letters);
        Ok(())
    }

    /// Remove a consumer. Returns true if the queue is auto-delete and this was its last
    /// consumer: the caller then deletes the queue from its vhost.
    pub fn remove_consumer(self: &Arc<Self>, consumer_id: u64) -> bool {
        if let Some(r) = self.replica.get() {
            // Quorum queues are never auto-delete.
            r.remove_consumers(&[consumer_id]);
            return false;
        }
        let mut st = self.state.lock();
        let before = st.consumers.len();
        let Some(at) = st.consumers.iter().position(|c| c.id == consumer_id) else { return false };
        st.consumers.remove(at);
        if st.consumers.is_empty() && self.in_flow() {
            self.set_flow(false);
        }
        if at < st.cursor {
            st.cursor -= 1;
        }
        if st.cursor >= st.consumers.len() {
            st.cursor = 0;
        }
        st.last_used_ms = self.clock.now_ms();
        let last = before == 1 && self.options.auto_delete && !st.deleted;
        if !last && at == 0 && self.declared_args.single_active_consumer {
            // A new single active consumer takes over: give it what is waiting.
            drop(st);
            self.dispatch();
        }
        last
    }

    /// Remove several consumers at once (a closing channel's): one pass over the list, where
    /// one [`Queue::remove_consumer`] each made closing a channel with tens of thousands of
    /// consumers quadratic. Returns true when it left an auto-delete queue without
    /// consumers, as [`Queue::remove_consumer`] does.
    pub fn remove_consumers(self: &Arc<Self>, ids: &[u64]) -> bool {
        if let Some(r) = self.replica.get() {
            r.remove_consumers(ids);
            return false;
        }
        if let [id] = ids {
            return self.remove_consumer(*id);
        }
        let ids: std::collections::HashSet<u64> = ids.iter().copied().collect();
        let mut st = self.state.lock();
        let before = st.consumers.len();
        let head_removed = st.consumers.first().is_some_and(|c| ids.contains(&c.id));
        let cursor = st.cursor;
        let (mut at, mut removed_before_cursor) = (0, 0);
        st.consumers.retain(|c| {
            let gone = ids.contains(&c.id);
            if gone && at < cursor {
                removed_before_cursor += 1;
            }
            at += 1;
            !gone
        });
        if st.consumers.len() == before {
            return false;
        }
        st.cursor -= removed_before_cursor;
        if st.cursor >= st.consumers.len() {
            st.cursor = 0;
        }
        if st.consumers.is_empty() && self.in_flow() {
            self.set_flow(false);
        }
        st.last_used_ms = self.clock.now_ms();
        let last = st.consumers.is_empty() && self.options.auto_delete && !st.deleted;
        if head_removed && !st.consumers.is_empty() && self.declared_args.single_active_consumer {
            // A new single active consumer takes over: give it what is waiting.
            drop(st);
            self.dispatch();
        }
        last
    }

    /// Under single-active-consumer, the consumer receiving messages (the others wait);
    /// None for other queues, where every consumer is active.
    pub fn single_active_consumer_id(&self) -> Option<u64> {
        if !self.declared_args.single_active_consumer {
            return None;
        }
        self.state.lock().consumers.first().map(|c| c.id)
    }

    pub fn consumer_count(&self) -> usize {
        self.state.lock().consumers.len()
    }

    /// Up to `count` ready messages from position `offset` on, in delivery order, left
    /// exactly as they are: not taken, not marked delivered (management's peek).
    pub fn peek(&self, offset: usize, count: usize) -> Vec<QueuedMessage> {
        self.state.lock().store.peek_range(offset, count)
    }

    /// When the queue was last used (consumer added or removed, get, redeclare), in ms
    /// since the Unix epoch: management's `idle_since`.
    pub fn last_used_ms(&self) -> u64 {
        self.state.lock().last_used_ms
    }

    pub fn purge(&self) -> usize {
        if let Some(r) = self.replica.get() {
            return r.purge().unwrap_or(0);
        }
        let mut st = self.state.lock();
        // Nothing is left waiting: a stall ends here.
        if let Some(t) = st.stalled_since_ms.take() {
            st.stalled_ms += self.clock.now_ms().saturating_sub(t);
        }
        st.store.purge()
    }

    /// Expire messages at the head and report whether the queue itself expired
    /// (x-expires: unused — no consumers, no get, no redeclare — for that long).
    /// Called periodically by the server, through [`VHost::tick`] for the queues that
    /// need it.
    pub fn tick(self: &Arc<Self>) -> bool {
        self.tick_timed() == Ticked::Expired
    }

    /// Whether the housekeeping tick has work here: messages (TTLs at the head, the
    /// store's own upkeep) or an x-expires timer. An empty queue without x-expires has
    /// nothing to expire and nothing to detach.
    fn needs_tick(st: &QueueState) -> bool {
        !st.deleted && (st.eff.expires_ms.is_some() || !st.store.is_empty())
    }

    /// Put the queue into its vhost's timed set if it now needs the tick and is not there
    /// yet. Called under the state lock wherever that can become true (messages arrive,
    /// x-expires is set); the tick takes it out again once it does not (under the same
    /// lock), so an idle queue costs the housekeeping nothing. Lock order: queue state →
    /// the vhost's timed set.
    fn arm(self: &Arc<Self>, st: &mut QueueState) {
        if st.timed || !Self::needs_tick(st) {
            return;
        }
        if let Some(vh) = self.vhost_ref.upgrade() {
            st.timed = true;
            vh.add_timed(self.clone());
        }
    }

    /// [`Queue::arm`] for a queue just declared or recovered.
    pub(crate) fn arm_timer(self: &Arc<Self>) {
        let mut st = self.state.lock();
        self.arm(&mut st);
    }

    /// One housekeeping visit: expire messages at the head, tick the store, and say
    /// whether the queue stays in the timed set.
    pub(crate) fn tick_timed(self: &Arc<Self>) -> Ticked {
        let mut letters = Letters::new();
        let ticked = {
            let mut st = self.state.lock();
            if !Self::needs_tick(&st) {
                st.timed = false;
                return Ticked::Idle;
            }
            let now = self.clock.now_ms();
            self.expire_head(&mut st, now, &mut letters);
            st.store.tick();
            if st
                .eff
                .expires_ms
                .is_some_and(|ttl| st.consumers.is_empty() && now.saturating_sub(st.last_used_ms) >= ttl)
            {
                Ticked::Expired
            } else if Self::needs_tick(&st) {
                Ticked::Keep
            } else {
                // Its last messages expired just now.
                st.timed = false;
                Ticked::Idle
            }
        };
        self.dead_letter(letters);
        ticked
    }

    /// Mark deleted and drop messages; returns the ready count and the consumers, which
    /// the caller notifies (outside the lock) with basic.cancel.
    pub fn mark_deleted(&self) -> (u32, Vec<Consumer>) {
        let mut st = self.state.lock();
        st.deleted = true;
        let n = st.store.len() as u32;
        st.store.destroy();
        (n, std::mem::take(&mut st.consumers))
    }

    /// Route `letters` to the dead-letter exchange effective now (RabbitMQ reads it when a
    /// message dies, so a policy's DLX applies from the next death on).
    pub fn dead_letter(self: &Arc<Self>, letters: Letters) {
        self.route_dead_letters(letters, false);
    }

    /// [`Queue::dead_letter`] for at-least-once dead-lettering: published as a confirming
    /// publisher would, and the target queues' outcomes returned (empty: routed nowhere),
    /// so the caller settles the letters only once every target has them.
    pub fn dead_letter_confirmed(self: &Arc<Self>, letters: Letters) -> Vec<PublishOutcome> {
        self.route_dead_letters(letters, true)
    }

    fn route_dead_letters(self: &Arc<Self>, letters: Letters, confirm: bool) -> Vec<PublishOutcome> {
        if letters.is_empty() || !self.has_dlx.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let (dlx, dlrk) = {
            let st = self.state.lock();
            let Some(dlx) = st.eff.dead_letter_exchange.clone() else { return Vec::new() };
            (dlx, st.eff.dead_letter_routing_key.clone())
        };
        match self.vhost_ref.upgrade() {
            Some(vh) => vh.dead_letter(self, &dlx, dlrk.as_deref(), letters, confirm),
            None => Vec::new(),
        }
    }

    /// The name of the policy applied to this queue.
    pub fn policy_name(&self) -> Option<String> {
        self.state.lock().applied.policy.as_ref().map(|p| p.name.clone())
    }

    /// The name of the operator policy applied to this queue.
    pub fn operator_policy_name(&self) -> Option<String> {
        self.state.lock().applied.operator.as_ref().map(|p| p.name.clone())
    }

    /// What the queue acts on now: its declared arguments combined with its policies.
    pub fn effective_args(&self) -> QueueArgs {
        self.state.lock().eff.clone()
    }

    /// The policy and operator policy definitions combined (management's
    /// `effective_policy_definition`).
    pub fn effective_policy_definition(&self) -> PolicyDefinition {
        let st = self.state.lock();
        PolicyDefinition::merged(def(&st.applied.policy), def(&st.applied.operator))
    }

    /// The consumer timeout effective now (ms), for a new consumer; `None`: the node's.
    pub fn consumer_timeout_ms(&self) -> Option<u64> {
        self.state.lock().eff.consumer_timeout_ms
    }

    /// Apply a (possibly unchanged) policy choice. Effects of a change, as in RabbitMQ's
    /// classic queues:
    /// - a lower max-length / max-length-bytes drops or dead-letters the excess from the
    ///   head at once under drop-head; under reject-publish(-dlx) the excess stays and
    ///   publishes are refused until the queue is below the limit (a publish over the
    ///   limit would not drop anything either);
    /// - message-ttl applies to messages enqueued from now on: like RabbitMQ, a message's
    ///   expiry is fixed when it is enqueued, so messages already here keep theirs;
    /// - a changed expires restarts the idle timer;
    /// - dead-letter exchange and routing key, delivery limit and consumer timeout are read
    ///   where they are used.
    pub(crate) fn apply_policies(self: &Arc<Self>, applied: Applied) {
        let mut letters = Letters::new();
        {
            let mut st = self.state.lock();
            if st.deleted {
                return;
            }
            let eff = policy::effective(&self.declared_args, def(&applied.policy), def(&applied.operator));
            st.applied = applied;
            if eff == st.eff {
                return;
            }
            let now = self.clock.now_ms();
            if eff.expires_ms != st.eff.expires_ms {
                st.last_used_ms = now;
            }
            self.has_dlx.store(eff.dead_letter_exchange.is_some(), Ordering::Relaxed);
            st.eff = eff;
            self.arm(&mut st);
            if st.eff.overflow.unwrap_or_default() == Overflow::DropHead {
                Self::drop_over_limit(&mut st, &mut letters);
            }
            self.expire_head(&mut st, now, &mut letters);
        }
        self.dead_letter(letters);
    }

    /// The RabbitMQ-style check for redeclaring with other flags or arguments.
    pub fn check_equivalent(&self, o: &QueueOptions) -> Result<(), AmqpError> {
        let mine = &self.options;
        let flag = |name: &str, received: bool, current: bool| -> Result<(), AmqpError> {
            if received == current {
                return Ok(());
            }
            Err(AmqpError::precondition_failed(format!(
                "inequivalent arg '{name}' for queue '{}' in vhost '{}': received '{received}' but current is '{current}'",
                self.name, self.vhost
            )))
        };
        flag("durable", o.durable, mine.durable)?;
        flag("auto_delete", o.auto_delete, mine.auto_delete)?;
        crate::exchange::check_arguments_equivalent("queue", &self.name, &self.vhost, &o.arguments, &mine.arguments)
    }
}

fn def(p: &Option<Arc<crate::policy::Policy>>) -> Option<&PolicyDefinition> {
    p.as_deref().map(|p| &p.definition)
}
