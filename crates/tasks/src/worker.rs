//! The worker: consumes task queues, runs each delivery on its own tokio task, acks late.
//!
//! Rules (Celery's `acks_late=True` semantics, which are what make a crash safe):
//! - at most `concurrency` tasks run at once: `basic.qos(prefetch_count = concurrency)` per
//!   consumer, and a semaphore across all queues of the worker;
//! - a delivery is acked after its task finished, on success and on failure, and after its
//!   result was published, so a crash loses nothing (the task may run twice);
//! - a task whose `eta` is still ahead is handed to the broker's `x-delayed-message`
//!   exchange (republished with `x-delay`, confirmed, then the original acked) instead of
//!   being held by the worker; it comes back when due (without that exchange type the
//!   worker holds it, in one of its slots);
//! - a failed task that asks for a retry (its `RetryPolicy` or `TaskError::retry`) is
//!   republished with the same id, `retries` + 1 and an `eta`, through the delayed exchange
//!   (confirmed before the ack), and the caller gets a RETRY state; once its retries are spent
//!   it fails and its message goes to `<queue>.dead` with the error in `x-exception-*` headers;
//! - an expired task (`expires` passed) is not run: acked and answered REVOKED; tasks the
//!   broker expired and dead-lettered to `<queue>.expired` (a policy) are answered the same;
//! - time limits (`timelimit` header, else the task's options): the soft one is seen by the
//!   task through its `TaskContext`; at the hard one the task is aborted and fails with
//!   `TimeLimitExceeded`;
//! - after a task (success, or failure with no retry left) its canvas is sent, confirmed,
//!   before its result: link callbacks and the chain's next step, or errbacks and the
//!   chain's remaining steps failed; a chord part (see `crate::canvas`). Not confirmed: the
//!   delivery is requeued;
//! - messages that are not tasks we can run (unknown name, not protocol v2, not JSON) are
//!   rejected without requeue and logged; an unknown name also gets Celery's NotRegistered
//!   failure as its result, as a Python worker stores it;
//! - on shutdown the consumers are cancelled, running tasks get `grace` to finish, then the
//!   connection closes and the broker requeues whatever is still unacked;
//! - a lost connection is retried with exponential backoff; its running tasks are dropped
//!   (their deliveries are redelivered by the broker).

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::canvas::Canvas;
use crate::events::{Events, exception_repr};
use crate::protocol::{ExceptionInfo, RawMessage, ResultMessage, TaskMessage, isoformat_utc, parse_isoformat};
use crate::registry::TaskContext;
use crate::{Error, Registry, TaskError, amqp};

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// `amqp://user:pass@host:port/vhost`
    pub broker: String,
    pub queues: Vec<String>,
    /// Tasks running at once (and the prefetch count).
    pub concurrency: u16,
    /// How long running tasks may take to finish after a shutdown signal.
    pub grace: Duration,
    /// Send Celery's monitoring events (`celery worker -E`).
    pub events: bool,
    /// Extend a running task's lease this often (Warren's `amq.warren.lease`), so that the
    /// broker's consumer timeout never fires while it runs; `None`: never.
    pub lease_interval: Option<Duration>,
}

