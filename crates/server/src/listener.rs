//! Accept loop and graceful shutdown.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::config::ListenAddr;
use crate::connection::serve_connection;
use crate::tls::{TlsAcceptor, serve_tls_connection};

/// How often TTLs and queue expiry are checked (RabbitMQ-like resolution).
const HOUSEKEEPING_PERIOD: Duration = Duration::from_millis(100);
/// Memory and disk are measured once a second.
const RESOURCE_CHECK_EVERY_TICKS: u64 = 10;
use crate::state::ServerState;

/// Bind the AMQP port. With no address: all IPv4 interfaces and, where the host has
/// IPv6, all IPv6 interfaces (a separate v6-only socket, as RabbitMQ does).
pub fn bind_listeners(bind: Option<IpAddr>, port: u16) -> std::io::Result<Vec<TcpListener>> {
    let addrs: Vec<(IpAddr, bool)> = match bind {
        Some(ip) => vec![(ip, true)],
        None => vec![(IpAddr::V4(Ipv4Addr::UNSPECIFIED), true), (IpAddr::V6(Ipv6Addr::UNSPECIFIED), false)],
    };
    let mut out = Vec::new();
    for (ip, required) in addrs {
        match bind_one(SocketAddr::new(ip, port)) {
            Ok(l) => out.push(l),
            Err(e) if !required => warn!("not listening on {ip}: {e}"),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Bind every address (see [`bind_listeners`] for an address without an IP).
pub fn bind_all(addrs: &[ListenAddr]) -> std::io::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for a in addrs {
        out.extend(bind_listeners(a.ip, a.port)?);
    }
    Ok(out)
}

/// A bound socket and what it speaks: plain AMQP, or AMQPS with `tls`.
pub struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<TlsAcceptor>,
}

impl Listener {
    pub fn plain(tcp: TcpListener) -> Listener {
        Listener { tcp, tls: None }
    }
}

fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    TcpListener::from_std(sock.into())
}

/// Serve plain AMQP on `listeners` (see [`serve_listeners`]).
pub async fn serve(listeners: Vec<TcpListener>, state: Arc<ServerState>) {
    serve_listeners(listeners.into_iter().map(Listener::plain).collect(), state).await;
}

/// Accept connections on every listener until `state.shutdown` flips, then let
/// connections close (320 CONNECTION_FORCED) and wait for them briefly.
pub async fn serve_listeners(listeners: Vec<Listener>, state: Arc<ServerState>) {
    let mut conns = JoinSet::new();
    let mut accepts = JoinSet::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    for Listener { tcp: l, tls } in listeners {
        if let Ok(a) = l.local_addr() {
            info!("{} listener on {a}", if tls.is_some() { "AMQPS" } else { "AMQP" });
        }
        let tx = tx.clone();
        let mut shutdown = state.shutdown.clone();
        accepts.spawn(async move {
            loop {
                tokio::select! {
                    r = l.accept() => match r {
                        Ok((s, peer)) => { if tx.send((s, peer, tls.clone())).await.is_err() { return; } }
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                    _ = shutdown.changed() => return,
                }
            }
        });
    }
    drop(tx);
    accepts.spawn(housekeeping(state.clone()));
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            s = rx.recv() => match s {
                Some((stream, peer, tls)) => {
                    // Short of descriptors: refuse the connection, keep the rest for the
                    // queue files and the clients already here.
                    if !state.fds.admit() {
                        drop(stream);
                    } else if let Some(tls) = tls {
                        conns.spawn(serve_tls_connection(stream, peer, tls, state.clone()));
                    } else {
                        conns.spawn(serve_connection(stream, peer, state.clone()));
                    }
                }
                None => break,
            },
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    info!("shutting down: closing {} connections", conns.len());
    let _ = tokio::time::timeout(Duration::from_secs(5), async { while conns.join_next().await.is_some() {} }).await;
    accepts.abort_all();
    let st = state.clone();
    let _ = tokio::task::spawn_blocking(move || st.sync_and_stop_store()).await;
}

/// Periodic broker work: message TTL at queue heads, x-expires queue deletion.
async fn housekeeping(state: Arc<ServerState>) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = state.shutdown.clone();
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                n += 1;
                if n % RESOURCE_CHECK_EVERY_TICKS == 1 {
                    state.check_resources();
                }
                state.fire_delayed(broker::clock::Clock::now_ms(&broker::clock::SystemClock));
                for vh in state.vhosts() {
                    for d in vh.tick() {
                        crate::channel::notify_deleted(d);
                    }
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}
