//! A connection's outgoing bytes. Any task may append encoded frames (a publisher's task
//! delivering to this connection's consumers, the connection's own task answering
//! methods); one writer task drains the buffer with a single write per batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use broker::Queue;
use parking_lot::Mutex;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

pub struct Outbox {
    buf: Mutex<Vec<u8>>,
    /// Bytes in `buf`, readable without the lock (for back-pressure checks).
    pending: AtomicUsize,
    notify: Notify,
    /// Set when the connection is finished: the writer flushes what is left and stops.
    closing: AtomicBool,
    /// Last time bytes went to the socket, for outgoing heartbeats.
    last_write: Mutex<Instant>,
    /// Queues that stopped delivering to this connection because the buffer was full;
    /// kicked when the writer drains it.
    starved: Mutex<Vec<Arc<Queue>>>,
    high_water_bytes: usize,
    /// Frame size negotiated with the client (framing included), for splitting bodies.
    frame_max: AtomicUsize,
}

impl Outbox {
    pub fn new(high_water_bytes: usize, frame_max: u32) -> Arc<Outbox> {
        Arc::new(Outbox {
            buf: Mutex::new(Vec::new()),
            pending: AtomicUsize::new(0),
            notify: Notify::new(),
            closing: AtomicBool::new(false),
            last_write: Mutex::new(Instant::now()),
            starved: Mutex::new(Vec::new()),
            high_water_bytes,
            frame_max: AtomicUsize::new(frame_max as usize),
        })
    }

    pub fn frame_max(&self) -> u32 {
        self.frame_max.load(Ordering::Relaxed) as u32
    }

    pub fn set_frame_max(&self, v: u32) {
        self.frame_max.store(v as usize, Ordering::Relaxed);
    }

    /// Append frames written by `f` and wake the writer.
    pub fn write_with(&self, f: impl FnOnce(&mut Vec<u8>)) {
        {
            let mut b = self.buf.lock();
            let before = b.len();
            f(&mut b);
            self.pending.fetch_add(b.len() - before, Ordering::Relaxed);
        }
        self.notify.notify_one();
    }

    /// True when the buffer is past its high-water mark: deliveries should wait.
    pub fn is_full(&self) -> bool {
        self.pending.load(Ordering::Relaxed) >= self.high_water_bytes
    }

    pub fn add_starved(&self, q: &Arc<Queue>) {
        let mut s = self.starved.lock();
        if !s.iter().any(|x| Arc::ptr_eq(x, q)) {
            s.push(q.clone());
        }
        drop(s);
        // The writer may have drained the buffer between the caller's fullness check and
        // now: wake it so it kicks this queue rather than waiting for the next write.
        self.notify.notify_one();
    }

    pub fn last_write(&self) -> Instant {
        *self.last_write.lock()
    }

    /// Ask the writer to flush and finish.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// The writer task body: drain until closed. Returns when the buffer is flushed after
    /// close, or on a write error.
    pub async fn run_writer<W: AsyncWrite + Unpin>(self: Arc<Self>, mut sock: W) -> std::io::Result<()> {
        // Empty until there is something to write: idle connections hold no buffer.
        let mut out: Vec<u8> = Vec::new();
        loop {
            {
                let mut b = self.buf.lock();
                std::mem::swap(&mut *b, &mut out);
                self.pending.store(0, Ordering::Relaxed);
            }
            if out.is_empty() {
                let starved = std::mem::take(&mut *self.starved.lock());
                if !starved.is_empty() {
                    for q in starved {
                        q.dispatch();
                    }
                    continue;
                }
                if self.is_closing() {
                    let _ = sock.shutdown().await;
                    return Ok(());
                }
                self.notify.notified().await;
                continue;
            }
            sock.write_all(&out).await?;
            *self.last_write.lock() = Instant::now();
            // Keep a moderately sized buffer for reuse; drop huge ones.
            if out.capacity() > 4 * 1024 * 1024 {
                out = Vec::new();
            } else {
                out.clear();
            }
            let starved = std::mem::take(&mut *self.starved.lock());
            for q in starved {
                q.dispatch();
            }
        }
    }
}
