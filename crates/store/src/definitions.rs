//! The definitions log: durable exchanges, queues and bindings as opaque records (the
//! server encodes them), appended and fsynced before the client hears declare-ok. At
//! start it is replayed, then rewritten compacted (write a new file, fsync, rename, fsync
//! the directory), so it never grows beyond the live definitions plus what came since.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use tracing::{error, warn};

use crate::Error;
use crate::record::{self, Decoded};

pub struct DefinitionsLog {
    file: File,
    /// Bytes of the file that could not be read at open (damage, not a torn tail).
    damaged_bytes: usize,
}

impl DefinitionsLog {
    /// Read every valid record of `path`, then rewrite the file to hold
    /// `compact(records)` and open it for appending. A torn tail is cut off with a log
    /// line. Damage before the end (a record that fails its checksum with valid records
    /// after it) is skipped record by record, keeping everything readable on both sides,
    /// and the original file is kept beside the log (`definitions.log.damaged-<unix secs>`)
    /// for an operator before the compacted one replaces it.
    pub fn open(path: &Path, compact: impl FnOnce(Vec<Vec<u8>>) -> Vec<Vec<u8>>) -> Result<DefinitionsLog, Error> {
        let (parsed, original) = match fs::read(path) {
            Ok(b) => (read_records(path, &b), Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Parsed::default(), None),
            Err(e) => return Err(e.into()),
        };
        if parsed.damaged_bytes > 0
            && let Some(original) = original
        {
            let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let keep = path.with_extension(format!("log.damaged-{secs}"));
            let mut f = File::create(&keep)?;
            f.write_all(&original)?;
            f.sync_all()?;
            error!(
                "{}: {} damaged bytes skipped; every readable definition was kept; the original file is saved as {}",
                path.display(),
                parsed.damaged_bytes,
                keep.display()
            );
        }
        let live = compact(parsed.records);
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
        Ok(DefinitionsLog { file, damaged_bytes: parsed.damaged_bytes })
    }

    /// Whether damage (not just a torn tail) was found at open: recovery must then assume
    /// that definitions are missing, and delete nothing it cannot account for.
    pub fn was_damaged(&self) -> bool {
        self.damaged_bytes > 0
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

/// What a definitions file holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Every record that passed its checksum, in file order.
    pub records: Vec<Vec<u8>>,
    /// Bytes skipped because they were damaged (a torn final record is not damage).
    pub damaged_bytes: usize,
}

/// The valid records of a definitions file (see [`read_records`]).
pub fn parse(path: &Path, b: &[u8]) -> Vec<Vec<u8>> {
    read_records(path, b).records
}

/// Read a definitions file. Records are only ever appended, so an unreadable record at
/// the very end is a torn write and is cut off. An unreadable record with a readable
/// one after it is damage: it is skipped (the next record is found by scanning for a
/// position where a whole record passes its checksum) and counted, and reading goes on,
/// so one flipped byte costs one definition, not every definition after it.
pub fn read_records(path: &Path, b: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    let mut at = 0;
    while at < b.len() {
        match record::decode(&b[at..]) {
            Decoded::Record(p, n) => {
                out.records.push(p.to_vec());
                at += n;
            }
            bad => match next_record(b, at + 1) {
                Some(next) => {
                    error!(
                        "{}: unreadable record at offset {at} ({bad:?}); skipped {} bytes",
                        path.display(),
                        next - at
                    );
                    out.damaged_bytes += next - at;
                    at = next;
                }
                None => {
                    if let Decoded::Corrupt(why) = bad {
                        // The last record is there whole but wrong: damage, not a torn write.
                        error!("{}: {why} in the last record at offset {at}; skipped", path.display());
                        out.damaged_bytes += b.len() - at;
                    } else {
                        warn!("{}: torn record at offset {at}, cut off ({} bytes)", path.display(), b.len() - at);
                    }
                    break;
                }
            },
        }
    }
    out
}

/// The first offset from `from` on where a whole valid, non-empty record starts. (Eight
/// zero bytes frame a valid empty record — crc32c of nothing is 0 — and zeros are common
/// inside payloads; definitions are never empty, so empty records are no place to resume.)
fn next_record(b: &[u8], from: usize) -> Option<usize> {
    (from..b.len()).find(|&i| matches!(record::decode(&b[i..]), Decoded::Record(p, _) if !p.is_empty()))
}
