//! RabbitMQ's JSON for queues, exchanges, bindings and messages (operate.md §1.5), and
//! the conversions they need (properties, properties keys, timestamps).

use access::json_args::{json_to_table, table_to_json};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use broker::args::{Overflow, QueueType};
use broker::exchange::{Binding, Destination};
use broker::policy::PolicyDefinition;
use broker::{Exchange, Queue, QueuedMessage};
use serde_json::{Map, Value, json};
use wire::{BasicProperties, FieldTable};

use crate::error::{ApiError, ApiResult};
use crate::stats::RateDb;

fn rate() -> Value {
    json!({"rate": 0.0})
}

fn queue_type(t: QueueType) -> &'static str {
    match t {
        QueueType::Classic => "classic",
        QueueType::Quorum => "quorum",
    }
}

fn policy_definition_json(d: &PolicyDefinition) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    };
    put("message-ttl", d.message_ttl.map(Value::from));
    put("expires", d.expires.map(Value::from));
    put("max-length", d.max_length.map(Value::from));
    put("max-length-bytes", d.max_length_bytes.map(Value::from));
    put(
        "overflow",
        d.overflow.map(|o| {
            Value::from(match o {
                Overflow::DropHead => "drop-head",
                Overflow::RejectPublish => "reject-publish",
                Overflow::RejectPublishDlx => "reject-publish-dlx",
            })
        }),
    );
    put("dead-letter-exchange", d.dead_letter_exchange.clone().map(Value::from));
    put("dead-letter-routing-key", d.dead_letter_routing_key.clone().map(Value::from));
    put("delivery-limit", d.delivery_limit.map(Value::from));
    put("consumer-timeout", d.consumer_timeout.map(Value::from));
    put("alternate-exchange", d.alternate_exchange.clone().map(Value::from));
    put("dead-letter-strategy", d.dead_letter_strategy.map(|s| Value::from(s.name())));
    put(
        "queue-leader-locator",
        d.queue_leader_locator.map(|l| {
            Value::from(match l {
                broker::args::LeaderLocator::ClientLocal => "client-local",
                broker::args::LeaderLocator::Balanced => "balanced",
            })
        }),
    );
    Value::Object(m)
}

/// `ms` since the Unix epoch as RFC 3339 with milliseconds, UTC ("2024-05-01T12:00:00.000+00:00").
pub(super) fn rfc3339_ms(ms: u64) -> String {
    let (days, rem) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    let (y, m, d) = crate::routes::civil_from_days(days);
    let (h, mi, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}+00:00")
}

pub(super) fn queue_json(q: &Queue, node: &str, db: &RateDb) -> Value {
    queue_json_ranged(q, node, db, None, None)
}

/// A queue's JSON with `samples` for the message rates and lengths over the ranges asked
/// for (`msg_rates_age/_incr`, `lengths_age/_incr`), as the single-queue GET gives them.
pub(super) fn queue_json_ranged(
    q: &Queue,
    node: &str,
    db: &RateDb,
    msg_range: Option<crate::stats::Range>,
    lengths_range: Option<crate::stats::Range>,
) -> Value {
    let s = q.stats();
    let messages = s.messages_ready + s.messages_unacked;
    let policy = q.policy_name();
    let op = q.operator_policy_name();
    let utilisation = crate::stats::queue_utilisation(db, &q.vhost, &q.name, s.consumers);
    let effective = if policy.is_some() || op.is_some() {
        policy_definition_json(&q.effective_policy_definition())
    } else {
        json!({})
    };
    let mut j = json!({
        "name": q.name,
        "vhost": q.vhost,
        "type": queue_type(q.declared_args.queue_type),
        "durable": q.options.durable,
        "auto_delete": q.options.auto_delete,
        "exclusive": q.options.exclusive,
        "arguments": table_to_json(&q.options.arguments),
        "node": node,
        "state": if q.in_flow() { "flow" } else { "running" },
        "consumers": s.consumers,
        "consumer_capacity": utilisation,
        "consumer_utilisation": utilisation,
        "exclusive_consumer_tag": Value::Null,
        "policy": policy,
        "operator_policy": op,
        "effective_policy_definition": effective,
        "messages": messages,
        "messages_details": rate(),
        "messages_ready": s.messages_ready,
        "messages_ready_details": rate(),
        "messages_unacknowledged": s.messages_unacked,
        "messages_unacknowledged_details": rate(),
        "messages_ram": s.messages_ready + s.messages_unacked,
        "messages_persistent": 0,
        "message_bytes": s.ready_bytes + s.unacked_bytes,
        "message_bytes_ready": s.ready_bytes,
        "message_bytes_unacknowledged": s.unacked_bytes,
        "message_bytes_ram": s.ready_bytes + s.unacked_bytes,
        "message_bytes_persistent": 0,
        "head_message_timestamp": Value::Null,
        "idle_since": rfc3339_ms(q.last_used_ms()),
        "memory": s.ready_bytes + s.unacked_bytes,
        "message_stats": crate::stats::queue_message_stats(db, q, msg_range),
    });
    if let (Some(p), Value::Object(m)) = (q.placement(), &mut j) {
        // RabbitMQ's fields for a quorum queue; its `node` is the leader's too. A classic
        // queue of another node has only its `node`: its home.
        if let Some(leader) = &p.leader {
            m.insert("node".into(), json!(leader));
        }
        if !p.home_only {
            m.insert("leader".into(), json!(p.leader));
            m.insert("members".into(), json!(p.members));
            m.insert("online".into(), json!(p.online));
            m.insert("messages_dlx".into(), json!(s.dead_letters));
            m.insert("message_bytes_dlx".into(), json!(s.dead_letter_bytes));
        }
    }
    if let Value::Object(m) = &mut j {
        let lengths = [messages, s.messages_ready, s.messages_unacked];
        m.extend(crate::stats::queue_length_details(db, &q.vhost, &q.name, lengths, lengths_range));
    }
    j
}

