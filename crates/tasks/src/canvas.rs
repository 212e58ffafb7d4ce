//! Canvas: chains, link callbacks and errbacks, groups, and a broker-native chord.
//!
//! Signatures travel in the body's embed (`[args, kwargs, {callbacks, errbacks, chain,
//! chord}]`) as Celery serializes them: `{task, args, kwargs, options, subtask_type,
//! immutable}`. What a worker does with them (after Celery's `app/trace.py`):
//!
//! - **success**: every `callbacks` signature is sent with the result prepended to its args,
//!   (several as a group, as Celery sends them), then the last signature of `chain` (Celery keeps the chain reversed and pops from the
//!   end) with the result prepended and the rest of the chain in its own embed; both with
//!   `parent_id` = this task, `root_id` = this task's root. The ids sent become the result's
//!   `children` (`[[id, null], null]`, `AsyncResult.as_tuple()`);
//! - **failure** (final, not a retry): every `errbacks` signature is sent with the failed
//!   task's id as its first argument. That is what Celery 5 does for an errback task that the
//!   worker does not have (`_call_task_errbacks`, "old-style": `(task_id,)`); the new-style
//!   `(request, exc, traceback)` call only exists for a task of the same Python process.
//!   The steps of the chain that will not run get the same FAILURE as their result (Celery's
//!   `_fail_chain`), so the caller of a chain sees the error;
//! - **chord** (`embed.chord` = the body, with `chord_size`, and the `group` header): see
//!   [`Canvas::chord_part`]. No `celery.chord_unlock` polling task is ever sent.
//!
//! A signature is routed by its `queue` option, else to the queue its parent came from
//! (which is Celery's `task_default_queue` when nobody routes by name). All sends are
//! confirmed before the parent's delivery is acked; one that is not confirmed makes the
//! worker requeue the parent (it runs again: at least once, as in Celery).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::events::exception_repr;
use crate::protocol::{
    CONTENT_ENCODING_UTF8, CONTENT_TYPE_JSON, DELIVERY_MODE_PERSISTENT, Embed, ExceptionInfo, Properties, RawMessage,
    ResultMessage, TaskMessage,
};
use crate::{Error, amqp};

/// A task signature as Celery serializes one (a `dict` subclass).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    pub task: String,
    #[serde(default)]
    pub args: Vec<Value>,
    #[serde(default)]
    pub kwargs: Map<String, Value>,
    /// `apply_async` options: `task_id`, `reply_to`, `queue`, `group_id`, `group_index`,
    /// `priority`, `link`, `link_error`, `time_limit`, `soft_time_limit`, `expires` (an ISO
    /// 8601 time or seconds from now), `eta` (ISO 8601), `countdown` (seconds),
    /// `ignore_result` are honoured.
    #[serde(default)]
    pub options: Map<String, Value>,
    /// `null` for a task; `chain`, `group`, `chord` for nested canvases (not sent by us).
    #[serde(default)]
    pub subtask_type: Option<String>,
    /// Immutable signatures (`.si()`) do not get their parent's result as an argument.
    #[serde(default)]
    pub immutable: bool,
    /// The number of header tasks of a chord, on the chord's body (where Celery's
    /// `on_chord_part_return` reads `request.chord["chord_size"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chord_size: Option<u64>,
}

impl Signature {
    pub fn new(task: &str, args: Vec<Value>) -> Signature {
        Signature {
            task: task.to_owned(),
            args,
            kwargs: Map::new(),
            options: Map::new(),
            subtask_type: None,
            immutable: false,
            chord_size: None,
        }
    }

    pub fn with_kwargs(mut self, kwargs: Map<String, Value>) -> Signature {
        self.kwargs = kwargs;
        self
    }

    /// The queue this task is sent to (the `queue` option).
    pub fn with_queue(mut self, queue: &str) -> Signature {
        self.options.insert("queue".to_owned(), queue.into());
        self
    }

    /// `.si()`: the parent's result is not prepended to the arguments.
    pub fn immutable(mut self) -> Signature {
        self.immutable = true;
        self
    }

    pub fn with_option(mut self, name: &str, value: Value) -> Signature {
        self.options.insert(name.to_owned(), value);
        self
    }

