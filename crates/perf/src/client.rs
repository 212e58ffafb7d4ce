//! A minimal async AMQP 0-9-1 client on top of the `wire` codec.
//!
//! Only what a load generator needs: handshake, one channel, synchronous requests for
//! setup, and hot paths that never allocate per message:
//! - publishing copies a pre-encoded method+header+body template into one buffer per
//!   batch (one write syscall per batch), patching in a timestamp when asked;
//! - reading fills a large buffer and [`peek_hot`] recognises basic.deliver, basic.ack,
//!   basic.nack, content headers and bodies in place; everything else (rare) goes through
//!   [`wire::decode_frame`].

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use wire::frame::{decode_frame, encode_content, encode_method};
use wire::{FieldTable, FieldValue, Frame, Method};

use crate::uri::AmqpUri;

/// Bytes asked of the kernel per read. Large, so one read carries many deliveries or
/// confirms and the per-syscall cost is spread thin.
const READ_CHUNK_BYTES: usize = 1024 * 1024;

/// Read buffer of a [`Connection::open_lean`] connection (it grows when a frame needs more).
const LEAN_READ_CHUNK_BYTES: usize = 4096;

/// frame_max we use when the broker offers 0 ("no limit"): RabbitMQ's default.
const FALLBACK_FRAME_MAX: u32 = 131_072;

/// Limit on incoming frames before tune (the spec minimum would be 4096, but some
/// brokers' connection.start carries large server properties; the peer is local).
const PRE_TUNE_FRAME_MAX: u32 = 1 << 20;

/// How long the closing handshakes may take before we just drop the socket.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// First 8 bytes of a body that carries a send timestamp (bytes 8..16, ns since the Unix
/// epoch, big endian). The marker keeps stray messages (left in a queue by another tool)
/// out of the latency histogram.
pub const TIMESTAMP_MAGIC: [u8; 8] = *b"wperfts1";

/// The channel every connection uses.
pub const CHANNEL: u16 = 1;

/// A frame recognised without decoding it through [`wire::Method`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hot {
    Deliver {
        channel: u16,
        delivery_tag: u64,
    },
    Ack {
        delivery_tag: u64,
        multiple: bool,
    },
    Nack {
        delivery_tag: u64,
        multiple: bool,
    },
    Header {
        body_size: u64,
    },
    /// `timestamp` is set when the payload starts with [`TIMESTAMP_MAGIC`] (only
    /// meaningful for a message's first body frame).
    Body {
        len: usize,
        timestamp: Option<u64>,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum Peek {
    /// Not even a frame header buffered yet.
    Incomplete,
    /// A complete hot frame of this many bytes.
    Hot(Hot, usize),
    /// Anything else, or an incomplete frame: let [`decode_frame`] deal with it (it
    /// checks frame_max and framing errors).
    Cold,
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8).map(|s| u64::from_be_bytes(s.try_into().unwrap_or_default()))
}

/// Look at the frame at the front of `buf` and recognise the per-message frames.
pub fn peek_hot(buf: &[u8]) -> Peek {
    let Some(h) = buf.get(..7) else { return Peek::Incomplete };
    let size = u32::from_be_bytes([h[3], h[4], h[5], h[6]]) as usize;
    let total = size + 8;
    let Some(frame) = buf.get(..total) else { return Peek::Cold };
    if frame[total - 1] != wire::FRAME_END {
        return Peek::Cold;
    }
    let p = &frame[7..total - 1];
    let hot = match h[0] {
        wire::FRAME_METHOD => match p.get(..4) {
            // basic.deliver: consumer-tag shortstr, delivery-tag u64, ...
            Some([0, 60, 0, 60]) => {
                let tag_len = usize::from(*p.get(4).unwrap_or(&255));
                match u64_at(p, 5 + tag_len) {
                    Some(delivery_tag) => Hot::Deliver { channel: u16::from_be_bytes([h[1], h[2]]), delivery_tag },
                    None => return Peek::Cold,
                }
            }
            // basic.ack / basic.nack: delivery-tag u64, bits.
            Some([0, 60, 0, 80 | 120]) if p.len() == 13 => {
                let delivery_tag = u64_at(p, 4).unwrap_or(0);
                let multiple = p[12] & 1 != 0;
                if p[3] == 80 { Hot::Ack { delivery_tag, multiple } } else { Hot::Nack { delivery_tag, multiple } }
            }
            _ => return Peek::Cold,
        },
        // class 60, weight 0, body size, then at least a flags word.
        wire::FRAME_HEADER if p.len() >= 14 && p[..4] == [0, 60, 0, 0] => {
            Hot::Header { body_size: u64_at(p, 4).unwrap_or(0) }
        }
        wire::FRAME_BODY => {
            let timestamp = if p.get(..8) == Some(&TIMESTAMP_MAGIC[..]) { u64_at(p, 8) } else { None };
            Hot::Body { len: p.len(), timestamp }
        }
        _ => return Peek::Cold,
    };
    Peek::Hot(hot, total)
}

