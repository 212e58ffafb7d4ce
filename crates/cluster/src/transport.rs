//! TCP between the nodes of one cluster.
//!
//! Every message is one [`frame`](crate::frame) (length, crc32c, JSON payload) wrapped in an
//! [`Envelope`] whose id matches a response to its request. Each node keeps **one outbound
//! connection per peer**, owned by a task that (re)connects on demand with exponential
//! backoff; while a peer is in backoff, requests to it fail at once as unreachable, so
//! openraft's own retry pacing applies instead of a queue growing. Queues are bounded
//! ([`PEER_QUEUE_REQUESTS`], [`INBOUND_IN_FLIGHT_REQUESTS`]); a full queue is reported as
//! unreachable rather than waited on. The first frame on a connection names the sender
//! (`Hello`), which is how the test hook [`Transport::isolate`] drops traffic from a peer.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::frame::{self, Decoded};
use crate::{NodeId, TypeConfig};

/// Requests queued for one peer before further ones are refused.
pub const PEER_QUEUE_REQUESTS: usize = 256;
/// Requests from one inbound connection being served at once (and so responses queued for
/// its writer). At the limit the connection is not read, so TCP pushes back on the peer.
pub const INBOUND_IN_FLIGHT_REQUESTS: usize = 256;
/// First reconnect delay after a failed connect; doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long one connect attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Read buffer growth step.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A request from one node to another.
#[derive(Serialize, Deserialize)]
pub enum Request {
    Hello {
        from: String,
    },
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A client operation forwarded by a follower to the node it believes is the leader.
    Client(ClientRequest),
    /// Liveness probe (`ClusterNode::running_members`): answered with `Client(Ok((0, [])))`.
    Ping,
}

/// Operations a follower forwards to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientRequest {
    Propose(Vec<u8>),
    AddMember(String),
    RemoveMember(String),
    /// The leader's read index (after confirming leadership with a quorum).
    ReadIndex,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientFailure {
    NotLeader(Option<String>),
    /// A transient failure (e.g. the leader could not confirm its leadership this round).
    Retry(String),
    Other(String),
}

#[derive(Serialize, Deserialize)]
pub enum Response {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// The log index (or read index) on success, and for a proposal what applying it
    /// returned.
    Client(Result<(u64, Vec<u8>), ClientFailure>),
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    id: u64,
    body: T,
}

/// Why a call did not get a response.
#[derive(Debug)]
pub enum CallError {
    /// Not sent: the peer is in backoff, isolated, or its queue is full.
    Unreachable(String),
    /// Sent, but the connection failed or the deadline passed before a response.
    Lost(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(s) => write!(f, "unreachable: {s}"),
            CallError::Lost(s) => write!(f, "lost: {s}"),
        }
    }
}

impl std::error::Error for CallError {}

/// What serves requests arriving from peers.
pub trait Inbound: Send + Sync + 'static {
    fn handle(&self, from: String, request: Request) -> impl Future<Output = Response> + Send;
}

type Reply = oneshot::Sender<Result<Response, CallError>>;

struct Outgoing {
    request: Request,
    reply: Reply,
}

/// This node's side of the mesh.
pub struct Transport {
    me: String,
    peers: Mutex<HashMap<String, mpsc::Sender<Outgoing>>>,
    /// Test hook: peers whose traffic is dropped in both directions.
    isolated: Mutex<HashSet<String>>,
}

impl Transport {
    pub fn new(me: String) -> Arc<Transport> {
        Arc::new(Transport { me, peers: Mutex::default(), isolated: Mutex::default() })
    }

    fn is_isolated(&self, peer: &str) -> bool {
        self.isolated.lock().expect("isolated lock").contains(peer)
    }

    /// Test hook: drop (or stop dropping) all traffic to and from `peer`, closing the current
    /// connection to it. Inbound connections from it are closed at their next request.
    pub fn isolate(&self, peer: &str, on: bool) {
        let mut set = self.isolated.lock().expect("isolated lock");
        if on {
            set.insert(peer.to_owned());
            // Dropping the sender ends the peer task, which closes the connection.
            self.peers.lock().expect("peers lock").remove(peer);
        } else {
            set.remove(peer);
        }
    }

