//! The node as the management API sees it: [`mgmt::Node`] over [`ServerState`].

use std::sync::Arc;

use access::definitions::Definitions;
use access::directory::{Change, Directory};
use access::model::User;
use broker::Message;
use broker::VHost;
use broker::queue::PublishOutcome;
use broker::store::{Durability, Settled};
use bytes::Bytes;
use mgmt::node::{
    BoxFuture, CertificateFile, ChannelInfo, ConnectionInfo, ConsumerInfo, ListenerCertificates, ListenerInfo,
    NodeCounters, NodeError, NodeInfo,
};
use std::sync::atomic::Ordering;

use crate::admin::ChangeError;
use crate::quorum_queues::{GrowStrategy, MemberError};
use crate::state::ServerState;

impl From<ChangeError> for NodeError {
    fn from(e: ChangeError) -> NodeError {
        match e {
            ChangeError::Invalid(s) => NodeError::Invalid(s),
            ChangeError::Store(s) => NodeError::Failed(s),
            ChangeError::Unavailable(s) => NodeError::Unavailable(s),
        }
    }
}

fn member_error(e: MemberError) -> NodeError {
    match e {
        MemberError::NotFound(s) => NodeError::NotFound(s),
        MemberError::Invalid(s) => NodeError::Invalid(s),
        MemberError::Unavailable(s) => NodeError::Unavailable(s),
    }
}

impl ServerState {
    /// The node's name as the API and metrics show it: in a cluster its `NAME@HOST:PORT`,
    /// else the configured name or `warren@<hostname>`.
    pub fn node_name(&self) -> String {
        match self.cluster.get() {
            Some(c) => c.node.name().to_owned(),
            None => crate::clustering::node_name(&self.config),
        }
    }

    /// Listeners the node serves, for the API (set by the binary once it has bound them).
    pub fn set_listeners(&self, l: Vec<ListenerInfo>) {
        *self.listeners.lock() = l;
    }
}

