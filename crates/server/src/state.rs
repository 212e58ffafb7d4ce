//! What all connections share: config, users, vhosts, and the shutdown signal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use broker::message::DiskPos;
use broker::{Exchange, Message, Queue, VHost};
use parking_lot::{Mutex, RwLock};
use store::delayed::DelayedLog;
use tokio::sync::watch;

use broker::store::{CommitState, Durability, StoreFailed};
use broker::vhost::Persistence;
use store::StoreConfig;

use access::directory::{Change, Directory};
use tracing::warn;

use crate::admin::StartError;
use crate::alarms::Alarms;
use crate::config::Config;
use crate::persist::DiskPersistence;

pub struct ServerState {
    pub config: Config,
    /// Users, vhosts, permissions, policies and limits. Changed only by
    /// [`ServerState::change_access`].
    pub(crate) access: RwLock<Directory>,
    /// `access`'s version, readable without its lock: connections re-read their grants
    /// when it moves.
    pub(crate) access_version: AtomicU64,
    /// Held while one access change is validated, logged and applied (log order is
    /// apply order).
    pub(crate) access_writer: Mutex<()>,
    /// Compiled grants by (user, vhost) as of one directory version: compiling the three
    /// permission regexes took about a fifth of the broker's CPU in a connection churn.
    pub(crate) grants_cache: Mutex<crate::admin::GrantsCache>,
    /// Logged-in connections (limits; closing those of a deleted vhost or user).
    pub registry: Arc<crate::registry::Registry>,
    pub(crate) vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    /// What new vhosts are built with.
    pub(crate) vhost_persistence: Arc<dyn Persistence>,
    pub(crate) node_limits: Arc<broker::limits::NodeLimits>,
    /// When the node started (uptime).
    pub(crate) started: std::time::Instant,
    /// The node's listeners, as the management API lists them.
    pub(crate) listeners: Mutex<Vec<mgmt::node::ListenerInfo>>,
    /// The node's Raft member when clustering is configured (set once by the binary).
    pub cluster: std::sync::OnceLock<crate::clustering::Running>,
    /// The replicas of this node's quorum queues (clustered nodes only; set before the
    /// Raft member starts, which applies their commands).
    pub(crate) quorum: std::sync::OnceLock<Arc<crate::quorum_queues::QuorumQueues>>,
    /// The cluster's directory of classic queues and the forwarding to their homes
    /// (clustered nodes only; set with `quorum`).
    pub(crate) classic: std::sync::OnceLock<Arc<crate::classic_queues::ClassicQueues>>,
    /// In a cluster: the Raft log index `access` stands at (recovered from the definitions
    /// log, then each applied entry's).
    pub(crate) cluster_applied: AtomicU64,
    /// In a cluster: the feature flags the replicated state has enabled (None: not settled
    /// yet, or not clustered). Only grows ([`crate::feature_flags`]).
    pub(crate) cluster_feature_flags: RwLock<Option<std::collections::BTreeSet<String>>>,
    /// Set once when the node cannot go on (a Raft entry it cannot apply): the binary
    /// shuts down and exits non-zero with this message.
    pub(crate) fatal: watch::Sender<Option<String>>,
    /// Alarm thresholds set at runtime (`warrenctl set_vm_memory_high_watermark`,
    /// `set_disk_free_limit`); they win over the config until the node restarts.
    pub(crate) memory_watermark_set: Mutex<Option<u64>>,
    pub(crate) disk_free_limit_set: Mutex<Option<u64>>,
    next_connection_id: AtomicU64,
    /// Client connections open now (accepted sockets, logged in or not).
    connections: AtomicUsize,
    /// Flips to true when the server shuts down; connections close with 320.
    pub shutdown: watch::Receiver<bool>,
    /// Where the group commit stands (publisher confirms wait on it).
    pub commit: watch::Receiver<CommitState>,
    pub persistence: Option<Arc<DiskPersistence>>,
    /// Direct reply-to: token → the requesting channel's pseudo-queue.
    pub reply_to: Mutex<HashMap<String, Weak<Queue>>>,
    /// Messages held by x-delayed-message exchanges until they are due.
    delayed: Mutex<BinaryHeap<Reverse<Delayed>>>,
    delayed_seq: AtomicU64,
    /// Resource alarms in force; publishing connections block while any is on.
    alarms_tx: watch::Sender<Alarms>,
    pub alarms: watch::Receiver<Alarms>,
    forced_alarms: Mutex<Alarms>,
    /// Admission of new connections against the file-descriptor limit.
    pub fds: crate::fds::FdBudget,
    /// The measured memory and disk alarms (before forced alarms), for their hysteresis.
    memory_over: AtomicBool,
    disk_under: AtomicBool,
    /// queue.declare calls (not passive) since the node started (churn).
    pub(crate) queue_declared: AtomicU64,
    /// Message rates for the management API, filled by its sampler.
    pub(crate) rates: mgmt::stats::RateDb,
}

