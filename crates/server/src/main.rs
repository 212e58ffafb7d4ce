//! `warren`: run the broker.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use server::conf_file::{FileSettings, LogSettings};
use server::config::ListenAddr;
use server::tls::TlsAcceptor;
use server::{Config, Listener, ServerState};
use tracing::info;

/// mimalloc instead of the system allocator: with large messages the read buffers (up to
/// 1 MiB, freed when the last message sliced from them is acked) churn quickly, and
/// glibc returned their pages to the kernel (madvise) only to fault them back in on the
/// next allocation, about a fifth of the broker's CPU time at 64 KiB messages.
///
/// Wrapped to count the bytes handed out: the memory breakdown's `allocated` total, and
/// the memory alarm with `vm_memory_calculation_strategy = allocated`, which compares what
/// the broker really holds with the watermark, not RSS (which also holds pages the
/// allocator keeps for reuse).
#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

#[allow(unsafe_code)]
mod counting {
    use std::alloc::{GlobalAlloc, Layout};
    use std::cell::Cell;
    use std::sync::atomic::{AtomicI64, Ordering};

    use mimalloc::MiMalloc;

    /// Bytes allocated and not freed, as counted so far (each thread adds its share once
    /// it has changed by `FLUSH_BYTES`, so this is exact to within that per thread).
    static ALLOCATED: AtomicI64 = AtomicI64::new(0);
    const FLUSH_BYTES: i64 = 64 * 1024;

    thread_local! {
        // Const-initialised and without a destructor: no allocation, usable in here.
        static PENDING: Cell<i64> = const { Cell::new(0) };
    }

    #[inline]
    fn count(delta: i64) {
        let flush = PENDING.try_with(|p| {
            let v = p.get() + delta;
            if v.abs() >= FLUSH_BYTES {
                p.set(0);
                v
            } else {
                p.set(v);
                0
            }
        });
        match flush {
            Ok(0) => {}
            Ok(v) => {
                ALLOCATED.fetch_add(v, Ordering::Relaxed);
            }
            // The thread is exiting: count directly.
            Err(_) => {
                ALLOCATED.fetch_add(delta, Ordering::Relaxed);
            }
        }
    }

    pub fn allocated_bytes() -> u64 {
        ALLOCATED.load(Ordering::Relaxed).max(0) as u64
    }

    pub struct Counting;

    // SAFETY: every call is forwarded unchanged to mimalloc, which upholds GlobalAlloc's
    // contract; the counting around it touches only a thread-local and an atomic.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded with the caller's guarantees.
            let p = unsafe { MiMalloc.alloc(layout) };
            if !p.is_null() {
                count(layout.size() as i64);
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded with the caller's guarantees.
            let p = unsafe { MiMalloc.alloc_zeroed(layout) };
            if !p.is_null() {
                count(layout.size() as i64);
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { MiMalloc.dealloc(ptr, layout) };
            count(-(layout.size() as i64));
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: forwarded with the caller's guarantees.
            let p = unsafe { MiMalloc.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                count(new_size as i64 - layout.size() as i64);
            }
            p
        }
    }
}

