//! Routing matchers for topic and headers exchanges, with RabbitMQ's semantics.
//!
//! - [`topic_matches`]: one pattern against one routing key (a linear-time DP over words).
//! - [`TopicIndex`]: a trie of topic binding patterns, walked as an NFA, so routing cost
//!   depends on the key and the branches that match, not on how many bindings exist.
//! - [`headers_match`] / [`validate_x_match`]: the headers exchange.
//!
//! Sources are RabbitMQ's own modules and suites; each rule below names the one it follows.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::Hash;

use wire::{FieldTable, FieldValue};

// ---------------------------------------------------------------------------------------
// Topic
// ---------------------------------------------------------------------------------------

/// The words of a routing key or binding key, split the way RabbitMQ splits both
/// (`rabbit_db_topic_exchange:split_topic_key_binary/1`): the empty key has *no* words,
/// any other key is split on every `.` and empty words are kept (`"a..b"` is
/// `["a", "", "b"]`, `"."` is `["", ""]`).
fn words(key: &str) -> impl Iterator<Item = &str> {
    (!key.is_empty()).then(|| key.split('.')).into_iter().flatten()
}

/// Whether a topic binding `pattern` matches `routing_key`, as RabbitMQ's topic exchange
/// decides it. Both are split into words on every `.`, keeping empty words (`"a..b"` has
/// three), except that the empty string has no words at all. `*` matches exactly one word
/// (an empty word counts), `#` matches zero or more words, any other word only itself.
///
/// Runs in O(pattern words × key words) time and O(pattern words) space, so patterns such
/// as `#.#.#.#.x` cannot make it exponential the way naive backtracking would be.
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    // A pattern without wildcards matches exactly one word list, and splitting is
    // injective (only "" has no words), so plain string equality decides it.
    if !words(pattern).any(is_wildcard) {
        return pattern == routing_key;
    }
    let pat: Vec<&str> = words(pattern).collect();
    let m = pat.len();
    // live[j]: the first j pattern words can match the key words consumed so far.
    let mut live = vec![false; m + 1];
    let mut next = vec![false; m + 1];
    live[0] = true;
    hash_closure(&pat, &mut live);
    for word in words(routing_key) {
        next.fill(false);
        let mut any = false;
        for (j, p) in pat.iter().enumerate() {
            if !live[j] {
                continue;
            }
            if *p == "#" {
                // `#` swallows this word and may swallow more.
                next[j] = true;
                any = true;
            } else if *p == "*" || *p == word {
                next[j + 1] = true;
                any = true;
            }
        }
        if !any {
            return false;
        }
        hash_closure(&pat, &mut next);
        std::mem::swap(&mut live, &mut next);
    }
    live[m]
}

fn is_wildcard(word: &str) -> bool {
    word == "*" || word == "#"
}

/// A `#` may also match zero words: whoever stands before it also stands after it.
/// One forward pass suffices because this only ever moves rightwards.
fn hash_closure(pat: &[&str], live: &mut [bool]) {
    for (j, p) in pat.iter().enumerate() {
        if live[j] && *p == "#" {
            live[j + 1] = true;
        }
    }
}

/// The limit RabbitMQ's newest topic exchange puts on `#` words per binding key
/// (`?MAX_HASH_WILDCARDS` in `rabbit_exchange_type_topic`, main branch; released 4.x
/// versions have no limit). [`TopicIndex`] does not need it: it stays linear anyway.
pub const MAX_HASH_WILDCARDS: usize = 2;

/// RabbitMQ main's `rabbit_exchange_type_topic:validate_binding/2`: refuses a binding key
/// with more than [`MAX_HASH_WILDCARDS`] `#` words. The error is the text RabbitMQ sends
/// (as PRECONDITION_FAILED, like every `binding_invalid`). Not called by this module:
/// whether Warren enforces the newer limit is the caller's choice.
pub fn validate_topic_binding_key(key: &str) -> Result<(), String> {
    let n = words(key).filter(|w| *w == "#").count();
    if n > MAX_HASH_WILDCARDS {
        return Err(format!(
            "Topic binding key '{key}' uses {n} '#' wildcards, at most {MAX_HASH_WILDCARDS} are allowed"
        ));
    }
    Ok(())
}

