//! Queue and consumer arguments (RabbitMQ's `x-` arguments), parsed and validated once at
//! declare. Errors are 406 PRECONDITION_FAILED naming the argument, as RabbitMQ words them:
//! "invalid arg 'x-max-length' for queue 'q' in vhost '/': {value_negative,-1}".

use wire::{FieldTable, FieldValue};

use crate::error::AmqpError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    #[default]
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

/// The arguments of a queue that change its behaviour.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueueArgs {
    /// x-message-ttl, ms.
    pub message_ttl_ms: Option<u64>,
    /// x-expires, ms: the queue is deleted after this long unused.
    pub expires_ms: Option<u64>,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    /// x-overflow; `None` (not given) behaves as drop-head, but a policy may still set it.
    pub overflow: Option<Overflow>,
    pub max_priority: Option<u8>,
    pub single_active_consumer: bool,
    pub delivery_limit: Option<u64>,
    /// x-consumer-timeout, ms.
    pub consumer_timeout_ms: Option<u64>,
    /// x-queue-type: "classic" (default) or "quorum" (a durable queue until clustering).
    pub queue_type: QueueType,
    /// x-quorum-initial-group-size: the voters of a quorum queue's Raft group (capped at the
    /// cluster's size; RabbitMQ's default is 3).
    pub quorum_initial_group_size: Option<u64>,
    /// x-queue-leader-locator (quorum queues in a cluster).
    pub leader_locator: Option<LeaderLocator>,
    /// x-dead-letter-strategy (quorum queues): `None` when not given (or not a value
    /// RabbitMQ knows), which is at-most-once unless a policy says otherwise.
    pub dead_letter_strategy: Option<DeadLetterStrategy>,
}

/// How a quorum queue dead-letters (x-dead-letter-strategy, policy key
/// dead-letter-strategy): RabbitMQ's `at-most-once` (the default) or `at-least-once`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterStrategy {
    AtMostOnce,
    AtLeastOnce,
}

impl DeadLetterStrategy {
    pub fn parse(s: &str) -> Option<DeadLetterStrategy> {
        match s {
            "at-most-once" => Some(DeadLetterStrategy::AtMostOnce),
            "at-least-once" => Some(DeadLetterStrategy::AtLeastOnce),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DeadLetterStrategy::AtMostOnce => "at-most-once",
            DeadLetterStrategy::AtLeastOnce => "at-least-once",
        }
    }
}

/// Where a quorum queue's leader goes (x-queue-leader-locator, policy key
/// queue-leader-locator): RabbitMQ's `client-local` (the declaring node, its default) or
/// `balanced` (the running node leading the fewest; RabbitMQ 3.10's `random` and
/// `least-leaders` are taken as `balanced`, as RabbitMQ 3.12 does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderLocator {
    ClientLocal,
    Balanced,
}

impl LeaderLocator {
    pub fn parse(s: &str) -> Option<LeaderLocator> {
        match s {
            "client-local" => Some(LeaderLocator::ClientLocal),
            "balanced" | "random" | "least-leaders" => Some(LeaderLocator::Balanced),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
}

struct Ctx<'a> {
    what: &'a str,
    name: &'a str,
    vhost: &'a str,
}

impl Ctx<'_> {
    fn err(&self, arg: &str, reason: String) -> AmqpError {
        AmqpError::precondition_failed(format!(
            "invalid arg '{arg}' for {} '{}' in vhost '{}': {reason}",
            self.what, self.name, self.vhost
        ))
    }

    fn int(&self, args: &FieldTable, arg: &str) -> Result<Option<i64>, AmqpError> {
        match args.get(arg) {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                Some(i) => Ok(Some(i)),
                None => Err(self.err(arg, format!("{{unacceptable_type,{}}}", v.type_name()))),
            },
        }
    }

    fn non_neg(&self, args: &FieldTable, arg: &str) -> Result<Option<u64>, AmqpError> {
        match self.int(args, arg)? {
            Some(i) if i < 0 => Err(self.err(arg, format!("{{value_negative,{i}}}"))),
            Some(i) => Ok(Some(i as u64)),
            None => Ok(None),
        }
    }

    fn positive(&self, args: &FieldTable, arg: &str) -> Result<Option<u64>, AmqpError> {
        match self.int(args, arg)? {
            Some(i) if i <= 0 => Err(self.err(arg, format!("{{value_zero_or_less,{i}}}"))),
            Some(i) => Ok(Some(i as u64)),
            None => Ok(None),
        }
    }

    fn string(&self, args: &FieldTable, arg: &str) -> Result<Option<String>, AmqpError> {
        match args.get(arg) {
            None => Ok(None),
            Some(FieldValue::LongStr(b)) => Ok(Some(String::from_utf8_lossy(b).into_owned())),
            Some(v) => Err(self.err(arg, format!("{{unacceptable_type,{}}}", v.type_name()))),
        }
    }
}

