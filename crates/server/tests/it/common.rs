//! Test harness: an in-process Warren on 127.0.0.1 with a free port.

use std::net::SocketAddr;
use std::sync::Arc;

use server::{Config, ServerState};
use tokio::sync::watch;

pub struct TestServer {
    pub addr: SocketAddr,
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
        TestServer { addr, state, shutdown: tx, task: Some(task) }
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
        TestServer { addr, state, shutdown: tx, task: Some(task) }
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
