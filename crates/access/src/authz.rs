//! RabbitMQ's authorization rules (rabbit_auth_backend_internal, rabbit_access_control).
//!
//! - A permission regex matches if it matches anywhere in the name (`re:run` is
//!   unanchored); the empty pattern is replaced by `^$`, so it matches only the empty name.
//! - A user with no permission entry for a vhost may do nothing there (and may not open it).
//! - Topic permissions apply only when one exists for that user, vhost and exchange; then
//!   the routing key must match its write (publish) or read (bind/consume) pattern, after
//!   `{username}`, `{vhost}` and `{client_id}` are replaced by the connection's values
//!   (the values are inserted as they are, not escaped, as RabbitMQ does).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use regex::Regex;

use crate::model::{Permission, TopicPermission};
use crate::regex_compat;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Perm {
    Configure,
    Write,
    Read,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Queue,
    Exchange,
}

impl Resource {
    fn kind(self) -> &'static str {
        match self {
            Resource::Queue => "queue",
            Resource::Exchange => "exchange",
        }
    }
}

/// The values a topic permission pattern may refer to; fixed for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicVars {
    pub username: String,
    pub vhost: String,
    /// The `client_id` client property, if the client sent one. Without it a
    /// `{client_id}` in a pattern stays as literal text (RabbitMQ expands only known keys).
    pub client_id: Option<String>,
}

/// One user's compiled permissions in one vhost. Cheap to clone (the regexes are shared);
/// each clone has its own cache of topic patterns expanded for its connection's variables.
pub struct Grants {
    shared: Arc<Compiled>,
    topic_cache: Mutex<TopicCache>,
}

struct Compiled {
    user: String,
    vhost: String,
    configure: Option<Regex>,
    write: Option<Regex>,
    read: Option<Regex>,
    /// Exchange name → its topic permission patterns.
    topics: HashMap<String, TopicPatterns>,
}

struct TopicPatterns {
    write: TopicPattern,
    read: TopicPattern,
}

enum TopicPattern {
    /// No variables: compiled once for every connection. `None`: did not compile (denies).
    Fixed(Option<Regex>),
    /// Has `{...}` variables: compiled per connection once expanded.
    Templated(String),
}

#[derive(Default)]
struct TopicCache {
    /// The variables the cached patterns were expanded with.
    vars: Option<TopicVars>,
    compiled: HashMap<(String, Perm), Option<Regex>>,
}

// Connections keep their Grants across tasks: it must stay Send + Sync + Clone.
const _: fn() = || {
    fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<Grants>();
};

const TOPIC_VARIABLES: [&str; 3] = ["{username}", "{vhost}", "{client_id}"];

impl Clone for Grants {
    fn clone(&self) -> Self {
        Grants { shared: Arc::clone(&self.shared), topic_cache: Mutex::new(TopicCache::default()) }
    }
}

impl std::fmt::Debug for Grants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grants").field("user", &self.shared.user).field("vhost", &self.shared.vhost).finish()
    }
}