    fn opt_str(&self, name: &str) -> Option<&str> {
        self.options.get(name).and_then(Value::as_str).filter(|s| !s.is_empty())
    }

    pub fn task_id(&self) -> Option<&str> {
        self.opt_str("task_id")
    }

    pub fn queue(&self) -> Option<&str> {
        self.opt_str("queue")
    }

    /// Reads one signature (a JSON object as Celery sends it).
    pub fn from_json(v: &Value) -> Result<Signature, String> {
        serde_json::from_value(v.clone()).map_err(|e| format!("bad signature {v}: {e}"))
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("signatures serialize")
    }

    /// The task message this signature sends: `prepend` (the parent's result) goes before
    /// the signature's own arguments unless it is immutable; `parent` sets `parent_id`,
    /// `root_id` and the default priority; `chain` is the rest of a chain (reversed, as
    /// Celery carries it).
    pub fn message(&self, prepend: Option<Value>, parent: Option<&TaskMessage>, chain: Vec<Signature>) -> TaskMessage {
        let id = self.task_id().map_or_else(crate::new_task_id, str::to_owned);
        let mut args = Vec::with_capacity(self.args.len() + 1);
        if let Some(v) = prepend
            && !self.immutable
        {
            args.push(v);
        }
        args.extend(self.args.iter().cloned());
        let mut msg = TaskMessage::new(&self.task, &id, args, self.kwargs.clone());
        if let Some(p) = parent {
            msg.parent_id = Some(p.id.clone());
            msg.root_id = p.root_id.clone();
            msg.priority = p.priority;
        }
        msg.reply_to = self.opt_str("reply_to").map(str::to_owned);
        msg.group = self.opt_str("group_id").map(str::to_owned);
        msg.group_index = self.options.get("group_index").and_then(Value::as_i64);
        if let Some(p) = self.options.get("priority").and_then(Value::as_u64) {
            msg.priority = u8::try_from(p).ok();
        }
        let secs = |k: &str| self.options.get(k).and_then(Value::as_f64);
        msg.timelimit = (secs("time_limit"), secs("soft_time_limit"));
        msg.ignore_result = self.options.get("ignore_result").and_then(Value::as_bool).unwrap_or(false);
        // The eta header only: a Rust worker that gets it early parks it in the broker's
        // delayed exchange, a Python worker holds it until due.
        msg.eta = match (self.options.get("eta"), self.options.get("countdown")) {
            (Some(Value::String(at)), _) => Some(at.clone()),
            (_, Some(Value::Number(secs))) => secs
                .as_f64()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .map(|d| crate::protocol::isoformat_utc(std::time::SystemTime::now() + d)),
            _ => None,
        };
        msg.expires = match self.options.get("expires") {
            Some(Value::String(at)) => Some(at.clone()),
            Some(Value::Number(secs)) => secs
                .as_f64()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .map(|d| crate::protocol::isoformat_utc(std::time::SystemTime::now() + d)),
            _ => None,
        };
        let list = |k: &str| match self.options.get(k) {
            None | Some(Value::Null) => Value::Null,
            Some(Value::Array(a)) => Value::Array(a.clone()),
            Some(one) => Value::Array(vec![one.clone()]),
        };
        msg.embed = Embed {
            callbacks: list("link"),
            errbacks: list("link_error"),
            chain: if chain.is_empty() { Value::Null } else { chain.iter().map(Signature::to_json).collect() },
            chord: self.options.get("chord").cloned().unwrap_or(Value::Null),
        };
        msg
    }
}

/// The signatures of one embed field: `null`, a list of signatures, or one signature.
pub fn signatures(v: &Value) -> Result<Vec<Signature>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items.iter().map(Signature::from_json).collect(),
        one => Ok(vec![Signature::from_json(one)?]),
    }
}

/// An entry of a result's `children`: Celery's `AsyncResult.as_tuple()` of a task sent
/// without a parent result object, `[[id, null], null]`.
pub fn child(id: &str) -> Value {
    json!([[id, null], null])
}

