//! x-arguments as JSON (definitions, management API) and as AMQP field tables.
//!
//! JSON → table: integer → `l` (signed 64-bit), other number → `d` (double), string → `S`,
//! bool → `t`, array → `A`, object → `F`, null → `V`. Table → JSON is the reverse; every
//! integer type becomes a JSON integer, byte strings become (lossy UTF-8) strings,
//! decimals become numbers, timestamps integers.

use bytes::Bytes;
use serde_json::{Map, Number, Value};
use wire::{FieldTable, FieldValue};

/// Convert a JSON object of arguments into a field table (keys keep their order).
pub fn json_to_table(map: &Map<String, Value>) -> Result<FieldTable, String> {
    let mut table = FieldTable::new();
    for (k, v) in map {
        let value = json_to_value(v).map_err(|e| format!("argument '{k}': {e}"))?;
        table.insert(k.clone(), value);
    }
    Ok(table)
}

/// Convert a field table into a JSON object.
pub fn table_to_json(table: &FieldTable) -> Map<String, Value> {
    table.iter().map(|(k, v)| (k.to_owned(), value_to_json(v))).collect()
}

fn json_to_value(v: &Value) -> Result<FieldValue, String> {
    Ok(match v {
        Value::Null => FieldValue::Void,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                FieldValue::I64(i)
            } else if n.is_u64() {
                return Err(format!("{n} does not fit in a signed 64-bit integer"));
            } else {
                FieldValue::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => FieldValue::LongStr(Bytes::from(s.clone().into_bytes())),
        Value::Array(items) => FieldValue::Array(items.iter().map(json_to_value).collect::<Result<_, _>>()?),
        Value::Object(m) => FieldValue::Table(json_to_table(m)?),
    })
}

fn value_to_json(v: &FieldValue) -> Value {
    match v {
        FieldValue::Bool(b) => Value::Bool(*b),
        FieldValue::I8(x) => Value::from(*x),
        FieldValue::U8(x) => Value::from(*x),
        FieldValue::I16(x) => Value::from(*x),
        FieldValue::U16(x) => Value::from(*x),
        FieldValue::I32(x) => Value::from(*x),
        FieldValue::U32(x) => Value::from(*x),
        FieldValue::I64(x) => Value::from(*x),
        // RabbitMQ reads `L` as signed (see wire::types); report the value it would see.
        FieldValue::U64(x) => Value::from(*x as i64),
        FieldValue::F32(x) => float(f64::from(*x)),
        FieldValue::F64(x) => float(*x),
        FieldValue::Decimal(scale, unscaled) => float(f64::from(*unscaled) / 10f64.powi(i32::from(*scale))),
        FieldValue::LongStr(b) | FieldValue::ByteArray(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        FieldValue::Array(items) => Value::Array(items.iter().map(value_to_json).collect()),
        FieldValue::Timestamp(t) => Value::from(*t),
        FieldValue::Table(t) => Value::Object(table_to_json(t)),
        FieldValue::Void => Value::Null,
    }
}

/// JSON has no NaN or infinity: those become null.
fn float(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// `#[serde(with = "json_args::serde_table")]` for `FieldTable` fields of definitions.
pub(crate) mod serde_table {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;
    use wire::FieldTable;

    pub(crate) fn serialize<S: Serializer>(t: &FieldTable, s: S) -> Result<S::Ok, S::Error> {
        super::table_to_json(t).serialize(s)
    }

    /// Accepts an object, or null / `[]` for "no arguments" (older exports wrote `[]`).
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FieldTable, D::Error> {
        match Value::deserialize(d)? {
            Value::Object(m) => super::json_to_table(&m).map_err(serde::de::Error::custom),
            Value::Null => Ok(FieldTable::new()),
            Value::Array(a) if a.is_empty() => Ok(FieldTable::new()),
            other => Err(serde::de::Error::custom(format!("arguments must be an object, got {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_through_a_table() {
        let j = json!({
            "x-message-ttl": 60000, "x-dead-letter-exchange": "dlx", "x-single-active-consumer": true,
            "x-negative": -5, "ratio": 0.25, "list": [1, "two", [false]], "nested": {"a": null, "b": {"c": 1}},
            "unicode": "héllo"
        });
        let t = json_to_table(j.as_object().unwrap()).unwrap();
        assert_eq!(t.get("x-message-ttl"), Some(&FieldValue::I64(60000)));
        assert_eq!(t.get("x-dead-letter-exchange").and_then(FieldValue::as_str), Some("dlx"));
        assert_eq!(t.get("x-single-active-consumer"), Some(&FieldValue::Bool(true)));
        assert_eq!(t.get("ratio"), Some(&FieldValue::F64(0.25)));
        assert!(matches!(t.get("nested"), Some(FieldValue::Table(_))));
        assert_eq!(Value::Object(table_to_json(&t)), j);
        // Key order is kept.
        let keys: Vec<&str> = t.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, j.as_object().unwrap().keys().map(String::as_str).collect::<Vec<_>>());
    }

    #[test]
    fn amqp_only_types_export_as_plain_json() {
        let mut t = FieldTable::new();
        t.insert("short", FieldValue::I16(-3));
        t.insert("uint", FieldValue::U32(7));
        t.insert("bytes", FieldValue::ByteArray(Bytes::from_static(b"ab\xff")));
        t.insert("ts", FieldValue::Timestamp(1_700_000_000));
        t.insert("dec", FieldValue::Decimal(2, 1234));
        t.insert("nan", FieldValue::F64(f64::NAN));
        t.insert("void", FieldValue::Void);
        let j = Value::Object(table_to_json(&t));
        assert_eq!(
            j,
            json!({"short": -3, "uint": 7, "bytes": "ab\u{fffd}", "ts": 1_700_000_000u64, "dec": 12.34, "nan": null, "void": null})
        );
    }

    #[test]
    fn integers_beyond_i64_are_refused() {
        let j = json!({"x-big": u64::MAX});
        let e = json_to_table(j.as_object().unwrap()).unwrap_err();
        assert!(e.contains("x-big"), "{e}");
    }
}
