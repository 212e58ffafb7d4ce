//! Celery's task protocol v2 and the `rpc://` result messages, as Celery 5.x puts them on the
//! wire. No I/O: messages are plain values ([`RawMessage`]: headers as a JSON object, the AMQP
//! properties we use, the body bytes); `amqp` converts them to and from lapin's types.
//!
//! Sources of truth (the golden files in `tests/golden` come from them): `as_task_v2` in
//! celery/app/amqp.py (headers, body), `_get_result_meta`/`prepare_exception` in
//! celery/backends/base.py and `_to_result` in celery/backends/rpc.py (results),
//! kombu/utils/json.py (`{"__type__", "__value__"}` tags).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The only serializer we speak. Celery workers accept only JSON by default
/// (`accept_content = ['json']`), and pickle is Python-only.
pub const CONTENT_TYPE_JSON: &str = "application/json";
pub const CONTENT_ENCODING_UTF8: &str = "utf-8";
/// Celery's `task_default_delivery_mode` (persistent).
pub const DELIVERY_MODE_PERSISTENT: u8 = 2;
/// The rpc backend publishes results transient unless `result_persistent` is set.
pub const DELIVERY_MODE_TRANSIENT: u8 = 1;

/// The AMQP basic properties Celery uses; everything else is ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties {
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
}