const ROOT: usize = 0;

/// A trie of topic binding patterns, each leading to values `T` (destinations).
///
/// It is a multiset, like the bindings it indexes: inserting the same `(pattern, value)`
/// twice needs two removals (two bindings with different arguments may share both).
/// [`TopicIndex::matches`] still reports each matching value once.
///
/// Routing simulates the trie as an NFA over the key's words, keeping the set of live
/// nodes (deduplicated), so a key costs O(words × live nodes): independent of the number
/// of bindings and never exponential in the number of `#` words.
#[derive(Clone)]
pub struct TopicIndex<T> {
    /// Node arena; `ROOT` is never freed. Freed slots are reused via `free`.
    nodes: Vec<Node<T>>,
    free: Vec<usize>,
    len: usize,
}

/// A node's position in the arena. `u32`: four billion nodes is beyond any bindings
/// limit, and a million-binding trie has two million nodes, so every byte counts.
type NodeId = u32;
/// "No such child" for `star` and `hash` (an `Option<u32>` would take twice the room).
const NO_NODE: NodeId = NodeId::MAX;

#[derive(Clone)]
struct Node<T> {
    /// Children by literal word.
    words: Children,
    star: NodeId,
    hash: NodeId,
    /// Reached through a `#` edge: it may swallow any number of further words.
    is_hash: bool,
    /// Values bound at exactly this pattern, each distinct, with its binding count.
    values: Multiset<T>,
}

impl<T> Node<T> {
    fn new(is_hash: bool) -> Self {
        Node { words: Children::default(), star: NO_NODE, hash: NO_NODE, is_hash, values: Multiset::default() }
    }

    fn is_unused(&self) -> bool {
        self.values.is_empty() && self.words.is_empty() && self.star == NO_NODE && self.hash == NO_NODE
    }
}

fn some_node(n: NodeId) -> Option<usize> {
    (n != NO_NODE).then_some(n as usize)
}

/// A node's children by literal word: a vector sorted by word, exactly as long as needed,
/// while there are few (most nodes of a large trie have one child: one small allocation
/// instead of a hash table's buckets), a hash map once there are many.
#[derive(Clone)]
enum Children {
    Few(Vec<(Box<str>, NodeId)>),
    /// Boxed: the map itself is six words, the vector three.
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<Box<str>, NodeId>>),
}

/// Children kept in a sorted vector up to this many; beyond, in a hash map (back to the
/// vector when removals leave half of it).
const CHILDREN_FEW_MAX: usize = 8;

impl Default for Children {
    fn default() -> Self {
        Children::Few(Vec::new())
    }
}

impl Children {
    fn is_empty(&self) -> bool {
        match self {
            Children::Few(v) => v.is_empty(),
            Children::Many(m) => m.is_empty(),
        }
    }

    fn get(&self, word: &str) -> Option<usize> {
        match self {
            Children::Few(v) => v.binary_search_by(|(w, _)| (**w).cmp(word)).ok().map(|i| v[i].1 as usize),
            Children::Many(m) => m.get(word).map(|&c| c as usize),
        }
    }

    fn insert(&mut self, word: &str, c: NodeId) {
        match self {
            Children::Few(v) => match v.binary_search_by(|(w, _)| (**w).cmp(word)) {
                Ok(i) => v[i].1 = c,
                Err(_) if v.len() >= CHILDREN_FEW_MAX => {
                    let mut m: HashMap<Box<str>, NodeId> = v.drain(..).collect();
                    m.insert(word.into(), c);
                    *self = Children::Many(Box::new(m));
                }
                Err(i) => {
                    // Grow by one, not to Vec's minimum of four.
                    v.reserve_exact(1);
                    v.insert(i, (word.into(), c));
                }
            },
            Children::Many(m) => {
                m.insert(word.into(), c);
            }
        }
    }

