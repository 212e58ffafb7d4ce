//! `warren-scale`: the scale workloads of issue 14 (many queues, bindings, connections,
//! consumers; churn), each printing one JSON object on stdout.
//!
//! Every workload works against any AMQP 0-9-1 broker on loopback; broker-side figures
//! (RSS, CPU) come from `/proc/<--broker-pid>` (for RabbitMQ, the `beam.smp` process).
//! Requests are synchronous per connection unless `--window` pipelines them; connections
//! run concurrently on one thread by default, so the load generator takes one core at
//! most and the broker keeps the other.

use std::cell::RefCell;
use std::net::IpAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use wire::{FieldTable, FieldValue, Frame, Method};

use crate::ConfirmTracker;
use crate::client::{CHANNEL, Connection, Hot, Incoming, PublishTemplate, now_ns};
use crate::histogram::Histogram;
use crate::stats::cpu_seconds;
use crate::uri::AmqpUri;

#[derive(Parser, Debug)]
#[command(name = "warren-scale", version, about = "Scale workloads (issue 14) against an AMQP broker on localhost")]
pub struct ScaleOptions {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub workload: Workload,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Broker URI; only loopback addresses are accepted.
    #[arg(long, global = true, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,
    /// The broker's pid, for RSS and CPU figures.
    #[arg(long, global = true)]
    pub broker_pid: Option<u32>,
    /// Connections the work is spread over.
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,
    /// Requests in flight per connection (1 = wait for each reply, like most clients).
    #[arg(long, global = true, default_value_t = 1)]
    pub window: usize,
    /// Queue names are PREFIX0, PREFIX1, ...
    #[arg(long, global = true, default_value = "scale-")]
    pub prefix: String,
    /// The topic exchange the bindings are on.
    #[arg(long, global = true, default_value = "scale.topic")]
    pub exchange: String,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Workload {
    /// Declare queues PREFIX0..PREFIX(N-1).
    Declare {
        #[arg(long)]
        queues: u64,
        #[arg(long)]
        durable: bool,
    },
    /// Declare the topic exchange and bind N patterns (see `pattern`) over the queues.
    Bind {
        #[arg(long)]
        queues: u64,
        #[arg(long)]
        bindings: u64,
        #[arg(long)]
        durable: bool,
    },
    /// Publish N persistent messages to each of the first Q queues (the restart test's backlog).
    Fill {
        #[arg(long)]
        queues: u64,
        #[arg(long, default_value_t = 10)]
        messages: u64,
    },
    /// Delete queues PREFIX0..PREFIX(N-1) (and the topic exchange).
    Delete {
        #[arg(long)]
        queues: u64,
    },
    /// Passive-declare every queue, summing their messages (all must exist).
    Check {
        #[arg(long)]
        queues: u64,
    },
    /// Start the broker (the command after `--`) and time until its port accepts and
    /// until every queue answers a passive declare.
    Restart {
        #[arg(long)]
        queues: u64,
        /// Messages expected in total over the queues (checked; -1 = do not check).
        #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
        messages: i64,
        /// Write the started process's pid here.
        #[arg(long)]
        pid_file: PathBuf,
        /// Its stdout and stderr go here.
        #[arg(long)]
        log: PathBuf,
        #[arg(long, default_value_t = 900.0)]
        timeout: f64,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Publish with confirms to the topic exchange with keys that match the bindings
    /// made by `bind` (each key is made from one binding's pattern).
    Route {
        #[arg(long)]
        bindings: u64,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Unconfirmed messages per connection.
        #[arg(long, default_value_t = 1000)]
        confirm: usize,
    },
    /// A fanout exchange bound to N queues (x-max-length 1000); publish with confirms.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        queues: u64,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long, default_value_t = 100)]
        confirm: usize,
    },
    /// N connections each publishing RATE msg/s with confirms (or, with --consume, each
    /// consuming, fed by one publisher at N*RATE msg/s): CPU, RSS per connection, p99.
    Connections {
        #[arg(long)]
        n: usize,
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        #[arg(long, default_value_t = 30.0)]
        duration: f64,
        #[arg(long)]
        consume: bool,
        /// Source addresses 127.0.0.1 .. 127.0.0.K (each has its own ephemeral ports).
        #[arg(long, default_value_t = 1)]
        source_addrs: u8,
        /// Connection handshakes in flight while opening.
        #[arg(long, default_value_t = 100)]
        open_concurrency: usize,
    },
    /// Consumers: N on one queue (--layout one-queue) or one on each of N queues
    /// (--layout queue-each), over --conns connections with a channel each; M messages.
    Consumers {
        #[arg(long)]
        n: usize,
        #[arg(long, default_value = "one-queue")]
        layout: String,
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        #[arg(long, default_value_t = 10)]
        prefetch: u16,
    },
    /// Open, publish one message, close, at RATE connections/s for the duration; RSS sampled.
    ConnChurn {
        #[arg(long, default_value_t = 5000.0)]
        rate: f64,
        #[arg(long, default_value_t = 60.0)]
        duration: f64,
        #[arg(long, default_value_t = 500)]
        concurrency: usize,
        /// Generator threads, each with its own event loop, sharing RATE and CONCURRENCY
        /// (one thread tops out at a few thousand connections a second).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Celery-style reply queues: declare (exclusive), publish one message to it, get it,
    /// delete it, in a loop on each connection for the duration; RSS sampled.
    QueueChurn {
        #[arg(long, default_value_t = 60.0)]
        duration: f64,
    },
}

// ------------------------------------------------------------------ names and patterns

/// Binding `i`'s topic pattern. Four-word keys `r<region>.s<service>.e<entity>.v<event>`:
/// 70 % exact keys, 15 % `*` for the entity, 10 % `*` for the event, 5 % a trailing `#`,
/// and every 10,000th binding an audit-style `r<region>.#`. Every pattern but the audit
/// ones is unique (it names `i`), so N bindings are N distinct (queue, pattern) pairs.
pub fn pattern(i: u64) -> String {
    let r = (i / 7) % 20;
    let s = (i / 140) % 50;
    if i.is_multiple_of(10_000) {
        return format!("r{}.#", (i / 10_000) % 20);
    }
    match i % 20 {
        0..=13 => format!("r{r}.s{s}.e{i}.v{}", i % 5),
        14..=16 => format!("r{r}.s{s}.*.v{i}"),
        17..=18 => format!("r{r}.s{s}.e{i}.*"),
        _ => format!("r{r}.s{s}.e{i}.#"),
    }
}

/// A routing key that binding `i`'s pattern matches (wildcards filled in).
pub fn key_for(i: u64) -> String {
    pattern(i)
        .split('.')
        .map(|w| match w {
            "*" => "x".to_owned(),
            "#" => "y.z".to_owned(),
            w => w.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The queue binding `i` points at.
pub fn queue_of(prefix: &str, i: u64, queues: u64) -> String {
    format!("{prefix}{}", i % queues)
}

// ------------------------------------------------------------------ helpers

/// VmRSS of `pid` in KiB.
pub fn rss_kb(pid: Option<u32>) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn per(delta_kb: Option<(u64, u64)>, n: u64) -> Value {
    match delta_kb {
        Some((before, after)) if n > 0 => json!(((after as f64 - before as f64) * 1024.0 / n as f64).round()),
        _ => Value::Null,
    }
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { (n as f64 / secs).round() } else { 0.0 }
}

fn queue_declare(queue: String, durable: bool, passive: bool, exclusive: bool, arguments: FieldTable) -> Method {
    Method::QueueDeclare { ticket: 0, queue, passive, durable, exclusive, auto_delete: false, nowait: false, arguments }
}

fn max_length(n: i64) -> FieldTable {
    let mut t = FieldTable::new();
    t.insert("x-max-length", FieldValue::I64(n));
    t
}

/// Open `n` connections, `concurrency` handshakes at a time.
async fn open_many(
    uri: &AmqpUri,
    n: usize,
    concurrency: usize,
    source_addrs: u8,
    name: &str,
) -> Result<Vec<Connection>> {
    let mut out = Vec::with_capacity(n);
    let mut set = JoinSet::new();
    let mut next = 0usize;
    while out.len() < n {
        while next < n && set.len() < concurrency.max(1) {
            let uri = uri.clone();
            let local = (source_addrs > 1).then(|| IpAddr::from([127, 0, 0, 1 + (next % source_addrs as usize) as u8]));
            let name = format!("{name}-{next}");
            set.spawn_local(async move { Connection::open_lean(&uri, 0, &name, local).await });
            next += 1;
        }
        match set.join_next().await {
            Some(r) => {
                out.push(r.map_err(|e| anyhow!("{e}"))?.with_context(|| format!("opening connection {}", out.len()))?)
            }
            None => break,
        }
    }
    Ok(out)
}

/// Send the requests `reqs` over `conn` with up to `window` in flight, checking each
/// reply with `ok`. Returns the number of replies and a sum `ok` extracts from them.
async fn pipelined(
    conn: &mut Connection,
    reqs: impl Iterator<Item = Method>,
    window: usize,
    ok: impl Fn(&Method) -> Option<u64>,
) -> Result<(u64, u64)> {
    let mut reqs = reqs.peekable();
    let (mut inflight, mut done, mut sum) = (0usize, 0u64, 0u64);
    loop {
        while inflight < window.max(1) {
            match reqs.next() {
                Some(m) => {
                    conn.tx.method(CHANNEL, &m);
                    inflight += 1;
                }
                None => break,
            }
        }
        if inflight == 0 {
            return Ok((done, sum));
        }
        conn.tx.flush().await?;
        let reply = conn.recv_method(CHANNEL).await?;
        sum += ok(&reply).ok_or_else(|| anyhow!("unexpected reply {}", reply.name()))?;
        inflight -= 1;
        done += 1;
    }
}

/// Run `make(i)` for i in 0..n, spread over `conns` (i % conns), pipelined.
async fn spread(
    conns: Vec<Connection>,
    n: u64,
    window: usize,
    make: impl Fn(u64) -> Method + Clone + 'static,
    ok: impl Fn(&Method) -> Option<u64> + Clone + 'static,
) -> Result<(Vec<Connection>, u64)> {
    let c = conns.len() as u64;
    let mut set = JoinSet::new();
    for (k, mut conn) in conns.into_iter().enumerate() {
        let (make, ok) = (make.clone(), ok.clone());
        set.spawn_local(async move {
            let reqs = (k as u64..n).step_by(c as usize).map(make);
            let r = pipelined(&mut conn, reqs, window, ok).await;
            r.map(|(_, sum)| (conn, sum))
        });
    }
    let (mut back, mut total) = (Vec::new(), 0);
    while let Some(r) = set.join_next().await {
        let (conn, sum) = r.map_err(|e| anyhow!("{e}"))??;
        back.push(conn);
        total += sum;
    }
    Ok((back, total))
}

async fn close_all(conns: Vec<Connection>) {
    let mut set = JoinSet::new();
    for c in conns {
        set.spawn_local(async move {
            let _ = c.close().await;
        });
    }
    while set.join_next().await.is_some() {}
}

/// RSS sampled once a second while a workload runs.
#[derive(Clone, Default)]
struct Sampler(Rc<RefCell<Vec<(f64, u64)>>>);

impl Sampler {
    fn start(pid: Option<u32>, t0: Instant) -> Self {
        let s = Sampler::default();
        let samples = s.0.clone();
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if Rc::strong_count(&samples) == 1 {
                    return;
                }
                if let Some(kb) = rss_kb(pid) {
                    samples.borrow_mut().push((t0.elapsed().as_secs_f64(), kb));
                }
            }
        });
        s
    }

    fn json(&self) -> Value {
        let v = self.0.borrow();
        // At most ~60 points in the result, whatever the duration.
        let step = v.len().div_ceil(60).max(1);
        json!(v.iter().step_by(step).map(|(t, kb)| json!([(t * 10.0).round() / 10.0, kb])).collect::<Vec<_>>())
    }
}

/// How late this (single-threaded) load generator runs: a task asks to wake every
/// [`LOOP_LAG_PERIOD`] and records by how much each wake-up overshoots. When the
/// generator's thread is saturated (or starved of CPU by the broker and other processes),
/// every latency it measures includes that delay; a p99 lag near a latency's p99 means the
/// latency is the generator's, not the broker's.
#[derive(Clone, Default)]
struct LoopLag(Rc<RefCell<Histogram>>);

const LOOP_LAG_PERIOD: Duration = Duration::from_millis(10);

impl LoopLag {
    fn start() -> Self {
        let lag = LoopLag::default();
        let h = lag.0.clone();
        tokio::task::spawn_local(async move {
            let mut due = Instant::now() + LOOP_LAG_PERIOD;
            loop {
                tokio::time::sleep_until(due.into()).await;
                if Rc::strong_count(&h) == 1 {
                    return;
                }
                let now = Instant::now();
                h.borrow_mut().record(now.saturating_duration_since(due).as_nanos() as u64);
                due = now + LOOP_LAG_PERIOD;
            }
        });
        lag
    }

    fn json(&self) -> Value {
        latency_json(&self.0.borrow())
    }
}

// ------------------------------------------------------------------ workloads

pub fn main_with(opts: ScaleOptions) -> Result<Value> {
    let uri = AmqpUri::parse(&opts.common.uri)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(opts.common, opts.workload, uri))
}

async fn run(c: Common, w: Workload, uri: AmqpUri) -> Result<Value> {
    let pid = c.broker_pid;
    let conns = c.conns.max(1);
    let prefix = c.prefix.clone();
    match w {
        Workload::Declare { queues, durable } => {
            let cs = open_many(&uri, conns, 100, 1, "scale-declare").await?;
            let before = rss_kb(pid);
            let cpu0 = cpu_seconds(pid);
            let t0 = Instant::now();
            let p = prefix.clone();
            let make = move |i| queue_declare(format!("{p}{i}"), durable, false, false, FieldTable::new());
            let ok = |m: &Method| matches!(m, Method::QueueDeclareOk { .. }).then_some(1);
            let (cs, n) = spread(cs, queues, c.window, make, ok).await?;
            let secs = t0.elapsed().as_secs_f64();
            let cpu = cpu_seconds(pid).zip(cpu0).map(|(a, b)| a - b);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let after = rss_kb(pid);
            close_all(cs).await;
            Ok(json!({"workload": "declare", "queues": n, "durable": durable, "conns": conns, "window": c.window,
                "seconds": secs, "rate": rate(n, secs), "broker_cpu_s": cpu, "rss_before_kb": before, "rss_after_kb": after,
                "rss_per_queue_bytes": per(before.zip(after), n)}))
        }
        Workload::Bind { queues, bindings, durable } => {
            let mut cs = open_many(&uri, conns, 100, 1, "scale-bind").await?;
            let declare = Method::ExchangeDeclare {
                ticket: 0,
                exchange: c.exchange.clone(),
                kind: "topic".into(),
                passive: false,
                durable,
                auto_delete: false,
                internal: false,
                nowait: false,
                arguments: FieldTable::new(),
            };
            cs[0].rpc(&declare).await?;
            let before = rss_kb(pid);
            let cpu0 = cpu_seconds(pid);
            let t0 = Instant::now();
            let (p, x) = (prefix.clone(), c.exchange.clone());
            let make = move |i| Method::QueueBind {
                ticket: 0,
                queue: queue_of(&p, i, queues),
                exchange: x.clone(),
                routing_key: pattern(i),
                nowait: false,
                arguments: FieldTable::new(),
            };
            let ok = |m: &Method| matches!(m, Method::QueueBindOk).then_some(1);
            let (cs, n) = spread(cs, bindings, c.window, make, ok).await?;
            let secs = t0.elapsed().as_secs_f64();
            let cpu = cpu_seconds(pid).zip(cpu0).map(|(a, b)| a - b);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let after = rss_kb(pid);
            close_all(cs).await;
            Ok(json!({"workload": "bind", "bindings": n, "queues": queues, "durable": durable, "conns": conns,
                "window": c.window, "seconds": secs, "rate": rate(n, secs), "broker_cpu_s": cpu, "rss_before_kb": before,
                "rss_after_kb": after, "rss_per_binding_bytes": per(before.zip(after), n)}))
        }
        Workload::Fill { queues, messages } => {
            let mut conn = Connection::open(&uri, 0, "scale-fill").await?;
            conn.rpc(&Method::ConfirmSelect { nowait: false }).await?;
            let t0 = Instant::now();
            let mut published = 0u64;
            for q in 0..queues {
                let t = PublishTemplate::new("", &format!("{prefix}{q}"), true, 16, conn.frame_max, false);
                for _ in 0..messages {
                    t.append(&mut conn.tx.buf, 0);
                }
                published += messages;
            }
            conn.tx.flush().await?;
            let (mut confirmed, mut tracker) = (0u64, ConfirmTracker::default());
            while confirmed < published {
                match conn.rx.next().await? {
                    Incoming::Hot(Hot::Ack { delivery_tag, multiple }) => {
                        confirmed += tracker.confirm(delivery_tag, multiple)
                    }
                    Incoming::Hot(Hot::Nack { .. }) => bail!("nack while filling"),
                    Incoming::Frame(Frame::Method {
                        method: Method::ConnectionClose { reply_code, reply_text, .. },
                        ..
                    }) => bail!("broker closed the connection: {reply_code} {reply_text}"),
                    _ => {}
                }
            }
            conn.close().await?;
            Ok(
                json!({"workload": "fill", "queues": queues, "messages": published, "seconds": t0.elapsed().as_secs_f64()}),
            )
        }
        Workload::Delete { queues } => {
            let cs = open_many(&uri, conns, 100, 1, "scale-delete").await?;
            let before = rss_kb(pid);
            let t0 = Instant::now();
            let p = prefix.clone();
            let make = move |i| Method::QueueDelete {
                ticket: 0,
                queue: format!("{p}{i}"),
                if_unused: false,
                if_empty: false,
                nowait: false,
            };
            let ok = |m: &Method| matches!(m, Method::QueueDeleteOk { .. }).then_some(1);
            let (mut cs, n) = spread(cs, queues, c.window, make, ok).await?;
            let secs = t0.elapsed().as_secs_f64();
            // The exchange too (absent is fine: RabbitMQ and Warren both answer delete-ok).
            let _ = cs[0]
                .rpc(&Method::ExchangeDelete {
                    ticket: 0,
                    exchange: c.exchange.clone(),
                    if_unused: false,
                    nowait: false,
                })
                .await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = rss_kb(pid);
            close_all(cs).await;
            Ok(json!({"workload": "delete", "queues": n, "conns": conns, "window": c.window, "seconds": secs,
                "rate": rate(n, secs), "rss_before_kb": before, "rss_after_kb": after}))
        }
        Workload::Check { queues } => {
            let t0 = Instant::now();
            let (n, messages) = check_all(&uri, &prefix, queues, conns, c.window).await?;
            Ok(json!({"workload": "check", "queues": n, "messages": messages, "seconds": t0.elapsed().as_secs_f64()}))
        }
        Workload::Restart { queues, messages, pid_file, log, timeout, command } => {
            let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
            let t0 = Instant::now();
            let child = std::process::Command::new(&command[0])
                .args(&command[1..])
                .stdin(std::process::Stdio::null())
                .stdout(log_file.try_clone()?)
                .stderr(log_file)
                .spawn()
                .with_context(|| format!("starting {command:?}"))?;
            std::fs::write(&pid_file, child.id().to_string())?;
            let deadline = t0 + Duration::from_secs_f64(timeout);
            loop {
                if tokio::net::TcpStream::connect(uri.addr).await.is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("the port did not accept within {timeout} s");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let accept_s = t0.elapsed().as_secs_f64();
            // Until a handshake and every passive declare succeed.
            let (n, got) = loop {
                match check_all(&uri, &prefix, queues, conns, c.window).await {
                    Ok(r) => break r,
                    Err(e) if Instant::now() > deadline => return Err(e.context("queues did not all serve in time")),
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            let serve_s = t0.elapsed().as_secs_f64();
            if messages >= 0 && got != messages as u64 {
                bail!("after restart the queues hold {got} messages, expected {messages}");
            }
            Ok(json!({"workload": "restart", "queues": n, "messages": got, "accept_s": accept_s, "serve_s": serve_s}))
        }
        Workload::Route { bindings, duration, confirm } => route(&uri, &c, bindings, duration, confirm, pid).await,
        Workload::Fanout { queues, duration, confirm } => fanout(&uri, &c, queues, duration, confirm, pid).await,
        Workload::Connections { n, rate, duration, consume, source_addrs, open_concurrency } => {
            connections(&uri, &c, n, rate, duration, consume, source_addrs, open_concurrency).await
        }
        Workload::Consumers { n, layout, messages, prefetch } => {
            consumers(&uri, &c, n, &layout, messages, prefetch).await
        }
        Workload::ConnChurn { rate, duration, concurrency, threads } => {
            conn_churn(&uri, pid, rate, duration, concurrency, threads).await
        }
        Workload::QueueChurn { duration } => queue_churn(&uri, pid, conns, duration).await,
    }
}

/// Passive-declare PREFIX0..PREFIX(N-1): (queues answered, total messages).
async fn check_all(uri: &AmqpUri, prefix: &str, queues: u64, conns: usize, window: usize) -> Result<(u64, u64)> {
    let cs = open_many(uri, conns, 100, 1, "scale-check").await?;
    let p = prefix.to_owned();
    let make = move |i| queue_declare(format!("{p}{i}"), false, true, false, FieldTable::new());
    let ok = |m: &Method| match m {
        Method::QueueDeclareOk { message_count, .. } => Some(u64::from(*message_count)),
        _ => None,
    };
    let (cs, messages) = spread(cs, queues, window, make, ok).await?;
    close_all(cs).await;
    Ok((queues, messages))
}

/// Publish from `template(i)` with up to `confirm` unconfirmed, for `duration`: (published, confirmed).
async fn publish_confirmed(
    conn: &mut Connection,
    duration: f64,
    confirm: usize,
    template: impl Fn(u64) -> usize,
    templates: &[PublishTemplate],
) -> Result<(u64, u64)> {
    conn.rpc(&Method::ConfirmSelect { nowait: false }).await?;
    let end = Instant::now() + Duration::from_secs_f64(duration);
    let (mut published, mut confirmed) = (0u64, 0u64);
    let mut tracker = ConfirmTracker::default();
    let mut i = 0u64;
    while Instant::now() < end || confirmed < published {
        if Instant::now() < end {
            let room = (confirm as u64).saturating_sub(published - confirmed).min(100);
            for _ in 0..room {
                templates[template(i)].append(&mut conn.tx.buf, 0);
                i += 1;
            }
            published += room;
            conn.tx.flush().await?;
        }
        loop {
            match conn.rx.next().await? {
                Incoming::Hot(Hot::Ack { delivery_tag, multiple }) => {
                    confirmed += tracker.confirm(delivery_tag, multiple);
                }
                Incoming::Hot(Hot::Nack { .. }) => bail!("broker nacked a publish"),
                Incoming::Frame(Frame::Method { method: Method::ConnectionClose { reply_text, .. }, .. }) => {
                    bail!("broker closed the connection: {reply_text}")
                }
                _ => continue,
            }
            if conn.rx.next_buffered_is_empty() {
                break;
            }
        }
    }
    Ok((published, confirmed))
}

async fn route(
    uri: &AmqpUri,
    c: &Common,
    bindings: u64,
    duration: f64,
    confirm: usize,
    pid: Option<u32>,
) -> Result<Value> {
    let mut conn = Connection::open(uri, 0, "scale-route").await?;
    // 10,000 keys drawn over the bindings (a key per binding would be as many templates).
    let keys = 10_000u64.min(bindings.max(1));
    let step = (bindings / keys).max(1);
    let templates: Vec<PublishTemplate> = (0..keys)
        .map(|k| PublishTemplate::new(&c.exchange, &key_for(k * step + k % step), false, 16, conn.frame_max, false))
        .collect();
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let (published, confirmed) =
        publish_confirmed(&mut conn, duration, confirm, |i| (i % keys) as usize, &templates).await?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid).zip(cpu0).map(|(a, b)| a - b);
    conn.close().await?;
    Ok(json!({"workload": "route", "bindings": bindings, "keys": keys, "published": published,
        "confirmed": confirmed, "seconds": secs, "rate": rate(confirmed, secs), "broker_cpu_s": cpu}))
}

async fn fanout(
    uri: &AmqpUri,
    c: &Common,
    queues: u64,
    duration: f64,
    confirm: usize,
    pid: Option<u32>,
) -> Result<Value> {
    let mut conn = Connection::open(uri, 0, "scale-fanout").await?;
    let x = "scale.fanout".to_owned();
    conn.rpc(&Method::ExchangeDeclare {
        ticket: 0,
        exchange: x.clone(),
        kind: "fanout".into(),
        passive: false,
        durable: false,
        auto_delete: false,
        internal: false,
        nowait: false,
        arguments: FieldTable::new(),
    })
    .await?;
    let p = format!("{}fan-", c.prefix);
    let p2 = p.clone();
    let reqs = (0..queues).map(|i| queue_declare(format!("{p2}{i}"), false, false, false, max_length(1000)));
    pipelined(&mut conn, reqs, 100, |m| matches!(m, Method::QueueDeclareOk { .. }).then_some(1)).await?;
    let reqs = (0..queues).map(|i| Method::QueueBind {
        ticket: 0,
        queue: format!("{p}{i}"),
        exchange: x.clone(),
        routing_key: String::new(),
        nowait: false,
        arguments: FieldTable::new(),
    });
    pipelined(&mut conn, reqs, 100, |m| matches!(m, Method::QueueBindOk).then_some(1)).await?;
    let templates = [PublishTemplate::new(&x, "", false, 16, conn.frame_max, false)];
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let (published, confirmed) = publish_confirmed(&mut conn, duration, confirm, |_| 0, &templates).await?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid).zip(cpu0).map(|(a, b)| a - b);
    let reqs = (0..queues).map(|i| Method::QueueDelete {
        ticket: 0,
        queue: format!("{p}{i}"),
        if_unused: false,
        if_empty: false,
        nowait: false,
    });
    pipelined(&mut conn, reqs, 100, |m| matches!(m, Method::QueueDeleteOk { .. }).then_some(1)).await?;
    conn.close().await?;
    Ok(json!({"workload": "fanout", "queues": queues, "published": published, "confirmed": confirmed,
        "seconds": secs, "rate": rate(confirmed, secs), "deliveries_per_s": rate(confirmed * queues, secs),
        "broker_cpu_s": cpu}))
}

fn latency_json(h: &Histogram) -> Value {
    let us = |v: Option<u64>| v.map(|ns| (ns as f64 / 1000.0).round());
    json!({"count": h.count(), "p50_us": us(h.percentile(50.0)), "p99_us": us(h.percentile(99.0)),
        "max_us": us(h.max())})
}

#[allow(clippy::too_many_arguments)]
async fn connections(
    uri: &AmqpUri,
    c: &Common,
    n: usize,
    per_conn_rate: f64,
    duration: f64,
    consume: bool,
    source_addrs: u8,
    open_concurrency: usize,
) -> Result<Value> {
    let pid = c.broker_pid;
    let queues = 100usize.min(n.max(1));
    let q = |i: usize| format!("{}conn-{}", c.prefix, i % queues);
    {
        let mut setup = Connection::open(uri, 0, "scale-conn-setup").await?;
        let reqs = (0..queues).map(|i| queue_declare(q(i), false, false, false, max_length(10_000)));
        pipelined(&mut setup, reqs, 100, |m| matches!(m, Method::QueueDeclareOk { .. }).then_some(1)).await?;
        setup.close().await?;
    }
    let before = rss_kb(pid);
    let t_open = Instant::now();
    let cs = open_many(uri, n, open_concurrency, source_addrs, "scale-conn").await?;
    let open_s = t_open.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_open = rss_kb(pid);
    let hist = Rc::new(RefCell::new(Histogram::new()));
    // Publishing: from the time each publish was due (its schedule), and how late it was
    // sent (the generator's lag), so the figures say whose delay a latency is.
    let hist_sched = Rc::new(RefCell::new(Histogram::new()));
    let send_lag = Rc::new(RefCell::new(Histogram::new()));
    let errors = Rc::new(RefCell::new(Vec::<String>::new()));
    let count = Rc::new(RefCell::new(0u64));
    let start = Instant::now() + Duration::from_secs(1);
    let end = start + Duration::from_secs_f64(duration);
    let period = Duration::from_secs_f64(1.0 / per_conn_rate.max(0.001));
    let mut set = JoinSet::new();
    let frame_max = cs.first().map_or(131_072, |c| c.frame_max);
    for (i, mut conn) in cs.into_iter().enumerate() {
        let (hist, errors, count) = (hist.clone(), errors.clone(), count.clone());
        let (hist_sched, send_lag) = (hist_sched.clone(), send_lag.clone());
        let queue = q(i);
        set.spawn_local(async move {
            let r: Result<()> = async {
                if consume {
                    conn.rpc(&Method::BasicConsume {
                        ticket: 0,
                        queue,
                        consumer_tag: String::new(),
                        no_local: false,
                        no_ack: true,
                        exclusive: false,
                        nowait: false,
                        arguments: FieldTable::new(),
                    })
                    .await?;
                    let mut body_pending = false;
                    loop {
                        let next = tokio::time::timeout_at(end.into(), conn.rx.next()).await;
                        let Ok(frame) = next else { break };
                        match frame? {
                            Incoming::Hot(Hot::Deliver { .. }) => body_pending = true,
                            Incoming::Hot(Hot::Body { timestamp: Some(ts), .. }) if body_pending => {
                                body_pending = false;
                                hist.borrow_mut().record(now_ns().saturating_sub(ts));
                                *count.borrow_mut() += 1;
                            }
                            _ => {}
                        }
                    }
                } else {
                    conn.rpc(&Method::ConfirmSelect { nowait: false }).await?;
                    let t = PublishTemplate::new("", &queue, false, 16, frame_max, false);
                    // Spread the connections' phases over one period.
                    let phase = period.mul_f64((i as f64 * 0.618_033_988_7) % 1.0);
                    let mut next = start + phase;
                    while next < end {
                        tokio::time::sleep_until(next.into()).await;
                        let sent = Instant::now();
                        t.append(&mut conn.tx.buf, 0);
                        conn.tx.flush().await?;
                        loop {
                            match conn.rx.next().await? {
                                Incoming::Hot(Hot::Ack { .. }) => break,
                                Incoming::Hot(Hot::Nack { .. }) => bail!("nack"),
                                _ => {}
                            }
                        }
                        hist.borrow_mut().record(sent.elapsed().as_nanos() as u64);
                        hist_sched.borrow_mut().record(next.elapsed().as_nanos() as u64);
                        send_lag.borrow_mut().record(sent.saturating_duration_since(next).as_nanos() as u64);
                        *count.borrow_mut() += 1;
                        next += period;
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = r {
                errors.borrow_mut().push(format!("{e:#}"));
            }
            conn
        });
    }
    // With --consume one publisher feeds them all: n * rate msg/s over the queues.
    let feeder = if consume {
        let mut p = Connection::open(uri, 0, "scale-conn-feeder").await?;
        let templates: Vec<_> =
            (0..queues).map(|i| PublishTemplate::new("", &q(i), false, 16, frame_max, true)).collect();
        let total_rate = n as f64 * per_conn_rate;
        Some(tokio::task::spawn_local(async move {
            tokio::time::sleep_until(start.into()).await;
            let mut sent = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while Instant::now() < end {
                tick.tick().await;
                let due = (start.elapsed().as_secs_f64() * total_rate) as u64;
                while sent < due {
                    templates[(sent % queues as u64) as usize].append(&mut p.tx.buf, now_ns());
                    sent += 1;
                }
                p.tx.flush().await?;
            }
            p.close().await?;
            anyhow::Ok(sent)
        }))
    } else {
        None
    };
    tokio::time::sleep_until(start.into()).await;
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let sampler = Sampler::start(pid, t0);
    let loop_lag = LoopLag::start();
    let mut back = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        back.push(r.map_err(|e| anyhow!("{e}"))?);
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid).zip(cpu0).map(|(a, b)| a - b);
    let fed = match feeder {
        Some(f) => Some(f.await.map_err(|e| anyhow!("{e}"))??),
        None => None,
    };
    let rss_run = rss_kb(pid);
    close_all(back).await;
    let errors = errors.borrow();
    let h = hist.borrow();
    Ok(json!({"workload": if consume { "connections-consume" } else { "connections-publish" }, "connections": n,
        "rate_per_conn": per_conn_rate, "open_s": open_s, "open_rate": rate(n as u64, open_s), "seconds": secs,
        "messages": *count.borrow(), "fed": fed, "latency": latency_json(&h),
        "latency_from_schedule": (!consume).then(|| latency_json(&hist_sched.borrow())),
        "send_lag": (!consume).then(|| latency_json(&send_lag.borrow())), "generator_loop_lag": loop_lag.json(),
        "broker_cpu_s": cpu, "broker_core_fraction": cpu.map(|x| (x / secs * 1000.0).round() / 1000.0),
        "rss_before_kb": before, "rss_after_open_kb": after_open, "rss_during_kb": rss_run,
        "rss_per_connection_bytes": per(before.zip(after_open), n as u64), "rss_samples": sampler.json(),
        "errors": errors.len(), "first_errors": errors.iter().take(3).collect::<Vec<_>>()}))
}

async fn consumers(uri: &AmqpUri, c: &Common, n: usize, layout: &str, messages: u64, prefetch: u16) -> Result<Value> {
    let one_queue = match layout {
        "one-queue" => true,
        "queue-each" => false,
        other => bail!("--layout is one-queue or queue-each, not {other:?}"),
    };
    let conns = c.conns.clamp(1, n.max(1));
    let per_conn = n.div_ceil(conns);
    if per_conn > 2000 {
        bail!("{per_conn} channels per connection: use more --conns");
    }
    let qname = |i: usize| if one_queue { format!("{}cons", c.prefix) } else { format!("{}cons-{i}", c.prefix) };
    let nq = if one_queue { 1 } else { n };
    let mut setup = Connection::open(uri, 0, "scale-consumers-setup").await?;
    let reqs = (0..nq).map(|i| queue_declare(qname(i), false, false, false, FieldTable::new()));
    pipelined(&mut setup, reqs, 100, |m| matches!(m, Method::QueueDeclareOk { .. }).then_some(1)).await?;
    let cs = open_many(uri, conns, 100, 1, "scale-consumers").await?;
    // Per consumer (connection k, channel ch): deliveries.
    let counts = Rc::new(RefCell::new(vec![0u64; n]));
    let total = Rc::new(RefCell::new(0u64));
    let last = Rc::new(RefCell::new(Instant::now()));
    let done = Rc::new(tokio::sync::Notify::new());
    let mut set = JoinSet::new();
    let ready = Rc::new(RefCell::new(0usize));
    let all_ready = Rc::new(tokio::sync::Notify::new());
    for (k, mut conn) in cs.into_iter().enumerate() {
        let ids: Vec<usize> = (k * per_conn..((k + 1) * per_conn).min(n)).collect();
        let (counts, total, last, done, ready, all_ready) =
            (counts.clone(), total.clone(), last.clone(), done.clone(), ready.clone(), all_ready.clone());
        let queues: Vec<String> = ids.iter().map(|&i| qname(i)).collect();
        set.spawn_local(async move {
            let r: Result<()> = async {
                for (j, queue) in queues.into_iter().enumerate() {
                    let ch = CHANNEL + j as u16;
                    if ch != CHANNEL {
                        conn.rpc_on(ch, &Method::ChannelOpen { out_of_band: String::new() }).await?;
                    }
                    conn.rpc_on(ch, &Method::BasicQos { prefetch_size: 0, prefetch_count: prefetch, global: false })
                        .await?;
                    conn.rpc_on(
                        ch,
                        &Method::BasicConsume {
                            ticket: 0,
                            queue,
                            consumer_tag: String::new(),
                            no_local: false,
                            no_ack: false,
                            exclusive: false,
                            nowait: false,
                            arguments: FieldTable::new(),
                        },
                    )
                    .await?;
                }
                *ready.borrow_mut() += ids.len();
                all_ready.notify_one();
                loop {
                    match conn.rx.next().await? {
                        Incoming::Hot(Hot::Deliver { channel, delivery_tag }) => {
                            let j = usize::from(channel - CHANNEL);
                            counts.borrow_mut()[ids[j]] += 1;
                            wire::frame::encode_method(
                                &mut conn.tx.buf,
                                channel,
                                &Method::BasicAck { delivery_tag, multiple: false },
                            );
                            let mut t = total.borrow_mut();
                            *t += 1;
                            *last.borrow_mut() = Instant::now();
                            if *t >= messages {
                                done.notify_one();
                            }
                        }
                        Incoming::Frame(Frame::Method {
                            method: Method::ConnectionClose { reply_text, .. }, ..
                        }) => {
                            bail!("broker closed the connection: {reply_text}")
                        }
                        _ => {}
                    }
                    if conn.rx.next_buffered_is_empty() {
                        conn.tx.flush().await?;
                    }
                }
            }
            .await;
            r
        });
    }
    let setup_t0 = Instant::now();
    while *ready.borrow() < n {
        tokio::select! {
            _ = all_ready.notified() => {}
            Some(r) = set.join_next() => { r.map_err(|e| anyhow!("{e}"))??; }
        }
    }
    let consume_setup_s = setup_t0.elapsed().as_secs_f64();
    // Publish the messages (round robin over the queues), confirms in windows of 1000.
    let templates: Vec<_> =
        (0..nq).map(|i| PublishTemplate::new("", &qname(i), false, 16, setup.frame_max, false)).collect();
    let t0 = Instant::now();
    let publisher = tokio::task::spawn_local(async move {
        setup.rpc(&Method::ConfirmSelect { nowait: false }).await?;
        let (mut published, mut confirmed) = (0u64, 0u64);
        let mut tracker = ConfirmTracker::default();
        while confirmed < messages {
            let room = 1000u64.saturating_sub(published - confirmed).min(messages - published);
            for _ in 0..room {
                templates[(published % nq as u64) as usize].append(&mut setup.tx.buf, 0);
                published += 1;
            }
            setup.tx.flush().await?;
            match setup.rx.next().await? {
                Incoming::Hot(Hot::Ack { delivery_tag, multiple }) => {
                    confirmed += tracker.confirm(delivery_tag, multiple)
                }
                Incoming::Hot(Hot::Nack { .. }) => bail!("broker nacked a publish"),
                _ => {}
            }
        }
        setup.close().await?;
        anyhow::Ok(())
    });
    let wait = async {
        loop {
            if *total.borrow() >= messages {
                return;
            }
            done.notified().await;
        }
    };
    tokio::select! {
        _ = wait => {}
        Some(r) = set.join_next() => { r.map_err(|e| anyhow!("{e}"))??; bail!("a consumer connection ended early"); }
        _ = tokio::time::sleep(Duration::from_secs(600)) => bail!("not every message was delivered within 600 s"),
    }
    let secs = last.borrow().duration_since(t0).as_secs_f64();
    publisher.await.map_err(|e| anyhow!("{e}"))??;
    set.abort_all();
    let counts = counts.borrow();
    let mean = messages as f64 / n as f64;
    let var = counts.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
    let (min, max) = (counts.iter().min().copied().unwrap_or(0), counts.iter().max().copied().unwrap_or(0));
    let starved = counts.iter().filter(|&&x| x == 0).count();
    Ok(json!({"workload": format!("consumers-{layout}"), "consumers": n, "conns": conns, "messages": messages,
        "prefetch": prefetch, "consume_setup_s": consume_setup_s, "seconds": secs, "rate": rate(messages, secs),
        "per_consumer": {"min": min, "max": max, "mean": mean, "stddev": var.sqrt(),
        "cv": if mean > 0.0 { var.sqrt() / mean } else { 0.0 }, "starved": starved}}))
}

/// What one generator thread's churn loop did.
#[derive(Default)]
struct ChurnCount {
    done: u64,
    failed: u64,
    first_error: Option<String>,
}

impl ChurnCount {
    fn add(&mut self, r: Result<()>) {
        match r {
            Ok(()) => self.done += 1,
            Err(e) => {
                self.failed += 1;
                self.first_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
}

/// Open, publish, close at `target` connections/s until `end`, `concurrency` at a time.
async fn churn_loop(uri: &AmqpUri, queue: &str, target: f64, end: Instant, concurrency: usize) -> ChurnCount {
    let t0 = Instant::now();
    let mut started = 0u64;
    let mut count = ChurnCount::default();
    let mut set = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let join = |r: Result<Result<()>, tokio::task::JoinError>| r.map_err(|e| anyhow!("{e}")).and_then(|r| r);
    while Instant::now() < end {
        tick.tick().await;
        let due = (t0.elapsed().as_secs_f64() * target) as u64;
        while started < due && set.len() < concurrency.max(1) {
            let (uri, queue) = (uri.clone(), queue.to_owned());
            set.spawn_local(async move {
                let mut conn = Connection::open_lean(&uri, 0, "scale-churn", None).await?;
                PublishTemplate::new("", &queue, false, 16, conn.frame_max, false).append(&mut conn.tx.buf, 0);
                conn.close().await
            });
            started += 1;
        }
        while let Some(r) = set.try_join_next() {
            count.add(join(r));
        }
    }
    while let Some(r) = set.join_next().await {
        count.add(join(r));
    }
    count
}

async fn conn_churn(
    uri: &AmqpUri,
    pid: Option<u32>,
    target: f64,
    duration: f64,
    concurrency: usize,
    threads: usize,
) -> Result<Value> {
    let queue = "scale-churn".to_owned();
    let threads = threads.max(1);
    let mut setup = Connection::open(uri, 0, "scale-churn-setup").await?;
    setup.rpc(&queue_declare(queue.clone(), false, false, false, max_length(1000))).await?;
    let before = rss_kb(pid);
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let sampler = Sampler::start(pid, t0);
    let loop_lag = LoopLag::start();
    let end = t0 + Duration::from_secs_f64(duration);
    let (rate_each, conc_each) = (target / threads as f64, concurrency.div_ceil(threads));
    // Threads 2..: their own single-threaded runtime each; this thread is the first.
    let others: Vec<_> = (1..threads)
        .map(|_| {
            let (uri, queue) = (uri.clone(), queue.clone());
            std::thread::spawn(move || -> Result<ChurnCount> {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let local = tokio::task::LocalSet::new();
                Ok(local.block_on(&rt, churn_loop(&uri, &queue, rate_each, end, conc_each)))
            })
        })
        .collect();
    let mut count = churn_loop(uri, &queue, rate_each, end, conc_each).await;
    for t in others {
        let c = tokio::task::spawn_blocking(move || t.join())
            .await
            .map_err(|e| anyhow!("{e}"))?
            .map_err(|_| anyhow!("a churn thread panicked"))??;
        count.done += c.done;
        count.failed += c.failed;
        if count.first_error.is_none() {
            count.first_error = c.first_error;
        }
    }
    let ChurnCount { done, failed, first_error } = count;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid).zip(cpu0).map(|(a, b)| a - b);
    let at_end = rss_kb(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let settled = rss_kb(pid);
    let (_, depth) = match setup.rpc(&queue_declare(queue.clone(), false, true, false, FieldTable::new())).await? {
        Method::QueueDeclareOk { message_count, .. } => ((), message_count),
        other => bail!("unexpected {}", other.name()),
    };
    setup.rpc(&Method::QueueDelete { ticket: 0, queue, if_unused: false, if_empty: false, nowait: false }).await?;
    setup.close().await?;
    Ok(json!({"workload": "conn-churn", "target_rate": target, "seconds": secs, "completed": done, "failed": failed,
        "rate": rate(done, secs), "queue_depth_after": depth, "broker_cpu_s": cpu, "rss_before_kb": before,
        "rss_end_kb": at_end, "rss_settled_kb": settled, "rss_samples": sampler.json(), "first_error": first_error,
        "threads": threads, "broker_cpu_us_per_cycle": cpu.map(|c| (c * 1e6 / done.max(1) as f64).round()),
        "generator_loop_lag": loop_lag.json()}))
}

async fn queue_churn(uri: &AmqpUri, pid: Option<u32>, conns: usize, duration: f64) -> Result<Value> {
    let cs = open_many(uri, conns, 100, 1, "scale-qchurn").await?;
    let before = rss_kb(pid);
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let sampler = Sampler::start(pid, t0);
    let end = t0 + Duration::from_secs_f64(duration);
    let mut set = JoinSet::new();
    for (k, mut conn) in cs.into_iter().enumerate() {
        set.spawn_local(async move {
            let mut cycles = 0u64;
            while Instant::now() < end {
                let queue = format!("reply-{k}-{cycles}");
                match conn.rpc(&queue_declare(queue.clone(), false, false, true, FieldTable::new())).await? {
                    Method::QueueDeclareOk { .. } => {}
                    other => bail!("unexpected {}", other.name()),
                }
                PublishTemplate::new("", &queue, false, 16, conn.frame_max, false).append(&mut conn.tx.buf, 0);
                // Get until the message is there (publish and get are on one channel: in order).
                match conn.rpc(&Method::BasicGet { ticket: 0, queue: queue.clone(), no_ack: true }).await? {
                    Method::BasicGetOk { .. } => {}
                    other => bail!("expected get-ok, got {}", other.name()),
                }
                match conn
                    .rpc(&Method::QueueDelete { ticket: 0, queue, if_unused: false, if_empty: false, nowait: false })
                    .await?
                {
                    Method::QueueDeleteOk { .. } => {}
                    other => bail!("unexpected {}", other.name()),
                }
                cycles += 1;
            }
            let _ = conn.close().await;
            anyhow::Ok(cycles)
        });
    }
    let mut cycles = 0;
    while let Some(r) = set.join_next().await {
        cycles += r.map_err(|e| anyhow!("{e}"))??;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid).zip(cpu0).map(|(a, b)| a - b);
    let at_end = rss_kb(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let settled = rss_kb(pid);
    Ok(json!({"workload": "queue-churn", "conns": conns, "seconds": secs, "cycles": cycles, "rate": rate(cycles, secs),
        "broker_cpu_s": cpu, "rss_before_kb": before, "rss_end_kb": at_end, "rss_settled_kb": settled,
        "rss_samples": sampler.json()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_distinct_and_their_keys_match_them() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..50_000u64 {
            let p = pattern(i);
            if i % 10_000 != 0 {
                assert!(seen.insert(p.clone()), "duplicate pattern {p}");
            }
            let k = key_for(i);
            assert!(!k.contains('*') && !k.contains('#'));
            assert!(broker_free_topic_match(&p, &k), "{p} should match {k}");
        }
        // The mix: 70 % exact, the rest with wildcards.
        let wild = (1..10_000u64).filter(|&i| pattern(i).contains(['*', '#'])).count();
        assert!((2900..3100).contains(&wild), "{wild}");
    }

    /// Reference topic matcher (word lists, recursive), independent of the broker's.
    fn broker_free_topic_match(p: &str, k: &str) -> bool {
        fn m(p: &[&str], k: &[&str]) -> bool {
            match (p.first(), k.first()) {
                (None, None) => true,
                (Some(&"#"), _) => m(&p[1..], k) || (!k.is_empty() && m(p, &k[1..])),
                (Some(&"*"), Some(_)) => m(&p[1..], &k[1..]),
                (Some(a), Some(b)) if a == b => m(&p[1..], &k[1..]),
                _ => false,
            }
        }
        let p: Vec<&str> = p.split('.').collect();
        let k: Vec<&str> = k.split('.').collect();
        m(&p, &k)
    }

    #[test]
    fn options_parse() {
        let o = ScaleOptions::try_parse_from([
            "warren-scale",
            "--conns",
            "10",
            "declare",
            "--queues",
            "100",
            "--durable",
            "--broker-pid",
            "1",
        ])
        .unwrap();
        assert_eq!((o.common.conns, o.common.broker_pid), (10, Some(1)));
        assert!(matches!(o.workload, Workload::Declare { queues: 100, durable: true }));
        let o = ScaleOptions::try_parse_from([
            "warren-scale",
            "restart",
            "--queues",
            "5",
            "--pid-file",
            "p",
            "--log",
            "l",
            "--",
            "warren",
            "--data-dir",
            "d",
        ])
        .unwrap();
        let Workload::Restart { command, messages, .. } = o.workload else { panic!() };
        assert_eq!(command, ["warren", "--data-dir", "d"]);
        assert_eq!(messages, -1);
    }

    #[test]
    fn loop_lag_shows_a_busy_generator_thread() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        let lag = local.block_on(&rt, async {
            let lag = LoopLag::start();
            tokio::time::sleep(Duration::from_millis(50)).await;
            // The thread is busy (as when thousands of connections' frames are due at
            // once): the probe's next wake-up comes late by about that much.
            std::thread::sleep(Duration::from_millis(120));
            tokio::time::sleep(Duration::from_millis(30)).await;
            lag.json()
        });
        let max_us = lag["max_us"].as_f64().unwrap();
        assert!(lag["count"].as_u64().unwrap() >= 3, "{lag}");
        assert!(max_us >= 100_000.0, "the 120 ms stall is seen: {lag}");
        assert!(lag["p50_us"].as_f64().unwrap() < max_us, "{lag}");
    }

    #[test]
    fn rss_of_self_is_readable() {
        assert!(rss_kb(Some(std::process::id())).unwrap() > 0);
        assert_eq!(rss_kb(None), None);
        assert_eq!(per(Some((1000, 2000)), 1024), json!(1000.0));
    }
}