/// Whether `config` makes the node a cluster member (see `clustering::plan`).
fn state_is_clustered(config: &Config) -> bool {
    !config.cluster_nodes.is_empty() || config.cluster_listen.is_some()
}

/// One open connection in [`ServerState::connection_count`].
pub(crate) struct ConnectionCount(Arc<ServerState>);

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A message waiting in a delayed-message exchange. Ordered by due time, then arrival.
pub struct Delayed {
    due_ms: u64,
    seq: u64,
    vhost: Arc<VHost>,
    exchange: Arc<Exchange>,
    msg: Arc<Message>,
    /// Where a persistent message of a durable exchange is logged (acked once routed).
    logged: Option<(Arc<DelayedLog>, DiskPos)>,
}

impl PartialEq for Delayed {
    fn eq(&self, o: &Self) -> bool {
        (self.due_ms, self.seq) == (o.due_ms, o.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delayed {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due_ms, self.seq).cmp(&(o.due_ms, o.seq))
    }
}

impl ServerState {
    /// A server that keeps everything in RAM (nothing survives it).
    pub fn new(config: Config, shutdown: watch::Receiver<bool>) -> Arc<ServerState> {
        let (_tx, commit) = watch::channel(CommitState::default());
        let state =
            Self::build(config, shutdown, commit, None, Arc::new(broker::vhost::InMemory), Directory::default());
        state.seed_defaults().expect("the default user and vhost are valid");
        state
    }

    /// A server over `config.data_dir`: recovers durable definitions and messages, and
    /// persists from then on.
    pub fn open(config: Config, shutdown: watch::Receiver<bool>) -> Result<Arc<ServerState>, StartError> {
        let (tx, commit) = watch::channel(CommitState::default());
        let store_cfg = StoreConfig { queue_ram_budget_bytes: config.queue_ram_budget_bytes };
        let (p, mut recovery) =
            DiskPersistence::open(&config.data_dir, store_cfg, config.store_open_files_max, move |c| {
                tx.send_replace(c);
            })?;
        let directory = std::mem::take(&mut recovery.access);
        // In a cluster the directory is the Raft group's: the node forming it proposes the
        // defaults (or load_definitions) once, the others receive them (clustering::seed).
        let clustered = state_is_clustered(&config);
        let state = Self::build(config, shutdown, commit, Some(p.clone()), p.clone(), directory);
        state.cluster_applied.store(recovery.cluster_applied, Ordering::Release);
        if !recovery.access_seen && state.config.load_definitions.is_none() && !clustered {
            // A fresh node (or one from before access control): RabbitMQ's default user
            // and vhost. With load_definitions the file says who exists.
            state.seed_defaults()?;
        }
        for v in recovery.topology_vhosts() {
            if state.vhost(&v).is_none() {
                // Its record was lost (damage): keep its queues and their messages.
                warn!("vhost '{v}' has durable definitions but no vhost record: recreating it");
                state.change_access(Change::PutVhost(access::model::Vhost::named(&v)))?;
            }
        }
        p.recover_into(recovery, |name| state.vhost(name));
        state.recover_delayed(&p);
        if let Some(file) = state.config.load_definitions.clone().filter(|_| !clustered) {
            state.import_definitions_file(&file)?;
        }
        Ok(state)
    }

