//! All access metadata of a node, changed only through [`Change`]s so that the server can
//! log each change, replay the log at boot and compact it with [`Directory::all_changes`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::authz::Grants;
use crate::error::{AccessError, AuthFailure};
use crate::model::{Permission, Policy, TopicPermission, User, UserLimits, Vhost, VhostLimits};
use crate::{password, policy, regex_compat};

/// Queue types a vhost may default to.
const QUEUE_TYPES: &[&str] = &["classic", "quorum", "stream"];

/// One edit of the directory. `Put*` creates or replaces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Change {
    PutUser(User),
    DeleteUser(String),
    PutVhost(Vhost),
    DeleteVhost(String),
    PutPermission(Permission),
    DeletePermission { user: String, vhost: String },
    PutTopicPermission(TopicPermission),
    DeleteTopicPermission { user: String, vhost: String, exchange: String },
    PutPolicy(Policy),
    DeletePolicy { vhost: String, name: String },
    PutOperatorPolicy(Policy),
    DeleteOperatorPolicy { vhost: String, name: String },
    SetVhostLimits { vhost: String, limits: VhostLimits },
    SetUserLimits { user: String, limits: UserLimits },
}

#[derive(Clone, Default, Debug)]
pub struct Directory {
    users: BTreeMap<String, User>,
    vhosts: BTreeMap<String, Vhost>,
    /// Keyed by (user, vhost).
    permissions: BTreeMap<(String, String), Permission>,
    /// Keyed by (user, vhost, exchange).
    topic_permissions: BTreeMap<(String, String, String), TopicPermission>,
    /// Keyed by (vhost, name).
    policies: BTreeMap<(String, String), Policy>,
    /// Keyed by (vhost, name).
    operator_policies: BTreeMap<(String, String), Policy>,
    /// Number of changes applied; lets holders of derived state (cached grants) notice.
    version: u64,
}

impl Directory {
    pub fn new() -> Directory {
        Directory::default()
    }

    /// Would `c` apply cleanly? Names what is missing or malformed.
    pub fn validate(&self, c: &Change) -> Result<(), AccessError> {
        match c {
            Change::PutUser(u) => {
                non_empty("user name", &u.name)?;
                match password::malformed_reason(u.hashing_algorithm, &u.password_hash) {
                    Some(why) => Err(invalid(format!("user '{}': {why}", u.name))),
                    None => Ok(()),
                }
            }
            Change::DeleteUser(name) | Change::SetUserLimits { user: name, .. } => self.need_user(name),
            Change::PutVhost(v) => {
                non_empty("vhost name", &v.name)?;
                match &v.default_queue_type {
                    Some(t) if !QUEUE_TYPES.contains(&t.as_str()) => Err(invalid(format!(
                        "vhost '{}': default queue type '{t}' is not one of {}",
                        v.name,
                        QUEUE_TYPES.join(", ")
                    ))),
                    _ => Ok(()),
                }
            }
            Change::DeleteVhost(name) | Change::SetVhostLimits { vhost: name, .. } => self.need_vhost(name),
            Change::PutPermission(p) => {
                self.need_user(&p.user)?;
                self.need_vhost(&p.vhost)?;
                let what = || format!("permissions of user '{}' in vhost '{}'", p.user, p.vhost);
                [&p.configure, &p.write, &p.read].into_iter().try_for_each(|re| regex_ok(re, what))
            }
            Change::DeletePermission { user, vhost } => {
                if self.permissions.contains_key(&(user.clone(), vhost.clone())) {
                    Ok(())
                } else {
                    Err(AccessError::NotFound(format!("user '{user}' has no permissions in vhost '{vhost}'")))
                }
            }
            Change::PutTopicPermission(t) => {
                self.need_user(&t.user)?;
                self.need_vhost(&t.vhost)?;
                non_empty("topic permission exchange", &t.exchange)?;
                let what = || {
                    format!(
                        "topic permissions of user '{}' on exchange '{}' in vhost '{}'",
                        t.user, t.exchange, t.vhost
                    )
                };
                [&t.write, &t.read].into_iter().try_for_each(|re| regex_ok(re, what))
            }
            Change::DeleteTopicPermission { user, vhost, exchange } => {
                if self.topic_permissions.contains_key(&(user.clone(), vhost.clone(), exchange.clone())) {
                    Ok(())
                } else {
                    Err(AccessError::NotFound(format!(
                        "user '{user}' has no topic permissions on exchange '{exchange}' in vhost '{vhost}'"
                    )))
                }
            }
            Change::PutPolicy(p) => self.validate_policy(p, "policy", policy::validate_policy_definition),
            Change::PutOperatorPolicy(p) => {
                self.validate_policy(p, "operator policy", policy::validate_operator_policy_definition)
            }
            Change::DeletePolicy { vhost, name } => need_policy(&self.policies, vhost, name, "policy"),
            Change::DeleteOperatorPolicy { vhost, name } => {
                need_policy(&self.operator_policies, vhost, name, "operator policy")
            }
        }
    }

