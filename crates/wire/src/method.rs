//! Every AMQP 0-9-1 method as RabbitMQ speaks it (amqp-rabbitmq-0.9.1 spec), including its
//! extensions: confirm.*, basic.nack, exchange.bind/unbind, connection.blocked/unblocked,
//! connection.update-secret.
//!
//! `ticket` fields are reserved (always 0) and kept only so encoding is exact.
//! Short strings are `String` (RabbitMQ rejects nothing here, but non-UTF-8 names are
//! refused with SYNTAX_ERROR); long strings that carry opaque bytes are `Vec<u8>`.

use crate::WireError;
use crate::codec::{Reader, bit, bits, put_longstr, put_shortstr, put_u8, put_u16, put_u32, put_u64};
use crate::reply::{FRAME_ERROR, NOT_IMPLEMENTED};
use crate::types::{FieldTable, encode_table, read_table};

#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    // connection (10)
    ConnectionStart {
        version_major: u8,
        version_minor: u8,
        server_properties: FieldTable,
        mechanisms: Vec<u8>,
        locales: Vec<u8>,
    },
    ConnectionStartOk {
        client_properties: FieldTable,
        mechanism: String,
        response: Vec<u8>,
        locale: String,
    },
    ConnectionSecure {
        challenge: Vec<u8>,
    },
    ConnectionSecureOk {
        response: Vec<u8>,
    },
    ConnectionTune {
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    },
    ConnectionTuneOk {
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    },
    ConnectionOpen {
        virtual_host: String,
        capabilities: String,
        insist: bool,
    },
    ConnectionOpenOk {
        known_hosts: String,
    },
    ConnectionClose {
        reply_code: u16,
        reply_text: String,
        class_id: u16,
        method_id: u16,
    },
    ConnectionCloseOk,
    ConnectionBlocked {
        reason: String,
    },
    ConnectionUnblocked,
    ConnectionUpdateSecret {
        new_secret: Vec<u8>,
        reason: String,
    },
    ConnectionUpdateSecretOk,

    // channel (20)
    ChannelOpen {
        out_of_band: String,
    },
    ChannelOpenOk {
        channel_id: Vec<u8>,
    },
    ChannelFlow {
        active: bool,
    },
    ChannelFlowOk {
        active: bool,
    },
    ChannelClose {
        reply_code: u16,
        reply_text: String,
        class_id: u16,
        method_id: u16,
    },
    ChannelCloseOk,

    // access (30), deprecated but still in the spec
    AccessRequest {
        realm: String,
        exclusive: bool,
        passive: bool,
        active: bool,
        write: bool,
        read: bool,
    },
    AccessRequestOk {
        ticket: u16,
    },

    // exchange (40)
    ExchangeDeclare {
        ticket: u16,
        exchange: String,
        kind: String,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        nowait: bool,
        arguments: FieldTable,
    },
    ExchangeDeclareOk,
    ExchangeDelete {
        ticket: u16,
        exchange: String,
        if_unused: bool,
        nowait: bool,
    },
    ExchangeDeleteOk,
    ExchangeBind {
        ticket: u16,
        destination: String,
        source: String,
        routing_key: String,
        nowait: bool,
        arguments: FieldTable,
    },
    ExchangeBindOk,
    ExchangeUnbind {
        ticket: u16,
        destination: String,
        source: String,
        routing_key: String,
        nowait: bool,
        arguments: FieldTable,
    },
    /// Method id 51, not 41 (RabbitMQ's spec file).
    ExchangeUnbindOk,

    // queue (50)
    QueueDeclare {
        ticket: u16,
        queue: String,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        nowait: bool,
        arguments: FieldTable,
    },
    QueueDeclareOk {
        queue: String,
        message_count: u32,
        consumer_count: u32,
    },
    QueueBind {
        ticket: u16,
        queue: String,
        exchange: String,
        routing_key: String,
        nowait: bool,
        arguments: FieldTable,
    },
    QueueBindOk,
    QueuePurge {
        ticket: u16,
        queue: String,
        nowait: bool,
    },
    QueuePurgeOk {
        message_count: u32,
    },
    QueueDelete {
        ticket: u16,
        queue: String,
        if_unused: bool,
        if_empty: bool,
        nowait: bool,
    },
    QueueDeleteOk {
        message_count: u32,
    },
    QueueUnbind {
        ticket: u16,
        queue: String,
        exchange: String,
        routing_key: String,
        arguments: FieldTable,
    },
    QueueUnbindOk,

    // basic (60)
    BasicQos {
        prefetch_size: u32,
        prefetch_count: u16,
        global: bool,
    },
    BasicQosOk,
    BasicConsume {
        ticket: u16,
        queue: String,
        consumer_tag: String,
        no_local: bool,
        no_ack: bool,
        exclusive: bool,
        nowait: bool,
        arguments: FieldTable,
    },
    BasicConsumeOk {
        consumer_tag: String,
    },
    BasicCancel {
        consumer_tag: String,
        nowait: bool,
    },
    BasicCancelOk {
        consumer_tag: String,
    },
    BasicPublish {
        ticket: u16,
        exchange: String,
        routing_key: String,
        mandatory: bool,
        immediate: bool,
    },
    BasicReturn {
        reply_code: u16,
        reply_text: String,
        exchange: String,
        routing_key: String,
    },
    BasicDeliver {
        consumer_tag: String,
        delivery_tag: u64,
        redelivered: bool,
        exchange: String,
        routing_key: String,
    },
    BasicGet {
        ticket: u16,
        queue: String,
        no_ack: bool,
    },
    BasicGetOk {
        delivery_tag: u64,
        redelivered: bool,
        exchange: String,
        routing_key: String,
        message_count: u32,
    },
    BasicGetEmpty {
        cluster_id: String,
    },
    BasicAck {
        delivery_tag: u64,
        multiple: bool,
    },
    BasicReject {
        delivery_tag: u64,
        requeue: bool,
    },
    BasicRecoverAsync {
        requeue: bool,
    },
    BasicRecover {
        requeue: bool,
    },
    BasicRecoverOk,
    BasicNack {
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    },

    // confirm (85)
    ConfirmSelect {
        nowait: bool,
    },
    ConfirmSelectOk,

    // tx (90)
    TxSelect,
    TxSelectOk,
    TxCommit,
    TxCommitOk,
    TxRollback,
    TxRollbackOk,
}