    fn build(
        config: Config,
        shutdown: watch::Receiver<bool>,
        commit: watch::Receiver<CommitState>,
        persistence: Option<Arc<DiskPersistence>>,
        vhost_persistence: Arc<dyn Persistence>,
        directory: Directory,
    ) -> Arc<ServerState> {
        let node = Arc::new(broker::limits::NodeLimits::new(broker::limits::Limits {
            queue_max_count: config.queue_max_count,
            exchange_max_count: config.exchange_max_count,
            binding_max_count: config.binding_max_count,
        }));
        let (alarms_tx, alarms) = watch::channel(Alarms::default());
        let fds = crate::fds::FdBudget::new(crate::fds::nofile_limit(), config.fd_reserve_count);
        let state = Arc::new(ServerState {
            config,
            access_version: AtomicU64::new(directory.version()),
            access: RwLock::new(directory),
            access_writer: Mutex::new(()),
            grants_cache: Mutex::new(crate::admin::GrantsCache::default()),
            registry: Arc::new(crate::registry::Registry::default()),
            vhosts: RwLock::new(HashMap::new()),
            vhost_persistence,
            node_limits: node,
            started: std::time::Instant::now(),
            listeners: Mutex::new(Vec::new()),
            cluster: std::sync::OnceLock::new(),
            quorum: std::sync::OnceLock::new(),
            classic: std::sync::OnceLock::new(),
            cluster_applied: AtomicU64::new(0),
            cluster_feature_flags: RwLock::new(None),
            fatal: watch::channel(None).0,
            memory_watermark_set: Mutex::new(None),
            disk_free_limit_set: Mutex::new(None),
            next_connection_id: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            shutdown,
            commit,
            persistence,
            reply_to: Mutex::new(HashMap::new()),
            delayed: Mutex::new(BinaryHeap::new()),
            delayed_seq: AtomicU64::new(0),
            fds,
            memory_over: AtomicBool::new(false),
            disk_under: AtomicBool::new(false),
            queue_declared: AtomicU64::new(0),
            rates: mgmt::stats::RateDb::default(),
            alarms_tx,
            alarms,
            forced_alarms: Mutex::new(Alarms::default()),
        });
        let names: Vec<String> = state.access.read().vhosts().map(|v| v.name.clone()).collect();
        for v in names {
            state.vhost_created(&v);
        }
        state
    }

