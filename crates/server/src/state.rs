//! What all connections share: config, users, vhosts, and the shutdown signal.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};

use broker::{Queue, VHost};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use broker::vhost::Persistence;
use store::StoreConfig;

use crate::config::Config;
use crate::persist::DiskPersistence;

pub struct ServerState {
    pub config: Config,
    /// user → password. User management is a later issue; for now the built-in guest.
    users: RwLock<HashMap<String, String>>,
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    next_connection_id: AtomicU64,
    /// Flips to true when the server shuts down; connections close with 320.
    pub shutdown: watch::Receiver<bool>,
    /// The highest commit epoch known fsynced (publisher confirms wait on it).
    pub durable_epoch: watch::Receiver<u64>,
    pub persistence: Option<Arc<DiskPersistence>>,
    /// Direct reply-to: token → the requesting channel's pseudo-queue.
    pub reply_to: Mutex<HashMap<String, Weak<Queue>>>,
}

impl ServerState {
    /// A server that keeps everything in RAM (nothing survives it).
    pub fn new(config: Config, shutdown: watch::Receiver<bool>) -> Arc<ServerState> {
        let (_tx, durable_epoch) = watch::channel(0);
        Self::build(config, shutdown, durable_epoch, None, Arc::new(broker::vhost::InMemory))
    }

    /// A server over `config.data_dir`: recovers durable definitions and messages, and
    /// persists from then on.
    pub fn open(config: Config, shutdown: watch::Receiver<bool>) -> Result<Arc<ServerState>, store::Error> {
        let (tx, durable_epoch) = watch::channel(0u64);
        let store_cfg = StoreConfig { queue_ram_budget_bytes: config.queue_ram_budget_bytes };
        let (p, recovery) = DiskPersistence::open(&config.data_dir, store_cfg, move |e| {
            tx.send_replace(e);
        })?;
        let state = Self::build(config, shutdown, durable_epoch, Some(p.clone()), p.clone());
        p.recover_into(recovery, |name| state.vhost(name));
        Ok(state)
    }

    fn build(
        config: Config,
        shutdown: watch::Receiver<bool>,
        durable_epoch: watch::Receiver<u64>,
        persistence: Option<Arc<DiskPersistence>>,
        vhost_persistence: Arc<dyn Persistence>,
    ) -> Arc<ServerState> {
        let mut users = HashMap::new();
        users.insert("guest".to_owned(), "guest".to_owned());
        let mut vhosts = HashMap::new();
        vhosts.insert("/".to_owned(), VHost::with_persistence("/", vhost_persistence));
        Arc::new(ServerState {
            config,
            users: RwLock::new(users),
            vhosts: RwLock::new(vhosts),
            next_connection_id: AtomicU64::new(1),
            shutdown,
            durable_epoch,
            persistence,
            reply_to: Mutex::new(HashMap::new()),
        })
    }

    /// Flush everything buffered to disk (at shutdown).
    pub fn sync_and_stop_store(&self) {
        if let Some(p) = &self.persistence {
            p.syncer().shutdown();
        }
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn check_password(&self, user: &str, password: &str) -> bool {
        self.users.read().get(user).is_some_and(|p| p == password)
    }

    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        self.vhosts.read().values().cloned().collect()
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.read().get(name).cloned()
    }
}
