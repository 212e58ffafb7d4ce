use super::*;
use bytes::Bytes;
use proptest::prelude::*;

fn s(v: &str) -> FieldValue {
    FieldValue::LongStr(Bytes::copy_from_slice(v.as_bytes()))
}

fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
    FieldTable(entries.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
}

/// Sorted values a TopicIndex routes `key` to.
fn route<T: Clone + Eq + Ord + std::hash::Hash>(index: &TopicIndex<T>, key: &str) -> Vec<T> {
    let mut out = Vec::new();
    index.matches(key, &mut out);
    let n = out.len();
    out.sort();
    out.dedup();
    assert_eq!(n, out.len(), "matches() returned a duplicate for {key:?}");
    out
}

/// The independent reference matcher of RabbitMQ's `rabbit_db_topic_exchange_SUITE`
/// (`ref_match/2`, `ref_match_hash/2`), transcribed: plain backtracking, fine for tiny inputs.
fn ref_match(p: &[&str], k: &[&str]) -> bool {
    match (p, k) {
        ([], []) => true,
        (["#"], _) => true,
        (["#", rest @ ..], _) => (0..=k.len()).any(|i| ref_match(rest, &k[i..])),
        (["*", pr @ ..], [_, kr @ ..]) => ref_match(pr, kr),
        ([pw, pr @ ..], [kw, kr @ ..]) if pw == kw => ref_match(pr, kr),
        _ => false,
    }
}

fn ref_topic(pattern: &str, key: &str) -> bool {
    let p: Vec<&str> = words(pattern).collect();
    let k: Vec<&str> = words(key).collect();
    ref_match(&p, &k)
}

// ---- splitting and edge cases --------------------------------------------------------

// rabbit_db_topic_exchange:split_topic_key_binary(<<>>) -> [], otherwise
// binary:split(Key, <<".">>, [global]), which keeps empty words.
#[test]
fn words_split_like_rabbitmq() {
    fn w(k: &str) -> Vec<&str> {
        words(k).collect()
    }
    assert_eq!(w(""), Vec::<&str>::new());
    assert_eq!(w("a"), ["a"]);
    assert_eq!(w("."), ["", ""]);
    assert_eq!(w("a..b"), ["a", "", "b"]);
    assert_eq!(w(".a"), ["", "a"]);
    assert_eq!(w("a."), ["a", ""]);
}

// The empty key has zero words, so only "", "#" and "#"-only patterns match it
// (routing_SUITE: "" routes to t5 "#", t6 "#.#", t17 "", t24 "#.#.#", not t25 "*").
#[test]
fn empty_routing_key_has_no_words() {
    for p in ["", "#", "#.#", "#.#.#"] {
        assert!(topic_matches(p, ""), "{p:?}");
    }
    for p in ["*", "#.*", "*.#", "#.*.#", ".", "a", "#.a"] {
        assert!(!topic_matches(p, ""), "{p:?}");
    }
    // The empty pattern matches only the empty key.
    assert!(!topic_matches("", "a"));
    assert!(!topic_matches("", "."));
}

// Empty words are ordinary words: `*` matches one, `#` swallows them
// (rabbit_db_topic_exchange_SUITE:topic_match_empty_segments; issue #1383: "a.#.b"
// routes "a..b", "a.b", "a.x.b" but not "ab").
#[test]
fn empty_words_are_words() {
    assert!(topic_matches(".#", ".0.a.b.c"));
    assert!(topic_matches(".*.a.b.c", ".0.a.b.c"));
    assert!(!topic_matches(".*", ".0.a.b.c"));
    assert!(topic_matches("*.*", "."));
    assert!(!topic_matches("*", "."));
    assert!(topic_matches("a.*", "a."));
    assert!(topic_matches("*.a", ".a"));
    assert!(topic_matches("a.*.b", "a..b"));
    assert!(topic_matches(".", "."));
    assert!(!topic_matches(".", ""));
    for k in ["a..b", "a.b", "a.x.b", "a.x.y.b"] {
        assert!(topic_matches("a.#.b", k), "{k:?}");
    }
    assert!(!topic_matches("a.#.b", "ab"));
}

// `#` matches zero words at either end (issue #14810: "audit.events.#" routes
// "audit.events"; routing_SUITE: "a.#" (t11) routes "a.b.c", "#.b" (t7) routes "a.b").
#[test]
fn hash_matches_zero_words() {
    assert!(topic_matches("a.#", "a"));
    assert!(topic_matches("#.a", "a"));
    assert!(topic_matches("#.a.#", "a"));
    assert!(topic_matches("audit.events.#", "audit.events"));
    assert!(!topic_matches("a.#", "b"));
    assert!(!topic_matches("a.#", ""));
    assert!(topic_matches("#", "a.b.c"));
    assert!(topic_matches("#.#", "a"));
    assert!(!topic_matches("#.*", ""));
    assert!(topic_matches("#.*", "a"));
}

// The routing key is never a pattern: in RabbitMQ's trie walk a key word "*" or "#"
// follows the literal edge of the same name, which is also the wildcard edge, so it
// behaves as any other word would.
#[test]
fn wildcards_in_routing_key_are_literal_words() {
    assert!(topic_matches("*", "*"));
    assert!(topic_matches("*", "#"));
    assert!(topic_matches("#", "#"));
    assert!(!topic_matches("a", "*"));
    assert!(!topic_matches("a", "#"));
    assert!(!topic_matches("a.b", "#"));
    assert!(!topic_matches("a.b", "a.*"));
}

// ---- RabbitMQ's suites ----------------------------------------------------------------

