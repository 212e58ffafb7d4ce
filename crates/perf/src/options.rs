//! Command line options. Short flags follow RabbitMQ's PerfTest where it has one
//! (-x producers, -y consumers, -s size, -r rate, -c confirm, -q prefetch, -A multi-ack,
//! -z duration, -C producer message count, -D consumer message count), so existing
//! benchmark recipes carry over.

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};
use wire::{FieldTable, FieldValue};

use crate::uri::AmqpUri;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "warren-perf",
    version,
    about = "Load generator for AMQP 0-9-1 brokers (Warren, RabbitMQ) on localhost",
    after_help = "Each producer and consumer has its own connection and channel. Producer i publishes to \
                  queue i % N, consumer j consumes from queue j % N (N = --queues, or --fanout-queues \
                  with a fanout exchange)."
)]
pub struct Options {
    /// Broker URI; only localhost / 127.0.0.0/8 / ::1 are accepted.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,

    /// Number of producers (one connection each).
    #[arg(short = 'x', long, default_value_t = 1)]
    pub producers: usize,

    /// Number of consumers (one connection each).
    #[arg(short = 'y', long, default_value_t = 1)]
    pub consumers: usize,

    /// Message body size in bytes.
    #[arg(short = 's', long, default_value_t = 16)]
    pub size: usize,

    /// Messages per second per producer (0 = as fast as possible).
    #[arg(short = 'r', long, default_value_t = 0)]
    pub rate: u64,

    /// Publisher confirms with at most this many unconfirmed messages per producer (0 = no confirms).
    #[arg(short = 'c', long, default_value_t = 0)]
    pub confirm: u64,

    /// Publish persistent messages (delivery mode 2).
    #[arg(short = 'p', long)]
    pub persistent: bool,

    /// basic.qos prefetch count per consumer (0 = unlimited, no basic.qos sent).
    #[arg(short = 'q', long, default_value_t = 1000)]
    pub prefetch: u16,

    /// Acknowledge every N messages with one multiple ack (capped at the prefetch).
    #[arg(short = 'A', long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub ack_every: u64,

    /// Consume in no-ack mode (the broker considers a message acked once sent).
    #[arg(long)]
    pub auto_ack: bool,

    /// Number of queues producers and consumers are spread over.
    #[arg(short = 'Q', long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub queues: u64,

    /// Queue names are PREFIX0, PREFIX1, ...
    #[arg(long, default_value = "perf-")]
    pub queue_prefix: String,

    /// Publish through this exchange (default: the default exchange, routing key = queue name).
    #[arg(long)]
    pub exchange: Option<String>,

    /// Type of --exchange; a fanout exchange is bound to --fanout-queues queues.
    #[arg(long, value_enum)]
    pub exchange_type: Option<ExchangeType>,

    /// With a fanout exchange: number of bound queues (default: --queues).
    #[arg(long, default_value_t = 0)]
    pub fanout_queues: u64,

    /// Declare durable queues (and a durable exchange).
    #[arg(long)]
    pub durable_queue: bool,

    /// Queue arguments, e.g. x-max-length=1000 or x-queue-type=quorum (integers, true/false, else strings).
    #[arg(long, value_delimiter = ',', value_parser = parse_queue_arg)]
    pub queue_args: Vec<(String, QueueArg)>,

    /// Do not declare anything: queues (and the exchange) must already exist.
    #[arg(long)]
    pub no_declare: bool,

    /// Stop after this many seconds.
    #[arg(short = 'z', long)]
    pub duration: Option<f64>,

    /// Messages per producer, then the producer stops.
    #[arg(short = 'C', long)]
    pub pmessages: Option<u64>,

    /// Messages per consumer, then the consumer stops.
    #[arg(short = 'D', long, alias = "cmessages")]
    pub consumer_count_messages: Option<u64>,

    /// Print the final summary as one JSON object on stdout (live output goes to stderr).
    #[arg(long)]
    pub json: bool,

    /// Embed a send timestamp in each body (needs --size >= 16) and report publish→deliver latency.
    #[arg(long)]
    pub latency: bool,

    /// Tokio worker threads; 1 runs everything on the main thread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub threads: u64,

    /// Heartbeat interval to ask for in connection.tune-ok, seconds (0 = none).
    #[arg(long, default_value_t = 0)]
    pub heartbeat: u16,

    /// No per-second output.
    #[arg(long)]
    pub quiet: bool,