    fn remove(&mut self, word: &str) {
        match self {
            Children::Few(v) => {
                if let Ok(i) = v.binary_search_by(|(w, _)| (**w).cmp(word)) {
                    v.remove(i);
                    v.shrink_to_fit();
                }
            }
            Children::Many(m) => {
                m.remove(word);
                if m.len() <= CHILDREN_FEW_MAX / 2 {
                    let mut v: Vec<(Box<str>, NodeId)> = m.drain().collect();
                    v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                    v.shrink_to_fit();
                    *self = Children::Few(v);
                }
            }
        }
    }
}

impl<T> Default for TopicIndex<T> {
    fn default() -> Self {
        TopicIndex { nodes: vec![Node::new(false)], free: Vec::new(), len: 0 }
    }
}

impl<T> std::fmt::Debug for TopicIndex<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicIndex")
            .field("bindings", &self.len)
            .field("nodes", &(self.nodes.len() - self.free.len()))
            .finish()
    }
}

impl<T: Clone + Eq + Hash> TopicIndex<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (pattern, value) entries, counting repeats.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds one binding of `value` at `pattern`.
    pub fn insert(&mut self, pattern: &str, value: T) {
        let mut n = ROOT;
        for word in words(pattern) {
            n = match self.child(n, word) {
                Some(c) => c,
                None => {
                    let c = self.alloc(word == "#");
                    self.link(n, word, c);
                    c
                }
            };
        }
        self.nodes[n].values.add(value);
        self.len += 1;
    }

    /// Removes one binding of `value` at `pattern`; false if there was none. Nodes left
    /// with neither values nor children are freed, so churn does not grow the trie.
    pub fn remove(&mut self, pattern: &str, value: &T) -> bool {
        // (parent, word leading from it) for each step, to prune upwards afterwards.
        let mut path: Vec<(usize, &str)> = Vec::new();
        let mut n = ROOT;
        for word in words(pattern) {
            let Some(c) = self.child(n, word) else {
                return false;
            };
            path.push((n, word));
            n = c;
        }
        if !self.nodes[n].values.remove_one(value) {
            return false;
        }
        self.len -= 1;
        while let Some((parent, word)) = path.pop() {
            if !self.nodes[n].is_unused() {
                break;
            }
            self.unlink(parent, word);
            self.nodes[n] = Node::new(false);
            self.free.push(n);
            n = parent;
        }
        true
    }

    /// Appends to `out` every value bound at a pattern matching `routing_key`, each once.
    /// Deduplication is against what this call appends, not what `out` already held.
    pub fn matches(&self, routing_key: &str, out: &mut Vec<T>) {
        self.matches_counting(routing_key, out);
    }

    /// [`Self::matches`], returning how many NFA states were visited (for tests that
    /// check routing cost does not grow with the number of bindings).
    fn matches_counting(&self, routing_key: &str, out: &mut Vec<T>) -> usize {
        let mut live = NodeSet::default();
        let mut next = NodeSet::default();
        self.enter(ROOT, &mut live);
        let mut visited = 0;
        for word in words(routing_key) {
            next.clear();
            for &n in &live.list {
                let node = &self.nodes[n];
                if node.is_hash {
                    self.enter(n, &mut next);
                }
                if let Some(c) = node.words.get(word) {
                    self.enter(c, &mut next);
                }
                if let Some(c) = some_node(node.star) {
                    self.enter(c, &mut next);
                }
            }
            visited += live.list.len();
            std::mem::swap(&mut live, &mut next);
            if live.list.is_empty() {
                return visited;
            }
        }
        visited += live.list.len();
        let start = out.len();
        // What this call appended, once too many to scan (several matching patterns, each
        // bound to many destinations).
        let mut seen: HashSet<T> = HashSet::new();
        for &n in &live.list {
            let values = &self.nodes[n].values;
            if out.len() == start {
                // Values within one node are distinct: nothing to compare with yet.
                out.extend(values.iter().cloned());
                continue;
            }
            for v in values.iter() {
                let fresh = if seen.is_empty() && out.len() - start <= SCAN_MAX {
                    !out[start..].contains(v)
                } else {
                    if seen.is_empty() {
                        seen.extend(out[start..].iter().cloned());
                    }
                    seen.insert(v.clone())
                };
                if fresh {
                    out.push(v.clone());
                }
            }
        }
        visited
    }

    fn child(&self, n: usize, word: &str) -> Option<usize> {
        let node = &self.nodes[n];
        match word {
            "*" => some_node(node.star),
            "#" => some_node(node.hash),
            w => node.words.get(w),
        }
    }

    fn link(&mut self, n: usize, word: &str, c: usize) {
        let c = NodeId::try_from(c).expect("fewer than 4 billion trie nodes");
        let node = &mut self.nodes[n];
        match word {
            "*" => node.star = c,
            "#" => node.hash = c,
            w => node.words.insert(w, c),
        }
    }

    fn unlink(&mut self, n: usize, word: &str) {
        let node = &mut self.nodes[n];
        match word {
            "*" => node.star = NO_NODE,
            "#" => node.hash = NO_NODE,
            w => node.words.remove(w),
        }
    }

    fn alloc(&mut self, is_hash: bool) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.nodes[i].is_hash = is_hash;
                i
            }
            None => {
                self.nodes.push(Node::new(is_hash));
                self.nodes.len() - 1
            }
        }
    }

    /// Makes `n` live, and with it the chain of `#` children below it, since a `#` may
    /// match zero words.
    fn enter(&self, mut n: usize, set: &mut NodeSet) {
        while set.insert(n) {
            match some_node(self.nodes[n].hash) {
                Some(h) => n = h,
                None => break,
            }
        }
    }
}

