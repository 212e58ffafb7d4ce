//! Changing users, vhosts, permissions, policies and limits on a running node, and
//! importing and exporting RabbitMQ's definitions JSON.
//!
//! Every change goes through [`ServerState::change_access`]: validated against the
//! directory, logged (fsynced) to the definitions log, applied, and then carried out in
//! the broker (a vhost created or deleted with its queues, connections of a deleted
//! vhost or user closed, policies and limits re-applied). One writer at a time, so the
//! log's order is the order changes were applied in.
//!
//! In a cluster, `change_access` proposes the change to the Raft log instead, and every
//! node does the above when the entry is committed ([`ServerState::apply_committed`],
//! called by `clustering::Applier`), logging the entry's index with it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use access::authz::Grants;
use access::definitions::{BindingDef, Definitions, ExchangeDef, ImportPlan, QueueDef};
use access::directory::{Change, Directory};
use access::model::{HashingAlgorithm, Permission, User, UserLimits, Vhost};
use broker::exchange::{ExchangeOptions, parse_type};
use broker::policy::ApplyTo;
use broker::queue::QueueOptions;
use broker::{AmqpError, VHost};
use tracing::{error, info, warn};

use crate::channel::notify_deleted;
use crate::state::ServerState;

/// Why the node cannot start (its data dir cannot be opened, or a definitions file it was
/// told to load is invalid).
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

impl From<store::Error> for StartError {
    fn from(e: store::Error) -> Self {
        StartError(e.to_string())
    }
}

impl From<ChangeError> for StartError {
    fn from(e: ChangeError) -> Self {
        StartError(e.to_string())
    }
}

/// Why an access change or an import was refused.
#[derive(Debug)]
pub enum ChangeError {
    /// The change is invalid (unknown user or vhost, bad regex, ...): nothing changed.
    Invalid(String),
    /// It could not be written to disk: nothing changed.
    Store(String),
    /// In a cluster: no leader or no quorum took it within the write timeout. Not applied
    /// on this node (it may still be, if the majority comes back and commits it).
    Unavailable(String),
}