#[derive(Debug)]
pub enum Incoming {
    Hot(Hot),
    Frame(Frame),
}

/// The read side: one big buffer, many frames per read.
pub struct Inbound {
    io: OwnedReadHalf,
    buf: BytesMut,
    frame_max: u32,
    /// Bytes reserved per read: [`READ_CHUNK_BYTES`], or small for [`Connection::open_lean`].
    chunk: usize,
}

impl Inbound {
    /// Read more bytes from the socket (cancel-safe: usable in `select!`).
    pub async fn fill(&mut self) -> Result<()> {
        if self.buf.capacity() - self.buf.len() < self.chunk / 4 {
            self.buf.reserve(self.chunk);
        }
        if self.io.read_buf(&mut self.buf).await.context("reading from the broker")? == 0 {
            bail!("connection closed by the broker");
        }
        Ok(())
    }

    /// The next complete frame already buffered, without I/O.
    pub fn next_buffered(&mut self) -> Result<Option<Incoming>> {
        match peek_hot(&self.buf) {
            Peek::Incomplete => Ok(None),
            Peek::Hot(hot, len) => {
                self.buf.advance(len);
                Ok(Some(Incoming::Hot(hot)))
            }
            Peek::Cold => Ok(decode_frame(&mut self.buf, self.frame_max)
                .map_err(|e| anyhow!("undecodable frame from the broker: {e:?}"))?
                .map(Incoming::Frame)),
        }
    }

    /// Whether no complete frame is buffered (the next [`Inbound::next`] reads the socket).
    pub fn next_buffered_is_empty(&self) -> bool {
        match self.buf.get(3..7) {
            None => true,
            Some(s) => u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize + 8 > self.buf.len(),
        }
    }

    pub async fn next(&mut self) -> Result<Incoming> {
        loop {
            if let Some(incoming) = self.next_buffered()? {
                return Ok(incoming);
            }
            self.fill().await?;
        }
    }
}

/// The write side: frames accumulate in `buf` and go out in one write.
pub struct Outbound {
    io: OwnedWriteHalf,
    pub buf: Vec<u8>,
}

impl Outbound {
    pub fn method(&mut self, channel: u16, method: &Method) {
        encode_method(&mut self.buf, channel, method);
    }

    pub async fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.io.write_all(&self.buf).await.context("writing to the broker")?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// An open connection with channel [`CHANNEL`] open.
pub struct Connection {
    pub rx: Inbound,
    pub tx: Outbound,
    pub frame_max: u32,
    pub heartbeat: u16,
    /// "product version" from connection.start, for the report.
    pub server: String,
}

fn longstr(s: &str) -> FieldValue {
    FieldValue::LongStr(Bytes::copy_from_slice(s.as_bytes()))
}

fn client_properties(name: &str) -> FieldTable {
    let mut caps = FieldTable::new();
    for cap in [
        "publisher_confirms",
        "consumer_cancel_notify",
        "basic.nack",
        "connection.blocked",
        "exchange_exchange_bindings",
        "authentication_failure_close",
    ] {
        caps.insert(cap, FieldValue::Bool(true));
    }
    let mut t = FieldTable::new();
    t.insert("product", longstr("warren-perf"));
    t.insert("version", longstr(env!("CARGO_PKG_VERSION")));
    t.insert("platform", longstr("Rust"));
    t.insert("connection_name", longstr(name));
    t.insert("capabilities", FieldValue::Table(caps));
    t
}

fn server_string(props: &FieldTable) -> String {
    let get = |k: &str| props.get(k).and_then(FieldValue::as_str).unwrap_or("?").to_owned();
    format!("{} {}", get("product"), get("version"))
}

/// Error for a close the broker initiated, with RabbitMQ's reply text.
pub(crate) fn closed_error(what: &str, code: u16, text: &str, class_id: u16, method_id: u16) -> anyhow::Error {
    let method =
        wire::method::method_name(class_id, method_id).map(|m| format!(" (in reply to {m})")).unwrap_or_default();
    anyhow!("broker closed the {what}: {code} {text}{method}")
}

impl Connection {
    /// Connect, PLAIN login, tune (accepting the broker's frame_max and channel_max),
    /// open the vhost and channel [`CHANNEL`].
    pub async fn open(uri: &AmqpUri, heartbeat: u16, name: &str) -> Result<Connection> {
        let stream = TcpStream::connect(uri.addr).await.with_context(|| format!("connecting to {}", uri.addr))?;
        Self::handshake(stream, uri, heartbeat, name, READ_CHUNK_BYTES, 64 * 1024).await
    }

