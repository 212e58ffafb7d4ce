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
    /// Queues the node holds at most (RabbitMQ's cluster_queue_limit); 406 beyond.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    queue_max: usize,
    /// Exchanges the node holds at most (besides the predeclared ones); 406 beyond.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    exchange_max: usize,
    /// Bindings the node holds at most; 406 beyond.
    #[arg(long, default_value_t = 5_000_000, value_name = "N")]
    binding_max: usize,
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

/// Give freed memory back to the system now. mimalloc returns freed pages lazily (v3: a
/// second later, and only when the allocator next runs in that arena), so memory freed
/// while the broker is quiet — say a backlog purged while publishers are blocked by the
/// memory alarm — could stay resident, and the RSS-based alarm would never clear
/// (`it::reliability::memory_alarm_clears_once_memory_is_freed`). The housekeeping calls
/// this once a second. Purging eagerly on every free instead (a short `purge_delay`) cost
/// about a third of the 64 KiB-message throughput in page churn; once a second costs
/// nothing measurable.
#[allow(unsafe_code)]
fn release_free_memory() {
    // SAFETY: mi_collect only walks and trims the allocator's own structures; it has no
    // preconditions and may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    server::alarms::set_release_memory(release_free_memory);
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
            queue_max_count: args.queue_max,
            exchange_max_count: args.exchange_max,
            binding_max_count: args.binding_max,
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