/// One message as the broker carries it, with the header table already in JSON terms.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawMessage {
    pub headers: Map<String, Value>,
    pub properties: Properties,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProtocolError {
    /// A content type other than JSON (pickle, yaml, msgpack...).
    UnsupportedContentType(String),
    /// No `task` header: not a protocol v2 message (v1 kept everything in the body).
    NotV2,
    MissingHeader(&'static str),
    BadHeader {
        name: &'static str,
        reason: String,
    },
    BadBody(String),
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtocolError::UnsupportedContentType(t) => {
                write!(f, "unsupported content type {t:?} (only {CONTENT_TYPE_JSON})")
            }
            ProtocolError::NotV2 => write!(f, "not a Celery protocol v2 message (no 'task' header)"),
            ProtocolError::MissingHeader(h) => write!(f, "missing header {h:?}"),
            ProtocolError::BadHeader { name, reason } => write!(f, "bad header {name:?}: {reason}"),
            ProtocolError::BadBody(reason) => write!(f, "bad body: {reason}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// The body's third element. Each field is `null` or a list of signatures (JSON objects);
/// kept as JSON here (re-encoded unchanged); `crate::canvas` reads them as signatures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Embed {
    #[serde(default)]
    pub callbacks: Value,
    #[serde(default)]
    pub errbacks: Value,
    #[serde(default)]
    pub chain: Value,
    #[serde(default)]
    pub chord: Value,
}

/// A task message: the headers of `as_task_v2`, the properties that matter, and the body.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskMessage {
    pub lang: String,
    pub task: String,
    pub id: String,
    pub shadow: Option<String>,
    /// ISO 8601 as Python's `isoformat()` writes it; a time without an offset is UTC.
    pub eta: Option<String>,
    pub expires: Option<String>,
    pub group: Option<String>,
    pub group_index: Option<i64>,
    pub retries: i64,
    /// `[hard, soft]` in seconds: that is the order amqp.py builds and request.py unpacks
    /// (Celery's protocol document says soft first, which is wrong).
    pub timelimit: (Option<f64>, Option<f64>),
    pub root_id: String,
    pub parent_id: Option<String>,
    pub argsrepr: String,
    pub kwargsrepr: String,
    pub origin: String,
    pub ignore_result: bool,
    pub replaced_task_nesting: i64,
    pub stamped_headers: Option<Vec<String>>,
    pub stamps: Map<String, Value>,
    /// Where the result goes (`rpc://` backend); Celery sends `""` when there is none.
    pub reply_to: Option<String>,
    pub priority: Option<u8>,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub embed: Embed,
}

impl TaskMessage {
    /// A message with Celery's defaults for everything but the name, id and arguments.
    pub fn new(task: &str, id: &str, args: Vec<Value>, kwargs: Map<String, Value>) -> TaskMessage {
        TaskMessage {
            lang: "rs".to_owned(),
            task: task.to_owned(),
            id: id.to_owned(),
            shadow: None,
            eta: None,
            expires: None,
            group: None,
            group_index: None,
            retries: 0,
            timelimit: (None, None),
            root_id: id.to_owned(),
            parent_id: None,
            argsrepr: repr_json(&Value::Array(args.clone())),
            kwargsrepr: repr_json(&Value::Object(kwargs.clone())),
            origin: String::new(),
            ignore_result: false,
            replaced_task_nesting: 0,
            stamped_headers: None,
            stamps: Map::new(),
            reply_to: None,
            priority: None,
            args,
            kwargs,
            embed: Embed::default(),
        }
    }

    /// Reads a message as Celery sends it. Unknown headers are ignored, kombu's JSON type
    /// tags in the arguments are replaced by their plain values (see [`untag`]).
    pub fn decode(raw: &RawMessage) -> Result<TaskMessage, ProtocolError> {
        check_json(&raw.properties)?;
        let h = &raw.headers;
        if !h.contains_key("task") {
            return Err(ProtocolError::NotV2);
        }
        let body: Vec<Value> = serde_json::from_slice(&raw.body).map_err(|e| ProtocolError::BadBody(e.to_string()))?;
        let mut parts = body.into_iter();
        let (args, kwargs, embed) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Value::Array(args)), Some(Value::Object(kwargs)), embed, None) => {
                let embed = match embed {
                    None | Some(Value::Null) => Embed::default(),
                    Some(e) => serde_json::from_value(e).map_err(|e| ProtocolError::BadBody(format!("embed: {e}")))?,
                };
                (args, kwargs, embed)
            }
            _ => return Err(ProtocolError::BadBody("expected [args, kwargs, embed]".to_owned())),
        };
        let id = req_str(h, "id")?;
        let timelimit = match h.get("timelimit") {
            None | Some(Value::Null) => (None, None),
            Some(Value::Array(v)) if v.len() == 2 => (opt_f64(&v[0], "timelimit")?, opt_f64(&v[1], "timelimit")?),
            Some(other) => return Err(bad("timelimit", format!("expected [hard, soft], got {other}"))),
        };
        let stamped_headers = match h.get("stamped_headers") {
            None | Some(Value::Null) => None,
            Some(v) => Some(serde_json::from_value(v.clone()).map_err(|e| bad("stamped_headers", e.to_string()))?),
        };
        let stamps = match h.get("stamps") {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        Ok(TaskMessage {
            lang: opt_str(h, "lang")?.unwrap_or_default(),
            task: req_str(h, "task")?,
            root_id: opt_str(h, "root_id")?.unwrap_or_else(|| id.clone()),
            id,
            shadow: opt_str(h, "shadow")?,
            eta: opt_str(h, "eta")?,
            expires: opt_str(h, "expires")?,
            group: opt_str(h, "group")?,
            group_index: opt_i64(h, "group_index")?,
            retries: opt_i64(h, "retries")?.unwrap_or(0),
            timelimit,
            parent_id: opt_str(h, "parent_id")?,
            argsrepr: opt_str(h, "argsrepr")?.unwrap_or_default(),
            kwargsrepr: opt_str(h, "kwargsrepr")?.unwrap_or_default(),
            origin: opt_str(h, "origin")?.unwrap_or_default(),
            ignore_result: match h.get("ignore_result") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => return Err(bad("ignore_result", format!("expected a bool, got {other}"))),
            },
            replaced_task_nesting: opt_i64(h, "replaced_task_nesting")?.unwrap_or(0),
            stamped_headers,
            stamps,
            reply_to: raw.properties.reply_to.clone().filter(|r| !r.is_empty()),
            priority: raw.properties.priority,
            args: args.into_iter().map(untag).collect(),
            kwargs: kwargs.into_iter().map(|(k, v)| (k, untag(v))).collect(),
            embed,
        })
    }

    /// The message as Celery would send it: every header present (`None` as null), JSON body,
    /// persistent.
    pub fn encode(&self) -> RawMessage {
        let opt = |v: &Option<String>| v.as_ref().map_or(Value::Null, |s| Value::String(s.clone()));
        let num = |v: Option<f64>| {
            v.map_or(Value::Null, |n| serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))
        };
        let mut h = Map::new();
        h.insert("lang".into(), self.lang.clone().into());
        h.insert("task".into(), self.task.clone().into());
        h.insert("id".into(), self.id.clone().into());
        h.insert("shadow".into(), opt(&self.shadow));
        h.insert("eta".into(), opt(&self.eta));
        h.insert("expires".into(), opt(&self.expires));
        h.insert("group".into(), opt(&self.group));
        h.insert("group_index".into(), self.group_index.map_or(Value::Null, Value::from));
        h.insert("retries".into(), self.retries.into());
        h.insert("timelimit".into(), Value::Array(vec![num(self.timelimit.0), num(self.timelimit.1)]));
        h.insert("root_id".into(), self.root_id.clone().into());
        h.insert("parent_id".into(), opt(&self.parent_id));
        h.insert("argsrepr".into(), self.argsrepr.clone().into());
        h.insert("kwargsrepr".into(), self.kwargsrepr.clone().into());
        h.insert("origin".into(), self.origin.clone().into());
        h.insert("ignore_result".into(), self.ignore_result.into());
        h.insert("replaced_task_nesting".into(), self.replaced_task_nesting.into());
        h.insert(
            "stamped_headers".into(),
            self.stamped_headers.as_ref().map_or(Value::Null, |s| s.iter().cloned().map(Value::String).collect()),
        );
        h.insert("stamps".into(), Value::Object(self.stamps.clone()));
        let body = serde_json::to_vec(&(&self.args, &self.kwargs, &self.embed)).expect("JSON values always serialize");
        RawMessage {
            headers: h,
            properties: Properties {
                correlation_id: Some(self.id.clone()),
                reply_to: self.reply_to.clone(),
                content_type: Some(CONTENT_TYPE_JSON.to_owned()),
                content_encoding: Some(CONTENT_ENCODING_UTF8.to_owned()),
                delivery_mode: Some(DELIVERY_MODE_PERSISTENT),
                priority: self.priority,
            },
            body,
        }
    }
}

