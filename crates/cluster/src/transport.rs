//! TCP between the nodes of one cluster.
//!
//! Every message is one [`frame`](crate::frame) (length, crc32c, JSON payload) wrapped in an
//! [`Envelope`] whose id matches a response to its request. Each node keeps **one outbound
//! connection per peer**, owned by a task that (re)connects on demand with exponential
//! backoff; while a peer is in backoff, requests to it fail at once as unreachable, so
//! openraft's own retry pacing applies instead of a queue growing. Queues are bounded
//! ([`PEER_QUEUE_REQUESTS`], [`INBOUND_IN_FLIGHT_REQUESTS`]); a full queue is reported as
//! unreachable rather than waited on.
//!
//! Every connection starts with the [`handshake`](crate::handshake): both sides prove they
//! hold the cluster's cookie before any request is read. A failed handshake drops the
//! connection; the dialer counts it as a failed connect (unreachable, backoff applies), and
//! both sides log a warning, at most one per peer per [`HANDSHAKE_WARN_INTERVAL`]. The
//! handshake also names the dialer, which is how the test hook [`Transport::isolate`] drops
//! traffic from a peer.
//!
//! With [`LinkTls`] every connection is TLS first (both sides present a certificate the
//! cluster's CA signed, and the dialer checks the acceptor's against the host of its
//! `NAME@HOST:PORT`), and the cookie handshake then runs inside it. The TLS handshake counts
//! toward [`HANDSHAKE_TIMEOUT`] and fails the same way (refused, logged, backoff).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use openraft::error::{Fatal, RaftError};
use openraft::raft::StreamAppendResult;
use openraft_legacy::network_v1::{InstallSnapshotError, InstallSnapshotRequest, InstallSnapshotResponse};

use crate::codec;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, TransferLeaderRequest, TransferLeaderResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_rustls::rustls;

use crate::TypeConfig;
use crate::frame::{self, Decoded};
use crate::handshake::{
    self, Cookie, HANDSHAKE_TIMEOUT, HandshakeError, Offer, PIPELINED_APPENDS_WIRE_VERSION, PRE_VOTE_WIRE_VERSION,
};

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
/// At most one warning per peer per this interval about failed handshakes: a node with a
/// wrong cookie retries every backoff (at most [`BACKOFF_MAX`]) and would fill the log.
pub const HANDSHAKE_WARN_INTERVAL: Duration = Duration::from_secs(30);
/// Peer addresses the accepting side remembers for that rate limit; when full, the ones not
/// warned about within the interval are forgotten.
const WARN_PEERS_MAX: usize = 1024;
/// Inbound connections still in their handshake at once; more are closed on accept. A
/// cluster has a handful of peers, each with one connection: this only bounds what
/// unauthenticated dialers can hold (a task, a socket and a 4 KiB buffer each, for at most
/// `HANDSHAKE_TIMEOUT`).
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 64;

/// A request from one node to another.
#[derive(Serialize, Deserialize)]
pub enum Request {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A client operation forwarded by a follower to the node it believes is the leader.
    Client(ClientRequest),
    /// Liveness probe (`ClusterNode::running_members`): answered with `Client(Ok((0, [])))`.
    Ping,
    /// An opaque request of the broker's own (forwarded publishes, gets, ... to the node a
    /// classic queue lives on), served by the [`BrokerHandler`] the broker installed
    /// (`ClusterNode::set_broker_handler`); this crate knows nothing of its content. Its size
    /// is bounded by the frame limit; the broker bounds what it keeps in flight.
    Broker(#[serde(with = "crate::codec::bytes")] Vec<u8>),
    /// A request to one of the node's other Raft groups (a quorum queue's own group); the
    /// metadata group's requests are the variants above, unwrapped, as before groups
    /// existed. Answered [`Response::NoGroup`] when the node does not run that group (not
    /// yet opened, or deleted).
    Group(crate::GroupId, GroupRequest),
    /// The metadata group's leader handing its leadership over (openraft 0.10); not
    /// understood by nodes of the openraft 0.9 build.
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// The metadata group's pre-vote (wire protocol 3, [`PRE_VOTE_WIRE_VERSION`]): whether
    /// the peer would vote for the candidate, without it raising its term. Answered
    /// [`Response::Vote`]. Sent only to peers known to speak protocol 3.
    PreVote(VoteRequest<TypeConfig>),
}

/// The Raft traffic of one group: what [`Request::Group`] carries.
#[derive(Serialize, Deserialize)]
pub enum GroupRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    Client(ClientRequest),
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// Wire protocol 3: see [`Request::PreVote`].
    PreVote(VoteRequest<TypeConfig>),
}

impl GroupRequest {
    /// The request for `group` on the wire: the metadata group's (`None`) unwrapped.
    pub fn into_request(self, group: Option<crate::GroupId>) -> Request {
        match (group, self) {
            (Some(g), r) => Request::Group(g, r),
            (None, GroupRequest::Append(r)) => Request::Append(r),
            (None, GroupRequest::Vote(r)) => Request::Vote(r),
            (None, GroupRequest::Snapshot(r)) => Request::Snapshot(r),
            (None, GroupRequest::Client(r)) => Request::Client(r),
            (None, GroupRequest::TransferLeader(r)) => Request::TransferLeader(r),
            (None, GroupRequest::PreVote(r)) => Request::PreVote(r),
        }
    }
}

/// Serves [`Request::Broker`]: the broker's side of the inter-node link.
pub trait BrokerHandler: Send + Sync + 'static {
    /// Answer `request` from the peer `from` (its bytes are the broker's own encoding).
    fn handle(
        &self,
        from: String,
        request: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Vec<u8>> + Send + 'static>>;
}

/// Operations a follower forwards to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientRequest {
    Propose(#[serde(with = "crate::codec::bytes")] Vec<u8>),
    AddMember(String),
    RemoveMember(String),
    /// The leader's read index (after confirming leadership with a quorum).
    ReadIndex,
    /// Take a voter's vote away; it stays a learner (a quorum queue's `delete_member`).
    /// New variants go last: a node before them cannot decode them and answers with an error.
    DemoteMember(String),
    /// Remove a node from the group whether it votes or only learns (a forgotten node).
    RemoveNode(String),
    /// Hand the leadership to this voter (`rebalance`): served by the leader.
    TransferLeadership(String),
    /// Start an election now: what leaders of the openraft 0.9 build sent to the node they
    /// handed over to (this build uses openraft's leader transfer); still served, so a
    /// hand-over from such a leader works during a rolling upgrade. Never forwarded.
    Campaign,
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
    Append(Result<AppendEntriesResponse<TypeConfig>, RaftError<TypeConfig>>),
    Vote(Result<VoteResponse<TypeConfig>, RaftError<TypeConfig>>),
    Snapshot(Result<InstallSnapshotResponse<TypeConfig>, RaftError<TypeConfig, InstallSnapshotError>>),
    /// The log index (or read index) on success, and for a proposal what applying it
    /// returned.
    Client(Result<(u64, Vec<u8>), ClientFailure>),
    /// The broker's answer to [`Request::Broker`]; an error when the node has no handler
    /// (yet: it is still starting).
    Broker(BrokerAnswer),
    /// The node runs no group of the id in [`Request::Group`].
    NoGroup,
    /// The answer to a transfer-leader request; an error when the group's core stopped.
    TransferLeader(Result<TransferLeaderResponse<TypeConfig>, String>),
}

