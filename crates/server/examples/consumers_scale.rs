//! Many consumers on one channel (issue 14: "20,000 consumers on one channel take 1.1 s
//! where 5,000 take 0.1 s"): basic.consume N times on one queue over lapin against an
//! in-process server, pipelined (nowait) and synced by one queue.declare at the end; then
//! the channel.close that removes them all.
//!
//! `cargo run --release -p server --example consumers_scale -- [n ...]` (default 5000 20000)

use std::time::Instant;

use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use server::{Config, ServerState};
use tokio::sync::watch;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut counts: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    if counts.is_empty() {
        counts = vec![5_000, 20_000];
    }
    let (_stop, rx) = watch::channel(false);
    let state = ServerState::new(Config::default(), rx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let uri = format!("amqp://guest:guest@{}/%2f", listener.local_addr().expect("local addr"));
    tokio::spawn(server::serve(vec![listener], state));
    for n in counts {
        let conn = Connection::connect(&uri, ConnectionProperties::default()).await.expect("connect");
        let ch = conn.create_channel().await.expect("channel.open");
        let q = format!("consumers-{n}");
        ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), FieldTable::default())
            .await
            .expect("queue.declare");
        // lapin cancels a consumer when its handle is dropped: keep them.
        let mut consumers = Vec::with_capacity(n);
        let started = Instant::now();
        for i in 0..n {
            let opts = BasicConsumeOptions { nowait: true, ..BasicConsumeOptions::default() };
            let c = ch
                .basic_consume(q.as_str().into(), format!("c{i}").as_str().into(), opts, FieldTable::default())
                .await
                .expect("basic.consume");
            consumers.push(c);
        }
        let consumed = started.elapsed();
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let declared =
            ch.queue_declare(q.as_str().into(), passive, FieldTable::default()).await.expect("queue.declare");
        assert_eq!(declared.consumer_count() as usize, n, "every consumer registered");
        let started = Instant::now();
        ch.close(200, "OK".into()).await.expect("channel.close");
        let closed = started.elapsed();
        println!(
            "{n} consumers on one channel: consume {:.3} s, channel.close {:.3} s",
            consumed.as_secs_f64(),
            closed.as_secs_f64()
        );
        drop(consumers);
        let _ = conn.close(200, "OK".into()).await;
    }
}
