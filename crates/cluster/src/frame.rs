//! Record framing for the Raft files and the wire (`len | crc32c | payload`): the shared
//! `record` crate, the message store's layout. A reader tells "not all there yet" (a torn
//! tail, or bytes still on the way) from "wrong" (a checksum mismatch or an impossible
//! length), so recovery can cut the first and refuse the second.

pub use record::*;