    /// Send `request` to `peer` and wait at most `timeout` for its response.
    pub async fn call(
        self: &Arc<Self>,
        peer: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        if self.is_isolated(peer) {
            return Err(CallError::Unreachable(format!("{peer} is isolated (test hook)")));
        }
        let tx = {
            let mut peers = self.peers.lock().expect("peers lock");
            peers
                .entry(peer.to_owned())
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(PEER_QUEUE_REQUESTS);
                    tokio::spawn(peer_task(self.me.clone(), peer.to_owned(), rx));
                    tx
                })
                .clone()
        };
        let (reply, rx) = oneshot::channel();
        tx.try_send(Outgoing { request, reply })
            .map_err(|_| CallError::Unreachable(format!("queue to {peer} is full or closed")))?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(CallError::Lost(format!("connection to {peer} closed"))),
            Err(_) => Err(CallError::Lost(format!("no response from {peer} in {timeout:?}"))),
        }
    }

    /// Accept peers' connections on `listener` and serve their requests with `inbound`,
    /// until the returned task is aborted (or its runtime dropped).
    pub fn serve<H: Inbound>(self: &Arc<Self>, listener: TcpListener, inbound: Arc<H>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(BACKOFF_MIN).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(me.clone(), stream, inbound.clone()));
            }
        })
    }
}

async fn serve_connection<H: Inbound>(transport: Arc<Transport>, stream: TcpStream, inbound: Arc<H>) {
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = Vec::new();
    let Some(Envelope { body: Request::Hello { from }, .. }) = read_frame::<Envelope<Request>>(&mut rd, &mut buf).await
    else {
        return;
    };
    let (tx, mut rx) = mpsc::channel::<Envelope<Response>>(INBOUND_IN_FLIGHT_REQUESTS);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(INBOUND_IN_FLIGHT_REQUESTS));
    let writer = tokio::spawn(async move {
        while let Some(env) = rx.recv().await {
            if write_frame(&mut wr, &env).await.is_err() {
                return;
            }
        }
    });
    while let Some(env) = read_frame::<Envelope<Request>>(&mut rd, &mut buf).await {
        if transport.is_isolated(&from) {
            break;
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
        let (tx, inbound, from) = (tx.clone(), inbound.clone(), from.clone());
        tokio::spawn(async move {
            let body = inbound.handle(from, env.body).await;
            // Waits while the writer is behind; the permit is held meanwhile, so a slow
            // peer stops our reads instead of growing a queue.
            let _ = tx.send(Envelope { id: env.id, body }).await;
            drop(permit);
        });
    }
    writer.abort();
}

/// One peer's connection owner: connects on demand, keeps the pending map, backs off.
async fn peer_task(me: String, peer: String, mut rx: mpsc::Receiver<Outgoing>) {
    let next_id = AtomicU64::new(1);
    let mut backoff = BACKOFF_MIN;
    let mut retry_at = Instant::now();
    let mut conn: Option<(tokio::net::tcp::OwnedWriteHalf, Pending, tokio::task::JoinHandle<()>)> = None;
    while let Some(out) = rx.recv().await {
        if conn.as_ref().is_some_and(|(_, _, reader)| reader.is_finished()) {
            conn = None;
        }
        if conn.is_none() {
            if Instant::now() < retry_at {
                let _ = out.reply.send(Err(CallError::Unreachable(format!("{peer} is in reconnect backoff"))));
                continue;
            }
            match connect(&me, &peer).await {
                Ok(c) => {
                    backoff = BACKOFF_MIN;
                    conn = Some(c);
                }
                Err(e) => {
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    let _ = out.reply.send(Err(CallError::Unreachable(format!("connect to {peer}: {e}"))));
                    continue;
                }
            }
        }
        let (wr, pending, _) = conn.as_mut().expect("connected above");
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut pending = pending.lock().expect("pending lock");
            // Callers that timed out leave their entry behind until a response or the end of
            // the connection; sweep them so a peer that never answers cannot grow the map.
            if pending.len() >= PEER_QUEUE_REQUESTS {
                pending.retain(|_, reply| !reply.is_closed());
            }
            pending.insert(id, out.reply);
        }
        if write_frame(wr, &Envelope { id, body: out.request }).await.is_err() {
            // Dropping the pending map's senders tells every waiter the connection is gone.
            if let Some((_, pending, reader)) = conn.take() {
                reader.abort();
                pending.lock().expect("pending lock").clear();
            }
        }
    }
    if let Some((_, _, reader)) = conn {
        reader.abort();
    }
}

type Pending = Arc<Mutex<HashMap<u64, Reply>>>;

async fn connect(
    me: &str,
    peer: &str,
) -> std::io::Result<(tokio::net::tcp::OwnedWriteHalf, Pending, tokio::task::JoinHandle<()>)> {
    let (_, addr) = crate::parse_node_name(peer).map_err(std::io::Error::other)?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    write_frame(&mut wr, &Envelope { id: 0, body: Request::Hello { from: me.to_owned() } }).await?;
    let pending: Pending = Arc::default();
    let reader_pending = pending.clone();
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(env) = read_frame::<Envelope<Response>>(&mut rd, &mut buf).await {
            if let Some(reply) = reader_pending.lock().expect("pending lock").remove(&env.id) {
                let _ = reply.send(Ok(env.body));
            }
        }
        reader_pending.lock().expect("pending lock").clear();
    });
    Ok((wr, pending, reader))
}

