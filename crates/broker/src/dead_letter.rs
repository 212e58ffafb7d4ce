//! Dead-lettering: rewriting a message's headers the way RabbitMQ does (`x-death`,
//! `x-first-death-*`, `x-last-death-*`) before it is republished to the queue's
//! dead-letter exchange.

use bytes::Bytes;
use wire::{BasicProperties, FieldTable, FieldValue};

use crate::message::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// basic.reject / basic.nack with requeue=false.
    Rejected,
    /// Per-message or per-queue TTL.
    Expired,
    /// x-max-length / x-max-length-bytes overflow.
    MaxLen,
    /// x-delivery-limit exceeded.
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

fn s(v: &str) -> FieldValue {
    FieldValue::LongStr(Bytes::copy_from_slice(v.as_bytes()))
}

/// The x-death entries of a message, oldest last (RabbitMQ keeps the most recent first).
pub fn deaths(props: &BasicProperties) -> Vec<FieldTable> {
    let Some(h) = &props.headers else { return Vec::new() };
    match h.get("x-death") {
        Some(FieldValue::Array(a)) => a
            .iter()
            .filter_map(|v| match v {
                FieldValue::Table(t) => Some(t.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether dead-lettering the (already rewritten) `props` into `queue` closes a cycle
/// RabbitMQ drops: `queue` appears among the deaths, and none of the deaths from the
/// most recent one back to that appearance was a rejection (a client's decision breaks
/// the cycle). As rabbit_dead_letter's `is_cycle`: a queue that dead-letters to itself
/// by expiry drops the message at once ("reaches the same queue twice").
pub fn is_cycle(props: &BasicProperties, queue: &str) -> bool {
    let ds = deaths(props);
    let Some(at) = ds.iter().position(|d| d.get("queue").and_then(FieldValue::as_str) == Some(queue)) else {
        return false;
    };
    ds[..=at].iter().all(|d| d.get("reason").and_then(FieldValue::as_str) != Some("rejected"))
}

/// Set the header `name` of `msg` to `value`, its other properties as they were: a quorum
/// queue's redelivery carries its delivery count so (`x-delivery-count`). Properties that do
/// not decode are left alone (the message goes out as it came in).
pub fn set_header(msg: &mut Message, name: &str, value: FieldValue) {
    let Ok(mut props) = BasicProperties::decode(&msg.properties) else { return };
    props.headers.get_or_insert_with(FieldTable::new).insert(name, value);
    let mut raw = Vec::new();
    props.encode(&mut raw);
    msg.properties = Bytes::from(raw);
}

/// Build the dead-lettered copy of `msg` that died in `queue` for `reason` at `now_ms`,
/// to be published to `dlx` with `routing_key` (x-dead-letter-routing-key, or the
/// original key when unset).
pub fn rewrite(
    msg: &Message,
    queue: &str,
    reason: Reason,
    now_ms: u64,
    dlx: &str,
    routing_key: Option<&str>,
) -> Message {
    let mut props = BasicProperties::decode(&msg.properties).unwrap_or_default();
    let mut headers = props.headers.take().unwrap_or_default();
    let mut ds = deaths(&BasicProperties { headers: Some(headers.clone()), ..BasicProperties::default() });
    let routing_keys = FieldValue::Array(vec![s(&msg.routing_key)]);
    let time = FieldValue::Timestamp(now_ms / 1000);
    let same = |d: &FieldTable| {
        d.get("queue").and_then(FieldValue::as_str) == Some(queue)
            && d.get("reason").and_then(FieldValue::as_str) == Some(reason.as_str())
    };
    let entry = match ds.iter().position(same) {
        Some(i) => {
            let mut d = ds.remove(i);
            let count = d.get("count").and_then(FieldValue::as_i64).unwrap_or(0) + 1;
            // RabbitMQ keeps `time` of the entry's first death; only `count` moves.
            d.insert("count", FieldValue::I64(count));
            d
        }
        None => {
            let mut d = FieldTable::new();
            d.insert("count", FieldValue::I64(1));
            d.insert("reason", s(reason.as_str()));
            d.insert("queue", s(queue));
            d.insert("time", time);
            d.insert("exchange", s(&msg.exchange));
            d.insert("routing-keys", routing_keys);
            if let Some(exp) = &props.expiration {
                d.insert("original-expiration", s(exp));
            }
            d
        }
    };
    ds.insert(0, entry);
    headers.insert("x-death", FieldValue::Array(ds.into_iter().map(FieldValue::Table).collect()));
    if headers.get("x-first-death-reason").is_none() {
        headers.insert("x-first-death-reason", s(reason.as_str()));
        headers.insert("x-first-death-queue", s(queue));
        headers.insert("x-first-death-exchange", s(&msg.exchange));
    }
    headers.insert("x-last-death-reason", s(reason.as_str()));
    headers.insert("x-last-death-queue", s(queue));
    headers.insert("x-last-death-exchange", s(&msg.exchange));
    props.headers = Some(headers);
    // RabbitMQ removes the expiration so the copy does not expire again by it.
    props.expiration = None;
    let mut raw = Vec::new();
    props.encode(&mut raw);
    Message {
        exchange: dlx.to_owned(),
        routing_key: routing_key.unwrap_or(&msg.routing_key).to_owned(),
        properties: Bytes::from(raw),
        body: msg.body.clone(),
        persistent: msg.persistent,
        priority: msg.priority,
        expiration_ms: None,
    }
}
