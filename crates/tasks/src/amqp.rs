//! Between lapin's types and the protocol's JSON view of a message. Header tables map to
//! JSON the way py-amqp writes them: void ↔ null, bool, integers, floats, strings, arrays
//! ('A') and nested tables ('F').

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Map, Number, Value};

use crate::protocol::{Properties, RawMessage};

pub(crate) fn table_to_json(t: &FieldTable) -> Map<String, Value> {
    t.inner().iter().map(|(k, v)| (k.as_str().to_owned(), value_to_json(v))).collect()
}

fn value_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Timestamp(n) => (*n).into(),
        AMQPValue::Float(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        AMQPValue::Double(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => {
            Number::from_f64(f64::from(d.value) / 10f64.powi(i32::from(d.scale))).map_or(Value::Null, Value::Number)
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ByteArray(b) => Value::String(String::from_utf8_lossy(b.as_slice()).into_owned()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::FieldTable(t) => Value::Object(table_to_json(t)),
        AMQPValue::Void => Value::Null,
    }
}

pub(crate) fn json_to_table(m: &Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in m {
        t.insert(ShortString::from(k.as_str()), json_to_value(v));
    }
    t
}

fn json_to_value(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(a.iter().map(json_to_value).collect::<Vec<_>>())),
        Value::Object(m) => AMQPValue::FieldTable(json_to_table(m)),
    }
}

pub(crate) fn from_lapin(props: &BasicProperties, body: Vec<u8>) -> RawMessage {
    let s = |v: &Option<ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
    RawMessage {
        headers: props.headers().as_ref().map(table_to_json).unwrap_or_default(),
        properties: Properties {
            correlation_id: s(props.correlation_id()),
            reply_to: s(props.reply_to()),
            content_type: s(props.content_type()),
            content_encoding: s(props.content_encoding()),
            delivery_mode: *props.delivery_mode(),
            priority: *props.priority(),
        },
        body,
    }
}

pub(crate) fn to_lapin(msg: &RawMessage) -> BasicProperties {
    let p = &msg.properties;
    let mut props = BasicProperties::default();
    if !msg.headers.is_empty() {
        props = props.with_headers(json_to_table(&msg.headers));
    }
    if let Some(v) = &p.correlation_id {
        props = props.with_correlation_id(v.as_str().into());
    }
    if let Some(v) = &p.reply_to {
        props = props.with_reply_to(v.as_str().into());
    }
    if let Some(v) = &p.content_type {
        props = props.with_content_type(v.as_str().into());
    }
    if let Some(v) = &p.content_encoding {
        props = props.with_content_encoding(v.as_str().into());
    }
    if let Some(v) = p.delivery_mode {
        props = props.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        props = props.with_priority(v);
    }
    props
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_tables_round_trip_through_json() {
        let json = serde_json::json!({
            "id": "x", "eta": null, "retries": 3, "ignore_result": true,
            "timelimit": [null, 1.5], "stamps": {"a": [1, "b"]}, "big": 1_i64 << 40,
        });
        let map = json.as_object().expect("object").clone();
        assert_eq!(table_to_json(&json_to_table(&map)), map);
    }

    #[test]
    fn py_amqp_integer_widths_read_as_numbers() {
        let mut t = FieldTable::default();
        t.insert("i".into(), AMQPValue::LongInt(-7));
        t.insert("s".into(), AMQPValue::ShortString("v".into()));
        t.insert("b".into(), AMQPValue::Boolean(false));
        assert_eq!(Value::Object(table_to_json(&t)), serde_json::json!({"i": -7, "s": "v", "b": false}));
    }

    #[test]
    fn properties_round_trip() {
        let msg = RawMessage {
            headers: Map::new(),
            properties: Properties {
                correlation_id: Some("c".into()),
                reply_to: Some("r".into()),
                content_type: Some("application/json".into()),
                content_encoding: Some("utf-8".into()),
                delivery_mode: Some(2),
                priority: Some(3),
            },
            body: b"[]".to_vec(),
        };
        assert_eq!(from_lapin(&to_lapin(&msg), b"[]".to_vec()), msg);
    }
}
