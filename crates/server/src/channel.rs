//! The channel state machine: one AMQP channel's methods, translated into broker calls.
//! Owned by its connection's task; only the delivery state ([`ChannelShared`]) is shared.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use access::authz::{Perm, Resource};
use broker::exchange::ExchangeOptions;
use broker::queue::{Consumer, PublishOutcome, QueueOptions, next_consumer_id};
use broker::store::{CommitState, Durability, Settled};
use broker::vhost::{Deleted, generate_name};
use broker::{AmqpError, Exchange, ExchangeKind, Message, Queue, VHost};
use bytes::{Bytes, BytesMut};
use wire::{Method, frame};

use crate::cluster_topology::BindingSpec;
use crate::delivery::{ChannelShared, ConsumerHandle, ConsumerMeta, Unacked};
use broker::counters::bump_single_writer as bump;

/// What a channel needs from its connection.
pub struct ConnCtx {
    pub conn_id: u64,
    pub vhost: Arc<VHost>,
    /// The client advertised consumer_cancel_notify.
    pub cancel_notify: bool,
    pub max_message_size_bytes: u64,
    /// Where the group commit stands.
    pub durable: tokio::sync::watch::Receiver<CommitState>,
    pub server: Arc<crate::state::ServerState>,
    /// A queue this connection published to that asked publishers to pause (flow); the
    /// connection takes it before its next read.
    pub flow: std::cell::Cell<Option<Arc<Queue>>>,
    /// The logged-in user's permissions in this vhost: every operation is checked here.
    pub access: crate::auth::ConnAccess,
}

impl ConnCtx {
    fn allow(&self, perm: Perm, res: Resource, name: &str) -> Result<(), AmqpError> {
        self.access.check(&self.server, perm, res, name)
    }
}

/// `a == b`, without a call into libc's memcmp when they differ in length or are empty
/// (the default exchange): on the publish path that call showed up as several per cent
/// of the broker's CPU.
#[inline]
fn same_str(a: &str, b: &str) -> bool {
    a.len() == b.len() && (a.is_empty() || a.as_bytes() == b.as_bytes())
}

/// The pseudo-queue of RabbitMQ's direct reply-to.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Warren's lease extension: a publish to this (built-in, never declared) exchange with
/// routing key = a delivery tag of the same channel restarts that delivery's consumer
/// timeout clock. Nothing is routed or stored; with confirms it is acked.
pub const LEASE_EXCHANGE: &str = "amq.warren.lease";

/// A basic.publish whose content is still arriving.
struct PendingPublish {
    exchange: String,
    routing_key: String,
    mandatory: bool,
    /// (body_size, raw properties) once the content header arrived.
    header: Option<(u64, Bytes)>,
    /// The first body frame (usually the only one), kept as a slice of the read buffer.
    first: Option<Bytes>,
    /// A body that arrives in several frames is copied into one buffer as its frames
    /// arrive, so memory follows the body size whatever the frame sizes (a 16 MiB body in
    /// one-byte frames would otherwise pin a read-buffer slice and a handle per byte).
    assembled: Option<BytesMut>,
    received: u64,
    /// Body frames without payload seen for this content (see [`MAX_EMPTY_BODY_FRAMES`]).
    empty_frames: u32,
}

/// Empty body frames accepted per content. They carry nothing, so no client needs more
/// than a few (RabbitMQ accepts them); without a bound a client could send them forever
/// while the content never completes.
pub(crate) const MAX_EMPTY_BODY_FRAMES: u32 = 16;

/// Work deferred by a transaction until tx.commit.
enum TxOp {
    /// Routed when published (as RabbitMQ does: the exchange and bindings of that moment
    /// count), delivered at commit, so a commit cannot fail on topology changed since.
    Publish {
        route: Route,
        msg: Arc<Message>,
        mandatory: bool,
    },
    Settle {
        entries: Vec<Unacked>,
        requeue: Option<bool>,
    },
}

/// Where a publish goes, decided by routing it.
enum Route {
    /// An x-delayed-message exchange holds it for `delay_ms`, then routes it.
    Delayed { exchange: Arc<Exchange>, delay_ms: u64 },
    /// These queues (none: unroutable).
    Queues(Vec<Arc<Queue>>),
    /// The queues of the channel's route cache (the hot path: no copy of the list).
    Cached,
}

/// Below this many consumers a channel does not bother sweeping out cancelled ones.
const CONSUMERS_SWEEP_MIN: usize = 64;

pub struct Channel {
    pub shared: Arc<ChannelShared>,
    /// The server sent channel.close and waits for close-ok; other frames are dropped.
    pub closing: bool,
    pending: Option<PendingPublish>,
    consumers: HashMap<String, Arc<ConsumerHandle>>,
    /// `consumers` is swept of broker-cancelled consumers when it reaches this size.
    consumers_sweep_at: usize,
    /// basic.qos global=false: prefetch given to consumers started from now on.
    consumer_prefetch: u32,
    /// Publisher confirms: next sequence number to assign, and the highest one not yet
    /// acknowledged to the client (sent as one multiple ack per read batch).
    confirm: Option<Confirms>,
    tx: Option<Vec<TxOp>>,
    /// tx.commit-ok is due once this is durable.
    commit_waiting: Option<Routed>,
    /// The last queue declared on this channel, which an empty queue name refers to.
    last_queue: Option<String>,
    /// Direct reply-to: this channel's token and pseudo-queue, once it consumes from
    /// `amq.rabbitmq.reply-to`.
    reply_to: Option<(String, Arc<Queue>)>,
    /// Delivery tags requeued by a consumer timeout: a late ack for them is ignored
    /// rather than closing the channel for an unknown tag.
    timed_out_tags: std::collections::HashSet<u64>,
    route_cache: Option<RouteCache>,
    /// Encoded replies held back until the definitions log is fsynced through
    /// `held_for` (a durable declare's; see [`crate::persist::DeferCommit`]).
    held: std::cell::RefCell<Vec<u8>>,
    held_for: Option<u64>,
    /// Queues deleted by a held queue.delete: their consumers' basic.cancel follows the
    /// held delete-ok (see the QueueDelete arm).
    held_deleted: Vec<Deleted>,
}

/// The last route a channel computed, valid while the vhost's topology generation is
/// unchanged.
struct RouteCache {
    generation: u64,
    exchange: Arc<Exchange>,
    /// The access-directory version at which write on `exchange` was last allowed: while
    /// it is current, publishing skips the permission check (the hot path).
    write_allowed_at: Option<u64>,
    /// None when only the exchange lookup is cached.
    routing_key: Option<String>,
    queues: Vec<Arc<Queue>>,
}

/// The proposer tickets quorum queues took one publish as. Exactly its own: tickets of
/// other channels' publishes on this node can fall between those of a publish routed to
/// several quorum queues, so a (lowest, highest) range would take their refusals too.
#[derive(Debug, Clone, Default)]
enum Tickets {
    #[default]
    None,
    /// One quorum queue, the common case: nothing allocated.
    One(u64),
    /// Several quorum queues (fanout, topic, several bindings).
    Many(Vec<u64>),
}

impl Tickets {
    fn push(&mut self, t: u64) {
        *self = match std::mem::take(self) {
            Tickets::None => Tickets::One(t),
            Tickets::One(first) => Tickets::Many(vec![first, t]),
            Tickets::Many(mut all) => {
                all.push(t);
                Tickets::Many(all)
            }
        };
    }

    fn as_slice(&self) -> &[u64] {
        match self {
            Tickets::None => &[],
            Tickets::One(t) => std::slice::from_ref(t),
            Tickets::Many(all) => all,
        }
    }
}