impl Grants {
    /// Compile a permission entry and the same user's topic permissions in that vhost.
    /// Patterns were validated when they were stored; one that still fails to compile
    /// matches nothing (fail closed).
    pub(crate) fn compile<'a>(perm: &Permission, topic_perms: impl Iterator<Item = &'a TopicPermission>) -> Grants {
        let topics = topic_perms
            .map(|tp| {
                let patterns = TopicPatterns { write: TopicPattern::new(&tp.write), read: TopicPattern::new(&tp.read) };
                (tp.exchange.clone(), patterns)
            })
            .collect();
        let shared = Compiled {
            user: perm.user.clone(),
            vhost: perm.vhost.clone(),
            configure: compile_permission(&perm.configure),
            write: compile_permission(&perm.write),
            read: compile_permission(&perm.read),
            topics,
        };
        Grants { shared: Arc::new(shared), topic_cache: Mutex::new(TopicCache::default()) }
    }

    pub fn user(&self) -> &str {
        &self.shared.user
    }

    pub fn vhost(&self) -> &str {
        &self.shared.vhost
    }

    /// May the user do `perm` on the queue or exchange `name`? The default exchange is
    /// checked under the name "amq.default", as RabbitMQ does.
    pub fn check(&self, perm: Perm, res: Resource, name: &str) -> Result<(), String> {
        let re = match perm {
            Perm::Configure => &self.shared.configure,
            Perm::Write => &self.shared.write,
            Perm::Read => &self.shared.read,
        };
        if re.as_ref().is_some_and(|re| re.is_match(name)) {
            return Ok(());
        }
        Err(format!(
            "access to {} '{name}' in vhost '{}' refused for user '{}'",
            res.kind(),
            self.shared.vhost,
            self.shared.user
        ))
    }

    /// Topic authorisation for a routing key on `exchange` (the caller applies it to topic
    /// exchanges: `Write` when publishing, `Read` when binding a queue or exchange to it).
    /// Allowed when the user has no topic permission for that exchange.
    pub fn check_topic(&self, perm: Perm, exchange: &str, routing_key: &str, vars: &TopicVars) -> Result<(), String> {
        let Some(patterns) = self.shared.topics.get(exchange) else {
            return Ok(());
        };
        let pattern = match perm {
            Perm::Write => &patterns.write,
            Perm::Read => &patterns.read,
            // Topic permissions have no configure part; nothing can grant it.
            Perm::Configure => return Err(self.topic_refusal(exchange, routing_key)),
        };
        let allowed = match pattern {
            TopicPattern::Fixed(re) => re.as_ref().is_some_and(|re| re.is_match(routing_key)),
            TopicPattern::Templated(raw) => self.templated_match(exchange, perm, raw, routing_key, vars),
        };
        if allowed { Ok(()) } else { Err(self.topic_refusal(exchange, routing_key)) }
    }

    fn templated_match(&self, exchange: &str, perm: Perm, raw: &str, routing_key: &str, vars: &TopicVars) -> bool {
        // A poisoned lock only means another thread panicked mid-insert; the map is still
        // a valid cache.
        let mut cache = self.topic_cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.vars.as_ref() != Some(vars) {
            cache.compiled.clear();
            cache.vars = Some(vars.clone());
        }
        cache
            .compiled
            .entry((exchange.to_owned(), perm))
            .or_insert_with(|| regex_compat::compile(&expand(raw, vars)).ok())
            .as_ref()
            .is_some_and(|re| re.is_match(routing_key))
    }

    fn topic_refusal(&self, exchange: &str, routing_key: &str) -> String {
        format!(
            "access to topic '{routing_key}' in exchange '{exchange}' in vhost '{}' refused for user '{}'",
            self.shared.vhost, self.shared.user
        )
    }
}

impl TopicPattern {
    fn new(raw: &str) -> TopicPattern {
        let raw = if raw.is_empty() { "^$" } else { raw };
        if TOPIC_VARIABLES.iter().any(|v| raw.contains(v)) {
            TopicPattern::Templated(raw.to_owned())
        } else {
            TopicPattern::Fixed(regex_compat::compile(raw).ok())
        }
    }
}

/// RabbitMQ reads an empty permission as `^$`.
fn compile_permission(raw: &str) -> Option<Regex> {
    regex_compat::compile(if raw.is_empty() { "^$" } else { raw }).ok()
}

