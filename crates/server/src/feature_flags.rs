//! Feature flags, as RabbitMQ has them: what this version of Warren can put in the cluster's
//! Raft log and snapshots, by name, so that nodes of different versions can run together
//! during a rolling upgrade.
//!
//! - Each node **supports** the flags of [`FLAGS`] (its version's registry); it announces
//!   them in every inter-node handshake (`cluster::Offer`).
//! - The cluster has a set of **enabled** flags, part of the replicated state
//!   (`clustering::Command::EnableFeatureFlags`, carried in snapshots). Flags are only ever
//!   enabled, never disabled. A cluster without the set yet (just formed, or upgraded from a
//!   version before flags) gets it from its leader once every member has answered: the flags
//!   every member supports (`clustering::settle_feature_flags`).
//! - A command that a flag gates is proposed only once the flag is enabled: otherwise the
//!   proposer refuses it (AMQP 541, HTTP 503), so an older member never receives an entry it
//!   cannot read. A node that meets an entry or snapshot it cannot read, or one needing a flag
//!   it does not support, stops applying and exits (fail closed), never skips it.
//! - A node lacking an enabled flag is refused by `join_cluster`; enabling a flag asks every
//!   member first and is refused naming one that lacks it.
//!
//! The flags name what the clustered versions added after the first one (which replicated
//! the access directory only: that is the base every version has). See docs/cluster.md
//! ("Rolling upgrades and feature flags").

use std::collections::BTreeSet;
use std::sync::OnceLock;

/// One feature flag of this version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureFlag {
    pub name: &'static str,
    /// RabbitMQ's `desc`: what enabling it makes the cluster write.
    pub desc: &'static str,
    /// RabbitMQ's stability: `stable` (enabled by `enable_feature_flag all`), `experimental`
    /// or `required`.
    pub stability: &'static str,
}

/// Quorum queues in the log: `QuorumDeclare`, `QuorumDelete`, `Quorum` entries and a
/// snapshot's quorum queues.
pub const QUORUM_QUEUE: &str = "quorum_queue";
/// Bindings to quorum queues in the log: `QuorumBind`, `QuorumUnbind`.
pub const QUORUM_QUEUE_BINDINGS: &str = "quorum_queue_bindings";
/// Exchanges and exchange-to-exchange bindings in the log: `ExchangeDeclare`,
/// `ExchangeDelete`, `ExchangeBind`, `ExchangeUnbind` and a snapshot's `topology`.
pub const REPLICATED_TOPOLOGY: &str = "replicated_topology";
/// Snapshots written as CBOR (disabled: JSON, which every clustered version reads).
pub const CBOR_SNAPSHOTS: &str = "cbor_snapshots";
/// The cluster-wide directory of classic queues: `ClassicDeclare`, `ClassicDelete` and a
/// snapshot's `classic` (queues reachable from every node, forwarded to their home).
pub const CLASSIC_QUEUE_DIRECTORY: &str = "classic_queue_directory";
/// Quorum queues in Raft groups of their own (`QuorumDeclare` naming the group's voters,
/// the group's traffic as `Request::Group` between nodes); without it a quorum queue's
/// commands go through the metadata group, as before.
pub const QUORUM_QUEUE_GROUPS: &str = "quorum_queue_groups";

/// Quorum-queue entries in postcard (`clustering::encode_quorum`) instead of CBOR.
pub const COMPACT_QUORUM_ENTRIES: &str = "compact_quorum_entries";

/// What this version supports, in the order the features came.
pub const FLAGS: &[FeatureFlag] = &[
    FeatureFlag {
        name: QUORUM_QUEUE,
        desc: "Quorum queues (x-queue-type: quorum) replicated through the cluster's Raft log",
        stability: "stable",
    },
    FeatureFlag {
        name: QUORUM_QUEUE_BINDINGS,
        desc: "Bindings to quorum queues replicated through the cluster's Raft log",
        stability: "stable",
    },
    FeatureFlag {
        name: REPLICATED_TOPOLOGY,
        desc: "Exchanges and exchange-to-exchange bindings replicated through the cluster's Raft log",
        stability: "stable",
    },
    FeatureFlag {
        name: CBOR_SNAPSHOTS,
        desc: "Cluster snapshots in CBOR (message bodies as byte strings) instead of JSON",
        stability: "stable",
    },
    FeatureFlag {
        name: CLASSIC_QUEUE_DIRECTORY,
        desc: "Classic queues listed through the cluster's Raft log and reachable from every node",
        stability: "stable",
    },
    FeatureFlag {
        name: QUORUM_QUEUE_GROUPS,
        desc: "Each quorum queue in a Raft group of its own (x-quorum-initial-group-size voters, its own leader)",
        stability: "stable",
    },
    FeatureFlag {
        name: COMPACT_QUORUM_ENTRIES,
        desc: "Quorum-queue log entries in postcard (fields without names) instead of CBOR",
        stability: "stable",
    },
];

