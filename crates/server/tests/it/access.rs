//! Users, vhosts, permissions, topic permissions and limits, seen by lapin over TCP
//! against a node started with a RabbitMQ definitions file (load_definitions).

use std::time::Duration;

use access::directory::Change;
use access::model::{Permission, UserLimits, VhostLimits};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use server::Config;

use crate::common::TestServer;
use crate::durability::reply_code;

/// A definitions file as RabbitMQ 3.12 exports it. alice's and erin's hash is the sha256
/// example of RabbitMQ's password docs (password `test12`, salt 908DC60A); guest's is
/// sha256 of `guest` with salt a1b2c3d4; carol has no password.
const DEFINITIONS: &str = r#"{
  "rabbit_version": "3.12.13", "rabbitmq_version": "3.12.13",
  "product_name": "RabbitMQ", "product_version": "3.12.13",
  "users": [
    {"name": "guest", "password_hash": "obLD1MWQghB4VYycO80mo/BS12CAgKx2HaNpNWrVbVcF82D3",
     "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"], "limits": {}},
    {"name": "alice", "password_hash": "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR",
     "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["management"], "limits": {}},
    {"name": "carol", "password_hash": "", "hashing_algorithm": "rabbit_password_hashing_sha256",
     "tags": "", "limits": {}},
    {"name": "erin", "password_hash": "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR",
     "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": "monitoring,policymaker",
     "limits": {"max-connections": 1, "max-channels": 2}}
  ],
  "vhosts": [
    {"name": "/", "limits": [], "metadata": {"description": "", "tags": []}},
    {"name": "app", "limits": [], "metadata": {"description": "the app", "tags": []}},
    {"name": "small", "limits": [], "metadata": {"description": "", "tags": []}}
  ],
  "permissions": [
    {"user": "alice", "vhost": "app", "configure": "^alice\\.", "write": "^(alice\\.|amq\\.default$|amq\\.topic$)",
     "read": "^(alice\\.|amq\\.topic$)"},
    {"user": "carol", "vhost": "app", "configure": ".*", "write": ".*", "read": ".*"},
    {"user": "erin", "vhost": "small", "configure": ".*", "write": ".*", "read": ".*"},
    {"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
  ],
  "topic_permissions": [
    {"user": "alice", "vhost": "app", "exchange": "amq.topic", "write": "^{username}\\.", "read": "^alice\\.logs\\."}
  ],
  "parameters": [], "global_parameters": [{"name": "cluster_name", "value": "rabbit@test"}],
  "policies": [],
  "queues": [
    {"name": "alice.jobs", "vhost": "app", "durable": true, "auto_delete": false, "arguments": {"x-max-length": 100}}
  ],
  "exchanges": [
    {"name": "alice.events", "vhost": "app", "type": "fanout", "durable": true, "auto_delete": false,
     "internal": false, "arguments": {}}
  ],
  "bindings": [
    {"source": "alice.events", "vhost": "app", "destination": "alice.jobs", "destination_type": "queue",
     "routing_key": "", "arguments": {}}
  ]
}"#;

async fn node(dir: &std::path::Path) -> TestServer {
    let defs = dir.join("definitions.json");
    std::fs::write(&defs, DEFINITIONS).unwrap();
    let data_dir = dir.join("data");
    TestServer::start_persistent_with(Config { data_dir, load_definitions: Some(defs), ..Config::default() }).await
}

fn uri(server: &TestServer, user: &str, pass: &str, vhost: &str) -> String {
    format!("amqp://{user}:{pass}@{}/{}", server.addr, vhost.replace('/', "%2f"))
}

async fn login(server: &TestServer, user: &str, pass: &str, vhost: &str) -> Result<Connection, lapin::Error> {
    Connection::connect(&uri(server, user, pass, vhost), ConnectionProperties::default()).await
}

async fn open(server: &TestServer, user: &str, pass: &str, vhost: &str) -> (Connection, Channel) {
    let c = login(server, user, pass, vhost).await.unwrap_or_else(|e| panic!("{user} to {vhost}: {e}"));
    let ch = c.create_channel().await.unwrap();
    (c, ch)
}

/// The refusal's reply code and whether its text contains `text`.
fn refused(r: Result<impl std::fmt::Debug, lapin::Error>, code: u16, text: &str) {
    let e = r.expect_err("expected a refusal");
    assert_eq!(reply_code(&e), Some(code), "{e}");
    assert!(e.to_string().contains(text), "expected '{text}' in: {e}");
}