/// Up to this many values are searched by scanning; beyond, through a hash index.
const SCAN_MAX: usize = 16;

/// Distinct values with a count each (bindings sharing a destination and a pattern or key,
/// with other arguments). One value is kept inline (the usual case: a unique pattern bound
/// to one queue costs no allocation); more are searched by scanning while few and through
/// a hash index once many: thousands of queues bound with one pattern made every bind and
/// unbind a scan.
#[derive(Clone)]
pub(crate) struct Multiset<T> {
    items: Items<T>,
}

#[derive(Clone)]
enum Items<T> {
    Empty,
    One((T, usize)),
    /// Boxed: one word in the many nodes that never need it.
    Many(Box<ManyItems<T>>),
}

#[derive(Clone)]
struct ManyItems<T> {
    items: Vec<(T, usize)>,
    /// Value → position in `items`, once `items` outgrew a scan.
    index: Option<HashMap<T, usize>>,
}

impl<T> Default for Multiset<T> {
    fn default() -> Self {
        Multiset { items: Items::Empty }
    }
}

impl<T> Multiset<T> {
    pub(crate) fn is_empty(&self) -> bool {
        matches!(self.items, Items::Empty)
    }

    fn slice(&self) -> &[(T, usize)] {
        match &self.items {
            Items::Empty => &[],
            Items::One(one) => std::slice::from_ref(one),
            Items::Many(m) => &m.items,
        }
    }
}

impl<T: Clone + Eq + Hash> ManyItems<T> {
    fn position(&self, v: &T) -> Option<usize> {
        match &self.index {
            None => self.items.iter().position(|(x, _)| x == v),
            Some(index) => index.get(v).copied(),
        }
    }
}

