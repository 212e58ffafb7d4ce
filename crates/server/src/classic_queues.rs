//! Classic queues reachable from every node of a cluster (issue 15).
//!
//! A classic queue lives on one node, its **home** (the node it was declared on), as in
//! RabbitMQ: its messages are there only. What the cluster shares is a **directory** of
//! classic queues — (vhost, name, home, durable, auto-delete, arguments) — kept through the
//! Raft log ([`crate::clustering::Command::ClassicDeclare`] / `ClassicDelete`, carried in
//! snapshots). Every other node holds a broker [`Queue`] of the same name that exchanges
//! route to and declares find, whose [`Replica`] ([`RemoteReplica`]) forwards to the home
//! over the inter-node link (`cluster::ClusterNode::call_broker`): publishes (batched per
//! home, bounded by `warren.cluster_forward_max_bytes`, confirmed only once the home
//! answers that the message is enqueued — and fsynced when it is persistent in a durable
//! queue), basic.get, basic.consume and their acks, purges and the counts of
//! queue.declare-ok. A consumer on another node is a consumer of the home's queue whose
//! sink ([`RemoteSink`]) pushes deliveries to that node (`Rpc::Deliver`), with the
//! consumer's prefetch as credit; a lost link or node requeues what it held on the home
//! and cancels the consumer on its node.
//!
//! Bindings to a classic queue in the directory go through the log as those of quorum
//! queues do (`QuorumBind`), so every node's exchanges route to it. Exclusive queues stay
//! on their connection's node and out of the directory.
//!
//! The home is what makes a queue: it declares (or recovers) the queue locally first and
//! registers it afterwards; a janitor registers the node's classic queues the directory
//! lacks (recovered at start, declared while there was no quorum, imported) and removes
//! the directory entries of its queues that are gone (deleted, auto-deleted, expired). A
//! node never deletes a local queue because of the directory: a conflict (the directory
//! names another home for a queue this node holds) is logged and the local queue kept.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use broker::queue::{Consumer, PublishOutcome, QueueStats, Replica, Settle};
use broker::store::{Durability, Settled};
use broker::{AmqpError, Message, Queue, QueuedMessage};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use crate::clustering::Command;
use crate::quorum_queues::{BindingDeclaration, QKey, decode_arguments, encode_arguments};
use crate::state::ServerState;

/// The default of `warren.cluster_forward_max_bytes`: message bytes forwarded to other
/// nodes' classic queues and not yet answered, past which such publishes are nacked.
pub(crate) const FORWARD_MAX_BYTES: usize = 64 * 1024 * 1024;
/// A forwarded batch carries messages up to this many bytes (one more message may pass it).
const BATCH_MAX_BYTES: usize = 1024 * 1024;
/// What a forwarded message costs besides its bytes (names, flags, encoding).
const FORWARD_OVERHEAD_BYTES: usize = 128;
/// How often a node checks its classic queues against the directory.
const JANITOR_PERIOD: Duration = Duration::from_secs(1);
/// Directory changes the janitor proposes per round at most.
const JANITOR_PROPOSALS_MAX: usize = 64;
/// A refusal past the forward bound is logged at most this often.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// What a reconcile reads: the directory's change count and each vhost's topology
/// generation (queues come, go, and are auto-deleted or expire through the vhost).
#[derive(PartialEq, Eq)]
struct Fingerprint {
    directory: u64,
    vhosts: Vec<(String, u64)>,
}

/// A classic queue in the cluster's directory, as the log and snapshots carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ClassicDeclaration {
    pub vhost: String,
    pub name: String,
    /// The node whose queue it is (`NAME@HOST:PORT`).
    pub home: String,
    pub durable: bool,
    pub auto_delete: bool,
    /// AMQP-encoded field table.
    pub arguments: Vec<u8>,
}

impl ClassicDeclaration {
    fn options(&self) -> broker::queue::QueueOptions {
        broker::queue::QueueOptions {
            durable: self.durable,
            exclusive: false,
            auto_delete: self.auto_delete,
            arguments: decode_arguments(&self.arguments),
        }
    }

    fn key(&self) -> QKey {
        (self.vhost.clone(), self.name.clone())
    }
}

/// A directory entry in a snapshot, with the bindings the node that took it has for it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotClassic {
    pub declaration: ClassicDeclaration,
    #[serde(default)]
    pub bindings: Vec<BindingDeclaration>,
}