impl QueueArgs {
    pub fn parse(args: &FieldTable, queue: &str, vhost: &str) -> Result<QueueArgs, AmqpError> {
        let c = Ctx { what: "queue", name: queue, vhost };
        let overflow = match c.string(args, "x-overflow")?.as_deref() {
            None => None,
            Some("drop-head") => Some(Overflow::DropHead),
            Some("reject-publish") => Some(Overflow::RejectPublish),
            Some("reject-publish-dlx") => Some(Overflow::RejectPublishDlx),
            Some(other) => return Err(c.err("x-overflow", format!("{{unacceptable_value,<<\"{other}\">>}}"))),
        };
        let max_priority = match c.int(args, "x-max-priority")? {
            None => None,
            Some(p) if p < 0 => return Err(c.err("x-max-priority", format!("{{value_negative,{p}}}"))),
            Some(p) if p > 255 => return Err(c.err("x-max-priority", format!("{{value_too_large,{p},255}}"))),
            Some(p) => Some(p as u8),
        };
        let single_active_consumer = match args.get("x-single-active-consumer") {
            None => false,
            Some(FieldValue::Bool(b)) => *b,
            Some(v) => {
                return Err(c.err("x-single-active-consumer", format!("{{unacceptable_type,{}}}", v.type_name())));
            }
        };
        let queue_type = match c.string(args, "x-queue-type")?.as_deref() {
            None | Some("classic") => QueueType::Classic,
            Some("quorum") => QueueType::Quorum,
            Some(other) => {
                return Err(c.err("x-queue-type", format!("{{unacceptable_value,<<\"{other}\">>}}")));
            }
        };
        let leader_locator = match c.string(args, "x-queue-leader-locator")? {
            None => None,
            Some(s) => match LeaderLocator::parse(&s) {
                Some(l) => Some(l),
                None => return Err(c.err("x-queue-leader-locator", format!("{{unacceptable_value,<<\"{s}\">>}}"))),
            },
        };
        Ok(QueueArgs {
            message_ttl_ms: c.non_neg(args, "x-message-ttl")?,
            expires_ms: c.positive(args, "x-expires")?,
            dead_letter_exchange: c.string(args, "x-dead-letter-exchange")?,
            dead_letter_routing_key: c.string(args, "x-dead-letter-routing-key")?,
            max_length: c.non_neg(args, "x-max-length")?,
            max_length_bytes: c.non_neg(args, "x-max-length-bytes")?,
            overflow,
            max_priority,
            single_active_consumer,
            delivery_limit: c.non_neg(args, "x-delivery-limit")?,
            consumer_timeout_ms: c.positive(args, "x-consumer-timeout")?,
            queue_type,
            quorum_initial_group_size: c.positive(args, "x-quorum-initial-group-size")?,
            leader_locator,
            dead_letter_strategy: args
                .get("x-dead-letter-strategy")
                .and_then(|v| v.as_str())
                .and_then(DeadLetterStrategy::parse),
        })
    }
}

/// basic.consume arguments.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConsumerArgs {
    /// x-priority: higher first.
    pub priority: i32,
}

impl ConsumerArgs {
    pub fn parse(args: &FieldTable, queue: &str, vhost: &str) -> Result<ConsumerArgs, AmqpError> {
        let c = Ctx { what: "queue", name: queue, vhost };
        let priority = match c.int(args, "x-priority")? {
            None => 0,
            Some(p) => i32::try_from(p).map_err(|_| c.err("x-priority", format!("{{value_out_of_range,{p}}}")))?,
        };
        Ok(ConsumerArgs { priority })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn t(pairs: &[(&str, FieldValue)]) -> FieldTable {
        let mut f = FieldTable::new();
        for (k, v) in pairs {
            f.insert(*k, v.clone());
        }
        f
    }

    #[test]
    fn leader_locator_takes_rabbitmqs_values() {
        let parse = |v: &'static [u8]| {
            QueueArgs::parse(&t(&[("x-queue-leader-locator", FieldValue::LongStr(Bytes::from_static(v)))]), "q", "/")
        };
        assert_eq!(parse(b"client-local").unwrap().leader_locator, Some(LeaderLocator::ClientLocal));
        for balanced in [&b"balanced"[..], b"random", b"least-leaders"] {
            assert_eq!(parse(balanced).unwrap().leader_locator, Some(LeaderLocator::Balanced));
        }
        let e = parse(b"nearest").unwrap_err();
        assert_eq!(e.code, 406);
        assert!(e.text.contains("'x-queue-leader-locator'") && e.text.contains("nearest"), "{}", e.text);
        let e = QueueArgs::parse(&t(&[("x-queue-leader-locator", FieldValue::I32(1))]), "q", "/").unwrap_err();
        assert!(e.text.contains("unacceptable_type"), "{}", e.text);
        assert_eq!(QueueArgs::parse(&FieldTable::new(), "q", "/").unwrap().leader_locator, None);
    }

    #[test]
    fn parses_and_rejects() {
        let a = QueueArgs::parse(
            &t(&[
                ("x-message-ttl", FieldValue::I32(1000)),
                ("x-overflow", FieldValue::LongStr(Bytes::from_static(b"reject-publish"))),
                ("x-max-priority", FieldValue::U8(10)),
                ("x-queue-type", FieldValue::LongStr(Bytes::from_static(b"quorum"))),
            ]),
            "q",
            "/",
        )
        .unwrap();
        assert_eq!(a.message_ttl_ms, Some(1000));
        assert_eq!(a.overflow, Some(Overflow::RejectPublish));
        assert_eq!(a.max_priority, Some(10));
        assert_eq!(a.queue_type, QueueType::Quorum);
        let e = QueueArgs::parse(&t(&[("x-max-length", FieldValue::I32(-1))]), "q", "/").unwrap_err();
        assert_eq!(e.code, 406);
        assert_eq!(e.text, "invalid arg 'x-max-length' for queue 'q' in vhost '/': {value_negative,-1}");
        let e = QueueArgs::parse(&t(&[("x-message-ttl", FieldValue::LongStr(Bytes::from_static(b"x")))]), "q", "/");
        assert!(e.unwrap_err().text.contains("{unacceptable_type,longstr}"));
        assert!(QueueArgs::parse(&t(&[("x-max-priority", FieldValue::I32(256))]), "q", "/").is_err());
        assert!(QueueArgs::parse(&t(&[("x-expires", FieldValue::I32(0))]), "q", "/").is_err());
        assert!(
            QueueArgs::parse(&t(&[("x-queue-type", FieldValue::LongStr(Bytes::from_static(b"stream")))]), "q", "/")
                .is_err()
        );
    }
}
