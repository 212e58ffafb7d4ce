//! Integration tests of the wire codec, one binary (fast to link) with a module per theme.

mod differential;
mod frames;
mod hostile;
mod properties;
mod roundtrip;
mod strategies;
mod tables;

use bytes::{Bytes, BytesMut};
use wire::frame::{Frame, decode_frame, encode_method};
use wire::{FieldTable, FieldValue, Method};

/// A table exercising every tag, with a nested table and array.
pub fn sample_table() -> FieldTable {
    let mut inner = FieldTable::new();
    inner.insert("publisher_confirms", FieldValue::Bool(true));
    inner.insert("consumer_cancel_notify", FieldValue::Bool(false));
    let mut t = FieldTable::new();
    t.insert("bool", FieldValue::Bool(true));
    t.insert("i8", FieldValue::I8(-5));
    t.insert("u8", FieldValue::U8(250));
    t.insert("i16", FieldValue::I16(-30000));
    t.insert("u16", FieldValue::U16(60000));
    t.insert("i32", FieldValue::I32(-2_000_000_000));
    t.insert("u32", FieldValue::U32(4_000_000_000));
    t.insert("i64", FieldValue::I64(-9_000_000_000_000));
    t.insert("u64", FieldValue::U64(u64::MAX - 1));
    t.insert("f32", FieldValue::F32(1.5));
    t.insert("f64", FieldValue::F64(-2.25));
    t.insert("decimal", FieldValue::Decimal(2, 12345));
    t.insert("longstr", FieldValue::LongStr(Bytes::from_static(b"hello \xff bytes")));
    t.insert(
        "array",
        FieldValue::Array(vec![
            FieldValue::I32(1),
            FieldValue::LongStr(Bytes::from_static(b"two")),
            FieldValue::Void,
            FieldValue::Array(vec![]),
        ]),
    );
    t.insert("timestamp", FieldValue::Timestamp(1_700_000_000));
    t.insert("capabilities", FieldValue::Table(inner));
    t.insert("void", FieldValue::Void);
    t.insert("bytes", FieldValue::ByteArray(Bytes::from_static(&[0, 1, 2, 255])));
    t
}

pub fn args(pairs: &[(&str, FieldValue)]) -> FieldTable {
    let mut t = FieldTable::new();
    for (k, v) in pairs {
        t.insert(*k, v.clone());
    }
    t
}

