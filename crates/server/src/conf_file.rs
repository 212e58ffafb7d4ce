//! Config files in RabbitMQ's `rabbitmq.conf` syntax, so an existing file (or the keys
//! people copy from RabbitMQ's docs) works unchanged.
//!
//! Syntax (RabbitMQ's, sysctl style): one `key = value` per line; `#` starts a comment
//! anywhere outside a single-quoted value; a value containing `#` is written in single
//! quotes; `$(NAME)` is replaced by the environment variable NAME; blank lines are
//! ignored. A key given twice keeps its last value. Keys and value formats are RabbitMQ's
//! (see docs/configuration.md); Warren's own settings are under `warren.`.
//!
//! Anything not understood (an unknown key, a bad value, a setting Warren does not
//! implement) is an error naming the file, the line and the key: a typo must not start a
//! broker with defaults the operator did not ask for.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{ClientAuth, ClusterTlsFiles, Config, ListenAddr, TlsConfig, TlsVersion};

/// Largest `max_message_size` RabbitMQ accepts (512 MiB).
const MAX_MESSAGE_SIZE_LIMIT_BYTES: u64 = 512 * 1024 * 1024;

/// A config file that cannot be used. Displays as `file:line: key: what is wrong`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfError {
    pub file: String,
    /// 1-based; 0 when the file could not be read at all.
    pub line: usize,
    pub key: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ConfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.key, self.line) {
            (_, 0) => write!(f, "{}: {}", self.file, self.message),
            (Some(k), l) => write!(f, "{}:{l}: {k}: {}", self.file, self.message),
            (None, l) => write!(f, "{}:{l}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfError {}

/// Logging settings (`log.*`). Levels are tracing filter directives ("debug", "info",
/// "warn", "error", "off"), mapped from RabbitMQ's level names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// `log.level`: the level of every output without its own.
    pub level: Option<&'static str>,
    /// `log.console`: log to stderr (default true).
    pub console: bool,
    pub console_level: Option<&'static str>,
    /// `log.file`: also append to this file (default: none, unlike RabbitMQ).
    pub file: Option<PathBuf>,
    pub file_level: Option<&'static str>,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings { level: None, console: true, console_level: None, file: None, file_level: None }
    }
}

/// What a config file sets: the server's settings (defaults where the file is silent),
/// and the settings that live outside [`Config`].
#[derive(Debug, Clone)]
pub struct FileSettings {
    pub config: Config,
    /// `warren.threads`: runtime worker threads.
    pub threads: Option<usize>,
    pub log: LogSettings,
}

/// Read and parse `path`, with the process environment for `$(NAME)`.
/// `total_memory_bytes` resolves the relative memory and disk limits.
pub fn load(path: &Path, total_memory_bytes: Option<u64>) -> Result<FileSettings, ConfError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfError {
        file: file.clone(),
        line: 0,
        key: None,
        message: format!("cannot read config file: {e}"),
    })?;
    parse(&text, &file, &|name| std::env::var(name).ok(), total_memory_bytes)
}

/// Parse a config file's text. `file` names it in errors; `env` looks up `$(NAME)`.
pub fn parse(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
    total_memory_bytes: Option<u64>,
) -> Result<FileSettings, ConfError> {
    let mut d = Draft::new(total_memory_bytes);
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |key: Option<&str>, message: String| ConfError {
            file: file.to_owned(),
            line,
            key: key.map(str::to_owned),
            message,
        };
        let Some((key, value)) = split_line(raw).map_err(|m| err(None, m))? else { continue };
        let value = interpolate(&value, env).map_err(|m| err(Some(key), m))?;
        d.set(key, &value, line).map_err(|m| err(Some(key), m))?;
    }
    d.finish().map_err(|(line, key, message)| ConfError { file: file.to_owned(), line, key: Some(key), message })
}

/// A line's key and (unquoted, uninterpolated) value; None for blank and comment lines.
fn split_line(line: &str) -> Result<Option<(&str, String)>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let Some((key, rest)) = line.split_once('=') else {
        return Err("expected `key = value`".into());
    };
    let key = key.trim();
    if key.is_empty() || key.starts_with('.') || key.ends_with('.') || key.contains("..") {
        return Err(format!("bad key '{key}'"));
    }
    if let Some(c) = key.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))) {
        return Err(format!("bad character '{c}' in key '{key}'"));
    }
    let rest = rest.trim_start();
    let value = if let Some(quoted) = rest.strip_prefix('\'') {
        let Some(end) = quoted.find('\'') else {
            return Err(format!("{key}: unterminated single quote"));
        };
        let after = quoted[end + 1..].trim_start();
        if !(after.is_empty() || after.starts_with('#')) {
            return Err(format!("{key}: unexpected text after the quoted value: {after}"));
        }
        quoted[..end].to_owned()
    } else {
        let v = rest.split_once('#').map_or(rest, |(v, _)| v).trim();
        if v.is_empty() {
            return Err(format!("{key}: missing value"));
        }
        v.to_owned()
    };
    Ok(Some((key, value)))
}

