//! Node-wide bounds on topology a client can make the broker hold: queues, exchanges and
//! bindings each cost memory (and durable ones a definitions record) for as long as they
//! exist, so each has a limit and a clear error when it is reached. Shared by every vhost
//! of a node.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::AmqpError;

/// The configured maxima (`usize::MAX`: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Queues on the node (RabbitMQ's `cluster_queue_limit`).
    pub queue_max_count: usize,
    pub exchange_max_count: usize,
    pub binding_max_count: usize,
}

impl Limits {
    pub const UNLIMITED: Limits =
        Limits { queue_max_count: usize::MAX, exchange_max_count: usize::MAX, binding_max_count: usize::MAX };
}

/// The limits and what is in use now.
#[derive(Debug)]
pub struct NodeLimits {
    pub limits: Limits,
    queues: AtomicUsize,
    exchanges: AtomicUsize,
    bindings: AtomicUsize,
    /// Queues created and deleted since the node started (RabbitMQ's churn rates).
    queues_created: AtomicU64,
    queues_deleted: AtomicU64,
}

/// Take one unit of `used` if that stays within `max`.
fn take(used: &AtomicUsize, max: usize) -> bool {
    used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
}

fn give_back(used: &AtomicUsize, n: usize) {
    let _ = used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| Some(u.saturating_sub(n)));
}

impl NodeLimits {
    pub fn new(limits: Limits) -> NodeLimits {
        NodeLimits {
            limits,
            queues: AtomicUsize::new(0),
            exchanges: AtomicUsize::new(0),
            bindings: AtomicUsize::new(0),
            queues_created: AtomicU64::new(0),
            queues_deleted: AtomicU64::new(0),
        }
    }

    pub fn unlimited() -> NodeLimits {
        Self::new(Limits::UNLIMITED)
    }

    /// (queues, exchanges, bindings) declared by clients (and recovered) now. The
    /// predeclared exchanges are not counted.
    pub fn used(&self) -> (usize, usize, usize) {
        (
            self.queues.load(Ordering::Acquire),
            self.exchanges.load(Ordering::Acquire),
            self.bindings.load(Ordering::Acquire),
        )
    }

    /// RabbitMQ's error for its cluster queue limit: 406 on the channel.
    pub(crate) fn take_queue(&self, name: &str) -> Result<(), AmqpError> {
        if take(&self.queues, self.limits.queue_max_count) {
            return Ok(());
        }
        Err(AmqpError::precondition_failed(format!(
            "cannot declare queue '{name}': queue limit in cluster ({}) is reached",
            self.limits.queue_max_count
        )))
    }

    pub(crate) fn release_queue(&self) {
        give_back(&self.queues, 1);
    }

    pub(crate) fn queue_created(&self) {
        self.queues_created.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn queue_deleted(&self) {
        self.queues_deleted.fetch_add(1, Ordering::Relaxed);
    }

    /// (queues created, queues deleted) since the node started.
    pub fn queue_churn(&self) -> (u64, u64) {
        (self.queues_created.load(Ordering::Relaxed), self.queues_deleted.load(Ordering::Relaxed))
    }

    pub(crate) fn take_exchange(&self, name: &str) -> Result<(), AmqpError> {
        if take(&self.exchanges, self.limits.exchange_max_count) {
            return Ok(());
        }
        Err(AmqpError::precondition_failed(format!(
            "cannot declare exchange '{name}': exchange limit ({}) is reached",
            self.limits.exchange_max_count
        )))
    }

    pub(crate) fn release_exchange(&self) {
        give_back(&self.exchanges, 1);
    }

    pub(crate) fn take_binding(&self) -> Result<(), AmqpError> {
        if take(&self.bindings, self.limits.binding_max_count) {
            return Ok(());
        }
        Err(AmqpError::precondition_failed(format!(
            "cannot bind: binding limit ({}) is reached",
            self.limits.binding_max_count
        )))
    }

    pub(crate) fn release_bindings(&self, n: usize) {
        give_back(&self.bindings, n);
    }
}
