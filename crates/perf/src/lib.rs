//! warren-perf: a load generator for AMQP 0-9-1 brokers, in the spirit of RabbitMQ's
//! PerfTest and lavinmqperf, built to cost far less CPU than the broker it measures.
//!
//! - [`client`]: a minimal async client on the `wire` codec, allocation-free per message.
//! - [`options`]: the command line (PerfTest's short flags) and the queue topology.
//! - [`histogram`]: log-bucketed latency histogram.
//! - [`run`]: orchestration, live output and the summary.
//! - [`scale`]: the `warren-scale` workloads (many queues, bindings, connections, churn).
//!
//! Only loopback brokers are accepted (see [`uri`]).

pub mod client;
mod consumer;
pub mod histogram;
pub mod options;
mod producer;
pub mod run;
pub mod scale;
pub mod stats;
pub mod uri;

pub use producer::ConfirmTracker;