    /// Like [`Connection::open`] with small buffers (for holding tens of thousands of
    /// connections that each move a few frames), from the loopback address `local` when
    /// given (each source address has its own ephemeral port range).
    pub async fn open_lean(
        uri: &AmqpUri,
        heartbeat: u16,
        name: &str,
        local: Option<std::net::IpAddr>,
    ) -> Result<Connection> {
        let stream = match local {
            None => TcpStream::connect(uri.addr).await,
            Some(ip) => {
                let socket = if uri.addr.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.bind(std::net::SocketAddr::new(ip, 0)).with_context(|| format!("binding to {ip}"))?;
                socket.connect(uri.addr).await
            }
        }
        .with_context(|| format!("connecting to {}", uri.addr))?;
        Self::handshake(stream, uri, heartbeat, name, LEAN_READ_CHUNK_BYTES, 512).await
    }

    async fn handshake(
        stream: TcpStream,
        uri: &AmqpUri,
        heartbeat: u16,
        name: &str,
        chunk: usize,
        write_capacity: usize,
    ) -> Result<Connection> {
        // Batches are written whole; Nagle would only delay the small ones (acks, setup).
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let mut conn = Connection {
            rx: Inbound { io: r, buf: BytesMut::with_capacity(chunk), frame_max: PRE_TUNE_FRAME_MAX, chunk },
            tx: Outbound { io: w, buf: Vec::with_capacity(write_capacity) },
            frame_max: FALLBACK_FRAME_MAX,
            heartbeat,
            server: String::new(),
        };
        conn.tx.buf.extend_from_slice(&wire::PROTOCOL_HEADER);
        conn.tx.flush().await?;
        let start = conn.rx.next().await.context("waiting for connection.start")?;
        let Incoming::Frame(Frame::Method {
            method: Method::ConnectionStart { server_properties, mechanisms, .. },
            ..
        }) = start
        else {
            bail!("expected connection.start from the broker, got {start:?}");
        };
        conn.server = server_string(&server_properties);
        if !mechanisms.split(|&b| b == b' ').any(|m| m == b"PLAIN") {
            bail!("broker does not offer PLAIN authentication (offers {:?})", String::from_utf8_lossy(&mechanisms));
        }
        let mut response = vec![0];
        response.extend_from_slice(uri.user.as_bytes());
        response.push(0);
        response.extend_from_slice(uri.password.as_bytes());
        conn.tx.method(
            0,
            &Method::ConnectionStartOk {
                client_properties: client_properties(name),
                mechanism: "PLAIN".into(),
                response,
                locale: "en_US".into(),
            },
        );
        conn.tx.flush().await?;
        let (channel_max, frame_max) = match conn.recv_method(0).await.context("logging in")? {
            Method::ConnectionTune { channel_max, frame_max, .. } => (channel_max, frame_max),
            Method::ConnectionSecure { .. } => bail!("broker asked for a SASL challenge; only PLAIN is supported"),
            other => bail!("expected connection.tune, got {}", other.name()),
        };
        conn.frame_max = if frame_max == 0 { FALLBACK_FRAME_MAX } else { frame_max };
        conn.rx.frame_max = conn.frame_max;
        conn.tx.method(
            0,
            &Method::ConnectionTuneOk {
                channel_max: if channel_max == 0 { 2047 } else { channel_max },
                frame_max: conn.frame_max,
                heartbeat,
            },
        );
        conn.tx.method(
            0,
            &Method::ConnectionOpen { virtual_host: uri.vhost.clone(), capabilities: String::new(), insist: false },
        );
        conn.tx.flush().await?;
        match conn.recv_method(0).await.with_context(|| format!("opening vhost {:?}", uri.vhost))? {
            Method::ConnectionOpenOk { .. } => {}
            other => bail!("expected connection.open-ok, got {}", other.name()),
        }
        match conn.rpc(&Method::ChannelOpen { out_of_band: String::new() }).await? {
            Method::ChannelOpenOk { .. } => {}
            other => bail!("expected channel.open-ok, got {}", other.name()),
        }
        Ok(conn)
    }