/// deps/rabbit/test/routing_SUITE.erl, topic1/1: bindings t1..t27 (t1 and t20 share
/// "a.b.c"; t27 is bound twice with different arguments).
const ROUTING_SUITE_BINDINGS: &[(&str, &str)] = &[
    ("a.b.c", "t1"),
    ("a.*.c", "t2"),
    ("a.#.b", "t3"),
    ("a.b.b.c", "t4"),
    ("#", "t5"),
    ("#.#", "t6"),
    ("#.b", "t7"),
    ("*.*", "t8"),
    ("a.*", "t9"),
    ("*.b.c", "t10"),
    ("a.#", "t11"),
    ("a.#.#", "t12"),
    ("b.b.c", "t13"),
    ("a.b.b", "t14"),
    ("a.b", "t15"),
    ("b.c", "t16"),
    ("", "t17"),
    ("*.*.*", "t18"),
    ("vodka.martini", "t19"),
    ("a.b.c", "t20"),
    ("*.#", "t21"),
    ("#.*.#", "t22"),
    ("*.#.#", "t23"),
    ("#.#.#", "t24"),
    ("*", "t25"),
    ("#.b.#", "t26"),
    ("args-test", "t27"),
    ("args-test", "t27"),
];

#[rustfmt::skip]
const ROUTING_SUITE_EXPECT: &[(&str, &[&str])] = &[
    ("a.b.c", &["t1", "t2", "t5", "t6", "t10", "t11", "t12", "t18", "t20", "t21", "t22", "t23", "t24", "t26"]),
    ("a.b", &["t3", "t5", "t6", "t7", "t8", "t9", "t11", "t12", "t15", "t21", "t22", "t23", "t24", "t26"]),
    ("a.b.b", &["t3", "t5", "t6", "t7", "t11", "t12", "t14", "t18", "t21", "t22", "t23", "t24", "t26"]),
    ("", &["t5", "t6", "t17", "t24"]),
    ("b.c.c", &["t5", "t6", "t18", "t21", "t22", "t23", "t24", "t26"]),
    ("a.a.a.a.a", &["t5", "t6", "t11", "t12", "t21", "t22", "t23", "t24"]),
    ("vodka.gin", &["t5", "t6", "t8", "t21", "t22", "t23", "t24"]),
    ("vodka.martini", &["t5", "t6", "t8", "t19", "t21", "t22", "t23", "t24"]),
    ("b.b.c", &["t5", "t6", "t10", "t13", "t18", "t21", "t22", "t23", "t24", "t26"]),
    ("nothing.here.at.all", &["t5", "t6", "t21", "t22", "t23", "t24"]),
    ("oneword", &["t5", "t6", "t21", "t22", "t23", "t24", "t25"]),
    ("args-test", &["t5", "t6", "t21", "t22", "t23", "t24", "t25", "t27"]),
];

/// After removing bindings 1, 5, 11, 19, 21 and 28 (1-based), as topic1/1 does.
#[rustfmt::skip]
const ROUTING_SUITE_EXPECT_AFTER_REMOVAL: &[(&str, &[&str])] = &[
    ("a.b.c", &["t2", "t6", "t10", "t12", "t18", "t20", "t22", "t23", "t24", "t26"]),
    ("a.b", &["t3", "t6", "t7", "t8", "t9", "t12", "t15", "t22", "t23", "t24", "t26"]),
    ("a.b.b", &["t3", "t6", "t7", "t12", "t14", "t18", "t22", "t23", "t24", "t26"]),
    ("", &["t6", "t17", "t24"]),
    ("b.c.c", &["t6", "t18", "t22", "t23", "t24", "t26"]),
    ("a.a.a.a.a", &["t6", "t12", "t22", "t23", "t24"]),
    ("vodka.gin", &["t6", "t8", "t22", "t23", "t24"]),
    ("vodka.martini", &["t6", "t8", "t22", "t23", "t24"]),
    ("b.b.c", &["t6", "t10", "t13", "t18", "t22", "t23", "t24", "t26"]),
    ("nothing.here.at.all", &["t6", "t22", "t23", "t24"]),
    ("oneword", &["t6", "t22", "t23", "t24", "t25"]),
    ("args-test", &["t6", "t22", "t23", "t24", "t25", "t27"]),
];