/// Command-line flags. Those without a value here take it from the config file, else from
/// the default in brackets (see docs/configuration.md); a flag given wins over the file.
#[derive(Parser, Debug)]
#[command(name = "warren", version, about = "Warren: an AMQP 0-9-1 message broker compatible with RabbitMQ clients")]
struct Args {
    /// Config file in rabbitmq.conf syntax (default: $WARREN_CONFIG_FILE, else
    /// $RABBITMQ_CONFIG_FILE, else none).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// AMQP port to listen on [default: 5672]; replaces the file's listeners.tcp.*.
    #[arg(long)]
    amqp_port: Option<u16>,
    /// AMQPS (TLS) port to listen on [default: none]; replaces the file's listeners.ssl.*
    /// (certificates come from the file's ssl_options).
    #[arg(long)]
    amqps_port: Option<u16>,
    /// Address to listen on (default: all interfaces, IPv4 and IPv6); applies to every
    /// listener (AMQP, AMQPS, management).
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Management HTTP API port [default: 15672]; 0 turns the API off.
    #[arg(long)]
    management_port: Option<u16>,
    /// Prometheus metrics port [default: 15692]; 0 turns the metrics off.
    #[arg(long)]
    prometheus_port: Option<u16>,
    /// Directory for durable data [default: ./warren-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Heartbeat interval offered to clients, in seconds (0 disables) [default: 60].
    #[arg(long)]
    heartbeat: Option<u16>,
    /// Consumer timeout in ms for queues without x-consumer-timeout (default: off).
    /// A consumer holding a delivery longer is cancelled and its messages requeued.
    #[arg(long)]
    consumer_timeout: Option<u64>,
    /// Memory alarm threshold in bytes of RSS (default: 0.6 of the machine's RAM).
    #[arg(long)]
    memory_high_watermark: Option<u64>,
    /// Disk alarm: free bytes under the data dir below this block publishers
    /// [default: 50000000].
    #[arg(long)]
    disk_free_limit: Option<u64>,
    /// Bytes of ready messages each queue keeps in RAM before paging to disk
    /// [default: 8388608].
    #[arg(long)]
    queue_ram_budget: Option<u64>,
    /// File descriptors kept free for queue files: new connections are refused when
    /// fewer would remain under the open-file limit (capped at a quarter of the limit)
    /// [default: 256].
    #[arg(long, value_name = "N")]
    fd_reserve: Option<u64>,
    /// Queue files the store keeps open at most (others are opened on demand); capped at a
    /// quarter of the open-file limit [default: 1024].
    #[arg(long, value_name = "N")]
    store_open_files_max: Option<usize>,
    /// Queues the node holds at most (RabbitMQ's cluster_queue_limit); 406 beyond
    /// [default: 1000000].
    #[arg(long, value_name = "N")]
    queue_max: Option<usize>,
    /// Exchanges the node holds at most (besides the predeclared ones); 406 beyond
    /// [default: 1000000].
    #[arg(long, value_name = "N")]
    exchange_max: Option<usize>,
    /// Bindings the node holds at most; 406 beyond [default: 5000000].
    #[arg(long, value_name = "N")]
    binding_max: Option<usize>,
    /// Connections accepted at once; connection.open beyond it is refused with 530
    /// (default: no limit, as RabbitMQ).
    #[arg(long)]
    connection_max: Option<usize>,
    /// Highest channel number (and channel count) offered to clients in connection.tune
    /// [default: 2047].
    #[arg(long)]
    channel_max: Option<u16>,
    /// Largest argument table (bytes) of a declare, bind or consume; larger ones get 406
    /// [default: 65536].
    #[arg(long)]
    max_arguments_table_bytes: Option<usize>,
    /// Largest message body accepted, in bytes (larger ones get 406) [default: 16777216].
    #[arg(long)]
    max_message_size_bytes: Option<u64>,
    /// Bytes waiting to be sent to one client above which the server stops reading its
    /// requests until it reads its replies [default: 33554432].
    #[arg(long)]
    outbox_max_bytes: Option<usize>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// The node's name, NAME@HOST or NAME@HOST:PORT (default: $WARREN_NODENAME, else
    /// $RABBITMQ_NODENAME, else warren.node_name, else warren@<hostname>). In a cluster it
    /// selects the node's own entry of cluster_formation.classic_config.nodes.
    #[arg(long, value_name = "NAME@HOST[:PORT]")]
    node_name: Option<String>,
    /// Address the inter-node (cluster) listener binds, IP:PORT (default: the address of the
    /// node's own NAME@HOST:PORT entry).
    #[arg(long, value_name = "IP:PORT")]
    cluster_listen: Option<std::net::SocketAddr>,
    /// In a cluster: how long an access change (users, vhosts, permissions, policies,
    /// limits) waits for a leader and a quorum before it fails [default: 10000].
    #[arg(long, value_name = "MS")]
    cluster_write_timeout_ms: Option<u64>,
    /// In a cluster: Raft snapshot every this many applied entries [default: 10000].
    #[arg(long, value_name = "ENTRIES")]
    cluster_snapshot_every: Option<u64>,
    /// In a cluster: also a Raft snapshot whenever the log (kept in memory until one)
    /// holds more than this many bytes [default: 67108864].
    #[arg(long, value_name = "BYTES")]
    cluster_snapshot_log_bytes: Option<u64>,
    /// In a cluster: the owner-only file holding the cookie the nodes share, read when
    /// neither warren.cluster_cookie nor $RABBITMQ_ERLANG_COOKIE gives one (default:
    /// $HOME/.erlang.cookie, created when missing).
    #[arg(long, value_name = "FILE")]
    cluster_cookie_file: Option<PathBuf>,
}

