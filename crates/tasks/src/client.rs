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
        if !self.declared.contains(&options.queue) {
            crate::declare_task_queue(&self.ch, &options.queue).await?;
            self.declared.push(options.queue.clone());
        }
        let id = crate::new_task_id();
        let mut msg = TaskMessage::new(name, &id, args, kwargs);
        msg.origin = self.origin.clone();
        msg.reply_to = options.reply.then(|| self.reply_queue.clone());
        msg.ignore_result = !options.reply;
        let mut exchange = "";
        let mut delay_ms = None;
        if let Some(secs) = options.countdown {
            let eta = SystemTime::now() + Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO);
            msg.eta = Some(isoformat_utc(eta));
            delay_ms = crate::delay_until(eta);
        }
        let mut raw = msg.encode();
        if let Some(ms) = delay_ms
            && self.delayed_exchange_for(&options.queue).await?
        {
            exchange = crate::DELAYED_EXCHANGE;
            raw.headers.insert("x-delay".to_owned(), ms.into());
        }
        let props = amqp::to_lapin(&raw);
        let routing_key = options.queue.as_str().into();
        self.ch.basic_publish(exchange.into(), routing_key, BasicPublishOptions::default(), &raw.body, props).await?;
        Ok(id)
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
