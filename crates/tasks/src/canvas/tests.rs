//! The canvas against what Celery sends (tests/golden/canvas_*.json, made by gen.py with
//! Celery's own `chain`, `group`, `chord` and `link`/`link_error`).

use serde_json::{Value, json};

use super::*;
use crate::protocol::{ResultMessage, TaskMessage};

/// The golden messages of one file (one document or a list of them), as raw messages.
fn golden(name: &str) -> Vec<RawMessage> {
    let path = format!("{}/tests/golden/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let doc: Value = serde_json::from_str(&text).expect("golden JSON");
    let docs = match doc {
        Value::Array(d) => d,
        one => vec![one],
    };
    docs.iter()
        .map(|d| {
            let p = &d["properties"];
            let s = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_owned);
            RawMessage {
                headers: d.get("headers").and_then(Value::as_object).cloned().unwrap_or_default(),
                properties: Properties {
                    correlation_id: s("correlation_id"),
                    reply_to: s("reply_to"),
                    content_type: s("content_type"),
                    content_encoding: s("content_encoding"),
                    delivery_mode: p.get("delivery_mode").and_then(Value::as_u64).map(|v| v as u8),
                    priority: p.get("priority").and_then(Value::as_u64).map(|v| v as u8),
                },
                body: d["body"].as_str().expect("body").as_bytes().to_vec(),
            }
        })
        .collect()
}

fn task(name: &str, i: usize) -> TaskMessage {
    TaskMessage::decode(&golden(name)[i]).expect("decodes")
}

fn id(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

#[test]
fn signatures_round_trip_as_celery_writes_them() {
    for (name, i) in [("canvas_chain", 0), ("canvas_link", 0), ("canvas_chord", 0), ("canvas_chord", 1)] {
        let t = task(name, i);
        for field in [&t.embed.callbacks, &t.embed.errbacks, &t.embed.chain] {
            let sigs = signatures(field).expect("signatures");
            let back: Vec<Value> = sigs.iter().map(Signature::to_json).collect();
            assert_eq!(if back.is_empty() { Value::Null } else { Value::Array(back) }, *field, "{name}");
        }
        if !t.embed.chord.is_null() {
            assert_eq!(Signature::from_json(&t.embed.chord).expect("body").to_json(), t.embed.chord);
        }
    }
}

#[test]
fn the_next_step_of_a_celery_chain() {
    // chain(add(1, 2), add(3), add(4, queue="other")): the rest travels reversed.
    let first = task("canvas_chain", 0);
    assert_eq!((first.id.clone(), first.args.clone()), (id(100), vec![json!(1), json!(2)]));
    let mut chain = signatures(&first.embed.chain).expect("chain");
    assert_eq!(chain.iter().map(|s| s.args.clone()).collect::<Vec<_>>(), [vec![json!(4)], vec![json!(3)]]);
    // What the worker sends after add(1, 2) returned 3.
    let next_sig = chain.pop().expect("a next step");
    let next = next_sig.message(Some(json!(3)), Some(&first), chain.clone());
    assert_eq!((next.task.as_str(), next.args.clone()), ("demo.add", vec![json!(3), json!(3)]));
    assert_eq!(next.id, id(102), "the id the caller already holds");
    assert_eq!((next.parent_id.clone(), next.root_id.clone()), (Some(id(100)), id(100)));
    assert_eq!(next.reply_to.as_deref(), Some("golden-reply-queue"));
    assert_eq!(next_sig.queue(), None, "routed to the queue its parent came from");
    // Its embed carries the last step, as Celery's `chain=chain[:-1]`.
    let golden_chain = first.embed.chain.as_array().expect("list");
    assert_eq!(next.embed.chain, json!([golden_chain[0].clone()]));
    // ... which, after add(3, 3) = 6, is sent to its own queue with nothing left.
    let raw = next.encode();
    let next = TaskMessage::decode(&raw).expect("our message decodes");
    let mut rest = signatures(&next.embed.chain).expect("chain");
    let last_sig = rest.pop().expect("last");
    let last = last_sig.message(Some(json!(6)), Some(&next), rest);
    assert_eq!(
        (last.args.clone(), last.id.clone(), last_sig.queue()),
        (vec![json!(6), json!(4)], id(101), Some("other"))
    );
    assert_eq!((last.parent_id.clone(), last.root_id.clone()), (Some(id(102)), id(100)));
    assert_eq!(last.embed.chain, Value::Null);
    assert_eq!(last.encode().headers["parent_id"], json!(id(102)));
}

#[test]
fn our_chain_messages_have_celerys_shape() {
    let steps = [
        Signature::new("demo.add", vec![json!(1), json!(2)]),
        Signature::new("demo.add", vec![json!(3)]),
        Signature::new("demo.add", vec![json!(4)]).with_queue("other"),
    ];
    let (first, queue, ids) = chain_messages(&steps, Some("golden-reply-queue"), "celery").expect("steps");
    assert_eq!((queue.as_str(), ids.len(), first.id.as_str()), ("celery", 3, ids[0].as_str()));
    let celery = task("canvas_chain", 0);
    let ours = first.embed.chain.as_array().expect("list").clone();
    let theirs = celery.embed.chain.as_array().expect("list").clone();
    assert_eq!(ours.len(), theirs.len());
    for (o, t) in ours.iter().zip(&theirs) {
        let keys = |v: &Value| v.as_object().expect("object").keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(o), keys(t));
        for k in ["task", "args", "kwargs", "subtask_type", "immutable"] {
            assert_eq!(o[k], t[k], "{k}");
        }
        assert_eq!(o["options"]["reply_to"], t["options"]["reply_to"]);
    }
    // Reversed, with the ids handed out up front (the last id is the chain's result).
    assert_eq!(ours[0]["options"]["task_id"], json!(ids[2]));
    assert_eq!(ours[1]["options"]["task_id"], json!(ids[1]));
    // Steps without a queue get the default one written in (a Python worker needs it).
    assert_eq!(
        (ours[0]["options"]["queue"].clone(), ours[1]["options"]["queue"].clone()),
        (json!("other"), json!("celery"))
    );
    assert_eq!(chain_messages(&[], None, "celery"), None);
}