/// Reply code for a method frame whose (class id, method id) is not one of the methods
/// above (e.g. RabbitMQ's legacy basic.credit 60/200, or garbage).
///
/// What RabbitMQ does: `rabbit_command_assembler:analyze_frame/2` calls
/// `rabbit_framing_amqp_0_9_1:lookup_method_name/1`, which for an unknown pair does
/// `exit({unknown_method_id, Id})`. Nothing on that path catches an exit (the reader
/// only catches throws), so the connection process crashes and the socket is closed
/// without any connection.close: there is no RabbitMQ reply code to copy. We close
/// properly instead, with NOT_IMPLEMENTED (540), the spec's code for "the client tried
/// to work with some functionality that is not implemented in the server". It is a hard
/// error like every codec error, so the client sees the connection closed as with
/// RabbitMQ, but with a reason.
pub const UNKNOWN_METHOD_REPLY_CODE: u16 = NOT_IMPLEMENTED;

/// Reply code for method arguments that are truncated, have trailing bytes or are
/// otherwise undecodable. RabbitMQ's generated `decode_method_fields/2` matches the whole
/// argument binary exactly, and its fall-through clause calls
/// `rabbit_misc:frame_error(MethodName, Bin)`, i.e. FRAME_ERROR (501) "cannot decode".
/// Malformed field-table *contents* are SYNTAX_ERROR (502) instead (see types.rs).
pub const BAD_ARGUMENTS_REPLY_CODE: u16 = FRAME_ERROR;

