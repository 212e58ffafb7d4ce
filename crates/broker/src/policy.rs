//! Policies and operator policies (RabbitMQ's `policy` and `operator_policy` runtime
//! parameters): a vhost-wide way to set queue and exchange settings by name pattern,
//! changeable while the objects exist.
//!
//! Selection: of the policies whose pattern matches an object's name and whose `apply-to`
//! fits its kind, the one with the highest priority applies (ties: the lexicographically
//! smallest name, so the choice is deterministic where RabbitMQ's is arbitrary). At most
//! one policy and one operator policy apply; definitions are never merged across policies
//! of the same kind.
//!
//! Precedence, as RabbitMQ's classic queues resolve it (`rabbit_amqqueue_process`'s
//! `res_min`/`res_arg`, rabbitmq.com/docs/maxlength and /docs/ttl):
//! - numeric limits (`message-ttl`, `expires`, `max-length`, `max-length-bytes`,
//!   `delivery-limit`, `consumer-timeout`): the lesser of every value that is set — x-argument,
//!   policy, operator policy — so each party can only make a queue stricter;
//! - `dead-letter-exchange`, `dead-letter-routing-key`: the x-argument beats the policy
//!   (operator policies cannot set them);
//! - `overflow`: the operator policy's, else the x-argument's, else the policy's.
//!
//! Only `message-ttl`, `expires`, `max-length`, `max-length-bytes`, `delivery-limit`,
//! `consumer-timeout` and `overflow` of an operator policy take effect (RabbitMQ's operator
//! policy validators accept no others).

use std::sync::Arc;

use wire::{FieldTable, FieldValue};

use crate::args::{LeaderLocator, Overflow, QueueArgs, QueueType};

/// What kinds of object a policy may apply to (`apply-to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApplyTo {
    Queues,
    ClassicQueues,
    QuorumQueues,
    /// Accepted for definitions from RabbitMQ; Warren has no streams, so it matches nothing.
    Streams,
    Exchanges,
    #[default]
    All,
}

impl ApplyTo {
    /// RabbitMQ's spelling: "queues", "classic_queues", "quorum_queues", "streams",
    /// "exchanges", "all".
    pub fn parse(s: &str) -> Option<ApplyTo> {
        Some(match s {
            "queues" => ApplyTo::Queues,
            "classic_queues" => ApplyTo::ClassicQueues,
            "quorum_queues" => ApplyTo::QuorumQueues,
            "streams" => ApplyTo::Streams,
            "exchanges" => ApplyTo::Exchanges,
            "all" => ApplyTo::All,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ApplyTo::Queues => "queues",
            ApplyTo::ClassicQueues => "classic_queues",
            ApplyTo::QuorumQueues => "quorum_queues",
            ApplyTo::Streams => "streams",
            ApplyTo::Exchanges => "exchanges",
            ApplyTo::All => "all",
        }
    }

    fn fits_queue(self, t: QueueType) -> bool {
        match self {
            ApplyTo::Queues | ApplyTo::All => true,
            ApplyTo::ClassicQueues => t == QueueType::Classic,
            ApplyTo::QuorumQueues => t == QueueType::Quorum,
            ApplyTo::Streams | ApplyTo::Exchanges => false,
        }
    }

    fn fits_exchange(self) -> bool {
        matches!(self, ApplyTo::Exchanges | ApplyTo::All)
    }
}

/// Policy keys RabbitMQ knows that Warren accepts without acting on them: settings of
/// features it does not have (mirroring, lazy mode, streams, federation, in-memory limits).
/// Old definition files still carry them (`ha-mode` in Celery-era guides).
const IGNORED_KEYS: [&str; 18] = [
    "queue-mode",
    "queue-version",
    "ha-mode",
    "ha-params",
    "ha-sync-mode",
    "ha-sync-batch-size",
    "ha-promote-on-shutdown",
    "ha-promote-on-failure",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "consumer-disconnected-timeout",
    "max-age",
    "stream-max-segment-size-bytes",
    "stream-filter-size-bytes",
    "initial-cluster-size",
    "target-group-size",
    "federation-upstream",
    "federation-upstream-set",
];

/// A policy's definition: the settings it sets (`None`: not set by it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyDefinition {
    /// ms.
    pub message_ttl: Option<u64>,
    /// ms unused before the queue is deleted.
    pub expires: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Option<Overflow>,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub delivery_limit: Option<u64>,
    /// ms.
    pub consumer_timeout: Option<u64>,
    /// Exchanges only.
    pub alternate_exchange: Option<String>,
    /// Quorum queues in a cluster: where a new one's leader goes (read at declare).
    pub queue_leader_locator: Option<LeaderLocator>,
    /// Quorum queues: how they dead-letter.
    pub dead_letter_strategy: Option<crate::args::DeadLetterStrategy>,
    /// Keys accepted without effect (see `IGNORED_KEYS`), in the order given.
    pub ignored: Vec<String>,
}