/// The fate of one publish, for its confirm.
#[derive(Debug, Clone, Default)]
struct Routed {
    /// When it is durable in every queue it reached.
    durability: Durability,
    /// A queue refused it (x-overflow=reject-publish): nack.
    rejected: bool,
    /// A queue's store could not take it (a write failed): nack; fails a tx.commit.
    failed: bool,
    /// Quorum queues took it as these tickets: confirm once the cluster settled the
    /// highest, nack if one of them was refused.
    replicated: Tickets,
}

impl Routed {
    /// Another publish of the same transaction: settled when both are.
    fn merge(&mut self, o: Routed) {
        self.durability = self.durability.max(o.durability);
        self.rejected |= o.rejected;
        self.failed |= o.failed;
        for &t in o.replicated.as_slice() {
            self.replicated.push(t);
        }
    }

    /// The publish's fate once known: Some(false) to ack, Some(true) to nack (refused, or
    /// not stored); None while its disk write or its cluster commit is pending.
    fn verdict(&self, commit: CommitState, quorum: Option<&crate::quorum_queues::QuorumQueues>) -> Option<bool> {
        let mut nack = match self.durability.settled(commit) {
            Settled::Pending => return None,
            Settled::Durable => self.rejected || self.failed,
            Settled::Failed => true,
        };
        let tickets = self.replicated.as_slice();
        if !tickets.is_empty() {
            match quorum {
                Some(q) if !q.all_settled(tickets) => return None,
                Some(q) => nack |= q.take_rejected(tickets),
                None => nack = true,
            }
        }
        Some(nack)
    }
}

#[derive(Default)]
struct Confirms {
    next_seq: u64,
    acked_upto: u64,
    /// (publish seq, its fate), in publish order.
    waiting: VecDeque<(u64, Routed)>,
}

/// The publish side of a full content frame set, once assembled.
pub enum ContentProgress {
    NeedMore,
    Complete,
}

/// tx.commit's messages will never be on disk: RabbitMQ closes the channel with 541
/// INTERNAL_ERROR when a commit fails.
fn commit_failed() -> AmqpError {
    AmqpError::new(wire::reply::INTERNAL_ERROR, "tx.commit failed: the message store cannot write to disk")
}

fn unexpected(text: &str) -> AmqpError {
    AmqpError::new(wire::reply::UNEXPECTED_FRAME, text)
}

impl Channel {
    pub fn new(shared: Arc<ChannelShared>) -> Channel {
        Channel {
            shared,
            closing: false,
            pending: None,
            consumers: HashMap::new(),
            consumers_sweep_at: CONSUMERS_SWEEP_MIN,
            consumer_prefetch: 0,
            confirm: None,
            tx: None,
            commit_waiting: None,
            last_queue: None,
            reply_to: None,
            timed_out_tags: std::collections::HashSet::new(),
            route_cache: None,
            held: std::cell::RefCell::new(Vec::new()),
            held_for: None,
            held_deleted: Vec::new(),
        }
    }

    pub fn id(&self) -> u16 {
        self.shared.id
    }

    pub fn expecting_content(&self) -> bool {
        self.pending.is_some()
    }

    fn send(&self, method: &Method) {
        let id = self.shared.id;
        if crate::persist::commit_deferred() {
            // After a durable change in this method: the reply waits for its fsync.
            frame::encode_method(&mut self.held.borrow_mut(), id, method);
            return;
        }
        self.shared.outbox.write_with(|out| frame::encode_method(out, id, method));
    }

    /// The definitions-log sequence number this channel's held replies wait for: the
    /// connection awaits it, then calls [`Channel::release_held`], before its next request.
    pub fn held_for(&self) -> Option<u64> {
        self.held_for
    }

    /// The fsync the held replies waited for is done: send them.
    pub fn release_held(&mut self) {
        self.held_for = None;
        let held = std::mem::take(&mut *self.held.borrow_mut());
        if !held.is_empty() {
            self.shared.outbox.write_with(|out| out.extend_from_slice(&held));
        }
        for d in std::mem::take(&mut self.held_deleted) {
            notify_deleted(d);
        }
    }

    /// The fsync failed: the held replies are never sent (the connection is closed).
    pub fn drop_held(&mut self) {
        self.held_for = None;
        self.held.borrow_mut().clear();
        // The queues are gone from the broker all the same: their consumers elsewhere
        // still learn it.
        for d in std::mem::take(&mut self.held_deleted) {
            notify_deleted(d);
        }
    }

    /// queue.bind / queue.unbind: write on the queue, read on the exchange, and the topic
    /// permission (read) on the binding key for a topic exchange.
    fn check_bind(&self, ctx: &ConnCtx, queue: &str, exchange: &str, key: &str) -> Result<(), AmqpError> {
        ctx.allow(Perm::Write, Resource::Queue, queue)?;
        ctx.allow(Perm::Read, Resource::Exchange, exchange)?;
        if ctx.vhost.exchange(exchange).is_ok_and(|e| e.options.kind == ExchangeKind::Topic) {
            ctx.access.check_topic(&ctx.server, Perm::Read, exchange, key)?;
        }
        Ok(())
    }

