//! Frames: decode (`Ok(None)` until a whole frame is buffered) and encode.

use bytes::{Buf, Bytes, BytesMut};

use crate::codec::{put_u16, put_u32, put_u64};
use crate::method::{put_deliver_args, put_get_ok_args, put_return_args};
use crate::reply::{FRAME_ERROR, UNEXPECTED_FRAME};
use crate::{
    FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, FRAME_OVERHEAD_BYTES, Method, WireError,
};

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Method {
        channel: u16,
        method: Method,
    },
    /// Content header. `properties` are the raw property bytes (flags + fields), kept
    /// verbatim so the broker can forward them byte-for-byte.
    Header {
        channel: u16,
        class_id: u16,
        body_size: u64,
        properties: Bytes,
    },
    /// Body frame payload, split off the read buffer without copying.
    Body {
        channel: u16,
        payload: Bytes,
    },
    Heartbeat {
        channel: u16,
    },
}

/// How far past frame_max a frame may go before it is refused, as RabbitMQ allows:
/// `rabbit_reader` refuses a frame only when `PayloadSize > FrameMax - 8 + ?FRAME_SIZE_FUDGE`
/// with the fudge = 8 ("We allow clients to exceed the frame size a little bit since
/// quite a few get it wrong - off-by 1 or 8 (empty frame size) are typical"). So a frame
/// whose *payload* is up to frame_max bytes is accepted. Our encoders never use it.
pub const FRAME_SIZE_FUDGE_BYTES: u32 = FRAME_OVERHEAD_BYTES as u32;

/// Bytes of the frame header: type(1) channel(2) size(4).
const FRAME_HEADER_BYTES: usize = 7;

/// Decode one frame from the front of `buf`, consuming its bytes.
///
/// `frame_max` is the negotiated maximum frame size in bytes *including* the 8 bytes of
/// framing; 0 means no limit. Before tune-ok the broker should pass
/// [`crate::FRAME_MIN_SIZE_BYTES`] rather than 0, as RabbitMQ does (its initial
/// frame_max is 4096), otherwise a peer can announce a 4 GiB frame and make the caller
/// buffer it. A frame is refused when its payload exceeds `frame_max` (framing included,
/// plus RabbitMQ's tolerance, see [`FRAME_SIZE_FUDGE_BYTES`]); this is checked as soon as
/// the 7-byte header is in, before waiting for the payload.
///
/// Returns `Ok(None)` when more bytes are needed; `buf` is then untouched. Errors (all
/// FRAME_ERROR, RabbitMQ's frame_error, unless noted): oversize frame; unknown frame
/// type (checked once the header is in: the stream is out of sync, no point waiting for
/// the payload); bad frame-end octet; heartbeat with a payload; method payload under 4
/// bytes or content header payload under 14 bytes; content header with a non-zero
/// weight (UNEXPECTED_FRAME, as RabbitMQ's command assembler); plus the errors of
/// [`Method::decode_payload`]. After an error the stream cannot be resynchronised and
/// the connection must be closed; `buf` is left in an unspecified state.
///
/// Body payloads and header properties are split off `buf` without copying.
pub fn decode_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, WireError> {
    let Some(header) = buf.get(..FRAME_HEADER_BYTES) else {
        return Ok(None);
    };
    let kind = header[0];
    let channel = u16::from_be_bytes([header[1], header[2]]);
    let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]);
    if frame_max != 0
        && u64::from(size) + FRAME_OVERHEAD_BYTES as u64 > u64::from(frame_max) + u64::from(FRAME_SIZE_FUDGE_BYTES)
    {
        return Err(WireError::frame(format!(
            "type {kind}, channel {channel}: frame size {} exceeds frame_max {frame_max}",
            u64::from(size) + FRAME_OVERHEAD_BYTES as u64
        )));
    }
    if !matches!(kind, FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT) {
        return Err(WireError::frame(format!("type {kind}, channel {channel}: unknown frame type")));
    }
    if kind == FRAME_HEARTBEAT && size != 0 {
        return Err(WireError::frame(format!(
            "type {kind}, channel {channel}: heartbeat frame with a {size}-byte payload"
        )));
    }
    // Only a 32-bit target can fail this (a 4 GiB frame with frame_max 0).
    let Some(total) = usize::try_from(size).ok().and_then(|size| size.checked_add(FRAME_OVERHEAD_BYTES)) else {
        return Err(WireError::frame(format!(
            "type {kind}, channel {channel}: frame size {size} too large for this platform"
        )));
    };
    if buf.len() < total {
        // Not reserving here on purpose: with frame_max 0 a hostile size would make us
        // allocate up to 4 GiB before a single payload byte arrived.
        return Ok(None);
    }
    let end = buf.get(total - 1).copied().unwrap_or(FRAME_END);
    if end != FRAME_END {
        return Err(WireError::frame(format!("type {kind}, channel {channel}: invalid frame end marker 0x{end:02x}")));
    }
    match kind {
        FRAME_METHOD => {
            // Method arguments are copied into owned fields, so parse in place and
            // just drop the bytes.
            let payload = buf.get(FRAME_HEADER_BYTES..total - 1).unwrap_or_default();
            let method = Method::decode_payload(payload);
            buf.advance(total);
            Ok(Some(Frame::Method { channel, method: method? }))
        }
        FRAME_HEADER => {
            let mut frame = buf.split_to(total).freeze();
            frame.truncate(total - 1);
            frame.advance(FRAME_HEADER_BYTES);
            decode_content_header(channel, frame).map(Some)
        }
        FRAME_BODY => {
            let mut payload = buf.split_to(total).freeze();
            payload.truncate(total - 1);
            payload.advance(FRAME_HEADER_BYTES);
            Ok(Some(Frame::Body { channel, payload }))
        }
        _ => {
            buf.advance(total);
            Ok(Some(Frame::Heartbeat { channel }))
        }
    }
}

