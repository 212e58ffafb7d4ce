//! Field tables and values with RabbitMQ's type tags
//! (rabbit_binary_parser / rabbit_binary_generator), which differ from the 0-9-1 errata:
//! `s` is a signed 16-bit short, not a short string; `x` is a byte array; `V` is void.

use bytes::Bytes;

use crate::WireError;
use crate::codec::{
    Reader, patch_len32, put_longstr, put_u8, put_u16, put_u32, put_u64, reserve_len32, shortstr_prefix,
};
use crate::reply::SYNTAX_ERROR;

/// One typed value of a field table or array. The variant names the RabbitMQ tag it
/// encodes as, so decoding then encoding a table gives back the same bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// `t`
    Bool(bool),
    /// `b`
    I8(i8),
    /// `B`
    U8(u8),
    /// `s` (RabbitMQ reads it as a signed 16-bit integer)
    I16(i16),
    /// `u`
    U16(u16),
    /// `I`
    I32(i32),
    /// `i`
    U32(u32),
    /// `l`
    I64(i64),
    /// `L` (decoded as RabbitMQ does; see the helper's note in the code)
    U64(u64),
    /// `f`
    F32(f32),
    /// `d`
    F64(f64),
    /// `D`: scale, unscaled value
    Decimal(u8, u32),
    /// `S`: long string, arbitrary bytes
    LongStr(Bytes),
    /// `A`
    Array(Vec<FieldValue>),
    /// `T`: seconds since the epoch
    Timestamp(u64),
    /// `F`
    Table(FieldTable),
    /// `V`
    Void,
    /// `x`
    ByteArray(Bytes),
}

/// An ordered field table. Order is kept as received; lookups are linear (tables are small).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldTable(pub Vec<(String, FieldValue)>);

impl FieldTable {
    pub fn new() -> Self {
        FieldTable(Vec::new())
    }

    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn insert(&mut self, key: impl Into<String>, value: FieldValue) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &FieldValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl FieldValue {
    /// Any integer variant as i64 (RabbitMQ compares numeric arguments by value).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            FieldValue::I8(v) => Some(v.into()),
            FieldValue::U8(v) => Some(v.into()),
            FieldValue::I16(v) => Some(v.into()),
            FieldValue::U16(v) => Some(v.into()),
            FieldValue::I32(v) => Some(v.into()),
            FieldValue::U32(v) => Some(v.into()),
            FieldValue::I64(v) => Some(v),
            // `L` is read as a *signed* 64-bit integer by RabbitMQ (see the note on
            // `decode_value`), so the numeric value is the two's complement reading.
            FieldValue::U64(v) => Some(v as i64),
            _ => None,
        }
    }

    /// RabbitMQ's name for the value's type (the atoms of rabbit_binary_parser), as its
    /// error texts print them: "signedint", "longstr", "binary"...
    pub fn type_name(&self) -> &'static str {
        match self {
            FieldValue::Bool(_) => "bool",
            FieldValue::I8(_) => "byte",
            FieldValue::U8(_) => "unsignedbyte",
            FieldValue::I16(_) => "short",
            FieldValue::U16(_) => "unsignedshort",
            FieldValue::I32(_) => "signedint",
            FieldValue::U32(_) => "unsignedint",
            FieldValue::I64(_) | FieldValue::U64(_) => "long",
            FieldValue::F32(_) => "float",
            FieldValue::F64(_) => "double",
            FieldValue::Decimal(..) => "decimal",
            FieldValue::LongStr(_) => "longstr",
            FieldValue::Array(_) => "array",
            FieldValue::Timestamp(_) => "timestamp",
            FieldValue::Table(_) => "table",
            FieldValue::Void => "void",
            FieldValue::ByteArray(_) => "binary",
        }
    }

    /// A long string's bytes as UTF-8, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::LongStr(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Codec
//
// Dialect (rabbit_binary_parser.erl / rabbit_binary_generator.erl):
// - `s` is a signed 16-bit short, as in RabbitMQ and the Qpid extensions, not the 0-9-1
//   spec's short string (which no broker sends in tables).
// - `l` and `L`: RabbitMQ reads BOTH as a signed 64-bit integer
//   (`?SIMPLE_PARSE_TABLE($L, Value:64/signed, long)`, see rabbitmq-server#1093 and the
//   0-9-1 errata) and only ever emits `l`. We keep the tag: `L` decodes to
//   `FieldValue::U64` holding the same 64 bits, so decode-then-encode is byte-exact, and
//   `FieldValue::as_i64` reads those bits as signed, which is the value RabbitMQ sees.
// - `x` is a byte array (u32 length + bytes), `V` is void (no payload), `t` is one octet
//   where any non-zero value is true (re-encoded as 1).
// - `D` is scale (u8) + unscaled value (u32, unsigned as in RabbitMQ).
// Any other tag is a SYNTAX_ERROR (502), as are entries that run past the table's own
// length. A table or array nested deeper than MAX_NESTING_DEPTH levels is rejected with
// SYNTAX_ERROR before the decoder recurses further, so hostile input cannot exhaust the
// stack (each level costs at least 5 input bytes, so a 128 KiB frame could otherwise
// nest ~26k levels).
// ---------------------------------------------------------------------------------------

