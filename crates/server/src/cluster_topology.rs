//! Replicated exchanges and bindings on a clustered node (issue 15).
//!
//! On a clustered node, exchange.declare (of an exchange the node lacks), exchange.delete,
//! exchange-to-exchange bindings and bindings to quorum queues and to classic queues in the
//! cluster's directory (`crate::classic_queues`) — by AMQP or the management
//! API — go through the cluster's Raft log as [`Command`]s and **every node applies them**
//! in log order, so every node has the same exchanges and replicated bindings. The caller
//! gets its answer once this node has applied the entry, with the leader's result (an
//! equivalence error of a concurrent declare on another node is a 406 here too).
//! Bindings to exclusive queues stay on their node.
//!
//! A node without clustering takes none of these paths: [`ServerState::exchange_declare`]
//! and friends call the vhost directly, as before.

use std::sync::Arc;

use broker::exchange::{Destination, ExchangeOptions};
use broker::{AmqpError, VHost};
use serde::{Deserialize, Serialize};
use tracing::error;

use crate::clustering::{Command, Running};
use crate::quorum_queues::{
    BindingDeclaration, ExchangeDeclaration, decode_arguments, encode_arguments, exchange_declaration,
};
use crate::state::ServerState;

/// An exchange of a vhost, as the log and snapshots carry it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct VhostExchange {
    pub vhost: String,
    pub exchange: ExchangeDeclaration,
}

/// An exchange-to-exchange binding, as the log and snapshots carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ExchangeBinding {
    pub vhost: String,
    pub source: String,
    pub destination: String,
    pub routing_key: String,
    /// AMQP-encoded field table.
    pub arguments: Vec<u8>,
}

/// The replicated topology in a snapshot: every exchange of every vhost and every
/// exchange-to-exchange binding (bindings to quorum queues travel with their queues).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct TopologySnapshot {
    pub exchanges: Vec<VhostExchange>,
    pub bindings: Vec<ExchangeBinding>,
}

/// A binding as queue.bind, exchange.bind and the management API name it.
pub(crate) struct BindingSpec<'a> {
    pub source: &'a str,
    pub destination: &'a str,
    /// The destination is a queue (else an exchange).
    pub to_queue: bool,
    pub routing_key: &'a str,
}

/// What applying a topology command gave: the AMQP reply code and text of a refusal, so
/// the proposer answers as a single node would (404, 406, ...).
type Answer = Result<(), (u16, String)>;

fn refusal(e: AmqpError) -> (u16, String) {
    (e.code, e.text)
}

/// The bytes [`crate::clustering::Applier`] returns for a topology command.
pub(crate) fn encode_answer(a: &Answer) -> Vec<u8> {
    serde_json::to_vec(a).expect("answers serialize")
}

impl ExchangeDeclaration {
    pub(crate) fn options(&self) -> Result<ExchangeOptions, AmqpError> {
        let arguments = decode_arguments(&self.arguments);
        let (kind, delayed) = broker::exchange::parse_type(&self.kind, &arguments)?;
        Ok(ExchangeOptions {
            kind,
            delayed,
            durable: self.durable,
            auto_delete: self.auto_delete,
            internal: self.internal,
            arguments,
        })
    }
}

fn declaration(name: &str, opts: &ExchangeOptions) -> ExchangeDeclaration {
    ExchangeDeclaration {
        name: name.to_owned(),
        kind: opts.type_name().to_owned(),
        durable: opts.durable,
        auto_delete: opts.auto_delete,
        internal: opts.internal,
        arguments: encode_arguments(&opts.arguments),
    }
}

impl ServerState {
    /// A binding whose destination is replicated: an exchange, a quorum queue's replica,
    /// or a classic queue in the cluster's directory (its home's or a forwarding one).
    fn replicated(&self, d: &Destination) -> bool {
        match d {
            Destination::Exchange(_) => true,
            Destination::Queue(q) => q.replica().is_some() || self.in_classic_directory(&q.vhost, &q.name),
        }
    }

    /// Whether the classic queue (vhost, name) is in the cluster's directory.
    pub(crate) fn in_classic_directory(&self, vhost: &str, name: &str) -> bool {
        self.classic.get().is_some_and(|c| c.contains(vhost, name))
    }

    /// The cluster this node replicates its topology through (None: a single node).
    fn topology_cluster(&self) -> Option<&Running> {
        self.cluster.get()
    }