/// Test hook (read once, at start): the comma-separated flags this node claims to support
/// — fewer than [`FLAGS`] makes it behave as an older version would: it announces only
/// those, refuses to apply entries needing another, and a cluster it is in keeps the others
/// disabled. Empty: none. Unknown names refuse the start.
pub const TEST_FEATURES_ENV: &str = "WARREN_TEST_CLUSTER_FEATURES";
/// Test hook (read once, at start): the one inter-node wire-protocol version this node
/// claims to speak, instead of this build's range.
pub const TEST_WIRE_VERSION_ENV: &str = "WARREN_TEST_WIRE_VERSION";

/// What this node supports and speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Support {
    pub flags: BTreeSet<String>,
    pub wire_min: u32,
    pub wire_max: u32,
}

impl Default for Support {
    /// Everything this build has.
    fn default() -> Support {
        Support {
            flags: FLAGS.iter().map(|f| f.name.to_owned()).collect(),
            wire_min: cluster::WIRE_VERSION_MIN,
            wire_max: cluster::WIRE_VERSION,
        }
    }
}

static SUPPORT: OnceLock<Support> = OnceLock::new();

/// [`Support`] from the test hooks' values (None: unset).
pub fn support_from(features: Option<&str>, wire: Option<&str>) -> Result<Support, String> {
    let mut s = Support::default();
    if let Some(list) = features {
        let mut flags = BTreeSet::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !FLAGS.iter().any(|f| f.name == name) {
                return Err(format!("{TEST_FEATURES_ENV} names {name:?}, which is not a feature flag of this version"));
            }
            flags.insert(name.to_owned());
        }
        s.flags = flags;
    }
    if let Some(v) = wire {
        let v: u32 = v.trim().parse().map_err(|_| format!("{TEST_WIRE_VERSION_ENV}={v:?} is not a version number"))?;
        (s.wire_min, s.wire_max) = (v, v);
    }
    Ok(s)
}

/// Read the test hooks once, at start (later calls keep the first answer).
pub fn init_from_environment() -> Result<&'static Support, String> {
    let features = std::env::var(TEST_FEATURES_ENV).ok();
    let wire = std::env::var(TEST_WIRE_VERSION_ENV).ok();
    let s = support_from(features.as_deref(), wire.as_deref())?;
    if s != Support::default() {
        tracing::warn!(flags = ?s.flags, wire_min = s.wire_min, wire_max = s.wire_max,
            "test hook: this node claims to support fewer feature flags or other wire versions than it has");
    }
    Ok(SUPPORT.get_or_init(|| s))
}

/// What this node supports: [`init_from_environment`]'s answer, or everything (tests in
/// this crate, which never set the hooks).
pub fn support() -> &'static Support {
    SUPPORT.get_or_init(Support::default)
}

/// The registry entry of `name`.
pub fn flag(name: &str) -> Option<&'static FeatureFlag> {
    FLAGS.iter().find(|f| f.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hooks_restrict_what_a_node_supports_and_refuse_unknown_names() {
        assert_eq!(support_from(None, None).unwrap(), Support::default());
        assert_eq!(Support::default().flags.len(), FLAGS.len());
        let old = support_from(Some("quorum_queue, quorum_queue_bindings"), None).unwrap();
        assert_eq!(old.flags, BTreeSet::from([QUORUM_QUEUE.to_owned(), QUORUM_QUEUE_BINDINGS.to_owned()]));
        assert!(support_from(Some(""), None).unwrap().flags.is_empty());
        let e = support_from(Some("quorum_queue,warp_drive"), None).unwrap_err();
        assert!(e.contains("\"warp_drive\""), "{e}");
        let w = support_from(None, Some("7")).unwrap();
        assert_eq!((w.wire_min, w.wire_max), (7, 7));
        assert!(support_from(None, Some("seven")).is_err());
        // Every name fits what a handshake carries.
        assert!(FLAGS.len() <= cluster::handshake::OFFER_FEATURES_MAX);
        assert!(FLAGS.iter().all(|f| f.name.len() <= cluster::handshake::OFFER_FEATURE_NAME_MAX_BYTES));
    }
}