impl mgmt::Node for ServerState {
    fn cluster_status(&self) -> BoxFuture<'_, Option<mgmt::node::ClusterStatus>> {
        Box::pin(async move {
            match self.cluster.get() {
                Some(c) => {
                    let mut s = c.status().await;
                    if let Some(qq) = self.quorum.get() {
                        s.queue_groups = qq
                            .group_statuses()
                            .into_iter()
                            .map(|((vhost, name), group, r)| {
                                let (raft, members) = crate::clustering::raft_figures(&r, &s.running);
                                mgmt::node::QueueGroupStatus {
                                    vhost,
                                    name,
                                    group,
                                    leader: r.leader,
                                    raft,
                                    members,
                                    stopped: r.stopped,
                                }
                            })
                            .collect();
                    }
                    Some(s)
                }
                None => None,
            }
        })
    }

    fn cluster_change(&self, node: String, join: bool) -> BoxFuture<'_, Result<(), NodeError>> {
        Box::pin(async move {
            let Some(c) = self.cluster.get() else {
                return Err(NodeError::Invalid("this node is not clustered".into()));
            };
            if cluster::parse_node_name(&node).is_err() {
                return Err(NodeError::Invalid(format!("{node} is not a node name NAME@HOST:PORT")));
            }
            if !join && !c.node.members().contains(&node) {
                return Err(NodeError::NotFound(format!("{node} is not a member of the cluster")));
            }
            let r = if join { c.node.add_member(&node).await } else { c.node.remove_member(&node).await };
            r.map(|_| ()).map_err(|e| NodeError::Failed(e.to_string()))
        })
    }

    fn quorum_member(
        &self,
        vhost: String,
        name: String,
        node: String,
        add: bool,
    ) -> BoxFuture<'_, Result<(), NodeError>> {
        Box::pin(async move {
            let qq = self.quorum.get().ok_or_else(|| NodeError::Invalid("this node is not clustered".into()))?;
            let r = if add {
                qq.add_member(&vhost, &name, &node).await
            } else {
                qq.delete_member(&vhost, &name, &node).await
            };
            r.map(|_| ()).map_err(member_error)
        })
    }

    fn quorum_rebalance(
        &self,
        vhosts: regex::Regex,
        queues: regex::Regex,
    ) -> BoxFuture<'_, Result<Vec<(String, usize)>, NodeError>> {
        Box::pin(async move {
            // A single node leads all its queues: nothing to move.
            let Some(qq) = self.quorum.get() else { return Ok(Vec::new()) };
            qq.rebalance(&vhosts, &queues).await.map_err(member_error)
        })
    }

    fn quorum_regroup(
        &self,
        node: String,
        grow: Option<(bool, regex::Regex, regex::Regex)>,
    ) -> BoxFuture<'_, Result<Vec<mgmt::node::QuorumMemberChange>, NodeError>> {
        Box::pin(async move {
            let qq = self.quorum.get().ok_or_else(|| NodeError::Invalid("this node is not clustered".into()))?;
            let changes = match grow {
                Some((even, vhosts, queues)) => {
                    let strategy = if even { GrowStrategy::Even } else { GrowStrategy::All };
                    qq.grow(&node, strategy, &vhosts, &queues).await.map_err(member_error)?
                }
                None => qq.shrink(&node).await,
            };
            Ok(changes
                .into_iter()
                .map(|c| mgmt::node::QuorumMemberChange {
                    vhost: c.vhost,
                    name: c.name,
                    voters: c.voters,
                    error: c.error,
                })
                .collect())
        })
    }

    fn feature_flags(&self) -> Vec<mgmt::node::FeatureFlagInfo> {
        self.feature_flag_states()
            .into_iter()
            .map(|f| mgmt::node::FeatureFlagInfo {
                name: f.flag.name.to_owned(),
                desc: f.flag.desc.to_owned(),
                stability: f.flag.stability.to_owned(),
                enabled: f.enabled,
            })
            .collect()
    }

    fn enable_feature_flag(&self, name: String) -> BoxFuture<'_, Result<(), NodeError>> {
        Box::pin(async move { ServerState::enable_feature_flag(self, &name).await.map_err(NodeError::from) })
    }

    fn http_max_body_bytes(&self) -> usize {
        usize::try_from(self.config.management_http_max_body_bytes).unwrap_or(usize::MAX)
    }

    fn login_session_timeout_min(&self) -> u64 {
        self.config.management_login_session_timeout_min
    }

    fn memory_breakdown(&self) -> Option<mgmt::node::MemoryBreakdown> {
        let rss_bytes = crate::alarms::rss_bytes()?;
        let message_bytes = self
            .vhosts()
            .iter()
            .flat_map(|vh| vh.queues())
            .map(|q| {
                let s = q.stats();
                s.ready_ram_bytes + s.unacked_bytes
            })
            .sum();
        let conns = self.registry.all();
        let connection_writer_bytes = conns.iter().map(|c| c.details.outbox.held_bytes() as u64).sum();
        let connection_reader_bytes = conns
            .iter()
            .map(|c| c.details.outbox.read_capacity.load(std::sync::atomic::Ordering::Relaxed) as u64)
            .sum();
        Some(mgmt::node::MemoryBreakdown {
            strategy: self.config.memory_strategy.as_str(),
            rss_bytes,
            allocated_bytes: crate::alarms::allocated_bytes().unwrap_or(rss_bytes),
            message_bytes,
            connection_writer_bytes,
            connection_reader_bytes,
        })
    }

    fn info(&self) -> NodeInfo {
        let cfg = &self.config;
        let alarms = *self.alarms.borrow();
        let name = self.node_name();
        NodeInfo {
            cluster_name: self.cluster.get().map_or_else(|| name.clone(), |c| c.cluster_name.clone()),
            name,
            product_version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            os_pid: std::process::id(),
            processors: std::thread::available_parallelism().map_or(1, |n| n.get()),
            listeners: self.listeners.lock().clone(),
            mem_used_bytes: cfg.memory_strategy.used_bytes().unwrap_or(0),
            mem_limit_bytes: self.memory_watermark().unwrap_or(0),
            mem_alarm: alarms.memory,
            disk_free_bytes: crate::alarms::disk_free_bytes(&cfg.data_dir).unwrap_or(0),
            disk_free_limit_bytes: self.disk_free_limit(),
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
                state: if c.blocked.load(Ordering::Relaxed) {
                    "blocked"
                } else if c.in_flow.load(Ordering::Relaxed) {
                    "flow"
                } else {
                    "running"
                }
                .to_owned(),
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
                    state: if conn.in_flow.load(Ordering::Relaxed) { "flow" } else { "running" }.to_owned(),
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

    // --- warrenctl ---------------------------------------------------------------------------
    fn set_memory_high_watermark(&self, bytes: u64) {
        tracing::info!(bytes, "memory high watermark set at runtime");
        *self.memory_watermark_set.lock() = Some(bytes);
        self.check_resources();
    }

    fn set_disk_free_limit(&self, bytes: u64) {
        tracing::info!(bytes, "disk free limit set at runtime");
        *self.disk_free_limit_set.lock() = Some(bytes);
        self.check_resources();
    }

    fn environment(&self) -> serde_json::Value {
        let c = &self.config;
        serde_json::json!({
            "data_dir": c.data_dir.display().to_string(),
            "listeners": {"tcp": c.amqp_listeners.iter().map(|l| format!("{l:?}")).collect::<Vec<_>>(),
                          "ssl": c.amqps_listeners.iter().map(|l| format!("{l:?}")).collect::<Vec<_>>()},
            "management": {"port": c.management_port, "ip": c.management_ip.map(|i| i.to_string())},
            "heartbeat": c.heartbeat_secs,
            "frame_max": c.frame_max,
            "channel_max": c.channel_max,
            "connection_max": c.connection_max,
            "max_message_size": c.max_message_size_bytes,
            "consumer_timeout": c.consumer_timeout.map(|d| d.as_millis() as u64),
            "vm_memory_high_watermark": {"absolute": self.memory_watermark()},
            "disk_free_limit": {"absolute": self.disk_free_limit()},
            "queue_ram_budget": c.queue_ram_budget_bytes,
            "loopback_users": c.loopback_users,
            "default_vhost": c.default_vhost,
            "default_user": c.default_user,
            "load_definitions": c.load_definitions.as_ref().map(|p| p.display().to_string()),
            "queue_max": c.queue_max_count,
            "exchange_max": c.exchange_max_count,
            "binding_max": c.binding_max_count,
        })
    }

    fn total_memory_bytes(&self) -> Option<u64> {
        crate::alarms::total_memory_bytes()
    }

    // ---- Topology group: queues, exchanges, bindings, publish/get, peek, replay ----

    fn publish(
        &self,
        vhost: &str,
        exchange: &str,
        routing_key: &str,
        properties: Bytes,
        body: Bytes,
    ) -> BoxFuture<'_, Result<bool, NodeError>> {
        let enqueued = self.publish_for_api(vhost, exchange, routing_key, properties, body);
        let mut commit = self.commit.clone();
        Box::pin(async move {
            let (routed, durability) = enqueued?;
            // As a confirm would: only once the commit round holding it has fsynced.
            loop {
                let state = *commit.borrow_and_update();
                match durability.settled(state) {
                    Settled::Durable => return Ok(routed),
                    Settled::Failed => {
                        return Err(NodeError::Failed("the message store cannot write to disk".to_owned()));
                    }
                    Settled::Pending => {
                        if commit.changed().await.is_err() {
                            return Err(NodeError::Failed("the node is stopping".to_owned()));
                        }
                    }
                }
            }
        })
    }

    fn declare_queue(
        &self,
        vh: &VHost,
        name: &str,
        opts: broker::queue::QueueOptions,
    ) -> Result<bool, broker::AmqpError> {
        self.declare_replicated_queue(vh, name, &opts)?;
        vh.declare_queue(name, false, opts, mgmt::node::API_CONNECTION).map(|(_, created)| created)
    }

    fn delete_queue(
        &self,
        vh: &VHost,
        queue: &Arc<broker::Queue>,
    ) -> Result<Vec<broker::queue::Consumer>, broker::AmqpError> {
        if self.delete_through_log(&vh.name, queue)? {
            // Applying the entry here cancels its consumers here.
            return Ok(Vec::new());
        }
        let consumers = vh.remove_queue(queue).consumers;
        self.delete_classic(&vh.name, &queue.name, true)?;
        Ok(consumers)
    }

    fn declare_exchange(
        &self,
        vh: &VHost,
        name: &str,
        opts: broker::exchange::ExchangeOptions,
    ) -> Result<(), broker::AmqpError> {
        self.exchange_declare(vh, name, false, opts)
    }

    fn delete_exchange(&self, vh: &VHost, name: &str, if_unused: bool) -> Result<(), broker::AmqpError> {
        self.exchange_delete(vh, name, if_unused)
    }

    fn change_binding(
        &self,
        vh: &VHost,
        source: &str,
        destination: &broker::exchange::Destination,
        routing_key: &str,
        arguments: wire::FieldTable,
        add: bool,
    ) -> Result<(), broker::AmqpError> {
        let b = crate::cluster_topology::BindingSpec {
            source,
            destination: destination.name(),
            to_queue: destination.is_queue(),
            routing_key,
        };
        ServerState::change_binding(self, vh, b, arguments, mgmt::node::API_CONNECTION, add)
    }

    // ---- group "access" ----

    fn connection_max(&self) -> Option<u64> {
        self.access_connection_max()
    }

    fn listener_certificates(&self) -> Vec<ListenerCertificates> {
        self.access_listener_certificates()
    }
}

