//! A virtual host: its exchanges and queues, and the operations of exchange.*, queue.*
//! and basic.publish routing, with RabbitMQ's checks and error texts.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::RwLock;
use wire::FieldTable;

use crate::ConnectionId;
use crate::args::{QueueArgs, QueueType};
use crate::clock::{Clock, SystemClock};
use crate::dead_letter::{self, Reason};
use crate::error::AmqpError;
use crate::exchange::{Binding, Destination, Exchange, ExchangeKind, ExchangeOptions};
use crate::limits::NodeLimits;
use crate::message::QueuedMessage;
use crate::policy::{self, Policy, PolicySet};
use crate::queue::{Consumer, Queue, QueueOptions, Ticked};
use crate::store::{MemoryStore, MessageStore, PriorityStore};

/// Exchanges every vhost has (RabbitMQ's predeclared set).
const PREDECLARED: [(&str, ExchangeKind); 6] = [
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
    ("amq.rabbitmq.trace", ExchangeKind::Topic),
];

/// Longest exchange-to-exchange chain followed when routing one message; a guard against
/// pathological topologies (cycles are already cut by the visited set).
const ROUTE_HOPS_MAX: usize = 64;

pub struct VHost {
    pub name: String,
    exchanges: RwLock<HashMap<String, Arc<Exchange>>>,
    queues: RwLock<HashMap<String, Arc<Queue>>>,
    /// Exclusive queues by owning connection, kept with `queues` (under its write lock):
    /// a closing connection finds its queues without scanning every queue of the vhost.
    owned: parking_lot::Mutex<HashMap<ConnectionId, Vec<Arc<Queue>>>>,
    persistence: Arc<dyn Persistence>,
    clock: Arc<dyn Clock>,
    me: Weak<VHost>,
    /// Bumped by every change of exchanges, queues or bindings: routes cached by a
    /// publisher stay valid while it is unchanged.
    generation: AtomicU64,
    /// The node's bounds on queues, exchanges and bindings (shared by its vhosts).
    node: Arc<NodeLimits>,
    /// Policies and operator policies, replaced whole. Read at declare under the maps'
    /// write lock (lock order: vhost maps → policies).
    policies: RwLock<Arc<PolicySet>>,
    /// Serialises [`VHost::set_policies`], so the last set stored is the last applied.
    policy_writer: parking_lot::Mutex<()>,
    /// The vhost limit `max-queues` (`u64::MAX`: none).
    max_queues: AtomicU64,
    /// The queues [`VHost::tick`] visits: those with messages or x-expires (see
    /// `Queue::arm`), each at most once. A leaf lock (taken under a queue's state lock).
    timed: parking_lot::Mutex<Vec<Arc<Queue>>>,
}

/// Where queues keep their messages and where durable topology is recorded. The vhost
/// calls it for every change; implementations decide what is durable (RabbitMQ: durable
/// exchanges, durable non-exclusive queues, bindings whose both ends are durable).
/// A `*_declared`/`binding_added` call may only buffer its record (it runs under the
/// vhost's locks); the vhost calls [`Persistence::settle`] after releasing them, and the
/// client's declare-ok follows that.
pub trait Persistence: Send + Sync {
    /// Return once every change recorded so far is on disk (an error when it cannot be).
    fn settle(&self) -> Result<(), AmqpError> {
        Ok(())
    }
    /// The store for a new queue. A durable queue whose files cannot be opened is an
    /// error (the declare fails), never a store that quietly keeps it in RAM.
    fn queue_store(&self, vhost: &str, queue: &str, options: &QueueOptions)
    -> Result<Box<dyn MessageStore>, AmqpError>;
    fn exchange_declared(&self, _e: &Exchange) -> Result<(), AmqpError> {
        Ok(())
    }
    fn exchange_deleted(&self, _e: &Exchange) {}
    fn queue_declared(&self, _q: &Queue) -> Result<(), AmqpError> {
        Ok(())
    }
    fn queue_deleted(&self, _q: &Queue) {}
    fn binding_added(&self, _source: &Exchange, _b: &Binding) -> Result<(), AmqpError> {
        Ok(())
    }
    fn binding_removed(&self, _source: &Exchange, _b: &Binding) {}
}

/// Everything in RAM, nothing recorded.
#[derive(Debug, Default)]
pub struct InMemory;