impl std::fmt::Display for ChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeError::Invalid(s) => f.write_str(s),
            ChangeError::Store(s) => write!(f, "cannot record the change: {s}"),
            ChangeError::Unavailable(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for ChangeError {}

/// Entries kept before the grants cache starts over (one per user and vhost in use).
const GRANTS_CACHE_MAX: usize = 10_000;

/// [`ServerState::grants`]'s cache: valid for one directory version.
#[derive(Default)]
pub(crate) struct GrantsCache {
    version: u64,
    entries: std::collections::HashMap<(String, String), Option<Grants>>,
}

impl ServerState {
    pub fn access_version(&self) -> u64 {
        self.access_version.load(Ordering::Acquire)
    }

    /// `user`'s compiled permissions in `vhost` (None: none granted). Compiled once per
    /// directory version and shared (each clone gets its own topic cache).
    pub fn grants(&self, user: &str, vhost: &str) -> Option<Grants> {
        let dir = self.access.read();
        let version = dir.version();
        let mut cache = self.grants_cache.lock();
        if cache.version != version || cache.entries.len() >= GRANTS_CACHE_MAX {
            cache.entries.clear();
            cache.version = version;
        }
        let key = (user.to_owned(), vhost.to_owned());
        if let Some(g) = cache.entries.get(&key) {
            return g.clone();
        }
        let g = dir.grants(user, vhost);
        cache.entries.insert(key, g.clone());
        g
    }

    /// Read the directory (users, vhosts, ...).
    pub fn with_access<R>(&self, f: impl FnOnce(&Directory) -> R) -> R {
        f(&self.access.read())
    }

    /// Validate, log, apply and carry out one change. In a cluster: through the Raft log,
    /// answered once this node applied it (blocks this thread meanwhile, see
    /// `clustering::Running::change`).
    pub fn change_access(&self, c: Change) -> Result<(), ChangeError> {
        if let Some(cluster) = self.cluster.get() {
            return cluster.change(vec![c]);
        }
        let _writer = self.access_writer.lock();
        self.change_access_locked(c)
    }

    /// The cluster's committed entry `index`: `changes` validated in order, all or none
    /// applied (the same on every node), logged with the index (one fsync), carried out.
    pub(crate) fn apply_committed(&self, index: u64, changes: Vec<Change>) -> Result<(), ChangeError> {
        let _writer = self.access_writer.lock();
        {
            let dir = self.access.read();
            let invalid = |e: access::error::AccessError| ChangeError::Invalid(e.to_string());
            match changes.as_slice() {
                [one] => dir.validate(one).map_err(invalid)?,
                many => {
                    let mut scratch = dir.clone();
                    many.iter().try_for_each(|c| scratch.apply(c.clone())).map_err(invalid)?;
                }
            }
        }
        self.log_and_apply_committed(index, changes)
    }

    /// Replace the directory with `target` (a cluster snapshot taken at `index`): the
    /// differences are logged as one batch with the index, applied and carried out.
    pub(crate) fn restore_committed(&self, index: u64, target: &Directory) -> Result<(), ChangeError> {
        let _writer = self.access_writer.lock();
        let changes = self.access.read().changes_to(target);
        if !changes.is_empty() {
            info!("installing the cluster's directory at raft index {index}: {} changes", changes.len());
        }
        self.log_and_apply_committed(index, changes)
    }

    fn log_and_apply_committed(&self, index: u64, changes: Vec<Change>) -> Result<(), ChangeError> {
        if let Some(p) = &self.persistence {
            let mut records: Vec<Vec<u8>> = changes.iter().map(crate::persist::access_record).collect();
            records.push(crate::persist::cluster_applied_record(index));
            p.log_batch(records).map_err(|e| ChangeError::Store(e.to_string()))?;
        }
        // Not inside `logged_by_batch`: carrying out a vhost's deletion logs its queues'
        // deletions as any deletion does.
        for c in changes {
            // Validated above against this same directory (the writer lock is held).
            if let Err(e) = self.apply_logged(c) {
                error!("raft entry {index}: an access change validated before failed: {e}");
            }
        }
        self.cluster_applied.store(index, Ordering::Release);
        Ok(())
    }

    /// [`Self::change_access`] for a caller that holds `access_writer`.
    fn change_access_locked(&self, c: Change) -> Result<(), ChangeError> {
        self.access.read().validate(&c).map_err(|e| ChangeError::Invalid(e.to_string()))?;
        if let Some(p) = &self.persistence {
            p.log_access(&c).map_err(|e| ChangeError::Store(e.to_string()))?;
        }
        self.apply_logged(c)
    }

    /// Apply and carry out a validated change whose record is already in the log.
    fn apply_logged(&self, c: Change) -> Result<(), ChangeError> {
        let version = {
            let mut dir = self.access.write();
            dir.apply(c.clone()).map_err(|e| ChangeError::Invalid(e.to_string()))?;
            dir.version()
        };
        self.access_version.store(version, Ordering::Release);
        self.carry_out(&c);
        Ok(())
    }

    /// The broker side of an applied change.
    fn carry_out(&self, c: &Change) {
        match c {
            Change::PutVhost(v) => {
                self.vhost_created(&v.name);
            }
            Change::DeleteVhost(name) => {
                let n = self.registry.close_where(
                    |h| h.vhost == *name,
                    wire::reply::CONNECTION_FORCED,
                    &format!("vhost '{name}' is deleted"),
                );
                info!("deleting vhost '{name}' (closing {n} connections)");
                let removed = self.vhosts.write().remove(name);
                if let Some(vh) = removed {
                    for d in vh.delete_all() {
                        notify_deleted(d);
                    }
                }
            }
            Change::DeleteUser(name) => {
                let n = self.registry.close_where(
                    |h| h.user == *name,
                    wire::reply::CONNECTION_FORCED,
                    &format!("user '{name}' is deleted"),
                );
                info!("deleted user '{name}' (closed {n} connections)");
            }
            Change::PutPolicy(p) | Change::PutOperatorPolicy(p) => {
                if let Some(d) = broker_policy(p).map(|b| b.definition)
                    && !d.ignored.is_empty()
                {
                    info!(
                        "policy '{}' in vhost '{}': {:?} accepted and ignored (no effect in Warren)",
                        p.name, p.vhost, d.ignored
                    );
                }
                if let Some(vh) = self.vhost(&p.vhost) {
                    self.apply_vhost_settings(&vh);
                }
            }
            Change::SetVhostLimits { vhost, .. }
            | Change::DeletePolicy { vhost, .. }
            | Change::DeleteOperatorPolicy { vhost, .. } => {
                if let Some(vh) = self.vhost(vhost) {
                    self.apply_vhost_settings(&vh);
                }
            }
            _ => {}
        }
    }

    /// Make sure the broker has vhost `name` (it is in the directory), with its settings.
    pub(crate) fn vhost_created(&self, name: &str) -> Arc<VHost> {
        let vh = {
            let mut map = self.vhosts.write();
            map.entry(name.to_owned())
                .or_insert_with(|| {
                    VHost::with_limits(
                        name,
                        self.vhost_persistence.clone(),
                        Arc::new(broker::clock::SystemClock),
                        self.node_limits.clone(),
                    )
                })
                .clone()
        };
        self.apply_vhost_settings(&vh);
        vh
    }

    /// Give a vhost its limits and policies as the directory has them now.
    fn apply_vhost_settings(&self, vh: &VHost) {
        let (policies, operator, max_queues) = self.with_access(|d| {
            (
                d.policies(&vh.name).filter_map(broker_policy).collect::<Vec<_>>(),
                d.operator_policies(&vh.name).filter_map(broker_policy).collect::<Vec<_>>(),
                d.vhost(&vh.name).and_then(|v| v.limits.max_queues),
            )
        });
        vh.set_policies(policies, operator);
        vh.set_max_queues(max_queues);
    }

    /// RabbitMQ's defaults for a fresh node: the default vhost, and the default user with
    /// its tags and full permissions there (config `default_*`, environment
    /// `RABBITMQ_DEFAULT_*`).
    pub(crate) fn seed_defaults(&self) -> Result<(), ChangeError> {
        let cfg = &self.config;
        info!("creating the default user '{}' and vhost '{}'", cfg.default_user, cfg.default_vhost);
        self.default_access().into_iter().try_for_each(|c| self.change_access(c))
    }

    /// The changes [`Self::seed_defaults`] makes (in a cluster, the node forming it
    /// proposes them as one entry).
    pub(crate) fn default_access(&self) -> Vec<Change> {
        let cfg = &self.config;
        let vhost = cfg.default_vhost.clone();
        let mut out = Vec::new();
        if self.vhost(&vhost).is_none() {
            out.push(Change::PutVhost(Vhost::named(&vhost)));
        }
        let user = cfg.default_user.clone();
        out.push(Change::PutUser(User {
            name: user.clone(),
            password_hash: access::password::hash_password(HashingAlgorithm::Sha256, &cfg.default_pass),
            hashing_algorithm: HashingAlgorithm::Sha256,
            tags: cfg.default_user_tags.clone(),
            limits: UserLimits::default(),
        }));
        let crate::config::Permissions { configure, write, read } = cfg.default_permissions.clone();
        out.push(Change::PutPermission(Permission { user, vhost, configure, write, read }));
        out
    }

    /// Import a RabbitMQ definitions file (load_definitions at start).
    pub fn import_definitions_file(&self, path: &Path) -> Result<(), StartError> {
        let bytes = std::fs::read(path).map_err(|e| StartError(format!("reading {}: {e}", path.display())))?;
        self.import_definitions(&bytes).map_err(|e| StartError(format!("importing {}: {e}", path.display())))?;
        info!("imported definitions from {}", path.display());
        Ok(())
    }

    /// Import RabbitMQ definitions JSON, all or nothing: everything is validated (users,
    /// regexes, vhosts named, exchange types, queue arguments, existing queues and
    /// exchanges equivalent, both ends of every binding known) before anything changes;
    /// then every change and durable declaration is written as one record of the
    /// definitions log (one fsync: after a crash all of it is replayed or none), and only
    /// then applied. Access changes from elsewhere wait until the import is done.
    ///
    /// In a cluster the access part is validated here, then goes through the Raft log (in
    /// entries of at most 64 KiB, each all or nothing); then the exchanges, the quorum
    /// queues, and the bindings to exchanges and to quorum queues go through the log one by
    /// one (`crate::cluster_topology`: every node has them); classic queues are declared
    /// here, their home, and entered in the cluster's directory (`crate::classic_queues`),
    /// and bindings to them go through the log too.
    pub fn import_definitions(&self, json: &[u8]) -> Result<(), ChangeError> {
        let defs = Definitions::parse(json).map_err(|e| ChangeError::Invalid(e.to_string()))?;
        if let Some(cluster) = self.cluster.get() {
            let plan = self.with_access(|d| defs.plan(d)).map_err(|e| ChangeError::Invalid(e.to_string()))?;
            validate_topology(&plan)?;
            let topology = self.import_topology(&plan)?;
            cluster.change(plan.changes.clone())?;
            // Exchanges and queues (quorum ones, and classic ones, which enter the cluster's
            // directory) first: bindings need them; replicated bindings last, whether a
            // binding is replicated being known once its queue exists.
            let (first, rest): (Vec<ImportOp>, Vec<ImportOp>) = topology.into_iter().partition(|op| {
                matches!(op, ImportOp::Exchange { .. }) || (matches!(op, ImportOp::Queue { .. }) && op.replicated(self))
            });
            for op in first {
                op.apply_through_cluster(self)?;
            }
            let (bindings, local): (Vec<ImportOp>, Vec<ImportOp>) =
                rest.into_iter().partition(|op| op.replicated(self));
            if let Some(p) = &self.persistence {
                let records: Vec<Vec<u8>> = local.iter().filter_map(ImportOp::record).collect();
                p.log_batch(records).map_err(|e| ChangeError::Store(e.to_string()))?;
            }
            for w in &plan.warnings {
                warn!("definitions import: {w}");
            }
            crate::persist::logged_by_batch(|| local.into_iter().for_each(|op| op.apply(self)));
            for op in bindings {
                op.apply_through_cluster(self)?;
            }
            return Ok(());
        }
        let _writer = self.access_writer.lock();
        let plan = self.with_access(|d| defs.plan(d)).map_err(|e| ChangeError::Invalid(e.to_string()))?;
        validate_topology(&plan)?;
        let topology = self.import_topology(&plan)?;
        if let Some(p) = &self.persistence {
            let mut records: Vec<Vec<u8>> = plan.changes.iter().map(crate::persist::access_record).collect();
            records.extend(topology.iter().filter_map(ImportOp::record));
            p.log_batch(records).map_err(|e| ChangeError::Store(e.to_string()))?;
        }
        for w in &plan.warnings {
            warn!("definitions import: {w}");
        }
        crate::persist::logged_by_batch(|| {
            for c in plan.changes {
                // Validated by the plan against this same directory (the writer lock is
                // held): a refusal here would be a bug, and the batch already holds it.
                if let Err(e) = self.change_access_locked(c) {
                    error!("definitions import: an access change validated before failed: {e}");
                }
            }
            for op in topology {
                op.apply(self);
            }
        });
        Ok(())
    }

    /// The import's exchanges, queues and bindings, checked against the node as it is:
    /// an existing queue or exchange must be equivalent (RabbitMQ's 406 otherwise), and
    /// each binding's ends must exist already or come with the import.
    fn import_topology(&self, plan: &ImportPlan) -> Result<Vec<ImportOp>, ChangeError> {
        let mut ops = Vec::new();
        // (vhost, name) -> durable, for what the import declares.
        let mut new_exchanges: HashMap<(&str, &str), bool> = HashMap::new();
        let mut new_queues: HashMap<(&str, &str), bool> = HashMap::new();
        let what = |kind: &str, name: &str, vhost: &str, e: AmqpError| {
            ChangeError::Invalid(format!("{kind} '{name}' in vhost '{vhost}': {}", e.reply_text()))
        };
        for e in &plan.exchanges {
            let (kind, delayed) =
                parse_type(&e.r#type, &e.arguments).map_err(|x| what("exchange", &e.name, &e.vhost, x))?;
            let opts = ExchangeOptions {
                kind,
                delayed,
                durable: e.durable,
                auto_delete: e.auto_delete,
                internal: e.internal,
                arguments: e.arguments.clone(),
            };
            if let Some(x) = self.vhost(&e.vhost).and_then(|vh| vh.exchange(&e.name).ok()) {
                x.check_equivalent(&opts).map_err(|x| what("exchange", &e.name, &e.vhost, x))?;
            }
            new_exchanges.insert((&e.vhost, &e.name), e.durable);
            ops.push(ImportOp::Exchange { vhost: e.vhost.clone(), name: e.name.clone(), opts });
        }
        for q in &plan.queues {
            let mut arguments = q.arguments.clone();
            // RabbitMQ 3.13+ exports the type beside the arguments.
            if let Some(t) = q.r#type.as_deref().filter(|t| *t != "classic")
                && arguments.get("x-queue-type").is_none()
            {
                arguments
                    .insert("x-queue-type", wire::FieldValue::LongStr(bytes::Bytes::copy_from_slice(t.as_bytes())));
            }
            let opts = QueueOptions { durable: q.durable, exclusive: false, auto_delete: q.auto_delete, arguments };
            if let Some(x) = self.vhost(&q.vhost).and_then(|vh| vh.queue(&q.name, 0).ok()) {
                x.check_equivalent(&opts).map_err(|x| what("queue", &q.name, &q.vhost, x))?;
            }
            new_queues.insert((&q.vhost, &q.name), q.durable);
            ops.push(ImportOp::Queue { vhost: q.vhost.clone(), name: q.name.clone(), opts });
        }
        for b in &plan.bindings {
            let vh = self.vhost(&b.vhost);
            let exchange_durable = |name: &str| {
                new_exchanges
                    .get(&(b.vhost.as_str(), name))
                    .copied()
                    .or_else(|| vh.as_ref().and_then(|v| v.exchange(name).ok()).map(|x| x.options.durable))
            };
            let to_queue = b.destination_type == "queue";
            let missing = |kind: &str, name: &str| {
                ChangeError::Invalid(format!(
                    "binding '{}' -> '{}' in vhost '{}': no {kind} '{name}'",
                    b.source, b.destination, b.vhost
                ))
            };
            let source_durable = exchange_durable(&b.source).ok_or_else(|| missing("exchange", &b.source))?;
            let destination_durable = if to_queue {
                new_queues
                    .get(&(b.vhost.as_str(), b.destination.as_str()))
                    .copied()
                    .or_else(|| vh.as_ref().and_then(|v| v.queue(&b.destination, 0).ok()).map(|q| q.options.durable))
                    .ok_or_else(|| missing("queue", &b.destination))?
            } else {
                exchange_durable(&b.destination).ok_or_else(|| missing("exchange", &b.destination))?
            };
            ops.push(ImportOp::Binding {
                def: b.clone(),
                to_queue,
                both_durable: source_durable && destination_durable,
            });
        }
        Ok(ops)
    }

    /// The node's definitions in RabbitMQ's JSON format (durable topology only, as
    /// RabbitMQ exports).
    pub fn export_definitions(&self) -> Definitions {
        let (mut queues, mut exchanges, mut bindings) = (Vec::new(), Vec::new(), Vec::new());
        let mut vhosts = self.vhosts();
        vhosts.sort_by(|a, b| a.name.cmp(&b.name));
        for vh in vhosts {
            let mut qs = vh.queues();
            qs.sort_by(|a, b| a.name.cmp(&b.name));
            for q in qs.iter().filter(|q| q.options.durable && !q.options.exclusive) {
                queues.push(QueueDef {
                    name: q.name.clone(),
                    vhost: vh.name.clone(),
                    durable: true,
                    auto_delete: q.options.auto_delete,
                    arguments: q.options.arguments.clone(),
                    r#type: None,
                });
            }
            let mut exs = vh.exchanges();
            exs.sort_by(|a, b| a.name.cmp(&b.name));
            for e in &exs {
                let predeclared = e.name.is_empty() || e.name.starts_with("amq.");
                if e.options.durable && !predeclared {
                    exchanges.push(ExchangeDef {
                        name: e.name.clone(),
                        vhost: vh.name.clone(),
                        r#type: e.options.type_name().to_owned(),
                        durable: true,
                        auto_delete: e.options.auto_delete,
                        internal: e.options.internal,
                        arguments: e.options.arguments.clone(),
                    });
                }
                for b in e.bindings() {
                    let durable = match &b.destination {
                        broker::exchange::Destination::Queue(q) => q.options.durable && !q.options.exclusive,
                        broker::exchange::Destination::Exchange(x) => x.options.durable,
                    };
                    if !(durable && e.options.durable) || e.name.is_empty() {
                        continue;
                    }
                    bindings.push(BindingDef {
                        source: e.name.clone(),
                        vhost: vh.name.clone(),
                        destination: b.destination.name().to_owned(),
                        destination_type: if b.destination.is_queue() { "queue" } else { "exchange" }.to_owned(),
                        routing_key: b.routing_key.clone(),
                        arguments: b.arguments.clone(),
                    });
                }
            }
        }
        self.with_access(|d| Definitions::export(d, queues, exchanges, bindings))
    }
}

/// The broker's form of a stored policy. The directory validated it, so a failure here is
/// a bug, logged and the policy left out rather than applied half.
fn broker_policy(p: &access::model::Policy) -> Option<broker::policy::Policy> {
    let convert = || -> Result<broker::policy::Policy, String> {
        let table = access::json_args::json_to_table(&p.definition)?;
        let definition = broker::policy::PolicyDefinition::from_table(&table)?;
        let apply_to = match p.apply_to {
            access::model::ApplyTo::Queues => ApplyTo::Queues,
            access::model::ApplyTo::ClassicQueues => ApplyTo::ClassicQueues,
            access::model::ApplyTo::QuorumQueues => ApplyTo::QuorumQueues,
            access::model::ApplyTo::Streams => ApplyTo::Streams,
            access::model::ApplyTo::Exchanges => ApplyTo::Exchanges,
            access::model::ApplyTo::All => ApplyTo::All,
        };
        broker::policy::Policy::new(&p.name, &p.pattern, apply_to, p.priority, definition)
    };
    convert().map_err(|e| warn!("policy '{}' in vhost '{}' not applied: {e}", p.name, p.vhost)).ok()
}

/// One declaration of a definitions import, checked and ready to apply.
enum ImportOp {
    Exchange { vhost: String, name: String, opts: ExchangeOptions },
    Queue { vhost: String, name: String, opts: QueueOptions },
    Binding { def: BindingDef, to_queue: bool, both_durable: bool },
}

impl ImportOp {
    /// Its definitions-log record (None when it is not durable).
    fn record(&self) -> Option<Vec<u8>> {
        match self {
            ImportOp::Exchange { vhost, name, opts } => crate::persist::exchange_record(vhost, name, opts),
            ImportOp::Queue { vhost, name, opts } => crate::persist::queue_record(vhost, name, opts),
            ImportOp::Binding { def: b, to_queue, both_durable } => crate::persist::binding_record(
                &b.vhost,
                &b.source,
                *to_queue,
                &b.destination,
                &b.routing_key,
                &b.arguments,
                *both_durable,
            ),
        }
    }

    /// In a cluster: an exchange, or a binding to an exchange or to an existing quorum
    /// queue (made on every node).
    /// A queue declared with `x-queue-type: quorum`.
    fn is_quorum_queue(&self) -> bool {
        matches!(self, ImportOp::Queue { opts, .. }
            if opts.arguments.get("x-queue-type").and_then(|v| v.as_str()) == Some("quorum"))
    }

    fn replicated(&self, state: &ServerState) -> bool {
        match self {
            ImportOp::Exchange { .. } => true,
            // A classic queue is declared here and entered in the cluster's directory.
            ImportOp::Queue { opts, .. } => {
                self.is_quorum_queue() || (state.classic.get().is_some() && !opts.exclusive)
            }
            ImportOp::Binding { to_queue: false, .. } => true,
            ImportOp::Binding { def, to_queue: true, .. } => state
                .vhost(&def.vhost)
                .and_then(|vh| vh.queue(&def.destination, 0).ok())
                .is_some_and(|q| q.replica().is_some() || state.in_classic_directory(&def.vhost, &def.destination)),
        }
    }

    /// Make a [`Self::replicated`] one through the cluster's log. Checked before, so a
    /// refusal is the cluster's (a concurrent change, no quorum): the import stops there.
    fn apply_through_cluster(self, state: &ServerState) -> Result<(), ChangeError> {
        let (kind, name, vhost, r) = match self {
            ImportOp::Exchange { vhost, name, opts } => {
                let r = state.vhost(&vhost).map(|vh| state.exchange_declare(&vh, &name, false, opts));
                ("exchange", name, vhost, r)
            }
            ImportOp::Queue { vhost, name, opts } => {
                let r = state.vhost(&vhost).map(|vh| state.declare_replicated_queue(&vh, &name, &opts));
                ("queue", name, vhost, r)
            }
            ImportOp::Binding { def: b, to_queue, .. } => {
                let r = state.vhost(&b.vhost).map(|vh| {
                    let spec = crate::cluster_topology::BindingSpec {
                        source: &b.source,
                        destination: &b.destination,
                        to_queue,
                        routing_key: &b.routing_key,
                    };
                    state.change_binding(&vh, spec, b.arguments.clone(), 0, true)
                });
                ("binding to", b.destination, b.vhost, r)
            }
        };
        match r {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) if e.code == wire::reply::INTERNAL_ERROR => Err(ChangeError::Unavailable(format!(
                "definitions import: {kind} '{name}' in vhost '{vhost}': {}",
                e.text
            ))),
            Some(Err(e)) => {
                Err(ChangeError::Invalid(format!("definitions import: {kind} '{name}' in vhost '{vhost}': {}", e.text)))
            }
            None => Err(ChangeError::Invalid(format!("definitions import: {kind} '{name}': vhost '{vhost}' is gone"))),
        }
    }

    /// Declare it. Checked before, so a failure here is a resource limit or a store that
    /// cannot open: logged (the node's limits, not the import, refused it).
    fn apply(self, state: &ServerState) {
        let (kind, name, vhost, r) = match self {
            ImportOp::Exchange { vhost, name, opts } => {
                let r = state.vhost(&vhost).map(|vh| vh.declare_exchange(&name, false, opts).map(|_| ()));
                ("exchange", name, vhost, r)
            }
            ImportOp::Queue { vhost, name, opts } => {
                let r = state.vhost(&vhost).map(|vh| vh.declare_queue(&name, false, opts, 0).map(|_| ()));
                ("queue", name, vhost, r)
            }
            ImportOp::Binding { def: b, to_queue, .. } => {
                let r = state.vhost(&b.vhost).map(|vh| {
                    if to_queue {
                        vh.bind_queue(&b.destination, &b.source, &b.routing_key, b.arguments, 0)
                    } else {
                        vh.bind_exchange(&b.destination, &b.source, &b.routing_key, b.arguments)
                    }
                });
                ("binding to", b.destination, b.vhost, r)
            }
        };
        match r {
            Some(Ok(())) => {}
            Some(Err(e)) => warn!("definitions import: {kind} '{name}' in vhost '{vhost}': {e}"),
            None => warn!("definitions import: {kind} '{name}': vhost '{vhost}' is gone"),
        }
    }
}

/// The topology part of an import, checked before anything is applied.
fn validate_topology(plan: &ImportPlan) -> Result<(), ChangeError> {
    for e in &plan.exchanges {
        parse_type(&e.r#type, &e.arguments).map_err(|err| {
            ChangeError::Invalid(format!("exchange '{}' in vhost '{}': {}", e.name, e.vhost, err.reply_text()))
        })?;
    }
    for q in &plan.queues {
        broker::args::QueueArgs::parse(&q.arguments, &q.name, &q.vhost).map_err(|err| {
            ChangeError::Invalid(format!("queue '{}' in vhost '{}': {}", q.name, q.vhost, err.reply_text()))
        })?;
    }
    for b in &plan.bindings {
        if b.destination_type != "queue" && b.destination_type != "exchange" {
            return Err(ChangeError::Invalid(format!(
                "binding from '{}' in vhost '{}': destination_type '{}' is neither queue nor exchange",
                b.source, b.vhost, b.destination_type
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use access::authz::{Perm, Resource};

    use super::*;
    use crate::config::Config;

    fn may_configure(g: &Option<Grants>, queue: &str) -> bool {
        g.as_ref().is_some_and(|g| g.check(Perm::Configure, Resource::Queue, queue).is_ok())
    }

    #[test]
    fn cached_grants_follow_every_permission_change() {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let state = ServerState::new(Config::default(), rx);
        // Cached: asking again gives the same answer, for the same and other users.
        assert!(may_configure(&state.grants("guest", "/"), "q"));
        assert!(may_configure(&state.grants("guest", "/"), "q"));
        assert!(state.grants("nobody", "/").is_none());
        assert!(state.grants("nobody", "/").is_none());
        let narrow = |configure: &str| Permission {
            user: "guest".into(),
            vhost: "/".into(),
            configure: configure.into(),
            write: ".*".into(),
            read: ".*".into(),
        };
        state.change_access(Change::PutPermission(narrow("^app\\."))).unwrap();
        let g = state.grants("guest", "/");
        assert!(!may_configure(&g, "q") && may_configure(&g, "app.q"));
        assert!(!may_configure(&state.grants("guest", "/"), "q"), "the cached copy is the new one");
        state.change_access(Change::DeletePermission { user: "guest".into(), vhost: "/".into() }).unwrap();
        assert!(state.grants("guest", "/").is_none());
        state.change_access(Change::PutPermission(narrow(".*"))).unwrap();
        assert!(may_configure(&state.grants("guest", "/"), "q"));
    }

    #[test]
    fn the_grants_cache_starts_over_when_full() {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let state = ServerState::new(Config::default(), rx);
        for i in 0..GRANTS_CACHE_MAX + 10 {
            assert!(state.grants(&format!("user{i}"), "/").is_none());
        }
        assert!(state.grants_cache.lock().entries.len() <= GRANTS_CACHE_MAX);
        assert!(may_configure(&state.grants("guest", "/"), "q"));
    }
}