pub(super) fn exchange_json(e: &Exchange, db: &RateDb) -> Value {
    json!({
        "name": e.name,
        "vhost": e.vhost,
        "type": e.options.type_name(),
        "durable": e.options.durable,
        "auto_delete": e.options.auto_delete,
        "internal": e.options.internal,
        "arguments": table_to_json(&e.options.arguments),
        "policy": e.policy_name(),
        "user_who_performed_action": "",
        "message_stats": crate::stats::exchange_message_stats(db, e, None),
    })
}

/// Bytes RabbitMQ's quote_plus leaves as they are; everything else (`~` included, which
/// separates a key's parts) is %-escaped.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

/// Percent-encode `s` as one path segment.
pub(super) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// 32-bit FNV-1a: a stable hash of the arguments (RabbitMQ uses erlang:phash2; the key is
/// opaque to clients, which only echo it back).
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// A binding's `properties_key`, built as RabbitMQ builds it: `~` for an empty key without
/// arguments, the escaped routing key without arguments, else key `~` hash of arguments.
pub(super) fn properties_key(routing_key: &str, args: &FieldTable) -> String {
    if args.is_empty() {
        return if routing_key.is_empty() { "~".to_owned() } else { encode_segment(routing_key) };
    }
    let canonical = Value::Object(table_to_json(args)).to_string();
    let hash = URL_SAFE_NO_PAD.encode(fnv1a32(canonical.as_bytes()).to_be_bytes());
    format!("{}~{hash}", encode_segment(routing_key))
}

pub(super) fn binding_json(vhost: &str, source: &str, b: &Binding) -> Value {
    let dest_type = if b.destination.is_queue() { "queue" } else { "exchange" };
    json!({
        "source": source,
        "vhost": vhost,
        "destination": b.destination.name(),
        "destination_type": dest_type,
        "routing_key": b.routing_key,
        "arguments": table_to_json(&b.arguments),
        "properties_key": properties_key(&b.routing_key, &b.arguments),
    })
}

/// The default exchange's implicit binding to `q` (RabbitMQ lists it too).
pub(super) fn default_binding(q: &std::sync::Arc<Queue>) -> Binding {
    Binding { destination: Destination::Queue(q.clone()), routing_key: q.name.clone(), arguments: FieldTable::new() }
}

/// Message properties as RabbitMQ's API shows them: only those present.
pub(super) fn properties_json(p: &BasicProperties) -> Value {
    let mut m = Map::new();
    let mut s = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), Value::from(v.as_str()));
        }
    };
    s("content_type", &p.content_type);
    s("content_encoding", &p.content_encoding);
    s("correlation_id", &p.correlation_id);
    s("reply_to", &p.reply_to);
    s("expiration", &p.expiration);
    s("message_id", &p.message_id);
    s("type", &p.kind);
    s("user_id", &p.user_id);
    s("app_id", &p.app_id);
    s("cluster_id", &p.cluster_id);
    if let Some(h) = &p.headers {
        m.insert("headers".into(), Value::Object(table_to_json(h)));
    }
    if let Some(d) = p.delivery_mode {
        m.insert("delivery_mode".into(), d.into());
    }
    if let Some(pr) = p.priority {
        m.insert("priority".into(), pr.into());
    }
    if let Some(t) = p.timestamp {
        m.insert("timestamp".into(), t.into());
    }
    Value::Object(m)
}