impl Persistence for InMemory {
    fn queue_store(
        &self,
        vhost: &str,
        queue: &str,
        options: &QueueOptions,
    ) -> Result<Box<dyn MessageStore>, AmqpError> {
        Ok(match QueueArgs::parse(&options.arguments, queue, vhost).ok().and_then(|a| a.max_priority) {
            Some(max) => Box::new(PriorityStore::new(
                (0..=max).map(|_| Box::new(MemoryStore::new()) as Box<dyn MessageStore>).collect(),
            )),
            None => Box::new(MemoryStore::new()),
        })
    }
}

/// The outcome of queue.delete and friends, for the caller to act on outside locks.
pub struct Deleted {
    pub message_count: u32,
    /// Consumers to notify with basic.cancel.
    pub consumers: Vec<Consumer>,
}

impl std::fmt::Debug for Deleted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deleted")
            .field("message_count", &self.message_count)
            .field("consumers", &self.consumers.len())
            .finish()
    }
}

impl VHost {
    /// A vhost that keeps everything in RAM.
    pub fn new(name: &str) -> Arc<VHost> {
        Self::with_persistence(name, Arc::new(InMemory))
    }

    pub fn with_persistence(name: &str, persistence: Arc<dyn Persistence>) -> Arc<VHost> {
        Self::with_clock(name, persistence, Arc::new(SystemClock))
    }

    pub fn with_clock(name: &str, persistence: Arc<dyn Persistence>, clock: Arc<dyn Clock>) -> Arc<VHost> {
        Self::with_limits(name, persistence, clock, Arc::new(NodeLimits::unlimited()))
    }

    /// A vhost counting its queues, exchanges and bindings against the node's `node`.
    pub fn with_limits(
        name: &str,
        persistence: Arc<dyn Persistence>,
        clock: Arc<dyn Clock>,
        node: Arc<NodeLimits>,
    ) -> Arc<VHost> {
        Arc::new_cyclic(|me| Self::build(name, persistence, clock, me.clone(), node))
    }

    fn build(
        name: &str,
        persistence: Arc<dyn Persistence>,
        clock: Arc<dyn Clock>,
        me: Weak<VHost>,
        node: Arc<NodeLimits>,
    ) -> VHost {
        let vh = VHost {
            name: name.to_owned(),
            exchanges: RwLock::new(HashMap::new()),
            queues: RwLock::new(HashMap::new()),
            owned: parking_lot::Mutex::new(HashMap::new()),
            persistence,
            clock,
            me,
            generation: AtomicU64::new(0),
            node,
            policies: RwLock::new(Arc::new(PolicySet::default())),
            policy_writer: parking_lot::Mutex::new(()),
            max_queues: AtomicU64::new(u64::MAX),
            timed: parking_lot::Mutex::new(Vec::new()),
        };
        {
            let mut ex = vh.exchanges.write();
            let opts = |kind| ExchangeOptions {
                kind,
                delayed: false,
                durable: true,
                auto_delete: false,
                internal: false,
                arguments: FieldTable::new(),
            };
            ex.insert(String::new(), Exchange::new(name, String::new(), opts(ExchangeKind::Direct)));
            for (n, kind) in PREDECLARED {
                let mut o = opts(kind);
                o.internal = n == "amq.rabbitmq.trace";
                ex.insert(n.to_owned(), Exchange::new(name, n.to_owned(), o));
            }
        }
        vh
    }

