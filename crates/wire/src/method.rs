//! Every AMQP 0-9-1 method as RabbitMQ speaks it (amqp-rabbitmq-0.9.1 spec), including its
//! extensions: confirm.*, basic.nack, exchange.bind/unbind, connection.blocked/unblocked,
//! connection.update-secret.
//!
//! `ticket` fields are reserved (always 0) and kept only so encoding is exact.
//! Short strings are `String` (RabbitMQ rejects nothing here, but non-UTF-8 names are
//! refused with SYNTAX_ERROR); long strings that carry opaque bytes are `Vec<u8>`.

use crate::types::FieldTable;

#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    // connection (10)
    ConnectionStart { version_major: u8, version_minor: u8, server_properties: FieldTable, mechanisms: Vec<u8>, locales: Vec<u8> },
    ConnectionStartOk { client_properties: FieldTable, mechanism: String, response: Vec<u8>, locale: String },
    ConnectionSecure { challenge: Vec<u8> },
    ConnectionSecureOk { response: Vec<u8> },
    ConnectionTune { channel_max: u16, frame_max: u32, heartbeat: u16 },
    ConnectionTuneOk { channel_max: u16, frame_max: u32, heartbeat: u16 },
    ConnectionOpen { virtual_host: String, capabilities: String, insist: bool },
    ConnectionOpenOk { known_hosts: String },
    ConnectionClose { reply_code: u16, reply_text: String, class_id: u16, method_id: u16 },
    ConnectionCloseOk,
    ConnectionBlocked { reason: String },
    ConnectionUnblocked,
    ConnectionUpdateSecret { new_secret: Vec<u8>, reason: String },
    ConnectionUpdateSecretOk,

    // channel (20)
    ChannelOpen { out_of_band: String },
    ChannelOpenOk { channel_id: Vec<u8> },
    ChannelFlow { active: bool },
    ChannelFlowOk { active: bool },
    ChannelClose { reply_code: u16, reply_text: String, class_id: u16, method_id: u16 },
    ChannelCloseOk,

    // access (30), deprecated but still in the spec
    AccessRequest { realm: String, exclusive: bool, passive: bool, active: bool, write: bool, read: bool },
    AccessRequestOk { ticket: u16 },

    // exchange (40)
    ExchangeDeclare { ticket: u16, exchange: String, kind: String, passive: bool, durable: bool, auto_delete: bool, internal: bool, nowait: bool, arguments: FieldTable },
    ExchangeDeclareOk,
    ExchangeDelete { ticket: u16, exchange: String, if_unused: bool, nowait: bool },
    ExchangeDeleteOk,
    ExchangeBind { ticket: u16, destination: String, source: String, routing_key: String, nowait: bool, arguments: FieldTable },
    ExchangeBindOk,
    ExchangeUnbind { ticket: u16, destination: String, source: String, routing_key: String, nowait: bool, arguments: FieldTable },
    /// Method id 51, not 41 (RabbitMQ's spec file).
    ExchangeUnbindOk,

    // queue (50)
    QueueDeclare { ticket: u16, queue: String, passive: bool, durable: bool, exclusive: bool, auto_delete: bool, nowait: bool, arguments: FieldTable },
    QueueDeclareOk { queue: String, message_count: u32, consumer_count: u32 },
    QueueBind { ticket: u16, queue: String, exchange: String, routing_key: String, nowait: bool, arguments: FieldTable },
    QueueBindOk,
    QueuePurge { ticket: u16, queue: String, nowait: bool },
    QueuePurgeOk { message_count: u32 },
    QueueDelete { ticket: u16, queue: String, if_unused: bool, if_empty: bool, nowait: bool },
    QueueDeleteOk { message_count: u32 },
    QueueUnbind { ticket: u16, queue: String, exchange: String, routing_key: String, arguments: FieldTable },
    QueueUnbindOk,

    // basic (60)
    BasicQos { prefetch_size: u32, prefetch_count: u16, global: bool },
    BasicQosOk,
    BasicConsume { ticket: u16, queue: String, consumer_tag: String, no_local: bool, no_ack: bool, exclusive: bool, nowait: bool, arguments: FieldTable },
    BasicConsumeOk { consumer_tag: String },
    BasicCancel { consumer_tag: String, nowait: bool },
    BasicCancelOk { consumer_tag: String },
    BasicPublish { ticket: u16, exchange: String, routing_key: String, mandatory: bool, immediate: bool },
    BasicReturn { reply_code: u16, reply_text: String, exchange: String, routing_key: String },
    BasicDeliver { consumer_tag: String, delivery_tag: u64, redelivered: bool, exchange: String, routing_key: String },
    BasicGet { ticket: u16, queue: String, no_ack: bool },
    BasicGetOk { delivery_tag: u64, redelivered: bool, exchange: String, routing_key: String, message_count: u32 },
    BasicGetEmpty { cluster_id: String },
    BasicAck { delivery_tag: u64, multiple: bool },
    BasicReject { delivery_tag: u64, requeue: bool },
    BasicRecoverAsync { requeue: bool },
    BasicRecover { requeue: bool },
    BasicRecoverOk,
    BasicNack { delivery_tag: u64, multiple: bool, requeue: bool },

    // confirm (85)
    ConfirmSelect { nowait: bool },
    ConfirmSelectOk,

    // tx (90)
    TxSelect,
    TxSelectOk,
    TxCommit,
    TxCommitOk,
    TxRollback,
    TxRollbackOk,
}

impl Method {
    /// (class_id, method_id) as on the wire.
    pub fn ids(&self) -> (u16, u16) {
        todo!("wire helper fills this in")
    }

    /// Whether a content header and body follow this method (basic.publish, deliver,
    /// get-ok, return).
    pub fn has_content(&self) -> bool {
        matches!(self, Method::BasicPublish { .. } | Method::BasicReturn { .. } | Method::BasicDeliver { .. } | Method::BasicGetOk { .. })
    }

    /// RabbitMQ's dotted name, e.g. "queue.declare", for error texts and logs.
    pub fn name(&self) -> &'static str {
        todo!("wire helper fills this in")
    }

    /// Append the method frame payload (class id, method id, arguments), without frame header.
    pub fn encode_payload(&self, out: &mut Vec<u8>) {
        let _ = out;
        todo!("wire helper fills this in")
    }

    /// Decode a method frame payload (starting at the class id).
    /// Unknown class or method → NOT_IMPLEMENTED/COMMAND_INVALID as RabbitMQ does;
    /// truncated or malformed arguments → SYNTAX_ERROR (or FRAME_ERROR as RabbitMQ does).
    pub fn decode_payload(payload: &[u8]) -> Result<Method, crate::WireError> {
        let _ = payload;
        todo!("wire helper fills this in")
    }
}
