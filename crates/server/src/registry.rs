//! The logged-in connections of the node: who is connected where, so that per-vhost and
//! per-user limits can be checked when a connection opens, and so that deleting a vhost
//! or a user (or an operator, later through the management API) can close connections.
//!
//! Counts per vhost and per user are kept beside the map: a limit check at
//! connection.open costs O(1), not a scan of every connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use mgmt::node::{ChannelCounts, Churn};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::delivery::ChannelShared;

/// Who a connection is, given at registration.
pub(crate) struct Identity {
    pub id: u64,
    pub endpoint: crate::connection::Endpoint,
    pub user: String,
    pub vhost: String,
    /// What the management API shows of it.
    pub details: ConnDetails,
}

/// A connection's negotiated settings and client properties, for the management API.
#[derive(Clone)]
pub struct ConnDetails {
    /// connection.start-ok's client properties.
    pub client_properties: wire::FieldTable,
    pub auth_mechanism: String,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat_secs: u16,
    /// Its traffic counters (`recv_oct`, `send_oct`).
    pub outbox: Arc<crate::outbox::Outbox>,
}

/// One open (logged-in) connection, as the rest of the node sees it.
pub struct ConnHandle {
    pub id: u64,
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
    pub tls: bool,
    pub user: String,
    pub vhost: String,
    /// When it logged in (ms since the Unix epoch).
    pub connected_at_ms: u64,
    /// Channels open on this connection now (for the per-user channel limit).
    channels: AtomicUsize,
    pub details: ConnDetails,
    /// Blocked by a resource alarm (not reading its socket).
    pub blocked: AtomicBool,
    /// Paused by a queue in flow (RabbitMQ's `flow` state), for the management API.
    pub in_flow: AtomicBool,
    /// Set when the node closes the connection: (reply code, text).
    close: Mutex<Option<(u16, String)>>,
    closed: Notify,
}

impl ConnHandle {
    /// Ask the connection to close with `code`/`text` (it sends connection.close itself).
    pub fn force_close(&self, code: u16, text: String) {
        let mut c = self.close.lock();
        if c.is_none() {
            *c = Some((code, text));
        }
        drop(c);
        self.closed.notify_one();
    }

    /// Resolves once [`Self::force_close`] was called, with its reply code and text.
    pub async fn close_requested(&self) -> (u16, String) {
        loop {
            if let Some(c) = self.close.lock().clone() {
                return c;
            }
            self.closed.notified().await;
        }
    }

    pub fn channel_count(&self) -> usize {
        self.channels.load(Ordering::Relaxed)
    }

    /// RabbitMQ's connection name: "peer_ip:port -> local_ip:port".
    pub fn name(&self) -> String {
        match self.local {
            Some(l) => format!("{} -> {}", self.peer, l),
            None => self.peer.to_string(),
        }
    }
}

/// Why a connection was not registered.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The vhost's `max-connections` limit.
    VhostLimit(u64),
    /// The user's `max-connections` limit.
    UserLimit(u64),
}

#[derive(Default)]
struct Inner {
    conns: HashMap<u64, Arc<ConnHandle>>,
    /// Open channels of registered connections, by (connection id, channel number).
    channel_views: HashMap<(u64, u16), Arc<ChannelShared>>,
    /// Counters of channels closed since the node started: node totals are these plus the
    /// open channels' (kept under this lock with `channel_views`, so a channel moving from
    /// one to the other is never counted twice or missed and totals never go down).
    retired: ChannelCounts,
    churn: Churn,
    per_vhost: HashMap<String, u64>,
    per_user: HashMap<String, u64>,
    /// Channels open per user, across their connections.
    channels_per_user: HashMap<String, u64>,
}

#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

/// Keeps a connection registered until dropped.
pub struct Registered {
    registry: Arc<Registry>,
    pub handle: Arc<ConnHandle>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.remove(&self.handle);
    }
}

impl Inner {
    /// A closed channel's counters join the node's totals.
    fn retire(&mut self, ch: &ChannelShared) {
        self.retired.add(&ch.counters.snapshot());
        self.churn.channel_closed += 1;
    }
}