async fn write_frame<T: Serialize>(wr: &mut (impl AsyncWriteExt + Unpin), value: &T) -> std::io::Result<()> {
    let payload = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    let mut buf = Vec::with_capacity(payload.len() + frame::HEADER_BYTES);
    frame::encode(&mut buf, &payload);
    wr.write_all(&buf).await
}

/// Read the next frame; `None` at end of stream, on an I/O error or on a bad frame (a
/// checksum failure on a TCP stream means a broken peer: the connection is dropped).
async fn read_frame<T: DeserializeOwned>(rd: &mut (impl AsyncReadExt + Unpin), buf: &mut Vec<u8>) -> Option<T> {
    loop {
        match frame::decode(buf) {
            Decoded::Record(payload, n) => {
                let value = serde_json::from_slice(payload).ok();
                buf.drain(..n);
                return value;
            }
            Decoded::Corrupt { reason, .. } => {
                tracing::warn!(reason, "dropping an inter-node connection after a bad frame");
                return None;
            }
            Decoded::Incomplete => {
                let old = buf.len();
                buf.resize(old + READ_CHUNK_BYTES, 0);
                match rd.read(&mut buf[old..]).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => buf.truncate(old + n),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;

    impl Inbound for Echo {
        async fn handle(&self, _from: String, request: Request) -> Response {
            match request {
                Request::Client(ClientRequest::Propose(c)) => Response::Client(Ok((c.len() as u64, Vec::new()))),
                _ => Response::Client(Err(ClientFailure::Other("unexpected".into()))),
            }
        }
    }

    fn propose(n: usize) -> Request {
        Request::Client(ClientRequest::Propose(vec![7; n]))
    }

    async fn eventually_ok(t: &Arc<Transport>, peer: &str) {
        for _ in 0..200 {
            if let Ok(Response::Client(Ok((5, _)))) = t.call(peer, propose(5), Duration::from_secs(1)).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{peer} never answered");
    }

    #[tokio::test]
    async fn unreachable_backoff_reconnect_and_isolation() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let peer = format!("b@127.0.0.1:{port}");
        let a = Transport::new("a@127.0.0.1:1".into());
        // Nobody listens: unreachable, and while in backoff the next call fails without dialing.
        assert!(matches!(a.call(&peer, propose(5), Duration::from_secs(1)).await, Err(CallError::Unreachable(_))));
        let start = std::time::Instant::now();
        let r = a.call(&peer, propose(5), Duration::from_secs(1)).await;
        assert!(matches!(r, Err(CallError::Unreachable(ref e)) if e.contains("backoff")), "{:?}", r.err());
        assert!(start.elapsed() < BACKOFF_MIN);

        // The peer comes up: the same connection owner reconnects after its backoff.
        let b = Transport::new(peer.clone());
        let _server = b.serve(TcpListener::bind(("127.0.0.1", port)).await.unwrap(), Arc::new(Echo));
        eventually_ok(&a, &peer).await;

        // Isolated on the sending side: refused at once.
        a.isolate(&peer, true);
        assert!(matches!(a.call(&peer, propose(5), Duration::from_secs(1)).await, Err(CallError::Unreachable(_))));
        a.isolate(&peer, false);
        eventually_ok(&a, &peer).await;

        // Isolated on the receiving side: the request is dropped and the connection closed.
        b.isolate("a@127.0.0.1:1", true);
        assert!(a.call(&peer, propose(5), Duration::from_millis(500)).await.is_err());
        b.isolate("a@127.0.0.1:1", false);
        eventually_ok(&a, &peer).await;
    }

    #[tokio::test]
    async fn a_frame_with_a_bad_checksum_closes_the_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let b = Transport::new(format!("b@{addr}"));
        let _server = b.serve(listener, Arc::new(Echo));
        let mut s = TcpStream::connect(addr).await.unwrap();
        write_frame(&mut s, &Envelope { id: 0, body: Request::Hello { from: "raw@h:1".into() } }).await.unwrap();
        // A good request is answered.
        write_frame(&mut s, &Envelope { id: 1, body: propose(3) }).await.unwrap();
        let mut buf = Vec::new();
        let reply: Envelope<Response> = read_frame(&mut s, &mut buf).await.unwrap();
        assert!(matches!(reply, Envelope { id: 1, body: Response::Client(Ok((3, _))) }));
        // A damaged one closes the connection: the next read sees end of stream.
        let mut bad = Vec::new();
        frame::encode(&mut bad, &serde_json::to_vec(&Envelope { id: 2, body: propose(3) }).unwrap());
        let last = bad.len() - 1;
        bad[last] ^= 0x20;
        s.write_all(&bad).await.unwrap();
        let mut rest = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut rest)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0, "the connection stayed open after a bad frame");
    }
}
