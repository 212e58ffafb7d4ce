//! Warren's AMQP 0-9-1 server: the only crate that touches sockets.
//!
//! # Layout
//! - [`config`]: settings and their defaults (RabbitMQ's where it has one).
//! - [`conf_file`]: `rabbitmq.conf`-syntax config files (`warren --config`).
//! - [`tls`]: AMQPS (rustls): certificates, client verification, the handshake.
//! - [`listener`]: accept loop, graceful shutdown.
//! - [`connection`]: one task per connection: handshake, frames in, heartbeats, close.
//! - [`channel`]: the channel state machine: translates methods into broker operations.
//! - [`delivery`]: the consumer side: per-channel delivery state (tags, unacked, prefetch)
//!   and the [`broker::ConsumerSink`] that writes deliveries into a connection's outbox.
//! - [`outbox`]: a connection's outgoing byte buffer and the writer task that drains it,
//!   so that many frames go out in one syscall.

pub mod admin;
pub mod alarms;
pub mod auth;
pub mod channel;
pub(crate) mod classic_queues;
pub mod cluster_cookie;
pub(crate) mod cluster_topology;
pub mod clustering;
pub mod conf_file;
pub mod config;
pub mod connection;
pub mod delivery;
pub mod fds;
pub mod feature_flags;
pub mod listener;
pub mod mgmt_node;
pub mod outbox;
pub mod persist;
pub(crate) mod quorum_queues;
pub mod registry;
pub mod state;
pub mod tls;

pub use admin::{ChangeError, StartError};
pub use config::Config;
pub use listener::{Listener, bind_all, bind_listeners, serve, serve_listeners};
pub use state::ServerState;
