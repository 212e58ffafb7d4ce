//! Test harness: an in-process Warren on 127.0.0.1 with a free port.

use std::net::SocketAddr;
use std::sync::Arc;

use server::{Config, ServerState};
use tokio::sync::watch;

pub struct TestServer {
    pub addr: SocketAddr,
    /// The management API's address, for servers started with [`TestServer::with_management`].
    pub mgmt: Option<SocketAddr>,
    pub state: Arc<ServerState>,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Start a server with default settings.
    pub async fn start() -> TestServer {
        Self::start_with(Config::default()).await
    }

    pub async fn start_with(config: Config) -> TestServer {
        let (tx, rx) = watch::channel(false);
        let state = ServerState::new(config, rx);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(server::serve(vec![listener], state.clone()));
        TestServer { addr, mgmt: None, state, shutdown: tx, task: Some(task) }
    }

    /// Start a server over the data directory `dir` (recovering what is there), with
    /// otherwise default settings. Stop it with [`TestServer::stop`] before starting
    /// another one on the same directory.
    pub async fn start_persistent(dir: &std::path::Path) -> TestServer {
        Self::start_persistent_with(Config { data_dir: dir.to_owned(), ..Config::default() }).await
    }

    /// Like [`TestServer::start_persistent`], over `config.data_dir` with `config`.
    pub async fn start_persistent_with(config: Config) -> TestServer {
        let dir = config.data_dir.clone();
        let (tx, rx) = watch::channel(false);
        let state = ServerState::open(config, rx)
            .unwrap_or_else(|e| panic!("opening the data directory {}: {e}", dir.display()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(server::serve(vec![listener], state.clone()));
        TestServer { addr, mgmt: None, state, shutdown: tx, task: Some(task) }
    }

    /// Also serve the management API (as the `warren` binary does) on a free port.
    pub async fn with_management(mut self) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        self.mgmt = Some(listener.local_addr().expect("local addr"));
        let node: Arc<dyn mgmt::Node> = self.state.clone();
        let mut stop = self.shutdown.subscribe();
        tokio::spawn(mgmt::serve(listener, node, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
        self
    }

    /// http://127.0.0.1:PORT/api (servers started with [`TestServer::with_management`]).
    pub fn api(&self) -> String {
        format!("http://{}/api", self.mgmt.expect("started with_management"))
    }

    /// amqp://guest:guest@127.0.0.1:PORT/%2f
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Graceful shutdown: connections get 320 CONNECTION_FORCED.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// The real `warren` binary as a child process on a free 127.0.0.1 port (for what an
/// in-process server cannot show: its RSS, descriptor limits, kill -9), killed on drop.
/// Its stderr goes to a log file beside the data dir.
pub struct WarrenProcess {
    child: std::process::Child,
    pub port: u16,
    log: std::path::PathBuf,
}

impl WarrenProcess {
    /// Start warren on `data_dir` with `extra` flags, under `prlimit --nofile=N:N` when
    /// `nofile` is given, and wait until it accepts connections.
    pub fn start(data_dir: &std::path::Path, nofile: Option<u64>, extra: &[&str]) -> WarrenProcess {
        WarrenProcess::start_env(data_dir, nofile, extra, &[])
    }

    /// [`Self::start`] with environment variables set (`Some`) or removed (`None`).
    pub fn start_env(
        data_dir: &std::path::Path,
        nofile: Option<u64>,
        extra: &[&str],
        env: &[(&str, Option<&std::ffi::OsStr>)],
    ) -> WarrenProcess {
        WarrenProcess::try_start_env(data_dir, nofile, extra, env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::start_env`], with an error (and the log) when warren exits before accepting
    /// connections — e.g. a port picked for it was taken meanwhile by another test, which a
    /// caller can retry with other ports.
    pub fn try_start_env(
        data_dir: &std::path::Path,
        nofile: Option<u64>,
        extra: &[&str],
        env: &[(&str, Option<&std::ffi::OsStr>)],
    ) -> Result<WarrenProcess, String> {
        use std::time::{Duration, Instant};
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let log = data_dir.with_extension(format!("{port}.log"));
        let stderr = std::fs::File::create(&log).expect("log file");
        let bin = env!("CARGO_BIN_EXE_warren");
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = std::process::Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(bin);
                c
            }
            None => std::process::Command::new(bin),
        };
        cmd.args(["--amqp-port", &port.to_string(), "--bind", "127.0.0.1"]);
        // Off unless the caller gives them a port.
        if !extra.contains(&"--management-port") {
            cmd.args(["--management-port", "0"]);
        }
        if !extra.contains(&"--prometheus-port") {
            cmd.args(["--prometheus-port", "0"]);
        }
        cmd.args(["--heartbeat", "0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("WARREN_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let child = cmd.spawn().expect("spawning warren");
        let mut w = WarrenProcess { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "warren did not start:\n{}", w.log());
            // E.g. a port it was given was taken meanwhile: say so now, not after 20 s.
            if let Ok(Some(status)) = w.child.try_wait() {
                return Err(format!("warren exited ({status}) before accepting connections:\n{}", w.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(w)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f?heartbeat=0", self.port)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (a clean shutdown) and wait up to `limit` for the exit; its exit code, or
    /// None if it did not exit in time.
    pub fn terminate(&mut self, limit: std::time::Duration) -> Option<i32> {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.exited_within(limit)
    }

    /// Its exit code once it exits by itself within `limit` (None: still running).
    pub fn exited_within(&mut self, limit: std::time::Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }

    /// Send the signal `name` (`STOP`, `CONT`, ...) with kill(1).
    pub fn signal(&self, name: &str) {
        let status =
            std::process::Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{name} {}", self.child.id());
    }

    /// SIGSTOP, then wait until every thread of the process has stopped. kill(2) only
    /// queues the signal: on a loaded machine the process can run on for a while (long
    /// enough for a cluster node to acknowledge a peer's append), so a test that needs it
    /// silent from now on must wait for the stop itself.
    pub fn stop(&self) {
        use std::time::{Duration, Instant};
        /// How long the kernel may take to stop every thread on a loaded machine.
        const STOP_LIMIT: Duration = Duration::from_secs(10);
        self.signal("STOP");
        let tasks = format!("/proc/{}/task", self.child.id());
        let deadline = Instant::now() + STOP_LIMIT;
        loop {
            let running = std::fs::read_dir(&tasks)
                .map(|dir| {
                    dir.flatten().any(|t| {
                        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                        // `pid (comm) state ...`: comm may hold spaces and parentheses.
                        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
                        !matches!(state, Some('T' | 't') | None)
                    })
                })
                .unwrap_or(false);
            if !running {
                return;
            }
            assert!(Instant::now() < deadline, "pid {} not stopped within {STOP_LIMIT:?}", self.child.id());
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The process has not exited.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident set size in MiB.
    pub fn rss_mib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024)
    }
}

impl Drop for WarrenProcess {
    /// kill -9.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