    /// Also report this process's CPU time (e.g. the broker's pid) over the run.
    #[arg(long)]
    pub broker_pid: Option<u32>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeType {
    Direct,
    Fanout,
    Topic,
}

impl ExchangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Topic => "topic",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum QueueArg {
    Int(i64),
    Bool(bool),
    Str(String),
}

fn parse_queue_arg(s: &str) -> Result<(String, QueueArg), String> {
    let Some((k, v)) = s.split_once('=') else { return Err(format!("expected key=value, got {s:?}")) };
    if k.is_empty() {
        return Err(format!("empty key in {s:?}"));
    }
    let value = if let Ok(i) = v.parse::<i64>() {
        QueueArg::Int(i)
    } else if v == "true" || v == "false" {
        QueueArg::Bool(v == "true")
    } else {
        QueueArg::Str(v.to_owned())
    };
    Ok((k.to_owned(), value))
}

/// Where producers publish and what consumers consume from, derived from the options.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub exchange: String,
    pub exchange_type: Option<ExchangeType>,
    pub queues: Vec<String>,
}

impl Topology {
    pub fn fanout(&self) -> bool {
        self.exchange_type == Some(ExchangeType::Fanout)
    }

    /// (exchange, routing key) producer `i` publishes with.
    pub fn publish_target(&self, producer: usize) -> (String, String) {
        if self.fanout() {
            (self.exchange.clone(), String::new())
        } else {
            (self.exchange.clone(), self.queues[producer % self.queues.len()].clone())
        }
    }

    pub fn consumer_queue(&self, consumer: usize) -> &str {
        &self.queues[consumer % self.queues.len()]
    }

    /// Deliveries one message of producer `i` causes, given `consumers` consumers: one per
    /// queue it reaches that has at least one consumer.
    pub fn fan_out_of(&self, producer: usize, consumers: usize) -> u64 {
        let with_consumers = consumers.min(self.queues.len());
        if self.fanout() { with_consumers as u64 } else { u64::from(producer % self.queues.len() < with_consumers) }
    }
}

impl Options {
    /// Checks what clap cannot, and returns the parsed URI.
    pub fn validate(&self) -> Result<AmqpUri> {
        let uri = AmqpUri::parse(&self.uri)?;
        if self.latency && self.size < 16 {
            bail!("--latency embeds a 16-byte timestamp in the body: use --size 16 or more (got {})", self.size);
        }
        if self.producers == 0 && self.consumers == 0 {
            bail!("nothing to do: no producers and no consumers");
        }
        if let Some(d) = self.duration
            && !(d > 0.0 && d.is_finite())
        {
            bail!("--duration must be a positive number of seconds");
        }
        if self.fanout_queues > 0 && self.exchange_type != Some(ExchangeType::Fanout) {
            bail!("--fanout-queues needs --exchange-type fanout");
        }
        if self.exchange.as_deref() == Some("") {
            bail!("--exchange \"\" is the default exchange: leave --exchange out instead");
        }
        if self.size > u32::MAX as usize {
            bail!("--size too large");
        }
        Ok(uri)
    }

    pub fn topology(&self) -> Topology {
        let count = if self.exchange_type == Some(ExchangeType::Fanout) && self.fanout_queues > 0 {
            self.fanout_queues
        } else {
            self.queues
        };
        let exchange = match (&self.exchange, self.exchange_type) {
            (Some(name), _) => name.clone(),
            // A type without a name: use a conventional name rather than refuse.
            (None, Some(kind)) => format!("perf.{}", kind.as_str()),
            (None, None) => String::new(),
        };
        let exchange_type =
            if exchange.is_empty() { None } else { Some(self.exchange_type.unwrap_or(ExchangeType::Direct)) };
        Topology { exchange, exchange_type, queues: (0..count).map(|i| format!("{}{i}", self.queue_prefix)).collect() }
    }

    pub fn queue_arguments(&self) -> FieldTable {
        let mut t = FieldTable::new();
        for (k, v) in &self.queue_args {
            let v = match v {
                QueueArg::Int(i) => FieldValue::I64(*i),
                QueueArg::Bool(b) => FieldValue::Bool(*b),
                QueueArg::Str(s) => FieldValue::LongStr(bytes::Bytes::from(s.clone().into_bytes())),
            };
            t.insert(k.clone(), v);
        }
        t
    }

