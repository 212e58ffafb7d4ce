//! Byte-level primitives shared by every decoder and encoder of the crate.
//!
//! Decoding goes through [`Reader`], a bounds-checked cursor: every read returns a
//! `Result`, so no input can make the codec index out of bounds or panic. The reply
//! code of a short read is chosen by whoever creates the reader, because the same
//! truncation means FRAME_ERROR in method arguments (what RabbitMQ's generated
//! `decode_method_fields` fallback raises) but SYNTAX_ERROR inside a field table.
//!
//! Encoding appends to a caller-owned `Vec<u8>`: no intermediate buffers. Length
//! prefixes that are not known up front (tables, arrays, frame sizes) are written as a
//! placeholder and patched afterwards.

use crate::WireError;

/// A bounds-checked big-endian cursor over a borrowed slice.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Reply code used for short reads and malformed UTF-8.
    code: u16,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], code: u16) -> Self {
        Reader { buf, pos: 0, code }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub(crate) fn err(&self, text: impl Into<String>) -> WireError {
        WireError::new(self.code, text)
    }

    fn short(&self, wanted: usize) -> WireError {
        self.err(format!("truncated: needed {wanted} more byte(s) at offset {}, {} left", self.pos, self.remaining()))
    }

    /// The next `n` bytes, borrowed.
    #[inline]
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.buf.len()).ok_or_else(|| self.short(n))?;
        let bytes = self.buf.get(self.pos..end).ok_or_else(|| self.short(n))?;
        self.pos = end;
        Ok(bytes)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    #[inline]
    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    #[inline]
    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    #[inline]
    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    #[inline]
    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A short string's raw bytes (u8 length prefix).
    #[inline]
    pub(crate) fn shortstr_bytes(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.u8()?;
        self.take(usize::from(len))
    }

    /// A short string that must be UTF-8. RabbitMQ's `rabbit_binary_parser:assert_utf8`
    /// closes with FRAME_ERROR "Malformed UTF-8 in shortstr"; see [`MALFORMED_UTF8_CODE`].
    #[inline]
    pub(crate) fn shortstr(&mut self) -> Result<&'a str, WireError> {
        let bytes = self.shortstr_bytes()?;
        std::str::from_utf8(bytes).map_err(|_| WireError::new(MALFORMED_UTF8_CODE, "Malformed UTF-8 in shortstr"))
    }

    /// A long string's bytes (u32 length prefix).
    #[inline]
    pub(crate) fn longstr(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.u32()?;
        let len = usize::try_from(len).map_err(|_| self.short(usize::MAX))?;
        self.take(len)
    }

    pub(crate) fn skip(&mut self, n: usize) -> Result<(), WireError> {
        self.take(n).map(|_| ())
    }
}

/// Reply code for a short string that is not UTF-8: RabbitMQ's generated decoder calls
/// `rabbit_binary_parser:assert_utf8/1`, which raises `frame_error` (501).
pub(crate) const MALFORMED_UTF8_CODE: u16 = crate::reply::FRAME_ERROR;

// ---- encoding ----

#[inline]
pub(crate) fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}

#[inline]
pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

#[inline]
pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

#[inline]
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// The longest prefix of `s` that fits a short string (255 bytes) without splitting a
/// character. Encoders cannot fail (their signatures return `()`), and a server must not
/// panic because, say, a reply text grew too long; RabbitMQ truncates reply texts the
/// same way. Names (queues, exchanges, tags) are length-checked by the broker before
/// they ever reach an encoder, so truncation only ever hits free text.
#[inline]
pub(crate) fn shortstr_prefix(s: &str) -> &[u8] {
    if s.len() <= 255 {
        return s.as_bytes();
    }
    let mut end = 255;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

#[inline]
pub(crate) fn put_shortstr(out: &mut Vec<u8>, s: &str) {
    let bytes = shortstr_prefix(s);
    // shortstr_prefix guarantees len <= 255.
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

/// Long string: u32 length + bytes. Anything beyond u32::MAX bytes is cut off (it could
/// never fit in a frame anyway).
#[inline]
pub(crate) fn put_longstr(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    put_u32(out, len);
    out.extend_from_slice(&bytes[..len as usize]);
}

/// Reserve a u32 length slot; returns its offset for [`patch_len32`].
#[inline]
pub(crate) fn reserve_len32(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    at
}

/// Write the number of bytes appended after the slot at `at` into that slot.
#[inline]
pub(crate) fn patch_len32(out: &mut [u8], at: usize) {
    let len = out.len().saturating_sub(at + 4);
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    if let Some(slot) = out.get_mut(at..at + 4) {
        slot.copy_from_slice(&len.to_be_bytes());
    }
}

/// Pack consecutive bit fields into one octet, first field in the lowest bit (spec 4.2.5.2).
#[inline]
pub(crate) fn bits(flags: &[bool]) -> u8 {
    flags.iter().enumerate().fold(0u8, |acc, (i, &b)| acc | (u8::from(b) << i))
}

#[inline]
pub(crate) fn bit(octet: u8, i: u8) -> bool {
    octet & (1 << i) != 0
}