/// The messages of a chain (in order): ids fixed up front, the first message carrying the
/// rest reversed in its `chain`, each with `reply_to` so that every step answers the caller.
/// Returns the first message and the ids of all steps.
pub fn chain_messages(
    steps: &[Signature],
    reply_to: Option<&str>,
    default_queue: &str,
) -> Option<(TaskMessage, String, Vec<String>)> {
    let (first, rest) = steps.split_first()?;
    let mut ids = vec![first.task_id().map_or_else(crate::new_task_id, str::to_owned)];
    let mut later = Vec::with_capacity(rest.len());
    for s in rest {
        let mut s = s.clone();
        let id = s.task_id().map_or_else(crate::new_task_id, str::to_owned);
        s.options.insert("task_id".to_owned(), id.clone().into());
        if let Some(r) = reply_to {
            s.options.insert("reply_to".to_owned(), r.into());
        }
        // A Python worker routes a signature by its options only, so the queue goes in.
        if s.queue().is_none() {
            s.options.insert("queue".to_owned(), default_queue.into());
        }
        ids.push(id);
        later.push(s);
    }
    later.reverse();
    let mut first = first.clone();
    first.options.insert("task_id".to_owned(), ids[0].clone().into());
    let msg = first.message(None, None, later);
    let queue = first.queue().unwrap_or(default_queue).to_owned();
    Some((msg, queue, ids))
}

/// A chord's body as its header tasks carry it in `embed.chord`.
pub fn chord_body(body: &Signature, body_id: &str, group_id: &str, size: usize, reply_to: Option<&str>) -> Signature {
    let mut b = body.clone();
    b.options.insert("task_id".to_owned(), body_id.into());
    if let Some(r) = reply_to {
        b.options.insert("reply_to".to_owned(), r.into());
    }
    b.options.insert("group_id".to_owned(), group_id.into());
    b.chord_size = Some(size as u64);
    b
}

/// The per-chord queue of header results (`{index, task_id, status, result}` messages).
pub fn chord_results_queue(group_id: &str) -> String {
    format!("warren.chord.{group_id}")
}

/// The per-chord counter: `x-max-length` = size - 1 with `reject-publish`, so of the `size`
/// tokens published (one per header task) exactly one, the last, is nacked.
pub fn chord_counter_queue(group_id: &str) -> String {
    format!("warren.chord.{group_id}.count")
}

/// The chord queues are deleted this long after their last use (ms), should the chord never
/// complete (a header task lost for good).
pub const CHORD_EXPIRES_MS: i64 = 24 * 3600 * 1000;

/// How long the completing worker waits for header results that another worker holds
/// (only after a crash: see docs/tasks.md, "Chords").
const CHORD_COLLECT_PATIENCE: Duration = Duration::from_secs(10);

/// One header task's outcome in the chord results queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChordPart {
    pub index: i64,
    pub task_id: String,
    pub status: String,
    /// The value on SUCCESS, the exception (`{exc_type, exc_message, exc_module}`) on FAILURE.
    pub result: Value,
}

/// What the completing worker does with the header results: the body's arguments, or the
/// failure that fails it (Celery's `ChordError("Dependency <id> raised <repr>")`).
pub fn chord_outcome(parts: &[ChordPart]) -> Result<Vec<Value>, ExceptionInfo> {
    let mut sorted: Vec<&ChordPart> = parts.iter().collect();
    sorted.sort_by_key(|p| p.index);
    if let Some(bad) = sorted.iter().find(|p| p.status != "SUCCESS") {
        let exc: Option<ExceptionInfo> = serde_json::from_value(bad.result.clone()).ok();
        let reason = exc.map_or_else(|| bad.result.to_string(), |e| exception_repr(&e.exc_type, &e.message()));
        return Err(ExceptionInfo {
            exc_type: "ChordError".to_owned(),
            exc_message: json!([format!("Dependency {} raised {reason}", bad.task_id)]),
            exc_module: Some("celery.exceptions".to_owned()),
        });
    }
    Ok(sorted.into_iter().map(|p| p.result.clone()).collect())
}

/// The worker's side of the canvas: one confirm-mode channel per connection, reopened when
/// the broker closed it (a refused declaration, say), so that one bad signature does not
/// stop the canvas of every later task.
pub(crate) struct Canvas {
    conn: Arc<Connection>,
    ch: Mutex<Channel>,
    declared: Mutex<HashSet<String>>,
}

