//! The management API's access group (users, vhosts, permissions, policies, limits,
//! definitions, health checks): `rabbitmq_http_client` (what rabbitmqadmin v2 is built on)
//! for every endpoint it covers, reqwest for tag rules and error shapes, lapin to see the
//! changes take effect over AMQP.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use mgmt::node::ListenerInfo;
use rabbitmq_http_client::api::Client;
use rabbitmq_http_client::commons::{PolicyTarget, SupportedProtocol, UserLimitTarget, VirtualHostLimitTarget};
use rabbitmq_http_client::password_hashing;
use rabbitmq_http_client::requests::{
    EnforcedLimitParams, Permissions, PolicyParams, TopicPermissions, UserParams, VirtualHostParams,
};
use serde_json::{Value, json};

use crate::common::TestServer;

type Http = Client<String, &'static str, &'static str>;

fn admin(server: &TestServer) -> Http {
    Client::new(server.api(), "guest", "guest")
}

/// The management API with the node's AMQP and HTTP listeners registered (as the binary
/// does), for the listener health checks.
async fn start() -> TestServer {
    let server = TestServer::start().await.with_management().await;
    let mgmt = server.mgmt.expect("management");
    server.state.set_listeners(vec![
        ListenerInfo { protocol: "amqp".into(), ip_address: "127.0.0.1".into(), port: server.addr.port() },
        ListenerInfo { protocol: "http".into(), ip_address: "127.0.0.1".into(), port: mgmt.port() },
    ]);
    server
}

fn hash(password: &str) -> String {
    password_hashing::base64_encoded_salted_password_hash_sha256(&password_hashing::salt(), password)
}

/// A raw request as `user` (password = user name); returns the status and the JSON body
/// (Null when there is none).
async fn call(server: &TestServer, method: &str, path: &str, user: &str, body: Option<Value>) -> (u16, Value) {
    let http = reqwest::Client::new();
    let url = format!("{}{path}", server.api());
    let mut req = http.request(method.parse().unwrap(), url).basic_auth(user, Some(user));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() })
}