/// Deepest nesting of tables/arrays accepted by the decoders (the outermost table is
/// level 1). Real-world tables nest 2 or 3 levels (client capabilities).
pub const MAX_NESTING_DEPTH: usize = 64;

/// Append a field table: u32 byte length, then `shortstr key, tag, value` per entry.
///
/// Keys longer than 255 bytes are cut at the last character boundary that fits (an
/// encoder cannot fail; keys come from the broker's own code or from decoded tables,
/// whose keys are at most 255 bytes anyway).
pub fn encode_table(t: &FieldTable, out: &mut Vec<u8>) {
    let at = reserve_len32(out);
    for (key, value) in &t.0 {
        let key = shortstr_prefix(key);
        put_u8(out, key.len() as u8);
        out.extend_from_slice(key);
        encode_value(value, out);
    }
    patch_len32(out, at);
}

/// Append a field array: u32 byte length, then `tag, value` per element.
pub fn encode_array(values: &[FieldValue], out: &mut Vec<u8>) {
    let at = reserve_len32(out);
    for value in values {
        encode_value(value, out);
    }
    patch_len32(out, at);
}

/// Append one tagged value (type octet + payload).
pub fn encode_value(v: &FieldValue, out: &mut Vec<u8>) {
    match v {
        FieldValue::Bool(b) => {
            put_u8(out, b't');
            put_u8(out, u8::from(*b));
        }
        FieldValue::I8(x) => {
            put_u8(out, b'b');
            out.extend_from_slice(&x.to_be_bytes());
        }
        FieldValue::U8(x) => {
            put_u8(out, b'B');
            put_u8(out, *x);
        }
        FieldValue::I16(x) => {
            put_u8(out, b's');
            out.extend_from_slice(&x.to_be_bytes());
        }
        FieldValue::U16(x) => {
            put_u8(out, b'u');
            put_u16(out, *x);
        }
        FieldValue::I32(x) => {
            put_u8(out, b'I');
            out.extend_from_slice(&x.to_be_bytes());
        }
        FieldValue::U32(x) => {
            put_u8(out, b'i');
            put_u32(out, *x);
        }
        FieldValue::I64(x) => {
            put_u8(out, b'l');
            out.extend_from_slice(&x.to_be_bytes());
        }
        FieldValue::U64(x) => {
            put_u8(out, b'L');
            put_u64(out, *x);
        }
        FieldValue::F32(x) => {
            put_u8(out, b'f');
            put_u32(out, x.to_bits());
        }
        FieldValue::F64(x) => {
            put_u8(out, b'd');
            put_u64(out, x.to_bits());
        }
        FieldValue::Decimal(scale, value) => {
            put_u8(out, b'D');
            put_u8(out, *scale);
            put_u32(out, *value);
        }
        FieldValue::LongStr(bytes) => {
            put_u8(out, b'S');
            put_longstr(out, bytes);
        }
        FieldValue::Array(values) => {
            put_u8(out, b'A');
            encode_array(values, out);
        }
        FieldValue::Timestamp(t) => {
            put_u8(out, b'T');
            put_u64(out, *t);
        }
        FieldValue::Table(t) => {
            put_u8(out, b'F');
            encode_table(t, out);
        }
        FieldValue::Void => put_u8(out, b'V'),
        FieldValue::ByteArray(bytes) => {
            put_u8(out, b'x');
            put_longstr(out, bytes);
        }
    }
}

/// Decode a field table from the front of `input`. Returns the table and the bytes
/// consumed, including the 4-byte length. Errors are SYNTAX_ERROR.
pub fn decode_table(input: &[u8]) -> Result<(FieldTable, usize), WireError> {
    let mut r = Reader::new(input, SYNTAX_ERROR);
    let table = read_table(&mut r, 1)?;
    Ok((table, r.pos()))
}

/// Decode a field array (u32 length + tagged values) from the front of `input`.
pub fn decode_array(input: &[u8]) -> Result<(Vec<FieldValue>, usize), WireError> {
    let mut r = Reader::new(input, SYNTAX_ERROR);
    let values = read_array(&mut r, 1)?;
    Ok((values, r.pos()))
}

/// Decode one tagged value (type octet + payload) from the front of `input`.
pub fn decode_value(input: &[u8]) -> Result<(FieldValue, usize), WireError> {
    let mut r = Reader::new(input, SYNTAX_ERROR);
    let value = read_value(&mut r, 0)?;
    Ok((value, r.pos()))
}

/// Check that `input` starts with a well-formed field table, without allocating.
/// Returns the bytes it spans (length prefix included). A table that passes this check
/// is guaranteed to [`decode_table`] successfully.
pub fn skip_table(input: &[u8]) -> Result<usize, WireError> {
    let mut r = Reader::new(input, SYNTAX_ERROR);
    walk_table(&mut r, 1)?;
    Ok(r.pos())
}

