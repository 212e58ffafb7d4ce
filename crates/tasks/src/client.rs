//! Sending tasks and waiting for their results, as Celery's `send_task` with the `rpc://`
//! backend does: results come back on one exclusive reply queue per client, matched by
//! `correlation_id` (= task id).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use serde_json::{Map, Value};

use crate::canvas::{self, Signature};
use crate::protocol::{ResultMessage, TaskMessage, is_ready_state, isoformat_utc};
use crate::{Error, amqp};

#[derive(Clone, Debug)]
pub struct SendOptions {
    /// The queue to send to (declared as Celery declares it).
    pub queue: String,
    /// Run no earlier than this many seconds from now: the `eta` header (which Python and
    /// Rust workers honour), and the message is held by the broker's `x-delayed-message`
    /// exchange until then, so no worker holds it meanwhile.
    pub countdown: Option<f64>,
    /// Ask for the result on this client's reply queue; without it the task's result is
    /// not sent anywhere.
    pub reply: bool,
}

impl Default for SendOptions {
    fn default() -> SendOptions {
        SendOptions { queue: "celery".to_owned(), countdown: None, reply: true }
    }
}

/// A group sent by [`Client::send_group`].
#[derive(Clone, Debug)]
pub struct GroupHandle {
    pub group_id: String,
    /// The tasks' ids, in the group's order.
    pub ids: Vec<String>,
}

/// A chord sent by [`Client::send_chord`].
#[derive(Clone, Debug)]
pub struct ChordHandle {
    pub group_id: String,
    pub header_ids: Vec<String>,
    /// The body's id: its result is the chord's result.
    pub body_id: String,
}

const DEFAULT_QUEUE: &str = "celery";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Chain,
    Group,
    Chord,
}

/// A chain, group or chord about to be sent ([`Client::chain`], [`Client::group`],
/// [`Client::chord`]).
pub struct CanvasBuilder<'a> {
    client: &'a mut Client,
    kind: Kind,
    tasks: Vec<Signature>,
    body: Option<Signature>,
    queue: String,
}

impl<'a> CanvasBuilder<'a> {
    /// The queue of the signatures without a `queue` option (default `celery`).
    pub fn queue(mut self, queue: &str) -> CanvasBuilder<'a> {
        self.queue = queue.to_owned();
        self
    }

    pub async fn send(self) -> Result<SentCanvas<'a>, Error> {
        let CanvasBuilder { client, kind, tasks, body, queue } = self;
        let (ids, wait_for) = match (kind, body) {
            (Kind::Chain, _) => {
                let ids = client.send_chain(&tasks, &queue).await?;
                let last = ids.last().cloned().into_iter().collect();
                (ids, last)
            }
            (Kind::Group, _) => {
                let g = client.send_group(&tasks, &queue).await?;
                (g.ids.clone(), g.ids)
            }
            (Kind::Chord, Some(body)) => {
                let c = client.send_chord(&tasks, &body, &queue).await?;
                ([c.header_ids, vec![c.body_id.clone()]].concat(), vec![c.body_id])
            }
            (Kind::Chord, None) => unreachable!("a chord is built with its body"),
        };
        Ok(SentCanvas { client, kind, ids, wait_for })
    }
}

/// A sent chain, group or chord.
pub struct SentCanvas<'a> {
    client: &'a mut Client,
    kind: Kind,
    /// Every task id sent or to be sent: a chain's steps, a group's tasks, a chord's header
    /// tasks then its body.
    pub ids: Vec<String>,
    wait_for: Vec<String>,
}

impl SentCanvas<'_> {
    /// The final results: one for a chain (its last step) or a chord (its body), one per
    /// task in order for a group.
    pub async fn get(self, timeout: Duration) -> Result<Vec<ResultMessage>, Error> {
        let group = GroupHandle { group_id: String::new(), ids: self.wait_for };
        let results = self.client.wait_group(&group, timeout).await?;
        debug_assert!(self.kind == Kind::Group || results.len() <= 1);
        Ok(results)
    }
}

pub struct Client {
    conn: Connection,
    ch: Channel,
    reply_queue: String,
    replies: Consumer,
    /// Results that arrived while waiting for another task.
    early: HashMap<String, ResultMessage>,
    declared: Vec<String>,
    /// Queues bound to the delayed exchange.
    delayed: Vec<String>,
    /// The broker refused the `x-delayed-message` exchange.
    no_delayed_exchange: bool,
    origin: String,
    /// For the delayed-exchange probe, which needs a connection of its own.
    broker: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("reply_queue", &self.reply_queue).finish()
    }
}

