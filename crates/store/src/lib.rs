//! Warren's durable storage. See `docs/storage.md` for the on-disk layout and the rules.
//!
//! - [`record`]: checksummed record framing shared by every file.
//! - [`segments`]: one queue's files: append-only segment files of message records, per-
//!   segment ack files, a sealed segment's meta file, and the delivered mark.
//! - [`disk_queue`]: [`DiskQueueStore`], the [`broker::store::MessageStore`] over those
//!   files, holding only the head of the queue in RAM.
//! - [`syncer`]: the group-commit thread: one fsync round serves every append that came
//!   in meanwhile, across all queues and connections.
//! - [`file_cache`]: the bounded set of open files every queue shares.
//! - [`definitions`]: the log of durable exchanges, queues and bindings.

pub mod definitions;
pub mod delayed;
pub mod disk_queue;
pub mod file_cache;
pub mod record;
pub mod segments;
pub mod syncer;

pub use disk_queue::{DiskQueueStore, StoreConfig};
pub use syncer::Syncer;

/// Errors of the storage layer.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    Io(std::io::Error),
    /// A record failed its checksum or framing where no torn tail is possible.
    Corrupt {
        file: std::path::PathBuf,
        offset: u64,
        reason: String,
    },
    /// An earlier write or fsync failed; the store takes no more writes it would have to
    /// confirm (see docs/reliability.md).
    Poisoned,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Corrupt { file, offset, reason } => {
                write!(f, "corrupt record in {} at offset {offset}: {reason}", file.display())
            }
            Error::Poisoned => f.write_str("an earlier write or fsync failed; the store refuses new writes"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}
