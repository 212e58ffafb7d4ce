//! A connection's outgoing bytes. Any task may append encoded frames (a publisher's task
//! delivering to this connection's consumers, the connection's own task answering
//! methods); one writer task drains the buffer with a single (vectored) write per batch.
//! Large message bodies are not copied in: the buffer holds a reference to the publisher's
//! bytes and the writer sends them from there.

use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use broker::Queue;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// Bodies at least this big are sent by reference; smaller ones are copied (a copy is
/// cheaper than an extra I/O vector and keeps small frames contiguous).
const SHARE_BODY_MIN_BYTES: usize = 8 * 1024;
/// I/O vectors per write call (well under Linux's IOV_MAX of 1024).
const WRITE_MAX_SLICES: usize = 64;
/// Buffer capacity a writer keeps for reuse while it has nothing to write: a burst (a
/// consumer catching up, a big batch of replies) grows the buffers to megabytes, and ten
/// thousand idle connections must not each keep that.
const IDLE_KEEP_BYTES: usize = 16 * 1024;
/// Largest buffer kept for reuse between batches while busy.
const BUSY_KEEP_BYTES: usize = 4 * 1024 * 1024;

/// Frames waiting to be written: encoded bytes, with shared body payloads spliced in.
#[derive(Default)]
pub struct OutBuf {
    bytes: Vec<u8>,
    /// (offset in `bytes` the payload goes before, payload), in offset order.
    shared: Vec<(usize, Bytes)>,
}

impl OutBuf {
    fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.shared.is_empty()
    }

    /// Heap bytes held (capacity, used or not).
    fn capacity_bytes(&self) -> usize {
        self.bytes.capacity() + self.shared.capacity() * std::mem::size_of::<(usize, Bytes)>()
    }

    /// Give the buffers back if an idle connection should not keep them.
    fn shrink_idle(&mut self) {
        if self.is_empty() && self.capacity_bytes() > IDLE_KEEP_BYTES {
            *self = OutBuf::default();
        }
    }

    /// The stream in order, as slices.
    fn slices(&self) -> Vec<&[u8]> {
        let mut out = Vec::with_capacity(2 * self.shared.len() + 1);
        let mut at = 0;
        for (offset, payload) in &self.shared {
            if *offset > at {
                out.push(&self.bytes[at..*offset]);
            }
            out.push(&payload[..]);
            at = *offset;
        }
        if at < self.bytes.len() {
            out.push(&self.bytes[at..]);
        }
        out
    }
}

