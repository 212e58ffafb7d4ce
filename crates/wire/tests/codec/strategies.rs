//! proptest strategies for the codec's types.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use wire::{BasicProperties, FieldTable, FieldValue, Method};

/// Short strings: any Unicode, up to 40 chars (at most 160 bytes, under the 255 limit).
pub fn shortstr() -> impl Strategy<Value = String> {
    "\\PC{0,40}"
}

pub fn longstr() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..64)
}

/// Floats without NaN (NaN != NaN would fail equality, not the codec; NaN payloads are
/// checked byte-wise in tables.rs).
fn f32_no_nan() -> impl Strategy<Value = f32> {
    use proptest::num::f32::*;
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO | INFINITE
}

fn f64_no_nan() -> impl Strategy<Value = f64> {
    use proptest::num::f64::*;
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO | INFINITE
}

pub fn scalar_value() -> impl Strategy<Value = FieldValue> {
    prop_oneof![
        any::<bool>().prop_map(FieldValue::Bool),
        any::<i8>().prop_map(FieldValue::I8),
        any::<u8>().prop_map(FieldValue::U8),
        any::<i16>().prop_map(FieldValue::I16),
        any::<u16>().prop_map(FieldValue::U16),
        any::<i32>().prop_map(FieldValue::I32),
        any::<u32>().prop_map(FieldValue::U32),
        any::<i64>().prop_map(FieldValue::I64),
        any::<u64>().prop_map(FieldValue::U64),
        f32_no_nan().prop_map(FieldValue::F32),
        f64_no_nan().prop_map(FieldValue::F64),
        (any::<u8>(), any::<u32>()).prop_map(|(s, v)| FieldValue::Decimal(s, v)),
        longstr().prop_map(|b| FieldValue::LongStr(Bytes::from(b))),
        any::<u64>().prop_map(FieldValue::Timestamp),
        Just(FieldValue::Void),
        longstr().prop_map(|b| FieldValue::ByteArray(Bytes::from(b))),
    ]
}

/// Value trees up to 4 levels deep.
pub fn field_value() -> impl Strategy<Value = FieldValue> {
    scalar_value().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(FieldValue::Array),
            vec((shortstr(), inner), 0..6).prop_map(|entries| FieldValue::Table(FieldTable(entries))),
        ]
    })
}

/// Tables with arbitrary (possibly duplicate) keys, kept in order.
pub fn field_table() -> impl Strategy<Value = FieldTable> {
    vec((shortstr(), field_value()), 0..8).prop_map(FieldTable)
}

pub fn properties() -> impl Strategy<Value = BasicProperties> {
    let strings = (
        proptest::option::of(shortstr()),
        proptest::option::of(shortstr()),
        proptest::option::of(shortstr()),
        proptest::option::of(shortstr()),
        proptest::option::of(shortstr()),
        proptest::option::of(shortstr()),
        proptest::option::of(shortstr()),
        proptest::option::of(shortstr()),
        proptest::option::of(shortstr()),
        proptest::option::of(shortstr()),
    );
    let others = (
        proptest::option::of(field_table()),
        proptest::option::of(any::<u8>()),
        proptest::option::of(any::<u8>()),
        proptest::option::of(any::<u64>()),
    );
    (strings, others).prop_map(|((ct, ce, cid, rt, exp, mid, kind, uid, app, cluster), (headers, dm, prio, ts))| {
        BasicProperties {
            content_type: ct,
            content_encoding: ce,
            headers,
            delivery_mode: dm,
            priority: prio,
            correlation_id: cid,
            reply_to: rt,
            expiration: exp,
            message_id: mid,
            timestamp: ts,
            kind,
            user_id: uid,
            app_id: app,
            cluster_id: cluster,
        }
    })
}