/// One hand-written example of every method variant.
pub fn all_methods() -> Vec<Method> {
    use Method::*;
    let s = |x: &str| x.to_owned();
    vec![
        ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: sample_table(),
            mechanisms: b"PLAIN AMQPLAIN".to_vec(),
            locales: b"en_US".to_vec(),
        },
        ConnectionStartOk {
            client_properties: args(&[("product", FieldValue::LongStr(Bytes::from_static(b"lapin")))]),
            mechanism: s("PLAIN"),
            response: b"\0guest\0guest".to_vec(),
            locale: s("en_US"),
        },
        ConnectionSecure { challenge: b"challenge".to_vec() },
        ConnectionSecureOk { response: b"response".to_vec() },
        ConnectionTune { channel_max: 2047, frame_max: 131072, heartbeat: 60 },
        ConnectionTuneOk { channel_max: 2047, frame_max: 131072, heartbeat: 60 },
        ConnectionOpen { virtual_host: s("/"), capabilities: s(""), insist: true },
        ConnectionOpenOk { known_hosts: s("") },
        ConnectionClose { reply_code: 320, reply_text: s("CONNECTION_FORCED - shutdown"), class_id: 0, method_id: 0 },
        ConnectionCloseOk,
        ConnectionBlocked { reason: s("low on memory") },
        ConnectionUnblocked,
        ConnectionUpdateSecret { new_secret: b"token".to_vec(), reason: s("refresh") },
        ConnectionUpdateSecretOk,
        ChannelOpen { out_of_band: s("") },
        ChannelOpenOk { channel_id: vec![] },
        ChannelFlow { active: true },
        ChannelFlowOk { active: false },
        ChannelClose { reply_code: 404, reply_text: s("NOT_FOUND - no queue 'q'"), class_id: 50, method_id: 10 },
        ChannelCloseOk,
        AccessRequest { realm: s("/data"), exclusive: true, passive: false, active: true, write: false, read: true },
        AccessRequestOk { ticket: 1 },
        ExchangeDeclare {
            ticket: 0,
            exchange: s("logs"),
            kind: s("topic"),
            passive: false,
            durable: true,
            auto_delete: false,
            internal: true,
            nowait: false,
            arguments: args(&[("alternate-exchange", FieldValue::LongStr(Bytes::from_static(b"ae")))]),
        },
        ExchangeDeclareOk,
        ExchangeDelete { ticket: 0, exchange: s("logs"), if_unused: true, nowait: true },
        ExchangeDeleteOk,
        ExchangeBind {
            ticket: 0,
            destination: s("dst"),
            source: s("src"),
            routing_key: s("a.*"),
            nowait: false,
            arguments: FieldTable::new(),
        },
        ExchangeBindOk,
        ExchangeUnbind {
            ticket: 0,
            destination: s("dst"),
            source: s("src"),
            routing_key: s("a.#"),
            nowait: true,
            arguments: args(&[("x-match", FieldValue::LongStr(Bytes::from_static(b"all")))]),
        },
        ExchangeUnbindOk,
        QueueDeclare {
            ticket: 0,
            queue: s("orders"),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: true,
            nowait: false,
            arguments: args(&[
                ("x-max-length", FieldValue::I64(10)),
                ("x-queue-type", FieldValue::LongStr(Bytes::from_static(b"classic"))),
            ]),
        },
        QueueDeclareOk { queue: s("amq.gen-abc"), message_count: 7, consumer_count: 2 },
        QueueBind {
            ticket: 0,
            queue: s("orders"),
            exchange: s("amq.direct"),
            routing_key: s("orders"),
            nowait: false,
            arguments: FieldTable::new(),
        },
        QueueBindOk,
        QueuePurge { ticket: 0, queue: s("orders"), nowait: true },
        QueuePurgeOk { message_count: 42 },
        QueueDelete { ticket: 0, queue: s("orders"), if_unused: true, if_empty: false, nowait: true },
        QueueDeleteOk { message_count: 3 },
        QueueUnbind {
            ticket: 0,
            queue: s("orders"),
            exchange: s("amq.direct"),
            routing_key: s("orders"),
            arguments: FieldTable::new(),
        },
        QueueUnbindOk,
        BasicQos { prefetch_size: 0, prefetch_count: 100, global: true },
        BasicQosOk,
        BasicConsume {
            ticket: 0,
            queue: s("orders"),
            consumer_tag: s("ctag-1"),
            no_local: false,
            no_ack: true,
            exclusive: true,
            nowait: false,
            arguments: args(&[("x-priority", FieldValue::I32(5))]),
        },
        BasicConsumeOk { consumer_tag: s("ctag-1") },
        BasicCancel { consumer_tag: s("ctag-1"), nowait: true },
        BasicCancelOk { consumer_tag: s("ctag-1") },
        BasicPublish {
            ticket: 0,
            exchange: s("amq.topic"),
            routing_key: s("stock.usd.nyse"),
            mandatory: true,
            immediate: false,
        },
        BasicReturn { reply_code: 312, reply_text: s("NO_ROUTE"), exchange: s("amq.topic"), routing_key: s("nowhere") },
        BasicDeliver {
            consumer_tag: s("ctag-1"),
            delivery_tag: u64::MAX,
            redelivered: true,
            exchange: s(""),
            routing_key: s("orders"),
        },
        BasicGet { ticket: 0, queue: s("orders"), no_ack: true },
        BasicGetOk { delivery_tag: 9, redelivered: false, exchange: s("x"), routing_key: s("rk"), message_count: 100 },
        BasicGetEmpty { cluster_id: s("") },
        BasicAck { delivery_tag: 12, multiple: true },
        BasicReject { delivery_tag: 13, requeue: false },
        BasicRecoverAsync { requeue: true },
        BasicRecover { requeue: false },
        BasicRecoverOk,
        BasicNack { delivery_tag: 14, multiple: false, requeue: true },
        ConfirmSelect { nowait: false },
        ConfirmSelectOk,
        TxSelect,
        TxSelectOk,
        TxCommit,
        TxCommitOk,
        TxRollback,
        TxRollbackOk,
    ]
}

pub fn method_frame(channel: u16, m: &Method) -> Vec<u8> {
    let mut out = Vec::new();
    encode_method(&mut out, channel, m);
    out
}

/// Decode exactly one frame from `bytes`, asserting it consumes everything.
pub fn decode_one(bytes: &[u8], frame_max: u32) -> Result<Frame, wire::WireError> {
    let mut buf = BytesMut::from(bytes);
    let frame = decode_frame(&mut buf, frame_max)?.expect("a whole frame");
    assert!(buf.is_empty(), "frame left {} byte(s)", buf.len());
    Ok(frame)
}

/// A method frame payload: class id, method id, raw arguments.
pub fn raw_method_frame(channel: u16, class_id: u16, method_id: u16, args: &[u8]) -> Vec<u8> {
    let mut out = vec![1];
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(4 + args.len() as u32).to_be_bytes());
    out.extend_from_slice(&class_id.to_be_bytes());
    out.extend_from_slice(&method_id.to_be_bytes());
    out.extend_from_slice(args);
    out.push(0xCE);
    out
}
