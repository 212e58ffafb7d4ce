//! The node as the management API sees it: [`mgmt::Node`] over [`ServerState`].

use std::sync::Arc;

use access::definitions::Definitions;
use access::directory::{Change, Directory};
use access::model::User;
use broker::VHost;
use std::sync::atomic::Ordering;

use mgmt::node::{ChannelInfo, ConnectionInfo, ConsumerInfo, ListenerInfo, NodeCounters, NodeError, NodeInfo};

use crate::admin::ChangeError;
use crate::state::ServerState;

impl From<ChangeError> for NodeError {
    fn from(e: ChangeError) -> NodeError {
        match e {
            ChangeError::Invalid(s) => NodeError::Invalid(s),
            ChangeError::Store(s) => NodeError::Failed(s),
        }
    }
}

/// This host's name, for RabbitMQ-style node names (`warren@host`).
fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".to_owned())
}

impl ServerState {
    /// The node's name as the API and metrics show it.
    pub fn node_name(&self) -> String {
        format!("warren@{}", hostname())
    }

    /// Listeners the node serves, for the API (set by the binary once it has bound them).
    pub fn set_listeners(&self, l: Vec<ListenerInfo>) {
        *self.listeners.lock() = l;
    }
}

impl mgmt::Node for ServerState {
    fn info(&self) -> NodeInfo {
        let cfg = &self.config;
        let total = crate::alarms::total_memory_bytes();
        let alarms = *self.alarms.borrow();
        let name = self.node_name();
        NodeInfo {
            cluster_name: name.clone(),
            name,
            product_version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            os_pid: std::process::id(),
            processors: std::thread::available_parallelism().map_or(1, |n| n.get()),
            listeners: self.listeners.lock().clone(),
            mem_used_bytes: crate::alarms::rss_bytes().unwrap_or(0),
            mem_limit_bytes: cfg.memory_high_watermark_bytes.or(total.map(|t| t / 10 * 6)).unwrap_or(0),
            mem_alarm: alarms.memory,
            disk_free_bytes: crate::alarms::disk_free_bytes(&cfg.data_dir).unwrap_or(0),
            disk_free_limit_bytes: cfg.disk_free_limit_bytes,
            disk_free_alarm: alarms.disk,
            fd_used: crate::fds::open_count().unwrap_or(0),
            fd_total: self.fds.limit(),
            sockets_used: self.connection_count() as u64,
            data_dir: cfg.data_dir.display().to_string(),
            config_files: Vec::new(),
        }
    }

    fn authenticate(&self, user: &str, password: &str) -> Option<User> {
        self.with_access(|d| d.authenticate(user, password).ok().cloned())
    }

    fn directory(&self) -> Directory {
        self.with_access(Directory::clone)
    }

    fn change(&self, c: Change) -> Result<(), NodeError> {
        Ok(self.change_access(c)?)
    }

    fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        ServerState::vhost(self, name)
    }

    fn vhosts(&self) -> Vec<Arc<VHost>> {
        ServerState::vhosts(self)
    }

    fn export_definitions(&self) -> Definitions {
        ServerState::export_definitions(self)
    }

    fn import_definitions(&self, json: &[u8]) -> Result<(), NodeError> {
        Ok(ServerState::import_definitions(self, json)?)
    }

    fn connections(&self) -> Vec<ConnectionInfo> {
        self.registry
            .all()
            .into_iter()
            .map(|c| ConnectionInfo {
                client_properties: table_json(&c.details.client_properties),
                auth_mechanism: c.details.auth_mechanism.clone(),
                frame_max: c.details.frame_max,
                channel_max: c.details.channel_max,
                timeout_s: c.details.heartbeat_secs,
                recv_oct: c.details.outbox.recv_oct.load(Ordering::Relaxed),
                send_oct: c.details.outbox.send_oct.load(Ordering::Relaxed),
                state: if c.blocked.load(Ordering::Relaxed) { "blocked" } else { "running" }.to_owned(),
                name: c.name(),
                user: c.user.clone(),
                vhost: c.vhost.clone(),
                peer_host: c.peer.ip().to_string(),
                peer_port: c.peer.port(),
                host: c.local.map(|l| l.ip().to_string()).unwrap_or_default(),
                port: c.local.map_or(0, |l| l.port()),
                connected_at_ms: c.connected_at_ms,
                channels: c.channel_count(),
                tls: c.tls,
            })
            .collect()
    }

    fn close_connection(&self, name: &str, reason: &str) -> bool {
        // The text is the operator's reason as given (X-Reason), as RabbitMQ sends it.
        self.registry.close_where(|c| c.name() == name, wire::reply::CONNECTION_FORCED, reason) > 0
    }

    // ---- Group "stats": connections, channels, consumers, statistics ----
    fn rates(&self) -> &mgmt::stats::RateDb {
        &self.rates
    }

    fn channels(&self) -> Vec<ChannelInfo> {
        self.registry
            .channels()
            .into_iter()
            .map(|(conn, ch)| {
                let (unacked, global_prefetch) = {
                    let st = ch.state.lock();
                    (st.unacked.len(), st.global_prefetch)
                };
                let meta = ch.meta.lock();
                let consumers = meta
                    .consumers
                    .values()
                    .filter(|m| m.handle.upgrade().is_some_and(|h| !h.cancelled.load(Ordering::Relaxed)))
                    .count();
                ChannelInfo {
                    number: ch.id,
                    connection: conn.name(),
                    peer_host: conn.peer.ip().to_string(),
                    peer_port: conn.peer.port(),
                    user: conn.user.clone(),
                    vhost: conn.vhost.clone(),
                    confirm: meta.confirm,
                    transactional: meta.transactional,
                    prefetch_count: meta.prefetch,
                    global_prefetch_count: global_prefetch,
                    consumer_count: consumers,
                    messages_unacknowledged: unacked,
                    messages_unconfirmed: ch.counters.unconfirmed.load(Ordering::Relaxed) as usize,
                    counts: ch.counters.snapshot(),
                }
            })
            .collect()
    }

    fn consumers(&self) -> Vec<ConsumerInfo> {
        let mut out = Vec::new();
        for (conn, ch) in self.registry.channels() {
            // Copied out first: the meta lock is a leaf, and the queue's lock is taken below.
            let live: Vec<_> = {
                let meta = ch.meta.lock();
                meta.consumers
                    .iter()
                    .filter_map(|(tag, m)| Some((tag.clone(), m.handle.upgrade()?, m.exclusive, m.arguments.clone())))
                    .collect()
            };
            for (tag, h, exclusive, arguments) in live {
                if h.cancelled.load(Ordering::Relaxed) {
                    continue;
                }
                out.push(ConsumerInfo {
                    tag,
                    queue: h.queue.name.clone(),
                    vhost: h.queue.vhost.clone(),
                    channel: ch.id,
                    connection: conn.name(),
                    peer_host: conn.peer.ip().to_string(),
                    peer_port: conn.peer.port(),
                    user: conn.user.clone(),
                    ack_required: !h.no_ack,
                    prefetch_count: h.prefetch,
                    exclusive,
                    arguments: table_json(&arguments),
                    consumer_timeout_ms: h.timeout.map_or(0, |t| t.as_millis() as u64),
                    // A single-active-consumer queue's standby consumers wait.
                    active: h.queue.single_active_consumer_id().is_none_or(|id| id == h.id),
                });
            }
        }
        out
    }

    fn node_counters(&self) -> NodeCounters {
        let (messages, mut churn) = self.registry.totals();
        let (created, deleted) = self.node_limits.queue_churn();
        churn.queue_created = created;
        churn.queue_deleted = deleted;
        churn.queue_declared = self.queue_declared.load(Ordering::Relaxed);
        NodeCounters { messages, churn }
    }
}

/// An AMQP field table as JSON (client properties, consumer arguments).
fn table_json(t: &wire::FieldTable) -> serde_json::Value {
    serde_json::Value::Object(access::json_args::table_to_json(t))
}
