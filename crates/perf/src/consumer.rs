//! A consumer: one connection, one channel, one basic.consume.
//!
//! Each read pulls in as many frames as the kernel has (up to 256 KiB); the deliveries
//! in it are counted, their latency taken against one clock reading, the acks due are
//! encoded, and everything is written back in one syscall.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::time::{Instant, sleep_until};
use wire::{FieldTable, Frame, Method};

use crate::client::{self, CHANNEL, Connection, Hot, Incoming, Outbound};
use crate::run::Ctx;

pub async fn run(index: usize, ctx: Arc<Ctx>) {
    if let Err(e) = consume(index, &ctx).await {
        ctx.stats.fail(format!("consumer {index}: {e:#}"));
    }
}

/// Where we are in the current delivery's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Deliver,
    Header,
    Body { remaining: u64, first: bool },
}

/// Per-consumer delivery and ack bookkeeping.
struct Deliveries {
    expect: Expect,
    tag: u64,
    /// Tag of the last delivery counted, and how many of those are not acked yet.
    last_tag: u64,
    unacked: u64,
    ack_every: u64,
    auto_ack: bool,
}

impl Deliveries {
    /// A delivery's last frame arrived: count it, and encode an ack if one is due.
    #[inline]
    fn complete(&mut self, tx: &mut Outbound) {
        self.expect = Expect::Deliver;
        self.last_tag = self.tag;
        if !self.auto_ack {
            self.unacked += 1;
            if self.unacked >= self.ack_every {
                self.ack(tx);
            }
        }
    }

    fn ack(&mut self, tx: &mut Outbound) {
        if self.unacked > 0 {
            tx.method(CHANNEL, &Method::BasicAck { delivery_tag: self.last_tag, multiple: self.unacked > 1 });
            self.unacked = 0;
        }
    }
}

async fn consume(index: usize, ctx: &Arc<Ctx>) -> Result<()> {
    let opts = &ctx.opts;
    let stats = &ctx.stats;
    let mut conn = Connection::open(&ctx.uri, opts.heartbeat, &format!("warren-perf consumer {index}")).await?;
    if opts.prefetch > 0 {
        match conn.rpc(&Method::BasicQos { prefetch_size: 0, prefetch_count: opts.prefetch, global: false }).await? {
            Method::BasicQosOk => {}
            other => bail!("expected basic.qos-ok, got {}", other.name()),
        }
    }
    let queue = ctx.topo.consumer_queue(index).to_owned();
    let consumer_tag = format!("warren-perf-{index}");
    let consume = Method::BasicConsume {
        ticket: 0,
        queue: queue.clone(),
        consumer_tag: consumer_tag.clone(),
        no_local: false,
        no_ack: opts.auto_ack,
        exclusive: false,
        nowait: false,
        arguments: FieldTable::new(),
    };
    match conn.rpc(&consume).await? {
        Method::BasicConsumeOk { .. } => {}
        other => bail!("expected basic.consume-ok, got {}", other.name()),
    }
    stats.bump(&stats.ready);

    let Connection { mut rx, mut tx, heartbeat, .. } = conn;
    let mut stop = stats.stop.subscribe();
    let limit = opts.consumer_count_messages.unwrap_or(u64::MAX);
    let heartbeat_every = (heartbeat > 0).then(|| Duration::from_millis(u64::from(heartbeat) * 500));
    let mut last_write = Instant::now();
    let mut d = Deliveries {
        expect: Expect::Deliver,
        tag: 0,
        last_tag: 0,
        unacked: 0,
        ack_every: opts.effective_ack_every(),
        auto_ack: opts.auto_ack,
    };
    let mut latencies: Vec<u64> = Vec::with_capacity(4096);
    let mut count = 0u64;
    let mut finished = false;
    while !finished {
        let heartbeat_at = heartbeat_every.map(|every| last_write + every);
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            read = rx.fill() => read?,
            _ = sleep_until(heartbeat_at.unwrap_or(last_write)), if heartbeat_at.is_some() => {
                wire::frame::encode_heartbeat(&mut tx.buf);
            }
        }
        // One clock reading per read: everything in it arrived at the same time.
        let now = if opts.latency { client::now_ns() } else { 0 };
        let mut got = 0u64;
        while let Some(incoming) = rx.next_buffered()? {
            match incoming {
                Incoming::Hot(Hot::Deliver { delivery_tag, .. }) => {
                    d.tag = delivery_tag;
                    d.expect = Expect::Header;
                }
                Incoming::Hot(Hot::Header { body_size }) if d.expect == Expect::Header => {
                    if body_size == 0 {
                        d.complete(&mut tx);
                        got += 1;
                    } else {
                        d.expect = Expect::Body { remaining: body_size, first: true };
                    }
                }
                Incoming::Hot(Hot::Body { len, timestamp }) => {
                    if let Expect::Body { remaining, first } = d.expect {
                        if first && let Some(sent) = timestamp {
                            latencies.push(now.saturating_sub(sent));
                        }
                        let remaining = remaining.saturating_sub(len as u64);
                        if remaining == 0 {
                            d.complete(&mut tx);
                            got += 1;
                        } else {
                            d.expect = Expect::Body { remaining, first: false };
                        }
                    }
                }
                Incoming::Frame(Frame::Method { method, .. }) => match method {
                    Method::BasicCancel { .. } => bail!("the broker cancelled the consumer on {queue:?}"),
                    Method::ConnectionClose { reply_code, reply_text, class_id, method_id } => {
                        tx.method(0, &Method::ConnectionCloseOk);
                        let _ = tx.flush().await;
                        return Err(client::closed_error("connection", reply_code, &reply_text, class_id, method_id));
                    }
                    Method::ChannelClose { reply_code, reply_text, class_id, method_id } => {
                        tx.method(CHANNEL, &Method::ChannelCloseOk);
                        let _ = tx.flush().await;
                        return Err(client::closed_error("channel", reply_code, &reply_text, class_id, method_id));
                    }
                    Method::ConnectionBlocked { .. } => {
                        stats.blocked.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                },
                _ => {}
            }
            if count + got >= limit {
                finished = true;
                break;
            }
        }
        if got > 0 {
            count += got;
            stats.consumed.fetch_add(got, Ordering::AcqRel);
            stats.record_latencies(&mut latencies);
        }
        if !tx.buf.is_empty() {
            tx.flush().await?;
            last_write = Instant::now();
        }
    }
    if finished {
        stats.bump(&stats.consumers_done);
    }
    // Ack what we counted (the rest is requeued by the close), cancel, close. Bounded:
    // a broker that does not answer must not hold up the summary.
    let _ = tokio::time::timeout(client::CLOSE_TIMEOUT * 2, async {
        d.ack(&mut tx);
        tx.method(CHANNEL, &Method::BasicCancel { consumer_tag: consumer_tag.clone(), nowait: false });
        tx.flush().await?;
        loop {
            if let Incoming::Frame(Frame::Method { method: Method::BasicCancelOk { .. }, .. }) = rx.next().await? {
                break;
            }
        }
        tx.method(0, &Method::ConnectionClose { reply_code: 200, reply_text: "bye".into(), class_id: 0, method_id: 0 });
        tx.flush().await?;
        client::close_handshake(&mut rx).await
    })
    .await;
    Ok(())
}