impl Client {
    pub async fn connect(broker: &str) -> Result<Client, Error> {
        let conn = Connection::connect(broker, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        // Server-named, exclusive, auto-delete: it lives as long as this client.
        let opts = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        let q = ch.queue_declare("".into(), opts, FieldTable::default()).await?;
        let reply_queue = q.name().as_str().to_owned();
        let no_ack = BasicConsumeOptions { no_ack: true, ..Default::default() };
        let replies = ch.basic_consume(reply_queue.as_str().into(), "".into(), no_ack, FieldTable::default()).await?;
        Ok(Client {
            conn,
            ch,
            reply_queue,
            replies,
            early: HashMap::new(),
            declared: Vec::new(),
            delayed: Vec::new(),
            no_delayed_exchange: false,
            origin: crate::origin(),
            broker: broker.to_owned(),
        })
    }

    /// Sends one task; returns its id.
    pub async fn send_task(
        &mut self,
        name: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        options: &SendOptions,
    ) -> Result<String, Error> {
        let id = crate::new_task_id();
        let mut msg = TaskMessage::new(name, &id, args, kwargs);
        msg.reply_to = options.reply.then(|| self.reply_queue.clone());
        msg.ignore_result = !options.reply;
        self.publish_task(msg, &options.queue, options.countdown).await?;
        Ok(id)
    }

    /// Publishes a task message to `queue` (declared as Celery declares it), through the
    /// delayed exchange when `countdown` is set.
    async fn publish_task(&mut self, mut msg: TaskMessage, queue: &str, countdown: Option<f64>) -> Result<(), Error> {
        if !self.declared.iter().any(|q| q == queue) {
            crate::declare_task_queue(&self.ch, queue).await?;
            self.declared.push(queue.to_owned());
        }
        msg.origin = self.origin.clone();
        let mut exchange = "";
        let mut delay_ms = None;
        if let Some(secs) = countdown {
            let eta = SystemTime::now() + Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO);
            msg.eta = Some(isoformat_utc(eta));
            delay_ms = crate::delay_until(eta);
        }
        let mut raw = msg.encode();
        if let Some(ms) = delay_ms
            && self.delayed_exchange_for(queue).await?
        {
            exchange = crate::DELAYED_EXCHANGE;
            raw.headers.insert("x-delay".to_owned(), ms.into());
        }
        let props = amqp::to_lapin(&raw);
        let routing_key = queue.into();
        self.ch.basic_publish(exchange.into(), routing_key, BasicPublishOptions::default(), &raw.body, props).await?;
        Ok(())
    }