impl Args {
    /// Flags given on the command line override the file's (or default) settings.
    fn apply(&self, c: &mut Config) -> anyhow::Result<()> {
        fn set<T: Clone>(flag: &Option<T>, slot: &mut T) {
            if let Some(v) = flag {
                *slot = v.clone();
            }
        }
        set(&self.data_dir, &mut c.data_dir);
        set(&self.heartbeat, &mut c.heartbeat_secs);
        set(&self.disk_free_limit, &mut c.disk_free_limit_bytes);
        set(&self.queue_ram_budget, &mut c.queue_ram_budget_bytes);
        set(&self.fd_reserve, &mut c.fd_reserve_count);
        set(&self.store_open_files_max, &mut c.store_open_files_max);
        set(&self.queue_max, &mut c.queue_max_count);
        set(&self.exchange_max, &mut c.exchange_max_count);
        set(&self.binding_max, &mut c.binding_max_count);
        set(&self.channel_max, &mut c.channel_max);
        set(&self.max_arguments_table_bytes, &mut c.max_arguments_table_bytes);
        set(&self.max_message_size_bytes, &mut c.max_message_size_bytes);
        set(&self.outbox_max_bytes, &mut c.outbox_max_bytes);
        if let Some(ms) = self.consumer_timeout {
            c.consumer_timeout = Some(std::time::Duration::from_millis(ms));
        }
        if self.memory_high_watermark.is_some() {
            c.memory_high_watermark_bytes = self.memory_high_watermark;
        }
        if self.connection_max.is_some() {
            c.connection_max = self.connection_max;
        }
        if let Some(port) = self.amqp_port {
            c.amqp_listeners = vec![ListenAddr { ip: None, port }];
        }
        if let Some(port) = self.amqps_port {
            anyhow::ensure!(
                c.tls.is_some(),
                "--amqps-port needs ssl_options.certfile and ssl_options.keyfile in the config file"
            );
            c.amqps_listeners = vec![ListenAddr { ip: None, port }];
        }
        if let Some(ip) = self.bind {
            for l in c.amqp_listeners.iter_mut().chain(c.amqps_listeners.iter_mut()) {
                l.ip = Some(ip);
            }
            c.management_ip = Some(ip);
            c.prometheus_ip = Some(ip);
        }
        set(&self.management_port, &mut c.management_port);
        set(&self.prometheus_port, &mut c.prometheus_port);
        if let Some(n) = &self.node_name {
            c.node_name = Some(server::conf_file::parse_node_name(n).map_err(|e| anyhow::anyhow!("--node-name: {e}"))?);
        }
        if self.cluster_listen.is_some() {
            c.cluster_listen = self.cluster_listen;
        }
        set(&self.cluster_write_timeout_ms.map(|t| t.max(1)), &mut c.cluster_write_timeout_ms);
        set(&self.cluster_snapshot_every.map(|n| n.max(1)), &mut c.cluster_snapshot_every_entries);
        set(&self.cluster_snapshot_log_bytes.map(|n| n.max(1)), &mut c.cluster_snapshot_log_bytes);
        if self.cluster_cookie_file.is_some() {
            c.cluster_cookie_file.clone_from(&self.cluster_cookie_file);
        }
        Ok(())
    }
}