/// A request to a queue's home (`Request::Broker`), CBOR.
#[derive(Debug, Serialize, Deserialize)]
enum Rpc {
    /// Enqueue these, in order; answered once each is enqueued (and durable when it must be).
    Publish(Vec<Forwarded>),
    /// The queue's counts (queue.declare-ok, management).
    Stats {
        vhost: String,
        name: String,
    },
    /// The counts of several queues (a node refreshing what management lists).
    StatsMany(Vec<(String, String)>),
    /// basic.get. Unless `no_ack`, the home keeps the message out for the asking node
    /// (`boot` tells its starts apart) until it settles it, or is lost.
    Get {
        vhost: String,
        name: String,
        no_ack: bool,
        boot: u64,
    },
    /// Settle messages a get or a consumer of the asking node took, in order: (id, how)
    /// with how 0 ack, 1 requeue, 2 reject.
    Settle(Vec<(u64, u8)>),
    Purge {
        vhost: String,
        name: String,
    },
    /// basic.consume on another node: the home registers a consumer whose deliveries it
    /// pushes to that node (`Deliver`), `prefetch` of them at most unsettled.
    Consume {
        vhost: String,
        name: String,
        consumer: u64,
        prefetch: u32,
        no_ack: bool,
        priority: i32,
        exclusive: bool,
        boot: u64,
    },
    /// Which of these consumers of the asking node the home has (a home restarted
    /// between two pings forgot them: their node cancels them).
    Known {
        consumers: Vec<u64>,
    },
    /// basic.cancel (or the channel closed) of consumers of the asking node.
    Cancel {
        consumers: Vec<u64>,
    },
    /// From the home to a consumer's node: deliveries, in order, and consumers the home
    /// dropped (queue deleted, link lost): the node cancels them (basic.cancel).
    Deliver {
        deliveries: Vec<(u64, Got)>,
        cancelled: Vec<u64>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Forwarded {
    vhost: String,
    queue: String,
    /// The message as quorum replicas keep it (exchange, routing key, properties, body).
    #[serde(with = "cluster::codec::bytes")]
    payload: Vec<u8>,
}

/// Per forwarded message: enqueued (and durable if it had to be), refused by the queue
/// (reject-publish), or not enqueued (no such queue, a store failure).
const ENQUEUED: u8 = 0;
const REFUSED: u8 = 1;
const FAILED: u8 = 2;

#[derive(Debug, Serialize, Deserialize)]
enum RpcAnswer {
    Published(Vec<u8>),
    Stats {
        ready: u64,
        unacked: u64,
        consumers: u32,
    },
    /// Per queue asked: (ready, unacked, consumers), None for a queue the home lacks.
    StatsMany(Vec<Option<(u64, u64, u32)>>),
    Got(Option<Got>),
    Done,
    Purged(u64),
    /// No such (local) queue on the node asked.
    NotFound,
    /// Refused with this AMQP reply code and text (e.g. 403 exclusive consumer).
    Refused(u16, String),
    /// The ids (the home's) of deliveries the consumer's node could not hand over (its
    /// consumer went meanwhile): the home requeues them; `unknown`: consumers that node
    /// does not have (cancelled, or of its earlier start): the home ends them.
    Delivered {
        returned: Vec<u64>,
        unknown: Vec<u64>,
    },
    /// Of the consumers asked about (`Rpc::Known`), those the home does not have.
    Unknown(Vec<u64>),
    Error(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Got {
    /// The home's key for the message it keeps out (0 with no_ack).
    id: u64,
    #[serde(with = "cluster::codec::bytes")]
    payload: Vec<u8>,
    redelivered: bool,
    delivery_count: u32,
    remaining: u32,
}

/// A message published here for a queue of another node, waiting to be forwarded.
struct Pending {
    ticket: u64,
    confirm: bool,
    size: usize,
    item: Forwarded,
}

/// On the home: a message a basic.get on another node took and has not settled yet.
struct Lent {
    node: String,
    boot: u64,
    queue: Weak<Queue>,
    msg: QueuedMessage,
    /// The consumer it was delivered to (its credit comes back when it is settled).
    consumer: Option<Arc<RemoteSink>>,
}

/// On the home: a consumer of another node, as the queue's consumer sink. A delivery is
/// pushed to that node's outbound task; at most `prefetch` stay unsettled.
struct RemoteSink {
    cq: Weak<ClassicQueues>,
    node: String,
    boot: u64,
    /// The consumer's id on its node.
    consumer: u64,
    /// Its id in the home's queue.
    home_id: u64,
    queue: Weak<Queue>,
    prefetch: u32,
    no_ack: bool,
    /// Delivered and not settled.
    out: std::sync::atomic::AtomicU32,
    gone: std::sync::atomic::AtomicBool,
}

impl broker::queue::ConsumerSink for RemoteSink {
    fn try_deliver(&self, queue: &Arc<Queue>, m: QueuedMessage) -> Result<(), QueuedMessage> {
        if self.gone.load(Ordering::Relaxed) || (!self.no_ack && self.out.load(Ordering::Relaxed) >= self.prefetch) {
            return Err(m);
        }
        let Some(cq) = self.cq.upgrade() else { return Err(m) };
        let Some(me) = cq.consumers_here.lock().get(&(self.node.clone(), self.consumer)).cloned() else {
            return Err(m);
        };
        let payload = crate::quorum_queues::encode_message(&m.msg).payload.to_vec();
        let (redelivered, delivery_count) = (m.redelivered, m.delivery_count);
        let id = if self.no_ack {
            0
        } else {
            self.out.fetch_add(1, Ordering::Relaxed);
            let id = cq.next_lent.fetch_add(1, Ordering::Relaxed);
            let lent = Lent {
                node: self.node.clone(),
                boot: self.boot,
                queue: Arc::downgrade(queue),
                msg: m,
                consumer: Some(me),
            };
            cq.lent.lock().insert(id, lent);
            id
        };
        let got = Got { id, payload, redelivered, delivery_count, remaining: 0 };
        cq.push_out(&self.node, Outbound::Deliver(self.consumer, got));
        Ok(())
    }

    fn no_ack(&self) -> bool {
        self.no_ack
    }

    fn prefetch(&self) -> u32 {
        self.prefetch
    }

    fn cancelled_by_broker(&self) {
        // The home's queue was deleted: the consumer's node cancels it.
        self.gone.store(true, Ordering::Relaxed);
        if let Some(cq) = self.cq.upgrade() {
            cq.consumers_here.lock().remove(&(self.node.clone(), self.consumer));
            cq.push_out(&self.node, Outbound::Cancelled(self.consumer));
        }
    }
}

/// What the home sends a consumer's node, in order.
enum Outbound {
    Deliver(u64, Got),
    Cancelled(u64),
}

/// On a consumer's node: a consumer of a queue of another node.
struct Following {
    sink: Arc<dyn broker::queue::ConsumerSink>,
    queue: Weak<Queue>,
    key: QKey,
    home: String,
    /// When it was registered (a consumer the home may not know yet is not checked).
    since: std::time::Instant,
}

pub(crate) struct ClassicQueues {
    /// This node's name (`NAME@HOST:PORT`).
    me_name: String,
    /// Itself, for the tasks and sinks it makes.
    me: Weak<ClassicQueues>,
    /// Random per start: the home requeues what an earlier start of this node took.
    boot: u64,
    state: Weak<ServerState>,
    directory: Mutex<HashMap<QKey, ClassicDeclaration>>,
    /// Bumped by every change of `directory`: with the vhosts' generations, what tells the
    /// janitor whether there is anything new to reconcile.
    directory_changes: AtomicU64,
    /// The inputs of the last reconcile that found nothing to do (see [`Fingerprint`]).
    reconciled: Mutex<Option<Fingerprint>>,
    /// One forwarding task per home node, fed in publish order.
    forwarders: Mutex<HashMap<String, mpsc::UnboundedSender<Pending>>>,
    /// Bytes queued for forwarding or forwarded and not answered.
    forward_bytes: AtomicUsize,
    forward_max_bytes: usize,
    /// When a refusal past the bound was last logged.
    refusal_logged: Mutex<Option<std::time::Instant>>,
    /// On the home: messages other nodes' gets hold.
    lent: Mutex<HashMap<u64, Lent>>,
    next_lent: AtomicU64,
    /// Here: messages a get took from a queue of another node, by the key the channel
    /// holds them by, with their home and the home's id.
    borrowed: Mutex<HashMap<u64, (String, u64)>>,
    next_borrowed: AtomicU64,
    /// Conflicts already logged (the directory names another home for a local queue).
    conflicts: Mutex<HashSet<QKey>>,
    /// On a home: other nodes' consumers of its queues, by (node, consumer id there).
    consumers_here: Mutex<HashMap<(String, u64), Arc<RemoteSink>>>,
    /// On a home: one outbound task per consumer's node, fed in delivery order.
    outbound: Mutex<HashMap<String, mpsc::UnboundedSender<Outbound>>>,
    /// Here: this node's consumers of other nodes' queues, by consumer id.
    following: Mutex<HashMap<u64, Following>>,
    /// Here: one settling task per home, fed in settle order.
    settlers: Mutex<HashMap<String, mpsc::UnboundedSender<(u64, u8)>>>,
    /// Here: the counts of other nodes' queues as their homes last gave them (management
    /// lists them), refreshed every `STATS_REFRESH_PERIOD` and at each declare-ok.
    remote_stats: Mutex<HashMap<QKey, QueueStats>>,
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("requests serialize");
    out
}

/// No counts known yet (a forwarding queue before its first declare-ok).
fn empty_stats() -> QueueStats {
    QueueStats {
        messages_ready: 0,
        messages_unacked: 0,
        consumers: 0,
        ready_bytes: 0,
        ready_ram_bytes: 0,
        unacked_bytes: 0,
        stalled_ms: 0,
        dead_letters: 0,
        dead_letter_bytes: 0,
    }
}

fn stats_of(ready: u64, unacked: u64, consumers: u32) -> QueueStats {
    QueueStats { messages_ready: ready, messages_unacked: unacked, consumers, ..empty_stats() }
}

/// RabbitMQ's text when a queue's home node cannot be reached (404 NOT_FOUND).
fn home_down(home: &str, key: &QKey) -> AmqpError {
    AmqpError::not_found(format!(
        "home node '{home}' of durable queue '{}' in vhost '{}' is down or inaccessible",
        key.1, key.0
    ))
}

/// Run `fut` to completion from synchronous code on the broker's runtime (a channel's
/// handler), as the cluster's declares do.
fn block_on<F: std::future::Future>(fut: F) -> Result<F::Output, AmqpError> {
    let unavailable = |e: &str| AmqpError::new(wire::reply::INTERNAL_ERROR, e.to_owned());
    let handle = tokio::runtime::Handle::try_current().map_err(|e| unavailable(&e.to_string()))?;
    if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return Err(unavailable("classic queues of other nodes need the broker's multi-thread runtime"));
    }
    Ok(tokio::task::block_in_place(|| handle.block_on(fut)))
}

impl ClassicQueues {
    pub(crate) fn start(node_name: &str, state: &Arc<ServerState>) -> Arc<ClassicQueues> {
        let me = Arc::new_cyclic(|me| ClassicQueues {
            me_name: node_name.to_owned(),
            me: me.clone(),
            boot: fastrand::u64(1..),
            state: Arc::downgrade(state),
            directory: Mutex::new(HashMap::new()),
            directory_changes: AtomicU64::new(0),
            reconciled: Mutex::new(None),
            forwarders: Mutex::new(HashMap::new()),
            forward_bytes: AtomicUsize::new(0),
            forward_max_bytes: state.config.cluster_forward_max_bytes,
            refusal_logged: Mutex::new(None),
            lent: Mutex::new(HashMap::new()),
            next_lent: AtomicU64::new(1),
            borrowed: Mutex::new(HashMap::new()),
            next_borrowed: AtomicU64::new(1),
            conflicts: Mutex::new(HashSet::new()),
            consumers_here: Mutex::new(HashMap::new()),
            outbound: Mutex::new(HashMap::new()),
            following: Mutex::new(HashMap::new()),
            remote_stats: Mutex::new(HashMap::new()),
            settlers: Mutex::new(HashMap::new()),
        });
        tokio::spawn(run_janitor(Arc::downgrade(&me)));
        me
    }

    /// The handler of peers' requests, for `ClusterNode::set_broker_handler`.
    pub(crate) fn handler(self: &Arc<Self>) -> Arc<dyn cluster::transport::BrokerHandler> {
        Arc::new(Handler { cq: Arc::downgrade(self) })
    }

    /// Whether (vhost, name) is in the directory (its bindings go through the log).
    pub(crate) fn contains(&self, vhost: &str, name: &str) -> bool {
        self.directory.lock().contains_key(&(vhost.to_owned(), name.to_owned()))
    }

    fn home_of(&self, vhost: &str, name: &str) -> Option<String> {
        self.directory.lock().get(&(vhost.to_owned(), name.to_owned())).map(|d| d.home.clone())
    }

    fn write_timeout(&self) -> Duration {
        self.state
            .upgrade()
            .map_or(Duration::from_secs(10), |s| Duration::from_millis(s.config.cluster_write_timeout_ms))
    }

    async fn call(&self, peer: &str, rpc: &Rpc) -> Result<RpcAnswer, String> {
        let state = self.state.upgrade().ok_or("the node is stopping")?;
        let running = state.cluster.get().ok_or("the node is still starting")?;
        let node = running.node.clone();
        drop(state);
        let bytes = node.call_broker(peer, encode(rpc), self.write_timeout()).await?;
        ciborium::from_reader(&bytes[..]).map_err(|e| format!("undecodable answer from {peer}: {e}"))
    }

    /// [`Self::call`] from a channel's (synchronous) handler.
    fn call_blocking(&self, peer: &str, rpc: Rpc) -> Result<Result<RpcAnswer, String>, AmqpError> {
        block_on(self.call(peer, &rpc))
    }

    // ---- the directory ----

    /// A committed `ClassicDeclare`: record it, and on every node but the home make the
    /// queue that forwards to it. The home's queue exists already (it registers queues it
    /// holds). A local queue of that name on another node is a conflict: logged, kept.
    pub(crate) fn apply_declare(self: &Arc<Self>, state: &ServerState, d: ClassicDeclaration) {
        let key = d.key();
        let d = self.directory.lock().entry(key.clone()).or_insert(d).clone();
        self.directory_changes.fetch_add(1, Ordering::AcqRel);
        if d.home == self.me_name {
            return;
        }
        let Some(vh) = state.vhost(&d.vhost) else { return };
        match vh.queue(&d.name, 0) {
            Ok(q) if q.is_remote() => {}
            Ok(_) => self.conflict(&key, &d.home),
            Err(_) => {
                let replica =
                    Arc::new(RemoteReplica { cq: Arc::downgrade(self), key: key.clone(), home: d.home.clone() });
                if let Err(e) = vh.declare_remote_queue(&d.name, d.options(), replica) {
                    error!(queue = %d.name, vhost = %d.vhost, home = %d.home, "the queue of another node cannot be made here: {}", e.text);
                }
            }
        }
    }

    fn conflict(&self, key: &QKey, home: &str) {
        if self.conflicts.lock().insert(key.clone()) {
            error!(queue = %key.1, vhost = %key.0, home, "this node holds a queue of this name while the cluster's is on another node: kept as it is (this node's clients use it; delete it to reach the other)");
        }
    }

    /// A committed `ClassicDelete`: forget it; every node removes its forwarding queue, and
    /// the home deletes its queue unless the entry says it is gone there already.
    pub(crate) fn apply_delete(&self, state: &ServerState, vhost: &str, name: &str, gone_at_home: bool) {
        let key = (vhost.to_owned(), name.to_owned());
        let entry = self.directory.lock().get(&key).cloned();
        // The queue goes first, the entry after: the janitor, which reads both under the
        // directory's lock, never sees a local queue without its entry (and registers it
        // again) because of this delete.
        if let Some(vh) = state.vhost(vhost)
            && let Ok(q) = vh.queue(name, 0)
        {
            if q.is_remote() {
                self.cancel_following(|f| f.key == key);
                crate::channel::notify_deleted(vh.remove_queue(&q));
            } else if !gone_at_home
                && q.replica().is_none()
                && entry.is_some_and(|d| d.home == self.me_name)
                && let Ok(gone) = vh.delete_queue(name, false, false, 0)
            {
                crate::channel::notify_deleted(gone);
            }
        }
        self.directory.lock().remove(&key);
        self.directory_changes.fetch_add(1, Ordering::AcqRel);
        self.conflicts.lock().remove(&key);
    }

    /// The directory and the bindings this node has to its queues, for a snapshot.
    pub(crate) fn snapshot(&self, state: &ServerState) -> Vec<SnapshotClassic> {
        let entries: Vec<ClassicDeclaration> = self.directory.lock().values().cloned().collect();
        entries
            .into_iter()
            .map(|d| {
                let bindings = state.queue_bindings(&d.vhost, &d.name);
                SnapshotClassic { declaration: d, bindings }
            })
            .collect()
    }

    /// A snapshot's directory replaces this node's: forwarding queues of entries it lacks
    /// go (`exact`: it is the cluster's state), its entries are applied as declares, then
    /// their bindings added. Returns the bindings (the caller keeps them when it removes
    /// replicated bindings a snapshot lacks).
    pub(crate) fn restore(
        self: &Arc<Self>,
        state: &ServerState,
        entries: Vec<SnapshotClassic>,
        exact: bool,
    ) -> Vec<BindingDeclaration> {
        let wanted: HashSet<QKey> = entries.iter().map(|e| e.declaration.key()).collect();
        if exact {
            let gone: Vec<QKey> = self.directory.lock().keys().filter(|k| !wanted.contains(*k)).cloned().collect();
            for (vhost, name) in gone {
                self.apply_delete(state, &vhost, &name, true);
            }
        }
        let mut bindings = Vec::new();
        for e in entries {
            // The snapshot's home wins over an entry this node had (apply_declare counts
            // the change).
            self.directory.lock().remove(&e.declaration.key());
            self.apply_declare(state, e.declaration);
            bindings.extend(e.bindings);
        }
        for b in &bindings {
            if let Err(e) = state.apply_quorum_bind(b.clone()) {
                error!("restoring the binding of classic queue {}/{} to {}: {e}", b.vhost, b.queue, b.exchange.name);
            }
        }
        bindings
    }

    /// Propose `cmd` and wait for it to be applied (async: the janitor's).
    async fn propose(&self, cmd: &Command) -> Result<(), String> {
        let state = self.state.upgrade().ok_or("the node is stopping")?;
        let running = state.cluster.get().ok_or("the node is still starting")?;
        let node = running.node.clone();
        // A cluster with a member that cannot read the directory keeps classic queues local.
        if let Some(refusal) = state.feature_flag_refusal(cmd).await {
            return Err(refusal);
        }
        drop(state);
        node.propose_and_wait(crate::clustering::encode_cbor(cmd)).await.map(drop).map_err(|e| e.to_string())
    }

    /// Compare this node's classic queues with the directory: register the ones it lacks,
    /// and remove the entries of this node's queues that are gone.
    async fn reconcile(&self) {
        let Some(state) = self.state.upgrade() else { return };
        let Some(running) = state.cluster.get() else { return };
        if running.node.leader().is_none() {
            return;
        }
        // Nothing changed since a reconcile that found nothing to do: skip the scan of every
        // queue (once a second on every node). The directory changes are read first, so a
        // change made during the scan makes the next round's fingerprint differ.
        let fingerprint = Fingerprint {
            directory: self.directory_changes.load(Ordering::Acquire),
            vhosts: state.vhosts().iter().map(|vh| (vh.name.clone(), vh.generation())).collect(),
        };
        if self.reconciled.lock().as_ref() == Some(&fingerprint) {
            return;
        }
        let mut cmds = Vec::new();
        {
            let dir = self.directory.lock();
            for key in dir.iter().filter(|(_, d)| d.home == self.me_name).map(|(k, _)| k) {
                let held = state.vhost(&key.0).and_then(|vh| vh.queue(&key.1, 0).ok());
                if held.is_none_or(|q| q.is_remote() || q.replica().is_some()) {
                    cmds.push(Command::ClassicDelete { vhost: key.0.clone(), name: key.1.clone(), gone_at_home: true });
                }
            }
            for vh in state.vhosts() {
                for q in vh.queues() {
                    if q.options.exclusive || q.is_remote() || q.replica().is_some() {
                        continue;
                    }
                    let key = (vh.name.clone(), q.name.clone());
                    match dir.get(&key) {
                        None => cmds.push(Command::ClassicDeclare(ClassicDeclaration {
                            vhost: vh.name.clone(),
                            name: q.name.clone(),
                            home: self.me_name.clone(),
                            durable: q.options.durable,
                            auto_delete: q.options.auto_delete,
                            arguments: encode_arguments(&q.options.arguments),
                        })),
                        Some(d) if d.home != self.me_name => self.conflict(&key, &d.home),
                        Some(_) => {}
                    }
                }
            }
        }
        drop(state);
        // Proposals that fail (or are left for the next round) leave the fingerprint unset,
        // so the next round scans again. A conflict is logged once (`conflict`) either way.
        if cmds.is_empty() {
            *self.reconciled.lock() = Some(fingerprint);
        }
        for cmd in cmds.iter().take(JANITOR_PROPOSALS_MAX) {
            if let Err(e) = self.propose(cmd).await {
                debug!("classic queues: a directory change is left for the next round: {e}");
                return;
            }
        }
    }

    /// Register `q`, just declared here, in the directory (the caller's declare-ok waits
    /// for it, so a client told the queue exists finds it on every node). Without a
    /// quorum the queue stays this node's until the janitor registers it.
    pub(crate) fn register(&self, q: &Queue) {
        let cmd = Command::ClassicDeclare(ClassicDeclaration {
            vhost: q.vhost.clone(),
            name: q.name.clone(),
            home: self.me_name.clone(),
            durable: q.options.durable,
            auto_delete: q.options.auto_delete,
            arguments: encode_arguments(&q.options.arguments),
        });
        match block_on(self.propose(&cmd)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) | Err(AmqpError { text: e, .. }) => {
                warn!(queue = %q.name, vhost = %q.vhost, "classic queue not registered with the cluster yet (retried every second): {e}");
            }
        }
    }

    /// Remove `name` from the directory everywhere (queue.delete of a queue in it): on the
    /// home (`gone_at_home`: it deleted its queue already) or from another node (the
    /// home deletes it when the entry is applied).
    pub(crate) fn unregister(&self, vhost: &str, name: &str, gone_at_home: bool) -> Result<(), AmqpError> {
        let cmd = Command::ClassicDelete { vhost: vhost.to_owned(), name: name.to_owned(), gone_at_home };
        match block_on(self.propose(&cmd))? {
            Ok(()) => Ok(()),
            Err(e) if gone_at_home => {
                warn!(queue = %name, vhost = %vhost, "classic queue deleted here, not yet in the cluster's directory (retried every second): {e}");
                Ok(())
            }
            Err(e) => Err(AmqpError::new(wire::reply::INTERNAL_ERROR, format!("cluster: {e}"))),
        }
    }

    // ---- forwarding (the non-home side) ----

    fn forward(&self, home: &str, key: &QKey, msg: &Message, confirm: bool) -> PublishOutcome {
        let Some(state) = self.state.upgrade() else { return PublishOutcome::Failed };
        let Some(qq) = state.quorum.get() else { return PublishOutcome::Failed };
        let payload = crate::quorum_queues::encode_message(msg).payload.to_vec();
        let size = payload.len() + FORWARD_OVERHEAD_BYTES;
        if self.forward_bytes.fetch_add(size, Ordering::AcqRel) + size > self.forward_max_bytes {
            self.forward_bytes.fetch_sub(size, Ordering::AcqRel);
            let mut logged = self.refusal_logged.lock();
            if logged.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_INTERVAL) {
                *logged = Some(std::time::Instant::now());
                warn!(queue = %key.1, home, "{} bytes already wait for other nodes' classic queues; refusing (nack)", self.forward_max_bytes);
            }
            return PublishOutcome::Failed;
        }
        let ticket = qq.forward_ticket();
        let item = Forwarded { vhost: key.0.clone(), queue: key.1.clone(), payload };
        let pending = Pending { ticket, confirm, size, item };
        let sent = {
            let mut f = self.forwarders.lock();
            let tx = f.entry(home.to_owned()).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(run_forwarder(self.state.clone(), home.to_owned(), rx));
                tx
            });
            tx.send(pending).map_err(|e| e.0)
        };
        if let Err(p) = sent {
            self.finish(&state, vec![(p, FAILED)]);
            return PublishOutcome::Failed;
        }
        PublishOutcome::Replicated(ticket)
    }

    /// Forwarded messages answered (or failed): free their bytes and settle their tickets.
    fn finish(&self, state: &ServerState, done: Vec<(Pending, u8)>) {
        let Some(qq) = state.quorum.get() else { return };
        let mut bytes = 0;
        let mut tickets = Vec::with_capacity(done.len());
        for (p, code) in done {
            bytes += p.size;
            tickets.push((p.ticket, p.confirm && code != ENQUEUED));
        }
        self.forward_bytes.fetch_sub(bytes, Ordering::AcqRel);
        qq.forward_settled(&tickets);
    }

    // ---- the home's side ----

    async fn serve(&self, from: String, rpc: Rpc) -> RpcAnswer {
        let Some(state) = self.state.upgrade() else { return RpcAnswer::Error("the node is stopping".into()) };
        let local = |vhost: &str, name: &str| {
            state.vhost(vhost).and_then(|vh| vh.queue(name, 0).ok()).filter(|q| !q.is_remote() && q.replica().is_none())
        };
        match rpc {
            Rpc::Publish(items) => {
                let mut codes = Vec::with_capacity(items.len());
                let mut waits: Vec<(usize, Durability)> = Vec::new();
                for it in items {
                    let Some(q) = local(&it.vhost, &it.queue) else {
                        codes.push(FAILED);
                        continue;
                    };
                    let Some(msg) = crate::quorum_queues::decode_message(&bytes::Bytes::from(it.payload)) else {
                        codes.push(FAILED);
                        continue;
                    };
                    match q.publish_confirmed(Arc::new(msg)) {
                        PublishOutcome::Enqueued(d) => {
                            waits.push((codes.len(), d));
                            codes.push(ENQUEUED);
                        }
                        PublishOutcome::Rejected => codes.push(REFUSED),
                        _ => codes.push(FAILED),
                    }
                }
                // A confirm on the publisher's node means what it means here: persistent
                // messages in durable queues are fsynced.
                let mut commit = state.commit.clone();
                drop(state);
                loop {
                    let now = *commit.borrow_and_update();
                    let mut pending = false;
                    for (i, d) in &waits {
                        match d.settled(now) {
                            Settled::Pending => pending = true,
                            Settled::Failed => codes[*i] = FAILED,
                            Settled::Durable => {}
                        }
                    }
                    if !pending {
                        break;
                    }
                    if commit.changed().await.is_err() {
                        for (i, _) in &waits {
                            codes[*i] = FAILED;
                        }
                        break;
                    }
                }
                RpcAnswer::Published(codes)
            }
            Rpc::Stats { vhost, name } => match local(&vhost, &name) {
                Some(q) => {
                    let s = q.stats();
                    RpcAnswer::Stats { ready: s.messages_ready, unacked: s.messages_unacked, consumers: s.consumers }
                }
                None => RpcAnswer::NotFound,
            },
            Rpc::StatsMany(keys) => RpcAnswer::StatsMany(
                keys.iter()
                    .map(|(vhost, name)| {
                        local(vhost, name).map(|q| {
                            let s = q.stats();
                            (s.messages_ready, s.messages_unacked, s.consumers)
                        })
                    })
                    .collect(),
            ),
            Rpc::Get { vhost, name, no_ack, boot } => {
                let Some(q) = local(&vhost, &name) else { return RpcAnswer::NotFound };
                self.return_lent(|l| l.node == from && l.boot != boot);
                let Some((m, remaining)) = q.get(no_ack) else { return RpcAnswer::Got(None) };
                let payload = crate::quorum_queues::encode_message(&m.msg).payload.to_vec();
                let (redelivered, delivery_count) = (m.redelivered, m.delivery_count);
                let id = if no_ack {
                    0
                } else {
                    let id = self.next_lent.fetch_add(1, Ordering::Relaxed);
                    let lent = Lent { node: from, boot, queue: Arc::downgrade(&q), msg: m, consumer: None };
                    self.lent.lock().insert(id, lent);
                    id
                };
                RpcAnswer::Got(Some(Got { id, payload, redelivered, delivery_count, remaining }))
            }
            Rpc::Settle(settles) => {
                for (id, how) in settles {
                    let taken = self.lent.lock().remove(&id);
                    settle_lent(taken.into_iter().collect(), how);
                }
                RpcAnswer::Done
            }
            Rpc::Purge { vhost, name } => match local(&vhost, &name) {
                Some(q) => RpcAnswer::Purged(q.purge() as u64),
                None => RpcAnswer::NotFound,
            },
            Rpc::Consume { vhost, name, consumer, prefetch, no_ack, priority, exclusive, boot } => {
                let Some(q) = local(&vhost, &name) else { return RpcAnswer::NotFound };
                // What an earlier start of that node held goes back.
                self.drop_consumers(|c| c.node == from && c.boot != boot);
                self.return_lent(|l| l.node == from && l.boot != boot);
                let prefetch = match prefetch {
                    p if p == 0 || no_ack => crate::quorum_queues::UNLIMITED_PREFETCH_CREDIT,
                    p => p,
                };
                let home_id = broker::queue::next_consumer_id();
                let sink = Arc::new(RemoteSink {
                    cq: self.me.clone(),
                    node: from.clone(),
                    boot,
                    consumer,
                    home_id,
                    queue: Arc::downgrade(&q),
                    prefetch,
                    no_ack,
                    out: std::sync::atomic::AtomicU32::new(0),
                    gone: std::sync::atomic::AtomicBool::new(false),
                });
                self.consumers_here.lock().insert((from.clone(), consumer), sink.clone());
                let c = Consumer { id: home_id, tag: format!("{from}/{consumer}"), exclusive, priority, sink };
                match q.add_consumer(c, || {}) {
                    Ok(()) => RpcAnswer::Done,
                    Err(e) => {
                        self.consumers_here.lock().remove(&(from, consumer));
                        RpcAnswer::Refused(e.code, e.text)
                    }
                }
            }
            Rpc::Known { consumers } => {
                let here = self.consumers_here.lock();
                RpcAnswer::Unknown(consumers.into_iter().filter(|c| !here.contains_key(&(from.clone(), *c))).collect())
            }
            Rpc::Cancel { consumers } => {
                let ids: HashSet<u64> = consumers.into_iter().collect();
                self.drop_consumers(|c| c.node == from && ids.contains(&c.consumer));
                RpcAnswer::Done
            }
            Rpc::Deliver { deliveries, cancelled } => self.take_deliveries(deliveries, cancelled),
        }
    }

    /// On the home: end the remote consumers `which` selects (their queues forget them;
    /// what they hold unsettled stays out until settled, or their node is found gone).
    fn drop_consumers(&self, which: impl Fn(&RemoteSink) -> bool) {
        let gone: Vec<Arc<RemoteSink>> = {
            let mut c = self.consumers_here.lock();
            let keys: Vec<(String, u64)> = c.iter().filter(|(_, s)| which(s)).map(|(k, _)| k.clone()).collect();
            keys.into_iter().filter_map(|k| c.remove(&k)).collect()
        };
        for s in gone {
            s.gone.store(true, Ordering::Relaxed);
            let Some(q) = s.queue.upgrade() else { continue };
            if q.remove_consumer(s.home_id)
                && let Some(state) = self.state.upgrade()
                && let Some(vh) = state.vhost(&q.vhost)
            {
                // An auto-delete queue's last consumer: the janitor drops the entry.
                crate::channel::notify_deleted(vh.remove_queue(&q));
            }
        }
    }

    /// The message `got` from `home` as this node's channel keeps it; with `held`, the home
    /// keeps it out until the channel settles it (found again by the returned `seq`).
    fn lend(&self, home: String, got: &Got, msg: Message, held: bool) -> QueuedMessage {
        let seq = self.next_borrowed.fetch_add(1, Ordering::Relaxed);
        if held {
            self.borrowed.lock().insert(seq, (home, got.id));
        }
        QueuedMessage {
            msg: Arc::new(msg),
            seq,
            redelivered: got.redelivered,
            expires_at_ms: 0,
            delivery_count: got.delivery_count,
            disk: None,
        }
    }

    /// On a consumer's node: the home's deliveries to this node's consumers.
    fn take_deliveries(&self, deliveries: Vec<(u64, Got)>, cancelled: Vec<u64>) -> RpcAnswer {
        let mut returned = Vec::new();
        let mut unknown = Vec::new();
        for (consumer, mut got) in deliveries {
            let f = self.following.lock().get(&consumer).map(|f| (f.sink.clone(), f.queue.clone(), f.home.clone()));
            if f.is_none() {
                unknown.push(consumer);
            }
            let target = f.and_then(|(sink, q, home)| q.upgrade().map(|q| (sink, q, home)));
            let msg = crate::quorum_queues::decode_message(&bytes::Bytes::from(std::mem::take(&mut got.payload)));
            let (Some((sink, q, home)), Some(msg)) = (target, msg) else {
                if got.id != 0 {
                    returned.push(got.id);
                }
                continue;
            };
            let qm = self.lend(home, &got, msg, got.id != 0);
            let seq = qm.seq;
            if sink.force_deliver(&q, qm).is_err() && got.id != 0 {
                self.borrowed.lock().remove(&seq);
                returned.push(got.id);
            }
        }
        for c in cancelled {
            let f = self.following.lock().remove(&c);
            if let Some(f) = f {
                f.sink.cancelled_by_broker();
            }
        }
        unknown.sort_unstable();
        unknown.dedup();
        RpcAnswer::Delivered { returned, unknown }
    }

    /// On a consumer's node: cancel (basic.cancel to the client) the consumers `which`
    /// selects, their home being gone or their queue deleted.
    fn cancel_following(&self, which: impl Fn(&Following) -> bool) {
        let gone: Vec<Following> = {
            let mut f = self.following.lock();
            let ids: Vec<u64> = f.iter().filter(|(_, x)| which(x)).map(|(id, _)| *id).collect();
            ids.into_iter().filter_map(|id| f.remove(&id)).collect()
        };
        for f in gone {
            f.sink.cancelled_by_broker();
        }
    }

    /// Ask each home whether it still has this node's consumers (registered for a while:
    /// a new one's Consume may still be on its way); cancel those it does not have (the
    /// home restarted between two pings).
    async fn check_following(&self) {
        let mut by_home: HashMap<String, Vec<u64>> = HashMap::new();
        for (id, f) in self.following.lock().iter() {
            if f.since.elapsed() >= FOLLOWING_CHECK_AGE {
                by_home.entry(f.home.clone()).or_default().push(*id);
            }
        }
        for (home, consumers) in by_home {
            if let Ok(RpcAnswer::Unknown(gone)) = self.call(&home, &Rpc::Known { consumers }).await
                && !gone.is_empty()
            {
                warn!(home = %home, consumers = gone.len(), "classic queues: the home no longer has these consumers (it restarted?): cancelled");
                let gone: HashSet<u64> = gone.into_iter().collect();
                self.cancel_following_ids(&gone);
            }
        }
    }

    fn cancel_following_ids(&self, ids: &HashSet<u64>) {
        let gone: Vec<Following> = {
            let mut f = self.following.lock();
            ids.iter().filter_map(|id| f.remove(id)).collect()
        };
        for f in gone {
            f.sink.cancelled_by_broker();
        }
    }

    /// Queue settles of messages taken from `home` for its settler task.
    fn push_settles(&self, home: &str, settles: impl Iterator<Item = (u64, u8)>) {
        let mut s = self.settlers.lock();
        let tx = s.entry(home.to_owned()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run_settler(self.me.clone(), home.to_owned(), rx));
            tx
        });
        for x in settles {
            let _ = tx.send(x);
        }
    }

    /// On a home: queue `o` for the consumer's node `node` (its task sends in order).
    fn push_out(&self, node: &str, o: Outbound) {
        let mut out = self.outbound.lock();
        let tx = out.entry(node.to_owned()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run_outbound(self.me.clone(), node.to_owned(), rx));
            tx
        });
        let _ = tx.send(o);
    }

    /// Ask each home for the counts of its queues this node holds (one request per home).
    async fn refresh_stats(&self) {
        let mut by_home: HashMap<String, Vec<QKey>> = HashMap::new();
        for (key, d) in self.directory.lock().iter() {
            if d.home != self.me_name {
                by_home.entry(d.home.clone()).or_default().push(key.clone());
            }
        }
        let mut fresh = HashMap::new();
        for (home, keys) in by_home {
            if let Ok(RpcAnswer::StatsMany(counts)) = self.call(&home, &Rpc::StatsMany(keys.clone())).await {
                for (key, c) in keys.into_iter().zip(counts) {
                    if let Some((ready, unacked, consumers)) = c {
                        fresh.insert(key, stats_of(ready, unacked, consumers));
                    }
                }
            }
        }
        // Queues gone from the directory are forgotten; a home that did not answer keeps
        // its last counts out (zero) rather than stale ones.
        *self.remote_stats.lock() = fresh;
    }

    /// Requeue the messages lent under these ids.
    fn return_ids(&self, ids: &HashSet<u64>) {
        if ids.is_empty() {
            return;
        }
        let taken: Vec<Lent> = {
            let mut lent = self.lent.lock();
            ids.iter().filter_map(|id| lent.remove(id)).collect()
        };
        settle_lent(taken, 1);
    }

    /// Requeue (redelivered) the messages other nodes' gets hold that `lost` selects.
    fn return_lent(&self, lost: impl Fn(&Lent) -> bool) {
        let taken: Vec<Lent> = {
            let mut lent = self.lent.lock();
            let ids: Vec<u64> = lent.iter().filter(|(_, l)| lost(l)).map(|(id, _)| *id).collect();
            ids.into_iter().filter_map(|id| lent.remove(&id)).collect()
        };
        if !taken.is_empty() {
            warn!(
                messages = taken.len(),
                "classic queues: messages taken by a node that is gone or restarted are requeued"
            );
        }
        settle_lent(taken, 1);
    }
}

