//! Warren's broker core: virtual hosts, exchanges and their bindings, queues and their
//! consumers. No sockets and no clock: the server crate drives it and implements
//! [`queue::ConsumerSink`] to put deliveries on the wire.
//!
//! # Concurrency model
//! State is shared, not owned by a single task: each [`queue::Queue`] has its own mutex, and
//! each exchange's bindings sit behind a read-write lock. A publishing connection routes and
//! enqueues on its own task, and the queue hands messages straight to consumer sinks while
//! its lock is held — no per-message task spawn, no global lock.
//!
//! Lock order (never acquire leftwards while holding something to the right):
//! `VHost` maps → `Exchange` bindings → `Queue` state → consumer sink (channel) state.
//! The vhost's policy set is read under its maps (declare) and written under no other lock;
//! an exchange's policy cell is a leaf, cloned out before anything else is locked.

pub mod args;
pub mod clock;
pub mod counters;
pub mod dead_letter;
pub mod error;
pub mod exchange;
pub mod limits;
pub mod matching;
pub mod message;
pub mod policy;
pub mod queue;
pub mod store;
pub mod vhost;

pub use error::AmqpError;
pub use exchange::{Exchange, ExchangeKind};
pub use message::{Message, QueuedMessage};
pub use queue::{ConsumerSink, Queue};
pub use vhost::VHost;

/// Identifies a client connection, for exclusive queues.
pub type ConnectionId = u64;