    /// exchange.declare (AMQP and management API). Clustered, an exchange this node lacks
    /// (after a read barrier: one another node just declared is seen) is declared through
    /// the log; one it has is checked for equivalence here. Passive: local after the barrier.
    pub(crate) fn exchange_declare(
        &self,
        vh: &VHost,
        name: &str,
        passive: bool,
        opts: ExchangeOptions,
    ) -> Result<(), AmqpError> {
        let Some(running) = self.topology_cluster() else {
            return vh.declare_exchange(name, passive, opts).map(drop);
        };
        if vh.exchange(name).is_err() {
            self.cluster_read_barrier();
        }
        if passive {
            return vh.exchange(name).map(drop);
        }
        if let Ok(e) = vh.exchange(name) {
            return e.check_equivalent(&opts);
        }
        if name.starts_with("amq.") {
            // As on a single node: creating one is refused (existing ones are built in).
            return vh.declare_exchange(name, false, opts).map(drop);
        }
        let cmd =
            Command::ExchangeDeclare(VhostExchange { vhost: vh.name.clone(), exchange: declaration(name, &opts) });
        self.propose_topology_change(running, &cmd)
    }

    /// exchange.delete. Clustered: `if_unused` is checked here against every binding this
    /// node has (classic queues' included), then on every node against the replicated ones
    /// (the same everywhere, so every node decides alike); the exchange and its bindings go
    /// on every node.
    pub(crate) fn exchange_delete(&self, vh: &VHost, name: &str, if_unused: bool) -> Result<(), AmqpError> {
        let Some(running) = self.topology_cluster() else { return vh.delete_exchange(name, if_unused) };
        if name.is_empty() || name.starts_with("amq.") {
            return vh.delete_exchange(name, if_unused);
        }
        if vh.exchange(name).is_err() {
            self.cluster_read_barrier();
        }
        let Ok(e) = vh.exchange(name) else {
            // RabbitMQ 3.x+: deleting a missing exchange succeeds.
            return Ok(());
        };
        if if_unused && in_use(vh, &e, |_| true) {
            return Err(in_use_error(vh, name));
        }
        let cmd = Command::ExchangeDelete { vhost: vh.name.clone(), name: name.to_owned(), if_unused };
        self.propose_topology_change(running, &cmd)
    }

    /// queue.bind/unbind, exchange.bind/unbind and the management API's bindings: through
    /// the log when clustered and the destination is an exchange or a quorum queue; else
    /// on this node only (classic queues live on one node).
    pub(crate) fn change_binding(
        &self,
        vh: &VHost,
        b: BindingSpec<'_>,
        arguments: wire::FieldTable,
        conn: broker::ConnectionId,
        add: bool,
    ) -> Result<(), AmqpError> {
        let BindingSpec { source, destination, to_queue, routing_key } = b;
        let local = |arguments| match (to_queue, add) {
            (true, true) => vh.bind_queue(destination, source, routing_key, arguments, conn),
            (true, false) => vh.unbind_queue(destination, source, routing_key, arguments, conn),
            (false, true) => vh.bind_exchange(destination, source, routing_key, arguments),
            (false, false) => vh.unbind_exchange(destination, source, routing_key, arguments),
        };
        let Some(running) = self.topology_cluster() else { return local(arguments) };
        if source.is_empty() || destination.is_empty() {
            return local(arguments);
        }
        // An exchange another node just declared is seen here.
        if vh.exchange(source).is_err() || (!to_queue && vh.exchange(destination).is_err()) {
            self.cluster_read_barrier();
        }
        if to_queue {
            // A quorum queue's binding, or a classic queue's in the directory: its own log
            // entry (it carries the exchange too).
            return match vh.queue(destination, conn) {
                Ok(q) if q.replica().is_some() || self.in_classic_directory(&vh.name, destination) => {
                    self.bind_quorum(vh, destination, source, routing_key, &arguments, add)
                }
                _ => local(arguments),
            };
        }
        // 404 here, as on a single node, before anything is proposed.
        vh.exchange(source)?;
        vh.exchange(destination)?;
        let b = ExchangeBinding {
            vhost: vh.name.clone(),
            source: source.to_owned(),
            destination: destination.to_owned(),
            routing_key: routing_key.to_owned(),
            arguments: encode_arguments(&arguments),
        };
        let cmd = if add { Command::ExchangeBind(b) } else { Command::ExchangeUnbind(b) };
        self.propose_topology_change(running, &cmd)
    }