/// What [`Request::Broker`] got back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum BrokerAnswer {
    Ok(#[serde(with = "crate::codec::bytes")] Vec<u8>),
    NoHandler,
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
    /// Not sent: the connection failed its handshake (another cookie, another node at that
    /// address, or no answer within `HANDSHAKE_TIMEOUT`). Openraft sees it as unreachable;
    /// the reconnect backoff applies.
    Refused(String),
    /// Sent, but the connection failed or the deadline passed before a response.
    Lost(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(s) => write!(f, "unreachable: {s}"),
            CallError::Refused(s) => write!(f, "refused: {s}"),
            CallError::Lost(s) => write!(f, "lost: {s}"),
        }
    }
}

impl std::error::Error for CallError {}

/// What serves requests arriving from peers.
pub trait Inbound: Send + Sync + 'static {
    fn handle(&self, from: String, request: Request) -> impl Future<Output = Response> + Send;

    /// Serve the appends of `group` that arrive on one connection, in their order: the
    /// group's `Raft::stream_append` over `input`, its answers in the same order. None when
    /// the node runs no such group; such an append is then served by [`Self::handle`], as
    /// are all of them when this is not implemented.
    fn append_stream(&self, _group: Option<crate::GroupId>, _input: AppendInput) -> Option<AppendAnswers> {
        None
    }
}

/// The appends of one group from one connection, in arrival order.
pub type AppendInput = BoxStream<'static, AppendEntriesRequest<TypeConfig>>;
/// What `Raft::stream_append` answers to [`AppendInput`], one item per append, in order.
pub type AppendAnswers = BoxStream<'static, Result<StreamAppendResult<TypeConfig>, Fatal<TypeConfig>>>;

type Reply = oneshot::Sender<Result<Response, CallError>>;

struct Outgoing {
    request: Request,
    reply: Reply,
}

/// TLS on the inter-node link: each node's certificate serves both directions, verified
/// against the cluster's CA on both sides. Built by the broker from its config files; the
/// transport only runs it.
#[derive(Clone)]
pub struct LinkTls {
    /// Must require a client certificate (mutual verification).
    pub acceptor: Arc<rustls::ServerConfig>,
    /// Must present this node's certificate.
    pub connector: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkTls(..)")
    }
}

/// One inter-node connection, plain TCP or TLS over it.
trait Link: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Link for T {}
type BoxLink = Box<dyn Link>;

/// This node's side of the mesh.
pub struct Transport {
    me: String,
    cookie: Cookie,
    tls: Option<LinkTls>,
    /// The local address outbound connections bind before dialing (None: the kernel's
    /// choice). Lets a fault proxy in front of a peer tell this node's connections apart.
    source_ip: Option<std::net::IpAddr>,
    peers: Mutex<HashMap<String, mpsc::Sender<Outgoing>>>,
    /// Test hook: peers whose traffic is dropped in both directions.
    isolated: Mutex<HashSet<String>>,
    /// Rate limit of the accepting side's handshake warnings, per peer IP (a dialer's port
    /// changes with every attempt).
    refused: Mutex<HashMap<std::net::IpAddr, WarnLimit>>,
    /// Permits for inbound handshakes ([`HANDSHAKES_IN_FLIGHT_MAX`]).
    handshakes: Arc<tokio::sync::Semaphore>,
    /// What this node announces in every handshake (wire versions, feature flags).
    offer: Offer,
    /// Each peer's offer as its latest handshake (either direction) gave it: a restarted
    /// peer (another binary, perhaps) shakes hands again before any request is served.
    /// Only peers that proved the cookie are entered, one entry per node name (a handful).
    learned: Learned,
}

type Learned = Arc<Mutex<HashMap<String, Offer>>>;

impl Transport {
    pub fn new(me: String, cookie: Cookie) -> Arc<Transport> {
        Transport::with_tls(me, cookie, None)
    }

    /// [`Self::new`], with TLS on every connection when `tls` is given.
    pub fn with_tls(me: String, cookie: Cookie, tls: Option<LinkTls>) -> Arc<Transport> {
        Transport::with_source(me, cookie, tls, None)
    }

    /// [`Self::with_tls`], binding every outbound connection to `source_ip` when given.
    pub fn with_source(
        me: String,
        cookie: Cookie,
        tls: Option<LinkTls>,
        source_ip: Option<std::net::IpAddr>,
    ) -> Arc<Transport> {
        Transport::with_offer(me, cookie, tls, source_ip, Offer::default())
    }

    /// [`Self::with_source`], announcing `offer` in every handshake.
    pub fn with_offer(
        me: String,
        cookie: Cookie,
        tls: Option<LinkTls>,
        source_ip: Option<std::net::IpAddr>,
        offer: Offer,
    ) -> Arc<Transport> {
        Arc::new(Transport {
            offer,
            learned: Arc::default(),
            me,
            cookie,
            tls,
            source_ip,
            peers: Mutex::default(),
            isolated: Mutex::default(),
            refused: Mutex::default(),
            handshakes: Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_IN_FLIGHT_MAX)),
        })
    }

    /// `peer`'s offer as its latest handshake with this node gave it (None: no handshake yet).
    pub fn peer_offer(&self, peer: &str) -> Option<Offer> {
        self.learned.lock().expect("learned lock").get(peer).cloned()
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
        self.send(peer, request, timeout)?.await
    }

    /// Queue `request` for `peer` now and return what waits at most `timeout` (from now)
    /// for its response. Requests queued one after the other reach the peer in that order
    /// (one connection, written by one task): what a leader pipelining appends relies on.
    pub(crate) fn send(
        self: &Arc<Self>,
        peer: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<impl Future<Output = Result<Response, CallError>> + Send + 'static, CallError> {
        if self.is_isolated(peer) {
            return Err(CallError::Unreachable(format!("{peer} is isolated (test hook)")));
        }
        let tx = {
            let mut peers = self.peers.lock().expect("peers lock");
            peers
                .entry(peer.to_owned())
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(PEER_QUEUE_REQUESTS);
                    let who = Identity {
                        me: self.me.clone(),
                        cookie: self.cookie.clone(),
                        tls: self.tls.clone(),
                        source_ip: self.source_ip,
                        offer: self.offer.clone(),
                        learned: self.learned.clone(),
                    };
                    tokio::spawn(peer_task(who, peer.to_owned(), rx));
                    tx
                })
                .clone()
        };
        let (reply, rx) = oneshot::channel();
        tx.try_send(Outgoing { request, reply })
            .map_err(|_| CallError::Unreachable(format!("queue to {peer} is full or closed")))?;
        let answer = tokio::time::timeout(timeout, rx);
        let peer = peer.to_owned();
        Ok(async move {
            match answer.await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(CallError::Lost(format!("connection to {peer} closed"))),
                Err(_) => Err(CallError::Lost(format!("no response from {peer} in {timeout:?}"))),
            }
        })
    }

    /// Whether `peer` serves a group's appends from one connection in order (wire
    /// protocol 2 and later), so that a leader may send the next before the last is answered.
    pub(crate) fn pipelines_to(&self, peer: &str) -> bool {
        self.peer_offer(peer)
            .and_then(|o| o.common_version(&self.offer))
            .is_some_and(|v| v >= PIPELINED_APPENDS_WIRE_VERSION)
    }

    /// Whether `peer` answers a ping within `timeout`: it is up and its Raft core runs.
    pub(crate) async fn answers_ping(self: &Arc<Self>, peer: &str, timeout: Duration) -> bool {
        matches!(self.call(peer, Request::Ping, timeout).await, Ok(Response::Client(Ok(_))))
    }

    /// Whether `peer` answers pre-votes (wire protocol 3 and later): `None` before the first
    /// handshake with it, when its protocol is not known yet.
    pub(crate) fn pre_votes_to(&self, peer: &str) -> Option<bool> {
        let offer = self.peer_offer(peer)?;
        Some(offer.common_version(&self.offer).is_some_and(|v| v >= PRE_VOTE_WIRE_VERSION))
    }

    /// Accept peers' connections on `listener` and serve their requests with `inbound`,
    /// until the returned task is aborted (or its runtime dropped).
    pub fn serve<H: Inbound>(self: &Arc<Self>, listener: TcpListener, inbound: Arc<H>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, addr)) = listener.accept().await else {
                    tokio::time::sleep(BACKOFF_MIN).await;
                    continue;
                };
                let Ok(permit) = me.handshakes.clone().try_acquire_owned() else {
                    me.warn_refused(addr, None, &HandshakeError::Busy);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(me.clone(), stream, addr, inbound.clone(), permit));
            }
        })
    }

    /// Log a refused inbound handshake from `addr`, unless one from its IP was logged within
    /// [`HANDSHAKE_WARN_INTERVAL`].
    fn warn_refused(&self, addr: std::net::SocketAddr, claimed: Option<&str>, e: &HandshakeError) {
        let now = Instant::now();
        let suppressed = {
            let mut refused = self.refused.lock().expect("refused lock");
            if refused.len() >= WARN_PEERS_MAX && !refused.contains_key(&addr.ip()) {
                refused.retain(|_, w| w.last.is_some_and(|t| now.duration_since(t) < HANDSHAKE_WARN_INTERVAL));
            }
            if refused.len() >= WARN_PEERS_MAX { Some(0) } else { refused.entry(addr.ip()).or_default().check(now) }
        };
        let Some(suppressed) = suppressed else { return };
        let who = claimed.map(|c| format!(" (claiming to be {c})")).unwrap_or_default();
        tracing::warn!("refused an inter-node connection from {addr}{who}: {e}{}", more(suppressed));
    }
}