/// RabbitMQ's dotted name of a method, e.g. `(60, 40)` → "basic.publish"; `None` for an
/// unknown pair. Useful for error texts about frames that failed to decode.
pub fn method_name(class_id: u16, method_id: u16) -> Option<&'static str> {
    Some(match (class_id, method_id) {
        (10, 10) => "connection.start",
        (10, 11) => "connection.start-ok",
        (10, 20) => "connection.secure",
        (10, 21) => "connection.secure-ok",
        (10, 30) => "connection.tune",
        (10, 31) => "connection.tune-ok",
        (10, 40) => "connection.open",
        (10, 41) => "connection.open-ok",
        (10, 50) => "connection.close",
        (10, 51) => "connection.close-ok",
        (10, 60) => "connection.blocked",
        (10, 61) => "connection.unblocked",
        (10, 70) => "connection.update-secret",
        (10, 71) => "connection.update-secret-ok",
        (20, 10) => "channel.open",
        (20, 11) => "channel.open-ok",
        (20, 20) => "channel.flow",
        (20, 21) => "channel.flow-ok",
        (20, 40) => "channel.close",
        (20, 41) => "channel.close-ok",
        (30, 10) => "access.request",
        (30, 11) => "access.request-ok",
        (40, 10) => "exchange.declare",
        (40, 11) => "exchange.declare-ok",
        (40, 20) => "exchange.delete",
        (40, 21) => "exchange.delete-ok",
        (40, 30) => "exchange.bind",
        (40, 31) => "exchange.bind-ok",
        (40, 40) => "exchange.unbind",
        (40, 51) => "exchange.unbind-ok",
        (50, 10) => "queue.declare",
        (50, 11) => "queue.declare-ok",
        (50, 20) => "queue.bind",
        (50, 21) => "queue.bind-ok",
        (50, 30) => "queue.purge",
        (50, 31) => "queue.purge-ok",
        (50, 40) => "queue.delete",
        (50, 41) => "queue.delete-ok",
        (50, 50) => "queue.unbind",
        (50, 51) => "queue.unbind-ok",
        (60, 10) => "basic.qos",
        (60, 11) => "basic.qos-ok",
        (60, 20) => "basic.consume",
        (60, 21) => "basic.consume-ok",
        (60, 30) => "basic.cancel",
        (60, 31) => "basic.cancel-ok",
        (60, 40) => "basic.publish",
        (60, 50) => "basic.return",
        (60, 60) => "basic.deliver",
        (60, 70) => "basic.get",
        (60, 71) => "basic.get-ok",
        (60, 72) => "basic.get-empty",
        (60, 80) => "basic.ack",
        (60, 90) => "basic.reject",
        (60, 100) => "basic.recover-async",
        (60, 110) => "basic.recover",
        (60, 111) => "basic.recover-ok",
        (60, 120) => "basic.nack",
        (85, 10) => "confirm.select",
        (85, 11) => "confirm.select-ok",
        (90, 10) => "tx.select",
        (90, 11) => "tx.select-ok",
        (90, 20) => "tx.commit",
        (90, 21) => "tx.commit-ok",
        (90, 30) => "tx.rollback",
        (90, 31) => "tx.rollback-ok",
        _ => return None,
    })
}

impl Method {
    /// (class_id, method_id) as on the wire.
    pub fn ids(&self) -> (u16, u16) {
        use Method::*;
        match self {
            ConnectionStart { .. } => (10, 10),
            ConnectionStartOk { .. } => (10, 11),
            ConnectionSecure { .. } => (10, 20),
            ConnectionSecureOk { .. } => (10, 21),
            ConnectionTune { .. } => (10, 30),
            ConnectionTuneOk { .. } => (10, 31),
            ConnectionOpen { .. } => (10, 40),
            ConnectionOpenOk { .. } => (10, 41),
            ConnectionClose { .. } => (10, 50),
            ConnectionCloseOk => (10, 51),
            ConnectionBlocked { .. } => (10, 60),
            ConnectionUnblocked => (10, 61),
            ConnectionUpdateSecret { .. } => (10, 70),
            ConnectionUpdateSecretOk => (10, 71),
            ChannelOpen { .. } => (20, 10),
            ChannelOpenOk { .. } => (20, 11),
            ChannelFlow { .. } => (20, 20),
            ChannelFlowOk { .. } => (20, 21),
            ChannelClose { .. } => (20, 40),
            ChannelCloseOk => (20, 41),
            AccessRequest { .. } => (30, 10),
            AccessRequestOk { .. } => (30, 11),
            ExchangeDeclare { .. } => (40, 10),
            ExchangeDeclareOk => (40, 11),
            ExchangeDelete { .. } => (40, 20),
            ExchangeDeleteOk => (40, 21),
            ExchangeBind { .. } => (40, 30),
            ExchangeBindOk => (40, 31),
            ExchangeUnbind { .. } => (40, 40),
            ExchangeUnbindOk => (40, 51),
            QueueDeclare { .. } => (50, 10),
            QueueDeclareOk { .. } => (50, 11),
            QueueBind { .. } => (50, 20),
            QueueBindOk => (50, 21),
            QueuePurge { .. } => (50, 30),
            QueuePurgeOk { .. } => (50, 31),
            QueueDelete { .. } => (50, 40),
            QueueDeleteOk { .. } => (50, 41),
            QueueUnbind { .. } => (50, 50),
            QueueUnbindOk => (50, 51),
            BasicQos { .. } => (60, 10),
            BasicQosOk => (60, 11),
            BasicConsume { .. } => (60, 20),
            BasicConsumeOk { .. } => (60, 21),
            BasicCancel { .. } => (60, 30),
            BasicCancelOk { .. } => (60, 31),
            BasicPublish { .. } => (60, 40),
            BasicReturn { .. } => (60, 50),
            BasicDeliver { .. } => (60, 60),
            BasicGet { .. } => (60, 70),
            BasicGetOk { .. } => (60, 71),
            BasicGetEmpty { .. } => (60, 72),
            BasicAck { .. } => (60, 80),
            BasicReject { .. } => (60, 90),
            BasicRecoverAsync { .. } => (60, 100),
            BasicRecover { .. } => (60, 110),
            BasicRecoverOk => (60, 111),
            BasicNack { .. } => (60, 120),
            ConfirmSelect { .. } => (85, 10),
            ConfirmSelectOk => (85, 11),
            TxSelect => (90, 10),
            TxSelectOk => (90, 11),
            TxCommit => (90, 20),
            TxCommitOk => (90, 21),
            TxRollback => (90, 30),
            TxRollbackOk => (90, 31),
        }
    }