fn settle_lent(taken: Vec<Lent>, how: u8) {
    for l in taken {
        if let Some(c) = &l.consumer {
            c.out.fetch_sub(1, Ordering::Relaxed);
        }
        let Some(q) = l.queue.upgrade() else { continue };
        match how {
            0 => q.ack(std::slice::from_ref(&l.msg)),
            1 => q.requeue(vec![l.msg]),
            _ => q.reject(vec![l.msg]),
        }
        if l.consumer.is_some() {
            // Credit came back: the queue may deliver to that consumer again.
            q.dispatch();
        }
    }
}

/// One home's forwarding: batches of what waits, one batch in flight at a time, so the
/// home enqueues a publisher's messages in the order they were published.
async fn run_forwarder(state: Weak<ServerState>, home: String, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut warned: Option<std::time::Instant> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let mut bytes = batch[0].size;
        while bytes < BATCH_MAX_BYTES {
            let Ok(p) = rx.try_recv() else { break };
            bytes += p.size;
            batch.push(p);
        }
        let Some(st) = state.upgrade() else { return };
        let Some(cq) = st.classic.get().cloned() else { return };
        drop(st);
        let items: Vec<Forwarded> = batch
            .iter()
            .map(|p| Forwarded {
                vhost: p.item.vhost.clone(),
                queue: p.item.queue.clone(),
                payload: p.item.payload.clone(),
            })
            .collect();
        let n = items.len();
        let codes = match cq.call(&home, &Rpc::Publish(items)).await {
            Ok(RpcAnswer::Published(codes)) if codes.len() == n => codes,
            other => {
                if warned.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_INTERVAL) {
                    warned = Some(std::time::Instant::now());
                    let why = match other {
                        Err(e) => e,
                        Ok(a) => format!("unexpected answer {a:?}"),
                    };
                    warn!(home = %home, messages = n, "classic queues: forwarding failed ({why}); nacked");
                }
                vec![FAILED; n]
            }
        };
        let Some(st) = state.upgrade() else { return };
        cq.finish(&st, batch.into_iter().zip(codes).collect());
    }
}

