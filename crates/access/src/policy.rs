//! Validation of policy definitions: the keys RabbitMQ's rabbit_policies accepts and the
//! types of their values. Choosing and applying a policy is the broker's job, not this
//! module's.

use serde_json::{Map, Value};

/// Keys whose value must be an integer ≥ 0.
const NON_NEGATIVE_INTEGER_KEYS: &[&str] = &[
    "message-ttl",
    "max-length",
    "max-length-bytes",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "delivery-limit",
    "consumer-timeout",
    "consumer-disconnected-timeout",
    "stream-max-segment-size-bytes",
];

/// Keys whose value must be a string.
const STRING_KEYS: &[&str] = &[
    "alternate-exchange",
    "dead-letter-exchange",
    "dead-letter-routing-key",
    "federation-upstream",
    "federation-upstream-set",
];

/// Keys accepted so that definitions written for older RabbitMQ load, but which do nothing
/// here (mirroring was removed in RabbitMQ 4.0; lazy mode is how every queue pages anyway).
/// The caller logs them as ignored.
const IGNORED_KEYS: &[&str] = &["queue-mode"];
const IGNORED_PREFIX: &str = "ha-";

/// The only keys an operator policy may set (rabbit_policies' operator policy validators).
const OPERATOR_KEYS: &[&str] = &[
    "expires",
    "message-ttl",
    "max-length",
    "max-length-bytes",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "delivery-limit",
    "queue-version",
    "overflow",
];

/// Check a user policy's definition: known keys, values of the right type and range.
pub fn validate_policy_definition(def: &Map<String, Value>) -> Result<(), String> {
    if def.is_empty() {
        return Err("a policy definition must set at least one key".into());
    }
    def.iter().try_for_each(|(k, v)| validate_key(k, v))
}

/// Check an operator policy's definition: only RabbitMQ's operator keys are allowed.
pub fn validate_operator_policy_definition(def: &Map<String, Value>) -> Result<(), String> {
    if let Some(k) = def.keys().find(|k| !OPERATOR_KEYS.contains(&k.as_str())) {
        return Err(format!(
            "'{k}' is not a recognised operator policy setting (allowed: {})",
            OPERATOR_KEYS.join(", ")
        ));
    }
    validate_policy_definition(def)
}

/// The keys of a definition that are accepted but have no effect (`ha-*`, `queue-mode`).
pub fn ignored_keys(def: &Map<String, Value>) -> Vec<&str> {
    def.keys().map(String::as_str).filter(|k| is_ignored(k)).collect()
}

fn is_ignored(key: &str) -> bool {
    key.starts_with(IGNORED_PREFIX) || IGNORED_KEYS.contains(&key)
}

fn validate_key(key: &str, v: &Value) -> Result<(), String> {
    let int = || v.as_i64().or_else(|| v.as_u64().map(|u| u as i64));
    let bad = |what: &str| Err(format!("policy setting '{key}' must be {what}, got {v}"));
    if NON_NEGATIVE_INTEGER_KEYS.contains(&key) {
        return match int() {
            Some(n) if n >= 0 => Ok(()),
            _ => bad("a non-negative integer"),
        };
    }
    if STRING_KEYS.contains(&key) {
        return if v.is_string() { Ok(()) } else { bad("a string") };
    }
    if is_ignored(key) {
        return Ok(());
    }
    let one_of = |allowed: &[&str]| match v.as_str() {
        Some(s) if allowed.contains(&s) => Ok(()),
        _ => bad(&format!("one of {}", allowed.join(", "))),
    };
    match key {
        // RabbitMQ refuses 0 here: a queue that expires at once could never be used.
        "expires" => match int() {
            Some(n) if n >= 1 => Ok(()),
            _ => bad("a positive integer"),
        },
        "overflow" => one_of(&["drop-head", "reject-publish", "reject-publish-dlx"]),
        "dead-letter-strategy" => one_of(&["at-most-once", "at-least-once"]),
        "queue-leader-locator" => one_of(&["client-local", "balanced", "random", "least-leaders"]),
        "queue-version" => match int() {
            Some(1 | 2) => Ok(()),
            _ => bad("1 or 2"),
        },
        "initial-cluster-size" | "target-group-size" => match int() {
            Some(n) if n >= 1 => Ok(()),
            _ => bad("a positive integer"),
        },
        "stream-filter-size-bytes" => match int() {
            Some(16..=255) => Ok(()),
            _ => bad("an integer from 16 to 255"),
        },
        "max-age" => match v.as_str() {
            Some(s) if is_stream_age(s) => Ok(()),
            _ => bad("a duration such as \"7D\" (units Y, M, D, h, m, s)"),
        },
        _ => Err(format!("'{key}' is not a recognised policy setting")),
    }
}

/// `max-age` values: digits followed by one unit letter (rabbit_amqqueue's stream ages).
fn is_stream_age(s: &str) -> bool {
    let Some(unit) = s.chars().last() else { return false };
    let digits = &s[..s.len() - unit.len_utf8()];
    "YMDhms".contains(unit) && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn accepts_documented_keys_with_right_types() {
        let def = map(json!({
            "max-length": 10, "overflow": "reject-publish", "dead-letter-exchange": "dlx",
            "message-ttl": 0, "expires": 60000, "delivery-limit": 5, "consumer-timeout": 3600000,
            "max-age": "7D", "queue-version": 2, "alternate-exchange": "ae"
        }));
        assert_eq!(validate_policy_definition(&def), Ok(()));
    }

    #[test]
    fn refuses_wrong_types_unknown_keys_and_bad_enums() {
        for bad in [
            json!({"max-length": -1}),
            json!({"max-length": "10"}),
            json!({"message-ttl": 1.5}),
            json!({"expires": 0}),
            json!({"overflow": "drop-tail"}),
            json!({"dead-letter-exchange": 1}),
            json!({"no-such-key": 1}),
            json!({"max-age": "7 days"}),
            json!({}),
        ] {
            assert!(validate_policy_definition(&map(bad.clone())).is_err(), "{bad}");
        }
        let e = validate_policy_definition(&map(json!({"max-length": "x"}))).unwrap_err();
        assert!(e.contains("max-length"), "{e}");
    }

    #[test]
    fn ha_keys_and_queue_mode_are_accepted_and_reported_as_ignored() {
        let def = map(json!({"ha-mode": "all", "ha-sync-mode": "automatic", "queue-mode": "lazy", "max-length": 1}));
        assert_eq!(validate_policy_definition(&def), Ok(()));
        let mut ignored = ignored_keys(&def);
        ignored.sort();
        assert_eq!(ignored, ["ha-mode", "ha-sync-mode", "queue-mode"]);
    }

    #[test]
    fn operator_policies_accept_only_operator_keys() {
        assert_eq!(validate_operator_policy_definition(&map(json!({"max-length": 100, "expires": 1}))), Ok(()));
        assert!(validate_operator_policy_definition(&map(json!({"dead-letter-exchange": "x"}))).is_err());
        assert!(validate_operator_policy_definition(&map(json!({"max-length": -5}))).is_err());
    }
}
