//! Prometheus metrics in rabbitmq_prometheus's names and labels (so its Grafana
//! dashboards, e.g. "RabbitMQ-Overview" 10991, work unchanged), text format 0.0.4,
//! unauthenticated, on their own port (15692 by default).
//!
//! - `/metrics`: aggregated, one series per name whatever the number of objects.
//! - `/metrics/per-object`: per queue, channel and connection, labelled with `vhost`,
//!   `queue`, `channel`, `connection`. Costs a walk of every object.
//!
//! Counters are read on scrape; nothing is kept between scrapes.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::node::{ClusterStatus, MESSAGE_SIZE_BUCKETS, Node};
use access::definitions::RABBITMQ_COMPAT_VERSION as RABBITMQ_VERSION;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Label set of the global counters (this node speaks only AMQP 0-9-1).
const PROTOCOL: &[(&str, &str)] = &[("protocol", "amqp091")];
/// Delivery counters also name the queue type (classic is the only one that delivers
/// through channels here).
const PROTOCOL_QTYPE: &[(&str, &str)] = &[("protocol", "amqp091"), ("queue_type", "rabbit_classic_queue")];

/// Builds the text: each metric family's `# HELP` and `# TYPE` once, then its samples.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Exposition {
    /// Start a family: `kind` is gauge, counter or histogram.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {v}");
        self
    }

    /// A family with one sample.
    pub fn one(&mut self, name: &str, kind: &str, help: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) {
        self.family(name, kind, help).sample(name, labels, v);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn b(v: bool) -> u8 {
    u8::from(v)
}

/// The label RabbitMQ-named raft series carry for Warren's metadata group (RabbitMQ
/// labels a quorum queue's with `vhost` and `queue`; the group is neither).
const RAFT_CLUSTER: &[(&str, &str)] = &[("raft_cluster", "warren_meta")];

/// The metadata group on a clustered node: RabbitMQ's `rabbitmq_raft_*` names for this
/// node's term and log positions, and Warren's own `warren_cluster_*` for membership and,
/// on the leader, each follower's lag. `per_object`: each quorum queue's own group too, in
/// the same `rabbitmq_raft_*` families labelled `vhost` and `queue` as RabbitMQ labels
/// them (the aggregated endpoint has only counts and sums of the groups, which do not
/// grow with the number of queues).
fn cluster_metrics(s: &ClusterStatus, x: &mut Exposition, per_object: bool) {
    type Pick = fn(&crate::node::RaftFigures) -> u64;
    let raft_families: [(&str, &str, &str, Pick); 5] = [
        ("rabbitmq_raft_term_total", "counter", "Current Raft term number", |r| r.term),
        ("rabbitmq_raft_log_snapshot_index", "gauge", "Raft log snapshot index", |r| r.snapshot_index),
        ("rabbitmq_raft_log_last_applied_index", "gauge", "Raft log last applied index", |r| r.last_applied_index),
        ("rabbitmq_raft_log_commit_index", "gauge", "Raft log commit index", |r| r.commit_index),
        ("rabbitmq_raft_log_last_written_index", "gauge", "Raft log last written index", |r| r.last_written_index),
    ];
    for (name, kind, help, pick) in raft_families {
        x.family(name, kind, help).sample(name, RAFT_CLUSTER, pick(&s.raft));
        if per_object {
            for g in &s.queue_groups {
                x.sample(name, &[("vhost", &g.vhost), ("queue", &g.name)], pick(&g.raft));
            }
        }
    }
    // As RabbitMQ: a gauge of the last entry's latency, on the leader (0 on a follower).
    let name = "rabbitmq_raft_entry_commit_latency_seconds";
    let seconds = |r: &crate::node::RaftFigures| r.commit_latency_us as f64 / 1e6;
    x.family(name, "gauge", "Time taken for a log entry to be committed").sample(name, RAFT_CLUSTER, seconds(&s.raft));
    if per_object {
        for g in &s.queue_groups {
            x.sample(name, &[("vhost", &g.vhost), ("queue", &g.name)], seconds(&g.raft));
        }
    }
    let groups = &s.queue_groups;
    x.one(
        "warren_quorum_queue_groups",
        "gauge",
        "Quorum queues' own Raft groups open on this node (voter or learner)",
        &[],
        groups.len(),
    );
    x.one(
        "warren_quorum_queue_groups_led",
        "gauge",
        "Quorum queues' groups this node leads",
        &[],
        groups.iter().filter(|g| g.raft.is_leader).count(),
    );
    x.one(
        "warren_quorum_queue_groups_stopped",
        "gauge",
        "Quorum queues' groups whose Raft core stopped on this node on a fatal error (e.g. a full disk)",
        &[],
        groups.iter().filter(|g| g.stopped.is_some()).count(),
    );
    x.one(
        "warren_quorum_queue_log_bytes",
        "gauge",
        "Bytes of commands all quorum queues' group logs hold on this node until snapshots cover them",
        &[],
        groups.iter().map(|g| g.raft.log_bytes).sum::<u64>(),
    );
    if per_object {
        let name = "warren_quorum_queue_follower_lag_entries";
        x.family(
            name,
            "gauge",
            "Log entries a queue's group member lacks, as the group's leader knows it (leader only)",
        );
        for g in groups {
            for m in g.members.iter().filter(|m| m.name != s.node) {
                if let Some(rep) = m.replication {
                    x.sample(name, &[("vhost", &g.vhost), ("queue", &g.name), ("peer", &m.name)], rep.lag_entries);
                }
            }
        }
    }
    x.one(
        "warren_cluster_members",
        "gauge",
        "Members of the metadata group (voters and learners)",
        &[],
        s.members.len(),
    );
    x.one(
        "warren_cluster_running_members",
        "gauge",
        "Members answering over the inter-node link from this node, itself included",
        &[],
        s.running.len(),
    );
    x.one("warren_cluster_is_leader", "gauge", "1 if this node leads the metadata group", &[], b(s.raft.is_leader));
    x.one(
        "warren_cluster_raft_running",
        "gauge",
        "0 once this node's Raft core stopped on a fatal error (e.g. a full disk) until it restarts",
        &[],
        b(s.raft_stopped.is_none()),
    );
    x.one(
        "warren_cluster_log_bytes",
        "gauge",
        "Bytes of commands the Raft log holds until a snapshot covers them",
        &[],
        s.raft.log_bytes,
    );
    // Only the leader tracks replication; a follower has no samples (not zeros it cannot know).
    let name = "warren_cluster_follower_lag_entries";
    x.family(name, "gauge", "Log entries a member lacks, as the leader knows it (leader only)");
    for m in s.member_details.iter().filter(|m| m.name != s.node) {
        if let Some(rep) = m.replication {
            x.sample(name, &[("peer", &m.name)], rep.lag_entries);
        }
    }
}

/// The identity and node-wide series both endpoints carry (and `cluster`'s, when clustered).
fn node_metrics(node: &dyn Node, cluster: Option<&ClusterStatus>, x: &mut Exposition, endpoint: &str) {
    if let Some(c) = cluster {
        cluster_metrics(c, x, endpoint == "per-object");
    }
    let info = node.info();
    x.one(
        "rabbitmq_identity_info",
        "gauge",
        "RabbitMQ node & cluster identity info",
        &[
            ("rabbitmq_node", &info.name),
            ("rabbitmq_cluster", &info.cluster_name),
            ("rabbitmq_cluster_permanent_id", &info.cluster_name),
            ("rabbitmq_endpoint", endpoint),
        ],
        1,
    );
    x.one(
        "rabbitmq_build_info",
        "untyped",
        "RabbitMQ & Erlang/OTP version info",
        &[
            ("rabbitmq_version", RABBITMQ_VERSION),
            ("prometheus_plugin_version", RABBITMQ_VERSION),
            ("prometheus_client_version", "none"),
            ("erlang_version", "none"),
            ("product_name", "Warren"),
            ("product_version", &info.product_version),
        ],
        1,
    );
    let uptime_s = info.uptime_ms as f64 / 1000.0;
    x.one("rabbitmq_erlang_uptime_seconds", "gauge", "Node uptime", &[], uptime_s);
    x.one("rabbitmq_process_open_fds", "gauge", "Open file descriptors", &[], info.fd_used);
    x.one("rabbitmq_process_max_fds", "gauge", "Open file descriptors limit", &[], info.fd_total);
    x.one("rabbitmq_process_open_tcp_sockets", "gauge", "Open TCP sockets", &[], info.sockets_used);
    x.one("rabbitmq_process_resident_memory_bytes", "gauge", "Memory used in bytes", &[], info.mem_used_bytes);
    x.one("rabbitmq_resident_memory_limit_bytes", "gauge", "Memory high watermark in bytes", &[], info.mem_limit_bytes);
    x.one("rabbitmq_disk_space_available_bytes", "gauge", "Disk space available in bytes", &[], info.disk_free_bytes);
    x.one(
        "rabbitmq_disk_space_available_limit_bytes",
        "gauge",
        "Free disk space low watermark in bytes",
        &[],
        info.disk_free_limit_bytes,
    );
    x.one(
        "rabbitmq_alarms_memory_used_watermark",
        "gauge",
        "is 1 if VM memory watermark alarm is in effect",
        &[],
        b(info.mem_alarm),
    );
    x.one(
        "rabbitmq_alarms_free_disk_space_watermark",
        "gauge",
        "is 1 if free disk space watermark alarm is in effect",
        &[],
        b(info.disk_free_alarm),
    );
    x.one(
        "rabbitmq_alarms_file_descriptor_limit",
        "gauge",
        "is 1 if file descriptor limit alarm is in effect",
        &[],
        b(info.fd_total > 0 && info.fd_used >= info.fd_total),
    );

    let conns = node.connections();
    let channels = node.channels();
    let consumers = node.consumers();
    let (mut queues, mut ready, mut unacked, mut queue_consumers, mut publishers) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for vh in node.vhosts() {
        for q in vh.queues() {
            queues += 1;
            let s = q.stats();
            ready += s.messages_ready;
            unacked += s.messages_unacked;
            queue_consumers += u64::from(s.consumers);
        }
    }
    for ch in &channels {
        if ch.counts.publish > 0 {
            publishers += 1;
        }
    }
    x.one("rabbitmq_connections", "gauge", "Connections currently open", &[], conns.len());
    x.one("rabbitmq_channels", "gauge", "Channels currently open", &[], channels.len());
    x.one("rabbitmq_consumers", "gauge", "Consumers currently connected", &[], consumers.len());
    x.one("rabbitmq_queues", "gauge", "Queues available", &[], queues);
    x.one("rabbitmq_global_consumers", "gauge", "Current number of consumers", PROTOCOL, consumers.len());
    x.one(
        "rabbitmq_global_publishers",
        "gauge",
        "Current number of publishers (channels that have published)",
        PROTOCOL,
        publishers,
    );
    if endpoint == "aggregated" {
        x.one("rabbitmq_queue_messages_ready", "gauge", "Messages ready to be delivered to consumers", &[], ready);
        x.one(
            "rabbitmq_queue_messages_unacked",
            "gauge",
            "Messages delivered to consumers but not yet acknowledged",
            &[],
            unacked,
        );
        x.one("rabbitmq_queue_messages", "gauge", "Sum of ready and unacknowledged messages", &[], ready + unacked);
        x.one("rabbitmq_queue_consumers", "gauge", "Consumers on a queue", &[], queue_consumers);
    }

    let t = node.node_counters();
    let m = &t.messages;
    /// (name suffix, help, labels, value).
    type Global<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], u64);
    let counters: [Global; 14] = [
        ("received_total", "Total number of messages received from publishers", PROTOCOL, m.publish),
        (
            "received_confirm_total",
            "Total number of messages received from publishers expecting confirmations",
            PROTOCOL,
            m.publish_confirm,
        ),
        ("routed_total", "Total number of messages routed to queues or streams", PROTOCOL, m.routed),
        (
            "unroutable_dropped_total",
            "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
            PROTOCOL,
            m.drop_unroutable,
        ),
        (
            "unroutable_returned_total",
            "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
            PROTOCOL,
            m.return_unroutable,
        ),
        ("confirmed_total", "Total number of messages confirmed to publishers", PROTOCOL, m.confirm),
        ("delivered_total", "Total number of messages delivered to consumers", PROTOCOL_QTYPE, m.deliver_get()),
        (
            "delivered_consume_manual_ack_total",
            "Total number of messages delivered to consumers using basic.consume with manual acknowledgment",
            PROTOCOL_QTYPE,
            m.deliver,
        ),
        (
            "delivered_consume_auto_ack_total",
            "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment",
            PROTOCOL_QTYPE,
            m.deliver_no_ack,
        ),
        (
            "delivered_get_manual_ack_total",
            "Total number of messages delivered to consumers using basic.get with manual acknowledgment",
            PROTOCOL_QTYPE,
            m.get,
        ),
        (
            "delivered_get_auto_ack_total",
            "Total number of messages delivered to consumers using basic.get with automatic acknowledgment",
            PROTOCOL_QTYPE,
            m.get_no_ack,
        ),
        (
            "get_empty_total",
            "Total number of times basic.get operations fetched no message",
            PROTOCOL_QTYPE,
            m.get_empty,
        ),
        ("redelivered_total", "Total number of messages redelivered to consumers", PROTOCOL_QTYPE, m.redeliver),
        ("acknowledged_total", "Total number of messages acknowledged by consumers", PROTOCOL_QTYPE, m.ack),
    ];
    for (suffix, help, labels, v) in counters {
        x.one(&format!("rabbitmq_global_messages_{suffix}"), "counter", help, labels, v);
    }
    let c = &t.churn;
    let churn: [(&str, &str, u64); 7] = [
        ("rabbitmq_connections_opened_total", "Total number of connections opened", c.connection_created),
        ("rabbitmq_connections_closed_total", "Total number of connections closed or terminated", c.connection_closed),
        ("rabbitmq_channels_opened_total", "Total number of channels opened", c.channel_created),
        ("rabbitmq_channels_closed_total", "Total number of channels closed", c.channel_closed),
        ("rabbitmq_queues_declared_total", "Total number of queues declared", c.queue_declared),
        ("rabbitmq_queues_created_total", "Total number of queues created", c.queue_created),
        ("rabbitmq_queues_deleted_total", "Total number of queues deleted", c.queue_deleted),
    ];
    for (name, help, v) in churn {
        x.one(name, "counter", help, &[], v);
    }
    // The message size histogram: cumulative buckets.
    let name = "rabbitmq_message_size_bytes";
    x.family(name, "histogram", "Size of messages received from publishers");
    let mut cumulative = 0u64;
    for (i, bound) in MESSAGE_SIZE_BUCKETS.iter().enumerate() {
        cumulative += m.size_buckets[i];
        let le = bound.to_string();
        x.sample(&format!("{name}_bucket"), &[("protocol", "amqp091"), ("le", &le)], cumulative);
    }
    x.sample(&format!("{name}_bucket"), &[("protocol", "amqp091"), ("le", "+Inf")], m.publish);
    x.sample(&format!("{name}_sum"), PROTOCOL, m.size_sum);
    x.sample(&format!("{name}_count"), PROTOCOL, m.publish);
}