/// A consumer of another node's queue registered at least this long ago is checked with
/// its home every janitor round.
const FOLLOWING_CHECK_AGE: Duration = Duration::from_secs(2);

/// How often a node asks the homes of the other nodes' queues it holds for their counts.
const STATS_REFRESH_PERIOD: Duration = Duration::from_secs(5);

/// Settles one request carries at most.
const SETTLE_BATCH_MAX: usize = 4096;
/// Pause before sending again settles the home did not take (the link is busy or down).
const SETTLE_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Acks, nacks and rejects of messages taken from one home, in order, one batch in flight
/// (what waits is bounded by the messages taken: their credit or gets). A batch the home
/// does not take is sent again until the write timeout has passed, then dropped (logged):
/// by then the home finds this node gone and requeues what it holds.
async fn run_settler(cq: Weak<ClassicQueues>, home: String, mut rx: mpsc::UnboundedReceiver<(u64, u8)>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < SETTLE_BATCH_MAX {
            let Ok(x) = rx.try_recv() else { break };
            batch.push(x);
        }
        let Some(me) = cq.upgrade() else { return };
        let deadline = std::time::Instant::now() + me.write_timeout();
        let rpc = Rpc::Settle(batch);
        loop {
            match me.call(&home, &rpc).await {
                Ok(RpcAnswer::Done) => break,
                other if std::time::Instant::now() >= deadline => {
                    warn!(home = %home, "classic queues: settles of messages taken from another node were lost ({other:?})");
                    break;
                }
                _ => tokio::time::sleep(SETTLE_RETRY_PAUSE).await,
            }
        }
    }
}