/// " (N more …)" for a rate-limited warning.
fn more(suppressed: u64) -> String {
    if suppressed == 0 { String::new() } else { format!(" ({suppressed} more from this peer since the last warning)") }
}

/// Rate limit of one kind of warning about one peer.
#[derive(Default)]
struct WarnLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimit {
    /// Whether to log now, and if so how many were left out since the last one.
    fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < HANDSHAKE_WARN_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

async fn serve_connection<H: Inbound>(
    transport: Arc<Transport>,
    stream: TcpStream,
    addr: std::net::SocketAddr,
    inbound: Arc<H>,
    handshake_permit: tokio::sync::OwnedSemaphorePermit,
) {
    let mut buf = Vec::new();
    let mut claimed = None;
    let shake = async {
        let mut link: BoxLink = match &transport.tls {
            Some(tls) => {
                Box::new(tokio_rustls::TlsAcceptor::from(tls.acceptor.clone()).accept(stream).await.map_err(|e| {
                    match e.kind() {
                        std::io::ErrorKind::UnexpectedEof => HandshakeError::Closed,
                        _ => HandshakeError::Tls(e.to_string()),
                    }
                })?)
            }
            None => Box::new(stream),
        };
        let (from, offer) =
            handshake::accept(&mut link, &mut buf, &transport.cookie, &transport.me, &transport.offer, &mut claimed)
                .await?;
        transport.learned.lock().expect("learned lock").insert(from.clone(), offer);
        Ok((link, from))
    };
    let (link, from) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, shake).await {
        Ok(Ok(shaken)) => shaken,
        // A port probe (connect, then close without a byte: a TCP health check, a scanner)
        // is not a peer failing to authenticate.
        Ok(Err(HandshakeError::Closed)) if claimed.is_none() && buf.is_empty() => {
            return tracing::debug!("an inter-node connection from {addr} closed before its handshake");
        }
        Ok(Err(e)) => return transport.warn_refused(addr, claimed.as_deref(), &e),
        Err(_) => return transport.warn_refused(addr, claimed.as_deref(), &HandshakeError::Timeout),
    };
    drop(handshake_permit);
    let (mut rd, mut wr) = tokio::io::split(link);
    let (tx, mut rx) = mpsc::channel::<Envelope<Response>>(INBOUND_IN_FLIGHT_REQUESTS);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(INBOUND_IN_FLIGHT_REQUESTS));
    let writer = tokio::spawn(async move {
        let mut scratch = Vec::new();
        while let Some(env) = rx.recv().await {
            if write_frame_with(&mut wr, &mut scratch, &env).await.is_err() {
                return;
            }
        }
    });
    // Each group's appends on this connection go through one lane, in arrival order.
    let mut lanes: HashMap<Option<crate::GroupId>, mpsc::UnboundedSender<Laned>> = HashMap::new();
    while let Some(env) = read_frame::<Envelope<Request>>(&mut rd, &mut buf).await {
        if transport.is_isolated(&from) {
            break;
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
        let env = match env.body {
            Request::Append(r) => {
                lane(&mut lanes, &inbound, &from, &tx, None, Laned { id: env.id, request: r, permit })
            }
            Request::Group(g, GroupRequest::Append(r)) => {
                lane(&mut lanes, &inbound, &from, &tx, Some(g), Laned { id: env.id, request: r, permit })
            }
            body => Some((Envelope { id: env.id, body }, permit)),
        };
        // Not an append, or one of a group the node does not run: served on its own.
        let Some((env, permit)) = env else { continue };
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

/// An append waiting in its group's lane, with its request id and in-flight permit.
struct Laned {
    id: u64,
    request: AppendEntriesRequest<TypeConfig>,
    permit: tokio::sync::OwnedSemaphorePermit,
}

/// Hand `item` to its group's lane, opening the lane first if there is none (or it ended).
/// Returns the request back (to be served on its own) when the node runs no such group.
fn lane<H: Inbound>(
    lanes: &mut HashMap<Option<crate::GroupId>, mpsc::UnboundedSender<Laned>>,
    inbound: &Arc<H>,
    from: &str,
    out: &mpsc::Sender<Envelope<Response>>,
    group: Option<crate::GroupId>,
    item: Laned,
) -> Option<(Envelope<Request>, tokio::sync::OwnedSemaphorePermit)> {
    let item = match lanes.get(&group) {
        Some(tx) => match tx.send(item) {
            Ok(()) => return None,
            Err(mpsc::error::SendError(item)) => item,
        },
        None => item,
    };
    let (input_tx, input) = mpsc::unbounded_channel();
    let Some(answers) = inbound.append_stream(group, receiver_stream(input)) else {
        lanes.remove(&group);
        let request = GroupRequest::Append(item.request).into_request(group);
        return Some((Envelope { id: item.id, body: request }, item.permit));
    };
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(item).ok();
    lanes.insert(group, tx);
    tokio::spawn(run_lane(inbound.clone(), from.to_owned(), group, rx, input_tx, answers, out.clone()));
    None
}

fn receiver_stream<T: Send + 'static>(rx: mpsc::UnboundedReceiver<T>) -> BoxStream<'static, T> {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|t| (t, rx)) }))
}