// ---- group "access": users, vhosts, permissions, policies, limits, definitions, health ----

impl ServerState {
    fn access_connection_max(&self) -> Option<u64> {
        self.config.connection_max.map(|n| n as u64)
    }

    /// The AMQPS listeners with the certificate files they were started with.
    fn access_listener_certificates(&self) -> Vec<ListenerCertificates> {
        let Some(tls) = &self.config.tls else {
            return Vec::new();
        };
        let listeners = self.listeners.lock().clone();
        listeners
            .into_iter()
            .filter(|l| l.protocol == "amqp/ssl")
            .map(|listener| ListenerCertificates {
                listener,
                certfile: certificate_file(&tls.certfile),
                cacertfile: tls.cacertfile.as_deref().map(certificate_file),
            })
            .collect()
    }
}

/// Read `path` for the certificate-expiration check: each certificate's `notAfter`, or
/// RabbitMQ's reason for refusing the file.
fn certificate_file(path: &std::path::Path) -> CertificateFile {
    CertificateFile { path: path.display().to_string(), not_after: not_after_dates(path) }
}

fn not_after_dates(path: &std::path::Path) -> Result<Vec<i64>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let mut dates = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(&bytes) {
        let pem = pem.map_err(|e| format!("{}: {e}", path.display()))?;
        if pem.label != "CERTIFICATE" {
            return Err(format!("The certificate file provided contains a {} entry", pem.label));
        }
        let cert = pem.parse_x509().map_err(|e| format!("{}: {e}", path.display()))?;
        if cert.validity().not_before.timestamp() > now {
            return Err("Certificate is not yet valid".to_owned());
        }
        dates.push(cert.validity().not_after.timestamp());
    }
    if dates.is_empty() {
        return Err("The certificate file provided does not contain any PEM entry.".to_owned());
    }
    Ok(dates)
}

