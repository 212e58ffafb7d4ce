//! The demo tasks (`warren-tasks worker --demo`), used by the Python interop tests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use crate::registry::{RetryPolicy, TaskContext, TaskOptions};
use crate::{Registry, TaskError};

/// `demo.flaky` is retried at most this many times, 1 s apart.
pub const FLAKY_MAX_RETRIES: u32 = 3;

/// Calls of `demo.flaky` so far, per key. Process-wide: it models an external dependency
/// that recovers, seen by this worker.
static FLAKY_CALLS: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);

pub fn register(r: &mut Registry) {
    r.register_named("demo.add", &["x", "y"], |(x, y): (i64, i64)| async move {
        x.checked_add(y).ok_or_else(|| TaskError::builtin("OverflowError", "integer overflow"))
    });
    r.register_named("demo.echo", &["value"], |(value,): (Value,)| async move { Ok(value) });
    r.register_named("demo.sleep", &["seconds"], |(seconds,): (f64,)| async move {
        let d = Duration::try_from_secs_f64(seconds)
            .map_err(|e| TaskError::builtin("ValueError", format!("seconds: {e}")))?;
        // Observes the soft time limit: raises SoftTimeLimitExceeded when it is reached first
        // (what an uncaught soft limit does to a Python task).
        let ctx = TaskContext::current();
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(seconds),
            _ = async { match &ctx { Some(c) => c.soft_limit().await, None => std::future::pending().await } } => {
                Err(TaskError::celery("SoftTimeLimitExceeded", format!("soft time limit exceeded after sleeping part of {seconds} s")))
            }
        }
    });
    // A chord body: the sum of a list of numbers (integers stay integers).
    r.register_named("demo.sum", &["values"], |(values,): (Vec<serde_json::Number>,)| async move { sum(&values) });
    r.register_named("demo.fail", &["message"], |(message,): (String,)| async move {
        Err::<Value, _>(TaskError::builtin("ValueError", message))
    });
    // Retried automatically (1 s apart, at most FLAKY_MAX_RETRIES times): each failure is a
    // retry through the delayed exchange; past the maximum it fails and is dead-lettered.
    r.register_named("demo.flaky", &["key", "failures"], |(key, failures): (String, u64)| async move {
        let n = {
            let mut calls = FLAKY_CALLS.lock().unwrap_or_else(|p| p.into_inner());
            let n = calls.get_or_insert_with(HashMap::new).entry(key).or_insert(0);
            *n += 1;
            *n
        };
        if n <= failures {
            return Err(TaskError::builtin("RuntimeError", format!("flaky failure {n} of {failures}")));
        }
        let retries = TaskContext::current().map_or(0, |c| c.retries);
        Ok(format!("ok after {retries} retries"))
    });
    r.configure(
        "demo.flaky",
        TaskOptions {
            retry: Some(RetryPolicy {
                max_retries: FLAKY_MAX_RETRIES,
                backoff_base: Duration::from_secs(1),
                backoff_max: Duration::from_secs(1),
                jitter: false,
                retry_on: vec!["RuntimeError".to_owned()],
            }),
            ..TaskOptions::default()
        },
    );
}

/// `demo.sum`: an integer when every value is one (overflow is an error, as `demo.add`),
/// else a float.
pub fn sum(values: &[serde_json::Number]) -> Result<Value, TaskError> {
    if values.iter().all(|n| n.is_i64()) {
        let mut total: i64 = 0;
        for n in values {
            total = total
                .checked_add(n.as_i64().unwrap_or(0))
                .ok_or_else(|| TaskError::builtin("OverflowError", "integer overflow"))?;
        }
        return Ok(total.into());
    }
    let total: f64 = values.iter().filter_map(serde_json::Number::as_f64).sum();
    Ok(serde_json::Number::from_f64(total).map_or(Value::Null, Value::Number))
}
