//! Statistics, connections, channels, consumers and Prometheus metrics, with lapin clients
//! connected and `rabbitmq_http_client` (rabbitmqadmin v2's library) reading the API.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use mgmt::Node;
use rabbitmq_http_client::api::Client;

use crate::common::TestServer;
use crate::interop::{Errors, assert_code, reply};

fn client(server: &TestServer) -> Client<String, &'static str, &'static str> {
    Client::new(server.api(), "guest", "guest")
}

async fn connect(server: &TestServer, name: &str) -> Connection {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(&server.uri(), props).await.expect("connect")
}

async fn declare(ch: &lapin::Channel, q: &str) {
    ch.queue_declare(q.into(), QueueDeclareOptions::default(), FieldTable::default()).await.expect("queue.declare");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_channels_and_consumers_are_listed() {
    let server = TestServer::start().await.with_management().await;
    let conn = connect(&server, "stats-lister").await;
    let ch1 = conn.create_channel().await.unwrap();
    let ch2 = conn.create_channel().await.unwrap();
    ch2.confirm_select(Default::default()).await.unwrap();
    declare(&ch1, "listed").await;
    ch1.basic_qos(7, BasicQosOptions::default()).await.unwrap();
    let _consumer = ch1
        .basic_consume("listed".into(), "tag-1".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let api = client(&server);

    let conns = api.list_connections().await.expect("list_connections");
    assert_eq!(conns.len(), 1);
    let c = &conns[0];
    assert_eq!((c.username.as_str(), c.protocol.as_str()), ("guest", "AMQP 0-9-1"));
    assert_eq!(c.client_properties.connection_name, "stats-lister");
    assert_eq!(c.channel_count, 2);
    assert!(c.name.contains(" -> "), "RabbitMQ's connection name: {}", c.name);
    let one = api.get_connection_info(&c.name).await.expect("get_connection_info");
    assert_eq!(one.name, c.name);
    assert_eq!(api.list_connections_in("/").await.unwrap().len(), 1);
    assert_eq!(api.list_user_connections("guest").await.unwrap().len(), 1);

    let chans = api.list_channels().await.expect("list_channels");
    assert_eq!(chans.len(), 2);
    let first = chans.iter().find(|x| x.prefetch_count == 7).expect("the channel with qos 7");
    assert_eq!((first.consumer_count, first.has_publisher_confirms_enabled), (1, false));
    assert!(chans.iter().any(|x| x.has_publisher_confirms_enabled));
    assert_eq!(first.connection_details.name, c.name);
    assert_eq!(first.name, format!("{} ({})", c.name, first.id));
    assert_eq!(api.list_channels_on(&c.name).await.unwrap().len(), 2);
    assert_eq!(api.list_channels_in("/").await.unwrap().len(), 2);
    let info = api.get_channel_info(&first.name).await.expect("get_channel_info");
    assert_eq!(info.consumer_count, 1);

    let consumers = api.list_consumers().await.expect("list_consumers");
    assert_eq!(consumers.len(), 1);
    let k = &consumers[0];
    assert_eq!((k.consumer_tag.as_str(), k.queue.name.as_str(), k.queue.vhost.as_str()), ("tag-1", "listed", "/"));
    assert!(k.manual_ack);
    assert_eq!(k.channel_details.as_ref().map(|d| d.connection_name.clone()), Some(c.name.clone()));
    assert_eq!(api.list_consumers_in("/").await.unwrap().len(), 1);

    // Cancelled consumers and closed channels leave the lists.
    ch1.basic_cancel("tag-1".into(), Default::default()).await.unwrap();
    assert!(api.list_consumers().await.unwrap().is_empty());
    ch2.close(200, "bye".into()).await.unwrap();
    assert_eq!(api.list_channels().await.unwrap().len(), 1);

    // Unknown names: RabbitMQ's 404.
    let http = reqwest::Client::new();
    for path in ["connections/nope", "channels/nope", "vhosts/nope/connections", "consumers/nope"] {
        let r = http.get(format!("{}/{path}", server.api())).basic_auth("guest", Some("guest")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_connection_closes_it_with_320_and_the_reason() {
    let server = TestServer::start().await.with_management().await;
    let conn = connect(&server, "doomed").await;
    let mut errors = Errors::watch(&conn);
    let api = client(&server);
    let name = api.list_connections().await.unwrap()[0].name.clone();
    api.close_connection(&name, Some("maintenance window"), false).await.expect("DELETE /api/connections/{name}");
    let e = errors.next().await;
    assert_code(&e, 320);
    let (_, text) = reply(&e).unwrap();
    assert!(text.contains("maintenance window"), "the X-Reason text reaches the client: {text:?}");
    crate::interop::assert_connection_closed(&conn).await;
    // The server forgets it once the close handshake is over.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !api.list_connections().await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the closed connection is still listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // By user: every connection of guest.
    let a = connect(&server, "a").await;
    let b = connect(&server, "b").await;
    api.close_user_connections("guest", Some("all of them"), false).await.expect("DELETE by username");
    crate::interop::assert_connection_closed(&a).await;
    crate::interop::assert_connection_closed(&b).await;
}

/// Publish and consume for a little over one sampling interval: the rates become non-zero
/// in the overview, the queue's, the exchange's and the channel's message_stats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rates_become_non_zero_under_load() {
    let server = TestServer::start().await.with_management().await;
    let conn = connect(&server, "load").await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "busy").await;
    let mut consumer = ch
        .basic_consume(
            "busy".into(),
            "c".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let consumed = tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(3), consumer.next()).await {
            n += 1;
        }
        n
    });
    // Publish until the sampler has seen the queue in two rounds with publishes between
    // them (a new object's first round has no rate yet): 5 to 10 s.
    let q = server.state.vhost("/").unwrap().queues().into_iter().find(|q| q.name == "busy").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut published = 0u64;
    loop {
        for _ in 0..50 {
            ch.basic_publish(
                "".into(),
                "busy".into(),
                BasicPublishOptions::default(),
                b"x",
                BasicProperties::default(),
            )
            .await
            .unwrap();
            published += 1;
        }
        let stats = mgmt::stats::queue_message_stats(server.state.rates(), &q, None);
        if stats["publish_details"]["rate"].as_f64().unwrap_or(0.0) > 0.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no queue publish rate after 15 s: {stats}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let o = client(&server).overview().await.expect("overview");
    let rate = o.message_stats.publishing_details.expect("publish_details").rate;
    assert!(rate > 0.0, "overview publish rate {rate}");
    let raw: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/overview?msg_rates_age=60&msg_rates_incr=5", server.api()))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let samples = raw["message_stats"]["publish_details"]["samples"].as_array().expect("samples");
    // Points at multiples of msg_rates_incr, newest first, as far back as the ring goes.
    assert!(!samples.is_empty(), "{raw}");
    assert!(samples.iter().all(|p| p["timestamp"].as_u64().unwrap() % 5_000 == 0), "{samples:?}");
    assert!(samples.windows(2).all(|w| w[0]["timestamp"].as_u64() > w[1]["timestamp"].as_u64()), "newest first");
    assert!(raw["churn_rates"]["queue_declared"].as_u64() >= Some(1));
    assert!(raw["queue_totals"]["messages_details"]["rate"].is_number());

    let stats = mgmt::stats::queue_message_stats(server.state.rates(), &q, None);
    assert!(stats["publish_details"]["rate"].as_f64().unwrap() > 0.0, "queue rates: {stats}");
    assert!(stats["deliver_no_ack"].as_u64().unwrap() > 0, "{stats}");
    let ex = server.state.vhost("/").unwrap().exchange("").unwrap();
    let xs = mgmt::stats::exchange_message_stats(server.state.rates(), &ex, None);
    assert!(xs["publish_in_details"]["rate"].as_f64().unwrap() > 0.0, "exchange rates: {xs}");
    let chans: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/channels", server.api()))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(chans[0]["message_stats"]["publish_details"]["rate"].as_f64().unwrap() > 0.0, "{chans}");
    drop(ch);
    conn.close(200, "done".into()).await.unwrap();
    let n = consumed.await.unwrap();
    assert!(n > 0 && n <= published);
    // The node's totals keep the closed channel's counts.
    let totals = server.state.node_counters();
    assert_eq!(totals.messages.publish, published);
    assert_eq!(totals.messages.deliver_no_ack, q.counters.snapshot().deliver_no_ack);
}

/// One parsed sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// A strict parser of the text format 0.0.4: every line is a HELP, a TYPE (before its
/// family's samples, once), or a sample of a declared family with well-formed labels.
fn parse_exposition(text: &str) -> Result<(BTreeMap<String, String>, Vec<Sample>), String> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
    };
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for (no, line) in text.lines().enumerate() {
        let err = |m: &str| format!("line {}: {m}: {line:?}", no + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            if !valid_name(name) {
                return Err(err("bad HELP name"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, kind) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            if !valid_name(name) || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(err("bad TYPE"));
            }
            if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                return Err(err("TYPE repeated"));
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(err("unexpected comment or blank line"));
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => (&line[..i], &line[i..]),
            None => return Err(err("no value")),
        };
        if !valid_name(name) {
            return Err(err("bad metric name"));
        }
        let mut labels = BTreeMap::new();
        let value_part = if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let close;
            loop {
                let start = chars.peek().map(|c| c.0).ok_or_else(|| err("unterminated labels"))?;
                if body[start..].starts_with('}') {
                    close = start;
                    break;
                }
                let eq = body[start..].find("=\"").ok_or_else(|| err("label without value"))? + start;
                let key = &body[start..eq];
                if !valid_name(key) {
                    return Err(err("bad label name"));
                }
                for _ in start..eq + 2 {
                    chars.next();
                }
                let mut val = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => val.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => val.push(c),
                            _ => return Err(err("bad escape")),
                        },
                        Some((_, '"')) => break,
                        Some((_, c)) => val.push(c),
                        None => return Err(err("unterminated label value")),
                    }
                }
                labels.insert(key.to_owned(), val);
                match chars.peek() {
                    Some((_, ',')) => {
                        chars.next();
                    }
                    Some((_, '}')) => {}
                    _ => return Err(err("expected , or }")),
                }
            }
            &body[close + 1..]
        } else {
            rest
        };
        let value = value_part.strip_prefix(' ').ok_or_else(|| err("no space before value"))?;
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            s => s.parse().map_err(|_| err("bad value"))?,
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.get(*f).is_some_and(|k| k == "histogram")))
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(err("sample before its TYPE"));
        }
        samples.push((name.to_owned(), labels, v));
    }
    Ok((types, samples))
}

