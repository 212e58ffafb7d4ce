//! A minimal AMQP 0-9-1 client over a plain `TcpStream`, able to send what real clients
//! never would, plus the checks every hostile test ends with: the server is still up for
//! everyone else (a fresh lapin connection can publish and get) and nothing panicked.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::{FieldTable, FieldValue, Frame, Method, frame, reply};

use crate::common::TestServer;

/// Upper bound for any single wait on the server: a test that hits it has found a hang.
pub const WAIT: Duration = Duration::from_secs(5);

/// Raw properties with no field set (a flags word of 0).
pub const NO_PROPS: [u8; 2] = [0, 0];

/// Something read from the socket.
#[derive(Debug)]
pub enum Event {
    Frame(Frame),
    /// The server closed the socket (or reset it).
    Eof,
}

/// A connection.close or channel.close from the server.
#[derive(Debug, Clone)]
pub struct Close {
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

pub struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    eof: bool,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        stream.set_nodelay(true).expect("nodelay");
        Raw { stream, buf: BytesMut::with_capacity(16 * 1024), eof: false }
    }

    /// Write bytes; the server must still be reading.
    pub async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(WAIT, self.stream.write_all(bytes))
            .await
            .expect("write timed out: the server stopped reading")
            .expect("write failed");
    }

    /// Write bytes without a time limit (the caller bounds the wait: a server that stops
    /// reading makes this wait for ever).
    pub async fn send_unbounded(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write failed");
    }

    /// Write bytes the server may refuse to read (it may have closed already).
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        matches!(tokio::time::timeout(WAIT, self.stream.write_all(bytes)).await, Ok(Ok(())))
    }

    /// Write one byte at a time with a pause after each, so the server sees every
    /// frame (and the protocol header) arrive in 1-byte pieces.
    pub async fn drip(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.send(std::slice::from_ref(b)).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub async fn send_method(&mut self, channel: u16, m: &Method) {
        self.send(&method_frame(channel, m)).await;
    }

    /// Half-close: the server reads EOF after whatever was sent.
    pub async fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Everything the server sends until it closes the socket (a reset counts as a close).
    pub async fn read_to_eof(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf).to_vec();
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await {
                Err(_) => panic!("the server did not close the socket within {WAIT:?} (got {out:?})"),
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            }
        }
        self.eof = true;
        out
    }

    /// The next frame (heartbeats included) or EOF.
    pub async fn event(&mut self) -> Event {
        loop {
            match wire::decode_frame(&mut self.buf, 0) {
                Ok(Some(f)) => return Event::Frame(f),
                Ok(None) => {}
                Err(e) => panic!("the server sent an undecodable frame: {e}"),
            }
            if self.eof {
                assert!(self.buf.is_empty(), "the server closed the socket in the middle of a frame: {:?}", self.buf);
                return Event::Eof;
            }
            match tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => panic!("nothing from the server within {WAIT:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => self.eof = true,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next frame that is not a heartbeat; panics on EOF.
    pub async fn frame(&mut self) -> Frame {
        loop {
            match self.event().await {
                Event::Frame(Frame::Heartbeat { channel: 0 }) => {}
                Event::Frame(f) => return f,
                Event::Eof => panic!("the server closed the socket while a frame was expected"),
            }
        }
    }

    /// The next method frame; panics on content frames and EOF.
    pub async fn method(&mut self) -> (u16, Method) {
        match self.frame().await {
            Frame::Method { channel, method } => (channel, method),
            other => panic!("expected a method frame, got {other:?}"),
        }
    }

    /// The next method, which must be `ids` on `channel`.
    pub async fn expect(&mut self, channel: u16, ids: (u16, u16)) -> Method {
        let (ch, m) = self.method().await;
        assert!(
            ch == channel && m.ids() == ids,
            "expected {} on channel {channel}, got {m:?} on channel {ch}",
            wire::method::method_name(ids.0, ids.1).unwrap_or("?")
        );
        m
    }

    /// Read until connection.close (other frames, e.g. replies to pipelined requests, are
    /// skipped; a channel.close fails the test), answer close-ok, and wait for the socket
    /// to close.
    pub async fn expect_connection_close(&mut self) -> Close {
        let close = loop {
            match self.event().await {
                Event::Frame(Frame::Method {
                    channel: 0,
                    method: Method::ConnectionClose { reply_code, reply_text, class_id, method_id },
                }) => {
                    break Close { code: reply_code, text: reply_text, class_id, method_id };
                }
                Event::Frame(Frame::Method { channel, method: m @ Method::ChannelClose { .. } }) => {
                    panic!("expected connection.close, got a channel-level error on channel {channel}: {m:?}")
                }
                Event::Frame(_) => {}
                Event::Eof => panic!("the server closed the socket without connection.close"),
            }
        };
        assert!(connection_level(close.code), "connection.close with a channel-level code: {close:?}");
        // RabbitMQ's reply text format: "FRAME_ERROR - ...".
        assert!(close.text.starts_with(&format!("{} - ", reply::name(close.code))), "reply text format: {close:?}");
        // The server may have stopped reading (framing errors): the close-ok is best effort.
        self.try_send(&method_frame(0, &Method::ConnectionCloseOk)).await;
        self.expect_eof().await;
        close
    }

    /// Read until channel.close on `channel`, answer close-ok. Returns the close.
    pub async fn expect_channel_close(&mut self, channel: u16) -> Close {
        loop {
            match self.frame().await {
                Frame::Method {
                    channel: ch,
                    method: Method::ChannelClose { reply_code, reply_text, class_id, method_id },
                } if ch == channel => {
                    self.send_method(channel, &Method::ChannelCloseOk).await;
                    return Close { code: reply_code, text: reply_text, class_id, method_id };
                }
                Frame::Method { channel: 0, method: m @ Method::ConnectionClose { .. } } => {
                    panic!("expected channel.close on channel {channel}, got {m:?}")
                }
                _ => {}
            }
        }
    }

    /// The socket closes; only heartbeats may arrive before that.
    pub async fn expect_eof(&mut self) {
        loop {
            match self.event().await {
                Event::Eof => return,
                Event::Frame(Frame::Heartbeat { channel: 0 }) => {}
                Event::Frame(f) => panic!("expected the socket to close, got {f:?}"),
            }
        }
    }

    // ---- handshake ----

    /// Connect, send the protocol header and read connection.start.
    pub async fn start(addr: SocketAddr) -> Raw {
        let mut c = Raw::connect(addr).await;
        c.send(&wire::PROTOCOL_HEADER).await;
        let start = c.expect(0, (10, 10)).await;
        let Method::ConnectionStart { version_major: 0, version_minor: 9, mechanisms, .. } = start else {
            panic!("bad connection.start: {start:?}")
        };
        assert_eq!(mechanisms, b"PLAIN AMQPLAIN");
        c
    }

    /// Send connection.start-ok. `failure_close` advertises the
    /// authentication_failure_close capability.
    pub async fn start_ok(&mut self, mechanism: &str, response: Vec<u8>, failure_close: bool) {
        self.send(&start_ok_frame(mechanism, response, failure_close)).await;
    }

    /// Expect connection.tune, answer tune-ok with the server's channel_max and frame_max
    /// (or `frame_max` if given) and `heartbeat`. Returns what the server offered.
    pub async fn tune(&mut self, heartbeat: u16, frame_max: Option<u32>) -> (u16, u32, u16) {
        let Method::ConnectionTune { channel_max, frame_max: server_frame_max, heartbeat: server_heartbeat } =
            self.expect(0, (10, 30)).await
        else {
            unreachable!()
        };
        let tune_ok =
            Method::ConnectionTuneOk { channel_max, frame_max: frame_max.unwrap_or(server_frame_max), heartbeat };
        self.send_method(0, &tune_ok).await;
        (channel_max, server_frame_max, server_heartbeat)
    }

    /// connection.open on vhost "/" and its open-ok.
    pub async fn open_vhost(&mut self) {
        self.send_method(0, &connection_open()).await;
        self.expect(0, (10, 41)).await;
    }

    /// A connection through the whole handshake: PLAIN guest/guest, no heartbeats.
    pub async fn open(addr: SocketAddr) -> Raw {
        Raw::open_with(addr, 0, None).await
    }

    pub async fn open_with(addr: SocketAddr, heartbeat: u16, frame_max: Option<u32>) -> Raw {
        let mut c = Raw::start(addr).await;
        c.start_ok("PLAIN", plain("guest", "guest"), true).await;
        c.tune(heartbeat, frame_max).await;
        c.open_vhost().await;
        c
    }

    /// A connection with channel 1 open.
    pub async fn open_channel1(addr: SocketAddr) -> Raw {
        let mut c = Raw::open(addr).await;
        c.open_channel(1).await;
        c
    }

    pub async fn open_channel(&mut self, channel: u16) {
        self.send_method(channel, &Method::ChannelOpen { out_of_band: String::new() }).await;
        self.expect(channel, (20, 11)).await;
    }

    /// queue.declare (non-durable, not exclusive unless asked); returns the message count.
    pub async fn declare_queue(&mut self, channel: u16, name: &str, exclusive: bool) -> u32 {
        self.send_method(channel, &queue_declare(name, false, exclusive)).await;
        let Method::QueueDeclareOk { queue, message_count, .. } = self.expect(channel, (50, 11)).await else {
            unreachable!()
        };
        assert_eq!(queue, name);
        message_count
    }

    /// basic.publish to the default exchange with routing key `queue`.
    pub async fn publish(&mut self, channel: u16, queue: &str, body: &[u8]) {
        self.send(&publish_frames(channel, queue, &NO_PROPS, body, 131_072)).await;
    }

    /// basic.get with no_ack: the body, or None for get-empty.
    pub async fn get(&mut self, channel: u16, queue: &str) -> Option<Vec<u8>> {
        self.send_method(channel, &Method::BasicGet { ticket: 0, queue: queue.to_owned(), no_ack: true }).await;
        match self.method().await {
            (ch, Method::BasicGetEmpty { .. }) if ch == channel => return None,
            (ch, Method::BasicGetOk { .. }) if ch == channel => {}
            other => panic!("expected basic.get-ok/empty on channel {channel}, got {other:?}"),
        }
        let Frame::Header { channel: ch, class_id: 60, body_size, .. } = self.frame().await else {
            panic!("expected a content header after basic.get-ok")
        };
        assert_eq!(ch, channel);
        let mut body = Vec::new();
        while (body.len() as u64) < body_size {
            match self.frame().await {
                Frame::Body { channel: ch, payload } if ch == channel => body.extend_from_slice(&payload),
                other => panic!("expected a body frame, got {other:?}"),
            }
        }
        assert_eq!(body.len() as u64, body_size, "body frames overran the declared size");
        Some(body)
    }

    /// Clean connection.close from the client side.
    pub async fn close(mut self) {
        let close = Method::ConnectionClose { reply_code: 200, reply_text: "bye".into(), class_id: 0, method_id: 0 };
        self.send_method(0, &close).await;
        loop {
            match self.method().await {
                (0, Method::ConnectionCloseOk) => break,
                (_, m @ (Method::ConnectionClose { .. } | Method::ChannelClose { .. })) => {
                    panic!("expected close-ok, got {m:?}")
                }
                _ => {}
            }
        }
        self.expect_eof().await;
    }
}

/// Codes a connection.close may carry: the hard ones, and ACCESS_REFUSED for a refused
/// login (RabbitMQ's only use of 403 at connection level).
pub fn connection_level(code: u16) -> bool {
    reply::is_hard(code) || code == reply::ACCESS_REFUSED
}

// ---- frame builders ----

pub fn method_frame(channel: u16, m: &Method) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode_method(&mut out, channel, m);
    out
}

/// A frame with arbitrary type and payload (size and end octet filled in).
pub fn raw_frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(wire::FRAME_END);
    out
}

