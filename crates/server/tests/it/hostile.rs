//! Hostile input over raw TCP: a client that speaks broken AMQP must get the reply code
//! RabbitMQ would give (read from connection.close / channel.close), and the server must
//! stay up for everyone else. Every test ends with [`raw::assert_healthy`].
//!
//! - [`raw`]: the raw client, frame builders, the health check and the panic watch.
//! - [`framing`]: protocol header, frame sizes/ends/types, undecodable payloads, tables.
//! - [`states`]: well-formed frames in the wrong state.
//! - [`timing`]: handshake timeout, heartbeat timeout.
//! - [`scale`]: thousands of channels, hundreds of connections, negotiated limits.
//! - [`auth`]: PLAIN, AMQPLAIN, refused logins.
//! - [`limits`]: what one connection may hold: content frames, unread replies, blocked
//!   clients that leave.
//! - [`fuzz`]: random and mutated input.

mod auth;
mod framing;
mod fuzz;
mod limits;
pub mod raw;
mod scale;
mod states;
mod timing;
