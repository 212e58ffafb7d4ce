//! RabbitMQ's definitions JSON (`GET/POST /api/definitions`, `rabbitmqctl
//! export_definitions`, `load_definitions`): parsing files written by RabbitMQ 3.x/4.x,
//! planning an all-or-nothing import, and exporting in the same format.
//!
//! Import is lenient where RabbitMQ's own exports varied across versions: `tags` as a list
//! or a comma-separated string, `limits` as an object or `[]`, vhost description and tags at
//! the top level or under `metadata`, a missing `hashing_algorithm` (md5 for files from
//! 3.0–3.5, sha256 otherwise), vhost limits and operator policies carried as runtime
//! `parameters`. Unknown keys are ignored; parameters of other components (federation,
//! shovels...) and global parameters are kept as raw JSON and reported as not applied.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use wire::FieldTable;

use crate::directory::{Change, Directory};
use crate::error::AccessError;
use crate::json_args::serde_table;
use crate::model::{
    ApplyTo, HashingAlgorithm, Permission, Policy, TopicPermission, User, UserLimits, Vhost, VhostLimits,
};
use crate::password;
use crate::policy::ignored_keys;

/// The RabbitMQ version Warren's exports claim in `rabbit_version` / `rabbitmq_version`:
/// the release whose behaviour it follows (no classic mirroring, `ha-*` keys ignored).
pub const RABBITMQ_COMPAT_VERSION: &str = "4.1.0";

/// Longest queue or exchange name AMQP can carry (a short string).
const MAX_NAME_BYTES: usize = 255;

