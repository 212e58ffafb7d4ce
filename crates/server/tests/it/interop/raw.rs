//! A minimal hand-rolled AMQP client for what lapin cannot show or will not do: it does not
//! expose connection.start's server properties, and it refuses locally to open more
//! channels than negotiated. Frames are decoded with lapin's own parser
//! (`lapin::protocol::parse_class`), so the decoding is not Warren's.

use std::net::SocketAddr;

use lapin::protocol::{AMQPClass, connection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FRAME_METHOD: u8 = 1;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;

pub struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// What the server sent.
#[derive(Debug)]
pub enum In {
    Method(u16, Box<AMQPClass>),
    Heartbeat,
    /// The server closed the socket.
    Eof,
}

impl Raw {
    /// Connect and send the AMQP 0-9-1 protocol header.
    pub async fn connect(addr: SocketAddr) -> Raw {
        let mut stream = w!(TcpStream::connect(addr)).expect("tcp connect");
        w!(stream.write_all(b"AMQP\x00\x00\x09\x01")).expect("write protocol header");
        Raw { stream, buf: Vec::new() }
    }

    /// The next frame from the server.
    pub async fn read(&mut self) -> In {
        loop {
            if self.buf.len() >= 7 {
                let size = u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]]) as usize;
                let frame_len = 7 + size + 1;
                if self.buf.len() >= frame_len {
                    let kind = self.buf[0];
                    let channel = u16::from_be_bytes([self.buf[1], self.buf[2]]);
                    let payload = self.buf[7..7 + size].to_vec();
                    assert_eq!(self.buf[7 + size], FRAME_END, "frame-end octet");
                    self.buf.drain(..frame_len);
                    return match kind {
                        FRAME_METHOD => {
                            let (_, class) = lapin::protocol::parse_class(&payload[..])
                                .unwrap_or_else(|e| panic!("lapin cannot parse method {payload:?}: {e:?}"));
                            In::Method(channel, Box::new(class))
                        }
                        FRAME_HEARTBEAT => In::Heartbeat,
                        other => panic!("unexpected frame type {other}"),
                    };
                }
            }
            let mut chunk = [0u8; 4096];
            match w!(self.stream.read(&mut chunk)) {
                Ok(0) | Err(_) => return In::Eof,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next method frame (heartbeats are skipped).
    pub async fn method(&mut self) -> (u16, AMQPClass) {
        loop {
            match self.read().await {
                In::Method(ch, m) => return (ch, *m),
                In::Heartbeat => {}
                In::Eof => panic!("server closed the socket while a method was expected"),
            }
        }
    }

    pub async fn send_method(&mut self, channel: u16, class_id: u16, method_id: u16, args: &[u8]) {
        let mut payload = Vec::with_capacity(4 + args.len());
        payload.extend_from_slice(&class_id.to_be_bytes());
        payload.extend_from_slice(&method_id.to_be_bytes());
        payload.extend_from_slice(args);
        let mut frame = vec![FRAME_METHOD];
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&payload);
        frame.push(FRAME_END);
        w!(self.stream.write_all(&frame)).expect("write frame");
    }

    /// Read connection.start and answer start-ok (PLAIN guest/guest).
    pub async fn start(&mut self) -> connection::Start {
        let start = match self.method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::Start(s))) => s,
            other => panic!("expected connection.start, got {other:?}"),
        };
        let mut args = Vec::new();
        args.extend_from_slice(&0u32.to_be_bytes()); // client-properties: empty table
        shortstr(&mut args, "PLAIN");
        longstr(&mut args, b"\0guest\0guest");
        shortstr(&mut args, "en_US");
        self.send_method(0, 10, 11, &args).await;
        start
    }

    /// Read connection.tune, answer tune-ok with these values, then open vhost "/".
    /// Returns the tune the server offered.
    pub async fn tune_and_open(&mut self, channel_max: u16, heartbeat: u16) -> connection::Tune {
        let tune = match self.method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::Tune(t))) => t,
            other => panic!("expected connection.tune, got {other:?}"),
        };
        let mut args = Vec::new();
        args.extend_from_slice(&channel_max.to_be_bytes());
        args.extend_from_slice(&tune.frame_max.to_be_bytes());
        args.extend_from_slice(&heartbeat.to_be_bytes());
        self.send_method(0, 10, 31, &args).await;
        let mut args = Vec::new();
        shortstr(&mut args, "/");
        shortstr(&mut args, "");
        args.push(0);
        self.send_method(0, 10, 40, &args).await;
        tune
    }

    pub async fn expect_open_ok(&mut self) {
        match self.method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => {}
            other => panic!("expected connection.open-ok, got {other:?}"),
        }
    }

    pub async fn open_channel(&mut self, channel: u16) {
        let mut args = Vec::new();
        shortstr(&mut args, "");
        self.send_method(channel, 20, 10, &args).await;
    }

    /// Expect connection.close; answer close-ok and return it.
    pub async fn expect_connection_close(&mut self) -> connection::Close {
        let close = match self.method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => c,
            other => panic!("expected connection.close, got {other:?}"),
        };
        self.send_method(0, 10, 51, &[]).await;
        close
    }

    /// After close-ok, the server closes the socket.
    pub async fn expect_eof(&mut self) {
        loop {
            match self.read().await {
                In::Eof => return,
                In::Heartbeat => {}
                In::Method(ch, m) => panic!("expected the socket to close, got {m:?} on channel {ch}"),
            }
        }
    }
}

fn shortstr(out: &mut Vec<u8>, s: &str) {
    out.push(u8::try_from(s.len()).expect("short string"));
    out.extend_from_slice(s.as_bytes());
}

fn longstr(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}