impl<T: Clone + Eq + Hash> Multiset<T> {
    /// Adds one occurrence of `v`.
    pub(crate) fn add(&mut self, v: T) {
        match &mut self.items {
            Items::Empty => self.items = Items::One((v, 1)),
            Items::One((x, n)) if *x == v => *n += 1,
            Items::One(_) => {
                let Items::One(one) = std::mem::replace(&mut self.items, Items::Empty) else { unreachable!() };
                self.items = Items::Many(Box::new(ManyItems { items: vec![one, (v, 1)], index: None }));
            }
            Items::Many(m) => {
                if let Some(i) = m.position(&v) {
                    m.items[i].1 += 1;
                    return;
                }
                if let Some(index) = &mut m.index {
                    index.insert(v.clone(), m.items.len());
                }
                m.items.push((v, 1));
                if m.index.is_none() && m.items.len() > SCAN_MAX {
                    m.index = Some(m.items.iter().enumerate().map(|(i, (x, _))| (x.clone(), i)).collect());
                }
            }
        }
    }

    /// Removes one occurrence of `v`; false if there was none. Order is not kept.
    pub(crate) fn remove_one(&mut self, v: &T) -> bool {
        match &mut self.items {
            Items::Empty => false,
            Items::One((x, n)) => {
                if x != v {
                    return false;
                }
                *n -= 1;
                if *n == 0 {
                    self.items = Items::Empty;
                }
                true
            }
            Items::Many(m) => {
                let Some(i) = m.position(v) else { return false };
                m.items[i].1 -= 1;
                if m.items[i].1 == 0 {
                    m.items.swap_remove(i);
                    if let Some(index) = &mut m.index {
                        index.remove(v);
                        if let Some((moved, _)) = m.items.get(i) {
                            index.insert(moved.clone(), i);
                        }
                    }
                    if m.items.len() <= 1 {
                        self.items = match m.items.pop() {
                            Some(one) => Items::One(one),
                            None => Items::Empty,
                        };
                    }
                }
                true
            }
        }
    }

    /// Each distinct value once.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.slice().iter().map(|(v, _)| v)
    }
}

/// The live node set of the NFA: a list, deduplicated by linear search while small (the
/// usual case) and by a hash set once it grows.
#[derive(Default)]
struct NodeSet {
    list: Vec<usize>,
    seen: HashSet<usize>,
}

impl NodeSet {
    const SMALL: usize = 16;

    fn insert(&mut self, n: usize) -> bool {
        if self.list.len() < Self::SMALL {
            if self.list.contains(&n) {
                return false;
            }
        } else {
            if self.seen.is_empty() {
                self.seen.extend(self.list.iter().copied());
            }
            if !self.seen.insert(n) {
                return false;
            }
        }
        self.list.push(n);
        true
    }

    fn clear(&mut self) {
        self.list.clear();
        self.seen.clear();
    }
}

// ---------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------

/// A headers binding's `x-match` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XMatch {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

impl XMatch {
    /// The mode of a binding, as `rabbit_exchange_type_headers:route/3` reads it: the first
    /// `x-match` entry, if it is a long string naming a mode; anything else (absent, another
    /// type, an unknown word) means `all`.
    pub fn of(binding_args: &FieldTable) -> XMatch {
        match binding_args.get("x-match") {
            Some(FieldValue::LongStr(s)) => match &s[..] {
                b"any" => XMatch::Any,
                b"all-with-x" => XMatch::AllWithX,
                b"any-with-x" => XMatch::AnyWithX,
                _ => XMatch::All,
            },
            _ => XMatch::All,
        }
    }

    fn is_any(self) -> bool {
        matches!(self, XMatch::Any | XMatch::AnyWithX)
    }

    fn with_x(self) -> bool {
        matches!(self, XMatch::AllWithX | XMatch::AnyWithX)
    }
}