/// The config file to read: --config, else $WARREN_CONFIG_FILE, else $RABBITMQ_CONFIG_FILE.
/// As RabbitMQ, a path without an extension means the `.conf` file of that name.
fn config_path(flag: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    let path = match flag {
        Some(p) => p.to_owned(),
        None => {
            let set = ["WARREN_CONFIG_FILE", "RABBITMQ_CONFIG_FILE"]
                .into_iter()
                .find_map(|v| std::env::var_os(v).filter(|p| !p.is_empty()));
            match set {
                Some(p) => PathBuf::from(p),
                None => return Ok(None),
            }
        }
    };
    if path.extension().is_some_and(|e| e == "config") {
        anyhow::bail!("{}: Erlang-term config files are not supported: use rabbitmq.conf syntax", path.display());
    }
    if path.extension().is_none() && !path.exists() {
        return Ok(Some(path.with_extension("conf")));
    }
    Ok(Some(path))
}

/// Settings: defaults, then the config file, then the environment, then the flags.
fn settings(args: &Args) -> anyhow::Result<FileSettings> {
    let mut s = match config_path(args.config.as_deref())? {
        Some(path) => server::conf_file::load(&path, server::alarms::total_memory_bytes())?,
        None => FileSettings { config: Config::default(), threads: None, log: LogSettings::default() },
    };
    let c = &mut s.config;
    for (var, slot) in [
        ("RABBITMQ_DEFAULT_USER", &mut c.default_user),
        ("RABBITMQ_DEFAULT_PASS", &mut c.default_pass),
        ("RABBITMQ_DEFAULT_VHOST", &mut c.default_vhost),
    ] {
        if let Ok(v) = std::env::var(var) {
            *slot = v;
        }
    }
    // RabbitMQ's RABBITMQ_NODENAME may omit the host: `@<hostname>` is added, as it does.
    if let Some((var, v)) = ["WARREN_NODENAME", "RABBITMQ_NODENAME"]
        .into_iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()).map(|v| (var, v)))
    {
        let v = if v.contains('@') { v } else { format!("{v}@{}", server::clustering::hostname()) };
        c.node_name = Some(server::conf_file::parse_node_name(&v).map_err(|e| anyhow::anyhow!("${var}: {e}"))?);
    }
    args.apply(c)?;
    if args.threads.is_some() {
        s.threads = args.threads;
    }
    Ok(s)
}

/// Console (stderr) and file logging as `log.*` says; $WARREN_LOG, when set, overrides
/// every level.
fn init_logging(log: &LogSettings) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::prelude::*;
    let env = std::env::var("WARREN_LOG").ok();
    let filter = |own: Option<&str>| {
        env.as_deref()
            .and_then(|e| EnvFilter::try_new(e).ok())
            .unwrap_or_else(|| EnvFilter::new(own.or(log.level).unwrap_or("info")))
    };
    let console = log.console.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter(log.console_level))
    });
    let file = match &log.file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening log.file {}", path.display()))?;
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::sync::Mutex::new(f))
                    .with_ansi(false)
                    .with_filter(filter(log.file_level)),
            )
        }
        None => None,
    };
    tracing_subscriber::registry().with(console).with(file).init();
    Ok(())
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

/// A cluster node runs without transparent huge pages unless `MIMALLOC_ALLOW_THP` (mimalloc's
/// own switch) says otherwise. Measured with `scripts/bench/quorum.sh` (docs/benchmarks.md):
/// with them, a 3-node quorum queue's p99 confirm latency was 23–30 ms at 1 producer and
/// 38–60 ms at 4; without, 6–11 and 22–36 ms, at the same throughput (a profile showed the
/// kernel zeroing whole 2 MiB pages in the Raft path's page faults while confirms waited).
/// A single node keeps them: without, its persistent and 64 KiB workloads measured about a
/// tenth slower.
fn without_huge_pages_unless_asked() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    match nix::sys::prctl::set_thp_disable(true) {
        Ok(()) => info!("transparent huge pages off for this cluster node (MIMALLOC_ALLOW_THP=1 keeps them)"),
        Err(e) => tracing::warn!("could not turn transparent huge pages off: {e}"),
    }
}

