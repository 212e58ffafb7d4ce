//! The consumer side of a channel: delivery tags, unacked messages and prefetch limits,
//! shared between the connection's task (acks, qos, close) and whichever task a queue
//! dispatches on (deliveries). The lock here is taken *after* a queue's lock, never before.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use broker::counters::bump_single_writer as bump;
use broker::{ConsumerSink, Queue, QueuedMessage};
use parking_lot::Mutex;
use wire::frame;

use crate::outbox::Outbox;

/// One unacknowledged delivery.
pub struct Unacked {
    pub tag: u64,
    /// When it was delivered, if its consumer has a timeout (the clock is read only then).
    pub delivered_at: Option<Instant>,
    pub queue: Arc<Queue>,
    pub msg: QueuedMessage,
    /// The consumer it went to; None for basic.get.
    pub consumer: Option<Arc<ConsumerHandle>>,
}

/// A channel's unacknowledged deliveries, ordered by delivery tag. Tags are handed out in
/// increasing order and mostly acknowledged in order, so a deque kept sorted does every
/// common operation at its ends (a B-tree allocated a node per few deliveries).
#[derive(Default)]
pub struct UnackedMap {
    q: VecDeque<Unacked>,
}

impl UnackedMap {
    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Add a delivery (in tag order; an older tag, from a rolled-back transaction, is put
    /// back in its place).
    pub fn insert(&mut self, u: Unacked) {
        match self.q.back() {
            Some(last) if last.tag > u.tag => {
                let at = self.q.partition_point(|x| x.tag < u.tag);
                self.q.insert(at, u);
            }
            _ => self.q.push_back(u),
        }
    }

    pub fn contains(&self, tag: u64) -> bool {
        self.q.binary_search_by_key(&tag, |u| u.tag).is_ok()
    }

    pub fn get_mut(&mut self, tag: u64) -> Option<&mut Unacked> {
        let i = self.q.binary_search_by_key(&tag, |u| u.tag).ok()?;
        self.q.get_mut(i)
    }

    pub fn remove(&mut self, tag: u64) -> Option<Unacked> {
        let i = self.q.binary_search_by_key(&tag, |u| u.tag).ok()?;
        self.q.remove(i)
    }

    /// Every delivery with a tag up to `tag`.
    pub fn take_upto(&mut self, tag: u64) -> Vec<Unacked> {
        let n = self.q.partition_point(|u| u.tag <= tag);
        self.q.drain(..n).collect()
    }

    pub fn take_all(&mut self) -> Vec<Unacked> {
        self.q.drain(..).collect()
    }

    /// Remove and return the deliveries `f` selects.
    pub fn take_where(&mut self, mut f: impl FnMut(&Unacked) -> bool) -> Vec<Unacked> {
        let (taken, kept): (Vec<Unacked>, Vec<Unacked>) = self.q.drain(..).partition(|u| f(u));
        self.q = kept.into();
        taken
    }

    pub fn iter(&self) -> impl Iterator<Item = &Unacked> {
        self.q.iter()
    }
}

pub struct DeliveryState {
    next_tag: u64,
    /// Ordered by delivery tag, which is how `multiple` acks and requeues walk them.
    pub unacked: UnackedMap,
    /// basic.qos global=true: limit for the whole channel, 0 = unlimited.
    pub global_prefetch: u32,
    /// The channel is closing: refuse further deliveries.
    pub closed: bool,
}

pub struct ChannelShared {
    pub id: u16,
    pub outbox: Arc<Outbox>,
    pub state: Mutex<DeliveryState>,
    /// Message counters (management statistics and Prometheus).
    pub counters: ChannelCounters,
    /// What the management API shows of the channel; changed by rare methods only (qos,
    /// confirm.select, tx.select, consume, cancel). A leaf lock: nothing is taken under it.
    pub meta: Mutex<ChannelMeta>,
}

/// A channel's counters. Each has one writer at a time: the connection's task (publish,
/// confirm, ack, get_empty, unconfirmed), or whoever holds the channel's state lock
/// (deliveries and gets), so they are bumped with a plain load and store.
#[derive(Default)]
pub struct ChannelCounters {
    pub publish: AtomicU64,
    pub publish_confirm: AtomicU64,
    pub confirm: AtomicU64,
    pub routed: AtomicU64,
    pub return_unroutable: AtomicU64,
    pub drop_unroutable: AtomicU64,
    pub deliver: AtomicU64,
    pub deliver_no_ack: AtomicU64,
    pub get: AtomicU64,
    pub get_no_ack: AtomicU64,
    pub get_empty: AtomicU64,
    pub redeliver: AtomicU64,
    pub ack: AtomicU64,
    pub size_buckets: [AtomicU64; mgmt::node::MESSAGE_SIZE_BUCKETS.len()],
    pub size_sum: AtomicU64,
    /// Publishes waiting for their confirm now (a gauge).
    pub unconfirmed: AtomicU64,
}

impl ChannelCounters {
    pub fn snapshot(&self) -> mgmt::node::ChannelCounts {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        mgmt::node::ChannelCounts {
            publish: l(&self.publish),
            publish_confirm: l(&self.publish_confirm),
            confirm: l(&self.confirm),
            routed: l(&self.routed),
            return_unroutable: l(&self.return_unroutable),
            drop_unroutable: l(&self.drop_unroutable),
            deliver: l(&self.deliver),
            deliver_no_ack: l(&self.deliver_no_ack),
            get: l(&self.get),
            get_no_ack: l(&self.get_no_ack),
            get_empty: l(&self.get_empty),
            redeliver: l(&self.redeliver),
            ack: l(&self.ack),
            size_buckets: std::array::from_fn(|i| l(&self.size_buckets[i])),
            size_sum: l(&self.size_sum),
        }
    }
}

/// A consumer as the management API lists it.
pub struct ConsumerMeta {
    pub handle: Weak<ConsumerHandle>,
    pub exclusive: bool,
    pub arguments: wire::FieldTable,
}

#[derive(Default)]
pub struct ChannelMeta {
    pub confirm: bool,
    pub transactional: bool,
    /// basic.qos global=false.
    pub prefetch: u32,
    /// By consumer tag.
    pub consumers: std::collections::HashMap<String, ConsumerMeta>,
}

impl ChannelShared {
    pub fn new(id: u16, outbox: Arc<Outbox>) -> Arc<ChannelShared> {
        Arc::new(ChannelShared {
            id,
            outbox,
            state: Mutex::new(DeliveryState {
                next_tag: 1,
                unacked: UnackedMap::default(),
                global_prefetch: 0,
                closed: false,
            }),
            counters: ChannelCounters::default(),
            meta: Mutex::new(ChannelMeta::default()),
        })
    }

