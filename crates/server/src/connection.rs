//! One client connection: protocol header, handshake (start/tune/open), the frame loop,
//! heartbeats, and closing (by either side, by error, or at server shutdown).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::AmqpError;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tracing::{debug, info, warn};
use wire::{FieldTable, FieldValue, Frame, Method, frame, reply};

use crate::channel::{Channel, ConnCtx, ContentProgress, notify_deleted};
use crate::delivery::ChannelShared;
use crate::outbox::Outbox;
use crate::state::ServerState;

/// How long we wait for connection.close-ok after sending connection.close.
const CLOSE_OK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long we keep the socket open after close-ok for the client to close it.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Frames handled in one read batch after which the task yields to others.
const YIELD_AFTER_FRAMES: usize = 256;
/// Read buffer growth step under load, and the first one (the handshake's frames are
/// small: at most frame_min until tune-ok).
const READ_CHUNK_BYTES: usize = 64 * 1024;
const READ_INITIAL_BYTES: usize = 2 * 1024;
/// Read size once frames of at least [`LARGE_FRAME_BYTES`] arrive: with big messages the
/// cost is per read (syscall, wake-up), so read many at once. Bodies are slices of the read
/// buffer, so small messages keep to [`READ_CHUNK_BYTES`] (less memory pinned per body).
const READ_CHUNK_LARGE_BYTES: usize = 1024 * 1024;
const LARGE_FRAME_BYTES: usize = 16 * 1024;
/// Read rounds in a row without a large frame pending after which a connection goes back
/// to [`READ_CHUNK_BYTES`] (its traffic turned to small messages).
const LARGE_FRAMES_GONE_AFTER_READS: u32 = 64;
/// Flow control: while a queue this connection publishes to is in flow (see
/// `broker::Queue::in_flow`), stop reading until it clears, as long as the queue's
/// consumers take something every FLOW_PROGRESS_WINDOW, at most FLOW_MAX_PAUSE in a row.
/// After a pause that saw no progress (e.g. the consumer is this very connection and its
/// client is blocked writing), flow is ignored for FLOW_QUIET_AFTER_STALL.
const FLOW_PROGRESS_WINDOW: Duration = Duration::from_millis(5);
const FLOW_MAX_PAUSE: Duration = Duration::from_millis(50);
const FLOW_QUIET_AFTER_STALL: Duration = Duration::from_millis(100);
/// How often a connection that is not reading its socket (blocked by an alarm, or its
/// client not reading replies) checks whether the client has gone.
const SOCKET_CHECK_WHILE_NOT_READING: Duration = Duration::from_millis(200);

/// Whether the peer closed or reset the socket, without reading from it: unread requests
/// may sit in front of the FIN, so a read would not see it; poll reports it (POLLRDHUP is
/// set once the FIN has arrived, POLLHUP/POLLERR after a reset).
pub(crate) fn socket_closed(sock: &TcpStream) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    // nix has no name for Linux's POLLRDHUP.
    let rdhup = PollFlags::from_bits_retain(nix::libc::POLLRDHUP);
    let mut fds = [PollFd::new(sock.as_fd(), rdhup)];
    match poll(&mut fds, PollTimeout::ZERO) {
        // revents() is None when a flag nix does not know is set: POLLRDHUP.
        Ok(n) if n > 0 => fds[0].revents().is_none_or(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
        _ => false,
    }
}

/// The read side of a client's stream (plain TCP or TLS).
pub(crate) trait ClientReader: AsyncRead + Unpin + Send {
    /// Whether the peer closed or reset the connection, checked without reading.
    fn peer_closed(&self) -> bool;
}

impl ClientReader for OwnedReadHalf {
    fn peer_closed(&self) -> bool {
        socket_closed(self.as_ref())
    }
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::StartOk => "starting",
            Phase::TuneOk => "tuning",
            Phase::Open => "opening",
            Phase::Running => "running",
            Phase::Closing(_) => "closing",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    StartOk,
    TuneOk,
    Open,
    Running,
    /// We sent connection.close; waiting for close-ok until the deadline.
    Closing(Instant),
}

/// Channel numbers are small integers chosen by the client: they need no SipHash (looked up
/// for every frame).
type ChannelIdHash = std::hash::BuildHasherDefault<ChannelIdHasher>;

#[derive(Default)]
struct ChannelIdHasher(u64);

