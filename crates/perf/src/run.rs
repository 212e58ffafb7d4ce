//! Orchestration: declare, start consumers then producers, report every second, stop,
//! summarise.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use wire::Method;

use crate::client::{CLOSE_TIMEOUT, Connection};
use crate::histogram::Histogram;
use crate::options::{Options, Topology};
use crate::stats::{Snapshot, Stats, cpu_seconds};
use crate::uri::AmqpUri;
use crate::{consumer, producer};

/// Everything a worker needs, shared read-only (apart from the atomics in `stats`).
pub struct Ctx {
    pub opts: Options,
    pub uri: AmqpUri,
    pub topo: Topology,
    pub stats: Stats,
}

/// After the producers are done, consumers that receive nothing for this long are
/// considered drained (messages may have been dropped, e.g. by x-max-length).
const DRAIN_IDLE: Duration = Duration::from_secs(3);
/// Connecting and declaring everything must not take longer than this.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// One per-second sample of the live output.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at_s: f64,
    pub published: u64,
    pub confirmed: u64,
    pub consumed: u64,
    pub latency_p99_ns: Option<u64>,
}

#[derive(Debug)]
pub struct Summary {
    pub server: String,
    pub elapsed_s: f64,
    pub totals: Snapshot,
    pub latency: Histogram,
    /// Publish→confirm latencies (with --confirm).
    pub confirm_latency: Histogram,
    pub blocked: u64,
    pub errors: Vec<String>,
    pub cpu_s: Option<f64>,
    pub broker_cpu_s: Option<f64>,
    pub samples: Vec<Sample>,
}

/// Parse-validated options in, process exit code out.
pub fn main_with(opts: Options) -> Result<i32> {
    let uri = opts.validate()?;
    let mut builder = if opts.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(opts.threads as usize);
        b
    };
    let runtime = builder.enable_all().build()?;
    let json = opts.json;
    let summary = runtime.block_on(run(opts.clone(), uri))?;
    if json {
        println!("{}", summary_json(&opts, &summary));
    } else {
        print_summary(&opts, &summary);
    }
    for e in &summary.errors {
        eprintln!("error: {e}");
    }
    Ok(if summary.errors.is_empty() { 0 } else { 1 })
}

