//! Record framing: `len: u32 LE | crc32c(payload): u32 LE | payload[len]` — the message
//! store's segments and definitions log, the Raft log and vote files, and the inter-node
//! wire. No I/O here.
//!
//! A reader distinguishes "not all there yet" (a torn tail, or bytes still on the way) from
//! "wrong" (a checksum mismatch or an impossible length) so recovery can cut the first and
//! report the second.

/// Bytes of framing before each payload.
pub const HEADER_BYTES: usize = 8;

/// Largest payload a record may carry: a 16 MiB message plus its routing data, with room;
/// Raft snapshot chunks and append batches are far below it. A larger length is taken as
/// corruption rather than as an allocation request.
pub const PAYLOAD_MAX_BYTES: u32 = 64 * 1024 * 1024;

/// Append one framed record.
pub fn encode(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Append a framed record whose payload is written by `f` (no intermediate buffer).
pub fn encode_with(out: &mut Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    f(out);
    let len = (out.len() - start - HEADER_BYTES) as u32;
    let crc = crc32c::crc32c(&out[start + HEADER_BYTES..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A valid record and the total bytes it took.
    Record(&'a [u8], usize),
    /// The buffer ends inside a record (or is empty).
    Incomplete,
    /// The bytes are not a valid record; `reaches_end` says whether the record's claimed
    /// length reaches the end of the buffer (a torn final write looks like that).
    Corrupt { reason: &'static str, reaches_end: bool },
}

/// Decode the record at the start of `buf`.
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    let Some(header) = buf.get(..HEADER_BYTES) else { return Decoded::Incomplete };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > PAYLOAD_MAX_BYTES {
        return Decoded::Corrupt { reason: "record length out of range", reaches_end: true };
    }
    let end = HEADER_BYTES + len as usize;
    let Some(payload) = buf.get(HEADER_BYTES..end) else { return Decoded::Incomplete };
    if crc32c::crc32c(payload) != crc {
        return Decoded::Corrupt { reason: "checksum mismatch", reaches_end: end == buf.len() };
    }
    Decoded::Record(payload, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_every_truncation() {
        let mut buf = Vec::new();
        encode(&mut buf, b"hello");
        encode_with(&mut buf, |o| o.extend_from_slice(b"world!"));
        let Decoded::Record(p, n) = decode(&buf) else { panic!() };
        assert_eq!((p, n), (&b"hello"[..], 13));
        let Decoded::Record(p, _) = decode(&buf[n..]) else { panic!() };
        assert_eq!(p, b"world!");
        for cut in 0..13 {
            assert_eq!(decode(&buf[..cut]), Decoded::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn flipped_bits_are_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, b"some payload bytes");
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[i] ^= 1 << bit;
                assert!(!matches!(decode(&b), Decoded::Record(p, _) if p == b"some payload bytes"), "flip {i}:{bit}");
            }
        }
    }

    #[test]
    fn corrupt_record_in_the_middle_does_not_reach_the_end() {
        let mut buf = Vec::new();
        encode(&mut buf, b"first");
        encode(&mut buf, b"second");
        buf[HEADER_BYTES] ^= 0xff;
        assert!(matches!(decode(&buf), Decoded::Corrupt { reaches_end: false, .. }));
        let mut last = Vec::new();
        encode(&mut last, b"only");
        last[HEADER_BYTES] ^= 0xff;
        assert!(matches!(decode(&last), Decoded::Corrupt { reaches_end: true, .. }));
    }
}