fn too_deep() -> WireError {
    WireError::syntax(format!("field table/array nesting exceeds {MAX_NESTING_DEPTH} levels"))
}

/// Reads the length prefix with `outer`'s error code (a table that overruns the method
/// payload is a truncated method), then the entries with SYNTAX_ERROR.
pub(crate) fn read_table(outer: &mut Reader<'_>, depth: usize) -> Result<FieldTable, WireError> {
    if depth > MAX_NESTING_DEPTH {
        return Err(too_deep());
    }
    let body = outer.longstr()?;
    let mut r = Reader::new(body, SYNTAX_ERROR);
    let mut entries = Vec::new();
    while !r.is_empty() {
        let key = read_key(&mut r)?;
        let value = read_value(&mut r, depth)?;
        entries.push((key.to_owned(), value));
    }
    Ok(FieldTable(entries))
}

fn read_key<'a>(r: &mut Reader<'a>) -> Result<&'a str, WireError> {
    let key = r.shortstr_bytes()?;
    // RabbitMQ keeps keys as raw binaries; ours are `String`, so a non-UTF-8 key
    // cannot be represented and is refused as malformed table syntax.
    std::str::from_utf8(key).map_err(|_| WireError::syntax("field table key is not valid UTF-8"))
}

fn read_array(outer: &mut Reader<'_>, depth: usize) -> Result<Vec<FieldValue>, WireError> {
    if depth > MAX_NESTING_DEPTH {
        return Err(too_deep());
    }
    let body = outer.longstr()?;
    let mut r = Reader::new(body, SYNTAX_ERROR);
    let mut values = Vec::new();
    while !r.is_empty() {
        values.push(read_value(&mut r, depth)?);
    }
    Ok(values)
}

/// `depth` is the nesting level of the container holding this value.
fn read_value(r: &mut Reader<'_>, depth: usize) -> Result<FieldValue, WireError> {
    let tag = r.u8()?;
    Ok(match tag {
        b't' => FieldValue::Bool(r.u8()? != 0),
        b'b' => FieldValue::I8(r.u8()? as i8),
        b'B' => FieldValue::U8(r.u8()?),
        b's' => FieldValue::I16(r.u16()? as i16),
        b'u' => FieldValue::U16(r.u16()?),
        b'I' => FieldValue::I32(r.u32()? as i32),
        b'i' => FieldValue::U32(r.u32()?),
        b'l' => FieldValue::I64(r.u64()? as i64),
        b'L' => FieldValue::U64(r.u64()?),
        b'f' => FieldValue::F32(f32::from_bits(r.u32()?)),
        b'd' => FieldValue::F64(f64::from_bits(r.u64()?)),
        b'D' => {
            let scale = r.u8()?;
            FieldValue::Decimal(scale, r.u32()?)
        }
        b'S' => FieldValue::LongStr(Bytes::copy_from_slice(r.longstr()?)),
        b'A' => FieldValue::Array(read_array(r, depth + 1)?),
        b'T' => FieldValue::Timestamp(r.u64()?),
        b'F' => FieldValue::Table(read_table(r, depth + 1)?),
        b'V' => FieldValue::Void,
        b'x' => FieldValue::ByteArray(Bytes::copy_from_slice(r.longstr()?)),
        other => return Err(unknown_tag(other)),
    })
}

fn unknown_tag(tag: u8) -> WireError {
    if tag.is_ascii_graphic() {
        WireError::syntax(format!("unknown field value type '{}'", tag as char))
    } else {
        WireError::syntax(format!("unknown field value type 0x{tag:02x}"))
    }
}

/// Allocation-free twin of [`read_table`]: same checks, nothing built.
pub(crate) fn walk_table(outer: &mut Reader<'_>, depth: usize) -> Result<(), WireError> {
    if depth > MAX_NESTING_DEPTH {
        return Err(too_deep());
    }
    let body = outer.longstr()?;
    let mut r = Reader::new(body, SYNTAX_ERROR);
    while !r.is_empty() {
        read_key(&mut r)?;
        walk_value(&mut r, depth)?;
    }
    Ok(())
}

fn walk_array(outer: &mut Reader<'_>, depth: usize) -> Result<(), WireError> {
    if depth > MAX_NESTING_DEPTH {
        return Err(too_deep());
    }
    let body = outer.longstr()?;
    let mut r = Reader::new(body, SYNTAX_ERROR);
    while !r.is_empty() {
        walk_value(&mut r, depth)?;
    }
    Ok(())
}

fn walk_value(r: &mut Reader<'_>, depth: usize) -> Result<(), WireError> {
    let tag = r.u8()?;
    match tag {
        b't' | b'b' | b'B' => r.skip(1),
        b's' | b'u' => r.skip(2),
        b'I' | b'i' | b'f' => r.skip(4),
        b'l' | b'L' | b'd' | b'T' => r.skip(8),
        b'D' => r.skip(5),
        b'S' | b'x' => r.longstr().map(|_| ()),
        b'A' => walk_array(r, depth + 1),
        b'F' => walk_table(r, depth + 1),
        b'V' => Ok(()),
        other => Err(unknown_tag(other)),
    }
}