impl Canvas {
    pub(crate) async fn new(conn: Arc<Connection>) -> Result<Canvas, Error> {
        let ch = confirm_channel(&conn).await?;
        Ok(Canvas { conn, ch: Mutex::new(ch), declared: Mutex::new(HashSet::new()) })
    }

    /// The channel, a new one if the broker closed the last.
    async fn channel(&self) -> Result<Channel, Error> {
        let mut ch = self.ch.lock().await;
        if !ch.status().connected() {
            warn!("canvas channel closed by the broker; opening another");
            *ch = confirm_channel(&self.conn).await?;
        }
        Ok(ch.clone())
    }

    async fn send(&self, msg: &TaskMessage, queue: &str) -> Result<(), Error> {
        {
            let mut declared = self.declared.lock().await;
            if !declared.contains(queue) {
                // Declared as Celery declares it. A refusal (the queue exists with other
                // arguments) is not ours to fix: the message is still routed to it.
                if let Err(e) = crate::declare_task_queue(&self.channel().await?, queue).await {
                    warn!(queue, "could not declare the queue of a canvas task: {e}");
                }
                declared.insert(queue.to_owned());
            }
        }
        let raw = msg.encode();
        self.publish("", queue, &raw).await
    }

    async fn publish(&self, exchange: &str, key: &str, raw: &RawMessage) -> Result<(), Error> {
        if self.publish_confirmed(exchange, key, raw).await? {
            Ok(())
        } else {
            Err(Error::Closed("publish not confirmed (nack)"))
        }
    }