fn int(key: &str, v: &FieldValue, min: i64, what: &str) -> Result<u64, String> {
    match v.as_i64() {
        Some(i) if i >= min => Ok(i as u64),
        _ => Err(format!("{v:?} is not a valid {what} ('{key}')")),
    }
}

fn string(key: &str, v: &FieldValue) -> Result<String, String> {
    match v.as_str() {
        Some(s) => Ok(s.to_owned()),
        None => Err(format!("{v:?} is not a valid value for '{key}': a string is required")),
    }
}

impl PolicyDefinition {
    /// Parse a definition from its keys as RabbitMQ names them, without the `x-` prefix
    /// ("message-ttl", "dead-letter-exchange", ...). Integers may be any integer field
    /// type. Unknown keys are an error, as in RabbitMQ ("... are not recognised policy
    /// settings"), so a typo does not silently do nothing.
    pub fn from_table(t: &FieldTable) -> Result<PolicyDefinition, String> {
        let mut d = PolicyDefinition::default();
        let mut unknown = Vec::new();
        for (key, v) in t.iter() {
            match key {
                "message-ttl" => d.message_ttl = Some(int(key, v, 0, "message TTL")?),
                "expires" => d.expires = Some(int(key, v, 1, "queue TTL")?),
                "max-length" => d.max_length = Some(int(key, v, 0, "maximum length")?),
                "max-length-bytes" => d.max_length_bytes = Some(int(key, v, 0, "maximum length in bytes")?),
                "delivery-limit" => d.delivery_limit = Some(int(key, v, 0, "delivery limit")?),
                "consumer-timeout" => d.consumer_timeout = Some(int(key, v, 1, "consumer timeout")?),
                "overflow" => {
                    d.overflow = Some(match string(key, v)?.as_str() {
                        "drop-head" => Overflow::DropHead,
                        "reject-publish" => Overflow::RejectPublish,
                        "reject-publish-dlx" => Overflow::RejectPublishDlx,
                        other => return Err(format!("\"{other}\" is not a valid overflow value")),
                    })
                }
                "dead-letter-exchange" => d.dead_letter_exchange = Some(string(key, v)?),
                "dead-letter-routing-key" => d.dead_letter_routing_key = Some(string(key, v)?),
                "alternate-exchange" => d.alternate_exchange = Some(string(key, v)?),
                "dead-letter-strategy" => {
                    let s = string(key, v)?;
                    d.dead_letter_strategy = Some(
                        crate::args::DeadLetterStrategy::parse(&s)
                            .ok_or_else(|| format!("\"{s}\" is not a valid dead-letter strategy"))?,
                    );
                }
                "queue-leader-locator" => {
                    let s = string(key, v)?;
                    d.queue_leader_locator = Some(
                        LeaderLocator::parse(&s)
                            .ok_or_else(|| format!("\"{s}\" is not a valid queue-leader-locator value"))?,
                    );
                }
                k if IGNORED_KEYS.contains(&k) => d.ignored.push(k.to_owned()),
                k => unknown.push(format!("<<\"{k}\">>")),
            }
        }
        if !unknown.is_empty() {
            return Err(format!("[{}] are not recognised policy settings", unknown.join(",")));
        }
        if d.dead_letter_routing_key.is_some() && d.dead_letter_exchange.is_none() {
            // RabbitMQ's validator: a routing key without an exchange to route it through.
            return Err("dead-letter-routing-key requires dead-letter-exchange".to_owned());
        }
        Ok(d)
    }