/// How long a consumer's node's outbound task waits before sending again the cancels of a
/// batch its node did not answer.
const OUTBOUND_RETRY: Duration = Duration::from_secs(1);

/// On a home: what goes to one consumer's node, in order, one batch in flight. A batch
/// the node does not answer (the link failed) ends the consumers it was for: their
/// messages go back to the queue (redelivered) and the node is told (once the link is
/// back) to cancel them.
async fn run_outbound(cq: Weak<ClassicQueues>, node: String, mut rx: mpsc::UnboundedReceiver<Outbound>) {
    let mut cancels: Vec<u64> = Vec::new();
    loop {
        let first = if cancels.is_empty() {
            match rx.recv().await {
                Some(o) => Some(o),
                None => return,
            }
        } else {
            match tokio::time::timeout(OUTBOUND_RETRY, rx.recv()).await {
                Ok(Some(o)) => Some(o),
                Ok(None) => return,
                Err(_) => None,
            }
        };
        let mut deliveries = Vec::new();
        let mut bytes = 0;
        let mut next = first;
        while let Some(o) = next {
            match o {
                Outbound::Deliver(c, got) => {
                    bytes += got.payload.len() + FORWARD_OVERHEAD_BYTES;
                    deliveries.push((c, got));
                }
                Outbound::Cancelled(c) => cancels.push(c),
            }
            next = if bytes < BATCH_MAX_BYTES { rx.try_recv().ok() } else { None };
        }
        let Some(me) = cq.upgrade() else { return };
        let ids: Vec<u64> = deliveries.iter().map(|(_, g)| g.id).filter(|&id| id != 0).collect();
        let consumers: HashSet<u64> = deliveries.iter().map(|(c, _)| *c).collect();
        let rpc = Rpc::Deliver { deliveries, cancelled: cancels.clone() };
        match me.call(&node, &rpc).await {
            Ok(RpcAnswer::Delivered { returned, unknown }) => {
                cancels.clear();
                // Ended first, so their requeued messages go to other consumers.
                let unknown: HashSet<u64> = unknown.into_iter().collect();
                me.drop_consumers(|c| c.node == node && unknown.contains(&c.consumer));
                let returned: HashSet<u64> = returned.into_iter().collect();
                me.return_ids(&returned);
            }
            other => {
                warn!(node = %node, "classic queues: deliveries to another node's consumers failed ({other:?}); those consumers are ended and their messages requeued");
                me.drop_consumers(|c| c.node == node && consumers.contains(&c.consumer));
                me.return_ids(&ids.into_iter().collect());
                cancels.extend(consumers);
                cancels.sort_unstable();
                cancels.dedup();
            }
        }
    }
}

