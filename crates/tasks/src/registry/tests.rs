use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::*;

fn kwargs(v: Value) -> Map<String, Value> {
    v.as_object().expect("object").clone()
}

async fn call(r: &Registry, name: &str, args: Value, kw: Value) -> Result<Value, TaskError> {
    let args = args.as_array().expect("array").clone();
    r.call(name, args, kwargs(kw)).expect("registered").await
}

fn demo() -> Registry {
    let mut r = Registry::new();
    crate::demo::register(&mut r);
    r
}

#[tokio::test]
async fn tuples_take_positional_arguments() {
    let mut r = Registry::new();
    r.register("add", |(x, y): (i64, i64)| async move { Ok(x + y) });
    assert_eq!(call(&r, "add", json!([2, 3]), json!({})).await, Ok(json!(5)));
    let err = call(&r, "add", json!([2]), json!({})).await.expect_err("too few");
    assert_eq!((err.exc_type.as_str(), err.exc_module.as_deref()), ("TypeError", Some("builtins")));
    assert!(call(&r, "add", json!([1, "x"]), json!({})).await.is_err());
    assert!(r.call("nope", vec![], Map::new()).is_none());
}

#[tokio::test]
async fn structs_take_keyword_or_positional_arguments() {
    #[derive(Deserialize)]
    struct Greet {
        name: String,
        #[serde(default)]
        shout: bool,
    }
    let mut r = Registry::new();
    r.register("greet", |g: Greet| async move { Ok(if g.shout { g.name.to_uppercase() } else { g.name }) });
    assert_eq!(call(&r, "greet", json!([]), json!({"name": "ann", "shout": true})).await, Ok(json!("ANN")));
    assert_eq!(call(&r, "greet", json!(["bob", false]), json!({})).await, Ok(json!("bob")));
    let err = call(&r, "greet", json!(["bob"]), json!({"shout": true})).await.expect_err("mixed");
    assert_eq!(err.exc_type, "TypeError");
}

#[tokio::test]
async fn named_parameters_mix_positional_and_keyword_like_python() {
    let r = demo();
    assert_eq!(call(&r, "demo.add", json!([2, 3]), json!({})).await, Ok(json!(5)));
    assert_eq!(call(&r, "demo.add", json!([2]), json!({"y": 3})).await, Ok(json!(5)));
    assert_eq!(call(&r, "demo.add", json!([]), json!({"y": 3, "x": 4})).await, Ok(json!(7)));
    let err = call(&r, "demo.add", json!([1]), json!({"x": 3})).await.expect_err("twice");
    assert!(err.message.contains("multiple values for argument 'x'"), "{err}");
    let err = call(&r, "demo.add", json!([1, 2]), json!({"z": 3})).await.expect_err("unknown");
    assert!(err.message.contains("unexpected keyword argument 'z'"), "{err}");
    let err = call(&r, "demo.add", json!([1, 2, 3]), json!({})).await.expect_err("too many");
    assert!(err.message.contains("takes 2 positional arguments but 3 were given"), "{err}");
}

#[tokio::test]
async fn demo_tasks() {
    let r = demo();
    let nested = json!({"a": [1, {"b": null}], "c": "ü"});
    assert_eq!(call(&r, "demo.echo", json!([nested.clone()]), json!({})).await, Ok(nested.clone()));
    assert_eq!(call(&r, "demo.echo", json!([]), json!({"value": nested.clone()})).await, Ok(nested));
    assert_eq!(call(&r, "demo.sleep", json!([0]), json!({})).await, Ok(json!(0.0)));
    let err = call(&r, "demo.sleep", json!([-1]), json!({})).await.expect_err("negative");
    assert_eq!(err.exc_type, "ValueError");
    assert_eq!(call(&r, "demo.sum", json!([[1, 2, 3]]), json!({})).await, Ok(json!(6)));
    assert_eq!(call(&r, "demo.sum", json!([]), json!({"values": [1, 2.5]})).await, Ok(json!(3.5)));
    assert_eq!(call(&r, "demo.sum", json!([[]]), json!({})).await, Ok(json!(0)));
    let err = call(&r, "demo.sum", json!([[1, "x"]]), json!({})).await.expect_err("not numbers");
    assert_eq!(err.exc_type, "TypeError");
    let err = call(&r, "demo.fail", json!(["it broke"]), json!({})).await.expect_err("fails");
    assert_eq!(err, TaskError::builtin("ValueError", "it broke"));
    assert_eq!(
        err.to_exception_info(),
        crate::protocol::ExceptionInfo {
            exc_type: "ValueError".into(),
            exc_message: json!(["it broke"]),
            exc_module: Some("builtins".into())
        }
    );
    for _ in 0..2 {
        assert!(call(&r, "demo.flaky", json!(["registry-test", 2]), json!({})).await.is_err());
    }
    // N in the text is the retries header of the run that succeeded (the worker's context).
    let ctx = crate::registry::TaskContext { id: "t".into(), retries: 2, soft_deadline: None };
    let third = ctx.scope(call(&r, "demo.flaky", json!(["registry-test", 2]), json!({}))).await;
    assert_eq!(third, Ok(json!("ok after 2 retries")));
    let policy = r.options("demo.flaky").retry.expect("demo.flaky retries");
    assert_eq!(
        (policy.max_retries, policy.countdown(0, 0.9), policy.countdown(5, 0.1)),
        (3, Duration::from_secs(1), Duration::from_secs(1))
    );
    assert_eq!(r.names(), ["demo.add", "demo.echo", "demo.fail", "demo.flaky", "demo.sleep", "demo.sum"]);
}

