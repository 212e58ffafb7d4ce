//! Record framing (`len | crc32c | payload`): the shared `record` crate, which the Raft
//! files and the inter-node wire use too.

pub use record::*;
