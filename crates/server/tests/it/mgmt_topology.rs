//! The management API's queues, exchanges, bindings and messages (group "topology"):
//! `rabbitmq_http_client` (rabbitmqadmin v2's library) as the witness for RabbitMQ's
//! shapes, plain HTTP for the list rules, peek and replay.

use std::time::{Duration, Instant};

use rabbitmq_http_client::api::Client;
use rabbitmq_http_client::commons::BindingDestinationType;
use rabbitmq_http_client::requests::{BindingDeletionParams, ExchangeParams};
use serde_json::{Value, json};

use crate::common::TestServer;
use crate::interop::{consume, next, open};

fn client(server: &TestServer) -> Client<String, &'static str, &'static str> {
    Client::new(server.api(), "guest", "guest")
}

async fn call(server: &TestServer, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut r =
        reqwest::Client::new().request(method, format!("{}{path}", server.api())).basic_auth("guest", Some("guest"));
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn get(server: &TestServer, path: &str) -> Value {
    let (status, v) = call(server, reqwest::Method::GET, path, None).await;
    assert_eq!(status, 200, "GET {path}: {v}");
    v
}

async fn post(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    call(server, reqwest::Method::POST, path, Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mgmt_topology_declare_list_bind_publish_get_purge_delete() {
    let server = TestServer::start().await.with_management().await;
    let c = client(&server);
    c.declare_classic_queue("/", "q1").await.expect("declare queue");
    let qi = c.get_queue_info("/", "q1").await.expect("queue info");
    assert!(qi.durable && !qi.exclusive);
    assert!(c.list_queues().await.expect("list").iter().any(|q| q.name == "q1"));
    c.declare_exchange("/", &ExchangeParams::durable_fanout("fx", None)).await.expect("declare exchange");
    assert!(c.list_exchanges_in("/").await.expect("exchanges").iter().any(|e| e.name == "fx"));
    c.bind_queue("/", "q1", "fx", Some("k"), None).await.expect("bind");
    let bs = c.list_queue_bindings("/", "q1").await.expect("bindings");
    assert_eq!(bs.len(), 2, "the default binding and fx's: {bs:?}");
    // Publish through the fanout and the default exchange; get with every ackmode.
    let r = c.publish_message("/", "fx", "any", "one", serde_json::Map::new()).await.expect("publish");
    assert!(r.routed);
    let r = c.publish_message("/", "amq.default", "q1", "two", serde_json::Map::new()).await.expect("publish");
    assert!(r.routed);
    let r = c.publish_message("/", "amq.default", "nowhere", "x", serde_json::Map::new()).await.expect("publish");
    assert!(!r.routed);
    let m = c.get_messages("/", "q1", 1, "ack_requeue_true").await.expect("get");
    assert_eq!((m.len(), m[0].payload.as_str(), m[0].message_count), (1, "one", 1));
    let m = c.get_messages("/", "q1", 5, "reject_requeue_true").await.expect("get");
    assert_eq!(m.len(), 2);
    assert!(m[0].redelivered, "requeued by the previous get");
    let m = c.get_messages("/", "q1", 1, "ack_requeue_false").await.expect("get");
    assert_eq!(m[0].payload, "one");
    let m = c.get_messages("/", "q1", 1, "reject_requeue_false").await.expect("get");
    assert_eq!(m[0].payload, "two");
    assert!(c.get_messages("/", "q1", 1, "ack_requeue_false").await.expect("get").is_empty());
    let (status, v) = post(&server, "/queues/%2F/q1/get", json!({"count": 1, "ackmode": "bogus"})).await;
    assert_eq!(status, 400);
    assert!(v["reason"].as_str().unwrap().contains("ack_requeue_true"), "{v}");
    // Purge.
    c.publish_message("/", "fx", "", "three", serde_json::Map::new()).await.expect("publish");
    c.purge_queue("/", "q1").await.expect("purge");
    assert_eq!(c.get_queue_info("/", "q1").await.unwrap().message_count, 0);
    // Bindings by properties key: POST gives it in Location, DELETE takes it.
    let r = reqwest::Client::new()
        .post(format!("{}/bindings/%2F/e/fx/q/q1", server.api()))
        .basic_auth("guest", Some("guest"))
        .json(&json!({"routing_key": "a~b", "arguments": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(loc.ends_with("/a%257Eb"), "{loc}");
    let b = get(&server, "/bindings/%2F/e/fx/q/q1/a%257Eb").await;
    assert_eq!(b["routing_key"], "a~b");
    c.delete_binding(
        &BindingDeletionParams {
            virtual_host: "/",
            source: "fx",
            destination: "q1",
            destination_type: BindingDestinationType::Queue,
            routing_key: "k",
            arguments: None,
        },
        false,
    )
    .await
    .expect("delete binding");
    assert_eq!(c.list_queue_bindings("/", "q1").await.unwrap().len(), 2, "the default one and a~b");
    // Deletes; if-unused on an exchange with bindings is refused.
    let (status, _) = call(&server, reqwest::Method::DELETE, "/exchanges/%2F/fx?if-unused=true", None).await;
    assert_eq!(status, 400);
    c.delete_exchange("/", "fx", false).await.expect("delete exchange");
    c.delete_queue("/", "q1", false).await.expect("delete queue");
    let (status, v) = call(&server, reqwest::Method::GET, "/queues/%2F/q1", None).await;
    assert_eq!((status, v), (404, json!({"error": "Object Not Found", "reason": "Not Found"})));
    let (status, _) = call(&server, reqwest::Method::GET, "/queues/nope", None).await;
    assert_eq!(status, 404, "unknown vhost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mgmt_topology_lists_page_sort_filter_and_project() {
    let server = TestServer::start().await.with_management().await;
    let c = client(&server);
    for i in 0..30 {
        c.declare_classic_queue("/", &format!("job-{i:02}")).await.unwrap();
    }
    c.declare_classic_queue("/", "other").await.unwrap();
    for _ in 0..3 {
        c.publish_message("/", "amq.default", "job-07", "x", serde_json::Map::new()).await.unwrap();
    }
    let v = get(&server, "/queues/%2F?page=2&page_size=10&name=JOB").await;
    assert_eq!(
        (v["total_count"].as_u64(), v["filtered_count"].as_u64(), v["page_count"].as_u64(), v["item_count"].as_u64()),
        (Some(31), Some(30), Some(3), Some(10))
    );
    assert_eq!((v["page"].as_u64(), v["page_size"].as_u64()), (Some(2), Some(10)));
    assert_eq!(v["items"][0]["name"], "job-10");
    let v = get(&server, "/queues?sort=messages&sort_reverse=true&columns=name,messages").await;
    assert_eq!(v[0], json!({"name": "job-07", "messages": 3}));
    let v = get(&server, "/queues?sort=message_bytes&sort_reverse=true&columns=name").await;
    assert_eq!(v[0], json!({"name": "job-07"}), "sorted on a field only the JSON has");
    let v = get(&server, "/queues?name=%5Ejob-0%5B12%5D%24&use_regex=true").await;
    assert_eq!(v.as_array().unwrap().len(), 2);
    let (status, _) = call(&server, reqwest::Method::GET, "/queues?page=1&page_size=501", None).await;
    assert_eq!(status, 400);
    let (status, _) = call(&server, reqwest::Method::GET, "/queues?page=9&page_size=10", None).await;
    assert_eq!(status, 400);
    // Flower asks for /api/queues/ and reads these fields.
    let v = get(&server, "/queues/").await;
    for q in v.as_array().unwrap() {
        for f in ["name", "messages", "messages_ready", "messages_unacknowledged", "consumers", "idle_since"] {
            assert!(!q[f].is_null(), "{f} missing in {q}");
        }
    }
    let bindings = get(&server, "/bindings/%2F?page=1&page_size=5").await;
    assert_eq!(bindings["total_count"], 31, "the default exchange's bindings");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mgmt_topology_peek_changes_nothing() {
    let server = TestServer::start().await.with_management().await;
    let c = client(&server);
    c.declare_classic_queue("/", "pq").await.unwrap();
    for i in 0..5 {
        c.publish_message("/", "amq.default", "pq", &format!("m{i}"), serde_json::Map::new()).await.unwrap();
    }
    let (status, v) = post(&server, "/queues/%2F/pq/peek", json!({"offset": 1, "count": 2})).await;
    assert_eq!(status, 200, "{v}");
    let payloads: Vec<&str> = v.as_array().unwrap().iter().map(|m| m["payload"].as_str().unwrap()).collect();
    assert_eq!(payloads, vec!["m1", "m2"]);
    assert_eq!(v[0]["redelivered"], false);
    let (_, v) = post(&server, "/queues/%2F/pq/peek", json!({"count": 10})).await;
    assert_eq!(v.as_array().unwrap().len(), 5);
    assert_eq!(c.get_queue_info("/", "pq").await.unwrap().message_count, 5);
    // An AMQP consumer then gets all of them, in order, never redelivered.
    let (_conn, ch) = open(&server).await;
    let mut consumer = consume(&ch, "pq", "t").await;
    for i in 0..5 {
        let d = next(&mut consumer).await;
        assert_eq!(d.data, format!("m{i}").into_bytes());
        assert!(!d.redelivered);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mgmt_topology_replay_moves_dead_letters_back() {
    let server = TestServer::start().await.with_management().await;
    let c = client(&server);
    let (status, _) = call(
        &server,
        reqwest::Method::PUT,
        "/queues/%2F/work",
        Some(json!({"durable": true, "arguments": {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq"}})),
    )
    .await;
    assert_eq!(status, 201);
    c.declare_classic_queue("/", "dlq").await.unwrap();
    for i in 0..3 {
        c.publish_message("/", "amq.default", "work", &format!("d{i}"), serde_json::Map::new()).await.unwrap();
    }
    // Rejected without requeue: dead-lettered into dlq.
    assert_eq!(c.get_messages("/", "work", 3, "reject_requeue_false").await.unwrap().len(), 3);
    assert_eq!(c.get_queue_info("/", "dlq").await.unwrap().message_count, 3);
    let (status, v) = post(&server, "/queues/%2F/dlq/replay", json!({"count": 2})).await;
    assert_eq!((status, v), (200, json!({"moved": 2})));
    assert_eq!(c.get_queue_info("/", "work").await.unwrap().message_count, 2);
    let (status, v) =
        post(&server, "/queues/%2F/dlq/replay", json!({"count": 5, "target": {"exchange": "", "routing_key": "dlq2"}}))
            .await;
    assert_eq!(status, 400, "routed nowhere: {v}");
    assert_eq!(c.get_queue_info("/", "dlq").await.unwrap().message_count, 1, "kept, not lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mgmt_topology_lists_ten_thousand_queues_quickly() {
    let server = TestServer::start().await.with_management().await;
    let vh = server.state.vhost("/").unwrap();
    for i in 0..10_000 {
        let opts = broker::queue::QueueOptions {
            durable: false,
            exclusive: false,
            auto_delete: false,
            arguments: Default::default(),
        };
        vh.declare_queue(&format!("q{i:05}"), false, opts, 0).unwrap();
    }
    let t = Instant::now();
    let v = get(&server, "/queues?page=3&page_size=500&sort=name&sort_reverse=true").await;
    assert_eq!(v["total_count"], 10_000);
    assert_eq!(v["items"][0]["name"], "q08999");
    let all = get(&server, "/queues/").await;
    assert_eq!(all.as_array().unwrap().len(), 10_000);
    assert!(t.elapsed() < Duration::from_secs(3), "took {:?}", t.elapsed());
}
