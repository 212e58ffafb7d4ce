//! `warren-tasks`: run a Rust Celery worker, or send one task from the command line.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{Map, Value};
use warren_tasks::canvas::Signature;
use warren_tasks::client::{Client, SendOptions};
use warren_tasks::worker::{self, WorkerConfig};
use warren_tasks::{Registry, demo};

/// mimalloc: every delivery allocates its decoded headers, arguments and result (malloc
/// and free were a quarter of the worker's CPU time on no-op tasks with glibc's allocator).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[derive(Parser)]
#[command(name = "warren-tasks", about = "Celery protocol v2 tasks in Rust: worker and client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume task queues and run the registered tasks.
    Worker {
        #[arg(long, default_value = DEFAULT_BROKER)]
        broker: String,
        /// Queues to consume, comma-separated.
        #[arg(short = 'Q', long = "queues", value_delimiter = ',', default_value = "celery")]
        queues: Vec<String>,
        /// Tasks running at once (also the prefetch count).
        #[arg(short = 'c', long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
        concurrency: u16,
        /// Seconds running tasks get to finish after SIGINT/SIGTERM.
        #[arg(long, default_value_t = 30.0)]
        grace: f64,
        /// Register the demo.* tasks.
        #[arg(long)]
        demo: bool,
        /// Send Celery's monitoring events (celeryev: task-*, worker-heartbeat), for Flower.
        #[arg(short = 'E', long = "events")]
        events: bool,
        /// Seconds between lease extensions of a running task (Warren's amq.warren.lease),
        /// so the broker's consumer timeout does not fire; keep it below half of that
        /// timeout. 0: never extend.
        #[arg(long, default_value_t = 60.0)]
        lease_interval: f64,
        /// Runtime threads for the tasks: 0 (default) runs them all on one thread, the
        /// fastest for short I/O-bound tasks; N > 0, a multi-thread runtime of N threads, for
        /// tasks that compute.
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Send one task; with --wait, print its result as JSON.
    Call {
        name: String,
        #[arg(long, default_value = DEFAULT_BROKER)]
        broker: String,
        /// Positional arguments, a JSON array.
        #[arg(long, default_value = "[]")]
        args: String,
        /// Keyword arguments, a JSON object.
        #[arg(long, default_value = "{}")]
        kwargs: String,
        #[arg(long, default_value = "celery")]
        queue: String,
        /// Wait this many seconds for the result (without it, print the task id and exit).
        #[arg(long)]
        wait: Option<f64>,
        /// Run the task no earlier than this many seconds from now (eta).
        #[arg(long)]
        countdown: Option<f64>,
    },
    /// Send a chain: each SIG gets the previous result as its first argument; with --wait,
    /// print the last one's result.
    Chain {
        /// Signatures as JSON: {"task": "demo.add", "args": [1, 2], "kwargs": {}, "options": {"queue": "q"}}
        #[arg(required = true)]
        sigs: Vec<String>,
        #[command(flatten)]
        common: CanvasArgs,
    },
    /// Send a group; with --wait, print the list of results in order.
    Group {
        #[arg(required = true)]
        sigs: Vec<String>,
        #[command(flatten)]
        common: CanvasArgs,
    },
    /// Send a chord: the header SIGs run as a group, then --body gets their results (a list,
    /// in order) as its first argument; with --wait, print the body's result.
    Chord {
        #[arg(required = true)]
        sigs: Vec<String>,
        #[arg(long)]
        body: String,
        #[command(flatten)]
        common: CanvasArgs,
    },
}

