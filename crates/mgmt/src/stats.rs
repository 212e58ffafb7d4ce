//! Message rates: a sampler that reads the node's always-on counters every
//! [`SAMPLE_INTERVAL_MS`] and keeps a short ring of samples per object, from which
//! `*_details: {rate}` (and, for `?msg_rates_age=..&msg_rates_incr=..`, RabbitMQ's
//! `samples: [{sample, timestamp}]`) are derived. Pure: time is passed in, so it is tested
//! with a fake clock; [`run`] drives it from the node.
//!
//! As in LavinMQ, there is no event bus and no statistics database: counters are read,
//! not sent, so the cost on the message path is a relaxed add.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::node::{ChannelCounts, Node, NodeCounters};

/// RabbitMQ's `collect_statistics_interval` default.
pub const SAMPLE_INTERVAL_MS: u64 = 5_000;
/// Samples kept per queue, exchange, channel and connection: 60 s (the UI's default chart
/// range) plus the one a rate needs. Per-object memory stays at about 1 KiB.
pub const OBJECT_SAMPLES: usize = 13;
/// Samples kept of the node's totals: RabbitMQ's basic retention, 605 s at 5 s.
pub const NODE_SAMPLES: usize = 122;

/// One reading of an object's counters.
#[derive(Debug, Clone)]
struct Sample {
    ts_ms: u64,
    values: Box<[u64]>,
}

/// One object's recent samples, oldest first.
#[derive(Debug, Clone)]
pub struct Series {
    cap: usize,
    samples: VecDeque<Sample>,
    /// The sampling round that last updated it (series not updated are dropped).
    round: u64,
}

/// A time range asked for with `*_age` and `*_incr` (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub age_s: u64,
    pub incr_s: u64,
}

impl Range {
    /// From `age` and `incr` query values; None unless both are positive integers.
    pub fn parse(age: Option<&str>, incr: Option<&str>) -> Option<Range> {
        let age_s = age?.parse::<u64>().ok().filter(|&a| a > 0)?;
        let incr_s = incr?.parse::<u64>().ok().filter(|&i| i > 0)?;
        Some(Range { age_s, incr_s })
    }
}

impl Series {
    fn new(cap: usize) -> Series {
        Series { cap: cap.max(2), samples: VecDeque::new(), round: 0 }
    }

    fn push(&mut self, ts_ms: u64, values: &[u64]) {
        if self.samples.len() == self.cap {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample { ts_ms, values: values.into() });
    }

    /// Change per second of counter `i` between the last two samples; 0 with fewer than
    /// two, or when the counter went down (its object was replaced).
    pub fn rate(&self, i: usize) -> f64 {
        let n = self.samples.len();
        if n < 2 {
            return 0.0;
        }
        let (a, b) = (&self.samples[n - 2], &self.samples[n - 1]);
        let dt_ms = b.ts_ms.saturating_sub(a.ts_ms);
        let (va, vb) = (a.values.get(i).copied().unwrap_or(0), b.values.get(i).copied().unwrap_or(0));
        if dt_ms == 0 || vb < va {
            return 0.0;
        }
        (vb - va) as f64 * 1000.0 / dt_ms as f64
    }

    /// The value of counter `i` at `t_ms`: the latest sample taken at or before it.
    fn value_at(&self, i: usize, t_ms: u64) -> Option<u64> {
        self.samples.iter().rev().find(|s| s.ts_ms <= t_ms).and_then(|s| s.values.get(i).copied())
    }