/// `/metrics`: aggregated. `cluster`: the node's cluster status, when clustered.
pub fn aggregated(node: &dyn Node, cluster: Option<&ClusterStatus>) -> String {
    let mut x = Exposition::default();
    node_metrics(node, cluster, &mut x, "aggregated");
    x.finish()
}

/// `/metrics/per-object`: the node's series plus one per queue, channel and connection.
pub fn per_object(node: &dyn Node, cluster: Option<&ClusterStatus>) -> String {
    let mut x = Exposition::default();
    node_metrics(node, cluster, &mut x, "per-object");
    let mut rows: Vec<(String, String, broker::queue::QueueStats, broker::counters::QueueCounts)> = Vec::new();
    for vh in node.vhosts() {
        for q in vh.queues() {
            rows.push((vh.name.clone(), q.name.clone(), q.stats(), q.counters.snapshot()));
        }
    }
    type Pick = fn(&broker::queue::QueueStats, &broker::counters::QueueCounts) -> u64;
    let queue_families: [(&str, &str, &str, Pick); 10] = [
        ("rabbitmq_queue_messages_ready", "gauge", "Messages ready to be delivered to consumers", |s, _| {
            s.messages_ready
        }),
        (
            "rabbitmq_queue_messages_unacked",
            "gauge",
            "Messages delivered to consumers but not yet acknowledged",
            |s, _| s.messages_unacked,
        ),
        ("rabbitmq_queue_messages", "gauge", "Sum of ready and unacknowledged messages", |s, _| {
            s.messages_ready + s.messages_unacked
        }),
        ("rabbitmq_queue_messages_ready_bytes", "gauge", "Size in bytes of ready messages", |s, _| s.ready_bytes),
        (
            "rabbitmq_queue_messages_unacked_bytes",
            "gauge",
            "Size in bytes of all the unacknowledged messages",
            |s, _| s.unacked_bytes,
        ),
        ("rabbitmq_queue_messages_bytes", "gauge", "Size in bytes of ready and unacknowledged messages", |s, _| {
            s.ready_bytes + s.unacked_bytes
        }),
        ("rabbitmq_queue_consumers", "gauge", "Consumers on a queue", |s, _| u64::from(s.consumers)),
        (
            "rabbitmq_queue_messages_published_total",
            "counter",
            "Total number of messages published to queues",
            |_, c| c.publish,
        ),
        (
            "rabbitmq_queue_messages_delivered_total",
            "counter",
            "Total number of messages delivered from queues",
            |_, c| c.deliver_get(),
        ),
        ("rabbitmq_queue_messages_acked_total", "counter", "Total number of messages acknowledged", |_, c| c.ack),
    ];
    for (name, kind, help, pick) in queue_families {
        x.family(name, kind, help);
        for (vhost, queue, s, c) in &rows {
            x.sample(name, &[("vhost", vhost), ("queue", queue)], pick(s, c));
        }
    }
    let channels = node.channels();
    type ChanPick = fn(&crate::node::ChannelCounts) -> u64;
    let channel_families: [(&str, &str, ChanPick); 5] = [
        (
            "rabbitmq_channel_messages_published_total",
            "Total number of messages published into an exchange on a channel",
            |c| c.publish,
        ),
        (
            "rabbitmq_channel_messages_confirmed_total",
            "Total number of messages published into an exchange and confirmed on the channel",
            |c| c.confirm,
        ),
        (
            "rabbitmq_channel_messages_unroutable_dropped_total",
            "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
            |c| c.drop_unroutable,
        ),
        ("rabbitmq_channel_messages_delivered_total", "Total number of messages delivered to consumers", |c| {
            c.deliver_get()
        }),
        ("rabbitmq_channel_messages_acked_total", "Total number of messages acknowledged by consumers", |c| c.ack),
    ];
    for (name, help, pick) in channel_families {
        x.family(name, "counter", help);
        for ch in &channels {
            x.sample(name, &[("channel", &ch.name())], pick(&ch.counts));
        }
    }
    let conns = node.connections();
    x.family("rabbitmq_connection_incoming_bytes_total", "counter", "Total number of bytes received on a connection");
    for c in &conns {
        x.sample("rabbitmq_connection_incoming_bytes_total", &[("connection", &c.name)], c.recv_oct);
    }
    x.family("rabbitmq_connection_outgoing_bytes_total", "counter", "Total number of bytes sent on a connection");
    for c in &conns {
        x.sample("rabbitmq_connection_outgoing_bytes_total", &[("connection", &c.name)], c.send_oct);
    }
    x.family("rabbitmq_connection_channels", "gauge", "Channels on a connection");
    for c in &conns {
        x.sample("rabbitmq_connection_channels", &[("connection", &c.name)], c.channels);
    }
    x.finish()
}

