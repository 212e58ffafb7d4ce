//! `warrenctl` (and the same binary invoked as `rabbitmqctl`) against the real `warren`
//! binary, through the node's Unix socket: rabbitmqctl's verbs, argument shapes, output
//! (banner, tab-separated header and rows, `-q`, `-s`, `--formatter json`) and exit codes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

use crate::common::WarrenProcess;

struct Ctl {
    data_dir: PathBuf,
    bin: PathBuf,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ctl {
    fn new(data_dir: &Path) -> Ctl {
        Ctl { data_dir: data_dir.to_owned(), bin: PathBuf::from(env!("CARGO_BIN_EXE_warrenctl")) }
    }

    fn run_as(&self, bin: &Path, args: &[&str]) -> Out {
        let o = Command::new(bin).args(args).env("WARREN_DATA_DIR", &self.data_dir).output().expect("run warrenctl");
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    fn run(&self, args: &[&str]) -> Out {
        self.run_as(&self.bin, args)
    }

    /// Run and require success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(o.code, 0, "warrenctl {args:?}: {}{}", o.stdout, o.stderr);
        o.stdout
    }
}

fn start() -> (tempfile::TempDir, WarrenProcess, Ctl) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let w = WarrenProcess::start(&data, None, &[]);
    let ctl = Ctl::new(&data);
    ctl.ok(&["-q", "await_startup", "-t", "20"]);
    (dir, w, ctl)
}

