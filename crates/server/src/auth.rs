//! Authorization of one connection's AMQP operations: the choke point every channel
//! method passes through (see [`crate::channel::Channel::handle`]).
//!
//! A connection caches its user's compiled grants for its vhost and re-reads them when
//! the node's access directory changes (one atomic load per check), so a permission
//! change applies to open connections at their next operation. Publishing, the hot path,
//! also remembers the last exchange (and topic routing key) it was allowed to write to.

use std::cell::RefCell;

use access::authz::{Grants, Perm, Resource, TopicVars};
use broker::AmqpError;

use crate::state::ServerState;

/// RabbitMQ checks the default exchange under this name.
const DEFAULT_EXCHANGE: &str = "amq.default";

pub struct ConnAccess {
    user: String,
    vhost: String,
    topic_vars: TopicVars,
    cache: RefCell<Cache>,
}

#[derive(Default)]
struct Cache {
    /// Directory version the grants were read at (u64::MAX: never read).
    version: u64,
    grants: Option<Grants>,
    /// The last exchange this connection may write to (at `version`).
    publish_ok: Option<String>,
    /// The last (topic exchange, routing key) it may publish with (at `version`).
    topic_ok: Option<(String, String)>,
}

fn perm_name(p: Perm) -> &'static str {
    match p {
        Perm::Configure => "configure",
        Perm::Write => "write",
        Perm::Read => "read",
    }
}

fn resource_name(r: Resource) -> &'static str {
    match r {
        Resource::Queue => "queue",
        Resource::Exchange => "exchange",
    }
}

impl ConnAccess {
    pub fn new(user: &str, vhost: &str, client_id: Option<String>) -> ConnAccess {
        ConnAccess {
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            topic_vars: TopicVars { username: user.to_owned(), vhost: vhost.to_owned(), client_id },
            cache: RefCell::new(Cache { version: u64::MAX, ..Cache::default() }),
        }
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// The grants as of the directory's current version.
    fn refresh(&self, server: &ServerState) {
        let v = server.access_version();
        let mut c = self.cache.borrow_mut();
        if c.version != v {
            *c = Cache { version: v, grants: server.grants(&self.user, &self.vhost), ..Cache::default() };
        }
    }

    /// RabbitMQ's refusal (4.x wording, which names the permission):
    /// "configure access to queue 'q' in vhost '/' refused for user 'bob'".
    fn refused(&self, perm: Perm, res: Resource, name: &str) -> AmqpError {
        AmqpError::access_refused(format!(
            "{} access to {} '{name}' in vhost '{}' refused for user '{}'",
            perm_name(perm),
            resource_name(res),
            self.vhost,
            self.user
        ))
    }

    /// May the user do `perm` on the queue or exchange `name`? 403 ACCESS_REFUSED if not.
    pub fn check(&self, server: &ServerState, perm: Perm, res: Resource, name: &str) -> Result<(), AmqpError> {
        let name = if res == Resource::Exchange && name.is_empty() { DEFAULT_EXCHANGE } else { name };
        self.refresh(server);
        let c = self.cache.borrow();
        match &c.grants {
            Some(g) if g.check(perm, res, name).is_ok() => Ok(()),
            _ => Err(self.refused(perm, res, name)),
        }
    }

    /// basic.publish: write on the exchange, and the topic permission on the routing key
    /// when the exchange is a topic exchange. Cached for the last exchange and key.
    pub fn check_publish(
        &self,
        server: &ServerState,
        exchange: &str,
        is_topic: bool,
        routing_key: &str,
    ) -> Result<(), AmqpError> {
        self.refresh(server);
        let cached = {
            let c = self.cache.borrow();
            c.publish_ok.as_deref() == Some(exchange)
                && (!is_topic || c.topic_ok.as_ref().is_some_and(|(e, k)| e == exchange && k == routing_key))
        };
        if cached {
            return Ok(());
        }
        self.check(server, Perm::Write, Resource::Exchange, exchange)?;
        if is_topic {
            self.check_topic(server, Perm::Write, exchange, routing_key)?;
        }
        let mut c = self.cache.borrow_mut();
        c.publish_ok = Some(exchange.to_owned());
        if is_topic {
            c.topic_ok = Some((exchange.to_owned(), routing_key.to_owned()));
        }
        Ok(())
    }

    /// Topic authorisation: the routing key of a publish (write) or of a queue binding
    /// (read) on a topic exchange, when the user has topic permissions for it.
    pub fn check_topic(
        &self,
        server: &ServerState,
        perm: Perm,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), AmqpError> {
        self.refresh(server);
        let c = self.cache.borrow();
        let Some(g) = &c.grants else { return Err(self.refused(perm, Resource::Exchange, exchange)) };
        g.check_topic(perm, exchange, routing_key, &self.topic_vars).map_err(|_| {
            AmqpError::access_refused(format!(
                "{} access to topic '{routing_key}' in exchange '{exchange}' in vhost '{}' refused for user '{}'",
                perm_name(perm),
                self.vhost,
                self.user
            ))
        })
    }
}
