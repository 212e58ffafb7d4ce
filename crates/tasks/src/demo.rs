//! The demo tasks (`warren-tasks worker --demo`), used by the Python interop tests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use crate::{Registry, TaskError};

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
        tokio::time::sleep(d).await;
        Ok(seconds)
    });
    r.register_named("demo.fail", &["message"], |(message,): (String,)| async move {
        Err::<Value, _>(TaskError::builtin("ValueError", message))
    });
    // No retries yet: each failing call is a failed task; the caller sends it again.
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
        Ok(format!("ok after {failures} retries"))
    });
}