#[test]
fn users_vhosts_and_permissions_as_rabbitmqctl_prints_them() {
    let (_d, _w, ctl) = start();
    assert_eq!(ctl.ok(&["add_user", "bob", "s3cret"]).lines().next(), Some("Adding user \"bob\" ..."));
    let o = ctl.run(&["add_user", "bob", "again"]);
    assert_eq!(o.code, 70);
    assert!(o.stderr.contains("User \"bob\" already exists"), "{}", o.stderr);
    ctl.ok(&["set_user_tags", "bob", "monitoring", "policymaker"]);
    assert_eq!(
        ctl.ok(&["list_users"]),
        "Listing users ...\nuser\ttags\nbob\t[monitoring, policymaker]\nguest\t[administrator]\n"
    );
    assert_eq!(ctl.ok(&["-s", "list_users"]), "bob\t[monitoring, policymaker]\nguest\t[administrator]\n");
    let json: serde_json::Value = serde_json::from_str(&ctl.ok(&["list_users", "--formatter", "json"])).unwrap();
    assert_eq!(json[0], serde_json::json!({"user": "bob", "tags": ["monitoring", "policymaker"]}));

    ctl.ok(&["authenticate_user", "bob", "s3cret"]);
    assert_eq!(ctl.run(&["authenticate_user", "bob", "wrong"]).code, 70);
    ctl.ok(&["change_password", "bob", "n3w"]);
    ctl.ok(&["authenticate_user", "bob", "n3w"]);

    ctl.ok(&["add_vhost", "jobs"]);
    assert_eq!(ctl.ok(&["-q", "list_vhosts"]), "name\n/\njobs\n");
    ctl.ok(&["set_permissions", "-p", "jobs", "bob", "^bob\\.", ".*", ".*"]);
    assert_eq!(
        ctl.ok(&["-q", "list_permissions", "-p", "jobs"]),
        "user\tconfigure\twrite\tread\nbob\t^bob\\.\t.*\t.*\n"
    );
    assert_eq!(
        ctl.ok(&["-q", "list_user_permissions", "bob"]),
        "vhost\tconfigure\twrite\tread\njobs\t^bob\\.\t.*\t.*\n"
    );
    ctl.ok(&["clear_permissions", "-p", "jobs", "bob"]);
    assert_eq!(ctl.ok(&["-q", "list_permissions", "-p", "jobs"]), "user\tconfigure\twrite\tread\n");

    ctl.ok(&[
        "set_policy",
        "-p",
        "jobs",
        "--priority",
        "3",
        "--apply-to",
        "queues",
        "cap",
        "^bob\\.",
        "{\"max-length\": 10}",
    ]);
    let p = ctl.ok(&["-q", "list_policies", "-p", "jobs"]);
    assert!(p.starts_with("vhost\tname\tpattern\tapply-to\tdefinition\tpriority\njobs\tcap\t^bob\\.\tqueues\t"), "{p}");
    ctl.ok(&["clear_policy", "-p", "jobs", "cap"]);

    ctl.ok(&["delete_vhost", "jobs"]);
    ctl.ok(&["delete_user", "bob"]);
    let o = ctl.run(&["delete_user", "bob"]);
    assert_eq!(o.code, 70);
    assert!(o.stderr.starts_with("Error:\n"), "{}", o.stderr);
    // Usage errors: 64.
    assert_eq!(ctl.run(&["set_permissions", "bob"]).code, 64);
    assert_eq!(ctl.run(&["no_such_command"]).code, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_connections_and_thresholds() {
    let (d, w, ctl) = start();
    let conn = Connection::connect(&w.uri(), ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("work".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    for _ in 0..3 {
        ch.basic_publish("".into(), "work".into(), BasicPublishOptions::default(), b"x", BasicProperties::default())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(ctl.ok(&["-q", "list_queues"]), "name\tmessages\nwork\t3\n");
    assert_eq!(
        ctl.ok(&["-q", "list_queues", "name", "messages_ready", "consumers"]),
        "name\tmessages_ready\tconsumers\nwork\t3\t0\n"
    );
    ctl.ok(&["purge_queue", "work"]);
    assert_eq!(ctl.ok(&["-s", "list_queues"]), "work\t0\n");

    let conns = ctl.ok(&["-q", "list_connections", "user", "peer_host", "name"]);
    assert!(conns.starts_with("user\tpeer_host\tname\nguest\t127.0.0.1\t127.0.0.1:"), "{conns}");

    // Thresholds at runtime (amqp091-go's tests do this to force connection.blocked).
    ctl.ok(&["set_vm_memory_high_watermark", "0.0001"]);
    let status: serde_json::Value = serde_json::from_str(&ctl.ok(&["status", "--formatter", "json"])).unwrap();
    assert_eq!(status["alarms"]["memory"], true, "{status}");
    ctl.ok(&["set_vm_memory_high_watermark", "0.6"]);
    let status: serde_json::Value = serde_json::from_str(&ctl.ok(&["status", "--formatter", "json"])).unwrap();
    assert_eq!(status["alarms"]["memory"], false, "{status}");

    // Definitions out and back in.
    let file = d.path().join("defs.json");
    ctl.ok(&["export_definitions", file.to_str().unwrap()]);
    let defs: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert!(defs["users"].as_array().unwrap().iter().any(|u| u["name"] == "guest"));
    ctl.ok(&["import_definitions", file.to_str().unwrap()]);

    let out = ctl.ok(&["delete_queue", "work"]);
    assert!(out.ends_with("Queue was successfully deleted with 0 messages\n"), "{out}");

    // close_connection closes the lapin connection with the reason.
    let name = ctl.ok(&["-s", "list_connections", "name"]).trim().to_owned();
    ctl.ok(&["close_connection", &name, "bye"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while conn.status().connected() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!conn.status().connected());
}

#[test]
fn installed_as_rabbitmqctl_it_behaves_the_same() {
    let (d, _w, ctl) = start();
    let link = d.path().join("rabbitmqctl");
    std::os::unix::fs::symlink(&ctl.bin, &link).unwrap();
    let o = ctl.run_as(&link, &["-q", "add_user", "carol", "pw"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = ctl.run_as(&link, &["list_users", "--formatter", "json"]);
    let users: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert!(users.as_array().unwrap().iter().any(|u| u["user"] == "carol"));
    // The node is unreachable: 69, as rabbitmqctl.
    let o = Command::new(&link).args(["list_users"]).env("WARREN_DATA_DIR", d.path().join("nowhere")).output().unwrap();
    assert_eq!(o.status.code(), Some(69));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_listings_limits_and_node_verbs() {
    let (_d, w, ctl) = start();
    assert_eq!(ctl.ok(&["-q", "ping"]), "Ping succeeded\n");
    // A consumer on a queue bound to an exchange.
    let conn = Connection::connect(&w.uri(), ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        "logs".into(),
        lapin::ExchangeKind::Topic,
        lapin::options::ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare("errors".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    ch.queue_bind("errors".into(), "logs".into(), "*.error".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    ch.basic_qos(7, Default::default()).await.unwrap();
    let _consumer =
        ch.basic_consume("errors".into(), "c1".into(), Default::default(), FieldTable::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let xs = ctl.ok(&["-q", "list_exchanges", "name", "type", "durable"]);
    assert!(xs.starts_with("name\ttype\tdurable\n"), "{xs}");
    assert!(xs.lines().any(|l| l == "logs\ttopic\tfalse"), "{xs}");
    assert!(xs.lines().any(|l| l == "amq.direct\tdirect\ttrue"), "{xs}");
    let bs = ctl.ok(&["-q", "list_bindings", "source_name", "destination_name", "routing_key"]);
    assert!(bs.lines().any(|l| l == "logs\terrors\t*.error"), "{bs}");
    assert!(bs.lines().any(|l| l == "\terrors\terrors"), "the default exchange's binding: {bs}");
    let chans = ctl.ok(&["-q", "list_channels", "user", "number", "consumer_count", "prefetch_count"]);
    assert_eq!(chans, "user\tnumber\tconsumer_count\tprefetch_count\nguest\t1\t1\t7\n");
    let cons = ctl.ok(&["-q", "list_consumers", "queue_name", "consumer_tag", "ack_required", "prefetch_count"]);
    assert_eq!(cons, "queue_name\tconsumer_tag\tack_required\tprefetch_count\nerrors\tc1\ttrue\t7\n");

    // Topic permissions, operator policies, limits: set, then listed.
    ctl.ok(&["add_user", "dan", "pw"]);
    ctl.ok(&["set_topic_permissions", "dan", "logs", "^dan\\.", ".*"]);
    let tp = ctl.ok(&["-q", "list_topic_permissions"]);
    assert!(tp.lines().any(|l| l == "dan\tlogs\t^dan\\.\t.*"), "{tp}");
    ctl.ok(&["set_operator_policy", "--apply-to", "queues", "cap", ".*", "{\"max-length\": 100}"]);
    let op = ctl.ok(&["-q", "list_operator_policies"]);
    assert!(op.lines().any(|l| l.starts_with("/\tcap\t.*\tqueues\t")), "{op}");
    ctl.ok(&["set_vhost_limits", "{\"max-connections\": 50, \"max-queues\": 20}"]);
    let vl = ctl.ok(&["-q", "list_vhost_limits"]);
    assert!(vl.contains("\"max-connections\":50") && vl.contains("\"max-queues\":20"), "{vl}");
    ctl.ok(&["set_user_limits", "dan", "{\"max-channels\": 3}"]);
    let ul = ctl.ok(&["-q", "list_user_limits", "--user", "dan"]);
    assert!(ul.contains("\"max-channels\":3"), "{ul}");

    // Node settings.
    ctl.ok(&["set_disk_free_limit", "1GB"]);
    let env: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["-q", "environment", "--formatter", "json"])).expect("environment is JSON");
    assert!(env.is_object(), "{env}");

    // close_all_connections closes the lapin connection.
    let out = ctl.ok(&["close_all_connections", "maintenance"]);
    assert!(out.starts_with("Closing all connections in vhost / ..."), "{out}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while conn.status().connected() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!conn.status().connected());
}

/// `vm_memory_calculation_strategy = allocated`: the real binary counts its allocations;
/// `status` reports them (well below RSS for an idle node) and the alarm follows them.
#[test]
fn allocated_memory_strategy_drives_the_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("warren.conf");
    std::fs::write(&conf, "vm_memory_calculation_strategy = allocated\n").unwrap();
    let data = dir.path().join("data");
    let _w = WarrenProcess::start(&data, None, &["--config", conf.to_str().unwrap()]);
    let ctl = Ctl::new(&data);
    ctl.ok(&["-q", "await_startup", "-t", "20"]);
    let status =
        |ctl: &Ctl| -> serde_json::Value { serde_json::from_str(&ctl.ok(&["status", "--formatter", "json"])).unwrap() };
    let used = status(&ctl)["memory"]["used"].as_u64().unwrap();
    let rss: u64 = std::fs::read_to_string(format!("/proc/{}/status", status(&ctl)["pid"].as_str().unwrap()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .map(|kb: u64| kb * 1024)
        .unwrap();
    assert!(used > 0 && used < rss, "allocated {used} should be below RSS {rss}");
    // A watermark under what is allocated raises the alarm; one well above clears it.
    ctl.ok(&["set_vm_memory_high_watermark", "absolute", &(used / 2).to_string()]);
    assert_eq!(status(&ctl)["alarms"]["memory"], true);
    ctl.ok(&["set_vm_memory_high_watermark", "absolute", &(used * 100).to_string()]);
    assert_eq!(status(&ctl)["alarms"]["memory"], false);
}
