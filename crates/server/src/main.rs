//! `warren`: run the broker.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use server::{Config, ServerState};
use tracing::info;

/// mimalloc instead of the system allocator: with large messages the read buffers (up to
/// 1 MiB, freed when the last message sliced from them is acked) churn quickly, and
/// glibc returned their pages to the kernel (madvise) only to fault them back in on the
/// next allocation, about a fifth of the broker's CPU time at 64 KiB messages.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "warren", version, about = "Warren: an AMQP 0-9-1 message broker compatible with RabbitMQ clients")]
struct Args {
    /// AMQP port to listen on.
    #[arg(long, default_value_t = 5672)]
    amqp_port: u16,
    /// Address to listen on (default: all interfaces, IPv4 and IPv6).
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Directory for durable data.
    #[arg(long, default_value = "./warren-data")]
    data_dir: PathBuf,
    /// Heartbeat interval offered to clients, in seconds (0 disables).
    #[arg(long, default_value_t = 60)]
    heartbeat: u16,
    /// Consumer timeout in ms for queues without x-consumer-timeout (default: off).
    /// A consumer holding a delivery longer is cancelled and its messages requeued.
    #[arg(long)]
    consumer_timeout: Option<u64>,
    /// Memory alarm threshold in bytes of RSS (default: 0.6 of the machine's RAM).
    #[arg(long)]
    memory_high_watermark: Option<u64>,
    /// Disk alarm: free bytes under the data dir below this block publishers (default 50 MB).
    #[arg(long, default_value_t = 50_000_000)]
    disk_free_limit: u64,
    /// Bytes of ready messages each queue keeps in RAM before paging to disk.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    queue_ram_budget: u64,
    /// File descriptors kept free for queue files: new connections are refused when
    /// fewer would remain under the open-file limit (capped at a quarter of the limit).
    #[arg(long, default_value_t = 256, value_name = "N")]
    fd_reserve: u64,
    /// Queue files the store keeps open at most (others are opened on demand); capped at a
    /// quarter of the open-file limit.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    store_open_files_max: usize,
    /// Connections accepted at once; connection.open beyond it is refused with 530
    /// (default: no limit, as RabbitMQ).
    #[arg(long)]
    connection_max: Option<usize>,
    /// Highest channel number (and channel count) offered to clients in connection.tune.
    #[arg(long, default_value_t = 2047)]
    channel_max: u16,
    /// Largest argument table (bytes) of a declare, bind or consume; larger ones get 406.
    #[arg(long, default_value_t = 64 * 1024)]
    max_arguments_table_bytes: usize,
    /// Largest message body accepted, in bytes (larger ones get 406).
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    max_message_size_bytes: u64,
    /// Bytes waiting to be sent to one client above which the server stops reading its
    /// requests until it reads its replies.
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    outbox_max_bytes: usize,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

/// mimalloc reads its options from the environment when the process starts. With its
/// built-in settings, memory freed while the broker is quiet (say, a backlog purged while
/// publishers are blocked by the memory alarm) could stay resident indefinitely, so the
/// RSS-based alarm never cleared; with `purge_delay` given explicitly it is returned
/// within milliseconds (see `it::reliability::memory_alarm_clears_once_memory_is_freed`).
/// Setting the variable from inside the process would need `unsafe` (`std::env::set_var`),
/// which the workspace forbids, so the binary re-executes itself once with it set. An
/// operator's own `MIMALLOC_*` settings are left alone.
fn set_allocator_options() {
    use std::os::unix::process::CommandExt;
    const OPTION: &str = "MIMALLOC_PURGE_DELAY";
    if std::env::var_os(OPTION).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    // exec returns only if it failed: run on with the allocator's defaults.
    let err = cmd.args(args).env(OPTION, "10").exec();
    eprintln!("warren: could not re-execute with {OPTION} set ({err}); continuing without it");
}

fn main() -> anyhow::Result<()> {
    set_allocator_options();
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WARREN_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let nofile = server::fds::raise_nofile_limit();
    info!(limit = nofile, "open-file limit");
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.threads {
        rt.worker_threads(n);
    }
    let rt = rt.build()?;
    rt.block_on(async move {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
        let config = Config {
            heartbeat_secs: args.heartbeat,
            data_dir: args.data_dir.clone(),
            consumer_timeout: args.consumer_timeout.map(std::time::Duration::from_millis),
            memory_high_watermark_bytes: args.memory_high_watermark,
            disk_free_limit_bytes: args.disk_free_limit,
            queue_ram_budget_bytes: args.queue_ram_budget,
            fd_reserve_count: args.fd_reserve,
            // At most a quarter of the descriptors: connections keep at least half.
            store_open_files_max: args.store_open_files_max.min(usize::try_from(nofile / 4).unwrap_or(usize::MAX)),
            connection_max: args.connection_max,
            channel_max: args.channel_max,
            max_arguments_table_bytes: args.max_arguments_table_bytes,
            max_message_size_bytes: args.max_message_size_bytes,
            outbox_max_bytes: args.outbox_max_bytes,
            ..Config::default()
        };
        let (tx, rx) = tokio::sync::watch::channel(false);
        let state =
            ServerState::open(config, rx).with_context(|| format!("opening data dir {}", args.data_dir.display()))?;
        let listeners = server::bind_listeners(args.bind, args.amqp_port)
            .with_context(|| format!("binding AMQP port {}", args.amqp_port))?;
        info!(data_dir = %args.data_dir.display(), "Warren {} starting", env!("CARGO_PKG_VERSION"));
        let serving = tokio::spawn(server::serve(listeners, state));
        wait_for_signal().await;
        info!("signal received, shutting down");
        let _ = tx.send(true);
        let _ = serving.await;
        info!("stopped");
        anyhow::Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
