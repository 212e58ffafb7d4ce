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
}

impl TaskError {
    /// An error of a type of our own (no Python module).
    pub fn new(exc_type: &str, message: impl Into<String>) -> TaskError {
        TaskError { exc_type: exc_type.to_owned(), exc_module: None, message: message.into() }
    }

    /// One of Python's built-in exceptions (`ValueError`, `TypeError`, ...).
    pub fn builtin(exc_type: &str, message: impl Into<String>) -> TaskError {
        TaskError { exc_type: exc_type.to_owned(), exc_module: Some("builtins".to_owned()), message: message.into() }
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

pub type TaskFuture = Pin<Box<dyn Future<Output = Result<Value, TaskError>> + Send>>;
type Handler = Arc<dyn Fn(Vec<Value>, Map<String, Value>) -> TaskFuture + Send + Sync>;

/// Task names to handlers. Built before the worker starts, then shared read-only.
#[derive(Default, Clone)]
pub struct Registry {
    tasks: HashMap<String, Handler>,
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