fn sorted(v: &[&'static str]) -> Vec<&'static str> {
    let mut v = v.to_vec();
    v.sort();
    v.dedup();
    v
}

fn linear(bindings: &[(&str, &'static str)], key: &str) -> Vec<&'static str> {
    let hits: Vec<&'static str> = bindings.iter().filter(|(p, _)| topic_matches(p, key)).map(|(_, q)| *q).collect();
    sorted(&hits)
}

#[test]
fn routing_suite_topic1() {
    let mut index = TopicIndex::new();
    for (p, q) in ROUTING_SUITE_BINDINGS {
        index.insert(p, *q);
    }
    assert_eq!(index.len(), ROUTING_SUITE_BINDINGS.len());
    for (key, expected) in ROUTING_SUITE_EXPECT {
        assert_eq!(route(&index, key), sorted(expected), "index, key {key:?}");
        assert_eq!(linear(ROUTING_SUITE_BINDINGS, key), sorted(expected), "topic_matches, key {key:?}");
    }

    let mut kept = ROUTING_SUITE_BINDINGS.to_vec();
    for n in [28, 21, 19, 11, 5, 1] {
        let (p, q) = kept.remove(n - 1);
        assert!(index.remove(p, &q), "remove {p:?} -> {q}");
    }
    assert_eq!(index.len(), kept.len());
    for (key, expected) in ROUTING_SUITE_EXPECT_AFTER_REMOVAL {
        assert_eq!(route(&index, key), sorted(expected), "index, key {key:?}");
        assert_eq!(linear(&kept, key), sorted(expected), "topic_matches, key {key:?}");
    }
}

/// rabbit_db_topic_exchange_SUITE: topic_match_wildcards, _hash_middle,
/// _overlapping_filters, _deep_hierarchy, _all_wildcards, _alternating_wildcards, _unicode.
#[test]
fn db_topic_exchange_suite_cases() {
    type Case = (&'static [(&'static str, &'static str)], &'static [(&'static str, &'static [&'static str])]);
    let cases: &[Case] = &[
        (
            &[("foo.*", "star"), ("foo.#", "hash"), ("foo.bar", "exact"), ("foo.*.baz", "deep"), ("#", "all")],
            &[
                ("foo.bar", &["all", "exact", "hash", "star"]),
                ("foo.bar.baz", &["all", "deep", "hash"]),
                ("foo.bar.baz.qux", &["all", "hash"]),
                ("foo.qux", &["all", "hash", "star"]),
                ("bar.foo", &["all"]),
            ],
        ),
        (
            &[("#.c", "q1"), ("#.b.c", "q2"), ("a.#.d", "q3"), ("#.*.#", "q4")],
            &[
                ("a.b.c", &["q1", "q2", "q4"]),
                ("c", &["q1", "q4"]),
                ("x.y.b.c", &["q1", "q2", "q4"]),
                ("a.d", &["q3", "q4"]),
                ("a.b.c.d", &["q3", "q4"]),
                ("x", &["q4"]),
                ("x.c", &["q1", "q4"]),
            ],
        ),
        (
            &[
                ("a.b", "q1"),
                ("a.b.#", "q2"),
                ("a.b.c", "q3"),
                ("a.b.*", "q4"),
                ("a.b.d", "q5"),
                ("a.*.*", "q6"),
                ("a.*.#", "q7"),
                ("*.b.c", "q8"),
            ],
            &[("a.b.c", &["q2", "q3", "q4", "q6", "q7", "q8"]), ("a.b", &["q1", "q2", "q7"])],
        ),
        (
            &[
                ("#", "all"),
                ("a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z.#", "prefix"),
                ("a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z.*", "prefix-star"),
                ("*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.#", "wild"),
                ("a.*.c.*.e.*.g.*.i.*.k.*.m.*.o.*.q.*.s.*.u.*.w.*.y.*.#", "alt"),
            ],
            &[
                ("a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z", &["all", "alt", "prefix", "wild"]),
                (
                    "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z.1",
                    &["all", "alt", "prefix", "prefix-star", "wild"],
                ),
            ],
        ),
        (
            &[
                ("传感器.温度.摄氏", "cjk"),
                ("传感器.*.摄氏", "wild"),
                ("датчик.#", "hash"),
                ("sensor.données.état", "mixed"),
                ("#", "all"),
            ],
            &[
                ("传感器.温度.摄氏", &["all", "cjk", "wild"]),
                ("传感器.压力.摄氏", &["all", "wild"]),
                ("датчик.давление", &["all", "hash"]),
                ("sensor.données.état", &["all", "mixed"]),
            ],
        ),
    ];
    for (bindings, expectations) in cases {
        let mut index = TopicIndex::new();
        for (p, q) in *bindings {
            index.insert(p, *q);
        }
        for (key, expected) in *expectations {
            assert_eq!(route(&index, key), sorted(expected), "index, key {key:?}");
            assert_eq!(linear(bindings, key), sorted(expected), "topic_matches, key {key:?}");
        }
    }
}

// ---- cost -----------------------------------------------------------------------------

fn long_key(n: usize, last: &str) -> String {
    let mut words = vec!["w"; n - 1];
    words.push(last);
    words.join(".")
}

// Naive backtracking is exponential in the number of `#` here; the DP is not.
#[test]
fn hostile_pattern_is_linear() {
    let pattern = format!("{}x", "#.".repeat(40));
    assert!(!topic_matches(&pattern, &long_key(1000, "y")));
    assert!(topic_matches(&pattern, &long_key(1000, "x")));
    let pattern = format!("{}x.*", "#.w.".repeat(20));
    assert!(!topic_matches(&pattern, &long_key(1000, "w")));

    let mut index = TopicIndex::new();
    index.insert(&format!("{}x", "#.".repeat(40)), 1);
    let mut out = Vec::new();
    let visited = index.matches_counting(&long_key(1000, "y"), &mut out);
    assert!(out.is_empty());
    // At most the 41 nodes of the one pattern are live per word.
    assert!(visited <= 41 * 1001, "visited {visited}");
    index.matches(&long_key(1000, "x"), &mut out);
    assert_eq!(out, [1]);
}

// With 10,000 bindings, routing one key touches only the branches that match it.
#[test]
fn routing_cost_does_not_grow_with_bindings() {
    let mut index = TopicIndex::new();
    for i in 0..10_000u32 {
        let pattern = match i % 4 {
            0 => format!("orders.{i}.created"),
            1 => format!("orders.*.{i}"),
            2 => format!("events.{i}.#"),
            _ => format!("#.audit{i}"),
        };
        index.insert(&pattern, i);
    }
    assert_eq!(index.len(), 10_000);
    let mut out = Vec::new();
    let visited = index.matches_counting("orders.8.created", &mut out);
    out.sort();
    assert_eq!(out, [8]);
    assert!(visited < 20, "visited {visited}");

    out.clear();
    let visited = index.matches_counting("events.10.a.b.c.audit3", &mut out);
    out.sort();
    assert_eq!(out, [3, 10]);
    assert!(visited < 40, "visited {visited}");

    for i in 0..10_000u32 {
        let key = format!("orders.{i}.created");
        out.clear();
        index.matches(&key, &mut out);
        assert_eq!(out.contains(&i), i % 4 == 0);
    }
}

// ---- index behaviour ------------------------------------------------------------------

// The exchange keeps one index entry per binding; two bindings may share pattern and
// destination (differing in arguments), so removal takes one entry at a time.
#[test]
fn index_is_a_multiset() {
    let mut index = TopicIndex::new();
    index.insert("a.*", "q");
    index.insert("a.*", "q");
    assert_eq!(index.len(), 2);
    assert_eq!(route(&index, "a.b"), ["q"]);
    assert!(index.remove("a.*", &"q"));
    assert_eq!(route(&index, "a.b"), ["q"]);
    assert!(index.remove("a.*", &"q"));
    assert!(route(&index, "a.b").is_empty());
    assert!(!index.remove("a.*", &"q"));
    assert!(index.is_empty());
}

#[test]
fn index_dedups_across_patterns() {
    let mut index = TopicIndex::new();
    for p in ["#", "a.*", "a.b", "*.b", "#.b", "a.#"] {
        index.insert(p, "q");
    }
    index.insert("a.b", "r");
    let mut out = vec!["pre-existing"];
    index.matches("a.b", &mut out);
    out[1..].sort();
    assert_eq!(out, ["pre-existing", "q", "r"]);
}

#[test]
fn index_remove_unknown_is_false() {
    let mut index = TopicIndex::new();
    index.insert("a.b", 1);
    assert!(!index.remove("a.c", &1));
    assert!(!index.remove("a", &1));
    assert!(!index.remove("a.b.c", &1));
    assert!(!index.remove("a.b", &2));
    assert_eq!(index.len(), 1);
}

#[test]
fn index_prunes_nodes_and_reuses_them() {
    let mut index = TopicIndex::new();
    let patterns = ["a.b.c", "a.*.#", "#", "#.#.x", "", ".", "a..b"];
    for (i, p) in patterns.iter().enumerate() {
        index.insert(p, i);
    }
    let grown = index.nodes.len();
    for (i, p) in patterns.iter().enumerate() {
        assert!(index.remove(p, &i));
    }
    assert!(index.is_empty());
    assert_eq!(index.nodes.len() - index.free.len(), 1, "only the root is left");
    assert!(index.nodes[ROOT].is_unused());
    for (i, p) in patterns.iter().enumerate() {
        index.insert(p, i);
    }
    assert_eq!(index.nodes.len(), grown, "freed nodes are reused");
    assert_eq!(route(&index, "a.b.c"), [0, 1, 2]);
    assert_eq!(route(&index, ""), [2, 4]);
    assert_eq!(route(&index, "x"), [2, 3]);
}

// ---- topic property tests ---------------------------------------------------------------

fn key_strategy(alphabet: &'static [&'static str], max_words: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(alphabet), 0..=max_words).prop_map(|w| w.join("."))
}

const PATTERN_WORDS: &[&str] = &["a", "b", "", "*", "#"];
const KEY_WORDS: &[&str] = &["a", "b", "", "*", "#"];

#[derive(Debug, Clone)]
enum Op {
    Insert(String, u8),
    Remove(String, u8),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (key_strategy(PATTERN_WORDS, 4), 0u8..6).prop_map(|(p, v)| Op::Insert(p, v)),
        1 => (key_strategy(PATTERN_WORDS, 4), 0u8..6).prop_map(|(p, v)| Op::Remove(p, v)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    // The DP agrees with RabbitMQ's reference backtracking matcher.
    #[test]
    fn topic_matches_agrees_with_reference(
        pattern in key_strategy(PATTERN_WORDS, 6),
        key in key_strategy(KEY_WORDS, 7),
    ) {
        prop_assert_eq!(topic_matches(&pattern, &key), ref_topic(&pattern, &key));
    }

    // The trie agrees with a linear scan over the live bindings, through inserts and removes.
    #[test]
    fn index_agrees_with_linear_scan(
        ops in prop::collection::vec(op_strategy(), 0..40),
        keys in prop::collection::vec(key_strategy(KEY_WORDS, 5), 1..12),
    ) {
        let mut index = TopicIndex::new();
        let mut live: Vec<(String, u8)> = Vec::new();
        for op in ops {
            match op {
                Op::Insert(p, v) => {
                    index.insert(&p, v);
                    live.push((p, v));
                }
                Op::Remove(p, v) => {
                    let pos = live.iter().position(|(lp, lv)| *lp == p && *lv == v);
                    prop_assert_eq!(index.remove(&p, &v), pos.is_some());
                    if let Some(i) = pos {
                        live.remove(i);
                    }
                }
            }
            prop_assert_eq!(index.len(), live.len());
        }
        for key in keys {
            let mut expected: Vec<u8> =
                live.iter().filter(|(p, _)| topic_matches(p, &key)).map(|(_, v)| *v).collect();
            expected.sort();
            expected.dedup();
            prop_assert_eq!(route(&index, &key), expected, "key {:?}", key);
        }
    }
}

#[test]
fn topic_binding_key_hash_limit() {
    assert_eq!(validate_topic_binding_key("#.a.#"), Ok(()));
    assert_eq!(validate_topic_binding_key(""), Ok(()));
    assert_eq!(
        validate_topic_binding_key("a.#.#.#"),
        Err("Topic binding key 'a.#.#.#' uses 3 '#' wildcards, at most 2 are allowed".to_owned())
    );
}

// ---- headers --------------------------------------------------------------------------

fn xm(mode: &str, args: &[(&str, FieldValue)]) -> FieldTable {
    let mut t = table(&[("x-match", s(mode))]);
    t.0.extend(args.iter().map(|(k, v)| (k.to_string(), v.clone())));
    t
}

// match_all([], ...) -> true; match_any([], ...) -> false.
#[test]
fn headers_without_arguments() {
    let none = FieldTable::new();
    let some = table(&[("a", s("1"))]);
    assert!(headers_match(&FieldTable::new(), None));
    assert!(headers_match(&FieldTable::new(), Some(&some)));
    assert!(headers_match(&xm("all", &[]), Some(&none)));
    assert!(headers_match(&xm("all", &[("x-ignored", s("v"))]), None));
    assert!(!headers_match(&xm("any", &[]), Some(&some)));
    assert!(!headers_match(&xm("any", &[("x-ignored", s("v"))]), Some(&some)));
    assert!(headers_match(&xm("all-with-x", &[]), None));
    assert!(!headers_match(&xm("any-with-x", &[]), None));
}

#[test]
fn headers_all_and_any() {
    let args = [("a", s("1")), ("b", s("2"))];
    let both = table(&[("b", s("2")), ("a", s("1")), ("c", s("3"))]);
    let one = table(&[("a", s("1")), ("b", s("x"))]);
    let neither = table(&[("c", s("1"))]);
    // No x-match means all.
    assert!(headers_match(&table(&args), Some(&both)));
    assert!(!headers_match(&table(&args), Some(&one)));
    assert!(headers_match(&xm("all", &args), Some(&both)));
    assert!(!headers_match(&xm("all", &args), Some(&one)));
    assert!(!headers_match(&xm("all", &args), None));
    assert!(headers_match(&xm("any", &args), Some(&both)));
    assert!(headers_match(&xm("any", &args), Some(&one)));
    assert!(!headers_match(&xm("any", &args), Some(&neither)));
    assert!(!headers_match(&xm("any", &args), None));
}

// match/2 skips binding keys starting with "x-"; match_x/2 (the -with-x modes) skips only
// x-match. Header x- keys are always in the map (routing_headers(Msg, [x_headers])).
#[test]
fn headers_x_arguments() {
    let args = [("x-k", s("v")), ("a", s("1"))];
    let with_x = table(&[("x-k", s("v")), ("a", s("1"))]);
    let without_x = table(&[("a", s("1"))]);
    assert!(headers_match(&xm("all", &args), Some(&without_x)));
    assert!(headers_match(&xm("all-with-x", &args), Some(&with_x)));
    assert!(!headers_match(&xm("all-with-x", &args), Some(&without_x)));
    assert!(headers_match(&xm("any-with-x", &[("x-k", s("v"))]), Some(&with_x)));
    assert!(!headers_match(&xm("any", &[("x-k", s("v"))]), Some(&with_x)));
    // x-match itself is never compared, even in -with-x modes.
    let header_x_match = table(&[("x-match", s("other"))]);
    assert!(headers_match(&xm("all-with-x", &[]), Some(&header_x_match)));
    // The prefix is case-sensitive bytes.
    assert!(!headers_match(&xm("all", &[("X-k", s("v"))]), Some(&without_x)));
}

// match({K, void, _}, M) -> maps:is_key(K, M).
#[test]
fn headers_void_means_present() {
    let args = table(&[("k", FieldValue::Void)]);
    assert!(headers_match(&args, Some(&table(&[("k", s("anything"))]))));
    assert!(headers_match(&args, Some(&table(&[("k", FieldValue::Void)]))));
    assert!(headers_match(&args, Some(&table(&[("k", FieldValue::Table(FieldTable::new()))]))));
    assert!(!headers_match(&args, Some(&table(&[("other", s("v"))]))));
    assert!(!headers_match(&args, None));
    // A void header only satisfies a void argument.
    assert!(!headers_match(&table(&[("k", s(""))]), Some(&table(&[("k", FieldValue::Void)]))));
}

fn eq_routing(bound: FieldValue, header: FieldValue) -> bool {
    headers_match(&table(&[("k", bound)]), Some(&table(&[("k", header)])))
}

// maps:get(K, M, undefined) =:= V on the untyped values: integers of every width are the
// same Erlang integer, strings and byte arrays the same binary; 1 =/= 1.0.
#[test]
fn headers_value_equality_drops_types() {
    use FieldValue::*;
    assert!(eq_routing(I32(1), I64(1)));
    assert!(eq_routing(U8(1), I16(1)));
    assert!(eq_routing(I8(-1), I32(-1)));
    assert!(eq_routing(U32(4_000_000_000), I64(4_000_000_000)));
    assert!(!eq_routing(I32(1), I32(2)));
    assert!(!eq_routing(I32(1), F64(1.0)));
    assert!(!eq_routing(F32(1.0), I8(1)));
    assert!(!eq_routing(Bool(true), I8(1)));
    assert!(!eq_routing(s("1"), I32(1)));
    assert!(eq_routing(s("abc"), ByteArray(Bytes::from_static(b"abc"))));
    assert!(!eq_routing(s("abc"), s("abd")));
    assert!(eq_routing(Bool(false), Bool(false)));
    assert!(!eq_routing(Bool(false), Bool(true)));
    assert!(eq_routing(Decimal(2, 314), Decimal(2, 314)));
    assert!(!eq_routing(Decimal(2, 314), Decimal(3, 314)));
    assert!(!eq_routing(Decimal(0, 1), I32(1)));
}

// rabbit_binary_parser reads `L` as a signed 64-bit long.
#[test]
fn headers_u64_is_read_signed() {
    use FieldValue::*;
    assert!(eq_routing(U64(u64::MAX), I64(-1)));
    assert!(eq_routing(I32(7), U64(7)));
    assert!(!eq_routing(U64(u64::MAX), U32(u32::MAX)));
}

// Erlang reads `f` into a double: F32(0.5) is 0.5, F32(0.1) is not 0.1. OTP 27's =:= tells
// 0.0 from -0.0.
#[test]
fn headers_float_equality() {
    use FieldValue::*;
    assert!(eq_routing(F32(0.5), F64(0.5)));
    assert!(!eq_routing(F32(0.1), F64(0.1)));
    assert!(eq_routing(F32(0.1), F64(f64::from(0.1f32))));
    assert!(eq_routing(F64(2.5), F64(2.5)));
    assert!(!eq_routing(F64(0.0), F64(-0.0)));
}

// mc_amqpl:routing_value(timestamp, V) -> V * 1000, for headers only.
#[test]
fn headers_timestamp_is_milliseconds() {
    use FieldValue::*;
    assert!(eq_routing(I64(5000), Timestamp(5)));
    assert!(!eq_routing(Timestamp(5), Timestamp(5)));
    assert!(eq_routing(Timestamp(0), Timestamp(0)));
    assert!(eq_routing(Timestamp(5), I64(5)));
    assert!(eq_routing(Timestamp(5000), Timestamp(5)));
    // No overflow: Erlang integers are unbounded.
    assert!(!eq_routing(I64(-1), Timestamp(u64::MAX)));
}

// Nested values keep their type atoms; tables and arrays are Erlang lists, so [] =:= [].
#[test]
fn headers_tables_and_arrays() {
    use FieldValue::*;
    let t = |v: FieldValue| Table(table(&[("n", v)]));
    assert!(eq_routing(t(I32(1)), t(I32(1))));
    assert!(!eq_routing(t(I32(1)), t(I64(1))));
    assert!(eq_routing(t(I64(-1)), t(U64(u64::MAX))));
    assert!(!eq_routing(t(s("a")), t(ByteArray(Bytes::from_static(b"a")))));
    assert!(!eq_routing(t(I32(1)), Table(table(&[("m", I32(1))]))));
    // A nested timestamp is not converted.
    assert!(eq_routing(t(Timestamp(5)), t(Timestamp(5))));
    assert!(eq_routing(Array(vec![I8(1), s("x")]), Array(vec![I8(1), s("x")])));
    assert!(!eq_routing(Array(vec![I8(1)]), Array(vec![U8(1)])));
    assert!(!eq_routing(Array(vec![I8(1)]), Array(vec![I8(1), I8(1)])));
    assert!(eq_routing(Array(vec![]), Table(FieldTable::new())));
    assert!(eq_routing(Table(FieldTable::new()), Array(vec![])));
    assert!(!eq_routing(Array(vec![I8(1)]), Table(table(&[("a", I8(1))]))));
}

// routing_headers folds Acc#{Key => Value} over the headers: the last repeat wins.
// rabbit_misc:table_lookup finds the first x-match.
#[test]
fn headers_repeated_keys() {
    let args = table(&[("k", s("2"))]);
    assert!(headers_match(&args, Some(&table(&[("k", s("1")), ("k", s("2"))]))));
    assert!(!headers_match(&args, Some(&table(&[("k", s("2")), ("k", s("1"))]))));
    let first_any = table(&[("x-match", s("any")), ("x-match", s("all")), ("a", s("1")), ("b", s("2"))]);
    assert_eq!(XMatch::of(&first_any), XMatch::Any);
    assert!(headers_match(&first_any, Some(&table(&[("a", s("1"))]))));
    // Repeated binding arguments must all hold under all.
    let both = table(&[("k", s("1")), ("k", s("2"))]);
    assert!(!headers_match(&both, Some(&table(&[("k", s("1"))]))));
    assert!(headers_match(&xm("any", &[("k", s("1")), ("k", s("2"))]), Some(&table(&[("k", s("2"))]))));
}

// route/3 treats anything but the three other longstr modes as all (validation refuses
// them at bind time, but a binding that got through still routes as all).
#[test]
fn x_match_mode_parsing() {
    assert_eq!(XMatch::of(&FieldTable::new()), XMatch::All);
    assert_eq!(XMatch::of(&xm("all", &[])), XMatch::All);
    assert_eq!(XMatch::of(&xm("any", &[])), XMatch::Any);
    assert_eq!(XMatch::of(&xm("all-with-x", &[])), XMatch::AllWithX);
    assert_eq!(XMatch::of(&xm("any-with-x", &[])), XMatch::AnyWithX);
    assert_eq!(XMatch::of(&xm("ANY", &[])), XMatch::All);
    assert_eq!(XMatch::of(&xm("bogus", &[])), XMatch::All);
    let bytes_any = table(&[("x-match", FieldValue::ByteArray(Bytes::from_static(b"any")))]);
    assert_eq!(XMatch::of(&bytes_any), XMatch::All);
}

// rabbit_exchange_type_headers:validate_binding/2; texts as RabbitMQ 4.3.6 was seen to send
// them after "PRECONDITION_FAILED - ".
#[test]
fn validate_x_match_texts() {
    use FieldValue::*;
    for ok in ["all", "any", "all-with-x", "any-with-x"] {
        assert_eq!(validate_x_match(&xm(ok, &[])), Ok(()));
    }
    assert_eq!(validate_x_match(&table(&[("a", s("b"))])), Ok(()));
    assert_eq!(
        validate_x_match(&xm("bogus", &[])),
        Err("Invalid x-match field value <<\"bogus\">>; expected all, any, all-with-x, or any-with-x".to_owned())
    );
    assert_eq!(
        validate_x_match(&table(&[("x-match", I8(1))])),
        Err("Invalid x-match field type byte (value 1); expected longstr".to_owned())
    );
    let err = |v: FieldValue| validate_x_match(&table(&[("x-match", v)])).unwrap_err();
    assert_eq!(err(Bool(true)), "Invalid x-match field type bool (value true); expected longstr");
    assert_eq!(err(Void), "Invalid x-match field type void (value undefined); expected longstr");
    assert_eq!(err(U64(u64::MAX)), "Invalid x-match field type long (value -1); expected longstr");
    assert_eq!(
        err(ByteArray(Bytes::from_static(b"any"))),
        "Invalid x-match field type binary (value <<\"any\">>); expected longstr"
    );
    assert_eq!(err(Decimal(2, 5)), "Invalid x-match field type decimal (value {2,5}); expected longstr");
    assert_eq!(err(F64(1.5)), "Invalid x-match field type double (value 1.5); expected longstr");
    assert_eq!(
        err(Table(table(&[("k", s("v")), ("n", I32(1))]))),
        "Invalid x-match field type table (value [{<<\"k\">>,longstr,<<\"v\">>},{<<\"n\">>,signedint,1}]); \
         expected longstr"
    );
    assert_eq!(
        err(Array(vec![I64(1), Void])),
        "Invalid x-match field type array (value [{long,1},{void,undefined}]); expected longstr"
    );
}

#[test]
fn erlang_binary_printing() {
    assert_eq!(erl_binary(b""), "<<>>");
    assert_eq!(erl_binary(b"bogus"), "<<\"bogus\">>");
    assert_eq!(erl_binary(b"a\"b\\c\nd"), "<<\"a\\\"b\\\\c\\nd\">>");
    assert_eq!(erl_binary("é".as_bytes()), "<<\"é\"/utf8>>");
    assert_eq!(erl_binary(&[0, 1, 255]), "<<0,1,255>>");
    assert_eq!(erl_binary(b"a\x7f"), "<<97,127>>");
}

// io_lib_format:fwrite_g/1 (float_to_list(F, [short])) and its insert_decimal/3.
#[test]
fn erlang_float_printing() {
    let cases = [
        (1.0, "1.0"),
        (1.5, "1.5"),
        (-2.5, "-2.5"),
        (0.1, "0.1"),
        (0.001, "0.001"),
        (0.0001, "1.0e-4"),
        (0.00012, "1.2e-4"),
        (100.0, "100.0"),
        (1000.0, "1.0e3"),
        (10000.0, "1.0e4"),
        (12345.0, "12345.0"),
        (123456.789, "123456.789"),
        (1.0e15, "1.0e15"),
        (9007199254740992.0, "9.007199254740992e15"),
        (1.0e100, "1.0e100"),
        (0.0, "0.0"),
        (-0.0, "-0.0"),
        (f64::from(0.1f32), "0.10000000149011612"),
    ];
    for (f, text) in cases {
        assert_eq!(erl_float(f), text, "{f:e}");
    }
}

// ---- headers: indexed matching against the direct transcription ------------------------

/// The reference model: `rabbit_exchange_type_headers` read literally, looking every binding
/// argument up by scanning the headers backwards (the last repeat wins).
fn ref_headers_match(args: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let mode = XMatch::of(args);
    let considered: Vec<(&str, &FieldValue)> =
        args.iter().filter(|(k, _)| *k != "x-match" && (mode.with_x() || !k.starts_with("x-"))).collect();
    let hit = |k: &str, bound: &FieldValue| {
        let header = headers.and_then(|h| h.0.iter().rev().find(|(hk, _)| hk == k)).map(|(_, v)| v);
        match (bound, header) {
            (_, None) => false,
            (FieldValue::Void, Some(_)) => true,
            (b, Some(h)) => routing_term(b, false) == routing_term(h, true),
        }
    };
    if mode.is_any() { considered.iter().any(|(k, b)| hit(k, b)) } else { considered.iter().all(|(k, b)| hit(k, b)) }
}

fn small_value() -> impl Strategy<Value = FieldValue> {
    prop_oneof![
        (0i64..3).prop_map(FieldValue::I64),
        (0i32..3).prop_map(FieldValue::I32),
        (0u8..3).prop_map(|i| s(&i.to_string())),
        Just(FieldValue::Void),
        (0u64..2).prop_map(FieldValue::Timestamp),
    ]
}

fn small_table(max: usize) -> impl Strategy<Value = FieldTable> {
    let key = prop_oneof![Just("a"), Just("b"), Just("c"), Just("x-k"), Just("x-match"), Just("d"), Just("e")];
    prop::collection::vec((key, small_value()), 0..max)
        .prop_map(|v| FieldTable(v.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    // Header tables up to 24 entries go through both the scan and the hash-map index.
    #[test]
    fn headers_index_agrees_with_reference(
        mode in prop_oneof![Just(None), Just(Some("all")), Just(Some("any")), Just(Some("all-with-x")),
                            Just(Some("any-with-x")), Just(Some("bogus"))],
        args in small_table(6),
        headers in prop::option::of(small_table(24)),
    ) {
        let args = match mode {
            Some(m) => { let mut t = xm(m, &[]); t.0.extend(args.0); t }
            None => args,
        };
        prop_assert_eq!(headers_match(&args, headers.as_ref()), ref_headers_match(&args, headers.as_ref()));
        let index = HeaderIndex::new(headers.as_ref());
        prop_assert_eq!(headers_match_indexed(&args, &index), ref_headers_match(&args, headers.as_ref()));
    }
}

// A binding and a message with 26,000 keys each: linear, so well under a second even in a
// debug build (it took 1.2 s of CPU per publish, in release, when each argument scanned the
// headers).
#[test]
fn headers_match_is_linear_in_keys() {
    const KEYS: usize = 26_000;
    let args = FieldTable((0..KEYS).map(|i| (format!("k{i}"), FieldValue::I32(i as i32))).collect());
    let headers = FieldTable((0..KEYS).rev().map(|i| (format!("k{i}"), FieldValue::I64(i as i64))).collect());
    let started = std::time::Instant::now();
    assert!(headers_match(&args, Some(&headers)));
    assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
}

// ---- multisets of destinations ---------------------------------------------------------

proptest! {
    // Adds and removals over up to 40 distinct values (past the scan limit, so the hash
    // index is built, kept and used) agree with a map of counts; so do topic routes with
    // many values at one pattern, deduplicated across patterns.
    #[test]
    fn multiset_agrees_with_counts(ops in prop::collection::vec((any::<bool>(), 0u32..40), 0..400)) {
        let mut set: Multiset<u32> = Multiset::default();
        let mut model: std::collections::BTreeMap<u32, usize> = std::collections::BTreeMap::new();
        let mut index: TopicIndex<u32> = TopicIndex::new();
        for (add, v) in ops {
            let pattern = if v % 2 == 0 { "a.*" } else { "#" };
            if add {
                set.add(v);
                index.insert(pattern, v);
                *model.entry(v).or_default() += 1;
            } else {
                let had = model.get(&v).is_some_and(|c| *c > 0);
                prop_assert_eq!(set.remove_one(&v), had);
                prop_assert_eq!(index.remove(pattern, &v), had);
                if had {
                    let c = model.get_mut(&v).unwrap();
                    *c -= 1;
                    if *c == 0 {
                        model.remove(&v);
                    }
                }
            }
            let mut got: Vec<u32> = set.iter().copied().collect();
            got.sort_unstable();
            prop_assert_eq!(&got, &model.keys().copied().collect::<Vec<_>>());
            prop_assert_eq!(set.is_empty(), model.is_empty());
            prop_assert_eq!(route(&index, "a.b"), model.keys().copied().collect::<Vec<_>>());
        }
    }
}

// 20,000 destinations on one pattern and 20,000 on another that matches the same keys:
// binding, routing (deduplicated) and unbinding stay linear.
#[test]
fn many_values_at_one_pattern() {
    const N: u32 = 20_000;
    let mut index: TopicIndex<u32> = TopicIndex::new();
    let started = std::time::Instant::now();
    for v in 0..N {
        index.insert("a.#", v);
        index.insert("#.b", v + N / 2);
    }
    let mut out = Vec::new();
    index.matches("a.b", &mut out);
    assert_eq!(out.len(), (N + N / 2) as usize);
    for v in 0..N {
        assert!(index.remove("a.#", &v));
        assert!(index.remove("#.b", &(v + N / 2)));
    }
    assert!(index.is_empty());
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
}

// ---- the trie's compact layout -----------------------------------------------------------

/// A node of a million-binding trie stays within a cache line, a unique pattern bound to
/// one destination keeps its value inline, and a few children live in a vector.
#[test]
fn trie_node_is_compact() {
    assert!(std::mem::size_of::<Node<crate::exchange::Destination>>() <= 64);
    assert!(std::mem::size_of::<Multiset<crate::exchange::Destination>>() <= 24);
    let mut index: TopicIndex<u32> = TopicIndex::new();
    index.insert("a.b", 1);
    let leaf = index.child(index.child(ROOT, "a").unwrap(), "b").unwrap();
    assert!(matches!(index.nodes[leaf].values.items, Items::One(_)));
    assert!(matches!(index.nodes[ROOT].words, Children::Few(_)));
}

/// Words drawn from a larger alphabet, so nodes cross `CHILDREN_FEW_MAX` both ways.
fn wide_key(max_words: usize) -> impl Strategy<Value = String> {
    let words =
        prop_oneof![8 => (0u8..24).prop_map(|w| format!("w{w}")), 1 => Just("*".to_owned()), 1 => Just("#".to_owned())];
    prop::collection::vec(words, 0..=max_words).prop_map(|w| w.join("."))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    // Many children per node (vector → map → vector as they come and go): the trie still
    // agrees with a linear scan, and it prunes back to the bare root once empty.
    #[test]
    fn wide_index_agrees_with_linear_scan(
        ops in prop::collection::vec((any::<bool>(), wide_key(3), 0u8..4), 0..200),
        keys in prop::collection::vec(wide_key(3), 1..16),
    ) {
        let mut index = TopicIndex::new();
        let mut live: Vec<(String, u8)> = Vec::new();
        for (add, p, v) in ops {
            if add {
                index.insert(&p, v);
                live.push((p, v));
            } else {
                let pos = live.iter().position(|(lp, lv)| *lp == p && *lv == v);
                prop_assert_eq!(index.remove(&p, &v), pos.is_some());
                if let Some(i) = pos {
                    live.swap_remove(i);
                }
            }
        }
        let probes = keys.iter().cloned().chain(live.iter().map(|(p, _)| p.replace('*', "w1").replace('#', "w2.w3")));
        for key in probes {
            let mut expected: Vec<u8> = live.iter().filter(|(p, _)| topic_matches(p, &key)).map(|(_, v)| *v).collect();
            expected.sort();
            expected.dedup();
            prop_assert_eq!(route(&index, &key), expected, "key {:?}", key);
        }
        for (p, v) in live.drain(..) {
            prop_assert!(index.remove(&p, &v));
        }
        prop_assert!(index.is_empty());
        prop_assert!(index.nodes[ROOT].is_unused());
        prop_assert_eq!(index.nodes.len() - index.free.len(), 1, "only the root is left");
    }
}