/// Serve one group's appends from one connection in order: each goes into the group's
/// `stream_append`, and its answer goes back with its request id. A failed append (a
/// conflict, a higher vote, a stopped core) ends openraft's stream: the appends sent into
/// it after that one get the same answer — they were sent by the leader before it saw the
/// failure, and it ignores their answers — and the next append opens a new stream.
async fn run_lane<H: Inbound>(
    inbound: Arc<H>,
    from: String,
    group: Option<crate::GroupId>,
    mut rx: mpsc::UnboundedReceiver<Laned>,
    mut input: mpsc::UnboundedSender<AppendEntriesRequest<TypeConfig>>,
    mut answers: AppendAnswers,
    out: mpsc::Sender<Envelope<Response>>,
) {
    let mut waiting: std::collections::VecDeque<(u64, tokio::sync::OwnedSemaphorePermit)> = Default::default();
    loop {
        tokio::select! {
            item = rx.recv() => {
                let Some(item) = item else { return };
                waiting.push_back((item.id, item.permit));
                // The stream's task ends only with `answers` (dropped below).
                let _ = input.send(item.request);
            }
            answer = answers.next(), if !waiting.is_empty() => {
                let (failed, body) = match answer {
                    Some(Ok(r)) => (r.is_err(), Ok(AppendEntriesResponse::from(r))),
                    Some(Err(fatal)) => (true, Err(RaftError::Fatal(fatal))),
                    None => (true, Err(RaftError::Fatal(Fatal::Stopped))),
                };
                let (id, permit) = waiting.pop_front().expect("an answer is awaited only for a waiting append");
                let mut answered = vec![(id, permit)];
                if failed {
                    answered.extend(waiting.drain(..));
                }
                for (id, permit) in answered {
                    if out.send(Envelope { id, body: Response::Append(body.clone()) }).await.is_err() {
                        return;
                    }
                    drop(permit);
                }
                if failed {
                    let (input_tx, fresh) = mpsc::unbounded_channel();
                    match inbound.append_stream(group, receiver_stream(fresh)) {
                        Some(a) => (input, answers) = (input_tx, a),
                        None => {
                            // The group is gone: what is still queued is answered as any
                            // request of a group the node does not run.
                            rx.close();
                            while let Some(item) = rx.recv().await {
                                let request = GroupRequest::Append(item.request).into_request(group);
                                let body = inbound.handle(from.clone(), request).await;
                                if out.send(Envelope { id: item.id, body }).await.is_err() {
                                    return;
                                }
                            }
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// One peer's connection owner: connects on demand, keeps the pending map, backs off.
async fn peer_task(who: Identity, peer: String, mut rx: mpsc::Receiver<Outgoing>) {
    let next_id = AtomicU64::new(1);
    let mut backoff = BACKOFF_MIN;
    let mut retry_at = Instant::now();
    // Why the last connect failed, for the calls refused during the backoff after it.
    let mut last_error = CallError::Unreachable(String::new());
    let mut warn_limit = WarnLimit::default();
    let mut conn: Option<Connection> = None;
    let mut scratch = Vec::new();
    while let Some(out) = rx.recv().await {
        if conn.as_ref().is_some_and(|(_, _, reader)| reader.is_finished()) {
            conn = None;
        }
        if conn.is_none() {
            if Instant::now() < retry_at {
                let _ = out.reply.send(Err(match &last_error {
                    CallError::Refused(e) => CallError::Refused(e.clone()),
                    e => CallError::Unreachable(format!("{peer} is in reconnect backoff after: {e}")),
                }));
                continue;
            }
            match connect(&who, &peer).await {
                Ok(c) => {
                    backoff = BACKOFF_MIN;
                    conn = Some(c);
                }
                Err(e) => {
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    last_error = match e {
                        ConnectError::Io(e) => CallError::Unreachable(format!("connect to {peer}: {e}")),
                        ConnectError::Handshake(h) => {
                            if let Some(suppressed) = warn_limit.check(Instant::now()) {
                                tracing::warn!("inter-node handshake with {peer} failed: {h}{}", more(suppressed));
                            }
                            CallError::Refused(format!("inter-node handshake with {peer} failed: {h}"))
                        }
                    };
                    let _ = out.reply.send(Err(match &last_error {
                        CallError::Refused(e) => CallError::Refused(e.clone()),
                        e => CallError::Unreachable(e.to_string()),
                    }));
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
        if write_frame_with(wr, &mut scratch, &Envelope { id, body: out.request }).await.is_err() {
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

/// Why a connection to a peer could not be set up.
#[derive(Debug)]
enum ConnectError {
    Io(std::io::Error),
    Handshake(HandshakeError),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "{e}"),
            ConnectError::Handshake(e) => write!(f, "inter-node handshake failed: {e}"),
        }
    }
}

impl From<std::io::Error> for ConnectError {
    fn from(e: std::io::Error) -> Self {
        ConnectError::Io(e)
    }
}

/// What a node dials its peers as.
struct Identity {
    me: String,
    cookie: Cookie,
    tls: Option<LinkTls>,
    source_ip: Option<std::net::IpAddr>,
    offer: Offer,
    learned: Learned,
}

/// An open connection to a peer: its write half, the calls waiting for a response, and the
/// task reading the responses.
type Connection = (WriteHalf<BoxLink>, Pending, tokio::task::JoinHandle<()>);

/// TCP connect to `addr` (`HOST:PORT`), from `source` when given.
async fn dial(addr: &str, source: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let Some(source) = source else { return TcpStream::connect(addr).await };
    let mut last = None;
    for to in tokio::net::lookup_host(addr).await? {
        let socket = if to.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.bind(std::net::SocketAddr::new(source, 0))?;
        match socket.connect(to).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("{addr} resolves to no address"))))
}

async fn connect(who: &Identity, peer: &str) -> Result<Connection, ConnectError> {
    let (_, addr) = crate::parse_node_name(peer).map_err(std::io::Error::other)?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, dial(addr, who.source_ip))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let mut buf = Vec::new();
    let shake = async {
        let mut link: BoxLink = match &who.tls {
            Some(tls) => {
                // The acceptor's certificate must be for the host peers dial it at.
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|e| HandshakeError::Tls(format!("{host} is not a TLS server name: {e}")))?;
                Box::new(
                    tokio_rustls::TlsConnector::from(tls.connector.clone())
                        .connect(name, stream)
                        .await
                        .map_err(|e| HandshakeError::Tls(e.to_string()))?,
                )
            }
            None => Box::new(stream),
        };
        let theirs = handshake::initiate(&mut link, &mut buf, &who.cookie, &who.me, peer, &who.offer).await?;
        who.learned.lock().expect("learned lock").insert(peer.to_owned(), theirs);
        Ok(link)
    };
    let link = tokio::time::timeout(HANDSHAKE_TIMEOUT, shake)
        .await
        .unwrap_or(Err(HandshakeError::Timeout))
        .map_err(ConnectError::Handshake)?;
    let (mut rd, wr) = tokio::io::split(link);
    let pending: Pending = Arc::default();
    let reader_pending = pending.clone();
    let reader = tokio::spawn(async move {
        while let Some(env) = read_frame::<Envelope<Response>>(&mut rd, &mut buf).await {
            if let Some(reply) = reader_pending.lock().expect("pending lock").remove(&env.id) {
                let _ = reply.send(Ok(env.body));
            }
        }
        reader_pending.lock().expect("pending lock").clear();
    });
    Ok((wr, pending, reader))
}

pub(crate) async fn write_frame<T: Serialize>(wr: &mut (impl AsyncWrite + Unpin), value: &T) -> std::io::Result<()> {
    write_frame_with(wr, &mut Vec::new(), value).await
}

/// [`write_frame`] encoding into `buf`, a buffer the caller keeps for its next frames (a
/// link's writer): Raft appends are up to a few hundred KiB, and a fresh buffer per frame
/// costs more in page faults than the encoding itself.
async fn write_frame_with<T: Serialize>(
    wr: &mut (impl AsyncWrite + Unpin),
    buf: &mut Vec<u8>,
    value: &T,
) -> std::io::Result<()> {
    buf.clear();
    codec::encode_framed(buf, value)?;
    let written = wr.write_all(buf).await;
    codec::shrink_scratch(buf);
    written?;
    // TLS may keep the end of a record buffered when the socket would block; a no-op on TCP.
    wr.flush().await
}

/// Read the next frame; `None` at end of stream, on an I/O error or on a bad frame (a
/// checksum failure on a TCP stream means a broken peer: the connection is dropped).
async fn read_frame<T: DeserializeOwned>(rd: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> Option<T> {
    match read_frame_detailed(rd, buf, frame::PAYLOAD_MAX_BYTES).await {
        Ok(v) => Some(v),
        Err(ReadError::Corrupt(reason)) => {
            tracing::warn!(reason, "dropping an inter-node connection after a bad frame");
            None
        }
        Err(ReadError::Closed | ReadError::Undecodable | ReadError::TooLarge) => None,
    }
}

/// Why [`read_frame_detailed`] returned no value.
pub(crate) enum ReadError {
    /// End of stream or an I/O error.
    Closed,
    /// A bad checksum or an impossible length.
    Corrupt(&'static str),
    /// A valid frame whose content is not a `T`.
    Undecodable,
    /// A frame announcing more than the caller's limit.
    TooLarge,
}

/// Read the next frame of at most `payload_max` bytes (bytes after it stay in `buf`).
pub(crate) async fn read_frame_detailed<T: DeserializeOwned>(
    rd: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    payload_max: u32,
) -> Result<T, ReadError> {
    loop {
        if let Some(len) = buf.first_chunk::<4>().map(|l| u32::from_le_bytes(*l))
            && len > payload_max
        {
            return Err(ReadError::TooLarge);
        }
        match frame::decode(buf) {
            Decoded::Record(payload, n) => {
                let value = codec::decode(payload).map_err(|_| ReadError::Undecodable);
                buf.drain(..n);
                return value;
            }
            Decoded::Corrupt { reason, .. } => return Err(ReadError::Corrupt(reason)),
            Decoded::Incomplete => {
                // Into spare capacity: not zeroed first, as a resize would (64 KiB per read).
                buf.reserve(READ_CHUNK_BYTES);
                if !matches!(rd.read_buf(buf).await, Ok(1..)) {
                    return Err(ReadError::Closed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Answers proposals with their length, and counts the requests it served.
    #[derive(Default)]
    struct Echo {
        served: AtomicUsize,
    }

    impl Inbound for Echo {
        async fn handle(&self, _from: String, request: Request) -> Response {
            self.served.fetch_add(1, Ordering::Relaxed);
            match request {
                Request::Client(ClientRequest::Propose(c)) => Response::Client(Ok((c.len() as u64, Vec::new()))),
                _ => Response::Client(Err(ClientFailure::Other("unexpected".into()))),
            }
        }
    }

    fn cookie(s: &str) -> Cookie {
        Cookie::new(s).unwrap()
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

    /// A transport named after a fresh listener's address, serving with a counting [`Echo`].
    async fn serving(short: &str, secret: &str) -> (Arc<Transport>, String, Arc<Echo>, tokio::task::JoinHandle<()>) {
        serving_with(short, secret, None).await
    }

    async fn serving_with(
        short: &str,
        secret: &str,
        tls: Option<LinkTls>,
    ) -> (Arc<Transport>, String, Arc<Echo>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let name = format!("{short}@{}", listener.local_addr().unwrap());
        let t = Transport::with_tls(name.clone(), cookie(secret), tls);
        let echo = Arc::new(Echo::default());
        let server = t.serve(listener, echo.clone());
        (t, name, echo, server)
    }

    /// Serves appends through [`Inbound::append_stream`] as openraft's `stream_append`
    /// does: in order, one answer each, the stream ending after a failed one. Group 1
    /// refuses the append after index 5 once (a conflict); group 2 is not run here.
    #[derive(Default)]
    struct Appends {
        /// (group, prev index) of every append served, in serving order.
        served: Mutex<Vec<(Option<crate::GroupId>, u64)>>,
        /// Streams opened, per group.
        opened: Mutex<HashMap<Option<crate::GroupId>, usize>>,
        conflicted: std::sync::atomic::AtomicBool,
        handled: AtomicUsize,
    }

    impl Inbound for Arc<Appends> {
        async fn handle(&self, _from: String, request: Request) -> Response {
            self.handled.fetch_add(1, Ordering::Relaxed);
            match request {
                Request::Group(2, GroupRequest::Append(_)) => Response::NoGroup,
                _ => Response::Client(Err(ClientFailure::Other("unexpected".into()))),
            }
        }

        fn append_stream(&self, group: Option<crate::GroupId>, input: AppendInput) -> Option<AppendAnswers> {
            if group == Some(2) {
                return None;
            }
            *self.opened.lock().unwrap().entry(group).or_default() += 1;
            let me = self.clone();
            Some(Box::pin(
                input
                    .map(move |r| {
                        let prev = r.prev_log_id.expect("prev");
                        me.served.lock().unwrap().push((group, prev.index));
                        if group == Some(1) && prev.index == 5 && !me.conflicted.swap(true, Ordering::Relaxed) {
                            return Ok(Err(openraft::raft::StreamAppendError::Conflict(prev)));
                        }
                        Ok(Ok(r.entries.last().map(|e| e.log_id)))
                    })
                    .scan(false, |ended, item: Result<StreamAppendResult<TypeConfig>, Fatal<TypeConfig>>| {
                        let stop = *ended;
                        *ended = !matches!(item, Ok(Ok(_)));
                        std::future::ready((!stop).then_some(item))
                    }),
            ))
        }
    }

    fn append(prev: u64) -> AppendEntriesRequest<TypeConfig> {
        use openraft::vote::RaftLeaderId;
        let lid = |i| crate::LogId::new(crate::CommittedLeaderId::new(1, 1), i);
        AppendEntriesRequest {
            vote: crate::Vote::new_committed(1, 1),
            prev_log_id: Some(lid(prev)),
            leader_commit: None,
            entries: vec![openraft::Entry { log_id: lid(prev + 1), payload: openraft::EntryPayload::Blank }],
        }
    }

    /// Pre-votes go only to peers known to speak wire protocol 3: not known before the first
    /// handshake (asked then), a peer of 1..=2 is not sent one (counted as granting it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pre_votes_are_sent_only_to_peers_of_protocol_3() {
        let mut peers = Vec::new();
        for (who, wire_max) in [("new", crate::WIRE_VERSION), ("old", PRE_VOTE_WIRE_VERSION - 1)] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let name = format!("{who}@{}", listener.local_addr().unwrap());
            let offer = Offer { wire_max, ..Offer::default() };
            let t = Transport::with_offer(name.clone(), cookie("C"), None, None, offer);
            peers.push((name, t.serve(listener, Arc::new(Arc::new(Appends::default())))));
        }
        let a = Transport::new("a@127.0.0.1:1".into(), cookie("C"));
        for (name, _) in &peers {
            assert_eq!(a.pre_votes_to(name), None, "{name} before a handshake");
            let _ = a.call(name, Request::Ping, Duration::from_secs(5)).await;
        }
        assert_eq!(a.pre_votes_to(&peers[0].0), Some(true));
        assert_eq!(a.pre_votes_to(&peers[1].0), Some(false));
    }

    /// Wire protocol 2: a leader sends a group's appends without waiting for answers, and
    /// the peer serves them in their order (one lane per group and connection), answers each
    /// under its own id; a failure answers the appends queued behind it the same way and the
    /// next one opens a new stream; a group the node does not run is answered `NoGroup`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_groups_appends_are_served_in_order_and_a_failure_answers_those_behind_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let name = format!("b@{}", listener.local_addr().unwrap());
        let b = Transport::new(name.clone(), cookie("C"));
        let appends = Arc::new(Appends::default());
        let _server = b.serve(listener, Arc::new(appends.clone()));
        let a = Transport::new("a@127.0.0.1:1".into(), cookie("C"));
        let _ = a.call(&name, Request::Ping, Duration::from_secs(5)).await;
        assert!(a.pipelines_to(&name), "both speak wire protocol {WIRE}", WIRE = PIPELINED_APPENDS_WIRE_VERSION);

        let mut sent = Vec::new();
        for prev in 1..=40u64 {
            for group in [None, Some(1)] {
                let r = GroupRequest::Append(append(prev)).into_request(group);
                sent.push((group, prev, a.send(&name, r, Duration::from_secs(5)).unwrap()));
            }
        }
        let mut after_conflict = Vec::new();
        for (group, prev, answer) in sent {
            let Ok(Response::Append(Ok(r))) = answer.await else { panic!("no append answer for {prev}") };
            match (group, prev) {
                (Some(1), 5) => assert_eq!(r, AppendEntriesResponse::Conflict),
                (Some(1), p) if p > 5 => after_conflict.push(r),
                _ => assert_eq!(r, AppendEntriesResponse::Success, "{group:?} {prev}"),
            }
        }
        // Those queued behind the conflict got its answer; once the lane had reopened its
        // stream, the rest succeeded.
        let conflicts = after_conflict.iter().take_while(|r| r.is_conflict()).count();
        assert!(after_conflict[conflicts..].iter().all(|r| r.is_success()), "{after_conflict:?}");
        let served = appends.served.lock().unwrap().clone();
        for group in [None, Some(1)] {
            let order: Vec<u64> = served.iter().filter(|(g, _)| *g == group).map(|(_, p)| *p).collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]), "{group:?} served out of order: {order:?}");
        }
        assert_eq!(appends.opened.lock().unwrap().get(&None), Some(&1));
        assert_eq!(appends.opened.lock().unwrap().get(&Some(1)), Some(&2));

        let r = GroupRequest::Append(append(41)).into_request(Some(2));
        assert!(matches!(a.call(&name, r, Duration::from_secs(5)).await, Ok(Response::NoGroup)));
        assert_eq!(appends.handled.load(Ordering::Relaxed), 2, "the ping and the append of group 2");
    }

    /// The stream ends (the peer closed it) within `limit`; how long that took.
    async fn closed_within(s: &mut TcpStream, limit: Duration) -> Duration {
        let start = std::time::Instant::now();
        let mut rest = [0u8; 64];
        loop {
            let n = tokio::time::timeout(limit, s.read(&mut rest)).await.expect("still open").unwrap_or(0);
            if n == 0 {
                return start.elapsed();
            }
        }
    }

    #[tokio::test]
    async fn a_source_ip_is_the_address_the_peer_sees() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let (dialed, accepted) = tokio::join!(dial(&addr, Some("127.0.0.3".parse().unwrap())), l.accept());
        dialed.unwrap();
        assert_eq!(accepted.unwrap().1.ip(), "127.0.0.3".parse::<std::net::IpAddr>().unwrap());
    }

    #[tokio::test]
    async fn unreachable_backoff_reconnect_and_isolation() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let peer = format!("b@127.0.0.1:{port}");
        let a = Transport::new("a@127.0.0.1:1".into(), cookie("C"));
        // Nobody listens: unreachable, and while in backoff the next call fails without dialing.
        assert!(matches!(a.call(&peer, propose(5), Duration::from_secs(1)).await, Err(CallError::Unreachable(_))));
        let start = std::time::Instant::now();
        let r = a.call(&peer, propose(5), Duration::from_secs(1)).await;
        assert!(matches!(r, Err(CallError::Unreachable(ref e)) if e.contains("backoff")), "{:?}", r.err());
        assert!(start.elapsed() < BACKOFF_MIN);

        // The peer comes up: the same connection owner reconnects after its backoff.
        let b = Transport::new(peer.clone(), cookie("C"));
        let _server = b.serve(TcpListener::bind(("127.0.0.1", port)).await.unwrap(), Arc::new(Echo::default()));
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
    async fn equal_cookies_shake_hands_in_both_directions() {
        let (a, a_name, a_echo, _sa) = serving("a", "SAME").await;
        let (b, b_name, b_echo, _sb) = serving("b", "SAME").await;
        eventually_ok(&a, &b_name).await;
        eventually_ok(&b, &a_name).await;
        assert_eq!(a_echo.served.load(Ordering::Relaxed), 1);
        assert_eq!(b_echo.served.load(Ordering::Relaxed), 1);
    }

    /// A transport announcing `offer`, serving with a counting [`Echo`].
    async fn serving_offer(short: &str, offer: Offer) -> (Arc<Transport>, String, Arc<Echo>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let name = format!("{short}@{}", listener.local_addr().unwrap());
        let t = Transport::with_offer(name.clone(), cookie("SAME"), None, None, offer);
        let echo = Arc::new(Echo::default());
        // The server task lives as long as the runtime (the test's).
        drop(t.serve(listener, echo.clone()));
        (t, name, echo)
    }

    #[tokio::test]
    async fn each_side_learns_the_others_features_and_other_wire_versions_are_refused_unserved() {
        let with = |min, max, f: &[&str]| Offer {
            wire_min: min,
            wire_max: max,
            features: f.iter().map(|s| s.to_string()).collect(),
        };
        let (a, a_name, _) = serving_offer("a", with(1, 1, &["x", "y"])).await;
        let (b, b_name, _) = serving_offer("b", with(1, 2, &["x"])).await;
        assert_eq!(a.peer_offer(&b_name), None);
        eventually_ok(&a, &b_name).await;
        assert_eq!(a.peer_offer(&b_name), Some(with(1, 2, &["x"])), "the dialer learns the acceptor's");
        assert_eq!(b.peer_offer(&a_name), Some(with(1, 1, &["x", "y"])), "the acceptor learns the dialer's");
        let (c, c_name, c_echo) = serving_offer("c", with(2, 2, &["x"])).await;
        for (from, to, e) in [
            (&a, &c_name, format!("{c_name} speaks 2, {a_name} speaks 1")),
            (&c, &a_name, format!("{a_name} speaks 1, {c_name} speaks 2")),
        ] {
            let r = from.call(to, propose(5), Duration::from_secs(5)).await;
            let Err(CallError::Refused(m)) = r else { panic!("{:?}", r.err()) };
            assert!(m.contains(&format!("incompatible wire protocol versions: {e}")), "{m}");
        }
        assert_eq!(c_echo.served.load(Ordering::Relaxed), 0);
        assert_eq!(a.peer_offer(&c_name), None, "nothing learned from a refused handshake");
    }

    #[tokio::test]
    async fn a_wrong_cookie_is_refused_in_both_directions_and_nothing_is_served() {
        let (a, a_name, a_echo, _sa) = serving("a", "ONE").await;
        let (b, b_name, b_echo, _sb) = serving("b", "TWO").await;
        for (from, to) in [(&a, &b_name), (&b, &a_name)] {
            let r = from.call(to, propose(5), Duration::from_secs(5)).await;
            assert!(matches!(r, Err(CallError::Refused(ref e)) if e.contains("cookie mismatch")), "{:?}", r.err());
            // The failure counts as a failed connect: the backoff applies (no new dial, no
            // second warning) and the call says why.
            let start = std::time::Instant::now();
            let r = from.call(to, propose(5), Duration::from_secs(5)).await;
            assert!(matches!(r, Err(CallError::Refused(ref e)) if e.contains("cookie mismatch")), "{:?}", r.err());
            assert!(start.elapsed() < BACKOFF_MIN);
        }
        assert_eq!(a_echo.served.load(Ordering::Relaxed) + b_echo.served.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn dialing_a_node_under_another_name_is_refused() {
        let (_b, b_name, b_echo, _sb) = serving("b", "SAME").await;
        let a = Transport::new("a@127.0.0.1:1".into(), cookie("SAME"));
        let wrong = b_name.replacen("b@", "x@", 1);
        let r = a.call(&wrong, propose(5), Duration::from_secs(5)).await;
        assert!(matches!(r, Err(CallError::Refused(ref e)) if e.contains("not the one dialed")), "{:?}", r.err());
        assert_eq!(b_echo.served.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_raft_frame_without_a_handshake_is_dropped_unserved() {
        let (_b, b_name, echo, _sb) = serving("b", "SECRET").await;
        let (_, addr) = crate::parse_node_name(&b_name).unwrap();
        let mut s = TcpStream::connect(addr).await.unwrap();
        // A well-formed request, as a peer that skips the handshake would send it.
        let vote = Request::Vote(VoteRequest::new(crate::Vote::new(9, 1), None));
        write_frame(&mut s, &Envelope { id: 1, body: vote }).await.unwrap();
        write_frame(&mut s, &Envelope { id: 2, body: propose(3) }).await.unwrap();
        closed_within(&mut s, Duration::from_secs(2)).await;
        // One announcing a large frame is dropped at once, not buffered until the timeout.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&(1u32 << 20).to_le_bytes()).await.unwrap();
        assert!(closed_within(&mut s, HANDSHAKE_TIMEOUT).await < HANDSHAKE_TIMEOUT / 2);
        assert_eq!(echo.served.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_port_probe_is_not_warned_about_but_a_dialer_failing_the_handshake_is() {
        let (b, b_name, _echo, _sb) = serving("b", "SECRET").await;
        let (_, addr) = crate::parse_node_name(&b_name).unwrap();
        let warned = || !b.refused.lock().unwrap().is_empty();
        // Connect and close without a byte, as a TCP health check does.
        drop(TcpStream::connect(addr).await.unwrap());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!warned(), "a probe was taken for a refused peer");
        let mut s = TcpStream::connect(addr).await.unwrap();
        write_frame(&mut s, &Envelope { id: 1, body: propose(3) }).await.unwrap();
        closed_within(&mut s, Duration::from_secs(2)).await;
        for _ in 0..50 {
            if warned() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("a frame that is not a handshake was not warned about");
    }

    #[tokio::test]
    async fn handshakes_in_flight_are_bounded_and_peers_get_in_once_they_end() {
        let (b, b_name, _echo, _sb) = serving("b", "SAME").await;
        let (_, addr) = crate::parse_node_name(&b_name).unwrap();
        let mut silent = Vec::new();
        for _ in 0..HANDSHAKES_IN_FLIGHT_MAX {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // One more is closed at once rather than held.
        let mut extra = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut extra, HANDSHAKE_TIMEOUT).await < HANDSHAKE_TIMEOUT / 2);
        assert!(!b.refused.lock().unwrap().is_empty(), "the refusal was not warned about");
        // Once they are gone, a peer shakes hands as usual.
        drop(silent);
        let a = Transport::new("a@127.0.0.1:1".into(), cookie("SAME"));
        eventually_ok(&a, &b_name).await;
    }

    #[tokio::test]
    async fn a_silent_dialer_is_dropped_after_the_handshake_timeout() {
        let (_b, b_name, echo, _sb) = serving("b", "SECRET").await;
        let (_, addr) = crate::parse_node_name(&b_name).unwrap();
        let mut s = TcpStream::connect(addr).await.unwrap();
        let took = closed_within(&mut s, HANDSHAKE_TIMEOUT + Duration::from_secs(2)).await;
        assert!(took + Duration::from_millis(100) >= HANDSHAKE_TIMEOUT, "closed after {took:?}");
        // A dialer that stalls after its hello is dropped the same way.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let hello = handshake::Message::Hello {
            from: "a@h:1".into(),
            to: b_name.clone(),
            nonce: [0; 32],
            offer: Some(Offer::default()),
        };
        write_frame(&mut s, &hello).await.unwrap();
        closed_within(&mut s, HANDSHAKE_TIMEOUT + Duration::from_secs(2)).await;
        assert_eq!(echo.served.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_silent_acceptor_makes_the_peer_unreachable_after_the_handshake_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = format!("b@{}", listener.local_addr().unwrap());
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let a = Transport::new("a@127.0.0.1:1".into(), cookie("C"));
        let start = std::time::Instant::now();
        let r = a.call(&peer, propose(5), HANDSHAKE_TIMEOUT * 3).await;
        assert!(matches!(r, Err(CallError::Refused(ref e)) if e.contains("handshake not finished")), "{:?}", r.err());
        assert!(start.elapsed() < HANDSHAKE_TIMEOUT * 2, "{:?}", start.elapsed());
        holder.abort();
    }

    #[tokio::test]
    async fn a_frame_with_a_bad_checksum_closes_the_connection() {
        let (_b, b_name, _echo, _sb) = serving("b", "SECRET").await;
        let (_, addr) = crate::parse_node_name(&b_name).unwrap();
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        handshake::initiate(&mut s, &mut buf, &cookie("SECRET"), "raw@h:1", &b_name, &Offer::default()).await.unwrap();
        // A good request is answered.
        write_frame(&mut s, &Envelope { id: 1, body: propose(3) }).await.unwrap();
        let reply: Envelope<Response> = read_frame(&mut s, &mut buf).await.unwrap();
        assert!(matches!(reply, Envelope { id: 1, body: Response::Client(Ok((3, _))) }));
        // A damaged one closes the connection: the next read sees end of stream.
        let mut bad = Vec::new();
        frame::encode(&mut bad, &codec::encode(&Envelope { id: 2, body: propose(3) }).unwrap());
        let last = bad.len() - 1;
        bad[last] ^= 0x20;
        s.write_all(&bad).await.unwrap();
        closed_within(&mut s, Duration::from_secs(5)).await;
    }

    mod tls {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        use rustls::pki_types::PrivateKeyDer;
        use rustls::server::WebPkiClientVerifier;
        use rustls::{ClientConfig, RootCertStore, ServerConfig};

        use super::*;

        type Ca = CertifiedIssuer<'static, KeyPair>;

        fn ca(name: &str) -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, format!("cluster test CA {name}"));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
        }

        /// A node's TLS: a certificate for 127.0.0.1 (server and client use) that `signer`
        /// signed, trusting certificates `trusted` signed.
        fn link(signer: &Ca, trusted: &Ca) -> LinkTls {
            let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
            let key = KeyPair::generate().unwrap();
            let chain = vec![params.signed_by(&key, signer).unwrap().der().clone()];
            let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut roots = RootCertStore::empty();
            roots.add(trusted.der().clone()).unwrap();
            let roots = Arc::new(roots);
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build().unwrap();
            let acceptor = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key.clone_key())
                .unwrap();
            let connector = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .unwrap();
            LinkTls { acceptor: Arc::new(acceptor), connector: Arc::new(connector) }
        }

        #[tokio::test]
        async fn nodes_with_certificates_of_the_cluster_ca_talk_over_tls_both_ways() {
            let main = ca("main");
            let (a, a_name, _, _sa) = serving_with("a", "SAME", Some(link(&main, &main))).await;
            let (b, b_name, b_echo, _sb) = serving_with("b", "SAME", Some(link(&main, &main))).await;
            eventually_ok(&a, &b_name).await;
            eventually_ok(&b, &a_name).await;
            assert_eq!(b_echo.served.load(Ordering::Relaxed), 1);
            // TLS does not replace the cookie: the right certificate with another cookie is refused.
            let c = Transport::with_tls("c@127.0.0.1:1".into(), cookie("OTHER"), Some(link(&main, &main)));
            let r = c.call(&b_name, propose(5), Duration::from_secs(5)).await;
            assert!(matches!(r, Err(CallError::Refused(ref e)) if e.contains("cookie mismatch")), "{:?}", r.err());
        }

        #[tokio::test]
        async fn a_plain_peer_or_a_certificate_of_another_ca_is_refused_in_both_directions() {
            let (main, other) = (ca("main"), ca("other"));
            let (b, b_name, b_echo, _sb) = serving_with("b", "SAME", Some(link(&main, &main))).await;
            let refused = async |from: &Arc<Transport>, to: &str| {
                let r = from.call(to, propose(5), Duration::from_secs(5)).await;
                assert!(matches!(r, Err(CallError::Refused(_))), "{:?}", r.err());
                r.err().unwrap().to_string()
            };
            // A node without TLS, either way.
            let (plain, plain_name, plain_echo, _sp) = serving("p", "SAME").await;
            refused(&plain, &b_name).await;
            let e = refused(&b, &plain_name).await;
            assert!(e.contains("TLS"), "{e}");
            // A node whose certificate another CA signed: b does not trust it as a client…
            let stranger = Transport::with_tls("s@127.0.0.1:1".into(), cookie("SAME"), Some(link(&other, &main)));
            refused(&stranger, &b_name).await;
            // …and a node trusting only that CA does not trust b's.
            let (_doubter, doubter_name, doubter_echo, _sd) =
                serving_with("d", "SAME", Some(link(&other, &other))).await;
            let e = refused(&b, &doubter_name).await;
            assert!(e.contains("TLS"), "{e}");
            let served =
                [&b_echo, &plain_echo, &doubter_echo].iter().map(|e| e.served.load(Ordering::Relaxed)).sum::<usize>();
            assert_eq!(served, 0);
        }
    }

    #[test]
    fn handshake_warnings_are_rate_limited_and_count_what_they_left_out() {
        let mut w = WarnLimit::default();
        let t0 = Instant::now();
        assert_eq!(w.check(t0), Some(0));
        assert_eq!(w.check(t0 + BACKOFF_MAX), None);
        assert_eq!(w.check(t0 + BACKOFF_MAX * 2), None);
        assert_eq!(w.check(t0 + HANDSHAKE_WARN_INTERVAL), Some(2));
        assert_eq!(w.check(t0 + HANDSHAKE_WARN_INTERVAL * 2), Some(0));
    }
    /// Raft messages as the openraft 0.9 build put them on the wire (fixtures written by
    /// it) decode to the same values and encode to the same bytes: nodes of that build and
    /// of later ones can replicate to each other during a rolling upgrade (openraft 0.9
    /// ignores fields it does not know; 0.10's added ones have defaults).
    #[test]
    fn raft_messages_keep_the_openraft_0_9_builds_encoding() {
        use crate::{CommittedLeaderId, LogId};
        use openraft::EntryPayload;
        use openraft::raft::AppendEntriesResponse;
        use openraft::vote::RaftLeaderId;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openraft-0.9/wire");
        let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
        let lid = |t, n, i| LogId::new(CommittedLeaderId::new(t, n), i);

        let bytes = read("append");
        let env: Envelope<Request> = crate::codec::decode(&bytes).unwrap();
        let Request::Group(7, GroupRequest::Append(a)) = &env.body else { panic!("not a group append") };
        assert_eq!(env.id, 5);
        assert_eq!(a.vote, crate::Vote::new_committed(2, 22));
        assert_eq!((a.prev_log_id, a.leader_commit), (Some(lid(2, 22, 3)), Some(lid(2, 22, 3))));
        assert_eq!(
            a.entries.iter().map(|e| e.log_id).collect::<Vec<_>>(),
            [lid(2, 22, 4), lid(2, 22, 5), lid(2, 22, 6)]
        );
        assert!(matches!(&a.entries[0].payload, EntryPayload::Normal(c) if c.0.as_ref() == [0, 1, 2, 255]));
        assert!(
            matches!(&a.entries[1].payload, EntryPayload::Membership(m) if m.voter_ids().collect::<Vec<_>>() == [11, 22])
        );
        assert!(matches!(&a.entries[2].payload, EntryPayload::Blank));
        assert_eq!(crate::codec::encode(&env).unwrap(), bytes);

        let bytes = read("vote");
        let env: Envelope<Request> = crate::codec::decode(&bytes).unwrap();
        let Request::Vote(v) = &env.body else { panic!("not a vote") };
        assert_eq!((v.vote, v.last_log_id), (crate::Vote::new(3, 11), Some(lid(2, 22, 6))));
        // openraft 0.10 added one field, `leadership_transfer` (false unless a leader hands
        // over): 0.9 ignores fields it does not know, so without it the bytes are 0.9's.
        let mut ours: ciborium::Value = crate::codec::decode(&crate::codec::encode(&env).unwrap()).unwrap();
        let fields = ours.as_map_mut().unwrap()[1].1.as_map_mut().unwrap()[0].1.as_map_mut().unwrap();
        let added = fields.iter().position(|(k, _)| k.as_text() == Some("leadership_transfer")).unwrap();
        assert_eq!(fields.remove(added).1, ciborium::Value::Bool(false));
        assert_eq!(crate::codec::encode(&ours).unwrap(), bytes);

        for (name, want) in [
            ("append_ok", AppendEntriesResponse::Success),
            ("append_conflict", AppendEntriesResponse::Conflict),
            ("append_higher", AppendEntriesResponse::HigherVote(crate::Vote::new(4, 33))),
        ] {
            let bytes = read(name);
            let env: Envelope<Response> = crate::codec::decode(&bytes).unwrap();
            let Response::Append(Ok(got)) = &env.body else { panic!("{name}: not an append answer") };
            assert_eq!(got, &want, "{name}");
            assert_eq!(crate::codec::encode(&env).unwrap(), bytes, "{name}");
        }
        let bytes = read("vote_granted");
        let env: Envelope<Response> = crate::codec::decode(&bytes).unwrap();
        let Response::Vote(Ok(v)) = &env.body else { panic!("not a vote answer") };
        assert_eq!((v.vote, v.vote_granted, v.last_log_id), (crate::Vote::new(3, 11), true, Some(lid(2, 22, 6))));
        assert_eq!(crate::codec::encode(&env).unwrap(), bytes);
    }
}