    /// Validate and apply `c`. Deleting a user drops its permissions and topic permissions;
    /// deleting a vhost drops the permissions, topic permissions and policies in it.
    pub fn apply(&mut self, c: Change) -> Result<(), AccessError> {
        self.validate(&c)?;
        match c {
            Change::PutUser(u) => {
                self.users.insert(u.name.clone(), u);
            }
            Change::DeleteUser(name) => {
                self.users.remove(&name);
                self.permissions.retain(|(user, _), _| *user != name);
                self.topic_permissions.retain(|(user, _, _), _| *user != name);
            }
            Change::PutVhost(v) => {
                self.vhosts.insert(v.name.clone(), v);
            }
            Change::DeleteVhost(name) => {
                self.vhosts.remove(&name);
                self.permissions.retain(|(_, vhost), _| *vhost != name);
                self.topic_permissions.retain(|(_, vhost, _), _| *vhost != name);
                self.policies.retain(|(vhost, _), _| *vhost != name);
                self.operator_policies.retain(|(vhost, _), _| *vhost != name);
            }
            Change::PutPermission(p) => {
                self.permissions.insert((p.user.clone(), p.vhost.clone()), p);
            }
            Change::DeletePermission { user, vhost } => {
                self.permissions.remove(&(user, vhost));
            }
            Change::PutTopicPermission(t) => {
                self.topic_permissions.insert((t.user.clone(), t.vhost.clone(), t.exchange.clone()), t);
            }
            Change::DeleteTopicPermission { user, vhost, exchange } => {
                self.topic_permissions.remove(&(user, vhost, exchange));
            }
            Change::PutPolicy(p) => {
                self.policies.insert((p.vhost.clone(), p.name.clone()), p);
            }
            Change::DeletePolicy { vhost, name } => {
                self.policies.remove(&(vhost, name));
            }
            Change::PutOperatorPolicy(p) => {
                self.operator_policies.insert((p.vhost.clone(), p.name.clone()), p);
            }
            Change::DeleteOperatorPolicy { vhost, name } => {
                self.operator_policies.remove(&(vhost, name));
            }
            Change::SetVhostLimits { vhost, limits } => {
                if let Some(v) = self.vhosts.get_mut(&vhost) {
                    v.limits = limits;
                }
            }
            Change::SetUserLimits { user, limits } => {
                if let Some(u) = self.users.get_mut(&user) {
                    u.limits = limits;
                }
            }
        }
        self.version += 1;
        Ok(())
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    pub fn vhost(&self, name: &str) -> Option<&Vhost> {
        self.vhosts.get(name)
    }

    pub fn vhosts(&self) -> impl Iterator<Item = &Vhost> {
        self.vhosts.values()
    }

    pub fn permission(&self, user: &str, vhost: &str) -> Option<&Permission> {
        self.permissions.get(&(user.to_owned(), vhost.to_owned()))
    }

    /// All permissions, ordered by user then vhost.
    pub fn permissions(&self) -> impl Iterator<Item = &Permission> {
        self.permissions.values()
    }

    /// All topic permissions, ordered by user, vhost, exchange.
    pub fn topic_permissions(&self) -> impl Iterator<Item = &TopicPermission> {
        self.topic_permissions.values()
    }

    /// The policies of one vhost, ordered by name.
    pub fn policies<'a>(&'a self, vhost: &'a str) -> impl Iterator<Item = &'a Policy> + 'a {
        in_vhost(&self.policies, vhost)
    }

