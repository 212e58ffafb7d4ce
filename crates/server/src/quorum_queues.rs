//! Replicated quorum queues: `x-queue-type: quorum` on a clustered node.
//!
//! Every quorum queue's commands go through a Raft log — its own group's (feature flag
//! `quorum_queue_groups`: its voters and leader are its own, see [`members`]), or the
//! metadata group's for a queue declared before that — and **every node applies them**
//! to its own [`quorum::QuorumQueue`] replica, in log order. Effects are carried out by the
//! node they concern: a delivery by the node its consumer's channel is on (so consumers on
//! any node need no forwarding), a confirm by the node the publisher is on, a dead letter by
//! the leader. The broker's [`Queue`] of the same name exists on every node (declared when
//! the declare entry is applied) and hands its messages and consumers to a
//! [`QuorumReplica`] (`broker::queue::Replica`).
//!
//! The write path: a publish (or ack, consume, ...) becomes an [`Item`] numbered by this
//! node's ticket counter and goes to the node's one proposer task, which packs waiting
//! items into one entry (at most `cluster::node::MAX_COMMAND_BYTES`) and proposes it; when
//! the entry is committed (on disk on a majority) — and applied here, unless what applying
//! it does to its publishes is known already (`settles_for`) — every ticket in it is
//! *settled*: confirms up to it go out (`Channel::flush_confirms`), nacks for the ones the
//! queue rejected (reject-publish) or the cluster could not commit in time.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use broker::queue::{Consumer, ConsumerSink, PublishOutcome, QueueStats, Replica, Settle};
use broker::{AmqpError, Message, Queue, QueuedMessage};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use quorum::{Command as QCommand, ConsumerId, Effect, Meta, NodeId, PublishId, PublisherId, QuorumQueue};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::state::ServerState;
use cluster::node::Proposal;

mod members;
mod rebalance;
pub(crate) use members::{GrowStrategy, MemberError};

/// A queue's key: (vhost, name).
pub(crate) type QKey = (String, String);

/// The voters of a quorum queue's group when `x-quorum-initial-group-size` is not given
/// (RabbitMQ's default).
const DEFAULT_GROUP_SIZE: u64 = 3;

/// A new queue's voters: `size` of the cluster's `members` (fewer if it has fewer), the
/// leader-to-be `me` first (it initialises the group and so usually leads it: the
/// declaring node, as RabbitMQ places the leader by default, or the one the leader
/// locator chose), then members that answer (`running`) before those that do not, each
/// kind in random order so that queues spread.
fn choose_voters(me: &str, running: &[String], members: &[String], size: u64) -> Vec<String> {
    let mut up: Vec<&String> = running.iter().filter(|m| *m != me && members.contains(m)).collect();
    let mut down: Vec<&String> = members.iter().filter(|m| *m != me && !running.contains(m)).collect();
    fastrand::shuffle(&mut up);
    fastrand::shuffle(&mut down);
    let size = usize::try_from(size).unwrap_or(usize::MAX).max(1);
    std::iter::once(me).chain(up.into_iter().chain(down).map(String::as_str)).take(size).map(str::to_owned).collect()
}

/// One quorum-queue command as the log carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Item {
    pub vhost: String,
    pub queue: String,
    /// The proposing node and its ticket for this item (answers to gets and purges go back
    /// to the proposer by them).
    pub origin: u64,
    pub ticket: u64,
    /// The proposer's clock: the machine reads no clock (TTLs are measured on it).
    pub now_ms: u64,
    pub cmd: QCommand,
}

/// A quorum queue's declaration, as the log carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Declaration {
    pub vhost: String,
    pub name: String,
    /// The x-arguments, AMQP-encoded (a field table).
    pub arguments: Vec<u8>,
    /// The voters of the queue's own Raft group (`x-quorum-initial-group-size` of the
    /// cluster's members, chosen by the declaring node). Empty: a queue whose commands go
    /// through the metadata group (declared before `quorum_queue_groups` was enabled).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub voters: Vec<String>,
    /// The group's id: the metadata log index of the declare entry, set when it is applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u64>,
}

/// An exchange's declaration, as a binding of a quorum queue carries it: a node that lacks
/// the exchange declares it the same (exchanges are per node).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ExchangeDeclaration {
    pub name: String,
    /// The declared type (`x-delayed-message` included).
    pub kind: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    /// AMQP-encoded field table.
    pub arguments: Vec<u8>,
}

/// A binding whose destination is a quorum queue, as the log carries it: every node adds
/// (or removes) it, so a publish on any node reaches the queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BindingDeclaration {
    pub vhost: String,
    pub queue: String,
    pub exchange: ExchangeDeclaration,
    pub routing_key: String,
    /// AMQP-encoded field table.
    pub arguments: Vec<u8>,
}

/// A replica in a snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotQueue {
    pub declaration: Declaration,
    /// The replica's state; None for a queue with a group of its own (the group's
    /// snapshots hold it).
    pub machine: Option<QuorumQueue>,
    /// The queue's bindings on the node that took the snapshot (a node catching up by
    /// snapshot adds them as their log entries would have).
    #[serde(default)]
    pub bindings: Vec<BindingDeclaration>,
}

/// Bytes of items waiting for the proposer (or proposed and not yet settled) past which
/// publishes are refused (nacked): the bound on what a node buffers while the cluster has
/// no quorum. The default of `warren.cluster_pending_max_bytes`.
pub(crate) const PENDING_MAX_BYTES: usize = 64 * 1024 * 1024;
/// The default of `warren.quorum_queue_logs_max_bytes`: what all quorum queues' group
/// logs may hold in memory on a node together before the largest are snapshotted (each
/// is also bounded on its own by `warren.cluster_snapshot_log_bytes`).
pub(crate) const QUORUM_QUEUE_LOGS_MAX_BYTES: u64 = 512 << 20;
/// The default of `warren.quorum_queue_max`: quorum queues (each a Raft group on every
/// node) a node holds at most.
pub(crate) const QUORUM_QUEUE_MAX: usize = 1000;
/// Room kept in an entry for the enum's encoding around the items.
const ENTRY_OVERHEAD_BYTES: usize = 1024;
/// What an item costs in an entry besides the message.
const ITEM_OVERHEAD_BYTES: usize = 256;
/// The credit of a quorum-queue consumer with no prefetch limit (or no-ack): what it may
/// hold delivered and not yet settled, so its outbox stays bounded.
pub(crate) const UNLIMITED_PREFETCH_CREDIT: u32 = 2000;
/// How often the leader checks for nodes gone (their consumers' messages go back).
const JANITOR_PERIOD: Duration = Duration::from_secs(1);
/// Every this many janitor ticks (`JANITOR_PERIOD`), the data directory's group files are
/// matched against the queues (`sweep_orphan_groups`): it reads the directory.
const ORPHAN_SWEEP_TICKS: u64 = 30;
/// The first sweep, this many ticks after the start (the metadata log replayed by then,
/// or the sweep's read barrier waits for it).
const ORPHAN_SWEEP_FIRST_TICK: u64 = 5;
/// How often the leader looks for a message whose TTL passed at the head of a queue: how
/// late, at most, it is dead-lettered when no other command comes.
const EXPIRY_CHECK_PERIOD: Duration = Duration::from_millis(100);
/// How long queue.declare-ok's counts wait for this node to apply the entries whose
/// publishes it confirmed at commit (normally well under a millisecond).
const APPLY_CATCH_UP: Duration = Duration::from_secs(1);
/// A `Tick` not applied within this long is proposed again (lost with a leader change).
const TICK_RETRY: Duration = Duration::from_secs(1);

struct Machine {
    declaration: Declaration,
    qq: QuorumQueue,
    queue: Weak<Queue>,
    /// The queue's own Raft group on this node, once opened (None until then, and for a
    /// queue of the metadata group).
    group: Option<cluster::Group>,
    /// Whether the group is being opened (or failed to open: logged, not retried).
    opening: bool,
    /// The proposer of a queue with a group of its own: its items go to that group.
    tx: Option<ProposerTx>,
    /// The log index of the last entry of the queue's own group applied here.
    applied_index: u64,
    /// The highest log index of an entry of the queue's own group whose tickets settled
    /// here, maybe at commit, before this node applied it (see `settles_for`).
    settled_index: u64,
}

impl Machine {
    fn new(declaration: Declaration, qq: QuorumQueue) -> Machine {
        Machine {
            declaration,
            qq,
            queue: Weak::new(),
            group: None,
            opening: false,
            tx: None,
            applied_index: 0,
            settled_index: 0,
        }
    }
}

struct LocalConsumer {
    sink: Arc<dyn ConsumerSink>,
    queue: Weak<Queue>,
    key: QKey,
}

/// A delivery made on this node and not yet settled.
struct Held {
    key: QKey,
    consumer: ConsumerId,
    delivery_id: u64,
}

/// Where a proposer's items come in.
type ProposerTx = mpsc::UnboundedSender<(Item, usize)>;

struct Proposer {
    next_ticket: u64,
    tx: ProposerTx,
}

/// The proposer an item goes to: a queue with a group of its own has its own, the
/// metadata group's queues share one (`Known(None)`). The queue's replica knows its own
/// (`Known`), saving a lookup under the machines' lock on every publish and ack; other
/// callers look it up (`Find`).
#[derive(Clone, Copy)]
enum Route<'a> {
    Find,
    Known(Option<&'a ProposerTx>),
}

pub(crate) struct QuorumQueues {
    node: NodeId,
    /// Random per start: consumer and publisher ids of an earlier start never collide with
    /// this one's (the replicas may still hold them after a crash).
    boot: u32,
    publisher: PublisherId,
    state: Weak<ServerState>,
    machines: Mutex<HashMap<QKey, Machine>>,
    consumers: Mutex<HashMap<u64, LocalConsumer>>,
    held: Mutex<HashMap<u64, Held>>,
    next_key: AtomicU64,
    waiters: Mutex<HashMap<u64, oneshot::Sender<Vec<Effect>>>>,
    /// Tickets of confirm-mode publishes that were refused (reject-publish) or never
    /// committed, until the publisher's channel takes them (`take_rejected`) or closes
    /// (`abandon`). Publishes without confirms are never recorded: nobody would take them.
    rejected: Mutex<BTreeSet<u64>>,
    /// Tickets of closed channels' unsettled confirm publishes: their refusals are
    /// dropped once they are settled (`prune_abandoned`).
    abandoned: Mutex<Vec<u64>>,
    proposer: Mutex<Proposer>,
    pending_bytes: AtomicUsize,
    /// `pending_bytes` past which publishes are refused (`warren.cluster_pending_max_bytes`).
    pending_max_bytes: usize,
    /// Refusals past the pending bound are logged once per `REFUSAL_LOG_INTERVAL_MS` with
    /// their count (a publisher without a quorum would otherwise write a line per message).
    refusals: Mutex<RefusalLog>,
    /// Tickets not yet settled (see `settle_tickets`). Queues in groups of their own settle out
    /// of ticket order, so this is a set, not a watermark.
    unsettled: Mutex<BTreeSet<u64>>,
    /// The lowest ticket in `unsettled` (`u64::MAX` when empty): every ticket below it is
    /// settled, which answers most confirms without the lock.
    low_water: AtomicU64,
    /// Bumped whenever tickets settle: confirms waiting on the cluster look again.
    settled: watch::Sender<u64>,
    /// Members this node found unreachable at its last check (their consumers are
    /// suspended by the leader of each queue).
    down: Mutex<BTreeSet<u64>>,
    /// Whether all groups' logs were over `warren.quorum_queue_logs_max_bytes` at the last
    /// check (logged when that changes, not every second).
    logs_over: std::sync::atomic::AtomicBool,
    /// Whether the groups' upkeep (`tend_groups`, `sweep_orphan_groups`) is running.
    tending: std::sync::atomic::AtomicBool,
    /// A leader rebalance runs on this node (`rebalance`).
    rebalancing: std::sync::atomic::AtomicBool,
    /// The queues this node led at the last check: a queue newly led gets every member's
    /// state once (a new leader does not know what its predecessor declared).
    led: Mutex<std::collections::HashSet<QKey>>,
    /// At-least-once dead letters this node is routing (`route_at_least_once`): one task
    /// each, so a new leader's resend does not route one twice.
    dead_lettering: Mutex<std::collections::HashSet<(QKey, u64)>>,
    /// This node's consumers of earlier starts already reported down.
    downed: Mutex<std::collections::HashSet<ConsumerId>>,
    /// On the leader: the queues a `Tick` was proposed for, with the head's expiry it was
    /// for and when (one tick per expiry, unless it was lost).
    ticks: Mutex<HashMap<QKey, (u64, std::time::Instant)>>,
    /// On the leader: the queues a `SetConfig` was proposed for, with the settings and when
    /// (proposed again only once the write timeout passed without it being applied).
    reconfiguring: Mutex<HashMap<QKey, (quorum::Config, std::time::Instant)>>,
    /// The members that answered the janitor's last pings (management's `online`).
    online: Mutex<Vec<String>>,
    /// Tickets of publishes forwarded to classic queues of other nodes
    /// (`crate::classic_queues`), not yet answered. Their own number space (the top bit
    /// set), apart from the proposer's: they settle out of its order.
    forwarding: Mutex<BTreeSet<u64>>,
    next_forward: AtomicU64,
}

/// The top bit marks a forwarded publish's ticket.
const FORWARD_TICKET: u64 = 1 << 63;

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A message as a replica keeps it: exchange, routing key, raw properties, body.
pub(crate) fn encode_message(m: &Message) -> quorum::Message {
    let mut b = BytesMut::with_capacity(m.exchange.len() + m.routing_key.len() + m.properties.len() + m.body.len() + 8);
    b.put_u8(m.exchange.len() as u8);
    b.put_slice(m.exchange.as_bytes());
    b.put_u8(m.routing_key.len().min(255) as u8);
    b.put_slice(&m.routing_key.as_bytes()[..m.routing_key.len().min(255)]);
    b.put_u32(m.properties.len() as u32);
    b.put_slice(&m.properties);
    b.put_slice(&m.body);
    quorum::Message { payload: b.freeze(), body_bytes: m.body_size() }
}

pub(crate) fn decode_message(payload: &Bytes) -> Option<Message> {
    let mut p = payload.clone();
    let take_str = |p: &mut Bytes| -> Option<String> {
        let n = *p.first()? as usize;
        p.advance(1);
        if p.len() < n {
            return None;
        }
        String::from_utf8(p.split_to(n).to_vec()).ok()
    };
    let exchange = take_str(&mut p)?;
    let routing_key = take_str(&mut p)?;
    if p.len() < 4 {
        return None;
    }
    let n = p.get_u32() as usize;
    if p.len() < n {
        return None;
    }
    let properties = p.split_to(n);
    let summary = wire::properties::summarize(&properties).ok()?;
    Some(Message {
        exchange,
        routing_key,
        properties,
        body: p,
        persistent: summary.delivery_mode == Some(2),
        priority: summary.priority.unwrap_or(0),
        expiration_ms: summary.expiration.as_deref().and_then(|e| e.parse().ok()),
    })
}