    fn queue_name(&self, name: &str) -> Result<String, AmqpError> {
        if !name.is_empty() {
            return Ok(name.to_owned());
        }
        self.last_queue.clone().ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    /// Handle a method on this (open) channel. Errors carry the reply code; the caller
    /// closes the channel or the connection according to it.
    /// Durable topology changes do not block the thread for their fsync: the replies sent
    /// after one are held, and [`Channel::held_for`] says what the connection must await.
    pub fn handle(&mut self, ctx: &ConnCtx, method: Method) -> Result<(), AmqpError> {
        let defer = crate::persist::DeferCommit::enter();
        let r = self.handle_method(ctx, method);
        match (defer.finish(), &r) {
            (Some(seq), Ok(())) => self.held_for = Some(seq),
            // The channel or connection closes with the error: no -ok goes out.
            (Some(_), Err(_)) => self.drop_held(),
            (None, _) => {}
        }
        r
    }

    fn handle_method(&mut self, ctx: &ConnCtx, method: Method) -> Result<(), AmqpError> {
        let vh = &ctx.vhost;
        match &method {
            Method::ExchangeDeclare { arguments, .. }
            | Method::ExchangeBind { arguments, .. }
            | Method::ExchangeUnbind { arguments, .. }
            | Method::QueueDeclare { arguments, .. }
            | Method::QueueBind { arguments, .. }
            | Method::QueueUnbind { arguments, .. }
            | Method::BasicConsume { arguments, .. } => {
                check_arguments_size(arguments, ctx.server.config.max_arguments_table_bytes)?;
            }
            _ => {}
        }
        // A nowait declare/bind/delete answers nothing, so it need not wait for the disk.
        let _nowait = match &method {
            Method::ExchangeDeclare { nowait: true, .. }
            | Method::ExchangeDelete { nowait: true, .. }
            | Method::ExchangeBind { nowait: true, .. }
            | Method::ExchangeUnbind { nowait: true, .. }
            | Method::QueueDeclare { nowait: true, .. }
            | Method::QueueBind { nowait: true, .. }
            | Method::QueueDelete { nowait: true, .. } => Some(crate::persist::NoWait::enter()),
            _ => None,
        };
        match method {
            Method::AccessRequest { .. } => self.send(&Method::AccessRequestOk { ticket: 1 }),
            Method::ChannelFlow { active } => {
                // RabbitMQ (3.3+) refuses client-initiated flow=false; consumers use QoS.
                if !active {
                    return Err(AmqpError::not_implemented("active=false"));
                }
                self.send(&Method::ChannelFlowOk { active });
            }
            Method::ExchangeDeclare {
                exchange,
                kind,
                passive,
                durable,
                auto_delete,
                internal,
                nowait,
                arguments,
                ..
            } => {
                let (kind, delayed) = if passive {
                    (ExchangeKind::Direct, false)
                } else {
                    broker::exchange::parse_type(&kind, &arguments)?
                };
                if !passive && exchange.is_empty() {
                    return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
                }
                if !passive {
                    // RabbitMQ's table: configure on the exchange; with an alternate
                    // exchange also write on it and read on this one. Passive: none.
                    ctx.allow(Perm::Configure, Resource::Exchange, &exchange)?;
                    if let Some(ae) = arguments.get("alternate-exchange").and_then(|v| v.as_str()) {
                        ctx.allow(Perm::Write, Resource::Exchange, ae)?;
                        ctx.allow(Perm::Read, Resource::Exchange, &exchange)?;
                    }
                }
                // Clustered: through the cluster's log (crate::cluster_topology).
                ctx.server.exchange_declare(
                    vh,
                    &exchange,
                    passive,
                    ExchangeOptions { kind, delayed, durable, auto_delete, internal, arguments },
                )?;
                if !nowait {
                    self.send(&Method::ExchangeDeclareOk);
                }
            }
            Method::ExchangeDelete { exchange, if_unused, nowait, .. } => {
                ctx.allow(Perm::Configure, Resource::Exchange, &exchange)?;
                ctx.server.exchange_delete(vh, &exchange, if_unused)?;
                if !nowait {
                    self.send(&Method::ExchangeDeleteOk);
                }
            }
            Method::ExchangeBind { destination, source, routing_key, nowait, arguments, .. } => {
                ctx.allow(Perm::Write, Resource::Exchange, &destination)?;
                ctx.allow(Perm::Read, Resource::Exchange, &source)?;
                let b = BindingSpec {
                    source: &source,
                    destination: &destination,
                    to_queue: false,
                    routing_key: &routing_key,
                };
                ctx.server.change_binding(vh, b, arguments, ctx.conn_id, true)?;
                if !nowait {
                    self.send(&Method::ExchangeBindOk);
                }
            }
            Method::ExchangeUnbind { destination, source, routing_key, nowait, arguments, .. } => {
                ctx.allow(Perm::Write, Resource::Exchange, &destination)?;
                ctx.allow(Perm::Read, Resource::Exchange, &source)?;
                let b = BindingSpec {
                    source: &source,
                    destination: &destination,
                    to_queue: false,
                    routing_key: &routing_key,
                };
                ctx.server.change_binding(vh, b, arguments, ctx.conn_id, false)?;
                if !nowait {
                    self.send(&Method::ExchangeUnbindOk);
                }
            }
            Method::QueueDeclare { queue, passive, durable, exclusive, auto_delete, nowait, arguments, .. } => {
                // A server-named queue is named here, so that the check below sees the
                // name it will have (as RabbitMQ checks configure on `amq.gen-…`).
                let server_named = queue.is_empty() && !passive;
                let queue = if server_named { generate_name("amq.gen-", |n| vh.has_queue(n)) } else { queue };
                if !passive {
                    // Configure on the queue; with a dead-letter exchange also write on
                    // it and read on the queue. Passive: none.
                    ctx.allow(Perm::Configure, Resource::Queue, &queue)?;
                    if let Some(dlx) = arguments.get("x-dead-letter-exchange").and_then(|v| v.as_str()) {
                        ctx.allow(Perm::Write, Resource::Exchange, dlx)?;
                        ctx.allow(Perm::Read, Resource::Queue, &queue)?;
                    }
                }
                let opts = QueueOptions { durable, exclusive, auto_delete, arguments };
                if passive {
                    if !vh.has_queue(&queue) {
                        // Clustered: see a quorum queue another node just declared first.
                        ctx.server.cluster_read_barrier();
                    }
                } else if !server_named {
                    // Clustered: a quorum queue is declared through the cluster's log.
                    ctx.server.declare_replicated_queue(vh, &queue, &opts)?;
                }
                if !passive {
                    ctx.server.queue_declared.fetch_add(1, Ordering::Relaxed);
                }
                let (q, _created) = if server_named {
                    vh.declare_server_named_queue(&queue, opts, ctx.conn_id)?
                } else {
                    vh.declare_queue(&queue, passive, opts, ctx.conn_id)?
                };
                // A queue of another node: its home gives the counts (404 when it is down).
                let stats = q.declare_stats()?;
                self.last_queue = Some(q.name.clone());
                if !nowait {
                    self.send(&Method::QueueDeclareOk {
                        queue: q.name.clone(),
                        message_count: stats.messages_ready as u32,
                        consumer_count: stats.consumers,
                    });
                }
            }
            Method::QueueBind { queue, exchange, routing_key, nowait, arguments, .. } => {
                let queue = self.queue_name(&queue)?;
                self.check_bind(ctx, &queue, &exchange, &routing_key)?;
                // RabbitMQ: an empty routing key with an empty queue name means the queue's name.
                // Clustered, a quorum queue's binding goes through the cluster's log.
                let b =
                    BindingSpec { source: &exchange, destination: &queue, to_queue: true, routing_key: &routing_key };
                ctx.server.change_binding(vh, b, arguments, ctx.conn_id, true)?;
                if !nowait {
                    self.send(&Method::QueueBindOk);
                }
            }
            Method::QueueUnbind { queue, exchange, routing_key, arguments, .. } => {
                let queue = self.queue_name(&queue)?;
                self.check_bind(ctx, &queue, &exchange, &routing_key)?;
                let b =
                    BindingSpec { source: &exchange, destination: &queue, to_queue: true, routing_key: &routing_key };
                ctx.server.change_binding(vh, b, arguments, ctx.conn_id, false)?;
                self.send(&Method::QueueUnbindOk);
            }
            Method::QueuePurge { queue, nowait, .. } => {
                let name = self.queue_name(&queue)?;
                ctx.allow(Perm::Read, Resource::Queue, &name)?;
                let q = vh.queue(&name, ctx.conn_id)?;
                let n = q.purge();
                if !nowait {
                    self.send(&Method::QueuePurgeOk { message_count: n as u32 });
                }
            }
            Method::QueueDelete { queue, if_unused, if_empty, nowait, .. } => {
                let name = self.queue_name(&queue)?;
                ctx.allow(Perm::Configure, Resource::Queue, &name)?;
                if let Ok(q) = vh.queue(&name, ctx.conn_id)
                    && q.replica().is_some()
                {
                    // A replicated quorum queue, or a classic queue of another node: deleted
                    // through the cluster's log (the home's counts, or 404 if it is down).
                    let stats = q.declare_stats()?;
                    if if_unused && stats.consumers > 0 {
                        return Err(AmqpError::precondition_failed(format!(
                            "queue '{name}' in vhost '{}' in use",
                            vh.name
                        )));
                    }
                    if if_empty && stats.messages_ready > 0 {
                        return Err(AmqpError::precondition_failed(format!(
                            "queue '{name}' in vhost '{}' is not empty",
                            vh.name
                        )));
                    }
                    ctx.server.delete_through_log(&vh.name, &q)?;
                    if !nowait {
                        self.send(&Method::QueueDeleteOk { message_count: stats.messages_ready as u32 });
                    }
                    return Ok(());
                }
                let deleted = vh.delete_queue(&name, if_unused, if_empty, ctx.conn_id)?;
                // This node is its home: the others forget it too.
                ctx.server.delete_classic(&vh.name, &name, true)?;
                // delete-ok first, then the server's basic.cancel to the queue's consumers
                // (this channel's too), as RabbitMQ orders them: a client waiting for
                // delete-ok (py-amqp) would take a cancel arriving first as an error.
                if !nowait {
                    self.send(&Method::QueueDeleteOk { message_count: deleted.message_count });
                }
                if crate::persist::commit_deferred() {
                    // delete-ok is held for the definitions log's fsync: so are the cancels.
                    self.held_deleted.push(deleted);
                } else {
                    notify_deleted(deleted);
                }
            }
            Method::BasicQos { prefetch_size, prefetch_count, global } => {
                if prefetch_size != 0 {
                    return Err(AmqpError::not_implemented(format!("prefetch_size!=0 ({prefetch_size})")));
                }
                if global {
                    self.shared.state.lock().global_prefetch = prefetch_count.into();
                    self.redispatch();
                } else {
                    self.consumer_prefetch = prefetch_count.into();
                    self.shared.meta.lock().prefetch = prefetch_count.into();
                }
                self.send(&Method::BasicQosOk);
            }
            Method::BasicConsume { queue, consumer_tag, no_ack, exclusive, nowait, arguments, .. } => {
                self.consume(ctx, &queue, consumer_tag, no_ack, exclusive, nowait, &arguments)?;
            }
            Method::BasicCancel { consumer_tag, nowait } => {
                let ok = (!nowait).then(|| Method::BasicCancelOk { consumer_tag: consumer_tag.clone() });
                self.cancel(ctx, &consumer_tag, ok);
            }
            Method::BasicPublish { exchange, routing_key, mandatory, immediate, .. } => {
                if immediate {
                    return Err(AmqpError::not_implemented("immediate=true"));
                }
                self.pending = Some(PendingPublish {
                    exchange,
                    routing_key,
                    mandatory,
                    header: None,
                    first: None,
                    assembled: None,
                    received: 0,
                    empty_frames: 0,
                });
            }
            Method::BasicGet { queue, no_ack, .. } => self.get(ctx, &queue, no_ack)?,
            Method::BasicAck { delivery_tag, multiple } => {
                let entries = self.take_unacked(delivery_tag, multiple)?;
                bump(&self.shared.counters.ack, entries.len() as u64);
                self.settle_or_defer(entries, None);
            }
            Method::BasicReject { delivery_tag, requeue } => {
                let entries = self.take_unacked(delivery_tag, false)?;
                self.settle_or_defer(entries, Some(requeue));
            }
            Method::BasicNack { delivery_tag, multiple, requeue } => {
                let entries = self.take_unacked(delivery_tag, multiple)?;
                self.settle_or_defer(entries, Some(requeue));
            }
            Method::BasicRecover { requeue } | Method::BasicRecoverAsync { requeue } => {
                if !requeue {
                    return Err(AmqpError::not_implemented("requeue=false"));
                }
                let entries = self.take_unacked(0, true)?;
                // recover-ok before the redeliveries: clients (lapin) drop deliveries
                // buffered before it.
                if matches!(method, Method::BasicRecover { .. }) {
                    self.send(&Method::BasicRecoverOk);
                }
                settle(entries, Some(true));
            }
            Method::ConfirmSelect { nowait } => {
                if self.tx.is_some() {
                    return Err(AmqpError::precondition_failed("cannot switch from tx to confirm mode"));
                }
                if self.confirm.is_none() {
                    self.confirm = Some(Confirms { next_seq: 1, ..Confirms::default() });
                    self.shared.meta.lock().confirm = true;
                }
                if !nowait {
                    self.send(&Method::ConfirmSelectOk);
                }
            }
            Method::TxSelect => {
                if self.confirm.is_some() {
                    return Err(AmqpError::precondition_failed("cannot switch from confirm to tx mode"));
                }
                if self.tx.is_none() {
                    self.tx = Some(Vec::new());
                    self.shared.meta.lock().transactional = true;
                }
                self.send(&Method::TxSelectOk);
            }
            Method::TxCommit => {
                let ops = std::mem::take(
                    self.tx.as_mut().ok_or_else(|| AmqpError::precondition_failed("channel is not transactional"))?,
                );
                // Every operation is applied, in order (publishes were routed when they
                // arrived), so no ack is lost half-way through.
                let mut all = Routed::default();
                for op in ops {
                    match op {
                        TxOp::Publish { route, msg, mandatory } => all.merge(self.deliver(ctx, &route, msg, mandatory)),
                        TxOp::Settle { entries, requeue } => settle(entries, requeue),
                    }
                }
                self.redispatch();
                // commit-ok only once the committed messages are on disk — in a cluster, once
                // a majority has those for quorum queues (as RabbitMQ's tx waits for its
                // queues' confirms); a queue's refusal fails the commit as RabbitMQ's does.
                if all.failed {
                    return Err(commit_failed());
                }
                let replicated = !all.replicated.as_slice().is_empty();
                self.commit_waiting = Some(all);
                if !replicated {
                    self.settle_commit(*ctx.durable.borrow(), None)?;
                }
            }
            Method::TxRollback => {
                let ops = std::mem::take(
                    self.tx.as_mut().ok_or_else(|| AmqpError::precondition_failed("channel is not transactional"))?,
                );
                // Acks in a rolled-back transaction are forgotten: the messages stay
                // unacknowledged under their original tags.
                let mut st = self.shared.state.lock();
                for op in ops {
                    if let TxOp::Settle { entries, .. } = op {
                        for e in entries {
                            if let Some(c) = &e.consumer {
                                c.unacked.fetch_add(1, Ordering::Relaxed);
                            }
                            st.unacked.insert(e);
                        }
                    }
                }
                drop(st);
                self.send(&Method::TxRollbackOk);
            }
            other => {
                return Err(AmqpError::command_invalid(format!("unexpected method {} on a channel", other.name())));
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn consume(
        &mut self,
        ctx: &ConnCtx,
        queue: &str,
        tag: String,
        no_ack: bool,
        exclusive: bool,
        nowait: bool,
        arguments: &wire::FieldTable,
    ) -> Result<(), AmqpError> {
        let q = if queue == REPLY_TO {
            self.reply_queue(ctx, no_ack)?
        } else {
            let name = self.queue_name(queue)?;
            ctx.allow(Perm::Read, Resource::Queue, &name)?;
            ctx.vhost.queue(&name, ctx.conn_id)?
        };
        let cargs = broker::args::ConsumerArgs::parse(arguments, &q.name, &ctx.vhost.name)?;
        // Consumers the broker cancelled (their queue was deleted) stay in the map until
        // swept. Sweeping only once the map doubled keeps basic.consume O(1) amortized
        // (a sweep per consume made 20,000 consumers on one channel quadratic); a
        // cancelled consumer's own tag is free for reuse at once.
        if self.consumers.len() >= self.consumers_sweep_at {
            self.consumers.retain(|_, c| !c.cancelled.load(Ordering::Relaxed));
            self.consumers_sweep_at = (self.consumers.len() * 2).max(CONSUMERS_SWEEP_MIN);
        }
        if self.consumers.get(&tag).is_some_and(|c| c.cancelled.load(Ordering::Relaxed)) {
            self.consumers.remove(&tag);
        }
        let tag = if tag.is_empty() {
            generate_name("amq.ctag-", |t| self.consumers.contains_key(t))
        } else if self.consumers.contains_key(&tag) {
            return Err(AmqpError::not_allowed(format!("attempt to reuse consumer tag '{tag}'")));
        } else {
            tag
        };
        // RabbitMQ's quorum queues count a consumer's deliveries against its own prefetch
        // only; a channel-wide (global) one is refused with 540 rather than ignored (Celery
        // before 5.5 meets this and is told to set global_qos False).
        if q.replica().is_some() && self.shared.state.lock().global_prefetch != 0 {
            return Err(AmqpError::not_implemented(format!(
                "queue '{}' in vhost '{}' does not support global qos",
                q.name, q.vhost
            )));
        }
        let handle = ConsumerHandle::new(
            next_consumer_id(),
            tag.clone(),
            self.shared.clone(),
            q.clone(),
            no_ack,
            self.consumer_prefetch,
            ctx.cancel_notify,
            q.consumer_timeout_ms().map(Duration::from_millis).or(ctx.server.config.consumer_timeout),
        );
        let consumer =
            Consumer { id: handle.id, tag: tag.clone(), exclusive, priority: cargs.priority, sink: handle.clone() };
        let ok = Method::BasicConsumeOk { consumer_tag: tag.clone() };
        let id = self.shared.id;
        let outbox = self.shared.outbox.clone();
        // consume-ok must reach the client before the first delivery: it is written while
        // the queue is locked, before the queue dispatches to the new consumer.
        q.add_consumer(consumer, || {
            if !nowait {
                outbox.write_with(|out| frame::encode_method(out, id, &ok));
            }
        })?;
        let meta = ConsumerMeta { handle: Arc::downgrade(&handle), exclusive, arguments: arguments.clone() };
        self.shared.meta.lock().consumers.insert(tag.clone(), meta);
        self.consumers.insert(tag, handle);
        Ok(())
    }

    /// Direct reply-to: the channel's pseudo-queue, created on the first consume. As in
    /// RabbitMQ, the consumer must be no-ack and there is one per channel.
    fn reply_queue(&mut self, ctx: &ConnCtx, no_ack: bool) -> Result<Arc<Queue>, AmqpError> {
        if !no_ack {
            return Err(AmqpError::precondition_failed("reply consumer cannot acknowledge"));
        }
        if self.reply_to.is_some() {
            return Err(AmqpError::precondition_failed("reply consumer already set"));
        }
        let mut reg = ctx.server.reply_to.lock();
        let token = generate_name("", |t| reg.contains_key(t));
        let opts =
            QueueOptions { durable: false, exclusive: true, auto_delete: false, arguments: wire::FieldTable::new() };
        let q = Queue::new(&ctx.vhost.name, REPLY_TO.to_owned(), opts, Some(ctx.conn_id));
        reg.insert(token.clone(), Arc::downgrade(&q));
        self.reply_to = Some((token, q.clone()));
        Ok(q)
    }

    /// The client cancels a consumer; `ok` is the cancel-ok to send, if any.
    fn cancel(&mut self, ctx: &ConnCtx, tag: &str, ok: Option<Method>) {
        let Some(c) = self.consumers.remove(tag) else {
            if let Some(ok) = &ok {
                self.send(ok);
            }
            return;
        };
        self.shared.meta.lock().consumers.remove(tag);
        // Marked cancelled, and cancel-ok queued, under the channel's lock: a queue deleted
        // on another task at the same moment then either finds the mark and stays silent,
        // or sends its basic.cancel before this cancel-ok, never after it (RabbitMQ's
        // channel only cancels consumers it still has; a client that already got
        // cancel-ok treats a later basic.cancel as an error).
        {
            let _st = self.shared.state.lock();
            c.cancelled.store(true, Ordering::Relaxed);
            if let Some(ok) = &ok {
                let id = self.shared.id;
                self.shared.outbox.write_with(|out| frame::encode_method(out, id, ok));
            }
        }
        if c.queue.remove_consumer(c.id) {
            notify_deleted(ctx.vhost.remove_queue(&c.queue));
        }
    }

    fn get(&mut self, ctx: &ConnCtx, queue: &str, no_ack: bool) -> Result<(), AmqpError> {
        let name = self.queue_name(queue)?;
        ctx.allow(Perm::Read, Resource::Queue, &name)?;
        let q = ctx.vhost.queue(&name, ctx.conn_id)?;
        let id = self.shared.id;
        match q.get(no_ack) {
            Some((m, remaining)) => {
                let tag = self.shared.record_get(&q, &m, no_ack);
                let msg = &m.msg;
                self.shared.outbox.write_content(id, &msg.body, |out| {
                    frame::encode_basic_get_ok(out, id, tag, m.redelivered, &msg.exchange, &msg.routing_key, remaining);
                    frame::encode_header(out, id, wire::class::BASIC, msg.body_size(), &msg.properties);
                });
            }
            None => {
                bump(&self.shared.counters.get_empty, 1);
                self.send(&Method::BasicGetEmpty { cluster_id: String::new() });
            }
        }
        Ok(())
    }

    /// Remove the deliveries an ack/nack/reject names. Tag 0 with `multiple` means all.
    fn take_unacked(&mut self, tag: u64, multiple: bool) -> Result<Vec<Unacked>, AmqpError> {
        if !multiple && self.timed_out_tags.remove(&tag) {
            return Ok(Vec::new());
        }
        let mut st = self.shared.state.lock();
        let unknown = || AmqpError::precondition_failed(format!("unknown delivery tag {tag}"));
        let taken: Vec<Unacked> = if multiple {
            if tag == 0 {
                st.unacked.take_all()
            } else if st.unacked.contains(tag) {
                st.unacked.take_upto(tag)
            } else if self.timed_out_tags.remove(&tag) {
                // Its delivery was requeued by the consumer timeout: a late `multiple` ack
                // naming it acks the deliveries below it that are still unacked, as a
                // single late ack of it is ignored.
                st.unacked.take_upto(tag)
            } else {
                return Err(unknown());
            }
        } else {
            vec![st.unacked.remove(tag).ok_or_else(unknown)?]
        };
        for e in &taken {
            if let Some(c) = &e.consumer {
                c.unacked.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Ok(taken)
    }

    fn settle_or_defer(&mut self, entries: Vec<Unacked>, requeue: Option<bool>) {
        match &mut self.tx {
            Some(ops) => ops.push(TxOp::Settle { entries, requeue }),
            None => {
                settle(entries, requeue);
                self.redispatch();
            }
        }
    }

    /// Consumer timeout: cancel every consumer holding a delivery unacked for longer than
    /// its timeout and requeue its deliveries. Clients with consumer_cancel_notify get
    /// basic.cancel and keep the channel; others get RabbitMQ's channel error.
    pub fn check_consumer_timeouts(&mut self, ctx: &ConnCtx, now: Instant) -> Result<(), AmqpError> {
        let timed_out: Vec<Arc<ConsumerHandle>> = {
            let st = self.shared.state.lock();
            self.consumers
                .values()
                .filter(|c| {
                    c.timeout.is_some_and(|t| {
                        st.unacked.iter().any(|u| {
                            u.consumer.as_ref().is_some_and(|uc| uc.id == c.id)
                                && u.delivered_at.is_some_and(|at| now.duration_since(at) > t)
                        })
                    })
                })
                .cloned()
                .collect()
        };
        for c in timed_out {
            let timeout_ms = c.timeout.map_or(0, |t| t.as_millis());
            if !c.cancel_notify {
                return Err(AmqpError::precondition_failed(format!(
                    "delivery acknowledgement on channel {} timed out. Timeout value used: {timeout_ms} ms. This timeout value can be configured, see consumers doc guide to learn more",
                    self.shared.id
                )));
            }
            tracing::warn!(channel = self.shared.id, consumer = %c.tag, timeout_ms, "consumer timeout: cancelling the consumer and requeueing its deliveries");
            let entries: Vec<Unacked> = {
                let mut st = self.shared.state.lock();
                st.unacked.take_where(|u| u.consumer.as_ref().is_some_and(|uc| uc.id == c.id))
            };
            self.timed_out_tags.extend(entries.iter().map(|e| e.tag));
            c.unacked.store(0, Ordering::Relaxed);
            self.consumers.remove(&c.tag);
            self.shared.meta.lock().consumers.remove(&c.tag);
            c.cancelled.store(true, Ordering::Relaxed);
            if c.queue.remove_consumer(c.id) {
                notify_deleted(ctx.vhost.remove_queue(&c.queue));
            }
            self.send(&Method::BasicCancel { consumer_tag: c.tag.clone(), nowait: true });
            settle(entries, Some(true));
        }
        Ok(())
    }

    pub fn has_consumer_timeouts(&self) -> bool {
        self.consumers.values().any(|c| c.timeout.is_some())
    }

    /// Credit was freed or limits changed: let the queues of this channel's consumers
    /// deliver again.
    fn redispatch(&self) {
        for c in self.consumers.values() {
            c.queue.dispatch();
        }
    }

    /// A content header frame for this channel.
    pub fn content_header(
        &mut self,
        ctx: &ConnCtx,
        class_id: u16,
        body_size: u64,
        properties: Bytes,
    ) -> Result<ContentProgress, AmqpError> {
        let Some(p) = self.pending.as_mut() else {
            return Err(unexpected("expected method frame, got non method frame instead"));
        };
        if p.header.is_some() {
            return Err(unexpected("expected content body, got non content body frame instead"));
        }
        if class_id != wire::class::BASIC {
            return Err(unexpected(&format!("expected content header for class 60, got one for class {class_id}")));
        }
        if body_size > ctx.max_message_size_bytes {
            self.pending = None;
            return Err(AmqpError::precondition_failed(format!(
                "message size {body_size} is larger than configured max size {}",
                ctx.max_message_size_bytes
            )));
        }
        p.header = Some((body_size, properties));
        if body_size == 0 {
            return Ok(ContentProgress::Complete);
        }
        Ok(ContentProgress::NeedMore)
    }

    /// A body frame for this channel.
    pub fn content_body(&mut self, payload: Bytes) -> Result<ContentProgress, AmqpError> {
        let Some(p) = self.pending.as_mut() else {
            return Err(unexpected("expected method frame, got non method frame instead"));
        };
        let Some((size, _)) = &p.header else {
            return Err(unexpected("expected content header for class 60, got non content header frame instead"));
        };
        if payload.is_empty() {
            p.empty_frames += 1;
            if p.empty_frames > MAX_EMPTY_BODY_FRAMES {
                return Err(AmqpError::new(
                    wire::reply::FRAME_ERROR,
                    format!("more than {MAX_EMPTY_BODY_FRAMES} empty body frames for one message"),
                ));
            }
            return Ok(ContentProgress::NeedMore);
        }
        p.received += payload.len() as u64;
        if p.received > *size {
            return Err(AmqpError::new(
                wire::reply::FRAME_ERROR,
                format!("body of {} bytes exceeds declared size {size}", p.received),
            ));
        }
        match (&mut p.assembled, &p.first) {
            (Some(b), _) => b.extend_from_slice(&payload),
            (None, None) => p.first = Some(payload),
            (None, Some(first)) => {
                // Grown as bytes arrive, not reserved from the declared size: a header
                // alone must not make us allocate 16 MiB.
                let mut b = BytesMut::with_capacity(first.len() + payload.len());
                b.extend_from_slice(first);
                b.extend_from_slice(&payload);
                p.first = None;
                p.assembled = Some(b);
            }
        }
        if p.received == *size {
            return Ok(ContentProgress::Complete);
        }
        Ok(ContentProgress::NeedMore)
    }

    /// The method frame arrived while content was expected.
    pub fn content_interrupted(&self) -> AmqpError {
        match self.pending.as_ref().and_then(|p| p.header.as_ref()) {
            None => unexpected("expected content header for class 60, got non content header frame instead"),
            Some(_) => unexpected("expected content body, got non content body frame instead"),
        }
    }

    /// The pending publish is complete: build the message and route it.
    pub fn finish_publish(&mut self, ctx: &ConnCtx) -> Result<(), AmqpError> {
        let Some(p) = self.pending.take() else { return Ok(()) };
        let Some((_, properties)) = p.header else { return Ok(()) };
        let body = match (p.assembled, p.first) {
            (Some(b), _) => b.freeze(),
            // One body frame: the body is a slice of the read buffer, no copy.
            (None, Some(first)) => first,
            (None, None) => Bytes::new(),
        };
        if same_str(&p.exchange, LEASE_EXCHANGE) {
            return self.extend_lease(&p.routing_key);
        }
        let summary = wire::properties::summarize(&properties).map_err(|e| AmqpError::new(e.code, e.text))?;
        let expiration_ms = match &summary.expiration {
            None => None,
            // RabbitMQ: a string of a non-negative integer of milliseconds.
            Some(e) => Some(e.parse::<u64>().map_err(|_| {
                AmqpError::precondition_failed(format!("invalid expiration '{e}': {{error,no_integer}}"))
            })?),
        };
        let properties = if summary.reply_to_direct { self.rewrite_reply_to(&properties)? } else { properties };
        // Write on the exchange before looking it up (403 before 404, as RabbitMQ), the
        // topic permission once its type is known.
        // The route cache remembers that write was allowed at the directory's current
        // version: then no check (one integer compare; the hot path).
        let version = ctx.server.access_version();
        let exchange = match self.exchange_for_publish(ctx, &p.exchange) {
            Ok(ex) => ex,
            Err(e) => {
                ctx.access.check_publish(&ctx.server, &p.exchange, false, &p.routing_key)?;
                return Err(e);
            }
        };
        if let Some(c) = &mut self.route_cache
            && c.write_allowed_at != Some(version)
        {
            ctx.access.check_publish(&ctx.server, &p.exchange, false, &p.routing_key)?;
            c.write_allowed_at = Some(version);
        }
        if exchange.options.kind == ExchangeKind::Topic {
            ctx.access.check_publish(&ctx.server, &p.exchange, true, &p.routing_key)?;
        }
        if exchange.options.internal {
            return Err(AmqpError::access_refused(format!(
                "cannot publish to internal exchange '{}' in vhost '{}'",
                p.exchange, ctx.vhost.name
            )));
        }
        let msg = Arc::new(Message {
            exchange: p.exchange.clone(),
            routing_key: p.routing_key,
            properties,
            body,
            persistent: summary.delivery_mode == Some(2),
            priority: summary.priority.unwrap_or(0),
            expiration_ms,
        });
        let route = self.resolve(ctx, &exchange, &msg);
        let fanout = match &route {
            Route::Delayed { .. } => 0,
            Route::Queues(q) => q.len(),
            Route::Cached => self.route_cache.as_ref().map_or(0, |c| c.queues.len()),
        };
        exchange.counters.record(fanout as u64);
        if self.confirm.is_some() {
            bump(&self.shared.counters.publish_confirm, 1);
        }
        if self.tx.is_some() {
            let route = match route {
                Route::Cached => Route::Queues(self.route_cache.as_ref().map(|c| c.queues.clone()).unwrap_or_default()),
                r => r,
            };
            if let Some(ops) = &mut self.tx {
                ops.push(TxOp::Publish { route, msg, mandatory: p.mandatory });
            }
            return Ok(());
        }
        let routed = self.deliver(ctx, &route, msg, p.mandatory);
        if let Some(c) = &mut self.confirm {
            c.waiting.push_back((c.next_seq, routed));
            c.next_seq += 1;
            self.shared.counters.unconfirmed.store(c.waiting.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// A publish to [`LEASE_EXCHANGE`]: the routing key is a delivery tag of this channel,
    /// whose consumer-timeout clock restarts now. A tag that is not (or no longer)
    /// unacknowledged changes nothing (its ack may have crossed the lease on the wire); a
    /// key that is not a decimal tag is a channel error (406). Outside any transaction,
    /// and confirmed at once in confirm mode.
    fn extend_lease(&mut self, routing_key: &str) -> Result<(), AmqpError> {
        let tag: u64 = routing_key.parse().map_err(|_| {
            AmqpError::precondition_failed(format!(
                "{LEASE_EXCHANGE}: the routing key must be a delivery tag (decimal), not '{routing_key}'"
            ))
        })?;
        {
            let mut st = self.shared.state.lock();
            if let Some(u) = st.unacked.get_mut(tag)
                && u.delivered_at.is_some()
            {
                u.delivered_at = Some(Instant::now());
            }
        }
        if let Some(c) = &mut self.confirm {
            c.waiting.push_back((c.next_seq, Routed::default()));
            c.next_seq += 1;
            self.shared.counters.unconfirmed.store(c.waiting.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// A request published with reply_to=amq.rabbitmq.reply-to: point the reply at this
    /// channel's pseudo-queue.
    fn rewrite_reply_to(&self, raw: &Bytes) -> Result<Bytes, AmqpError> {
        let Some((token, _)) = &self.reply_to else {
            return Err(AmqpError::precondition_failed("fast reply consumer does not exist"));
        };
        let mut props = wire::BasicProperties::decode(raw).map_err(|e| AmqpError::new(e.code, e.text))?;
        props.reply_to = Some(format!("{REPLY_TO}.{token}"));
        let mut out = Vec::with_capacity(raw.len() + 32);
        props.encode(&mut out);
        Ok(Bytes::from(out))
    }

    /// The exchange a publish names, from the channel's cache while the topology is
    /// unchanged (publishers mostly repeat one exchange).
    fn exchange_for_publish(&mut self, ctx: &ConnCtx, name: &str) -> Result<Arc<Exchange>, AmqpError> {
        let generation = ctx.vhost.generation();
        if let Some(c) = &self.route_cache
            && c.generation == generation
            && same_str(&c.exchange.name, name)
        {
            return Ok(c.exchange.clone());
        }
        let ex = ctx.vhost.exchange(name)?;
        self.route_cache = Some(RouteCache {
            generation,
            exchange: ex.clone(),
            write_allowed_at: None,
            routing_key: None,
            queues: Vec::new(),
        });
        Ok(ex)
    }

    /// Route a publish: the queues it goes to (or the delayed exchange that holds it).
    fn resolve(&mut self, ctx: &ConnCtx, ex: &Arc<Exchange>, msg: &Message) -> Route {
        let mut queues: Vec<Arc<Queue>> = Vec::new();
        let props = &msg.properties;
        let mut headers = || wire::properties::headers_of(props).ok().flatten();
        match msg.routing_key.strip_prefix(REPLY_TO).and_then(|t| t.strip_prefix('.')) {
            // A reply to a direct reply-to requester (default exchange only).
            Some(token) if ex.name.is_empty() => {
                if let Some(q) = ctx.server.reply_to.lock().get(token).and_then(std::sync::Weak::upgrade) {
                    queues.push(q);
                }
                Route::Queues(queues)
            }
            _ if ex.options.delayed => {
                // x-delayed-message: hold it for x-delay ms, then route (by the exchange's
                // x-delayed-type). Like RabbitMQ's plugin, no basic.return for it later.
                let delay = headers().and_then(|h| h.get("x-delay").and_then(wire::FieldValue::as_i64)).unwrap_or(0);
                if delay > 0 {
                    return Route::Delayed { exchange: ex.clone(), delay_ms: delay as u64 };
                }
                ctx.vhost.route(ex, &msg.routing_key, &mut headers, &mut queues);
                Route::Queues(queues)
            }
            // Headers exchanges route by content: never cached.
            _ if ex.kind() == ExchangeKind::Headers => {
                ctx.vhost.route(ex, &msg.routing_key, &mut headers, &mut queues);
                Route::Queues(queues)
            }
            _ => {
                let generation = ctx.vhost.generation();
                match &self.route_cache {
                    Some(c)
                        if c.generation == generation
                            && Arc::ptr_eq(&c.exchange, ex)
                            && c.routing_key.as_deref() == Some(msg.routing_key.as_str()) => {}
                    _ => {
                        ctx.vhost.route(ex, &msg.routing_key, &mut headers, &mut queues);
                        let write_allowed_at = self
                            .route_cache
                            .as_ref()
                            .filter(|c| Arc::ptr_eq(&c.exchange, ex))
                            .and_then(|c| c.write_allowed_at);
                        self.route_cache = Some(RouteCache {
                            generation,
                            exchange: ex.clone(),
                            write_allowed_at,
                            routing_key: Some(msg.routing_key.clone()),
                            queues,
                        });
                    }
                }
                Route::Cached
            }
        }
    }

    /// Enqueue a routed publish (queues deleted since it was routed are skipped); returns
    /// whether a queue refused it or failed to store it, and when it is durable in every
    /// queue it reached.
    fn deliver(&self, ctx: &ConnCtx, route: &Route, msg: Arc<Message>, mandatory: bool) -> Routed {
        let counters = &self.shared.counters;
        bump(&counters.publish, 1);
        let size = msg.body_size();
        bump(&counters.size_sum, size);
        if let Some(i) = mgmt::node::message_size_bucket(size) {
            bump(&counters.size_buckets[i], 1);
        }
        let targets: &[Arc<Queue>] = match route {
            Route::Delayed { exchange, delay_ms } => {
                // Held by the exchange: it counts as routed now.
                bump(&counters.routed, 1);
                let due = broker::clock::Clock::now_ms(&broker::clock::SystemClock).saturating_add(*delay_ms);
                return match ctx.server.delay(&ctx.vhost, exchange, msg, due) {
                    Ok(durability) => Routed { durability, ..Routed::default() },
                    Err(_) => Routed { failed: true, ..Routed::default() },
                };
            }
            Route::Queues(queues) => queues,
            Route::Cached => self.route_cache.as_ref().map_or(&[], |c| &c.queues[..]),
        };
        let mut routed = false;
        let mut out = Routed::default();
        // A transaction's commit waits for its publishes as a confirm does.
        let confirm = self.confirm.is_some() || self.tx.is_some();
        for q in targets {
            let outcome = if confirm { q.publish_confirmed(msg.clone()) } else { q.publish(msg.clone()) };
            match outcome {
                PublishOutcome::Enqueued(d) => {
                    routed = true;
                    out.durability = out.durability.max(d);
                    if q.in_flow() {
                        ctx.flow.set(Some(q.clone()));
                    }
                }
                PublishOutcome::Rejected => {
                    // x-overflow=reject-publish: the publisher gets a nack, not a return.
                    routed = true;
                    out.rejected = true;
                }
                PublishOutcome::Failed => {
                    // The queue's store could not take it (logged there): nack.
                    routed = true;
                    out.failed = true;
                }
                PublishOutcome::Replicated(t) => {
                    routed = true;
                    out.replicated.push(t);
                }
                PublishOutcome::Deleted => {}
            }
        }
        if routed {
            bump(&counters.routed, 1);
        } else if mandatory {
            bump(&counters.return_unroutable, 1);
        } else {
            bump(&counters.drop_unroutable, 1);
        }
        if !routed && mandatory {
            let id = self.shared.id;
            self.shared.outbox.write_content(id, &msg.body, |out| {
                frame::encode_basic_return(out, id, wire::reply::NO_ROUTE, "NO_ROUTE", &msg.exchange, &msg.routing_key);
                frame::encode_header(out, id, wire::class::BASIC, msg.body_size(), &msg.properties);
            });
        }
        out
    }

    /// A tx.commit waiting for its publishes: commit-ok once every one is settled, a
    /// channel error if one was refused or failed.
    fn settle_commit(
        &mut self,
        commit: CommitState,
        quorum: Option<&crate::quorum_queues::QuorumQueues>,
    ) -> Result<(), AmqpError> {
        let Some(r) = &self.commit_waiting else { return Ok(()) };
        let Some(nack) = r.verdict(commit, quorum) else { return Ok(()) };
        let stored = !r.failed && !matches!(r.durability.settled(commit), Settled::Failed);
        self.commit_waiting = None;
        if !nack {
            self.send(&Method::TxCommitOk);
            return Ok(());
        }
        // RabbitMQ's text for a commit a queue refused part of.
        Err(if stored { AmqpError::precondition_failed("partial tx completion") } else { commit_failed() })
    }

    /// Send what the group commit allows: one basic.ack (multiple) covering every
    /// publish confirmed since the last call, nacks for publishes the disk failed, and a
    /// pending tx.commit-ok. Returns an error to close the channel with when a commit the
    /// client waits on failed.
    pub(crate) fn flush_confirms(
        &mut self,
        commit: CommitState,
        quorum: Option<&crate::quorum_queues::QuorumQueues>,
    ) -> Result<(), AmqpError> {
        self.settle_commit(commit, quorum)?;
        let Some(c) = &mut self.confirm else { return Ok(()) };
        let mut frames = Vec::new();
        // Runs of acks collapse into one `multiple` ack; a nack goes out on its own, after
        // the acks before it.
        let mut upto = c.acked_upto;
        while let Some((seq, r)) = c.waiting.front() {
            let seq = *seq;
            let Some(nack) = r.verdict(commit, quorum) else { break };
            c.waiting.pop_front();
            if nack {
                if upto > c.acked_upto {
                    frames.push(Method::BasicAck { delivery_tag: upto, multiple: upto - c.acked_upto > 1 });
                }
                frames.push(Method::BasicNack { delivery_tag: seq, multiple: false, requeue: false });
                c.acked_upto = seq;
                upto = seq;
            } else {
                upto = seq;
            }
        }
        if upto > c.acked_upto {
            frames.push(Method::BasicAck { delivery_tag: upto, multiple: upto - c.acked_upto > 1 });
            c.acked_upto = upto;
        }
        let counters = &self.shared.counters;
        let settled = counters.unconfirmed.load(Ordering::Relaxed).saturating_sub(c.waiting.len() as u64);
        bump(&counters.confirm, settled);
        counters.unconfirmed.store(c.waiting.len() as u64, Ordering::Relaxed);
        for f in &frames {
            self.send(f);
        }
        Ok(())
    }

    /// Confirms or a commit-ok wait for the disk.
    pub fn waits_for_disk(&self) -> bool {
        self.commit_waiting.is_some() || self.confirm.as_ref().is_some_and(|c| !c.waiting.is_empty())
    }

    /// The channel is going away (closed by either side, or its connection died): stop
    /// deliveries, cancel consumers, and requeue everything unacknowledged.
    pub fn shutdown(&mut self, ctx: &ConnCtx) {
        self.pending = None;
        if let Some(q) = ctx.server.quorum.get() {
            // Nobody will ask for these publishes' refusals any more.
            let confirms = self.confirm.iter().flat_map(|c| c.waiting.iter().map(|(_, r)| r));
            let routed = confirms.chain(self.commit_waiting.iter());
            q.abandon(routed.flat_map(|r| r.replicated.as_slice().iter().copied()));
        }
        if let Some((token, q)) = self.reply_to.take() {
            ctx.server.reply_to.lock().remove(&token);
            q.mark_deleted();
        }
        let mut entries: Vec<Unacked> = {
            let mut st = self.shared.state.lock();
            st.closed = true;
            st.unacked.take_all()
        };
        // Acks of an uncommitted transaction never happened: those messages return too.
        for op in self.tx.take().unwrap_or_default() {
            if let TxOp::Settle { entries: e, .. } = op {
                entries.extend(e);
            }
        }
        self.shared.meta.lock().consumers.clear();
        // Each queue's consumers are removed in one pass over its consumer list.
        let mut by_queue: HashMap<*const Queue, (Arc<Queue>, Vec<u64>)> = HashMap::new();
        for c in std::mem::take(&mut self.consumers).into_values() {
            c.cancelled.store(true, Ordering::Relaxed);
            by_queue.entry(Arc::as_ptr(&c.queue)).or_insert_with(|| (c.queue.clone(), Vec::new())).1.push(c.id);
        }
        for (q, ids) in by_queue.into_values() {
            if q.remove_consumers(&ids) {
                notify_deleted(ctx.vhost.remove_queue(&q));
            }
        }
        settle(entries, Some(true));
    }
}

/// Refuse an argument table whose encoded size is over `limit` bytes: declared entities
/// and bindings keep their arguments for their lifetime (decoded, several times the wire
/// size), so one client could otherwise fill memory with a few hundred declares.
fn check_arguments_size(args: &wire::FieldTable, limit: usize) -> Result<(), AmqpError> {
    if args.is_empty() {
        return Ok(());
    }
    let mut encoded = Vec::new();
    wire::types::encode_table(args, &mut encoded);
    // Without the table's own 4-byte length.
    let size = encoded.len().saturating_sub(4);
    if size > limit {
        tracing::warn!(size, limit, "refused an arguments table over max_arguments_table_bytes");
        return Err(AmqpError::precondition_failed(format!(
            "arguments table of {size} bytes is larger than the limit of {limit} bytes (max_arguments_table_bytes)"
        )));
    }
    Ok(())
}

/// Ack (requeue None), requeue (Some(true)) or drop (Some(false)) deliveries, grouped by
/// queue so each queue is locked once.
fn settle(entries: Vec<Unacked>, requeue: Option<bool>) {
    let mut by_queue: Vec<(Arc<Queue>, Vec<broker::QueuedMessage>)> = Vec::new();
    // Queue → its position in `by_queue`, once there are too many queues to scan (a scan
    // per entry was quadratic when a channel held deliveries from thousands of queues).
    const SCAN_MAX: usize = 16;
    let mut at: HashMap<*const Queue, usize> = HashMap::new();
    for e in entries {
        let found = if by_queue.len() <= SCAN_MAX {
            by_queue.iter().position(|(q, _)| Arc::ptr_eq(q, &e.queue))
        } else {
            if at.is_empty() {
                at.extend(by_queue.iter().enumerate().map(|(i, (q, _))| (Arc::as_ptr(q), i)));
            }
            at.get(&Arc::as_ptr(&e.queue)).copied()
        };
        match found {
            Some(i) => by_queue[i].1.push(e.msg),
            None => {
                if !at.is_empty() {
                    at.insert(Arc::as_ptr(&e.queue), by_queue.len());
                }
                by_queue.push((e.queue, vec![e.msg]));
            }
        }
    }
    for (q, msgs) in by_queue {
        match requeue {
            Some(true) => q.requeue(msgs),
            Some(false) => q.reject(msgs),
            None => q.ack(&msgs),
        }
    }
}

/// Tell the consumers of a deleted queue (basic.cancel, when the client supports it).
pub fn notify_deleted(d: Deleted) {
    for c in d.consumers {
        c.sink.cancelled_by_broker();
    }
}