/// `payload` = class_id(2) weight(2) body_size(8) properties.
fn decode_content_header(channel: u16, mut payload: Bytes) -> Result<Frame, WireError> {
    let Some(fixed) = payload.get(..12) else {
        return Err(WireError::frame(format!(
            "type 2, channel {channel}: content header payload of {} byte(s) is too short",
            payload.len()
        )));
    };
    let class_id = u16::from_be_bytes([fixed[0], fixed[1]]);
    let weight = u16::from_be_bytes([fixed[2], fixed[3]]);
    let body_size =
        u64::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7], fixed[8], fixed[9], fixed[10], fixed[11]]);
    if weight != 0 {
        // rabbit_command_assembler only accepts weight 0; anything else falls through
        // to its unexpected_frame clause.
        return Err(WireError::new(
            UNEXPECTED_FRAME,
            format!("content header for class {class_id} with non-zero weight {weight}"),
        )
        .with_method(class_id, 0));
    }
    if payload.len() < 14 {
        // Not even a property flags word.
        return Err(WireError::new(
            FRAME_ERROR,
            format!("type 2, channel {channel}: content header has no property flags"),
        )
        .with_method(class_id, 0));
    }
    payload.advance(12);
    Ok(Frame::Header { channel, class_id, body_size, properties: payload })
}

/// Write the 7-byte frame header with a zero size and return the payload's offset.
#[inline]
fn begin_frame(out: &mut Vec<u8>, kind: u8, channel: u16) -> usize {
    out.push(kind);
    put_u16(out, channel);
    put_u32(out, 0);
    out.len()
}

/// Patch the size of the frame whose payload starts at `start`, and add the end octet.
#[inline]
fn end_frame(out: &mut Vec<u8>, start: usize) {
    let size = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
    if let Some(slot) = out.get_mut(start - 4..start) {
        slot.copy_from_slice(&size.to_be_bytes());
    }
    out.push(FRAME_END);
}

/// Append a whole method frame.
pub fn encode_method(out: &mut Vec<u8>, channel: u16, method: &Method) {
    let start = begin_frame(out, FRAME_METHOD, channel);
    method.encode_payload(out);
    end_frame(out, start);
}

/// Append a content header frame with raw (already encoded) properties.
pub fn encode_header(out: &mut Vec<u8>, channel: u16, class_id: u16, body_size: u64, properties: &[u8]) {
    out.reserve(FRAME_OVERHEAD_BYTES + 12 + properties.len());
    let start = begin_frame(out, FRAME_HEADER, channel);
    put_u16(out, class_id);
    put_u16(out, 0); // weight
    put_u64(out, body_size);
    out.extend_from_slice(properties);
    end_frame(out, start);
}

