//! The loopback ceiling: how many bytes per second this machine moves through a
//! producer → forwarder → consumer chain over 127.0.0.1 TCP when the "broker" does nothing
//! but read and write (no framing, no queue, no copy of its own). A broker on the same
//! cores as its load generator cannot beat this; it bounds the 64 KiB benchmark.
//!
//! ```sh
//! cargo run --release -p perf --example loopback_ceiling -- [write_bytes] [forwarder_read_bytes] [seconds]
//! # defaults: 65536 (one 64 KiB message per write) 1048576 10
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn arg(i: usize, default: usize) -> usize {
    std::env::args().nth(i).and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn main() -> std::io::Result<()> {
    let write_bytes = arg(1, 64 * 1024).max(1);
    let forward_read_bytes = arg(2, 1024 * 1024).max(1);
    let seconds = arg(3, 10) as u64;
    let inbound = TcpListener::bind("127.0.0.1:0")?;
    let outbound = TcpListener::bind("127.0.0.1:0")?;
    let (in_addr, out_addr) = (inbound.local_addr()?, outbound.local_addr()?);

    // The forwarder: one thread, read up to forward_read_bytes, write it all on.
    let forwarder = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut from, _) = inbound.accept()?;
        let (mut to, _) = outbound.accept()?;
        let mut buf = vec![0u8; forward_read_bytes];
        loop {
            match from.read(&mut buf)? {
                0 => return Ok(()),
                n => to.write_all(&buf[..n])?,
            }
        }
    });
    let mut producer = TcpStream::connect(in_addr)?;
    let mut consumer = TcpStream::connect(out_addr)?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let writer = std::thread::spawn(move || {
        let data = vec![0x5au8; write_bytes];
        while Instant::now() < deadline {
            if producer.write_all(&data).is_err() {
                break;
            }
        }
        // Dropping the socket ends the forwarder's read loop.
    });

    let mut buf = vec![0u8; 1024 * 1024];
    let start = Instant::now();
    let mut total = 0u64;
    loop {
        match consumer.read(&mut buf)? {
            0 => break,
            n => total += n as u64,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = writer.join();
    let _ = forwarder.join();
    println!(
        "{:.2} GB/s through the forwarder ({} B writes, {} B forwarder reads, {:.1} s)",
        total as f64 / secs / 1e9,
        write_bytes,
        forward_read_bytes,
        secs
    );
    Ok(())
}