/// Properties from the API's JSON (unknown keys are ignored, as RabbitMQ does).
pub(super) fn properties_from_json(v: &Value) -> ApiResult<BasicProperties> {
    let Some(m) = v.as_object() else {
        return if v.is_null() { Ok(BasicProperties::default()) } else { Err(bad("properties must be an object")) };
    };
    let s = |k: &str| -> ApiResult<Option<String>> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            // RabbitMQ accepts a number for expiration and the like: keep its text.
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(bad(&format!("property {k} must be a string"))),
        }
    };
    let int = |k: &str, max: u64| -> ApiResult<Option<u64>> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())) {
                Some(n) if n <= max => Ok(Some(n)),
                _ => Err(bad(&format!("property {k} must be an integer up to {max}"))),
            },
        }
    };
    let headers = match m.get("headers") {
        None | Some(Value::Null) => None,
        Some(Value::Object(h)) => Some(json_to_table(h).map_err(|e| bad(&e))?),
        Some(_) => return Err(bad("property headers must be an object")),
    };
    Ok(BasicProperties {
        content_type: s("content_type")?,
        content_encoding: s("content_encoding")?,
        headers,
        delivery_mode: int("delivery_mode", 255)?.map(|n| n as u8),
        priority: int("priority", 255)?.map(|n| n as u8),
        correlation_id: s("correlation_id")?,
        reply_to: s("reply_to")?,
        expiration: s("expiration")?,
        message_id: s("message_id")?,
        timestamp: int("timestamp", u64::MAX)?,
        kind: s("type")?,
        user_id: s("user_id")?,
        app_id: s("app_id")?,
        cluster_id: s("cluster_id")?,
    })
}

fn bad(reason: &str) -> ApiError {
    ApiError::bad_request(reason.to_owned())
}

/// How a reply carries payloads (`encoding` of /get and /peek).
#[derive(Clone, Copy)]
pub(super) enum Encoding {
    /// A string when the payload is UTF-8, else base64.
    Auto,
    Base64,
}

impl Encoding {
    pub(super) fn parse(s: Option<&str>) -> ApiResult<Encoding> {
        match s {
            None | Some("auto") => Ok(Encoding::Auto),
            Some("base64") => Ok(Encoding::Base64),
            Some(other) => Err(bad(&format!("Unsupported encoding '{other}': use auto or base64"))),
        }
    }
}

/// A message in /get's reply shape; `truncate` caps the payload's bytes.
pub(super) fn message_json(m: &QueuedMessage, message_count: u64, enc: Encoding, truncate: Option<usize>) -> Value {
    let body = &m.msg.body[..];
    let shown = &body[..truncate.map_or(body.len(), |t| t.min(body.len()))];
    let (payload, encoding) = match (enc, std::str::from_utf8(shown)) {
        (Encoding::Auto, Ok(s)) => (s.to_owned(), "string"),
        _ => (STANDARD.encode(shown), "base64"),
    };
    let props = BasicProperties::decode(&m.msg.properties).unwrap_or_default();
    json!({
        "payload_bytes": body.len(),
        "redelivered": m.redelivered,
        "exchange": m.msg.exchange,
        "routing_key": m.msg.routing_key,
        "message_count": message_count,
        "properties": properties_json(&props),
        "payload": payload,
        "payload_encoding": encoding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_with_milliseconds() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000+00:00");
        assert_eq!(rfc3339_ms(1_709_210_096_789), "2024-02-29T12:34:56.789+00:00");
    }

    #[test]
    fn properties_keys_as_rabbitmq_builds_them() {
        let empty = FieldTable::new();
        assert_eq!(properties_key("", &empty), "~");
        assert_eq!(properties_key("a.b~c d", &empty), "a.b%7Ec%20d");
        let mut args = FieldTable::new();
        args.insert("x-match", wire::FieldValue::LongStr("all".into()));
        let k = properties_key("rk", &args);
        assert!(k.starts_with("rk~") && k.len() > 3, "{k}");
        assert_eq!(k, properties_key("rk", &args.clone()));
    }

    #[test]
    fn properties_round_trip_through_json() {
        let v = json!({"content_type": "text/plain", "delivery_mode": 2, "headers": {"a": 1}, "priority": 3});
        let p = properties_from_json(&v).unwrap();
        assert_eq!(p.delivery_mode, Some(2));
        assert_eq!(properties_json(&p), v);
    }
}