fn not_found_body() -> Value {
    json!({"error": "Object Not Found", "reason": "Not Found"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mgmt_access_users_vhosts_and_permissions_with_rabbitmq_http_client() {
    let server = start().await;
    let c = admin(&server);
    // Users.
    let h = hash("s3cret");
    c.create_user(&UserParams::new("alice", &h, "management,policymaker")).await.unwrap();
    let alice = c.get_user("alice").await.unwrap();
    assert_eq!(alice.tags.0, vec!["management", "policymaker"]);
    assert_eq!(alice.password_hash.as_ref().map(|p| p.as_str()), Some(h.as_str()));
    assert!(c.list_users().await.unwrap().iter().any(|u| u.name == "alice"));
    assert!(c.list_users_without_permissions().await.unwrap().iter().any(|u| u.name == "alice"));
    assert!(c.get_user("nobody").await.unwrap_err().is_not_found());
    // Vhosts.
    let params = VirtualHostParams::named("app").with_description("the app").with_tags(vec!["prod", "eu"]);
    c.create_vhost(&params).await.unwrap();
    let v = c.get_vhost("app").await.unwrap();
    assert_eq!(v.description.as_deref(), Some("the app"));
    assert_eq!(v.tags.unwrap().0, vec!["prod", "eu"]);
    let names: Vec<String> = c.list_vhosts().await.unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(names, vec!["/", "app"]);
    // Permissions.
    let p = Permissions { user: "alice", vhost: "app", configure: "^alice\\.", write: ".*", read: ".*" };
    c.declare_permissions(&p).await.unwrap();
    let got = c.get_permissions("app", "alice").await.unwrap();
    assert_eq!((got.configure.as_str(), got.write.as_str()), ("^alice\\.", ".*"));
    // Two: alice's, and guest's full ones (RabbitMQ grants them to a vhost's creator).
    let mut in_app: Vec<(String, String)> =
        c.list_permissions_in("app").await.unwrap().into_iter().map(|p| (p.user, p.configure)).collect();
    in_app.sort();
    assert_eq!(in_app, vec![("alice".into(), "^alice\\.".into()), ("guest".into(), ".*".into())]);
    assert_eq!(c.list_permissions_of("alice").await.unwrap()[0].vhost, "app");
    assert!(c.list_permissions().await.unwrap().iter().any(|p| p.user == "guest" && p.vhost == "/"));
    assert!(!c.list_users_without_permissions().await.unwrap().iter().any(|u| u.name == "alice"));
    // Topic permissions: DELETE removes all of the user's in the vhost.
    for ex in ["amq.topic", "logs"] {
        let t = TopicPermissions { user: "alice", vhost: "app", exchange: ex, write: "^a\\.", read: ".*" };
        c.declare_topic_permissions(&t).await.unwrap();
    }
    assert_eq!(c.get_topic_permissions_of("app", "alice").await.unwrap().exchange, "amq.topic");
    assert_eq!(c.list_topic_permissions().await.unwrap().len(), 2);
    assert_eq!(c.list_topic_permissions_in("app").await.unwrap().len(), 2);
    assert_eq!(c.list_topic_permissions_of("alice").await.unwrap().len(), 2);
    c.clear_topic_permissions("app", "alice", false).await.unwrap();
    assert!(c.list_topic_permissions_of("alice").await.unwrap().is_empty());
    c.clear_permissions("app", "alice", false).await.unwrap();
    assert!(c.get_permissions("app", "alice").await.unwrap_err().is_not_found());
    // Deleting; bulk delete skips unknown names.
    c.create_user(&UserParams::new("bob", &hash("b"), "")).await.unwrap();
    c.create_user(&UserParams::new("carol", &hash("c"), "")).await.unwrap();
    c.delete_users(vec!["bob", "carol", "ghost"]).await.unwrap();
    assert!(c.get_user("bob").await.unwrap_err().is_not_found());
    c.delete_user("alice", false).await.unwrap();
    assert!(c.delete_user("alice", false).await.unwrap_err().is_not_found());
    c.delete_user("alice", true).await.unwrap();
    c.delete_vhost("app", false).await.unwrap();
    assert!(c.get_vhost("app").await.unwrap_err().is_not_found());
    assert!(server.state.vhost("app").is_none(), "the broker side went with it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mgmt_access_policies_and_limits_with_rabbitmq_http_client() {
    let server = start().await;
    let c = admin(&server);
    let mut def = serde_json::Map::new();
    def.insert("max-length".into(), json!(10));
    let p = PolicyParams {
        vhost: "/",
        name: "cap",
        pattern: "^cap\\.",
        apply_to: PolicyTarget::Queues,
        priority: 5,
        definition: def.clone(),
    };
    c.declare_policy(&p).await.unwrap();
    let got = c.get_policy("/", "cap").await.unwrap();
    assert_eq!((got.pattern.as_str(), got.priority, got.apply_to), ("^cap\\.", 5, PolicyTarget::Queues));
    assert_eq!(got.definition.get("max-length"), Some(&json!(10)));
    assert_eq!(c.list_policies().await.unwrap().len(), 1);
    assert_eq!(c.list_policies_in("/").await.unwrap().len(), 1);
    c.declare_operator_policy(&PolicyParams { name: "op", ..p }).await.unwrap();
    assert_eq!(c.get_operator_policy("/", "op").await.unwrap().name, "op");
    assert_eq!(c.list_operator_policies().await.unwrap().len(), 1);
    assert_eq!(c.list_operator_policies_in("/").await.unwrap().len(), 1);
    c.delete_operator_policy("/", "op", false).await.unwrap();
    c.delete_policy("/", "cap", false).await.unwrap();
    assert!(c.get_policy("/", "cap").await.unwrap_err().is_not_found());
    assert!(c.list_policies().await.unwrap().is_empty());
    // Vhost limits.
    c.set_vhost_limit("/", EnforcedLimitParams::new(VirtualHostLimitTarget::MaxQueues, 50)).await.unwrap();
    c.set_vhost_limit("/", EnforcedLimitParams::new(VirtualHostLimitTarget::MaxConnections, -1)).await.unwrap();
    let all = c.list_all_vhost_limits().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].limits.get("max-queues"), Some(&json!(50)));
    assert_eq!(all[0].limits.get("max-connections"), None, "-1 is no limit");
    assert_eq!(c.list_vhost_limits("/").await.unwrap().len(), 1);
    c.clear_vhost_limit("/", VirtualHostLimitTarget::MaxQueues).await.unwrap();
    assert!(c.list_vhost_limits("/").await.unwrap().is_empty());
    // User limits.
    c.set_user_limit("guest", EnforcedLimitParams::new(UserLimitTarget::MaxChannels, 7)).await.unwrap();
    let ul = c.list_user_limits("guest").await.unwrap();
    assert_eq!(ul[0].limits.get("max-channels"), Some(&json!(7)));
    assert_eq!(c.list_all_user_limits().await.unwrap().len(), 1);
    c.clear_user_limit("guest", UserLimitTarget::MaxChannels).await.unwrap();
    assert!(c.list_all_user_limits().await.unwrap().is_empty());
    // Parameters: none; the cluster name is the one global parameter.
    assert!(c.list_runtime_parameters().await.unwrap().is_empty());
    let globals = c.list_global_runtime_parameters().await.unwrap();
    assert_eq!(globals[0].name, "cluster_name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mgmt_access_definitions_round_trip_with_rabbitmq_http_client() {
    let server = start().await;
    let c = admin(&server);
    c.create_vhost(&VirtualHostParams::named("app")).await.unwrap();
    let (_, _) = call(
        &server,
        "PUT",
        "/policies/app/ttl",
        "guest",
        Some(json!({"pattern": ".*", "definition": {"message-ttl": 1000}, "apply-to": "queues"})),
    )
    .await;
    let defs = c.export_cluster_wide_definitions_as_data().await.unwrap();
    assert!(defs.users.iter().any(|u| u.name == "guest"));
    assert!(defs.virtual_hosts.iter().any(|v| v.name == "app"));
    assert_eq!(defs.policies.len(), 1);
    let one = c.export_vhost_definitions_as_data("app").await.unwrap();
    assert_eq!(one.policies[0].name, "ttl");
    let raw: Value = serde_json::from_str(&c.export_vhost_definitions_as_string("app").await.unwrap()).unwrap();
    assert_eq!(raw["rabbitmq_definition_format"], "single_virtual_host");
    assert!(raw["policies"][0].get("vhost").is_none(), "single-vhost entries have no vhost field");
    // Import a cluster-wide file with a new user, vhost, permission and queue.
    let file = json!({
        "users": [{"name": "imported", "password_hash": hash("pw"), "hashing_algorithm": "rabbit_password_hashing_sha256",
                   "tags": ["management"], "limits": {}}],
        "vhosts": [{"name": "v2", "limits": [], "metadata": {"description": "second", "tags": []}}],
        "permissions": [{"user": "imported", "vhost": "v2", "configure": ".*", "write": ".*", "read": ".*"}],
        "queues": [{"name": "jobs", "vhost": "v2", "durable": true, "auto_delete": false, "arguments": {}}],
    });
    c.import_cluster_wide_definitions(file).await.unwrap();
    assert_eq!(c.get_vhost("v2").await.unwrap().description.as_deref(), Some("second"));
    assert_eq!(c.get_permissions("v2", "imported").await.unwrap().read, ".*");
    assert!(server.state.vhost("v2").unwrap().queues().iter().any(|q| q.name == "jobs"));
    // A single-vhost file lands in the vhost of the path.
    let single = json!({"policies": [{"name": "cap", "pattern": "^x", "apply-to": "queues", "priority": 0,
                                      "definition": {"max-length": 1}}],
                        "queues": [{"name": "q1", "durable": true, "auto_delete": false, "arguments": {}}]});
    c.import_vhost_definitions("v2", single).await.unwrap();
    assert_eq!(c.get_policy("v2", "cap").await.unwrap().pattern, "^x");
    assert!(server.state.vhost("v2").unwrap().queues().iter().any(|q| q.name == "q1"));
    // ?download= makes it an attachment.
    let r = reqwest::Client::new()
        .get(format!("{}/definitions?download=warren.json", server.api()))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-disposition"], "attachment; filename=\"warren.json\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mgmt_access_invalid_definitions_change_nothing() {
    let server = start().await;
    let before = call(&server, "GET", "/definitions", "guest", None).await.1;
    // The second permission names a bad regex: nothing of the file is applied.
    let file = json!({
        "users": [{"name": "x", "password_hash": hash("pw"), "tags": [], "limits": {}}],
        "vhosts": [{"name": "vx"}],
        "permissions": [{"user": "x", "vhost": "vx", "configure": ".*", "write": ".*", "read": ".*"},
                        {"user": "x", "vhost": "vx", "configure": "(", "write": ".*", "read": ".*"}],
    });
    let (status, body) = call(&server, "POST", "/definitions", "guest", Some(file)).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "bad_request");
    assert!(body["reason"].as_str().unwrap().contains("'('"), "{body}");
    let (status, body) = call(&server, "POST", "/definitions", "guest", Some(json!("not an object"))).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    let (status, _) = call(&server, "POST", "/definitions/nowhere", "guest", Some(json!({}))).await;
    assert_eq!(status, 404);
    let after = call(&server, "GET", "/definitions", "guest", None).await.1;
    assert_eq!(before, after);
    assert!(server.state.vhost("vx").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mgmt_access_health_checks() {
    let server = start().await;
    let c = admin(&server);
    c.health_check_cluster_wide_alarms().await.unwrap();
    c.health_check_local_alarms().await.unwrap();
    c.health_check_if_node_is_quorum_critical().await.unwrap();
    c.health_check_port_listener(server.addr.port()).await.unwrap();
    c.health_check_protocol_listener(SupportedProtocol::AMQP).await.unwrap();
    let e = c.health_check_protocol_listener(SupportedProtocol::MQTT).await.unwrap_err();
    assert!(matches!(e, rabbitmq_http_client::error::Error::HealthCheckFailed { .. }), "{e:?}");
    let e = c.health_check_port_listener(1).await.unwrap_err();
    assert!(matches!(e, rabbitmq_http_client::error::Error::HealthCheckFailed { .. }), "{e:?}");
    for path in [
        "/health/checks/virtual-hosts",
        "/health/checks/node-is-mirror-sync-critical",
        "/health/checks/certificate-expiration/1/months",
        "/aliveness-test/%2F",
    ] {
        assert_eq!(call(&server, "GET", path, "guest", None).await, (200, json!({"status": "ok"})), "{path}");
    }
    // Unauthenticated, as RabbitMQ's.
    let r = reqwest::get(format!("{}/health/checks/below-node-connection-limit", server.api())).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["limit"], "infinity");
    for path in ["is-in-service", "ready-to-serve-clients"] {
        let r = reqwest::get(format!("{}/health/checks/{path}", server.api())).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    assert_eq!(call(&server, "GET", "/health/checks/certificate-expiration/1/fortnights", "guest", None).await.0, 400);
    assert_eq!(call(&server, "GET", "/aliveness-test/nowhere", "guest", None).await, (404, not_found_body()));
    // An alarm fails the alarm checks with RabbitMQ's body.
    server.state.force_alarms(server::alarms::Alarms { memory: true, disk: false });
    let (status, body) = call(&server, "GET", "/health/checks/alarms", "guest", None).await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "failed");
    assert_eq!(body["reason"], "There are alarms in effect in the cluster");
    assert_eq!(body["alarms"][0]["resource"], "memory");
    let e = c.health_check_local_alarms().await.unwrap_err();
    assert!(matches!(e, rabbitmq_http_client::error::Error::HealthCheckFailed { .. }), "{e:?}");
}

/// Users with each tag (password = name) and permissions in `/` for all but `outsider`.
async fn tagged_users(server: &TestServer) {
    for (name, tags) in [
        ("admin", "administrator"),
        ("mon", "monitoring"),
        ("pm", "policymaker"),
        ("mgr", "management"),
        ("outsider", "policymaker"),
        ("plain", ""),
    ] {
        let (s, _) =
            call(server, "PUT", &format!("/users/{name}"), "guest", Some(json!({"password": name, "tags": tags})))
                .await;
        assert_eq!(s, 201, "{name}");
        if name != "outsider" {
            let perm = json!({"configure": ".*", "write": ".*", "read": ".*"});
            assert_eq!(call(server, "PUT", &format!("/permissions/%2F/{name}"), "guest", Some(perm)).await.0, 201);
        }
    }
    assert_eq!(call(server, "PUT", "/vhosts/hidden", "guest", None).await.0, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mgmt_access_tag_rules() {
    let server = start().await;
    tagged_users(&server).await;
    let refused = |r: (u16, Value)| r.0 == 401 && r.1["error"] == "not_authorised";
    // No management tag: refused everywhere.
    assert!(refused(call(&server, "GET", "/vhosts", "plain", None).await));
    // Users and permissions: administrator only.
    assert_eq!(call(&server, "GET", "/users", "admin", None).await.0, 200);
    for u in ["mon", "pm", "mgr"] {
        assert!(refused(call(&server, "GET", "/users", u, None).await), "{u}");
        assert!(refused(call(&server, "PUT", "/vhosts/new", u, None).await), "{u}");
        assert!(refused(call(&server, "GET", "/definitions", u, None).await), "{u}");
    }
    assert_eq!(call(&server, "PUT", "/vhosts/new", "admin", None).await.0, 201);
    assert_eq!(call(&server, "PUT", "/vhosts/new", "admin", Some(json!({"description": "d"}))).await.0, 204);
    // Vhosts: monitoring sees all; management only those it has permissions in.
    let names = |v: Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(names(call(&server, "GET", "/vhosts", "mon", None).await.1), vec!["/", "hidden", "new"]);
    assert_eq!(names(call(&server, "GET", "/vhosts", "mgr", None).await.1), vec!["/"]);
    assert!(refused(call(&server, "GET", "/vhosts/hidden", "mgr", None).await));
    assert_eq!(call(&server, "GET", "/whoami", "mgr", None).await.1["name"], "mgr");
    // Policies: policymaker in its vhosts, administrator anywhere; operator policies: admin.
    let pol = json!({"pattern": "^p", "definition": {"max-length": 5}});
    assert_eq!(call(&server, "PUT", "/policies/%2F/p1", "pm", Some(pol.clone())).await.0, 201);
    assert_eq!(call(&server, "PUT", "/policies/%2F/p1", "pm", Some(pol.clone())).await.0, 204);
    assert!(refused(call(&server, "PUT", "/policies/%2F/p2", "outsider", Some(pol.clone())).await));
    assert!(refused(call(&server, "PUT", "/policies/%2F/p2", "mgr", Some(pol.clone())).await));
    assert!(refused(call(&server, "PUT", "/policies/%2F/p2", "mon", Some(pol.clone())).await));
    assert_eq!(call(&server, "PUT", "/policies/hidden/p2", "admin", Some(pol.clone())).await.0, 201);
    assert_eq!(call(&server, "GET", "/policies", "pm", None).await.1.as_array().unwrap().len(), 1, "own vhosts");
    assert_eq!(call(&server, "GET", "/policies", "mon", None).await.1.as_array().unwrap().len(), 2);
    assert!(refused(call(&server, "GET", "/policies", "mgr", None).await));
    assert!(refused(call(&server, "PUT", "/operator-policies/%2F/o", "pm", Some(pol.clone())).await));
    assert_eq!(call(&server, "PUT", "/operator-policies/%2F/o", "admin", Some(pol)).await.0, 201);
    assert_eq!(call(&server, "DELETE", "/policies/%2F/p1", "pm", None).await.0, 204);
    // Limits: administrator writes; monitoring reads.
    let lim = json!({"value": 10});
    assert!(refused(call(&server, "PUT", "/vhost-limits/%2F/max-queues", "pm", Some(lim.clone())).await));
    // RabbitMQ answers 204 to every limit PUT (new, changed, or -1 for none) and to a
    // DELETE of a limit that is not set.
    assert_eq!(call(&server, "PUT", "/vhost-limits/%2F/max-queues", "admin", Some(lim.clone())).await.0, 204);
    assert_eq!(call(&server, "PUT", "/vhost-limits/%2F/max-queues", "admin", Some(lim.clone())).await.0, 204);
    let none = json!({"value": -1});
    assert_eq!(call(&server, "PUT", "/vhost-limits/%2F/max-connections", "admin", Some(none.clone())).await.0, 204);
    assert_eq!(call(&server, "DELETE", "/vhost-limits/%2F/max-connections", "admin", None).await.0, 204);
    assert_eq!(call(&server, "DELETE", "/user-limits/mgr/max-connections", "admin", None).await.0, 204);
    assert_eq!(call(&server, "PUT", "/user-limits/mgr/max-channels", "admin", Some(none)).await.0, 204);
    assert_eq!(call(&server, "PUT", "/user-limits/mgr/max-channels", "admin", Some(lim)).await.0, 204);
    assert_eq!(call(&server, "DELETE", "/vhost-limits/no-such-vhost/max-queues", "admin", None).await.0, 404);
    assert_eq!(call(&server, "GET", "/user-limits", "mon", None).await.1.as_array().unwrap().len(), 1);
    assert!(refused(call(&server, "GET", "/user-limits", "mgr", None).await));
    assert_eq!(call(&server, "GET", "/user-limits/mgr", "mgr", None).await.0, 200, "its own");
    // Health checks: any management user.
    assert_eq!(call(&server, "GET", "/health/checks/alarms", "mgr", None).await.0, 200);
    assert!(refused(call(&server, "GET", "/health/checks/alarms", "plain", None).await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mgmt_access_error_shapes() {
    let server = start().await;
    let bad = |r: &(u16, Value)| r.0 == 400 && r.1["error"] == "bad_request";
    // 404 bodies for unknown objects.
    for path in [
        "/users/ghost",
        "/vhosts/ghost",
        "/permissions/%2F/ghost",
        "/topic-permissions/%2F/guest",
        "/policies/%2F/ghost",
        "/operator-policies/%2F/ghost",
        "/policies/ghost",
        "/vhost-limits/ghost",
        "/parameters/federation-upstream/%2F/x",
        "/global-parameters/ghost",
    ] {
        assert_eq!(call(&server, "GET", path, "guest", None).await, (404, not_found_body()), "{path}");
    }
    for path in ["/users/ghost", "/vhosts/ghost", "/permissions/%2F/ghost", "/policies/%2F/ghost"] {
        assert_eq!(call(&server, "DELETE", path, "guest", None).await, (404, not_found_body()), "{path}");
    }
    // 400 with a reason.
    let r = call(
        &server,
        "PUT",
        "/permissions/ghost/guest",
        "guest",
        Some(json!({"configure": "", "write": "", "read": ""})),
    )
    .await;
    assert_eq!(r, (400, json!({"error": "bad_request", "reason": "vhost_or_user_not_found"})));
    let r = call(&server, "PUT", "/permissions/%2F/guest", "guest", Some(json!({"configure": ".*"}))).await;
    assert!(bad(&r) && r.1["reason"].as_str().unwrap().contains("write"), "{r:?}");
    let r = call(
        &server,
        "PUT",
        "/permissions/%2F/guest",
        "guest",
        Some(json!({"configure": "(", "write": "", "read": ""})),
    )
    .await;
    assert!(bad(&r), "{r:?}");
    let r = call(&server, "PUT", "/policies/%2F/p", "guest", Some(json!({"pattern": "x"}))).await;
    assert!(bad(&r) && r.1["reason"].as_str().unwrap().contains("definition"), "{r:?}");
    let r = call(
        &server,
        "PUT",
        "/policies/%2F/p",
        "guest",
        Some(json!({"pattern": "x", "definition": {"max-length": "lots"}})),
    )
    .await;
    assert!(bad(&r), "{r:?}");
    let r = call(
        &server,
        "PUT",
        "/policies/%2F/p",
        "guest",
        Some(json!({"pattern": "x", "definition": {}, "apply-to": "cars"})),
    )
    .await;
    assert!(bad(&r) && r.1["reason"].as_str().unwrap().contains("cars"), "{r:?}");
    let r = call(&server, "PUT", "/vhost-limits/%2F/max-bananas", "guest", Some(json!({"value": 1}))).await;
    assert!(bad(&r), "{r:?}");
    let r = call(&server, "PUT", "/vhost-limits/%2F/max-queues", "guest", Some(json!({"value": "many"}))).await;
    assert!(bad(&r), "{r:?}");
    let r = call(&server, "PUT", "/users/u", "guest", Some(json!({"password_hash": "AAAA", "tags": ""}))).await;
    assert!(bad(&r), "{r:?}");
    let r =
        call(&server, "PUT", "/users/u", "guest", Some(json!({"password": "x", "hashing_algorithm": "rot13"}))).await;
    assert!(bad(&r) && r.1["reason"].as_str().unwrap().contains("rot13"), "{r:?}");
    let r = call(&server, "PUT", "/vhosts/v", "guest", Some(json!({"default_queue_type": "fancy"}))).await;
    assert!(bad(&r), "{r:?}");
    let r = call(&server, "PUT", "/global-parameters/cluster_name", "guest", Some(json!({"value": "x"}))).await;
    assert!(bad(&r), "{r:?}");
    // Malformed JSON.
    let r = reqwest::Client::new()
        .put(format!("{}/users/u", server.api()))
        .basic_auth("guest", Some("guest"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "bad_request");
    // hash_password gives a usable hash; password_hash "" disables password login.
    let (s, body) = call(&server, "GET", "/auth/hash_password/s3cret", "guest", None).await;
    assert_eq!(s, 200);
    let h = body["ok"].as_str().unwrap().to_owned();
    let r =
        call(&server, "PUT", "/users/hashed", "guest", Some(json!({"password_hash": h, "tags": ["management"]}))).await;
    assert_eq!(r.0, 201);
    let http = reqwest::Client::new();
    let whoami = |pw: &'static str| http.get(format!("{}/whoami", server.api())).basic_auth("hashed", Some(pw)).send();
    assert_eq!(whoami("s3cret").await.unwrap().status(), 200);
    assert_eq!(call(&server, "PUT", "/users/hashed", "guest", Some(json!({"password_hash": ""}))).await.0, 204);
    assert_eq!(whoami("s3cret").await.unwrap().status(), 401);
    assert_eq!(
        call(&server, "GET", "/users/hashed", "guest", None).await.1["tags"],
        json!(["management"]),
        "an update without tags keeps them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mgmt_access_http_user_logs_in_over_amqp() {
    let server = start().await;
    let c = admin(&server);
    c.create_vhost(&VirtualHostParams::named("app")).await.unwrap();
    let (s, _) = call(&server, "PUT", "/users/worker", "guest", Some(json!({"password": "pw", "tags": ""}))).await;
    assert_eq!(s, 201);
    let uri = format!("amqp://worker:pw@{}/app", server.addr);
    // No permissions yet: the vhost is refused.
    assert!(Connection::connect(&uri, ConnectionProperties::default()).await.is_err());
    let p = Permissions { user: "worker", vhost: "app", configure: ".*", write: ".*", read: ".*" };
    c.declare_permissions(&p).await.unwrap();
    let conn = Connection::connect(&uri, ConnectionProperties::default()).await.expect("login over AMQP");
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("w.q".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    // Deleting the user over HTTP closes its connection.
    c.delete_user("worker", false).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while conn.status().connected() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mgmt_access_http_policy_changes_a_live_queue() {
    let server = start().await;
    let conn = Connection::connect(&server.uri(), ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    ch.queue_declare("live.q".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    for _ in 0..10 {
        ch.basic_publish("".into(), "live.q".into(), BasicPublishOptions::default(), b"x", BasicProperties::default())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let body = json!({"pattern": "^live\\.", "definition": {"max-length": 3}, "apply-to": "queues", "priority": 1});
    assert_eq!(call(&server, "PUT", "/policies/%2F/cap", "guest", Some(body)).await.0, 201);
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let depth = ch.queue_declare("live.q".into(), passive, FieldTable::default()).await.unwrap().message_count();
    assert_eq!(depth, 3);
    let q = server.state.vhost("/").unwrap().queues().into_iter().find(|q| q.name == "live.q").unwrap();
    assert_eq!(q.policy_name().as_deref(), Some("cap"));
    assert_eq!(call(&server, "DELETE", "/policies/%2F/cap", "guest", None).await.0, 204);
    assert_eq!(q.policy_name(), None);
}

/// A self-signed certificate valid until `not_after` (year, month, day), written to
/// `dir/name.pem`.
fn certificate(dir: &std::path::Path, name: &str, not_after: (i32, u8, u8)) -> std::path::PathBuf {
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let cert = params.self_signed(&rcgen::KeyPair::generate().expect("key")).expect("sign");
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, cert.pem()).expect("write cert");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mgmt_access_certificate_expiration_check_reads_the_tls_listener_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let certfile = certificate(dir.path(), "server", (4000, 1, 1));
    let cacertfile = certificate(dir.path(), "ca", (2001, 2, 3));
    let tls = server::config::TlsConfig {
        certfile,
        keyfile: dir.path().join("unused.key"),
        cacertfile: Some(cacertfile),
        client_auth: server::config::ClientAuth::None,
        versions: vec![server::config::TlsVersion::Tls13],
        handshake_timeout: server::config::TlsConfig::DEFAULT_HANDSHAKE_TIMEOUT,
    };
    let server = TestServer::start_with(server::Config { tls: Some(tls), ..server::Config::default() })
        .await
        .with_management()
        .await;
    server.state.set_listeners(vec![ListenerInfo {
        protocol: "amqp/ssl".into(),
        ip_address: "127.0.0.1".into(),
        port: 5671,
    }]);
    // The CA certificate expired in 2001: any window fails, naming it.
    let (status, body) = call(&server, "GET", "/health/checks/certificate-expiration/1/days", "guest", None).await;
    assert_eq!(status, 503);
    assert_eq!(body["reason"], "Certificates expiring");
    let expired = &body["expired"][0];
    assert_eq!((expired["protocol"].as_str(), expired["port"].as_u64()), (Some("amqp/ssl"), Some(5671)));
    assert_eq!(expired["cacertfile_expires_on"], json!(["2001-02-03 0:00:00"]));
    assert_eq!(expired["certfile_expires_on"], json!([]), "the server certificate is valid for centuries");
    // Without the CA file, only the server certificate counts.
    let mut tls = server.state.config.tls.clone().unwrap();
    tls.cacertfile = None;
    let server2 = TestServer::start_with(server::Config { tls: Some(tls), ..server::Config::default() })
        .await
        .with_management()
        .await;
    server2.state.set_listeners(vec![ListenerInfo {
        protocol: "amqp/ssl".into(),
        ip_address: "127.0.0.1".into(),
        port: 5671,
    }]);
    let ok = call(&server2, "GET", "/health/checks/certificate-expiration/100/years", "guest", None).await;
    assert_eq!(ok, (200, json!({"status": "ok"})));
    let (status, body) = call(&server2, "GET", "/health/checks/certificate-expiration/3000/years", "guest", None).await;
    assert_eq!(status, 503);
    assert_eq!(body["expired"][0]["certfile_expires_on"], json!(["4000-01-01 0:00:00"]));
}
