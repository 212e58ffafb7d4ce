//! The encoding inside every frame (wire and files): CBOR, in which a command's bytes are
//! one byte string. JSON, the first encoding, wrote them as a list of numbers — about 3.5
//! characters per byte to write, parse and checksum, and the main cost of replicating
//! quorum-queue messages. Files written by that version (the log, the vote) are still read:
//! a JSON frame starts with `{`, `"` or `[`, which no CBOR value this crate writes does
//! (those bytes would be a text or byte string with an 8-byte length, or a negative integer).
//! The wire needs no such fallback: both ends of a link run the same version.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Append `value`'s encoding to `out`.
pub fn encode_into<T: Serialize>(out: &mut Vec<u8>, value: &T) -> std::io::Result<()> {
    ciborium::into_writer(value, out).map_err(std::io::Error::other)
}

/// Append `value` to `out` as one framed record (`record::encode_with`'s framing), encoding
/// it in place: no intermediate buffer to grow and copy. Callers on hot paths pass a buffer
/// they reuse (see [`shrink_scratch`]), so its pages are not freshly faulted (and zeroed by
/// the kernel) for every Raft append or message — that was a fifth of a quorum-queue
/// cluster's CPU. On error `out` is left as it was.
pub fn encode_framed<T: Serialize>(out: &mut Vec<u8>, value: &T) -> std::io::Result<()> {
    let start = out.len();
    let mut encoded = Ok(());
    record::encode_with(out, |payload| encoded = encode_into(payload, value));
    if encoded.is_err() {
        out.truncate(start);
    }
    encoded
}

/// A reused encoding buffer keeps at most this much capacity between uses (one large
/// snapshot chunk or batch does not pin its size for the life of a link or log).
pub(crate) const SCRATCH_KEEP_BYTES: usize = 4 * 1024 * 1024;

/// Trim a reused encoding buffer back to [`SCRATCH_KEEP_BYTES`] after a large use.
pub(crate) fn shrink_scratch(buf: &mut Vec<u8>) {
    if buf.capacity() > SCRATCH_KEEP_BYTES {
        buf.clear();
        buf.shrink_to(SCRATCH_KEEP_BYTES);
    }
}

pub fn encode<T: Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_into(&mut out, value)?;
    Ok(out)
}

/// [`decode`]'s scratch space keeps at most this much per thread between uses: more than
/// one entry's command (`MAX_COMMAND_BYTES`, 256 KiB) with its framing.
const DECODE_SCRATCH_KEEP_BYTES: usize = 512 * 1024;

thread_local! {
    /// ciborium's scratch space for [`decode`], kept per thread and grown to the largest
    /// payload decoded (trimmed back to [`DECODE_SCRATCH_KEEP_BYTES`] after a larger one).
    static DECODE_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Decode one value (CBOR, or the JSON of earlier versions' files).
///
/// The scratch space ciborium reads strings through is at least the payload's size, so a
/// byte string (a command, [`bytes`]) comes in one piece and is copied once into a buffer
/// of its size. With ciborium's own 4 KiB scratch, the buffer grew 4 KiB at a time:
/// each command was reallocated and copied several times — on every node, for every entry
/// it received or recovered.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    match payload.first() {
        Some(b'{' | b'"' | b'[') => serde_json::from_slice(payload).map_err(|e| e.to_string()),
        _ => DECODE_SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => {
                if scratch.len() < payload.len() {
                    scratch.resize(payload.len(), 0);
                }
                let value = ciborium::de::from_reader_with_buffer(payload, &mut scratch[..]).map_err(|e| e.to_string());
                if scratch.len() > DECODE_SCRATCH_KEEP_BYTES {
                    scratch.truncate(DECODE_SCRATCH_KEEP_BYTES);
                    scratch.shrink_to_fit();
                }
                value
            }
            // A decode within a decode (no type here does that): a scratch of its own.
            Err(_) => ciborium::de::from_reader_with_buffer(payload, &mut vec![0; payload.len()][..])
                .map_err(|e| e.to_string()),
        }),
    }
}

/// A command: opaque bytes, encoded as one byte string. Still reads the list of numbers
/// JSON files of earlier versions hold. Shared bytes, because openraft clones entries to
/// replicate and to apply them: a quorum-queue entry carries up to 256 KiB of messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Command(pub ::bytes::Bytes);

/// How openraft's logs show a command: its size, not its bytes.
impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "command of {} bytes", self.0.len())
    }
}

impl Serialize for Command {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        bytes::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        bytes::deserialize(d).map(|v| Command(v.into()))
    }
}

/// `#[serde(with = "bytes")]` for a `Vec<u8>` field: a byte string, not a sequence.
pub mod bytes {
    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(V)
    }

    struct V;

    impl<'de> Visitor<'de> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_is_one_byte_string_and_old_json_still_reads() {
        let cmd = Command((0..=255u8).cycle().take(1000).collect::<Vec<u8>>().into());
        let cbor = encode(&cmd).unwrap();
        // 3 bytes of header (major type 2, 16-bit length), then the bytes themselves.
        assert_eq!(cbor.len(), 1003);
        assert_eq!(decode::<Command>(&cbor).unwrap(), cmd);
        // Longer than ciborium's own 4 KiB scratch, and than what the thread keeps of its
        // scratch; then a short one with the scratch trimmed.
        for n in [600 * 1024, 70_000, 5] {
            let big = (Command(vec![7u8; n].into()), Command(vec![9u8; n / 2].into()));
            assert_eq!(decode::<(Command, Command)>(&encode(&big).unwrap()).unwrap(), big);
        }
        let json = serde_json::to_vec(&vec![1u8, 2, 250]).unwrap();
        assert_eq!(decode::<Command>(&json).unwrap(), Command(vec![1, 2, 250].into()));
    }
}
