//! `amqp://user:pass@host:port/vhost` parsing, restricted to the local machine.
//!
//! A load generator pointed at someone else's broker is a denial-of-service tool, so only
//! loopback hosts are accepted: `localhost`, `127.0.0.0/8` and `::1`.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Result, bail};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpUri {
    pub user: String,
    pub password: String,
    /// Always a loopback address (checked by [`AmqpUri::parse`]).
    pub addr: SocketAddr,
    pub vhost: String,
}

pub const DEFAULT_PORT: u16 = 5672;

impl AmqpUri {
    pub fn parse(uri: &str) -> Result<Self> {
        let Some(rest) = uri.strip_prefix("amqp://") else {
            if uri.starts_with("amqps://") {
                bail!("amqps:// is not supported (warren-perf only talks plain AMQP to localhost)");
            }
            bail!("URI must start with amqp://, got {uri:?}");
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        // Query parameters (heartbeat=..., etc.) have their own options here.
        let path = path.map(|p| p.split('?').next().unwrap_or(""));
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((u, p)) => (percent_decode(u)?, percent_decode(p)?),
                None => (percent_decode(info)?, "guest".to_owned()),
            },
            None => ("guest".to_owned(), "guest".to_owned()),
        };
        let (host, port) = split_host_port(hostport)?;
        let ip = resolve_loopback(host)?;
        // RabbitMQ's URI spec maps a missing path to "/"; an empty one would be the vhost
        // "", which no broker has, so treat it as "/" too rather than fail at open time.
        let vhost = match path {
            None | Some("") => "/".to_owned(),
            Some(p) => percent_decode(p)?,
        };
        Ok(AmqpUri { user, password, addr: SocketAddr::new(ip, port), vhost })
    }
}

fn split_host_port(hostport: &str) -> Result<(&str, u16)> {
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let Some(end) = v6.find(']') else { bail!("unterminated IPv6 address in {hostport:?}") };
        let after = &v6[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => bail!("unexpected {after:?} after IPv6 address"),
        };
        (&v6[..end], port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = match port {
        None | Some("") => DEFAULT_PORT,
        Some(p) => p.parse().map_err(|_| anyhow::anyhow!("bad port {p:?}"))?,
    };
    Ok((if host.is_empty() { "localhost" } else { host }, port))
}

fn resolve_loopback(host: &str) -> Result<IpAddr> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::from([127, 0, 0, 1]));
    }
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => Ok(ip),
        Ok(ip) => bail!("refusing to load-test {ip}: warren-perf only connects to localhost / 127.0.0.1 / ::1"),
        Err(_) => bail!("refusing to load-test {host:?}: warren-perf only connects to localhost / 127.0.0.1 / ::1"),
    }
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(|| anyhow::anyhow!("truncated %-escape in {s:?}"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| anyhow::anyhow!("bad %-escape %{hex} in {s:?}"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| anyhow::anyhow!("%-escapes in {s:?} are not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_uri() {
        let u = AmqpUri::parse("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(u.user, "guest");
        assert_eq!(u.password, "guest");
        assert_eq!(u.addr, "127.0.0.1:5672".parse().unwrap());
        assert_eq!(u.vhost, "/");
    }

    #[test]
    fn defaults_and_escapes() {
        let u = AmqpUri::parse("amqp://localhost").unwrap();
        assert_eq!((u.user.as_str(), u.addr.port(), u.vhost.as_str()), ("guest", 5672, "/"));
        let u = AmqpUri::parse("amqp://a%40b:p%3Aw@[::1]:5999/my%20vh?heartbeat=5").unwrap();
        assert_eq!(u.user, "a@b");
        assert_eq!(u.password, "p:w");
        assert_eq!(u.addr, "[::1]:5999".parse().unwrap());
        assert_eq!(u.vhost, "my vh");
        assert_eq!(AmqpUri::parse("amqp://127.0.0.2:1/").unwrap().vhost, "/");
    }

    #[test]
    fn only_localhost() {
        for bad in ["amqp://10.0.0.1", "amqp://example.com:5672/", "amqp://[2001:db8::1]/", "amqp://0.0.0.0/"] {
            let err = AmqpUri::parse(bad).unwrap_err().to_string();
            assert!(err.contains("only connects to localhost"), "{bad}: {err}");
        }
        assert!(AmqpUri::parse("amqps://localhost").is_err());
        assert!(AmqpUri::parse("http://localhost").is_err());
        assert!(AmqpUri::parse("amqp://localhost:notaport").is_err());
    }
}
