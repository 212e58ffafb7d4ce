//! The definitions log: durable exchanges, queues and bindings as opaque records (the
//! server encodes them), appended and fsynced before the client hears declare-ok. At
//! start it is replayed, then rewritten compacted (write a new file, fsync, rename, fsync
//! the directory), so it never grows beyond the live definitions plus what came since.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use tracing::warn;

use crate::Error;
use crate::record::{self, Decoded};

pub struct DefinitionsLog {
    file: File,
}

impl DefinitionsLog {
    /// Read every valid record of `path` (a torn tail is cut off with a log line), then
    /// rewrite the file to hold `compact(records)` and open it for appending.
    pub fn open(path: &Path, compact: impl FnOnce(Vec<Vec<u8>>) -> Vec<Vec<u8>>) -> Result<DefinitionsLog, Error> {
        let records = match fs::read(path) {
            Ok(b) => parse(path, &b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let live = compact(records);
        let tmp = path.with_extension("tmp");
        {
            let mut f = File::create(&tmp)?;
            let mut buf = Vec::new();
            for r in &live {
                record::encode(&mut buf, r);
            }
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(DefinitionsLog { file })
    }

    /// Append one record and fsync it.
    pub fn append(&mut self, payload: &[u8]) -> Result<(), Error> {
        let mut buf = Vec::with_capacity(payload.len() + record::HEADER_BYTES);
        record::encode(&mut buf, payload);
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        Ok(())
    }
}

/// The valid records of a definitions file. Anything after the first invalid record is
/// reported and dropped: definitions are only ever appended, so that can only be a torn
/// final write or damage, and a wrong definition must never be applied.
pub fn parse(path: &Path, b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        match record::decode(&b[at..]) {
            Decoded::Record(p, n) => {
                out.push(p.to_vec());
                at += n;
            }
            Decoded::Incomplete => {
                warn!("{}: torn record at offset {at}, cut off ({} bytes)", path.display(), b.len() - at);
                break;
            }
            Decoded::Corrupt(why) => {
                warn!("{}: {why} at offset {at}; ignoring the rest ({} bytes)", path.display(), b.len() - at);
                break;
            }
        }
    }
    out
}