    async fn publish_confirmed(&self, exchange: &str, key: &str, raw: &RawMessage) -> Result<bool, Error> {
        let confirm = self
            .channel()
            .await?
            .basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), &raw.body, amqp::to_lapin(raw))
            .await?
            .await?;
        Ok(confirm.is_ack())
    }

    /// Everything a finished task (success, or failure with no retry left) sends before its
    /// result is published and its delivery acked; returns the result's `children`.
    pub(crate) async fn after_task(
        &self,
        queue: &str,
        task: &TaskMessage,
        outcome: Result<&Value, &ExceptionInfo>,
    ) -> Result<Vec<Value>, Error> {
        let children = match outcome {
            Ok(value) => self.after_success(queue, task, value).await?,
            Err(exc) => {
                self.after_failure(queue, task, exc).await?;
                Vec::new()
            }
        };
        self.chord_part(queue, task, outcome).await?;
        Ok(children)
    }

    /// After a success: the callbacks, then the chain's next step. Returns the `children`.
    pub(crate) async fn after_success(
        &self,
        queue: &str,
        task: &TaskMessage,
        value: &Value,
    ) -> Result<Vec<Value>, Error> {
        let plan = success_plan(queue, task, value).map_err(bad_embed)?;
        for (msg, q) in &plan.sends {
            self.send(msg, q).await?;
            info!(id = task.id, sent = msg.task, sent_id = msg.id, queue = q, "canvas: task sent after success");
        }
        Ok(plan.children)
    }

    /// After a final failure: the rest of the chain fails, the errbacks are sent.
    async fn after_failure(&self, queue: &str, task: &TaskMessage, exc: &ExceptionInfo) -> Result<(), Error> {
        let plan = failure_plan(queue, task, exc).map_err(bad_embed)?;
        for (reply_to, result) in &plan.results {
            self.publish("", reply_to, &result.encode()).await?;
        }
        for (msg, q) in &plan.sends {
            self.send(msg, q).await?;
            info!(id = task.id, errback = msg.task, errback_id = msg.id, queue = q, "canvas: errback sent");
        }
        Ok(())
    }

    /// A header task of a chord finished (success or final failure). Its outcome goes to the
    /// chord's results queue, then a token to the chord's counter queue, both confirmed.
    /// The counter refuses the last token (`x-max-length` = size - 1, `reject-publish`), so
    /// exactly one worker, the one whose token is nacked, completes the chord: it takes the
    /// `size` results, orders them by `group_index`, sends the body with the list as its first
    /// argument (or fails it with a `ChordError`), and deletes both queues.
    pub(crate) async fn chord_part(
        &self,
        queue: &str,
        task: &TaskMessage,
        outcome: Result<&Value, &ExceptionInfo>,
    ) -> Result<(), Error> {
        let Value::Object(_) = &task.embed.chord else {
            return Ok(());
        };
        let body = Signature::from_json(&task.embed.chord).map_err(bad_embed)?;
        let (Some(group_id), Some(index)) = (task.group.as_deref(), task.group_index) else {
            warn!(id = task.id, "a chord header task without group/group_index: chord ignored");
            return Ok(());
        };
        let Some(size) = body.chord_size.filter(|s| *s > 0) else {
            warn!(
                id = task.id,
                group_id,
                "a chord without chord_size (Celery's own chords keep it in their result backend): not completed here"
            );
            return Ok(());
        };
        let results_q = chord_results_queue(group_id);
        let counter_q = chord_counter_queue(group_id);
        self.declare_chord_queues(&results_q, &counter_q, size).await?;
        let part = ChordPart {
            index,
            task_id: task.id.clone(),
            status: if outcome.is_ok() { "SUCCESS" } else { "FAILURE" }.to_owned(),
            result: match outcome {
                Ok(v) => v.clone(),
                Err(e) => serde_json::to_value(e).expect("exceptions serialize"),
            },
        };
        self.publish("", &results_q, &json_message(&serde_json::to_value(&part).expect("parts serialize"))).await?;
        let token = json_message(&json!({"index": index, "task_id": task.id}));
        if self.publish_confirmed("", &counter_q, &token).await? {
            return Ok(()); // not the last one
        }
        info!(group_id, id = task.id, size, "chord: last header task done; completing the chord");
        self.complete_chord(queue, task, &body, group_id, size).await
    }

    async fn declare_chord_queues(&self, results_q: &str, counter_q: &str, size: u64) -> Result<(), Error> {
        let ch = self.channel().await?;
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        let mut args = FieldTable::default();
        args.insert("x-expires".into(), AMQPValue::LongLongInt(CHORD_EXPIRES_MS));
        ch.queue_declare(results_q.into(), durable, args.clone()).await?;
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(i64::try_from(size - 1).unwrap_or(i64::MAX)));
        args.insert("x-overflow".into(), AMQPValue::LongString(LongString::from("reject-publish")));
        ch.queue_declare(counter_q.into(), durable, args).await?;
        Ok(())
    }

    async fn complete_chord(
        &self,
        queue: &str,
        task: &TaskMessage,
        body: &Signature,
        group_id: &str,
        size: u64,
    ) -> Result<(), Error> {
        let results_q = chord_results_queue(group_id);
        let ch = self.channel().await?;
        let deadline = tokio::time::Instant::now() + CHORD_COLLECT_PATIENCE;
        let (parts, ackers) = loop {
            let mut by_index: BTreeMap<i64, ChordPart> = BTreeMap::new();
            let mut ackers = Vec::new();
            let mut duplicates = Vec::new();
            while let Some(got) = ch.basic_get(results_q.as_str().into(), BasicGetOptions { no_ack: false }).await? {
                let part: Option<ChordPart> = serde_json::from_slice(&got.delivery.data).ok();
                match part {
                    Some(p) if (0..size as i64).contains(&p.index) && !by_index.contains_key(&p.index) => {
                        by_index.insert(p.index, p);
                        ackers.push(got.delivery.acker);
                    }
                    // A header task that ran twice (crash before its ack) or garbage.
                    _ => duplicates.push(got.delivery.acker),
                }
            }
            if by_index.len() as u64 == size {
                for a in duplicates {
                    a.ack(BasicAckOptions::default()).await?;
                }
                break (by_index.into_values().collect::<Vec<_>>(), ackers);
            }
            // Incomplete. With a duplicate, a re-run header task counted twice: the missing
            // task's own token will be refused, and that worker completes the chord.
            let dup = !duplicates.is_empty();
            for a in duplicates {
                a.ack(BasicAckOptions::default()).await?;
            }
            for a in ackers {
                a.nack(BasicNackOptions { requeue: true, multiple: false }).await?;
            }
            if dup {
                warn!(
                    group_id,
                    have = by_index.len(),
                    size,
                    "chord: a duplicate result; the missing task will complete it"
                );
                return Ok(());
            }
            // Without one, another completing worker holds results for a moment.
            if tokio::time::Instant::now() >= deadline {
                warn!(group_id, have = by_index.len(), size, "chord: results missing; left for the missing task");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let body_id = body.task_id().map_or_else(crate::new_task_id, str::to_owned);
        let mut body_sig = body.clone();
        body_sig.options.insert("task_id".to_owned(), body_id.clone().into());
        body_sig.chord_size = None;
        match chord_outcome(&parts) {
            Ok(values) => {
                let msg = body_sig.message(Some(Value::Array(values)), Some(task), Vec::new());
                self.send(&msg, body.queue().unwrap_or(queue)).await?;
                info!(group_id, body = msg.task, body_id, "chord: body sent");
            }
            Err(exc) => {
                warn!(group_id, body_id, "chord failed: {}", exc.message());
                let body_msg = body_sig.message(None, Some(task), Vec::new());
                if let Some(reply_to) = body_msg.reply_to.as_deref() {
                    let date = crate::protocol::isoformat_utc(std::time::SystemTime::now());
                    let result = ResultMessage::failure(&body_msg, &exc, None, date).encode();
                    self.publish("", reply_to, &result).await?;
                }
                // The body's errbacks run, as Celery's chord_error_from_stack runs them.
                self.after_failure(queue, &body_msg, &exc).await?;
            }
        }
        for a in ackers {
            a.ack(BasicAckOptions::default()).await?;
        }
        for q in [results_q, chord_counter_queue(group_id)] {
            if let Err(e) = ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await {
                warn!(q, "chord queue not deleted (it expires): {e}");
            }
        }
        Ok(())
    }
}

/// What a worker sends after a task: task messages with their queues, and (after a failure)
/// results for the steps that will not run, with their `reply_to`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub sends: Vec<(TaskMessage, String)>,
    pub results: Vec<(String, ResultMessage)>,
    /// The finished task's `children` (what was sent).
    pub children: Vec<Value>,
}