/// Publish with a confirm: a refused publish has no reply of its own, the broker's
/// channel.close fails the pending confirm.
async fn publish(ch: &Channel, exchange: &str, key: &str) -> Result<(), lapin::Error> {
    ch.confirm_select(Default::default()).await?;
    ch.basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), b"x", BasicProperties::default())
        .await?
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_follow_the_definitions_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = node(dir.path()).await;
    // alice's imported RabbitMQ hash verifies; a wrong password does not.
    open(&server, "alice", "test12", "app").await;
    refused(login(&server, "alice", "wrong", "app").await, 403, "Login was refused");
    // No password: no password login, whatever is sent.
    refused(login(&server, "carol", "", "app").await, 403, "Login was refused");
    refused(login(&server, "nobody", "x", "app").await, 403, "Login was refused");
    // An unknown vhost, and one the user has no permissions in: 530 with RabbitMQ's texts.
    refused(login(&server, "alice", "test12", "nope").await, 530, "vhost nope not found");
    refused(login(&server, "alice", "test12", "/").await, 530, "access to vhost '/' refused for user 'alice'");
    // guest keeps working in "/" (its permission came from the file).
    open(&server, "guest", "guest", "/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_need_their_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let server = node(dir.path()).await;
    let (conn, ch) = open(&server, "alice", "test12", "app").await;

    // Topology from the file exists.
    let q = ch
        .queue_declare(
            "alice.jobs".into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0);

    // configure: declare inside alice.*, not outside; passive declares need nothing.
    ch.queue_declare("alice.q".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    refused(
        ch.queue_declare("bob.q".into(), QueueDeclareOptions::default(), FieldTable::default()).await,
        403,
        "configure access to queue 'bob.q' in vhost 'app' refused for user 'alice'",
    );
    // A server-named queue is checked under its amq.gen- name.
    let ch = conn.create_channel().await.unwrap();
    refused(
        ch.queue_declare(
            "".into(),
            QueueDeclareOptions { exclusive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await,
        403,
        "configure access to queue 'amq.gen-",
    );
    let ch = conn.create_channel().await.unwrap();
    refused(
        ch.exchange_declare(
            "bob.x".into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
        403,
        "configure access to exchange 'bob.x' in vhost 'app' refused for user 'alice'",
    );

    // write: the default exchange is checked as amq.default.
    let ch = conn.create_channel().await.unwrap();
    publish(&ch, "", "alice.q").await.unwrap();
    refused(publish(&ch, "amq.fanout", "").await, 403, "write access to exchange 'amq.fanout' in vhost 'app'");

    // read: get and consume on alice.* queues only; binding needs read on the exchange.
    let ch = conn.create_channel().await.unwrap();
    let got = ch.basic_get("alice.q".into(), BasicGetOptions { no_ack: true }).await.unwrap();
    assert!(got.is_some());
    refused(
        ch.queue_bind(
            "alice.q".into(),
            "amq.direct".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await,
        403,
        "read access to exchange 'amq.direct' in vhost 'app' refused for user 'alice'",
    );
    let (_c2, carol_ch) = {
        // carol cannot log in with a password; use guest-like full rights via a new user.
        server
            .state
            .change_access(Change::PutUser(access::model::User {
                name: "bob".into(),
                password_hash: access::password::hash_password(access::model::HashingAlgorithm::Sha256, "bob-pw"),
                hashing_algorithm: access::model::HashingAlgorithm::Sha256,
                tags: vec![],
                limits: UserLimits::default(),
            }))
            .unwrap();
        server
            .state
            .change_access(Change::PutPermission(Permission {
                user: "bob".into(),
                vhost: "app".into(),
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            }))
            .unwrap();
        open(&server, "bob", "bob-pw", "app").await
    };
    carol_ch.queue_declare("bob.q".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    refused(
        ch.basic_consume("bob.q".into(), "".into(), BasicConsumeOptions::default(), FieldTable::default()).await,
        403,
        "read access to queue 'bob.q' in vhost 'app' refused for user 'alice'",
    );
    let ch = conn.create_channel().await.unwrap();
    refused(ch.queue_purge("bob.q".into(), Default::default()).await, 403, "read access to queue 'bob.q'");
    let ch = conn.create_channel().await.unwrap();
    refused(ch.queue_delete("bob.q".into(), Default::default()).await, 403, "configure access to queue 'bob.q'");
    // The connection survived every channel error.
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_permissions_check_routing_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = node(dir.path()).await;
    let (conn, ch) = open(&server, "alice", "test12", "app").await;
    ch.queue_declare("alice.logs".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    // write: `^{username}\.` expands to ^alice\.
    publish(&ch, "amq.topic", "alice.anything").await.unwrap();
    refused(
        publish(&ch, "amq.topic", "bob.anything").await,
        403,
        "write access to topic 'bob.anything' in exchange 'amq.topic' in vhost 'app' refused for user 'alice'",
    );
    // read: binding keys on the topic exchange.
    let ch = conn.create_channel().await.unwrap();
    ch.queue_bind(
        "alice.logs".into(),
        "amq.topic".into(),
        "alice.logs.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    refused(
        ch.queue_bind(
            "alice.logs".into(),
            "amq.topic".into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await,
        403,
        "read access to topic '#' in exchange 'amq.topic'",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_changes_apply_to_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let server = node(dir.path()).await;
    let (conn, ch) = open(&server, "alice", "test12", "app").await;
    ch.queue_declare("alice.q".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    publish(&ch, "", "alice.q").await.unwrap();
    // Revoke write: the very next publish on the same channel is refused.
    server
        .state
        .change_access(Change::PutPermission(Permission {
            user: "alice".into(),
            vhost: "app".into(),
            configure: "^alice\\.".into(),
            write: "^$".into(),
            read: ".*".into(),
        }))
        .unwrap();
    refused(publish(&ch, "", "alice.q").await, 403, "write access to exchange 'amq.default' in vhost 'app'");
    // Clearing permissions leaves no access at all.
    server.state.change_access(Change::DeletePermission { user: "alice".into(), vhost: "app".into() }).unwrap();
    let ch = conn.create_channel().await.unwrap();
    refused(
        ch.basic_get("alice.q".into(), BasicGetOptions::default()).await,
        403,
        "read access to queue 'alice.q' in vhost 'app' refused for user 'alice'",
    );
    refused(login(&server, "alice", "test12", "app").await, 530, "access to vhost 'app' refused for user 'alice'");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_connections_and_channels() {
    let dir = tempfile::tempdir().unwrap();
    let server = node(dir.path()).await;
    // erin: max-connections 1, max-channels 2 (user limits from the file).
    let erin = login(&server, "erin", "test12", "small").await.unwrap();
    refused(
        login(&server, "erin", "test12", "small").await,
        530,
        "connection refused for user 'erin': user connection limit (1) is reached",
    );
    assert_eq!(
        server.state.with_access(|d| d.user("erin").map(|u| u.limits.clone())),
        Some(UserLimits { max_connections: Some(1), max_channels: Some(2) })
    );
    // (lapin closes a channel when its handle is dropped: keep them.)
    let _c1 = erin.create_channel().await.unwrap();
    let _c2 = erin.create_channel().await.unwrap();
    refused(
        erin.create_channel().await,
        530,
        "number of channels opened for user 'erin' has reached the maximum allowed user limit of 2",
    );
    drop(erin);
    // A vhost connection limit.
    server
        .state
        .change_access(Change::SetVhostLimits {
            vhost: "/".into(),
            limits: VhostLimits { max_connections: Some(1), max_queues: None },
        })
        .unwrap();
    let _g = login(&server, "guest", "guest", "/").await.unwrap();
    refused(
        login(&server, "guest", "guest", "/").await,
        530,
        "access to vhost '/' refused for user 'guest': connection limit (1) is reached",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_vhost_closes_its_connections_and_deletes_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let server = node(dir.path()).await;
    let (conn, ch) = open(&server, "alice", "test12", "app").await;
    ch.confirm_select(Default::default()).await.unwrap();
    let persistent = BasicProperties::default().with_delivery_mode(2);
    ch.basic_publish("alice.events".into(), "".into(), BasicPublishOptions::default(), b"kept", persistent)
        .await
        .unwrap()
        .await
        .unwrap();
    let (guest, _gch) = open(&server, "guest", "guest", "/").await;
    let queue_dirs = || std::fs::read_dir(dir.path().join("data/queues")).unwrap().count();
    assert_eq!(queue_dirs(), 1, "alice.jobs is durable");

    server.state.change_access(Change::DeleteVhost("app".into())).unwrap();
    // The vhost's connections are closed with 320; others are not.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while conn.status().connected() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!conn.status().connected());
    assert!(guest.status().connected());
    assert_eq!(queue_dirs(), 0, "the vhost's queue files are deleted");
    refused(login(&server, "alice", "test12", "app").await, 530, "vhost app not found");
    // Its permissions went with it.
    assert!(server.state.with_access(|d| d.permissions().all(|p| p.vhost != "app")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_survives_a_restart_and_definitions_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = node(dir.path()).await;
    server.state.change_access(Change::PutVhost(access::model::Vhost::named("later"))).unwrap();
    server
        .state
        .change_access(Change::PutPermission(Permission {
            user: "alice".into(),
            vhost: "later".into(),
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        }))
        .unwrap();
    let exported = server.state.export_definitions();
    server.stop().await;

    // Restart without the definitions file: everything came from the data dir.
    let server = TestServer::start_persistent_with(Config { data_dir: data_dir.clone(), ..Config::default() }).await;
    open(&server, "alice", "test12", "later").await;
    let (_c, ch) = open(&server, "alice", "test12", "app").await;
    ch.queue_declare(
        "alice.jobs".into(),
        QueueDeclareOptions { passive: true, ..Default::default() },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let again = server.state.export_definitions();
    assert_eq!(again.to_json_pretty(), exported.to_json_pretty());
    server.stop().await;

    // Export → wipe → import → identical.
    let fresh = dir.path().join("fresh");
    let file = dir.path().join("exported.json");
    std::fs::write(&file, exported.to_json_pretty()).unwrap();
    let server = TestServer::start_persistent_with(Config {
        data_dir: fresh,
        load_definitions: Some(file),
        ..Config::default()
    })
    .await;
    assert_eq!(server.state.export_definitions().to_json_pretty(), exported.to_json_pretty());
    open(&server, "alice", "test12", "later").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_definitions_file_changes_nothing_and_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let bad = DEFINITIONS.replace("\"^alice\\\\.\", \"write\"", "\"^(alice\", \"write\"");
    assert_ne!(bad, DEFINITIONS);
    let defs = dir.path().join("bad.json");
    std::fs::write(&defs, &bad).unwrap();
    let data_dir = dir.path().join("data");
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let err = server::ServerState::open(
        Config { data_dir: data_dir.clone(), load_definitions: Some(defs), ..Config::default() },
        rx,
    )
    .err()
    .expect("an invalid regex must refuse the start");
    assert!(err.to_string().contains("importing"), "{err}");
    // Nothing of the file was applied: no users from it exist after a normal start.
    let server = TestServer::start_persistent_with(Config { data_dir, ..Config::default() }).await;
    assert!(server.state.with_access(|d| d.user("alice").is_none()));
}

fn policy(name: &str, pattern: &str, definition: serde_json::Value) -> access::model::Policy {
    access::model::Policy {
        vhost: "/".into(),
        name: name.into(),
        pattern: pattern.into(),
        apply_to: access::model::ApplyTo::Queues,
        priority: 0,
        definition: definition.as_object().unwrap().clone(),
    }
}

async fn ready(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(queue.into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
        .await
        .unwrap()
        .message_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_change_live_queues() {
    let server = TestServer::start().await;
    let (_c, ch) = open(&server, "guest", "guest", "/").await;
    ch.confirm_select(Default::default()).await.unwrap();
    ch.queue_declare("pol.q".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    ch.queue_declare("pol.dlq".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    for _ in 0..10 {
        publish(&ch, "", "pol.q").await.unwrap();
    }
    // max-length by policy: the excess goes at once (drop-head), dead-lettered when the
    // policy also names a dead-letter exchange.
    let def = serde_json::json!({"max-length": 3, "dead-letter-exchange": "", "dead-letter-routing-key": "pol.dlq"});
    server.state.change_access(Change::PutPolicy(policy("cap", "^pol\\.q$", def))).unwrap();
    assert_eq!(ready(&ch, "pol.q").await, 3);
    assert_eq!(ready(&ch, "pol.dlq").await, 7);
    // A TTL policy: new messages expire and are dead-lettered through the policy's DLX.
    let def = serde_json::json!({"message-ttl": 50, "dead-letter-exchange": "", "dead-letter-routing-key": "pol.dlq"});
    server.state.change_access(Change::PutPolicy(policy("cap", "^pol\\.q$", def))).unwrap();
    ch.queue_purge("pol.q".into(), Default::default()).await.unwrap();
    publish(&ch, "", "pol.q").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ready(&ch, "pol.dlq").await < 8 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((ready(&ch, "pol.q").await, ready(&ch, "pol.dlq").await), (0, 8));
    // The queue knows its policy; without it the declared behaviour returns.
    let q = server.state.vhost("/").unwrap().queues().into_iter().find(|q| q.name == "pol.q").unwrap();
    assert_eq!(q.policy_name().as_deref(), Some("cap"));
    server.state.change_access(Change::DeletePolicy { vhost: "/".into(), name: "cap".into() }).unwrap();
    assert_eq!(q.policy_name(), None);
    for _ in 0..5 {
        publish(&ch, "", "pol.q").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(ready(&ch, "pol.q").await, 5);
    // An operator policy beats a larger x-max-length: the stricter value wins.
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), lapin::types::AMQPValue::LongLongInt(100));
    ch.queue_declare("pol.args".into(), QueueDeclareOptions::default(), args).await.unwrap();
    let mut op = policy("op", "^pol\\.args$", serde_json::json!({"max-length": 2}));
    op.priority = 1;
    server.state.change_access(Change::PutOperatorPolicy(op)).unwrap();
    for _ in 0..4 {
        publish(&ch, "", "pol.args").await.unwrap();
    }
    assert_eq!(ready(&ch, "pol.args").await, 2);
    // A vhost queue limit.
    server
        .state
        .change_access(Change::SetVhostLimits {
            vhost: "/".into(),
            limits: VhostLimits { max_connections: None, max_queues: Some(3) },
        })
        .unwrap();
    refused(
        ch.queue_declare("pol.more".into(), QueueDeclareOptions::default(), FieldTable::default()).await,
        406,
        "cannot declare queue 'pol.more': queue limit in vhost '/' (3) is reached",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_that_conflicts_with_the_node_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = node(dir.path()).await;
    let (_c, ch) = open(&server, "alice", "test12", "app").await;
    // alice.jobs exists (from the definitions file) as a durable queue without arguments.
    let conflicting = serde_json::json!({
        "users": [{"name": "zoe", "password_hash": "", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ""}],
        "vhosts": [{"name": "zoo"}],
        "queues": [{"name": "alice.jobs", "vhost": "app", "durable": true, "auto_delete": false,
                    "arguments": {"x-max-length": 5}}]
    });
    let err = server.state.import_definitions(conflicting.to_string().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("inequivalent arg 'x-max-length'"), "{err}");
    let missing_end = serde_json::json!({
        "users": [{"name": "zoe", "password_hash": "", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ""}],
        "bindings": [{"source": "amq.direct", "vhost": "app", "destination": "nope", "destination_type": "queue",
                      "routing_key": "k", "arguments": {}}]
    });
    let err = server.state.import_definitions(missing_end.to_string().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("no queue 'nope'"), "{err}");
    // Neither import left anything behind, in memory or on disk.
    assert!(server.state.with_access(|d| d.user("zoe").is_none() && d.vhost("zoo").is_none()));
    let q = server.state.vhost("app").unwrap().queue("alice.jobs", 0).unwrap();
    assert_eq!(q.effective_args().max_length, Some(100), "still the queue it was");
    drop(ch);
    let data_dir = dir.path().join("data");
    server.stop().await;
    let server = TestServer::start_persistent_with(Config { data_dir, ..Config::default() }).await;
    assert!(server.state.with_access(|d| d.user("zoe").is_none() && d.vhost("zoo").is_none()));
    // A good import after them: all of it, also after a restart.
    let good = serde_json::json!({
        "vhosts": [{"name": "zoo"}],
        "queues": [{"name": "animals", "vhost": "zoo", "durable": true, "auto_delete": false, "arguments": {}}],
        "exchanges": [{"name": "feed", "vhost": "zoo", "type": "fanout", "durable": true, "auto_delete": false,
                       "internal": false, "arguments": {}}],
        "bindings": [{"source": "feed", "vhost": "zoo", "destination": "animals", "destination_type": "queue",
                      "routing_key": "", "arguments": {}}]
    });
    server.state.import_definitions(good.to_string().as_bytes()).unwrap();
    let data_dir = dir.path().join("data");
    server.stop().await;
    let server = TestServer::start_persistent_with(Config { data_dir, ..Config::default() }).await;
    let vh = server.state.vhost("zoo").expect("vhost zoo");
    assert!(vh.queue("animals", 0).is_ok());
    let feed = vh.exchange("feed").expect("exchange feed");
    assert_eq!(feed.binding_count(), 1);
}