    /// Wait for the next method on `channel`, answering heartbeats nothing and turning
    /// broker-initiated closes into errors (after replying close-ok).
    pub async fn recv_method(&mut self, channel: u16) -> Result<Method> {
        loop {
            match self.rx.next().await? {
                Incoming::Frame(Frame::Method {
                    method: Method::ConnectionClose { reply_code, reply_text, class_id, method_id },
                    ..
                }) => {
                    self.tx.method(0, &Method::ConnectionCloseOk);
                    let _ = self.tx.flush().await;
                    return Err(closed_error("connection", reply_code, &reply_text, class_id, method_id));
                }
                Incoming::Frame(Frame::Method {
                    channel: ch,
                    method: Method::ChannelClose { reply_code, reply_text, class_id, method_id },
                }) => {
                    self.tx.method(ch, &Method::ChannelCloseOk);
                    let _ = self.tx.flush().await;
                    return Err(closed_error("channel", reply_code, &reply_text, class_id, method_id));
                }
                Incoming::Frame(Frame::Method { channel: ch, method }) if ch == channel => return Ok(method),
                // Heartbeats, connection.blocked, stray content: nothing to do during setup.
                _ => {}
            }
        }
    }

    /// Send a synchronous request on [`CHANNEL`] and return the reply.
    pub async fn rpc(&mut self, method: &Method) -> Result<Method> {
        self.rpc_on(CHANNEL, method).await
    }

    /// Send a synchronous request on `channel` and return the reply.
    pub async fn rpc_on(&mut self, channel: u16, method: &Method) -> Result<Method> {
        self.tx.method(channel, method);
        self.tx.flush().await?;
        self.recv_method(channel).await.with_context(|| method.name())
    }

    /// connection.close, then wait (bounded) for close-ok, discarding whatever arrives
    /// meanwhile (deliveries in flight, confirms).
    pub async fn close(mut self) -> Result<()> {
        self.tx.method(
            0,
            &Method::ConnectionClose { reply_code: 200, reply_text: "bye".into(), class_id: 0, method_id: 0 },
        );
        self.tx.flush().await?;
        close_handshake(&mut self.rx).await
    }
}

/// Read until connection.close-ok (after we sent connection.close), bounded in time.
pub async fn close_handshake(rx: &mut Inbound) -> Result<()> {
    let wait = async {
        loop {
            match rx.next().await? {
                Incoming::Frame(Frame::Method { method: Method::ConnectionCloseOk, .. }) => return Ok(()),
                // The broker closing at the same time is as good as close-ok.
                Incoming::Frame(Frame::Method { method: Method::ConnectionClose { .. }, .. }) => return Ok(()),
                _ => {}
            }
        }
    };
    tokio::time::timeout(CLOSE_TIMEOUT, wait)
        .await
        .map_err(|_| anyhow!("no connection.close-ok within {CLOSE_TIMEOUT:?}"))?
}

/// One pre-encoded basic.publish + content header + body frames, copied per message.
pub struct PublishTemplate {
    bytes: Vec<u8>,
    /// Where the 8-byte timestamp goes, when latency is measured.
    timestamp_at: Option<usize>,
}

impl PublishTemplate {
    pub fn new(
        exchange: &str,
        routing_key: &str,
        persistent: bool,
        body_size: usize,
        frame_max: u32,
        timestamps: bool,
    ) -> Self {
        let mut bytes = Vec::with_capacity(body_size + 128);
        encode_method(
            &mut bytes,
            CHANNEL,
            &Method::BasicPublish {
                ticket: 0,
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
                mandatory: false,
                immediate: false,
            },
        );
        let props = wire::BasicProperties { delivery_mode: Some(if persistent { 2 } else { 1 }), ..Default::default() };
        let mut body = vec![0u8; body_size];
        let body_start = bytes.len();
        let timestamp_at = if timestamps && body_size >= 16 {
            body[..8].copy_from_slice(&TIMESTAMP_MAGIC);
            Some(8)
        } else {
            None
        };
        encode_content(&mut bytes, CHANNEL, &props.to_raw(), &body, frame_max);
        // The first body frame follows the header frame; its payload starts 7 bytes in.
        let timestamp_at = timestamp_at.map(|off| {
            let header_len = 7
                + u32::from_be_bytes(bytes[body_start + 3..body_start + 7].try_into().unwrap_or_default()) as usize
                + 1;
            body_start + header_len + 7 + off
        });
        PublishTemplate { bytes, timestamp_at }
    }