    /// Whether a content header and body follow this method (basic.publish, deliver,
    /// get-ok, return).
    pub fn has_content(&self) -> bool {
        matches!(
            self,
            Method::BasicPublish { .. }
                | Method::BasicReturn { .. }
                | Method::BasicDeliver { .. }
                | Method::BasicGetOk { .. }
        )
    }

    /// RabbitMQ's dotted name, e.g. "queue.declare", for error texts and logs.
    pub fn name(&self) -> &'static str {
        let (class_id, method_id) = self.ids();
        // Every variant's ids are in the table; the fallback is unreachable.
        method_name(class_id, method_id).unwrap_or("unknown")
    }

    /// Whether this method is a request the peer must answer with a `-ok` method, as
    /// RabbitMQ's generated `is_method_synchronous/1` says (nowait requests are not).
    pub fn is_synchronous_request(&self) -> bool {
        use Method::*;
        match self {
            ConnectionStart { .. }
            | ConnectionSecure { .. }
            | ConnectionTune { .. }
            | ConnectionOpen { .. }
            | ConnectionClose { .. }
            | ConnectionUpdateSecret { .. }
            | ChannelOpen { .. }
            | ChannelFlow { .. }
            | ChannelClose { .. }
            | AccessRequest { .. }
            | QueueUnbind { .. }
            | BasicQos { .. }
            | BasicGet { .. }
            | BasicRecover { .. }
            | TxSelect
            | TxCommit
            | TxRollback => true,
            ExchangeDeclare { nowait, .. }
            | ExchangeDelete { nowait, .. }
            | ExchangeBind { nowait, .. }
            | ExchangeUnbind { nowait, .. }
            | QueueDeclare { nowait, .. }
            | QueueBind { nowait, .. }
            | QueuePurge { nowait, .. }
            | QueueDelete { nowait, .. }
            | BasicConsume { nowait, .. }
            | BasicCancel { nowait, .. }
            | ConfirmSelect { nowait } => !nowait,
            _ => false,
        }
    }

    /// Append the method frame payload (class id, method id, arguments), without frame header.
    pub fn encode_payload(&self, out: &mut Vec<u8>) {
        use Method::*;
        let (class_id, method_id) = self.ids();
        put_u16(out, class_id);
        put_u16(out, method_id);
        match self {
            ConnectionStart { version_major, version_minor, server_properties, mechanisms, locales } => {
                put_u8(out, *version_major);
                put_u8(out, *version_minor);
                encode_table(server_properties, out);
                put_longstr(out, mechanisms);
                put_longstr(out, locales);
            }
            ConnectionStartOk { client_properties, mechanism, response, locale } => {
                encode_table(client_properties, out);
                put_shortstr(out, mechanism);
                put_longstr(out, response);
                put_shortstr(out, locale);
            }
            ConnectionSecure { challenge } => put_longstr(out, challenge),
            ConnectionSecureOk { response } => put_longstr(out, response),
            ConnectionTune { channel_max, frame_max, heartbeat }
            | ConnectionTuneOk { channel_max, frame_max, heartbeat } => {
                put_u16(out, *channel_max);
                put_u32(out, *frame_max);
                put_u16(out, *heartbeat);
            }
            ConnectionOpen { virtual_host, capabilities, insist } => {
                put_shortstr(out, virtual_host);
                put_shortstr(out, capabilities);
                put_u8(out, bits(&[*insist]));
            }
            ConnectionOpenOk { known_hosts } => put_shortstr(out, known_hosts),
            ConnectionClose { reply_code, reply_text, class_id, method_id }
            | ChannelClose { reply_code, reply_text, class_id, method_id } => {
                put_u16(out, *reply_code);
                put_shortstr(out, reply_text);
                put_u16(out, *class_id);
                put_u16(out, *method_id);
            }
            ConnectionBlocked { reason } => put_shortstr(out, reason),
            ConnectionUpdateSecret { new_secret, reason } => {
                put_longstr(out, new_secret);
                put_shortstr(out, reason);
            }
            ChannelOpen { out_of_band } => put_shortstr(out, out_of_band),
            ChannelOpenOk { channel_id } => put_longstr(out, channel_id),
            ChannelFlow { active } | ChannelFlowOk { active } => put_u8(out, bits(&[*active])),
            AccessRequest { realm, exclusive, passive, active, write, read } => {
                put_shortstr(out, realm);
                put_u8(out, bits(&[*exclusive, *passive, *active, *write, *read]));
            }
            AccessRequestOk { ticket } => put_u16(out, *ticket),
            ExchangeDeclare { ticket, exchange, kind, passive, durable, auto_delete, internal, nowait, arguments } => {
                put_u16(out, *ticket);
                put_shortstr(out, exchange);
                put_shortstr(out, kind);
                put_u8(out, bits(&[*passive, *durable, *auto_delete, *internal, *nowait]));
                encode_table(arguments, out);
            }
            ExchangeDelete { ticket, exchange, if_unused, nowait } => {
                put_u16(out, *ticket);
                put_shortstr(out, exchange);
                put_u8(out, bits(&[*if_unused, *nowait]));
            }
            ExchangeBind { ticket, destination, source, routing_key, nowait, arguments }
            | ExchangeUnbind { ticket, destination, source, routing_key, nowait, arguments } => {
                put_u16(out, *ticket);
                put_shortstr(out, destination);
                put_shortstr(out, source);
                put_shortstr(out, routing_key);
                put_u8(out, bits(&[*nowait]));
                encode_table(arguments, out);
            }
            QueueDeclare { ticket, queue, passive, durable, exclusive, auto_delete, nowait, arguments } => {
                put_u16(out, *ticket);
                put_shortstr(out, queue);
                put_u8(out, bits(&[*passive, *durable, *exclusive, *auto_delete, *nowait]));
                encode_table(arguments, out);
            }
            QueueDeclareOk { queue, message_count, consumer_count } => {
                put_shortstr(out, queue);
                put_u32(out, *message_count);
                put_u32(out, *consumer_count);
            }
            QueueBind { ticket, queue, exchange, routing_key, nowait, arguments } => {
                put_u16(out, *ticket);
                put_shortstr(out, queue);
                put_shortstr(out, exchange);
                put_shortstr(out, routing_key);
                put_u8(out, bits(&[*nowait]));
                encode_table(arguments, out);
            }
            QueuePurge { ticket, queue, nowait } => {
                put_u16(out, *ticket);
                put_shortstr(out, queue);
                put_u8(out, bits(&[*nowait]));
            }
            QueuePurgeOk { message_count } | QueueDeleteOk { message_count } => put_u32(out, *message_count),
            QueueDelete { ticket, queue, if_unused, if_empty, nowait } => {
                put_u16(out, *ticket);
                put_shortstr(out, queue);
                put_u8(out, bits(&[*if_unused, *if_empty, *nowait]));
            }
            QueueUnbind { ticket, queue, exchange, routing_key, arguments } => {
                put_u16(out, *ticket);
                put_shortstr(out, queue);
                put_shortstr(out, exchange);
                put_shortstr(out, routing_key);
                encode_table(arguments, out);
            }
            BasicQos { prefetch_size, prefetch_count, global } => {
                put_u32(out, *prefetch_size);
                put_u16(out, *prefetch_count);
                put_u8(out, bits(&[*global]));
            }
            BasicConsume { ticket, queue, consumer_tag, no_local, no_ack, exclusive, nowait, arguments } => {
                put_u16(out, *ticket);
                put_shortstr(out, queue);
                put_shortstr(out, consumer_tag);
                put_u8(out, bits(&[*no_local, *no_ack, *exclusive, *nowait]));
                encode_table(arguments, out);
            }
            BasicConsumeOk { consumer_tag } | BasicCancelOk { consumer_tag } => put_shortstr(out, consumer_tag),
            BasicCancel { consumer_tag, nowait } => {
                put_shortstr(out, consumer_tag);
                put_u8(out, bits(&[*nowait]));
            }
            BasicPublish { ticket, exchange, routing_key, mandatory, immediate } => {
                put_u16(out, *ticket);
                put_shortstr(out, exchange);
                put_shortstr(out, routing_key);
                put_u8(out, bits(&[*mandatory, *immediate]));
            }
            BasicReturn { reply_code, reply_text, exchange, routing_key } => {
                put_return_args(out, *reply_code, reply_text, exchange, routing_key);
            }
            BasicDeliver { consumer_tag, delivery_tag, redelivered, exchange, routing_key } => {
                put_deliver_args(out, consumer_tag, *delivery_tag, *redelivered, exchange, routing_key);
            }
            BasicGet { ticket, queue, no_ack } => {
                put_u16(out, *ticket);
                put_shortstr(out, queue);
                put_u8(out, bits(&[*no_ack]));
            }
            BasicGetOk { delivery_tag, redelivered, exchange, routing_key, message_count } => {
                put_get_ok_args(out, *delivery_tag, *redelivered, exchange, routing_key, *message_count);
            }
            BasicGetEmpty { cluster_id } => put_shortstr(out, cluster_id),
            BasicAck { delivery_tag, multiple } => {
                put_u64(out, *delivery_tag);
                put_u8(out, bits(&[*multiple]));
            }
            BasicReject { delivery_tag, requeue } => {
                put_u64(out, *delivery_tag);
                put_u8(out, bits(&[*requeue]));
            }
            BasicRecoverAsync { requeue } | BasicRecover { requeue } => put_u8(out, bits(&[*requeue])),
            BasicNack { delivery_tag, multiple, requeue } => {
                put_u64(out, *delivery_tag);
                put_u8(out, bits(&[*multiple, *requeue]));
            }
            ConfirmSelect { nowait } => put_u8(out, bits(&[*nowait])),
            ConnectionCloseOk
            | ConnectionUnblocked
            | ConnectionUpdateSecretOk
            | ChannelCloseOk
            | ExchangeDeclareOk
            | ExchangeDeleteOk
            | ExchangeBindOk
            | ExchangeUnbindOk
            | QueueBindOk
            | QueueUnbindOk
            | BasicQosOk
            | BasicRecoverOk
            | ConfirmSelectOk
            | TxSelect
            | TxSelectOk
            | TxCommit
            | TxCommitOk
            | TxRollback
            | TxRollbackOk => {}
        }
    }

    /// Decode a method frame payload (starting at the class id).
    ///
    /// Errors, all carrying the class and method ids once they are known:
    /// - payload shorter than the 4 id bytes: FRAME_ERROR (RabbitMQ's `analyze_frame`
    ///   returns `error`, answered with frame_error "unknown_frame");
    /// - unknown (class, method): [`UNKNOWN_METHOD_REPLY_CODE`] (540);
    /// - truncated arguments or trailing bytes: [`BAD_ARGUMENTS_REPLY_CODE`] (501);
    /// - short string that is not UTF-8: FRAME_ERROR, as RabbitMQ's `assert_utf8`;
    /// - malformed field table contents: SYNTAX_ERROR (502).
    pub fn decode_payload(payload: &[u8]) -> Result<Method, WireError> {
        let mut r = Reader::new(payload, BAD_ARGUMENTS_REPLY_CODE);
        let (Ok(class_id), Ok(method_id)) = (r.u16(), r.u16()) else {
            return Err(WireError::frame(format!(
                "method frame payload of {} byte(s) is too short for class and method ids",
                payload.len()
            )));
        };
        let Some(name) = method_name(class_id, method_id) else {
            return Err(WireError::new(
                UNKNOWN_METHOD_REPLY_CODE,
                format!("unknown method: class id {class_id}, method id {method_id}"),
            )
            .with_method(class_id, method_id));
        };
        let method = decode_args(class_id, method_id, &mut r).map_err(|e| {
            let text = format!("cannot decode {name} arguments: {}", e.text);
            WireError::new(e.code, text).with_method(class_id, method_id)
        })?;
        if !r.is_empty() {
            return Err(WireError::new(
                BAD_ARGUMENTS_REPLY_CODE,
                format!("cannot decode {name} arguments: {} trailing byte(s)", r.remaining()),
            )
            .with_method(class_id, method_id));
        }
        Ok(method)
    }
}