impl WorkerConfig {
    pub fn new(broker: &str) -> WorkerConfig {
        WorkerConfig {
            broker: broker.to_owned(),
            queues: vec!["celery".to_owned()],
            concurrency: 4,
            grace: Duration::from_secs(30),
            events: false,
            lease_interval: Some(crate::lease::DEFAULT_LEASE_INTERVAL),
        }
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Runs until `shutdown` completes, reconnecting when the connection is lost.
pub async fn run(
    config: WorkerConfig,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    assert!(config.concurrency > 0, "concurrency must be at least 1");
    let mut shutdown = pin!(shutdown);
    let mut backoff = BACKOFF_MIN;
    loop {
        match session(&config, &registry, shutdown.as_mut(), &mut backoff).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                // Jitter, so that many workers do not come back in lockstep.
                let delay = backoff.mul_f64(0.5 + fastrand::f64());
                warn!("no broker connection ({e}); reconnecting in {:.1} s", delay.as_secs_f64());
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.as_mut() => return Ok(()),
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// One connection's life. `Ok` after a graceful shutdown, `Err` when the connection or a
/// consumer was lost.
async fn session(
    config: &WorkerConfig,
    registry: &Arc<Registry>,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    backoff: &mut Duration,
) -> Result<(), Error> {
    let conn = tokio::select! {
        c = Connection::connect(&config.broker, ConnectionProperties::default()) => c?,
        _ = shutdown.as_mut() => return Ok(()),
    };
    *backoff = BACKOFF_MIN;
    let conn = Arc::new(conn); // shared with the canvas, which reopens its channel
    let ch = conn.create_channel().await?;
    ch.basic_qos(config.concurrency, BasicQosOptions::default()).await?;
    for q in &config.queues {
        crate::declare_task_queue(&ch, q).await?;
    }
    let delay_ch = delayed_channel(&conn, &config.broker, &config.queues).await?;
    // Retries and dead letters are republished in confirm mode before the original is acked.
    let confirm_ch = conn.create_channel().await?;
    confirm_ch.confirm_select(ConfirmSelectOptions::default()).await?;
    for q in &config.queues {
        let durable = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
        confirm_ch.queue_declare(dead_letter_queue(q).as_str().into(), durable, FieldTable::default()).await?;
        confirm_ch.queue_declare(expired_queue(q).as_str().into(), durable, FieldTable::default()).await?;
    }
    // Canvas (chain, callbacks, errbacks, chord): its own confirm-mode channel.
    let canvas = Arc::new(Canvas::new(Arc::clone(&conn)).await?);
    let events = if config.events { Some(Arc::new(Events::new(&conn).await?)) } else { None };
    let lease = match config.lease_interval {
        Some(every) if crate::lease::supported(&conn).await => Some(every),
        _ => None,
    };
    let _heartbeat = events.as_ref().map(|ev| {
        let ev = Arc::clone(ev);
        AbortOnDrop(tokio::spawn(async move {
            ev.worker("worker-online").await;
            loop {
                tokio::time::sleep(crate::events::HEARTBEAT).await;
                ev.worker("worker-heartbeat").await;
            }
        }))
    });
    let (tx, mut rx) = mpsc::channel::<Result<(Source, Delivery), Error>>(usize::from(config.concurrency));
    let mut tags = Vec::new();
    let mut forwarders = JoinSet::new();
    // Each task queue, and its `.expired` queue: where a policy dead-letters the tasks the
    // broker dropped at their AMQP expiration, so that they are reported REVOKED too.
    let consumed = config
        .queues
        .iter()
        .flat_map(|q| [(q.clone(), Source::Tasks(q.clone())), (expired_queue(q), Source::Expired(q.clone()))]);
    for (i, (q, source)) in consumed.enumerate() {
        // Our own tags, so that a consumer the broker cancelled comes back under its tag.
        let tag = format!("warren-tasks.{}.{i}", std::process::id());
        let mut consumer = consume(&ch, &q, &tag).await?;
        tags.push(consumer.tag());
        let (tx, ch) = (tx.clone(), ch.clone());
        forwarders.spawn(async move {
            loop {
                while let Some(d) = consumer.next().await {
                    if tx.send(d.map(|d| (source.clone(), d)).map_err(Error::from)).await.is_err() {
                        return;
                    }
                }
                // The stream ended: outside shutdown (which stops the forwarders first) the
                // broker cancelled the consumer, e.g. Warren's consumer timeout, which also
                // requeued its unacked deliveries (their tasks, still running here, may run
                // again elsewhere; their late acks are ignored). Consume again.
                warn!(queue = q, "consumer cancelled by the broker; consuming again");
                match consume(&ch, &q, &tag).await {
                    Ok(c) => consumer = c,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
    }
    drop(tx);
    info!(queues = ?config.queues, concurrency = config.concurrency, tasks = ?registry.names(), "worker ready");

    let (acks, acks_task) = crate::acks::Acks::start(ch.clone());
    let acks_task = AbortOnDrop(acks_task);
    let slots = Arc::new(Semaphore::new(usize::from(config.concurrency)));
    let mut running = JoinSet::new();
    let lost = loop {
        tokio::select! {
            _ = shutdown.as_mut() => break None,
            d = rx.recv() => match d {
                Some(Ok((source, delivery))) => {
                    let tag = delivery.delivery_tag;
                    acks.delivered(tag);
                    let slot = Arc::clone(&slots).acquire_owned().await.expect("the semaphore is never closed");
                    let chans = Channels {
                        ch: ch.clone(),
                        delay_ch: delay_ch.clone(),
                        confirm_ch: confirm_ch.clone(),
                        events: events.clone(),
                        canvas: Arc::clone(&canvas),
                        lease,
                        acks: Arc::clone(&acks),
                    };
                    let registry = Arc::clone(registry);
                    running.spawn(async move {
                        match source {
                            Source::Tasks(queue) => handle(&chans, &registry, &queue, delivery).await,
                            Source::Expired(queue) => dead_lettered(&chans, &queue, delivery).await,
                        }
                        chans.acks.handled(tag);
                        drop(slot);
                    });
                }
                Some(Err(e)) => break Some(e),
                None => break Some(Error::Closed("consumers ended")),
            },
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
    };
    forwarders.abort_all();
    if let Some(e) = lost {
        running.abort_all();
        return Err(e);
    }

    info!(running = running.len(), "shutting down: cancelling consumers");
    for tag in tags {
        if let Err(e) = ch.basic_cancel(tag, BasicCancelOptions::default()).await {
            warn!("basic.cancel: {e}");
        }
    }
    let drained = tokio::time::timeout(config.grace, async { while running.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(left = running.len(), "grace period over; unfinished tasks go back to the queue");
        running.abort_all();
    }
    // The acks of the tasks that finished (not of those aborted above: those go back).
    let mut acks_task = acks_task;
    acks.close(&mut acks_task.0).await;
    if let Some(ev) = &events {
        ev.worker("worker-offline").await;
    }
    if let Err(e) = conn.close(200, "worker shutdown".into()).await {
        warn!("connection.close: {e}");
    }
    Ok(())
}

async fn consume(ch: &Channel, queue: &str, tag: &str) -> Result<lapin::Consumer, Error> {
    Ok(ch.basic_consume(queue.into(), tag.into(), BasicConsumeOptions::default(), FieldTable::default()).await?)
}

/// A confirm-mode channel for parking early tasks in the delayed exchange (republished tasks
/// must be confirmed before their original is acked), or `None` when the broker has no
/// `x-delayed-message` exchange type (RabbitMQ without the plugin): early tasks are then
/// held in the worker until due, as a Python worker holds them.
async fn delayed_channel(conn: &Connection, broker: &str, queues: &[String]) -> Result<Option<Channel>, Error> {
    if !crate::has_delayed_exchange(broker).await? {
        warn!("no delayed exchange (x-delayed-message); tasks with a future eta are held in the worker until due");
        return Ok(None);
    }
    // Its own channel: a refused declaration closes the channel it was made on.
    let ch = conn.create_channel().await?;
    for q in queues {
        if let Err(e) = crate::declare_delayed(&ch, q).await {
            warn!("no delayed exchange ({e}); tasks with a future eta are held in the worker until due");
            return Ok(None);
        }
    }
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(Some(ch))
}

/// The dead-letter queue of a task queue: tasks whose retries are spent, with the error in
/// their `x-exception-*` headers.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// Where the broker's dead-lettering of a task queue should send expired tasks (a policy:
/// `dead-letter-exchange` `""`, `dead-letter-routing-key` `<queue>.expired`); the worker
/// consumes it and reports them REVOKED.
pub fn expired_queue(queue: &str) -> String {
    format!("{queue}.expired")
}

struct Channels {
    ch: Channel,
    delay_ch: Option<Channel>,
    confirm_ch: Channel,
    events: Option<Arc<Events>>,
    canvas: Arc<Canvas>,
    /// How often running tasks extend their lease, when the broker supports it.
    lease: Option<Duration>,
    /// Late acks of finished tasks, batched.
    acks: Arc<crate::acks::Acks>,
}

impl Channels {
    async fn event(&self, event_type: &str, fields: Value) {
        if let (Some(ev), Value::Object(fields)) = (&self.events, fields) {
            ev.send(event_type, fields).await;
        }
    }
}

async fn handle(chans: &Channels, registry: &Registry, queue: &str, delivery: Delivery) {
    let (ch, delay_ch) = (&chans.ch, &chans.delay_ch);
    let Delivery { delivery_tag, properties, data, acker, redelivered, .. } = delivery;
    let raw = amqp::from_lapin(&properties, data);
    let task = match TaskMessage::decode(&raw) {
        Ok(t) => t,
        Err(e) => {
            error!(delivery_tag, "rejecting a message that is not a task we can read: {e}");
            reject(&acker).await;
            return;
        }
    };
    let Some(fut) = registry.call(&task.task, task.args.clone(), task.kwargs.clone()) else {
        error!(task = task.task, id = task.id, "rejecting a task of unknown name (NotRegistered)");
        let exc = ExceptionInfo {
            exc_type: "NotRegistered".to_owned(),
            exc_message: Value::Array(vec![Value::String(task.task.clone())]),
            exc_module: Some("celery.exceptions".to_owned()),
        };
        publish_result(ch, &task, ResultMessage::failure(&task, &exc, None, now())).await;
        // As a Python worker's mark_as_failure: errbacks, the rest of a chain, a chord part.
        if let Err(e) = chans.canvas.after_task(queue, &task, Err(&exc)).await {
            warn!(id = task.id, "canvas messages of an unknown task not sent: {e}");
        }
        reject(&acker).await;
        return;
    };
    if revoke_if_expired(chans, queue, &task, &acker).await {
        return;
    }
    if let Some(delay_ms) = task.eta.as_deref().and_then(parse_isoformat).and_then(crate::delay_until) {
        if let Some(delay_ch) = delay_ch {
            drop(fut);
            hand_to_delayed_exchange(delay_ch, queue, &task, raw, delay_ms, &acker).await;
            return;
        }
        info!(task = task.task, id = task.id, eta = task.eta, delay_ms, "task held until its eta");
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        if revoke_if_expired(chans, queue, &task, &acker).await {
            return;
        }
    }
    info!(task = task.task, id = task.id, redelivered, "task received");
    let received = serde_json::json!({
        "uuid": task.id, "name": task.task, "args": task.argsrepr, "kwargs": task.kwargsrepr,
        "root_id": task.root_id, "parent_id": task.parent_id, "retries": task.retries,
        "eta": task.eta, "expires": task.expires,
    });
    chans.event("task-received", received).await;
    chans.event("task-started", serde_json::json!({"uuid": task.id, "pid": std::process::id()})).await;
    if let Some(ev) = &chans.events {
        ev.task_started();
    }
    let started = std::time::Instant::now();
    let options = registry.options(&task.task);
    let secs_opt = |s: Option<f64>| s.filter(|s| *s > 0.0).and_then(|s| Duration::try_from_secs_f64(s).ok());
    let hard = secs_opt(task.timelimit.0).or(options.time_limit);
    let soft = secs_opt(task.timelimit.1).or(options.soft_time_limit);
    let ctx = TaskContext {
        id: task.id.clone(),
        retries: task.retries,
        soft_deadline: soft.map(|s| tokio::time::Instant::now() + s),
    };
    // Run on its own task so that a panicking task is a failure, not a lost delivery; the
    // guard aborts it with us (grace period over, connection lost, hard time limit), so it
    // never outlives its delivery and runs alongside its own redelivery.
    let mut run = AbortOnDrop(tokio::spawn(ctx.scope(fut)));
    let joined = crate::lease::extending(ch, delivery_tag, chans.lease, async {
        match hard {
            Some(limit) => tokio::time::timeout(limit, &mut run.0).await.map_err(|_| limit),
            None => Ok((&mut run.0).await),
        }
    })
    .await;
    let outcome = match joined {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => Err(TaskError::new("WorkerPanic", format!("task panicked: {e}"))),
        Err(limit) => {
            run.0.abort();
            error!(task = task.task, id = task.id, "hard time limit ({:.1} s) exceeded", limit.as_secs_f64());
            Err(TaskError::celery("TimeLimitExceeded", format!("{}", limit.as_secs_f64())))
        }
    };
    drop(run);
    if let Some(ev) = &chans.events {
        ev.task_ended();
    }
    let secs = started.elapsed().as_secs_f64();
    let result = match outcome {
        Ok(value) => {
            info!(task = task.task, id = task.id, "task succeeded in {secs:.3} s");
            let done = serde_json::json!({"uuid": task.id, "result": value.to_string(), "runtime": secs});
            chans.event("task-succeeded", done).await;
            let Some(children) = after_task(chans, queue, &task, Ok(&value), &acker).await else {
                return;
            };
            let mut result = ResultMessage::success(&task, value, now());
            result.children = children;
            result
        }
        Err(e) => {
            warn!(task = task.task, id = task.id, "task failed in {secs:.3} s: {e}");
            let policy = options.retry.clone();
            let wanted = e.retry.is_some() || policy.as_ref().is_some_and(|p| p.retries(&e.exc_type));
            if wanted && e.exc_type != "TimeLimitExceeded" {
                let max = policy.as_ref().map_or(3, |p| p.max_retries);
                if task.retries < i64::from(max) {
                    let countdown = match e.retry {
                        Some(Some(d)) => d,
                        _ => policy
                            .unwrap_or_default()
                            .countdown(u32::try_from(task.retries).unwrap_or(0), fastrand::f64()),
                    };
                    if retry_later(chans, queue, &task, &e, countdown, &acker).await {
                        let exception = exception_repr(&e.exc_type, &e.message);
                        let retried = serde_json::json!({"uuid": task.id, "exception": exception, "traceback": ""});
                        chans.event("task-retried", retried).await;
                        return;
                    }
                } else {
                    warn!(task = task.task, id = task.id, retries = task.retries, "retries exhausted: dead-lettered");
                    dead_letter(chans, queue, &task, raw, &e).await;
                }
            }
            let exception = exception_repr(&e.exc_type, &e.message);
            chans
                .event("task-failed", serde_json::json!({"uuid": task.id, "exception": exception, "traceback": ""}))
                .await;
            let exc = e.to_exception_info();
            if after_task(chans, queue, &task, Err(&exc), &acker).await.is_none() {
                return;
            }
            ResultMessage::failure(&task, &exc, None, now())
        }
    };
    if !task.ignore_result {
        publish_result(ch, &task, result).await;
    }
    chans.acks.finished(delivery_tag);
}

/// The canvas hook (crate::canvas): callbacks, chain, errbacks, chord part. `None` when what
/// had to be sent was not confirmed: the delivery is then requeued (the task runs again, as
/// Celery redelivers a task whose callbacks could not be sent).
async fn after_task(
    chans: &Channels,
    queue: &str,
    task: &TaskMessage,
    outcome: Result<&Value, &ExceptionInfo>,
    acker: &lapin::Acker,
) -> Option<Vec<Value>> {
    match chans.canvas.after_task(queue, task, outcome).await {
        Ok(children) => Some(children),
        Err(e) => {
            warn!(id = task.id, "canvas messages not sent ({e}); requeueing the task");
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Err(e) = acker.nack(BasicNackOptions { requeue: true, multiple: false }).await {
                warn!(id = task.id, "nack failed: {e}");
            }
            None
        }
    }
}

/// Parks an early task in the delayed exchange; acks the original only once the copy is
/// confirmed, so the task exists at all times (twice for a moment, never zero times).
async fn hand_to_delayed_exchange(
    ch: &Channel,
    queue: &str,
    task: &TaskMessage,
    mut raw: RawMessage,
    delay_ms: u64,
    acker: &lapin::Acker,
) {
    raw.headers.insert("x-delay".to_owned(), delay_ms.into());
    let confirmed = async {
        let confirm = ch
            .basic_publish(
                crate::DELAYED_EXCHANGE.into(),
                queue.into(),
                BasicPublishOptions::default(),
                &raw.body,
                amqp::to_lapin(&raw),
            )
            .await?
            .await?;
        Ok::<bool, lapin::Error>(confirm.is_ack())
    };
    match confirmed.await {
        Ok(true) => {
            info!(task = task.task, id = task.id, eta = task.eta, delay_ms, "task delayed until its eta");
            if let Err(e) = acker.ack(BasicAckOptions::default()).await {
                warn!(id = task.id, "ack failed (the broker will redeliver): {e}");
            }
        }
        outcome => {
            // Not parked: give it back (after a pause, so as not to spin on a failing broker).
            warn!(id = task.id, "could not delay the task ({outcome:?}); requeueing it");
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Err(e) = acker.nack(BasicNackOptions { requeue: true, multiple: false }).await {
                warn!(id = task.id, "nack failed: {e}");
            }
        }
    }
}

/// Which kind of queue a delivery came from (the task queue's name in both).
#[derive(Clone, Debug)]
enum Source {
    Tasks(String),
    Expired(String),
}

/// A task the broker dead-lettered to `<queue>.expired`: expired ones are reported REVOKED
/// (as if the worker had seen them expire); anything else (a policy also dead-letters
/// rejected messages) is moved to the dead-letter queue.
async fn dead_lettered(chans: &Channels, task_queue: &str, delivery: Delivery) {
    let Delivery { properties, data, acker, .. } = delivery;
    let raw = amqp::from_lapin(&properties, data);
    let reason = match raw.headers.get("x-death") {
        Some(Value::Array(deaths)) => deaths.first().and_then(|d| d.get("reason")).and_then(Value::as_str),
        _ => None,
    }
    .or_else(|| raw.headers.get("x-first-death-reason").and_then(Value::as_str))
    .unwrap_or_default()
    .to_owned();
    match TaskMessage::decode(&raw) {
        Ok(task) if reason == "expired" => {
            info!(task = task.task, id = task.id, "task expired in the broker: revoked, not run");
            if !task.ignore_result {
                publish_result(&chans.ch, &task, revoked_result(&task)).await;
            }
            revoked_chord_part(chans, task_queue, &task).await;
        }
        _ => {
            warn!(reason, "a dead-lettered message that did not expire: moved to the dead-letter queue");
            let dlq = dead_letter_queue(task_queue);
            if !matches!(publish_confirmed(&chans.confirm_ch, "", &dlq, &raw).await, Ok(true)) {
                warn!(dlq, "not confirmed; requeueing it");
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Err(e) = acker.nack(BasicNackOptions { requeue: true, multiple: false }).await {
                    warn!("nack failed: {e}");
                }
                return;
            }
        }
    }
    if let Err(e) = acker.ack(BasicAckOptions::default()).await {
        warn!("ack failed (the broker will redeliver): {e}");
    }
}

/// Celery's `Request.revoked()` for an expired task: not run, acked, answered REVOKED.
/// `true` when the task had expired.
async fn revoke_if_expired(chans: &Channels, queue: &str, task: &TaskMessage, acker: &lapin::Acker) -> bool {
    if task.expires.as_deref().and_then(parse_isoformat).is_none_or(|t| t > std::time::SystemTime::now()) {
        return false;
    }
    info!(task = task.task, id = task.id, expires = task.expires, "task expired: revoked, not run");
    if !task.ignore_result {
        publish_result(&chans.ch, task, revoked_result(task)).await;
    }
    revoked_chord_part(chans, queue, task).await;
    let revoked = serde_json::json!({"uuid": task.id, "terminated": false, "signum": null, "expired": true});
    chans.event("task-revoked", revoked).await;
    if let Err(e) = acker.ack(BasicAckOptions::default()).await {
        warn!(id = task.id, "ack failed (the broker will redeliver): {e}");
    }
    true
}

fn revoked_exception() -> ExceptionInfo {
    ExceptionInfo {
        exc_type: "TaskRevokedError".to_owned(),
        exc_message: Value::Array(vec![Value::String("expired".to_owned())]),
        exc_module: Some("celery.exceptions".to_owned()),
    }
}

/// A revoked chord header task still counts in its chord, as a failure (Celery's
/// `mark_as_revoked` calls `on_chord_part_return`), so that the chord ends.
async fn revoked_chord_part(chans: &Channels, queue: &str, task: &TaskMessage) {
    if task.embed.chord.is_null() {
        return;
    }
    let exc = revoked_exception();
    if let Err(e) = chans.canvas.chord_part(queue, task, Err(&exc)).await {
        warn!(id = task.id, "chord part of a revoked task not sent: {e}");
    }
}

/// Celery's `mark_as_revoked(reason='expired')`: REVOKED with `TaskRevokedError('expired')`.
fn revoked_result(task: &TaskMessage) -> ResultMessage {
    let mut result = ResultMessage::failure(task, &revoked_exception(), None, now());
    result.status = "REVOKED".to_owned();
    result
}

/// The message of a task's next try: same id, `retries` + 1, `eta` = now + `countdown`
/// (what Celery's `Task.retry` sends), with `x-delay` for the delayed exchange.
pub fn retry_message(task: &TaskMessage, countdown: Duration) -> RawMessage {
    let mut next = task.clone();
    next.retries += 1;
    next.eta = Some(isoformat_utc(std::time::SystemTime::now() + countdown));
    let mut raw = next.encode();
    raw.headers.insert("x-delay".to_owned(), u64::try_from(countdown.as_millis()).unwrap_or(u64::MAX).into());
    raw
}

/// The dead-lettered copy of a task: the original message with the error in its headers.
pub fn dead_letter_message(queue: &str, task: &TaskMessage, mut raw: RawMessage, e: &TaskError) -> RawMessage {
    let h = &mut raw.headers;
    h.remove("x-delay");
    h.insert("x-exception-type".to_owned(), e.exc_type.clone().into());
    h.insert("x-exception-module".to_owned(), e.exc_module.clone().unwrap_or_default().into());
    h.insert("x-exception-message".to_owned(), e.message.clone().into());
    h.insert(
        "x-exception-traceback".to_owned(),
        format!("task {}[{}] failed after {} retries\n{e}", task.task, task.id, task.retries).into(),
    );
    h.insert("x-original-queue".to_owned(), queue.to_owned().into());
    raw
}

async fn publish_confirmed(ch: &Channel, exchange: &str, key: &str, raw: &RawMessage) -> Result<bool, lapin::Error> {
    let confirm = ch
        .basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), &raw.body, amqp::to_lapin(raw))
        .await?
        .await?;
    Ok(confirm.is_ack())
}

/// Republishes the task for its next try (through the delayed exchange, so no worker slot
/// waits), reports RETRY to the caller, acks the original. `false` when the copy was not
/// confirmed: the caller then treats the error as the task's failure.
async fn retry_later(
    chans: &Channels,
    queue: &str,
    task: &TaskMessage,
    e: &TaskError,
    countdown: Duration,
    acker: &lapin::Acker,
) -> bool {
    let raw = retry_message(task, countdown);
    let published = match &chans.delay_ch {
        Some(delay_ch) => publish_confirmed(delay_ch, crate::DELAYED_EXCHANGE, queue, &raw).await,
        // No delayed exchange: straight back to the queue with its eta (held by a worker).
        None => publish_confirmed(&chans.confirm_ch, "", queue, &raw).await,
    };
    if !matches!(published, Ok(true)) {
        warn!(id = task.id, "could not republish the retry ({published:?}); the task fails");
        return false;
    }
    info!(
        task = task.task,
        id = task.id,
        retries = task.retries + 1,
        "task retry in {:.3} s: {e}",
        countdown.as_secs_f64()
    );
    if !task.ignore_result {
        let mut result = ResultMessage::failure(task, &e.to_exception_info(), None, now());
        result.status = "RETRY".to_owned();
        result.date_done = None;
        publish_result(&chans.ch, task, result).await;
    }
    if let Err(err) = acker.ack(BasicAckOptions::default()).await {
        warn!(id = task.id, "ack failed (the broker will redeliver): {err}");
    }
    true
}

async fn dead_letter(chans: &Channels, queue: &str, task: &TaskMessage, raw: RawMessage, e: &TaskError) {
    let dlq = dead_letter_queue(queue);
    let raw = dead_letter_message(queue, task, raw, e);
    match publish_confirmed(&chans.confirm_ch, "", &dlq, &raw).await {
        Ok(true) => {}
        other => warn!(id = task.id, dlq, "dead letter not confirmed: {other:?}"),
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn publish_result(ch: &Channel, task: &TaskMessage, result: ResultMessage) {
    let Some(reply_to) = task.reply_to.as_deref() else {
        return;
    };
    let raw = result.encode();
    // Celery's rpc backend publishes through the default exchange, routing key = reply_to.
    let published = ch
        .basic_publish("".into(), reply_to.into(), BasicPublishOptions::default(), &raw.body, amqp::to_lapin(&raw))
        .await;
    if let Err(e) = published {
        warn!(id = task.id, reply_to, "result not published: {e}");
    }
}

async fn reject(acker: &lapin::Acker) {
    if let Err(e) = acker.reject(BasicRejectOptions { requeue: false }).await {
        warn!("reject failed: {e}");
    }
}

fn now() -> String {
    isoformat_utc(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use serde_json::{Map, json};

    use super::*;

    fn task() -> TaskMessage {
        let mut t = TaskMessage::new("demo.flaky", "id-1", vec![json!("k"), json!(2)], Map::new());
        t.reply_to = Some("reply.q".into());
        t.retries = 1;
        t.timelimit = (Some(10.0), Some(5.0));
        t.expires = Some("2099-01-01T00:00:00+00:00".into());
        t
    }

    #[test]
    fn a_retry_is_the_same_task_with_retries_plus_one_and_an_eta() {
        let t = task();
        let before = SystemTime::now();
        let raw = retry_message(&t, Duration::from_millis(1500));
        assert_eq!(raw.headers["x-delay"], json!(1500));
        assert_eq!(raw.headers["retries"], json!(2));
        assert_eq!(raw.properties.correlation_id.as_deref(), Some("id-1"));
        assert_eq!(raw.properties.reply_to.as_deref(), Some("reply.q"));
        let next = TaskMessage::decode(&raw).expect("decodes");
        assert_eq!((next.id.as_str(), next.task.as_str(), next.retries), ("id-1", "demo.flaky", 2));
        assert_eq!(
            (next.args.clone(), next.timelimit, next.expires.clone()),
            (t.args.clone(), t.timelimit, t.expires.clone())
        );
        let eta = parse_isoformat(next.eta.as_deref().expect("eta")).expect("isoformat");
        let ahead = eta.duration_since(before).expect("eta is ahead");
        assert!(ahead >= Duration::from_millis(1499) && ahead < Duration::from_secs(3), "{ahead:?}");
        // Everything else is the original message.
        let mut same = next.clone();
        same.retries = t.retries;
        same.eta = None;
        assert_eq!(same, t);
    }

    #[test]
    fn a_dead_letter_carries_the_error_in_its_headers() {
        let t = task();
        let mut original = t.encode();
        original.headers.insert("x-delay".into(), json!(1000));
        let e = TaskError::builtin("RuntimeError", "flaky failure 4 of 9");
        let raw = dead_letter_message("celery", &t, original.clone(), &e);
        let h = &raw.headers;
        assert_eq!(h["x-exception-type"], json!("RuntimeError"));
        assert_eq!(h["x-exception-module"], json!("builtins"));
        assert_eq!(h["x-exception-message"], json!("flaky failure 4 of 9"));
        assert_eq!(h["x-original-queue"], json!("celery"));
        let tb = h["x-exception-traceback"].as_str().expect("text");
        assert!(tb.contains("RuntimeError: flaky failure 4 of 9") && tb.contains("id-1"), "{tb}");
        assert!(!h.contains_key("x-delay"));
        assert_eq!((raw.body.clone(), raw.properties.clone()), (original.body, original.properties));
        assert_eq!(TaskMessage::decode(&raw).expect("still a task"), t);
    }
}