/// Every method variant with arbitrary arguments.
pub fn method() -> impl Strategy<Value = Method> {
    use Method::*;
    let s = shortstr;
    let l = longstr;
    let t = field_table;
    let b = any::<bool>;
    let connection = prop_oneof![
        (any::<u8>(), any::<u8>(), t(), l(), l()).prop_map(
            |(version_major, version_minor, server_properties, mechanisms, locales)| ConnectionStart {
                version_major,
                version_minor,
                server_properties,
                mechanisms,
                locales
            }
        ),
        (t(), s(), l(), s()).prop_map(|(client_properties, mechanism, response, locale)| ConnectionStartOk {
            client_properties,
            mechanism,
            response,
            locale
        }),
        l().prop_map(|challenge| ConnectionSecure { challenge }),
        l().prop_map(|response| ConnectionSecureOk { response }),
        (any::<u16>(), any::<u32>(), any::<u16>()).prop_map(|(channel_max, frame_max, heartbeat)| ConnectionTune {
            channel_max,
            frame_max,
            heartbeat
        }),
        (any::<u16>(), any::<u32>(), any::<u16>()).prop_map(|(channel_max, frame_max, heartbeat)| ConnectionTuneOk {
            channel_max,
            frame_max,
            heartbeat
        }),
        (s(), s(), b()).prop_map(|(virtual_host, capabilities, insist)| ConnectionOpen {
            virtual_host,
            capabilities,
            insist
        }),
        s().prop_map(|known_hosts| ConnectionOpenOk { known_hosts }),
        (any::<u16>(), s(), any::<u16>(), any::<u16>()).prop_map(|(reply_code, reply_text, class_id, method_id)| {
            ConnectionClose { reply_code, reply_text, class_id, method_id }
        }),
        Just(ConnectionCloseOk),
        s().prop_map(|reason| ConnectionBlocked { reason }),
        Just(ConnectionUnblocked),
        (l(), s()).prop_map(|(new_secret, reason)| ConnectionUpdateSecret { new_secret, reason }),
        Just(ConnectionUpdateSecretOk),
    ];
    let channel = prop_oneof![
        s().prop_map(|out_of_band| ChannelOpen { out_of_band }),
        l().prop_map(|channel_id| ChannelOpenOk { channel_id }),
        b().prop_map(|active| ChannelFlow { active }),
        b().prop_map(|active| ChannelFlowOk { active }),
        (any::<u16>(), s(), any::<u16>(), any::<u16>()).prop_map(|(reply_code, reply_text, class_id, method_id)| {
            ChannelClose { reply_code, reply_text, class_id, method_id }
        }),
        Just(ChannelCloseOk),
        (s(), b(), b(), b(), b(), b()).prop_map(|(realm, exclusive, passive, active, write, read)| AccessRequest {
            realm,
            exclusive,
            passive,
            active,
            write,
            read
        }),
        any::<u16>().prop_map(|ticket| AccessRequestOk { ticket }),
    ];
    let exchange = prop_oneof![
        (any::<u16>(), s(), s(), (b(), b(), b(), b(), b()), t()).prop_map(
            |(ticket, exchange, kind, (passive, durable, auto_delete, internal, nowait), arguments)| ExchangeDeclare {
                ticket,
                exchange,
                kind,
                passive,
                durable,
                auto_delete,
                internal,
                nowait,
                arguments
            }
        ),
        Just(ExchangeDeclareOk),
        (any::<u16>(), s(), b(), b()).prop_map(|(ticket, exchange, if_unused, nowait)| ExchangeDelete {
            ticket,
            exchange,
            if_unused,
            nowait
        }),
        Just(ExchangeDeleteOk),
        (any::<u16>(), s(), s(), s(), b(), t()).prop_map(
            |(ticket, destination, source, routing_key, nowait, arguments)| ExchangeBind {
                ticket,
                destination,
                source,
                routing_key,
                nowait,
                arguments
            }
        ),
        Just(ExchangeBindOk),
        (any::<u16>(), s(), s(), s(), b(), t()).prop_map(
            |(ticket, destination, source, routing_key, nowait, arguments)| ExchangeUnbind {
                ticket,
                destination,
                source,
                routing_key,
                nowait,
                arguments
            }
        ),
        Just(ExchangeUnbindOk),
    ];
    let queue = prop_oneof![
        (any::<u16>(), s(), (b(), b(), b(), b(), b()), t()).prop_map(
            |(ticket, queue, (passive, durable, exclusive, auto_delete, nowait), arguments)| QueueDeclare {
                ticket,
                queue,
                passive,
                durable,
                exclusive,
                auto_delete,
                nowait,
                arguments
            }
        ),
        (s(), any::<u32>(), any::<u32>()).prop_map(|(queue, message_count, consumer_count)| QueueDeclareOk {
            queue,
            message_count,
            consumer_count
        }),
        (any::<u16>(), s(), s(), s(), b(), t()).prop_map(
            |(ticket, queue, exchange, routing_key, nowait, arguments)| QueueBind {
                ticket,
                queue,
                exchange,
                routing_key,
                nowait,
                arguments
            }
        ),
        Just(QueueBindOk),
        (any::<u16>(), s(), b()).prop_map(|(ticket, queue, nowait)| QueuePurge { ticket, queue, nowait }),
        any::<u32>().prop_map(|message_count| QueuePurgeOk { message_count }),
        (any::<u16>(), s(), b(), b(), b()).prop_map(|(ticket, queue, if_unused, if_empty, nowait)| QueueDelete {
            ticket,
            queue,
            if_unused,
            if_empty,
            nowait
        }),
        any::<u32>().prop_map(|message_count| QueueDeleteOk { message_count }),
        (any::<u16>(), s(), s(), s(), t()).prop_map(|(ticket, queue, exchange, routing_key, arguments)| {
            QueueUnbind { ticket, queue, exchange, routing_key, arguments }
        }),
        Just(QueueUnbindOk),
    ];
    let basic = prop_oneof![
        (any::<u32>(), any::<u16>(), b()).prop_map(|(prefetch_size, prefetch_count, global)| BasicQos {
            prefetch_size,
            prefetch_count,
            global
        }),
        Just(BasicQosOk),
        (any::<u16>(), s(), s(), (b(), b(), b(), b()), t()).prop_map(
            |(ticket, queue, consumer_tag, (no_local, no_ack, exclusive, nowait), arguments)| BasicConsume {
                ticket,
                queue,
                consumer_tag,
                no_local,
                no_ack,
                exclusive,
                nowait,
                arguments
            }
        ),
        s().prop_map(|consumer_tag| BasicConsumeOk { consumer_tag }),
        (s(), b()).prop_map(|(consumer_tag, nowait)| BasicCancel { consumer_tag, nowait }),
        s().prop_map(|consumer_tag| BasicCancelOk { consumer_tag }),
        (any::<u16>(), s(), s(), b(), b()).prop_map(|(ticket, exchange, routing_key, mandatory, immediate)| {
            BasicPublish { ticket, exchange, routing_key, mandatory, immediate }
        }),
        (any::<u16>(), s(), s(), s()).prop_map(|(reply_code, reply_text, exchange, routing_key)| BasicReturn {
            reply_code,
            reply_text,
            exchange,
            routing_key
        }),
        (s(), any::<u64>(), b(), s(), s()).prop_map(
            |(consumer_tag, delivery_tag, redelivered, exchange, routing_key)| BasicDeliver {
                consumer_tag,
                delivery_tag,
                redelivered,
                exchange,
                routing_key
            }
        ),
        (any::<u16>(), s(), b()).prop_map(|(ticket, queue, no_ack)| BasicGet { ticket, queue, no_ack }),
        (any::<u64>(), b(), s(), s(), any::<u32>()).prop_map(
            |(delivery_tag, redelivered, exchange, routing_key, message_count)| BasicGetOk {
                delivery_tag,
                redelivered,
                exchange,
                routing_key,
                message_count
            }
        ),
        s().prop_map(|cluster_id| BasicGetEmpty { cluster_id }),
        (any::<u64>(), b()).prop_map(|(delivery_tag, multiple)| BasicAck { delivery_tag, multiple }),
        (any::<u64>(), b()).prop_map(|(delivery_tag, requeue)| BasicReject { delivery_tag, requeue }),
        b().prop_map(|requeue| BasicRecoverAsync { requeue }),
        b().prop_map(|requeue| BasicRecover { requeue }),
        Just(BasicRecoverOk),
        (any::<u64>(), b(), b()).prop_map(|(delivery_tag, multiple, requeue)| BasicNack {
            delivery_tag,
            multiple,
            requeue
        }),
    ];
    let rest = prop_oneof![
        b().prop_map(|nowait| ConfirmSelect { nowait }),
        Just(ConfirmSelectOk),
        Just(TxSelect),
        Just(TxSelectOk),
        Just(TxCommit),
        Just(TxCommitOk),
        Just(TxRollback),
        Just(TxRollbackOk),
    ];
    // Weighted by variant count so every variant is about equally likely.
    prop_oneof![14 => connection, 8 => channel, 8 => exchange, 10 => queue, 18 => basic, 8 => rest]
}