/// A method frame from raw arguments: class id, method id, then `args` verbatim.
pub fn raw_method(channel: u16, class_id: u16, method_id: u16, args: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&class_id.to_be_bytes());
    payload.extend_from_slice(&method_id.to_be_bytes());
    payload.extend_from_slice(args);
    raw_frame(wire::FRAME_METHOD, channel, &payload)
}

/// A content header frame for class 60.
pub fn header_frame(channel: u16, body_size: u64, props: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode_header(&mut out, channel, wire::class::BASIC, body_size, props);
    out
}

pub fn body_frame(channel: u16, payload: &[u8]) -> Vec<u8> {
    raw_frame(wire::FRAME_BODY, channel, payload)
}

pub fn publish_method(routing_key: &str) -> Method {
    Method::BasicPublish {
        ticket: 0,
        exchange: String::new(),
        routing_key: routing_key.to_owned(),
        mandatory: false,
        immediate: false,
    }
}

/// basic.publish to the default exchange + header + body frames of at most `frame_max`.
pub fn publish_frames(channel: u16, routing_key: &str, props: &[u8], body: &[u8], frame_max: u32) -> Vec<u8> {
    let mut out = method_frame(channel, &publish_method(routing_key));
    frame::encode_content(&mut out, channel, props, body, frame_max);
    out
}

