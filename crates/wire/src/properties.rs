//! The 14 basic properties, in wire order: content-type, content-encoding, headers,
//! delivery-mode, priority, correlation-id, reply-to, expiration, message-id, timestamp,
//! type, user-id, app-id, cluster-id.
//!
//! "Raw properties" below means the part of a content header payload after class-id,
//! weight and body-size: the 16-bit property flags (with continuation) and the fields.

use crate::WireError;
use crate::codec::{Reader, put_shortstr, put_u8, put_u16, put_u64};
use crate::reply::FRAME_ERROR;
use crate::types::{FieldTable, encode_table, read_table, walk_table};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct BasicProperties {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub headers: Option<FieldTable>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub expiration: Option<String>,
    pub message_id: Option<String>,
    pub timestamp: Option<u64>,
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub app_id: Option<String>,
    pub cluster_id: Option<String>,
}

/// What the broker needs from a message's properties without decoding all of them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PropertiesSummary {
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub expiration: Option<String>,
    pub has_headers: bool,
    /// reply_to is exactly `amq.rabbitmq.reply-to` (RabbitMQ's direct reply-to), which
    /// the broker rewrites.
    pub reply_to_direct: bool,
}

// Property flag bits of the first flags word, in wire order.
const CONTENT_TYPE: u16 = 1 << 15;
const CONTENT_ENCODING: u16 = 1 << 14;
const HEADERS: u16 = 1 << 13;
const DELIVERY_MODE: u16 = 1 << 12;
const PRIORITY: u16 = 1 << 11;
const CORRELATION_ID: u16 = 1 << 10;
const REPLY_TO: u16 = 1 << 9;
const EXPIRATION: u16 = 1 << 8;
const MESSAGE_ID: u16 = 1 << 7;
const TIMESTAMP: u16 = 1 << 6;
const TYPE: u16 = 1 << 5;
const USER_ID: u16 = 1 << 4;
const APP_ID: u16 = 1 << 3;
const CLUSTER_ID: u16 = 1 << 2;
const CONTINUATION: u16 = 1;

// Errors in the property block are FRAME_ERROR (501): the block is part of the content
// header frame's structure, and RabbitMQ's own decoders answer undecodable frame parts
// with frame_error. (Its `decode_properties/2` actually badmatches and crashes the
// channel on such input, so there is no exact code to copy.) Malformed *header table
// contents* are SYNTAX_ERROR (502), as everywhere else.

/// Reads the flags word(s). Returns the first word; continuation words are accepted but
/// may not set any property bit, since basic has only the 14 properties of word one.
/// Bit 1 of the first word is reserved and ignored, as RabbitMQ's decoder does.
fn read_flags(r: &mut Reader<'_>) -> Result<u16, WireError> {
    let first = r.u16()?;
    let mut word = first;
    while word & CONTINUATION != 0 {
        word = r.u16()?;
        if word & !CONTINUATION != 0 {
            return Err(r.err(format!("unknown basic property flags 0x{word:04x} in a continuation word")));
        }
    }
    Ok(first)
}

fn props_reader(raw: &[u8]) -> Reader<'_> {
    Reader::new(raw, FRAME_ERROR)
}

fn trailing(r: &Reader<'_>) -> Result<(), WireError> {
    if r.is_empty() { Ok(()) } else { Err(r.err(format!("{} trailing byte(s) after basic properties", r.remaining()))) }
}

impl BasicProperties {
    /// Decode raw properties (flags + fields, as kept in `Frame::Header`).
    pub fn decode(raw: &[u8]) -> Result<Self, WireError> {
        let mut r = props_reader(raw);
        let flags = read_flags(&mut r)?;
        let has = |f: u16| flags & f != 0;
        fn s(r: &mut Reader<'_>) -> Result<String, WireError> {
            r.shortstr().map(str::to_owned)
        }
        let mut p = BasicProperties::default();
        if has(CONTENT_TYPE) {
            p.content_type = Some(s(&mut r)?);
        }
        if has(CONTENT_ENCODING) {
            p.content_encoding = Some(s(&mut r)?);
        }
        if has(HEADERS) {
            p.headers = Some(read_table(&mut r, 1)?);
        }
        if has(DELIVERY_MODE) {
            p.delivery_mode = Some(r.u8()?);
        }
        if has(PRIORITY) {
            p.priority = Some(r.u8()?);
        }
        if has(CORRELATION_ID) {
            p.correlation_id = Some(s(&mut r)?);
        }
        if has(REPLY_TO) {
            p.reply_to = Some(s(&mut r)?);
        }
        if has(EXPIRATION) {
            p.expiration = Some(s(&mut r)?);
        }
        if has(MESSAGE_ID) {
            p.message_id = Some(s(&mut r)?);
        }
        if has(TIMESTAMP) {
            p.timestamp = Some(r.u64()?);
        }
        if has(TYPE) {
            p.kind = Some(s(&mut r)?);
        }
        if has(USER_ID) {
            p.user_id = Some(s(&mut r)?);
        }
        if has(APP_ID) {
            p.app_id = Some(s(&mut r)?);
        }
        if has(CLUSTER_ID) {
            p.cluster_id = Some(s(&mut r)?);
        }
        trailing(&r)?;
        Ok(p)
    }

