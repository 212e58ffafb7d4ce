//! The metadata state machine: applies opaque commands in log order.
//!
//! The broker will later put its definition records (`server::persist::Def`) in these commands;
//! this layer only keeps them, in order, with their log index. Applying is in memory; what
//! makes it durable is the persistent snapshot (`snapshot` in the data directory, replaced
//! atomically after an fsync) plus the fsynced log: on restart the state is the snapshot and
//! openraft re-applies the committed entries after it.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership};
use serde::{Deserialize, Serialize};

use crate::frame::{self, Decoded};
use crate::{Entry, Error, LogId, NodeId, TypeConfig};

const SNAPSHOT_FILE: &str = "snapshot";

/// The applied state: every command with its log index, in order.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Applied {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership<NodeId, openraft::BasicNode>,
    pub commands: Vec<(u64, Vec<u8>)>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

/// The state machine; clones share the state (a clone is the snapshot builder).
#[derive(Clone)]
pub struct StateMachine {
    dir: Arc<PathBuf>,
    applied: Arc<Mutex<Applied>>,
    current: Arc<Mutex<Option<SnapshotFile>>>,
}

impl StateMachine {
    /// Open the state machine in `dir`: the last snapshot, or empty.
    pub fn open(dir: &Path) -> Result<StateMachine, Error> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(SNAPSHOT_FILE);
        let (applied, current) = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Applied::default(), None),
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
                let applied = serde_json::from_slice(&file.data).map_err(|_| corrupt("undecodable snapshot data"))?;
                (applied, Some(file))
            }
        };
        Ok(StateMachine {
            dir: Arc::new(dir.to_owned()),
            applied: Arc::new(Mutex::new(applied)),
            current: Arc::new(Mutex::new(current)),
        })
    }

    /// A copy of the applied state (local: linearizable only after a read barrier).
    pub fn applied(&self) -> Applied {
        self.applied.lock().expect("state lock").clone()
    }

    /// Index of the last applied entry, 0 if none.
    pub fn applied_index(&self) -> u64 {
        self.applied.lock().expect("state lock").last_applied.map_or(0, |l| l.index)
    }

    /// Persist `file` as the current snapshot: temp file, fsync, rename, fsync the directory.
    async fn save(&self, file: SnapshotFile) -> std::io::Result<()> {
        let mut buf = Vec::new();
        frame::encode(&mut buf, &serde_json::to_vec(&file).map_err(std::io::Error::other)?);
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let tmp = dir.join("snapshot.tmp");
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
            std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
            std::fs::File::open(dir.as_path())?.sync_all()
        })
        .await
        .map_err(std::io::Error::other)??;
        *self.current.lock().expect("snapshot lock") = Some(file);
        Ok(())
    }
}

fn snapshot_of(file: &SnapshotFile) -> Snapshot<TypeConfig> {
    Snapshot { meta: file.meta.clone(), snapshot: Box::new(Cursor::new(file.data.clone())) }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (data, meta) = {
            let applied = self.applied.lock().expect("state lock");
            let data = serde_json::to_vec(&*applied).map_err(|e| StorageIOError::read_state_machine(&e))?;
            let id = applied.last_applied.map_or("none".to_owned(), |l| format!("{}-{}", l.leader_id.term, l.index));
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
                snapshot_id: id,
            };
            (data, meta)
        };
        let file = SnapshotFile { meta, data };
        let snapshot = snapshot_of(&file);
        self.save(file).await.map_err(|e| StorageIOError::write_snapshot(Some(snapshot.meta.signature()), &e))?;
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, openraft::BasicNode>), StorageError<NodeId>> {
        let a = self.applied.lock().expect("state lock");
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<u64>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut a = self.applied.lock().expect("state lock");
        let mut out = Vec::new();
        for e in entries {
            a.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(cmd) => a.commands.push((e.log_id.index, cmd)),
                EntryPayload::Membership(m) => a.membership = StoredMembership::new(Some(e.log_id), m),
            }
            out.push(e.log_id.index);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let applied: Applied =
            serde_json::from_slice(&data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        // Durable first: a crash right after must not come back with the older state.
        self.save(SnapshotFile { meta: meta.clone(), data })
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        *self.applied.lock().expect("state lock") = applied;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.current.lock().expect("snapshot lock").as_ref().map(snapshot_of))
    }
}