    /// The operator policies of one vhost, ordered by name.
    pub fn operator_policies<'a>(&'a self, vhost: &'a str) -> impl Iterator<Item = &'a Policy> + 'a {
        in_vhost(&self.operator_policies, vhost)
    }

    /// `Put*` changes that rebuild this directory from empty: vhosts, users, permissions,
    /// topic permissions, policies, operator policies (limits travel inside users and vhosts).
    pub fn all_changes(&self) -> Vec<Change> {
        let vhosts = self.vhosts.values().cloned().map(Change::PutVhost);
        let users = self.users.values().cloned().map(Change::PutUser);
        let perms = self.permissions.values().cloned().map(Change::PutPermission);
        let topics = self.topic_permissions.values().cloned().map(Change::PutTopicPermission);
        let policies = self.policies.values().cloned().map(Change::PutPolicy);
        let operator = self.operator_policies.values().cloned().map(Change::PutOperatorPolicy);
        vhosts.chain(users).chain(perms).chain(topics).chain(policies).chain(operator).collect()
    }

    /// The changes that turn this directory into `target`, in an order that applies
    /// cleanly: removals of what `target` lacks (permissions, topic permissions and
    /// policies first, then users and vhosts), then `Put*` of what is new or different
    /// (limits travel inside users and vhosts). Empty when the two are equal. Installing a
    /// cluster snapshot applies these, so their effects (a deleted vhost's queues and
    /// connections, a deleted user's connections) are carried out as for any change.
    pub fn changes_to(&self, target: &Directory) -> Vec<Change> {
        let mut out = Vec::new();
        for (k, p) in &self.permissions {
            if !target.permissions.contains_key(k) {
                out.push(Change::DeletePermission { user: p.user.clone(), vhost: p.vhost.clone() });
            }
        }
        for (k, t) in &self.topic_permissions {
            if !target.topic_permissions.contains_key(k) {
                out.push(Change::DeleteTopicPermission {
                    user: t.user.clone(),
                    vhost: t.vhost.clone(),
                    exchange: t.exchange.clone(),
                });
            }
        }
        for (k, p) in &self.policies {
            if !target.policies.contains_key(k) {
                out.push(Change::DeletePolicy { vhost: p.vhost.clone(), name: p.name.clone() });
            }
        }
        for (k, p) in &self.operator_policies {
            if !target.operator_policies.contains_key(k) {
                out.push(Change::DeleteOperatorPolicy { vhost: p.vhost.clone(), name: p.name.clone() });
            }
        }
        out.extend(self.users.keys().filter(|u| !target.users.contains_key(*u)).cloned().map(Change::DeleteUser));
        out.extend(self.vhosts.keys().filter(|v| !target.vhosts.contains_key(*v)).cloned().map(Change::DeleteVhost));
        let vhosts = target.vhosts.iter().filter(|(k, v)| self.vhosts.get(*k) != Some(*v));
        out.extend(vhosts.map(|(_, v)| Change::PutVhost(v.clone())));
        let users = target.users.iter().filter(|(k, u)| self.users.get(*k) != Some(*u));
        out.extend(users.map(|(_, u)| Change::PutUser(u.clone())));
        let perms = target.permissions.iter().filter(|(k, p)| self.permissions.get(*k) != Some(*p));
        out.extend(perms.map(|(_, p)| Change::PutPermission(p.clone())));
        let topics = target.topic_permissions.iter().filter(|(k, t)| self.topic_permissions.get(*k) != Some(*t));
        out.extend(topics.map(|(_, t)| Change::PutTopicPermission(t.clone())));
        let policies = target.policies.iter().filter(|(k, p)| self.policies.get(*k) != Some(*p));
        out.extend(policies.map(|(_, p)| Change::PutPolicy(p.clone())));
        let operator = target.operator_policies.iter().filter(|(k, p)| self.operator_policies.get(*k) != Some(*p));
        out.extend(operator.map(|(_, p)| Change::PutOperatorPolicy(p.clone())));
        out
    }

    /// Check a password login (PLAIN / AMQPLAIN).
    pub fn authenticate(&self, user: &str, password: &str) -> Result<&User, AuthFailure> {
        let u = self.users.get(user).ok_or_else(|| AuthFailure::UnknownUser(user.to_owned()))?;
        if u.password_hash.is_empty() {
            return Err(AuthFailure::NoPassword(user.to_owned()));
        }
        if password::verify(u.hashing_algorithm, &u.password_hash, password) {
            Ok(u)
        } else {
            Err(AuthFailure::BadPassword(user.to_owned()))
        }
    }

    /// The user's compiled permissions in `vhost`; `None` when it has no permission entry
    /// there (RabbitMQ then refuses to open the vhost).
    pub fn grants(&self, user: &str, vhost: &str) -> Option<Grants> {
        let perm = self.permission(user, vhost)?;
        let from = (user.to_owned(), vhost.to_owned(), String::new());
        let topics =
            self.topic_permissions.range(from..).map(|(_, t)| t).take_while(|t| t.user == user && t.vhost == vhost);
        Some(Grants::compile(perm, topics))
    }

    fn need_user(&self, name: &str) -> Result<(), AccessError> {
        if self.users.contains_key(name) {
            Ok(())
        } else {
            Err(AccessError::NotFound(format!("user '{name}' does not exist")))
        }
    }

    fn need_vhost(&self, name: &str) -> Result<(), AccessError> {
        if self.vhosts.contains_key(name) {
            Ok(())
        } else {
            Err(AccessError::NotFound(format!("vhost '{name}' does not exist")))
        }
    }

    fn validate_policy(
        &self,
        p: &Policy,
        kind: &str,
        check_definition: fn(&serde_json::Map<String, serde_json::Value>) -> Result<(), String>,
    ) -> Result<(), AccessError> {
        self.need_vhost(&p.vhost)?;
        non_empty(&format!("{kind} name"), &p.name)?;
        let what = || format!("{kind} '{}' in vhost '{}'", p.name, p.vhost);
        regex_ok(&p.pattern, what)?;
        check_definition(&p.definition).map_err(|e| invalid(format!("{}: {e}", what())))
    }
}