impl std::hash::Hasher for ChannelIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u16(&mut self, n: u16) {
        // Spread over the high bits too: hashbrown takes its tag from the top 7 bits.
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A connection-level error with the method it happened in.
struct HardError {
    err: AmqpError,
    class_id: u16,
    method_id: u16,
}

impl HardError {
    fn new(err: AmqpError) -> Self {
        HardError { err, class_id: 0, method_id: 0 }
    }
    fn at(err: AmqpError, ids: (u16, u16)) -> Self {
        HardError { err, class_id: ids.0, method_id: ids.1 }
    }
}

struct Conn {
    id: u64,
    peer: SocketAddr,
    endpoint: Endpoint,
    state: Arc<ServerState>,
    outbox: Arc<Outbox>,
    phase: Phase,
    /// Frame size limit for incoming frames, framing included.
    frame_max: u32,
    channel_max: u16,
    heartbeat_secs: u16,
    client_caps: FieldTable,
    /// connection.start-ok's properties and mechanism, for the management API.
    client_properties: FieldTable,
    auth_mechanism: String,
    user: String,
    /// The client's `connection_name` property (RabbitMQ's {client_id} in topic permissions).
    client_id: Option<String>,
    ctx: Option<ConnCtx>,
    /// Set at connection.open: this connection in the node's registry.
    registered: Option<crate::registry::Registered>,
    channels: HashMap<u16, Channel, ChannelIdHash>,
    /// Channels that published in the current read batch (confirms to flush).
    confirm_dirty: Vec<u16>,
    /// A channel's replies wait for the definitions log: (channel, sequence number, the
    /// method's class and method ids); no request is handled until it is done.
    commit_wait: Option<(u16, u64, (u16, u16))>,
    /// The socket should close once the outbox is flushed.
    finished: bool,
    /// The client has published: resource alarms block this connection.
    published: bool,
    /// Blocked by a resource alarm (and connection.blocked sent, if the client supports it).
    blocked: bool,
    /// Not reading because the outbox is over `outbox_max_bytes`.
    outbox_paused: bool,
    /// How many times that happened.
    outbox_pauses: u64,
}

/// A publisher's pause for a queue in flow: RabbitMQ's credit flow throttles a publisher
/// to what its queues absorb; here the pause lasts while the queue stays in flow and its
/// consumers keep taking messages. Returns false if it ended for lack of progress.
async fn flow_pause(q: &broker::Queue) -> bool {
    let start = Instant::now();
    loop {
        let seen = q.deliveries();
        let cleared = std::future::poll_fn(|cx| q.poll_flow_cleared(cx));
        if tokio::time::timeout(FLOW_PROGRESS_WINDOW, cleared).await.is_ok() || start.elapsed() >= FLOW_MAX_PAUSE {
            return true;
        }
        if q.deliveries() == seen {
            return false;
        }
    }
}

/// Serve one accepted TCP connection until it closes.
pub async fn serve_connection(stream: TcpStream, peer: SocketAddr, state: Arc<ServerState>) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok();
    // Owned halves: no lock between the reading task and the writer task.
    let (rd, wr) = stream.into_split();
    serve_stream(rd, wr, Endpoint { peer, local, tls: false }, state).await;
}

/// Where a client connection comes from and arrives at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Endpoint {
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
    pub tls: bool,
}

/// Serve one client's stream (plain, or TLS after its handshake) until it closes.
pub(crate) async fn serve_stream<R, W>(mut rd: R, wr: W, endpoint: Endpoint, state: Arc<ServerState>)
where
    R: ClientReader,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let peer = endpoint.peer;
    let id = state.next_connection_id();
    let _counted = state.connection_opened();
    let outbox = Outbox::new(state.config.outbox_high_water_bytes, state.config.frame_max);
    let writer = tokio::spawn(outbox.clone().run_writer(wr));
    debug!(conn = id, %peer, "accepting AMQP connection");
    let mut conn = Conn {
        id,
        peer,
        endpoint,
        // Until tune-ok, frames are limited to the spec's minimum, as in RabbitMQ.
        frame_max: wire::FRAME_MIN_SIZE_BYTES,
        channel_max: state.config.channel_max,
        heartbeat_secs: 0,
        state,
        outbox: outbox.clone(),
        phase: Phase::StartOk,
        client_caps: FieldTable::new(),
        client_properties: FieldTable::new(),
        auth_mechanism: String::new(),
        user: String::new(),
        client_id: None,
        ctx: None,
        registered: None,
        channels: HashMap::default(),
        confirm_dirty: Vec::new(),
        commit_wait: None,
        finished: false,
        published: false,
        blocked: false,
        outbox_paused: false,
        outbox_pauses: 0,
    };
    let reason = conn.run(&mut rd).await;
    conn.teardown();
    outbox.close();
    if tokio::time::timeout(Duration::from_secs(5), writer).await.is_err() {
        debug!(conn = id, "writer did not finish flushing in time");
    }
    if conn.ctx.is_some() {
        info!(conn = id, %peer, user = %conn.user, "closing AMQP connection: {reason}");
    } else {
        debug!(conn = id, %peer, "connection closed before handshake completed: {reason}");
    }
}

impl Conn {
    fn send(&self, channel: u16, m: &Method) {
        self.outbox.write_with(|out| frame::encode_method(out, channel, m));
    }

    /// The client has more unsent replies than `outbox_max_bytes`: stop handling its
    /// requests (only while running: the handshake and closing exchange little).
    fn outbox_over_limit(&self) -> bool {
        self.phase == Phase::Running && self.outbox.unsent_bytes() >= self.state.config.outbox_max_bytes
    }

    async fn run<R: ClientReader>(&mut self, rd: &mut R) -> String {
        // Start small and grow with traffic: an idle connection holds a few KiB, a busy one
        // reads READ_CHUNK_BYTES at a time.
        let mut read_chunk = READ_INITIAL_BYTES;
        let mut read_chunk_max = READ_CHUNK_BYTES;
        let mut reads_without_large_frame = 0u32;
        let mut flow_quiet_until = Instant::now();
        let mut buf = BytesMut::with_capacity(read_chunk);
        // What the memory breakdown was last told the read buffer holds.
        let mut read_capacity = 0;
        let handshake_deadline = Instant::now() + self.state.config.handshake_timeout;
        // Protocol header.
        while buf.len() < 8 {
            let left = handshake_deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rd.read_buf(&mut buf)).await {
                Err(_) => return "handshake timeout".into(),
                Ok(Ok(0)) => return "client closed before sending the protocol header".into(),
                Ok(Err(e)) => return format!("read error: {e}"),
                Ok(Ok(_)) => {}
            }
        }
        if buf[..8] != wire::PROTOCOL_HEADER {
            warn!(conn = self.id, peer = %self.peer, header = ?&buf[..8], "bad protocol header, replying with AMQP 0-9-1's");
            self.outbox.write_with(|out| out.extend_from_slice(&wire::PROTOCOL_HEADER));
            return "protocol header mismatch".into();
        }
        buf.advance(8);
        self.send_start();

