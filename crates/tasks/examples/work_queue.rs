//! The work-queue tutorial's worker (docs/tasks.md, "Tutorial: a work queue"): RabbitMQ's
//! `worker.py`, as a Rust task. `tutorial.work(message)` takes one second per `.` in its
//! message, like the tutorial's callback, and returns the number of dots.
//!
//! ```sh
//! cargo run -q -p tasks --example work_queue -- [BROKER] [CONCURRENCY]
//! ```
//!
//! BROKER defaults to `amqp://guest:guest@127.0.0.1:5672/%2f`, CONCURRENCY (tasks at once,
//! which is also the prefetch count) to 1. It consumes the durable queue `task_queue`.

use std::sync::Arc;
use std::time::Duration;

use warren_tasks::Registry;
use warren_tasks::worker::{self, WorkerConfig};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let broker = args.next().unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let concurrency = args.next().map_or(1, |c| c.parse().expect("CONCURRENCY: a number from 1"));

    let mut registry = Registry::new();
    registry.register_named("tutorial.work", &["message"], |(message,): (String,)| async move {
        println!(" [x] Received {message:?}");
        let dots = message.matches('.').count();
        tokio::time::sleep(Duration::from_secs(dots as u64)).await;
        println!(" [x] Done");
        Ok(dots)
    });

    let mut config = WorkerConfig::new(&broker);
    config.queues = vec!["task_queue".to_owned()];
    config.concurrency = concurrency;
    println!(" [*] Waiting for messages. To exit press CTRL+C");
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Err(e) = worker::run(config, Arc::new(registry), stop).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
