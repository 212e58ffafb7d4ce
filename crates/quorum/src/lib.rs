//! The quorum-queue state machine: what each replica of a quorum queue applies, in Raft log
//! order — the part of RabbitMQ's `rabbit_fifo` Warren needs. Pure and deterministic: no
//! I/O, no clock (time arrives in each entry's [`Meta`]), no randomness, no hash-map
//! iteration order. Two replicas fed the same entries hold equal states and compute equal
//! effects; only the leader carries the effects out.
//!
//! - [`Command`]s in: enqueue, checkout (consume), cancel, settle (ack), return
//!   (nack/reject with requeue), discard (without requeue), dequeue (basic.get), consumer
//!   down, node down/up, forget node, publisher down, purge, set config (arguments +
//!   policies), dead-letter settled, tick.
//! - [`Effect`]s out: deliver, dequeued, confirm, reject (overflow `reject-publish`),
//!   dead-letter, dropped, purged, release cursor.
//! - [`QuorumQueue`] is serde-serializable: a snapshot holds only what is live.
//!
//! Semantics and what is not covered yet: `crates/quorum/README.md`.

mod machine;
mod types;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

pub use machine::{QuorumQueue, Stats};
pub use types::{
    Command, Config, ConsumerId, DeadLetterStrategy, DeadLetterTarget, Delivery, Effect, Message, Meta, MsgId, NodeId,
    Overflow, PublishId, PublisherId, RELEASE_CURSOR_INTERVAL_ENTRIES, Reason,
};