    /// Record a basic.get delivery (acked later) and return its tag.
    pub fn record_get(&self, queue: &Arc<Queue>, m: &QueuedMessage, no_ack: bool) -> u64 {
        let mut st = self.state.lock();
        let tag = st.next_tag;
        st.next_tag += 1;
        let c = &self.counters;
        bump(if no_ack { &c.get_no_ack } else { &c.get }, 1);
        if m.redelivered {
            bump(&c.redeliver, 1);
        }
        if !no_ack {
            st.unacked.insert(Unacked {
                tag,
                delivered_at: None,
                queue: queue.clone(),
                msg: m.clone(),
                consumer: None,
            });
        }
        tag
    }
}

pub struct ConsumerHandle {
    pub id: u64,
    pub tag: String,
    pub channel: Arc<ChannelShared>,
    pub queue: Arc<Queue>,
    pub no_ack: bool,
    /// basic.qos global=false in force when the consumer started, 0 = unlimited.
    pub prefetch: u32,
    /// This consumer's unacked deliveries; changed only under the channel's state lock.
    pub unacked: AtomicU32,
    /// Whether the client advertised consumer_cancel_notify.
    pub cancel_notify: bool,
    /// Set when the consumer is cancelled, by the client or the broker (queue deleted,
    /// consumer timeout); changed under the channel's state lock.
    pub cancelled: AtomicBool,
    /// Consumer timeout (x-consumer-timeout or the server's setting); None = never.
    pub timeout: Option<Duration>,
    /// Weak self-reference, so deliveries can point back at their consumer.
    me: Weak<ConsumerHandle>,
}

impl ConsumerHandle {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        tag: String,
        channel: Arc<ChannelShared>,
        queue: Arc<Queue>,
        no_ack: bool,
        prefetch: u32,
        cancel_notify: bool,
        timeout: Option<Duration>,
    ) -> Arc<ConsumerHandle> {
        Arc::new_cyclic(|me| ConsumerHandle {
            id,
            tag,
            channel,
            queue,
            no_ack,
            prefetch,
            unacked: AtomicU32::new(0),
            cancel_notify,
            cancelled: AtomicBool::new(false),
            timeout,
            me: me.clone(),
        })
    }
}