        let mut shutdown = self.state.shutdown.clone();
        let mut durable = self.state.commit.clone();
        let mut store_gone = false;
        // Quorum-queue confirms wait for the cluster (clustered nodes only).
        let mut replicated = self.state.quorum.get().map(|q| q.settled());
        let mut shutdown_seen = false;
        let mut alarms = self.state.alarms.clone();
        let mut last_read = Instant::now();
        let mut tick_period = Duration::from_millis(250);
        let mut tick = tokio::time::interval(tick_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Decode and handle every whole frame buffered.
            let mut handled = 0usize;
            loop {
                if self.outbox_over_limit() {
                    // The client does not read its replies: leave its requests unread
                    // (in `buf` and in the socket) until the writer drains.
                    break;
                }
                if let Some((channel, seq, ids)) = self.commit_wait.take() {
                    // A durable declare/bind/delete: its reply goes out once its record is
                    // fsynced, and the next request is handled after that (replies in
                    // order). Awaited, so this thread serves other connections meanwhile.
                    self.await_definitions(channel, seq, ids).await;
                    if self.finished {
                        return "closed".into();
                    }
                    continue;
                }
                match wire::decode_frame(&mut buf, self.frame_max) {
                    Ok(Some(f)) => {
                        handled += 1;
                        if let Err(e) = self.on_frame(f) {
                            self.begin_close(e);
                        }
                        if self.finished {
                            return "closed".into();
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!(conn = self.id, peer = %self.peer, code = e.code, "frame error: {e}");
                        let err = HardError {
                            err: AmqpError::new(e.code, e.text.clone()),
                            class_id: e.class_id,
                            method_id: e.method_id,
                        };
                        self.begin_close(err);
                        // The stream cannot be parsed past a framing error: stop reading.
                        return format!("{e}");
                    }
                }
            }
            // Tick fast while a deadline is near (handshake, closing), slowly once running:
            // idle connections must cost (almost) nothing.
            self.update_blocked();
            let paused = self.outbox_over_limit();
            if paused && !self.outbox_paused {
                // A warning the first time; a slow reader may go over the limit often.
                let limit = self.state.config.outbox_max_bytes;
                if self.outbox_pauses == 0 {
                    warn!(conn = self.id, peer = %self.peer, limit, "client does not read its replies: not reading its requests until it does (outbox_max_bytes)");
                } else {
                    debug!(
                        conn = self.id,
                        limit,
                        pauses = self.outbox_pauses,
                        "outbox over outbox_max_bytes again: not reading"
                    );
                }
                self.outbox_pauses += 1;
            }
            self.outbox_paused = paused;
            let want = match self.phase {
                // Not reading: a closed socket is only seen by checking it.
                Phase::Running if self.blocked || paused => SOCKET_CHECK_WHILE_NOT_READING,
                Phase::Running if self.channels.values().any(Channel::has_consumer_timeouts) => {
                    Duration::from_millis(250)
                }
                Phase::Running if self.heartbeat_secs > 0 => {
                    Duration::from_millis(u64::from(self.heartbeat_secs) * 250)
                }
                Phase::Running => Duration::from_secs(10),
                _ => Duration::from_millis(250),
            };
            if want != tick_period {
                tick_period = want;
                tick = tokio::time::interval_at(tokio::time::Instant::now() + want, want);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            self.flush_confirms();
            if handled >= YIELD_AFTER_FRAMES {
                // A flooding publisher always finds its socket readable, so it would keep
                // this worker thread for tokio's whole budget (~100 reads): let the
                // connections that consume and ack run in between.
                tokio::task::yield_now().await;
            }
            if self.blocked || paused {
                // Not reading is how a blocked publisher (or a client that does not read
                // its replies) is paused; it is not silence.
                last_read = Instant::now();
            }
            // Room for the frame being received, whole (a big body frame then arrives in
            // one buffer without regrowing it read by read), or for a read chunk.
            let pending_frame = match buf.get(3..7) {
                Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize + wire::FRAME_OVERHEAD_BYTES,
                None => 0,
            };
            if pending_frame >= LARGE_FRAME_BYTES {
                read_chunk_max = READ_CHUNK_LARGE_BYTES;
                reads_without_large_frame = 0;
            } else if read_chunk_max > READ_CHUNK_BYTES {
                reads_without_large_frame += 1;
                if reads_without_large_frame > LARGE_FRAMES_GONE_AFTER_READS {
                    read_chunk_max = READ_CHUNK_BYTES;
                    read_chunk = read_chunk.min(READ_CHUNK_BYTES);
                }
            }
            let want_room =
                pending_frame.min(self.frame_max as usize + wire::FRAME_OVERHEAD_BYTES).saturating_sub(buf.len());
            if buf.capacity() - buf.len() < want_room.max(read_chunk / 4) {
                buf.reserve(want_room.max(read_chunk));
            }
            if buf.capacity() != read_capacity {
                read_capacity = buf.capacity();
                self.outbox.read_capacity.store(read_capacity, std::sync::atomic::Ordering::Relaxed);
            }
            if let Some(q) = self.ctx.as_ref().and_then(|c| c.flow.take())
                && Instant::now() >= flow_quiet_until
            {
                let shown = self.registered.as_ref().map(|r| r.handle.clone());
                shown.iter().for_each(|h| h.in_flow.store(true, std::sync::atomic::Ordering::Relaxed));
                let progressed = flow_pause(&q).await;
                shown.iter().for_each(|h| h.in_flow.store(false, std::sync::atomic::Ordering::Relaxed));
                if !progressed {
                    debug!(conn = self.id, queue = %q.name, "flow: consumers made no progress, not pausing for a while");
                    flow_quiet_until = Instant::now() + FLOW_QUIET_AFTER_STALL;
                }
            }
            tokio::select! {
                _ = alarms.changed(), if self.published => {}
                _ = self.outbox.drained(), if paused => {}
                r = rd.read_buf(&mut buf), if !self.blocked && !paused => match r {
                    Ok(0) => return "client closed the socket".into(),
                    Ok(n) => {
                        last_read = Instant::now();
                        broker::counters::bump_single_writer(&self.outbox.recv_oct, n as u64);
                        if n >= read_chunk / 2 {
                            read_chunk = (read_chunk * 2).min(read_chunk_max);
                        }
                    }
                    Err(e) => return format!("read error: {e}"),
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    match self.phase {
                        Phase::Closing(deadline) if now >= deadline => return "no close-ok in time".into(),
                        Phase::StartOk | Phase::TuneOk | Phase::Open if now >= handshake_deadline => {
                            warn!(conn = self.id, peer = %self.peer, "handshake timeout");
                            return "handshake timeout".into();
                        }
                        _ => {}
                    }
                    if (self.blocked || paused) && rd.peer_closed() {
                        return "client closed the socket while not being read".into();
                    }
                    self.check_consumer_timeouts();
                    if buf.is_empty() && buf.capacity() > READ_INITIAL_BYTES && now.duration_since(last_read) >= tick_period {
                        // Idle for a tick: give back what traffic grew the read buffer to
                        // (up to READ_CHUNK_LARGE_BYTES); it grows again with the next burst.
                        buf = BytesMut::new();
                        read_chunk = READ_INITIAL_BYTES;
                        read_chunk_max = READ_CHUNK_BYTES;
                    }
                    if self.heartbeat_secs > 0 {
                        let hb = Duration::from_secs(self.heartbeat_secs.into());
                        if now.duration_since(last_read) > hb * 2 {
                            warn!(conn = self.id, peer = %self.peer, "missed heartbeats from client, timeout: {}s", self.heartbeat_secs);
                            return "missed heartbeats".into();
                        }
                        if now.duration_since(self.outbox.last_write()) >= hb / 2 {
                            self.outbox.write_with(frame::encode_heartbeat);
                        }
                    }
                },
                r = async { replicated.as_mut().expect("guarded").changed().await }, if replicated.is_some() && !self.confirm_dirty.is_empty() => {
                    if r.is_err() {
                        replicated = None;
                    }
                }
                r = durable.changed(), if !self.confirm_dirty.is_empty() && !store_gone => {
                    // An error means the store stopped (shutdown): nothing more will
                    // become durable, so stop waiting for it.
                    store_gone = r.is_err();
                }
                (code, text) = Self::close_requested(&self.registered), if self.registered.is_some() && !matches!(self.phase, Phase::Closing(_)) => {
                    self.begin_close(HardError::new(AmqpError::new(code, text)));
                }
                r = shutdown.changed(), if !shutdown_seen => {
                    if r.is_err() || *shutdown.borrow() {
                        shutdown_seen = true;
                        if !matches!(self.phase, Phase::Closing(_)) {
                            self.begin_close(HardError::new(AmqpError::new(reply::CONNECTION_FORCED, "broker forced connection closure with reason 'shutdown'")));
                        }
                        // Do not wait for close-ok long at shutdown.
                        self.phase = Phase::Closing(Instant::now() + Duration::from_millis(500));
                    }
                }
            }
        }
    }

    /// The node asked this connection to close (its vhost or user was deleted, ...).
    async fn close_requested(r: &Option<crate::registry::Registered>) -> (u16, String) {
        match r {
            Some(r) => r.handle.close_requested().await,
            None => std::future::pending().await,
        }
    }

    fn send_start(&self) {
        let mut caps = FieldTable::new();
        for cap in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "consumer_priorities",
            "authentication_failure_close",
            "per_consumer_qos",
            "direct_reply_to",
        ] {
            caps.insert(cap, FieldValue::Bool(true));
        }
        let s = |v: &str| FieldValue::LongStr(bytes::Bytes::copy_from_slice(v.as_bytes()));
        let mut props = FieldTable::new();
        // Warren's own: publishes to amq.warren.lease extend a delivery's consumer timeout.
        caps.insert("warren.lease_extension", FieldValue::Bool(true));
        props.insert("capabilities", FieldValue::Table(caps));
        props.insert("cluster_name", s("warren@localhost"));
        props.insert("copyright", s("Copyright (c) the Warren authors"));
        props.insert("information", s("Warren: an AMQP 0-9-1 broker compatible with RabbitMQ clients"));
        props.insert("platform", s("Rust"));
        props.insert("product", s("Warren"));
        props.insert("version", s(env!("CARGO_PKG_VERSION")));
        self.send(
            0,
            &Method::ConnectionStart {
                version_major: 0,
                version_minor: 9,
                server_properties: props,
                mechanisms: b"PLAIN AMQPLAIN".to_vec(),
                locales: b"en_US".to_vec(),
            },
        );
    }

