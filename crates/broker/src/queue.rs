//! A queue: its ready messages (behind [`MessageStore`]), its consumers, and dispatch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use wire::FieldTable;

use crate::ConnectionId;
use crate::error::AmqpError;
use crate::message::{Message, QueuedMessage};
use crate::store::{MemoryStore, MessageStore};

/// Where a queue hands its messages. Implemented by the server for each basic.consume.
///
/// Called with the queue's lock held: implementations must not call back into any queue.
pub trait ConsumerSink: Send + Sync {
    /// Deliver `m` if this consumer has credit (prefetch, channel flow, socket buffer),
    /// or hand it back. A no-ack consumer's delivery counts as acknowledged at once.
    fn try_deliver(&self, queue: &Arc<Queue>, m: QueuedMessage) -> Result<(), QueuedMessage>;
    /// Whether the consumer was registered with no_ack (its deliveries leave the queue).
    fn no_ack(&self) -> bool;
    /// The queue was deleted under the consumer: tell the client (basic.cancel).
    fn cancelled_by_broker(&self);
}

/// Global, process-unique consumer ids (used to cancel a consumer on its queue).
static NEXT_CONSUMER_ID: AtomicU64 = AtomicU64::new(1);

pub fn next_consumer_id() -> u64 {
    NEXT_CONSUMER_ID.fetch_add(1, Ordering::Relaxed)
}

pub struct Consumer {
    pub id: u64,
    pub tag: String,
    pub exclusive: bool,
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
    /// The connection that declared an exclusive queue.
    pub owner: Option<ConnectionId>,
    state: Mutex<QueueState>,
}

struct QueueState {
    store: Box<dyn MessageStore>,
    consumers: Vec<Consumer>,
    /// Round-robin position: the consumer tried first on the next delivery.
    cursor: usize,
    next_seq: u64,
    /// Delivered to a consumer that must still ack.
    unacked: u64,
    deleted: bool,
}

/// Counts for queue.declare-ok and management.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    pub messages_ready: u64,
    pub messages_unacked: u64,
    pub consumers: u32,
    pub ready_bytes: u64,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("name", &self.name).field("vhost", &self.vhost).finish()
    }
}

impl Queue {
    pub fn new(vhost: &str, name: String, options: QueueOptions, owner: Option<ConnectionId>) -> Arc<Queue> {
        Self::with_store(vhost, name, options, owner, Box::new(MemoryStore::new()))
    }

    /// A queue over a given store (a recovered one, or a disk store).
    pub fn with_store(
        vhost: &str,
        name: String,
        options: QueueOptions,
        owner: Option<ConnectionId>,
        store: Box<dyn MessageStore>,
    ) -> Arc<Queue> {
        let next_seq = store.last_seq().map_or(0, |s| s + 1);
        Arc::new(Queue {
            name,
            vhost: vhost.to_owned(),
            options,
            owner,
            state: Mutex::new(QueueState {
                store,
                consumers: Vec::new(),
                cursor: 0,
                next_seq,
                unacked: 0,
                deleted: false,
            }),
        })
    }