    /// The topology generation (see the field).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn no_exchange(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no exchange '{name}' in vhost '{}'", self.name))
    }

    fn no_queue(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no queue '{name}' in vhost '{}'", self.name))
    }

    pub fn exchange(&self, name: &str) -> Result<Arc<Exchange>, AmqpError> {
        self.exchanges.read().get(name).cloned().ok_or_else(|| self.no_exchange(name))
    }

    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.read().values().cloned().collect()
    }

    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.read().values().cloned().collect()
    }

    pub fn has_queue(&self, name: &str) -> bool {
        self.queues.read().contains_key(name)
    }

    /// Look up a queue for use by `conn`: 404 if missing, 405 if another connection owns it.
    pub fn queue(&self, name: &str, conn: ConnectionId) -> Result<Arc<Queue>, AmqpError> {
        let q = self.queues.read().get(name).cloned().ok_or_else(|| self.no_queue(name))?;
        check_exclusive(&q, conn)?;
        Ok(q)
    }

    pub fn declare_exchange(
        &self,
        name: &str,
        passive: bool,
        opts: ExchangeOptions,
    ) -> Result<Arc<Exchange>, AmqpError> {
        if passive {
            return self.exchange(name);
        }
        let e = self.declare_exchange_locked(name, opts)?;
        // Also for an existing exchange: it may have been declared a moment ago by
        // another connection, not on disk yet. (A transient one promises nothing.)
        if e.options.durable {
            self.persistence.settle()?;
        }
        Ok(e)
    }

    fn declare_exchange_locked(&self, name: &str, opts: ExchangeOptions) -> Result<Arc<Exchange>, AmqpError> {
        if name.starts_with("amq.") {
            // An existing amq.* exchange may be redeclared equivalently; a different
            // declaration is 406 as for any exchange. Only creating one is refused.
            if let Some(e) = self.exchanges.read().get(name) {
                e.check_equivalent(&opts)?;
                return Ok(e.clone());
            }
            return Err(AmqpError::access_refused(format!("exchange name '{name}' contains reserved prefix 'amq.*'")));
        }
        let mut ex = self.exchanges.write();
        if let Some(e) = ex.get(name) {
            e.check_equivalent(&opts)?;
            return Ok(e.clone());
        }
        self.node.take_exchange(name)?;
        let e = Exchange::new(&self.name, name.to_owned(), opts);
        e.set_policy(policy::select_for_exchange(&self.policies.read().policies, name));
        if let Err(err) = self.persistence.exchange_declared(&e) {
            self.node.release_exchange();
            return Err(err);
        }
        ex.insert(name.to_owned(), e.clone());
        self.changed();
        Ok(e)
    }

    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), AmqpError> {
        self.delete_exchange_locked(name, if_unused)?;
        self.persistence.settle()
    }

    fn delete_exchange_locked(&self, name: &str, if_unused: bool) -> Result<(), AmqpError> {
        if name.is_empty() || name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "operation not permitted on exchange '{name}' in vhost '{}'",
                self.name
            )));
        }
        let mut ex = self.exchanges.write();
        let Some(e) = ex.get(name).cloned() else {
            // RabbitMQ 3.x+ treats deleting a missing exchange as success.
            return Ok(());
        };
        let dest = Destination::Exchange(e.clone());
        if if_unused && (e.binding_count() > 0 || ex.values().any(|x| x.leads_to(&dest))) {
            return Err(AmqpError::precondition_failed(format!("exchange '{name}' in vhost '{}' in use", self.name)));
        }
        ex.remove(name);
        self.node.release_exchange();
        // Its own bindings go with it.
        self.node.release_bindings(e.binding_count());
        self.changed();
        let emptied = self.unbind_from_all(&ex, &dest);
        self.persistence.exchange_deleted(&e);
        drop(ex);
        for source in emptied {
            self.auto_delete_exchange(&source);
        }
        Ok(())
    }

    /// Remove every binding leading to `dest`; returns the auto-delete sources that this
    /// left without bindings (RabbitMQ deletes them too, and so on up the chain).
    fn unbind_from_all(&self, exchanges: &HashMap<String, Arc<Exchange>>, dest: &Destination) -> Vec<Arc<Exchange>> {
        let mut emptied = Vec::new();
        for other in exchanges.values() {
            if self.unbind_all(other, dest) > 0 && other.options.auto_delete && other.binding_count() == 0 {
                emptied.push(other.clone());
            }
        }
        emptied
    }

    /// queue.declare. `name` may be empty (server-named). Returns the queue and whether it was created.
    pub fn declare_queue(
        &self,
        name: &str,
        passive: bool,
        opts: QueueOptions,
        conn: ConnectionId,
    ) -> Result<(Arc<Queue>, bool), AmqpError> {
        self.declare_queue_as(name, passive, false, opts, conn)
    }

    /// queue.declare of a server-named queue whose name the caller generated (with
    /// [`generate_name`], `amq.gen-…`), e.g. to check permissions on it first.
    pub fn declare_server_named_queue(
        &self,
        name: &str,
        opts: QueueOptions,
        conn: ConnectionId,
    ) -> Result<(Arc<Queue>, bool), AmqpError> {
        self.declare_queue_as(name, false, true, opts, conn)
    }

    fn declare_queue_as(
        &self,
        name: &str,
        passive: bool,
        server_named: bool,
        opts: QueueOptions,
        conn: ConnectionId,
    ) -> Result<(Arc<Queue>, bool), AmqpError> {
        if passive {
            if name.is_empty() {
                return Err(self.no_queue(name));
            }
            return Ok((self.queue(name, conn)?, false));
        }
        if name.starts_with("amq.") && !server_named {
            return Err(AmqpError::access_refused(format!("queue name '{name}' contains reserved prefix 'amq.*'")));
        }
        let r = self.create_queue(name, opts, conn)?;
        // Also for an existing queue: it may have been declared a moment ago by another
        // connection, not on disk yet. (A transient one promises nothing.)
        if r.0.options.durable {
            self.persistence.settle()?;
        }
        Ok(r)
    }

    fn create_queue(
        &self,
        name: &str,
        opts: QueueOptions,
        conn: ConnectionId,
    ) -> Result<(Arc<Queue>, bool), AmqpError> {
        let mut qs = self.queues.write();
        let name = if name.is_empty() { generate_name("amq.gen-", |n| qs.contains_key(n)) } else { name.to_owned() };
        if let Some(q) = qs.get(&name) {
            check_exclusive(q, conn)?;
            if opts.exclusive != q.options.exclusive {
                return Err(exclusive_locked(q));
            }
            q.check_equivalent(&opts)?;
            q.touch();
            return Ok((q.clone(), false));
        }
        let args = QueueArgs::parse(&opts.arguments, &name, &self.name)?;
        if args.queue_type == QueueType::Quorum {
            // Quorum queues are always durable, never exclusive or auto-delete (RabbitMQ
            // refuses those). (Their default delivery limit is in `policy::effective`.)
            for (bad, prop) in
                [(!opts.durable, "non-durable"), (opts.exclusive, "exclusive"), (opts.auto_delete, "auto-delete")]
            {
                if bad {
                    return Err(AmqpError::precondition_failed(format!(
                        "invalid property '{prop}' for queue '{name}' in vhost '{}'",
                        self.name
                    )));
                }
            }
        }
        let max_queues = self.max_queues.load(Ordering::Acquire);
        if qs.len() as u64 >= max_queues {
            // RabbitMQ's text (rabbit_queue_type's queue_limit_error), 406 on the channel.
            return Err(AmqpError::precondition_failed(format!(
                "cannot declare queue '{name}': queue limit in vhost '{}' ({max_queues}) is reached",
                self.name
            )));
        }
        let owner = opts.exclusive.then_some(conn);
        self.node.take_queue(&name)?;
        let store = match self.persistence.queue_store(&self.name, &name, &opts) {
            Ok(s) => s,
            Err(e) => {
                self.node.release_queue();
                return Err(e);
            }
        };
        let applied = self.policies.read().for_queue(&name, args.queue_type);
        let q = Queue::build(
            &self.name,
            name.clone(),
            opts,
            args,
            applied,
            owner,
            store,
            self.clock.clone(),
            self.me.clone(),
        );
        if let Err(e) = self.persistence.queue_declared(&q) {
            self.node.release_queue();
            q.mark_deleted();
            return Err(e);
        }
        qs.insert(name, q.clone());
        self.node.queue_created();
        if let Some(c) = owner {
            self.owned.lock().entry(c).or_default().push(q.clone());
        }
        self.changed();
        q.arm_timer();
        Ok((q, true))
    }

    /// A classic queue whose home is another node of the cluster: `replica` forwards to
    /// it. Nothing is recorded by this node's persistence (the cluster's log brings it back
    /// after a restart), and its bindings are not either. An existing queue of that name is
    /// returned as it is (`false`).
    pub fn declare_remote_queue(
        &self,
        name: &str,
        opts: QueueOptions,
        replica: Arc<dyn crate::queue::Replica>,
    ) -> Result<(Arc<Queue>, bool), AmqpError> {
        let mut qs = self.queues.write();
        if let Some(q) = qs.get(name) {
            return Ok((q.clone(), false));
        }
        let args = QueueArgs::parse(&opts.arguments, name, &self.name)?;
        self.node.take_queue(name)?;
        let applied = self.policies.read().for_queue(name, args.queue_type);
        let q = Queue::build(
            &self.name,
            name.to_owned(),
            opts,
            args,
            applied,
            None,
            Box::new(crate::store::MemoryStore::new()),
            self.clock.clone(),
            self.me.clone(),
        );
        q.mark_remote();
        q.set_replica(replica);
        qs.insert(name.to_owned(), q.clone());
        self.node.queue_created();
        self.changed();
        Ok((q, true))
    }

    /// queue.delete. A missing queue is not an error (RabbitMQ answers delete-ok with 0).
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn: ConnectionId,
    ) -> Result<Deleted, AmqpError> {
        let q = match self.queue(name, conn) {
            Ok(q) => q,
            Err(e) if e.code == wire::reply::NOT_FOUND => {
                return Ok(Deleted { message_count: 0, consumers: Vec::new() });
            }
            Err(e) => return Err(e),
        };
        let stats = q.stats();
        if if_unused && stats.consumers > 0 {
            return Err(AmqpError::precondition_failed(format!("queue '{name}' in vhost '{}' in use", self.name)));
        }
        if if_empty && stats.messages_ready > 0 {
            return Err(AmqpError::precondition_failed(format!(
                "queue '{name}' in vhost '{}' is not empty",
                self.name
            )));
        }
        let deleted = self.remove_queue(&q);
        if q.options.durable {
            self.persistence.settle()?;
        }
        Ok(deleted)
    }

    /// Remove a queue unconditionally (exclusive owner gone, auto-delete, queue.delete).
    pub fn remove_queue(&self, q: &Arc<Queue>) -> Deleted {
        {
            let mut qs = self.queues.write();
            match qs.get(&q.name) {
                Some(x) if Arc::ptr_eq(x, q) => {
                    qs.remove(&q.name);
                    self.node.release_queue();
                    self.node.queue_deleted();
                    if let Some(c) = q.owner {
                        let mut owned = self.owned.lock();
                        if let Some(v) = owned.get_mut(&c) {
                            v.retain(|x| !Arc::ptr_eq(x, q));
                            if v.is_empty() {
                                owned.remove(&c);
                            }
                        }
                    }
                    self.changed();
                }
                _ => {}
            }
        }
        let dest = Destination::Queue(q.clone());
        let mut emptied = Vec::new();
        for e in self.exchanges() {
            if self.unbind_all(&e, &dest) > 0 && e.options.auto_delete && e.binding_count() == 0 {
                emptied.push(e);
            }
        }
        for e in emptied {
            self.auto_delete_exchange(&e);
        }
        if !q.is_remote() {
            self.persistence.queue_deleted(q);
        }
        let (message_count, consumers) = q.mark_deleted();
        Deleted { message_count, consumers }
    }

    /// Delete an auto-delete exchange that lost its last binding, then the auto-delete
    /// exchanges upstream of it that this leaves without bindings.
    fn auto_delete_exchange(&self, e: &Arc<Exchange>) {
        let mut pending = vec![e.clone()];
        while let Some(e) = pending.pop() {
            let mut ex = self.exchanges.write();
            if matches!(ex.get(&e.name), Some(x) if Arc::ptr_eq(x, &e)) && e.binding_count() == 0 {
                ex.remove(&e.name);
                self.node.release_exchange();
                self.changed();
                let dest = Destination::Exchange(e.clone());
                pending.extend(self.unbind_from_all(&ex, &dest));
                self.persistence.exchange_deleted(&e);
            }
        }
    }

    /// Remove every binding of `source` leading to `dest`, recording the removals.
    fn unbind_all(&self, source: &Exchange, dest: &Destination) -> usize {
        let gone = source.unbind_destination(dest);
        if !gone.is_empty() {
            self.node.release_bindings(gone.len());
            self.changed();
        }
        for b in gone.iter().filter(|b| !to_remote(b)) {
            self.persistence.binding_removed(source, b);
        }
        gone.len()
    }

    /// Every exclusive queue owned by a closing connection.
    pub fn queues_owned_by(&self, conn: ConnectionId) -> Vec<Arc<Queue>> {
        self.owned.lock().get(&conn).cloned().unwrap_or_default()
    }

    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
        conn: ConnectionId,
    ) -> Result<(), AmqpError> {
        if exchange.is_empty() {
            return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
        }
        // Both ends are looked up and the binding added under the maps' read locks: a
        // concurrent queue.delete or exchange.delete (write locks) comes wholly before
        // (404 here) or after (it removes this binding too), never between, so no binding
        // to a deleted queue is left behind or logged after its queue's deletion.
        let durable = {
            let ex = self.exchanges.read();
            let qs = self.queues.read();
            let q = qs.get(queue).cloned().ok_or_else(|| self.no_queue(queue))?;
            check_exclusive(&q, conn)?;
            let e = ex.get(exchange).cloned().ok_or_else(|| self.no_exchange(exchange))?;
            validate_binding(&e, &arguments)?;
            let durable = e.options.durable && q.options.durable;
            self.add_binding(
                &e,
                Binding { destination: Destination::Queue(q), routing_key: routing_key.to_owned(), arguments },
            )?;
            durable
        };
        if durable { self.persistence.settle() } else { Ok(()) }
    }

    fn add_binding(&self, source: &Exchange, b: Binding) -> Result<(), AmqpError> {
        if source.has_binding(&b) {
            return Ok(());
        }
        self.node.take_binding()?;
        if let Err(e) = if to_remote(&b) { Ok(()) } else { self.persistence.binding_added(source, &b) } {
            self.node.release_bindings(1);
            return Err(e);
        }
        if !source.bind(b) {
            // Added meanwhile by another connection: counted once, by it.
            self.node.release_bindings(1);
        }
        self.changed();
        Ok(())
    }

    fn remove_binding(&self, source: &Arc<Exchange>, b: &Binding) {
        if source.unbind(b) {
            self.node.release_bindings(1);
            self.changed();
            if !to_remote(b) {
                self.persistence.binding_removed(source, b);
            }
        }
        if source.options.auto_delete && source.binding_count() == 0 {
            self.auto_delete_exchange(source);
        }
    }

    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
        conn: ConnectionId,
    ) -> Result<(), AmqpError> {
        if exchange.is_empty() {
            return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
        }
        let q = self.queue(queue, conn)?;
        let e = self.exchange(exchange)?;
        // RabbitMQ: unbinding a binding that does not exist succeeds.
        self.remove_binding(
            &e,
            &Binding { destination: Destination::Queue(q), routing_key: routing_key.to_owned(), arguments },
        );
        self.persistence.settle()
    }

    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), AmqpError> {
        if destination.is_empty() || source.is_empty() {
            return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
        }
        // Under the exchange map's read lock, as in bind_queue.
        let durable = {
            let ex = self.exchanges.read();
            let d = ex.get(destination).cloned().ok_or_else(|| self.no_exchange(destination))?;
            let s = ex.get(source).cloned().ok_or_else(|| self.no_exchange(source))?;
            validate_binding(&s, &arguments)?;
            let durable = s.options.durable && d.options.durable;
            self.add_binding(
                &s,
                Binding { destination: Destination::Exchange(d), routing_key: routing_key.to_owned(), arguments },
            )?;
            durable
        };
        if durable { self.persistence.settle() } else { Ok(()) }
    }

    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), AmqpError> {
        if destination.is_empty() || source.is_empty() {
            return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
        }
        let d = self.exchange(destination)?;
        let s = self.exchange(source)?;
        self.remove_binding(
            &s,
            &Binding { destination: Destination::Exchange(d), routing_key: routing_key.to_owned(), arguments },
        );
        self.persistence.settle()
    }

    /// Republish messages that died in `q` to its dead-letter exchange `dlx_name`, with
    /// `dlrk` (its effective dead-letter routing key). A missing DLX drops them, as in
    /// RabbitMQ; so does a cycle. `confirm`: published as a confirming publisher's, and
    /// the target queues' outcomes returned (at-least-once dead-lettering waits for them).
    pub(crate) fn dead_letter(
        &self,
        q: &Arc<Queue>,
        dlx_name: &str,
        dlrk: Option<&str>,
        letters: Vec<(QueuedMessage, Reason)>,
        confirm: bool,
    ) -> Vec<crate::queue::PublishOutcome> {
        let mut outcomes = Vec::new();
        let Ok(dlx) = self.exchange(dlx_name) else { return outcomes };
        let now = self.clock.now_ms();
        let mut targets = Vec::new();
        for (m, reason) in letters {
            let msg = dead_letter::rewrite(&m.msg, &q.name, reason, now, dlx_name, dlrk);
            let props = wire::BasicProperties::decode(&msg.properties).unwrap_or_default();
            targets.clear();
            let headers = props.headers.clone();
            let mut h = || headers.clone();
            self.route(&dlx, &msg.routing_key, &mut h, &mut targets);
            let msg = Arc::new(msg);
            for t in &targets {
                if dead_letter::is_cycle(&props, &t.name) && reason != Reason::Rejected {
                    continue;
                }
                if confirm {
                    outcomes.push(t.publish_confirmed(msg.clone()));
                } else {
                    t.publish(msg.clone());
                }
            }
        }
        outcomes
    }

    /// The settings a queue named `name` of type `t` would take now: its declared
    /// arguments combined with the vhost's policies (what a declare would apply).
    pub fn effective_queue_args(&self, name: &str, declared: &crate::args::QueueArgs) -> crate::args::QueueArgs {
        let applied = self.policies.read().for_queue(name, declared.queue_type);
        crate::policy::effective(
            declared,
            applied.policy.as_deref().map(|p| &p.definition),
            applied.operator.as_deref().map(|p| &p.definition),
        )
    }

    /// Replace the vhost's policies and operator policies and apply them to every existing
    /// queue and exchange now (effects on queues: [`Queue::apply_policies`]); queues and
    /// exchanges declared later get them at declare.
    pub fn set_policies(&self, policies: Vec<Policy>, operator_policies: Vec<Policy>) {
        let _serial = self.policy_writer.lock();
        let set = Arc::new(PolicySet {
            policies: policies.into_iter().map(Arc::new).collect(),
            operator: operator_policies.into_iter().map(Arc::new).collect(),
        });
        // Stored before the objects are listed: a queue declared meanwhile either saw
        // the new set or is in the list below.
        *self.policies.write() = set.clone();
        for q in self.queues() {
            q.apply_policies(set.for_queue(&q.name, q.declared_args.queue_type));
        }
        for e in self.exchanges() {
            if !e.name.is_empty() {
                e.set_policy(policy::select_for_exchange(&set.policies, &e.name));
            }
        }
    }

    /// The vhost limit `max-queues` (`None`: unlimited). Queues beyond it are kept; only
    /// new declarations are refused.
    pub fn set_max_queues(&self, max: Option<u64>) {
        self.max_queues.store(max.unwrap_or(u64::MAX), Ordering::Release);
    }

    pub fn max_queues(&self) -> Option<u64> {
        Some(self.max_queues.load(Ordering::Acquire)).filter(|&m| m != u64::MAX)
    }

    /// Delete the whole vhost's contents (the vhost itself is being deleted): every queue
    /// with its messages and every exchange, recorded as deletions. Bindings go with their
    /// ends (recovery drops a binding whose exchange or queue is deleted), so this is
    /// linear in queues + exchanges + bindings rather than one unbind scan per queue.
    pub fn delete_all(&self) -> Vec<Deleted> {
        let queues: Vec<Arc<Queue>> = {
            let mut qs = self.queues.write();
            self.owned.lock().clear();
            qs.drain().map(|(_, q)| q).collect()
        };
        let exchanges: Vec<Arc<Exchange>> = self.exchanges.write().drain().map(|(_, e)| e).collect();
        self.changed();
        for e in &exchanges {
            self.node.release_bindings(e.binding_count());
            if !e.name.is_empty() && !e.name.starts_with("amq.") {
                self.node.release_exchange();
                self.persistence.exchange_deleted(e);
            }
        }
        queues
            .iter()
            .map(|q| {
                self.node.release_queue();
                if !q.is_remote() {
                    self.persistence.queue_deleted(q);
                }
                let (message_count, consumers) = q.mark_deleted();
                Deleted { message_count, consumers }
            })
            .collect()
    }

    /// Periodic work: expire messages at queue heads, delete queues unused past x-expires.
    /// Visits only the timed queues (those with messages or x-expires), so an idle node
    /// with 100,000 empty queues does nothing here.
    pub fn tick(&self) -> Vec<Deleted> {
        let due = std::mem::take(&mut *self.timed.lock());
        let mut keep = Vec::with_capacity(due.len());
        let mut deleted = Vec::new();
        for q in due {
            match q.tick_timed() {
                Ticked::Idle => {}
                Ticked::Keep => keep.push(q),
                Ticked::Expired => deleted.push(self.remove_queue(&q)),
            }
        }
        let mut timed = self.timed.lock();
        if timed.is_empty() {
            *timed = keep;
        } else {
            timed.append(&mut keep);
        }
        deleted
    }

    /// How many queues the next [`VHost::tick`] visits.
    pub fn timed_queues(&self) -> usize {
        self.timed.lock().len()
    }

    /// A queue now needs the tick (called once per entry, see `Queue::arm`).
    pub(crate) fn add_timed(&self, q: Arc<Queue>) {
        self.timed.lock().push(q);
    }

    /// The queues a message published to `exchange` reaches, each once, following
    /// exchange-to-exchange bindings (cycles are cut). `exchange` must exist.
    pub fn route(
        &self,
        exchange: &Arc<Exchange>,
        routing_key: &str,
        headers: &mut dyn FnMut() -> Option<FieldTable>,
        out: &mut Vec<Arc<Queue>>,
    ) {
        if exchange.name.is_empty() {
            if let Some(q) = self.queues.read().get(routing_key) {
                out.push(q.clone());
            }
            return;
        }
        let mut visited: Vec<*const Exchange> = vec![Arc::as_ptr(exchange)];
        let mut pending = vec![exchange.clone()];
        let mut dests = Vec::new();
        let mut seen = HashSet::new();
        while let Some(e) = pending.pop() {
            dests.clear();
            e.route(routing_key, headers, &mut dests);
            if dests.is_empty() {
                // alternate-exchange: what this exchange cannot route goes there. The
                // argument wins over a policy's; the policy is looked at (an Arc clone,
                // no allocation) only for unroutable messages.
                let by_arg = e.options.arguments.get("alternate-exchange").and_then(wire::FieldValue::as_str);
                let ae = match by_arg {
                    Some(name) => self.exchange(name).ok(),
                    None => e
                        .policy()
                        .and_then(|p| p.definition.alternate_exchange.as_deref().and_then(|n| self.exchange(n).ok())),
                };
                if let Some(ae) = ae {
                    dests.push(Destination::Exchange(ae));
                }
            }
            for d in dests.drain(..) {
                match d {
                    Destination::Queue(q) => push_unique(out, &mut seen, q),
                    Destination::Exchange(x) => {
                        let p = Arc::as_ptr(&x);
                        if !visited.contains(&p) && visited.len() < ROUTE_HOPS_MAX {
                            visited.push(p);
                            pending.push(x);
                        }
                    }
                }
            }
        }
    }
}