    /// Propose `cmd` and wait until this node has applied it; the answer is the leader's.
    /// Blocks the calling thread (declares are rare; the channel's and the management
    /// API's handlers are synchronous), as quorum-queue declares do. Without a majority the
    /// wait ends after the write timeout with 541 (the management API answers 503).
    fn propose_topology_change(&self, running: &Running, cmd: &Command) -> Result<(), AmqpError> {
        let bytes = crate::clustering::encode_cbor(cmd);
        let unavailable = |e: String| AmqpError::new(wire::reply::INTERNAL_ERROR, format!("cluster: {e}"));
        let handle = tokio::runtime::Handle::try_current().map_err(|e| unavailable(e.to_string()))?;
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err(unavailable("replicated topology needs the broker's multi-thread runtime".into()));
        }
        // An older member could not read it: refused until the flag is enabled (541, as
        // RabbitMQ refuses a queue type whose feature flag is disabled).
        if let Some(refusal) = tokio::task::block_in_place(|| handle.block_on(self.feature_flag_refusal(cmd))) {
            return Err(AmqpError::new(wire::reply::INTERNAL_ERROR, refusal));
        }
        let (_, result) = tokio::task::block_in_place(|| handle.block_on(running.node.propose_and_wait(bytes)))
            .map_err(|e| unavailable(e.to_string()))?;
        match serde_json::from_slice::<Answer>(&result) {
            Ok(Ok(())) => Ok(()),
            Ok(Err((code, text))) => Err(AmqpError::new(code, text)),
            Err(e) => Err(unavailable(format!("undecodable result: {e}"))),
        }
    }

    /// A committed exchange declare: create it here, or check an existing one (a 406 here
    /// is the same on every node that applied the same entries).
    pub(crate) fn apply_exchange_declare(&self, d: &VhostExchange) -> Answer {
        let vh = self.vhost(&d.vhost).ok_or_else(|| no_vhost(&d.vhost))?;
        let opts = d.exchange.options().map_err(refusal)?;
        vh.declare_exchange(&d.exchange.name, false, opts).map(drop).map_err(refusal)
    }

    /// A committed exchange delete: `if_unused` counts the replicated bindings only (every
    /// node has the same), then the exchange and all its bindings here go.
    pub(crate) fn apply_exchange_delete(&self, vhost: &str, name: &str, if_unused: bool) -> Answer {
        let Some(vh) = self.vhost(vhost) else { return Ok(()) };
        let Ok(e) = vh.exchange(name) else { return Ok(()) };
        if if_unused && in_use(&vh, &e, |d| self.replicated(d)) {
            return Err(refusal(in_use_error(&vh, name)));
        }
        vh.delete_exchange(name, false).map_err(refusal)
    }

    /// A committed exchange-to-exchange binding (or unbinding). Unbinding what this node
    /// lacks removes nothing, as on a single node.
    pub(crate) fn apply_exchange_binding(&self, b: &ExchangeBinding, add: bool) -> Answer {
        let vh = self.vhost(&b.vhost).ok_or_else(|| no_vhost(&b.vhost))?;
        let arguments = decode_arguments(&b.arguments);
        let r = if add {
            vh.bind_exchange(&b.destination, &b.source, &b.routing_key, arguments)
        } else if vh.exchange(&b.source).is_err() || vh.exchange(&b.destination).is_err() {
            Ok(())
        } else {
            vh.unbind_exchange(&b.destination, &b.source, &b.routing_key, arguments)
        };
        r.map_err(refusal)
    }

    /// Every exchange and exchange-to-exchange binding of this node, for a snapshot.
    pub(crate) fn topology_snapshot(&self) -> TopologySnapshot {
        let mut out = TopologySnapshot::default();
        for vh in self.vhosts() {
            for e in vh.exchanges() {
                if e.name.is_empty() || e.name.starts_with("amq.") {
                    continue; // built in: every vhost has them
                }
                out.exchanges.push(VhostExchange { vhost: vh.name.clone(), exchange: exchange_declaration(&e) });
                for b in e.bindings() {
                    if let Destination::Exchange(d) = &b.destination {
                        out.bindings.push(ExchangeBinding {
                            vhost: vh.name.clone(),
                            source: e.name.clone(),
                            destination: d.name.clone(),
                            routing_key: b.routing_key.clone(),
                            arguments: encode_arguments(&b.arguments),
                        });
                    }
                }
            }
        }
        out
    }

    /// Add a snapshot's exchanges this node lacks (before its quorum queues are restored,
    /// whose bindings need them). `exact` (a snapshot from the leader, this node being
    /// behind): the snapshot is the cluster's state, so an exchange it lacks is deleted here
    /// (deleted while this node was behind), one declared otherwise is declared again as
    /// the snapshot has it. Returns the exchanges it declared, as (vhost, name).
    pub(crate) fn restore_exchanges(&self, snapshot: &TopologySnapshot, exact: bool) -> Vec<(String, String)> {
        let mut wanted: std::collections::HashMap<(String, String), &ExchangeDeclaration> =
            snapshot.exchanges.iter().map(|x| ((x.vhost.clone(), x.exchange.name.clone()), &x.exchange)).collect();
        for vh in self.vhosts() {
            for e in vh.exchanges() {
                if e.name.is_empty() || e.name.starts_with("amq.") {
                    continue;
                }
                let key = (vh.name.clone(), e.name.clone());
                if !exact || wanted.get(&key).is_some_and(|d| d.options().is_ok_and(|o| e.check_equivalent(&o).is_ok()))
                {
                    wanted.remove(&key);
                } else if let Err(err) = vh.delete_exchange(&e.name, false) {
                    error!(
                        "restoring a cluster snapshot: deleting exchange '{}' in '{}': {}",
                        e.name, vh.name, err.text
                    );
                }
            }
        }
        let mut added = Vec::new();
        for x in &snapshot.exchanges {
            let key = (x.vhost.clone(), x.exchange.name.clone());
            if !wanted.contains_key(&key) {
                continue;
            }
            match self.apply_exchange_declare(x) {
                Ok(()) => added.push(key),
                Err((_, e)) => {
                    error!("restoring exchange '{}' in '{}' from a cluster snapshot: {e}", x.exchange.name, x.vhost)
                }
            }
        }
        added
    }

    /// Record durably that the entry at `index` is applied here (with every one before it):
    /// a restart then knows that replayed entries up to it were applied already.
    pub(crate) fn record_cluster_applied(&self, index: u64) {
        if let Some(p) = &self.persistence
            && let Err(e) = p.log_batch(vec![crate::persist::cluster_applied_record(index)])
        {
            error!("raft entry {index}: recording it as applied: {e}");
            return;
        }
        self.cluster_applied.fetch_max(index, std::sync::atomic::Ordering::AcqRel);
    }

    /// Add a snapshot's exchange-to-exchange bindings this node lacks (after
    /// [`Self::restore_exchanges`]); `exact`: also remove those the snapshot lacks.
    pub(crate) fn restore_exchange_bindings(&self, snapshot: &TopologySnapshot, exact: bool) {
        let have = self.topology_snapshot().bindings;
        for b in have.iter().filter(|b| exact && !snapshot.bindings.contains(b)) {
            let _ = self.apply_exchange_binding(b, false);
        }
        for b in snapshot.bindings.iter().filter(|b| !have.contains(b)) {
            if let Err((_, e)) = self.apply_exchange_binding(b, true) {
                error!("restoring the binding of '{}' to '{}' from a cluster snapshot: {e}", b.source, b.destination);
            }
        }
    }

    /// After a snapshot's quorum queues are restored (which adds their bindings): remove
    /// the bindings to quorum queues the snapshot lacks (unbound while this node was
    /// behind), so this node does not route to a queue the others no longer route to.
    pub(crate) fn remove_quorum_bindings_not_in(&self, wanted: &[BindingDeclaration]) {
        let wanted: std::collections::HashSet<(&str, &str, &str, &str, &[u8])> = wanted
            .iter()
            .map(|b| {
                (b.vhost.as_str(), b.queue.as_str(), b.exchange.name.as_str(), b.routing_key.as_str(), &b.arguments[..])
            })
            .collect();
        for vh in self.vhosts() {
            for e in vh.exchanges().into_iter().filter(|e| !e.name.is_empty()) {
                for b in e.bindings() {
                    let Destination::Queue(q) = &b.destination else { continue };
                    if q.replica().is_none() {
                        continue;
                    }
                    let args = encode_arguments(&b.arguments);
                    if !wanted.contains(&(
                        vh.name.as_str(),
                        q.name.as_str(),
                        e.name.as_str(),
                        b.routing_key.as_str(),
                        &args[..],
                    )) && let Err(err) = vh.unbind_queue(&q.name, &e.name, &b.routing_key, b.arguments.clone(), 0)
                    {
                        error!("restoring a cluster snapshot: unbinding '{}' from '{}': {}", q.name, e.name, err.text);
                    }
                }
            }
        }
    }
}

/// Whether `e` has a binding, or is the destination of one, that `counts`.
fn in_use(vh: &VHost, e: &Arc<broker::Exchange>, counts: impl Fn(&Destination) -> bool) -> bool {
    let me = Destination::Exchange(e.clone());
    e.bindings().iter().any(|b| counts(&b.destination))
        || vh.exchanges().iter().any(|x| x.bindings().iter().any(|b| b.destination == me))
}

fn in_use_error(vh: &VHost, name: &str) -> AmqpError {
    AmqpError::precondition_failed(format!("exchange '{name}' in vhost '{}' in use", vh.name))
}

fn no_vhost(vhost: &str) -> (u16, String) {
    (wire::reply::NOT_FOUND, format!("no vhost '{vhost}'"))
}