/// The message of a delivery as the consumer gets it: with RabbitMQ's `x-delivery-count`
/// header (a long, as 3.10 sets it) once the message has been returned at least once.
fn delivered_message(d: &quorum::Delivery) -> Option<Message> {
    let mut msg = decode_message(&d.msg.payload)?;
    if d.delivery_count > 0 {
        let count = wire::FieldValue::I64(i64::from(d.delivery_count));
        broker::dead_letter::set_header(&mut msg, "x-delivery-count", count);
    }
    Some(msg)
}

/// The machine's settings from the queue's effective arguments.
fn config_of(q: &Queue) -> quorum::Config {
    config_from(&q.effective_args(), q.declared_args.single_active_consumer)
}

/// The machine's settings from a declaration alone (no broker queue here: its policies
/// are not known; later `SetConfig` entries bring them, as they do to every replica).
/// Without policies they are what a broker queue of the declaration has (the defaults
/// policies cannot add, such as a quorum queue's delivery limit, included): a replica
/// installed either way decides the same.
fn config_of_declaration(d: &Declaration) -> quorum::Config {
    let arguments = decode_arguments(&d.arguments);
    match broker::args::QueueArgs::parse(&arguments, &d.name, &d.vhost) {
        Ok(a) => config_from(&broker::policy::effective(&a, None, None), a.single_active_consumer),
        Err(_) => quorum::Config::default(),
    }
}

fn config_from(a: &broker::args::QueueArgs, single_active: bool) -> quorum::Config {
    quorum::Config {
        delivery_limit: a.delivery_limit.map(|l| l.min(u64::from(u32::MAX)) as u32),
        max_length: a.max_length,
        max_length_bytes: a.max_length_bytes,
        overflow: match a.overflow {
            Some(broker::args::Overflow::RejectPublish | broker::args::Overflow::RejectPublishDlx) => {
                quorum::Overflow::RejectPublish
            }
            _ => quorum::Overflow::DropHead,
        },
        dead_letter: a
            .dead_letter_exchange
            .clone()
            .map(|exchange| quorum::DeadLetterTarget { exchange, routing_key: a.dead_letter_routing_key.clone() }),
        dead_letter_strategy: match a.dead_letter_strategy {
            Some(broker::args::DeadLetterStrategy::AtLeastOnce) => quorum::DeadLetterStrategy::AtLeastOnce,
            _ => quorum::DeadLetterStrategy::AtMostOnce,
        },
        message_ttl_ms: a.message_ttl_ms,
        single_active_consumer: single_active,
        ..quorum::Config::default()
    }
}

fn reason(r: quorum::Reason) -> broker::dead_letter::Reason {
    match r {
        quorum::Reason::Rejected => broker::dead_letter::Reason::Rejected,
        quorum::Reason::Expired => broker::dead_letter::Reason::Expired,
        quorum::Reason::MaxLen => broker::dead_letter::Reason::MaxLen,
        quorum::Reason::DeliveryLimit => broker::dead_letter::Reason::DeliveryLimit,
    }
}

pub(crate) fn exchange_declaration(e: &broker::Exchange) -> ExchangeDeclaration {
    ExchangeDeclaration {
        name: e.name.clone(),
        kind: e.options.type_name().to_owned(),
        durable: e.options.durable,
        auto_delete: e.options.auto_delete,
        internal: e.options.internal,
        arguments: encode_arguments(&e.options.arguments),
    }
}

pub(crate) fn encode_arguments(args: &wire::FieldTable) -> Vec<u8> {
    let mut out = Vec::new();
    wire::types::encode_table(args, &mut out);
    out
}

pub(crate) fn decode_arguments(bytes: &[u8]) -> wire::FieldTable {
    wire::types::decode_table(bytes).map(|(t, _)| t).unwrap_or_default()
}

impl QuorumQueues {
    /// The registry of a clustered node named `node_name`; its proposer task runs on the
    /// current runtime until `state` is dropped.
    pub(crate) fn start(node_name: &str, state: &Arc<ServerState>) -> Arc<QuorumQueues> {
        let node = NodeId(cluster::node_id(node_name));
        let boot = fastrand::u32(1..);
        let (tx, rx) = mpsc::unbounded_channel();
        let me = Arc::new(QuorumQueues {
            node,
            boot,
            publisher: PublisherId { node, id: u64::from(boot) << 32 },
            state: Arc::downgrade(state),
            machines: Mutex::new(HashMap::new()),
            consumers: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(1),
            waiters: Mutex::new(HashMap::new()),
            rejected: Mutex::new(BTreeSet::new()),
            abandoned: Mutex::new(Vec::new()),
            proposer: Mutex::new(Proposer { next_ticket: 1, tx }),
            pending_bytes: AtomicUsize::new(0),
            pending_max_bytes: state.config.cluster_pending_max_bytes,
            refusals: Mutex::new(RefusalLog::default()),
            unsettled: Mutex::new(BTreeSet::new()),
            low_water: AtomicU64::new(u64::MAX),
            settled: watch::channel(0).0,
            down: Mutex::new(BTreeSet::new()),
            led: Mutex::new(std::collections::HashSet::new()),
            dead_lettering: Mutex::new(std::collections::HashSet::new()),
            logs_over: std::sync::atomic::AtomicBool::new(false),
            tending: std::sync::atomic::AtomicBool::new(false),
            rebalancing: std::sync::atomic::AtomicBool::new(false),
            downed: Mutex::new(std::collections::HashSet::new()),
            ticks: Mutex::new(HashMap::new()),
            reconfiguring: Mutex::new(HashMap::new()),
            online: Mutex::new(Vec::new()),
            forwarding: Mutex::new(BTreeSet::new()),
            next_forward: AtomicU64::new(FORWARD_TICKET | 1),
        });
        tokio::spawn(run_proposer(Arc::downgrade(&me), rx, None));
        tokio::spawn(run_janitor(Arc::downgrade(&me)));
        tokio::spawn(run_expiry(Arc::downgrade(&me)));
        me
    }

    /// Confirms wait on this: every ticket up to its value is settled.
    pub(crate) fn settled(&self) -> watch::Receiver<u64> {
        self.settled.subscribe()
    }

    /// Whether every one of `tickets` (the proposer's, or forwarded publishes') is settled.
    pub(crate) fn all_settled(&self, tickets: &[u64]) -> bool {
        let low = self.low_water.load(Ordering::Acquire);
        // Taken only for a ticket at or above the low water mark, or a forwarded publish's:
        // most quorum-queue confirms do not touch these locks.
        let mut unsettled = None;
        let mut forwarding = None;
        tickets.iter().all(|&t| {
            if t & FORWARD_TICKET != 0 {
                !forwarding.get_or_insert_with(|| self.forwarding.lock()).contains(&t)
            } else {
                t < low || !unsettled.get_or_insert_with(|| self.unsettled.lock()).contains(&t)
            }
        })
    }

    /// Whether every target of an at-least-once dead letter has it (`outcomes`, as its
    /// routing returned them): each one's disk write done and each replicated one's entry
    /// applied, none refused. Waits at most the write timeout; false: route it again later.
    async fn routed_safely(&self, outcomes: &[PublishOutcome]) -> bool {
        let (mut durability, mut tickets, mut refused) = (broker::store::Durability::Now, Vec::new(), false);
        for o in outcomes {
            match o {
                PublishOutcome::Enqueued(d) => durability = durability.max(*d),
                PublishOutcome::Replicated(t) => tickets.push(*t),
                PublishOutcome::Rejected | PublishOutcome::Failed => refused = true,
                PublishOutcome::Deleted => {}
            }
        }
        let routed = outcomes.iter().any(|o| matches!(o, PublishOutcome::Enqueued(_) | PublishOutcome::Replicated(_)));
        let Some(state) = self.state.upgrade().filter(|_| routed && !refused) else {
            self.abandon(tickets.into_iter());
            return false;
        };
        let mut commit = state.commit.clone();
        let mut settled = self.settled.subscribe();
        let deadline = tokio::time::Instant::now() + self.write_timeout();
        loop {
            match durability.settled(*commit.borrow_and_update()) {
                broker::store::Settled::Failed => break,
                broker::store::Settled::Durable if self.all_settled(&tickets) => return !self.take_rejected(&tickets),
                _ => {}
            }
            tokio::select! {
                r = commit.changed() => if r.is_err() { break },
                r = settled.changed() => if r.is_err() { break },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        self.abandon(tickets.into_iter());
        false
    }

    /// Whether this node leads queue `key` and its message `msg_id` is an at-least-once
    /// dead letter still pending (a node that is not clustered, in unit tests, leads).
    fn dead_letter_is_ours(&self, key: &QKey, msg_id: u64) -> bool {
        let meta = self.state.upgrade().is_some_and(|s| s.cluster.get().is_none_or(|c| c.node.is_leader()));
        let machines = self.machines.lock();
        let Some(m) = machines.get(key) else { return false };
        let leads = match m.declaration.group {
            Some(_) => m.group.as_ref().is_some_and(|g| g.is_leader()),
            None => meta,
        };
        leads && m.qq.is_dead_letter_pending(msg_id)
    }

    /// `tickets` are settled (committed with a known outcome, applied here, or failed): wake
    /// the confirms waiting.
    fn settle_tickets(&self, tickets: impl Iterator<Item = u64>) {
        {
            let mut u = self.unsettled.lock();
            let mut any = false;
            for t in tickets {
                any |= u.remove(&t);
            }
            if !any {
                return;
            }
            self.low_water.store(u.first().copied().unwrap_or(u64::MAX), Ordering::Release);
        }
        self.settled.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A ticket for a publish forwarded to another node's classic queue, unsettled until
    /// [`Self::forward_settled`].
    pub(crate) fn forward_ticket(&self) -> u64 {
        let t = self.next_forward.fetch_add(1, Ordering::Relaxed);
        self.forwarding.lock().insert(t);
        t
    }

    /// Forwarded publishes answered: (ticket, refused). A refusal is kept for the
    /// publisher's channel as a quorum queue's is; waiting channels are woken.
    pub(crate) fn forward_settled(&self, tickets: &[(u64, bool)]) {
        {
            let mut r = self.rejected.lock();
            for &(t, refused) in tickets {
                if refused {
                    r.insert(t);
                }
            }
        }
        {
            let mut f = self.forwarding.lock();
            for (t, _) in tickets {
                f.remove(t);
            }
        }
        self.settled.send_modify(|_| {});
    }

    /// The members that answered the last pings (every second).
    pub(crate) fn online_members(&self) -> Vec<String> {
        self.online.lock().clone()
    }

    /// Whether any of `tickets` (one publish's, exactly: never a range, which could hold
    /// another channel's) was refused; forget them.
    pub(crate) fn take_rejected(&self, tickets: &[u64]) -> bool {
        let mut r = self.rejected.lock();
        let mut any = false;
        for t in tickets {
            any |= r.remove(t);
        }
        any
    }

    /// A channel in confirm mode closed with the publishes of these tickets not yet
    /// confirmed: forget their refusals (now or, for those not settled yet, once they are).
    pub(crate) fn abandon(&self, tickets: impl Iterator<Item = u64>) {
        self.abandoned.lock().extend(tickets);
        self.prune_abandoned();
    }

    /// Drop the refusals of abandoned tickets that are settled (no refusal comes for them
    /// any more); keep the others for a later call.
    fn prune_abandoned(&self) {
        let done: Vec<u64> = {
            let mut a = self.abandoned.lock();
            let (done, keep) = a.drain(..).partition(|&t| self.all_settled(&[t]));
            *a = keep;
            done
        };
        self.take_rejected(&done);
    }

    fn consumer_id(&self, local: u64) -> ConsumerId {
        ConsumerId { node: self.node, id: (u64::from(self.boot) << 32) | (local & 0xffff_ffff) }
    }

    /// The consumer id basic.get checks messages out to on this node (one per start).
    fn getter(&self) -> ConsumerId {
        ConsumerId { node: self.node, id: u64::from(self.boot) << 32 }
    }

    fn is_mine(&self, c: ConsumerId) -> bool {
        c.node == self.node && (c.id >> 32) as u32 == self.boot
    }

    /// Queue the command `make` builds from its ticket for the proposer (with `waiter`,
    /// which gets the item's effects once this node applied it); returns the ticket, or
    /// None when more than `max_bytes` would wait or the node is stopping. `size`: the
    /// message bytes.
    fn submit_with(
        &self,
        key: &QKey,
        route: Route<'_>,
        size: usize,
        max_bytes: usize,
        make: impl FnOnce(u64) -> QCommand,
        waiter: Option<oneshot::Sender<Vec<Effect>>>,
    ) -> Option<u64> {
        let size = size + ITEM_OVERHEAD_BYTES;
        if self.pending_bytes.load(Ordering::Relaxed) + size > max_bytes {
            if let Some(n) = self.refusals.lock().refused(now_ms()) {
                warn!(queue = %key.1, refused = n, "quorum queue: {max_bytes} bytes already wait for the cluster; refusing");
            }
            return None;
        }
        self.pending_bytes.fetch_add(size, Ordering::Relaxed);
        let found;
        let own = match route {
            Route::Known(tx) => tx,
            Route::Find => {
                found = self.machines.lock().get(key).and_then(|m| m.tx.clone());
                found.as_ref()
            }
        };
        // Ticket and send under one lock: the log must see tickets in order (the replica
        // drops a publish whose number is not above the last one it took).
        let mut p = self.proposer.lock();
        let ticket = p.next_ticket;
        p.next_ticket += 1;
        {
            let mut u = self.unsettled.lock();
            u.insert(ticket);
            self.low_water.fetch_min(ticket, Ordering::AcqRel);
        }
        if let Some(w) = waiter {
            self.waiters.lock().insert(ticket, w);
        }
        let cmd = make(ticket);
        let item =
            Item { vhost: key.0.clone(), queue: key.1.clone(), origin: self.node.0, ticket, now_ms: now_ms(), cmd };
        let sent = match own {
            Some(tx) => tx.send((item, size)),
            None => p.tx.send((item, size)),
        };
        if sent.is_err() {
            drop(p);
            self.pending_bytes.fetch_sub(size, Ordering::Relaxed);
            self.waiters.lock().remove(&ticket);
            self.settle_tickets(std::iter::once(ticket));
            return None;
        }
        Some(ticket)
    }

    /// A publish: with `confirm`, the ticket is also the sequence number the replica drops
    /// resent duplicates by (this node's publisher id, tickets only grow) and its refusal
    /// is reported; without, the replica reports nothing for it.
    fn submit_publish(
        &self,
        key: &QKey,
        route: Route<'_>,
        msg: quorum::Message,
        ttl_ms: Option<u64>,
        confirm: bool,
    ) -> Option<u64> {
        let size = msg.payload.len();
        let make = |seq| QCommand::Enqueue { publish: self.publish_id(seq, confirm), msg, ttl_ms };
        self.submit_with(key, route, size, self.pending_max_bytes, make, None)
    }

    /// What may wait for the cluster before commands other than publishes (acks, consumes,
    /// cancels, gets, ...) are refused: as much again as publishes may fill. Publishes
    /// filling their bound while there is no quorum must not make the node drop a
    /// consumer's acks: the messages would stay checked out to it for good.
    fn commands_max_bytes(&self) -> usize {
        self.pending_max_bytes.saturating_mul(2)
    }

    /// The publish id of ticket `seq`: none without confirms.
    fn publish_id(&self, seq: u64, confirm: bool) -> Option<PublishId> {
        confirm.then_some(PublishId { publisher: self.publisher, seq })
    }

    /// Submit a command nobody waits for (logged when dropped); returns its ticket.
    fn submit_quiet(&self, key: &QKey, cmd: QCommand) -> Option<u64> {
        self.submit_quiet_via(key, Route::Find, cmd)
    }

    fn submit_quiet_via(&self, key: &QKey, route: Route<'_>, cmd: QCommand) -> Option<u64> {
        let ticket = self.submit_with(key, route, 0, self.commands_max_bytes(), |_| cmd, None);
        if ticket.is_none() {
            warn!(queue = %key.1, "quorum queue: a command was dropped (the proposer is gone or full)");
        }
        ticket
    }

    /// Submit and wait until this node applied the item; returns its effects.
    fn submit_and_wait(&self, key: &QKey, cmd: QCommand) -> Result<Vec<Effect>, AmqpError> {
        let (tx, rx) = oneshot::channel();
        let Some(ticket) = self.submit_with(key, Route::Find, 0, self.commands_max_bytes(), |_| cmd, Some(tx)) else {
            return Err(AmqpError::new(
                wire::reply::INTERNAL_ERROR,
                "the node is stopping or too much waits for the cluster",
            ));
        };
        let timeout = self.write_timeout();
        let wait = async move { tokio::time::timeout(timeout, rx).await };
        let r = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| h.block_on(wait))
            }
            _ => return Err(AmqpError::new(wire::reply::INTERNAL_ERROR, "quorum queues need the broker's runtime")),
        };
        match r {
            Ok(Ok(fx)) => Ok(fx),
            _ => {
                self.waiters.lock().remove(&ticket);
                Err(AmqpError::new(
                    wire::reply::INTERNAL_ERROR,
                    format!("the cluster did not answer within {} ms (no quorum?)", timeout.as_millis()),
                ))
            }
        }
    }