/// After `task` (consumed from `queue`) returned `value`: its link callbacks with the value
/// prepended (one as is, several as a group), then the chain's next step with the value
/// prepended and the rest of the chain. Signatures go to their `queue` option, else to
/// `queue`.
pub fn success_plan(queue: &str, task: &TaskMessage, value: &Value) -> Result<Plan, String> {
    let mut plan = Plan::default();
    let all = signatures(&task.embed.callbacks)?;
    // Group callbacks are applied one by one, the plain ones together (Celery's trace.py).
    for g in all.iter().filter(|s| is_group(s)) {
        send_group(&mut plan, g, queue, task, value)?;
    }
    let callbacks: Vec<Signature> = all.into_iter().filter(|s| !is_group(s)).filter(sendable).collect();
    let (callbacks, group_id) = grouped(callbacks, callbacks_grouped);
    let mut ids = Vec::new();
    for sig in &callbacks {
        let msg = sig.message(Some(value.clone()), Some(task), Vec::new());
        ids.push(msg.id.clone());
        plan.sends.push((msg, sig.queue().unwrap_or(queue).to_owned()));
    }
    match group_id {
        Some(g) => plan.children.push(group_child(&g, &ids)),
        None => plan.children.extend(ids.iter().map(|id| child(id))),
    }
    let mut chain = signatures(&task.embed.chain)?;
    if let Some(next) = chain.pop() {
        if is_group(&next) {
            if !chain.is_empty() {
                // group | more steps is a chord (Celery upgrades it), which needs a backend.
                warn!(id = task.id, "a group followed by more chain steps is not supported; only the group is sent");
            }
            send_group(&mut plan, &next, queue, task, value)?;
            return Ok(plan);
        }
        if !sendable(&next) {
            return Ok(plan);
        }
        let msg = next.message(Some(value.clone()), Some(task), chain);
        plan.children.push(child(&msg.id));
        plan.sends.push((msg, next.queue().unwrap_or(queue).to_owned()));
    }
    Ok(plan)
}