#[test]
fn callbacks_get_the_result_errbacks_the_failed_task_id() {
    let t = task("canvas_link", 0);
    let callbacks = signatures(&t.embed.callbacks).expect("callbacks");
    assert_eq!((callbacks.len(), callbacks[0].queue()), (1, Some("py")));
    let cb = callbacks[0].message(Some(json!(42)), Some(&t), Vec::new());
    assert_eq!((cb.task.as_str(), cb.args.clone()), ("demo.echo", vec![json!(42)]));
    assert_eq!((cb.parent_id.clone(), cb.root_id.clone()), (Some(t.id.clone()), t.id.clone()));
    assert_eq!(cb.reply_to, None, "Celery's caller does not ask for a callback's result");
    let errbacks = signatures(&t.embed.errbacks).expect("errbacks");
    let sent: Vec<TaskMessage> =
        errbacks.iter().map(|s| s.message(Some(Value::String(t.id.clone())), Some(&t), Vec::new())).collect();
    assert_eq!(sent[0].args, [json!(id(200))], "old-style errback: (task_id,)");
    assert_eq!(sent[1].args, [json!(1)], "an immutable errback keeps its own arguments");
    assert!(sent.iter().all(|m| m.parent_id.as_deref() == Some(id(200).as_str())));
}

#[test]
fn group_members_carry_the_group_headers() {
    let celery: Vec<TaskMessage> = (0..2).map(|i| task("canvas_group", i)).collect();
    for (i, t) in celery.iter().enumerate() {
        assert_eq!((t.group.clone(), t.group_index), (Some(id(301)), Some(i as i64)));
        // What our client sends for the same member.
        let ours = Signature::new("demo.add", vec![json!(i), json!(i)])
            .with_option("group_id", id(301).into())
            .with_option("group_index", i.into())
            .with_option("task_id", t.id.clone().into())
            .message(None, None, Vec::new());
        let (o, c) = (ours.encode(), golden("canvas_group")[i].clone());
        for h in ["group", "group_index", "id", "root_id", "parent_id", "task"] {
            assert_eq!(o.headers[h], c.headers[h], "{h}");
        }
        assert_eq!(ours.args, t.args);
    }
}