impl ConsumerHandle {
    /// Deliver `m`; `credit`: check prefetch and the socket buffer first (a replicated
    /// queue's deliveries were already counted against the consumer's prefetch).
    fn deliver(&self, queue: &Arc<Queue>, m: QueuedMessage, credit: bool) -> Result<(), QueuedMessage> {
        let ch = &self.channel;
        let outbox = &ch.outbox;
        let mut st = ch.state.lock();
        if st.closed || self.cancelled.load(Ordering::Relaxed) {
            return Err(m);
        }
        if credit && !self.no_ack {
            let mine = self.unacked.load(Ordering::Relaxed);
            if self.prefetch != 0 && mine >= self.prefetch {
                return Err(m);
            }
            if st.global_prefetch != 0 && st.unacked.len() as u32 >= st.global_prefetch {
                return Err(m);
            }
        }
        if credit && outbox.is_full() {
            outbox.add_starved(queue);
            return Err(m);
        }
        let tag = st.next_tag;
        st.next_tag += 1;
        let msg = &m.msg;
        outbox.write_content(ch.id, &msg.body, |out| {
            frame::encode_basic_deliver(out, ch.id, &self.tag, tag, m.redelivered, &msg.exchange, &msg.routing_key);
            frame::encode_header(out, ch.id, wire::class::BASIC, msg.body_size(), &msg.properties);
        });
        let c = &ch.counters;
        bump(if self.no_ack { &c.deliver_no_ack } else { &c.deliver }, 1);
        if m.redelivered {
            bump(&c.redeliver, 1);
        }
        if !self.no_ack {
            self.unacked.fetch_add(1, Ordering::Relaxed);
            st.unacked.insert(Unacked {
                tag,
                delivered_at: self.timeout.map(|_| Instant::now()),
                queue: queue.clone(),
                msg: m,
                consumer: self.me.upgrade(),
            });
        }
        Ok(())
    }
}

impl ConsumerSink for ConsumerHandle {
    fn try_deliver(&self, queue: &Arc<Queue>, m: QueuedMessage) -> Result<(), QueuedMessage> {
        self.deliver(queue, m, true)
    }

    fn force_deliver(&self, queue: &Arc<Queue>, m: QueuedMessage) -> Result<(), QueuedMessage> {
        self.deliver(queue, m, false)
    }

    fn no_ack(&self) -> bool {
        self.no_ack
    }

    fn prefetch(&self) -> u32 {
        self.prefetch
    }

    fn write_blocked(&self) -> bool {
        self.channel.outbox.is_full()
    }

    fn cancelled_by_broker(&self) {
        // Under the channel's lock, as the client's cancel marks it (see Channel::cancel):
        // a consumer the client already cancelled gets no basic.cancel.
        let _st = self.channel.state.lock();
        if self.cancelled.swap(true, Ordering::Relaxed) {
            return;
        }
        if self.cancel_notify {
            let ch = self.channel.id;
            let method = wire::Method::BasicCancel { consumer_tag: self.tag.clone(), nowait: true };
            self.channel.outbox.write_with(|out| frame::encode_method(out, ch, &method));
        }
    }
}
