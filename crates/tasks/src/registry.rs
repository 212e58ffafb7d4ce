//! Tasks are async Rust functions with typed arguments, registered under their Celery names.
//!
//! A task's argument type `A` is read with serde from the message's `args` (a JSON array:
//! tuples, or structs read positionally) or, when only `kwargs` are given, from the `kwargs`
//! object (structs, maps). [`Registry::register_named`] names the parameters, so that
//! positional and keyword arguments can be mixed as in Python: they are put in order into one
//! array before `A` (typically a tuple) is read.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::protocol::ExceptionInfo;

/// A task's failure: a type name and a message, which a Python client sees as an exception
/// of that type. With a module (e.g. `builtins`) Celery rebuilds that very class; without
/// one it makes up an `Exception` subclass with the type's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskError {
    pub exc_type: String,
    pub exc_module: Option<String>,
    pub message: String,
    /// `Some` when the task asks to be retried ([`TaskError::retry`]): the countdown, or
    /// `None` inside for the task's [`RetryPolicy`] backoff.
    pub retry: Option<Option<Duration>>,
}

impl TaskError {
    /// An error of a type of our own (no Python module).
    pub fn new(exc_type: &str, message: impl Into<String>) -> TaskError {
        TaskError { exc_type: exc_type.to_owned(), exc_module: None, message: message.into(), retry: None }
    }

    /// One of Python's built-in exceptions (`ValueError`, `TypeError`, ...).
    pub fn builtin(exc_type: &str, message: impl Into<String>) -> TaskError {
        TaskError {
            exc_type: exc_type.to_owned(),
            exc_module: Some("builtins".to_owned()),
            message: message.into(),
            retry: None,
        }
    }

    /// Asks for this error to be retried (Celery's `self.retry(exc=..., countdown=...)`),
    /// whatever the task's `retry_on` list says: after `countdown`, or after the backoff of
    /// the task's [`RetryPolicy`] when `None`. Retries stop at the policy's `max_retries`
    /// (3, Celery's default, without a policy); then the error is the task's failure.
    pub fn retry(self, countdown: Option<Duration>) -> TaskError {
        TaskError { retry: Some(countdown), ..self }
    }

    /// An error of one of Celery's own exception classes (`celery.exceptions`), such as
    /// `SoftTimeLimitExceeded`, rebuilt as that class by a Python client.
    pub fn celery(exc_type: &str, message: impl Into<String>) -> TaskError {
        TaskError {
            exc_type: exc_type.to_owned(),
            exc_module: Some("celery.exceptions".to_owned()),
            message: message.into(),
            retry: None,
        }
    }

    /// In the JSON form `prepare_exception` uses: the message is the exception's args.
    pub fn to_exception_info(&self) -> ExceptionInfo {
        ExceptionInfo {
            exc_type: self.exc_type.clone(),
            exc_message: Value::Array(vec![Value::String(self.message.clone())]),
            exc_module: self.exc_module.clone(),
        }
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.exc_type, self.message)
    }
}

impl std::error::Error for TaskError {}

/// Automatic retries of a task (Celery's `autoretry_for`, `max_retries`, `retry_backoff`,
/// `retry_backoff_max`, `retry_jitter`), registered with [`Registry::configure`].
///
/// The n-th retry (n = 0 for the first) waits `min(backoff_base * 2^n, backoff_max)`; with
/// `jitter`, a uniformly random time between half of that and all of it (never longer than the
/// bound, never shorter than half of it, so a retry is not immediate). The waiting is done by
/// the broker (the delayed exchange), not in a worker slot.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first run; when they are spent the error is the task's failure and
    /// the message goes to the dead-letter queue.
    pub max_retries: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub jitter: bool,
    /// Exception type names that are retried; empty = every error.
    pub retry_on: Vec<String>,
}

impl Default for RetryPolicy {
    /// Celery's `max_retries` (3) and its `retry_backoff=True` curve: 1 s doubling, at most
    /// 10 min (`retry_backoff_max`), with jitter.
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(600),
            jitter: true,
            retry_on: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// Whether an error of this type is retried automatically.
    pub fn retries(&self, exc_type: &str) -> bool {
        self.retry_on.is_empty() || self.retry_on.iter().any(|t| t == exc_type)
    }

    /// The wait before retry number `retries + 1`; `random` is uniform in [0, 1).
    pub fn countdown(&self, retries: u32, random: f64) -> Duration {
        let factor = 2f64.powi(i32::try_from(retries.min(64)).unwrap_or(64));
        let bound = self.backoff_base.mul_f64(factor.min(1e9)).min(self.backoff_max);
        if self.jitter { bound.mul_f64(0.5 + 0.5 * random.clamp(0.0, 1.0)).min(bound) } else { bound }
    }
}

/// What a task is registered with besides its function: retries and default time limits
/// (a message's `timelimit` header overrides the limits).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskOptions {
    pub retry: Option<RetryPolicy>,
    /// Hard limit: the task is aborted and fails with `TimeLimitExceeded`.
    pub time_limit: Option<Duration>,
    /// Soft limit: [`TaskContext::is_soft_limit_reached`] turns true and
    /// [`TaskContext::soft_limit`] completes; the task decides what to do.
    pub soft_time_limit: Option<Duration>,
}

