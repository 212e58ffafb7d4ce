//! Golden messages from real Celery (tests/golden/gen.py): we decode what Celery sends,
//! and what we encode decodes to the same thing and carries the same headers.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use super::*;

fn golden(name: &str) -> RawMessage {
    let path = format!("{}/tests/golden/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let doc: Value = serde_json::from_str(&text).expect("golden JSON");
    let p = &doc["properties"];
    let s = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_owned);
    let n = |k: &str| p.get(k).and_then(Value::as_u64).map(|v| u8::try_from(v).expect("u8"));
    RawMessage {
        headers: doc.get("headers").and_then(Value::as_object).cloned().unwrap_or_default(),
        properties: Properties {
            correlation_id: s("correlation_id"),
            reply_to: s("reply_to"),
            content_type: s("content_type"),
            content_encoding: s("content_encoding"),
            delivery_mode: n("delivery_mode"),
            priority: n("priority"),
        },
        body: doc["body"].as_str().expect("body").as_bytes().to_vec(),
    }
}

#[test]
fn decodes_positional_args() {
    let raw = golden("task_add_args");
    let t = TaskMessage::decode(&raw).expect("decode");
    assert_eq!(
        (t.task.as_str(), t.id.as_str(), t.lang.as_str()),
        ("demo.add", "00000000-0000-4000-8000-000000000000", "py")
    );
    assert_eq!(t.args, [json!(2), json!(3)]);
    assert!(t.kwargs.is_empty());
    assert_eq!(t.root_id, t.id, "root_id defaults to the task's own id");
    assert_eq!((t.parent_id.as_deref(), t.eta.as_deref(), t.retries), (None, None, 0));
    assert_eq!(t.timelimit, (None, None));
    assert_eq!(t.reply_to.as_deref(), Some("golden-reply-queue"));
    assert_eq!(
        t.embed,
        Embed { callbacks: Value::Null, errbacks: Value::Null, chain: Value::Null, chord: Value::Null }
    );
    assert_eq!(raw.properties.correlation_id.as_deref(), Some(t.id.as_str()));
    assert_eq!(raw.properties.delivery_mode, Some(DELIVERY_MODE_PERSISTENT));
    assert_eq!(t.argsrepr, "(2, 3)");
}

#[test]
fn decodes_nested_kwargs() {
    let t = TaskMessage::decode(&golden("task_echo_kwargs")).expect("decode");
    assert!(t.args.is_empty());
    assert_eq!(Value::Object(t.kwargs), json!({"value": {"a": [1, 2.5, null, true], "b": {"c": "ünï"}}}));
}

#[test]
fn decodes_every_option_header() {
    let raw = golden("task_options");
    let t = TaskMessage::decode(&raw).expect("decode");
    assert_eq!(t.eta.as_deref(), Some("2026-01-02T03:04:35.678901+00:00"));
    assert_eq!(t.expires.as_deref(), Some("2026-01-02T04:04:05.678901+00:00"));
    assert_eq!(t.timelimit, (Some(60.0), Some(50.0)), "[hard, soft]");
    assert_eq!((t.priority, t.shadow.as_deref(), t.ignore_result, t.retries), (Some(5), Some("sleepy"), true, 2));
    assert_eq!(t.parent_id.as_deref(), Some("11111111-1111-4111-8111-111111111111"));
    assert_eq!(t.root_id, "22222222-2222-4222-8222-222222222222");
    assert_eq!(t.args, [json!(1.5)]);
}

#[test]
fn keeps_the_chain_of_signatures() {
    let t = TaskMessage::decode(&golden("task_chain")).expect("decode");
    let chain = t.embed.chain.as_array().expect("chain is a list");
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0]["task"], "demo.add");
    assert_eq!(chain[0]["args"], json!([10]));
    assert_eq!(chain[1]["subtask_type"], Value::Null);
}