/// Replace every `$(NAME)` with the environment variable NAME (an unset one is an error:
/// silently using an empty password or path would be worse).
fn interpolate(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find(')') else {
            return Err(format!("unterminated $( in '{value}'"));
        };
        let name = &after[..end];
        match env(name) {
            Some(v) => out.push_str(&v),
            None => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The file being applied. Keys that collect several lines (listeners, tags, versions)
/// are gathered here and turned into settings at the end.
struct Draft {
    config: Config,
    threads: Option<usize>,
    log: LogSettings,
    total_memory_bytes: Option<u64>,
    /// (name, address) in file order; None = the file has no `listeners.tcp` key.
    amqp: Option<Vec<(String, ListenAddr)>>,
    amqps: Option<Vec<(String, ListenAddr)>>,
    /// Line of the last `listeners.ssl.*` key (for the error when ssl_options are missing).
    amqps_line: usize,
    ssl: SslDraft,
    user_tags: Option<Vec<(String, bool)>>,
    loopback_users: Option<Vec<(String, bool)>>,
    /// `cluster_formation.classic_config.nodes.N`, keyed by N, in file order.
    cluster_nodes: Option<Vec<(String, String)>>,
    cluster_tls: ClusterTlsDraft,
}

/// `warren.cluster_tls.*`: all three files or none.
#[derive(Default)]
struct ClusterTlsDraft {
    /// Line of the first key; 0 = none.
    first_line: usize,
    certfile: Option<PathBuf>,
    keyfile: Option<PathBuf>,
    cacertfile: Option<PathBuf>,
}

#[derive(Default)]
struct SslDraft {
    /// Line of the first `ssl_options.*` key; 0 = none.
    first_line: usize,
    certfile: Option<PathBuf>,
    keyfile: Option<PathBuf>,
    cacertfile: Option<PathBuf>,
    verify_peer: bool,
    fail_if_no_peer_cert: bool,
    versions: Vec<(String, TlsVersion)>,
    handshake_timeout: Option<Duration>,
}

/// Add or replace `name` in a keyed list, keeping file order.
fn upsert<T>(list: &mut Vec<(String, T)>, name: &str, v: T) {
    match list.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = v,
        None => list.push((name.to_owned(), v)),
    }
}

impl Draft {
    fn new(total_memory_bytes: Option<u64>) -> Self {
        Draft {
            config: Config::default(),
            threads: None,
            log: LogSettings::default(),
            total_memory_bytes,
            amqp: None,
            amqps: None,
            amqps_line: 0,
            ssl: SslDraft::default(),
            user_tags: None,
            loopback_users: None,
            cluster_nodes: None,
            cluster_tls: ClusterTlsDraft::default(),
        }
    }

    fn set(&mut self, key: &str, v: &str, line: usize) -> Result<(), String> {
        let parts: Vec<&str> = key.split('.').collect();
        let c = &mut self.config;
        match parts.as_slice() {
            ["listeners", "tcp"] => self.amqp = Some(parse_none(v)?),
            ["listeners", "tcp", name] => upsert(self.amqp.get_or_insert_with(Vec::new), name, parse_listener(v)?),
            ["listeners", "ssl"] => {
                self.amqps = Some(parse_none(v)?);
                self.amqps_line = line;
            }
            ["listeners", "ssl", name] => {
                upsert(self.amqps.get_or_insert_with(Vec::new), name, parse_listener(v)?);
                self.amqps_line = line;
            }
            ["ssl_options", rest @ ..] => {
                if self.ssl.first_line == 0 {
                    self.ssl.first_line = line;
                }
                self.set_ssl(rest, v)?;
            }
            ["ssl_handshake_timeout"] => self.ssl.handshake_timeout = Some(parse_millis(v)?),
            ["management", "tcp", "port"] => c.management_port = parse_port(v)?,
            ["management", "tcp", "ip"] => c.management_ip = Some(parse_ip(v)?),
            ["management", "http", "max_body_size"] => c.management_http_max_body_bytes = parse_bytes(v)?,
            ["management", "login_session_timeout"] => {
                c.management_login_session_timeout_min = match parse_int(v)? {
                    0 => return Err("login_session_timeout must be at least 1 (minutes)".to_owned()),
                    n => n,
                }
            }
            ["prometheus", "tcp", "port"] => c.prometheus_port = parse_port(v)?,
            ["prometheus", "tcp", "ip"] => c.prometheus_ip = Some(parse_ip(v)?),
            ["default_user"] => c.default_user = v.to_owned(),
            ["default_pass"] => c.default_pass = v.to_owned(),
            ["default_vhost"] => c.default_vhost = v.to_owned(),
            ["default_user_tags", tag] => upsert(self.user_tags.get_or_insert_with(Vec::new), tag, parse_bool(v)?),
            ["default_permissions", "configure"] => c.default_permissions.configure = v.to_owned(),
            ["default_permissions", "read"] => c.default_permissions.read = v.to_owned(),
            ["default_permissions", "write"] => c.default_permissions.write = v.to_owned(),
            ["loopback_users"] => {
                parse_none::<()>(v)?;
                self.loopback_users = Some(Vec::new());
            }
            ["loopback_users", user] => {
                upsert(self.loopback_users.get_or_insert_with(Vec::new), user, parse_bool(v)?);
            }
            ["load_definitions"] => c.load_definitions = Some(parse_path(v)),
            ["vm_memory_high_watermark", "relative"] => {
                let total = self.total_memory_bytes.ok_or("the machine's memory size is unknown: use .absolute")?;
                c.memory_high_watermark_bytes = Some(of_total(total, parse_fraction(v)?));
            }
            ["vm_memory_high_watermark", "absolute"] => c.memory_high_watermark_bytes = Some(parse_bytes(v)?),
            ["vm_memory_calculation_strategy"] => {
                c.memory_strategy = crate::alarms::MemoryStrategy::parse(v).ok_or("expected allocated or rss")?
            }
            ["disk_free_limit", "absolute"] => c.disk_free_limit_bytes = parse_bytes(v)?,
            ["disk_free_limit", "relative"] => {
                // RabbitMQ's relative disk limit is a multiple of the machine's RAM.
                let total = self.total_memory_bytes.ok_or("the machine's memory size is unknown: use .absolute")?;
                let f: f64 = v.parse().map_err(|_| format!("expected a number, got '{v}'"))?;
                if !(f.is_finite() && f >= 0.0) {
                    return Err(format!("expected a non-negative number, got '{v}'"));
                }
                c.disk_free_limit_bytes = of_total(total, f);
            }
            ["heartbeat"] => c.heartbeat_secs = parse_int(v)?,
            ["frame_max"] => {
                let n: u32 = parse_int(v)?;
                if n < wire::FRAME_MIN_SIZE_BYTES {
                    return Err(format!("must be at least {} bytes", wire::FRAME_MIN_SIZE_BYTES));
                }
                c.frame_max = n;
            }
            // 0 is RabbitMQ's "no limit": the protocol's highest channel number.
            ["channel_max"] => c.channel_max = Some(parse_int::<u16>(v)?).filter(|&n| n > 0).unwrap_or(u16::MAX),
            ["connection_max"] => c.connection_max = if v == "infinity" { None } else { Some(parse_int(v)?) },
            ["consumer_timeout"] => c.consumer_timeout = Some(parse_millis(v)?),
            ["max_message_size"] => {
                let n = parse_bytes(v)?;
                if n > MAX_MESSAGE_SIZE_LIMIT_BYTES {
                    return Err(format!("at most {MAX_MESSAGE_SIZE_LIMIT_BYTES} bytes (512 MiB)"));
                }
                c.max_message_size_bytes = n;
            }
            ["handshake_timeout"] => c.handshake_timeout = parse_millis(v)?,
            ["log", "level"] => self.log.level = Some(parse_level(v)?),
            ["log", "console"] => self.log.console = parse_bool(v)?,
            ["log", "console", "level"] => self.log.console_level = Some(parse_level(v)?),
            ["log", "file"] => self.log.file = if v == "false" { None } else { Some(parse_path(v)) },
            ["log", "file", "level"] => self.log.file_level = Some(parse_level(v)?),
            ["warren", name] => self.set_warren(name, v)?,
            ["warren", "cluster_tls", file] => {
                let t = &mut self.cluster_tls;
                let slot = match *file {
                    "certfile" => &mut t.certfile,
                    "keyfile" => &mut t.keyfile,
                    "cacertfile" => &mut t.cacertfile,
                    _ => return Err("unknown key".into()),
                };
                *slot = Some(parse_path(v));
                if t.first_line == 0 {
                    t.first_line = line;
                }
            }
            ["cluster_name"] => c.cluster_name = Some(v.to_owned()),
            ["cluster_formation", "peer_discovery_backend"] => match v {
                "classic_config" | "rabbit_peer_discovery_classic_config" => {}
                _ => return Err(format!("only classic_config is supported, got '{v}'")),
            },
            ["cluster_formation", "classic_config", "nodes", n] if n.bytes().all(|b| b.is_ascii_digit()) => {
                let node = parse_cluster_node(v)?;
                upsert(self.cluster_nodes.get_or_insert_with(Vec::new), n, node);
            }
            _ => return Err("unknown key".into()),
        }
        Ok(())
    }

    /// `ssl_options.<rest>`.
    fn set_ssl(&mut self, rest: &[&str], v: &str) -> Result<(), String> {
        let s = &mut self.ssl;
        match rest {
            ["certfile"] => s.certfile = Some(parse_path(v)),
            ["keyfile"] => s.keyfile = Some(parse_path(v)),
            ["cacertfile"] => s.cacertfile = Some(parse_path(v)),
            ["verify"] => {
                s.verify_peer = match v {
                    "verify_peer" => true,
                    "verify_none" => false,
                    _ => return Err(format!("expected verify_peer or verify_none, got '{v}'")),
                }
            }
            ["fail_if_no_peer_cert"] => s.fail_if_no_peer_cert = parse_bool(v)?,
            ["versions", n] if n.bytes().all(|b| b.is_ascii_digit()) => {
                let version = match v {
                    "tlsv1.3" => TlsVersion::Tls13,
                    "tlsv1.2" => TlsVersion::Tls12,
                    "tlsv1.1" | "tlsv1" => return Err(format!("{v} is not supported (only tlsv1.2 and tlsv1.3)")),
                    _ => return Err(format!("expected tlsv1.2 or tlsv1.3, got '{v}'")),
                };
                upsert(&mut s.versions, n, version);
            }
            _ => return Err("unknown key".into()),
        }
        Ok(())
    }

    /// `warren.<name>`: one per `warren` command-line flag, same name with underscores
    /// (but `cluster_cookie`, a secret, has no flag: a process's arguments are visible to
    /// every local user).
    fn set_warren(&mut self, name: &str, v: &str) -> Result<(), String> {
        let c = &mut self.config;
        match name {
            "data_dir" => c.data_dir = parse_path(v),
            "queue_ram_budget" => c.queue_ram_budget_bytes = parse_bytes(v)?,
            "fd_reserve" => c.fd_reserve_count = parse_int(v)?,
            "store_open_files_max" => c.store_open_files_max = parse_int(v)?,
            "queue_max" => c.queue_max_count = parse_int(v)?,
            "exchange_max" => c.exchange_max_count = parse_int(v)?,
            "binding_max" => c.binding_max_count = parse_int(v)?,
            "max_arguments_table_bytes" => c.max_arguments_table_bytes = to_usize(parse_bytes(v)?)?,
            "outbox_max_bytes" => c.outbox_max_bytes = to_usize(parse_bytes(v)?)?,
            "node_name" => c.node_name = Some(parse_node_name(v)?),
            "cluster_listen" => {
                c.cluster_listen = Some(v.parse().map_err(|_| format!("expected IP:PORT, got '{v}'"))?);
            }
            "cluster_source_ip" => {
                c.cluster_source_ip = Some(v.parse().map_err(|_| format!("expected an IP address, got '{v}'"))?);
            }
            "cluster_write_timeout_ms" => {
                c.cluster_write_timeout_ms = parse_int(v)?;
                if c.cluster_write_timeout_ms == 0 {
                    return Err("must be at least 1".into());
                }
            }
            "cluster_cookie" => c.cluster_cookie = Some(v.to_owned()),
            "cluster_cookie_file" => c.cluster_cookie_file = Some(parse_path(v)),
            "cluster_snapshot_log_bytes" => {
                c.cluster_snapshot_log_bytes = parse_bytes(v)?;
                if c.cluster_snapshot_log_bytes == 0 {
                    return Err("must be at least 1".into());
                }
            }
            "cluster_forward_max_bytes" => {
                c.cluster_forward_max_bytes = to_usize(parse_bytes(v)?)?;
                if c.cluster_forward_max_bytes == 0 {
                    return Err("must be at least 1".into());
                }
            }
            "cluster_pending_max_bytes" => {
                c.cluster_pending_max_bytes = to_usize(parse_bytes(v)?)?;
                if c.cluster_pending_max_bytes == 0 {
                    return Err("must be at least 1".into());
                }
            }
            "quorum_queue_heartbeat_ms" => {
                c.quorum_queue_heartbeat_ms = parse_int(v)?;
                if !(10..=60_000).contains(&c.quorum_queue_heartbeat_ms) {
                    return Err("must be between 10 and 60000".into());
                }
            }
            "quorum_queue_logs_max_bytes" => {
                c.quorum_queue_logs_max_bytes = parse_bytes(v)?;
                if c.quorum_queue_logs_max_bytes == 0 {
                    return Err("must be at least 1".into());
                }
            }
            "quorum_queue_max" => {
                c.quorum_queue_max_count = parse_int(v)?;
                if c.quorum_queue_max_count == 0 {
                    return Err("must be at least 1".into());
                }
            }
            "cluster_snapshot_every" => {
                c.cluster_snapshot_every_entries = parse_int(v)?;
                if c.cluster_snapshot_every_entries == 0 {
                    return Err("must be at least 1".into());
                }
            }
            "threads" => {
                let n: usize = parse_int(v)?;
                if n == 0 {
                    return Err("must be at least 1".into());
                }
                self.threads = Some(n);
            }
            _ => return Err("unknown key".into()),
        }
        Ok(())
    }

    /// Turn the collected keys into settings; errors carry (line, key, message).
    fn finish(mut self) -> Result<FileSettings, (usize, String, String)> {
        let c = &mut self.config;
        if let Some(l) = self.amqp {
            c.amqp_listeners = l.into_iter().map(|(_, a)| a).collect();
        }
        if let Some(l) = self.amqps {
            c.amqps_listeners = l.into_iter().map(|(_, a)| a).collect();
        }
        if let Some(tags) = self.user_tags {
            c.default_user_tags = tags.into_iter().filter(|(_, on)| *on).map(|(t, _)| t).collect();
        }
        if let Some(nodes) = self.cluster_nodes {
            let mut nodes: Vec<String> = nodes.into_iter().map(|(_, n)| n).collect();
            nodes.sort();
            nodes.dedup();
            c.cluster_nodes = nodes;
        }
        if let Some(users) = self.loopback_users {
            c.loopback_users = users.into_iter().filter(|(_, on)| *on).map(|(u, _)| u).collect();
        }
        let t = self.cluster_tls;
        if t.first_line > 0 {
            let missing = |what: &str| {
                let m = format!("warren.cluster_tls needs {what} too (certfile, keyfile and cacertfile)");
                (t.first_line, "warren.cluster_tls".to_owned(), m)
            };
            c.cluster_tls = Some(ClusterTlsFiles {
                certfile: t.certfile.ok_or_else(|| missing("certfile"))?,
                keyfile: t.keyfile.ok_or_else(|| missing("keyfile"))?,
                cacertfile: t.cacertfile.ok_or_else(|| missing("cacertfile"))?,
            });
        }
        let s = self.ssl;
        if s.first_line > 0 {
            let missing = |what: &str| (s.first_line, "ssl_options".to_owned(), format!("{what} is required"));
            let certfile = s.certfile.ok_or_else(|| missing("ssl_options.certfile"))?;
            let keyfile = s.keyfile.ok_or_else(|| missing("ssl_options.keyfile"))?;
            let client_auth = match (s.verify_peer, s.fail_if_no_peer_cert) {
                (false, _) => ClientAuth::None,
                (true, false) => ClientAuth::Optional,
                (true, true) => ClientAuth::Required,
            };
            if client_auth != ClientAuth::None && s.cacertfile.is_none() {
                return Err(missing("with verify = verify_peer, ssl_options.cacertfile"));
            }
            let mut versions: Vec<TlsVersion> = s.versions.into_iter().map(|(_, v)| v).collect();
            versions.dedup();
            if versions.is_empty() {
                versions = vec![TlsVersion::Tls13, TlsVersion::Tls12];
            }
            c.tls = Some(TlsConfig {
                certfile,
                keyfile,
                cacertfile: s.cacertfile,
                client_auth,
                versions,
                handshake_timeout: s.handshake_timeout.unwrap_or(TlsConfig::DEFAULT_HANDSHAKE_TIMEOUT),
            });
        } else if !c.amqps_listeners.is_empty() {
            return Err((
                self.amqps_line,
                "listeners.ssl".to_owned(),
                "an AMQPS listener needs ssl_options.certfile and ssl_options.keyfile".to_owned(),
            ));
        }
        Ok(FileSettings { config: self.config, threads: self.threads, log: self.log })
    }
}

/// `none` (an empty list), as in `listeners.tcp = none`.
fn parse_none<T>(v: &str) -> Result<Vec<T>, String> {
    if v == "none" { Ok(Vec::new()) } else { Err(format!("expected none, got '{v}'")) }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("expected true or false, got '{v}'")),
    }
}