/// Whether a message with `headers` matches a headers-exchange binding with
/// `binding_args`, following RabbitMQ 4.x's `rabbit_exchange_type_headers` together with
/// `mc_amqpl:routing_headers/2`:
///
/// - The message's headers become a map, the *last* entry winning for a repeated key.
///   A `timestamp` header is converted to milliseconds (`routing_value/2` multiplies it by
///   1000); binding values are not converted, so a timestamp argument only equals a
///   header worth 1000 times as much (or 0).
/// - `x-match` itself is never matched; other arguments whose key starts with `x-` are
///   skipped unless the mode is `all-with-x` / `any-with-x`.
/// - A `void` argument matches when the header is present, whatever its value.
/// - Any other argument matches when the header's value is the same Erlang term
///   (`=:=`): the field *type* is dropped, so integers of any width compare by value
///   (`I32(1)` equals `I64(1)`), and a long string equals a byte array with the same bytes;
///   but an integer never equals a float (`1 =/= 1.0`). Tables and arrays compare
///   structurally with their element types, and an empty table equals an empty array.
/// - `all` (and `all-with-x`) needs every considered argument to match, so with none it
///   matches every message; `any` needs one, so with none it matches nothing.
pub fn headers_match(binding_args: &FieldTable, headers: Option<&FieldTable>) -> bool {
    headers_match_indexed(binding_args, &HeaderIndex::new(headers))
}

/// [`headers_match`] against headers indexed once per message: O(binding arguments).
pub fn headers_match_indexed(binding_args: &FieldTable, headers: &HeaderIndex<'_>) -> bool {
    let mode = XMatch::of(binding_args);
    let any = mode.is_any();
    for (key, bound) in binding_args.iter() {
        if key == "x-match" || (!mode.with_x() && key.starts_with("x-")) {
            continue;
        }
        let hit = match (bound, headers.get(key)) {
            (_, None) => false,
            (FieldValue::Void, Some(_)) => true,
            (bound, Some(header)) => routing_term(bound, false) == routing_term(header, true),
        };
        if hit == any {
            return any;
        }
    }
    !any
}

/// A message's headers as the map RabbitMQ routes with (`mc_amqpl:routing_headers/2`: the
/// last entry wins for a repeated key), built once per message so that matching a binding
/// costs O(its arguments) rather than O(arguments × headers): a binding and a message with
/// 26k keys each would otherwise take seconds of CPU per publish.
pub enum HeaderIndex<'a> {
    /// A few headers: a backwards scan beats hashing.
    Small(&'a [(String, FieldValue)]),
    Map(HashMap<&'a str, &'a FieldValue>),
}

impl<'a> HeaderIndex<'a> {
    /// Up to this many headers are scanned instead of hashed.
    const SCAN_MAX: usize = 8;

    pub fn new(headers: Option<&'a FieldTable>) -> HeaderIndex<'a> {
        let entries = headers.map_or(&[][..], |h| &h.0[..]);
        if entries.len() <= Self::SCAN_MAX {
            return HeaderIndex::Small(entries);
        }
        // Inserting in order leaves the last repeat in the map.
        HeaderIndex::Map(entries.iter().map(|(k, v)| (k.as_str(), v)).collect())
    }

    pub fn get(&self, key: &str) -> Option<&'a FieldValue> {
        match self {
            HeaderIndex::Small(entries) => entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            HeaderIndex::Map(m) => m.get(key).copied(),
        }
    }
}

/// Checks a headers binding's `x-match` as `rabbit_exchange_type_headers:validate_binding/2`
/// does. The error is RabbitMQ's text, which it sends as `PRECONDITION_FAILED - <text>`
/// (verified against RabbitMQ 4.x: `Invalid x-match field value <<"bogus">>; expected all,
/// any, all-with-x, or any-with-x`). Values are printed as Erlang's `~tp` would.
pub fn validate_x_match(binding_args: &FieldTable) -> Result<(), String> {
    match binding_args.get("x-match") {
        None => Ok(()),
        Some(FieldValue::LongStr(s)) => match &s[..] {
            b"all" | b"any" | b"all-with-x" | b"any-with-x" => Ok(()),
            other => Err(format!(
                "Invalid x-match field value {}; expected all, any, all-with-x, or any-with-x",
                erl_binary(other)
            )),
        },
        Some(v) => {
            Err(format!("Invalid x-match field type {} (value {}); expected longstr", v.type_name(), erl_term(v)))
        }
    }
}

