//! A producer: one connection, one channel, publishing in batches.
//!
//! The socket is split: this task writes, a reader task counts confirms and opens the
//! in-flight window. Each batch is as many messages as fit in [`BATCH_BYTES`] (at least
//! one), limited by the confirm window, the rate and -C, encoded by copying a template
//! and written with one syscall.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};
use wire::{Frame, Method};

use crate::client::{self, Connection, Hot, Inbound, Incoming, Outbound, PublishTemplate};
use crate::run::Ctx;

/// Bytes of frames per write. Big enough to amortise the syscall, small enough that a
/// batch does not sit in the socket for long before the broker sees the first message.
const BATCH_BYTES: usize = 1024 * 1024;
/// Cap on messages per batch for tiny bodies (keeps per-batch timestamps meaningful).
const MAX_BATCH_MESSAGES: usize = 2048;
/// How long a producer that sent all its -C messages waits for their confirms.
const CONFIRM_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared between the writer and its confirm reader.
#[derive(Default)]
struct Window {
    /// Publishes confirmed (acked or nacked) so far.
    settled: AtomicU64,
    notify: Notify,
    /// The reader has exited (broker closed, error, or close-ok).
    reader_gone: AtomicBool,
    /// We sent connection.close: what the reader sees next is not an error.
    closing: AtomicBool,
    /// With confirms: per written batch, (its last delivery tag, messages, write time in ns),
    /// oldest first; the reader turns them into publish→confirm latencies.
    batches: std::sync::Mutex<VecDeque<(u64, u64, u64)>>,
}

/// Which delivery tags have been confirmed: acks may be single or multiple, and in
/// principle out of order, so keep a bitmap from the oldest unconfirmed tag.
#[derive(Debug)]
pub struct ConfirmTracker {
    /// Lowest tag not yet confirmed (tags start at 1 after confirm.select).
    base: u64,
    /// confirmed[i] is tag base + i; the front is always `false` (else it would be popped).
    confirmed: VecDeque<bool>,
}

impl Default for ConfirmTracker {
    fn default() -> Self {
        ConfirmTracker { base: 1, confirmed: VecDeque::new() }
    }
}

impl ConfirmTracker {
    /// Every tag below this one is confirmed.
    pub fn confirmed_below(&self) -> u64 {
        self.base
    }

    /// Apply a basic.ack/nack; returns how many tags it newly confirms.
    pub fn confirm(&mut self, tag: u64, multiple: bool) -> u64 {
        if tag < self.base {
            return 0;
        }
        let index = (tag - self.base) as usize;
        let newly = if multiple {
            let known = self.confirmed.len().min(index + 1);
            let already = self.confirmed.iter().take(known).filter(|&&c| c).count();
            self.confirmed.drain(..known);
            self.base = tag + 1;
            (index + 1 - already) as u64
        } else {
            if index >= self.confirmed.len() {
                self.confirmed.resize(index + 1, false);
            }
            if self.confirmed[index] {
                return 0;
            }
            self.confirmed[index] = true;
            1
        };
        while self.confirmed.front() == Some(&true) {
            self.confirmed.pop_front();
            self.base += 1;
        }
        newly
    }
}

pub async fn run(index: usize, ctx: Arc<Ctx>) {
    if let Err(e) = produce(index, &ctx).await {
        ctx.stats.fail(format!("producer {index}: {e:#}"));
    }
}