/// A non-negative decimal integer (no sign, no unit).
fn parse_int<T: std::str::FromStr>(v: &str) -> Result<T, String> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("expected a non-negative integer, got '{v}'"));
    }
    v.parse().map_err(|_| format!("{v} is out of range"))
}

fn parse_millis(v: &str) -> Result<Duration, String> {
    parse_int(v).map(Duration::from_millis)
}

fn parse_port(v: &str) -> Result<u16, String> {
    match parse_int::<u16>(v) {
        Ok(0) | Err(_) => Err(format!("expected a port (1-65535), got '{v}'")),
        Ok(p) => Ok(p),
    }
}

fn parse_ip(v: &str) -> Result<IpAddr, String> {
    let bare = v.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(v);
    bare.parse().map_err(|_| format!("expected an IP address, got '{v}'"))
}

/// `5672` (every interface), `127.0.0.1:5672`, `::1:5672` (RabbitMQ's IPv6 form: the
/// port after the last colon) or `[::1]:5672`.
fn parse_listener(v: &str) -> Result<ListenAddr, String> {
    if v.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(ListenAddr { ip: None, port: parse_port(v)? });
    }
    let Some((ip, port)) = v.rsplit_once(':') else {
        return Err(format!("expected a port or ip:port, got '{v}'"));
    };
    Ok(ListenAddr { ip: Some(parse_ip(ip)?), port: parse_port(port)? })
}