    /// Encoded size of one message (all its frames).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    #[inline]
    pub fn append(&self, out: &mut Vec<u8>, timestamp_ns: u64) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        if let Some(at) = self.timestamp_at {
            out[start + at..start + at + 8].copy_from_slice(&timestamp_ns.to_be_bytes());
        }
    }
}

/// Nanoseconds since the Unix epoch: a clock shared by producers and consumers, even in
/// different processes on the same host.
#[inline]
pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::frame::{encode_basic_deliver, encode_body, encode_header};

    #[test]
    fn peek_recognises_hot_frames() {
        let mut buf = Vec::new();
        encode_basic_deliver(&mut buf, 1, "ctag-1", 42, false, "", "perf-0");
        encode_header(&mut buf, 1, 60, 20, &[0x10, 0, 1]);
        let mut body = TIMESTAMP_MAGIC.to_vec();
        body.extend_from_slice(&7u64.to_be_bytes());
        body.extend_from_slice(&[9; 4]);
        encode_body(&mut buf, 1, &body, 131072);
        encode_method(&mut buf, 1, &Method::BasicAck { delivery_tag: 5, multiple: true });
        encode_method(&mut buf, 1, &Method::BasicNack { delivery_tag: 6, multiple: false, requeue: true });
        encode_method(&mut buf, 1, &Method::ChannelCloseOk);

        let mut at = 0;
        let mut seen = Vec::new();
        while let Peek::Hot(hot, len) = peek_hot(&buf[at..]) {
            seen.push(hot);
            at += len;
        }
        assert_eq!(
            seen,
            [
                Hot::Deliver { channel: 1, delivery_tag: 42 },
                Hot::Header { body_size: 20 },
                Hot::Body { len: 20, timestamp: Some(7) },
                Hot::Ack { delivery_tag: 5, multiple: true },
                Hot::Nack { delivery_tag: 6, multiple: false },
            ]
        );
        assert_eq!(peek_hot(&buf[at..]), Peek::Cold);
        assert_eq!(peek_hot(&buf[..3]), Peek::Incomplete);
        // A partial hot frame is left to decode_frame, which waits for the rest.
        assert_eq!(peek_hot(&buf[..10]), Peek::Cold);
    }

    #[test]
    fn publish_template_round_trips_through_the_codec() {
        for (size, frame_max) in [(0usize, 4096u32), (16, 4096), (10_000, 4096), (64 * 1024, 131072)] {
            let t = PublishTemplate::new("ex", "rk", true, size, frame_max, size >= 16);
            let mut out = Vec::new();
            t.append(&mut out, 0x0102_0304_0506_0708);
            t.append(&mut out, 99);
            let mut buf = BytesMut::from(&out[..]);
            let mut messages = 0;
            let mut body = Vec::new();
            while let Some(frame) = decode_frame(&mut buf, frame_max).unwrap() {
                match frame {
                    Frame::Method { method: Method::BasicPublish { exchange, routing_key, .. }, .. } => {
                        assert_eq!((exchange.as_str(), routing_key.as_str()), ("ex", "rk"));
                        messages += 1;
                        body.clear();
                    }
                    Frame::Header { body_size, properties, .. } => {
                        assert_eq!(body_size, size as u64);
                        assert_eq!(wire::BasicProperties::decode(&properties).unwrap().delivery_mode, Some(2));
                    }
                    Frame::Body { payload, .. } => {
                        assert!(payload.len() + 8 <= frame_max as usize);
                        body.extend_from_slice(&payload);
                        if size >= 16 && body.len() == size {
                            assert_eq!(&body[..8], &TIMESTAMP_MAGIC);
                            let ts = u64::from_be_bytes(body[8..16].try_into().unwrap());
                            assert_eq!(ts, if messages == 1 { 0x0102_0304_0506_0708 } else { 99 });
                        }
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(messages, 2);
            assert!(buf.is_empty());
        }
    }
}