#[test]
fn chord_headers_carry_the_body_and_its_size() {
    let celery = task("canvas_chord", 1);
    assert_eq!((celery.group.clone(), celery.group_index), (Some(id(401)), Some(1)));
    let body = Signature::from_json(&celery.embed.chord).expect("body");
    assert_eq!((body.task.as_str(), body.task_id(), body.chord_size), ("demo.sum", Some(id(402).as_str()), None));
    // Ours: Celery's body plus `chord_size`, where on_chord_part_return looks for it.
    let ours = chord_body(&Signature::new("demo.sum", vec![]), &id(402), &id(401), 2, Some("golden-reply-queue"));
    let mut ours_json = ours.to_json();
    assert_eq!(ours_json["chord_size"], json!(2));
    ours_json.as_object_mut().expect("object").remove("chord_size");
    assert_eq!(ours_json, celery.embed.chord);
    // A header message built with the chord option has Celery's shape.
    let header = Signature::new("demo.add", vec![json!(1), json!(1)])
        .with_option("group_id", id(401).into())
        .with_option("group_index", 1.into())
        .with_option("chord", ours.to_json())
        .message(None, None, Vec::new());
    let decoded = TaskMessage::decode(&header.encode()).expect("decodes");
    assert_eq!(Signature::from_json(&decoded.embed.chord).expect("body"), ours);
    assert_eq!((decoded.group, decoded.group_index), (Some(id(401)), Some(1)));
}

#[test]
fn a_chord_orders_its_results_and_fails_on_a_failed_header() {
    let part = |index: i64, status: &str, result: Value| ChordPart {
        index,
        task_id: format!("t{index}"),
        status: status.to_owned(),
        result,
    };
    let parts = vec![part(2, "SUCCESS", json!(4)), part(0, "SUCCESS", json!(0)), part(1, "SUCCESS", json!(2))];
    assert_eq!(chord_outcome(&parts), Ok(vec![json!(0), json!(2), json!(4)]));
    let exc = json!({"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"});
    let failed = vec![part(1, "FAILURE", exc), part(0, "SUCCESS", json!(0))];
    let err = chord_outcome(&failed).expect_err("a header failed");
    assert_eq!((err.exc_type.as_str(), err.exc_module.as_deref()), ("ChordError", Some("celery.exceptions")));
    assert_eq!(err.message(), "Dependency t1 raised ValueError('boom')");
    // The part message round-trips.
    let p = part(3, "SUCCESS", json!({"a": 1}));
    assert_eq!(serde_json::from_value::<ChordPart>(serde_json::to_value(&p).expect("json")).expect("part"), p);
    assert_eq!(chord_results_queue("g"), "warren.chord.g");
    assert_eq!(chord_counter_queue("g"), "warren.chord.g.count");
}

#[test]
fn children_are_celerys_result_tuples() {
    let raw = &golden("result_children")[0];
    let celery: Value = serde_json::from_slice(&raw.body).expect("json");
    let decoded = ResultMessage::decode(raw).expect("decodes");
    let group_ids =
        ["77777777-7777-4777-8777-777777777777".to_owned(), "88888888-8888-4888-8888-888888888888".to_owned()];
    let children = vec![
        child("55555555-5555-4555-8555-555555555555"),
        group_child("66666666-6666-4666-8666-666666666666", &group_ids),
    ];
    assert_eq!(decoded.children, children);
    let ours = ResultMessage {
        task_id: decoded.task_id.clone(),
        status: "SUCCESS".into(),
        result: json!(3),
        traceback: None,
        children,
        date_done: decoded.date_done.clone(),
        group_id: None,
        parent_id: None,
    };
    assert_eq!(serde_json::to_value(&ours).expect("json"), celery);
}