pub fn queue_declare(name: &str, passive: bool, exclusive: bool) -> Method {
    Method::QueueDeclare {
        ticket: 0,
        queue: name.to_owned(),
        passive,
        durable: false,
        exclusive,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::new(),
    }
}

pub fn connection_open() -> Method {
    Method::ConnectionOpen { virtual_host: "/".into(), capabilities: String::new(), insist: false }
}

pub fn start_ok_frame(mechanism: &str, response: Vec<u8>, failure_close: bool) -> Vec<u8> {
    let mut caps = FieldTable::new();
    caps.insert("authentication_failure_close", FieldValue::Bool(failure_close));
    caps.insert("consumer_cancel_notify", FieldValue::Bool(true));
    let mut props = FieldTable::new();
    props.insert("product", FieldValue::LongStr("warren-hostile-tests".into()));
    props.insert("capabilities", FieldValue::Table(caps));
    let m = Method::ConnectionStartOk {
        client_properties: props,
        mechanism: mechanism.into(),
        response,
        locale: "en_US".into(),
    };
    method_frame(0, &m)
}

/// PLAIN response: authzid NUL authcid NUL password.
pub fn plain(user: &str, password: &str) -> Vec<u8> {
    format!("\0{user}\0{password}").into_bytes()
}

/// AMQPLAIN response: a field table (LOGIN, PASSWORD) without its length prefix.
pub fn amqplain(user: &str, password: &str) -> Vec<u8> {
    let mut t = FieldTable::new();
    t.insert("LOGIN", FieldValue::LongStr(bytes::Bytes::copy_from_slice(user.as_bytes())));
    t.insert("PASSWORD", FieldValue::LongStr(bytes::Bytes::copy_from_slice(password.as_bytes())));
    let mut out = Vec::new();
    wire::types::encode_table(&t, &mut out);
    out.split_off(4)
}

