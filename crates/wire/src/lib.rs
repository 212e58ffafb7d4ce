//! AMQP 0-9-1 codec in RabbitMQ's dialect. Sans-IO: bytes in, frames out, and back.
//!
//! # Layout
//! - [`types`]: field tables and values (RabbitMQ's type tags), short/long strings.
//! - [`method`]: every method of every class, including RabbitMQ's extensions.
//! - [`frame`]: frame decoding (`Ok(None)` until a whole frame has arrived) and encoding,
//!   plus hot-path encoders for `basic.deliver`, `basic.get-ok` and `basic.return`.
//! - [`properties`]: the 14 basic properties. Brokers forward the raw property bytes
//!   untouched; [`properties::summarize`] reads the few fields routing needs without
//!   allocating the rest.
//! - [`error`]: [`WireError`], which always carries the AMQP reply code to close with.

mod codec;
pub mod error;
pub mod frame;
pub mod method;
pub mod properties;
pub mod types;

pub use error::WireError;
pub use frame::{Frame, decode_frame};
pub use method::Method;
pub use properties::BasicProperties;
pub use types::{FieldTable, FieldValue};

/// The 8 bytes a 0-9-1 client sends first, and the server answers with on a mismatch.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";

/// Frame type octets.
pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;

/// Bytes of framing around every frame payload: type(1) channel(2) size(4) ... end(1).
pub const FRAME_OVERHEAD_BYTES: usize = 8;

/// The smallest frame_max a peer may negotiate (spec: 4096).
pub const FRAME_MIN_SIZE_BYTES: u32 = 4096;

/// Class ids.
pub mod class {
    pub const CONNECTION: u16 = 10;
    pub const CHANNEL: u16 = 20;
    pub const ACCESS: u16 = 30;
    pub const EXCHANGE: u16 = 40;
    pub const QUEUE: u16 = 50;
    pub const BASIC: u16 = 60;
    pub const CONFIRM: u16 = 85;
    pub const TX: u16 = 90;
}

/// Reply codes (spec constants plus RabbitMQ's usage).
pub mod reply {
    pub const REPLY_SUCCESS: u16 = 200;
    pub const CONTENT_TOO_LARGE: u16 = 311;
    pub const NO_ROUTE: u16 = 312;
    pub const NO_CONSUMERS: u16 = 313;
    pub const CONNECTION_FORCED: u16 = 320;
    pub const INVALID_PATH: u16 = 402;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const RESOURCE_ERROR: u16 = 506;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;

    /// Hard errors close the connection; the others (soft) close only the channel.
    pub fn is_hard(code: u16) -> bool {
        matches!(code, 320 | 402 | 501..=506 | 530 | 540 | 541)
    }

    /// RabbitMQ's text names, used as the prefix of reply_text ("NOT_FOUND - no queue 'x'").
    pub fn name(code: u16) -> &'static str {
        match code {
            200 => "REPLY_SUCCESS",
            311 => "CONTENT_TOO_LARGE",
            312 => "NO_ROUTE",
            313 => "NO_CONSUMERS",
            320 => "CONNECTION_FORCED",
            402 => "INVALID_PATH",
            403 => "ACCESS_REFUSED",
            404 => "NOT_FOUND",
            405 => "RESOURCE_LOCKED",
            406 => "PRECONDITION_FAILED",
            501 => "FRAME_ERROR",
            502 => "SYNTAX_ERROR",
            503 => "COMMAND_INVALID",
            504 => "CHANNEL_ERROR",
            505 => "UNEXPECTED_FRAME",
            506 => "RESOURCE_ERROR",
            530 => "NOT_ALLOWED",
            540 => "NOT_IMPLEMENTED",
            541 => "INTERNAL_ERROR",
            _ => "UNKNOWN",
        }
    }
}
