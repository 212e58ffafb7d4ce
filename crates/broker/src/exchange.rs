//! Exchanges and their bindings. Routing returns destinations; the vhost resolves
//! exchange-to-exchange bindings into a set of queues.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use wire::{FieldTable, FieldValue};

use crate::error::AmqpError;
use crate::matching::{TopicIndex, headers_match};
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
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange").field("name", &self.name).finish()
    }
}

/// All bindings of one exchange, plus the index its kind routes with.
#[derive(Default)]
struct Bindings {
    all: Vec<Binding>,
    /// direct: routing key → destinations.
    direct: HashMap<String, Vec<Destination>>,
    /// topic: pattern trie.
    topic: TopicIndex<Destination>,
}

impl Exchange {
    pub fn new(vhost: &str, name: String, options: ExchangeOptions) -> Arc<Exchange> {
        Arc::new(Exchange { name, vhost: vhost.to_owned(), options, bindings: RwLock::new(Bindings::default()) })
    }

    pub fn kind(&self) -> ExchangeKind {
        self.options.kind
    }

    /// Add a binding; false if an identical one (destination, key, arguments) exists.
    pub fn bind(&self, b: Binding) -> bool {
        let mut bs = self.bindings.write();
        if bs.all.iter().any(|x| same_binding(x, &b)) {
            return false;
        }
        match self.options.kind {
            ExchangeKind::Direct => bs.direct.entry(b.routing_key.clone()).or_default().push(b.destination.clone()),
            ExchangeKind::Topic => bs.topic.insert(&b.routing_key, b.destination.clone()),
            ExchangeKind::Fanout | ExchangeKind::Headers => {}
        }
        bs.all.push(b);
        true
    }

    /// Remove a binding; false if there was none.
    pub fn unbind(&self, b: &Binding) -> bool {
        let mut bs = self.bindings.write();
        let Some(pos) = bs.all.iter().position(|x| same_binding(x, b)) else { return false };
        let removed = bs.all.remove(pos);
        self.unindex(&mut bs, &removed);
        true
    }

    fn unindex(&self, bs: &mut Bindings, removed: &Binding) {
        // Another binding may lead to the same destination with the same key but other
        // arguments: the index keeps one entry per binding, so remove exactly one.
        match self.options.kind {
            ExchangeKind::Direct => {
                if let Some(v) = bs.direct.get_mut(&removed.routing_key) {
                    if let Some(i) = v.iter().position(|d| *d == removed.destination) {
                        v.remove(i);
                    }
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

    /// Remove every binding leading to `dest`; returns them.
    pub fn unbind_destination(&self, dest: &Destination) -> Vec<Binding> {
        let mut bs = self.bindings.write();
        let (gone, kept): (Vec<Binding>, Vec<Binding>) =
            std::mem::take(&mut bs.all).into_iter().partition(|b| b.destination == *dest);
        bs.all = kept;
        for b in &gone {
            self.unindex(&mut bs, b);
        }
        gone
    }

    /// Whether some binding of this exchange leads to `dest`.
    pub fn leads_to(&self, dest: &Destination) -> bool {
        self.bindings.read().all.iter().any(|b| b.destination == *dest)
    }

    pub fn has_binding(&self, b: &Binding) -> bool {
        self.bindings.read().all.iter().any(|x| same_binding(x, b))
    }

    pub fn binding_count(&self) -> usize {
        self.bindings.read().all.len()
    }

    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings.read().all.clone()
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
            ExchangeKind::Fanout => out.extend(bs.all.iter().map(|b| b.destination.clone())),
            ExchangeKind::Topic => bs.topic.matches(routing_key, out),
            ExchangeKind::Headers => {
                if bs.all.is_empty() {
                    return;
                }
                let h = headers();
                for b in &bs.all {
                    if headers_match(&b.arguments, h.as_ref()) {
                        out.push(b.destination.clone());
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

fn same_binding(a: &Binding, b: &Binding) -> bool {
    a.destination == b.destination && a.routing_key == b.routing_key && a.arguments == b.arguments
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