const COMPONENT_VHOST_LIMITS: &str = "vhost-limits";
const COMPONENT_OPERATOR_POLICY: &str = "operator_policy";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definitions {
    #[serde(default)]
    pub rabbit_version: String,
    #[serde(default)]
    pub rabbitmq_version: String,
    #[serde(default)]
    pub product_name: String,
    #[serde(default)]
    pub product_version: String,
    #[serde(default)]
    pub users: Vec<UserDef>,
    #[serde(default)]
    pub vhosts: Vec<VhostDef>,
    #[serde(default)]
    pub permissions: Vec<Permission>,
    #[serde(default)]
    pub topic_permissions: Vec<TopicPermission>,
    /// Runtime parameters `{vhost, component, name, value}`, raw.
    #[serde(default)]
    pub parameters: Vec<Value>,
    /// Global parameters `{name, value}`, raw.
    #[serde(default)]
    pub global_parameters: Vec<Value>,
    #[serde(default)]
    pub policies: Vec<Policy>,
    #[serde(default)]
    pub queues: Vec<QueueDef>,
    #[serde(default)]
    pub exchanges: Vec<ExchangeDef>,
    #[serde(default)]
    pub bindings: Vec<BindingDef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserDef {
    pub name: String,
    #[serde(default)]
    pub password_hash: String,
    /// A clear-text password, which RabbitMQ also accepts on import; hashed with sha256
    /// when planned. Never exported.
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashing_algorithm: Option<HashingAlgorithm>,
    #[serde(default, deserialize_with = "lenient::tags")]
    pub tags: Vec<String>,
    #[serde(default, deserialize_with = "lenient::user_limits")]
    pub limits: UserLimits,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VhostDef {
    pub name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub description: String,
    #[serde(default, deserialize_with = "lenient::tags")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::queue_type")]
    pub default_queue_type: Option<String>,
    #[serde(default, deserialize_with = "lenient::vhost_limits")]
    pub limits: VhostLimits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<VhostMetadata>,
}

/// RabbitMQ 3.8+ puts a vhost's description and tags here (3.11+: also its default queue type).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VhostMetadata {
    #[serde(default, deserialize_with = "lenient::string")]
    pub description: String,
    #[serde(default, deserialize_with = "lenient::tags")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::queue_type")]
    pub default_queue_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    pub name: String,
    pub vhost: String,
    /// "classic", "quorum" or "stream" (RabbitMQ 3.13+ exports it; older files only have
    /// `x-queue-type` in the arguments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
    #[serde(default = "yes")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    #[serde(default, with = "serde_table")]
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeDef {
    pub name: String,
    pub vhost: String,
    pub r#type: String,
    #[serde(default = "yes")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    #[serde(default)]
    pub internal: bool,
    #[serde(default, with = "serde_table")]
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingDef {
    pub source: String,
    pub vhost: String,
    pub destination: String,
    /// "queue" or "exchange".
    pub destination_type: String,
    #[serde(default)]
    pub routing_key: String,
    #[serde(default, with = "serde_table")]
    pub arguments: FieldTable,
}

/// What importing a definitions file does, checked in full against a copy of the current
/// directory. Applying `changes` in order to that directory cannot fail.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportPlan {
    /// Vhosts first, then users, permissions, topic permissions, limits, policies and
    /// operator policies.
    pub changes: Vec<Change>,
    pub queues: Vec<QueueDef>,
    pub exchanges: Vec<ExchangeDef>,
    pub bindings: Vec<BindingDef>,
    /// What the import accepted but will not apply (ignored policy keys, unsupported
    /// parameters, `amq.*` exchanges), for the caller to log.
    pub warnings: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Definitions {
    pub fn parse(json: &[u8]) -> Result<Definitions, AccessError> {
        serde_json::from_slice(json).map_err(|e| AccessError::Invalid(format!("definitions file: {e}")))
    }

    /// Check every entry and compute the changes, refusing the whole file at the first bad
    /// entry (named in the error). `current` is not modified.
    pub fn plan(&self, current: &Directory) -> Result<ImportPlan, AccessError> {
        let mut planner = Planner { scratch: current.clone(), changes: Vec::new(), warnings: Vec::new() };
        for v in &self.vhosts {
            planner.push(Change::PutVhost(v.to_model()), || format!("vhost '{}'", v.name))?;
        }
        let default_alg = self.default_hashing_algorithm();
        for u in &self.users {
            let user = u.to_model(default_alg);
            planner.push(Change::PutUser(user), || format!("user '{}'", u.name))?;
        }
        for p in &self.permissions {
            planner.push(Change::PutPermission(p.clone()), || {
                format!("permissions of user '{}' in vhost '{}'", p.user, p.vhost)
            })?;
        }
        for t in &self.topic_permissions {
            planner.push(Change::PutTopicPermission(t.clone()), || {
                format!("topic permissions of user '{}' on exchange '{}' in vhost '{}'", t.user, t.exchange, t.vhost)
            })?;
        }
        let mut operator_policies = Vec::new();
        for (i, raw) in self.parameters.iter().enumerate() {
            match Parameter::read(raw).map_err(|e| AccessError::Invalid(format!("parameter #{}: {e}", i + 1)))? {
                Parameter::VhostLimits { vhost, limits } => {
                    planner.push(Change::SetVhostLimits { vhost: vhost.clone(), limits }, || {
                        format!("limits of vhost '{vhost}'")
                    })?;
                }
                Parameter::OperatorPolicy(p) => operator_policies.push(p),
                Parameter::Other { component, vhost, name } => planner.warnings.push(format!(
                    "parameter '{name}' of component '{component}' in vhost '{vhost}' is not supported: not applied"
                )),
            }
        }
        for p in &self.policies {
            planner.warn_ignored_keys("policy", p);
            planner.push(Change::PutPolicy(p.clone()), || format!("policy '{}' in vhost '{}'", p.name, p.vhost))?;
        }
        for p in operator_policies {
            let (name, vhost) = (p.name.clone(), p.vhost.clone());
            planner.push(Change::PutOperatorPolicy(p), || format!("operator policy '{name}' in vhost '{vhost}'"))?;
        }
        for g in &self.global_parameters {
            let name = g.get("name").and_then(Value::as_str).unwrap_or("?");
            planner.warnings.push(format!("global parameter '{name}' is not supported: not applied"));
        }
        let queues = self.checked_queues(&planner.scratch)?;
        let exchanges = self.checked_exchanges(&planner.scratch, &mut planner.warnings)?;
        let bindings = self.checked_bindings(&planner.scratch)?;
        Ok(ImportPlan { changes: planner.changes, queues, exchanges, bindings, warnings: planner.warnings })
    }

    /// The definitions of a node: its directory plus the durable topology the caller lists.
    /// Default and `amq.*` exchanges are left out, as RabbitMQ does.
    pub fn export(
        dir: &Directory,
        queues: Vec<QueueDef>,
        exchanges: Vec<ExchangeDef>,
        bindings: Vec<BindingDef>,
    ) -> Definitions {
        let mut parameters = Vec::new();
        let mut policies = Vec::new();
        for v in dir.vhosts() {
            if !v.limits.is_empty() {
                parameters.push(json!({
                    "vhost": v.name, "component": COMPONENT_VHOST_LIMITS, "name": "limits", "value": v.limits,
                }));
            }
            for p in dir.operator_policies(&v.name) {
                parameters.push(json!({
                    "vhost": p.vhost, "component": COMPONENT_OPERATOR_POLICY, "name": p.name,
                    "value": {"pattern": p.pattern, "definition": p.definition, "priority": p.priority, "apply-to": p.apply_to},
                }));
            }
            policies.extend(dir.policies(&v.name).cloned());
        }
        Definitions {
            rabbit_version: RABBITMQ_COMPAT_VERSION.into(),
            rabbitmq_version: RABBITMQ_COMPAT_VERSION.into(),
            product_name: "Warren".into(),
            product_version: env!("CARGO_PKG_VERSION").into(),
            users: dir.users().map(UserDef::from_model).collect(),
            vhosts: dir.vhosts().map(VhostDef::from_model).collect(),
            permissions: dir.permissions().cloned().collect(),
            topic_permissions: dir.topic_permissions().cloned().collect(),
            parameters,
            global_parameters: Vec::new(),
            policies,
            queues,
            exchanges: exchanges.into_iter().filter(|e| !is_builtin_exchange(&e.name)).collect(),
            bindings,
        }
    }

    pub fn to_json_pretty(&self) -> Vec<u8> {
        // Every field is a string-keyed map, a string, a number or a bool: serialization
        // cannot fail.
        serde_json::to_vec_pretty(self).expect("definitions serialize to JSON")
    }

    /// RabbitMQ's rule for files without `hashing_algorithm`: md5 from 3.0–3.5, else sha256.
    fn default_hashing_algorithm(&self) -> HashingAlgorithm {
        let mut parts = self.rabbit_version.split('.').map(|p| p.parse::<u32>().ok());
        match (parts.next().flatten(), parts.next().flatten()) {
            (Some(3), Some(minor)) if minor <= 5 => HashingAlgorithm::Md5,
            _ => HashingAlgorithm::Sha256,
        }
    }

    fn checked_queues(&self, dir: &Directory) -> Result<Vec<QueueDef>, AccessError> {
        for q in &self.queues {
            let what = || format!("queue '{}' in vhost '{}'", q.name, q.vhost);
            need_vhost(dir, &q.vhost, what)?;
            check_name(&q.name, what)?;
            if let Some(t) = &q.r#type
                && !["classic", "quorum", "stream"].contains(&t.as_str())
            {
                return Err(AccessError::Invalid(format!("{}: unknown queue type '{t}'", what())));
            }
        }
        Ok(self.queues.clone())
    }

    fn checked_exchanges(&self, dir: &Directory, warnings: &mut Vec<String>) -> Result<Vec<ExchangeDef>, AccessError> {
        let mut out = Vec::with_capacity(self.exchanges.len());
        for e in &self.exchanges {
            let what = || format!("exchange '{}' in vhost '{}'", e.name, e.vhost);
            need_vhost(dir, &e.vhost, what)?;
            if is_builtin_exchange(&e.name) {
                warnings.push(format!("{}: built-in exchange names are not imported", what()));
                continue;
            }
            check_name(&e.name, what)?;
            if e.r#type.is_empty() {
                return Err(AccessError::Invalid(format!("{}: exchange type must not be empty", what())));
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn checked_bindings(&self, dir: &Directory) -> Result<Vec<BindingDef>, AccessError> {
        for b in &self.bindings {
            let what = || {
                format!(
                    "binding of {} '{}' to exchange '{}' in vhost '{}'",
                    b.destination_type, b.destination, b.source, b.vhost
                )
            };
            need_vhost(dir, &b.vhost, what)?;
            if !["queue", "exchange"].contains(&b.destination_type.as_str()) {
                return Err(AccessError::Invalid(format!("{}: destination_type must be queue or exchange", what())));
            }
            check_name(&b.destination, what)?;
        }
        Ok(self.bindings.clone())
    }
}

impl UserDef {
    fn to_model(&self, default_alg: HashingAlgorithm) -> User {
        let (password_hash, hashing_algorithm) = match (&self.password, self.password_hash.is_empty()) {
            (Some(clear), true) if !clear.is_empty() => {
                (password::hash_password(HashingAlgorithm::Sha256, clear), HashingAlgorithm::Sha256)
            }
            _ => (self.password_hash.trim().to_owned(), self.hashing_algorithm.unwrap_or(default_alg)),
        };
        User {
            name: self.name.clone(),
            password_hash,
            hashing_algorithm,
            tags: self.tags.clone(),
            limits: self.limits.clone(),
        }
    }

    fn from_model(u: &User) -> UserDef {
        UserDef {
            name: u.name.clone(),
            password_hash: u.password_hash.clone(),
            password: None,
            hashing_algorithm: Some(u.hashing_algorithm),
            tags: u.tags.clone(),
            limits: u.limits.clone(),
        }
    }
}

impl VhostDef {
    /// Top-level fields win; `metadata` fills what they leave empty.
    fn to_model(&self) -> Vhost {
        let meta = self.metadata.clone().unwrap_or_default();
        Vhost {
            name: self.name.clone(),
            description: if self.description.is_empty() { meta.description } else { self.description.clone() },
            tags: if self.tags.is_empty() { meta.tags } else { self.tags.clone() },
            default_queue_type: self.default_queue_type.clone().or(meta.default_queue_type),
            limits: self.limits.clone(),
        }
    }

    fn from_model(v: &Vhost) -> VhostDef {
        VhostDef {
            name: v.name.clone(),
            description: v.description.clone(),
            tags: v.tags.clone(),
            default_queue_type: v.default_queue_type.clone(),
            limits: v.limits.clone(),
            metadata: Some(VhostMetadata {
                description: v.description.clone(),
                tags: v.tags.clone(),
                default_queue_type: v.default_queue_type.clone(),
            }),
        }
    }
}

struct Planner {
    /// A copy of the directory with the planned changes applied, so each change is
    /// validated against everything planned before it.
    scratch: Directory,
    changes: Vec<Change>,
    warnings: Vec<String>,
}

impl Planner {
    fn push(&mut self, c: Change, what: impl Fn() -> String) -> Result<(), AccessError> {
        // Invalid errors from the directory already name the entry; a NotFound names only
        // what is missing, so say which entry refers to it.
        self.scratch.apply(c.clone()).map_err(|e| match e {
            AccessError::NotFound(m) => AccessError::NotFound(format!("{}: {m}", what())),
            invalid => invalid,
        })?;
        self.changes.push(c);
        Ok(())
    }

    fn warn_ignored_keys(&mut self, kind: &str, p: &Policy) {
        let ignored = ignored_keys(&p.definition);
        if !ignored.is_empty() {
            self.warnings.push(format!(
                "{kind} '{}' in vhost '{}': {} ignored (classic mirroring and lazy mode do not exist here)",
                p.name,
                p.vhost,
                ignored.join(", ")
            ));
        }
    }
}

/// The runtime parameters an import understands.
enum Parameter {
    VhostLimits { vhost: String, limits: VhostLimits },
    OperatorPolicy(Policy),
    Other { component: String, vhost: String, name: String },
}

impl Parameter {
    fn read(raw: &Value) -> Result<Parameter, String> {
        let field = |k: &str| raw.get(k).and_then(Value::as_str).map(str::to_owned);
        let (Some(component), Some(vhost), Some(name)) = (field("component"), field("vhost"), field("name")) else {
            return Err("a parameter needs string fields component, vhost and name".into());
        };
        let value = raw.get("value").cloned().unwrap_or(Value::Null);
        match component.as_str() {
            COMPONENT_VHOST_LIMITS => {
                let limits = lenient::vhost_limits(value).map_err(|e| format!("vhost-limits of '{vhost}': {e}"))?;
                Ok(Parameter::VhostLimits { vhost, limits })
            }
            COMPONENT_OPERATOR_POLICY => {
                let body: OperatorPolicyValue = serde_json::from_value(value)
                    .map_err(|e| format!("operator policy '{name}' in vhost '{vhost}': {e}"))?;
                Ok(Parameter::OperatorPolicy(Policy {
                    vhost,
                    name,
                    pattern: body.pattern,
                    apply_to: body.apply_to,
                    priority: body.priority,
                    definition: body.definition,
                }))
            }
            _ => Ok(Parameter::Other { component, vhost, name }),
        }
    }
}

#[derive(Deserialize)]
struct OperatorPolicyValue {
    pattern: String,
    definition: Map<String, Value>,
    #[serde(default)]
    priority: i64,
    #[serde(rename = "apply-to", default)]
    apply_to: ApplyTo,
}

fn need_vhost(dir: &Directory, vhost: &str, what: impl Fn() -> String) -> Result<(), AccessError> {
    match dir.vhost(vhost) {
        Some(_) => Ok(()),
        None => Err(AccessError::NotFound(format!("{}: vhost '{vhost}' does not exist", what()))),
    }
}

fn check_name(name: &str, what: impl Fn() -> String) -> Result<(), AccessError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(AccessError::Invalid(format!("{}: name must be 1 to {MAX_NAME_BYTES} bytes", what())));
    }
    Ok(())
}

/// The default exchange ("") and the `amq.*` names are created by the broker, never imported.
fn is_builtin_exchange(name: &str) -> bool {
    name.is_empty() || name.starts_with("amq.")
}

/// Deserializers for the shapes RabbitMQ versions disagree on.
mod lenient {
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    use crate::model::{UserLimits, VhostLimits};

    /// A list of strings, or one comma-separated string ("administrator,management").
    pub(super) fn tags<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        match Value::deserialize(d)? {
            Value::Null => Ok(Vec::new()),
            Value::String(s) => Ok(s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect()),
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(serde::de::Error::custom(format!("a tag must be a string, got {other}"))),
                })
                .collect(),
            other => Err(serde::de::Error::custom(format!("tags must be a list or a string, got {other}"))),
        }
    }

    /// A string, or null for "".
    pub(super) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
    }

    /// RabbitMQ writes "undefined" for a vhost without a default queue type.
    pub(super) fn queue_type<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.filter(|t| !t.is_empty() && t != "undefined"))
    }

    pub(super) fn user_limits<'de, D: Deserializer<'de>>(d: D) -> Result<UserLimits, D::Error> {
        let v = Value::deserialize(d)?;
        Ok(UserLimits {
            max_connections: limit(&v, "max-connections").map_err(serde::de::Error::custom)?,
            max_channels: limit(&v, "max-channels").map_err(serde::de::Error::custom)?,
        })
    }

    /// Used both as a deserializer and on the `value` of a `vhost-limits` parameter.
    pub(super) fn vhost_limits<'de, D: Deserializer<'de>>(d: D) -> Result<VhostLimits, D::Error> {
        let v = Value::deserialize(d)?;
        Ok(VhostLimits {
            max_connections: limit(&v, "max-connections").map_err(serde::de::Error::custom)?,
            max_queues: limit(&v, "max-queues").map_err(serde::de::Error::custom)?,
        })
    }

    /// One limit of a limits object (`[]` and null mean none). A negative value is
    /// RabbitMQ's "no limit".
    fn limit(v: &Value, key: &str) -> Result<Option<u64>, String> {
        let obj = match v {
            Value::Object(m) => m,
            Value::Null => return Ok(None),
            Value::Array(a) if a.is_empty() => return Ok(None),
            other => return Err(format!("limits must be an object, got {other}")),
        };
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(n) if n.as_i64().is_some_and(|n| n < 0) => Ok(None),
            Some(n) => n.as_u64().map(Some).ok_or_else(|| format!("limit '{key}' must be an integer, got {n}")),
        }
    }
}