/// Celery's task states (celery/states.py) that end a task.
pub fn is_ready_state(status: &str) -> bool {
    matches!(status, "SUCCESS" | "FAILURE" | "REVOKED")
}

/// An exception as the JSON serializer carries it (`prepare_exception`): `exc_message` is
/// the exception's `args` (a list) when Python sends it; a string is accepted too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExceptionInfo {
    pub exc_type: String,
    #[serde(default)]
    pub exc_message: Value,
    #[serde(default)]
    pub exc_module: Option<String>,
}

impl ExceptionInfo {
    /// The message a person reads: Python's `str(exc)` for the common one-argument case.
    pub fn message(&self) -> String {
        match &self.exc_message {
            Value::String(s) => s.clone(),
            Value::Array(items) if items.len() == 1 => match &items[0] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
            Value::Array(items) if items.is_empty() => String::new(),
            Value::Null => String::new(),
            other => other.to_string(),
        }
    }
}

/// A result message of the `rpc://` backend (what `RPCBackend._to_result` builds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultMessage {
    pub task_id: String,
    pub status: String,
    /// The return value on success, an [`ExceptionInfo`] object on failure.
    pub result: Value,
    pub traceback: Option<String>,
    #[serde(default)]
    pub children: Vec<Value>,
    pub date_done: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
}

impl ResultMessage {
    pub fn success(task: &TaskMessage, value: Value, date_done: String) -> ResultMessage {
        ResultMessage::ready(task, "SUCCESS", value, None, date_done)
    }

    pub fn failure(
        task: &TaskMessage,
        exc: &ExceptionInfo,
        traceback: Option<String>,
        date_done: String,
    ) -> ResultMessage {
        let value = serde_json::to_value(exc).expect("ExceptionInfo serializes");
        ResultMessage::ready(task, "FAILURE", value, traceback, date_done)
    }

    fn ready(
        task: &TaskMessage,
        status: &str,
        result: Value,
        traceback: Option<String>,
        date_done: String,
    ) -> ResultMessage {
        ResultMessage {
            task_id: task.id.clone(),
            status: status.to_owned(),
            result,
            traceback,
            children: Vec::new(),
            date_done: Some(date_done),
            group_id: task.group.clone(),
            parent_id: task.parent_id.clone(),
        }
    }

    /// The exception of a FAILURE, if the result is one in the JSON form.
    pub fn exception(&self) -> Option<ExceptionInfo> {
        if self.status != "FAILURE" {
            return None;
        }
        serde_json::from_value(self.result.clone()).ok()
    }

    /// Reads a result message; kombu's type tags in the value are replaced by plain values.
    pub fn decode(raw: &RawMessage) -> Result<ResultMessage, ProtocolError> {
        check_json(&raw.properties)?;
        let mut msg: ResultMessage =
            serde_json::from_slice(&raw.body).map_err(|e| ProtocolError::BadBody(e.to_string()))?;
        msg.result = untag(msg.result);
        Ok(msg)
    }

    /// The message to publish to the task's `reply_to`, `correlation_id` = the task id.
    pub fn encode(&self) -> RawMessage {
        RawMessage {
            headers: Map::new(),
            properties: Properties {
                correlation_id: Some(self.task_id.clone()),
                reply_to: None,
                content_type: Some(CONTENT_TYPE_JSON.to_owned()),
                content_encoding: Some(CONTENT_ENCODING_UTF8.to_owned()),
                delivery_mode: Some(DELIVERY_MODE_TRANSIENT),
                priority: None,
            },
            body: serde_json::to_vec(self).expect("JSON values always serialize"),
        }
    }
}