#[derive(clap::Args)]
struct CanvasArgs {
    #[arg(long, default_value = DEFAULT_BROKER)]
    broker: String,
    /// The queue of the signatures without a "queue" option.
    #[arg(long, default_value = "celery")]
    queue: String,
    /// Wait this many seconds for the result (without it, print the task ids and exit).
    #[arg(long)]
    wait: Option<f64>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    // One thread by default (besides lapin's I/O thread): for short tasks, waking other
    // runtime threads cost more than the tasks (a no-op task took half the CPU time on one
    // thread that it took on the default multi-thread runtime, docs/benchmarks.md).
    let threads = match &cli.command {
        Command::Worker { threads, .. } => *threads,
        _ => 0,
    };
    let rt = match threads {
        0 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    }
    .expect("tokio runtime");
    rt.block_on(async move {
        match cli.command {
            Command::Worker { broker, queues, concurrency, grace, demo: with_demo, events, lease_interval, .. } => {
                let mut registry = Registry::new();
                if with_demo {
                    demo::register(&mut registry);
                }
                let config = WorkerConfig {
                    broker,
                    queues,
                    concurrency,
                    grace: Duration::try_from_secs_f64(grace).unwrap_or(Duration::ZERO),
                    events,
                    lease_interval: Duration::try_from_secs_f64(lease_interval).ok().filter(|d| !d.is_zero()),
                };
                match worker::run(config, Arc::new(registry), shutdown_signal()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Command::Call { name, broker, args, kwargs, queue, wait, countdown } => {
                let options = SendOptions { queue, countdown, reply: wait.is_some() };
                call(&name, &broker, &args, &kwargs, options, wait).await
            }
            Command::Chain { sigs, common } => canvas(Canvas::Chain, &sigs, None, common).await,
            Command::Group { sigs, common } => canvas(Canvas::Group, &sigs, None, common).await,
            Command::Chord { sigs, body, common } => canvas(Canvas::Chord, &sigs, Some(&body), common).await,
        }
    })
}

async fn call(name: &str, broker: &str, args: &str, kwargs: &str, options: SendOptions, wait: Option<f64>) -> ExitCode {
    let args: Vec<Value> = match serde_json::from_str(args) {
        Ok(a) => a,
        Err(e) => return usage(format!("--args must be a JSON array: {e}")),
    };
    let kwargs: Map<String, Value> = match serde_json::from_str(kwargs) {
        Ok(k) => k,
        Err(e) => return usage(format!("--kwargs must be a JSON object: {e}")),
    };
    let timeout = match wait.map(Duration::try_from_secs_f64).transpose() {
        Ok(t) => t,
        Err(e) => return usage(format!("--wait: {e}")),
    };
    let mut client = match Client::connect(broker).await {
        Ok(c) => c,
        Err(e) => return fail(format!("error: {e}")),
    };
    let id = match client.send_task(name, args, kwargs, &options).await {
        Ok(id) => id,
        Err(e) => return fail(format!("error: {e}")),
    };
    let Some(timeout) = timeout else {
        println!("{id}");
        return ExitCode::SUCCESS;
    };
    let result = match client.wait(&id, timeout).await {
        Ok(r) => r,
        Err(e) => return fail(format!("error: task {id}: {e}")),
    };
    let _ = client.close().await;
    report(&result)
}

#[derive(Clone, Copy, PartialEq)]
enum Canvas {
    Chain,
    Group,
    Chord,
}

async fn canvas(kind: Canvas, sigs: &[String], body: Option<&str>, common: CanvasArgs) -> ExitCode {
    let parse = |s: &str| -> Result<Signature, String> {
        let v: Value = serde_json::from_str(s).map_err(|e| format!("a signature must be JSON: {e}: {s}"))?;
        Signature::from_json(&v)
    };
    let sigs = match sigs.iter().map(|s| parse(s)).collect::<Result<Vec<_>, _>>() {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    let body = match body.map(parse).transpose() {
        Ok(b) => b,
        Err(e) => return usage(e),
    };
    let timeout = match common.wait.map(Duration::try_from_secs_f64).transpose() {
        Ok(t) => t,
        Err(e) => return usage(format!("--wait: {e}")),
    };
    let mut client = match Client::connect(&common.broker).await {
        Ok(c) => c,
        Err(e) => return fail(format!("error: {e}")),
    };
    let builder = match (kind, body) {
        (Canvas::Chain, _) => client.chain(sigs),
        (Canvas::Group, _) => client.group(sigs),
        (Canvas::Chord, Some(body)) => client.chord(sigs, body),
        (Canvas::Chord, None) => return usage("a chord needs --body".to_owned()),
    };
    let sent = match builder.queue(&common.queue).send().await {
        Ok(s) => s,
        Err(e) => return fail(format!("error: {e}")),
    };
    let Some(timeout) = timeout else {
        for id in &sent.ids {
            println!("{id}");
        }
        return ExitCode::SUCCESS;
    };
    let results = match sent.get(timeout).await {
        Ok(r) => r,
        Err(e) => return fail(format!("error: {e}")),
    };
    let _ = client.close().await;
    if kind != Canvas::Group {
        return report(&results[0]);
    }
    if let Some(failed) = results.iter().find(|r| r.status != "SUCCESS") {
        return report(failed);
    }
    println!("{}", Value::Array(results.into_iter().map(|r| r.result).collect()));
    ExitCode::SUCCESS
}

/// Prints a final result: the value as JSON on stdout (exit 0), or the error on stderr (1).
fn report(result: &warren_tasks::protocol::ResultMessage) -> ExitCode {
    let id = &result.task_id;
    match (result.status.as_str(), result.exception()) {
        ("SUCCESS", _) => {
            println!("{}", result.result);
            ExitCode::SUCCESS
        }
        (_, Some(exc)) => {
            if let Some(tb) = &result.traceback {
                eprint!("{tb}");
            }
            fail(format!("{}: {}", exc.exc_type, exc.message()))
        }
        (status, None) => fail(format!("task {id} ended {status}: {}", result.result)),
    }
}

fn usage(msg: String) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

fn fail(msg: String) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::FAILURE
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received");
}