/// Every second: reconcile the directory, and on a home requeue what nodes that stopped
/// answering took with basic.get.
async fn run_janitor(me: Weak<ClassicQueues>) {
    let mut tick = tokio::time::interval(JANITOR_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_stats = std::time::Instant::now();
    loop {
        tick.tick().await;
        let Some(cq) = me.upgrade() else { return };
        cq.reconcile().await;
        if last_stats.elapsed() >= STATS_REFRESH_PERIOD {
            last_stats = std::time::Instant::now();
            cq.refresh_stats().await;
        }
        let online = cq.state.upgrade().and_then(|s| s.quorum.get().map(|q| q.online_members()));
        if let Some(online) = online.filter(|o| !o.is_empty()) {
            // A node gone: its consumers here end and what it took goes back; here, the
            // consumers of queues whose home is gone are cancelled, as RabbitMQ cancels
            // them when a queue's node goes down.
            cq.drop_consumers(|c| !online.contains(&c.node));
            cq.return_lent(|l| !online.contains(&l.node));
            cq.cancel_following(|f| !online.contains(&f.home));
        }
        cq.check_following().await;
    }
}

struct Handler {
    cq: Weak<ClassicQueues>,
}

impl cluster::transport::BrokerHandler for Handler {
    fn handle(
        &self,
        from: String,
        request: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u8>> + Send + 'static>> {
        let cq = self.cq.clone();
        Box::pin(async move {
            let answer = match (cq.upgrade(), ciborium::from_reader::<Rpc, _>(&request[..])) {
                (None, _) => RpcAnswer::Error("the node is stopping".into()),
                (_, Err(e)) => RpcAnswer::Error(format!("undecodable request: {e}")),
                (Some(cq), Ok(rpc)) => cq.serve(from, rpc).await,
            };
            encode(&answer)
        })
    }
}

/// The broker's side, on a node other than the home, of a classic queue of another node.
struct RemoteReplica {
    cq: Weak<ClassicQueues>,
    key: QKey,
    home: String,
}

impl RemoteReplica {
    fn cq(&self) -> Result<Arc<ClassicQueues>, AmqpError> {
        self.cq.upgrade().ok_or_else(|| AmqpError::new(wire::reply::INTERNAL_ERROR, "the node is stopping"))
    }

    /// Ask the home; an unreachable home is RabbitMQ's 404.
    fn ask(&self, rpc: Rpc) -> Result<RpcAnswer, AmqpError> {
        let cq = self.cq()?;
        match cq.call_blocking(&self.home, rpc)? {
            Ok(RpcAnswer::NotFound) => Err(AmqpError::not_found(format!(
                "no queue '{}' in vhost '{}' on its home node '{}'",
                self.key.1, self.key.0, self.home
            ))),
            Ok(RpcAnswer::Error(e)) => Err(AmqpError::new(wire::reply::INTERNAL_ERROR, e)),
            Ok(a) => Ok(a),
            Err(e) => {
                debug!(queue = %self.key.1, home = %self.home, "home node not reached: {e}");
                Err(home_down(&self.home, &self.key))
            }
        }
    }
}

impl Replica for RemoteReplica {
    fn publish(&self, _queue: &Arc<Queue>, msg: Arc<Message>, confirm: bool) -> PublishOutcome {
        let Ok(cq) = self.cq() else { return PublishOutcome::Failed };
        // Read again: the entry may name another home since (a snapshot's).
        let home = cq.home_of(&self.key.0, &self.key.1).unwrap_or_else(|| self.home.clone());
        cq.forward(&home, &self.key, &msg, confirm)
    }

    fn add_consumer(&self, queue: &Arc<Queue>, consumer: Consumer) -> Result<(), AmqpError> {
        let cq = self.cq()?;
        let sink = consumer.sink.clone();
        let f = Following {
            sink: sink.clone(),
            queue: Arc::downgrade(queue),
            key: self.key.clone(),
            home: self.home.clone(),
            since: std::time::Instant::now(),
        };
        // Before asking: the home's first deliveries may come before its answer.
        cq.following.lock().insert(consumer.id, f);
        let rpc = Rpc::Consume {
            vhost: self.key.0.clone(),
            name: self.key.1.clone(),
            consumer: consumer.id,
            prefetch: sink.prefetch(),
            no_ack: sink.no_ack(),
            priority: consumer.priority,
            exclusive: consumer.exclusive,
            boot: cq.boot,
        };
        let refused = match self.ask(rpc) {
            Ok(RpcAnswer::Done) => None,
            Ok(RpcAnswer::Refused(_, text)) => Some(text),
            Ok(a) => Some(format!("unexpected answer {a:?}")),
            Err(e) => Some(e.text),
        };
        if let Some(why) = refused {
            // consume-ok is sent already: the client hears basic.cancel instead.
            warn!(queue = %self.key.1, home = %self.home, "a consumer of a queue of another node was refused there: {why}");
            cq.following.lock().remove(&consumer.id);
            sink.cancelled_by_broker();
        }
        Ok(())
    }

    fn remove_consumers(&self, ids: &[u64]) {
        let Ok(cq) = self.cq() else { return };
        let gone: Vec<u64> = {
            let mut f = cq.following.lock();
            ids.iter().copied().filter(|id| f.remove(id).is_some()).collect()
        };
        if gone.is_empty() {
            return;
        }
        let home = self.home.clone();
        tokio::spawn(async move {
            if let Err(e) = cq.call(&home, &Rpc::Cancel { consumers: gone }).await {
                debug!(home = %home, "classic queues: a cancel was lost (the home ends the consumers when it finds this node gone): {e}");
            }
        });
    }

    fn settle(&self, msgs: Vec<QueuedMessage>, how: Settle) {
        let Ok(cq) = self.cq() else { return };
        let ids: Vec<u64> = {
            let mut b = cq.borrowed.lock();
            msgs.iter().filter_map(|m| b.remove(&m.seq)).map(|(_, id)| id).collect()
        };
        if ids.is_empty() {
            return;
        }
        let how = match how {
            Settle::Ack => 0,
            Settle::Requeue => 1,
            Settle::Reject => 2,
        };
        // Not awaited (an ack has no answer in AMQP): the home's settler task sends it.
        cq.push_settles(&self.home, ids.into_iter().map(|id| (id, how)));
    }

    fn get(&self, _queue: &Arc<Queue>, no_ack: bool) -> Result<Option<(QueuedMessage, u32)>, AmqpError> {
        let cq = self.cq()?;
        let rpc = Rpc::Get { vhost: self.key.0.clone(), name: self.key.1.clone(), no_ack, boot: cq.boot };
        let Some(mut got) = (match self.ask(rpc)? {
            RpcAnswer::Got(g) => g,
            _ => return Err(AmqpError::new(wire::reply::INTERNAL_ERROR, "unexpected answer to basic.get")),
        }) else {
            return Ok(None);
        };
        let Some(msg) = crate::quorum_queues::decode_message(&bytes::Bytes::from(std::mem::take(&mut got.payload)))
        else {
            return Err(AmqpError::new(wire::reply::INTERNAL_ERROR, "undecodable message from the home node"));
        };
        Ok(Some((cq.lend(self.home.clone(), &got, msg, !no_ack), got.remaining)))
    }

    fn purge(&self) -> Result<usize, AmqpError> {
        match self.ask(Rpc::Purge { vhost: self.key.0.clone(), name: self.key.1.clone() })? {
            RpcAnswer::Purged(n) => Ok(n as usize),
            _ => Err(AmqpError::new(wire::reply::INTERNAL_ERROR, "unexpected answer to queue.purge")),
        }
    }

    fn stats(&self) -> QueueStats {
        self.cq.upgrade().and_then(|cq| cq.remote_stats.lock().get(&self.key).copied()).unwrap_or_else(empty_stats)
    }

    fn declare_stats(&self) -> Result<QueueStats, AmqpError> {
        match self.ask(Rpc::Stats { vhost: self.key.0.clone(), name: self.key.1.clone() })? {
            RpcAnswer::Stats { ready, unacked, consumers } => {
                let s = stats_of(ready, unacked, consumers);
                if let Ok(cq) = self.cq() {
                    cq.remote_stats.lock().insert(self.key.clone(), s);
                }
                Ok(s)
            }
            _ => Err(AmqpError::new(wire::reply::INTERNAL_ERROR, "unexpected answer to queue.declare")),
        }
    }

    fn placement(&self) -> broker::queue::Placement {
        broker::queue::Placement {
            leader: Some(self.home.clone()),
            members: vec![self.home.clone()],
            online: Vec::new(),
            home_only: true,
        }
    }
}

impl ServerState {
    /// queue.delete of a classic queue in the cluster's directory: from its home
    /// (`gone_at_home`, deleted there already) or another node (the home deletes it). A
    /// queue not in the directory (a single node, an exclusive queue) needs nothing.
    pub(crate) fn delete_classic(&self, vhost: &str, name: &str, gone_at_home: bool) -> Result<(), AmqpError> {
        match self.classic.get() {
            Some(c) if c.contains(vhost, name) => c.unregister(vhost, name, gone_at_home),
            _ => Ok(()),
        }
    }
}