/// Replaces kombu's JSON type tags (`{"__type__": t, "__value__": v}`, kombu/utils/json.py)
/// by plain JSON: datetime/date/time/decimal/bytes become their string form, a UUID its
/// hyphenated form; base64 stays base64 text. Rust tasks get JSON, not Python types.
pub fn untag(v: Value) -> Value {
    match v {
        Value::Object(m) if m.len() == 2 && m.contains_key("__type__") && m.contains_key("__value__") => {
            let kind = m.get("__type__").and_then(Value::as_str).unwrap_or_default().to_owned();
            let value = m.get("__value__").cloned().unwrap_or(Value::Null);
            match (kind.as_str(), &value) {
                ("uuid", Value::Object(u)) => match u.get("hex").and_then(Value::as_str) {
                    Some(hex) if hex.len() == 32 => Value::String(format!(
                        "{}-{}-{}-{}-{}",
                        &hex[..8],
                        &hex[8..12],
                        &hex[12..16],
                        &hex[16..20],
                        &hex[20..]
                    )),
                    _ => value,
                },
                _ => value,
            }
        }
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, untag(v))).collect()),
        Value::Array(a) => Value::Array(a.into_iter().map(untag).collect()),
        other => other,
    }
}

/// A short Python-like repr for the `argsrepr`/`kwargsrepr` headers (Flower and logs show
/// them; Celery caps them too).
fn repr_json(v: &Value) -> String {
    const REPR_MAX: usize = 1024;
    let mut s = v.to_string();
    if s.len() > REPR_MAX {
        let mut cut = REPR_MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Python's `datetime.isoformat()` of a UTC time (what `date_done` and `eta` look like).
pub fn isoformat_utc(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Reads the ISO 8601 times Celery writes (`eta`, `expires`): `YYYY-MM-DDTHH:MM:SS[.ffffff]`
/// with `+HH:MM`/`-HH:MM`/`Z`, or no offset, which Celery's protocol reads as UTC.
pub fn parse_isoformat(s: &str) -> Option<SystemTime> {
    let num = |t: &str| -> Option<i64> {
        if t.bytes().all(|b| b.is_ascii_digit()) && !t.is_empty() { t.parse().ok() } else { None }
    };
    let (date, rest) = s.split_once(['T', ' '])?;
    let mut d = date.splitn(3, '-');
    let (y, m, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    // The offset starts at the first '+', '-' or 'Z' after the time.
    let (time, offset) = match rest.find(['+', '-', 'Z']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':');
    let (hh, mm, ss) = (num(t.next()?)?, num(t.next()?)?, num(t.next()?)?);
    let micros = if frac.is_empty() { 0 } else { num(&format!("{frac:0<6}")[..6])? };
    let offset_secs = match offset {
        "" | "Z" => 0,
        o => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let (oh, om) = o[1..].split_once(':').unwrap_or((&o[1..], "0"));
            sign * (num(oh)? * 3600 + num(om)? * 60)
        }
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let secs = days_from_civil(y, m as u32, day as u32) * 86_400 + hh * 3600 + mm * 60 + ss - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros as u64))
}

/// (year, month, day) to days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn check_json(p: &Properties) -> Result<(), ProtocolError> {
    match p.content_type.as_deref() {
        None | Some(CONTENT_TYPE_JSON) => Ok(()),
        Some(other) => Err(ProtocolError::UnsupportedContentType(other.to_owned())),
    }
}

fn bad(name: &'static str, reason: String) -> ProtocolError {
    ProtocolError::BadHeader { name, reason }
}

fn req_str(h: &Map<String, Value>, name: &'static str) -> Result<String, ProtocolError> {
    opt_str(h, name)?.ok_or(ProtocolError::MissingHeader(name))
}

fn opt_str(h: &Map<String, Value>, name: &'static str) -> Result<Option<String>, ProtocolError> {
    match h.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(bad(name, format!("expected a string, got {other}"))),
    }
}

fn opt_i64(h: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, ProtocolError> {
    match h.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
        Some(other) => Err(bad(name, format!("expected an integer, got {other}"))),
    }
}

fn opt_f64(v: &Value, name: &'static str) -> Result<Option<f64>, ProtocolError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => Ok(n.as_f64()),
        other => Err(bad(name, format!("expected a number, got {other}"))),
    }
}

#[cfg(test)]
mod tests;