#[test]
fn several_callbacks_and_errbacks_go_as_a_group() {
    let sigs = vec![Signature::new("a", vec![]), Signature::new("b", vec![])];
    let (same, none) = grouped(sigs.clone(), |n| n > 1);
    assert!(none.is_some());
    assert_eq!(same[1].options["group_index"], json!(1));
    assert_eq!(same[0].options["group_id"], json!(none.clone().expect("a group")));
    let m = same[1].message(None, None, Vec::new());
    assert_eq!((m.group, m.group_index), (none, Some(1)));
    let (one, no_group) = grouped(sigs[..1].to_vec(), |n| n > 1);
    assert_eq!((one, no_group), (sigs[..1].to_vec(), None));
    assert_eq!(grouped(Vec::new(), |_| true), (Vec::new(), None));
}

#[test]
fn after_a_chain_step_succeeds_the_worker_sends_the_next_one() {
    let first = task("canvas_chain", 0);
    let plan = success_plan("q1", &first, &json!(3)).expect("plan");
    assert_eq!(plan.sends.len(), 1);
    let (next, queue) = &plan.sends[0];
    assert_eq!((next.id.clone(), next.args.clone(), queue.as_str()), (id(102), vec![json!(3), json!(3)], "q1"));
    assert_eq!(plan.children, [child(&id(102))]);
    assert!(plan.results.is_empty());
    // The last step has nothing left to send.
    let last_step =
        success_plan("q1", &TaskMessage::decode(&next.encode()).expect("decodes"), &json!(6)).expect("plan").sends;
    assert_eq!(
        (last_step[0].0.id.clone(), last_step[0].1.as_str(), last_step[0].0.args.clone()),
        (id(101), "other", vec![json!(6), json!(4)])
    );
    let done = TaskMessage::decode(&last_step[0].0.encode()).expect("decodes");
    assert_eq!(success_plan("other", &done, &json!(10)).expect("plan"), Plan::default());
}

#[test]
fn after_a_failure_the_rest_of_the_chain_fails_and_errbacks_are_sent() {
    let first = task("canvas_chain", 0);
    let exc = ExceptionInfo { exc_type: "ValueError".into(), exc_message: json!(["no"]), exc_module: None };
    let plan = failure_plan("q1", &first, &exc).expect("plan");
    assert!(plan.sends.is_empty() && plan.children.is_empty());
    let failed: Vec<(&str, &str, &str)> =
        plan.results.iter().map(|(r, m)| (r.as_str(), m.task_id.as_str(), m.status.as_str())).collect();
    let (a, b) = (id(101), id(102));
    assert_eq!(failed, [("golden-reply-queue", a.as_str(), "FAILURE"), ("golden-reply-queue", b.as_str(), "FAILURE")]);
    assert_eq!(plan.results[0].1.exception(), Some(exc.clone()));

    let linked = task("canvas_link", 0);
    let plan = failure_plan("q1", &linked, &exc).expect("plan");
    assert!(plan.results.is_empty());
    let sent: Vec<(Vec<Value>, &str, Option<i64>)> =
        plan.sends.iter().map(|(m, q)| (m.args.clone(), q.as_str(), m.group_index)).collect();
    assert_eq!(sent, [(vec![json!(id(200))], "q1", Some(0)), (vec![json!(1)], "q1", Some(1))]);
    assert!(plan.sends[0].0.group.is_some() && plan.sends[0].0.group == plan.sends[1].0.group);
    // On success, the link (to its own queue) and no errback.
    let plan = success_plan("q1", &linked, &json!(42)).expect("plan");
    let sent: Vec<(&str, &str, Vec<Value>)> =
        plan.sends.iter().map(|(m, q)| (m.task.as_str(), q.as_str(), m.args.clone())).collect();
    assert_eq!(sent, [("demo.echo", "py", vec![json!(42)])]);
    assert_eq!(plan.children, [child(&plan.sends[0].0.id)]);
}

