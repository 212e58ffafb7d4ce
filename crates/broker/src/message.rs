//! A published message as the broker keeps it: the routing facts plus the raw property
//! bytes and body exactly as the publisher sent them (never re-encoded).

use std::sync::Arc;

use bytes::Bytes;

#[derive(Debug)]
pub struct Message {
    /// Exchange the message was published to (reported in deliver/get-ok/return).
    pub exchange: String,
    pub routing_key: String,
    /// Raw content-header properties (flags + fields), forwarded byte-for-byte.
    pub properties: Bytes,
    pub body: Bytes,
    /// delivery_mode == 2.
    pub persistent: bool,
    pub priority: u8,
    /// The `expiration` property, parsed (ms).
    pub expiration_ms: Option<u64>,
}

impl Message {
    pub fn body_size(&self) -> u64 {
        self.body.len() as u64
    }

    /// A copy whose body and properties have buffers of their own. A body that arrived in
    /// one frame is a slice of its connection's read buffer (64 KiB, or 1 MiB with large
    /// frames) and keeps all of it alive: fine for a message delivered at once, not for
    /// one that waits in a backlog, where ten bytes could pin a megabyte that no memory
    /// accounting sees.
    pub fn detached(&self) -> Message {
        Message {
            exchange: self.exchange.clone(),
            routing_key: self.routing_key.clone(),
            properties: Bytes::copy_from_slice(&self.properties),
            body: Bytes::copy_from_slice(&self.body),
            persistent: self.persistent,
            priority: self.priority,
            expiration_ms: self.expiration_ms,
        }
    }
}

/// A message in one queue. Cloning is cheap: the message itself is shared by every queue
/// it was routed to.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    pub msg: Arc<Message>,
    /// Position in the queue, increasing with publish order; requeued messages go back to
    /// their position.
    pub seq: u64,
    pub redelivered: bool,
    /// When it expires in this queue (per-queue TTL or the message's expiration), in ms
    /// since the Unix epoch; 0 = never.
    pub expires_at_ms: u64,
    /// Deliveries so far (for x-delivery-limit). Durable queues record it for persistent
    /// messages when they are requeued, so it survives a restart.
    pub delivery_count: u32,
    /// Where the store wrote it, if it did (a persistent message in a durable queue, or
    /// a message paged out of RAM).
    pub disk: Option<DiskPos>,
}

/// A record's place in a queue's segment files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DiskPos {
    pub segment: u32,
    pub offset: u32,
}