    fn write_timeout(&self) -> Duration {
        self.state
            .upgrade()
            .map_or(Duration::from_secs(10), |s| Duration::from_millis(s.config.cluster_write_timeout_ms))
    }

    /// The replica the broker's queue `q` hands over to (creating the machine if new). A
    /// queue with a group of its own gets its proposer, and its group is opened on this
    /// node (in the background: the metadata group's apply must not wait for files).
    pub(crate) fn attach(self: &Arc<Self>, q: &Arc<Queue>, declaration: Declaration) {
        let key = (q.vhost.clone(), q.name.clone());
        let tx = self.install(key.clone(), declaration, Some(q));
        q.set_replica(Arc::new(QuorumReplica { qq: Arc::downgrade(self), key, tx }));
    }

    /// A quorum queue this node cannot serve (a local classic queue of the same name holds
    /// messages): its replica is kept all the same, and its group opened, so this node
    /// stays the voter the cluster counts on, its log is not taken for an orphan's and
    /// swept, and its snapshots keep the queue.
    pub(crate) fn attach_detached(self: &Arc<Self>, declaration: Declaration) {
        let key = (declaration.vhost.clone(), declaration.name.clone());
        self.install(key, declaration, None);
    }

    /// The machine of `key` (made if new, for `q` if there is one) and its group opened if
    /// it has one; returns its proposer.
    fn install(self: &Arc<Self>, key: QKey, declaration: Declaration, q: Option<&Arc<Queue>>) -> Option<ProposerTx> {
        let (open, tx) = {
            let mut m = self.machines.lock();
            let machine = m.entry(key.clone()).or_insert_with(|| {
                let config = q.map_or_else(|| config_of_declaration(&declaration), |q| config_of(q));
                Machine::new(declaration, QuorumQueue::new(config))
            });
            if let Some(q) = q {
                machine.queue = Arc::downgrade(q);
            }
            let open = match machine.declaration.group {
                Some(id) if machine.group.is_none() && !machine.opening => {
                    machine.opening = true;
                    if machine.tx.is_none() {
                        let (tx, rx) = mpsc::unbounded_channel();
                        machine.tx = Some(tx);
                        tokio::spawn(run_proposer(Arc::downgrade(self), rx, Some(key.clone())));
                    }
                    Some((id, machine.declaration.voters.clone()))
                }
                _ => None,
            };
            (open, machine.tx.clone())
        };
        if let Some((id, voters)) = open {
            tokio::spawn(open_group(Arc::downgrade(self), key, id, voters));
        }
        tx
    }

    fn meta_leader(&self) -> bool {
        self.state.upgrade().and_then(|s| s.cluster.get().map(|c| c.node.is_leader())).unwrap_or(false)
    }

    /// A replica kept without its broker queue (`attach_detached`): once the classic
    /// queue that shadowed it is gone, the quorum queue is declared here again, served by
    /// that replica.
    fn reattach_detached(&self) {
        let Some(state) = self.state.upgrade() else { return };
        let detached: Vec<Declaration> = self
            .machines
            .lock()
            .values()
            .filter(|m| m.queue.strong_count() == 0)
            .map(|m| m.declaration.clone())
            .collect();
        for d in detached {
            if state.vhost(&d.vhost).is_none_or(|vh| vh.has_queue(&d.name)) {
                continue;
            }
            let (vhost, name) = (d.vhost.clone(), d.name.clone());
            match state.apply_quorum_declare(d) {
                Ok(()) => {
                    info!(queue = %name, vhost = %vhost, "quorum queue: served on this node again (the classic queue that shadowed it is gone)")
                }
                Err(e) => debug!(queue = %name, vhost = %vhost, "quorum queue: not served here yet: {e}"),
            }
        }
    }

    /// Whether a replica of this queue exists here.
    pub(crate) fn has(&self, vhost: &str, name: &str) -> bool {
        self.machines.lock().contains_key(&(vhost.to_owned(), name.to_owned()))
    }

    /// The queue was deleted (its delete entry applied): forget the replica and cancel
    /// this node's consumers of it; a group of its own is stopped and its files deleted.
    pub(crate) fn forget(&self, vhost: &str, name: &str) {
        let key = (vhost.to_owned(), name.to_owned());
        let gone = self.machines.lock().remove(&key);
        if let Some(id) = gone.and_then(|m| m.declaration.group) {
            self.delete_group_files(key.1.clone(), id);
        }
        let gone: Vec<LocalConsumer> = {
            let mut c = self.consumers.lock();
            let ids: Vec<u64> = c.iter().filter(|(_, l)| l.key == key).map(|(id, _)| *id).collect();
            ids.into_iter().filter_map(|id| c.remove(&id)).collect()
        };
        for l in gone {
            l.sink.cancelled_by_broker();
        }
        self.held.lock().retain(|_, h| h.key != key);
    }

    /// Stop the group of the deleted queue `name` and delete its files (in the background).
    fn delete_group_files(&self, name: String, id: u64) {
        let state = self.state.clone();
        tokio::spawn(async move {
            let Some(node) = state.upgrade().and_then(|s| s.cluster.get().map(|c| c.node.clone())) else { return };
            if let Err(e) = node.delete_group(id).await {
                error!(queue = %name, group = id, "deleting a quorum queue's Raft group files: {e}");
            }
        });
    }

    /// The replicas as a snapshot holds them.
    pub(crate) fn snapshot(&self) -> Vec<SnapshotQueue> {
        let mut queues: Vec<SnapshotQueue> = self
            .machines
            .lock()
            .values()
            .map(|m| SnapshotQueue {
                declaration: m.declaration.clone(),
                // A queue with a group of its own: in the group's snapshots.
                machine: m.declaration.group.is_none().then(|| m.qq.clone()),
                bindings: Vec::new(),
            })
            .collect();
        if let Some(state) = self.state.upgrade() {
            for q in &mut queues {
                q.bindings = state.queue_bindings(&q.declaration.vhost, &q.declaration.name);
            }
        }
        queues
    }

    /// Replace every replica with a snapshot's; returns the declarations (the caller makes
    /// sure their broker queues exist and attaches them).
    pub(crate) fn restore(&self, queues: Vec<SnapshotQueue>) -> (Vec<Declaration>, Vec<BindingDeclaration>) {
        let mut m = self.machines.lock();
        let mut old = std::mem::take(&mut *m);
        let mut decls = Vec::new();
        let mut bindings = Vec::new();
        for s in queues {
            let key = (s.declaration.vhost.clone(), s.declaration.name.clone());
            decls.push(s.declaration.clone());
            bindings.extend(s.bindings);
            let kept = old.remove(&key);
            match s.machine {
                Some(qq) => {
                    let mut machine = Machine::new(s.declaration, qq);
                    machine.queue = kept.map(|o| o.queue).unwrap_or_default();
                    m.insert(key, machine);
                }
                // A queue with a group of its own: the replica is the group's, kept as it is
                // (or made when the declaration is applied: `attach`).
                None => {
                    if let Some(k) = kept.filter(|k| k.declaration.group == s.declaration.group) {
                        m.insert(key, k);
                    }
                }
            }
        }
        drop(m);
        // Queues the snapshot does not have were deleted (the caller deletes their broker
        // queues): so are their groups.
        for ((_, name), k) in old {
            if let Some(id) = k.declaration.group {
                self.delete_group_files(name, id);
            }
        }
        (decls, bindings)
    }

    /// Apply the items of the metadata group's committed entry at `index`, in order, and
    /// carry out what concerns this node. Items of queues with a group of their own are
    /// not theirs to change: skipped.
    pub(crate) fn apply(&self, index: u64, items: Vec<Item>) {
        self.apply_items(index, items, Some(self.meta_leader()), None);
    }

    /// Apply the items of the committed entry at `index` of queue `key`'s own group.
    fn apply_group(&self, key: &QKey, index: u64, items: Vec<Item>) {
        self.apply_items(index, items, None, Some(key));
        if let Some(m) = self.machines.lock().get_mut(key) {
            m.applied_index = m.applied_index.max(index);
        }
    }

    /// Queue `key`'s proposer settled its entry at `index` (committed; maybe not applied
    /// here yet).
    fn note_settled(&self, key: &QKey, index: u64) {
        if let Some(m) = self.machines.lock().get_mut(key) {
            m.settled_index = m.settled_index.max(index);
        }
    }

