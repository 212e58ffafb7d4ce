//! The metadata state machine: hands committed commands, in log order, to an [`Applier`].
//!
//! The applier (the broker's access directory; a recorder in the tests) *is* the state: this
//! layer keeps only the last applied log id and the membership, and a snapshot is the
//! applier's own serialisation of its content (not a list of commands), saved in the data
//! directory (`snapshot`, replaced atomically after an fsync). On restart the state is
//! whichever is newer: the applier's own durable state ([`Applier::durable_index`]; the
//! broker's definitions log records the index of every entry it applied) or the snapshot,
//! which is then handed to [`Applier::restore`]; openraft re-applies the committed entries
//! after that point.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::{Stream, StreamExt};
use openraft::alias::{SnapshotMetaOf, SnapshotOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use crate::frame::{self, Decoded};
use crate::log_store::LogStore;
use crate::{Error, LogId, SnapshotData, StoredMembership, TypeConfig};

const SNAPSHOT_FILE: &str = "snapshot";

/// What the replicated state is: committed commands are applied to it in log order, on
/// every node. Calls are serialised (never two at once) and must be deterministic: the same
/// commands on the same state give the same state and the same results on every node.
pub trait Applier: Send + Sync + 'static {
    /// Apply the committed command at log `index`; the bytes returned go back to the
    /// proposer (e.g. "refused: user does not exist" — a refusal is a result, not an error:
    /// every node refuses the same way). An error is for a command this node cannot apply
    /// at all (one it cannot decode, written by a newer version, or needing a feature it
    /// lacks): skipping it would make this node diverge from the others, so the state
    /// machine stops there — nothing after it is applied, and openraft stops this node's
    /// Raft core (fail closed; the broker exits).
    fn apply(&self, index: u64, cmd: &[u8]) -> Result<Vec<u8>, String>;
    /// The whole state, serialised (what a far-behind or new node receives).
    fn snapshot(&self) -> Vec<u8>;
    /// Replace the whole state with `data` (from [`Applier::snapshot`], taken at log
    /// `index`). Empty `data` is the empty state: a node that is not the one forming the
    /// cluster is reset to it when it first starts (RabbitMQ resets a joining node).
    fn restore(&self, index: u64, data: &[u8]) -> Result<(), String>;
    /// The index of the last entry whose effect the applier's own durable storage holds
    /// (0: it keeps nothing, or has applied nothing): on restart the entries up to it are
    /// not applied again. An in-memory applier answers 0. Caution: under openraft 0.10 a
    /// leader may apply an entry before its own copy is on disk (the followers' copies
    /// make the majority), and a node that then crashes restarts with a log shorter than
    /// this index, which `StateMachine::open` refuses. The broker's applier answers 0 and
    /// skips, when applying, what its definitions log already holds.
    fn durable_index(&self) -> u64 {
        0
    }
    /// The feature flags the replicated state has enabled: a node that does not announce
    /// all of them in its handshake is not added as a member (it could not apply the log).
    fn required_features(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The applied position: last applied log id and the membership as of it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Applied {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    /// Serialised with an empty `snapshot_id` since openraft 0.10 (0.9 wrote one; it is
    /// read and ignored).
    meta: SnapshotMetaOf<TypeConfig>,
    /// One byte string (files of earlier versions hold a list of numbers, still read).
    #[serde(with = "crate::codec::bytes")]
    data: Vec<u8>,
}

/// The state machine; clones share the state (a clone is the snapshot builder).
#[derive(Clone)]
pub struct StateMachine {
    dir: Arc<PathBuf>,
    applier: Arc<dyn Applier>,
    /// Held while an entry is applied and while a snapshot is taken, so a snapshot's data
    /// and its log id always match.
    applied: Arc<Mutex<Applied>>,
    current: Arc<Mutex<Option<SnapshotFile>>>,
    /// Held while a snapshot is saved: openraft builds one in a task of its own while the
    /// state machine may install one from the leader, and both go through one temp file.
    saving: Arc<tokio::sync::Mutex<()>>,
}

impl StateMachine {
    /// Open the state machine in `dir` over `applier`: the applier's own durable state when
    /// it is at least as new as the last snapshot, else the snapshot restored into it.
    ///
    /// `fresh` (no Raft state on disk) with `reset` resets the applier to the empty state:
    /// its content did not come from this cluster's log.
    pub fn open(dir: &Path, applier: Arc<dyn Applier>, log: &LogStore, reset: bool) -> Result<StateMachine, Error> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(SNAPSHOT_FILE);
        let current: Option<SnapshotFile> = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
            Ok(buf) => {
                let corrupt = |reason| Error::Corrupt { path: path.clone(), offset: 0, reason };
                let file: SnapshotFile = match frame::decode(&buf) {
                    Decoded::Record(p, n) if n == buf.len() => {
                        serde_json::from_slice(p).map_err(|_| corrupt("undecodable snapshot"))?
                    }
                    Decoded::Corrupt { reason, .. } => return Err(corrupt(reason)),
                    _ => return Err(corrupt("snapshot file has the wrong length")),
                };
                Some(file)
            }
        };
        let snap_index = current.as_ref().and_then(|f| f.meta.last_log_id).map_or(0, |l| l.index);
        let durable = applier.durable_index();
        let fresh = current.is_none() && log.is_empty() && log.is_unvoted();
        let applied = if fresh {
            if reset {
                // Whatever the applier holds did not come from this group's log.
                applier.restore(0, &[]).map_err(Error::Raft)?;
            } else if durable > 0 {
                // The node forming the group keeps its content, counted from index 0 again.
                let own = applier.snapshot();
                applier.restore(0, &own).map_err(Error::Raft)?;
            }
            Applied::default()
        } else if durable > snap_index {
            // The applier is ahead of the snapshot: restoring would move it back (and a
            // vhost created since would be deleted with its queues, then created empty).
            let last_applied = log.log_id_at(durable).ok_or_else(|| {
                Error::Raft(format!(
                    "the broker applied raft entry {durable}, which the raft log in {} does not hold",
                    dir.display()
                ))
            })?;
            // The first entry (the initial membership) is at index 0.
            let first = if current.is_some() { snap_index + 1 } else { 0 };
            let membership = log
                .last_membership_in(first..=durable)
                .or_else(|| current.as_ref().map(|f| f.meta.last_membership.clone()))
                .unwrap_or_default();
            Applied { last_applied: Some(last_applied), membership }
        } else if let Some(file) = &current {
            if durable < snap_index {
                applier.restore(snap_index, &file.data).map_err(Error::Raft)?;
            }
            Applied { last_applied: file.meta.last_log_id, membership: file.meta.last_membership.clone() }
        } else {
            Applied::default()
        };
        Ok(StateMachine {
            dir: Arc::new(dir.to_owned()),
            applier,
            applied: Arc::new(Mutex::new(applied)),
            current: Arc::new(Mutex::new(current)),
            saving: Arc::default(),
        })
    }

    /// The applied position (local: linearizable only after a read barrier).
    pub fn applied(&self) -> Applied {
        self.applied.lock().expect("state lock").clone()
    }

    /// [`Applier::required_features`] of the applier.
    pub fn required_features(&self) -> Vec<String> {
        self.applier.required_features()
    }

    /// Index of the last applied entry, 0 if none.
    pub fn applied_index(&self) -> u64 {
        self.applied.lock().expect("state lock").last_applied.map_or(0, |l| l.index)
    }

    /// Persist `file` as the current snapshot: temp file, fsync, rename, fsync the directory.
    /// One save at a time; a snapshot older than the current one (built from what was
    /// applied before a newer one was installed) is not saved: neither the file nor
    /// `current` ever moves back (openraft ignores such a build too).
    async fn save(&self, file: SnapshotFile) -> std::io::Result<()> {
        let _saving = self.saving.lock().await;
        let newer = self.current.lock().expect("snapshot lock").as_ref().and_then(|c| c.meta.last_log_id);
        if newer > file.meta.last_log_id {
            return Ok(());
        }
        let mut buf = Vec::new();
        frame::encode(&mut buf, &serde_json::to_vec(&file).map_err(std::io::Error::other)?);
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || crate::log_store::replace_file(&dir, SNAPSHOT_FILE, &buf))
            .await
            .map_err(std::io::Error::other)??;
        *self.current.lock().expect("snapshot lock") = Some(file);
        Ok(())
    }
}