fn text(body: String) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body)
}

/// The metrics routes (no authentication, as rabbitmq_prometheus by default).
pub fn router(node: Arc<dyn Node>) -> Router {
    // Scrapes walk every queue: off the async workers. The cluster status is read first
    // (it pings the other members, an async wait of at most a second).
    async fn run(node: Arc<dyn Node>, f: fn(&dyn Node, Option<&ClusterStatus>) -> String) -> String {
        let cluster = node.cluster_status().await;
        tokio::task::spawn_blocking(move || f(&*node, cluster.as_ref())).await.unwrap_or_default()
    }
    Router::new()
        .route("/metrics", get(|State(n): State<Arc<dyn Node>>| async move { text(run(n, aggregated).await) }))
        .route(
            "/metrics/per-object",
            get(|State(n): State<Arc<dyn Node>>| async move { text(run(n, per_object).await) }),
        )
        .with_state(node)
}

/// Serve the metrics on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<dyn Node>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(node)).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_families_typed() {
        let mut x = Exposition::default();
        x.one("m", "gauge", "help", &[("a", "x\"y\\z\nw")], 3);
        assert_eq!(x.finish(), "# HELP m help\n# TYPE m gauge\nm{a=\"x\\\"y\\\\z\\nw\"} 3\n");
    }

    fn status(is_leader: bool) -> ClusterStatus {
        use crate::node::{ClusterMember, MemberReplication, RaftFigures};
        let rep = |lag| is_leader.then_some(MemberReplication { matched_index: Some(9 - lag), lag_entries: lag });
        ClusterStatus {
            node: "a@h:1".into(),
            members: vec!["a@h:1".into(), "b@h:2".into(), "c@h:3".into()],
            running: vec!["a@h:1".into(), "b@h:2".into()],
            raft: RaftFigures {
                term: 4,
                is_leader,
                last_written_index: 9,
                commit_index: 9,
                last_applied_index: 8,
                snapshot_index: 0,
                log_bytes: 4096,
                commit_latency_us: if is_leader { 2500 } else { 0 },
            },
            member_details: [("a@h:1", 0), ("b@h:2", 0), ("c@h:3", 3)]
                .into_iter()
                .map(|(n, lag)| ClusterMember {
                    name: n.into(),
                    voter: true,
                    running: n != "c@h:3",
                    replication: rep(lag),
                })
                .collect(),
            ..ClusterStatus::default()
        }
    }

    #[test]
    fn queue_groups_are_labelled_per_queue_only_per_object_and_counted_in_both() {
        use crate::node::{ClusterMember, MemberReplication, QueueGroupStatus, RaftFigures};
        let group = |name: &str, led: bool, stopped: Option<&str>| QueueGroupStatus {
            vhost: "/".into(),
            name: name.into(),
            group: 7,
            leader: Some(if led { "a@h:1" } else { "b@h:2" }.into()),
            raft: RaftFigures {
                term: 2,
                is_leader: led,
                commit_index: 40,
                log_bytes: 1000,
                commit_latency_us: if led { 1_234 } else { 0 },
                ..RaftFigures::default()
            },
            members: ["a@h:1", "b@h:2"]
                .into_iter()
                .map(|n| ClusterMember {
                    name: n.into(),
                    voter: true,
                    running: true,
                    replication: led.then_some(MemberReplication { matched_index: Some(35), lag_entries: 5 }),
                })
                .collect(),
            stopped: stopped.map(str::to_owned),
        };
        let s = ClusterStatus {
            queue_groups: vec![group("q1", true, None), group("q\"2", false, Some("disk full"))],
            ..status(true)
        };
        let mut x = Exposition::default();
        cluster_metrics(&s, &mut x, true);
        let t = x.finish();
        for line in [
            "rabbitmq_raft_log_commit_index{raft_cluster=\"warren_meta\"} 9\n",
            "rabbitmq_raft_log_commit_index{vhost=\"/\",queue=\"q1\"} 40\n",
            "rabbitmq_raft_term_total{vhost=\"/\",queue=\"q\\\"2\"} 2\n",
            "rabbitmq_raft_entry_commit_latency_seconds{raft_cluster=\"warren_meta\"} 0.0025\n",
            "rabbitmq_raft_entry_commit_latency_seconds{vhost=\"/\",queue=\"q1\"} 0.001234\n",
            "rabbitmq_raft_entry_commit_latency_seconds{vhost=\"/\",queue=\"q\\\"2\"} 0\n",
            "warren_quorum_queue_groups 2\n",
            "warren_quorum_queue_groups_led 1\n",
            "warren_quorum_queue_groups_stopped 1\n",
            "warren_quorum_queue_log_bytes 2000\n",
            "warren_quorum_queue_follower_lag_entries{vhost=\"/\",queue=\"q1\",peer=\"b@h:2\"} 5\n",
        ] {
            assert!(t.contains(line), "{line:?} missing from\n{t}");
        }
        // One HELP/TYPE per family: the queues' samples follow the metadata group's.
        assert_eq!(t.matches("# TYPE rabbitmq_raft_log_commit_index ").count(), 1);
        assert_eq!(t.matches("# TYPE rabbitmq_raft_entry_commit_latency_seconds gauge\n").count(), 1);
        assert!(!t.contains("queue=\"q\\\"2\",peer"), "a follower knows no lag");
        let mut x = Exposition::default();
        cluster_metrics(&s, &mut x, false);
        let t = x.finish();
        assert!(!t.contains("queue=\""), "the aggregated endpoint has no per-queue series:\n{t}");
        assert!(t.contains("warren_quorum_queue_groups 2\n") && t.contains("warren_quorum_queue_log_bytes 2000\n"));
    }

    #[test]
    fn cluster_series_follower_lag_only_on_the_leader() {
        let mut x = Exposition::default();
        cluster_metrics(&status(true), &mut x, false);
        let t = x.finish();
        for line in [
            "rabbitmq_raft_term_total{raft_cluster=\"warren_meta\"} 4\n",
            "rabbitmq_raft_log_commit_index{raft_cluster=\"warren_meta\"} 9\n",
            "rabbitmq_raft_log_last_applied_index{raft_cluster=\"warren_meta\"} 8\n",
            "warren_cluster_members 3\n",
            "warren_cluster_running_members 2\n",
            "warren_cluster_is_leader 1\n",
            "warren_cluster_log_bytes 4096\n",
            "warren_cluster_raft_running 1\n",
            "warren_cluster_follower_lag_entries{peer=\"b@h:2\"} 0\n",
            "warren_cluster_follower_lag_entries{peer=\"c@h:3\"} 3\n",
        ] {
            assert!(t.contains(line), "{line:?} missing from\n{t}");
        }
        assert!(!t.contains("peer=\"a@h:1\""), "the leader is not its own follower");
        let mut x = Exposition::default();
        cluster_metrics(&status(false), &mut x, false);
        let t = x.finish();
        assert!(t.contains("warren_cluster_is_leader 0\n"));
        assert!(!t.contains("warren_cluster_follower_lag_entries{"), "a follower knows no lag:\n{t}");
        let mut x = Exposition::default();
        cluster_metrics(&ClusterStatus { raft_stopped: Some("disk full".into()), ..status(false) }, &mut x, false);
        assert!(x.finish().contains("warren_cluster_raft_running 0\n"), "a stopped core shows");
    }
}