    pub fn stats(&self) -> QueueStats {
        let st = self.state.lock();
        QueueStats {
            messages_ready: st.store.len() as u64,
            messages_unacked: st.unacked,
            consumers: st.consumers.len() as u32,
            ready_bytes: st.store.bytes(),
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }

    /// Enqueue a routed message and deliver what consumers can take.
    /// Returns None if the queue was deleted meanwhile (the message was not enqueued),
    /// else the commit epoch to wait for before confirming (0: nothing to wait for).
    pub fn publish(self: &Arc<Self>, msg: Arc<Message>) -> Option<u64> {
        let mut st = self.state.lock();
        if st.deleted {
            return None;
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let epoch = st.store.push(QueuedMessage {
            msg,
            seq,
            redelivered: false,
            expires_at_ms: 0,
            delivery_count: 0,
            disk: None,
        });
        if !st.consumers.is_empty() {
            self.dispatch_locked(&mut st);
        }
        Some(epoch)
    }

    /// Try to deliver ready messages to consumers (after credit was freed).
    pub fn dispatch(self: &Arc<Self>) {
        let mut st = self.state.lock();
        self.dispatch_locked(&mut st);
    }

    fn dispatch_locked(self: &Arc<Self>, st: &mut QueueState) {
        while let Some(next) = st.store.peek() {
            let n = st.consumers.len();
            if n == 0 {
                return;
            }
            let mut m = next.clone();
            let mut taken = None;
            for i in 0..n {
                let idx = (st.cursor + i) % n;
                let c = &st.consumers[idx];
                match c.sink.try_deliver(self, m) {
                    Ok(()) => {
                        taken = Some((idx, c.sink.no_ack()));
                        break;
                    }
                    Err(back) => m = back,
                }
            }
            let Some((idx, no_ack)) = taken else { return };
            st.cursor = (idx + 1) % n;
            let delivered = st.store.pop();
            if let Some(d) = &delivered {
                st.store.delivered(d);
            }
            if no_ack {
                if let Some(d) = &delivered {
                    st.store.ack(d);
                }
            } else {
                st.unacked += 1;
            }
        }
    }

    /// basic.get: take the next message. `no_ack` acknowledges it at once.
    /// Returns the message and how many remain ready.
    pub fn get(self: &Arc<Self>, no_ack: bool) -> Option<(QueuedMessage, u32)> {
        let mut st = self.state.lock();
        let m = st.store.pop()?;
        st.store.delivered(&m);
        if no_ack {
            st.store.ack(&m);
        } else {
            st.unacked += 1;
        }
        Some((m, st.store.len() as u32))
    }

    /// Messages acknowledged by their consumer.
    pub fn ack(&self, msgs: &[QueuedMessage]) {
        let mut st = self.state.lock();
        for m in msgs {
            st.store.ack(m);
        }
        st.unacked = st.unacked.saturating_sub(msgs.len() as u64);
    }

    /// Return unacked messages to the queue at their original positions, marked redelivered,
    /// then deliver what consumers can take.
    pub fn requeue(self: &Arc<Self>, msgs: Vec<QueuedMessage>) {
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(msgs.len() as u64);
        if st.deleted {
            return;
        }
        for mut m in msgs {
            m.redelivered = true;
            st.store.requeue(m);
        }
        self.dispatch_locked(&mut st);
    }

    /// Register a consumer and deliver what it can take. `registered` runs under the
    /// queue's lock once the consumer is accepted and before any delivery to it (the
    /// server writes basic.consume-ok there, so it precedes the first basic.deliver).
    pub fn add_consumer(self: &Arc<Self>, consumer: Consumer, registered: impl FnOnce()) -> Result<(), AmqpError> {
        let mut st = self.state.lock();
        if st.deleted {
            return Err(AmqpError::not_found(format!("no queue '{}' in vhost '{}'", self.name, self.vhost)));
        }
        if st.consumers.iter().any(|c| c.exclusive) || (consumer.exclusive && !st.consumers.is_empty()) {
            return Err(AmqpError::access_refused(format!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.name, self.vhost
            )));
        }
        st.consumers.push(consumer);
        registered();
        self.dispatch_locked(&mut st);
        Ok(())
    }

    /// Remove a consumer. Returns true if the queue is auto-delete and this was its last
    /// consumer: the caller then deletes the queue from its vhost.
    pub fn remove_consumer(&self, consumer_id: u64) -> bool {
        let mut st = self.state.lock();
        let before = st.consumers.len();
        st.consumers.retain(|c| c.id != consumer_id);
        if st.cursor >= st.consumers.len() {
            st.cursor = 0;
        }
        before != st.consumers.len() && st.consumers.is_empty() && self.options.auto_delete && !st.deleted
    }

    pub fn consumer_count(&self) -> usize {
        self.state.lock().consumers.len()
    }

    pub fn purge(&self) -> usize {
        self.state.lock().store.purge()
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