    /// Append raw properties: one flags word (no continuation) then the present fields.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut flags = 0u16;
        let mut set = |present: bool, f: u16| {
            if present {
                flags |= f;
            }
        };
        set(self.content_type.is_some(), CONTENT_TYPE);
        set(self.content_encoding.is_some(), CONTENT_ENCODING);
        set(self.headers.is_some(), HEADERS);
        set(self.delivery_mode.is_some(), DELIVERY_MODE);
        set(self.priority.is_some(), PRIORITY);
        set(self.correlation_id.is_some(), CORRELATION_ID);
        set(self.reply_to.is_some(), REPLY_TO);
        set(self.expiration.is_some(), EXPIRATION);
        set(self.message_id.is_some(), MESSAGE_ID);
        set(self.timestamp.is_some(), TIMESTAMP);
        set(self.kind.is_some(), TYPE);
        set(self.user_id.is_some(), USER_ID);
        set(self.app_id.is_some(), APP_ID);
        set(self.cluster_id.is_some(), CLUSTER_ID);
        put_u16(out, flags);
        let shortstr = |out: &mut Vec<u8>, v: &Option<String>| {
            if let Some(v) = v {
                put_shortstr(out, v);
            }
        };
        shortstr(out, &self.content_type);
        shortstr(out, &self.content_encoding);
        if let Some(h) = &self.headers {
            encode_table(h, out);
        }
        if let Some(v) = self.delivery_mode {
            put_u8(out, v);
        }
        if let Some(v) = self.priority {
            put_u8(out, v);
        }
        shortstr(out, &self.correlation_id);
        shortstr(out, &self.reply_to);
        shortstr(out, &self.expiration);
        shortstr(out, &self.message_id);
        if let Some(v) = self.timestamp {
            put_u64(out, v);
        }
        shortstr(out, &self.kind);
        shortstr(out, &self.user_id);
        shortstr(out, &self.app_id);
        shortstr(out, &self.cluster_id);
    }

    /// The encoded form as a new buffer (convenience for tests and cold paths).
    pub fn to_raw(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// Walk raw properties for what routing and queueing need, validating the whole block
/// (so a message the broker accepts can be forwarded verbatim) but allocating only the
/// expiration string. The headers table is checked for well-formedness without being
/// built; use [`headers_of`] to get it.
pub fn summarize(raw: &[u8]) -> Result<PropertiesSummary, WireError> {
    let mut r = props_reader(raw);
    let flags = read_flags(&mut r)?;
    let has = |f: u16| flags & f != 0;
    let mut summary = PropertiesSummary::default();
    if has(CONTENT_TYPE) {
        r.shortstr()?;
    }
    if has(CONTENT_ENCODING) {
        r.shortstr()?;
    }
    if has(HEADERS) {
        walk_table(&mut r, 1)?;
        summary.has_headers = true;
    }
    if has(DELIVERY_MODE) {
        summary.delivery_mode = Some(r.u8()?);
    }
    if has(PRIORITY) {
        summary.priority = Some(r.u8()?);
    }
    if has(CORRELATION_ID) {
        r.shortstr()?;
    }
    if has(REPLY_TO) {
        summary.reply_to_direct = r.shortstr()? == "amq.rabbitmq.reply-to";
    }
    if has(EXPIRATION) {
        summary.expiration = Some(r.shortstr()?.to_owned());
    }
    if has(MESSAGE_ID) {
        r.shortstr()?;
    }
    if has(TIMESTAMP) {
        r.u64()?;
    }
    for f in [TYPE, USER_ID, APP_ID, CLUSTER_ID] {
        if has(f) {
            r.shortstr()?;
        }
    }
    trailing(&r)?;
    Ok(summary)
}

/// Decode only the headers table of raw properties (for the headers exchange);
/// `Ok(None)` when the headers flag is clear. Fields after the headers are not read.
pub fn headers_of(raw: &[u8]) -> Result<Option<FieldTable>, WireError> {
    let mut r = props_reader(raw);
    let flags = read_flags(&mut r)?;
    if flags & HEADERS == 0 {
        return Ok(None);
    }
    if flags & CONTENT_TYPE != 0 {
        r.shortstr_bytes()?;
    }
    if flags & CONTENT_ENCODING != 0 {
        r.shortstr_bytes()?;
    }
    read_table(&mut r, 1).map(Some)
}
