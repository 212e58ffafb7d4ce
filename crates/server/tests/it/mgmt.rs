//! The management HTTP API, with third-party clients as witnesses: the
//! `rabbitmq_http_client` crate (what rabbitmqadmin v2 is built on) and plain HTTP.

use rabbitmq_http_client::api::Client;

use crate::common::TestServer;

fn client(server: &TestServer) -> Client<String, &'static str, &'static str> {
    Client::new(server.api(), "guest", "guest")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_deserializes_in_rabbitmq_http_client() {
    let server = TestServer::start().await.with_management().await;
    let o = client(&server).overview().await.expect("overview");
    assert_eq!(o.node, server.state.node_name());
    assert_eq!(o.object_totals.exchanges, 7, "the predeclared exchanges of /");
    // A single node leads every queue it has: a rebalance moves nothing and succeeds, as
    // RabbitMQ's does on one node; Warren's report lists no clustered leaders; a type
    // with nothing replicated is the caller's mistake.
    client(&server).rebalance_queue_leaders().await.expect("POST /api/rebalance/queues");
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/warren/rebalance", server.api()))
        .basic_auth("guest", Some("guest"))
        .json(&serde_json::json!({"type": "quorum"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap(), serde_json::json!([]));
    let r = http
        .post(format!("{}/rebalance/queues", server.api()))
        .basic_auth("guest", Some("guest"))
        .json(&serde_json::json!({"type": "stream"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_errors_have_rabbitmq_shapes() {
    let server = TestServer::start().await.with_management().await;
    let http = reqwest::Client::new();
    // No credentials, wrong password: 401 with RabbitMQ's body.
    let r = http.get(format!("{}/overview", server.api())).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("www-authenticate").is_some());
    let r = http.get(format!("{}/overview", server.api())).basic_auth("guest", Some("nope")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "not_authorized");
    // An unknown path: RabbitMQ's 404 body, as JSON.
    let r =
        http.get(format!("{}/no-such-thing", server.api())).basic_auth("guest", Some("guest")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"error": "Object Not Found", "reason": "Not Found"}));
    // A trailing slash is ignored.
    let r = http.get(format!("{}/whoami/", server.api())).basic_auth("guest", Some("guest")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["name"], "guest");
    assert_eq!(body["tags"], serde_json::json!(["administrator"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_docs_describe_every_group() {
    let server = TestServer::start().await.with_management().await;
    let r = reqwest::Client::new()
        .get(format!("{}/docs", server.api()))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let text = body["management"].as_str().unwrap();
    for section in
        ["## Access and definitions", "## Queues, exchanges, bindings", "## Connections, channels, consumers"]
    {
        assert!(text.contains(section), "{section}");
    }
    assert!(body["metrics"].as_str().unwrap().contains("rabbitmq_identity_info"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_bounded_with_rabbitmqs_error() {
    let server = TestServer::start().await.with_management().await;
    // management.http.max_body_size: 20 MiB by default, as RabbitMQ.
    let big = vec![b' '; 20 * 1024 * 1024 + 1];
    let r = reqwest::Client::new()
        .post(format!("{}/definitions", server.api()))
        .basic_auth("guest", Some("guest"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"error": "bad_request", "reason": "Exceeded HTTP request body size limit"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_ui_is_served_beside_a_json_api() {
    let server = TestServer::start().await.with_management().await;
    let root = server.api().trim_end_matches("/api").to_string();
    let http = reqwest::Client::new();
    // The page, without credentials (it asks for them and sends them to /api).
    let r = http.get(format!("{root}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.headers()["cache-control"], "no-cache");
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(r.text().await.unwrap().contains("<script type=\"module\" src=\"/ui/app.js\">"));
    // Revalidation: same ETag, 304 without a body.
    let r = http.get(format!("{root}/")).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(r.status(), 304);
    for (path, ctype) in [
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/lib.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ] {
        let r = http.get(format!("{root}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], ctype, "{path}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
    }
    // Unknown UI files and API paths stay RabbitMQ's JSON 404.
    for path in ["/ui/nope.js", "/ui/test.html", "/api/nonexistent"] {
        let r = http.get(format!("{root}{path}")).basic_auth("guest", Some("guest")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"), "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body, serde_json::json!({"error": "Object Not Found", "reason": "Not Found"}));
    }
}