/// The running task's context, reachable from inside the task with [`TaskContext::current`]
/// (a tokio task-local the worker sets, so task signatures do not change).
#[derive(Clone, Debug)]
pub struct TaskContext {
    pub id: String,
    /// How many times this task was retried before this run (the `retries` header).
    pub retries: i64,
    pub soft_deadline: Option<tokio::time::Instant>,
}

tokio::task_local! {
    static CONTEXT: TaskContext;
}

impl TaskContext {
    /// The context of the task being run, `None` outside a worker (e.g. a unit test).
    pub fn current() -> Option<TaskContext> {
        CONTEXT.try_with(Clone::clone).ok()
    }

    /// Runs `fut` with `self` as its context.
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        CONTEXT.scope(self, fut).await
    }

    pub fn is_soft_limit_reached(&self) -> bool {
        self.soft_deadline.is_some_and(|d| tokio::time::Instant::now() >= d)
    }

    /// Completes when the soft time limit is reached; never without one.
    pub async fn soft_limit(&self) {
        match self.soft_deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    }
}

pub type TaskFuture = Pin<Box<dyn Future<Output = Result<Value, TaskError>> + Send>>;
type Handler = Arc<dyn Fn(Vec<Value>, Map<String, Value>) -> TaskFuture + Send + Sync>;

/// Task names to handlers. Built before the worker starts, then shared read-only.
#[derive(Default, Clone)]
pub struct Registry {
    tasks: HashMap<String, Handler>,
    options: HashMap<String, TaskOptions>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.tasks.keys().collect();
        names.sort();
        f.debug_struct("Registry").field("tasks", &names).finish()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers `f` under `name`; its argument comes from `args`, or from `kwargs` when
    /// there are no positional arguments.
    pub fn register<A, R, F, Fut>(&mut self, name: &str, f: F)
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
    {
        self.insert(name, None, f);
    }

    /// Registers `f` with named parameters: keyword arguments fill the positions after the
    /// positional ones, by name, and `A` is read from the combined array.
    pub fn register_named<A, R, F, Fut>(&mut self, name: &str, params: &[&str], f: F)
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
    {
        let params: Vec<String> = params.iter().map(|p| (*p).to_owned()).collect();
        self.insert(name, Some(params), f);
    }

    fn insert<A, R, F, Fut>(&mut self, name: &str, params: Option<Vec<String>>, f: F)
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
    {
        let f = Arc::new(f);
        let task = name.to_owned();
        let handler: Handler = Arc::new(move |args, kwargs| {
            let input = match &params {
                Some(params) => positional(&task, params, args, kwargs),
                None => unnamed(&task, args, kwargs),
            };
            let parsed = input.and_then(|v| {
                serde_json::from_value::<A>(v).map_err(|e| TaskError::builtin("TypeError", format!("{task}(): {e}")))
            });
            let fut = parsed.map(|a| f(a));
            Box::pin(async move {
                let value = fut?.await?;
                serde_json::to_value(value)
                    .map_err(|e| TaskError::builtin("TypeError", format!("result is not JSON: {e}")))
            })
        });
        self.tasks.insert(name.to_owned(), handler);
    }

    /// Sets the retry policy and default time limits of the task `name`.
    pub fn configure(&mut self, name: &str, options: TaskOptions) {
        self.options.insert(name.to_owned(), options);
    }

    /// The options of `name` (defaults when none were configured).
    pub fn options(&self, name: &str) -> TaskOptions {
        self.options.get(name).cloned().unwrap_or_default()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tasks.contains_key(name)
    }

    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tasks.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Starts the task `name`; `None` when no such task is registered.
    pub fn call(&self, name: &str, args: Vec<Value>, kwargs: Map<String, Value>) -> Option<TaskFuture> {
        self.tasks.get(name).map(|h| h(args, kwargs))
    }
}

fn unnamed(task: &str, args: Vec<Value>, kwargs: Map<String, Value>) -> Result<Value, TaskError> {
    match (args.is_empty(), kwargs.is_empty()) {
        (_, true) => Ok(Value::Array(args)),
        (true, false) => Ok(Value::Object(kwargs)),
        (false, false) => Err(TaskError::builtin(
            "TypeError",
            format!("{task}() takes positional or keyword arguments, not both (register it with parameter names)"),
        )),
    }
}

fn positional(
    task: &str,
    params: &[String],
    args: Vec<Value>,
    mut kwargs: Map<String, Value>,
) -> Result<Value, TaskError> {
    if args.len() > params.len() {
        return Err(TaskError::builtin(
            "TypeError",
            format!("{task}() takes {} positional arguments but {} were given", params.len(), args.len()),
        ));
    }
    if let Some(p) = params[..args.len()].iter().find(|p| kwargs.contains_key(p.as_str())) {
        return Err(TaskError::builtin("TypeError", format!("{task}() got multiple values for argument '{p}'")));
    }
    let mut all = args;
    for p in &params[all.len()..] {
        match kwargs.remove(p) {
            Some(v) => all.push(v),
            None if kwargs.is_empty() => break,
            None => return Err(TaskError::builtin("TypeError", format!("{task}() missing argument: '{p}'"))),
        }
    }
    if let Some(k) = kwargs.keys().next() {
        let reason =
            if params.contains(k) { "got multiple values for argument" } else { "got an unexpected keyword argument" };
        return Err(TaskError::builtin("TypeError", format!("{task}() {reason} '{k}'")));
    }
    Ok(Value::Array(all))
}

#[cfg(test)]
mod tests;
