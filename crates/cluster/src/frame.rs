//! Record framing for the Raft files and the wire: `len: u32 LE | crc32c(payload): u32 LE |
//! payload[len]` — the same layout as `store::record`. It is repeated here (30 lines) rather
//! than depended on because `store` pulls in the broker and wire crates, which the Raft core
//! must not need.
//!
//! A reader tells "not all there yet" (a torn tail, or bytes still on the way) from "wrong" (a
//! checksum mismatch or an impossible length), so recovery can cut the first and refuse the
//! second.

/// Bytes of framing before each payload.
pub const HEADER_BYTES: usize = 8;

/// Largest payload one frame may carry. Snapshot chunks and append batches are far below it;
/// a larger length is taken as corruption rather than as an allocation request.
pub const PAYLOAD_MAX_BYTES: u32 = 64 * 1024 * 1024;

/// Append one framed record.
pub fn encode(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
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
    fn roundtrip_and_torn_tail_at_every_cut() {
        let mut buf = Vec::new();
        encode(&mut buf, b"hello");
        encode(&mut buf, b"world!");
        let Decoded::Record(p, n) = decode(&buf) else { panic!() };
        assert_eq!((p, n), (&b"hello"[..], 13));
        let Decoded::Record(p, m) = decode(&buf[n..]) else { panic!() };
        assert_eq!((p, m), (&b"world!"[..], 14));
        for cut in 0..13 {
            assert_eq!(decode(&buf[..cut]), Decoded::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, b"some payload bytes");
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[i] ^= 1 << bit;
                let ok = matches!(decode(&b), Decoded::Record(p, _) if p == b"some payload bytes");
                assert!(!ok, "flip {i}:{bit} went unnoticed");
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