// ---- the server is still fine ----

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// Start a server (and the panic watch, once per process).
pub async fn server() -> TestServer {
    watch_panics();
    TestServer::start().await
}

pub async fn server_with(config: server::Config) -> TestServer {
    watch_panics();
    TestServer::start_with(config).await
}

/// Panics raised outside the test code itself (server, broker, wire, dependencies).
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Record panics from non-test code: a connection task that panics is just dropped by the
/// accept loop, which a client only sees as a closed socket.
fn watch_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let at = info.location().map(|l| l.to_string()).unwrap_or_default();
            if !at.contains("tests/it/") {
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                PANICS.lock().unwrap_or_else(|e| e.into_inner()).push(format!("{at}: {msg}"));
            }
            prev(info);
        }));
    });
}

pub fn assert_no_panics() {
    let panics = PANICS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(panics.is_empty(), "code outside the tests panicked: {panics:#?}");
}

/// The server still serves everyone else: a fresh lapin connection declares a queue,
/// publishes and gets the message back; a fresh raw connection does the same. And no
/// server code panicked.
pub async fn assert_healthy(server: &TestServer) {
    use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
    use lapin::types::FieldTable as LapinTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let check = async {
        let conn = Connection::connect(&server.uri(), ConnectionProperties::default()).await.expect("lapin connect");
        let ch = conn.create_channel().await.expect("lapin channel");
        let q = unique("healthy");
        ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), LapinTable::default())
            .await
            .expect("lapin queue.declare");
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"still alive",
            BasicProperties::default(),
        )
        .await
        .expect("lapin publish");
        let got = ch
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("lapin basic.get")
            .expect("the message published just before");
        assert_eq!(got.delivery.data, b"still alive");
        conn.close(200, "bye".into()).await.expect("lapin close");

        let mut raw = Raw::open_channel1(server.addr).await;
        let q = unique("healthy-raw");
        raw.declare_queue(1, &q, true).await;
        raw.publish(1, &q, b"raw alive").await;
        assert_eq!(raw.get(1, &q).await.as_deref(), Some(&b"raw alive"[..]));
        raw.close().await;
    };
    tokio::time::timeout(WAIT, check).await.expect("health check timed out: the server is stuck");
    assert_no_panics();
}

/// A connection opened before the hostile clients arrive, which must be unaffected by
/// them: a message it left in its queue is still there afterwards, and it can still
/// publish and get.
pub struct Bystander {
    c: Raw,
    queue: String,
}

impl Bystander {
    pub async fn join(server: &TestServer) -> Bystander {
        let mut c = Raw::open_channel1(server.addr).await;
        let queue = unique("bystander");
        c.declare_queue(1, &queue, true).await;
        c.publish(1, &queue, b"before").await;
        Bystander { c, queue }
    }

    pub async fn check(mut self) {
        assert_eq!(self.c.get(1, &self.queue).await.as_deref(), Some(&b"before"[..]), "bystander lost its message");
        self.c.publish(1, &self.queue, b"after").await;
        assert_eq!(self.c.get(1, &self.queue).await.as_deref(), Some(&b"after"[..]));
        self.c.close().await;
    }
}

/// Exclusive queues still in the server's "/" vhost: once their connection has closed
/// (from either side) they must be gone.
pub fn exclusive_queues(server: &TestServer) -> Vec<String> {
    let vhost = server.state.vhost("/").expect("the default vhost");
    vhost.queues().iter().filter(|q| q.options.exclusive).map(|q| q.name.clone()).collect()
}

/// A small deterministic PRNG (xorshift64*), so fuzz cases can be replayed from their seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}