/// Largest body payload per frame for `frame_max` (framing included, 0 = unlimited).
/// Never 0, so splitting always progresses even for a nonsensical frame_max.
pub fn max_body_payload(frame_max: u32) -> usize {
    let limit = if frame_max == 0 { u32::MAX } else { frame_max.saturating_sub(FRAME_OVERHEAD_BYTES as u32) };
    usize::try_from(limit).unwrap_or(usize::MAX).max(1)
}

/// Append body frames for `body`, split so no frame exceeds `frame_max` bytes (framing
/// included). An empty body produces no body frame.
pub fn encode_body(out: &mut Vec<u8>, channel: u16, body: &[u8], frame_max: u32) {
    let frames = body.len().div_ceil(max_body_payload(frame_max));
    out.reserve(body.len() + frames * FRAME_OVERHEAD_BYTES);
    for (head, range) in body_frames(body.len(), channel, frame_max) {
        out.extend_from_slice(&head);
        out.extend_from_slice(&body[range]);
        out.push(FRAME_END);
    }
}

/// Split `body_len` bytes of body into frames for `frame_max` like [`encode_body`], but
/// leave each payload to the caller: `head` is the 7-byte frame header to write before
/// payload `range`, and [`crate::FRAME_END`] must follow it. For writers that send large
/// payloads by reference instead of copying them.
pub fn body_frames(
    body_len: usize,
    channel: u16,
    frame_max: u32,
) -> impl Iterator<Item = ([u8; 7], std::ops::Range<usize>)> {
    let chunk = max_body_payload(frame_max);
    let [c0, c1] = channel.to_be_bytes();
    (0..body_len.div_ceil(chunk)).map(move |i| {
        let start = i * chunk;
        let end = (start + chunk).min(body_len);
        // A piece is at most `chunk` <= u32::MAX bytes.
        let [l0, l1, l2, l3] = ((end - start) as u32).to_be_bytes();
        ([FRAME_BODY, c0, c1, l0, l1, l2, l3], start..end)
    })
}

/// Append a content header frame for class basic (60) followed by the body frames.
pub fn encode_content(out: &mut Vec<u8>, channel: u16, properties: &[u8], body: &[u8], frame_max: u32) {
    encode_header(out, channel, crate::class::BASIC, body.len() as u64, properties);
    encode_body(out, channel, body, frame_max);
}

pub fn encode_heartbeat(out: &mut Vec<u8>) {
    out.extend_from_slice(&[crate::FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, crate::FRAME_END]);
}

/// Hot path: a basic.deliver method frame without building a [`Method`].
pub fn encode_basic_deliver(
    out: &mut Vec<u8>,
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) {
    // 8 framing + 4 ids + 8 tag + 1 bits + 3 length octets.
    out.reserve(24 + consumer_tag.len() + exchange.len() + routing_key.len());
    let start = begin_frame(out, FRAME_METHOD, channel);
    put_u16(out, crate::class::BASIC);
    put_u16(out, 60);
    put_deliver_args(out, consumer_tag, delivery_tag, redelivered, exchange, routing_key);
    end_frame(out, start);
}

/// Hot path: basic.get-ok.
pub fn encode_basic_get_ok(
    out: &mut Vec<u8>,
    channel: u16,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
    message_count: u32,
) {
    out.reserve(27 + exchange.len() + routing_key.len());
    let start = begin_frame(out, FRAME_METHOD, channel);
    put_u16(out, crate::class::BASIC);
    put_u16(out, 71);
    put_get_ok_args(out, delivery_tag, redelivered, exchange, routing_key, message_count);
    end_frame(out, start);
}

/// Hot path: basic.return.
pub fn encode_basic_return(
    out: &mut Vec<u8>,
    channel: u16,
    reply_code: u16,
    reply_text: &str,
    exchange: &str,
    routing_key: &str,
) {
    out.reserve(17 + reply_text.len() + exchange.len() + routing_key.len());
    let start = begin_frame(out, FRAME_METHOD, channel);
    put_u16(out, crate::class::BASIC);
    put_u16(out, 50);
    put_return_args(out, reply_code, reply_text, exchange, routing_key);
    end_frame(out, start);
}