    /// With -A above the prefetch the consumer would stall waiting for deliveries the
    /// broker will not send until it acks, so the ack batch is capped at the prefetch.
    pub fn effective_ack_every(&self) -> u64 {
        if self.prefetch == 0 { self.ack_every } else { self.ack_every.min(u64::from(self.prefetch)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Options {
        let mut full = vec!["warren-perf"];
        full.extend_from_slice(args);
        Options::try_parse_from(full).unwrap()
    }

    #[test]
    fn defaults() {
        let o = parse(&[]);
        assert_eq!((o.producers, o.consumers, o.size, o.rate, o.confirm), (1, 1, 16, 0, 0));
        assert_eq!((o.prefetch, o.ack_every, o.queues, o.threads, o.heartbeat), (1000, 1, 1, 1, 0));
        assert!(!o.persistent && !o.auto_ack && !o.json && !o.latency && !o.no_declare);
        assert_eq!(o.duration, None);
        let uri = o.validate().unwrap();
        assert_eq!(uri.addr, "127.0.0.1:5672".parse().unwrap());
        let t = o.topology();
        assert_eq!(t, Topology { exchange: String::new(), exchange_type: None, queues: vec!["perf-0".into()] });
        assert_eq!(t.publish_target(0), (String::new(), "perf-0".into()));
    }

    #[test]
    fn perftest_style_short_flags() {
        let o = parse(&[
            "-x", "4", "-y", "3", "-s", "64", "-r", "5000", "-c", "1000", "-p", "-q", "50", "-A", "100", "-Q", "4",
            "-z", "2.5", "-C", "10", "-D", "20",
        ]);
        assert_eq!((o.producers, o.consumers, o.size, o.rate, o.confirm), (4, 3, 64, 5000, 1000));
        assert!(o.persistent);
        assert_eq!((o.prefetch, o.ack_every, o.queues), (50, 100, 4));
        assert_eq!(o.effective_ack_every(), 50);
        assert_eq!((o.duration, o.pmessages, o.consumer_count_messages), (Some(2.5), Some(10), Some(20)));
        let t = o.topology();
        assert_eq!(t.queues, ["perf-0", "perf-1", "perf-2", "perf-3"]);
        assert_eq!(t.publish_target(5).1, "perf-1");
        assert_eq!(t.consumer_queue(2), "perf-2");
        // Producer 3's queue has no consumer (only 3 consumers over 4 queues).
        assert_eq!((t.fan_out_of(0, 3), t.fan_out_of(3, 3)), (1, 0));
    }

    #[test]
    fn long_flags_and_fanout() {
        let o = parse(&[
            "--uri",
            "amqp://u:p@localhost:5899/v",
            "--exchange",
            "fan",
            "--exchange-type",
            "fanout",
            "--fanout-queues",
            "10",
            "--durable-queue",
            "--queue-prefix",
            "q.",
            "--auto-ack",
            "--json",
            "--latency",
            "--no-declare",
            "--cmessages",
            "7",
            "--threads",
            "2",
        ]);
        assert!(o.auto_ack && o.json && o.latency && o.no_declare && o.durable_queue);
        assert_eq!(o.consumer_count_messages, Some(7));
        let t = o.topology();
        assert!(t.fanout());
        assert_eq!(t.queues.len(), 10);
        assert_eq!(t.queues[9], "q.9");
        assert_eq!(t.publish_target(3), ("fan".into(), String::new()));
        assert_eq!(t.fan_out_of(0, 4), 4);
        assert_eq!(t.fan_out_of(0, 20), 10);
        assert_eq!(o.validate().unwrap().vhost, "v");
        // A fanout type without a name gets a default exchange name.
        let o = parse(&["--exchange-type", "fanout"]);
        assert_eq!(o.topology().exchange, "perf.fanout");
    }

    #[test]
    fn queue_args() {
        let o = parse(&[
            "--queue-args",
            "x-max-length=1000,x-queue-type=quorum",
            "--queue-args",
            "x-single-active-consumer=true",
        ]);
        let t = o.queue_arguments();
        assert_eq!(t.get("x-max-length"), Some(&FieldValue::I64(1000)));
        assert_eq!(t.get("x-queue-type").and_then(FieldValue::as_str), Some("quorum"));
        assert_eq!(t.get("x-single-active-consumer"), Some(&FieldValue::Bool(true)));
        assert!(Options::try_parse_from(["warren-perf", "--queue-args", "novalue"]).is_err());
    }

    #[test]
    fn invalid_combinations() {
        assert!(parse(&["--latency", "-s", "8"]).validate().is_err());
        assert!(parse(&["--latency", "-s", "16"]).validate().is_ok());
        assert!(parse(&["-x", "0", "-y", "0"]).validate().is_err());
        assert!(parse(&["-z", "0"]).validate().is_err());
        assert!(parse(&["--fanout-queues", "3"]).validate().is_err());
        assert!(parse(&["--uri", "amqp://192.168.1.1/"]).validate().is_err());
        assert!(Options::try_parse_from(["warren-perf", "-A", "0"]).is_err());
        assert!(Options::try_parse_from(["warren-perf", "-Q", "0"]).is_err());
        assert!(Options::try_parse_from(["warren-perf", "-x", "many"]).is_err());
    }
}
