//! What all connections share: config, users, vhosts, and the shutdown signal.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use broker::VHost;
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::config::Config;

pub struct ServerState {
    pub config: Config,
    /// user → password. User management is a later issue; for now the built-in guest.
    users: RwLock<HashMap<String, String>>,
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    next_connection_id: AtomicU64,
    /// Flips to true when the server shuts down; connections close with 320.
    pub shutdown: watch::Receiver<bool>,
}

impl ServerState {
    pub fn new(config: Config, shutdown: watch::Receiver<bool>) -> Arc<ServerState> {
        let mut users = HashMap::new();
        users.insert("guest".to_owned(), "guest".to_owned());
        let mut vhosts = HashMap::new();
        vhosts.insert("/".to_owned(), VHost::new("/"));
        Arc::new(ServerState {
            config,
            users: RwLock::new(users),
            vhosts: RwLock::new(vhosts),
            next_connection_id: AtomicU64::new(1),
            shutdown,
        })
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn check_password(&self, user: &str, password: &str) -> bool {
        self.users.read().get(user).is_some_and(|p| p == password)
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.read().get(name).cloned()
    }
}
