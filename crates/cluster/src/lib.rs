//! Warren clustering, first layer: one Raft group for the broker's metadata.
//!
//! # Layout
//! - [`codec`]: CBOR inside the frames; commands as byte strings.
//! - [`frame`]: crc32c-framed records, shared by the files and the wire.
//! - [`log_store`]: the Raft log and vote, fsynced before openraft is told they are durable.
//! - [`state_machine`]: hands committed commands, in log order, to an [`Applier`] (the
//!   broker's directory); persistent snapshots of the applier's content.
//! - [`transport`]: TCP between nodes — one connection per peer, framed and checksummed.
//! - [`handshake`]: the cookie every node of a cluster shares, and the challenge-response
//!   each inter-node connection runs before the transport reads a request on it (with both
//!   sides' wire-protocol versions and supported feature flags: [`Offer`]).
//! - [`group`]: [`Group`], one Raft group on this node (the metadata group, or a quorum
//!   queue's own) and the client operations on it: forwarding to its leader, reads.
//! - [`node`]: [`ClusterNode`], what the broker and `warrenctl` call: the transport, the
//!   metadata group, and the other groups this node runs.
//!
//! The consensus algorithm is openraft's (0.10 line); this crate supplies storage, network
//! and the node API around it. The broker starts a node when clustering is configured
//! (`server::clustering`), with its access directory as the applier.

pub mod codec;
pub mod frame;
pub mod group;
pub mod handshake;
pub mod log_store;
pub mod node;
pub mod state_machine;
pub mod transport;

use std::io::Cursor;

pub use codec::Command;
pub use group::{Group, GroupId};
pub use handshake::{Cookie, Offer, WIRE_VERSION, WIRE_VERSION_MIN};
pub use node::{ClusterNode, MemberStatus, NodeConfig, RaftStatus, Replication, Settles};
pub use state_machine::Applier;
pub use transport::LinkTls;

/// The metadata group's types (and every quorum queue group's): commands are opaque bytes,
/// the response is what the [`Applier`] returned for the command (empty for Raft's own
/// entries). What `openraft::declare_raft_types!` would write with these, except the
/// responder, which that macro cannot set: [`group::WriteResponder`].
#[derive(Debug, Clone, Copy, Default, Eq, PartialEq, Ord, PartialOrd)]
pub struct TypeConfig {}

impl openraft::RaftTypeConfig for TypeConfig {
    type D = Command;
    type R = Vec<u8>;
    type NodeId = u64;
    type Node = openraft::BasicNode;
    type Term = u64;
    type LeaderId = openraft::impls::leader_id_adv::LeaderId<Self::Term, Self::NodeId>;
    type Vote = openraft::impls::Vote<Self::LeaderId>;
    type Payload = openraft::EntryPayload<Self::D, Self::NodeId, Self::Node>;
    type Entry = openraft::Entry<<Self::LeaderId as openraft::vote::RaftLeaderId>::Committed, Self::Payload>;
    type Responder<T>
        = group::WriteResponder<T>
    where
        T: openraft::OptionalSend + 'static;
    type Batch<T>
        = openraft::impls::InlineBatch<T>
    where
        T: openraft::OptionalSend + 'static;
    type AsyncRuntime = openraft::impls::TokioRuntime;
    type ErrorSource = openraft::impls::BoxedErrorSource;
}

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig, state_machine::StateMachine>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type CommittedLeaderId = openraft::alias::CommittedLeaderIdOf<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, openraft::BasicNode>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// A snapshot's bytes, as the state machine and the transport hand them over.
pub type SnapshotData = Cursor<Vec<u8>>;

/// Errors of the cluster layer.
#[derive(Debug)]
pub enum Error {
    Io(std::io::Error),
    /// A file's bytes are damaged in a place a crash cannot explain.
    Corrupt {
        path: std::path::PathBuf,
        offset: u64,
        reason: &'static str,
    },
    /// A node name is not `NAME@HOST:PORT`.
    BadNodeName(String),
    /// This node is not the leader and the request was not forwarded (or could not be).
    NotLeader {
        leader: Option<String>,
    },
    /// No answer within the request's deadline (no quorum, or an election). A write that
    /// timed out may still be committed later: like `Indeterminate`, its outcome is unknown.
    Timeout,
    /// An error reported by openraft or by the peer a request was forwarded to.
    Raft(String),
    /// A command larger than `node::MAX_COMMAND_BYTES`.
    CommandTooLarge {
        bytes: usize,
        max: usize,
    },
    /// A write was forwarded to the leader and the link failed before its answer: it may or
    /// may not be committed. The caller decides whether retrying is safe (declares are).
    Indeterminate(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "i/o error: {e}"),
            Error::Corrupt { path, offset, reason } => {
                write!(f, "{} is corrupt at byte {offset}: {reason}", path.display())
            }
            Error::BadNodeName(n) => write!(f, "node name {n:?} is not NAME@HOST:PORT"),
            Error::NotLeader { leader: Some(l) } => write!(f, "not the leader; the leader is {l}"),
            Error::NotLeader { leader: None } => write!(f, "not the leader; no leader is known"),
            Error::Timeout => write!(f, "no leader answered in time (no quorum?)"),
            Error::Raft(e) => write!(f, "raft: {e}"),
            Error::CommandTooLarge { bytes, max } => write!(f, "command of {bytes} bytes exceeds {max}"),
            Error::Indeterminate(e) => write!(f, "outcome unknown, the leader did not answer: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

/// A node's Raft id: a stable 64-bit hash (FNV-1a) of its full name `NAME@HOST:PORT`.
///
/// openraft wants a `Copy` id; the name is what operators see and what `classic_config`
/// lists, so the id is derived from it rather than configured separately. A node that
/// changes its name or port is, like in RabbitMQ, a different node.
pub fn node_id(name: &str) -> NodeId {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    name.bytes().fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// Split `NAME@HOST:PORT` into its name and `HOST:PORT` socket address.
pub fn parse_node_name(name: &str) -> Result<(&str, &str), Error> {
    let bad = || Error::BadNodeName(name.to_owned());
    let (short, addr) = name.split_once('@').ok_or_else(bad)?;
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if short.is_empty() || host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok((short, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert_eq!(parse_node_name("rabbit@host1:25672").unwrap(), ("rabbit", "host1:25672"));
        assert!(parse_node_name("rabbit@host1").is_err());
        assert!(parse_node_name("host1:25672").is_err());
        assert!(parse_node_name("@h:1").is_err());
        assert_ne!(node_id("a@h:1"), node_id("a@h:2"));
        assert_eq!(node_id("a@h:1"), node_id("a@h:1"));
    }
}
