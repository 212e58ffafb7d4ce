//! Frames: decode (`Ok(None)` until a whole frame is buffered) and encode.

use bytes::{Bytes, BytesMut};

use crate::{Method, WireError};

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Method { channel: u16, method: Method },
    /// Content header. `properties` are the raw property bytes (flags + fields), kept
    /// verbatim so the broker can forward them byte-for-byte.
    Header { channel: u16, class_id: u16, body_size: u64, properties: Bytes },
    /// Body frame payload, split off the read buffer without copying.
    Body { channel: u16, payload: Bytes },
    Heartbeat { channel: u16 },
}

/// Decode one frame from the front of `buf`, consuming its bytes.
///
/// `frame_max` is the negotiated maximum frame size in bytes *including* the 8 bytes of
/// framing (0 = no limit, as during the handshake before tune-ok, where the spec floor
/// of 4096 applies to the client's frames... the implementation documents its choice).
/// Returns `Ok(None)` when more bytes are needed. Errors: FRAME_ERROR for an oversize
/// frame, a bad frame-end octet or an unknown frame type; errors of method decoding.
pub fn decode_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, WireError> {
    let _ = (buf, frame_max);
    todo!("wire helper fills this in")
}

/// Append a whole method frame.
pub fn encode_method(out: &mut Vec<u8>, channel: u16, method: &Method) {
    let _ = (out, channel, method);
    todo!("wire helper fills this in")
}

/// Append a content header frame with raw (already encoded) properties.
pub fn encode_header(out: &mut Vec<u8>, channel: u16, class_id: u16, body_size: u64, properties: &[u8]) {
    let _ = (out, channel, class_id, body_size, properties);
    todo!("wire helper fills this in")
}

/// Append body frames for `body`, split so no frame exceeds `frame_max` bytes (framing
/// included). An empty body produces no body frame.
pub fn encode_body(out: &mut Vec<u8>, channel: u16, body: &[u8], frame_max: u32) {
    let _ = (out, channel, body, frame_max);
    todo!("wire helper fills this in")
}

pub fn encode_heartbeat(out: &mut Vec<u8>) {
    out.extend_from_slice(&[crate::FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, crate::FRAME_END]);
}

/// Hot path: a basic.deliver method frame without building a [`Method`].
pub fn encode_basic_deliver(out: &mut Vec<u8>, channel: u16, consumer_tag: &str, delivery_tag: u64, redelivered: bool, exchange: &str, routing_key: &str) {
    let _ = (out, channel, consumer_tag, delivery_tag, redelivered, exchange, routing_key);
    todo!("wire helper fills this in")
}

/// Hot path: basic.get-ok.
pub fn encode_basic_get_ok(out: &mut Vec<u8>, channel: u16, delivery_tag: u64, redelivered: bool, exchange: &str, routing_key: &str, message_count: u32) {
    let _ = (out, channel, delivery_tag, redelivered, exchange, routing_key, message_count);
    todo!("wire helper fills this in")
}

/// Hot path: basic.return.
pub fn encode_basic_return(out: &mut Vec<u8>, channel: u16, reply_code: u16, reply_text: &str, exchange: &str, routing_key: &str) {
    let _ = (out, channel, reply_code, reply_text, exchange, routing_key);
    todo!("wire helper fills this in")
}