#[tokio::test]
async fn results_that_are_not_json_are_type_errors() {
    let mut r = Registry::new();
    r.register("bad", |(): ()| async move {
        let mut m = std::collections::HashMap::new();
        m.insert((1, 2), 3);
        Ok(m)
    });
    let err = call(&r, "bad", json!([]), json!({})).await.expect_err("not JSON");
    assert_eq!(err.exc_type, "TypeError");
}

#[test]
fn backoff_doubles_up_to_the_maximum() {
    let p = RetryPolicy {
        max_retries: 10,
        backoff_base: Duration::from_millis(500),
        backoff_max: Duration::from_secs(5),
        jitter: false,
        retry_on: vec![],
    };
    let waits: Vec<u128> = (0..6).map(|n| p.countdown(n, 0.3).as_millis()).collect();
    assert_eq!(waits, [500, 1000, 2000, 4000, 5000, 5000]);
    // Huge retry counts neither overflow nor pass the maximum.
    assert_eq!(p.countdown(u32::MAX, 0.3), Duration::from_secs(5));
}

#[test]
fn jitter_stays_between_half_the_bound_and_the_bound() {
    let p = RetryPolicy { jitter: true, ..RetryPolicy::default() };
    for n in 0..12 {
        let bound = Duration::from_secs(1).mul_f64(2f64.powi(n as i32)).min(Duration::from_secs(600));
        assert_eq!(p.countdown(n, 0.0), bound / 2, "retry {n}");
        assert!(p.countdown(n, 0.999_999) <= bound, "retry {n}");
        for _ in 0..50 {
            let d = p.countdown(n, fastrand::f64());
            assert!(d >= bound / 2 && d <= bound, "retry {n}: {d:?} not in [{:?}, {bound:?}]", bound / 2);
        }
    }
    // Out-of-range randomness is clamped.
    assert_eq!(p.countdown(0, 7.0), Duration::from_secs(1));
    assert_eq!(p.countdown(0, -1.0), Duration::from_millis(500));
}

#[test]
fn retry_on_selects_error_types() {
    let any = RetryPolicy::default();
    assert!(any.retries("ValueError") && any.retries("Whatever"));
    let some = RetryPolicy { retry_on: vec!["RuntimeError".into()], ..RetryPolicy::default() };
    assert!(some.retries("RuntimeError") && !some.retries("ValueError"));
    let e = TaskError::builtin("ValueError", "x").retry(Some(Duration::from_secs(2)));
    assert_eq!(e.retry, Some(Some(Duration::from_secs(2))));
}

#[tokio::test]
async fn the_context_exposes_the_soft_limit() {
    assert!(TaskContext::current().is_none());
    let ctx = TaskContext {
        id: "t".into(),
        retries: 0,
        soft_deadline: Some(tokio::time::Instant::now() + Duration::from_millis(50)),
    };
    ctx.scope(async {
        let c = TaskContext::current().expect("inside the scope");
        assert!(!c.is_soft_limit_reached());
        c.soft_limit().await;
        assert!(c.is_soft_limit_reached());
    })
    .await;
    // demo.sleep stops at the soft limit with SoftTimeLimitExceeded.
    let mut r = Registry::new();
    crate::demo::register(&mut r);
    let ctx = TaskContext {
        id: "t".into(),
        retries: 0,
        soft_deadline: Some(tokio::time::Instant::now() + Duration::from_millis(50)),
    };
    let started = std::time::Instant::now();
    let err = ctx.scope(call(&r, "demo.sleep", json!([5]), json!({}))).await.expect_err("soft limit");
    assert_eq!(
        (err.exc_type.as_str(), err.exc_module.as_deref()),
        ("SoftTimeLimitExceeded", Some("celery.exceptions"))
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}