    /// `{rate, samples, avg_rate, avg}` of counter `i` over `range` ending at `now_ms`, as
    /// RabbitMQ renders it: points every `incr` seconds, newest first, timestamps aligned
    /// to `incr`; points older than the ring are left out.
    fn range_details(&self, i: usize, range: Range, now_ms: u64) -> Value {
        let incr_ms = range.incr_s * 1000;
        let end = now_ms - now_ms % incr_ms;
        let points = (range.age_s / range.incr_s).max(1);
        let mut samples = Vec::new();
        for k in 0..=points {
            let Some(t) = end.checked_sub(k * incr_ms) else { break };
            match self.value_at(i, t) {
                Some(v) => samples.push((v, t)),
                None => break,
            }
        }
        let (avg, avg_rate) = match (samples.first(), samples.last()) {
            (Some(&(newest, t1)), Some(&(oldest, t0))) if t1 > t0 => {
                let sum: u64 = samples.iter().map(|s| s.0).sum();
                (sum as f64 / samples.len() as f64, newest.saturating_sub(oldest) as f64 * 1000.0 / (t1 - t0) as f64)
            }
            (Some(&(v, _)), _) => (v as f64, 0.0),
            _ => (0.0, 0.0),
        };
        let samples: Vec<Value> = samples.iter().map(|&(v, t)| json!({"sample": v, "timestamp": t})).collect();
        json!({"rate": self.rate(i), "samples": samples, "avg_rate": avg_rate, "avg": avg})
    }
}

/// Every object's series, keyed by [`key`].
#[derive(Debug, Default)]
pub struct Sampler {
    series: HashMap<String, Series>,
    round: u64,
    last_ms: Option<u64>,
}

/// The key of an object's series: its kind and its identifying parts.
pub fn key(kind: &str, parts: &[&str]) -> String {
    let mut k = String::from(kind);
    for p in parts {
        k.push('\0');
        k.push_str(p);
    }
    k
}

impl Sampler {
    /// Whether a round is due at `now_ms`.
    pub fn due(&self, now_ms: u64) -> bool {
        self.last_ms.is_none_or(|l| now_ms >= l + SAMPLE_INTERVAL_MS)
    }

    /// Start a sampling round at `now_ms`.
    pub fn begin(&mut self, now_ms: u64) {
        self.round += 1;
        self.last_ms = Some(now_ms);
    }

    /// Record an object's counters in this round, keeping `cap` samples of it.
    pub fn record(&mut self, now_ms: u64, key: String, values: &[u64], cap: usize) {
        let s = self.series.entry(key).or_insert_with(|| Series::new(cap));
        s.push(now_ms, values);
        s.round = self.round;
    }

    /// End the round: objects not recorded in it are gone, and so are their series.
    pub fn end(&mut self) {
        let round = self.round;
        self.series.retain(|_, s| s.round == round);
    }

