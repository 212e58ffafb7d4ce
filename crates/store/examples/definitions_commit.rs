//! The definitions log's two append paths, timed: a synchronous append (write + fsync
//! per record, what every declare did before the group commit) against grouped appends
//! (`append_grouped` + `sync_through`) from one and from several threads, each thread
//! waiting for its record before appending the next, as a client waits for declare-ok.
//!
//! `cargo run --release -p store --example definitions_commit -- [records] [threads] [dir]`

use std::time::Instant;

use store::definitions::DefinitionsLog;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5_000);
    let threads: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = args.get(3).map_or_else(|| tmp.path().to_owned(), std::path::PathBuf::from);
    std::fs::create_dir_all(&dir).expect("data dir");
    let record = vec![b'x'; 120];

    let path = dir.join("sync.log");
    let log = DefinitionsLog::open(&path, |r| r).expect("open");
    let t = Instant::now();
    for _ in 0..n {
        log.append(&record).expect("append");
    }
    report("synchronous append (fsync each), 1 thread", n, t);

    for k in [1, threads] {
        let path = dir.join(format!("grouped-{k}.log"));
        let log = DefinitionsLog::open(&path, |r| r).expect("open");
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..k {
                s.spawn(|| {
                    for _ in 0..n / k {
                        let seq = log.append_grouped(&record).expect("append");
                        log.sync_through(seq).expect("sync");
                    }
                });
            }
        });
        report(&format!("grouped append + sync_through, {k} thread(s)"), n / k * k, t);
    }
}

fn report(what: &str, n: usize, t: Instant) {
    let s = t.elapsed().as_secs_f64();
    println!("{what}: {n} records in {s:.3} s ({:.0}/s, {:.3} ms each)", n as f64 / s, s * 1e3 / n as f64);
}