/// Errors (a bad config file, an unusable certificate, a port in use…) are one line on
/// stderr and exit status 1.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warren: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let FileSettings { mut config, threads, log } = settings(&args)?;
    // Certificates are checked before anything starts: a bad TLS setup is a startup error.
    let tls = config.tls.as_ref().map(TlsAcceptor::new).transpose()?;
    anyhow::ensure!(
        !config.amqp_listeners.is_empty() || !config.amqps_listeners.is_empty(),
        "no listeners: listeners.tcp = none and no listeners.ssl"
    );
    let node_name = server::clustering::node_name(&config);
    let cluster_plan = server::clustering::plan(&config, &node_name).map_err(|e| anyhow::anyhow!("cluster: {e}"))?;
    // The test hooks for mixed versions are read once, here.
    server::feature_flags::init_from_environment().map_err(|e| anyhow::anyhow!("cluster: {e}"))?;
    // Only a clustered node uses the inter-node TLS settings.
    let cluster_tls = match (&cluster_plan, &config.cluster_tls) {
        (Some(_), Some(files)) => Some(server::tls::cluster_link_tls(files)?),
        _ => None,
    };
    server::alarms::set_release_memory(release_free_memory);
    server::alarms::set_allocated_bytes(counting::allocated_bytes);
    init_logging(&log)?;
    if cluster_plan.is_some() {
        without_huge_pages_unless_asked();
    }
    let nofile = server::fds::raise_nofile_limit();
    info!(limit = nofile, "open-file limit");
    // At most a quarter of the descriptors: connections keep at least half.
    config.store_open_files_max = config.store_open_files_max.min(usize::try_from(nofile / 4).unwrap_or(usize::MAX));
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = threads {
        rt.worker_threads(n);
    }
    let rt = rt.build()?;
    rt.block_on(async move {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let state = ServerState::open(config.clone(), rx)
            .with_context(|| format!("opening data dir {}", data_dir.display()))?;
        // The node's Raft member: the access directory is replicated through it. Started
        // before the listeners, so a restarted node has caught up with its own log first.
        let cluster_node = match &cluster_plan {
            Some(plan) => {
                let (cookie, source) =
                    server::cluster_cookie::from_environment(&config).map_err(|e| anyhow::anyhow!("cluster: {e}"))?;
                server::clustering::start_quorum_queues(plan, &state);
                state.drop_unreplicated_quorum_queues();
                let running = server::clustering::start(plan, cookie, cluster_tls, &data_dir, &state)
                    .await
                    .map_err(anyhow::Error::msg)?;
                info!(
                    node = %plan.name,
                    listen = %plan.listen,
                    members = ?plan.nodes,
                    cookie = %source,
                    tls = config.cluster_tls.is_some(),
                    "cluster node started"
                );
                let node = running.node.clone();
                let _ = state.cluster.set(running);
                server::clustering::seed(&state);
                server::clustering::settle_feature_flags(&state);
                Some(node)
            }
            None => None,
        };
        let mut listeners: Vec<Listener> = server::bind_all(&config.amqp_listeners)
            .with_context(|| format!("binding AMQP listeners {:?}", config.amqp_listeners))?
            .into_iter()
            .map(Listener::plain)
            .collect();
        if let Some(tls) = &tls {
            let bound = server::bind_all(&config.amqps_listeners)
                .with_context(|| format!("binding AMQPS listeners {:?}", config.amqps_listeners))?;
            listeners.extend(bound.into_iter().map(|tcp| Listener { tcp, tls: Some(tls.clone()) }));
        }
        let mut infos: Vec<mgmt::node::ListenerInfo> = listeners
            .iter()
            .filter_map(|l| {
                let a = l.tcp.local_addr().ok()?;
                let protocol = if l.tls.is_some() { "amqp/ssl" } else { "amqp" };
                Some(mgmt::node::ListenerInfo {
                    protocol: protocol.into(),
                    ip_address: a.ip().to_string(),
                    port: a.port(),
                })
            })
            .collect();
        // The management API (RabbitMQ's management plugin is on by default; port 0: off).
        let management = if config.management_port != 0 {
            let ip = config.management_ip.unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
            let l = bind_http(ip, config.management_port)
                .with_context(|| format!("binding the management API on port {}", config.management_port))?;
            let a = l.local_addr()?;
            info!("management API on http://{a}/api/");
            infos.push(mgmt::node::ListenerInfo {
                protocol: "http".into(),
                ip_address: a.ip().to_string(),
                port: a.port(),
            });
            let mut stop = tx.subscribe();
            let node: std::sync::Arc<dyn mgmt::Node> = state.clone();
            Some(tokio::spawn(mgmt::serve(l, node, async move {
                let _ = stop.wait_for(|s| *s).await;
            })))
        } else {
            None
        };
        // Prometheus metrics (rabbitmq_prometheus is on by default too; port 0: off).
        let prometheus = if config.prometheus_port != 0 {
            let ip = config.prometheus_ip.unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
            let l = bind_http(ip, config.prometheus_port)
                .with_context(|| format!("binding Prometheus metrics on port {}", config.prometheus_port))?;
            let a = l.local_addr()?;
            info!("Prometheus metrics on http://{a}/metrics");
            infos.push(mgmt::node::ListenerInfo {
                protocol: "http/prometheus".into(),
                ip_address: a.ip().to_string(),
                port: a.port(),
            });
            let mut stop = tx.subscribe();
            let node: std::sync::Arc<dyn mgmt::Node> = state.clone();
            Some(tokio::spawn(mgmt::prometheus::serve(l, node, async move {
                let _ = stop.wait_for(|s| *s).await;
            })))
        } else {
            None
        };
        state.set_listeners(infos);
        // warrenctl's way in: the API on a Unix socket in the data dir, mode 0660 (whoever
        // may open it administers the node, as with lavinmqctl).
        let sock_path = data_dir.join("warren.sock");
        let _ = std::fs::remove_file(&sock_path);
        let sock = tokio::net::UnixListener::bind(&sock_path)
            .with_context(|| format!("binding the control socket {}", sock_path.display()))?;
        std::fs::set_permissions(&sock_path, std::os::unix::fs::PermissionsExt::from_mode(0o660))
            .with_context(|| format!("setting the mode of {}", sock_path.display()))?;
        let control = {
            let mut stop = tx.subscribe();
            let node: std::sync::Arc<dyn mgmt::Node> = state.clone();
            tokio::spawn(mgmt::serve_unix(sock, node, async move {
                let _ = stop.wait_for(|s| *s).await;
            }))
        };
        info!(data_dir = %data_dir.display(), "Warren {} starting", env!("CARGO_PKG_VERSION"));
        // A Raft entry this node cannot apply stops it (fail closed): shut down and exit 1.
        let mut fatal = state.fatal_error();
        let stopping = state.clone();
        let serving = tokio::spawn(server::serve_listeners(listeners, state));
        let failed = tokio::select! {
            _ = wait_for_signal() => None,
            r = fatal.wait_for(Option::is_some) => r.ok().and_then(|r| r.clone()),
        };
        match &failed {
            None => info!("signal received, shutting down"),
            Some(e) => tracing::error!("stopping: {e}"),
        }
        let _ = tx.send(true);
        let _ = serving.await;
        // Its clients gone, a clustered node hands what it leads over before it stops
        // (not after a fatal error: its Raft may be what stopped).
        if cluster_node.is_some() && failed.is_none() {
            server::clustering::hand_over_leadership(&stopping).await;
        }
        drop(stopping);
        for m in [management, prometheus].into_iter().flatten() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), m).await;
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), control).await;
        let _ = std::fs::remove_file(&sock_path);
        if let Some(node) = cluster_node {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), node.shutdown()).await;
        }
        info!("stopped");
        match failed {
            Some(e) => Err(anyhow::anyhow!("{e}")),
            None => anyhow::Ok(()),
        }
    })
}

/// An HTTP listener on `ip:port`; the unspecified IPv6 address also takes IPv4 (as the
/// AMQP listeners do), falling back to IPv4 only where IPv6 is off.
fn bind_http(ip: IpAddr, port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let std = match std::net::TcpListener::bind((ip, port)) {
        Err(e) if ip == IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) && e.kind() != std::io::ErrorKind::AddrInUse => {
            std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port))?
        }
        r => r?,
    };
    std.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(std)
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