/// A field value as the Erlang term RabbitMQ holds for it, for `=:=` comparison.
#[derive(Debug)]
enum Term<'a> {
    Int(i128),
    /// Bits of the f64 (Erlang reads an `f` field into a double). OTP 27's `=:=` tells
    /// 0.0 from -0.0, as bit equality does; NaN cannot reach Erlang at all.
    Float(u64),
    Bin(&'a [u8]),
    Bool(bool),
    Decimal(u8, u32),
    Table(&'a FieldTable),
    Array(&'a [FieldValue]),
    Undefined,
}

impl PartialEq for Term<'_> {
    fn eq(&self, other: &Self) -> bool {
        use Term::*;
        match (self, other) {
            (Int(a), Int(b)) => a == b,
            (Float(a), Float(b)) => a == b,
            (Bin(a), Bin(b)) => a == b,
            (Bool(a), Bool(b)) => a == b,
            (Decimal(s, v), Decimal(t, w)) => s == t && v == w,
            (Undefined, Undefined) => true,
            // Tables are lists of {Key, Type, Value}, arrays lists of {Type, Value}.
            (Table(a), Table(b)) => {
                a.0.len() == b.0.len() && a.0.iter().zip(&b.0).all(|((ka, va), (kb, vb))| ka == kb && typed_eq(va, vb))
            }
            (Array(a), Array(b)) => a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| typed_eq(x, y)),
            // Both are Erlang lists, so the empty ones are the same term, [].
            (Table(t), Array(a)) | (Array(a), Table(t)) => t.0.is_empty() && a.is_empty(),
            _ => false,
        }
    }
}

/// Equality of values nested in a table or array, where the type atom is part of the term.
fn typed_eq(a: &FieldValue, b: &FieldValue) -> bool {
    a.type_name() == b.type_name() && term(a) == term(b)
}

/// The term routing compares: a top-level header timestamp is in milliseconds
/// (`mc_amqpl:routing_value(timestamp, V) -> V * 1000`).
fn routing_term(v: &FieldValue, is_header: bool) -> Term<'_> {
    match v {
        FieldValue::Timestamp(t) if is_header => Term::Int(i128::from(*t) * 1000),
        v => term(v),
    }
}

fn term(v: &FieldValue) -> Term<'_> {
    match v {
        FieldValue::Bool(b) => Term::Bool(*b),
        FieldValue::I8(i) => Term::Int((*i).into()),
        FieldValue::U8(i) => Term::Int((*i).into()),
        FieldValue::I16(i) => Term::Int((*i).into()),
        FieldValue::U16(i) => Term::Int((*i).into()),
        FieldValue::I32(i) => Term::Int((*i).into()),
        FieldValue::U32(i) => Term::Int((*i).into()),
        FieldValue::I64(i) => Term::Int((*i).into()),
        // rabbit_binary_parser reads `L` as a *signed* 64-bit long, like `l`.
        FieldValue::U64(u) => Term::Int(i128::from(*u as i64)),
        FieldValue::F32(f) => Term::Float(f64::from(*f).to_bits()),
        FieldValue::F64(f) => Term::Float(f.to_bits()),
        FieldValue::Decimal(s, v) => Term::Decimal(*s, *v),
        FieldValue::LongStr(b) | FieldValue::ByteArray(b) => Term::Bin(b),
        FieldValue::Array(a) => Term::Array(a),
        FieldValue::Timestamp(t) => Term::Int((*t).into()),
        FieldValue::Table(t) => Term::Table(t),
        FieldValue::Void => Term::Undefined,
    }
}