    fn client_has(&self, cap: &str) -> bool {
        matches!(self.client_caps.get(cap), Some(FieldValue::Bool(true)))
    }

    /// Send connection.close and wait for close-ok (frames other than close/close-ok are
    /// ignored meanwhile). Channels are torn down at once.
    fn begin_close(&mut self, e: HardError) {
        if matches!(self.phase, Phase::Closing(_)) {
            return;
        }
        if e.err.code != reply::CONNECTION_FORCED {
            warn!(conn = self.id, peer = %self.peer, code = e.err.code, "closing connection: {}", e.err.reply_text());
        } else {
            info!(conn = self.id, peer = %self.peer, "closing connection: {}", e.err.reply_text());
        }
        self.teardown();
        self.send(
            0,
            &Method::ConnectionClose {
                reply_code: e.err.code,
                reply_text: e.err.reply_text(),
                class_id: e.class_id,
                method_id: e.method_id,
            },
        );
        self.phase = Phase::Closing(Instant::now() + CLOSE_OK_TIMEOUT);
    }

    fn on_frame(&mut self, f: Frame) -> Result<(), HardError> {
        if let Phase::Closing(_) = self.phase {
            match f {
                Frame::Method { channel: 0, method: Method::ConnectionCloseOk } => self.finished = true,
                Frame::Method { channel: 0, method: Method::ConnectionClose { .. } } => {
                    self.send(0, &Method::ConnectionCloseOk);
                    self.finished = true;
                }
                _ => {}
            }
            return Ok(());
        }
        match f {
            Frame::Heartbeat { channel } => {
                if channel != 0 {
                    return Err(HardError::new(AmqpError::new(
                        reply::FRAME_ERROR,
                        format!("heartbeat frame on channel {channel}"),
                    )));
                }
                Ok(())
            }
            Frame::Method { channel: 0, method } => self.on_connection_method(method),
            Frame::Method { channel, method } => {
                if self.phase != Phase::Running {
                    return Err(HardError::at(
                        AmqpError::new(reply::UNEXPECTED_FRAME, "channel methods before connection.open-ok"),
                        method.ids(),
                    ));
                }
                self.on_channel_method(channel, method)
            }
            Frame::Header { channel, class_id, body_size, properties } => {
                let done = {
                    let (ch, ctx) = self.channel_for_content(channel)?;
                    let Some(ch) = ch else { return Ok(()) };
                    ch.content_header(ctx, class_id, body_size, properties)
                };
                self.after_content(channel, done)
            }
            Frame::Body { channel, payload } => {
                let done = {
                    let (ch, _) = self.channel_for_content(channel)?;
                    let Some(ch) = ch else { return Ok(()) };
                    ch.content_body(payload)
                };
                self.after_content(channel, done)
            }
        }
    }

