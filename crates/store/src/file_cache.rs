//! A bounded cache of open files, shared by every queue of a store. Queue files are
//! opened on demand and closed least-recently-used first, so the number of descriptors
//! the store holds does not grow with the number of queues, segments or priority levels
//! (it used to keep every segment, ack and delivered file of every queue open).
//!
//! A file someone still holds (an `Arc` handed out, e.g. for an fsync in progress) is
//! never closed by the cache: on Linux an fsync through a descriptor opened after a
//! writeback error may not report that error, so a file is synced through the descriptor
//! its bytes were written with.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

/// Default bound on the files the store keeps open.
pub const OPEN_FILES_MAX_DEFAULT: usize = 1024;

pub struct FileCache {
    max_open: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    files: HashMap<PathBuf, Entry>,
    /// Use counter: a larger tick was used more recently.
    tick: u64,
}

struct Entry {
    file: Arc<File>,
    used: u64,
}

impl FileCache {
    /// A cache keeping at most `max_open` files open (at least 8), beyond those still held.
    pub fn new(max_open: usize) -> FileCache {
        FileCache { max_open: max_open.max(8), inner: Mutex::new(Inner { files: HashMap::new(), tick: 0 }) }
    }

    /// The open file at `path`, opened read-write (created if missing) if it is not open.
    pub fn get(&self, path: &Path) -> std::io::Result<Arc<File>> {
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let tick = inner.tick;
        if let Some(e) = inner.files.get_mut(path) {
            e.used = tick;
            return Ok(e.file.clone());
        }
        if inner.files.len() >= self.max_open {
            self.evict(&mut inner);
        }
        let file = Arc::new(OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?);
        inner.files.insert(path.to_owned(), Entry { file: file.clone(), used: tick });
        Ok(file)
    }

    /// Close the least recently used eighth of the files nobody holds (in one pass, so a
    /// full cache pays O(log n) per miss, not a scan per open).
    fn evict(&self, inner: &mut Inner) {
        let mut idle: Vec<(u64, PathBuf)> = inner
            .files
            .iter()
            .filter(|(_, e)| Arc::strong_count(&e.file) == 1)
            .map(|(p, e)| (e.used, p.clone()))
            .collect();
        let n = (self.max_open / 8).max(1).min(idle.len());
        if n == 0 {
            return;
        }
        idle.select_nth_unstable(n - 1);
        for (_, p) in idle.into_iter().take(n) {
            inner.files.remove(&p);
        }
    }

    /// The file at `path` is being deleted: close it, so that a new file at the same path
    /// is not written through the old descriptor.
    pub fn forget(&self, path: &Path) {
        self.inner.lock().files.remove(path);
    }

    /// Everything under `dir` is being deleted.
    pub fn forget_dir(&self, dir: &Path) {
        self.inner.lock().files.retain(|p, _| !p.starts_with(dir));
    }

    /// Files open now.
    pub fn open_count(&self) -> usize {
        self.inner.lock().files.len()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::fs::FileExt;

    use super::*;

    #[test]
    fn bounded_and_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(16);
        for i in 0..100 {
            let f = cache.get(&dir.path().join(format!("{i}"))).unwrap();
            f.write_all_at(format!("file {i}").as_bytes(), 0).unwrap();
            assert!(cache.open_count() <= 16, "{} open", cache.open_count());
        }
        // Closed files reopen with their contents.
        let mut s = String::new();
        let f = cache.get(&dir.path().join("3")).unwrap();
        (&*f).read_to_string(&mut s).unwrap();
        assert_eq!(s, "file 3");
    }

    #[test]
    fn held_files_are_never_closed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(8);
        let held: Vec<_> = (0..20).map(|i| cache.get(&dir.path().join(format!("h{i}"))).unwrap()).collect();
        // All held: nothing can be closed, the cache grows past its bound rather than
        // close a file in use.
        assert_eq!(cache.open_count(), 20);
        let again = cache.get(&dir.path().join("h0")).unwrap();
        assert!(Arc::ptr_eq(&again, &held[0]), "the same descriptor");
        drop(held);
        drop(again);
        cache.get(&dir.path().join("new")).unwrap();
        assert!(cache.open_count() < 21);
    }

    #[test]
    fn forgotten_files_are_not_reused_for_a_new_file_at_the_same_path() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(8);
        let p = dir.path().join("seg");
        cache.get(&p).unwrap().write_all_at(b"old", 0).unwrap();
        std::fs::remove_file(&p).unwrap();
        cache.forget(&p);
        cache.get(&p).unwrap().write_all_at(b"new", 0).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    }
}