pub async fn run(opts: Options, uri: AmqpUri) -> Result<Summary> {
    let topo = opts.topology();
    let ctx = Arc::new(Ctx { opts, uri, topo, stats: Stats::default() });
    let server = tokio::time::timeout(SETUP_TIMEOUT, declare(&ctx))
        .await
        .context("setup timed out")?
        .context("declaring queues and exchanges")?;
    let opts = &ctx.opts;
    let stats = &ctx.stats;
    let mut live = Live::new(opts);
    live.line(&format!(
        "warren-perf: {} producer(s), {} consumer(s), {} queue(s){}, {} B messages{}{} against {} at {}",
        opts.producers,
        opts.consumers,
        ctx.topo.queues.len(),
        if ctx.topo.exchange.is_empty() {
            String::new()
        } else {
            format!(
                " via {} exchange {:?}",
                ctx.topo.exchange_type.map(|t| t.as_str()).unwrap_or("?"),
                ctx.topo.exchange
            )
        },
        opts.size,
        if opts.persistent { ", persistent" } else { "" },
        if opts.confirm > 0 { format!(", confirms ({} in flight)", opts.confirm) } else { String::new() },
        server,
        ctx.uri.addr,
    ));

    let mut workers = JoinSet::new();
    // Consumers first, so the first message published already has somewhere to go.
    for i in 0..opts.consumers {
        workers.spawn(consumer::run(i, ctx.clone()));
    }
    wait_ready(stats, opts.consumers).await?;
    for i in 0..opts.producers {
        workers.spawn(producer::run(i, ctx.clone()));
    }
    wait_ready(stats, opts.consumers + opts.producers).await?;

    // Anything consumed before the start (a backlog from an earlier run) is not ours.
    let baseline = stats.snapshot();
    let _ = stats.take_latency();
    let _ = stats.take_confirm_latency();
    let cpu_start = cpu_seconds(None);
    let broker_cpu_start = opts.broker_pid.and_then(|p| cpu_seconds(Some(p)));
    let start = Instant::now();
    stats.go.send_replace(true);

    let deadline = opts.duration.map(|d| start + Duration::from_secs_f64(d));
    let expected_deliveries: Option<u64> = opts
        .pmessages
        .map(|c| (0..opts.producers).map(|i| c.saturating_mul(ctx.topo.fan_out_of(i, opts.consumers))).sum());
    let mut stop_rx = stats.stop.subscribe();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut next_tick = start + Duration::from_secs(1);
    let mut last = baseline;
    let mut latency = Histogram::new();
    let mut samples = Vec::new();
    let mut last_progress = (baseline.consumed, start);
    loop {
        tokio::select! {
            // Ticks first, so a tick due with the deadline is still reported.
            biased;
            _ = sleep_until(next_tick) => {
                let now = stats.snapshot();
                let d = now - last;
                last = now;
                let interval = stats.take_latency();
                latency.merge(&interval);
                let at_s = start.elapsed().as_secs_f64();
                let sample = Sample {
                    at_s,
                    published: d.published,
                    confirmed: d.confirmed + d.nacked,
                    consumed: d.consumed,
                    latency_p99_ns: interval.percentile(99.0),
                };
                live.sample(opts, &sample);
                samples.push(sample);
                next_tick += Duration::from_secs(1);
            }
            _ = stats.progress.notified() => {}
            _ = stop_rx.wait_for(|s| *s) => break,
            _ = sleep_until(deadline.unwrap_or(start)), if deadline.is_some() => break,
            _ = &mut ctrl_c => break,
        }
        let consumed = stats.consumed.load(Ordering::Acquire);
        if consumed != last_progress.0 {
            last_progress = (consumed, Instant::now());
        }
        if finished(opts, stats, expected_deliveries.map(|e| e + baseline.consumed), last_progress.1) {
            break;
        }
    }
    let totals = stats.snapshot() - baseline;
    let elapsed_s = start.elapsed().as_secs_f64();
    latency.merge(&stats.take_latency());
    let confirm_latency = stats.take_confirm_latency();
    let cpu_s = cpu_seconds(None).zip(cpu_start).map(|(b, a)| b - a);
    let broker_cpu_s = opts.broker_pid.and_then(|p| cpu_seconds(Some(p))).zip(broker_cpu_start).map(|(b, a)| b - a);
    stats.stop.send_replace(true);

    // Workers close their connections; bounded, as a hung broker must not hang us.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT * 3, async { while workers.join_next().await.is_some() {} }).await;
    workers.abort_all();

    Ok(Summary {
        server,
        elapsed_s,
        totals,
        latency,
        confirm_latency,
        blocked: stats.blocked.load(Ordering::Relaxed),
        errors: stats.errors(),
        cpu_s,
        broker_cpu_s,
        samples,
    })
}

/// Whether the run is complete by counts (-C / -D); runs without them go on until the
/// duration, an error or Ctrl-C.
fn finished(opts: &Options, stats: &Stats, expected_consumed: Option<u64>, last_consumed_at: Instant) -> bool {
    let producers_finite = opts.producers == 0 || opts.pmessages.is_some();
    let consumers_finite = opts.consumers == 0 || opts.consumer_count_messages.is_some() || opts.pmessages.is_some();
    if !producers_finite || !consumers_finite {
        return false;
    }
    if stats.producers_done.load(Ordering::Acquire) < opts.producers {
        return false;
    }
    if opts.consumers == 0 {
        return true;
    }
    if opts.consumer_count_messages.is_some() {
        return stats.consumers_done.load(Ordering::Acquire) >= opts.consumers;
    }
    let drained = expected_consumed.is_some_and(|e| stats.consumed.load(Ordering::Acquire) >= e);
    drained || last_consumed_at.elapsed() >= DRAIN_IDLE
}