/// The series Grafana's "RabbitMQ-Overview" dashboard (10991) queries.
const DASHBOARD_10991: &[&str] = &[
    "rabbitmq_identity_info",
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_connections",
    "rabbitmq_channels",
    "rabbitmq_queues",
    "rabbitmq_global_consumers",
    "rabbitmq_global_publishers",
    "rabbitmq_global_messages_received_total",
    "rabbitmq_global_messages_received_confirm_total",
    "rabbitmq_global_messages_confirmed_total",
    "rabbitmq_global_messages_routed_total",
    "rabbitmq_global_messages_unroutable_dropped_total",
    "rabbitmq_global_messages_unroutable_returned_total",
    "rabbitmq_global_messages_delivered_total",
    "rabbitmq_global_messages_delivered_consume_auto_ack_total",
    "rabbitmq_global_messages_delivered_consume_manual_ack_total",
    "rabbitmq_global_messages_delivered_get_auto_ack_total",
    "rabbitmq_global_messages_delivered_get_manual_ack_total",
    "rabbitmq_global_messages_get_empty_total",
    "rabbitmq_global_messages_redelivered_total",
    "rabbitmq_global_messages_acknowledged_total",
    "rabbitmq_queues_declared_total",
    "rabbitmq_queues_created_total",
    "rabbitmq_queues_deleted_total",
    "rabbitmq_channels_opened_total",
    "rabbitmq_channels_closed_total",
    "rabbitmq_connections_opened_total",
    "rabbitmq_connections_closed_total",
    "rabbitmq_resident_memory_limit_bytes",
    "rabbitmq_process_resident_memory_bytes",
    "rabbitmq_disk_space_available_bytes",
    "rabbitmq_disk_space_available_limit_bytes",
    "rabbitmq_process_max_fds",
    "rabbitmq_process_open_fds",
    "rabbitmq_erlang_uptime_seconds",
    "rabbitmq_message_size_bytes_bucket",
    "rabbitmq_message_size_bytes_sum",
    "rabbitmq_message_size_bytes_count",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_parse_and_cover_the_overview_dashboard() {
    let server = TestServer::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let node: Arc<dyn Node> = server.state.clone();
    tokio::spawn(mgmt::prometheus::serve(listener, node, std::future::pending()));

    let conn = connect(&server, "prom").await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "prom-q").await;
    for body in [&b"small"[..], &[0u8; 5_000][..]] {
        ch.basic_publish("".into(), "prom-q".into(), BasicPublishOptions::default(), body, BasicProperties::default())
            .await
            .unwrap();
    }
    ch.basic_publish("".into(), "nowhere".into(), BasicPublishOptions::default(), b"lost", BasicProperties::default())
        .await
        .unwrap();
    // The publishes are handled in order: a synchronous method after them has seen them.
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();

    let r = reqwest::get(format!("http://{addr}/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let (types, samples) = parse_exposition(&r.text().await.unwrap()).expect("valid exposition");
    let names: BTreeSet<&str> = samples.iter().map(|s| s.0.as_str()).collect();
    for m in DASHBOARD_10991 {
        assert!(names.contains(m), "missing {m}");
    }
    assert_eq!(types["rabbitmq_global_messages_received_total"], "counter");
    let value = |name: &str| samples.iter().find(|s| s.0 == name).map(|s| s.2).unwrap();
    assert_eq!(value("rabbitmq_global_messages_received_total"), 3.0);
    assert_eq!(value("rabbitmq_global_messages_routed_total"), 2.0);
    assert_eq!(value("rabbitmq_global_messages_unroutable_dropped_total"), 1.0);
    assert_eq!(value("rabbitmq_queue_messages_ready"), 2.0);
    assert_eq!(value("rabbitmq_connections"), 1.0);
    let identity = samples.iter().find(|s| s.0 == "rabbitmq_identity_info").unwrap();
    assert_eq!(identity.1["rabbitmq_endpoint"], "aggregated");
    assert_eq!(identity.1["rabbitmq_node"], server.state.node_name());
    let buckets: Vec<(String, f64)> = samples
        .iter()
        .filter(|s| s.0 == "rabbitmq_message_size_bytes_bucket")
        .map(|s| (s.1["le"].clone(), s.2))
        .collect();
    assert_eq!(buckets.first(), Some(&("100".to_owned(), 2.0)), "'small' and 'lost' are under 100 bytes");
    assert_eq!(buckets.last(), Some(&("+Inf".to_owned(), 3.0)));
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative buckets");

    let per = reqwest::get(format!("http://{addr}/metrics/per-object")).await.unwrap().text().await.unwrap();
    let (_, samples) = parse_exposition(&per).expect("valid per-object exposition");
    let ready = samples
        .iter()
        .find(|s| s.0 == "rabbitmq_queue_messages_ready" && s.1.get("queue").map(String::as_str) == Some("prom-q"))
        .expect("per-queue series");
    assert_eq!((ready.1["vhost"].as_str(), ready.2), ("/", 2.0));
    assert!(samples.iter().any(|s| s.0 == "rabbitmq_channel_messages_published_total" && s.2 == 3.0));
    assert!(samples.iter().any(|s| s.0 == "rabbitmq_identity_info" && s.1["rabbitmq_endpoint"] == "per-object"));
}

#[test]
fn the_exposition_parser_is_strict() {
    assert!(parse_exposition("# TYPE a gauge\na 1\n").is_ok());
    assert!(parse_exposition("a 1\n").is_err(), "sample without TYPE");
    assert!(parse_exposition("# TYPE a gauge\na{b=\"x} 1\n").is_err(), "unterminated label");
    assert!(parse_exposition("# TYPE a gauge\na{b=\"x\"} one\n").is_err(), "bad value");
    assert!(parse_exposition("# TYPE a gauge\n# TYPE a gauge\n").is_err(), "TYPE twice");
    let (_, s) = parse_exposition("# TYPE a gauge\na{b=\"q\\\"\\n\",c=\"\"} 2.5\n").unwrap();
    assert_eq!(s[0].1["b"], "q\"\n");
    assert_eq!(s[0].2, 2.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumer_standbys_are_listed_as_waiting() {
    let server = TestServer::start().await.with_management().await;
    let conn = connect(&server, "sac").await;
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-single-active-consumer".into(), lapin::types::AMQPValue::Boolean(true));
    ch.queue_declare("sac".into(), QueueDeclareOptions::default(), args).await.unwrap();
    // (lapin cancels a consumer when its stream is dropped: keep them.)
    let mut consumers = Vec::new();
    for tag in ["first", "second"] {
        let c = ch.basic_consume("sac".into(), tag.into(), BasicConsumeOptions::default(), FieldTable::default());
        consumers.push(c.await.unwrap());
    }
    let raw: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/consumers/%2F", server.api()))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let status: Vec<(&str, bool, &str)> = raw
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["consumer_tag"].as_str().unwrap(),
                c["active"].as_bool().unwrap(),
                c["activity_status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(status, vec![("first", true, "up"), ("second", false, "waiting")], "{raw}");
}

/// The `state` of connections and channels as RabbitMQ names them: a resource alarm
/// blocks a connection that has published (its channel stays `running`, as in RabbitMQ),
/// and a connection paused by a queue in flow shows `flow` on itself and its channels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_channel_states_follow_alarms_and_flow() {
    let server = TestServer::start().await.with_management().await;
    let conn = connect(&server, "stateful").await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "states").await;
    ch.basic_publish("".into(), "states".into(), BasicPublishOptions::default(), b"x", BasicProperties::default())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let states = || async {
        let get =
            |path: &'static str| http.get(format!("{}/{path}", server.api())).basic_auth("guest", Some("guest")).send();
        let c: serde_json::Value = get("connections").await.unwrap().json().await.unwrap();
        let h: serde_json::Value = get("channels").await.unwrap().json().await.unwrap();
        (c[0]["state"].as_str().unwrap().to_owned(), h[0]["state"].as_str().unwrap().to_owned())
    };
    let until = |want: (&'static str, &'static str)| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = states().await;
            if (got.0.as_str(), got.1.as_str()) == want {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "wanted {want:?}, still {got:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    until(("running", "running")).await;
    // A memory alarm (the threshold below the node's RSS): the publishing connection blocks.
    server.state.set_memory_high_watermark(1);
    until(("blocked", "running")).await;
    server.state.set_memory_high_watermark(1 << 50);
    until(("running", "running")).await;
    // The flag the connection sets while a queue in flow pauses it (at most 50 ms at a
    // time in real use; held here so the lists can be read).
    let handle = server.state.registry.all().into_iter().next().expect("the connection");
    handle.in_flow.store(true, std::sync::atomic::Ordering::Relaxed);
    until(("flow", "flow")).await;
    handle.in_flow.store(false, std::sync::atomic::Ordering::Relaxed);
    until(("running", "running")).await;
}

/// `GET /api/nodes/{node}/memory` in rabbitmq_http_client's (rabbitmqadmin's) shape: the
/// message bodies a queue holds show as `binary` and leave it when the queue is purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_breakdown_accounts_message_bodies() {
    let server = TestServer::start().await.with_management().await;
    let api = Client::new(server.api(), "guest", "guest");
    let node = server.state.node_name();
    let before = api.get_node_memory_footprint(&node).await.expect("memory").breakdown.expect("available");
    assert_eq!(before.calculation_strategy, "rss");
    assert!(before.total.rss > 0 && before.total.allocated > 0);

    let conn = connect(&server, "memory").await;
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare("mem".into(), QueueDeclareOptions::default(), FieldTable::default()).await.expect("declare");
    let body = vec![7u8; 1 << 20];
    for _ in 0..4 {
        ch.basic_publish("".into(), "mem".into(), BasicPublishOptions::default(), &body, BasicProperties::default())
            .await
            .expect("publish");
    }
    // The publishes are asynchronous: wait for them to be queued.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.state.vhost("/").expect("vhost").queue("mem", 0).expect("queue").stats().messages_ready < 4 {
        assert!(std::time::Instant::now() < deadline, "4 messages never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let full = api.get_node_memory_footprint(&node).await.expect("memory").breakdown.expect("available");
    assert!(full.binary_heap >= 4 << 20, "binary {} < 4 MiB", full.binary_heap);
    assert!(full.binary_heap <= before.binary_heap + (5 << 20), "binary {} counts too much", full.binary_heap);
    // The same object with ?memory=true on the node.
    let j: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/nodes/{node}?memory=true", server.api()))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("node")
        .json()
        .await
        .expect("json");
    assert!(j["memory"]["binary"].as_u64() >= Some(4 << 20), "{j}");

    ch.queue_purge("mem".into(), Default::default()).await.expect("purge");
    let after = api.get_node_memory_footprint(&node).await.expect("memory").breakdown.expect("available");
    assert!(after.binary_heap < 1 << 20, "binary {} after the purge", after.binary_heap);
    conn.close(0, "done".into()).await.expect("close");
}