fn in_vhost<'a>(map: &'a BTreeMap<(String, String), Policy>, vhost: &'a str) -> impl Iterator<Item = &'a Policy> + 'a {
    map.range((vhost.to_owned(), String::new())..).map(|(_, p)| p).take_while(move |p| p.vhost == vhost)
}

fn need_policy(
    map: &BTreeMap<(String, String), Policy>,
    vhost: &str,
    name: &str,
    kind: &str,
) -> Result<(), AccessError> {
    if map.contains_key(&(vhost.to_owned(), name.to_owned())) {
        Ok(())
    } else {
        Err(AccessError::NotFound(format!("{kind} '{name}' in vhost '{vhost}' does not exist")))
    }
}

fn regex_ok(pattern: &str, what: impl Fn() -> String) -> Result<(), AccessError> {
    regex_compat::compile(pattern).map(drop).map_err(|e| invalid(format!("{}: {e}", what())))
}

fn non_empty(what: &str, value: &str) -> Result<(), AccessError> {
    if value.is_empty() { Err(invalid(format!("{what} must not be empty"))) } else { Ok(()) }
}

fn invalid(msg: String) -> AccessError {
    AccessError::Invalid(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{Perm, Resource};
    use crate::model::{ApplyTo, HashingAlgorithm};
    use crate::password::hash_password;
    use serde_json::json;

    fn user(name: &str, pw: &str) -> User {
        User {
            name: name.into(),
            password_hash: hash_password(HashingAlgorithm::Sha256, pw),
            hashing_algorithm: HashingAlgorithm::Sha256,
            tags: vec!["management".into()],
            limits: UserLimits::default(),
        }
    }

    fn perm(user: &str, vhost: &str, all: &str) -> Permission {
        Permission {
            user: user.into(),
            vhost: vhost.into(),
            configure: all.into(),
            write: all.into(),
            read: all.into(),
        }
    }

    fn topic(user: &str, vhost: &str, exchange: &str) -> TopicPermission {
        TopicPermission {
            user: user.into(),
            vhost: vhost.into(),
            exchange: exchange.into(),
            write: "^a".into(),
            read: "^b".into(),
        }
    }

    fn policy(vhost: &str, name: &str, def: serde_json::Value) -> Policy {
        Policy {
            vhost: vhost.into(),
            name: name.into(),
            pattern: "^q".into(),
            apply_to: ApplyTo::Queues,
            priority: 1,
            definition: def.as_object().unwrap().clone(),
        }
    }

    /// vhosts "/" and "v2", users bob and alice with full permissions in both, topic
    /// permissions, one policy and one operator policy per vhost.
    fn populated() -> Directory {
        let mut d = Directory::new();
        for v in ["/", "v2"] {
            d.apply(Change::PutVhost(Vhost::named(v))).unwrap();
        }
        for u in ["bob", "alice"] {
            d.apply(Change::PutUser(user(u, "pw"))).unwrap();
            for v in ["/", "v2"] {
                d.apply(Change::PutPermission(perm(u, v, ".*"))).unwrap();
                d.apply(Change::PutTopicPermission(topic(u, v, "amq.topic"))).unwrap();
            }
        }
        for v in ["/", "v2"] {
            d.apply(Change::PutPolicy(policy(v, "ttl", json!({"message-ttl": 1000})))).unwrap();
            d.apply(Change::PutOperatorPolicy(policy(v, "cap", json!({"max-length": 10})))).unwrap();
        }
        d
    }

    #[test]
    fn version_counts_applied_changes_only() {
        let mut d = Directory::new();
        assert_eq!(d.version(), 0);
        d.apply(Change::PutVhost(Vhost::named("/"))).unwrap();
        assert_eq!(d.version(), 1);
        assert!(d.apply(Change::DeleteVhost("nope".into())).is_err());
        assert_eq!(d.version(), 1);
    }

    #[test]
    fn references_must_exist() {
        let mut d = Directory::new();
        d.apply(Change::PutVhost(Vhost::named("/"))).unwrap();
        let e = d.apply(Change::PutPermission(perm("ghost", "/", ".*"))).unwrap_err();
        assert_eq!(e, AccessError::NotFound("user 'ghost' does not exist".into()));
        d.apply(Change::PutUser(user("bob", "pw"))).unwrap();
        let e = d.apply(Change::PutPermission(perm("bob", "nowhere", ".*"))).unwrap_err();
        assert_eq!(e, AccessError::NotFound("vhost 'nowhere' does not exist".into()));
        assert!(matches!(d.apply(Change::PutTopicPermission(topic("bob", "x", "e"))), Err(AccessError::NotFound(_))));
        assert!(matches!(
            d.apply(Change::PutPolicy(policy("x", "p", json!({"max-length": 1})))),
            Err(AccessError::NotFound(_))
        ));
        assert!(matches!(
            d.apply(Change::SetUserLimits { user: "ghost".into(), limits: UserLimits::default() }),
            Err(AccessError::NotFound(_))
        ));
        for c in [
            Change::DeleteUser("ghost".into()),
            Change::DeletePermission { user: "bob".into(), vhost: "/".into() },
            Change::DeleteTopicPermission { user: "bob".into(), vhost: "/".into(), exchange: "e".into() },
            Change::DeletePolicy { vhost: "/".into(), name: "p".into() },
            Change::DeleteOperatorPolicy { vhost: "/".into(), name: "p".into() },
        ] {
            assert!(matches!(d.validate(&c), Err(AccessError::NotFound(_))), "{c:?}");
        }
    }

    #[test]
    fn malformed_values_are_invalid() {
        let mut d = populated();
        let before = d.all_changes();
        let e =
            d.apply(Change::PutPermission(Permission { configure: "(".into(), ..perm("bob", "/", ".*") })).unwrap_err();
        assert!(matches!(&e, AccessError::Invalid(m) if m.contains("user 'bob'") && m.contains("'('")), "{e}");
        let e =
            d.apply(Change::PutPolicy(Policy { pattern: "[".into(), ..policy("/", "p", json!({"max-length": 1})) }));
        assert!(matches!(e, Err(AccessError::Invalid(_))));
        let e = d.apply(Change::PutPolicy(policy("/", "p", json!({"max-length": "lots"}))));
        assert!(matches!(&e, Err(AccessError::Invalid(m)) if m.contains("policy 'p' in vhost '/'")), "{e:?}");
        let e = d.apply(Change::PutOperatorPolicy(policy("/", "p", json!({"dead-letter-exchange": "x"}))));
        assert!(matches!(e, Err(AccessError::Invalid(_))));
        let bad_hash = User { password_hash: "AAAA".into(), ..user("eve", "pw") };
        assert!(matches!(d.apply(Change::PutUser(bad_hash)), Err(AccessError::Invalid(_))));
        let bad_type = Vhost { default_queue_type: Some("fancy".into()), ..Vhost::named("v3") };
        assert!(matches!(d.apply(Change::PutVhost(bad_type)), Err(AccessError::Invalid(_))));
        assert_eq!(d.all_changes(), before, "refused changes changed nothing");
    }

    #[test]
    fn delete_user_cascades_to_its_permissions() {
        let mut d = populated();
        d.apply(Change::DeleteUser("bob".into())).unwrap();
        assert!(d.user("bob").is_none());
        assert!(d.permissions().all(|p| p.user == "alice"));
        assert!(d.topic_permissions().all(|t| t.user == "alice"));
        assert_eq!(d.permissions().count(), 2);
        assert_eq!(d.topic_permissions().count(), 2);
        assert_eq!(d.policies("/").count(), 1);
    }

    #[test]
    fn delete_vhost_cascades_to_permissions_and_policies() {
        let mut d = populated();
        d.apply(Change::DeleteVhost("v2".into())).unwrap();
        assert!(d.vhost("v2").is_none());
        assert!(d.permissions().all(|p| p.vhost == "/"));
        assert!(d.topic_permissions().all(|t| t.vhost == "/"));
        assert_eq!(d.permissions().count(), 2);
        assert_eq!(d.policies("v2").count(), 0);
        assert_eq!(d.operator_policies("v2").count(), 0);
        assert_eq!(d.policies("/").count(), 1);
        assert_eq!(d.users().count(), 2);
    }

    #[test]
    fn limits_are_set_on_existing_entries() {
        let mut d = populated();
        let vl = VhostLimits { max_connections: Some(5), max_queues: Some(100) };
        d.apply(Change::SetVhostLimits { vhost: "/".into(), limits: vl.clone() }).unwrap();
        assert_eq!(d.vhost("/").unwrap().limits, vl);
        let ul = UserLimits { max_connections: Some(2), max_channels: None };
        d.apply(Change::SetUserLimits { user: "bob".into(), limits: ul.clone() }).unwrap();
        assert_eq!(d.user("bob").unwrap().limits, ul);
    }

    #[test]
    fn all_changes_rebuild_an_equal_directory() {
        let mut d = populated();
        d.apply(Change::SetVhostLimits {
            vhost: "v2".into(),
            limits: VhostLimits { max_connections: Some(1), max_queues: None },
        })
        .unwrap();
        let mut rebuilt = Directory::new();
        for c in d.all_changes() {
            rebuilt.apply(c).unwrap();
        }
        assert_eq!(rebuilt.all_changes(), d.all_changes());
        assert_eq!(rebuilt.vhost("v2").unwrap().limits.max_connections, Some(1));
        // Changes survive a serde round trip (the server logs them as JSON).
        let json = serde_json::to_string(&d.all_changes()).unwrap();
        let back: Vec<Change> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d.all_changes());
    }

    #[test]
    fn changes_to_turns_one_directory_into_another() {
        let from = populated();
        // A clone: populated() salts its password hashes afresh.
        let mut to = from.clone();
        assert!(from.changes_to(&to).is_empty(), "equal directories need no change");
        to.apply(Change::DeleteVhost("v2".into())).unwrap();
        to.apply(Change::DeleteUser("alice".into())).unwrap();
        to.apply(Change::PutVhost(Vhost::named("v3"))).unwrap();
        to.apply(Change::PutUser(user("bob", "new password"))).unwrap();
        to.apply(Change::PutUser(user("carol", "pw"))).unwrap();
        to.apply(Change::PutPermission(perm("carol", "v3", "^c"))).unwrap();
        to.apply(Change::DeletePolicy { vhost: "/".into(), name: "ttl".into() }).unwrap();
        to.apply(Change::PutOperatorPolicy(policy("/", "cap", json!({"max-length": 99})))).unwrap();
        to.apply(Change::SetVhostLimits {
            vhost: "/".into(),
            limits: VhostLimits { max_connections: Some(3), max_queues: None },
        })
        .unwrap();
        let changes = from.changes_to(&to);
        let mut d = from.clone();
        for c in changes.clone() {
            d.apply(c.clone()).unwrap_or_else(|e| panic!("{c:?}: {e}"));
        }
        assert_eq!(d.all_changes(), to.all_changes());
        // Unchanged entries are not rewritten (bob's permissions in "/" stayed equal).
        assert!(!changes.contains(&Change::PutPermission(perm("bob", "/", ".*"))), "{changes:?}");
        // To empty and back.
        let empty = Directory::new();
        let mut d = from.clone();
        for c in from.changes_to(&empty) {
            d.apply(c).unwrap();
        }
        assert!(d.all_changes().is_empty());
        for c in d.changes_to(&from) {
            d.apply(c).unwrap();
        }
        assert_eq!(d.all_changes(), from.all_changes());
    }

    #[test]
    fn authenticate_distinguishes_failures() {
        let mut d = populated();
        assert_eq!(d.authenticate("bob", "pw").unwrap().name, "bob");
        assert_eq!(d.authenticate("bob", "PW"), Err(AuthFailure::BadPassword("bob".into())));
        assert_eq!(d.authenticate("bob", ""), Err(AuthFailure::BadPassword("bob".into())));
        assert_eq!(d.authenticate("carol", "pw"), Err(AuthFailure::UnknownUser("carol".into())));
        d.apply(Change::PutUser(User { password_hash: String::new(), ..user("svc", "") })).unwrap();
        assert_eq!(d.authenticate("svc", ""), Err(AuthFailure::NoPassword("svc".into())));
    }

    #[test]
    fn grants_follow_the_permission_entry_and_topic_permissions() {
        let mut d = populated();
        d.apply(Change::PutPermission(Permission { write: "^out$".into(), ..perm("bob", "/", ".*") })).unwrap();
        let g = d.grants("bob", "/").unwrap();
        assert!(g.check(Perm::Write, Resource::Exchange, "out").is_ok());
        assert!(g.check(Perm::Write, Resource::Exchange, "in").is_err());
        let vars = crate::authz::TopicVars { username: "bob".into(), vhost: "/".into(), client_id: None };
        assert!(g.check_topic(Perm::Write, "amq.topic", "abc", &vars).is_ok());
        assert!(g.check_topic(Perm::Write, "amq.topic", "xyz", &vars).is_err());
        assert!(g.check_topic(Perm::Read, "amq.topic", "bcd", &vars).is_ok());
        // Another vhost's topic permission does not leak into this one.
        d.apply(Change::PutTopicPermission(TopicPermission { exchange: "only.v2".into(), ..topic("bob", "v2", "") }))
            .unwrap();
        assert!(d.grants("bob", "/").unwrap().check_topic(Perm::Write, "only.v2", "zzz", &vars).is_ok());
        assert!(d.grants("bob", "v2").unwrap().check_topic(Perm::Write, "only.v2", "zzz", &vars).is_err());
        d.apply(Change::DeletePermission { user: "bob".into(), vhost: "/".into() }).unwrap();
        assert!(d.grants("bob", "/").is_none());
        assert!(d.grants("nobody", "/").is_none());
    }
}