    /// Wait (at most `APPLY_CATCH_UP`) until this node applied every entry of queue `key`'s
    /// group whose tickets it settled: its counts then include every message it confirmed.
    fn wait_applied_settled(&self, key: &QKey) {
        let caught_up = || self.machines.lock().get(key).is_none_or(|m| m.applied_index >= m.settled_index);
        if caught_up() {
            return;
        }
        let Ok(h) = tokio::runtime::Handle::try_current() else { return };
        if h.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return;
        }
        let deadline = std::time::Instant::now() + APPLY_CATCH_UP;
        tokio::task::block_in_place(|| {
            while !caught_up() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(100));
            }
        });
    }

    /// `leader`: whether this node leads the group the entry is from; None: queue
    /// `group`'s own group, asked under the same lock as the items are applied.
    fn apply_items(&self, index: u64, items: Vec<Item>, leader: Option<bool>, group: Option<&QKey>) {
        let mut out = Vec::new();
        let leader = {
            let mut machines = self.machines.lock();
            let leader = leader.unwrap_or_else(|| {
                group.and_then(|k| machines.get(k)).and_then(|m| m.group.as_ref()).is_some_and(|g| g.is_leader())
            });
            for (pos, item) in items.into_iter().enumerate() {
                let key = (item.vhost, item.queue);
                let Some(m) = machines.get_mut(&key) else { continue };
                let ours = match group {
                    None => m.declaration.group.is_none(),
                    Some(k) => *k == key && m.declaration.group.is_some(),
                };
                if !ours {
                    continue;
                }
                // One message id per item: entries carry many items, ids must stay unique.
                let meta = Meta { index: (index << 16) | pos as u64, now_ms: item.now_ms };
                let fx = m.qq.apply(meta, item.cmd);
                out.push((key, m.queue.clone(), item.origin, item.ticket, fx));
            }
            leader
        };
        for (key, queue, origin, ticket, fx) in out {
            if origin == self.node.0
                && let Some(w) = self.waiters.lock().remove(&ticket)
            {
                let _ = w.send(fx.clone());
            }
            self.carry_out(&key, &queue, fx, leader);
        }
    }

    fn carry_out(&self, key: &QKey, queue: &Weak<Queue>, fx: Vec<Effect>, leader: bool) {
        for e in fx {
            match e {
                Effect::Deliver { consumer, delivery } if consumer.node == self.node => {
                    self.deliver(key, queue, consumer, delivery);
                }
                Effect::Rejected { publish: Some(p) } if p.publisher == self.publisher => {
                    self.rejected.lock().insert(p.seq);
                }
                Effect::DeadLetter { reason: r, msg_id, delivery_count, msg, at_least_once } if leader => {
                    let letter = Letter { msg_id, reason: reason(r), delivery_count, msg };
                    if at_least_once {
                        // Settled once every target has it; retried until then.
                        if let Some(me) = self.state.upgrade().and_then(|s| s.quorum.get().map(Arc::downgrade))
                            && self.dead_lettering.lock().insert((key.clone(), msg_id))
                        {
                            tokio::spawn(route_at_least_once(me, key.clone(), queue.clone(), letter));
                        }
                        continue;
                    }
                    let Some(q) = queue.upgrade() else {
                        // A replica without its broker queue here (`attach_detached`).
                        warn!(queue = %key.1, vhost = %key.0, "quorum queue: cannot dead-letter on this node (no broker queue here)");
                        continue;
                    };
                    if let Some(m) = letter.queued() {
                        q.dead_letter(vec![m]);
                    }
                }
                _ => {}
            }
        }
    }

    fn deliver(&self, key: &QKey, queue: &Weak<Queue>, consumer: ConsumerId, d: quorum::Delivery) {
        let local = if self.is_mine(consumer) {
            self.consumers.lock().get(&(consumer.id & 0xffff_ffff)).map(|l| (l.sink.clone(), l.queue.clone()))
        } else {
            None
        };
        let Some((sink, q)) = local else {
            // A consumer of an earlier start of this node (it crashed), or one cancelled
            // meanwhile: its messages go back.
            self.consumer_down(key, consumer);
            return;
        };
        let Some(q) = q.upgrade().or_else(|| queue.upgrade()) else { return };
        let Some(msg) = delivered_message(&d) else {
            error!(queue = %key.1, "quorum queue: undecodable message {}, discarded", d.msg_id);
            self.submit_quiet(key, QCommand::Discard { consumer, delivery_ids: vec![d.delivery_id] });
            return;
        };
        let no_ack = sink.no_ack();
        let qm = self.hand_out(key, consumer, &d, msg, no_ack);
        let k = qm.seq;
        match sink.force_deliver(&q, qm) {
            Ok(()) if no_ack => {
                self.submit_quiet(key, QCommand::Settle { consumer, delivery_ids: vec![d.delivery_id] });
            }
            Ok(()) => {}
            Err(_) => {
                // The channel closed meanwhile: back to the queue.
                self.held.lock().remove(&k);
                self.submit_quiet(key, QCommand::Return { consumer, delivery_ids: vec![d.delivery_id] });
            }
        }
    }

    /// The message of delivery `d` to `consumer` (a basic.deliver or a basic.get-ok) as
    /// the broker's channel keeps it; unless `no_ack`, held here until the channel settles
    /// it (its `seq` is the key the settle finds it by).
    fn hand_out(
        &self,
        key: &QKey,
        consumer: ConsumerId,
        d: &quorum::Delivery,
        msg: Message,
        no_ack: bool,
    ) -> QueuedMessage {
        let k = self.next_key.fetch_add(1, Ordering::Relaxed);
        if !no_ack {
            self.held.lock().insert(k, Held { key: key.clone(), consumer, delivery_id: d.delivery_id });
        }
        QueuedMessage {
            msg: Arc::new(msg),
            seq: k,
            redelivered: d.redelivered,
            expires_at_ms: 0,
            delivery_count: d.delivery_count,
            disk: None,
        }
    }

    fn consumer_down(&self, key: &QKey, consumer: ConsumerId) {
        if consumer != self.getter() && self.downed.lock().insert(consumer) {
            self.submit_quiet(key, QCommand::ConsumerDown { consumer });
        }
    }

    /// This node's consumers of earlier starts (it crashed, or was killed): their messages
    /// go back to their queues.
    fn sweep_stale_consumers(&self) {
        let stale: Vec<(QKey, ConsumerId)> = self
            .machines
            .lock()
            .iter()
            .flat_map(|(k, m)| m.qq.consumers().into_iter().map(move |c| (k.clone(), c)))
            .filter(|(_, c)| c.node == self.node && (c.id >> 32) as u32 != self.boot)
            .collect();
        for (k, c) in stale {
            self.consumer_down(&k, c);
        }
    }

    /// The queues this node leads (their own group's leader here, or the metadata group's
    /// for the others).
    fn led_queues(&self) -> Vec<QKey> {
        let meta = self.meta_leader();
        self.machines
            .lock()
            .iter()
            .filter(|(_, m)| match m.declaration.group {
                Some(_) => m.group.as_ref().is_some_and(|g| g.is_leader()),
                None => meta,
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn propose_ticks(&self) {
        if self.state.upgrade().is_none_or(|s| s.cluster.get().is_none()) {
            return;
        }
        let led: std::collections::HashSet<QKey> = self.led_queues().into_iter().collect();
        let mut ticks = self.ticks.lock();
        let now = now_ms();
        // The machine expires a message once the entry's time is past its expiry.
        let due: HashMap<QKey, u64> = self
            .machines
            .lock()
            .iter()
            .filter(|(k, _)| led.contains(*k))
            .filter_map(|(k, m)| m.qq.next_expiry_ms().filter(|&t| t < now).map(|t| (k.clone(), t)))
            .collect();
        ticks.retain(|k, _| due.contains_key(k));
        for (k, t) in due {
            if ticks.get(&k).is_some_and(|&(at, when)| at == t && when.elapsed() < TICK_RETRY) {
                continue;
            }
            ticks.insert(k.clone(), (t, std::time::Instant::now()));
            self.submit_quiet(&k, QCommand::Tick);
        }
    }

    /// On the leader: a `SetConfig` for each queue whose settings here — its arguments and
    /// the policies and operator policies in force (replicated through the metadata log) —
    /// differ from what its replicas apply: a policy set, changed or cleared after the queue
    /// was declared reaches every replica in log order, as RabbitMQ's quorum queues take
    /// policy changes. Only the leader proposes one, through its own proposer, never
    /// forwarded (see `settles_for`).
    fn propose_configs(&self) {
        let led: std::collections::HashSet<QKey> = self.led_queues().into_iter().collect();
        // Settings are computed outside the machines' lock (a queue's own lock is taken).
        let candidates: Vec<(QKey, Weak<Queue>, quorum::Config)> = self
            .machines
            .lock()
            .iter()
            .filter(|(k, _)| led.contains(*k))
            .map(|(k, m)| (k.clone(), m.queue.clone(), m.qq.config().clone()))
            .collect();
        let wanted: Vec<(QKey, quorum::Config)> = candidates
            .into_iter()
            .filter_map(|(k, q, applied)| {
                let config = config_of(&*q.upgrade()?);
                (config != applied).then_some((k, config))
            })
            .collect();
        let mut pending = self.reconfiguring.lock();
        pending.retain(|k, _| wanted.iter().any(|(w, _)| w == k));
        let timeout = self.write_timeout();
        for (key, config) in wanted {
            if pending.get(&key).is_some_and(|(c, at)| *c == config && at.elapsed() < timeout) {
                continue;
            }
            info!(queue = %key.1, vhost = %key.0, "quorum queue: its settings changed (policies); the new ones go through its log");
            pending.insert(key.clone(), (config.clone(), std::time::Instant::now()));
            self.submit_quiet(&key, QCommand::SetConfig(config));
        }
    }

    async fn refresh_online(&self) {
        let Some(state) = self.state.upgrade() else { return };
        let Some(running) = state.cluster.get() else { return };
        let mut online = running.node.running_members().await;
        online.sort();
        *self.online.lock() = online;
    }

    /// Queue `key`'s leader, members (its group's voters) and the members online, for
    /// management.
    fn placement(&self, key: &QKey) -> broker::queue::Placement {
        let Some(state) = self.state.upgrade() else { return broker::queue::Placement::default() };
        let Some(running) = state.cluster.get() else { return broker::queue::Placement::default() };
        // A queue with a group of its own: the group once open here, else the voters it
        // was declared with (Err); None: a queue of the metadata group.
        let own = self
            .machines
            .lock()
            .get(key)
            .and_then(|m| m.declaration.group.map(|_| m.group.clone().ok_or_else(|| m.declaration.voters.clone())));
        let (leader, mut members) = match own {
            // Its own group: its voters (the learners only follow).
            Some(Ok(g)) => (g.leader(), g.voters()),
            // Its group is not open here yet: the voters it was declared with.
            Some(Err(voters)) => (None, voters),
            None => (running.node.leader(), running.node.members()),
        };
        members.sort();
        let online = self.online.lock().iter().filter(|n| members.contains(n)).cloned().collect();
        broker::queue::Placement { leader, members, online, home_only: false }
    }

    /// On each queue's leader: consumers on nodes that stopped answering give their
    /// messages back (and are suspended until the node is back), as RabbitMQ's quorum
    /// queues do.
    fn check_nodes(&self) {
        let Some(state) = self.state.upgrade() else { return };
        let Some(running) = state.cluster.get() else { return };
        let up: BTreeSet<u64> = self.online.lock().iter().map(|n| cluster::node_id(n)).collect();
        let members: BTreeSet<u64> = running.node.members().iter().map(|n| cluster::node_id(n)).collect();
        // Which members changed state since the last check, as this node sees them.
        let changed: Vec<(u64, bool)> = {
            let mut down = self.down.lock();
            let mut changed = Vec::new();
            for n in &members {
                let is_up = up.contains(n);
                if is_up != down.contains(n) {
                    continue;
                }
                if is_up {
                    down.remove(n);
                } else {
                    down.insert(*n);
                }
                changed.push((*n, is_up));
            }
            changed
        };
        let led = self.led_queues();
        let newly: Vec<QKey> = {
            let mut was = self.led.lock();
            let newly = led.iter().filter(|k| !was.contains(*k)).cloned().collect();
            *was = led.iter().cloned().collect();
            newly
        };
        let any_led = !led.is_empty();
        let command = |n: u64, is_up: bool| {
            if is_up { QCommand::NodeUp { node: NodeId(n) } } else { QCommand::NodeDown { node: NodeId(n) } }
        };
        for (n, is_up) in &changed {
            if any_led {
                warn!(
                    node = n,
                    up = is_up,
                    "quorum queues: a member is {}",
                    if *is_up { "back" } else { "unreachable" }
                );
            }
            for k in led.iter().filter(|k| !newly.contains(k)) {
                self.submit_quiet(k, command(*n, *is_up));
            }
        }
        // A new leader does not know whom its predecessor declared down: every member's
        // state, once (harmless for consumers that were never down).
        for k in &newly {
            for n in &members {
                self.submit_quiet(k, command(*n, up.contains(n)));
            }
        }
        self.resend_dead_letters(&newly);
    }

    /// On a queue's new leader: the at-least-once dead letters its predecessor routed but
    /// did not see settled are routed again (the targets may get a duplicate, as with
    /// RabbitMQ's quorum queues); without this they would stay pending for good.
    fn resend_dead_letters(&self, newly: &[QKey]) {
        for k in newly {
            let pending = self.machines.lock().get(k).map(|m| (m.queue.clone(), m.qq.pending_dead_letters()));
            if let Some((queue, fx)) = pending.filter(|(_, fx)| !fx.is_empty()) {
                info!(queue = %k.1, vhost = %k.0, letters = fx.len(), "quorum queue: new leader routes the unsettled dead letters again");
                self.carry_out(k, &queue, fx, true);
            }
        }
    }
}

/// The first wait before an at-least-once dead letter that reached no target, or was
/// refused by one, is routed again; each retry waits twice as long, up to the max. RabbitMQ
/// keeps such a message too until its dead-letter exchange routes it somewhere.
const DEAD_LETTER_RETRY_FIRST: Duration = Duration::from_millis(500);
const DEAD_LETTER_RETRY_MAX: Duration = Duration::from_secs(30);

/// A message that died, as the queue's leader routes it to the dead-letter exchange.
struct Letter {
    msg_id: u64,
    reason: broker::dead_letter::Reason,
    delivery_count: u32,
    msg: quorum::Message,
}

impl Letter {
    /// As the broker's dead-lettering takes it (None: its stored bytes do not decode).
    fn queued(&self) -> Option<(QueuedMessage, broker::dead_letter::Reason)> {
        let m = decode_message(&self.msg.payload)?;
        let qm = QueuedMessage {
            msg: Arc::new(m),
            seq: self.msg_id,
            redelivered: self.delivery_count > 0,
            expires_at_ms: 0,
            delivery_count: self.delivery_count,
            disk: None,
        };
        Some((qm, self.reason))
    }
}

/// At-least-once dead-lettering of one message, on its queue's leader, as RabbitMQ's
/// quorum queues do it: route it to the dead-letter exchange as a confirming publisher;
/// once every target has it (on disk, or applied by its cluster), settle it through the
/// log; if it reached no target, or one refused it, route it again later. Stops when this
/// node no longer leads the queue or the letter is no longer pending (a new leader routes
/// what is left: `resend_dead_letters`).
async fn route_at_least_once(me: Weak<QuorumQueues>, key: QKey, queue: Weak<Queue>, letter: Letter) {
    route_until_settled(&me, &key, &queue, &letter).await;
    if let Some(qq) = me.upgrade() {
        qq.dead_lettering.lock().remove(&(key, letter.msg_id));
    }
}

async fn route_until_settled(me: &Weak<QuorumQueues>, key: &QKey, queue: &Weak<Queue>, letter: &Letter) {
    let mut retry = DEAD_LETTER_RETRY_FIRST;
    loop {
        {
            let Some(qq) = me.upgrade() else { return };
            if !qq.dead_letter_is_ours(key, letter.msg_id) {
                return;
            }
            let Some(q) = queue.upgrade() else {
                // A replica without its broker queue here (`attach_detached`): it stays
                // pending for a leader that can route it.
                warn!(queue = %key.1, vhost = %key.0, "quorum queue: cannot dead-letter on this node (no broker queue here)");
                return;
            };
            let Some(m) = letter.queued() else {
                error!(queue = %key.1, vhost = %key.0, "quorum queue: undecodable dead letter {}, discarded", letter.msg_id);
                qq.submit_quiet(key, QCommand::DeadLetterSettled { msg_ids: vec![letter.msg_id] });
                return;
            };
            let outcomes = q.dead_letter_confirmed(vec![m]);
            if qq.routed_safely(&outcomes).await {
                qq.submit_quiet(key, QCommand::DeadLetterSettled { msg_ids: vec![letter.msg_id] });
                return;
            }
            debug!(queue = %key.1, vhost = %key.0, targets = outcomes.len(), "quorum queue: an at-least-once dead letter is not settled yet: routed again in {retry:?}");
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(DEAD_LETTER_RETRY_MAX);
    }
}

/// On the leader: a `Tick` for each queue whose head message has expired, so that it is
/// dead-lettered (reason `expired`) without waiting for other traffic, as RabbitMQ's
/// quorum queues do with their timers. The tick carries the leader's clock.
async fn run_expiry(me: Weak<QuorumQueues>) {
    let mut tick = tokio::time::interval(EXPIRY_CHECK_PERIOD);
    loop {
        tick.tick().await;
        let Some(me) = me.upgrade() else { return };
        me.propose_ticks();
    }
}

async fn run_janitor(me: Weak<QuorumQueues>) {
    let mut tick = tokio::time::interval(JANITOR_PERIOD);
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        ticks += 1;
        let Some(me) = me.upgrade() else { return };
        if me.state.upgrade().is_some_and(|s| s.cluster.get().is_some()) {
            me.sweep_stale_consumers();
            me.prune_abandoned();
            me.reattach_detached();
            me.refresh_online().await;
            me.check_nodes();
            me.propose_configs();
            me.bound_group_logs().await;
            // The groups' upkeep waits on commits and read barriers (up to the request
            // deadline when a quorum is missing): in a task of its own, one at a time, so
            // that it never holds up the checks above. A sweep due meanwhile waits for the
            // next one.
            let sweep = ticks % ORPHAN_SWEEP_TICKS == ORPHAN_SWEEP_FIRST_TICK;
            if !me.tending.swap(true, Ordering::AcqRel) {
                let me = me.clone();
                tokio::spawn(async move {
                    me.hand_over_detached().await;
                    me.tend_groups().await;
                    if sweep {
                        me.sweep_orphan_groups().await;
                    }
                    me.tending.store(false, Ordering::Release);
                });
            }
        }
    }
}

/// Whether a command that was not committed is sent again: everything but publishes
/// (nacked instead: the publisher decides), gets and purges (their caller timed out) and
/// settings changes (the janitor of whichever node leads proposes them again).
/// The others are harmless if they were applied after all: settling, returning or
/// discarding a delivery the replica no longer has out, cancelling a consumer twice, ...
fn retried(cmd: &QCommand) -> bool {
    !matches!(cmd, QCommand::Enqueue { .. } | QCommand::Dequeue { .. } | QCommand::Purge | QCommand::SetConfig(_))
}

/// Pause before sending again what the cluster did not commit (it has no leader or quorum).
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Entries the proposer keeps in flight on the leader: while one is being written and
/// replicated, the items arriving meanwhile already make the next (the confirm window of a
/// publisher is freed one entry at a time, so one entry in flight leaves the disk idle
/// while the entry is replicated and the network idle while it is fsynced).
const PIPELINE_ENTRIES: usize = 4;

/// One proposed entry: its items and their bytes.
struct Proposed {
    batch: Vec<(Item, usize)>,
    bytes: usize,
    /// It changes the queue's settings ([`QCommand::SetConfig`]): what applying the entries
    /// after it does is not known until it is applied.
    reconfigures: bool,
}

/// When an entry about to be proposed by the proposer of `own` may settle: at commit when
/// what applying it does to its publishes is known already — queue `own`'s own group
/// (the metadata group's entries also carry queue declarations and deletions), a queue
/// that never refuses a publish, no settings change in this entry or one in flight ahead
/// of it. Otherwise once applied here (a refusal is recorded as the entry is applied).
/// Settings changes come only from the leader's own proposer (`propose_configs`; never
/// forwarded), and the group settles at commit only once the leader applied an entry of
/// its own term (`cluster::Group::propose_queued`), so no change from elsewhere can be
/// ahead of an entry unseen.
fn settles_for(
    me: &Weak<QuorumQueues>,
    own: Option<&QKey>,
    batch: &[(Item, usize)],
    reconfiguring: bool,
) -> cluster::Settles {
    let known = own.is_some_and(|key| {
        !reconfiguring
            && !batch.iter().any(|(i, _)| matches!(i.cmd, QCommand::SetConfig(_)))
            && me.upgrade().is_some_and(|qq| qq.machines.lock().get(key).is_some_and(|m| !m.qq.may_refuse_publishes()))
    });
    if known { cluster::Settles::AtCommit } else { cluster::Settles::Applied }
}

/// The proposer of the metadata group's queues (`own` None) or of queue `own`'s group:
/// packs the items waiting into entries and keeps up to [`PIPELINE_ENTRIES`] of them in
/// flight on the leader.
async fn run_proposer(me: Weak<QuorumQueues>, mut rx: mpsc::UnboundedReceiver<(Item, usize)>, own: Option<QKey>) {
    let max = cluster::node::MAX_COMMAND_BYTES - ENTRY_OVERHEAD_BYTES;
    let mut carry: Option<(Item, usize)> = None;
    let mut retry: Vec<(Item, usize)> = Vec::new();
    // Entries queued at the leader, oldest first; settled in that order.
    let mut in_flight: std::collections::VecDeque<(Proposed, cluster::node::Queued)> = Default::default();
    loop {
        while in_flight.len() >= PIPELINE_ENTRIES {
            let (p, fut) = in_flight.pop_front().expect("in flight");
            let result = noted(&me, own.as_ref(), fut.await);
            if !settle_entry(&me, p, result, &mut retry).await {
                return;
            }
        }
        let mut batch = std::mem::take(&mut retry);
        if batch.is_empty() {
            let first = match carry.take() {
                Some(f) => f,
                None => match in_flight.front_mut() {
                    // Settle the oldest entry as soon as it is committed or applied
                    // (`settles_for`), else take the next item.
                    Some((_, fut)) => tokio::select! {
                        biased;
                        result = fut => {
                            let (p, _) = in_flight.pop_front().expect("in flight");
                            if !settle_entry(&me, p, noted(&me, own.as_ref(), result), &mut retry).await {
                                return;
                            }
                            continue;
                        }
                        item = rx.recv() => match item {
                            Some(f) => f,
                            None => return,
                        },
                    },
                    None => match rx.recv().await {
                        Some(f) => f,
                        None => return,
                    },
                },
            };
            batch.push(first);
        }
        let mut bytes: usize = batch.iter().map(|(_, s)| s).sum();
        if carry.is_none() {
            while let Ok((item, size)) = rx.try_recv() {
                if bytes + size > max {
                    carry = Some((item, size));
                    break;
                }
                bytes += size;
                batch.push((item, size));
            }
        }
        let node = match proposal_group(&me, own.as_ref()).await {
            Target::Ready(g) => g,
            Target::Gone => {
                // The queue was deleted (or the broker is stopping): what is in flight
                // settles, what waits fails.
                while let Some((p, fut)) = in_flight.pop_front() {
                    if !settle_entry(&me, p, noted(&me, own.as_ref(), fut.await), &mut retry).await {
                        return;
                    }
                }
                fail_items(&me, batch.into_iter().chain(retry.drain(..)).chain(carry.take()));
                rx.close();
                while let Some(item) = rx.recv().await {
                    fail_items(&me, std::iter::once(item));
                }
                return;
            }
            Target::NotOpen => {
                // The group did not open here within the write timeout: nack what waits.
                fail_items(&me, batch.into_iter());
                continue;
            }
        };
        let items: Vec<Item> = batch.iter().map(|(i, _)| i.clone()).collect();
        let compact = me
            .upgrade()
            .and_then(|q| q.state.upgrade())
            .is_some_and(|s| s.feature_flag_enabled(crate::feature_flags::COMPACT_QUORUM_ENTRIES));
        let cmd = crate::clustering::encode_quorum(&items, compact);
        let reconfiguring = in_flight.iter().any(|(p, _)| p.reconfigures);
        let settles = settles_for(&me, own.as_ref(), &batch, reconfiguring);
        let reconfigures = items.iter().any(|i| matches!(i.cmd, QCommand::SetConfig(_)));
        let proposed = Proposed { batch, bytes, reconfigures };
        // On the leader the entry is queued in order and we go on batching; elsewhere
        // (forwarded to the leader) one entry at a time keeps the order.
        match node.propose_queued(cmd, settles).await {
            Proposal::Queued(fut) => in_flight.push_back((proposed, fut)),
            Proposal::Failed(e) => {
                if !settle_entry(&me, proposed, Err(e), &mut retry).await {
                    return;
                }
            }
            Proposal::NotLeader(cmd) => {
                // What is in flight (leadership just moved) fails or commits first.
                while let Some((p, fut)) = in_flight.pop_front() {
                    let result = noted(&me, own.as_ref(), fut.await);
                    if !settle_entry(&me, p, result, &mut retry).await {
                        return;
                    }
                }
                // A settings change is not forwarded: a leader settles its publishes at
                // commit only knowing every settings change ahead of them, i.e. its own
                // (`settles_for`). The new leader's janitor proposes it.
                let (proposed, cmd) = match own.is_some() && proposed.reconfigures {
                    false => (proposed, cmd),
                    true => {
                        let (dropped, batch): (Vec<_>, Vec<_>) =
                            proposed.batch.into_iter().partition(|(i, _)| matches!(i.cmd, QCommand::SetConfig(_)));
                        let gone: usize = dropped.iter().map(|(_, s)| s).sum();
                        if let Some(qq) = me.upgrade() {
                            qq.pending_bytes.fetch_sub(gone, Ordering::Relaxed);
                            qq.settle_tickets(dropped.iter().map(|(i, _)| i.ticket));
                        }
                        let items: Vec<Item> = batch.iter().map(|(i, _)| i.clone()).collect();
                        let proposed = Proposed { batch, bytes: proposed.bytes - gone, reconfigures: false };
                        if items.is_empty() {
                            continue;
                        }
                        (proposed, crate::clustering::encode_quorum(&items, compact))
                    }
                };
                let result = node.propose_and_wait(cmd).await.map(|_| ());
                if !settle_entry(&me, proposed, result, &mut retry).await {
                    return;
                }
            }
        }
    }
}

/// A queued entry's outcome, its index noted for queue `own` (`wait_applied_settled`).
fn noted(
    me: &Weak<QuorumQueues>,
    own: Option<&QKey>,
    result: Result<(u64, Vec<u8>), cluster::Error>,
) -> Result<(), cluster::Error> {
    let (index, _) = result?;
    if let (Some(key), Some(qq)) = (own, me.upgrade()) {
        qq.note_settled(key, index);
    }
    Ok(())
}

/// Where a proposer's entries go.
enum Target {
    Ready(cluster::Group),
    /// The queue (or the broker) is gone.
    Gone,
    /// The queue's group is not open on this node after the write timeout.
    NotOpen,
}

/// The group the proposer of `own` (None: the metadata group's queues) proposes to, once
/// this node runs it.
async fn proposal_group(me: &Weak<QuorumQueues>, own: Option<&QKey>) -> Target {
    let Some(key) = own else {
        return match cluster_node(me).await {
            Some(node) => Target::Ready(node.meta().clone()),
            None => Target::Gone,
        };
    };
    let deadline = {
        let Some(qq) = me.upgrade() else { return Target::Gone };
        tokio::time::Instant::now() + qq.write_timeout()
    };
    loop {
        {
            let Some(qq) = me.upgrade() else { return Target::Gone };
            match qq.machines.lock().get(key) {
                None => return Target::Gone,
                Some(m) => {
                    if let Some(g) = &m.group {
                        return Target::Ready(g.clone());
                    }
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Target::NotOpen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Items that will never be proposed: publishes nacked (confirm mode), the rest dropped
/// (their callers time out), all settled.
fn fail_items(me: &Weak<QuorumQueues>, items: impl Iterator<Item = (Item, usize)>) {
    let Some(me) = me.upgrade() else { return };
    let (tickets, bytes, _) = refuse(&me, items, None);
    if tickets.is_empty() {
        return;
    }
    warn!(items = tickets.len(), "quorum queues: items for a queue whose group is not available were not proposed");
    me.pending_bytes.fetch_sub(bytes, Ordering::Relaxed);
    me.settle_tickets(tickets.into_iter());
}

/// Items that were not (or will not be) committed: a confirm-mode publish's refusal is
/// recorded (the publisher gets a nack; only those are asked for), other commands that
/// are worth sending again go to `retry` when given, the rest are dropped. Returns their
/// tickets, their bytes, and the bytes of those kept for a retry. The caller settles.
fn refuse(
    me: &QuorumQueues,
    items: impl Iterator<Item = (Item, usize)>,
    mut retry: Option<&mut Vec<(Item, usize)>>,
) -> (Vec<u64>, usize, usize) {
    let (mut tickets, mut bytes, mut kept) = (Vec::new(), 0, 0);
    let mut r = me.rejected.lock();
    for (i, size) in items {
        bytes += size;
        tickets.push(i.ticket);
        match (&i.cmd, retry.as_deref_mut()) {
            (QCommand::Enqueue { publish: Some(_), .. }, _) => {
                r.insert(i.ticket);
            }
            // A publish without confirms: nobody asks; never sent again (the publisher decides).
            (QCommand::Enqueue { .. }, _) => {}
            (cmd, Some(retry)) if retried(cmd) => {
                kept += size;
                retry.push((i, size));
            }
            _ => {}
        }
    }
    (tickets, bytes, kept)
}

/// How long a voter other than the first waits before initialising a group that nobody
/// has contacted it for: the first voter (the declaring node) initialises at once and
/// campaigns, so it usually leads; the others step in only if it did not (it died).
const LATER_VOTER_INIT_DELAY: Duration = Duration::from_secs(2);

/// Open queue `key`'s group `id` on this node — initialised with `voters` if this node is
/// one of them and the group has no state yet — and hand it to the queue's replica.
async fn open_group(me: Weak<QuorumQueues>, key: QKey, id: u64, voters: Vec<String>) {
    let Some(node) = cluster_node(&me).await else { return };
    let name = node.name().to_owned();
    let first = voters.first() == Some(&name);
    let applier = Arc::new(GroupApplier { qq: me.clone(), key: key.clone() });
    let result = node.open_group(id, applier, first.then_some(voters.as_slice())).await;
    if let Ok(group) = &result
        && !first
        && voters.contains(&name)
    {
        // Every initial voter may initialise with the same list (openraft's vote makes one
        // leader); this one waits for the first to have done it, and is a no-op then.
        let (group, voters) = (group.clone(), voters.clone());
        tokio::spawn(async move {
            tokio::time::sleep(LATER_VOTER_INIT_DELAY).await;
            if let Err(e) = group.initialize(&voters).await {
                warn!(group = id, "initialising a quorum queue's group: {e}");
            }
        });
    }
    let Some(qq) = me.upgrade() else { return };
    match result {
        Ok(group) => {
            let mut machines = qq.machines.lock();
            match machines.get_mut(&key).filter(|m| m.declaration.group == Some(id)) {
                Some(m) => {
                    m.group = Some(group);
                    m.opening = false;
                }
                None => {
                    // Deleted while it was being opened.
                    drop(machines);
                    qq.delete_group_files(key.1.clone(), id);
                }
            }
        }
        Err(e) => {
            // Fail closed: the queue's commands through this node wait, then fail.
            error!(queue = %key.1, vhost = %key.0, group = id, "opening the quorum queue's Raft group on this node: {e}");
        }
    }
}

/// A quorum queue's own group's state machine: the queue's replica.
struct GroupApplier {
    qq: Weak<QuorumQueues>,
    key: QKey,
}

impl cluster::Applier for GroupApplier {
    fn apply(&self, index: u64, cmd: &[u8]) -> Result<Vec<u8>, String> {
        let Some(qq) = self.qq.upgrade() else { return Ok(Vec::new()) };
        match crate::clustering::decode(cmd) {
            Ok(crate::clustering::Command::Quorum(items)) => {
                qq.apply_group(&self.key, index, items);
                Ok(Vec::new())
            }
            // Never skipped: the other members apply it (fail closed, as the metadata group).
            Ok(_) => {
                Err(format!("entry {index} of quorum queue '{}'s group is not a quorum-queue command", self.key.1))
            }
            Err(e) => Err(format!("entry {index} of quorum queue '{}'s group cannot be decoded: {e}", self.key.1)),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let qq = self.qq.upgrade();
        let machines = qq.as_ref().map(|q| q.machines.lock());
        let machine = machines.as_ref().and_then(|m| m.get(&self.key)).map(|m| &m.qq);
        let mut out = Vec::new();
        ciborium::into_writer(&machine, &mut out).expect("replicas serialize");
        out
    }

    fn restore(&self, index: u64, data: &[u8]) -> Result<(), String> {
        let Some(qq) = self.qq.upgrade() else { return Ok(()) };
        let restored: Option<QuorumQueue> = if data.is_empty() {
            None
        } else {
            ciborium::from_reader(data)
                .map_err(|e| format!("quorum queue '{}': undecodable snapshot: {e}", self.key.1))?
        };
        let mut machines = qq.machines.lock();
        let Some(m) = machines.get_mut(&self.key) else { return Ok(()) };
        // Empty: the group's state from scratch (a fresh group, or a node reset to it).
        m.qq = restored.unwrap_or_else(|| QuorumQueue::new(m.qq.config().clone()));
        m.applied_index = m.applied_index.max(index);
        Ok(())
    }
}

/// The node's Raft member, once the node has started (replayed its log); None when the
/// broker is gone.
async fn cluster_node(me: &Weak<QuorumQueues>) -> Option<cluster::ClusterNode> {
    loop {
        let state = me.upgrade()?.state.upgrade()?;
        match state.cluster.get() {
            Some(c) => return Some(c.node.clone()),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// How often refusals past the pending bound are logged.
const REFUSAL_LOG_INTERVAL_MS: u64 = 1_000;

/// Counts refusals between two log lines.
#[derive(Default)]
struct RefusalLog {
    /// When the last line was written (None: never).
    logged_at_ms: Option<u64>,
    /// Refusals since then, this one included.
    unlogged: u64,
}

impl RefusalLog {
    /// One more refusal at `now_ms`: the count to log now, if a line is due.
    fn refused(&mut self, now_ms: u64) -> Option<u64> {
        self.unlogged += 1;
        let due = self.logged_at_ms.is_none_or(|t| now_ms.saturating_sub(t) >= REFUSAL_LOG_INTERVAL_MS);
        if !due {
            return None;
        }
        self.logged_at_ms = Some(now_ms);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// An entry's outcome: tickets settled, a failed entry's publishes nacked and its other
/// commands kept in `retry` (sent again after a pause). False when the broker is gone.
async fn settle_entry(
    me: &Weak<QuorumQueues>,
    p: Proposed,
    result: Result<(), cluster::Error>,
    retry: &mut Vec<(Item, usize)>,
) -> bool {
    let Some(me) = me.upgrade() else { return false };
    let items = p.batch.len();
    let (tickets, kept) = match result {
        Ok(()) => (p.batch.iter().map(|(i, _)| i.ticket).collect(), 0),
        Err(e) => {
            warn!(items, "quorum queues: an entry was not committed ({e}); its publishes are nacked");
            let (tickets, _, kept) = refuse(&me, p.batch.into_iter(), Some(retry));
            (tickets, kept)
        }
    };
    me.pending_bytes.fetch_sub(p.bytes - kept, Ordering::Relaxed);
    debug!(items, bytes = p.bytes, "quorum queues: entry settled");
    // Retried commands settle too: nobody waits on their tickets (only publishes' are).
    me.settle_tickets(tickets.into_iter());
    drop(me);
    if kept > 0 {
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    true
}

/// The broker's side of one quorum queue on this node.
struct QuorumReplica {
    qq: Weak<QuorumQueues>,
    key: QKey,
    /// The queue's own proposer (None: the queue goes through the metadata group).
    tx: Option<ProposerTx>,
}

impl QuorumReplica {
    fn qq(&self) -> Result<Arc<QuorumQueues>, AmqpError> {
        self.qq.upgrade().ok_or_else(|| AmqpError::new(wire::reply::INTERNAL_ERROR, "the node is stopping"))
    }
}

impl Replica for QuorumReplica {
    fn placement(&self) -> broker::queue::Placement {
        self.qq.upgrade().map(|qq| qq.placement(&self.key)).unwrap_or_default()
    }

    fn publish(&self, _queue: &Arc<Queue>, msg: Arc<Message>, confirm: bool) -> PublishOutcome {
        let Ok(qq) = self.qq() else { return PublishOutcome::Failed };
        let m = encode_message(&msg);
        let size = m.payload.len();
        if size + ITEM_OVERHEAD_BYTES + ENTRY_OVERHEAD_BYTES > cluster::node::MAX_COMMAND_BYTES {
            warn!(queue = %self.key.1, size, "quorum queue: message over the replicated entry limit; nacked");
            return PublishOutcome::Failed;
        }
        match qq.submit_publish(&self.key, Route::Known(self.tx.as_ref()), m, msg.expiration_ms, confirm) {
            Some(ticket) => PublishOutcome::Replicated(ticket),
            None => PublishOutcome::Failed,
        }
    }

    fn add_consumer(&self, queue: &Arc<Queue>, consumer: Consumer) -> Result<(), AmqpError> {
        let qq = self.qq()?;
        let id = qq.consumer_id(consumer.id);
        // A consumer without a prefetch (or no-ack) still gets a bounded credit: deliveries
        // bypass the connection's write-buffer back-pressure, so an unlimited one could
        // put a whole backlog in its outbox.
        let prefetch = match consumer.sink.prefetch() {
            p if p == 0 || consumer.sink.no_ack() => UNLIMITED_PREFETCH_CREDIT,
            p => p,
        };
        qq.consumers.lock().insert(
            consumer.id & 0xffff_ffff,
            LocalConsumer { sink: consumer.sink.clone(), queue: Arc::downgrade(queue), key: self.key.clone() },
        );
        qq.submit_quiet_via(
            &self.key,
            Route::Known(self.tx.as_ref()),
            QCommand::Checkout { consumer: id, prefetch, priority: consumer.priority },
        );
        Ok(())
    }

    fn remove_consumers(&self, ids: &[u64]) {
        let Ok(qq) = self.qq() else { return };
        for id in ids {
            if qq.consumers.lock().remove(&(id & 0xffff_ffff)).is_some() {
                qq.submit_quiet_via(
                    &self.key,
                    Route::Known(self.tx.as_ref()),
                    QCommand::Cancel { consumer: qq.consumer_id(*id) },
                );
            }
        }
    }

    fn settle(&self, msgs: Vec<QueuedMessage>, how: Settle) {
        let Ok(qq) = self.qq() else { return };
        let mut by_consumer: HashMap<ConsumerId, Vec<u64>> = HashMap::new();
        {
            let mut held = qq.held.lock();
            for m in msgs {
                if let Some(h) = held.remove(&m.seq) {
                    by_consumer.entry(h.consumer).or_default().push(h.delivery_id);
                }
            }
        }
        for (consumer, delivery_ids) in by_consumer {
            let cmd = match how {
                Settle::Ack => QCommand::Settle { consumer, delivery_ids },
                Settle::Requeue => QCommand::Return { consumer, delivery_ids },
                Settle::Reject => QCommand::Discard { consumer, delivery_ids },
            };
            qq.submit_quiet_via(&self.key, Route::Known(self.tx.as_ref()), cmd);
        }
    }

    fn get(&self, queue: &Arc<Queue>, no_ack: bool) -> Result<Option<(QueuedMessage, u32)>, AmqpError> {
        let qq = self.qq()?;
        let consumer = qq.getter();
        let fx = qq.submit_and_wait(&self.key, QCommand::Dequeue { consumer, settle: no_ack }).inspect_err(|e| {
            warn!(queue = %queue.name, "quorum queue basic.get: {}", e.text);
        })?;
        for e in fx {
            if let Effect::Dequeued { delivery: Some(d), ready, .. } = e {
                let Some(msg) = delivered_message(&d) else { return Ok(None) };
                let qm = qq.hand_out(&self.key, consumer, &d, msg, no_ack);
                return Ok(Some((qm, ready.min(u64::from(u32::MAX)) as u32)));
            }
        }
        Ok(None)
    }

    fn purge(&self) -> Result<usize, AmqpError> {
        let qq = self.qq()?;
        let fx = qq.submit_and_wait(&self.key, QCommand::Purge)?;
        Ok(fx
            .iter()
            .find_map(|e| match e {
                Effect::Purged { count } => Some(*count as usize),
                _ => None,
            })
            .unwrap_or(0))
    }

    /// queue.declare-ok's counts. A confirm may go out once its entry is committed, a
    /// moment before this node (the leader) applied it: the counts wait for that apply, so
    /// a publisher that has its confirms counts its messages, as from RabbitMQ's leader.
    fn declare_stats(&self) -> Result<QueueStats, AmqpError> {
        if let Some(qq) = self.qq.upgrade() {
            qq.wait_applied_settled(&self.key);
        }
        Ok(self.stats())
    }

    fn stats(&self) -> QueueStats {
        let s = self
            .qq
            .upgrade()
            .and_then(|qq| qq.machines.lock().get(&self.key).map(|m| m.qq.stats()))
            .unwrap_or_default();
        QueueStats {
            messages_ready: s.ready,
            messages_unacked: s.checked_out,
            consumers: s.consumers as u32,
            ready_bytes: s.ready_bytes,
            ready_ram_bytes: s.ready_bytes,
            unacked_bytes: 0,
            stalled_ms: 0,
            dead_letters: s.dead_letters_pending,
            dead_letter_bytes: s.dead_letter_bytes,
        }
    }
}

impl ServerState {
    /// At start, before the metadata log is replayed (nothing applies yet, so nothing
    /// races this): the broker queues recovered from this node's definitions log as quorum
    /// queues' have no replica. The replay declares them again, with their replicas, for
    /// every declare up to the log's committed marker; one past it (a power loss can leave
    /// the marker behind) would otherwise stay a queue without a replica until the leader
    /// says the declare is committed, taking publishes as a classic queue and confirming
    /// them unreplicated. So the empty ones are dropped here: until its declare is applied
    /// a publish finds no queue, and a declare of it waits for the cluster. One holding
    /// messages (from before this node was clustered) is kept, and logged.
    pub fn drop_unreplicated_quorum_queues(&self) {
        if self.quorum.get().is_none() {
            return;
        }
        for vh in self.vhosts() {
            for q in vh.queues() {
                let quorum = q.options.arguments.get("x-queue-type").and_then(|v| v.as_str()) == Some("quorum");
                if !quorum || q.replica().is_some() || q.is_remote() {
                    continue;
                }
                let st = q.stats();
                if st.messages_ready + st.messages_unacked > 0 {
                    warn!(queue = %q.name, vhost = %vh.name, messages = st.messages_ready + st.messages_unacked, "a quorum-typed queue of this node's definitions holds messages but no replica of the cluster's: kept as a local queue");
                    continue;
                }
                debug!(queue = %q.name, vhost = %vh.name, "quorum queue: its broker queue is made again by the replay");
                if let Ok(d) = vh.delete_queue(&q.name, false, false, 0) {
                    crate::channel::notify_deleted(d);
                }
            }
        }
    }

    /// Before a (non-passive) declare of `name` by AMQP or the management API: on a
    /// clustered node, see what the cluster committed first (the read barrier), and when
    /// the declare asks for a quorum queue this node lacks, declare it through the cluster
    /// — refusing what a quorum queue cannot be with RabbitMQ's 406; a new non-exclusive
    /// classic queue is declared here and entered in the cluster's directory
    /// (`crate::classic_queues`). Afterwards the caller declares as usual (it finds the
    /// queue, or makes an exclusive one).
    pub(crate) fn declare_replicated_queue(
        &self,
        vh: &broker::VHost,
        name: &str,
        opts: &broker::queue::QueueOptions,
    ) -> Result<(), AmqpError> {
        if vh.has_queue(name) {
            return Ok(());
        }
        self.cluster_read_barrier();
        let quorum = self.quorum.get().is_some()
            && opts.arguments.get("x-queue-type").and_then(|v| v.as_str()) == Some("quorum");
        if vh.has_queue(name) {
            return Ok(());
        }
        if !quorum {
            // A classic queue: this node is its home. Declared here first (the caller's
            // declare then finds it), then entered in the cluster's directory, so the
            // other nodes route to it. Exclusive queues stay this connection's node's.
            if let Some(c) = self.classic.get()
                && !opts.exclusive
                && !self.in_classic_directory(&vh.name, name)
            {
                let (q, created) = vh.declare_queue(name, false, opts.clone(), 0)?;
                if created {
                    c.register(&q);
                }
            }
            return Ok(());
        }
        let invalid = |what: &str| {
            AmqpError::precondition_failed(format!(
                "invalid property '{what}' for queue '{name}' in vhost '{}'",
                vh.name
            ))
        };
        if !opts.durable {
            return Err(invalid("non-durable"));
        }
        if opts.exclusive {
            return Err(invalid("exclusive"));
        }
        if opts.auto_delete {
            return Err(invalid("auto-delete"));
        }
        broker::args::QueueArgs::parse(&opts.arguments, name, &vh.name)?;
        self.declare_quorum(&vh.name, name, &opts.arguments)
    }

    /// Declare the quorum queue `name` through the cluster (every node creates it); returns
    /// once this node has it. Blocks the calling thread (declares are rare; the channel's
    /// handlers are synchronous), as access changes do.
    pub(crate) fn declare_quorum(&self, vhost: &str, name: &str, args: &wire::FieldTable) -> Result<(), AmqpError> {
        let Some(running) = self.cluster.get() else {
            return Err(AmqpError::new(wire::reply::INTERNAL_ERROR, "not clustered"));
        };
        let max = self.config.quorum_queue_max_count;
        if self.quorum.get().is_some_and(|q| q.machines.lock().len() >= max) {
            return Err(AmqpError::precondition_failed(format!(
                "cannot declare quorum queue '{name}' in vhost '{vhost}': this node's quorum queue limit \
                 (warren.quorum_queue_max = {max}) is reached"
            )));
        }
        let mut d = Declaration {
            vhost: vhost.to_owned(),
            name: name.to_owned(),
            arguments: encode_arguments(args),
            voters: Vec::new(),
            group: None,
        };
        // With `quorum_queue_groups` enabled the queue gets a group of its own; before, its
        // commands go through the metadata group.
        let with_group = crate::clustering::Command::QuorumDeclare(Declaration {
            voters: vec![running.node.name().to_owned()],
            ..d.clone()
        });
        if tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(self.feature_flag_refusal(&with_group))
        })
        .is_none()
        {
            let declared = broker::args::QueueArgs::parse(args, name, vhost)?;
            let size = declared.quorum_initial_group_size.unwrap_or(DEFAULT_GROUP_SIZE);
            let locator = self.vhost(vhost).and_then(|vh| vh.effective_queue_args(name, &declared).leader_locator);
            let running_members = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(running.node.running_members())
            });
            let me = running.node.name();
            // The first voter initialises the group and campaigns at once: it leads.
            let first = match (locator, self.quorum.get()) {
                (Some(broker::args::LeaderLocator::Balanced), Some(qq)) => qq.least_leading(me, &running_members),
                _ => me.to_owned(),
            };
            d.voters = choose_voters(&first, &running_members, &running.node.members(), size);
        }
        self.propose_topology(running, crate::clustering::Command::QuorumDeclare(d))
    }

    /// Delete `q` through the cluster's log if it is not this node's alone: a classic queue
    /// of another node (its home deletes it when the entry applies) or a replicated quorum
    /// queue (applying the entry removes it and cancels its consumers on every node).
    /// False: a queue of this node, for the caller to delete here. The one path for AMQP's
    /// queue.delete and the management API's.
    pub(crate) fn delete_through_log(&self, vhost: &str, q: &broker::Queue) -> Result<bool, AmqpError> {
        if q.is_remote() {
            self.delete_classic(vhost, &q.name, false)?;
        } else if q.replica().is_some() {
            self.delete_quorum(vhost, &q.name)?;
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    /// Delete the quorum queue `name` on every node.
    pub(crate) fn delete_quorum(&self, vhost: &str, name: &str) -> Result<(), AmqpError> {
        let Some(running) = self.cluster.get() else {
            return Err(AmqpError::new(wire::reply::INTERNAL_ERROR, "not clustered"));
        };
        let cmd = crate::clustering::Command::QuorumDelete { vhost: vhost.to_owned(), name: name.to_owned() };
        self.propose_topology(running, cmd)
    }

    fn propose_topology(
        &self,
        running: &crate::clustering::Running,
        cmd: crate::clustering::Command,
    ) -> Result<(), AmqpError> {
        let bytes = crate::clustering::encode_cbor(&cmd);
        let unavailable = |e: String| AmqpError::new(wire::reply::INTERNAL_ERROR, format!("cluster: {e}"));
        let handle = tokio::runtime::Handle::try_current().map_err(|e| unavailable(e.to_string()))?;
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err(unavailable("quorum queues need the broker's multi-thread runtime".into()));
        }
        // An older member could not read it: refused until the flag is enabled (541, as
        // RabbitMQ refuses a queue type whose feature flag is disabled).
        if let Some(refusal) = tokio::task::block_in_place(|| handle.block_on(self.feature_flag_refusal(&cmd))) {
            return Err(AmqpError::new(wire::reply::INTERNAL_ERROR, refusal));
        }
        let result = tokio::task::block_in_place(|| handle.block_on(running.node.propose_and_wait(bytes)))
            .map_err(|e| unavailable(e.to_string()))?;
        match serde_json::from_slice(&result.1) {
            Ok(crate::clustering::Outcome::Applied) => Ok(()),
            Ok(crate::clustering::Outcome::Invalid(e) | crate::clustering::Outcome::Store(e)) => {
                Err(AmqpError::precondition_failed(e))
            }
            Err(e) => Err(unavailable(format!("undecodable result: {e}"))),
        }
    }

    /// Bind (or unbind) the quorum queue `queue` to `exchange` on every node, through the
    /// cluster's log. The exchange must exist here (404 otherwise, as on one node); its
    /// declaration travels with the binding.
    pub(crate) fn bind_quorum(
        &self,
        vh: &broker::VHost,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &wire::FieldTable,
        bind: bool,
    ) -> Result<(), AmqpError> {
        let Some(running) = self.cluster.get() else {
            return Err(AmqpError::new(wire::reply::INTERNAL_ERROR, "not clustered"));
        };
        let e = vh.exchange(exchange)?;
        let d = BindingDeclaration {
            vhost: vh.name.clone(),
            queue: queue.to_owned(),
            exchange: exchange_declaration(&e),
            routing_key: routing_key.to_owned(),
            arguments: encode_arguments(arguments),
        };
        let cmd =
            if bind { crate::clustering::Command::QuorumBind(d) } else { crate::clustering::Command::QuorumUnbind(d) };
        self.propose_topology(running, cmd)
    }

    /// A quorum queue's binding entry is committed: declare the exchange if this node lacks
    /// it, then add the binding (durable ones go to this node's definitions log as usual).
    pub(crate) fn apply_quorum_bind(&self, d: BindingDeclaration) -> Result<(), String> {
        let vh = self.vhost(&d.vhost).ok_or_else(|| format!("no vhost '{}'", d.vhost))?;
        if vh.exchange(&d.exchange.name).is_err() {
            vh.declare_exchange(&d.exchange.name, false, d.exchange.options().map_err(|e| e.text)?)
                .map_err(|e| e.text)?;
        }
        vh.bind_queue(&d.queue, &d.exchange.name, &d.routing_key, decode_arguments(&d.arguments), 0).map_err(|e| e.text)
    }

    /// A quorum queue's unbinding entry is committed: remove the binding here (a node
    /// without the exchange or the queue has nothing to remove).
    pub(crate) fn apply_quorum_unbind(&self, d: BindingDeclaration) -> Result<(), String> {
        let Some(vh) = self.vhost(&d.vhost) else { return Ok(()) };
        if vh.exchange(&d.exchange.name).is_err() || !vh.has_queue(&d.queue) {
            return Ok(());
        }
        vh.unbind_queue(&d.queue, &d.exchange.name, &d.routing_key, decode_arguments(&d.arguments), 0)
            .map_err(|e| e.text)
    }

    /// Before a declare of a queue this node does not have: wait until this node has
    /// applied everything the cluster committed, so a quorum queue declared on another node
    /// (its declare-ok already sent) is seen here rather than shadowed by a local classic
    /// queue of the same name. Best effort: without a quorum, classic queues are still
    /// declared locally (bounded by the write timeout).
    pub(crate) fn cluster_read_barrier(&self) {
        let Some(running) = self.cluster.get() else { return };
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return;
        }
        if let Err(e) = tokio::task::block_in_place(|| handle.block_on(running.node.read())) {
            debug!("cluster read barrier before a declare: {e}");
        }
    }

    /// The declare entry is committed: create the queue (durable, in this node's
    /// definitions log too) and its replica.
    pub(crate) fn apply_quorum_declare(&self, d: Declaration) -> Result<(), String> {
        let Some(qq) = self.quorum.get() else { return Ok(()) };
        let vh = self.vhost(&d.vhost).ok_or_else(|| format!("no vhost '{}'", d.vhost))?;
        // A local classic queue of that name (declared here while the quorum declare was
        // on its way): an empty, unused one gives way; one holding messages is kept (its
        // messages are not dropped) and the conflict is logged.
        if let Ok(local) = vh.queue(&d.name, 0)
            && local.replica().is_none()
        {
            let st = local.stats();
            if st.messages_ready + st.messages_unacked == 0 && st.consumers == 0 {
                warn!(queue = %d.name, vhost = %d.vhost, "a classic queue of this node gives way to the cluster's quorum queue of the same name");
                if let Ok(gone) = vh.delete_queue(&d.name, false, false, 0) {
                    crate::channel::notify_deleted(gone);
                }
            } else {
                error!(queue = %d.name, vhost = %d.vhost, "this node holds a classic queue with messages or consumers where the cluster declared a quorum queue: kept as it is (delete it to use the quorum queue here)");
                // The quorum queue's replica and group still live here, unserved.
                qq.attach_detached(d.clone());
                return Err(format!("queue '{}' in vhost '{}' is a classic queue on this node", d.name, d.vhost));
            }
        }
        let opts = broker::queue::QueueOptions {
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: decode_arguments(&d.arguments),
        };
        let (q, _) = vh.declare_queue(&d.name, false, opts, 0).map_err(|e| e.text)?;
        qq.attach(&q, d);
        Ok(())
    }

    pub(crate) fn apply_quorum_delete(&self, vhost: &str, name: &str) {
        if let Some(qq) = self.quorum.get() {
            qq.forget(vhost, name);
        }
        // Only the broker queue that is the quorum queue's: a classic queue of this node
        // that shadowed it (`attach_detached`) is not the cluster's to delete.
        if let Some(vh) = self.vhost(vhost)
            && vh.queue(name, 0).is_ok_and(|q| q.replica().is_some())
            && let Ok(d) = vh.delete_queue(name, false, false, 0)
        {
            crate::channel::notify_deleted(d);
        }
    }

    /// A snapshot's replicas: replace this node's, and make sure their queues exist.
    pub(crate) fn restore_quorum(&self, queues: Vec<SnapshotQueue>) {
        let Some(qq) = self.quorum.get() else { return };
        let before: Vec<QKey> = qq.machines.lock().keys().cloned().collect();
        let (decls, bindings) = qq.restore(queues);
        for (vhost, name) in before {
            if !qq.has(&vhost, &name) {
                self.apply_quorum_delete(&vhost, &name);
            }
        }
        for d in decls {
            let what = format!("{}/{}", d.vhost, d.name);
            if let Err(e) = self.apply_quorum_declare(d) {
                error!("restoring quorum queue {what} from a cluster snapshot: {e}");
            }
        }
        for b in bindings {
            let what = format!("{}/{} to {}", b.vhost, b.queue, b.exchange.name);
            if let Err(e) = self.apply_quorum_bind(b) {
                error!("restoring the binding of quorum queue {what} from a cluster snapshot: {e}");
            }
        }
    }

    /// The bindings of the quorum queue `queue` on this node, as the log carries them.
    pub(crate) fn queue_bindings(&self, vhost: &str, queue: &str) -> Vec<BindingDeclaration> {
        let Some(vh) = self.vhost(vhost) else { return Vec::new() };
        let mut out = Vec::new();
        // The default exchange's bindings are implicit: every node has them.
        for e in vh.exchanges().into_iter().filter(|e| !e.name.is_empty()) {
            for b in e.bindings() {
                if matches!(&b.destination, broker::exchange::Destination::Queue(q) if q.name == queue) {
                    out.push(BindingDeclaration {
                        vhost: vhost.to_owned(),
                        queue: queue.to_owned(),
                        exchange: exchange_declaration(&e),
                        routing_key: b.routing_key.clone(),
                        arguments: encode_arguments(&b.arguments),
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod refusal_log_tests {
    use super::RefusalLog;

    #[test]
    fn refusals_are_logged_at_most_once_a_second_with_their_count() {
        let mut l = RefusalLog::default();
        assert_eq!(l.refused(5_000), Some(1), "the first is logged at once");
        let quiet: Vec<Option<u64>> = (1..=998).map(|i| l.refused(5_000 + i)).collect();
        assert!(quiet.iter().all(Option::is_none), "nothing more within the second");
        assert_eq!(l.refused(6_000), Some(999), "a second later: one line with the count");
        assert_eq!(l.refused(6_001), None);
        assert_eq!(l.refused(9_000), Some(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Publishes refused in a row: far more than a set of refusals should ever hold.
    const REFUSED_PUBLISHES: u64 = 10_000;

    struct Fixture {
        qq: Arc<QuorumQueues>,
        key: QKey,
        msg: quorum::Message,
        _state: Arc<ServerState>,
        _queue: Arc<Queue>,
    }

    /// `warren.cluster_pending_max_bytes` of the fixture's node.
    const PENDING_MAX_BYTES: usize = 64 * 1024;

    /// A durable broker queue `name` in vhost `/` with `arguments`, and its declaration
    /// (no voters, no group of its own).
    fn queue_declared(name: &str, arguments: wire::FieldTable) -> (Arc<Queue>, Declaration) {
        let declaration = Declaration {
            vhost: "/".to_owned(),
            name: name.to_owned(),
            arguments: encode_arguments(&arguments),
            voters: Vec::new(),
            group: None,
        };
        let options = broker::queue::QueueOptions { durable: true, exclusive: false, auto_delete: false, arguments };
        (Queue::new("/", name.to_owned(), options, None), declaration)
    }

    /// A node's registry (no cluster: its proposer never proposes, so what is submitted
    /// keeps waiting; the test applies items itself) with a reject-publish quorum queue
    /// that holds at most one message.
    fn fixture() -> Fixture {
        let (_, shutdown) = watch::channel(false);
        let config = crate::config::Config { cluster_pending_max_bytes: PENDING_MAX_BYTES, ..Default::default() };
        let state = ServerState::new(config, shutdown);
        let qq = QuorumQueues::start("n1@127.0.0.1:1", &state);
        let mut arguments = wire::FieldTable::new();
        arguments.insert("x-max-length", wire::FieldValue::I64(1));
        arguments.insert("x-overflow", wire::FieldValue::LongStr("reject-publish".into()));
        let (queue, declaration) = queue_declared("q", arguments);
        qq.attach(&queue, declaration);
        let msg = encode_message(&Message {
            exchange: String::new(),
            routing_key: "q".to_owned(),
            properties: Bytes::new(),
            body: Bytes::from_static(b"m"),
            persistent: true,
            priority: 0,
            expiration_ms: None,
        });
        Fixture { qq, key: ("/".to_owned(), "q".to_owned()), msg, _state: state, _queue: queue }
    }

    impl Fixture {
        /// A publish to the reject-publish queue as `QuorumReplica::publish` makes it.
        fn publish(&self, ticket: u64, confirm: bool) -> Item {
            self.publish_to(&self.key, ticket, confirm)
        }

        fn publish_to(&self, key: &QKey, ticket: u64, confirm: bool) -> Item {
            let cmd =
                QCommand::Enqueue { publish: self.qq.publish_id(ticket, confirm), msg: self.msg.clone(), ttl_ms: None };
            Item { vhost: key.0.clone(), queue: key.1.clone(), origin: self.qq.node.0, ticket, now_ms: 0, cmd }
        }

        /// A second quorum queue, `name`, with no bound: its key and the queue (kept by
        /// the caller, as the vhost would).
        fn second_queue(&self, name: &str) -> (QKey, Arc<Queue>) {
            let (queue, declaration) = queue_declared(name, wire::FieldTable::new());
            self.qq.attach(&queue, declaration);
            (("/".to_owned(), name.to_owned()), queue)
        }
    }

    /// A replica installed from the declaration alone (no broker queue on its node) has the
    /// settings a broker queue of that declaration gives its replica, defaults included:
    /// otherwise that node, once it leads, would dead-letter by another delivery limit.
    #[test]
    fn a_declaration_alone_gives_the_settings_of_its_broker_queue() {
        for extra in [
            None,
            Some(("x-max-length", wire::FieldValue::I64(3))),
            Some(("x-delivery-limit", wire::FieldValue::I64(2))),
        ] {
            let mut arguments = wire::FieldTable::new();
            arguments.insert("x-queue-type", wire::FieldValue::LongStr("quorum".into()));
            if let Some((k, v)) = extra {
                arguments.insert(k, v);
            }
            let (queue, declaration) = queue_declared("q", arguments.clone());
            assert_eq!(config_of_declaration(&declaration), config_of(&queue), "{arguments:?}");
        }
        // The dead-letter strategy comes through the effective settings (a policy may set it).
        let d = broker::policy::PolicyDefinition {
            dead_letter_strategy: Some(broker::args::DeadLetterStrategy::AtLeastOnce),
            ..Default::default()
        };
        let declared = broker::args::QueueArgs::default();
        let config = config_from(&broker::policy::effective(&declared, Some(&d), None), false);
        assert_eq!(config.dead_letter_strategy, quorum::DeadLetterStrategy::AtLeastOnce);
        assert_eq!(config_from(&declared, false).dead_letter_strategy, quorum::DeadLetterStrategy::AtMostOnce);
    }

    /// An entry settles at commit only where its publishes' outcome is known before it is
    /// applied: a queue's own group, a queue that never refuses publishes, and no settings
    /// change in the entry or in flight ahead of it.
    #[tokio::test(flavor = "multi_thread")]
    async fn only_entries_whose_publishes_cannot_be_refused_settle_at_commit() {
        use cluster::Settles::{Applied, AtCommit};
        let f = fixture();
        let me = Arc::downgrade(&f.qq);
        let (open_key, _open) = f.second_queue("open");
        let batch = |items: Vec<Item>| -> Vec<(Item, usize)> { items.into_iter().map(|i| (i, 1)).collect() };
        let publishes = batch(vec![f.publish_to(&open_key, 1, true), f.publish_to(&open_key, 2, false)]);
        assert_eq!(settles_for(&me, Some(&open_key), &publishes, false), AtCommit);
        // The reject-publish queue's publishes wait for the apply, which may refuse them.
        assert_eq!(settles_for(&me, Some(&f.key), &batch(vec![f.publish(3, true)]), false), Applied);
        // The metadata group's entries (queues without a group of their own).
        assert_eq!(settles_for(&me, None, &publishes, false), Applied);
        // A settings change in flight ahead, or in the entry itself.
        assert_eq!(settles_for(&me, Some(&open_key), &publishes, true), Applied);
        let set = Item { cmd: QCommand::SetConfig(quorum::Config::default()), ..f.publish_to(&open_key, 4, false) };
        assert_eq!(
            settles_for(&me, Some(&open_key), &batch(vec![f.publish_to(&open_key, 5, true), set]), false),
            Applied
        );
        // A queue this node does not know.
        let gone = ("/".to_owned(), "gone".to_owned());
        assert_eq!(settles_for(&me, Some(&gone), &batch(vec![f.publish_to(&gone, 6, true)]), false), Applied);
    }

    /// A queue's group entry that is not a quorum-queue command, or cannot be decoded at
    /// all, is an error (openraft stops that group's core on this node: fail closed, as the
    /// metadata group does), never skipped; a good entry applies.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_group_entry_that_cannot_be_applied_is_refused_not_skipped() {
        let f = fixture();
        let applier = GroupApplier { qq: Arc::downgrade(&f.qq), key: f.key.clone() };
        let garbage = cluster::Applier::apply(&applier, 7, b"\xff\x00 not an entry").unwrap_err();
        assert!(garbage.contains("entry 7 of quorum queue 'q'") && garbage.contains("cannot be decoded"), "{garbage}");
        let access = crate::clustering::encode_cbor(&crate::clustering::Command::Access(Vec::new()));
        let wrong = cluster::Applier::apply(&applier, 8, &access).unwrap_err();
        assert!(wrong.contains("not a quorum-queue command"), "{wrong}");
        // The queue's own entries are its group's (`declaration.group`); this fixture's queue
        // is the metadata group's, so a good entry through the group changes nothing.
        let good = crate::clustering::encode_quorum(&[f.publish(1, false)], false);
        assert_eq!(cluster::Applier::apply(&applier, 9, &good), Ok(Vec::new()));
        assert_eq!(f.qq.machines.lock().get(&f.key).map(|m| m.qq.stats().ready), Some(0));
    }

    /// At-least-once dead-lettering on a queue's new leader, as RabbitMQ's quorum queues do
    /// it: applied as a follower, an expired message's dead letter stays pending and goes
    /// nowhere; once this node leads, it is routed again — kept while the dead-letter
    /// exchange routes it nowhere, delivered once a binding appears, and settled only then.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_new_leader_routes_the_unsettled_dead_letters_again_and_keeps_them_until_routed() {
        let f = fixture();
        let _ = f._state.quorum.set(f.qq.clone());
        let vh = f._state.vhost("/").expect("default vhost");
        let none = wire::FieldTable::new();
        let (kind, delayed) = broker::exchange::parse_type("fanout", &none).unwrap();
        let opts = broker::exchange::ExchangeOptions {
            kind,
            delayed,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: none.clone(),
        };
        vh.declare_exchange("dlx", false, opts).unwrap();
        let durable =
            |arguments| broker::queue::QueueOptions { durable: true, exclusive: false, auto_delete: false, arguments };
        let (dead, _) = vh.declare_queue("dead", false, durable(none.clone()), 0).unwrap();
        let mut arguments = wire::FieldTable::new();
        arguments.insert("x-dead-letter-exchange", wire::FieldValue::LongStr("dlx".into()));
        arguments.insert("x-dead-letter-strategy", wire::FieldValue::LongStr("at-least-once".into()));
        arguments.insert("x-overflow", wire::FieldValue::LongStr("reject-publish".into()));
        arguments.insert("x-message-ttl", wire::FieldValue::I64(1));
        let (src, _) = vh.declare_queue("src", false, durable(arguments.clone()), 0).unwrap();
        let declaration = Declaration {
            vhost: "/".to_owned(),
            name: "src".to_owned(),
            arguments: encode_arguments(&arguments),
            voters: Vec::new(),
            group: None,
        };
        f.qq.attach(&src, declaration);
        let key = ("/".to_owned(), "src".to_owned());
        let mut properties = Vec::new();
        wire::BasicProperties::default().encode(&mut properties);
        let msg = encode_message(&Message {
            exchange: String::new(),
            routing_key: "src".to_owned(),
            properties: properties.into(),
            body: Bytes::from_static(b"late"),
            persistent: true,
            priority: 0,
            expiration_ms: None,
        });
        let publish = Item {
            cmd: QCommand::Enqueue { publish: f.qq.publish_id(1, false), msg, ttl_ms: None },
            ..f.publish_to(&key, 1, false)
        };
        f.qq.apply_items(1, vec![publish], Some(false), None);
        let tick = Item { now_ms: 60_000, cmd: QCommand::Tick, ..f.publish_to(&key, 2, false) };
        f.qq.apply_items(2, vec![tick], Some(false), None);
        let pending = || f.qq.machines.lock().get(&key).map(|m| m.qq.pending_dead_letters().len());
        assert_eq!(pending(), Some(1), "expired, dead-lettered at least once, not settled");
        assert_eq!(dead.stats().messages_ready, 0, "a follower routes nothing");
        f.qq.resend_dead_letters(std::slice::from_ref(&key));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(pending(), Some(1), "routed nowhere (no binding): kept");
        vh.bind_queue("dead", "dlx", "", none.clone(), 0).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while dead.stats().messages_ready == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(dead.stats().messages_ready, 1, "routed again once the exchange routes it");
        // Settled through the log: this fixture has no cluster, so the settle is applied
        // here as the log would.
        let settle = Item {
            cmd: QCommand::DeadLetterSettled {
                msg_ids: f.qq.machines.lock()[&key]
                    .qq
                    .pending_dead_letters()
                    .iter()
                    .filter_map(|e| match e {
                        Effect::DeadLetter { msg_id, .. } => Some(*msg_id),
                        _ => None,
                    })
                    .collect(),
            },
            ..f.publish_to(&key, 3, false)
        };
        f.qq.apply_items(3, vec![settle], Some(true), None);
        assert_eq!(pending(), Some(0));
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(dead.stats().messages_ready, 1, "not routed again once settled");
    }

    /// A quorum declare applied where this node holds a classic queue of the same name
    /// with a message: the classic queue and its message stay, and the quorum queue's
    /// replica is kept all the same, unserved: in this node's snapshots, and with its group
    /// id known, so the orphan sweep does not take the group's log for a deleted queue's.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_quorum_declare_shadowed_by_a_classic_queue_keeps_its_replica() {
        let f = fixture();
        let _ = f._state.quorum.set(f.qq.clone());
        let vh = f._state.vhost("/").expect("default vhost");
        let options = broker::queue::QueueOptions {
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: wire::FieldTable::new(),
        };
        let (classic, _) = vh.declare_queue("shadowed", false, options, 0).expect("classic declare");
        classic.publish(Arc::new(Message {
            exchange: String::new(),
            routing_key: "shadowed".to_owned(),
            properties: Bytes::new(),
            body: Bytes::from_static(b"kept"),
            persistent: true,
            priority: 0,
            expiration_ms: None,
        }));
        let mut arguments = wire::FieldTable::new();
        arguments.insert("x-queue-type", wire::FieldValue::LongStr("quorum".into()));
        arguments.insert("x-delivery-limit", wire::FieldValue::I64(4));
        let declaration = Declaration {
            vhost: "/".to_owned(),
            name: "shadowed".to_owned(),
            arguments: encode_arguments(&arguments),
            voters: Vec::new(),
            group: None,
        };
        let refused = f._state.apply_quorum_declare(declaration).unwrap_err();
        assert!(refused.contains("is a classic queue on this node"), "{refused}");
        let local = vh.queue("shadowed", 0).expect("the classic queue stays");
        assert!(local.replica().is_none(), "the classic queue is not made a replica");
        assert_eq!(local.stats().messages_ready, 1, "its message stays");
        assert!(f.qq.has("/", "shadowed"), "the quorum queue's replica is kept");
        let snapshot = f.qq.snapshot();
        let kept = snapshot.iter().find(|q| q.declaration.name == "shadowed").expect("in the snapshot");
        assert_eq!(kept.machine.as_ref().map(|m| m.config().delivery_limit), Some(Some(4)));
        // The cluster deletes its quorum queue: the replica goes; the classic queue is this
        // node's own, and stays with its message.
        f._state.apply_quorum_delete("/", "shadowed");
        assert!(!f.qq.has("/", "shadowed"));
        assert_eq!(vh.queue("shadowed", 0).map(|q| q.stats().messages_ready).ok(), Some(1));
    }

    /// `compact_quorum_entries`: the same items in postcard as in CBOR; both decode (a log
    /// written before the flag was enabled keeps its CBOR entries), told apart by the first
    /// byte, and a cut postcard entry is an error, not fewer items.
    #[tokio::test(flavor = "multi_thread")]
    async fn quorum_entries_decode_the_same_from_postcard_and_cbor() {
        let f = fixture();
        let consumer = ConsumerId { node: NodeId(3), id: 9 };
        let mut items = vec![f.publish(1, true), f.publish(2, false)];
        for cmd in [
            QCommand::Settle { consumer, delivery_ids: vec![1, 2, u64::MAX] },
            QCommand::Checkout { consumer, prefetch: 10, priority: -5 },
            QCommand::SetConfig(quorum::Config {
                delivery_limit: Some(3),
                dead_letter: Some(quorum::DeadLetterTarget { exchange: "dlx".into(), routing_key: None }),
                ..Default::default()
            }),
            QCommand::Tick,
        ] {
            items.push(Item {
                vhost: "v".into(),
                queue: "q\u{e9}".into(),
                origin: 1,
                ticket: 7,
                now_ms: 1_700_000_000_000,
                cmd,
            });
        }
        let compact = crate::clustering::encode_quorum(&items, true);
        let cbor = crate::clustering::encode_quorum(&items, false);
        assert_eq!(compact[0], 0x01);
        assert_eq!(cbor[0], 0xA1);
        assert!(compact.len() * 2 < cbor.len(), "{} bytes against {}", compact.len(), cbor.len());
        for bytes in [&compact, &cbor] {
            let Ok(crate::clustering::Command::Quorum(decoded)) = crate::clustering::decode(bytes) else {
                panic!("not quorum items")
            };
            assert_eq!(format!("{decoded:?}"), format!("{items:?}"));
        }
        assert!(crate::clustering::decode(&compact[..compact.len() - 3]).is_err());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn forwarded_publishes_settle_out_of_the_proposers_order_and_keep_their_refusals() {
        let f = fixture();
        let (first, second) = (f.qq.forward_ticket(), f.qq.forward_ticket());
        assert!(first & FORWARD_TICKET != 0 && second > first);
        assert!(!f.qq.all_settled(&[first]) && !f.qq.all_settled(&[second]));
        // The second home answers first, refusing it: only that one is settled.
        f.qq.forward_settled(&[(second, true)]);
        assert!(f.qq.all_settled(&[second]) && !f.qq.all_settled(&[first, second]));
        f.qq.forward_settled(&[(first, false)]);
        assert!(f.qq.all_settled(&[first, second]));
        assert!(!f.qq.take_rejected(&[first]), "the accepted one is not refused");
        assert!(f.qq.take_rejected(&[second]), "the refused one is, once");
        assert!(!f.qq.take_rejected(&[second]));
        // A proposer ticket not applied yet beside a settled forwarded one: not settled.
        let t = f.qq.submit_publish(&f.key, Route::Find, f.msg.clone(), None, true).expect("a ticket");
        assert!(!f.qq.all_settled(&[first, t]));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn refused_publishes_without_confirms_leave_no_refusal_behind() {
        let f = fixture();
        for t in 1..=REFUSED_PUBLISHES {
            f.qq.apply(t, vec![f.publish(t, false)]);
        }
        assert_eq!(f.qq.machines.lock()[&f.key].qq.stats().ready, 1, "the queue holds one message, refuses the rest");
        assert!(f.qq.rejected.lock().is_empty(), "refusals nobody asks for are kept");

        // A failed (uncommitted) entry of publishes without confirms: nothing kept either.
        let batch: Vec<(Item, usize)> = (1..=100).map(|t| (f.publish(REFUSED_PUBLISHES + t, false), 10)).collect();
        f.qq.pending_bytes.fetch_add(1000, Ordering::Relaxed);
        let p = Proposed { batch, bytes: 1000, reconfigures: false };
        assert!(settle_entry(&Arc::downgrade(&f.qq), p, Err(cluster::Error::Timeout), &mut Vec::new()).await);
        assert!(f.qq.rejected.lock().is_empty(), "an uncommitted publish without confirms is kept as refused");
        assert_eq!(f.qq.pending_bytes.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_confirm_publishers_refusals_are_kept_until_taken_or_abandoned() {
        let f = fixture();
        // Submitted, as the proposer would have: unsettled until their entries apply.
        {
            let mut u = f.qq.unsettled.lock();
            u.extend(1..=13);
            f.qq.low_water.store(1, Ordering::Release);
        }
        f.qq.apply(1, vec![f.publish(1, true)]);
        for t in 2..=11 {
            f.qq.apply(t, vec![f.publish(t, true)]);
        }
        assert_eq!(f.qq.rejected.lock().len(), 10);
        f.qq.settle_tickets(1..=11);
        assert!(!f.qq.take_rejected(&[1]), "the first publish was taken");
        assert!(f.qq.take_rejected(&[2, 3]));
        assert_eq!(f.qq.rejected.lock().len(), 8);
        // The channel closed before asking for 4..=11; 12..=13 are not settled yet.
        f.qq.abandon(4..=13);
        assert!(f.qq.rejected.lock().is_empty());
        f.qq.apply(12, vec![f.publish(12, true), f.publish(13, true)]);
        assert_eq!(f.qq.rejected.lock().len(), 2);
        f.qq.settle_tickets(12..=13);
        f.qq.prune_abandoned();
        assert!(f.qq.rejected.lock().is_empty() && f.qq.abandoned.lock().is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_publish_to_several_queues_takes_only_its_own_refusals() {
        let f = fixture();
        let (wide, _wide_queue) = f.second_queue("wide");
        f.qq.apply(1, vec![f.publish(1, true)]);
        // Publisher A routes to both queues (tickets 2 and 4), publisher C to the full one
        // only (ticket 3, between A's): both are refused by the full queue.
        let items = vec![f.publish(2, true), f.publish(3, true), f.publish_to(&wide, 4, true)];
        f.qq.apply(2, items);
        f.qq.settle_tickets(1..=4);
        assert!(!f.qq.take_rejected(&[1]));
        assert!(f.qq.take_rejected(&[2, 4]), "A: refused by the full queue");
        assert!(f.qq.take_rejected(&[3]), "C keeps its own refusal (a range 2..=4 took it)");

        // The same interleaving, A's channel closed before its confirm: C's refusal stays.
        let items = vec![f.publish(5, true), f.publish(6, true), f.publish_to(&wide, 7, true)];
        f.qq.apply(3, items);
        f.qq.settle_tickets(5..=7);
        f.qq.abandon([5, 7].into_iter());
        assert!(f.qq.take_rejected(&[6]), "C keeps its own refusal after A abandoned");
        assert!(f.qq.rejected.lock().is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn publishes_filling_the_pending_bound_leave_room_for_acks() {
        let f = fixture();
        let mut accepted = 0;
        while f.qq.submit_publish(&f.key, Route::Find, f.msg.clone(), None, true).is_some() {
            accepted += 1;
        }
        let pending = f.qq.pending_bytes.load(Ordering::Relaxed);
        assert!(pending <= PENDING_MAX_BYTES && pending + ITEM_OVERHEAD_BYTES * 2 > PENDING_MAX_BYTES);
        assert_eq!(accepted, PENDING_MAX_BYTES / (f.msg.payload.len() + ITEM_OVERHEAD_BYTES));
        // A consumer's acks (and other commands) still go through.
        let consumer = f.qq.consumer_id(1);
        assert!(f.qq.submit_quiet(&f.key, QCommand::Settle { consumer, delivery_ids: vec![1] }).is_some());
        assert!(
            f.qq.submit_publish(&f.key, Route::Find, f.msg.clone(), None, true).is_none(),
            "publishes are still refused"
        );
    }
}