    /// RabbitMQ's `effective_policy_definition`: a policy combined with an operator policy,
    /// taking the stricter numeric value and the operator's overflow. Keys an operator
    /// policy cannot set come from the policy only.
    pub fn merged(policy: Option<&PolicyDefinition>, operator: Option<&PolicyDefinition>) -> PolicyDefinition {
        let mut d = policy.cloned().unwrap_or_default();
        if let Some(op) = operator {
            d.message_ttl = lesser(d.message_ttl, op.message_ttl);
            d.expires = lesser(d.expires, op.expires);
            d.max_length = lesser(d.max_length, op.max_length);
            d.max_length_bytes = lesser(d.max_length_bytes, op.max_length_bytes);
            d.delivery_limit = lesser(d.delivery_limit, op.delivery_limit);
            d.consumer_timeout = lesser(d.consumer_timeout, op.consumer_timeout);
            d.overflow = op.overflow.or(d.overflow);
        }
        d
    }
}

/// The lesser of the values that are set.
fn lesser(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One policy or operator policy of a vhost.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    /// Matched against the object's name, unanchored (anchor it with `^…$` to match a
    /// whole name), as RabbitMQ does.
    pub pattern: regex::Regex,
    pub apply_to: ApplyTo,
    /// Higher wins.
    pub priority: i64,
    pub definition: PolicyDefinition,
}

impl Policy {
    /// A policy with its pattern compiled; a bad pattern is an error naming it.
    pub fn new(
        name: &str,
        pattern: &str,
        apply_to: ApplyTo,
        priority: i64,
        definition: PolicyDefinition,
    ) -> Result<Policy, String> {
        let pattern = regex::Regex::new(pattern).map_err(|e| format!("invalid pattern '{pattern}': {e}"))?;
        Ok(Policy { name: name.to_owned(), pattern, apply_to, priority, definition })
    }

    fn better_than(&self, other: &Policy) -> bool {
        self.priority > other.priority || (self.priority == other.priority && self.name < other.name)
    }
}

/// A vhost's policies and operator policies, swapped whole when either changes.
#[derive(Debug, Default)]
pub(crate) struct PolicySet {
    pub(crate) policies: Vec<Arc<Policy>>,
    pub(crate) operator: Vec<Arc<Policy>>,
}

/// The policy and operator policy that apply to one queue.
#[derive(Debug, Clone, Default)]
pub(crate) struct Applied {
    pub(crate) policy: Option<Arc<Policy>>,
    pub(crate) operator: Option<Arc<Policy>>,
}

fn best(list: &[Arc<Policy>], fits: impl Fn(&Policy) -> bool) -> Option<Arc<Policy>> {
    let mut found: Option<&Arc<Policy>> = None;
    for p in list {
        if fits(p) && found.is_none_or(|f| p.better_than(f)) {
            found = Some(p);
        }
    }
    found.cloned()
}

/// The policy of `list` for a queue named `name` of type `t`.
pub fn select_for_queue(list: &[Arc<Policy>], name: &str, t: QueueType) -> Option<Arc<Policy>> {
    best(list, |p| p.apply_to.fits_queue(t) && p.pattern.is_match(name))
}

/// The policy of `list` for an exchange named `name`.
pub fn select_for_exchange(list: &[Arc<Policy>], name: &str) -> Option<Arc<Policy>> {
    best(list, |p| p.apply_to.fits_exchange() && p.pattern.is_match(name))
}

impl PolicySet {
    pub(crate) fn for_queue(&self, name: &str, t: QueueType) -> Applied {
        Applied {
            policy: select_for_queue(&self.policies, name, t),
            operator: select_for_queue(&self.operator, name, t),
        }
    }
}

/// RabbitMQ 4.x's default x-delivery-limit for quorum queues, when neither an argument nor
/// a policy sets one.
pub(crate) const QUORUM_DELIVERY_LIMIT: u64 = 20;