/// Write every slice, in order, with as few calls as the socket allows.
async fn write_slices<W: AsyncWrite + Unpin>(sock: &mut W, slices: &[&[u8]]) -> std::io::Result<()> {
    let (mut i, mut skip) = (0, 0);
    while i < slices.len() {
        let iov: Vec<IoSlice<'_>> = slices[i..]
            .iter()
            .take(WRITE_MAX_SLICES)
            .enumerate()
            .map(|(k, s)| IoSlice::new(if k == 0 { &s[skip..] } else { s }))
            .collect();
        let mut n = sock.write_vectored(&iov).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && i < slices.len() {
            let left = slices[i].len() - skip;
            if n >= left {
                n -= left;
                i += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
    }
    Ok(())
}

pub struct Outbox {
    buf: Mutex<OutBuf>,
    /// Bytes in `buf`, readable without the lock (for back-pressure checks).
    pending: AtomicUsize,
    /// Bytes of the batch the writer took out of `buf` and is sending.
    in_flight: AtomicUsize,
    /// Capacity of the writer's own buffer (the one not in `buf`), for the memory breakdown.
    writer_capacity: AtomicUsize,
    /// Capacity of the connection's read buffer (set by the connection's task), for the
    /// memory breakdown.
    pub read_capacity: AtomicUsize,
    notify: Notify,
    /// Woken whenever the writer finished a batch (or stopped): a connection that paused
    /// reading because its client does not read waits for it.
    drained: Notify,
    /// The writer stopped (write error or closed): nothing will drain any more.
    writer_gone: AtomicBool,
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
    /// Bytes read from the client (bumped by the connection's task) and written to it (by
    /// the writer): the connection's `recv_oct` and `send_oct`. Here because both tasks
    /// share the outbox.
    pub recv_oct: AtomicU64,
    pub send_oct: AtomicU64,
}

impl Outbox {
    pub fn new(high_water_bytes: usize, frame_max: u32) -> Arc<Outbox> {
        Arc::new(Outbox {
            buf: Mutex::new(OutBuf::default()),
            pending: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            writer_capacity: AtomicUsize::new(0),
            read_capacity: AtomicUsize::new(0),
            notify: Notify::new(),
            drained: Notify::new(),
            writer_gone: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            last_write: Mutex::new(Instant::now()),
            starved: Mutex::new(Vec::new()),
            high_water_bytes,
            frame_max: AtomicUsize::new(frame_max as usize),
            recv_oct: AtomicU64::new(0),
            send_oct: AtomicU64::new(0),
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
            let before = b.bytes.len();
            f(&mut b.bytes);
            self.pending.fetch_add(b.bytes.len() - before, Ordering::Relaxed);
        }
        self.notify.notify_one();
    }

    /// Append a message: `head` writes its method and content header frames, then the body
    /// follows in body frames for the negotiated frame_max (large bodies by reference).
    pub fn write_content(&self, channel: u16, body: &Bytes, head: impl FnOnce(&mut Vec<u8>)) {
        let frame_max = self.frame_max();
        {
            let mut guard = self.buf.lock();
            let b = &mut *guard;
            let before = b.bytes.len();
            head(&mut b.bytes);
            let by_reference = body.len() >= SHARE_BODY_MIN_BYTES;
            if by_reference {
                for (frame_head, range) in wire::frame::body_frames(body.len(), channel, frame_max) {
                    b.bytes.extend_from_slice(&frame_head);
                    b.shared.push((b.bytes.len(), body.slice(range)));
                    b.bytes.push(wire::FRAME_END);
                }
            } else {
                wire::frame::encode_body(&mut b.bytes, channel, body, frame_max);
            }
            let shared = if by_reference { body.len() } else { 0 };
            self.pending.fetch_add(b.bytes.len() - before + shared, Ordering::Relaxed);
        }
        self.notify.notify_one();
    }

    /// True when the buffer is past its high-water mark: deliveries should wait.
    pub fn is_full(&self) -> bool {
        self.pending.load(Ordering::Relaxed) >= self.high_water_bytes
    }

    /// Bytes waiting for the client: buffered plus being written (0 once the writer has
    /// stopped, as they will never drain).
    pub fn unsent_bytes(&self) -> usize {
        if self.writer_gone.load(Ordering::Acquire) {
            return 0;
        }
        self.pending.load(Ordering::Relaxed) + self.in_flight.load(Ordering::Relaxed)
    }

    /// Heap bytes this connection's outbox holds: its buffers' capacity, or the bytes
    /// waiting if more (bodies sent by reference are not in the buffers).
    pub fn held_bytes(&self) -> usize {
        let capacity = self.buf.lock().capacity_bytes() + self.writer_capacity.load(Ordering::Relaxed);
        capacity.max(self.unsent_bytes())
    }

    /// Wait until the writer finishes its current batch (returns at once if it finished
    /// one since the last call).
    pub async fn drained(&self) {
        self.drained.notified().await;
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
    pub async fn run_writer<W: AsyncWrite + Unpin>(self: Arc<Self>, sock: W) -> std::io::Result<()> {
        let r = self.clone().write_loop(sock).await;
        self.writer_gone.store(true, Ordering::Release);
        self.in_flight.store(0, Ordering::Relaxed);
        self.drained.notify_one();
        r
    }

    async fn write_loop<W: AsyncWrite + Unpin>(self: Arc<Self>, mut sock: W) -> std::io::Result<()> {
        // Empty until there is something to write: idle connections hold no buffer.
        let mut out = OutBuf::default();
        loop {
            let batch = {
                let mut b = self.buf.lock();
                std::mem::swap(&mut *b, &mut out);
                let n = self.pending.swap(0, Ordering::Relaxed);
                self.in_flight.store(n, Ordering::Relaxed);
                n
            };
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
                // Nothing to write: keep only small buffers while idle (a notify that
                // arrives meanwhile is kept as a permit, so no wake-up is lost).
                out.shrink_idle();
                self.buf.lock().shrink_idle();
                self.writer_capacity.store(out.capacity_bytes(), Ordering::Relaxed);
                self.notify.notified().await;
                continue;
            }
            if out.shared.is_empty() {
                sock.write_all(&out.bytes).await?;
            } else {
                write_slices(&mut sock, &out.slices()).await?;
                // Release the publishers' buffers now, not when this batch is reused.
                out.shared.clear();
            }
            *self.last_write.lock() = Instant::now();
            broker::counters::bump_single_writer(&self.send_oct, batch as u64);
            self.in_flight.store(0, Ordering::Relaxed);
            self.drained.notify_one();
            // Keep a moderately sized buffer for reuse while busy; drop huge ones.
            if out.bytes.capacity() > BUSY_KEEP_BYTES {
                out = OutBuf::default();
            } else {
                out.bytes.clear();
            }
            self.writer_capacity.store(out.capacity_bytes(), Ordering::Relaxed);
            let starved = std::mem::take(&mut *self.starved.lock());
            for q in starved {
                q.dispatch();
            }
        }
    }
}