fn snapshot_of(file: &SnapshotFile) -> SnapshotOf<TypeConfig, SnapshotData> {
    SnapshotOf::<TypeConfig, SnapshotData> { meta: file.meta.clone(), snapshot: Cursor::new(file.data.clone()) }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> std::io::Result<SnapshotOf<TypeConfig, SnapshotData>> {
        let (data, meta) = {
            let applied = self.applied.lock().expect("state lock");
            let data = self.applier.snapshot();
            let meta = SnapshotMetaOf::<TypeConfig> {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
            };
            (data, meta)
        };
        let file = SnapshotFile { meta, data };
        let snapshot = snapshot_of(&file);
        self.save(file).await?;
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> std::io::Result<(Option<LogId>, StoredMembership)> {
        let a = self.applied.lock().expect("state lock");
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> std::io::Result<()>
    where
        Strm: Stream<Item = std::io::Result<EntryResponder<TypeConfig>>> + Unpin + Send,
    {
        while let Some(next) = entries.next().await {
            let (e, responder) = next?;
            let mut result = Vec::new();
            {
                let mut a = self.applied.lock().expect("state lock");
                match e.payload {
                    EntryPayload::Blank => {}
                    // An empty command is the read fence's blank entry (node.rs): nothing to apply.
                    EntryPayload::Normal(cmd) if cmd.0.is_empty() => {}
                    EntryPayload::Normal(cmd) => {
                        result = self.applier.apply(e.log_id.index, &cmd.0).map_err(|reason| {
                            tracing::error!(index = e.log_id.index, "raft entry not applied, stopping: {reason}");
                            std::io::Error::other(format!("raft entry {} not applied: {reason}", e.log_id.index))
                        })?;
                    }
                    EntryPayload::Membership(m) => a.membership = StoredMembership::new(Some(e.log_id), m),
                }
                a.last_applied = Some(e.log_id);
            }
            if let Some(r) = responder {
                r.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: SnapshotData,
    ) -> std::io::Result<()> {
        let data = snapshot.into_inner();
        // Durable first: a crash right after must not come back with the older state.
        self.save(SnapshotFile { meta: meta.clone(), data: data.clone() }).await?;
        let mut a = self.applied.lock().expect("state lock");
        let index = meta.last_log_id.map_or(0, |l| l.index);
        self.applier.restore(index, &data).map_err(std::io::Error::other)?;
        a.last_applied = meta.last_log_id;
        a.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> std::io::Result<Option<SnapshotOf<TypeConfig, SnapshotData>>> {
        Ok(self.current.lock().expect("snapshot lock").as_ref().map(snapshot_of))
    }
}

/// Snapshots still arrive in chunks (openraft-legacy's receiver assembles them), as under
/// openraft 0.9, so a node of that build can send one to this one.
impl openraft_legacy::network_v1::SnapshotReceiverFactory<TypeConfig> for StateMachine {
    type SnapshotReceiver = SnapshotData;

    async fn begin_receiving_snapshot(&mut self) -> std::io::Result<SnapshotData> {
        Ok(Cursor::new(Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CommittedLeaderId;
    use openraft::vote::RaftLeaderId;

    /// Rounds of a build racing an install: each round's two saves overlap on most runs.
    const RACES: u64 = 100;

    /// An applier whose whole state is the bytes it was last restored to.
    #[derive(Default)]
    struct Bytes(Mutex<Vec<u8>>);

    impl Applier for Bytes {
        fn apply(&self, _index: u64, cmd: &[u8]) -> Result<Vec<u8>, String> {
            self.0.lock().unwrap().extend_from_slice(cmd);
            Ok(Vec::new())
        }
        fn snapshot(&self) -> Vec<u8> {
            self.0.lock().unwrap().clone()
        }
        fn restore(&self, _index: u64, data: &[u8]) -> Result<(), String> {
            *self.0.lock().unwrap() = data.to_vec();
            Ok(())
        }
    }

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn current_index(sm: &StateMachine) -> Option<u64> {
        sm.current.lock().unwrap().as_ref().and_then(|f| f.meta.last_log_id).map(|l| l.index)
    }

    /// openraft builds a snapshot in a task of its own (`get_snapshot_builder`) while the
    /// state machine goes on, so a follower that builds one of its own log while the leader
    /// sends it a newer one saves both at once: neither save may fail (a storage error stops
    /// the node's Raft core for good), and the newer stays the current one, on disk too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_built_while_a_newer_one_is_installed_neither_fails_nor_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = LogStore::open(dir.path()).unwrap();
        let sm = StateMachine::open(dir.path(), Arc::new(Bytes::default()), &log, false).unwrap();
        for round in 1..=RACES {
            let (built, installed) = (2 * round - 1, 2 * round);
            sm.applied.lock().unwrap().last_applied = Some(log_id(built));
            let mut builder = sm.clone();
            let mut installer = sm.clone();
            let build = tokio::spawn(async move { builder.build_snapshot().await.map(drop) });
            let install = tokio::spawn(async move {
                let meta = SnapshotMetaOf::<TypeConfig> {
                    last_log_id: Some(log_id(installed)),
                    last_membership: StoredMembership::default(),
                };
                installer.install_snapshot(&meta, Cursor::new(installed.to_be_bytes().to_vec())).await
            });
            build.await.unwrap().unwrap_or_else(|e| panic!("round {round}: building: {e}"));
            install.await.unwrap().unwrap_or_else(|e| panic!("round {round}: installing: {e}"));
            assert_eq!(current_index(&sm), Some(installed), "round {round}: the current snapshot");
        }
        drop(sm);
        let applier = Arc::new(Bytes::default());
        let sm = StateMachine::open(dir.path(), applier.clone(), &log, false).unwrap();
        assert_eq!(sm.applied_index(), 2 * RACES, "the snapshot on disk is the newest");
        assert_eq!(applier.snapshot(), (2 * RACES).to_be_bytes());
    }
    /// The snapshot file the openraft 0.9 build wrote (a fixture written by it) opens in
    /// every later build: its log id and membership come back, and its data is restored
    /// into the applier.
    #[tokio::test]
    async fn opens_the_snapshot_the_openraft_0_9_build_wrote() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openraft-0.9/snapshot");
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(fixture.join(SNAPSHOT_FILE), dir.path().join(SNAPSHOT_FILE)).unwrap();
        let (log, _) = LogStore::open(dir.path()).unwrap();
        let applier = Arc::new(Bytes::default());
        let mut sm = StateMachine::open(dir.path(), applier.clone(), &log, false).unwrap();
        assert_eq!(applier.snapshot(), b"the applier's state");
        let applied = sm.applied();
        assert_eq!(applied.last_applied, Some(LogId::new(CommittedLeaderId::new(2, 22), 5)));
        assert_eq!(applied.membership.log_id(), &Some(LogId::new(CommittedLeaderId::new(2, 22), 4)));
        assert_eq!(applied.membership.voter_ids().collect::<Vec<_>>(), [11, 22]);
        let snap = sm.get_current_snapshot().await.unwrap().expect("the snapshot is current");
        assert_eq!(snap.snapshot.into_inner(), b"the applier's state");
    }
}