fn dec(map: &mut HashMap<String, u64>, key: &str, by: u64) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(by);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Registry {
    /// Register a connection to `vhost` as `user`, unless that would exceed the vhost's or
    /// the user's connection limit (checked and counted under one lock, so two
    /// connections racing for the last slot cannot both get it).
    pub(crate) fn register(
        self: &Arc<Self>,
        who: Identity,
        vhost_max: Option<u64>,
        user_max: Option<u64>,
    ) -> Result<Registered, Refused> {
        let (user, vhost) = (who.user.as_str(), who.vhost.as_str());
        let mut g = self.inner.lock();
        if let Some(max) = vhost_max
            && g.per_vhost.get(vhost).copied().unwrap_or(0) >= max
        {
            return Err(Refused::VhostLimit(max));
        }
        if let Some(max) = user_max
            && g.per_user.get(user).copied().unwrap_or(0) >= max
        {
            return Err(Refused::UserLimit(max));
        }
        let connected_at_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let handle = Arc::new(ConnHandle {
            id: who.id,
            peer: who.endpoint.peer,
            local: who.endpoint.local,
            tls: who.endpoint.tls,
            user: who.user.clone(),
            vhost: who.vhost.clone(),
            connected_at_ms,
            channels: AtomicUsize::new(0),
            details: who.details,
            blocked: AtomicBool::new(false),
            in_flow: AtomicBool::new(false),
            close: Mutex::new(None),
            closed: Notify::new(),
        });
        *g.per_vhost.entry(vhost.to_owned()).or_default() += 1;
        *g.per_user.entry(user.to_owned()).or_default() += 1;
        g.conns.insert(who.id, handle.clone());
        g.churn.connection_created += 1;
        Ok(Registered { registry: self.clone(), handle })
    }

    fn remove(&self, h: &ConnHandle) {
        let mut g = self.inner.lock();
        if g.conns.remove(&h.id).is_some() {
            dec(&mut g.per_vhost, &h.vhost, 1);
            dec(&mut g.per_user, &h.user, 1);
            let open = h.channels.swap(0, Ordering::Relaxed) as u64;
            dec(&mut g.channels_per_user, &h.user, open);
            g.churn.connection_closed += 1;
            let gone: Vec<(u64, u16)> = g.channel_views.keys().filter(|k| k.0 == h.id).copied().collect();
            for k in gone {
                if let Some(ch) = g.channel_views.remove(&k) {
                    g.retire(&ch);
                }
            }
        }
    }

    /// Count a channel opened on `h`, unless its user already has `user_max` open.
    pub fn channel_opened(&self, h: &ConnHandle, user_max: Option<u64>) -> Result<(), u64> {
        let mut g = self.inner.lock();
        let n = g.channels_per_user.get(&h.user).copied().unwrap_or(0);
        if let Some(max) = user_max
            && n >= max
        {
            return Err(max);
        }
        *g.channels_per_user.entry(h.user.clone()).or_default() += 1;
        h.channels.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Show an opened channel to the management API (and count it in the node's totals).
    pub fn channel_shown(&self, h: &ConnHandle, ch: Arc<ChannelShared>) {
        let mut g = self.inner.lock();
        if g.conns.contains_key(&h.id) {
            g.churn.channel_created += 1;
            g.channel_views.insert((h.id, ch.id), ch);
        }
    }

    pub fn channel_closed(&self, h: &ConnHandle, number: u16) {
        let mut g = self.inner.lock();
        // Only if still registered (removal already uncounted every channel).
        if g.conns.contains_key(&h.id) && h.channels.load(Ordering::Relaxed) > 0 {
            h.channels.fetch_sub(1, Ordering::Relaxed);
            dec(&mut g.channels_per_user, &h.user, 1);
        }
        if let Some(ch) = g.channel_views.remove(&(h.id, number)) {
            g.retire(&ch);
        }
    }

    /// Every open channel with its connection.
    pub fn channels(&self) -> Vec<(Arc<ConnHandle>, Arc<ChannelShared>)> {
        let g = self.inner.lock();
        g.channel_views.iter().filter_map(|(k, ch)| Some((g.conns.get(&k.0)?.clone(), ch.clone()))).collect()
    }

    /// Message totals (closed channels included) and churn since the node started.
    pub fn totals(&self) -> (ChannelCounts, Churn) {
        let g = self.inner.lock();
        let mut t = g.retired;
        for ch in g.channel_views.values() {
            t.add(&ch.counters.snapshot());
        }
        (t, g.churn)
    }

    /// Every registered connection.
    pub fn all(&self) -> Vec<Arc<ConnHandle>> {
        self.inner.lock().conns.values().cloned().collect()
    }

    /// Ask every connection matching `pred` to close with `code`/`text`; returns how many.
    pub fn close_where(&self, pred: impl Fn(&ConnHandle) -> bool, code: u16, text: &str) -> usize {
        let targets: Vec<_> = self.inner.lock().conns.values().filter(|c| pred(c)).cloned().collect();
        for c in &targets {
            c.force_close(code, text.to_owned());
        }
        targets.len()
    }

    pub fn count_in_vhost(&self, vhost: &str) -> u64 {
        self.inner.lock().per_vhost.get(vhost).copied().unwrap_or(0)
    }

    pub fn count_of_user(&self, user: &str) -> u64 {
        self.inner.lock().per_user.get(user).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(id: u64, user: &str, vhost: &str) -> Identity {
        let endpoint = crate::connection::Endpoint { peer: "127.0.0.1:1".parse().unwrap(), local: None, tls: false };
        Identity { id, endpoint, user: user.to_owned(), vhost: vhost.to_owned(), details: details() }
    }

    fn details() -> ConnDetails {
        ConnDetails {
            client_properties: wire::FieldTable::new(),
            auth_mechanism: "PLAIN".into(),
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat_secs: 60,
            outbox: crate::outbox::Outbox::new(1 << 20, 131_072),
        }
    }

    #[test]
    fn limits_are_checked_and_released() {
        let r = Arc::new(Registry::default());
        let a = r.register(who(1, "u", "v"), Some(2), Some(1)).unwrap();
        assert_eq!(r.register(who(2, "u", "v"), Some(2), Some(1)).err(), Some(Refused::UserLimit(1)));
        let b = r.register(who(3, "w", "v"), Some(2), None).unwrap();
        assert_eq!(r.register(who(4, "x", "v"), Some(2), None).err(), Some(Refused::VhostLimit(2)));
        assert_eq!((r.count_in_vhost("v"), r.count_of_user("u")), (2, 1));
        drop(a);
        assert_eq!((r.count_in_vhost("v"), r.count_of_user("u")), (1, 0));
        let _c = r.register(who(5, "u", "v"), Some(2), Some(1)).unwrap();
        drop(b);
        assert_eq!(r.all().len(), 1);
    }

    #[test]
    fn channels_count_per_user_across_connections() {
        let r = Arc::new(Registry::default());
        let a = r.register(who(1, "u", "v"), None, None).unwrap();
        let b = r.register(who(2, "u", "v"), None, None).unwrap();
        r.channel_opened(&a.handle, Some(2)).unwrap();
        r.channel_opened(&b.handle, Some(2)).unwrap();
        assert_eq!(r.channel_opened(&b.handle, Some(2)), Err(2));
        r.channel_closed(&a.handle, 1);
        r.channel_opened(&b.handle, Some(2)).unwrap();
        // A closing connection gives back all its channels (b had 2).
        drop(b);
        r.channel_opened(&a.handle, Some(2)).unwrap();
        r.channel_opened(&a.handle, Some(2)).unwrap();
        assert_eq!(a.handle.channel_count(), 2);
        assert_eq!(r.channel_opened(&a.handle, Some(2)), Err(2));
    }

    #[test]
    fn totals_keep_closed_channels_counts() {
        use broker::counters::bump_single_writer as bump;
        let r = Arc::new(Registry::default());
        let a = r.register(who(1, "u", "v"), None, None).unwrap();
        let outbox = crate::outbox::Outbox::new(1 << 20, 131_072);
        let (c1, c2) = (ChannelShared::new(1, outbox.clone()), ChannelShared::new(2, outbox));
        r.channel_shown(&a.handle, c1.clone());
        r.channel_shown(&a.handle, c2.clone());
        bump(&c1.counters.publish, 5);
        bump(&c2.counters.publish, 7);
        assert_eq!(r.channels().len(), 2);
        assert_eq!(r.totals().0.publish, 12);
        r.channel_closed(&a.handle, 1);
        assert_eq!(r.totals().0.publish, 12, "a closed channel's count stays in the totals");
        drop(a);
        let (t, churn) = r.totals();
        assert_eq!(t.publish, 12);
        assert!(r.channels().is_empty());
        assert_eq!((churn.channel_created, churn.channel_closed), (2, 2));
        assert_eq!((churn.connection_created, churn.connection_closed), (1, 1));
    }

    #[tokio::test]
    async fn force_close_wakes_the_connection() {
        let r = Arc::new(Registry::default());
        let a = r.register(who(1, "u", "v"), None, None).unwrap();
        let _b = r.register(who(2, "u", "w"), None, None).unwrap();
        assert_eq!(r.close_where(|c| c.vhost == "v", 320, "vhost 'v' is deleted"), 1);
        assert_eq!(a.handle.close_requested().await, (320, "vhost 'v' is deleted".to_owned()));
    }
}