/// A value's Erlang term as `~tp` prints it, on one line (Erlang would wrap terms longer
/// than 80 columns; x-match values that long are not worth mimicking).
fn erl_term(v: &FieldValue) -> String {
    match term(v) {
        Term::Int(i) => i.to_string(),
        Term::Float(bits) => erl_float(f64::from_bits(bits)),
        Term::Bin(b) => erl_binary(b),
        Term::Bool(b) => b.to_string(),
        Term::Decimal(s, v) => format!("{{{s},{v}}}"),
        Term::Undefined => "undefined".to_owned(),
        Term::Table(t) => {
            let items: Vec<String> = t
                .iter()
                .map(|(k, v)| format!("{{{},{},{}}}", erl_binary(k.as_bytes()), v.type_name(), erl_term(v)))
                .collect();
            format!("[{}]", items.join(","))
        }
        Term::Array(a) => {
            let items: Vec<String> = a.iter().map(|v| format!("{{{},{}}}", v.type_name(), erl_term(v))).collect();
            format!("[{}]", items.join(","))
        }
    }
}

/// A binary as `~tp` prints it: `<<"text">>` when every byte is printable ASCII (or one of
/// the escapable controls), `<<"text"/utf8>>` for printable non-ASCII UTF-8, and the byte
/// list `<<0,1,2>>` otherwise (so the empty binary is `<<>>`).
fn erl_binary(b: &[u8]) -> String {
    let escape = |c: char| -> Option<&'static str> {
        Some(match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            '\u{b}' => "\\v",
            '\u{8}' => "\\b",
            '\u{c}' => "\\f",
            '\u{1b}' => "\\e",
            _ => return None,
        })
    };
    let printable = |c: char| escape(c).is_some() || (' '..='~').contains(&c) || (!c.is_ascii() && !c.is_control());
    match std::str::from_utf8(b) {
        Ok(s) if !s.is_empty() && s.chars().all(printable) => {
            let mut out = String::from("<<\"");
            for c in s.chars() {
                match escape(c) {
                    Some(e) => out.push_str(e),
                    None => out.push(c),
                }
            }
            out.push('"');
            if !s.is_ascii() {
                out.push_str("/utf8");
            }
            out.push_str(">>");
            out
        }
        _ => {
            let mut out = String::from("<<");
            for (i, byte) in b.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{byte}");
            }
            out.push_str(">>");
            out
        }
    }
}

/// A float as Erlang prints it (`io_lib_format:fwrite_g/1`): the shortest round-tripping
/// digits, in plain notation when that is no longer than scientific and |f| < 2^53,
/// otherwise scientific; always with a `.` (`1.0`, `0.001`, `1.0e-4`, `1.0e4`).
fn erl_float(f: f64) -> String {
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    if !f.is_finite() {
        // Unreachable from the wire as Erlang reads it; keep something readable.
        return f.to_string();
    }
    // Rust's `{:e}` gives the shortest round-tripping digits too: "d.ddde±x".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i64 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let len = digits.len() as i64;
    let place = exp - (len - 1);
    let exp_text = exp.to_string();
    let exp_cost = exp_text.len() as i64 + 2;
    let scientific = || match digits.split_at(1) {
        (first, "") => format!("{first}.0e{exp_text}"),
        (first, rest) => format!("{first}.{rest}e{exp_text}"),
    };
    let body = if place < 0 {
        if exp >= 0 {
            let (int, frac) = digits.split_at((len + place) as usize);
            format!("{int}.{frac}")
        } else if 2 - place - len <= exp_cost {
            format!("0.{}{digits}", "0".repeat((-place - len) as usize))
        } else {
            scientific()
        }
    } else {
        let dot = i64::from(len == 1);
        if exp_cost + dot >= place + 2 && f.abs() < 9_007_199_254_740_992.0 {
            format!("{digits}{}.0", "0".repeat(place as usize))
        } else {
            scientific()
        }
    };
    if f < 0.0 { format!("-{body}") } else { body }
}

#[cfg(test)]
mod tests;