    /// A chain to send: `client.chain(steps).queue("q").send().await?.get(timeout).await?`
    /// (the last step's result). See [`Client::send_chain`].
    pub fn chain(&mut self, steps: Vec<Signature>) -> CanvasBuilder<'_> {
        CanvasBuilder { client: self, kind: Kind::Chain, tasks: steps, body: None, queue: DEFAULT_QUEUE.to_owned() }
    }

    /// A group to send: `client.group(tasks).send().await?.get(timeout).await?` (the
    /// results in order). See [`Client::send_group`].
    pub fn group(&mut self, tasks: Vec<Signature>) -> CanvasBuilder<'_> {
        CanvasBuilder { client: self, kind: Kind::Group, tasks, body: None, queue: DEFAULT_QUEUE.to_owned() }
    }

    /// A chord to send: `client.chord(header, body).send().await?.get(timeout).await?` (the
    /// body's result). See [`Client::send_chord`].
    pub fn chord(&mut self, header: Vec<Signature>, body: Signature) -> CanvasBuilder<'_> {
        CanvasBuilder {
            client: self,
            kind: Kind::Chord,
            tasks: header,
            body: Some(body),
            queue: DEFAULT_QUEUE.to_owned(),
        }
    }

    /// Sends a chain (Celery's `chain(a, b, c)`): each step gets the previous step's result
    /// prepended to its arguments; a step's worker (Rust or Python) sends the next one. Steps
    /// without a `queue` option go to `queue` (the option is written into them, since a
    /// Python worker routes a signature by its options). Returns the ids of all the steps
    /// (every step answers this client): the last one is the chain's result.
    pub async fn send_chain(&mut self, steps: &[Signature], queue: &str) -> Result<Vec<String>, Error> {
        let Some((msg, first_queue, ids)) = canvas::chain_messages(steps, Some(&self.reply_queue), queue) else {
            return Ok(Vec::new());
        };
        self.publish_task(msg, &first_queue, None).await?;
        Ok(ids)
    }

    /// Sends a group (Celery's `group(...)`): every task with the `group` header (a new
    /// group id) and its `group_index`. Collect the results with [`Client::wait_group`].
    pub async fn send_group(&mut self, tasks: &[Signature], queue: &str) -> Result<GroupHandle, Error> {
        let group_id = crate::new_task_id();
        let mut ids = Vec::with_capacity(tasks.len());
        for (i, sig) in tasks.iter().enumerate() {
            let sig = sig.clone().with_option("group_id", group_id.clone().into()).with_option("group_index", i.into());
            let mut msg = sig.message(None, None, Vec::new());
            msg.reply_to = Some(self.reply_queue.clone());
            ids.push(msg.id.clone());
            self.publish_task(msg, sig.queue().unwrap_or(queue), None).await?;
        }
        Ok(GroupHandle { group_id, ids })
    }

    /// The results of a group's tasks, in the group's order (each SUCCESS, FAILURE or
    /// REVOKED), within `timeout` for all of them.
    pub async fn wait_group(&mut self, group: &GroupHandle, timeout: Duration) -> Result<Vec<ResultMessage>, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut results = Vec::with_capacity(group.ids.len());
        for id in &group.ids {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            results.push(self.wait(id, left).await.map_err(|e| match e {
                Error::Timeout(_) => Error::Timeout(timeout),
                e => e,
            })?);
        }
        Ok(results)
    }

    /// Sends a chord: the header tasks as a group, each carrying the body (with the group id
    /// and `chord_size`) in its embed's `chord`. The Rust worker that finishes the last
    /// header task sends the body with the header results, in order, as its first argument
    /// (see docs/tasks.md, "Chords": no polling task). The header tasks must run on Rust
    /// workers. Wait for the body's id (`ChordHandle::body_id`) with [`Client::wait`]: a
    /// failed header task fails it with `ChordError`.
    pub async fn send_chord(
        &mut self,
        header: &[Signature],
        body: &Signature,
        queue: &str,
    ) -> Result<ChordHandle, Error> {
        let group_id = crate::new_task_id();
        let body_id = body.task_id().map_or_else(crate::new_task_id, str::to_owned);
        let mut body = body.clone();
        if body.queue().is_none() {
            body = body.with_queue(queue);
        }
        let body = canvas::chord_body(&body, &body_id, &group_id, header.len(), Some(&self.reply_queue));
        let mut ids = Vec::with_capacity(header.len());
        for (i, sig) in header.iter().enumerate() {
            let sig = sig
                .clone()
                .with_option("group_id", group_id.clone().into())
                .with_option("group_index", i.into())
                .with_option("chord", body.to_json());
            let mut msg = sig.message(None, None, Vec::new());
            msg.reply_to = Some(self.reply_queue.clone());
            ids.push(msg.id.clone());
            self.publish_task(msg, sig.queue().unwrap_or(queue), None).await?;
        }
        Ok(ChordHandle { group_id, header_ids: ids, body_id })
    }

    /// Whether `queue` is bound to the delayed exchange (declaring both once). Without the
    /// exchange type, delayed tasks go straight to their queue with just the `eta` header,
    /// and the worker holds them until due.
    async fn delayed_exchange_for(&mut self, queue: &str) -> Result<bool, Error> {
        if self.no_delayed_exchange {
            return Ok(false);
        }
        if self.delayed.iter().any(|q| q == queue) {
            return Ok(true);
        }
        if !crate::has_delayed_exchange(&self.broker).await? {
            tracing::warn!("no delayed exchange (x-delayed-message); sending delayed tasks with their eta only");
            self.no_delayed_exchange = true;
            return Ok(false);
        }
        // Its own channel: a refused declaration closes the channel it was made on.
        let ch = self.conn.create_channel().await?;
        match crate::declare_delayed(&ch, queue).await {
            Ok(()) => {
                let _ = ch.close(200, "declared".into()).await;
                self.delayed.push(queue.to_owned());
                Ok(true)
            }
            Err(e) => {
                tracing::warn!("no delayed exchange ({e}); sending delayed tasks with their eta only");
                self.no_delayed_exchange = true;
                Ok(false)
            }
        }
    }

    /// Waits for the final result of `task_id` (SUCCESS, FAILURE or REVOKED); intermediate
    /// states (STARTED, RETRY) are skipped.
    pub async fn wait(&mut self, task_id: &str, timeout: Duration) -> Result<ResultMessage, Error> {
        if let Some(r) = self.early.remove(task_id) {
            return Ok(r);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next =
                tokio::time::timeout_at(deadline, self.replies.next()).await.map_err(|_| Error::Timeout(timeout))?;
            let delivery = match next {
                Some(d) => d?,
                None => return Err(Error::Closed("reply consumer cancelled")),
            };
            let raw = amqp::from_lapin(&delivery.properties, delivery.data);
            let result = ResultMessage::decode(&raw)?;
            if !is_ready_state(&result.status) {
                continue;
            }
            if result.task_id == task_id {
                return Ok(result);
            }
            self.early.insert(result.task_id.clone(), result);
        }
    }

    pub async fn close(self) -> Result<(), Error> {
        self.conn.close(200, "bye".into()).await?;
        Ok(())
    }
}
