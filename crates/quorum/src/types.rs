//! The machine's inputs ([`Command`], stamped with [`Meta`]), outputs ([`Effect`]) and
//! settings ([`Config`]). Plain data: the broker maps its channels, consumers and messages
//! onto these, and they serialize with serde so they can travel in Raft log entries.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A cluster node (the `cluster` crate numbers nodes by a hash of their name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

/// A consumer: the node its channel lives on (so [`Command::NodeDown`] finds it) and a
/// number unique on that node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConsumerId {
    pub node: NodeId,
    pub id: u64,
}

/// A publishing channel (for confirms and for dropping resent duplicates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PublisherId {
    pub node: NodeId,
    pub id: u64,
}

/// One publish in confirm mode: the channel and its publish sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PublishId {
    pub publisher: PublisherId,
    pub seq: u64,
}

/// A message as the queue keeps it: opaque to the machine. The broker puts what it needs
/// to deliver or dead-letter it (exchange, routing key, raw properties, body) in `payload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    #[serde(with = "payload_bytes")]
    pub payload: Bytes,
    /// What counts against `max_length_bytes`: the body size, as RabbitMQ counts it.
    pub body_bytes: u64,
}

/// A message's identity in the queue: the log index of the `Enqueue` entry that brought it.
/// Unique (Raft indexes only grow) and the same on every replica.
pub type MsgId = u64;

/// Log metadata of an entry: its Raft index and the time the leader stamped on it when it
/// proposed the entry. The machine reads no clock; replicas agree on time because it is in
/// the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub index: u64,
    pub now_ms: u64,
}

/// What a replica applies, in log order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A publish routed to this queue. `publish` is set for a channel in confirm mode: the
    /// machine answers [`Effect::Confirmed`] (or [`Effect::Rejected`]) and drops a resent
    /// duplicate (a sequence number at or below the last one it took from that publisher).
    Enqueue {
        publish: Option<PublishId>,
        msg: Message,
        ttl_ms: Option<u64>,
    },
    /// basic.consume, or a change of an existing consumer's prefetch (basic.qos) or
    /// priority. `prefetch` 0 is unlimited, as in AMQP.
    Checkout {
        consumer: ConsumerId,
        prefetch: u32,
        priority: i32,
    },
    /// basic.cancel: no more deliveries; what the consumer holds stays checked out until it
    /// is settled, returned or discarded (or the consumer goes down).
    Cancel {
        consumer: ConsumerId,
    },
    /// basic.ack of these deliveries.
    Settle {
        consumer: ConsumerId,
        delivery_ids: Vec<u64>,
    },
    /// basic.nack / basic.reject with requeue: back to the queue, delivery count + 1.
    Return {
        consumer: ConsumerId,
        delivery_ids: Vec<u64>,
    },
    /// basic.nack / basic.reject without requeue: dead-lettered (reason `rejected`) or
    /// dropped.
    Discard {
        consumer: ConsumerId,
        delivery_ids: Vec<u64>,
    },
    /// basic.get. `settle`: no_ack (the message leaves the queue at once); otherwise it is
    /// checked out to `consumer` (a per-channel id) until settled, returned or discarded.
    Dequeue {
        consumer: ConsumerId,
        settle: bool,
    },
    /// The consumer's channel or connection is gone: everything it holds is returned
    /// (delivery count + 1 each) and the consumer removed.
    ConsumerDown {
        consumer: ConsumerId,
    },
    /// A node is unreachable: its consumers' messages are returned (delivery count + 1) and
    /// the consumers suspended until [`Command::NodeUp`] (or removed by `ConsumerDown`).
    NodeDown {
        node: NodeId,
    },
    NodeUp {
        node: NodeId,
    },
    /// The node left the cluster for good (forget_cluster_node): its consumers are removed
    /// (what they held is returned, delivery count + 1) and its publishers forgotten.
    ForgetNode {
        node: NodeId,
    },
    /// A publisher's channel closed: forget its sequence numbers.
    PublisherDown {
        publisher: PublisherId,
    },
    /// queue.purge: drop every message not checked out.
    Purge,
    /// The effective settings changed (declare, policy change). A proposer that confirms
    /// publishes at commit (see `QuorumQueue::may_refuse_publishes`) must not do so for
    /// publishes proposed while a `SetConfig` ahead of them is not applied yet.
    SetConfig(Config),
    /// At-least-once dead-lettering: the dead-letter targets confirmed these messages.
    DeadLetterSettled {
        msg_ids: Vec<MsgId>,
    },
    /// Nothing but the time in its [`Meta`]: the leader proposes it when a message at the
    /// head may have expired ([`crate::QuorumQueue::next_expiry_ms`]).
    Tick,
}