/// A node name, `NAME@HOST` or `NAME@HOST:PORT`.
pub fn parse_node_name(v: &str) -> Result<String, String> {
    match v.split_once('@') {
        Some((name, host)) if !name.is_empty() && !host.is_empty() && !v.contains(char::is_whitespace) => {
            Ok(v.to_owned())
        }
        _ => Err(format!("expected a node name NAME@HOST (or NAME@HOST:PORT), got '{v}'")),
    }
}

/// A `classic_config` node: `NAME@HOST:PORT` (Warren needs each node's inter-node port).
fn parse_cluster_node(v: &str) -> Result<String, String> {
    cluster::parse_node_name(v)
        .map_err(|_| format!("expected NAME@HOST:PORT (Warren needs the inter-node port of every node), got '{v}'"))?;
    Ok(v.to_owned())
}

fn parse_path(v: &str) -> PathBuf {
    PathBuf::from(v)
}

/// A fraction of the machine's memory, 0 to 1.
fn parse_fraction(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("expected a number from 0 to 1, got '{v}'")),
    }
}

fn of_total(total: u64, fraction: f64) -> u64 {
    // Precision: f64 holds byte counts exactly up to 2^53 (8 PiB).
    (total as f64 * fraction) as u64
}

fn to_usize(n: u64) -> Result<usize, String> {
    usize::try_from(n).map_err(|_| format!("{n} is out of range"))
}

