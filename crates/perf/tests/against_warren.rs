//! End to end: run warren-perf against a real `warren` broker for 2 seconds.
//!
//! The perf crate does not depend on the server crate (it must work against any AMQP
//! 0-9-1 broker), so the broker binary is taken as built: $WARREN_BIN, or
//! target/debug/warren from `cargo build -p server --bin warren`.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the broker and removes its data directory, even when an assertion fails.
struct Broker {
    child: Child,
    data_dir: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn broker_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WARREN_BIN") {
        return PathBuf::from(path);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/warren");
    assert!(
        path.exists(),
        "broker binary not found at {}: run `cargo build -p server --bin warren` first, or set WARREN_BIN",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    // Bind to port 0 and let the broker take the number; the tiny race with another
    // process grabbing it in between is acceptable for a test.
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free port")
}

fn start_broker() -> (Broker, u16) {
    let port = free_port();
    let data_dir = std::env::temp_dir().join(format!("warren-perf-test-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&data_dir).expect("creating data dir");
    let child = Command::new(broker_binary())
        .args([
            "--amqp-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--management-port",
            "0",
            "--prometheus-port",
            "0",
            "--data-dir",
        ])
        .arg(&data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the broker");
    let mut broker = Broker { child, data_dir };
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = broker.child.try_wait() {
            panic!("broker exited early: {status}");
        }
        assert!(Instant::now() < deadline, "broker did not listen on port {port} within 15 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    (broker, port)
}

fn run_perf(port: u16, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_warren-perf"))
        .arg("--uri")
        .arg(format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
        .args(["--json", "--quiet"])
        .args(args)
        .output()
        .expect("running warren-perf");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "warren-perf failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("summary is not JSON ({e}): {stdout}"))
}

#[test]
fn one_producer_one_consumer_for_two_seconds() {
    let (_broker, port) = start_broker();
    let summary = run_perf(port, &["-x", "1", "-y", "1", "-z", "2", "-s", "16", "--latency", "-A", "10", "-c", "1000"]);
    let published = summary["published"].as_u64().expect("published");
    let consumed = summary["consumed"].as_u64().expect("consumed");
    assert!(published > 0, "{summary}");
    assert!(consumed > 0, "{summary}");
    assert!(consumed <= published, "{summary}");
    assert!(summary["confirmed"].as_u64().unwrap() <= published, "{summary}");
    assert!(summary["latency_us"]["p99"].as_f64().is_some(), "{summary}");
    assert_eq!(summary["errors"].as_array().map(Vec::len), Some(0), "{summary}");
}

#[test]
fn counted_run_delivers_everything() {
    let (_broker, port) = start_broker();
    // -C: producers stop after 5000 messages each, the run ends once all are consumed.
    let summary = run_perf(
        port,
        &[
            "-x",
            "2",
            "-y",
            "2",
            "-Q",
            "2",
            "-C",
            "5000",
            "-c",
            "500",
            "-A",
            "50",
            "-z",
            "20",
            "--queue-prefix",
            "counted-",
        ],
    );
    assert_eq!(summary["published"].as_u64(), Some(10_000), "{summary}");
    assert_eq!(summary["confirmed"].as_u64(), Some(10_000), "{summary}");
    assert_eq!(summary["consumed"].as_u64(), Some(10_000), "{summary}");
    assert!(summary["duration_s"].as_f64().unwrap() < 19.0, "{summary}");
}