async fn wait_ready(stats: &Stats, n: usize) -> Result<()> {
    let wait = async {
        let mut stop = stats.stop.subscribe();
        while stats.ready.load(Ordering::Acquire) < n {
            tokio::select! {
                _ = stats.progress.notified() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
    };
    tokio::time::timeout(SETUP_TIMEOUT, wait).await.context("workers did not connect in time")?;
    if stats.stopped() {
        let errors = stats.errors();
        bail!("setup failed: {}", errors.join("; "));
    }
    Ok(())
}

/// Declare the exchange, the queues and their bindings; returns the broker's name and
/// version. With --no-declare only the connection is checked.
async fn declare(ctx: &Ctx) -> Result<String> {
    let opts = &ctx.opts;
    let mut conn = Connection::open(&ctx.uri, opts.heartbeat, "warren-perf setup").await?;
    let server = conn.server.clone();
    if !opts.no_declare {
        let topo = &ctx.topo;
        if let Some(kind) = topo.exchange_type {
            let declare = Method::ExchangeDeclare {
                ticket: 0,
                exchange: topo.exchange.clone(),
                kind: kind.as_str().to_owned(),
                passive: false,
                durable: opts.durable_queue,
                auto_delete: false,
                internal: false,
                nowait: false,
                arguments: Default::default(),
            };
            match conn.rpc(&declare).await? {
                Method::ExchangeDeclareOk => {}
                other => bail!("expected exchange.declare-ok, got {}", other.name()),
            }
        }
        let arguments = opts.queue_arguments();
        for queue in &topo.queues {
            let declare = Method::QueueDeclare {
                ticket: 0,
                queue: queue.clone(),
                passive: false,
                durable: opts.durable_queue,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: arguments.clone(),
            };
            match conn.rpc(&declare).await? {
                Method::QueueDeclareOk { .. } => {}
                other => bail!("expected queue.declare-ok, got {}", other.name()),
            }
            if topo.exchange_type.is_some() {
                let bind = Method::QueueBind {
                    ticket: 0,
                    queue: queue.clone(),
                    exchange: topo.exchange.clone(),
                    routing_key: if topo.fanout() { String::new() } else { queue.clone() },
                    nowait: false,
                    arguments: Default::default(),
                };
                match conn.rpc(&bind).await? {
                    Method::QueueBindOk => {}
                    other => bail!("expected queue.bind-ok, got {}", other.name()),
                }
            }
        }
    }
    conn.close().await?;
    Ok(server)
}

/// Live output: stdout, or stderr when stdout is reserved for the JSON summary.
struct Live {
    quiet: bool,
    to_stderr: bool,
}

impl Live {
    fn new(opts: &Options) -> Self {
        Live { quiet: opts.quiet, to_stderr: opts.json }
    }

    fn line(&mut self, s: &str) {
        if self.quiet {
            return;
        }
        if self.to_stderr {
            let _ = writeln!(std::io::stderr(), "{s}");
        } else {
            let _ = writeln!(std::io::stdout(), "{s}");
        }
    }

    fn sample(&mut self, opts: &Options, s: &Sample) {
        let mut line = format!("{:>6.1}s  sent {:>9} msg/s", s.at_s, s.published);
        if opts.confirm > 0 {
            line += &format!("  confirmed {:>9} msg/s", s.confirmed);
        }
        line += &format!("  received {:>9} msg/s", s.consumed);
        if opts.latency {
            line += &format!("  p99 {}", s.latency_p99_ns.map(fmt_ns).unwrap_or_else(|| "-".into()));
        }
        self.line(&line);
    }
}

/// Human-readable duration from nanoseconds.
fn fmt_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} µs", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2} ms", ns as f64 / 1e6),
        _ => format!("{:.2} s", ns as f64 / 1e9),
    }
}