/// basic.deliver arguments; shared with the hot-path frame encoder.
#[inline]
pub(crate) fn put_deliver_args(
    out: &mut Vec<u8>,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) {
    put_shortstr(out, consumer_tag);
    put_u64(out, delivery_tag);
    put_u8(out, u8::from(redelivered));
    put_shortstr(out, exchange);
    put_shortstr(out, routing_key);
}

/// basic.get-ok arguments; shared with the hot-path frame encoder.
#[inline]
pub(crate) fn put_get_ok_args(
    out: &mut Vec<u8>,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
    message_count: u32,
) {
    put_u64(out, delivery_tag);
    put_u8(out, u8::from(redelivered));
    put_shortstr(out, exchange);
    put_shortstr(out, routing_key);
    put_u32(out, message_count);
}

/// basic.return arguments; shared with the hot-path frame encoder.
#[inline]
pub(crate) fn put_return_args(out: &mut Vec<u8>, reply_code: u16, reply_text: &str, exchange: &str, routing_key: &str) {
    put_u16(out, reply_code);
    put_shortstr(out, reply_text);
    put_shortstr(out, exchange);
    put_shortstr(out, routing_key);
}

/// Arguments of a known (class, method). The caller checks for trailing bytes.
fn decode_args(class_id: u16, method_id: u16, r: &mut Reader<'_>) -> Result<Method, WireError> {
    use Method::*;
    // Owned short string (UTF-8 checked by the reader).
    fn s(r: &mut Reader<'_>) -> Result<String, WireError> {
        r.shortstr().map(str::to_owned)
    }
    fn l(r: &mut Reader<'_>) -> Result<Vec<u8>, WireError> {
        r.longstr().map(<[u8]>::to_vec)
    }
    fn t(r: &mut Reader<'_>) -> Result<FieldTable, WireError> {
        read_table(r, 1)
    }
    Ok(match (class_id, method_id) {
        (10, 10) => ConnectionStart {
            version_major: r.u8()?,
            version_minor: r.u8()?,
            server_properties: t(r)?,
            mechanisms: l(r)?,
            locales: l(r)?,
        },
        (10, 11) => ConnectionStartOk { client_properties: t(r)?, mechanism: s(r)?, response: l(r)?, locale: s(r)? },
        (10, 20) => ConnectionSecure { challenge: l(r)? },
        (10, 21) => ConnectionSecureOk { response: l(r)? },
        (10, 30) => ConnectionTune { channel_max: r.u16()?, frame_max: r.u32()?, heartbeat: r.u16()? },
        (10, 31) => ConnectionTuneOk { channel_max: r.u16()?, frame_max: r.u32()?, heartbeat: r.u16()? },
        (10, 40) => ConnectionOpen { virtual_host: s(r)?, capabilities: s(r)?, insist: bit(r.u8()?, 0) },
        (10, 41) => ConnectionOpenOk { known_hosts: s(r)? },
        (10, 50) => {
            ConnectionClose { reply_code: r.u16()?, reply_text: s(r)?, class_id: r.u16()?, method_id: r.u16()? }
        }
        (10, 51) => ConnectionCloseOk,
        (10, 60) => ConnectionBlocked { reason: s(r)? },
        (10, 61) => ConnectionUnblocked,
        (10, 70) => ConnectionUpdateSecret { new_secret: l(r)?, reason: s(r)? },
        (10, 71) => ConnectionUpdateSecretOk,
        (20, 10) => ChannelOpen { out_of_band: s(r)? },
        (20, 11) => ChannelOpenOk { channel_id: l(r)? },
        (20, 20) => ChannelFlow { active: bit(r.u8()?, 0) },
        (20, 21) => ChannelFlowOk { active: bit(r.u8()?, 0) },
        (20, 40) => ChannelClose { reply_code: r.u16()?, reply_text: s(r)?, class_id: r.u16()?, method_id: r.u16()? },
        (20, 41) => ChannelCloseOk,
        (30, 10) => {
            let realm = s(r)?;
            let b = r.u8()?;
            AccessRequest {
                realm,
                exclusive: bit(b, 0),
                passive: bit(b, 1),
                active: bit(b, 2),
                write: bit(b, 3),
                read: bit(b, 4),
            }
        }
        (30, 11) => AccessRequestOk { ticket: r.u16()? },
        (40, 10) => {
            let ticket = r.u16()?;
            let exchange = s(r)?;
            let kind = s(r)?;
            let b = r.u8()?;
            let arguments = t(r)?;
            ExchangeDeclare {
                ticket,
                exchange,
                kind,
                passive: bit(b, 0),
                durable: bit(b, 1),
                auto_delete: bit(b, 2),
                internal: bit(b, 3),
                nowait: bit(b, 4),
                arguments,
            }
        }
        (40, 11) => ExchangeDeclareOk,
        (40, 20) => {
            let ticket = r.u16()?;
            let exchange = s(r)?;
            let b = r.u8()?;
            ExchangeDelete { ticket, exchange, if_unused: bit(b, 0), nowait: bit(b, 1) }
        }
        (40, 21) => ExchangeDeleteOk,
        (40, 30) => ExchangeBind {
            ticket: r.u16()?,
            destination: s(r)?,
            source: s(r)?,
            routing_key: s(r)?,
            nowait: bit(r.u8()?, 0),
            arguments: t(r)?,
        },
        (40, 31) => ExchangeBindOk,
        (40, 40) => ExchangeUnbind {
            ticket: r.u16()?,
            destination: s(r)?,
            source: s(r)?,
            routing_key: s(r)?,
            nowait: bit(r.u8()?, 0),
            arguments: t(r)?,
        },
        (40, 51) => ExchangeUnbindOk,
        (50, 10) => {
            let ticket = r.u16()?;
            let queue = s(r)?;
            let b = r.u8()?;
            let arguments = t(r)?;
            QueueDeclare {
                ticket,
                queue,
                passive: bit(b, 0),
                durable: bit(b, 1),
                exclusive: bit(b, 2),
                auto_delete: bit(b, 3),
                nowait: bit(b, 4),
                arguments,
            }
        }
        (50, 11) => QueueDeclareOk { queue: s(r)?, message_count: r.u32()?, consumer_count: r.u32()? },
        (50, 20) => QueueBind {
            ticket: r.u16()?,
            queue: s(r)?,
            exchange: s(r)?,
            routing_key: s(r)?,
            nowait: bit(r.u8()?, 0),
            arguments: t(r)?,
        },
        (50, 21) => QueueBindOk,
        (50, 30) => QueuePurge { ticket: r.u16()?, queue: s(r)?, nowait: bit(r.u8()?, 0) },
        (50, 31) => QueuePurgeOk { message_count: r.u32()? },
        (50, 40) => {
            let ticket = r.u16()?;
            let queue = s(r)?;
            let b = r.u8()?;
            QueueDelete { ticket, queue, if_unused: bit(b, 0), if_empty: bit(b, 1), nowait: bit(b, 2) }
        }
        (50, 41) => QueueDeleteOk { message_count: r.u32()? },
        (50, 50) => {
            QueueUnbind { ticket: r.u16()?, queue: s(r)?, exchange: s(r)?, routing_key: s(r)?, arguments: t(r)? }
        }
        (50, 51) => QueueUnbindOk,
        (60, 10) => BasicQos { prefetch_size: r.u32()?, prefetch_count: r.u16()?, global: bit(r.u8()?, 0) },
        (60, 11) => BasicQosOk,
        (60, 20) => {
            let ticket = r.u16()?;
            let queue = s(r)?;
            let consumer_tag = s(r)?;
            let b = r.u8()?;
            let arguments = t(r)?;
            BasicConsume {
                ticket,
                queue,
                consumer_tag,
                no_local: bit(b, 0),
                no_ack: bit(b, 1),
                exclusive: bit(b, 2),
                nowait: bit(b, 3),
                arguments,
            }
        }
        (60, 21) => BasicConsumeOk { consumer_tag: s(r)? },
        (60, 30) => BasicCancel { consumer_tag: s(r)?, nowait: bit(r.u8()?, 0) },
        (60, 31) => BasicCancelOk { consumer_tag: s(r)? },
        (60, 40) => {
            // The hot path of every publisher: two short strings, no table.
            let ticket = r.u16()?;
            let exchange = s(r)?;
            let routing_key = s(r)?;
            let b = r.u8()?;
            BasicPublish { ticket, exchange, routing_key, mandatory: bit(b, 0), immediate: bit(b, 1) }
        }
        (60, 50) => BasicReturn { reply_code: r.u16()?, reply_text: s(r)?, exchange: s(r)?, routing_key: s(r)? },
        (60, 60) => BasicDeliver {
            consumer_tag: s(r)?,
            delivery_tag: r.u64()?,
            redelivered: bit(r.u8()?, 0),
            exchange: s(r)?,
            routing_key: s(r)?,
        },
        (60, 70) => BasicGet { ticket: r.u16()?, queue: s(r)?, no_ack: bit(r.u8()?, 0) },
        (60, 71) => BasicGetOk {
            delivery_tag: r.u64()?,
            redelivered: bit(r.u8()?, 0),
            exchange: s(r)?,
            routing_key: s(r)?,
            message_count: r.u32()?,
        },
        (60, 72) => BasicGetEmpty { cluster_id: s(r)? },
        (60, 80) => BasicAck { delivery_tag: r.u64()?, multiple: bit(r.u8()?, 0) },
        (60, 90) => BasicReject { delivery_tag: r.u64()?, requeue: bit(r.u8()?, 0) },
        (60, 100) => BasicRecoverAsync { requeue: bit(r.u8()?, 0) },
        (60, 110) => BasicRecover { requeue: bit(r.u8()?, 0) },
        (60, 111) => BasicRecoverOk,
        (60, 120) => {
            let delivery_tag = r.u64()?;
            let b = r.u8()?;
            BasicNack { delivery_tag, multiple: bit(b, 0), requeue: bit(b, 1) }
        }
        (85, 10) => ConfirmSelect { nowait: bit(r.u8()?, 0) },
        (85, 11) => ConfirmSelectOk,
        (90, 10) => TxSelect,
        (90, 11) => TxSelectOk,
        (90, 20) => TxCommit,
        (90, 21) => TxCommitOk,
        (90, 30) => TxRollback,
        (90, 31) => TxRollbackOk,
        // decode_payload checked the pair against `method_name`, which lists exactly the
        // pairs above; keep the error rather than a panic in case the two lists diverge.
        _ => return Err(WireError::new(UNKNOWN_METHOD_REPLY_CODE, "unknown method")),
    })
}