#[test]
fn encoding_matches_celery_header_for_header() {
    for name in ["task_add_args", "task_echo_kwargs", "task_options", "task_chain"] {
        let raw = golden(name);
        let decoded = TaskMessage::decode(&raw).expect("decode");
        let encoded = decoded.encode();
        let mut keys: Vec<_> = encoded.headers.keys().collect();
        let mut want: Vec<_> = raw.headers.keys().collect();
        keys.sort();
        want.sort();
        assert_eq!(keys, want, "{name}: the same header names as Celery");
        for (k, v) in &raw.headers {
            let ours = &encoded.headers[k];
            let same = match (ours, v) {
                (Value::Array(a), Value::Array(b)) => a.iter().zip(b).all(|(x, y)| x.as_f64() == y.as_f64()),
                // send_task leaves ignore_result at None unless asked; both are falsy in Python.
                (Value::Bool(false), Value::Null) => k == "ignore_result",
                _ => ours == v,
            };
            assert!(same, "{name}: header {k}: ours {ours}, Celery's {v}");
        }
        assert_eq!(encoded.properties, raw.properties, "{name}: properties");
        assert_eq!(TaskMessage::decode(&encoded).expect("decode ours"), decoded, "{name}: round trip");
        let body: Value = serde_json::from_slice(&encoded.body).expect("JSON");
        let celery: Value = serde_json::from_slice(&raw.body).expect("JSON");
        assert_eq!(body, celery, "{name}: body");
    }
}

#[test]
fn a_new_message_has_celery_defaults() {
    let m = TaskMessage::new("demo.add", "id-1", vec![json!(1), json!(2)], Map::new()).encode();
    assert_eq!(m.headers["root_id"], "id-1");
    assert_eq!(m.headers["timelimit"], json!([null, null]));
    assert_eq!(m.headers["stamps"], json!({}));
    assert_eq!(m.headers["retries"], 0);
    assert_eq!(
        serde_json::from_slice::<Value>(&m.body).expect("JSON"),
        json!([[1, 2], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}])
    );
    assert_eq!(m.properties.content_type.as_deref(), Some("application/json"));
    assert_eq!(m.properties.content_encoding.as_deref(), Some("utf-8"));
    assert_eq!(m.properties.correlation_id.as_deref(), Some("id-1"));
}

#[test]
fn rejects_what_is_not_a_json_v2_task() {
    let mut raw = golden("task_add_args");
    raw.properties.content_type = Some("application/x-python-serialize".into());
    assert!(matches!(TaskMessage::decode(&raw), Err(ProtocolError::UnsupportedContentType(_))));
    let mut raw = golden("task_add_args");
    raw.headers.remove("task");
    assert_eq!(TaskMessage::decode(&raw), Err(ProtocolError::NotV2));
    let mut raw = golden("task_add_args");
    raw.body = br#"{"args": []}"#.to_vec();
    assert!(matches!(TaskMessage::decode(&raw), Err(ProtocolError::BadBody(_))));
    let mut raw = golden("task_add_args");
    raw.headers.insert("retries".into(), json!("two"));
    assert!(matches!(TaskMessage::decode(&raw), Err(ProtocolError::BadHeader { name: "retries", .. })));
}