    /// The open channel a content frame belongs to; None if it is closing (frame dropped).
    fn channel_for_content(&mut self, channel: u16) -> Result<(Option<&mut Channel>, &ConnCtx), HardError> {
        let unexpected = || {
            HardError::new(AmqpError::new(
                reply::UNEXPECTED_FRAME,
                format!("content frame on channel {channel}, which expects a method"),
            ))
        };
        let Some(ctx) = self.ctx.as_ref() else { return Err(unexpected()) };
        match self.channels.get_mut(&channel) {
            None => Err(unexpected()),
            Some(ch) if ch.closing => Ok((None, ctx)),
            Some(ch) => Ok((Some(ch), ctx)),
        }
    }

    fn after_content(&mut self, channel: u16, progress: Result<ContentProgress, AmqpError>) -> Result<(), HardError> {
        let publish = (wire::class::BASIC, 40);
        let result = match progress {
            Ok(ContentProgress::NeedMore) => return Ok(()),
            Ok(ContentProgress::Complete) => {
                let Some(ctx) = self.ctx.as_ref() else { return Ok(()) };
                let Some(ch) = self.channels.get_mut(&channel) else { return Ok(()) };
                let r = ch.finish_publish(ctx);
                if !self.confirm_dirty.contains(&channel) {
                    self.confirm_dirty.push(channel);
                }
                r
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.is_hard() => Err(HardError::at(e, publish)),
            Err(e) => {
                self.close_channel(channel, e, publish);
                Ok(())
            }
        }
    }

    /// Send confirms the disk allows; channels still waiting stay in `confirm_dirty`.
    fn flush_confirms(&mut self) {
        if self.confirm_dirty.is_empty() {
            return;
        }
        let commit = *self.state.commit.borrow();
        let quorum = self.state.quorum.get();
        let channels = &mut self.channels;
        let mut failed = None;
        self.confirm_dirty.retain(|id| match channels.get_mut(id) {
            Some(ch) => {
                if let Err(e) = ch.flush_confirms(commit, quorum.map(|q| &**q)) {
                    failed = Some(e);
                }
                ch.waits_for_disk()
            }
            None => false,
        });
        if let Some(e) = failed {
            // A tx.commit the client waits on can never complete (541: connection level).
            self.begin_close(HardError::at(e, (wire::class::TX, 20)));
        }
    }

    /// Block (stop reading) a publishing connection while a resource alarm is on, telling
    /// clients that advertise connection.blocked; unblock when it clears.
    fn update_blocked(&mut self) {
        let alarms = *self.state.alarms.borrow();
        let block = alarms.any() && self.published && self.phase == Phase::Running;
        if block == self.blocked {
            return;
        }
        self.blocked = block;
        if let Some(r) = &self.registered {
            r.handle.blocked.store(block, std::sync::atomic::Ordering::Relaxed);
        }
        info!(conn = self.id, peer = %self.peer, blocked = block, "publishing connection {}", if block { "blocked by a resource alarm" } else { "unblocked" });
        if self.client_has("connection.blocked") {
            let m = if block {
                Method::ConnectionBlocked { reason: alarms.reason().to_owned() }
            } else {
                Method::ConnectionUnblocked
            };
            self.send(0, &m);
        }
    }

    fn check_consumer_timeouts(&mut self) {
        let Some(ctx) = self.ctx.as_ref() else { return };
        let now = Instant::now();
        let mut failed = Vec::new();
        for (id, ch) in self.channels.iter_mut() {
            if ch.closing || !ch.has_consumer_timeouts() {
                continue;
            }
            if let Err(e) = ch.check_consumer_timeouts(ctx, now) {
                failed.push((*id, e));
            }
        }
        for (id, e) in failed {
            self.close_channel(id, e, (wire::class::BASIC, 80));
        }
    }

    /// Close a channel with a soft error: tear it down and wait for close-ok.
    fn close_channel(&mut self, channel: u16, e: AmqpError, ids: (u16, u16)) {
        warn!(conn = self.id, channel, code = e.code, "channel error: {}", e.reply_text());
        let Some(ch) = self.channels.get_mut(&channel) else { return };
        if let Some(ctx) = self.ctx.as_ref() {
            ch.shutdown(ctx);
        }
        ch.closing = true;
        self.send(
            channel,
            &Method::ChannelClose { reply_code: e.code, reply_text: e.reply_text(), class_id: ids.0, method_id: ids.1 },
        );
    }

    fn on_channel_method(&mut self, channel: u16, method: Method) -> Result<(), HardError> {
        let ids = method.ids();
        if matches!(method, Method::BasicPublish { .. }) {
            self.published = true;
        }
        let Some(ch) = self.channels.get_mut(&channel) else {
            return match method {
                Method::ChannelOpen { .. } => self.open_channel(channel),
                _ => Err(HardError::at(
                    AmqpError::new(reply::CHANNEL_ERROR, format!("expected 'channel.open' on channel {channel}")),
                    ids,
                )),
            };
        };
        if ch.closing {
            // We sent channel.close: as RabbitMQ's channel in its closing state, answer a
            // crossing channel.close with close-ok but keep waiting for the client's
            // close-ok (it is on its way, as an answer to our close), and drop all else.
            // Forgetting the channel at the client's close would make that close-ok a
            // frame on an unknown channel, a connection error.
            match method {
                Method::ChannelCloseOk => {
                    self.forget_channel(channel);
                }
                Method::ChannelClose { .. } => self.send(channel, &Method::ChannelCloseOk),
                _ => {}
            }
            return Ok(());
        }
        if ch.expecting_content() {
            return Err(HardError::at(ch.content_interrupted(), ids));
        }
        match method {
            Method::ChannelOpen { .. } => {
                Err(HardError::at(AmqpError::new(reply::CHANNEL_ERROR, "second 'channel.open' seen"), ids))
            }
            Method::ChannelClose { reply_code, reply_text, .. } => {
                debug!(conn = self.id, channel, reply_code, %reply_text, "client closed channel");
                if let Some(ctx) = self.ctx.as_ref() {
                    ch.shutdown(ctx);
                }
                self.forget_channel(channel);
                self.send(channel, &Method::ChannelCloseOk);
                Ok(())
            }
            // A close-ok for a close we never sent: ignore, as RabbitMQ does.
            Method::ChannelCloseOk => Ok(()),
            method => {
                let Some(ctx) = self.ctx.as_ref() else { return Ok(()) };
                match ch.handle(ctx, method) {
                    Ok(()) => {
                        if let Some(seq) = ch.held_for() {
                            self.commit_wait = Some((channel, seq, ids));
                        }
                        if ch.waits_for_disk() && !self.confirm_dirty.contains(&channel) {
                            self.confirm_dirty.push(channel);
                        }
                        Ok(())
                    }
                    Err(e) if e.is_hard() => Err(HardError::at(e, ids)),
                    Err(e) => {
                        self.close_channel(channel, e, ids);
                        Ok(())
                    }
                }
            }
        }
    }

    /// Wait for the definitions log to be fsynced through `seq`, then send the replies
    /// `channel` held back for it; if the fsync failed, close the connection (541).
    async fn await_definitions(&mut self, channel: u16, seq: u64, ids: (u16, u16)) {
        let r = match &self.state.persistence {
            Some(p) => p.committed(seq).await,
            None => Ok(()),
        };
        let Some(ch) = self.channels.get_mut(&channel) else { return };
        match r {
            Ok(()) => ch.release_held(),
            Err(e) => {
                ch.drop_held();
                self.begin_close(HardError::at(e, ids));
            }
        }
    }

    /// A closed channel stops counting against its user's channel limit.
    fn forget_channel(&mut self, channel: u16) {
        if self.channels.remove(&channel).is_some()
            && let Some(r) = &self.registered
        {
            self.state.registry.channel_closed(&r.handle, channel);
        }
    }

    fn open_channel(&mut self, channel: u16) -> Result<(), HardError> {
        let ids = (wire::class::CHANNEL, 10);
        if self.channel_max != 0 && (channel > self.channel_max || self.channels.len() >= usize::from(self.channel_max))
        {
            return Err(HardError::at(
                AmqpError::not_allowed(format!(
                    "number of channels opened ({}) has reached the negotiated channel_max ({})",
                    self.channels.len(),
                    self.channel_max
                )),
                ids,
            ));
        }
        if let Some(r) = &self.registered {
            let max = self.state.with_access(|d| d.user(&self.user).and_then(|u| u.limits.max_channels));
            if let Err(max) = self.state.registry.channel_opened(&r.handle, max) {
                return Err(HardError::at(
                    AmqpError::not_allowed(format!(
                        "number of channels opened for user '{}' has reached the maximum allowed user limit of {max}",
                        self.user
                    )),
                    ids,
                ));
            }
        }
        let shared = ChannelShared::new(channel, self.outbox.clone());
        if let Some(r) = &self.registered {
            self.state.registry.channel_shown(&r.handle, shared.clone());
        }
        self.channels.insert(channel, Channel::new(shared));
        self.send(channel, &Method::ChannelOpenOk { channel_id: Vec::new() });
        Ok(())
    }

    fn on_connection_method(&mut self, method: Method) -> Result<(), HardError> {
        let ids = method.ids();
        match (self.phase, method) {
            (Phase::StartOk, Method::ConnectionStartOk { client_properties, mechanism, response, .. }) => {
                if let Some(FieldValue::Table(caps)) = client_properties.get("capabilities") {
                    self.client_caps = caps.clone();
                }
                self.client_id = client_properties.get("connection_name").and_then(|v| v.as_str()).map(str::to_owned);
                self.auth_mechanism = mechanism.clone();
                self.client_properties = client_properties;
                self.authenticate(&mechanism, &response).map_err(|e| HardError::at(e, ids))?;
                if self.finished {
                    // Refused, and the client wants no close method: just hang up.
                    return Ok(());
                }
                let cfg = &self.state.config;
                self.send(
                    0,
                    &Method::ConnectionTune {
                        channel_max: cfg.channel_max,
                        frame_max: cfg.frame_max,
                        heartbeat: cfg.heartbeat_secs,
                    },
                );
                self.phase = Phase::TuneOk;
                Ok(())
            }
            (Phase::TuneOk, Method::ConnectionTuneOk { channel_max, frame_max, heartbeat }) => {
                let cfg = &self.state.config;
                negotiated("frame_max", wire::FRAME_MIN_SIZE_BYTES, cfg.frame_max, frame_max)
                    .map_err(|e| HardError::at(e, ids))?;
                negotiated("channel_max", 1, cfg.channel_max.into(), channel_max.into())
                    .map_err(|e| HardError::at(e, ids))?;
                self.frame_max = frame_max;
                self.outbox.set_frame_max(frame_max);
                self.channel_max = channel_max;
                self.heartbeat_secs = heartbeat;
                self.phase = Phase::Open;
                Ok(())
            }
            (Phase::Open, Method::ConnectionOpen { virtual_host, .. }) => {
                // RabbitMQ checks connection_max here, counting every open socket
                // (this one included).
                if let Some(max) = self.state.config.connection_max
                    && self.state.connection_count() > max
                {
                    warn!(conn = self.id, peer = %self.peer, connection_max = max, "connection refused: connection_max reached");
                    return Err(HardError::at(
                        AmqpError::not_allowed(format!("connection refused: node connection limit ({max}) is reached")),
                        ids,
                    ));
                }
                let vhost = self.admit(&virtual_host).map_err(|e| HardError::at(e, ids))?;
                self.ctx = Some(ConnCtx {
                    conn_id: self.id,
                    vhost,
                    cancel_notify: self.client_has("consumer_cancel_notify"),
                    max_message_size_bytes: self.state.config.max_message_size_bytes,
                    durable: self.state.commit.clone(),
                    server: self.state.clone(),
                    flow: std::cell::Cell::new(None),
                    access: crate::auth::ConnAccess::new(&self.user, &virtual_host, self.client_id.clone()),
                });
                self.send(0, &Method::ConnectionOpenOk { known_hosts: String::new() });
                self.phase = Phase::Running;
                info!(conn = self.id, peer = %self.peer, user = %self.user, vhost = %virtual_host, "connection opened");
                Ok(())
            }
            (_, Method::ConnectionClose { reply_code, reply_text, .. }) => {
                debug!(conn = self.id, reply_code, %reply_text, "client closed connection");
                self.teardown();
                self.send(0, &Method::ConnectionCloseOk);
                // Like RabbitMQ, leave closing the socket to the client (which may still be
                // reading close-ok), within a short grace period.
                self.phase = Phase::Closing(Instant::now() + CLOSE_LINGER);
                Ok(())
            }
            (Phase::Running, Method::ConnectionUpdateSecret { .. }) => {
                // PLAIN credentials carry no expiring secret; accept and acknowledge.
                self.send(0, &Method::ConnectionUpdateSecretOk);
                Ok(())
            }
            // Clients may send blocked/unblocked? Only servers do; tolerate silently.
            (Phase::Running, Method::ConnectionBlocked { .. } | Method::ConnectionUnblocked) => Ok(()),
            // RabbitMQ: 504 once running ("unexpected method in connection state running"),
            // 503 during the handshake.
            (phase, m) => {
                let code = if phase == Phase::Running { reply::CHANNEL_ERROR } else { reply::COMMAND_INVALID };
                let text = format!("unexpected method {} in connection state {}", m.name(), phase.name());
                Err(HardError::at(AmqpError::new(code, text), ids))
            }
        }
    }

    fn authenticate(&mut self, mechanism: &str, response: &[u8]) -> Result<(), AmqpError> {
        let (user, password) = match mechanism {
            "PLAIN" => match plain_credentials(response) {
                Some((user, pass)) => {
                    (String::from_utf8_lossy(user).into_owned(), String::from_utf8_lossy(pass).into_owned())
                }
                // Refused before looking at the credentials: no user can match.
                None => return self.refuse_login(mechanism, "invalid PLAIN response".into()),
            },
            "AMQPLAIN" => {
                // A field table without its length prefix.
                let mut with_len = (response.len() as u32).to_be_bytes().to_vec();
                with_len.extend_from_slice(response);
                let table = wire::types::decode_table(&with_len).map(|(t, _)| t).unwrap_or_default();
                let get = |k: &str| table.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
                (get("LOGIN"), get("PASSWORD"))
            }
            other => return Err(AmqpError::command_invalid(format!("unknown authentication mechanism '{other}'"))),
        };
        let loopback_only = self.state.config.loopback_users.contains(&user);
        let refused = if let Err(why) = self.state.authenticate(&user, &password) {
            Some(why)
        } else if loopback_only && !self.peer.ip().is_loopback() && !is_mapped_loopback(self.peer.ip()) {
            Some(format!("user '{user}' can only connect via localhost"))
        } else {
            None
        };
        if let Some(why) = refused {
            return self.refuse_login(mechanism, why);
        }
        self.user = user;
        Ok(())
    }

    /// connection.open's checks, in RabbitMQ's order: the vhost exists and is under its
    /// connection limit, the user under theirs, and the user may use the vhost. The
    /// connection is then registered (counted against both limits).
    fn admit(&mut self, vhost: &str) -> Result<Arc<broker::VHost>, AmqpError> {
        let (exists, vhost_max, user_max, permitted) = self.state.with_access(|d| {
            let v = d.vhost(vhost);
            (
                v.is_some(),
                v.and_then(|v| v.limits.max_connections),
                d.user(&self.user).and_then(|u| u.limits.max_connections),
                // Whether an entry exists, not the compiled grants: compiling three regexes
                // here was a third of the broker's CPU in connection churn (the grants a
                // channel checks come from the cache, `ServerState::grants`).
                d.permission(&self.user, vhost).is_some(),
            )
        });
        let broker_vhost = self.state.vhost(vhost);
        let Some(broker_vhost) = broker_vhost.filter(|_| exists) else {
            return Err(AmqpError::not_allowed(format!("vhost {vhost} not found")));
        };
        let refused = |why: String| {
            warn!(conn = self.id, peer = %self.peer, user = %self.user, vhost, "connection refused: {why}");
            AmqpError::not_allowed(why)
        };
        let user = self.user.clone();
        let registered = self.state.registry.register(
            crate::registry::Identity {
                id: self.id,
                endpoint: self.endpoint,
                user: user.clone(),
                vhost: vhost.to_owned(),
                details: crate::registry::ConnDetails {
                    client_properties: self.client_properties.clone(),
                    auth_mechanism: self.auth_mechanism.clone(),
                    frame_max: self.frame_max,
                    channel_max: self.channel_max,
                    heartbeat_secs: self.heartbeat_secs,
                    outbox: self.outbox.clone(),
                },
            },
            vhost_max,
            user_max,
        );
        let registered = match registered {
            Ok(r) => r,
            Err(crate::registry::Refused::VhostLimit(n)) => {
                return Err(refused(format!(
                    "access to vhost '{vhost}' refused for user '{user}': connection limit ({n}) is reached"
                )));
            }
            Err(crate::registry::Refused::UserLimit(n)) => {
                return Err(refused(format!(
                    "connection refused for user '{user}': user connection limit ({n}) is reached"
                )));
            }
        };
        if !permitted {
            return Err(refused(format!("access to vhost '{vhost}' refused for user '{user}'")));
        }
        self.registered = Some(registered);
        Ok(broker_vhost)
    }

    /// A failed login: 403 with RabbitMQ's text to clients that advertise
    /// authentication_failure_close, the socket just closed for the others.
    fn refuse_login(&mut self, mechanism: &str, why: String) -> Result<(), AmqpError> {
        warn!(conn = self.id, peer = %self.peer, mechanism, "authentication failed: {why}");
        let text = format!(
            "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
        );
        if !self.client_has("authentication_failure_close") {
            // Older clients expect the socket to just close.
            self.finished = true;
            self.phase = Phase::Closing(Instant::now());
            return Ok(());
        }
        Err(AmqpError::access_refused(text))
    }

    /// Release everything the connection holds: channels (unacked messages are requeued),
    /// consumers, and its exclusive queues. Idempotent.
    fn teardown(&mut self) {
        let Some(ctx) = self.ctx.as_ref() else { return };
        for (_, mut ch) in self.channels.drain() {
            ch.shutdown(ctx);
        }
        for q in ctx.vhost.queues_owned_by(self.id) {
            notify_deleted(ctx.vhost.remove_queue(&q));
        }
    }
}

/// A SASL PLAIN response as RabbitMQ's rabbit_auth_mechanism_plain reads it: an empty
/// authzid, NUL, the user, NUL, the password, and nothing after it. A non-empty authzid
/// (acting as someone else) or trailing fields are refused. (RabbitMQ answers those with
/// a syntax error and a silent close after 3 s; Warren refuses them like bad credentials,
/// which clients report more clearly.)
fn plain_credentials(response: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = response.strip_prefix(&[0u8])?;
    let nul = rest.iter().position(|b| *b == 0)?;
    let (user, pass) = (&rest[..nul], &rest[nul + 1..]);
    if pass.contains(&0) {
        return None;
    }
    Some((user, pass))
}

fn is_mapped_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        std::net::IpAddr::V4(_) => false,
    }
}

/// RabbitMQ's tune-ok validation: a client value below the minimum, or above the server's
/// (0 meaning "no limit" on either side), is refused with NOT_ALLOWED.
fn negotiated(field: &str, min: u32, server: u32, client: u32) -> Result<(), AmqpError> {
    if client != 0 && client < min {
        return Err(AmqpError::not_allowed(format!(
            "negotiated {field} = {client} is lower than the minimum allowed value ({min})"
        )));
    }
    if server != 0 && (client == 0 || client > server) {
        return Err(AmqpError::not_allowed(format!(
            "negotiated {field} = {client} is higher than the maximum allowed value ({server})"
        )));
    }
    Ok(())
}