fn fmt_bytes_per_s(b: f64) -> String {
    if b >= 1e9 {
        format!("{:.2} GB/s", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB/s", b / 1e6)
    } else {
        format!("{:.1} kB/s", b / 1e3)
    }
}

fn rate(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

fn print_summary(opts: &Options, s: &Summary) {
    let t = &s.totals;
    let size = opts.size as f64;
    println!("--- summary ({:.2} s) ---", s.elapsed_s);
    let published = rate(t.published, s.elapsed_s);
    println!("published: {:>11} msgs  {:>10.0} msg/s  {}", t.published, published, fmt_bytes_per_s(published * size));
    if opts.confirm > 0 {
        println!(
            "confirmed: {:>11} msgs  {:>10.0} msg/s  ({} nacked)",
            t.confirmed,
            rate(t.confirmed, s.elapsed_s),
            t.nacked
        );
        let h = &s.confirm_latency;
        let p = |q: f64| h.percentile(q).map(fmt_ns).unwrap_or_else(|| "-".into());
        println!(
            "confirm latency: p50 {}  p99 {}  max {}  ({} samples)",
            p(50.0),
            p(99.0),
            h.max().map(fmt_ns).unwrap_or_else(|| "-".into()),
            h.count()
        );
    }
    let consumed = rate(t.consumed, s.elapsed_s);
    println!("consumed:  {:>11} msgs  {:>10.0} msg/s  {}", t.consumed, consumed, fmt_bytes_per_s(consumed * size));
    if opts.latency {
        let h = &s.latency;
        let p = |q: f64| h.percentile(q).map(fmt_ns).unwrap_or_else(|| "-".into());
        println!(
            "latency:   min {}  p50 {}  p95 {}  p99 {}  max {}  ({} samples)",
            h.min().map(fmt_ns).unwrap_or_else(|| "-".into()),
            p(50.0),
            p(95.0),
            p(99.0),
            h.max().map(fmt_ns).unwrap_or_else(|| "-".into()),
            h.count()
        );
    }
    if let Some(cpu) = s.cpu_s {
        let mut line = format!("cpu:       warren-perf {cpu:.2} s ({:.0}% of a core)", 100.0 * cpu / s.elapsed_s);
        if let Some(b) = s.broker_cpu_s {
            line += &format!(", broker {b:.2} s ({:.0}% of a core)", 100.0 * b / s.elapsed_s);
        }
        println!("{line}");
    }
    if s.blocked > 0 {
        println!("connection.blocked received {} time(s)", s.blocked);
    }
}

pub fn summary_json(opts: &Options, s: &Summary) -> serde_json::Value {
    let t = &s.totals;
    let secs = s.elapsed_s;
    let size = opts.size as f64;
    let us = |ns: Option<u64>| ns.map(|v| v as f64 / 1e3);
    let latency = (opts.latency).then(|| {
        let h = &s.latency;
        serde_json::json!({
            "samples": h.count(),
            "min": us(h.min()),
            "mean": h.mean().map(|m| m / 1e3),
            "p50": us(h.percentile(50.0)),
            "p95": us(h.percentile(95.0)),
            "p99": us(h.percentile(99.0)),
            "p999": us(h.percentile(99.9)),
            "max": us(h.max()),
        })
    });
    let confirm_latency = (opts.confirm > 0).then(|| {
        let h = &s.confirm_latency;
        serde_json::json!({
            "samples": h.count(),
            "p50": us(h.percentile(50.0)),
            "p99": us(h.percentile(99.0)),
            "max": us(h.max()),
        })
    });
    let topo = opts.topology();
    serde_json::json!({
        "tool": "warren-perf",
        "version": env!("CARGO_PKG_VERSION"),
        "server": s.server,
        "config": {
            "producers": opts.producers,
            "consumers": opts.consumers,
            "queues": topo.queues.len(),
            "exchange": topo.exchange,
            "exchange_type": topo.exchange_type.map(|t| t.as_str()),
            "size": opts.size,
            "rate": opts.rate,
            "confirm": opts.confirm,
            "persistent": opts.persistent,
            "durable_queue": opts.durable_queue,
            "prefetch": opts.prefetch,
            "ack_every": opts.effective_ack_every(),
            "auto_ack": opts.auto_ack,
            "pmessages": opts.pmessages,
            "consumer_count_messages": opts.consumer_count_messages,
            "duration": opts.duration,
            "threads": opts.threads,
        },
        "duration_s": secs,
        "published": t.published,
        "publish_rate": rate(t.published, secs),
        "publish_bytes_per_s": rate(t.published, secs) * size,
        "confirmed": t.confirmed,
        "nacked": t.nacked,
        "confirm_rate": rate(t.confirmed, secs),
        "consumed": t.consumed,
        "consume_rate": rate(t.consumed, secs),
        "consume_bytes_per_s": rate(t.consumed, secs) * size,
        "latency_us": latency,
        "confirm_latency_us": confirm_latency,
        "cpu": {
            "perf_s": s.cpu_s,
            "perf_core_fraction": s.cpu_s.map(|c| c / secs),
            "broker_s": s.broker_cpu_s,
            "broker_core_fraction": s.broker_cpu_s.map(|c| c / secs),
        },
        "blocked": s.blocked,
        "errors": s.errors,
        "samples": s.samples.iter().map(|x| serde_json::json!({
            "t": x.at_s,
            "published": x.published,
            "confirmed": x.confirmed,
            "consumed": x.consumed,
            "latency_p99_us": us(x.latency_p99_ns),
        })).collect::<Vec<_>>(),
    })
}