/// A byte count in RabbitMQ's information units: a plain number of bytes, or a number
/// followed by k/kiB, m/MiB, g/GiB (powers of 1024) or kB, MB, GB (powers of 1000),
/// letters in any case.
pub(crate) fn parse_bytes(v: &str) -> Result<u64, String> {
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = v.split_at(digits);
    let bad = || format!("expected bytes, e.g. 1073741824, 1GiB, 1GB or 512MB; got '{v}'");
    if num.is_empty() {
        return Err(bad());
    }
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(bad()),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(multiplier).ok_or_else(|| format!("{v} is out of range"))
}

/// RabbitMQ's log level names as tracing filter directives.
fn parse_level(v: &str) -> Result<&'static str, String> {
    Ok(match v {
        "debug" => "debug",
        "info" | "notice" => "info",
        "warning" => "warn",
        "error" | "critical" | "alert" | "emergency" => "error",
        "none" => "off",
        _ => return Err(format!("expected debug, info, notice, warning, error, critical or none; got '{v}'")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const GIB: u64 = 1 << 30;

    fn env(name: &str) -> Option<String> {
        match name {
            "PASS" => Some("s3cret".into()),
            "DIR" => Some("/var/lib/warren".into()),
            _ => None,
        }
    }

    fn parse_ok(text: &str) -> FileSettings {
        parse(text, "test.conf", &env, Some(16 * GIB)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse_err(text: &str) -> ConfError {
        parse(text, "test.conf", &env, Some(16 * GIB)).expect_err("should be refused")
    }

    #[test]
    fn cluster_formation_classic_config() {
        let s = parse_ok(
            "cluster_formation.peer_discovery_backend = classic_config\n\
             cluster_formation.classic_config.nodes.1 = warren@node1:25672\n\
             cluster_formation.classic_config.nodes.2 = warren@node2:25672\n\
             cluster_formation.classic_config.nodes.3 = warren@10.0.0.3:25673\n\
             cluster_formation.classic_config.nodes.2 = warren@node2:25672\n\
             cluster_name = prod\n\
             warren.node_name = warren@node1\n\
             warren.cluster_listen = 0.0.0.0:25672\n\
             warren.cluster_source_ip = 127.0.0.2\n\
             warren.cluster_write_timeout_ms = 2500\n\
             warren.cluster_snapshot_every = 64\n\
             warren.cluster_snapshot_log_bytes = 1MiB\n\
             warren.cluster_pending_max_bytes = 1MiB\n\
             warren.quorum_queue_max = 7\n\
             warren.quorum_queue_logs_max_bytes = 2MiB\n\
             warren.quorum_queue_heartbeat_ms = 250\n\
             warren.cluster_forward_max_bytes = 2MiB\n\
             warren.cluster_cookie = ABCDEFGHIJ\n\
             warren.cluster_cookie_file = /etc/warren/cookie\n\
             warren.cluster_tls.certfile = /etc/warren/node.pem\n\
             warren.cluster_tls.keyfile = /etc/warren/node.key\n\
             warren.cluster_tls.cacertfile = /etc/warren/ca.pem\n",
        );
        let c = &s.config;
        assert_eq!(c.cluster_cookie.as_deref(), Some("ABCDEFGHIJ"));
        assert_eq!(c.cluster_cookie_file.as_deref(), Some(std::path::Path::new("/etc/warren/cookie")));
        assert!(Config::default().cluster_cookie.is_none() && Config::default().cluster_cookie_file.is_none());
        let files = c.cluster_tls.as_ref().expect("cluster_tls");
        assert_eq!(
            (files.certfile.to_str(), files.keyfile.to_str(), files.cacertfile.to_str()),
            (Some("/etc/warren/node.pem"), Some("/etc/warren/node.key"), Some("/etc/warren/ca.pem"))
        );
        assert!(Config::default().cluster_tls.is_none());
        assert_eq!(c.cluster_nodes, vec!["warren@10.0.0.3:25673", "warren@node1:25672", "warren@node2:25672"]);
        assert_eq!(c.cluster_name.as_deref(), Some("prod"));
        assert_eq!(c.node_name.as_deref(), Some("warren@node1"));
        assert_eq!(c.cluster_listen, Some("0.0.0.0:25672".parse().unwrap()));
        assert_eq!(c.cluster_source_ip, Some("127.0.0.2".parse().unwrap()));
        assert_eq!((c.cluster_write_timeout_ms, c.cluster_snapshot_every_entries), (2500, 64));
        assert_eq!(c.cluster_snapshot_log_bytes, 1 << 20);
        assert_eq!(c.cluster_pending_max_bytes, 1024 * 1024);
        assert_eq!(c.quorum_queue_max_count, 7);
        assert_eq!(c.quorum_queue_logs_max_bytes, 2 << 20);
        assert_eq!(c.quorum_queue_heartbeat_ms, 250);
        assert_eq!(c.cluster_forward_max_bytes, 2 * 1024 * 1024);
        assert_eq!(Config::default().cluster_forward_max_bytes, 64 * 1024 * 1024);
        assert_eq!(Config::default().cluster_pending_max_bytes, 64 * 1024 * 1024);
        let s = parse_ok("cluster_formation.peer_discovery_backend = rabbit_peer_discovery_classic_config\n");
        assert!(s.config.cluster_nodes.is_empty());
        assert!(Config::default().cluster_nodes.is_empty() && Config::default().node_name.is_none());
    }

    #[test]
    fn bad_cluster_formation_values_name_file_and_line() {
        let e = parse_err("heartbeat = 5\ncluster_formation.peer_discovery_backend = k8s\n");
        assert_eq!((e.line, e.key.as_deref()), (2, Some("cluster_formation.peer_discovery_backend")));
        assert!(
            e.to_string().starts_with("test.conf:2: cluster_formation.peer_discovery_backend: only classic_config")
        );
        // RabbitMQ's form without a port: Warren needs the inter-node port.
        let e = parse_err("cluster_formation.classic_config.nodes.1 = rabbit@node1\n");
        assert_eq!((e.line, e.key.as_deref()), (1, Some("cluster_formation.classic_config.nodes.1")));
        assert!(e.message.contains("NAME@HOST:PORT"), "{e}");
        let e = parse_err("cluster_formation.classic_config.nodes.x = a@h:1\n");
        assert_eq!(e.message, "unknown key");
        let e = parse_err("cluster_formation.classic_config.nodes.1 = a@h:99999\n");
        assert!(e.message.contains("NAME@HOST:PORT"), "{e}");
        let e = parse_err("\nwarren.cluster_listen = node1:25672\n");
        assert_eq!((e.line, e.key.as_deref()), (2, Some("warren.cluster_listen")));
        let e = parse_err("heartbeat = 5\nwarren.cluster_tls.certfile = a.pem\nwarren.cluster_tls.keyfile = a.key\n");
        assert_eq!((e.line, e.key.as_deref()), (2, Some("warren.cluster_tls")));
        assert!(e.message.contains("needs cacertfile"), "{e}");
        let e = parse_err("warren.cluster_tls.verify = verify_peer\n");
        assert_eq!(e.message, "unknown key");
        let e = parse_err("warren.cluster_cookie =\n");
        assert!(e.to_string().contains("warren.cluster_cookie: missing value"), "{e}");
        let e = parse_err("warren.node_name = node1\n");
        assert!(e.message.contains("NAME@HOST"), "{e}");
        let e = parse_err("cluster_formation.node_cleanup.interval = 30\n");
        assert_eq!(e.message, "unknown key");
    }

    #[test]
    fn an_empty_file_keeps_rabbitmq_defaults() {
        let s = parse_ok("# nothing\n\n   \n");
        let d = Config::default();
        assert_eq!(s.config.amqp_listeners, vec![ListenAddr { ip: None, port: 5672 }]);
        assert_eq!(s.config.heartbeat_secs, d.heartbeat_secs);
        assert_eq!(s.config.default_user, "guest");
        assert_eq!(s.config.default_user_tags, vec!["administrator".to_owned()]);
        assert_eq!(s.config.loopback_users, vec!["guest".to_owned()]);
        assert!(s.config.tls.is_none());
        assert_eq!(s.log, LogSettings::default());
    }

    #[test]
    fn comments_inline_and_quoted() {
        let s = parse_ok(
            "heartbeat = 30 # seconds\n\
             consumer_timeout=86400000#24 hours\n\
             default_pass = 'pa#ss' # quoted: the # is part of it\n\
             default_user = 'with spaces '\n",
        );
        assert_eq!(s.config.heartbeat_secs, 30);
        assert_eq!(s.config.consumer_timeout, Some(Duration::from_millis(86_400_000)));
        assert_eq!(s.config.default_pass, "pa#ss");
        assert_eq!(s.config.default_user, "with spaces ");
    }

    #[test]
    fn quoting_errors() {
        let e = parse_err("heartbeat = 10\ndefault_pass = 'abc\n");
        assert_eq!(e.line, 2);
        assert!(e.to_string().contains("unterminated single quote"), "{e}");
        let e = parse_err("default_pass = 'abc' def\n");
        assert!(e.to_string().contains("after the quoted value"), "{e}");
        let e = parse_err("default_pass = # only a comment\n");
        assert!(e.to_string().contains("missing value"), "{e}");
    }

    #[test]
    fn env_interpolation() {
        let s = parse_ok("default_pass = $(PASS)\nwarren.data_dir = $(DIR)/data\n");
        assert_eq!(s.config.default_pass, "s3cret");
        assert_eq!(s.config.data_dir, PathBuf::from("/var/lib/warren/data"));
        let e = parse_err("\ndefault_pass = $(NOPE)\n");
        assert_eq!((e.line, e.key.as_deref()), (2, Some("default_pass")));
        assert!(e.message.contains("NOPE is not set"), "{e}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse_err("heartbeat = 5\n# c\nheartbeet = 5\n");
        assert_eq!(e.to_string(), "test.conf:3: heartbeet: unknown key");
        assert!(parse_err("ssl_options.password = x\n").message.contains("unknown key"));
        assert!(parse_err("warren.nope = 1\n").message.contains("unknown key"));
        let e = parse_err("just words\n");
        assert_eq!(e.to_string(), "test.conf:1: expected `key = value`");
    }

    #[test]
    fn bad_values_are_refused() {
        for (text, needle) in [
            ("heartbeat = ten", "non-negative integer"),
            ("heartbeat = 70000", "out of range"),
            ("heartbeat = -1", "non-negative integer"),
            ("frame_max = 1024", "at least 4096"),
            ("listeners.tcp.default = 0", "port"),
            ("listeners.tcp.default = localhost:5672", "IP address"),
            ("listeners.tcp = all", "expected none"),
            ("log.console = yes", "true or false"),
            ("log.level = verbose", "expected debug"),
            ("disk_free_limit.absolute = 2XB", "expected bytes"),
            ("vm_memory_high_watermark.relative = 1.5", "0 to 1"),
            ("max_message_size = 1GiB", "512 MiB"),
            ("ssl_options.verify = verify_maybe", "verify_peer or verify_none"),
            ("ssl_options.versions.1 = tlsv1.1", "not supported"),
            ("warren.threads = 0", "at least 1"),
        ] {
            let e = parse_err(text);
            assert_eq!(e.line, 1, "{text}");
            assert!(e.to_string().contains(needle), "{text}: {e}");
            assert_eq!(e.key.as_deref(), text.split_once(" =").map(|(k, _)| k), "{text}");
        }
    }

    #[test]
    fn information_units() {
        assert_eq!(parse_bytes("123"), Ok(123));
        assert_eq!(parse_bytes("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_bytes("50MB"), Ok(50_000_000));
        assert_eq!(parse_bytes("1kB"), Ok(1_000));
        assert_eq!(parse_bytes("1GiB"), Ok(GIB));
        assert_eq!(parse_bytes("1gib"), Ok(GIB));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("4k"), Ok(4096));
        assert_eq!(parse_bytes("3G"), Ok(3 * GIB));
        assert!(parse_bytes("GB").is_err());
        assert!(parse_bytes("1.5GB").is_err());
        assert!(parse_bytes("99999999999999G").is_err());
        let s = parse_ok("disk_free_limit.absolute = 2GB\nvm_memory_high_watermark.absolute = 1GiB\n");
        assert_eq!(s.config.disk_free_limit_bytes, 2_000_000_000);
        assert_eq!(s.config.memory_high_watermark_bytes, Some(GIB));
    }

    #[test]
    fn relative_limits_use_the_machine_memory() {
        let s = parse_ok("vm_memory_high_watermark.relative = 0.5\ndisk_free_limit.relative = 1.5\n");
        assert_eq!(s.config.memory_high_watermark_bytes, Some(8 * GIB));
        assert_eq!(s.config.disk_free_limit_bytes, 24 * GIB);
        // The later of .relative and .absolute wins, as both set the same thing.
        let s = parse_ok("vm_memory_high_watermark.relative = 0.5\nvm_memory_high_watermark.absolute = 100\n");
        assert_eq!(s.config.memory_high_watermark_bytes, Some(100));
        let e = parse("vm_memory_high_watermark.relative = 0.4", "t", &env, None).unwrap_err();
        assert!(e.message.contains("unknown"), "{e}");
    }

    #[test]
    fn listeners() {
        let s = parse_ok(
            "listeners.tcp.default = 5673\n\
             listeners.tcp.local = 127.0.0.1:5674\n\
             listeners.tcp.v6 = ::1:5675\n\
             listeners.tcp.v6b = [::1]:5676\n",
        );
        let v6: IpAddr = "::1".parse().unwrap();
        assert_eq!(
            s.config.amqp_listeners,
            vec![
                ListenAddr { ip: None, port: 5673 },
                ListenAddr { ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), port: 5674 },
                ListenAddr { ip: Some(v6), port: 5675 },
                ListenAddr { ip: Some(v6), port: 5676 },
            ]
        );
        // Naming only another listener replaces the default one, as in RabbitMQ.
        let s = parse_ok("listeners.tcp.other = 5680\n");
        assert_eq!(s.config.amqp_listeners, vec![ListenAddr { ip: None, port: 5680 }]);
        assert!(parse_ok("listeners.tcp = none\n").config.amqp_listeners.is_empty());
        // The same name twice: the last one.
        let s = parse_ok("listeners.tcp.default = 1\nlisteners.tcp.default = 2\n");
        assert_eq!(s.config.amqp_listeners, vec![ListenAddr { ip: None, port: 2 }]);
    }

    #[test]
    fn tls_options() {
        let s = parse_ok(
            "listeners.ssl.default = 5671\n\
             ssl_options.cacertfile = /etc/ca.pem\n\
             ssl_options.certfile = /etc/server.pem\n\
             ssl_options.keyfile = /etc/server.key\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = true\n\
             ssl_options.versions.1 = tlsv1.3\n\
             ssl_handshake_timeout = 2000\n",
        );
        assert_eq!(s.config.amqps_listeners, vec![ListenAddr { ip: None, port: 5671 }]);
        let t = s.config.tls.expect("tls");
        assert_eq!(t.certfile, PathBuf::from("/etc/server.pem"));
        assert_eq!(t.keyfile, PathBuf::from("/etc/server.key"));
        assert_eq!(t.cacertfile, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(t.client_auth, ClientAuth::Required);
        assert_eq!(t.versions, vec![TlsVersion::Tls13]);
        assert_eq!(t.handshake_timeout, Duration::from_millis(2000));

        let base = "ssl_options.certfile = c\nssl_options.keyfile = k\nssl_options.cacertfile = ca\n";
        let t = parse_ok(base).config.tls.unwrap();
        assert_eq!(t.client_auth, ClientAuth::None);
        assert_eq!(t.versions, vec![TlsVersion::Tls13, TlsVersion::Tls12]);
        assert_eq!(t.handshake_timeout, TlsConfig::DEFAULT_HANDSHAKE_TIMEOUT);
        let t =
            parse_ok(&format!("{base}ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = false\n"))
                .config
                .tls
                .unwrap();
        assert_eq!(t.client_auth, ClientAuth::Optional);

        let e = parse_err("# tls\nlisteners.ssl.default = 5671\n");
        assert_eq!((e.line, e.key.as_deref()), (2, Some("listeners.ssl")));
        let e = parse_err("\nssl_options.certfile = c\n");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("ssl_options.keyfile is required"), "{e}");
        let e = parse_err("ssl_options.certfile = c\nssl_options.keyfile = k\nssl_options.verify = verify_peer\n");
        assert!(e.message.contains("cacertfile"), "{e}");
    }

    #[test]
    fn users_permissions_and_loopback() {
        let s = parse_ok(
            "default_user = admin\n\
             default_pass = pw\n\
             default_vhost = prod\n\
             default_user_tags.administrator = false\n\
             default_user_tags.monitoring = true\n\
             default_permissions.configure = ^$\n\
             default_permissions.read = .*\n\
             default_permissions.write = ^amq\\.\n\
             loopback_users.guest = false\n\
             loopback_users.admin = true\n\
             load_definitions = /etc/defs.json\n",
        );
        let c = s.config;
        assert_eq!(
            (c.default_user.as_str(), c.default_pass.as_str(), c.default_vhost.as_str()),
            ("admin", "pw", "prod")
        );
        assert_eq!(c.default_user_tags, vec!["monitoring".to_owned()]);
        assert_eq!(c.default_permissions.configure, "^$");
        assert_eq!(c.default_permissions.read, ".*");
        assert_eq!(c.default_permissions.write, "^amq\\.");
        assert_eq!(c.loopback_users, vec!["admin".to_owned()]);
        assert_eq!(c.load_definitions, Some(PathBuf::from("/etc/defs.json")));
        assert!(parse_ok("loopback_users = none\n").config.loopback_users.is_empty());
        assert!(parse_ok("loopback_users.guest = false\n").config.loopback_users.is_empty());
    }

    #[test]
    fn tuning_keys() {
        let s = parse_ok(
            "heartbeat = 0\nframe_max = 8192\nchannel_max = 100\nconnection_max = 500\n\
             max_message_size = 1048576\nhandshake_timeout = 3000\n\
             management.tcp.port = 15000\nmanagement.tcp.ip = 127.0.0.1\nprometheus.tcp.port = 15001\n\
             prometheus.tcp.ip = ::1\nmanagement.http.max_body_size = 1MB\n\
             management.login_session_timeout = 30\n",
        );
        let c = s.config;
        assert_eq!(c.management_http_max_body_bytes, 1_000_000);
        assert_eq!(c.management_login_session_timeout_min, 30);
        assert_eq!(Config::default().management_login_session_timeout_min, 480);
        assert!(parse_err("management.login_session_timeout = 0\n").to_string().contains("at least 1"));
        assert_eq!((c.heartbeat_secs, c.frame_max, c.channel_max), (0, 8192, 100));
        assert_eq!(c.connection_max, Some(500));
        assert_eq!(c.max_message_size_bytes, 1 << 20);
        assert_eq!(c.handshake_timeout, Duration::from_secs(3));
        assert_eq!((c.management_port, c.management_ip), (15000, Some(IpAddr::V4(Ipv4Addr::LOCALHOST))));
        assert_eq!((c.prometheus_port, c.prometheus_ip), (15001, Some("::1".parse().unwrap())));
        let c = parse_ok("connection_max = infinity\nchannel_max = 0\n").config;
        assert_eq!((c.connection_max, c.channel_max), (None, u16::MAX));
        use crate::alarms::MemoryStrategy;
        assert_eq!(Config::default().memory_strategy, MemoryStrategy::Rss);
        let c = parse_ok("vm_memory_calculation_strategy = allocated\n").config;
        assert_eq!(c.memory_strategy, MemoryStrategy::Allocated);
        assert!(parse_err("vm_memory_calculation_strategy = erlang\n").to_string().contains("allocated or rss"));
    }

    #[test]
    fn log_keys() {
        let s = parse_ok("log.level = warning\nlog.console = false\nlog.console.level = debug\nlog.file = false\n");
        assert_eq!(
            s.log,
            LogSettings {
                level: Some("warn"),
                console: false,
                console_level: Some("debug"),
                file: None,
                file_level: None
            }
        );
        let s = parse_ok("log.file = /var/log/warren.log\nlog.file.level = error\n");
        assert_eq!(s.log.file, Some(PathBuf::from("/var/log/warren.log")));
        assert_eq!(s.log.file_level, Some("error"));
    }

    #[test]
    fn warren_keys() {
        let s = parse_ok(
            "warren.data_dir = /data\nwarren.queue_ram_budget = 16MiB\nwarren.fd_reserve = 100\n\
             warren.store_open_files_max = 64\nwarren.queue_max = 10\nwarren.exchange_max = 20\n\
             warren.binding_max = 30\nwarren.max_arguments_table_bytes = 1k\nwarren.outbox_max_bytes = 1MB\n\
             warren.threads = 3\n",
        );
        let c = s.config;
        assert_eq!(c.data_dir, PathBuf::from("/data"));
        assert_eq!(c.queue_ram_budget_bytes, 16 << 20);
        assert_eq!((c.fd_reserve_count, c.store_open_files_max), (100, 64));
        assert_eq!((c.queue_max_count, c.exchange_max_count, c.binding_max_count), (10, 20, 30));
        assert_eq!((c.max_arguments_table_bytes, c.outbox_max_bytes), (1024, 1_000_000));
        assert_eq!(s.threads, Some(3));
    }
}
