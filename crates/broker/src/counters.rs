//! Always-on message counters of queues and exchanges (RabbitMQ's `message_stats`),
//! cheap enough for the publish path: relaxed atomics on objects the path already
//! touches, no lock and no allocation per message. Rates are derived from them by a
//! sampler outside the broker.

use std::sync::atomic::{AtomicU64, Ordering};

/// Add `n` to a counter that only one thread writes at a time (its writers hold the same
/// lock, or it belongs to one task): a plain load and store, no locked read-modify-write.
/// Readers on other threads see a recent value, which is all statistics need.
#[inline]
pub fn bump_single_writer(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// A queue's counters. Every one is changed under the queue's state lock, so they are
/// single-writer ([`bump_single_writer`]).
#[derive(Debug, Default)]
pub struct QueueCounters {
    pub publish: AtomicU64,
    /// Delivered to consumers that must ack.
    pub deliver: AtomicU64,
    pub deliver_no_ack: AtomicU64,
    pub get: AtomicU64,
    pub get_no_ack: AtomicU64,
    pub get_empty: AtomicU64,
    /// Deliveries and gets of messages delivered before.
    pub redeliver: AtomicU64,
    pub ack: AtomicU64,
}

/// A copy of [`QueueCounters`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    pub publish: u64,
    pub deliver: u64,
    pub deliver_no_ack: u64,
    pub get: u64,
    pub get_no_ack: u64,
    pub get_empty: u64,
    pub redeliver: u64,
    pub ack: u64,
}

impl QueueCounts {
    /// RabbitMQ's `deliver_get`: every way a message left for a client.
    pub fn deliver_get(&self) -> u64 {
        self.deliver + self.deliver_no_ack + self.get + self.get_no_ack
    }

    /// (name, value) pairs in RabbitMQ's `message_stats` naming.
    pub fn named(&self) -> [(&'static str, u64); 9] {
        [
            ("publish", self.publish),
            ("deliver", self.deliver),
            ("deliver_no_ack", self.deliver_no_ack),
            ("get", self.get),
            ("get_no_ack", self.get_no_ack),
            ("get_empty", self.get_empty),
            ("deliver_get", self.deliver_get()),
            ("redeliver", self.redeliver),
            ("ack", self.ack),
        ]
    }
}

impl QueueCounters {
    pub fn snapshot(&self) -> QueueCounts {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        QueueCounts {
            publish: l(&self.publish),
            deliver: l(&self.deliver),
            deliver_no_ack: l(&self.deliver_no_ack),
            get: l(&self.get),
            get_no_ack: l(&self.get_no_ack),
            get_empty: l(&self.get_empty),
            redeliver: l(&self.redeliver),
            ack: l(&self.ack),
        }
    }
}

/// An exchange's counters. Publishers on many tasks route through one exchange without a
/// common lock, so these are atomic adds.
#[derive(Debug, Default)]
pub struct ExchangeCounters {
    /// Messages published to the exchange.
    pub publish_in: AtomicU64,
    /// Messages it routed, once per queue reached (RabbitMQ sums its per-queue figures).
    pub publish_out: AtomicU64,
}

impl ExchangeCounters {
    /// (publish_in, publish_out).
    pub fn snapshot(&self) -> (u64, u64) {
        (self.publish_in.load(Ordering::Relaxed), self.publish_out.load(Ordering::Relaxed))
    }

    /// One message in, routed to `out` queues.
    #[inline]
    pub fn record(&self, out: u64) {
        self.publish_in.fetch_add(1, Ordering::Relaxed);
        if out > 0 {
            self.publish_out.fetch_add(out, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliver_get_sums_the_four_ways_out() {
        let c = QueueCounters::default();
        bump_single_writer(&c.deliver, 2);
        bump_single_writer(&c.deliver_no_ack, 3);
        bump_single_writer(&c.get, 5);
        bump_single_writer(&c.get_no_ack, 7);
        bump_single_writer(&c.get_empty, 11);
        let s = c.snapshot();
        assert_eq!(s.deliver_get(), 17);
        assert!(s.named().contains(&("get_empty", 11)));
    }

    #[test]
    fn exchange_counts_out_per_queue() {
        let e = ExchangeCounters::default();
        e.record(3);
        e.record(0);
        assert_eq!(e.snapshot(), (2, 3));
    }
}