    /// Flush everything buffered to disk (at shutdown).
    pub fn sync_and_stop_store(&self) {
        if let Some(p) = &self.persistence {
            p.syncer().shutdown();
        }
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Count a connection as open until the guard is dropped.
    pub(crate) fn connection_opened(self: &Arc<Self>) -> ConnectionCount {
        self.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionCount(self.clone())
    }

    /// Client connections open now, from accept to socket close.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Check a login. Err: why it is refused (for the log; clients get one generic text).
    pub fn authenticate(&self, user: &str, password: &str) -> Result<(), String> {
        match self.access.read().authenticate(user, password) {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Hold `msg` in a delayed-message exchange until `due_ms`. A persistent message in a
    /// durable exchange is logged first; returns when it is durable. If it cannot be
    /// logged it is not held either: the publisher gets a nack, never a confirm.
    pub fn delay(
        &self,
        vhost: &Arc<VHost>,
        exchange: &Arc<Exchange>,
        msg: Arc<Message>,
        due_ms: u64,
    ) -> Result<Durability, StoreFailed> {
        let seq = self.delayed_seq.fetch_add(1, Ordering::Relaxed);
        let mut durability = Durability::Now;
        let mut logged = None;
        if exchange.options.durable
            && msg.persistent
            && let Some(p) = &self.persistence
        {
            let log = p.delayed_log(&vhost.name, &exchange.name).map_err(|e| StoreFailed(e.to_string()))?.0;
            let (pos, d) = log.append(seq, due_ms, &msg).map_err(|e| {
                tracing::error!("logging a delayed message of exchange '{}': {e}", exchange.name);
                StoreFailed(format!("cannot log the delayed message: {e}"))
            })?;
            durability = d;
            logged = Some((log, pos));
        }
        let d = Delayed { due_ms, seq, vhost: vhost.clone(), exchange: exchange.clone(), msg, logged };
        self.delayed.lock().push(Reverse(d));
        Ok(durability)
    }

    /// At start: schedule again what durable delayed exchanges held, and drop the logs of
    /// exchanges that are gone.
    fn recover_delayed(&self, p: &DiskPersistence) {
        let mut live = Vec::new();
        let mut n = 0usize;
        for vh in self.vhosts() {
            for ex in vh.exchanges().into_iter().filter(|e| e.options.delayed && e.options.durable) {
                live.push((vh.name.clone(), ex.name.clone()));
                let Ok((log, held)) = p.delayed_log(&vh.name, &ex.name) else { continue };
                for h in held {
                    n += 1;
                    self.delayed_seq.fetch_max(h.seq + 1, Ordering::Relaxed);
                    let d = Delayed {
                        due_ms: h.due_ms,
                        seq: h.seq,
                        vhost: vh.clone(),
                        exchange: ex.clone(),
                        msg: Arc::new(h.msg),
                        logged: Some((log.clone(), h.pos)),
                    };
                    self.delayed.lock().push(Reverse(d));
                }
            }
        }
        p.remove_orphaned_delayed_logs(&live);
        if n > 0 {
            tracing::info!(messages = n, "recovered delayed messages");
        }
    }

    /// Route every delayed message that is due (exchanges deleted meanwhile drop theirs).
    pub fn fire_delayed(&self, now_ms: u64) {
        loop {
            let d = {
                let mut heap = self.delayed.lock();
                match heap.peek() {
                    Some(Reverse(d)) if d.due_ms <= now_ms => heap.pop().map(|Reverse(d)| d),
                    _ => None,
                }
            };
            let Some(d) = d else { return };
            if d.vhost.exchange(&d.exchange.name).is_ok_and(|e| Arc::ptr_eq(&e, &d.exchange)) {
                let mut queues = Vec::new();
                let props = d.msg.properties.clone();
                let mut headers = || wire::properties::headers_of(&props).ok().flatten();
                d.vhost.route(&d.exchange, &d.msg.routing_key, &mut headers, &mut queues);
                for q in queues {
                    q.publish(d.msg.clone());
                }
            }
            if let Some((log, pos)) = &d.logged {
                log.ack(*pos);
            }
        }
    }

    /// Force alarms on regardless of measurements (tests, operators); `Alarms::default()`
    /// lifts the forcing. Takes effect at once.
    pub fn force_alarms(&self, a: Alarms) {
        *self.forced_alarms.lock() = a;
        self.check_resources();
    }

    /// Set the alarms (the monitor does). Logs changes.
    fn set_alarms(&self, a: Alarms) {
        self.alarms_tx.send_if_modified(|cur| {
            if *cur == a {
                return false;
            }
            if a.memory != cur.memory {
                tracing::warn!(on = a.memory, "memory resource alarm");
            }
            if a.disk != cur.disk {
                tracing::warn!(on = a.disk, "disk resource alarm");
            }
            *cur = a;
            true
        });
    }

    /// The memory alarm threshold in force (bytes, measured by `config.memory_strategy`).
    pub fn memory_watermark(&self) -> Option<u64> {
        let set = *self.memory_watermark_set.lock();
        set.or(self.config.memory_high_watermark_bytes)
            .or_else(|| crate::alarms::total_memory_bytes().map(|t| t / 10 * 6))
    }

    /// The disk alarm limit in force (free bytes).
    pub fn disk_free_limit(&self) -> u64 {
        self.disk_free_limit_set.lock().unwrap_or(self.config.disk_free_limit_bytes)
    }

    /// Measure memory and disk against the limits and set the alarms.
    pub fn check_resources(&self) {
        /// Free memory the allocator may keep for reuse before the housekeeping hands it
        /// back (a quarter of the watermark if that is less).
        const RELEASE_SLACK_MAX_BYTES: u64 = 64 << 20;
        self.fds.recount();
        let cfg = &self.config;
        let watermark = self.memory_watermark();
        // Hysteresis: on above the watermark, off only below 90 % of it, so a node
        // hovering at the line does not flap publishers between blocked and unblocked.
        let was_on = self.memory_over.load(Ordering::Relaxed);
        // Once a second, what was freed goes back to the system: RSS is what the operator
        // (and the alarm, with the `rss` strategy) sees, and the allocator would otherwise
        // keep it while the broker is quiet (so an RSS alarm could never clear). Only when
        // the allocator keeps more than a little, though: a busy broker reuses its free
        // pages at once, and handing them back every second made it fault them straight in
        // again — the kernel zeroing each, 2 MiB at a time with transparent huge pages,
        // was a third of a quorum-queue node's CPU.
        let slack = watermark.map_or(RELEASE_SLACK_MAX_BYTES, |w| (w / 4).min(RELEASE_SLACK_MAX_BYTES));
        match (crate::alarms::rss_bytes(), crate::alarms::allocated_bytes()) {
            (Some(rss), Some(allocated)) if rss.saturating_sub(allocated) <= slack => {}
            _ => crate::alarms::release_memory(),
        }
        let memory = match (cfg.memory_strategy.used_bytes(), watermark) {
            (Some(r), Some(w)) if was_on => r > w / 10 * 9,
            (Some(r), Some(w)) => r > w,
            _ => false,
        };
        self.memory_over.store(memory, Ordering::Relaxed);
        // The disk alarm clears only with 10 % to spare over the limit: segment files come
        // and go in 8 MiB steps, and the alarm should not flap with them.
        let disk_was_on = self.disk_under.load(Ordering::Relaxed);
        let limit = self.disk_free_limit();
        let disk = crate::alarms::disk_free_bytes(&cfg.data_dir)
            .is_some_and(|f| if disk_was_on { f < limit.saturating_add(limit / 10) } else { f < limit });
        self.disk_under.store(disk, Ordering::Relaxed);
        let forced = *self.forced_alarms.lock();
        self.set_alarms(Alarms { memory: memory || forced.memory, disk: disk || forced.disk });
    }

    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        self.vhosts.read().values().cloned().collect()
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.read().get(name).cloned()
    }
}