/// What the leader carries out after applying an entry (followers compute the same list
/// and ignore it, except [`Effect::ReleaseCursor`], which concerns each replica's own log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// Send this message to the consumer (basic.deliver).
    Deliver { consumer: ConsumerId, delivery: Delivery },
    /// The answer to [`Command::Dequeue`]: basic.get-ok (with the messages still ready
    /// after it) or basic.get-empty.
    Dequeued { consumer: ConsumerId, delivery: Option<Delivery>, ready: u64 },
    /// The publish is in the queue (or was already): confirm it. The entry is committed,
    /// so a majority has it on disk.
    Confirmed { publish: PublishId },
    /// x-overflow=reject-publish refused the message: nack a confirming publisher (a
    /// publisher without confirms loses it silently, as in RabbitMQ).
    Rejected { publish: Option<PublishId> },
    /// Route the message to the dead-letter exchange (the broker adds the x-death headers).
    /// With `at_least_once`, the queue keeps it until [`Command::DeadLetterSettled`].
    DeadLetter { reason: Reason, msg_id: MsgId, delivery_count: u32, msg: Message, at_least_once: bool },
    /// The message died for `reason` and no dead-letter exchange is configured: it is gone.
    Dropped { reason: Reason, msg_id: MsgId },
    /// queue.purge-ok.
    Purged { count: u64 },
    /// No live message needs a log entry at or below `index`: with a snapshot taken at or
    /// after `index`, the log up to `index` can be truncated.
    ReleaseCursor { index: u64 },
}

/// One delivery of a message to a consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Per consumer, increasing: what the consumer settles, returns or discards by.
    pub delivery_id: u64,
    pub msg_id: MsgId,
    /// The message was returned before (AMQP `redelivered`).
    pub redelivered: bool,
    /// Returns so far: RabbitMQ's `x-delivery-count` header (set when above 0).
    pub delivery_count: u32,
    pub msg: Message,
}

/// Why a message died (the `reason` of RabbitMQ's x-death header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Reason {
    Rejected,
    Expired,
    MaxLen,
    DeliveryLimit,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::MaxLen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// x-overflow for quorum queues: RabbitMQ's quorum queues have no `reject-publish-dlx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Overflow {
    #[default]
    DropHead,
    RejectPublish,
}

/// x-dead-letter-strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DeadLetterStrategy {
    #[default]
    AtMostOnce,
    /// Effective only with `overflow = RejectPublish` and a dead-letter exchange, as in
    /// RabbitMQ; otherwise the queue falls back to at-most-once.
    AtLeastOnce,
}

/// x-dead-letter-exchange and x-dead-letter-routing-key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterTarget {
    pub exchange: String,
    pub routing_key: Option<String>,
}

/// The queue's effective settings: its arguments combined with policies, as the broker
/// computes them. Every replica gets the same value through [`Command::SetConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// x-delivery-limit: a message returned more times than this is dead-lettered
    /// (reason `delivery_limit`) or dropped.
    pub delivery_limit: Option<u32>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter: Option<DeadLetterTarget>,
    pub dead_letter_strategy: DeadLetterStrategy,
    /// x-message-ttl.
    pub message_ttl_ms: Option<u64>,
    /// x-single-active-consumer (fixed at declare: the broker never changes it).
    pub single_active_consumer: bool,
    /// How far the release cursor must advance before [`Effect::ReleaseCursor`] is emitted
    /// again: fewer, larger log truncations.
    pub release_cursor_interval_entries: u64,
}

/// The default distance between two release cursors (RabbitMQ's quorum queues snapshot
/// every few thousand entries too).
pub const RELEASE_CURSOR_INTERVAL_ENTRIES: u64 = 4096;

impl Default for Config {
    fn default() -> Self {
        Config {
            delivery_limit: None,
            max_length: None,
            max_length_bytes: None,
            overflow: Overflow::default(),
            dead_letter: None,
            dead_letter_strategy: DeadLetterStrategy::default(),
            message_ttl_ms: None,
            single_active_consumer: false,
            release_cursor_interval_entries: RELEASE_CURSOR_INTERVAL_ENTRIES,
        }
    }
}

impl Config {
    /// Whether dead letters are kept until their targets confirm them: the strategy asks for
    /// it, and its preconditions hold (RabbitMQ falls back to at-most-once otherwise).
    pub fn at_least_once(&self) -> bool {
        self.dead_letter_strategy == DeadLetterStrategy::AtLeastOnce
            && self.overflow == Overflow::RejectPublish
            && self.dead_letter.is_some()
    }
}

/// `Bytes` as a byte string, without turning on the `bytes` crate's `serde` feature (which
/// would change, and rebuild, `bytes` for every crate in the workspace).
mod payload_bytes {
    use bytes::Bytes;
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::ser::Serializer;

    pub(super) fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Bytes;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(v))
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(v))
        }

        /// Self-describing formats without a byte type (JSON) write a sequence of numbers.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(b) = seq.next_element::<u8>()? {
                v.push(b);
            }
            Ok(Bytes::from(v))
        }
    }
}