impl ServerState {
    /// The synchronous half of an HTTP publish, on a channel's rules: the message as
    /// basic.publish builds it, routed (delayed exchanges hold it), enqueued in every
    /// queue it reaches. Returns whether it was routed and when it is durable.
    fn publish_for_api(
        &self,
        vhost: &str,
        exchange: &str,
        routing_key: &str,
        properties: Bytes,
        body: Bytes,
    ) -> Result<(bool, Durability), NodeError> {
        let not_found = || NodeError::NotFound(format!("no exchange '{exchange}' in vhost '{vhost}'"));
        let vh = ServerState::vhost(self, vhost).ok_or_else(not_found)?;
        let ex = vh.exchange(exchange).map_err(|_| not_found())?;
        if ex.options.internal {
            return Err(NodeError::Invalid(format!(
                "cannot publish to internal exchange '{exchange}' in vhost '{vhost}'"
            )));
        }
        if body.len() as u64 > self.config.max_message_size_bytes {
            return Err(NodeError::Invalid(format!(
                "message size {} is larger than configured max size {}",
                body.len(),
                self.config.max_message_size_bytes
            )));
        }
        let summary = wire::properties::summarize(&properties).map_err(|e| NodeError::Invalid(e.text))?;
        let expiration_ms = match &summary.expiration {
            None => None,
            Some(e) => Some(e.parse::<u64>().map_err(|_| NodeError::Invalid(format!("invalid expiration '{e}'")))?),
        };
        let msg = Arc::new(Message {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            properties,
            body,
            persistent: summary.delivery_mode == Some(2),
            priority: summary.priority.unwrap_or(0),
            expiration_ms,
        });
        let props = msg.properties.clone();
        let mut headers = || wire::properties::headers_of(&props).ok().flatten();
        if ex.options.delayed {
            let delay = headers().and_then(|h| h.get("x-delay").and_then(wire::FieldValue::as_i64)).unwrap_or(0);
            if delay > 0 {
                let due = broker::clock::Clock::now_ms(&broker::clock::SystemClock).saturating_add(delay as u64);
                let d = self.delay(&vh, &ex, msg, due).map_err(|e| NodeError::Failed(e.0))?;
                return Ok((true, d));
            }
        }
        let mut queues = Vec::new();
        vh.route(&ex, routing_key, &mut headers, &mut queues);
        let (mut routed, mut durability) = (false, Durability::Now);
        for q in &queues {
            match q.publish(msg.clone()) {
                PublishOutcome::Enqueued(d) => {
                    routed = true;
                    durability = durability.max(d);
                }
                PublishOutcome::Rejected => return Err(NodeError::Invalid("rejected".to_owned())),
                PublishOutcome::Failed => {
                    return Err(NodeError::Failed("the message store cannot write to disk".to_owned()));
                }
                // A quorum queue: the management publish does not wait for the cluster.
                PublishOutcome::Replicated(_) => routed = true,
                PublishOutcome::Deleted => {}
            }
        }
        Ok((routed, durability))
    }
}

/// An AMQP field table as JSON (client properties, consumer arguments).
fn table_json(t: &wire::FieldTable) -> serde_json::Value {
    serde_json::Value::Object(access::json_args::table_to_json(t))
}