/// After `task` failed for good with `exc`: every remaining chain step that has an id and a
/// `reply_to` gets the same FAILURE (Celery's `_fail_chain`), and the errbacks are sent, as a
/// group, with the failed task's id as their first argument.
pub fn failure_plan(queue: &str, task: &TaskMessage, exc: &ExceptionInfo) -> Result<Plan, String> {
    let mut plan = Plan::default();
    for sig in signatures(&task.embed.chain)?.iter().filter(|s| s.task_id().is_some()) {
        let step = sig.message(None, Some(task), Vec::new());
        if let Some(reply_to) = step.reply_to.clone() {
            let date = crate::protocol::isoformat_utc(std::time::SystemTime::now());
            plan.results.push((reply_to, ResultMessage::failure(&step, exc, None, date)));
        }
    }
    let errbacks: Vec<Signature> = signatures(&task.embed.errbacks)?.into_iter().filter(sendable).collect();
    // Celery sends old-style errbacks as a group, even just one.
    let (errbacks, _) = grouped(errbacks, |_| true);
    for sig in &errbacks {
        let msg = sig.message(Some(Value::String(task.id.clone())), Some(task), Vec::new());
        plan.sends.push((msg, sig.queue().unwrap_or(queue).to_owned()));
    }
    Ok(plan)
}

async fn confirm_channel(conn: &Connection) -> Result<Channel, Error> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

fn callbacks_grouped(n: usize) -> bool {
    n > 1
}

/// The signatures as the members of a new group (`group_id`, `group_index` options) when
/// `as_group(len)`; with the group's id.
pub fn grouped(sigs: Vec<Signature>, as_group: impl Fn(usize) -> bool) -> (Vec<Signature>, Option<String>) {
    if sigs.is_empty() || !as_group(sigs.len()) {
        return (sigs, None);
    }
    let group_id = crate::new_task_id();
    let sigs = sigs
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.with_option("group_id", group_id.clone().into()).with_option("group_index", i.into()))
        .collect();
    (sigs, Some(group_id))
}

/// A `children` entry for a group: Celery's `GroupResult.as_tuple()`,
/// `[[group_id, null], [[[id, null], null], ...]]`.
pub fn group_child(group_id: &str, ids: &[String]) -> Value {
    json!([[group_id, null], ids.iter().map(|id| child(id)).collect::<Vec<_>>()])
}

fn is_group(s: &Signature) -> bool {
    s.subtask_type.as_deref() == Some("group")
}

/// A `group` signature (a chain's next step, or a link) applied with the parent's result:
/// its tasks (`kwargs.tasks`), each with the value prepended, the group's id (its
/// `task_id` option, as Celery freezes it) and their index; one `children` entry.
fn send_group(plan: &mut Plan, g: &Signature, queue: &str, task: &TaskMessage, value: &Value) -> Result<(), String> {
    let members = signatures(g.kwargs.get("tasks").unwrap_or(&Value::Null))?;
    let group_id = g.task_id().map_or_else(crate::new_task_id, str::to_owned);
    let mut ids = Vec::with_capacity(members.len());
    for (i, m) in members.into_iter().filter(sendable).enumerate() {
        let mut m = m.with_option("group_id", group_id.clone().into());
        if !m.options.contains_key("group_index") {
            m = m.with_option("group_index", i.into());
        }
        let q = m.queue().or(g.queue()).unwrap_or(queue).to_owned();
        let msg = m.message(Some(value.clone()), Some(task), Vec::new());
        ids.push(msg.id.clone());
        plan.sends.push((msg, q));
    }
    plan.children.push(group_child(&group_id, &ids));
    Ok(())
}

fn sendable(s: &Signature) -> bool {
    match s.subtask_type.as_deref() {
        None => true,
        Some(t) => {
            warn!(task = s.task, subtask_type = t, "nested canvas in a callback is not supported; not sent");
            false
        }
    }
}

fn bad_embed(e: String) -> Error {
    Error::Protocol(crate::protocol::ProtocolError::BadBody(format!("embed: {e}")))
}

fn json_message(v: &Value) -> RawMessage {
    RawMessage {
        headers: Map::new(),
        properties: Properties {
            content_type: Some(CONTENT_TYPE_JSON.to_owned()),
            content_encoding: Some(CONTENT_ENCODING_UTF8.to_owned()),
            delivery_mode: Some(DELIVERY_MODE_PERSISTENT),
            ..Properties::default()
        },
        body: serde_json::to_vec(v).expect("JSON values serialize"),
    }
}

#[cfg(test)]
mod tests;
