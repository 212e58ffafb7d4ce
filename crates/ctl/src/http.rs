//! A small blocking HTTP/1.1 client for the management API, over the node's Unix socket
//! (file permissions are the authentication, as lavinmqctl does it) or TCP with basic
//! auth. One request per connection (`Connection: close`): the CLI makes a handful.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;

/// Where the API is.
#[derive(Debug, Clone)]
pub enum Target {
    Socket(PathBuf),
    Tcp { host: String, port: u16, user: String, password: String },
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The `reason` of a RabbitMQ error body, or the body itself.
    pub fn reason(&self) -> String {
        match self.json().get("reason").and_then(|r| r.as_str()) {
            Some(r) => r.to_owned(),
            None => String::from_utf8_lossy(&self.body).into_owned(),
        }
    }
}

/// Percent-encode one path segment (vhost `/` is `%2F`).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

impl Target {
    fn connect(&self, timeout: Duration) -> std::io::Result<Box<dyn Stream>> {
        match self {
            Target::Socket(p) => {
                let s = std::os::unix::net::UnixStream::connect(p)?;
                s.set_read_timeout(Some(timeout))?;
                Ok(Box::new(s))
            }
            Target::Tcp { host, port, .. } => {
                let s = std::net::TcpStream::connect((host.as_str(), *port))?;
                s.set_read_timeout(Some(timeout))?;
                Ok(Box::new(s))
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Target::Socket(p) => p.display().to_string(),
            Target::Tcp { host, port, .. } => format!("http://{host}:{port}"),
        }
    }

    /// Send one request; `headers` are extra (name, value) pairs.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> std::io::Result<Reply> {
        let mut s = self.connect(timeout)?;
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAccept: application/json\r\n");
        if let Target::Tcp { user, password, .. } = self {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            req.push_str(&format!("Authorization: Basic {token}\r\n"));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = body.unwrap_or_default();
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len()));
        s.write_all(req.as_bytes())?;
        s.write_all(body)?;
        s.flush()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        parse_reply(&raw).ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP reply"))
    }
}

fn parse_reply(raw: &[u8]) -> Option<Reply> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let rest = &raw[end + 4..];
    let body = if chunked { dechunk(rest)? } else { rest.to_vec() };
    Some(Reply { status, body })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..nl]).ok()?.split(';').next()?.trim(), 16).ok()?;
        b = &b[nl + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_plain_and_chunked() {
        let r = parse_reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"[]"[..]));
        let r = parse_reply(
            b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n2\r\n\"}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"{\"a\"}"[..]));
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(seg("/"), "%2F");
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
        assert_eq!(seg("amq.gen-x_y~"), "amq.gen-x_y~");
    }
}