async fn produce(index: usize, ctx: &Arc<Ctx>) -> Result<()> {
    let opts = &ctx.opts;
    let mut conn = Connection::open(&ctx.uri, opts.heartbeat, &format!("warren-perf producer {index}")).await?;
    if opts.confirm > 0 {
        match conn.rpc(&Method::ConfirmSelect { nowait: false }).await? {
            Method::ConfirmSelectOk => {}
            other => bail!("expected confirm.select-ok, got {}", other.name()),
        }
    }
    let (exchange, routing_key) = ctx.topo.publish_target(index);
    let template =
        PublishTemplate::new(&exchange, &routing_key, opts.persistent, opts.size, conn.frame_max, opts.latency);
    let Connection { rx, mut tx, heartbeat, .. } = conn;
    let window = Arc::new(Window::default());
    let reader = tokio::spawn(confirm_reader(index, rx, window.clone(), ctx.clone()));

    ctx.stats.bump(&ctx.stats.ready);
    let mut go = ctx.stats.go.subscribe();
    let mut stop = ctx.stats.stop.subscribe();
    tokio::select! {
        _ = go.wait_for(|g| *g) => {}
        _ = stop.wait_for(|s| *s) => {}
    }

    let result = publish_loop(ctx, &template, &mut tx, &window, heartbeat).await;
    if let Ok(sent) = result
        && Some(sent) == opts.pmessages
    {
        // Finished by count: let the confirms arrive so the totals are complete.
        if opts.confirm > 0 {
            let deadline = Instant::now() + CONFIRM_DRAIN_TIMEOUT;
            while window.settled.load(Ordering::Acquire) < sent && !window.reader_gone.load(Ordering::Acquire) {
                tokio::select! {
                    _ = window.notify.notified() => {}
                    _ = sleep_until(deadline) => break,
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        }
        ctx.stats.bump(&ctx.stats.producers_done);
    }
    // Close politely whatever happened; a failure to close is not the run's failure.
    window.closing.store(true, Ordering::Release);
    tx.method(0, &Method::ConnectionClose { reply_code: 200, reply_text: "bye".into(), class_id: 0, method_id: 0 });
    let _ = tokio::time::timeout(client::CLOSE_TIMEOUT, tx.flush()).await;
    let _ = tokio::time::timeout(client::CLOSE_TIMEOUT, reader).await;
    result.map(|_| ())
}

/// Publish until stopped or -C is reached; returns how many messages were sent.
async fn publish_loop(
    ctx: &Ctx,
    template: &PublishTemplate,
    tx: &mut Outbound,
    window: &Window,
    heartbeat: u16,
) -> Result<u64> {
    let opts = &ctx.opts;
    let stats = &ctx.stats;
    let mut stop = stats.stop.subscribe();
    let per_batch = (BATCH_BYTES / template.len().max(1)).clamp(1, MAX_BATCH_MESSAGES) as u64;
    let limit = opts.pmessages.unwrap_or(u64::MAX);
    let heartbeat_every = (heartbeat > 0).then(|| Duration::from_millis(u64::from(heartbeat) * 500));
    let start = Instant::now();
    let mut last_write = start;
    let mut sent = 0u64;
    while sent < limit && !*stop.borrow() && !window.reader_gone.load(Ordering::Acquire) {
        let mut n = per_batch.min(limit - sent);
        let mut window_full = false;
        if opts.confirm > 0 {
            let in_flight = sent - window.settled.load(Ordering::Acquire).min(sent);
            match opts.confirm.saturating_sub(in_flight) {
                0 => window_full = true,
                free => n = n.min(free),
            }
        }
        // Message k (from 0) is due at start + k/rate; send all that are due.
        let mut not_before = None;
        if opts.rate > 0 && !window_full {
            let due = (start.elapsed().as_secs_f64() * opts.rate as f64) as u64 + 1;
            if due <= sent {
                not_before = Some(start + Duration::from_secs_f64(sent as f64 / opts.rate as f64));
            } else {
                n = n.min(due - sent);
            }
        }
        if window_full || not_before.is_some() {
            let heartbeat_at = heartbeat_every.map(|every| last_write + every);
            tokio::select! {
                _ = stop.changed() => {}
                _ = window.notify.notified(), if window_full => {}
                _ = sleep_until(not_before.unwrap_or(start)), if not_before.is_some() => {}
                _ = sleep_until(heartbeat_at.unwrap_or(start)), if heartbeat_at.is_some() => {
                    wire::frame::encode_heartbeat(&mut tx.buf);
                    tx.flush().await?;
                    last_write = Instant::now();
                }
            }
            continue;
        }
        // One timestamp per batch: the whole batch goes out in the same write.
        let timestamp = if opts.latency { client::now_ns() } else { 0 };
        for _ in 0..n {
            template.append(&mut tx.buf, timestamp);
        }
        sent += n;
        if opts.confirm > 0
            && let Ok(mut b) = window.batches.lock()
        {
            b.push_back((sent, n, client::now_ns()));
        }
        // Counted before the write so a consumer can never see a message not yet counted.
        stats.published.fetch_add(n, Ordering::AcqRel);
        tx.flush().await?;
        if heartbeat_every.is_some() {
            last_write = Instant::now();
        }
        // Let consumers and other producers on this thread run between batches.
        tokio::task::yield_now().await;
    }
    Ok(sent)
}

/// Batches whose every message is now confirmed give one latency sample per message.
fn record_confirm_latency(window: &Window, tracker: &ConfirmTracker, stats: &crate::stats::Stats) {
    let below = tracker.confirmed_below();
    let now = client::now_ns();
    let Ok(mut batches) = window.batches.lock() else { return };
    let Ok(mut h) = stats.confirm_latency.lock() else { return };
    while let Some(&(last_tag, n, at)) = batches.front() {
        if last_tag >= below {
            break;
        }
        batches.pop_front();
        for _ in 0..n {
            h.record(now.saturating_sub(at));
        }
    }
}

async fn confirm_reader(index: usize, mut rx: Inbound, window: Arc<Window>, ctx: Arc<Ctx>) {
    let stats = &ctx.stats;
    let mut tracker = ConfirmTracker::default();
    let result: Result<()> = async {
        loop {
            rx.fill().await?;
            let (mut acked, mut nacked, mut done) = (0, 0, false);
            while let Some(incoming) = rx.next_buffered()? {
                match incoming {
                    Incoming::Hot(Hot::Ack { delivery_tag, multiple }) => {
                        acked += tracker.confirm(delivery_tag, multiple)
                    }
                    Incoming::Hot(Hot::Nack { delivery_tag, multiple }) => {
                        nacked += tracker.confirm(delivery_tag, multiple)
                    }
                    Incoming::Frame(Frame::Method { method, .. }) => match method {
                        Method::ConnectionCloseOk => done = true,
                        Method::ConnectionClose { reply_code, reply_text, class_id, method_id } => {
                            return Err(client::closed_error(
                                "connection",
                                reply_code,
                                &reply_text,
                                class_id,
                                method_id,
                            ));
                        }
                        Method::ChannelClose { reply_code, reply_text, class_id, method_id } => {
                            return Err(client::closed_error("channel", reply_code, &reply_text, class_id, method_id));
                        }
                        Method::ConnectionBlocked { .. } => {
                            stats.blocked.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
            if acked + nacked > 0 {
                record_confirm_latency(&window, &tracker, stats);
                window.settled.fetch_add(acked + nacked, Ordering::AcqRel);
                stats.confirmed.fetch_add(acked, Ordering::AcqRel);
                stats.nacked.fetch_add(nacked, Ordering::AcqRel);
                window.notify.notify_one();
            }
            if done {
                return Ok(());
            }
        }
    }
    .await;
    window.reader_gone.store(true, Ordering::Release);
    window.notify.notify_one();
    if let Err(e) = result
        && !window.closing.load(Ordering::Acquire)
    {
        stats.fail(format!("producer {index}: {e:#}"));
    }
}

#[cfg(test)]
mod tests {
    use super::ConfirmTracker;

    #[test]
    fn single_and_multiple_confirms() {
        let mut t = ConfirmTracker::default();
        assert_eq!(t.confirm(3, false), 1);
        assert_eq!(t.confirm(3, false), 0);
        assert_eq!(t.confirm(1, false), 1);
        // 2 and 4 are new, 3 was already counted.
        assert_eq!(t.confirm(4, true), 2);
        assert_eq!(t.confirm(4, true), 0);
        assert_eq!(t.confirm(2, false), 0);
        assert_eq!(t.confirm(100, true), 96);
        assert_eq!(t.confirm(102, false), 1);
        assert_eq!(t.confirm(101, false), 1);
        assert_eq!((t.base, t.confirmed.len()), (103, 0));
    }
}
