//! Exchanges and their bindings. Routing returns destinations; the vhost resolves
//! exchange-to-exchange bindings into a set of queues.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use wire::{FieldTable, FieldValue};

use crate::error::AmqpError;
use crate::matching::{HeaderIndex, Multiset, TopicIndex, headers_match_indexed};
use crate::policy::Policy;
use crate::queue::Queue;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn parse(s: &str) -> Option<ExchangeKind> {
        match s {
            "direct" => Some(ExchangeKind::Direct),
            "fanout" => Some(ExchangeKind::Fanout),
            "topic" => Some(ExchangeKind::Topic),
            "headers" => Some(ExchangeKind::Headers),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// The type name of the delayed-message exchange (RabbitMQ's plugin).
pub const DELAYED_TYPE: &str = "x-delayed-message";

/// Parse a declared exchange type: (routing kind, delayed). Unknown types are 503
/// COMMAND_INVALID, a connection error, as in RabbitMQ.
pub fn parse_type(declared: &str, arguments: &FieldTable) -> Result<(ExchangeKind, bool), AmqpError> {
    if declared == DELAYED_TYPE {
        let inner = arguments.get("x-delayed-type").and_then(FieldValue::as_str).and_then(ExchangeKind::parse);
        return match inner {
            Some(k) => Ok((k, true)),
            None => Err(AmqpError::precondition_failed(
                "Invalid argument, 'x-delayed-type' must be an existing exchange type",
            )),
        };
    }
    ExchangeKind::parse(declared)
        .map(|k| (k, false))
        // RabbitMQ 3.13+ (rabbit_exchange:check_type): 406 on the channel. (3.12 and older
        // closed the connection with 503; pika 1.4's own suite expects the 406.)
        .ok_or_else(|| AmqpError::precondition_failed(format!("unknown exchange type '{declared}'")))
}

impl ExchangeOptions {
    /// The type as declared ("x-delayed-message" for delayed exchanges).
    pub fn type_name(&self) -> &'static str {
        if self.delayed { "x-delayed-message" } else { self.kind.as_str() }
    }
}

/// Where a binding leads.
#[derive(Clone, Debug)]
pub enum Destination {
    Queue(Arc<Queue>),
    Exchange(Arc<Exchange>),
}

impl PartialEq for Destination {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Destination::Queue(a), Destination::Queue(b)) => Arc::ptr_eq(a, b),
            (Destination::Exchange(a), Destination::Exchange(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}
impl Eq for Destination {}

impl std::hash::Hash for Destination {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id().hash(state);
    }
}

impl Destination {
    pub fn name(&self) -> &str {
        match self {
            Destination::Queue(q) => &q.name,
            Destination::Exchange(e) => &e.name,
        }
    }
    pub fn is_queue(&self) -> bool {
        matches!(self, Destination::Queue(_))
    }
}

#[derive(Clone, Debug)]
pub struct Binding {
    pub destination: Destination,
    pub routing_key: String,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeOptions {
    /// How bindings route. For an `x-delayed-message` exchange, its x-delayed-type.
    pub kind: ExchangeKind,
    /// Declared as `x-delayed-message` (RabbitMQ's delayed-message plugin): messages with
    /// an `x-delay` header are held that many ms before being routed.
    pub delayed: bool,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

pub struct Exchange {
    pub name: String,
    pub vhost: String,
    pub options: ExchangeOptions,
    bindings: RwLock<Bindings>,
    /// The policy applied to this exchange (its `alternate-exchange` is the only key that
    /// acts on exchanges). Read only for messages the bindings cannot route.
    policy: parking_lot::Mutex<Option<Arc<Policy>>>,
    /// Messages in and out (management statistics); the publishing channel records them.
    pub counters: crate::counters::ExchangeCounters,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange").field("name", &self.name).finish()
    }
}

/// All bindings of one exchange, plus the index its kind routes with. Every operation on
/// one binding is O(1) (expected) in the number of bindings: tens of thousands of bindings
/// on one exchange made each bind a linear scan.
#[derive(Default)]
struct Bindings {
    /// Bindings grouped by destination, in no particular order (removal swaps the last
    /// destination in). Fanout and headers routing walk this.
    dests: Vec<DestBindings>,
    /// Destination → its position in `dests`.
    dest_pos: HashMap<DestId, usize>,
    /// Binding identity (destination, routing key, arguments) → its position in its
    /// destination's `keys`. An entry holds the identity's hash and the position, not a
    /// copy of the key: a lookup compares with the binding itself in `dests`.
    index: hashbrown::HashTable<Slot>,
    hasher: std::hash::RandomState,
    /// direct: routing key → destinations.
    direct: HashMap<String, Multiset<Destination>>,
    /// topic: pattern trie.
    topic: TopicIndex<Destination>,
}

/// The bindings of one exchange to one destination.
struct DestBindings {
    dest: Destination,
    /// (routing key, arguments) of each binding, in no particular order.
    keys: Vec<(String, FieldTable)>,
}

/// A destination's identity: the address of its queue or exchange, with the low bit set
/// for a queue (both are at least 8-aligned). A binding holds the `Arc`, so the address is
/// not reused while the binding exists.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct DestId(usize);

impl Destination {
    fn id(&self) -> DestId {
        match self {
            Destination::Queue(q) => DestId(Arc::as_ptr(q) as usize | 1),
            Destination::Exchange(e) => DestId(Arc::as_ptr(e) as usize),
        }
    }
}

/// An entry of the bindings index: where a binding is, and its identity's hash.
#[derive(Clone, Copy)]
struct Slot {
    hash: u64,
    dest: DestId,
    /// Position in the destination's `keys`.
    at: u32,
}

/// A binding's identity as looked up: the arguments in wire form (empty for an empty
/// table), so equal tables compare equal however their values are typed in memory.
struct Identity<'a> {
    dest: DestId,
    routing_key: &'a str,
    args: Vec<u8>,
}

fn encoded(args: &FieldTable) -> Vec<u8> {
    let mut out = Vec::new();
    if !args.is_empty() {
        wire::types::encode_table(args, &mut out);
    }
    out
}

impl<'a> Identity<'a> {
    fn new(dest: DestId, routing_key: &'a str, args: &FieldTable) -> Identity<'a> {
        Identity { dest, routing_key, args: encoded(args) }
    }

    fn of(b: &'a Binding) -> Identity<'a> {
        Identity::new(b.destination.id(), &b.routing_key, &b.arguments)
    }
}

/// Whether `s` is the entry of the binding `id` (compared with the binding in `dests`).
fn slot_is(dests: &[DestBindings], dest_pos: &HashMap<DestId, usize>, s: &Slot, id: &Identity<'_>) -> bool {
    if s.dest != id.dest {
        return false;
    }
    let Some(&d) = dest_pos.get(&s.dest) else { return false };
    let Some((k, a)) = dests[d].keys.get(s.at as usize) else { return false };
    k == id.routing_key && (a.is_empty() && id.args.is_empty() || encoded(a) == id.args)
}

impl Bindings {
    fn len(&self) -> usize {
        self.index.len()
    }

    fn hash(&self, id: &Identity<'_>) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one((id.dest, id.routing_key, &id.args[..]))
    }

    /// The position of binding `id` in its destination's `keys`.
    fn find(&self, id: &Identity<'_>) -> Option<usize> {
        let h = self.hash(id);
        self.index.find(h, |s| slot_is(&self.dests, &self.dest_pos, s, id)).map(|s| s.at as usize)
    }

    /// Take binding `id`'s entry out of the index; its position.
    fn unindex_identity(&mut self, id: &Identity<'_>) -> Option<usize> {
        let h = self.hash(id);
        let Bindings { index, dests, dest_pos, .. } = self;
        let entry = index.find_entry(h, |s| slot_is(dests, dest_pos, s, id)).ok()?;
        Some(entry.remove().0.at as usize)
    }

    /// Take the entry of the binding at (`dest`, `at`) out of the index.
    fn unindex_at(&mut self, dest: DestId, at: usize, routing_key: &str, args: &FieldTable) {
        let h = self.hash(&Identity::new(dest, routing_key, args));
        if let Ok(e) = self.index.find_entry(h, |s| s.dest == dest && s.at as usize == at) {
            e.remove();
        }
    }

    /// Remove the binding at `at` of destination entry `d` (its index entry is gone
    /// already); returns it.
    fn take(&mut self, d: usize, at: usize) -> Binding {
        let entry = &mut self.dests[d];
        let (routing_key, arguments) = entry.keys.swap_remove(at);
        let destination = entry.dest.clone();
        let last = entry.keys.len();
        if let Some((k, a)) = entry.keys.get(at) {
            // The last binding moved into the hole.
            let dest = destination.id();
            let h = {
                use std::hash::BuildHasher;
                self.hasher.hash_one((dest, k.as_str(), &encoded(a)[..]))
            };
            if let Some(s) = self.index.find_mut(h, |s| s.dest == dest && s.at as usize == last) {
                s.at = at as u32;
            }
        }
        if entry.keys.is_empty() {
            self.remove_dest(d);
        }
        Binding { destination, routing_key, arguments }
    }

    /// Remove destination entry `d` (whatever bindings it still lists stay in `index`).
    fn remove_dest(&mut self, d: usize) -> DestBindings {
        let entry = self.dests.swap_remove(d);
        self.dest_pos.remove(&entry.dest.id());
        if let Some(moved) = self.dests.get(d) {
            self.dest_pos.insert(moved.dest.id(), d);
        }
        entry
    }
}

impl Exchange {
    pub fn new(vhost: &str, name: String, options: ExchangeOptions) -> Arc<Exchange> {
        Arc::new(Exchange {
            name,
            vhost: vhost.to_owned(),
            options,
            bindings: RwLock::new(Bindings::default()),
            policy: parking_lot::Mutex::new(None),
            counters: Default::default(),
        })
    }

    /// The name of the policy applied to this exchange.
    pub fn policy_name(&self) -> Option<String> {
        self.policy.lock().as_ref().map(|p| p.name.clone())
    }

    pub(crate) fn policy(&self) -> Option<Arc<Policy>> {
        self.policy.lock().clone()
    }

    pub(crate) fn set_policy(&self, p: Option<Arc<Policy>>) {
        *self.policy.lock() = p;
    }

    /// Where unroutable messages go: the `alternate-exchange` argument, else the policy's
    /// (as in RabbitMQ, the argument wins).
    pub fn alternate_exchange(&self) -> Option<String> {
        match self.options.arguments.get("alternate-exchange").and_then(FieldValue::as_str) {
            Some(ae) => Some(ae.to_owned()),
            None => self.policy().and_then(|p| p.definition.alternate_exchange.clone()),
        }
    }

    pub fn kind(&self) -> ExchangeKind {
        self.options.kind
    }

    /// Add a binding; false if an identical one (destination, key, arguments) exists.
    pub fn bind(&self, b: Binding) -> bool {
        let mut bs = self.bindings.write();
        let bs = &mut *bs;
        let id = Identity::of(&b);
        if bs.find(&id).is_some() {
            return false;
        }
        let (dest, hash) = (id.dest, bs.hash(&id));
        drop(id);
        match self.options.kind {
            ExchangeKind::Direct => bs.direct.entry(b.routing_key.clone()).or_default().add(b.destination.clone()),
            ExchangeKind::Topic => bs.topic.insert(&b.routing_key, b.destination.clone()),
            ExchangeKind::Fanout | ExchangeKind::Headers => {}
        }
        let d = match bs.dest_pos.get(&dest) {
            Some(&d) => d,
            None => {
                bs.dests.push(DestBindings { dest: b.destination, keys: Vec::new() });
                bs.dest_pos.insert(dest, bs.dests.len() - 1);
                bs.dests.len() - 1
            }
        };
        let keys = &mut bs.dests[d].keys;
        keys.push((b.routing_key, b.arguments));
        let at = u32::try_from(keys.len() - 1).expect("fewer than 4 billion bindings to one destination");
        bs.index.insert_unique(hash, Slot { hash, dest, at }, |s| s.hash);
        true
    }

    /// Remove a binding; false if there was none.
    pub fn unbind(&self, b: &Binding) -> bool {
        let mut bs = self.bindings.write();
        let id = Identity::of(b);
        let Some(at) = bs.unindex_identity(&id) else { return false };
        let Some(&d) = bs.dest_pos.get(&id.dest) else { return false };
        let removed = bs.take(d, at);
        self.unindex(&mut bs, &removed);
        true
    }

    fn unindex(&self, bs: &mut Bindings, removed: &Binding) {
        // Another binding may lead to the same destination with the same key but other
        // arguments: the index keeps one entry per binding, so remove exactly one.
        match self.options.kind {
            ExchangeKind::Direct => {
                if let Some(v) = bs.direct.get_mut(&removed.routing_key) {
                    v.remove_one(&removed.destination);
                    if v.is_empty() {
                        bs.direct.remove(&removed.routing_key);
                    }
                }
            }
            ExchangeKind::Topic => {
                bs.topic.remove(&removed.routing_key, &removed.destination);
            }
            ExchangeKind::Fanout | ExchangeKind::Headers => {}
        }
    }

    /// Remove every binding leading to `dest`; returns them. O(bindings to `dest`).
    pub fn unbind_destination(&self, dest: &Destination) -> Vec<Binding> {
        let mut bs = self.bindings.write();
        let id = dest.id();
        let Some(&d) = bs.dest_pos.get(&id) else { return Vec::new() };
        let entry = bs.remove_dest(d);
        let gone: Vec<Binding> = entry
            .keys
            .into_iter()
            .map(|(routing_key, arguments)| Binding { destination: entry.dest.clone(), routing_key, arguments })
            .collect();
        for (at, b) in gone.iter().enumerate() {
            bs.unindex_at(id, at, &b.routing_key, &b.arguments);
            self.unindex(&mut bs, b);
        }
        gone
    }

    /// Whether some binding of this exchange leads to `dest`.
    pub fn leads_to(&self, dest: &Destination) -> bool {
        self.bindings.read().dest_pos.contains_key(&dest.id())
    }

    pub fn has_binding(&self, b: &Binding) -> bool {
        self.bindings.read().find(&Identity::of(b)).is_some()
    }

    pub fn binding_count(&self) -> usize {
        self.bindings.read().len()
    }

    pub fn bindings(&self) -> Vec<Binding> {
        let bs = self.bindings.read();
        let mut out = Vec::with_capacity(bs.len());
        for e in &bs.dests {
            out.extend(e.keys.iter().map(|(routing_key, arguments)| Binding {
                destination: e.dest.clone(),
                routing_key: routing_key.clone(),
                arguments: arguments.clone(),
            }));
        }
        out
    }

    /// Destinations matched by a message with this routing key and headers.
    /// `headers` is only consulted by headers exchanges, hence lazy.
    pub fn route(
        &self,
        routing_key: &str,
        headers: &mut dyn FnMut() -> Option<FieldTable>,
        out: &mut Vec<Destination>,
    ) {
        let bs = self.bindings.read();
        match self.options.kind {
            ExchangeKind::Direct => {
                if let Some(v) = bs.direct.get(routing_key) {
                    out.extend(v.iter().cloned());
                }
            }
            // Each destination once, however many bindings lead to it.
            ExchangeKind::Fanout => out.extend(bs.dests.iter().map(|e| e.dest.clone())),
            ExchangeKind::Topic => bs.topic.matches(routing_key, out),
            ExchangeKind::Headers => {
                if bs.dests.is_empty() {
                    return;
                }
                let h = headers();
                let index = HeaderIndex::new(h.as_ref());
                for e in &bs.dests {
                    if e.keys.iter().any(|(_, args)| headers_match_indexed(args, &index)) {
                        out.push(e.dest.clone());
                    }
                }
            }
        }
    }

    pub fn check_equivalent(&self, o: &ExchangeOptions) -> Result<(), AmqpError> {
        let mine = &self.options;
        let ineq = |arg: &str, received: &str, current: &str| {
            AmqpError::precondition_failed(format!(
                "inequivalent arg '{arg}' for exchange '{}' in vhost '{}': received '{received}' but current is '{current}'",
                self.name, self.vhost
            ))
        };
        if o.kind != mine.kind || o.delayed != mine.delayed {
            return Err(ineq("type", o.type_name(), mine.type_name()));
        }
        if o.durable != mine.durable {
            return Err(ineq("durable", &o.durable.to_string(), &mine.durable.to_string()));
        }
        if o.auto_delete != mine.auto_delete {
            return Err(ineq("auto_delete", &o.auto_delete.to_string(), &mine.auto_delete.to_string()));
        }
        if o.internal != mine.internal {
            return Err(ineq("internal", &o.internal.to_string(), &mine.internal.to_string()));
        }
        check_arguments_equivalent("exchange", &self.name, &self.vhost, &o.arguments, &mine.arguments)
    }
}

/// RabbitMQ compares the arguments it understands (the `x-` ones and
/// `alternate-exchange`) on redeclare; numeric values compare by value across integer
/// types. Unknown arguments are not compared.
pub(crate) fn check_arguments_equivalent(
    what: &str,
    name: &str,
    vhost: &str,
    received: &FieldTable,
    current: &FieldTable,
) -> Result<(), AmqpError> {
    let compared = |k: &str| k.starts_with("x-") || k == "alternate-exchange";
    let keys = received.iter().map(|(k, _)| k).chain(current.iter().map(|(k, _)| k)).filter(|k| compared(k));
    for k in keys {
        let (r, c) = (received.get(k), current.get(k));
        if !values_equivalent(r, c) {
            return Err(AmqpError::precondition_failed(format!(
                "inequivalent arg '{k}' for {what} '{name}' in vhost '{vhost}': received {} but current is {}",
                describe(r),
                describe(c)
            )));
        }
    }
    Ok(())
}

fn values_equivalent(a: Option<&FieldValue>, b: Option<&FieldValue>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x == y,
        },
        _ => false,
    }
}

fn describe(v: Option<&FieldValue>) -> String {
    match v {
        None => "none".to_owned(),
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(i), _) => format!("the value '{i}' of type '{}'", v.type_name()),
            (_, Some(s)) => format!("the value '{s}' of type 'longstr'"),
            _ => format!("the value '{v:?}'"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QueueOptions;
    use proptest::prelude::*;

    fn exchange(kind: ExchangeKind) -> Arc<Exchange> {
        let opts = ExchangeOptions {
            kind,
            delayed: false,
            durable: false,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::new(),
        };
        Exchange::new("/", format!("x-{}", kind.as_str()), opts)
    }

    fn queues(n: usize) -> Vec<Arc<Queue>> {
        let opts = QueueOptions { durable: false, exclusive: false, auto_delete: false, arguments: FieldTable::new() };
        (0..n).map(|i| Queue::new("/", format!("q{i}"), opts.clone(), None)).collect()
    }

    fn args(a: u8) -> FieldTable {
        let mut t = FieldTable::new();
        if a > 0 {
            t.insert("k", FieldValue::I32(i32::from(a)));
        }
        t
    }

    #[derive(Debug, Clone)]
    enum Op {
        Bind(usize, u8, u8),
        Unbind(usize, u8, u8),
        UnbindDestination(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..4usize, 0..3u8, 0..3u8).prop_map(|(q, k, a)| Op::Bind(q, k, a)),
            2 => (0..4usize, 0..3u8, 0..3u8).prop_map(|(q, k, a)| Op::Unbind(q, k, a)),
            1 => (0..4usize).prop_map(Op::UnbindDestination),
        ]
    }

    /// Destination names, sorted, deduplicated.
    fn names(d: &[Destination]) -> Vec<String> {
        let mut v: Vec<String> = d.iter().map(|d| d.name().to_owned()).collect();
        v.sort();
        v.dedup();
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        // The indexed bindings agree with a plain list of (queue, key, args) after any
        // sequence of binds and unbinds, for every exchange kind.
        #[test]
        fn bindings_agree_with_a_list(ops in prop::collection::vec(op(), 0..60)) {
            let qs = queues(4);
            let keys = ["a", "a.b", "c"];
            for kind in [ExchangeKind::Direct, ExchangeKind::Fanout, ExchangeKind::Topic, ExchangeKind::Headers] {
                let e = exchange(kind);
                let mut model: Vec<(usize, u8, u8)> = Vec::new();
                let binding = |q: usize, k: u8, a: u8| Binding {
                    destination: Destination::Queue(qs[q].clone()),
                    routing_key: keys[usize::from(k)].to_owned(),
                    arguments: args(a),
                };
                for op in &ops {
                    match *op {
                        Op::Bind(q, k, a) => {
                            let fresh = !model.contains(&(q, k, a));
                            prop_assert_eq!(e.bind(binding(q, k, a)), fresh);
                            if fresh {
                                model.push((q, k, a));
                            }
                        }
                        Op::Unbind(q, k, a) => {
                            let had = model.contains(&(q, k, a));
                            prop_assert_eq!(e.unbind(&binding(q, k, a)), had);
                            model.retain(|x| *x != (q, k, a));
                        }
                        Op::UnbindDestination(q) => {
                            let gone = e.unbind_destination(&Destination::Queue(qs[q].clone()));
                            prop_assert_eq!(gone.len(), model.iter().filter(|x| x.0 == q).count());
                            model.retain(|x| x.0 != q);
                        }
                    }
                    prop_assert_eq!(e.binding_count(), model.len());
                    for (q, queue) in qs.iter().enumerate() {
                        prop_assert_eq!(e.leads_to(&Destination::Queue(queue.clone())), model.iter().any(|x| x.0 == q));
                    }
                    for &(q, k, a) in &model {
                        prop_assert!(e.has_binding(&binding(q, k, a)));
                    }
                    let mut listed: Vec<(String, String, FieldTable)> =
                        e.bindings().into_iter().map(|b| (b.destination.name().to_owned(), b.routing_key, b.arguments)).collect();
                    let mut want: Vec<(String, String, FieldTable)> =
                        model.iter().map(|&(q, k, a)| (format!("q{q}"), keys[usize::from(k)].to_owned(), args(a))).collect();
                    let order = |x: &(String, String, FieldTable), y: &(String, String, FieldTable)| {
                        (&x.0, &x.1, format!("{:?}", x.2)).cmp(&(&y.0, &y.1, format!("{:?}", y.2)))
                    };
                    listed.sort_by(order);
                    want.sort_by(order);
                    prop_assert_eq!(listed, want);
                    // Routing reaches exactly the queues the model says.
                    for (rk, hk) in [("a", 1u8), ("a.b", 2), ("c", 0)] {
                        let mut out = Vec::new();
                        e.route(rk, &mut || Some(args(hk)), &mut out);
                        let expect: Vec<String> = {
                            let mut v: Vec<String> = model
                                .iter()
                                .filter(|&&(_, k, a)| match kind {
                                    ExchangeKind::Direct | ExchangeKind::Topic => keys[usize::from(k)] == rk,
                                    ExchangeKind::Fanout => true,
                                    ExchangeKind::Headers => a == 0 || a == hk,
                                })
                                .map(|x| format!("q{}", x.0))
                                .collect();
                            v.sort();
                            v.dedup();
                            v
                        };
                        prop_assert_eq!(names(&out), expect);
                    }
                }
            }
        }
    }

    /// 100,000 bindings from one exchange to one queue, then unbound one by one: each
    /// operation is O(1), so this takes well under the minutes a scan per bind took.
    #[test]
    fn many_bindings_to_one_destination() {
        let e = exchange(ExchangeKind::Topic);
        let q = queues(1).remove(0);
        let b = |i: usize| Binding {
            destination: Destination::Queue(q.clone()),
            routing_key: format!("k.{i}"),
            arguments: FieldTable::new(),
        };
        let started = std::time::Instant::now();
        for i in 0..100_000 {
            assert!(e.bind(b(i)));
        }
        assert!(!e.bind(b(7)));
        for i in (0..100_000).step_by(2) {
            assert!(e.unbind(&b(i)));
        }
        assert_eq!(e.binding_count(), 50_000);
        assert_eq!(e.unbind_destination(&Destination::Queue(q.clone())).len(), 50_000);
        assert_eq!(e.binding_count(), 0);
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
    }
}