    pub fn series(&self, key: &str) -> Option<&Series> {
        self.series.get(key)
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

/// `name: value` and `name_details` for each counter, with rates from `series` (whose
/// values are in the same order) and samples when `range` is given. Counters still at 0
/// are left out, as RabbitMQ shows only counters that have had activity.
pub fn render(counts: &[(&str, u64)], series: Option<&Series>, range: Option<Range>, now_ms: u64) -> Value {
    let mut m = Map::new();
    for (i, &(name, v)) in counts.iter().enumerate() {
        if v == 0 {
            continue;
        }
        m.insert(name.to_owned(), json!(v));
        let details = match (series, range) {
            (Some(s), Some(r)) => s.range_details(i, r, now_ms),
            (Some(s), None) => json!({"rate": s.rate(i)}),
            (None, _) => json!({"rate": 0.0}),
        };
        m.insert(format!("{name}_details"), details);
    }
    Value::Object(m)
}

/// The node's rate store, shared by the sampling task and the API.
#[derive(Debug, Default)]
pub struct RateDb {
    inner: Mutex<Sampler>,
}

impl RateDb {
    pub fn with<T>(&self, f: impl FnOnce(&Sampler) -> T) -> T {
        f(&self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn with_mut<T>(&self, f: impl FnOnce(&mut Sampler) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Milliseconds since the Unix epoch (RabbitMQ's sample timestamps).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Keys of the node-wide series.
pub const NODE_MESSAGES: &str = "node\0messages";
pub const NODE_CHURN: &str = "node\0churn";
pub const NODE_QUEUE_TOTALS: &str = "node\0queue_totals";

/// A queue's series key.
pub fn queue_key(vhost: &str, name: &str) -> String {
    key("queue", &[vhost, name])
}

/// An exchange's series key.
pub fn exchange_key(vhost: &str, name: &str) -> String {
    key("exchange", &[vhost, name])
}

pub fn channel_key(conn: &str, number: u16) -> String {
    key("channel", &[conn, &number.to_string()])
}

pub fn connection_key(conn: &str) -> String {
    key("connection", &[conn])
}

/// Exchange counters in RabbitMQ's naming.
pub fn exchange_counts(publish_in: u64, publish_out: u64) -> [(&'static str, u64); 2] {
    [("publish_in", publish_in), ("publish_out", publish_out)]
}

/// Read every counter of the node once (one sampling round).
pub fn sample(node: &dyn Node, db: &RateDb, now_ms: u64) {
    // Counters are read before the sampler's lock is taken: the API keeps answering while
    // a round walks thousands of queues.
    let mut rows: Vec<(String, Vec<u64>, usize)> = Vec::new();
    let (mut ready, mut unacked) = (0u64, 0u64);
    for vh in node.vhosts() {
        for q in vh.queues() {
            let c = q.counters.snapshot();
            let s = q.stats();
            ready += s.messages_ready;
            unacked += s.messages_unacked;
            let mut v: Vec<u64> = c.named().iter().map(|x| x.1).collect();
            v.extend([s.messages_ready + s.messages_unacked, s.messages_ready, s.messages_unacked, s.stalled_ms]);
            rows.push((queue_key(&vh.name, &q.name), v, OBJECT_SAMPLES));
        }
        for e in vh.exchanges() {
            let (i, o) = e.counters.snapshot();
            rows.push((exchange_key(&vh.name, &e.name), vec![i, o], OBJECT_SAMPLES));
        }
    }
    for ch in node.channels() {
        let v: Vec<u64> = ch.counts.named().iter().map(|x| x.1).collect();
        rows.push((channel_key(&ch.connection, ch.number), v, OBJECT_SAMPLES));
    }
    for c in node.connections() {
        rows.push((connection_key(&c.name), vec![c.recv_oct, c.send_oct], OBJECT_SAMPLES));
    }
    let totals = node.node_counters();
    let msgs: Vec<u64> = totals.messages.named().iter().map(|x| x.1).collect();
    rows.push((NODE_MESSAGES.to_owned(), msgs, NODE_SAMPLES));
    let churn: Vec<u64> = totals.churn.named().iter().map(|x| x.1).collect();
    rows.push((NODE_CHURN.to_owned(), churn, NODE_SAMPLES));
    rows.push((NODE_QUEUE_TOTALS.to_owned(), vec![ready + unacked, ready, unacked], NODE_SAMPLES));
    db.with_mut(|s| {
        s.begin(now_ms);
        for (k, v, cap) in rows {
            s.record(now_ms, k, &v, cap);
        }
        s.end();
    });
}

/// Sample the node every [`SAMPLE_INTERVAL_MS`] until the task is dropped.
pub async fn run(node: Arc<dyn Node>) {
    let mut tick = tokio::time::interval(Duration::from_millis(SAMPLE_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let node = node.clone();
        // Walking every queue takes each queue's lock briefly: off the async workers.
        let done = tokio::task::spawn_blocking(move || sample(&*node, node.rates(), now_ms())).await;
        if done.is_err() {
            tracing::warn!("statistics sampling failed");
        }
    }
}

/// A queue's `message_stats` object (with rates; samples when `range` is given), for
/// the queue listings.
pub fn queue_message_stats(db: &RateDb, q: &broker::Queue, range: Option<Range>) -> Value {
    let counts = q.counters.snapshot().named();
    db.with(|s| render(&counts, s.series(&queue_key(&q.vhost, &q.name)), range, now_ms()))
}

/// An exchange's `message_stats` object, for the exchange listings.
pub fn exchange_message_stats(db: &RateDb, e: &broker::Exchange, range: Option<Range>) -> Value {
    let (i, o) = e.counters.snapshot();
    db.with(|s| render(&exchange_counts(i, o), s.series(&exchange_key(&e.vhost, &e.name)), range, now_ms()))
}

/// A channel's `message_stats`.
pub fn channel_message_stats(db: &RateDb, conn: &str, number: u16, counts: &ChannelCounts) -> Value {
    db.with(|s| render(&counts.named(), s.series(&channel_key(conn, number)), None, now_ms()))
}

/// `messages`, `messages_ready`, `messages_unacknowledged` and their `_details` of a
/// queue, rates from its series (the last three values of a queue's row).
pub fn queue_length_details(
    db: &RateDb,
    vhost: &str,
    name: &str,
    lengths: [u64; 3],
    range: Option<Range>,
) -> Map<String, Value> {
    let names = ["messages", "messages_ready", "messages_unacknowledged"];
    db.with(|s| {
        let series = s.series(&queue_key(vhost, name));
        let mut m = Map::new();
        for (j, n) in names.iter().enumerate() {
            // Queue rows hold the 9 message counters, then the 3 lengths.
            let details = match (series, range) {
                (Some(x), Some(r)) => x.range_details(9 + j, r, now_ms()),
                (Some(x), None) => json!({"rate": x.rate(9 + j)}),
                (None, _) => json!({"rate": 0.0}),
            };
            m.insert((*n).to_owned(), json!(lengths[j]));
            m.insert(format!("{n}_details"), details);
        }
        m
    })
}

/// RabbitMQ's consumer utilisation (also its `consumer_capacity`): the fraction of the
/// last sampling interval in which the queue could hand a ready message to a consumer at
/// once, from the rate of the queue's stalled milliseconds (the 13th value of its row).
/// 1.0 until the queue has two samples; 0.0 without consumers.
pub fn queue_utilisation(db: &RateDb, vhost: &str, name: &str, consumers: u32) -> f64 {
    if consumers == 0 {
        return 0.0;
    }
    let stalled_ms_per_s = db.with(|s| s.series(&queue_key(vhost, name)).map_or(0.0, |x| x.rate(12)));
    (1.0 - stalled_ms_per_s / 1000.0).clamp(0.0, 1.0)
}

/// The activity parts of `/api/overview`.
pub struct Overview {
    pub message_stats: Value,
    pub churn_rates: Value,
    pub queue_totals: Value,
}

/// `message_stats` (node totals), `churn_rates` and `queue_totals` (`lengths` = messages,
/// ready, unacknowledged now) with their rates, and samples when ranges are asked for.
pub fn overview(
    db: &RateDb,
    totals: &NodeCounters,
    lengths: [u64; 3],
    msg_range: Option<Range>,
    lengths_range: Option<Range>,
) -> Overview {
    let now = now_ms();
    db.with(|s| {
        let message_stats = render(&totals.messages.named(), s.series(NODE_MESSAGES), msg_range, now);
        // Churn counters are shown even at 0 (the UI's churn panel reads them all).
        let mut churn = Map::new();
        let series = s.series(NODE_CHURN);
        for (i, (name, v)) in totals.churn.named().iter().enumerate() {
            churn.insert((*name).to_owned(), json!(v));
            churn.insert(format!("{name}_details"), json!({"rate": series.map_or(0.0, |x| x.rate(i))}));
        }
        let mut queue_totals = Map::new();
        let series = s.series(NODE_QUEUE_TOTALS);
        for (i, name) in ["messages", "messages_ready", "messages_unacknowledged"].iter().enumerate() {
            queue_totals.insert((*name).to_owned(), json!(lengths[i]));
            let details = match (series, lengths_range) {
                (Some(x), Some(r)) => x.range_details(i, r, now),
                (Some(x), None) => json!({"rate": x.rate(i)}),
                (None, _) => json!({"rate": 0.0}),
            };
            queue_totals.insert(format!("{name}_details"), details);
        }
        Overview { message_stats, churn_rates: Value::Object(churn), queue_totals: Value::Object(queue_totals) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(s: &mut Sampler, t: u64, v: u64) {
        s.begin(t);
        s.record(t, "q".into(), &[v, 2 * v], 4);
        s.end();
    }

    #[test]
    fn rate_is_the_change_over_the_last_interval() {
        let mut s = Sampler::default();
        assert!(s.due(1_000));
        round(&mut s, 1_000, 0);
        assert!(!s.due(5_999));
        assert!(s.due(6_000));
        assert_eq!(s.series("q").unwrap().rate(0), 0.0, "one sample has no rate");
        round(&mut s, 6_000, 50);
        assert_eq!(s.series("q").unwrap().rate(0), 10.0);
        assert_eq!(s.series("q").unwrap().rate(1), 20.0);
        round(&mut s, 11_000, 50);
        assert_eq!(s.series("q").unwrap().rate(0), 0.0);
    }

    #[test]
    fn utilisation_is_the_share_of_time_without_a_stall() {
        let db = RateDb::default();
        let key = queue_key("/", "q");
        let row = |stalled: u64| {
            let mut v = vec![0u64; 12];
            v.push(stalled);
            v
        };
        assert_eq!(queue_utilisation(&db, "/", "q", 1), 1.0, "no samples yet");
        db.with_mut(|s| {
            s.begin(0);
            s.record(0, key.clone(), &row(0), 4);
            s.end();
            s.begin(5_000);
            s.record(5_000, key.clone(), &row(1_250), 4);
            s.end();
        });
        assert_eq!(queue_utilisation(&db, "/", "q", 2), 0.75, "stalled 1.25 s of 5 s");
        assert_eq!(queue_utilisation(&db, "/", "q", 0), 0.0, "no consumers");
    }

    #[test]
    fn a_counter_going_down_is_no_negative_rate() {
        let mut s = Sampler::default();
        round(&mut s, 0, 100);
        round(&mut s, 5_000, 10);
        assert_eq!(s.series("q").unwrap().rate(0), 0.0);
    }

    #[test]
    fn the_ring_is_bounded_and_gone_objects_are_dropped() {
        let mut s = Sampler::default();
        for i in 0..10 {
            round(&mut s, i * 5_000, i);
        }
        assert_eq!(s.series("q").unwrap().samples.len(), 4);
        s.begin(60_000);
        s.record(60_000, "other".into(), &[1], 4);
        s.end();
        assert!(s.series("q").is_none());
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn samples_are_rabbitmqs_shape_newest_first() {
        let mut s = Sampler::default();
        s.begin(0);
        for (t, v) in [(10_000u64, 0u64), (15_000, 50), (20_000, 150)] {
            s.begin(t);
            s.record(t, "q".into(), &[v], 13);
            s.end();
        }
        let d = s.series("q").unwrap().range_details(0, Range { age_s: 10, incr_s: 5 }, 21_000);
        let samples = d["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0], json!({"sample": 150, "timestamp": 20_000}));
        assert_eq!(samples[2], json!({"sample": 0, "timestamp": 10_000}));
        assert_eq!(d["rate"], json!(20.0));
        assert_eq!(d["avg_rate"], json!(15.0));
        assert_eq!(d["avg"], json!(200.0 / 3.0));
    }

    #[test]
    fn render_shows_active_counters_with_details() {
        let mut s = Sampler::default();
        round(&mut s, 0, 0);
        round(&mut s, 5_000, 5);
        let v = render(&[("publish", 5), ("ack", 0)], s.series("q"), None, 5_000);
        assert_eq!(v, json!({"publish": 5, "publish_details": {"rate": 1.0}}));
        let none = render(&[("publish", 3)], None, None, 0);
        assert_eq!(none["publish_details"]["rate"], json!(0.0));
    }

    #[test]
    fn range_needs_both_positive_values() {
        assert_eq!(Range::parse(Some("60"), Some("5")), Some(Range { age_s: 60, incr_s: 5 }));
        assert_eq!(Range::parse(Some("60"), None), None);
        assert_eq!(Range::parse(Some("0"), Some("5")), None);
        assert_eq!(Range::parse(Some("x"), Some("5")), None);
    }
}