#[test]
fn several_links_are_one_group_child() {
    let mut t = task("canvas_link", 0);
    t.embed.callbacks = json!([Signature::new("a", vec![]).to_json(), Signature::new("b", vec![]).to_json()]);
    let plan = success_plan("q1", &t, &json!(1)).expect("plan");
    let group_id = plan.sends[0].0.group.clone().expect("a group");
    let ids: Vec<String> = plan.sends.iter().map(|(m, _)| m.id.clone()).collect();
    assert_eq!(plan.children, [group_child(&group_id, &ids)]);
    // Nested canvases other than groups are not sent.
    t.embed.callbacks = json!([{"task": "celery.chord", "args": [], "kwargs": {}, "options": {},
                                "subtask_type": "chord", "immutable": false}]);
    assert_eq!(success_plan("q1", &t, &json!(1)).expect("plan"), Plan::default());
    t.embed.callbacks = json!("not a signature");
    assert!(success_plan("q1", &t, &json!(1)).is_err());
}

#[test]
fn signature_options_become_headers() {
    let parent = task("canvas_link", 0);
    let sig = Signature::new("demo.sleep", vec![json!(1)])
        .with_option("time_limit", json!(10))
        .with_option("soft_time_limit", json!(5.5))
        .with_option("priority", json!(3))
        .with_option("expires", json!("2099-01-01T00:00:00+00:00"))
        .with_option("link", Signature::new("demo.echo", vec![]).to_json())
        .with_option("link_error", json!([Signature::new("demo.echo", vec![]).to_json()]))
        .immutable();
    let m = sig.message(Some(json!("ignored: immutable")), Some(&parent), Vec::new());
    assert_eq!(m.args, [json!(1)]);
    assert_eq!(
        (m.timelimit, m.priority, m.expires.as_deref()),
        ((Some(10.0), Some(5.5)), Some(3), Some("2099-01-01T00:00:00+00:00"))
    );
    assert_eq!(
        (signatures(&m.embed.callbacks).expect("cb").len(), signatures(&m.embed.errbacks).expect("eb").len()),
        (1, 1)
    );
    let later = Signature::new("x", vec![])
        .with_option("expires", json!(60))
        .with_option("countdown", json!(30))
        .message(None, None, Vec::new());
    let at = |v: &Option<String>| crate::protocol::parse_isoformat(v.as_deref().expect("set")).expect("iso");
    let now = std::time::SystemTime::now();
    assert!(at(&later.expires) > now + std::time::Duration::from_secs(50));
    assert!(at(&later.eta) > now + std::time::Duration::from_secs(20) && at(&later.eta) < at(&later.expires));
    let eta = Signature::new("x", vec![]).with_option("eta", json!("2030-01-01T00:00:00+00:00"));
    assert_eq!(eta.message(None, None, Vec::new()).eta.as_deref(), Some("2030-01-01T00:00:00+00:00"));
}

#[test]
fn a_chain_ending_in_a_group_sends_the_group() {
    // chain(add(1, 2), group(add(10), add(20))): after add(1, 2) = 3, both members get 3.
    let first = task("canvas_chain_group", 0);
    let plan = success_plan("q1", &first, &json!(3)).expect("plan");
    type Sent<'a> = (Vec<Value>, Option<String>, Option<i64>, String, &'a str);
    let sent: Vec<Sent> = plan
        .sends
        .iter()
        .map(|(m, q)| (m.args.clone(), m.group.clone(), m.group_index, m.id.clone(), q.as_str()))
        .collect();
    let group_id = Some(id(503));
    assert_eq!(
        sent,
        [
            (vec![json!(3), json!(10)], group_id.clone(), Some(0), id(501), "q1"),
            (vec![json!(3), json!(20)], group_id.clone(), Some(1), id(502), "q1"),
        ]
    );
    assert!(plan.sends.iter().all(|(m, _)| m.reply_to.as_deref() == Some("golden-reply-queue")));
    assert_eq!(plan.children, [group_child(&id(503), &[id(501), id(502)])]);
    // The same group as a link.
    let mut linked = task("canvas_link", 0);
    linked.embed.callbacks = json!([first.embed.chain[0].clone()]);
    let plan = success_plan("q1", &linked, &json!(1)).expect("plan");
    assert_eq!(
        plan.sends.iter().map(|(m, _)| m.args.clone()).collect::<Vec<_>>(),
        [vec![json!(1), json!(10)], vec![json!(1), json!(20)]]
    );
}