#[test]
fn decodes_results_of_the_rpc_backend() {
    let r = ResultMessage::decode(&golden("result_success")).expect("decode");
    assert_eq!((r.status.as_str(), &r.result, r.traceback.as_deref()), ("SUCCESS", &json!(5), None));
    assert_eq!(r.date_done.as_deref(), Some("2026-01-02T03:04:05.678901+00:00"));
    assert!(r.exception().is_none());

    let r = ResultMessage::decode(&golden("result_failure")).expect("decode");
    let exc = r.exception().expect("a failure");
    assert_eq!((exc.exc_type.as_str(), exc.exc_module.as_deref()), ("ValueError", Some("builtins")));
    assert_eq!(exc.exc_message, json!(["boom", 42]), "the exception's args");
    assert_eq!(exc.message(), r#"["boom",42]"#);
    assert!(r.traceback.as_deref().is_some_and(|t| t.ends_with("ValueError: boom\n")));
}

#[test]
fn kombu_type_tags_become_plain_json() {
    let r = ResultMessage::decode(&golden("result_success_tagged")).expect("decode");
    assert_eq!(
        r.result,
        json!({
            "when": "2026-01-02T03:04:05.678901+00:00",
            "day": "2026-01-02",
            "amount": "12.50",
            "id": "44444444-4444-4444-8444-444444444444",
            "raw": "bytes",
        })
    );
}

#[test]
fn our_results_have_the_keys_celery_reads() {
    let task = TaskMessage::decode(&golden("task_add_args")).expect("decode");
    let ok = ResultMessage::success(&task, json!(5), "2026-01-02T03:04:05.678901+00:00".into()).encode();
    let celery = golden("result_success");
    let ours: Value = serde_json::from_slice(&ok.body).expect("JSON");
    let theirs: Value = serde_json::from_slice(&celery.body).expect("JSON");
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&ours), keys(&theirs));
    assert_eq!((&ours["status"], &ours["result"], &ours["task_id"]), (&json!("SUCCESS"), &json!(5), &json!(task.id)));
    assert_eq!(ok.properties.correlation_id.as_deref(), Some(task.id.as_str()));
    assert_eq!(ok.properties.delivery_mode, celery.properties.delivery_mode);
    assert_eq!(ok.properties.content_type, celery.properties.content_type);

    let exc = ExceptionInfo {
        exc_type: "ValueError".into(),
        exc_message: json!(["no"]),
        exc_module: Some("builtins".into()),
    };
    let failed = ResultMessage::failure(&task, &exc, None, "t".into()).encode();
    let body: Value = serde_json::from_slice(&failed.body).expect("JSON");
    assert_eq!(body["result"], json!({"exc_type": "ValueError", "exc_message": ["no"], "exc_module": "builtins"}));
    assert_eq!(body["status"], "FAILURE");
    assert_eq!(ResultMessage::decode(&failed).expect("decode").exception(), Some(exc));
}

#[test]
fn isoformat_matches_python() {
    // datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=utc).isoformat()
    let t = UNIX_EPOCH + Duration::from_micros(1_767_323_045_678_901);
    assert_eq!(isoformat_utc(t), "2026-01-02T03:04:05.678901+00:00");
    assert_eq!(isoformat_utc(UNIX_EPOCH), "1970-01-01T00:00:00.000000+00:00");
    // A leap day.
    assert_eq!(isoformat_utc(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000000+00:00");
}

#[test]
fn exception_messages_read_like_python_str() {
    let e = |m: Value| ExceptionInfo { exc_type: "E".into(), exc_message: m, exc_module: None };
    assert_eq!(e(json!(["boom"])).message(), "boom");
    assert_eq!(e(json!("plain")).message(), "plain");
    assert_eq!(e(json!([])).message(), "");
    assert_eq!(e(json!([7])).message(), "7");
}

#[test]
fn parses_the_times_celery_writes() {
    let t = UNIX_EPOCH + Duration::from_micros(1_767_323_045_678_901);
    assert_eq!(parse_isoformat("2026-01-02T03:04:05.678901+00:00"), Some(t));
    assert_eq!(parse_isoformat("2026-01-02T03:04:05.678901"), Some(t), "naive is UTC");
    assert_eq!(parse_isoformat("2026-01-02T03:04:05.678901Z"), Some(t));
    assert_eq!(parse_isoformat("2026-01-02T05:04:05.678901+02:00"), Some(t));
    assert_eq!(parse_isoformat("2026-01-01T22:34:05.678901-04:30"), Some(t));
    assert_eq!(parse_isoformat("2026-01-02T03:04:05"), Some(t - Duration::from_micros(678_901)));
    assert_eq!(parse_isoformat("2000-02-29T00:00:00+00:00"), Some(UNIX_EPOCH + Duration::from_secs(951_782_400)));
    for bad in ["", "2026-01-02", "2026-13-02T00:00:00", "2026-01-02T25:00:00", "yesterday", "2026-01-02Tab:00:00"] {
        assert_eq!(parse_isoformat(bad), None, "{bad}");
    }
    let now = SystemTime::now();
    let back = parse_isoformat(&isoformat_utc(now)).expect("our own format");
    assert_eq!(
        back.duration_since(UNIX_EPOCH).unwrap().as_micros(),
        now.duration_since(UNIX_EPOCH).unwrap().as_micros()
    );
}