/// A queue's effective settings: its declared arguments combined with the policies that
/// apply (rules in the module comment). Settings policies cannot change (priority, single
/// active consumer, type) are the declared ones.
pub fn effective(
    declared: &QueueArgs,
    policy: Option<&PolicyDefinition>,
    operator: Option<&PolicyDefinition>,
) -> QueueArgs {
    let none = PolicyDefinition::default();
    let p = policy.unwrap_or(&none);
    let op = operator.unwrap_or(&none);
    let numeric = |arg: Option<u64>, p: Option<u64>, op: Option<u64>| lesser(lesser(arg, p), op);
    let mut e = declared.clone();
    e.message_ttl_ms = numeric(declared.message_ttl_ms, p.message_ttl, op.message_ttl);
    e.expires_ms = numeric(declared.expires_ms, p.expires, op.expires);
    e.max_length = numeric(declared.max_length, p.max_length, op.max_length);
    e.max_length_bytes = numeric(declared.max_length_bytes, p.max_length_bytes, op.max_length_bytes);
    e.delivery_limit = numeric(declared.delivery_limit, p.delivery_limit, op.delivery_limit);
    e.consumer_timeout_ms = numeric(declared.consumer_timeout_ms, p.consumer_timeout, op.consumer_timeout);
    e.overflow = Some(op.overflow.or(declared.overflow).or(p.overflow).unwrap_or_default());
    if declared.dead_letter_exchange.is_none() {
        e.dead_letter_exchange.clone_from(&p.dead_letter_exchange);
    }
    if declared.dead_letter_routing_key.is_none() {
        e.dead_letter_routing_key.clone_from(&p.dead_letter_routing_key);
    }
    if declared.queue_type == QueueType::Quorum {
        e.delivery_limit.get_or_insert(QUORUM_DELIVERY_LIMIT);
    }
    // The argument wins over a policy, as for the dead-letter settings.
    e.leader_locator = declared.leader_locator.or(p.queue_leader_locator);
    e.dead_letter_strategy = declared.dead_letter_strategy.or(p.dead_letter_strategy);
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn table(pairs: &[(&str, FieldValue)]) -> FieldTable {
        let mut t = FieldTable::new();
        for (k, v) in pairs {
            t.insert(*k, v.clone());
        }
        t
    }

    #[test]
    fn parses_definitions() {
        let d = PolicyDefinition::from_table(&table(&[
            ("message-ttl", FieldValue::U8(5)),
            ("max-length", FieldValue::I64(10)),
            ("overflow", FieldValue::LongStr(Bytes::from_static(b"reject-publish-dlx"))),
            ("dead-letter-exchange", FieldValue::LongStr(Bytes::from_static(b"dlx"))),
            ("ha-mode", FieldValue::LongStr(Bytes::from_static(b"all"))),
        ]))
        .unwrap();
        assert_eq!(d.message_ttl, Some(5));
        assert_eq!(d.max_length, Some(10));
        assert_eq!(d.overflow, Some(Overflow::RejectPublishDlx));
        assert_eq!(d.dead_letter_exchange.as_deref(), Some("dlx"));
        assert_eq!(d.ignored, ["ha-mode"]);

        let e = PolicyDefinition::from_table(&table(&[("bogus", FieldValue::I32(1))])).unwrap_err();
        assert_eq!(e, "[<<\"bogus\">>] are not recognised policy settings");
        assert!(PolicyDefinition::from_table(&table(&[("max-length", FieldValue::I32(-1))])).is_err());
        assert!(PolicyDefinition::from_table(&table(&[("expires", FieldValue::I32(0))])).is_err());
        assert!(PolicyDefinition::from_table(&table(&[("message-ttl", FieldValue::F64(1.0))])).is_err());
        let bad_overflow = table(&[("overflow", FieldValue::LongStr(Bytes::from_static(b"nope")))]);
        assert!(PolicyDefinition::from_table(&bad_overflow).is_err());
        let dlrk_alone = table(&[("dead-letter-routing-key", FieldValue::LongStr(Bytes::from_static(b"k")))]);
        assert!(PolicyDefinition::from_table(&dlrk_alone).is_err());
    }

    #[test]
    fn queue_leader_locator_is_read_and_the_argument_wins_over_it() {
        let d = PolicyDefinition::from_table(&table(&[(
            "queue-leader-locator",
            FieldValue::LongStr(Bytes::from_static(b"balanced")),
        )]))
        .unwrap();
        assert_eq!(d.queue_leader_locator, Some(LeaderLocator::Balanced));
        assert!(d.ignored.is_empty());
        let bad = table(&[("queue-leader-locator", FieldValue::LongStr(Bytes::from_static(b"nearest")))]);
        assert!(PolicyDefinition::from_table(&bad).is_err());
        let declared = QueueArgs { queue_type: QueueType::Quorum, ..QueueArgs::default() };
        assert_eq!(effective(&declared, Some(&d), None).leader_locator, Some(LeaderLocator::Balanced));
        let local = QueueArgs { leader_locator: Some(LeaderLocator::ClientLocal), ..declared };
        assert_eq!(effective(&local, Some(&d), None).leader_locator, Some(LeaderLocator::ClientLocal));
    }

    #[test]
    fn dead_letter_strategy_is_read_and_the_argument_wins_over_it() {
        use crate::args::DeadLetterStrategy;
        let at_least = table(&[("dead-letter-strategy", FieldValue::LongStr(Bytes::from_static(b"at-least-once")))]);
        let d = PolicyDefinition::from_table(&at_least).unwrap();
        assert_eq!(d.dead_letter_strategy, Some(DeadLetterStrategy::AtLeastOnce));
        assert!(d.ignored.is_empty(), "no longer accepted without effect");
        let bad = table(&[("dead-letter-strategy", FieldValue::LongStr(Bytes::from_static(b"twice")))]);
        assert!(PolicyDefinition::from_table(&bad).is_err());
        let declared = QueueArgs { queue_type: QueueType::Quorum, ..QueueArgs::default() };
        assert_eq!(effective(&declared, Some(&d), None).dead_letter_strategy, Some(DeadLetterStrategy::AtLeastOnce));
        let mut args = FieldTable::new();
        args.insert("x-queue-type", FieldValue::LongStr(Bytes::from_static(b"quorum")));
        args.insert("x-dead-letter-strategy", FieldValue::LongStr(Bytes::from_static(b"at-most-once")));
        let most = QueueArgs::parse(&args, "q", "/").unwrap();
        assert_eq!(most.dead_letter_strategy, Some(DeadLetterStrategy::AtMostOnce));
        assert_eq!(effective(&most, Some(&d), None).dead_letter_strategy, Some(DeadLetterStrategy::AtMostOnce));
    }

    #[test]
    fn apply_to_round_trips() {
        for s in ["queues", "classic_queues", "quorum_queues", "streams", "exchanges", "all"] {
            assert_eq!(ApplyTo::parse(s).map(ApplyTo::as_str), Some(s));
        }
        assert_eq!(ApplyTo::parse("queue"), None);
    }

    #[test]
    fn merged_takes_the_stricter_value_and_the_operators_overflow() {
        let user = PolicyDefinition {
            max_length: Some(10),
            message_ttl: Some(100),
            overflow: Some(Overflow::DropHead),
            dead_letter_exchange: Some("dlx".into()),
            ..Default::default()
        };
        let op = PolicyDefinition {
            max_length: Some(20),
            message_ttl: Some(50),
            expires: Some(7),
            overflow: Some(Overflow::RejectPublish),
            ..Default::default()
        };
        let m = PolicyDefinition::merged(Some(&user), Some(&op));
        assert_eq!((m.max_length, m.message_ttl, m.expires), (Some(10), Some(50), Some(7)));
        assert_eq!(m.overflow, Some(Overflow::RejectPublish));
        assert_eq!(m.dead_letter_exchange.as_deref(), Some("dlx"));
        assert_eq!(PolicyDefinition::merged(None, None), PolicyDefinition::default());
    }
}