/// Routed queues up to this many are deduplicated by scanning `out`; beyond, by a set (a
/// fanout to thousands of queues made the scan quadratic per message).
const ROUTE_SCAN_MAX: usize = 32;

/// Add `q` to `out` unless it is there. `seen` mirrors `out` once it outgrows a scan.
fn push_unique(out: &mut Vec<Arc<Queue>>, seen: &mut HashSet<*const Queue>, q: Arc<Queue>) {
    if out.len() < ROUTE_SCAN_MAX {
        if !out.iter().any(|x| Arc::ptr_eq(x, &q)) {
            out.push(q);
        }
        return;
    }
    if seen.is_empty() {
        seen.extend(out.iter().map(Arc::as_ptr));
    }
    if seen.insert(Arc::as_ptr(&q)) {
        out.push(q);
    }
}

/// A binding to a classic queue of another node: not this node's to record.
fn to_remote(b: &Binding) -> bool {
    matches!(&b.destination, Destination::Queue(q) if q.is_remote())
}

fn check_exclusive(q: &Queue, conn: ConnectionId) -> Result<(), AmqpError> {
    match q.owner {
        Some(owner) if owner != conn => Err(exclusive_locked(q)),
        _ => Ok(()),
    }
}

fn exclusive_locked(q: &Queue) -> AmqpError {
    AmqpError::resource_locked(format!(
        "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
        q.name, q.vhost
    ))
}

fn validate_binding(e: &Exchange, arguments: &FieldTable) -> Result<(), AmqpError> {
    if e.kind() == ExchangeKind::Headers {
        crate::matching::validate_x_match(arguments).map_err(AmqpError::precondition_failed)?;
    }
    Ok(())
}

/// A server-generated name: prefix + 22 URL-safe base64 characters, as RabbitMQ's
/// `amq.gen-…` names look.
pub fn generate_name(prefix: &str, taken: impl Fn(&str) -> bool) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    loop {
        let mut s = String::with_capacity(prefix.len() + 22);
        s.push_str(prefix);
        for _ in 0..22 {
            s.push(char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]));
        }
        if !taken(&s) {
            return s;
        }
    }
}