fn expand(raw: &str, vars: &TopicVars) -> String {
    let mut s = raw.replace("{username}", &vars.username).replace("{vhost}", &vars.vhost);
    if let Some(id) = &vars.client_id {
        s = s.replace("{client_id}", id);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(configure: &str, write: &str, read: &str) -> Permission {
        Permission {
            user: "bob".into(),
            vhost: "/".into(),
            configure: configure.into(),
            write: write.into(),
            read: read.into(),
        }
    }

    fn topic(exchange: &str, write: &str, read: &str) -> TopicPermission {
        TopicPermission {
            user: "bob".into(),
            vhost: "/".into(),
            exchange: exchange.into(),
            write: write.into(),
            read: read.into(),
        }
    }

    fn vars(client_id: Option<&str>) -> TopicVars {
        TopicVars { username: "bob".into(), vhost: "/".into(), client_id: client_id.map(Into::into) }
    }

    #[test]
    fn dot_star_allows_everything_and_empty_allows_nothing() {
        let g = Grants::compile(&perm(".*", "", "^$"), std::iter::empty());
        assert_eq!(g.check(Perm::Configure, Resource::Queue, "q"), Ok(()));
        assert_eq!(g.check(Perm::Configure, Resource::Exchange, "amq.default"), Ok(()));
        assert_eq!(
            g.check(Perm::Write, Resource::Queue, "q"),
            Err("access to queue 'q' in vhost '/' refused for user 'bob'".into())
        );
        assert_eq!(
            g.check(Perm::Read, Resource::Exchange, "amq.default"),
            Err("access to exchange 'amq.default' in vhost '/' refused for user 'bob'".into())
        );
        assert_eq!(g.user(), "bob");
        assert_eq!(g.vhost(), "/");
    }

    #[test]
    fn patterns_are_unanchored_unless_anchored() {
        let g = Grants::compile(&perm("tmp", "^app\\.", "^(orders|amq\\.default)$"), std::iter::empty());
        assert!(g.check(Perm::Configure, Resource::Queue, "my-tmp-queue").is_ok());
        assert!(g.check(Perm::Configure, Resource::Queue, "other").is_err());
        assert!(g.check(Perm::Write, Resource::Exchange, "app.events").is_ok());
        assert!(g.check(Perm::Write, Resource::Exchange, "x.app.events").is_err());
        assert!(g.check(Perm::Read, Resource::Queue, "orders").is_ok());
        assert!(g.check(Perm::Read, Resource::Queue, "orders2").is_err());
        assert!(g.check(Perm::Read, Resource::Exchange, "amq.default").is_ok());
    }

    #[test]
    fn topic_checks_apply_only_to_exchanges_with_a_topic_permission() {
        let tps = [topic("amq.topic", "^sensors\\.", "")];
        let g = Grants::compile(&perm(".*", ".*", ".*"), tps.iter());
        let v = vars(None);
        assert_eq!(g.check_topic(Perm::Write, "other.topic", "anything", &v), Ok(()));
        assert_eq!(g.check_topic(Perm::Write, "amq.topic", "sensors.temp", &v), Ok(()));
        assert_eq!(
            g.check_topic(Perm::Write, "amq.topic", "alerts.fire", &v),
            Err("access to topic 'alerts.fire' in exchange 'amq.topic' in vhost '/' refused for user 'bob'".into())
        );
        // '' read pattern: only the empty routing key (RabbitMQ's '^$').
        assert!(g.check_topic(Perm::Read, "amq.topic", "sensors.temp", &v).is_err());
        assert!(g.check_topic(Perm::Read, "amq.topic", "", &v).is_ok());
    }

    #[test]
    fn topic_variables_are_expanded_per_connection() {
        let tps = [topic("amq.topic", "^{username}\\.", "^{client_id}\\.|^{vhost}$")];
        let g = Grants::compile(&perm(".*", ".*", ".*"), tps.iter());
        assert!(g.check_topic(Perm::Write, "amq.topic", "bob.x", &vars(None)).is_ok());
        assert!(g.check_topic(Perm::Write, "amq.topic", "alice.x", &vars(None)).is_err());
        assert!(g.check_topic(Perm::Read, "amq.topic", "dev-7.x", &vars(Some("dev-7"))).is_ok());
        assert!(g.check_topic(Perm::Read, "amq.topic", "/", &vars(Some("dev-7"))).is_ok());
        // Without a client_id the placeholder stays literal.
        assert!(g.check_topic(Perm::Read, "amq.topic", "dev-7.x", &vars(None)).is_err());
        assert!(g.check_topic(Perm::Read, "amq.topic", "{client_id}.x", &vars(None)).is_ok());
        // Another connection's clone gets its own expansion.
        let other = g.clone();
        let alice = TopicVars { username: "alice".into(), vhost: "/".into(), client_id: None };
        assert!(other.check_topic(Perm::Write, "amq.topic", "alice.x", &alice).is_ok());
        assert!(g.check_topic(Perm::Write, "amq.topic", "alice.x", &vars(None)).is_err());
    }
}
